// Which credential source to use, in botocore's default order (botocore/credentials.py, create_credential_resolver).
//
//   1. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_SESSION_TOKEN] (skipped when --profile is given);
//   2. the profile's role_arn with source_profile or credential_source (Environment, Ec2InstanceMetadata,
//      EcsContainer) → STS AssumeRole with external_id, role_session_name, duration_seconds;
//   3. web identity: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN [+ AWS_ROLE_SESSION_NAME], or the profile's
//      web_identity_token_file + role_arn [+ role_session_name] → STS AssumeRoleWithWebIdentity;
//   4. SSO profiles (sso_session + [sso-session], or the legacy sso_start_url): the access token that
//      `aws sso login` cached in ~/.aws/sso/cache, traded for the role's credentials (GetRoleCredentials);
//   5. the profile's keys in the credentials file; 6. its credential_process; 7. its keys in the config file;
//   8. container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI / _FULL_URI);
//   9. EC2 instance metadata (IMDSv2), unless AWS_EC2_METADATA_DISABLED=true.
// The choice is made from the environment and the files alone: no endpoint is contacted here, and the
// metadata endpoints (8, 9) are only chosen when nothing before them is configured. Fetching happens in
// `CredentialsProvider`, on first use.
import Foundation

struct CredentialChain {
    var env: [String: String]
    var profileName: String
    /// --profile was given: the environment's keys are not used (botocore drops its env provider then).
    var explicitProfile: Bool
    var configFile: AWSConfigFile
    var credentialsFile: AWSConfigFile
    var configPath: String
    var credentialsPath: String
    /// The region from flags, environment or profile; nil when none is configured.
    var region: String?
    var caBundle: String?
    /// The home directory, for the SSO token cache (~/.aws/sso/cache).
    var home: String

    func nonEmpty(_ s: String?) -> String? { S3ClientConfiguration.nonEmpty(s) }

    /// A profile as botocore sees it: the config file's values overlaid with the credentials file's.
    func merged(_ name: String) -> AWSConfigFile.Profile? {
        let c = configFile.profiles[name]
        let k = credentialsFile.profiles[name]
        guard c != nil || k != nil else { return nil }
        var p = c ?? AWSConfigFile.Profile()
        for (key, value) in k?.values ?? [:] { p.values[key] = value }
        return p
    }

    func resolve() throws(ConfigurationError) -> CredentialsProvider {
        if !explicitProfile, let env = try environmentCredentials() { return .fixed(env) }
        let profile = merged(profileName)
        if let p = profile, p.value("role_arn") != nil, p.value("web_identity_token_file") == nil {
            return try assumeRole(profileName, p, visited: [profileName])
        }
        if let web = try webIdentity(profile, useEnvironment: true) { return web }
        if let p = profile, let sso = try sso(profileName, p) { return sso }
        for (file, path) in [(credentialsFile, credentialsPath)] {
            if let c = try staticKeys(file.profiles[profileName], path: path) { return .fixed(c) }
        }
        if let command = nonEmpty(profile?.value("credential_process")) {
            return try process(command, profile: profileName)
        }
        if let c = try staticKeys(configFile.profiles[profileName], path: configPath) { return .fixed(c) }
        if let container = try ContainerCredentialSource.fromEnvironment(env) {
            return CredentialsProvider(source: container)
        }
        if let imds = instanceMetadata(profile) {
            return CredentialsProvider(source: InstanceMetadataCredentialSource(client: imds))
        }
        throw ConfigurationError("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            + "add a [\(profileName)] profile to \(credentialsPath), or use --no-sign-request for a public bucket"
            + " (instance metadata is off: AWS_EC2_METADATA_DISABLED=true)")
    }

