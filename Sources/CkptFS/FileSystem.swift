// The filesystem core: an S3 prefix as a directory tree, independent of FUSE and of any C module.
//
// Namespace. Directories are key prefixes (and `dir/` marker objects); files are objects. Inode numbers
// are assigned per (parent, name) and never change or get reused during a mount. Attributes, directory
// listings and negative lookups are cached for `metadataTTL`. A name that is both an object and a prefix
// is shown as the directory. Keys that cannot be file names (empty segments from `//`, `.`, `..`) are not
// shown.
//
// Reads. Each open handle pins the object's ETag (open revalidates with HEAD); every GET carries
// If-Match, so one handle never mixes two versions. Data is fetched in cache-block units and stored in
// the block cache; concurrent readers of a block share one fetch. Sequential reads grow a read-ahead
// window (requestSize, doubling to maxReadAhead) served by parallel ranged GETs; random reads fetch only
// the blocks they touch.
import CkptCache
import CkptS3
import Foundation
import Logging
import Synchronization

public final class FileSystem: Sendable {
    public static let rootIno: UInt64 = 1

    public let client: any ObjectClient
    public let bucket: String
    /// The key prefix the mount shows as its root; empty or ending with "/".
    public let prefix: String
    public let cache: BlockCache
    public let options: FSOptions
    let logger: Logger
    let mountTime = Date()

    struct Meta: Sendable {
        var isDirectory: Bool
        var size: Int64
        var etag: String
        var mtime: Date
    }

    struct Node: Sendable {
        var parent: UInt64
        var name: String
        var key: String  // files: the object key; directories: the prefix, ending with "/" (root: `prefix`)
        var meta: Meta
        var fetched: ContinuousClock.Instant
        var lookups: UInt64
    }

    struct Listing: Sendable {
        var entries: [String: Meta]
        var expires: ContinuousClock.Instant
        /// Until when a name missing from `entries` is known absent (a listing made for lookups: misses are
        /// trusted for at most 5 s, like negative lookups).
        var negativeUntil: ContinuousClock.Instant

        init(entries: [String: Meta], expires: ContinuousClock.Instant) {
            self.entries = entries
            self.expires = expires
            negativeUntil = expires
        }

        /// What the listing says of `name` now: its metadata, known absent (`.some(nil)`), or nothing (the
        /// listing expired, or it lacks the name and that is no longer trusted).
        func answer(_ name: String) -> Meta?? {
            let now = ContinuousClock.now
            guard now < expires else { return nil }
            if let m = entries[name] { return .some(m) }
            return now < negativeUntil ? .some(nil) : nil
        }
    }

    struct PathKey: Hashable, Sendable {
        var parent: UInt64
        var name: String
    }

    struct Table: Sendable {
        var nodes: [UInt64: Node] = [:]
        var inoByPath: [PathKey: UInt64] = [:]
        var nextIno: UInt64 = 2
        var listings: [UInt64: Listing] = [:]
        /// Entries in `listings` as of the last sweep plus those installed since (an upper bound, near enough).
        var listedEntries = 0
        var lastSweep = ContinuousClock.now
        var negative: [PathKey: ContinuousClock.Instant] = [:]

        /// Keeps the complete listing of `ino` for lookups. Expired listings are dropped first (at most once a
        /// second, or when the bound is reached), then the oldest ones while the entries kept would exceed
        /// `limit`. A listing larger than `limit` by itself is not kept (false).
        mutating func install(_ listing: Listing, for ino: UInt64, limit: Int) -> Bool {
            let now = ContinuousClock.now
            let n = listing.entries.count
            guard n <= limit else {
                if let old = listings.removeValue(forKey: ino) { listedEntries -= old.entries.count }
                return false
            }
            if now - lastSweep > .seconds(1) || listedEntries + n > limit {
                listings = listings.filter { $0.key != ino && $0.value.expires > now }
                listedEntries = listings.values.reduce(0) { $0 + $1.entries.count }
                lastSweep = now
                if listedEntries + n > limit {
                    for (i, l) in listings.sorted(by: { $0.value.expires < $1.value.expires }) {
                        listings.removeValue(forKey: i)
                        listedEntries -= l.entries.count
                        if listedEntries + n <= limit { break }
                    }
                }
            }
            if let old = listings.updateValue(listing, forKey: ino) { listedEntries -= old.entries.count }
            listedEntries += n
            return true
        }
    }

