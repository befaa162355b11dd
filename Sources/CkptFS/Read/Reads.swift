// Opening files for reading: a clean file's handle pins the object version (ETag) it opened, revalidated with
// HEAD; a file with local changes reads its local version (Write/). Reads go to the object reader.
import CkptCache
import CkptS3
import Foundation
import Synchronization

/// Numbers for open handles: read handles and handles on local files share one space (the kernel gives either
/// back as the same `fh`).
final class HandleNumbers: Sendable {
    private let last = Atomic<UInt64>(0)
    func next() -> UInt64 { last.wrappingAdd(1, ordering: .relaxed).newValue }
}

/// An open read handle on a clean file: the object version it pinned.
final class ReadHandle: Sendable {
    let ino: UInt64
    let object: PinnedObject
    /// Opened on a listing's word, without a HEAD (`Meta.listedUntil`).
    let listed: Bool

    init(ino: UInt64, object: PinnedObject, listed: Bool) {
        self.ino = ino
        self.object = object
        self.listed = listed
    }
}

extension FileSystem {
    /// Opens a file. Reading a clean file revalidates the object (HEAD) unless it was checked within the last
    /// second (the kernel looks a file up right before opening it) or a directory listing made for a reader
    /// showed it within the TTL (`Meta.listedUntil`), and pins its ETag for the handle's life.
    /// Writing (or reading a file with local changes) goes to its local version (Write/).
    public func open(ino: UInt64, flags: Int32) async throws(FSError) -> OpenReply {
        // With the count of the key's failed saves: one that fails from here on makes its join fail (ESTALE).
        let (n, splits) = try namespace.nodeAndSplits(ino)
        guard !n.meta.isDirectory else { throw .isDirectory }
        let write = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0
        let truncate = flags & O_TRUNC != 0
        // An unlinked file still open, opened again through its inode (/proc/PID/fd/N): the same orphan, never
        // uploaded, whatever holds its old name now. Opened by name it was the file under that name: writes to
        // it went to S3 under the unlinked name (or into the new file saved there).
        if let orphan = writeBack.localFiles.orphans.withLock({ $0[ino] }) {
            let h: UInt64
            do throws(FSError) { h = try writeBack.joinOrphan(orphan, ino: ino, write: write, truncate: truncate) } catch where error.errno == ENOENT {
                // Its last descriptor closed: the kernel had looked the name up before a rename replaced (or an
                // unlink removed) the file; it looks the name up again (it was ENOENT for a name that exists).
                throw FileSystem.inodeReplaced
            }
            return OpenReply(handle: h, directIO: false, keepCache: !write)
        }
        // An inode of a version that is gone (replaced in S3, or a save dropped): the kernel's size and pages
        // of it are not the file's.
        if n.superseded {
            // Unless descriptors still read that version of a file only in S3 (unlinked or replaced here while they
            // were open, S-UNLINK-OPEN-CLEAN) and this opens it again through one of them (/proc/PID/fd/N): that
            // version, which lives until their last close, as POSIX says.
            let pinned = PinnedObject(key: n.key, etag: n.meta.etag, size: n.meta.size)
            if !write, !n.meta.etag.isEmpty, openObjects.isRead(pinned) { return openClean(ino: ino, pinned, listed: false) }
            throw FSError(ESTALE, "\(n.key) is not the version this inode shows; the kernel looks it up again")
        }
        if let version = try await namespace.versionPin(n) {
            // An earlier version, in a versions view (History/): read-only, and never changes.
            if write { try Namespace.refuseInVersionView(n.key) }
            let h = handleNumbers.next()
            handles.withLock { $0[h] = ReadHandle(ino: ino, object: version, listed: false) }
            return OpenReply(handle: h, directIO: false, keepCache: true)
        }
        let remote: PinnedObject?
        var listed = false
        if let local = writeBack.localFiles.byKey.withLock({ $0[n.key] }) {
            // Its local version, if it still has one: its upload may end (and the local file go) meanwhile.
            if let h = try await writeBack.openLocal(ino: ino, key: n.key, write: write, truncate: truncate, remote: nil,
                                                     create: false, splitsSeen: splits) {
                return OpenReply(handle: h, directIO: false, keepCache: !write)
            }
            // It went: unlinked meanwhile, or the version it uploaded is the object now, else (discarded) S3 is
            // asked.
            if local.unlinked { throw gone(ino, splits) }
            if let landed = writeBack.landedObject(local) { remote = landed } else { remote = try await remoteObject(ino, namespace.node(ino)) }
        } else {
            // Listed within the TTL (a listing pinned its ETag and size): a read opens it with no HEAD.
            listed = !write && n.meta.listedUntil.map { ContinuousClock.now < $0 } == true && !n.meta.etag.isEmpty
            remote = listed && !n.superseded ? PinnedObject(key: n.key, etag: n.meta.etag, size: n.meta.size)
                                             : try await remoteObject(ino, n)
        }
        // Its name changed while S3 was asked (a rename over it, an unlink: their local files go in the same step
        // as the key's inodes stop naming it): what S3 said is not this inode's file, which may have been a
        // local file the rename withdrew (an old save of it in S3 would open instead of the renamed file).
        if !stillNames(ino, splits) { throw FileSystem.inodeReplaced }
        if write {
            if remote == nil && !n.meta.etag.isEmpty { throw gone(ino, splits) }  // deleted in S3 meanwhile
            let h = try await writeBack.openLocal(ino: ino, key: n.key, write: true, truncate: truncate, remote: remote,
                                                  splitsSeen: splits)!
            if !truncate, let f = writeBack.localHandles.withLock({ $0[h] })?.file { joinReaders(of: ino, to: f) }
            return OpenReply(handle: h, directIO: false, keepCache: false)
        }
        guard let remote else { throw gone(ino, splits) }
        return openClean(ino: ino, remote, listed: listed)
    }

