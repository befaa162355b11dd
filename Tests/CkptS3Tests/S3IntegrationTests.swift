import CkptDigest
import CkptTestSupport
import CkptHTTP
@testable import CkptS3
import Foundation
import XCTest

/// The S3 client against a real SeaweedFS on loopback, with results checked by boto3 where it matters.
final class S3IntegrationTests: XCTestCase {
    var server: SeaweedFS!
    var s3: S3Client!
    let bucket = SeaweedFS.bucket
    var prefix = ""

    override func setUpWithError() throws {
        server = try SeaweedFS.shared()
        s3 = try server.client()
        prefix = "\(name.filter { $0.isLetter || $0.isNumber })-\(UUID().uuidString.prefix(8))/"
    }

    func testPutGetRangeHead() async throws {
        let data = pattern(3 << 20 + 123, seed: 1)
        let key = prefix + "blob.bin"
        let put = try await s3.putObject(bucket, key, body: .bytes(data),
                                         options: PutOptions(contentType: "application/x-test", metadata: ["mtime": "1700000000.25"],
                                                             contentMD5: Digest.md5(data)))
        XCTAssertEqual(put.etag, "\"\(Digest.md5(data).hexString)\"")
        let head = try await s3.headObject(bucket, key)
        XCTAssertEqual(head.size, Int64(data.count))
        XCTAssertEqual(head.etag, put.etag)
        XCTAssertEqual(head.metadata["mtime"], "1700000000.25")
        XCTAssertNotNil(head.lastModified)
        let (info, whole) = try await s3.getObject(bucket, key)
        XCTAssertEqual(whole, data)
        XCTAssertEqual(info.size, Int64(data.count))
        for range in [Int64(0)..<1, 1000..<5000, Int64(data.count - 10)..<Int64(data.count), 1 << 20..<(2 << 20)] {
            let (ri, bytes) = try await s3.getObject(bucket, key, range: range, ifMatch: put.etag)
            XCTAssertEqual(bytes, Array(data[Int(range.lowerBound)..<Int(range.upperBound)]), "range \(range)")
            XCTAssertEqual(ri.size, Int64(data.count), "total size from Content-Range")
        }
        // Into a positional sink, as the cache will.
        let collected = SinkBuffer(count: 4096)
        _ = try await s3.getObject(bucket, key, range: 10_000..<14_096, sink: collected.sink)
        XCTAssertEqual(collected.bytes, Array(data[10_000..<14_096]))
        // An independent client sees the same bytes.
        let sha = try server.boto3("print(hashlib.sha256(s3.get_object(Bucket='\(bucket)', Key='\(key)')['Body'].read()).hexdigest())")
        XCTAssertEqual(sha, Digest.sha256(data).hexString)
    }

    /// Object data in memory goes with `x-amz-content-sha256: UNSIGNED-PAYLOAD` (a small file's upload sends its
    /// bytes this way, with a signed Content-MD5): the server takes it with or without the MD5, and refuses a
    /// body that does not match its Content-MD5.
    func testABodyInMemoryIsBoundByItsContentMD5OrItsSignedHash() async throws {
        let data = pattern(64 << 10, seed: 7)
        let key = prefix + "small.bin"
        let put = try await s3.putObject(bucket, key, body: .bytes(data), options: PutOptions(contentMD5: Digest.md5(data)))
        XCTAssertEqual(put.etag, "\"\(Digest.md5(data).hexString)\"")
        let unsigned = try await s3.putObject(bucket, key + ".2", body: .bytes(data), options: PutOptions())
        XCTAssertEqual(unsigned.etag, put.etag)
        var wrong = data
        wrong[100] ^= 1
        do {
            _ = try await s3.putObject(bucket, key + ".3", body: .bytes(wrong), options: PutOptions(contentMD5: Digest.md5(data)))
            XCTFail("a body that does not match its Content-MD5 was taken")
        } catch {
            XCTAssertNotEqual(error.code, .noSuchKey, "\(error)")
        }
        let (_, back) = try await s3.getObject(bucket, key)
        XCTAssertEqual(back, data)
        do {
            _ = try await s3.headObject(bucket, key + ".3")
            XCTFail("the refused body was stored")
        } catch {
            XCTAssertEqual(error.code, .noSuchKey, "\(error)")
        }
    }

