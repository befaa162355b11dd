// The inode table: what the mount knows of paths, as a pure value (no I/O, no locks; the facade keeps it under
// one Mutex). Inode numbers are assigned per (parent, name) and never reused during a mount; one inode stands
// for one version of an object (a replaced object gets a new number, the old one is marked superseded). Complete
// directory listings and negative lookups are kept for the metadata TTL. An index from object key to inodes
// lets an upload that landed, or a local version that went, update the inodes of its key without a scan.
import Foundation

struct Meta: Sendable {
    var isDirectory: Bool
    var size: Int64
    var etag: String
    var mtime: Date
    /// False for a file known only from a listing: `mtime` is its Last-Modified, and whether its writer
    /// stored an mtime (x-amz-meta-mtime, which wins) is not known until a HEAD (StoredMtimes.swift).
    var mtimeKnown = true
    /// A file as a directory listing made for a reader of the directory showed it (`ls`, `os.listdir`, a
    /// dataset's glob): until this instant (the listing's TTL) an open uses this ETag and size without a HEAD of
    /// its own, so listing a directory and then opening its files costs one GET per file (Reads.swift). Nil for
    /// metadata from a HEAD, a listing made for lookups, or this mount's own changes.
    var listedUntil: ContinuousClock.Instant? = nil

    /// `m` (from a HEAD of the same version of the object) keeping the listing's pin of this metadata.
    func refined(by m: Meta) -> Meta {
        var out = m
        if !isDirectory, !etag.isEmpty, m.etag == etag { out.listedUntil = listedUntil }
        return out
    }
}

struct Node: Sendable {
    var parent: UInt64
    var name: String
    var key: String  // files: the object key; directories: the prefix, ending with "/" (root: `prefix`)
    var meta: Meta
    var fetched: ContinuousClock.Instant
    var lookups: UInt64
    /// Another version of the object now has the path (see `replaced`): this inode keeps showing the
    /// version it stood for, and opens of it fail with ESTALE so the kernel looks the path up again.
    var superseded = false
}

struct Listing: Sendable {
    var entries: BytesDictionary<Meta>
    var expires: ContinuousClock.Instant
    /// Until when a name missing from `entries` is known absent (a listing made for lookups: misses are
    /// trusted for at most 5 s, like negative lookups).
    var negativeUntil: ContinuousClock.Instant
    /// The names of the files in `entries`, in the order S3 lists them; made when first needed
    /// (StoredMtimes.swift).
    var sortedFiles: [String]?

    init(entries: BytesDictionary<Meta>, expires: ContinuousClock.Instant) {
        self.entries = entries
        self.expires = expires
        negativeUntil = expires
    }

    /// What the listing says of `name` now: its metadata, known absent (`.some(nil)`), or nothing (the
    /// listing expired, or it lacks the name and that is no longer trusted).
    func answer(_ name: String) -> Meta?? {
        let now = ContinuousClock.now
        guard now < expires else { return nil }
        if let m = entries[name] { return .some(m) }
        return now < negativeUntil ? .some(nil) : nil
    }
}

/// A name in a directory: names are equal, and hash, by their bytes (ByteKeys.swift).
struct PathKey: Hashable, Sendable {
    var parent: UInt64
    var name: String

    static func == (a: PathKey, b: PathKey) -> Bool { a.parent == b.parent && a.name.sameBytes(b.name) }

    func hash(into hasher: inout Hasher) {
        hasher.combine(parent)
        hasher.combine(ByteKey(name))
    }
}

/// The inode table (see the file comment). Nodes change only through its methods, which keep the key index.
struct InodeTable: Sendable {
    private(set) var nodes: [UInt64: Node] = [:]
    private(set) var inoByPath: [PathKey: UInt64] = [:]
    /// Inodes by the key of their node (files: the object key; directories: the prefix ending in "/").
    private var inosByKey = BytesDictionary<Set<UInt64>>()
    private var nextIno: UInt64 = 2
    var listings: [UInt64: Listing] = [:]
    /// Entries in `listings` as of the last sweep plus those installed since (an upper bound, near enough).
    private var listedEntries = 0
    private var lastSweep = ContinuousClock.now
    private(set) var negative: [PathKey: ContinuousClock.Instant] = [:]

    init(root: Node, ino: UInt64) { put(ino, root) }

    subscript(ino: UInt64) -> Node? { nodes[ino] }

    /// Sets node `ino`, keeping the key index.
    private mutating func put(_ ino: UInt64, _ n: Node?) {
        if let old = nodes[ino], !(n.map { $0.key.sameBytes(old.key) } ?? false) {
            inosByKey[old.key]?.remove(ino)
            if inosByKey[old.key]?.isEmpty == true { inosByKey.removeValue(forKey: old.key) }
        }
        nodes[ino] = n
        if let n { inosByKey[n.key, default: []].insert(ino) }
    }

