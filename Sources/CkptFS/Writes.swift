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
import CkptSystem
import Foundation
import Synchronization
import SystemPackage

/// One version of a file's contents on local disk.
final class StagedVersion: Sendable {
    let id: UInt64
    let path: String
    let fd: Int32
    let created = ContinuousClock.now
    let createdDate = Date()

    enum Upload: Sendable {
        case waiting
        case uploading
        case done(etag: String)
        /// Replaced by a newer version of the same key before it was uploaded, or unlinked.
        case superseded
        case dropped
        /// The object in S3 changed since this version was opened (a conditional write failed): kept
        /// locally, journaled, not retried; reported by status and flush.
        case conflict
    }

    /// What the object in S3 must be for this version's upload to go ahead (a conditional write).
    enum Expect: Sendable {
        /// No condition (rename destinations, conditions turned off).
        case anything
        /// A new key: `If-None-Match: *`.
        case absent
        /// An overwrite of the object with this ETag: `If-Match`.
        case etag(String)
        /// Whatever the earlier local version of this key leaves in S3 (resolved when that one lands).
        case after(StagedVersion)
    }

    struct State: Sendable {
        var key: String
        var size: Int64
        var mtime: Date
        var sealed = false
        /// The checksum of a file written front to back, kept as it is written; nil once a write lands
        /// below what it covers (or the version did not start empty).
        var sum: RunningChecksum? = RunningChecksum()
        /// Whether bytes changed since the last commit record.
        var changed = true
        /// The checksum in the last commit record.
        var committedSum: String?
        var upload: Upload = .waiting
        var lastError: String?
        var bytesUploaded: Int64 = 0
        /// Someone waits for this version (fsync, flush): upload without the settle delay.
        var urgent = false
        var sealedAt: ContinuousClock.Instant?
        var successor: StagedVersion?
        /// Tasks waiting for the version to become final.
        var waiters = Waiters<Bool>()
        /// Upload jobs waiting out the upload delay, woken early when someone waits for the version.
        var delayWaiters = Waiters<Bool>()
        /// The upload job that may upload this version (ChangeQueue): a rename queues a new one, and the old
        /// job then finds it is not current and does nothing.
        var job: UInt64 = 0
        /// The acknowledged version this one was copied from when a write came after the acknowledgement (a
        /// close of one descriptor while another stays open): it stands for the file until this one is
        /// acknowledged, and again if this one is dropped.
        var fallback: StagedVersion?
        /// Nonzero once a write, truncate or commit of this version failed (ENOSPC, EDQUOT or EIO, for the
        /// close() that follows): the writer was told, so these bytes are never acknowledged by a later release
        /// (they are dropped, not uploaded). Cleared only by truncating the version to nothing.
        var failedErrno: Int32 = 0
        var expect: Expect = .anything
        /// A file opened in place: the object version it started from. Blocks in `missing` hold that object's
        /// bytes (up to `baseLimit`) and are not here yet; they are fetched when read, partly written, or
        /// uploaded. Blocks a write covers whole are never fetched.
        var base: FileHandle?
        var missing = Set<Int64>()
        var baseLimit: Int64 = 0
        /// Whether a write or truncate changed the contents since the version was made from `base`.
        var modified = false
        /// Parts sent while the file is still being written (EarlyUpload.swift).
        var early: EarlyUpload?
        /// Bytes below this were on disk at the last background fdatasync; one is running when `syncing`.
        var syncedTo: Int64 = 0
        var syncing = false
        /// An error the background fdatasync saw: the kernel reports a writeback error once per open file, so
        /// the fsync at close would not see it again. Fails every later commit of this version.
        var syncError: Int32 = 0
    }
    let state: Mutex<State>

    /// The same file opened with O_DIRECT for large aligned writes (-1 where the filesystem refuses it, or
    /// for a version that is not written any more).
    let directFd: Int32
    /// Cleared when a direct write is refused: every write then goes through the page cache.
    let direct = Atomic<Bool>(true)

    init(id: UInt64, path: String, fd: Int32, key: String, size: Int64, mtime: Date, writable: Bool = false) {
        self.id = id
        self.path = path
        self.fd = fd
        self.directFd = writable ? Glibc.open(path, O_WRONLY | FileDescriptor.OpenOptions.direct.rawValue | O_CLOEXEC) : -1
        self.state = Mutex(State(key: key, size: size, mtime: mtime))
    }

    deinit {
        close(fd)
        if directFd >= 0 { close(directFd) }
    }

    var key: String { state.withLock { $0.key } }
    var size: Int64 { state.withLock { $0.size } }

    /// Whether this version has reached a final state (durable, superseded or dropped).
    var isSettled: Bool {
        state.withLock {
            switch $0.upload {
            case .done, .superseded, .dropped: return true
            case .waiting, .uploading, .conflict: return false
            }
        }
    }

