import CkptSystem
import Foundation

/// Starts the daemon of a mount: `ckptfs mount ... --foreground --ready-fd 3` in a new session, with stdin,
/// stdout and stderr on /dev/null until it opens its log, and waits until it reports on fd 3 that the mount is
/// live ("OK") or why it failed ("ERR message", newlines as \u{1}).
struct DaemonLauncher {
    let options: MountOptions

    /// Points stdout and stderr of the daemon at its log file (created 0600, appended to).
    static func redirectOutput(to logPath: String, cacheDir: String) throws(UserFacingFailure) {
        try? FileManager.default.createDirectory(atPath: cacheDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw UserFacingFailure(message: "cannot open the log file \(logPath): \(String(cString: strerror(errno)))\n"
                + "  fix: name a file this user can write with --log-file FILE (by default it is ckptfs.log in the cache directory)")
        }
        dup2(fd, 1)
        dup2(fd, 2)
        close(fd)
    }

    /// Starts the daemon and returns once the mount is live; throws what the daemon reported otherwise.
    func spawn(logPath: String, cacheDir: String) throws(UserFacingFailure) {
        // Both ends close-on-exec: the daemon gets the write end as fd 3 only (dup2 clears the flag on the copy)
        // and inherits neither original. The read end is not closed by a file action: when pipe() returned 3 for
        // it, closing it in the child after the dup2 closed the fd 3 just made, and the daemon then wrote its
        // "OK" into, and closed, whatever it had opened as fd 3 by then (its epoll descriptor, the cache lock).
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw UserFacingFailure(message: "pipe: \(String(cString: strerror(errno)))") }
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let (r, w) = (pipeFDs[0], pipeFDs[1])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // fd 3 first: the write end may be 0, 1 or 2 (a caller that closed them), which the opens replace.
        posix_spawn_file_actions_adddup2(&actions, w, 3)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, posixSpawnSetSID)  // a new session: not tied to the caller's terminal
        let exe = "/proc/self/exe"
        // The program's own path first (not the name mount(8) used), then what this invocation means, so the
        // daemon shows as `/usr/local/bin/ckptfs mount s3://... /mnt/... --foreground ...`.
        var args = [MountChecks.absolute(exe)] + CkptfsCommand.arguments
        args += ["--foreground", "--ready-fd", "3"]
        if options.logFile == nil { args += ["--log-file", logPath] }
        if cacheDir != options.cacheDir { args += ["--cache-dir", cacheDir] }
        let argv = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attr, argv, environ)
        close(w)
        guard rc == 0 else {
            close(r)
            throw UserFacingFailure(message: "could not start the ckptfs daemon: \(String(cString: strerror(rc)))")
        }
        // Wait for "OK" or "ERR message" (or the daemon dying: EOF).
        var line = [UInt8]()
        var byte: UInt8 = 0
        while read(r, &byte, 1) == 1 && byte != UInt8(ascii: "\n") { line.append(byte) }
        close(r)
        let text = String(decoding: line, as: UTF8.self)
        if text == "OK" { return }
        if text.hasPrefix("ERR ") {
            throw UserFacingFailure(message: String(text.dropFirst(4)).replacingOccurrences(of: "\u{1}", with: "\n"))
        }
        // Closed without an answer: it died. How (a signal says a crash or the OOM killer) is worth saying.
        var status: Int32 = 0
        var how = ""
        for _ in 0..<20 {
            if waitpid(pid, &status, WNOHANG) == pid {
                let signal = status & 0x7f
                how = signal != 0 ? " (killed by signal \(signal))" : " (exit status \((status >> 8) & 0xff))"
                break
            }
            usleep(100_000)
        }
        throw UserFacingFailure(message: "the ckptfs daemon exited before the mount was live\(how); see \(logPath)")
    }
}
