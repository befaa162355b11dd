// Inputs and outputs of S3 operations.
import CkptHTTP
import Foundation

/// The body of an upload (PutObject, UploadPart).
public enum ObjectBody: Sendable {
    case empty
    case bytes([UInt8])
    /// `length` bytes of an open file from byte `offset`, read as they are sent (never held in memory whole).
    /// The caller keeps `descriptor` open and those bytes unchanged until the call returns: a retry reads
    /// them again. A file that turns out shorter fails the request (`TransportFailure.bodyReadFailed`).
    case file(descriptor: Int32, offset: Int64, length: Int64)

    /// Bytes in the body.
    public var length: Int64 {
        switch self {
        case .empty: return 0
        case .bytes(let b): return Int64(b.count)
        case .file(_, _, let length): return length
        }
    }

    /// The transport's form of the same body.
    var http: HTTPRequestBody {
        switch self {
        case .empty: return .empty
        case .bytes(let b): return .bytes(b)
        case .file(let fd, let offset, let length): return .file(descriptor: fd, offset: offset, length: length)
        }
    }
}

/// Receives the body of a GetObject as it arrives: `offset` is the position of `bytes` within the bytes
/// returned (0 at the start of the requested range). Called on the transport's thread, so it must be quick
/// (a pwrite, a copy); the bytes are valid only during the call. When the request is retried the body
/// arrives again from offset 0, so a sink that writes at positions needs no undo. Throwing aborts the
/// request, which then fails with `TransportFailure.sinkFailed` (not retried).
public typealias ObjectBodySink = @Sendable (_ offset: Int64, _ bytes: UnsafeRawBufferPointer) throws -> Void

/// What HeadObject / GetObject report about an object.
public struct ObjectInfo: Sendable, Equatable {
    public var size: Int64
    public var etag: String
    public var lastModified: Date?
    public var contentType: String?
    public var versionId: String?
    /// User metadata (x-amz-meta-*), names lower-cased without the prefix.
    public var metadata: [String: String]

    public init(size: Int64, etag: String, lastModified: Date? = nil, contentType: String? = nil,
                versionId: String? = nil, metadata: [String: String] = [:]) {
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
        self.contentType = contentType
        self.versionId = versionId
        self.metadata = metadata
    }
}

/// An object in a listing.
public struct ObjectSummary: Sendable, Equatable {
    public var key: String
    public var size: Int64
    public var etag: String
    public var lastModified: Date?
    public var storageClass: String?

    public init(key: String, size: Int64, etag: String, lastModified: Date?, storageClass: String?) {
        self.key = key
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
        self.storageClass = storageClass
    }
}

/// One page of ListObjectsV2.
public struct ListObjectsPage: Sendable {
    public var objects: [ObjectSummary]
    /// Common prefixes (the "directories" under the delimiter), each ending with the delimiter.
    public var commonPrefixes: [String]
    public var isTruncated: Bool
    public var nextContinuationToken: String?

    public init(objects: [ObjectSummary], commonPrefixes: [String], isTruncated: Bool, nextContinuationToken: String?) {
        self.objects = objects
        self.commonPrefixes = commonPrefixes
        self.isTruncated = isTruncated
        self.nextContinuationToken = nextContinuationToken
    }
}

/// One version or delete marker from ListObjectVersions.
public struct ObjectVersion: Sendable, Equatable {
    public var key: String
    public var versionId: String
    public var isLatest: Bool
    public var isDeleteMarker: Bool
    public var size: Int64
    public var etag: String?
    public var lastModified: Date?

    public init(key: String, versionId: String, isLatest: Bool, isDeleteMarker: Bool, size: Int64, etag: String?, lastModified: Date?) {
        self.key = key
        self.versionId = versionId
        self.isLatest = isLatest
        self.isDeleteMarker = isDeleteMarker
        self.size = size
        self.etag = etag
        self.lastModified = lastModified
    }
}

public struct ListVersionsPage: Sendable {
    /// Versions and delete markers, in the order the server listed them.
    public var versions: [ObjectVersion]
    public var commonPrefixes: [String]
    public var isTruncated: Bool
    public var nextKeyMarker: String?
    public var nextVersionIdMarker: String?

