@testable import CkptS3
import Foundation
import XCTest

final class ConfigurationTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("ckptfs-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try """
        [default]
        aws_access_key_id = AKIADEFAULT
        aws_secret_access_key = defaultsecret

        [work]
        aws_access_key_id=AKIAWORK
        aws_secret_access_key=worksecret   # a comment
        aws_session_token = worktoken
        """.write(to: dir.appendingPathComponent("credentials"), atomically: true, encoding: .utf8)
        try """
        [default]
        region = eu-west-3

        [profile work]
        region = ap-south-1
        s3 =
          addressing_style = path
          endpoint_url = http://127.0.0.1:8333

        [profile onlyconfig]
        aws_access_key_id = AKIACONFIG
        aws_secret_access_key = configsecret
        endpoint_url = https://minio.example.com:9000

        [profile proc]
        credential_process = printf '{"Version":1,"AccessKeyId":"AKIAPROC","SecretAccessKey":"procsecret","SessionToken":"proctoken"}'

        [profile role]
        role_arn = arn:aws:iam::123:role/x
        source_profile = default

        [profile sso]
        sso_session = corp
        sso_account_id = 123
        sso_role_name = r

        [sso-session corp]
        sso_region = us-east-1
        """.write(to: dir.appendingPathComponent("config"), atomically: true, encoding: .utf8)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func env(_ extra: [String: String] = [:]) -> [String: String] {
        ["HOME": dir.path, "AWS_SHARED_CREDENTIALS_FILE": dir.appendingPathComponent("credentials").path,
         "AWS_CONFIG_FILE": dir.appendingPathComponent("config").path].merging(extra) { $1 }
    }

    func testDefaultProfileAndAWSEndpoint() throws {
        let c = try S3ClientConfiguration.resolve(environment: env())
        XCTAssertEqual(c.credentials?.accessKeyId, "AKIADEFAULT")
        XCTAssertEqual(c.credentials?.secretAccessKey, "defaultsecret")
        XCTAssertNil(c.credentials?.sessionToken)
        XCTAssertEqual(c.region, "eu-west-3")
        XCTAssertEqual(c.endpoint.description, "https://s3.eu-west-3.amazonaws.com")
        XCTAssertTrue(c.usesVirtualHost(bucket: "my-bucket"))
        XCTAssertFalse(c.usesVirtualHost(bucket: "my.dotted.bucket"), "dots break the wildcard certificate")
        XCTAssertFalse(c.usesVirtualHost(bucket: "Upper_Case"))
    }

    func testEnvironmentCredentialsWinOverProfileUnlessProfileIsExplicit() throws {
        let e = env(["AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SESSION_TOKEN": "envtoken"])
        let c = try S3ClientConfiguration.resolve(environment: e)
        XCTAssertEqual(c.credentials?.accessKeyId, "AKIAENV")
        XCTAssertEqual(c.credentials?.sessionToken, "envtoken")
        let p = try S3ClientConfiguration.resolve(.init(profile: "work"), environment: e)
        XCTAssertEqual(p.credentials?.accessKeyId, "AKIAWORK")
        XCTAssertEqual(p.credentials?.secretAccessKey, "worksecret", "inline comment stripped")
        XCTAssertEqual(p.credentials?.sessionToken, "worktoken")
    }

    func testAWSProfileSelectsProfileWithNestedS3Settings() throws {
        let c = try S3ClientConfiguration.resolve(environment: env(["AWS_PROFILE": "work"]))
        XCTAssertEqual(c.credentials?.accessKeyId, "AKIAWORK")
        XCTAssertEqual(c.region, "ap-south-1")
        XCTAssertEqual(c.addressingStyle, .path)
        XCTAssertEqual(c.endpoint.description, "http://127.0.0.1:8333")
        XCTAssertEqual(c.endpoint.authority, "127.0.0.1:8333")
    }

    func testPrecedenceOfRegionAndEndpoint() throws {
        let e = env(["AWS_PROFILE": "work", "AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "sa-east-1",
                     "AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3specific:2"])
        var c = try S3ClientConfiguration.resolve(environment: e)
        XCTAssertEqual(c.region, "us-west-2")
        XCTAssertEqual(c.endpoint.description, "http://s3specific:2")
        c = try S3ClientConfiguration.resolve(.init(endpointURL: "https://cli:3", region: "ca-central-1"), environment: e)
        XCTAssertEqual(c.region, "ca-central-1")
        XCTAssertEqual(c.endpoint.description, "https://cli:3")
        var e2 = e
        e2["AWS_REGION"] = nil
        e2["AWS_ENDPOINT_URL_S3"] = nil
        e2["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
        c = try S3ClientConfiguration.resolve(environment: e2)
        XCTAssertEqual(c.region, "sa-east-1")
        XCTAssertEqual(c.endpoint.description, "https://s3.sa-east-1.amazonaws.com")
    }

    func testCredentialsFromConfigFileAndCredentialProcess() throws {
        var c = try S3ClientConfiguration.resolve(.init(profile: "onlyconfig"), environment: env())
        XCTAssertEqual(c.credentials?.accessKeyId, "AKIACONFIG")
        XCTAssertEqual(c.endpoint.port, 9000)
        XCTAssertFalse(c.usesVirtualHost(bucket: "bucket"), "custom endpoints default to path style")
        c = try S3ClientConfiguration.resolve(.init(profile: "proc"), environment: env())
        XCTAssertEqual(c.credentials?.accessKeyId, "AKIAPROC")
        XCTAssertEqual(c.credentials?.sessionToken, "proctoken")
    }

    func testErrorsNameTheCauseAndTheFix() {
        func message(_ o: S3ClientConfiguration.Overrides, _ e: [String: String]) -> String {
            do { _ = try S3ClientConfiguration.resolve(o, environment: e); return "" } catch { return error.description }
        }
        XCTAssertTrue(message(.init(profile: "nope"), env()).contains("profile 'nope' is not defined"))
        XCTAssertTrue(message(.init(profile: "sso"), env()).contains("profile 'sso' is set up for AWS IAM Identity Center (SSO) but lacks sso_start_url"))
        let empty = ["HOME": dir.path, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/c", "AWS_CONFIG_FILE": "/nonexistent/f",
                     "AWS_EC2_METADATA_DISABLED": "true"]
        let none = message(.init(), empty)
        XCTAssertTrue(none.contains("no AWS credentials found") && none.contains("--no-sign-request"))
        XCTAssertTrue(message(.init(), empty.merging(["AWS_ACCESS_KEY_ID": "x"]) { $1 }).contains("only one of"))
        XCTAssertTrue(message(.init(endpointURL: "localhost:9000"), env()).contains("has no scheme"))
        XCTAssertTrue(message(.init(), env(["AWS_CA_BUNDLE": "/nonexistent/ca.pem"])).contains("AWS_CA_BUNDLE"))
        XCTAssertFalse(message(.init(profile: "work", region: "x"), env()).contains("worksecret"))
    }

    /// The chain picks a source from the environment and files alone; nothing is fetched while resolving.
    func testChainChoosesSourcesInBotocoreOrderWithoutContactingThem() throws {
        func source(_ o: S3ClientConfiguration.Overrides, _ e: [String: String]) throws -> String {
            try S3ClientConfiguration.resolve(o, environment: e).credentialsProvider?.source.name ?? "none"
        }
        let empty = ["HOME": dir.path, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/c", "AWS_CONFIG_FILE": "/nonexistent/f"]
        XCTAssertEqual(try source(.init(profile: "role"), env()), "assumed role arn:aws:iam::123:role/x via profile role")
        XCTAssertEqual(try source(.init(), empty), "EC2 instance metadata", "the last resort, chosen without a request")
        XCTAssertEqual(try source(.init(), empty.merging(["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/creds/x"]) { $1 }),
                       "container credentials")
        let web = empty.merging(["AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/w"]) { $1 }
        XCTAssertEqual(try source(.init(), web), "web identity role arn:aws:iam::1:role/w")
        XCTAssertEqual(try source(.init(), web.merging(["AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s"]) { $1 }),
                       "environment (AWS_ACCESS_KEY_ID)", "environment keys come first")
        XCTAssertEqual(try source(.init(), env(["AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn:aws:iam::1:role/w"])),
                       "web identity role arn:aws:iam::1:role/w", "web identity comes before the credentials file (botocore)")
        XCTAssertThrowsError(try source(.init(), empty.merging(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.1.2.3/creds"]) { $1 })) {
            XCTAssertTrue("\($0)".contains("loopback"))
        }
    }

    func testAnonymousAndPathStyleOverrides() throws {
        let empty = ["HOME": dir.path, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/c", "AWS_CONFIG_FILE": "/nonexistent/f"]
        let c = try S3ClientConfiguration.resolve(.init(forcePathStyle: true, noSignRequest: true), environment: empty)
        XCTAssertNil(c.credentials)
        XCTAssertEqual(c.addressingStyle, .path)
        XCTAssertEqual(c.region, "us-east-1")
    }

    func testEndpointParsing() throws {
        let e = try S3Endpoint(url: "HTTPS://Example.COM:443/base/")
        XCTAssertEqual(e.scheme, "https")
        XCTAssertEqual(e.authority, "example.com", "default port is not part of Host")
        XCTAssertEqual(e.basePath, "/base")
        XCTAssertTrue(try S3Endpoint(url: "http://127.0.0.1:9000").isIPOrLocalhost)
        XCTAssertEqual(try S3Endpoint(url: "http://[::1]:9000").authority, "[::1]:9000")
        XCTAssertThrowsError(try S3Endpoint(url: "ftp://x"))
        XCTAssertThrowsError(try S3Endpoint(url: "http://host:99999"))
    }
}
