// The object reader: reads of one object version (pinned by ETag) through the block cache.
//
// Data is fetched in cache-block units with ranged GETs that carry If-Match, so one reader never mixes two
// versions. Concurrent readers of a block share one fetch; each block is handed to its readers the moment its
// last byte arrives, and stored in the cache off the network threads (kept in memory meanwhile). Sequential
// reads grow a read-ahead window (ReadAhead.swift) served by parallel ranged GETs within a global bound;
// random reads fetch only the blocks they touch. Reads whose blocks are all at hand are answered without a
// task (`readNow`).
//
// Depends on: the object client (GET), the block cache. Knows nothing of inodes, handles or local files.
import CkptCache
import CkptS3
import Foundation
import Synchronization

/// One version of an object, pinned by its ETag, and the read-ahead state of reading it.
final class PinnedObject: Sendable {
    let key: String
    let etag: String
    /// Bytes.
    let size: Int64
    /// The S3 version id to read, for an earlier version of the object (the versions view, History/); nil
    /// for whatever version has `etag` now. Blocks are cached by key and ETag either way.
    let versionId: String?
    let readAhead = Mutex(ReadAhead())

    init(key: String, etag: String, size: Int64, versionId: String? = nil) {
        self.key = key
        self.etag = etag
        self.size = size
        self.versionId = versionId
    }
}

/// What `readNow` found: the read's bytes, or the rest of the read, which has to wait for a download.
public enum ReadNow: Sendable {
    case done([ReadSegment])
    case later(PendingRead)

    /// The read's bytes, waiting for them if need be.
    public func segments() async throws(FSError) -> [ReadSegment] {
        switch self {
        case .done(let segments): return segments
        case .later(let rest): return try await rest.segments()
        }
    }
}

/// A read that has to wait; `segments()` finishes it (once).
public struct PendingRead: Sendable {
    let finish: @Sendable () async throws(FSError) -> [ReadSegment]
    public func segments() async throws(FSError) -> [ReadSegment] { try await finish() }
}

final class ObjectReader: Sendable {
    let client: any ObjectClient
    let bucket: String
    let cache: BlockCache
    let limits: ReadAhead.Limits
    /// Most ranged GETs in flight for read-ahead, over all files (FSOptions.maxPrefetchRequests).
    let maxPrefetchRequests: Int

    /// Blocks being fetched, each registered by the one fetch that delivers it.
    private let fetches = Mutex<[BlockKey: PendingBlock]>([:])
    private let prefetchInFlight = Atomic<Int>(0)
    private let readerFetches = Atomic<Int>(0)
    private let cacheWriter = CacheWriter()
    /// Freshly downloaded blocks, served from memory while the reader catches up. Sized to what read-ahead can
    /// have in flight, so its blocks are still in memory when the reader arrives.
    private let recent: RecentBlocks
    /// GETs made and bytes they brought.
    let counters = Mutex<(gets: Int, bytes: Int64)>((0, 0))
    /// Where each GET's answer about the object's version goes (its stored mtime, for the namespace).
    let versions: KnownVersions

    init(client: any ObjectClient, bucket: String, cache: BlockCache, options: FSOptions,
         versions: KnownVersions? = nil) {
        self.versions = versions ?? KnownVersions(limit: options.maxListedEntries)
        self.client = client
        self.bucket = bucket
        self.cache = cache
        self.limits = ReadAhead.Limits(blockSize: Int64(cache.blockSize), requestSize: options.requestSize,
                                       maxReadAhead: options.maxReadAhead)
        self.maxPrefetchRequests = options.maxPrefetchRequests
        self.recent = RecentBlocks(budget: Int(max(options.maxReadAhead, Int64(options.maxPrefetchRequests) * options.requestSize)))
    }

    var blockSize: Int64 { limits.blockSize }

    func blockKey(_ o: PinnedObject, _ b: Int64) -> BlockKey { BlockKey(bucket: bucket, key: o.key, etag: o.etag, index: b) }

