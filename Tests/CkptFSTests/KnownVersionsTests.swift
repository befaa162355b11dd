import CkptCache
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import XCTest

/// What GETs and HEADs tell of a version's stored mtime (KnownVersions): a file a listing shows in a version
/// read before needs no HEAD for its mtime, a different version does, and the memo stays within its bound.
final class KnownVersionsTests: XCTestCase {
    var dir: String!
    var s3: MemoryObjectClient!
    let bucket = "b"

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-versions-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket])
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func make(ttl: Duration) throws -> FileSystem {
        var o = FSOptions()
        o.metadataTTL = ttl
        return try FileSystem(client: s3, bucket: bucket, prefix: "",
                              cache: BlockCache(directory: dir + "/\(UUID().uuidString)", capacity: 1 << 30), options: o)
    }

    func put(_ key: String, _ data: [UInt8], mtime: Double) {
        _ = s3.seed(bucket, key, data, metadata: ["mtime": String(mtime)])
    }

    func testAPreloadedVersionIsLookedUpFromAListingWithItsStoredMtimeAndNoHead() async throws {
        for i in 0..<10 { put("d/f\(i)", [UInt8(i), 1, 2], mtime: 1_000_000 + Double(i)) }
        put("d/other", [9], mtime: 2_000_000)
        let fs = try make(ttl: .seconds(30))
        let objects = try await fs.preloader.list(["d"]).objects.filter { $0.key.hasPrefix("d/f") }
        XCTAssertEqual(objects.count, 10)
        let done = await fs.preloader.prepare(objects, share: .all, parallel: 4).run()
        XCTAssertEqual(done.filesDone, 10)
        let d = try await fs.lookup(parent: FileSystem.rootIno, name: "d").ino
        let heads = s3.count("HeadObject")
        // Lookups that keep missing list the directory; each preloaded file then needs no HEAD for its mtime.
        for i in 0..<10 {
            let a = try await fs.lookup(parent: d, name: "f\(i)")
            XCTAssertEqual(a.mtime.timeIntervalSince1970, 1_000_000 + Double(i), accuracy: 0.001)
        }
        XCTAssertLessThanOrEqual(s3.count("HeadObject") - heads, 1, "at most the first lookup's own probe")
        // A file no GET or HEAD answered for is asked for its mtime: one request (a small file: a GET of all
        // of it, ListedOpenTests).
        let before = s3.count("HeadObject") + s3.count("GetObject")
        let o = try await fs.lookup(parent: d, name: "other")
        XCTAssertEqual(o.mtime.timeIntervalSince1970, 2_000_000, accuracy: 0.001)
        XCTAssertEqual(s3.count("HeadObject") + s3.count("GetObject") - before, 1)
    }

    func testAnotherVersionOfAKeyIsNotTakenForTheOneRead() {
        let v = KnownVersions(limit: 10)
        let t = Date(timeIntervalSince1970: 1_700_000_000)
        v.note("k", ObjectInfo(size: 3, etag: "\"a\"", lastModified: t, metadata: ["mtime": "5"]))
        XCTAssertEqual(v.storedMtime("k", etag: "\"a\"", size: 3, lastModified: t.addingTimeInterval(0.4)),
                       Date(timeIntervalSince1970: 5), "a listing's Last-Modified has milliseconds, HTTP's whole seconds")
        XCTAssertNil(v.storedMtime("k", etag: "\"b\"", size: 3, lastModified: t))
        XCTAssertNil(v.storedMtime("k", etag: "\"a\"", size: 4, lastModified: t))
        XCTAssertNil(v.storedMtime("k", etag: "\"a\"", size: 3, lastModified: t.addingTimeInterval(60)), "rewritten in place")
        XCTAssertNil(v.storedMtime("j", etag: "\"a\"", size: 3, lastModified: t))
        // No stored mtime: Last-Modified is the mtime.
        v.note("n", ObjectInfo(size: 1, etag: "\"c\"", lastModified: t))
        XCTAssertEqual(v.storedMtime("n", etag: "\"c\"", size: 1, lastModified: t), t)
    }

    func testTheMemoKeepsToItsBoundDroppingTheOldestHalf() {
        let v = KnownVersions(limit: 100)
        let t = Date(timeIntervalSince1970: 1_700_000_000)
        for i in 0..<250 { v.note("k\(i)", ObjectInfo(size: 1, etag: "\"e\"", lastModified: t)) }
        XCTAssertLessThanOrEqual(v.count, 100)
        XCTAssertNotNil(v.storedMtime("k249", etag: "\"e\"", size: 1, lastModified: t), "the newest stays")
        XCTAssertNil(v.storedMtime("k0", etag: "\"e\"", size: 1, lastModified: t), "the oldest went")
    }
}

