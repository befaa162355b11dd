// Ordered changes to S3. Every change the mount makes to S3 — the upload of a version, the delete of a key —
// goes through one queue, so that S3 only ever holds a state the trainer could have seen:
//
// - One key's changes happen in the order they were made: each key has a chain of jobs, each waiting for the
//   one before it. An upload that was renamed away, or superseded, leaves a job that does nothing.
// - A delete (unlink, rmdir, the old name of a rename) waits until every upload job queued before it has
//   landed (or was dropped): rotating checkpoints — save `ckpt-N+1`, delete `ckpt-N` — never leaves S3
//   without one, also across a crash (deletes are journaled before they are acknowledged, and recovery queues
//   the journal's uploads and deletes again in the journal's order).
// - An upload queued while a delete of the same key has not started replaces it (the delete is skipped: the
//   upload overwrites the object anyway). So an upload never waits behind a delete that waits for it.
// - Until a delete is applied, lookups and listings do not show what it removes (`isHidden`).
//
// Nothing polls: jobs wait on the task before them and on continuations resumed when a version settles.
import CkptS3
import Foundation
import Synchronization

/// The last job queued for a key (the next one waits for it).
struct UploadTail: Sendable {
    var id: UInt64
    var task: Task<Void, Never>
    func isCurrent(_ v: UInt64) -> Bool { id == v }
}

/// Deletes queued together (a directory's objects): the prefixes they hide stay hidden until all are applied.
final class DeleteGroup: Sendable {
    let hides: [String]
    let remaining: Atomic<Int>
    /// Some delete of the group was dropped (an upload or a directory marker replaced it): what it hides was
    /// not all deleted.
    let lostOne = Atomic(false)
    init(hides: [String], count: Int) {
        self.hides = hides
        remaining = Atomic(count)
    }
}

/// What the delete that removes a name (unlink, rmdir, the old name of a rename) takes from S3.
enum Removal: Sendable, Equatable {
    /// Whatever object the key holds: one the file was opened from or replaced, one of its saves that landed, an
    /// object the mount listed.
    case anyObject
    /// Only an object this cache directory uploaded (`x-amz-meta-ckptfs-version`, `WriteBack.ownVersion`): the
    /// file was created here on a name that held nothing, and a save of it reached the key with
    /// `If-None-Match: *`, but it may have met another client's object there (412) and left it; nobody here saw
    /// that object, so it stays (S-CONFLICT-IN-FLIGHT). A HEAD at the delete's turn tells.
    case ownObject
    /// Nothing of the removed file reached S3 under the key: no DeleteObject is sent (it could only remove
    /// another client's object).
    case nothing

    /// What removing the name takes once uploads expecting `conditions` (nil: none, a plain PUT) reached the
    /// key too, when this is what it took before them. Uploads onto a name that held nothing, each with a
    /// condition, can only have left their own object there (`ownObject`); a plain one replaces whatever is
    /// there (a rename's destination, a name whose delete it replaced, a server without conditional writes),
    /// and what it may have left goes too, whoever's it is (`anyObject`).
    func then(uploadsExpecting conditions: [WriteCondition?]) -> Removal {
        guard !conditions.isEmpty else { return self }
        guard self != .anyObject, !conditions.contains(where: { $0 == nil }) else { return .anyObject }
        return .ownObject
    }
}

/// A delete not applied yet.
struct PendingDelete: Sendable {
    var key: String
    var job: UInt64
    var started = false
    var cancelled = false
    /// Why the last DeleteObject of this key failed (it is retried), for status and flush.
    var lastError: String?
    /// DeleteObject attempts S3 refused for good, in a row: `ckptfs flush` then stops waiting for this delete.
    var refusals = Refusals()
    var group: DeleteGroup
    var task: Task<Void, Never>?
    /// What it removes (`WriteBack.removal`). One that removes `nothing` sends no DeleteObject but keeps its
    /// place in the order: the upload jobs of the withdrawn versions stay open until it passes its barrier, so
    /// deletes made before it still wait for the uploads before it (a rotation's older checkpoint is not
    /// removed before the newer one lands, S-DUR-ORDER).
    var removes: Removal = .anyObject
    var sendsNothing: Bool { removes == .nothing }
}

/// The change queue's state and the slots its jobs run in (see the file comment). The jobs themselves, the
/// uploader and the delete runner, are the facade's (Uploader.swift, below).
final class ChangeQueue: Sendable {
    let state = Mutex(State())
    /// Files uploaded at once in parts, files uploaded at once with one PutObject, and parts in flight over
    /// all files (FSOptions.uploadConcurrency, smallUploadConcurrency, partConcurrency).
    let uploadSlots: AsyncSemaphore
    let smallUploadSlots: AsyncSemaphore
    let partSlots: AsyncSemaphore
    let partSize: Int64

