// Credentials that refresh themselves, read once per request.
//
// A `CredentialsProvider` holds the credentials of one `CredentialSource` (the environment, a profile, STS,
// the container endpoint, instance metadata) behind a lock. The S3 client asks `credentials()` for every
// request it signs, so a refresh takes effect on the next request and never touches a request in flight.
//
// Temporary credentials are refreshed by one timer task ahead of their expiry; nothing polls. botocore
// refreshes 15 minutes before expiry (advisory) and insists 10 minutes before (mandatory)
// (botocore/credentials.py, RefreshableCredentials); we refresh `min(15 min, half the lifetime)` before, so a
// 1-hour role refreshes after 45 minutes and a 60-second test credential after 30 seconds. A failed refresh is
// tried again with a growing pause (5 s doubling to 60 s, never later than the expiry), and logged with the
// source and the fix; requests keep the old credentials until they expire. A request that S3 rejects with
// ExpiredToken forces a refresh (`refresh()`), shared with any other caller waiting at the same time.
import Foundation
import Logging
import Synchronization

/// Where credentials come from. Implementations fetch fresh credentials on demand; the provider decides when.
public protocol CredentialSource: Sendable {
    /// A short name for messages before anything was fetched, e.g. "EC2 instance metadata". Never a secret.
    var name: String { get }
    /// Whether fetching again can give new credentials (false for keys written in the environment or a file).
    var canRefresh: Bool { get }
    /// Fresh credentials; their `source` says exactly where they came from ("instance profile trainer-role").
    func fetch() async throws(CredentialsError) -> Credentials
}

/// Credentials could not be obtained. `description` says from where, why, and what to do; never a secret.
public struct CredentialsError: Error, Sendable, CustomStringConvertible {
    /// The source, as `CredentialSource.name` says it.
    public var source: String
    public var message: String
    /// What the user can do about it.
    public var fix: String
    /// Whether trying again later may succeed (network trouble, throttling, 5xx).
    public var isTransient: Bool

    public init(source: String, _ message: String, fix: String, isTransient: Bool = false) {
        self.source = source
        self.message = message
        self.fix = fix
        self.isTransient = isTransient
    }

    public var description: String { "\(source): \(message)\n  fix: \(fix)" }
}

/// What `ckptfs check` and `status` show about the credentials in use. Never a secret.
public struct CredentialsStatus: Sendable {
    public var source: String
    public var accessKeyId: String?
    public var expiration: Date?
    /// The last refresh failure, while refreshing keeps failing.
    public var lastError: CredentialsError?
    public var consecutiveFailures: Int
    public var refreshes: Int

    public init(source: String, accessKeyId: String?, expiration: Date?, lastError: CredentialsError?,
                consecutiveFailures: Int, refreshes: Int) {
        self.source = source
        self.accessKeyId = accessKeyId
        self.expiration = expiration
        self.lastError = lastError
        self.consecutiveFailures = consecutiveFailures
        self.refreshes = refreshes
    }
}

/// The credentials of one source, refreshed in the background before they expire. Thread-safe.
public final class CredentialsProvider: Sendable {
    public let source: any CredentialSource

    struct State {
        var current: Credentials?
        /// When `current` was fetched (for the lifetime, hence the refresh margin).
        var fetchedAt: Date?
        var inflight: Task<Credentials, any Error>?
        var timer: Task<Void, Never>?
        var lastError: CredentialsError?
        var failures = 0
        var refreshes = 0
    }

    let state = Mutex(State())

    /// - Parameter initial: credentials already fetched (e.g. during configuration), used until they expire.
    public init(source: any CredentialSource, initial: Credentials? = nil) {
        self.source = source
        if let initial {
            state.withLock { $0.current = initial; $0.fetchedAt = Date() }
            schedule(after: initial, fetchedAt: Date())
        }
    }

    deinit { state.withLock { $0.timer?.cancel() } }

    /// Keys that never change (the environment, a profile's keys, or given in code).
    public static func fixed(_ credentials: Credentials) -> CredentialsProvider {
        CredentialsProvider(source: FixedCredentialSource(credentials: credentials), initial: credentials)
    }

    /// The credentials last fetched, or nil before the first fetch.
    public var current: Credentials? { state.withLock { $0.current } }

    public var status: CredentialsStatus {
        state.withLock { s in
            CredentialsStatus(source: s.current?.source ?? source.name, accessKeyId: s.current?.accessKeyId,
                              expiration: s.current?.expiration, lastError: s.lastError,
                              consecutiveFailures: s.failures, refreshes: s.refreshes)
        }
    }

    /// The credentials to sign the next request with. Fetches them on first use, and again when they have
    /// expired (or expire within 5 seconds, botocore's margin for a request to reach the server).
    public func credentials() async throws(CredentialsError) -> Credentials {
        if let c = current, !Self.expired(c, within: 5) { return c }
        return try await refresh()
    }

