import CkptFS
import Foundation

/// What `ckptfs preload` shows on stderr: the plan before it starts (what was listed, this rank's share, whether it
/// fits in the cache), then its progress (files, bytes, MB/s, ETA): on a terminal one line rewritten twice a
/// second, otherwise a plain line every 5 seconds (job logs), and at the end what it did. The exit code says how
/// it ended (see `exitCode`).
struct PreloadDisplay {
    /// What the paths were given as, for messages.
    let place: String
    /// Where the paths of the plan are: the mount point, or s3://BUCKET/PREFIX.
    let mountpoint: String
    /// Where the rank and world size came from ("--rank/--world-size", "RANK/WORLD_SIZE", ...).
    let shareSource: String
    let terminal = isatty(2) == 1
    /// Whether a live line is on the terminal (to be cleared before other output).
    private var live = false

    init(place: String, mountpoint: String, shareSource: String) {
        self.place = place
        self.mountpoint = mountpoint
        self.shareSource = shareSource
    }

    /// Seconds between progress lines.
    var interval: Double { terminal ? 0.5 : 5 }

    private func say(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

    /// A path asked for that names nothing.
    func say(missing path: String) { say("ckptfs: preload: warning: no such file or directory: \(path)") }

    mutating func clear() {
        if live { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        live = false
    }

    /// The plan, and the paths that name nothing.
    mutating func plan(_ p: PreloadPlan) {
        clear()
        for m in p.missing { say(missing: "\(mountpoint)/\(m)") }
        var text = "ckptfs: preload: \(grouped(p.listedFiles)) file(s) (\(formatBytes(p.listedBytes))) under \(place)"
        if p.budget != nil || place.hasPrefix("the access profile") {
            text = "ckptfs: preload: \(place): \(formatBytes(p.shareBytes)) of blocks of \(grouped(p.shareFiles)) file(s)"
        }
        if p.share.worldSize > 1 {
            let rule = p.share.strategy == .count ? "every \(ordinal(p.share.worldSize)) key from the \(ordinal(p.share.rank + 1))"
                                                   : "balanced by size"
            text += "; rank \(p.share.rank) of \(p.share.worldSize) (\(shareSource), \(rule)): \(grouped(p.shareFiles)) file(s) "
                + "(\(formatBytes(p.shareBytes)))"
        }
        say(text)
        if p.overBound && p.budget != nil && p.bound < p.capacity - p.capacity / 10 {
            say("ckptfs: preload: the profile's blocks take \(formatBytes(p.shareStoredBytes)) in the cache, more than --budget "
                + "\(formatBytes(p.bound)): replaying its first \(formatBytes(p.bytes)) and stopping there")
        } else if p.overBound {
            say("ckptfs: preload: the share takes \(formatBytes(p.shareStoredBytes)) in the cache, more than the cache keeps "
                + "(\(formatBytes(p.bound)): 90% of its size, \(formatBytes(p.capacity))): preloading its first \(grouped(p.files)) "
                + "file(s) (\(formatBytes(p.bytes))) and stopping there\n"
                + "  fix: give the cache a larger --cache-size, or share the files among more nodes (--world-size)")
        }
    }

    /// "1,234/2,000 files, 1.2 GiB/2.0 GiB (60%), 350.2 MB/s, ETA 0:00:03"
    static func line(_ p: PreloadProgress) -> String {
        let pct = p.bytes > 0 ? Int(Double(p.bytesDone) * 100 / Double(p.bytes)) : (p.files > 0 ? p.filesDone * 100 / p.files : 100)
        var text = "\(grouped(p.filesDone))/\(grouped(p.files)) files, \(formatBytes(p.bytesDone))/\(formatBytes(p.bytes)) (\(pct)%), "
            + String(format: "%.1f MB/s", p.bytesPerSecond / 1e6)
        if let eta = p.etaSeconds { text += ", ETA \(clock(eta))" }
        if p.filesFailed > 0 { text += ", \(grouped(p.filesFailed)) failed" }
        return text
    }

    mutating func progress(_ p: PreloadProgress) {
        var text = "ckptfs: preload: " + Self.line(p)
        if terminal {
            var w = winsize()
            if ioctl(2, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 1, text.count >= Int(w.ws_col) {
                text = String(text.prefix(Int(w.ws_col) - 2)) + "…"
            }
            FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
            live = true
        } else {
            say(text)
        }
    }

    /// What the preload did, said once it has ended.
    mutating func finish(_ plan: PreloadPlan, _ p: PreloadProgress) {
        clear()
        let fetched = "fetched \(formatBytes(p.bytesFetched)) in \(grouped(p.requests)) GET(s) at "
            + String(format: "%.1f MB/s", p.bytesPerSecond / 1e6)
            + (p.bytesAlreadyCached > 0 ? ", \(formatBytes(p.bytesAlreadyCached)) were cached already" : "")
        let took = String(format: "%.1f s", p.elapsedSeconds)
        switch p.state {
        case .done, .running:
            say("ckptfs: preload: done: \(grouped(p.filesDone)) file(s) (\(formatBytes(p.bytesDone))) cached in \(took); \(fetched)")
        case .stoppedAtBound where place.hasPrefix("the access profile"):
            say("ckptfs: preload: stopped at the bound (\(formatBytes(plan.bound)) in the cache): the first \(formatBytes(p.bytesDone)) "
                + "of the profile's \(formatBytes(plan.shareBytes)) of blocks are cached in \(took); \(fetched)")
        case .stoppedAtBound:
            say("ckptfs: preload: stopped at the cache bound: the share's first \(grouped(p.filesDone)) of \(grouped(plan.shareFiles)) "
                + "file(s) (\(formatBytes(p.bytesDone))) are cached in \(took); \(grouped(plan.shareFiles - plan.files)) file(s) "
                + "(\(formatBytes(plan.shareBytes - plan.bytes))) were not preloaded; \(fetched)\n"
                + "  fix: give the cache a larger --cache-size, or share the files among more nodes (--world-size)")
        case .cancelled:
            say("ckptfs: preload: interrupted: \(grouped(p.filesDone)) of \(grouped(p.files)) file(s) (\(formatBytes(p.bytesDone))) are "
                + "cached; run the same command again to fetch the rest; \(fetched)")
        case .failed:
            if let why = p.stopReason { say("ckptfs: preload: stopped: \(why)") }
            if p.filesFailed > 0 {
                say("ckptfs: preload: \(grouped(p.filesFailed)) file(s) could not be preloaded:")
                for f in p.failures.prefix(20) { say("  \(f.path): \(f.reason)") }
                if p.filesFailed > 20 { say("  ... and \(grouped(p.filesFailed - 20)) more") }
            }
            say("ckptfs: preload: \(grouped(p.filesDone)) of \(grouped(p.files)) file(s) (\(formatBytes(p.bytesDone))) are cached in "
                + "\(took); \(fetched)")
        }
    }

    /// 0: everything asked is cached; 3: stopped at the cache bound; 130: interrupted; 1: files failed, paths that
    /// name nothing, or stopped early.
    static func exitCode(_ plan: PreloadPlan, _ p: PreloadProgress) -> Int32 {
        switch p.state {
        case .cancelled: return 130
        case .failed: return 1
        case .stoppedAtBound: return 3
        case .done, .running: return plan.missing.isEmpty ? 0 : 1
        }
    }

    /// "0:02:13"
    static func clock(_ seconds: Double) -> String {
        let s = Int(seconds.rounded(.up))
        return "\(s / 3600):\(String(format: "%02d", (s % 3600) / 60)):\(String(format: "%02d", s % 60))"
    }
}

/// "12,345"
func grouped(_ n: Int) -> String {
    let digits = String(abs(n))
    var out = ""
    for (i, c) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return n < 0 ? "-" + out : out
}

/// "1st", "2nd", "3rd", "4th", "11th", "22nd"
func ordinal(_ n: Int) -> String {
    let suffix: String
    switch (n % 10, n % 100) {
    case (_, 11...13): suffix = "th"
    case (1, _): suffix = "st"
    case (2, _): suffix = "nd"
    case (3, _): suffix = "rd"
    default: suffix = "th"
    }
    return "\(n)\(suffix)"
}
