// Public types the core exchanges with its callers: attributes, directory entries, replies, counters.
import CkptCache
import CkptS3
import Foundation

/// What stat reports for a file or directory.
public struct Attributes: Sendable, Equatable {
    public var ino: UInt64
    public var isDirectory: Bool
    public var size: Int64
    public var mtime: Date
    /// Permission bits only; the file type comes from `isDirectory`.
    public var permissions: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var nlink: UInt32 { isDirectory ? 2 : 1 }
}

/// A directory entry.
struct DirEntry: Sendable, Equatable {
    public var name: String
    public var ino: UInt64
    public var isDirectory: Bool
    /// The offset to pass to continue after this entry.
    public var nextOffset: Int64
}

/// A failure of a filesystem operation: an errno for the kernel, a message for the log, and what caused it.
///
/// Errors from S3 become FSErrors in one place, `init(_:during:)`, so the same S3 answer always means the same
/// thing to the caller; code that must decide on a failure asks `kind`, never the errno.
public struct FSError: Error, Sendable, CustomStringConvertible {
    public var errno: Int32
    public var message: String
    public var kind: Kind = .other
    /// The S3 failure behind this one, if any.
    public var cause: S3Error?

    /// What a caller may need to decide on.
    public enum Kind: Sendable, Equatable {
        case other
        /// The object version a read pinned (by ETag) is gone or changed in S3 (PreconditionFailed, NoSuchKey on
        /// an If-Match GET): the reader must look the path up again (ESTALE) or, for a file opened in place, the
        /// parts it did not rewrite are lost (a conflict).
        case objectChanged
        /// A conditional write failed: someone else changed the object since this file was opened or created
        /// here. The local copy is kept and reported; nothing is retried.
        case conflict
        /// The server does not implement conditional writes (501 NotImplemented).
        case conditionsUnsupported
        /// S3 could not be reached or did not answer usefully after the client's retries (no response,
        /// timeouts, 5xx, SlowDown): an outage, not an answer about the object.
        case unreachable
    }

    public init(_ errno: Int32, _ message: String = "") {
        self.errno = errno
        self.message = message
    }

    /// What an S3 request made for `use` failing with `e` means. The one table from S3 errors to errnos:
    ///
    /// | S3 error | read (ETag-pinned GET/HEAD) | write (conditional PUT/complete) | other |
    /// |---|---|---|---|
    /// | NoSuchKey, NoSuchBucket | ENOENT, objectChanged | ENOENT | ENOENT |
    /// | PreconditionFailed (412) | ESTALE, objectChanged | EIO, conflict | ESTALE |
    /// | AccessDenied | EACCES | EACCES | EACCES |
    /// | NotImplemented (501) | EIO | EIO, conditionsUnsupported | EIO |
    /// | no response, timeout, 5xx, SlowDown (after the client's retries) | EIO, unreachable | EIO, unreachable | EIO, unreachable |
    /// | anything else | EIO | EIO | EIO |
    public init(_ e: S3Error, during use: S3Use) {
        switch e.code {
        case .noSuchKey, .noSuchBucket:
            self.init(ENOENT, e.description, cause: e)
            if use == .read { kind = .objectChanged }
        case .accessDenied:
            self.init(EACCES, e.description, cause: e)
        case .preconditionFailed:
            switch use {
            case .read:
                self.init(ESTALE, "the object changed while open: \(e.description)", cause: e)
                kind = .objectChanged
            case .write:
                self.init(EIO, "conflict: \(e.description)", cause: e)
                kind = .conflict
            case .other:
                self.init(ESTALE, "the object changed: \(e.description)", cause: e)
            }
        case .transport, .slowDown, .internalError, .serviceUnavailable, .requestTimeout:
            self.init(EIO, e.description, cause: e, kind: .unreachable)
        default:
            self.init(EIO, e.description, cause: e)
            if use == .write && (e.code == .other("NotImplemented") || e.httpStatus == 501) {
                kind = .conditionsUnsupported
            } else if (e.httpStatus ?? 0) >= 500 {
                kind = .unreachable
            }
        }
    }

    init(_ errno: Int32, _ message: String, cause: S3Error?, kind: Kind = .other) {
        self.init(errno, message)
        self.cause = cause
        self.kind = kind
    }

    /// What an S3 request was for, which decides what its failure means (see `init(_:during:)`).
    public enum S3Use: Sendable { case read, write, other }

    /// Someone else changed the object (a conditional write failed, or bytes a file opened in place still needed
    /// from S3 are gone).
    public static func conflict(_ message: String) -> FSError { FSError(EIO, "conflict: " + message, cause: nil, kind: .conflict) }
    public static let noEntry = FSError(ENOENT)
    public static let notDirectory = FSError(ENOTDIR)
    public static let isDirectory = FSError(EISDIR)
    public static let readOnly = FSError(EROFS)
    public static let badHandle = FSError(EBADF)

