// The write path: dirty files are staged on local disk, acknowledged through the journal, then uploaded.
//
// A file being written is a StagedVersion: a file `staging/ID` under the cache directory. Every writer of a key
// shares the key's newest version. close() (FUSE flush) fsyncs the data and appends a `commit` record to the
// journal before it returns; when the last writer closes, the version is sealed (immutable) and queued for
// upload. A write to a sealed version first copies it to a new version, so an upload never reads bytes that
// change under it. Reads of a dirty or uploading file see the newest local version.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    /// Writes `data` at `offset` (the kernel computes O_APPEND offsets itself, from the size it knows).
    /// `.done(count)` once the bytes are in the staged file; `.later` when the write covers part of a block of
    /// a file opened in place that is still only in S3: the returned write (with its own copy of the bytes)
    /// fetches that block first.
    /// Whatever fails fails the save (`saveFailed`); once it failed, every write through `h` fails.
    func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> WriteResult {
        guard let h = localHandles.withLock({ $0[handle] }), h.writable else { throw .badHandle }
        try checkSaveNotFailed(h)
        let n = Int64(data.count)
        do throws(FSError) {
            try WriteBack.checkSize(offset + n)
            if staging.admit(n, fits: fits) {
                defer { staging.finished(n) }
                if try writeNow(h, offset: offset, data: data) { return .done(data.count) }
            }
        } catch {
            saveFailed(h.file, error, through: h)
            throw error
        }
        let bytes = [UInt8](data)
        return .later(PendingWrite { () async throws(FSError) in
            await self.admitWaiting(n)
            defer { self.staging.finished(n) }
            do throws(FSError) {
                try self.checkSaveNotFailed(h)
                return try await self.writeFetching(h, offset: offset, data: bytes)
            } catch {
                self.saveFailed(h.file, error, through: h)
                throw error
            }
        })
    }

    /// A write, truncate or close() through `h` failed with `error`. The kernel's write-back cache took the
    /// writes before (the program's write() returned, and the kernel keeps the size they gave the file), so
    /// the save of every writer open on the file now fails as a whole: their writes, close() and fsync() fail
    /// from here on, and nothing of it is kept (S-WRITE-FAILED). At once, not at their last close: the file is
    /// at once what it was before that save (its unacknowledged version is split off, `splitOff`), and its
    /// path gets a new inode (`WriteBackNotices.shownVersionDropped`), so a save that opens it again right
    /// after the failed close() starts from that state and the size it has, even before the kernel releases
    /// the failed writers. Before, such a save joined the failed one's inode, and its writes at the kernel's
    /// size uploaded zeros no program wrote.
    func saveFailed(_ f: LocalFile, _ error: FSError, through h: LocalHandle? = nil) {
        let e = StagedVersion.reported(error.errno)
        // Every writer open on the file now is in the failed save; decided under the handles' lock, so of two
        // writes failing at once only the first goes on.
        let first = localHandles.withLock { hs -> Bool in
            if let h, !h.failedSave.compareExchange(expected: 0, desired: e, ordering: .sequentiallyConsistent).exchanged {
                return false
            }
            var marked = h != nil
            for w in hs.values where w.file === f && w.writable {
                if w.failedSave.compareExchange(expected: 0, desired: e, ordering: .sequentiallyConsistent).exchanged { marked = true }
            }
            return marked
        }
        guard first, !f.unlinked else { return }  // an orphan's saves are never uploaded, and it has no path
        let v = f.current
        let previous = previousVersion(of: f, before: v)
        var split = false
        // Together with the inodes' renewal: an open or lookup sees either the failed save and its inode
        // (renewed next, and an open that read it fails to join: `LocalFiles.checkSplits`), or neither.
        notices.shownVersionDropped(key: f.key) { split = splitOff(f, v, previous: previous, errno: e) }
        if split { dropSplit(f, v, previous: previous) }
    }

    /// Throws when the save `h` is open for failed (`saveFailed`).
    func checkSaveNotFailed(_ h: LocalHandle) throws(FSError) {
        let e = h.failedSave.load(ordering: .sequentiallyConsistent)
        guard e != 0 else { return }
        throw StagedVersion.failedSave(e)
    }

    /// Whether the staging area may hold `total` bytes: under the dirty bound (FSOptions.maxDirty), or over it
    /// with nothing that could bring it down, neither an upload queued nor a removed file still held open
    /// (waiting would never end: the bound is then exceeded by files still open, and the write goes ahead).
    func fits(_ total: Int64) -> Bool {
        guard total > maxDirty else { return true }
        if staging.freeingSoon { return false }
        return !changes.state.withLock { u in
            u.pending.values.contains { v in
                v.state.withLock { s in
                    switch s.upload {
                    case .waiting: return s.sealed
                    case .uploading: return true
                    default: return false
                    }
                }
            }
        }
    }

    /// Waits until a write of `n` bytes is admitted (woken by each staged file removed, each write finished,
    /// and each upload that settles).
    func admitWaiting(_ n: Int64) async {
        if staging.admit(n, fits: fits) { return }
        heldWriters.wrappingAdd(1, ordering: .relaxed)
        defer { heldWriters.wrappingSubtract(1, ordering: .relaxed) }
        while !staging.admit(n, fits: fits) {
            await staging.wait { !self.fits(self.staging.committed(plus: n)) }
        }
    }

    /// Writes `data` at `offset` to the version `h` writes to, unless it covers part of a block still in S3
    /// (false: nothing was written).
    func writeNow(_ h: LocalHandle, offset at: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Bool {
        // The version may be acknowledged between `writableVersion` and the write: the gate makes the write wait
        // for that, and then it goes to a copy instead (the acknowledged bytes never change).
        while true {
            let v = try writableVersion(h.file)
            let outcome = try v.gate.shared { () throws(FSError) -> Bool? in
                guard !v.isFrozen else { return nil }
                // Checked once the version the write goes to is current: a save that fails from now on finds
                // this write's version unacknowledged and splits it off, and one that failed before stops it.
                try checkSaveNotFailed(h)
                return try writeLanding(v, h, offset: at, data: data)
            }
            if let outcome { return outcome }
        }
    }

    /// The write of `writeNow` into `v`, which is not acknowledged and cannot be while this runs.
    private func writeLanding(_ v: StagedVersion, _ h: LocalHandle, offset at: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Bool {
        do throws(FSError) {
            guard claimBlocks(v, offset: at, count: data.count) else { return false }
            try staging.write(v, data, at: at)
        } catch {
            v.fail(error.errno)
            throw error
        }
        // Whether the running checksum took the write (bytes not written before), and if it just gave up,
        // how far it had got.
        let (taken, broke) = v.state.withLock { s -> (Bool, Int64?) in
            s.differsFromBase = true
            defer {
                s.size = max(s.size, at + Int64(data.count))
                s.mtime = Date()
                s.unjournaled = true
            }
            guard let before = s.sum?.hashedTo else { return (false, nil) }
            if s.sum!.wrote(data, at: at, fd: v.fd) { return (true, nil) }
            s.sum = nil
            return (false, before)
        }
        if let broke {
            logger.debug("a write below the end: the checksum is computed at close", metadata: [
                "key": "\(h.key)", "offset": "\(at)", "count": "\(data.count)", "contiguous.to": "\(broke)"])
        }
        // A write the sum took is new bytes, in the file before any part could cover them (parts follow the
        // sum). Only a rewrite can change bytes already sent. Checking the offset alone would race: another
        // thread may schedule a part over this write between the sum taking it and this line.
        if !taken { checkEarlyUpload(v, changedFrom: at) }
        streamIfReady(v)
        syncInBackground(v)
        return true
    }

    /// The largest object S3 stores: 5 TiB ("Amazon S3 multipart upload limits", S3 User Guide). A file may not
    /// grow past it: nothing could upload it, and what close() acknowledged must reach S3.
    static let maxFileSize: Int64 = 5 << 40

    /// Throws EFBIG when a file of `size` bytes could not be stored in S3 (`maxFileSize`).
    static func checkSize(_ size: Int64) throws(FSError) {
        guard size <= maxFileSize else {
            throw FSError(EFBIG, "\(size) bytes is larger than S3's largest object (5 TiB)")
        }
    }

    /// Sets the size of `f`'s local version; EFBIG past `maxFileSize`.
    func truncateVersion(_ f: LocalFile, to size: Int64) throws(FSError) {
        try WriteBack.checkSize(size)
        // As for writes: never into a version being acknowledged (see `writeNow`).
        while true {
            let v = try writableVersion(f, empty: size == 0)
            let done = try v.gate.shared { () throws(FSError) -> Bool in
                guard !v.isFrozen else { return false }
                try truncateLanding(v, to: size)
                return true
            }
            if done { return }
        }
    }

    private func truncateLanding(_ v: StagedVersion, to size: Int64) throws(FSError) {
        guard ftruncate(v.fd, off_t(size)) == 0 else {
            let e = errno
            v.fail(e)
            throw FSError(e, "ftruncate: \(String(cString: strerror(e)))")
        }
        staging.truncated(v, to: size)
        v.state.withLock { s in
            s.differsFromBase = true
            truncateBase(&s, to: size)
            // Emptied, the file is written front to back again (O_TRUNC); otherwise the sum covers it only if
            // it covered all of it and the size stays.
            if size == 0 {
                // Emptied: whatever failed before is gone with it.
                s.failedErrno = 0
                s.sum = RunningChecksum(budget: s.sum?.budget ?? staging.heldSums, partSize: staging.partChecksums)
            } else if s.sum?.value(size: s.size) == nil || size != s.size {
                s.sum = nil
            }
            s.size = size
            s.mtime = Date()
            s.unjournaled = true
        }
        checkEarlyUpload(v, changedFrom: size)
    }

}
