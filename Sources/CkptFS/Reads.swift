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

    struct ReadAhead: Sendable {
        var lastEnd: Int64 = -1
        var streak = 0
        var window: Int64 = 0
        /// Blocks below this index were already considered for prefetch.
        var prefetchedTo: Int64 = 0
    }
    let readAhead = Mutex(ReadAhead())

    init(ino: UInt64, key: String, etag: String, size: Int64) {
        self.ino = ino
        self.key = key
        self.etag = etag
        self.size = size
    }
}

extension FileSystem {
    /// Opens a file for reading. Revalidates the object (HEAD) unless it was checked within the last second
    /// (the kernel looks a file up right before opening it), and pins its ETag for the handle's life.
    public func open(ino: UInt64, write: Bool) async throws(FSError) -> UInt64 {
        let n = try node(ino)
        guard !n.meta.isDirectory else { throw .isDirectory }
        if write { throw FSError(EROFS, "writes are not supported by this build") }
        var meta = n.meta
        if ContinuousClock.now - n.fetched > .seconds(1) {
            guard let m = try await headProbe(n.key) else { throw .noEntry }
            meta = m
            table.withLock { t in
                t.nodes[ino]?.meta = m
                t.nodes[ino]?.fetched = .now
            }
        }
        let h = nextHandle.wrappingAdd(1, ordering: .relaxed).newValue
        handles.withLock { $0[h] = FileHandle(ino: ino, key: n.key, etag: meta.etag, size: meta.size) }
        return h
    }

    public func release(handle: UInt64) { _ = handles.withLock { $0.removeValue(forKey: handle) } }

    /// Reads up to `size` bytes at `offset`. Fewer bytes only at the end of the file.
    public func read(handle: UInt64, offset: Int64, size: Int) async throws(FSError) -> [ReadSegment] {
        guard let fh = handles.withLock({ $0[handle] }) else { throw .badHandle }
        guard offset < fh.size, size > 0 else { return [] }
        let end = min(offset + Int64(size), fh.size)
        let bs = Int64(cache.blockSize)
        let first = offset / bs, last = (end - 1) / bs

        // Stream detection: the kernel sends a sequential reader's reads several at a time and not always in
        // order, so a read counts as sequential when it is large and lands within `band` of the furthest point
        // reached.
        // Two such reads in a row open the read-ahead window; each further one doubles it. A read elsewhere
        // closes it, so random readers fetch only what they touch.
        let band: Int64 = 16 << 20
        let (sequential, prefetch): (Bool, Range<Int64>?) = fh.readAhead.withLock { ra in
            // Random access reaches us as single pages; a stream as large reads (the kernel's read-ahead).
            let large = end - offset >= 64 << 10 || end == fh.size
            let near = large && ra.lastEnd >= 0 && offset >= ra.lastEnd - band && offset <= ra.lastEnd + band
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

        var segments: [ReadSegment] = []
        do throws(FSError) {
            for b in first...last {
                let blockStart = b * bs
                let lo = Int(max(offset, blockStart) - blockStart)
                let hi = Int(min(end, blockStart + bs) - blockStart)
                let key = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
                var source = cache.open(key).map { BlockSource.file($0) }
                if source == nil { source = try await fetchBlock(fh, b, demandBlocks: sequential ? options.requestSize / bs : 1) }
                switch source! {
                case .file(let ob):
                    guard hi <= ob.length else {
                        close(ob.fd)
                        throw FSError(EIO, "cached block \(b) of \(fh.key) is shorter than the object says")
                    }
                    segments.append(.file(fd: ob.fd, offset: ob.offset + Int64(lo), length: hi - lo))
                case .memory(let data):
                    guard hi <= data.count else { throw FSError(EIO, "short block \(b) of \(fh.key)") }
                    segments.append(.bytes(Array(data[lo..<hi])))
                }
            }
        } catch {
            for case .file(let fd, _, _) in segments { close(fd) }
            throw error
        }
        if let prefetch { schedulePrefetch(fh, prefetch) }
        return segments
    }

    enum BlockSource {
        case file(OpenBlock)
        /// A block the cache could not keep (disk full): served from memory.
        case memory([UInt8])
    }

    /// Block `b`, from a fetch already in flight or a new one covering up to `demandBlocks` blocks that are
    /// neither cached nor being fetched. Fetched blocks land in the cache and are served from there.
    func fetchBlock(_ fh: FileHandle, _ b: Int64, demandBlocks: Int64) async throws(FSError) -> BlockSource {
        let key = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
        for attempt in 0..<2 {
            let task = fetches.withLock { $0[key]?.task } ?? startFetch(fh, from: b, count: max(1, demandBlocks))
            do {
                let unstored = try await task.value
                if let data = unstored[b] { return .memory(data) }
            } catch let e as FSError {
                if attempt == 1 || e.errno == ESTALE || e.errno == ENOENT { throw e }
            } catch {
                if attempt == 1 { throw FSError(EIO, "\(error)") }
            }
            if let ob = cache.open(key) { return .file(ob) }
        }
        throw FSError(EIO, "block \(b) of \(fh.key) could not be read")
    }

    /// Starts one ranged GET for blocks [from, from+count) (stopping at the first block cached or in
    /// flight), registers it for each of those blocks, and stores every block in the cache as it arrives.
    @discardableResult
    func startFetch(_ fh: FileHandle, from: Int64, count: Int64, isPrefetch: Bool = false) -> Task<[Int64: [UInt8]], any Error> {
        let bs = Int64(cache.blockSize)
        let lastBlock = (fh.size - 1) / bs
        let bucket = self.bucket
        func key(_ i: Int64) -> BlockKey { BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: i) }
        // Plan under the lock: join a fetch in flight, or decide how many blocks a new one covers.
        let plan: (existing: Task<[Int64: [UInt8]], any Error>?, n: Int64) = fetches.withLock { map in
            if let e = map[key(from)] { return (e.task, 0) }
            var n: Int64 = 1
            while n < count && from + n <= lastBlock && map[key(from + n)] == nil && !cache.contains(key(from + n)) { n += 1 }
            return (nil, n)
        }
        if let existing = plan.existing { return existing }
        let n = plan.n
        let id = nextHandle.wrappingAdd(1, ordering: .relaxed).newValue
        let range = (from * bs)..<min((from + n) * bs, fh.size)
        if isPrefetch { prefetchInFlight.wrappingAdd(1, ordering: .relaxed) }
        let task = Task<[Int64: [UInt8]], any Error> {
            defer {
                self.fetches.withLock { m in
                    for i in from..<(from + n) where m[key(i)]?.id == id { m.removeValue(forKey: key(i)) }
                }
                if isPrefetch { self.prefetchInFlight.wrappingSubtract(1, ordering: .relaxed) }
            }
            // The body streams into the cache block by block; nothing but one block is held in memory.
            let assembler = BlockAssembler(cache: self.cache, first: from, blockSize: Int(bs)) { key($0) }
            do {
                _ = try await self.client.getObject(bucket, fh.key, range: range, ifMatch: fh.etag, versionId: nil,
                                                    sink: assembler.sink)
            } catch let e as S3Error {
                throw FSError.from(e)
            }
            let (received, unstored) = assembler.finish()
            self.counters.withLock {
                $0.getRequests += 1
                $0.bytesDownloaded += received
            }
            guard received == Int64(range.count) else { throw FSError(EIO, "got \(received) bytes for \(range.count)") }
            return unstored
        }
        // Register, unless another reader registered a fetch of the first block meanwhile: then use that one.
        let winner = fetches.withLock { map -> Task<[Int64: [UInt8]], any Error> in
            if let e = map[key(from)] { return e.task }
            for i in from..<(from + n) where map[key(i)] == nil { map[key(i)] = (id, task) }
            return task
        }
        if winner != task { task.cancel() }
        return winner
    }

