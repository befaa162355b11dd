// The drain before an unmount that a signal asked for (SIGTERM, SIGINT, SIGHUP): the mount keeps serving
// while queued uploads finish, so a save made meanwhile — often from the trainer's own SIGTERM handler —
// goes through ckptfs and is uploaded; it never lands in the directory underneath the mount point.
import CkptFS
import CkptFUSE
import Foundation
import Logging

/// A drain in progress: why, and until when.
struct DrainState: Sendable {
    /// The signal that started it.
    var signal: Int32
    /// When it gives up (ContinuousClock): what is not durable by then stays in the journal.
    var deadline: ContinuousClock.Instant
    /// The mount's gate: closed once the drain is over and changes are refused until the unmount.
    var gate: WriteGate

    var signalName: String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }
}

/// Waits, until `deadline`, for the files open for writing through the mount to be closed and for every
/// closed file to be durable in S3; again while new saves arrive meanwhile. Each round waits for an event
/// (the last writer's close, the uploads' completion), never polls. Returns what is not durable.
func drainWriteBack(fs: FileSystem, gate: WriteGate, until deadline: ContinuousClock.Instant) async -> [(path: String, reason: String)] {
    while true {
        _ = await gate.waitForWriters(until: deadline)
        let left = await fs.flushAll(under: "", timeout: max(.zero, deadline - .now))
        let more = gate.openWriters > 0 || fs.writeBackStatus.pending.contains { $0.state == "queued" || $0.state == "uploading" }
        if !left.isEmpty || !more || ContinuousClock.now >= deadline { return left }
    }
}
