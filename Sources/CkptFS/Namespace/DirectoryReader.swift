// Directory listing: paginated ListObjectsV2 with delimiter "/", streamed into the open directory handle
// page by page, so a directory of any size lists with one page in flight. A complete listing also answers
// later lookups in that directory until the TTL passes.
//
// Lookups by name (open or stat of a path nobody listed) would each cost a HEAD and a one-key LIST, and the
// kernel sends the lookups of one directory one at a time, so 8 readers opening files of one directory
// wait for each other's round trips. From the second lookup that misses in a directory within the TTL, the
// directory is listed instead and answers every lookup until the TTL passes. Lookups wait for the first page
// only: a larger directory is listed on in the background (at most `lookupListingPages` pages) while they
// probe names one by one as before.
import CkptS3
import Foundation
import Synchronization

final class DirHandle: Sendable {
    struct State: Sendable {
        var names: [String] = []
        var kinds: [Bool] = []  // isDirectory, parallel to names
        var position = BytesDictionary<Int>()
        var metas = BytesDictionary<Meta>()
        var token: String? = nil
        var done = false
        /// Entries that this mount's own changes made or removed while a page was in flight (ChangesInFlight).
        var missed = BytesDictionary<KeyChange>()
        /// A page missed a change whose outcome is not known here: the listing is not kept for lookups.
        var unsure = false
        /// Brackets the whole listing, from its first page to its last (ChangesInFlight): a file whose upload
        /// lands between two pages, after the page that covers its name and before the last one (which adds
        /// the files still local), is in no page; the changes this bracket saw add it.
        var listing: ChangesInFlight.Ticket?
    }
    let ino: UInt64
    let key: String
    /// Listed for a reader of the directory (opendir), not for lookups: its files' metadata is pinned for opens
    /// until the TTL passes (`Meta.listedUntil`).
    let forReader: Bool
    let state = Mutex(State())
    /// Ends a bracket still open when the handle goes (a listing given up before its last page).
    private let endListing: @Sendable (ChangesInFlight.Ticket) -> Void
    init(ino: UInt64, key: String, forReader: Bool, endListing: @escaping @Sendable (ChangesInFlight.Ticket) -> Void) {
        self.ino = ino
        self.key = key
        self.forReader = forReader
        self.endListing = endListing
    }
    deinit {
        if let t = state.withLock({ $0.listing }) { endListing(t) }
    }
}

/// Lookups that missed in one directory lately, and the listing they started.
struct DirProbe: Sendable {
    var since: ContinuousClock.Instant
    var misses = 0
    /// Lists the directory; true when its first page completed the listing (installed for lookups).
    var task: Task<Bool, Never>?
}

extension Namespace {
    /// A directory larger than this many listing pages (1,000 entries each) is not listed for lookups; the
    /// listing is kept within `FSOptions.maxListedEntries`. Stat-ing 1,000 names of a 10,000-object
    /// directory went from 41 to 1,816 per second at 20 ms RTT (610 to about 3,000 on loopback) when this
    /// went from 3 pages to 100; a directory too large costs up to 100 LIST requests per TTL, in the
    /// background, while its names are probed one by one.
    static let lookupListingPages = 100

    /// Called when a lookup in `parent` missed every cache: counts the miss and, from the second one within
    /// the TTL, lists the directory (once) and waits for its first page. True when that page completed the
    /// listing, which is now installed.
    func listForLookups(parent: UInt64, key: String) async -> Bool {
        guard options.metadataTTL > .zero else { return false }
        let task = dirProbes.withLock { probes -> Task<Bool, Never>? in
            let now = ContinuousClock.now
            if probes.count > 4096 { probes = probes.filter { now - $0.value.since < options.metadataTTL } }
            var p = probes[parent].flatMap { now - $0.since < options.metadataTTL ? $0 : nil } ?? DirProbe(since: now)
            p.misses += 1
            if p.task == nil && p.misses >= 2 {
                p.task = Task { await self.listForLookups(ino: parent, key: key) }
            }
            probes[parent] = p
            return p.task
        }
        return await task?.value ?? false
    }

    /// Lists the directory for lookups. Returns true when its first page completed it (the lookups waiting
    /// are answered from it); otherwise the rest is listed in the background (up to `lookupListingPages`)
    /// while lookups go on probing names, and a listing that completes answers the lookups after it.
    private func listForLookups(ino: UInt64, key: String) async -> Bool {
        let d = DirHandle(ino: ino, key: key, forReader: false, endListing: endListing)
        do throws(FSError) { try await fetchPage(d) } catch { return false }
        if finishLookupListing(d) { return true }
        Task {
            for _ in 1..<Namespace.lookupListingPages {
                do throws(FSError) { try await self.fetchPage(d) } catch { return }
                if self.finishLookupListing(d) { return }
            }
        }
        return false
    }

