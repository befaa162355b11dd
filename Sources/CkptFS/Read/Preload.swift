// Preload: fills the block cache with objects before anyone reads them (`ckptfs preload`), so a training job's
// first epoch reads local disk, as its last does.
//
// A preload lists what it is given (`PreloadListing`), takes this node's share of the sorted keys
// (`PreloadShare`), keeps to the cache's fill bound instead of evicting what it stored itself, and makes each
// block of the share cached and sound through the object reader (`ObjectReader.preload`): blocks already cached
// are checked and kept (a rerun fetches only what is missing), blocks a reader is fetching are joined, the rest
// are fetched with ranged GETs. Many files are in flight at once and a large file goes in parts of one request
// (16 MiB) each; at most `parallel` GETs are in flight, each holding at most one block in memory while it
// streams, so memory stays bounded whatever the share's size. While readers of the mount fetch, a preload keeps
// at most an eighth of them in flight, so the trainer's reads come first.
//
// Depends on: the object reader and its cache, the object client (LIST, HEAD). Knows nothing of inodes or FUSE.
import CkptCache
import CkptS3
import Foundation
import Synchronization

/// One object to preload: its key, the path it has under the root (what users see), the version listed and its
/// size in bytes.
public struct PreloadObject: Sendable, Equatable, Codable {
    public var key: String
    public var path: String
    public var etag: String
    public var size: Int64

    public init(key: String, path: String, etag: String, size: Int64) {
        self.key = key
        self.path = path
        self.etag = etag
        self.size = size
    }
}

/// Which part of a listing one node (rank) preloads, so that `worldSize` nodes fetch it once between them.
public struct PreloadShare: Sendable, Equatable, Codable {
    /// `count`: the keys sorted by their bytes of UTF-8 (the order S3 lists them in), every `worldSize`-th one from
    /// position `rank` (`sorted(keys)[rank::worldSize]`, the convention of WebDataset's `split_by_node`);
    /// `size`: balanced bytes: objects from largest to smallest (ties by key) each go to the rank with the fewest
    /// bytes so far (ties: fewest files, then lowest rank).
    public enum Strategy: String, Sendable, Codable { case count, size }

    public var rank: Int
    public var worldSize: Int
    public var strategy: Strategy

    public init(rank: Int, worldSize: Int, strategy: Strategy = .count) {
        precondition(worldSize >= 1 && rank >= 0 && rank < worldSize, "rank must be in 0..<worldSize")
        self.rank = rank
        self.worldSize = worldSize
        self.strategy = strategy
    }

    /// Everything (one rank of one).
    public static let all = PreloadShare(rank: 0, worldSize: 1)

    /// Whether `a` sorts before `b` as S3 lists keys (bytes of UTF-8).
    static func precedes(_ a: PreloadObject, _ b: PreloadObject) -> Bool { a.key.utf8.lexicographicallyPrecedes(b.key.utf8) }

    /// This rank's objects of `objects` (any order; keys unique), in key order.
    public func select(_ objects: [PreloadObject]) -> [PreloadObject] {
        let sorted = objects.sorted(by: PreloadShare.precedes)
        guard worldSize > 1 else { return sorted }
        switch strategy {
        case .count:
            return stride(from: rank, to: sorted.count, by: worldSize).map { sorted[$0] }
        case .size:
            let bySize = sorted.indices.sorted { sorted[$0].size != sorted[$1].size ? sorted[$0].size > sorted[$1].size : $0 < $1 }
            var loads = MinHeap((0..<worldSize).map { Load(bytes: 0, files: 0, rank: $0) })
            var mine: [Int] = []
            for i in bySize {
                var least = loads.pop()
                if least.rank == rank { mine.append(i) }
                least.bytes += sorted[i].size
                least.files += 1
                loads.push(least)
            }
            return mine.sorted().map { sorted[$0] }
        }
    }

