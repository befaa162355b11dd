import Foundation
import Logging

/// A swift-log handler writing one JSON object per line to stderr (`--log-format json`, for log shippers such as
/// Fluent Bit, Vector or CloudWatch): `{"time":"2025-06-01T12:00:00.123Z","level":"notice","logger":"ckptfs",
/// "message":"...", ...metadata}`. Metadata keys become top-level keys (a key that would replace one of the four
/// above is written as `metadata.KEY`); values are strings, arrays and objects as swift-log holds them. Each line
/// is written with one write(2), so lines from concurrent tasks never interleave. Nothing is added that the text
/// format does not log: what keeps secrets out of the text log keeps them out of this one.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String, level: Logger.Level, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.logLevel = level
        self.metadataProvider = metadataProvider
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let explicit = event.metadata { merged.merge(explicit) { _, new in new } }
        if let error = event.error { merged["error"] = .string("\(error)") }
        FileHandle.standardError.write(Data(Self.line(time: Date(), level: event.level, label: label, message: "\(event.message)",
                                                      metadata: merged).utf8))
    }

    /// The JSON line (with its newline) of one log event; metadata keys sorted, so a line is the same every time.
    static func line(time: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var out = "{\"time\":\(quoted(timestamp(time))),\"level\":\(quoted(level.rawValue)),\"logger\":\(quoted(label)),"
            + "\"message\":\(quoted(message))"
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            let name = ["time", "level", "logger", "message"].contains(key) ? "metadata.\(key)" : key
            out += ",\(quoted(name)):\(json(value))"
        }
        return out + "}\n"
    }

    static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): return quoted(s)
        case .stringConvertible(let c): return quoted(c.description)
        case .array(let a): return "[" + a.map(json).joined(separator: ",") + "]"
        case .dictionary(let d):
            return "{" + d.sorted(by: { $0.key < $1.key }).map { "\(quoted($0.key)):\(json($0.value))" }.joined(separator: ",") + "}"
        }
    }

    /// `s` as a JSON string: quotes, backslashes and control characters escaped (RFC 8259), everything else as is.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// `2025-06-01T12:00:00.123Z`: UTC, milliseconds.
    static func timestamp(_ date: Date) -> String {
        let ms = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var t = time_t(ms / 1000)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday,
                      tmv.tm_hour, tmv.tm_min, tmv.tm_sec, Int(ms % 1000))
    }
}
