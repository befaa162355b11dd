// The write-back journal: an append-only file of records, each fsynced before the operation it describes
// is acknowledged. It is what makes "close() returned" mean "this file will reach S3", across a crash of the
// daemon or of the machine.
//
// Record framing: 4-byte little-endian payload length, 8-byte XXH64 of the payload, the payload (JSON).
// Replay stops at the first record that is short or fails its checksum: a torn final record (a crash
// mid-append) is ignored, and every record before it is intact.
import CkptDigest
import CkptSystem
import Foundation
import Synchronization
import SystemPackage

/// One journal record.
struct JournalRecord: Codable, Equatable, Sendable {
    enum Op: String, Codable, Sendable {
        /// A staged version was acknowledged (close/fsync): the file `staging/ID` holds `size` bytes with
        /// checksum `xxh64` and must reach `key`.
        case commit
        /// A multipart upload of version `id` to `key` is about to be created (`mtime`: when, seconds since
        /// 1970). If a crash comes before its `multipart` record, recovery finds it on the server by key and time.
        case starting
        /// A multipart upload was started for version `id` (so recovery can abort it).
        case multipart
        /// Version `id` landed in S3 under `key` (its staging file may go), or the change `id` (a delete, a
        /// rename) is complete. A version renamed after its `done` has a later `commit` under the new key, and a
        /// `done` whose key is not the version's key at that point of the journal does not settle it.
        case done
        /// Version `id` is no longer wanted (unlinked, replaced by a rename, or its close failed).
        case drop
        /// `key` is to be deleted in S3 (unlink, rmdir, the old name of a rename) once every upload journaled
        /// before this record has landed; `done` with the same `id` when it has been.
        case delete
        /// Objects `keys` (under `key`, a prefix, or the single key `key`) are being copied to the same names
        /// under `target`; recovery finishes a rename a crash cut short (copies what is left, moves the local
        /// files, deletes the old names). `done` with the same `id` once the deletes are queued.
        case renaming
    }
    var op: Op
    var id: UInt64
    var key: String?
    var size: Int64?
    var xxh64: String?
    var mtime: Double?
    var uploadId: String?
    var etag: String?
    /// Commit of a file opened in place: blocks `missing` (as [first, end) ranges) are still those of
    /// object `baseKey` version `baseETag` (`baseSize` bytes), up to `baseLimit`; the checksum counts them as zeros.
    var baseKey: String?
    var baseETag: String?
    var baseSize: Int64?
    var baseLimit: Int64?
    var missing: [[Int64]]?
    /// The upload's condition: If-Match this ETag, or If-None-Match when `ifNoneMatch`.
    var ifMatch: String?
    var ifNoneMatch: Bool?
    /// `renaming`: the new prefix (or key), and the objects being copied.
    var target: String?
    var keys: [String]?
    /// `commit`: the how-manieth commit record of the version this is (1 for its first). `done` of a version: the
    /// generation its upload started from; it settles the version only if no commit came after that one (a
    /// rename away and back journals the version again under the same key: the upload that lands meanwhile,
    /// sent before the renames, does not stand for it, since the old name's delete comes between). Nil in
    /// journals written before it was recorded: a `done` then settles by key alone.
    var generation: Int?
    /// `delete`: nothing of the removed file reached S3 under the key (`Removal.nothing`): recovery queues it for
    /// its place in the order, and sends no DeleteObject. Nil in journals written before.
    var sendsNothing: Bool?
    /// `delete`: only an object this cache directory uploaded is deleted (`Removal.ownObject`). Nil: whatever
    /// the key holds.
    var ownObjectOnly: Bool?

    /// `delete`: what it removes (`sendsNothing`, `ownObjectOnly`).
    var removes: Removal {
        get { sendsNothing == true ? .nothing : ownObjectOnly == true ? .ownObject : .anyObject }
        set {
            sendsNothing = newValue == .nothing ? true : nil
            ownObjectOnly = newValue == .ownObject ? true : nil
        }
    }
}

final class Journal: Sendable {
    let path: String
    /// The open journal: its descriptor, its size, how far past its end disk blocks are allocated (the
    /// reserve), the errno that left it unusable, if one did, how much of it an fdatasync made durable, and how
    /// many times a failed fdatasync cut it back to that (the records written before such a cut are gone).
    private struct Tail {
        var fd: Int32
        var end: Int64
        var reservedTo: Int64
        var broken: Int32 = 0
        var durableEnd: Int64
        var cuts = 0
    }
    private let tail: Mutex<Tail>
    /// Held for each fdatasync: one runs at a time, and the appends that wait for it find their records made
    /// durable by the one before them when it started after their write (group commit).
    private let syncing = Mutex<Void>(())
    /// fdatasync(2); a stand-in in tests.
    private let sync: @Sendable (Int32) -> Int32
    /// fdatasync calls made (for tests and the bench).
    let syncs = Atomic<Int>(0)
    /// Disk space the journal keeps allocated past its end (fallocate, its size unchanged) for its own records,
    /// so that they can be written when the cache disk is full: a record that an upload landed (its staged copy
    /// then goes and gives its space back) or that withdraws a change (an unlink that frees space). Nobody else
    /// can take it, not even a process that takes every byte of the disk as it comes free. Allocated again after
    /// each append that leaves less than half of it, when the disk has room. About 10,000 records.
    static let reserveSize: Int64 = 4 << 20