    /// `o` was just opened for reading: if its first block is in the cache, the kernel starts reading it from
    /// disk now (cache blocks are written with O_DIRECT, so after a while they are on disk only), and the read
    /// that follows the open finds it in memory instead of waiting for the disk. Later blocks are read ahead
    /// the same way as the reader goes (`schedulePrefetch`).
    func opened(_ o: PinnedObject) {
        guard o.size > 0 else { return }
        let k = blockKey(o, 0)
        if recent.get(k) == nil && cache.contains(k) { cache.prefetch(k) }
    }

    /// Whether the first block of `o` is in the block cache (a cold open of a large file reads direct).
    func firstBlockCached(_ o: PinnedObject) -> Bool { cache.contains(blockKey(o, 0)) }

    /// Waits until the blocks downloaded so far are stored in the cache (before the process exits, so a remount
    /// finds them).
    func finishCacheWrites() async {
        let writer = cacheWriter
        _ = try? await offPool { () throws(FSError) in writer.waitQueued() }
    }

    /// Reads up to `size` bytes of `o` at `offset` (fewer only at its end), waiting for downloads.
    func read(_ o: PinnedObject, offset: Int64, size: Int) async throws(FSError) -> [ReadSegment] {
        try await readNow(o, offset: offset, size: size).segments()
    }

    /// Plans a read of `o` and gathers the blocks at hand; the rest waits in the returned `.later`. Either way
    /// the read-ahead it triggers has started.
    func readNow(_ o: PinnedObject, offset: Int64, size: Int) throws(FSError) -> ReadNow {
        guard offset < o.size, size > 0 else { return .done([]) }
        let end = min(offset + Int64(size), o.size)
        let plan = o.readAhead.withLock { $0.plan(offset: offset, end: end, fileSize: o.size, limits) }
        let read = Planned(offset: offset, end: end, plan: plan)
        var segments: [ReadSegment] = []
        guard let missing = try gatherNow(o, read, &segments) else {
            if let prefetch = plan.prefetch { schedulePrefetch(o, prefetch) }
            return .done(segments)
        }
        let have = segments
        return .later(PendingRead { () async throws(FSError) in
            try await self.finishRead(o, read, have: have, from: missing)
        })
    }

    /// One read: its byte range and its plan.
    struct Planned: Sendable {
        var offset: Int64
        var end: Int64
        var plan: ReadAhead.Plan
        func blocks(_ bs: Int64) -> ClosedRange<Int64> { (offset / bs)...((end - 1) / bs) }
    }

    /// Completes a planned read from block `missing` on; `have` holds the segments of the blocks before it.
    /// Block `missing` was just found not at hand: it is looked up again only if it has reached the cache
    /// since (so a cache miss is counted once), else fetched or joined to its fetch in flight.
    private func finishRead(_ o: PinnedObject, _ read: Planned, have: [ReadSegment], from missing: Int64) async throws(FSError) -> [ReadSegment] {
        var segments = have
        for b in missing...read.blocks(blockSize).upperBound {
            let look = b != missing || cache.contains(blockKey(o, b))
            var source = look ? blockNow(o, b) : nil
            if source == nil {
                source = try await fetchBlock(o, b, demandBlocks: read.plan.sequential ? limits.requestSize / blockSize : 1)
            }
            try append(&segments, o, read, b, source!)
        }
        if let prefetch = read.plan.prefetch { schedulePrefetch(o, prefetch) }
        return segments
    }

    /// Appends the segments of the read's blocks that are at hand now, in order, and returns the first block
    /// that is not (nothing appended from it on), or nil when the read is complete.
    private func gatherNow(_ o: PinnedObject, _ read: Planned, _ segments: inout [ReadSegment]) throws(FSError) -> Int64? {
        for b in read.blocks(blockSize) {
            guard let source = blockNow(o, b) else { return b }
            try append(&segments, o, read, b, source)
        }
        return nil
    }

    enum BlockSource {
        case file(OpenBlock)
        /// A block just downloaded, served from memory while (or instead of, when the disk is full) it is stored.
        case memory(BlockBuffer)
    }

