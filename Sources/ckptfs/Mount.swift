import ArgumentParser
import CkptCache
import CkptDigest
import CkptFS
import CkptFUSE
import CkptS3
import Foundation
import Logging

/// `ckptfs mount s3://BUCKET[/PREFIX] MOUNTPOINT`: checks everything it can before mounting; without
/// --foreground it starts the daemon and returns 0 only once the mount is live.
struct Mount: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mount a bucket (or a prefix of it) as a directory.")

    @Argument(help: "s3://BUCKET or s3://BUCKET/PREFIX") var url: String
    @Argument(help: "An existing, empty directory.") var mountpoint: String
    @OptionGroup var s3: S3Options

    @Option(name: .customLong("cache-dir"), help: "Block cache directory (default: ~/.cache/ckptfs/BUCKET-HASH).")
    var cacheDir: String?
    @Option(name: .customLong("cache-size"), help: "Cache bound, e.g. 20GiB (default: half the free space, 1 to 100 GiB).")
    var cacheSize: String?
    @Option(name: .customLong("metadata-ttl"), help: "Seconds attributes and listings are trusted.")
    var metadataTTL: Double = 30
    @Option(name: .customLong("read-part-size"), help: "Size of one ranged GET when streaming a file (default 16MiB).")
    var readPartSize: String = "16MiB"
    @Option(name: .customLong("max-read-ahead"), help: "Largest read-ahead window of one open file (default 128MiB).")
    var maxReadAhead: String = "128MiB"
    @Option(name: .customLong("direct-reads"),
            help: "auto: a file of 32MiB or more that is not cached yet is read without the kernel's page cache (one copy less on a cold stream; mmap still works); always: every read-only open of a clean file; never (default auto).")
    var directReads: String = "auto"
    @Option(name: .customLong("mtime"),
            help: "stored: a file's mtime is the one its writer stored (x-amz-meta-mtime: cp -p, rsync -t, tar x), else Last-Modified (a listed file is HEADed for it); last-modified: always Last-Modified, so listings and opens after them need no HEAD (default stored).")
    var mtimeMode: String = "stored"
    @Option(name: .customLong("fsync"), help: "durable: fsync() returns once the file is in S3; local: once it is on local disk.")
    var fsyncMode: String = "durable"
    @Option(name: .customLong("drain-timeout"), help: "Seconds SIGTERM/unmount wait for queued uploads (default 120).")
    var drainTimeout: Double = 120
    @Option(name: .customLong("upload-delay"), help: "Seconds a closed file waits before uploading, so a rename right after close is a local move (default 0.5).")
    var uploadDelay: Double = 0.5
    @Flag(inversion: .prefixedNo,
          help: "Upload with If-None-Match/If-Match, so an object someone else changed since it was opened here is never overwritten (a conflict keeps the local copy and is reported by status and flush).")
    var conditionalWrites = true
    @Flag(name: .customLong("upload-while-writing"), inversion: .prefixedNo,
          help: "Send a large new file written from the start in parts while it is still being written, so it is durable sooner after close; needs spare CPU and network while the file is written (default off).")
    var uploadWhileWriting = false
    @Flag(name: .customLong("debug-hold-uploads"), help: .hidden) var holdUploads = false
    @Flag(name: .customLong("read-only")) var readOnly = false
    @Flag(name: .customLong("allow-other"), help: "Let other users access the mount (needs user_allow_other for non-root).")
    var allowOther = false
    @Option var uid: UInt32?
    @Option var gid: UInt32?
    @Option(name: .customLong("file-mode")) var fileMode: String = "0644"
    @Option(name: .customLong("dir-mode")) var dirMode: String = "0755"
    @Flag var foreground = false
    @Option(name: .customLong("log-file"), help: "Where the daemon logs (default: CACHE_DIR/ckptfs.log).")
    var logFile: String?
    @Option(name: .customLong("ready-fd"), help: .hidden) var readyFD: Int32?

    func validate() throws {
        do { _ = try parseTarget(url) } catch { throw ValidationError(error.message) }
        if let c = cacheSize, MountChecks.parseSize(c) == nil {
            throw ValidationError("--cache-size '\(c)' is not a size; write it like 20GiB, 512MiB or a number of bytes")
        }
        for (name, v) in [("--read-part-size", readPartSize), ("--max-read-ahead", maxReadAhead)] {
            guard let n = MountChecks.parseSize(v), n >= 1 << 20, n <= 1 << 30 else {
                throw ValidationError("\(name) '\(v)' must be a size between 1MiB and 1GiB, like 8MiB")
            }
        }
        guard ["auto", "always", "never"].contains(directReads) else {
            throw ValidationError("--direct-reads must be 'auto', 'always' or 'never'")
        }
        guard mtimeMode == "stored" || mtimeMode == "last-modified" else {
            throw ValidationError("--mtime must be 'stored' (the writer's mtime, else Last-Modified) or 'last-modified'")
        }
        guard fsyncMode == "durable" || fsyncMode == "local" else {
            throw ValidationError("--fsync must be 'durable' (wait for S3) or 'local' (wait for local disk)")
        }
        guard uploadDelay >= 0 else { throw ValidationError("--upload-delay must be zero or more seconds") }
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout must be zero or more seconds") }
        guard metadataTTL >= 0 else { throw ValidationError("--metadata-ttl must be zero or more seconds") }
        for (name, m) in [("--file-mode", fileMode), ("--dir-mode", dirMode)] {
            guard let v = UInt32(m, radix: 8), v <= 0o7777 else { throw ValidationError("\(name) '\(m)' is not an octal mode like 0644") }
        }
    }

    func run() async throws {
        do {
            try await mount()
        } catch let f as UserFacingFailure {
            report(f.message)
            throw ExitCode(1)
        }
    }

    func report(_ message: String) {
        if let fd = readyFD {
            let line = Array("ERR \(message.replacingOccurrences(of: "\n", with: "\u{1}"))\n".utf8)
            _ = write(fd, line, line.count)
        }
        FileHandle.standardError.write(Data("ckptfs: error: \(message)\n".utf8))
    }

    func mount() async throws {
        let target = try parseTarget(url)
        let config: S3ClientConfiguration
        config = try await s3.resolve()
        // The directory of the control socket must be this user's own (see Control.checkPrivate).
        try Control.checkPrivate(Control.socketDirectory(), create: true)
        try MountChecks.fuseAvailable()
        let mp = try MountChecks.mountpoint(mountpoint)
        let cache = cacheDir.map(MountChecks.absolute) ?? defaultCacheDir(target, config)
        let logPath = logFile.map(MountChecks.absolute) ?? cache + "/ckptfs.log"
        try MountChecks.cacheDirectory(cache)

        if !foreground {
            // Check access here so the user sees the error on the terminal, then hand over to the daemon.
            try await checkBucket(target, config, logger: Logger(label: "ckptfs"))
            try spawnDaemon(logPath: logPath, cacheDir: cache)
            print("mounted \(target) at \(mp)")
            return
        }

        if readyFD != nil { try redirectOutput(to: logPath, cacheDir: cache) }
        let logger = s3.logger()
        try await checkBucket(target, config, logger: logger)
        let blockCache = try openCache(cache, size: cacheSize.flatMap(MountChecks.parseSize) ?? MountChecks.defaultCacheSize(for: cache))
        var o = FSOptions()
        o.metadataTTL = .milliseconds(Int64(metadataTTL * 1000))
        o.uid = uid ?? getuid()
        o.gid = gid ?? getgid()
        o.fileMode = UInt32(fileMode, radix: 8)!
        o.dirMode = UInt32(dirMode, radix: 8)!
        o.readOnly = readOnly
        o.requestSize = MountChecks.parseSize(readPartSize)!
        o.maxReadAhead = max(o.requestSize, MountChecks.parseSize(maxReadAhead)!)
        o.durableFsync = fsyncMode == "durable"
        o.storedMtimes = mtimeMode == "stored"
        switch directReads {
        case "always": o.directReadMinSize = 0
        case "never": o.directReadMinSize = nil
        default: break  // auto: FSOptions' default
        }
        o.holdUploads = holdUploads
        o.uploadDelay = .milliseconds(Int64(uploadDelay * 1000))
        o.conditionalWrites = conditionalWrites
        o.uploadWhileWriting = uploadWhileWriting
        let client = S3Client(configuration: config, logger: logger)
        let fs: FileSystem
        do {
            fs = try FileSystem(client: client, bucket: target.bucket, prefix: target.prefix, cache: blockCache, options: o, logger: logger)
            // Files an earlier mount acknowledged but did not upload are queued again before anything is served.
            let r = try await fs.recover()
            if !r.requeued.isEmpty || !r.quarantined.isEmpty || r.abortedMultipart > 0 || r.tornTail {
                logger.notice("recovered write-back from the journal", metadata: [
                    "requeued": "\(r.requeued.count)", "quarantined": "\(r.quarantined.map { "\($0.key) -> \($0.path)" })",
                    "aborted.multipart": "\(r.abortedMultipart)", "journal.torn_tail": "\(r.tornTail)"])
            }
        } catch {
            throw UserFacingFailure(message: "cannot start the write-back in \(cache): \(error)")
        }
        let control = ControlServer(fs: fs, mountpoint: mp, logger: logger)
        try control.start()
        defer { control.stop() }
        var mountOptions = ["fsname=\(target.description.replacingOccurrences(of: ",", with: "_"))", "subtype=ckptfs", "default_permissions"]
        if allowOther { mountOptions.append("allow_other") }
        if readOnly { mountOptions.append("ro") }
        logger.notice("mounting", metadata: ["s3.url": "\(target)", "mountpoint": "\(mp)", "cache.dir": "\(cache)",
                                            "cache.capacity": "\(blockCache.capacity)"])
        let ready = readyFD
        let adapter = FuseAdapter(fs: fs, logger: logger)
        let configuredDrain = holdUploads ? 0 : drainTimeout
        // A signal: drain while the mount still serves (see Drain.swift), then FuseSession refuses changes
        // and unmounts.
        let drain: @Sendable (Int32) async -> Void = { sig in
            let state = DrainState(signal: sig, deadline: .now + .milliseconds(Int64(configuredDrain * 1000)), gate: adapter.gate)
            control.stopping.withLock { $0 = state }
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
            try await FuseSession.run(adapter: adapter, mountpoint: mp, options: mountOptions, drain: drain) {
                if let fd = ready {
                    _ = write(fd, "OK\n", 3)
                    close(fd)
                }
            }
        } catch {
            throw UserFacingFailure(message: error.description)
        }
        logger.notice("unmounted", metadata: ["mountpoint": "\(mp)"])
        // fusermount3 -u: finish queued uploads now, within the drain timeout (`ckptfs unmount` drained
        // before unmounting and sets it to what is left of its own; a signal drained before unmounting, and
        // only what is left of its deadline remains).
        let remaining: Double
        if let s = control.stopping.withLock({ $0 }) {
            remaining = max(0, (s.deadline - .now).seconds)
        } else {
            remaining = holdUploads ? 0 : control.drainTimeout.withLock { $0 } ?? drainTimeout
        }
        let left = await fs.flushAll(under: "", timeout: .milliseconds(Int64(remaining * 1000)))
        await fs.finishCacheWrites()
        if left.isEmpty {
            logger.notice("write-back drained")
        } else {
            logger.error("not durable at exit; kept in the journal, the next mount with this cache dir uploads them",
                         metadata: ["files": "\(left.map { "\($0.path): \($0.reason)" })"])
        }
    }

    /// HeadBucket within `--check-timeout` (see `S3Options.withinCheckDeadline`).
    func checkBucket(_ target: S3URL, _ config: S3ClientConfiguration, logger: Logger) async throws(UserFacingFailure) {
        try await s3.withinCheckDeadline(config, what: "HeadBucket \(target)") { config in
            try await S3Client(configuration: config, logger: logger).headBucket(target.bucket)
        }
    }

    func defaultCacheDir(_ target: S3URL, _ config: S3ClientConfiguration) -> String {
        let base = ProcessInfo.processInfo.environment["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")
        let id = Digest.sha256("\(config.endpoint)\n\(target.bucket)\n\(target.prefix)").hexString.prefix(12)
        return "\(base)/ckptfs/\(target.bucket)-\(id)"
    }

    /// Opens the cache; a mount that has just been unmounted may still be releasing it, so wait briefly.
    func openCache(_ dir: String, size: Int64) throws(UserFacingFailure) -> BlockCache {
        var last: CacheError?
        for _ in 0..<50 {
            do { return try BlockCache(directory: dir, capacity: size) } catch {
                last = error
                guard error.message.contains("in use") else { break }
                usleep(100_000)
            }
        }
        throw UserFacingFailure(message: last?.description ?? "cannot open the cache")
    }

    func redirectOutput(to logPath: String, cacheDir: String) throws(UserFacingFailure) {
        try? FileManager.default.createDirectory(atPath: cacheDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw UserFacingFailure(message: "cannot open the log file \(logPath): \(String(cString: strerror(errno)))\n"
                + "  fix: name a file this user can write with --log-file FILE (by default it is ckptfs.log in the cache directory)")
        }
        dup2(fd, 1)
        dup2(fd, 2)
        close(fd)
    }

    /// Starts `ckptfs mount ... --foreground --ready-fd 3` in a new session and waits for it to report.
    func spawnDaemon(logPath: String, cacheDir: String) throws(UserFacingFailure) {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw UserFacingFailure(message: "pipe: \(String(cString: strerror(errno)))") }
        let (r, w) = (pipeFDs[0], pipeFDs[1])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, w, 3)
        posix_spawn_file_actions_addclose(&actions, r)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, 0x80)  // POSIX_SPAWN_SETSID (glibc), not exported to Swift: a new session
        let exe = "/proc/self/exe"
        var args = CommandLine.arguments
        args += ["--foreground", "--ready-fd", "3"]
        if logFile == nil { args += ["--log-file", logPath] }
        if cacheDir != self.cacheDir { args += ["--cache-dir", cacheDir] }
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attr, argv, environ)
        close(w)
        guard rc == 0 else {
            close(r)
            throw UserFacingFailure(message: "could not start the ckptfs daemon: \(String(cString: strerror(rc)))")
        }
        // Wait for "OK" or "ERR message" (or the daemon dying: EOF).
        var line = [UInt8]()
        var byte: UInt8 = 0
        while read(r, &byte, 1) == 1 && byte != UInt8(ascii: "\n") { line.append(byte) }
        close(r)
        let text = String(decoding: line, as: UTF8.self)
        if text == "OK" { return }
        if text.hasPrefix("ERR ") {
            throw UserFacingFailure(message: String(text.dropFirst(4)).replacingOccurrences(of: "\u{1}", with: "\n"))
        }
        var status: Int32 = 0
        waitpid(pid, &status, WNOHANG)
        throw UserFacingFailure(message: "the ckptfs daemon exited before the mount was live; see \(logPath)")
    }
}