    struct Load: Comparable {
        var bytes: Int64
        var files: Int
        var rank: Int
        static func < (a: Load, b: Load) -> Bool { (a.bytes, a.files, a.rank) < (b.bytes, b.files, b.rank) }
    }
}

/// A binary min-heap (the ranks' loads of `PreloadShare.Strategy.size`).
struct MinHeap<T: Comparable> {
    private var items: [T]
    init(_ items: [T]) {
        self.items = []
        for i in items { push(i) }
    }

    mutating func push(_ x: T) {
        items.append(x)
        var i = items.count - 1
        while i > 0, items[i] < items[(i - 1) / 2] {
            items.swapAt(i, (i - 1) / 2)
            i = (i - 1) / 2
        }
    }

    /// Removes and returns the least item; the heap must not be empty.
    mutating func pop() -> T {
        let top = items[0]
        let last = items.removeLast()
        guard !items.isEmpty else { return top }
        items[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count, items[l] < items[m] { m = l }
            if r < items.count, items[r] < items[m] { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return top
    }
}

/// What a preload is about to do, said before it starts: what was listed, this rank's share, and how much of it
/// fits under the cache's fill bound (all sizes in bytes of object data; `shareStoredBytes` and `bound` count
/// what the cache stores, a 4 KiB header per 1 MiB block included).
public struct PreloadPlan: Sendable, Codable, Equatable {
    public var listedFiles = 0
    public var listedBytes: Int64 = 0
    public var share = PreloadShare.all
    public var shareFiles = 0
    public var shareBytes: Int64 = 0
    /// What the share takes in the cache.
    public var shareStoredBytes: Int64 = 0
    /// The most the cache keeps (90% of its capacity) and its capacity.
    public var bound: Int64 = 0
    public var capacity: Int64 = 0
    /// The files (the first ones of the share, in key order) and bytes this preload covers: the whole share, or
    /// what fits under the bound.
    public var files = 0
    public var bytes: Int64 = 0
    /// Paths asked for that name nothing in S3.
    public var missing: [String] = []
    /// A replay's byte budget (`bound` is the smaller of it and the cache's bound); nil for a preload of paths.
    public var budget: Int64?

    /// The share does not fit under the bound: the preload covers its first `files` files (a replay: its first
    /// `bytes` bytes of blocks) and stops there.
    public var overBound: Bool { files < shareFiles || bytes < shareBytes }

    public init() {}

    init(listedFiles: Int, listedBytes: Int64, share: PreloadShare, shareFiles: Int, shareBytes: Int64, bound: Int64,
         capacity: Int64, missing: [String]) {
        self.listedFiles = listedFiles
        self.listedBytes = listedBytes
        self.share = share
        self.shareFiles = shareFiles
        self.shareBytes = shareBytes
        self.bound = bound
        self.capacity = capacity
        self.missing = missing
    }
}

/// One file a preload could not cache, and why.
public struct PreloadFailure: Sendable, Codable, Equatable {
    public var path: String
    public var reason: String
}

/// How far a preload is (`PreloadRun.progress`); bytes are object data.
public struct PreloadProgress: Sendable, Codable, Equatable {
    public enum State: String, Sendable, Codable {
        /// Fetching.
        case running
        /// Every file of the plan is cached.
        case done
        /// The plan's files are cached (or failed), and the share did not fit under the cache's bound: the rest
        /// was not preloaded.
        case stoppedAtBound
        /// Cancelled (Ctrl-C, a closed control connection, the mount stopping): what was stored stays cached.
        case cancelled
        /// Stopped early: the cache disk is full, or S3 could not be reached; or done with files that failed.
        case failed
    }

    public var state: State = .running
    public var files = 0
    public var filesDone = 0
    public var bytes: Int64 = 0
    /// Bytes of the plan cached now (found cached, fetched, or brought by a reader's fetch meanwhile).
    public var bytesDone: Int64 = 0
    /// Bytes received by this preload's GETs, and those GETs.
    public var bytesFetched: Int64 = 0
    public var requests = 0
    /// Bytes found cached and sound when the preload came to them.
    public var bytesAlreadyCached: Int64 = 0
    public var elapsedSeconds: Double = 0
    /// Files that failed (changed or deleted in S3 meanwhile, S3 errors); the first 100 of them are listed.
    public var filesFailed = 0
    public var failures: [PreloadFailure] = []
    /// Why the preload stopped early, when it did.
    public var stopReason: String?

    /// Download rate so far, bytes per second (0 before the first second's worth).
    public var bytesPerSecond: Double { elapsedSeconds > 0 ? Double(bytesFetched) / elapsedSeconds : 0 }

    public init() {}

    init(files: Int, bytes: Int64) {
        self.files = files
        self.bytes = bytes
    }

    /// Seconds until the plan is cached at the rate so far; nil while there is no rate yet.
    public var etaSeconds: Double? {
        let rate = bytesPerSecond
        guard rate > 0 else { return nil }
        return Double(max(0, bytes - bytesDone)) / rate
    }
}

/// What `Preloader.check` found: how much of the objects the cache holds (by the cache's index; checksums are
/// checked when blocks are read or preloaded).
public struct PreloadCheck: Sendable, Codable, Equatable {
    public struct File: Sendable, Codable, Equatable {
        public var path: String
        public var bytes: Int64
        public var bytesCached: Int64
    }

    public var files = 0
    /// Files whose every block is cached (empty files count as cached).
    public var filesCached = 0
    public var bytes: Int64 = 0
    public var bytesCached: Int64 = 0
    /// Each file, in key order (only when asked for).
    public var perFile: [File]?
}

/// What `Preloader.evict` dropped from the cache.
public struct PreloadEviction: Sendable, Codable, Equatable {
    public var files = 0
    public var blocks = 0
    /// Bytes freed in the cache (headers included).
    public var bytesFreed: Int64 = 0
}

/// Preloads objects of one bucket under one root into a block cache: lists paths, checks, evicts, and plans and
/// runs preloads. A mount's preloader (`FileSystem.preloader`) shares the mount's object reader, so a preload
/// and the mount's readers never fetch a block twice; `init(client:...)` makes one of its own, for a cache no
/// mount is using.
public final class Preloader: Sendable {
    let reader: ObjectReader
    let listing: PreloadListing

    /// A preloader over `cache` with a reader of its own (no mount), for keys under `root` (a key prefix, empty or
    /// ending in "/").
    public convenience init(client: any ObjectClient, bucket: String, root: String, cache: BlockCache, options: FSOptions) {
        self.init(reader: ObjectReader(client: client, bucket: bucket, cache: cache, options: options), root: root, skip: { _ in false })
    }

    /// `skip`: keys not to preload (files with local changes on the mount, names whose delete is queued).
    init(reader: ObjectReader, root: String, skip: @escaping @Sendable (String) -> Bool) {
        self.reader = reader
        self.listing = PreloadListing(client: reader.client, bucket: reader.bucket, root: root, skip: skip)
    }

    public var cache: BlockCache { reader.cache }

    /// The objects under `paths` (relative to the root, "" for all of it; each a file or a directory, listed
    /// whole), in key order, and the paths that name nothing. Throws when S3 refuses or cannot be reached.
    public func list(_ paths: [String]) async throws(FSError) -> (objects: [PreloadObject], missing: [String]) {
        try await listing.list(paths)
    }

    /// Plans a preload of `share` of `listed` (the objects `list` found), covering as many of the share's files,
    /// in key order, as fit under the cache's fill bound. At most `parallel` GETs in flight (≥ 1).
    public func prepare(_ listed: [PreloadObject], missing: [String] = [], share: PreloadShare, parallel: Int) -> PreloadRun {
        let mine = share.select(listed)
        var plan = PreloadPlan(listedFiles: listed.count, listedBytes: listed.reduce(0) { $0 + $1.size }, share: share,
                               shareFiles: mine.count, shareBytes: mine.reduce(0) { $0 + $1.size },
                               bound: cache.fillBound, capacity: cache.capacity, missing: missing)
        var stored: Int64 = 0
        var full = false
        for o in mine {
            let s = storedSize(o.size)
            plan.shareStoredBytes += s
            // The first files in key order, up to the first that does not fit: a rerun with a larger cache
            // continues where this one stopped.
            full = full || stored + s > plan.bound
            if !full {
                stored += s
                plan.files += 1
                plan.bytes += o.size
            }
        }
        return PreloadRun(reader: reader, objects: Array(mine.prefix(plan.files)), plan: plan, parallel: max(1, parallel))
    }

    /// Plans a replay of `profile`: its blocks in the order it recorded them, of the version of each object S3 has
    /// now (one HEAD per object; objects gone are `missing`, blocks past an object's end are left out), up to
    /// `budget` bytes in the cache and at most the cache's fill bound. Throws when the profile was recorded on
    /// another bucket or with another block size, or when S3 fails.
    public func replay(_ profile: AccessProfile, budget: Int64?, parallel: Int) async throws(FSError) -> PreloadRun {
        guard profile.bucket == reader.bucket else {
            throw FSError(EINVAL, "the profile was recorded on bucket \(profile.bucket), and this is bucket \(reader.bucket)")
        }
        guard profile.blockSize == reader.blockSize else {
            throw FSError(EINVAL, "the profile counts blocks of \(profile.blockSize) bytes, and this cache's are \(reader.blockSize)")
        }
        var keys: [String] = []
        var seenKeys = Set<String>()
        for e in profile.entries where seenKeys.insert(e.key).inserted { keys.append(e.key) }
        let listing = self.listing
        let infos = try await listing.concurrently(keys) { (k: String) async throws(FSError) -> ObjectInfo? in try await listing.head(k) }
        var found: [String: PreloadObject] = [:]
        var missing: [String] = []
        for (k, info) in zip(keys, infos) {
            if let info, !listing.skip(k) {
                found[k] = PreloadObject(key: k, path: listing.path(of: k), etag: info.etag, size: info.size)
            } else if info == nil {
                missing.append(listing.path(of: k))
            }
        }
        let bound = min(budget ?? cache.fillBound, cache.fillBound)
        let bs = reader.blockSize
        let per = max(1, reader.limits.requestSize / bs)
        var plan = PreloadPlan(listedFiles: keys.count, listedBytes: 0, share: .all, shareFiles: 0, shareBytes: 0, bound: bound,
                               capacity: cache.capacity, missing: missing)
        plan.budget = budget
        var objects: [PreloadObject] = []
        var index: [String: Int] = [:]
        var pieces: [PreloadRun.Piece] = []
        var taken = Set<BlockKey>()
        var shareObjects = Set<String>()
        var stored: Int64 = 0
        var full = false
        for e in profile.entries {
            guard let o = found[e.key], e.block >= 0, e.block * bs < o.size,
                  taken.insert(BlockKey(bucket: "", key: e.key, etag: "", index: e.block)).inserted else { continue }
            let length = min(bs, o.size - e.block * bs)
            plan.shareBytes += length
            plan.shareStoredBytes += BlockCache.storedSize(length)
            shareObjects.insert(e.key)
            full = full || stored + BlockCache.storedSize(length) > bound
            if full { continue }
            stored += BlockCache.storedSize(length)
            plan.bytes += length
            let i: Int
            if let known = index[e.key] {
                i = known
            } else {
                i = objects.count
                index[e.key] = i
                objects.append(o)
            }
            // Consecutive blocks of one object go in one request, up to a request's worth.
            if let last = pieces.last, last.object == i, last.blocks.upperBound == e.block, Int64(last.blocks.count) < per {
                pieces[pieces.count - 1].blocks = last.blocks.lowerBound..<(e.block + 1)
            } else {
                pieces.append(.init(object: i, blocks: e.block..<(e.block + 1)))
            }
        }
        plan.listedBytes = plan.shareBytes
        plan.shareFiles = shareObjects.count
        plan.files = objects.count
        return PreloadRun(reader: reader, objects: objects, plan: plan, parallel: max(1, parallel), pieces: pieces)
    }

    /// What the cache stores for an object of `size` bytes: each block with its header.
    func storedSize(_ size: Int64) -> Int64 {
        let bs = reader.blockSize
        let blocks = (size + bs - 1) / bs
        return size + blocks * (BlockCache.storedSize(0))
    }

    /// How much of `objects` the cache holds; with `perFile`, each file's part too.
    public func check(_ objects: [PreloadObject], perFile: Bool) -> PreloadCheck {
        var c = PreloadCheck(perFile: perFile ? [] : nil)
        let bs = reader.blockSize
        for o in objects {
            let pinned = PinnedObject(key: o.key, etag: o.etag, size: o.size)
            var cached: Int64 = 0
            var b: Int64 = 0
            while b * bs < o.size {
                if cache.contains(reader.blockKey(pinned, b)) { cached += min(bs, o.size - b * bs) }
                b += 1
            }
            c.files += 1
            c.bytes += o.size
            c.bytesCached += cached
            if cached == o.size { c.filesCached += 1 }
            c.perFile?.append(.init(path: o.path, bytes: o.size, bytesCached: cached))
        }
        return c
    }

    /// Drops the blocks of `objects` (the versions listed) from the cache.
    public func evict(_ objects: [PreloadObject]) -> PreloadEviction {
        var e = PreloadEviction()
        let bs = reader.blockSize
        for o in objects {
            let pinned = PinnedObject(key: o.key, etag: o.etag, size: o.size)
            var b: Int64 = 0
            var any = false
            while b * bs < o.size {
                let freed = cache.remove(reader.blockKey(pinned, b))
                if freed > 0 {
                    e.blocks += 1
                    e.bytesFreed += freed
                    any = true
                }
                b += 1
            }
            if any { e.files += 1 }
        }
        return e
    }

    /// Waits until the blocks fetched so far are stored (before a process that preloaded without a mount exits).
    public func finishCacheWrites() async { await reader.finishCacheWrites() }
}

/// One planned preload: `run()` it (once), read `progress` meanwhile from anywhere, cancel the running task to
/// stop it.
public final class PreloadRun: Sendable {
    let reader: ObjectReader
    /// The plan's objects, in key order.
    let objects: [PreloadObject]
    public let plan: PreloadPlan
    /// Most GETs in flight; while readers of the mount fetch, an eighth of it (at least one).
    let parallel: Int
    /// The pieces to fetch, when not whole objects (a replay's blocks).
    let chosen: [Piece]?
    private let state: Mutex<(progress: PreloadProgress, started: ContinuousClock.Instant?)>

    /// Consecutive files that failed because S3 could not be reached, after which the preload stops.
    static let unreachableLimit = 8

    init(reader: ObjectReader, objects: [PreloadObject], plan: PreloadPlan, parallel: Int, pieces: [Piece]? = nil) {
        self.reader = reader
        self.objects = objects
        self.plan = plan
        self.parallel = parallel
        self.chosen = pieces
        state = Mutex((PreloadProgress(files: plan.files, bytes: plan.bytes), nil))
    }

    /// How far the preload is, now.
    public var progress: PreloadProgress {
        state.withLock { s in
            var p = s.progress
            if p.state == .running, let t = s.started { p.elapsedSeconds = (ContinuousClock.now - t).seconds }
            return p
        }
    }

    /// GETs this preload may have in flight now: fewer while readers fetch.
    var admitted: Int { reader.readerFetchesInFlight > 0 ? max(1, parallel / 8) : parallel }

    /// One part of one object: blocks [from, to) of object `object`.
    struct Piece: Sendable {
        var object: Int
        var blocks: Range<Int64>
    }

    /// The plan's pieces in order: those chosen, or each object in parts of one request's worth of blocks.
    func pieces() -> AnySequence<Piece> {
        if let chosen { return AnySequence(chosen) }
        let bs = reader.blockSize
        let per = max(1, reader.limits.requestSize / bs)
        let objects = self.objects
        return AnySequence(objects.indices.lazy.flatMap { i -> [Piece] in
            let blocks = (objects[i].size + bs - 1) / bs
            return stride(from: Int64(0), to: blocks, by: Int(per)).map { Piece(object: i, blocks: $0..<min(blocks, $0 + per)) }
        })
    }

    /// Runs the preload to its end (or until the task is cancelled, the cache disk is full, or S3 cannot be
    /// reached) and returns its final progress.
    public func run() async -> PreloadProgress {
        let started = ContinuousClock.now
        state.withLock { $0.started = started }
        let bs = reader.blockSize
        let per = max(1, reader.limits.requestSize / bs)
        var partsLeft = objects.map { o in Int(((o.size + bs - 1) / bs + per - 1) / per) }
        if let chosen {
            partsLeft = objects.map { _ in 0 }
            for p in chosen { partsLeft[p.object] += 1 }
        }
        // Files with a part that failed (reported) or was cancelled (not done, not reported).
        var failed = [Bool](repeating: false, count: objects.count)
        var incomplete = [Bool](repeating: false, count: objects.count)
        state.withLock { s in s.progress.filesDone = partsLeft.count { $0 == 0 } }
        var unreachableInARow = 0
        var stopReason: String?
        let objects = self.objects

        /// Records one piece's outcome; returns why the preload must stop, if it must.
        func record(_ piece: Piece, _ r: ObjectReader.PreloadOutcome) -> String? {
            let o = objects[piece.object]
            partsLeft[piece.object] -= 1
            var stop: String?
            if let f = r.failure, f.errno != ECANCELED {
                unreachableInARow = f.kind == .unreachable ? unreachableInARow + 1 : 0
                if unreachableInARow >= PreloadRun.unreachableLimit {
                    stop = "S3 could not be reached (\(PreloadRun.unreachableLimit) files in a row failed): \(f)"
                }
            } else if r.failure == nil {
                unreachableInARow = 0
            }
            if r.storeFailures > 0 {
                stop = "the cache disk is full: \(r.storeFailures) block(s) of \(o.path) could not be stored; free space on the "
                    + "cache disk or lower --cache-size"
            }
            let newlyFailed = r.failure != nil && r.failure?.errno != ECANCELED && !failed[piece.object]
            if newlyFailed { failed[piece.object] = true }
            if r.failure != nil { incomplete[piece.object] = true }
            let fileDone = partsLeft[piece.object] == 0 && !incomplete[piece.object]
            state.withLock { s in
                s.progress.bytesAlreadyCached += r.cachedBytes
                s.progress.bytesFetched += r.fetchedBytes
                s.progress.requests += r.requests
                s.progress.bytesDone = min(s.progress.bytes, s.progress.bytesDone + r.cachedBytes + r.joinedBytes
                                           + (r.failure == nil ? r.fetchedBytes : 0))
                if fileDone { s.progress.filesDone += 1 }
                if newlyFailed, let f = r.failure {
                    s.progress.filesFailed += 1
                    if s.progress.failures.count < 100 { s.progress.failures.append(.init(path: o.path, reason: f.description)) }
                }
            }
            return stop
        }

        await withTaskGroup(of: (Piece, ObjectReader.PreloadOutcome).self) { group in
            var inFlight = 0
            func collect() async -> Bool {
                guard let (piece, r) = await group.next() else { return false }
                inFlight -= 1
                if let why = record(piece, r), stopReason == nil {
                    stopReason = why
                    group.cancelAll()
                }
                return true
            }
            for piece in pieces() {
                while inFlight >= admitted, await collect() {}
                if stopReason != nil || Task.isCancelled { break }
                let o = objects[piece.object]
                let pinned = PinnedObject(key: o.key, etag: o.etag, size: o.size)
                group.addTask { (piece, await self.reader.preload(pinned, blocks: piece.blocks)) }
                inFlight += 1
            }
            while await collect() {}
        }
        await reader.finishCacheWrites()
        let cancelled = Task.isCancelled
        return state.withLock { s in
            s.progress.elapsedSeconds = (ContinuousClock.now - started).seconds
            if let stopReason {
                s.progress.state = .failed
                s.progress.stopReason = stopReason
            } else if cancelled {
                s.progress.state = .cancelled
            } else if s.progress.filesFailed > 0 {
                s.progress.state = .failed
            } else {
                s.progress.state = plan.overBound ? .stoppedAtBound : .done
            }
            return s.progress
        }
    }
}

/// Lists what a preload covers: the objects under paths relative to a root, as the mount shows them (markers,
/// keys that cannot be file names, and objects shadowed by a directory of the same name are left out).
struct PreloadListing: Sendable {
    let client: any ObjectClient
    let bucket: String
    /// A key prefix, empty or ending in "/".
    let root: String
    let skip: @Sendable (String) -> Bool

    /// Paths in one directory beyond which the directory is listed once instead of probing each path.
    static let listParentFrom = 8
    /// Listings and probes in flight at once.
    static let concurrency = 16

    func list(_ rawPaths: [String]) async throws(FSError) -> (objects: [PreloadObject], missing: [String]) {
        let paths = Array(Set(rawPaths.map(PreloadListing.clean)))
        var found: [String: PreloadObject] = [:]
        var dirs: [String] = []
        var missing: [String] = []
        if paths.contains("") {
            dirs = [""]
        } else {
            // Which paths are files and which directories: probe each, or list their directory when it holds many.
            let groups = Dictionary(grouping: paths) { p in p.lastIndex(of: "/").map { String(p[..<$0]) } ?? "" }
            let classified = try await concurrently(Array(groups)) { (parent, names) async throws(FSError) -> [(String, Kind)] in
                if names.count >= PreloadListing.listParentFrom {
                    return try await classifyByListing(parent: parent, names)
                }
                var out: [(String, Kind)] = []
                for p in names { out.append((p, try await probe(p))) }
                return out
            }
            for (p, kind) in classified.joined() {
                switch kind {
                case .directory: dirs.append(p)
                case .file(let o): found[o.key] = o
                case .none: missing.append(p)
                }
            }
        }
        for batch in try await concurrently(dirs, { (d: String) async throws(FSError) -> [PreloadObject] in try await listAll(d) }) {
            for o in batch { found[o.key] = o }
        }
        // A key that is also a directory (`a` and `a/b`) is the directory on the mount.
        var prefixes = Set<String>()
        for k in found.keys {
            var k = Substring(k)
            while let slash = k.lastIndex(of: "/") {
                k = k[..<slash]
                if !prefixes.insert(String(k)).inserted { break }
            }
        }
        let objects = found.values.filter { !prefixes.contains($0.key) && !skip($0.key) }.sorted(by: PreloadShare.precedes)
        return (objects, missing.sorted())
    }

    enum Kind: Sendable {
        case file(PreloadObject)
        case directory
        case none
    }

    /// "a/b" from "/a/b/", "a//b" as given; "" for the root.
    static func clean(_ p: String) -> String {
        var s = Substring(p)
        while s.hasPrefix("/") { s = s.dropFirst() }
        while s.hasSuffix("/") { s = s.dropLast() }
        return s == "." ? "" : String(s)
    }

    /// The object for `key` as listed, or nil when the mount cannot show it (a marker, a segment that is not a
    /// file name).
    func object(key: String, etag: String, size: Int64) -> PreloadObject? {
        guard key.hasPrefix(root), !key.hasSuffix("/") else { return nil }
        let path = String(key.dropFirst(root.count))
        guard path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy({ Namespace.validName(String($0)) }) else { return nil }
        return PreloadObject(key: key, path: path, etag: etag, size: size)
    }

    /// Whether `path` is a directory (something under `path/`), a file, or nothing: a one-key LIST and a HEAD at once.
    func probe(_ path: String) async throws(FSError) -> Kind {
        let key = root + path
        async let listed = capture { () async throws(FSError) -> Bool in
            let page = try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: key + "/", delimiter: nil, continuationToken: nil, startAfter: nil, maxKeys: 1)
            }
            return !page.objects.isEmpty
        }
        async let head = capture { () async throws(FSError) -> ObjectInfo? in
            do throws(S3Error) { return try await client.headObject(bucket, key, versionId: nil, ifMatch: nil) } catch {
                if error.code == .noSuchKey { return nil }
                throw FSError(error, during: .other)
            }
        }
        let (l, h) = await (listed, head)
        if try l.get() { return .directory }
        guard let info = try h.get(), let o = object(key: key, etag: info.etag, size: info.size) else { return .none }
        return .file(o)
    }

