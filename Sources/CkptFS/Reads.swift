// The read path: open handles pinned to one ETag, block fetches shared between readers, read-ahead.
import CkptCache
import CkptS3
import Foundation
import Synchronization

final class FileHandle: Sendable {
    let ino: UInt64
    let key: String
    let etag: String
    let size: Int64
    /// Reads of this handle should bypass the kernel's page cache (FSOptions.directReadMinSize).
    let direct: Bool

    struct ReadAhead: Sendable {
        var lastEnd: Int64 = -1
        var streak = 0
        var window: Int64 = 0
        /// Blocks below this index were already considered for prefetch.
        var prefetchedTo: Int64 = 0
    }
    let readAhead = Mutex(ReadAhead())

    init(ino: UInt64, key: String, etag: String, size: Int64, direct: Bool = false) {
        self.ino = ino
        self.key = key
        self.etag = etag
        self.size = size
        self.direct = direct
    }
}

extension FileSystem {
    /// Opens a file. Reading a clean file revalidates the object (HEAD) unless it was checked within the last
    /// second (the kernel looks a file up right before opening it) and pins its ETag for the handle's life.
    /// Writing (or reading a file with local changes) goes to its local version (Writes.swift).
    public func open(ino: UInt64, flags: Int32) async throws(FSError) -> UInt64 {
        let n = try node(ino)
        guard !n.meta.isDirectory else { throw .isDirectory }
        let write = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0
        let isLocal = local.withLock { $0[n.key] != nil }
        if isLocal && !write, let h = try await openLocal(ino: ino, key: n.key, write: false, truncate: false, remote: nil) {
            return h
        }
        let remote = isLocal ? nil : try await remoteObject(ino, n)
        if write {
            if !isLocal && remote == nil && !n.meta.etag.isEmpty { throw .noEntry }  // deleted in S3 meanwhile
            return try await openLocal(ino: ino, key: n.key, write: true, truncate: flags & O_TRUNC != 0, remote: remote)!
        }
        guard let remote else { throw .noEntry }
        let direct = directReadsAvailable.load(ordering: .relaxed) && options.directReadMinSize.map { min in
            remote.size >= min && remote.size > 0
                && !cache.contains(BlockKey(bucket: bucket, key: n.key, etag: remote.etag, index: 0))
        } ?? false
        if direct { counters.withLock { $0.directOpens += 1 } }
        let h = nextHandle.wrappingAdd(1, ordering: .relaxed).newValue
        handles.withLock { $0[h] = FileHandle(ino: ino, key: n.key, etag: remote.etag, size: remote.size, direct: direct) }
        return h
    }

    /// Whether reads of `handle` bypass the kernel's page cache (a cold read-only open of a large file,
    /// FSOptions.directReadMinSize). False for handles of local versions.
    public func readsDirect(handle: UInt64) -> Bool {
        handles.withLock { $0[handle]?.direct } ?? false
    }

    /// The object behind a node as S3 has it now (revalidated with a HEAD unless checked within the last
    /// second: the kernel looks a file up right before opening it), or nil when there is none.
    ///
    /// An inode stands for one version of its object (see `replaced`). When the object is no longer the
    /// version the inode shows, this throws ESTALE: the kernel then walks the path again with a forced
    /// lookup (the VFS retries an open that fails with ESTALE once, with LOOKUP_REVAL), which finds the new
    /// inode, and the open goes to it. So an open that revalidated never reads the kernel's pages, size or
    /// mtime of the old version.
    func remoteObject(_ ino: UInt64, _ n: Node) async throws(FSError) -> FileHandle? {
        var meta = n.meta
        if meta.etag.isEmpty && local.withLock({ $0[n.key] != nil }) { return nil }  // exists only here
        if n.superseded { throw FSError(ESTALE, "\(n.key) was replaced in S3; the kernel looks it up again") }
        if ContinuousClock.now - n.fetched > .seconds(1) || meta.etag.isEmpty {
            guard let m = try await headProbe(n.key) else { return nil }
            if !meta.etag.isEmpty && m.etag != meta.etag {
                replaced(ino, n, by: m)
                throw FSError(ESTALE, "\(n.key) was replaced in S3; the kernel looks it up again")
            }
            meta = m
            table.withLock { t in
                t.nodes[ino]?.meta = m
                t.nodes[ino]?.fetched = .now
            }
        }
        return FileHandle(ino: ino, key: n.key, etag: meta.etag, size: meta.size)
    }

