// The staging area: staged versions as files under the cache directory, written with O_DIRECT where it pays.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension FileSystem {
    var stagingDir: String { cache.directory + "/staging" }

    func checkWritable() throws(FSError) {
        if options.readOnly { throw FSError(EROFS, "mounted read-only") }
    }

    /// A new, empty staged version of `key`, or a copy of `source`.
    func newVersion(key: String, copying source: StagedVersion? = nil, mtime: Date = Date()) throws(FSError) -> StagedVersion {
        let id = nextVersion.wrappingAdd(1, ordering: .relaxed).newValue
        let path = "\(stagingDir)/\(id)"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FSError(errno, "cannot create \(path): \(String(cString: strerror(errno)))") }
        let v = StagedVersion(id: id, path: path, fd: fd, key: key, size: 0, mtime: mtime, writable: true)
        if let source {
            // Only the bytes already here are copied; blocks still in S3 stay to be fetched from the same base.
            let (size, mtime, base, missing, limit, modified) = source.state.withLock {
                ($0.size, $0.mtime, $0.base, $0.missing, $0.baseLimit, $0.modified)
            }
            try copyFile(from: source.fd, to: fd, size: size)
            let expect = expectation(after: source)
            v.state.withLock { s in
                s.size = size
                s.mtime = mtime
                s.sum = nil
                s.base = base
                s.missing = missing
                s.baseLimit = limit
                s.modified = modified
                s.expect = expect
            }
        }
        return v
    }

    /// Reads the first `size` bytes of `fd` in 1 MiB pieces, handing each to `body` with its offset.
    func forEachChunk(of fd: Int32, size: Int64, _ body: (UnsafeRawBufferPointer, Int64) throws(FSError) -> Void) throws(FSError) {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        var off: Int64 = 0
        while off < size {
            let n = pread(fd, buf.baseAddress, min(buf.count, Int(size - off)), off_t(off))
            guard n > 0 else { throw FSError(EIO, "reading a staged file: \(n < 0 ? String(cString: strerror(errno)) : "it is shorter than recorded")") }
            try body(UnsafeRawBufferPointer(rebasing: buf[0..<n]), off)
            off += Int64(n)
        }
    }

    func copyFile(from src: Int32, to dst: Int32, size: Int64) throws(FSError) {
        try forEachChunk(of: src, size: size) { (chunk, off) throws(FSError) in try writeLocal(dst, chunk, at: off) }
        if ftruncate(dst, off_t(size)) != 0 { throw FSError(errno, "ftruncate") }
    }

    /// Writes to a staged file. Large page-aligned writes (the kernel's write-back of a checkpoint stream) go
    /// with O_DIRECT: no second copy into the page cache, and nothing left to flush at close(). Others, and
    /// every write where the filesystem refuses O_DIRECT (tmpfs), go through the page cache; the kernel keeps
    /// the two coherent.
    func writeStaged(_ v: StagedVersion, _ data: UnsafeRawBufferPointer, at offset: Int64) throws(FSError) {
        let page = 4096
        guard v.directFd >= 0, v.direct.load(ordering: .relaxed), offset % Int64(page) == 0,
              data.count % page == 0, data.count >= 64 << 10 else {
            return try writeLocal(v.fd, data, at: offset)
        }
        // The request's bytes follow its header in libfuse's buffer: copy them to an aligned one (reused: a
        // fresh megabyte per write would cost more in page faults than the copy to the page cache saves).
        let buf = alignedBuffers.take(data.count)
        defer { alignedBuffers.give(buf) }
        let chunk = UnsafeMutableRawBufferPointer(rebasing: buf[0..<data.count])
        chunk.copyMemory(from: data)
        do throws(FSError) {
            try writeLocal(v.directFd, UnsafeRawBufferPointer(chunk), at: offset)
        } catch where error.errno == EINVAL {
            v.direct.store(false, ordering: .relaxed)
            try writeLocal(v.fd, data, at: offset)
        }
    }

    /// pwrite that, when the disk is full, evicts clean cache blocks and tries again before giving up with
    /// ENOSPC. Dirty data is never evicted.
    func writeLocal(_ fd: Int32, _ data: UnsafeRawBufferPointer, at offset: Int64) throws(FSError) {
        var done = 0
        var attempts = 0
        while done < data.count {
            let n = pwrite(fd, data.baseAddress! + done, data.count - done, off_t(offset + Int64(done)))
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == ENOSPC || errno == EDQUOT) && attempts < 5 {
                // Evict clean blocks; space of files just unlinked may also take a moment to come back.
                if attempts == 0 { cache.makeRoom(Int64(data.count - done) + (64 << 20)) } else { usleep(100_000) }
                attempts += 1
                continue
            }
            if n <= 0 {
                let e = n < 0 ? errno : EIO
                throw FSError(e, "writing to the staging area \(stagingDir): \(String(cString: strerror(e)))")
            }
            done += n
        }
    }
}
