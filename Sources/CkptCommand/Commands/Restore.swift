import ArgumentParser
import CkptFS
import CkptS3
import Foundation

/// `ckptfs restore PATH (--version ID | --time T)`: makes an earlier version of a file the newest (a copy
/// in S3), and undeletes a file whose newest version is a delete marker.
struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make an earlier version of a file the newest again (also undeletes a deleted file).",
        discussion: "A copy in S3 from that version (no bytes pass through this machine), made only if the newest version "
            + "is still the one seen (If-Match); the earlier versions stay. The file must have no changes here that are not "
            + "uploaded yet (run ckptfs flush first). ckptfs versions PATH lists the version ids.")

    @Argument(help: "A file under a ckptfs mount.") var path: String
    @Option(help: "The version id to restore (from ckptfs versions).") var version: String?
    @Option(help: "Restore the newest version written at or before this time (ISO 8601, like 2026-11-29T16:31:21Z).") var time: String?

    func validate() throws {
        if (version == nil) == (time == nil) {
            throw ValidationError("give --version ID or --time T (one of them); ckptfs versions PATH lists the versions")
        }
        if let time, Self.parseTime(time) == nil {
            throw ValidationError("--time \(time) is not an ISO 8601 time; write it like 2026-11-29T16:31:21Z")
        }
    }

    func run() throws {
        do throws(UserFacingFailure) {
            let (mp, rel) = try ckptfsMount(containing: path)
            guard !rel.isEmpty else { throw UserFacingFailure(message: "\(path) is a mountpoint: name a file under it") }
            let reply = try Control.versions(mp, .init(cmd: "restore", path: rel, versionId: version, time: time.flatMap(Self.parseTime)))
            guard let v = reply.restored else { throw UserFacingFailure(message: "the daemon did not say what it restored") }
            let when = v.lastModified.map(S3Date.iso8601) ?? "?"
            FileHandle.standardError.write(Data((v.isLatest
                ? "ckptfs: \(rel): version \(v.versionId ?? "") (\(when)) is already the newest; nothing changed\n"
                : "ckptfs: \(rel): restored version \(v.versionId ?? "") (\(when), \(formatBytes(v.size))) as the newest\n").utf8))
        } catch {
            throw fail(error.message)
        }
    }

    /// `2026-11-29T16:31:21Z`, with fractional seconds or an offset, or as the versions view names it (`2026-11-29T16-31-21Z`).
    static func parseTime(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [[.withInternetDateTime], [.withInternetDateTime, .withFractionalSeconds]] {
            f.formatOptions = options
            if let d = f.date(from: s) { return d }
        }
        return nil
    }
}
