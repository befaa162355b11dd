// docs/SEMANTICS.md, "Durability: close, fsync, flush, stopping", against the core.
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import XCTest

final class DurabilitySemanticsTests: SemanticsTestCase {
    /// close() returns without waiting for S3; the file is dirty, flush names it, and it is journaled: a crash
    /// before the upload loses nothing.
    func testSDurClose() async throws {
        holdUploads()
        let data = bytes(40_000)
        let h = try await open("ckpt.pt", Self.create)
        try await write(h, data)
        try await mount.close(h).get()  // its upload is held: close did not wait for it
        XCTAssertNil(stored["ckpt.pt"])
        XCTAssertEqual(mount.status.dirtyFiles, 1)
        let left = await mount.flushAll(timeout: .milliseconds(300))
        XCTAssertEqual(left.map(\.path), ["ckpt.pt"], "flush fails naming what it cannot wait for")
        let requeued = try await crashAndRecover()
        XCTAssertEqual(requeued, ["ckpt.pt"])
        await flushAll()
        XCTAssertEqual(stored["ckpt.pt"], data)
    }

    /// A close() of a duplicate (the core's flush of a handle that stays open) acknowledges what was written so
    /// far; later writes go to a copy; nothing is queued before the last close. (Which process closes is the
    /// adapter's business: a child's close never reaches the core as an acknowledgement.)
    func testSDurCloseDup() async throws {
        let acked = bytes(30_000), later = bytes(5_000, 7)
        let h = try await open("ckpt.pt", Self.create)
        try await write(h, acked)
        try await mount.flush(h).get()  // close() of a dup
        try await write(h, later, at: Int64(acked.count))
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertEqual(client.count("PutObject") + client.count("CreateMultipartUpload"), 0, "queued only at the last close")
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(stored["ckpt.pt"], acked, "what the close acknowledged, not the bytes written after it")
    }

    /// fsync() returns once the file is in S3, not before.
    func testSDurFsync() async throws {
        let gate = holdUploads()
        let data = bytes(20_000)
        let h = try await open("f", Self.create)
        try await write(h, data)
        let m = mount!, returned = Flag()
        let done = Task { () -> Result<Void, DriverError> in
            let r = await m.fsync(h)
            returned.raise()
            return r
        }
        await client.waitForHeld(gate)
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertFalse(returned.isRaised, "fsync returned while its upload was held")
        client.release(gate)
        let r = await done.value
        XCTAssertEqual(errno(r), 0)
        XCTAssertEqual(stored["f"], data, "in S3 when fsync returns")
        await mount.close(h)
    }

    /// With --fsync local, fsync() returns once the file is journaled, and it reaches S3 after a crash.
    func testSDurFsyncLocal() async throws {
        try remount { $0.durableFsync = false }
        holdUploads()
        let data = bytes(20_000)
        let h = try await open("f", Self.create)
        try await write(h, data)
        let r = await mount.fsync(h)
        XCTAssertEqual(errno(r), 0)
        XCTAssertNil(stored["f"], "fsync did not wait for S3")
        try await crashAndRecover()  // with the descriptor still open
        await flushAll()
        XCTAssertEqual(stored["f"], data)
    }

    /// mkdir, unlink, rmdir and rename are journaled when they return, so nothing is left for fsync of the
    /// directory to wait for (that fsync is answered by the adapter, which does not call the core): a crash
    /// before their deletes are applied does not undo them.
    func testSDurFsyncDir() async throws {
        s3.seed(bucket, "gone", [1])
        s3.seed(bucket, "old", [2])
        s3.seed(bucket, "e/", [])
        client.hold(.operations("DeleteObject", "DeleteObjects"))
        try await mount.unlink("gone").get()
        try await mount.rename("old", "new", noReplace: false).get()
        try await mount.rmdir("e").get()
        try await mount.mkdir("d").get()
        XCTAssertEqual(keys, ["d/", "e/", "gone", "new", "old"], "the deletes are queued, not applied")
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(keys, ["d/", "new"])
        XCTAssertEqual(stored["new"], [2])
    }

    /// fsync() of a file whose upload stops on a conflict fails with EIO.
    func testSDurFsyncConflict() async throws {
        let theirs1 = Array("theirs v1".utf8), theirs2 = Array("theirs v2".utf8)
        s3.seed(bucket, "c", theirs1)
        let h = try await open("c", Self.write)
        try await write(h, Array("ours".utf8))
        s3.seed(bucket, "c", theirs2)
        let r = await mount.fsync(h)
        XCTAssertEqual(errno(r), EIO)
        XCTAssertEqual(stored["c"], theirs2)
        await mount.close(h)
    }

