import CkptFS
import CkptS3
import Foundation

// The messages of the control socket: one JSON line each way (see `Control.call`).
extension Control {
    /// What the command line asks: `cmd` is "flush" (`path` under the mount, `timeout` seconds or nil for no
    /// limit), "status", "unmounting" (`timeout`: how long the daemon may still drain after the unmount), or
    /// "preload" (`preload`; answered with a stream of `PreloadEvent` lines, see PreloadControl.swift),
    /// "versions" or "restore" (`path`; see `VersionsReply`).
    struct Request: Codable {
        var cmd: String
        var path: String?
        var timeout: Double?
        var preload: PreloadRequest?
        /// "restore": the version to restore (`versionId`), or the newest at or before `time` (ISO 8601).
        var versionId: String? = nil
        var time: Date? = nil
    }

    /// The answer to "versions" (`history`) and "restore" (`restored`), or why it failed (`failure`, and its errno).
    struct VersionsReply: Codable {
        var history: FileHistory?
        var restored: FileVersion?
        var failure: String?
        var errno: Int32?
    }

    /// `ckptfs preload` against a mount: what to list, which share, and what to do with it.
    struct PreloadRequest: Codable {
        /// "fetch" (preload), "check" (how much is cached), "evict" (drop from the cache) or "replay" (the blocks of
        /// the access profile `profile`, an absolute path the daemon reads, up to `budget` bytes).
        var action: String
        /// Paths under the mount ("" for all of it), each a file or a directory.
        var paths: [String]
        var share: PreloadShare
        /// Most GETs in flight.
        var parallel: Int
        /// "check": each file's part too.
        var perFile: Bool
        /// Seconds between progress lines.
        var interval: Double
        var profile: String? = nil
        var budget: Int64? = nil
        /// "fetch" and "replay": answer with the plan and go on in the daemon, not tied to the connection
        /// (`ckptfs status` shows it; unmounting cancels it).
        var background: Bool? = nil
    }

    /// One line of the daemon's answer to "preload": the plan (first), progress (every `interval`, and once more
    /// with `final` at the end), or the answer to "check" or "evict", or why it failed.
    struct PreloadEvent: Codable {
        var plan: PreloadPlan?
        var progress: PreloadProgress?
        var check: PreloadCheck?
        var eviction: PreloadEviction?
        var error: String?
        var final: Bool?
    }

    /// A preload running in a mount, for `status`.
    struct RunningPreload: Codable {
        /// The paths it was given, under the mount.
        var paths: [String]
        var plan: PreloadPlan
        var progress: PreloadProgress
    }

    /// What the daemon answers a request it refuses.
    struct ErrorReply: Codable {
        var error: String
    }

    struct NotDurable: Codable {
        var path: String
        var reason: String
    }

    struct FlushReply: Codable {
        var ok: Bool
        var notDurable: [NotDurable]
    }

    struct StatusReply: Codable {
        var writeBack: WriteBackStatus
        var cacheUsedBytes: Int64
        var cacheCapacityBytes: Int64
        var cacheBlocks: Int
        var cacheHits: Int
        var cacheMisses: Int
        var cacheHitRatio: Double
        var getRequests: Int
        var bytesDownloaded: Int64
        var headRequests: Int
        var listRequests: Int
        var putRequests: Int
        var directOpens: Int
        /// Blocks entered in the cache from saves that landed (`--cache-saves`), since the mount.
        var cacheSeededBlocks: Int?
        /// Absent for anonymous requests (--no-sign-request).
        var credentials: CredentialsReport?
        /// Where the metrics are served (`--metrics-address`), absent when they are not.
        var metricsURL: String?
        /// The mount's `--drain-timeout`: how long `ckptfs unmount` (and umount with the helper) waits for uploads.
        var drainTimeoutSeconds: Double?
        /// Present while the daemon drains before unmounting, after a signal.
        var stopping: Stopping?
        /// Preloads running now (`ckptfs preload` against this mount).
        var preloads: [RunningPreload]?
    }

    struct Stopping: Codable {
        var signal: String
        /// Seconds left before the drain gives up.
        var drainSecondsLeft: Double
        /// True once the drain is over: every change fails with EROFS until the mount is gone.
        var refusingChanges: Bool
        /// Files still open for writing through the mount.
        var openForWriting: Int
    }

    /// The state of the mount's credentials: where they come from, when they expire, and the last refresh
    /// failure with its fix while refreshing keeps failing. Never a secret (the access key id is not one).
    struct CredentialsReport: Codable {
        /// "web identity role arn:...", "container credentials", "instance profile NAME", "environment (...)".
        var source: String
        var accessKeyId: String?
        /// ISO 8601 UTC; absent for keys that do not expire.
        var expiration: String?
        /// Seconds left until `expiration` (negative once expired).
        var expiresInSeconds: Double?
        /// Times the credentials were replaced by fresh ones.
        var refreshes: Int
        /// Refreshes that failed in a row since the last success.
        var consecutiveFailures: Int
        /// The last refresh failure (while `consecutiveFailures` > 0), and what to do about it.
        var lastError: String?
        var fix: String?

        init(_ s: CredentialsStatus) {
            source = s.source
            accessKeyId = s.accessKeyId
            expiration = s.expiration.map(S3Date.iso8601)
            expiresInSeconds = s.expiration.map { $0.timeIntervalSinceNow.rounded() }
            refreshes = s.refreshes
            consecutiveFailures = s.consecutiveFailures
            lastError = s.consecutiveFailures > 0 ? s.lastError.map { "\($0.source): \($0.message)" } : nil
            fix = s.consecutiveFailures > 0 ? s.lastError?.fix : nil
        }
    }
}
