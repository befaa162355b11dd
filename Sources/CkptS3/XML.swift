// A small XML reader for S3 responses.
//
// S3 answers with plain, namespace-qualified, attribute-light XML. This reader builds a tree of
// elements (names without namespace prefixes, attributes, text) and understands the five predefined
// entities, numeric character references, CDATA, comments, processing instructions and a DOCTYPE.
// It rejects malformed input with a position rather than guessing.
import Foundation

extension XML {
    /// An XML element: its local name (prefix dropped), attributes, child elements and text content.
    /// (Nested in `XML` so it does not shadow Foundation's `XMLNode` on macOS.)
    public struct Node: Sendable, Equatable {
        public var name: String
        public var attributes: [String: String]
        public var children: [Node]
        public var text: String

        /// The first child with this name.
        public func child(_ name: String) -> Node? { children.first { $0.name == name } }
        /// All children with this name, in order.
        public func all(_ name: String) -> [Node] { children.filter { $0.name == name } }
        /// The text of the first child with this name.
        public func string(_ name: String) -> String? { child(name)?.text }
    }
}

public struct XMLParseError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var offset: Int
    public var description: String { "malformed XML at byte \(offset): \(message)" }
}

public enum XML {
    /// Parses a document and returns its root element.
    public static func parse(_ bytes: [UInt8]) throws(XMLParseError) -> XML.Node {
        var p = Parser(bytes: bytes)
        return try p.document()
    }

    public static func parse(_ string: String) throws(XMLParseError) -> XML.Node { try parse(Array(string.utf8)) }

    /// Escapes text for an element body or attribute value.
    public static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\r": out += "&#13;"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }
}

private struct Parser {
    let bytes: [UInt8]
    var i = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ m: String) -> XMLParseError { XMLParseError(message: m, offset: i) }

    mutating func document() throws(XMLParseError) -> XML.Node {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { i = 3 }
        try skipMisc()
        guard i < bytes.count, bytes[i] == UInt8(ascii: "<") else { throw fail("expected a root element") }
        let root = try element()
        try skipMisc()
        if i != bytes.count { throw fail("content after the root element") }
        return root
    }

    /// Skips whitespace, comments, processing instructions and a DOCTYPE outside the root.
    mutating func skipMisc() throws(XMLParseError) {
        while true {
            skipSpace()
            if has("<?") { try skipPast("?>") }
            else if has("<!--") { try skipPast("-->") }
            else if has("<!DOCTYPE") { try skipPast(">") }
            else { return }
        }
    }

    func has(_ s: String) -> Bool {
        let u = Array(s.utf8)
        return i + u.count <= bytes.count && Array(bytes[i..<i + u.count]) == u
    }

    mutating func skipPast(_ s: String) throws(XMLParseError) {
        let u = Array(s.utf8)
        while i + u.count <= bytes.count {
            if bytes[i] == u[0] && Array(bytes[i..<i + u.count]) == u { i += u.count; return }
            i += 1
        }
        throw fail("unterminated construct, expected \(s)")
    }

    mutating func skipSpace() {
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
    }

    mutating func name() throws(XMLParseError) -> String {
        let start = i
        while i < bytes.count {
            let c = bytes[i]
            if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == UInt8(ascii: ">") || c == UInt8(ascii: "/")
                || c == UInt8(ascii: "=") { break }
            i += 1
        }
        if start == i { throw fail("expected a name") }
        return String(decoding: bytes[start..<i], as: UTF8.self)
    }

    static func local(_ qname: String) -> String {
        if let colon = qname.lastIndex(of: ":") { return String(qname[qname.index(after: colon)...]) }
        return qname
    }

    mutating func element() throws(XMLParseError) -> XML.Node {
        i += 1  // "<"
        let qname = try name()
        var node = XML.Node(name: Parser.local(qname), attributes: [:], children: [], text: "")
        while true {
            skipSpace()
            guard i < bytes.count else { throw fail("unterminated start tag <\(qname)>") }
            if bytes[i] == UInt8(ascii: "/") {
                guard i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: ">") else { throw fail("expected />") }
                i += 2
                return node
            }
            if bytes[i] == UInt8(ascii: ">") { i += 1; break }
            let attr = try name()
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "=") else { throw fail("expected = after attribute \(attr)") }
            i += 1
            skipSpace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") || bytes[i] == UInt8(ascii: "'") else {
                throw fail("expected a quoted attribute value")
            }
            let quote = bytes[i]
            i += 1
            let start = i
            while i < bytes.count, bytes[i] != quote { i += 1 }
            guard i < bytes.count else { throw fail("unterminated attribute value") }
            node.attributes[Parser.local(attr)] = try decode(bytes[start..<i])
            i += 1
        }
        // Content.
        var text = [UInt8]()
        while true {
            guard i < bytes.count else { throw fail("unterminated element <\(qname)>") }
            if bytes[i] == UInt8(ascii: "<") {
                if has("</") {
                    i += 2
                    let end = try name()
                    guard end == qname else { throw fail("</\(end)> closes <\(qname)>") }
                    skipSpace()
                    guard i < bytes.count, bytes[i] == UInt8(ascii: ">") else { throw fail("expected >") }
                    i += 1
                    node.text = String(decoding: text, as: UTF8.self)
                    return node
                } else if has("<![CDATA[") {
                    i += 9
                    let start = i
                    try skipPast("]]>")
                    text += bytes[start..<(i - 3)]
                } else if has("<!--") {
                    try skipPast("-->")
                } else if has("<?") {
                    try skipPast("?>")
                } else {
                    node.children.append(try element())
                }
            } else {
                let start = i
                while i < bytes.count, bytes[i] != UInt8(ascii: "<") { i += 1 }
                text += Array(try decode(bytes[start..<i]).utf8)
            }
        }
    }

    func decode(_ raw: ArraySlice<UInt8>) throws(XMLParseError) -> String {
        guard raw.contains(UInt8(ascii: "&")) else { return String(decoding: raw, as: UTF8.self) }
        var out = [UInt8]()
        var j = raw.startIndex
        while j < raw.endIndex {
            let c = raw[j]
            if c != UInt8(ascii: "&") { out.append(c); j += 1; continue }
            guard let semi = raw[j...].firstIndex(of: UInt8(ascii: ";")), semi - j <= 12 else {
                throw XMLParseError(message: "unterminated entity", offset: j)
            }
            let ent = String(decoding: raw[(j + 1)..<semi], as: UTF8.self)
            switch ent {
            case "amp": out.append(UInt8(ascii: "&"))
            case "lt": out.append(UInt8(ascii: "<"))
            case "gt": out.append(UInt8(ascii: ">"))
            case "quot": out.append(UInt8(ascii: "\""))
            case "apos": out.append(UInt8(ascii: "'"))
            default:
                var scalar: Unicode.Scalar?
                if ent.hasPrefix("#x") || ent.hasPrefix("#X") {
                    scalar = UInt32(ent.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                } else if ent.hasPrefix("#") {
                    scalar = UInt32(ent.dropFirst(1)).flatMap(Unicode.Scalar.init)
                }
                guard let s = scalar else { throw XMLParseError(message: "unknown entity &\(ent);", offset: j) }
                out += Array(String(Character(s)).utf8)
            }
            j = semi + 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}