    init(options: FSOptions) {
        uploadSlots = AsyncSemaphore(options.uploadConcurrency)
        smallUploadSlots = AsyncSemaphore(options.smallUploadConcurrency)
        partSlots = AsyncSemaphore(options.partConcurrency)
        partSize = options.partSize
    }

    /// The slots an upload of `size` bytes waits for.
    func slots(forUploadOf size: Int64) -> AsyncSemaphore { size <= partSize ? smallUploadSlots : uploadSlots }

    /// Versions queued or uploading, the jobs of the queue, deletes, counters for status.
    struct State: Sendable {
        var pending: [UInt64: StagedVersion] = [:]
        /// Per key, the last job queued.
        var tails = BytesDictionary<UploadTail>()
        var uploadedFiles = 0
        var uploadedBytes: Int64 = 0
        var recovered = 0
        var quarantined: [String] = []
        var nextJob: UInt64 = 0
        /// Upload jobs by number, until their version (or the one that superseded it) has settled.
        var openUploads: [UInt64: StagedVersion] = [:]
        /// Deletes not applied yet, by journal id.
        var deletes: [UInt64: PendingDelete] = [:]
        /// Keys and prefixes ("dir/": everything under it, and the directory itself) that queued deletes hide,
        /// with how many deletes hide each.
        var hidden = BytesDictionary<Int>()
        /// Deletes waiting for the uploads queued before them, by journal id.
        var barrier: [UInt64: (job: UInt64, c: CheckedContinuation<Void, Never>)] = [:]
        /// Tasks waiting for a delete to finish (flush).
        var deleteWaiters = Waiters<Void>()
        /// Upload jobs of versions an unlink withdrew, kept open (by upload job) until the delete that withdrew
        /// them (by journal id) has waited for the uploads queued before it: a delete queued after such a job
        /// (rotating checkpoints: save ckpt-1, delete ckpt-0, save ckpt-2, delete ckpt-1) must not take the
        /// withdrawal for the upload it was waiting for, or S3 would hold neither checkpoint until ckpt-2 lands.
        var heldUploads: [UInt64: UInt64] = [:]

        /// The deletes at their barrier that may go now, removed from `barrier`. A delete goes once every upload
        /// job queued before it has closed, or is held open only by deletes that go now too (itself, or another
        /// whose withdrawn job it would otherwise wait for: save b, save c, unlink c, unlink b — each delete finds
        /// the other's withdrawn upload before it, and they go together rather than wait for each other for
        /// ever). Those that go form the deletes at their barrier below one job number: the lowest open job that
        /// is not held by one of them.
        mutating func passBarriers() -> [CheckedContinuation<Void, Never>] {
            guard !barrier.isEmpty else { return [] }
            let atBarrier = Dictionary(uniqueKeysWithValues: barrier.map { ($0.key, $0.value.job) })
            // Jobs not held by a delete at its barrier block every delete after them.
            var below = openUploads.keys.filter { heldUploads[$0].flatMap { atBarrier[$0] } == nil }.min() ?? .max
            // A job held by a delete that cannot go (its own job is not below the bound) blocks too.
            while let blocking = openUploads.keys.filter({ j in
                j < below && heldUploads[j].flatMap({ atBarrier[$0] }).map({ $0 >= below }) == true
            }).min() {
                below = blocking
            }
            var ready: [CheckedContinuation<Void, Never>] = []
            for (id, w) in barrier where w.job < below {
                ready.append(w.c)
                barrier.removeValue(forKey: id)
            }
            return ready
        }

        /// What the deletes of `key` that would remove something (not those that send nothing), not started and
        /// not cancelled, remove (`anyObject` if one of them removes whatever is there); nil when none waits. A
        /// write under the key replaces them.
        func removingDeleteWaits(_ key: String) -> Removal? {
            var out: Removal?
            for d in deletes.values where d.key.sameBytes(key) && !d.started && !d.cancelled && !d.sendsNothing {
                if d.removes == .anyObject { return .anyObject }
                out = d.removes
            }
            return out
        }