    func testPreconditionsAndMissingKeys() async throws {
        let key = prefix + "cond"
        _ = try await s3.putObject(bucket, key, body: .bytes(Array("v1".utf8)))
        do {
            _ = try await s3.getObject(bucket, key, range: 0..<1, ifMatch: "\"0000000000000000\"")
            XCTFail("If-Match with a stale ETag must fail")
        } catch { XCTAssertEqual(error.code, .preconditionFailed, "\(error)") }
        do {
            _ = try await s3.headObject(bucket, prefix + "absent")
            XCTFail()
        } catch { XCTAssertEqual(error.code, .noSuchKey) }
        do {
            _ = try await s3.getObject(bucket, prefix + "absent")
            XCTFail()
        } catch {
            XCTAssertEqual(error.code, .noSuchKey)
            XCTAssertEqual(error.httpStatus, 404)
        }
    }

    func testMultipartUploadListPartsCompleteAndAbort() async throws {
        let s3c: S3Client = s3
        let bucketName = bucket
        let partSize = 5 << 20
        let data = pattern(3 * partSize + 777, seed: 2)
        let key = prefix + "multi part.bin"
        let uploadId = try await s3.createMultipartUpload(bucket, key, options: PutOptions(metadata: ["kind": "ckpt"]))
        // Parts in parallel, from a file with pread, as the write-back path will send them.
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("mpu-\(UUID().uuidString)")
        try Data(data).write(to: file)
        let fd = open(file.path, O_RDONLY)
        defer { close(fd); try? FileManager.default.removeItem(at: file) }
        let starts = stride(from: 0, to: data.count, by: partSize).map { $0 }
        let parts = try await withThrowingTaskGroup(of: CompletedPart.self) { group in
            for (i, start) in starts.enumerated() {
                let len = min(partSize, data.count - start)
                group.addTask {
                    let etag = try await s3c.uploadPart(bucketName, key, uploadId: uploadId, partNumber: i + 1,
                                                            body: .file(descriptor: fd, offset: Int64(start), length: Int64(len)),
                                                            checksum: .md5(Digest.md5(Array(data[start..<start + len]))))
                    return CompletedPart(partNumber: i + 1, etag: etag)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertEqual(parts.count, 4)
        let listed = try await s3.listParts(bucket, key, uploadId: uploadId)
        XCTAssertEqual(listed.parts.map(\.partNumber), [1, 2, 3, 4])
        XCTAssertEqual(listed.parts.map(\.size), [Int64(partSize), Int64(partSize), Int64(partSize), 777])
        let uploads = try await s3.listMultipartUploads(bucket, prefix: prefix)
        XCTAssertEqual(uploads.uploads.map(\.uploadId), [uploadId])
        XCTAssertEqual(uploads.uploads.first?.key, key)
        let done = try await s3.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts)
        XCTAssertFalse(done.etag.isEmpty)
        let sha = try server.boto3("print(hashlib.sha256(s3.get_object(Bucket='\(bucket)', Key='\(key)')['Body'].read()).hexdigest())")
        XCTAssertEqual(sha, Digest.sha256(data).hexString)
        let got1 = try await s3.headObject(bucket, key)
        XCTAssertEqual(got1.metadata["kind"], "ckpt")

        // Abort leaves nothing behind.
        let abandoned = try await s3.createMultipartUpload(bucket, prefix + "abandoned", options: .init())
        _ = try await s3.uploadPart(bucket, prefix + "abandoned", uploadId: abandoned, partNumber: 1, body: .bytes(pattern(1000, seed: 3)))
        try await s3.abortMultipartUpload(bucket, prefix + "abandoned", uploadId: abandoned)
        let after = try await s3.listMultipartUploads(bucket, prefix: prefix)
        XCTAssertTrue(after.uploads.isEmpty, "\(after.uploads)")
        do {
            _ = try await s3.headObject(bucket, prefix + "abandoned")
            XCTFail("an aborted upload must not create the object")
        } catch { XCTAssertEqual(error.code, .noSuchKey) }
        do {
            _ = try await s3.completeMultipartUpload(bucket, prefix + "abandoned", uploadId: abandoned,
                                                     parts: [CompletedPart(partNumber: 1, etag: "\"x\"")])
            XCTFail("completing an aborted upload must fail")
        } catch { XCTAssertFalse(error.isRetryable, "\(error)") }
    }

    /// A multipart upload declared with CRC32C (x-amz-checksum-algorithm): a part whose body does not match its
    /// x-amz-checksum-crc32c is refused (BadDigest) and nothing of it is kept; CompleteMultipartUpload repeats
    /// each part's checksum and S3's composite checksum of the object is the CRC32C of the parts' checksums
    /// ("-2"), as another client reads it.
    func testMultipartUploadWithCRC32CChecksums() async throws {
        let partSize = 5 << 20
        let data = pattern(partSize + 4099, seed: 5)
        let key = prefix + "crc32c.bin"
        let uploadId = try await s3.createMultipartUpload(bucket, key, options: PutOptions(checksumAlgorithm: .crc32c))
        let bodies = [Array(data[0..<partSize]), Array(data[partSize...])]
        let sums = bodies.map { CRC32C.checksum($0) }
        var damaged = bodies[0]
        damaged[12_345] ^= 0x10
        do {
            _ = try await s3.uploadPart(bucket, key, uploadId: uploadId, partNumber: 1, body: .bytes(damaged), checksum: .crc32c(sums[0]))
            XCTFail("a part that does not match its CRC32C was taken")
        } catch {
            XCTAssertEqual(error.code, .badDigest, "\(error)")
        }
        var parts: [CompletedPart] = []
        for (i, body) in bodies.enumerated() {
            let etag = try await s3.uploadPart(bucket, key, uploadId: uploadId, partNumber: i + 1, body: .bytes(body), checksum: .crc32c(sums[i]))
            parts.append(CompletedPart(partNumber: i + 1, etag: etag, checksumCRC32C: sums[i]))
        }
        _ = try await s3.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts)
        let composite = CRC32C.checksum(sums.flatMap { [UInt8($0 >> 24), UInt8($0 >> 16 & 0xff), UInt8($0 >> 8 & 0xff), UInt8($0 & 0xff)] })
        let seen = try server.boto3("""
            h = s3.head_object(Bucket='\(bucket)', Key='\(key)', ChecksumMode='ENABLED')
            print(h.get('ChecksumCRC32C'), hashlib.sha256(s3.get_object(Bucket='\(bucket)', Key='\(key)')['Body'].read()).hexdigest())
            """)
        XCTAssertEqual(seen, "\(CRC32C.s3String(composite))-2 \(Digest.sha256(data).hexString)")
    }

    func testCopyObjectAndUploadPartCopy() async throws {
        let partSize = 5 << 20
        let data = pattern(2 * partSize + 4321, seed: 4)
        let src = prefix + "source object"
        let put = try await s3.putObject(bucket, src, body: .bytes(data), options: PutOptions(metadata: ["a": "1"]))
        let copied = try await s3.copyObject(from: (bucket, src, nil), to: bucket, prefix + "copy/dst ü", ifMatch: put.etag, options: nil)
        XCTAssertEqual(copied.etag, put.etag)
        let got2 = try await s3.getObject(bucket, prefix + "copy/dst ü")
        XCTAssertEqual(got2.1, data)

        // Part copy, as a rename of an object above 5 GiB must be done.
        let dst = prefix + "partcopy dst"
        let up = try await s3.createMultipartUpload(bucket, dst, options: .init())
        var parts: [CompletedPart] = []
        var start: Int64 = 0
        var n = 1
        while start < Int64(data.count) {
            let end = min(start + Int64(partSize), Int64(data.count))
            let etag = try await s3.uploadPartCopy(from: (bucket, src, nil), range: start..<end, to: bucket, dst,
                                                   uploadId: up, partNumber: n, ifMatch: nil)
            parts.append(CompletedPart(partNumber: n, etag: etag))
            start = end
            n += 1
        }
        _ = try await s3.completeMultipartUpload(bucket, dst, uploadId: up, parts: parts)
        let sha = try server.boto3("print(hashlib.sha256(s3.get_object(Bucket='\(bucket)', Key='\(dst)')['Body'].read()).hexdigest())")
        XCTAssertEqual(sha, Digest.sha256(data).hexString)
    }

    func testListingAcrossPagesWithDelimiterAndBatchDelete() async throws {
        let s3c: S3Client = s3
        let bucketName = bucket
        // 2,600 keys: 2,500 under d0..d4/, 100 at the top.
        var keys: [String] = []
        for i in 0..<2500 { keys.append(prefix + "d\(i % 5)/obj-\(String(format: "%05d", i))") }
        for i in 0..<100 { keys.append(prefix + "top-\(i)") }
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            for _ in 0..<32 {
                let k = keys[next]; next += 1
                group.addTask { _ = try await s3c.putObject(bucketName, k, body: .bytes(Array(k.utf8))) }
            }
            while try await group.next() != nil {
                if next < keys.count {
                    let k = keys[next]; next += 1
                    group.addTask { _ = try await s3c.putObject(bucketName, k, body: .bytes(Array(k.utf8))) }
                }
            }
        }
        var pages = 0
        var listed: [String] = []
        var token: String? = nil
        repeat {
            let page = try await s3.listObjectsV2(bucket, prefix: prefix, delimiter: nil, continuationToken: token, startAfter: nil, maxKeys: 1000)
            pages += 1
            listed += page.objects.map(\.key)
            XCTAssertLessThanOrEqual(page.objects.count, 1000)
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        XCTAssertGreaterThanOrEqual(pages, 3)
        XCTAssertEqual(listed, keys.sorted())
        let got3 = try await s3.listAllObjects(bucket, prefix: prefix)
        XCTAssertEqual(got3.count, 2600)

        let top = try await s3.listObjectsV2(bucket, prefix: prefix, delimiter: "/", continuationToken: nil, startAfter: nil, maxKeys: nil)
        XCTAssertEqual(top.commonPrefixes, (0..<5).map { prefix + "d\($0)/" })
        XCTAssertEqual(top.objects.count, 100)
        let sub = try await s3.listObjectsV2(bucket, prefix: prefix + "d3/", delimiter: "/", continuationToken: nil, startAfter: nil, maxKeys: nil)
        XCTAssertEqual(sub.objects.count, 500)
        XCTAssertTrue(sub.commonPrefixes.isEmpty)

        let result = try await s3.deleteObjects(bucket, keys.map { ObjectToDelete(key: $0) })
        XCTAssertEqual(result.errors.count, 0)
        XCTAssertEqual(result.deleted.count, 2600)
        let got4 = try await s3.listAllObjects(bucket, prefix: prefix)
        XCTAssertEqual(got4.count, 0)
    }

    func testOddKeysRoundTripExactly() async throws {
        let odd = ["with space", "plus+sign", "percent%20literal", "tilde~", "ünïcødé/ファイル", "emoji 🚀.pt",
                   "deep/a/b/c/d/e/f/g/h/i/j.bin", "sym!$&'()*,;=:@", "question?and#hash", "a+b c+d", "..dots..", "x%2Fy"]
        for (i, k) in odd.enumerated() {
            _ = try await s3.putObject(bucket, prefix + k, body: .bytes(Array("value \(i)".utf8)))
        }
        let listed = try await s3.listAllObjects(bucket, prefix: prefix).map { String($0.key.dropFirst(prefix.count)) }
        XCTAssertEqual(Set(listed), Set(odd))
        for (i, k) in odd.enumerated() {
            let got5 = try await s3.getObject(bucket, prefix + k)
            XCTAssertEqual(got5.1, Array("value \(i)".utf8), k)
        }
        // boto3 sees the same names.
        let names = try server.boto3("""
            r = s3.list_objects_v2(Bucket='\(bucket)', Prefix='\(prefix)')
            print(json.dumps([o['Key'] for o in r['Contents']]))
            """)
        XCTAssertEqual(Set(try JSONDecoder().decode([String].self, from: Data(names.utf8))), Set(odd.map { prefix + $0 }))
        for k in odd { try await s3.deleteObject(bucket, prefix + k, versionId: nil) }
        let got6 = try await s3.listAllObjects(bucket, prefix: prefix)
        XCTAssertEqual(got6.count, 0)
    }

    func testVersionsOnAVersionedBucket() async throws {
        let vb = SeaweedFS.versionedBucket
        try SeaweedFS.shared().putBucketVersioning(vb, enabled: true)
        let key = prefix + "model.ckpt"
        let v1 = try await s3.putObject(vb, key, body: .bytes(Array("first".utf8)))
        let v2 = try await s3.putObject(vb, key, body: .bytes(Array("second!".utf8)))
        XCTAssertNotNil(v1.versionId)
        XCTAssertNotEqual(v1.versionId, v2.versionId)
        try await s3.deleteObject(vb, key, versionId: nil)
        let page = try await s3.listObjectVersions(vb, prefix: prefix, delimiter: nil, keyMarker: nil, versionIdMarker: nil, maxKeys: nil)
        let versions = page.versions.filter { !$0.isDeleteMarker }
        let markers = page.versions.filter { $0.isDeleteMarker }
        XCTAssertEqual(Set(versions.map(\.versionId)), Set([v1.versionId!, v2.versionId!]))
        XCTAssertEqual(markers.count, 1)
        XCTAssertTrue(markers[0].isLatest)
        XCTAssertEqual(versions.first { $0.versionId == v2.versionId }?.size, 7)
        let (info, old) = try await s3.getObject(vb, key, versionId: v1.versionId)
        XCTAssertEqual(old, Array("first".utf8))
        XCTAssertEqual(info.versionId, v1.versionId)
        do {
            _ = try await s3.getObject(vb, key)
            XCTFail("the latest version is a delete marker")
        } catch { XCTAssertEqual(error.code, .noSuchKey) }
    }

    func testCredentialAndBucketErrorsAreTypedAndActionable() async throws {
        let wrongSecret = try server.client(secret: "not-the-secret")
        do {
            try await wrongSecret.headBucket(bucket)
            XCTFail("a wrong secret must be refused")
        } catch {
            XCTAssertEqual(error.code, .signatureDoesNotMatch, "\(error)")
            XCTAssertTrue(error.description.contains("AWS_SECRET_ACCESS_KEY"))
            XCTAssertFalse(error.description.contains("not-the-secret"), "never print a secret")
        }
        do {
            _ = try await wrongSecret.getObject(bucket, "anything")
            XCTFail()
        } catch { XCTAssertEqual(error.code, .signatureDoesNotMatch, "\(error)") }
        let unknownKey = try server.client(accessKey: "AKIANOSUCHKEY")
        do {
            try await unknownKey.headBucket(bucket)
            XCTFail()
        } catch { XCTAssertEqual(error.code, .invalidAccessKeyId, "\(error)") }
        do {
            try await s3.headBucket("no-such-bucket-\(UUID().uuidString.prefix(8).lowercased())")
            XCTFail()
        } catch {
            XCTAssertEqual(error.code, .noSuchBucket, "\(error)")
            XCTAssertTrue(error.description.contains("check the bucket name"))
        }
        do {
            _ = try await s3.listObjectsV2("no-such-bucket-x1", prefix: nil, delimiter: nil, continuationToken: nil, startAfter: nil, maxKeys: nil)
            XCTFail()
        } catch { XCTAssertEqual(error.code, .noSuchBucket, "\(error)") }
    }

    func testHTTPSVerifiesCertificatesAndAcceptsACustomCABundle() async throws {
        let https = try XCTUnwrap(server.info.https_endpoint)
        var config = try server.configuration()
        config.endpoint = try S3Endpoint(url: https)
        // The system store does not know the test CA: the handshake must fail, with the fix in the message.
        config.http.caBundle = nil
        do {
            try await S3Client(configuration: config).headBucket(bucket)
            XCTFail("an unknown CA must be refused: certificate verification is on by default")
        } catch {
            XCTAssertEqual(error.code, .transport(.tls), "\(error)")
            XCTAssertTrue(error.description.contains("AWS_CA_BUNDLE"))
        }
        // AWS_CA_BUNDLE (resolved into caBundle) makes it work.
        let resolved = try S3ClientConfiguration.resolve(
            .init(endpointURL: https),
            environment: ["AWS_CA_BUNDLE": try XCTUnwrap(server.info.ca_bundle), "AWS_ACCESS_KEY_ID": server.info.access_key,
                          "AWS_SECRET_ACCESS_KEY": server.info.secret_key, "AWS_CONFIG_FILE": "/nonexistent",
                          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "HOME": "/nonexistent"])
        let tls = S3Client(configuration: resolved)
        try await tls.headBucket(bucket)
        let key = prefix + "over-tls"
        _ = try await tls.putObject(bucket, key, body: .bytes(Array("secure".utf8)))
        let got = try await tls.getObject(bucket, key)
        XCTAssertEqual(got.1, Array("secure".utf8))
    }

    func testManyRequestsInFlightOverReusedConnections() async throws {
        let s3c: S3Client = s3
        let bucketName = bucket
        let key = prefix + "shared"
        let data = pattern(256 << 10, seed: 9)
        _ = try await s3.putObject(bucket, key, body: .bytes(data))
        let before = s3.http.stats.requests
        let ok = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<200 {
                let lo = Int64((i * 997) % (data.count - 4096))
                group.addTask {
                    let (_, b) = try await s3c.getObject(bucketName, key, range: lo..<(lo + 4096))
                    return b == Array(data[Int(lo)..<Int(lo) + 4096])
                }
            }
            return try await group.reduce(true) { $0 && $1 }
        }
        XCTAssertTrue(ok)
        XCTAssertEqual(s3.http.stats.requests - before, 200)
    }
}

