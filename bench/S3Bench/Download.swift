// A parallel ranged download of one object into a file: the S3 client alone, as fast as it goes, for
// `ckpt-s3bench download` (bench/s3_download.py compares it with s5cmd). Only the bench uses it.
import CkptS3
import Foundation
import SystemPackage

/// What a download did.
struct TransferReport: Sendable {
    /// Bytes of the object.
    var bytes: Int64
    /// HTTP requests sent: one HEAD and one GET a part (retries not counted).
    var requests: Int
    /// Wall time from the HEAD to the last byte written.
    var seconds: Double
    var etag: String
}

extension ObjectClient {
    /// Downloads an object into `file` with up to `concurrency` ranged GETs of `partSize` bytes in flight.
    /// Every range carries `If-Match` with the ETag seen first, so a concurrent overwrite fails the download
    /// instead of mixing versions. Bytes go straight from the socket to the file at their offsets.
    /// - Throws: `S3Error`, or `Errno` of a local write.
    func download(_ bucket: String, _ key: String, to file: FileDescriptor, partSize: Int64 = 8 << 20,
                  concurrency: Int = 16) async throws -> TransferReport {
        let start = ContinuousClock.now
        let info = try await headObject(bucket, key, versionId: nil, ifMatch: nil)
        try file.resize(to: info.size)
        let ranges = stride(from: Int64(0), to: info.size, by: Int(partSize)).map { $0..<min($0 + partSize, info.size) }
        let etag = info.etag
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = 0
            func add() {
                let r = ranges[next]
                next += 1
                group.addTask {
                    _ = try await self.getObject(bucket, key, range: r, ifMatch: etag, versionId: nil) { offset, bytes in
                        try file.writeAll(toAbsoluteOffset: r.lowerBound + offset, bytes)
                    }
                }
            }
            while next < ranges.count && next < concurrency { add() }
            while try await group.next() != nil {
                if next < ranges.count { add() }
            }
        }
        let elapsed = ContinuousClock.now - start
        return TransferReport(bytes: info.size, requests: ranges.count + 1,
                              seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, etag: etag)
    }
}
