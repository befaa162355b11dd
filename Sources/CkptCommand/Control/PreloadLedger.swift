import CkptFS
import Synchronization

/// The preloads of one mount: those running now (for `status`, and to cancel when the mount stops) and the
/// totals of those that ended (for the metrics). Filled by the control server, read by `status` and by the
/// metrics at scrape time.
final class PreloadLedger: Sendable {
    /// What the metrics show of the preloads, read at one moment.
    struct Snapshot: Sendable, Equatable {
        /// Preloads running now, and the files and bytes of their plans, and how much of those is cached.
        var running = 0
        var files = 0
        var filesDone = 0
        var bytes: Int64 = 0
        var bytesDone: Int64 = 0
        /// Since the mount started, running and ended preloads together: bytes their GETs received, and those GETs.
        var fetchedBytes: Int64 = 0
        var requests = 0
        /// Preloads that ended, by how (`PreloadProgress.State`'s raw values other than `running`).
        var ended: [String: Int] = [:]
    }

    private struct State {
        var running: [Int: ActivePreload] = [:]
        var next = 0
        /// Totals of the preloads that ended.
        var fetchedBytes: Int64 = 0
        var requests = 0
        var ended: [String: Int] = [:]
    }

    private let state = Mutex(State())

    /// Records `p` as running; returns the number `end` takes.
    func start(_ p: ActivePreload) -> Int {
        state.withLock { s in
            s.next += 1
            s.running[s.next] = p
            return s.next
        }
    }

    /// Records that preload `number` ended with `final`.
    func end(_ number: Int, _ final: PreloadProgress) {
        state.withLock { s in
            guard s.running.removeValue(forKey: number) != nil else { return }
            s.fetchedBytes += final.bytesFetched
            s.requests += final.requests
            s.ended[final.state.rawValue, default: 0] += 1
        }
    }

    /// The preloads running now, in the order they started.
    var running: [ActivePreload] { state.withLock { s in s.running.sorted { $0.key < $1.key }.map(\.value) } }

    /// The preloads' figures now.
    var snapshot: Snapshot {
        let (running, done) = state.withLock { s in (Array(s.running.values), Snapshot(fetchedBytes: s.fetchedBytes, requests: s.requests, ended: s.ended)) }
        var out = done
        for p in running {
            let progress = p.run.progress
            out.running += 1
            out.files += progress.files
            out.filesDone += progress.filesDone
            out.bytes += progress.bytes
            out.bytesDone += progress.bytesDone
            out.fetchedBytes += progress.bytesFetched
            out.requests += progress.requests
        }
        return out
    }
}