    /// The error for an open that found no file behind inode `ino`: ESTALE when the inode stopped naming its
    /// key while the open looked (superseded, or the key's local file replaced or removed since the open read
    /// `splits` with the inode: a rename over it, an unlink), so the kernel looks the name up again and opens
    /// what it names now (the new file, or, with O_CREAT, a file it creates); else ENOENT. Before, an open racing
    /// a save by rename failed with ENOENT though the name always existed (outside testing round 7).
    private func gone(_ ino: UInt64, _ splits: UInt64) -> FSError {
        stillNames(ino, splits) ? .noEntry : FileSystem.inodeReplaced
    }

    /// Whether inode `ino` still names its key's file as it did when the open read `splits` with it: not
    /// superseded, and the key's local file neither replaced nor removed since.
    private func stillNames(_ ino: UInt64, _ splits: UInt64) -> Bool {
        guard let (n, now) = try? namespace.nodeAndSplits(ino) else { return false }
        return !n.superseded && now == splits
    }

    /// Read handles of inode `ino` that pinned the object version its local file `f` was opened from for
    /// writing in place (another descriptor appending or rewriting part of it) read `f` from now on, as every
    /// descriptor of a file on a local disk reads what any of them wrote (S-CONS-OWN-APPENDS). A save over it
    /// (O_TRUNC, or truncate) is a new version: they read the old one until their last close, with every
    /// block of it (S-UNLINK-OPEN-CLEAN). Before, such a handle read its pinned
    /// version for good: once the kernel dropped its pages of the file (an open for writing does) and this
    /// mount's save of the appends landed, the appended range read as zeros, the kernel's size including it
    /// (`tail -f` of a log written through the mount; outside testing round 9). Each handle moves in one step
    /// under the read handles' lock, so a read or release of it finds it either pinned or on `f`, never
    /// neither. Only while `f` is the key's local file: one replaced or removed since (a rename over it, an
    /// unlink) leaves the handles on their version, which lives on for them (S-UNLINK-OPEN-CLEAN). A file
    /// another client changed in S3 meanwhile is another inode (`replaced`), never joined.
    func joinReaders(of ino: UInt64, to f: LocalFile) {
        let (key, from) = f.state.withLock { ($0.key, $0.madeFrom) }
        guard let from, openObjects.isRead(PinnedObject(key: key, etag: from, size: 0)),
              let (n, splits) = try? namespace.nodeAndSplits(ino), !n.superseded, n.key.sameBytes(key) else { return }
        let moved = handles.withLock { hs -> [PinnedObject] in
            let pinned = hs.filter { _, rh in
                rh.ino == ino && rh.object.versionId == nil && rh.object.etag == from && rh.object.key.sameBytes(key)
            }
            guard !pinned.isEmpty else { return [] }
            let joined = writeBack.localFiles.byKey.withLock { l -> Bool in
                // `f` is still the file the inode names: a rename over the name, or an unlink, would have
                // changed the split count in the step that took `f` out (or put another file under the key).
                guard l[key] === f, writeBack.localFiles.splitCount(key) == splits else { return false }
                f.state.withLock { $0.handles += pinned.count }
                return true
            }
            guard joined else { return [] }
            writeBack.localHandles.withLock { lh in
                for h in pinned.keys { lh[h] = LocalHandle(ino: ino, file: f, writable: false) }
            }
            for h in pinned.keys { hs.removeValue(forKey: h) }
            return pinned.values.map(\.object)
        }
        for o in moved { openObjects.closed(o) }
    }

