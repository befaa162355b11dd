import CkptCache
import CkptFS
import CkptFUSE
import CkptS3
import CkptSystem
import Foundation
import Logging

/// The daemon of one mount (`ckptfs mount ... --foreground`): the file system core over the S3 client, its
/// crash recovery, the control socket, the FUSE session until the mount is gone, and the drain of the
/// write-back (on a signal, while the mount still serves; after an unmount from outside, before exiting).
struct MountDaemon {
    let target: S3URL
    /// Absolute, checked by `MountChecks.mountpoint`.
    let mountpoint: String
    let cacheDir: String
    let config: S3ClientConfiguration
    let cache: BlockCache
    let options: MountOptions
    let logger: Logger

    func serve() async throws(UserFacingFailure) {
        let logger = logger
        MountDaemon.raiseDescriptorLimit(logger: logger)
        MountDaemon.returnLargeBuffersWhenFreed()
        let metrics = options.metricsEndpoint.map { _ in MountMetrics() }
        // A preload through the control socket may hold up to `Preload.maxParallel` connections; they come on
        // top of those of the mount's readers, lookups and uploads, so a trainer's read never waits in the
        // transport's queue behind a preload's GETs (the preload also holds back while readers fetch).
        var config = self.config
        config.http.maxConnections += Preload.maxParallel
        let s3 = S3Client(configuration: config, logger: logger)
        var client: any ObjectClient = s3
        if let metrics { client = MetricsObjectClient(wrapping: client, factory: metrics.factory) }
        let fs: FileSystem
        do {
            var fsOptions = options.fileSystemOptions
            fsOptions.partChecksums = config.endpoint.scheme != "https"
            fs = try FileSystem(client: client, bucket: target.bucket, prefix: target.prefix, cache: cache,
                                options: fsOptions, logger: logger)
            // Files an earlier mount acknowledged but did not upload are queued again before anything is served.
            let r = try await fs.recover()
            if !r.requeued.isEmpty || !r.quarantined.isEmpty || r.abortedMultipart > 0 || r.tornTail {
                logger.notice("recovered write-back from the journal", metadata: [
                    "requeued": "\(r.requeued.count)", "quarantined": "\(r.quarantined.map { "\($0.key) -> \($0.path)" })",
                    "aborted.multipart": "\(r.abortedMultipart)", "journal.torn_tail": "\(r.tornTail)"])
            }
        } catch {
            throw UserFacingFailure(message: "cannot start the write-back in \(cacheDir): \(error)")
        }
        let credentials = config.credentialsProvider
        var metricsServer: MetricsServer?
        var metricsURL: String?
        let preloads = PreloadLedger()
        if let metrics, let address = options.metricsEndpoint {
            metrics.read { MountSnapshot(fs, credentials: credentials, s3Retries: s3.retries, preloads: preloads.snapshot) }
            let server = try await MetricsServer(address: address, render: metrics.exposition)
            var bound = address
            bound.port = await server.boundPort() ?? address.port
            let url = "http://\(bound)/metrics"
            metricsURL = url
            metricsServer = server
            logger.notice("serving metrics", metadata: ["metrics.url": "\(url)"])
        }
        let control = ControlServer(fs: fs, mountpoint: mountpoint, credentials: credentials, metricsURL: metricsURL,
                                    drainTimeoutSeconds: options.drainTimeout, preloads: preloads, logger: logger)
        try control.start()
        defer { control.stop() }
        logger.notice("mounting", metadata: ["s3.url": "\(target)", "mountpoint": "\(mountpoint)", "cache.dir": "\(cacheDir)",
                                            "cache.capacity": "\(cache.capacity)"])
        let ready = options.readyFD
        let adapter = FuseAdapter(fs: fs, logger: logger)
        let configuredDrain = options.drainTimeout
        // A signal: drain while the mount still serves (see Drain.swift), then FuseSession refuses changes
        // and unmounts.
        let drain: @Sendable (Int32) async -> Void = { sig in
            let state = DrainState(signal: sig, deadline: .now + .milliseconds(Int64(configuredDrain * 1000)), gate: adapter.gate)
            control.stopping.withLock { $0 = state }
            SystemdNotify.send("STOPPING=1\nSTATUS=draining uploads (\(state.signalName)), then unmounting")
            logger.notice("stopping: draining the write-back while the mount still serves, then unmounting",
                          metadata: ["signal": "\(state.signalName)", "drain.timeout_s": "\(configuredDrain)",
                                     "files.open_for_writing": "\(adapter.gate.openWriters)"])
            let left = await drainWriteBack(fs: fs, gate: adapter.gate, until: state.deadline)
            if !left.isEmpty {
                logger.warning("drain timed out or failed; unmounting anyway", metadata: [
                    "files": "\(left.map { "\($0.path): \($0.reason)" })", "files.open_for_writing": "\(adapter.gate.openWriters)"])
            }
        }
        do {
            try await FuseSession.run(adapter: adapter, mountpoint: mountpoint, options: kernelOptions, drain: drain) {
                if let fd = ready {
                    _ = write(fd, "OK\n", 3)
                    // The launcher has its answer. The number is kept, on /dev/null, rather than closed: a file
                    // opened later must never get it, since a late failure report still writes to it.
                    let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
                    if null >= 0 {
                        dup2(null, fd)
                        close(null)
                    }
                }
                SystemdNotify.send("READY=1\nSTATUS=mounted \(target) at \(mountpoint)")
            }
        } catch {
            throw UserFacingFailure(message: error.description)
        }
        logger.notice("unmounted", metadata: ["mountpoint": "\(mountpoint)"])
        // fusermount3 -u: finish queued uploads now, within the drain timeout (`ckptfs unmount` drained
        // before unmounting and sets it to what is left of its own; a signal drained before unmounting, and
        // only what is left of its deadline remains).
        let remaining: Double
        if let s = control.stopping.withLock({ $0 }) {
            remaining = max(0, (s.deadline - .now).seconds)
        } else {
            remaining = control.drainTimeout.withLock { $0 } ?? options.drainTimeout
        }
        let left = await fs.flushAll(under: "", timeout: .milliseconds(Int64(remaining * 1000)))
        await fs.finishCacheWrites()
        if left.isEmpty {
            logger.notice("write-back drained")
        } else {
            logger.error("not durable at exit; kept in the journal, the next mount with this cache dir uploads them",
                         metadata: ["files": "\(left.map { "\($0.path): \($0.reason)" })"])
        }
        await metricsServer?.stop()
    }