/// Collects sink output at its offsets.
final class SinkBuffer: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer: [UInt8]
    init(count: Int) { buffer = [UInt8](repeating: 0, count: count) }
    var bytes: [UInt8] { lock.withLock { buffer } }
    var sink: ObjectBodySink {
        { offset, chunk in
            self.lock.withLock {
                self.buffer.withUnsafeMutableBytes { dst in
                    dst.baseAddress!.advanced(by: Int(offset)).copyMemory(from: chunk.baseAddress!, byteCount: chunk.count)
                }
            }
        }
    }
}

/// Retries, against a server that misbehaves on purpose.
final class RetryIntegrationTests: XCTestCase {
    let fast = RetryPolicy(maxAttempts: 4, baseDelay: .milliseconds(10), maxDelay: .milliseconds(50))
    let expected = (0..<1000).map { UInt8($0 % 256) }

    func testSlowDownInternalErrorShortBodyAndResetAreRetried() async throws {
        let server = try FaultServer()
        let s3 = try server.client(retry: fast)
        for kind in ["slowdown", "internal", "short", "reset"] {
            let key = "\(kind)-2/obj"
            let (_, body) = try await s3.getObject("b", key)
            XCTAssertEqual(body, expected, kind)
            XCTAssertEqual(try server.requestCount("/b/\(key)"), 3, "\(kind): two failures, then success")
        }
    }