        /// Drops the deletes of `key` that have not started (an upload or a direct write replaces them).
        /// Returns the continuations of those waiting for their barrier, to resume outside the lock.
        mutating func cancelDeletes(of key: String) -> [CheckedContinuation<Void, Never>] {
            var waiting: [CheckedContinuation<Void, Never>] = []
            for (id, d) in deletes where d.key.sameBytes(key) && !d.started && !d.cancelled {
                deletes[id]?.cancelled = true
                d.group.lostOne.store(true, ordering: .relaxed)
                if let w = barrier.removeValue(forKey: id) { waiting.append(w.c) }
            }
            return waiting
        }
    }

    static func unhide(_ hidden: inout BytesDictionary<Int>, _ k: String) {
        guard let n = hidden[k] else { return }
        if n <= 1 { hidden.removeValue(forKey: k) } else { hidden[k] = n - 1 }
    }

    /// Whether a queued delete hides `key` (a file's key, or a directory prefix ending in "/"): the key itself,
    /// or a directory above it.
    func isHidden(_ key: String) -> Bool {
        state.withLock { u in
            guard !u.hidden.isEmpty else { return false }
            if u.hidden[key] != nil { return true }
            return key.keyPrefixes().contains { !$0.sameBytes(key) && u.hidden[$0] != nil }
        }
    }

    /// Whether any delete is queued (listings then filter what they show).
    var hasHidden: Bool { state.withLock { !$0.hidden.isEmpty } }

}

extension WriteBack {

    // MARK: Uploads

    /// Queues an upload job for a sealed version, in its key's order. An older version of the same key still
    /// waiting is superseded by it (unless `FSOptions.keepEveryVersion`: then each goes up, in order); a delete
    /// of the key that has not started is replaced by it.
    func enqueueUpload(_ v: StagedVersion) {
        let cancelled: [CheckedContinuation<Void, Never>] = changes.state.withLock { u in
            // Read under the queue's lock: a rename that moves `v` meanwhile (`retarget`) finds it queued under
            // the key it read, or queues it under the new one. A version dropped (unlinked, replaced by a rename)
            // or superseded meanwhile is never queued: it would cancel a delete of the key, and the object that
            // delete removes would stay (`removal` read the version before).
            guard let key = v.state.withLock({ s -> String? in
                switch s.upload {
                case .waiting, .uploading: return s.key
                case .done, .superseded, .dropped, .conflict: return nil
                }
            }) else { return [] }
            // Only older versions: one queued again by a rename (its key's versions are queued again oldest
            // first) never stands in for a newer one, and no two versions can supersede each other.
            for (_, old) in u.pending where old !== v && old.key.sameBytes(key) && old.id < v.id && !options.keepEveryVersion {
                let skip = old.state.withLock { s -> Bool in
                    guard case .waiting = s.upload, s.sealed else { return false }
                    s.successor = v
                    return true
                }
                if skip {
                    old.settle(.superseded)
                    // The new version inherits what the skipped one expected to find in S3, and what it left there.
                    let (inherited, reached) = old.state.withLock { ($0.expect, $0.reachedKey) }
                    v.state.withLock { s in
                        if case .after(let p) = s.expect, p === old { s.expect = inherited }
                        if reached { s.reachedKey = true }
                    }
                }
            }
            u.pending[v.id] = v
            u.nextJob += 1
            let job = u.nextJob
            u.openUploads[job] = v
            v.state.withLock { $0.job = job }
            // A delete of the key not started is replaced: the object it would have removed (this mount
            // deleted it) is still there when this upload goes, so one that expects no object (a file created
            // again under the name) replaces it instead. One that removes only this mount's own object keeps
            // its expectation (no object): it meets that object as one of its own earlier versions and
            // replaces it (`uploadOnce`), or meets another client's object as a conflict.
            if let removal = u.removingDeleteWaits(key) {
                v.state.withLock { s in
                    if removal == .anyObject, case .absent = s.expect { s.expect = .anything }
                    s.reachedKey = true
                }
            }
            // With no upload delay the job starts now: counted as started (a rename or unlink meanwhile sends its
            // delete whichever comes first, so the outcome does not depend on the scheduler).
            if options.uploadDelay <= .zero { v.state.withLock { $0.reachedKey = true } }
            let cancelled = u.cancelDeletes(of: key)
            let previous = u.tails[key]
            // Renamed while an older job uploads it (to its old name): this job goes once that one is over.
            let uploading = v.state.withLock { s -> Task<Void, Never>? in
                if case .uploading = s.upload { return s.uploadTask }
                return nil
            }
            let task = Task {
                await previous?.task.value  // one key's changes go in order
                await uploading?.value
                if v.state.withLock({ $0.job }) == job {
                    // Sealed: its size is final (a newer save is another version).
                    let slots = self.changes.slots(forUploadOf: v.state.withLock { $0.size })
                    await slots.acquire()
                    await self.upload(v, job: job)
                    slots.release()
                }
                self.changes.state.withLock { u in
                    if u.tails[key]?.isCurrent(job) == true { u.tails.removeValue(forKey: key) }
                }
            }
            u.tails[key] = UploadTail(id: job, task: task)
            v.state.withLock { $0.uploadTask = task }
            return cancelled
        }
        for c in cancelled { c.resume() }
        closeUploadJobs()
    }

