// An in-memory ObjectClient for unit tests of the layers above: the same semantics as S3 for what ckptfs
// uses (ETags, ranges, If-Match, conditional writes, listings with delimiter and pagination, multipart, copy)
// and counters of requests. Faults come from wrapping it in a FaultInjectingClient. It never replaces a real
// server in integration tests.
import CkptDigest
import CkptS3
import Foundation
import Synchronization

public final class MemoryObjectClient: ObjectClient {
    /// An object key as S3 compares it: by its bytes (String compares text, and would make one object of two
    /// keys that are the same text in other Unicode encodings).
    struct Key: Hashable, Comparable {
        let text: String
        static func == (a: Key, b: Key) -> Bool { a.text.utf8.elementsEqual(b.text.utf8) }
        static func < (a: Key, b: Key) -> Bool { a.text.utf8.lexicographicallyPrecedes(b.text.utf8) }
        func hash(into h: inout Hasher) { for b in text.utf8 { h.combine(b) } }
    }

    struct Object {
        var data: [UInt8]
        var etag: String
        var modified: Date
        var metadata: [String: String]
    }

    struct State {
        var buckets: [String: [Key: Object]] = [:]
        var uploads: [String: (bucket: String, key: String, parts: [Int: [UInt8]], metadata: [String: String], checksum: ChecksumAlgorithm?)] = [:]
        var counts: [String: Int] = [:]
        var bytesSent: Int64 = 0
        var refusesChecksums = false
    }

    private let state = Mutex(State())
    /// Page size of listings (S3's is 1,000); small values exercise pagination.
    public let pageSize: Int

    public init(buckets: [String], pageSize: Int = 1000) {
        self.pageSize = pageSize
        state.withLock { s in for b in buckets { s.buckets[b] = [:] } }
    }

    /// Answers as a server without additional checksums would: 501 NotImplemented to a CreateMultipartUpload
    /// that declares a checksum algorithm, 400 InvalidArgument to a part that carries x-amz-checksum-crc32c.
    public var refusesChecksums: Bool {
        get { state.withLock { $0.refusesChecksums } }
        set { state.withLock { $0.refusesChecksums = newValue } }
    }

    /// How many requests of an operation were made ("GetObject", "ListObjectsV2", ...).
    public func count(_ operation: String) -> Int { state.withLock { $0.counts[operation] ?? 0 } }
    /// Body bytes returned by GetObject.
    public var bytesSent: Int64 { state.withLock { $0.bytesSent } }

