// The one place where the model tests call the filesystem core. Every operation here does what the kernel and
// the FUSE adapter would do for one system call, by path: walk the path with lookups, call the core, reply with
// an errno. When the core's facade changes (open returning a struct, write returning .done/.later, readdir
// filling a replier), only this file changes.
import CkptCache
@testable import CkptFS
import CkptS3
import Foundation
import Logging

/// A failed operation: the errno the kernel would return, and the core's message.
struct DriverError: Error, CustomStringConvertible {
    var errno: Int32
    var message: String

    init(_ e: FSError) {
        errno = e.errno
        message = e.message
    }

    var description: String { "\(ErrnoName.of(errno))\(message.isEmpty ? "" : ": " + message)" }
}

/// An open file as the kernel keeps it: the core's handle and the inode it was opened on.
struct DriverHandle: Sendable, Hashable {
    var fh: UInt64
    var ino: UInt64
}

/// Names of the errnos the tests use, for messages and printed test code.
enum ErrnoName {
    static let names: [Int32: String] = [
        ENOENT: "ENOENT", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", ENOTEMPTY: "ENOTEMPTY", EINVAL: "EINVAL",
        EIO: "EIO", ESTALE: "ESTALE", EBADF: "EBADF", EACCES: "EACCES", EROFS: "EROFS", EBUSY: "EBUSY", EAGAIN: "EAGAIN",
        ENAMETOOLONG: "ENAMETOOLONG", EPERM: "EPERM", ENOSPC: "ENOSPC",
    ]
    static func of(_ e: Int32) -> String { names[e] ?? "errno \(e)" }
}

/// The filesystem core with the kernel's side of each system call.
final class CoreDriver: Sendable {
    let fs: FileSystem

    /// Options for model runs: small blocks and parts, so files of a few KiB span several of each.
    struct Setup {
        var blockSize = 4096
        var partSize: Int64 = 16 << 10
        var metadataTTL: Duration = .zero
        var durableFsync = true
        var uploadDelay: Duration = .zero
        /// Bound of the block cache, bytes.
        var cacheCapacity: Int64 = 1 << 30
        /// FSOptions.keepEveryVersion (CKPTFS_MODEL_KEEP_EVERY_VERSION=1 runs the property test with it).
        var keepEveryVersion = ProcessInfo.processInfo.environment["CKPTFS_MODEL_KEEP_EVERY_VERSION"] != nil
        /// Any other options (the semantics tests: conditional writes off, a read-only mount, modes, owners).
        var adjust: ((inout FSOptions) -> Void)?
    }

    /// A filesystem over `client` with its cache, staging area and journal in `directory` (as a new mount of
    /// that cache directory would be).
    init(directory: String, client: any ObjectClient, bucket: String, prefix: String = "", setup: Setup = Setup()) throws {
        var o = FSOptions()
        o.metadataTTL = setup.metadataTTL
        o.partSize = setup.partSize
        o.durableFsync = setup.durableFsync
        o.uploadDelay = setup.uploadDelay
        o.keepEveryVersion = setup.keepEveryVersion
        o.requestSize = Int64(setup.blockSize) * 4
        o.maxReadAhead = Int64(setup.blockSize) * 16
        setup.adjust?(&o)
        let cache = try BlockCache(directory: directory, capacity: setup.cacheCapacity, blockSize: setup.blockSize)
        // Thousands of runs inject thousands of faults: the core's warnings about them are noise here
        // (CKPTFS_MODEL_LOG=1 keeps them).
        var logger = Logger(label: "ckptfs.fs")
        if ProcessInfo.processInfo.environment["CKPTFS_MODEL_LOG"] == nil { logger.logLevel = .critical }
        do { fs = try FileSystem(client: client, bucket: bucket, prefix: prefix, cache: cache, options: o, logger: logger) } catch {
            cache.unlock()
            throw error
        }
    }

    /// Queues again what an earlier mount of the same cache directory acknowledged. Returns the paths requeued.
    func recover() async throws -> [String] {
        try await fs.recover().requeued
    }

    /// Stops the background work and lets go of the cache directory without draining (a crash, when the client
    /// was cut first).
    func stop() { fs.shutdown() }

    /// `ckptfs flush`: waits until every acknowledged change is in S3. Returns the paths that are not, with why.
    func flushAll(timeout: Duration) async -> [(path: String, reason: String)] {
        await fs.flushAll(under: "", timeout: timeout)
    }

    /// Dirty files and pending deletes as `ckptfs status` shows them.
    var status: WriteBackStatus { fs.writeBackStatus }

