// The small HTTP exchanges credential sources make (instance metadata, the container endpoint, STS).
//
// Each source gets its own `HTTPClient` with the timeouts botocore uses for it, so a laptop without
// instance metadata gives up after 1 second instead of the S3 client's 10-second connect timeout.
import CkptHTTP
import Foundation

/// One HTTP client with given timeouts, created on first use.
final class CredentialHTTP: Sendable {
    let client: HTTPClient
    /// Where requests go, for messages (scheme, host and port only).
    let origin: String

    /// - Parameters:
    ///   - timeout: connect timeout and the longest pause in a transfer, in seconds.
    init(origin: String, timeout: Double, caBundle: String? = nil) {
        var c = HTTPClientConfiguration()
        c.connectTimeout = .milliseconds(Int64(timeout * 1000))
        c.stallTimeout = .milliseconds(Int64(timeout * 1000))
        c.eventLoops = 1
        c.maxConnections = 4
        c.caBundle = caBundle
        c.maxInMemoryBody = 1 << 20
        self.client = HTTPClient(configuration: c)
        self.origin = origin
    }

    /// Sends a request; a transport failure becomes a transient `CredentialsError` of `source`.
    func send(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
              source: String, fix: String) async throws(CredentialsError) -> HTTPResponse {
        do {
            return try await client.execute(HTTPRequest(method: method, url: url, headers: headers,
                                                        body: body.map { .bytes($0) } ?? .empty))
        } catch let e as HTTPTransportError {
            throw CredentialsError(source: source, "\(origin) did not answer: \(e.message)", fix: fix, isTransient: true)
        } catch {
            throw CredentialsError(source: source, "\(origin) did not answer: \(error)", fix: fix, isTransient: true)
        }
    }

    /// Reads the JSON credentials document that instance metadata and container endpoints return
    /// (`AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`).
    static func parseJSONCredentials(_ body: [UInt8], source: String, label: String, fix: String) throws(CredentialsError) -> Credentials {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw CredentialsError(source: source, "the answer is not a JSON object", fix: fix)
        }
        if let code = obj["Code"] as? String, code != "Success" {
            throw CredentialsError(source: source, "the answer says \(code): \(obj["Message"] as? String ?? "")", fix: fix, isTransient: true)
        }
        guard let id = obj["AccessKeyId"] as? String, let secret = obj["SecretAccessKey"] as? String, !id.isEmpty, !secret.isEmpty else {
            throw CredentialsError(source: source, "the answer has no AccessKeyId and SecretAccessKey", fix: fix)
        }
        let expiration = (obj["Expiration"] as? String).flatMap(S3Date.parseISO8601)
        return Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: obj["Token"] as? String,
                           source: label, expiration: expiration)
    }
}
