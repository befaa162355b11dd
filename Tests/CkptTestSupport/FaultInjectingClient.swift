// A fault-injecting ObjectClient: it wraps any other client (the in-memory one, or the real S3Client) and passes
// every call on, except where a rule says otherwise. Rules have state: each counts the calls it matches over its
// life, so "fail the 3rd PutObject", "fail the first 2 calls under ckpt/", "hold every upload until released" are
// one rule each, not switches to reset. Every call goes into a log, with its outcome, for assertions.
//
// Faults sit above the wrapped client: a fault injected here is what the caller sees after that client's own
// retries (S3Client retries 5xx and network errors; one injected SlowDown here stands for a request that failed
// every attempt).
//
// Holding a call is how tests stop the world at a chosen point without sleeping: a held call waits on a
// continuation until the test releases it (it then goes on, or fails with a given fault); `waitForHeld` lets a
// test wait until the calls it expects are held. `cut()` is a crash of the process that owns the client: from
// then on no call reaches the wrapped client and no reply comes back (a call that was already inside it takes
// effect, and its caller never hears of it); `failHeld()` ends those calls at teardown.
import CkptS3
import Foundation
import Synchronization

public final class FaultInjectingClient: ObjectClient {
    /// The client calls go to.
    public let base: any ObjectClient

    public init(wrapping base: any ObjectClient) { self.base = base }

    // MARK: Rules

    /// Names a rule, to remove it, release the calls it holds, or ask how often it acted.
    public struct RuleID: Hashable, Sendable, CustomStringConvertible {
        let value: Int
        public var description: String { "rule \(value)" }
    }

    /// Which calls a rule looks at: operations by S3 API name ("PutObject", "UploadPart", ...; empty: all) and keys.
    public struct Match: Sendable {
        public var operations: Set<String>
        public var key: KeyMatch
        /// A test of its own on (operation, key), instead of `operations` and `key`.
        public var predicate: (@Sendable (String, String?) -> Bool)?

        public init(operations: Set<String> = [], key: KeyMatch = .any) {
            self.operations = operations
            self.key = key
        }

        /// The calls for which `test(operation, key)` is true.
        public init(_ test: @escaping @Sendable (_ operation: String, _ key: String?) -> Bool) {
            operations = []
            key = .any
            predicate = test
        }

        /// Every call.
        public static var any: Match { Match() }
        /// Calls of these operations.
        public static func operations(_ names: String...) -> Match { Match(operations: Set(names)) }
        /// The calls that upload an object: PutObject (not of a directory marker, a key ending in "/"),
        /// CreateMultipartUpload, UploadPart, CompleteMultipartUpload.
        public static var uploads: Match {
            Match(operations: ["PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"],
                  key: .matching { !$0.hasSuffix("/") })
        }
        /// This match, for one key only.
        public func key(_ key: String) -> Match { Match(operations: operations, key: .exact(key)) }
        /// This match, for keys starting with `prefix` only.
        public func prefix(_ prefix: String) -> Match { Match(operations: operations, key: .prefix(prefix)) }

        func matches(_ operation: String, _ key: String?) -> Bool {
            if let predicate { return predicate(operation, key) }
            guard operations.isEmpty || operations.contains(operation) else { return false }
            switch self.key {
            case .any: return true
            case .exact(let k): return key == k
            case .prefix(let p): return key?.hasPrefix(p) ?? false
            case .matching(let f): return key.map(f) ?? false
            }
        }
    }

    /// The keys a rule looks at. A listing (ListObjectsV2, ListObjectVersions, ListMultipartUploads) is matched by
    /// its prefix; calls without a key or prefix (HeadBucket, DeleteObjects, a listing of everything) match only
    /// `.any`.
    public enum KeyMatch: Sendable {
        case any
        case exact(String)
        case prefix(String)
        case matching(@Sendable (String) -> Bool)
    }

