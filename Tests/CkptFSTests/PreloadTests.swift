import CkptCache
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import Synchronization
import XCTest

/// Preload (Read/Preload.swift) against the in-memory object client: shares, listings, what a preload fetches and
/// stores, the cache bound, resuming, giving way to readers, cancelling.
final class PreloadTests: XCTestCase {
    var dir: String!
    var s3: MemoryObjectClient!
    var gated: GatedClient!
    let bucket = "b"

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-preload-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket], pageSize: 100)
        gated = GatedClient(base: s3)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func options(requestSize: Int64 = 2 << 20) -> FSOptions {
        var o = FSOptions()
        o.requestSize = requestSize
        return o
    }

    func makeFS(cacheDir: String = "cache", capacity: Int64 = 1 << 30, prefix: String = "") throws -> FileSystem {
        try FileSystem(client: gated, bucket: bucket, prefix: prefix,
                       cache: BlockCache(directory: dir + "/" + cacheDir, capacity: capacity), options: options())
    }

    /// `n` bytes that differ with `seed` and along the data (a 4 KiB pattern whose first bytes count the pages).
    func data(_ n: Int, _ seed: UInt8) -> [UInt8] {
        let page = (0..<4096).map { UInt8(truncatingIfNeeded: ($0 &* 131) >> 3) &+ seed }
        var out = [UInt8]()
        out.reserveCapacity(n + 4096)
        var i = 0
        while out.count < n {
            out += page
            out[out.count - 4096] = UInt8(truncatingIfNeeded: i)
            out[out.count - 4095] = UInt8(truncatingIfNeeded: i >> 8)
            i += 1
        }
        out.removeLast(out.count - n)
        return out
    }

    func object(_ key: String, size: Int64 = 1) -> PreloadObject { PreloadObject(key: key, path: key, etag: "\"e\"", size: size) }

    static func readAll(_ fs: FileSystem, _ path: String) async throws -> [UInt8] {
        var ino = FileSystem.rootIno
        for name in path.split(separator: "/") { ino = try await fs.lookup(parent: ino, name: String(name)).ino }
        let h = try await fs.open(ino: ino, flags: O_RDONLY).handle
        defer { fs.release(handle: h) }
        var out: [UInt8] = []
        while true {
            let segs = try await fs.read(handle: h, offset: Int64(out.count), size: 256 << 10)
            if segs.isEmpty { break }
            for s in segs {
                switch s {
                case .memory(let buf, let off, let n): out += Array(buf.bytes[off..<off + n])
                case .file(let fd, let off, let n):
                    var b = [UInt8](repeating: 0, count: n)
                    _ = pread(fd.rawValue, &b, n, off_t(off))
                    out += b
                }
            }
        }
        return out
    }

    // MARK: Shares

    func testShareByCountTakesEveryNthKeyInS3Order() {
        // S3's order is bytes of UTF-8: "B" < "a" < "b" < "ä".
        let objects = ["b", "ä", "a", "B", "c", "d", "e"].map { object($0) }
        XCTAssertEqual(PreloadShare(rank: 0, worldSize: 3).select(objects).map(\.key), ["B", "c", "ä"])
        XCTAssertEqual(PreloadShare(rank: 1, worldSize: 3).select(objects).map(\.key), ["a", "d"])
        XCTAssertEqual(PreloadShare(rank: 2, worldSize: 3).select(objects).map(\.key), ["b", "e"])
        XCTAssertEqual(PreloadShare.all.select(objects).map(\.key), ["B", "a", "b", "c", "d", "e", "ä"])
    }

    func testShareBySizeBalancesBytesAndTheRanksPartitionTheListing() {
        var rng = SystemRandomNumberGenerator()
        let objects = (0..<500).map { i in object(String(format: "k%04d", i), size: Int64.random(in: 0...(1 << 20), using: &rng)) }
        let total = objects.reduce(0) { $0 + $1.size }
        var seen = Set<String>()
        for rank in 0..<4 {
            let mine = PreloadShare(rank: rank, worldSize: 4, strategy: .size).select(objects)
            XCTAssertEqual(mine.map(\.key), mine.map(\.key).sorted(), "in key order")
            let bytes = mine.reduce(0) { $0 + $1.size }
            XCTAssertLessThan(abs(bytes - total / 4), 1 << 20, "within one object of a quarter")
            for o in mine { XCTAssertTrue(seen.insert(o.key).inserted, "\(o.key) in two shares") }
        }
        XCTAssertEqual(seen.count, objects.count, "the shares cover the listing")
        // The same listing in another order gives the same shares.
        XCTAssertEqual(PreloadShare(rank: 1, worldSize: 4, strategy: .size).select(objects.reversed()),
                       PreloadShare(rank: 1, worldSize: 4, strategy: .size).select(objects))
    }

    // MARK: Listing

    func testListingClassifiesPathsAndLeavesOutWhatTheMountDoesNotShow() async throws {
        s3.seed(bucket, "data/a.bin", data(10, 1))
        s3.seed(bucket, "data/sub/b.bin", data(20, 2))
        s3.seed(bucket, "data/marker/", [])
        s3.seed(bucket, "data/both", [1])
        s3.seed(bucket, "data/both/inside", [2])
        s3.seed(bucket, "data/bad//name", [1])
        s3.seed(bucket, "other/c", [3])
        for i in 0..<10 { s3.seed(bucket, "many/f\(i)", [UInt8(i)]) }
        let fs = try makeFS()
        let p = fs.preloader
        let all = try await p.list([""])
        XCTAssertEqual(all.objects.map(\.path), ["data/a.bin", "data/both/inside", "data/sub/b.bin"] + (0..<10).map { "many/f\($0)" } + ["other/c"])
        let some = try await p.list(["/data/sub/", "other/c", "nothing/here"])
        XCTAssertEqual(some.objects.map(\.path), ["data/sub/b.bin", "other/c"])
        XCTAssertEqual(some.missing, ["nothing/here"])
        XCTAssertEqual(some.objects.last?.size, 1)
        // Many paths in one directory: classified from one listing of it.
        let lists = s3.count("ListObjectsV2")
        let many = try await p.list((0..<10).map { "many/f\($0)" } + ["many/none"])
        XCTAssertEqual(many.objects.count, 10)
        XCTAssertEqual(many.missing, ["many/none"])
        XCTAssertEqual(s3.count("ListObjectsV2") - lists, 1)
        // A file with local changes on the mount is not preloaded: the mount reads it locally.
        let (attr, h) = try fs.create(parent: FileSystem.rootIno, name: "local.bin", flags: O_WRONLY)
        _ = attr
        try await fs.flush(handle: h)
        fs.release(handle: h)
        s3.seed(bucket, "local.bin", [9])
        let withLocal = try await p.list(["local.bin", "other/c"])
        XCTAssertEqual(withLocal.objects.map(\.path), ["other/c"])
        // A mount of a prefix lists under it, paths relative to it.
        fs.shutdown()
        let sub = try makeFS(cacheDir: "sub", prefix: "data")
        let subList = try await sub.preloader.list([""])
        XCTAssertEqual(subList.objects.map(\.path), ["a.bin", "both/inside", "sub/b.bin"])
    }

    // MARK: Fetching

    func testPreloadedFilesReadThroughTheMountWithoutAGet() async throws {
        var expected: [String: [UInt8]] = [:]
        expected["set/empty"] = []
        expected["set/large.bin"] = data(5 << 20 + 123, 7)  // 6 blocks, 3 requests of 2 MiB
        for i in 0..<40 { expected["set/small-\(i)"] = data(1000 + i * 300, UInt8(i)) }
        for (k, v) in expected { s3.seed(bucket, k, v) }
        let fs = try makeFS()
        let listed = try await fs.preloader.list(["set"])
        XCTAssertEqual(listed.objects.count, 42)
        let run = fs.preloader.prepare(listed.objects, share: .all, parallel: 8)
        XCTAssertFalse(run.plan.overBound)
        let done = await run.run()
        XCTAssertEqual(done.state, .done)
        XCTAssertEqual(done.filesDone, 42)
        XCTAssertEqual(done.bytesDone, expected.values.reduce(0) { $0 + Int64($1.count) })
        XCTAssertEqual(done.bytesFetched, done.bytesDone)
        XCTAssertEqual(done.requests, 40 + 3, "one GET per small file, the large one in 3 parts; none for the empty one")
        XCTAssertEqual(s3.count("GetObject"), 43)
        let check = fs.preloader.check(listed.objects, perFile: true)
        XCTAssertEqual(check.filesCached, 42)
        XCTAssertEqual(check.bytesCached, check.bytes)
        let gets = s3.count("GetObject")
        for (k, v) in expected {
            let got = try await Self.readAll(fs, k)
            XCTAssertEqual(got, v, k)
        }
        XCTAssertEqual(s3.count("GetObject"), gets, "every block came from the cache")
        // Evict drops exactly those blocks; a read then fetches again.
        let evicted = fs.preloader.evict(listed.objects.filter { $0.path == "set/large.bin" })
        XCTAssertEqual(evicted.files, 1)
        XCTAssertEqual(evicted.blocks, 6)
        XCTAssertEqual(fs.preloader.check(listed.objects, perFile: false).filesCached, 41)
    }

    func testARerunFetchesOnlyWhatIsMissingAndADamagedBlockAgain() async throws {
        for i in 0..<10 { s3.seed(bucket, "d/f\(i)", data(3 << 20, UInt8(i))) }  // 3 blocks each, 2 requests
        var fs: FileSystem? = try makeFS()
        let objects = try await fs!.preloader.list(["d"]).objects
        _ = await fs!.preloader.prepare(objects, share: .all, parallel: 4).run()
        XCTAssertEqual(s3.count("GetObject"), 20)
        // Drop two blocks, damage one; a new process (a fresh cache object) preloads again.
        _ = fs!.preloader.evict([objects[3]])
        fs!.shutdown()
        fs = nil
        let blocks = dir + "/cache/blocks"
        var damaged = false
        for sub in try FileManager.default.contentsOfDirectory(atPath: blocks) where !damaged {
            for name in try FileManager.default.contentsOfDirectory(atPath: "\(blocks)/\(sub)") where !damaged {
                let h = try FileHandle(forUpdating: URL(fileURLWithPath: "\(blocks)/\(sub)/\(name)"))
                try h.seek(toOffset: 4096 + 100)
                try h.write(contentsOf: [0xFF, 0x00, 0xFF])
                try h.close()
                damaged = true
            }
        }
        let cache = try BlockCache(directory: dir + "/cache", capacity: 1 << 30)
        let standalone = Preloader(client: s3, bucket: bucket, root: "", cache: cache, options: options())
        let gets = s3.count("GetObject"), bytes = s3.bytesSent
        let again = await standalone.prepare(objects, share: .all, parallel: 4).run()
        XCTAssertEqual(again.state, .done)
        XCTAssertEqual(s3.count("GetObject") - gets, 3, "2 GETs for the evicted file, 1 for the damaged block")
        XCTAssertEqual(s3.bytesSent - bytes, (3 << 20) + (1 << 20))
        XCTAssertEqual(again.bytesAlreadyCached, 30 << 20 - (4 << 20))
        XCTAssertEqual(cache.stats.corruptBlocks, 1)
        XCTAssertEqual(standalone.check(objects, perFile: false).filesCached, 10)
    }

    func testAShareLargerThanTheCacheStopsAtTheBound() async throws {
        for i in 0..<10 { s3.seed(bucket, "d/f\(i)", data(2 << 20, UInt8(i))) }
        // 10 MiB: a bound of 9 MiB holds 4 files of 2 MiB and their headers.
        let fs = try makeFS(capacity: 10 << 20)
        let objects = try await fs.preloader.list(["d"]).objects
        let run = fs.preloader.prepare(objects, share: .all, parallel: 4)
        XCTAssertTrue(run.plan.overBound)
        XCTAssertEqual(run.plan.files, 4)
        XCTAssertEqual(run.plan.shareFiles, 10)
        let done = await run.run()
        XCTAssertEqual(done.state, .stoppedAtBound)
        XCTAssertEqual(s3.count("GetObject"), 4, "no file beyond the bound is fetched")
        XCTAssertEqual(fs.cache.stats.evictions, 0, "nothing the preload stored was evicted")
        XCTAssertEqual(fs.preloader.check(Array(objects.prefix(4)), perFile: false).filesCached, 4)
    }

    func testAChangedObjectFailsAloneAndTheOthersAreCached() async throws {
        for i in 0..<5 { s3.seed(bucket, "d/f\(i)", data(1000, UInt8(i))) }
        let fs = try makeFS()
        let objects = try await fs.preloader.list(["d"]).objects
        s3.seed(bucket, "d/f2", data(1000, 99))  // a new version after the listing
        let done = await fs.preloader.prepare(objects, share: .all, parallel: 2).run()
        XCTAssertEqual(done.state, .failed)
        XCTAssertEqual(done.filesDone, 4)
        XCTAssertEqual(done.filesFailed, 1)
        XCTAssertEqual(done.failures.first?.path, "d/f2")
    }

    // MARK: Access profiles

    func testARecordedProfileReplaysExactlyItsBlocksInOrderWithinABudget() async throws {
        for name in ["a", "b", "c"] { s3.seed(bucket, "p/\(name)", data(3 << 20, UInt8(name.utf8.first!))) }
        var o = options()
        o.recordAccess = dir + "/profile.jsonl"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let recording = try FileSystem(client: gated, bucket: bucket, prefix: "", cache: BlockCache(directory: dir + "/rec", capacity: 1 << 30),
                                       options: o)
        var inos: [String: UInt64] = [:]
        let p = try await recording.lookup(parent: FileSystem.rootIno, name: "p").ino
        for name in ["a", "b", "c"] { inos[name] = try await recording.lookup(parent: p, name: name).ino }
        // Reads in this order: a's block 2, b's block 0, a's block 0, a's block 2 again, c's block 1 (a read that
        // spans blocks 1 and 2 of c records both).
        for (name, offset, size) in [("a", (2 << 20) + 5, 4096), ("b", 0, 100), ("a", 10, 10), ("a", (2 << 20) + 9, 1),
                                     ("c", (2 << 20) - 10, 20)] {
            let h = try await recording.open(ino: inos[name]!, flags: O_RDONLY).handle
            _ = try await recording.read(handle: h, offset: Int64(offset), size: size)
            recording.release(handle: h)
        }
        await recording.finishCacheWrites()
        let profile = try AccessProfile.read(dir + "/profile.jsonl")
        XCTAssertEqual(profile.bucket, bucket)
        XCTAssertEqual(profile.entries.map { "\($0.key):\($0.block)" }, ["p/a:2", "p/b:0", "p/a:0", "p/c:1", "p/c:2"])
        recording.shutdown()

        // Replayed into an empty cache: exactly those blocks, of the version S3 has now (b was replaced).
        let newB = data(3 << 20, 77)
        s3.seed(bucket, "p/b", newB)
        let fs = try makeFS(cacheDir: "replay")
        let run = try await fs.preloader.replay(profile, budget: nil, parallel: 4)
        XCTAssertEqual(run.plan.files, 3)
        XCTAssertEqual(run.plan.bytes, 5 << 20)
        let gets = s3.count("GetObject")
        let done = await run.run()
        XCTAssertEqual(done.state, .done)
        XCTAssertEqual(done.bytesFetched, 5 << 20)
        XCTAssertEqual(s3.count("GetObject") - gets, 4, "c's blocks 1 and 2 in one GET")
        XCTAssertEqual(fs.cache.stats.blocks, 5)
        let listed = try await fs.preloader.list(["p"]).objects
        let perFile = fs.preloader.check(listed, perFile: true).perFile!.map(\.bytesCached)
        XCTAssertEqual(perFile, [2 << 20, 1 << 20, 2 << 20])
        let b = try await Self.readAll(fs, "p/b")
        XCTAssertEqual(Array(b.prefix(1 << 20)), Array(newB.prefix(1 << 20)))

        // A budget of two blocks: the first two recorded, and the replay says it stopped there.
        let small = try makeFS(cacheDir: "budget")
        let limited = try await small.preloader.replay(profile, budget: 2 * BlockCache.storedSize(1 << 20), parallel: 4)
        XCTAssertTrue(limited.plan.overBound)
        let stopped = await limited.run()
        XCTAssertEqual(stopped.state, .stoppedAtBound)
        XCTAssertEqual(small.cache.stats.blocks, 2)
        let smallCheck = small.preloader.check(listed, perFile: true).perFile!.map(\.bytesCached)
        XCTAssertEqual(smallCheck, [1 << 20, 1 << 20, 0])
        // A profile of another bucket is refused.
        var other = profile
        other.bucket = "elsewhere"
        do {
            _ = try await small.preloader.replay(other, budget: nil, parallel: 1)
            XCTFail()
        } catch { XCTAssertTrue(error.message.contains("bucket elsewhere")) }
    }

    // MARK: Readers first, cancelling

    func testAReaderFetchInFlightHoldsThePreloadBack() async throws {
        s3.seed(bucket, "t", data(1000, 1))
        for i in 0..<64 { s3.seed(bucket, "p/f\(i)", data(1000, UInt8(i))) }
        gated.delay = .milliseconds(20)
        let fs = try makeFS()
        let objects = try await fs.preloader.list(["p"]).objects
        // Alone, the preload has up to `parallel` GETs in flight.
        _ = await fs.preloader.prepare(Array(objects.prefix(32)), share: .all, parallel: 16).run()
        XCTAssertGreaterThan(gated.maxInFlight(prefix: "p/"), 8)
        // A reader's GET held in flight: the preload keeps to an eighth of `parallel`.
        gated.resetMax()
        gated.hold("t")
        let reader = Task { [fs] in try await PreloadTests.readAll(fs, "t") }
        try await gated.waitHeld(1)
        let done = await fs.preloader.prepare(Array(objects.suffix(32)), share: .all, parallel: 16).run()
        XCTAssertEqual(done.state, .done)
        XCTAssertLessThanOrEqual(gated.maxInFlight(prefix: "p/"), 2)
        gated.release()
        let t = try await reader.value
        XCTAssertEqual(t, data(1000, 1))
    }

    func testCancellingStopsTheGetsAndLeavesOnlyWholeBlocks() async throws {
        for i in 0..<20 { s3.seed(bucket, "d/f\(i)", data(3 << 20, UInt8(i))) }
        let fs = try makeFS()
        let objects = try await fs.preloader.list(["d"]).objects
        gated.stallAfterFirstBlock = true  // every GET sends one block, then stalls until cancelled
        let run = fs.preloader.prepare(objects, share: .all, parallel: 4)
        let task = Task { await run.run() }
        try await gated.waitHeld(4)
        task.cancel()
        let stopped = await task.value
        XCTAssertEqual(stopped.state, .cancelled)
        XCTAssertEqual(stopped.filesDone, 0)
        // The first block of each GET in flight arrived whole and is cached; nothing else is, and no temporary file
        // is left.
        let cached = fs.preloader.check(objects, perFile: false)
        XCTAssertEqual(cached.bytesCached, 4 << 20)
        let files = try FileManager.default.subpathsOfDirectory(atPath: dir + "/cache/blocks")
        XCTAssertFalse(files.contains { $0.hasSuffix(".tmp") })
        // A rerun fetches the rest.
        gated.stallAfterFirstBlock = false
        let gets = s3.count("GetObject")
        let rest = await fs.preloader.prepare(objects, share: .all, parallel: 4).run()
        XCTAssertEqual(rest.state, .done)
        XCTAssertEqual(rest.bytesAlreadyCached, 4 << 20)
        XCTAssertEqual(rest.bytesFetched, (60 << 20) - (4 << 20))
        XCTAssertEqual(s3.count("GetObject") - gets, 18 * 2 + 2, "the 2 files started need their middle block only")
    }
}