    /// Forgets upload jobs whose version has settled (landed, or dropped; a superseded one once the version
    /// that carries its bytes has), and lets the deletes go that waited only for them.
    func closeUploadJobs() {
        let ready = changes.state.withLock { u -> [CheckedContinuation<Void, Never>] in
            u.openUploads = u.openUploads.filter { u.heldUploads[$0.key] != nil || !carrier(of: $0.value).isSettled }
            return u.passBarriers()
        }
        for c in ready { c.resume() }
    }

    /// `versions(of: key, newest:)` and `newest`'s fallback: the acknowledged version a later write copied (not
    /// queued while a writer stays open), which stands for the file until the copy is acknowledged. Every
    /// version that holds bytes of the file a rename moves or a change to its base object must not lose.
    func versionsWithFallback(of key: String, newest: StagedVersion) -> [StagedVersion] {
        var vs = versions(of: key, newest: newest)
        if let fallback = newest.state.withLock({ $0.fallback }), !vs.contains(where: { $0 === fallback }) { vs.append(fallback) }
        return vs
    }

    /// Every local version of `key`: those queued or uploading, and `newest` (the key's current one). Not the
    /// saves a rename left under the key (`keptByRename`): those of the file it replaced (every save kept) or
    /// the renamed file's earlier ones are history of the key, no version of the file there now. Taken for it,
    /// a rename of that file moved them with it, the newest of them as its newest save (keep-every-version seed
    /// 23176: the replaced file's empty save landed under the renamed file's new name, over its bytes).
    func versions(of key: String, newest: StagedVersion) -> [StagedVersion] {
        var vs = changes.state.withLock { u in
            u.pending.values.filter { v in v.key.sameBytes(key) && (v === newest || !v.state.withLock { $0.keptByRename }) }
        }
        if !vs.contains(where: { $0 === newest }) { vs.append(newest) }
        return vs
    }

    /// `f`'s versions are never uploaded (unlink, replaced by a rename). Returns the journal records that
    /// withdraw the acknowledged ones, and the staged files to remove once those are journaled (but the current
    /// version's while a handle has the file open: an orphan reads it; it goes at its last close).
    func dropVersions(of f: LocalFile, heldFor delete: UInt64? = nil) -> Withdrawal {
        let all = versions(of: f)
        let victims = all.filter { !$0.isSettled }
        // Read before they are settled as dropped.
        let conflicted = all.contains { v in v.state.withLock { s in if case .conflict = s.upload { true } else { false } } }
        var records: [JournalRecord] = []
        if let delete {
            // Their upload jobs stay open until that delete has waited for the uploads before it (heldUploads).
            changes.state.withLock { u in
                for v in victims {
                    let job = v.state.withLock { $0.job }
                    if u.openUploads[job] === v { u.heldUploads[job] = delete }
                }
            }
        }
        for v in victims {
            abandonEarlyUpload(v, because: "unlinked")
            if v.state.withLock({ $0.committedSum != nil }) { records.append(JournalRecord(op: .drop, id: v.id)) }
            v.settle(.dropped)
        }
        changes.state.withLock { u in for v in victims { u.pending.removeValue(forKey: v.id) } }
        closeUploadJobs()
        // Open, the file's handles read its current version, which goes at their last close; the others go now
        // (nothing else removes one stopped by a conflict, which no upload job finishes).
        let (open, current) = f.state.withLock { ($0.handles > 0, $0.current) }
        // Read once they are settled: no upload of them starts from now on (`upload` and `enqueueUpload` check).
        return Withdrawal(records: records, versions: open ? victims.filter { $0 !== current } : victims,
                          keyRemoval: removal(f, all), conflicted: conflicted)
    }

    /// Journal records that withdraw versions, and their staged files, removed only after the records are
    /// journaled (a crash in between must not leave a record naming a file that is gone).
    struct Withdrawal {
        var records: [JournalRecord] = []
        var versions: [StagedVersion] = []
        /// What removing the withdrawn file's name takes from S3 (`removal`); whatever the key holds when no
        /// local file was withdrawn (the object is all there is).
        var keyRemoval: Removal = .anyObject
        /// The withdrawn file was stopped by a conflict: the object under its key is another client's, which
        /// removing or replacing the file must leave (an unlink sends no DeleteObject; a rename over it expects
        /// no object, so it meets theirs as a conflict too), outside testing round 12, F1.
        var conflicted = false
        /// What the delete of the name removes.
        var removes: Removal { conflicted ? .nothing : keyRemoval }
    }

