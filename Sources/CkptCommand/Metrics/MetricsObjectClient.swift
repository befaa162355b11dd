import CkptHTTP
import CkptS3
import CoreMetrics

/// An `ObjectClient` that records every S3 request it passes on to `base`: a count by operation and outcome,
/// the latency (retries included: the client retries inside each call), and the body bytes of requests that
/// succeeded (`MetricName.s3Requests`, `s3RequestDuration`, `s3SentBytes`, `s3ReceivedBytes`). Metrics go
/// through the swift-metrics API to `factory`, so the decorator does not know the backend.
struct MetricsObjectClient: ObjectClient {
    let base: any ObjectClient
    let factory: any MetricsFactory

    init(wrapping base: any ObjectClient, factory: any MetricsFactory) {
        self.base = base
        self.factory = factory
    }

    /// Runs `body` as S3 operation `operation` and records its outcome. `sent` is the request body's size;
    /// `received` tells the bytes a successful result carries.
    private func record<T>(_ operation: String, sent: Int64 = 0, received: (T) -> Int64 = { _ in 0 },
                           _ body: () async throws(S3Error) -> T) async throws(S3Error) -> T {
        let start = ContinuousClock.now
        let result: Result<T, S3Error>
        do { result = .success(try await body()) } catch { result = .failure(error) }
        let elapsed = ContinuousClock.now - start
        let status: String
        switch result {
        case .success(let value):
            status = "ok"
            if sent > 0 { Counter(label: MetricName.s3SentBytes.name, dimensions: [("operation", operation)], factory: factory).increment(by: sent) }
            let got = received(value)
            if got > 0 { Counter(label: MetricName.s3ReceivedBytes.name, dimensions: [("operation", operation)], factory: factory).increment(by: got) }
        case .failure(let error):
            status = error.s3Code.isEmpty ? "error" : error.s3Code
        }
        Counter(label: MetricName.s3Requests.name, dimensions: [("operation", operation), ("status", status)], factory: factory).increment()
        let (seconds, attoseconds) = elapsed.components
        CoreMetrics.Timer(label: MetricName.s3RequestDuration.name, dimensions: [("operation", operation)], factory: factory)
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        return try result.get()
    }

    /// Bytes of `range` (end exclusive) that an object of `size` bytes holds; the whole object without a range.
    private static func length(of range: Range<Int64>?, size: Int64) -> Int64 {
        guard let range else { return max(0, size) }
        guard size >= 0 else { return Int64(range.count) }
        return max(0, min(range.upperBound, size) - range.lowerBound)
    }

    func headBucket(_ bucket: String) async throws(S3Error) {
        try await record("HeadBucket") { () async throws(S3Error) in try await base.headBucket(bucket) }
    }

    func headObject(_ bucket: String, _ key: String, versionId: String?, ifMatch: String?) async throws(S3Error) -> ObjectInfo {
        try await record("HeadObject") { () async throws(S3Error) in
            try await base.headObject(bucket, key, versionId: versionId, ifMatch: ifMatch)
        }
    }

