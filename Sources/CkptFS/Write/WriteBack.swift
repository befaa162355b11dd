// The write-back: files written through the mount are staged on local disk (StagingArea), acknowledged through
// the journal at close()/fsync(), and uploaded in the background through the ordered change queue
// (Upload/ChangeQueue.swift), in order with the deletes that unlink, rmdir and rename queue. It tells the
// namespace what it needs to know through `WriteBackNotices`: an object that landed, a local version that went
// without reaching S3; the namespace sees local files and queued deletes only through `WriteBackOverlay`.
//
// Depends on: the object client (uploads, deletes, copies), the object reader (blocks of files opened in
// place), the notices above, the journal, the staging area.
import CkptCache
import CkptS3
import Foundation
import Logging
import Synchronization

/// What the write-back tells the namespace (implemented by `Namespace`).
protocol WriteBackNotices: Sendable {
    /// S3 now holds `change` for `key` (an upload of this mount's landed, a delete was applied). Called before
    /// the local state that stood for it (the local version, the hide) goes, possibly under the write-back's
    /// locks: it must take no lock but its own.
    func changedInS3(key: String, _ change: KeyChange)
    /// A version of `key` landed in S3 with `meta` (and no local version stands for it any more).
    func objectLanded(key: String, meta: Meta)
    /// The local version of `key` went without reaching S3: stat shows the object again.
    func localVersionGone(key: String)
    /// The ETags of the versions of `key` the namespace knows (inodes, listings).
    func knownETags(of key: String) -> Set<String>
    /// The version of `key` the kernel was shown (its writes, its size) was dropped unacknowledged: a failed
    /// write or close. The file is what it was before that save, which the kernel's inode cannot show again.
    /// `drop` drops it (it may take the write-back's locks, and no other): run together with the inodes'
    /// renewal, so no lookup or open sees the file dropped and its inode not yet renewed.
    func shownVersionDropped(key: String, by drop: () -> Void)
    /// The local file under `key` is replaced (a rename over it) or removed (unlink) by `change`, which takes the
    /// write-back's locks and no other. Run together with it, the file inodes of `key` are superseded and their
    /// paths freed: an open of one (the kernel looked it up before) fails with ESTALE and the kernel looks the
    /// name up again, instead of joining the file the key holds next with the old file's size and pages.
    func fileReplaced(key: String, by change: () -> Void)
    /// `fileReplaced(key:by:)` for a replacement that may still fail (a rename's copy over the key): what it
    /// changed, for `fileReplaceUndone`.
    func fileReplacedUndoably(key: String, by change: () -> Void) -> ReplacedInodes
    /// The replacement failed and the key names the file it did before: its inodes that
    /// `fileReplacedUndoably(key:by:)` superseded are that file's again (not superseded; their paths named by them again unless
    /// taken since). Before, a failed rename onto an open file left it superseded: its ftruncate failed with
    /// ESTALE for good (model test seed 24184).
    func fileReplaceUndone(_ r: ReplacedInodes)
}

/// The inodes `WriteBackNotices.fileReplacedUndoably(key:by:)` superseded (those not superseded before), and the
/// paths it freed.
struct ReplacedInodes: Sendable {
    var renewed: [UInt64] = []
    var freed: [(parent: UInt64, name: String, ino: UInt64)] = []
}

extension WriteBackNotices {
    /// `shownVersionDropped(key:by:)` of a version dropped already.
    func shownVersionDropped(key: String) { shownVersionDropped(key: key, by: {}) }
}

final class WriteBack: Sendable {
    let client: any ObjectClient
    let bucket: String
    /// The key prefix the mount shows as its root (status reports paths below it).
    let prefix: String
    let options: FSOptions
    let logger: Logger
    let cache: BlockCache
    let notices: any WriteBackNotices
    let reader: ObjectReader

