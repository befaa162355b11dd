// Server-side copies for renames of objects only in S3: CopyObject (UploadPartCopy above 5 GiB), and directory
// markers written anew.
import CkptS3
import Foundation

extension WriteBack {
    /// Server-side copy; multipart (UploadPartCopy) when the object is over 5 GiB. A directory marker (a key
    /// ending in "/") is written anew instead: SeaweedFS, among others, refuses to copy one. `ifAbsent`: see
    /// `copyObject`.
    func copyObjectOrMarker(from src: String, to dst: String, ifAbsent: Bool = false) async throws(FSError) {
        if src.endsWithSlash {
            do { _ = try await client.putObject(bucket, dst, body: .empty, options: PutOptions()) } catch { throw FSError(error, during: .other) }
            return
        }
        try await copyObject(from: src, to: dst, ifAbsent: ifAbsent)
    }

    /// Recovery of a rename: copies `src` to `dst` if `src` still exists.
    func copyIfPresent(from src: String, to dst: String, ifAbsent: Bool = false) async throws(FSError) {
        do { _ = try await client.headObject(bucket, src, versionId: nil, ifMatch: nil) } catch {
            if error.code == .noSuchKey { return }
            throw FSError(error, during: .other)
        }
        try await copyObjectOrMarker(from: src, to: dst, ifAbsent: ifAbsent)
    }

    /// Server-side copy; multipart (UploadPartCopy) when the object is over 5 GiB. `ifAbsent`: the mount knows
    /// of nothing under `dst` (a rename onto a new name): the copy expects no object there (`If-None-Match: *`,
    /// CopyObject and CompleteMultipartUpload, S3 API reference), so another client's object created there
    /// meanwhile is not replaced and the copy fails with EEXIST (S-CONFLICT-RENAMED-NEW-COPIED); one this cache
    /// directory uploaded (a save whose delete the rename dropped) is replaced.
    func copyObject(from src: String, to dst: String, ifAbsent: Bool = false) async throws(FSError) {
        await keepReaders(of: dst, replacingLocalFile: true)  // descriptors reading the object it replaces read on
        let info: ObjectInfo
        do { info = try await client.headObject(bucket, src, versionId: nil, ifMatch: nil) } catch { throw FSError(error, during: .other) }
        var condition: WriteCondition? = ifAbsent && options.conditionalWrites && !conditionsUnsupported.load(ordering: .relaxed)
            ? .ifNoneMatch : nil
        while true {
            do throws(S3Error) {
                try await copyOnce(info, from: src, to: dst, condition: condition)
                return
            } catch {
                // Its reply may be what was lost (after the client's retries): when `dst` holds the source's
                // version now (a single-request copy keeps the ETag), the copy is done. Before, the rename
                // failed with EIO while S3 had changed: the destination's old object gone, or a directory
                // rename "undone" with the copy left (outside testing round 11).
                let now = try? await client.headObject(bucket, dst, versionId: nil, ifMatch: nil)
                if let now, now.etag == info.etag, now.size == info.size {
                    logger.notice("a CopyObject that failed had landed (its reply was lost); the rename goes on",
                                  metadata: ["from": "\(src)", "to": "\(dst)", "error": "\(error)"])
                    return
                }
                if error.code == .preconditionFailed, case .ifNoneMatch? = condition, let now {
                    if ownVersion(now, key: dst) != nil {
                        condition = .ifMatch(now.etag)  // this cache directory's own save, which the rename replaces
                        continue
                    }
                    throw FSError(EEXIST, "\(dst) was created in S3 by another client meanwhile; "
                                  + "the file stays under its old name (S-CONFLICT-RENAMED-NEW-COPIED)")
                }
                if condition != nil, FSError(error, during: .write).kind == .conditionsUnsupported {
                    logger.warning("the server does not support conditional writes; copying without conditions")
                    conditionsUnsupported.store(true, ordering: .relaxed)
                    condition = nil
                    continue
                }
                throw FSError(error, during: .other)
            }
        }
    }

    /// One attempt of `copyObject`: CopyObject of `src` as `info` describes it (it must still be that version),
    /// or a multipart copy above 5 GiB; `condition` on the destination.
    private func copyOnce(_ info: ObjectInfo, from src: String, to dst: String, condition: WriteCondition?) async throws(S3Error) {
        if info.size <= 5 << 30 {
            _ = try await client.copyObject(from: (bucket, src, nil), to: bucket, dst, ifMatch: info.etag,
                                            condition: condition, options: nil)
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
            _ = try await client.completeMultipartUpload(bucket, dst, uploadId: uploadId, parts: parts, condition: condition)
        } catch {
            try? await client.abortMultipartUpload(bucket, dst, uploadId: uploadId)
            throw error
        }
    }
}
