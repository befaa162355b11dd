// Crash recovery: the journal left by an earlier mount is replayed and what it acknowledged is queued again.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    /// Multipart uploads of `key` created since `time` (less a margin for clock skew) that no journal record
    /// names: a crash came between CreateMultipartUpload and its `multipart` record.
    func unrecordedUploads(of key: String, since time: Double, margin: Double = 300) async -> [String] {
        let since = Date(timeIntervalSince1970: time - margin)
        var found: [String] = []
        var keyMarker: String?, idMarker: String?
        while true {
            guard let page = try? await client.listMultipartUploads(bucket, prefix: key, keyMarker: keyMarker, uploadIdMarker: idMarker) else {
                logger.warning("could not list multipart uploads to find one a crash left open", metadata: ["key": "\(key)"])
                return found
            }
            found += page.uploads.filter { $0.key.sameBytes(key) && ($0.initiated ?? since) >= since }.map(\.uploadId)
            guard page.isTruncated, page.nextKeyMarker != nil || page.nextUploadIdMarker != nil else { return found }
            keyMarker = page.nextKeyMarker
            idMarker = page.nextUploadIdMarker
        }
    }

    /// The bucket whose keys the journal in `directory` holds (`CACHE_DIR/journal-bucket`), or nil when no
    /// mount recorded it (a new cache directory, or one of a version before it was recorded).
    static func journalBucket(directory: String) -> String? {
        guard let s = try? String(contentsOfFile: directory + "/journal-bucket", encoding: .utf8) else { return nil }
        let b = s.trimmingCharacters(in: .whitespacesAndNewlines)
        return b.isEmpty ? nil : b
    }

    /// Records `bucket` as the one the journal in `directory` holds keys of, durably (written to a temporary
    /// file, fsynced, renamed over, the directory fsynced). Throws `EIO` (with the errno's text) on failure.
    static func setJournalBucket(_ bucket: String, directory: String) throws(FSError) {
        let path = directory + "/journal-bucket"
        if let e = replaceDurably(path, with: Array((bucket + "\n").utf8)) {
            throw FSError(EIO, "cannot write \(path): \(String(cString: strerror(e)))")
        }
    }

    /// Reads the journal left by an earlier mount, in order, and queues again what it acknowledged and S3 does
    /// not have yet: the newest acknowledged version of each key (checked against its size and checksum; a
    /// damaged one is moved to `lost+found` and reported, never uploaded) and the deletes not applied yet, in
    /// the order they were journaled (so a delete still waits for the uploads acknowledged before it). A rename
    /// a crash cut short is finished. Multipart uploads the crash left open are aborted. Reads of recovered
    /// paths see the staged bytes from now on. Call before serving requests. Throws `EBUSY` when the journal
    /// holds changes not in S3 yet of another bucket (`CACHE_DIR/journal-bucket`): they are left for a mount of
    /// that bucket, and nothing is applied here.
    func recover() async throws(FSError) -> RecoveryReport {
        var report = RecoveryReport()
        let (records, torn) = Journal.replay(path: journalPath)
        report.tornTail = torn
        // Versions acknowledged and neither landed nor dropped (a `done` counts only for the key the version
        // had at that point of the journal), with the position of their last commit record.
        var acked: [UInt64: (record: JournalRecord, position: Int)] = [:]
        var landed = Set<UInt64>()
        var deletes: [UInt64: (key: String, position: Int, removes: Removal)] = [:]
        var renames: [UInt64: JournalRecord] = [:]
        var multipart: [(UInt64, String, String)] = []
        var starting: [UInt64: (key: String, time: Double)] = [:]  // created, perhaps, but no id recorded
        var maxId: UInt64 = 0
        for (position, r) in records.enumerated() {
            maxId = max(maxId, r.id)
            switch r.op {
            case .commit:
                // A version acknowledged later supersedes the ones of its key acknowledged before it (a newer
                // save of a version waiting behind an upload in flight journals no drop of that one): once it
                // is dropped (unlink), none of them may come back.
                if let key = r.key {
                    for (id, b) in acked where id != r.id && b.record.key?.sameBytes(key) == true { acked[id] = nil }
                }
                acked[r.id] = (r, position)
                landed.remove(r.id)
            case .done:
                if let a = acked[r.id], r.key.map({ k in a.record.key?.sameBytes(k) == true }) ?? true,
                   r.generation == nil || a.record.generation == nil || r.generation == a.record.generation {
                    acked[r.id] = nil
                    landed.insert(r.id)
                    // Versions of the key acknowledged before it were superseded by it (their staged files are
                    // gone): what landed carries their bytes.
                    if let key = a.record.key {
                        for (id, b) in acked where b.record.key?.sameBytes(key) == true && b.position < a.position { acked[id] = nil }
                    }
                }
                deletes[r.id] = nil
                renames[r.id] = nil
            case .drop: acked[r.id] = nil
            case .delete: if let k = r.key { deletes[r.id] = (k, position, r.removes) }
            case .renaming: renames[r.id] = r
            case .starting: if let k = r.key { starting[r.id] = (k, r.mtime ?? 0) }
            case .multipart:
                if let k = r.key, let u = r.uploadId { multipart.append((r.id, k, u)) }
                starting[r.id] = nil
            }
        }
        // The journal's keys are keys of the bucket it was written for: its changes must never be applied to
        // another bucket (a cache directory shared by the jobs of one machine, mounting one bucket after a
        // crash of a mount of another).
        let owner = WriteBack.journalBucket(directory: cache.directory)
        let pending = acked.count + deletes.count + renames.count
            + multipart.filter { !landed.contains($0.0) }.count + starting.keys.filter { !landed.contains($0) }.count
        if let owner, owner != bucket, pending > 0 {
            throw FSError(EBUSY, "the journal in \(cache.directory) holds \(pending) change(s) acknowledged by a mount of "
                + "bucket \(owner) and not in S3 yet; they belong to that bucket, not to \(bucket). Fix: mount s3://\(owner) "
                + "with this --cache-dir so they upload (then `ckptfs unmount`), or give this mount another --cache-dir")
        }
        if owner != bucket { try WriteBack.setJournalBucket(bucket, directory: cache.directory) }
        for (id, s) in starting where !landed.contains(id) {
            multipart += await unrecordedUploads(of: s.key, since: s.time).map { (id, s.key, $0) }
        }
        maxId = max(maxId, staging.ids().max() ?? 0)
        lastJournalId.store(maxId, ordering: .relaxed)

        // Multipart uploads of versions that did not land were cut short (or their version was dropped): abort
        // them (an upload starts over). One that completed answers NoSuchUpload.
        for (id, key, uploadId) in multipart where !landed.contains(id) {
            do {
                try await client.abortMultipartUpload(bucket, key, uploadId: uploadId)
                report.abortedMultipart += 1
            } catch {
                if error.code != .noSuchUpload { logger.warning("could not abort an old multipart upload", metadata: ["key": "\(key)", "error": "\(error)"]) }
            }
        }

        // Renames a crash cut short are finished: the objects not copied yet are copied, local versions move to
        // the new names, and the old names are deleted (after the uploads, like any delete).
        var keptRenames: [JournalRecord] = []
        var end = records.count
        for (_, r) in renames.sorted(by: { $0.key < $1.key }) {
            guard let src = r.key, let dst = r.target else { continue }
            func mapped(_ k: String) -> String? {
                if k.sameBytes(src) { return dst }
                return src.endsWithSlash && k.hasKeyPrefix(src) ? dst + k.keySuffix(after: src) : nil
            }
            do throws(FSError) {
                for k in r.keys ?? [] {
                    guard let to = mapped(k) else { continue }
                    try await copyIfPresent(from: k, to: to)
                }
            } catch {
                logger.error("could not finish a rename a crash interrupted; the next mount tries again",
                             metadata: ["from": "\(src)", "to": "\(dst)", "error": "\(error)"])
                keptRenames.append(r)
                continue
            }
            // The old names go: the objects copied, and those of local versions moved (the intent lists only
            // the objects it copies; a file saved here kept an older object under its old name, which the
            // crash left there, and that came back under the old name).
            var old = r.keys ?? []
            for (id, a) in acked {
                guard let k = a.record.key, let to = mapped(k) else { continue }
                var rec = a.record
                rec.key = to
                rec.ifMatch = nil
                rec.ifNoneMatch = nil
                acked[id] = (rec, end)
                end += 1
                old.append(k)
            }
            for k in WriteBack.deleteOrder(BytesSet.distinct(old)) {
                let id = newJournalId()
                deletes[id] = (k, end, .anyObject)
                end += 1
            }
            report.finishedRenames += 1
        }

        // The newest acknowledged version of each key is what must reach S3.
        var newest = BytesDictionary<(record: JournalRecord, position: Int)>()
        for (_, a) in acked {
            guard let key = a.record.key else { continue }
            if let cur = newest[key], cur.position > a.position { continue }
            newest[key] = a
        }
        var keep: [(JournalRecord, Int)] = []
        var recovered: [(StagedVersion, Int)] = []
        // The deletes of each key, looked up per save below instead of scanning them all for each.
        var deletesOf = BytesDictionary<[UInt64]>()
        for (id, d) in deletes { deletesOf[d.key, default: []].append(id) }
        for (key, a) in newest {
            let keyDeletes = (deletesOf[key] ?? []).compactMap { id in deletes[id].map { (id: id, position: $0.position, removes: $0.removes) } }
            // A delete of the key journaled after this save: the name was removed since. Only a save a rename
            // kept under the name is left so (`keptByRename`: the replaced file's, every save kept), which no
            // removal of the file there drops (`versions(of:newest:)`): history of a name that is gone, not the
            // file. Recovered, it showed the removed name again until its delete ran (keep-every-version seed
            // 24023). Not recovered (its staged file goes; the delete is queued as any other).
            if keyDeletes.contains(where: { $0.position > a.position }) { continue }
            var r = a.record
            // Deletes of the key journaled before this save and not applied (the rename or unlink of an object
            // the trainer saw there, cut short by the crash; one sent already when the file was saved there left
            // the save expecting no object): this save's upload replaces them, as `enqueueUpload` replaces a
            // delete that has not started, and so replaces the object they were to remove instead of expecting
            // none. Decided here, not by which of the two starts first once queued, and journaled (the record
            // rewritten without its condition, the deletes dropped), so a crash after it cannot send the save
            // with If-None-Match (seed 30425: it met that object as a conflict, and an unlink after it left
            // the object in S3 for good).
            let replacedDeletes = keyDeletes.filter { $0.position < a.position && $0.removes == .anyObject }.map(\.id)
            if !replacedDeletes.isEmpty { r.ifNoneMatch = nil }
            let path = staging.path(r.id)
            var missing = Set<Int64>()
            for range in r.missing ?? [] where range.count == 2 && range[0] < range[1] { missing.formUnion(range[0]..<range[1]) }
            let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                report.quarantined.append((key, path))
                logger.error("an acknowledged file's staged copy is missing; it cannot be uploaded",
                             metadata: ["key": "\(key)", "path": "\(path)"])
                continue
            }
            var st = stat()
            fstat(fd, &st)
            var ok = Int64(st.st_size) == r.size
            if ok, let want = r.xxh64 {
                ok = (try? StagingArea.checksum(fd: fd, size: r.size ?? 0, missing: missing, blockSize: fillBlock)).map { String($0, radix: 16) } == want
            }
            guard ok else {
                close(fd)
                let lost = cache.directory + "/lost+found"
                Glibc.mkdir(lost, 0o700)
                // The key flattened, its start dropped to fit a name of 255 bytes (a long key must not make the
                // rename fail and the copy go).
                var flat = Substring(String(decoding: key.utf8.map { $0 == UInt8(ascii: "/") ? UInt8(ascii: "_") : $0 }, as: UTF8.self))
                while flat.utf8.count > 255 - "\(r.id)-".utf8.count { flat = flat.dropFirst() }
                let dest = "\(lost)/\(r.id)-" + flat
                if Glibc.rename(path, dest) != 0 { Glibc.unlink(path) }
                report.quarantined.append((key, dest))
                logger.error("a staged file failed its checksum; moved aside, not uploaded",
                             metadata: ["key": "\(key)", "moved.to": "\(dest)"])
                continue
            }
            let v = StagedVersion(id: r.id, path: path, fd: fd, key: key, size: r.size ?? 0,
                                  mtime: Date(timeIntervalSince1970: r.mtime ?? Date().timeIntervalSince1970))
            staging.account(v, upTo: r.size ?? 0)
            v.closeWriters()  // sealed, nobody writes it: queued files hold no descriptor until they upload
            v.state.withLock { s in
                s.sealed = true
                s.unjournaled = false
                s.committedSum = r.xxh64
                s.commits = r.generation ?? 0
                s.differsFromBase = true
                if let e = r.ifMatch { s.expect = .etag(e) } else if r.ifNoneMatch == true { s.expect = .absent }
                s.reachedKey = true  // it may have been sent before the crash
                if let bk = r.baseKey, let be = r.baseETag, let bs = r.baseSize, !missing.isEmpty {
                    s.base = PinnedObject(key: bk, etag: be, size: bs)
                    s.baseLimit = r.baseLimit ?? bs
                    s.missing = missing
                }
            }
            let f = LocalFile(key: key, current: v)
            // Created here on a name that held nothing (its save expects none): removing it removes only this
            // cache directory's own object, as before the crash (outside testing round 13, F4: it removed
            // another client's object that the recovered save met).
            if r.ifNoneMatch == true { f.state.withLock { $0.keyRemoval = .nothing } }
            localFiles.byKey.withLock { $0[key] = f }
            keep.append((r, a.position))
            for id in replacedDeletes { deletes[id] = nil }
            recovered.append((v, a.position))
            report.requeued.append(key.keySuffix(after: prefix))
        }
        // Staged files nobody acknowledged (close never returned), superseded or already uploaded are removed.
        staging.removeAll(except: Set(keep.map { $0.0.id }))
        for (id, d) in deletes {
            var r = JournalRecord(op: .delete, id: id, key: d.key)
            r.removes = d.removes
            keep.append((r, d.position))
        }
        for r in keptRenames { keep.append((r, -1)) }
        try Journal.rewrite(path: journalPath, keep.sorted { $0.1 < $1.1 }.map(\.0))
        try journal.reopen()
        changes.state.withLock { u in
            u.recovered = report.requeued.count
            u.quarantined = report.quarantined.map { "\($0.key) -> \($0.path)" }
        }
        // Queued again in the journal's order: each delete after the uploads acknowledged before it.
        enum Op { case upload(StagedVersion), delete(DeleteItem) }
        var ops: [(Op, Int)] = recovered.map { (.upload($0.0), $0.1) }
        ops += deletes.map { (.delete(DeleteItem(id: $0.key, key: $0.value.key, removes: $0.value.removes)), $0.value.position) }
        for (op, _) in ops.sorted(by: { $0.1 < $1.1 }) {
            switch op {
            case .upload(let v): enqueueUpload(v)
            case .delete(let item):
                queueDeletes([item], hiding: item.key.endsWithSlash ? [item.key] : [])
            }
        }
        report.pendingDeletes = deletes.count
        return report
    }
}
