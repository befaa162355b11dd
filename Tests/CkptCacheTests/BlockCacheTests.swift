@testable import CkptCache
import Foundation
import XCTest

final class BlockCacheTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-cache-\(UUID().uuidString)"
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func block(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7) &+ seed } }

    /// Flips data byte `offset` of block `k` in `c`'s directory, on disk behind the cache; returns the block's path.
    @discardableResult
    func damage(_ c: BlockCache, _ k: BlockKey, at offset: Int) -> String {
        let path = "\(dir!)/blocks/\(c.relativePath(k))"
        let fd = open(path, O_RDWR)
        var b: UInt8 = 0
        pread(fd, &b, 1, off_t(BlockCache.headerSize + offset))
        b ^= 0xff
        pwrite(fd, &b, 1, off_t(BlockCache.headerSize + offset))
        close(fd)
        return path
    }

    func testStoreReadAndPersistAcrossInstances() throws {
        let k = BlockKey(bucket: "b", key: "dir/obj", etag: "\"e1\"", index: 3)
        let data = block(1000, 1)
        do {
            let c = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
            XCTAssertNil(c.read(k))
            XCTAssertTrue(data.withUnsafeBytes { c.store(k, $0) })
            XCTAssertEqual(c.read(k), data)
            XCTAssertEqual(c.stats.hits, 1)
            XCTAssertEqual(c.stats.misses, 1)
            var st = stat()
            stat(dir, &st)
            XCTAssertEqual(st.st_mode & 0o777, 0o700)
        }
        // A new instance (a remount) finds it, checks it and serves it.
        let c2 = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
        XCTAssertEqual(c2.stats.blocks, 1)
        XCTAssertEqual(c2.read(k), data)
        // Another ETag, key or index is another block.
        XCTAssertNil(c2.read(BlockKey(bucket: "b", key: "dir/obj", etag: "\"e2\"", index: 3)))
        XCTAssertNil(c2.read(BlockKey(bucket: "b", key: "dir/obj", etag: "\"e1\"", index: 4)))
        XCTAssertNil(c2.read(BlockKey(bucket: "b2", key: "dir/obj", etag: "\"e1\"", index: 3)))
    }

    func testADamagedBlockIsDiscardedNotServed() throws {
        let k = BlockKey(bucket: "b", key: "k", etag: "e", index: 0)
        let data = block(4096, 9)
        do {
            let c = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
            data.withUnsafeBytes { _ = c.store(k, $0) }
        }
        // Flip one data byte on disk.
        let c = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
        let path = damage(c, k, at: 100)
        XCTAssertNil(c.read(k), "a block that fails its checksum is never served")
        XCTAssertEqual(c.stats.corruptBlocks, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path), "and it is deleted")
        // Truncated files and wrong headers are caught too.
        data.withUnsafeBytes { _ = c.store(k, $0) }
        XCTAssertEqual(c.read(k), data)
        truncate(path, off_t(BlockCache.headerSize + 10))
        XCTAssertNil(c.read(k), "a truncated block is caught even after it was verified once")
    }

    func testLRUEvictionKeepsUsageBounded() throws {
        let c = try BlockCache(directory: dir, capacity: 10 * (4096 + Int64(BlockCache.headerSize)), blockSize: 4096)
        let data = block(4096, 3)
        for i in 0..<8 { data.withUnsafeBytes { _ = c.store(BlockKey(bucket: "b", key: "k", etag: "e", index: Int64(i)), $0) } }
        // Touch block 0 so it is recent.
        XCTAssertNotNil(c.read(BlockKey(bucket: "b", key: "k", etag: "e", index: 0)))
        for i in 8..<20 { data.withUnsafeBytes { _ = c.store(BlockKey(bucket: "b", key: "k", etag: "e", index: Int64(i)), $0) } }
        XCTAssertLessThanOrEqual(c.stats.usedBytes, c.capacity)
        XCTAssertGreaterThan(c.stats.evictions, 0)
        XCTAssertNotNil(c.read(BlockKey(bucket: "b", key: "k", etag: "e", index: 19)), "the newest stays")
        XCTAssertNil(c.read(BlockKey(bucket: "b", key: "k", etag: "e", index: 1)), "the least recently used went first")
        // Usage on disk matches the index.
        let files = try FileManager.default.subpathsOfDirectory(atPath: dir + "/blocks").filter { $0.contains("-") }
        XCTAssertEqual(files.count, c.stats.blocks)
    }

    /// A held object version's blocks are neither evicted nor removed, whatever else is stored; after the last
    /// release they are evicted like any others. Other versions of the same key are not held.
    func testAHeldObjectVersionIsNeverEvictedUntilItsLastRelease() throws {
        let c = try BlockCache(directory: dir, capacity: 10 * (4096 + Int64(BlockCache.headerSize)), blockSize: 4096)
        let data = block(4096, 3)
        func key(_ etag: String, _ i: Int) -> BlockKey { BlockKey(bucket: "b", key: "k", etag: etag, index: Int64(i)) }
        for i in 0..<4 { data.withUnsafeBytes { _ = c.store(key("old", i), $0) } }
        c.hold(key("old", 99))  // the index does not matter: the whole version
        c.hold(key("old", 0))
        for i in 0..<4 { data.withUnsafeBytes { _ = c.store(key("other", i), $0) } }
        for i in 0..<30 { data.withUnsafeBytes { _ = c.store(key("new", i), $0) } }
        XCTAssertEqual(c.remove(key("old", 1)), 0, "remove leaves a held block")
        for i in 0..<4 { XCTAssertEqual(c.read(key("old", i)), data, "held block \(i) stays") }
        XCTAssertNil(c.read(key("other", 0)), "another version of the key is not held")
        XCTAssertLessThanOrEqual(c.stats.usedBytes, c.capacity)
        c.release(key("old", 0))
        for i in 30..<60 { data.withUnsafeBytes { _ = c.store(key("new", i), $0) } }
        XCTAssertNotNil(c.read(key("old", 0)), "one hold is left")
        c.release(key("old", 0))
        for i in 60..<90 { data.withUnsafeBytes { _ = c.store(key("new", i), $0) } }
        XCTAssertEqual((0..<4).filter { c.read(key("old", $0)) != nil }, [], "released, they are evicted in turn")
    }

    func testASecondUserOfTheDirectoryIsRefused() throws {
        let first = try BlockCache(directory: dir, capacity: 1 << 20)
        XCTAssertThrowsError(try BlockCache(directory: dir, capacity: 1 << 20)) { e in
            XCTAssertTrue("\(e)".contains("in use by another ckptfs mount"), "\(e)")
            XCTAssertTrue("\(e)".contains("process \(getpid())"))
            // The holder's pid, for a mount that waits for it to exit (MountProcess.openCache).
            XCTAssertEqual((e as? CacheError)?.holder, getpid())
        }
        _ = first
    }

    func testOpenGivesAnFdAtTheDataOffset() throws {
        let c = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
        let k = BlockKey(bucket: "b", key: "k", etag: "e", index: 1)
        let data = block(777, 5)
        data.withUnsafeBytes { _ = c.store(k, $0) }
        let ob = try XCTUnwrap(c.open(k))
        defer { close(ob.fd) }
        XCTAssertEqual(ob.length, 777)
        var buf = [UInt8](repeating: 0, count: 777)
        XCTAssertEqual(pread(ob.fd, &buf, 777, off_t(ob.offset)), 777)
        XCTAssertEqual(buf, data)
    }

    func testVerifyChecksABlockOncePerProcessAndRemoveFreesIt() throws {
        let k = BlockKey(bucket: "b", key: "k", etag: "e", index: 0)
        let other = BlockKey(bucket: "b", key: "k", etag: "e", index: 1)
        do {
            let c = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
            XCTAssertFalse(c.verify(k), "not cached")
            block(4096, 1).withUnsafeBytes { _ = c.store(k, $0) }
            block(4096, 2).withUnsafeBytes { _ = c.store(other, $0) }
            XCTAssertTrue(c.verify(k))
        }
        // A new process: the damaged block fails its check, is deleted and counted; neither a hit nor a miss.
        let c = try BlockCache(directory: dir, capacity: 1 << 20, blockSize: 4096)
        damage(c, k, at: 10)
        XCTAssertFalse(c.verify(k))
        XCTAssertFalse(c.contains(k))
        XCTAssertEqual(c.stats.corruptBlocks, 1)
        XCTAssertTrue(c.verify(other))
        XCTAssertEqual(c.stats.hits + c.stats.misses, 0)
        XCTAssertEqual(c.remove(other), BlockCache.storedSize(4096))
        XCTAssertEqual(c.remove(other), 0)
        XCTAssertEqual(c.stats.usedBytes, 0)
        XCTAssertEqual(c.stats.blocks, 0)
    }

    /// Saves entered as they land (`seed`, issue 19): checksummed and found after a reopen like any block; those
    /// not read since take at most `seedBound` between them, the oldest unread going first, so a save never
    /// evicts blocks readers use; a block read since is an ordinary block again.
    func testSeededBlocksStayUnderTheirShareAndNeverPushOutReadBlocks() throws {
        let bs = 64 << 10
        let c = try BlockCache(directory: dir, capacity: 2_000_000, blockSize: bs)
        let stored = BlockCache.storedSize(Int64(bs))
        XCTAssertEqual(c.seedBound, 900_000)
        let fits = Int(c.seedBound / stored)  // 12
        XCTAssertTrue(c.canSeed(size: Int64(fits * bs)))
        XCTAssertFalse(c.canSeed(size: Int64((fits + 1) * bs)), "a save larger than the share is not entered")
        XCTAssertFalse(c.canSeed(size: 0))
        // A working set readers use.
        let used = (0..<10).map { BlockKey(bucket: "b", key: "data", etag: "d", index: Int64($0)) }
        for (i, k) in used.enumerated() { _ = block(bs, UInt8(i)).withUnsafeBytes { c.store(k, $0) } }
        // Three saves of `fits` blocks each, none read: each pushes out the one before, not the working set.
        func save(_ name: String, _ seed: UInt8) -> [BlockKey] {
            let keys = (0..<fits).map { BlockKey(bucket: "b", key: name, etag: "e-\(name)", index: Int64($0)) }
            for (i, k) in keys.enumerated() { XCTAssertTrue(block(bs, seed &+ UInt8(i)).withUnsafeBytes { c.seed(k, $0) }) }
            return keys
        }
        let a = save("a", 50)
        XCTAssertEqual(c.stats.unreadSeededBytes, Int64(fits) * stored)
        let b = save("b", 80)
        XCTAssertTrue(a.allSatisfy { !c.contains($0) }, "the older unread save made room")
        XCTAssertTrue(b.allSatisfy { c.contains($0) })
        XCTAssertTrue(used.allSatisfy { c.contains($0) }, "no block of the working set was evicted for a save")
        XCTAssertLessThanOrEqual(c.stats.unreadSeededBytes, c.seedBound)
        // Read one block of b: it is the reader's now, and survives the next save.
        XCTAssertEqual(c.read(b[3]), block(bs, 83))
        XCTAssertEqual(c.stats.unreadSeededBytes, Int64(fits - 1) * stored)
        _ = save("c", 110)
        XCTAssertTrue(c.contains(b[3]), "a seeded block read since is an ordinary block")
        XCTAssertFalse(c.contains(b[4]))
        XCTAssertTrue(used.allSatisfy { c.contains($0) })
        XCTAssertEqual(c.stats.seededBlocks, 3 * fits)
        // A block already cached is left as it is.
        XCTAssertTrue(block(bs, 1).withUnsafeBytes { c.seed(used[0], $0) })
        XCTAssertEqual(c.read(used[0]), block(bs, 0))
        // Checksummed and found again after a reopen (a remount), as any block; damage is caught.
        let lastOfC = BlockKey(bucket: "b", key: "c", etag: "e-c", index: Int64(fits - 1))
        c.unlock()
        let c2 = try BlockCache(directory: dir, capacity: 2_000_000, blockSize: bs)
        XCTAssertEqual(c2.read(lastOfC), block(bs, 110 &+ UInt8(fits - 1)))
        XCTAssertNil(c2.read(BlockKey(bucket: "b", key: "c", etag: "another", index: 0)), "only under the ETag it landed as")
        damage(c2, BlockKey(bucket: "b", key: "c", etag: "e-c", index: 0), at: 5)
        XCTAssertNil(c2.read(BlockKey(bucket: "b", key: "c", etag: "e-c", index: 0)))
        XCTAssertEqual(c2.stats.corruptBlocks, 1)
    }
}
