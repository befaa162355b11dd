// Acknowledging: close() and fsync() make a version durable on local disk and journal it; the last release
// queues it for upload.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    // MARK: Acknowledging

    /// Every 64 MiB written, an fdatasync in the background: the kernel would otherwise keep gigabytes dirty
    /// until close() and then write them all while the writer waits. The fsync at close finds little left.
    func syncInBackground(_ v: StagedVersion) {
        let start = v.state.withLock { s -> Bool in
            guard !s.syncing, s.size - s.syncedTo >= 64 << 20 else { return false }
            s.syncing = true
            return true
        }
        guard start else { return }
        v.backgroundSync.wait()  // free: no other background sync runs (`syncing` was false)
        DispatchQueue.global(qos: .utility).async {
            let target = v.size
            let e = fdatasync(v.fd) == 0 ? 0 : errno
            v.state.withLock { s in
                s.syncedTo = max(s.syncedTo, target)
                s.syncing = false
                if e != 0 && e != EINTR && s.syncError == 0 { s.syncError = e }
            }
            v.backgroundSync.signal()
        }
    }

    /// Acknowledges `v`, the current version of `f` (close): its bytes and a journal record describing them
    /// are made durable on local disk, and its bytes never change again (a later write goes to a copy). From
    /// then on they reach S3, across a crash. An orphan (unlinked while open) is never journaled or uploaded.
    func acknowledge(_ v: StagedVersion, of f: LocalFile) throws(FSError) {
        if f.unlinked { return }
        // Split off its key (`splitOff`): a writer that joined it just before its save failed, even one that
        // emptied it since, is in that failed save.
        if f.state.withLock({ $0.detached }) {
            throw FSError(EIO, "\(f.key): a save of this file failed while this descriptor was opened; it is not kept")
        }
        let (changed, sealed, failed) = v.state.withLock { ($0.unjournaled, $0.sealed, $0.failedErrno) }
        if sealed { return }
        // A write that failed leaves the file short of what the program wrote: close() says so and nothing of
        // it is acknowledged (the last acknowledged version, or the object in S3, stays).
        if failed != 0 {
            throw StagedVersion.failedSave(failed)
        }
        if !changed { return }
        do throws(FSError) { try journalCommit(v) } catch {
            v.fail(error.errno)
            throw error
        }
    }

    /// Acknowledges `v` (if it is not yet) and queues it for upload (fsync, or the last writer's close). Uploads
    /// carry only versions acknowledged this way. Returns false when there is nothing to upload: an orphan, or
    /// a version made from the object and never changed (the object is already this file; nothing is journaled
    /// or queued, and writes keep going to `v`).
    @discardableResult
    func commit(_ v: StagedVersion, of f: LocalFile) throws(FSError) -> Bool {
        if f.unlinked { return false }
        try acknowledge(v, of: f)
        guard v.state.withLock({ $0.committedSum != nil }) else { return false }
        if seal(v, of: f) { enqueueUpload(v) }
        return true
    }

    /// Seals `v`, a version of `f`: its bytes never change again. Under `f`'s lock, where `writableVersion`
    /// decides whether a copy replaces the version it copies. True for the call that sealed it (which queues it).
    func seal(_ v: StagedVersion, of f: LocalFile) -> Bool {
        f.state.withLock { _ in v.state.withLock { StagedVersion.seal(&$0) } }
    }

    /// Seals and queues what close() acknowledged of `f` that nothing has queued yet, so that a flush (or the
    /// unmount's drain) after close() always covers it. Two ways it can be unqueued: the kernel sends the last
    /// writer's RELEASE, which queues the version, after close() has returned (asynchronously), so a flush can
    /// come first; and a close() of a duplicate descriptor acknowledges the file while the writer goes on, in a
    /// copy whose `fallback` is the acknowledged version (that version is then queued on its own, and the copy
    /// follows it in the key's order once it is acknowledged in turn). Bytes nobody acknowledged stay local.
    func queueAcknowledged(_ f: LocalFile) {
        enum Step { case retry, nothing, queue(StagedVersion) }
        while true {
            let cur = f.current
            // Exclusive: no write lands in `cur` and no acknowledgement of it withdraws its fallback meanwhile.
            let step = cur.gate.exclusive { () -> Step in
                f.state.withLock { s -> Step in
                    if s.unlinked { return .nothing }  // an orphan is never uploaded
                    guard s.current === cur else { return .retry }  // a write copied it meanwhile
                    return cur.state.withLock { c -> Step in
                        if c.sealed { return .nothing }
                        if c.committedSum != nil && !c.unjournaled {
                            return StagedVersion.seal(&c) ? .queue(cur) : .nothing
                        }
                        guard let fallback = c.fallback else { return .nothing }
                        c.fallback = nil
                        return fallback.state.withLock { StagedVersion.seal(&$0) } ? .queue(fallback) : .nothing
                    }
                }
            }
            switch step {
            case .retry: continue
            case .nothing: return
            case .queue(let v):
                enqueueUpload(v)
                return
            }
        }
    }

    /// fsyncs `v`'s staged file and appends its commit record (size, checksum, condition) to the journal. No
    /// write lands in `v` meanwhile (it holds `v.gate` exclusive); once it returns `v` is frozen, and writes that
    /// waited go to a copy.
    /// Two closes of one file can both find it changed and wait here: the first acknowledges the bytes, the
    /// second finds them acknowledged and journals nothing. Checked again under the gate: by then a write may
    /// have gone to a copy and that copy's acknowledgement superseded and removed this version, and a second
    /// commit record of it, after its drop, would have made recovery after a crash take it (its staged file
    /// gone: quarantined) instead of the newer version that superseded it.
    func journalCommit(_ v: StagedVersion) throws(FSError) {
        try v.gate.exclusive { () throws(FSError) in
            let (pending, failed) = v.state.withLock { ($0.unjournaled && !$0.sealed, $0.failedErrno) }
            guard pending else { return }
            // Failed meanwhile: a save that failed while this close() waited (`splitOff`) is not acknowledged.
            if failed != 0 { throw StagedVersion.failedSave(failed) }
            try journalCommitAlone(v)
        }
    }

    private func journalCommitAlone(_ v: StagedVersion) throws(FSError) {
        let synced = Glibc.fsync(v.fd) == 0 ? 0 : errno
        // A background fdatasync still running: wait for it, so its error (if any) is recorded.
        v.backgroundSync.wait()
        v.backgroundSync.signal()
        let e = synced != 0 ? synced : v.state.withLock { $0.syncError }
        guard e == 0 else {
            throw FSError(e == ENOSPC ? ENOSPC : EIO, "fsync of the staged file failed: \(String(cString: strerror(e)))")
        }
        let (size, running, missing) = v.state.withLock { s in
            s.sum?.dropSpare()
            return (s.size, s.sum?.value(size: s.size), s.missing)
        }
        // Acknowledged, a version opened in place holds every block itself (`fillForAcknowledgement`).
        guard missing.isEmpty else {
            throw FSError(EIO, "\(v.key) still has \(missing.count) blocks only in S3; it was not acknowledged")
        }
        let sum: UInt64
        if let running {
            sum = running
        } else {
            sum = try StagingArea.checksum(fd: v.fd, size: size, missing: missing, blockSize: fillBlock)
        }
        let hex = String(sum, radix: 16)
        // The acknowledged version this one was copied from is replaced by it, and what that one expected to
        // find in S3 is what this one expects (as for a queued version another supersedes, `enqueueUpload`):
        // otherwise each acknowledgement of a file kept open expected the one before, a chain that kept every
        // superseded version in memory and that each commit record's condition walked.
        let fallback = v.state.withLock { $0.fallback }
        if let fallback {
            let (inherited, reached) = fallback.state.withLock { ($0.expect, $0.reachedKey) }
            v.state.withLock { s in
                if case .after(let p) = s.expect, p === fallback { s.expect = inherited }
                if reached { s.reachedKey = true }
            }
        }
        try journal.append([commitRecord(v, checksum: hex)] + (fallback.map { [JournalRecord(op: .drop, id: $0.id)] } ?? []))
        v.state.withLock { s in
            s.unjournaled = false
            s.committedSum = hex
            s.fallback = nil
        }
        if let fallback {
            abandonEarlyUpload(fallback, because: "a later version was acknowledged")
            fallback.settle(.superseded)
            staging.remove(fallback)
        }
    }

    /// The journal record that acknowledges `v` as it is now.
    func commitRecord(_ v: StagedVersion, checksum: String) -> JournalRecord {
        var condition = condition(for: v)
        // A delete of the key that has not started is replaced by this version's upload, which then expects
        // nothing (`enqueueUpload`: the object the delete would have removed is still there), and the delete
        // is journaled as done: recovery must not send the upload with If-None-Match, or it meets that object
        // and is kept as a conflict (an unlink, a create of the name again and a crash before the upload).
        // (One that removes only this mount's own object leaves the condition: that object is one of ours.)
        if case .ifNoneMatch = condition, changes.state.withLock({ $0.removingDeleteWaits(v.key) }) == .anyObject { condition = nil }
        return v.state.withLock { s in
            var r = JournalRecord(op: .commit, id: v.id, key: s.key, size: s.size, xxh64: checksum,
                                  mtime: s.mtime.timeIntervalSince1970)
            s.commits += 1
            r.generation = s.commits
            if let base = s.base, !s.missing.isEmpty {
                r.baseKey = base.key
                r.baseETag = base.etag
                r.baseSize = base.size
                r.baseLimit = s.baseLimit
                var ranges: [[Int64]] = []
                for b in s.missing.sorted() {
                    if let last = ranges.last, last[1] == b { ranges[ranges.count - 1][1] = b + 1 } else { ranges.append([b, b + 1]) }
                }
                r.missing = ranges
            }
            switch condition {
            case .ifMatch(let e): r.ifMatch = e
            case .ifNoneMatch: r.ifNoneMatch = true
            case nil: break
            }
            return r
        }
    }

    /// close(), answered on the calling thread: true once the data is on local disk and journaled; false (nothing
    /// done) when blocks of a file changed in place must come from S3 first: then `flush` does it. The version is
    /// queued for upload when the last descriptor of the open file is closed (release): a close() of a
    /// duplicate (a child process exiting) acknowledges what was written so far but queues nothing while the
    /// writer goes on.
    func flushNow(handle: UInt64) throws(FSError) -> Bool {
        guard let h = localHandles.withLock({ $0[handle] }), h.writable else { return true }
        try checkSaveNotFailed(h)
        if needsFill(h.file.current) { return false }
        do throws(FSError) { try acknowledge(h.file.current, of: h.file) } catch {
            saveFailed(h.file, error, through: h)
            throw error
        }
        return true
    }

    /// close(): fetches the blocks a file changed in place still lacks (`fillForAcknowledgement`), then
    /// acknowledges it (`flushNow`).
    func flush(handle: UInt64) async throws(FSError) {
        guard let h = localHandles.withLock({ $0[handle] }), h.writable else { return }
        try checkSaveNotFailed(h)
        do throws(FSError) {
            try await fillForAcknowledgement(h.file.current)
            try await offPool { () throws(FSError) in try self.acknowledge(h.file.current, of: h.file) }
        } catch {
            saveFailed(h.file, error, through: h)
            throw error
        }
    }

    /// fsync(): with durable fsync, returns once the file is in S3; with local fsync, once it is on local disk.
    func fsync(handle: UInt64) async throws(FSError) {
        guard let h = localHandles.withLock({ $0[handle] }) else { return }
        try checkSaveNotFailed(h)
        let v = h.file.current
        let queued: Bool
        do throws(FSError) {
            try await fillForAcknowledgement(v)
            queued = try await offPool { () throws(FSError) -> Bool in try self.commit(v, of: h.file) }
        } catch {
            saveFailed(h.file, error, through: h)
            throw error
        }
        if options.durableFsync && queued {
            let left = await waitDurable([v], deadline: nil)
            if let (_, why) = left.first { throw FSError(EIO, "upload of \(h.key) failed: \(why)") }
        }
    }
}
