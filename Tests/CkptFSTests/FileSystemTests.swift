import CkptCache
@testable import CkptFS
import CkptS3
import CkptTestSupport
import Foundation
import XCTest

/// The filesystem core against the in-memory object client: no kernel, no server.
final class FileSystemTests: XCTestCase {
    var dir: String!
    var s3: MemoryObjectClient!
    var fs: FileSystem!
    /// Every filesystem `make` made: stopped at teardown, so none retries an upload whose staged file the
    /// teardown removed.
    var made: [FileSystem] = []
    let bucket = "b"

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "ckptfs-core-\(UUID().uuidString)"
        s3 = MemoryObjectClient(buckets: [bucket], pageSize: 100)
        fs = try make()
    }

    override func tearDown() {
        for f in made { f.shutdown() }
        made = []
        fs = nil
        try? FileManager.default.removeItem(atPath: dir)
    }

    func make(prefix: String = "", ttl: Duration = .seconds(30), maxListedEntries: Int = 250_000) throws -> FileSystem {
        var o = FSOptions()
        o.metadataTTL = ttl
        o.maxListedEntries = maxListedEntries
        o.uid = 1234
        o.gid = 99
        let fs = try FileSystem(client: s3, bucket: bucket, prefix: prefix,
                                cache: try BlockCache(directory: dir + "/\(UUID().uuidString)", capacity: 1 << 30, blockSize: 1 << 20), options: o)
        made.append(fs)
        return fs
    }

    func data(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: ($0 &* 131) >> 3) &+ seed } }

    func names(_ ino: UInt64) async throws -> [String: Bool] {
        let h = try fs.opendir(ino: ino)
        defer { fs.releasedir(handle: h) }
        var out: [String: Bool] = [:]
        var offset: Int64 = 0
        while true {
            let batch = try await fs.entryList(handle: h, offset: offset, limit: 37)
            if batch.isEmpty { break }
            for e in batch { out[e.name] = e.isDirectory }
            offset = batch.last!.nextOffset
        }
        return out
    }

    func readAll(_ ino: UInt64, chunk: Int = 128 << 10) async throws -> [UInt8] {
        let h = try await fs.open(ino: ino, flags: O_RDONLY).handle
        defer { fs.release(handle: h) }
        var out: [UInt8] = []
        while true {
            let segs = try await fs.read(handle: h, offset: Int64(out.count), size: chunk)
            if segs.isEmpty { break }
            for s in segs { out += bytes(s) }
        }
        return out
    }

    func bytes(_ s: ReadSegment) -> [UInt8] { Self.bytes(s) }

    static func bytes(_ s: ReadSegment) -> [UInt8] {
        switch s {
        case .memory(let buf, let off, let n): return Array(buf.bytes[off..<off + n])
        case .file(let fd, let off, let n):
            var b = [UInt8](repeating: 0, count: n)
            _ = pread(fd.rawValue, &b, n, off_t(off))
            return b
        }
    }

    /// Saves `bytes` through the path `name` in `parent` (O_TRUNC) and waits until it is in S3.
    func save(_ bytes: [UInt8], parent: UInt64, name: String) async throws {
        let f = try await fs.lookup(parent: parent, name: name)
        let h = try await fs.open(ino: f.ino, flags: O_WRONLY | O_TRUNC).handle
        try await fs.writeWaiting(handle: h, offset: 0, data: bytes)
        try await fs.flush(handle: h)
        fs.release(handle: h)
        let left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
    }

    /// The names of directory `ino` but "." and "..", as bytes (a String key would take twins for one).
    func childBytes(_ ino: UInt64) async throws -> [[UInt8]] {
        let h = try fs.opendir(ino: ino)
        defer { fs.releasedir(handle: h) }
        var out: [[UInt8]] = []
        var offset: Int64 = 0
        while true {
            let batch = try await fs.entryList(handle: h, offset: offset, limit: 37)
            if batch.isEmpty { break }
            out += batch.map { Array($0.name.utf8) }.filter { $0 != Array(".".utf8) && $0 != Array("..".utf8) }
            offset = batch.last!.nextOffset
        }
        return out.sorted { $0.lexicographicallyPrecedes($1) }
    }

    /// Names are bytes (POSIX, S3), not text: two names that are the same text in other Unicode encodings
    /// ("twins", both in S3) are two files, both listed, each with its own bytes; one is made beside the other
    /// like any name. A name that would join a "/" into one Character with its first or last scalar is not
    /// shown, nor made. Failed before (outside testing): both names were one file, and a key "g/\u{301}x"
    /// listed as "x"; then the mount showed one twin only and refused to make the other (EINVAL).
    func testNamesAreBytesNotText() async throws {
        let nfc = "caf\u{e9}", nfd = "cafe\u{301}"
        s3.seed(bucket, "u/" + nfc, Array("nfc".utf8))
        s3.seed(bucket, "u/" + nfd, Array("nfd!".utf8))
        s3.seed(bucket, "g/\u{301}x", [1])
        s3.seed(bucket, "g/ok", [2])
        s3.seed(bucket, "p\u{600}/f", [3])
        s3.seed(bucket, "v/" + nfc, Array("old".utf8))
        let root = try await names(FileSystem.rootIno)
        XCTAssertEqual(root, [".": true, "..": true, "u": true, "g": true, "v": true])
        let u = try await fs.lookup(parent: FileSystem.rootIno, name: "u")
        let shown = try await childBytes(u.ino)
        XCTAssertEqual(shown, [Array(nfd.utf8), Array(nfc.utf8)])
        let f = try await fs.lookup(parent: u.ino, name: nfc), d = try await fs.lookup(parent: u.ino, name: nfd)
        XCTAssertNotEqual(f.ino, d.ino)
        XCTAssertEqual(f.size, 3)
        XCTAssertEqual(d.size, 4)
        let readNFC = try await readAll(f.ino), readNFD = try await readAll(d.ino)
        XCTAssertEqual(readNFC, Array("nfc".utf8))
        XCTAssertEqual(readNFD, Array("nfd!".utf8))
        // A save through each name goes to its own key.
        try await save(Array("new nfc".utf8), parent: u.ino, name: nfc)
        try await save(Array("new nfd!".utf8), parent: u.ino, name: nfd)
        XCTAssertEqual(s3.object(in: bucket, "u/" + nfc), Array("new nfc".utf8))
        XCTAssertEqual(s3.object(in: bucket, "u/" + nfd), Array("new nfd!".utf8))
        // A twin is made beside a name the directory has.
        let v = try await fs.lookup(parent: FileSystem.rootIno, name: "v")
        _ = try await names(v.ino)
        let (made, h) = try fs.create(parent: v.ino, name: nfd, flags: O_WRONLY)
        try await fs.writeWaiting(handle: h, offset: 0, data: Array("made".utf8))
        try await fs.flush(handle: h)
        fs.release(handle: h)
        let left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
        XCTAssertEqual(s3.object(in: bucket, "v/" + nfc), Array("old".utf8))
        XCTAssertEqual(s3.object(in: bucket, "v/" + nfd), Array("made".utf8))
        let inV = try await childBytes(v.ino)
        XCTAssertEqual(inV, [Array(nfd.utf8), Array(nfc.utf8)])
        let old = try await fs.lookup(parent: v.ino, name: nfc)
        XCTAssertNotEqual(old.ino, made.ino)
        let g = try await fs.lookup(parent: FileSystem.rootIno, name: "g")
        let inG = try await names(g.ino)
        XCTAssertEqual(inG, [".": true, "..": true, "ok": false])
        XCTAssertThrowsError(try fs.create(parent: g.ino, name: "\u{301}y", flags: O_WRONLY)) { XCTAssertEqual(($0 as? FSError)?.errno, EINVAL) }
        XCTAssertFalse(Namespace.validName("d\u{600}"))
        XCTAssertTrue(Namespace.validName(nfd))
    }

    /// Twins (see `testNamesAreBytesNotText`) are both listed whichever was looked up first. Failed before
    /// (outside testing): a name looked up before the listing was the one shown, and the listed twin then gave
    /// ENOENT.
    func testTwinsAreBothShownWhicheverIsLookedUpFirst() async throws {
        let nfc = "caf\u{e9}", nfd = "cafe\u{301}"
        for (dir, first, size) in [("a/", nfc, 3), ("b/", nfd, 4)] {
            s3.seed(bucket, dir + nfc, Array("nfc".utf8))
            s3.seed(bucket, dir + nfd, Array("nfd!".utf8))
            let p = try await fs.lookup(parent: FileSystem.rootIno, name: String(dir.dropLast()))
            let before = try await fs.lookup(parent: p.ino, name: first)
            XCTAssertEqual(before.size, Int64(size))
            let shown = try await childBytes(p.ino)
            XCTAssertEqual(shown, [Array(nfd.utf8), Array(nfc.utf8)], dir)
            for (name, bytes) in [(nfc, "nfc"), (nfd, "nfd!")] {
                let f = try await fs.lookup(parent: p.ino, name: name)
                let read = try await readAll(f.ino)
                XCTAssertEqual(read, Array(bytes.utf8), dir + name)
            }
        }
    }

    /// A save through one twin, while the other has local changes, goes to its own key. Failed before
    /// (outside testing): the local file of one twin was found by the other's key, and the save went there.
    func testASaveThroughOneTwinNeverGoesToTheOther() async throws {
        let nfc = "caf\u{e9}", nfd = "cafe\u{301}"
        s3.seed(bucket, "u/" + nfc, Array("nfc".utf8))
        s3.seed(bucket, "u/" + nfd, Array("nfd!".utf8))
        let u = try await fs.lookup(parent: FileSystem.rootIno, name: "u")
        let a = try await fs.lookup(parent: u.ino, name: nfd)
        let ha = try await fs.open(ino: a.ino, flags: O_WRONLY | O_TRUNC).handle
        try await fs.writeWaiting(handle: ha, offset: 0, data: Array("through nfd".utf8))
        try await fs.flush(handle: ha)
        let b = try await fs.lookup(parent: u.ino, name: nfc)
        XCTAssertNotEqual(a.ino, b.ino)
        XCTAssertEqual(b.size, 3, "the other twin shows its own object, not the local version")
        let hb = try await fs.open(ino: b.ino, flags: O_WRONLY | O_TRUNC).handle
        try await fs.writeWaiting(handle: hb, offset: 0, data: Array("through nfc".utf8))
        try await fs.flush(handle: hb)
        fs.release(handle: hb)
        fs.release(handle: ha)
        let left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
        XCTAssertEqual(s3.object(in: bucket, "u/" + nfc), Array("through nfc".utf8))
        XCTAssertEqual(s3.object(in: bucket, "u/" + nfd), Array("through nfd".utf8))
        XCTAssertEqual(s3.keys(in: bucket).count, 2)
    }

    /// A directory renamed onto a name whose twin is a directory becomes a directory of its own beside it.
    /// Failed before (outside testing): it merged into the twin.
    func testADirectoryRenamedOntoATwinOfADirectoryDoesNotMergeIntoIt() async throws {
        let nfc = "caf\u{e9}", nfd = "cafe\u{301}"
        s3.seed(bucket, nfd + "/g", Array("g".utf8))
        s3.seed(bucket, "x/f", Array("f".utf8))
        _ = try await fs.lookup(parent: FileSystem.rootIno, name: nfd)
        _ = try await fs.lookup(parent: FileSystem.rootIno, name: "x")
        try await fs.rename(parent: FileSystem.rootIno, name: "x", newParent: FileSystem.rootIno, newName: nfc, flags: 0)
        let left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
        XCTAssertEqual(s3.keys(in: bucket).map { Array($0.utf8) }, [nfd + "/g", nfc + "/f"].map { Array($0.utf8) })
        let root = try await childBytes(FileSystem.rootIno)
        XCTAssertEqual(root, [Array(nfd.utf8), Array(nfc.utf8)])
        for (name, child) in [(nfc, "f"), (nfd, "g")] {
            let d = try await fs.lookup(parent: FileSystem.rootIno, name: name)
            XCTAssertTrue(d.isDirectory)
            let inside = try await names(d.ino)
            XCTAssertEqual(inside, [".": true, "..": true, child: false], name)
        }
    }

    /// Renaming a file onto the name of a file's twin makes a file beside it, and unlinking one twin leaves the
    /// other (twins: see `testNamesAreBytesNotText`).
    func testRenameAndUnlinkOfOneTwinLeaveTheOther() async throws {
        let nfc = "caf\u{e9}", nfd = "cafe\u{301}"
        s3.seed(bucket, "u/" + nfc, Array("nfc".utf8))
        s3.seed(bucket, "u/x", Array("x".utf8))
        let u = try await fs.lookup(parent: FileSystem.rootIno, name: "u")
        _ = try await names(u.ino)
        try await fs.rename(parent: u.ino, name: "x", newParent: u.ino, newName: nfd, flags: FileSystem.renameNoReplace)
        var left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
        XCTAssertEqual(s3.keys(in: bucket).map { Array($0.utf8) }, ["u/" + nfd, "u/" + nfc].map { Array($0.utf8) })
        XCTAssertEqual(s3.object(in: bucket, "u/" + nfd), Array("x".utf8))
        XCTAssertEqual(s3.object(in: bucket, "u/" + nfc), Array("nfc".utf8))
        try await fs.unlink(parent: u.ino, name: nfc)
        left = await fs.flushAll(under: "", timeout: .seconds(30))
        XCTAssertTrue(left.isEmpty, "\(left)")
        XCTAssertEqual(s3.keys(in: bucket).map { Array($0.utf8) }, [Array(("u/" + nfd).utf8)])
        let shown = try await childBytes(u.ino)
        XCTAssertEqual(shown, [Array(nfd.utf8)])
        let f = try await fs.lookup(parent: u.ino, name: nfd)
        let read = try await readAll(f.ino)
        XCTAssertEqual(read, Array("x".utf8))
    }

    func testTreeFromKeysPrefixesAndMarkers() async throws {
        s3.seed(bucket, "a.txt", Array("hello".utf8))
        s3.seed(bucket, "dir/b.bin", data(10, 1))
        s3.seed(bucket, "dir/sub/c", data(3, 2))
        s3.seed(bucket, "marker/", [])
        s3.seed(bucket, "both", Array("file".utf8))
        s3.seed(bucket, "both/inside", Array("x".utf8))
        s3.seed(bucket, "bad//name", [1])
        s3.seed(bucket, "dots/./x", [1])
        s3.seed(bucket, "dots/../y", [1])
        let root = try await names(FileSystem.rootIno)
        XCTAssertEqual(root, [".": true, "..": true, "a.txt": false, "dir": true, "marker": true, "both": true, "bad": true, "dots": true])
        let d = try await fs.lookup(parent: FileSystem.rootIno, name: "dir")
        XCTAssertTrue(d.isDirectory)
        XCTAssertEqual(d.permissions, 0o755)
        let v1 = try await names(d.ino)
        XCTAssertEqual(v1, [".": true, "..": true, "b.bin": false, "sub": true])
        let b = try await fs.lookup(parent: d.ino, name: "b.bin")
        XCTAssertEqual(b.size, 10)
        XCTAssertEqual(b.uid, 1234)
        XCTAssertEqual(b.gid, 99)
        XCTAssertEqual(b.permissions, 0o644)
        // An object and a prefix of the same name: the directory wins, the object is hidden.
        let both = try await fs.lookup(parent: FileSystem.rootIno, name: "both")
        XCTAssertTrue(both.isDirectory)
        // Names that cannot be file names are not shown.
        let bad = try await fs.lookup(parent: FileSystem.rootIno, name: "bad")
        let v2 = try await names(bad.ino)
        XCTAssertEqual(v2, [".": true, "..": true])
        let dots = try await fs.lookup(parent: FileSystem.rootIno, name: "dots")
        let v3 = try await names(dots.ino)
        XCTAssertEqual(v3, [".": true, "..": true])
        let marker = try await fs.lookup(parent: FileSystem.rootIno, name: "marker")
        let v4 = try await names(marker.ino)
        XCTAssertEqual(v4, [".": true, "..": true], "an empty directory from a marker object")
        for invalid in [".", "..", "", "a/b"] {
            do {
                _ = try await fs.lookup(parent: FileSystem.rootIno, name: invalid)
                XCTFail(invalid)
            } catch { XCTAssertEqual(error.errno, ENOENT) }
        }
        do {
            _ = try await fs.lookup(parent: b.ino, name: "x")
            XCTFail()
        } catch { XCTAssertEqual(error.errno, ENOTDIR) }
    }

    func testInodesAreStableAndMatchReaddir() async throws {
        s3.seed(bucket, "x/y", [1])
        let x1 = try await fs.lookup(parent: FileSystem.rootIno, name: "x")
        let h = try fs.opendir(ino: FileSystem.rootIno)
        let entry = try await fs.entryList(handle: h, offset: 0).first { $0.name == "x" }
        XCTAssertEqual(entry?.ino, x1.ino)
        fs.forget(ino: x1.ino, count: 1)
        let x2 = try await fs.lookup(parent: FileSystem.rootIno, name: "x")
        XCTAssertEqual(x2.ino, x1.ino, "the same path keeps its inode number for the life of the mount")
    }

    func testNegativeLookupsAndListingsAreCachedForTheTTL() async throws {
        s3.seed(bucket, "present", [1])
        do { _ = try await fs.lookup(parent: FileSystem.rootIno, name: "missing"); XCTFail() } catch { XCTAssertEqual(error.errno, ENOENT) }
        let before = s3.count("HeadObject") + s3.count("ListObjectsV2")
        do { _ = try await fs.lookup(parent: FileSystem.rootIno, name: "missing"); XCTFail() } catch { XCTAssertEqual(error.errno, ENOENT) }
        XCTAssertEqual(s3.count("HeadObject") + s3.count("ListObjectsV2"), before, "negative entry answered")
        // After a complete listing, lookups in that directory need no LIST; a listed file is asked for once,
        // for the mtime its writer stored (a listing does not carry it; a small file with a GET of all of it),
        // and a missing name needs no request.
        _ = try await names(FileSystem.rootIno)
        let afterList = s3.count("HeadObject") + s3.count("ListObjectsV2") + s3.count("GetObject")
        _ = try await fs.lookup(parent: FileSystem.rootIno, name: "present")
        _ = try await fs.lookup(parent: FileSystem.rootIno, name: "present")
        do { _ = try await fs.lookup(parent: FileSystem.rootIno, name: "other"); XCTFail() } catch {}
        XCTAssertEqual(s3.count("HeadObject") + s3.count("ListObjectsV2") + s3.count("GetObject"), afterList + 1)
        // With a zero TTL every lookup asks again, so a new object is seen at once.
        fs = try make(ttl: .zero)
        do { _ = try await fs.lookup(parent: FileSystem.rootIno, name: "late"); XCTFail() } catch {}
        s3.seed(bucket, "late", [7])
        let late = try await fs.lookup(parent: FileSystem.rootIno, name: "late")
        XCTAssertEqual(late.size, 1)
    }

    func testLookupsThatKeepMissingListTheDirectoryOnce() async throws {
        for i in 0..<90 { s3.seed(bucket, "shards/s\(i).tar", [UInt8(i)]) }
        s3.seed(bucket, "shards/sub/x", [1])
        let dir = try await fs.lookup(parent: FileSystem.rootIno, name: "shards")
        func requests() -> Int { s3.count("HeadObject") + s3.count("ListObjectsV2") }
        let before = requests()
        _ = try await fs.lookup(parent: dir.ino, name: "s0.tar")  // one miss: HEAD + one-key LIST
        XCTAssertEqual(requests() - before, 2)
        let lists = s3.count("ListObjectsV2"), heads = s3.count("HeadObject")
        _ = try await fs.lookup(parent: dir.ino, name: "s1.tar")  // the second: the directory is listed
        XCTAssertEqual(s3.count("ListObjectsV2") - lists, 1, "one page of 100")
        for i in 2..<90 {
            let a = try await fs.lookup(parent: dir.ino, name: "s\(i).tar")
            XCTAssertEqual(a.size, 1)
        }
        let sub = try await fs.lookup(parent: dir.ino, name: "sub")
        XCTAssertTrue(sub.isDirectory)
        do { _ = try await fs.lookup(parent: dir.ino, name: "absent"); XCTFail() } catch { XCTAssertEqual(error.errno, ENOENT) }
        XCTAssertEqual(s3.count("ListObjectsV2"), lists + 1, "every later lookup answered by the listing")
        XCTAssertLessThanOrEqual(s3.count("HeadObject") - heads, 89, "each listed file HEADed at most once, for its mtime")
        let listed = s3.count("ListObjectsV2")

        // A directory too large to list for lookups: one probe per name, as before.
        for i in 0...(Namespace.lookupListingPages * 100) { s3.seed(bucket, "huge/f\(i)", [1]) }
        let huge = try await fs.lookup(parent: FileSystem.rootIno, name: "huge")
        let hugeHeads = s3.count("HeadObject")
        for i in 0..<6 { _ = try await fs.lookup(parent: huge.ino, name: "f\(i)") }
        XCTAssertEqual(s3.count("HeadObject") - hugeHeads, 6)
        // Until the background listing has listed its pages (under load a pause between two pages can exceed
        // any fixed quiet time, so wait for the count it must reach), then a little longer for any it must not.
        let deadline = ContinuousClock.now + .seconds(30)
        while s3.count("ListObjectsV2") < listed + Namespace.lookupListingPages && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertGreaterThanOrEqual(s3.count("ListObjectsV2"), listed + Namespace.lookupListingPages)
        XCTAssertLessThanOrEqual(s3.count("ListObjectsV2"), listed + 6 + Namespace.lookupListingPages + 2,
                                 "the background listing stops at its page limit")
        XCTAssertNil(fs.namespace.table.withLock { $0.listings[huge.ino] })
    }

    func testADirectoryOverOnePageIsListedForLookupsInTheBackground() async throws {
        for i in 0..<250 { s3.seed(bucket, "mid/f\(i)", [1, 2]) }
        let mid = try await fs.lookup(parent: FileSystem.rootIno, name: "mid")
        _ = try await fs.lookup(parent: mid.ino, name: "f0")
        _ = try await fs.lookup(parent: mid.ino, name: "f1")  // waits for the first page only
        let deadline = ContinuousClock.now + .seconds(5)
        while fs.namespace.table.withLock({ $0.listings[mid.ino] }) == nil && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let lists = s3.count("ListObjectsV2"), heads = s3.count("HeadObject")
        for i in 2..<250 { _ = try await fs.lookup(parent: mid.ino, name: "f\(i)") }
        XCTAssertEqual(s3.count("ListObjectsV2"), lists, "answered by the finished listing")
        XCTAssertLessThanOrEqual(s3.count("HeadObject") - heads, 248, "each file HEADed at most once, for its mtime")
    }

    func testReaddirplusEntriesCarryAttributesAndTakeALookup() async throws {
        s3.seed(bucket, "d/a.bin", [1, 2, 3], metadata: ["mtime": "1000000000.5"])
        s3.seed(bucket, "d/sub/x", [1])
        let d = try await fs.lookup(parent: FileSystem.rootIno, name: "d")
        let h = try fs.opendir(ino: d.ino)
        defer { fs.releasedir(handle: h) }
        let entries = try await fs.entryList(handle: h, offset: 0)
        XCTAssertEqual(Set(entries.map(\.name)), [".", "..", "sub", "a.bin"])
        XCTAssertNil(fs.namespace.listedEntry(handle: h, name: "."))
        XCTAssertNil(fs.namespace.listedEntry(handle: h, name: ".."))
        XCTAssertNil(fs.namespace.listedEntry(handle: h, name: "a.bin"), "no attributes before its stored mtime is known")
        let asked = s3.count("HeadObject") + s3.count("GetObject")
        await fs.namespace.resolveListedEntries(handle: h, names: entries.map(\.name))
        XCTAssertEqual(s3.count("HeadObject") + s3.count("GetObject") - asked, 1, "the file (small: a GET of all of it), not the directory")
        let a = try XCTUnwrap(fs.namespace.listedEntry(handle: h, name: "a.bin"))
        XCTAssertEqual(a.mtime.timeIntervalSince1970, 1_000_000_000.5, "the stored mtime, not Last-Modified")
        XCTAssertEqual(a.size, 3)
        XCTAssertFalse(a.isDirectory)
        XCTAssertTrue(try XCTUnwrap(fs.namespace.listedEntry(handle: h, name: "sub")).isDirectory)
        XCTAssertEqual(fs.namespace.table.withLock { $0.nodes[a.ino]?.lookups }, 1, "one reference, as the kernel counts it")
        let again = try await fs.lookup(parent: d.ino, name: "a.bin")
        XCTAssertEqual(again.ino, a.ino)
        XCTAssertEqual(fs.namespace.table.withLock { $0.nodes[a.ino]?.lookups }, 2)
        fs.forget(ino: a.ino, count: 2)
        XCTAssertNil(fs.namespace.table.withLock { $0.nodes[a.ino] }, "forgotten once every reference is returned")
    }

    func testListingsKeptForLookupsAreBoundedInEntries() async throws {
        fs = try make(maxListedEntries: 150)
        for d in ["a", "b"] { for i in 0..<100 { s3.seed(bucket, "\(d)/f\(i)", [1]) } }
        for i in 0..<200 { s3.seed(bucket, "c/f\(i)", [1, 2]) }
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "a")
        let b = try await fs.lookup(parent: FileSystem.rootIno, name: "b")
        let c = try await fs.lookup(parent: FileSystem.rootIno, name: "c")
        _ = try await names(a.ino)
        XCTAssertNotNil(fs.namespace.table.withLock { $0.listings[a.ino] })
        _ = try await names(b.ino)
        XCTAssertNil(fs.namespace.table.withLock { $0.listings[a.ino] }, "the oldest listing makes room")
        XCTAssertNotNil(fs.namespace.table.withLock { $0.listings[b.ino] })
        // Too large to keep: listed for the reader, attributes still handed out, lookups ask S3.
        let h = try fs.opendir(ino: c.ino)
        defer { fs.releasedir(handle: h) }
        var offset: Int64 = 0
        var seen = 0
        while true {
            let batch = try await fs.entryList(handle: h, offset: offset, limit: 64)
            if batch.isEmpty { break }
            seen += batch.count
            offset = batch.last!.nextOffset
        }
        XCTAssertEqual(seen, 202)
        XCTAssertNil(fs.namespace.table.withLock { $0.listings[c.ino] })
        await fs.namespace.resolveListedEntries(handle: h, names: ["f150"])
        XCTAssertEqual(try XCTUnwrap(fs.namespace.listedEntry(handle: h, name: "f150")).size, 2)
        let heads = s3.count("HeadObject")
        let f7 = try await fs.lookup(parent: c.ino, name: "f7")
        XCTAssertEqual(f7.size, 2)
        XCTAssertEqual(s3.count("HeadObject"), heads + 1)
        XCTAssertLessThanOrEqual(fs.namespace.table.withLock { $0.listings.values.reduce(0) { $0 + $1.entries.count } }, 150)
    }

    func testExpiredListingsAreDropped() async throws {
        fs = try make(ttl: .milliseconds(100))
        for d in ["a", "b"] { for i in 0..<10 { s3.seed(bucket, "\(d)/f\(i)", [1]) } }
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "a")
        _ = try await names(a.ino)
        XCTAssertNotNil(fs.namespace.table.withLock { $0.listings[a.ino] })
        try await Task.sleep(for: .milliseconds(1100))
        let b = try await fs.lookup(parent: FileSystem.rootIno, name: "b")
        _ = try await names(b.ino)
        XCTAssertNil(fs.namespace.table.withLock { $0.listings[a.ino] }, "an expired listing does not stay in memory")
        XCTAssertNotNil(fs.namespace.table.withLock { $0.listings[b.ino] })
    }

    func testLargeDirectoryListsAcrossPages() async throws {
        for i in 0..<2500 { s3.seed(bucket, "big/f\(String(format: "%05d", i))", []) }
        for i in 0..<30 { s3.seed(bucket, "big/d\(i)/x", []) }
        let big = try await fs.lookup(parent: FileSystem.rootIno, name: "big")
        let listed = try await names(big.ino)
        XCTAssertEqual(listed.count, 2 + 2500 + 30)
        XCTAssertEqual(listed.values.filter { $0 }.count, 2 + 30)
        XCTAssertGreaterThanOrEqual(s3.count("ListObjectsV2"), 26, "pages of 100")
    }

    func testPrefixMountShowsOnlyThePrefix() async throws {
        s3.seed(bucket, "runs/42/model.pt", data(100, 3))
        s3.seed(bucket, "runs/43/other", [1])
        s3.seed(bucket, "top", [1])
        fs = try make(prefix: "runs/42")
        let v5 = try await names(FileSystem.rootIno)
        XCTAssertEqual(v5, [".": true, "..": true, "model.pt": false])
        let m = try await fs.lookup(parent: FileSystem.rootIno, name: "model.pt")
        let v6 = try await readAll(m.ino)
        XCTAssertEqual(v6, data(100, 3))
    }

    func testRandomAndSequentialReadsReturnExactBytes() async throws {
        let obj = data((5 << 20) + 12345, 9)
        s3.seed(bucket, "model.safetensors", obj)
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "model.safetensors")
        let h = try await fs.open(ino: a.ino, flags: O_RDONLY).handle
        for (off, len) in [(0, 1), (4095, 2), (1 << 20 - 10, 20), (3 << 20, 1 << 20), (obj.count - 5, 100), (123_457, 300_000)] {
            let segs = try await fs.read(handle: h, offset: Int64(off), size: len)
            let got = segs.flatMap { bytes($0) }
            XCTAssertEqual(got, Array(obj[off..<min(obj.count, off + len)]), "pread at \(off)")
        }
        let v7 = try await fs.read(handle: h, offset: Int64(obj.count), size: 10).count
        XCTAssertEqual(v7, 0, "EOF")
        fs.release(handle: h)
        let v8 = try await readAll(a.ino)
        XCTAssertEqual(v8, obj)
    }

    func testSequentialReadsReadAheadAndTheCacheServesTheSecondPass() async throws {
        let obj = data(24 << 20, 4)
        s3.seed(bucket, "shard.tar", obj)
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "shard.tar")
        let v9 = try await readAll(a.ino)
        XCTAssertEqual(v9, obj)
        let gets = s3.count("GetObject")
        XCTAssertLessThanOrEqual(gets, 8, "read-ahead fetches several blocks per GET (\(gets) GETs for 24 blocks)")
        XCTAssertLessThanOrEqual(s3.bytesSent, Int64(obj.count) + (8 << 20), "nothing fetched twice")
        // Second pass: all from the cache.
        let v10 = try await readAll(a.ino)
        XCTAssertEqual(v10, obj)
        XCTAssertEqual(s3.count("GetObject"), gets, "a warm read sends no GET")
        XCTAssertGreaterThanOrEqual(fs.stats.cache.hits, 24)
    }

    /// A block that fails its check is fetched again once, also when many reads find it damaged at once (a
    /// read whose check ends after another read fetched and stored the block again must not delete that
    /// one: the corrupted-block mount test saw 2 MiB downloaded for one damaged 1 MiB block).
    func testDamagedBlocksReadByManyAtOnceAreEachFetchedOnce() async throws {
        let obj = data(6 << 20, 8)
        s3.seed(bucket, "model.pt", obj)
        let cacheDir = dir + "/damaged"
        func mount() throws -> FileSystem {
            try FileSystem(client: s3, bucket: bucket, prefix: "",
                           cache: try BlockCache(directory: cacheDir, capacity: 1 << 30, blockSize: 1 << 20), options: FSOptions())
        }
        var m = try mount()
        let a = try await m.lookup(parent: FileSystem.rootIno, name: "model.pt")
        let h = try await m.open(ino: a.ino, flags: O_RDONLY).handle
        _ = try await m.read(handle: h, offset: 0, size: obj.count)
        m.release(handle: h)
        await m.finishCacheWrites()
        m.shutdown()
        // One byte of each block's data flipped: every block is damaged, as a new process finds it.
        func damage() throws -> Int {
            var damaged = 0
            for sub in try FileManager.default.contentsOfDirectory(atPath: cacheDir + "/blocks") {
                for name in try FileManager.default.contentsOfDirectory(atPath: cacheDir + "/blocks/" + sub) {
                    let fd = Glibc.open(cacheDir + "/blocks/\(sub)/\(name)", O_RDWR)
                    var b: UInt8 = 0
                    pread(fd, &b, 1, 4096 + 1000)
                    b ^= 0xFF
                    pwrite(fd, &b, 1, 4096 + 1000)
                    close(fd)
                    damaged += 1
                }
            }
            return damaged
        }
        for round in 0..<5 {
            XCTAssertEqual(try damage(), 6)
            m = try mount()
            let before = s3.bytesSent
            let b = try await m.lookup(parent: FileSystem.rootIno, name: "model.pt")
            var handles: [UInt64] = []
            for _ in 0..<12 { handles.append(try await m.open(ino: b.ino, flags: O_RDONLY).handle) }
            // 12 readers, each all blocks in 128 KiB reads, starting at different blocks.
            let fs = m
            try await withThrowingTaskGroup(of: Void.self) { g in
                for (i, h) in handles.enumerated() {
                    g.addTask {
                        for j in 0..<48 {
                            let off = ((i * 4 + j) % 48) * (128 << 10)
                            let got = try await fs.read(handle: h, offset: Int64(off), size: 128 << 10).flatMap { Self.bytes($0) }
                            XCTAssertEqual(got, Array(obj[off..<off + (128 << 10)]))
                        }
                    }
                }
                try await g.waitForAll()
            }
            for h in handles { m.release(handle: h) }
            await m.finishCacheWrites()
            XCTAssertEqual(s3.bytesSent - before, Int64(obj.count), "round \(round): each damaged block fetched once")
            XCTAssertEqual(m.stats.cache.corruptBlocks, 6, "round \(round)")
            m.shutdown()
        }
    }

    func testSmallRandomReadsDoNotTriggerLargeReadAhead() async throws {
        let obj = data(32 << 20, 5)
        s3.seed(bucket, "data.h5", obj)
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "data.h5")
        let h = try await fs.open(ino: a.ino, flags: O_RDONLY).handle
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            let off = Int.random(in: 0..<(obj.count - 4096), using: &rng)
            let got = try await fs.read(handle: h, offset: Int64(off), size: 4096).flatMap { bytes($0) }
            XCTAssertEqual(got, Array(obj[off..<off + 4096]))
        }
        XCTAssertLessThanOrEqual(s3.bytesSent, Int64(20 * 2 << 20), "each random read fetches at most its blocks")
    }

    func testSmallContiguousReadsReadAheadLikeLargeOnes() async throws {
        // A direct-I/O handle passes the program's own read sizes through: 4 KiB reads one after the other are
        // a stream and must be fetched ahead in large GETs, not one block per GET.
        let obj = data(24 << 20, 6)
        s3.seed(bucket, "shard.bin", obj)
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "shard.bin")
        let v = try await readAll(a.ino, chunk: 4096)
        XCTAssertEqual(v, obj)
        let gets = s3.count("GetObject")
        XCTAssertLessThanOrEqual(gets, 8, "\(gets) GETs for 24 blocks read 4 KiB at a time")
    }

    func testColdLargeFilesAreReadDirectAndCachedOnesThroughThePageCache() async throws {
        s3.seed(bucket, "big.pt", data(40 << 20, 1))
        s3.seed(bucket, "small.json", data(1000, 2))
        let big = try await fs.lookup(parent: FileSystem.rootIno, name: "big.pt")
        let small = try await fs.lookup(parent: FileSystem.rootIno, name: "small.json")
        var o = try await fs.open(ino: big.ino, flags: O_RDONLY)
        XCTAssertTrue(o.directIO, "a cold file of 40 MiB is read without the page cache")
        XCTAssertTrue(o.keepCache)
        _ = try await fs.read(handle: o.handle, offset: 0, size: 1 << 20)
        fs.release(handle: o.handle)
        let small1 = try await fs.open(ino: small.ino, flags: O_RDONLY)
        XCTAssertFalse(small1.directIO, "a small file keeps the page cache")
        XCTAssertEqual(fs.stats.directOpens, 1)
        // Once its first block is cached, the file is warm: the page cache serves re-reads.
        let first = BlockKey(bucket: bucket, key: "big.pt", etag: try await s3.headObject(bucket, "big.pt", versionId: nil, ifMatch: nil).etag, index: 0)
        for _ in 0..<200 where !fs.cache.contains(first) { try await Task.sleep(for: .milliseconds(10)) }
        o = try await fs.open(ino: big.ino, flags: O_RDONLY)
        XCTAssertFalse(o.directIO, "a cached file is read through the page cache")
        // A writer never reads direct and drops the kernel's pages.
        let w = try await fs.open(ino: small.ino, flags: O_RDWR)
        XCTAssertFalse(w.directIO)
        XCTAssertFalse(w.keepCache)
        fs.release(handle: w.handle)
    }

    func testReadsAtHandAreAnsweredWithoutWaiting() async throws {
        let obj = data(3 << 20, 7)
        s3.seed(bucket, "w", obj)
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "w")
        let h = try await fs.open(ino: a.ino, flags: O_RDONLY).handle
        guard case .later(let rest) = try fs.readNow(handle: h, offset: 100, size: 4096) else {
            return XCTFail("nothing is cached yet: the read has to wait for a GET")
        }
        let got = try await rest.segments().flatMap { bytes($0) }
        XCTAssertEqual(got, Array(obj[100..<4196]))
        guard case .done(let segs) = try fs.readNow(handle: h, offset: 5000, size: 4096) else {
            return XCTFail("the block just downloaded is at hand")
        }
        XCTAssertEqual(segs.flatMap { bytes($0) }, Array(obj[5000..<9096]))
        XCTAssertEqual(s3.count("GetObject"), 1)
    }

    func testAHandleSeesOneVersionAndAChangeIsReported() async throws {
        s3.seed(bucket, "ckpt", data(3 << 20, 1))
        let a = try await fs.lookup(parent: FileSystem.rootIno, name: "ckpt")
        let h = try await fs.open(ino: a.ino, flags: O_RDONLY).handle
        _ = try await fs.read(handle: h, offset: 0, size: 4096)
        s3.seed(bucket, "ckpt", data(3 << 20, 2))  // overwritten behind the mount's back
        do {
            _ = try await fs.read(handle: h, offset: 2 << 20, size: 4096)
            XCTFail("a handle must not mix versions")
        } catch { XCTAssertEqual(error.errno, ESTALE) }
        fs.release(handle: h)
        // A new open revalidates (after the second in which a lookup counts as fresh): the inode stands for
        // the old version, so the open fails with ESTALE (the kernel then looks the path up again) and the
        // path has a new inode that reads the new version whole.
        try await Task.sleep(for: .milliseconds(1100))
        do {
            _ = try await fs.open(ino: a.ino, flags: O_RDONLY).handle
            XCTFail("the old inode must not open the new version")
        } catch { XCTAssertEqual(error.errno, ESTALE) }
        let b = try await fs.lookup(parent: FileSystem.rootIno, name: "ckpt")
        XCTAssertNotEqual(b.ino, a.ino)
        let h2 = try await fs.open(ino: b.ino, flags: O_RDONLY).handle
        let got = try await fs.read(handle: h2, offset: 2 << 20, size: 16).flatMap { bytes($0) }
        XCTAssertEqual(got, Array(data(3 << 20, 2)[(2 << 20)..<(2 << 20) + 16]))
    }

    func testAListedFileShowsItsStoredMtimeWhicheverWayItIsReached() async throws {
        for i in 0..<40 { s3.seed(bucket, "d/f\(i)", [1], metadata: ["mtime": "\(1_000_000_000 + i)"]) }
        let d = try await fs.lookup(parent: FileSystem.rootIno, name: "d")
        _ = try await names(d.ino)  // a listing: Last-Modified only
        let heads = s3.count("HeadObject")
        for i in 0..<40 {  // in listing order (f0, f1, f10, ...): the names after each are HEADed ahead
            let name = "f\(i)"
            let a = try await fs.lookup(parent: d.ino, name: name)
            XCTAssertEqual(a.mtime.timeIntervalSince1970, Double(1_000_000_000 + i), name)
            let g = try await fs.getattr(ino: a.ino)
            XCTAssertEqual(g.mtime, a.mtime)
        }
        XCTAssertLessThanOrEqual(s3.count("HeadObject") - heads, 40, "each file HEADed once at most")
        let before = s3.count("HeadObject")
        _ = try await names(d.ino)  // listed again: the same versions keep the mtimes HEADs found
        _ = try await fs.lookup(parent: d.ino, name: "f7")
        XCTAssertEqual(s3.count("HeadObject"), before)
    }

    func testNamesAndKeysS3CannotStoreAreRefusedWithENAMETOOLONG() async throws {
        let long = String(repeating: "n", count: 256)
        func errno(_ f: () async throws -> Void) async -> Int32? {
            do { try await f(); return nil } catch { return (error as? FSError)?.errno }
        }
        var e = await errno { _ = try self.fs.create(parent: FileSystem.rootIno, name: long, flags: O_WRONLY) }
        XCTAssertEqual(e, ENAMETOOLONG)
        e = await errno { _ = try await self.fs.mkdir(parent: FileSystem.rootIno, name: long) }
        XCTAssertEqual(e, ENAMETOOLONG)
        e = await errno { _ = try await self.fs.lookup(parent: FileSystem.rootIno, name: long) }
        XCTAssertEqual(e, ENAMETOOLONG)
        e = await errno { try self.fs.makeSpecial(parent: FileSystem.rootIno, name: long) }
        XCTAssertEqual(e, ENAMETOOLONG)
        e = await errno { try self.fs.makeSpecial(parent: FileSystem.rootIno, name: "fifo") }
        XCTAssertEqual(e, EPERM)
        // A directory rename that would push a child's key past 1,024 bytes moves nothing.
        let c255 = String(repeating: "c", count: 255)
        s3.seed(bucket, "s/\(c255)/\(c255)/\(c255)/" + String(repeating: "c", count: 254), [1])  // 1,024 bytes
        e = await errno { try await self.fs.rename(parent: FileSystem.rootIno, name: "s", newParent: FileSystem.rootIno, newName: "ss", flags: 0) }
        XCTAssertEqual(e, ENAMETOOLONG)
        // Keys: a mount whose prefix is 1,000 bytes leaves 24 bytes for a file name, 23 for a directory's.
        fs = try make(prefix: String(repeating: "p", count: 999))
        let (_, h) = try fs.create(parent: FileSystem.rootIno, name: String(repeating: "f", count: 24), flags: O_WRONLY)
        fs.release(handle: h)
        e = await errno { _ = try self.fs.create(parent: FileSystem.rootIno, name: String(repeating: "f", count: 25), flags: O_WRONLY) }
        XCTAssertEqual(e, ENAMETOOLONG)
        _ = try await fs.mkdir(parent: FileSystem.rootIno, name: String(repeating: "g", count: 23))
        e = await errno { _ = try await self.fs.mkdir(parent: FileSystem.rootIno, name: String(repeating: "g", count: 24)) }
        XCTAssertEqual(e, ENAMETOOLONG)
        XCTAssertEqual(s3.count("CopyObject"), 0)
    }

    func testWritesAreRefusedOnAReadOnlyMount() async throws {
        s3.seed(bucket, "f", [1])
        var o = FSOptions()
        o.readOnly = true
        let ro = try FileSystem(client: s3, bucket: bucket, prefix: "",
                                cache: try BlockCache(directory: dir + "/ro", capacity: 1 << 30), options: o)
        let a = try await ro.lookup(parent: FileSystem.rootIno, name: "f")
        do { _ = try await ro.open(ino: a.ino, flags: O_WRONLY).handle; XCTFail() } catch { XCTAssertEqual(error.errno, EROFS) }
        do { _ = try await ro.mkdir(parent: FileSystem.rootIno, name: "d"); XCTFail() } catch { XCTAssertEqual(error.errno, EROFS) }
    }
}