    /// Which of the calls a rule matches it acts on, numbering its matching calls from 1 over the rule's life.
    public enum Calls: Sendable {
        case all
        /// Only the nth.
        case nth(Int)
        /// The first n.
        case first(Int)
        /// The nth and every one after it.
        case from(Int)
        /// The nth, 2nth, 3nth, ...
        case every(Int)

        func selects(_ n: Int) -> Bool {
            switch self {
            case .all: return true
            case .nth(let k): return n == k
            case .first(let k): return n <= k
            case .from(let k): return n >= k
            case .every(let k): return k > 0 && n % k == 0
            }
        }
    }

    /// What a rule does to a call it acts on. Delays and holds come first (in rule order, as the call arrives);
    /// then (once it is released) the first failure or cut; a call no failure rule acts on goes to the wrapped
    /// client.
    public enum Action: Sendable {
        /// The call fails without reaching the wrapped client.
        case fail(Fault)
        /// The call reaches the wrapped client and takes effect; then the reply is lost and the call fails.
        case failAfter(Fault)
        /// GetObject: the first `after` bytes of the body arrive, then the connection breaks (a transport error,
        /// `partialBody`). The in-memory variant of GetObject delivers nothing and fails the same way.
        case cutBody(after: Int)
        /// The call waits this long first.
        case delay(Duration)
        /// The call waits until the test releases it (`release`, `releaseOldest`) or fails it (`failHeld`).
        case hold
        /// The call reaches the wrapped client and takes effect; its reply waits until the test releases it
        /// (or fails it: the reply is lost).
        case holdReply
    }

    /// An injected failure, made into the S3Error the wrapped client would give (with the call's operation,
    /// bucket and key).
    public enum Fault: Sendable, CustomStringConvertible {
        /// HTTP 503 SlowDown.
        case slowDown
        /// HTTP 500 InternalError.
        case internalError
        /// HTTP 503 ServiceUnavailable.
        case serviceUnavailable
        /// The connection was reset (no HTTP status).
        case connectionReset
        /// No byte moved for the request timeout.
        case timeout
        /// HTTP 412 PreconditionFailed.
        case preconditionFailed
        /// HTTP 403 AccessDenied.
        case accessDenied
        /// HTTP 404 NoSuchKey.
        case noSuchKey
        /// Any other error, as given (its operation, bucket and key are replaced by the call's).
        case error(S3Error)

        public func error(operation: String, bucket: String?, key: String?) -> S3Error {
            var e: S3Error
            switch self {
            case .slowDown: e = S3Error(code: .slowDown, s3Code: "SlowDown", message: "Please reduce your request rate. (injected)", httpStatus: 503, operation: operation)
            case .internalError: e = S3Error(code: .internalError, s3Code: "InternalError", message: "We encountered an internal error. (injected)", httpStatus: 500, operation: operation)
            case .serviceUnavailable: e = S3Error(code: .serviceUnavailable, s3Code: "ServiceUnavailable", message: "Service unavailable (injected)", httpStatus: 503, operation: operation)
            case .connectionReset: e = S3Error(code: .transport(.connectionReset), s3Code: "Transport", message: "connection reset by peer (injected)", operation: operation)
            case .timeout: e = S3Error(code: .transport(.timeout), s3Code: "Transport", message: "no byte moved within the request timeout (injected)", operation: operation)
            case .preconditionFailed: e = S3Error(code: .preconditionFailed, s3Code: "PreconditionFailed", message: "At least one of the pre-conditions you specified did not hold (injected)", httpStatus: 412, operation: operation)
            case .accessDenied: e = S3Error(code: .accessDenied, s3Code: "AccessDenied", message: "Access Denied (injected)", httpStatus: 403, operation: operation)
            case .noSuchKey: e = S3Error(code: .noSuchKey, s3Code: "NoSuchKey", message: "The specified key does not exist. (injected)", httpStatus: 404, operation: operation)
            case .error(let given): e = given
            }
            e.operation = operation
            e.bucket = bucket
            e.key = key
            return e
        }

