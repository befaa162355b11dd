// docs/SEMANTICS.md, "Keys, files and directories", "Attributes", "Inode numbers", "Lookups, listings and
// another client's changes" and "Metadata, links and the rest", against the core.
@testable import CkptFS
import CkptTestSupport
import Foundation
import XCTest

/// "Keys, files and directories".
final class KeysSemanticsTests: SemanticsTestCase {
    /// Every object is a file with its bytes and size; keys with spaces, punctuation and non-ASCII round-trip.
    func testSMapTree() async throws {
        let names = ["a b.txt", "plus+sign", "100%", "tilde~", "q?&=,;'!()", "ünïcødé-日本", "dir/x y/z"]
        for (i, k) in names.enumerated() { s3.seed(bucket, k, bytes(100 + i, i)) }
        let listed = try await mount.list("").get()
        XCTAssertEqual(listed, Dictionary(uniqueKeysWithValues: names.map { ($0.split(separator: "/").first.map(String.init)!, $0.contains("/")) }))
        for (i, k) in names.enumerated() {
            let shown = try await read(k)
            XCTAssertEqual(shown, bytes(100 + i, i), k)
            let size = try await attributes(k).size
            XCTAssertEqual(size, Int64(100 + i), k)
        }
        try await save("new ü+%.bin", [1, 2])
        await flushAll()
        XCTAssertEqual(stored["new ü+%.bin"], [1, 2])
    }

    /// A mount of a prefix shows the keys under it only, and stores what is written there under it.
    func testSMapPrefix() async throws {
        s3.seed(bucket, "runs/42/model.pt", [1])
        s3.seed(bucket, "runs/43/other", [2])
        s3.seed(bucket, "top", [3])
        stop()
        let m = try CoreDriver(directory: dir, client: s3, bucket: bucket, prefix: "runs/42")
        defer { m.stop() }
        let listed = try await m.list("").get()
        XCTAssertEqual(listed, ["model.pt": false])
        let h = try await m.open("new.pt", Self.create).get()
        try await m.write(h, at: 0, [4]).get()
        try await m.close(h).get()
        let left = await m.flushAll(timeout: .seconds(10))
        XCTAssertEqual(left.map(\.path), [])
        XCTAssertEqual(stored["runs/42/new.pt"], [4])
        XCTAssertNil(stored["new.pt"])
    }
}

/// "Attributes (stat)" and "Inode numbers".
final class AttributesSemanticsTests: SemanticsTestCase {
    /// st_size is the object's, or while there are local changes the local version's.
    func testSStatSize() async throws {
        s3.seed(bucket, "f", bytes(5000))
        let before = try await attributes("f")
        XCTAssertEqual(before.size, 5000)
        holdUploads()
        try await mount.truncate("f", to: 123).get()
        let after = try await attributes("f")
        XCTAssertEqual(after.size, 123, "the local version's size")
        XCTAssertEqual(stored["f"]?.count, 5000)
    }

    /// A directory's times are the mount's start, its size 4096 and its link count 2; a file's link count 1.
    func testSStatDir() async throws {
        let started = Date()
        try remount { _ in }
        s3.seed(bucket, "d/x", [1])
        try await Task.sleep(for: .milliseconds(50))
        let d = try await attributes("d"), x = try await attributes("d/x")
        XCTAssertEqual(d.size, 4096)
        XCTAssertEqual(d.nlink, 2)
        XCTAssertEqual(x.nlink, 1)
        XCTAssertLessThan(abs(d.mtime.timeIntervalSince(started)), 1, "the mount's start")
    }

    /// Owner, group and modes come from the mount's options (the kernel enforces them).
    func testSStatOwnerMode() async throws {
        try remount { $0.adjust = { o in o.uid = 1234; o.gid = 99; o.fileMode = 0o600; o.dirMode = 0o700 } }
        s3.seed(bucket, "d/f", [1])
        let d = try await attributes("d"), f = try await attributes("d/f")
        XCTAssertEqual([d.uid, d.gid, d.permissions], [1234, 99, 0o700])
        XCTAssertEqual([f.uid, f.gid, f.permissions], [1234, 99, 0o600])
    }

