import CkptFS
import Foundation

/// What a waiting `ckptfs flush` shows on stderr: how many files and bytes under its path are not durable
/// yet, which are uploading (and how far), which are queued, and the last upload error. On a terminal one
/// line rewritten every second; otherwise a plain line every few seconds, so a log shows what a long flush
/// waited for. Nothing is shown for a flush that ends within the first interval. Read from `status`.
struct FlushProgress {
    let mountpoint: String
    let relative: String
    let terminal = isatty(2) == 1
    let started = ContinuousClock.now
    /// Whether a live line is on the terminal (to be cleared at the end).
    private var live = false

    init(mountpoint: String, relative: String) {
        self.mountpoint = mountpoint
        self.relative = relative
    }

    /// How often the line is shown: 1 s on a terminal, 3 s otherwise.
    var interval: Duration { terminal ? .seconds(1) : .seconds(3) }

    mutating func show() {
        var text = "ckptfs: flush: \(Int((ContinuousClock.now - started).seconds)) s, " + describe()
        if terminal {
            var w = winsize()
            if ioctl(2, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 1, text.count >= Int(w.ws_col) {
                text = String(text.prefix(Int(w.ws_col) - 2)) + "…"
            }
            FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
            live = true
        } else {
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
    }

    /// Clears the live line, so what follows starts on a clean line.
    mutating func finish() {
        if live { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        live = false
    }

    /// "waiting for 2 file(s) (40.0 MiB) under /mnt/x: uploading a.bin (12.0 MiB of 32.0 MiB sent); queued b.bin; last error: ..."
    func describe() -> String {
        let place = relative.isEmpty ? mountpoint : "\(mountpoint)/\(relative)"
        guard let s = try? Control.status(mountpoint).reply else {
            return "waiting for the uploads under \(place) (status unavailable)"
        }
        func under(_ p: WriteBackStatus.Pending) -> Bool {
            relative.isEmpty || p.path == relative || p.path.hasPrefix(relative + "/")
        }
        let mine = s.writeBack.pending.filter(under)
        let deletes = s.writeBack.deletes.filter(under)
        func list(_ ps: [WriteBackStatus.Pending], _ each: (WriteBackStatus.Pending) -> String) -> String {
            ps.prefix(3).map(each).joined(separator: ", ") + (ps.count > 3 ? " and \(ps.count - 3) more" : "")
        }
        // Why a delete is stuck, if S3 refuses it (it is retried until it succeeds).
        let refused = deletes.first { $0.error != nil }.map { "; delete of \($0.path) fails: \($0.error!)" } ?? ""
        guard !mine.isEmpty else {
            guard !deletes.isEmpty else { return "waiting for the last uploads under \(place) to be confirmed" }
            return "waiting for \(deletes.count) delete(s) under \(place): " + list(deletes) { $0.path } + refused
        }
        var text = "waiting for \(mine.count) file(s) (\(formatBytes(mine.reduce(0) { $0 + $1.bytes }))) under \(place):"
        var parts: [String] = []
        let uploading = mine.filter { $0.state == "uploading" }
        if !uploading.isEmpty {
            parts.append("uploading " + list(uploading) { "\($0.path) (\(formatBytes($0.sentBytes)) of \(formatBytes($0.bytes)) sent)" })
        }
        let queued = mine.filter { $0.state == "queued" }
        if !queued.isEmpty { parts.append("queued " + list(queued) { $0.path }) }
        let open = mine.filter { $0.state == "open" }
        if !open.isEmpty { parts.append("still open for writing " + list(open) { $0.path }) }
        let conflicts = mine.filter { $0.state == "conflict" }
        if !conflicts.isEmpty { parts.append("conflict " + list(conflicts) { $0.path }) }
        text += " " + parts.joined(separator: "; ")
        if let failing = mine.first(where: { $0.error != nil }), let e = failing.error {
            text += "; last error: \(failing.path): \(e)"
        }
        return text + refused
    }
}