    /// Block `b` if it is at hand: in memory (downloaded lately, or downloaded and still being stored) or in
    /// the cache.
    private func blockNow(_ o: PinnedObject, _ b: Int64) -> BlockSource? {
        let key = blockKey(o, b)
        if let buf = recent.get(key) ?? fetches.withLock({ $0[key] })?.arrived { return .memory(buf) }
        return cache.open(key).map { BlockSource.file($0) }
    }

    /// Adds block `b`'s part of the read.
    private func append(_ segments: inout [ReadSegment], _ o: PinnedObject, _ read: Planned, _ b: Int64,
                        _ source: BlockSource) throws(FSError) {
        let blockStart = b * blockSize
        let lo = Int(max(read.offset, blockStart) - blockStart)
        let hi = Int(min(read.end, blockStart + blockSize) - blockStart)
        switch source {
        case .file(let ob):
            let fd = OwnedDescriptor(ob.fd)
            guard hi <= ob.length else { throw FSError(EIO, "cached block \(b) of \(o.key) is shorter than the object says") }
            segments.append(.file(fd, offset: ob.offset + Int64(lo), length: hi - lo))
        case .memory(let buf):
            guard hi <= buf.count else { throw FSError(EIO, "short block \(b) of \(o.key)") }
            segments.append(.memory(ReadBytes(buf), offset: lo, length: hi - lo))
            // A stream that has read a block to its end will not come back for it.
            if read.plan.sequential && hi == buf.count {
                buf.consumed.store(true, ordering: .relaxed)
                recent.remove(blockKey(o, b))
            }
        }
    }

    /// Block `b`, from a fetch already in flight or a new one covering up to `demandBlocks` blocks that are
    /// neither cached nor being fetched, or from the cache when a fetch stored it since this read found it
    /// missing. A reader waits for its own block only, not for the whole request: each block is handed over as
    /// soon as its last byte has arrived and been stored. Errors: the fetch failed twice (EIO), or the object
    /// changed (its ETag no longer matches).
    private func fetchBlock(_ o: PinnedObject, _ b: Int64, demandBlocks: Int64) async throws(FSError) -> BlockSource {
        let key = blockKey(o, b)
        var failures = 0
        for _ in 0..<4 {
            // None: a fetch stored it since this read found it missing.
            if let pending = startFetch(o, from: b, count: max(1, demandBlocks)) {
                do throws(FSError) {
                    return .memory(try await pending.wait())
                } catch {
                    failures += 1
                    if failures == 2 || error.kind == .objectChanged { throw error }
                }
            }
            if let ob = cache.open(key) { return .file(ob) }
        }
        throw FSError(EIO, "block \(b) of \(o.key) could not be read")
    }

    /// What a fetch is for: a reader waits for its block, read-ahead fetches ahead of a reader, or a preload
    /// fills the cache for readers to come (its blocks are not kept in memory, and it holds back while readers
    /// fetch: see `readerFetchesInFlight`).
    enum FetchPurpose: Sendable { case demand, readAhead, preload }

    /// GETs in flight for readers (demand and read-ahead), so a preload can give way to them.
    var readerFetchesInFlight: Int { readerFetches.load(ordering: .relaxed) }

    /// Starts one ranged GET for blocks [from, from+count) (stopping at the first block cached or in
    /// flight), registers a pending block for each, and stores every block in the cache as it arrives.
    /// Returns the pending block `from` (which may belong to a fetch already in flight), or nil when block
    /// `from` is in the cache now (nothing started).
    @discardableResult
    private func startFetch(_ o: PinnedObject, from: Int64, count: Int64, isPrefetch: Bool = false) -> PendingBlock? {
        let mine: [PendingBlock]
        switch claim(o, from: from, count: count) {
        case .cached: return nil
        case .joined(let p): return p
        case .mine(let m): mine = m
        }
        if isPrefetch { prefetchInFlight.wrappingAdd(1, ordering: .relaxed) }
        readerFetches.wrappingAdd(1, ordering: .relaxed)
        Task {
            _ = await self.runFetch(o, mine, purpose: isPrefetch ? .readAhead : .demand)
            self.readerFetches.wrappingSubtract(1, ordering: .relaxed)
            if isPrefetch { self.prefetchInFlight.wrappingSubtract(1, ordering: .relaxed) }
        }
        return mine[0]
    }

