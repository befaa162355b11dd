// The filesystem core: an S3 prefix as a directory tree, independent of FUSE and of any C module.
//
// Namespace. Directories are key prefixes (and `dir/` marker objects); files are objects. Inode numbers
// are assigned per (parent, name) and never change or get reused during a mount. Attributes, directory
// listings and negative lookups are cached for `metadataTTL`. A name that is both an object and a prefix
// is shown as the directory. Keys that cannot be file names (empty segments from `//`, `.`, `..`) are not
// shown.
//
// Reads. Each open handle pins the object's ETag (open revalidates with HEAD); every GET carries
// If-Match, so one handle never mixes two versions. Data is fetched in cache-block units and stored in
// the block cache; concurrent readers of a block share one fetch. Sequential reads grow a read-ahead
// window (requestSize, doubling to maxReadAhead) served by parallel ranged GETs; random reads fetch only
// the blocks they touch.
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
    let mountTime = Date()

    // Namespace (Namespace/).
    let table: Mutex<InodeTable>
    let dirHandles = Mutex<[UInt64: DirHandle]>([:])
    /// Directories where lookups missed lately, and their listing for lookups (DirectoryReader.swift).
    let dirProbes = Mutex<[UInt64: DirProbe]>([:])
    /// HEADs in flight for stored mtimes, by key; lookups in listing order, by directory; the bound on those
    /// HEADs in flight (StoredMtimes.swift).
    let mtimeHeads = Mutex<[String: Task<Result<Meta?, FSError>, Never>]>([:])
    let mtimeScans = Mutex<[UInt64: MtimeScan]>([:])
    let metaSlots = AsyncSemaphore(FileSystem.mtimeHeadConcurrency)

    // Reads (Read/).
    let reader: ObjectReader
    let handles = Mutex<[UInt64: ReadHandle]>([:])
    let nextHandle = Atomic<UInt64>(1)

    // Write-back (Write/, Upload/).
    /// Keys with local changes, by key.
    let local = Mutex<[String: LocalFile]>([:])
    let localHandles = Mutex<[UInt64: LocalHandle]>([:])
    /// Files unlinked while open, by inode: stat through an open descriptor still answers (Writes.swift).
    let orphans = Mutex<[UInt64: LocalFile]>([:])
    let nextVersion = Atomic<UInt64>(0)
    /// Set once the server rejected a conditional write as not implemented: later uploads go without.
    let conditionsUnsupported = Atomic<Bool>(false)
    let uploadState = Mutex(UploadState())
    let uploadSlots: AsyncSemaphore
    let partSlots: AsyncSemaphore
    let journal: Journal
    /// Tags this cache directory's uploads (x-amz-meta-ckptfs-version), so a later mount of it recognises its
    /// own earlier uploads after a crash (Uploads.swift).
    let writerId: String
    let alignedBuffers = AlignedBuffers()
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
        Glibc.mkdir(cache.directory + "/staging", 0o700)
        self.journal = try Journal(path: cache.directory + "/journal")
        self.writerId = FileSystem.writerId(directory: cache.directory)
        self.uploadSlots = AsyncSemaphore(options.uploadConcurrency)
        self.partSlots = AsyncSemaphore(options.partConcurrency)
        self.reader = ObjectReader(client: client, bucket: bucket, cache: cache, options: options)
        self.table = Mutex(InodeTable(root: Node(parent: FileSystem.rootIno, name: "", key: p,
                                                 meta: Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime),
                                                 fetched: .now, lookups: 1), ino: FileSystem.rootIno))
    }

    public var stats: FSStats {
        var s = counters.withLock { $0 }
        (s.getRequests, s.bytesDownloaded) = reader.counters.withLock { $0 }
        s.cache = cache.stats
        return s
    }

    // MARK: Attributes

    func attributes(_ ino: UInt64, _ m: Meta) -> Attributes {
        Attributes(ino: ino, isDirectory: m.isDirectory, size: m.isDirectory ? 4096 : m.size,
                   mtime: m.isDirectory ? mountTime : m.mtime,
                   permissions: m.isDirectory ? options.dirMode : options.fileMode, uid: options.uid, gid: options.gid)
    }

    /// Whether an object key segment can be a file name.
    static func validName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0") && name.utf8.count <= 255
    }

    func isFresh(_ t: ContinuousClock.Instant) -> Bool { ContinuousClock.now - t < options.metadataTTL }

    func node(_ ino: UInt64) throws(FSError) -> Node {
        guard let n = table.withLock({ $0[ino] }) else { throw FSError(ESTALE, "unknown inode \(ino)") }
        return n
    }

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