        public var description: String {
            switch self {
            case .slowDown: return "503 SlowDown"
            case .internalError: return "500 InternalError"
            case .serviceUnavailable: return "503 ServiceUnavailable"
            case .connectionReset: return "connection reset"
            case .timeout: return "timeout"
            case .preconditionFailed: return "412 PreconditionFailed"
            case .accessDenied: return "403 AccessDenied"
            case .noSuchKey: return "404 NoSuchKey"
            case .error(let e): return e.s3Code
            }
        }
    }

    // MARK: The call log

    /// One call, as the log keeps it.
    public struct Call: Sendable, CustomStringConvertible {
        /// Numbered from 1 in the order the calls arrived.
        public var id: Int
        public var operation: String
        public var bucket: String?
        public var key: String?
        public var outcome: Outcome

        public var description: String { "#\(id) \(operation) \(key ?? bucket ?? "") \(outcome)" }
    }

    public enum Outcome: Sendable, Equatable, CustomStringConvertible {
        /// Inside the wrapped client, or delayed.
        case inFlight
        /// Held by a rule, or by the cut.
        case held
        case succeeded
        /// The wrapped client failed it, with this S3 error code.
        case failed(String)
        /// A rule failed it (before or after it reached the wrapped client), with this fault.
        case injected(String)

        public var description: String {
            switch self {
            case .inFlight: return "in flight"
            case .held: return "held"
            case .succeeded: return "ok"
            case .failed(let c): return "failed \(c)"
            case .injected(let c): return "injected \(c)"
            }
        }
    }

    /// Every call so far, in the order they arrived.
    public var log: [Call] { state.withLock { $0.log } }

    /// The calls of `operation` so far.
    public func calls(_ operation: String) -> [Call] { log.filter { $0.operation == operation } }

    /// The calls not answered yet: in the wrapped client, delayed, or held.
    public var unanswered: [Call] { state.withLock { s in s.log.filter { $0.outcome == .inFlight || $0.outcome == .held } } }

    /// How many calls of `operation` arrived (whatever became of them).
    public func count(_ operation: String) -> Int { state.withLock { s in s.log.filter { $0.operation == operation }.count } }

    // MARK: State

    private enum Release {
        case proceed
        case fail(S3Error)
    }

    private struct Rule {
        var id: RuleID
        var match: Match
        var calls: Calls
        var action: Action
        /// Matching calls seen, and those acted on.
        var seen = 0
        var acted = 0
    }

    private struct HeldCall {
        var call: Int
        /// The rule holding it; nil: held by the cut, for good.
        var rule: RuleID?
        var continuation: CheckedContinuation<Release, Never>
    }