    // MARK: Paths

    /// Walks to the parent of `path` ("a/b/c" → the inode of "a/b" and "c") and runs `body` with it, holding the
    /// lookup references of the directories on the way (as the kernel's dentries do) until `body` returns.
    private func inParent<T>(_ path: String,
                             _ body: (_ parent: UInt64, _ name: String) async -> Result<T, DriverError>) async -> Result<T, DriverError> {
        var parts = path.split(separator: "/").map(String.init)
        guard let name = parts.popLast() else { return .failure(DriverError(FSError(EINVAL, "the root has no parent"))) }
        var ino = FileSystem.rootIno
        var held: [UInt64] = []
        defer { for i in held { fs.forget(ino: i, count: 1) } }
        for p in parts {
            do throws(FSError) {
                let a = try await fs.lookup(parent: ino, name: p)
                held.append(a.ino)
                guard a.isDirectory else { return .failure(DriverError(.notDirectory)) }
                ino = a.ino
            } catch { return .failure(DriverError(error)) }
        }
        return await body(ino, name)
    }

    /// Looks `path` up and runs `body` with its attributes, holding the lookup reference until `body` returns
    /// (`keep`: `body` takes it over, as an open handle does).
    private func withNode<T>(_ path: String, _ body: (Attributes) async -> (Result<T, DriverError>, keep: Bool)) async -> Result<T, DriverError> {
        if path.isEmpty {
            do throws(FSError) {
                return await body(try await fs.getattr(ino: FileSystem.rootIno)).0
            } catch { return .failure(DriverError(error)) }
        }
        return await inParent(path) { parent, name in
            let a: Attributes
            do throws(FSError) { a = try await fs.lookup(parent: parent, name: name) } catch { return .failure(DriverError(error)) }
            let (r, keep) = await body(a)
            if !keep { fs.forget(ino: a.ino, count: 1) }
            return r
        }
    }

    private func run<T>(_ body: () async throws(FSError) -> T) async -> Result<T, DriverError> {
        do throws(FSError) { return .success(try await body()) } catch { return .failure(DriverError(error)) }
    }

    // MARK: System calls

    enum Kind: Equatable, CustomStringConvertible {
        case file(size: Int64)
        case directory

        var description: String {
            switch self {
            case .file(let n): return "file of \(n) bytes"
            case .directory: return "directory"
            }
        }
    }

    /// stat(2).
    func stat(_ path: String) async -> Result<Kind, DriverError> {
        await withNode(path) { a in
            // The kernel asks getattr for an inode it has looked up once its attributes expire (TTL 0: always).
            let r = await run { () async throws(FSError) -> Kind in
                let g = try await fs.getattr(ino: a.ino)
                return g.isDirectory ? .directory : .file(size: g.size)
            }
            return (r, false)
        }
    }

    /// The entries of a directory (without "." and ".."): name → whether it is a directory.
    func list(_ path: String) async -> Result<[String: Bool], DriverError> {
        await withNode(path) { a in
            guard a.isDirectory else { return (.failure(DriverError(.notDirectory)), false) }
            let r = await run { () async throws(FSError) -> [String: Bool] in
                let h = try fs.opendir(ino: a.ino)
                defer { fs.releasedir(handle: h) }
                var out: [String: Bool] = [:]
                var offset: Int64 = 0
                while true {
                    let page = try await fs.entryList(handle: h, offset: offset, limit: 7)
                    guard let last = page.last else { break }
                    for e in page where e.name != "." && e.name != ".." {
                        if out[e.name] != nil { throw FSError(EIO, "readdir gave \(e.name) twice") }
                        out[e.name] = e.isDirectory
                    }
                    offset = last.nextOffset
                }
                return out
            }
            return (r, false)
        }
    }

    /// How open(2) opens.
    struct OpenMode: Equatable {
        var write = false
        var create = false
        var truncate = false
        var exclusive = false

        var flags: Int32 {
            var f = write ? O_RDWR : O_RDONLY
            if truncate { f |= O_TRUNC }
            if create { f |= O_CREAT }
            if exclusive { f |= O_EXCL }
            return f
        }
    }