    public func release(handle: UInt64) {
        if handles.withLock({ $0.removeValue(forKey: handle) }) == nil { releaseLocal(handle: handle) }
    }

    /// Reads up to `size` bytes at `offset`. Fewer bytes only at the end of the file.
    public func read(handle: UInt64, offset: Int64, size: Int) async throws(FSError) -> [ReadSegment] {
        try await readNow(handle: handle, offset: offset, size: size).segments()
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

    /// Starts a read without waiting: when every block it needs is in memory or in the cache, its bytes are
    /// returned at once (the FUSE thread replies without handing the request to another thread, which is
    /// most of a small read's cost); otherwise the part that waits for the network is returned to be awaited.
    /// Either way the read-ahead it triggers has started.
    public func readNow(handle: UInt64, offset: Int64, size: Int) throws(FSError) -> ReadNow {
        guard let fh = handles.withLock({ $0[handle] }) else {
            guard let lh = localHandles.withLock({ $0[handle] }) else { throw .badHandle }
            return .later(PendingRead { () async throws(FSError) in try await self.readLocal(lh, offset: offset, size: size) })
        }
        guard offset < fh.size, size > 0 else { return .done([]) }
        return try startRead(fh, offset: offset, size: size)
    }

    /// Reads up to `size` bytes of the object version `fh` pins, through the block cache.
    func readObject(_ fh: FileHandle, offset: Int64, size: Int) async throws(FSError) -> [ReadSegment] {
        guard offset < fh.size, size > 0 else { return [] }
        return try await startRead(fh, offset: offset, size: size).segments()
    }

    /// Plans a read of an object and gathers the blocks at hand; the rest waits in the returned `.later`.
    func startRead(_ fh: FileHandle, offset: Int64, size: Int) throws(FSError) -> ReadNow {
        let plan = planRead(fh, offset: offset, size: size)
        var segments: [ReadSegment] = []
        guard let missing = try gatherNow(fh, plan, &segments) else {
            if let prefetch = plan.prefetch { schedulePrefetch(fh, prefetch) }
            return .done(segments)
        }
        let have = segments
        return .later(PendingRead { () async throws(FSError) in
            try await self.finishRead(fh, plan, have: have, from: missing)
        })
    }

    /// Completes a planned read from block `missing` on; `have` holds the segments of the blocks before it.
    /// Block `missing` was just found not at hand: it is looked up again only if it has reached the cache
    /// since (so a cache miss is counted once), else fetched or joined to its fetch in flight.
    func finishRead(_ fh: FileHandle, _ plan: ReadPlan, have: [ReadSegment], from missing: Int64) async throws(FSError) -> [ReadSegment] {
        var segments = have
        do throws(FSError) {
            for b in missing...blockRange(plan).upperBound {
                let look = b != missing || cache.contains(BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b))
                var source = look ? blockSourceNow(fh, b) : nil
                if source == nil {
                    source = try await fetchBlock(fh, b, demandBlocks: plan.sequential ? options.requestSize / Int64(cache.blockSize) : 1)
                }
                try appendSegment(&segments, fh, plan, b, source!)
            }
        } catch {
            closeFiles(segments)
            throw error
        }
        if let prefetch = plan.prefetch { schedulePrefetch(fh, prefetch) }
        return segments
    }

    /// One read of an object: its byte range, whether it continues a stream, and the blocks to fetch ahead.
    struct ReadPlan: Sendable {
        var offset: Int64
        var end: Int64
        var sequential: Bool
        var prefetch: Range<Int64>?
    }

