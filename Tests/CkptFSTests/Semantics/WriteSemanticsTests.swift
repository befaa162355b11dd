// docs/SEMANTICS.md, "Writing", against the core.
@testable import CkptFS
import CkptTestSupport
import Foundation
import XCTest

final class WriteSemanticsTests: SemanticsTestCase {
    var uploadCalls: Int {
        ["PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"].map { client.count($0) }.reduce(0, +)
    }

    /// create makes a local file and sends nothing until its upload; a file created and closed empty becomes an
    /// empty object. (O_EXCL is checked by the kernel's lookup before create reaches the core.)
    func testSWriteCreate() async throws {
        let h = try await open("new", Self.create)
        try await write(h, bytes(100))
        XCTAssertEqual(uploadCalls, 0, "create or write uploaded something")
        try await mount.close(h).get()
        let t = try await open("empty", Self.create)
        try await mount.close(t).get()
        await flushAll()
        XCTAssertEqual(stored, ["new": bytes(100), "empty": []])
    }

    /// While the file stays open nothing is sent, not even part of a file of several parts.
    func testSWriteLocal() async throws {
        let h = try await open("big", Self.create)
        for i in 0..<5 { try await write(h, bytes(16 << 10, i), at: Int64(i) << 14) }
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertEqual(uploadCalls, 0)
        XCTAssertEqual(keys, [])
        try await mount.close(h).get()
        await flushAll()
        XCTAssertEqual(stored["big"]?.count, 5 << 14)
    }

