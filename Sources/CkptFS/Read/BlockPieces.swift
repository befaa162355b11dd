// Pieces the object reader is built from: a block a fetch will deliver, blocks kept in memory after download,
// the writer that stores downloaded blocks in the cache off the network threads, and the assembler that cuts a
// streamed body into blocks.
import CkptCache
import CkptS3
import Foundation
import Synchronization

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
    /// Stores announced (`announce`) and not ended.
    private let announced = DispatchGroup()
    let limit: Int

    init(limit: Int = 64) { self.limit = limit }

    /// Returns once every block announced or queued before the call is stored (blocking: call off the
    /// cooperative pool).
    func waitQueued() {
        announced.wait()
        for q in queues { q.sync {} }
    }

    /// A store of a block is coming (`store(…, announced: true)`), once its readers are answered: `waitQueued`
    /// waits for it from now on. A read could return, and an unmount's wait for the cache writes end, between
    /// the answer and the store (CI: a block stored after the test had looked at the cache).
    func announce() { announced.enter() }

    /// Stores `buf` as block `key`, then calls `done` with whether it was stored (false: the cache disk is full).
    /// `announced`: `announce` was called for this store.
    func store(_ cache: BlockCache, _ key: BlockKey, _ buf: BlockBuffer, announced: Bool = false,
               then done: @escaping @Sendable (Bool) -> Void) {
        if queued.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            queued.wrappingSubtract(1, ordering: .relaxed)
            done(cache.store(key, buf.bytes))
            if announced { self.announced.leave() }
            return
        }
        queues[next.wrappingAdd(1, ordering: .relaxed).newValue % queues.count].async { [self] in
            let stored = cache.store(key, buf.bytes)
            queued.wrappingSubtract(1, ordering: .relaxed)
            done(stored)
            if announced { self.announced.leave() }
        }
    }
}

/// The stores one fetch started, for a caller that waits until its blocks are on disk (preload): each block
/// handed to the cache writer is `begin`, each store that ended `end`; `settled()` returns once every store
/// begun has ended (call it after the fetch, when no more begin).
final class StoreTally: Sendable {
    private let state = Mutex<(begun: Int, ended: Int, stored: Int64, failed: Int, waiter: CheckedContinuation<Void, Never>?)>((0, 0, 0, 0, nil))

    func begin() { state.withLock { $0.begun += 1 } }

    /// A store of `bytes` data bytes ended, `stored` or not (disk full).
    func end(bytes: Int64, stored: Bool) {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.ended += 1
            if stored { s.stored += bytes } else { s.failed += 1 }
            guard s.ended == s.begun else { return nil }
            defer { s.waiter = nil }
            return s.waiter
        }
        w?.resume()
    }

    /// Waits for the stores begun so far; returns the data bytes stored and the blocks that could not be.
    func settled() async -> (stored: Int64, failed: Int) {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.ended == s.begun { return true }
                s.waiter = c
                return false
            }
            if now { c.resume() }
        }
        return state.withLock { ($0.stored, $0.failed) }
    }
}

/// Cuts a streamed body into blocks as it arrives and hands each one over as soon as it is complete. A retried
/// request starts again at offset 0; blocks already handed over are not handed over twice. With `end` (the
/// object's size), the last block's buffer is only as large as that block: a small object's block comes from
/// malloc's heap instead of a fresh 1 MiB mapping whose pages are each faulted in.
final class BlockAssembler: @unchecked Sendable {
    let first: Int64
    let blockSize: Int
    let end: Int64?
    let delivered: (Int64, BlockBuffer) -> Void
    private let lock = NSLock()
    private var buffer: BlockBuffer
    private var index: Int64
    private var expected: Int64 = 0
    private var handedOver: Int64

    init(first: Int64, blockSize: Int, end: Int64? = nil, delivered: @escaping (Int64, BlockBuffer) -> Void) {
        self.first = first
        self.blockSize = blockSize
        self.end = end
        self.delivered = delivered
        self.index = first
        self.handedOver = first
        self.buffer = BlockBuffer(capacity: BlockAssembler.capacity(of: first, blockSize: blockSize, end: end))
    }

    /// The size of block `index`'s buffer: a block, or what is left of the object before `end`.
    static func capacity(of index: Int64, blockSize: Int, end: Int64?) -> Int {
        guard let end else { return blockSize }
        return Int(max(1, min(Int64(blockSize), end - index * Int64(blockSize))))
    }

    var sink: ObjectBodySink {
        { [self] offset, bytes in
            lock.lock()
            defer { lock.unlock() }
            if offset != expected {
                guard offset == 0 else { throw FSError(EIO, "body arrived out of order") }
                buffer = BlockBuffer(capacity: BlockAssembler.capacity(of: first, blockSize: blockSize, end: end))  // a retry: start over
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
        buffer = BlockBuffer(capacity: BlockAssembler.capacity(of: index, blockSize: blockSize, end: end))
    }

    /// Hands over the last, partial block; returns the bytes received.
    func finish() -> Int64 {
        lock.lock()
        defer { lock.unlock() }
        if buffer.count > 0 { handOver() }
        return expected
    }
}
