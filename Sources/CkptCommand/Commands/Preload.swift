import ArgumentParser
import CkptCache
import CkptFS
import CkptS3
import Foundation
import Synchronization

/// `ckptfs preload PATH... [--files-from LIST] [--rank R --world-size W | --all] [--shard-by count|size] [--json]`:
/// fills a mount's block cache with this node's share of the files under PATH, through the mount's daemon (its
/// control socket), so that the first epoch reads local disk. `--check` reports what is cached, `--evict` drops it.
/// `ckptfs preload s3://BUCKET/PREFIX --cache-dir DIR` does the same with no mount, in this process, for the cache
/// directory a mount will use (holding its lock meanwhile).
struct Preload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fill a mount's block cache with files before they are read (this node's share of them).",
        discussion: """
            Lists PATH (files or directories under a ckptfs mount) in S3 and fetches the blocks of this node's share \
            that the cache does not hold yet, many files at once and large files in parts; blocks already cached are \
            checked and kept, so a rerun fetches only what is missing. The share: the keys sorted as S3 lists them, \
            every WORLD_SIZE-th from position RANK (sorted(keys)[rank::world_size]), or with --shard-by size balanced \
            bytes; RANK and WORLD_SIZE default to RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS or \
            OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE, else everything. A share larger than the cache is preloaded up \
            to the cache's bound (its first files in key order). Reads through the mount go first. Ctrl-C stops it; \
            what was stored stays cached.
            Exit status: 0 when the share is cached; 3 when it stopped at the cache bound; 130 when interrupted; \
            1 when files failed or a PATH names nothing (--check: 1 when not all of the share is cached).
            """)

    @Argument(help: "Files or directories under a ckptfs mount; or one s3://BUCKET[/PREFIX] with --cache-dir (no mount).")
    var paths: [String] = []
    @Option(name: .customLong("files-from"),
            help: "A file naming paths to preload, one per line (absolute, or relative to the current directory; blank lines and lines starting with # are skipped); - reads standard input.")
    var filesFrom: String?
    @Option(help: "This node's rank, 0 to world size - 1 (default: RANK, SLURM_PROCID or OMPI_COMM_WORLD_RANK).") var rank: Int?
    @Option(name: .customLong("world-size"), help: "How many nodes share the files (default: WORLD_SIZE, SLURM_NTASKS or OMPI_COMM_WORLD_SIZE).")
    var worldSize: Int?
    @Flag(help: "Preload all of PATH, whatever the rank variables say.") var all = false
    @Option(name: .customLong("shard-by"),
            help: "count: every world-size-th key in S3's order; size: balanced bytes, largest files first to the rank with the fewest bytes.")
    var shardBy: String = "count"
    /// Most GETs one preload may have in flight (`--parallel`). A mount keeps this many connections on top of
    /// its own (MountDaemon), so a preload through it never holds a connection a reader waits for.
    static let maxParallel = 64
    @Option(help: "Most GETs in flight, 1 to 64.") var parallel: Int = 32
    @Flag(help: "Fetch nothing: report how much of this rank's share is cached.") var check = false
    @Flag(name: .shortAndLong, help: "With --check: each file's part too.") var verbose = false
    @Flag(help: "Drop this rank's share from the cache.") var evict = false
    @Flag(help: "Print a JSON summary on standard output at the end.") var json = false
    @Flag(help: "Return once the preload has started: the mount's daemon goes on with it (ckptfs status shows its progress, --check what is cached; unmounting stops it).")
    var background = false
    @Option(help: "Fill the cache with the blocks of an access profile (recorded by ckptfs mount --record FILE), in the order it recorded them; PATH names the mount (or s3://BUCKET with --cache-dir).")
    var replay: String?
    @Option(help: "With --replay: at most this many bytes of blocks, e.g. 20GiB (default: up to the cache's bound).")
    var budget: String?
    @Option(name: .customLong("cache-dir"),
            help: "Without a mount (s3://BUCKET/PREFIX): the cache directory the mount will use (its --cache-dir).")
    var cacheDir: String?
    @Option(name: .customLong("cache-size"),
            help: "Without a mount: the cache's bound, as the mount will be given it (default: as ckptfs mount's: half the free space, 1 to 100 GiB).")
    var cacheSize: String?
    @OptionGroup var s3: S3Options

    /// The s3:// URL of a preload without a mount, if that is what was asked.
    var url: String? { paths.first { $0.hasPrefix("s3://") } }

    func validate() throws {
        if let url {
            guard paths.count == 1 else {
                throw ValidationError("a preload without a mount takes one s3://BUCKET[/PREFIX] and no mount paths; name the files under it with --files-from")
            }
            do { _ = try parseTarget(url) } catch { throw ValidationError(error.message) }
            guard cacheDir != nil else {
                throw ValidationError("a preload without a mount needs the cache directory the mount will use: --cache-dir DIR")
            }
            if let c = cacheSize, MountChecks.parseSize(c) == nil {
                throw ValidationError("--cache-size '\(c)' is not a size; write it like 20GiB, 512MiB or a number of bytes")
            }
        } else if cacheDir != nil || cacheSize != nil {
            throw ValidationError("--cache-dir and --cache-size are for a preload without a mount (s3://BUCKET/PREFIX); "
                + "a preload through a mount fills the mount's own cache")
        }
        guard !paths.isEmpty || filesFrom != nil else {
            throw ValidationError("give the files or directories to preload (paths under a ckptfs mount), or --files-from LIST")
        }
        if replay != nil {
            guard paths.count == 1, filesFrom == nil, !check, !evict, !all, rank == nil, worldSize == nil, shardBy == "count" else {
                throw ValidationError("--replay FILE takes the mount point (or s3://BUCKET with --cache-dir) and the blocks the profile "
                    + "recorded; leave out --files-from, --check, --evict and the share options")
            }
        }
        if let b = budget {
            guard replay != nil else { throw ValidationError("--budget is for --replay; a preload of paths keeps to the cache's bound") }
            guard let n = MountChecks.parseSize(b), n > 0 else {
                throw ValidationError("--budget '\(b)' is not a size; write it like 20GiB or 512MiB")
            }
        }
        guard !(check && evict) else { throw ValidationError("--check and --evict do different things; give one of them") }
        if background {
            guard url == nil else {
                throw ValidationError("--background needs a mount to go on with the preload; a preload without a mount runs in this command")
            }
            guard !check, !evict else { throw ValidationError("--background is for fetching; --check and --evict answer at once") }
        }
        guard PreloadShare.Strategy(rawValue: shardBy) != nil else {
            throw ValidationError("--shard-by must be 'count' (every world-size-th key) or 'size' (balanced bytes)")
        }
        guard (1...Preload.maxParallel).contains(parallel) else { throw ValidationError("--parallel must be between 1 and 64, like 32") }
        if all && (rank != nil || worldSize != nil) {
            throw ValidationError("--all preloads everything; leave out --rank and --world-size, or --all")
        }
        if (rank == nil) != (worldSize == nil) {
            throw ValidationError("give --rank and --world-size together (like --rank 0 --world-size 4), or neither")
        }
        if let rank, let worldSize {
            guard worldSize >= 1, rank >= 0, rank < worldSize else {
                throw ValidationError("--rank must be from 0 to --world-size - 1 (here 0 to \(max(0, worldSize - 1)))")
            }
        }
    }

    func run() async throws {
        let code: Int32
        do {
            if let url { code = try await preloadWithoutMount(url) } else { code = try preloadThroughMount() }
        } catch {
            throw fail(error.message)
        }
        if code != 0 { throw ExitCode(code) }
    }

    /// The paths given, on the command line and in `--files-from`.
    func allPaths() throws(UserFacingFailure) -> [String] {
        var out = url == nil ? paths : []
        if let filesFrom {
            let text: String
            if filesFrom == "-" {
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            } else {
                guard let data = FileManager.default.contents(atPath: filesFrom) else {
                    throw UserFacingFailure(message: "cannot read --files-from \(filesFrom): \(String(cString: strerror(errno)))")
                }
                text = String(decoding: data, as: UTF8.self)
            }
            for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
                let l = line.trimmingCharacters(in: .whitespaces)
                if !l.isEmpty && !l.hasPrefix("#") { out.append(l) }
            }
        }
        guard !out.isEmpty || url != nil else { throw UserFacingFailure(message: "--files-from \(filesFrom ?? "") names no path") }
        return out
    }

    /// This node's share: from the options, else the first pair of rank variables set, else all.
    static func share(rank: Int?, worldSize: Int?, all: Bool, strategy: PreloadShare.Strategy,
                      environment: [String: String]) throws(UserFacingFailure) -> (PreloadShare, source: String) {
        if all { return (PreloadShare(rank: 0, worldSize: 1, strategy: strategy), "--all") }
        if let rank, let worldSize { return (PreloadShare(rank: rank, worldSize: worldSize, strategy: strategy), "--rank/--world-size") }
        for (r, w) in [("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")] {
            guard let rv = environment[r], let wv = environment[w] else { continue }
            guard let rank = Int(rv.trimmingCharacters(in: .whitespaces)), let world = Int(wv.trimmingCharacters(in: .whitespaces)),
                  world >= 1, rank >= 0, rank < world else {
                throw UserFacingFailure(message: "\(r)=\(rv) and \(w)=\(wv) are not a rank from 0 to the world size - 1\n"
                    + "  fix: give --rank R --world-size W, or --all to preload everything")
            }
            return (PreloadShare(rank: rank, worldSize: world, strategy: strategy), "\(r)/\(w)")
        }
        return (PreloadShare(rank: 0, worldSize: 1, strategy: strategy), "no rank variables set")
    }

    /// What `--json` prints: the mount, the plan, and how the preload, check or eviction ended.
    struct Summary: Codable {
        var mountpoint: String?
        var url: String?
        var plan: PreloadPlan?
        var progress: PreloadProgress?
        var check: PreloadCheck?
        var eviction: PreloadEviction?
        var exitCode: Int32
    }

    func preloadThroughMount() throws(UserFacingFailure) -> Int32 {
        var mount: String?
        var relative: [String] = []
        for p in try allPaths() {
            let (mp, rel) = try ckptfsMount(containing: p)
            if let mount, mount != mp {
                throw UserFacingFailure(message: "\(p) is on the mount \(mp), the other paths on \(mount); preload one mount at a time")
            }
            mount = mp
            relative.append(rel)
        }
        let mp = mount!
        let (share, source) = try Self.share(rank: rank, worldSize: worldSize, all: all,
                                             strategy: PreloadShare.Strategy(rawValue: shardBy)!,
                                             environment: ProcessInfo.processInfo.environment)
        let given = paths.isEmpty ? "the paths of \(filesFrom!)" : paths.count == 1 ? paths[0] : "\(paths[0]) and \(paths.count - 1) more"
        var display = PreloadDisplay(place: replay.map { "the access profile \($0)" } ?? given, mountpoint: mp, shareSource: source)
        let action = replay != nil ? "replay" : check ? "check" : evict ? "evict" : "fetch"
        let request = Control.PreloadRequest(action: action, paths: relative, share: share, parallel: parallel, perFile: verbose,
                                             interval: display.interval, profile: replay.map(MountChecks.absolute),
                                             budget: budget.flatMap(MountChecks.parseSize), background: background ? true : nil)
        var plan: PreloadPlan?
        let final = try Control.preload(mp, request) { event in
            if let p = event.plan {
                plan = p
                if action == "fetch" || action == "replay" { display.plan(p) } else { for m in p.missing { display.say(missing: "\(mp)/\(m)") } }
            }
            if let p = event.progress, event.final != true { display.progress(p) }
        }
        var summary = Summary(mountpoint: mp, plan: plan, progress: final.progress, check: final.check, eviction: final.eviction, exitCode: 0)
        if background {
            FileHandle.standardError.write(Data(("ckptfs: preload: going on in the background in the daemon of \(mp); "
                + "ckptfs status \(mp) shows its progress, ckptfs preload ... --check what is cached\n").utf8))
            printJSON(summary)
            return 0
        }
        return finish(&summary, display: &display)
    }

    /// Reports how it ended, prints the JSON summary with `--json`, and returns the exit status.
    func finish(_ summary: inout Summary, display: inout PreloadDisplay) -> Int32 {
        summary.exitCode = report(summary, display: &display)
        printJSON(summary)
        return summary.exitCode
    }

    /// With `--json`: `summary` on stdout, one line.
    func printJSON(_ summary: Summary) {
        guard json else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try! encoder.encode(summary), as: UTF8.self))
    }

    /// `ckptfs preload s3://BUCKET[/PREFIX] --cache-dir DIR`: the same preload in this process, into a cache
    /// directory no mount is using (its lock is held until the end, so a mount started meanwhile waits or fails).
    /// The keys: everything under PREFIX (a directory, or one object), or with `--files-from` the paths it names,
    /// relative to PREFIX. Ctrl-C cancels the GETs in flight; a second one ends the command at once.
    func preloadWithoutMount(_ raw: String) async throws(UserFacingFailure) -> Int32 {
        let target = try parseTarget(raw)
        let listed = try allPaths()
        let config = try await s3.resolve()
        let logger = s3.logger()
        let dir = MountChecks.absolute(cacheDir!)
        try MountChecks.cacheDirectory(dir)
        let size = cacheSize.flatMap(MountChecks.parseSize) ?? MountChecks.defaultCacheSize(for: dir)
        let cache: BlockCache
        do {
            cache = try BlockCache(directory: dir, capacity: size)
        } catch {
            guard error.message.contains("in use") else { throw UserFacingFailure(message: error.message) }
            throw UserFacingFailure(message: "\(error.message.components(separatedBy: ";").first ?? error.message): a mount (or another "
                + "preload) holds it\n  fix: preload through that mount instead (ckptfs preload MOUNTPOINT/PATH), or wait until it ends")
        }
        defer { cache.unlock() }
        // The root the paths are relative to: with --files-from, PREFIX; otherwise PREFIX's parent, and PREFIX's
        // last part is the one path (a directory, or one object).
        var prefix = target.prefix
        while prefix.hasSuffix("/") { prefix.removeLast() }
        let root: String
        let paths: [String]
        if filesFrom != nil || prefix.isEmpty {
            root = prefix.isEmpty ? "" : prefix + "/"
            paths = filesFrom != nil ? listed : [""]
        } else {
            let slash = prefix.lastIndex(of: "/")
            root = slash.map { String(prefix[...$0]) } ?? ""
            paths = [slash.map { String(prefix[prefix.index(after: $0)...]) } ?? prefix]
        }
        let rootURL = root.isEmpty ? "s3://\(target.bucket)" : "s3://\(target.bucket)/\(root.dropLast())"
        let (share, source) = try Self.share(rank: rank, worldSize: worldSize, all: all,
                                             strategy: PreloadShare.Strategy(rawValue: shardBy)!,
                                             environment: ProcessInfo.processInfo.environment)
        var display = PreloadDisplay(place: raw, mountpoint: rootURL, shareSource: source)
        let preloader = Preloader(client: S3Client(configuration: config, logger: logger), bucket: target.bucket, root: root,
                                  cache: cache, options: FSOptions())
        let found: (objects: [PreloadObject], missing: [String])
        let run: PreloadRun
        if let replay {
            // The profile names whole keys: replayed against the bucket, whatever PREFIX says.
            display = PreloadDisplay(place: "the access profile \(replay)", mountpoint: "s3://\(target.bucket)", shareSource: source)
            let whole = Preloader(client: S3Client(configuration: config, logger: logger), bucket: target.bucket, root: "",
                                  cache: cache, options: FSOptions())
            do {
                run = try await whole.replay(AccessProfile.read(replay), budget: budget.flatMap(MountChecks.parseSize), parallel: parallel)
            } catch {
                throw UserFacingFailure(message: "replaying \(replay) failed: \(error.message)")
            }
            found = ([], [])
        } else {
            do { found = try await preloader.list(paths) } catch {
                throw UserFacingFailure(message: "listing \(raw) failed: \(error)")
            }
            run = preloader.prepare(found.objects, missing: found.missing, share: share, parallel: parallel)
        }
        var summary = Summary(url: raw, plan: run.plan, exitCode: 0)
        if check {
            for m in run.plan.missing { display.say(missing: "\(rootURL)/\(m)") }
            summary.check = preloader.check(share.select(found.objects), perFile: verbose)
            return finish(&summary, display: &display)
        }
        if evict {
            for m in run.plan.missing { display.say(missing: "\(rootURL)/\(m)") }
            summary.eviction = preloader.evict(share.select(found.objects))
            return finish(&summary, display: &display)
        }
        display.plan(run.plan)
        let task = Task { await run.run() }
        // The first Ctrl-C cancels the preload (it then says how far it got); a second one ends the command.
        signal(SIGINT, SIG_IGN)
        let interrupts = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        let count = Mutex(0)
        interrupts.setEventHandler {
            if count.withLock({ c in c += 1; return c }) > 1 { Foundation.exit(130) }
            task.cancel()
        }
        interrupts.resume()
        defer {
            interrupts.cancel()
            signal(SIGINT, SIG_DFL)
        }
        let shown = display
        let ticker = Task { () -> PreloadDisplay in
            var d = shown
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int64(d.interval * 1000)))
                if Task.isCancelled { break }
                d.progress(run.progress)
            }
            return d
        }
        summary.progress = await task.value
        ticker.cancel()
        display = await ticker.value
        return finish(&summary, display: &display)
    }

    /// Says how the preload, check or eviction ended (stderr; a check's report goes to stdout) and returns the exit
    /// status.
    func report(_ s: Summary, display: inout PreloadDisplay) -> Int32 {
        let plan = s.plan ?? PreloadPlan()
        if let c = s.check {
            var out = "preload check: \(grouped(c.filesCached)) of \(grouped(c.files)) file(s) cached (\(percent(c.filesCached, c.files))), "
                + "\(formatBytes(c.bytesCached)) of \(formatBytes(c.bytes)) (\(percent(c.bytesCached, c.bytes)))"
            if plan.share.worldSize > 1 { out += "; rank \(plan.share.rank) of \(plan.share.worldSize)" }
            if !json { print(out) }
            if let files = c.perFile, !json {
                for f in files {
                    let size = formatBytes(f.bytes)
                    print(String(format: "%6.1f%%  ", percent(f.bytesCached, f.bytes, value: true))
                        + String(repeating: " ", count: max(0, 10 - size.count)) + size + "  " + f.path)
                }
            }
            return c.filesCached == c.files && plan.missing.isEmpty ? 0 : 1
        }
        if let e = s.eviction {
            FileHandle.standardError.write(Data(("ckptfs: preload: evicted \(grouped(e.blocks)) block(s) (\(formatBytes(e.bytesFreed))) of "
                + "\(grouped(e.files)) file(s) from the cache\n").utf8))
            return plan.missing.isEmpty ? 0 : 1
        }
        guard let p = s.progress else { return 1 }
        display.finish(plan, p)
        return PreloadDisplay.exitCode(plan, p)
    }

    func percent(_ a: Int64, _ b: Int64, value: Bool) -> Double { b == 0 ? 100 : Double(a) * 100 / Double(b) }
    func percent(_ a: Int64, _ b: Int64) -> String { String(format: "%.1f%%", percent(a, b, value: true)) }
    func percent(_ a: Int, _ b: Int) -> String { percent(Int64(a), Int64(b)) }
}
