import CkptCache
import CkptS3
import CkptTestSupport
import Foundation
import Prometheus
import XCTest

@testable import CkptCommand

final class MetricsTests: XCTestCase {
    /// The samples of a Prometheus text exposition: "name{labels}" -> value.
    func samples(_ m: MountMetrics) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in String(decoding: m.exposition(), as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else { continue }
            out[String(line[..<space])] = v
        }
        return out
    }

    func testAddressesStayOnLoopbackUnlessGiven() throws {
        XCTAssertEqual(try MetricsAddress.parse("9464").get(), MetricsAddress(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(try MetricsAddress.parse(":9464").get(), MetricsAddress(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(try MetricsAddress.parse("localhost:9464").get(), MetricsAddress(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(try MetricsAddress.parse("0.0.0.0:1").get(), MetricsAddress(host: "0.0.0.0", port: 1))
        XCTAssertEqual(try MetricsAddress.parse("[::1]:0").get(), MetricsAddress(host: "::1", port: 0))
        XCTAssertEqual(MetricsAddress(host: "::1", port: 9).description, "[::1]:9")
        for (bad, why) in [("", "is not a TCP port"), ("127.0.0.1:65536", "is not a TCP port"), ("host.example:80", "is not an IP address"),
                           ("::1:80", "brackets"), ("[::1]80", "brackets"), ("300.1.1.1:80", "is not an IP address")] {
            guard case .failure(let e) = MetricsAddress.parse(bad) else { return XCTFail("\(bad) accepted") }
            XCTAssertTrue(e.reason.contains(why), "\(bad): \(e.reason)")
        }
    }

    /// Scrape-time values: gauges show the snapshot; counters mirror the core's totals, moving by what they grew
    /// (and starting over if a total ever went down), never polled between scrapes.
    func testScrapesReadTheMountAtThatMoment() {
        let m = MountMetrics()
        nonisolated(unsafe) var snap = MountSnapshot(cacheCapacityBytes: 1 << 30)
        let lock = NSLock()
        m.read { lock.withLock { snap } }
        var s = samples(m)
        XCTAssertEqual(s["ckptfs_cache_hits_total"], 0)
        XCTAssertEqual(s["ckptfs_cache_capacity_bytes"], Double(1 << 30))
        XCTAssertNil(s["ckptfs_credentials_expiry_seconds"], "no credentials: no credential metrics")

        lock.withLock {
            snap.cache.hits = 7
            snap.cache.misses = 3
            snap.writeBack = .init(dirtyFiles: 2, dirtyBytes: 300, queued: 1, failing: 1, conflicts: 1, uploadedFiles: 5)
            snap.credentials = CredentialsStatus(source: "web identity role r", accessKeyId: "ASIA1", expiration: Date().addingTimeInterval(600),
                                                 lastError: nil, consecutiveFailures: 2, refreshes: 4)
        }
        s = samples(m)
        XCTAssertEqual(s["ckptfs_cache_hits_total"], 7)
        XCTAssertEqual(s["ckptfs_cache_misses_total"], 3)
        XCTAssertEqual(s["ckptfs_dirty_files"], 2)
        XCTAssertEqual(s["ckptfs_dirty_bytes"], 300)
        XCTAssertEqual(s["ckptfs_upload_queue_files"], 1)
        XCTAssertEqual(s["ckptfs_upload_conflicts"], 1)
        XCTAssertEqual(s["ckptfs_upload_failing_files"], 1)
        XCTAssertEqual(s["ckptfs_uploaded_files_total"], 5)
        XCTAssertEqual(s["ckptfs_credentials_refreshes_total"], 4)
        XCTAssertEqual(s["ckptfs_credentials_refresh_failures"], 2)
        XCTAssertEqual(s["ckptfs_credentials_expiry_seconds"] ?? 0, 600, accuracy: 2)

        // Preloads: gauges of the running ones, counters of all, ended ones by state (each state shown, 0 until one ends so).
        XCTAssertEqual(s["ckptfs_preloads_running"], 0)
        XCTAssertEqual(s["ckptfs_preloads_ended_total{state=\"done\"}"], 0)
        lock.withLock {
            snap.preloads = .init(running: 1, files: 10, filesDone: 4, bytes: 1000, bytesDone: 400, fetchedBytes: 700, requests: 9,
                                  ended: ["done": 2, "cancelled": 1])
        }
        s = samples(m)
        XCTAssertEqual(s["ckptfs_preloads_running"], 1)
        XCTAssertEqual(s["ckptfs_preload_files"], 10)
        XCTAssertEqual(s["ckptfs_preload_files_done"], 4)
        XCTAssertEqual(s["ckptfs_preload_bytes"], 1000)
        XCTAssertEqual(s["ckptfs_preload_bytes_done"], 400)
        XCTAssertEqual(s["ckptfs_preload_fetched_bytes_total"], 700)
        XCTAssertEqual(s["ckptfs_preload_requests_total"], 9)
        XCTAssertEqual(s["ckptfs_preloads_ended_total{state=\"done\"}"], 2)
        XCTAssertEqual(s["ckptfs_preloads_ended_total{state=\"cancelled\"}"], 1)
        XCTAssertEqual(s["ckptfs_preloads_ended_total{state=\"failed\"}"], 0)
        lock.withLock { snap.preloads.ended["done"] = 3 }
        XCTAssertEqual(samples(m)["ckptfs_preloads_ended_total{state=\"done\"}"], 3)

        // A second scrape with nothing changed shows the same values (the counters are not added twice).
        s = samples(m)
        XCTAssertEqual(s["ckptfs_cache_hits_total"], 7)
        lock.withLock { snap.cache.hits = 9 }
        XCTAssertEqual(samples(m)["ckptfs_cache_hits_total"], 9)
        lock.withLock { snap.cache.hits = 1 }
        XCTAssertEqual(samples(m)["ckptfs_cache_hits_total"], 1)
    }

    /// Every S3 call through the decorator is counted by operation and outcome, timed, and its bytes counted.
    func testTheClientDecoratorRecordsOperationsOutcomesAndBytes() async throws {
        let m = MountMetrics()
        let client = MetricsObjectClient(wrapping: MemoryObjectClient(buckets: ["b"]), factory: m.factory)
        _ = try await client.putObject("b", "k", body: .bytes(Array(repeating: 1, count: 1000)), options: PutOptions())
        _ = try await client.getObject("b", "k", range: 100..<400, ifMatch: nil, versionId: nil)
        _ = try await client.getObject("b", "k", range: 900..<2000, ifMatch: nil, versionId: nil) { _, _ in }
        do {
            _ = try await client.headObject("b", "missing", versionId: nil, ifMatch: nil)
            XCTFail("a missing key was found")
        } catch {
            XCTAssertEqual(error.code, .noSuchKey)
        }
        let s = samples(m)
        XCTAssertEqual(s[#"ckptfs_s3_requests_total{operation="PutObject",status="ok"}"#], 1)
        XCTAssertEqual(s[#"ckptfs_s3_requests_total{operation="GetObject",status="ok"}"#], 2)
        XCTAssertEqual(s[#"ckptfs_s3_requests_total{operation="HeadObject",status="NoSuchKey"}"#], 1)
        XCTAssertEqual(s[#"ckptfs_s3_sent_bytes_total{operation="PutObject"}"#], 1000)
        XCTAssertEqual(s[#"ckptfs_s3_received_bytes_total{operation="GetObject"}"#], 300 + 100, "a range past the end counts what the object holds")
        XCTAssertEqual(s[#"ckptfs_s3_request_duration_seconds_count{operation="GetObject"}"#], 2)
        let text = String(decoding: m.exposition(), as: UTF8.self)
        XCTAssertTrue(text.contains("# HELP ckptfs_s3_requests_total S3 requests by operation"), text)
        XCTAssertTrue(text.contains("# TYPE ckptfs_s3_request_duration_seconds histogram"), text)
    }

    /// The README's Metrics table lists exactly the metrics of MetricNames.swift, in order, with their types.
    func testTheReadmeTableListsEveryMetric() throws {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        let section = try XCTUnwrap(text.range(of: "\n## Metrics\n")).upperBound
        let end = text.range(of: "\n## ", range: section..<text.endIndex)?.lowerBound ?? text.endIndex
        let rows = text[section..<end].split(separator: "\n").filter { $0.hasPrefix("| `ckptfs_") }
        let listed = rows.map { row -> String in
            let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            return "\(cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`"))) \(cells[1])"
        }
        XCTAssertEqual(listed, MetricName.all.map { "\($0.name) \($0.kind.rawValue)" })
        XCTAssertEqual(Set(MetricName.all.map(\.name)).count, MetricName.all.count, "a name twice")
        for d in MetricName.all {
            XCTAssertTrue(d.name.hasPrefix("ckptfs_"), d.name)
            XCTAssertEqual(d.kind == .counter, d.name.hasSuffix("_total"), "\(d.name): counters, and only they, end in _total")
        }
    }
}