    /// Every upload stores the mtime, and a remount shows it.
    func testSStatMtimeKept() async throws {
        let set = Date(timeIntervalSince1970: 1_500_000_000.125)
        let h = try await open("f", Self.create)
        try await write(h, [1, 2, 3])
        _ = try await fs.setattr(ino: h.ino, size: nil, mtime: set)
        try await mount.close(h).get()
        await flushAll()
        let info = try await objectInfo("f")
        XCTAssertEqual(info.metadata["mtime"], "1500000000.125")
        stop()
        try mountAgain()
        let shown = try await attributes("f")
        XCTAssertEqual(shown.mtime.timeIntervalSince1970, 1_500_000_000.125, accuracy: 0.001)
    }

    /// A path keeps its number across lookups, listings, writes and uploads; the root is 1.
    func testSInoStable() async throws {
        s3.seed(bucket, "f", [1])
        let first = try await ino("f")
        let listed = try await fs.entryList(handle: fs.opendir(ino: FileSystem.rootIno), offset: 0)
        XCTAssertEqual(listed.first { $0.name == "f" }?.ino, first, "d_ino is st_ino")
        let root = try await fs.getattr(ino: FileSystem.rootIno)
        XCTAssertEqual(root.ino, 1)
        holdUploads(FaultInjectingClient.Match.uploads.key("f"))
        try await save("f", [2, 3])
        let written = try await ino("f")
        XCTAssertEqual(written, first, "a write")
        s3.seed(bucket, "g", [1])
        let fresh = try await ino("g")
        try await save("g", [4, 5, 6])
        _ = await fs.flushAll(under: "g", timeout: .seconds(30))
        let again = try await ino("g")
        XCTAssertEqual(again, fresh, "an upload made through this mount")
    }

    /// Numbers from 2 up in the order paths are first seen, not stored: another mount numbers differently.
    func testSInoPerMount() async throws {
        s3.seed(bucket, "a", [1])
        s3.seed(bucket, "b", [2])
        let a1 = try await ino("a"), b1 = try await ino("b")
        XCTAssertEqual([a1, b1], [2, 3])
        stop()
        try mountAgain()
        let b2 = try await ino("b"), a2 = try await ino("a")
        XCTAssertEqual([b2, a2], [2, 3])
    }

    /// An object another client replaced gets a new number once a lookup sees its new ETag.
    func testSInoReplaced() async throws {
        s3.seed(bucket, "f", [1])
        let old = try await ino("f")
        s3.seed(bucket, "f", [2, 2])
        let new = try await ino("f")
        XCTAssertNotEqual(new, old)
    }

    /// A renamed file or directory keeps its number, and so does everything under a renamed directory.
    func testSInoRename() async throws {
        s3.seed(bucket, "f", [1])
        s3.seed(bucket, "d/x", [2])
        let f = try await ino("f"), d = try await ino("d"), x = try await ino("d/x")
        try await mount.rename("f", "g", noReplace: false).get()
        try await mount.rename("d", "e", noReplace: false).get()
        let g = try await ino("g"), e = try await ino("e"), ex = try await ino("e/x")
        XCTAssertEqual([g, e, ex], [f, d, x])
    }

    /// A file created under a name unlinked or renamed away gets a new number.
    func testSInoNewFile() async throws {
        try await save("a", [1])
        try await save("b", [2])
        let a = try await ino("a"), b = try await ino("b")
        try await mount.unlink("a").get()
        try await mount.rename("b", "c", noReplace: false).get()
        try await save("a", [3])
        try await save("b", [4])
        let a2 = try await ino("a"), b2 = try await ino("b")
        XCTAssertEqual(Set([a, b, a2, b2]).count, 4)
    }

    /// A directory removed and made again is a new directory with a new number.
    func testSInoDirRemade() async throws {
        try await mount.mkdir("d").get()
        let d = try await ino("d")
        try await mount.rmdir("d").get()
        try await mount.mkdir("d").get()
        let d2 = try await ino("d")
        XCTAssertNotEqual(d2, d)
        try await save("d/f", [1])
        let listed = try await mount.list("d").get()
        XCTAssertEqual(listed, ["f": false])
    }
}