    /// Opens (creating) the journal for appending, and sets its reserve aside.
    init(path: String, sync: @escaping @Sendable (Int32) -> Int32 = { fdatasync($0) }) throws(FSError) {
        self.path = path
        self.sync = sync
        tail = Mutex(try Journal.openTail(path))
        // Earlier builds kept the reserve in a file of its own; its space goes back to the disk.
        unlink(path + ".reserve")
    }

    private static func openTail(_ path: String) throws(FSError) -> Tail {
        let f = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard f >= 0 else { throw FSError(errno, "cannot open the journal \(path): \(String(cString: strerror(errno)))") }
        let end = Int64(lseek(f, 0, SEEK_END))
        var t = Tail(fd: f, end: end, reservedTo: end, durableEnd: end)
        replenish(&t)
        return t
    }

    /// Allocates the reserve past the journal's end again if less than half of it is left and the disk has room.
    private static func replenish(_ t: inout Tail) {
        guard t.reservedTo - t.end < reserveSize / 2 else { return }
        do {
            try FileDescriptor(rawValue: t.fd).preallocate(from: t.end, length: reserveSize)
            t.reservedTo = t.end + reserveSize
        } catch {
            // The disk is full (what is left of the reserve serves), or the filesystem cannot preallocate.
        }
    }

    /// Bytes allocated past the journal's end for its own records (the reserve) now.
    var reserved: Int64 { tail.withLock { max(0, $0.reservedTo - $0.end) } }

    deinit { tail.withLock { t in if t.fd >= 0 { _ = close(t.fd) } } }

    /// Reopens the file at `path` (after `rewrite` replaced it). The replaced file keeps its reserve until its
    /// descriptor closes, so it is closed first: on a small cache disk the new reserve did not fit beside the old
    /// one, the journal had none, and an unlink on the full disk then failed with ENOSPC (CI, an 8 MiB tmpfs).
    /// Nothing appends meanwhile (recovery runs before the mount serves).
    func reopen() throws(FSError) {
        tail.withLock { t in
            close(t.fd)
            t.fd = -1
            t.broken = EBADF
        }
        let new = try Journal.openTail(path)
        tail.withLock { $0 = new }
    }

    static func frame(_ r: JournalRecord) -> [UInt8] {
        let payload = Array(try! JSONEncoder().encode(r))
        var out = [UInt8]()
        out.reserveCapacity(12 + payload.count)
        withUnsafeBytes(of: UInt32(payload.count).littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: XXH64.hash(payload).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: payload)
        return out
    }

    /// Appends records and makes them durable (fdatasync) before returning. A failed append leaves nothing
    /// of its records in the file: a torn record in the middle would end every replay there, and the records
    /// after it would be lost to recovery.
    ///
    /// Group commit: the records are written under the tail's lock, then made durable by an fdatasync that
    /// starts after the write, theirs or one another append started meanwhile (one runs at a time), so appends
    /// that come together (the uploads' `done` records, a close's commit) share one device flush instead of
    /// each paying its own. An fdatasync that fails cuts the journal back to what the last good one made
    /// durable, and every append whose records that removes fails (none of them returned yet).
    func append(_ records: [JournalRecord]) throws(FSError) {
        let bytes = records.flatMap(Journal.frame)
        let written: Result<(end: Int64, cuts: Int), FSError> = tail.withLock { t in
            guard t.broken == 0 else { return .failure(Journal.failure(t.broken)) }
            if let e = Journal.writeAll(t.fd, bytes) {
                Journal.cut(&t, to: t.end)
                return .failure(Journal.failure(e))
            }
            t.end += Int64(bytes.count)
            Journal.replenish(&t)
            return .success((t.end, t.cuts))
        }
        let (end, cuts) = try written.get()
        try syncing.withLock { _ throws(FSError) in
            let (fd, target, state) = tail.withLock { t in (t.fd, t.end, (t.broken, t.cuts, t.durableEnd)) }
            guard state.1 == cuts else { throw Journal.failure(state.0 != 0 ? state.0 : EIO) }  // cut with a failed sync
            if state.2 >= end { return }  // an fdatasync that started after the write made it durable
            syncs.wrappingAdd(1, ordering: .relaxed)
            let e = sync(fd) == 0 ? 0 : errno
            tail.withLock { t in
                if e == 0 {
                    t.durableEnd = max(t.durableEnd, target)
                } else {
                    // What the failed flush covered may be on disk in part: only what an earlier one made
                    // durable stays, and the appends of the rest fail.
                    Journal.cut(&t, to: t.durableEnd)
                    t.cuts += 1
                }
            }
            if e != 0 { throw Journal.failure(e) }
        }
    }

