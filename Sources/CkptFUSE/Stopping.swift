// What the adapter needs to stop a mount without losing a write: it knows which handles are open for
// writing, and by which process (so a drain can wait for the last save to close, and a close by another
// process is told from the writer's own), and, once the drain is over, refuses every
// change with EROFS until the unmount, so a save made then fails visibly instead of being acknowledged and
// never uploaded — or, after the unmount, landing in the directory underneath.
import Foundation
import Synchronization

/// The handles open for writing through one mount, and whether changes are still accepted.
public final class WriteGate: Sendable {
    private struct State {
        /// Handles open for writing, with the process that opened each (0: not known).
        var writers: [UInt64: pid_t] = [:]
        var closed = false
        /// Drains waiting for `writers` to become empty, by id (so a timed-out wait can remove itself).
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }
    private let state = Mutex(State())

    public init() {}

    /// Files open for writing now.
    public var openWriters: Int { state.withLock { $0.writers.count } }

    /// False once `close()` was called: every change is then refused with EROFS.
    public var acceptsChanges: Bool { state.withLock { !$0.closed } }

    /// Refuses every later change (create, write, setattr, mkdir, unlink, rmdir, rename, and the close or
    /// fsync of a handle open for writing): called when the drain before an unmount is over.
    public func close() { state.withLock { $0.closed = true } }

    func opened(writer handle: UInt64, by process: pid_t) { state.withLock { $0.writers[handle] = process } }

    func isWriter(_ handle: UInt64) -> Bool { state.withLock { $0.writers[handle] != nil } }

    /// Whether a close() of `handle` by `process` (0: not known) acknowledges what was written: a close by the
    /// process that opened it does (any of its threads, or a descriptor it duplicated); a close of an
    /// inherited copy of the descriptor by another process does not, for that process is not the writer: a
    /// child exiting, or one closing its descriptors before exec (every fork+exec of a program, `subprocess`
    /// among them, while a save is open). The writer's own close, or the last release, acknowledges later.
    func closeAcknowledges(_ handle: UInt64, by process: pid_t) -> Bool {
        guard process != 0, let opener = state.withLock({ $0.writers[handle] }), opener != 0 else { return true }
        return opener == process
    }

    func released(_ handle: UInt64) {
        let wake = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            guard s.writers.removeValue(forKey: handle) != nil, s.writers.isEmpty else { return [] }
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for w in wake { w.resume() }
    }

    /// Returns once no file is open for writing, or at `deadline` (ContinuousClock); true if none is open.
    /// Woken by the last release, not by polling.
    public func waitForWriters(until deadline: ContinuousClock.Instant) async -> Bool {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.writersGone() }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            await group.next()
            group.cancelAll()
        }
        return openWriters == 0
    }

    private func writersGone() async {
        let id = state.withLock { s -> Int in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.writers.isEmpty || Task.isCancelled { return true }
                    s.waiters[id] = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
