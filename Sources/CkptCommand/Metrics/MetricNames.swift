// Every metric `ckptfs mount --metrics-address HOST:PORT` serves on GET /metrics (Prometheus text format 0.0.4),
// in one place: names, types, labels and help texts. The README's "Metrics" table lists the same names in the
// same order (CkptCommandTests checks that), so a new metric is added here and there.

/// One exported metric family.
struct MetricDescriptor: Sendable, Hashable {
    enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    /// The Prometheus name, `ckptfs_...`; counters end in `_total`, units are seconds and bytes.
    let name: String
    let kind: Kind
    /// Label names; each label's values are described in `help`.
    let labels: [String]
    let help: String
}

/// The metric families, grouped by where their values come from.
enum MetricName {
    // S3 requests, recorded as each request ends (MetricsObjectClient).
    static let s3Requests = MetricDescriptor(
        name: "ckptfs_s3_requests_total", kind: .counter, labels: ["operation", "status"],
        help: "S3 requests by operation (GetObject, PutObject, UploadPart, ...) and outcome: status is ok, or the S3 error code of a request that failed after the client's retries (NoSuchKey, PreconditionFailed, SlowDown, ...)")
    static let s3RequestDuration = MetricDescriptor(
        name: "ckptfs_s3_request_duration_seconds", kind: .histogram, labels: ["operation"],
        help: "Time from the start of an S3 request to its outcome, retries included, by operation")
    static let s3Retries = MetricDescriptor(
        name: "ckptfs_s3_retries_total", kind: .counter, labels: [],
        help: "S3 requests sent again after a failed attempt (503 SlowDown, 500, timeouts, resets), each retry once")
    static let s3SentBytes = MetricDescriptor(
        name: "ckptfs_s3_sent_bytes_total", kind: .counter, labels: ["operation"],
        help: "Body bytes of S3 requests that succeeded (PutObject, UploadPart), by operation")
    static let s3ReceivedBytes = MetricDescriptor(
        name: "ckptfs_s3_received_bytes_total", kind: .counter, labels: ["operation"],
        help: "Object bytes of GetObject requests that succeeded")

    // The block cache, read from the core at scrape time.
    static let cacheHits = MetricDescriptor(
        name: "ckptfs_cache_hits_total", kind: .counter, labels: [], help: "Block reads answered by the block cache")
    static let cacheMisses = MetricDescriptor(
        name: "ckptfs_cache_misses_total", kind: .counter, labels: [], help: "Block reads the block cache could not answer (fetched from S3)")
    static let cacheServedBytes = MetricDescriptor(
        name: "ckptfs_cache_served_bytes_total", kind: .counter, labels: [], help: "Bytes read from the block cache")
    static let cacheStoredBytes = MetricDescriptor(
        name: "ckptfs_cache_stored_bytes_total", kind: .counter, labels: [], help: "Bytes written into the block cache")
    static let cacheEvictions = MetricDescriptor(
        name: "ckptfs_cache_evictions_total", kind: .counter, labels: [], help: "Blocks evicted from the block cache (least recently used first)")
    static let cacheCorruptBlocks = MetricDescriptor(
        name: "ckptfs_cache_corrupt_blocks_total", kind: .counter, labels: [], help: "Cached blocks that failed their checksum, deleted and fetched again")
    static let cacheStoreFailures = MetricDescriptor(
        name: "ckptfs_cache_store_failures_total", kind: .counter, labels: [], help: "Blocks not cached because the cache disk was full (they were still served)")
    static let cacheUsedBytes = MetricDescriptor(
        name: "ckptfs_cache_used_bytes", kind: .gauge, labels: [], help: "Bytes the block cache holds")
    static let cacheCapacityBytes = MetricDescriptor(
        name: "ckptfs_cache_capacity_bytes", kind: .gauge, labels: [], help: "Bound of the block cache (--cache-size)")
    static let cacheBlocks = MetricDescriptor(
        name: "ckptfs_cache_blocks", kind: .gauge, labels: [], help: "Blocks in the block cache")

