// One version of a file's contents on local disk, and its way to S3 (waiting, uploading, landed, superseded,
// dropped or stopped by a conflict).
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization
import SystemPackage
import CkptSystem

/// One version of a file's contents on local disk.
final class StagedVersion: Sendable {
    let id: UInt64
    let path: String
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
        var sum: RunningChecksum?
        /// Whether bytes changed since the last commit record.
        var unjournaled = true
        /// The checksum in the last commit record.
        var committedSum: String?
        /// How many commit records this version has had (its acknowledgements, and a rename journaling it again
        /// under a new key): the last one's `generation`. An upload records the generation it started from in its
        /// `done`, which settles the version only while no commit came after (`recover`).
        var commits = 0
        var upload: Upload = .waiting
        var lastError: String?
        /// Upload attempts S3 refused for good, in a row.
        var refusals = Refusals()
        /// The upload job waiting to retry after a failed attempt, woken early when someone starts waiting for
        /// a version S3 refused (so that they hear how S3 answers now).
        var retryWaiters = Waiters<Bool>()
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
        /// job then finds it is not current and does nothing (0 while a rename moves the version: no job may
        /// start an upload of it then).
        var job: UInt64 = 0
        /// The task of the last upload job queued for this version: a job queued while an older one is
        /// uploading the version (to its old name) waits for that one to finish first.
        var uploadTask: Task<Void, Never>?
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
        var base: PinnedObject?
        var missing = Set<Int64>()
        var baseLimit: Int64 = 0
        /// Whether a write or truncate changed the contents since the version was made from `base`.
        var differsFromBase = false
        /// The file was unlinked while open: its handles write it in place, and nothing of it is ever uploaded.
        var orphaned = false
        /// A save of a file a rename replaced, kept to be uploaded all the same (`FSOptions.keepEveryVersion`):
        /// it replaces whatever the key holds, as the rename does; or a save a rename left under the old name
        /// (an earlier one than the newest it moved, `WriteBack.retarget`). An upload with a condition that then
        /// fails is dropped, not held as a conflict (no name is left to resolve one by).
        var keptByRename = false
        /// Kept by a rename (`keptByRename`), and the name was removed since (unlink, or a rename of the file
        /// there away, `WriteBack.keptSavesLoseTheirName`): the saves queued under the key later are a new
        /// file's, which replaced that removal's delete (it removes whatever the key holds). This one meeting
        /// another client's object changes nothing of theirs (S-CONFLICT-RENAMED-OVER-KEPT is about the saves of
        /// the file the rename put there).
        var nameRemoved = false
        /// S3 may hold an object under the key because of this version: its upload started there (or the upload
        /// of a version it superseded did; with no upload delay, it was queued), or queueing it cancelled a
        /// delete of the key (its upload was to replace that object), or recovery queued it again after a crash
        /// (it may have been sent before). Never cleared. `WriteBack.removal` reads it when a name goes.
        var reachedKey = false
        /// Parts sent while the file is still being written (EarlyUpload.swift), and tasks waiting for them
        /// to go idle.
        var early: EarlyUpload?
        var earlyIdleWaiters = Waiters<Void>()
        /// Bytes below this were on disk at the last background fdatasync; one is running when `syncing`.
        var syncedTo: Int64 = 0
        var syncing = false
        /// An error the background fdatasync saw: the kernel reports a writeback error once per open file, so
        /// the fsync at close would not see it again. Fails every later commit of this version.
        var syncError: Int32 = 0
    }
    let state: Mutex<State>

    /// The staged file's descriptors while the version may be written: `fd`, and the same file opened with
    /// O_DIRECT for large aligned writes (-1 where the filesystem refuses it or once closed; `directNotOpened`
    /// until the first such write: a small file never needs it). Both are closed once the version is sealed and
    /// no writer is left (`closeWriters`), so an idle dirty file holds no descriptor; everything that is not a
    /// write opens a descriptor of its own (`open()`).
    private let descriptors: Mutex<(fd: Int32, direct: Int32)>
    private static let directNotOpened: Int32 = -2
    /// Cleared when a direct write is refused: every write then goes through the page cache.
    let direct = Atomic<Bool>(true)
    /// What the staging area counts of the staged file (StagingArea.account, remove).
    struct StagedBytes {
        /// The bytes it counts (the extent written, copied or filled).
        var extent: Int64 = 0
        /// Whether the file was removed (unlinked, StagingArea.remove).
        var removed = false
        /// Descriptors of the caller's own open on it (`open`): a removed file keeps its disk space until the
        /// last is closed, so the staging area counts its bytes until then.
        var openDescriptors = 0
        /// Set by a removal while descriptors were open: called when the last one closes.
        var whenClosed: (@Sendable () -> Void)?
    }
    let staged = Mutex(StagedBytes())
    /// Writes hold it shared, an acknowledgement exclusive (see WriteGate).
    let gate = WriteGate()
    /// Taken for the length of a background fdatasync (`syncInBackground`): a commit waits on it, so the
    /// error that sync saw is recorded before the commit reads it.
    let backgroundSync = DispatchSemaphore(value: 1)

    /// `sums`: what the running checksum may hold in memory, shared with the other files being written
    /// (StagingArea.heldSums); `partSize`: the part layout whose CRC32Cs it computes (StagingArea.partChecksums).
    init(id: UInt64, path: String, fd: Int32, key: String, size: Int64, mtime: Date, writable: Bool = false,
         sums: HeldBudget = .unbounded, partSize: Int64? = nil) {
        self.id = id
        self.path = path
        descriptors = Mutex((fd, writable ? StagedVersion.directNotOpened : -1))
        var state = State(key: key, size: size, mtime: mtime)
        state.sum = RunningChecksum(budget: sums, partSize: partSize)
        self.state = Mutex(state)
    }

    deinit {
        closeWriters()
        // Versions this one links to (fallback, successor, the one it expects to land first) that only it
        // holds go one at a time: released by recursion, a chain of 12,000 (a file kept open while stress-ng
        // --fcntl truncated it and closed a duplicate, each acknowledgement a version expecting the one before)
        // overflowed the stack of the thread that dropped it.
        var pending = StagedVersion.takeLinks(self)
        while var v = pending.popLast() {
            guard isKnownUniquelyReferenced(&v) else { continue }  // someone else holds it: not released here
            pending += StagedVersion.takeLinks(v)
        }
    }

    /// The versions `v` holds (fallback, successor, the version its expectation waits for), taken out of it.
    private static func takeLinks(_ v: StagedVersion) -> [StagedVersion] {
        v.state.withLock { s in
            var out: [StagedVersion] = []
            if let f = s.fallback { out.append(f) }
            if let n = s.successor { out.append(n) }
            if case .after(let p) = s.expect {
                out.append(p)
                s.expect = .anything
            }
            s.fallback = nil
            s.successor = nil
            return out
        }
    }

    /// The descriptor writes use (write, ftruncate, fsync, the running checksum). Open again if `closeWriters`
    /// closed it (an orphan written again through a descriptor still open).
    var fd: Int32 {
        descriptors.withLock { d in
            if d.fd < 0 { d.fd = Glibc.open(path, O_RDWR | O_CLOEXEC) }
            return d.fd
        }
    }

    /// The O_DIRECT descriptor for large aligned writes (opened on first use), or -1.
    var directFd: Int32 {
        descriptors.withLock { d in
            if d.direct == StagedVersion.directNotOpened {
                d.direct = max(-1, Glibc.open(path, O_WRONLY | FileDescriptor.OpenOptions.direct.rawValue | O_CLOEXEC))
            }
            return d.direct
        }
    }

    /// A descriptor of the staged file of the caller's own (reads, fills, checksums, uploads): it stays valid
    /// whatever happens to the version's own descriptors, and closes when the caller drops it.
    /// While it is open, a removed staged file still takes its space on the disk, and the staging area counts
    /// its bytes (the dirty bound, and the room seeding leaves, are about the disk: a save held open for its
    /// copy into the block cache once filled a 256 MiB cache disk to 12 MiB free, CI).
    func open() throws(FSError) -> OwnedDescriptor {
        let (file, e) = counted { descriptors.withLock { d in d.fd >= 0 ? dup(d.fd) : Glibc.open(path, O_RDWR | O_CLOEXEC) } }
        guard let file else { throw FSError(e, "cannot open the staged file \(path): \(String(cString: strerror(e)))") }
        return file
    }

    /// Reopens `file` (a descriptor `open` gave) with `flags`: the new descriptor counts like one of `open`'s.
    /// Nil when the open fails.
    func reopen(_ file: OwnedDescriptor, flags: Int32) -> OwnedDescriptor? {
        counted { Glibc.open("/proc/self/fd/\(file.rawValue)", flags) }.file
    }

    /// The descriptor `opening` returns, counted in `openDescriptors` until it closes (counted before the open,
    /// so a removal meanwhile waits for it); nil and the open's errno when it fails.
    private func counted(_ opening: () -> Int32) -> (file: OwnedDescriptor?, errno: Int32) {
        staged.withLock { $0.openDescriptors += 1 }
        let fd = opening()
        guard fd >= 0 else {
            let e = errno
            descriptorClosed()
            return (nil, e)
        }
        return (OwnedDescriptor(fd, closed: { self.descriptorClosed() }), 0)
    }

    private func descriptorClosed() {
        let last = staged.withLock { s -> (@Sendable () -> Void)? in
            s.openDescriptors -= 1
            guard s.openDescriptors == 0 else { return nil }
            defer { s.whenClosed = nil }
            return s.whenClosed
        }
        last?()
    }

    /// Closes the write descriptors (the version is sealed and nobody writes it).
    func closeWriters() {
        descriptors.withLock { d in
            if d.fd >= 0 { close(d.fd) }
            if d.direct >= 0 { close(d.direct) }  // not `directNotOpened`
            d = (-1, -1)
        }
    }

    var key: String { state.withLock { $0.key } }
    /// What stat shows of this version (no ETag: it is not in S3 as such).
    var meta: Meta { state.withLock { Meta(isDirectory: false, size: $0.size, etag: "", mtime: $0.mtime) } }
    var size: Int64 { state.withLock { $0.size } }

    /// Seals the version whose state is `s` (see `WriteBack.seal`): true if it was not sealed yet.
    static func seal(_ s: inout State) -> Bool {
        if s.sealed { return false }
        s.sealed = true
        s.sealedAt = .now
        return true
    }

    /// Acknowledged (journaled) or sealed: its bytes never change again; a write goes to a copy.
    var isFrozen: Bool { state.withLock { $0.sealed || $0.committedSum != nil } }

    /// Uploaded, and no longer `current`: a newer version let it go (its staged file may be gone already,
    /// `WriteBack.writableVersion`) while its upload job may not have finished. It holds nothing of its file any
    /// more and stays what it is, an upload under the name it had: a rename neither counts it as holding the
    /// file's bytes nor moves it. `s`: this version's state, under its lock.
    func wasLetGo(_ s: State, current: StagedVersion) -> Bool {
        if case .done = s.upload { return self !== current }
        return false
    }

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
        let waiting = state.withLock { s -> Waiting in
            s.upload = u
            // A version that settles before its upload delay is over (superseded by a newer save, or dropped by
            // an unlink) ends the delay too: its job has nothing left to wait for, and the jobs behind it (the
            // newer save that fsync or flush waits for) must not wait out the delay for it.
            return Waiting(taking: &s)
        }
        waiting.wake()
    }

    /// Everyone waiting for a version that settled, taken under its lock and woken after it.
    private struct Waiting {
        let waiters: [CheckedContinuation<Bool, Never>]
        let delayed: [CheckedContinuation<Bool, Never>]
        init(taking s: inout State) { (waiters, delayed) = (s.waiters.removeAll(), s.delayWaiters.removeAll()) }
        init() { (waiters, delayed) = ([], []) }
        /// Waiters look again (true); upload jobs waiting out the delay go on at once (false).
        func wake() {
            for w in waiters { w.resume(returning: true) }
            for w in delayed { w.resume(returning: false) }
        }
    }

    /// What became of an upload when it landed: see `land`.
    enum Landing { case landed, dropped, moved }

    /// Upload job `job` put this version under `key` with `etag`: it is durable (settled `.done`), unless it
    /// was unlinked meanwhile (`.dropped`: the delete queued behind the job removes what landed) or a rename
    /// moved it (`.moved`: back to waiting, for the job the rename queued under the new name). Decided and
    /// settled under one lock, so a rename sees the version either landed (and queues it again) or not.
    func land(job: UInt64, key: String, etag: String) -> Landing {
        let (outcome, waiting) = state.withLock { s -> (Landing, Waiting) in
            if case .dropped = s.upload { return (.dropped, Waiting()) }
            if s.job != job || !s.key.sameBytes(key) {
                s.upload = .waiting
                return (.moved, Waiting())
            }
            s.upload = .done(etag: etag)
            s.lastError = nil
            s.refusals.reset()
            s.bytesUploaded = s.size
            return (.landed, Waiting(taking: &s))
        }
        waiting.wake()
        return outcome
    }

    /// Resumes the tasks waiting for the early upload to go idle, if it is (after each change that can end it).
    func wakeIfEarlyIdle() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.early?.busy == true ? [] : s.earlyIdleWaiters.removeAll()
        }
        for w in waiters { w.resume() }
    }

    /// A write, truncate or commit failed with `errno`: the version is never acknowledged.
    func fail(_ errno: Int32) {
        state.withLock { s in
            if s.failedErrno == 0 { s.failedErrno = StagedVersion.reported(errno) }
        }
    }

    /// The errno close() and fsync() give for a failed write or commit: a full disk or quota, or a file past
    /// S3's largest object, as such; anything else as EIO.
    static func reported(_ errno: Int32) -> Int32 { errno == ENOSPC || errno == EDQUOT || errno == EFBIG ? errno : EIO }

    /// The error of a save that failed with `errno` (as `reported`): close(), fsync() and later writes give it.
    static func failedSave(_ errno: Int32) -> FSError {
        FSError(errno, "an earlier write to this file failed (\(String(cString: strerror(errno)))); it is not kept")
    }

    /// Someone waits for this version (fsync, flush): its upload starts without the settle delay.
    func markUrgent() {
        let waiters = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            s.urgent = true
            return s.delayWaiters.removeAll()
        }
        for w in waiters { w.resume(returning: true) }
    }

    /// Waits until the version is urgent (true), or settles, or `timeout` passes (false): the upload delay. A
    /// version that settled before the wait began (dropped by an unlink, superseded by a newer save while its job
    /// had not started waiting yet) does not wait: `settle` woke the delay's waiters before this one was there.
    func urgentOrTimeout(_ timeout: Duration) async -> Bool {
        enum Start { case urgent, settled, waiting(UInt64) }
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let start = state.withLock { s -> Start in
                if s.urgent { return .urgent }
                switch s.upload {
                case .done, .superseded, .dropped, .conflict: return .settled
                case .waiting, .uploading: return .waiting(s.delayWaiters.add(c))
                }
            }
            switch start {
            case .urgent: c.resume(returning: true)
            case .settled: c.resume(returning: false)
            case .waiting(let ticket):
                Task {
                    try? await Task.sleep(for: timeout)
                    self.state.withLock { $0.delayWaiters.remove(ticket) }?.resume(returning: false)
                }
            }
        }
    }

    /// Whether S3 refused this version's upload for good (as far as retrying the same request goes) at an
    /// attempt made since `since`.
    func isRefused(since: ContinuousClock.Instant) -> Bool { state.withLock { $0.refusals.refused(since: since) } }

    /// Whether S3 refused the last attempts for good.
    var wasRefused: Bool { state.withLock { $0.refusals.refused } }

    /// The last upload attempt failed; `refused`: with an answer no retry can change. Wakes those waiting for
    /// the version once it counts as refused, as if their wait had timed out.
    func attemptFailed(_ message: String, refused: Bool) {
        let waiting = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            s.lastError = message
            s.refusals.attemptFailed(refused: refused)
            return s.refusals.refused ? s.waiters.removeAll() : []
        }
        for w in waiting { w.resume(returning: false) }
    }

    /// Waits `delay` before the next attempt, or less if someone starts waiting for the version (`retrySoon`).
    /// Ends at once when the task is cancelled (a shutdown).
    func waitToRetry(_ delay: Duration) async {
        let ticket = Mutex<UInt64?>(nil)
        await withTaskCancellationHandler {
            _ = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let t = state.withLock { $0.retryWaiters.add(c) }
                ticket.withLock { $0 = t }
                if Task.isCancelled { state.withLock { $0.retryWaiters.remove(t) }?.resume(returning: false) }
                Task {
                    try? await Task.sleep(for: delay)
                    self.state.withLock { $0.retryWaiters.remove(t) }?.resume(returning: false)
                }
            }
        } onCancel: {
            if let t = ticket.withLock({ $0 }) { state.withLock { $0.retryWaiters.remove(t) }?.resume(returning: false) }
        }
    }

    /// Ends the wait of an upload job before its next attempt (`waitToRetry`).
    func retrySoon() {
        let waiting = state.withLock { $0.retryWaiters.removeAll() }
        for w in waiting { w.resume(returning: true) }
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


/// A readers-writer lock over a version's bytes: writes to the version hold it shared, an acknowledgement
/// (`journalCommit`) holds it exclusive, so no write lands in a version between the moment its size and
/// checksum are taken for the journal and the moment it is marked acknowledged (later writes go to a copy).
/// Blocking (pthread_rwlock): held on FUSE threads and on the blocking-work threads, never across an await.
final class WriteGate: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` while no acknowledgement runs (writes run together).
    func shared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    /// Runs `body` alone: no write is in progress or starts until it returns.
    func exclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