    /// Every object of `bucket` (key → bytes), as S3 holds them now. Keys that are the same text in other
    /// Unicode encodings are one entry here: `object(in:_:)` tells them apart.
    public func objects(in bucket: String) -> [String: [UInt8]] {
        state.withLock { s in Dictionary((s.buckets[bucket] ?? [:]).map { ($0.key.text, $0.value.data) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// The bytes of the object with exactly the key `key` (its bytes), if `bucket` has it.
    public func object(in bucket: String, _ key: String) -> [UInt8]? {
        state.withLock { $0.buckets[bucket]?[Key(text: key)]?.data }
    }

    /// The keys of `bucket`, in S3's order (by bytes).
    public func keys(in bucket: String) -> [String] {
        state.withLock { s in (s.buckets[bucket] ?? [:]).keys.sorted().map(\.text) }
    }

    /// Multipart uploads created and neither completed nor aborted, as (bucket, key).
    public var openUploads: [(bucket: String, key: String)] {
        state.withLock { s in s.uploads.values.map { ($0.bucket, $0.key) } }
    }

    /// Puts an object directly (test setup); returns its ETag.
    @discardableResult
    public func seed(_ bucket: String, _ key: String, _ data: [UInt8], metadata: [String: String] = [:]) -> String {
        let etag = "\"\(Digest.md5(data).hexString)\""
        state.withLock { $0.buckets[bucket, default: [:]][Key(text: key)] = Object(data: data, etag: etag, modified: Date(), metadata: metadata) }
        return etag
    }

    private func begin(_ op: String, _ bucket: String, _ key: String? = nil) throws(S3Error) {
        state.withLock { $0.counts[op, default: 0] += 1 }
        guard state.withLock({ $0.buckets[bucket] != nil }) else {
            throw S3Error(code: .noSuchBucket, s3Code: "NoSuchBucket", message: "The specified bucket does not exist",
                          httpStatus: 404, operation: op, bucket: bucket, key: key)
        }
    }

    private func object(_ op: String, _ bucket: String, _ key: String, ifMatch: String?) throws(S3Error) -> Object {
        guard let o = state.withLock({ $0.buckets[bucket]?[Key(text: key)] }) else {
            throw S3Error(code: .noSuchKey, s3Code: "NoSuchKey", message: "The specified key does not exist.",
                          httpStatus: 404, operation: op, bucket: bucket, key: key)
        }
        if let ifMatch, ifMatch != o.etag {
            throw S3Error(code: .preconditionFailed, s3Code: "PreconditionFailed", message: "At least one of the pre-conditions you specified did not hold",
                          httpStatus: 412, operation: op, bucket: bucket, key: key)
        }
        return o
    }

    /// A conditional write's precondition, as S3 checks it.
    private func check(_ condition: WriteCondition?, _ op: String, _ bucket: String, _ key: String) throws(S3Error) {
        guard let condition else { return }
        let current = state.withLock { $0.buckets[bucket]?[Key(text: key)]?.etag }
        let holds: Bool
        switch condition {
        case .ifNoneMatch: holds = current == nil
        case .ifMatch(let e): holds = current == e
        }
        if !holds {
            throw S3Error(code: .preconditionFailed, s3Code: "PreconditionFailed", message: "At least one of the pre-conditions you specified did not hold",
                          httpStatus: 412, operation: op, bucket: bucket, key: key)
        }
    }

    private func info(_ o: Object) -> ObjectInfo {
        ObjectInfo(size: Int64(o.data.count), etag: o.etag, lastModified: o.modified, contentType: nil, versionId: nil, metadata: o.metadata)
    }

    public func headBucket(_ bucket: String) async throws(S3Error) { try begin("HeadBucket", bucket) }

    public func headObject(_ bucket: String, _ key: String, versionId: String?, ifMatch: String?) async throws(S3Error) -> ObjectInfo {
        try begin("HeadObject", bucket, key)
        return info(try object("HeadObject", bucket, key, ifMatch: ifMatch))
    }

    public func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?) async throws(S3Error) -> (ObjectInfo, [UInt8]) {
        try begin("GetObject", bucket, key)
        let o = try object("GetObject", bucket, key, ifMatch: ifMatch)
        let r = range.map { Int(min($0.lowerBound, Int64(o.data.count)))..<Int(min($0.upperBound, Int64(o.data.count))) } ?? 0..<o.data.count
        let bytes = Array(o.data[r])
        state.withLock { $0.bytesSent += Int64(bytes.count) }
        return (info(o), bytes)
    }

    public func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?,
                          sink: @escaping ObjectBodySink) async throws(S3Error) -> ObjectInfo {
        let (i, bytes) = try await getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
        do {
            try bytes.withUnsafeBytes { try sink(0, $0) }
        } catch {
            throw S3Error(code: .transport(.sinkFailed), s3Code: "Transport", message: "\(error)", operation: "GetObject", bucket: bucket, key: key)
        }
        return i
    }

    public func putObject(_ bucket: String, _ key: String, body: ObjectBody, options: PutOptions) async throws(S3Error) -> WriteResult {
        try begin("PutObject", bucket, key)
        try check(options.condition, "PutObject", bucket, key)
        let data = try MemoryObjectClient.bytes(body)
        let etag = seed(bucket, key, data, metadata: options.metadata)
        return WriteResult(etag: etag, versionId: nil, lastModified: Date())
    }

    static func bytes(_ body: ObjectBody) throws(S3Error) -> [UInt8] {
        switch body {
        case .empty: return []
        case .bytes(let b): return b
        case .file(let fd, let offset, let length):
            var out = [UInt8](repeating: 0, count: Int(length))
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress, Int(length), off_t(offset)) }
            guard n == Int(length) else {
                throw S3Error(code: .transport(.bodyReadFailed), s3Code: "Transport", message: "short read", operation: "PutObject")
            }
            return out
        }
    }