    /// Stream detection and the read-ahead window, updated once per read (`offset` < file size, `size` > 0).
    func planRead(_ fh: FileHandle, offset: Int64, size: Int) -> ReadPlan {
        let end = min(offset + Int64(size), fh.size)
        let bs = Int64(cache.blockSize)

        // Stream detection: the kernel sends a sequential reader's reads several at a time and not always in
        // order, so a read counts as sequential when it is large and lands within `band` of the furthest point
        // reached, or when it starts exactly where the last one ended (small reads of a direct-I/O handle
        // reach us as the program makes them).
        // Two such reads in a row open the read-ahead window; each further one doubles it. A read elsewhere
        // closes it, so random readers fetch only what they touch.
        let band: Int64 = 16 << 20
        let (sequential, prefetch): (Bool, Range<Int64>?) = fh.readAhead.withLock { ra in
            // Random access reaches us as single pages; a stream as large reads (the kernel's read-ahead).
            let large = end - offset >= 64 << 10 || end == fh.size
            let near = offset == ra.lastEnd
                || (large && ra.lastEnd >= 0 && offset >= ra.lastEnd - band && offset <= ra.lastEnd + band)
            ra.lastEnd = near ? max(ra.lastEnd, end) : end
            ra.streak = near ? ra.streak + 1 : 0
            if ra.streak >= 2 {
                ra.window = ra.window == 0 ? options.requestSize : min(options.maxReadAhead, ra.window * 2)
            } else {
                ra.window = 0
                ra.prefetchedTo = 0
                return (ra.streak >= 1, nil)
            }
            let from = max((ra.lastEnd + bs - 1) / bs, ra.prefetchedTo)
            let fileBlocks = (fh.size + bs - 1) / bs
            let to = min((end + ra.window + bs - 1) / bs, fileBlocks)
            // Issue whole requests only: wait until a full requestSize fits (or the file ends), so the
            // window's steady advance does not turn into one small GET per read.
            let per = max(1, options.requestSize / bs)
            guard from < to, to - from >= per || to == fileBlocks else { return (true, nil) }
            let upTo = to == fileBlocks ? to : from + (to - from) / per * per
            ra.prefetchedTo = upTo
            return (true, from..<upTo)
        }
        return ReadPlan(offset: offset, end: end, sequential: sequential, prefetch: prefetch)
    }

    /// Appends the segments of the read's blocks that are at hand now, in order, and returns the first block
    /// that is not (nothing appended from it on), or nil when the read is complete.
    func gatherNow(_ fh: FileHandle, _ plan: ReadPlan, _ segments: inout [ReadSegment]) throws(FSError) -> Int64? {
        do throws(FSError) {
            for b in blockRange(plan) {
                guard let source = blockSourceNow(fh, b) else { return b }
                try appendSegment(&segments, fh, plan, b, source)
            }
        } catch {
            closeFiles(segments)
            throw error
        }
        return nil
    }

    func blockRange(_ plan: ReadPlan) -> ClosedRange<Int64> {
        let bs = Int64(cache.blockSize)
        return (plan.offset / bs)...((plan.end - 1) / bs)
    }

    /// Block `b` if it is at hand: in memory (downloaded lately, or downloaded and still being stored) or in
    /// the cache.
    func blockSourceNow(_ fh: FileHandle, _ b: Int64) -> BlockSource? {
        let key = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
        if let buf = recent.get(key) ?? fetches.withLock({ $0[key] })?.arrived { return .memory(buf) }
        return cache.open(key).map { BlockSource.file($0) }
    }

    func closeFiles(_ segments: [ReadSegment]) {
        for case .file(let fd, _, _) in segments { close(fd) }
    }

