// The versions view: a read-only directory `NAME@versions` beside each file NAME of a versioned bucket, with
// one file per S3 version of NAME, named by its Last-Modified time and version id so names sort oldest first:
// `2026-11-29T16-31-21Z_3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY.pt` (the time in UTC with "-" for ":", the version id
// as `ckptfs versions` shows it and `ckptfs restore --version` takes it, NAME's extension). The directory is never listed in NAME's directory (so `ls`, `find` and dataset
// globs do not see it), only looked up by name. Its files read the version with GetObject versionId=..., through
// the block cache (blocks are cached by key and ETag); every change in it fails with EROFS.
import CkptS3
import Foundation
import Synchronization

/// What the namespace knows of the versions views looked at lately.
final class VersionViews: Sendable {
    struct Listing: Sendable {
        /// Entry name -> its version.
        var entries: BytesDictionary<ObjectVersion>
        var fetched: ContinuousClock.Instant
    }

    /// By view directory key ("dir/NAME@versions/").
    let listings = Mutex(BytesDictionary<Listing>())

    static let suffix = "@versions"

    /// The key of the file a view directory key ("dir/NAME@versions/") shows the versions of ("dir/NAME"), or nil
    /// for any other key.
    static func baseKey(ofViewDirectory key: String) -> String? {
        guard key.hasKeySuffix(suffix + "/") else { return nil }
        let base = key.utf8.dropLast(suffix.utf8.count + 1)
        guard let last = base.last, last != UInt8(ascii: "/") else { return nil }  // "dir/@versions/" names no file
        return String(decoding: base, as: UTF8.self)
    }

    /// Whether `key` (a file key, or a directory key ending in "/") is a view directory or inside one.
    static func contains(_ key: String) -> Bool {
        if baseKey(ofViewDirectory: key) != nil { return true }
        guard let slash = key.utf8.dropLast().lastIndex(of: UInt8(ascii: "/")) else { return false }
        return baseKey(ofViewDirectory: String(decoding: key.utf8[...slash], as: UTF8.self)) != nil
    }

    /// The names of `versions` (of the file `baseName`, newest first as ListObjectVersions gives them) in a
    /// view: `STAMP_VERSIONID.EXT`, delete markers have none. Versions written in the same second (S3 keeps
    /// Last-Modified to the second) get `-01`, `-02`... after the stamp, oldest first, so names sort oldest first.
    static func entries(of versions: [ObjectVersion], baseName: String) -> BytesDictionary<ObjectVersion> {
        let ext = baseName.utf8.lastIndex(of: UInt8(ascii: ".")).flatMap {
            $0 == baseName.utf8.startIndex ? nil : String(decoding: baseName.utf8[$0...], as: UTF8.self)
        } ?? ""
        let oldestFirst = versions.filter { !$0.isDeleteMarker }.reversed()
        let perSecond = Dictionary(grouping: oldestFirst, by: { stamp($0.lastModified) })
        var seen: [String: Int] = [:]
        var out = BytesDictionary<ObjectVersion>()
        for v in oldestFirst {
            let s = stamp(v.lastModified)
            seen[s, default: 0] += 1
            let ordinal = perSecond[s]!.count > 1 ? String(format: "-%02d", seen[s]!) : ""
            out["\(s)\(ordinal)_\(v.versionId.replacingOccurrences(of: "/", with: "_"))\(ext)"] = v
        }
        return out
    }

    /// `2026-11-29T16-31-21Z`: Last-Modified in UTC, a valid file name on every system.
    static func stamp(_ date: Date?) -> String {
        S3Date.iso8601(date ?? Date(timeIntervalSince1970: 0)).replacingOccurrences(of: ":", with: "-")
    }
}

extension Namespace {
    /// Every version and delete marker of `key` in S3, newest first (ListObjectVersions, every page that can
    /// hold `key`). Throws EACCES naming s3:ListBucketVersions when S3 refuses.
    func objectVersions(of key: String) async throws(FSError) -> [ObjectVersion] {
        var keyMarker: String?
        var versionMarker: String?
        var out: [ObjectVersion] = []
        repeat {
            counters.withLock { $0.lists += 1 }
            let page: ListVersionsPage
            do {
                page = try await client.listObjectVersions(bucket, prefix: key, delimiter: nil, keyMarker: keyMarker,
                                                           versionIdMarker: versionMarker, maxKeys: nil)
            } catch {
                if error.code == .accessDenied {
                    throw FSError(EACCES, "S3 refused to list the versions of \(key) (AccessDenied): the credentials need "
                                  + "s3:ListBucketVersions on bucket \(bucket)", cause: error)
                }
                throw FSError(error, during: .other)
            }
            out += page.versions.filter { $0.key.sameBytes(key) }
            // Versions are listed by key: once past `key`, the rest are other keys.
            let past = page.versions.last.map { key.bytesPrecede($0.key) } ?? false
            guard page.isTruncated, !past, let next = page.nextKeyMarker else { break }
            (keyMarker, versionMarker) = (next, page.nextVersionIdMarker)
        } while true
        return out
    }

