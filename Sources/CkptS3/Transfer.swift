// Whole-object transfers built on ranged requests: a parallel download into a file.
import CkptHTTP
import Foundation

/// Parses `s3://BUCKET[/PREFIX]`.
public struct S3URL: Sendable, Equatable, CustomStringConvertible {
    public var bucket: String
    /// The key prefix, without a leading slash; empty for the whole bucket.
    public var prefix: String

    public init(_ string: String) throws(ConfigurationError) {
        guard string.hasPrefix("s3://") else {
            throw ConfigurationError("'\(string)' is not an S3 URL; write it as s3://BUCKET or s3://BUCKET/PREFIX")
        }
        let rest = string.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        guard !bucket.isEmpty else { throw ConfigurationError("'\(string)' names no bucket; write it as s3://BUCKET[/PREFIX]") }
        guard bucket.utf8.count <= 255, !bucket.contains(where: { $0 == " " || $0 == "?" || $0 == "#" }) else {
            throw ConfigurationError("'\(bucket)' is not a valid bucket name")
        }
        self.bucket = bucket
        self.prefix = String(rest.dropFirst(bucket.count).drop { $0 == "/" })
    }

    public var description: String { prefix.isEmpty ? "s3://\(bucket)" : "s3://\(bucket)/\(prefix)" }
}

/// What a transfer did.
public struct TransferReport: Sendable {
    public var bytes: Int64
    public var requests: Int
    public var seconds: Double
    public var etag: String
    public var bytesPerSecond: Double { seconds > 0 ? Double(bytes) / seconds : 0 }
}

extension ObjectClient {
    /// Downloads an object into an open file with up to `concurrency` ranged GETs of `partSize` bytes in
    /// flight. Every range carries `If-Match` with the ETag seen first, so a concurrent overwrite fails the
    /// download instead of mixing versions. Bytes go straight from the socket to the file with `pwrite`.
    public func download(_ bucket: String, _ key: String, to fd: Int32, partSize: Int64 = 8 << 20,
                         concurrency: Int = 16) async throws(S3Error) -> TransferReport {
        let start = ContinuousClock.now
        let info = try await headObject(bucket, key, versionId: nil, ifMatch: nil)
        guard ftruncate(fd, off_t(info.size)) == 0 else {
            throw S3Error(code: .other("LocalIO"), s3Code: "LocalIO", message: "ftruncate: \(String(cString: strerror(errno)))",
                          operation: "Download", bucket: bucket, key: key)
        }
        var ranges: [Range<Int64>] = []
        var o: Int64 = 0
        while o < info.size {
            ranges.append(o..<min(o + partSize, info.size))
            o += partSize
        }
        let etag = info.etag
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var next = 0
                func add() {
                    let r = ranges[next]
                    next += 1
                    group.addTask {
                        _ = try await self.getObject(bucket, key, range: r, ifMatch: etag, versionId: nil) { offset, bytes in
                            try pwriteAll(fd, bytes, at: r.lowerBound + offset)
                        }
                    }
                }
                while next < ranges.count && next < concurrency { add() }
                while try await group.next() != nil {
                    if next < ranges.count { add() }
                }
            }
        } catch let e as S3Error {
            throw e
        } catch {
            throw S3Error(code: .other("Internal"), s3Code: "Internal", message: "\(error)", operation: "Download", bucket: bucket, key: key)
        }
        let elapsed = ContinuousClock.now - start
        return TransferReport(bytes: info.size, requests: ranges.count + 1,
                              seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, etag: etag)
    }
}

/// An error from local file I/O during a transfer.
public struct LocalIOError: Error, Sendable, CustomStringConvertible {
    public var errno: Int32
    public var operation: String
    public init(errno: Int32, operation: String) {
        self.errno = errno
        self.operation = operation
    }
    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// Writes all of `bytes` at `offset`, retrying short writes and EINTR.
public func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done)))
        if n < 0 {
            if errno == EINTR { continue }
            throw LocalIOError(errno: errno, operation: "pwrite")
        }
        done += n
    }
}