    /// What removing `f`'s name must delete in S3: what the key held before the file's own saves
    /// (`LocalFile.State.removal`: an object it was opened from or replaced, or one of its versions that landed),
    /// then what those of `versions` (its versions under the key) that reached it may have left there
    /// (`StagedVersion.State.reachedKey`: an upload started, or its queueing cancelled a delete; `Removal.then`).
    /// `nothing` for a file created here whose saves never left this machine: a DeleteObject could only remove
    /// another client's object. Read once no upload of `versions` can start any more (they are settled, or
    /// moved away by a rename).
    func removal(_ f: LocalFile, _ versions: [StagedVersion]) -> Removal {
        f.state.withLock { $0.removal }.then(uploadsExpecting: sentConditions(of: versions))
    }

    /// The conditions the uploads of those of `versions` that reached their key were (or will be) sent with.
    func sentConditions(of versions: [StagedVersion]) -> [WriteCondition?] {
        let plain = conditionsUnsupported.load(ordering: .relaxed)
        return versions.filter { $0.state.withLock { $0.reachedKey } }.map { plain ? nil : condition(for: $0) }
    }

    /// Lets go the upload jobs a delete that is not queued after all (`delete`: its id) held (`heldFor`).
    func releaseUploads(heldFor delete: UInt64) {
        changes.state.withLock { u in u.heldUploads = u.heldUploads.filter { $0.value != delete } }
        closeUploadJobs()
    }

    /// Takes the local file of `key` (if any) out of the local files, as an unlink or a rename over it removes
    /// it. The inodes of the key stop naming it at the same moment (`fileReplaced`), and its split count moves
    /// on: an open that found the file (or the inode) before answers ESTALE and the kernel looks the name up
    /// again, instead of joining the file the key holds next, or finding none and answering ENOENT for a name
    /// a rename keeps (CI: 1 open in about 8,000 racing saves by rename, which found the replaced file
    /// withdrawn and the renamed one not placed yet).
    func takeLocalFile(key: String) -> LocalFile? {
        var removed: LocalFile?
        notices.fileReplaced(key: key) {
            removed = localFiles.byKey.withLock { l in
                localFiles.bumpSplits(key)
                guard let f = l.removeValue(forKey: key) else { return nil }
                // Open, its current version is its descriptors' from this moment (`orphan` finishes the job): an
                // upload of it landing before then must not take the file for gone and remove the staged file
                // they read (outside testing round 9: read() failed with ENOENT, "cannot open the staged file").
                f.state.withLock { s in if s.handles > 0 { s.current.state.withLock { $0.orphaned = true } } }
                return f
            }
        }
        return removed
    }

    /// unlink of a file key: its local file (if any) loses its name (an orphan while open, never uploaded; the
    /// upload jobs of its versions stay open until the delete has waited for the uploads before it), and the
    /// key is deleted in S3 after the uploads queued before now. Journaled before it returns.
    func unlinkFile(key: String, ino: UInt64) async throws(FSError) {
        var (deleteRecords, items) = deleteRecords([key])
        let delete = items[0].id
        var withdrawn = Withdrawal()
        if let f = takeLocalFile(key: key) { withdrawn = orphan(f, ino: ino, heldFor: delete) }
        if withdrawn.conflicted {
            // Stopped by a conflict: the object under the key is another client's, and stays; the name shows it
            // again, as after renaming such a file away (S-CONFLICT-UNLINK). Its versions, final, hold nothing
            // in the order of changes.
            releaseUploads(heldFor: delete)
            try await journal.record(withdrawn.records)
            removeFiles(withdrawn)
            return
        }
        // Created here and never sent: nothing of it is in S3 to delete (S-UNLINK-NOT-UPLOADED); sent, perhaps
        // only its own object (S-CONFLICT-IN-FLIGHT). Journaled so: recovery after a crash does the same.
        deleteRecords[0].removes = withdrawn.removes
        items[0].removes = withdrawn.removes
        do throws(FSError) { try await journal.record(withdrawn.records + deleteRecords) } catch {
            // Not acknowledged: nothing holds the withdrawn versions' jobs any more.
            releaseUploads(heldFor: delete)
            throw error
        }
        keptSavesLoseTheirName { $0.sameBytes(key) }
        queueDeletes(items, hiding: [key])
        removeFiles(withdrawn)
    }

