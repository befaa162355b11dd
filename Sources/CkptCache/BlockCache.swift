// A persistent, checksummed, size-bounded block cache on local disk.
//
// Objects are cached in fixed-size blocks keyed by (bucket, key, ETag, block index), so a changed object
// (new ETag) never hits an old block. Each block is one file, `blocks/HH/HASH-INDEX`, holding a 4 KiB header
// page (magic, block index, length, hash of bucket/key/ETag, XXH64 checksum of the data) and the data. Whole
// pages are written with O_DIRECT where the filesystem allows: a cold stream then costs no copy into the page
// cache (on a small machine that copy costs as much CPU as the download itself). A block
// is checked against its header and checksum the first time it is served in a process; a block that
// fails is deleted and reported as a miss, so it is fetched again and never served damaged.
//
// The index of blocks lives in memory and is rebuilt from the directory at start, so the cache survives
// unmount, remount and restarts. Eviction is least-recently-used down to 90% of capacity. A lock file
// (flock) keeps a second process from using the same directory at once.
//
// Blocks can also be entered from a file written here that landed in S3 (`seed`): saves nobody has read yet
// take at most `seedBound` (half of what the cache holds after eviction) between them, the oldest unread
// going first, so a save never pushes the blocks readers use below half of the cache.
import CkptDigest
import CkptSystem
import Foundation
import Synchronization
import SystemPackage

/// Identifies one block of one version of one object.
public struct BlockKey: Hashable, Sendable {
    public var bucket: String
    public var key: String
    public var etag: String
    public var index: Int64

    public init(bucket: String, key: String, etag: String, index: Int64) {
        self.bucket = bucket
        self.key = key
        self.etag = etag
        self.index = index
    }

    /// Keys are bytes (S3): two keys that are the same text in other Unicode encodings are two objects, which
    /// String's `==` and hash would take for one.
    public static func == (a: BlockKey, b: BlockKey) -> Bool {
        a.index == b.index && a.etag == b.etag && a.key.utf8.elementsEqual(b.key.utf8) && a.bucket == b.bucket
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(index)
        hasher.combine(etag)
        var k = key  // withUTF8 is mutating: a native String hands its storage over without a copy
        k.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        hasher.combine(bucket)
    }

    /// Hash of (bucket, key, ETag): the part of the file name shared by all blocks of an object version.
    var objectHash: [UInt8] {
        var d = StreamingDigest(.sha256)
        d.update(Array(bucket.utf8)); d.update([0])
        d.update(Array(key.utf8)); d.update([0])
        d.update(Array(etag.utf8))
        return d.finalize()
    }
}

/// A cache failure the user must act on.
public struct CacheError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// When the directory is in use: the process id its lock file names (the mount or preload holding it).
    public var holder: Int32?
    public init(_ message: String, holder: Int32? = nil) {
        self.message = message
        self.holder = holder
    }
    public var description: String { message }
}

/// Counters, cumulative for the life of the cache object.
public struct CacheStats: Sendable, Equatable {
    public var hits: Int = 0
    public var misses: Int = 0
    public var bytesServed: Int64 = 0
    public var bytesStored: Int64 = 0
    public var evictions: Int = 0
    /// Blocks that failed their check and were discarded.
    public var corruptBlocks: Int = 0
    /// Stores skipped because the disk was full (the data was still served).
    public var storeFailures: Int = 0
    /// Blocks entered from saves that landed (`seed`), and the bytes (header pages included) of those not read
    /// since, which `seedBound` bounds.
    public var seededBlocks: Int = 0
    public var unreadSeededBytes: Int64 = 0
    public var usedBytes: Int64 = 0
    public var blocks: Int = 0
    public init() {}
}

/// A cached block opened for reading: the data is `length` bytes at `offset` in `fd`. Close `fd` when done.
public struct OpenBlock: Sendable {
    public var fd: Int32
    public var offset: Int64
    public var length: Int
}

/// A page-aligned block of bytes in memory, shared read-only once filled (a block on its way from the network
/// to readers and to the cache).
public final class BlockBuffer: @unchecked Sendable {
    private let storage: UnsafeMutableRawBufferPointer
    public private(set) var count = 0

