// Container credentials: ECS tasks, SageMaker training jobs and EKS Pod Identity.
//
// The agent sets AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (ECS, SageMaker: the path on http://169.254.170.2)
// or AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod Identity, or any local agent) with an authorization token in
// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (read again on every fetch: EKS rotates it) or
// AWS_CONTAINER_AUTHORIZATION_TOKEN. The endpoint answers a JSON document with AccessKeyId, SecretAccessKey,
// Token and Expiration. Behaviour follows botocore's ContainerProvider and ContainerMetadataFetcher
// (botocore/credentials.py, botocore/utils.py): the relative URI wins over the full URI; a full http:// URI
// must point at a loopback address or at the ECS/EKS link-local agents; 2-second timeout, 3 attempts.
// AWS docs: "Container credential provider" in the SDKs and Tools Reference Guide.
import CkptHTTP
import Foundation

public struct ContainerCredentialSource: CredentialSource {
    /// The link-local ECS agent that AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is relative to.
    public static let ecsAgent = "http://169.254.170.2"
    /// Hosts an http:// full URI may name besides loopback (botocore's list): the ECS and EKS Pod Identity agents.
    static let allowedHTTPHosts: Set<String> = ["169.254.170.2", "169.254.170.23", "[fd00:ec2::23]", "localhost", "[::1]"]

    public let url: String
    let tokenFile: String?
    let token: String?
    let http: CredentialHTTP

    public var name: String { "container credentials" }
    public var canRefresh: Bool { true }

    static let fix = "run inside an ECS task, SageMaker job or EKS pod with a task/pod role, or unset "
        + "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / AWS_CONTAINER_CREDENTIALS_FULL_URI to use other credentials"

    /// The source the environment asks for, or nil when neither container variable is set.
    public static func fromEnvironment(_ env: [String: String]) throws(ConfigurationError) -> ContainerCredentialSource? {
        let url: String
        if let relative = S3ClientConfiguration.nonEmpty(env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]) {
            url = ecsAgent + (relative.hasPrefix("/") ? relative : "/" + relative)
        } else if let full = S3ClientConfiguration.nonEmpty(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]) {
            let endpoint = try S3Endpoint(url: full)
            if endpoint.scheme == "http" && !allowedHTTPHosts.contains(endpoint.host) && !endpoint.host.hasPrefix("127.") {
                throw ConfigurationError("AWS_CONTAINER_CREDENTIALS_FULL_URI=\(full) is plain http to \(endpoint.host); "
                    + "credentials over http are only fetched from loopback or the ECS/EKS agents: use https:// or a loopback address")
            }
            url = full
        } else {
            return nil
        }
        return ContainerCredentialSource(url: url, tokenFile: S3ClientConfiguration.nonEmpty(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]),
                                         token: S3ClientConfiguration.nonEmpty(env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]))
    }

    init(url: String, tokenFile: String?, token: String?) {
        self.url = url
        self.tokenFile = tokenFile
        self.token = token
        let origin = (try? S3Endpoint(url: url).description) ?? "the container credentials endpoint"
        self.http = CredentialHTTP(origin: origin, timeout: 2)
    }

    func authorization() throws(CredentialsError) -> String? {
        var value = token
        if let tokenFile {
            guard let data = FileManager.default.contents(atPath: tokenFile) else {
                throw CredentialsError(source: name, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(tokenFile) cannot be read",
                                       fix: "check that the pod's service-account token is mounted and readable", isTransient: true)
            }
            value = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if let v = value, v.contains("\r") || v.contains("\n") {
            throw CredentialsError(source: name, "the authorization token contains a line break", fix: "write the token on one line")
        }
        return value
    }

    public func fetch() async throws(CredentialsError) -> Credentials {
        var headers = [("Accept", "application/json")]
        if let auth = try authorization() { headers.append(("Authorization", auth)) }
        var last: CredentialsError?
        for attempt in 1...3 {
            do throws(CredentialsError) {
                let r = try await http.send(.GET, url, headers: headers, source: name, fix: Self.fix)
                guard r.status == 200 else {
                    let e = CredentialsError(source: name, "\(http.origin) answered HTTP \(r.status)",
                                             fix: r.status == 401 || r.status == 403
                                                ? "the authorization token was refused; check AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]"
                                                : Self.fix, isTransient: r.status >= 500 || r.status == 429)
                    guard e.isTransient else { throw e }
                    last = e
                    continue
                }
                return try CredentialHTTP.parseJSONCredentials(r.body, source: name, label: "container credentials", fix: Self.fix)
            } catch where error.isTransient && attempt < 3 {
                last = error
                try? await Task.sleep(for: .milliseconds(200 * attempt))
            }
        }
        throw last ?? CredentialsError(source: name, "no answer", fix: Self.fix, isTransient: true)
    }
}
