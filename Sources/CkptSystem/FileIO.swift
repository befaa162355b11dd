// File I/O for the modules that touch local files (the cache, the transport, the core): swift-system's
// `FileDescriptor` and `Errno` (its calls retry EINTR, and `writeAll(toAbsoluteOffset:_:)` retries short
// writes without copying the buffer), plus what it lacks here: a positional read that fills its buffer,
// preallocation that keeps the size, and the glibc constants Swift cannot import (from the CGlibc shim).
import CGlibc
import Glibc
import SystemPackage

extension FileDescriptor {
    /// Reads `buffer.count` bytes starting at byte `offset` of the file (pread), retrying EINTR and short
    /// reads, without moving the descriptor's offset.
    /// - Returns: the bytes read: `buffer.count`, or fewer only when the file ends first (0 at or past the end).
    /// - Throws: the `Errno` of the pread that failed (bytes read before it are in `buffer` but not counted).
    public func readAll(fromAbsoluteOffset offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n: Int
            do {
                n = try read(fromAbsoluteOffset: offset + Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch {
                throw error as? Errno ?? .ioError
            }
            if n == 0 { break }
            done += n
        }
        return done
    }
}

extension FileDescriptor {
    /// Allocates disk blocks for bytes `offset..<offset + length` of the file without changing its size
    /// (fallocate(2) with FALLOC_FL_KEEP_SIZE, from the CGlibc shim): writes there later need no new blocks, so
    /// a full disk cannot fail them. Blocks already allocated stay; a truncate frees those past the new size.
    /// - Throws: the `Errno` of fallocate: `.noSpace` when the disk has not that much free (some filesystems
    ///   then keep what they allocated), `.notSupported` where the filesystem cannot preallocate.
    public func preallocate(from offset: Int64, length: Int64) throws(Errno) {
        while ckpt_glibc_fallocate_keep_size(rawValue, offset, length) != 0 {
            let e = Errno(rawValue: Glibc.errno)
            if e != .interrupted { throw e }
        }
    }
}

extension FileDescriptor.OpenOptions {
    /// O_DIRECT: reads and writes bypass the page cache. Buffers, offsets and lengths must be aligned (4096
    /// bytes is safe); opening fails with `Errno.invalidArgument` where the filesystem refuses it (tmpfs).
    /// glibc defines it only under _GNU_SOURCE and its value differs by architecture, hence the shim.
    public static var direct: FileDescriptor.OpenOptions { .init(rawValue: ckpt_glibc_O_DIRECT) }
}

/// Has glibc's malloc map every allocation of at least `bytes` on its own and unmap it when freed (mallopt
/// M_MMAP_THRESHOLD, from the CGlibc shim). Setting it also stops glibc from raising the threshold by itself
/// each time such a block is freed, after which blocks that size come from the heaps of its arenas, where
/// freed ones stay and fragment: a long-running process's resident memory then creeps up with its peaks.
/// - Returns: whether glibc took the setting.
@discardableResult
public func setMallocMmapThreshold(_ bytes: Int) -> Bool { ckpt_glibc_set_mmap_threshold(Int32(bytes)) == 1 }

/// posix_spawnattr_setflags flag POSIX_SPAWN_SETSID (glibc, from the CGlibc shim): the child starts a new
/// session, so it is not tied to the spawning process's terminal.
public let posixSpawnSetSID: Int16 = ckpt_glibc_POSIX_SPAWN_SETSID

/// Another process (not a child) whose exit can be waited for without polling: a pidfd (pidfd_open(2), Linux
/// 5.3, from the CGlibc shim), readable once the process has exited.
public struct ProcessExit: ~Copyable {
    private let fd: Int32

    /// Refers to process `pid`; nil when it is gone already (ESRCH) or the kernel has no pidfd_open (ENOSYS).
    public init?(pid: Int32) {
        let fd = ckpt_glibc_pidfd_open(pid)
        guard fd >= 0 else { return nil }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Waits until the process exits or `timeout` passes; returns whether it exited.
    public func wait(timeout: Duration) -> Bool {
        let ms = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let r = poll(&p, 1, ms)
            if r >= 0 { return r == 1 }
            if errno != EINTR { return false }
        }
    }
}
