// A file with local changes, and the handles open on it.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

/// A file with local changes, from its first local version until it is clean again (uploaded, and no handle
/// open). It follows renames (its handles write to it whatever its name now is) and outlives an unlink while
/// open: it is then an orphan, read and written through its handles, never journaled or uploaded, and gone at
/// its last close, as POSIX says of an unlinked open file.
final class LocalFile: Sendable {
    struct State: Sendable {
        var key: String
        var current: StagedVersion
        /// Open handles, and those of them open for writing.
        var handles = 0
        var writers = 0
        var unlinked = false
        /// Renames moving this file now (`WriteBack.beginMove`): while any is, it is not cleaned.
        var moving = 0
        /// The object under `key` in S3 holds the file's last acknowledged bytes (when no version here does): the
        /// file was opened from it, or a version of it landed there since. False for a file created here and
        /// after a rename that did not copy the object along: the object under the new key, if any, is then
        /// another file's (one the rename replaced), and a later rename must not copy it as this file's.
        var objectIsAcknowledged = false
        /// What removing the name (unlink, a rename away) must delete of what `key` held before this file's
        /// saves: whatever is there (`anyObject`), unless the file was created here on a key that held no object
        /// as far as the lookup knew (`nothing`), or was renamed onto a file of this mount's whose saves had
        /// reached S3 (what that one's removal would have taken). Its versions' uploads add to it
        /// (`WriteBack.removal`).
        var keyRemoval: Removal = .anyObject
        /// `keyRemoval`, or whatever is there once a version of the file landed under `key`
        /// (`objectIsAcknowledged`): the file's own part of `WriteBack.removal` (its versions' part is theirs).
        var removal: Removal { objectIsAcknowledged ? .anyObject : keyRemoval }
        /// A save of the file failed (errno; 0: none) while a rename was moving it, so its unacknowledged
        /// version could not be split off at once (`WriteBack.saveFailed`): it is dropped at the last
        /// writer's close instead.
        var failedWrite: Int32 = 0
        /// It is no local file any more (not in `LocalFiles.byKey`: that key has another local file, or none)
        /// while handles still had it open: its unacknowledged version was dropped, or its save failed and
        /// was split off (`WriteBack.saveFailed`). Its handles read that version until the last of them closes
        /// and removes it; its writers' writes, close() and fsync() fail.
        var detached = false
        /// The ETag of the object version this local file was opened from for writing in place (no O_TRUNC),
        /// nil for a file created here or saved over with O_TRUNC: read handles that pinned that version of
        /// the same inode read this file instead (`FileSystem.joinReaders`).
        var madeFrom: String?
    }
    let state: Mutex<State>

    init(key: String, current: StagedVersion) { state = Mutex(State(key: key, current: current)) }

    var current: StagedVersion { state.withLock { $0.current } }
    var key: String { state.withLock { $0.key } }
    var unlinked: Bool { state.withLock { $0.unlinked } }
}

/// An open handle on a file that has a local version (written, or being uploaded).
final class LocalHandle: Sendable {
    let ino: UInt64
    let file: LocalFile
    let writable: Bool
    /// The errno of the failed save this handle was open for (0: none). Set on every writer open on the file
    /// when a write, truncate or close() of it fails (`WriteBack.saveFailed`): the kernel's write-back cache
    /// had taken those writes and write() had returned, so that save is lost as a whole: their later writes,
    /// close() and fsync() fail with it. A handle opened after the failure starts a new save.
    let failedSave = Atomic<Int32>(0)
    /// The key the handle writes: it follows renames (the kernel may write back cached pages after one).
    var key: String { file.key }

    init(ino: UInt64, file: LocalFile, writable: Bool) {
        self.ino = ino
        self.file = file
        self.writable = writable
    }
}

/// The files with local changes: by key, and those unlinked while open (orphans) by inode, so stat through an
/// open descriptor still answers.
final class LocalFiles: Sendable {
    let byKey = Mutex(BytesDictionary<LocalFile>())
    let orphans = Mutex<[UInt64: LocalFile]>([:])
    /// How many times the local file under a key was split off by a failed save (`WriteBack.splitOff`), replaced
    /// by a rename or removed by an unlink (`WriteBackNotices.fileReplaced`): changed under `byKey`'s lock (and the
    /// namespace's), so a join under `byKey`'s lock sees every change before it, and a read under the namespace's
    /// lock every change before that. Counted per bucket of keys (a hash of the key's bytes), so memory stays
    /// bounded whatever the number of keys: a change of another key of the bucket only makes an open that races it
    /// look its name up again.
    private let splits = Mutex<[UInt64]>(Array(repeating: 0, count: LocalFiles.splitBuckets))
    static let splitBuckets = 4096

    private static func bucket(_ key: String) -> Int {
        var h = Hasher()
        for b in key.utf8 { h.combine(b) }
        return Int(UInt(bitPattern: h.finalize()) % UInt(splitBuckets))
    }

    /// The count `checkSplits` compares (`nodeAndSplits` reads it with the inode).
    func splitCount(_ key: String) -> UInt64 { splits.withLock { $0[LocalFiles.bucket(key)] } }

    /// The local file under `key` is split off, replaced or removed now. Called under `byKey`'s lock.
    func bumpSplits(_ key: String) { splits.withLock { $0[LocalFiles.bucket(key)] &+= 1 } }

    /// Throws ESTALE when `key`'s local file was split off, replaced or removed since an opener read `seen` (nil:
    /// not checked). Called under `byKey`'s lock.
    func checkSplits(_ key: String, seen: UInt64?) throws(FSError) {
        guard let seen, splitCount(key) != seen else { return }
        throw FSError(ESTALE, "\(key) is not the file it was when it was looked up; the kernel looks it up again")
    }

    /// The local file of `key`, if it has local changes.
    subscript(key: String) -> LocalFile? { byKey.withLock { $0[key] } }

    /// Whether any file under `prefix` has local changes.
    func any(under prefix: String) -> Bool { byKey.withLock { l in l.keys.contains { $0.hasKeyPrefix(prefix) } } }
}

/// The namespace's view of local changes: files written here (by key, and unlinked while open by inode) and
/// deletes queued in the change queue.
struct WriteBackOverlay: LocalOverlay {
    let files: LocalFiles
    let changes: ChangeQueue

    func localMeta(of key: String) -> Meta? { files[key]?.current.meta }

    func orphanMeta(ino: UInt64) -> Meta? { files.orphans.withLock { $0[ino] }?.current.meta }

    func localChildren(of dirKey: String) -> [(name: String, meta: Meta)] {
        let keys = files.byKey.withLock { l in l.filter { $0.key.hasKeyPrefix(dirKey) } }
        var out = BytesDictionary<Meta>()
        for (key, f) in keys {
            let first = key.keySuffix(after: dirKey).firstKeySegment
            if first.endsWithSlash {
                // A file deeper down: the directory it is in exists here (a directory renamed, or made implicitly,
                // whose files are not uploaded yet has no object in S3 to list).
                let name = first.droppingLastByte
                if Namespace.validName(name) { out[name] = Meta(isDirectory: true, size: 0, etag: "", mtime: Date()) }
            } else if Namespace.validName(first), out[first] == nil {
                out[first] = f.current.meta
            }
        }
        return out.map { ($0.key, $0.value) }
    }

    func isHidden(_ key: String) -> Bool { changes.isHidden(key) }

    func splits(of key: String) -> UInt64 { files.splitCount(key) }

    var hasHidden: Bool { changes.hasHidden }
}