    private struct State {
        var rules: [Rule] = []
        var nextRule = 1
        var log: [Call] = []
        var held: [HeldCall] = []
        /// Tasks waiting until a rule (nil: the cut) holds some number of calls, by ticket.
        var holdWaiters: [(ticket: Int, rule: RuleID?, count: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var nextTicket = 0
        /// Tickets cancelled before their waiter was registered.
        var cancelledTickets = Set<Int>()
        var isCut = false
        /// Calls let through by `cut(landing: true)`: they reach the wrapped client, and their replies are lost.
        var landing = Set<Int>()
        /// Of those, the ones that have not reached the wrapped client yet, and who waits for them.
        var landingLeft = Set<Int>()
        var landingWaiters: [CheckedContinuation<Void, Never>] = []
        /// Calls the wrapped client answered (or that a rule failed before they got there), and who waits for one.
        var answered = Set<Int>()
        var replyWaiters: [Int: [CheckedContinuation<Void, Never>]] = [:]

        mutating func heldCount(_ rule: RuleID?) -> Int { held.filter { $0.rule == rule }.count }

        /// Counts the call against the rules that match it, of one kind (`waiting`: delays and holds; otherwise
        /// the others), and returns those that act on it.
        mutating func select(_ operation: String, _ key: String?, waiting: Bool) -> [(RuleID, Action)] {
            var actions: [(RuleID, Action)] = []
            for i in rules.indices where rules[i].match.matches(operation, key) {
                let isWait: Bool
                switch rules[i].action {
                case .delay, .hold: isWait = true
                default: isWait = false
                }
                guard isWait == waiting else { continue }
                rules[i].seen += 1
                if rules[i].calls.selects(rules[i].seen) {
                    rules[i].acted += 1
                    actions.append((rules[i].id, rules[i].action))
                }
            }
            return actions
        }

        /// The waiters whose count is reached now.
        mutating func satisfiedWaiters() -> [CheckedContinuation<Void, Never>] {
            var ready: [CheckedContinuation<Void, Never>] = []
            var left: [(ticket: Int, rule: RuleID?, count: Int, continuation: CheckedContinuation<Void, Never>)] = []
            for w in holdWaiters {
                if heldCount(w.rule) >= w.count { ready.append(w.continuation) } else { left.append(w) }
            }
            holdWaiters = left
            return ready
        }

        mutating func setOutcome(_ call: Int, _ outcome: Outcome) {
            if call >= 1 && call <= log.count { log[call - 1].outcome = outcome }
        }
    }

    private let state = Mutex(State())

    /// Adds a rule; it acts on the matching calls `calls` selects, from now on. Rules act in the order added.
    @discardableResult
    public func add(_ match: Match, _ calls: Calls = .all, _ action: Action) -> RuleID {
        state.withLock { s in
            let id = RuleID(value: s.nextRule)
            s.nextRule += 1
            s.rules.append(Rule(id: id, match: match, calls: calls, action: action))
            return id
        }
    }

    /// Fails the `n`th call (from now on) of `operation` with `fault`.
    @discardableResult
    public func failNth(_ n: Int, of operation: String, with fault: Fault) -> RuleID {
        add(.operations(operation), .nth(n), .fail(fault))
    }

    /// Holds every call `match` matches until `release(_:)`.
    @discardableResult
    public func hold(_ match: Match) -> RuleID { add(match, .all, .hold) }

    /// Removes a rule. The calls it holds go on.
    public func remove(_ rule: RuleID) {
        let resumed = state.withLock { s -> [CheckedContinuation<Release, Never>] in
            s.rules.removeAll { $0.id == rule }
            let mine = s.held.filter { $0.rule == rule }
            s.held.removeAll { $0.rule == rule }
            return mine.map(\.continuation)
        }
        for c in resumed { c.resume(returning: .proceed) }
    }

    /// Removes a rule and lets the calls it holds go on (in the order they arrived).
    public func release(_ rule: RuleID) { remove(rule) }

    /// Lets the oldest call `rule` holds go on; the rule stays. Returns that call, or nil if it holds none.
    @discardableResult
    public func releaseOldest(_ rule: RuleID) -> Call? {
        let found = state.withLock { s -> (Call, CheckedContinuation<Release, Never>)? in
            guard let i = s.held.firstIndex(where: { $0.rule == rule }) else { return nil }
            let h = s.held.remove(at: i)
            return (s.log[h.call - 1], h.continuation)
        }
        guard let (call, c) = found else { return nil }
        c.resume(returning: .proceed)
        return call
    }

    /// Fails the calls `rule` holds (nil: every held call, also those held by the cut) with `fault`.
    public func failHeld(_ rule: RuleID? = nil, with fault: Fault = .connectionReset) {
        let failed = state.withLock { s -> [(HeldCall, Call)] in
            let mine = s.held.filter { rule == nil || $0.rule == rule }
            s.held.removeAll { rule == nil || $0.rule == rule }
            return mine.map { ($0, s.log[$0.call - 1]) }
        }
        for (h, call) in failed {
            h.continuation.resume(returning: .fail(fault.error(operation: call.operation, bucket: call.bucket, key: call.key)))
        }
    }

    /// The calls `rule` holds now (nil: those the cut holds), oldest first.
    public func held(_ rule: RuleID?) -> [Call] {
        state.withLock { s in s.held.filter { $0.rule == rule }.map { s.log[$0.call - 1] } }
    }

    /// Returns once `rule` holds at least `count` calls (nil: once the cut holds that many), or the task is
    /// cancelled.
    public func waitForHeld(_ rule: RuleID?, count: Int = 1) async {
        let ticket = state.withLock { s -> Int in
            s.nextTicket += 1
            return s.nextTicket
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.heldCount(rule) >= count || s.cancelledTickets.remove(ticket) != nil { return true }
                    s.holdWaiters.append((ticket, rule, count, c))
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard let i = s.holdWaiters.firstIndex(where: { $0.ticket == ticket }) else {
                    s.cancelledTickets.insert(ticket)
                    return nil
                }
                return s.holdWaiters.remove(at: i).continuation
            }
            c?.resume()
        }
    }

