import CkptS3
import CkptTestSupport
import Foundation
import Synchronization
import XCTest

/// The fault-injecting wrapper client: its rules, holds, cut and log, over the in-memory client, and once over
/// the real S3 client against SeaweedFS.
final class FaultInjectingClientTests: XCTestCase {
    let bucket = "b"
    var memory: MemoryObjectClient!
    var client: FaultInjectingClient!

    override func setUp() {
        memory = MemoryObjectClient(buckets: [bucket])
        client = FaultInjectingClient(wrapping: memory)
    }

    override func tearDown() { client.failHeld() }

    func put(_ c: any ObjectClient, _ key: String, _ data: [UInt8]) async throws(S3Error) {
        try await putBytes(c, bucket, key, data)
    }

    func stored(_ key: String) -> [UInt8]? { memory.objects(in: bucket)[key] }

    func code(_ f: () async throws(S3Error) -> Void) async -> S3Error.Code? {
        do throws(S3Error) {
            try await f()
            return nil
        } catch { return error.code }
    }

    func testTheNthCallOfAnOperationFailsWithTheGivenError() async throws {
        let rule = client.failNth(3, of: "PutObject", with: .slowDown)
        var codes: [S3Error.Code?] = []
        for i in 1...4 { codes.append(await code { () async throws(S3Error) in try await put(client, "k\(i)", [UInt8(i)]) }) }
        XCTAssertEqual(codes, [nil, nil, .slowDown, nil])
        XCTAssertNil(stored("k3"), "a failure before the call reaches S3 changes nothing")
        XCTAssertEqual(stored("k4"), [4])
        XCTAssertEqual(client.hits(rule), 1)
        XCTAssertEqual(client.calls("PutObject").map(\.outcome), [.succeeded, .succeeded, .injected("503 SlowDown"), .succeeded])
        // Other operations do not count towards the rule.
        _ = try await client.headObject(bucket, "k1", versionId: nil, ifMatch: nil)
        XCTAssertEqual(client.count("HeadObject"), 1)
        XCTAssertEqual(memory.count("PutObject"), 3)
    }

    func testTheInjectedErrorsAreTheOnesS3Gives() {
        let cases: [(FaultInjectingClient.Fault, S3Error.Code, Int?, Bool)] = [
            (.slowDown, .slowDown, 503, true), (.internalError, .internalError, 500, true),
            (.serviceUnavailable, .serviceUnavailable, 503, true), (.connectionReset, .transport(.connectionReset), nil, true),
            (.timeout, .transport(.timeout), nil, true), (.preconditionFailed, .preconditionFailed, 412, false),
            (.accessDenied, .accessDenied, 403, false), (.noSuchKey, .noSuchKey, 404, false),
        ]
        for (fault, code, status, retryable) in cases {
            let e = fault.error(operation: "PutObject", bucket: "b", key: "k")
            XCTAssertEqual(e.code, code, "\(fault)")
            XCTAssertEqual(e.httpStatus, status, "\(fault)")
            XCTAssertEqual(e.isRetryable, retryable, "\(fault): the client's retry policy must see it as S3's")
            XCTAssertEqual(e.key, "k")
        }
    }

    func testRulesOnAKeyOrPrefixCountOnlyTheirCalls() async throws {
        let ckpt = client.add(.operations("PutObject").prefix("ckpt/"), .first(2), .fail(.internalError))
        let one = client.add(.operations("PutObject", "HeadObject").key("exact"), .from(2), .fail(.accessDenied))
        var results: [String: S3Error.Code?] = [:]
        for key in ["ckpt/a", "other", "ckpt/b", "ckpt/c", "exact", "exact"] {
            results[key + "\(results.count)"] = await code { () async throws(S3Error) in try await put(client, key, [1]) }
        }
        XCTAssertEqual(results["ckpt/a0"], .some(.internalError))
        XCTAssertEqual(results["other1"], .some(nil))
        XCTAssertEqual(results["ckpt/b2"], .some(.internalError))
        XCTAssertEqual(results["ckpt/c3"], .some(nil), "only the first two calls under the prefix")
        XCTAssertEqual(results["exact4"], .some(nil))
        XCTAssertEqual(results["exact5"], .some(.accessDenied), "from the second call on")
        XCTAssertEqual(client.hits(ckpt), 2)
        XCTAssertEqual(client.hits(one), 1)
        // Every nth call, and a removed rule acts no more.
        let third = client.add(.operations("HeadObject"), .every(3), .fail(.noSuchKey))
        var heads: [S3Error.Code?] = []
        for _ in 0..<6 {
            heads.append(await code { () async throws(S3Error) in _ = try await client.headObject(bucket, "other", versionId: nil, ifMatch: nil) })
        }
        XCTAssertEqual(heads, [nil, nil, .noSuchKey, nil, nil, .noSuchKey])
        client.remove(third)
        let after = await code { () async throws(S3Error) in _ = try await client.headObject(bucket, "other", versionId: nil, ifMatch: nil) }
        XCTAssertNil(after)
    }