    /// The entries of the view directory `viewKey` ("dir/NAME@versions/"), listed again when older than the
    /// metadata TTL.
    func versionViewEntries(_ viewKey: String) async throws(FSError) -> BytesDictionary<ObjectVersion> {
        if let l = versionViews.listings.withLock({ $0[viewKey] }), isFresh(l.fetched) { return l.entries }
        guard let base = VersionViews.baseKey(ofViewDirectory: viewKey) else { return [:] }
        let fetched = ContinuousClock.now
        let versions = try await objectVersions(of: base)
        let entries = VersionViews.entries(of: versions, baseName: InodeTable.split(base).name)
        versionViews.listings.withLock { l in
            if l.count > 1024 { l = l.filter { isFresh($0.value.fetched) } }
            l[viewKey] = .init(entries: entries, fetched: fetched)
        }
        return entries
    }

    /// Metadata of a version shown in a view: its size, ETag and Last-Modified (as its mtime).
    static func meta(of v: ObjectVersion) -> Meta {
        Meta(isDirectory: false, size: v.size, etag: v.etag ?? "", mtime: v.lastModified ?? Date(timeIntervalSince1970: 0))
    }

    /// A lookup the versions view answers: `name` in a view directory (a version), or `NAME@versions` beside a
    /// file that has versions (the view directory). Nil for every other name.
    func lookupInVersionView(dir: Node, parent: UInt64, name: String) async throws(FSError) -> Attributes? {
        if VersionViews.baseKey(ofViewDirectory: dir.key) != nil {
            guard let v = try await versionViewEntries(dir.key)[name] else { throw .noEntry }
            return remember(parent: parent, name: name, key: dir.key + name, meta: Namespace.meta(of: v), addLookup: true)
        }
        guard name.hasKeySuffix(VersionViews.suffix), name.utf8.count > VersionViews.suffix.utf8.count else { return nil }
        let viewKey = dir.key + name + "/"
        // A file that has no versions leaves the name to the ordinary lookup (a file named so, or none).
        let entries = try await versionViewEntries(viewKey)
        guard !entries.isEmpty else { return nil }
        let newest = entries.values.compactMap(\.lastModified).max() ?? mountTime
        return remember(parent: parent, name: name, key: dir.key + name,
                        meta: Meta(isDirectory: true, size: 0, etag: "", mtime: newest), addLookup: true)
    }

    /// Fills the listing of `d`, a view directory, with its versions (one page: the whole view).
    func fillVersionView(_ d: DirHandle) async throws(FSError) {
        let entries = try await versionViewEntries(d.key)
        d.state.withLock { s in
            guard !s.done else { return }
            for (name, v) in entries.sortedByKey() {
                s.position[name] = s.names.count
                s.names.append(name)
                s.kinds.append(false)
                s.metas[name] = Namespace.meta(of: v)
            }
            s.done = true
        }
    }

    /// The object version a node in a view reads, or nil for any other node.
    func versionPin(_ n: Node) async throws(FSError) -> PinnedObject? {
        let (viewKey, name) = InodeTable.split(n.key)
        guard !viewKey.isEmpty, !n.meta.isDirectory else { return nil }
        guard let base = VersionViews.baseKey(ofViewDirectory: viewKey) else { return nil }
        guard let v = try await versionViewEntries(viewKey)[name] else { throw .noEntry }
        return PinnedObject(key: base, etag: v.etag ?? "", size: v.size, versionId: v.versionId)
    }

    /// Throws EROFS when any of `keys` is in a versions view: the view is read-only.
    static func refuseInVersionView(_ keys: String...) throws(FSError) {
        for k in keys where VersionViews.contains(k) {
            throw FSError(EROFS, "\(k) is in a versions view, which is read-only: ckptfs restore makes a version the newest")
        }
    }
}