/// Stale-if-error: while S3 is unreachable, what it confirmed lately is used, so cached files open and read.
final class StaleIfErrorTests: XCTestCase {
    func testACachedFileOpensAndReadsWhileS3IsUnreachableWithinTheBound() async throws {
        let dir = NSTemporaryDirectory() + "ckptfs-stale-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s3 = MemoryObjectClient(buckets: ["b"])
        let data = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        s3.seed("b", "model.pt", data)
        // The outage and the 404 are injected between the core and the memory client.
        let faults = FaultInjectingClient(wrapping: s3)
        func make(_ staleIfError: Duration) throws -> FileSystem {
            var o = FSOptions()
            o.metadataTTL = .zero
            o.staleIfError = staleIfError
            return try FileSystem(client: faults, bucket: "b", prefix: "",
                                  cache: try BlockCache(directory: dir + "/\(UUID().uuidString)", capacity: 1 << 30, blockSize: 1 << 20),
                                  options: o)
        }
        let down = S3Error(code: .serviceUnavailable, s3Code: "ServiceUnavailable", message: "down", httpStatus: 503,
                           operation: "HeadObject")
        func readAll(_ fs: FileSystem, _ h: UInt64) async throws -> [UInt8] {
            var out: [UInt8] = []
            while true {
                let segs = try await fs.read(handle: h, offset: Int64(out.count), size: 1 << 20)
                if segs.isEmpty { return out }
                for s in segs {
                    switch s {
                    case .memory(let b, let off, let n): out += b.bytes[off..<off + n]
                    case .file(let fd, let off, let n):
                        var buf = [UInt8](repeating: 0, count: n)
                        _ = pread(fd.rawValue, &buf, n, off_t(off))
                        out += buf
                    }
                }
            }
        }
        for (bound, served) in [(Duration.seconds(3600), true), (.zero, false)] {
            let fs = try make(bound)
            let attr = try await fs.lookup(parent: FileSystem.rootIno, name: "model.pt")
            let h = try await fs.open(ino: attr.ino, flags: O_RDONLY).handle
            let first = try await readAll(fs, h)
            XCTAssertEqual(first, data)
            fs.release(handle: h)
            try await Task.sleep(for: .milliseconds(1100))  // open revalidates what was checked over a second ago
            let gets = s3.count("GetObject")
            faults.failNth(1, of: "HeadObject", with: .error(down))
            do {
                let again = try await fs.open(ino: attr.ino, flags: O_RDONLY).handle
                XCTAssertTrue(served, "with staleIfError zero an outage fails the open")
                let read = try await readAll(fs, again)
                XCTAssertEqual(read, data, "the cached version, byte for byte")
                XCTAssertEqual(s3.count("GetObject"), gets, "from the cache: no GET")
                fs.release(handle: again)
            } catch {
                XCTAssertFalse(served, "a cached file must open while S3 is unreachable: \(error)")
                XCTAssertEqual((error as? FSError)?.errno, EIO)
            }
            // An answer about the object (it is gone) is never overridden by what was confirmed before.
            faults.failNth(1, of: "HeadObject", with: .noSuchKey)
            do {
                _ = try await fs.getattr(ino: attr.ino)
                XCTFail("a 404 is an answer, not an outage")
            } catch { XCTAssertEqual(error.errno, ENOENT) }
        }
    }
}
