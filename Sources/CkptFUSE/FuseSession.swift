// Mounting: create the libfuse session, mount it, run the multi-threaded loop on a dedicated thread
// (never on Swift's cooperative pool), and unmount when the loop ends: on `ckptfs unmount` /
// `fusermount3 -u`, or after SIGINT, SIGTERM or SIGHUP. A signal does not end the loop at once: the mount
// keeps serving while `drain` runs (queued uploads go to S3, a save begun in a trainer's own SIGTERM
// handler is accepted and uploaded), then changes are refused with EROFS, and only then is the mount
// point detached — so nothing written meanwhile lands in the directory underneath.
import CFuse
import Foundation
import Logging

public struct FuseError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

public enum FuseSession {
    /// Mounts `adapter` at `mountpoint` with mount options `options` (`-o` list), calls `onMounted` once
    /// the mount is live, and returns when it has been unmounted. On SIGINT, SIGTERM or SIGHUP (the signal
    /// number is passed) it runs `drain` while the mount still serves, then refuses changes
    /// (`adapter.gate`), then unmounts.
    public static func run(adapter: FuseAdapter, mountpoint: String, options: [String], threads: Int = 16,
                           drain: @escaping @Sendable (Int32) async -> Void = { _ in },
                           onMounted: @escaping @Sendable () -> Void) async throws(FuseError) {
        let result: Result<Void, FuseError> = await withCheckedContinuation { cont in
            let t = Thread {
                cont.resume(returning: runBlocking(adapter: adapter, mountpoint: mountpoint, options: options,
                                                   threads: threads, drain: drain, onMounted: onMounted))
            }
            t.name = "ckptfs-fuse"
            t.start()
        }
        try result.get()
    }

    /// Unmounts `mountpoint`: with `fusermount3 -u` (`-z`: lazily, detaching even while files are open), or as
    /// root with umount2 when fusermount3 is not there. Returns nil on success, else what went wrong.
    @discardableResult
    public static func unmount(_ mountpoint: String, lazy: Bool) -> String? {
        if lazy, getuid() == 0, umount2(mountpoint, Int32(MNT_DETACH)) == 0 { return nil }
        var pid: pid_t = 0
        let words = ["fusermount3", "-u"] + (lazy ? ["-z"] : []) + [mountpoint]
        let argv = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        if posix_spawnp(&pid, "fusermount3", nil, nil, argv, environ) == 0 {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            return status == 0 ? nil : "fusermount3 -u \(mountpoint) failed (is a file under it still open?)"
        }
        if getuid() == 0, umount2(mountpoint, lazy ? Int32(MNT_DETACH) : 0) == 0 { return nil }
        return "cannot unmount \(mountpoint): fusermount3 is not installed (apt-get install fuse3)"
    }

    /// Aborts the FUSE connection of the mount whose device is `device` ("0:MINOR", from /proc/self/mountinfo;
    /// the connection's number is MINOR) by writing its `abort` file under /sys/fs/fuse/connections (the
    /// fusectl filesystem, mounted there first when it is not, as systemd does at boot). Every request waiting
    /// on the connection then fails with ECONNABORTED and new ones with ENOTCONN, as when its daemon exits:
    /// the way out when the daemon was killed but cannot exit (Documentation/filesystems/fuse.rst, "Aborting
    /// a filesystem connection"). Needs root. Returns nil on success, else what went wrong.
    public static func abortConnection(device: String) -> String? {
        guard let minor = device.split(separator: ":").last.flatMap({ Int($0) }) else { return "not a device number: \(device)" }
        let root = "/sys/fs/fuse/connections"
        if access("\(root)/\(minor)", F_OK) != 0 {
            _ = Glibc.mount("fusectl", root, "fusectl", 0, nil)
        }
        let fd = open("\(root)/\(minor)/abort", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            return "cannot open \(root)/\(minor)/abort: \(String(cString: strerror(errno)))"
                + (getuid() == 0 ? "" : " (aborting a FUSE connection needs root)")
        }
        defer { close(fd) }
        let one = Array("1".utf8)
        guard one.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == one.count else {
            return "cannot write \(root)/\(minor)/abort: \(String(cString: strerror(errno)))"
        }
        return nil
    }

