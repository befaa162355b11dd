// Server-side copies for renames of objects only in S3: CopyObject (UploadPartCopy above 5 GiB), and directory
// markers written anew.
import CkptS3
import Foundation

extension WriteBack {
    /// Server-side copy; multipart (UploadPartCopy) when the object is over 5 GiB. A directory marker (a key
    /// ending in "/") is written anew instead: SeaweedFS, among others, refuses to copy one.
    func copyObjectOrMarker(from src: String, to dst: String) async throws(FSError) {
        if src.endsWithSlash {
            do { _ = try await client.putObject(bucket, dst, body: .empty, options: PutOptions()) } catch { throw FSError(error, during: .other) }
            return
        }
        try await copyObject(from: src, to: dst)
    }

    /// Recovery of a rename: copies `src` to `dst` if `src` still exists.
    func copyIfPresent(from src: String, to dst: String) async throws(FSError) {
        do { _ = try await client.headObject(bucket, src, versionId: nil, ifMatch: nil) } catch {
            if error.code == .noSuchKey { return }
            throw FSError(error, during: .other)
        }
        try await copyObjectOrMarker(from: src, to: dst)
    }

    /// Server-side copy; multipart (UploadPartCopy) when the object is over 5 GiB.
    func copyObject(from src: String, to dst: String) async throws(FSError) {
        await keepReaders(of: dst, replacingLocalFile: true)  // descriptors reading the object it replaces read on
        do throws(S3Error) {
            let info = try await client.headObject(bucket, src, versionId: nil, ifMatch: nil)
            if info.size <= 5 << 30 {
                do throws(S3Error) {
                    _ = try await client.copyObject(from: (bucket, src, nil), to: bucket, dst, ifMatch: info.etag, options: nil)
                } catch {
                    // Its reply may be what was lost (after the client's retries): when `dst` holds the source's
                    // version now (a single-request copy keeps the ETag), the copy is done. Before, the rename
                    // failed with EIO while S3 had changed: the destination's old object gone, or a directory
                    // rename "undone" with the copy left (outside testing round 11).
                    if let now = try? await client.headObject(bucket, dst, versionId: nil, ifMatch: nil),
                       now.etag == info.etag, now.size == info.size {
                        logger.notice("a CopyObject that failed had landed (its reply was lost); the rename goes on",
                                      metadata: ["from": "\(src)", "to": "\(dst)", "error": "\(error)"])
                        return
                    }
                    throw error
                }
                return
            }
            let uploadId = try await createMultipartUpload(dst, options: PutOptions(metadata: info.metadata), since: Date())
            defer { liveMultipart.withLock { _ = $0.remove(uploadId) } }
            do {
                var parts: [CompletedPart] = []
                for (i, r) in WriteBack.partRanges(size: info.size, minimum: 512 << 20).enumerated() {
                    let etag = try await client.uploadPartCopy(from: (bucket, src, nil), range: r, to: bucket, dst,
                                                               uploadId: uploadId, partNumber: i + 1, ifMatch: info.etag)
                    parts.append(CompletedPart(partNumber: i + 1, etag: etag))
                }
                _ = try await client.completeMultipartUpload(bucket, dst, uploadId: uploadId, parts: parts, condition: nil)
            } catch {
                try? await client.abortMultipartUpload(bucket, dst, uploadId: uploadId)
                throw error
            }
        } catch { throw FSError(error, during: .other) }
    }
}