    public func createMultipartUpload(_ bucket: String, _ key: String, options: PutOptions) async throws(S3Error) -> String {
        try begin("CreateMultipartUpload", bucket, key)
        if options.checksumAlgorithm != nil && refusesChecksums {
            throw S3Error(code: .other("NotImplemented"), s3Code: "NotImplemented", message: "x-amz-checksum-algorithm is not implemented",
                          httpStatus: 501, operation: "CreateMultipartUpload", bucket: bucket, key: key)
        }
        let id = UUID().uuidString
        state.withLock { $0.uploads[id] = (bucket, key, [:], options.metadata, options.checksumAlgorithm) }
        return id
    }

    /// Checks a body's checksum as S3 does: BadDigest when it differs; in an upload created with a checksum
    /// algorithm, a part without that checksum is refused (InvalidRequest), as AWS refuses it.
    public func uploadPart(_ bucket: String, _ key: String, uploadId: String, partNumber: Int, body: ObjectBody,
                           checksum: BodyChecksum?) async throws(S3Error) -> String {
        try begin("UploadPart", bucket, key)
        if case .crc32c = checksum, refusesChecksums {
            throw S3Error(code: .other("InvalidArgument"), s3Code: "InvalidArgument", message: "x-amz-checksum-crc32c is not supported",
                          httpStatus: 400, operation: "UploadPart", bucket: bucket, key: key)
        }
        let data = try MemoryObjectClient.bytes(body)
        let matches: Bool
        switch checksum {
        case .md5(let md5): matches = md5 == Digest.md5(data)
        case .crc32c(let crc): matches = crc == CRC32C.checksum(data)
        case nil: matches = true
        }
        guard matches else {
            throw S3Error(code: .badDigest, s3Code: "BadDigest", message: "checksum mismatch", httpStatus: 400,
                          operation: "UploadPart", bucket: bucket, key: key)
        }
        let found = state.withLock { s -> ChecksumAlgorithm?? in
            guard let up = s.uploads[uploadId] else { return nil }
            if up.checksum == .crc32c, case .crc32c = checksum {} else if up.checksum != nil { return .some(up.checksum) }
            s.uploads[uploadId]!.parts[partNumber] = data
            return .some(nil)
        }
        switch found {
        case nil: throw noSuchUpload("UploadPart", bucket, key)
        case .some(.some(let a)):
            throw S3Error(code: .invalidRequest, s3Code: "InvalidRequest", message: "the upload expects a \(a.rawValue) checksum",
                          httpStatus: 400, operation: "UploadPart", bucket: bucket, key: key)
        case .some(nil): return "\"\(Digest.md5(data).hexString)\""
        }
    }

    func noSuchUpload(_ op: String, _ bucket: String, _ key: String) -> S3Error {
        S3Error(code: .noSuchUpload, s3Code: "NoSuchUpload", message: "The specified upload does not exist", httpStatus: 404,
                operation: op, bucket: bucket, key: key)
    }

