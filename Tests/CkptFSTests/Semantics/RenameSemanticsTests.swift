// docs/SEMANTICS.md, "Rename", against the core.
@testable import CkptFS
import CkptTestSupport
import Foundation
import XCTest

final class RenameSemanticsTests: SemanticsTestCase {
    let root = FileSystem.rootIno

    /// rename(2) straight into the core (the kernel's own checks left out), with `flags`; its errno (0: done).
    func coreRename(_ from: String, _ to: String, flags: UInt32 = 0, into parent: UInt64? = nil) async -> Int32 {
        let fs = self.fs, root = self.root
        return await errno { () async throws(FSError) in
            try await fs.rename(parent: root, name: from, newParent: parent ?? root, newName: to, flags: flags)
        }
    }

    /// Write-temp-then-rename: one upload, to the final name; the temporary name never reaches S3.
    func testSRenameFileLocal() async throws {
        // A delay long enough for what follows, not longer: flush does not always end it (testSDurFlushPrompt).
        try remount { $0.uploadDelay = .seconds(2) }
        let data = bytes(40_000)
        try await save("t.tmp", data)
        try await mount.rename("t.tmp", "t", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(keys, ["t"])
        XCTAssertEqual(stored["t"], data)
        XCTAssertEqual(client.calls("PutObject").count + client.calls("CreateMultipartUpload").count, 1, "one upload")
        let sends: Set = ["PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "CopyObject"]
        XCTAssertFalse(client.log.contains { $0.key == "t.tmp" && sends.contains($0.operation) }, "the temporary name reached S3")
    }

    /// The old name of a file created here and renamed before its upload needs no DeleteObject: none is sent,
    /// and an object another client put under that name meanwhile stays. Likewise for a directory rename.
    func testRenameOfAFileNeverSentDeletesNothing() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        try await save("t.tmp", bytes(40_000))
        s3.seed(bucket, "t.tmp", [9])  // another client, after this mount's lookup found no "t.tmp"
        try await mount.rename("t.tmp", "t", noReplace: false).get()
        try await mount.mkdir("d").get()
        try await save("d/a", [1])
        try await mount.rename("d", "e", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(keys, ["e/", "e/a", "t", "t.tmp"])
        XCTAssertEqual(stored["t.tmp"], [9])
        XCTAssertEqual(stored["t"], bytes(40_000))
        XCTAssertFalse(client.log.contains { ($0.key == "t.tmp" || $0.key == "d/a") && $0.operation == "DeleteObject" },
                       "a DeleteObject of a name that never reached S3")
    }

    /// Checkpoint rotation (Keras, TF CheckpointManager): save to a temporary name, rename to the step's name,
    /// remove the oldest. A file renamed to a name that held nothing and removed before its upload sends no
    /// DeleteObject at all; one renamed over an object removes that object when it is unlinked.
    func testRotationOfSavesNeverSentDeletesOnlyWhatS3Holds() async throws {
        try remount { $0.uploadDelay = .seconds(2) }
        s3.seed(bucket, "old", [7])
        _ = try await attributes("old")
        for (i, name) in ["c1", "c2", "old"].enumerated() {
            try await save("c.tmp", bytes(3000, i))
            try await mount.rename("c.tmp", name, noReplace: false).get()
        }
        try await mount.unlink("c1").get()
        try await mount.unlink("old").get()
        await flushAll()
        XCTAssertEqual(keys, ["c2"])
        XCTAssertEqual(stored["c2"], bytes(3000, 1))
        XCTAssertEqual(client.calls("DeleteObject").map(\.key), ["old"])
        XCTAssertEqual(client.calls("PutObject").count + client.calls("CreateMultipartUpload").count, 1)
    }

    /// A file only in S3 is copied in S3 (no GET), keeps its metadata, and the old key goes.
    func testSRenameFileRemote() async throws {
        s3.seed(bucket, "a", bytes(5000), metadata: ["mtime": "1600000000.250"])
        try await mount.rename("a", "b", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(keys, ["b"])
        XCTAssertEqual(stored["b"], bytes(5000))
        XCTAssertEqual(client.count("GetObject"), 0, "the bytes passed through this machine")
        XCTAssertGreaterThan(client.count("CopyObject") + client.count("UploadPartCopy"), 0)
        let info = try await objectInfo("b")
        XCTAssertEqual(info.metadata["mtime"], "1600000000.250", "the copy keeps the stored mtime")
    }

    /// A file only in S3 renamed (copied in S3) over another: the destination's inodes stop naming the name at
    /// the moment the rename replaces it, as with a local move, so an open of one the kernel looked up before
    /// answers ESTALE and the kernel looks the name up again. Before, the inode kept naming the key and
    /// showing the replaced version: an O_APPEND open of it opened that version (checked within the last
    /// second) and its write made a save of the replaced file plus the line, uploaded over the renamed one.
    func testRenameOfAnObjectOverAnotherRenewsTheDestinationsInode() async throws {
        s3.seed(bucket, "a", bytes(5000))
        try await save("d", bytes(300, 2))
        await flushAll()  // d is only in S3 now, as a is
        let old = try await ino("d")
        try await mount.rename("a", "d", noReplace: false).get()
        let e = await errno { () async throws(FSError) in _ = try await fs.open(ino: old, flags: O_WRONLY | O_APPEND) }
        XCTAssertEqual(e, ESTALE, "an open of the replaced file's inode opened the replaced version")
        let now = try await ino("d")
        XCTAssertNotEqual(now, old, "the name names a new inode")
        await flushAll()
        XCTAssert(stored["d"] == bytes(5000), "S3 holds \(stored["d"]?.count ?? -1) bytes, not the renamed file's")
        let shown = try await read("d")
        XCTAssert(shown == bytes(5000), "the mount shows \(shown.count) bytes, not the renamed file's")
    }

    /// A rename over a file replaces it whatever S3 holds under that name by then: no condition, no conflict.
    func testSRenameReplace() async throws {
        s3.seed(bucket, "t", Array("v1".utf8))
        _ = try await attributes("t")  // the mount knows t as v1
        try await save("n", bytes(300))
        s3.seed(bucket, "t", Array("another client's v2".utf8))
        try await mount.rename("n", "t", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(stored["t"], bytes(300))
        XCTAssertNil(stored["n"])
    }

    /// The old name goes only after the new one is durable: never neither.
    func testSRenameOrder() async throws {
        let h = try await open("x", Self.create)
        try await write(h, bytes(2000))
        _ = try await mount.fsync(h).get()  // x is in S3, and still open: the rename moves it locally
        let gate = holdUploads()
        try await mount.rename("x", "y", noReplace: false).get()
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertEqual(keys, ["x"], "the old name was deleted before the new one was durable")
        await mount.close(h)
        client.release(gate)
        await flushAll()
        XCTAssertEqual(keys, ["y"])
        XCTAssertEqual(stored["y"], bytes(2000))
    }

    /// RENAME_NOREPLACE fails with EEXIST over a name only in S3, changing nothing.
    func testSRenameNoreplace() async throws {
        s3.seed(bucket, "a", [1])
        s3.seed(bucket, "b", [2])
        let e = await coreRename("a", "b", flags: FileSystem.renameNoReplace)
        XCTAssertEqual(e, EEXIST)
        await flushAll()
        XCTAssertEqual(stored, ["a": [1], "b": [2]])
        let a = try await read("a")
        XCTAssertEqual(a, [1])
    }

    /// RENAME_EXCHANGE fails with EINVAL, changing nothing.
    func testSRenameExchange() async throws {
        s3.seed(bucket, "a", [1])
        s3.seed(bucket, "b", [2])
        let e = await coreRename("a", "b", flags: FileSystem.renameExchange)
        XCTAssertEqual(e, EINVAL)
        await flushAll()
        XCTAssertEqual(stored, ["a": [1], "b": [2]])
    }

    /// RENAME_WHITEOUT (4) is a plain rename: nothing is left under the old name.
    func testSRenameWhiteout() async throws {
        s3.seed(bucket, "a", [1])
        let e = await coreRename("a", "b", flags: 4)
        XCTAssertEqual(e, 0)
        await flushAll()
        XCTAssertEqual(stored, ["b": [1]])
        let listed = try await mount.list("").get()
        XCTAssertEqual(listed, ["b": false])
    }

    /// Safe save (write t.tmp, fsync, rename to t, write more, close) in every order of fsync, rename and the
    /// second write, then close: the last bytes under t, nothing under t.tmp.
    func testSRenameSafeSave() async throws {
        enum Step: CaseIterable { case fsync, rename, write }
        let orders: [[Step]] = [[.fsync, .rename, .write], [.fsync, .write, .rename], [.rename, .fsync, .write],
                                [.rename, .write, .fsync], [.write, .fsync, .rename], [.write, .rename, .fsync]]
        for (i, order) in orders.enumerated() {
            let first = bytes(20_000, i), more = bytes(3000, i + 50)
            s3.seed(bucket, "t\(i)", Array("previous".utf8))
            let h = try await open("t\(i).tmp", Self.create)
            try await write(h, first)
            for step in order {
                switch step {
                case .fsync: _ = try await mount.fsync(h).get()
                case .rename: try await mount.rename("t\(i).tmp", "t\(i)", noReplace: false).get()
                case .write: try await write(h, more, at: Int64(first.count))
                }
            }
            try await mount.close(h).get()
            await flushAll()
            XCTAssertEqual(stored["t\(i)"], first + more, "order \(order)")
            XCTAssertNil(stored["t\(i).tmp"], "order \(order)")
        }
    }

    /// A rename before the upload starts, while it runs, or just after it landed keeps the file, byte-exact,
    /// under its new name only.
    func testSRenameDuringUpload() async throws {
        // 2 s, long enough to rename before the upload starts: with 60 s the flush below waited 30 s once in 4
        // runs (see testSDurFlushPrompt).
        try remount { $0.uploadDelay = .seconds(2) }
        // Before the upload starts (it waits out the delay).
        try await save("a", bytes(1000, 1))
        try await mount.rename("a", "a2", noReplace: false).get()
        // While it runs (held): the flush starts it at once.
        let gate = holdUploads(FaultInjectingClient.Match.uploads.key("b"))
        try await save("b", bytes(1000, 2))
        let flushing = Task { [fs = self.fs] in await fs.flushAll(under: "", timeout: .seconds(30)) }
        await client.waitForHeld(gate)
        try await mount.rename("b", "b2", noReplace: false).get()
        client.release(gate)
        _ = await flushing.value
        // Just after it landed.
        try await save("c", bytes(1000, 3))
        await flushAll()
        XCTAssertNotNil(stored["c"])
        try await mount.rename("c", "c2", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(stored, ["a2": bytes(1000, 1), "b2": bytes(1000, 2), "c2": bytes(1000, 3)])
    }

    /// A rename sends only the file's newest save to the new name: a save before it, uploading (or, with every
    /// save kept, waiting) when the rename comes, lands under the old name, before that name's delete. Before,
    /// it was sent again under the new name first, which then held bytes it never held (a save of the old
    /// name; outside testing round 8, with --keep-every-version).
    func testRenameSendsOnlyTheNewestSaveToTheNewName() async throws {
        for keepEveryVersion in [false, true] {
            try remount { $0.keepEveryVersion = keepEveryVersion }
            let f = "f\(keepEveryVersion)", g = "g\(keepEveryVersion)"
            let gate = holdUploads(FaultInjectingClient.Match.uploads.key(f))
            try await save(f, bytes(1000, 1))
            await client.waitForHeld(gate)  // the first save is uploading
            try await save(f, bytes(1000, 2))
            try await save(f, bytes(1000, 3))
            try await mount.rename(f, g, noReplace: false).get()
            client.release(gate)
            await flushAll()
            XCTAssertNil(stored[f])
            XCTAssert(stored[g] == bytes(1000, 3), "\(g) is not the newest save")
            let puts = client.calls("PutObject")
            XCTAssertEqual(puts.filter { $0.key == g }.count, 1, "an earlier save went to the new name (every save kept: \(keepEveryVersion))")
            XCTAssertEqual(puts.filter { $0.key == f }.count, keepEveryVersion ? 2 : 1, "the saves before the newest")
        }
    }

    /// Renaming a file stopped by a conflict uploads it under the new name; the old name shows the other
    /// writer's object again.
    func testSRenameConflicted() async throws {
        let theirs2 = Array("theirs v2".utf8)
        s3.seed(bucket, "c", Array("theirs v1".utf8))
        let h = try await open("c", Self.truncate)
        try await write(h, Array("ours".utf8))
        s3.seed(bucket, "c", theirs2)
        try await mount.close(h).get()
        let left = await mount.flushAll(timeout: .seconds(10))
        XCTAssertEqual(left.map(\.path), ["c"])
        try await mount.rename("c", "c.mine", noReplace: false).get()
        await flushAll()
        XCTAssertEqual(stored, ["c": theirs2, "c.mine": Array("ours".utf8)])
        let shown = try await read("c")
        XCTAssertEqual(shown, theirs2)
    }

    /// A directory rename copies what is in S3, moves what is written here, deletes the old keys; the mount
    /// shows the new tree at once and S3 holds it exactly after the upload, markers included.
    func testSRenameDir() async throws {
        s3.seed(bucket, "d/", [])
        s3.seed(bucket, "d/a", [1])
        s3.seed(bucket, "d/sub/", [])
        s3.seed(bucket, "d/sub/b", [2])
        s3.seed(bucket, "d/empty/", [])
        let gate = holdUploads()
        try await save("d/new", [3])
        try await mount.rename("d", "e", noReplace: false).get()
        let shown = try await mount.list("e").get()
        XCTAssertEqual(shown, ["a": false, "sub": true, "empty": true, "new": false])
        let old = await mount.stat("d")
        XCTAssertEqual(errno(old), ENOENT)
        client.release(gate)
        await flushAll()
        XCTAssertEqual(keys, ["e/", "e/a", "e/empty/", "e/new", "e/sub/", "e/sub/b"])
        XCTAssertEqual(stored["e/new"], [3])
    }

    /// A crash while a directory rename copies its objects: the next mount finishes the rename, and every old
    /// name goes, also that of a file saved here whose older object was under it. The rename's intent lists
    /// only the objects it copies (a local file's bytes move with it): before, that older object stayed under
    /// the old name, and the file came back there.
    func testRenameDirCrashWhileCopyingDeletesTheOldObjectOfASavedFile() async throws {
        s3.seed(bucket, "d/a", [1])
        s3.seed(bucket, "d/b", [2])
        holdUploads()
        try await save("d/a", [9])
        let copies = holdUploads(.operations("CopyObject"))
        let crashed = client!
        let fs = self.fs, root = self.root
        let renaming = Task { () async -> Bool in
            do throws(FSError) {
                try await fs.rename(parent: root, name: "d", newParent: root, newName: "e", flags: 0)
                return true
            } catch { return false }
        }
        await client.waitForHeld(copies)
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(keys, ["e/a", "e/b"])
        XCTAssertEqual(stored["e/a"], [9])
        // The crashed mount's rename, held in its copy until now, fails; it asks S3 whether the copy landed
        // anyway (its reply may be what was lost), and a crashed client never answers: left waiting.
        crashed.failHeld()
        renaming.cancel()
    }

    /// The errors of directory renames, and a directory over an empty one replaces it.
    func testSRenameDirErrors() async throws {
        s3.seed(bucket, "src/a", [1])
        s3.seed(bucket, "full/x", [2])
        s3.seed(bucket, "empty/", [])
        s3.seed(bucket, "file", [3])
        let notEmpty = await coreRename("src", "full")
        XCTAssertEqual(notEmpty, ENOTEMPTY)
        let overFile = await coreRename("src", "file")
        XCTAssertEqual(overFile, ENOTDIR)
        let src = try await fs.lookup(parent: root, name: "src")  // held, as the kernel holds the target's parent
        let intoItself = await coreRename("src", "inner", into: src.ino)
        XCTAssertEqual(intoItself, EINVAL)
        let fileOverDir = await coreRename("file", "empty")
        XCTAssertEqual(fileOverDir, EISDIR)
        XCTAssertEqual(keys, ["empty/", "file", "full/x", "src/a"], "the failed renames changed nothing")
        let replaced = await coreRename("src", "empty")
        XCTAssertEqual(replaced, 0)
        await flushAll()
        XCTAssertEqual(keys.filter { !$0.hasSuffix("/") }, ["empty/a", "file", "full/x"])
        XCTAssertFalse(keys.contains { $0.hasPrefix("src") })
    }

    /// A copy that fails undoes the copies made: nothing moves, and rename fails with the copy's errno.
    func testSRenameDirUndo() async throws {
        for k in ["d/a", "d/b", "d/c"] { s3.seed(bucket, k, Array(k.utf8)) }
        client.failNth(2, of: "CopyObject", with: .accessDenied)
        let e = await coreRename("d", "e")
        XCTAssertEqual(e, EACCES)
        await flushAll()
        XCTAssertEqual(keys, ["d/a", "d/b", "d/c"])
        let shown = try await mount.list("d").get()
        XCTAssertEqual(shown, ["a": false, "b": false, "c": false])
        let moved = await mount.stat("e")
        XCTAssertEqual(errno(moved), ENOENT)
    }

    /// A CopyObject that landed but whose reply was lost (every attempt of the client failed after the first
    /// took effect) is a copy made: the rename of a file goes on, and a directory's copies are not left behind
    /// by an undo. Before, the rename failed with EIO while S3 had changed: the destination replaced, or a
    /// directory's copy left under the new name after the rename was "undone" (outside testing round 11).
    func testARenameWhoseCopyReplyWasLostGoesOn() async throws {
        s3.seed(bucket, "f", Array("the file".utf8))
        s3.seed(bucket, "g", Array("replaced".utf8))
        let lost = client.add(FaultInjectingClient.Match.operations("CopyObject"), .first(1), .failAfter(.serviceUnavailable))
        let e = await coreRename("f", "g")
        XCTAssertEqual(e, 0)
        client.remove(lost)
        for k in ["d/a", "d/b"] { s3.seed(bucket, k, Array(k.utf8)) }
        let lostToo = client.add(FaultInjectingClient.Match.operations("CopyObject"), .nth(2), .failAfter(.serviceUnavailable))
        let d = await coreRename("d", "e")
        XCTAssertEqual(d, 0)
        client.remove(lostToo)
        await flushAll()
        XCTAssertEqual(stored["g"], Array("the file".utf8))
        XCTAssertEqual(keys.filter { !$0.hasSuffix("/") }, ["e/a", "e/b", "g"])
        let shown = try await read("g")
        XCTAssertEqual(shown, Array("the file".utf8))
    }

    /// A failed rename over an empty directory leaves that directory too: it is replaced only once the move
    /// has succeeded (before, the destination was removed first and stayed removed).
    func testRenameDirUndoKeepsTheEmptyDestination() async throws {
        for k in ["d/a", "d/b", "d/c"] { s3.seed(bucket, k, Array(k.utf8)) }
        s3.seed(bucket, "e/", [])
        client.failNth(2, of: "CopyObject", with: .accessDenied)
        let e = await coreRename("d", "e")
        XCTAssertEqual(e, EACCES)
        await flushAll()
        XCTAssertEqual(keys, ["d/a", "d/b", "d/c", "e/"])
        let shown = try await mount.list("").get()
        XCTAssertEqual(shown, ["d": true, "e": true])
        let empty = try await mount.list("e").get()
        XCTAssertEqual(empty, [:])
        // And the rename, tried again, replaces it.
        let again = await coreRename("d", "e")
        XCTAssertEqual(again, 0)
        await flushAll()
        XCTAssertEqual(keys.filter { !$0.hasSuffix("/") }, ["e/a", "e/b", "e/c"])
        let moved = try await mount.list("e").get()
        XCTAssertEqual(moved, ["a": false, "b": false, "c": false])
    }
}
