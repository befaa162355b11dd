// The steps of a model run, how they print as Swift (a failing sequence becomes a regression test by pasting
// it), and the random generator of sequences.
import CkptTestSupport
import Foundation

/// One step of a model run. Handles are numbered by the step that opens them (`h:`); a step naming a handle that
/// is not open, or a change by the other client the model cannot predict, is skipped, so a shrunk sequence
/// still runs.
indirect enum Step: Equatable, Sendable, CustomStringConvertible {
    /// How open(2) opens.
    enum Mode: Equatable, Sendable {
        /// O_RDONLY
        case read
        /// O_RDWR: in place.
        case write
        /// O_RDWR|O_TRUNC
        case truncate
        /// O_RDWR|O_CREAT
        case create
        /// O_RDWR|O_CREAT|O_TRUNC (fopen "w")
        case createTruncate
        /// O_RDWR|O_CREAT|O_EXCL
        case createExclusive

        var write: Bool { self != .read }
        var create: Bool { self == .create || self == .createTruncate || self == .createExclusive }
        var truncate: Bool { self == .truncate || self == .createTruncate }
        var exclusive: Bool { self == .createExclusive }
    }

    case open(String, h: Int, Mode)
    /// pwrite of `count` bytes of `contents(count, seed:)` at `at`.
    case write(h: Int, at: Int, count: Int, seed: Int)
    case read(h: Int, at: Int, count: Int)
    case ftruncate(h: Int, to: Int)
    case truncate(String, to: Int)
    /// close() of a duplicate descriptor: the handle stays open.
    case closeDup(h: Int)
    case close(h: Int)
    /// fsync(): S3 is drained meanwhile (the held uploads go), since a durable fsync waits for S3.
    case fsync(h: Int)
    case unlink(String)
    case mkdir(String)
    case rmdir(String)
    case rename(String, String, noReplace: Bool)
    /// Another client puts `contents(count, seed:)` at the key.
    case remotePut(String, count: Int, seed: Int)
    case remoteDelete(String)
    /// The held uploads and deletes go and `flushAll` waits for every change (with `faults` in force meanwhile);
    /// then S3 is compared with the model and uploads and deletes are held again.
    case drain(faults: [Fault])
    /// The oldest held upload or delete request goes on (and S3 answers it).
    case releaseOne
    /// Waits (up to 5 s) until `count` upload requests are held: pins down that uploads are in flight before the
    /// next step (regression tests use it; the generator does not).
    case awaitHeld(Int)
    /// The process dies: nothing reaches S3 any more (with `landing`, held upload requests land first, their
    /// replies lost); a new filesystem over the same cache directory recovers.
    case crash(landing: Bool)
    /// `step` runs with `fault` in force; it may fail with EIO (then it changed nothing).
    case faulty(Fault, Step)

    var description: String { swift }
}

/// A fault for one step (or one drain), as the fault-injecting client's rule.
struct Fault: Equatable, Sendable, CustomStringConvertible {
    enum Which: Equatable, Sendable {
        case nth(Int)
        case first(Int)
        case all
    }
    enum Kind: Equatable, Sendable {
        case slowDown, internalError, connectionReset, timeout
    }
    enum What: Equatable, Sendable {
        case fail(Kind)
        /// The request takes effect and its reply is lost.
        case failAfter(Kind)
        case cutBody(after: Int)
        case delay(ms: Int)
    }

    var operations: [String]
    var which: Which
    var what: What

    init(_ operations: [String], _ which: Which, _ what: What) {
        self.operations = operations
        self.which = which
        self.what = what
    }

    var description: String { swift }

