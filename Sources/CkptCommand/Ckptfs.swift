// ckptfs: the command line. Each subcommand (Commands/, one file each) parses its arguments, rejects bad
// input in validate() with a message saying what to write instead, and hands off to the types that do the
// work (Daemon/: the mount's process; Control/: the socket between the command line and a running mount).
// Failures are printed with their cause and fix, and the exit code is non-zero.
import ArgumentParser
import CkptHTTP

@main
struct CkptfsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckptfs",
        abstract: "An S3 bucket as a POSIX directory for ML training.",
        version: "ckptfs 0.1.0 (\(HTTPClient.libraryVersions))",
        subcommands: [Mount.self, Unmount.self, Flush.self, Status.self, Check.self])
}
