// swift-tools-version:6.0
// ckptfs: an S3 bucket as a POSIX directory for ML training.
//
// Layers, dependencies pointing one way:
//   ckptfs (CLI) → [FUSE adapter → filesystem core →] CkptS3 → CkptHTTP → CCurl
//                                                    ↘ CkptDigest → COpenSSL
// Only CkptHTTP touches libcurl, only CkptDigest touches OpenSSL, only the FUSE adapter touches libfuse.
import PackageDescription

let package = Package(
    name: "ckptfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ckptfs", targets: ["ckptfs"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C shims: only what Swift cannot import directly (macros, variadic functions).
        .target(name: "CFuse", path: "CModules/CFuse", linkerSettings: [.linkedLibrary("fuse3")]),
        .target(name: "CCurl", path: "CModules/CCurl", linkerSettings: [.linkedLibrary("curl")]),
        .target(name: "COpenSSL", path: "CModules/COpenSSL", linkerSettings: [.linkedLibrary("crypto")]),

        // Hashes and MACs (SHA-256, HMAC-SHA256, MD5, CRC32C) over OpenSSL.
        .target(name: "CkptDigest", dependencies: ["COpenSSL"]),
        // HTTP transport: libcurl multi interface on its own thread; async API; no Swift thread ever blocks.
        .target(name: "CkptHTTP", dependencies: ["CCurl", .product(name: "Logging", package: "swift-log")]),
        // S3 client: SigV4, operations, XML, retries, typed errors, configuration and credentials.
        .target(name: "CkptS3", dependencies: [
            "CkptHTTP", "CkptDigest", .product(name: "Logging", package: "swift-log"),
        ]),
        // Persistent, checksummed, size-bounded block cache on local disk.
        .target(name: "CkptCache", dependencies: ["CkptDigest"]),
        // The filesystem core: namespace, inodes, reads with read-ahead. No C module, no kernel.
        .target(name: "CkptFS", dependencies: ["CkptS3", "CkptCache", .product(name: "Logging", package: "swift-log")]),
        // The FUSE adapter: libfuse's low-level API onto the core (the only module using libfuse).
        .target(name: "CkptFUSE", dependencies: ["CFuse", "CkptFS", "CkptCache", .product(name: "Logging", package: "swift-log")]),
        // The command line.
        .executableTarget(name: "ckptfs", dependencies: [
            "CkptFUSE", "CkptFS", "CkptCache", "CkptS3", "CkptHTTP", "CkptDigest",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // Benchmark tool for the S3 client alone (bench/s3_download.py drives it).
        .executableTarget(name: "ckpt-s3bench", dependencies: ["CkptS3", "CkptFS", "CkptCache"], path: "bench/S3Bench"),

        // Shared by the test targets: a real SeaweedFS per test process, the fault server, the in-memory object
        // client and the fault-injecting wrapper client, helpers.
        .target(name: "CkptTestSupport", dependencies: ["CkptS3", "CkptHTTP", "CkptDigest"], path: "Tests/CkptTestSupport"),
        .testTarget(name: "CkptDigestTests", dependencies: ["CkptDigest"]),
        .testTarget(name: "CkptCacheTests", dependencies: ["CkptCache"]),
        .testTarget(name: "CkptFSTests", dependencies: ["CkptFS", "CkptS3", "CkptCache", "CkptDigest", "CkptTestSupport",
                                                   .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CkptHTTPTests", dependencies: ["CkptHTTP", "CkptDigest", "CkptTestSupport"]),
        .testTarget(name: "CkptS3Tests", dependencies: ["CkptS3", "CkptHTTP", "CkptDigest", "CkptTestSupport"],
                    exclude: ["Fixtures"]),
        .testTarget(name: "CFuseTests", dependencies: ["CFuse"]),
    ]
)
