// Checkpoint history on versioned buckets: every version of a file (ListObjectVersions, plus the local
// versions written here and not uploaded yet), and restore, which makes an earlier version the newest with a
// server-side copy (CopyObject from `versionId`), conditional on the newest version it replaces.
import CkptS3
import Foundation

/// One version of a file: one S3 keeps (a version or a delete marker, from ListObjectVersions), or one
/// written through this mount and not uploaded yet.
public struct FileVersion: Sendable, Codable, Equatable {
    /// S3's version id ("null" for an object written while the bucket was not versioned); nil for a local version.
    public var versionId: String?
    /// S3's Last-Modified; for a local version, when it was last written.
    public var lastModified: Date?
    /// Bytes (0 for a delete marker).
    public var size: Int64
    /// S3's ETag (quoted, as S3 sends it); nil for a delete marker and a local version.
    public var etag: String?
    /// The version S3 serves for the key (the newest one); a delete marker that is latest means the file is deleted.
    public var isLatest: Bool
    public var isDeleteMarker: Bool
    /// A local version's state, as `ckptfs status` shows it ("open", "queued", "uploading", "conflict", ...).
    public var localState: String?

    public init(versionId: String?, lastModified: Date?, size: Int64, etag: String?, isLatest: Bool,
                isDeleteMarker: Bool, localState: String? = nil) {
        self.versionId = versionId
        self.lastModified = lastModified
        self.size = size
        self.etag = etag
        self.isLatest = isLatest
        self.isDeleteMarker = isDeleteMarker
        self.localState = localState
    }
}

/// Every version of one file, newest first: local versions (not uploaded yet) first, then S3's.
public struct FileHistory: Sendable, Codable, Equatable {
    /// The path under the mount, and its S3 key.
    public var path: String
    public var key: String
    /// False when S3 keeps no version ids for the key (every version id is "null", or there is no version):
    /// the bucket is not versioned, or was not when the file was written.
    public var versioned: Bool
    public var versions: [FileVersion]

    public init(path: String, key: String, versioned: Bool, versions: [FileVersion]) {
        self.path = path
        self.key = key
        self.versioned = versioned
        self.versions = versions
    }
}

extension FileSystem {
    /// The S3 key of `path` (a path under the mount, with or without a leading "/").
    func key(ofPath path: String) -> String {
        var p = Substring(path).utf8
        while p.first == UInt8(ascii: "/") { p = p.dropFirst() }
        while p.last == UInt8(ascii: "/") { p = p.dropLast() }
        return prefix + String(decoding: p, as: UTF8.self)
    }

    /// Every version of the file at `path` (under the mount), newest first. Throws EACCES naming the
    /// permission (s3:ListBucketVersions) when S3 refuses ListObjectVersions, ENOENT when neither S3 nor
    /// this mount has a version of it, EIO when S3 cannot be reached.
    public func history(of path: String) async throws(FSError) -> FileHistory {
        let key = key(ofPath: path)
        guard key.utf8.count > prefix.utf8.count else { throw FSError(EISDIR, "the mount's root has no versions: name a file under it") }
        var versions: [FileVersion] = []
        let shown = key.keySuffix(after: prefix)
        for p in writeBackStatus.pending where p.path.sameBytes(shown) {
            versions.append(FileVersion(versionId: nil, lastModified: Date(timeIntervalSinceNow: -p.ageSeconds), size: p.bytes,
                                        etag: nil, isLatest: false, isDeleteMarker: false, localState: p.state))
        }
        let remote = try await namespace.objectVersions(of: key).map { v in
            FileVersion(versionId: v.versionId, lastModified: v.lastModified, size: v.size, etag: v.etag,
                        isLatest: v.isLatest, isDeleteMarker: v.isDeleteMarker)
        }
        if versions.isEmpty && remote.isEmpty { throw FSError(ENOENT, "no version of \(shown) in S3 or here") }
        // S3 lists a key's versions newest first; keep that order (Last-Modified ties within a second).
        return FileHistory(path: shown, key: key, versioned: remote.contains { $0.versionId != "null" }, versions: versions + remote)
    }

    /// Makes an earlier version of the file at `path` the newest: version `versionId`, or the newest version
    /// written at or before `time`. A server-side copy (CopyObject from that version, keeping its metadata),
    /// conditional on the newest version still being the one listed (If-Match its ETag; If-None-Match when
    /// the file is deleted, so the copy undeletes it). Returns the version that was restored; one that is
    /// already the newest is left alone. Throws EBUSY when the file has local changes not uploaded yet (flush
    /// first), ENOENT when no such version exists, EINVAL for a delete marker, EIO with a conflict when the
    /// file changed in S3 meanwhile, and what `history(of:)` throws.
    @discardableResult
    public func restore(_ path: String, versionId: String?, at time: Date?) async throws(FSError) -> FileVersion {
        try checkWritable()
        let h = try await history(of: path)
        if h.versions.contains(where: { $0.localState != nil }) {
            throw FSError(EBUSY, "\(h.path) has changes written here that are not in S3 yet: run ckptfs flush on it first, "
                          + "then restore (a restore would be overwritten by their upload)")
        }
        let remote = h.versions.filter { $0.versionId != nil }
        let target: FileVersion
        if let versionId {
            guard let v = remote.first(where: { $0.versionId == versionId }) else {
                throw FSError(ENOENT, "\(h.path) has no version \(versionId): ckptfs versions lists them")
            }
            guard !v.isDeleteMarker else { throw FSError(EINVAL, "version \(versionId) of \(h.path) is a delete marker: restore a version before it") }
            target = v
        } else if let time {
            guard let v = remote.first(where: { !$0.isDeleteMarker && ($0.lastModified ?? .distantFuture) <= time }) else {
                throw FSError(ENOENT, "\(h.path) has no version written at or before \(S3Date.iso8601(time))")
            }
            target = v
        } else {
            throw FSError(EINVAL, "name the version to restore (a version id, or a time)")
        }
        if target.isLatest { return target }
        let latest = remote.first { $0.isLatest }
        let condition: WriteCondition = latest.flatMap { $0.isDeleteMarker ? nil : $0.etag }.map { .ifMatch($0) } ?? .ifNoneMatch
        let result: CkptS3.WriteResult
        await openObjects.keep(key: h.key)  // descriptors reading the version it replaces read on
        do throws(S3Error) {
            let source = try await client.headObject(bucket, h.key, versionId: target.versionId, ifMatch: nil)
            result = try await client.copyObject(from: (bucket, h.key, target.versionId), to: bucket, h.key, ifMatch: source.etag, condition: nil,
                                                 options: PutOptions(contentType: source.contentType, metadata: source.metadata,
                                                                     condition: condition))
        } catch {
            if error.code == .preconditionFailed {
                throw FSError(EIO, "\(h.path) changed in S3 while it was being restored (PreconditionFailed): nothing was restored; "
                              + "run ckptfs versions to see its versions now", cause: error, kind: .conflict)
            }
            throw FSError(error, during: .other)
        }
        logger.notice("restored an earlier version", metadata: [
            "key": "\(h.key)", "version_id": "\(target.versionId ?? "")", "etag": "\(result.etag)"])
        let meta = Meta(isDirectory: false, size: target.size, etag: result.etag, mtime: result.lastModified ?? Date(), mtimeKnown: false)
        namespace.objectRestored(key: h.key, meta: meta)
        return target
    }
}
