// FaultInjectingClient's ObjectClient conformance: every operation goes through the rules (`perform`), then
// to the wrapped client.
import CkptS3
import Foundation

extension FaultInjectingClient {
    public func headBucket(_ bucket: String) async throws(S3Error) {
        try await perform("HeadBucket", bucket, nil) { () async throws(S3Error) in try await base.headBucket(bucket) }
    }

    public func headObject(_ bucket: String, _ key: String, versionId: String?, ifMatch: String?) async throws(S3Error) -> ObjectInfo {
        try await perform("HeadObject", bucket, key) { () async throws(S3Error) in
            try await base.headObject(bucket, key, versionId: versionId, ifMatch: ifMatch)
        }
    }

    public func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?) async throws(S3Error) -> (ObjectInfo, [UInt8]) {
        try await perform("GetObject", bucket, key, cut: { (n: Int) async throws(S3Error) -> (ObjectInfo, [UInt8]) in
            _ = try await self.base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
            throw self.partialBody(bucket, key, after: n)
        }) { () async throws(S3Error) in
            try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
        }
    }

    public func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?,
                          sink: @escaping ObjectBodySink) async throws(S3Error) -> ObjectInfo {
        try await perform("GetObject", bucket, key, cut: { (n: Int) async throws(S3Error) -> ObjectInfo in
            // The sink gets the first n bytes, as they would arrive before the connection broke.
            let budget = ByteBudget(n)
            _ = try await self.base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId) { offset, bytes in
                let take = budget.take(bytes.count)
                if take > 0 { try sink(offset, UnsafeRawBufferPointer(rebasing: bytes[0..<take])) }
            }
            throw self.partialBody(bucket, key, after: n)
        }) { () async throws(S3Error) in
            try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId, sink: sink)
        }
    }

    public func putObject(_ bucket: String, _ key: String, body: ObjectBody, options: PutOptions) async throws(S3Error) -> WriteResult {
        try await perform("PutObject", bucket, key) { () async throws(S3Error) in
            try await base.putObject(bucket, key, body: body, options: options)
        }
    }

    public func createMultipartUpload(_ bucket: String, _ key: String, options: PutOptions) async throws(S3Error) -> String {
        try await perform("CreateMultipartUpload", bucket, key) { () async throws(S3Error) in
            try await base.createMultipartUpload(bucket, key, options: options)
        }
    }

    public func uploadPart(_ bucket: String, _ key: String, uploadId: String, partNumber: Int, body: ObjectBody,
                           checksum: BodyChecksum?) async throws(S3Error) -> String {
        try await perform("UploadPart", bucket, key) { () async throws(S3Error) in
            try await base.uploadPart(bucket, key, uploadId: uploadId, partNumber: partNumber, body: body, checksum: checksum)
        }
    }

    public func completeMultipartUpload(_ bucket: String, _ key: String, uploadId: String, parts: [CompletedPart],
                                        condition: WriteCondition?) async throws(S3Error) -> WriteResult {
        try await perform("CompleteMultipartUpload", bucket, key) { () async throws(S3Error) in
            try await base.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts, condition: condition)
        }
    }

    public func abortMultipartUpload(_ bucket: String, _ key: String, uploadId: String) async throws(S3Error) {
        try await perform("AbortMultipartUpload", bucket, key) { () async throws(S3Error) in
            try await base.abortMultipartUpload(bucket, key, uploadId: uploadId)
        }
    }

    public func listParts(_ bucket: String, _ key: String, uploadId: String, partNumberMarker: Int?) async throws(S3Error) -> ListPartsPage {
        try await perform("ListParts", bucket, key) { () async throws(S3Error) in
            try await base.listParts(bucket, key, uploadId: uploadId, partNumberMarker: partNumberMarker)
        }
    }

    public func listMultipartUploads(_ bucket: String, prefix: String?, keyMarker: String?, uploadIdMarker: String?) async throws(S3Error) -> ListMultipartUploadsPage {
        try await perform("ListMultipartUploads", bucket, prefix) { () async throws(S3Error) in
            try await base.listMultipartUploads(bucket, prefix: prefix, keyMarker: keyMarker, uploadIdMarker: uploadIdMarker)
        }
    }

    public func copyObject(from source: (bucket: String, key: String, versionId: String?), to bucket: String, _ key: String,
                           ifMatch: String?, condition: WriteCondition?, options: PutOptions?) async throws(S3Error) -> WriteResult {
        try await perform("CopyObject", bucket, key) { () async throws(S3Error) in
            try await base.copyObject(from: source, to: bucket, key, ifMatch: ifMatch, condition: condition, options: options)
        }
    }

    public func uploadPartCopy(from source: (bucket: String, key: String, versionId: String?), range: Range<Int64>?,
                               to bucket: String, _ key: String, uploadId: String, partNumber: Int, ifMatch: String?) async throws(S3Error) -> String {
        try await perform("UploadPartCopy", bucket, key) { () async throws(S3Error) in
            try await base.uploadPartCopy(from: source, range: range, to: bucket, key, uploadId: uploadId, partNumber: partNumber, ifMatch: ifMatch)
        }
    }

    public func deleteObject(_ bucket: String, _ key: String, versionId: String?) async throws(S3Error) {
        try await perform("DeleteObject", bucket, key) { () async throws(S3Error) in
            try await base.deleteObject(bucket, key, versionId: versionId)
        }
    }

    public func deleteObjects(_ bucket: String, _ objects: [ObjectToDelete]) async throws(S3Error) -> DeleteObjectsResult {
        try await perform("DeleteObjects", bucket, nil) { () async throws(S3Error) in
            try await base.deleteObjects(bucket, objects)
        }
    }

    public func listObjectsV2(_ bucket: String, prefix: String?, delimiter: String?, continuationToken: String?,
                              startAfter: String?, maxKeys: Int?) async throws(S3Error) -> ListObjectsPage {
        try await perform("ListObjectsV2", bucket, prefix) { () async throws(S3Error) in
            try await base.listObjectsV2(bucket, prefix: prefix, delimiter: delimiter, continuationToken: continuationToken,
                                         startAfter: startAfter, maxKeys: maxKeys)
        }
    }

    public func listObjectVersions(_ bucket: String, prefix: String?, delimiter: String?, keyMarker: String?,
                                   versionIdMarker: String?, maxKeys: Int?) async throws(S3Error) -> ListVersionsPage {
        try await perform("ListObjectVersions", bucket, prefix) { () async throws(S3Error) in
            try await base.listObjectVersions(bucket, prefix: prefix, delimiter: delimiter, keyMarker: keyMarker,
                                              versionIdMarker: versionIdMarker, maxKeys: maxKeys)
        }
    }
}