    /// Freed buffers are reused: a fresh 1 MiB allocation costs page faults and zeroing on every block, which
    /// at network speed is a good part of a core.
    /// (address, size) of free buffers.
    private static let pool = Mutex<[(Int, Int)]>([])
    /// Most free buffers kept. Kept buffers stay resident: a burst of downloads (many readers, a preload)
    /// would otherwise leave the daemon that much larger for good (256 allowed 256 MiB; bench/load.py's whole
    /// RSS bound is 256 MiB). 32 cover the steady state of a stream's fetches at 16 MiB GETs.
    private static let poolLimit = 32

    public init(capacity: Int) {
        let n = max(capacity, 1)
        let reused = BlockBuffer.pool.withLock { p -> Int? in
            guard let i = p.lastIndex(where: { $0.1 == n }) else { return nil }
            return p.remove(at: i).0
        }
        if let reused, let base = UnsafeMutableRawPointer(bitPattern: reused) {
            storage = UnsafeMutableRawBufferPointer(start: base, count: n)
        } else {
            storage = .allocate(byteCount: n, alignment: 4096)
        }
    }

    deinit {
        let entry = (Int(bitPattern: storage.baseAddress), storage.count)
        let kept = BlockBuffer.pool.withLock { p in
            guard p.count < BlockBuffer.poolLimit else { return false }
            p.append(entry)
            return true
        }
        if !kept { storage.deallocate() }
    }

    public var capacity: Int { storage.count }
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[0..<count]) }

    /// Appends as much of `src` as fits; returns how much that was. Only the filler calls this.
    public func append(_ src: UnsafeRawBufferPointer) -> Int {
        let n = min(storage.count - count, src.count)
        if n > 0 { (storage.baseAddress! + count).copyMemory(from: src.baseAddress!, byteCount: n) }
        count += n
        return n
    }

    public var isFull: Bool { count == storage.count }

    /// Set when a sequential reader has read the block to its end: it will not be asked for again (the
    /// kernel's page cache has it), so nobody needs to keep it in memory.
    public let consumed = Atomic<Bool>(false)
}

public final class BlockCache: Sendable {
    public let directory: String
    public let capacity: Int64
    public let blockSize: Int
    /// The header fills one page so the data starts page-aligned (O_DIRECT writes need that).
    static let headerSize = 4096
    static let magic: [UInt8] = Array("CKPTBLK3".utf8)
    /// Cleared once the filesystem refuses O_DIRECT (tmpfs, some FUSE filesystems).
    private let directIO = Atomic<Bool>(true)

    struct Entry {
        var size: Int64
        var lastUse: UInt64
        var verified: Bool
        /// Entered from a save (`seed`) and not read since (in this process).
        var seeded = false
    }

    struct State {
        var entries: [String: Entry] = [:]
        var clock: UInt64 = 0
        var stats = CacheStats()

        /// The block indices stored of each object version, by the part of their names they share ("hh/<38
        /// hex>"): `removeVersion` finds a version's blocks without the object's size.
        var blocksOf: [Substring: Set<Int64>] = [:]

        /// Enters `name` ("hh/<38 hex>-INDEX") in the index as `e`.
        mutating func addEntry(_ name: String, _ e: Entry) {
            entries[name] = e
            if let (object, index) = State.parse(name) { blocksOf[object, default: []].insert(index) }
        }

        /// The object part and block index of a block's name.
        static func parse(_ name: String) -> (Substring, Int64)? {
            guard let dash = name.lastIndex(of: "-"), let index = Int64(name[name.index(after: dash)...]) else { return nil }
            return (Substring(String(name[..<dash])), index)
        }

        /// Removes entry `name` from the index (its file is the caller's to unlink); returns it.
        @discardableResult
        mutating func removeEntry(_ name: String) -> Entry? {
            guard let e = entries.removeValue(forKey: name) else { return nil }
            if let (object, index) = State.parse(name) {
                blocksOf[object]?.remove(index)
                if blocksOf[object]?.isEmpty == true { blocksOf.removeValue(forKey: object) }
            }
            stats.usedBytes -= e.size
            if e.seeded { stats.unreadSeededBytes -= e.size }
            stats.blocks = entries.count
            return e
        }

        /// Entry `name` was read: it is no longer an unread save's.
        mutating func markRead(_ name: String) {
            guard let e = entries[name], e.seeded else { return }
            entries[name]?.seeded = false
            stats.unreadSeededBytes -= e.size
        }

