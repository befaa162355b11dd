// The core column of docs/SEMANTICS.md: each statement checked against the filesystem core alone, through the
// model tests' CoreDriver (the kernel's side of each system call) over the in-memory S3 client, with no kernel.
// A test is named after its statement (S-RENAME-FILE-LOCAL → testSRenameFileLocal), in a class per section of
// the document; Tests/integration/test_semantics.py checks that every name in the column exists and that every
// test here is named by a row. A crash is the model tests' crash: the client is cut (nothing more reaches S3,
// no reply comes back), the core stops without draining, and a new core over the same cache directory recovers.
import CkptCache
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import XCTest

class SemanticsTestCase: XCTestCase {
    let bucket = "b"
    /// The cache directory (block cache, staging area, journal) every mount of a test shares.
    var dir: String!
    /// What S3 holds, seen from outside the mount.
    var s3: MemoryObjectClient!
    /// The mount's client (wrapping `s3`), to hold or fail its calls; a new one for each mount.
    var client: FaultInjectingClient!
    var mount: CoreDriver!
    /// Options of the mounts `mountAgain` makes: the model tests' (4 KiB blocks, 16 KiB parts, TTL 0, no upload
    /// delay), with the mount's defaults otherwise (not the model run's CKPTFS_MODEL_KEEP_EVERY_VERSION).
    var setup: CoreDriver.Setup = {
        var s = CoreDriver.Setup()
        s.keepEveryVersion = false
        return s
    }()
    private var clients: [FaultInjectingClient] = []
    private var mounts: [CoreDriver] = []

    var fs: FileSystem { mount.fs }

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "ckptfs-sem-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket])
        try mountAgain()
    }

    override func tearDown() {
        for c in clients { c.failHeld() }
        for m in mounts { m.stop() }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A new mount of the bucket over the same cache directory (the one before must be stopped), with `setup`.
    func mountAgain() throws {
        client = FaultInjectingClient(wrapping: s3)
        clients.append(client)
        mount = try CoreDriver(directory: dir, client: client, bucket: bucket, setup: setup)
        mounts.append(mount)
    }

    /// kill -9 of the daemon, then the next mount with the same cache directory. `landing`: the calls held at
    /// the moment of the crash reach S3 (their replies are lost). Returns the paths recovery queued again.
    /// `hold`: the new mount's uploads are held (rule `heldAfterCrash`) from before its recovery.
    @discardableResult
    func crashAndRecover(landing: Bool = false, hold: Bool = false, before: () -> Void = {}) async throws -> [String] {
        client.cut(landing: landing)
        if landing { await client.waitForLanding() }
        stop()
        before()
        try mountAgain()
        if hold { heldAfterCrash = holdUploads() }
        return try await mount.recover()
    }

    var heldAfterCrash: FaultInjectingClient.RuleID?

    /// Stops the mount (nothing is drained) and mounts again with `setup` changed by `change`.
    func remount(_ change: (inout CoreDriver.Setup) -> Void) throws {
        change(&setup)
        stop()
        try mountAgain()
    }

    /// Stops the mount without draining (after `client.cut()`: a crash).
    func stop() {
        mount.stop()
        mounts.removeAll { $0 === mount }
    }

    /// Holds every upload of this mount's client (PutObject of files, multipart calls) until released.
    @discardableResult
    func holdUploads(_ match: FaultInjectingClient.Match = .uploads) -> FaultInjectingClient.RuleID { client.hold(match) }

    /// Skips the rest of a test that found the core disagreeing with its statement (the reason names what
    /// happens instead); CKPTFS_SEMANTICS_UNSKIP=1 in the environment runs it anyway, to see it fail.
    func skipKnownBug(_ reason: String) throws {
        try XCTSkipIf(ProcessInfo.processInfo.environment["CKPTFS_SEMANTICS_UNSKIP"] == nil, reason)
    }

    /// S3's objects now: key → bytes.
    var stored: [String: [UInt8]] { s3.objects(in: bucket) }
    var keys: [String] { stored.keys.sorted() }

    func bytes(_ n: Int, _ seed: Int = 1) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &+ ($0 >> 9)) } }

    static let write = CoreDriver.OpenMode(write: true)
    static let create = CoreDriver.OpenMode(write: true, create: true, truncate: true)
    static let truncate = CoreDriver.OpenMode(write: true, truncate: true)
    static let read = CoreDriver.OpenMode()

    func open(_ path: String, _ mode: CoreDriver.OpenMode) async throws -> DriverHandle {
        try await mount.open(path, mode).get()
    }

    func write(_ h: DriverHandle, _ data: [UInt8], at offset: Int64 = 0) async throws {
        try await mount.write(h, at: offset, data).get()
    }

    /// open(O_CREAT|O_TRUNC), write `data`, close: a save.
    func save(_ path: String, _ data: [UInt8]) async throws {
        let h = try await open(path, Self.create)
        try await write(h, data)
        try await mount.close(h).get()
    }

    func read(_ path: String) async throws -> [UInt8] { try await mount.readFile(path).get() }
    func read(_ h: DriverHandle) async throws -> [UInt8] { try await mount.readToEnd(h).get() }

    /// The errno of a result (0: it succeeded).
    func errno<T>(_ r: Result<T, DriverError>) -> Int32 {
        if case .failure(let e) = r { return e.errno }
        return 0
    }

    /// The errno a core call throws (0: none).
    func errno(_ body: () async throws(FSError) -> Void) async -> Int32 {
        do throws(FSError) {
            try await body()
            return 0
        } catch { return error.errno }
    }

    /// `ckptfs flush`: fails the test unless everything acknowledged is in S3 within `timeout`.
    func flushAll(timeout: Duration = .seconds(30), file: StaticString = #filePath, line: UInt = #line) async {
        let left = await mount.flushAll(timeout: timeout)
        XCTAssertEqual(left.map(\.path), [], "not durable: \(left)", file: file, line: line)
    }

    /// Waits until `cond` holds (fails the test after `timeout`).
    func waitFor(_ what: String, timeout: Duration = .seconds(10), file: StaticString = #filePath, line: UInt = #line,
                 _ cond: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !cond() {
            if ContinuousClock.now > deadline { return XCTFail("timed out waiting for \(what)", file: file, line: line) }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The inode of `path`; the lookup references are kept, as the kernel's dentries keep them.
    func ino(_ path: String) async throws -> UInt64 {
        var parent = FileSystem.rootIno
        var a: Attributes?
        for part in path.split(separator: "/") {
            let found = try await fs.lookup(parent: parent, name: String(part))
            parent = found.ino
            a = found
        }
        return a?.ino ?? FileSystem.rootIno
    }

    func attributes(_ path: String) async throws -> Attributes { try await fs.getattr(ino: try await ino(path)) }

    func objectInfo(_ key: String) async throws -> ObjectInfo {
        try await s3.headObject(bucket, key, versionId: nil, ifMatch: nil)
    }
}

/// A flag set by one task and read by another.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var raised = false
    func raise() { lock.withLock { raised = true } }
    var isRaised: Bool { lock.withLock { raised } }
}