    private static let inodeReplaced = FSError(ESTALE, "the file this inode showed was replaced or removed; the kernel looks its name up again")

    /// `open` when it needs no request: a read-only open of a clean file (no local version) whose version is
    /// known, because a reader's listing showed it within the TTL (S-CONS-LISTED-OPEN), it was checked within
    /// the last second (the lookup right before the open), or the bucket is immutable. Nil: call `open`.
    /// Never waits, so the FUSE thread answers such an open itself instead of handing it to a task.
    public func openNow(ino: UInt64, flags: Int32) throws(FSError) -> OpenReply? {
        let n = try namespace.node(ino)
        guard !n.meta.isDirectory else { throw .isDirectory }
        guard (flags & O_ACCMODE) == O_RDONLY, flags & O_TRUNC == 0, !n.superseded, !n.meta.etag.isEmpty,
              !VersionViews.contains(n.key),  // a version in a versions view: `open` pins it (History/)
              writeBack.localFiles.byKey.withLock({ $0[n.key] == nil }),
              writeBack.localFiles.orphans.withLock({ $0[ino] == nil }) else { return nil }
        let listed = n.meta.listedUntil.map { ContinuousClock.now < $0 } == true
        guard listed || options.immutable || ContinuousClock.now - n.fetched <= .seconds(1) else { return nil }
        return openClean(ino: ino, PinnedObject(key: n.key, etag: n.meta.etag, size: n.meta.size), listed: listed)
    }

    /// A read handle on `remote`, the version of clean file `ino` the open pinned (`listed`: on a listing's word).
    private func openClean(ino: UInt64, _ remote: PinnedObject, listed: Bool) -> OpenReply {
        let direct = options.directReadMinSize.map { min in
            remote.size >= min && remote.size > 0 && !reader.firstBlockCached(remote)
        } ?? false
        if direct { counters.withLock { $0.directOpens += 1 } } else { reader.opened(remote) }
        let h = handleNumbers.next()
        openObjects.opened(remote)
        handles.withLock { $0[h] = ReadHandle(ino: ino, object: remote, listed: listed) }
        // A writer may have opened the file since the caller found it clean (`openNow` decides on the FUSE
        // thread, without the namespace's lock): its local file was made before this handle was registered.
        if let f = writeBack.localFiles[remote.key] { joinReaders(of: ino, to: f) }
        return OpenReply(handle: h, directIO: direct, keepCache: true)
    }