    /// How many calls `rule` has acted on.
    public func hits(_ rule: RuleID) -> Int { state.withLock { s in s.rules.first { $0.id == rule }?.acted ?? 0 } }

    /// The process that owns this client died: no call reaches the wrapped client from now on and no reply
    /// comes back (such calls are held for good; `failHeld()` ends them). With `landing`, the calls held by
    /// rules at this moment first reach the wrapped client (they take effect; their replies are lost).
    public func cut(landing: Bool = false) {
        let resumed = state.withLock { s -> [CheckedContinuation<Release, Never>] in
            s.isCut = true
            guard landing else { return [] }
            let byRules = s.held.filter { $0.rule != nil }
            s.held.removeAll { $0.rule != nil }
            for h in byRules {
                s.landing.insert(h.call)
                s.landingLeft.insert(h.call)
            }
            return byRules.map(\.continuation)
        }
        for c in resumed { c.resume(returning: .proceed) }
    }

    /// Returns once the calls `cut(landing: true)` let through have been answered by the wrapped client (they
    /// took effect, or failed there).
    public func waitForLanding() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.landingLeft.isEmpty { return true }
                s.landingWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Returns once call `id` (from the log) has been answered by the wrapped client (or failed by a rule
    /// before it got there).
    public func waitForReply(_ id: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.answered.contains(id) { return true }
                s.replyWaiters[id, default: []].append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Call `call` was answered by the wrapped client (or will never reach it): wakes who waits for that.
    private func landed(_ call: Int) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.answered.insert(call)
            var ready = s.replyWaiters.removeValue(forKey: call) ?? []
            if s.landingLeft.remove(call) != nil, s.landingLeft.isEmpty {
                ready += s.landingWaiters
                s.landingWaiters = []
            }
            return ready
        }
        for c in ready { c.resume() }
    }

    public var isCut: Bool { state.withLock { $0.isCut } }

    // MARK: The call path

    /// Logs a call and picks the rules that act on it when it arrives: delays and holds.
    private func arrive(_ operation: String, _ bucket: String?, _ key: String?) -> (call: Int, actions: [(RuleID, Action)]) {
        state.withLock { s in
            let id = s.log.count + 1
            s.log.append(Call(id: id, operation: operation, bucket: bucket, key: key, outcome: .inFlight))
            return (id, s.select(operation, key, waiting: true))
        }
    }

    /// The rules that act on a call once it has waited (delays, holds): failures, cuts, held replies. A call
    /// released from a hold meets the rules added while it was held.
    private func pass(_ operation: String, _ key: String?) -> [(RuleID, Action)] {
        state.withLock { $0.select(operation, key, waiting: false) }
    }

