// What the mount learned of object versions from GET and HEAD answers: each version's stored mtime
// (x-amz-meta-mtime), which a listing does not carry (see Namespace/StoredMtimes.swift).
//
// The reader notes every GET it makes (a preload's included) and the namespace every HEAD; a file then known
// only from a listing takes its stored mtime from here when the listing shows the same version (same ETag,
// size and Last-Modified), instead of a HEAD per file. So an epoch through the mount after `ckptfs preload`
// (or a second epoch after the listings expired and the kernel forgot the inodes) opens each file with no
// request. A version's user metadata cannot change without its Last-Modified changing (S3 rewrites the
// object, a copy onto itself included), so a version that matches here is exactly the one that was read.
//
// Depends on nothing but the object client's `ObjectInfo`. Shared by Read/ (writes) and Namespace/ (reads).
import CkptS3
import Foundation
import Synchronization

/// Stored mtimes of object versions seen in GET or HEAD answers, keyed by object key; at most `limit` of them
/// (about 150 bytes each), the oldest half dropped when full.
final class KnownVersions: Sendable {
    struct Version: Sendable {
        var etag: String
        var size: Int64
        /// Last-Modified as S3 sent it (HTTP dates have whole seconds).
        var lastModified: Date
        /// The mtime the writer stored, else Last-Modified.
        var mtime: Date
        var order: UInt64
    }

    private let state = Mutex<(versions: BytesDictionary<Version>, next: UInt64)>(([:], 0))
    let limit: Int

    init(limit: Int) { self.limit = max(1, limit) }

    /// Records what a GET (of any range) or HEAD of `key` said of its version.
    func note(_ key: String, _ info: ObjectInfo) {
        guard !info.etag.isEmpty, let lastModified = info.lastModified else { return }
        let v = Version(etag: info.etag, size: info.size, lastModified: lastModified, mtime: Namespace.mtime(info), order: 0)
        state.withLock { s in
            if s.versions.count >= limit && s.versions[key] == nil {
                // Full: keep the newer half.
                let cut = s.versions.values.map(\.order).sorted()[s.versions.count / 2]
                s.versions = s.versions.filter { $0.value.order >= cut }
            }
            var v = v
            v.order = s.next
            s.next += 1
            s.versions[key] = v
        }
    }

    /// The stored mtime of `key` when the version a listing showed (`etag`, `size` bytes, `lastModified`) is
    /// the one a GET or HEAD answered for; nil when not known.
    func storedMtime(_ key: String, etag: String, size: Int64, lastModified: Date) -> Date? {
        guard let v = state.withLock({ $0.versions[key] }), v.etag == etag, v.size == size,
              abs(v.lastModified.timeIntervalSince(lastModified)) < 1 else { return nil }
        return v.mtime
    }

    var count: Int { state.withLock { $0.versions.count } }
}