    /// The saves a rename left under the keys `removed` accepts (`keptByRename`) lose their name: an unlink or a
    /// rename away removed it, journaled (`StagedVersion.State.nameRemoved`).
    func keptSavesLoseTheirName(_ removed: (String) -> Bool) {
        changes.state.withLock { u in
            for v in u.pending.values where removed(v.key) {
                v.state.withLock { s in if s.keptByRename { s.nameRemoved = true } }
            }
        }
    }

    /// Removes the staged files of `w`'s versions (once its records are journaled).
    func removeFiles(_ w: Withdrawal) { for v in w.versions { staging.remove(v) } }

    // MARK: Deletes

    /// Deletes `keys` in S3 in order after every upload queued before now, and hides them (and `hiding`:
    /// prefixes "dir/") from lookups and listings until then. Journaled, with `records`, before it returns.
    func deleteLater(_ keys: [String], hiding: [String], with records: [JournalRecord] = [],
                     removes: (String) -> Removal = { _ in .anyObject }) async throws(FSError) {
        let (deleteRecords, items) = deleteRecords(keys, removes: removes)
        try await journal.record(records + deleteRecords)
        queueDeletes(items, hiding: hiding)
    }

    /// A journaled delete to queue.
    struct DeleteItem {
        var id: UInt64
        var key: String
        var removes: Removal = .anyObject
    }

    /// Journal records for deletes of `keys` (each removing what `removes` says), with the items to queue once
    /// they are journaled.
    func deleteRecords(_ keys: [String], removes: (String) -> Removal = { _ in .anyObject }) -> ([JournalRecord], [DeleteItem]) {
        var records: [JournalRecord] = []
        var items: [DeleteItem] = []
        for k in keys {
            let id = newJournalId()
            var r = JournalRecord(op: .delete, id: id, key: k)
            r.removes = removes(k)
            records.append(r)
            items.append(DeleteItem(id: id, key: k, removes: r.removes))
        }
        return (records, items)
    }

    /// Orders deletes so that objects go before the directory markers above them, deepest first.
    static func deleteOrder(_ keys: [String]) -> [String] {
        keys.sorted { a, b in
            let (ma, mb) = (a.endsWithSlash, b.endsWithSlash)
            if ma != mb { return !ma }
            let slash = UInt8(ascii: "/")
            let (da, db) = (a.utf8.count(where: { $0 == slash }), b.utf8.count(where: { $0 == slash }))
            return da != db ? da > db : a.bytesPrecede(b)
        }
    }

    /// Queues journaled deletes in the change queue.
    func queueDeletes(_ items: [DeleteItem], hiding: [String]) {
        guard !items.isEmpty else { return }
        let group = DeleteGroup(hides: hiding, count: items.count)
        changes.state.withLock { u in
            for h in hiding { u.hidden[h, default: 0] += 1 }
            for item in items {
                let (id, key) = (item.id, item.key)
                u.hidden[key, default: 0] += 1
                u.nextJob += 1
                let job = u.nextJob
                let previous = u.tails[key]
                let task = Task {
                    await previous?.task.value
                    await self.runDelete(id: id)
                    self.changes.state.withLock { u in
                        if u.tails[key]?.isCurrent(job) == true { u.tails.removeValue(forKey: key) }
                    }
                }
                u.deletes[id] = PendingDelete(key: key, job: job, group: group, task: task, removes: item.removes)
                u.tails[key] = UploadTail(id: job, task: task)
            }
        }
    }