    enum Claimed {
        /// Block `from` is being fetched already: wait for that fetch.
        case joined(PendingBlock)
        /// Block `from` is in the cache (a fetch stored it since the caller found it missing).
        case cached
        /// These blocks, `from` first, are the caller's to fetch.
        case mine([PendingBlock])
    }

    /// Registers the blocks one fetch will deliver, under one lock: if block `from` is being fetched already,
    /// returns that fetch's pending block to join (and claims nothing); if it is in the cache, claims nothing (a
    /// fetch stores a block before it unregisters it, so under this lock a block is in one or the other once
    /// fetched: two reads that found it damaged or missing at once fetch it once); otherwise claims `from` and
    /// the blocks after it, up to `count` in all, stopping at the first one cached or in flight (and at the
    /// object's end).
    private func claim(_ o: PinnedObject, from: Int64, count: Int64) -> Claimed {
        let lastBlock = (o.size - 1) / blockSize
        return fetches.withLock { map in
            if let e = map[blockKey(o, from)] { return .joined(e) }
            if cache.contains(blockKey(o, from)) { return .cached }
            var blocks: [PendingBlock] = []
            var i = from
            while i < from + max(1, count) && i <= lastBlock && (i == from || (map[blockKey(o, i)] == nil && !cache.contains(blockKey(o, i)))) {
                let p = PendingBlock(index: i)
                map[blockKey(o, i)] = p
                blocks.append(p)
                i += 1
            }
            return .mine(blocks)
        }
    }

    /// What one fetch did: object bytes received, blocks stored (a preload waits for its stores; other fetches
    /// leave them to the cache writer and report 0), stores that failed (disk full), and its failure if any.
    struct FetchOutcome: Sendable {
        var received: Int64 = 0
        var stored: Int64 = 0
        var storeFailures = 0
        var failure: FSError?
    }

    /// Fetches the consecutive claimed blocks `mine` with one ranged GET (If-Match the pinned ETag). Each block
    /// goes to its readers the moment it is complete, and to the cache off the network thread; it stays
    /// registered (answering readers from memory) until it is on disk. Blocks that never arrive fail their
    /// readers and are unregistered, so a later read retries. Cancelling the calling task cancels the GET;
    /// blocks complete by then are stored whole, the rest are not stored at all.
    private func runFetch(_ o: PinnedObject, _ mine: [PendingBlock], purpose: FetchPurpose) async -> FetchOutcome {
        let bs = blockSize
        let from = mine[0].index
        let n = Int64(mine.count)
        let bucket = self.bucket
        @Sendable func key(_ i: Int64) -> BlockKey { BlockKey(bucket: bucket, key: o.key, etag: o.etag, index: i) }
        @Sendable func unregister(_ p: PendingBlock) {
            fetches.withLock { m in if m[key(p.index)] === p { m.removeValue(forKey: key(p.index)) } }
        }
        let range = (from * bs)..<min((from + n) * bs, o.size)
        let tally = purpose == .preload ? StoreTally() : nil
        let assembler = BlockAssembler(first: from, blockSize: Int(bs), end: o.size) { i, buf in
            let p = mine[Int(i - from)]
            self.cacheWriter.announce()  // before the readers go on: a wait for the cache writes covers it
            p.resolve(.success(buf))
            tally?.begin()
            self.cacheWriter.store(self.cache, key(i), buf, announced: true) { stored in
                // Kept in memory for the reader still to come, unless it already read the block meanwhile (a
                // preload's blocks have no reader coming soon).
                if purpose != .preload && !buf.consumed.load(ordering: .relaxed) { self.recent.put(key(i), buf) }
                unregister(p)
                // A random reader's block (a one-block demand fetch) is likely read again soon: the O_DIRECT
                // store bypassed the page cache, so have the kernel read it in now (DMA, no copy here).
                if purpose == .demand && n == 1 { self.cache.prefetch(key(i)) }
                tally?.end(bytes: Int64(buf.count), stored: stored)
            }
        }
        var outcome = FetchOutcome()
        do throws(S3Error) {
            let info = try await client.getObject(bucket, o.key, range: range, ifMatch: o.etag, versionId: o.versionId, sink: assembler.sink)
            let received = assembler.finish()
            // The newest version's stored mtime, for lookups (an earlier one, read in a versions view, is not).
            if o.versionId == nil { versions.note(o.key, info) }
            counters.withLock {
                $0.gets += 1
                $0.bytes += received
            }
            outcome.received = received
            if received != Int64(range.count) { outcome.failure = FSError(EIO, "got \(received) bytes for \(range.count)") }
        } catch {
            outcome.failure = FSError(error, during: .read)
        }
        let err = outcome.failure ?? FSError(EIO, "the response ended early")
        for p in mine where p.resolve(.failure(err)) { unregister(p) }
        if let tally { (outcome.stored, outcome.storeFailures) = await tally.settled() }
        return outcome
    }