/// "Lookups, listings and another client's changes".
final class LookupsSemanticsTests: SemanticsTestCase {
    /// A listing always asks S3: another client's additions and deletes show in the next readdir, also
    /// within the TTL.
    func testSConsListing() async throws {
        try remount { $0.metadataTTL = .seconds(30) }
        s3.seed(bucket, "a", [1])
        let first = try await mount.list("").get()
        XCTAssertEqual(first, ["a": false])
        s3.seed(bucket, "b", [2, 2])
        _ = try await s3.deleteObject(bucket, "a", versionId: nil)
        let second = try await mount.list("").get()
        XCTAssertEqual(second, ["b": false])
    }

    /// A file with local changes shows its newest local bytes and size, whatever S3 holds meanwhile.
    func testSReadLocal() async throws {
        s3.seed(bucket, "f", bytes(100, 1))
        holdUploads()
        try await save("f", bytes(50, 2))
        s3.seed(bucket, "f", bytes(70, 3))  // another client, meanwhile
        let shown = try await read("f")
        XCTAssertEqual(shown, bytes(50, 2))
        let size = try await attributes("f").size
        XCTAssertEqual(size, 50)
        let listed = try await mount.list("").get()
        XCTAssertEqual(listed, ["f": false])
    }

    /// After another client deleted the object, reads of an open descriptor that need S3 fail with ENOENT
    /// (fstat still shows the old size), and a later open fails with ENOENT.
    func testSConsOpenDeleted() async throws {
        try remount { $0.metadataTTL = .seconds(30) }  // fstat is answered from what the open saw
        s3.seed(bucket, "f", bytes(3 << 20))
        let h = try await open("f", Self.read)
        _ = try await s3.deleteObject(bucket, "f", versionId: nil)
        let r = await mount.read(h, at: 2 << 20, count: 4096)
        XCTAssertEqual(errno(r), ENOENT)
        let size = try await mount.size(h).get()
        XCTAssertEqual(size, 3 << 20)
        await mount.close(h)
        try await Task.sleep(for: .milliseconds(1100))
        let again = await mount.open("f", Self.read)
        XCTAssertEqual(errno(again), ENOENT)
    }
}

/// "Metadata, links and the rest".
final class MetadataSemanticsTests: SemanticsTestCase {
    /// utimensat of a file without local changes is not stored: the object is not touched, a new mount shows
    /// the old mtime.
    func testSMetaUtimensS3Only() async throws {
        s3.seed(bucket, "f", [1], metadata: ["mtime": "1600000000.000"])
        let f = try await ino("f")
        _ = try await fs.setattr(ino: f, size: nil, mtime: Date(timeIntervalSince1970: 1_700_000_000))
        await flushAll()
        let writes: Set = ["PutObject", "CopyObject", "CreateMultipartUpload", "UploadPartCopy", "DeleteObject", "DeleteObjects"]
        XCTAssertEqual(client.log.filter { writes.contains($0.operation) }.map(\.description), [], "the object was touched")
        XCTAssertEqual(mount.status.dirtyFiles, 0)
        stop()
        try mountAgain()
        let shown = try await attributes("f")
        XCTAssertEqual(shown.mtime.timeIntervalSince1970, 1_600_000_000, accuracy: 0.001)
    }

    /// symlink, link and mknod fail with EPERM; a name over the limits with ENAMETOOLONG first.
    func testSLink() async throws {
        let fs = self.fs
        let special = await errno { () async throws(FSError) in try fs.makeSpecial(parent: FileSystem.rootIno, name: "l") }
        XCTAssertEqual(special, EPERM)
        let long = String(repeating: "n", count: 256)
        let tooLong = await errno { () async throws(FSError) in try fs.makeSpecial(parent: FileSystem.rootIno, name: long) }
        XCTAssertEqual(tooLong, ENAMETOOLONG)
        XCTAssertEqual(keys, [])
    }

