// `ckptfs preload` over the control socket. The command line sends one "preload" request; the daemon answers with
// lines of `PreloadEvent`: the plan first, then progress every `interval` seconds, then the final progress. The
// preload runs in the daemon, on the mount's own reader and cache, for as long as the command line's connection is
// open: when the command line goes away (Ctrl-C, a killed job step) or shuts its side down (a first Ctrl-C), the
// preload is cancelled, keeps what it stored, and sends its final line if anyone is still reading.
import CkptFS
import Foundation
import Synchronization

/// A preload running in a mount: what `status` shows, and the task that runs it.
struct ActivePreload: Sendable {
    var paths: [String]
    var run: PreloadRun
    var task: Task<PreloadProgress, Never>
}

/// Writes `PreloadEvent` lines to a connection, one writer at a time; a write that fails (the peer went away)
/// makes every later one fail too.
final class EventWriter: Sendable {
    let fd: Int32
    private let state = Mutex(true)

    init(fd: Int32) { self.fd = fd }

    @discardableResult
    func send(_ event: Control.PreloadEvent) -> Bool {
        var line = try! JSONEncoder().encode(event)
        line.append(UInt8(ascii: "\n"))
        return state.withLock { ok in
            guard ok else { return false }
            line.withUnsafeBytes { b in
                var off = 0
                while off < b.count {
                    let n = Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 {
                        ok = false
                        return
                    }
                    off += n
                }
            }
            return ok
        }
    }
}

/// A thread that waits for the peer's side of a connection to end (it sends nothing after its request), then calls
/// `ended`. `stop()` shuts the connection down, which ends the wait, and returns once the thread is done with the
/// descriptor (so it can be closed).
final class ConnectionWatcher: Sendable {
    let fd: Int32
    private let done = Mutex<(finished: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    init(fd: Int32, ended: @escaping @Sendable () -> Void) {
        self.fd = fd
        let t = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
            }
            ended()
            let w = done.withLock { d -> CheckedContinuation<Void, Never>? in
                d.finished = true
                defer { d.waiter = nil }
                return d.waiter
            }
            w?.resume()
        }
        t.name = "ckptfs-preload-watch"
        t.start()
    }

    func stop() async {
        shutdown(fd, Int32(SHUT_RDWR))
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = done.withLock { d -> Bool in
                if d.finished { return true }
                d.waiter = c
                return false
            }
            if now { c.resume() }
        }
    }
}

extension ControlServer {
    /// The preloads running now, for `status` (nil when none).
    func runningPreloads() -> [Control.RunningPreload]? {
        let list = preloads.running
        return list.isEmpty ? nil : list.map { .init(paths: $0.paths, plan: $0.run.plan, progress: $0.run.progress) }
    }

    /// Answers a "preload" request on connection `c` (see the top of this file).
    func servePreload(_ c: Int32, _ req: Control.PreloadRequest) async {
        let out = EventWriter(fd: c)
        let preloader = fs.preloader
        if req.action == "replay" {
            let run: PreloadRun
            do {
                let profile = try AccessProfile.read(req.profile ?? "")
                run = try await preloader.replay(profile, budget: req.budget, parallel: req.parallel)
            } catch {
                out.send(.init(error: "replaying \(req.profile ?? "") failed: \(error.message)", final: true))
                return
            }
            await stream(c, out, run, paths: [req.profile ?? ""], interval: req.interval)
            return
        }
        let listed: (objects: [PreloadObject], missing: [String])
        do {
            listed = try await preloader.list(req.paths)
        } catch {
            out.send(.init(error: "listing what to preload failed: \(error)", final: true))
            return
        }
        switch req.action {
        case "check":
            let plan = preloader.prepare(listed.objects, missing: listed.missing, share: req.share, parallel: 1).plan
            out.send(.init(plan: plan, check: preloader.check(req.share.select(listed.objects), perFile: req.perFile), final: true))
        case "evict":
            let plan = preloader.prepare(listed.objects, missing: listed.missing, share: req.share, parallel: 1).plan
            let eviction = preloader.evict(req.share.select(listed.objects))
            logger.notice("preload: evicted from the cache", metadata: [
                "preload.paths": "\(req.paths)", "preload.files": "\(eviction.files)", "preload.bytes_freed": "\(eviction.bytesFreed)"])
            out.send(.init(plan: plan, eviction: eviction, final: true))
        default:
            let run = preloader.prepare(listed.objects, missing: listed.missing, share: req.share, parallel: req.parallel)
            await stream(c, out, run, paths: req.paths, interval: req.interval)
        }
    }