    /// Applies delete `id` once every upload queued before it has settled (unless an upload of the same key
    /// replaced it meanwhile), retrying until S3 accepts it.
    func runDelete(id: UInt64) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let (ready, waiters) = changes.state.withLock { u -> ([CheckedContinuation<Void, Never>], [CheckedContinuation<Void, Never>]) in
                guard let d = u.deletes[id], !d.cancelled else { return ([c], []) }
                u.barrier[id] = (d.job, c)
                // this one, and any waiting only for the jobs it holds; a flush waiting for deletes looks again
                // (a conflict may hold them all now: `waitDeletes`)
                return (u.passBarriers(), u.deleteWaiters.removeAll())
            }
            for r in ready + waiters { r.resume() }
        }
        // Past its barrier (or cancelled): the upload jobs it held for the deletes after them are released.
        let held = changes.state.withLock { u -> Bool in
            let before = u.heldUploads.count
            u.heldUploads = u.heldUploads.filter { $0.value != id }
            return u.heldUploads.count != before
        }
        if held { closeUploadJobs() }
        // A directory marker goes after the deletes queued under it (they never wait for a marker above them, so
        // this cannot wait in a circle): some servers (SeaweedFS) keep
        // listing a directory whose marker was deleted while it still held objects. A cancelled one (mkdir or a
        // rename wrote the name again) deletes nothing and waits for nothing: its caller waits for this task, and
        // the deletes under it may be held for good (by a conflict before them).
        // Cancelled while it waits here, it is past its barrier, so the deletes under it (queued before it) are
        // past theirs too, and finish.
        let children = changes.state.withLock { u -> [Task<Void, Never>] in
            guard let d = u.deletes[id], !d.cancelled, d.key.endsWithSlash else { return [] }
            return u.deletes.values.filter { !$0.key.sameBytes(d.key) && $0.key.hasKeyPrefix(d.key) }.compactMap { $0.task }
        }
        for t in children { await t.value }
        let started: (key: String, removes: Removal)? = changes.state.withLock { u in
            guard var d = u.deletes[id], !d.cancelled, !d.sendsNothing else { return nil }
            d.started = true
            u.deletes[id] = d
            return (d.key, d.removes)
        }
        var kept = false  // another client's object, left in place (`Removal.ownObject`)
        if let (key, removes) = started {
            await keepReaders(of: key)  // descriptors reading the object read on until their last close
            let known = notices.knownETags(of: key)
            var delay: Duration = .milliseconds(500)
            while !Task.isCancelled {
                do throws(S3Error) {
                    if removes == .ownObject {
                        // Only this mount's own object: anything else is another client's, which none of this
                        // mount's saves replaced (they met it as a conflict).
                        let info = try await client.headObject(bucket, key, versionId: nil, ifMatch: nil)
                        if ownVersion(info, key: key) == nil {
                            logger.info("the object under the removed name is another client's; it stays",
                                        metadata: ["s3.key": "\(key)", "s3.etag": "\(info.etag)"])
                            kept = true
                            break
                        }
                    }
                    try await client.deleteObject(bucket, key, versionId: nil)
                    // What the cache holds of the versions it knew there is of no use any more.
                    for etag in known { openObjects.versionGone(key: key, etag: etag) }
                    break
                } catch {
                    if error.code == .noSuchKey { break }
                    let waiting = changes.state.withLock { u -> [CheckedContinuation<Void, Never>] in
                        guard var d = u.deletes[id] else { return [] }
                        d.lastError = "\(error)"
                        d.refusals.attemptFailed(refused: error.isRefusal)
                        u.deletes[id] = d
                        return d.refusals.refused ? u.deleteWaiters.removeAll() : []
                    }
                    for w in waiting { w.resume() }  // a flush waiting for it says so
                    logger.warning("delete failed; retrying", metadata: ["s3.key": "\(key)", "error": "\(error)", "retry.in": "\(delay)"])
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(30))
                }
            }
            if Task.isCancelled { return }  // shut down: the journal still has it
        }
        do { try await journal.record(JournalRecord(op: .done, id: id)) } catch {
            logger.warning("could not journal a finished delete; the next mount repeats it", metadata: ["error": "\(error)"])
        }
        let waiters = changes.state.withLock { u -> [CheckedContinuation<Void, Never>] in
            if let d = u.deletes.removeValue(forKey: id) {
                // Told before the hide goes, so a listing or HEAD in flight cannot show the name again.
                if !d.cancelled && !d.sendsNothing && !kept { notices.changedInS3(key: d.key, .absent) }
                if kept { d.group.lostOne.store(true, ordering: .relaxed) }  // what it hides was not all deleted
                ChangeQueue.unhide(&u.hidden, d.key)
                if d.group.remaining.wrappingSubtract(1, ordering: .relaxed).newValue == 0 {
                    for h in d.group.hides {
                        if u.hidden[h] == 1, !d.group.lostOne.load(ordering: .relaxed) { notices.changedInS3(key: h, .absent) }
                        ChangeQueue.unhide(&u.hidden, h)
                    }
                }
            }
            return u.deleteWaiters.removeAll()
        }
        for w in waiters { w.resume() }
    }

    /// Waits until no delete of a key `under` accepts is queued, or the deadline passes, or waiting changes
    /// nothing (S3 refuses each one left, or files stopped by a conflict hold them: `heldByConflict`). Returns
    /// the keys still queued.
    func waitDeletes(under: (String) -> Bool, deadline: ContinuousClock.Instant?) async -> (keys: [String], heldByConflict: Bool) {
        let began = ContinuousClock.now
        while true {
            let (left, refused, held) = changes.state.withLock { u in
                let mine = u.deletes.filter { under($0.value.key) }
                // Each waits at its barrier, and every upload job still open is a file stopped by a conflict,
                // which is never retried: none goes until the trainer renames or removes such a file
                // (S-CONFLICT-HOLDS-DELETES).
                // (A job kept open for a delete that waits too, its version dropped, goes with that delete.)
                let held = mine.allSatisfy { u.barrier[$0.key] != nil }
                    && u.openUploads.allSatisfy { job, v in
                        let c = carrier(of: v)
                        return c.state.withLock { s in if case .conflict = s.upload { true } else { false } }
                            || (u.heldUploads[job] != nil && c.isSettled)
                    }
                return (mine.map(\.value.key), mine.values.allSatisfy { $0.refusals.refused(since: began) }, held)
            }
            if left.isEmpty { return ([], false) }
            if refused || held { return (left, held) }  // waiting changes nothing
            let timeout = deadline.map { $0 - ContinuousClock.now }
            if let timeout, timeout <= .zero { return (left, false) }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ticket = changes.state.withLock { $0.deleteWaiters.add(c) }
                if let timeout {
                    Task {
                        try? await Task.sleep(for: timeout)
                        self.changes.state.withLock { $0.deleteWaiters.remove(ticket) }?.resume()
                    }
                }
            }
        }
    }

    /// Before something is written under `key` directly (a directory marker, a server-side copy): a queued
    /// delete of it that has not started is dropped, one that has is waited for, so it cannot remove what is
    /// written now. With a prefix ("dir/"), the directory shows again (objects under it still queued for
    /// deletion stay hidden). Returns whether a delete was dropped: if what was to be written fails, the
    /// caller queues it again (`restoreDelete`), or the removed object would be back. Returns what the dropped
    /// delete removed (nil: none was dropped).
    @discardableResult
    func clearPendingDelete(of key: String) async -> Removal? {
        let (tail, waiters, dropped) = changes.state.withLock { u -> (Task<Void, Never>?, [CheckedContinuation<Void, Never>], Removal?) in
            // One that sends nothing is not queued again if the write fails: it had nothing to remove.
            let dropped = u.removingDeleteWaits(key)
            let waiting = u.cancelDeletes(of: key)
            if key.endsWithSlash { u.hidden.removeValue(forKey: key) }
            return (u.tails[key]?.task, waiting, dropped)
        }
        for w in waiters { w.resume() }
        await tail?.value
        return dropped
    }

    /// Runs `body`, a write under `key` that is not an upload job (a rename's server-side copy over it, and the
    /// withdrawal of the file it replaces), as a link of the key's chain of changes: after every upload and
    /// delete of `key` queued before (in flight ones included), and before every one queued while it runs. So
    /// no save of the replaced file is sent during the copy: before, one starting then (an appender's close)
    /// went alongside it, and with readers following the appends, outside testing round 9's race of renames
    /// by copy failed reads and appends with EIO in every run (the replaced file's blocks no longer in S3).
    func inKeyOrder<T>(_ key: String, _ body: () async throws(FSError) -> T) async throws(FSError) -> T {
        let (done, finish) = AsyncStream<Void>.makeStream()
        let gate = Task { for await _ in done {} }
        let (job, previous) = changes.state.withLock { u -> (UInt64, Task<Void, Never>?) in
            u.nextJob += 1
            let previous = u.tails[key]?.task
            u.tails[key] = UploadTail(id: u.nextJob, task: gate)
            return (u.nextJob, previous)
        }
        defer {
            finish.finish()
            changes.state.withLock { u in
                if u.tails[key]?.isCurrent(job) == true { u.tails.removeValue(forKey: key) }
            }
        }
        await previous?.value
        return try await body()
    }

    /// Queues again (journaled) the deletes of `keys` that `clearPendingDelete` dropped before a write under
    /// them that failed: the removed objects stay removed. A journal failure is logged (the object may then
    /// come back).
    func restoreDelete(of dropped: [(key: String, removes: Removal)]) async {
        guard !dropped.isEmpty else { return }
        let keys = dropped.map(\.key)
        let removes = Dictionary(dropped.map { ($0.key, $0.removes) }, uniquingKeysWith: { a, _ in a })
        do throws(FSError) { try await deleteLater(keys, hiding: keys, removes: { removes[$0] ?? .anyObject }) } catch {
            logger.error("could not queue again a delete a failed change had dropped", metadata: ["keys": "\(keys)", "error": "\(error)"])
        }
    }
}
