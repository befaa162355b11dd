import ArgumentParser
import CkptS3
import Foundation

/// `ckptfs check s3://BUCKET[/PREFIX]`: resolves the configuration, proves the bucket is reachable with
/// these credentials, and prints what would be used (never a secret).
struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that a bucket is reachable with the configured endpoint, region and credentials.")

    @Argument(help: "s3://BUCKET or s3://BUCKET/PREFIX")
    var url: String

    @OptionGroup var s3: S3Options

    func validate() throws {
        do { _ = try parseTarget(url) } catch { throw ValidationError(error.message) }
    }

    func run() async throws {
        do {
            try await Self.check(parseTarget(url), s3: s3)
        } catch {
            throw fail(error.message)
        }
    }

    /// Prints the endpoint, region, addressing style and credentials `s3` resolves to, then proves that
    /// `target` is reachable with them (HeadBucket and a first listing, within `--check-timeout`).
    static func check(_ target: S3URL, s3: S3Options) async throws(UserFacingFailure) {
        let logger = s3.logger()
        let config = try await s3.resolve()
        print("endpoint:    \(config.endpoint)\(config.endpointIsDefault ? " (AWS default for the region)" : "")")
        print("region:      \(config.region)")
        print("addressing:  \(config.usesVirtualHost(bucket: target.bucket) ? "virtual-hosted" : "path")")
        print("credentials: \(describe(config.credentials))")
        try await s3.withinCheckDeadline(config, what: "HeadBucket \(target)") { config in
            let client = S3Client(configuration: config, logger: logger)
            try await client.headBucket(target.bucket)
            let page = try await client.listObjectsV2(target.bucket, prefix: target.prefix.isEmpty ? nil : target.prefix,
                                                      delimiter: "/", continuationToken: nil, startAfter: nil, maxKeys: 10)
            print("bucket:      \(target) is reachable; first level holds \(page.objects.count) object(s) and "
                + "\(page.commonPrefixes.count) prefix(es)\(page.isTruncated ? " (and more)" : "")")
        }
    }

    /// "ASIA… from instance profile trainer-role, expires 2025-01-01T12:00:00Z (in 5h 59m)": the access key id
    /// and the source, never the secret or the session token.
    static func describe(_ c: Credentials?) -> String {
        guard let c else { return "none (anonymous requests)" }
        var s = "\(c.accessKeyId) from \(c.source)"
        if let e = c.expiration {
            let left = Int(e.timeIntervalSinceNow)
            s += ", expires \(S3Date.iso8601(e)) (in \(left / 3600)h \((left % 3600) / 60)m \(left % 60)s; refreshed before then)"
        } else if c.sessionToken != nil {
            s += ", with a session token of unknown expiry"
        }
        return s
    }
}