    /// Installs the rule on `client`.
    func install(on client: FaultInjectingClient) -> FaultInjectingClient.RuleID {
        let calls: FaultInjectingClient.Calls
        switch which {
        case .nth(let n): calls = .nth(n)
        case .first(let n): calls = .first(n)
        case .all: calls = .all
        }
        func fault(_ k: Kind) -> FaultInjectingClient.Fault {
            switch k {
            case .slowDown: return .slowDown
            case .internalError: return .internalError
            case .connectionReset: return .connectionReset
            case .timeout: return .timeout
            }
        }
        let action: FaultInjectingClient.Action
        switch what {
        case .fail(let k): action = .fail(fault(k))
        case .failAfter(let k): action = .failAfter(fault(k))
        case .cutBody(let n): action = .cutBody(after: n)
        case .delay(let ms): action = .delay(.milliseconds(ms))
        }
        return client.add(FaultInjectingClient.Match(operations: Set(operations)), calls, action)
    }
}

// MARK: Printing as Swift

extension Step {
    /// The step as Swift source, as a `[Step]` literal takes it.
    var swift: String {
        func q(_ s: String) -> String { "\"\(s)\"" }
        switch self {
        case .open(let p, let h, let m): return ".open(\(q(p)), h: \(h), .\(m))"
        case .write(let h, let at, let n, let seed): return ".write(h: \(h), at: \(at), count: \(n), seed: \(seed))"
        case .read(let h, let at, let n): return ".read(h: \(h), at: \(at), count: \(n))"
        case .ftruncate(let h, let n): return ".ftruncate(h: \(h), to: \(n))"
        case .truncate(let p, let n): return ".truncate(\(q(p)), to: \(n))"
        case .closeDup(let h): return ".closeDup(h: \(h))"
        case .close(let h): return ".close(h: \(h))"
        case .fsync(let h): return ".fsync(h: \(h))"
        case .unlink(let p): return ".unlink(\(q(p)))"
        case .mkdir(let p): return ".mkdir(\(q(p)))"
        case .rmdir(let p): return ".rmdir(\(q(p)))"
        case .rename(let a, let b, let nr): return ".rename(\(q(a)), \(q(b)), noReplace: \(nr))"
        case .remotePut(let p, let n, let seed): return ".remotePut(\(q(p)), count: \(n), seed: \(seed))"
        case .remoteDelete(let p): return ".remoteDelete(\(q(p)))"
        case .drain(let faults): return ".drain(faults: [\(faults.map(\.swift).joined(separator: ", "))])"
        case .releaseOne: return ".releaseOne"
        case .awaitHeld(let n): return ".awaitHeld(\(n))"
        case .crash(let landing): return ".crash(landing: \(landing))"
        case .faulty(let f, let s): return ".faulty(\(f.swift), \(s.swift))"
        }
    }
}

extension Fault {
    var swift: String {
        let ops = "[" + operations.map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        let which: String
        switch self.which {
        case .nth(let n): which = ".nth(\(n))"
        case .first(let n): which = ".first(\(n))"
        case .all: which = ".all"
        }
        let what: String
        switch self.what {
        case .fail(let k): what = ".fail(.\(k))"
        case .failAfter(let k): what = ".failAfter(.\(k))"
        case .cutBody(let n): what = ".cutBody(after: \(n))"
        case .delay(let ms): what = ".delay(ms: \(ms))"
        }
        return "Fault(\(ops), \(which), \(what))"
    }
}

/// A sequence as the body of a regression test.
func swiftSource(_ steps: [Step], name: String, seed: UInt64?) -> String {
    var out = "    func test\(name)() async throws {\n"
    if let seed { out += "        // Found by the model test, seed \(seed), shrunk.\n" }
    out += "        try await ModelCheck.replay([\n"
    for s in steps { out += "            \(s.swift),\n" }
    out += "        ])\n    }\n"
    return out
}

// MARK: Generating

/// SplitMix64: small, fast, and the same sequence for a seed on every machine.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random sequences of steps that mostly make sense in the state they reach: the generator keeps its own model
/// (assuming every faulty step succeeds and a crash loses every file it may lose).
struct Generator {
    var rng: SplitMix
    var model = Model()
    var nextHandle = 1
    var nextSeed: Int
    /// Largest file the generator makes (blocks are 4 KiB, parts 16 KiB).
    let maxSize = 48 << 10

