// Runs a sequence of steps against the filesystem core (through CoreDriver, over the in-memory S3 wrapped in a
// fault-injecting client) and against the model, and compares them after every step: the result of the step;
// stat, the bytes and the listing of every path; what S3 holds. Uploads and deletes are held by the fault
// client between drains (the gate), so what reaches S3 when is decided by the steps, not by timing. At the end
// every handle is closed, S3 is drained, and its objects must be the model's files.
import CkptS3
import CkptTestSupport
import Foundation
import Synchronization

/// A difference between the core and the model.
struct ModelFailure: Error, Sendable, CustomStringConvertible {
    /// The step it showed at (the sequence's length for the final check).
    var step: Int
    /// What differed ("result", "stat", "read", "listing", "S3", "order", "flush", "crash", "final", "hang"),
    /// kept while shrinking.
    var kind: String
    var detail: String

    var description: String { "step \(step): \(kind): \(detail)" }
}

/// One run of one sequence, in its own cache directory and bucket.
final class ModelRun: @unchecked Sendable {
    let bucket = "m"
    let dir: String
    let memory: MemoryObjectClient
    private(set) var client: FaultInjectingClient
    private var gate: FaultInjectingClient.RuleID
    private(set) var driver: CoreDriver
    private var clients: [FaultInjectingClient] = []
    private var drivers: [CoreDriver] = []
    private(set) var model = Model()
    private var handles: [Int: DriverHandle] = [:]
    /// What ran, for the report of a failure.
    private(set) var trace: [String] = []
    /// The step running now (read by the timeout).
    let current = Mutex(0)
    /// Steps that would hit a known core bug are skipped (the property test), and its races tolerated.
    private var avoidingKnownBugs = false

    /// The directory of this process's cache directories: in /dev/shm when there is one (journal and staging
    /// fsyncs are free there). A dropped filesystem's cache writer may still write a block after its run removed
    /// its directory: `removeBase()` at the end of a test class removes what is left.
    static let base: String = {
        var isDir: ObjCBool = false
        let root = FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDir) && isDir.boolValue
            && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory()
        let dir = root + "/ckptfs-model-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }()

    static func removeBase() { try? FileManager.default.removeItem(atPath: base) }

    /// The core's options (from the environment unless given).
    let setup: CoreDriver.Setup

    init(setup: CoreDriver.Setup = CoreDriver.Setup()) throws {
        self.setup = setup
        dir = ModelRun.base + "/\(UUID().uuidString)"
        memory = MemoryObjectClient(buckets: [bucket], pageSize: 3)
        client = FaultInjectingClient(wrapping: memory)
        gate = client.hold(ModelRun.gated)
        clients = [client]
        driver = try CoreDriver(directory: dir, client: client, bucket: bucket, setup: setup)
        model.keepEveryVersion = setup.keepEveryVersion
    }

    /// What the gate holds between drains: uploads (not directory markers, which mkdir writes while it waits) and
    /// deletes (a rename's undo of its copies waits for them too: see `stall`).
    static let gated = FaultInjectingClient.Match { op, key in
        switch op {
        case "PutObject": return !(key ?? "").hasSuffix("/")
        case "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "DeleteObject", "DeleteObjects": return true
        default: return false
        }
    }

    /// Every call each filesystem made to S3 (one list per mount), for reports.
    var calls: [[FaultInjectingClient.Call]] { clients.map(\.log) }