    public init(versions: [ObjectVersion], commonPrefixes: [String], isTruncated: Bool, nextKeyMarker: String?, nextVersionIdMarker: String?) {
        self.versions = versions
        self.commonPrefixes = commonPrefixes
        self.isTruncated = isTruncated
        self.nextKeyMarker = nextKeyMarker
        self.nextVersionIdMarker = nextVersionIdMarker
    }
}

public struct MultipartUploadSummary: Sendable, Equatable {
    public var key: String
    public var uploadId: String
    public var initiated: Date?

    public init(key: String, uploadId: String, initiated: Date?) {
        self.key = key
        self.uploadId = uploadId
        self.initiated = initiated
    }
}

public struct ListMultipartUploadsPage: Sendable {
    public var uploads: [MultipartUploadSummary]
    public var isTruncated: Bool
    public var nextKeyMarker: String?
    public var nextUploadIdMarker: String?

    public init(uploads: [MultipartUploadSummary], isTruncated: Bool, nextKeyMarker: String?, nextUploadIdMarker: String?) {
        self.uploads = uploads
        self.isTruncated = isTruncated
        self.nextKeyMarker = nextKeyMarker
        self.nextUploadIdMarker = nextUploadIdMarker
    }
}

public struct PartSummary: Sendable, Equatable {
    public var partNumber: Int
    public var etag: String
    public var size: Int64

    public init(partNumber: Int, etag: String, size: Int64) {
        self.partNumber = partNumber
        self.etag = etag
        self.size = size
    }
}

public struct ListPartsPage: Sendable {
    public var parts: [PartSummary]
    public var isTruncated: Bool
    public var nextPartNumberMarker: Int?

    public init(parts: [PartSummary], isTruncated: Bool, nextPartNumberMarker: Int?) {
        self.parts = parts
        self.isTruncated = isTruncated
        self.nextPartNumberMarker = nextPartNumberMarker
    }
}

/// A part to assemble in CompleteMultipartUpload.
public struct CompletedPart: Sendable, Equatable {
    public var partNumber: Int
    public var etag: String
    /// The part's CRC32C, sent as `<ChecksumCRC32C>`: required when the upload was created with
    /// `ChecksumAlgorithm.crc32c` (S3 API, CompleteMultipartUpload), and then nil for no part.
    public var checksumCRC32C: UInt32?

    public init(partNumber: Int, etag: String, checksumCRC32C: UInt32? = nil) {
        self.partNumber = partNumber
        self.etag = etag
        self.checksumCRC32C = checksumCRC32C
    }
}

/// The checksum a request body carries, which the server checks the body against before it stores it
/// (BadDigest when they differ; S3 API, "Checking object integrity").
public enum BodyChecksum: Sendable, Equatable {
    /// `Content-MD5`: the MD5, 16 bytes.
    case md5([UInt8])
    /// `x-amz-checksum-crc32c`: in an UploadPart, the upload must have been created with `.crc32c`.
    case crc32c(UInt32)
}

/// The checksum algorithm of a multipart upload, declared in CreateMultipartUpload (`x-amz-checksum-algorithm`):
/// every part then carries its checksum, and CompleteMultipartUpload repeats each one (S3 API).
public enum ChecksumAlgorithm: String, Sendable {
    case crc32c = "CRC32C"
}

/// The result of a write (PutObject, CompleteMultipartUpload, CopyObject).
public struct WriteResult: Sendable, Equatable {
    public var etag: String
    public var versionId: String?
    public var lastModified: Date?
    /// The ETag is the MD5 of the body: false when the answer says the object is encrypted with SSE-KMS
    /// (`x-amz-server-side-encryption: aws:kms`, `aws:kms:dsse`) or SSE-C, whose ETags are not (S3 API,
    /// "Common Response Headers", ETag).
    public var etagIsMD5 = true

    public init(etag: String, versionId: String?, lastModified: Date?) {
        self.etag = etag
        self.versionId = versionId
        self.lastModified = lastModified
    }
}