    /// The inode number of (parent, name), allocated on first sight.
    mutating func ino(parent: UInt64, name: String) -> UInt64 {
        let pk = PathKey(parent: parent, name: name)
        if let i = inoByPath[pk] { return i }
        let i = nextIno
        nextIno += 1
        inoByPath[pk] = i
        return i
    }

    /// Records what is known of (parent, name) (`key`: the object key, or the directory's key without "/") and
    /// returns its inode. The inode number of a path is stable for the mount; a path that changes between file
    /// and directory, or whose object was replaced by another writer, gets a new one (the old one lives until
    /// forgotten, superseded).
    mutating func remember(parent: UInt64, name: String, key: String, meta: Meta, addLookup: Bool) -> UInt64 {
        let pk = PathKey(parent: parent, name: name)
        negative.removeValue(forKey: pk)
        var ino = inoByPath[pk]
        if let i = ino, let existing = nodes[i], existing.meta.isDirectory != meta.isDirectory {
            ino = nil  // the kind changed: a new inode; the old one lives until forgotten
        }
        if let i = ino, let existing = nodes[i], !meta.isDirectory, !existing.meta.etag.isEmpty, !meta.etag.isEmpty,
           existing.meta.etag != meta.etag {
            // Replaced by another writer: a new inode, as a file replaced by rename gets on a local disk.
            // The kernel trusts its own size and mtime for an inode it caches writes for, and keeps its
            // pages (keep_cache), so it must see a new one.
            nodes[i]?.superseded = true
            ino = nil
        }
        let i: UInt64
        if let ino {
            i = ino
        } else {
            i = nextIno
            nextIno += 1
            inoByPath[pk] = i
        }
        let nodeKey = meta.isDirectory ? key + "/" : key
        var n = nodes[i] ?? Node(parent: parent, name: name, key: nodeKey, meta: meta, fetched: .now, lookups: 0)
        var meta = meta
        if !meta.mtimeKnown && n.meta.mtimeKnown && n.meta.etag == meta.etag && !meta.etag.isEmpty {
            meta.mtime = n.meta.mtime  // a listing of the same version: keep the stored mtime a HEAD gave
            meta.mtimeKnown = true
        }
        n.meta = meta
        n.fetched = .now
        if addLookup { n.lookups += 1 }
        put(i, n)
        return i
    }

    /// Node `ino` was revalidated: it shows `meta` as of now.
    mutating func refresh(_ ino: UInt64, meta: Meta) {
        nodes[ino]?.meta = meta
        nodes[ino]?.fetched = .now
    }

    /// Node `ino`'s metadata is not to be trusted any more: the next open or stat asks S3.
    mutating func unpin(_ ino: UInt64) {
        nodes[ino]?.meta.listedUntil = nil
        nodes[ino]?.fetched = .distantPast
    }

    /// Node `ino` keeps showing its version; another version now has its path.
    mutating func supersede(_ ino: UInt64) { nodes[ino]?.superseded = true }

    /// The kernel dropped `count` references to `ino`; at none the node and its listing go (a directory's stay
    /// with `keepDirectories`: an immutable bucket).
    mutating func forget(_ ino: UInt64, count: UInt64, keepDirectories: Bool = false) {
        guard var n = nodes[ino] else { return }
        n.lookups = n.lookups > count ? n.lookups - count : 0
        if n.lookups == 0 && !(keepDirectories && n.meta.isDirectory) {
            put(ino, nil)
            listings.removeValue(forKey: ino)
        } else {
            nodes[ino] = n
        }
    }

    /// Forgets what is cached about (parent, name), so the next lookup asks again (and a miss is trusted).
    mutating func invalidate(parent: UInt64, name: String) {
        listings[parent]?.entries.removeValue(forKey: name)
        let pk = PathKey(parent: parent, name: name)
        if let ino = inoByPath[pk] { nodes[ino]?.fetched = .distantPast }
        negative[pk] = .now
    }

    /// (parent, name) no longer names its inode: a file created under it is a new inode, whatever the kernel
    /// still holds open.
    mutating func freeName(parent: UInt64, name: String) {
        inoByPath.removeValue(forKey: PathKey(parent: parent, name: name))
    }

    mutating func noteMissing(parent: UInt64, name: String) { negative[PathKey(parent: parent, name: name)] = .now }

    mutating func clearMissing(parent: UInt64, name: String) { negative.removeValue(forKey: PathKey(parent: parent, name: name)) }