    /// Reads the first `limit` bytes of `key` (at most one block; 1 or more; the size a listing showed, so the
    /// buffer fits the object) with one GET of whatever version
    /// S3 has now, instead of a HEAD: the answer's headers say what a HEAD would (ETag, size from
    /// Content-Range, Last-Modified, x-amz-meta-*), and when the object is at most one block its body is block
    /// 0 of that version, which goes to the cache under (key, the answer's ETag, 0), checksummed like any
    /// block, and stays in memory meanwhile. So a file known from a listing costs one request for its stored
    /// mtime and its data (Namespace/StoredMtimes.swift). Noted in `versions` like every GET.
    /// Returns what the answer says of the version; throws what the GET threw (`.noSuchKey` when the object
    /// is gone, `.invalidRange` when it is empty now: ask with HEAD). A body that is not the whole object
    /// (larger than `limit` now) is dropped.
    func fetchSmallObject(_ key: String, limit: Int64) async throws(S3Error) -> ObjectInfo {
        let n = max(1, min(limit, blockSize))
        let got = Mutex<BlockBuffer?>(nil)
        // A buffer of `n` bytes, not a whole block: it stays in memory (`recent`, which counts capacity) until
        // the file is read, and 1 MiB per 128 KiB file filled that budget 8 times as fast.
        let assembler = BlockAssembler(first: 0, blockSize: Int(n)) { i, buf in
            if i == 0 { got.withLock { $0 = buf } }
        }
        let info = try await client.getObject(bucket, key, range: 0..<n, ifMatch: nil, versionId: nil, sink: assembler.sink)
        let received = assembler.finish()
        versions.note(key, info)
        counters.withLock {
            $0.gets += 1
            $0.bytes += received
        }
        guard info.size >= 0, info.size <= n, received == info.size, !info.etag.isEmpty,
              let buf = got.withLock({ $0 }), buf.count == Int(info.size) else { return info }
        let k = BlockKey(bucket: bucket, key: key, etag: info.etag, index: 0)
        recent.put(k, buf)
        cacheWriter.store(cache, k, buf) { _ in }
        return info
    }

    /// What preloading part of an object did (`preload(_:blocks:)`); bytes are object bytes (data, no headers).
    struct PreloadOutcome: Sendable {
        /// Blocks found cached and sound, and their bytes.
        var cachedBlocks = 0
        var cachedBytes: Int64 = 0
        /// Bytes received by this preload's GETs, and those GETs.
        var fetchedBytes: Int64 = 0
        var requests = 0
        /// Bytes of blocks a reader's fetch in flight delivered meanwhile (joined, not fetched twice).
        var joinedBytes: Int64 = 0
        /// Blocks that could not be stored (the cache disk is full).
        var storeFailures = 0
        /// Why the part is not cached whole, if it is not (the object changed or went, S3 failed, cancelled).
        var failure: FSError?
    }

