import CkptCache
import CkptDigest
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import Synchronization
import XCTest

/// The core's components alone: the read-ahead planner and the inode table (pure values), the namespace over
/// an overlay of its own, the staging area over a temporary directory.
final class ComponentTests: XCTestCase {
    // MARK: ReadAhead

    let limits = ReadAhead.Limits(blockSize: 1 << 20, requestSize: 16 << 20, maxReadAhead: 128 << 20)

    func testReadAheadOpensOnASecondSequentialReadDoublesAndIssuesWholeRequests() {
        var ra = ReadAhead()
        let size: Int64 = 1 << 30
        let kib128: Int64 = 128 << 10
        var p = ra.plan(offset: 0, end: kib128, fileSize: size, limits)
        XCTAssertEqual(p, ReadAhead.Plan(sequential: false, prefetch: nil), "one read is not a stream yet")
        p = ra.plan(offset: kib128, end: 2 * kib128, fileSize: size, limits)
        XCTAssertTrue(p.sequential)
        XCTAssertNil(p.prefetch, "the window opens at the second read that continues the stream")
        p = ra.plan(offset: 2 * kib128, end: 3 * kib128, fileSize: size, limits)
        XCTAssertEqual(ra.window, 16 << 20)
        XCTAssertEqual(p.prefetch, 1..<17, "one whole 16 MiB request past the block being read")
        p = ra.plan(offset: 3 * kib128, end: 4 * kib128, fileSize: size, limits)
        XCTAssertEqual(ra.window, 32 << 20, "each further read doubles the window")
        XCTAssertEqual(p.prefetch, 17..<33)
        for i in 4..<40 { _ = ra.plan(offset: Int64(i) * kib128, end: Int64(i + 1) * kib128, fileSize: size, limits) }
        XCTAssertEqual(ra.window, 128 << 20, "never past maxReadAhead")
    }

    func testReadAheadClosesOnARandomReadAndStopsAtTheEnd() {
        var ra = ReadAhead()
        let size: Int64 = 40 << 20
        for i in 0..<3 { _ = ra.plan(offset: Int64(i) << 20, end: Int64(i + 1) << 20, fileSize: size, limits) }
        XCTAssertGreaterThan(ra.window, 0)
        let far = ra.plan(offset: 30 << 20, end: (30 << 20) + 4096, fileSize: size, limits)
        XCTAssertEqual(far, ReadAhead.Plan(sequential: false, prefetch: nil), "a small read elsewhere is random")
        XCTAssertEqual(ra.window, 0)
        // Near the end of a 40-block file, prefetch stops at its last block even if that is not a whole request.
        var tail = ReadAhead()
        var last: ReadAhead.Plan?
        for i in 30..<40 { last = tail.plan(offset: Int64(i) << 20, end: Int64(i + 1) << 20, fileSize: size, limits) }
        XCTAssertTrue(last?.sequential == true)
        XCTAssertLessThanOrEqual(tail.prefetchedTo, 40)
    }

    // MARK: InodeTable

    func meta(_ etag: String, dir: Bool = false) -> Meta {
        Meta(isDirectory: dir, size: 3, etag: etag, mtime: Date(timeIntervalSince1970: 1))
    }

    func table() -> InodeTable {
        InodeTable(root: Node(parent: 1, name: "", key: "", meta: meta("", dir: true), fetched: .now, lookups: 1), ino: 1)
    }

    func testInodeTableKeepsANumberPerPathAndGivesAReplacedObjectANewOne() {
        var t = table()
        let a = t.remember(parent: 1, name: "a", key: "a", meta: meta("e1"), addLookup: true)
        XCTAssertEqual(t.remember(parent: 1, name: "a", key: "a", meta: meta("e1"), addLookup: true), a)
        XCTAssertEqual(t[a]?.lookups, 2)
        let b = t.remember(parent: 1, name: "a", key: "a", meta: meta("e2"), addLookup: true)
        XCTAssertNotEqual(b, a, "another version of the object is another inode")
        XCTAssertEqual(t[a]?.superseded, true, "the old inode keeps showing its version")
        XCTAssertEqual(t[a]?.meta.etag, "e1")
        let d = t.remember(parent: 1, name: "a", key: "a", meta: meta("", dir: true), addLookup: true)
        XCTAssertNotEqual(d, b, "a path that becomes a directory is a new inode")
        t.forget(a, count: 2)
        XCTAssertNil(t[a], "forgotten once every reference is returned")
        XCTAssertEqual(t.ino(parent: 1, name: "never-seen"), t.ino(parent: 1, name: "never-seen"))
    }

