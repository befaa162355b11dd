// What a preload covers: the objects under paths, as the mount shows them (see Preload.swift).
import CkptCache
import CkptS3
import Foundation
import Synchronization

/// Lists what a preload covers: the objects under paths relative to a root, as the mount shows them (markers,
/// keys that cannot be file names, and objects shadowed by a directory of the same name are left out).
struct PreloadListing: Sendable {
    let client: any ObjectClient
    let bucket: String
    /// A key prefix, empty or ending in "/".
    let root: String
    let skip: @Sendable (String) -> Bool

    /// Paths in one directory beyond which the directory is listed once instead of probing each path.
    static let listParentFrom = 8
    /// Listings and probes in flight at once.
    static let concurrency = 16

    func list(_ rawPaths: [String]) async throws(FSError) -> (objects: [PreloadObject], missing: [String]) {
        let paths = Array(BytesSet(rawPaths.map(PreloadListing.clean)))
        var found = BytesDictionary<PreloadObject>()
        var dirs: [String] = []
        var missing: [String] = []
        if paths.contains(where: \.isEmpty) {
            dirs = [""]
        } else {
            // Which paths are files and which directories: probe each, or list their directory when it holds many.
            var groups = BytesDictionary<[String]>()
            for p in paths {
                let parent = p.utf8.lastIndex(of: UInt8(ascii: "/")).map { String(decoding: p.utf8[..<$0], as: UTF8.self) } ?? ""
                groups[parent, default: []].append(p)
            }
            let classified = try await concurrently(groups.map { ($0.key, $0.value) }) { (parent, names) async throws(FSError) -> [(String, Kind)] in
                if names.count >= PreloadListing.listParentFrom {
                    return try await classifyByListing(parent: parent, names)
                }
                var out: [(String, Kind)] = []
                for p in names { out.append((p, try await probe(p))) }
                return out
            }
            for (p, kind) in classified.joined() {
                switch kind {
                case .directory: dirs.append(p)
                case .file(let o): found[o.key] = o
                case .none: missing.append(p)
                }
            }
        }
        for batch in try await concurrently(dirs, { (d: String) async throws(FSError) -> [PreloadObject] in try await listAll(d) }) {
            for o in batch { found[o.key] = o }
        }
        // A key that is also a directory (`a` and `a/b`) is the directory on the mount.
        var prefixes = BytesSet()
        for k in found.keys {
            var k = Substring(k).utf8
            while let slash = k.lastIndex(of: UInt8(ascii: "/")) {
                k = k[..<slash]
                if !prefixes.insert(String(decoding: k, as: UTF8.self)).inserted { break }
            }
        }
        let objects = found.values.filter { !prefixes.contains($0.key) && !skip($0.key) }.sorted(by: PreloadShare.precedes)
        return (objects, missing.sorted { $0.bytesPrecede($1) })
    }

    enum Kind: Sendable {
        case file(PreloadObject)
        case directory
        case none
    }

    /// "a/b" from "/a/b/", "a//b" as given; "" for the root.
    static func clean(_ p: String) -> String {
        var s = Substring(p).utf8
        while s.first == UInt8(ascii: "/") { s = s.dropFirst() }
        while s.last == UInt8(ascii: "/") { s = s.dropLast() }
        let out = String(decoding: s, as: UTF8.self)
        return out == "." ? "" : out
    }

    /// The object for `key` as listed, or nil when the mount cannot show it (a marker, a segment that is not a
    /// file name).
    func object(key: String, etag: String, size: Int64) -> PreloadObject? {
        guard key.hasKeyPrefix(root), !key.endsWithSlash else { return nil }
        let path = key.keySuffix(after: root)
        guard path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .allSatisfy({ Namespace.validName(String(decoding: $0, as: UTF8.self)) }) else { return nil }
        return PreloadObject(key: key, path: path, etag: etag, size: size)
    }

