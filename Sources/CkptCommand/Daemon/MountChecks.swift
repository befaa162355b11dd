// Checks made before mounting, each failing with the cause and the fix.
import CkptFUSE
import Foundation

enum MountChecks {
    /// Mount points in /proc/self/mountinfo with their filesystem type.
    static func mounts() -> [(path: String, type: String)] { FuseSession.mountTable().map { ($0.path, $0.type) } }

    static func isMounted(_ path: String) -> Bool { mounts().contains { $0.path == path } }

    /// `path` made absolute, with symbolic links resolved. A mount point is not resolved itself when its parent
    /// resolved and the last component appended name a mount: resolving it asks its filesystem (GETATTR),
    /// which a dead FUSE mount answers with ENOTCONN and a stuck one never answers (`stuckMount`).
    static func absolute(_ path: String) -> String {
        func real(_ p: String) -> String? {
            guard let r = realpath(p, nil) else { return nil }
            defer { free(r) }
            return String(cString: r)
        }
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        let ns = trimmed as NSString
        let parent = ns.deletingLastPathComponent
        var viaParent: String?
        if !ns.lastPathComponent.isEmpty, ns.lastPathComponent != "..", ns.lastPathComponent != ".", ns.lastPathComponent != "/",
           let p = real(parent.isEmpty ? "." : parent) {
            viaParent = (p == "/" ? "" : p) + "/" + ns.lastPathComponent
        }
        if let viaParent, isMounted(viaParent) { return viaParent }
        if let r = real(path) { return r }
        return viaParent ?? (path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path)
    }

