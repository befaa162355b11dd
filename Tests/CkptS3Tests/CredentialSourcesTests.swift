import CkptDigest
import CkptTestSupport
@testable import CkptS3
import Foundation
import XCTest

/// Tests/Harness/credentials_standin.py on loopback: instance metadata, the container endpoint, STS and an S3
/// that recomputes each request's SigV4 with botocore and checks its session token.
final class CredentialStandIn {
    let server: HarnessServer
    var port: Int { server.port }

    init(_ args: [String] = []) throws {
        server = try HarnessServer(script: "Tests/Harness/credentials_standin.py", ["--max-seconds", "600"] + args)
    }

    var url: String { "http://127.0.0.1:\(port)" }

    struct Stats: Decodable {
        var fetches: [String: Int]
        var s3_ok: Int
        var s3_rejected: [String: Int]
        var akids_used: [String]
        var sts_calls: [String: Int]
    }

    func stats() throws -> Stats {
        let text = try CkptTestSupport.run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen('\(url)/_standin/stats').read().decode())"])
        return try JSONDecoder().decode(Stats.self, from: Data(text.utf8))
    }

    func control(_ what: String) throws {
        try CkptTestSupport.run(["python3", "-c", "import urllib.request;urllib.request.urlopen(urllib.request.Request('\(url)/_standin/\(what)', data=b''))"])
    }
}

