// Test support shared by the test targets: running commands, a real SeaweedFS for this test process,
// the fault-injecting server, deterministic data.
import CkptS3
import Foundation

/// Paths inside the repository.
public enum Repo {
    public static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    public static func path(_ rel: String) -> String { root.appendingPathComponent(rel).path }
}

/// Runs a command and returns its standard output; throws on a non-zero exit. Uses posix_spawn and
/// waitpid directly: Foundation's Process can miss the exit of a child that forked a daemon.
@discardableResult
public func run(_ args: [String], input: String? = nil) throws -> String {
    let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("ckptfs-run-\(UUID().uuidString)")
    let inPath = tmp.path + ".in", outPath = tmp.path + ".out"
    try Data((input ?? "").utf8).write(to: URL(fileURLWithPath: inPath))
    defer {
        unlink(inPath)
        unlink(outPath)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, inPath, O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    var pid: pid_t = 0
    let argv = args.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let rc = posix_spawnp(&pid, args[0], &actions, nil, argv, environ)
    guard rc == 0 else { throw NSError(domain: "run", code: Int(rc), userInfo: [NSLocalizedDescriptionKey: "cannot start \(args[0])"]) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let exited = status & 0x7f == 0
    let code = (status >> 8) & 0xff
    guard exited && code == 0 else {
        throw NSError(domain: "run", code: Int(code), userInfo: [NSLocalizedDescriptionKey: "\(args) failed with status \(status)"])
    }
    return out
}

/// A real SeaweedFS S3 server on loopback for this test process: started on first use by
/// scripts/seaweed.py (fresh data dir, free ports, SigV4 identities), stopped by a watchdog when
/// this process exits.
public final class SeaweedFS: @unchecked Sendable {
    public struct Info: Decodable {
        public var endpoint: String
        public var access_key: String
        public var secret_key: String
        public var region: String
        public var pid: Int32
        public var dir: String
        public var metrics: String
        public var https_endpoint: String?
        public var ca_bundle: String?
    }

    public let info: Info
    public static let bucket = "ckptfs-it"
    public static let versionedBucket = "ckptfs-it-versioned"

    private init() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ckptfs-seaweed-\(getpid())").path
        let json = try run(["python3", Repo.path("scripts/seaweed.py"), "start", "--dir", dir, "--bucket", Self.bucket,
                            "--bucket", Self.versionedBucket, "--tls", "--watch-pid", "\(getpid())", "--json"])
        info = try JSONDecoder().decode(Info.self, from: Data(json.utf8))
    }

    nonisolated(unsafe) private static var _shared: Result<SeaweedFS, Error>?
    private static let lock = NSLock()

    public static func shared() throws -> SeaweedFS {
        lock.lock()
        defer { lock.unlock() }
        if _shared == nil { _shared = Result { try SeaweedFS() } }
        return try _shared!.get()
    }

    public func configuration(secret: String? = nil, accessKey: String? = nil, retry: RetryPolicy = RetryPolicy()) throws -> S3ClientConfiguration {
        S3ClientConfiguration(endpoint: try S3Endpoint(url: info.endpoint), region: info.region, addressingStyle: .path,
                              credentials: Credentials(accessKeyId: accessKey ?? info.access_key, secretAccessKey: secret ?? info.secret_key),
                              retry: retry)
    }

    public func client(secret: String? = nil, accessKey: String? = nil) throws -> S3Client {
        S3Client(configuration: try configuration(secret: secret, accessKey: accessKey))
    }

    /// Runs Python with boto3 configured for this server, as an independent client.
    public func boto3(_ script: String) throws -> String {
        let prelude = """
            import boto3, hashlib, sys, json
            from botocore.config import Config
            s3 = boto3.client('s3', endpoint_url='\(info.endpoint)', aws_access_key_id='\(info.access_key)',
                              aws_secret_access_key='\(info.secret_key)', region_name='\(info.region)',
                              config=Config(s3={'addressing_style': 'path'}))

            """
        return try run(["python3", "-c", prelude + script]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Turns versioning of `bucket` on or suspends it (PutBucketVersioning, sent by boto3: ckptfs itself
    /// never changes a bucket's configuration).
    public func putBucketVersioning(_ bucket: String, enabled: Bool) throws {
        _ = try boto3("s3.put_bucket_versioning(Bucket='\(bucket)', VersioningConfiguration={'Status': '\(enabled ? "Enabled" : "Suspended")'})")
    }
}

/// A loopback server from Tests/Harness, run as `python3 SCRIPT ARGS...`: it prints its port on its first line
/// and stops when its standard input closes (when this object goes).
public final class HarnessServer {
    public let process = Process()
    let stdin = Pipe()
    public let port: Int

    public init(script: String, _ args: [String] = []) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Repo.path(script)] + args
        let out = Pipe()
        process.standardOutput = out
        process.standardInput = stdin
        try process.run()
        var line = Data()
        while true {
            let b = out.fileHandleForReading.readData(ofLength: 1)
            if b.isEmpty || b == Data("\n".utf8) { break }
            line += b
        }
        guard let p = Int(String(decoding: line, as: UTF8.self)) else {
            throw NSError(domain: "harness", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(script) printed no port"])
        }
        port = p
    }

    deinit {
        try? stdin.fileHandleForWriting.close()
        process.terminate()
        process.waitUntilExit()
    }
}

/// The misbehaving server of Tests/Harness/fault_server.py, one per test that needs it.
public final class FaultServer {
    let server: HarnessServer
    public var port: Int { server.port }

    public init() throws { server = try HarnessServer(script: "Tests/Harness/fault_server.py") }

    public var endpoint: String { "http://127.0.0.1:\(port)" }

    public func client(retry: RetryPolicy) throws -> S3Client {
        S3Client(configuration: S3ClientConfiguration(endpoint: try S3Endpoint(url: endpoint), region: "us-east-1",
                                                      addressingStyle: .path, credentials: nil, retry: retry))
    }

    public func requestCount(_ path: String) throws -> Int {
        Int(try run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen('\(endpoint)/_count\(path)').read().decode())"])
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

}

extension ObjectClient {
    /// Every object under `prefix`, following continuation tokens.
    public func listAllObjects(_ bucket: String, prefix: String? = nil) async throws(S3Error) -> [ObjectSummary] {
        var out: [ObjectSummary] = []
        var token: String? = nil
        repeat {
            let page = try await listObjectsV2(bucket, prefix: prefix, delimiter: nil, continuationToken: token,
                                               startAfter: nil, maxKeys: nil)
            out += page.objects
            token = page.isTruncated ? page.nextContinuationToken : nil
        } while token != nil
        return out
    }
}

/// Deterministic pseudo-random bytes.
public func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { buf in
        var i = 0
        while i + 8 <= count {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            buf.storeBytes(of: x, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count { x ^= x << 13; x ^= x >> 7; x ^= x << 17; buf[i] = UInt8(truncatingIfNeeded: x); i += 1 }
    }
    return out
}
