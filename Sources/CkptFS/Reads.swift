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
        if write { throw FSError(options.readOnly ? EROFS : EROFS, "writes are not supported by this build") }
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

        // Sequential detection: a read that starts where the last one ended grows the window.
        let (sequential, prefetch): (Bool, Range<Int64>?) = fh.readAhead.withLock { ra in
            let seq = ra.lastEnd >= 0 && offset >= ra.lastEnd - bs && offset <= ra.lastEnd + bs
            ra.lastEnd = end
            if seq {
                ra.window = ra.window == 0 ? options.requestSize : min(options.maxReadAhead, ra.window * 2)
            } else {
                ra.window = 0
                ra.prefetchedTo = 0
                return (false, nil)
            }
            let from = max(last + 1, ra.prefetchedTo)
            let to = min((end + ra.window + bs - 1) / bs, (fh.size + bs - 1) / bs)
            guard from < to else { return (true, nil) }
            ra.prefetchedTo = to
            return (true, from..<to)
        }

        var segments: [ReadSegment] = []
        do throws(FSError) {
            for b in first...last {
                let blockStart = b * bs
                let lo = Int(max(offset, blockStart) - blockStart)
                let hi = Int(min(end, blockStart + bs) - blockStart)
                let key = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
                if let ob = cache.open(key) {
                    guard hi <= ob.length else {
                        close(ob.fd)
                        throw FSError(EIO, "cached block \(b) of \(fh.key) is shorter than the object says")
                    }
                    segments.append(.file(fd: ob.fd, offset: ob.offset + Int64(lo), length: hi - lo))
                } else {
                    let data = try await block(fh, b, demandBlocks: sequential ? options.requestSize / bs : 1)
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

    /// The bytes of block `b`, from a fetch already in flight or a new one covering up to `demandBlocks`
    /// blocks that are neither cached nor being fetched.
    func block(_ fh: FileHandle, _ b: Int64, demandBlocks: Int64) async throws(FSError) -> [UInt8] {
        let key = BlockKey(bucket: bucket, key: fh.key, etag: fh.etag, index: b)
        for attempt in 0..<2 {
            let task = fetches.withLock { $0[key]?.task } ?? startFetch(fh, from: b, count: max(1, demandBlocks))
            do {
                let blocks = try await task.value
                if let data = blocks[b] { return data }
            } catch let e as FSError {
                if attempt == 1 || e.errno == ESTALE || e.errno == ENOENT { throw e }
            } catch {
                if attempt == 1 { throw FSError(EIO, "\(error)") }
            }
            if let data = cache.read(key) { return data }
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
            let data: [UInt8]
            do {
                data = try await self.client.getObject(bucket, fh.key, range: range, ifMatch: fh.etag, versionId: nil).1
            } catch let e as S3Error {
                throw FSError.from(e)
            }
            self.counters.withLock {
                $0.getRequests += 1
                $0.bytesDownloaded += Int64(data.count)
            }
            guard data.count == range.count else { throw FSError(EIO, "got \(data.count) bytes for \(range.count)") }
            var out: [Int64: [UInt8]] = [:]
            for i in 0..<n {
                let lo = Int(i * bs), hi = min(Int((i + 1) * bs), data.count)
                let block = Array(data[lo..<hi])
                block.withUnsafeBytes { _ = self.cache.store(key(from + i), $0) }
                out[from + i] = block
            }
            return out
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