    /// Makes blocks `blocks` of `o` cached and sound: blocks already cached are checked (header, and their
    /// checksum once per process) and kept, blocks a reader is fetching are joined, and the rest are fetched with
    /// ranged GETs (one per run of consecutive missing blocks) and stored before this returns. Returns early,
    /// with the failure, when a GET fails or the task is cancelled; what was stored by then stays cached.
    func preload(_ o: PinnedObject, blocks: Range<Int64>) async -> PreloadOutcome {
        var out = PreloadOutcome()
        guard o.size > 0, !blocks.isEmpty else { return out }
        let bs = blockSize
        func length(_ b: Int64) -> Int64 { min(bs, o.size - b * bs) }
        let cache = self.cache
        let keys = blocks.map { blockKey(o, $0) }
        let listed = keys.map { cache.contains($0) }
        let sound: [Bool] = listed.contains(true)
            ? ((try? await offPool { () throws(FSError) in zip(keys, listed).map { $1 && cache.verify($0) } }) ?? listed.map { _ in false })
            : listed
        var missing: [Int64] = []
        for (b, ok) in zip(blocks, sound) {
            if ok {
                out.cachedBlocks += 1
                out.cachedBytes += length(b)
            } else {
                missing.append(b)
            }
        }
        var at = 0
        while at < missing.count {
            if Task.isCancelled {
                out.failure = FSError(ECANCELED, "cancelled")
                return out
            }
            let b = missing[at]
            // The length of the run of consecutive missing blocks from here.
            var run = 1
            while at + run < missing.count && missing[at + run] == b + Int64(run) { run += 1 }
            var claimed = claim(o, from: b, count: Int64(run))
            if case .joined(let joined) = claimed {
                // A reader is fetching this block: wait for it rather than fetch it twice; if that fetch
                // failed, fetch the block here.
                claimed = (try? await joined.wait()) != nil ? .cached : claim(o, from: b, count: 1)
            }
            let mine: [PendingBlock]
            switch claimed {
            case .cached:
                // A reader's fetch brought it since it was found missing.
                out.joinedBytes += length(b)
                at += 1
                continue
            case .joined:
                out.failure = FSError(EIO, "block \(b) of \(o.key) could not be fetched")
                return out
            case .mine(let m): mine = m
            }
            let r = await runFetch(o, mine, purpose: .preload)
            out.add(r)
            if let f = r.failure {
                out.failure = Task.isCancelled ? FSError(ECANCELED, "cancelled") : f
                return out
            }
            at += mine.count
        }
        return out
    }

    /// Fetches the blocks in `range` ahead of the reader, in requestSize pieces, within the global limit.
    private func schedulePrefetch(_ o: PinnedObject, _ range: Range<Int64>) {
        let per = max(1, limits.requestSize / blockSize)
        var b = range.lowerBound
        while b < range.upperBound {
            let k = blockKey(o, b)
            if cache.contains(k) {
                // Cached on disk: have the kernel start reading it now, so the reader does not wait for the disk.
                cache.prefetch(k)
                b += 1
                continue
            }
            if recent.get(k) != nil || fetches.withLock({ $0[k] != nil }) {
                b += 1
                continue
            }
            guard prefetchInFlight.load(ordering: .relaxed) < maxPrefetchRequests else {
                // Over the limit: let a later read schedule the rest.
                o.readAhead.withLock { $0.prefetchedTo = min($0.prefetchedTo, b) }
                return
            }
            startFetch(o, from: b, count: min(per, range.upperBound - b), isPrefetch: true)
            b += per
        }
    }
}

extension ObjectReader: SmallObjectFetcher {
    func isCached(_ key: String, etag: String) -> Bool {
        !etag.isEmpty && cache.contains(BlockKey(bucket: bucket, key: key, etag: etag, index: 0))
    }
}

extension ObjectReader.PreloadOutcome {
    mutating func add(_ r: ObjectReader.FetchOutcome) {
        fetchedBytes += r.received
        requests += 1
        storeFailures += r.storeFailures
    }
}
