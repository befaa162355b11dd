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

    @Option(name: .customLong("log-format"), help: "text (default), or json: one JSON object per line, for log shippers.")
    var logFormat: String = "text"

    @Option(name: .customLong("request-timeout"),
            help: "Seconds an S3 request may go without moving a byte before it is cut and retried (default 30).")
    var requestTimeout: Double = 30

    @Option(name: .customLong("check-timeout"),
            help: "Seconds the reachability check before mounting (and `ckptfs check`) may take in all, retries included (default 8).")
    var checkTimeout: Double = 8

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard logFormat == "text" || logFormat == "json" else {
            throw ValidationError("--log-format must be 'text' or 'json' (one JSON object per line)")
        }
        guard requestTimeout >= 1, requestTimeout <= 86400 else {
            throw ValidationError("--request-timeout must be between 1 and 86400 seconds (default 30)")
        }
        guard checkTimeout >= 1, checkTimeout <= 3600 else {
            throw ValidationError("--check-timeout must be between 1 and 3600 seconds (default 8)")
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
        // libcurl's low-speed limit counts whole seconds.
        config.http.stallTimeout = .milliseconds(Int64(requestTimeout.rounded(.up) * 1000))
        return config
    }

    /// Runs the reachability check `body` (HeadBucket, a first listing) against `config`'s endpoint within
    /// `--check-timeout` seconds in all, retries included. An endpoint that accepts connections but never answers
    /// would otherwise hold the command for attempts × stall timeout (6 × 30 s ≈ 3 minutes); past the deadline
    /// the requests are cancelled and the failure names the endpoint and the fix. Each attempt inside is cut
    /// after the shorter of `--request-timeout` and the deadline.
    func withinCheckDeadline(_ config: S3ClientConfiguration, what: String,
                             _ body: @escaping @Sendable (S3ClientConfiguration) async throws -> Void) async throws(UserFacingFailure) {
        var shortened = config
        shortened.http.stallTimeout = min(config.http.stallTimeout, .milliseconds(Int64(checkTimeout.rounded(.up) * 1000)))
        let quick = shortened
        let endpoint = config.endpoint.description
        let seconds = checkTimeout
        let outcome: Result<Void, any Error>? = await withTaskGroup(of: Result<Void, any Error>?.self) { group in
            group.addTask {
                do { try await body(quick) } catch { return .failure(error) }
                return .success(())
            }
            group.addTask {
                // nil: the deadline passed first. A cancelled sleep (the check finished) ends at once.
                try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        switch outcome {
        case .success: return
        case .failure(let error): throw UserFacingFailure(message: "\(error)")
        case nil:
            throw UserFacingFailure(message: "\(what): the endpoint \(endpoint) did not answer within \(Self.seconds(seconds)) s "
                + "(it accepts connections but sends no response: not an S3 server, a wrong port, or a proxy that holds requests)\n"
                + "  fix: check the endpoint (--endpoint-url, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the profile's endpoint_url) "
                + "and that the S3 server there is up; for a server that is slow to answer, raise --check-timeout SECONDS")
        }
    }

    static func seconds(_ s: Double) -> String { s == s.rounded() ? String(Int(s)) : String(s) }

    /// Sets up logging to stderr at `--log-level` in `--log-format` (once per process: swift-log allows one
    /// bootstrap) and returns the logger of ckptfs.
    func logger() -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        if logFormat == "json" {
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        } else {
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = level
                return h
            }
        }
        return Logger(label: "ckptfs")
    }
}
