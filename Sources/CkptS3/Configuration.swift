// Endpoint, region, addressing style and credentials, resolved the way the AWS CLI resolves them.
//
// Order (first match wins):
//   credentials: --no-sign-request → anonymous; otherwise botocore's default chain (Credentials/CredentialChain.swift):
//                environment keys (not with --profile), the profile's role_arn (STS AssumeRole), web identity
//                (STS AssumeRoleWithWebIdentity), SSO (the token cache of `aws sso login`), the profile's keys in
//                AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials), its credential_process, its keys in
//                AWS_CONFIG_FILE (~/.aws/config), container credentials, EC2 instance metadata (IMDSv2).
//   region:      --region, AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`, the instance's region when the
//                credentials come from instance metadata (`prepareCredentials()`), us-east-1.
//   endpoint:    --endpoint-url, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's `s3.endpoint_url`
//                or `endpoint_url` (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true), else AWS's regional endpoint.
//   addressing:  --force-path-style, the profile's `s3.addressing_style`; otherwise virtual-hosted on AWS for
//                DNS-compatible bucket names and path style for custom endpoints.
//   CA bundle:   AWS_CA_BUNDLE, the profile's `ca_bundle`.
// `resolve` contacts no endpoint; credentials that need one are fetched on first use or by `prepareCredentials()`.
import CkptHTTP
import Foundation

/// How the bucket is addressed in requests.
public enum AddressingStyle: String, Sendable {
    /// Virtual-hosted on AWS for DNS-compatible names, path style for custom endpoints.
    case auto
    /// `https://host/bucket/key`
    case path
    /// `https://bucket.host/key`
    case virtual
}

/// Scheme, host and port of an S3 endpoint.
public struct S3Endpoint: Sendable, Equatable, CustomStringConvertible {
    public var scheme: String
    public var host: String
    public var port: Int?
    /// A path prefix some gateways put before the bucket (rare); empty for S3.
    public var basePath: String