    /// The renamed inode keeps its number at the new path; keys of nodes under a renamed directory follow.
    mutating func move(parent: UInt64, name: String, newParent: UInt64, newName: String, from src: String, to dst: String,
                       isDirectory: Bool) {
        let from = PathKey(parent: parent, name: name), to = PathKey(parent: newParent, name: newName)
        let meta = listings[parent]?.entries.removeValue(forKey: name)
        if let ino = inoByPath.removeValue(forKey: from) {
            inoByPath[to] = ino
            if var n = nodes[ino] {
                n.parent = newParent
                n.name = newName
                n.key = isDirectory ? dst + "/" : dst
                put(ino, n)
                if listings[newParent] != nil { listings[newParent]?.entries[newName] = meta ?? n.meta }
            }
        }
        if isDirectory {
            let s = src + "/", d = dst + "/"
            for key in inosByKey.keys where key.hasKeyPrefix(s) {
                for ino in inosByKey[key] ?? [] {
                    guard var n = nodes[ino] else { continue }
                    n.key = d + n.key.keySuffix(after: s)
                    put(ino, n)
                }
            }
        }
        negative[from] = .now
        negative.removeValue(forKey: to)
    }

    /// A version of `key` landed in S3 with `meta`: the file inodes of the key, and the listings naming them,
    /// show it.
    mutating func objectLanded(key: String, meta: Meta) {
        for ino in inosByKey[key] ?? [] {
            guard let n = nodes[ino], !n.meta.isDirectory else { continue }
            refresh(ino, meta: meta)
        }
        // The listings naming it, found by its directory's key: also when the kernel has forgotten the file's
        // inode (a listing entry made at create would otherwise keep showing the size it had then).
        let (dirKey, name) = InodeTable.split(key)
        for p in inosByKey[dirKey] ?? [] where listings[p]?.entries[name] != nil { listings[p]?.entries[name] = meta }
    }

    /// The ETags of the versions of file `key` this table knows: its inodes' (superseded ones too) and the
    /// entries of the listings naming it.
    func knownETags(of key: String) -> Set<String> {
        var out = Set<String>()
        for ino in inosByKey[key] ?? [] {
            if let n = nodes[ino], !n.meta.isDirectory, !n.meta.etag.isEmpty { out.insert(n.meta.etag) }
        }
        let (dirKey, name) = InodeTable.split(key)
        for p in inosByKey[dirKey] ?? [] {
            if let m = listings[p]?.entries[name], !m.isDirectory, !m.etag.isEmpty { out.insert(m.etag) }
        }
        return out
    }

    /// The inodes whose node has `key` (a file's key, or a directory's key ending in "/").
    func inos(forKey key: String) -> Set<UInt64> { inosByKey[key] ?? [] }

    /// The directory key (the prefix up to and including the last "/", or "" at the top) and the name of `key`.
    static func split(_ key: String) -> (dirKey: String, name: String) {
        guard let slash = key.utf8.lastIndex(of: UInt8(ascii: "/")) else { return ("", key) }
        return (String(decoding: key.utf8[...slash], as: UTF8.self), String(decoding: key.utf8[key.utf8.index(after: slash)...], as: UTF8.self))
    }

    /// The local version of `key` went without reaching S3: its file inodes revalidate at their next use, and
    /// the listings naming them are dropped.
    mutating func localVersionGone(key: String) {
        for ino in inosByKey[key] ?? [] {
            guard let n = nodes[ino], !n.meta.isDirectory else { continue }
            nodes[ino]?.fetched = .distantPast
        }
        for p in inosByKey[InodeTable.split(key).dirKey] ?? [] { listings.removeValue(forKey: p) }
    }

    /// The file inodes of `key` show a version that is gone: each is superseded, and its path is freed so that
    /// the next lookup gives it a new inode. Returns the paths freed, with the inode each named.
    mutating func renew(fileKey key: String) -> [(parent: UInt64, name: String, ino: UInt64)] {
        var renewed: [UInt64] = []
        return renew(fileKey: key, renewed: &renewed)
    }

    /// `renew(fileKey:)`, also giving the inodes it superseded that were not superseded before (`renewed`, for
    /// `unrenew`).
    mutating func renew(fileKey key: String, renewed: inout [UInt64]) -> [(parent: UInt64, name: String, ino: UInt64)] {
        var freed: [(parent: UInt64, name: String, ino: UInt64)] = []
        for ino in inosByKey[key] ?? [] {
            guard let n = nodes[ino], !n.meta.isDirectory else { continue }
            if !n.superseded { renewed.append(ino) }
            nodes[ino]?.superseded = true
            let pk = PathKey(parent: n.parent, name: n.name)
            if inoByPath[pk] == ino {
                inoByPath.removeValue(forKey: pk)
                freed.append((n.parent, n.name, ino))
            }
        }
        return freed
    }