    let table = Mutex(Table())
    let handles = Mutex<[UInt64: FileHandle]>([:])
    let dirHandles = Mutex<[UInt64: DirHandle]>([:])
    let nextHandle = Atomic<UInt64>(1)
    /// Whether the kernel can give handles direct I/O and still map their files (set by the FUSE adapter once
    /// the session is up); without it no open asks for direct I/O.
    public let directReadsAvailable = Atomic<Bool>(true)
    /// Blocks being fetched, each registered by the one fetch that delivers it.
    let fetches = Mutex<[BlockKey: PendingBlock]>([:])
    let prefetchInFlight = Atomic<Int>(0)
    let cacheWriter = CacheWriter()
    /// Freshly downloaded blocks, served from memory while the reader catches up.
    // Write-back (Writes.swift, Uploads.swift, Changes.swift).
    /// Keys with local changes, by key.
    let local = Mutex<[String: LocalFile]>([:])
    let localHandles = Mutex<[UInt64: LocalHandle]>([:])
    /// Files unlinked while open, by inode: stat through an open descriptor still answers (Writes.swift).
    let orphans = Mutex<[UInt64: LocalFile]>([:])
    let nextVersion = Atomic<UInt64>(0)
    /// Set once the server rejected a conditional write as not implemented: later uploads go without.
    let conditionsUnsupported = Atomic<Bool>(false)
    let uploadState = Mutex(UploadState())
    let uploadSlots: AsyncSemaphore
    let partSlots: AsyncSemaphore
    let journal: Journal
    /// Tags this cache directory's uploads (x-amz-meta-ckptfs-version), so a later mount of it recognises its
    /// own earlier uploads after a crash (Uploads.swift).
    let writerId: String
    let alignedBuffers = AlignedBuffers()
    var journalPath: String { cache.directory + "/journal" }

    /// Sized to what read-ahead can have in flight, so its blocks are still in memory when the reader arrives.
    let recent: RecentBlocks
    let counters = Mutex(FSStats())
    /// Directories where lookups missed lately, and their listing for lookups (Directories.swift).
    let dirProbes = Mutex<[UInt64: DirProbe]>([:])

