// Waiting without polling: continuations under tickets (a deadline withdraws its own), and a counting
// semaphore for tasks.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

/// Continuations waiting for one event, each under a ticket so that a deadline can withdraw it (the waiter's
/// own timer task takes its ticket back and resumes it; the event resumes whoever is still there).
struct Waiters<Value: Sendable>: Sendable {
    private var byTicket: [UInt64: CheckedContinuation<Value, Never>] = [:]
    private var next: UInt64 = 0

    mutating func add(_ c: CheckedContinuation<Value, Never>) -> UInt64 {
        next += 1
        byTicket[next] = c
        return next
    }

    mutating func remove(_ ticket: UInt64) -> CheckedContinuation<Value, Never>? { byTicket.removeValue(forKey: ticket) }

    mutating func removeAll() -> [CheckedContinuation<Value, Never>] {
        defer { byTicket = [:] }
        return Array(byTicket.values)
    }
}

/// A counting semaphore for tasks.
final class AsyncSemaphore: Sendable {
    private let state: Mutex<(free: Int, waiters: [CheckedContinuation<Void, Never>])>
    init(_ n: Int) { state = Mutex((n, [])) }

    func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let go = state.withLock { s -> Bool in
                if s.free > 0 {
                    s.free -= 1
                    return true
                }
                s.waiters.append(c)
                return false
            }
            if go { c.resume() }
        }
    }

    func release() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty {
                s.free += 1
                return nil
            }
            return s.waiters.removeFirst()
        }
        w?.resume()
    }
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}

/// Threads for blocking file work (fsync, fdatasync of the journal, checksums over staged files), so it never
/// holds one of the few threads of Swift's cooperative pool (two on a 2-core machine) that every request needs.
let blockingWork = DispatchQueue(label: "ckptfs.blocking", qos: .userInitiated, attributes: .concurrent)

/// Runs `body`, which blocks on the disk, on `blockingWork` and waits for it without blocking a thread.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws(FSError) -> T) async throws(FSError) -> T {
    let r: Result<T, FSError> = await withCheckedContinuation { c in
        blockingWork.async { c.resume(returning: Result { () throws(FSError) in try body() }) }
    }
    return try r.get()
}