    /// Settled, or stopped by a conflict: nothing more will happen to it without the user.
    var isFinal: Bool {
        state.withLock {
            switch $0.upload {
            case .done, .superseded, .dropped, .conflict: return true
            case .waiting, .uploading: return false
            }
        }
    }

    /// Sets the upload state and wakes everyone waiting for the version (they look again: a renamed version
    /// goes back to waiting).
    func settle(_ u: Upload) {
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            s.upload = u
            return s.waiters.removeAll()
        }
        for w in waiters { w.resume(returning: true) }
    }

    /// A write, truncate or commit failed with `errno`: the version is never acknowledged.
    func fail(_ errno: Int32) {
        state.withLock { s in
            if s.failedErrno == 0 { s.failedErrno = errno == ENOSPC || errno == EDQUOT ? errno : EIO }
        }
    }

    /// Someone waits for this version (fsync, flush): its upload starts without the settle delay.
    func markUrgent() {
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            s.urgent = true
            return s.delayWaiters.removeAll()
        }
        for w in waiters { w.resume(returning: true) }
    }

    /// Waits until the version is urgent (true) or `timeout` passes (false): the upload delay.
    func urgentOrTimeout(_ timeout: Duration) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let ticket = state.withLock { s -> UInt64? in s.urgent ? nil : s.delayWaiters.add(c) }
            guard let ticket else { return c.resume(returning: true) }
            Task {
                try? await Task.sleep(for: timeout)
                self.state.withLock { $0.delayWaiters.remove(ticket) }?.resume(returning: false)
            }
        }
    }

    /// Waits until final, or until `timeout` passes (false). No polling: a timer task withdraws the ticket.
    @discardableResult
    func waitFinal(timeout: Duration? = nil) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let ticket = state.withLock { s -> UInt64? in
                switch s.upload {
                case .done, .superseded, .dropped, .conflict: return nil
                case .waiting, .uploading: return s.waiters.add(c)
                }
            }
            guard let ticket else { return c.resume(returning: true) }
            if let timeout {
                Task {
                    try? await Task.sleep(for: timeout)
                    self.state.withLock { $0.waiters.remove(ticket) }?.resume(returning: false)
                }
            }
        }
    }
}

/// A file with local changes, from its first local version until it is clean again (uploaded, and no handle
/// open). It follows renames (its handles write to it whatever its name now is) and outlives an unlink while
/// open: it is then an orphan, read and written through its handles, never journaled or uploaded, and gone at
/// its last close, as POSIX says of an unlinked open file.
final class LocalFile: Sendable {
    struct State: Sendable {
        var key: String
        var current: StagedVersion
        /// Open handles, and those of them open for writing.
        var handles = 0
        var writers = 0
        var unlinked = false
    }
    let state: Mutex<State>

    init(key: String, current: StagedVersion) { state = Mutex(State(key: key, current: current)) }

    var current: StagedVersion { state.withLock { $0.current } }
    var key: String { state.withLock { $0.key } }
    var unlinked: Bool { state.withLock { $0.unlinked } }
}

/// An open handle on a file that has a local version (written, or being uploaded).
final class LocalHandle: Sendable {
    let ino: UInt64
    let file: LocalFile
    let writable: Bool
    /// The key the handle writes: it follows renames (the kernel may write back cached pages after one).
    var key: String { file.key }

    init(ino: UInt64, file: LocalFile, writable: Bool) {
        self.ino = ino
        self.file = file
        self.writable = writable
    }
}

extension FileSystem {
    var stagingDir: String { cache.directory + "/staging" }

    func checkWritable() throws(FSError) {
        if options.readOnly { throw FSError(EROFS, "mounted read-only") }
    }

