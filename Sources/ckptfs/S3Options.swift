import ArgumentParser
import CkptS3
import Foundation
import Logging

/// Options every subcommand that talks to S3 shares.
struct S3Options: ParsableArguments {
    @Option(name: .customLong("endpoint-url"), help: "S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile, else AWS).")
    var endpointURL: String?

    @Option(help: "Region to sign for (default: AWS_REGION, AWS_DEFAULT_REGION, the profile, else us-east-1).")
    var region: String?

    @Flag(name: .customLong("force-path-style"), help: "Address the bucket as https://host/BUCKET (most S3-compatible servers want this).")
    var forcePathStyle = false

    @Flag(name: .customLong("no-sign-request"), help: "Send anonymous requests (public buckets).")
    var noSignRequest = false

    @Option(help: "AWS profile from ~/.aws/credentials and ~/.aws/config (default: AWS_PROFILE, else default).")
    var profile: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "warning"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
    }

    /// The configuration with its credentials fetched (STS, container, instance metadata), so a missing or
    /// refused credential is reported here with its source and fix, before any S3 request.
    func resolve() async throws(UserFacingFailure) -> S3ClientConfiguration {
        var config: S3ClientConfiguration
        do {
            config = try S3ClientConfiguration.resolve(.init(profile: profile, endpointURL: endpointURL, region: region,
                                                             forcePathStyle: forcePathStyle, noSignRequest: noSignRequest))
        } catch {
            throw UserFacingFailure(message: error.description)
        }
        do { try await config.prepareCredentials() } catch { throw UserFacingFailure(message: error.description) }
        return config
    }

    func logger() -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        return Logger(label: "ckptfs")
    }
}

/// Prints a user-facing failure and exits non-zero.
struct UserFacingFailure: Error, Sendable, CustomStringConvertible {
    var message: String
    var code: Int32 = 1
    var description: String { message }
}

func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    FileHandle.standardError.write(Data("ckptfs: error: \(message)\n".utf8))
    return ExitCode(code)
}
