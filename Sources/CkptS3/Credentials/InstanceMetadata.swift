// EC2 instance metadata (IMDSv2): the instance profile's role credentials and the instance's region.
//
// IMDSv2 (AWS docs "Use the Instance Metadata Service to access instance metadata"): PUT /latest/api/token
// with X-aws-ec2-metadata-token-ttl-seconds returns a session token; every GET carries it in
// X-aws-ec2-metadata-token. GET /latest/meta-data/iam/security-credentials/ names the role, GET .../ROLE returns
// AccessKeyId, SecretAccessKey, Token and Expiration. Like botocore's InstanceMetadataFetcher
// (botocore/utils.py): token TTL 21,600 s, 1-second timeout, one attempt, so a machine without IMDS gives up
// at once; AWS_EC2_METADATA_SERVICE_ENDPOINT (or the profile's ec2_metadata_service_endpoint) replaces
// http://169.254.169.254; AWS_EC2_METADATA_DISABLED=true turns the source off. If the token PUT is refused
// with 403/404/405 the fetch falls back to IMDSv1 as botocore does; an instance that requires IMDSv2 and
// times out on the PUT inside a container usually needs a hop limit of 2.
import CkptHTTP
import Foundation

public struct InstanceMetadataClient: Sendable {
    public static let defaultEndpoint = "http://169.254.169.254"
    public let endpoint: String
    let http: CredentialHTTP

    static let fix = "run on an EC2 instance with an instance profile (IAM role); in a container on EC2 raise the "
        + "IMDSv2 hop limit to 2 (aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2); "
        + "elsewhere set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
    static let name = "EC2 instance metadata"

    /// - Parameter timeout: seconds to connect and between bytes (botocore's AWS_METADATA_SERVICE_TIMEOUT, default 1).
    public init(endpoint: String = defaultEndpoint, timeout: Double = 1) {
        var e = endpoint
        while e.hasSuffix("/") { e.removeLast() }
        self.endpoint = e
        self.http = CredentialHTTP(origin: e, timeout: timeout)
    }

    /// The IMDSv2 session token, or nil where only IMDSv1 answers.
    func token() async throws(CredentialsError) -> String? {
        let r = try await http.send(.PUT, endpoint + "/latest/api/token", headers: [("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
                                    source: Self.name, fix: Self.fix)
        if r.status == 200 { return String(decoding: r.body, as: UTF8.self) }
        if [403, 404, 405].contains(r.status) { return nil }
        throw CredentialsError(source: Self.name, "the IMDSv2 token request answered HTTP \(r.status)", fix: Self.fix,
                               isTransient: r.status >= 500 || r.status == 429)
    }

    /// GETs a metadata path (below /latest/meta-data/) as text.
    func get(_ path: String, token: String?) async throws(CredentialsError) -> String {
        let r = try await http.send(.GET, endpoint + "/latest/meta-data/" + path,
                                    headers: token.map { [("x-aws-ec2-metadata-token", $0)] } ?? [], source: Self.name, fix: Self.fix)
        guard r.status == 200 else {
            throw CredentialsError(source: Self.name, "GET /latest/meta-data/\(path) answered HTTP \(r.status)",
                                   fix: r.status == 404 ? "attach an instance profile (IAM role) to the instance" : Self.fix,
                                   isTransient: r.status >= 500 || r.status == 429)
        }
        return String(decoding: r.body, as: UTF8.self)
    }

    /// The instance profile's role credentials.
    public func credentials() async throws(CredentialsError) -> Credentials {
        let token = try await token()
        let roles = try await get("iam/security-credentials/", token: token)
        guard let role = roles.split(whereSeparator: \.isNewline).first.map({ $0.trimmingCharacters(in: .whitespaces) }), !role.isEmpty else {
            throw CredentialsError(source: Self.name, "the instance has no instance profile role", fix: "attach an instance profile (IAM role) to the instance")
        }
        let body = try await get("iam/security-credentials/" + URIEncoding.encode(role), token: token)
        return try CredentialHTTP.parseJSONCredentials(Array(body.utf8), source: Self.name, label: "instance profile \(role)", fix: Self.fix)
    }

    /// The instance's region (/latest/meta-data/placement/region).
    public func region() async throws(CredentialsError) -> String {
        let token = try await token()
        return try await get("placement/region", token: token).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Credentials of the EC2 instance profile.
public struct InstanceMetadataCredentialSource: CredentialSource {
    public let client: InstanceMetadataClient
    public init(client: InstanceMetadataClient) { self.client = client }
    public var name: String { InstanceMetadataClient.name }
    public var canRefresh: Bool { true }
    public func fetch() async throws(CredentialsError) -> Credentials { try await client.credentials() }
}
