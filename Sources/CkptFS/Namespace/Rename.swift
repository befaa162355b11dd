// Rename, emulated: S3 has no rename. A file with local changes (written, not uploaded yet, or uploading, or
// uploaded while still open) is moved locally: its versions go to the new key (one already sent under the old
// name is sent again), so write-temp-then-rename costs one upload, to the final name. A file that is only in
// S3 is copied server-side (CopyObject; multipart UploadPartCopy above 5 GiB). A directory is renamed object
// by object (directory markers are written anew: some servers refuse to copy keys ending in "/"). The old
// names are deleted through the change queue, after the new names' uploads. A rename that copies objects is
// journaled first, so a failure undoes it and a crash is finished by the next mount: never a half move,
// never data under neither name.
import CkptS3
import Foundation

extension FileSystem {
    public static let renameNoReplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2

    public func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32) async throws(FSError) {
        try checkWritable()
        if flags & FileSystem.renameExchange != 0 { throw FSError(EINVAL, "RENAME_EXCHANGE is not supported") }
        let srcDir = try namespace.node(parent), dstDir = try namespace.node(newParent)
        try Namespace.checkStorable(newName, in: dstDir.key, isDirectory: false)
        guard Namespace.validName(newName) else { throw FSError(EINVAL, "not a valid name: \(newName)") }
        guard srcDir.meta.isDirectory, dstDir.meta.isDirectory else { throw .notDirectory }
        let src = try await lookup(parent: parent, name: name)
        forget(ino: src.ino, count: 1)
        // A directory's objects, listed once: checked against the key limit before anything changes, then moved.
        var objects: [String] = []
        if src.isDirectory {
            try Namespace.checkStorable(newName, in: dstDir.key, isDirectory: true)
            objects = try await objectKeys(under: srcDir.key + name + "/")
            try checkDirectoryMove(objects, from: srcDir.key + name + "/", to: dstDir.key + newName + "/")
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
            try await renameDirectory(objects, from: srcKey + "/", to: dstKey + "/")
        } else {
            sourceRemains = try await renameFile(from: srcKey, to: dstKey, replacing: dstExisting?.ino)
        }
        moveNode(parent: parent, name: name, newParent: newParent, newName: newName, from: srcKey, to: dstKey,
                 isDirectory: src.isDirectory)
        if sourceRemains {
            // The next lookup of the old name asks S3 again.
            namespace.table.withLock { t in
                t.clearMissing(parent: parent, name: name)
                t.listings.removeValue(forKey: parent)
            }
        }
    }

    /// Renames one file key (`replacing`: the inode of the file the destination was, if any). Returns true when
    /// an object stays under the old name (after a conflict: the object there is someone else's).
    @discardableResult
    func renameFile(from src: String, to dst: String, replacing: UInt64? = nil) async throws(FSError) -> Bool {
        // The destination's own local versions (an overwritten file) are withdrawn; open, it lives on as an orphan.
        var withdrawn = Withdrawal()
        if let old = localFiles.byKey.withLock({ $0.removeValue(forKey: dst) }) { withdrawn = orphan(old, ino: replacing) }
        defer { withdrawn.removeFiles() }
        let records = withdrawn.records
        if let f = localFiles.byKey.withLock({ $0[src] }) {
            // A file opened in place reads unchanged blocks from the source object, which is deleted later.
            for v in versions(of: f) { try await fillAll(v) }
            let moved = retarget(f, from: src, to: dst)
            let (deletes, items) = moved.keepsSource ? ([], []) : deleteRecords([src])
            try await journal.record(records + moved.records + deletes)
            for v in moved.requeue { enqueueUpload(v) }
            queueDeletes(items, hiding: [src])
            return moved.keepsSource
        }
        await clearPendingDelete(of: dst)
        let intent = newJournalId()
        try await journal.record(records + [JournalRecord(op: .renaming, id: intent, key: src, target: dst, keys: [src])])
        do throws(FSError) { try await copyObjectOrMarker(from: src, to: dst) } catch {
            try? await journal.record(JournalRecord(op: .done, id: intent))
            throw error
        }
        try await deleteLater([src], hiding: [src], with: [JournalRecord(op: .done, id: intent)])
        return false
    }

    /// What moving a local file's versions to a new key needs: journal records, versions to queue again.
    struct Retarget {
        var records: [JournalRecord] = []
        var requeue: [StagedVersion] = []
        /// A version was stopped by a conflict under the old name: the object there is someone else's and stays.
        var keepsSource = false
    }

    /// Moves local file `f` from `src` to `dst`: handles follow it, and every version not settled goes to the
    /// new key. A version waiting or uploaded (still held: the file is open) is queued again under the new key; one
    /// uploading is queued again by its uploader when it lands. The destination is replaced whatever it holds
    /// (POSIX rename): uploads to it carry no condition. The caller journals the records before queueing.
    func retarget(_ f: LocalFile, from src: String, to dst: String) -> Retarget {
        var out = Retarget()
        let vs = versions(of: src, newest: f.current)
        localFiles.byKey.withLock { l in
            if l[src] === f { l.removeValue(forKey: src) }
            l[dst] = f
            f.state.withLock { $0.key = dst }
        }
        for v in vs {
            abandonEarlyUpload(v, because: "renamed")  // its parts went to the old name
            let (requeue, sum) = v.state.withLock { s -> (Bool, String?) in
                s.key = dst
                s.expect = .anything
                var requeue = false
                switch s.upload {
                case .waiting: requeue = s.sealed
                case .uploading: break
                case .done:
                    s.upload = .waiting
                    requeue = true
                case .conflict:
                    s.upload = .waiting
                    s.lastError = nil
                    requeue = true
                    out.keepsSource = true
                case .superseded, .dropped: break
                }
                return (requeue, !s.unjournaled ? s.committedSum : nil)
            }
            if requeue { out.requeue.append(v) }
            if let sum { out.records.append(commitRecord(v, checksum: sum)) }
        }
        return out
    }

    /// Server-side copy; multipart (UploadPartCopy) when the object is over 5 GiB. A directory marker (a key
    /// ending in "/") is written anew instead: SeaweedFS, among others, refuses to copy one.
    func copyObjectOrMarker(from src: String, to dst: String) async throws(FSError) {
        if src.hasSuffix("/") {
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
        } catch { throw FSError(error, during: .other) }
    }

    /// The keys of every object under `prefix` in S3 (all pages), less those a queued delete hides.
    func objectKeys(under prefix: String) async throws(FSError) -> [String] {
        var keys: [String] = []
        var token: String?
        repeat {
            counters.withLock { $0.listRequests += 1 }
            do {
                let page = try await client.listObjectsV2(bucket, prefix: prefix, delimiter: nil, continuationToken: token,
                                                          startAfter: nil, maxKeys: nil)
                keys += page.objects.map(\.key).filter { !changes.isHidden($0) }
                token = page.isTruncated ? page.nextContinuationToken : nil
            } catch { throw FSError(error, during: .other) }
        } while token != nil
        return keys
    }

    /// Renames every object (`keys`, listed by the caller) and local file under `src` (a prefix ending in "/")
    /// to `dst`. The objects are copied first (journaled, so a crash is finished by the next mount; a failure
    /// deletes the copies made and changes nothing), then the local files move and the old names are queued
    /// for deletion, in one journal record batch.
    func renameDirectory(_ keys: [String], from src: String, to dst: String) async throws(FSError) {
        let localFiles = localFiles.byKey.withLock { l in l.filter { $0.key.hasPrefix(src) } }
        let remaining = keys.filter { localFiles[$0] == nil }
        func target(_ k: String) -> String { dst + k.dropFirst(src.count) }
        if changes.hasHidden { for k in remaining { await clearPendingDelete(of: target(k)) } }
        await clearPendingDelete(of: dst)
        let intent = newJournalId()
        if !remaining.isEmpty {
            try await journal.record(JournalRecord(op: .renaming, id: intent, key: src, target: dst, keys: remaining))
        }
        // Copy in parallel, a few at a time. On a failure the copies made are deleted: nothing moved.
        var copied: [String] = []
        var failure: FSError?
        var i = 0
        while i < remaining.count && failure == nil {
            let batch = Array(remaining[i..<min(i + 8, remaining.count)])
            let results = await withTaskGroup(of: (String, FSError?).self) { g -> [(String, FSError?)] in
                for k in batch {
                    g.addTask {
                        do throws(FSError) { try await self.copyObjectOrMarker(from: k, to: target(k)); return (k, nil) } catch { return (k, error) }
                    }
                }
                var out: [(String, FSError?)] = []
                for await r in g { out.append(r) }
                return out
            }
            copied += results.filter { $0.1 == nil }.map(\.0)
            failure = results.compactMap(\.1).first
            i += 8
        }
        if let failure {
            for k in copied { try? await client.deleteObject(bucket, target(k), versionId: nil) }
            try? await journal.record(JournalRecord(op: .done, id: intent))
            throw FSError(failure.errno, "renaming \(src) to \(dst) failed and was undone: \(failure.message)")
        }
        crashPoint("rename-copied")
        var moves = Retarget()
        for (k, f) in localFiles.sorted(by: { $0.key < $1.key }) {
            let r = retarget(f, from: k, to: target(k))
            moves.records += r.records
            moves.requeue += r.requeue
        }
        if keys.isEmpty && localFiles.isEmpty {
            // An empty directory that exists only in this mount's memory.
            do { _ = try await client.putObject(bucket, dst, body: .empty, options: PutOptions()) } catch { throw FSError(error, during: .other) }
        }
        // The old names go (after the uploads before them), hidden until then, with every directory under them.
        let old = Array(Set(keys + localFiles.keys))
        var hides: Set<String> = [src]
        for k in old {
            var at = k.index(k.startIndex, offsetBy: src.count)
            while let slash = k[at...].firstIndex(of: "/") {
                hides.insert(String(k[...slash]))
                at = k.index(after: slash)
            }
        }
        let (deletes, items) = deleteRecords(FileSystem.deleteOrder(old))
        try await journal.record(moves.records + deletes + [JournalRecord(op: .done, id: intent)])
        for v in moves.requeue { enqueueUpload(v) }
        if items.isEmpty {
            try await deleteLater([src], hiding: [src])
        } else {
            queueDeletes(items, hiding: Array(hides))
        }
    }

    /// The renamed inode keeps its number at the new path; everything cached under the old path is updated.
    func moveNode(parent: UInt64, name: String, newParent: UInt64, newName: String, from src: String, to dst: String,
                  isDirectory: Bool) {
        namespace.table.withLock {
            $0.move(parent: parent, name: name, newParent: newParent, newName: newName, from: src, to: dst, isDirectory: isDirectory)
        }
    }
}