    private static func failure(_ e: Int32) -> FSError { FSError(e, "cannot write the journal: \(String(cString: strerror(e)))") }

    /// After a failed write or fdatasync: cuts the journal back to `length` bytes (whole records). If that
    /// fails too, no later record may follow what is there: every append fails from now on (nothing more can
    /// be acknowledged).
    private static func cut(_ t: inout Tail, to length: Int64) {
        var st = stat()
        guard fstat(t.fd, &st) == 0 else {
            t.broken = errno
            return
        }
        t.end = length
        guard Int64(st.st_size) > length else { return }
        if ftruncate(t.fd, off_t(length)) == 0 {
            t.reservedTo = length  // a truncate frees the blocks past the end too
            replenish(&t)
        } else {
            t.broken = errno
        }
    }

    func append(_ r: JournalRecord) throws(FSError) { try append([r]) }

    /// `append` from async code: the write and its fdatasync run off the cooperative pool (`offPool`).
    func record(_ records: [JournalRecord]) async throws(FSError) {
        try await offPool { () throws(FSError) in try self.append(records) }
    }

    func record(_ r: JournalRecord) async throws(FSError) { try await record([r]) }

    /// Writes all of `bytes` at the file's position; returns the errno on failure.
    static func writeAll(_ f: Int32, _ bytes: [UInt8]) -> Int32? {
        do {
            _ = try bytes.withUnsafeBytes { try FileDescriptor(rawValue: f).writeAll($0) }
            return nil
        } catch {
            return (error as? Errno)?.rawValue ?? EIO
        }
    }

    /// Reads every intact record of the journal at `path`, stopping at the first torn or damaged one.
    /// Returns the records and whether a damaged tail was found.
    static func replay(path: String) -> (records: [JournalRecord], tornTail: Bool) {
        guard let data = FileManager.default.contents(atPath: path) else { return ([], false) }
        let bytes = [UInt8](data)
        var out: [JournalRecord] = []
        var p = 0
        let decoder = JSONDecoder()
        while p < bytes.count {
            guard bytes.count - p >= 12 else { return (out, true) }
            let len = Int(bytes[p..<p + 4].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
            let sum = bytes[p + 4..<p + 12].withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            guard len <= bytes.count - p - 12 else { return (out, true) }
            let payload = Array(bytes[p + 12..<p + 12 + len])
            guard XXH64.hash(payload) == sum, let r = try? decoder.decode(JournalRecord.self, from: Data(payload)) else {
                return (out, true)
            }
            out.append(r)
            p += 12 + len
        }
        return (out, false)
    }

    /// Replaces the journal at `path` with just `records` (written to a temporary file, fsynced, renamed).
    static func rewrite(path: String, _ records: [JournalRecord]) throws(FSError) {
        // The old journal's reserve (blocks allocated past its end, which stay with the file when its descriptor
        // closes) goes back first: on a cache disk that is still full after a crash, the new journal did not fit
        // beside it and the next mount failed with ENOSPC. A truncate to the file's own size frees blocks past
        // its end (ext4, XFS, tmpfs); the new journal takes its reserve in `reopen`. Nothing appends meanwhile.
        let old = open(path, O_WRONLY | O_CLOEXEC)
        if old >= 0 {
            let size = lseek(old, 0, SEEK_END)
            if size >= 0 { _ = ftruncate(old, size) }
            close(old)
        }
        if let e = replaceDurably(path, with: records.flatMap(frame)) {
            throw FSError(e, "cannot rewrite the journal \(path): \(String(cString: strerror(e)))")
        }
    }
}

/// Replaces the file at `path` with `bytes` so that a crash or a power loss leaves the old file or the new one,
/// whole: written to `PATH.tmp`, fsynced, renamed over, the directory fsynced. Returns the errno of the step that
/// failed (the old file then stays as it was), or nil.
func replaceDurably(_ path: String, with bytes: [UInt8]) -> Int32? {
    let tmp = path + ".tmp"
    let f = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard f >= 0 else { return errno }
    var failed = Journal.writeAll(f, bytes)
    if failed == nil && fsync(f) != 0 { failed = errno }
    close(f)
    if failed == nil && rename(tmp, path) != 0 { failed = errno }
    if let e = failed {
        unlink(tmp)
        return e == 0 ? EIO : e
    }
    syncDirectory(of: path)
    return nil
}

/// fsyncs the directory holding `path`, so a rename or create in it survives a power loss.
func syncDirectory(of path: String) {
    let dir = (path as NSString).deletingLastPathComponent
    let d = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if d >= 0 {
        fsync(d)
        close(d)
    }
}
