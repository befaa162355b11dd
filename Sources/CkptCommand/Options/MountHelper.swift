import Foundation

/// `ckptfs` invoked by mount(8) or umount(8) rather than by a user, translated into the command it means.
///
/// - `mount -t fuse.ckptfs s3://bucket/prefix /mnt/ckpt -o cache_dir=/nvme/c,allow_other` (or the /etc/fstab line
///   `s3://bucket/prefix /mnt/ckpt fuse.ckptfs _netdev,cache_dir=/nvme/c,allow_other 0 0`) runs either
///   `/sbin/mount.fuse.ckptfs SOURCE MOUNTPOINT -o OPTIONS` (a link to ckptfs, when installed) or libfuse's
///   `mount.fuse3`, which runs `ckptfs SOURCE MOUNTPOINT -o OPTIONS` from the default PATH. Both become
///   `ckptfs mount SOURCE MOUNTPOINT --OPTION ...`.
/// - `umount /mnt/ckpt` runs `/sbin/umount.fuse.ckptfs MOUNTPOINT [-flags]` when that link is installed and
///   mount(8) recorded the mount in /run/mount/utab (it does when the options hold one of its own, such as
///   `_netdev` or `x-systemd.*`; otherwise umount(8) only sees the type "fuse" and detaches at once, and the
///   daemon drains after). That becomes `ckptfs unmount MOUNTPOINT`: uploads drain before the mount point goes.
///
/// Each `-o` key is a long option of `ckptfs mount` with `_` or `-` between words (`cache_dir=DIR` is
/// `--cache-dir DIR`, `read_only` or `ro` is `--read-only`); mount(8)'s own options (`_netdev`, `nofail`,
/// `defaults`, `rw`, `x-systemd.*`, ...) are ignored. An unknown key fails, naming it and the known ones.
enum MountHelper {
    /// What an invocation means.
    enum Meaning: Equatable {
        /// Run these arguments (without the program name).
        case run([String])
        /// mount(8)'s `-f` (fake): do everything but the mount, which for a helper is nothing.
        case fake
    }

    /// `-o` keys of `ckptfs mount` that take a value (the long option's name).
    static let valued: [String] = [
        "cache-dir", "cache-size", "metadata-ttl", "read-part-size", "max-read-ahead", "direct-reads", "mtime", "fsync",
        "drain-timeout", "upload-delay", "uid", "gid", "file-mode", "dir-mode", "log-file", "log-level", "log-format",
        "metrics-address", "endpoint-url", "region", "profile", "request-timeout", "check-timeout", "max-dirty",
        "stale-if-error", "record", "small-file-get",
    ]
    /// `-o` keys of `ckptfs mount` that are flags.
    static let flags: [String] = [
        "read-only", "allow-other", "conditional-writes", "no-conditional-writes", "upload-while-writing",
        "no-upload-while-writing", "keep-every-version", "force-path-style", "no-sign-request", "immutable",
        "cache-saves", "no-cache-saves",
    ]
    /// mount(8)'s and the kernel's generic options, which mean nothing to ckptfs (FUSE mounts are always nodev,
    /// and ckptfs sets its own fsname, subtype and default_permissions).
    static let ignored: Set<String> = [
        "defaults", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "dev", "nodev",
        "suid", "nosuid", "exec", "noexec", "async", "sync", "dirsync", "atime", "noatime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "diratime", "nodiratime", "lazytime", "nolazytime", "silent", "loud", "iversion",
        "noiversion", "mand", "nomand", "default_permissions", "fsname", "subtype", "helper", "uhelper",
    ]

    /// The meaning of `argv` (the program name first), or nil when it is an ordinary `ckptfs` command line.
    static func translate(_ argv: [String]) throws(UserFacingFailure) -> Meaning? {
        guard let program = argv.first else { return nil }
        let name = (program as NSString).lastPathComponent
        let rest = Array(argv.dropFirst())
        if name.hasPrefix("umount.") { return try unmount(rest) }
        if name.hasPrefix("mount.") || rest.first?.hasPrefix("s3://") == true { return try mount(rest) }
        return nil
    }

