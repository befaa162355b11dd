// Saves entered in the block cache as they land: when a version this mount uploaded lands in S3 under (key,
// ETag), its staged bytes go into the read-through block cache under that key and ETag (`BlockCache.seed`,
// checksummed like every block), so a later read of that version, after the staged copy is let go or after a
// remount on the same cache directory, is served from local disk with no GET. A remount validates as always:
// the blocks are found only under the ETag HEAD or LIST reports for the key then.
//
// Only bytes S3 certainly holds under that ETag go in: the uploader says whether the reply to its write vouches
// for them (`uploadOnce`'s `sent`), the version must have landed under the key it was uploaded to (not moved or
// dropped meanwhile), and the bytes are those of a frozen version (sealed or acknowledged: every later write
// goes to a copy). The one way such a file is written in place again is an unlink while it is open (an orphan
// whose acknowledgement is withdrawn, `WriteBack.orphan`), which sets `orphaned` before any such write: each
// block is read first and the flag checked after, so a block read before the flag is set is the landed bytes.
//
// Off the upload's path: `take` gets the body a small file was sent from (files of up to 1 MiB are read into
// memory once for their upload), or else a descriptor of the staged file, before the version settles (it keeps
// the bytes readable after the staged file is removed), fsync and flush are woken as the version lands, and one
// serial queue copies the saves block by block afterwards. The ticket `take` returns counts as work to wait
// for at exit (`waitQueued`) from before the version lands until its copy ends or the ticket is dropped (the
// version did not land), so an unmount right after a flush finds every landed save in the cache. Reads use
// O_DIRECT where the filesystem allows, and the cache writes whole blocks with O_DIRECT, so a seeded GiB costs
// its XXH64 and no copy through the page cache (0.36 CPU s per GiB by perf, bench/README issue 19). Bounded by the cache's share for unread saves (`BlockCache.seedBound`): a larger save is not entered.
// The cache disk is shared with the staging area, so a save is entered only while the disk keeps room for the
// staging area to grow to its bound (the dirty bound less what is staged) plus `diskMargin`, counting the saves
// taken and not written yet: seeding never takes space a write will need (a write that finds the disk full
// anyway evicts clean blocks, seeded ones among them, before it fails).
import CkptCache
import CkptSystem
import Foundation
import Logging
import Synchronization
import SystemPackage

final class SaveSeeder: Sendable {
    private let cache: BlockCache
    private let bucket: String
    private let logger: Logger
    private let queue = DispatchQueue(label: "ckptfs.seed", qos: .utility)
    private let stopped = Atomic<Bool>(false)
    /// Tickets taken and not finished.
    fileprivate let pending = DispatchGroup()
    /// Bytes (blocks with their header pages) of the saves whose tickets are alive: taken and not written yet.
    fileprivate let reserved = Atomic<Int64>(0)
    /// Free space on the cache disk that seeding always leaves, beyond what the staging area may still take
    /// under the dirty bound. Writes can pass the bound by what they add while nothing that could bring it down
    /// pends (a file still open, saves between landing and their removal): 14 MiB on a 256 MiB cache disk in CI
    /// (test_resources), which with a 32 MiB margin left 12 MiB free.
    static let diskMargin: Int64 = 64 << 20

    /// Bodies of small files that landed (`take`'s `sentBody`) held at most, together, until they are entered; a
    /// save that finds them at this bound is entered from its staged file instead.
    static let heldBodyLimit: Int64 = 64 << 20
    /// Bytes of the bodies that tickets hold now.
    fileprivate let heldBodies = Atomic<Int64>(0)

    /// Where a save's bytes are read from when it is entered.
    enum Source: Sendable {
        /// The staged file (a descriptor of its own).
        case file(OwnedDescriptor)
        /// The bytes one PutObject sent (a small file read into memory for its upload).
        case body([UInt8])
    }

    /// A save that may be entered: where its bytes are, and one unit of `pending` until it is dropped.
    final class Ticket: Sendable {
        let source: Source
        private let seeder: SaveSeeder
        private let bytes: Int64
        fileprivate init(source: Source, seeder: SaveSeeder, bytes: Int64) {
            self.source = source
            self.seeder = seeder
            self.bytes = bytes
            seeder.reserved.wrappingAdd(bytes, ordering: .relaxed)
            if case .body(let b) = source { seeder.heldBodies.wrappingAdd(Int64(b.count), ordering: .relaxed) }
            seeder.pending.enter()
        }
        deinit {
            seeder.reserved.wrappingSubtract(bytes, ordering: .relaxed)
            if case .body(let b) = source { seeder.heldBodies.wrappingSubtract(Int64(b.count), ordering: .relaxed) }
            seeder.pending.leave()
        }
    }

    init(cache: BlockCache, bucket: String, logger: Logger) {
        self.cache = cache
        self.bucket = bucket
        self.logger = logger
    }