    /// fsync() and flush start their uploads at once, without the upload delay, also of a version that
    /// replaced (or an unlink that dropped) one waiting out the delay.
    func testSDurFlushPrompt() async throws {
        try remount { $0.uploadDelay = .seconds(60) }
        try await save("a", bytes(100))
        let start = ContinuousClock.now
        await flushAll(timeout: .seconds(30))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10), "flush waited out the upload delay")
        XCTAssertEqual(stored, ["a": bytes(100)])
        let h = try await open("d", Self.create)
        try await write(h, bytes(50, 5))
        let fsyncStart = ContinuousClock.now
        let r = await mount.fsync(h)
        XCTAssertEqual(errno(r), 0)
        XCTAssertLessThan(ContinuousClock.now - fsyncStart, .seconds(10), "fsync waited out the upload delay")
        XCTAssertEqual(stored["d"], bytes(50, 5))
        await mount.close(h)
        try await save("b", bytes(100, 2))
        try await save("b", bytes(100, 3))  // the version waiting is superseded
        try await save("c", bytes(100, 4))
        try await mount.unlink("c").get()  // dropped while waiting
        let again = ContinuousClock.now
        await flushAll(timeout: .seconds(30))
        XCTAssertLessThan(ContinuousClock.now - again, .seconds(10), "flush waited out the upload delay")
        XCTAssertEqual(stored, ["a": bytes(100), "b": bytes(100, 3), "d": bytes(50, 5)])
    }

    /// flush does not upload a file still open for writing (S3 keeps its last acknowledged version); it does
    /// once the file is closed.
    func testSDurAckedOnly() async throws {
        let good = Array("last good".utf8)
        s3.seed(bucket, "m", good)
        let h = try await open("m", Self.truncate)
        try await write(h, bytes(5000))
        _ = await mount.flushAll(timeout: .seconds(1))
        XCTAssertEqual(stored["m"], good, "a partial save was uploaded")
        XCTAssertEqual(client.count("PutObject"), 0)
        await mount.close(h)
        await flushAll()
        XCTAssertEqual(stored["m"], bytes(5000))
    }

    /// A save never closed when the daemon stops (here: the core stops, as after the drain) is never uploaded.
    /// The signal handling and the drain are the daemon's (CkptCommand).
    func testSDurStopUnacked() async throws {
        let good = Array("last good".utf8)
        s3.seed(bucket, "m", good)
        let h = try await open("m", Self.truncate)
        try await write(h, bytes(5000))
        _ = h
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(stored["m"], good)
        let shown = try await read("m")
        XCTAssertEqual(shown, good)
    }

    /// A delete goes after the uploads acknowledged before it, and later uploads do not wait for it; the
    /// mount shows the name gone at once and status counts the delete.
    func testSDurOrder() async throws {
        s3.seed(bucket, "z", [9])
        let gate = holdUploads(FaultInjectingClient.Match.uploads.key("a"))
        try await save("a", bytes(100))
        await client.waitForHeld(gate)
        try await mount.unlink("z").get()
        try await save("c", bytes(100, 2))
        try await waitFor("c, saved after the delete, to land without waiting for it") { stored["c"] != nil }
        XCTAssertNotNil(stored["z"], "the delete went before the upload of a, saved before it")
        XCTAssertEqual(mount.status.pendingDeletes, 1)
        let z = await mount.stat("z")
        XCTAssertEqual(errno(z), ENOENT)
        client.release(gate)
        await flushAll()
        XCTAssertEqual(keys, ["a", "c"])
    }

    /// Save ckpt-2, delete ckpt-1, crash at once: S3 never lacks a checkpoint, and the delete holds.
    func testSDurRotation() async throws {
        s3.seed(bucket, "ckpt-1", bytes(100, 1))
        holdUploads()
        try await save("ckpt-2", bytes(100, 2))
        try await mount.unlink("ckpt-1").get()
        XCTAssertEqual(keys, ["ckpt-1"])
        try await crashAndRecover(before: { XCTAssertEqual(self.keys, ["ckpt-1"], "S3 without its checkpoint at the crash") })
        await flushAll()
        XCTAssertEqual(keys, ["ckpt-2"])
        XCTAssertEqual(stored["ckpt-2"], bytes(100, 2))
        let old = await mount.stat("ckpt-1")
        XCTAssertEqual(errno(old), ENOENT)
    }

    /// flush under a path waits for what is under it only; on timeout it names what is not durable and why.
    func testSDurFlush() async throws {
        try await mount.mkdir("d").get()
        let gate = holdUploads(FaultInjectingClient.Match.uploads.key("d/x"))
        try await save("d/x", bytes(100))
        try await save("e", bytes(50))
        let left = await fs.flushAll(under: "d", timeout: .milliseconds(500))
        XCTAssertEqual(left.map(\.path), ["d/x"])
        XCTAssertFalse(left.first?.reason.isEmpty ?? true, "a reason")
        let others = await fs.flushAll(under: "e", timeout: .seconds(10))
        XCTAssertEqual(others.map(\.path), [])
        XCTAssertEqual(stored["e"], bytes(50))
        client.release(gate)
        await flushAll()
        XCTAssertEqual(stored["d/x"], bytes(100))
    }

    /// An upload or delete S3 refuses with an answer no retry changes (a 4xx such as 400 InvalidRequest) ends
    /// the wait of flush and fsync after two attempts, with the reason; a 503 does not (it is waited out). The
    /// file stays acknowledged and lands once S3 takes it.
    func testSDurFlushRefused() async throws {
        let invalid = S3Error(code: .invalidRequest, s3Code: "InvalidRequest", message: "Invalid Request", httpStatus: 400, operation: "PutObject")
        let refusal = client.add(FaultInjectingClient.Match.uploads.key("bad"), .all, .fail(.error(invalid)))
        try await save("bad", bytes(10))
        try await save("fine", bytes(20))
        let start = ContinuousClock.now
        let left = await fs.flushAll(under: "", timeout: .seconds(60))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(20), "flush waited for an upload S3 refuses")
        XCTAssertEqual(left.map(\.path), ["bad"])
        XCTAssertTrue(left.first?.reason.contains("InvalidRequest") ?? false, left.first?.reason ?? "")
        XCTAssertEqual(stored["fine"], bytes(20))
        let h = try await open("bad", Self.write)
        let synced = await mount.fsync(h)
        XCTAssertEqual(errno(synced), EIO)
        _ = await mount.close(h)
        client.remove(refusal)
        await flushAll()
        XCTAssertEqual(stored["bad"], bytes(10))
        // A 503 is no refusal: flush waits it out.
        let busy = client.add(FaultInjectingClient.Match.uploads.key("busy"), .first(3), .fail(.serviceUnavailable))
        try await save("busy", bytes(30))
        await flushAll()
        XCTAssertEqual(stored["busy"], bytes(30))
        client.remove(busy)
    }

    /// Staged copies go once their versions are in S3 and the file is closed, also after fsync and rewrites.
    func testSDurStaging() async throws {
        try await save("a", bytes(40_000))
        let h = try await open("b", Self.create)
        try await write(h, bytes(10_000))
        _ = try await mount.fsync(h).get()
        try await write(h, bytes(3000, 4), at: 100)
        _ = try await mount.fsync(h).get()
        try await mount.close(h).get()
        try await save("a", bytes(20_000, 3))
        await flushAll()
        try await waitFor("staging to empty") {
            ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/staging")) ?? ["?"]).isEmpty
        }
        XCTAssertEqual(mount.status.stagingBytes, 0)
    }

    /// Files of at most a part go up many at a time (FSOptions.smallUploadConcurrency, 32), larger ones 4 at a
    /// time (uploadConcurrency): 4 small files at a time capped a directory of small files at 4 per round trip.
    func testSmallFilesUploadManyAtATimeAndLargeOnesFourAtATime() async throws {
        let gate = holdUploads()
        for i in 0..<40 { try await save("s\(i)", bytes(1000, i)) }  // 16 KiB parts here
        await client.waitForHeld(gate, count: 32)
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertEqual(client.held(gate).count, 32, "32 small uploads in flight, the rest waiting")
        client.release(gate)
        await flushAll()
        let gate2 = holdUploads()
        for i in 0..<6 { try await save("l\(i)", bytes(40_000, i)) }
        await client.waitForHeld(gate2, count: 4)
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertEqual(Set(client.held(gate2).compactMap(\.key)).count, 4, "4 large files at a time")
        client.release(gate2)
        await flushAll()
        XCTAssertEqual(stored.count, 46)
    }

    /// A file opened for writing in place and not changed is not dirty (status counted it with its whole size);
    /// once written, it is.
    func testAFileOpenedInPlaceIsDirtyOnlyOnceChanged() async throws {
        s3.seed(bucket, "model.h5", bytes(40_000))
        let h = try await open("model.h5", Self.write)
        XCTAssertEqual(mount.status.dirtyFiles, 0)
        XCTAssertEqual(mount.status.dirtyBytes, 0)
        try await write(h, bytes(10, 3), at: 100)
        XCTAssertEqual(mount.status.dirtyFiles, 1)
        try await mount.close(h).get()
        await flushAll()
        XCTAssertEqual(mount.status.dirtyFiles, 0)
    }
}
