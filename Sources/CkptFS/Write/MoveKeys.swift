// Moving keys, as a rename needs them moved: a file with local changes moves locally (its versions go to the new
// key, so write-temp-then-rename costs one upload); an object only in S3 is copied server-side; a directory is
// moved object by object, copies first, journaled as an intent so a failure undoes it and a crash is finished by
// the next mount. The old names are deleted through the change queue, after the new names' uploads.
import CkptS3
import Foundation

extension WriteBack {
    /// Renames one file key (`replacing`: the inode of the file the destination was, if any). Returns true when
    /// an object stays under the old name (after a conflict: the object there is someone else's).
    @discardableResult
    func renameFile(from src: String, to dst: String, replacing: UInt64? = nil) async throws(FSError) -> Bool {
        // The destination's own local versions (an overwritten file) are withdrawn once what can fail (fetches,
        // copies) has succeeded: a rename that fails leaves the destination as it was. Open, it lives on as an
        // orphan.
        func withdrawDestination() -> Withdrawal {
            // No file there (the lookup found none): nothing of this mount's is under the name in S3.
            guard let old = takeLocalFile(key: dst) else {
                return Withdrawal(keyRemoval: replacing != nil ? .anyObject : .nothing)
            }
            // Every save is a version (`FSOptions.keepEveryVersion`): the destination's saves still queued
            // (closed: nothing writes them any more) go up first, in order, and the renamed file after them;
            // write-temp-then-rename (torch.save + os.replace) is a save like any other.
            if options.keepEveryVersion, old.state.withLock({ $0.handles == 0 }), old.current.isFrozen {
                let kept = versions(of: old).filter { !$0.isSettled }
                // One already stopped by a conflict (final, not settled) was reported, and the rename replaces
                // it: withdrawn as usual.
                if !kept.contains(where: \.isFinal) {
                    // These saves keep their conditions: one that meets another client's object is dropped, not a
                    // conflict (`keptByRename`: it would hold the old name's delete for ever), and the renamed
                    // file's saves then expect no object (S-CONFLICT-RENAMED-OVER-KEPT). Sent with no condition
                    // (as they were when still queued at the rename), they replaced the other client's object,
                    // which the trainer never saw; only those already in flight met it.
                    for v in kept { v.state.withLock { $0.keptByRename = true } }
                    return Withdrawal()
                }
            }
            return orphan(old, ino: replacing)
        }
        // Nothing under the new name as far as the mount knows: no file the lookup found, no local file.
        let destinationUnknown = replacing == nil && localFiles.byKey.withLock { $0[dst] == nil }
        if let f = localFiles.byKey.withLock({ l in l[src].map { beginMove($0) } }) {
            defer { endMove(f) }
            // A file opened in place reads unchanged blocks from the source object, which is deleted later.
            try await fillForMove(f)
            // No version here holds the file's last acknowledged bytes (it is open with changes nobody
            // acknowledged yet, or none): they are the object under the old name, copied to the new one now,
            // or a crash before the file's next upload would leave it under neither name.
            // A copy goes in the key's order: no save of the replaced file lands over it (`inKeyOrder`). Without
            // one (write-temp-then-rename) the rename waits for nothing: the renamed file's versions are queued
            // under the key after the replaced file's saves.
            // A copy onto a name the mount knows nothing of expects no object there (S-CONFLICT-RENAMED-NEW-COPIED).
            let (copied, withdrawn) = holdsAcknowledged(f) ? (false, withdrawDestination())
                : try await copyAcknowledgedObject(of: f, from: src, to: dst, ifAbsent: destinationUnknown,
                                                   then: withdrawDestination)
            defer { removeFiles(withdrawn) }
            // Onto a name that held nothing the mount knew of (torch.save to a temporary name, then os.replace):
            // an object another client created there meanwhile is not replaced (S-CONFLICT-RENAMED-NEW); nor is
            // the object of the other client whose conflict stopped the file the rename replaces (its upload
            // then meets theirs as a conflict too, S-CONFLICT-RENAMED-OVER).
            let moved = retarget(f, from: src, to: dst, objectCopied: copied,
                                 destinationRemoval: withdrawn.removes,
                                 expectNoObject: !copied && withdrawn.removes != .anyObject)
            // A file created here and never sent leaves nothing under the old name (S-RENAME-FILE-LOCAL); one
            // whose conditional saves reached it, perhaps only its own object (S-CONFLICT-IN-FLIGHT).
            let (deletes, items) = moved.keepsSource || moved.sourceRemoval == .nothing
                ? ([], []) : deleteRecords([src], removes: { _ in moved.sourceRemoval })
            try await journal.record(withdrawn.records + moved.records + deletes)
            keptSavesLoseTheirName { $0.sameBytes(src) }
            for v in moved.requeue { enqueueUpload(v) }
            queueDeletes(items, hiding: [src])
            return moved.keepsSource
        }
        let dropped = await clearPendingDelete(of: dst)
        let intent = newJournalId()
        do throws(FSError) {
            try await journal.record([JournalRecord(op: .renaming, id: intent, key: src, target: dst, keys: [src])])
        } catch {
            if let dropped { await restoreDelete(of: [(dst, dropped)]) }
            throw error
        }
        // The destination's inodes stop naming it before the copy replaces its object: an open of one from here
        // on answers ESTALE (the kernel's new lookup waits for the rename, which holds the directory), so none
        // pins the version the copy replaces, or opens it in place, after `keepReaders` made that version's
        // readers whole (outside testing round 9: reads failed with ESTALE or EIO, and appends with EIO).
        // A copy that fails replaced nothing: those inodes name the destination again (a failed rename leaves
        // both names as they were).
        let replaced = notices.fileReplacedUndoably(key: dst) { localFiles.bumpSplits(dst) }
        // In the key's order: no save of the replaced file lands over the copy (`inKeyOrder`).
        let withdrawn: Withdrawal
        do throws(FSError) {
            withdrawn = try await inKeyOrder(dst) { () throws(FSError) -> Withdrawal in
                try await copyObjectOrMarker(from: src, to: dst, ifAbsent: destinationUnknown && dropped != .anyObject)
                return withdrawDestination()
            }
        } catch {
            notices.fileReplaceUndone(replaced)
            try? await journal.record(JournalRecord(op: .done, id: intent))
            if let dropped { await restoreDelete(of: [(dst, dropped)]) }
            throw error
        }
        defer { removeFiles(withdrawn) }
        try await deleteLater([src], hiding: [src], with: withdrawn.records + [JournalRecord(op: .done, id: intent)])
        return false
    }