    /// The kernel's read-ahead window for the mount (KiB), which is also the size of the read requests a
    /// sequential reader's data comes in (up to `max_pages`, 1 MiB, from `max_write` in the INIT reply): the
    /// largest power of two up to one cache block (1 MiB) whose reply, with libfuse's margin of a few pages,
    /// fits in one pipe of `pipeMaxSize` bytes (/proc/sys/fs/pipe-max-size; libfuse splices a reply from
    /// the cache block file through a pipe, and copies it through a buffer malloc'd per reply when it does
    /// not fit): 512 KiB with the default 1 MiB pipes. A FUSE mount starts at the kernel's default of
    /// 128 KiB, and the INIT reply can only lower it, so each 1 MiB block was read in 8 requests (each
    /// opening and checking the block file); now 2.
    static func readAheadKiB(pipeMaxSize: Int) -> Int {
        var kib = 1024
        while kib > 128 && kib * 1024 + 4 * 4096 > pipeMaxSize { kib /= 2 }
        return kib
    }

    /// `readAheadKiB` for this machine's pipe-max-size (1 MiB when it cannot be read).
    static var readAheadKiB: Int {
        let text = try? String(contentsOfFile: "/proc/sys/fs/pipe-max-size", encoding: .utf8)
        return readAheadKiB(pipeMaxSize: text.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 1 << 20)
    }

