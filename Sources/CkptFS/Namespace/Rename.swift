// Rename, emulated: S3 has no rename. A file with local changes (written, not uploaded yet, or uploading, or
// uploaded while still open) is moved locally: its versions go to the new key (one already sent under the old
// name is sent again), so write-temp-then-rename costs one upload, to the final name. A file that is only in
// S3 is copied server-side (CopyObject; multipart UploadPartCopy above 5 GiB). A directory is renamed object
// by object (directory markers are written anew: some servers refuse to copy keys ending in "/"). The old
// names are deleted through the change queue, after the new names' uploads. A rename that copies objects is
// journaled first, so a failure undoes it and a crash is finished by the next mount: never a half move,
// never data under neither name.
import CkptS3
import Foundation

extension FileSystem {
    public static let renameNoReplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2

    public func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32) async throws(FSError) {
        try checkWritable()
        if flags & FileSystem.renameExchange != 0 { throw FSError(EINVAL, "RENAME_EXCHANGE is not supported") }
        let srcDir = try namespace.node(parent), dstDir = try namespace.node(newParent)
        try Namespace.refuseInVersionView(srcDir.key + name, srcDir.key + name + "/", dstDir.key + newName, dstDir.key + newName + "/")
        try Namespace.checkStorable(newName, in: dstDir.key, isDirectory: false)
        guard Namespace.validName(newName) else { throw FSError(EINVAL, "not a valid name: \(newName)") }
        guard srcDir.meta.isDirectory, dstDir.meta.isDirectory else { throw .notDirectory }
        let src = try await lookup(parent: parent, name: name)
        forget(ino: src.ino, count: 1)
        // A directory's objects, listed once: checked against the key limit before anything changes, then moved.
        var objects: [String] = []
        if src.isDirectory {
            try Namespace.checkStorable(newName, in: dstDir.key, isDirectory: true)
            objects = try await namespace.objectKeys(under: srcDir.key + name + "/")
            try checkDirectoryMove(objects, from: srcDir.key + name + "/", to: dstDir.key + newName + "/")
        }
        // Only an answer that the destination is not there counts as absent: a lookup that fails (EIO during
        // an outage) fails the rename, which must not replace a file it could not see.
        let dstExisting: Attributes?
        do throws(FSError) { dstExisting = try await lookup(parent: newParent, name: newName) } catch where error.errno == ENOENT {
            dstExisting = nil
        }
        if let d = dstExisting {
            forget(ino: d.ino, count: 1)
            if flags & FileSystem.renameNoReplace != 0 { throw FSError(EEXIST) }
            if d.isDirectory != src.isDirectory { throw FSError(d.isDirectory ? EISDIR : ENOTDIR) }
            if d.ino == src.ino { return }
        }
        let srcKey = srcDir.key + name, dstKey = dstDir.key + newName
        var sourceRemains = false
        if src.isDirectory {
            if dstKey.hasKeyPrefix(srcKey + "/") { throw FSError(EINVAL, "cannot move a directory into itself") }
            // An existing destination is replaced only when empty (POSIX), and only once the move has
            // succeeded: a rename that fails leaves it as it was. Its marker stays a directory's marker (the
            // source's, if it has one, is written over it).
            if dstExisting != nil { try await requireEmpty(dstKey + "/") }
            try await writeBack.renameDirectory(objects, from: srcKey + "/", to: dstKey + "/")
            if dstExisting != nil {
                invalidate(parent: newParent, name: newName)
                namespace.table.withLock { $0.freeName(parent: newParent, name: newName) }
            }
        } else {
            sourceRemains = try await writeBack.renameFile(from: srcKey, to: dstKey, replacing: dstExisting?.ino)
        }
        moveNode(parent: parent, name: name, newParent: newParent, newName: newName, from: srcKey, to: dstKey,
                 isDirectory: src.isDirectory)
        // What S3 confirmed of both names is out of date (stale-if-error must not serve either).
        if !sourceRemains { namespace.forgetConfirmed(srcKey, isDirectory: src.isDirectory) }
        namespace.forgetConfirmed(dstKey, isDirectory: src.isDirectory)
        if sourceRemains {
            // The next lookup of the old name asks S3 again.
            namespace.table.withLock { t in
                t.clearMissing(parent: parent, name: name)
                t.listings.removeValue(forKey: parent)
            }
        }
    }

    /// The renamed inode keeps its number at the new path; everything cached under the old path is updated.
    func moveNode(parent: UInt64, name: String, newParent: UInt64, newName: String, from src: String, to dst: String,
                  isDirectory: Bool) {
        namespace.table.withLock {
            // A listing in flight may have missed the new name: it is not kept for lookups.
            namespace.changedInS3(key: isDirectory ? dst + "/" : dst,
                                  isDirectory ? .present(Meta(isDirectory: true, size: 0, etag: "", mtime: Date())) : .changed)
            $0.move(parent: parent, name: name, newParent: newParent, newName: newName, from: src, to: dst, isDirectory: isDirectory)
        }
    }
}
