// The preloader of one bucket and root: lists, checks, evicts, plans and runs preloads (see Preload.swift).
import CkptCache
import CkptS3
import Foundation
import Synchronization

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
            let s = cache.storedSize(ofObject: o.size)
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
        var seenKeys = BytesSet()
        for e in profile.entries where seenKeys.insert(e.key).inserted { keys.append(e.key) }
        let listing = self.listing
        let infos = try await listing.concurrently(keys) { (k: String) async throws(FSError) -> ObjectInfo? in try await listing.head(k) }
        var found = BytesDictionary<PreloadObject>()
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
        var index = BytesDictionary<Int>()
        var pieces: [PreloadRun.Piece] = []
        var taken = Set<BlockKey>()
        var shareObjects = BytesSet()
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