    /// statfs: blocks of 1 MiB, 2^30 blocks and inodes, all free, names of 255 bytes.
    func testSStatfs() {
        let s = fs.statfs()
        XCTAssertEqual([s.blockSize, s.blocks, s.freeBlocks, s.files, s.freeFiles, s.nameMax],
                       [1 << 20, 1 << 30, 1 << 30, 1 << 30, 1 << 30, 255])
    }
}

/// "Lookups, listings and another client's changes", with a TTL (the model tests' setup has none).
final class CachingSemanticsTests: SemanticsTestCase {
    /// A change another client makes is seen by stat at the latest when the TTL has passed.
    func testSConsTtl() async throws {
        try remount { $0.metadataTTL = .seconds(1) }
        s3.seed(bucket, "f", [1])
        let before = try await attributes("f").size
        XCTAssertEqual(before, 1)
        s3.seed(bucket, "f", [1, 2, 3, 4, 5])
        try await Task.sleep(for: .milliseconds(1100))
        let after = await mount.stat("f")
        XCTAssertEqual(try after.get(), .file(size: 5))
    }

    /// An open checks the object (HEAD) unless checked within the last second, and after another client
    /// replaced it reads the new object whole.
    func testSConsReopen() async throws {
        try remount { $0.metadataTTL = .seconds(30) }
        s3.seed(bucket, "f", bytes(10_000, 1))
        let f = try await fs.lookup(parent: FileSystem.rootIno, name: "f")  // held, as the kernel's dentry holds it
        func readAll(_ ino: UInt64) async throws -> [UInt8] {
            let h = try await fs.open(ino: ino, flags: O_RDONLY).handle
            defer { fs.release(handle: h) }
            return try await mount.readToEnd(DriverHandle(fh: h, ino: ino)).get()
        }
        let first = try await readAll(f.ino)
        XCTAssertEqual(first, bytes(10_000, 1))
        let heads = client.count("HeadObject")
        _ = try await readAll(f.ino)
        XCTAssertEqual(client.count("HeadObject"), heads, "checked within the last second: no HEAD")
        s3.seed(bucket, "f", bytes(12_000, 2))
        try await Task.sleep(for: .milliseconds(1100))
        let stale = await errno { () async throws(FSError) in _ = try await self.fs.open(ino: f.ino, flags: O_RDONLY) }
        XCTAssertEqual(stale, ESTALE, "the open did not see the new object")
        XCTAssertGreaterThan(client.count("HeadObject"), heads)
        let g = try await fs.lookup(parent: FileSystem.rootIno, name: "f")  // the kernel looks the path up again
        let second = try await readAll(g.ino)
        XCTAssertEqual(second, bytes(12_000, 2), "the new object, whole")
    }

    /// A name not found is trusted absent for at most 5 s, whatever the TTL.
    func testSConsNegative() async throws {
        try remount { $0.metadataTTL = .seconds(30) }
        let missing = await mount.stat("late")
        XCTAssertEqual(errno(missing), ENOENT)
        s3.seed(bucket, "late", [7])
        let start = ContinuousClock.now
        while case .failure = await mount.stat("late"), ContinuousClock.now - start < .seconds(7) {
            try await Task.sleep(for: .milliseconds(100))
        }
        let found = await mount.stat("late")
        XCTAssertEqual(try found.get(), .file(size: 1))
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(5500))
    }

    /// Likewise for a name known absent because a reader's listing of its directory lacked it, or because this
    /// mount made the directory (empty): trusted for at most 5 s, not for the TTL (both were trusted for the
    /// 30 s TTL before).
    func testANameMissingFromAReadersListingOrANewDirectoryIsTrustedAbsentForFiveSeconds() async throws {
        try remount { $0.metadataTTL = .seconds(30) }
        s3.seed(bucket, "listed/other", [1])
        // The directories stay known, as the kernel's dentries keep them: a lookup reference held on each.
        _ = try await ino("listed")
        let listed = try await mount.list("listed").get()
        XCTAssertEqual(listed, ["other": false])
        _ = try await fs.mkdir(parent: FileSystem.rootIno, name: "made")
        for d in ["listed", "made"] {
            let missing = await mount.stat("\(d)/late")
            XCTAssertEqual(errno(missing), ENOENT, d)
        }
        s3.seed(bucket, "listed/late", [7])
        s3.seed(bucket, "made/late", [7])
        let start = ContinuousClock.now
        for d in ["listed", "made"] {
            while case .failure = await mount.stat("\(d)/late"), ContinuousClock.now - start < .seconds(7) {
                try await Task.sleep(for: .milliseconds(100))
            }
            let found = await mount.stat("\(d)/late")
            XCTAssertEqual(try found.get(), .file(size: 1), d)
        }
        XCTAssertLessThan(ContinuousClock.now - start, .milliseconds(5500))
    }

    /// With Last-Modified mtimes, a listing answers the lookups after it with no HEAD, and a stored mtime is
    /// ignored.
    func testSStatMtimeLastModified() async throws {
        try remount {
            $0.metadataTTL = .seconds(30)
            $0.adjust = { $0.storedMtimes = false }
        }
        s3.seed(bucket, "d/f", [1], metadata: ["mtime": "1600000000.000"])
        s3.seed(bucket, "d/g", [2], metadata: ["mtime": "1600000000.000"])
        _ = try await mount.list("").get()
        _ = try await ino("d")
        _ = try await mount.list("d").get()
        let heads = client.count("HeadObject")
        let f = try await attributes("d/f"), g = try await attributes("d/g")
        XCTAssertEqual(client.count("HeadObject"), heads, "a HEAD after the listing")
        for a in [f, g] { XCTAssertLessThan(abs(a.mtime.timeIntervalSinceNow), 60, "Last-Modified, not the stored mtime") }
    }
}