    func testInodeTableFindsAKeysInodesByIndexAcrossMoves() {
        var t = table()
        let dir = t.remember(parent: 1, name: "d", key: "d", meta: meta("", dir: true), addLookup: true)
        let f = t.remember(parent: dir, name: "f", key: "d/f", meta: meta("e1"), addLookup: true)
        _ = t.install(Listing(entries: ["f": meta("e1")], expires: .now + .seconds(30)), for: dir, limit: 100)
        t.move(parent: 1, name: "d", newParent: 1, newName: "e", from: "d", to: "e", isDirectory: true)
        XCTAssertEqual(t[dir]?.key, "e/")
        XCTAssertEqual(t[f]?.key, "e/f", "a node under a renamed directory follows it")
        t.objectLanded(key: "e/f", meta: meta("e9"))
        XCTAssertEqual(t[f]?.meta.etag, "e9", "found through the key index after the move")
        XCTAssertEqual(t.listings[dir]?.entries["f"]?.etag, "e9", "the listing naming it too")
        t.objectLanded(key: "d/f", meta: meta("stale"))
        XCTAssertEqual(t[f]?.meta.etag, "e9", "the old key names nothing any more")
        t.localVersionGone(key: "e/f")
        XCTAssertNil(t.listings[dir], "a listing naming a file whose local version went is dropped")
    }

    func testAnUploadThatLandsUpdatesTheListingAlsoWhenTheFileWasForgotten() {
        var t = table()
        let dir = t.remember(parent: 1, name: "d", key: "d", meta: meta("", dir: true), addLookup: true)
        let f = t.remember(parent: dir, name: "big.bin", key: "d/big.bin", meta: Meta(isDirectory: false, size: 0, etag: "", mtime: Date()), addLookup: true)
        _ = t.install(Listing(entries: ["big.bin": Meta(isDirectory: false, size: 0, etag: "", mtime: Date())], expires: .now + .seconds(30)),
                      for: dir, limit: 100)
        t.forget(f, count: 1)  // the kernel dropped the file's inode before its upload landed
        t.objectLanded(key: "d/big.bin", meta: Meta(isDirectory: false, size: 41 << 20, etag: "e", mtime: Date()))
        XCTAssertEqual(t.listings[dir]?.entries["big.bin"]?.size, 41 << 20, "a lookup answered by the listing shows the landed size")
        t.localVersionGone(key: "d/big.bin")
        XCTAssertNil(t.listings[dir], "dropped with the local version, found by the directory's key")
    }

    // MARK: Namespace over an overlay of its own

    final class Overlay: LocalOverlay {
        let local = Mutex<[String: Meta]>([:])
        let hidden = Mutex<Set<String>>([])
        func localMeta(of key: String) -> Meta? { local.withLock { $0[key] } }
        func orphanMeta(ino: UInt64) -> Meta? { nil }
        func localChildren(of dirKey: String) -> [(name: String, meta: Meta)] {
            local.withLock { l in
                l.compactMap { k, m in
                    k.hasPrefix(dirKey) && !k.dropFirst(dirKey.count).contains("/") ? (String(k.dropFirst(dirKey.count)), m) : nil
                }
            }
        }
        func isHidden(_ key: String) -> Bool { hidden.withLock { $0.contains(key) } }
        var hasHidden: Bool { hidden.withLock { !$0.isEmpty } }
        func splits(of key: String) -> UInt64 { 0 }
    }

    func testNamespaceLaysLocalChangesAndQueuedDeletesOverS3() async throws {
        let s3 = MemoryObjectClient(buckets: ["b"])
        s3.seed("b", "remote", [1, 2, 3])
        s3.seed("b", "deleted", [4])
        let overlay = Overlay()
        overlay.local.withLock { $0["written-here"] = Meta(isDirectory: false, size: 7, etag: "", mtime: Date()) }
        overlay.hidden.withLock { _ = $0.insert("deleted") }
        var o = FSOptions()
        o.storedMtimes = false
        let ns = Namespace(client: s3, bucket: "b", rootKey: "", options: o, overlay: overlay, mountTime: Date())
        let requests = s3.count("HeadObject") + s3.count("ListObjectsV2")
        let local = try await ns.lookup(parent: Namespace.rootIno, name: "written-here")
        XCTAssertEqual(local.size, 7)
        XCTAssertEqual(s3.count("HeadObject") + s3.count("ListObjectsV2"), requests, "a local file is answered without S3")
        do {
            _ = try await ns.lookup(parent: Namespace.rootIno, name: "deleted")
            XCTFail("a name whose delete is queued is not shown")
        } catch { XCTAssertEqual(error.errno, ENOENT) }
        let remote = try await ns.lookup(parent: Namespace.rootIno, name: "remote")
        XCTAssertEqual(remote.size, 3)
        let h = try ns.opendir(ino: Namespace.rootIno)
        var c = EntryCollector()
        try await ns.readdir(handle: h, offset: 0, limit: 100, into: &c)
        XCTAssertEqual(Set(c.entries.map(\.name)), [".", "..", "remote", "written-here"])
    }

