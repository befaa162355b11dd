// The object versions that read handles on this mount have pinned, so that a change this mount makes to a key
// in S3 does not pull a version from under the descriptors still reading it (S-UNLINK-OPEN-CLEAN).
//
// POSIX: a file unlinked, or replaced by a rename over its name, lives on for the descriptors open on it until
// their last close. A file with local changes has its staged copy for that (Write/). A clean file is read from
// S3 by ETag, block by block, so once this mount deletes its key (unlink, the old name of a rename, a
// rotation), or replaces it (an upload, a rename or copy over it), a block not cached yet could no longer be
// fetched. So before the change queue sends such a change (DeleteObject, PutObject, CompleteMultipartUpload,
// CopyObject to the key), `keep(key:)` fetches every block of each version of that key a handle reads into the
// block cache and holds them there (never evicted) until the last handle on that version closes.
//
// Depends on: the object reader (its preload, which fetches and stores missing blocks), the block cache's
// holds. Knows nothing of inodes or local files.
import CkptCache
import Logging
import Synchronization

final class OpenObjects: Sendable {
    /// One object version read by open handles.
    private struct Reading {
        /// Handles open on it.
        var handles: Int
        var object: PinnedObject
        /// Fetching its blocks into the cache, where they are held until `handles` falls to 0 (`keep(key:)`);
        /// every change to the key waits for it, also one that asks while an earlier one's fetch runs.
        var keeping: Task<Void, Never>?
    }

    private let reader: ObjectReader
    private let logger: Logger
    /// By key (its bytes), then ETag.
    private let reading = Mutex(BytesDictionary<[String: Reading]>())

    init(reader: ObjectReader, logger: Logger) {
        self.reader = reader
        self.logger = logger
    }

    /// A read handle pinned `o`. An earlier version read by S3 version id (a versions view) is not counted:
    /// deleting or replacing the key leaves that version readable.
    func opened(_ o: PinnedObject) {
        guard o.versionId == nil, !o.etag.isEmpty else { return }
        reading.withLock { r in
            if r[o.key]?[o.etag] != nil {
                r[o.key]![o.etag]!.handles += 1
            } else {
                r[o.key, default: [:]][o.etag] = Reading(handles: 1, object: o)
            }
        }
    }

    /// Whether a handle reads `o` now.
    func isRead(_ o: PinnedObject) -> Bool { reading.withLock { $0[o.key]?[o.etag] != nil } }

    /// A handle that pinned `o` was released: at the last one on that version, its blocks are no longer held.
    func closed(_ o: PinnedObject) {
        guard o.versionId == nil, !o.etag.isEmpty else { return }
        let release = reading.withLock { r -> Bool in
            guard var versions = r[o.key], var e = versions[o.etag] else { return false }
            e.handles -= 1
            if e.handles > 0 {
                versions[o.etag] = e
            } else {
                versions.removeValue(forKey: o.etag)
            }
            r[o.key] = versions.isEmpty ? nil : versions
            return e.handles == 0 && e.keeping != nil
        }
        if release { reader.cache.release(reader.blockKey(o, 0)) }
    }

    /// Before this mount deletes or replaces `key` in S3: every version of it that a handle reads is made
    /// whole in the block cache and held there until its last handle closes. Returns once they are stored.
    /// A version that S3 no longer has (another client changed the key) cannot be fetched and is left as it
    /// is; a fetch that fails otherwise (S3 unreachable, the cache disk full) is logged and the change goes
    /// ahead: its readers then fail on the blocks that are missing, as they would without this. Cost: the
    /// blocks not cached yet are downloaded, at most the versions' size, only when a handle is open.
    func keep(key: String) async {
        let fetches = reading.withLock { r -> [Task<Void, Never>] in
            guard let vs = r[key] else { return [] }
            var out: [Task<Void, Never>] = []
            for (etag, e) in vs {
                if let t = e.keeping {
                    out.append(t)
                    continue
                }
                // Held under the lock `closed` releases it under, so a close meanwhile cannot come first.
                reader.cache.hold(reader.blockKey(e.object, 0))
                let t = Task { await self.fetchWhole(e.object) }
                r[key]![etag]!.keeping = t
                out.append(t)
            }
            return out
        }
        for t in fetches { await t.value }
    }

    /// Fetches every block of `o` not cached yet into the cache (where it is held).
    private func fetchWhole(_ o: PinnedObject) async {
        let blocks = (o.size + reader.blockSize - 1) / reader.blockSize
        let outcome = await reader.preload(o, blocks: 0..<blocks)
        if let failure = outcome.failure, failure.kind != .objectChanged {
            logger.warning("could not keep a copy of an object that descriptors still read before changing it in S3; their reads of blocks not cached may fail",
                           metadata: ["s3.key": "\(o.key)", "error": "\(failure)"])
        }
    }

    /// This mount replaced (its upload landed over it) or deleted version `etag` of `key` in S3: no read can
    /// fetch it again, so its cached blocks go now, unless a handle still reads it (its blocks stay until the
    /// version's last close, then go by eviction). Before, every replaced save stayed in the cache until
    /// evicted, up to the share saves may take (`BlockCache.seedBound`, 45% of the cache), pushing out blocks
    /// that readers still use (outside testing: fsx's saves grew the cache by 6.3 GB in 5 minutes).
    func versionGone(key: String, etag: String) {
        let version = PinnedObject(key: key, etag: etag, size: 0)
        guard !etag.isEmpty, !isRead(version) else { return }
        reader.cache.removeVersion(reader.blockKey(version, 0))
    }
}