    let staging: StagingArea
    let journal: Journal
    let changes: ChangeQueue
    /// Files with local changes, by key (and unlinked while open, by inode).
    let localFiles: LocalFiles
    /// Open handles on local files.
    let localHandles = Mutex<[UInt64: LocalHandle]>([:])
    /// The last id given to a journal record's subject (a staged version, a delete, a rename's intent).
    let lastJournalId = Atomic<UInt64>(0)
    /// Set once the server rejected a conditional write as not implemented: later uploads go without.
    let conditionsUnsupported = Atomic<Bool>(false)
    /// Set once the server refused a multipart upload that declares a checksum algorithm (501 NotImplemented,
    /// 400 InvalidArgument or InvalidRequest): later parts go without their CRC32C (`FSOptions.partChecksums`).
    let checksumsUnsupported = Atomic<Bool>(false)
    /// Tags this cache directory's uploads (x-amz-meta-ckptfs-version), so a later mount of it recognises its
    /// own earlier uploads after a crash (Uploader.swift).
    let writerId: String
    /// The dirty bound in bytes (FSOptions.maxDirty, or the default it describes).
    let maxDirty: Int64
    /// Writes waiting for room now (the dirty bound).
    let heldWriters = Atomic<Int>(0)
    /// PUT requests made (PutObject, UploadPart).
    let puts = Atomic<Int>(0)
    /// Multipart uploads this mount created and has not completed or aborted yet: never taken for one whose
    /// CreateMultipartUpload reply was lost (`abortLostCreates`).
    let liveMultipart = Mutex<Set<String>>([])
    let handleNumbers: HandleNumbers
    /// Enters saves that landed in the block cache (`FSOptions.cacheSaves`).
    let seeder: SaveSeeder
    /// Versions that read handles have open: kept readable before a change to their key goes to S3
    /// (`OpenObjects.keep(key:)`).
    let openObjects: OpenObjects

    var journalPath: String { cache.directory + "/journal" }

    init(client: any ObjectClient, bucket: String, prefix: String, options: FSOptions, logger: Logger, cache: BlockCache,
         notices: any WriteBackNotices, reader: ObjectReader, localFiles: LocalFiles, changes: ChangeQueue,
         handleNumbers: HandleNumbers, openObjects: OpenObjects) throws(FSError) {
        self.handleNumbers = handleNumbers
        self.openObjects = openObjects
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self.logger = logger
        self.cache = cache
        self.notices = notices
        self.reader = reader
        self.localFiles = localFiles
        self.changes = changes
        staging = StagingArea(cache: cache, partChecksums: options.partChecksums ? options.partSize : nil)
        seeder = SaveSeeder(cache: cache, bucket: bucket, logger: logger)
        journal = try Journal(path: cache.directory + "/journal")
        writerId = WriteBack.writerId(directory: cache.directory)
        // A new cache directory's journal holds keys of this bucket from now on; one that names another bucket
        // keeps it until recovery finds nothing of that bucket pending (`recover`).
        if WriteBack.journalBucket(directory: cache.directory) == nil {
            try WriteBack.setJournalBucket(bucket, directory: cache.directory)
        }
        maxDirty = options.maxDirty ?? WriteBack.defaultMaxDirty(directory: cache.directory)
    }

    /// A new id for the journal: of a staged version, a delete, a rename's intent.
    func newJournalId() -> UInt64 { lastJournalId.wrappingAdd(1, ordering: .relaxed).newValue }

    /// Half of what the filesystem holding `directory` has free (statvfs f_bavail) plus what is staged there
    /// already, at least 16 MiB: the other half is left for the block cache (clean blocks, evicted when the
    /// disk fills), the journal and copies of files open while they upload.
    static func defaultMaxDirty(directory: String) -> Int64 {
        var st = statvfs()
        guard statvfs(directory, &st) == 0 else { return 1 << 30 }
        let free = Int64(st.f_bavail) * Int64(st.f_frsize)
        let staged = StagingArea.diskUsage(of: directory + "/staging")
        return max(16 << 20, (free + staged) / 2)
    }

    func checkWritable() throws(FSError) {
        if options.readOnly { throw FSError(EROFS, "mounted read-only") }
    }
}
