// docs/SEMANTICS.md, "After a crash", against the core.
@testable import CkptFS
import CkptTestSupport
import Foundation
import XCTest

final class CrashSemanticsTests: SemanticsTestCase {
    /// The next mount uploads every acknowledged file byte-exact (a torn last journal record ignored); until
    /// then reads return the staged bytes; no multipart upload is left open.
    func testSCrashRecover() async throws {
        holdUploads()
        let a = bytes(40_000), b = bytes(3000, 2)
        try await save("a", a)
        try await save("b", b)
        let requeued = try await crashAndRecover(hold: true, before: {
            let j = Glibc.open(dir + "/journal", O_WRONLY | O_APPEND)
            _ = Glibc.write(j, [0x50, 0, 0, 0, 1, 2, 3], 7)
            Glibc.close(j)
        })
        XCTAssertEqual(Set(requeued), ["a", "b"])
        XCTAssertEqual(keys, [])
        let shownA = try await read("a"), shownB = try await read("b")
        XCTAssertEqual(shownA, a, "the staged bytes before the upload")
        XCTAssertEqual(shownB, b)
        client.release(heldAfterCrash!)
        await flushAll()
        XCTAssertEqual(stored, ["a": a, "b": b])
        XCTAssertEqual(s3.openUploads.count, 0)
    }

    /// Recovered files upload by themselves.
    func testSCrashUnasked() async throws {
        holdUploads()
        try await save("a", bytes(40_000))
        try await crashAndRecover()
        try await waitFor("the recovered file to upload without a flush") { stored["a"] == bytes(40_000) }
    }

    /// A crash while parts go up, before complete, or after complete before the journal knows: the next mount
    /// leaves the object right and no multipart upload open.
    func testSCrashMultipart() async throws {
        let moments: [(String, FaultInjectingClient.Match, Bool)] = [
            ("while parts go up", .operations("UploadPart"), false),
            ("before complete", .operations("CompleteMultipartUpload"), false),
            ("after complete, before the journal knows", .operations("CompleteMultipartUpload"), true),
        ]
        for (i, (moment, match, landing)) in moments.enumerated() {
            let key = "p\(i)", data = bytes(40_000, i)
            let gate = holdUploads(match.key(key))
            try await save(key, data)
            await client.waitForHeld(gate)
            try await crashAndRecover(landing: landing)
            await flushAll()
            XCTAssertEqual(stored[key], data, moment)
            XCTAssertEqual(s3.openUploads.count, 0, "\(moment): a multipart upload left open")
        }
    }

    /// A delete acknowledged during an upload holds across a crash right after that upload completes.
    func testSCrashDelete() async throws {
        let gate = holdUploads(FaultInjectingClient.Match.operations("PutObject").key("a"))
        try await save("a", bytes(100))
        await client.waitForHeld(gate)
        try await mount.unlink("a").get()
        try await crashAndRecover(landing: true)  // the upload completes as the daemon dies
        await flushAll()
        XCTAssertNil(stored["a"], "the unlinked file came back in S3")
        let a = await mount.stat("a")
        XCTAssertEqual(errno(a), ENOENT, "the unlinked file came back on the mount")
    }

    /// The journal's changes belong to the bucket its mount wrote them for: after a crash, a mount of another
    /// bucket over the same cache directory refuses to recover (EBUSY) and applies none of them there (no
    /// upload, no delete); the next mount of the first bucket uploads and deletes as usual.
    func testSCrashOtherBucket() async throws {
        s3.seed(bucket, "d", [1])
        holdUploads()
        try await save("a", bytes(40_000))
        try await mount.unlink("d").get()
        client.cut()
        stop()
        let other = MemoryObjectClient(buckets: ["other"])
        other.seed("other", "d", [2])
        let elsewhere = try CoreDriver(directory: dir, client: other, bucket: "other", setup: setup)
        var refused: Int32 = 0
        do { _ = try await elsewhere.recover() } catch let e as FSError { refused = e.errno }
        elsewhere.stop()
        XCTAssertEqual(refused, EBUSY, "a mount of another bucket recovered this bucket's journal")
        XCTAssertEqual(other.objects(in: "other"), ["d": [2]], "the journal's changes were applied to another bucket")
        try mountAgain()
        let requeued = try await mount.recover()
        XCTAssertEqual(requeued, ["a"])
        await flushAll()
        XCTAssertEqual(stored, ["a": bytes(40_000)])
    }

