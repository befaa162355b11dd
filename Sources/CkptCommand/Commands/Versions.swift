import ArgumentParser
import CkptFS
import CkptS3
import Foundation

/// `ckptfs versions PATH [--json]`: every version of a file on a versioned bucket, newest first, with the
/// versions written here and not uploaded yet.
struct Versions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every version of a file: S3's versions and delete markers, newest first, and local versions not uploaded yet.",
        discussion: "PATH is a file under a ckptfs mount. On a versioned bucket each save that reached S3 is a version; "
            + "ckptfs restore PATH --version ID makes one the newest again. Needs s3:ListBucketVersions.")

    @Argument(help: "A file under a ckptfs mount.") var path: String
    @Flag(help: "Print the versions as JSON (one object; times in ISO 8601 UTC).") var json = false

    func run() throws {
        do throws(UserFacingFailure) {
            let (mp, rel) = try ckptfsMount(containing: path)
            guard !rel.isEmpty else { throw UserFacingFailure(message: "\(path) is a mountpoint: name a file under it") }
            let reply = try Control.versions(mp, .init(cmd: "versions", path: rel))
            guard let h = reply.history else { throw UserFacingFailure(message: "the daemon sent no versions") }
            if json {
                let e = JSONEncoder()
                e.dateEncodingStrategy = .iso8601
                e.outputFormatting = [.sortedKeys]
                print(String(decoding: try! e.encode(h), as: UTF8.self))
            } else {
                print(Self.table(h))
            }
            if !h.versioned {
                FileHandle.standardError.write(Data(("ckptfs: note: the bucket keeps no versions of \(h.path) (its version ids are null): "
                    + "enable versioning (aws s3api put-bucket-versioning --bucket BUCKET --versioning-configuration Status=Enabled) "
                    + "to keep every save\n").utf8))
            }
        } catch {
            throw fail(error.message)
        }
    }

    /// One line per version: version id (or "local"), Last-Modified in UTC, size, and what it is; columns
    /// padded to the widest value.
    static func table(_ h: FileHistory) -> String {
        var rows = [["VERSION", "LAST MODIFIED (UTC)", "SIZE", ""]]
        for v in h.versions {
            var what: [String] = []
            if let s = v.localState { what.append("written here, not in S3 yet (\(s))") }
            if v.isDeleteMarker { what.append("delete marker") }
            if v.isLatest { what.append("latest") }
            rows.append([v.versionId ?? "local", v.lastModified.map(S3Date.iso8601) ?? "-",
                         v.isDeleteMarker ? "-" : formatBytes(v.size), what.joined(separator: ", ")])
        }
        let widths = (0..<3).map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { r in
            let id = r[0].padding(toLength: widths[0], withPad: " ", startingAt: 0)
            let when = r[1].padding(toLength: widths[1], withPad: " ", startingAt: 0)
            let size = String(repeating: " ", count: widths[2] - r[2].count) + r[2]
            return "\(id)  \(when)  \(size)  \(r[3])".trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