    /// Runs `run` for the command line at connection `c`: its plan, progress every `interval` seconds, and its final
    /// progress; the command line going away cancels it. `status` shows it meanwhile.
    func stream(_ c: Int32, _ out: EventWriter, _ run: PreloadRun, paths: [String], interval: Double) async {
        out.send(.init(plan: run.plan))
        let task = Task { await run.run() }
        let number = preloads.start(ActivePreload(paths: paths, run: run, task: task))
        logger.notice("preload started", metadata: [
            "preload.paths": "\(paths)", "preload.rank": "\(run.plan.share.rank)", "preload.world_size": "\(run.plan.share.worldSize)",
            "preload.files": "\(run.plan.files)", "preload.bytes": "\(run.plan.bytes)", "preload.over_bound": "\(run.plan.overBound)"])
        // The command line going away cancels the preload.
        let watcher = ConnectionWatcher(fd: c) { task.cancel() }
        let interval = max(0.2, interval)
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
                if Task.isCancelled { break }
                if !out.send(.init(progress: run.progress)) {
                    task.cancel()
                    break
                }
            }
        }
        let final = await task.value
        ticker.cancel()
        preloads.end(number, final)
        logger.notice("preload ended", metadata: [
            "preload.state": "\(final.state.rawValue)", "preload.files_done": "\(final.filesDone)",
            "preload.bytes_fetched": "\(final.bytesFetched)", "preload.requests": "\(final.requests)",
            "preload.files_failed": "\(final.filesFailed)", "preload.seconds": "\(final.elapsedSeconds)"])
        out.send(.init(progress: final, final: true))
        await watcher.stop()
    }
}

/// The socket of the preload in progress, for the SIGINT handler (a C function can capture nothing).
nonisolated(unsafe) private var interruptibleSocket: Int32 = -1

extension Control {
    /// Sends a "preload" request to the mount at `mountpoint` and hands each line of the answer to `onEvent`, up to
    /// and including the final one, which it returns. The first Ctrl-C (SIGINT) shuts down this side of the
    /// connection, which cancels the preload in the daemon; the daemon then sends the final line. A second Ctrl-C
    /// ends the command at once.
    static func preload(_ mountpoint: String, _ request: PreloadRequest,
                        onEvent: (PreloadEvent) -> Void) throws(UserFacingFailure) -> PreloadEvent {
        let fd = try connect(mountpoint)
        defer {
            signal(SIGINT, SIG_DFL)
            interruptibleSocket = -1
            close(fd)
        }
        interruptibleSocket = fd
        signal(SIGINT) { _ in
            shutdown(interruptibleSocket, Int32(SHUT_WR))
            signal(SIGINT, SIG_DFL)
        }
        send(.init(cmd: "preload", preload: request), to: fd)
        var pending = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            pending.append(contentsOf: buf[0..<n])
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<nl]
                pending = Data(pending[(nl + 1)...])
                guard let event = try? JSONDecoder().decode(PreloadEvent.self, from: line) else {
                    throw UserFacingFailure(message: "unexpected reply from the daemon: \(String(decoding: line, as: UTF8.self))")
                }
                // An error line: a refused request (another user), or the listing failed.
                if let error = event.error { throw UserFacingFailure(message: "the ckptfs daemon of \(mountpoint): \(error)") }
                onEvent(event)
                if event.final == true { return event }
            }
        }
        throw UserFacingFailure(message: "the ckptfs daemon of \(mountpoint) closed the connection before the preload ended "
            + "(the mount was stopped?); what it stored stays cached: run the same command again to fetch the rest")
    }
}