    /// Parses `http(s)://host[:port][/base]`.
    public init(url: String) throws(ConfigurationError) {
        guard let sep = url.range(of: "://") else {
            throw ConfigurationError("endpoint URL '\(url)' has no scheme; write it as https://host[:port] or http://host[:port]")
        }
        let scheme = url[..<sep.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else {
            throw ConfigurationError("endpoint URL '\(url)' must start with http:// or https://")
        }
        var rest = String(url[sep.upperBound...])
        var base = ""
        if let slash = rest.firstIndex(of: "/") {
            base = String(rest[slash...])
            rest = String(rest[..<slash])
        }
        while base.hasSuffix("/") { base.removeLast() }
        var host = rest
        var port: Int? = nil
        if rest.hasPrefix("[") {  // IPv6 literal
            guard let close = rest.firstIndex(of: "]") else { throw ConfigurationError("endpoint URL '\(url)' has an unclosed IPv6 address") }
            host = String(rest[...close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { port = Int(after.dropFirst()) }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw ConfigurationError("endpoint URL '\(url)' has an invalid port")
            }
            port = p
        }
        guard !host.isEmpty else { throw ConfigurationError("endpoint URL '\(url)' has no host") }
        self.init(scheme: scheme, host: host.lowercased(), port: port, basePath: base)
    }

    public init(scheme: String, host: String, port: Int? = nil, basePath: String = "") {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.basePath = basePath
    }

    /// AWS's regional endpoint.
    public static func aws(region: String) -> S3Endpoint {
        let suffix = region.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        return S3Endpoint(scheme: "https", host: "s3.\(region).\(suffix)")
    }

    /// `host[:port]`, with the port only when it is not the scheme's default (as the Host header carries it).
    public var authority: String {
        if let port, !(scheme == "http" && port == 80) && !(scheme == "https" && port == 443) { return "\(host):\(port)" }
        return host
    }

    public var isAWS: Bool { host.hasSuffix(".amazonaws.com") || host.hasSuffix(".amazonaws.com.cn") }

    /// An IP literal or localhost: such hosts cannot take a bucket as a subdomain.
    public var isIPOrLocalhost: Bool {
        if host == "localhost" || host.hasPrefix("[") { return true }
        let parts = host.split(separator: ".")
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }

    public var description: String { "\(scheme)://\(authority)\(basePath)" }
}

/// A configuration the user must fix; the message says what and how.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Everything the S3 client needs to reach a bucket.
public struct S3ClientConfiguration: Sendable {
    public var endpoint: S3Endpoint
    /// True when the endpoint is AWS's default for the region (not set by the user).
    public var endpointIsDefault: Bool
    public var region: String
    public var addressingStyle: AddressingStyle
    /// Where request credentials come from; nil: anonymous requests (public buckets).
    public var credentialsProvider: CredentialsProvider?
    /// The credentials last fetched (nil for anonymous requests, or before the first fetch).
    public var credentials: Credentials? { credentialsProvider?.current }
    /// True when no flag, variable or profile set the region (us-east-1 was assumed).
    public var regionIsDefault = false
    public var retry: RetryPolicy
    public var http: HTTPClientConfiguration

    public init(endpoint: S3Endpoint? = nil, region: String = "us-east-1", addressingStyle: AddressingStyle = .auto,
                credentials: Credentials?, retry: RetryPolicy = RetryPolicy(), http: HTTPClientConfiguration = .init()) {
        self.endpoint = endpoint ?? .aws(region: region)
        self.endpointIsDefault = endpoint == nil
        self.region = region
        self.addressingStyle = addressingStyle
        self.credentialsProvider = credentials.map(CredentialsProvider.fixed)
        self.retry = retry
        self.http = http
    }

    public init(endpoint: S3Endpoint? = nil, region: String = "us-east-1", addressingStyle: AddressingStyle = .auto,
                credentialsProvider: CredentialsProvider?, retry: RetryPolicy = RetryPolicy(), http: HTTPClientConfiguration = .init()) {
        self.init(endpoint: endpoint, region: region, addressingStyle: addressingStyle, credentials: nil, retry: retry, http: http)
        self.credentialsProvider = credentialsProvider
    }

    /// Fetches the credentials now (STS, container, instance metadata), so a failure is reported before any
    /// S3 request, and takes the region from instance metadata when the credentials come from there and nothing
    /// else set it (the AWS CLI does the same). Throws with the source and the fix.
    public mutating func prepareCredentials() async throws(CredentialsError) {
        guard let provider = credentialsProvider else { return }
        _ = try await provider.credentials()
        if regionIsDefault, let imds = provider.source as? InstanceMetadataCredentialSource,
           let r = try? await imds.client.region(), !r.isEmpty {
            region = r
            regionIsDefault = false
            if endpointIsDefault { endpoint = .aws(region: r) }
        }
    }

    /// Whether requests for `bucket` use virtual-hosted addressing.
    public func usesVirtualHost(bucket: String) -> Bool {
        switch addressingStyle {
        case .path: return false
        case .virtual: return true
        case .auto:
            guard endpoint.isAWS, !endpoint.isIPOrLocalhost else { return false }
            return S3ClientConfiguration.isDNSCompatible(bucket, https: endpoint.scheme == "https")
        }
    }

    /// Bucket names that can be a DNS label under TLS (no dots with https: the wildcard certificate would not match).
    public static func isDNSCompatible(_ bucket: String, https: Bool) -> Bool {
        guard (3...63).contains(bucket.utf8.count) else { return false }
        if https && bucket.contains(".") { return false }
        let ok = bucket.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                || c == UInt8(ascii: "-") || c == UInt8(ascii: ".")
        }
        return ok && !bucket.hasPrefix("-") && !bucket.hasSuffix("-") && !bucket.contains("..")
    }

    /// Options the user gave on the command line; each overrides the environment and files.
    public struct Overrides: Sendable {
        public var profile: String?
        public var endpointURL: String?
        public var region: String?
        public var forcePathStyle = false
        public var noSignRequest = false
        public init(profile: String? = nil, endpointURL: String? = nil, region: String? = nil,
                    forcePathStyle: Bool = false, noSignRequest: Bool = false) {
            self.profile = profile
            self.endpointURL = endpointURL
            self.region = region
            self.forcePathStyle = forcePathStyle
            self.noSignRequest = noSignRequest
        }
    }

    /// Resolves the configuration from overrides, the environment and the AWS config files.
    public static func resolve(_ o: Overrides = .init(),
                               environment env: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> S3ClientConfiguration {
        let home = env["HOME"] ?? NSHomeDirectory()
        let configPath = env["AWS_CONFIG_FILE"].map { expandTilde($0, home: home) } ?? "\(home)/.aws/config"
        let credentialsPath = env["AWS_SHARED_CREDENTIALS_FILE"].map { expandTilde($0, home: home) } ?? "\(home)/.aws/credentials"
        let configFile = try AWSConfigFile.load(path: configPath, isConfig: true)
        let credentialsFile = try AWSConfigFile.load(path: credentialsPath, isConfig: false)
        let profileName = nonEmpty(o.profile) ?? nonEmpty(env["AWS_PROFILE"]) ?? nonEmpty(env["AWS_DEFAULT_PROFILE"]) ?? "default"
        let explicitProfile = nonEmpty(o.profile) != nil || nonEmpty(env["AWS_PROFILE"]) != nil
        let profileConfig = configFile.profiles[profileName]
        let profileCredentials = credentialsFile.profiles[profileName]
        if explicitProfile && profileConfig == nil && profileCredentials == nil && !o.noSignRequest {
            throw ConfigurationError("AWS profile '\(profileName)' is not defined in \(credentialsPath) or \(configPath); "
                + "add it there, or choose another with --profile / AWS_PROFILE")
        }

        // Region.
        let configuredRegion = nonEmpty(o.region) ?? nonEmpty(env["AWS_REGION"]) ?? nonEmpty(env["AWS_DEFAULT_REGION"])
            ?? nonEmpty(profileConfig?.value("region"))
        let region = configuredRegion ?? "us-east-1"

        // Endpoint.
        let ignoreConfigured = env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"]?.lowercased() == "true"
        var endpointURL = nonEmpty(o.endpointURL)
        if endpointURL == nil && !ignoreConfigured {
            endpointURL = nonEmpty(env["AWS_ENDPOINT_URL_S3"]) ?? nonEmpty(env["AWS_ENDPOINT_URL"])
                ?? nonEmpty(profileConfig?.value("endpoint_url", section: "s3")) ?? nonEmpty(profileConfig?.value("endpoint_url"))
        }
        let endpoint = try endpointURL.map { u throws(ConfigurationError) in try S3Endpoint(url: u) }

        // Addressing style.
        var style = AddressingStyle.auto
        if o.forcePathStyle {
            style = .path
        } else if let s = profileConfig?.value("addressing_style", section: "s3") {
            guard let parsed = AddressingStyle(rawValue: s.lowercased()) else {
                throw ConfigurationError("profile '\(profileName)' in \(configPath) sets s3.addressing_style = \(s); use auto, path or virtual")
            }
            style = parsed
        }

        var http = HTTPClientConfiguration()
        http.caBundle = nonEmpty(env["AWS_CA_BUNDLE"]).map { expandTilde($0, home: home) }
            ?? nonEmpty(profileConfig?.value("ca_bundle")).map { expandTilde($0, home: home) }
        if let ca = http.caBundle, !FileManager.default.isReadableFile(atPath: ca) {
            throw ConfigurationError("the CA bundle \(ca) (AWS_CA_BUNDLE or ca_bundle) cannot be read; point it at a PEM file or unset it")
        }
        var retry = RetryPolicy()
        if let attempts = nonEmpty(env["AWS_MAX_ATTEMPTS"]) ?? nonEmpty(profileConfig?.value("max_attempts")) {
            guard let n = Int(attempts), n >= 1 else {
                throw ConfigurationError("max_attempts / AWS_MAX_ATTEMPTS must be a whole number ≥ 1, not '\(attempts)'")
            }
            retry.maxAttempts = n
        }

        // Credentials: chosen now, fetched on first use (see CredentialChain).
        var provider: CredentialsProvider? = nil
        if !o.noSignRequest {
            provider = try CredentialChain(env: env, profileName: profileName, explicitProfile: nonEmpty(o.profile) != nil,
                                           configFile: configFile, credentialsFile: credentialsFile, configPath: configPath,
                                           credentialsPath: credentialsPath, region: configuredRegion, caBundle: http.caBundle,
                                           home: home).resolve()
        }
        var config = S3ClientConfiguration(endpoint: endpoint, region: region, addressingStyle: style,
                                           credentialsProvider: provider, retry: retry, http: http)
        config.regionIsDefault = configuredRegion == nil
        return config
    }

    static func nonEmpty(_ s: String?) -> String? {
        guard let s = s?.trimmingCharacters(in: .whitespaces), !s.isEmpty else { return nil }
        return s
    }

    static func expandTilde(_ path: String, home: String) -> String {
        path.hasPrefix("~/") ? home + path.dropFirst(1) : path
    }
}

/// An AWS shared config or credentials file (INI with nested sub-sections).
public struct AWSConfigFile: Sendable {
    public struct Profile: Sendable {
        public var values: [String: String] = [:]
        /// Nested settings such as `s3 =\n  addressing_style = path`, by section then key.
        public var sections: [String: [String: String]] = [:]

        public func value(_ key: String, section: String? = nil) -> String? {
            if let section { return sections[section]?[key] }
            return values[key]
        }
    }

    public var profiles: [String: Profile] = [:]
    /// `[sso-session NAME]` sections of the config file (AWS IAM Identity Center), by name.
    public var ssoSessions: [String: Profile] = [:]

    /// Reads a file; a missing file is an empty one.
    public static func load(path: String, isConfig: Bool) throws(ConfigurationError) -> AWSConfigFile {
        guard FileManager.default.fileExists(atPath: path) else { return AWSConfigFile() }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError("\(path) exists but cannot be read; fix its permissions")
        }
        return try parse(String(decoding: data, as: UTF8.self), isConfig: isConfig, path: path)
    }

    /// Parses the text. In the config file profiles are `[profile NAME]` (and `[default]`); in the
    /// credentials file they are `[NAME]`.
    public static func parse(_ text: String, isConfig: Bool, path: String = "<text>") throws(ConfigurationError) -> AWSConfigFile {
        var file = AWSConfigFile()
        var current: String? = nil
        /// Set while the lines belong to an `[sso-session NAME]` section (then `current` is nil).
        var ssoSession: String? = nil
        var nested: String? = nil
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = String(raw)
            if line.hasSuffix("\r") { line.removeLast() }
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed.hasPrefix(";") { continue }
            if trimmed.hasPrefix("[") {
                guard trimmed.hasSuffix("]") else { throw ConfigurationError("\(path):\(n + 1): unterminated section header") }
                let name = trimmed.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                nested = nil
                ssoSession = nil
                if isConfig {
                    if name == "default" { current = "default" }
                    else if name.hasPrefix("profile ") { current = name.dropFirst(8).trimmingCharacters(in: .whitespaces) }
                    else {
                        current = nil  // [services x]: not a profile
                        if name.hasPrefix("sso-session ") {
                            let session = name.dropFirst(12).trimmingCharacters(in: .whitespaces)
                            ssoSession = session
                            if file.ssoSessions[session] == nil { file.ssoSessions[session] = Profile() }
                        }
                    }
                } else {
                    current = name
                }
                if let c = current, file.profiles[c] == nil { file.profiles[c] = Profile() }
                continue
            }
            if let session = ssoSession {
                // An sso-session's settings are flat `key = value` lines.
                guard let eq = trimmed.firstIndex(of: "=") else { throw ConfigurationError("\(path):\(n + 1): expected 'key = value'") }
                let key = trimmed[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
                file.ssoSessions[session]!.values[key] = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
                continue
            }
            guard let profile = current else { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw ConfigurationError("\(path):\(n + 1): expected 'key = value'")
            }
            let key = trimmed[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            var value = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            // Inline comments need whitespace before the marker.
            for marker in [" #", " ;", "\t#", "\t;"] {
                if let r = value.range(of: marker) { value = String(value[..<r.lowerBound]).trimmingCharacters(in: .whitespaces) }
            }
            let indented = line.first == " " || line.first == "\t"
            if indented, let section = nested {
                file.profiles[profile]!.sections[section, default: [:]][key] = value
            } else if value.isEmpty {
                nested = key
                file.profiles[profile]!.sections[key, default: [:]] = file.profiles[profile]!.sections[key] ?? [:]
            } else {
                nested = nil
                file.profiles[profile]!.values[key] = value
            }
        }
        return file
    }
}
