import ArgumentParser
import CkptFUSE
import CkptSystem
import Foundation

/// `ckptfs unmount MOUNTPOINT [--drain-timeout S]`: drains the write-back while the mount is still there,
/// then unmounts; a dead mount point (its daemon was killed) is detached.
struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount a ckptfs mount.")

    @Argument(help: "The mount point.") var mountpoint: String
    @Option(name: .customLong("drain-timeout"),
            help: "Seconds to wait for queued uploads before unmounting (default: the mount's --drain-timeout, 120 unless set).")
    var drainTimeout: Double?

    func validate() throws {
        if let drainTimeout, drainTimeout < 0 { throw ValidationError("--drain-timeout must be zero or more seconds, like 120") }
    }

    func run() throws {
        do {
            try Self.unmount(MountChecks.absolute(mountpoint), drainTimeout: drainTimeout)
        } catch {
            throw fail(error.message)
        }
    }

    /// Drains (at most `drainTimeout` seconds; nil: the mount's own `--drain-timeout`), then unmounts `path`.
    static func unmount(_ path: String, drainTimeout requested: Double?) throws(UserFacingFailure) {
        guard let m = MountChecks.mounts().last(where: { $0.path == path }) else {
            throw UserFacingFailure(message: "\(path) is not mounted")
        }
        guard m.type == "fuse.ckptfs" else { throw UserFacingFailure(message: "\(path) is a \(m.type) mount, not ckptfs; use umount") }
        // Its daemon killed but stuck in the kernel: every request to the mount, statvfs included, would wait.
        if let stuck = MountChecks.stuckMount(path) {
            try MountChecks.freeStuckMount(path, stuck)
            return
        }
        // A daemon killed with -9 leaves a dead mount ("Transport endpoint is not connected"): there is
        // nothing to drain, so detach it (lazily: a process may still have a file or its cwd there).
        if MountChecks.deadFuseMount(path) != nil {
            if let problem = FuseSession.unmount(path, lazy: true) { throw UserFacingFailure(message: problem) }
            FileHandle.standardError.write(Data(("ckptfs: note: the daemon of \(path) was gone; detached the dead mount. Files it "
                + "had not uploaded stay in its cache directory's journal; the next mount with that cache directory uploads them.\n").utf8))
            return
        }
        // Drain first: uploads finish while the mount is still there.
        let drainTimeout = requested ?? (try? Control.status(path).reply.drainTimeoutSeconds).flatMap { $0 } ?? 120
        if let data = try? Control.call(path, .init(cmd: "flush", path: "", timeout: drainTimeout)),
           let r = try? JSONDecoder().decode(Control.FlushReply.self, from: data), !r.ok {
            var msg = "ckptfs: warning: \(r.notDurable.count) file(s) are not durable in S3 (waited up to \(Int(drainTimeout)) s); "
                + "they stay in the journal and the next mount with the same cache dir uploads them:"
            for n in r.notDurable { msg += "\n  \(n.path): \(n.reason)" }
            FileHandle.standardError.write(Data((msg + "\n").utf8))
        }
        // The daemon exits once the kernel has let go, after its last cache writes; its cache directory is free
        // (for another mount or `ckptfs preload --cache-dir`) only then, so wait for that exit, not just for
        // the mount point to go.
        let daemon = Control.daemonPID(path).flatMap { ProcessExit(pid: $0) }
        _ = try? Control.call(path, .init(cmd: "unmounting", timeout: 0))
        if let problem = FuseSession.unmount(path, lazy: false) { throw UserFacingFailure(message: problem) }
        if let daemon, !daemon.wait(timeout: .seconds(Unmount.exitTimeoutSeconds)) {
            FileHandle.standardError.write(Data(("ckptfs: note: \(path) is unmounted; its daemon is still finishing after "
                + "\(Unmount.exitTimeoutSeconds) s, and its cache directory is in use until it exits.\n").utf8))
        }
    }

    /// How long `unmount` waits for the daemon to exit once the mount point is gone (its last cache writes).
    static let exitTimeoutSeconds = 60
}
