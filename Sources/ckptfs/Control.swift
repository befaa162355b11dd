// The control channel between the CLI (`ckptfs status`, `flush`, `unmount`) and a running mount: a Unix
// socket named after the mountpoint. One request per connection: a line of JSON in, a line of JSON out.
import ArgumentParser
import CkptDigest
import CkptFS
import Foundation
import Logging
import Synchronization

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

    /// The uid of the process at the other end of the connected Unix socket `fd` (SO_PEERCRED: the
    /// credentials the peer had when it called connect() or listen()).
    static func peerUID(_ fd: Int32) -> uid_t? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Linux ABI); glibc declares it only under
        // _GNU_SOURCE, so Swift's Glibc module does not see it.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, Int(len) == MemoryLayout.size(ofValue: cred) else { return nil }
        return cred.uid
    }

    /// A peer the control channel trusts: the same uid as this process, or root.
    static func trusted(_ uid: uid_t?) -> Bool { uid == geteuid() || uid == 0 }

    struct Request: Codable {
        var cmd: String
        var path: String?
        var timeout: Double?
    }

    /// What the daemon answers a request it refuses.
    struct ErrorReply: Codable {
        var error: String
    }

    struct NotDurable: Codable {
        var path: String
        var reason: String
    }

    struct FlushReply: Codable {
        var ok: Bool
        var notDurable: [NotDurable]
    }

    struct StatusReply: Codable {
        var writeBack: WriteBackStatus
        var cacheUsedBytes: Int64
        var cacheCapacityBytes: Int64
        var cacheBlocks: Int
        var cacheHits: Int
        var cacheMisses: Int
        var cacheHitRatio: Double
        var getRequests: Int
        var bytesDownloaded: Int64
        var headRequests: Int
        var listRequests: Int
        var putRequests: Int
        var directOpens: Int
        /// Present while the daemon drains before unmounting, after a signal.
        var stopping: Stopping?
    }

    struct Stopping: Codable {
        var signal: String
        /// Seconds left before the drain gives up.
        var drainSecondsLeft: Double
        /// True once the drain is over: every change fails with EROFS until the mount is gone.
        var refusingChanges: Bool
        /// Files still open for writing through the mount.
        var openForWriting: Int
    }

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

    /// Sends one request to the mount at `mountpoint` and returns the reply line. While no reply has come,
    /// `whileWaiting` is called every `interval` (a display timer: the reply itself wakes the wait).
    static func call(_ mountpoint: String, _ request: Request, every interval: Duration? = nil,
                     whileWaiting: () -> Void = {}) throws(UserFacingFailure) -> Data {
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
        defer { close(fd) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            throw UserFacingFailure(message: "cannot reach the ckptfs daemon of \(mountpoint) (\(path): "
                + "\(String(cString: strerror(errno)))); is it a ckptfs mount started by this user?")
        }
        let peer = peerUID(fd)
        guard trusted(peer) else {
            throw UserFacingFailure(message: "the process behind the control socket \(path) runs as uid "
                + "\(peer.map { String($0) } ?? "unknown"), not as you (uid \(geteuid())) or root, so it is not your ckptfs daemon; "
                + "refusing to trust its answer\n  fix: remove the socket (as root or its owner: rm \(path)) and mount again")
        }
        var line = try! JSONEncoder().encode(request)
        line.append(UInt8(ascii: "\n"))
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
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
}

/// Serves the control socket of one mount on its own thread.
final class ControlServer: @unchecked Sendable {
    let fs: FileSystem
    let path: String
    let logger: Logger
    private var fd: Int32 = -1
    /// Set by `ckptfs unmount` (which drains before unmounting): how long the daemon still drains after.
    let drainTimeout = Mutex<Double?>(nil)
    /// Set when a signal started the drain before an unmount.
    let stopping = Mutex<DrainState?>(nil)

    init(fs: FileSystem, mountpoint: String, logger: Logger) {
        self.fs = fs
        self.path = Control.socketPath(for: mountpoint)
        self.logger = logger
    }