    func testAFailureAfterTheCallTakesEffectLosesOnlyTheReply() async throws {
        client.add(.operations("PutObject", "DeleteObject"), .all, .failAfter(.connectionReset))
        let putCode = await code { () async throws(S3Error) in try await put(client, "k", [9]) }
        XCTAssertEqual(putCode, .transport(.connectionReset))
        XCTAssertEqual(stored("k"), [9], "the object landed; only the reply was lost")
        let deleteCode = await code { () async throws(S3Error) in try await client.deleteObject(bucket, "k", versionId: nil) }
        XCTAssertEqual(deleteCode, .transport(.connectionReset))
        XCTAssertNil(stored("k"))
    }

    func testACutBodyDeliversTheFirstBytesThenFails() async throws {
        let data = pattern(10_000, seed: 3)
        memory.seed(bucket, "big", data)
        client.add(.operations("GetObject").key("big"), .nth(1), .cutBody(after: 4_000))
        let got = Mutex<[UInt8]>([])
        let sink: ObjectBodySink = { offset, bytes in
            got.withLock { g in
                XCTAssertEqual(Int(offset), g.count)
                g += bytes
            }
        }
        let first = await code { () async throws(S3Error) in
            _ = try await client.getObject(bucket, "big", range: nil, ifMatch: nil, versionId: nil, sink: sink)
        }
        XCTAssertEqual(first, .transport(.partialBody))
        XCTAssertEqual(got.withLock { $0 }, Array(data[0..<4_000]), "exactly the bytes before the cut")
        XCTAssertEqual(client.calls("GetObject").last?.outcome, .injected("cut body"))
        // The rule acted once: the next GET is whole.
        let (_, whole) = try await client.getObject(bucket, "big", range: nil, ifMatch: nil, versionId: nil)
        XCTAssertEqual(whole, data)
        // The in-memory form cannot deliver part of a body: it fails the same way.
        client.add(.operations("GetObject"), .all, .cutBody(after: 10))
        let inMemory = await code { () async throws(S3Error) in _ = try await client.getObject(bucket, "big", range: 0..<100, ifMatch: nil, versionId: nil) }
        XCTAssertEqual(inMemory, .transport(.partialBody))
    }