    /// Fetches the blocks in `range` ahead of the reader, in requestSize pieces, within the global limit.
    func schedulePrefetch(_ fh: FileHandle, _ range: Range<Int64>) {
        let per = max(1, options.requestSize / Int64(cache.blockSize))
        var b = range.lowerBound
        while b < range.upperBound {
            let k = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
            if cache.contains(k) || fetches.withLock({ $0[k] != nil }) {
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

/// Cuts a streamed body into cache blocks as it arrives. Blocks the cache cannot keep (disk full) are kept
/// in memory and handed to the readers waiting for them. A retried request starts again at offset 0.
final class BlockAssembler: @unchecked Sendable {
    let cache: BlockCache
    let first: Int64
    let blockSize: Int
    let key: (Int64) -> BlockKey
    private let lock = NSLock()
    private let buffer: UnsafeMutableRawBufferPointer
    private var fill = 0
    private var index: Int64
    private var expected: Int64 = 0
    private var unstored: [Int64: [UInt8]] = [:]

    init(cache: BlockCache, first: Int64, blockSize: Int, key: @escaping (Int64) -> BlockKey) {
        self.cache = cache
        self.first = first
        self.blockSize = blockSize
        self.key = key
        self.index = first
        self.buffer = .allocate(byteCount: blockSize, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    var sink: ObjectBodySink {
        { [self] offset, bytes in
            lock.lock()
            defer { lock.unlock() }
            if offset != expected {
                guard offset == 0 else { throw FSError(EIO, "body arrived out of order") }
                fill = 0  // a retry: start over
                index = first
                expected = 0
                unstored.removeAll()
            }
            var p = 0
            while p < bytes.count {
                let n = min(blockSize - fill, bytes.count - p)
                (buffer.baseAddress! + fill).copyMemory(from: bytes.baseAddress! + p, byteCount: n)
                fill += n
                p += n
                if fill == blockSize { flush() }
            }
            expected += Int64(bytes.count)
        }
    }

    private func flush() {
        let data = UnsafeRawBufferPointer(rebasing: buffer[0..<fill])
        if !cache.store(key(index), data) { unstored[index] = Array(data) }
        index += 1
        fill = 0
    }

    /// Stores the last, partial block; returns the bytes received and the blocks the cache did not keep.
    func finish() -> (Int64, [Int64: [UInt8]]) {
        lock.lock()
        defer { lock.unlock() }
        if fill > 0 { flush() }
        return (expected, unstored)
    }
}
