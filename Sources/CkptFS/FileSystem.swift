// The filesystem core's facade: an S3 prefix as a POSIX directory tree, independent of FUSE and of any C
// module. It owns the components and routes each operation to them:
//
//   Namespace/  inodes, lookups, listings (Namespace, a pure InodeTable); rename, unlink, rmdir, mkdir, setattr
//   Read/       reads of one object version through the block cache, read-ahead (ObjectReader)
//   Write/      staged versions of files written here, the journal that acknowledges them, crash recovery
//   Upload/     the ordered queue of changes to S3 (ChangeQueue), the uploader, durability waits, status
//
// Dependencies point one way: the namespace sees local changes only through `LocalOverlay`; the reader knows
// only the object client and the cache; uploads tell the namespace what landed (`objectLanded`).
import CkptCache
import CkptS3
import Foundation
import Logging
import Synchronization

public final class FileSystem: Sendable {
    public static let rootIno: UInt64 = 1

    public let client: any ObjectClient
    public let bucket: String
    /// The key prefix the mount shows as its root; empty or ending with "/".
    public let prefix: String
    public let cache: BlockCache
    public let options: FSOptions
    let logger: Logger

    let namespace: Namespace

    // Reads (Read/).
    let reader: ObjectReader
    let handles = Mutex<[UInt64: ReadHandle]>([:])
    let nextHandle = Atomic<UInt64>(1)

    // Write-back (Write/, Upload/).
    /// Keys with local changes, by key.
    let localFiles = LocalFiles()
    let localHandles = Mutex<[UInt64: LocalHandle]>([:])
    let nextVersion = Atomic<UInt64>(0)
    /// Set once the server rejected a conditional write as not implemented: later uploads go without.
    let conditionsUnsupported = Atomic<Bool>(false)
    let changes: ChangeQueue
    let journal: Journal
    /// Tags this cache directory's uploads (x-amz-meta-ckptfs-version), so a later mount of it recognises its
    /// own earlier uploads after a crash (Uploads.swift).
    let writerId: String
    let staging: StagingArea
    var journalPath: String { cache.directory + "/journal" }

    let counters = Mutex(FSStats())

    /// Opens the filesystem over `cache` (its directory also holds the staging area and the journal). Call
    /// `recover()` before serving requests, so files an earlier mount acknowledged are queued again.
    public init(client: any ObjectClient, bucket: String, prefix: String, cache: BlockCache, options: FSOptions,
                logger: Logger = Logger(label: "ckptfs.fs")) throws(FSError) {
        self.client = client
        self.bucket = bucket
        var p = prefix
        while p.hasPrefix("/") { p.removeFirst() }
        if !p.isEmpty && !p.hasSuffix("/") { p += "/" }
        self.prefix = p
        self.cache = cache
        self.options = options
        self.logger = logger
        self.staging = StagingArea(cache: cache)
        self.journal = try Journal(path: cache.directory + "/journal")
        self.writerId = FileSystem.writerId(directory: cache.directory)
        self.changes = ChangeQueue(options: options)
        self.reader = ObjectReader(client: client, bucket: bucket, cache: cache, options: options)
        self.namespace = Namespace(client: client, bucket: bucket, rootKey: p, options: options,
                                   overlay: WriteBackOverlay(files: localFiles, changes: changes), mountTime: Date())
    }

    public var stats: FSStats {
        var s = counters.withLock { $0 }
        (s.getRequests, s.bytesDownloaded) = reader.counters.withLock { $0 }
        let (lists, heads) = namespace.counters.withLock { $0 }
        s.listRequests += lists
        s.headRequests += heads
        s.cache = cache.stats
        return s
    }

    func checkWritable() throws(FSError) {
        if options.readOnly { throw FSError(EROFS, "mounted read-only") }
    }

    /// A new id for the journal: of a staged version, a delete, a rename's intent.
    func newJournalId() -> UInt64 { nextVersion.wrappingAdd(1, ordering: .relaxed).newValue }

    // MARK: Namespace

    /// Finds `name` in directory `parent` and takes one lookup reference on the result (released by `forget`).
    public func lookup(parent: UInt64, name: String) async throws(FSError) -> Attributes {
        try await namespace.lookup(parent: parent, name: name)
    }

    public func getattr(ino: UInt64) async throws(FSError) -> Attributes { try await namespace.getattr(ino: ino) }

    /// The kernel dropped `count` references to `ino`.
    public func forget(ino: UInt64, count: UInt64) { namespace.forget(ino: ino, count: count) }

    public func opendir(ino: UInt64) throws(FSError) -> UInt64 { try namespace.opendir(ino: ino) }

    public func releasedir(handle: UInt64) { namespace.releasedir(handle: handle) }

    /// Fills `reply` with the entries of directory handle `handle` from `offset` (0 = start), at most `limit`;
    /// nothing added means the end. See `Namespace.readdir`.
    public func readdir(handle: UInt64, offset: Int64, limit: Int, into reply: inout some DirectoryReplier) async throws(FSError) {
        try await namespace.readdir(handle: handle, offset: offset, limit: limit, into: &reply)
    }

    /// Longest name of one file or directory, in bytes of UTF-8 (NAME_MAX; `statfs` reports it).
    public static var maxNameBytes: Int { Namespace.maxNameBytes }

    public struct StatFS: Sendable {
        public var blockSize: UInt64 = 1 << 20
        public var blocks: UInt64 = 1 << 30
        public var freeBlocks: UInt64 = 1 << 30
        public var files: UInt64 = 1 << 30
        public var freeFiles: UInt64 = 1 << 30
        public var nameMax: UInt64 = 255
    }

    public func statfs() -> StatFS { StatFS() }
}
