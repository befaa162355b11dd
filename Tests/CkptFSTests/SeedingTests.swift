import CkptCache
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import XCTest

/// Saves entered in the block cache as they land (`FSOptions.cacheSaves`, issue 19): a file saved here and read
/// back after a remount on the same cache directory costs no GET, and never shows bytes other than the ones S3
/// holds under the ETag the listing reports.
final class SeedingTests: XCTestCase {
    var dir: String!
    var s3: MemoryObjectClient!
    let bucket = "b"

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-seed-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket])
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func make(cacheSaves: Bool = true, capacity: Int64 = 1 << 30) async throws -> FileSystem {
        var o = FSOptions()
        o.partSize = 5 << 20
        o.uploadDelay = .zero
        o.cacheSaves = cacheSaves
        let fs = try FileSystem(client: s3, bucket: bucket, prefix: "", cache: try BlockCache(directory: dir, capacity: capacity), options: o)
        _ = try await fs.recover()
        return fs
    }

    /// An unmount: everything durable, the cache writes finished, the cache directory given up.
    func unmount(_ fs: FileSystem) async {
        let left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
        await fs.finishCacheWrites()
        fs.shutdown()
    }

    func write(_ fs: FileSystem, _ name: String, _ data: [UInt8]) async throws {
        let (_, h) = try fs.create(parent: FileSystem.rootIno, name: name, flags: O_WRONLY)
        var off = 0
        while off < data.count {
            let n = min(1 << 20, data.count - off)
            try await fs.writeWaiting(handle: h, offset: Int64(off), data: Array(data[off..<off + n]))
            off += n
        }
        try await fs.flush(handle: h)
        fs.release(handle: h)
    }

    func pattern(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ ($0 >> 12)) &+ seed } }

    /// The case that matters for a training restart: save, unmount, mount again on the same cache directory,
    /// load. A one-PUT file and a multipart one both come back whole with no GetObject.
    func testASaveReadsBackAfterARemountWithNoGet() async throws {
        let small = pattern(300 << 10, 1)
        let big = pattern(12 << 20 + 4321, 2)
        do {
            let fs = try await make()
            try await write(fs, "small.bin", small)
            try await write(fs, "big.bin", big)
            await unmount(fs)
            XCTAssertEqual(fs.cache.stats.seededBlocks, 1 + 13)
        }
        XCTAssertEqual(s3.count("GetObject"), 0)
        let fs = try await make()
        let gotSmall = try await PreloadTests.readAll(fs, "small.bin")
        let gotBig = try await PreloadTests.readAll(fs, "big.bin")
        XCTAssertEqual(gotSmall, small)
        XCTAssertEqual(gotBig, big)
        XCTAssertEqual(s3.count("GetObject"), 0, "a save read back after a remount must come from the cache")
        XCTAssertEqual(fs.stats.getRequests, 0)
        fs.shutdown()
    }

    /// A newer save of the same name (here, and by another client) replaces the older one: a read after the
    /// remount shows the newest bytes, never the older save's blocks still in the cache.
    func testAnOverwrittenSaveIsNeverServed() async throws {
        let v1 = pattern(6 << 20, 10), v2 = pattern(6 << 20, 20), v3 = pattern(6 << 20, 30)
        do {
            let fs = try await make()
            try await write(fs, "model.pt", v1)
            _ = await fs.flushAll(under: "", timeout: .seconds(30))
            try await write(fs, "model.pt", v2)
            await unmount(fs)
        }
        do {
            let fs = try await make()
            let got = try await PreloadTests.readAll(fs, "model.pt")
            XCTAssertEqual(got, v2, "the newest save, not the first one")
            XCTAssertEqual(s3.count("GetObject"), 0)
            fs.shutdown()
        }
        // Another client replaces it while nothing is mounted: the cached blocks are under the old ETag.
        let etag3 = s3.seed(bucket, "model.pt", v3)
        let fs = try await make()
        let got = try await PreloadTests.readAll(fs, "model.pt")
        XCTAssertEqual(got, v3, "what S3 holds now (\(etag3)), not a save still in the cache")
        XCTAssertGreaterThan(s3.count("GetObject"), 0)
        fs.shutdown()
    }

    /// A save over an existing file, as the kernel sends it: an open of its inode with O_TRUNC.
    func overwrite(_ fs: FileSystem, _ name: String, _ data: [UInt8]) async throws {
        let ino = try await fs.lookup(parent: FileSystem.rootIno, name: name).ino
        let h = try await fs.open(ino: ino, flags: O_WRONLY | O_TRUNC).handle
        try await fs.writeWaiting(handle: h, offset: 0, data: data)
        try await fs.flush(handle: h)
        fs.release(handle: h)
    }

    /// The blocks of one version of `key` the cache holds, of a file of `size` bytes.
    func cachedBlocks(_ fs: FileSystem, _ key: String, _ etag: String, size: Int) -> Int {
        (0..<(size + (1 << 20) - 1) >> 20).filter { fs.cache.contains(fs.reader.blockKey(PinnedObject(key: key, etag: etag, size: 0), Int64($0))) }.count
    }

    /// A save replaced by a newer one of the same name, or deleted, leaves the cache as S3 drops it, unless a
    /// descriptor still reads it. Before, every replaced save stayed until evicted, up to the cache's share for
    /// saves (45%): fsx's saves grew a cache by 6.3 GB in 5 minutes (outside testing round 10).
    func testAReplacedOrDeletedSaveLeavesTheCache() async throws {
        let size = 3 << 20
        let fs = try await make()
        try await write(fs, "model.pt", pattern(size, 1))
        _ = await fs.flushAll(under: "", timeout: .seconds(30))
        await fs.finishCacheWrites()
        let e1 = try await s3.headObject(bucket, "model.pt", versionId: nil, ifMatch: nil).etag
        XCTAssertEqual(cachedBlocks(fs, "model.pt", e1, size: size), 3)
        try await overwrite(fs, "model.pt", pattern(size, 2))
        _ = await fs.flushAll(under: "", timeout: .seconds(30))
        await fs.finishCacheWrites()
        let e2 = try await s3.headObject(bucket, "model.pt", versionId: nil, ifMatch: nil).etag
        XCTAssertNotEqual(e1, e2)
        XCTAssertEqual(cachedBlocks(fs, "model.pt", e1, size: size), 0, "the replaced save is still cached")
        XCTAssertEqual(cachedBlocks(fs, "model.pt", e2, size: size), 3)
        // A descriptor reading the newest save keeps it while a third save replaces it.
        let ino = try await fs.lookup(parent: FileSystem.rootIno, name: "model.pt").ino
        let r = try await fs.open(ino: ino, flags: O_RDONLY).handle
        try await overwrite(fs, "model.pt", pattern(size, 3))
        _ = await fs.flushAll(under: "", timeout: .seconds(30))
        await fs.finishCacheWrites()
        XCTAssertEqual(cachedBlocks(fs, "model.pt", e2, size: size), 3, "a version a descriptor reads left the cache")
        fs.release(handle: r)
        let e3 = try await s3.headObject(bucket, "model.pt", versionId: nil, ifMatch: nil).etag
        XCTAssertEqual(cachedBlocks(fs, "model.pt", e3, size: size), 3)
        try await fs.unlink(parent: FileSystem.rootIno, name: "model.pt")
        _ = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertEqual(cachedBlocks(fs, "model.pt", e3, size: size), 0, "the deleted save is still cached")
        await unmount(fs)
    }

    /// A file unlinked while open after its save landed is written in place by its handles; nothing it holds
    /// afterwards may reach the cache under the landed ETag (the same bytes can come back under that ETag).
    func testAnOrphanWrittenAfterItsSaveLandedIsNotServedUnderItsETag() async throws {
        let v1 = pattern(3 << 20, 40)
        let fs = try await make()
        let (attr, h) = try fs.create(parent: FileSystem.rootIno, name: "x.bin", flags: O_RDWR)
        try await fs.writeWaiting(handle: h, offset: 0, data: v1)
        try await fs.fsync(handle: h)  // landed while the handle stays open
        try await fs.unlink(parent: FileSystem.rootIno, name: "x.bin")
        try await fs.writeWaiting(handle: h, offset: 0, data: pattern(3 << 20, 99))
        fs.release(handle: h)
        fs.forget(ino: attr.ino, count: 1)
        await unmount(fs)
        // The same bytes as the landed save, put back by another client: same ETag.
        _ = s3.seed(bucket, "x.bin", v1)
        let fs2 = try await make()
        let got = try await PreloadTests.readAll(fs2, "x.bin")
        XCTAssertEqual(got, v1)
        fs2.shutdown()
    }

    /// The bound and the switch: a save larger than the cache's share for unread saves is not entered, and
    /// neither is any save with `cacheSaves` off; their reads after a remount go to S3.
    func testLargeSavesAndTheSwitchOffAreNotEntered() async throws {
        let data = pattern(3 << 20, 5)
        do {
            // Capacity 4 MiB: the share is 1.8 MiB, under the 3 MiB save.
            let fs = try await make(capacity: 4 << 20)
            try await write(fs, "big.bin", data)
            await unmount(fs)
            XCTAssertEqual(fs.cache.stats.seededBlocks, 0)
        }
        do {
            let fs = try await make(cacheSaves: false)
            try await write(fs, "off.bin", data)
            await unmount(fs)
            XCTAssertEqual(fs.cache.stats.seededBlocks, 0)
        }
        let fs = try await make()
        let a = try await PreloadTests.readAll(fs, "big.bin")
        let b = try await PreloadTests.readAll(fs, "off.bin")
        XCTAssertEqual(a, data)
        XCTAssertEqual(b, data)
        XCTAssertGreaterThan(s3.count("GetObject"), 0)
        fs.shutdown()
    }
}
