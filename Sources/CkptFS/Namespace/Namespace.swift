// The namespace: an S3 prefix as a directory tree, independent of FUSE.
//
// Directories are key prefixes (and `dir/` marker objects); files are objects. Inode numbers are assigned per
// (parent, name) and never reused during a mount; one inode stands for one version of an object
// (InodeTable.swift). Attributes, directory listings and negative lookups are cached for `metadataTTL`. A name
// that is both an object and a prefix is shown as the directory. Keys that cannot be file names (empty segments
// from `//`, `.`, `..`) are not shown.
//
// Local changes are laid over S3's view through `LocalOverlay` (a file written here and not uploaded yet shows
// its local version; a name whose delete is queued is hidden), so the namespace knows nothing of staging,
// journals or uploads, and can be tested with an overlay of its own.
//
// Depends on: the object client (HEAD, ListObjectsV2), the overlay. Used by: the facade (lookup, getattr,
// readdir, forget) and the operations that change names (Rename.swift, Remove.swift).
import CkptS3
import Foundation
import Logging
import Synchronization

/// What the namespace needs to know of local changes (implemented by the write-back: `WriteBackOverlay`).
protocol LocalOverlay: Sendable {
    /// The metadata of `key`'s newest local version, when the file has local changes.
    func localMeta(of key: String) -> Meta?
    /// The metadata of the file behind inode `ino` when it was unlinked while open (stat through its descriptor).
    func orphanMeta(ino: UInt64) -> Meta?
    /// The files directly under the prefix `dirKey` that have local versions: name and metadata.
    func localChildren(of dirKey: String) -> [(name: String, meta: Meta)]
    /// Whether a queued delete hides `key` (a file key, or a directory prefix ending in "/").
    func isHidden(_ key: String) -> Bool
    /// Whether any delete is queued (listings then filter what they show).
    var hasHidden: Bool { get }
    /// How many times a failed save split `key`'s local file off (`WriteBack.splitOff`): an open or truncate
    /// that read it with its inode (`Namespace.nodeAndSplits`) and finds it changed when it joins the file
    /// raced a failed save, and its inode shows that save.
    func splits(of key: String) -> UInt64
}

/// Reads all of a small object with one GET, where a HEAD would tell only its metadata: the answer's headers
/// are what the HEAD would have said, and its body goes to the block cache (`ObjectReader.fetchSmallObject`).
protocol SmallObjectFetcher: Sendable {
    /// The first `limit` bytes of `key` (at most one cache block), of whatever version S3 has now; returns what
    /// the answer says of that version. Throws the GET's error (`.invalidRange`: the object is empty now).
    func fetchSmallObject(_ key: String, limit: Int64) async throws(S3Error) -> ObjectInfo
    /// Bytes of a cache block: the most `fetchSmallObject` keeps.
    var blockSize: Int64 { get }
    /// Whether the data of version `etag` of `key` (its first block) is in the cache already (a preload's): the
    /// metadata is then all that is missing, and a HEAD asks for it.
    func isCached(_ key: String, etag: String) -> Bool
}

final class Namespace: WriteBackNotices {
    static let rootIno: UInt64 = 1

    let client: any ObjectClient
    let bucket: String
    let options: FSOptions
    let overlay: any LocalOverlay
    let mountTime: Date
    let logger: Logger

    let table: Mutex<InodeTable>
    /// Told when a name stops naming the inode the kernel holds for it (`FileSystem.tell`).
    let kernel = Mutex<(any KernelCaches)?>(nil)
    let dirHandles = Mutex<[UInt64: DirHandle]>([:])
    private let nextDirHandle = Atomic<UInt64>(1)
    /// Directories where lookups missed lately, and their listing for lookups (DirectoryReader.swift).
    let dirProbes = Mutex<[UInt64: DirProbe]>([:])
    /// HEADs in flight for stored mtimes, by key; lookups in listing order, by directory; the bound on those
    /// HEADs in flight (StoredMtimes.swift).
    let mtimeHeads = Mutex(BytesDictionary<Task<Result<Meta?, FSError>, Never>>())
    let mtimeScans = Mutex<[UInt64: MtimeScan]>([:])
    let metaSlots = AsyncSemaphore(Namespace.mtimeHeadConcurrency)
    /// LIST and HEAD requests made.
    let counters = Mutex<(lists: Int, heads: Int)>((0, 0))
    /// What S3 last confirmed of keys (files; directories as "dir/"), for stale-if-error (Lookup.swift).
    let confirmed = Mutex(Confirmed())
    /// This mount's changes to S3 while requests that read S3 were in flight (ChangesInFlight.swift). A leaf
    /// lock: taken under the table's lock and the write-back's, it takes none.
    let inFlight = Mutex(ChangesInFlight())
    /// Stored mtimes of versions GETs and HEADs answered for (KnownVersions.swift): a file a listing shows in
    /// such a version needs no HEAD.
    let versions: KnownVersions
    /// The versions views looked at lately (History/VersionView.swift).
    let versionViews = VersionViews()
    /// Reads small listed files whole in place of a HEAD (the object reader); nil: always HEAD.
    let smallObjects: (any SmallObjectFetcher)?

