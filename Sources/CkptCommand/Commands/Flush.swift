import ArgumentParser
import Foundation

/// `ckptfs flush MOUNTPOINT[/PATH] [--timeout S]`: blocks until every dirty file under PATH is durable in S3.
struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until every dirty file under a path is durable in S3.",
        discussion: "Exits 0 once everything under PATH is in S3; otherwise (timeout or upload failure) exits 1 and lists what is not durable and why.")

    @Argument(help: "The mountpoint or a path under it.") var path: String
    @Option(help: "Give up after this many seconds (default: wait as long as it takes).") var timeout: Double?

    func validate() throws {
        if let timeout, !(timeout > 0) {
            throw ValidationError("--timeout must be a number of seconds above zero, like 600; leave it out to wait as long as it takes")
        }
    }

    func run() throws {
        do throws(UserFacingFailure) {
            let (mp, rel) = try ckptfsMount(containing: path)
            var progress = FlushProgress(mountpoint: mp, relative: rel)
            let reply = try Control.flush(mp, under: rel, timeout: timeout, progress: &progress)
            if !reply.ok { throw UserFacingFailure(message: Self.notDurable(reply, under: rel.isEmpty ? mp : "\(mp)/\(rel)")) }
        } catch {
            throw fail(error.message)
        }
    }

    /// What a failed flush says: each file that is not durable with its reason, and what happens to them.
    static func notDurable(_ reply: Control.FlushReply, under place: String) -> String {
        var msg = "\(reply.notDurable.count) file(s) under \(place) are not durable in S3 yet:"
        for n in reply.notDurable { msg += "\n  \(n.path): \(n.reason)" }
        let conflicts = reply.notDurable.contains { $0.reason.hasPrefix("conflict") }
        return msg + "\nThey stay journaled, and readable here. "
            + (conflicts ? "A conflict is not retried: rename the file to upload it under another name. " : "")
            + "Other failures are retried: run ckptfs flush again or see ckptfs status."
    }
}
