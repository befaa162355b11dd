// AWS STS: AssumeRole (signed with the source credentials) and AssumeRoleWithWebIdentity (unsigned).
//
// Query API, POST with a form body, XML answer (AWS STS API Reference). The endpoint is
// AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else the profile's `sts = endpoint_url` or `endpoint_url`
// (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true), else the regional endpoint https://sts.REGION.amazonaws.com
// (botocore's default since sts_regional_endpoints became "regional"), or the global https://sts.amazonaws.com
// (signed for us-east-1) when no region is configured. Throttling and 5xx answers are tried 3 times.
import CkptDigest
import CkptHTTP
import Foundation

public struct STSClient: Sendable {
    public let endpoint: S3Endpoint
    /// The region requests are signed for.
    public let region: String
    let http: CredentialHTTP

    public init(endpoint: S3Endpoint, region: String, caBundle: String? = nil) {
        self.endpoint = endpoint
        self.region = region
        self.http = CredentialHTTP(origin: endpoint.description, timeout: 10, caBundle: caBundle)
    }

    /// The endpoint botocore would use; see the file comment.
    public static func endpoint(env: [String: String], profile: AWSConfigFile.Profile?, region: String?) throws(ConfigurationError) -> (S3Endpoint, String) {
        let nonEmpty = S3ClientConfiguration.nonEmpty
        var configured: String? = nil
        if env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"]?.lowercased() != "true" {
            configured = nonEmpty(env["AWS_ENDPOINT_URL_STS"]) ?? nonEmpty(env["AWS_ENDPOINT_URL"])
                ?? nonEmpty(profile?.value("endpoint_url", section: "sts")) ?? nonEmpty(profile?.value("endpoint_url"))
        }
        if let configured { return (try S3Endpoint(url: configured), region ?? "us-east-1") }
        guard let region else { return (S3Endpoint(scheme: "https", host: "sts.amazonaws.com"), "us-east-1") }
        let suffix = region.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        return (S3Endpoint(scheme: "https", host: "sts.\(region).\(suffix)"), region)
    }

    /// AssumeRole, signed with `source`.
    /// - Parameter durationSeconds: 900 to the role's maximum (botocore sends it only when the profile sets duration_seconds).
    public func assumeRole(roleArn: String, sessionName: String, externalId: String?, durationSeconds: Int?,
                           with source: Credentials, label: String) async throws(CredentialsError) -> Credentials {
        var params = [("Action", "AssumeRole"), ("Version", "2011-06-15"), ("RoleArn", roleArn), ("RoleSessionName", sessionName)]
        if let externalId { params.append(("ExternalId", externalId)) }
        if let durationSeconds { params.append(("DurationSeconds", "\(durationSeconds)")) }
        return try await call(params, result: "AssumeRoleResult", signWith: source, label: label,
                              name: "AssumeRole \(roleArn)",
                              fix: "check that \(source.source) may call sts:AssumeRole on \(roleArn) and that the role trusts it")
    }

    /// AssumeRoleWithWebIdentity: the OIDC token is the proof, the request is not signed.
    public func assumeRoleWithWebIdentity(roleArn: String, sessionName: String, token: String, durationSeconds: Int?,
                                          label: String) async throws(CredentialsError) -> Credentials {
        var params = [("Action", "AssumeRoleWithWebIdentity"), ("Version", "2011-06-15"), ("RoleArn", roleArn),
                      ("RoleSessionName", sessionName), ("WebIdentityToken", token)]
        if let durationSeconds { params.append(("DurationSeconds", "\(durationSeconds)")) }
        return try await call(params, result: "AssumeRoleWithWebIdentityResult", signWith: nil, label: label,
                              name: "web identity \(roleArn)",
                              fix: "check the role's trust policy for this OIDC provider and service account, and that the token file is current")
    }

    func call(_ params: [(String, String)], result: String, signWith creds: Credentials?, label: String, name: String,
              fix: String) async throws(CredentialsError) -> Credentials {
        let body = Array(params.map { "\(URIEncoding.encode($0.0))=\(URIEncoding.encode($0.1))" }.joined(separator: "&").utf8)
        let path = endpoint.basePath + "/"
        let url = "\(endpoint.scheme)://\(endpoint.authority)\(path)"
        var last: CredentialsError?
        for attempt in 1...3 {
            var headers = [("host", endpoint.authority), ("content-type", "application/x-www-form-urlencoded; charset=utf-8")]
            if let creds {
                let now = Date()
                headers.append(("x-amz-date", SigV4Signer.amzDate(now)))
                if let token = creds.sessionToken { headers.append(("x-amz-security-token", token)) }
                let signer = SigV4Signer(credentials: creds, region: region, service: "sts", normalizePath: true, doubleEncodePath: true)
                let sig = signer.sign(method: "POST", path: path, query: [], headers: headers,
                                      payloadHash: Digest.sha256(body).hexString, date: now)
                headers.append(("Authorization", sig.authorization))
            }
            do throws(CredentialsError) {
                let r = try await http.send(.POST, url, headers: headers.filter { $0.0 != "host" }, body: body, source: name, fix: fix)
                let root = try? XML.parse(r.body)
                if r.status == 200, let c = root?.child(result)?.child("Credentials") {
                    guard let id = c.string("AccessKeyId"), let secret = c.string("SecretAccessKey"), !id.isEmpty, !secret.isEmpty else {
                        throw CredentialsError(source: name, "the STS answer has no AccessKeyId and SecretAccessKey", fix: fix)
                    }
                    return Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: c.string("SessionToken"), source: label,
                                       expiration: c.string("Expiration").flatMap(S3Date.parseISO8601))
                }
                let err = root?.child("Error")
                let code = err?.string("Code") ?? "HTTP \(r.status)"
                let transient = r.status >= 500 || ["Throttling", "ThrottlingException", "RequestLimitExceeded", "IDPCommunicationError"].contains(code)
                let e = CredentialsError(source: name, "STS \(params[0].1) at \(endpoint) failed: \(code)"
                    + (err?.string("Message").map { ": \($0)" } ?? ""), fix: fix, isTransient: transient)
                guard transient else { throw e }
                last = e
            } catch where error.isTransient && attempt < 3 {
                last = error
            }
            try? await Task.sleep(for: .milliseconds(300 * attempt))
        }
        throw last ?? CredentialsError(source: name, "no answer", fix: fix, isTransient: true)
    }

    /// RoleSessionName when the profile or AWS_ROLE_SESSION_NAME gives none (botocore: botocore-session-TIMESTAMP).
    public static func defaultSessionName() -> String { "ckptfs-session-\(Int(Date().timeIntervalSince1970))" }
}

