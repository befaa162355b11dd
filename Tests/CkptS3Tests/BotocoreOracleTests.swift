import CkptDigest
import CkptTestSupport
@testable import CkptS3
import Foundation
import XCTest

/// S3 signs paths differently from the generic test-suite vectors, so a real S3 signer is the oracle:
/// boto3 builds and signs a sample of real requests (captured before sending, nothing leaves the
/// process), and our URL builder and signer must produce the same path and the same Authorization.
final class BotocoreOracleTests: XCTestCase {
    struct Case {
        var op: String
        var params: [String: Any]
        var bucket: String
        var key: String?
    }

    static let oddKeys = [
        "plain.txt", "with space.bin", "plus+sign", "percent%25and%", "tilde~file", "ünïcødé/ファイル.pt",
        "deep/a/b/c/d/e/f/g/h/model.safetensors", "a//double//slash", "./dot/../dotdot", "trailing/",
        "sym!$&'()*,;=:@bols", "emoji-🚀.ckpt", "question?mark#hash",
    ]

    static func cases() -> [Case] {
        var c: [Case] = []
        for k in oddKeys {
            c.append(Case(op: "get_object", params: ["Bucket": "ckpt-bucket", "Key": k], bucket: "ckpt-bucket", key: k))
            c.append(Case(op: "head_object", params: ["Bucket": "ckpt-bucket", "Key": k], bucket: "ckpt-bucket", key: k))
        }
        c += [
            Case(op: "get_object", params: ["Bucket": "ckpt-bucket", "Key": "r", "Range": "bytes=100-199", "IfMatch": "\"abc\"",
                                            "VersionId": "v+1/2="], bucket: "ckpt-bucket", key: "r"),
            Case(op: "put_object", params: ["Bucket": "ckpt-bucket", "Key": "dir/file one", "Body": "hello world",
                                            "ContentType": "application/octet-stream", "Metadata": ["mtime": "1700000000.5"]],
                 bucket: "ckpt-bucket", key: "dir/file one"),
            Case(op: "list_objects_v2", params: ["Bucket": "ckpt-bucket", "Prefix": "train/shard 0/", "Delimiter": "/",
                                                 "ContinuationToken": "1/abc+def==", "MaxKeys": 1000, "EncodingType": "url"],
                 bucket: "ckpt-bucket", key: nil),
            Case(op: "list_object_versions", params: ["Bucket": "ckpt-bucket", "Prefix": "p", "KeyMarker": "k m",
                                                      "EncodingType": "url"], bucket: "ckpt-bucket", key: nil),
            Case(op: "list_multipart_uploads", params: ["Bucket": "ckpt-bucket", "Prefix": "x/"], bucket: "ckpt-bucket", key: nil),
            Case(op: "create_multipart_upload", params: ["Bucket": "ckpt-bucket", "Key": "big file.bin"], bucket: "ckpt-bucket", key: "big file.bin"),
            Case(op: "upload_part", params: ["Bucket": "ckpt-bucket", "Key": "big file.bin", "UploadId": "up/id+1==",
                                             "PartNumber": 7, "Body": "part-bytes"], bucket: "ckpt-bucket", key: "big file.bin"),
            Case(op: "list_parts", params: ["Bucket": "ckpt-bucket", "Key": "big", "UploadId": "u1", "PartNumberMarker": 3],
                 bucket: "ckpt-bucket", key: "big"),
            Case(op: "abort_multipart_upload", params: ["Bucket": "ckpt-bucket", "Key": "big", "UploadId": "u1"], bucket: "ckpt-bucket", key: "big"),
            Case(op: "copy_object", params: ["Bucket": "ckpt-bucket", "Key": "dst key", "CopySource": "ckpt-bucket/src key+1"],
                 bucket: "ckpt-bucket", key: "dst key"),
            Case(op: "delete_object", params: ["Bucket": "ckpt-bucket", "Key": "gone/ü"], bucket: "ckpt-bucket", key: "gone/ü"),
            Case(op: "delete_objects", params: ["Bucket": "ckpt-bucket", "Delete": ["Objects": [["Key": "a"], ["Key": "b c"]]]],
                 bucket: "ckpt-bucket", key: nil),
            Case(op: "head_bucket", params: ["Bucket": "ckpt-bucket"], bucket: "ckpt-bucket", key: nil),
        ]
        return c
    }

    struct Captured: Decodable {
        var method: String
        var url: String
        var headers: [[String]]
        var body_hex: String
    }