    /// Waits until the call is released; held by `rule`, or for good (nil) after the cut.
    private func park(_ call: Int, rule: RuleID?) async -> Release {
        await withCheckedContinuation { (c: CheckedContinuation<Release, Never>) in
            let ready = state.withLock { s -> [CheckedContinuation<Void, Never>]? in
                // The rule was removed (its calls released) since it picked this call: it goes on.
                if let rule, !s.rules.contains(where: { $0.id == rule }) { return nil }
                s.held.append(HeldCall(call: call, rule: rule, continuation: c))
                s.setOutcome(call, .held)
                return s.satisfiedWaiters()
            }
            guard let ready else { return c.resume(returning: .proceed) }
            for w in ready { w.resume() }
        }
    }

    /// After the cut nothing moves: parks the call for good. Before it is sent (`sending`), a call `cut(landing:)`
    /// let through goes on; no reply goes back after the cut.
    private func stopIfCut(_ call: Int, sending: Bool) async throws(S3Error) {
        let stop = state.withLock { s in s.isCut && !(sending && s.landing.contains(call)) }
        guard stop else { return }
        if case .fail(let e) = await park(call, rule: nil) {
            state.withLock { $0.setOutcome(call, .injected(e.s3Code)) }
            throw e
        }
    }

    /// Runs one call through the rules: delays and holds, then a failure before or after `body` (the wrapped
    /// client's call), or a body cut after some bytes (`cut` receives the byte count and does the cutting).
    func perform<T>(_ operation: String, _ bucket: String?, _ key: String?,
                            cut: ((Int) async throws(S3Error) -> T)? = nil,
                            _ body: () async throws(S3Error) -> T) async throws(S3Error) -> T {
        let (call, waits) = arrive(operation, bucket, key)
        func injected(_ f: Fault) -> S3Error {
            let e = f.error(operation: operation, bucket: bucket, key: key)
            state.withLock { $0.setOutcome(call, .injected(f.description)) }
            return e
        }
        try await stopIfCut(call, sending: true)
        for (rule, action) in waits {
            switch action {
            case .delay(let d):
                try? await Task.sleep(for: d)
            case .hold:
                if case .fail(let e) = await park(call, rule: rule) {
                    state.withLock { $0.setOutcome(call, .injected(e.s3Code)) }
                    landed(call)
                    throw e
                }
                state.withLock { $0.setOutcome(call, .inFlight) }
            default: break
            }
        }
        try await stopIfCut(call, sending: true)
        let actions = pass(operation, key)
        var after: Fault?
        var cutAt: Int?
        for (_, action) in actions {
            switch action {
            case .fail(let f):
                landed(call)
                throw injected(f)
            case .failAfter(let f): after = f
            case .cutBody(let n): cutAt = n
            default: continue
            }
            break
        }
        let result: T
        do throws(S3Error) {
            if let cutAt, let cut {
                result = try await cut(cutAt)
            } else {
                result = try await body()
            }
        } catch {
            landed(call)
            try await stopIfCut(call, sending: false)
            state.withLock { $0.setOutcome(call, error.code == .transport(.partialBody) && cutAt != nil ? .injected("cut body") : .failed(error.s3Code)) }
            throw error
        }
        landed(call)
        try await stopIfCut(call, sending: false)
        if let after { throw injected(after) }
        for case (let rule, .holdReply) in actions {
            if case .fail(let e) = await park(call, rule: rule) {
                state.withLock { $0.setOutcome(call, .injected(e.s3Code)) }
                throw e
            }
        }
        state.withLock { $0.setOutcome(call, .succeeded) }
        return result
    }

    func partialBody(_ bucket: String, _ key: String, after n: Int) -> S3Error {
        var e = S3Error(code: .transport(.partialBody), s3Code: "Transport",
                        message: "the connection broke after \(n) bytes of the body (injected)", operation: "GetObject")
        e.bucket = bucket
        e.key = key
        return e
    }
}

/// Bytes a cut body may still deliver.
final class ByteBudget: Sendable {
    private let left: Mutex<Int>
    init(_ n: Int) { left = Mutex(n) }

    /// Takes up to `count` bytes of the budget; returns how many it got.
    func take(_ count: Int) -> Int {
        left.withLock { l in
            let t = min(l, count)
            l -= t
            return t
        }
    }
}
