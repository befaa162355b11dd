// docs/SEMANTICS.md, "Unlink, mkdir, rmdir", against the core.
@testable import CkptFS
import CkptTestSupport
import Foundation
import Synchronization
import XCTest

final class UnlinkSemanticsTests: SemanticsTestCase {
    let root = FileSystem.rootIno

    /// unlink removes the name at once and journals the delete, applied in order.
    func testSUnlink() async throws {
        s3.seed(bucket, "a", [1])
        s3.seed(bucket, "b", [2])
        let gate = client.hold(.operations("DeleteObject", "DeleteObjects"))
        try await mount.unlink("a").get()
        let a = await mount.stat("a")
        XCTAssertEqual(errno(a), ENOENT)
        let listed = try await mount.list("").get()
        XCTAssertEqual(listed, ["b": false])
        XCTAssertEqual(mount.status.pendingDeletes, 1)
        XCTAssertEqual(keys, ["a", "b"], "held")
        client.release(gate)
        await flushAll()
        XCTAssertEqual(keys, ["b"])
    }

    /// A file unlinked before its upload never reaches S3.
    func testSUnlinkNotUploaded() async throws {
        // A delay long enough for what follows, not longer: flush does not always end it (testSDurFlushPrompt).
        try remount { $0.uploadDelay = .seconds(2) }
        try await save("a", bytes(40_000))
        try await mount.unlink("a").get()
        await flushAll()
        XCTAssertEqual(keys, [])
        XCTAssertEqual(client.count("PutObject") + client.count("CreateMultipartUpload"), 0)
    }

