// Namespace changes: mkdir, and removal (rmdir, unlink) through ordered deletes in the change queue.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension FileSystem {
    // MARK: Namespace changes

    public func mkdir(parent: UInt64, name: String) async throws(FSError) -> Attributes {
        try checkWritable()
        let dir = try namespace.node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try Namespace.checkStorable(name, in: dir.key, isDirectory: true)
        guard Namespace.validName(name) else { throw FSError(EINVAL, "not a valid name: \(name)") }
        try Namespace.refuseInVersionView(dir.key + name + "/")
        if (try? await lookup(parent: parent, name: name)) != nil {
            forget(ino: namespace.inoFor(parent: parent, name: name), count: 1)
            throw FSError(EEXIST)
        }
        // A delete of the same name still queued (rmdir, or a rename of the directory away) must not remove it.
        let dropped = await writeBack.clearPendingDelete(of: dir.key + name + "/")
        do {
            _ = try await client.putObject(bucket, dir.key + name + "/", body: .empty, options: PutOptions())
        } catch {
            if let dropped { await writeBack.restoreDelete(of: [(dir.key + name + "/", dropped)]) }
            throw FSError(error, during: .other)
        }
        let meta = Meta(isDirectory: true, size: 0, etag: "", mtime: Date())
        namespace.table.withLock { t in
            namespace.changedInS3(key: dir.key + name + "/", .present(meta))
            if t.listings[parent] != nil { t.listings[parent]?.entries[name] = meta }
        }
        let attr = namespace.remember(parent: parent, name: name, key: dir.key + name, meta: meta, addLookup: true)
        // It did not exist, so it is empty: lookups of new names in it need not ask S3.
        _ = namespace.table.withLock {
            $0.install(namespace.newListing([:]), for: attr.ino, limit: options.maxListedEntries)
        }
        return attr
    }

    /// Removes an empty directory: its marker is deleted in S3 in order after the uploads before it (ChangeQueue);
    /// until then lookups and listings do not show it.
    public func rmdir(parent: UInt64, name: String) async throws(FSError) {
        try checkWritable()
        let dir = try namespace.node(parent)
        let prefix = dir.key + name + "/"
        try Namespace.refuseInVersionView(prefix)
        // The kernel looked the name up before (and refuses rmdir of a file itself); callers of the core may not have.
        let target = try await lookup(parent: parent, name: name)
        forget(ino: target.ino, count: 1)
        guard target.isDirectory else { throw .notDirectory }
        try await requireEmpty(prefix)
        try await writeBack.deleteLater([prefix], hiding: [prefix])
        invalidate(parent: parent, name: name)
        namespace.forgetConfirmed(dir.key + name, isDirectory: true)
        // The name is free: a directory made under it is a new inode, whatever the kernel still holds open (a
        // shell's working directory), as unlink does for files.
        namespace.table.withLock { $0.freeName(parent: parent, name: name) }
    }

    /// Throws ENOTEMPTY unless the directory `prefix` (ending in "/") holds nothing: no object in S3 that is not
    /// being deleted, no local file, nothing made here while the listing was in flight. rmdir and a rename onto
    /// an existing directory (POSIX: only an empty one is replaced) check with it. Errors: ENOTEMPTY, and those
    /// of the LIST (EIO).
    func requireEmpty(_ prefix: String) async throws(FSError) {
        // Every page of the listing, until something is found in it: objects whose deletes are queued here can
        // fill the first pages (S3 gives 1,000 keys a page).
        var token: String?
        repeat {
            let (page, (hidden, localChildren), seen) = try await namespace.observing({ () async throws(FSError) -> ListObjectsPage in
                try await s3(.other) { () async throws(S3Error) in
                    try await client.listObjectsV2(bucket, prefix: prefix, delimiter: "/", continuationToken: token,
                                                   startAfter: nil, maxKeys: 1000)
                }
            }, local: { page in
                (namespace.hiddenKeys(page), writeBack.localFiles.any(under: prefix))
            })
            // What is in it: listed and not being deleted (here, or while the LIST was in flight), or made here
            // while the LIST was in flight.
            func shown(_ key: String) -> Bool {
                if hidden.contains(key) { return false }
                if case .absent = seen.change(of: key) { return false }
                return true
            }
            let made = seen.children(of: prefix).values.contains { if case .absent = $0 { false } else { true } }
            if localChildren || made || page.objects.contains(where: { !$0.key.sameBytes(prefix) && shown($0.key) }) {
                throw FSError(ENOTEMPTY)
            }
            for p in page.commonPrefixes where shown(p) {
                // Some servers (SeaweedFS) keep listing a prefix whose objects are all deleted: only one that
                // still holds an object (not being deleted) makes the directory non-empty.
                if await holdsObjects(p) { throw FSError(ENOTEMPTY) }
            }
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
    }

    /// Whether anything under `prefix` is in S3 and not being deleted (true when that cannot be told). Reads
    /// every page of the listing until it finds such an object.
    func holdsObjects(_ prefix: String) async -> Bool {
        var token: String?
        repeat {
            guard let (page, hidden, seen) = try? await namespace.observing({ () async throws(FSError) -> ListObjectsPage in
                try await s3(.other) { () async throws(S3Error) in
                    try await client.listObjectsV2(bucket, prefix: prefix, delimiter: nil, continuationToken: token,
                                                   startAfter: nil, maxKeys: 1000)
                }
            }, local: namespace.hiddenKeys) else { return true }
            if seen.children(of: prefix).values.contains(where: { if case .absent = $0 { false } else { true } }) { return true }
            if page.objects.contains(where: { o in
                if case .absent = seen.change(of: o.key) { return false }
                return !hidden.contains(o.key)
            }) { return true }
            guard page.isTruncated else { return false }
            // A truncated page without a token cannot be followed: say it holds something.
            guard let next = page.nextContinuationToken else { return true }
            token = next
        } while true
    }

    /// Removes a file: its local versions stop (and are never uploaded; a file still open lives on as an
    /// orphan until its last close) and the object is deleted in S3 in order after the uploads before it
    /// (ChangeQueue). Until then lookups and listings do not show it. Journaled before it returns.
    public func unlink(parent: UInt64, name: String) async throws(FSError) {
        try checkWritable()
        let dir = try namespace.node(parent)
        let key = dir.key + name
        try Namespace.refuseInVersionView(key)
        let attr = try await lookup(parent: parent, name: name)
        forget(ino: attr.ino, count: 1)
        guard !attr.isDirectory else { throw .isDirectory }
        try await writeBack.unlinkFile(key: key, ino: attr.ino)
        invalidate(parent: parent, name: name)
        namespace.forgetConfirmed(key, isDirectory: false)
        // The name is free: a file created under it is a new inode, whatever the kernel still holds open.
        namespace.table.withLock { $0.freeName(parent: parent, name: name) }
    }

    /// Forgets what is cached about (parent, name) so the next lookup asks again.
    func invalidate(parent: UInt64, name: String) {
        namespace.table.withLock { $0.invalidate(parent: parent, name: name) }
    }
}
