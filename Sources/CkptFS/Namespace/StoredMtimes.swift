// One rule for a file's mtime, whichever way the kernel reaches the file: the mtime its writer stored
// (x-amz-meta-mtime: ckptfs stores it with every upload, `cp -p`, `tar x` and `rsync -t` set it), else
// Last-Modified.
//
// A listing (ListObjectsV2) carries Last-Modified but no user metadata, so a file known only from a listing
// has no known mtime yet (`Meta.mtimeKnown` false) and HEAD has to tell. That HEAD cannot wait until someone
// asks for the mtime: with its write-back cache on, the kernel keeps the size and mtime a regular file's inode
// was created with for the inode's life and ignores later attribute replies (Linux fs/fuse/inode.c,
// fuse_get_cache_mask), so the reply that creates an inode (lookup, readdirplus) must already carry the
// stored mtime. Hence:
// - readdirplus starts HEADs of the entries of each reply it does not know yet, and of the entries after
//   them, in parallel (at most `mtimeHeadConcurrency` at once), and replies without waiting: an entry whose
//   mtime is not known yet goes without attributes (the kernel looks it up when it is used, and the lookup
//   joins its HEAD), so listing a directory costs its LISTs and the HEADs run ahead of the files' use;
// - a lookup answered by a listing HEADs the name. That HEAD also revalidates the object, so the open that
//   follows within a second sends none of its own;
// - lookups that come in listing order (`ls -l`, `find`, `du` and `rsync` stat entries as they read them;
//   readdirplus only covers some of the kernel's readdir calls) HEAD the names after them too, in parallel,
//   a window growing from 32 to 256 names, like read-ahead.
// A small file (at most `FSOptions.wholeGetMaxSize`, not empty, its data not cached) is not HEADed but fetched
// whole with one GET, whose headers say what the HEAD would and whose body goes to the block cache
// (`SmallObjectFetcher`): listing and reading it then costs that one request.
// HEAD results go back into the listing, so each file is HEADed once per listing; and every HEAD or GET (a
// preload's included) is noted in `KnownVersions`, so a listing showing a version read before needs no HEAD.
import CkptS3
import Foundation
import Synchronization

/// Lookups in one directory that needed a HEAD for the mtime: whether they go in listing order.
struct MtimeScan: Sendable {
    /// Position of the last such name among the listing's file names (sorted as S3 lists them).
    var last = -1
    var streak = 0
    var window = 0
    /// Names before this position were already HEADed ahead (or are being).
    var aheadTo = 0
}

extension Namespace {
    /// HEADs in flight at once for mtimes of listed files (readdirplus batches, lookups ahead): half of the
    /// HTTP client's 64 connections, so reads keep connections of their own.
    static let mtimeHeadConcurrency = 32
    /// Largest number of names HEADed ahead of lookups that come in listing order.
    static let maxMtimeWindow = 256
    /// Most requests for stored mtimes in flight or waiting for a slot before readdirplus stops starting
    /// them for the entries after its reply.
    static let maxQueuedMetaRequests = 4096

    /// `m` (a file as a listing showed it, `mtime` its Last-Modified) with the stored mtime a GET or HEAD of
    /// the same version told (KnownVersions.swift); `m` itself when none did.
    func withKnownMtime(_ m: Meta, key: String) -> Meta {
        guard !m.isDirectory, !m.mtimeKnown,
              let t = versions.storedMtime(key, etag: m.etag, size: m.size, lastModified: m.mtime) else { return m }
        var out = m
        out.mtime = t
        out.mtimeKnown = true
        return out
    }

    /// The metadata of listed file `name` of `parent` (as the listing showed it: `listed`) with its stored
    /// mtime, from a HEAD of `key` or, for a small file, a GET of all of it (`headProbe`; shared with any
    /// request for that key in flight), or nil when the object is gone. The answer is written back to the
    /// listing of `parent`.
    func storedMeta(parent: UInt64, name: String, key: String, listed: Meta?) async throws(FSError) -> Meta? {
        try await startStoredMeta(parent: parent, name: name, key: key, listed: listed, bounded: false).value.get()
    }

