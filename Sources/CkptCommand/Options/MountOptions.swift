import ArgumentParser
import CkptFS
import Foundation

/// The options of `ckptfs mount` beyond the S3 ones: the cache, the file system's behaviour, what the kernel
/// is told, and where the daemon logs. Every value is checked in `validate()`, so a bad one fails before
/// anything is contacted or mounted, with a message saying what to write instead.
struct MountOptions: ParsableArguments {
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
    @Flag(name: .customLong("cache-saves"), inversion: .prefixedNo,
          help: "Enter a file written here in the block cache when its upload lands, so reading it back after a remount on the same cache dir sends no GET; saves not read since take at most half the cache, a larger save is not entered (default on).")
    var cacheSaves = true
    @Flag(name: .customLong("keep-every-version"),
          help: "Upload every save of a file in order, none replaced by a newer one while it waits, so a versioned bucket keeps one version per save (ckptfs versions, NAME@versions); default off: a save still waiting is replaced by the next.")
    var keepEveryVersion = false
    @Option(name: .customLong("max-dirty"),
            help: "Most bytes of files written and not yet uploaded held on the cache disk, e.g. 20GiB; past it writes wait for uploads instead of filling the disk (default: half the cache disk's free space at mount, at least 16MiB).")
    var maxDirty: String?
    @Option(name: .customLong("stale-if-error"),
            help: "Seconds: while S3 is unreachable, what it confirmed of a file or directory within this long answers lookups, stat and open, so cached files stay readable during an outage (0: fail with EIO; default 3600).")
    var staleIfError: Double = 3600
    @Option(name: .customLong("small-file-get"),
            help: "A listed file of at most this size whose data is not cached is looked up with one GET of all of it (its body goes to the cache) instead of a HEAD, so listing it and reading it costs one request; 0: HEAD only, so `ls -l` downloads nothing (default 256KiB, at most the cache block size).")
    var smallFileGet: String = "256KiB"
    @Flag(name: .customLong("immutable"),
          help: "The bucket's objects never change (a published dataset): a file's version, size and mtime, once known, are trusted for the mount's life (no HEAD or LIST revalidates them; cached blocks are read with no request). New names still appear within --metadata-ttl; a changed or deleted object is not noticed.")
    var immutable = false
    @Flag(name: .customLong("read-only"), help: "Mount read-only: every change fails with EROFS.") var readOnly = false
    @Flag(name: .customLong("allow-other"), help: "Let other users access the mount (needs user_allow_other for non-root).")
    var allowOther = false
    @Option(help: "Owner (uid) shown for every file (default: the mounting user).") var uid: UInt32?
    @Option(help: "Group (gid) shown for every file (default: the mounting user's group).") var gid: UInt32?
    @Option(name: .customLong("file-mode"), help: "Permissions shown for files, octal (default 0644).") var fileMode: String = "0644"
    @Option(name: .customLong("dir-mode"), help: "Permissions shown for directories, octal (default 0755).") var dirMode: String = "0755"
    @Flag(help: "Stay in the foreground and log to stderr.") var foreground = false
    @Option(name: .customLong("log-file"), help: "Where the daemon logs (default: CACHE_DIR/ckptfs.log).")
    var logFile: String?
    @Option(name: .customLong("metrics-address"),
            help: "Serve Prometheus metrics on http://HOST:PORT/metrics, e.g. 127.0.0.1:9464 (a port alone means 127.0.0.1; default: no metrics).")
    var metricsAddress: String?
    @Option(name: .customLong("record"),
            help: "Record the blocks reads ask for, in the order they first ask, to FILE: an access profile that ckptfs preload --replay FILE fills a later run's cache with.")
    var record: String?
    /// Set by the launching `ckptfs mount` for the daemon it starts: the pipe to report "OK" or "ERR ..." on.
    @Option(name: .customLong("ready-fd"), help: .hidden) var readyFD: Int32?

    func validate() throws {
        if let c = cacheSize, MountChecks.parseSize(c) == nil {
            throw ValidationError("--cache-size '\(c)' is not a size; write it like 20GiB, 512MiB or a number of bytes")
        }
        if let d = maxDirty, (MountChecks.parseSize(d) ?? 0) < 1 << 20 {
            throw ValidationError("--max-dirty '\(d)' must be a size of at least 1MiB, like 20GiB")
        }
        guard let bytes = smallFileGetBytes, bytes <= 1 << 30 else {
            throw ValidationError("--small-file-get '\(smallFileGet)' must be a size up to 1GiB, like 256KiB (0 turns it off)")
        }
        guard staleIfError >= 0 else { throw ValidationError("--stale-if-error must be zero or more seconds, like 3600") }
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
        guard uploadDelay >= 0 else { throw ValidationError("--upload-delay must be zero or more seconds, like 0.5") }
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout must be zero or more seconds, like 120") }
        guard metadataTTL >= 0 else { throw ValidationError("--metadata-ttl must be zero or more seconds, like 30") }
        if let m = metricsAddress, case .failure(let e) = MetricsAddress.parse(m) {
            throw ValidationError("--metrics-address '\(m)': \(e.reason); write HOST:PORT, like 127.0.0.1:9464")
        }
        for (name, m) in [("--file-mode", fileMode), ("--dir-mode", dirMode)] {
            guard let v = UInt32(m, radix: 8), v <= 0o7777 else { throw ValidationError("\(name) '\(m)' is not an octal mode like 0644") }
        }
    }

    /// `--small-file-get` in bytes (0 turns it off); nil when it is not a size.
    var smallFileGetBytes: Int64? {
        smallFileGet.trimmingCharacters(in: .whitespaces) == "0" ? 0 : MountChecks.parseSize(smallFileGet)
    }

    /// Where the metrics are served, if they are. Call only after `validate()`.
    var metricsEndpoint: MetricsAddress? {
        metricsAddress.flatMap { try? MetricsAddress.parse($0).get() }
    }

    /// The core's options. Call only after `validate()` (it force-unwraps what that checked).
    var fileSystemOptions: FSOptions {
        var o = FSOptions()
        o.metadataTTL = .milliseconds(Int64(metadataTTL * 1000))
        o.uid = uid ?? getuid()
        o.gid = gid ?? getgid()
        o.fileMode = UInt32(fileMode, radix: 8)!
        o.dirMode = UInt32(dirMode, radix: 8)!
        o.readOnly = readOnly
        o.immutable = immutable
        o.requestSize = MountChecks.parseSize(readPartSize)!
        o.maxReadAhead = max(o.requestSize, MountChecks.parseSize(maxReadAhead)!)
        o.durableFsync = fsyncMode == "durable"
        o.storedMtimes = mtimeMode == "stored"
        o.wholeGetMaxSize = smallFileGetBytes!
        switch directReads {
        case "always": o.directReadMinSize = 0
        case "never": o.directReadMinSize = nil
        default: break  // auto: FSOptions' default
        }
        o.maxDirty = maxDirty.flatMap { MountChecks.parseSize($0) }
        o.staleIfError = .milliseconds(Int64(staleIfError * 1000))
        o.uploadDelay = .milliseconds(Int64(uploadDelay * 1000))
        o.conditionalWrites = conditionalWrites
        o.uploadWhileWriting = uploadWhileWriting
        o.keepEveryVersion = keepEveryVersion
        o.cacheSaves = cacheSaves
        o.recordAccess = record.map(MountChecks.absolute)
        return o
    }
}
