// docs/SEMANTICS.md, "Conflicts and other writers", against the core.
@testable import CkptFS
import CkptTestSupport
import Foundation
import XCTest

final class ConflictSemanticsTests: SemanticsTestCase {
    /// A file created here whose key another client created meanwhile: a conflict, fsync fails with EIO, their
    /// object stays and the local copy is kept and readable.
    func testSConflictNew() async throws {
        let theirs = Array("other writer".utf8)
        let h = try await open("n", Self.create)
        try await write(h, Array("mine".utf8))
        s3.seed(bucket, "n", theirs)
        let r = await mount.fsync(h)
        XCTAssertEqual(errno(r), EIO)
        await mount.close(h)
        let left = await mount.flushAll(timeout: .seconds(5))
        XCTAssertEqual(left.map(\.path), ["n"])
        XCTAssertEqual(stored["n"], theirs)
        XCTAssertEqual(mount.status.failures.map(\.state), ["conflict"])
        let shown = try await read("n")
        XCTAssertEqual(shown, Array("mine".utf8))
    }

    /// torch.save to a temporary name, then os.replace onto a name that held nothing; another client creates
    /// the name before the upload: their object stays and the renamed file is kept as a conflict, readable;
    /// renamed again (README: how a conflict is resolved), it uploads and nothing is left held.
    func testSConflictRenamedNew() async throws {
        let theirs = Array("theirs".utf8), mine = Array("mine".utf8)
        let gate = holdUploads()
        try await save("best.tmp", mine)
        try await mount.rename("best.tmp", "best.ckpt", noReplace: false).get()
        s3.seed(bucket, "best.ckpt", theirs)
        client.release(gate)
        let left = await mount.flushAll(timeout: .seconds(2))
        XCTAssertTrue(left.map(\.path).contains("best.ckpt"), "\(left)")
        XCTAssertEqual(mount.status.failures.filter { $0.state == "conflict" }.map(\.path), ["best.ckpt"])
        XCTAssertEqual(stored["best.ckpt"], theirs, "their object is not overwritten")
        // The save's upload to the temporary name, sent before the rename, may have landed there (and its
        // delete waits behind the conflict): S3 then holds the save under the name it had.
        XCTAssertTrue(stored["best.tmp"] == nil || stored["best.tmp"] == mine)
        let shown = try await read("best.ckpt")
        XCTAssertEqual(shown, mine, "the local copy stays readable")
        try await mount.rename("best.ckpt", "best.ckpt.mine", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(stored, ["best.ckpt": theirs, "best.ckpt.mine": mine])
    }

    /// Saves `mine` as `path` while another client creates it: the upload stops as a conflict. Returns their
    /// bytes, which S3 keeps.
    func saveInConflict(_ path: String, _ mine: [UInt8]) async throws -> [UInt8] {
        let theirs = Array("theirs".utf8)
        let gate = holdUploads()
        try await save(path, mine)
        s3.seed(bucket, path, theirs)
        client.release(gate)
        _ = await mount.flushAll(timeout: .seconds(2))
        XCTAssertEqual(mount.status.failures.map(\.state), ["conflict"])
        return theirs
    }

    /// A file stopped by a conflict and then unlinked: the other client's object stays (the name shows it
    /// again), nothing of ours was in S3 to delete.
    func testSConflictUnlink() async throws {
        let theirs = try await saveInConflict("n", Array("mine".utf8))
        try await mount.unlink("n").get()
        await flushAll()
        XCTAssertEqual(stored, ["n": theirs], "the other client's object is not deleted")
        XCTAssertEqual(mount.status.failures.map(\.path), [])
        let shown = try await read("n")
        XCTAssertEqual(shown, theirs)
    }

    /// The next save by rename over a file stopped by a conflict meets the other client's object as a
    /// conflict too: it does not replace it.
    func testSConflictRenamedOver() async throws {
        let theirs = try await saveInConflict("last.pt", Array("epoch 1".utf8))
        let again = holdUploads()  // the temporary file is still local when it is renamed (not copied in S3)
        try await save("last.pt.tmp", Array("epoch 2".utf8))
        try await mount.rename("last.pt.tmp", "last.pt", noReplace: false).get()
        client.release(again)
        let left = await mount.flushAll(timeout: .seconds(2))
        XCTAssertTrue(left.map(\.path).contains("last.pt"), "\(left)")
        XCTAssertEqual(mount.status.failures.filter { $0.state == "conflict" }.map(\.path), ["last.pt"])
        XCTAssertEqual(stored["last.pt"], theirs, "the other client's object is not replaced")
        let shown = try await read("last.pt")
        XCTAssertEqual(shown, Array("epoch 2".utf8))
    }

    /// Two mounts save the same file from the same starting object: the later upload is a conflict and S3
    /// keeps the first.
    /// S-CONFLICT-IN-FLIGHT: a file removed or renamed away while its upload, which then meets another client's
    /// object, is in flight (or queued behind its temporary name's upload, never sent): their object stays.
    func testSConflictInFlight() async throws {
        let theirs = Array("theirs".utf8), mine = Array("mine".utf8)
        func race(_ path: String, then change: () async throws -> Void) async throws {
            let gate = holdUploads()
            try await save(path, mine)
            await client.waitForHeld(gate)  // sent, not answered
            s3.seed(bucket, path, theirs)
            try await change()
            client.release(gate)
            await flushAll()
        }
        try await race("x") { try await mount.rename("x", "y", noReplace: false).get() }
        XCTAssertEqual(stored, ["x": theirs, "y": mine], "renamed away")
        try await race("u") { try await mount.unlink("u").get() }
        XCTAssertEqual(stored, ["x": theirs, "y": mine, "u": theirs], "removed")
        // Saved by rename while the temporary name's upload is in flight: the upload under the new name waits
        // behind it, and is never sent there.
        let gate = holdUploads()
        try await save("t.tmp", mine)
        await client.waitForHeld(gate)
        try await mount.rename("t.tmp", "t", noReplace: false).get()
        s3.seed(bucket, "t", theirs)
        try await mount.rename("t", "t2", noReplace: false).get()
        client.release(gate)
        await flushAll()
        XCTAssertEqual(stored, ["x": theirs, "y": mine, "u": theirs, "t": theirs, "t2": mine], "queued, never sent")
        // A crash before the delete: the next mount's recovery deletes no more than this one would have.
        let cut = holdUploads()
        try await save("c", mine)
        await client.waitForHeld(cut)
        s3.seed(bucket, "c", theirs)
        try await mount.unlink("c").get()
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(stored["c"], theirs, "after a crash")
        // Renamed away with its directory (outside testing round 13, F2: the listing of the old directory showed
        // their object, whose delete then removed whatever was there).
        try await mount.mkdir("d").get()
        let dir = holdUploads()
        try await save("d/x", mine)
        await client.waitForHeld(dir)
        s3.seed(bucket, "d/x", theirs)
        try await mount.rename("d", "e", noReplace: false).get()
        client.release(dir)
        await flushAll()
        XCTAssertEqual(stored["d/x"], theirs, "a directory renamed away")
        XCTAssertEqual(stored["e/x"], mine)
        // Saved, then a crash before anything was sent; their object comes meanwhile; the recovered save is in
        // flight when the file is removed (round 13, F4: recovery took the key to hold whatever was there).
        let before = holdUploads()
        try await save("r", mine)
        await client.waitForHeld(before)
        try await crashAndRecover(hold: true) { self.s3.seed(self.bucket, "r", theirs) }
        await client.waitForHeld(heldAfterCrash)
        try await mount.unlink("r").get()
        client.release(heldAfterCrash!)
        await flushAll()
        XCTAssertEqual(stored["r"], theirs, "a recovered save")
        // Another client's copy of one of this mount's objects keeps its tags (CopyObject keeps user metadata):
        // it is not this mount's own, neither for the delete nor for a save that meets it (round 13, F1).
        let z = Array("ours, copied by them".utf8)
        try await save("z", z)
        await flushAll()
        for path in ["w", "w2"] {
            let gate = holdUploads()
            try await save(path, mine)
            await client.waitForHeld(gate)
            _ = try await s3.copyObject(from: (bucket, "z", nil), to: bucket, path, ifMatch: nil, condition: nil, options: nil)
            if path == "w" { try await mount.unlink(path).get() }
            client.release(gate)
        }
        let left = await mount.flushAll(timeout: .seconds(2))
        XCTAssertEqual(left.map(\.path), ["w2"], "a save that meets their copy is a conflict")
        XCTAssertEqual(stored["w"], z, "their copy stays")
        XCTAssertEqual(stored["w2"], z, "their copy is not replaced")
    }

    /// S-CONFLICT-RENAMED-NEW-COPIED: the temporary file is in S3 already, so the rename copies it; the copy
    /// expects no object under the new name, and another client's object created there meanwhile (after the
    /// rename's lookup) makes the rename fail with EEXIST, the file still under its old name.
    func testSConflictRenamedNewCopied() async throws {
        let theirs = Array("theirs".utf8), mine = Array("mine".utf8)
        try await save("best.tmp", mine)
        await flushAll()
        let gate = client.hold(.operations("CopyObject"))
        let m = mount!
        let renaming = Task { () -> Result<Void, DriverError> in await m.rename("best.tmp", "best.ckpt", noReplace: false) }
        await client.waitForHeld(gate)
        s3.seed(bucket, "best.ckpt", theirs)
        client.release(gate)
        switch await renaming.value {
        case .failure(let e): XCTAssertEqual(e.errno, EEXIST, "\(e)")
        case .success: XCTFail("the rename replaced their object")
        }
        await flushAll()
        XCTAssertEqual(stored, ["best.ckpt": theirs, "best.tmp": mine])
        let shown = try await read("best.tmp")
        XCTAssertEqual(shown, mine)
    }

    /// S-CONFLICT-DIR-RENAMED-NEW: a directory saved under a temporary name and renamed onto a new one: a file of
    /// it not in S3 yet moves, and its upload expects no object under the new name (a conflict with another
    /// client's object created there meanwhile).
    func testSConflictDirRenamedNew() async throws {
        let theirs = Array("theirs".utf8), mine = Array("mine".utf8)
        try await mount.mkdir("ckpt.tmp").get()
        let gate = holdUploads()
        try await save("ckpt.tmp/model", mine)
        try await mount.rename("ckpt.tmp", "ckpt", noReplace: false).get()
        s3.seed(bucket, "ckpt/model", theirs)
        client.release(gate)
        let left = await mount.flushAll(timeout: .seconds(2))
        XCTAssertTrue(left.map(\.path).contains("ckpt/model"), "\(left)")
        XCTAssertEqual(stored["ckpt/model"], theirs, "their object is not overwritten")
        let shown = try await read("ckpt/model")
        XCTAssertEqual(shown, mine, "the local copy stays readable")
    }

    /// S-CONFLICT-RENAMED-OVER-KEPT: every save kept; a save by rename over a file whose save, in flight, meets
    /// another client's object: the renamed file's save meets it as a conflict too.
    func testSConflictRenamedOverKept() async throws {
        try remount { $0.keepEveryVersion = true }
        let theirs = Array("theirs".utf8), mine = Array("second".utf8)
        let gate = holdUploads()
        try await save("x", Array("first".utf8))
        await client.waitForHeld(gate)
        s3.seed(bucket, "x", theirs)
        try await save("x.tmp", mine)
        try await mount.rename("x.tmp", "x", noReplace: false).get()
        client.release(gate)
        let left = await mount.flushAll(timeout: .seconds(2))
        // (The temporary name's save, sent before the rename, landed; its delete waits behind the conflict.)
        XCTAssertTrue(left.contains { $0.path == "x" && $0.reason.contains("conflict") }, "\(left)")
        XCTAssertEqual(stored["x"], theirs, "their object is not replaced")
        let shown = try await read("x")
        XCTAssertEqual(shown, mine, "the local copy stays readable")

        // The same with the replaced file's save still queued at the rename (waiting out the upload delay): it
        // keeps its condition too, so it meets their object rather than replacing it (it went with none, and
        // the renamed file replaced theirs after it; ModelRegressionTests, seed 898, 1 run in 3).
        try remount { $0.uploadDelay = .seconds(60) }
        try await save("y", Array("first".utf8))
        s3.seed(bucket, "y", theirs)
        try await save("y.tmp", mine)
        try await mount.rename("y.tmp", "y", noReplace: false).get()
        let queued = await mount.flushAll(timeout: .seconds(2))
        XCTAssertTrue(queued.contains { $0.path == "y" && $0.reason.contains("conflict") }, "\(queued)")
        XCTAssertEqual(stored["y"], theirs, "their object is not replaced")
        let kept = try await read("y")
        XCTAssertEqual(kept, mine, "the local copy stays readable")

        // A crash after the kept save met their object, before the renamed file's save went: recovered, that save
        // still expects no object (its journal record says so; it said "anything" and replaced theirs).
        try remount { $0.uploadDelay = .zero }
        let held = holdUploads(.init { op, key in op == "PutObject" && key == "z" })
        try await save("z", Array("first".utf8))
        await client.waitForHeld(held)
        s3.seed(bucket, "z", theirs)
        try await save("z.tmp", mine)
        try await mount.rename("z.tmp", "z", noReplace: false).get()
        let first = try XCTUnwrap(client.releaseOldest(held))
        await client.waitForReply(first.id)
        await client.waitForHeld(held)  // the renamed file's save, queued after the kept one
        try await crashAndRecover()
        let recovered = await mount.flushAll(timeout: .seconds(2))
        XCTAssertTrue(recovered.contains { $0.path == "z" && $0.reason.contains("conflict") }, "\(recovered)")
        XCTAssertEqual(stored["z"], theirs, "their object is not replaced after the crash")
    }

    func testSConflictTwoMounts() async throws {
        s3.seed(bucket, "f", Array("start".utf8))
        let other = try CoreDriver(directory: dir + "-other", client: s3, bucket: bucket)
        defer {
            other.stop()
            try? FileManager.default.removeItem(atPath: dir + "-other")
        }
        let a = try await open("f", Self.truncate)
        let b = try await other.open("f", Self.truncate).get()
        try await write(a, Array("first".utf8))
        try await other.write(b, at: 0, Array("second".utf8)).get()
        try await mount.close(a).get()
        try await other.close(b).get()
        await flushAll()
        let left = await other.flushAll(timeout: .seconds(5))
        XCTAssertEqual(left.map(\.path), ["f"])
        XCTAssertEqual(stored["f"], Array("first".utf8))
    }

    /// A file stopped by a conflict holds back the deletes made after it until it is renamed.
    func testSConflictHoldsDeletes() async throws {
        s3.seed(bucket, "c", Array("theirs v1".utf8))
        s3.seed(bucket, "old", [1])
        let h = try await open("c", Self.truncate)
        try await write(h, Array("ours".utf8))
        s3.seed(bucket, "c", Array("theirs v2".utf8))
        try await mount.close(h).get()
        try await waitFor("the conflict") { mount.status.failures.map(\.state) == ["conflict"] }
        try await mount.unlink("old").get()
        // Flush says so as soon as nothing else can go (it waited out its whole timeout before).
        let left = await mount.flushAll(timeout: .seconds(120))
        XCTAssertTrue(left.contains { $0.path == "old" && $0.reason.contains("a file stopped by a conflict holds it") }, "\(left)")
        XCTAssertNotNil(stored["old"], "the delete went before the conflicted file")
        try await mount.rename("c", "c.mine", noReplace: false).get()
        await flushAll()
        XCTAssertNil(stored["old"])
        XCTAssertEqual(stored["c.mine"], Array("ours".utf8))
    }

    /// With conditional writes off, the last upload wins.
    func testSConflictOff() async throws {
        try remount { $0.adjust = { $0.conditionalWrites = false } }
        s3.seed(bucket, "c", Array("theirs v1".utf8))
        let h = try await open("c", Self.truncate)
        try await write(h, Array("ours".utf8))
        s3.seed(bucket, "c", Array("theirs v2".utf8))
        try await mount.close(h).get()
        await flushAll()
        XCTAssertEqual(stored["c"], Array("ours".utf8))
    }
}
