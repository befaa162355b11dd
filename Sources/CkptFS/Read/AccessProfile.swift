// Access profiles: which blocks a run read, in the order it first read them (`ckptfs mount --record FILE`), so
// that `ckptfs preload --replay FILE` can fill the next run's cache with exactly those blocks, in that order,
// before the run starts (Preloader.replay).
//
// The file is JSON lines: a header `{"ckptfsAccessProfile":1,"bucket":B,"blockSize":1048576}`, then one line per
// block the first time a read asks for it: `{"key":K,"etag":E,"block":I}` (I counts blocks of `blockSize` bytes
// from the object's start). Reads of files with local changes and read-ahead are not recorded: only the blocks
// the kernel asked for. Lines are written in batches of 64 KiB and when the mount ends; a daemon killed with
// SIGKILL loses the last batch.
import CkptCache
import CkptSystem
import Foundation
import Synchronization
import SystemPackage

/// One block an access profile recorded.
public struct AccessProfileEntry: Codable, Sendable, Equatable {
    public var key: String
    /// The version that was read; a replay reads the same block of the version S3 has then.
    public var etag: String
    public var block: Int64

    public init(key: String, etag: String, block: Int64) {
        self.key = key
        self.etag = etag
        self.block = block
    }
}

/// An access profile as read back: where it was recorded and its blocks in order.
public struct AccessProfile: Sendable {
    struct Header: Codable {
        var ckptfsAccessProfile: Int
        var bucket: String
        var blockSize: Int64
    }

    public var bucket: String
    public var blockSize: Int64
    public var entries: [AccessProfileEntry]

    /// Reads the profile at `path`. Throws a message naming the file and what is wrong with it.
    public static func read(_ path: String) throws(FSError) -> AccessProfile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FSError(ENOENT, "cannot read the access profile \(path): \(String(cString: strerror(errno)))")
        }
        var lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true).makeIterator()
        guard let first = lines.next(), let header = try? JSONDecoder().decode(Header.self, from: Data(first)),
              header.ckptfsAccessProfile == 1 else {
            throw FSError(EINVAL, "\(path) is not a ckptfs access profile (made by ckptfs mount --record FILE)")
        }
        var entries: [AccessProfileEntry] = []
        let decoder = JSONDecoder()
        var n = 1
        while let line = lines.next() {
            n += 1
            guard let e = try? decoder.decode(AccessProfileEntry.self, from: Data(line)) else {
                // A torn last line (the daemon was killed while writing) ends the profile.
                break
            }
            entries.append(e)
        }
        return AccessProfile(bucket: header.bucket, blockSize: header.blockSize, entries: entries)
    }
}

/// Records the blocks reads ask for, the first time each is asked for, into an access profile file.
final class AccessRecorder: Sendable {
    let path: String
    let blockSize: Int64
    private let state: Mutex<(seen: Set<BlockKey>, buffer: [UInt8], file: FileDescriptor?)>
    static let batch = 64 << 10

    /// Creates (or truncates) the profile at `path` (mode 0600) and writes its header.
    init(path: String, bucket: String, blockSize: Int64) throws(FSError) {
        self.path = path
        self.blockSize = blockSize
        let file: FileDescriptor
        do {
            file = try FileDescriptor.open(path, .writeOnly, options: [.create, .truncate, .closeOnExec], permissions: .ownerReadWrite)
        } catch {
            throw FSError(EIO, "cannot create the access profile \(path): \(error)")
        }
        let encoder = AccessRecorder.encoder()
        var header = try! encoder.encode(AccessProfile.Header(ckptfsAccessProfile: 1, bucket: bucket, blockSize: blockSize))
        header.append(UInt8(ascii: "\n"))
        state = Mutex(([], Array(header), file))
    }

    /// A read of [offset, end) of `o`: records each of its blocks not recorded yet.
    func note(_ o: PinnedObject, bucket: String, offset: Int64, end: Int64) {
        guard end > offset else { return }
        let encoder = AccessRecorder.encoder()
        state.withLock { s in
            for b in (offset / blockSize)...((end - 1) / blockSize) {
                guard s.seen.insert(BlockKey(bucket: bucket, key: o.key, etag: o.etag, index: b)).inserted else { continue }
                s.buffer += (try? encoder.encode(AccessProfileEntry(key: o.key, etag: o.etag, block: b))).map { Array($0) } ?? []
                s.buffer.append(UInt8(ascii: "\n"))
            }
            // Written under the lock, so batches land in order (a page-cache write of 64 KiB).
            if s.buffer.count >= AccessRecorder.batch { AccessRecorder.write(&s) }
        }
    }

    /// Keys sorted and slashes as they are, so profiles compare line by line.
    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    private static func write(_ s: inout (seen: Set<BlockKey>, buffer: [UInt8], file: FileDescriptor?)) {
        defer { s.buffer = [] }
        guard let f = s.file else { return }
        if (try? s.buffer.withUnsafeBytes { try f.writeAll($0) }) == nil {
            try? f.close()
            s.file = nil
        }
    }

    /// Writes what is buffered (before the mount ends).
    func flush() { state.withLock { AccessRecorder.write(&$0) } }
}