    func start() throws(UserFacingFailure) {
        try Control.checkPrivate((path as NSString).deletingLastPathComponent, create: true)
        unlink(path)
        guard var addr = Control.sockaddr(path) else { throw UserFacingFailure(message: "socket path too long: \(path)") }
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0 && listen(fd, 16) == 0
        guard ok else { throw UserFacingFailure(message: "cannot create the control socket \(path): \(String(cString: strerror(errno)))") }
        chmod(path, 0o600)
        let t = Thread { [self] in acceptLoop() }
        t.name = "ckptfs-control"
        t.start()
    }

    func stop() {
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
    }

    private func acceptLoop() {
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 {
                if errno == EINTR { continue }
                return
            }
            Task { await self.serve(c) }
        }
    }

    private func serve(_ c: Int32) async {
        defer { close(c) }
        // The request line first (a client that sends nothing is given 2 s): answering before it is read would
        // close a socket with the request unread, and the client's send would fail instead of reading the answer.
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line = [UInt8]()
        var b: UInt8 = 0
        while line.count < 1 << 16 && read(c, &b, 1) == 1 && b != UInt8(ascii: "\n") { line.append(b) }
        // The socket is 0600 in a 0700 directory; the peer check holds even if someone loosens those.
        let peer = Control.peerUID(c)
        guard Control.trusted(peer) else {
            let who = peer.map { String($0) } ?? "unknown"
            logger.warning("control socket: refused a connection from another user",
                           metadata: ["control.peer_uid": "\(who)", "control.socket": "\(path)"])
            let reply = try! JSONEncoder().encode(Control.ErrorReply(
                error: "uid \(who) may not control this mount; only its owner (uid \(geteuid())) and root may"))
            _ = (reply + [UInt8(ascii: "\n")]).withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            return
        }
        guard let req = try? JSONDecoder().decode(Control.Request.self, from: Data(line)) else { return }
        let reply: Data
        switch req.cmd {
        case "flush":
            let left = await fs.flushAll(under: req.path ?? "", timeout: req.timeout.map { .milliseconds(Int64($0 * 1000)) })
            reply = try! JSONEncoder().encode(Control.FlushReply(ok: left.isEmpty, notDurable: left.map { .init(path: $0.path, reason: $0.reason) }))
        case "unmounting":
            drainTimeout.withLock { $0 = req.timeout ?? 0 }
            reply = Data("{}".utf8)
        case "status":
            let s = fs.stats
            let lookups = s.cache.hits + s.cache.misses
            reply = try! JSONEncoder().encode(Control.StatusReply(
                writeBack: fs.writeBackStatus, cacheUsedBytes: s.cache.usedBytes, cacheCapacityBytes: fs.cache.capacity,
                cacheBlocks: s.cache.blocks, cacheHits: s.cache.hits, cacheMisses: s.cache.misses,
                cacheHitRatio: lookups == 0 ? 0 : Double(s.cache.hits) / Double(lookups), getRequests: s.getRequests,
                bytesDownloaded: s.bytesDownloaded, headRequests: s.headRequests, listRequests: s.listRequests,
                putRequests: s.putRequests, directOpens: s.directOpens,
                stopping: stopping.withLock { $0 }.map {
                    .init(signal: $0.signalName, drainSecondsLeft: max(0, ($0.deadline - .now).seconds),
                          refusingChanges: !$0.gate.acceptsChanges, openForWriting: $0.gate.openWriters)
                }))
        default:
            reply = Data("{\"error\":\"unknown command\"}".utf8)
        }
        var out = reply
        out.append(UInt8(ascii: "\n"))
        _ = out.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
    }
}

/// Finds the ckptfs mount holding `path`; returns its mountpoint and the path below it.
func ckptfsMount(containing path: String) throws(UserFacingFailure) -> (mountpoint: String, relative: String) {
    let abs = MountChecks.absolute(path)
    let candidates = MountChecks.mounts().filter { $0.type == "fuse.ckptfs" && (abs == $0.path || abs.hasPrefix($0.path == "/" ? "/" : $0.path + "/")) }
    guard let m = candidates.max(by: { $0.path.count < $1.path.count }) else {
        throw UserFacingFailure(message: "\(abs) is not on a ckptfs mount; give the mountpoint (or a path under it)")
    }
    var rel = String(abs.dropFirst(m.path.count))
    while rel.hasPrefix("/") { rel.removeFirst() }
    return (m.path, rel)
}