    /// Ends every background task of the filesystems made and removes the cache directory.
    func tearDown() {
        driver.stop()
        for c in clients {
            c.cut()
            c.failHeld()
        }
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Runs `steps` and the final check; returns the first difference. With `avoidingKnownBugs`, a step that
    /// would hit a known core bug (KnownCoreBugs) is skipped.
    func run(_ steps: [Step], avoidingKnownBugs: Bool = false) async -> ModelFailure? {
        self.avoidingKnownBugs = avoidingKnownBugs
        do throws(ModelFailure) {
            for (i, s) in steps.enumerated() {
                current.withLock { $0 = i }
                guard Step.valid(s, in: model) else {
                    trace.append("\(i): skipped \(s.swift)")
                    continue
                }
                if avoidingKnownBugs, let bug = model.hitsKnownBug(s) {
                    trace.append("\(i): skipped \(s.swift) (known core bug: \(bug))")
                    continue
                }
                trace.append("\(i): \(s.swift)")
                try await executeLetting(s, i)
                try await observe(i)
            }
            current.withLock { $0 = steps.count }
            try await finish(steps.count)
            return nil
        } catch { return error }
    }

    // MARK: Steps

    /// How long a step may wait on held requests before they are let go: a rename or mkdir waits for the
    /// uploads of its key queued before it, as it would wait for a slow S3.
    static let stall: Duration = .seconds(1)

    /// Runs a step; if it waits on held uploads for longer than `stall`, lets them go (S3 progresses; what
    /// landed is then uncertain until the next drain) and holds uploads again afterwards.
    private func executeLetting(_ step: Step, _ i: Int) async throws(ModelFailure) {
        switch step {
        case .drain, .fsync, .crash, .releaseOne, .awaitHeld:
            return try await execute(step, i)
        default: break
        }
        let stalled = Stall()
        let watchdog = Task { [client, gate] in
            try? await Task.sleep(for: ModelRun.stall)
            if !Task.isCancelled && stalled.fire() { client.remove(gate) }
        }
        defer {
            watchdog.cancel()
            if !stalled.fire() {
                gate = client.hold(ModelRun.gated)
                model.uncertain = true
                trace.append("\(i): (the step waited for held uploads: they were let go)")
            }
        }
        try await execute(step, i)
    }

    private func fail(_ i: Int, _ kind: String, _ detail: String) -> ModelFailure {
        ModelFailure(step: i, kind: kind, detail: detail)
    }

    /// Whether a step with this result changed the filesystem (the model applies it); throws if the result is
    /// not what the model expects. A step with a fault that acted may fail with EIO, and then changed nothing.
    private func outcome<T>(_ r: Result<T, DriverError>, _ expect: Expect, _ fault: FaultInjectingClient.RuleID?,
                            _ step: Step, _ i: Int) throws(ModelFailure) -> Bool {
        switch (r, expect) {
        case (.success, .ok): return true
        case (.failure(let e), .fails(let allowed)) where allowed.contains(e.errno): return false
        case (.failure(let e), _) where e.errno == EIO && fault.map({ client.hits($0) > 0 }) == true: return false
        case (.success, .fails):
            throw fail(i, "result", "\(step.swift) succeeded; expected \(expect)")
        case (.failure(let e), _):
            throw fail(i, "result", "\(step.swift) failed with \(e); expected \(expect)")
        }
    }

    private func execute(_ step: Step, _ i: Int, fault: FaultInjectingClient.RuleID? = nil) async throws(ModelFailure) {
        switch step {
        case .faulty(let f, let inner):
            let rule = f.install(on: client)
            defer { client.remove(rule) }
            try await execute(inner, i, fault: rule)

        case .open(let path, let h, let mode):
            let r = await driver.open(path, CoreDriver.OpenMode(write: mode.write, create: mode.create, truncate: mode.truncate,
                                                               exclusive: mode.exclusive))
            if try outcome(r, model.expect(step), fault, step, i), case .success(let dh) = r {
                handles[h] = dh
                model.open(path, handle: h, mode: mode)
            }

        case .write(let h, let at, let n, let seed):
            let r = await driver.write(handles[h]!, at: Int64(at), contents(n, seed: seed))
            if try outcome(r, .ok, fault, step, i) { Step.applyToModel(step, &model) }

        case .read(let h, let at, let n):
            let r = await driver.read(handles[h]!, at: Int64(at), count: n)
            let mh = model.handles[h]!
            func slice(_ d: Bytes) -> Bytes { at >= d.count ? [] : Array(d[at..<min(d.count, at + n)]) }
            let live = slice(model.files[mh.file]!.data)
            switch r {
            case .success(let got):
                if got != live && mh.pinned.map(slice) != got {
                    throw fail(i, "read", "\(step.swift) read \(got.count) bytes \(digest(got)); expected \(live.count) bytes \(digest(live))"
                        + (mh.pinned.map { " (or, pinned, \(digest(slice($0))))" } ?? ""))
                }
            case .failure(let e):
                let pinnedErrors: Set<Int32> = mh.pinned == nil ? [] : [ESTALE, ENOENT]
                let faulted = e.errno == EIO && fault.map { client.hits($0) > 0 } == true
                if !pinnedErrors.contains(e.errno) && !faulted {
                    throw fail(i, "read", "\(step.swift) failed with \(e); expected \(live.count) bytes")
                }
            }

        case .ftruncate(let h, let n):
            let r = await driver.truncate(handles[h]!, to: Int64(n))
            if try outcome(r, .ok, fault, step, i) { Step.applyToModel(step, &model) }

        case .truncate(let path, let n):
            let r = await driver.truncate(path, to: Int64(n))
            if try outcome(r, model.expect(step), fault, step, i) { Step.applyToModel(step, &model) }

        case .closeDup(let h):
            let r = await driver.flush(handles[h]!)
            if try outcome(r, .ok, fault, step, i) { Step.applyToModel(step, &model) }

        case .close(let h):
            let r = await driver.close(handles.removeValue(forKey: h)!)
            Step.applyToModel(step, &model)
            _ = try outcome(r, .ok, fault, step, i)

        case .fsync(let h):
            let id = model.handles[h]!.file
            let pinned = model.handles[h]!.pinned != nil
            model.fsync(handle: h)
            model.queueAcknowledged()  // the flush after it
            let conflicts = model.conflicts()
            let path = model.path(of: id)
            let expect: Expect = !pinned && path.map(conflicts.contains) == true ? .fails(EIO) : .ok
            client.remove(gate)
            let r = await driver.fsync(handles[h]!)
            try await finishDrain(conflicts, i, faults: [])
            _ = try outcome(r, expect, fault, step, i)

        case .unlink(let path):
            adoptConflict(path, i)
            let r = await driver.unlink(path)
            if try outcome(r, model.expect(step), fault, step, i) { Step.applyToModel(step, &model) }

        case .mkdir(let path):
            let r = await driver.mkdir(path)
            if try outcome(r, model.expect(step), fault, step, i) { Step.applyToModel(step, &model) }

        case .rmdir(let path):
            let r = await driver.rmdir(path)
            if try outcome(r, model.expect(step), fault, step, i) { Step.applyToModel(step, &model) }

        case .rename(let src, let dst, let noReplace):
            if src != dst { adoptConflict(dst, i) }
            let r = await driver.rename(src, dst, noReplace: noReplace)
            if try outcome(r, model.expect(step), fault, step, i) {
                // An upload let go since the last drain may have met the other client's object: the core then
                // knew the conflict before the rename, and the old name keeps their object. Adopted from the
                // core: whether the old name is still there.
                if src != dst, let id = model.mayHaveConflicted(src), case .success = await driver.stat(src) {
                    model.files[id]!.conflicted = true
                    trace.append("\(i): (the core found the conflict of \(src) before the rename)")
                }
                Step.applyToModel(step, &model)
            }

        case .remotePut(let path, let n, let seed):
            do {
                _ = try await memory.putObject(bucket, path, body: .bytes(contents(n, seed: seed)), options: PutOptions())
            } catch { throw fail(i, "setup", "the other client's put failed: \(error)") }
            Step.applyToModel(step, &model)

        case .remoteDelete(let path):
            do { try await memory.deleteObject(bucket, path, versionId: nil) } catch {
                throw fail(i, "setup", "the other client's delete failed: \(error)")
            }
            Step.applyToModel(step, &model)

        case .drain(let faults):
            model.queueAcknowledged()
            let conflicts = model.conflicts()
            let rules = faults.map { $0.install(on: client) }
            client.remove(gate)
            try await finishDrain(conflicts, i, faults: rules)

        case .releaseOne:
            // The oldest held request goes on; the step ends when S3 has answered it.
            if let call = client.releaseOldest(gate) {
                model.uncertain = true
                await client.waitForReply(call.id)
            }

        case .awaitHeld(let n):
            let held = Task { [client, gate] in await client.waitForHeld(gate, count: n) }
            let timer = Task {
                try? await Task.sleep(for: .seconds(5))
                held.cancel()
            }
            _ = await (held.value, timer.cancel())

        case .crash(let landing):
            try await crash(landing: landing, i)
        }
    }

    /// An upload let go since the last drain may have met the other client's object under `path`: when the
    /// core says so (its status names the conflict), the model adopts it before a step that removes or replaces
    /// the file there (the other client's object stays then).
    private func adoptConflict(_ path: String, _ i: Int) {
        guard let id = model.mayHaveConflicted(path),
              driver.status.failures.contains(where: { $0.path == path && $0.state == "conflict" }) else { return }
        model.files[id]!.conflicted = true
        trace.append("\(i): (the core found the conflict of \(path) before the step)")
    }

    /// The rest of a drain, once the held uploads go: waits for S3 (flushAll), holds uploads again, and checks
    /// what flush reports and what S3 holds against the model.
    private func finishDrain(_ conflicts: Set<String>, _ i: Int, faults: [FaultInjectingClient.RuleID],
                             holdAgain: Bool = true) async throws(ModelFailure) {
        // Deletes a conflict holds back never land: flush waits for them until its timeout.
        let held = model.heldDeletes(conflicts: conflicts)
        let failures = await driver.flushAll(timeout: held.isEmpty ? .seconds(10) : .seconds(1))
        for r in faults { client.remove(r) }
        if model.events.contains(where: { $0.kind == .put && $0.withdrawn }) { await settle() }
        if holdAgain { gate = client.hold(ModelRun.gated) }
        let expected = conflicts.union(held.map(\.key))
        let got = Set(failures.map(\.path))
        if got != expected {
            throw fail(i, "flush", "flush reported \(failures.map { "\($0.path): \($0.reason)" }.sorted()); "
                + "expected conflicts \(conflicts.sorted()) and held deletes \(held.map(\.key).sorted())")
        }
        let s3 = memory.objects(in: bucket)
        let predicted = model.afterDrain(conflicts: conflicts)
        for key in Set(s3.keys).union(predicted.keys).sorted() {
            let allowed = predicted[key] ?? [nil]
            if !allowed.contains(s3[key]) {
                throw fail(i, "S3", "after the drain S3 has \(key) = \(digest(s3[key])); expected one of \(allowed.map(digest).sorted())")
            }
        }
        let open = memory.openUploads
        if !open.isEmpty { throw fail(i, "S3", "multipart uploads left open after the drain: \(open.map(\.key))") }
        model.drained(conflicts: conflicts, s3: s3)
    }

    /// Flush does not wait for the uploads of withdrawn versions (unlinked, replaced by a rename) that are
    /// still going on: with nothing held, waits (up to 2 s) until no request is in flight and no multipart
    /// upload is open, so S3 is still when it is compared.
    private func settle() async {
        let deadline = ContinuousClock.now + .seconds(2)
        var quiet = 0
        while quiet < 3 && ContinuousClock.now < deadline {
            let busy = !client.unanswered.filter({ $0.outcome == .inFlight }).isEmpty || !memory.openUploads.isEmpty
            quiet = busy ? 0 : quiet + 1
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    private func crash(landing: Bool, _ i: Int) async throws(ModelFailure) {
        client.cut(landing: landing)
        if landing { await client.waitForLanding() }
        driver.stop()
        drivers.append(driver)
        handles = [:]
        client = FaultInjectingClient(wrapping: memory)
        gate = client.hold(ModelRun.gated)
        clients.append(client)
        do {
            driver = try CoreDriver(directory: dir, client: client, bucket: bucket, setup: setup)
            _ = try await driver.recover()
        } catch { throw fail(i, "crash", "recovery failed: \(error)") }
        let open = model.crash(landing: landing)
        for (path, allowed) in open.sorted(by: { $0.key < $1.key }) {
            let shown: Bytes?
            switch await driver.stat(path) {
            case .failure(let e) where e.errno == ENOENT: shown = nil
            case .success(.file):
                switch await driver.readFile(path) {
                case .success(let b): shown = b
                case .failure(let e): throw fail(i, "crash", "\(path) cannot be read after recovery: \(e)")
                }
            case let other: throw fail(i, "crash", "\(path) after recovery: \(other)")
            }
            if !allowed.contains(shown) {
                throw fail(i, "crash", "after recovery \(path) shows \(digest(shown)); allowed: \(allowed.map(digest).sorted())")
            }
            model.adopt(path, shown)
        }
    }

    // MARK: Comparing

    /// Compares every path's stat, bytes and listing, and S3, with the model.
    private func observe(_ i: Int) async throws(ModelFailure) {
        let dirs = [""] + model.entries.filter { $0.value == .directory }.map(\.key).sorted()
        for d in dirs {
            switch await driver.list(d) {
            case .success(let names):
                let want = model.children(of: d)
                let maybe = model.mayShowTheirs(in: d)
                if names.filter({ !(want[$0.key] == nil && maybe[$0.key] == $0.value) }) != want {
                    throw fail(i, "listing", "\(d.isEmpty ? "the root" : d) lists \(names.sorted { $0.key < $1.key }.map { $0.key + ($0.value ? "/" : "") }); "
                        + "expected \(want.sorted { $0.key < $1.key }.map { $0.key + ($0.value ? "/" : "") })")
                }
            case .failure(let e): throw fail(i, "listing", "listing \(d.isEmpty ? "the root" : d) failed: \(e)")
            }
        }
        for (path, e) in model.entries.sorted(by: { $0.key < $1.key }) {
            guard case .file(let id) = e else { continue }
            let want = model.files[id]!.data
            switch await driver.stat(path) {
            case .success(.file(let size)) where size == Int64(want.count): break
            case let other: throw fail(i, "stat", "stat \(path): \(other); expected a file of \(want.count) bytes")
            }
            switch await driver.readFile(path) {
            case .success(let got) where got == want: break
            case .success(let got): throw fail(i, "read", "\(path) reads \(got.count) bytes \(digest(got)); expected \(want.count) bytes \(digest(want))")
            case .failure(let e): throw fail(i, "read", "reading \(path) failed: \(e)")
            }
        }
        try checkS3(i)
    }

    /// S3 holds, for each key, a state the model allows; a delete S3 shows applied went after the uploads
    /// queued before it.
    private func checkS3(_ i: Int) throws(ModelFailure) {
        let s3 = memory.objects(in: bucket)
        var keys = Set(s3.keys).union(model.synced.keys)
        for e in model.events { keys.insert(e.key) }
        for key in keys.sorted() {
            let allowed = model.possible(key)
            if !allowed.contains(s3[key]) {
                throw fail(i, "S3", "S3 has \(key) = \(digest(s3[key])); the writer never acknowledged that (allowed: \(allowed.map(digest).sorted()))")
            }
        }
        let events = model.events
        for (n, d) in events.enumerated() where d.kind == .delete {
            guard !events[..<n].contains(where: { $0.key == d.key && $0.kind == .delete }),
                  s3[d.key] == nil, model.synced[d.key] != nil,
                  !events.contains(where: { $0.key == d.key && ($0.kind == .remote || $0.kind == .sync) }) else { continue }
            for key in Set(events.map(\.key)) where key != d.key {
                guard let last = events.last(where: { $0.key == key }), last.kind == .put, !last.withdrawn, !last.recovered,
                  last.seq < d.seq else { continue }
                if s3[key] != last.result {
                    throw fail(i, "order", "the delete of \(d.key) was applied before the upload of \(key) queued before it "
                        + "(S3 has \(key) = \(digest(s3[key])), the upload is \(digest(last.result)))")
                }
            }
        }
    }

    /// Closes every handle, drains, and compares S3 with the model's files.
    private func finish(_ i: Int) async throws(ModelFailure) {
        trace.append("\(i): (end: close every handle, drain, compare)")
        for h in handles.keys.sorted() {
            let r = await driver.close(handles.removeValue(forKey: h)!)
            model.close(handle: h)
            if case .failure(let e) = r { throw fail(i, "final", "closing handle \(h) failed: \(e)") }
        }
        let conflicts = model.conflicts()
        client.remove(gate)
        try await finishDrain(conflicts, i, faults: [], holdAgain: false)
        try await observe(i)
        var want = model.finalObjects()
        for e in model.events where e.kind == .delete {
            want[e.key] = model.synced[e.key]  // held back by a conflict: still there
        }
        let s3 = memory.objects(in: bucket)
        if s3 != want {
            let keys = Set(s3.keys).union(want.keys).sorted().filter { s3[$0] != want[$0] }
            throw fail(i, "final", "S3 differs from the model's files at " + keys.map { "\($0): \(digest(s3[$0])) instead of \(digest(want[$0]))" }.joined(separator: "; "))
        }
        if conflicts.isEmpty {
            // flushAll returns once the last version has settled; its staged file goes right after: allow a moment.
            var staged: [String] = []
            for _ in 0..<100 {
                staged = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/staging")) ?? []
                if staged.isEmpty { break }
                try? await Task.sleep(for: .milliseconds(10))
            }
            if !staged.isEmpty { throw fail(i, "final", "the staging area keeps \(staged.count) files after everything is in S3") }
            let status = driver.status
            if status.dirtyFiles != 0 || status.pendingDeletes != 0 {
                throw fail(i, "final", "status shows \(status.dirtyFiles) dirty files and \(status.pendingDeletes) pending deletes after everything is in S3")
            }
        }
    }
}

/// Fires once: the first `fire()` returns true.
private final class Stall: Sendable {
    private let fired = Mutex(false)
    func fire() -> Bool { fired.withLock { f in defer { f = true }; return !f } }
}

/// Bytes in messages: their count and a short hash.
func digest(_ b: Bytes?) -> String {
    guard let b else { return "absent" }
    var h: UInt64 = 1469598103934665603
    for x in b { h = (h ^ UInt64(x)) &* 1099511628211 }
    return "\(b.count)B#\(String(h & 0xffffff, radix: 16))"
}