    /// open(2), with O_CREAT handled as the kernel does: lookup, then open or create.
    func open(_ path: String, _ mode: OpenMode) async -> Result<DriverHandle, DriverError> {
        for attempt in 0..<2 {
            let r: Result<DriverHandle?, DriverError> = await inParent(path) { parent, name in
                let found: Attributes
                do throws(FSError) {
                    found = try await fs.lookup(parent: parent, name: name)
                } catch where error.errno == ENOENT && mode.create {
                    return await run { () async throws(FSError) -> DriverHandle? in
                        let (attr, fh) = try fs.create(parent: parent, name: name, flags: mode.flags)
                        return DriverHandle(fh: fh, ino: attr.ino)  // the handle keeps create's lookup reference
                    }
                } catch { return .failure(DriverError(error)) }
                if mode.create && mode.exclusive {
                    fs.forget(ino: found.ino, count: 1)
                    return .failure(DriverError(FSError(EEXIST)))
                }
                if found.isDirectory {
                    fs.forget(ino: found.ino, count: 1)
                    return .failure(DriverError(.isDirectory))
                }
                do throws(FSError) {
                    let fh = try await fs.open(ino: found.ino, flags: mode.flags).handle
                    return .success(DriverHandle(fh: fh, ino: found.ino))  // the handle keeps the lookup reference
                } catch where error.errno == ESTALE && attempt == 0 {
                    // The inode stands for an older version of the object: the kernel looks the path up again, once.
                    fs.forget(ino: found.ino, count: 1)
                    return .success(nil)
                } catch {
                    fs.forget(ino: found.ino, count: 1)
                    return .failure(DriverError(error))
                }
            }
            switch r {
            case .failure(let e): return .failure(e)
            case .success(let h?): return .success(h)
            case .success(nil): continue
            }
        }
        return .failure(DriverError(FSError(ESTALE, "open failed with ESTALE twice")))
    }