    /// If `d` is completely listed: a name missing from a listing made for lookups (not for a reader of the
    /// directory) is trusted as absent for at most 5 s, like any missed lookup. Returns whether it is.
    private func finishLookupListing(_ d: DirHandle) -> Bool {
        guard d.state.withLock({ $0.done }) else { return false }
        let until = ContinuousClock.now + Namespace.negativeTTL(options.metadataTTL)
        table.withLock { t in t.listings[d.ino].map { t.listings[d.ino]!.negativeUntil = min($0.negativeUntil, until) } }
        return true
    }

    func opendir(ino: UInt64) throws(FSError) -> UInt64 {
        let n = try node(ino)
        guard n.meta.isDirectory else { throw .notDirectory }
        let h = newDirHandle()
        dirHandles.withLock { $0[h] = DirHandle(ino: ino, key: n.key, forReader: true, endListing: endListing) }
        return h
    }

    func releasedir(handle: UInt64) { _ = dirHandles.withLock { $0.removeValue(forKey: handle) } }

    /// Ends a directory handle's bracket of its listing (`DirHandle.State.listing`) that it did not end itself.
    private var endListing: @Sendable (ChangesInFlight.Ticket) -> Void {
        { [weak self] t in _ = self?.inFlight.withLock { $0.end(t) } }
    }

    /// Fills `reply` with entries from `offset` (0 = start): ".", "..", then the children, at most `limit` of
    /// them; nothing added means the end. For readdirplus the requests that learn the files' stored mtimes are
    /// started (StoredMtimes.swift) but not waited for: a file whose mtime is known goes with its attributes
    /// (and takes a lookup reference), the others go without, and the kernel's lookup of each when it is used
    /// joins its request. So a listing costs its LISTs only (os.listdir, glob, a dataset's file list need
    /// names only), and the files' requests run ahead of the reads, in listing order.
    func readdir(handle: UInt64, offset: Int64, limit: Int, into reply: inout some DirectoryReplier) async throws(FSError) {
        let entries = try await entries(handle: handle, offset: offset, limit: limit)
        if reply.plus { _ = startListedEntries(handle: handle, names: entries.map(\.name)) }
        for e in entries {
            guard reply.fits(e.name) else { break }
            let attributes = reply.plus ? listedEntry(handle: handle, name: e.name) : nil
            reply.add(name: e.name, ino: e.ino, isDirectory: e.isDirectory, attributes: attributes, nextOffset: e.nextOffset)
        }
    }

    /// Entries from `offset` (0 = start): ".", "..", then the children. Returns at most `limit` entries;
    /// an empty result means the end.
    func entries(handle: UInt64, offset: Int64, limit: Int = 512) async throws(FSError) -> [DirEntry] {
        guard let d = dirHandles.withLock({ $0[handle] }) else { throw .badHandle }
        var out: [DirEntry] = []
        if offset == 0 { out.append(DirEntry(name: ".", ino: d.ino, isDirectory: true, nextOffset: 1)) }
        if offset <= 1 {
            let parent = (try? node(d.ino).parent) ?? Namespace.rootIno
            out.append(DirEntry(name: "..", ino: parent, isDirectory: true, nextOffset: 2))
        }
        var index = Int(max(0, offset - 2))
        while out.count < limit {
            let (have, done) = d.state.withLock { ($0.names.count, $0.done) }
            if index >= have {
                if done { break }
                try await fetchPage(d)
                continue
            }
            let batch = d.state.withLock { s in
                (index..<min(s.names.count, index + limit - out.count)).map { (s.names[$0], s.kinds[$0]) }
            }
            for (name, isDir) in batch {
                out.append(DirEntry(name: name, ino: inoFor(parent: d.ino, name: name), isDirectory: isDir,
                                    nextOffset: Int64(index) + 3))
                index += 1
            }
        }
        return out
    }

    /// For readdirplus: the attributes of entry `name` of directory handle `handle` as its listing gave them,
    /// taking one lookup reference (the kernel counts such an entry as a lookup). Nil for "." and "..", when
    /// the listing is no longer at hand, or when a file's stored mtime is not known (`resolveListedEntries`
    /// learns it): the entry then goes without attributes and the kernel looks it up.
    func listedEntry(handle: UInt64, name: String) -> Attributes? {
        guard name != ".", name != "..", let d = dirHandles.withLock({ $0[handle] }) else { return nil }
        let key = d.key + name
        if let m = overlay.localMeta(of: key) {
            return remember(parent: d.ino, name: name, key: key, meta: m, addLookup: true)
        }
        // A request started for an earlier batch may have told the stored mtime since (noted in `versions`).
        let meta = (d.state.withLock { $0.metas[name] } ?? table.withLock { $0.listings[d.ino]?.entries[name] })
            .map { withKnownMtime($0, key: key) }
        guard let meta, meta.isDirectory || meta.mtimeKnown else { return nil }
        return remember(parent: d.ino, name: name, key: key, meta: meta, addLookup: true)
    }

