// Closing: the last release of a file queues its acknowledged version, drops an unacknowledged one, or makes
// the file clean again once its newest version is in S3.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    func releaseLocal(handle: UInt64) {
        guard let h = localHandles.withLock({ $0.removeValue(forKey: handle) }) else { return }
        releaseHandle(h.file, writer: h.writable)
    }

    /// Gives back one handle of `f`. When the last writer is gone, changes nobody acknowledged are acknowledged
    /// now (a program that closes without close() returning, e.g. writes through a mapping after close) — unless
    /// a write, truncate or close of them failed: then the program was told, and they are dropped (the last
    /// acknowledged version, or the object in S3, stays). When the last handle is gone, a file whose newest
    /// version is in S3 is clean again, and an orphan is gone.
    func releaseHandle(_ f: LocalFile, writer: Bool) {
        let (writers, handles, unlinked, key) = f.state.withLock { s -> (Int, Int, Bool, String) in
            s.handles = max(0, s.handles - 1)
            if writer { s.writers = max(0, s.writers - 1) }
            return (s.writers, s.handles, s.unlinked, s.key)
        }
        if f.state.withLock({ $0.detached }) {
            // Its version was dropped while it was read: the last reader takes the staged file with it.
            if handles == 0 { staging.remove(f.current) }
            return
        }
        if unlinked {
            if handles == 0 {
                // The last close of an unlinked file: its bytes go with it (only its own: a file created under
                // its old name meanwhile has versions of the same key).
                let v = f.current
                staging.remove(v)
                if let fallback = v.state.withLock({ $0.fallback }) { staging.remove(fallback) }
                localFiles.orphans.withLock { o in o = o.filter { $0.value !== f } }
            }
            return
        }
        if writer && writers == 0 {
            if needsFill(f.current) {
                // Changed in place and not acknowledged by a close() (written through a mapping after it): the
                // blocks it did not rewrite come from S3 first, then the last writer's release goes on.
                let v = f.current
                Task {
                    do throws(FSError) { try await self.fillForAcknowledgement(v) } catch {
                        logger.error("could not fetch the rest of a file changed in place at its last close; its changes are dropped",
                                     metadata: ["key": "\(key)", "error": "\(error)"])
                    }
                    if f.state.withLock({ $0.writers == 0 && !$0.unlinked }) { self.lastWriterGone(f) }
                    if f.state.withLock({ $0.handles == 0 }) { self.cleanIfUploaded(f) }
                }
                return
            }
            lastWriterGone(f)
        }
        if handles == 0 { settleIdle(f) }
    }

    /// After the last handle of `f` closed (or the rename moving it ended with none open): a version opened for
    /// writing and never changed, which stayed the file's for the descriptors still open on it
    /// (`discardUnacknowledged` with `keepWhileOpen`), goes now, with nothing to upload (the object is the
    /// file); else, if its newest version is in S3, the file is clean again (`cleanIfUploaded`).
    func settleIdle(_ f: LocalFile) {
        let v = f.current
        let unchanged = f.state.withLock { !$0.unlinked && !$0.detached && $0.writers == 0 }
            && v.state.withLock { !$0.sealed && !$0.unjournaled && $0.committedSum == nil && $0.failedErrno == 0 }
        if unchanged {
            discardUnacknowledged(f, v, quietly: true, keepWhileOpen: true)
        } else {
            cleanIfUploaded(f)
        }
    }

    /// The last writer of `f` is gone: its current version is acknowledged and queued (or dropped if a write,
    /// truncate or close of it failed, or if it was never changed), and it holds no descriptor any more.
    private func lastWriterGone(_ f: LocalFile) {
        let v = f.current
        let (sealed, changed, versionFailed, acked) = v.state.withLock { ($0.sealed, $0.unjournaled, $0.failedErrno != 0, $0.committedSum != nil) }
        let failedWrite = f.state.withLock { s -> Int32 in
            defer { s.failedWrite = 0 }
            return s.failedWrite
        }
        let writeFailed = failedWrite != 0
        if !sealed && !acked && (versionFailed || writeFailed) {
            guard discardUnacknowledged(f, v) else {
                // A writer joined meanwhile: its close() must still fail.
                f.state.withLock { s in if s.failedWrite == 0 { s.failedWrite = failedWrite } }
                return
            }
        } else if !sealed && (changed || acked) {
            do { try commit(v, of: f) } catch {
                logger.error("could not acknowledge a file at its last close; its changes are dropped",
                             metadata: ["key": "\(f.key)", "error": "\(error)"])
                discardUnacknowledged(f, v)
            }
        } else if !sealed {
            // Opened for writing and not changed: nothing to upload. The descriptors still open on it keep it
            // as the file's local version until their last close (`settleIdle`).
            guard discardUnacknowledged(f, v, quietly: true, keepWhileOpen: true) else { return }
        }
        // Nobody writes this version any more (a later write goes to a copy): an idle dirty file holds no descriptor.
        if f.current.state.withLock({ $0.sealed }) { f.current.closeWriters() }
    }

    /// The version of `f` that stands when its unacknowledged version `v` goes: the acknowledged version `v`
    /// was copied from (its fallback), else the newest one still queued or uploading, else none (not a save a
    /// rename left under the key, `keptByRename`: another file's, or history; `versions(of:newest:)`).
    func previousVersion(of f: LocalFile, before v: StagedVersion) -> StagedVersion? {
        v.state.withLock { $0.fallback } ?? versions(of: f.key, newest: v).filter { $0 !== v }.max { $0.id < $1.id }
    }

    /// Drops `v`, the unacknowledged current version of `f`: the previous local version (still queued or
    /// uploading) becomes current again, or, if there is none, the file has no local changes any more.
    /// Returns false, changing nothing, when a writer opened the file since the last one left (its release
    /// came after the open: the kernel sends releases asynchronously): `v` stays its version, and that writer's
    /// last close decides. Readers still open on a file that goes read `v` until their last close.
    ///
    /// `keepWhileOpen` (`v` was never changed: the file is the object it was opened from): while descriptors are
    /// open on `f`, or a rename moves it, `f` stays the key's local file with `v` and this returns false; the
    /// last close (or the rename's end) drops it (`settleIdle`). Those descriptors are the inode's: a reader
    /// opened while a writer had the file open (or moved onto it, `FileSystem.joinReaders`) reads what later
    /// opens of the file do to it, a write in place, an O_TRUNC or a truncate, also after a rename over it
    /// orphans it, as POSIX says. Before, `v` went at the last writer's close with the readers on it (as a
    /// failed save's does): they read those bytes for good, never the file's later bytes (model seeds 24068,
    /// 34639: a read after an O_TRUNC returned the old bytes, and one through an orphan missed what its other
    /// descriptor wrote).
    @discardableResult
    func discardUnacknowledged(_ f: LocalFile, _ v: StagedVersion, quietly: Bool = false, keepWhileOpen: Bool = false) -> Bool {
        let previous = previousVersion(of: f, before: v)
        // Decided under the locks an open joins the file under (`joinLocalFile`), and a rename finds it under.
        enum Outcome { case writerJoined, notCurrent, reverted, gone(readers: Bool), kept }
        let outcome = localFiles.byKey.withLock { l -> Outcome in
            f.state.withLock { s -> Outcome in
                guard s.current === v else { return .notCurrent }
                if s.writers > 0 { return .writerJoined }
                if let previous {
                    s.current = previous
                    return .reverted
                }
                // Never changed: it stays while descriptors are open on it or a rename moves it (`settleIdle`
                // drops it then). Not the key's file any more, it was dropped already (by the close of its last
                // writer or of its last reader: each may find the other gone) or taken off the key (an unlink, a
                // rename over it: the orphan's last close removes it).
                if keepWhileOpen && (s.handles > 0 || s.moving > 0 || l[s.key] !== f) { return .kept }
                if l[s.key] === f { l.removeValue(forKey: s.key) }
                // Its readers keep reading `v`, which the last of them removes (`releaseHandle`).
                if s.handles > 0 { s.detached = true }
                return .gone(readers: s.handles > 0)
            }
        }
        switch outcome {
        case .writerJoined, .kept: return false
        default: break
        }
        var readersKeepIt = false
        if case .gone(readers: true) = outcome { readersKeepIt = true }
        dropped(v, of: f, quietly: quietly, keepStaged: readersKeepIt)
        if case .gone = outcome { notices.localVersionGone(key: f.key) }
        // The kernel took the writes of `v` (with its write-back cache, before the daemon saw them) and keeps
        // the size they gave for its inode's life: a later save through that inode wrote back a whole page
        // past the end, zeros no program wrote. The path gets a new inode.
        if !quietly && !f.unlinked { notices.shownVersionDropped(key: f.key) }
        // The acknowledged version it was copied from stands again, and goes up once nobody writes.
        if let fallback = previous, fallback.state.withLock({ !$0.sealed }), f.state.withLock({ $0.writers == 0 }) {
            queueStanding(fallback, of: f)
        }
        return true
    }

    /// The save of `f` in `v`, its current version, failed (errno `e`), with its writers still open
    /// (`saveFailed`). If `v` is not acknowledged, `f`, with `v`, is split off its key, which gets a new local
    /// file with `previous` (`previousVersion`), or none; true then (`dropSplit` goes on, outside the caller's
    /// locks). New opens join that one; `f`'s handles go on reading `v` (the last of them removes it), and its
    /// writes, close() and fsync() fail. Acknowledged (a close() of another writer came first), `v` stays the
    /// file's. While a rename moves `f` (it holds `f` by its key), `v` is failed and dropped at the last
    /// writer's close instead. Takes the write-back's locks only (the namespace calls it under its own).
    func splitOff(_ f: LocalFile, _ v: StagedVersion, previous: StagedVersion?, errno e: Int32) -> Bool {
        // Exclusive: no acknowledgement of `v` is under way (`journalCommit`), and none starts before `v` is failed.
        v.gate.exclusive { () -> Bool in
            localFiles.byKey.withLock { l -> Bool in
                f.state.withLock { s -> Bool in
                    guard !s.detached, s.current === v, v.state.withLock({ !$0.sealed && $0.committedSum == nil }) else { return false }
                    // A writer that joins `f` before its handles are marked failed finds `v` failed.
                    v.fail(e)
                    guard s.moving == 0, l[s.key] === f else {
                        if s.failedWrite == 0 { s.failedWrite = e }
                        return false
                    }
                    s.detached = true
                    localFiles.bumpSplits(s.key)
                    // One that landed meanwhile had its staged file removed (it was nobody's current version): the
                    // object is the file then.
                    if let previous, !previous.isSettled {
                        let g = LocalFile(key: s.key, current: previous)
                        g.state.withLock { g in
                            g.objectIsAcknowledged = s.objectIsAcknowledged
                            g.keyRemoval = s.keyRemoval
                        }
                        l[s.key] = g
                    } else {
                        l.removeValue(forKey: s.key)
                    }
                    return true
                }
            }
        }
    }

    /// After `splitOff` split `f` off: `v` is dropped, and `previous`, if it is the acknowledged version `v` was
    /// copied from, goes up now (no writer of it is left); one that lands from now on makes the file clean
    /// (`finishUpload` finds it current).
    func dropSplit(_ f: LocalFile, _ v: StagedVersion, previous: StagedVersion?) {
        dropped(v, of: f, quietly: false, keepStaged: true)
        guard let previous, let standing = localFiles.byKey.withLock({ $0[f.key] }), standing.current === previous else { return }
        if previous.state.withLock({ !$0.sealed }) { queueStanding(previous, of: standing) }
    }

    /// `v`, an unacknowledged version of `f`, is dropped: never uploaded, its staged file removed (kept with
    /// `keepStaged`: handles still read it, and the last of them removes it).
    private func dropped(_ v: StagedVersion, of f: LocalFile, quietly: Bool, keepStaged: Bool) {
        if !quietly {
            logger.error("a file whose write or close failed is not uploaded; S3 keeps its last acknowledged version",
                         metadata: ["key": "\(f.key)"])
        }
        abandonEarlyUpload(v, because: "its changes were not acknowledged")
        v.settle(.dropped)
        v.state.withLock { $0.fallback = nil }
        if !keepStaged { staging.remove(v) }
    }

    /// Queues `v`, an acknowledged version of `f` that stands again (a copy of it was dropped).
    private func queueStanding(_ v: StagedVersion, of f: LocalFile) {
        do { try commit(v, of: f) } catch {
            logger.error("could not queue a file's acknowledged version", metadata: ["key": "\(f.key)", "error": "\(error)"])
        }
    }

    /// After the last handle of `f` closed: if its newest version is in S3, the file is clean again (its staged
    /// copy goes) and stat shows the object. Not while a rename moves it (`beginMove`): `endMove` calls this.
    func cleanIfUploaded(_ f: LocalFile) {
        // What landed is told to the namespace before the local version goes: a lookup in between would find
        // neither, HEAD the new object, compare its ETag with the one the inode had before the save, and give
        // the path a new inode number.
        let landed: (key: String, meta: Meta)? = localFiles.byKey.withLock { l in
            f.state.withLock { s in
                guard s.handles == 0, s.moving == 0, !s.unlinked, l[s.key] === f, case .done(let etag) = s.current.state.withLock({ $0.upload }) else {
                    return nil
                }
                let (size, mtime) = s.current.state.withLock { ($0.size, $0.mtime) }
                return (s.key, Meta(isDirectory: false, size: size, etag: etag, mtime: mtime))
            }
        }
        guard let landed else { return }
        notices.objectLanded(key: landed.key, meta: landed.meta)
        let removed: (StagedVersion, String)? = localFiles.byKey.withLock { l in
            f.state.withLock { s in
                guard s.handles == 0, s.moving == 0, !s.unlinked, l[s.key] === f, case .done(let etag) = s.current.state.withLock({ $0.upload }) else {
                    return nil
                }
                // Told before the local version goes, so a listing in flight cannot miss the file.
                let (size, mtime) = s.current.state.withLock { ($0.size, $0.mtime) }
                notices.changedInS3(key: s.key, .present(Meta(isDirectory: false, size: size, etag: etag, mtime: mtime)))
                l.removeValue(forKey: s.key)
                return (s.current, etag)
            }
        }
        guard let (v, _) = removed else { return }
        staging.remove(v)
    }

    /// Every version of `f` still held: those queued or uploading under its key, and its current one.
    func versions(of f: LocalFile) -> [StagedVersion] {
        versions(of: f.key, newest: f.current)
    }

    /// Reads from a handle's local version (fetching blocks of an in-place file that are not here yet).
    func readLocal(_ h: LocalHandle, offset: Int64, size: Int) async throws(FSError) -> [ReadSegment] {
        let v = h.file.current
        let total = v.size
        guard offset < total, size > 0 else { return [] }
        let n = Int(min(Int64(size), total - offset))
        try await fill(v, blocks: missingBlocks(v, offset: offset, count: n, partialOnly: false))
        return [.file(try v.open(), offset: offset, length: n)]
    }

    /// `f` lost its name (unlink, or replaced by a rename): its versions are never uploaded. Open handles keep
    /// it readable and writable (stat by inode `ino` too) until the last one closes. Returns the journal
    /// records that withdraw its acknowledged versions (and the staged files to remove once journaled).
    func orphan(_ f: LocalFile, ino: UInt64?, heldFor delete: UInt64? = nil) -> Withdrawal {
        let handles = f.state.withLock { s -> Int in
            s.unlinked = true
            return s.handles
        }
        // Its handles read and write the current version from now on, and its staged file goes at their last
        // close: an upload of it still in flight must not remove it when it ends (before the drop settles it).
        if handles > 0 { f.current.state.withLock { $0.orphaned = true } }
        var withdrawal = dropVersions(of: f, heldFor: delete)
        // The acknowledged version a later write copied (not queued while a writer stays open) is withdrawn too:
        // journaled, it would come back after a crash.
        let fallback = f.current.state.withLock { s -> StagedVersion? in
            defer { s.fallback = nil }
            return s.fallback
        }
        if let fallback {
            abandonEarlyUpload(fallback, because: "unlinked")
            if fallback.state.withLock({ $0.committedSum != nil }) { withdrawal.records.append(JournalRecord(op: .drop, id: fallback.id)) }
            fallback.settle(.dropped)
            // What it may have left is removed too (read once settled: no upload of it starts from now on).
            withdrawal.keyRemoval = withdrawal.keyRemoval.then(uploadsExpecting: sentConditions(of: [fallback]))
            withdrawal.versions.append(fallback)  // nothing reads it: the handles read the current version
        }
        if handles > 0 {
            if let ino { localFiles.orphans.withLock { $0[ino] = f } }
            f.current.state.withLock { s in
                s.orphaned = true  // nothing of it goes to S3, not even parts while it is written
                // Not sealed (no upload can be sending it): its handles write it in place from now on, its
                // acknowledgement withdrawn. Sealed, its upload may be in flight and send these very bytes: it
                // stays frozen, and the orphan's first write goes to a copy (`writableVersion`).
                if !s.sealed { s.committedSum = nil }
            }
        }
        return withdrawal
    }
}
