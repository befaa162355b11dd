// ckptfs: the command line. Each subcommand (Commands/, one file each) parses its arguments, rejects bad
// input in validate() with a message saying what to write instead, and hands off to the types that do the
// work (Daemon/: the mount's process; Control/: the socket between the command line and a running mount;
// Metrics/: the Prometheus endpoint). Failures are printed with their cause and fix, and the exit code is
// non-zero. Invoked by mount(8) or umount(8) (as mount.fuse.ckptfs, umount.fuse.ckptfs, or by mount.fuse3),
// the arguments are first translated into the command they mean (Options/MountHelper.swift).
import ArgumentParser
import CkptHTTP
import Foundation

@main
struct CkptfsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckptfs",
        abstract: "An S3 bucket as a POSIX directory for ML training.",
        version: "ckptfs 0.1.0 (\(HTTPClient.libraryVersions))",
        subcommands: [Mount.self, Unmount.self, Flush.self, Status.self, Preload.self, Versions.self, Restore.self, Check.self])

    /// What the command line means: nil for an ordinary `ckptfs` command line, else a mount helper invocation's meaning.
    static let invocation = Result { () throws(UserFacingFailure) in try MountHelper.translate(CommandLine.arguments) }

    /// The arguments this process runs (without the program name): the command line's, or what a mount helper
    /// invocation means. The daemon that `ckptfs mount` starts gets these.
    static var arguments: [String] {
        if case .success(.run(let args)?) = invocation { return args }
        return Array(CommandLine.arguments.dropFirst())
    }

    static func main() async {
        switch invocation {
        case .failure(let error):
            FileHandle.standardError.write(Data("ckptfs: error: \(error.message)\n".utf8))
            Self.exit(withError: ExitCode(2))
        case .success(.fake?): return
        case .success: await main(arguments)
        }
    }
}