    /// The stable inode number of (parent, name), allocated on first sight.
    func inoFor(parent: UInt64, name: String) -> UInt64 {
        table.withLock { $0.ino(parent: parent, name: name) }
    }

    func fetchPage(_ d: DirHandle) async throws(FSError) {
        let token = d.state.withLock { $0.token }
        if d.state.withLock({ $0.done }) { return }
        if VersionViews.baseKey(ofViewDirectory: d.key) != nil { return try await fillVersionView(d) }
        if options.immutable && d.forReader && token == nil && fillFromListing(d) { return }
        counters.withLock { $0.lists += 1 }
        // Opens trust what this page says of a file until the TTL passes, counted from before the request.
        let listedUntil = d.forReader ? ContinuousClock.now + trustedFor : nil
        // Bracketed from before its first page (see `DirHandle.State.listing`).
        d.state.withLock { s in if s.listing == nil && !s.done && s.token == nil && s.names.isEmpty { s.listing = inFlight.withLock { $0.begin() } } }
        // What changed while the page was in flight is either still local (hidden, a local file) or in `seen`.
        let (page, (hidden, localChildren), seen) = try await observing({ () async throws(FSError) -> ListObjectsPage in
            try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: d.key.isEmpty ? nil : d.key, delimiter: "/",
                                               continuationToken: token, startAfter: nil, maxKeys: nil)
            }
        }, local: { page in (hiddenKeys(page), page.isTruncated ? [] : overlay.localChildren(of: d.key)) })
        let endSeq = inFlight.withLock { $0.current }
        let missed = seen.children(of: d.key)
        // The last page: what changed since the first began (landed between two pages, and in no page), less
        // what a delete queued since hides.
        var sinceFirstPage = BytesDictionary<KeyChange>()
        if !page.isTruncated, let t = d.state.withLock({ s in defer { s.listing = nil }; return s.listing }) {
            sinceFirstPage = inFlight.withLock { $0.end(t) }.children(of: d.key).filter { child, change in
                if case .present = change { return !overlay.isHidden(d.key + child) }
                return true
            }
        }
        // Stored mtimes HEADs found for these versions before (an expired listing may still be at hand).
        let known: BytesDictionary<Meta> = table.withLock { $0.listings[d.ino]?.entries ?? [:] }
        let listing: BytesDictionary<Meta>? = d.state.withLock { s in
            guard s.token == token, !s.done else { return nil }  // another reader fetched it meanwhile
            for (child, change) in missed { s.missed[child] = change }
            for p in page.commonPrefixes {
                let name = p.keySuffix(after: d.key).droppingLastByte
                guard Namespace.validName(name), !hidden.contains(p) else { continue }
                if case .absent = missed[name + "/"] { continue }  // deleted while the page was in flight
                let meta = Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime)
                if let at = s.position[name] {
                    s.kinds[at] = true  // a prefix and an object of the same name: the directory wins
                } else {
                    s.position[name] = s.names.count
                    s.names.append(name)
                    s.kinds.append(true)
                }
                s.metas[name] = meta
            }
            for o in page.objects {
                let name = o.key.keySuffix(after: d.key)
                guard Namespace.validName(name), s.position[name] == nil, !hidden.contains(o.key) else { continue }
                var meta: Meta
                switch missed[name] {
                case .absent: continue  // deleted while the page was in flight
                case .present(let m): meta = m  // replaced by an upload that landed meanwhile
                case .changed:
                    s.unsure = true
                    meta = Meta(isDirectory: false, size: o.size, etag: o.etag, mtime: o.lastModified ?? mountTime, mtimeKnown: false)
                case nil:
                    if let k = known[name], k.mtimeKnown, !k.isDirectory, k.etag == o.etag, k.size == o.size {
                        meta = k
                    } else {
                        meta = withKnownMtime(Meta(isDirectory: false, size: o.size, etag: o.etag,
                                                   mtime: o.lastModified ?? mountTime, mtimeKnown: !options.storedMtimes),
                                              key: o.key)
                    }
                    meta.listedUntil = listedUntil
                }
                s.position[name] = s.names.count
                s.names.append(name)
                s.kinds.append(false)
                s.metas[name] = meta
            }
            s.token = page.isTruncated ? page.nextContinuationToken : nil
            s.done = !page.isTruncated
            if s.done {
                for (child, change) in sinceFirstPage { s.missed[child] = change }
                // Made by this mount while a page was in flight, and not in its answer.
                for (child, change) in s.missed {
                    let isDirectory = child.endsWithSlash
                    let name = isDirectory ? child.droppingLastByte : child
                    switch change {
                    case .changed: s.unsure = true
                    case .absent: break
                    case .present(let m):
                        guard Namespace.validName(name), s.position[name] == nil else { continue }
                        s.position[name] = s.names.count
                        s.names.append(name)
                        s.kinds.append(isDirectory)
                        s.metas[name] = isDirectory ? Meta(isDirectory: true, size: 0, etag: "", mtime: mountTime) : m
                    }
                }
                // Files created here and not uploaded yet.
                for (name, meta) in localChildren where s.position[name] == nil {
                    s.position[name] = s.names.count
                    s.names.append(name)
                    s.kinds.append(meta.isDirectory)
                    s.metas[name] = meta
                }
            }
            return s.done && !s.unsure ? s.metas : nil
        }
        if let listing {
            // S3 confirmed what is in the directory now: names confirmed before and gone since are not served
            // stale (stale-if-error) during an outage.
            if options.staleIfError > .zero {
                let present = BytesSet(listing.map { $0.value.isDirectory ? d.key + $0.key + "/" : d.key + $0.key })
                confirmed.withLock { $0.listed(d.key, present: present) }
            }
            // The whole directory is known: it answers lookups (and negative lookups) until the TTL passes,
            // unless it is too large to keep (the handle then keeps its entries' attributes for readdirplus),
            // or a change of this mount's came between the last page and now (a rename, a mkdir: they change
            // the kept listings under the table's lock, so one kept before them is corrected by them).
            let kept = table.withLock { t in
                guard inFlight.withLock({ $0.current }) == endSeq else { return false }
                return t.install(newListing(listing), for: d.ino,
                                 limit: options.maxListedEntries)
            }
            if kept { d.state.withLock { $0.metas = [:] } }
        }
    }

    /// On an immutable bucket, a reader of a directory listed within the TTL (for a reader or for lookups) gets
    /// that listing's entries, in S3's order, with no LIST. Returns whether it did.
    private func fillFromListing(_ d: DirHandle) -> Bool {
        let now = ContinuousClock.now
        guard let entries = table.withLock({ t -> BytesDictionary<Meta>? in
            guard let l = t.listings[d.ino], now < l.expires, now < l.negativeUntil else { return nil }
            return l.entries
        }) else { return false }
        // S3 lists a directory's keys and prefixes ("name/") together, by bytes of UTF-8.
        let names = entries.keys.sorted { a, b in
            (entries[a]!.isDirectory ? a + "/" : a).utf8.lexicographicallyPrecedes((entries[b]!.isDirectory ? b + "/" : b).utf8)
        }
        d.state.withLock { s in
            guard s.names.isEmpty, !s.done else { return }
            for name in names {
                s.position[name] = s.names.count
                s.names.append(name)
                s.kinds.append(entries[name]!.isDirectory)
            }
            s.done = true
        }
        return true
    }

    /// The keys of every object under `prefix` in S3 (all pages), less those a queued delete hides.
    func objectKeys(under prefix: String) async throws(FSError) -> [String] {
        var keys: [String] = []
        var token: String?
        var missed = BytesDictionary<KeyChange>()
        repeat {
            counters.withLock { $0.lists += 1 }
            let (page, hidden, seen) = try await observing({ () async throws(FSError) -> ListObjectsPage in
                try await s3(.other) { () async throws(S3Error) in
                    try await client.listObjectsV2(bucket, prefix: prefix, delimiter: nil, continuationToken: token,
                                                   startAfter: nil, maxKeys: nil)
                }
            }, local: hiddenKeys)
            for (k, c) in seen.changes where k.hasKeyPrefix(prefix) { missed[k] = seen.change(of: k) ?? c.change }
            keys += page.objects.map(\.key).filter { k in
                if case .absent = seen.change(of: k) { return false }
                return !hidden.contains(k)
            }
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        // Landed or made by this mount while a page was in flight, and not in its answer.
        let listed = BytesSet(keys)
        for (k, c) in missed.sortedByKey() where !listed.contains(k) && !overlay.isHidden(k) {
            if case .present = c { keys.append(k) }
        }
        return keys
    }
}
