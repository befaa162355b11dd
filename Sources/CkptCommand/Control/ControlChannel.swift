// The control channel between the CLI (`ckptfs status`, `flush`, `unmount`) and a running mount: a Unix
// socket named after the mountpoint. One request per connection: a line of JSON in, a line of JSON out.
import CkptDigest
import Foundation

enum Control {
    /// The directory of this user's control sockets: /run/ckptfs for root; `$XDG_RUNTIME_DIR/ckptfs` when set
    /// (systemd makes that directory 0700 for its user); else /tmp/ckptfs-UID. Anyone can create a name in /tmp
    /// first, so both ends check the directory with `checkPrivate` before they trust anything in it.
    static func socketDirectory() -> String {
        if geteuid() == 0 { return "/run/ckptfs" }
        if let x = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], !x.isEmpty { return x + "/ckptfs" }
        return "/tmp/ckptfs-\(geteuid())"
    }

    /// Where the socket of the mount at `mountpoint` (absolute) lives.
    static func socketPath(for mountpoint: String) -> String {
        "\(socketDirectory())/\(Digest.sha256(mountpoint).hexString.prefix(20)).sock"
    }

    /// What a socket directory or socket not owned by the caller is refused with.
    static func notMine(_ what: String, _ path: String, owner: uid_t) -> UserFacingFailure {
        UserFacingFailure(message: "the control \(what) \(path) is owned by uid \(owner), not by you (uid \(geteuid())): someone "
            + "else made it, so a ckptfs daemon behind it cannot be trusted; refusing to use it\n"
            + "  fix: remove it (as root or its owner: rm -r \(path)) and mount again, or set XDG_RUNTIME_DIR to your own "
            + "private runtime directory (/run/user/\(geteuid())) for both the mount and this command")
    }

    /// Checks that `dir` is a real directory (not a symbolic link) owned by the caller. With `create` (the
    /// daemon), makes it 0700 first when missing and takes away group and other access when it has any.
    static func checkPrivate(_ dir: String, create: Bool) throws(UserFacingFailure) {
        if create && mkdir(dir, 0o700) != 0 && errno != EEXIST {
            throw UserFacingFailure(message: "cannot create the control socket directory \(dir): \(String(cString: strerror(errno)))\n"
                + "  fix: make its parent writable, or set XDG_RUNTIME_DIR to a private directory of yours")
        }
        var st = stat()
        guard lstat(dir, &st) == 0 else {
            throw UserFacingFailure(message: "the control socket directory \(dir) is missing (\(String(cString: strerror(errno)))); "
                + "is a ckptfs mount running as this user, started with the same XDG_RUNTIME_DIR?")
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw UserFacingFailure(message: "the control socket directory \(dir) is not a directory (a symbolic link or a file, "
                + "owned by uid \(st.st_uid)); refusing to use it\n  fix: remove it (rm \(dir)) and mount again")
        }
        guard st.st_uid == geteuid() else { throw notMine("socket directory", dir, owner: st.st_uid) }
        if create && (st.st_mode & 0o077) != 0 { chmod(dir, 0o700) }
    }

    /// The process at the other end of the connected Unix socket `fd` (SO_PEERCRED: the credentials the peer
    /// had when it called connect() or listen()).
    static func peer(_ fd: Int32) -> (pid: pid_t, uid: uid_t)? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Linux ABI); glibc declares it only under
        // _GNU_SOURCE, so Swift's Glibc module does not see it.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, Int(len) == MemoryLayout.size(ofValue: cred) else { return nil }
        return (cred.pid, cred.uid)
    }

    /// The uid of the process at the other end of the connected Unix socket `fd` (`peer`).
    static func peerUID(_ fd: Int32) -> uid_t? { peer(fd)?.uid }

    /// The process id of the daemon serving `mountpoint`: the peer of a connection to its control socket,
    /// after the same trust checks as every call. Nil when it cannot be reached.
    static func daemonPID(_ mountpoint: String) -> pid_t? {
        guard let fd = try? connect(mountpoint) else { return nil }
        defer { close(fd) }
        return peer(fd).flatMap { $0.pid > 0 ? $0.pid : nil }
    }

    /// A peer the control channel trusts: the same uid as this process, or root.
    static func trusted(_ uid: uid_t?) -> Bool { uid == geteuid() || uid == 0 }

    static func sockaddr(_ path: String) -> sockaddr_un? {
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: a.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return a
    }

    /// Connects to the control socket of the mount at `mountpoint` and checks that the daemon behind it is one
    /// this user may trust; returns the connected socket (the caller closes it).
    static func connect(_ mountpoint: String) throws(UserFacingFailure) -> Int32 {
        let path = socketPath(for: mountpoint)
        guard var addr = sockaddr(path) else { throw UserFacingFailure(message: "socket path too long: \(path)") }
        // Someone else's directory or socket could hold a fake daemon that answers "all durable".
        try checkPrivate((path as NSString).deletingLastPathComponent, create: false)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw UserFacingFailure(message: "\(path) is not a socket; refusing to use it\n  fix: remove it (rm \(path)) and mount again")
            }
            guard st.st_uid == geteuid() else { throw notMine("socket", path, owner: st.st_uid) }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UserFacingFailure(message: "socket: \(String(cString: strerror(errno)))") }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw UserFacingFailure(message: "cannot reach the ckptfs daemon of \(mountpoint) (\(path): "
                + "\(reason)); is it a ckptfs mount started by this user?")
        }
        let peer = peerUID(fd)
        guard trusted(peer) else {
            close(fd)
            throw UserFacingFailure(message: "the process behind the control socket \(path) runs as uid "
                + "\(peer.map { String($0) } ?? "unknown"), not as you (uid \(geteuid())) or root, so it is not your ckptfs daemon; "
                + "refusing to trust its answer\n  fix: remove the socket (as root or its owner: rm \(path)) and mount again")
        }
        return fd
    }

    /// Writes `request` as one line to the connected socket `fd`.
    static func send(_ request: Request, to fd: Int32) {
        var line = try! JSONEncoder().encode(request)
        line.append(UInt8(ascii: "\n"))
        line.withUnsafeBytes { b in
            var off = 0
            while off < b.count {
                let n = Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }

    /// Sends one request to the mount at `mountpoint` and returns the reply line. While no reply has come,
    /// `whileWaiting` is called every `interval` (a display timer: the reply itself wakes the wait).
    static func call(_ mountpoint: String, _ request: Request, every interval: Duration? = nil,
                     whileWaiting: () -> Void = {}) throws(UserFacingFailure) -> Data {
        let fd = try connect(mountpoint)
        defer { close(fd) }
        send(request, to: fd)
        var out = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let interval {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let r = poll(&p, 1, Int32(interval / .milliseconds(1)))
                if r == 0 {
                    whileWaiting()
                    continue
                }
                if r < 0 && errno == EINTR { continue }
            }
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        guard !out.isEmpty else { throw UserFacingFailure(message: "the ckptfs daemon of \(mountpoint) closed the connection without answering; see its log") }
        if let e = try? JSONDecoder().decode(ErrorReply.self, from: out) {
            throw UserFacingFailure(message: "the ckptfs daemon of \(mountpoint) refused the request: \(e.error)")
        }
        return out
    }

    /// Asks the mount at `mountpoint` to wait until every dirty file under `relative` is durable in S3 (at most
    /// `timeout` seconds; nil: as long as it takes), showing `progress` while it waits.
    static func flush(_ mountpoint: String, under relative: String, timeout: Double?,
                      progress: inout FlushProgress) throws(UserFacingFailure) -> FlushReply {
        let data: Data
        do {
            data = try call(mountpoint, .init(cmd: "flush", path: relative, timeout: timeout), every: progress.interval) { progress.show() }
            progress.finish()
        } catch {
            progress.finish()
            throw error
        }
        guard let reply = try? JSONDecoder().decode(FlushReply.self, from: data) else {
            throw UserFacingFailure(message: "unexpected reply from the daemon: \(String(decoding: data, as: UTF8.self))")
        }
        return reply
    }

    /// The status of the mount at `mountpoint`: the reply as sent (JSON), and decoded.
    static func status(_ mountpoint: String) throws(UserFacingFailure) -> (json: Data, reply: StatusReply) {
        let data = try call(mountpoint, .init(cmd: "status"))
        guard let reply = try? JSONDecoder().decode(StatusReply.self, from: data) else {
            throw UserFacingFailure(message: "unexpected reply from the daemon: \(String(decoding: data, as: UTF8.self))")
        }
        return (data, reply)
    }
}

extension Control {
    /// Asks the mount at `mountpoint` for the versions of `relative` ("versions"), or to restore one ("restore").
    static func versions(_ mountpoint: String, _ request: Request) throws(UserFacingFailure) -> VersionsReply {
        let data = try call(mountpoint, request)
        guard let reply = try? JSONDecoder().decode(VersionsReply.self, from: data) else {
            throw UserFacingFailure(message: "unexpected reply from the daemon (is it an older ckptfs? remount with this one): "
                                    + String(decoding: data.prefix(300), as: UTF8.self))
        }
        if let failure = reply.failure { throw UserFacingFailure(message: failure) }
        return reply
    }
}