    // MARK: StagingArea

    func testStagingAreaCopiesVersionsAndChecksumsCountMissingBlocksAsZeros() throws {
        let dir = NSTemporaryDirectory() + "ckptfs-staging-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cache = try BlockCache(directory: dir, capacity: 1 << 30, blockSize: 1 << 20)
        let staging = StagingArea(cache: cache)
        let v = try staging.create(id: 7, key: "k")
        let bytes = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try bytes.withUnsafeBytes { try staging.write(v, $0, at: 0) }
        v.state.withLock { $0.size = Int64(bytes.count) }
        XCTAssertEqual(staging.ids(), [7])
        let copy = try staging.copy(v, id: 8)
        XCTAssertEqual(copy.size, Int64(bytes.count))
        var back = [UInt8](repeating: 0, count: bytes.count)
        XCTAssertEqual(pread(copy.fd, &back, back.count, 0), back.count)
        XCTAssertEqual(back, bytes, "a copy holds the same bytes")
        // Block 1 still in S3: the checksum counts it as zeros, whatever the file holds there now.
        var zeroed = bytes
        for i in (1 << 20)..<(2 << 20) { zeroed[i] = 0 }
        var h = XXH64()
        zeroed.withUnsafeBytes { h.update($0) }
        XCTAssertEqual(try StagingArea.checksum(fd: v.fd, size: Int64(bytes.count), missing: [1], blockSize: 1 << 20), h.finalize())
        // The ETag of a multipart upload: MD5 of the parts' MD5s, and the part count.
        let parts = [0..<Int64(2 << 20), Int64(2 << 20)..<Int64(bytes.count)]
        var sums: [UInt8] = []
        for p in parts { sums += md5(Array(bytes[Int(p.lowerBound)..<Int(p.upperBound)])) }
        XCTAssertEqual(try StagingArea.localETag(fd: v.fd, parts: parts), md5(sums).hexString + "-2")
        staging.removeAll(except: [8])
        XCTAssertEqual(staging.ids(), [8])
    }

    /// A removed staged file that a descriptor of `open` still holds keeps its space on the disk: the staging
    /// area counts its bytes until the last such descriptor closes (before, they left the count at the removal,
    /// and a save held open for its copy into the block cache let writers fill a 256 MiB cache disk, CI).
    func testARemovedStagedFileCountsUntilItsLastDescriptorCloses() throws {
        let dir = NSTemporaryDirectory() + "ckptfs-staging-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cache = try BlockCache(directory: dir, capacity: 1 << 30, blockSize: 1 << 20)
        let staging = StagingArea(cache: cache)
        let v = try staging.create(id: 7, key: "k")
        let bytes = [UInt8](repeating: 5, count: 3 << 20)
        try bytes.withUnsafeBytes { try staging.write(v, $0, at: 0) }
        XCTAssertEqual(staging.stagedBytes, 3 << 20)
        var first: OwnedDescriptor? = try v.open()
        var second: OwnedDescriptor? = v.reopen(first!, flags: O_RDONLY | O_CLOEXEC)
        XCTAssertNotNil(second)
        staging.remove(v)
        XCTAssertFalse(FileManager.default.fileExists(atPath: v.path), "the removal unlinks the file at once")
        XCTAssertEqual(staging.stagedBytes, 3 << 20, "held open, its bytes still take the disk")
        XCTAssertTrue(staging.freeingSoon)
        first = nil
        XCTAssertEqual(staging.stagedBytes, 3 << 20, "one descriptor is still open")
        var back = [UInt8](repeating: 0, count: 4096)
        XCTAssertEqual(pread(second!.rawValue, &back, back.count, 0), back.count, "the held file is still readable")
        second = nil
        XCTAssertEqual(staging.stagedBytes, 0, "freed at the last close")
        XCTAssertFalse(staging.freeingSoon)
        // Removed with nothing open: freed at once; a later open fails and counts nothing.
        let w = try staging.create(id: 8, key: "k")
        try bytes.withUnsafeBytes { try staging.write(w, $0, at: 0) }
        staging.remove(w)
        XCTAssertEqual(staging.stagedBytes, 0)
        XCTAssertThrowsError(try w.open())
        XCTAssertEqual(staging.stagedBytes, 0)
        XCTAssertFalse(staging.freeingSoon)
        _ = first
        _ = second
    }

    func md5(_ b: [UInt8]) -> [UInt8] {
        var d = StreamingDigest(.md5)
        b.withUnsafeBytes { d.update($0) }
        return d.finalize()
    }
}