    func runOracle(endpoint: String, region: String, style: String, creds: Credentials) throws -> [Captured] {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../Harness/botocore_oracle.py").standardized.path
        let json = try JSONSerialization.data(withJSONObject: Self.cases().map { ["op": $0.op, "params": $0.params] })
        let output = try CkptTestSupport.run(["python3", script, endpoint, region, style, creds.accessKeyId, creds.secretAccessKey]
                             + (creds.sessionToken.map { [$0] } ?? []), input: String(decoding: json, as: UTF8.self))
        let data = Data(output.utf8)
        return try JSONDecoder().decode([Captured].self, from: data)
    }

    func check(endpoint: String, region: String, style: AddressingStyle, creds: Credentials) throws {
        let captured = try runOracle(endpoint: endpoint, region: region, style: style.rawValue, creds: creds)
        let cases = Self.cases()
        XCTAssertEqual(captured.count, cases.count)
        let config = S3ClientConfiguration(endpoint: try S3Endpoint(url: endpoint), region: region, addressingStyle: style, credentials: creds)
        let client = S3Client(configuration: config)
        let signer = SigV4Signer(credentials: creds, region: region)
        for (c, req) in zip(cases, captured) {
            let label = "\(c.op) \(c.key ?? "")"
            // The request target: our path for (bucket, key) must be botocore's, byte for byte.
            let afterScheme = req.url.range(of: "://")!.upperBound
            let hostAndPath = req.url[afterScheme...]
            let pathStart = hostAndPath.firstIndex(of: "/") ?? hostAndPath.endIndex
            let host = String(hostAndPath[..<pathStart])
            var path = String(hostAndPath[pathStart...])
            var query: [(String, String)] = []
            if let q = path.firstIndex(of: "?") {
                for pair in path[path.index(after: q)...].split(separator: "&") {
                    let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    query.append((URIEncoding.decode(String(kv[0])), kv.count > 1 ? URIEncoding.decode(String(kv[1])) : ""))
                }
                path = String(path[..<q])
            }
            let ours = client.target(bucket: c.bucket, key: c.key, query: query)
            XCTAssertEqual(ours.path, path, "path of \(label)")
            XCTAssertEqual(ours.host, host, "host of \(label)")

            // The signature over the headers botocore signed.
            let authz = req.headers.first { $0[0] == "Authorization" }![1]
            let signedNames = Set(authz.components(separatedBy: "SignedHeaders=")[1].components(separatedBy: ",")[0]
                .split(separator: ";").map(String.init))
            var headers: [(String, String)] = [("host", ours.host)]
            for h in req.headers where signedNames.contains(h[0].lowercased()) { headers.append((h[0], h[1])) }
            let amzDate = req.headers.first { $0[0] == "X-Amz-Date" }![1]
            let payloadHash = req.headers.first { $0[0] == "X-Amz-Content-SHA256" }![1]
            if payloadHash != "UNSIGNED-PAYLOAD" {
                let body = stride(from: 0, to: req.body_hex.count, by: 2).map { i -> UInt8 in
                    let s = req.body_hex.index(req.body_hex.startIndex, offsetBy: i)
                    return UInt8(req.body_hex[s..<req.body_hex.index(s, offsetBy: 2)], radix: 16)!
                }
                XCTAssertEqual(Digest.sha256(body).hexString, payloadHash, "payload hash of \(label)")
            }
            let date = S3Date.make(Int(amzDate.prefix(4))!, Int(amzDate.dropFirst(4).prefix(2))!, Int(amzDate.dropFirst(6).prefix(2))!,
                                   Int(amzDate.dropFirst(9).prefix(2))!, Int(amzDate.dropFirst(11).prefix(2))!, Int(amzDate.dropFirst(13).prefix(2))!)!
            let result = signer.sign(method: req.method, path: ours.path, query: query, headers: headers, payloadHash: payloadHash, date: date)
            XCTAssertEqual(result.authorization, authz, "Authorization of \(label)")
        }
    }

    func testPathStyleCustomEndpoint() throws {
        try check(endpoint: "http://127.0.0.1:9000", region: "us-east-1", style: .path,
                  creds: Credentials(accessKeyId: "AKIAORACLE", secretAccessKey: "oracle/secret+key"))
    }

    func testVirtualHostedAWSWithSessionToken() throws {
        try check(endpoint: "https://s3.eu-west-1.amazonaws.com", region: "eu-west-1", style: .virtual,
                  creds: Credentials(accessKeyId: "ASIAORACLE", secretAccessKey: "s3cr3t", sessionToken: "FwoGZXIvYXdzEJr//token=="))
    }
}