    /// Undoes `renew` of inodes that still show the version they did (the change that renewed them failed):
    /// each is not superseded any more, and names its path again if nothing took the path meanwhile.
    mutating func unrenew(_ inos: [UInt64], freed: [(parent: UInt64, name: String, ino: UInt64)]) {
        for ino in inos where nodes[ino] != nil {
            nodes[ino]?.superseded = false
        }
        for f in freed where nodes[f.ino].map({ $0.parent == f.parent && $0.name.sameBytes(f.name) }) == true {
            let pk = PathKey(parent: f.parent, name: f.name)
            if inoByPath[pk] == nil && negative[pk] == nil { inoByPath[pk] = f.ino }
        }
    }

    /// Keeps the complete listing of `ino` for lookups. Expired listings are dropped first (at most once a
    /// second, or when the bound is reached), then the oldest ones while the entries kept would exceed
    /// `limit`. A listing larger than `limit` by itself is not kept (false).
    mutating func install(_ listing: Listing, for ino: UInt64, limit: Int) -> Bool {
        let now = ContinuousClock.now
        let n = listing.entries.count
        guard n <= limit else {
            if let old = listings.removeValue(forKey: ino) { listedEntries -= old.entries.count }
            return false
        }
        if now - lastSweep > .seconds(1) || listedEntries + n > limit {
            listings = listings.filter { $0.key != ino && $0.value.expires > now }
            listedEntries = listings.values.reduce(0) { $0 + $1.entries.count }
            lastSweep = now
            if listedEntries + n > limit {
                for (i, l) in listings.sorted(by: { $0.value.expires < $1.value.expires }) {
                    listings.removeValue(forKey: i)
                    listedEntries -= l.entries.count
                    if listedEntries + n <= limit { break }
                }
            }
        }
        if let old = listings.updateValue(listing, forKey: ino) { listedEntries -= old.entries.count }
        listedEntries += n
        return true
    }
}

extension ContinuousClock.Instant {
    /// Long enough ago that anything fetched then counts as expired.
    static var distantPast: ContinuousClock.Instant { .now - .seconds(86400 * 365) }
}

/// What S3 last confirmed of keys, kept past the metadata TTL for stale-if-error (FSOptions.staleIfError):
/// at most `limit` keys, the oldest half dropped when full.
struct Confirmed: Sendable {
    private(set) var entries = BytesDictionary<(meta: Meta, at: ContinuousClock.Instant)>()
    /// The keys of `entries` directly in each directory (by its prefix, "" at the top): a complete listing
    /// of that directory forgets those it lacks.
    private var byDirectory = BytesDictionary<BytesSet>()
    /// When each key's use while S3 was unreachable was last logged (once a minute per key).
    private var logged = BytesDictionary<ContinuousClock.Instant>()
    static let limit = 200_000

    /// The directory prefix `key` (a file key, or a directory prefix ending in "/") is directly in.
    static func directory(of key: String) -> String {
        InodeTable.split(key.endsWithSlash ? key.droppingLastByte : key).dirKey
    }

    mutating func note(_ key: String, _ m: Meta) {
        if entries.count >= Confirmed.limit {
            let cut = entries.values.map(\.at).sorted()[entries.count / 2]
            entries = entries.filter { $0.value.at > cut }
            byDirectory = BytesDictionary()
            for k in entries.keys { byDirectory[Confirmed.directory(of: k), default: []].insert(k) }
            logged = BytesDictionary()
        }
        entries[key] = (m, .now)
        byDirectory[Confirmed.directory(of: key), default: []].insert(key)
    }

    mutating func forget(_ key: String) {
        guard entries.removeValue(forKey: key) != nil else { return }
        let dir = Confirmed.directory(of: key)
        byDirectory[dir]?.remove(key)
        if byDirectory[dir]?.isEmpty == true { byDirectory.removeValue(forKey: dir) }
    }

    /// Forgets `prefix` ("dir/") and every key under it.
    mutating func forget(_ prefix: String, subtree: Bool) {
        guard subtree else { return forget(prefix) }
        for k in Array(entries.keys) where k.hasKeyPrefix(prefix) { forget(k) }
    }

    /// S3 listed directory `prefix` completely with exactly `present` directly in it (file keys, and directory
    /// prefixes ending in "/"): what it confirmed before of any other key there no longer holds (as a HEAD
    /// answering "no such key" forgets it), so an outage must not bring such a key back.
    mutating func listed(_ prefix: String, present: BytesSet) {
        for k in byDirectory[prefix] ?? [] where !present.contains(k) { forget(k) }
    }

    mutating func shouldLog(_ key: String, _ now: ContinuousClock.Instant) -> Bool {
        if let t = logged[key], now - t < .seconds(60) { return false }
        logged[key] = now
        return true
    }
}
