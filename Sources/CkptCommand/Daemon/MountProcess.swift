import CkptCache
import CkptSystem
import CkptDigest
import CkptS3
import Foundation
import Logging

/// What `ckptfs mount` does after its arguments are valid. It resolves the configuration and checks the
/// credentials, the control socket directory, FUSE, the mount point, the cache directory and the bucket, each
/// failing with its cause and fix. Then, without `--foreground`, it starts the daemon (`DaemonLauncher`) and
/// returns once the mount is live; with it (the daemon itself), it serves the mount until it is unmounted
/// (`MountDaemon`).
struct MountProcess {
    let url: String
    let mountpoint: String
    let s3: S3Options
    let options: MountOptions

    func run() async throws(UserFacingFailure) {
        let target = try parseTarget(url)
        let config = try await s3.resolve()
        // The directory of the control socket must be this user's own (see Control.checkPrivate).
        try Control.checkPrivate(Control.socketDirectory(), create: true)
        try MountChecks.fuseAvailable()
        let mp = try MountChecks.mountpoint(mountpoint)
        let cache = options.cacheDir.map(MountChecks.absolute) ?? defaultCacheDir(target, config)
        let logPath = options.logFile.map(MountChecks.absolute) ?? cache + "/ckptfs.log"
        try MountChecks.cacheDirectory(cache)
        if let record = options.record {
            // The daemon writes the access profile there; say now, on the terminal, if it cannot.
            let path = MountChecks.absolute(record)
            let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                throw UserFacingFailure(message: "cannot write the access profile \(path) (--record): \(String(cString: strerror(errno)))\n"
                    + "  fix: give --record a file in a directory this user can write")
            }
            close(fd)
        }

        if !options.foreground {
            // Check access here so the user sees the error on the terminal, then hand over to the daemon.
            try await checkBucket(target, config, logger: Logger(label: "ckptfs"))
            try DaemonLauncher(options: options).spawn(logPath: logPath, cacheDir: cache)
            print("mounted \(target) at \(mp)")
            return
        }

        if options.readyFD != nil { try DaemonLauncher.redirectOutput(to: logPath, cacheDir: cache) }
        let logger = s3.logger()
        try await checkBucket(target, config, logger: logger)
        let size = options.cacheSize.flatMap(MountChecks.parseSize) ?? MountChecks.defaultCacheSize(for: cache)
        let blockCache = try openCache(cache, size: size)
        let daemon = MountDaemon(target: target, mountpoint: mp, cacheDir: cache, config: config, cache: blockCache,
                                 options: options, logger: logger)
        try await daemon.serve()
    }

    /// Tells the user (stderr) and, for a daemon, the launching `ckptfs mount` (the ready pipe) why the mount failed.
    func report(_ message: String) {
        if let fd = options.readyFD {
            let line = Array("ERR \(message.replacingOccurrences(of: "\n", with: "\u{1}"))\n".utf8)
            _ = write(fd, line, line.count)
        }
        FileHandle.standardError.write(Data("ckptfs: error: \(message)\n".utf8))
    }

    /// HeadBucket within `--check-timeout` (see `S3Options.withinCheckDeadline`).
    func checkBucket(_ target: S3URL, _ config: S3ClientConfiguration, logger: Logger) async throws(UserFacingFailure) {
        try await s3.withinCheckDeadline(config, what: "HeadBucket \(target)") { config in
            try await S3Client(configuration: config, logger: logger).headBucket(target.bucket)
        }
    }

    /// `$XDG_CACHE_HOME/ckptfs/BUCKET-HASH` (else `~/.cache/...`), the hash over endpoint, bucket and prefix.
    func defaultCacheDir(_ target: S3URL, _ config: S3ClientConfiguration) -> String {
        let base = ProcessInfo.processInfo.environment["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")
        let id = Digest.sha256("\(config.endpoint)\n\(target.bucket)\n\(target.prefix)").hexString.prefix(12)
        return "\(base)/ckptfs/\(target.bucket)-\(id)"
    }

    /// Opens the cache. A mount unmounted from outside (`fusermount3 -u`, a signal) may still be exiting and
    /// holding it: wait up to 5 s for that process (named in the lock file) to exit, then try once more.
    func openCache(_ dir: String, size: Int64) throws(UserFacingFailure) -> BlockCache {
        do { return try BlockCache(directory: dir, capacity: size) } catch {
            guard let holder = error.holder else { throw UserFacingFailure(message: error.description) }
            // Gone already (nil: ESRCH) or gone within the wait: the lock is free.
            if let exit = ProcessExit(pid: holder), !exit.wait(timeout: .seconds(5)) {
                throw UserFacingFailure(message: error.description)
            }
            do { return try BlockCache(directory: dir, capacity: size) } catch { throw UserFacingFailure(message: error.description) }
        }
    }
}
