// The filesystem core's facade: an S3 prefix as a POSIX directory tree, independent of FUSE and of any C
// module. It owns the components and routes each operation to them:
//
//   Namespace/  inodes, lookups, listings (Namespace, a pure InodeTable); rename, unlink, rmdir, mkdir, setattr
//   Read/       reads of one object version through the block cache, read-ahead (ObjectReader), preload
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
    /// The versions read handles pinned, kept readable when this mount changes their key in S3.
    let openObjects: OpenObjects
    let handleNumbers: HandleNumbers

    /// Preloads into this mount's cache through its reader (`ckptfs preload`), leaving out files with local
    /// changes and names whose delete is queued.
    public let preloader: Preloader
    /// Records the blocks reads ask for (`FSOptions.recordAccess`).
    let recorder: AccessRecorder?

    // Write-back (Write/, Upload/).
    let writeBack: WriteBack

    let counters = Mutex(FSStats())

    /// Opens the filesystem over `cache` (its directory also holds the staging area and the journal). Call
    /// `recover()` before serving requests, so files an earlier mount acknowledged are queued again.
    public init(client: any ObjectClient, bucket: String, prefix: String, cache: BlockCache, options: FSOptions,
                logger: Logger = Logger(label: "ckptfs.fs")) throws(FSError) {
        self.client = client
        self.bucket = bucket
        var p = String(decoding: prefix.utf8.drop { $0 == UInt8(ascii: "/") }, as: UTF8.self)
        if !p.isEmpty && !p.endsWithSlash { p += "/" }
        self.prefix = p
        self.cache = cache
        self.options = options
        self.logger = logger
        let handleNumbers = HandleNumbers()
        self.handleNumbers = handleNumbers
        // GETs (the reader's, a preload's) and HEADs (the namespace's) tell what they learn of a version's
        // stored mtime to one place, so a listed file read before needs no HEAD.
        let versions = KnownVersions(limit: options.maxListedEntries)
        let reader = ObjectReader(client: client, bucket: bucket, cache: cache, options: options, versions: versions)
        let localFiles = LocalFiles()
        let changes = ChangeQueue(options: options)
        let namespace = Namespace(client: client, bucket: bucket, rootKey: p, options: options,
                                  overlay: WriteBackOverlay(files: localFiles, changes: changes), mountTime: Date(),
                                  versions: versions, smallObjects: reader, logger: logger)
        self.reader = reader
        self.namespace = namespace
        let openObjects = OpenObjects(reader: reader, logger: logger)
        self.openObjects = openObjects
        self.recorder = try options.recordAccess.map { path throws(FSError) in
            try AccessRecorder(path: path, bucket: bucket, blockSize: Int64(cache.blockSize))
        }
        let overlay = namespace.overlay
        self.preloader = Preloader(reader: reader, root: p, skip: { overlay.localMeta(of: $0) != nil || overlay.isHidden($0) })
        self.writeBack = try WriteBack(client: client, bucket: bucket, prefix: p, options: options, logger: logger,
                                       cache: cache, notices: namespace, reader: reader, localFiles: localFiles,
                                       changes: changes, handleNumbers: handleNumbers, openObjects: openObjects)
    }

    public var stats: FSStats {
        var s = counters.withLock { $0 }
        s.putRequests = writeBack.puts.load(ordering: .relaxed)
        (s.getRequests, s.bytesDownloaded) = reader.counters.withLock { $0 }
        let (lists, heads) = namespace.counters.withLock { $0 }
        s.listRequests += lists
        s.headRequests += heads
        s.cache = cache.stats
        return s
    }

    /// Before the process exits: blocks downloaded so far, and saves that landed (`FSOptions.cacheSaves`), are
    /// stored in the cache, so a remount over the same cache directory reads them without downloading them.
    public func finishCacheWrites() async {
        await reader.finishCacheWrites()
        let seeder = writeBack.seeder
        _ = try? await offPool { () throws(FSError) in seeder.waitQueued() }
        recorder?.flush()
    }

    func checkWritable() throws(FSError) { try writeBack.checkWritable() }

    // MARK: Namespace

    /// Finds `name` in directory `parent` and takes one lookup reference on the result (released by `forget`).
    public func lookup(parent: UInt64, name: String) async throws(FSError) -> Attributes {
        try await namespace.lookup(parent: parent, name: name)
    }

    /// `lookup` answered from memory, without waiting: nil when S3 must be asked (call `lookup`).
    public func lookupNow(parent: UInt64, name: String) throws(FSError) -> Attributes? {
        try namespace.lookupAtHand(parent: parent, name: name)
    }

    public func getattr(ino: UInt64) async throws(FSError) -> Attributes { try await namespace.getattr(ino: ino) }

    /// `getattr` on the calling thread when it needs no request to S3; nil when it does (call `getattr`).
    public func getattrNow(ino: UInt64) throws(FSError) -> Attributes? { try namespace.getattrAtHand(ino: ino) }

    /// The kernel dropped `count` references to `ino`.
    public func forget(ino: UInt64, count: UInt64) { namespace.forget(ino: ino, count: count) }

    /// From now on the core tells `kernel` when a name stops naming the inode the kernel holds for it.
    public func tell(_ kernel: any KernelCaches) { namespace.kernel.withLock { $0 = kernel } }

    public func opendir(ino: UInt64) throws(FSError) -> UInt64 { try namespace.opendir(ino: ino) }

    public func releasedir(handle: UInt64) { namespace.releasedir(handle: handle) }

    /// Fills `reply` with the entries of directory handle `handle` from `offset` (0 = start), at most `limit`;
    /// nothing added means the end. See `Namespace.readdir`.
    public func readdir(handle: UInt64, offset: Int64, limit: Int, into reply: inout some DirectoryReplier) async throws(FSError) {
        try await namespace.readdir(handle: handle, offset: offset, limit: limit, into: &reply)
    }

    // MARK: Write-back

    /// Creates `name` in `parent` (empty, local until uploaded) and opens it for writing. On the calling thread:
    /// it asks S3 nothing and waits for nothing but the staged file's creation on local disk.
    public func create(parent: UInt64, name: String, flags: Int32) throws(FSError) -> (Attributes, UInt64) {
        let dir = try namespace.node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try Namespace.checkStorable(name, in: dir.key, isDirectory: false)
        guard Namespace.validName(name) else { throw FSError(EINVAL, "not a valid name: \(name)") }
        // Also a name of a view directory itself ("f@versions"): its lookup shows the view, so the file made
        // under it could never be opened again (outside testing round 7; mkdir and rename refused it already).
        try Namespace.refuseInVersionView(dir.key + name, dir.key + name + "/")
        let f = try writeBack.createFile(key: dir.key + name)
        let attr = namespace.created(parent: parent, name: name, key: dir.key + name, meta: f.current.meta)
        return (attr, writeBack.newHandle(on: f, ino: attr.ino, writable: true))
    }

    /// Writes `data` at `offset` of a handle open for writing: `.done(count)`, or `.later` when blocks of a file
    /// opened in place must come from S3 first (see `WriteBack.write`).
    public func write(handle: UInt64, offset: Int64, data: UnsafeRawBufferPointer) throws(FSError) -> WriteResult {
        try writeBack.write(handle: handle, offset: offset, data: data)
    }

    /// close(), on the calling thread: true once the data is on local disk and journaled; false when blocks of
    /// a file changed in place must come from S3 first, and nothing was done: then call `flush` (see
    /// `WriteBack.flushNow`).
    public func flushNow(handle: UInt64) throws(FSError) -> Bool { try writeBack.flushNow(handle: handle) }

    /// close(): the data is on local disk and journaled when this returns (see `WriteBack.flush`).
    public func flush(handle: UInt64) async throws(FSError) { try await writeBack.flush(handle: handle) }

    /// fsync(): with durable fsync, returns once the file is in S3; otherwise once it is on local disk.
    public func fsync(handle: UInt64) async throws(FSError) { try await writeBack.fsync(handle: handle) }

    /// Waits until every change acknowledged under `path` ("" for all) is in S3, or `timeout` passes; returns
    /// what is not durable, with why (see `WriteBack.flushAll`).
    public func flushAll(under path: String, timeout: Duration?) async -> [(path: String, reason: String)] {
        await writeBack.flushAll(under: path, timeout: timeout)
    }

    /// What the write-back is doing (`ckptfs status`).
    public var writeBackStatus: WriteBackStatus { writeBack.writeBackStatus }

    /// Replays the journal an earlier mount left and queues again what it acknowledged. Call before serving.
    public func recover() async throws(FSError) -> RecoveryReport { try await writeBack.recover() }

    /// Stops background uploads (what is not durable stays in the journal) and releases the cache directory,
    /// as a crash would. For tests of recovery.
    public func shutdown() { writeBack.shutdown() }

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