    /// A clock an hour off: the request is sent again once with the server's clock (from its Date header), also
    /// a HEAD, whose 403 has no body to say RequestTimeTooSkewed; a plain AccessDenied is not sent again.
    func testClockSkewIsCorrectedFromTheDateHeaderAlsoForHead() async throws {
        let server = try FaultServer()
        let s3 = try server.client(retry: fast)
        let info = try await s3.headObject("b", "skewed-1/head")
        XCTAssertEqual(info.size, 1000)
        XCTAssertEqual(try server.requestCount("/b/skewed-1/head"), 2)
        let (_, body) = try await s3.getObject("b", "skewed-1/get")
        XCTAssertEqual(body.count, 1000)
        XCTAssertEqual(try server.requestCount("/b/skewed-1/get"), 2)
        do {
            _ = try await s3.headObject("b", "denied/head")
            XCTFail("denied")
        } catch {
            XCTAssertEqual(error.httpStatus, 403)
        }
        XCTAssertEqual(try server.requestCount("/b/denied/head"), 1)
    }

    func testGivesUpAfterMaxAttemptsAndSaysSo() async throws {
        let server = try FaultServer()
        let s3 = try server.client(retry: fast)
        do {
            _ = try await s3.getObject("b", "slowdown-99/obj")
            XCTFail()
        } catch {
            XCTAssertEqual(error.code, .slowDown)
            XCTAssertEqual(error.attempts, 4)
            XCTAssertTrue(error.description.contains("after 4 attempts"))
        }
        XCTAssertEqual(try server.requestCount("/b/slowdown-99/obj"), 4)
    }