        /// Object versions whose blocks are never evicted or removed, by the part of their blocks' names they
        /// share ("hh/<38 hex>"), with how many holds each has (`hold(_:)`).
        var held: [Substring: Int] = [:]

        /// Whether the block stored under `rel` belongs to a held object version.
        func isHeld(_ rel: String) -> Bool {
            guard !held.isEmpty, let dash = rel.lastIndex(of: "-") else { return false }
            return held[rel[..<dash]] != nil
        }
    }

    private let state = Mutex(State())
    private let lockFD: Int32
    private let unlocked = Atomic<Bool>(false)

    /// Opens (or creates, mode 0700) the cache in `directory`, bounded by `capacity` bytes.
    public init(directory: String, capacity: Int64, blockSize: Int = 1 << 20) throws(CacheError) {
        self.directory = directory
        self.capacity = capacity
        self.blockSize = blockSize
        let blocks = directory + "/blocks"
        do {
            try FileManager.default.createDirectory(atPath: blocks, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
        } catch {
            throw CacheError("cannot create the cache directory \(directory): \(error.localizedDescription); "
                + "choose another with --cache-dir")
        }
        let fd = Glibc.open(directory + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CacheError("cannot open \(directory)/lock: \(String(cString: strerror(errno)))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            var pid = [UInt8](repeating: 0, count: 31)
            let n = (try? pid.withUnsafeMutableBytes { b throws(Errno) in try FileDescriptor(rawValue: fd).readAll(fromAbsoluteOffset: 0, into: b) }) ?? 0
            close(fd)
            let holder = Int32(String(decoding: pid[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            throw CacheError("the cache directory \(directory) is in use by another ckptfs mount\(holder.map { " (process \($0))" } ?? ""); "
                + "unmount it first, or give this mount its own --cache-dir", holder: holder)
        }
        ftruncate(fd, 0)
        _ = try? FileDescriptor(rawValue: fd).writeAll(toAbsoluteOffset: 0, Array("\(getpid())\n".utf8))
        lockFD = fd
        rebuildIndex()
    }

    deinit {
        unlock()
        for b in checkBuffers.withLock({ $0.buffers }) { b.deallocate() }
    }

    /// Buffers for checking blocks' data (`verifyHeader`), kept for the next check: a fresh 1 MiB array per
    /// check was zero-filled and faulted in page by page, a third of the daemon's CPU on a cached load after a
    /// remount (perf, bench/README issue 19). At most 4 are kept (reads run a few at a time).
    private struct CheckBuffers: @unchecked Sendable { var buffers: [UnsafeMutableRawBufferPointer] = [] }
    private let checkBuffers = Mutex(CheckBuffers())

    private func withCheckBuffer<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R {
        let b = checkBuffers.withLock { $0.buffers.popLast() }
            ?? UnsafeMutableRawBufferPointer.allocate(byteCount: max(blockSize, 1), alignment: 4096)
        defer {
            let kept = checkBuffers.withLock { c -> Bool in
                guard c.buffers.count < 4 else { return false }
                c.buffers.append(b)
                return true
            }
            if !kept { b.deallocate() }
        }
        return body(b)
    }

    /// Gives up the directory (another process may open it); this object must not be used afterwards.
    public func unlock() {
        if !unlocked.exchange(true, ordering: .relaxed) { close(lockFD) }
    }

    /// Scans the directory: every block file becomes an entry, oldest modification first in LRU order.
    private func rebuildIndex() {
        let root = directory + "/blocks"
        var found: [(String, Int64, Double)] = []
        let fm = FileManager.default
        for sub in (try? fm.contentsOfDirectory(atPath: root)) ?? [] {
            for name in (try? fm.contentsOfDirectory(atPath: "\(root)/\(sub)")) ?? [] {
                let path = "\(root)/\(sub)/\(name)"
                if name.hasSuffix(".tmp") { unlink(path); continue }
                var st = stat()
                guard stat(path, &st) == 0 else { continue }
                found.append(("\(sub)/\(name)", Int64(st.st_size), Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9))
            }
        }
        found.sort { $0.2 < $1.2 }
        state.withLock { s in
            for (name, size, _) in found {
                s.clock += 1
                s.addEntry(name, Entry(size: size, lastUse: s.clock, verified: false))
                s.stats.usedBytes += size
            }
            s.stats.blocks = s.entries.count
        }
    }

    func relativePath(_ k: BlockKey) -> String { "\(objectPart(k))-\(k.index)" }

    /// The part of a block's file name that its object version's blocks share ("hh/<38 hex>", before "-INDEX").
    private func objectPart(_ k: BlockKey) -> String {
        let h = k.objectHash.hexString
        return "\(h.prefix(2))/\(h.dropFirst(2).prefix(38))"
    }

    /// Whether the block is in the cache (without checking it).
    public func contains(_ k: BlockKey) -> Bool {
        let rel = relativePath(k)
        return state.withLock { $0.entries[rel] != nil }
    }

    /// Opens a cached block for reading, checking it the first time. Nil on a miss or a damaged block.
    public func open(_ k: BlockKey) -> OpenBlock? {
        let rel = relativePath(k)
        let known = state.withLock { s -> Entry? in
            guard var e = s.entries[rel] else {
                s.stats.misses += 1
                return nil
            }
            s.clock += 1
            e.lastUse = s.clock
            s.entries[rel] = e
            return e
        }
        guard let entry = known else { return nil }
        let path = "\(directory)/blocks/\(rel)"
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            drop(rel, path: path)
            state.withLock { $0.stats.misses += 1 }
            return nil
        }
        guard let length = verifyHeader(fd: fd, key: k, checkData: !entry.verified) else {
            discardDamaged(rel, path: path, fd: fd)
            close(fd)
            state.withLock { $0.stats.misses += 1 }
            return nil
        }
        state.withLock { s in
            s.entries[rel]?.verified = true
            s.markRead(rel)
            s.stats.hits += 1
            s.stats.bytesServed += Int64(length)
        }
        return OpenBlock(fd: fd, offset: Int64(BlockCache.headerSize), length: length)
    }

    /// Whether the block is cached and sound: its header matches `k` and, the first time in this process, its
    /// data matches its checksum (read from disk). A damaged block is deleted (and counted in `corruptBlocks`).
    /// A sound block counts as just used, so eviction takes it last. Neither a hit nor a miss: preload asks this
    /// for blocks nobody is reading. Blocks: reads the block from disk once per process, so call it off the
    /// cooperative pool.
    public func verify(_ k: BlockKey) -> Bool {
        let rel = relativePath(k)
        let known = state.withLock { s -> Entry? in
            guard var e = s.entries[rel] else { return nil }
            s.clock += 1
            e.lastUse = s.clock
            s.entries[rel] = e
            return e
        }
        guard let entry = known else { return false }
        let path = "\(directory)/blocks/\(rel)"
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            drop(rel, path: path)
            return false
        }
        defer { close(fd) }
        guard verifyHeader(fd: fd, key: k, checkData: !entry.verified) != nil else {
            discardDamaged(rel, path: path, fd: fd)
            return false
        }
        // Preload asks for it: someone means to read it.
        state.withLock { s in
            s.entries[rel]?.verified = true
            s.markRead(rel)
        }
        return true
    }

    /// Keeps every block of the object version `k` names (its `index` is ignored) from eviction and `remove`
    /// until as many `release(_:)` calls: a descriptor still reads it after this mount deleted or replaced it
    /// in S3, so the cache holds the only copy it can read (S-UNLINK-OPEN-CLEAN). Held blocks count in
    /// `usedBytes`; while they exceed `capacity`, the cache stays over its bound rather than drop them.
    public func hold(_ k: BlockKey) {
        let object = Substring(objectPart(k))
        state.withLock { $0.held[object, default: 0] += 1 }
    }

    /// Ends one `hold(_:)` of `k`'s object version; at the last, its blocks are evicted like any others.
    public func release(_ k: BlockKey) {
        let object = Substring(objectPart(k))
        let victims = state.withLock { s -> [String] in
            guard let n = s.held[object] else { return [] }
            if n <= 1 { s.held.removeValue(forKey: object) } else { s.held[object] = n - 1 }
            return chooseVictims(&s)
        }
        for v in victims { unlink("\(directory)/blocks/\(v)") }
    }

    /// How many object versions are held (`hold(_:)`).
    public var heldVersions: Int { state.withLock { $0.held.count } }

    /// Deletes the block if it is cached and not held; returns the bytes that freed on disk (0 when it was not
    /// cached, or is held).
    @discardableResult
    public func remove(_ k: BlockKey) -> Int64 {
        let rel = relativePath(k)
        let freed = state.withLock { s -> Int64 in
            guard !s.isHeld(rel) else { return 0 }
            return s.removeEntry(rel)?.size ?? 0
        }
        if freed > 0 { unlink("\(directory)/blocks/\(rel)") }
        return freed
    }

    /// Deletes every cached block of the object version `k` names (its `index` is ignored) unless the version is
    /// held: S3 no longer has that version under its key (this mount replaced or deleted it), so no read can
    /// ask for its blocks again. Returns the bytes freed on disk. Without it, each replaced save stayed in the
    /// cache until eviction, up to the share for saves (`seedBound`), pushing out blocks readers still use.
    @discardableResult
    public func removeVersion(_ k: BlockKey) -> Int64 {
        let object = Substring(objectPart(k))
        let (names, freed) = state.withLock { s -> ([String], Int64) in
            guard s.held[object] == nil, let indices = s.blocksOf[object] else { return ([], 0) }
            var names: [String] = [], freed: Int64 = 0
            for i in indices {
                let rel = "\(object)-\(i)"
                if let e = s.removeEntry(rel) {
                    freed += e.size
                    names.append(rel)
                }
            }
            return (names, freed)
        }
        for rel in names { unlink("\(directory)/blocks/\(rel)") }
        return freed
    }

    /// Bytes a block of `length` data bytes takes in the cache (its header page and its data): the unit of
    /// `capacity`, `usedBytes` and `fillBound`.
    public static func storedSize(_ length: Int64) -> Int64 { Int64(headerSize) + length }

    /// Bytes an object (or file) of `size` bytes takes in the cache once all its blocks are stored: each
    /// block with its header page.
    public func storedSize(ofObject size: Int64) -> Int64 {
        let blocks = (size + Int64(blockSize) - 1) / Int64(blockSize)
        return size + blocks * BlockCache.storedSize(0)
    }

    /// The most the cache holds once it has evicted (90% of `capacity`): blocks stored within this bound are
    /// never evicted to make room for each other, so a preload that stays under it does not evict what it
    /// stored itself.
    public var fillBound: Int64 { capacity - capacity / 10 }

    /// The most that blocks entered from saves (`seed`) and not read since take between them: half of
    /// `fillBound`. A save larger than this is not entered at all (`canSeed`).
    public var seedBound: Int64 { fillBound / 2 }

    /// Whether a save of `size` bytes fits under `seedBound` (its blocks with their header pages).
    public func canSeed(size: Int64) -> Bool { size > 0 && storedSize(ofObject: size) <= seedBound }

    /// Asks the kernel to read a cached block into the page cache in the background (read-ahead for blocks
    /// that are on disk).
    public func prefetch(_ k: BlockKey) {
        let fd = Glibc.open("\(directory)/blocks/\(relativePath(k))", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED)
        close(fd)
    }

    /// Reads a cached block into memory. Nil on a miss or a damaged block.
    public func read(_ k: BlockKey) -> [UInt8]? {
        guard let b = open(k) else { return nil }
        defer { close(b.fd) }
        var out = [UInt8](repeating: 0, count: b.length)
        let n = try? out.withUnsafeMutableBytes { buf throws(Errno) in
            try FileDescriptor(rawValue: b.fd).readAll(fromAbsoluteOffset: b.offset, into: buf)
        }
        return n == b.length ? out : nil
    }

    /// Checks the header (and with `checkData` the CRC of the data); returns the data length if good.
    func verifyHeader(fd: Int32, key k: BlockKey, checkData: Bool) -> Int? {
        var header = [UInt8](repeating: 0, count: BlockCache.headerSize)
        let file = FileDescriptor(rawValue: fd)
        guard (try? header.withUnsafeMutableBytes({ b throws(Errno) in try file.readAll(fromAbsoluteOffset: 0, into: b) })) == header.count
        else { return nil }
        guard Array(header[0..<8]) == BlockCache.magic else { return nil }
        let index = header[8..<16].withUnsafeBytes { $0.loadUnaligned(as: Int64.self) }
        let length = Int(header[16..<20].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        let checksum = header[56..<64].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        guard header[64...].allSatisfy({ $0 == 0 }) else { return nil }
        guard index == k.index, Array(header[24..<56]) == k.objectHash, length <= blockSize else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, Int(st.st_size) == BlockCache.headerSize + length else { return nil }
        if checkData {
            let sound = withCheckBuffer { buffer -> Bool in
                let data = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
                guard (try? file.readAll(fromAbsoluteOffset: Int64(BlockCache.headerSize), into: data)) == length else { return false }
                return XXH64.hash(UnsafeRawBufferPointer(data)) == checksum
            }
            guard sound else { return nil }
        }
        return length
    }

    /// Stores a block (written to a temporary file, fsync-free, then renamed into place). A full disk is
    /// not an error for the caller: the block is simply not cached and the counter says so.
    @discardableResult
    public func store(_ k: BlockKey, _ data: UnsafeRawBufferPointer) -> Bool {
        store(k, data, seeded: false)
    }

    /// Enters block `k` of a save that landed in S3 under `k.etag`, holding `data` (the caller vouches that
    /// these are the bytes S3 holds there; the block gets its checksum like any other). Unread saves' blocks
    /// are kept under `seedBound`: the least recently stored of them are evicted first to make room. Returns
    /// false when it was not stored (a full disk, or a block larger than `seedBound`). A block already cached
    /// is left as it is (true).
    @discardableResult
    public func seed(_ k: BlockKey, _ data: UnsafeRawBufferPointer) -> Bool {
        if contains(k) { return true }
        guard BlockCache.storedSize(Int64(data.count)) <= seedBound else { return false }
        return store(k, data, seeded: true)
    }

    private func store(_ k: BlockKey, _ data: UnsafeRawBufferPointer, seeded: Bool) -> Bool {
        precondition(data.count <= blockSize, "block larger than the block size")
        let rel = relativePath(k)
        let dir = "\(directory)/blocks/\(rel.prefix(2))"
        let path = "\(directory)/blocks/\(rel)"
        let tmp = "\(path).\(UInt32.random(in: 0...UInt32.max)).tmp"
        // The header page, page-aligned for O_DIRECT.
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: BlockCache.headerSize, alignment: 4096)
        defer { header.deallocate() }
        header.initializeMemory(as: UInt8.self, repeating: 0)
        header.copyBytes(from: BlockCache.magic)
        header.storeBytes(of: k.index, toByteOffset: 8, as: Int64.self)
        header.storeBytes(of: UInt32(data.count), toByteOffset: 16, as: UInt32.self)
        UnsafeMutableRawBufferPointer(rebasing: header[24..<56]).copyBytes(from: k.objectHash)
        header.storeBytes(of: XXH64.hash(data), toByteOffset: 56, as: UInt64.self)
        // Whole blocks only: a smaller block is a small file (or a file's last block), read soon and whole, for
        // which the copy into the page cache costs little and saves what O_DIRECT costs here: each store
        // waiting for the disk (on the writer's two queues, and inline on the caller's thread beyond their
        // limit), and the read that follows going to the disk.
        let aligned = Int(bitPattern: data.baseAddress) % 4096 == 0 && data.count % 4096 == 0 && data.count == blockSize
        func create() throws(Errno) -> FileDescriptor {
            let options: FileDescriptor.OpenOptions = [.create, .truncate, .closeOnExec]
            do {
                if aligned && directIO.load(ordering: .relaxed) {
                    do {
                        return try FileDescriptor.open(tmp, .writeOnly, options: options.union(.direct), permissions: .ownerReadWrite)
                    } catch Errno.invalidArgument {
                        directIO.store(false, ordering: .relaxed)
                    }
                }
                return try FileDescriptor.open(tmp, .writeOnly, options: options, permissions: .ownerReadWrite)
            } catch {
                throw error as? Errno ?? .ioError
            }
        }
        func createInDirectory() throws(Errno) -> FileDescriptor {
            do { return try create() } catch Errno.noSuchFileOrDirectory {
                mkdir(dir, 0o700)
                return try create()
            }
        }
        guard let file = try? createInDirectory() else { return storeFailed() }
        let written = (try? file.writeAll(toAbsoluteOffset: 0, UnsafeRawBufferPointer(header))) != nil
            && (try? file.writeAll(toAbsoluteOffset: Int64(BlockCache.headerSize), data)) != nil
        try? file.close()
        guard written else {
            unlink(tmp)
            return storeFailed()
        }
        let size = Int64(BlockCache.headerSize + data.count)
        let seedBound = self.seedBound
        // Renamed into place under the lock, with its entry: a check of the damaged file it replaces
        // (`discardDamaged`) or a failed open (`drop`) sees either the old file or the new one with its entry.
        let victims = state.withLock { s -> [String]? in
            guard rename(tmp, path) == 0 else { return nil }
            s.removeEntry(rel)
            var out: [String] = []
            if seeded {
                // Unread saves make room for this one first, oldest first; a tenth of the share at a time, so the
                // entries are sorted once per tenth, not once per block.
                if s.stats.unreadSeededBytes + size > seedBound {
                    let goal = seedBound - max(size, seedBound / 10)
                    out = evictLeastRecentlyUsed(&s, among: \.seeded) { $0.stats.unreadSeededBytes <= goal }
                }
                s.stats.seededBlocks += 1
                s.stats.unreadSeededBytes += size
            }
            s.clock += 1
            s.addEntry(rel, Entry(size: size, lastUse: s.clock, verified: true, seeded: seeded))
            s.stats.usedBytes += size
            s.stats.bytesStored += Int64(data.count)
            s.stats.blocks = s.entries.count
            return out + chooseVictims(&s)
        }
        guard let victims else {
            unlink(tmp)
            return storeFailed()
        }
        for v in victims { unlink("\(directory)/blocks/\(v)") }
        return true
    }

    /// Evicts least-recently-used blocks until `bytes` more are free in the cache (or it is empty): the disk
    /// is full and dirty data needs the space.
    public func makeRoom(_ bytes: Int64) {
        let victims = state.withLock { s -> [String] in
            chooseVictims(&s, target: max(0, s.stats.usedBytes - bytes))
        }
        for v in victims { unlink("\(directory)/blocks/\(v)") }
    }

    private func storeFailed() -> Bool {
        state.withLock { $0.stats.storeFailures += 1 }
        // Make room for the next attempt if the disk is what is full.
        let victims = state.withLock { s -> [String] in
            let target = max(0, s.stats.usedBytes - s.stats.usedBytes / 10)
            return chooseVictims(&s, target: target)
        }
        for v in victims { unlink("\(directory)/blocks/\(v)") }
        return false
    }

    /// Least recently used entries to delete so usage falls to `target` (default 90% of capacity).
    private func chooseVictims(_ s: inout State, target: Int64? = nil) -> [String] {
        let goal = target ?? fillBound
        guard s.stats.usedBytes > (target ?? capacity) else { return [] }
        return evictLeastRecentlyUsed(&s) { $0.stats.usedBytes <= goal }
    }

    /// Removes from the index the entries `among` accepts, least recently used first, skipping held ones, until
    /// `done`; returns their names (their files are the caller's to unlink).
    private func evictLeastRecentlyUsed(_ s: inout State, among: (Entry) -> Bool = { _ in true },
                                        until done: (State) -> Bool) -> [String] {
        var out: [String] = []
        for name in s.entries.filter({ among($0.value) }).sorted(by: { $0.value.lastUse < $1.value.lastUse }).map(\.key) {
            if done(s) { break }
            if s.isHeld(name) { continue }
            s.removeEntry(name)
            s.stats.evictions += 1
            out.append(name)
        }
        return out
    }

    /// Forgets block `rel`, whose file could not be opened: unless a store put a file there since (stores
    /// rename their file into place under the state's lock).
    private func drop(_ rel: String, path: String) {
        state.withLock { s in
            if access(path, F_OK) != 0 { s.removeEntry(rel) }
        }
    }

    /// Deletes block `rel`, whose file (open as `fd`) failed its check, and counts it in `corruptBlocks`; only
    /// while `path` still is that file. Two reads that open a damaged block at once both find it so; the later
    /// one may finish its check after the earlier one fetched the block again and stored it under the same
    /// path, and must not delete that one (it then fetched the block a second time: a corrupted-block test saw
    /// 2 MiB downloaded for one damaged 1 MiB block).
    private func discardDamaged(_ rel: String, path: String, fd: Int32) {
        var checked = stat()
        let known = fstat(fd, &checked) == 0
        state.withLock { s in
            var now = stat()
            if known, lstat(path, &now) == 0, now.st_ino == checked.st_ino, now.st_dev == checked.st_dev {
                unlink(path)
                s.removeEntry(rel)
                s.stats.corruptBlocks += 1
            }
        }
    }

    public var stats: CacheStats { state.withLock { $0.stats } }
}