    public func completeMultipartUpload(_ bucket: String, _ key: String, uploadId: String, parts: [CompletedPart],
                                        condition: WriteCondition?) async throws(S3Error) -> WriteResult {
        try begin("CompleteMultipartUpload", bucket, key)
        try check(condition, "CompleteMultipartUpload", bucket, key)
        guard let up = state.withLock({ $0.uploads[uploadId] }) else { throw noSuchUpload("CompleteMultipartUpload", bucket, key) }
        var data: [UInt8] = []
        for p in parts.sorted(by: { $0.partNumber < $1.partNumber }) {
            let part = up.parts[p.partNumber] ?? []
            // S3 refuses a part whose checksum is missing or differs when the upload declared one (InvalidPart).
            if up.checksum == .crc32c, p.checksumCRC32C != CRC32C.checksum(part) {
                throw S3Error(code: .invalidPart, s3Code: "InvalidPart", message: "part \(p.partNumber)'s checksum is missing or wrong",
                              httpStatus: 400, operation: "CompleteMultipartUpload", bucket: bucket, key: key)
            }
            data += part
        }
        state.withLock { _ = $0.uploads.removeValue(forKey: uploadId) }
        let etag = seed(bucket, key, data, metadata: up.metadata)
        return WriteResult(etag: etag, versionId: nil, lastModified: Date())
    }

    public func abortMultipartUpload(_ bucket: String, _ key: String, uploadId: String) async throws(S3Error) {
        try begin("AbortMultipartUpload", bucket, key)
        _ = state.withLock { $0.uploads.removeValue(forKey: uploadId) }
    }

    public func listParts(_ bucket: String, _ key: String, uploadId: String, partNumberMarker: Int?) async throws(S3Error) -> ListPartsPage {
        try begin("ListParts", bucket, key)
        guard let up = state.withLock({ $0.uploads[uploadId] }) else { throw noSuchUpload("ListParts", bucket, key) }
        let parts = up.parts.keys.sorted().filter { $0 > (partNumberMarker ?? 0) }.map {
            PartSummary(partNumber: $0, etag: "\"\(Digest.md5(up.parts[$0]!).hexString)\"", size: Int64(up.parts[$0]!.count))
        }
        return ListPartsPage(parts: parts, isTruncated: false, nextPartNumberMarker: nil)
    }

    public func listMultipartUploads(_ bucket: String, prefix: String?, keyMarker: String?, uploadIdMarker: String?) async throws(S3Error) -> ListMultipartUploadsPage {
        try begin("ListMultipartUploads", bucket)
        let ups = state.withLock { s in
            s.uploads.filter { $0.value.bucket == bucket && $0.value.key.utf8.starts(with: (prefix ?? "").utf8) }
                .map { MultipartUploadSummary(key: $0.value.key, uploadId: $0.key, initiated: nil) }
        }
        return ListMultipartUploadsPage(uploads: ups.sorted { Key(text: $0.key) < Key(text: $1.key) }, isTruncated: false, nextKeyMarker: nil, nextUploadIdMarker: nil)
    }

    public func copyObject(from source: (bucket: String, key: String, versionId: String?), to bucket: String, _ key: String,
                           ifMatch: String?, condition: WriteCondition?, options: PutOptions?) async throws(S3Error) -> WriteResult {
        try begin("CopyObject", bucket, key)
        let o = try object("CopyObject", source.bucket, source.key, ifMatch: ifMatch)
        try check(condition, "CopyObject", bucket, key)
        let etag = seed(bucket, key, o.data, metadata: options?.metadata ?? o.metadata)
        return WriteResult(etag: etag, versionId: nil, lastModified: Date())
    }

    public func uploadPartCopy(from source: (bucket: String, key: String, versionId: String?), range: Range<Int64>?,
                               to bucket: String, _ key: String, uploadId: String, partNumber: Int, ifMatch: String?) async throws(S3Error) -> String {
        try begin("UploadPartCopy", bucket, key)
        let o = try object("UploadPartCopy", source.bucket, source.key, ifMatch: ifMatch)
        let r = range.map { Int($0.lowerBound)..<Int($0.upperBound) } ?? 0..<o.data.count
        let declared = state.withLock { $0.uploads[uploadId]?.checksum }
        let part = Array(o.data[r])
        return try await uploadPart(bucket, key, uploadId: uploadId, partNumber: partNumber, body: .bytes(part),
                                    checksum: declared == .crc32c ? .crc32c(CRC32C.checksum(part)) : nil)
    }