    /// A file created here and unlinked before its upload sends no DeleteObject: nothing of it is in S3, and an
    /// object another client put under the name meanwhile stays. Before, every unlink sent one, which removed
    /// that object.
    func testUnlinkOfAFileNeverSentDeletesNothing() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        try await save("a", bytes(40_000))
        s3.seed(bucket, "a", [9])  // another client, after this mount's lookup found no "a"
        try await mount.unlink("a").get()
        await flushAll()
        XCTAssertEqual(keys, ["a"])
        XCTAssertEqual(stored["a"], [9])
        let shown = try await read("a")
        XCTAssertEqual(shown, [9], "the name shows the other client's object")
        XCTAssertEqual(client.count("DeleteObject") + client.count("DeleteObjects"), 0)
        XCTAssertEqual(client.count("PutObject") + client.count("CreateMultipartUpload"), 0)
    }

    /// A file saved under the name of an object unlinked here whose delete had not started (waiting for an
    /// upload before it), so that the save's upload replaced the delete, and then unlinked before that upload:
    /// the object goes all the same. Sending no DeleteObject for a file never sent (above) must not cover this one.
    func testUnlinkOfASaveThatReplacedAWaitingDeleteDeletesTheObject() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        s3.seed(bucket, "a", [1])
        s3.seed(bucket, "b", [1])
        _ = try await attributes("a")
        _ = try await attributes("b")
        try await save("x", bytes(1000))  // waits out the delay: the deletes below wait for it
        try await mount.unlink("a").get()
        try await mount.unlink("b").get()
        try await save("a", bytes(2000, 2))  // its upload replaces that delete
        try await save("b", bytes(2000, 2))
        try await save("b", bytes(2000, 3))  // and this one supersedes it before its upload
        try await mount.unlink("a").get()
        try await mount.unlink("b").get()
        await flushAll()
        XCTAssertEqual(keys, ["x"], "an unlinked object came back")
    }

    /// Rotation with one checkpoint kept, while the uploads wait out their delay: save ckpt-1, remove ckpt-0,
    /// save ckpt-2, remove ckpt-1 (never sent: no DeleteObject of it). ckpt-0 stays in S3 until ckpt-2 has
    /// landed: the unlink of ckpt-1 still holds its withdrawn upload's place, which the delete of ckpt-0 waits
    /// for. Without that, S3 held no checkpoint until ckpt-2 landed (test_found_by_break's rotation test).
    func testUnlinkOfAFileNeverSentKeepsTheOrderOfTheDeletesBeforeIt() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        s3.seed(bucket, "ckpt-0", [0])
        _ = try await attributes("ckpt-0")
        try await save("ckpt-1", [1])
        try await mount.unlink("ckpt-0").get()
        try await save("ckpt-2", [2])
        try await mount.unlink("ckpt-1").get()
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertEqual(keys, ["ckpt-0"], "S3 held no checkpoint before ckpt-2 landed")
        await flushAll()
        XCTAssertEqual(keys, ["ckpt-2"])
        XCTAssertEqual(client.calls("DeleteObject").map(\.key), ["ckpt-0"])
    }

    /// The same across a crash: recovery queues the unlink's delete again for its place in the order and sends
    /// nothing (outside testing round 8: it sent a real DeleteObject, which removed another client's object).
    func testUnlinkOfAFileNeverSentDeletesNothingAfterACrash() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        try await save("z", [1])  // waits out the delay: the unlink's delete below waits for it
        try await save("a", bytes(3000))
        try await mount.unlink("a").get()
        s3.seed(bucket, "a", [9])  // another client
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(stored["a"], [9])
        XCTAssertEqual(stored["z"], [1])
        XCTAssertEqual(client.calls("DeleteObject").count, 0)
    }

    /// A file whose upload started before the unlink is deleted once the upload has landed (its delete, which
    /// removes only this mount's own object, finds none if the upload was stopped first: S-CONFLICT-IN-FLIGHT).
    func testUnlinkWhileTheUploadRunsDeletesWhatLanded() async throws {
        let gate = holdUploads()
        try await save("a", bytes(40_000))
        try await waitFor("the upload to start") { !self.client.unanswered.isEmpty }
        try await mount.unlink("a").get()
        client.release(gate)
        await flushAll()
        XCTAssertEqual(keys, [])
        XCTAssertEqual(client.count("DeleteObject") + client.count("DeleteObjects"),
                       client.count("CompleteMultipartUpload") > 0 ? 1 : 0)
    }

    /// An unlinked open file lives until its last close: stat, read and write work through the descriptor, close
    /// returns 0, and nothing of it reaches S3.
    func testSUnlinkOpen() async throws {
        let h = try await open("tmp", Self.create)
        try await write(h, bytes(5000))
        try await mount.unlink("tmp").get()
        try await write(h, bytes(1000, 2), at: 5000)
        let size = try await mount.size(h).get()
        XCTAssertEqual(size, 6000)
        let back = try await read(h)
        XCTAssertEqual(back, bytes(5000) + bytes(1000, 2))
        let closed = await mount.close(h)
        XCTAssertEqual(errno(closed), 0)
        await flushAll()
        XCTAssertEqual(keys, [])
        XCTAssertEqual(client.count("PutObject") + client.count("CreateMultipartUpload"), 0)
        let gone = await mount.stat("tmp")
        XCTAssertEqual(errno(gone), ENOENT)
    }

    /// A file only in S3, open for reading here, that this mount unlinks, renames a file over, renames away or
    /// overwrites: its descriptor reads the old bytes until its last close, after the change reached S3 and
    /// with none of them read before (the old version's blocks were kept in the cache: no GET after it).
    func testSUnlinkOpenClean() async throws {
        for (i, change) in ["unlink", "rename-over", "rename-away", "overwrite"].enumerated() {
            let name = "f\(i)", old = bytes(40_000, i)
            s3.seed(bucket, name, old)
            let h = try await open(name, Self.read)
            let first = try await mount.read(h, at: 0, count: 4096).get()
            XCTAssertEqual(first, Array(old[0..<4096]))
            switch change {
            case "unlink":
                try await mount.unlink(name).get()
            case "rename-over":
                try await save("\(name).tmp", bytes(30_000, 9))
                try await mount.rename("\(name).tmp", name, noReplace: false).get()
            case "rename-away":
                try await mount.rename(name, "\(name).moved", noReplace: false).get()
            default:
                try await save(name, bytes(30_000, 9))
            }
            await flushAll()
            XCTAssertNotEqual(s3.objects(in: bucket)[name], old, "\(change): the change reached S3")
            let gets = client.count("GetObject")
            let rest = try await mount.read(h, at: 20_000, count: 20_000).get()
            XCTAssertEqual(rest, Array(old[20_000...]), "\(change): the descriptor reads the old bytes")
            XCTAssertEqual(client.count("GetObject"), gets, "\(change): from the cache")
            XCTAssertEqual(fs.cache.heldVersions, 1)
            _ = await mount.close(h)
            XCTAssertEqual(fs.cache.heldVersions, 0, "\(change): held until the last close")
        }
    }

    /// Two changes of one key at once (an upload and a rename's copy over it): the second waits for the fetch
    /// the first started, not only the first; neither goes before the version read is whole in the cache.
    func testASecondChangeOfAKeyWaitsForTheKeepTheFirstStarted() async throws {
        let etag = s3.seed(bucket, "f", bytes(40_000, 5))
        let h = try await open("f", Self.read)
        _ = try await mount.read(h, at: 0, count: 100).get()
        let gate = client.hold(.operations("GetObject"))
        let objects = fs.openObjects
        let first = Task { await objects.keep(key: "f") }
        await client.waitForHeld(gate)
        let secondDone = Atomic(false)
        let second = Task {
            await objects.keep(key: "f")
            secondDone.store(true, ordering: .relaxed)
        }
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertFalse(secondDone.load(ordering: .relaxed), "the second returned before the blocks were fetched")
        client.release(gate)
        await first.value
        await second.value
        let blocks = (40_000 + 4095) / 4096
        let missing = (0..<blocks).filter { !fs.cache.contains(fs.reader.blockKey(PinnedObject(key: "f", etag: etag, size: 40_000), Int64($0))) }
        XCTAssertEqual(missing, [])
        _ = await mount.close(h)
    }

    /// A file created under the name of an unlinked open file is another file; the new one reaches S3.
    func testSUnlinkOpenReuse() async throws {
        let old = try await open("f", Self.create)
        try await write(old, bytes(3000, 1))
        try await mount.unlink("f").get()
        let new = try await open("f", Self.create)
        try await write(new, bytes(2000, 2))
        let oldBytes = try await read(old), newBytes = try await read(new)
        XCTAssertEqual(oldBytes, bytes(3000, 1))
        XCTAssertEqual(newBytes, bytes(2000, 2))
        await mount.close(old)
        await mount.close(new)
        await flushAll()
        XCTAssertEqual(stored, ["f": bytes(2000, 2)])
    }

    /// ftruncate and futimens through an unlinked file's descriptor do not bring it back.
    func testSUnlinkOpenTruncate() async throws {
        let h = try await open("f", Self.create)
        try await write(h, bytes(3000))
        try await mount.unlink("f").get()
        _ = try await fs.setattr(ino: h.ino, size: 10, mtime: nil)
        _ = try await fs.setattr(ino: h.ino, size: nil, mtime: Date(timeIntervalSince1970: 1_000_000))
        await mount.close(h)
        await flushAll()
        XCTAssertEqual(keys, [])
        let f = await mount.stat("f")
        XCTAssertEqual(errno(f), ENOENT)
    }

    /// unlink of a directory fails with EISDIR, rmdir of a file with ENOTDIR.
    func testSUnlinkKind() async throws {
        s3.seed(bucket, "d/x", [1])
        s3.seed(bucket, "f", [2])
        let fs = self.fs, root = self.root
        let unlinkDir = await errno { () async throws(FSError) in try await fs.unlink(parent: root, name: "d") }
        XCTAssertEqual(unlinkDir, EISDIR)
        await flushAll()
        XCTAssertEqual(keys, ["d/x", "f"])
        let rmdirFile = await errno { () async throws(FSError) in try await fs.rmdir(parent: root, name: "f") }
        XCTAssertEqual(rmdirFile, ENOTDIR)
    }

    /// mkdir puts the marker before it returns, fails with EEXIST for a name that exists (a prefix only in S3
    /// too), and a new directory is known empty: creating in it asks S3 nothing.
    func testSDirMkdir() async throws {
        try remount { $0.metadataTTL = .seconds(30) }
        s3.seed(bucket, "p/x", [1])
        let fs = self.fs, root = self.root
        let exists = await errno { () async throws(FSError) in _ = try await fs.mkdir(parent: root, name: "p") }
        XCTAssertEqual(exists, EEXIST)
        let d = try await fs.mkdir(parent: root, name: "d")
        XCTAssertEqual(stored["d/"], [], "the marker is in S3 when mkdir returns")
        let before = client.count("HeadObject") + client.count("ListObjectsV2")
        let missing = await errno { () async throws(FSError) in _ = try await fs.lookup(parent: d.ino, name: "new") }
        XCTAssertEqual(missing, ENOENT)
        let (_, h) = try fs.create(parent: d.ino, name: "new", flags: O_WRONLY | O_CREAT)
        XCTAssertEqual(client.count("HeadObject") + client.count("ListObjectsV2"), before, "S3 was asked")
        try await fs.flush(handle: h)
        fs.release(handle: h)
    }

    /// rmdir fails with ENOTEMPTY while anything is under the directory, in S3 or written here; otherwise the
    /// directory goes from the mount at once and the delete of its marker is journaled.
    func testSDirRmdir() async throws {
        s3.seed(bucket, "full/x", [1])
        s3.seed(bucket, "empty/", [])
        try await mount.mkdir("local").get()
        holdUploads()
        try await save("local/f", [2])
        let full = await mount.rmdir("full")
        XCTAssertEqual(errno(full), ENOTEMPTY)
        let local = await mount.rmdir("local")
        XCTAssertEqual(errno(local), ENOTEMPTY, "a file written here and not uploaded")
        client.hold(.operations("DeleteObject", "DeleteObjects"))
        try await mount.rmdir("empty").get()
        let listed = try await mount.list("").get()
        XCTAssertEqual(listed, ["full": true, "local": true])
        XCTAssertNotNil(stored["empty/"])
        try await crashAndRecover()
        await flushAll()
        XCTAssertNil(stored["empty/"], "the journaled delete of the marker")
        XCTAssertEqual(stored["local/f"], [2])
    }

    /// Removing the last object of a directory without a marker makes no marker (and the memory client, like
    /// AWS S3, lists no empty prefix: the directory is gone).
    func testSDirImplicit() async throws {
        s3.seed(bucket, "p/x", [1])
        try await mount.unlink("p/x").get()
        await flushAll()
        XCTAssertEqual(keys, [])
        let listed = try await mount.list("").get()
        XCTAssertEqual(listed, [:])
    }
}