    /// Starts (or joins) the HEAD of `key` (a GET of the whole object when `listed`, the file as the listing
    /// showed it, is small: `headProbe`) for its stored mtime; registered before this returns,
    /// so a lookup of the same name joins it instead of sending another. `bounded`: waits for one of the
    /// `mtimeHeadConcurrency` slots first (HEADs ahead of lookups, readdirplus batches).
    /// A caller that read the listing before a request for the same key finished (it writes the listing, then
    /// leaves `mtimeHeads`) gets what that request learned, checked under the same lock, instead of sending
    /// another: the small file's data was cached by then, so the second request was a HEAD.
    func startStoredMeta(parent: UInt64, name: String, key: String, listed: Meta?, bounded: Bool) -> Task<Result<Meta?, FSError>, Never> {
        mtimeHeads.withLock { heads in
            if let t = heads[key] { return t }
            let now = ContinuousClock.now
            if let known = table.withLock({ t -> Meta? in
                guard let l = t.listings[parent], now < l.expires, let m = l.entries[name] else { return nil }
                return m
            }), known.mtimeKnown, !known.isDirectory, listed.map({ $0.etag == known.etag }) ?? true {
                return Task { .success(known) }
            }
            let t = Task { () -> Result<Meta?, FSError> in
                if bounded { await self.metaSlots.acquire() }
                let r = await self.capture { () async throws(FSError) -> Meta? in try await self.headProbe(key, listed: listed) }
                if bounded { self.metaSlots.release() }
                // Into the listing before the HEAD stops being in flight, so no lookup in between sends another.
                if case .success(let m) = r { self.noteStoredMeta(parent: parent, name: name, m) }
                self.mtimeHeads.withLock { _ = $0.removeValue(forKey: key) }
                return r
            }
            heads[key] = t
            return t
        }
    }

    /// Records what a HEAD said of listed entry `name` of `parent`: its metadata, or that it is gone.
    func noteStoredMeta(parent: UInt64, name: String, _ m: Meta?) {
        table.withLock { t in
            guard let listed = t.listings[parent]?.entries[name] else { return }
            if let m {
                t.listings[parent]?.entries[name] = listed.refined(by: m)
            } else {
                t.listings[parent]?.entries.removeValue(forKey: name)
            }
        }
    }

    /// The metadata of file `name` of directory `parent` (key prefix `dirKey`) with its stored mtime, for a
    /// lookup that found it only in a listing; nil when the object is gone. Starts HEADs of the names after it
    /// when lookups in this directory come in listing order.
    func lookupStoredMeta(parent: UInt64, dirKey: String, name: String, listed: Meta) async throws(FSError) -> Meta? {
        for (n, m) in mtimeAhead(parent: parent, name: name) ?? [] {
            _ = startStoredMeta(parent: parent, name: n, key: dirKey + n, listed: m, bounded: true)
        }
        return try await storedMeta(parent: parent, name: name, key: dirKey + name, listed: listed)
    }

    /// The names to HEAD ahead of a lookup of `name` in `parent`, if lookups there come in listing order, with
    /// what the listing showed of each.
    func mtimeAhead(parent: UInt64, name: String) -> [(String, Meta)]? {
        guard let files = sortedFiles(parent) else { return nil }
        guard let i = Namespace.position(of: name, in: files) else { return nil }
        let range: Range<Int>? = mtimeScans.withLock { scans in
            if scans.count > 1024 { scans.removeAll() }  // a bound; losing the streaks costs only speed
            var s = scans[parent] ?? MtimeScan()
            // The kernel may send a few lookups out of order (parallel stats): "in order" allows a small band.
            let inOrder = i > s.last && i - s.last <= 8
            s.streak = inOrder ? s.streak + 1 : 0
            s.last = i
            defer { scans[parent] = s }
            guard s.streak >= 1 else {
                s.window = 0
                s.aheadTo = 0
                return nil
            }
            s.window = s.window == 0 ? 32 : min(Namespace.maxMtimeWindow, s.window * 2)
            let from = max(i + 1, s.aheadTo), to = min(files.count, i + 1 + s.window)
            guard from < to else { return nil }
            s.aheadTo = to
            return from..<to
        }
        guard let range else { return nil }
        let names = Array(files[range])
        return table.withLock { t in
            names.compactMap { n in t.listings[parent]?.entries[n].flatMap { $0.mtimeKnown ? nil : (n, $0) } }
        }
    }

