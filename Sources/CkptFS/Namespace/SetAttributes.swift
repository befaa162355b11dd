// setattr: size (truncate) and mtime.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension FileSystem {
    // MARK: Attributes

    /// Changes size and times. Mode and owner are accepted and not stored (they come from the mount options).
    public func setattr(ino: UInt64, size: Int64?, mtime: Date?) async throws(FSError) -> Attributes {
        // With the count of the key's failed saves: one that fails from here on makes the truncate fail (ESTALE).
        let (n, splits) = try namespace.nodeAndSplits(ino)
        if let f = writeBack.localFiles.orphans.withLock({ $0[ino] }) {
            // An unlinked file still open (ftruncate, futimens through its descriptor): it stays an orphan, and
            // a file created under its old name meanwhile is not touched.
            if let size { try writeBack.truncateVersion(f, to: size) }
            try setTimes(ino: ino, mtime: mtime)
            return namespace.attributes(ino, f.current.meta)
        }
        // A versions view is read-only: chmod, chown and utime there fail too (they changed nothing and said
        // they had).
        try Namespace.refuseInVersionView(n.key)
        if let size {
            guard !n.meta.isDirectory else { throw .isDirectory }
            try checkWritable()
            // The path names another file now (its save failed, or another client replaced the object): a
            // truncate through this inode's descriptor must not cut that one.
            if n.superseded { throw FSError(ESTALE, "\(n.key) is not the file this inode shows any more") }
            try Namespace.refuseInVersionView(n.key)
            // A truncate acts as a writer for its duration (the object is downloaded first unless it is cut to
            // nothing); without another open writer it is a complete change, acknowledged and queued at once.
            let f: LocalFile
            let local = writeBack.localFiles.byKey.withLock { $0[n.key] }
            if local != nil, let joined = try writeBack.joinLocalFile(key: n.key, truncate: false, writer: true, splitsSeen: splits) {
                f = joined
            } else {
                // No local file, or it went since (its upload ended): one made from the object S3 has now.
                if local?.unlinked == true { throw .noEntry }
                let remote: PinnedObject?
                if let local, let landed = writeBack.landedObject(local) {
                    remote = landed
                } else if local != nil {
                    remote = try await remoteObject(ino, namespace.node(ino))
                } else {
                    remote = try await remoteObject(ino, n)
                }
                f = try writeBack.openLocalFile(key: n.key, truncate: false, writer: true, remote: remote, splitsSeen: splits)
            }
            defer { writeBack.releaseHandle(f, writer: true) }
            do throws(FSError) {
                try writeBack.truncateVersion(f, to: size)
                // Acknowledged at the release when no other writer has it open: with every block it keeps here.
                try await writeBack.fillForAcknowledgement(f.current)
            } catch {
                // The truncate failed the version the writers open on it write (not one it refused before
                // changing anything): their save failed with it.
                if f.current.state.withLock({ $0.failedErrno != 0 }) { writeBack.saveFailed(f, error) }
                throw error
            }
        }
        try setTimes(ino: ino, mtime: mtime)
        return try await getattr(ino: ino)
    }

    /// The attributes to answer a times-only setattr with: `getattr`'s, or the inode's last known ones when its
    /// file is gone (unlinked here, or deleted in S3). The kernel writes back the times of an inode it still
    /// holds after the unlink (at close, and at sync), which changes nothing then; answered with an error, the
    /// kernel recorded it as a write-back error of the whole file system, and `syncfs(2)` (`sync -f`) failed.
    public func attributesAfterTimes(ino: UInt64) async throws(FSError) -> Attributes {
        do throws(FSError) {
            return try await getattr(ino: ino)
        } catch where error.errno == ENOENT {
            guard let n = try? namespace.node(ino) else { throw error }
            return namespace.attributes(ino, n.meta)
        }
    }

    /// The times part of `setattr` (utime, futimens, and the kernel's write-back of a file's times), on the
    /// calling thread: it asks S3 nothing. Then `getattrNow` (or `getattr`) gives the attributes to reply with.
    public func setTimes(ino: UInt64, mtime: Date?) throws(FSError) {
        let n = try namespace.node(ino)
        if let f = writeBack.localFiles.orphans.withLock({ $0[ino] }) {
            // An unlinked file still open: its own version, not a file created under its old name meanwhile.
            if let mtime { f.current.state.withLock { $0.mtime = mtime } }
            return
        }
        try Namespace.refuseInVersionView(n.key)
        if let mtime, !n.meta.isDirectory {
            // Stored with the upload (x-amz-meta-mtime) while the file is local; otherwise not kept.
            if let v = writeBack.localVersion(n.key) {
                let set = v.state.withLock { s -> Bool in
                    guard case .waiting = s.upload else { return false }
                    s.mtime = mtime
                    return true
                }
                // Parts sent early carry no mtime (the object shows Last-Modified, about the close). With the
                // kernel's write-back cache it sends the file's own write times here, which Last-Modified
                // matches closely enough; a time from outside the writing (cp -p, rsync -t, touch -d) must be
                // stored, so such an upload is started afresh, with it.
                if set && (mtime < v.createdDate - 1 || mtime > Date() + 1) {
                    writeBack.abandonEarlyUpload(v, because: "an mtime from outside the writing was set")
                }
            }
        }
    }
}
