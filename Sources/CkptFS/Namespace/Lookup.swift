// Lookups and attributes: a name is answered from a local version, a fresh listing or negative entry, a
// listing made for lookups in a directory where they keep missing, or S3 (a HEAD and a one-key LIST at once).
import CkptS3
import Foundation

extension Namespace {
    /// Finds `name` in directory `parent` and takes one lookup reference on the result (released by `forget`).
    func lookup(parent: UInt64, name: String) async throws(FSError) -> Attributes {
        let dir = try node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try Namespace.checkStorable(name, in: dir.key, isDirectory: false)  // no such key can exist
        guard Namespace.validName(name) else { throw .noEntry }
        if let version = try await lookupInVersionView(dir: dir, parent: parent, name: name) { return version }
        // A file with local changes is what its local version says.
        if let m = overlay.localMeta(of: dir.key + name) {
            return remember(parent: parent, name: name, key: dir.key + name, meta: m, addLookup: true)
        }
        // A fresh listing of the parent, or a fresh negative entry, answers without a request.
        let cached = cachedMeta(parent: parent, name: name)
        var meta: Meta
        if let c = cached {
            guard let m = c else { throw .noEntry }
            meta = m
        } else if await listForLookups(parent: parent, key: dir.key),
                  let listed = table.withLock({ $0.listings[parent]?.answer(name) }) {
            // Lookups keep missing here: the directory was listed once and answers them all (a training job
            // opening its shards one by one asks the server once, not once or twice per file).
            guard let m = listed else { throw .noEntry }
            meta = m
        } else {
            guard let m = try await fetchMeta(key: dir.key + name) else {
                table.withLock { $0.noteMissing(parent: parent, name: name) }
                throw .noEntry
            }
            meta = m
        }
        // Known from a listing only, in a version a GET or HEAD answered for (a preload's, an earlier epoch's).
        if !meta.isDirectory && !meta.mtimeKnown { meta = withKnownMtime(meta, key: dir.key + name) }
        if !meta.isDirectory && !meta.mtimeKnown {
            // Known from a listing only: the kernel keeps the mtime an inode is created with, so HEAD for the
            // stored one first (a small file: GET it whole, its data then in the cache); that request also
            // revalidates: an open right after sends none.
            guard let m = try await lookupStoredMeta(parent: parent, dirKey: dir.key, name: name, listed: meta) else {
                table.withLock { $0.noteMissing(parent: parent, name: name) }
                throw .noEntry
            }
            meta = meta.refined(by: m)
        }
        return remember(parent: parent, name: name, key: dir.key + name, meta: meta, addLookup: true)
    }

    /// What is known of `name` in `parent` without a request: a fresh listing of the parent, a fresh negative
    /// entry, or a fresh node: its metadata, known absent (`.some(nil)`), or nil (S3 must be asked).
    private func cachedMeta(parent: UInt64, name: String) -> Meta?? {
        let pk = PathKey(parent: parent, name: name)
        return table.withLock { t in
            if let known = t.listings[parent]?.answer(name) {
                // A listing lacks stored mtimes; the node of the same version may have it from a HEAD.
                if let m = known, !m.mtimeKnown, let ino = t.inoByPath[pk], let n = t[ino], !n.superseded,
                   n.meta.mtimeKnown, n.meta.etag == m.etag, !m.etag.isEmpty {
                    return .some(n.meta)
                }
                return known
            }
            if let neg = t.negative[pk], ContinuousClock.now - neg < Namespace.negativeTTL(options.metadataTTL) { return .some(nil) }
            if let ino = t.inoByPath[pk], let n = t[ino], isFresh(n.fetched) { return .some(n.meta) }
            return nil
        }
    }