/// `FSOptions.immutable`: what is known of a file stands for the mount's life, past the TTL and the kernel's
/// forgetting; names not known yet are still asked for.
final class ImmutableTests: XCTestCase {
    var dir: String!
    var s3: MemoryObjectClient!
    let bucket = "b"

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-immutable-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket])
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func make(immutable: Bool) throws -> FileSystem {
        var o = FSOptions()
        o.metadataTTL = .milliseconds(300)
        o.immutable = immutable
        return try FileSystem(client: s3, bucket: bucket, prefix: "",
                              cache: BlockCache(directory: dir + "/\(UUID().uuidString)", capacity: 1 << 30), options: o)
    }

    func readAll(_ fs: FileSystem, _ ino: UInt64) async throws -> Int {
        let h = try await fs.open(ino: ino, flags: O_RDONLY).handle
        defer { fs.release(handle: h) }
        return try await fs.read(handle: h, offset: 0, size: 1 << 20).reduce(0) { n, s in
            switch s {
            case .memory(_, _, let c): return n + c
            case .file(_, _, let c): return n + c
            }
        }
    }

    /// An epoch: look up the directory and every file, read each; then the kernel forgets them all.
    func epoch(_ fs: FileSystem) async throws {
        let d = try await fs.lookup(parent: FileSystem.rootIno, name: "d")
        for i in 0..<8 {
            let f = try await fs.lookup(parent: d.ino, name: "f\(i)")
            let n = try await readAll(fs, f.ino)
            XCTAssertEqual(n, 1000 + i)
            fs.forget(ino: f.ino, count: 1)
        }
        fs.forget(ino: d.ino, count: 1)
    }

    func requests() -> Int { s3.count("HeadObject") + s3.count("ListObjectsV2") + s3.count("GetObject") }

    func testNothingKnownIsRevalidatedPastTheTTLAndANewNameStillAppears() async throws {
        for i in 0..<8 { _ = s3.seed(bucket, "d/f\(i)", [UInt8](repeating: UInt8(i), count: 1000 + i)) }
        for immutable in [true, false] {
            let fs = try make(immutable: immutable)
            try await epoch(fs)
            try await Task.sleep(for: .milliseconds(1300))  // past the TTL and the one-second window of opens
            let before = requests()
            try await epoch(fs)
            if immutable {
                XCTAssertEqual(requests(), before, "an immutable mount asks S3 nothing it knows")
            } else {
                XCTAssertGreaterThan(requests(), before, "a mount without it revalidates after the TTL")
            }
        }
        // A name that was not there is looked for again after the TTL.
        let fs = try make(immutable: true)
        let d = try await fs.lookup(parent: FileSystem.rootIno, name: "d")
        do {
            _ = try await fs.lookup(parent: d.ino, name: "new")
            XCTFail("not there yet")
        } catch { XCTAssertEqual(error.errno, ENOENT) }
        _ = s3.seed(bucket, "d/new", [1])
        try await Task.sleep(for: .milliseconds(400))
        let n = try await fs.lookup(parent: d.ino, name: "new")
        XCTAssertEqual(n.size, 1)
    }
}

/// Lookups of an epoch after the kernel dropped its caches: the directory it forgot is listed again at the next
/// miss (not one HEAD and LIST per name until the TTL passes), and what needs no request is answered without a
/// task (`lookupNow`, `openNow`).
final class ForgottenDirectoryTests: XCTestCase {
    var dir: String!
    var s3: MemoryObjectClient!
    let bucket = "b"

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-forgotten-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket])
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testAForgottenDirectoryIsListedAgainAndItsFilesAnsweredWithoutRequests() async throws {
        for i in 0..<50 { _ = s3.seed(bucket, "d/f\(i)", [UInt8(i)], metadata: ["mtime": "1000"]) }
        let fs = try FileSystem(client: s3, bucket: bucket, prefix: "",
                                cache: BlockCache(directory: dir + "/c", capacity: 1 << 30), options: FSOptions())
        for round in 0..<2 {
            let d = try await fs.lookup(parent: FileSystem.rootIno, name: "d")
            let before = s3.count("HeadObject") + s3.count("ListObjectsV2")
            var inos: [UInt64] = []
            for i in 0..<50 { inos.append(try await fs.lookup(parent: d.ino, name: "f\(i)").ino) }
            // The first miss probes the name (HEAD, LIST), the second lists the directory; the stored mtimes
            // take a HEAD each in the first round only (then known from those answers).
            let sent = s3.count("HeadObject") + s3.count("ListObjectsV2") - before
            if round == 1 { XCTAssertLessThanOrEqual(sent, 3, "round \(round)") }
            // Everything about these files is at hand now: answered without waiting.
            let again = try XCTUnwrap(fs.lookupNow(parent: d.ino, name: "f7"))
            XCTAssertEqual(again.ino, inos[7])
            let h = try XCTUnwrap(fs.openNow(ino: inos[7], flags: O_RDONLY))
            fs.release(handle: h.handle)
            XCTAssertNil(try fs.openNow(ino: inos[7], flags: O_RDWR), "a write open goes to the write-back")
            XCTAssertThrowsError(try fs.lookupNow(parent: d.ino, name: "missing"), "the listing says it is not there")
            // The kernel forgets everything (drop_caches).
            for (i, ino) in inos.enumerated() { fs.forget(ino: ino, count: i == 7 ? 2 : 1) }
            fs.forget(ino: d.ino, count: 1)
        }
    }
}