    /// Opens the filesystem over `cache` (its directory also holds the staging area and the journal). Call
    /// `recover()` before serving requests, so files an earlier mount acknowledged are queued again.
    public init(client: any ObjectClient, bucket: String, prefix: String, cache: BlockCache, options: FSOptions,
                logger: Logger = Logger(label: "ckptfs.fs")) throws(FSError) {
        self.client = client
        self.bucket = bucket
        var p = prefix
        while p.hasPrefix("/") { p.removeFirst() }
        if !p.isEmpty && !p.hasSuffix("/") { p += "/" }
        self.prefix = p
        self.cache = cache
        self.options = options
        self.logger = logger
        Glibc.mkdir(cache.directory + "/staging", 0o700)
        self.journal = try Journal(path: cache.directory + "/journal")
        self.writerId = FileSystem.writerId(directory: cache.directory)
        self.uploadSlots = AsyncSemaphore(options.uploadConcurrency)
        self.partSlots = AsyncSemaphore(options.partConcurrency)
        self.recent = RecentBlocks(budget: Int(max(options.maxReadAhead, Int64(options.maxPrefetchRequests) * options.requestSize)))
        table.withLock {
            $0.nodes[FileSystem.rootIno] = Node(parent: FileSystem.rootIno, name: "", key: p,
                                                meta: Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime),
                                                fetched: .now, lookups: 1)
        }
    }

    public var stats: FSStats {
        var s = counters.withLock { $0 }
        s.cache = cache.stats
        return s
    }

    // MARK: Attributes

    func attributes(_ ino: UInt64, _ m: Meta) -> Attributes {
        Attributes(ino: ino, isDirectory: m.isDirectory, size: m.isDirectory ? 4096 : m.size,
                   mtime: m.isDirectory ? mountTime : m.mtime,
                   permissions: m.isDirectory ? options.dirMode : options.fileMode, uid: options.uid, gid: options.gid)
    }

    /// Whether an object key segment can be a file name.
    static func validName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0") && name.utf8.count <= 255
    }

    func isFresh(_ t: ContinuousClock.Instant) -> Bool { ContinuousClock.now - t < options.metadataTTL }

    func node(_ ino: UInt64) throws(FSError) -> Node {
        guard let n = table.withLock({ $0.nodes[ino] }) else { throw FSError(ESTALE, "unknown inode \(ino)") }
        return n
    }

    // MARK: Lookup

    /// Finds `name` in directory `parent` and takes one lookup reference on the result (released by `forget`).
    public func lookup(parent: UInt64, name: String) async throws(FSError) -> Attributes {
        let dir = try node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        guard FileSystem.validName(name) else { throw .noEntry }
        let pk = PathKey(parent: parent, name: name)
        // A file with local changes is what its local version says.
        if let v = localVersion(dir.key + name) {
            return remember(parent: parent, name: name, key: dir.key + name, meta: localMeta(v), addLookup: true)
        }
        // A fresh listing of the parent, or a fresh negative entry, answers without a request.
        let cached: Meta?? = table.withLock { t in
            if let known = t.listings[parent]?.answer(name) { return known }
            if let neg = t.negative[pk], ContinuousClock.now - neg < min(options.metadataTTL, .seconds(5)) { return .some(nil) }
            if let ino = t.inoByPath[pk], let n = t.nodes[ino], isFresh(n.fetched) { return .some(n.meta) }
            return nil
        }
        let meta: Meta
        if let c = cached {
            guard let m = c else { throw .noEntry }
            meta = m
        } else if await listForLookups(parent: parent, key: dir.key),
                  let listed = table.withLock({ $0.listings[parent]?.answer(name) }) {
            // Lookups keep missing here: the directory was listed once and answers them all (a training job
            // opening its shards one by one asks the server once, not once or twice per file).
            guard let m = listed else { throw .noEntry }
            meta = m
        } else {
            guard let m = try await fetchMeta(key: dir.key + name) else {
                table.withLock { $0.negative[pk] = .now }
                throw .noEntry
            }
            meta = m
        }
        return remember(parent: parent, name: name, key: dir.key + name, meta: meta, addLookup: true)
    }

    /// Asks S3 whether `key` is a directory (a prefix with something under it) or a file.
    func fetchMeta(key: String) async throws(FSError) -> Meta? {
        async let listing = capture { () async throws(FSError) -> Bool in try await self.listProbe(key + "/") }
        async let head = capture { () async throws(FSError) -> Meta? in try await self.headProbe(key) }
        if try await listing.get() { return Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime) }
        return try await head.get()
    }

    /// Runs `f` and keeps its outcome, so two requests can run concurrently with `async let`.
    func capture<T: Sendable>(_ f: () async throws(FSError) -> T) async -> Result<T, FSError> {
        do { return .success(try await f()) } catch { return .failure(error) }
    }

    func listProbe(_ dirPrefix: String) async throws(FSError) -> Bool {
        counters.withLock { $0.listRequests += 1 }
        if isHidden(dirPrefix) { return false }  // removed here, its delete still queued
        do {
            // One key tells, unless deletes are queued: then what is listed may be on its way out.
            let hiding = hasHidden
            let page = try await client.listObjectsV2(bucket, prefix: dirPrefix, delimiter: "/", continuationToken: nil,
                                                      startAfter: nil, maxKeys: hiding ? 1000 : 1)
            if hiding {
                return page.objects.contains { !isHidden($0.key) } || page.commonPrefixes.contains { !isHidden($0) }
                    || page.isTruncated
            }
            return !page.objects.isEmpty || !page.commonPrefixes.isEmpty
        } catch { throw FSError.from(error) }
    }

    func headProbe(_ key: String) async throws(FSError) -> Meta? {
        if isHidden(key) { return nil }  // removed here, its delete still queued
        counters.withLock { $0.headRequests += 1 }
        do {
            let info = try await client.headObject(bucket, key, versionId: nil, ifMatch: nil)
            return Meta(isDirectory: false, size: info.size, etag: info.etag, mtime: FileSystem.mtime(info))
        } catch {
            if error.code == .noSuchKey { return nil }
            throw FSError.from(error)
        }
    }

    /// The mtime a writer stored (x-amz-meta-mtime, seconds since the epoch), else Last-Modified.
    static func mtime(_ info: ObjectInfo) -> Date {
        if let s = info.metadata["mtime"], let t = Double(s) { return Date(timeIntervalSince1970: t) }
        return info.lastModified ?? Date(timeIntervalSince1970: 0)
    }

    /// Records what is known of (parent, name) and returns its attributes. The inode number of a path is
    /// stable for the mount; a path that changes between file and directory gets a new one.
    @discardableResult
    func remember(parent: UInt64, name: String, key: String, meta: Meta, addLookup: Bool) -> Attributes {
        let pk = PathKey(parent: parent, name: name)
        return table.withLock { t in
            t.negative.removeValue(forKey: pk)
            var ino = t.inoByPath[pk]
            if let i = ino, let existing = t.nodes[i], existing.meta.isDirectory != meta.isDirectory {
                ino = nil  // the kind changed: a new inode; the old one lives until forgotten
            }
            if let i = ino, let existing = t.nodes[i], !meta.isDirectory, !existing.meta.etag.isEmpty, !meta.etag.isEmpty,
               existing.meta.etag != meta.etag {
                // Replaced by another writer: a new inode, as a file replaced by rename gets on a local disk.
                // The kernel trusts its own size for an inode it caches writes for, so it must see a new one.
                ino = nil
            }
            let i: UInt64
            if let ino {
                i = ino
            } else {
                i = t.nextIno
                t.nextIno += 1
                t.inoByPath[pk] = i
            }
            let nodeKey = meta.isDirectory ? key + "/" : key
            var n = t.nodes[i] ?? Node(parent: parent, name: name, key: nodeKey, meta: meta, fetched: .now, lookups: 0)
            n.meta = meta
            n.fetched = .now
            if addLookup { n.lookups += 1 }
            t.nodes[i] = n
            return attributes(i, meta)
        }
    }

    /// The kernel dropped `count` references to `ino`.
    public func forget(ino: UInt64, count: UInt64) {
        guard ino != FileSystem.rootIno else { return }
        table.withLock { t in
            guard var n = t.nodes[ino] else { return }
            n.lookups = n.lookups > count ? n.lookups - count : 0
            if n.lookups == 0 {
                t.nodes.removeValue(forKey: ino)
                t.listings.removeValue(forKey: ino)
            } else {
                t.nodes[ino] = n
            }
        }
    }

    public func getattr(ino: UInt64) async throws(FSError) -> Attributes {
        let n = try node(ino)
        if let f = orphans.withLock({ $0[ino] }) { return attributes(ino, localMeta(f.current)) }
        if !n.meta.isDirectory, let v = localVersion(n.key) { return attributes(ino, localMeta(v)) }
        if n.meta.isDirectory || isFresh(n.fetched) { return attributes(ino, n.meta) }
        guard let m = try await headProbe(n.key) else { throw FSError.noEntry }
        table.withLock { t in
            t.nodes[ino]?.meta = m
            t.nodes[ino]?.fetched = .now
        }
        return attributes(ino, m)
    }

    public struct StatFS: Sendable {
        public var blockSize: UInt64 = 1 << 20
        public var blocks: UInt64 = 1 << 30
        public var freeBlocks: UInt64 = 1 << 30
        public var files: UInt64 = 1 << 30
        public var freeFiles: UInt64 = 1 << 30
        public var nameMax: UInt64 = 255
    }

    public func statfs() -> StatFS { StatFS() }
}
