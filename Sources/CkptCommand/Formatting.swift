import Foundation

/// "512 B", "1.5 KiB", "40.0 MiB": `n` bytes in binary units, one decimal.
func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
        v /= 1024
        u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

/// "1h 02m 03s": a number of seconds (rounded down) as hours, minutes and seconds.
func formatSeconds(_ seconds: Double) -> String {
    let s = Int(seconds.rounded(.down))
    return "\(s / 3600)h \(String(format: "%02d", (s % 3600) / 60))m \(String(format: "%02d", s % 60))s"
}

extension Duration {
    /// The duration in seconds.
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