    /// pread(2) of up to `count` bytes at `offset`.
    func read(_ h: DriverHandle, at offset: Int64, count: Int) async -> Result<[UInt8], DriverError> {
        await run { () async throws(FSError) in
            var out: [UInt8] = []
            for segment in try await fs.read(handle: h.fh, offset: offset, size: count) {
                switch segment {
                case .memory(let block, let off, let n):
                    out += block.bytes[off..<off + n]
                case .file(let fd, let off, let n):
                    // The segment owns its descriptor (closed when the segment goes).
                    var buf = [UInt8](repeating: 0, count: n)
                    let got = buf.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, n, off_t(off)) }
                    guard got == n else { throw FSError(EIO, "a read segment's file is shorter than the segment") }
                    out += buf
                }
            }
            return out
        }
    }

    /// Reads `h` from `offset` to the end of the file, in reads of `chunk` bytes.
    func readToEnd(_ h: DriverHandle, from offset: Int64 = 0, chunk: Int = 5000) async -> Result<[UInt8], DriverError> {
        var out: [UInt8] = []
        var at = offset
        while true {
            switch await read(h, at: at, count: chunk) {
            case .failure(let e): return .failure(e)
            case .success(let bytes):
                out += bytes
                at += Int64(bytes.count)
                if bytes.count < chunk { return .success(out) }
            }
        }
    }

    /// The whole contents of the file at `path` (open, read, close).
    func readFile(_ path: String) async -> Result<[UInt8], DriverError> {
        switch await open(path, OpenMode()) {
        case .failure(let e): return .failure(e)
        case .success(let h):
            let r = await readToEnd(h)
            await close(h)
            return r
        }
    }

    /// pwrite(2) of all of `data`, as the adapter does it: a write that needs blocks still in S3 (`.later`)
    /// waits for them.
    func write(_ h: DriverHandle, at offset: Int64, _ data: [UInt8]) async -> Result<Void, DriverError> {
        await run { () async throws(FSError) in
            let n = try await fs.writeWaiting(handle: h.fh, offset: offset, data: data)
            if n != data.count { throw FSError(EIO, "short write: \(n) of \(data.count)") }
        }
    }

    /// truncate(2).
    func truncate(_ path: String, to size: Int64) async -> Result<Void, DriverError> {
        await withNode(path) { a in
            if a.isDirectory { return (.failure(DriverError(.isDirectory)), false) }
            return (await run { () async throws(FSError) in _ = try await fs.setattr(ino: a.ino, size: size, mtime: nil) }, false)
        }
    }

    /// ftruncate(2) through an open file.
    func truncate(_ h: DriverHandle, to size: Int64) async -> Result<Void, DriverError> {
        await run { () async throws(FSError) in _ = try await fs.setattr(ino: h.ino, size: size, mtime: nil) }
    }

    /// fstat(2) through an open file: its size.
    func size(_ h: DriverHandle) async -> Result<Int64, DriverError> {
        await run { () async throws(FSError) in try await fs.getattr(ino: h.ino).size }
    }

    /// close(2) of one descriptor of a file still open through another (a dup): the kernel's flush only.
    /// As the FUSE adapter does it: on the calling thread when it can be, else in a task.
    func flush(_ h: DriverHandle) async -> Result<Void, DriverError> {
        do throws(FSError) {
            if try !fs.flushNow(handle: h.fh) { try await fs.flush(handle: h.fh) }
            return .success(())
        } catch { return .failure(DriverError(error)) }
    }

    /// close(2) of the last descriptor: flush, then release. Returns flush's result (close's).
    @discardableResult
    func close(_ h: DriverHandle) async -> Result<Void, DriverError> {
        let r = await flush(h)
        fs.release(handle: h.fh)
        fs.forget(ino: h.ino, count: 1)
        return r
    }

    /// fsync(2).
    func fsync(_ h: DriverHandle) async -> Result<Void, DriverError> {
        await run { () async throws(FSError) in try await fs.fsync(handle: h.fh) }
    }

    /// unlink(2).
    func unlink(_ path: String) async -> Result<Void, DriverError> {
        await inParent(path) { parent, name in
            // The kernel looks the name up first: unlink of a missing name or a directory never reaches the
            // filesystem.
            switch await kind(parent, name) {
            case .failure(let e): return .failure(e)
            case .success(true): return .failure(DriverError(.isDirectory))
            case .success(false): return await run { () async throws(FSError) in try await fs.unlink(parent: parent, name: name) }
            }
        }
    }

    /// Whether `name` in `parent` is a directory (the kernel's lookup before unlink, rmdir, mkdir, rename).
    private func kind(_ parent: UInt64, _ name: String) async -> Result<Bool, DriverError> {
        await run { () async throws(FSError) -> Bool in
            let a = try await fs.lookup(parent: parent, name: name)
            fs.forget(ino: a.ino, count: 1)
            return a.isDirectory
        }
    }

    /// mkdir(2).
    func mkdir(_ path: String) async -> Result<Void, DriverError> {
        await inParent(path) { parent, name in
            // The kernel looks the name up first: mkdir of an existing name never reaches the filesystem.
            switch await kind(parent, name) {
            case .success: return .failure(DriverError(FSError(EEXIST)))
            case .failure(let e) where e.errno != ENOENT: return .failure(e)
            case .failure: break
            }
            return await run { () async throws(FSError) in
                let a = try await fs.mkdir(parent: parent, name: name)
                fs.forget(ino: a.ino, count: 1)
            }
        }
    }

    /// rmdir(2).
    func rmdir(_ path: String) async -> Result<Void, DriverError> {
        await inParent(path) { parent, name in
            switch await kind(parent, name) {
            case .failure(let e): return .failure(e)
            case .success(false): return .failure(DriverError(.notDirectory))
            case .success(true): return await run { () async throws(FSError) in try await fs.rmdir(parent: parent, name: name) }
            }
        }
    }

    /// rename(2), or renameat2(2) with RENAME_NOREPLACE.
    func rename(_ from: String, _ to: String, noReplace: Bool) async -> Result<Void, DriverError> {
        await inParent(from) { srcParent, srcName in
            await inParent(to) { dstParent, dstName in
                // The kernel's checks before the filesystem sees a rename: the source exists; a directory does
                // not move into itself; file and directory do not replace each other; RENAME_NOREPLACE.
                let srcIsDir: Bool
                switch await kind(srcParent, srcName) {
                case .failure(let e): return .failure(e)
                case .success(let d): srcIsDir = d
                }
                if srcIsDir && (to + "/").hasPrefix(from + "/") && to != from { return .failure(DriverError(FSError(EINVAL))) }
                switch await kind(dstParent, dstName) {
                case .success(let dstIsDir):
                    if noReplace { return .failure(DriverError(FSError(EEXIST))) }
                    if srcIsDir && !dstIsDir { return .failure(DriverError(.notDirectory)) }
                    if !srcIsDir && dstIsDir { return .failure(DriverError(.isDirectory)) }
                case .failure(let e) where e.errno != ENOENT: return .failure(e)
                case .failure: break
                }
                if from == to { return .success(()) }  // the same name: nothing to do
                return await run { () async throws(FSError) in
                    try await fs.rename(parent: srcParent, name: srcName, newParent: dstParent, newName: dstName,
                                        flags: noReplace ? FileSystem.renameNoReplace : 0)
                }
            }
        }
    }
}