    /// Adds block `b`'s part of the read.
    func appendSegment(_ segments: inout [ReadSegment], _ fh: FileHandle, _ plan: ReadPlan, _ b: Int64,
                       _ source: BlockSource) throws(FSError) {
        let bs = Int64(cache.blockSize)
        let blockStart = b * bs
        let lo = Int(max(plan.offset, blockStart) - blockStart)
        let hi = Int(min(plan.end, blockStart + bs) - blockStart)
        switch source {
        case .file(let ob):
            guard hi <= ob.length else {
                close(ob.fd)
                throw FSError(EIO, "cached block \(b) of \(fh.key) is shorter than the object says")
            }
            segments.append(.file(fd: ob.fd, offset: ob.offset + Int64(lo), length: hi - lo))
        case .memory(let buf):
            guard hi <= buf.count else { throw FSError(EIO, "short block \(b) of \(fh.key)") }
            segments.append(.memory(buf, offset: lo, length: hi - lo))
            // A stream that has read a block to its end will not come back for it.
            if plan.sequential && hi == buf.count {
                buf.consumed.store(true, ordering: .relaxed)
                recent.remove(BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b))
            }
        }
    }

    enum BlockSource {
        case file(OpenBlock)
        /// A block just downloaded, served from memory while (or instead of, when the disk is full) it is stored.
        case memory(BlockBuffer)
    }

    /// Block `b`, from a fetch already in flight or a new one covering up to `demandBlocks` blocks that are
    /// neither cached nor being fetched. A reader waits for its own block only, not for the whole request:
    /// each block is handed over as soon as its last byte has arrived and been stored.
    func fetchBlock(_ fh: FileHandle, _ b: Int64, demandBlocks: Int64) async throws(FSError) -> BlockSource {
        let key = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
        for attempt in 0..<2 {
            let pending = fetches.withLock { $0[key] } ?? startFetch(fh, from: b, count: max(1, demandBlocks))
            do throws(FSError) {
                return .memory(try await pending.wait())
            } catch {
                if attempt == 1 || error.errno == ESTALE || error.errno == ENOENT { throw error }
            }
            if let ob = cache.open(key) { return .file(ob) }
        }
        throw FSError(EIO, "block \(b) of \(fh.key) could not be read")
    }

    /// Starts one ranged GET for blocks [from, from+count) (stopping at the first block cached or in
    /// flight), registers a pending block for each, and stores every block in the cache as it arrives.
    /// Returns the pending block `from` (which may belong to a fetch already in flight).
    @discardableResult
    func startFetch(_ fh: FileHandle, from: Int64, count: Int64, isPrefetch: Bool = false) -> PendingBlock {
        let bs = Int64(cache.blockSize)
        let lastBlock = (fh.size - 1) / bs
        let bucket = self.bucket
        @Sendable func key(_ i: Int64) -> BlockKey { BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: i) }
        // Plan and register under one lock: join a fetch in flight, or claim the blocks a new one covers.
        let (joined, mine): (PendingBlock?, [PendingBlock]) = fetches.withLock { map in
            if let e = map[key(from)] { return (e, []) }
            var blocks: [PendingBlock] = []
            var i = from
            while i < from + max(1, count) && i <= lastBlock && (i == from || (map[key(i)] == nil && !cache.contains(key(i)))) {
                let p = PendingBlock(index: i)
                map[key(i)] = p
                blocks.append(p)
                i += 1
            }
            return (nil, blocks)
        }
        if let joined { return joined }
        let n = Int64(mine.count)
        @Sendable func unregister(_ p: PendingBlock) {
            fetches.withLock { m in if m[key(p.index)] === p { m.removeValue(forKey: key(p.index)) } }
        }
        let range = (from * bs)..<min((from + n) * bs, fh.size)
        if isPrefetch { prefetchInFlight.wrappingAdd(1, ordering: .relaxed) }
        Task {
            defer { if isPrefetch { self.prefetchInFlight.wrappingSubtract(1, ordering: .relaxed) } }
            // Each block goes to its readers the moment it is complete, and to the cache off the network
            // thread; it stays registered (answering readers from memory) until it is on disk.
            let assembler = BlockAssembler(first: from, blockSize: Int(bs)) { i, buf in
                let p = mine[Int(i - from)]
                p.resolve(.success(buf))
                self.cacheWriter.store(self.cache, key(i), buf) {
                    // Kept in memory for the reader still to come, unless it already read the block meanwhile.
                    if !buf.consumed.load(ordering: .relaxed) { self.recent.put(key(i), buf) }
                    unregister(p)
                    // A random reader's block (a one-block demand fetch) is likely read again soon: the O_DIRECT
                    // store bypassed the page cache, so have the kernel read it in now (DMA, no copy here).
                    if !isPrefetch && n == 1 { self.cache.prefetch(key(i)) }
                }
            }
            var failure: FSError?
            do {
                _ = try await self.client.getObject(bucket, fh.key, range: range, ifMatch: fh.etag, versionId: nil,
                                                    sink: assembler.sink)
                let received = assembler.finish()
                self.counters.withLock {
                    $0.getRequests += 1
                    $0.bytesDownloaded += received
                }
                if received != Int64(range.count) { failure = FSError(EIO, "got \(received) bytes for \(range.count)") }
            } catch let e as S3Error {
                failure = FSError.from(e)
            } catch let e as FSError {
                failure = e
            } catch {
                failure = FSError(EIO, "\(error)")
            }
            // Blocks that never arrived fail their readers and are unregistered, so a later read retries.
            let err = failure ?? FSError(EIO, "the response ended early")
            for p in mine where p.resolve(.failure(err)) { unregister(p) }
        }
        return mine[0]
    }

    /// Fetches the blocks in `range` ahead of the reader, in requestSize pieces, within the global limit.
    func schedulePrefetch(_ fh: FileHandle, _ range: Range<Int64>) {
        let per = max(1, options.requestSize / Int64(cache.blockSize))
        var b = range.lowerBound
        while b < range.upperBound {
            let k = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
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
            guard prefetchInFlight.load(ordering: .relaxed) < options.maxPrefetchRequests else {
                // Over the limit: let a later read schedule the rest.
                fh.readAhead.withLock { $0.prefetchedTo = min($0.prefetchedTo, b) }
                return
            }
            startFetch(fh, from: b, count: min(per, range.upperBound - b), isPrefetch: true)
            b += per
        }
    }
}