    /// A new, empty staged version of `key`, or a copy of `source`.
    func newVersion(key: String, copying source: StagedVersion? = nil, mtime: Date = Date()) throws(FSError) -> StagedVersion {
        let id = nextVersion.wrappingAdd(1, ordering: .relaxed).newValue
        let path = "\(stagingDir)/\(id)"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FSError(errno, "cannot create \(path): \(String(cString: strerror(errno)))") }
        let v = StagedVersion(id: id, path: path, fd: fd, key: key, size: 0, mtime: mtime, writable: true)
        if let source {
            // Only the bytes already here are copied; blocks still in S3 stay to be fetched from the same base.
            let (size, mtime, base, missing, limit, modified) = source.state.withLock {
                ($0.size, $0.mtime, $0.base, $0.missing, $0.baseLimit, $0.modified)
            }
            try copyFile(from: source.fd, to: fd, size: size)
            let expect = expectation(after: source)
            v.state.withLock { s in
                s.size = size
                s.mtime = mtime
                s.sum = nil
                s.base = base
                s.missing = missing
                s.baseLimit = limit
                s.modified = modified
                s.expect = expect
            }
        }
        return v
    }

    /// Reads the first `size` bytes of `fd` in 1 MiB pieces, handing each to `body` with its offset.
    func forEachChunk(of fd: Int32, size: Int64, _ body: (UnsafeRawBufferPointer, Int64) throws(FSError) -> Void) throws(FSError) {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        var off: Int64 = 0
        while off < size {
            let n = pread(fd, buf.baseAddress, min(buf.count, Int(size - off)), off_t(off))
            guard n > 0 else { throw FSError(EIO, "reading a staged file: \(n < 0 ? String(cString: strerror(errno)) : "it is shorter than recorded")") }
            try body(UnsafeRawBufferPointer(rebasing: buf[0..<n]), off)
            off += Int64(n)
        }
    }

    func copyFile(from src: Int32, to dst: Int32, size: Int64) throws(FSError) {
        try forEachChunk(of: src, size: size) { (chunk, off) throws(FSError) in try writeLocal(dst, chunk, at: off) }
        if ftruncate(dst, off_t(size)) != 0 { throw FSError(errno, "ftruncate") }
    }

    /// Writes to a staged file. Large page-aligned writes (the kernel's write-back of a checkpoint stream) go
    /// with O_DIRECT: no second copy into the page cache, and nothing left to flush at close(). Others, and
    /// every write where the filesystem refuses O_DIRECT (tmpfs), go through the page cache; the kernel keeps
    /// the two coherent.
    func writeStaged(_ v: StagedVersion, _ data: UnsafeRawBufferPointer, at offset: Int64) throws(FSError) {
        let page = 4096
        guard v.directFd >= 0, v.direct.load(ordering: .relaxed), offset % Int64(page) == 0,
              data.count % page == 0, data.count >= 64 << 10 else {
            return try writeLocal(v.fd, data, at: offset)
        }
        // The request's bytes follow its header in libfuse's buffer: copy them to an aligned one (reused: a
        // fresh megabyte per write would cost more in page faults than the copy to the page cache saves).
        let buf = alignedBuffers.take(data.count)
        defer { alignedBuffers.give(buf) }
        let chunk = UnsafeMutableRawBufferPointer(rebasing: buf[0..<data.count])
        chunk.copyMemory(from: data)
        do throws(FSError) {
            try writeLocal(v.directFd, UnsafeRawBufferPointer(chunk), at: offset)
        } catch where error.errno == EINVAL {
            v.direct.store(false, ordering: .relaxed)
            try writeLocal(v.fd, data, at: offset)
        }
    }

    /// pwrite that, when the disk is full, evicts clean cache blocks and tries again before giving up with
    /// ENOSPC. Dirty data is never evicted.
    func writeLocal(_ fd: Int32, _ data: UnsafeRawBufferPointer, at offset: Int64) throws(FSError) {
        var done = 0
        var attempts = 0
        while done < data.count {
            let n = pwrite(fd, data.baseAddress! + done, data.count - done, off_t(offset + Int64(done)))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == ENOSPC || errno == EDQUOT) && attempts < 5 {
                // Evict clean blocks; space of files just unlinked may also take a moment to come back.
                if attempts == 0 { cache.makeRoom(Int64(data.count - done) + (64 << 20)) } else { usleep(100_000) }
                attempts += 1
                continue
            }
            if n <= 0 {
                let e = n < 0 ? errno : EIO
                throw FSError(e, "writing to the staging area \(stagingDir): \(String(cString: strerror(e)))")
            }
            done += n
        }
    }

    // MARK: Opening for write

    /// The local file of `key`, creating it with a first version: empty with `truncate`, else the object
    /// `remote` in place (its blocks fetched only when needed). Counts one handle (a writer with `writer`) on it;
    /// `releaseHandle` gives it back. `remote` is the object at `key` in S3, nil when there is none.
    func openLocalFile(key: String, truncate: Bool, writer: Bool, remote: FileHandle?) async throws(FSError) -> LocalFile {
        /// The key's local file, taking a handle on it, if it has one.
        func join(_ l: inout [String: LocalFile]) -> LocalFile? {
            guard let f = l[key] else { return nil }
            f.state.withLock { s in
                s.handles += 1
                if writer { s.writers += 1 }
            }
            return f
        }
        if let f = local.withLock({ join(&$0) }) {
            if truncate {
                do throws(FSError) { try truncateVersion(f, to: 0) } catch {
                    releaseHandle(f, writer: writer)
                    throw error
                }
            }
            return f
        }
        let v = try newVersion(key: key)
        let expect: StagedVersion.Expect = !options.conditionalWrites ? .anything : remote.map { .etag($0.etag) } ?? .absent
        v.state.withLock { $0.expect = expect }
        if let remote, !truncate, remote.size > 0 {
            // Overwrite in place: the staged file starts sparse; the object's blocks come when needed.
            guard ftruncate(v.fd, off_t(remote.size)) == 0 else {
                let e = errno
                Glibc.unlink(v.path)
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
        let winner = local.withLock { l -> LocalFile in
            if let other = join(&l) { return other }
            fresh.state.withLock { s in
                s.handles = 1
                s.writers = writer ? 1 : 0
            }
            l[key] = fresh
            return fresh
        }
        if winner !== fresh { Glibc.unlink(v.path) }
        return winner
    }

    /// The version writes to `f` go to: the current one, or a copy of it once it is acknowledged (journaled)
    /// or sealed: those bytes never change again, so an upload, or recovery after a crash, finds exactly what
    /// close() or fsync() acknowledged. With `empty` (the caller truncates it to nothing) nothing is copied.
    func writableVersion(_ f: LocalFile, empty: Bool = false) throws(FSError) -> StagedVersion {
        let cur = f.current
        let (frozen, sealed) = cur.state.withLock { ($0.sealed || $0.committedSum != nil, $0.sealed) }
        if !frozen { return cur }
        let copy: StagedVersion
        if empty {
            copy = try newVersion(key: f.key)
            let expect = expectation(after: cur)
            copy.state.withLock { $0.expect = expect }
        } else {
            copy = try newVersion(key: f.key, copying: cur)
        }
        if !sealed { copy.state.withLock { $0.fallback = cur } }
        let won = f.state.withLock { s -> Bool in
            guard s.current === cur else { return false }  // another writer copied first
            s.current = copy
            return true
        }
        guard won else {
            Glibc.unlink(copy.path)
            return f.current
        }
        // An uploaded version kept only because it was current goes now (one still queued goes when it settles).
        if cur.isSettled { Glibc.unlink(cur.path) }
        return copy
    }

    /// Creates `name` in `parent` (empty, local until uploaded) and opens it for writing.
    public func create(parent: UInt64, name: String, flags: Int32) async throws(FSError) -> (Attributes, UInt64) {
        try checkWritable()
        let dir = try node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try checkStorable(name, in: dir.key, isDirectory: false)
        guard FileSystem.validName(name) else { throw FSError(EINVAL, "not a valid name: \(name)") }
        let key = dir.key + name
        let f = try await openLocalFile(key: key, truncate: true, writer: true, remote: nil)
        let v = f.current
        let attr = remember(parent: parent, name: name, key: key, meta: localMeta(v), addLookup: true)
        table.withLock { t in if t.listings[parent] != nil { t.listings[parent]?.entries[name] = localMeta(v) } }
        let h = nextHandle.wrappingAdd(1, ordering: .relaxed).newValue
        localHandles.withLock { $0[h] = LocalHandle(ino: attr.ino, file: f, writable: true) }
        return (attr, h)
    }

    func localMeta(_ v: StagedVersion) -> Meta {
        v.state.withLock { Meta(isDirectory: false, size: $0.size, etag: "", mtime: $0.mtime) }
    }

    /// The newest local version of `key`, if it has local changes.
    func localVersion(_ key: String) -> StagedVersion? {
        local.withLock { $0[key] }?.current
    }

    /// Opens a file that has (or, for writing, gets) a local version.
    func openLocal(ino: UInt64, key: String, write: Bool, truncate: Bool, remote: FileHandle?) async throws(FSError) -> UInt64? {
        let f: LocalFile
        if write {
            try checkWritable()
            f = try await openLocalFile(key: key, truncate: truncate, writer: true, remote: remote)
        } else {
            let joined = local.withLock { l -> LocalFile? in
                guard let f = l[key] else { return nil }
                f.state.withLock { $0.handles += 1 }
                return f
            }
            guard let joined else { return nil }
            f = joined
        }
        let h = nextHandle.wrappingAdd(1, ordering: .relaxed).newValue
        localHandles.withLock { $0[h] = LocalHandle(ino: ino, file: f, writable: write) }
        return h
    }

    // MARK: Writing

    /// Writes `data` at `offset` (at the end for O_APPEND handles). Returns the bytes written.
    public func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> Int {
        guard let h = localHandles.withLock({ $0[handle] }), h.writable else { throw .badHandle }
        let v = try writableVersion(h.file)
        // The kernel computes O_APPEND offsets itself (from the size it knows), so `offset` is always right.
        let at = offset
        do throws(FSError) {
            try claimBlocks(v, offset: at, count: data.count)
            try writeStaged(v, data, at: at)
        } catch {
            if error.errno != EAGAIN { v.fail(error.errno) }
            throw error
        }
        // Whether the running checksum took the write (bytes not written before), and if it just gave up,
        // how far it had got.
        let (taken, broke) = v.state.withLock { s -> (Bool, Int64?) in
            s.modified = true
            defer {
                s.size = max(s.size, at + Int64(data.count))
                s.mtime = Date()
                s.changed = true
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
        return data.count
    }

    /// Sets the size of `f`'s local version.
    func truncateVersion(_ f: LocalFile, to size: Int64) throws(FSError) {
        let v = try writableVersion(f, empty: size == 0)
        guard ftruncate(v.fd, off_t(size)) == 0 else {
            let e = errno
            v.fail(e)
            throw FSError(e, "ftruncate: \(String(cString: strerror(e)))")
        }
        v.state.withLock { s in
            s.modified = true
            truncateBase(&s, to: size)
            // Emptied, the file is written front to back again (O_TRUNC); otherwise the sum covers it only if
            // it covered all of it and the size stays.
            if size == 0 {
                // Emptied: whatever failed before is gone with it.
                s.failedErrno = 0
                s.sum = RunningChecksum()
            } else if s.sum?.value(size: s.size) == nil || size != s.size {
                s.sum = nil
            }
            s.size = size
            s.mtime = Date()
            s.changed = true
        }
        checkEarlyUpload(v, changedFrom: size)
    }

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
        DispatchQueue.global(qos: .utility).async {
            let target = v.size
            let e = fdatasync(v.fd) == 0 ? 0 : errno
            v.state.withLock { s in
                s.syncedTo = max(s.syncedTo, target)
                s.syncing = false
                if e != 0 && e != EINTR && s.syncError == 0 { s.syncError = e }
            }
        }
    }

    /// Acknowledges `v`, the current version of `f` (close): its bytes and a journal record describing them
    /// are made durable on local disk, and its bytes never change again (a later write goes to a copy). From
    /// then on they reach S3, across a crash. An orphan (unlinked while open) is never journaled or uploaded.
    func acknowledge(_ v: StagedVersion, of f: LocalFile) throws(FSError) {
        if f.unlinked { return }
        let (changed, sealed, failed) = v.state.withLock { ($0.changed, $0.sealed, $0.failedErrno) }
        if sealed { return }
        // A write that failed leaves the file short of what the program wrote: close() says so and nothing of
        // it is acknowledged (the last acknowledged version, or the object in S3, stays).
        if failed != 0 {
            throw FSError(failed, "an earlier write to this file failed (\(String(cString: strerror(failed)))); it is not kept")
        }
        if !changed { return }
        do throws(FSError) { try journalCommit(v) } catch {
            v.fail(error.errno)
            throw error
        }
    }

    /// Acknowledges `v` (if it is not yet) and queues it for upload (fsync, or the last writer's close). Uploads
    /// carry only versions acknowledged this way.
    func commit(_ v: StagedVersion, of f: LocalFile) throws(FSError) {
        if f.unlinked { return }
        try acknowledge(v, of: f)
        let first = v.state.withLock { s -> Bool in
            if s.sealed { return false }
            s.sealed = true
            s.sealedAt = .now
            return true
        }
        if first { enqueueUpload(v) }
    }

    /// fsyncs `v`'s staged file and appends its commit record (size, checksum, condition) to the journal.
    func journalCommit(_ v: StagedVersion) throws(FSError) {
        let synced = Glibc.fsync(v.fd) == 0 ? 0 : errno
        while v.state.withLock({ $0.syncing }) { usleep(1000) }  // its error, if any, is recorded by then
        let e = synced != 0 ? synced : v.state.withLock { $0.syncError }
        guard e == 0 else {
            throw FSError(e == ENOSPC ? ENOSPC : EIO, "fsync of the staged file failed: \(String(cString: strerror(e)))")
        }
        let (size, running, missing) = v.state.withLock { ($0.size, $0.sum?.value(size: $0.size), $0.missing) }
        let sum: UInt64
        if let running {
            sum = running
        } else {
            sum = try checksum(fd: v.fd, size: size, missing: missing)
        }
        let hex = String(sum, radix: 16)
        // The acknowledged version this one was copied from is replaced by it.
        let fallback = v.state.withLock { $0.fallback }
        try journal.append([commitRecord(v, checksum: hex)] + (fallback.map { [JournalRecord(op: .drop, id: $0.id)] } ?? []))
        v.state.withLock { s in
            s.changed = false
            s.committedSum = hex
            s.fallback = nil
        }
        if let fallback {
            abandonEarlyUpload(fallback, because: "a later version was acknowledged")
            fallback.settle(.superseded)
            Glibc.unlink(fallback.path)
        }
    }

    /// XXH64 of the first `size` bytes of `fd`, counting blocks in `missing` (of an in-place file) as zeros:
    /// they may be filled from S3 after the checksum is journaled, and that must not make the record fail.
    func checksum(fd: Int32, size: Int64, missing: Set<Int64> = []) throws(FSError) -> UInt64 {
        var h = XXH64()
        if missing.isEmpty {
            try forEachChunk(of: fd, size: size) { chunk, _ in h.update(chunk) }
            return h.finalize()
        }
        let bs = fillBlock
        let zeros = [UInt8](repeating: 0, count: Int(bs))
        try forEachChunk(of: fd, size: size) { chunk, off in
            var at = 0
            while at < chunk.count {
                let pos = off + Int64(at)
                let n = min(chunk.count - at, Int(bs - pos % bs))
                if missing.contains(pos / bs) {
                    zeros.withUnsafeBytes { h.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                } else {
                    h.update(UnsafeRawBufferPointer(rebasing: chunk[at..<(at + n)]))
                }
                at += n
            }
        }
        return h.finalize()
    }

    /// The journal record that acknowledges `v` as it is now.
    func commitRecord(_ v: StagedVersion, checksum: String) -> JournalRecord {
        let condition = condition(for: v)
        return v.state.withLock { s in
            var r = JournalRecord(op: .commit, id: v.id, key: s.key, size: s.size, xxh64: checksum,
                                  mtime: s.mtime.timeIntervalSince1970)
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

    /// close(): the data is on local disk and journaled when this returns. The version is queued for upload
    /// when the last descriptor of the open file is closed (release): a close() of a duplicate (a child
    /// process exiting) acknowledges what was written so far but queues nothing while the writer goes on.
    public func flush(handle: UInt64) throws(FSError) {
        guard let h = localHandles.withLock({ $0[handle] }), h.writable else { return }
        try acknowledge(h.file.current, of: h.file)
    }

    /// fsync(): with durable fsync, returns once the file is in S3; with local fsync, once it is on local disk.
    public func fsync(handle: UInt64) async throws(FSError) {
        guard let h = localHandles.withLock({ $0[handle] }) else { return }
        let v = h.file.current
        try commit(v, of: h.file)
        if options.durableFsync && !h.file.unlinked {
            let left = await waitDurable([v], deadline: nil)
            if let (_, why) = left.first { throw FSError(EIO, "upload of \(h.key) failed: \(why)") }
        }
    }

    public func releaseLocal(handle: UInt64) {
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
        if unlinked {
            if handles == 0 {
                // The last close of an unlinked file: its bytes go with it (only its own: a file created under
                // its old name meanwhile has versions of the same key).
                let v = f.current
                Glibc.unlink(v.path)
                if let fallback = v.state.withLock({ $0.fallback }) { Glibc.unlink(fallback.path) }
                orphans.withLock { o in o = o.filter { $0.value !== f } }
            }
            return
        }
        if writer && writers == 0 {
            let v = f.current
            let (sealed, changed, failed, acked) = v.state.withLock { ($0.sealed, $0.changed, $0.failedErrno != 0, $0.committedSum != nil) }
            if !sealed && failed {
                discardUnacknowledged(f, v)
            } else if !sealed && (changed || acked) {
                do { try commit(v, of: f) } catch {
                    logger.error("could not acknowledge a file at its last close; its changes are dropped",
                                 metadata: ["key": "\(key)", "error": "\(error)"])
                    discardUnacknowledged(f, v)
                }
            } else if !sealed {
                // Opened for writing and not changed: nothing to upload.
                discardUnacknowledged(f, v, quietly: true)
            }
        }
        if handles == 0 { cleanIfUploaded(f) }
    }

    /// Drops `v`, the unacknowledged current version of `f`: the previous local version (still queued or
    /// uploading) becomes current again, or, if there is none, the file has no local changes any more.
    func discardUnacknowledged(_ f: LocalFile, _ v: StagedVersion, quietly: Bool = false) {
        if !quietly {
            logger.error("a file whose write or close failed is not uploaded; S3 keeps its last acknowledged version",
                         metadata: ["key": "\(f.key)"])
        }
        abandonEarlyUpload(v, because: "its changes were not acknowledged")
        v.settle(.dropped)
        let fallback = v.state.withLock { s -> StagedVersion? in
            defer { s.fallback = nil }
            return s.fallback
        }
        let previous = fallback ?? uploadState.withLock { u in
            u.pending.values.filter { $0 !== v && $0.key == f.key }.max { $0.id < $1.id }
        }
        let gone = local.withLock { l -> Bool in
            f.state.withLock { s -> Bool in
                guard s.current === v else { return false }
                if let previous {
                    s.current = previous
                    return false
                }
                if l[s.key] === f { l.removeValue(forKey: s.key) }
                return true
            }
        }
        Glibc.unlink(v.path)
        if gone { forgetLocal(key: f.key) }
        // The acknowledged version it was copied from stands again, and goes up once nobody writes.
        if let fallback, f.state.withLock({ $0.writers == 0 }) {
            do { try commit(fallback, of: f) } catch {
                logger.error("could not queue a file's acknowledged version", metadata: ["key": "\(f.key)", "error": "\(error)"])
            }
        }
    }

    /// After the last handle of `f` closed: if its newest version is in S3, the file is clean again (its staged
    /// copy goes) and stat shows the object.
    func cleanIfUploaded(_ f: LocalFile) {
        let removed: (StagedVersion, String)? = local.withLock { l in
            f.state.withLock { s in
                guard s.handles == 0, !s.unlinked, l[s.key] === f, case .done(let etag) = s.current.state.withLock({ $0.upload }) else {
                    return nil
                }
                l.removeValue(forKey: s.key)
                return (s.current, etag)
            }
        }
        guard let (v, etag) = removed else { return }
        Glibc.unlink(v.path)
        let (key, size, mtime) = v.state.withLock { ($0.key, $0.size, $0.mtime) }
        showUploaded(key: key, meta: Meta(isDirectory: false, size: size, etag: etag, mtime: mtime))
    }

    /// Stat of `key` shows its object again (the local version is gone without reaching S3): cached
    /// attributes are forgotten.
    func forgetLocal(key: String) {
        table.withLock { t in
            for (ino, n) in t.nodes where n.key == key && !n.meta.isDirectory {
                t.nodes[ino]?.fetched = .now - .seconds(86400 * 365)
                t.listings.removeValue(forKey: n.parent)
            }
        }
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
        let fd = dup(v.fd)
        guard fd >= 0 else { throw FSError(EMFILE, "dup") }
        return [.file(fd: fd, offset: offset, length: n)]
    }

    // MARK: Attributes

    /// Changes size and times. Mode and owner are accepted and not stored (they come from the mount options).
    public func setattr(ino: UInt64, size: Int64?, mtime: Date?) async throws(FSError) -> Attributes {
        let n = try node(ino)
        if let f = orphans.withLock({ $0[ino] }) {
            // An unlinked file still open (ftruncate, futimens through its descriptor): it stays an orphan, and
            // a file created under its old name meanwhile is not touched.
            if let size { try truncateVersion(f, to: size) }
            if let mtime { f.current.state.withLock { $0.mtime = mtime } }
            return attributes(ino, localMeta(f.current))
        }
        if let size {
            guard !n.meta.isDirectory else { throw .isDirectory }
            try checkWritable()
            // A truncate acts as a writer for its duration (the object is downloaded first unless it is cut to
            // nothing); without another open writer it is a complete change, acknowledged and queued at once.
            let isLocal = local.withLock { $0[n.key] != nil }
            let f = try await openLocalFile(key: n.key, truncate: false, writer: true,
                                            remote: isLocal ? nil : try await remoteObject(ino, n))
            defer { releaseHandle(f, writer: true) }
            try truncateVersion(f, to: size)
        }
        if let mtime, !n.meta.isDirectory {
            // Stored with the upload (x-amz-meta-mtime) while the file is local; otherwise not kept.
            if let v = localVersion(n.key) {
                let set = v.state.withLock { s -> Bool in
                    guard case .waiting = s.upload else { return false }
                    s.mtime = mtime
                    return true
                }
                // Parts sent early carry no mtime (the object shows Last-Modified, about the close). With the
                // kernel's write-back cache it sends the file's own write times here, which Last-Modified
                // matches closely enough; a time from outside the writing (cp -p, rsync -t, touch -d) must be
                // stored, so such an upload is started afresh, with it.
                if set && (mtime < v.createdDate - 1 || mtime > Date() + 1) {
                    abandonEarlyUpload(v, because: "an mtime from outside the writing was set")
                }
            }
        }
        return try await getattr(ino: ino)
    }

    // MARK: Namespace changes

    public func mkdir(parent: UInt64, name: String) async throws(FSError) -> Attributes {
        try checkWritable()
        let dir = try node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try checkStorable(name, in: dir.key, isDirectory: true)
        guard FileSystem.validName(name) else { throw FSError(EINVAL, "not a valid name: \(name)") }
        if (try? await lookup(parent: parent, name: name)) != nil {
            forget(ino: inoFor(parent: parent, name: name), count: 1)
            throw FSError(EEXIST)
        }
        // A delete of the same name still queued (rmdir, or a rename of the directory away) must not remove it.
        await clearPendingDelete(of: dir.key + name + "/")
        do {
            _ = try await client.putObject(bucket, dir.key + name + "/", body: .empty, options: PutOptions())
        } catch { throw FSError.from(error) }
        let meta = Meta(isDirectory: true, size: 0, etag: "", mtime: Date())
        table.withLock { t in if t.listings[parent] != nil { t.listings[parent]?.entries[name] = meta } }
        let attr = remember(parent: parent, name: name, key: dir.key + name, meta: meta, addLookup: true)
        // It did not exist, so it is empty: lookups of new names in it need not ask S3.
        _ = table.withLock {
            $0.install(Listing(entries: [:], expires: .now + options.metadataTTL), for: attr.ino, limit: options.maxListedEntries)
        }
        return attr
    }

    /// Removes an empty directory: its marker is deleted in S3 in order after the uploads before it (ChangeQueue);
    /// until then lookups and listings do not show it.
    public func rmdir(parent: UInt64, name: String) async throws(FSError) {
        try checkWritable()
        let dir = try node(parent)
        let prefix = dir.key + name + "/"
        let page: ListObjectsPage
        do {
            page = try await client.listObjectsV2(bucket, prefix: prefix, delimiter: "/", continuationToken: nil,
                                                  startAfter: nil, maxKeys: 1000)
        } catch { throw FSError.from(error) }
        let others = page.objects.filter { $0.key != prefix && !isHidden($0.key) }
        var prefixes: [String] = []
        for p in page.commonPrefixes where !isHidden(p) {
            // Some servers (SeaweedFS) keep listing a prefix whose objects are all deleted: only one that
            // still holds an object (not being deleted) makes the directory non-empty.
            if await holdsObjects(p) { prefixes.append(p) }
        }
        let localChildren = local.withLock { l in l.keys.contains { $0.hasPrefix(prefix) } }
        if !others.isEmpty || !prefixes.isEmpty || localChildren { throw FSError(ENOTEMPTY) }
        try deleteLater([prefix], hiding: [prefix])
        invalidate(parent: parent, name: name)
    }

    /// Whether anything under `prefix` is in S3 and not being deleted (true when that cannot be told).
    func holdsObjects(_ prefix: String) async -> Bool {
        guard let page = try? await client.listObjectsV2(bucket, prefix: prefix, delimiter: nil, continuationToken: nil,
                                                         startAfter: nil, maxKeys: 1000) else { return true }
        return page.objects.contains { !isHidden($0.key) } || page.isTruncated
    }

    /// Removes a file: its local versions stop (and are never uploaded; a file still open lives on as an
    /// orphan until its last close) and the object is deleted in S3 in order after the uploads before it
    /// (ChangeQueue). Until then lookups and listings do not show it. Journaled before it returns.
    public func unlink(parent: UInt64, name: String) async throws(FSError) {
        try checkWritable()
        let dir = try node(parent)
        let key = dir.key + name
        let attr = try await lookup(parent: parent, name: name)
        forget(ino: attr.ino, count: 1)
        guard !attr.isDirectory else { throw .isDirectory }
        var withdrawn = Withdrawal()
        if let f = local.withLock({ $0.removeValue(forKey: key) }) {
            withdrawn = orphan(f, ino: attr.ino)
        }
        try deleteLater([key], hiding: [key], with: withdrawn.records)
        withdrawn.removeFiles()
        invalidate(parent: parent, name: name)
        // The name is free: a file created under it is a new inode, whatever the kernel still holds open.
        table.withLock { t in _ = t.inoByPath.removeValue(forKey: PathKey(parent: parent, name: name)) }
    }

    /// `f` lost its name (unlink, or replaced by a rename): its versions are never uploaded. Open handles keep
    /// it readable and writable (stat by inode `ino` too) until the last one closes. Returns the journal
    /// records that withdraw its acknowledged versions (and the staged files to remove once journaled).
    func orphan(_ f: LocalFile, ino: UInt64?) -> Withdrawal {
        let handles = f.state.withLock { s -> Int in
            s.unlinked = true
            return s.handles
        }
        let records = dropVersions(of: f)
        if handles > 0 {
            if let ino { orphans.withLock { $0[ino] = f } }
            // Its handles write the current version in place from now on (nothing uploads it).
            f.current.state.withLock { s in
                s.sealed = false
                s.committedSum = nil  // its acknowledgement is withdrawn: not frozen any more
            }
        }
        return records
    }

    /// Forgets what is cached about (parent, name) so the next lookup asks again.
    func invalidate(parent: UInt64, name: String) {
        table.withLock { t in
            t.listings[parent]?.entries.removeValue(forKey: name)
            let pk = PathKey(parent: parent, name: name)
            if let ino = t.inoByPath[pk] { t.nodes[ino]?.fetched = .now - .seconds(86400 * 365) }
            t.negative[pk] = .now
        }
    }
}

/// Page-aligned buffers of at least 1 MiB for O_DIRECT writes, kept for reuse.
final class AlignedBuffers: Sendable {
    /// Addresses of free buffers of `size` bytes.
    private let free = Mutex<[UInt]>([])
    static let size = 1 << 20

    func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        if count <= AlignedBuffers.size, let a = free.withLock({ $0.popLast() }) {
            return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: a), count: AlignedBuffers.size)
        }
        return .allocate(byteCount: max(count, AlignedBuffers.size), alignment: 4096)
    }

    func give(_ b: UnsafeMutableRawBufferPointer) {
        let a = UInt(bitPattern: b.baseAddress)
        let kept = b.count == AlignedBuffers.size && free.withLock { f -> Bool in
            guard f.count < 16 else { return false }
            f.append(a)
            return true
        }
        if !kept { b.deallocate() }
    }
}
