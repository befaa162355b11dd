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
        do { _ = try S3URL(url) } catch { throw ValidationError(error.description) }
    }

    func run() async throws {
        let target = try S3URL(url)
        let logger = s3.logger()
        let config: S3ClientConfiguration
        do { config = try s3.resolve() } catch let e as ConfigurationError { throw fail(e.description) }
        let client = S3Client(configuration: config, logger: logger)
        print("endpoint:    \(config.endpoint)\(config.endpointIsDefault ? " (AWS default for the region)" : "")")
        print("region:      \(config.region)")
        print("addressing:  \(config.usesVirtualHost(bucket: target.bucket) ? "virtual-hosted" : "path")")
        print("credentials: \(config.credentials.map { "\($0.accessKeyId) from \($0.source)" } ?? "none (anonymous requests)")")
        do {
            try await client.headBucket(target.bucket)
            let page = try await client.listObjectsV2(target.bucket, prefix: target.prefix.isEmpty ? nil : target.prefix,
                                                      delimiter: "/", continuationToken: nil, startAfter: nil, maxKeys: 10)
            print("bucket:      \(target) is reachable; first level holds \(page.objects.count) object(s) and "
                + "\(page.commonPrefixes.count) prefix(es)\(page.isTruncated ? " (and more)" : "")")
        } catch {
            throw fail(error.description)
        }
    }
}
