// What a preload reports: its plan before it starts, its progress, and what a check or an eviction found.
import CkptCache
import CkptS3
import Foundation
import Synchronization

/// What a preload is about to do, said before it starts: what was listed, this rank's share, and how much of it
/// fits under the cache's fill bound (all sizes in bytes of object data; `shareStoredBytes` and `bound` count
/// what the cache stores, a 4 KiB header per 1 MiB block included).
public struct PreloadPlan: Sendable, Codable, Equatable {
    public var listedFiles = 0
    public var listedBytes: Int64 = 0
    public var share = PreloadShare.all
    public var shareFiles = 0
    public var shareBytes: Int64 = 0
    /// What the share takes in the cache.
    public var shareStoredBytes: Int64 = 0
    /// The most the cache keeps (90% of its capacity) and its capacity.
    public var bound: Int64 = 0
    public var capacity: Int64 = 0
    /// The files (the first ones of the share, in key order) and bytes this preload covers: the whole share, or
    /// what fits under the bound.
    public var files = 0
    public var bytes: Int64 = 0
    /// Paths asked for that name nothing in S3.
    public var missing: [String] = []
    /// A replay's byte budget (`bound` is the smaller of it and the cache's bound); nil for a preload of paths.
    public var budget: Int64?

    /// The share does not fit under the bound: the preload covers its first `files` files (a replay: its first
    /// `bytes` bytes of blocks) and stops there.
    public var overBound: Bool { files < shareFiles || bytes < shareBytes }

    public init() {}

    init(listedFiles: Int, listedBytes: Int64, share: PreloadShare, shareFiles: Int, shareBytes: Int64, bound: Int64,
         capacity: Int64, missing: [String]) {
        self.listedFiles = listedFiles
        self.listedBytes = listedBytes
        self.share = share
        self.shareFiles = shareFiles
        self.shareBytes = shareBytes
        self.bound = bound
        self.capacity = capacity
        self.missing = missing
    }
}

/// One file a preload could not cache, and why.
public struct PreloadFailure: Sendable, Codable, Equatable {
    public var path: String
    public var reason: String
}

/// How far a preload is (`PreloadRun.progress`); bytes are object data.
public struct PreloadProgress: Sendable, Codable, Equatable {
    public enum State: String, Sendable, Codable {
        /// Fetching.
        case running
        /// Every file of the plan is cached.
        case done
        /// The plan's files are cached (or failed), and the share did not fit under the cache's bound: the rest
        /// was not preloaded.
        case stoppedAtBound
        /// Cancelled (Ctrl-C, a closed control connection, the mount stopping): what was stored stays cached.
        case cancelled
        /// Stopped early: the cache disk is full, or S3 could not be reached; or done with files that failed.
        case failed
    }

    public var state: State = .running
    public var files = 0
    public var filesDone = 0
    public var bytes: Int64 = 0
    /// Bytes of the plan cached now (found cached, fetched, or brought by a reader's fetch meanwhile).
    public var bytesDone: Int64 = 0
    /// Bytes received by this preload's GETs, and those GETs.
    public var bytesFetched: Int64 = 0
    public var requests = 0
    /// Bytes found cached and sound when the preload came to them.
    public var bytesAlreadyCached: Int64 = 0
    public var elapsedSeconds: Double = 0
    /// Files that failed (changed or deleted in S3 meanwhile, S3 errors); the first 100 of them are listed.
    public var filesFailed = 0
    public var failures: [PreloadFailure] = []
    /// Why the preload stopped early, when it did.
    public var stopReason: String?

    /// Download rate so far, bytes per second (0 before the first second's worth).
    public var bytesPerSecond: Double { elapsedSeconds > 0 ? Double(bytesFetched) / elapsedSeconds : 0 }

    public init() {}

    init(files: Int, bytes: Int64) {
        self.files = files
        self.bytes = bytes
    }

    /// Seconds until the plan is cached at the rate so far; nil while there is no rate yet.
    public var etaSeconds: Double? {
        let rate = bytesPerSecond
        guard rate > 0 else { return nil }
        return Double(max(0, bytes - bytesDone)) / rate
    }
}

/// What `Preloader.check` found: how much of the objects the cache holds (by the cache's index; checksums are
/// checked when blocks are read or preloaded).
public struct PreloadCheck: Sendable, Codable, Equatable {
    public struct File: Sendable, Codable, Equatable {
        public var path: String
        public var bytes: Int64
        public var bytesCached: Int64
    }

    public var files = 0
    /// Files whose every block is cached (empty files count as cached).
    public var filesCached = 0
    public var bytes: Int64 = 0
    public var bytesCached: Int64 = 0
    /// Each file, in key order (only when asked for).
    public var perFile: [File]?
}

/// What `Preloader.evict` dropped from the cache.
public struct PreloadEviction: Sendable, Codable, Equatable {
    public var files = 0
    public var blocks = 0
    /// Bytes freed in the cache (headers included).
    public var bytesFreed: Int64 = 0
}