    /// The names of the files in the listing of `parent`, in the order S3 lists them (bytes of UTF-8), made
    /// once per listing when lookups first need it.
    func sortedFiles(_ parent: UInt64) -> [String]? {
        let (sorted, entries, expires): ([String]?, BytesDictionary<Meta>?, ContinuousClock.Instant?) = table.withLock { t in
            guard let l = t.listings[parent] else { return (nil, nil, nil) }
            return (l.sortedFiles, l.sortedFiles == nil ? l.entries : nil, l.expires)
        }
        if let sorted { return sorted }
        guard let entries, let expires else { return nil }
        let files = entries.filter { !$0.value.isDirectory }.sortedByKey().map(\.key)
        table.withLock { t in if t.listings[parent]?.expires == expires { t.listings[parent]?.sortedFiles = files } }
        return files
    }

    /// Binary search in names sorted by bytes of UTF-8.
    static func position(of name: String, in sorted: [String]) -> Int? {
        var lo = 0, hi = sorted.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if sorted[mid].sameBytes(name) { return mid }
            if sorted[mid].utf8.lexicographicallyPrecedes(name.utf8) { lo = mid + 1 } else { hi = mid }
        }
        return nil
    }

    /// Starts (or joins) the HEADs or GETs that learn the stored mtimes of entries `names` of directory handle
    /// `handle` (`resolveListedEntries`), and of the entries after them, without waiting for any; returns the
    /// handle and the requests for `names`, or nil when the handle is gone. A readdirplus reply does not wait
    /// for them (`readdir`): an entry whose mtime is not known yet goes without attributes, and the kernel's
    /// lookup of it when it is used joins the request started here.
    func startListedEntries(handle: UInt64, names: [String]) -> (DirHandle, [(String, Task<Result<Meta?, FSError>, Never>)])? {
        guard let d = dirHandles.withLock({ $0[handle] }) else { return nil }
        let unknown: [(String, Meta)] = names.compactMap { name in
            guard name != ".", name != ".." else { return nil }
            let m = d.state.withLock { $0.metas[name] } ?? table.withLock { $0.listings[d.ino]?.entries[name] }
            return m.flatMap { !$0.isDirectory && !$0.mtimeKnown ? (name, $0) : nil }
        }
        // The kernel asks for the next batch once this one is answered: HEAD the entries after it meanwhile
        // (twice this batch, at least 64), so a listing costs about one round trip per
        // `mtimeHeadConcurrency` files rather than one per batch. Started after this batch's own HEADs, which
        // get the free slots first.
        let following: [String] = d.state.withLock { s in
            guard let last = names.last(where: { $0 != "." && $0 != ".." }), let at = s.position[last] else { return [] }
            let end = max(at + 1, min(s.names.count, at + 1 + max(64, 2 * names.count)))
            return (at + 1 ..< end).compactMap { s.kinds[$0] ? nil : s.names[$0] }
        }
        let ahead: [(String, Meta)] = following.compactMap { name in
            let m = d.state.withLock { $0.metas[name] } ?? table.withLock { $0.listings[d.ino]?.entries[name] }
            return m.flatMap { !$0.mtimeKnown ? (name, $0) : nil }
        }
        let heads = unknown.map { (name, m) in
            (name, startStoredMeta(parent: d.ino, name: name, key: d.key + name, listed: m, bounded: true))
        }
        // A bound on what waits for a slot: a listing that does not wait would otherwise queue a request for
        // every file of a huge directory at once. Files past it are asked for when they are looked up (and the
        // lookups in listing order ask ahead of themselves, `lookupStoredMeta`).
        let room = max(0, Namespace.maxQueuedMetaRequests - mtimeHeads.withLock { $0.count })
        for (name, m) in ahead.prefix(room) {
            _ = startStoredMeta(parent: d.ino, name: name, key: d.key + name, listed: m, bounded: true)
        }
        return (d, heads)
    }

    /// For readdirplus: learns the stored mtimes of the entries `names` of directory handle `handle` that came
    /// from its listing, HEADing them in parallel (at most `mtimeHeadConcurrency` at once), so that
    /// `listedEntry` can give them to the kernel with their attributes. Returns once they are known.
    func resolveListedEntries(handle: UInt64, names: [String]) async {
        guard let (d, heads) = startListedEntries(handle: handle, names: names) else { return }
        await withTaskGroup(of: Void.self) { g in
            for (name, head) in heads {
                g.addTask {
                    guard case .success(let m) = await head.value else { return }
                    d.state.withLock { s in
                        guard let listed = s.metas[name] else { return }
                        if let m { s.metas[name] = listed.refined(by: m) } else { s.metas.removeValue(forKey: name) }
                    }
                }
            }
        }
    }
}
