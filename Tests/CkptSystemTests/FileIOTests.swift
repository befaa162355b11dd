import CkptSystem
import Foundation
import SystemPackage
import XCTest

final class FileIOTests: XCTestCase {
    var path: String!

    override func setUp() { path = NSTemporaryDirectory() + "ckptfs-fileio-\(UUID().uuidString)" }
    override func tearDown() { unlink(path) }

    func testReadAllFillsTheBufferAndStopsOnlyAtTheEnd() throws {
        let data = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let fd = try FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: .ownerReadWrite)
        defer { try? fd.close() }
        XCTAssertEqual(try fd.writeAll(toAbsoluteOffset: 0, data), data.count)
        var buf = [UInt8](repeating: 0, count: 60_000)
        XCTAssertEqual(try buf.withUnsafeMutableBytes { b throws(Errno) in try fd.readAll(fromAbsoluteOffset: 1000, into: b) }, 60_000)
        XCTAssertEqual(buf, Array(data[1000..<61_000]))
        // Past the end: what there is, then nothing.
        XCTAssertEqual(try buf.withUnsafeMutableBytes { b throws(Errno) in try fd.readAll(fromAbsoluteOffset: 70_000, into: b) }, 30_000)
        XCTAssertEqual(Array(buf[0..<30_000]), Array(data[70_000...]))
        XCTAssertEqual(try buf.withUnsafeMutableBytes { b throws(Errno) in try fd.readAll(fromAbsoluteOffset: 200_000, into: b) }, 0)
        // The descriptor's own offset is not moved by positional I/O.
        XCTAssertEqual(try fd.seek(offset: 0, from: .current), 0)
    }

    func testReadAllThrowsTheErrno() throws {
        let fd = try FileDescriptor.open(path, .writeOnly, options: [.create], permissions: .ownerReadWrite)
        defer { try? fd.close() }
        var buf = [UInt8](repeating: 0, count: 16)
        XCTAssertThrowsError(try buf.withUnsafeMutableBytes { b throws(Errno) in try fd.readAll(fromAbsoluteOffset: 0, into: b) }) {
            XCTAssertEqual($0 as? Errno, .badFileDescriptor)
        }
    }

    func testPreallocateAllocatesBlocksAndKeepsTheSize() throws {
        let fd = try FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: .ownerReadWrite)
        defer { try? fd.close() }
        XCTAssertEqual(try fd.writeAll(toAbsoluteOffset: 0, [UInt8](repeating: 7, count: 100)), 100)
        do {
            try fd.preallocate(from: 100, length: 1 << 20)
        } catch {
            if error == .notSupported { throw XCTSkip("this filesystem cannot preallocate") }
            throw error
        }
        var st = stat()
        XCTAssertEqual(fstat(fd.rawValue, &st), 0)
        XCTAssertEqual(st.st_size, 100)
        XCTAssertGreaterThanOrEqual(Int(st.st_blocks) * 512, 1 << 20)
        XCTAssertThrowsError(try FileDescriptor(rawValue: -1).preallocate(from: 0, length: 4096)) {
            XCTAssertEqual($0 as? Errno, .badFileDescriptor)
        }
    }

    /// Freed 1 MiB blocks leave the process even when others allocated between them are still in use. With
    /// glibc's default, the first 1 MiB block freed raises its threshold above 1 MiB, and the next ones come
    /// from a heap whose holes stay resident when freed. Measured in a process of its own (this test binary
    /// running this test only): in this one, earlier tests have left freed blocks in malloc's heaps, which
    /// later allocations reuse whatever the threshold.
    func testLargeBlocksAreGivenBackWhenFreed() throws {
        guard ProcessInfo.processInfo.environment["CKPT_FRESH_PROCESS"] != nil else {
            let child = Process()
            child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            child.arguments = ["CkptSystemTests.FileIOTests/testLargeBlocksAreGivenBackWhenFreed"]
            child.environment = ProcessInfo.processInfo.environment.merging(["CKPT_FRESH_PROCESS": "1"]) { $1 }
            try child.run()
            child.waitUntilExit()
            XCTAssertEqual(child.terminationStatus, 0, "the test failed in its own process (its output is above)")
            return
        }
        let warmup = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        warmup.initializeMemory(as: UInt8.self, repeating: 1)
        warmup.deallocate()  // with the default, this raises the threshold: the blocks below come from a heap
        XCTAssertTrue(setMallocMmapThreshold(256 << 10))
        let blocks = (0..<40).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16) }
        for b in blocks { b.initializeMemory(as: UInt8.self, repeating: 1) }
        let before = residentPages()
        for (i, b) in blocks.enumerated() where i % 2 == 0 { b.deallocate() }
        XCTAssertGreaterThan(before - residentPages(), (16 << 20) / 4096, "freed blocks stayed resident")
        for (i, b) in blocks.enumerated() where i % 2 == 1 { b.deallocate() }
    }

    /// Resident pages of this process (/proc/self/statm).
    func residentPages() -> Int {
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
        return Int(statm.split(separator: " ")[1]) ?? 0
    }

    func testGlibcConstantsFromTheShim() throws {
        #if arch(x86_64)
        XCTAssertEqual(FileDescriptor.OpenOptions.direct.rawValue, 0o40000)
        #elseif arch(arm64)
        XCTAssertEqual(FileDescriptor.OpenOptions.direct.rawValue, 0o200000)
        #endif
        XCTAssertEqual(posixSpawnSetSID, 0x80)
        // O_DIRECT reaches open(2): a filesystem that refuses it says EINVAL; one that takes it opens.
        do {
            let fd = try FileDescriptor.open(path, .writeOnly, options: [.create, .direct], permissions: .ownerReadWrite)
            XCTAssertNotEqual(fcntl(fd.rawValue, F_GETFL) & FileDescriptor.OpenOptions.direct.rawValue, 0)
            try fd.close()
        } catch Errno.invalidArgument {}
    }
}
