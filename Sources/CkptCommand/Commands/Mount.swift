import ArgumentParser
import Foundation

/// `ckptfs mount s3://BUCKET[/PREFIX] MOUNTPOINT [options]`: checks everything it can before mounting; without
/// --foreground it starts the daemon and returns 0 only once the mount is live (see `MountProcess`).
struct Mount: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mount a bucket (or a prefix of it) as a directory.")

    @Argument(help: "s3://BUCKET or s3://BUCKET/PREFIX") var url: String
    @Argument(help: "An existing, empty directory.") var mountpoint: String
    @OptionGroup var s3: S3Options
    @OptionGroup var options: MountOptions

    func validate() throws {
        do { _ = try parseTarget(url) } catch { throw ValidationError(error.message) }
    }

    func run() async throws {
        let process = MountProcess(url: url, mountpoint: mountpoint, s3: s3, options: options)
        do {
            try await process.run()
        } catch {
            process.report(error.message)
            throw ExitCode(1)
        }
    }
}