/// A condition on a write, where the server supports conditional writes.
public enum WriteCondition: Sendable, Equatable {
    /// Fail with PreconditionFailed if the key exists (`If-None-Match: *`).
    case ifNoneMatch
    /// Fail unless the current object has this ETag (`If-Match`).
    case ifMatch(String)
}

/// Key and optional version, for DeleteObjects (S3's `ObjectIdentifier`, renamed so it does not shadow
/// Swift's type of that name).
public struct ObjectToDelete: Sendable, Equatable {
    public var key: String
    public var versionId: String?

    public init(key: String, versionId: String? = nil) {
        self.key = key
        self.versionId = versionId
    }
}

public struct DeleteObjectsResult: Sendable {
    public var deleted: [ObjectToDelete]
    /// Keys the server refused to delete, with its code and message.
    public var errors: [(key: String, code: String, message: String)]

    public init(deleted: [ObjectToDelete], errors: [(key: String, code: String, message: String)]) {
        self.deleted = deleted
        self.errors = errors
    }
}

/// Options of PutObject and CreateMultipartUpload.
public struct PutOptions: Sendable {
    public var contentType: String?
    public var metadata: [String: String]
    public var condition: WriteCondition?
    /// MD5 of the body, sent as Content-MD5 so the server rejects a body damaged in transit (PutObject only).
    public var contentMD5: [UInt8]?
    /// The checksum every part carries (CreateMultipartUpload only; `x-amz-checksum-algorithm`).
    public var checksumAlgorithm: ChecksumAlgorithm?

    public init(contentType: String? = nil, metadata: [String: String] = [:], condition: WriteCondition? = nil,
                contentMD5: [UInt8]? = nil, checksumAlgorithm: ChecksumAlgorithm? = nil) {
        self.contentType = contentType
        self.metadata = metadata
        self.condition = condition
        self.contentMD5 = contentMD5
        self.checksumAlgorithm = checksumAlgorithm
    }
}

/// Dates as S3 writes them: ISO 8601 in XML, RFC 1123 in headers.
public enum S3Date {
    /// `2009-10-12T17:50:30.000Z`
    public static func parseISO8601(_ s: String) -> Date? {
        let u = Array(s.utf8)
        guard u.count >= 19 else { return nil }
        func num(_ a: Int, _ b: Int) -> Int? { Int(String(decoding: u[a..<b], as: UTF8.self)) }
        guard let y = num(0, 4), let mo = num(5, 7), let d = num(8, 10), let h = num(11, 13), let mi = num(14, 16),
              let sec = num(17, 19) else { return nil }
        var frac = 0.0
        if u.count > 20, u[19] == UInt8(ascii: ".") {
            var j = 20
            var scale = 0.1
            while j < u.count, u[j] >= 48, u[j] <= 57 { frac += Double(u[j] - 48) * scale; scale /= 10; j += 1 }
        }
        return make(y, mo, d, h, mi, sec).map { $0.addingTimeInterval(frac) }
    }

    /// `Wed, 21 Oct 2015 07:28:00 GMT`
    public static func parseRFC1123(_ s: String) -> Date? {
        let parts = s.split(separator: " ")
        guard parts.count >= 5 else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let d = Int(parts[1]), let mIdx = months.firstIndex(of: String(parts[2])), let y = Int(parts[3]) else { return nil }
        let t = parts[4].split(separator: ":")
        guard t.count == 3, let h = Int(t[0]), let mi = Int(t[1]), let sec = Int(t[2]) else { return nil }
        return make(y, mIdx + 1, d, h, mi, sec)
    }

    static func make(_ y: Int, _ mo: Int, _ d: Int, _ h: Int, _ mi: Int, _ s: Int) -> Date? {
        guard (1...12).contains(mo), (1...31).contains(d) else { return nil }
        var t = tm()
        t.tm_year = Int32(y - 1900)
        t.tm_mon = Int32(mo - 1)
        t.tm_mday = Int32(d)
        t.tm_hour = Int32(h)
        t.tm_min = Int32(mi)
        t.tm_sec = Int32(s)
        return Date(timeIntervalSince1970: TimeInterval(timegm(&t)))
    }
}