    /// A directory rename interrupted after its copies is finished by the next mount.
    func testSCrashDirRename() async throws {
        s3.seed(bucket, "d/", [])
        s3.seed(bucket, "d/a", [1])
        s3.seed(bucket, "d/sub/b", [2])
        client.hold(.operations("DeleteObject", "DeleteObjects"))
        try await mount.rename("d", "e", noReplace: false).get()
        XCTAssertTrue(keys.contains("d/a"), "the old keys are still there at the crash")
        try await crashAndRecover()
        await flushAll()
        XCTAssertEqual(keys.filter { $0.hasPrefix("d/") }, [], "nothing under the old name")
        XCTAssertEqual(stored["e/a"], [1])
        XCTAssertEqual(stored["e/sub/b"], [2])
        let listed = try await mount.list("e").get()
        XCTAssertEqual(listed, ["a": false, "sub": true])
    }

    /// A version queued behind an upload that landed just before the crash is not taken for a conflict.
    func testSCrashNoFalseConflict() async throws {
        let gate = holdUploads(FaultInjectingClient.Match.uploads.key("f"))
        try await save("f", bytes(100, 1))
        await client.waitForHeld(gate)
        try await save("f", bytes(100, 2))  // queued behind the held upload
        try await crashAndRecover(landing: true)  // the first lands as the daemon dies
        await flushAll()
        XCTAssertEqual(stored["f"], bytes(100, 2))
        XCTAssertEqual(mount.status.failures.map(\.path), [])
    }

    /// A file created again under a name this mount unlinked, while that delete waited behind an earlier
    /// upload: its upload replaces the delete, also after a crash (no conflict with the object the delete was
    /// to remove; before, recovery sent it with If-None-Match and kept it as a conflict, S3 keeping the
    /// unlinked object).
    func testSCrashRecreated() async throws {
        let old = Array("the unlinked object".utf8), mine = Array("created again".utf8)
        s3.seed(bucket, "a", old)
        _ = try await read("a")
        holdUploads()
        try await save("c", bytes(100))
        try await mount.unlink("a").get()  // waits behind c's upload
        try await save("a", mine)
        try await crashAndRecover()
        let left = await mount.flushAll(timeout: .seconds(10))
        XCTAssertEqual(left.map(\.path), [])
        XCTAssertEqual(stored["a"], mine)
        XCTAssertEqual(stored["c"], bytes(100))

        // The delete already sent when the file was saved there (so its save expects no object), and a second
        // crash after the first recovery queued the save in the delete's place: the save still replaces the
        // object the delete was to remove (model seed 30425: it went with If-None-Match, met that object as a
        // conflict, and the object stayed for good).
        s3.seed(bucket, "b", old)
        _ = try await read("b")
        let deletes = holdUploads(.init(operations: ["DeleteObject"]))
        try await mount.unlink("b").get()
        await client.waitForHeld(deletes)
        try await save("b", mine)
        try await crashAndRecover(hold: true)
        await client.waitForHeld(heldAfterCrash)  // the save went in the delete's place (journaled as done)
        try await waitFor("the replaced delete journaled as done") {
            let records = Journal.replay(path: dir + "/journal").records
            let deleteIds = Set(records.filter { $0.op == .delete && $0.key == "b" }.map(\.id))
            return deleteIds.allSatisfy { id in records.contains { $0.op == .done && $0.id == id } }
        }
        try await crashAndRecover()
        let again = await mount.flushAll(timeout: .seconds(10))
        XCTAssertEqual(again.map(\.path), [])
        XCTAssertEqual(stored["b"], mine)
    }

    /// A recovered file keeps its condition: another client's change meanwhile makes its upload a conflict.
    func testSCrashConditionKept() async throws {
        let theirs1 = Array("theirs v1".utf8), theirs2 = Array("theirs v2".utf8)
        s3.seed(bucket, "c", theirs1)
        holdUploads()
        let h = try await open("c", Self.write)
        try await write(h, Array("OURS".utf8))
        try await mount.close(h).get()
        try await crashAndRecover(before: { self.s3.seed(self.bucket, "c", theirs2) })
        let left = await mount.flushAll(timeout: .seconds(10))
        XCTAssertEqual(left.map(\.path), ["c"])
        XCTAssertEqual(stored["c"], theirs2, "their object is not overwritten")
        let shown = try await read("c")
        XCTAssertEqual(shown, Array("OURS".utf8) + theirs1[4...], "the local copy stays readable")
    }
}