/// "Reading".
final class ReadingSemanticsTests: SemanticsTestCase {
    /// A random read fetches only the 1 MiB blocks it touches.
    func testSReadRandom() async throws {
        try remount { $0.blockSize = 1 << 20 }
        let data = bytes(8 << 20)
        s3.seed(bucket, "big", data)
        let h = try await open("big", Self.read)
        let a = try await mount.read(h, at: (5 << 20) + 10, count: 100).get()
        let b = try await mount.read(h, at: (2 << 20) + 100, count: 100).get()
        await mount.close(h)
        XCTAssertEqual(a, Array(data[((5 << 20) + 10)..<((5 << 20) + 110)]))
        XCTAssertEqual(b, Array(data[((2 << 20) + 100)..<((2 << 20) + 200)]))
        XCTAssertEqual(s3.bytesSent, 2 << 20, "two blocks")
    }

    /// Blocks read are kept in the cache, which a remount over it reads without a GET.
    func testSReadCache() async throws {
        let data = bytes(50_000)
        s3.seed(bucket, "f", data)
        let first = try await read("f")
        XCTAssertEqual(first, data)
        await fs.finishCacheWrites()
        stop()
        try mountAgain()
        let again = try await read("f")
        XCTAssertEqual(again, data)
        XCTAssertEqual(client.count("GetObject"), 0, "the remount downloaded again")
    }

    /// A damaged cached block is fetched again, never served.
    func testSReadCacheChecksum() async throws {
        try remount { $0.blockSize = 1 << 20 }
        let data = bytes(1 << 20)
        s3.seed(bucket, "f", data)
        let first = try await read("f")
        XCTAssertEqual(first, data)
        await fs.finishCacheWrites()
        stop()
        let blocks = dir + "/blocks"
        var damaged = 0
        for sub in try FileManager.default.contentsOfDirectory(atPath: blocks) {
            for name in try FileManager.default.contentsOfDirectory(atPath: "\(blocks)/\(sub)") {
                let h = try FileHandle(forUpdating: URL(fileURLWithPath: "\(blocks)/\(sub)/\(name)"))
                try h.seek(toOffset: 4096 + 100)
                try h.write(contentsOf: [0xFF, 0x00, 0xFF])
                try h.close()
                damaged += 1
            }
        }
        XCTAssertEqual(damaged, 1)
        try mountAgain()
        let again = try await read("f")
        XCTAssertEqual(again, data, "a damaged block was served")
        XCTAssertEqual(client.count("GetObject"), 1, "fetched again")
        XCTAssertEqual(fs.cache.stats.corruptBlocks, 1)
    }
}