    // The write-back, read from the core at scrape time.
    static let dirtyFiles = MetricDescriptor(
        name: "ckptfs_dirty_files", kind: .gauge, labels: [], help: "Files with local changes not yet durable in S3 (open, queued, uploading or in conflict)")
    static let dirtyBytes = MetricDescriptor(
        name: "ckptfs_dirty_bytes", kind: .gauge, labels: [], help: "Bytes of the dirty files")
    static let oldestDirtySeconds = MetricDescriptor(
        name: "ckptfs_oldest_dirty_seconds", kind: .gauge, labels: [], help: "Age of the oldest dirty file's version, 0 when none")
    static let uploadQueue = MetricDescriptor(
        name: "ckptfs_upload_queue_files", kind: .gauge, labels: [], help: "Closed files waiting for their upload to start")
    static let uploadsInFlight = MetricDescriptor(
        name: "ckptfs_uploads_in_flight", kind: .gauge, labels: [], help: "Files being uploaded")
    static let uploadFailing = MetricDescriptor(
        name: "ckptfs_upload_failing_files", kind: .gauge, labels: [], help: "Dirty files whose last upload attempt failed (they are retried; ckptfs status says why)")
    static let uploadConflicts = MetricDescriptor(
        name: "ckptfs_upload_conflicts", kind: .gauge, labels: [], help: "Files stopped by a conflict: someone else changed the object (not retried; rename to keep the local copy)")
    static let uploadedFiles = MetricDescriptor(
        name: "ckptfs_uploaded_files_total", kind: .counter, labels: [], help: "Files uploaded and confirmed durable")
    static let uploadedBytes = MetricDescriptor(
        name: "ckptfs_uploaded_bytes_total", kind: .counter, labels: [], help: "Bytes of the files uploaded and confirmed durable")
    static let pendingDeletes = MetricDescriptor(
        name: "ckptfs_pending_deletes", kind: .gauge, labels: [], help: "Deletes (unlink, rmdir, renamed-away names) journaled and not applied in S3 yet")
    static let stagingBytes = MetricDescriptor(
        name: "ckptfs_staging_bytes", kind: .gauge, labels: [], help: "Bytes the staging area takes on the cache disk")
    static let quarantinedFiles = MetricDescriptor(
        name: "ckptfs_quarantined_files", kind: .gauge, labels: [], help: "Staged files that failed their checksum at recovery, moved to CACHE_DIR/lost+found and not uploaded")
    static let recoveredFiles = MetricDescriptor(
        name: "ckptfs_recovered_files", kind: .gauge, labels: [], help: "Files recovered from the journal when the mount started")
    static let directOpens = MetricDescriptor(
        name: "ckptfs_direct_io_opens_total", kind: .counter, labels: [], help: "Read-only opens served with direct I/O (--direct-reads)")

    // Preloads through the control socket (`ckptfs preload PATH`), read from the control server at scrape time.
    static let preloadsRunning = MetricDescriptor(
        name: "ckptfs_preloads_running", kind: .gauge, labels: [], help: "Preloads running now (ckptfs status lists them)")
    static let preloadFiles = MetricDescriptor(
        name: "ckptfs_preload_files", kind: .gauge, labels: [], help: "Files in the plans of the preloads running now (this node's share)")
    static let preloadFilesDone = MetricDescriptor(
        name: "ckptfs_preload_files_done", kind: .gauge, labels: [], help: "Files of those plans that are cached (fetched, or found cached)")
    static let preloadBytes = MetricDescriptor(
        name: "ckptfs_preload_bytes", kind: .gauge, labels: [], help: "Bytes in the plans of the preloads running now")
    static let preloadBytesDone = MetricDescriptor(
        name: "ckptfs_preload_bytes_done", kind: .gauge, labels: [], help: "Bytes of those plans that are cached; with ckptfs_preload_bytes, the progress")
    static let preloadFetchedBytes = MetricDescriptor(
        name: "ckptfs_preload_fetched_bytes_total", kind: .counter, labels: [], help: "Bytes that preloads' GETs received (running and ended preloads)")
    static let preloadRequests = MetricDescriptor(
        name: "ckptfs_preload_requests_total", kind: .counter, labels: [], help: "GETs that preloads sent (running and ended preloads)")
    static let preloadsEnded = MetricDescriptor(
        name: "ckptfs_preloads_ended_total", kind: .counter, labels: ["state"], help: "Preloads that ended, by how: done, stoppedAtBound (the share did not fit in the cache), cancelled, failed")

    // Credentials, read from the credentials provider at scrape time.
    static let credentialsExpiry = MetricDescriptor(
        name: "ckptfs_credentials_expiry_seconds", kind: .gauge, labels: [], help: "Seconds until the credentials in use expire (negative once expired); absent for keys that do not expire")
    static let credentialsRefreshes = MetricDescriptor(
        name: "ckptfs_credentials_refreshes_total", kind: .counter, labels: [], help: "Times temporary credentials were replaced by fresh ones")
    static let credentialsRefreshFailures = MetricDescriptor(
        name: "ckptfs_credentials_refresh_failures", kind: .gauge, labels: [], help: "Refreshes that failed in a row since the last success (0 when the last one worked); ckptfs status shows the error and the fix")

    /// Every family, in the order of the README's table.
    static let all: [MetricDescriptor] = [
        s3Requests, s3RequestDuration, s3Retries, s3SentBytes, s3ReceivedBytes,
        cacheHits, cacheMisses, cacheServedBytes, cacheStoredBytes, cacheEvictions, cacheCorruptBlocks, cacheStoreFailures,
        cacheUsedBytes, cacheCapacityBytes, cacheBlocks,
        dirtyFiles, dirtyBytes, oldestDirtySeconds, uploadQueue, uploadsInFlight, uploadFailing, uploadConflicts,
        uploadedFiles, uploadedBytes, pendingDeletes, stagingBytes, quarantinedFiles, recoveredFiles, directOpens,
        preloadsRunning, preloadFiles, preloadFilesDone, preloadBytes, preloadBytesDone, preloadFetchedBytes, preloadRequests,
        preloadsEnded,
        credentialsExpiry, credentialsRefreshes, credentialsRefreshFailures,
    ]

    /// The family named `name`, if it is ours.
    static func descriptor(_ name: String) -> MetricDescriptor? { byName[name] }

    private static let byName: [String: MetricDescriptor] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })
}