    func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?,
                   versionId: String?) async throws(S3Error) -> (ObjectInfo, [UInt8]) {
        try await record("GetObject", received: { Int64($0.1.count) }) { () async throws(S3Error) in
            try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
        }
    }

    func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?,
                   sink: @escaping ObjectBodySink) async throws(S3Error) -> ObjectInfo {
        try await record("GetObject", received: { Self.length(of: range, size: $0.size) }) { () async throws(S3Error) in
            try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId, sink: sink)
        }
    }

    func putObject(_ bucket: String, _ key: String, body: ObjectBody, options: PutOptions) async throws(S3Error) -> WriteResult {
        try await record("PutObject", sent: body.length) { () async throws(S3Error) in
            try await base.putObject(bucket, key, body: body, options: options)
        }
    }

    func createMultipartUpload(_ bucket: String, _ key: String, options: PutOptions) async throws(S3Error) -> String {
        try await record("CreateMultipartUpload") { () async throws(S3Error) in
            try await base.createMultipartUpload(bucket, key, options: options)
        }
    }

    func uploadPart(_ bucket: String, _ key: String, uploadId: String, partNumber: Int, body: ObjectBody,
                    checksum: BodyChecksum?) async throws(S3Error) -> String {
        try await record("UploadPart", sent: body.length) { () async throws(S3Error) in
            try await base.uploadPart(bucket, key, uploadId: uploadId, partNumber: partNumber, body: body, checksum: checksum)
        }
    }

    func completeMultipartUpload(_ bucket: String, _ key: String, uploadId: String, parts: [CompletedPart],
                                 condition: WriteCondition?) async throws(S3Error) -> WriteResult {
        try await record("CompleteMultipartUpload") { () async throws(S3Error) in
            try await base.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts, condition: condition)
        }
    }

    func abortMultipartUpload(_ bucket: String, _ key: String, uploadId: String) async throws(S3Error) {
        try await record("AbortMultipartUpload") { () async throws(S3Error) in
            try await base.abortMultipartUpload(bucket, key, uploadId: uploadId)
        }
    }

    func listParts(_ bucket: String, _ key: String, uploadId: String, partNumberMarker: Int?) async throws(S3Error) -> ListPartsPage {
        try await record("ListParts") { () async throws(S3Error) in
            try await base.listParts(bucket, key, uploadId: uploadId, partNumberMarker: partNumberMarker)
        }
    }

    func listMultipartUploads(_ bucket: String, prefix: String?, keyMarker: String?,
                              uploadIdMarker: String?) async throws(S3Error) -> ListMultipartUploadsPage {
        try await record("ListMultipartUploads") { () async throws(S3Error) in
            try await base.listMultipartUploads(bucket, prefix: prefix, keyMarker: keyMarker, uploadIdMarker: uploadIdMarker)
        }
    }

    func copyObject(from source: (bucket: String, key: String, versionId: String?), to bucket: String, _ key: String,
                    ifMatch: String?, condition: WriteCondition?, options: PutOptions?) async throws(S3Error) -> WriteResult {
        try await record("CopyObject") { () async throws(S3Error) in
            try await base.copyObject(from: source, to: bucket, key, ifMatch: ifMatch, condition: condition, options: options)
        }
    }

    func uploadPartCopy(from source: (bucket: String, key: String, versionId: String?), range: Range<Int64>?,
                        to bucket: String, _ key: String, uploadId: String, partNumber: Int,
                        ifMatch: String?) async throws(S3Error) -> String {
        try await record("UploadPartCopy") { () async throws(S3Error) in
            try await base.uploadPartCopy(from: source, range: range, to: bucket, key, uploadId: uploadId,
                                          partNumber: partNumber, ifMatch: ifMatch)
        }
    }

    func deleteObject(_ bucket: String, _ key: String, versionId: String?) async throws(S3Error) {
        try await record("DeleteObject") { () async throws(S3Error) in try await base.deleteObject(bucket, key, versionId: versionId) }
    }

    func deleteObjects(_ bucket: String, _ objects: [ObjectToDelete]) async throws(S3Error) -> DeleteObjectsResult {
        try await record("DeleteObjects") { () async throws(S3Error) in try await base.deleteObjects(bucket, objects) }
    }

    func listObjectsV2(_ bucket: String, prefix: String?, delimiter: String?, continuationToken: String?,
                       startAfter: String?, maxKeys: Int?) async throws(S3Error) -> ListObjectsPage {
        try await record("ListObjectsV2") { () async throws(S3Error) in
            try await base.listObjectsV2(bucket, prefix: prefix, delimiter: delimiter, continuationToken: continuationToken,
                                         startAfter: startAfter, maxKeys: maxKeys)
        }
    }

    func listObjectVersions(_ bucket: String, prefix: String?, delimiter: String?, keyMarker: String?,
                            versionIdMarker: String?, maxKeys: Int?) async throws(S3Error) -> ListVersionsPage {
        try await record("ListObjectVersions") { () async throws(S3Error) in
            try await base.listObjectVersions(bucket, prefix: prefix, delimiter: delimiter, keyMarker: keyMarker,
                                              versionIdMarker: versionIdMarker, maxKeys: maxKeys)
        }
    }
}