    /// Whether `path` is a directory (something under `path/`), a file, or nothing: a one-key LIST and a HEAD at once.
    func probe(_ path: String) async throws(FSError) -> Kind {
        let key = root + path
        async let listed = capture { () async throws(FSError) -> Bool in
            let page = try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: key + "/", delimiter: nil, continuationToken: nil, startAfter: nil, maxKeys: 1)
            }
            return !page.objects.isEmpty
        }
        async let head = capture { () async throws(FSError) -> ObjectInfo? in
            do throws(S3Error) { return try await client.headObject(bucket, key, versionId: nil, ifMatch: nil) } catch {
                if error.code == .noSuchKey { return nil }
                throw FSError(error, during: .other)
            }
        }
        let (l, h) = await (listed, head)
        if try l.get() { return .directory }
        guard let info = try h.get(), let o = object(key: key, etag: info.etag, size: info.size) else { return .none }
        return .file(o)
    }

    /// Classifies `names` (paths whose directory is `parent`) from one listing of that directory.
    func classifyByListing(parent: String, _ names: [String]) async throws(FSError) -> [(String, Kind)] {
        let dirKey = parent.isEmpty ? root : root + parent + "/"
        var files = BytesDictionary<ObjectSummary>()
        var subdirs = BytesSet()
        var token: String?
        repeat {
            let page = try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: dirKey, delimiter: "/", continuationToken: token, startAfter: nil, maxKeys: 1000)
            }
            for o in page.objects { files[o.key] = o }
            for p in page.commonPrefixes { subdirs.insert(p.droppingLastByte) }
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        return names.map { p in
            let key = root + p
            if subdirs.contains(key) { return (p, .directory) }
            if let s = files[key], let o = object(key: key, etag: s.etag, size: s.size) { return (p, .file(o)) }
            return (p, .none)
        }
    }

    /// The object `key` as S3 has it now, or nil when there is none.
    func head(_ key: String) async throws(FSError) -> ObjectInfo? {
        do throws(S3Error) { return try await client.headObject(bucket, key, versionId: nil, ifMatch: nil) } catch {
            if error.code == .noSuchKey { return nil }
            throw FSError(error, during: .other)
        }
    }

    /// How `key` is shown: relative to the root, or whole when it is not under it.
    func path(of key: String) -> String { key.hasKeyPrefix(root) ? key.keySuffix(after: root) : key }

    /// Every object under directory `path` ("" for the root), at any depth.
    func listAll(_ path: String) async throws(FSError) -> [PreloadObject] {
        let prefix = path.isEmpty ? root : root + path + "/"
        var out: [PreloadObject] = []
        var token: String?
        repeat {
            let page = try await s3(.other) { () async throws(S3Error) in
                try await client.listObjectsV2(bucket, prefix: prefix.isEmpty ? nil : prefix, delimiter: nil,
                                               continuationToken: token, startAfter: nil, maxKeys: 1000)
            }
            out += page.objects.compactMap { object(key: $0.key, etag: $0.etag, size: $0.size) }
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        return out
    }

    func capture<T: Sendable>(_ f: () async throws(FSError) -> T) async -> Result<T, FSError> {
        do { return .success(try await f()) } catch { return .failure(error) }
    }

    /// `f` over `items`, at most `concurrency` at once; results in the order of `items`; the first failure throws.
    func concurrently<T: Sendable, R: Sendable>(_ items: [T], _ f: @escaping @Sendable (T) async throws(FSError) -> R) async throws(FSError) -> [R] {
        let results = await withTaskGroup(of: (Int, Result<R, FSError>).self) { g in
            var out = [Result<R, FSError>?](repeating: nil, count: items.count)
            var next = 0
            func add() {
                let i = next
                let item = items[i]
                g.addTask {
                    do throws(FSError) { return (i, .success(try await f(item))) } catch { return (i, .failure(error)) }
                }
                next += 1
            }
            while next < min(items.count, PreloadListing.concurrency) { add() }
            while let (i, r) = await g.next() {
                out[i] = r
                if next < items.count { add() }
            }
            return out
        }
        return try results.map { r throws(FSError) in try r!.get() }
    }
}
