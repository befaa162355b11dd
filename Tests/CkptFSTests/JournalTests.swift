@testable import CkptFS
import Foundation
import Synchronization
import XCTest

/// The journal file itself: its reserve of disk space, what a failed append leaves, and group commit.
final class JournalTests: XCTestCase {
    var dir: String!

    override func setUp() {
        dir = NSTemporaryDirectory() + "ckptfs-journal-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func record(_ id: UInt64) -> JournalRecord { JournalTests.record(id) }

    /// Runs `body` on a thread of its own (not a dispatch queue's: those are as many as the cores, and these
    /// block) as part of `group`.
    func spawn(_ group: DispatchGroup, _ body: @escaping @Sendable () -> Void) {
        group.enter()
        Thread {
            body()
            group.leave()
        }.start()
    }

    static func record(_ id: UInt64) -> JournalRecord {
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

    /// Keys keep their bytes through the journal: two keys that are the same text in other Unicode encodings
    /// ("twins") come back as written, so recovery uploads each to its own key.
    func testKeysKeepTheirBytesThroughTheJournal() throws {
        let path = dir + "/journal"
        let keys = ["u/caf\u{e9}", "u/cafe\u{301}"]
        try Journal.rewrite(path: path, keys.enumerated().map { JournalRecord(op: .commit, id: UInt64($0.offset + 1), key: $0.element) })
        XCTAssertEqual(Journal.replay(path: path).records.map { Array(($0.key ?? "").utf8) }, keys.map { Array($0.utf8) })
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

    /// Appends that come together share an fdatasync that started after their writes (group commit), and
    /// each returns only once its records are durable: 8 appends while a slow flush runs need 2 flushes, not 8.
    func testAppendsThatComeTogetherShareOneFlush() throws {
        let path = dir + "/journal"
        let first = DispatchSemaphore(value: 0)
        let entered = DispatchSemaphore(value: 0)
        let calls = Atomic<Int>(0)
        let j = try Journal(path: path, sync: { fd in
            if calls.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
                entered.signal()
                first.wait()  // the first flush is slow: the other appends write meanwhile
            }
            return fdatasync(fd)
        })
        let group = DispatchGroup()
        let failures = Atomic<Int>(0)
        spawn(group) {
            do { try j.append(JournalTests.record(1)) } catch { failures.wrappingAdd(1, ordering: .relaxed) }
        }
        entered.wait()
        for id in 2...8 {
            spawn(group) {
                do { try j.append(JournalTests.record(UInt64(id))) } catch { failures.wrappingAdd(1, ordering: .relaxed) }
            }
        }
        // Every record written before the first flush ends (the file holds them all), then let it end.
        let eight = 8 * Journal.frame(record(1)).count
        for _ in 0..<500 where (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 < eight {
            usleep(2000)
        }
        first.signal()
        group.wait()
        XCTAssertEqual(failures.load(ordering: .relaxed), 0)
        XCTAssertEqual(Set(Journal.replay(path: path).records.map(\.id)), Set(1...8))
        XCTAssertEqual(j.syncs.load(ordering: .relaxed), 2, "the 7 appends written during the first flush share the second")
    }

    /// A flush that fails fails every append whose records it was to make durable, also another thread's
    /// written meanwhile, and cuts them all off: none of them returned, so none was acknowledged, and the
    /// journal holds only what an earlier flush made durable. Appends after it go on.
    func testAFailedFlushFailsEveryAppendItDidNotMakeDurable() throws {
        let path = dir + "/journal"
        let failNext = Atomic<Bool>(false)
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let j = try Journal(path: path, sync: { fd in
            guard failNext.exchange(false, ordering: .relaxed) else { return fdatasync(fd) }
            entered.signal()
            release.wait()
            errno = EIO
            return -1
        })
        try j.append(record(1))
        let durable = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
        failNext.store(true, ordering: .relaxed)
        let group = DispatchGroup()
        let errors = Mutex<[Int32]>([])
        spawn(group) {
            do { try j.append(JournalTests.record(2)) } catch { errors.withLock { $0.append((error as? FSError)?.errno ?? 0) } }
        }
        entered.wait()
        spawn(group) {
            do { try j.append(JournalTests.record(3)) } catch { errors.withLock { $0.append((error as? FSError)?.errno ?? 0) } }
        }
        let two = durable + 2 * Journal.frame(record(2)).count
        for _ in 0..<500 where (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 < two {
            usleep(2000)
        }
        release.signal()
        group.wait()
        XCTAssertEqual(errors.withLock { $0 }, [EIO, EIO])
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int, durable)
        try j.append(record(4))
        let (records, torn) = Journal.replay(path: path)
        XCTAssertEqual(records.map(\.id), [1, 4])
        XCTAssertFalse(torn)
    }
}
