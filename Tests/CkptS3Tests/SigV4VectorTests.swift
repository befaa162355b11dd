import CkptDigest
@testable import CkptS3
import Foundation
import XCTest

/// The published AWS SigV4 test suite (generic-service rules: normalized, encoded path). Data in
/// Fixtures/aws-sig-v4-test-suite, Apache-2.0, with its LICENSE and NOTICE.
final class SigV4VectorTests: XCTestCase {
    static let suite = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/aws-sig-v4-test-suite")
    static let credentials = Credentials(accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    static let date = Date(timeIntervalSince1970: 1_440_938_160)  // 20150830T123600Z

    struct Vector {
        var name: String
        var dir: URL
        func read(_ ext: String) throws -> String {
            try String(contentsOf: dir.appendingPathComponent("\(name).\(ext)"), encoding: .utf8)
        }
    }

    /// Every folder holding a NAME.req, recursively.
    static func vectors() throws -> [Vector] {
        var out: [Vector] = []
        let fm = FileManager.default
        let e = fm.enumerator(at: suite, includingPropertiesForKeys: nil)!
        for case let url as URL in e where url.pathExtension == "req" {
            out.append(Vector(name: url.deletingPathExtension().lastPathComponent, dir: url.deletingLastPathComponent()))
        }
        return out.sorted { $0.name < $1.name }
    }

    /// Parses the suite's raw request format. A line starting with whitespace continues the previous
    /// header; the suite signs such continuations as further values of that header.
    static func parse(_ raw: String) -> (method: String, path: String, query: [(String, String)], headers: [(String, String)], body: [UInt8]) {
        let parts = raw.components(separatedBy: "\n\n")
        let head = parts[0]
        let body = parts.count > 1 ? Array(parts[1...].joined(separator: "\n\n").utf8) : []
        var lines = head.components(separatedBy: "\n")
        let requestLine = lines.removeFirst()
        let method = String(requestLine.prefix { $0 != " " })
        var target = String(requestLine.dropFirst(method.count + 1))
        if let r = target.range(of: " HTTP/", options: .backwards) { target = String(target[..<r.lowerBound]) }
        var path = target
        var query: [(String, String)] = []
        if let q = target.firstIndex(of: "?") {
            path = String(target[..<q])
            for pair in target[target.index(after: q)...].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query.append((URIEncoding.decode(String(kv[0])), kv.count > 1 ? URIEncoding.decode(String(kv[1])) : ""))
            }
        }
        var headers: [(String, String)] = []
        for line in lines where !line.isEmpty {
            if line.first == " " || line.first == "\t", let last = headers.last {
                headers.append((last.0, line.trimmingCharacters(in: .whitespaces)))
            } else if let colon = line.firstIndex(of: ":") {
                headers.append((String(line[..<colon]), String(line[line.index(after: colon)...])))
            }
        }
        return (method, path, query, headers, body)
    }

    func testAllVectors() throws {
        let vectors = try Self.vectors()
        XCTAssertGreaterThanOrEqual(vectors.count, 25, "the suite should have been copied whole")
        let signer = SigV4Signer(credentials: Self.credentials, region: "us-east-1", service: "service",
                                 normalizePath: true, doubleEncodePath: true)
        var consistent = 0
        var inconsistent: [String] = []
        for v in vectors {
            let req = Self.parse(try v.read("req"))
            let hash = Digest.sha256(req.body).hexString
            let result = signer.sign(method: req.method, path: req.path, query: req.query, headers: req.headers,
                                     payloadHash: hash, date: Self.date)
            XCTAssertEqual(result.canonicalRequest, try v.read("creq"), "canonical request of \(v.name)")
            let sts = try v.read("sts")
            if sts.components(separatedBy: "\n").last == Digest.sha256(try v.read("creq")).hexString {
                XCTAssertEqual(result.stringToSign, sts, "string to sign of \(v.name)")
                XCTAssertEqual(result.authorization, try v.read("authz"), "Authorization of \(v.name)")
                consistent += 1
            } else {
                // Two vectors of the suite are inconsistent: their .sts is not the hash of their own .creq.
                // post-x-www-form-urlencoded's .sts/.authz were made without the content-length header;
                // post-x-www-form-urlencoded-parameters's .sts matches no variant of its request.
                inconsistent.append(v.name)
                if v.name == "post-x-www-form-urlencoded" {
                    let without = signer.sign(method: req.method, path: req.path, query: req.query,
                                              headers: req.headers.filter { $0.0.lowercased() != "content-length" },
                                              payloadHash: hash, date: Self.date)
                    XCTAssertEqual(without.stringToSign, sts)
                    XCTAssertEqual(without.authorization, try v.read("authz"))
                }
            }
        }
        XCTAssertEqual(inconsistent, ["post-x-www-form-urlencoded", "post-x-www-form-urlencoded-parameters"])
        XCTAssertGreaterThanOrEqual(consistent, 25)
    }

    func testS3DoesNotNormalizeOrDoubleEncode() {
        let signer = SigV4Signer(credentials: Self.credentials, region: "us-east-1")
        let path = "/bucket/" + URIEncoding.encode("a//b/./c/../d e+f%", keepSlash: true)
        let r = signer.sign(method: "GET", path: path, query: [], headers: [("host", "s3.amazonaws.com"), ("x-amz-date", "20150830T123600Z")],
                            payloadHash: "UNSIGNED-PAYLOAD", date: Self.date)
        XCTAssertEqual(r.canonicalRequest.components(separatedBy: "\n")[1], "/bucket/a//b/./c/../d%20e%2Bf%25")
    }

    /// Canonical header values: spaces, tabs and line breaks at the ends go, a run of them inside becomes one
    /// space, and every other byte (UTF-8 in an x-amz-meta value) stays as it is.
    func testHeaderValuesAreTrimmedAndTheirInnerSpacesFolded() {
        XCTAssertEqual(SigV4Signer.foldSpaces("  a   b\t\tc \r\n"), "a b c")
        XCTAssertEqual(SigV4Signer.foldSpaces("value"), "value")
        XCTAssertEqual(SigV4Signer.foldSpaces(" \t "), "")
        XCTAssertEqual(SigV4Signer.foldSpaces("\t é  ü\u{00A0}x "), "é ü\u{00A0}x")
    }

    func testSecretNeverInDescriptions() {
        let c = Credentials(accessKeyId: "AKID", secretAccessKey: "TOPSECRET", sessionToken: "TOKENSECRET")
        XCTAssertFalse("\(c)".contains("TOPSECRET"))
        XCTAssertFalse("\(c)".contains("TOKENSECRET"))
        let r = SigV4Signer(credentials: c, region: "us-east-1").sign(
            method: "GET", path: "/", query: [], headers: [("host", "h"), ("x-amz-security-token", "TOKENSECRET")],
            payloadHash: "UNSIGNED-PAYLOAD", date: Self.date)
        XCTAssertFalse(r.authorization.contains("TOPSECRET"))
        XCTAssertFalse(r.stringToSign.contains("TOPSECRET"))
    }
}
