// Moving a local file to a new key (rename): its handles follow it, and every version not settled goes to the new
// key, journaled again under it.
import CkptS3
import Foundation

extension WriteBack {
    /// What moving a local file's versions to a new key needs: journal records, versions to queue again.
    struct Retarget {
        var records: [JournalRecord] = []
        var requeue: [StagedVersion] = []
        /// A version was stopped by a conflict under the old name: the object there is someone else's and stays.
        var keepsSource = false
        /// What the old name's delete removes (`WriteBack.removal`): `nothing` for a file created here and never
        /// sent (write-temp-then-rename), whose old name needs no DeleteObject; only this mount's own object when
        /// its saves that reached the old name each carried a condition (S-CONFLICT-IN-FLIGHT).
        var sourceRemoval: Removal = .anyObject
    }

    /// Moves local file `f` from `src` to `dst`: handles follow it, and every version not settled goes to the
    /// new key. A version waiting, uploading or uploaded (still held: the file is open) is queued again under the
    /// new key, now, in its order among the key's versions; the job of one uploading finds it moved when it lands,
    /// and the new job waits for it. The destination is replaced whatever it holds (POSIX rename): uploads to it
    /// carry no condition, but when `expectNoObject`: the rename replaced nothing the mount knew of (no file under
    /// `dst`, nothing copied there), so the first moved version expects no object (`If-None-Match: *`) and each
    /// later one what the one before it leaves; another client's object created under `dst` meanwhile stays and
    /// the file is kept as a conflict (S-CONFLICT-RENAMED-NEW). The caller journals the records before queueing.
    /// `objectCopied`: the caller copied the object under `src` (the file's last acknowledged bytes) to `dst`.
    /// `destinationRemoval`: what removing `dst` takes of what it holds (the file the rename replaces, or one its
    /// lookup did not see): `nothing` when the lookup found no file there, so a later unlink of a file never
    /// sent sends no DeleteObject (`LocalFile.State.keyRemoval`).
    func retarget(_ f: LocalFile, from src: String, to dst: String, objectCopied: Bool,
                  destinationRemoval: Removal, expectNoObject: Bool = false) -> Retarget {
        var out = Retarget()
        // The acknowledged version a later write copied moves too: it stands for the file until the copy is
        // acknowledged, and is uploaded if the copy is dropped.
        var vs = versionsWithFallback(of: src, newest: f.current)
        // The file, and its versions' keys and states, move under the local files' lock: an upload that lands
        // meanwhile (`finishUpload`) sees either the version before the move or after it, never between (it
        // would take a version queued again under the new name for a finished one and remove its staged file).
        var moved: [(StagedVersion, Bool, String?)] = []
        // What each upload under the old name expects, read before the move changes it.
        let oldConditions = vs.map { condition(for: $0) }
        var fileRemoval = Removal.anyObject
        var stayed: [StagedVersion] = []
        var previousMoved: StagedVersion?
        vs.sort { $0.id < $1.id }  // journaled again in the order they were made: the newest last
        // Under the namespace's lock too: inodes of the file the destination was (the kernel looked them up
        // before) stop naming it at the moment `f` takes its place (outside testing round 7: an O_APPEND open of the
        // replaced file joined the renamed one and wrote at the old file's size).
        notices.fileReplaced(key: dst) { localFiles.byKey.withLock { l in
            if l[src] === f { l.removeValue(forKey: src) }
            l[dst] = f
            localFiles.bumpSplits(dst)
            let cur = f.state.withLock { s in
                fileRemoval = s.removal  // read before the move changes it
                s.key = dst
                s.objectIsAcknowledged = objectCopied
                // Whatever the new name held (another file's object, replaced) is this file's to delete now.
                s.keyRemoval = destinationRemoval
                return s.current
            }
            // The newest save (acknowledged version) goes to the new name, with what was written after it. The
            // saves before it stay under the old name, where they were made: one uploading lands there, one
            // waiting (every save kept, `FSOptions.keepEveryVersion`) is uploaded there, and the old name's
            // delete comes after them. Sent again under the new name (as before), they showed it holding bytes
            // it never held: a save of the old name, replaced by the newest (outside testing round 8).
            // Of a file stopped by a conflict all go (the object under the old name is someone else's: renaming
            // the file is how its saves get uploaded, README).
            let fallback = cur.state.withLock { $0.fallback }
            let conflicted = vs.contains { v in v.state.withLock { s in if case .conflict = s.upload { true } else { false } } }
            let newestSave = conflicted ? nil : vs.lastIndex { v in v.state.withLock { s in s.committedSum != nil && !v.wasLetGo(s, current: cur) } }
            for (i, v) in vs.enumerated() {
                let moves = v.state.withLock { s -> (requeue: Bool, sum: String?)? in
                    if v.wasLetGo(s, current: cur) { return nil }
                    if let newestSave, i < newestSave, v !== cur, v !== fallback {
                        switch s.upload {
                        case .waiting where s.sealed || s.committedSum != nil, .uploading:
                            // History of the old name only: one that meets another client's object there is
                            // dropped, not a conflict (that would hold the old name's delete for ever).
                            s.keptByRename = true
                            stayed.append(v)
                            return nil
                        default: break
                        }
                    }
                    s.key = dst
                    if !expectNoObject {
                        s.expect = .anything
                    } else if let previousMoved {
                        s.expect = .after(previousMoved)
                    } else {
                        s.expect = .absent
                    }
                    var requeue = false
                    switch s.upload {
                    case .waiting: requeue = s.sealed
                    case .uploading:
                        // Its job finds it moved when it lands (or fails), and leaves it waiting; the job queued
                        // now waits for that one, then uploads it under the new name, ahead of any newer version.
                        requeue = true
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
                    // No job may start an upload of it until the one queued under the new name (the old job's
                    // check finds it not current).
                    if requeue { s.job = 0 }
                    return (requeue, !s.unjournaled ? s.committedSum : nil)
                }
                if let (requeue, sum) = moves {
                    moved.append((v, requeue, sum))
                    previousMoved = v
                }
            }
        } }
        // Read after the move: no upload of these versions starts under the old name any more (their jobs'
        // checks find them moved, and `enqueueUpload` reads the key under the queue's lock).
        // Those that reached the old name, and those that stay there (they are still to be sent).
        var sent = zip(vs, oldConditions).filter { v, _ in v.state.withLock { $0.reachedKey } }.map(\.1)
        let staying = stayed + changes.state.withLock { u in u.pending.values.filter { $0.key.sameBytes(src) } }
        sent += staying.map { condition(for: $0) }
        if conditionsUnsupported.load(ordering: .relaxed) { sent = sent.map { _ in nil } }
        out.sourceRemoval = fileRemoval.then(uploadsExpecting: sent)
        for (v, requeue, sum) in moved {
            abandonEarlyUpload(v, because: "renamed")  // its parts went to the old name
            if requeue { out.requeue.append(v) }
            if let sum { out.records.append(commitRecord(v, checksum: sum)) }
        }
        return out
    }

    /// Whether a version of `f` held here carries the file's last acknowledged bytes (journaled, moved by
    /// `retarget`): one queued or uploaded and not settled, or the acknowledged version a later write copied.
    /// When none does, those bytes are the object under `f`'s key in S3 (or there are none).
    func holdsAcknowledged(_ f: LocalFile) -> Bool {
        if f.current.state.withLock({ $0.fallback != nil }) { return true }
        let cur = f.current
        return versions(of: f).contains { v in
            v.state.withLock { s in
                switch s.upload {
                case .superseded, .dropped: return false
                default: return s.committedSum != nil && !v.wasLetGo(s, current: cur)
                }
            }
        }
    }

    /// Copies the object under `src` (the last acknowledged bytes of `f`, which holds none of its own) to
    /// `dst` server-side, before a rename moves `f`: the new name has them at once, the old one is deleted
    /// later. Returns whether it copied. Nothing to copy when the object under `src` is not the file's
    /// (`LocalFile.State.objectIsAcknowledged`: a file created here, or renamed over another file's object,
    /// whose bytes a copy would pass off as this file's) or when no object is there (NoSuchKey). Errors: those
    /// of the HEAD or copy (FSError: EIO, EACCES); the rename then fails.
    /// The copy goes as a link of `dst`'s chain of changes (`inKeyOrder`), together with `then` (the withdrawal
    /// of the file the rename replaces), so no save of that file lands over the copy. `ifAbsent`: the mount
    /// knows of nothing under `dst`; the copy then expects no object there, unless it replaces a delete of
    /// `dst` that removed whatever was there (`copyObject`; EEXIST when another client created it).
    func copyAcknowledgedObject<T>(of f: LocalFile, from src: String, to dst: String, ifAbsent: Bool,
                                   then: () -> T) async throws(FSError) -> (copied: Bool, T) {
        guard f.state.withLock({ $0.objectIsAcknowledged }) else { return (false, then()) }
        let dropped = await clearPendingDelete(of: dst)
        do throws(FSError) {
            return (true, try await inKeyOrder(dst) { () throws(FSError) -> T in
                try await copyIfPresent(from: src, to: dst, ifAbsent: ifAbsent && dropped != .anyObject)
                return then()
            })
        } catch {
            if let dropped { await restoreDelete(of: [(dst, dropped)]) }
            throw error
        }
    }
}