    /// Marks `f` as being moved by a rename that found it under the local files' lock, until `endMove`:
    /// `cleanIfUploaded` leaves it meanwhile. Otherwise an upload of it landing between the rename finding it and
    /// `retarget` moving it removed it and its staged file, and `retarget` then put it back under the new name
    /// and queued that version again, with no staged file to upload (CI: flush waited for ever on "cannot open
    /// the staged file"). Returns `f`.
    func beginMove(_ f: LocalFile) -> LocalFile {
        f.state.withLock { $0.moving += 1 }
        return f
    }

    /// The rename that called `beginMove` is over (moved or failed): a file whose upload landed meanwhile and
    /// stayed where it was is cleaned now, as the landing would have done, and one never changed whose last
    /// handle closed meanwhile goes, as that close would have done (`settleIdle`).
    func endMove(_ f: LocalFile) {
        let idle = f.state.withLock { s -> Bool in
            s.moving -= 1
            return s.moving == 0 && s.handles == 0
        }
        if idle { settleIdle(f) }
    }

    /// Before `f` moves to a new key (`retarget`): the blocks its in-place versions have not fetched are
    /// fetched (their base object, under the old key, is deleted later), and the checksum of each acknowledged
    /// one is computed again over the bytes now here, as `retarget` journals it again with no block missing
    /// (the checksum of its acknowledgement counted the blocks missing then as zeros: recovery would find it
    /// wrong and quarantine the file). Errors: those of the fetches (EIO) and of reading the staged files.
    func fillForMove(_ f: LocalFile) async throws(FSError) {
        let vs = versionsWithFallback(of: f.key, newest: f.current)
        let cur = f.current
        for v in vs {
            if v.state.withLock({ v.wasLetGo($0, current: cur) }) { continue }  // it does not move (`retarget`)
            try await fillAll(v)
            let acknowledged = v.state.withLock { s -> Int64? in
                s.base != nil && s.missing.isEmpty && !s.unjournaled && s.committedSum != nil ? s.size : nil
            }
            guard let size = acknowledged else { continue }
            let file = try v.open()
            let sum = try StagingArea.checksum(fd: file.rawValue, size: size, blockSize: fillBlock)
            withExtendedLifetime(file) {}
            v.state.withLock { $0.committedSum = String(sum, radix: 16) }
        }
    }

