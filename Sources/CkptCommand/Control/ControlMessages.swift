import CkptFS
import Foundation

// The messages of the control socket: one JSON line each way (see `Control.call`).
extension Control {
    /// What the command line asks: `cmd` is "flush" (`path` under the mount, `timeout` seconds or nil for no
    /// limit), "status", or "unmounting" (`timeout`: how long the daemon may still drain after the unmount).
    struct Request: Codable {
        var cmd: String
        var path: String?
        var timeout: Double?
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
        /// Present while the daemon drains before unmounting, after a signal.
        var stopping: Stopping?
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
}