    /// The object behind a node as S3 has it now (revalidated with a HEAD unless checked within the last
    /// second: the kernel looks a file up right before opening it; or ever, on an immutable bucket), or nil
    /// when there is none.
    ///
    /// An inode stands for one version of its object (see `replaced`). When the object is no longer the
    /// version the inode shows, this throws ESTALE: the kernel then walks the path again with a forced
    /// lookup (the VFS retries an open that fails with ESTALE once, with LOOKUP_REVAL), which finds the new
    /// inode, and the open goes to it. So an open that revalidated never reads the kernel's pages, size or
    /// mtime of the old version.
    func remoteObject(_ ino: UInt64, _ n: Node) async throws(FSError) -> PinnedObject? {
        var meta = n.meta
        if meta.etag.isEmpty && writeBack.localFiles.byKey.withLock({ $0[n.key] != nil }) { return nil }  // exists only here
        if n.superseded { throw FSError(ESTALE, "\(n.key) was replaced in S3; the kernel looks it up again") }
        // An immutable bucket's version, once known, stands for the mount's life.
        if (ContinuousClock.now - n.fetched > .seconds(1) && !options.immutable) || meta.etag.isEmpty {
            guard let m = try await namespace.headProbe(n.key) else { return nil }
            if !meta.etag.isEmpty && m.etag != meta.etag {
                namespace.replaced(ino, n, by: m)
                throw FSError(ESTALE, "\(n.key) was replaced in S3; the kernel looks it up again")
            }
            meta = m
            namespace.table.withLock { $0.refresh(ino, meta: m) }
        }
        return PinnedObject(key: n.key, etag: meta.etag, size: meta.size)
    }

    public func release(handle: UInt64) {
        guard let rh = handles.withLock({ $0.removeValue(forKey: handle) }) else {
            writeBack.releaseLocal(handle: handle)
            return
        }
        openObjects.closed(rh.object)
    }

    /// Reads up to `size` bytes at `offset`. Fewer bytes only at the end of the file.
    public func read(handle: UInt64, offset: Int64, size: Int) async throws(FSError) -> [ReadSegment] {
        try await readNow(handle: handle, offset: offset, size: size).segments()
    }

    /// Starts a read without waiting: when every block it needs is in memory or in the cache, its bytes are
    /// returned at once (the FUSE thread replies without handing the request to another thread, which is
    /// most of a small read's cost); otherwise the part that waits for the network is returned to be awaited.
    /// Either way the read-ahead it triggers has started.
    public func readNow(handle: UInt64, offset: Int64, size: Int) throws(FSError) -> ReadNow {
        guard let rh = handles.withLock({ $0[handle] }) else {
            guard let lh = writeBack.localHandles.withLock({ $0[handle] }) else { throw .badHandle }
            return .later(PendingRead { () async throws(FSError) in try await self.writeBack.readLocal(lh, offset: offset, size: size) })
        }
        recorder?.note(rh.object, bucket: bucket, offset: offset, end: min(offset + Int64(size), rh.object.size))
        guard rh.listed else { return try reader.readNow(rh.object, offset: offset, size: size) }
        // Opened on a listing's word: if the object changed or went since, the next open asks S3 again.
        let outcome = Result { () throws(FSError) in try reader.readNow(rh.object, offset: offset, size: size) }
        switch outcome {
        case .failure(let e):
            unpinIfChanged(rh, e)
            throw e
        case .success(.done(let segments)):
            return .done(segments)
        case .success(.later(let rest)):
            return .later(PendingRead { () async throws(FSError) in
                do throws(FSError) { return try await rest.segments() } catch {
                    self.unpinIfChanged(rh, error)
                    throw error
                }
            })
        }
    }

    /// A read of `rh`, opened on a listing's word, failed with `e`: if the object changed or went in S3, the
    /// listing's pin of it goes, so the next open of the file sends a HEAD (and finds the new version or none).
    func unpinIfChanged(_ rh: ReadHandle, _ e: FSError) {
        guard e.kind == .objectChanged else { return }
        namespace.table.withLock { $0.unpin(rh.ino) }
    }
}