/// EKS IRSA and any OIDC federation: a token file and a role, exchanged with STS AssumeRoleWithWebIdentity.
public struct WebIdentityCredentialSource: CredentialSource {
    public let roleArn: String
    public let tokenFile: String
    public let sessionName: String
    let durationSeconds: Int?
    let sts: STSClient

    public init(roleArn: String, tokenFile: String, sessionName: String?, durationSeconds: Int?, sts: STSClient) {
        self.roleArn = roleArn
        self.tokenFile = tokenFile
        self.sessionName = sessionName ?? STSClient.defaultSessionName()
        self.durationSeconds = durationSeconds
        self.sts = sts
    }

    public var name: String { "web identity role \(roleArn)" }
    public var canRefresh: Bool { true }

    public func fetch() async throws(CredentialsError) -> Credentials {
        // Read again on every refresh: EKS rotates the projected service-account token.
        guard let data = FileManager.default.contents(atPath: tokenFile) else {
            throw CredentialsError(source: name, "the web identity token file \(tokenFile) cannot be read",
                                   fix: "check AWS_WEB_IDENTITY_TOKEN_FILE / web_identity_token_file and that the token is mounted", isTransient: true)
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return try await sts.assumeRoleWithWebIdentity(roleArn: roleArn, sessionName: sessionName, token: token,
                                                       durationSeconds: durationSeconds, label: name)
    }
}

/// A profile's role_arn, assumed with the credentials of its source_profile or credential_source.
public struct AssumeRoleCredentialSource: CredentialSource {
    public let roleArn: String
    public let profile: String
    let sessionName: String
    let externalId: String?
    let durationSeconds: Int?
    /// The source credentials, refreshed on their own when they are temporary.
    let source: CredentialsProvider
    let sts: STSClient

    public init(roleArn: String, profile: String, sessionName: String?, externalId: String?, durationSeconds: Int?,
                source: CredentialsProvider, sts: STSClient) {
        self.roleArn = roleArn
        self.profile = profile
        self.sessionName = sessionName ?? STSClient.defaultSessionName()
        self.externalId = externalId
        self.durationSeconds = durationSeconds
        self.source = source
        self.sts = sts
    }

    public var name: String { "assumed role \(roleArn) via profile \(profile)" }
    public var canRefresh: Bool { true }

    public func fetch() async throws(CredentialsError) -> Credentials {
        let base = try await source.credentials()
        return try await sts.assumeRole(roleArn: roleArn, sessionName: sessionName, externalId: externalId,
                                        durationSeconds: durationSeconds, with: base, label: name)
    }
}