    /// Renames every object (`keys`, listed by the caller) and local file under `src` (a prefix ending in "/")
    /// to `dst`. The objects are copied first (journaled, so a crash is finished by the next mount; a failure
    /// deletes the copies made and changes nothing), then the local files move and the old names are queued
    /// for deletion, in one journal record batch.
    func renameDirectory(_ keys: [String], from src: String, to dst: String) async throws(FSError) {
        let localFiles = localFiles.byKey.withLock { l in l.filter { $0.key.hasKeyPrefix(src) }.mapValues { beginMove($0) } }
        defer { for f in localFiles.values { endMove(f) } }
        for f in localFiles.values { try await fillForMove(f) }
        // Objects are copied, except those of local files holding their last acknowledged bytes (those move
        // with the file); a local file that holds none (open, nothing acknowledged) has them in its object,
        // unless that object is another file's (`objectIsAcknowledged`): then nothing of it is copied.
        let remaining = keys.filter { k in
            localFiles[k].map { !holdsAcknowledged($0) && $0.state.withLock { $0.objectIsAcknowledged } } ?? true
        }
        func target(_ k: String) -> String { dst + k.keySuffix(after: src) }
        // Deletes of the new names dropped here are queued again if the rename fails.
        var dropped: [(key: String, removes: Removal)] = []
        if changes.hasHidden {
            for k in remaining { if let r = await clearPendingDelete(of: target(k)) { dropped.append((target(k), r)) } }
        }
        if let r = await clearPendingDelete(of: dst) { dropped.append((dst, r)) }
        let intent = newJournalId()
        if !remaining.isEmpty {
            do throws(FSError) {
                try await journal.record(JournalRecord(op: .renaming, id: intent, key: src, target: dst, keys: remaining))
            } catch {
                await restoreDelete(of: dropped)
                throw error
            }
        }
        // Copy in parallel, a few at a time, directory markers first, a level at a time and before the objects
        // under them: a server that keeps directories (SeaweedFS) made a parent implicitly for a child written at
        // the same moment as its marker and lost the marker (1 run in 10). On a failure the copies made are
        // deleted: nothing moved.
        var copied: [String] = []
        var failure: FSError?
        let levels = Dictionary(grouping: remaining.filter(\.endsWithSlash)) { k in k.utf8.count(where: { $0 == UInt8(ascii: "/") }) }
        let batches = levels.keys.sorted().map { levels[$0]! } + [remaining.filter { !$0.endsWithSlash }]
        // The new directory is new or empty: each copy expects no object under its new name
        // (S-CONFLICT-DIR-RENAMED-NEW), but where it replaces a delete that removed whatever was there.
        let replacedDeletes = BytesSet(dropped.filter { $0.removes == .anyObject }.map(\.key))
        for level in batches where failure == nil {
            var i = 0
            while i < level.count && failure == nil {
                let batch = Array(level[i..<min(i + 8, level.count)])
                let results = await withTaskGroup(of: (String, FSError?).self) { g -> [(String, FSError?)] in
                    for k in batch {
                        g.addTask {
                            do throws(FSError) {
                                try await self.copyObjectOrMarker(from: k, to: target(k), ifAbsent: !replacedDeletes.contains(target(k)))
                                return (k, nil)
                            } catch { return (k, error) }
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
        }
        if let failure {
            for k in copied { try? await client.deleteObject(bucket, target(k), versionId: nil) }
            try? await journal.record(JournalRecord(op: .done, id: intent))
            await restoreDelete(of: dropped)
            throw FSError(failure.errno, "renaming \(src) to \(dst) failed and was undone: \(failure.message)")
        }
        var moves = Retarget()
        let copiedKeys = BytesSet(remaining)
        var sent: [String] = []  // local files whose old names may hold an object
        // What removing each local file's old name takes (`Retarget.sourceRemoval`): the listing may show an
        // object under it that the file's upload met there, another client's (outside testing round 13, F2).
        // A listed object no local file has: whatever is there.
        var removals: [String: Removal] = [:]
        for (k, f) in localFiles.sortedByKey() {
            // The destination directory is new or was empty: nothing is under the new name but a copy made now,
            // so a file's versions moved there expect no object (S-CONFLICT-DIR-RENAMED-NEW).
            let copied = copiedKeys.contains(k)
            let r = retarget(f, from: k, to: target(k), objectCopied: copied, destinationRemoval: .nothing, expectNoObject: !copied)
            moves.records += r.records
            moves.requeue += r.requeue
            removals[k] = r.sourceRemoval
            if r.sourceRemoval != .nothing { sent.append(k) }
        }
        if keys.isEmpty && localFiles.isEmpty {
            // An empty directory that exists only in this mount's memory.
            do { _ = try await client.putObject(bucket, dst, body: .empty, options: PutOptions()) } catch { throw FSError(error, during: .other) }
        }
        // The old names go (after the uploads before them), hidden until then, with every directory under them.
        let old = BytesSet.distinct(keys + sent)
        var hides: BytesSet = [src]
        for k in old { for p in k.keyPrefixes(after: src.utf8.count) { hides.insert(p) } }
        let (deletes, items) = deleteRecords(WriteBack.deleteOrder(old)) { k in removals[k] ?? .anyObject }
        try await journal.record(moves.records + deletes + [JournalRecord(op: .done, id: intent)])
        keptSavesLoseTheirName { $0.hasKeyPrefix(src) }
        for v in moves.requeue { enqueueUpload(v) }
        if items.isEmpty {
            try await deleteLater([src], hiding: [src])
        } else {
            queueDeletes(items, hiding: Array(hides))
        }
    }
}