func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024 && u < units.count - 1 {
        v /= 1024
        u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

/// `ckptfs flush MOUNTPOINT[/PATH] [--timeout S]`
struct Flush: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until every dirty file under a path is durable in S3.",
        discussion: "Exits 0 once everything under PATH is in S3; otherwise (timeout or upload failure) exits 1 and lists what is not durable and why.")
    @Argument(help: "The mountpoint or a path under it.") var path: String
    @Option(help: "Give up after this many seconds (default: wait as long as it takes).") var timeout: Double?

    func run() throws {
        do {
            let (mp, rel) = try ckptfsMount(containing: path)
            var progress = FlushProgress(mountpoint: mp, relative: rel)
            let data: Data
            do {
                data = try Control.call(mp, .init(cmd: "flush", path: rel, timeout: timeout), every: progress.interval) { progress.show() }
                progress.finish()
            } catch {
                progress.finish()
                throw error
            }
            guard let r = try? JSONDecoder().decode(Control.FlushReply.self, from: data) else {
                throw UserFacingFailure(message: "unexpected reply from the daemon: \(String(decoding: data, as: UTF8.self))")
            }
            if r.ok { return }
            var msg = "\(r.notDurable.count) file(s) under \(mp)/\(rel) are not durable in S3 yet:"
            for n in r.notDurable { msg += "\n  \(n.path): \(n.reason)" }
            let conflicts = r.notDurable.contains { $0.reason.hasPrefix("conflict") }
            throw UserFacingFailure(message: msg + "\nThey stay journaled, and readable here. "
                + (conflicts ? "A conflict is not retried: rename the file to upload it under another name. " : "")
                + "Other failures are retried: run ckptfs flush again or see ckptfs status.")
        } catch let f as UserFacingFailure {
            throw fail(f.message)
        }
    }
}

/// `ckptfs status MOUNTPOINT [--json]`
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show uploads, dirty files and cache use of a mount.")
    @Argument var mountpoint: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        do {
            let (mp, _) = try ckptfsMount(containing: mountpoint)
            let data = try Control.call(mp, .init(cmd: "status"))
            if json {
                print(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
                return
            }
            guard let s = try? JSONDecoder().decode(Control.StatusReply.self, from: data) else {
                throw UserFacingFailure(message: "unexpected reply from the daemon")
            }
            let w = s.writeBack
            print("mount:            \(mp)")
            if let st = s.stopping {
                print(st.refusingChanges
                    ? "stopping:         \(st.signal): drain over, refusing changes (EROFS) until unmounted"
                    : "stopping:         \(st.signal): draining uploads (\(Int(st.drainSecondsLeft.rounded(.up))) s left, "
                        + "\(st.openForWriting) file(s) open for writing), then unmounting")
            }
            print("dirty files:      \(w.dirtyFiles) (\(formatBytes(w.dirtyBytes))), oldest \(String(format: "%.0f", w.oldestDirtySeconds)) s")
            print("uploads:          \(w.uploadsInFlight) in flight, \(w.uploadedFiles) done (\(formatBytes(w.uploadedBytes)))")
            if w.recovered > 0 { print("recovered:        \(w.recovered) file(s) from the journal at mount") }
            for q in w.quarantined { print("quarantined:      \(q)") }
            for f in w.failures { print("failing:          \(f.path): \(f.error ?? "")") }
            for p in w.pending.prefix(20) where p.error == nil {
                let sent = p.sentBytes > 0 ? ", \(formatBytes(p.sentBytes)) sent" : ""
                print("pending:          \(p.path) (\(formatBytes(p.bytes)), \(p.state)\(sent))")
            }
            if w.pending.count > 20 { print("                  ... and \(w.pending.count - 20) more") }
            print("cache:            \(formatBytes(s.cacheUsedBytes)) of \(formatBytes(s.cacheCapacityBytes)), "
                + "hit ratio \(String(format: "%.2f", s.cacheHitRatio))")
            print("requests:         \(s.getRequests) GET (\(formatBytes(s.bytesDownloaded))), \(s.putRequests) PUT/part, "
                + "\(s.headRequests) HEAD, \(s.listRequests) LIST; \(s.directOpens) direct-I/O opens")
        } catch let f as UserFacingFailure {
            throw fail(f.message)
        }
    }
}