    init(seed: UInt64) {
        rng = SplitMix(seed: seed)
        nextSeed = Int(truncatingIfNeeded: seed % 1_000_000) * 1000 + 1
    }

    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &rng) }
    mutating func pick<T>(_ xs: [T]) -> T? { xs.isEmpty ? nil : xs[int(0...xs.count - 1)] }
    mutating func seed() -> Int {
        nextSeed += 1
        return nextSeed
    }

    static let names = ["a", "b", "c.tmp", "d"]
    static let dirNames = ["x", "y"]

    /// A path that may or may not exist: mostly in an existing directory.
    mutating func anyPath(directory: Bool = false) -> String {
        let dirs = [""] + model.entries.filter { $0.value == .directory }.map(\.key)
        let parent: String
        if chance(0.85) {
            parent = pick(dirs)!
        } else {
            parent = pick(Generator.dirNames + Generator.names)!  // perhaps missing, or a file
        }
        let name = directory ? (chance(0.8) ? pick(Generator.dirNames)! : pick(Generator.names)!)
            : (chance(0.85) ? pick(Generator.names)! : pick(Generator.dirNames)!)
        return parent.isEmpty ? name : parent + "/" + name
    }

    func existing(files: Bool) -> [String] {
        model.entries.filter { files ? $0.value != .directory : $0.value == .directory }.map(\.key).sorted()
    }

    mutating func existingOrAny(files: Bool, _ p: Double) -> String {
        if chance(p), let e = pick(existing(files: files)) { return e }
        return anyPath(directory: !files)
    }

    func openHandles(writable: Bool? = nil) -> [Int] {
        model.handles.filter { writable == nil || $0.value.writable == writable! }.map(\.key).sorted()
    }

    mutating func size(of h: Int) -> Int { model.files[model.handles[h]!.file]?.data.count ?? 0 }

    mutating func length() -> Int {
        switch int(0...9) {
        case 0...5: return int(1...3000)
        case 6...8: return int(3000...20000)
        default: return int(20000...40000)
        }
    }

    /// A fault for a step that talks to S3 while the caller waits (lookups, listings, reads, copies, markers).
    mutating func callFault() -> Fault {
        let ops = pick([["HeadObject"], ["ListObjectsV2"], ["GetObject"], ["CopyObject"], ["PutObject"],
                        ["HeadObject", "ListObjectsV2"]])!
        let which: Fault.Which = chance(0.7) ? .nth(int(1...3)) : .first(int(1...4))
        if ops == ["GetObject"] && chance(0.5) { return Fault(ops, which, .cutBody(after: int(0...6000))) }
        return Fault(ops, which, .fail(pick([.slowDown, .internalError, .connectionReset, .timeout])!))
    }

    /// A fault for a drain: uploads and deletes fail (before or after they land) and are retried.
    mutating func drainFault() -> Fault {
        let choices = [["PutObject"], ["UploadPart"], ["CompleteMultipartUpload"], ["CreateMultipartUpload"],
                       ["DeleteObject"], ["HeadObject"], ["GetObject"]]
        let ops = pick(choices)!
        let which: Fault.Which = .nth(int(1...3))
        let kind: Fault.Kind = pick([.slowDown, .internalError, .connectionReset])!
        if ops == ["UploadPart"] && chance(0.3) { return Fault(ops, .all, .delay(ms: int(1...5))) }
        let lostReply = ops != ["HeadObject"] && ops != ["GetObject"]
        if lostReply && chance(0.4) { return Fault(ops, which, .failAfter(kind)) }
        return Fault(ops, which, .fail(kind))
    }

    /// The next step, and the generator's model after it.
    mutating func step() -> Step {
        let writable = openHandles(writable: true)
        let all = openHandles()
        var s: Step
        while true {
            let roll = int(0...99)
            switch roll {
            case 0..<16:
                let mode: Step.Mode = pick([.createTruncate, .createTruncate, .create, .write, .write, .read, .read, .truncate, .createExclusive])!
                let path = mode.create ? existingOrAny(files: true, 0.3) : existingOrAny(files: true, 0.85)
                s = .open(path, h: nextHandle, mode)
            case 16..<38:
                guard let h = pick(writable) else { continue }
                let size = size(of: h)
                var at: Int
                switch int(0...9) {
                case 0...5: at = int(0...size)
                case 6...8: at = size
                default: at = size + int(1...6000)
                }
                at = min(at, maxSize - 1)
                s = .write(h: h, at: at, count: max(1, min(length(), maxSize - at)), seed: seed())
            case 38..<44:
                guard let h = pick(all) else { continue }
                let size = size(of: h)
                s = .read(h: h, at: int(0...size + 100), count: int(1...size + 5000))
            case 44..<47:
                guard let h = pick(writable) else { continue }
                s = .ftruncate(h: h, to: chance(0.3) ? 0 : int(0...size(of: h) + 5000))
            case 47..<50:
                let p = existingOrAny(files: true, 0.8)
                let n = model.file(at: p).map { model.files[$0]!.data.count } ?? 0
                s = .truncate(p, to: chance(0.3) ? 0 : int(0...n + 5000))
            case 50..<53:
                guard let h = pick(writable) else { continue }
                s = .closeDup(h: h)
            case 53..<66:
                guard let h = pick(all) else { continue }
                s = .close(h: h)
            case 66..<69:
                let candidates = all.filter { model.handles[$0]!.writable || model.handles[$0]!.pinned == nil }
                guard let h = pick(candidates) else { continue }
                s = .fsync(h: h)
            case 69..<74:
                let p = existingOrAny(files: true, 0.8)
                if Generator.avoidKnownBugs, model.hitsKnownBug(.unlink(p)) != nil { continue }
                s = .unlink(p)
            case 74..<78: s = .mkdir(anyPath(directory: true))
            case 78..<80: s = .rmdir(existingOrAny(files: false, 0.8))
            case 80..<87:
                let src = chance(0.7) ? existingOrAny(files: true, 0.9) : existingOrAny(files: false, 0.9)
                let dst = chance(0.3) ? existingOrAny(files: model.entries[src] != .directory, 0.9) : anyPath(directory: model.entries[src] == .directory)
                if Generator.avoidKnownBugs, model.hitsKnownBug(.rename(src, dst, noReplace: false)) != nil { continue }
                s = .rename(src, dst, noReplace: chance(0.15))
            case 87..<90:
                let p = existingOrAny(files: true, 0.5)
                guard model.remoteAllowed(p, delete: false) else { continue }
                s = .remotePut(p, count: int(4...20000), seed: seed())
            case 90..<91:
                let p = existingOrAny(files: true, 0.9)
                guard model.remoteAllowed(p, delete: true) else { continue }
                s = .remoteDelete(p)
            case 91..<95:
                var faults: [Fault] = []
                if chance(0.4) { for _ in 0..<int(1...2) { faults.append(drainFault()) } }
                s = .drain(faults: faults)
            case 95..<98: s = .releaseOne
            default: s = .crash(landing: chance(0.5))
            }
            break
        }
        // A tenth of the steps that talk to S3 while the caller waits run with a fault.
        switch s {
        case .open, .truncate, .unlink, .mkdir, .rmdir, .rename, .read:
            if chance(0.1) { s = .faulty(callFault(), s) }
        default: break
        }
        apply(s)
        return s
    }

    /// Moves the generator's model over `s`, as if it succeeded where the model expects success.
    mutating func apply(_ s: Step) {
        if case .faulty(_, let inner) = s { return apply(inner) }
        guard Step.valid(s, in: model), model.expect(s) == .ok else { return }
        switch s {
        case .open(let p, let h, let m):
            model.open(p, handle: h, mode: m)
            nextHandle = max(nextHandle, h + 1)
        default: Step.applyToModel(s, &model)
        }
    }

    /// A sequence of `count` steps.
    /// Leave out the steps that hit known core bugs (KnownCoreBugs); CKPTFS_MODEL_KNOWN_BUGS=1 makes them, so
    /// that a seed gives the sequence it gave before its bug was listed.
    static let avoidKnownBugs = ProcessInfo.processInfo.environment["CKPTFS_MODEL_KNOWN_BUGS"] == nil

    static func sequence(seed: UInt64, count: Int) -> [Step] {
        var g = Generator(seed: seed)
        return (0..<count).map { _ in g.step() }
    }
}