/// One block that a fetch in flight will deliver: readers wait on it; the fetch resolves it with the block's
/// bytes as soon as they are all there (or with the fetch's error).
final class PendingBlock: Sendable {
    typealias Outcome = Result<BlockBuffer, FSError>
    let index: Int64
    private let state = Mutex<(result: Outcome?, waiters: [CheckedContinuation<Outcome, Never>])>((nil, []))

    init(index: Int64) { self.index = index }

    /// The block's bytes if they have arrived.
    var arrived: BlockBuffer? {
        state.withLock { s in if case .success(let b)? = s.result { b } else { nil } }
    }

    /// Resolves the block; only the first call counts (and returns true).
    @discardableResult
    func resolve(_ r: Outcome) -> Bool {
        let (first, waiters) = state.withLock { s -> (Bool, [CheckedContinuation<Outcome, Never>]) in
            guard s.result == nil else { return (false, []) }
            s.result = r
            defer { s.waiters = [] }
            return (true, s.waiters)
        }
        for w in waiters { w.resume(returning: r) }
        return first
    }

    func wait() async throws(FSError) -> BlockBuffer {
        let r = await withCheckedContinuation { (c: CheckedContinuation<Outcome, Never>) in
            let done = state.withLock { s -> Outcome? in
                if let r = s.result { return r }
                s.waiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
        return try r.get()
    }
}

/// Blocks downloaded lately, kept in memory within a byte budget (oldest dropped first). Read-ahead runs ahead of
/// the reader; without this its blocks would be read back from disk moments after they were downloaded.
final class RecentBlocks: Sendable {
    private let state = Mutex<(map: [BlockKey: BlockBuffer], order: [BlockKey], bytes: Int)>(([:], [], 0))
    let budget: Int

    init(budget: Int) { self.budget = budget }

    func put(_ k: BlockKey, _ b: BlockBuffer) {
        state.withLock { s in
            guard s.map.updateValue(b, forKey: k) == nil else { return }
            s.order.append(k)
            s.bytes += b.capacity
            while s.bytes > budget, !s.order.isEmpty {
                let old = s.order.removeFirst()
                if let v = s.map.removeValue(forKey: old) { s.bytes -= v.capacity }
            }
        }
    }

    func get(_ k: BlockKey) -> BlockBuffer? { state.withLock { $0.map[k] } }

    func remove(_ k: BlockKey) {
        state.withLock { s in
            guard let v = s.map.removeValue(forKey: k) else { return }
            s.bytes -= v.capacity
            if let i = s.order.firstIndex(of: k) { s.order.remove(at: i) }
        }
    }
}

/// Writes downloaded blocks to the cache on its own threads, so the network threads never wait for the disk.
/// At most `limit` blocks wait in memory; beyond that the caller stores inline (back-pressure on the download).
final class CacheWriter: Sendable {
    private let queues = [DispatchQueue(label: "ckptfs.cache-writer.0"), DispatchQueue(label: "ckptfs.cache-writer.1")]
    private let next = Atomic<Int>(0)
    private let queued = Atomic<Int>(0)
    let limit: Int

    init(limit: Int = 64) { self.limit = limit }

    func store(_ cache: BlockCache, _ key: BlockKey, _ buf: BlockBuffer, then done: @escaping @Sendable () -> Void) {
        if queued.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            queued.wrappingSubtract(1, ordering: .relaxed)
            cache.store(key, buf.bytes)
            done()
            return
        }
        queues[next.wrappingAdd(1, ordering: .relaxed).newValue % queues.count].async { [self] in
            cache.store(key, buf.bytes)
            queued.wrappingSubtract(1, ordering: .relaxed)
            done()
        }
    }
}

/// Cuts a streamed body into blocks as it arrives and hands each one over as soon as it is complete. A retried
/// request starts again at offset 0; blocks already handed over are not handed over twice.
final class BlockAssembler: @unchecked Sendable {
    let first: Int64
    let blockSize: Int
    let delivered: (Int64, BlockBuffer) -> Void
    private let lock = NSLock()
    private var buffer: BlockBuffer
    private var index: Int64
    private var expected: Int64 = 0
    private var handedOver: Int64