/// What a waiting `ckptfs flush` shows on stderr: how many files and bytes under its path are not durable
/// yet, which are uploading (and how far), which are queued, and the last upload error. On a terminal one
/// line rewritten every second; otherwise a plain line every few seconds, so a log shows what a long flush
/// waited for. Nothing is shown for a flush that ends within the first interval. Read from `status`.
struct FlushProgress {
    let mountpoint: String
    let relative: String
    let terminal = isatty(2) == 1
    let started = ContinuousClock.now
    /// Whether a live line is on the terminal (to be cleared at the end).
    private var live = false

    init(mountpoint: String, relative: String) {
        self.mountpoint = mountpoint
        self.relative = relative
    }

    /// How often the line is shown: 1 s on a terminal, 3 s otherwise.
    var interval: Duration { terminal ? .seconds(1) : .seconds(3) }

    mutating func show() {
        var text = "ckptfs: flush: \(Int((ContinuousClock.now - started).seconds)) s, " + describe()
        if terminal {
            var w = winsize()
            if ioctl(2, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 1, text.count >= Int(w.ws_col) {
                text = String(text.prefix(Int(w.ws_col) - 2)) + "…"
            }
            FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
            live = true
        } else {
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
    }

    /// Clears the live line, so what follows starts on a clean line.
    mutating func finish() {
        if live { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        live = false
    }

    /// "waiting for 2 file(s) (40.0 MiB) under /mnt/x: uploading a.bin (12.0 MiB of 32.0 MiB sent); queued b.bin; last error: ..."
    func describe() -> String {
        let place = relative.isEmpty ? mountpoint : "\(mountpoint)/\(relative)"
        guard let data = try? Control.call(mountpoint, .init(cmd: "status")),
              let s = try? JSONDecoder().decode(Control.StatusReply.self, from: data) else {
            return "waiting for the uploads under \(place) (status unavailable)"
        }
        let mine = s.writeBack.pending.filter { relative.isEmpty || $0.path == relative || $0.path.hasPrefix(relative + "/") }
        guard !mine.isEmpty else { return "waiting for the last uploads under \(place) to be confirmed" }
        var text = "waiting for \(mine.count) file(s) (\(formatBytes(mine.reduce(0) { $0 + $1.bytes }))) under \(place):"
        func list(_ ps: [WriteBackStatus.Pending], _ each: (WriteBackStatus.Pending) -> String) -> String {
            ps.prefix(3).map(each).joined(separator: ", ") + (ps.count > 3 ? " and \(ps.count - 3) more" : "")
        }
        var parts: [String] = []
        let uploading = mine.filter { $0.state == "uploading" }
        if !uploading.isEmpty {
            parts.append("uploading " + list(uploading) { "\($0.path) (\(formatBytes($0.sentBytes)) of \(formatBytes($0.bytes)) sent)" })
        }
        let queued = mine.filter { $0.state == "queued" }
        if !queued.isEmpty { parts.append("queued " + list(queued) { $0.path }) }
        let open = mine.filter { $0.state == "open" }
        if !open.isEmpty { parts.append("still open for writing " + list(open) { $0.path }) }
        let conflicts = mine.filter { $0.state == "conflict" }
        if !conflicts.isEmpty { parts.append("conflict " + list(conflicts) { $0.path }) }
        text += " " + parts.joined(separator: "; ")
        if let failing = mine.first(where: { $0.error != nil }), let e = failing.error {
            text += "; last error: \(failing.path): \(e)"
        }
        return text
    }
}
