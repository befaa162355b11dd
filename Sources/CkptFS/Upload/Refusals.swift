// How S3 answered the attempts at one change (an upload, a delete) that no retry of the same request changes.
import CkptS3

/// The attempts in a row S3 refused for good (`S3Error.isRefusal`: a 4xx other than 408 and 429, conflicts aside,
/// e.g. InvalidRequest for a key the server cannot store, AccessDenied). From `limit` on, fsync and `ckptfs flush`
/// stop waiting for the change and say why; it is still retried (the user may fix the cause).
struct Refusals: Sendable {
    /// Two, so that one garbled request is retried before anyone is told.
    static let limit = 2
    private(set) var inARow = 0
    /// When S3 last refused it so.
    private(set) var last: ContinuousClock.Instant?

    /// An attempt failed; `refused`: with an answer no retry changes (else the count starts over).
    mutating func attemptFailed(refused: Bool) {
        inARow = refused ? inARow + 1 : 0
        if refused { last = .now }
    }

    /// The change went through.
    mutating func reset() { self = Refusals() }

    /// Whether S3 refused the last attempts for good.
    var refused: Bool { inARow >= Refusals.limit }

    /// Whether it did so at an attempt made since `since`.
    func refused(since: ContinuousClock.Instant) -> Bool { refused && (last.map { $0 >= since } ?? false) }
}
