// Rename, emulated: S3 has no rename. A file with local changes (written, not uploaded yet) is moved locally,
// so write-temp-then-rename costs one upload, to the final name. A file that is only in S3 is copied
// server-side (CopyObject; multipart UploadPartCopy above 5 GiB) and the old key deleted. A directory is
// renamed object by object. Not atomic: a crash midway can leave both names; nothing is lost.
import CkptS3
import Foundation

extension FileSystem {
    public static let renameNoReplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2

    public func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32) async throws(FSError) {
        try checkWritable()
        if flags & FileSystem.renameExchange != 0 { throw FSError(EINVAL, "RENAME_EXCHANGE is not supported") }
        let srcDir = try node(parent), dstDir = try node(newParent)
        try checkStorable(newName, in: dstDir.key, isDirectory: false)
        guard FileSystem.validName(newName) else { throw FSError(EINVAL, "not a valid name: \(newName)") }
        guard srcDir.meta.isDirectory, dstDir.meta.isDirectory else { throw .notDirectory }
        let src = try await lookup(parent: parent, name: name)
        forget(ino: src.ino, count: 1)
        if src.isDirectory {
            try checkStorable(newName, in: dstDir.key, isDirectory: true)
            try await checkDirectoryMove(from: srcDir.key + name + "/", to: dstDir.key + newName + "/")
        }
        let dstExisting = try? await lookup(parent: newParent, name: newName)
        if let d = dstExisting {
            forget(ino: d.ino, count: 1)
            if flags & FileSystem.renameNoReplace != 0 { throw FSError(EEXIST) }
            if d.isDirectory != src.isDirectory { throw FSError(d.isDirectory ? EISDIR : ENOTDIR) }
            if d.ino == src.ino { return }
        }
        let srcKey = srcDir.key + name, dstKey = dstDir.key + newName
        var sourceRemains = false
        if src.isDirectory {
            if dstKey.hasPrefix(srcKey + "/") { throw FSError(EINVAL, "cannot move a directory into itself") }
            if dstExisting != nil {
                try await rmdir(parent: newParent, name: newName)  // ENOTEMPTY unless empty, as POSIX says
            }
            try await renameDirectory(from: srcKey + "/", to: dstKey + "/")
        } else {
            sourceRemains = try await renameFile(from: srcKey, to: dstKey)
        }
        moveNode(parent: parent, name: name, newParent: newParent, newName: newName, from: srcKey, to: dstKey,
                 isDirectory: src.isDirectory)
        if sourceRemains {
            // The next lookup of the old name asks S3 again.
            table.withLock { t in
                t.negative.removeValue(forKey: PathKey(parent: parent, name: name))
                t.listings.removeValue(forKey: parent)
            }
        }
    }

    /// Renames one file key. Returns true when an object stays under the old name (after a conflict).
    @discardableResult
    func renameFile(from src: String, to dst: String) async throws(FSError) -> Bool {
        // The destination's own local versions (an overwritten file) are withdrawn.
        if let old = local.withLock({ $0.removeValue(forKey: dst) }) { try dropVersions(of: dst, newest: old.current) }
        // A file opened in place still reads unchanged blocks from the source object, which is deleted below.
        if let f = local.withLock({ $0[src] }) {
            for v in versions(of: src, newest: f.current) { try await fillAll(v) }
        }
        let moved: LocalFile? = local.withLock { l in
            guard let f = l.removeValue(forKey: src) else { return nil }
            l[dst] = f
            return f
        }
        if let moved {
            for h in localHandles.withLock({ Array($0.values) }) {
                h.keyBox.withLock { if $0 == src { $0 = dst } }
            }
            // A local move: queued and staged versions now go to the new key. The journal learns the new key
            // before this returns, so recovery uploads to it.
            let versions = versions(of: src, newest: moved.current)
            // The destination is replaced whatever it holds (POSIX rename): uploads to it carry no condition.
            // A version stopped by a conflict under the old name is uploaded again under the new one.
            var records: [JournalRecord] = []
            var requeue: [StagedVersion] = []
            for v in versions {
                abandonEarlyUpload(v, because: "renamed")  // its parts went to the old name
                let sum = v.state.withLock { s -> String? in
                    s.key = dst
                    s.expect = .anything
                    if case .conflict = s.upload {
                        s.upload = .waiting
                        s.lastError = nil
                        requeue.append(v)
                    }
                    return !s.changed ? s.committedSum : nil
                }
                if let sum { records.append(commitRecord(v, checksum: sum)) }
            }
            try journal.append(records)
            for v in requeue { enqueueUpload(v) }
            // An earlier upload may have put the old name in S3. Not after a conflict: the object there is
            // someone else's, and it stays (the old name shows it again).
            if !requeue.isEmpty { return true }
            do { try await client.deleteObject(bucket, src, versionId: nil) } catch {
                if error.code != .noSuchKey { throw FSError.from(error) }
            }
            return false
        }
        try await copyObject(from: src, to: dst)
        do { try await client.deleteObject(bucket, src, versionId: nil) } catch { throw FSError.from(error) }
        return false
    }

    /// Server-side copy; multipart (UploadPartCopy) when the object is over 5 GiB.
    func copyObject(from src: String, to dst: String) async throws(FSError) {
        do throws(S3Error) {
            let info = try await client.headObject(bucket, src, versionId: nil, ifMatch: nil)
            if info.size <= 5 << 30 {
                _ = try await client.copyObject(from: (bucket, src, nil), to: bucket, dst, ifMatch: info.etag, options: nil)
                return
            }
            let uploadId = try await client.createMultipartUpload(bucket, dst, options: PutOptions(metadata: info.metadata))
            do {
                var parts: [CompletedPart] = []
                for (i, r) in FileSystem.partRanges(size: info.size, minimum: 512 << 20).enumerated() {
                    let etag = try await client.uploadPartCopy(from: (bucket, src, nil), range: r, to: bucket, dst,
                                                               uploadId: uploadId, partNumber: i + 1, ifMatch: info.etag)
                    parts.append(CompletedPart(partNumber: i + 1, etag: etag))
                }
                _ = try await client.completeMultipartUpload(bucket, dst, uploadId: uploadId, parts: parts, condition: nil)
            } catch {
                try? await client.abortMultipartUpload(bucket, dst, uploadId: uploadId)
                throw error
            }
        } catch { throw FSError.from(error) }
    }

    /// Renames every object and local file under `src` (a prefix ending in "/") to `dst`.
    func renameDirectory(from src: String, to dst: String) async throws(FSError) {
        var keys: [String] = []
        var token: String?
        repeat {
            do {
                let page = try await client.listObjectsV2(bucket, prefix: src, delimiter: nil, continuationToken: token,
                                                          startAfter: nil, maxKeys: nil)
                keys += page.objects.map(\.key)
                token = page.isTruncated ? page.nextContinuationToken : nil
            } catch { throw FSError.from(error) }
        } while token != nil
        let localKeys = local.withLock { l in l.keys.filter { $0.hasPrefix(src) } }
        for k in localKeys { try await renameFile(from: k, to: dst + k.dropFirst(src.count)) }
        let remaining = keys.filter { !localKeys.contains($0) }
        if remaining.isEmpty && localKeys.isEmpty {
            // An empty directory that only exists as a marker, or only in this mount's memory.
            do { _ = try await client.putObject(bucket, dst, body: .empty, options: PutOptions()) } catch { throw FSError.from(error) }
            return
        }
        // Copy in parallel, a few at a time; delete the originals after all copies landed.
        var i = 0
        while i < remaining.count {
            let batch = remaining[i..<min(i + 8, remaining.count)]
            let results = await withTaskGroup(of: FSError?.self) { g -> [FSError] in
                for k in batch {
                    g.addTask {
                        do throws(FSError) { try await self.copyObject(from: k, to: dst + k.dropFirst(src.count)); return nil } catch { return error }
                    }
                }
                var errs: [FSError] = []
                for await e in g { if let e { errs.append(e) } }
                return errs
            }
            if let e = results.first { throw e }
            i += 8
        }
        var j = 0
        while j < remaining.count {
            let batch = remaining[j..<min(j + 1000, remaining.count)].map { ObjectIdentifier(key: $0) }
            do {
                let r = try await client.deleteObjects(bucket, Array(batch))
                if let e = r.errors.first { throw FSError(EIO, "could not delete \(e.key): \(e.code) \(e.message)") }
            } catch let e as S3Error { throw FSError.from(e) } catch let e as FSError { throw e } catch { throw FSError(EIO, "\(error)") }
            j += 1000
        }
    }

    /// The renamed inode keeps its number at the new path; everything cached under the old path is updated.
    func moveNode(parent: UInt64, name: String, newParent: UInt64, newName: String, from src: String, to dst: String,
                  isDirectory: Bool) {
        table.withLock { t in
            let from = PathKey(parent: parent, name: name), to = PathKey(parent: newParent, name: newName)
            let meta = t.listings[parent]?.entries.removeValue(forKey: name)
            if let ino = t.inoByPath.removeValue(forKey: from) {
                t.inoByPath[to] = ino
                if var n = t.nodes[ino] {
                    n.parent = newParent
                    n.name = newName
                    n.key = isDirectory ? dst + "/" : dst
                    t.nodes[ino] = n
                    if t.listings[newParent] != nil { t.listings[newParent]?.entries[newName] = meta ?? n.meta }
                }
            }
            if isDirectory {
                let s = src + "/", d = dst + "/"
                for (ino, n) in t.nodes where n.key.hasPrefix(s) {
                    t.nodes[ino]?.key = d + n.key.dropFirst(s.count)
                }
            }
            t.negative[from] = .now
            t.negative.removeValue(forKey: to)
        }
    }
}