    /// An `<Error>` sent with 200 (CompleteMultipartUpload, the copies) is retried by the same loop as a 503,
    /// within the same attempt budget: the two kinds together never multiply the requests.
    func testErrorsSentWith200ShareTheAttemptBudget() async throws {
        let server = try FaultServer()
        let s3 = try server.client(retry: fast)
        let parts = [CompletedPart(partNumber: 1, etag: "\"a\"")]
        let done = try await s3.completeMultipartUpload("b", "flaky-3/obj", uploadId: "u", parts: parts)
        XCTAssertEqual(done.etag, "\"e-2\"")
        XCTAssertEqual(try server.requestCount("/b/flaky-3/obj"), 4, "503, 200 <Error>, 503, then success")
        do {
            _ = try await s3.completeMultipartUpload("b", "flaky-99/obj", uploadId: "u", parts: parts)
            XCTFail("never succeeds")
        } catch {
            XCTAssertEqual(error.attempts, 4)
            XCTAssertTrue([.slowDown, .internalError].contains(error.code), "\(error)")
        }
        XCTAssertEqual(try server.requestCount("/b/flaky-99/obj"), 4, "maxAttempts in all")
    }

    func testPermanentErrorsAreNotRetried() async throws {
        let server = try FaultServer()
        let s3 = try server.client(retry: fast)
        do {
            _ = try await s3.getObject("b", "denied/obj")
            XCTFail()
        } catch { XCTAssertEqual(error.code, .accessDenied) }
        XCTAssertEqual(try server.requestCount("/b/denied/obj"), 1)
    }

    func testUnreachableEndpointIsATransportErrorWithAFix() async throws {
        // A port nothing listens on: bind one, note it, close it.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        close(fd)
        let port = Int(UInt16(bigEndian: addr.sin_port))
        let s3 = S3Client(configuration: S3ClientConfiguration(endpoint: try S3Endpoint(url: "http://127.0.0.1:\(port)"),
                                                               addressingStyle: .path, credentials: nil, retry: fast))
        do {
            try await s3.headBucket("b")
            XCTFail()
        } catch {
            XCTAssertEqual(error.code, .transport(.connect), "\(error)")
            XCTAssertTrue(error.description.contains("nothing answers at the endpoint"))
        }
    }
}
