// One planned preload, run once, with its progress (see Preload.swift).
import CkptCache
import CkptS3
import Foundation
import Synchronization

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