    /// `rootKey`: the key prefix the mount shows as its root (empty or ending in "/").
    init(client: any ObjectClient, bucket: String, rootKey: String, options: FSOptions, overlay: any LocalOverlay,
         mountTime: Date, versions: KnownVersions? = nil, smallObjects: (any SmallObjectFetcher)? = nil,
         logger: Logger = Logger(label: "ckptfs.fs")) {
        self.smallObjects = smallObjects
        self.versions = versions ?? KnownVersions(limit: options.maxListedEntries)
        self.logger = logger
        self.client = client
        self.bucket = bucket
        self.options = options
        self.overlay = overlay
        self.mountTime = mountTime
        table = Mutex(InodeTable(root: Node(parent: Namespace.rootIno, name: "", key: rootKey,
                                            meta: Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime),
                                            fetched: .now, lookups: 1), ino: Namespace.rootIno))
    }

    func newDirHandle() -> UInt64 { nextDirHandle.wrappingAdd(1, ordering: .relaxed).newValue }

    func attributes(_ ino: UInt64, _ m: Meta) -> Attributes {
        Attributes(ino: ino, isDirectory: m.isDirectory, size: m.isDirectory ? 4096 : m.size,
                   mtime: m.isDirectory ? mountTime : m.mtime,
                   permissions: m.isDirectory ? options.dirMode : options.fileMode, uid: options.uid, gid: options.gid)
    }

    /// Whether an object key segment can be a file name.
    /// Also not one whose first scalar joins the "/" before it into one Character (a combining mark), or whose
    /// last joins the "/" after it (a prepended mark such as U+0600): its key would not split at that "/".
    static func validName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.utf8.contains(UInt8(ascii: "/")) && !name.utf8.contains(0)
            && name.utf8.count <= 255 && (name.utf8.allSatisfy { $0 < 0x80 } || ("/" + name + "/").count == name.count + 2)
    }

    /// How long what S3 said of a file or directory is trusted: the TTL, or the mount's life for an immutable
    /// bucket (`FSOptions.immutable`; a century stands for it).
    var trustedFor: Duration { options.immutable ? .seconds(100 * 365 * 86_400) : options.metadataTTL }

    func isFresh(_ t: ContinuousClock.Instant) -> Bool { ContinuousClock.now - t < trustedFor }

    /// A complete listing of a directory, made now (by a reader's `readdir`, or empty by `mkdir`): its entries
    /// answer lookups for `trustedFor`; a name it lacks is known absent for at most 5 s like any missed lookup
    /// (S-CONS-NEGATIVE: another client's new object is found within 5 s), on an immutable bucket for the TTL
    /// (its set of names also answers readdir then, S-CONS-IMMUTABLE).
    func newListing(_ entries: BytesDictionary<Meta>) -> Listing {
        var l = Listing(entries: entries, expires: .now + trustedFor)
        l.negativeUntil = .now + (options.immutable ? options.metadataTTL : Namespace.negativeTTL(options.metadataTTL))
        return l
    }

    /// How long a name found absent is trusted: 5 s, or the TTL when that is shorter.
    static func negativeTTL(_ metadataTTL: Duration) -> Duration { min(metadataTTL, .seconds(5)) }

    func node(_ ino: UInt64) throws(FSError) -> Node {
        guard let n = table.withLock({ $0[ino] }) else { throw FSError(ESTALE, "unknown inode \(ino)") }
        return n
    }

    /// Node `ino` and how many times its key's local file was split off (`LocalOverlay.splits`), read together:
    /// a failed save splits and renews the inodes in one step (`shownVersionDropped`), so an inode that is not
    /// superseded here showed the file that count belongs to.
    func nodeAndSplits(_ ino: UInt64) throws(FSError) -> (Node, splits: UInt64) {
        guard let (n, splits) = table.withLock({ t in t[ino].map { ($0, overlay.splits(of: $0.key)) } }) else {
            throw FSError(ESTALE, "unknown inode \(ino)")
        }
        return (n, splits)
    }

    // MARK: What the write-back tells the namespace

    /// A file was created here (not in S3 yet): (parent, name) is `key` with `meta`, one lookup reference taken.
    func created(parent: UInt64, name: String, key: String, meta: Meta) -> Attributes {
        let attr = remember(parent: parent, name: name, key: key, meta: meta, addLookup: true)
        table.withLock { t in if t.listings[parent] != nil { t.listings[parent]?.entries[name] = meta } }
        return attr
    }

    /// S3 now holds `change` for `key`, by this mount's doing; called before the local state that stood for it
    /// goes. Requests in flight correct their answers with it (ChangesInFlight.swift).
    func changedInS3(key: String, _ change: KeyChange) { inFlight.withLock { $0.record(key, change) } }

    /// Sends one request that reads S3 (LIST, HEAD), then reads the local state its answer is to be seen with
    /// (`local`, given the answer: hides, local files), and returns both with what this mount changed in S3
    /// meanwhile. In that order: a change is recorded before the local state that stood for it goes, so every
    /// change the answer missed is either still in what `local` read or in the changes returned.
    func observing<T: Sendable, L>(_ request: () async throws(FSError) -> T,
                                   local: (T) -> L) async throws(FSError) -> (T, L, ChangesInFlight.Seen) {
        let ticket = inFlight.withLock { $0.begin() }
        switch await capture(request) {
        case .failure(let error):
            _ = inFlight.withLock { $0.end(ticket) }
            throw error
        case .success(let value):
            let localState = local(value)
            return (value, localState, inFlight.withLock { $0.end(ticket) })
        }
    }

    /// The keys and prefixes of `page` that a queued delete hides.
    func hiddenKeys(_ page: ListObjectsPage) -> BytesSet {
        guard overlay.hasHidden else { return [] }
        return BytesSet(page.objects.map(\.key).filter(overlay.isHidden) + page.commonPrefixes.filter(overlay.isHidden))
    }

    /// A version of `key` landed in S3 with `meta` (and no local version stands for it any more).
    func objectLanded(key: String, meta: Meta) { table.withLock { $0.objectLanded(key: key, meta: meta) } }

    /// The ETags of the versions of `key` the namespace knows (inodes, listings).
    func knownETags(of key: String) -> Set<String> { table.withLock { $0.knownETags(of: key) } }

    /// The local version of `key` went without reaching S3: stat shows the object again.
    func localVersionGone(key: String) { table.withLock { $0.localVersionGone(key: key) } }

    /// The version of `key` the kernel's inodes show was dropped: each is superseded (an open of it fails with
    /// ESTALE, and the kernel looks the path up again), and the path gets a new inode at its next lookup, as
    /// when another writer replaced the object (see `replaced`).
    func shownVersionDropped(key: String, by drop: () -> Void) {
        tellKernel(renewFileInodes(of: key, localVersionGone: true, by: drop))
    }

    /// A rename over the name or an unlink tells the kernel nothing: the kernel made that change to its own
    /// entries, and its notice would wait for the directory the rename or unlink holds while it waits for this
    /// daemon: after a kill -9 in between, neither ever ended and the mount could not even be detached
    /// (outside testing round 10: 3 of 3 runs of renames over one name in 4 processes).
    func fileReplaced(key: String, by change: () -> Void) { _ = renewFileInodes(of: key, localVersionGone: false, by: change) }

    func fileReplacedUndoably(key: String, by change: () -> Void) -> ReplacedInodes {
        var out = ReplacedInodes()
        out.freed = table.withLock { t in
            change()
            return t.renew(fileKey: key, renewed: &out.renewed)
        }
        return out
    }

    func fileReplaceUndone(_ r: ReplacedInodes) { table.withLock { $0.unrenew(r.renewed, freed: r.freed) } }

    /// `change`, then under the same lock the file inodes of `key` superseded and their paths freed (`renew`),
    /// with `localVersionGone` also their listings dropped. Returns the paths freed, for the kernel.
    private func renewFileInodes(of key: String, localVersionGone: Bool, by change: () -> Void) -> [(parent: UInt64, name: String, ino: UInt64)] {
        table.withLock { t in
            change()
            if localVersionGone { t.localVersionGone(key: key) }
            return t.renew(fileKey: key)
        }
    }

    /// Tells the kernel that each (parent, name) no longer names inode `ino` (see `KernelCaches`): without it
    /// the kernel shows the old inode's size (its own, with its write-back cache) for the entry's TTL.
    func tellKernel(_ replaced: [(parent: UInt64, name: String, ino: UInt64)]) {
        guard !replaced.isEmpty, let k = kernel.withLock({ $0 }) else { return }
        for r in replaced { k.entryReplaced(parent: r.parent, name: r.name, ino: r.ino) }
    }
}
