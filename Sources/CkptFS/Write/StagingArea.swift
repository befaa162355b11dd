// The staging area: the files that hold staged versions (`staging/ID` under the cache directory), and the
// file I/O on them: creating and copying versions, writing (with O_DIRECT where it pays), and the checksums
// computed over them (XXH64 for the journal, MD5 for uploads). Knows nothing of keys' histories, journals or S3.
import CkptCache
import CkptDigest
import Foundation
import Synchronization
import SystemPackage
import CkptSystem

final class StagingArea: Sendable {
    let directory: String
    /// Evicted from when the disk is full (clean blocks only).
    private let cache: BlockCache
    private let alignedBuffers = AlignedBuffers()
    /// Bytes the staged versions hold (the sum of their extents): what FSOptions.maxDirty bounds.
    private let bytes = Atomic<Int64>(0)
    /// Tasks waiting for staged bytes to go (a writer held back by the dirty bound); woken at each removal.
    private let roomWaiters = Mutex(Waiters<Void>())
    /// Signalled at each staged file removed, for a write that found the disk full (`writeAll`).
    private let removals = NSCondition()
    nonisolated(unsafe) private var removalCount = 0  // guarded by `removals`

    /// Bytes the staged versions hold now.
    var stagedBytes: Int64 { bytes.load(ordering: .relaxed) }
    /// Bytes of removed staged files that descriptors still hold open (counted in `stagedBytes` until closed).
    private let heldAfterRemoval = Atomic<Int64>(0)
    /// Whether removed staged files are still held open: their bytes go when the descriptors close.
    var freeingSoon: Bool { heldAfterRemoval.load(ordering: .relaxed) > 0 }
    /// Bytes of writes admitted and not finished (`admit`, `finished`).
    private let writing = Mutex<Int64>(0)

    /// Admits a write of `n` bytes when `fits(staged + writing + n)` says so (checked and counted under one
    /// lock, so concurrent writes cannot all pass a bound together); `finished(n)` when it is done.
    func admit(_ n: Int64, fits: (Int64) -> Bool) -> Bool {
        writing.withLock { w in
            guard fits(stagedBytes + w + n) else { return false }
            w += n
            return true
        }
    }

    /// What `admit` would count with a write of `n` bytes now.
    func committed(plus n: Int64) -> Int64 { writing.withLock { stagedBytes + $0 + n } }

    func finished(_ n: Int64) {
        writing.withLock { $0 -= n }
        wakeWaiters()
    }

    /// Counts bytes of `v` up to `end` as staged (a write or fill reached there).
    func account(_ v: StagedVersion, upTo end: Int64) {
        let delta = v.staged.withLock { s -> Int64 in
            guard !s.removed, end > s.extent else { return 0 }
            defer { s.extent = end }
            return end - s.extent
        }
        if delta > 0 { bytes.wrappingAdd(delta, ordering: .relaxed) }
    }

    /// `v` was cut to `size` bytes.
    func truncated(_ v: StagedVersion, to size: Int64) {
        let delta = v.staged.withLock { s -> Int64 in
            guard !s.removed, size < s.extent else { return 0 }
            defer { s.extent = size }
            return s.extent - size
        }
        if delta > 0 { bytes.wrappingSubtract(delta, ordering: .relaxed) }
        wakeWaiters()
    }

    /// Removes `v`'s staged file (once; later calls do nothing), closes its write descriptors and wakes writers
    /// waiting for room. Nothing writes a removed version (superseded, dropped, landed and not current, or its
    /// file's last handle closed; readers hold descriptors of their own): without the close its descriptors
    /// stayed open on the deleted file as long as something held the version, and a file kept open while
    /// it was acknowledged again and again (ftruncate, then close() of a duplicate) used up the daemon's
    /// descriptors, two per acknowledgement.
    ///
    /// The file's bytes stay counted while descriptors `open` gave are still open on it (a save being entered
    /// in the block cache, an upload of a superseded version): its space on the disk is freed at the last close.
    func remove(_ v: StagedVersion) {
        // nil: removed before; 0: freed at the last close of a descriptor still open.
        let freedNow = v.staged.withLock { s -> Int64? in
            guard !s.removed else { return nil }
            s.removed = true
            guard s.openDescriptors == 0 else {
                let extent = s.extent
                heldAfterRemoval.wrappingAdd(extent, ordering: .relaxed)
                s.whenClosed = { [weak self] in
                    self?.heldAfterRemoval.wrappingSubtract(extent, ordering: .relaxed)
                    self?.freed(extent)
                }
                return 0
            }
            return s.extent
        }
        guard let freedNow else { return }
        Glibc.unlink(v.path)
        v.closeWriters()  // after the unlink: a stray `fd` in between cannot open the file again
        v.state.withLock { $0.fallback = nil }  // a removed version stands for nothing, and keeps nothing alive
        freed(freedNow)
    }

