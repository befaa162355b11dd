import CkptCache
import CkptFS
import CkptS3
import CoreMetrics
import Foundation
import Prometheus
import Synchronization

/// What the metrics read from a running mount when they are scraped: the block cache's counters, the
/// write-back's state and totals, and the credentials' state. Nothing is polled between scrapes.
struct MountSnapshot: Sendable {
    var cache = CacheStats()
    var cacheCapacityBytes: Int64 = 0
    /// Read-only opens with direct I/O.
    var directOpens = 0
    var writeBack = WriteBack()
    /// S3 requests sent again after a failed attempt (S3Client.retries).
    var s3Retries = 0
    /// nil for anonymous requests (--no-sign-request).
    var credentials: CredentialsStatus?
    /// Preloads through the control socket (`ckptfs preload PATH`).
    var preloads = PreloadLedger.Snapshot()

    /// The numbers of the core's `WriteBackStatus` the metrics show.
    struct WriteBack: Sendable {
        var dirtyFiles = 0
        var dirtyBytes: Int64 = 0
        var oldestDirtySeconds: Double = 0
        /// Closed files waiting for their upload to start.
        var queued = 0
        var uploading = 0
        /// Dirty files whose last upload attempt failed.
        var failing = 0
        var conflicts = 0
        var uploadedFiles = 0
        var uploadedBytes: Int64 = 0
        var pendingDeletes = 0
        var stagingBytes: Int64 = 0
        var quarantined = 0
        var recovered = 0
    }
}

extension MountSnapshot {
    /// The snapshot of a running mount, read now.
    init(_ fs: FileSystem, credentials: CredentialsProvider?, s3Retries: Int = 0, preloads: PreloadLedger.Snapshot = .init()) {
        let stats = fs.stats
        let w = fs.writeBackStatus
        self.init(cache: stats.cache, cacheCapacityBytes: fs.cache.capacity, directOpens: stats.directOpens,
                  writeBack: WriteBack(dirtyFiles: w.dirtyFiles, dirtyBytes: w.dirtyBytes, oldestDirtySeconds: w.oldestDirtySeconds,
                                       queued: w.pending.count { $0.state == "queued" }, uploading: w.uploadsInFlight,
                                       failing: w.failures.count, conflicts: w.pending.count { $0.state == "conflict" },
                                       uploadedFiles: w.uploadedFiles, uploadedBytes: w.uploadedBytes,
                                       pendingDeletes: w.pendingDeletes, stagingBytes: w.stagingBytes,
                                       quarantined: w.quarantined.count, recovered: w.recovered),
                  s3Retries: s3Retries, credentials: credentials?.status, preloads: preloads)
    }
}

