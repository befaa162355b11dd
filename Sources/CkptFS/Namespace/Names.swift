// Name and key limits: what can be stored is checked when a name is made, never at upload.
//
// A file name is at most 255 bytes (NAME_MAX on Linux; the kernel's FUSE module lets up to 1,024 through, so
// the check is ours). An object key is at most 1,024 bytes of UTF-8 (S3 API reference, "Object key naming":
// "The name for a key is a sequence of Unicode characters whose UTF-8 encoding is at most 1,024 bytes long").
// A key includes the mount's prefix, and a directory's marker key its trailing "/". A call that would make a
// name or key over either limit fails with ENAMETOOLONG before anything is acknowledged: create, mknod,
// mkdir, and rename (also of a directory whose children's keys would grow past the limit). A lookup of such
// a name fails the same way (no such key can exist).
import CkptS3
import Foundation

// Keys and names are bytes (POSIX, S3), Swift's String is text: it compares and hashes canonically equivalent
// text as equal ("é" as one code point, and as "e" and a combining accent), and counts Characters (grapheme
// clusters), one of which can hold a "/" and the mark after it, or a prepended mark and the "/" after it.
// So keys from S3 are cut, compared and ordered by bytes (these helpers), the mount's tables are keyed by bytes
// (ByteKeys.swift), and a name must keep its "/" around it apart (`Namespace.validName`).
extension String {
    /// What follows `prefix` in this key, which starts with its bytes (a listing's key under its prefix),
    /// counted in bytes.
    func keySuffix(after prefix: String) -> String {
        String(decoding: utf8.dropFirst(prefix.utf8.count), as: UTF8.self)
    }

    /// This key without its last byte (a common prefix's "/").
    var droppingLastByte: String { String(decoding: utf8.dropLast(), as: UTF8.self) }

    /// Whether these are the same bytes (`==` says whether they are the same text).
    func sameBytes(_ other: String) -> Bool { utf8.count == other.utf8.count && utf8.elementsEqual(other.utf8) }

    /// Whether this key starts with the bytes of `prefix` (`hasPrefix` compares Characters: "cafe\u{301}/x" has
    /// the prefix "caf\u{e9}/", and "a/\u{301}" not "a/").
    func hasKeyPrefix(_ prefix: String) -> Bool { utf8.starts(with: prefix.utf8) }

    /// Whether this key ends with the bytes of `suffix`.
    func hasKeySuffix(_ suffix: String) -> Bool { utf8.count >= suffix.utf8.count && utf8.reversed().starts(with: suffix.utf8.reversed()) }

    /// Whether this key's last byte is "/" (a directory prefix; `hasSuffix("/")` is false when a prepended
    /// mark before the "/" makes one Character of both).
    var endsWithSlash: Bool { utf8.last == UInt8(ascii: "/") }

    /// Whether this key comes before `other` in S3's order, by bytes of UTF-8 (`<` compares text).
    func bytesPrecede(_ other: String) -> Bool { utf8.lexicographicallyPrecedes(other.utf8) }

    /// The first segment of this relative key with the "/" after it ("a/" of "a/b/c"), or all of it when it
    /// has no "/", cut at the byte.
    var firstKeySegment: String {
        guard let slash = utf8.firstIndex(of: UInt8(ascii: "/")) else { return self }
        return String(decoding: utf8[...slash], as: UTF8.self)
    }

    /// The prefixes of this key that end in "/" and are longer than `skip` bytes, shortest first ("a/b/" and
    /// "a/b/c/" of "a/b/c/d" past "a/"), cut at the byte.
    func keyPrefixes(after skip: Int = 0) -> [String] {
        var out: [String] = []
        var i = utf8.index(utf8.startIndex, offsetBy: min(skip, utf8.count))
        while let slash = utf8[i...].firstIndex(of: UInt8(ascii: "/")) {
            out.append(String(decoding: utf8[...slash], as: UTF8.self))
            i = utf8.index(after: slash)
        }
        return out
    }
}

extension Namespace {
    /// Longest name of one file or directory, in bytes of UTF-8 (NAME_MAX; `statfs` reports it).
    static let maxNameBytes = 255
    /// Longest S3 object key, in bytes of UTF-8 (S3 API reference, "Object key naming").
    static let maxKeyBytes = 1024

    /// Throws ENAMETOOLONG when `name` in the directory whose key prefix is `dirKey` could not be stored: the
    /// name is over `maxNameBytes`, or its key (a directory's marker key, with its "/") over `maxKeyBytes`.
    static func checkStorable(_ name: String, in dirKey: String, isDirectory: Bool) throws(FSError) {
        let n = name.utf8.count
        if n > Namespace.maxNameBytes {
            throw FSError(ENAMETOOLONG, "a name is at most \(Namespace.maxNameBytes) bytes; this one has \(n)")
        }
        let keyBytes = dirKey.utf8.count + n + (isDirectory ? 1 : 0)
        if keyBytes > Namespace.maxKeyBytes {
            throw FSError(ENAMETOOLONG, "an S3 key is at most \(Namespace.maxKeyBytes) bytes; \(dirKey + name) would have \(keyBytes)")
        }
    }

    /// Throws ENAMETOOLONG when moving the keys `keys` (all under the prefix `src`) to the prefix `dst` would
    /// make one of them longer than `maxKeyBytes`. Checked before a directory rename moves anything.
    static func checkMovable(_ keys: some Sequence<String>, from src: String, to dst: String) throws(FSError) {
        let growth = dst.utf8.count - src.utf8.count
        guard growth > 0, let longest = keys.max(by: { $0.utf8.count < $1.utf8.count }) else { return }
        let n = longest.utf8.count + growth
        if n > Namespace.maxKeyBytes {
            throw FSError(ENAMETOOLONG, "renaming \(src) to \(dst) would make \(longest) a key of \(n) bytes (at most \(Namespace.maxKeyBytes))")
        }
    }
}

extension FileSystem {
    /// Throws ENAMETOOLONG when renaming the directory prefix `src` to `dst` (both ending in "/") would make
    /// the key of something under it longer than `maxKeyBytes`: `objects` (its keys in S3) or a local file.
    func checkDirectoryMove(_ objects: [String], from src: String, to dst: String) throws(FSError) {
        try Namespace.checkMovable(objects, from: src, to: dst)
        try Namespace.checkMovable(writeBack.localFiles.byKey.withLock { $0.keys.filter { $0.hasKeyPrefix(src) } }, from: src, to: dst)
    }

    /// mknod, symlink and link: S3 has no such objects (EPERM), but a name that could never be stored is
    /// refused as such first, like any other new name.
    public func makeSpecial(parent: UInt64, name: String) throws(FSError) -> Never {
        let dir = try namespace.node(parent)
        guard dir.meta.isDirectory else { throw .notDirectory }
        try Namespace.checkStorable(name, in: dir.key, isDirectory: false)
        throw FSError(EPERM, "S3 has no special files or links")
    }
}