    /// `lookup` when it needs no request (the answer is in memory): its attributes, with one lookup reference
    /// taken, or `ENOENT`; nil when S3 must be asked (call `lookup`). Never waits, so the FUSE thread answers
    /// such a lookup itself instead of handing it to a task.
    func lookupAtHand(parent: UInt64, name: String) throws(FSError) -> Attributes? {
        let dir = try node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try Namespace.checkStorable(name, in: dir.key, isDirectory: false)
        guard Namespace.validName(name) else { throw .noEntry }
        // Versions views are answered by `lookup` (History/).
        if VersionViews.baseKey(ofViewDirectory: dir.key) != nil || name.hasKeySuffix(VersionViews.suffix) { return nil }
        if let m = overlay.localMeta(of: dir.key + name) {
            return remember(parent: parent, name: name, key: dir.key + name, meta: m, addLookup: true)
        }
        guard let cached = cachedMeta(parent: parent, name: name) else { return nil }
        guard var meta = cached else { throw .noEntry }
        if !meta.isDirectory && !meta.mtimeKnown { meta = withKnownMtime(meta, key: dir.key + name) }
        guard meta.isDirectory || meta.mtimeKnown else { return nil }  // a HEAD for its mtime first
        return remember(parent: parent, name: name, key: dir.key + name, meta: meta, addLookup: true)
    }

    /// `getattr` when it needs no request: an orphan's, a local file's, a directory's, a fresh node's or a versions
    /// view's attributes; nil when a HEAD must ask S3 (call `getattr`). Never waits, so the FUSE thread answers
    /// it itself instead of handing it to a task.
    func getattrAtHand(ino: UInt64) throws(FSError) -> Attributes? {
        let n = try node(ino)
        if let m = overlay.orphanMeta(ino: ino) { return attributes(ino, m) }
        // A superseded inode keeps showing its version: its key's local file, if any, is another file's now.
        if n.superseded { return attributes(ino, n.meta) }
        if !n.meta.isDirectory, let m = overlay.localMeta(of: n.key) { return attributes(ino, m) }
        if n.meta.isDirectory || (isFresh(n.fetched) && n.meta.mtimeKnown) { return attributes(ino, n.meta) }
        if VersionViews.contains(n.key) { return attributes(ino, n.meta) }  // an earlier version never changes
        return nil
    }

