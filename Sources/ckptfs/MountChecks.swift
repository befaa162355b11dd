// Checks made before mounting, each failing with the cause and the fix.
import Foundation

enum MountChecks {
    /// Mount points in /proc/self/mountinfo with their filesystem type.
    static func mounts() -> [(path: String, type: String)] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count > 7, let dash = f.firstIndex(of: "-"), dash + 1 < f.count else { return nil }
            return (unescape(String(f[4])), String(f[dash + 1]))
        }
    }

    /// mountinfo escapes space, tab, newline and backslash as \\ooo.
    static func unescape(_ s: String) -> String {
        var out = [UInt8]()
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "\\"), i + 3 < u.count, let v = UInt8(String(decoding: u[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(u[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func isMounted(_ path: String) -> Bool { mounts().contains { $0.path == path } }

    static func absolute(_ path: String) -> String {
        if let r = realpath(path, nil) {
            defer { free(r) }
            return String(cString: r)
        }
        return path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// The mount point must exist, be an empty directory, and not be mounted already.
    static func mountpoint(_ raw: String) throws(UserFacingFailure) -> String {
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
