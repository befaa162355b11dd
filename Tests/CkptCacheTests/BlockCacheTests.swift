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
        let path = "\(dir!)/blocks/\(c.relativePath(k))"
        let fd = open(path, O_RDWR)
        var b: UInt8 = 0
        pread(fd, &b, 1, BlockCache.headerSize + 100)
        b ^= 0xff
        pwrite(fd, &b, 1, BlockCache.headerSize + 100)
        close(fd)
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
        let fd = open("\(dir!)/blocks/\(c.relativePath(k))", O_RDWR)
        var b: UInt8 = 0xAA
        pwrite(fd, &b, 1, off_t(BlockCache.headerSize + 10))
        close(fd)
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
}