    /// A ticket for entering `v` in the cache once it has landed (`seed`), or nil when it is not to be entered
    /// (larger than the cache's share for unread saves, empty, no room on the cache disk beyond what the staging
    /// area may still take, `stagingMayTake` bytes, or its staged file cannot be opened). It holds `sentBody`,
    /// the bytes a PutObject of `v` sent (all of them), while the bodies held stay under `heldBodyLimit`; else a
    /// descriptor: the staged file opened again through /proc/self/fd with O_DIRECT where the filesystem allows
    /// (the same file, read without filling the page cache), else the version's own. Call before the version
    /// settles; drop the ticket if it does not land.
    func take(_ v: StagedVersion, stagingMayTake: Int64, sentBody: [UInt8]? = nil) -> Ticket? {
        let size = v.size
        guard !stopped.load(ordering: .relaxed), cache.canSeed(size: size) else { return nil }
        let bytes = cache.storedSize(ofObject: size)
        var st = statvfs()
        guard statvfs(cache.directory, &st) == 0 else { return nil }
        let free = Int64(st.f_bavail) * Int64(st.f_frsize)
        let before = reserved.wrappingAdd(bytes, ordering: .relaxed).oldValue
        guard free - before - bytes - max(0, stagingMayTake) >= SaveSeeder.diskMargin else {
            reserved.wrappingSubtract(bytes, ordering: .relaxed)
            return nil
        }
        if let sentBody, Int64(sentBody.count) == size,
           heldBodies.load(ordering: .relaxed) + size <= SaveSeeder.heldBodyLimit {
            let ticket = Ticket(source: .body(sentBody), seeder: self, bytes: bytes)
            reserved.wrappingSubtract(bytes, ordering: .relaxed)  // the ticket holds its own from here
            return ticket
        }
        guard let file = try? v.open() else {
            reserved.wrappingSubtract(bytes, ordering: .relaxed)
            return nil
        }
        let direct = v.reopen(file, flags: O_RDONLY | FileDescriptor.OpenOptions.direct.rawValue | O_CLOEXEC)
        let ticket = Ticket(source: .file(direct ?? file), seeder: self, bytes: bytes)
        reserved.wrappingSubtract(bytes, ordering: .relaxed)  // the ticket holds its own from here
        return ticket
    }

    /// Enters `v`, which landed as `etag` under `key`, in the block cache from `ticket` (`take`), in the background.
    /// From a staged file it stops at the first block it cannot read whole, or once the version is orphaned (its
    /// bytes may change); blocks entered before stay (they were read before any change).
    func seed(_ v: StagedVersion, from ticket: Ticket, key: String, etag: String) {
        let size = v.size
        queue.async { [self] in
            defer { withExtendedLifetime(ticket) {} }
            guard !stopped.load(ordering: .relaxed) else { return }
            let entered: Int64
            switch ticket.source {
            case .body(let body):
                // The bytes S3 holds under `etag` (they were sent, and its ETag is their MD5), whatever happened
                // to the version since.
                entered = body.withUnsafeBytes { enter($0, key: key, etag: etag) { true } }
            case .file(let file):
                entered = enter(v, size: size, from: file, key: key, etag: etag)
            }
            logger.debug("save entered in the block cache", metadata: ["key": "\(key)", "etag": "\(etag)",
                                                                     "bytes": "\(entered)", "size": "\(size)"])
        }
    }

    /// Enters `bytes` block by block, the first as block `first`, as the object `key` version `etag`, while
    /// `keep` (asked before each block) says they are still that version's. Returns the bytes entered.
    private func enter(_ bytes: UnsafeRawBufferPointer, key: String, etag: String, first: Int64 = 0,
                       keep: () -> Bool) -> Int64 {
        let bs = cache.blockSize
        var entered: Int64 = 0
        var at = 0
        while at < bytes.count, !stopped.load(ordering: .relaxed) {
            let index = first + Int64(at / bs)
            guard keep() else { break }
            let piece = UnsafeRawBufferPointer(rebasing: bytes[at..<min(bytes.count, at + bs)])
            guard cache.seed(BlockKey(bucket: bucket, key: key, etag: etag, index: index), piece) else { break }
            entered += Int64(piece.count)
            at += piece.count
        }
        return entered
    }

    /// Enters the `size` bytes of `v`'s staged file `file`, a block at a time. Returns the bytes entered.
    private func enter(_ v: StagedVersion, size: Int64, from file: OwnedDescriptor, key: String, etag: String) -> Int64 {
        let bs = cache.blockSize
        // A block, or the save's size in whole pages when smaller (see `StagingArea.forEachChunk`).
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: min(bs, Int(max(4096, (size + 4095) & ~4095))), alignment: 4096)
        defer { buffer.deallocate() }
        let fd = FileDescriptor(rawValue: file.rawValue)
        var index: Int64 = 0
        var entered: Int64 = 0
        while index * Int64(bs) < size, !stopped.load(ordering: .relaxed) {
            let offset = index * Int64(bs)
            let length = Int(min(Int64(bs), size - offset))
            // Whole pages (O_DIRECT): the read ends at the end of the file.
            let want = min(bs, (length + 4095) & ~4095)
            let got = (try? fd.readAll(fromAbsoluteOffset: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))) ?? 0
            guard got >= length else { break }
            // After the read: a write in place can only follow the flag (see the file's comment).
            let n = enter(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), key: key, etag: etag, first: index) {
                !v.state.withLock { $0.orphaned || $0.size != size }
            }
            guard n == Int64(length) else { break }
            entered += n
            index += 1
        }
        return entered
    }

    /// Returns once every save whose ticket was taken before the call is entered or given up (blocking: call off
    /// the cooperative pool).
    func waitQueued() { pending.wait() }

    /// No more blocks are entered (the cache directory is given up).
    func stop() { stopped.store(true, ordering: .relaxed) }
}
