// ckpt-s3bench: measures the S3 client alone (no mount). `download s3://B/K FILE` fetches an object
// with parallel ranged GETs into FILE and prints one JSON line with the figures.
// Configuration comes from the environment exactly as for ckptfs (AWS_ENDPOINT_URL, credentials...).
import CkptCache
import CkptFS
import CkptS3
import Foundation
import SystemPackage

func usage() -> Never {
    FileHandle.standardError.write(Data(("usage: ckpt-s3bench download s3://BUCKET/KEY FILE [--part-size MiB] [--concurrency N]\n"
        + "       ckpt-s3bench coreread s3://BUCKET/KEY CACHE_DIR   (the filesystem core alone, 1 MiB sequential reads)\n").utf8))
    exit(2)
}

let args = CommandLine.arguments
if args.count == 4, args[1] == "coreread" { await coreRead(); exit(0) }
guard args.count >= 4, args[1] == "download" else { usage() }
var partMiB: Int64 = 8
var concurrency = 16
var i = 4
while i < args.count {
    switch args[i] {
    case "--part-size": partMiB = Int64(args[i + 1]) ?? partMiB; i += 2
    case "--concurrency": concurrency = Int(args[i + 1]) ?? concurrency; i += 2
    default: usage()
    }
}
do throws(any Error) {
    let url = try S3URL(args[2])
    let config = try S3ClientConfiguration.resolve(.init(forcePathStyle: true))
    let client = S3Client(configuration: config)
    let file = try FileDescriptor.open(args[3], .writeOnly, options: [.create, .truncate],
                                       permissions: [.ownerReadWrite, .groupRead, .otherRead])
    defer { try? file.close() }
    let report = try await client.download(url.bucket, url.prefix, to: file, partSize: partMiB << 20, concurrency: concurrency)
    print("{\"bytes\": \(report.bytes), \"seconds\": \(report.seconds), \"requests\": \(report.requests), "
        + "\"part_size\": \(partMiB << 20), \"concurrency\": \(concurrency)}")
} catch {
    FileHandle.standardError.write(Data("ckpt-s3bench: \(error)\n".utf8))
    exit(1)
}

/// Reads an object through the filesystem core as the kernel would (1 MiB sequential reads), no FUSE.
func coreRead() async {
    do throws(any Error) {
        let url = try S3URL(args[2])
        let config = try S3ClientConfiguration.resolve(.init(forcePathStyle: true))
        let cache = try BlockCache(directory: args[3], capacity: 8 << 30)
        let key = url.prefix
        let parentKey = key.contains("/") ? String(key[..<key.lastIndex(of: "/")!]) : ""
        let name = String(key.split(separator: "/").last!)
        let fs = try FileSystem(client: S3Client(configuration: config), bucket: url.bucket, prefix: parentKey, cache: cache, options: FSOptions())
        let attr = try await fs.lookup(parent: FileSystem.rootIno, name: name)
        let h = try await fs.open(ino: attr.ino, flags: O_RDONLY).handle
        let start = ContinuousClock.now
        var offset: Int64 = 0
        while true {
            let segs = try await fs.read(handle: h, offset: offset, size: 1 << 20)
            if segs.isEmpty { break }
            for s in segs { offset += Int64(s.count) }
        }
        let d = ContinuousClock.now - start
        let secs = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        print("{\"bytes\": \(offset), \"seconds\": \(secs), \"gets\": \(fs.stats.getRequests)}")
    } catch {
        FileHandle.standardError.write(Data("ckpt-s3bench: \(error)\n".utf8))
        exit(1)
    }
}
