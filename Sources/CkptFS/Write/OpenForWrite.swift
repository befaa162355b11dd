// Opening files for writing: the local file of a key, created empty or in place over the object, and the
// version writes go to (copy on write once acknowledged).
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    // MARK: Opening for write

    /// The local file of `key`, creating it with a first version: empty with `truncate`, else the object
    /// `remote` in place (its blocks fetched only when needed). Counts one handle (a writer with `writer`) on it;
    /// `releaseHandle` gives it back. `remote` is the object at `key` in S3, nil when there is none. ESTALE,
    /// changing nothing, when a failed save split the key's file off since the caller read `splitsSeen`
    /// (`LocalFiles.checkSplits`; nil: not checked).
    func openLocalFile(key: String, truncate: Bool, writer: Bool, remote: PinnedObject?,
                       splitsSeen: UInt64? = nil) throws(FSError) -> LocalFile {
        /// The key's local file, taking a handle on it, if it has one.
        func join(_ l: inout BytesDictionary<LocalFile>) -> LocalFile? {
            guard let f = l[key] else { return nil }
            f.state.withLock { s in
                s.handles += 1
                if writer { s.writers += 1 }
            }
            return f
        }
        if let f = try joinLocalFile(key: key, truncate: truncate, writer: writer, splitsSeen: splitsSeen) { return f }
        let v = try staging.create(id: newJournalId(), key: key)
        let expect: StagedVersion.Expect = !options.conditionalWrites ? .anything : remote.map { .etag($0.etag) } ?? .absent
        v.state.withLock { s in
            s.expect = expect
            // Made from the object and not changed yet: nothing to acknowledge or upload until a write or a
            // truncate (a close without one journals nothing, and the last close drops the version).
            if remote != nil && !truncate { s.unjournaled = false }
        }
        if let remote, !truncate, remote.size > 0 {
            // Overwrite in place: the staged file starts sparse; the object's blocks come when needed.
            guard ftruncate(v.fd, off_t(remote.size)) == 0 else {
                let e = errno
                staging.remove(v)
                throw FSError(e, "ftruncate of a staged file: \(String(cString: strerror(e)))")
            }
            let blocks = (remote.size + Int64(cache.blockSize) - 1) / Int64(cache.blockSize)
            v.state.withLock { s in
                s.size = remote.size
                s.sum = nil
                s.base = remote
                s.baseLimit = remote.size
                s.missing = Set(0..<blocks)
            }
        }
        // Another opener may have raced us: the first registration wins.
        let fresh = LocalFile(key: key, current: v)
        let winner: LocalFile
        do throws(FSError) {
            winner = try localFiles.byKey.withLock { l throws(FSError) -> LocalFile in
                try localFiles.checkSplits(key, seen: splitsSeen)
                if let other = join(&l) { return other }
                fresh.state.withLock { s in
                    s.handles = 1
                    s.writers = writer ? 1 : 0
                    s.objectIsAcknowledged = remote != nil
                    s.keyRemoval = remote != nil ? .anyObject : .nothing
                    s.madeFrom = truncate ? nil : remote?.etag
                }
                l[key] = fresh
                return fresh
            }
        } catch {
            staging.remove(v)
            throw error
        }
        if winner !== fresh { staging.remove(v) }
        return winner
    }

    /// The local file of `key` if it has one now (nil if not), with one handle (a writer with `writer`) counted
    /// on it, truncated to nothing with `truncate`. ESTALE, changing nothing, when a failed save split the key's
    /// file off since the caller read `splitsSeen` (nil: not checked).
    func joinLocalFile(key: String, truncate: Bool, writer: Bool, splitsSeen: UInt64? = nil) throws(FSError) -> LocalFile? {
        let joined = try localFiles.byKey.withLock { l throws(FSError) -> LocalFile? in
            try localFiles.checkSplits(key, seen: splitsSeen)
            guard let f = l[key] else { return nil }
            f.state.withLock { s in
                s.handles += 1
                if writer { s.writers += 1 }
            }
            return f
        }
        guard let f = joined else { return nil }
        if truncate { try truncateJoined(f, writer: writer) }
        return f
    }

    /// Truncates `f`, which a handle (a writer with `writer`) just joined, to nothing (O_TRUNC); on failure the
    /// handle is given back.
    private func truncateJoined(_ f: LocalFile, writer: Bool) throws(FSError) {
        do throws(FSError) { try truncateVersion(f, to: 0) } catch {
            releaseHandle(f, writer: writer)
            throw error
        }
    }

    /// The object a local file that went left in S3: its current version's, if that one landed (the file went
    /// clean), else nil (it went otherwise: unlinked, discarded).
    func landedObject(_ f: LocalFile) -> PinnedObject? {
        if f.unlinked { return nil }
        return f.current.state.withLock { s in
            guard case .done(let etag) = s.upload else { return nil }
            return PinnedObject(key: f.key, etag: etag, size: s.size)
        }
    }

    /// The version writes to `f` go to: the current one, or a copy of it once it is acknowledged (journaled)
    /// or sealed: those bytes never change again, so an upload, or recovery after a crash, finds exactly what
    /// close() or fsync() acknowledged. With `empty` (the caller truncates it to nothing) nothing is copied.
    func writableVersion(_ f: LocalFile, empty: Bool = false) throws(FSError) -> StagedVersion {
        let cur = f.current
        if !cur.isFrozen { return cur }
        let copy: StagedVersion
        do throws(FSError) {
            copy = empty ? try staging.create(id: newJournalId(), key: f.key) : try staging.copy(cur, id: newJournalId())
        } catch {
            // Another writer (the kernel writes back a mapping's pages on several threads) copied `cur` first,
            // and `cur`, uploaded, went with its staged file before this copy could read it: write to theirs.
            if f.current !== cur { return try writableVersion(f, empty: empty) }
            throw error
        }
        let expect = expectation(after: cur)
        copy.state.withLock { $0.expect = expect }
        let won = f.state.withLock { s -> Bool in
            guard s.current === cur else { return false }  // another writer copied first
            // The copy stands in for `cur` (its fallback) only while nothing has sealed `cur`: decided under
            // the file's lock, where `seal` and `queueAcknowledged` seal, so a sealed, queued version is never
            // a fallback that a later acknowledgement withdraws.
            if !cur.state.withLock({ $0.sealed }) { copy.state.withLock { $0.fallback = cur } }
            // A copy for an orphan (unlinked while open) is never uploaded either.
            if s.unlinked { copy.state.withLock { $0.orphaned = true } }
            s.current = copy
            return true
        }
        guard won else {
            staging.remove(copy)
            return f.current
        }
        // An uploaded version kept only because it was current goes now (one still queued goes when it settles).
        if cur.isSettled { staging.remove(cur) }
        return copy
    }

    /// A new, empty local file `key` (create), counted as one writer.
    func createFile(key: String) throws(FSError) -> LocalFile {
        try checkWritable()
        return try openLocalFile(key: key, truncate: true, writer: true, remote: nil)
    }

    /// A handle on `f`, an unlinked file still open (an orphan), opened again through its inode: counted on it
    /// (a writer with `write`), truncated to nothing with `truncate`. ENOENT once its last handle closed.
    func joinOrphan(_ f: LocalFile, ino: UInt64, write: Bool, truncate: Bool) throws(FSError) -> UInt64 {
        let joined = f.state.withLock { s -> Bool in
            guard s.unlinked, s.handles > 0 else { return false }
            s.handles += 1
            if write { s.writers += 1 }
            return true
        }
        guard joined else { throw .noEntry }
        if truncate { try truncateJoined(f, writer: write) }
        return newHandle(on: f, ino: ino, writable: write)
    }

    /// A handle on `f` (already counted on it) for inode `ino`.
    func newHandle(on f: LocalFile, ino: UInt64, writable: Bool) -> UInt64 {
        let h = handleNumbers.next()
        localHandles.withLock { $0[h] = LocalHandle(ino: ino, file: f, writable: writable) }
        return h
    }

    /// The newest local version of `key`, if it has local changes.
    func localVersion(_ key: String) -> StagedVersion? {
        localFiles.byKey.withLock { $0[key] }?.current
    }

    /// Opens a file through its local version. Reading, or with `create` false, only a local version `key` has
    /// now (nil when it has none: its upload may have ended since the caller looked); writing with `create`, a
    /// local version made from `remote` (the object at `key` in S3, nil when there is none) when it has none.
    /// ESTALE when a failed save split the file off since the caller read `splitsSeen` with the inode: that
    /// inode shows the failed save (its size, its pages), not the file the key has now.
    func openLocal(ino: UInt64, key: String, write: Bool, truncate: Bool, remote: PinnedObject?,
                   create: Bool = true, splitsSeen: UInt64? = nil) async throws(FSError) -> UInt64? {
        let f: LocalFile
        if write {
            try checkWritable()
            if create {
                f = try openLocalFile(key: key, truncate: truncate, writer: true, remote: remote, splitsSeen: splitsSeen)
            } else {
                guard let joined = try joinLocalFile(key: key, truncate: truncate, writer: true, splitsSeen: splitsSeen) else { return nil }
                f = joined
            }
        } else {
            guard let joined = try joinLocalFile(key: key, truncate: false, writer: false, splitsSeen: splitsSeen) else { return nil }
            f = joined
        }
        return newHandle(on: f, ino: ino, writable: write)
    }
}