    public var isConflict: Bool { kind == .conflict }

    public var description: String {
        let name = String(cString: strerror(errno))
        return message.isEmpty ? name : "\(name): \(message)"
    }
}

/// A file descriptor owned by the value holding it: closed when the last reference goes, so nobody closes
/// descriptors by convention.
public final class OwnedDescriptor: Sendable {
    public let rawValue: Int32
    /// Called once the descriptor is closed (a staged file's bytes are counted until then: StagedVersion.open).
    private let closed: (@Sendable () -> Void)?
    init(_ fd: Int32, closed: (@Sendable () -> Void)? = nil) {
        rawValue = fd
        self.closed = closed
    }
    deinit {
        close(rawValue)
        closed?()
    }
}

/// Bytes held in memory for a read reply (a block just downloaded); valid while this value lives.
public struct ReadBytes: @unchecked Sendable {
    private let owner: BlockBuffer
    init(_ owner: BlockBuffer) { self.owner = owner }
    public var bytes: UnsafeRawBufferPointer { owner.bytes }
}

/// One piece of a read reply: bytes in memory, or a range of a file (a cached block, a staged file), sent
/// without copying through user space where the kernel interface allows it. The segment owns what it names.
public enum ReadSegment: Sendable {
    /// `length` bytes at `offset` in `bytes`.
    case memory(ReadBytes, offset: Int, length: Int)
    /// `length` bytes at `offset` in the file.
    case file(OwnedDescriptor, offset: Int64, length: Int)

    public var count: Int {
        switch self {
        case .memory(_, _, let n): return n
        case .file(_, _, let n): return n
        }
    }
}

/// The answer to an open: the handle, and how the kernel should treat its pages.
public struct OpenReply: Sendable {
    public var handle: UInt64
    /// The core asks for direct I/O (a cold read-only open of a large file, FSOptions.directReadMinSize); the
    /// adapter grants it only where the kernel can still map such a file.
    public var directIO: Bool
    /// The kernel's pages of the file stay valid across opens (a read handle pins one ETag); false for writers.
    public var keepCache: Bool
}

/// What a write did: done (bytes written), or it must first fetch blocks of a file opened in place, which the
/// returned `PendingWrite` does (once, with its own copy of the bytes).
public enum WriteResult: Sendable {
    case done(Int)
    case later(PendingWrite)
}

/// A write that waits for blocks from S3; `finish()` completes it and returns the bytes written.
public struct PendingWrite: Sendable {
    let run: @Sendable () async throws(FSError) -> Int
    public func finish() async throws(FSError) -> Int { try await run() }
}

/// Receives the entries of one readdir reply, in order, until it is full.
public protocol DirectoryReplier {
    /// readdirplus: entries carry attributes (each one given is a lookup reference the kernel now holds).
    var plus: Bool { get }
    /// Whether an entry named `name` still fits in the reply.
    func fits(_ name: String) -> Bool
    /// Adds an entry that fits. `attributes`: with `plus`, the entry's attributes, or nil when the core has none
    /// to give (the kernel then looks the entry up); always nil without `plus`. `nextOffset`: where a later
    /// readdir continues after this entry.
    mutating func add(name: String, ino: UInt64, isDirectory: Bool, attributes: Attributes?, nextOffset: Int64)
}

/// The kernel's caches of names and inodes, as far as the core tells them what stopped being true (the FUSE
/// adapter's notifications; nothing in tests of the core).
public protocol KernelCaches: Sendable {
    /// `name` in directory `parent` no longer names inode `ino` (which shows a version that is gone): the
    /// kernel should drop the entry, so the next use of the path looks it up, and `ino`'s cached pages. Must not
    /// wait for the kernel: it may be called while a request of the same directory is being answered.
    func entryReplaced(parent: UInt64, name: String, ino: UInt64)
}

/// Counters the mount exposes (status, tests).
public struct FSStats: Sendable {
    public var getRequests = 0
    public var bytesDownloaded: Int64 = 0
    public var listRequests = 0
    public var headRequests = 0
    public var putRequests = 0
    /// Read-only opens that asked for direct I/O (FSOptions.directReadMinSize).
    public var directOpens = 0
    public var cache = CacheStats()
}

/// Runs one S3 request made for `use`; its failure becomes an FSError through the one table
/// (`FSError.init(_:during:)`).
func s3<T>(_ use: FSError.S3Use, _ request: () async throws(S3Error) -> T) async throws(FSError) -> T {
    do { return try await request() } catch { throw FSError(error, during: use) }
}
