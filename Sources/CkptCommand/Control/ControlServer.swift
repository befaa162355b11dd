import CkptFS
import CkptS3
import Foundation
import Logging
import Synchronization

/// Serves the control socket of one mount on its own thread.
final class ControlServer: @unchecked Sendable {
    let fs: FileSystem
    /// The credentials the mount signs with (nil: anonymous), for `status`.
    let credentials: CredentialsProvider?
    /// Where the metrics are served (`--metrics-address`), for `status`.
    let metricsURL: String?
    /// The mount's `--drain-timeout`, for `status` (and so for `ckptfs unmount`).
    let drainTimeoutSeconds: Double
    let path: String
    let logger: Logger
    private var fd: Int32 = -1
    /// Set by `ckptfs unmount` (which drains before unmounting): how long the daemon still drains after.
    let drainTimeout = Mutex<Double?>(nil)
    /// Set when a signal started the drain before an unmount.
    let stopping = Mutex<DrainState?>(nil)
    /// Preloads running now and the totals of those that ended (PreloadControl.swift); the metrics read it too.
    let preloads: PreloadLedger

    init(fs: FileSystem, mountpoint: String, credentials: CredentialsProvider?, metricsURL: String?, drainTimeoutSeconds: Double,
         preloads: PreloadLedger = PreloadLedger(), logger: Logger) {
        self.fs = fs
        self.preloads = preloads
        self.drainTimeoutSeconds = drainTimeoutSeconds
        self.credentials = credentials
        self.metricsURL = metricsURL
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
        // Preloads stop where they are: what they stored stays cached, a rerun fetches the rest.
        for p in preloads.running { p.task.cancel() }
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
        // The socket is 0600 in a 0700 directory; the peer check holds even if someone loosens those.
        let peer = Control.peerUID(c)
        guard Control.trusted(peer) else {
            // Read the request before refusing it: a peer still sending when the socket closed would get EPIPE
            // instead of the reason. Bounded (1 s, 64 KiB): this peer is not trusted to send a line at all.
            var limit = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            _ = Self.readLine(c, atMost: 65536)
            let who = peer.map { String($0) } ?? "unknown"
            logger.warning("control socket: refused a connection from another user",
                           metadata: ["control.peer_uid": "\(who)", "control.socket": "\(path)"])
            let reply = try! JSONEncoder().encode(Control.ErrorReply(
                error: "uid \(who) may not control this mount; only its owner (uid \(geteuid())) and root may"))
            _ = (reply + [UInt8(ascii: "\n")]).withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            return
        }
        guard let req = try? JSONDecoder().decode(Control.Request.self, from: Self.readLine(c, atMost: 256 << 20)) else { return }
        let reply: Data
        switch req.cmd {
        case "preload":
            guard let p = req.preload else {
                reply = try! JSONEncoder().encode(Control.ErrorReply(error: "a preload request without its parameters"))
                break
            }
            await servePreload(c, p)
            return
        case "flush":
            let left = await fs.flushAll(under: req.path ?? "", timeout: req.timeout.map { .milliseconds(Int64($0 * 1000)) })
            reply = try! JSONEncoder().encode(Control.FlushReply(ok: left.isEmpty, notDurable: left.map { .init(path: $0.path, reason: $0.reason) }))
        case "versions", "restore":
            var r = Control.VersionsReply()
            do throws(FSError) {
                if req.cmd == "versions" {
                    r.history = try await fs.history(of: req.path ?? "")
                } else {
                    r.restored = try await fs.restore(req.path ?? "", versionId: req.versionId, at: req.time)
                }
            } catch {
                r.failure = error.message
                r.errno = error.errno
            }
            reply = try! JSONEncoder().encode(r)
        case "unmounting":
            drainTimeout.withLock { $0 = req.timeout ?? 0 }
            logger.notice("unmount requested (ckptfs unmount or umount): the write-back was drained first",
                          metadata: ["write_back.dirty_files": "\(fs.writeBackStatus.dirtyFiles)"])
            reply = Data("{}".utf8)
        case "status":
            let s = fs.stats
            let lookups = s.cache.hits + s.cache.misses
            reply = try! JSONEncoder().encode(Control.StatusReply(
                writeBack: fs.writeBackStatus, cacheUsedBytes: s.cache.usedBytes, cacheCapacityBytes: fs.cache.capacity,
                cacheBlocks: s.cache.blocks, cacheHits: s.cache.hits, cacheMisses: s.cache.misses,
                cacheHitRatio: lookups == 0 ? 0 : Double(s.cache.hits) / Double(lookups), getRequests: s.getRequests,
                bytesDownloaded: s.bytesDownloaded, headRequests: s.headRequests, listRequests: s.listRequests,
                putRequests: s.putRequests, directOpens: s.directOpens, cacheSeededBlocks: s.cache.seededBlocks,
                credentials: credentials.map { Control.CredentialsReport($0.status) }, metricsURL: metricsURL,
                drainTimeoutSeconds: drainTimeoutSeconds,
                stopping: stopping.withLock { $0 }.map {
                    .init(signal: $0.signalName, drainSecondsLeft: max(0, ($0.deadline - .now).seconds),
                          refusingChanges: !$0.gate.acceptsChanges, openForWriting: $0.gate.openWriters)
                },
                preloads: runningPreloads()))
        default:
            reply = Data("{\"error\":\"unknown command\"}".utf8)
        }
        var out = reply
        out.append(UInt8(ascii: "\n"))
        _ = out.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
    }

    /// The bytes before the first newline from `fd`, at most `limit` of them; what came when the peer closed,
    /// failed or timed out (SO_RCVTIMEO) first. Reads in chunks: a peer sends one line and then nothing until it
    /// closes (a preload's watcher reads what may follow, see PreloadControl.swift).
    private static func readLine(_ fd: Int32, atMost limit: Int) -> Data {
        var line = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while line.count < limit {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            if let nl = buf[0..<n].firstIndex(of: UInt8(ascii: "\n")) {
                line.append(contentsOf: buf[0..<nl])
                break
            }
            line.append(contentsOf: buf[0..<n])
        }
        return line.count > limit ? line.prefix(limit) : line
    }
}
