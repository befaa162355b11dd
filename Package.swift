// swift-tools-version:6.0
// ckptfs: an S3 bucket as a POSIX directory for ML training.
//
// Layers, dependencies pointing one way:
//   CkptCommand (the `ckptfs` binary) → CkptFUSE (adapter) → CkptFS (core) → CkptCache, CkptS3 → CkptHTTP → CCurl
//                                                                                   ↘ CkptDigest → COpenSSL, CIsal
// `check` needs no kernel: the command line also talks to CkptS3 directly.
// Only CkptHTTP touches libcurl, only CkptDigest touches OpenSSL and ISA-L, only the FUSE adapter touches libfuse.
// File descriptors and errno go through swift-system (SystemPackage) and CkptSystem, which adds what it
// lacks here (a positional read that fills its buffer; O_DIRECT from the CGlibc shim).
import PackageDescription

let package = Package(
    name: "ckptfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ckptfs", targets: ["CkptCommand"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // Metrics: the swift-metrics API, exported as Prometheus text, served over HTTP by FlyingFox (a small
        // async HTTP server without SwiftNIO: about 25 s more of a first debug build here).
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
    ],
    targets: [
        // C shims: only what Swift cannot import directly (macros, variadic functions, _GNU_SOURCE constants).
        .target(name: "CFuse", path: "CModules/CFuse", linkerSettings: [.linkedLibrary("fuse3")]),
        .target(name: "CCurl", path: "CModules/CCurl", linkerSettings: [.linkedLibrary("curl")]),
        .target(name: "COpenSSL", path: "CModules/COpenSSL", linkerSettings: [.linkedLibrary("crypto")]),
        .target(name: "CGlibc", path: "CModules/CGlibc"),
        .target(name: "CIsal", path: "CModules/CIsal", linkerSettings: [.linkedLibrary("isal")]),

        // File I/O: swift-system's FileDescriptor/Errno, a positional read that fills its buffer, O_DIRECT.
        .target(name: "CkptSystem", dependencies: ["CGlibc", .product(name: "SystemPackage", package: "swift-system")]),

        // Hashes and MACs: SHA-256, HMAC-SHA256 and MD5 over OpenSSL; CRC32C (part checksums) over ISA-L; XXH64
        // (block and staged-file checksums) in Swift.
        .target(name: "CkptDigest", dependencies: ["COpenSSL", "CIsal"]),
        // HTTP transport: libcurl multi interface on its own thread; async API; no Swift thread ever blocks.
        .target(name: "CkptHTTP", dependencies: [
            "CCurl", "CkptSystem", .product(name: "SystemPackage", package: "swift-system"), .product(name: "Logging", package: "swift-log"),
        ]),
        // S3 client: SigV4, operations, XML, retries, typed errors, configuration and credentials.
        .target(name: "CkptS3", dependencies: [
            "CkptHTTP", "CkptDigest", .product(name: "Logging", package: "swift-log"),
        ]),
        // Persistent, checksummed, size-bounded block cache on local disk.
        .target(name: "CkptCache", dependencies: [
            "CkptDigest", "CkptSystem", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The filesystem core: namespace, reads with read-ahead, write-back with its journal, uploads. No C module, no kernel.
        .target(name: "CkptFS", dependencies: [
            "CkptS3", "CkptCache", "CkptSystem", .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The FUSE adapter: libfuse's low-level API onto the core (the only module using libfuse).
        .target(name: "CkptFUSE", dependencies: ["CFuse", "CkptFS", "CkptSystem", .product(name: "Logging", package: "swift-log")]),
        // The command line: the `ckptfs` binary (product), one file per subcommand.
        .executableTarget(name: "CkptCommand", dependencies: [
            "CkptFUSE", "CkptFS", "CkptCache", "CkptS3", "CkptHTTP", "CkptDigest", "CkptSystem",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "FlyingFox", package: "FlyingFox"),
        ]),

        // Benchmark tool for the S3 client alone (bench/s3_download.py drives it).
        .executableTarget(name: "ckpt-s3bench", dependencies: [
            "CkptS3", "CkptFS", "CkptCache", .product(name: "SystemPackage", package: "swift-system"),
        ], path: "bench/S3Bench"),

        // Shared by the test targets: a real SeaweedFS per test process, the fault server, the in-memory object
        // client and the fault-injecting wrapper client, helpers.
        .target(name: "CkptTestSupport", dependencies: ["CkptS3", "CkptDigest"], path: "Tests/CkptTestSupport"),
        .testTarget(name: "CkptDigestTests", dependencies: ["CkptDigest"]),
        .testTarget(name: "CkptSystemTests", dependencies: ["CkptSystem", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "CkptCacheTests", dependencies: ["CkptCache"]),
        .testTarget(name: "CkptFSTests", dependencies: ["CkptFS", "CkptS3", "CkptCache", "CkptDigest", "CkptTestSupport",
                                                   .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CkptHTTPTests", dependencies: [
            "CkptHTTP", "CkptDigest", "CkptSystem", "CkptTestSupport", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "CkptS3Tests", dependencies: ["CkptS3", "CkptHTTP", "CkptDigest", "CkptTestSupport"],
                    exclude: ["Fixtures"]),
        .testTarget(name: "CFuseTests", dependencies: ["CFuse"]),
        .testTarget(name: "CkptCommandTests", dependencies: [
            "CkptCommand", "CkptS3", "CkptFS", "CkptCache", "CkptTestSupport",
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
    ]
)