    /// Sets the read-ahead window of the filesystem mounted at `mountpoint` to `kib` KiB by writing
    /// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`, the mount's device found in /proc/self/mountinfo (not by
    /// stat: that would wait for INIT, which the loop has not read yet). Needs root (sysfs is writable by
    /// root only); returns false, changing nothing, when it cannot.
    static func setReadAhead(_ mountpoint: String, kib: Int) -> Bool {
        guard let device = mountDevice(mountpoint) else { return false }
        let fd = open("/sys/class/bdi/\(device)/read_ahead_kb", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let text = Array("\(kib)\n".utf8)
        return text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == text.count
    }

    /// "MAJOR:MINOR" of the newest mount at `mountpoint` (its real path); nil when none.
    static func mountDevice(_ mountpoint: String) -> String? {
        guard let real = realpath(mountpoint, nil) else { return nil }
        let path = String(cString: real)
        free(real)
        return mountTable().last { $0.path == path }?.device
    }

    /// One mount, as a line of /proc/self/mountinfo gives it.
    public struct MountEntry: Sendable {
        /// "MAJOR:MINOR" of its device.
        public let device: String
        /// The mount point, its octal escapes decoded.
        public let path: String
        /// The filesystem type ("fuse.ckptfs", "ext4", ...).
        public let type: String
    }

    /// The mounts in /proc/self/mountinfo, in its order: a later entry at the same path is a newer mount over
    /// it. Fields: id, parent, MAJOR:MINOR, root, mount point, options, optional fields up to "-", then the
    /// type. Empty when the file cannot be read.
    public static func mountTable() -> [MountEntry] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count > 7, let dash = f.firstIndex(of: "-"), dash + 1 < f.count else { return nil }
            return MountEntry(device: String(f[2]), path: unescapeMountField(f[4]), type: String(f[dash + 1]))
        }
    }

    /// A mountinfo field with its octal escapes (`\040` for a space; space, tab, newline and backslash are
    /// escaped) decoded.
    static func unescapeMountField(_ field: Substring) -> String {
        var out: [UInt8] = []
        let b = Array(field.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func runBlocking(adapter: FuseAdapter, mountpoint: String, options: [String], threads: Int,
                            drain: @escaping @Sendable (Int32) async -> Void, onMounted: () -> Void) -> Result<Void, FuseError> {
        var ops = FuseAdapter.operations()
        let words: [String] = ["ckptfs", "-o", options.joined(separator: ",")]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var cargv = argv
        return cargv.withUnsafeMutableBufferPointer { buf -> Result<Void, FuseError> in
            var args = fuse_args(argc: 3, argv: buf.baseAddress, allocated: 0)
            let userdata = Unmanaged.passRetained(adapter).toOpaque()
            defer { Unmanaged<FuseAdapter>.fromOpaque(userdata).release() }
            guard let se = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata) else {
                return .failure(FuseError(message: "libfuse rejected the mount options \(options.joined(separator: ","))"))
            }
            defer { fuse_session_destroy(se) }
            adapter.notifier.attach(se)
            defer { adapter.notifier.detach() }
            // SIGINT, SIGTERM and SIGHUP: the handler writes the signal number to a pipe; a watcher thread
            // drains while the loop keeps serving, closes the gate, ends the loop and unmounts (lazily),
            // which wakes every thread blocked reading /dev/fuse.
            var notify: [Int32] = [-1, -1]
            guard pipe(&notify) == 0 else { return .failure(FuseError(message: "pipe: \(String(cString: strerror(errno)))")) }
            guard ckpt_fuse_install_exit_signals(notify[1]) == 0 else {
                close(notify[0])
                close(notify[1])
                return .failure(FuseError(message: "could not install signal handlers"))
            }
            // The watcher may still be draining when the loop ends by itself (`fusermount3 -u` meanwhile):
            // the session is destroyed only after it is done with it.
            let watcherDone = DispatchSemaphore(value: 0)
            defer {
                ckpt_fuse_remove_exit_signals()
                close(notify[1])  // ends the watcher if no signal came
                watcherDone.wait()
            }
            let watchFD = notify[0]
            let session = UnsafeSendable(se)
            let watcher = Thread {
                defer { watcherDone.signal() }
                var sig: UInt8 = 0
                let n = read(watchFD, &sig, 1)
                guard n == 1 else {
                    close(watchFD)
                    return
                }
                let drained = DispatchSemaphore(value: 0)
                Task {
                    await drain(Int32(sig))
                    drained.signal()
                }
                drained.wait()
                close(watchFD)
                adapter.gate.close()
                fuse_session_exit(session.value)
                unmount(mountpoint, lazy: true)
            }
            watcher.name = "ckptfs-signals"
            watcher.start()
            guard fuse_session_mount(se, mountpoint) == 0 else {
                return .failure(FuseError(message: "mounting at \(mountpoint) failed (see the message above; as a user, "
                    + "fusermount3 must be installed and /dev/fuse accessible)"))
            }
            // Before the loop reads INIT (which can only lower the window: the kernel takes the smaller of
            // the two): reads of 512 KiB instead of 128 KiB.
            if !setReadAhead(mountpoint, kib: readAheadKiB) {
                adapter.logger.debug("cannot set the kernel's read-ahead window (needs root); reads stay at 128 KiB",
                                     metadata: ["fuse.mountpoint": "\(mountpoint)"])
            }
            // Before the loop reads INIT: lets the kernel map files that reads open with direct_io. If it
            // fails (out of memory), the kernel is not told and no open uses direct I/O.
            _ = ckpt_fuse_negotiate_direct_io_mmap(se)
            onMounted()
            let rc = ckpt_fuse_session_loop_mt(se, 0, -1, Int32(threads))
            fuse_session_unmount(se)
            // A loop ended by a signal reports the signal: that is a requested, clean exit.
            if rc == 0 || rc == SIGINT || rc == SIGTERM || rc == SIGHUP { return .success(()) }
            return .failure(FuseError(message: "the FUSE session ended with error \(rc)"))
        }
    }
}