    /// The options the kernel mount gets (libfuse `-o` form): the source shown in /proc/mounts (commas would
    /// split it), the type `fuse.ckptfs`, and permission checks by the kernel against the shown owner and mode.
    var kernelOptions: [String] {
        var o = ["fsname=\(target.description.replacingOccurrences(of: ",", with: "_"))", "subtype=ckptfs", "default_permissions"]
        if options.allowOther { o.append("allow_other") }
        if options.readOnly { o.append("ro") }
        return o
    }

    /// Large buffers (1 MiB writes held for room, staging and upload chunks, GET parts) are mapped on their own
    /// and given back to the system when freed. With glibc's default, whose threshold for that rises to the
    /// size of such a block once one is freed, they came from malloc's arenas, where freed ones were kept: under
    /// 16 writers held at the dirty bound and 16 readers evicting the cache, resident memory crept from 215 to
    /// 262 MiB over 10 minutes while the heap in use peaked at 66 MiB (heaptrack); with this, it stayed within
    /// 140-190 MiB, for the same daemon CPU per GiB (bench/README.md, "Load test").
    static func returnLargeBuffersWhenFreed() {
        setMallocMmapThreshold(256 << 10)
    }

    /// Raises the soft limit on open descriptors to the hard one (getrlimit/setrlimit RLIMIT_NOFILE): a mount
    /// serving many readers, or uploading many files at once, needs more than the usual soft limit of 1,024.
    static func raiseDescriptorLimit(logger: Logger) {
        var rl = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &rl) == 0, rl.rlim_cur < rl.rlim_max else { return }
        let before = rl.rlim_cur
        rl.rlim_cur = rl.rlim_max
        if setrlimit(resource, &rl) == 0 {
            logger.info("raised the open-descriptor limit", metadata: ["from": "\(before)", "to": "\(rl.rlim_max)"])
        }
    }
}