    public func deleteObject(_ bucket: String, _ key: String, versionId: String?) async throws(S3Error) {
        try begin("DeleteObject", bucket, key)
        _ = state.withLock { $0.buckets[bucket]?.removeValue(forKey: Key(text: key)) }
    }

    public func deleteObjects(_ bucket: String, _ objects: [ObjectToDelete]) async throws(S3Error) -> DeleteObjectsResult {
        try begin("DeleteObjects", bucket)
        state.withLock { s in for o in objects { s.buckets[bucket]?.removeValue(forKey: Key(text: o.key)) } }
        return DeleteObjectsResult(deleted: objects, errors: [])
    }

    public func listObjectsV2(_ bucket: String, prefix: String?, delimiter: String?, continuationToken: String?,
                              startAfter: String?, maxKeys: Int?) async throws(S3Error) -> ListObjectsPage {
        try begin("ListObjectsV2", bucket)
        let p = prefix ?? ""
        let all = state.withLock { $0.buckets[bucket] ?? [:] }
        let after = Key(text: continuationToken ?? startAfter ?? "")
        var objects: [ObjectSummary] = []
        var prefixes: [String] = []
        var last = ""
        var truncated = false
        let limit = min(maxKeys ?? pageSize, pageSize)
        // S3 compares keys, prefixes and the delimiter by bytes of UTF-8.
        for key in all.keys.sorted() where key.text.utf8.starts(with: p.utf8) && after < key {
            var entry = key.text
            var isPrefix = false
            if let d = delimiter, let r = MemoryObjectClient.firstRange(of: Array(d.utf8), in: Array(key.text.utf8.dropFirst(p.utf8.count))) {
                entry = String(decoding: key.text.utf8.prefix(p.utf8.count + r.upperBound), as: UTF8.self)
                isPrefix = true
                if !(after < Key(text: entry)) || prefixes.last.map({ Key(text: $0) == Key(text: entry) }) == true { continue }
            }
            if objects.count + prefixes.count == limit {
                truncated = true
                break
            }
            if isPrefix {
                prefixes.append(entry)
                last = entry + "\u{10FFFF}"
            } else {
                let o = all[key]!
                objects.append(ObjectSummary(key: key.text, size: Int64(o.data.count), etag: o.etag, lastModified: o.modified, storageClass: nil))
                last = key.text
            }
        }
        return ListObjectsPage(objects: objects, commonPrefixes: prefixes, isTruncated: truncated,
                               nextContinuationToken: truncated ? last : nil)
    }

    /// Where `needle` first occurs in `bytes`.
    static func firstRange(of needle: [UInt8], in bytes: [UInt8]) -> Range<Int>? {
        guard !needle.isEmpty, bytes.count >= needle.count else { return nil }
        for i in 0...(bytes.count - needle.count) where bytes[i..<i + needle.count].elementsEqual(needle) { return i..<i + needle.count }
        return nil
    }

    public func listObjectVersions(_ bucket: String, prefix: String?, delimiter: String?, keyMarker: String?,
                                   versionIdMarker: String?, maxKeys: Int?) async throws(S3Error) -> ListVersionsPage {
        try begin("ListObjectVersions", bucket)
        let page = try await listObjectsV2(bucket, prefix: prefix, delimiter: delimiter, continuationToken: keyMarker,
                                           startAfter: nil, maxKeys: maxKeys)
        return ListVersionsPage(versions: page.objects.map {
            ObjectVersion(key: $0.key, versionId: "null", isLatest: true, isDeleteMarker: false, size: $0.size, etag: $0.etag,
                          lastModified: $0.lastModified)
        }, commonPrefixes: page.commonPrefixes, isTruncated: page.isTruncated, nextKeyMarker: page.nextContinuationToken,
           nextVersionIdMarker: nil)
    }
}