    /// Classifies `names` (paths whose directory is `parent`) from one listing of that directory.
    func classifyByListing(parent: String, _ names: [String]) async throws(FSError) -> [(String, Kind)] {
        let dirKey = parent.isEmpty ? root : root + parent + "/"
        var files: [String: ObjectSummary] = [:]
        var subdirs = Set<String>()
        var token: String?
        repeat {
            let page = try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: dirKey, delimiter: "/", continuationToken: token, startAfter: nil, maxKeys: 1000)
            }
            for o in page.objects { files[o.key] = o }
            for p in page.commonPrefixes { subdirs.insert(String(p.dropLast())) }
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        return names.map { p in
            let key = root + p
            if subdirs.contains(key) { return (p, .directory) }
            if let s = files[key], let o = object(key: key, etag: s.etag, size: s.size) { return (p, .file(o)) }
            return (p, .none)
        }
    }

    /// The object `key` as S3 has it now, or nil when there is none.
    func head(_ key: String) async throws(FSError) -> ObjectInfo? {
        do throws(S3Error) { return try await client.headObject(bucket, key, versionId: nil, ifMatch: nil) } catch {
            if error.code == .noSuchKey { return nil }
            throw FSError(error, during: .other)
        }
    }

    /// How `key` is shown: relative to the root, or whole when it is not under it.
    func path(of key: String) -> String { key.hasPrefix(root) ? String(key.dropFirst(root.count)) : key }

    /// Every object under directory `path` ("" for the root), at any depth.
    func listAll(_ path: String) async throws(FSError) -> [PreloadObject] {
        let prefix = path.isEmpty ? root : root + path + "/"
        var out: [PreloadObject] = []
        var token: String?
        repeat {
            let page = try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: prefix.isEmpty ? nil : prefix, delimiter: nil,
                                               continuationToken: token, startAfter: nil, maxKeys: 1000)
            }
            out += page.objects.compactMap { object(key: $0.key, etag: $0.etag, size: $0.size) }
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        return out
    }

    func capture<T: Sendable>(_ f: () async throws(FSError) -> T) async -> Result<T, FSError> {
        do { return .success(try await f()) } catch { return .failure(error) }
    }

    /// `f` over `items`, at most `concurrency` at once; results in the order of `items`; the first failure throws.
    func concurrently<T: Sendable, R: Sendable>(_ items: [T], _ f: @escaping @Sendable (T) async throws(FSError) -> R) async throws(FSError) -> [R] {
        let results = await withTaskGroup(of: (Int, Result<R, FSError>).self) { g in
            var out = [Result<R, FSError>?](repeating: nil, count: items.count)
            var next = 0
            func add() {
                let i = next
                let item = items[i]
                g.addTask {
                    do throws(FSError) { return (i, .success(try await f(item))) } catch { return (i, .failure(error)) }
                }
                next += 1
            }
            while next < min(items.count, PreloadListing.concurrency) { add() }
            while let (i, r) = await g.next() {
                out[i] = r
                if next < items.count { add() }
            }
            return out
        }
        return try results.map { r throws(FSError) in try r!.get() }
    }
}
