import CkptDigest
import CkptHTTP
import CkptSystem
import SystemPackage
import CkptTestSupport
import Foundation
import XCTest

/// The transport alone, against the fault server on loopback.
final class HTTPClientTests: XCTestCase {
    var server: FaultServer!
    let expected = (0..<1000).map { UInt8($0 % 256) }

    override func setUpWithError() throws { server = try FaultServer() }
    override func tearDown() { server = nil }

    func testGetIntoMemoryWithLowerCasedHeaders() async throws {
        let http = HTTPClient()
        let r = try await http.execute(HTTPRequest(method: .GET, url: "\(server.endpoint)/b/plain/x"))
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, expected)
        XCTAssertEqual(r.header("ETag"), "\"e\"")
        XCTAssertEqual(r.header("content-length"), "1000")
        XCTAssertTrue(r.headers.allSatisfy { $0.name == $0.name.lowercased() })
    }

    func testSinkReceivesTheBodyAtItsOffsets() async throws {
        let http = HTTPClient()
        final class Collector: @unchecked Sendable {
            let lock = NSLock()
            var bytes = [UInt8](repeating: 0, count: 1000)
            var next: Int64 = 0
            var inOrder = true
        }
        let c = Collector()
        let r = try await http.execute(HTTPRequest(method: .GET, url: "\(server.endpoint)/b/plain/y")) { offset, chunk in
            c.lock.withLock {
                if offset != c.next { c.inOrder = false }
                c.next = offset + Int64(chunk.count)
                for (i, b) in chunk.enumerated() { c.bytes[Int(offset) + i] = b }
            }
        }
        XCTAssertTrue(r.body.isEmpty, "a 2xx body with a sink is not also kept in memory")
        XCTAssertEqual(r.bodyLength, 1000)
        XCTAssertTrue(c.inOrder)
        XCTAssertEqual(c.bytes, expected)
    }

    func testUploadFromAFileRangeSendsExactlyThoseBytes() async throws {
        let data = pattern(3 << 20, seed: 7)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("http-upload-\(UUID().uuidString)").path
        try Data(data).write(to: URL(fileURLWithPath: path))
        let fd = open(path, O_RDONLY)
        defer { close(fd); unlink(path) }
        let http = HTTPClient()
        let range = 12_345..<(2 << 20) + 77
        for method in [HTTPMethod.PUT, .POST] {
            let r = try await http.execute(HTTPRequest(method: method, url: "\(server.endpoint)/echo/file",
                                                       body: .file(descriptor: fd, offset: Int64(range.lowerBound), length: Int64(range.count))))
            XCTAssertEqual(String(decoding: r.body, as: UTF8.self), "\(range.count) \(Digest.sha256(Array(data[range])).hexString)", "\(method)")
        }
        let small = try await http.execute(HTTPRequest(method: .PUT, url: "\(server.endpoint)/echo/bytes", body: .bytes(Array("hello".utf8))))
        XCTAssertEqual(String(decoding: small.body, as: UTF8.self), "5 \(Digest.sha256("hello").hexString)")
        XCTAssertGreaterThanOrEqual(http.stats.bytesSent, Int64(2 * range.count + 5))
    }

    func testAnAlignedFileBodyIsReadWithDirectIO() async throws {
        let data = pattern((4 << 20) + 777, seed: 11)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("http-direct-\(UUID().uuidString)").path
        try Data(data).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let probe = open(path, O_RDONLY | FileDescriptor.OpenOptions.direct.rawValue)
        try XCTSkipIf(probe < 0, "the temporary directory's file system refuses O_DIRECT")
        close(probe)
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let http = HTTPClient()
        // From offset 0: every full 1 MiB read goes straight into libcurl's buffer; the 777-byte tail is read
        // through the page cache.
        let whole = try await http.execute(HTTPRequest(method: .PUT, url: "\(server.endpoint)/echo/file",
                                                       body: .file(descriptor: fd, offset: 0, length: Int64(data.count))))
        XCTAssertEqual(String(decoding: whole.body, as: UTF8.self), "\(data.count) \(Digest.sha256(data).hexString)")
        XCTAssertGreaterThanOrEqual(http.stats.bytesReadDirect, 4 << 20)
        XCTAssertLessThanOrEqual(http.stats.bytesReadDirect, Int64(data.count))
        // From an unaligned offset: the page cache only, the same bytes.
        let before = http.stats.bytesReadDirect
        let range = 12_345..<data.count
        let part = try await http.execute(HTTPRequest(method: .PUT, url: "\(server.endpoint)/echo/file",
                                                      body: .file(descriptor: fd, offset: Int64(range.lowerBound), length: Int64(range.count))))
        XCTAssertEqual(String(decoding: part.body, as: UTF8.self), "\(range.count) \(Digest.sha256(Array(data[range])).hexString)")
        XCTAssertEqual(http.stats.bytesReadDirect, before)
    }

    func testAStalledResponseTimesOut() async throws {
        var config = HTTPClientConfiguration()
        config.stallTimeout = .seconds(1)
        let http = HTTPClient(configuration: config)
        let start = ContinuousClock.now
        do {
            _ = try await http.execute(HTTPRequest(method: .GET, url: "\(server.endpoint)/b/stall/z"))
            XCTFail("a stalled body must fail")
        } catch let e as HTTPTransportError {
            XCTAssertEqual(e.kind, .timeout, "\(e)")
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10))
    }

    func testCancellingTheTaskAbortsTheTransfer() async throws {
        let http = HTTPClient()
        let url = "\(server.endpoint)/b/stall/cancel"
        let task = Task { try await http.execute(HTTPRequest(method: .GET, url: url)) }
        try await Task.sleep(for: .milliseconds(300))
        let start = ContinuousClock.now
        task.cancel()
        do {
            _ = try await task.value
            XCTFail()
        } catch let e as HTTPTransportError {
            XCTAssertEqual(e.kind, .cancelled)
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(3))
    }

    func testConnectionRefusedIsAConnectError() async throws {
        let http = HTTPClient()
        do {
            _ = try await http.execute(HTTPRequest(method: .GET, url: "http://127.0.0.1:1/x"))
            XCTFail()
        } catch let e as HTTPTransportError {
            XCTAssertEqual(e.kind, .connect)
            XCTAssertEqual(e.origin, "http://127.0.0.1:1")
        }
    }
}