    func environmentCredentials() throws(ConfigurationError) -> Credentials? {
        let id = nonEmpty(env["AWS_ACCESS_KEY_ID"])
        let secret = nonEmpty(env["AWS_SECRET_ACCESS_KEY"])
        if let id, let secret {
            return Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: nonEmpty(env["AWS_SESSION_TOKEN"]),
                               source: "environment (AWS_ACCESS_KEY_ID)")
        }
        if (id == nil) != (secret == nil) {
            throw ConfigurationError("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both, or neither to use a profile")
        }
        return nil
    }

    func staticKeys(_ p: AWSConfigFile.Profile?, path: String, name: String? = nil) throws(ConfigurationError) -> Credentials? {
        guard let p else { return nil }
        let name = name ?? profileName
        let id = nonEmpty(p.value("aws_access_key_id"))
        let secret = nonEmpty(p.value("aws_secret_access_key"))
        if let id, let secret {
            return Credentials(accessKeyId: id, secretAccessKey: secret, sessionToken: nonEmpty(p.value("aws_session_token")),
                               source: "profile \(name) in \(path)")
        }
        if (id == nil) != (secret == nil) {
            throw ConfigurationError("profile '\(name)' in \(path) has only one of aws_access_key_id and aws_secret_access_key; add the other")
        }
        return nil
    }

    func process(_ command: String, profile: String) throws(ConfigurationError) -> CredentialsProvider {
        let source = ProcessCredentialSource(command: command, profile: profile)
        do {
            return CredentialsProvider(source: source, initial: try source.run())
        } catch {
            throw ConfigurationError(error.description)
        }
    }

    /// The SSO source of profile `name`, or nil when it has no SSO settings. Like botocore: `sso_session = S` reads
    /// `sso_start_url` and `sso_region` from `[sso-session S]` (the token cache file is named after S); the legacy
    /// form has them in the profile (the file is named after the start URL). Both need `sso_account_id` and
    /// `sso_role_name`. The portal endpoint is AWS_ENDPOINT_URL_SSO, AWS_ENDPOINT_URL or the profile's
    /// `sso = endpoint_url` (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true), else https://portal.sso.REGION.amazonaws.com.
    func sso(_ name: String, _ p: AWSConfigFile.Profile) throws(ConfigurationError) -> CredentialsProvider? {
        let sessionName = nonEmpty(p.value("sso_session"))
        guard sessionName != nil || nonEmpty(p.value("sso_start_url")) != nil else { return nil }
        var settings = p
        if let sessionName {
            guard let session = configFile.ssoSessions[sessionName] else {
                throw ConfigurationError("profile '\(name)' names sso_session = \(sessionName), but \(configPath) has no "
                    + "[sso-session \(sessionName)] section; add it (with sso_start_url and sso_region), or run `aws configure sso`")
            }
            for key in ["sso_start_url", "sso_region"] {
                if let session = nonEmpty(session.value(key)), let own = nonEmpty(p.value(key)), own != session {
                    throw ConfigurationError("profile '\(name)' sets \(key) = \(own), but its [sso-session \(sessionName)] "
                        + "sets \(key) = \(session); keep one")
                }
                if let v = session.value(key) { settings.values[key] = v }
            }
        }
        let required = ["sso_start_url", "sso_region", "sso_account_id", "sso_role_name"]
        let missing = required.filter { nonEmpty(settings.value($0)) == nil }
        guard missing.isEmpty else {
            throw ConfigurationError("profile '\(name)' is set up for AWS IAM Identity Center (SSO) but lacks "
                + "\(missing.joined(separator: ", ")); add them (`aws configure sso --profile \(name)` writes them)")
        }
        let ssoRegion = nonEmpty(settings.value("sso_region"))!
        var configured: String? = nil
        if env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"]?.lowercased() != "true" {
            configured = nonEmpty(env["AWS_ENDPOINT_URL_SSO"]) ?? nonEmpty(env["AWS_ENDPOINT_URL"])
                ?? nonEmpty(p.value("endpoint_url", section: "sso")) ?? nonEmpty(p.value("endpoint_url"))
        }
        let suffix = ssoRegion.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        let endpoint = try configured.map { u throws(ConfigurationError) in try S3Endpoint(url: u) }
            ?? S3Endpoint(scheme: "https", host: "portal.sso.\(ssoRegion).\(suffix)")
        let source = SSOCredentialSource(profile: name, session: sessionName, startURL: nonEmpty(settings.value("sso_start_url"))!,
                                         accountId: nonEmpty(settings.value("sso_account_id"))!,
                                         roleName: nonEmpty(settings.value("sso_role_name"))!,
                                         cacheDirectory: "\(home)/.aws/sso/cache", endpoint: endpoint, caBundle: caBundle)
        return CredentialsProvider(source: source)
    }

    func sts(_ profile: AWSConfigFile.Profile?) throws(ConfigurationError) -> STSClient {
        let (endpoint, signingRegion) = try STSClient.endpoint(env: env, profile: profile, region: region)
        return STSClient(endpoint: endpoint, region: signingRegion, caBundle: caBundle)
    }

    func duration(_ p: AWSConfigFile.Profile, _ name: String) throws(ConfigurationError) -> Int? {
        guard let s = nonEmpty(p.value("duration_seconds")) else { return nil }
        guard let n = Int(s), n >= 900 else {
            throw ConfigurationError("profile '\(name)' sets duration_seconds = \(s); use a whole number of seconds ≥ 900")
        }
        return n
    }

    /// Web identity from the environment (when `useEnvironment`) or the profile; the environment wins, as in botocore.
    func webIdentity(_ p: AWSConfigFile.Profile?, useEnvironment: Bool, name: String? = nil) throws(ConfigurationError) -> CredentialsProvider? {
        let e = useEnvironment ? env : [:]
        guard let tokenFile = nonEmpty(e["AWS_WEB_IDENTITY_TOKEN_FILE"]) ?? nonEmpty(p?.value("web_identity_token_file")) else { return nil }
        guard let role = nonEmpty(e["AWS_ROLE_ARN"]) ?? nonEmpty(p?.value("role_arn")) else {
            throw ConfigurationError("a web identity token file (\(tokenFile)) is set but no role: set AWS_ROLE_ARN or role_arn in the profile")
        }
        let session = nonEmpty(e["AWS_ROLE_SESSION_NAME"]) ?? nonEmpty(p?.value("role_session_name"))
        let source = WebIdentityCredentialSource(roleArn: role, tokenFile: tokenFile, sessionName: session,
                                                 durationSeconds: try p.map { p throws(ConfigurationError) in try duration(p, name ?? profileName) } ?? nil,
                                                 sts: try sts(p))
        return CredentialsProvider(source: source)
    }

    /// A profile's role_arn, assumed with its source_profile's or credential_source's credentials.
    func assumeRole(_ name: String, _ p: AWSConfigFile.Profile, visited: Set<String>) throws(ConfigurationError) -> CredentialsProvider {
        let role = nonEmpty(p.value("role_arn"))!
        let sourceProfile = nonEmpty(p.value("source_profile"))
        let credentialSource = nonEmpty(p.value("credential_source"))
        if p.value("mfa_serial") != nil {
            throw ConfigurationError("profile '\(name)' needs an MFA code (mfa_serial), which a mount cannot ask for; "
                + "export temporary credentials (`eval \"$(aws configure export-credentials --profile \(name) --format env)\"`) and retry")
        }
        let base: CredentialsProvider
        switch (sourceProfile, credentialSource) {
        case (.some, .some):
            throw ConfigurationError("profile '\(name)' sets both source_profile and credential_source; keep one")
        case (nil, nil):
            throw ConfigurationError("profile '\(name)' sets role_arn but neither source_profile nor credential_source; add one of them")
        case (let s?, nil):
            base = try sourceProfileCredentials(s, from: name, visited: visited)
        case (nil, let c?):
            base = try credentialSourceProvider(c, profile: name)
        }
        let source = AssumeRoleCredentialSource(roleArn: role, profile: name, sessionName: nonEmpty(p.value("role_session_name")),
                                                externalId: nonEmpty(p.value("external_id")), durationSeconds: try duration(p, name),
                                                source: base, sts: try sts(p))
        return CredentialsProvider(source: source)
    }

    func sourceProfileCredentials(_ name: String, from: String, visited: Set<String>) throws(ConfigurationError) -> CredentialsProvider {
        guard let p = merged(name) else {
            throw ConfigurationError("profile '\(from)' names source_profile '\(name)', which is not defined in \(credentialsPath) or \(configPath)")
        }
        // A profile may name itself as source for its own keys; any other loop is an error.
        if p.value("role_arn") != nil && p.value("web_identity_token_file") == nil && name != from {
            guard !visited.contains(name) else {
                throw ConfigurationError("source_profile loop through profile '\(name)'; break the cycle in \(configPath)")
            }
            return try assumeRole(name, p, visited: visited.union([name]))
        }
        if let web = try webIdentity(p, useEnvironment: false, name: name) { return web }
        if let sso = try sso(name, p) { return sso }
        if let c = try staticKeys(credentialsFile.profiles[name], path: credentialsPath, name: name) { return .fixed(c) }
        if let command = nonEmpty(p.value("credential_process")) { return try process(command, profile: name) }
        if let c = try staticKeys(configFile.profiles[name], path: configPath, name: name) { return .fixed(c) }
        throw ConfigurationError("source_profile '\(name)' of profile '\(from)' has no credentials; "
            + "add aws_access_key_id/aws_secret_access_key or credential_process to it")
    }

    func credentialSourceProvider(_ kind: String, profile: String) throws(ConfigurationError) -> CredentialsProvider {
        switch kind {
        case "Environment":
            guard let c = try environmentCredentials() else {
                throw ConfigurationError("profile '\(profile)' has credential_source = Environment but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set")
            }
            return .fixed(c)
        case "Ec2InstanceMetadata":
            guard let imds = instanceMetadata(merged(profile)) else {
                throw ConfigurationError("profile '\(profile)' has credential_source = Ec2InstanceMetadata but AWS_EC2_METADATA_DISABLED=true")
            }
            return CredentialsProvider(source: InstanceMetadataCredentialSource(client: imds))
        case "EcsContainer":
            guard let c = try ContainerCredentialSource.fromEnvironment(env) else {
                throw ConfigurationError("profile '\(profile)' has credential_source = EcsContainer but neither "
                    + "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor AWS_CONTAINER_CREDENTIALS_FULL_URI is set")
            }
            return CredentialsProvider(source: c)
        default:
            throw ConfigurationError("profile '\(profile)' has credential_source = \(kind); use Environment, Ec2InstanceMetadata or EcsContainer")
        }
    }

    /// The metadata client, unless AWS_EC2_METADATA_DISABLED=true.
    func instanceMetadata(_ p: AWSConfigFile.Profile?) -> InstanceMetadataClient? {
        if env["AWS_EC2_METADATA_DISABLED"]?.lowercased() == "true" { return nil }
        let endpoint = nonEmpty(env["AWS_EC2_METADATA_SERVICE_ENDPOINT"]) ?? nonEmpty(p?.value("ec2_metadata_service_endpoint"))
            ?? InstanceMetadataClient.defaultEndpoint
        let timeout = (nonEmpty(env["AWS_METADATA_SERVICE_TIMEOUT"]) ?? nonEmpty(p?.value("metadata_service_timeout"))).flatMap(Double.init) ?? 1
        return InstanceMetadataClient(endpoint: endpoint, timeout: timeout)
    }
}
