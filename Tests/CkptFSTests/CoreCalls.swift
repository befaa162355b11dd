// Calls into the core the way the FUSE adapter makes them, for tests: directory entries collected from a
// replier, writes finished when they have to wait for blocks.
import CkptFS
import Foundation

/// A directory entry as a test sees it.
struct ListedEntry: Equatable {
    var name: String
    var ino: UInt64
    var isDirectory: Bool
    var attributes: Attributes?
    var nextOffset: Int64
}

/// Collects readdir entries (no size limit beyond the count the core is asked for).
struct EntryCollector: DirectoryReplier {
    var plus = false
    var entries: [ListedEntry] = []
    func fits(_ name: String) -> Bool { true }
    mutating func add(name: String, ino: UInt64, isDirectory: Bool, attributes: Attributes?, nextOffset: Int64) {
        entries.append(ListedEntry(name: name, ino: ino, isDirectory: isDirectory, attributes: attributes, nextOffset: nextOffset))
    }
}

extension FileSystem {
    /// One readdir (`plus`: readdirplus) of at most `limit` entries from `offset`.
    func entryList(handle: UInt64, offset: Int64, limit: Int = 512, plus: Bool = false) async throws(FSError) -> [ListedEntry] {
        var c = EntryCollector(plus: plus)
        try await readdir(handle: handle, offset: offset, limit: limit, into: &c)
        return c.entries
    }

    /// A write, waiting for the blocks it covers in part when it must.
    @discardableResult
    func writeWaiting(handle: UInt64, offset: Int64, data: [UInt8]) async throws(FSError) -> Int {
        let r = data.withUnsafeBytes { p in Result { () throws(FSError) in try write(handle: handle, offset: offset, data: p) } }
        switch try r.get() {
        case .done(let n): return n
        case .later(let rest): return try await rest.finish()
        }
    }
}
