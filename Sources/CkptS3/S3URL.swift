// The `s3://BUCKET[/PREFIX]` form every command takes.

/// Parses `s3://BUCKET[/PREFIX]`.
public struct S3URL: Sendable, Equatable, CustomStringConvertible {
    public var bucket: String
    /// The key prefix, without a leading slash; empty for the whole bucket.
    public var prefix: String

    public init(_ string: String) throws(ConfigurationError) {
        guard string.hasPrefix("s3://") else {
            throw ConfigurationError("'\(string)' is not an S3 URL; write it as s3://BUCKET or s3://BUCKET/PREFIX")
        }
        let rest = string.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        guard !bucket.isEmpty else { throw ConfigurationError("'\(string)' names no bucket; write it as s3://BUCKET[/PREFIX]") }
        guard bucket.utf8.count <= 255, !bucket.contains(where: { $0 == " " || $0 == "?" || $0 == "#" }) else {
            throw ConfigurationError("'\(bucket)' is not a valid bucket name")
        }
        self.bucket = bucket
        self.prefix = String(rest.dropFirst(bucket.count).drop { $0 == "/" })
    }

    public var description: String { prefix.isEmpty ? "s3://\(bucket)" : "s3://\(bucket)/\(prefix)" }
}