/// `ckptfs unmount MOUNTPOINT`
struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount a ckptfs mount.")
    @Argument var mountpoint: String
    @Option(name: .customLong("drain-timeout"), help: "Seconds to wait for queued uploads before unmounting (default 120).")
    var drainTimeout: Double = 120

    func run() throws {
        let path = MountChecks.absolute(mountpoint)
        guard let m = MountChecks.mounts().last(where: { $0.path == path }) else {
            throw fail("\(path) is not mounted")
        }
        guard m.type == "fuse.ckptfs" else { throw fail("\(path) is a \(m.type) mount, not ckptfs; use umount") }
        // A daemon killed with -9 leaves a dead mount ("Transport endpoint is not connected"): there is
        // nothing to drain, so detach it (lazily: a process may still have a file or its cwd there).
        if MountChecks.deadFuseMount(path) != nil {
            if let problem = FuseSession.unmount(path, lazy: true) { throw fail(problem) }
            FileHandle.standardError.write(Data(("ckptfs: note: the daemon of \(path) was gone; detached the dead mount. Files it "
                + "had not uploaded stay in its cache directory's journal; the next mount with that cache directory uploads them.\n").utf8))
            return
        }
        // Drain first: uploads finish while the mount is still there.
        if let data = try? Control.call(path, .init(cmd: "flush", path: "", timeout: drainTimeout)),
           let r = try? JSONDecoder().decode(Control.FlushReply.self, from: data), !r.ok {
            var msg = "ckptfs: warning: \(r.notDurable.count) file(s) are not durable in S3 (waited up to \(Int(drainTimeout)) s); "
                + "they stay in the journal and the next mount with the same cache dir uploads them:"
            for n in r.notDurable { msg += "\n  \(n.path): \(n.reason)" }
            FileHandle.standardError.write(Data((msg + "\n").utf8))
        }
        _ = try? Control.call(path, .init(cmd: "unmounting", timeout: 0))
        if let problem = FuseSession.unmount(path, lazy: false) { throw fail(problem) }
        // The daemon exits once the kernel has let go; give it a moment to release its cache.
        for _ in 0..<50 where MountChecks.isMounted(path) { usleep(100_000) }
    }
}