/// For each credential source, botocore's default chain and ours are pointed at the same stand-in with the
/// same environment and files, and must resolve the same access key id, session token and region; then an S3
/// request signed with our credentials must pass the stand-in's botocore-recomputed SigV4 and token check.
final class CredentialSourcesTests: XCTestCase {
    static let role = "arn:aws:iam::123456789012:role/standin"
    static let webToken = "eyJ.standin.web-identity-token"
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("ckptfs-creds-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(Self.webToken.utf8).write(to: dir.appendingPathComponent("web-token"))
        try Data("container-secret-token".utf8).write(to: dir.appendingPathComponent("container-token"))
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    struct Oracle: Decodable {
        var access_key: String?
        var token: String?
        var region: String?
        var method: String?
        var expiry: String?
        var error: String?
    }

    /// botocore's answer for this environment (a clean one: nothing of this process's AWS_* leaks in).
    func oracle(_ env: [String: String], profile: String?) throws -> Oracle {
        let args = ["/usr/bin/env", "-i", "PATH=\(ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")"]
            + env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            + ["python3", Repo.path("Tests/Harness/credentials_oracle.py"), profile ?? ""]
        return try JSONDecoder().decode(Oracle.self, from: Data(try CkptTestSupport.run(args).utf8))
    }

    func baseEnv(_ extra: [String: String], config: String = "") throws -> [String: String] {
        let cfg = dir.appendingPathComponent("config")
        try config.write(to: cfg, atomically: true, encoding: .utf8)
        return ["HOME": dir.path, "AWS_CONFIG_FILE": cfg.path, "AWS_SHARED_CREDENTIALS_FILE": dir.appendingPathComponent("none").path,
                "AWS_EC2_METADATA_DISABLED": "true"].merging(extra) { $1 }
    }

    /// Resolves with botocore and with ckptfs, compares, then signs an S3 request with ckptfs's credentials.
    @discardableResult
    func compare(_ name: String, _ env: [String: String], profile: String? = nil, standIn s: CredentialStandIn,
                 expectSource: String) async throws -> Credentials {
        let o = try oracle(env, profile: profile)
        XCTAssertNil(o.error, name)
        var config = try S3ClientConfiguration.resolve(.init(profile: profile, endpointURL: s.url, forcePathStyle: true), environment: env)
        try await config.prepareCredentials()
        let c = try XCTUnwrap(config.credentials, name)
        XCTAssertEqual(c.accessKeyId, o.access_key, "\(name): access key id")
        XCTAssertEqual(c.sessionToken, o.token, "\(name): session token")
        XCTAssertEqual(config.region, o.region ?? "us-east-1", "\(name): region")
        XCTAssertEqual(c.expiration.map(S3Date.iso8601), o.expiry, "\(name): expiry")
        XCTAssertEqual(c.source, expectSource, name)
        XCTAssertFalse(c.description.contains(c.secretAccessKey) || c.description.contains(c.sessionToken ?? "-"), name)
        // Our signature and token pass the stand-in's botocore check.
        _ = try await S3Client(configuration: config).listObjectsV2("bucket", prefix: nil, delimiter: "/", continuationToken: nil,
                                                                    startAfter: nil, maxKeys: 10)
        XCTAssertTrue(try s.stats().akids_used.contains(c.accessKeyId), name)
        return c
    }

    func testEachSourceResolvesLikeBotocore() async throws {
        let s = try CredentialStandIn(["--container-token", "container-secret-token", "--external-id", "ext-42",
                                       "--static", "AKIASTATIC:staticsecret"])
        let token = dir.appendingPathComponent("web-token").path

        var env = try baseEnv(["AWS_EC2_METADATA_SERVICE_ENDPOINT": s.url])
        env.removeValue(forKey: "AWS_EC2_METADATA_DISABLED")
        try await compare("IMDSv2 with the region from metadata", env, standIn: s, expectSource: "instance profile standin-role")

        env = try baseEnv(["AWS_CONTAINER_CREDENTIALS_FULL_URI": s.url + "/container/credentials",
                           "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": dir.appendingPathComponent("container-token").path,
                           "AWS_DEFAULT_REGION": "eu-west-1"])
        try await compare("container (EKS Pod Identity style)", env, standIn: s, expectSource: "container credentials")

        env = try baseEnv(["AWS_CONTAINER_CREDENTIALS_FULL_URI": s.url + "/container/credentials",
                           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-secret-token"])
        try await compare("container with a token variable", env, standIn: s, expectSource: "container credentials")

        env = try baseEnv(["AWS_WEB_IDENTITY_TOKEN_FILE": token, "AWS_ROLE_ARN": Self.role, "AWS_ROLE_SESSION_NAME": "trainer",
                           "AWS_ENDPOINT_URL_STS": s.url, "AWS_DEFAULT_REGION": "us-west-2"])
        try await compare("web identity from the environment (IRSA)", env, standIn: s, expectSource: "web identity role \(Self.role)")

        env = try baseEnv(["AWS_ENDPOINT_URL_STS": s.url], config: """
            [profile web]
            web_identity_token_file = \(token)
            role_arn = \(Self.role)
            region = eu-central-1
            """)
        try await compare("web identity from a profile", env, profile: "web", standIn: s, expectSource: "web identity role \(Self.role)")

        let roleProfiles = """
            [profile base]
            aws_access_key_id = AKIASTATIC
            aws_secret_access_key = staticsecret

            [profile role]
            role_arn = \(Self.role)
            source_profile = base
            external_id = ext-42
            role_session_name = ckpt
            duration_seconds = 3600
            region = us-west-2

            [profile chained]
            role_arn = \(Self.role)
            source_profile = role
            external_id = ext-42
            region = ap-south-1

            [profile ecs-role]
            role_arn = \(Self.role)
            credential_source = EcsContainer
            external_id = ext-42
            region = eu-north-1
            """
        env = try baseEnv(["AWS_ENDPOINT_URL_STS": s.url, "AWS_PROFILE": "role"], config: roleProfiles)
        try await compare("assume role via source_profile", env, standIn: s, expectSource: "assumed role \(Self.role) via profile role")
        env = try baseEnv(["AWS_ENDPOINT_URL_STS": s.url], config: roleProfiles)
        try await compare("role chained through a role", env, profile: "chained", standIn: s,
                          expectSource: "assumed role \(Self.role) via profile chained")
        env = try baseEnv(["AWS_ENDPOINT_URL_STS": s.url, "AWS_CONTAINER_CREDENTIALS_FULL_URI": s.url + "/container/credentials",
                           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "container-secret-token"], config: roleProfiles)
        try await compare("assume role with credential_source = EcsContainer", env, profile: "ecs-role", standIn: s,
                          expectSource: "assumed role \(Self.role) via profile ecs-role")

        let st = try s.stats()
        XCTAssertEqual(st.s3_rejected, [:], "every request of ours passed botocore's signature check")
        XCTAssertGreaterThanOrEqual(st.sts_calls["AssumeRole"] ?? 0, 8, "both sides called STS, chained roles twice")
    }

    /// Writes the token cache entry `aws sso login` leaves for `key` (an sso-session name, or a legacy start URL).
    func cacheSSOToken(_ key: String, token: String, expiresIn seconds: TimeInterval) throws {
        let cache = dir.appendingPathComponent(".aws/sso/cache")
        try FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
        let doc: [String: Any] = ["startUrl": "https://corp.awsapps.com/start", "region": "us-east-1", "accessToken": token,
                                  "expiresAt": S3Date.iso8601(Date().addingTimeInterval(seconds))]
        try JSONSerialization.data(withJSONObject: doc).write(to: cache.appendingPathComponent("\(Digest.sha1(key).hexString).json"))
    }

    static let ssoProfiles = """
        [profile sso]
        sso_session = corp
        sso_account_id = 123456789012
        sso_role_name = SSOTrainer
        region = eu-west-1

        [sso-session corp]
        sso_start_url = https://corp.awsapps.com/start
        sso_region = us-east-1
        sso_registration_scopes = sso:account:access

        [profile legacy]
        sso_start_url = https://legacy.awsapps.com/start
        sso_region = us-east-2
        sso_account_id = 123456789012
        sso_role_name = SSOTrainer

        [profile other-role]
        sso_session = corp
        sso_account_id = 123456789012
        sso_role_name = NotMine

        [profile role-from-sso]
        role_arn = \(role)
        source_profile = sso
        region = ap-south-1
        """

    /// SSO profiles (an sso-session, and the legacy form): the token `aws sso login` cached is traded for the
    /// role's credentials at the SSO portal (the stand-in), exactly as botocore does; also as the source_profile
    /// of a role. An expired login, a missing one and a role the user may not use each fail naming the fix.
    func testSSOProfilesResolveLikeBotocore() async throws {
        let s = try CredentialStandIn(["--sso-token", "cached-sso-token"])
        try cacheSSOToken("corp", token: "cached-sso-token", expiresIn: 3600)
        try cacheSSOToken("https://legacy.awsapps.com/start", token: "cached-sso-token", expiresIn: 3600)
        let env = try baseEnv(["AWS_ENDPOINT_URL_SSO": s.url, "AWS_ENDPOINT_URL_STS": s.url], config: Self.ssoProfiles)
        let sso = try await compare("SSO profile with an sso-session", env, profile: "sso", standIn: s,
                                    expectSource: "SSO role SSOTrainer in account 123456789012")
        XCTAssertTrue(sso.accessKeyId.hasPrefix("ASIASSO"), sso.accessKeyId)
        XCTAssertEqual(try oracle(env, profile: "sso").method, "sso")
        try await compare("legacy SSO profile", env, profile: "legacy", standIn: s, expectSource: "SSO role SSOTrainer in account 123456789012")
        try await compare("role with an SSO source_profile", env, profile: "role-from-sso", standIn: s,
                          expectSource: "assumed role \(Self.role) via profile role-from-sso")
        XCTAssertGreaterThanOrEqual(try s.stats().fetches["SSO"] ?? 0, 6, "both sides asked the portal")

        func failure(_ profile: String, _ environment: [String: String]) async throws -> String {
            var config = try S3ClientConfiguration.resolve(.init(profile: profile, endpointURL: s.url), environment: environment)
            do {
                try await config.prepareCredentials()
                XCTFail("\(profile): resolved")
                return ""
            } catch {
                XCTAssertFalse(error.description.contains("cached-sso-token"), "the access token never shows")
                return error.description
            }
        }
        var message = try await failure("other-role", env)
        XCTAssertTrue(message.contains("refused role NotMine in account 123456789012 (HTTP 403)") && message.contains("fix:"), message)
        try cacheSSOToken("corp", token: "cached-sso-token", expiresIn: -60)
        message = try await failure("sso", env)
        XCTAssertTrue(message.contains("the SSO login expired at") && message.contains("aws sso login --profile sso")
                      && message.contains("--sso-session corp"), message)
        try cacheSSOToken("corp", token: "a-token-the-portal-does-not-know", expiresIn: 3600)
        message = try await failure("sso", env)
        XCTAssertTrue(message.contains("refused the cached login (HTTP 401") && message.contains("aws sso login --profile sso"), message)
        try FileManager.default.removeItem(at: dir.appendingPathComponent(".aws/sso/cache"))
        message = try await failure("legacy", env)
        XCTAssertTrue(message.contains("no SSO login is cached") && message.contains("aws sso login --profile legacy"), message)
    }


    /// secret nor the session token.
    func testCheckPrintsSourceAndExpiryButNoSecret() async throws {
        let binary = Repo.path(".build/debug/ckptfs")
        guard FileManager.default.isExecutableFile(atPath: binary) else { throw XCTSkip("no \(binary); run swift build first") }
        let s = try CredentialStandIn()
        let env = try baseEnv(["AWS_WEB_IDENTITY_TOKEN_FILE": dir.appendingPathComponent("web-token").path,
                               "AWS_ROLE_ARN": Self.role, "AWS_ENDPOINT_URL_STS": s.url])
        var config = try S3ClientConfiguration.resolve(.init(endpointURL: s.url), environment: env)
        try await config.prepareCredentials()
        let c = try XCTUnwrap(config.credentials)
        let out = try CkptTestSupport.run(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin"] + env.map { "\($0.key)=\($0.value)" }
            + ["/bin/sh", "-c", "'\(binary)' check --endpoint-url \(s.url) --force-path-style --log-level trace s3://bucket/p 2>&1"])
        XCTAssertTrue(out.contains("credentials: \(c.accessKeyId) from web identity role \(Self.role), expires "), out)
        XCTAssertTrue(out.contains("is reachable"), out)
        XCTAssertFalse(out.contains(c.secretAccessKey), "the secret never shows")
        XCTAssertFalse(out.contains(try XCTUnwrap(c.sessionToken)), "the session token never shows")
        XCTAssertFalse(out.contains(Self.webToken), "the web identity token never shows")
    }

    /// Refused credentials name the source and the fix, and never show a secret or token.
    func testFailuresNameSourceAndFixWithoutSecrets() async throws {
        let s = try CredentialStandIn(["--container-token", "right-token"])
        let env = try baseEnv(["AWS_CONTAINER_CREDENTIALS_FULL_URI": s.url + "/container/credentials",
                               "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong-token-value"])
        var config = try S3ClientConfiguration.resolve(.init(endpointURL: s.url), environment: env)
        do {
            try await config.prepareCredentials()
            XCTFail("a wrong authorization token must be refused")
        } catch {
            XCTAssertTrue(error.description.contains("container credentials") && error.description.contains("fix:"), error.description)
            XCTAssertFalse(error.description.contains("wrong-token-value"))
        }
        let bad = dir.appendingPathComponent("bad-token")
        try Data("secret-jwt-that-must-not-show".utf8).write(to: bad)
        let web = try baseEnv(["AWS_WEB_IDENTITY_TOKEN_FILE": bad.path, "AWS_ROLE_ARN": Self.role, "AWS_ENDPOINT_URL_STS": s.url])
        config = try S3ClientConfiguration.resolve(.init(endpointURL: s.url), environment: web)
        do {
            try await config.prepareCredentials()
            XCTFail("a wrong web identity token must be refused")
        } catch {
            XCTAssertTrue(error.description.contains("InvalidIdentityToken") && error.description.contains("trust policy"), error.description)
            XCTAssertFalse(error.description.contains("secret-jwt"))
        }
        // Nothing listens on the metadata endpoint: a fast failure that names the fix.
        var imds = try baseEnv(["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"])
        imds.removeValue(forKey: "AWS_EC2_METADATA_DISABLED")
        config = try S3ClientConfiguration.resolve(.init(endpointURL: s.url), environment: imds)
        let start = Date()
        do {
            try await config.prepareCredentials()
            XCTFail("no metadata service")
        } catch {
            XCTAssertTrue(error.description.contains("instance profile") || error.description.contains("AWS_ACCESS_KEY_ID"), error.description)
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 3)
    }

    /// Credentials valid 16 s are refreshed by the timer at half-life while requests keep going; a token the
    /// server revokes is refreshed and the request retried, also a HEAD (whose answer has no error code); no
    /// request fails.
    func testRefreshBeforeExpiryAndAfterExpiredToken() async throws {
        let s = try CredentialStandIn(["--lifetime", "16", "--rotate"])
        let env = try baseEnv(["AWS_CONTAINER_CREDENTIALS_FULL_URI": s.url + "/container/credentials"])
        var config = try S3ClientConfiguration.resolve(.init(endpointURL: s.url, forcePathStyle: true), environment: env)
        try await config.prepareCredentials()
        let provider = try XCTUnwrap(config.credentialsProvider)
        let client = S3Client(configuration: config)
        let end = Date().addingTimeInterval(34)
        var n = 0
        while Date() < end {
            n += 1
            let body = Array("checkpoint \(n)".utf8)
            _ = try await client.putObject("bucket", "ckpt/\(n)", body: .bytes(body), options: .init())
            let (_, got) = try await client.getObject("bucket", "ckpt/\(n)", range: nil, ifMatch: nil, versionId: nil)
            XCTAssertEqual(got, body)
            try await Task.sleep(for: .milliseconds(500))
        }
        var st = try s.stats()
        XCTAssertGreaterThanOrEqual(st.fetches["ECS"] ?? 0, 4, "refreshed at half-life: about every 8 s")
        XCTAssertGreaterThanOrEqual(st.akids_used.count, 4, "requests used each new key")
        XCTAssertEqual(st.s3_rejected, [:], "no request went out with expired credentials")
        XCTAssertGreaterThanOrEqual(provider.status.refreshes, 3)

        // The timer refreshes an idle provider too.
        let before = st.fetches["ECS"] ?? 0
        try await Task.sleep(for: .seconds(9))
        XCTAssertGreaterThan(try s.stats().fetches["ECS"] ?? 0, before, "background refresh without requests")

        // The server revokes every token: the next request gets ExpiredToken, refreshes, and succeeds.
        try s.control("expire")
        _ = try await client.listObjectsV2("bucket", prefix: nil, delimiter: nil, continuationToken: nil, startAfter: nil, maxKeys: 5)
        st = try s.stats()
        XCTAssertEqual(st.s3_rejected["ExpiredToken"], 1)
        // Again, for HEAD: its answer has no body to say ExpiredToken, only 400 (a lookup failed with EIO so).
        try s.control("expire")
        let info = try await client.headObject("bucket", "ckpt/1")
        XCTAssertEqual(info.size, Int64("checkpoint 1".utf8.count))
        XCTAssertEqual(try s.stats().s3_rejected["ExpiredToken"], 2)
        provider.shutdown()
    }
}