    /// Fetches new credentials now. Callers arriving while a fetch runs share its result.
    @discardableResult
    public func refresh() async throws(CredentialsError) -> Credentials {
        let task: Task<Credentials, any Error> = state.withLock { s in
            if let t = s.inflight { return t }
            let t = Task<Credentials, any Error> { [source] in
                do {
                    let c = try await source.fetch()
                    self.installed(c)
                    return c
                } catch {
                    self.state.withLock { $0.inflight = nil }
                    throw error
                }
            }
            s.inflight = t
            return t
        }
        do {
            return try await task.value
        } catch let e as CredentialsError {
            throw e
        } catch {
            throw CredentialsError(source: source.name, "\(error)", fix: "retry; report a bug if it persists")
        }
    }

    /// Stops the refresh timer (unmount). Credentials already fetched stay readable.
    public func shutdown() {
        state.withLock { $0.timer?.cancel(); $0.timer = nil }
    }

    private func installed(_ c: Credentials) {
        let now = Date()
        state.withLock { s in
            if s.current != nil { s.refreshes += 1 }
            s.current = c
            s.fetchedAt = now
            s.inflight = nil
            s.lastError = nil
            s.failures = 0
        }
        if c.expiration != nil {
            Logger(label: "ckptfs.credentials").debug("credentials fetched", metadata: [
                "credentials.source": "\(c.source)", "credentials.access_key_id": "\(c.accessKeyId)",
                "credentials.expiration": "\(c.expiration.map(S3Date.iso8601) ?? "never")"])
        }
        schedule(after: c, fetchedAt: now)
    }

    /// Seconds before expiry to refresh, for credentials valid `lifetime` seconds after they were fetched.
    public static func refreshMargin(lifetime: TimeInterval) -> TimeInterval {
        min(15 * 60, max(0, lifetime) / 2)
    }

    static func expired(_ c: Credentials, within seconds: TimeInterval) -> Bool {
        guard let e = c.expiration else { return false }
        return e.timeIntervalSinceNow <= seconds
    }

    /// Arms the timer for the next refresh of `c` (none for credentials without expiry).
    private func schedule(after c: Credentials, fetchedAt: Date) {
        guard source.canRefresh, let expiration = c.expiration else { return }
        let lifetime = expiration.timeIntervalSince(fetchedAt)
        let delay = max(1, expiration.timeIntervalSinceNow - Self.refreshMargin(lifetime: lifetime))
        arm(after: delay)
    }

    private func arm(after seconds: TimeInterval) {
        let timer = Task { [weak self] in
            try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            guard !Task.isCancelled, let self else { return }
            await self.backgroundRefresh()
        }
        state.withLock { s in
            s.timer?.cancel()
            s.timer = timer
        }
    }

    private func backgroundRefresh() async {
        do {
            try await refresh()
        } catch {
            let (failures, current) = state.withLock { s -> (Int, Credentials?) in
                s.failures += 1
                s.lastError = error
                return (s.failures, s.current)
            }
            let left = current?.expiration?.timeIntervalSinceNow ?? 0
            let logger = Logger(label: "ckptfs.credentials")
            let meta: Logger.Metadata = [
                "credentials.source": "\(current?.source ?? source.name)", "credentials.failures": "\(failures)",
                "credentials.expiration": "\(current?.expiration.map(S3Date.iso8601) ?? "unknown")",
                "error": "\(error.message)", "fix": "\(error.fix)"]
            if left > 0 {
                logger.warning("credentials refresh failed; requests keep the current credentials until they expire", metadata: meta)
            } else {
                logger.error("credentials expired and cannot be refreshed; S3 requests fail until a refresh succeeds (uploads stay queued)",
                             metadata: meta)
            }
            // 5 s, 10 s, 20 s, 40 s, then every 60 s; while valid, never later than a quarter of what is left.
            var pause = min(60, 5 * pow(2, Double(min(failures - 1, 4))))
            if left > 4 { pause = min(pause, left / 4) }
            arm(after: max(1, pause))
        }
    }
}

/// Keys that never change.
public struct FixedCredentialSource: CredentialSource {
    public let credentials: Credentials
    public init(credentials: Credentials) { self.credentials = credentials }
    public var name: String { credentials.source }
    public var canRefresh: Bool { false }
    public func fetch() async throws(CredentialsError) -> Credentials { credentials }
}

extension S3Date {
    /// `2024-01-02T03:04:05Z` (UTC, whole seconds).
    public static func iso8601(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tmv = tm()
        gmtime_r(&t, &tmv)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday,
                      tmv.tm_hour, tmv.tm_min, tmv.tm_sec)
    }
}
