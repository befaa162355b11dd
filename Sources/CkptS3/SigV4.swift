// AWS Signature Version 4, header-based.
//
// `SigV4Signer.sign` builds the canonical request, the string to sign and the Authorization header
// for one request. S3 signs the path exactly as sent (no normalization, no second round of encoding);
// other AWS services normalize the path and encode it twice. Both are options so the same code is
// checked against the generic AWS test-suite vectors and against botocore's S3 signer.
import CkptDigest
import Foundation

/// An access key pair and optional session token. `description` never shows the secret.
public struct Credentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyId: String
    public var secretAccessKey: String
    public var sessionToken: String?
    /// Where they came from (e.g. "environment", "profile default in /root/.aws/credentials",
    /// "instance profile trainer-role"). Never a secret.
    public var source: String
    /// When temporary credentials stop working (STS, container and instance-metadata credentials); nil for
    /// long-term keys.
    public var expiration: Date?

    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil, source: String = "explicit",
                expiration: Date? = nil) {
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.source = source
        self.expiration = expiration
    }

    public var description: String {
        "Credentials(accessKeyId: \(accessKeyId), secretAccessKey: <redacted>\(sessionToken == nil ? "" : ", sessionToken: <redacted>"), source: \(source)"
            + (expiration.map { ", expires: \(S3Date.iso8601($0))" } ?? "") + ")"
    }
}

public enum URIEncoding {
    private static let unreserved: [Bool] = {
        var t = [Bool](repeating: false, count: 256)
        for c in UInt8(ascii: "A")...UInt8(ascii: "Z") { t[Int(c)] = true }
        for c in UInt8(ascii: "a")...UInt8(ascii: "z") { t[Int(c)] = true }
        for c in UInt8(ascii: "0")...UInt8(ascii: "9") { t[Int(c)] = true }
        for c in "-._~".utf8 { t[Int(c)] = true }
        return t
    }()

