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
//
// Files: this one (what to preload and each rank's share), PreloadListing.swift (listing paths), Preloader.swift
// (the entry points: list, plan, check, evict, replay), PreloadRun.swift (running a plan), PreloadReports.swift
// (plan, progress, check and eviction reports).
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