/// The metrics of one mount: a Prometheus registry fed two ways. S3 requests are recorded as they end
/// (`factory`, for `MetricsObjectClient`); everything else is read from `snapshot` when `exposition()` is
/// called (GET /metrics) and written into the registry then.
final class MountMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    /// The swift-metrics factory that writes into `registry`, with the help texts of `MetricName`.
    let factory: any MetricsFactory
    private let snapshot: Mutex<(@Sendable () -> MountSnapshot)?> = Mutex(nil)
    /// The last value of each counter mirrored from the core (its totals only grow; the registry's counters
    /// are moved by the difference).
    private let mirrored = Mutex<[String: Int64]>([:])

    init() {
        factory = DocumentedPrometheusFactory(registry: registry)
    }

    /// Where scrape-time values come from; set once the file system is up. Before, only S3 requests show.
    func read(from snapshot: @escaping @Sendable () -> MountSnapshot) {
        self.snapshot.withLock { $0 = snapshot }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric, with the scrape-time ones read now.
    func exposition() -> [UInt8] {
        if let read = snapshot.withLock({ $0 }) { update(from: read()) }
        return registry.emitToBuffer()
    }

    /// Writes `s` into the registry: gauges are set, counters move by what the core's totals grew since the last scrape.
    func update(from s: MountSnapshot) {
        mirror(MetricName.s3Retries, Int64(s.s3Retries))
        let c = s.cache
        mirror(MetricName.cacheHits, Int64(c.hits))
        mirror(MetricName.cacheMisses, Int64(c.misses))
        mirror(MetricName.cacheServedBytes, c.bytesServed)
        mirror(MetricName.cacheStoredBytes, c.bytesStored)
        mirror(MetricName.cacheEvictions, Int64(c.evictions))
        mirror(MetricName.cacheCorruptBlocks, Int64(c.corruptBlocks))
        mirror(MetricName.cacheStoreFailures, Int64(c.storeFailures))
        set(MetricName.cacheUsedBytes, Double(c.usedBytes))
        set(MetricName.cacheCapacityBytes, Double(s.cacheCapacityBytes))
        set(MetricName.cacheBlocks, Double(c.blocks))

        let w = s.writeBack
        set(MetricName.dirtyFiles, Double(w.dirtyFiles))
        set(MetricName.dirtyBytes, Double(w.dirtyBytes))
        set(MetricName.oldestDirtySeconds, w.oldestDirtySeconds)
        set(MetricName.uploadQueue, Double(w.queued))
        set(MetricName.uploadsInFlight, Double(w.uploading))
        set(MetricName.uploadFailing, Double(w.failing))
        set(MetricName.uploadConflicts, Double(w.conflicts))
        mirror(MetricName.uploadedFiles, Int64(w.uploadedFiles))
        mirror(MetricName.uploadedBytes, w.uploadedBytes)
        set(MetricName.pendingDeletes, Double(w.pendingDeletes))
        set(MetricName.stagingBytes, Double(w.stagingBytes))
        set(MetricName.quarantinedFiles, Double(w.quarantined))
        set(MetricName.recoveredFiles, Double(w.recovered))
        mirror(MetricName.directOpens, Int64(s.directOpens))

        let p = s.preloads
        set(MetricName.preloadsRunning, Double(p.running))
        set(MetricName.preloadFiles, Double(p.files))
        set(MetricName.preloadFilesDone, Double(p.filesDone))
        set(MetricName.preloadBytes, Double(p.bytes))
        set(MetricName.preloadBytesDone, Double(p.bytesDone))
        mirror(MetricName.preloadFetchedBytes, p.fetchedBytes)
        mirror(MetricName.preloadRequests, Int64(p.requests))
        for state in [PreloadProgress.State.done, .stoppedAtBound, .cancelled, .failed] {
            mirror(MetricName.preloadsEnded, Int64(p.ended[state.rawValue] ?? 0), labels: [("state", state.rawValue)])
        }

        if let cred = s.credentials {
            if let e = cred.expiration { set(MetricName.credentialsExpiry, e.timeIntervalSinceNow.rounded()) }
            mirror(MetricName.credentialsRefreshes, Int64(cred.refreshes))
            set(MetricName.credentialsRefreshFailures, Double(cred.consecutiveFailures))
        }
    }

    private func set(_ d: MetricDescriptor, _ value: Double) {
        registry.makeGauge(descriptor: d.prometheus).set(value)
    }

    private func mirror(_ d: MetricDescriptor, _ total: Int64, labels: [(String, String)] = []) {
        let counter = labels.isEmpty ? registry.makeCounter(descriptor: d.prometheus) : registry.makeCounter(descriptor: d.prometheus, labels: labels)
        let series = d.name + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        mirrored.withLock { last in
            let grown = total - (last[series] ?? 0)
            if grown < 0 {
                counter.reset()
                counter.increment(by: total)
            } else if grown > 0 {
                counter.increment(by: grown)
            }
            last[series] = total
        }
    }
}

/// `PrometheusMetricsFactory`, with the help text and buckets of our own metrics (`MetricName`): the registry
/// refuses one name with two help texts, so every metric of ours is made here or with the same help.
struct DocumentedPrometheusFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    private let plain: PrometheusMetricsFactory

    /// Latency buckets for S3 requests: 5 ms (a HEAD on loopback) to 2 minutes (a 5 GiB part on a slow link).
    static let durationBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
    ]

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        plain = PrometheusMetricsFactory(registry: registry)
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        guard let d = MetricName.descriptor(label) else { return plain.makeCounter(label: label, dimensions: dimensions) }
        return registry.makeCounter(descriptor: d.prometheus, labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        guard let d = MetricName.descriptor(label) else { return plain.makeTimer(label: label, dimensions: dimensions) }
        return registry.makeDurationHistogram(descriptor: d.prometheus, labels: dimensions, buckets: Self.durationBuckets)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        plain.makeFloatingPointCounter(label: label, dimensions: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        plain.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        plain.makeMeter(label: label, dimensions: dimensions)
    }

    func destroyCounter(_ handler: any CounterHandler) { plain.destroyCounter(handler) }
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { plain.destroyFloatingPointCounter(handler) }
    func destroyRecorder(_ handler: any RecorderHandler) { plain.destroyRecorder(handler) }
    func destroyMeter(_ handler: any MeterHandler) { plain.destroyMeter(handler) }
    func destroyTimer(_ handler: any TimerHandler) { plain.destroyTimer(handler) }
}

extension MetricDescriptor {
    /// The name and help text as the Prometheus registry takes them.
    var prometheus: MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: help) }
}
