// AWS IAM Identity Center (SSO) profiles: the access token `aws sso login` left in the token cache, traded for a
// role's temporary credentials with the SSO portal's GetRoleCredentials (botocore/credentials.py,
// SSOCredentialFetcher; AWS SSO Portal API: GET /federation/credentials?account_id=&role_name= with the token in
// `x-amz-sso_bearer_token`, unsigned). ckptfs never logs in: an expired or missing token is an error naming
// `aws sso login`, and the cache is read again at every refresh, so a new login is picked up by a running mount.
import CkptDigest
import CkptHTTP
import Foundation

struct SSOCredentialSource: CredentialSource {
    /// The profile, for messages and the fix.
    let profile: String
    /// The `[sso-session NAME]` the profile uses; nil for the legacy form (sso_start_url in the profile).
    let session: String?
    let startURL: String
    let accountId: String
    let roleName: String
    /// ~/.aws/sso/cache
    let cacheDirectory: String
    let endpoint: S3Endpoint
    let http: CredentialHTTP

    init(profile: String, session: String?, startURL: String, accountId: String, roleName: String, cacheDirectory: String,
         endpoint: S3Endpoint, caBundle: String?) {
        self.profile = profile
        self.session = session
        self.startURL = startURL
        self.accountId = accountId
        self.roleName = roleName
        self.cacheDirectory = cacheDirectory
        self.endpoint = endpoint
        self.http = CredentialHTTP(origin: endpoint.description, timeout: 10, caBundle: caBundle)
    }

    var name: String { "SSO role \(roleName) in account \(accountId) (profile \(profile))" }
    var canRefresh: Bool { true }

    var loginFix: String {
        "run `aws sso login --profile \(profile)`" + (session.map { " (or `aws sso login --sso-session \($0)`)" } ?? "")
            + "; a running mount picks up the new login at its next refresh"
    }

    /// The token cache file: `sha1(session name)` for sso-session profiles, `sha1(start URL)` for legacy ones
    /// (botocore's SSOTokenLoader and the AWS CLI name it so).
    var cacheFile: String { "\(cacheDirectory)/\(Digest.sha1(session ?? startURL).hexString).json" }

    /// The cached access token, if it has not expired.
    func accessToken(now: Date = Date()) throws(CredentialsError) -> String {
        let path = cacheFile
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CredentialsError(source: name, "no SSO login is cached (\(path) is missing)", fix: loginFix)
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let token = obj["accessToken"] as? String, !token.isEmpty,
              let expires = (obj["expiresAt"] as? String).flatMap(S3Date.parseISO8601) else {
            throw CredentialsError(source: name, "the SSO token cache \(path) has no accessToken and expiresAt", fix: loginFix)
        }
        guard expires > now else {
            throw CredentialsError(source: name, "the SSO login expired at \(S3Date.iso8601(expires))", fix: loginFix)
        }
        return token
    }

    func fetch() async throws(CredentialsError) -> Credentials {
        let token = try accessToken()
        let url = "\(endpoint)/federation/credentials?account_id=\(Self.encode(accountId))&role_name=\(Self.encode(roleName))"
        let fix = "check that the SSO user may use role \(roleName) in account \(accountId) (sso_account_id, sso_role_name)"
        var last: CredentialsError?
        for attempt in 1...3 {
            let r = try await http.send(.GET, url, headers: [("x-amz-sso_bearer_token", token)], source: name, fix: fix)
            switch r.status {
            case 200:
                return try parse(r.body, fix: fix)
            case 401:
                throw CredentialsError(source: name, "the SSO portal refused the cached login (HTTP 401: expired or signed out)", fix: loginFix)
            case 403:
                throw CredentialsError(source: name, "the SSO portal refused role \(roleName) in account \(accountId) (HTTP 403)", fix: fix)
            case 429, 500...599:
                last = CredentialsError(source: name, "\(http.origin) answered HTTP \(r.status)", fix: "retry later", isTransient: true)
                if attempt < 3 { try? await Task.sleep(for: .milliseconds(200 * attempt)) }
            default:
                throw CredentialsError(source: name, "\(http.origin) answered HTTP \(r.status): \(String(decoding: r.body.prefix(200), as: UTF8.self))", fix: fix)
            }
        }
        throw last!
    }

    /// `{"roleCredentials": {"accessKeyId", "secretAccessKey", "sessionToken", "expiration": epoch milliseconds}}`.
    func parse(_ body: [UInt8], fix: String) throws(CredentialsError) -> Credentials {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let rc = obj["roleCredentials"] as? [String: Any],
              let id = rc["accessKeyId"] as? String, let secret = rc["secretAccessKey"] as? String, !id.isEmpty, !secret.isEmpty else {
            throw CredentialsError(source: name, "the GetRoleCredentials answer has no roleCredentials", fix: fix)
        }
        let expiration = (rc["expiration"] as? NSNumber).map { Date(timeIntervalSince1970: $0.doubleValue / 1000) }
        return Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: rc["sessionToken"] as? String,
                           source: "SSO role \(roleName) in account \(accountId)", expiration: expiration)
    }

    /// RFC 3986 percent-encoding of a query value (unreserved characters kept).
    static func encode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }
}