    /// Asks S3 whether `key` is a directory (a prefix with something under it) or a file.
    func fetchMeta(key: String) async throws(FSError) -> Meta? {
        async let listing = capture { () async throws(FSError) -> Bool in try await self.listProbe(key + "/") }
        async let head = capture { () async throws(FSError) -> Meta? in try await self.headProbe(key) }
        let (l, h) = await (listing, head)
        switch l {
        case .success(true): return Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime)
        case .success(false): return try h.get()
        case .failure(let e):
            // S3 unreachable: a file HEAD answered for (or that stale-if-error vouches for) is still that file.
            if e.kind == .unreachable, case .success(let m?) = h { return m }
            throw e
        }
    }

    /// Runs `f` and keeps its outcome, so two requests can run concurrently with `async let`.
    func capture<T: Sendable>(_ f: () async throws(FSError) -> T) async -> Result<T, FSError> {
        do { return .success(try await f()) } catch { return .failure(error) }
    }

    func listProbe(_ dirPrefix: String) async throws(FSError) -> Bool {
        counters.withLock { $0.lists += 1 }
        if overlay.isHidden(dirPrefix) { return false }  // removed here, its delete still queued
        let found: Bool
        do throws(FSError) { found = try await listProbeOnce(dirPrefix) } catch where error.kind == .unreachable {
            guard stale(dirPrefix, error) != nil else { throw error }
            return true
        }
        if found { confirm(dirPrefix, Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime)) }
        return found
    }

    private func listProbeOnce(_ dirPrefix: String) async throws(FSError) -> Bool {
        // One key tells, unless deletes are queued: then what is listed may be on its way out.
        let hiding = overlay.hasHidden
        let (page, hidden, seen) = try await observing({ () async throws(FSError) -> ListObjectsPage in
            try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: dirPrefix, delimiter: "/", continuationToken: nil,
                                               startAfter: nil, maxKeys: hiding ? 1000 : 1)
            }
        }, local: hiddenKeys)
        // This mount deleted or made the directory while the LIST was in flight.
        switch seen.change(of: dirPrefix) {
        case .absent: return false
        case .present, .changed: return true
        case nil: break
        }
        func shown(_ key: String) -> Bool {
            if hidden.contains(key) { return false }
            if case .absent = seen.change(of: key) { return false }
            return true
        }
        if hiding || !seen.isEmpty {
            return page.objects.contains { shown($0.key) } || page.commonPrefixes.contains { shown($0) } || page.isTruncated
        }
        return !page.objects.isEmpty || !page.commonPrefixes.isEmpty
    }

    /// What S3 has of file `key` now, from a HEAD; or, when a listing showed it (`listed`) with at most
    /// `FSOptions.wholeGetMaxSize` bytes (and more than 0) and that version's data is not cached, from a GET of
    /// all of it, whose headers say the same and whose body goes to the block cache (`SmallObjectFetcher`):
    /// the open and reads that follow need no request. Nil when the object is gone.
    func headProbe(_ key: String, listed: Meta? = nil) async throws(FSError) -> Meta? {
        if overlay.isHidden(key) { return nil }  // removed here, its delete still queued
        let limit = min(options.wholeGetMaxSize, smallObjects?.blockSize ?? 0)
        let whole = listed.map { l in
            l.size > 0 && l.size <= limit && !(smallObjects?.isCached(key, etag: l.etag) ?? true)
        } == true ? smallObjects : nil
        let (answer, hidden, seen) = try await observing({ () async throws(FSError) -> Result<ObjectInfo, S3Error> in
            do throws(S3Error) {
                if let whole {
                    do throws(S3Error) {
                        let info = try await whole.fetchSmallObject(key, limit: min(limit, listed?.size ?? limit))
                        // A 206 without Content-Range does not say the size: HEAD tells it.
                        if info.size >= 0 { return .success(info) }
                    } catch where error.code == .invalidRange {
                        // Empty now (a range of an empty object is unsatisfiable): HEAD tells the rest.
                    }
                }
                counters.withLock { $0.heads += 1 }
                return .success(try await client.headObject(bucket, key, versionId: nil, ifMatch: nil))
            } catch { return .failure(error) }
        }, local: { _ in overlay.isHidden(key) })
        // This mount deleted or replaced the object while the HEAD was in flight: that answer is out of date.
        switch seen.change(of: key) {
        case .absent: return nil
        case .present(let m): return m
        case .changed, nil: break
        }
        if hidden { return nil }
        switch answer {
        case .success(let info):
            versions.note(key, info)
            let m = Meta(isDirectory: false, size: info.size, etag: info.etag,
                         mtime: options.storedMtimes ? Namespace.mtime(info) : info.lastModified ?? Date(timeIntervalSince1970: 0))
            confirm(key, m)
            return m
        case .failure(let error):
            if error.code == .noSuchKey {
                confirmed.withLock { $0.forget(key) }
                return nil
            }
            let e = FSError(error, during: .other)
            guard e.kind == .unreachable, let m = stale(key, e) else { throw e }
            return m
        }
    }

    // MARK: Stale-if-error

    /// S3 confirmed `m` for `key` (a file key, or a directory prefix ending in "/") just now.
    func confirm(_ key: String, _ m: Meta) {
        guard options.staleIfError > .zero else { return }
        confirmed.withLock { $0.note(key, m) }
    }

    /// This mount removed or replaced `key` (a file key; with `isDirectory`, the directory and everything under
    /// it): what S3 confirmed of it before no longer holds, so an outage must not bring it back.
    func forgetConfirmed(_ key: String, isDirectory: Bool) {
        guard options.staleIfError > .zero else { return }
        confirmed.withLock { $0.forget(isDirectory ? key + "/" : key, subtree: isDirectory) }
    }

    /// What S3 confirmed of `key` within `FSOptions.staleIfError`, used (and logged) because S3 is unreachable
    /// (`error`); nil when nothing recent enough is known.
    func stale(_ key: String, _ error: FSError) -> Meta? {
        let now = ContinuousClock.now
        let (m, log) = confirmed.withLock { c -> (Meta?, Bool) in
            guard let e = c.entries[key], now - e.at <= options.staleIfError else { return (nil, false) }
            return (e.meta, c.shouldLog(key, now))
        }
        if let m, log {
            logger.warning("S3 is unreachable; serving what it last confirmed (stale-if-error)",
                           metadata: ["s3.key": "\(key)", "etag": "\(m.etag)", "error": "\(error)"])
        }
        return m
    }

    /// The mtime a writer stored (x-amz-meta-mtime, seconds since the epoch), else Last-Modified.
    static func mtime(_ info: ObjectInfo) -> Date {
        if let s = info.metadata["mtime"], let t = Double(s) { return Date(timeIntervalSince1970: t) }
        return info.lastModified ?? Date(timeIntervalSince1970: 0)
    }

    /// Records what is known of (parent, name) and returns its attributes (InodeTable.remember).
    @discardableResult
    func remember(parent: UInt64, name: String, key: String, meta: Meta, addLookup: Bool) -> Attributes {
        if !meta.isDirectory && !meta.etag.isEmpty { confirm(key, meta) }
        let (ino, shown) = table.withLock { t in
            let i = t.remember(parent: parent, name: name, key: key, meta: meta, addLookup: addLookup)
            return (i, t[i]!.meta)
        }
        return attributes(ino, shown)
    }

    /// Another writer replaced the object `ino` shows (node `n`) with the version `m`. One inode stands for one
    /// version of an object: the kernel keeps an inode's pages across opens (keep_cache) and, with its
    /// write-back cache on, trusts its own size and mtime of a regular file for the inode's life (Linux
    /// fs/fuse/inode.c, fuse_get_cache_mask), so neither a new attribute reply nor a reopen can bring the
    /// inode to the new version. The path gets a new inode number with `m` (given to the kernel at its next
    /// lookup), and `ino` is marked superseded: it keeps showing its version, and opens of it fail with
    /// ESTALE so the kernel looks the path up again (see `remoteObject`).
    func replaced(_ ino: UInt64, _ n: Node, by m: Meta) {
        remember(parent: n.parent, name: n.name, key: n.key, meta: m, addLookup: false)
        table.withLock { t in
            t.supersede(ino)
            if t.listings[n.parent]?.entries[n.name] != nil { t.listings[n.parent]?.entries[n.name] = m }
        }
        tellKernel([(n.parent, n.name, ino)])
    }

    /// The kernel dropped `count` references to `ino`.
    func forget(ino: UInt64, count: UInt64) {
        guard ino != Namespace.rootIno else { return }
        // An immutable bucket's directories stay known, with their listings (which answer lookups of their
        // files), after the kernel forgets them: a cold epoch then needs no request for what was known.
        let dropped = table.withLock { t -> Bool in
            t.forget(ino, count: count, keepDirectories: options.immutable)
            return t[ino] == nil
        }
        // A directory's listing for lookups went with it: the next lookup that misses there lists it again
        // (else, until the TTL passed, each lookup of the directory the kernel looks up anew sent a HEAD and
        // a LIST: an epoch after the kernel dropped its caches).
        if dropped { dirProbes.withLock { $0[ino]?.task = nil } }
    }

    func getattr(ino: UInt64) async throws(FSError) -> Attributes {
        if let a = try getattrAtHand(ino: ino) { return a }
        let n = try node(ino)
        guard let m = try await headProbe(n.key) else { throw FSError.noEntry }
        if !n.meta.etag.isEmpty && m.etag != n.meta.etag {
            // The inode keeps showing its version (an open file of it reads that version or fails with
            // ESTALE); the path gets a new inode at its next lookup, and opens of this one are sent there.
            replaced(ino, n, by: m)
            return attributes(ino, n.meta)
        }
        table.withLock { $0.refresh(ino, meta: m) }
        return attributes(ino, m)
    }

}