    func testADelayedCallWaitsThenGoesOn() async throws {
        client.add(.operations("HeadBucket"), .all, .delay(.milliseconds(150)))
        let start = ContinuousClock.now
        try await client.headBucket(bucket)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(150))
        XCTAssertEqual(client.log.map(\.outcome), [.succeeded])
    }

    func testHeldCallsWaitUntilReleasedOrFailed() async throws {
        let gate = client.hold(.uploads)
        let a = Task { [client, bucket] in try await putBytes(client!, bucket, "a", [1]) }
        let b = Task { [client, bucket] in try await putBytes(client!, bucket, "b", [2]) }
        // A directory marker is not an upload: it goes through.
        try await put(client, "dir/", [])
        await client.waitForHeld(gate, count: 2)
        XCTAssertNil(stored("a"))
        XCTAssertNil(stored("b"))
        XCTAssertEqual(stored("dir/"), [])
        XCTAssertEqual(Set(client.held(gate).compactMap(\.key)), ["a", "b"])
        XCTAssertEqual(client.calls("PutObject").filter { $0.outcome == .held }.count, 2)
        // One at a time, oldest first.
        let first = try XCTUnwrap(client.releaseOldest(gate))
        let firstKey = try XCTUnwrap(first.key)
        try await (firstKey == "a" ? a : b).value
        XCTAssertNotNil(stored(firstKey))
        XCTAssertEqual(client.held(gate).count, 1)
        // A held call can also be failed.
        client.failHeld(gate, with: .internalError)
        let other = firstKey == "a" ? b : a
        do {
            try await other.value
            XCTFail("the failed call must throw")
        } catch let e as S3Error { XCTAssertEqual(e.code, .internalError) }
        XCTAssertEqual(memory.count("PutObject"), 2, "the marker and the released call")
        // Released: the rule is gone and later calls go straight through.
        client.release(gate)
        try await put(client, "c", [3])
        XCTAssertEqual(stored("c"), [3])
    }

    func testACutStopsEveryCallAndCanLetHeldCallsLandFirst() async throws {
        let gate = client.hold(.uploads)
        let landing = Task { [client, bucket] in try await putBytes(client!, bucket, "landed", [1]) }
        await client.waitForHeld(gate)
        client.cut(landing: true)
        XCTAssertTrue(client.isCut)
        // The held call reached S3 (it took effect) and its caller never hears back: it is held by the cut.
        await client.waitForLanding()
        XCTAssertEqual(stored("landed"), [1])
        await client.waitForHeld(nil, count: 1)
        // After the cut nothing reaches S3, not even a call no rule matches.
        let late = Task { [client, bucket] in try await client!.headBucket(bucket) }
        let marker = Task { [client, bucket] in try await putBytes(client!, bucket, "d/", []) }
        let upload = Task { [client, bucket] in try await putBytes(client!, bucket, "never", [2]) }
        await client.waitForHeld(nil, count: 4)
        XCTAssertEqual(memory.count("HeadBucket"), 0)
        XCTAssertNil(stored("d/"))
        XCTAssertNil(stored("never"))
        client.failHeld()
        for t in [landing, marker, upload] {
            do {
                try await t.value
                XCTFail("a call of a cut client never succeeds")
            } catch let e as S3Error { XCTAssertEqual(e.code, .transport(.connectionReset)) }
        }
        do {
            try await late.value
            XCTFail("a call of a cut client never succeeds")
        } catch let e as S3Error { XCTAssertEqual(e.code, .transport(.connectionReset)) }
    }

    func testACallHeldAtTheCutNeverLandsEvenWhenReleased() async throws {
        let gate = client.hold(.uploads)
        let held = Task { [client, bucket] in try await putBytes(client!, bucket, "k", [1]) }
        await client.waitForHeld(gate)
        client.cut()
        client.release(gate)
        await client.waitForHeld(nil, count: 1)
        XCTAssertNil(stored("k"))
        XCTAssertEqual(memory.count("PutObject"), 0)
        client.failHeld()
        do {
            try await held.value
            XCTFail("a call of a cut client never succeeds")
        } catch let e as S3Error { XCTAssertEqual(e.code, .transport(.connectionReset)) }
    }

    func testAHeldReplyLandsFirstAndReturnsWhenReleased() async throws {
        let replies = client.add(.operations("PutObject"), .all, .holdReply)
        let put = Task { [client, bucket] in try await putBytes(client!, bucket, "k", [1]) }
        await client.waitForHeld(replies)
        XCTAssertEqual(stored("k"), [1], "the request took effect; only its reply waits")
        XCTAssertEqual(client.calls("PutObject").map(\.outcome), [.held])
        client.release(replies)
        try await put.value
        XCTAssertEqual(client.calls("PutObject").map(\.outcome), [.succeeded])
    }

    func testRulesAddedWhileACallIsHeldActOnItWhenReleased() async throws {
        let gate = client.hold(.uploads)
        let put = Task { [client, bucket] in try await putBytes(client!, bucket, "k", [1]) }
        await client.waitForHeld(gate)
        // A failure rule added now meets the held call when it goes on, as if it arrived then.
        let failure = client.failNth(1, of: "PutObject", with: .internalError)
        let held = try XCTUnwrap(client.releaseOldest(gate))
        await client.waitForReply(held.id)
        do {
            try await put.value
            XCTFail("the rule added while it was held fails it")
        } catch let e as S3Error { XCTAssertEqual(e.code, .internalError) }
        XCTAssertEqual(client.hits(failure), 1)
        XCTAssertNil(stored("k"))
    }

    func testAMatchCanTestOperationAndKeyTogether() async throws {
        // Hold uploads of objects and deletes of anything, not directory markers.
        let gate = client.hold(FaultInjectingClient.Match { op, key in
            (op == "PutObject" && !(key ?? "").hasSuffix("/")) || op == "DeleteObject"
        })
        try await put(client, "d/", [])
        let object = Task { [client, bucket] in try await putBytes(client!, bucket, "d/x", [1]) }
        let delete = Task { [client, bucket] in try await client!.deleteObject(bucket, "d/", versionId: nil) }
        await client.waitForHeld(gate, count: 2)
        XCTAssertEqual(Set(client.held(gate).map(\.operation)), ["PutObject", "DeleteObject"])
        XCTAssertEqual(stored("d/"), [])
        client.release(gate)
        try await object.value
        try await delete.value
        XCTAssertEqual(memory.objects(in: bucket), ["d/x": [1]])
    }

    func testWaitingForHeldCallsEndsWhenTheWaiterIsCancelled() async throws {
        let gate = client.hold(.uploads)
        let waiter = Task { [client] in await client!.waitForHeld(gate, count: 5) }
        waiter.cancel()
        await waiter.value  // returns although nothing is held
        XCTAssertTrue(client.held(gate).isEmpty)
    }

    /// The wrapper works the same over the real client: a failed PutObject never reaches the server, a cut body
    /// delivers exactly its first bytes.
    func testItWrapsTheRealS3Client() async throws {
        let server = try SeaweedFS.shared()
        let real = try server.client()
        let faults = FaultInjectingClient(wrapping: real)
        let prefix = "fault-client-\(UUID().uuidString.prefix(8))/"
        let data = pattern(3 << 20, seed: 5)
        faults.failNth(1, of: "PutObject", with: .slowDown)
        let b = SeaweedFS.bucket
        do {
            _ = try await faults.putObject(b, prefix + "x", body: .bytes(data), options: PutOptions())
            XCTFail("the first put fails")
        } catch { XCTAssertEqual(error.code, .slowDown) }
        do {
            _ = try await real.headObject(b, prefix + "x", versionId: nil, ifMatch: nil)
            XCTFail("the failed put never reached the server")
        } catch { XCTAssertEqual(error.code, .noSuchKey) }
        _ = try await faults.putObject(b, prefix + "x", body: .bytes(data), options: PutOptions())
        faults.add(.operations("GetObject"), .nth(1), .cutBody(after: 1_000_000))
        let got = Mutex<[UInt8]>([])
        let sink: ObjectBodySink = { offset, bytes in got.withLock { g in
            if g.count < Int(offset) + bytes.count { g += [UInt8](repeating: 0, count: Int(offset) + bytes.count - g.count) }
            g.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes)
        } }
        do {
            _ = try await faults.getObject(b, prefix + "x", range: nil, ifMatch: nil, versionId: nil, sink: sink)
            XCTFail("the body is cut")
        } catch { XCTAssertEqual(error.code, .transport(.partialBody)) }
        XCTAssertEqual(got.withLock { $0 }, Array(data[0..<1_000_000]))
        let (_, whole) = try await faults.getObject(b, prefix + "x", range: nil, ifMatch: nil, versionId: nil)
        XCTAssertEqual(whole, data)
        XCTAssertEqual(faults.log.map(\.operation), ["PutObject", "PutObject", "GetObject", "GetObject"])
    }
}

/// PutObject of `data` through any ObjectClient.
func putBytes(_ c: any ObjectClient, _ bucket: String, _ key: String, _ data: [UInt8]) async throws(S3Error) {
    _ = try await c.putObject(bucket, key, body: .bytes(data), options: PutOptions())
}