    /// `n` bytes of a removed staged file left the disk: writers waiting for room check again.
    private func freed(_ n: Int64) {
        bytes.wrappingSubtract(n, ordering: .relaxed)
        removals.lock()
        removalCount += 1
        removals.broadcast()
        removals.unlock()
        wakeWaiters()
    }

    /// Waits until `waiting` is false, checking it again at each wake-up (`wakeWaiters`: every removal and
    /// truncation here, and whatever else the caller's condition depends on must call it too). No wake-up is
    /// lost: the condition is checked after the waiter is registered.
    func wait(while waiting: @escaping @Sendable () -> Bool) async {
        while waiting() {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ticket = roomWaiters.withLock { $0.add(c) }
                if !waiting() { roomWaiters.withLock { $0.remove(ticket) }?.resume() }
            }
        }
    }

    /// Wakes every writer waiting for room (they check again).
    func wakeWaiters() {
        for w in roomWaiters.withLock({ $0.removeAll() }) { w.resume() }
    }

    /// What the running checksums of the files being written hold in memory together (writes waiting past a
    /// gap; RunningChecksum.maxHeldTotal).
    let heldSums = HeldBudget(limit: RunningChecksum.maxHeldTotal)

    /// The part layout whose CRC32C the running checksums of files being written compute (the multipart part
    /// size, when parts carry their CRC32C: `FSOptions.partChecksums`), or nil.
    let partChecksums: Int64?

    /// The staging area in `cache`'s directory (created if missing).
    init(cache: BlockCache, partChecksums: Int64? = nil) {
        directory = cache.directory + "/staging"
        self.cache = cache
        self.partChecksums = partChecksums
        Glibc.mkdir(directory, 0o700)
    }

    func path(_ id: UInt64) -> String { "\(directory)/\(id)" }

    /// The ids of the staged files present (recovery).
    func ids() -> [UInt64] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).compactMap { UInt64($0) }
    }

    /// Removes every staged file whose id is not in `keep` (recovery: what nobody acknowledged, or what landed).
    func removeAll(except keep: Set<UInt64>) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            if let id = UInt64(name), keep.contains(id) { continue }
            Glibc.unlink("\(directory)/\(name)")
        }
    }

    /// A new, empty staged version `id` of `key`, open for writing.
    func create(id: UInt64, key: String, mtime: Date = Date()) throws(FSError) -> StagedVersion {
        let path = path(id)
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FSError(errno, "cannot create \(path): \(String(cString: strerror(errno)))") }
        return StagedVersion(id: id, path: path, fd: fd, key: key, size: 0, mtime: mtime, writable: true, sums: heldSums,
                             partSize: partChecksums)
    }

    /// A copy of `source` as version `id`: its bytes, size, mtime and in-place state (blocks still in S3 stay to
    /// be fetched from the same base; only the bytes already here are copied).
    func copy(_ source: StagedVersion, id: UInt64) throws(FSError) -> StagedVersion {
        let v = try create(id: id, key: source.key)
        let (size, mtime, base, missing, limit, differs) = source.state.withLock {
            ($0.size, $0.mtime, $0.base, $0.missing, $0.baseLimit, $0.differsFromBase)
        }
        do throws(FSError) {
            let from = try source.open()
            try copyFile(from: from.rawValue, to: v.fd, size: size)
            withExtendedLifetime(from) {}
        } catch {
            remove(v)
            throw error
        }
        account(v, upTo: size)
        v.state.withLock { s in
            s.size = size
            s.mtime = mtime
            s.sum = nil
            s.base = base
            s.missing = missing
            s.baseLimit = limit
            s.differsFromBase = differs
        }
        return v
    }

    /// Bytes the staged files take on disk (allocated blocks: sparse staged files count what they hold).
    func diskUsage() -> Int64 { StagingArea.diskUsage(of: directory) }

    static func diskUsage(of directory: String) -> Int64 {
        var total: Int64 = 0
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            var st = stat()
            if lstat(directory + "/" + name, &st) == 0 { total += Int64(st.st_blocks) * 512 }
        }
        return total
    }

    /// Reads the first `size` bytes of `fd` in 1 MiB pieces, handing each to `body` with its offset.
    static func forEachChunk(of fd: Int32, size: Int64, _ body: (UnsafeRawBufferPointer, Int64) throws(FSError) -> Void) throws(FSError) {
        try forEachChunk(of: fd, range: 0..<size, body)
    }

    /// `forEachChunk(of:size:)` over bytes `range` of `fd` only (a part of a multipart upload); `body` gets
    /// each chunk and its offset in the file.
    static func forEachChunk(of fd: Int32, range: Range<Int64>, _ body: (UnsafeRawBufferPointer, Int64) throws(FSError) -> Void) throws(FSError) {
        // 1 MiB, or the range's size in whole pages when smaller: a small file's buffer then comes from malloc's
        // heap (the daemon maps blocks of 256 KiB and more on their own, and every page of those is faulted in
        // afresh).
        let size = Int64(range.count)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(1 << 20, max(4096, (size + 4095) & ~4095))), alignment: 4096)
        defer { buf.deallocate() }
        var off = range.lowerBound
        while off < range.upperBound {
            let want = UnsafeMutableRawBufferPointer(rebasing: buf[0..<min(buf.count, Int(range.upperBound - off))])
            let n: Int
            do { n = try FileDescriptor(rawValue: fd).readAll(fromAbsoluteOffset: off, into: want) } catch {
                throw FSError(error.rawValue, "reading a staged file: \(error)")
            }
            guard n > 0 else { throw FSError(EIO, "reading a staged file: it is shorter than recorded") }
            try body(UnsafeRawBufferPointer(rebasing: buf[0..<n]), off)
            off += Int64(n)
        }
    }

    func copyFile(from src: Int32, to dst: Int32, size: Int64) throws(FSError) {
        try StagingArea.forEachChunk(of: src, size: size) { (chunk, off) throws(FSError) in try writeAll(dst, chunk, at: off) }
        if ftruncate(dst, off_t(size)) != 0 { throw FSError(errno, "ftruncate") }
    }

    /// Writes to a staged file. Large page-aligned writes (at least `directWriteMinimum`: the kernel's
    /// write-back of a checkpoint stream, 1 MiB at a time) go with O_DIRECT: no second copy into the page
    /// cache, and nothing left to flush at close(). Others (a small file, whose upload then reads it back from
    /// the page cache rather than the disk, and whose close() flushes it with its size in one fsync), and every
    /// write where the filesystem refuses O_DIRECT (tmpfs), go through the page cache; the kernel keeps the two
    /// coherent.
    func write(_ v: StagedVersion, _ data: UnsafeRawBufferPointer, at offset: Int64) throws(FSError) {
        defer { account(v, upTo: offset + Int64(data.count)) }
        let page = 4096
        guard offset % Int64(page) == 0, data.count % page == 0, data.count >= StagingArea.directWriteMinimum,
              v.direct.load(ordering: .relaxed), v.directFd >= 0 else {
            return try writeAll(v.fd, data, at: offset)
        }
        // The request's bytes follow its header in libfuse's buffer: copy them to an aligned one (reused: a
        // fresh megabyte per write would cost more in page faults than the copy to the page cache saves).
        let buf = alignedBuffers.take(data.count)
        defer { alignedBuffers.give(buf) }
        let chunk = UnsafeMutableRawBufferPointer(rebasing: buf[0..<data.count])
        chunk.copyMemory(from: data)
        do throws(FSError) {
            try writeAll(v.directFd, UnsafeRawBufferPointer(chunk), at: offset)
        } catch where error.errno == EINVAL {
            v.direct.store(false, ordering: .relaxed)
            try writeAll(v.fd, data, at: offset)
        }
    }

    /// Smallest write sent with O_DIRECT (`write`).
    static let directWriteMinimum = 256 << 10

    /// pwrite that, when the disk is full, evicts clean cache blocks and tries again before giving up with
    /// ENOSPC. Dirty data is never evicted.
    func writeAll(_ fd: Int32, _ data: UnsafeRawBufferPointer, at offset: Int64) throws(FSError) {
        let file = FileDescriptor(rawValue: fd)
        do {
            _ = try file.writeAll(toAbsoluteOffset: offset, data)
        } catch let e as Errno where e == .noSpace || e == .diskQuotaExceeded {
            // The disk is full: evict clean cache blocks (dirty data never) and write again; while it stays
            // full, wait (up to 2 s) for staged files to go (a failed save dropped at its release, which the
            // kernel sends after close() returns; an upload that lands) and write again after each. A write that
            // landed in part is written again whole: the same bytes at the same offsets.
            cache.makeRoom(Int64(data.count) + (64 << 20))
            let deadline = Date() + 2
            while true {
                removals.lock()
                let seen = removalCount
                removals.unlock()
                do {
                    _ = try file.writeAll(toAbsoluteOffset: offset, data)
                    return
                } catch let e as Errno where (e == .noSpace || e == .diskQuotaExceeded) && Date() < deadline {
                    removals.lock()
                    while removalCount == seen && removals.wait(until: deadline) {}
                    removals.unlock()
                } catch {
                    let e = (error as? Errno)?.rawValue ?? EIO
                    throw FSError(e, "writing to the staging area \(directory): \(String(cString: strerror(e)))")
                }
            }
        } catch {
            let e = (error as? Errno)?.rawValue ?? EIO
            throw FSError(e, "writing to the staging area \(directory): \(String(cString: strerror(e)))")
        }
    }

    /// XXH64 of the first `size` bytes of `fd`, counting blocks in `missing` (of an in-place file) as zeros:
    /// they may be filled from S3 after the checksum is journaled, and that must not make the record fail.
    /// `blockSize`: the size of those blocks (the cache block size).
    static func checksum(fd: Int32, size: Int64, missing: Set<Int64> = [], blockSize: Int64) throws(FSError) -> UInt64 {
        var h = XXH64()
        if missing.isEmpty {
            try StagingArea.forEachChunk(of: fd, size: size) { chunk, _ in h.update(chunk) }
            return h.finalize()
        }
        let bs = blockSize
        let zeros = [UInt8](repeating: 0, count: Int(bs))
        try StagingArea.forEachChunk(of: fd, size: size) { chunk, off in
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

    /// The first `size` bytes of `fd`, read into memory; throws EIO when the file is shorter.
    static func read(fd: Int32, size: Int64) throws(FSError) -> [UInt8] {
        var failure: FSError?
        let bytes = [UInt8](unsafeUninitializedCapacity: Int(size)) { buf, count in
            do throws(Errno) {
                let n = try FileDescriptor(rawValue: fd).readAll(fromAbsoluteOffset: 0, into: UnsafeMutableRawBufferPointer(buf))
                if n < Int(size) { failure = FSError(EIO, "reading a staged file: it is shorter than recorded") }
                count = n
            } catch {
                failure = FSError(error.rawValue, "reading a staged file: \(error)")
                count = 0
            }
        }
        if let failure { throw failure }
        return bytes
    }

    /// MD5 of the first `size` bytes of `fd` (Content-MD5 of a single PUT, and its ETag).
    static func md5(of fd: Int32, size: Int64) throws(FSError) -> [UInt8] { try md5(of: fd, range: 0..<size) }

    /// The MD5 of bytes `range` of `fd`. Errors: reading the
    /// staged file (its errno), or it is shorter than `range` (EIO).
    static func md5(of fd: Int32, range: Range<Int64>) throws(FSError) -> [UInt8] {
        var md5 = StreamingDigest(.md5)
        try StagingArea.forEachChunk(of: fd, range: range) { chunk, _ in md5.update(chunk) }
        return md5.finalize()
    }

    /// The CRC32C of bytes `range` of `fd` (a part of a multipart upload: its `x-amz-checksum-crc32c`).
    /// Errors: as `md5(of:range:)`.
    static func crc32c(of fd: Int32, range: Range<Int64>) throws(FSError) -> UInt32 {
        var crc = CRC32C()
        try StagingArea.forEachChunk(of: fd, range: range) { chunk, _ in crc.update(chunk) }
        return crc.value
    }

    /// The ETag S3 gives this file when uploaded in `parts`: the MD5 for one PUT, else the MD5 of the parts'
    /// MD5s and "-count".
    static func localETag(fd: Int32, parts: [Range<Int64>]) throws(FSError) -> String {
        let size = parts.last?.upperBound ?? 0
        if parts.count <= 1 { return try StagingArea.md5(of: fd, size: size).hexString }
        var sums: [UInt8] = []
        var md5 = StreamingDigest(.md5)
        var part = 0
        try StagingArea.forEachChunk(of: fd, size: size) { chunk, off in
            var at = 0
            while at < chunk.count {
                let n = min(chunk.count - at, Int(parts[part].upperBound - (off + Int64(at))))
                md5.update(UnsafeRawBufferPointer(rebasing: chunk[at..<(at + n)]))
                at += n
                if off + Int64(at) == parts[part].upperBound {
                    sums += md5.finalize()
                    md5 = StreamingDigest(.md5)
                    part += 1
                }
            }
        }
        var all = StreamingDigest(.md5)
        sums.withUnsafeBytes { all.update($0) }
        return all.finalize().hexString + "-\(parts.count)"
    }
}