    /// A ckptfs mount at `path` (absolute) whose daemon was killed but cannot exit: a thread of it waits in
    /// the kernel (for another FUSE filesystem's answer, or for a directory lock a request to this mount
    /// holds: outside testing round 10) and keeps /dev/fuse open, so the connection stays up with nobody
    /// reading it, and every request to the mount waits forever: statvfs, `umount`, the processes using it.
    /// Found without a request to the mount: the daemon's pid from its control socket (whose listening
    /// descriptor the stuck thread keeps too), its state from /proc (a zombie: its main thread has exited).
    /// Returns the mount's device ("0:MINOR") and the daemon's pid, or nil.
    static func stuckMount(_ path: String) -> (device: String, pid: pid_t)? {
        guard let m = FuseSession.mountTable().last(where: { $0.path == path }), m.type == "fuse.ckptfs",
              let pid = Control.daemonPID(path),
              let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")"),
              stat[stat.index(after: close)...].split(separator: " ").first == "Z" else { return nil }
        return (m.device, pid)
    }

    /// Frees a mount `stuckMount` found: aborts its FUSE connection, then detaches it (lazily: processes may
    /// still have files or their working directory there). Nothing is lost that was acknowledged: it is in
    /// its cache directory's journal, which the next mount with that cache directory uploads.
    static func freeStuckMount(_ path: String, _ stuck: (device: String, pid: pid_t)) throws(UserFacingFailure) {
        if let problem = FuseSession.abortConnection(device: stuck.device) {
            throw UserFacingFailure(message: "the daemon of \(path) (process \(stuck.pid)) was killed but cannot exit (a thread of "
                + "it waits in the kernel), and aborting its FUSE connection failed: \(problem)\n  fix: as root, "
                + "echo 1 > /sys/fs/fuse/connections/\(stuck.device.split(separator: ":").last ?? "N")/abort; then ckptfs unmount \(path)")
        }
        if let problem = FuseSession.unmount(path, lazy: true) {
            throw UserFacingFailure(message: "aborted the FUSE connection of \(path), whose daemon (process \(stuck.pid)) was killed "
                + "but could not exit, and detaching it failed: \(problem)")
        }
        FileHandle.standardError.write(Data(("ckptfs: note: the daemon of \(path) (process \(stuck.pid)) was killed but could not "
            + "exit (a thread of it waits in the kernel), so every request to the mount waited; aborted its FUSE connection "
            + "and detached the mount. Files it had not uploaded stay in its cache directory's journal; the next mount "
            + "with that cache directory uploads them.\n").utf8))
    }

    /// The filesystem type of a FUSE mount at `path` whose daemon is gone ("Transport endpoint is not
    /// connected"), or nil if `path` is not such a mount. Asked with statvfs (statfs), which the kernel always sends to
    /// the daemon (stat may be answered from its attribute cache for a while after the daemon died).
    static func deadFuseMount(_ path: String) -> String? {
        let abs = absolute(path)
        guard let m = mounts().last(where: { $0.path == abs }), m.type == "fuse" || m.type.hasPrefix("fuse.") else { return nil }
        var v = statvfs()
        guard statvfs(abs, &v) != 0, errno == ENOTCONN || errno == ECONNABORTED else { return nil }
        return m.type
    }

    /// The mount point must exist, be an empty directory, and not be mounted already. A dead ckptfs mount
    /// there (its daemon was killed) is detached first: nothing is lost by that, since what it had not
    /// uploaded is in its cache directory's journal, and the next mount with that cache directory uploads it.
    static func mountpoint(_ raw: String) throws(UserFacingFailure) -> String {
        let resolved = absolute(raw)
        if let stuck = stuckMount(resolved) { try freeStuckMount(resolved, stuck) }
        if let type = deadFuseMount(raw) {
            let path = absolute(raw)
            guard type == "fuse.ckptfs" else {
                throw UserFacingFailure(message: "\(path) is a dead \(type) mount (its daemon is gone: Transport endpoint is "
                    + "not connected); unmount it first: fusermount3 -u \(path)")
            }
            if let problem = FuseSession.unmount(path, lazy: true) {
                throw UserFacingFailure(message: "\(path) is a dead ckptfs mount (its daemon is gone) and detaching it failed: "
                    + "\(problem); run ckptfs unmount \(path)")
            }
            FileHandle.standardError.write(Data(("ckptfs: note: \(path) was a dead ckptfs mount (its daemon is gone); "
                + "detached it. Files it had not uploaded are uploaded by a mount with its cache directory.\n").utf8))
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: raw, isDirectory: &isDir) else {
            throw UserFacingFailure(message: "the mount point \(raw) does not exist; create it first: mkdir -p \(raw)")
        }
        guard isDir.boolValue else { throw UserFacingFailure(message: "the mount point \(raw) is not a directory; choose a directory") }
        let path = absolute(raw)
        if isMounted(path) {
            throw UserFacingFailure(message: "\(path) is already a mount point; unmount it first (ckptfs unmount \(path)) or choose another directory")
        }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        guard entries.isEmpty else {
            throw UserFacingFailure(message: "the mount point \(path) is not empty (\(entries.count) entries); mount on an empty directory")
        }
        return path
    }

    /// The cache directory must be a directory this user can write, created 0700 (with its parents) when
    /// missing. Checked before the log file in it is opened and before the bucket is asked, so a failure names
    /// the cache directory, the reason (errno) and the fix.
    static func cacheDirectory(_ path: String) throws(UserFacingFailure) {
        let fix = "choose a directory this user (uid \(geteuid())) can write with --cache-dir DIR"
        func failure(_ what: String, _ err: Int32) -> UserFacingFailure {
            UserFacingFailure(message: "\(what) the cache directory \(path): \(String(cString: strerror(err)))\n  fix: \(fix)")
        }
        var st = stat()
        if stat(path, &st) != 0 {
            guard errno == ENOENT || errno == ENOTDIR else { throw failure("cannot use", errno) }
            // mkdir -p, component by component, to report the errno of the part that failed.
            var prefix = ""
            for part in path.split(separator: "/") {
                prefix += "/" + part
                var pst = stat()
                if stat(prefix, &pst) == 0 {
                    guard (pst.st_mode & S_IFMT) == S_IFDIR else {
                        throw UserFacingFailure(message: "cannot create the cache directory \(path): \(prefix) is a file, not a directory"
                            + "\n  fix: \(fix)")
                    }
                    continue
                }
                guard mkdir(prefix, 0o700) == 0 || errno == EEXIST else { throw failure("cannot create", errno) }
            }
            guard stat(path, &st) == 0 else { throw failure("cannot use", errno) }
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw UserFacingFailure(message: "the cache directory \(path) is not a directory\n  fix: \(fix), or remove \(path)")
        }
        guard access(path, R_OK | W_OK | X_OK) == 0 else { throw failure("cannot write in", errno) }
    }

    /// FUSE must be usable: /dev/fuse, and fusermount3 for users other than root.
    static func fuseAvailable() throws(UserFacingFailure) {
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw UserFacingFailure(message: "/dev/fuse is missing or not accessible; load the module (modprobe fuse), "
                + "or in a container pass --device /dev/fuse --cap-add SYS_ADMIN")
        }
        if getuid() != 0 && findExecutable("fusermount3") == nil {
            throw UserFacingFailure(message: "fusermount3 is not installed; install it: apt-get install fuse3")
        }
    }

    static func findExecutable(_ name: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(name)"
            if access(p, X_OK) == 0 { return p }
        }
        for p in ["/usr/bin/\(name)", "/bin/\(name)", "/usr/local/bin/\(name)"] where access(p, X_OK) == 0 { return p }
        return nil
    }

    /// Parses sizes like 20GiB, 512MiB, 1.5G, 4096.
    static func parseSize(_ s: String) -> Int64? {
        let t = s.trimmingCharacters(in: .whitespaces)
        let units: [(String, Double)] = [("TiB", 1099511627776), ("GiB", 1073741824), ("MiB", 1048576), ("KiB", 1024),
                                         ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3),
                                         ("T", 1099511627776), ("G", 1073741824), ("M", 1048576), ("K", 1024), ("B", 1)]
        for (suffix, mult) in units where t.hasSuffix(suffix) {
            guard let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v > 0 else { return nil }
            return Int64(v * mult)
        }
        return Int64(t).flatMap { $0 > 0 ? $0 : nil }
    }

    /// Half the free space of the file system holding `dir`, between 1 GiB and 100 GiB.
    static func defaultCacheSize(for dir: String) -> Int64 {
        var probe = dir
        while !FileManager.default.fileExists(atPath: probe) && probe != "/" { probe = (probe as NSString).deletingLastPathComponent }
        var v = statvfs()
        guard statvfs(probe, &v) == 0 else { return 10 << 30 }
        let free = Int64(v.f_bavail) * Int64(v.f_frsize)
        return min(100 << 30, max(1 << 30, free / 2))
    }
}
