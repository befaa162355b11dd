// ckptfs: the command line. Each subcommand parses and validates its options, then hands off to a
// library type; errors are printed with their cause and fix, and the exit code is non-zero.
import ArgumentParser
import CkptHTTP
import CkptS3
import Foundation
import Logging

@main
struct CkptFS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckptfs",
        abstract: "An S3 bucket as a POSIX directory for ML training.",
        version: "ckptfs 0.1.0 (\(HTTPClient.libraryVersions))",
        subcommands: [Mount.self, Unmount.self, Flush.self, Status.self, Check.self])
}
