import ArgumentParser
import Foundation

/// `ckptfs status MOUNTPOINT [--json]`: what the mount's daemon reports, as text or as its JSON.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show uploads, dirty files and cache use of a mount.")

    @Argument(help: "The mountpoint or a path under it.") var mountpoint: String
    @Flag(help: "Print the daemon's reply as JSON (one object).") var json = false

    func run() throws {
        do {
            let (mp, _) = try ckptfsMount(containing: mountpoint)
            let status = try Control.status(mp)
            print(json ? String(decoding: status.json, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                       : Self.text(status.reply, mountpoint: mp))
        } catch {
            throw fail(error.message)
        }
    }

    /// The status as lines of `label: value`.
    static func text(_ s: Control.StatusReply, mountpoint mp: String) -> String {
        var lines: [String] = []
        let w = s.writeBack
        lines.append("mount:            \(mp)")
        if let st = s.stopping {
            lines.append(st.refusingChanges
                ? "stopping:         \(st.signal): drain over, refusing changes (EROFS) until unmounted"
                : "stopping:         \(st.signal): draining uploads (\(Int(st.drainSecondsLeft.rounded(.up))) s left, "
                    + "\(st.openForWriting) file(s) open for writing), then unmounting")
        }
        lines.append("dirty files:      \(w.dirtyFiles) (\(formatBytes(w.dirtyBytes))), oldest \(String(format: "%.0f", w.oldestDirtySeconds)) s")
        lines.append("uploads:          \(w.uploadsInFlight) in flight, \(w.uploadedFiles) done (\(formatBytes(w.uploadedBytes)))")
        if w.recovered > 0 { lines.append("recovered:        \(w.recovered) file(s) from the journal at mount") }
        for q in w.quarantined { lines.append("quarantined:      \(q)") }
        for f in w.failures { lines.append("failing:          \(f.path): \(f.error ?? "")") }
        for p in w.pending.prefix(20) where p.error == nil {
            let sent = p.sentBytes > 0 ? ", \(formatBytes(p.sentBytes)) sent" : ""
            lines.append("pending:          \(p.path) (\(formatBytes(p.bytes)), \(p.state)\(sent))")
        }
        if w.pending.count > 20 { lines.append("                  ... and \(w.pending.count - 20) more") }
        for d in w.deletes where d.error != nil { lines.append("delete failing:   \(d.path): \(d.error!) (retried)") }
        let quiet = w.deletes.filter { $0.error == nil }
        if !quiet.isEmpty {
            lines.append("deletes:          \(quiet.count) pending: " + quiet.prefix(5).map(\.path).joined(separator: ", ")
                + (quiet.count > 5 ? " and \(quiet.count - 5) more" : ""))
        }
        lines.append("cache:            \(formatBytes(s.cacheUsedBytes)) of \(formatBytes(s.cacheCapacityBytes)), "
            + "hit ratio \(String(format: "%.2f", s.cacheHitRatio))")
        for p in s.preloads ?? [] {
            let what = p.paths.map { $0.isEmpty ? mp : "\(mp)/\($0)" }
            var line = "preload:          \(what.prefix(3).joined(separator: ", "))\(what.count > 3 ? " and \(what.count - 3) more" : "")"
            if p.plan.share.worldSize > 1 { line += " (rank \(p.plan.share.rank) of \(p.plan.share.worldSize))" }
            lines.append(line + ": " + PreloadDisplay.line(p.progress))
        }
        if let c = s.credentials {
            var line = "credentials:      \(c.accessKeyId.map { "\($0) from " } ?? "")\(c.source)"
            if let e = c.expiration, let left = c.expiresInSeconds {
                line += left > 0 ? ", expires \(e) (in \(formatSeconds(left)))" : ", EXPIRED at \(e)"
            }
            if c.refreshes > 0 { line += ", refreshed \(c.refreshes) time(s)" }
            lines.append(line)
            if c.consecutiveFailures > 0, let error = c.lastError {
                lines.append("credentials:      refresh failing (\(c.consecutiveFailures) in a row; requests use the current "
                    + "credentials until they expire, uploads wait and resume after a refresh): \(error)")
                if let fix = c.fix { lines.append("  fix: \(fix)") }
            }
        } else {
            lines.append("credentials:      none (anonymous requests)")
        }
        if let m = s.metricsURL { lines.append("metrics:          \(m)") }
        lines.append("requests:         \(s.getRequests) GET (\(formatBytes(s.bytesDownloaded))), \(s.putRequests) PUT/part, "
            + "\(s.headRequests) HEAD, \(s.listRequests) LIST; \(s.directOpens) direct-I/O opens")
        return lines.joined(separator: "\n")
    }
}