    /// After the last close the upload starts by itself, after the upload delay.
    func testSCloseQueues() async throws {
        try remount { $0.uploadDelay = .milliseconds(500) }
        let closed = ContinuousClock.now
        try await save("f", bytes(100))
        try await waitFor("the upload without fsync or flush") { stored["f"] == bytes(100) }
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - closed, .milliseconds(450), "it did not wait out the delay")
    }

    /// Writes at any offset, past the end (the gap reads as zeros), and several opens appending land byte-exact.
    func testSWriteRandom() async throws {
        var expected = [UInt8](repeating: 0, count: 6000)
        let h = try await open("r", Self.create)
        try await write(h, bytes(1000, 1), at: 5000)
        expected.replaceSubrange(5000..<6000, with: bytes(1000, 1))
        try await write(h, bytes(100, 2), at: 10)
        expected.replaceSubrange(10..<110, with: bytes(100, 2))
        try await mount.close(h).get()
        // Two opens appending, each at the end as the mount knows it.
        let a = try await open("r", Self.write), b = try await open("r", Self.write)
        for (i, w) in [a, b, a].enumerated() {
            let end = try await mount.size(w).get()
            try await write(w, bytes(300, 10 + i), at: end)
            expected += bytes(300, 10 + i)
        }
        try await mount.close(a).get()
        try await mount.close(b).get()
        let shown = try await read("r")
        XCTAssertEqual(shown, expected)
        await flushAll()
        XCTAssertEqual(stored["r"], expected)
    }

    /// An append to an existing object replaces it whole: its old bytes, then the appended ones. (The kernel
    /// computes O_APPEND offsets from the size it knows; the core is given the offset.)
    func testSWriteAppend() async throws {
        let old = bytes(10_000, 1), more = bytes(700, 2)
        s3.seed(bucket, "log", old)
        let h = try await open("log", Self.write)
        let end = try await mount.size(h).get()
        XCTAssertEqual(end, 10_000)
        try await write(h, more, at: end)
        try await mount.close(h).get()
        await flushAll()
        XCTAssertEqual(stored["log"], old + more)
    }

    /// A descriptor open for reading reads what this mount's other descriptors wrote since (S-CONS-OWN-APPENDS):
    /// appends, also once their save landed. Before, it read the version it pinned at open for good (10,000
    /// bytes here), and the kernel filled the appended range with zeros. (A save over it with O_TRUNC is a new
    /// version, which it does not read: `UnlinkSemanticsTests.testSUnlinkOpenClean`.)
    func testAReaderOpenedBeforeThisMountsAppendsReadsThem() async throws {
        let old = bytes(10_000, 1), more = bytes(700, 2)
        s3.seed(bucket, "log", old)
        let r = try await open("log", Self.read)
        let a = try await open("log", Self.write)
        try await write(a, more, at: 10_000)
        let beforeClose = try await read(r)
        XCTAssertEqual(beforeClose, old + more, "the reader did not see the append in the local file")
        try await mount.close(a).get()
        await flushAll()
        XCTAssertEqual(stored["log"], old + more)
        let afterLanding = try await read(r)
        XCTAssertEqual(afterLanding, old + more, "the reader did not see the append after it landed")
        let b = try await open("log", Self.write)
        try await write(b, more, at: 10_700)
        try await mount.close(b).get()
        await flushAll()
        let second = try await read(r)
        XCTAssertEqual(second, old + more + more, "the reader missed the second save's append")
        try await mount.close(r).get()
    }

    /// A reader of a file another client replaced in S3 keeps the version it opened: the write open finds the
    /// new version (another inode), and the reader's descriptor is not moved to it (S-CONS-HANDLE-PINNED).
    func testAReaderOfAFileAnotherClientReplacedKeepsItsVersionWhenThisMountWritesTheNewOne() async throws {
        let old = bytes(10_000, 1), theirs = bytes(3000, 3)
        s3.seed(bucket, "log", old)
        let r = try await open("log", Self.read)
        let first = try await read(r)  // cached now: a pinned version S3 no longer has reads from the cache
        XCTAssertEqual(first, old)
        s3.seed(bucket, "log", theirs)
        try await Task.sleep(for: .milliseconds(1100))  // past the revalidation window: the open asks S3
        let a = try await open("log", Self.write)
        try await write(a, bytes(5, 4), at: 3000)
        try await mount.close(a).get()
        await flushAll()
        XCTAssertEqual(stored["log"], theirs + bytes(5, 4))
        let mine = try await read(r)
        XCTAssertEqual(mine, old)
        try await mount.close(r).get()
    }

    /// O_TRUNC empties the local version only: S3 keeps the old object until the new one is uploaded whole.
    func testSWriteOtrunc() async throws {
        let old = bytes(5000, 1), new = bytes(40_000, 2)
        s3.seed(bucket, "f", old)
        let gate = holdUploads(FaultInjectingClient.Match.operations("CompleteMultipartUpload"))
        let h = try await open("f", Self.truncate)
        let size = try await mount.size(h).get()
        XCTAssertEqual(size, 0)
        XCTAssertEqual(stored["f"], old)
        try await write(h, new)
        try await mount.close(h).get()
        await client.waitForHeld(gate)
        XCTAssertEqual(stored["f"], old, "the old object until the new one completes")
        client.release(gate)
        await flushAll()
        XCTAssertEqual(stored["f"], new)
    }

    /// truncate shrinks or grows with zeros; a truncate with no writer open is acknowledged at once (it
    /// survives a crash before its upload).
    func testSWriteTruncate() async throws {
        s3.seed(bucket, "s", bytes(3000, 1))
        s3.seed(bucket, "g", bytes(10, 2))
        holdUploads()
        try await mount.truncate("s", to: 1000).get()
        try await mount.truncate("g", to: 50).get()
        XCTAssertEqual(mount.status.dirtyFiles, 2, "acknowledged and queued at once")
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(stored["s"], Array(bytes(3000, 1)[0..<1000]))
        XCTAssertEqual(stored["g"], bytes(10, 2) + [UInt8](repeating: 0, count: 40))
    }

    /// A file may not grow past S3's largest object (5 TiB): a truncate or a write past it fails with EFBIG and
    /// changes nothing; up to it is allowed (a sparse staged file).
    func testSWriteMaxSize() async throws {
        try await save("f", bytes(10, 3))
        var h = try await open("f", Self.write)
        let truncates = [await mount.truncate(h, to: (5 << 40) + 1), await mount.truncate("f", to: 6 << 40)]
        XCTAssertEqual(truncates.map { errno($0) }, [EFBIG, EFBIG])
        let size = try await mount.size(h).get()
        XCTAssertEqual(size, 10, "nothing changed")
        try await mount.truncate(h, to: 20).get()
        try await mount.close(h).get()
        await flushAll()
        XCTAssertEqual(stored["f"], bytes(10, 3) + [UInt8](repeating: 0, count: 10))
        // A write is refused as any failed write is (the kernel's write-back cache took it, and write()
        // returned): close() fails with EFBIG, and nothing of that save is kept, the write before it included.
        h = try await open("f", Self.write)
        try await mount.write(h, at: 0, [9]).get()
        let writes = [await mount.write(h, at: 5 << 40, [1]), await mount.write(h, at: (5 << 40) - 1, [1, 2])]
        XCTAssertEqual(writes.map { errno($0) }, [EFBIG, EFBIG])
        let closed = await mount.close(h)
        XCTAssertEqual(errno(closed), EFBIG)
        await flushAll()
        XCTAssertEqual(stored["f"], bytes(10, 3) + [UInt8](repeating: 0, count: 10))
    }

    /// A save with a failed write is not kept: close() reports the write's error, S3 and the mount keep the
    /// last acknowledged version, and the path gets a new inode (the kernel's inode of the dropped save keeps
    /// its size: an open of it fails with ESTALE, so the kernel looks the path up again).
    func testSWriteFailed() async throws {
        try await save("f", Array("hello".utf8))
        await flushAll()
        let before = try await ino("f")
        let h = try await open("f", Self.write)
        try await mount.write(h, at: 0, Array("XYZ".utf8)).get()
        let refused = await mount.write(h, at: 5 << 40, [1])
        XCTAssertEqual(errno(refused), EFBIG)
        let closed = await mount.close(h)
        XCTAssertEqual(errno(closed), EFBIG)
        let after = try await ino("f")
        XCTAssertNotEqual(after, before, "the path kept the inode of the dropped save")
        let stale = await errno { () throws(FSError) in _ = try await fs.open(ino: before, flags: O_RDONLY) }
        XCTAssertEqual(stale, ESTALE)
        let content = try await read("f"), size = try await attributes("f").size
        XCTAssertEqual(content, Array("hello".utf8))
        XCTAssertEqual(size, 5)
        let g = try await open("f", Self.write)
        try await mount.write(g, at: 0, Array("XY".utf8)).get()
        try await mount.close(g).get()
        await flushAll()
        XCTAssertEqual(stored["f"], Array("XYllo".utf8))
    }

    /// The failed save is dropped when it fails, not at its writer's release: the kernel sends that release
    /// after close() returned, and a save opened in between (the program saving again at once) starts from the
    /// file as it was, under a new inode, while the failed writer's handle still fails. A write, truncate or close() that fails all take one path (`WriteBack.saveFailed`); a write refused
    /// for its size (EFBIG) stands for them here.
    func testAFailedSaveIsDroppedBeforeItsRelease() async throws {
        try await save("f", Array("hello".utf8))
        let before = try await ino("f")
        let h = try await open("f", Self.write)
        try await mount.write(h, at: 0, Array("XYZ".utf8)).get()
        let refused = await mount.write(h, at: 5 << 40, [1])
        XCTAssertEqual(errno(refused), EFBIG)
        let closed = await mount.flush(h)
        XCTAssertEqual(errno(closed), EFBIG, "close() fails")
        // The failed writer is not released yet. The path already names a new inode, of the file as it was.
        let after = try await ino("f")
        XCTAssertNotEqual(after, before)
        let size = try await attributes("f").size
        XCTAssertEqual(size, 5)
        let stale = await errno { () throws(FSError) in _ = try await fs.open(ino: before, flags: O_RDWR) }
        XCTAssertEqual(stale, ESTALE)
        let g = try await open("f", Self.write)
        try await mount.write(g, at: 5, Array("!".utf8)).get()
        // A truncate through the failed writer's inode does not cut the new save (the path names it now).
        let cut = await mount.truncate(h, to: 1)
        XCTAssertEqual(errno(cut), ESTALE)
        let shownThroughH = try await mount.size(h).get()
        XCTAssertEqual(shownThroughH, 5, "fstat of the failed writer shows its own inode, not the new save")
        try await mount.close(g).get()
        // The failed writer's later writes and fsync fail; its release changes nothing.
        let (late, synced) = (await mount.write(h, at: 0, [7]), await mount.fsync(h))
        XCTAssertEqual([errno(late), errno(synced)], [EFBIG, EFBIG])
        await mount.close(h)
        await flushAll()
        XCTAssertEqual(stored["f"], Array("hello!".utf8))
        let content = try await read("f")
        XCTAssertEqual(content, Array("hello!".utf8))
    }

    /// Up to the part size one PutObject, above it a multipart upload of parts of that size, never left open.
    func testSWriteParts() async throws {
        try remount { $0.partSize = 16 << 20 }
        var one = [UInt8](repeating: 7, count: 16 << 20), two = [UInt8](repeating: 9, count: (16 << 20) + 1)
        one[12345] = 1
        two[16 << 20] = 2
        try await save("one", one)
        try await save("two", two)
        await flushAll()
        XCTAssertTrue(stored["one"] == one)
        XCTAssertTrue(stored["two"] == two)
        XCTAssertEqual(client.calls("PutObject").map(\.key), ["one"])
        XCTAssertEqual(client.calls("CreateMultipartUpload").map(\.key), ["two"])
        XCTAssertEqual(client.count("UploadPart"), 2)
        XCTAssertEqual(s3.openUploads.count, 0)
    }

    /// Saves closed while an earlier one still waits make one upload; fsync before close makes one per save.
    /// (A delay of 2 s, not more: flush does not always end the wait of a version that superseded another,
    /// see testSDurFlushPrompt.)
    func testSWriteVersions() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        for i in 0..<5 { try await save("f", bytes(100, i)) }
        await flushAll()
        XCTAssertEqual(stored["f"], bytes(100, 4))
        XCTAssertEqual(client.calls("PutObject").count, 1, "one version for 5 saves")
        for i in 5..<8 {
            let h = try await open("f", Self.create)
            try await write(h, bytes(100, i))
            _ = try await mount.fsync(h).get()
            try await mount.close(h).get()
        }
        await flushAll()
        XCTAssertEqual(client.calls("PutObject").count, 4, "one version per fsynced save")
        XCTAssertEqual(stored["f"], bytes(100, 7))
    }
}