    /// `umount.fuse.ckptfs MOUNTPOINT [-n] [-l] [-f] [-v] [-r] ...`: the flags are umount(8)'s; ckptfs drains and unmounts.
    static func unmount(_ args: [String]) throws(UserFacingFailure) -> Meaning {
        let targets = args.filter { !$0.hasPrefix("-") }
        guard targets.count == 1 else {
            throw UserFacingFailure(message: "umount helper: expected one mount point, got \(targets.count) (\(args.joined(separator: " ")))")
        }
        return .run(["unmount", targets[0]])
    }

    /// `SOURCE MOUNTPOINT [-o OPTIONS]... [-n] [-s] [-v] [-f] [-t TYPE]`, the mount helper convention.
    static func mount(_ args: [String]) throws(UserFacingFailure) -> Meaning {
        var positional: [String] = []
        var options: [String] = []
        var fake = false
        var i = 0
        while i < args.count {
            let a = args[i]
            switch a {
            case "-o", "-t":
                guard i + 1 < args.count else { throw UserFacingFailure(message: "mount helper: \(a) needs a value") }
                if a == "-o" { options.append(args[i + 1]) }
                i += 1
            case "-n", "-s", "-v", "-i": break  // no mtab, sloppy, verbose, no further helpers: nothing to do here
            case "-f": fake = true
            case "-N":
                throw UserFacingFailure(message: "mount helper: -N (another mount namespace) is not supported; run the mount in that namespace")
            default:
                if a.hasPrefix("-o") && a.count > 2 {
                    options.append(String(a.dropFirst(2)))
                } else if a.hasPrefix("-") {
                    throw UserFacingFailure(message: "mount helper: unknown flag \(a)")
                } else {
                    positional.append(a)
                }
            }
            i += 1
        }
        guard positional.count == 2 else {
            throw UserFacingFailure(message: "mount helper: expected SOURCE and MOUNTPOINT (s3://bucket/prefix /mnt/ckpt), got "
                + "\(positional.count) argument(s): \(positional.joined(separator: " "))")
        }
        if fake { return .fake }
        var out = ["mount", positional[0], positional[1]]
        for list in options {
            for item in list.split(separator: ",", omittingEmptySubsequences: true) {
                out += try option(String(item))
            }
        }
        return .run(out)
    }

    /// The command-line arguments of one `-o` item (`key` or `key=value`); none for the options ignored.
    static func option(_ item: String) throws(UserFacingFailure) -> [String] {
        let key: String
        let value: String?
        if let eq = item.firstIndex(of: "=") {
            key = String(item[..<eq])
            value = String(item[item.index(after: eq)...])
        } else {
            key = item
            value = nil
        }
        if ignored.contains(key) || key.hasPrefix("x-") || key == "comment" { return [] }
        if key == "ro" { return ["--read-only"] }
        let long = key.replacingOccurrences(of: "_", with: "-")
        if valued.contains(long) {
            guard let value, !value.isEmpty else {
                throw UserFacingFailure(message: "mount option '\(key)' needs a value: \(key)=VALUE (see ckptfs mount --help for --\(long))")
            }
            return ["--\(long)", value]
        }
        if flags.contains(long) {
            guard value == nil else {
                throw UserFacingFailure(message: "mount option '\(key)' takes no value: write \(key) alone")
            }
            return ["--\(long)"]
        }
        throw UserFacingFailure(message: "unknown mount option '\(key)'; ckptfs takes "
            + (valued.map { "\($0.replacingOccurrences(of: "-", with: "_"))=VALUE" } + flags.map { $0.replacingOccurrences(of: "-", with: "_") } + ["ro"])
                .joined(separator: ", ")
            + ", and ignores mount(8)'s generic options (_netdev, nofail, defaults, rw, x-systemd.*, ...)")
    }
}
