// What the write-back reports: its status (ckptfs status) and what recovery found.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

/// What the write-back is doing (for `ckptfs status`).
public struct WriteBackStatus: Sendable, Codable {
    public struct Pending: Sendable, Codable {
        public var path: String
        public var bytes: Int64
        public var state: String
        public var ageSeconds: Double
        public var error: String?
        /// Bytes already sent in parts (while the file was written, or of the upload in progress).
        public var sentBytes: Int64 = 0
    }
    public var dirtyFiles = 0
    public var dirtyBytes: Int64 = 0
    public var uploadsInFlight = 0
    public var oldestDirtySeconds: Double = 0
    public var uploadedFiles = 0
    public var uploadedBytes: Int64 = 0
    public var failures: [Pending] = []
    public var pending: [Pending] = []
    public var recovered = 0
    public var quarantined: [String] = []
    /// Deletes (unlink, rmdir, old names of renames) journaled and not applied in S3 yet: each waits for the
    /// uploads acknowledged before it.
    public var pendingDeletes = 0
    /// Those deletes, path by path (relative to the mount; a directory's ends with "/"): state "waiting" (for
    /// the uploads acknowledged before it) or "deleting" (sent, or retried after `error`).
    public var deletes: [Pending] = []
    /// Bytes the staging area takes on the cache disk (dirty versions, and copies still open).
    public var stagingBytes: Int64 = 0
    /// The dirty bound (FSOptions.maxDirty): writes wait while the staged bytes are over it and uploads pend.
    public var maxDirty: Int64 = 0
    /// Writes waiting for room under the dirty bound now.
    public var heldWriters = 0
    /// What the dirty bound is checked against: the bytes the staged versions hold (extents written, copied
    /// or filled), counted as they change.
    public var stagedBytes: Int64 = 0
}

/// What recovery found in the journal.
public struct RecoveryReport: Sendable {
    public var requeued: [String] = []
    /// Staged files that failed their checksum, moved aside: (key, where it now is).
    public var quarantined: [(key: String, path: String)] = []
    public var abortedMultipart = 0
    public var tornTail = false
    /// Deletes journaled and not applied yet, queued again.
    public var pendingDeletes = 0
    /// Renames a crash interrupted, finished.
    public var finishedRenames = 0
}