/// An object client over `MemoryObjectClient` that can hold GETs: a GET of a key given to `hold` waits until
/// `release`; with `delay` every other GET takes that long; with `stallAfterFirstBlock` a GET delivers its first
/// 1 MiB and then waits until its task is cancelled. Counts GETs in flight by key prefix.
final class GatedClient: ObjectClient, @unchecked Sendable {
    let base: MemoryObjectClient
    private let state = Mutex<(inFlight: [String: Int], max: [String: Int], held: Int, heldKey: String?,
                               gate: [CheckedContinuation<Void, Never>], open: Bool)>(([:], [:], 0, nil, [], false))
    private let settings = Mutex<(delay: Duration?, stall: Bool)>((nil, false))

    init(base: MemoryObjectClient) { self.base = base }

    var delay: Duration? {
        get { settings.withLock { $0.delay } }
        set { settings.withLock { $0.delay = newValue } }
    }

    var stallAfterFirstBlock: Bool {
        get { settings.withLock { $0.stall } }
        set { settings.withLock { $0.stall = newValue } }
    }

    func hold(_ key: String) { state.withLock { $0.heldKey = key; $0.open = false } }

    func release() {
        let gate = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.open = true
            defer { s.gate = [] }
            return s.gate
        }
        for c in gate { c.resume() }
    }

    func maxInFlight(prefix: String) -> Int { state.withLock { $0.max[prefix] ?? 0 } }
    func resetMax() { state.withLock { $0.max = [:] } }

    /// Waits (up to 10 s) until at least `n` GETs are held or stalled.
    func waitHeld(_ n: Int) async throws {
        for _ in 0..<1000 {
            if state.withLock({ $0.held }) >= n { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        XCTFail("fewer than \(n) GETs held")
    }

    private func prefix(_ key: String) -> String { key.firstIndex(of: "/").map { String(key[...$0]) } ?? key }

    func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?,
                   sink: @escaping ObjectBodySink) async throws(S3Error) -> ObjectInfo {
        let p = prefix(key)
        state.withLock { s in
            s.inFlight[p, default: 0] += 1
            s.max[p] = max(s.max[p] ?? 0, s.inFlight[p]!)
        }
        defer { state.withLock { $0.inFlight[p]! -= 1 } }
        let (delay, stall) = settings.withLock { ($0.delay, $0.stall) }
        if state.withLock({ $0.heldKey == key && !$0.open }) {
            await withCheckedContinuation { c in
                let go = state.withLock { s -> Bool in
                    if s.open { return true }
                    s.held += 1
                    s.gate.append(c)
                    return false
                }
                if go { c.resume() }
            }
        } else if let delay {
            try? await Task.sleep(for: delay)
        }
        if stall {
            let (info, bytes) = try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
            let first = min(bytes.count, 1 << 20)
            do { try bytes.withUnsafeBytes { try sink(0, UnsafeRawBufferPointer(rebasing: $0[0..<first])) } } catch {
                throw S3Error(code: .transport(.sinkFailed), s3Code: "Transport", message: "\(error)", operation: "GetObject", bucket: bucket, key: key)
            }
            state.withLock { $0.held += 1 }
            try? await Task.sleep(for: .seconds(3600))
            _ = info
            throw S3Error(code: .transport(.cancelled), s3Code: "Transport", message: "request cancelled", operation: "GetObject", bucket: bucket, key: key)
        }
        return try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId, sink: sink)
    }

    func getObject(_ bucket: String, _ key: String, range: Range<Int64>?, ifMatch: String?, versionId: String?) async throws(S3Error) -> (ObjectInfo, [UInt8]) {
        try await base.getObject(bucket, key, range: range, ifMatch: ifMatch, versionId: versionId)
    }
    func headBucket(_ bucket: String) async throws(S3Error) { try await base.headBucket(bucket) }
    func headObject(_ bucket: String, _ key: String, versionId: String?, ifMatch: String?) async throws(S3Error) -> ObjectInfo {
        try await base.headObject(bucket, key, versionId: versionId, ifMatch: ifMatch)
    }
    func putObject(_ bucket: String, _ key: String, body: ObjectBody, options: PutOptions) async throws(S3Error) -> CkptS3.WriteResult {
        try await base.putObject(bucket, key, body: body, options: options)
    }
    func createMultipartUpload(_ bucket: String, _ key: String, options: PutOptions) async throws(S3Error) -> String {
        try await base.createMultipartUpload(bucket, key, options: options)
    }
    func uploadPart(_ bucket: String, _ key: String, uploadId: String, partNumber: Int, body: ObjectBody, checksum: BodyChecksum?) async throws(S3Error) -> String {
        try await base.uploadPart(bucket, key, uploadId: uploadId, partNumber: partNumber, body: body, checksum: checksum)
    }
    func completeMultipartUpload(_ bucket: String, _ key: String, uploadId: String, parts: [CompletedPart], condition: WriteCondition?) async throws(S3Error) -> CkptS3.WriteResult {
        try await base.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts, condition: condition)
    }
    func abortMultipartUpload(_ bucket: String, _ key: String, uploadId: String) async throws(S3Error) {
        try await base.abortMultipartUpload(bucket, key, uploadId: uploadId)
    }
    func listParts(_ bucket: String, _ key: String, uploadId: String, partNumberMarker: Int?) async throws(S3Error) -> ListPartsPage {
        try await base.listParts(bucket, key, uploadId: uploadId, partNumberMarker: partNumberMarker)
    }
    func listMultipartUploads(_ bucket: String, prefix: String?, keyMarker: String?, uploadIdMarker: String?) async throws(S3Error) -> ListMultipartUploadsPage {
        try await base.listMultipartUploads(bucket, prefix: prefix, keyMarker: keyMarker, uploadIdMarker: uploadIdMarker)
    }
    func copyObject(from source: (bucket: String, key: String, versionId: String?), to bucket: String, _ key: String, ifMatch: String?, condition: WriteCondition?, options: PutOptions?) async throws(S3Error) -> CkptS3.WriteResult {
        try await base.copyObject(from: source, to: bucket, key, ifMatch: ifMatch, condition: condition, options: options)
    }
    func uploadPartCopy(from source: (bucket: String, key: String, versionId: String?), range: Range<Int64>?, to bucket: String, _ key: String, uploadId: String, partNumber: Int, ifMatch: String?) async throws(S3Error) -> String {
        try await base.uploadPartCopy(from: source, range: range, to: bucket, key, uploadId: uploadId, partNumber: partNumber, ifMatch: ifMatch)
    }
    func deleteObject(_ bucket: String, _ key: String, versionId: String?) async throws(S3Error) { try await base.deleteObject(bucket, key, versionId: versionId) }
    func deleteObjects(_ bucket: String, _ objects: [ObjectToDelete]) async throws(S3Error) -> DeleteObjectsResult { try await base.deleteObjects(bucket, objects) }
    func listObjectsV2(_ bucket: String, prefix: String?, delimiter: String?, continuationToken: String?, startAfter: String?, maxKeys: Int?) async throws(S3Error) -> ListObjectsPage {
        try await base.listObjectsV2(bucket, prefix: prefix, delimiter: delimiter, continuationToken: continuationToken, startAfter: startAfter, maxKeys: maxKeys)
    }
    func listObjectVersions(_ bucket: String, prefix: String?, delimiter: String?, keyMarker: String?, versionIdMarker: String?, maxKeys: Int?) async throws(S3Error) -> ListVersionsPage {
        try await base.listObjectVersions(bucket, prefix: prefix, delimiter: delimiter, keyMarker: keyMarker, versionIdMarker: versionIdMarker, maxKeys: maxKeys)
    }
}