    /// Percent-encodes every byte except the RFC 3986 unreserved set (and `/` when `keepSlash`).
    public static func encode(_ s: String, keepSlash: Bool = false) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out = [UInt8]()
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            if unreserved[Int(b)] || (keepSlash && b == UInt8(ascii: "/")) {
                out.append(b)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes %XX sequences (and `+` as space when `plusAsSpace`); invalid sequences are kept as they are.
    public static func decode(_ s: String, plusAsSpace: Bool = false) -> String {
        var out = [UInt8]()
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "%"), i + 2 < u.count,
               let v = UInt8(String(decoding: u[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
                out.append(v)
                i += 3
            } else if plusAsSpace && u[i] == UInt8(ascii: "+") {
                out.append(0x20)
                i += 1
            } else {
                out.append(u[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The pieces of a signature, for tests and debugging. Contains no secret.
public struct SigV4Result: Sendable {
    public var canonicalRequest: String
    public var stringToSign: String
    public var authorization: String
    public var signedHeaders: String
}

public struct SigV4Signer: Sendable {
    public var credentials: Credentials
    public var region: String
    public var service: String
    /// Generic AWS services: remove `.`/`..` segments and empty segments from the path.
    public var normalizePath: Bool
    /// Generic AWS services: percent-encode the already-encoded path a second time.
    public var doubleEncodePath: Bool

    public init(credentials: Credentials, region: String, service: String = "s3",
                normalizePath: Bool = false, doubleEncodePath: Bool = false) {
        self.credentials = credentials
        self.region = region
        self.service = service
        self.normalizePath = normalizePath
        self.doubleEncodePath = doubleEncodePath
    }

    /// Headers that are never signed: they may be changed by proxies or by the HTTP library.
    static let unsignedHeaders: Set<String> = ["user-agent", "expect", "x-amzn-trace-id", "authorization", "accept"]

    public static func amzDate(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tmv = tm()
        gmtime_r(&t, &tmv)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday,
                      tmv.tm_hour, tmv.tm_min, tmv.tm_sec)
    }

    /// Signs a request.
    /// - Parameters:
    ///   - path: the path as it goes on the wire, percent-encoded (S3), or raw (generic services).
    ///   - query: decoded query parameters; they are encoded here.
    ///   - headers: every header that will be sent, including `host` and `x-amz-date`.
    ///   - payloadHash: hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    public func sign(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                     payloadHash: String, date: Date) -> SigV4Result {
        let amz = SigV4Signer.amzDate(date)
        let day = String(amz.prefix(8))

        // Canonical URI.
        var uri = path.isEmpty ? "/" : path
        if normalizePath { uri = SigV4Signer.normalized(uri) }
        if doubleEncodePath {
            uri = uri.split(separator: "/", omittingEmptySubsequences: false)
                .map { URIEncoding.encode(String($0)) }.joined(separator: "/")
        }

        // Canonical query: encode each name and value, sort by name then value.
        let encodedQuery: [(name: String, value: String)] = query.map { pair in
            (name: URIEncoding.encode(pair.0), value: URIEncoding.encode(pair.1))
        }
        let sortedQuery = encodedQuery.sorted { a, b in a.name != b.name ? a.name < b.name : a.value < b.value }
        let canonicalQuery = sortedQuery.map { q in q.name + "=" + q.value }.joined(separator: "&")

        // Canonical headers: lower-case names, trimmed values with inner runs of spaces folded,
        // repeated names joined with commas in order, sorted by name.
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            let n = name.lowercased()
            if SigV4Signer.unsignedHeaders.contains(n) { continue }
            merged[n, default: []].append(SigV4Signer.foldSpaces(value))
        }
        let names = merged.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")

        let canonicalRequest = [method, uri, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash]
            .joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amz, scope, Digest.sha256(canonicalRequest).hexString]
            .joined(separator: "\n")
        let key = signingKey(day: day)
        let signature = Digest.hmacSHA256(key: key, string: stringToSign).hexString
        let authorization = "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyId)/\(scope), "
            + "SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return SigV4Result(canonicalRequest: canonicalRequest, stringToSign: stringToSign,
                           authorization: authorization, signedHeaders: signedHeaders)
    }

    func signingKey(day: String) -> [UInt8] {
        let kDate = Digest.hmacSHA256(key: Array("AWS4\(credentials.secretAccessKey)".utf8), string: day)
        let kRegion = Digest.hmacSHA256(key: kDate, string: region)
        let kService = Digest.hmacSHA256(key: kRegion, string: service)
        return Digest.hmacSHA256(key: kService, string: "aws4_request")
    }

    /// A header value as SigV4's canonical request has it: leading and trailing spaces removed, each run of
    /// spaces inside made one space (AWS SigV4 "Create a canonical request"). Spaces are SP, HTAB, CR and LF;
    /// other bytes are kept as they are. Works on the UTF-8 bytes: Foundation's trimming (NSString on Linux)
    /// was 2% of the daemon's CPU per small GET.
    static func foldSpaces(_ v: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(v.utf8.count)
        var space = false
        for b in v.utf8 {
            if b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D {
                space = !out.isEmpty
            } else {
                if space { out.append(0x20) }
                space = false
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 3986 remove_dot_segments plus collapsing of empty segments, keeping a trailing slash.
    static func normalized(_ path: String) -> String {
        var out: [Substring] = []
        for seg in path.split(separator: "/", omittingEmptySubsequences: true) {
            if seg == "." { continue }
            if seg == ".." { if !out.isEmpty { out.removeLast() }; continue }
            out.append(seg)
        }
        var s = "/" + out.joined(separator: "/")
        let last = path.split(separator: "/", omittingEmptySubsequences: false).last ?? ""
        if path.hasSuffix("/") && s != "/" && last.isEmpty { s += "/" }
        return s
    }
}
