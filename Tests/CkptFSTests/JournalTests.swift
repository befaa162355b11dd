@testable import CkptFS
import Foundation
import XCTest

/// The journal file itself: its reserve of disk space, and what a failed append leaves.
final class JournalTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-journal-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func record(_ id: UInt64) -> JournalRecord {
        JournalRecord(op: .commit, id: id, key: "checkpoints/step-\(id).pt", size: Int64(id) * 1000, xxh64: "abc")
    }

    func allocated(_ path: String) -> Int64 {
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        return Int64(st.st_blocks) * 512
    }

    /// The journal's reserve is disk space allocated past its end (its size unchanged), given back to it as
    /// records use it up; the separate reserve file of earlier builds goes.
    func testTheReserveIsAllocatedPastTheEndAndReplenished() throws {
        let path = dir + "/journal"
        _ = FileManager.default.createFile(atPath: path + ".reserve", contents: Data(count: 4096))
        let j = try Journal(path: path)
        guard j.reserved > 0 else { throw XCTSkip("this filesystem cannot preallocate (fallocate FALLOC_FL_KEEP_SIZE)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".reserve"))
        XCTAssertEqual(j.reserved, Journal.reserveSize)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int, 0)
        XCTAssertGreaterThanOrEqual(allocated(path), Journal.reserveSize)
        // Records use the reserve up; past half of it, it is allocated again from the new end.
        var written: Int64 = 0
        var id: UInt64 = 1
        while written <= Journal.reserveSize / 2 {
            let batch = (0..<200).map { _ in defer { id += 1 }; return record(id) }
            try j.append(batch)
            written += Int64(batch.flatMap(Journal.frame).count)
            XCTAssertGreaterThanOrEqual(j.reserved, Journal.reserveSize / 2)
        }
        let size = Int64(try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int)
        XCTAssertEqual(size, written)
        XCTAssertGreaterThanOrEqual(allocated(path), size + Journal.reserveSize / 2)
        XCTAssertEqual(Journal.replay(path: path).records.count, Int(id - 1))
        XCTAssertFalse(Journal.replay(path: path).tornTail)
    }

    /// Recovery rewrites the journal and reopens it: the replaced file's reserve is given back before the new one
    /// is taken, so on a cache disk with room for one reserve the journal still has one. Failed before (CI: on an
    /// 8 MiB tmpfs the journal had no reserve after mounting, and an unlink on the full disk failed with ENOSPC).
    func testReopeningAfterARewriteKeepsAReserveOnASmallDisk() throws {
        guard geteuid() == 0 else { throw XCTSkip("mounting a small tmpfs needs root") }
        let small = dir + "/small"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=6m", "tmpfs", small]
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here") }
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = ["-l", small]
            try? umount.run()
            umount.waitUntilExit()
        }
        let path = small + "/journal"
        let j = try Journal(path: path)
        guard j.reserved > 0 else { throw XCTSkip("this filesystem cannot preallocate (fallocate FALLOC_FL_KEEP_SIZE)") }
        try j.append([record(1), record(2)])
        try Journal.rewrite(path: path, [record(2)])
        try j.reopen()
        XCTAssertEqual(j.reserved, Journal.reserveSize, "the journal lost its reserve when it was reopened")
        try j.append(record(3))
        XCTAssertEqual(Journal.replay(path: path).records.map(\.id), [2, 3])
    }

    /// A record that could be written only in part (the disk full, here the file size limit) is cut off again:
    /// a torn record left in the middle of the journal would end every replay there, and the records appended
    /// after it (acknowledged files) would be lost to recovery. Failed before: the records after it were lost.
    func testAFailedAppendLeavesOnlyWholeRecords() throws {
        let path = dir + "/journal"
        let j = try Journal(path: path)
        try j.append([record(1), record(2)])
        let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        // Writes past `size + 40` bytes fail with EFBIG after writing up to it (SIGXFSZ ignored).
        let oldHandler = signal(SIGXFSZ, SIG_IGN)
        var old = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        var limit = old
        limit.rlim_cur = rlim_t(size + 40)
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &limit), 0)
        XCTAssertThrowsError(try j.append(record(3))) { XCTAssertEqual(($0 as? FSError)?.errno, EFBIG) }
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &old), 0)
        signal(SIGXFSZ, oldHandler)
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int, size, "a torn record was left")
        try j.append(record(4))
        let (records, torn) = Journal.replay(path: path)
        XCTAssertEqual(records.map(\.id), [1, 2, 4])
        XCTAssertFalse(torn)
    }
}