extension Step {
    /// Whether the step can run in `model`'s state: its handle is open (writable where it writes), a change by
    /// the other client has a predictable outcome.
    static func valid(_ s: Step, in model: Model) -> Bool {
        // A name whose delete leaves another client's object shows it once that delete's turn has passed, which
        // the model does not know before the next drain (S-CONFLICT-IN-FLIGHT): no step names it (or a path
        // under it) until then.
        // Nor the directories on the way to one that it shows with it, nor a directory S3 shows without a marker
        // (`Model.implicitDirectories`), nor a directory above one (a rename or rmdir of it), nor a path under
        // one, also for the other client.
        let unpredictable = model.unpredictablePaths()
        if !unpredictable.isEmpty, (s.namedPaths + s.remotePaths).contains(where: { p in
            unpredictable.contains { p == $0 || p.hasPrefix($0 + "/") || (model.implicitDirectories.contains($0) && $0.hasPrefix(p + "/")) }
        }) {
            return false
        }
        switch s {
        case .open(_, let h, _): return model.handles[h] == nil
        case .write(let h, _, _, _), .ftruncate(let h, _), .closeDup(let h):
            return model.handles[h]?.writable == true
        case .read(let h, _, _), .close(let h): return model.handles[h] != nil
        case .fsync(let h):
            guard let mh = model.handles[h] else { return false }
            return mh.writable || mh.pinned == nil
        case .remotePut(let p, _, _): return model.remoteAllowed(p, delete: false)
        case .remoteDelete(let p): return model.remoteAllowed(p, delete: true)
        case .faulty(_, let inner): return valid(inner, in: model)
        default: return true
        }
    }