    init(first: Int64, blockSize: Int, delivered: @escaping (Int64, BlockBuffer) -> Void) {
        self.first = first
        self.blockSize = blockSize
        self.delivered = delivered
        self.index = first
        self.handedOver = first
        self.buffer = BlockBuffer(capacity: blockSize)
    }

    var sink: ObjectBodySink {
        { [self] offset, bytes in
            lock.lock()
            defer { lock.unlock() }
            if offset != expected {
                guard offset == 0 else { throw FSError(EIO, "body arrived out of order") }
                buffer = BlockBuffer(capacity: blockSize)  // a retry: start over
                index = first
                expected = 0
            }
            var p = 0
            while p < bytes.count {
                p += buffer.append(UnsafeRawBufferPointer(rebasing: bytes[p...]))
                if buffer.isFull { handOver() }
            }
            expected += Int64(bytes.count)
        }
    }

    private func handOver() {
        if index >= handedOver {
            delivered(index, buffer)
            handedOver = index + 1
        }
        index += 1
        buffer = BlockBuffer(capacity: blockSize)
    }

    /// Hands over the last, partial block; returns the bytes received.
    func finish() -> Int64 {
        lock.lock()
        defer { lock.unlock() }
        if buffer.count > 0 { handOver() }
        return expected
    }
}