    /// The paths a step names.
    var namedPaths: [String] {
        switch self {
        case .open(let p, _, _), .truncate(let p, _), .unlink(let p), .mkdir(let p), .rmdir(let p): return [p]
        case .rename(let a, let b, _): return [a, b]
        case .faulty(_, let inner): return inner.namedPaths
        default: return []
        }
    }

    /// The paths the other client's change names.
    var remotePaths: [String] {
        switch self {
        case .remotePut(let p, _, _), .remoteDelete(let p): return [p]
        default: return []
        }
    }

    /// The model's side of a step that succeeded (not open, drain, crash: the runner does those).
    static func applyToModel(_ s: Step, _ model: inout Model) {
        switch s {
        case .write(let h, let at, let n, let seed): model.write(handle: h, at: at, contents(n, seed: seed))
        case .ftruncate(let h, let n): model.truncate(model.handles[h]!.file, to: n)
        case .truncate(let p, let n): model.truncate(p, to: n)
        case .closeDup(let h): model.flush(handle: h)
        case .close(let h): model.close(handle: h)
        case .fsync(let h):
            model.fsync(handle: h)
            let c = model.conflicts()
            var s3: [String: Bytes] = [:]
            for (k, states) in model.afterDrain(conflicts: c) { if let v = states.first ?? nil { s3[k] = v } }
            model.drained(conflicts: c, s3: s3)
        case .unlink(let p): model.unlink(p)
        case .mkdir(let p): model.mkdir(p)
        case .rmdir(let p): model.rmdir(p)
        case .rename(let a, let b, _): model.rename(a, b)
        case .remotePut(let p, let n, let seed): model.remotePut(p, contents(n, seed: seed))
        case .remoteDelete(let p): model.remoteDelete(p)
        case .drain:
            let c = model.conflicts()
            var s3: [String: Bytes] = [:]
            for (k, states) in model.afterDrain(conflicts: c) { if let v = states.first ?? nil { s3[k] = v } }
            model.drained(conflicts: c, s3: s3)
        case .crash(let landing):
            _ = model.crash(landing: landing)
        case .releaseOne: model.uncertain = true
        case .open, .read, .faulty, .awaitHeld: break
        }
    }
}
