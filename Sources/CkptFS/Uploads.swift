// Uploads of sealed versions, in the background: PutObject for small files, parallel multipart for large
// ones; verified before the local copy counts as clean; retried until they succeed or the file is unlinked.
// Versions of one key are uploaded in order; a version replaced by a newer one before its upload started is
// skipped (the newer one carries everything the older one acknowledged). Also: crash recovery from the
// journal, waiting for durability (fsync, `ckptfs flush`, unmount) and the write-back status.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

/// Continuations waiting for one event, each under a ticket so that a deadline can withdraw it (the waiter's
/// own timer task takes its ticket back and resumes it; the event resumes whoever is still there).
struct Waiters<Value: Sendable>: Sendable {
    private var byTicket: [UInt64: CheckedContinuation<Value, Never>] = [:]
    private var next: UInt64 = 0

    mutating func add(_ c: CheckedContinuation<Value, Never>) -> UInt64 {
        next += 1
        byTicket[next] = c
        return next
    }

    mutating func remove(_ ticket: UInt64) -> CheckedContinuation<Value, Never>? { byTicket.removeValue(forKey: ticket) }

    mutating func removeAll() -> [CheckedContinuation<Value, Never>] {
        defer { byTicket = [:] }
        return Array(byTicket.values)
    }
}

/// A counting semaphore for tasks.
final class AsyncSemaphore: Sendable {
    private let state: Mutex<(free: Int, waiters: [CheckedContinuation<Void, Never>])>
    init(_ n: Int) { state = Mutex((n, [])) }

    func acquire() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let go = state.withLock { s -> Bool in
                if s.free > 0 {
                    s.free -= 1
                    return true
                }
                s.waiters.append(c)
                return false
            }
            if go { c.resume() }
        }
    }

    func release() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty {
                s.free += 1
                return nil
            }
            return s.waiters.removeFirst()
        }
        w?.resume()
    }
}

/// What the write-back is doing (for `ckptfs status`).
public struct WriteBackStatus: Sendable, Codable {
    public struct Pending: Sendable, Codable {
        public var path: String
        public var bytes: Int64
        public var state: String
        public var ageSeconds: Double
        public var error: String?
        /// Bytes already sent in parts (while the file was written, or of the upload in progress).
        public var sentBytes: Int64 = 0
    }
    public var dirtyFiles = 0
    public var dirtyBytes: Int64 = 0
    public var uploadsInFlight = 0
    public var oldestDirtySeconds: Double = 0
    public var uploadedFiles = 0
    public var uploadedBytes: Int64 = 0
    public var failures: [Pending] = []
    public var pending: [Pending] = []
    public var recovered = 0
    public var quarantined: [String] = []
    /// Deletes (unlink, rmdir, old names of renames) journaled and not applied in S3 yet: each waits for the
    /// uploads acknowledged before it.
    public var pendingDeletes = 0
    /// Bytes the staging area takes on the cache disk (dirty versions, and copies still open).
    public var stagingBytes: Int64 = 0
}

/// What recovery found in the journal.
public struct RecoveryReport: Sendable {
    public var requeued: [String] = []
    /// Staged files that failed their checksum, moved aside: (key, where it now is).
    public var quarantined: [(key: String, path: String)] = []
    public var abortedMultipart = 0
    public var tornTail = false
    /// Deletes journaled and not applied yet, queued again.
    public var pendingDeletes = 0
    /// Renames a crash interrupted, finished.
    public var finishedRenames = 0
}

extension FileSystem {
    /// Uploads `v` (for upload job `job`) until it is durable, superseded, dropped or renamed (then a new job
    /// under the new name takes over). Waits `options.uploadDelay` after the seal first (unless someone waits
    /// for it), so a rename right after close (write-temp-then-rename) is a local move and the file is uploaded
    /// once, under its final name.
    func upload(_ v: StagedVersion, job: UInt64) async {
        let sealedAt = v.state.withLock { $0.sealedAt }
        if let sealedAt {
            let left = options.uploadDelay - (ContinuousClock.now - sealedAt)
            if left > .zero { _ = await v.urgentOrTimeout(left) }
        }
        var delay: Duration = .milliseconds(500)
        while true {
            if Task.isCancelled { return }
            enum Go { case go, stale, settled }
            let go = v.state.withLock { s -> Go in
                guard s.job == job else { return .stale }
                guard case .waiting = s.upload else { return .settled }
                s.upload = .uploading
                return .go
            }
            switch go {
            case .stale: return
            case .settled:
                finishUpload(v)
                return
            case .go: break
            }
            if options.holdUploads {
                v.state.withLock { $0.upload = .waiting }
                try? await Task.sleep(for: .seconds(3600 * 24))
                continue
            }
            do throws(FSError) {
                let (key, etag) = try await uploadOnce(v)
                // The record names the key: a rename after it journals the version again under the new key.
                try journal.append(JournalRecord(op: .done, id: v.id, key: key, etag: etag))
                enum Landed { case landed, dropped, moved }
                let outcome = v.state.withLock { s -> Landed in
                    if case .dropped = s.upload { return .dropped }
                    if s.key != key {
                        s.upload = .waiting
                        return .moved
                    }
                    return .landed
                }
                switch outcome {
                case .dropped:
                    // Unlinked while uploading: the delete queued behind this job removes what landed.
                    finishUpload(v)
                    return
                case .moved:
                    // Renamed while uploading: it goes again under the new name (the old name's delete is
                    // queued after that).
                    enqueueUpload(v)
                    return
                case .landed: break
                }
                resolveExpectations(after: v, etag: etag)
                let size = v.size
                v.state.withLock { s in
                    s.lastError = nil
                    s.bytesUploaded = size
                }
                v.settle(.done(etag: etag))
                uploadState.withLock { u in
                    u.uploadedFiles += 1
                    u.uploadedBytes += size
                }
                finishUpload(v, etag: etag)
                return
            } catch {
                if error.isConflict {
                    // Someone else changed the object: keep ours (journaled, readable here) and say so.
                    v.state.withLock { $0.lastError = error.message + "; the local copy is kept (rename it to upload it under another name)" }
                    logger.error("upload stopped by a conflict; the local copy is kept",
                                 metadata: ["key": "\(v.key)", "error": "\(error)"])
                    v.settle(.conflict)
                    return
                }
                let stop = v.state.withLock { s -> Bool in
                    s.lastError = error.description
                    if case .uploading = s.upload { s.upload = .waiting; return false }
                    return true
                }
                logger.warning("upload failed; retrying", metadata: ["key": "\(v.key)", "error": "\(error)",
                                                                    "retry.in": "\(delay)"])
                if stop { finishUpload(v); return }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    /// One attempt: PutObject or multipart, then a HEAD that checks the size. Returns the ETag.
    func uploadOnce(_ v: StagedVersion) async throws(FSError) -> (key: String, etag: String) {
        // Opened in place and never changed: the object in S3 is already this file.
        if let base = v.state.withLock({ $0.modified ? nil : $0.base }), base.key == v.key { return (v.key, base.etag) }
        try await fillAll(v)
        let (key, size, mtime) = v.state.withLock { ($0.key, $0.size, $0.mtime) }
        var put = PutOptions(metadata: ["mtime": String(format: "%.3f", mtime.timeIntervalSince1970),
                                        FileSystem.versionTag: versionTag(v)])
        put.condition = conditionsUnsupported.load(ordering: .relaxed) ? nil : condition(for: v)
        let ranges = FileSystem.partRanges(size: size, minimum: options.partSize)
        var expectedParts = 0
        do {
            do {
                return try await putOrMultipart()
            } catch let e as S3Error where e.code == .preconditionFailed {
                // Perhaps our own earlier attempt landed (a crash or a lost reply after it completed), or an earlier
                // version of this key from this cache directory that the condition was written before (a crash
                // while it was uploading): the object's tag tells.
                let info = try? await client.headObject(bucket, key, versionId: nil, ifMatch: nil)
                if let info, let tagged = ownVersion(info) {
                    if tagged == v.id { return (key, info.etag) }
                    if tagged < v.id {
                        logger.info("an earlier version of this file from this cache landed before a crash; uploading over it",
                                    metadata: ["key": "\(key)"])
                        put.condition = .ifMatch(info.etag)
                        return try await putOrMultipart()
                    }
                }
                if let info, info.size == size,
                   try localETag(v, parts: ranges) == info.etag.trimmingCharacters(in: CharacterSet(charactersIn: "\"")) {
                    return (key, info.etag)
                }
                let what: String
                switch put.condition {
                case .ifNoneMatch: what = "\(key) was created in S3 by someone else after this file was created here"
                default: what = "\(key) was changed in S3 by someone else after this file was opened here"
                }
                throw FSError.conflict(what)
            } catch let e as S3Error where put.condition != nil && (e.code == .other("NotImplemented") || e.httpStatus == 501) {
                logger.warning("the server does not support conditional writes; uploading without conditions")
                conditionsUnsupported.store(true, ordering: .relaxed)
                put.condition = nil
                return try await putOrMultipart()
            }
        } catch let e as FSError {
            throw e
        } catch let e as S3Error {
            throw FSError.from(e)
        } catch {
            throw FSError(EIO, "\(error)")
        }

        func putOrMultipart() async throws -> (key: String, etag: String) {
            if ranges.count <= 1 {
                // One PUT with Content-MD5: the server rejects a body damaged in transit, and a plain-MD5 ETag
                // must equal ours. No HEAD needed.
                let sum = try md5(of: v.fd, size: size)
                var o = put
                o.contentMD5 = sum
                let r = try await client.putObject(bucket, key, body: .file(descriptor: v.fd, offset: 0, length: size), options: o)
                let etag = r.etag.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                if etag.count == 32, etag.allSatisfy(\.isHexDigit), etag.lowercased() != sum.hexString {
                    throw FSError(EIO, "uploaded \(key) but the server's ETag \(etag) is not the MD5 of the file")
                }
                crashPoint("after-complete")
                counters.withLock { $0.putRequests += 1 }
                return (key, r.etag)
            } else {
                // Parts sent while the file was written are kept; otherwise a new multipart upload.
                let early = await takeEarlyUpload(v, key: key)
                let uploadId: String
                if let early {
                    uploadId = early.uploadId
                } else {
                    uploadId = try await createUpload(v, key: key, options: put)
                }
                do {
                    let parts = try await uploadParts(v, key: key, uploadId: uploadId, ranges: ranges, done: early?.parts ?? [:])
                    expectedParts = parts.count
                    crashPoint("before-complete")
                    _ = try await client.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts, condition: put.condition)
                } catch {
                    try? await client.abortMultipartUpload(bucket, key, uploadId: uploadId)
                    throw error
                }
            }
            crashPoint("after-complete")
            let info = try await client.headObject(bucket, key, versionId: nil, ifMatch: nil)
            guard info.size == size else {
                throw FSError(EIO, "uploaded \(key) but the server reports \(info.size) bytes instead of \(size)")
            }
            if expectedParts > 0, let dash = info.etag.lastIndex(of: "-"),
               let n = Int(info.etag[info.etag.index(after: dash)...].filter(\.isNumber)), n != expectedParts {
                throw FSError(EIO, "uploaded \(key) in \(expectedParts) parts but the server's ETag says \(n)")
            }
            counters.withLock { $0.putRequests += max(1, expectedParts) }
            return (key, info.etag)
        }
    }

    /// User metadata naming the cache directory and version an object was uploaded from
    /// (x-amz-meta-ckptfs-version: WRITER.VERSION).
    static let versionTag = "ckptfs-version"

    func versionTag(_ v: StagedVersion) -> String { "\(writerId).\(v.id)" }

    /// The version id, if `info` is an object this cache directory uploaded.
    func ownVersion(_ info: ObjectInfo) -> UInt64? {
        guard let tag = info.metadata[FileSystem.versionTag], let dot = tag.lastIndex(of: "."),
              tag[..<dot] == writerId else { return nil }
        return UInt64(tag[tag.index(after: dot)...])
    }

    /// The random id of the cache directory `directory` (created on first use, kept in `writer-id`).
    static func writerId(directory: String) -> String {
        let path = directory + "/writer-id"
        if let s = try? String(contentsOfFile: path, encoding: .utf8) {
            let id = s.trimmingCharacters(in: .whitespacesAndNewlines)
            if !id.isEmpty { return id }
        }
        let id = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16)
        let tmp = path + ".tmp"
        if FileManager.default.createFile(atPath: tmp, contents: Data(id.utf8)), Glibc.rename(tmp, path) == 0 {
            syncDirectory(of: path)
        }
        return (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? String(id)
    }

    /// MD5 of the first `size` bytes of `fd` (Content-MD5 of a single PUT, and its ETag).
    func md5(of fd: Int32, size: Int64) throws(FSError) -> [UInt8] {
        var md5 = StreamingDigest(.md5)
        try forEachChunk(of: fd, size: size) { chunk, _ in md5.update(chunk) }
        return md5.finalize()
    }

    /// The ETag S3 gives this file when uploaded in `parts`: the MD5 for one PUT, else the MD5 of the parts'
    /// MD5s and "-count".
    func localETag(_ v: StagedVersion, parts: [Range<Int64>]) throws(FSError) -> String {
        let size = parts.last?.upperBound ?? 0
        if parts.count <= 1 { return try md5(of: v.fd, size: size).hexString }
        var sums: [UInt8] = []
        var md5 = StreamingDigest(.md5)
        var part = 0
        try forEachChunk(of: v.fd, size: size) { chunk, off in
            var at = 0
            while at < chunk.count {
                let n = min(chunk.count - at, Int(parts[part].upperBound - (off + Int64(at))))
                md5.update(UnsafeRawBufferPointer(rebasing: chunk[at..<(at + n)]))
                at += n
                if off + Int64(at) == parts[part].upperBound {
                    sums += md5.finalize()
                    md5 = StreamingDigest(.md5)
                    part += 1
                }
            }
        }
        var all = StreamingDigest(.md5)
        sums.withUnsafeBytes { all.update($0) }
        return all.finalize().hexString + "-\(parts.count)"
    }

    /// Uploads the parts not in `done` (part number → ETag), several at a time; returns all of them in order.
    func uploadParts(_ v: StagedVersion, key: String, uploadId: String, ranges: [Range<Int64>],
                     done: [Int: String]) async throws -> [CompletedPart] {
        let slots = self.partSlots
        return try await withThrowingTaskGroup(of: CompletedPart.self) { group in
            var parts: [CompletedPart] = []
            var started = 0
            for (i, r) in ranges.enumerated() {
                if let etag = done[i + 1] {
                    parts.append(CompletedPart(partNumber: i + 1, etag: etag))
                    continue
                }
                await slots.acquire()
                group.addTask {
                    defer { slots.release() }
                    return CompletedPart(partNumber: i + 1, etag: try await self.sendPart(v, key: key, uploadId: uploadId,
                                                                                          number: i + 1, range: r))
                }
                started += 1
                if started == 2 { crashPoint("during-parts") }
            }
            for try await p in group { parts.append(p) }
            return parts.sorted { $0.partNumber < $1.partNumber }
        }
    }

    /// Uploads bytes `range` of `v`'s staged file as part `number`, and counts them as sent. Returns the ETag.
    func sendPart(_ v: StagedVersion, key: String, uploadId: String, number: Int, range: Range<Int64>) async throws(S3Error) -> String {
        let etag = try await client.uploadPart(bucket, key, uploadId: uploadId, partNumber: number,
                                               body: .file(descriptor: v.fd, offset: range.lowerBound, length: Int64(range.count)),
                                               contentMD5: nil)
        v.state.withLock { $0.bytesUploaded += Int64(range.count) }
        return etag
    }

    /// Test hook: the daemon kills itself at the named point (CKPTFS_CRASH_AT), to test crash recovery at
    /// moments a signal from outside cannot hit reliably.
    func crashPoint(_ name: String) {
        if options.crashAt == name {
            logger.critical("crash point reached, killing the daemon", metadata: ["point": "\(name)"])
            kill(getpid(), SIGKILL)
        }
    }

    /// After a version settles (landed, superseded, dropped): it leaves the queue. Its staged copy goes unless
    /// it is the current version of a file still open (a rename may need it again; the last close cleans up).
    /// A landed current version of a file nobody has open makes the file clean: stat shows the object.
    func finishUpload(_ v: StagedVersion, etag: String? = nil) {
        abandonEarlyUpload(v, because: "superseded")  // superseded or dropped before its parts were used
        uploadState.withLock { u in _ = u.pending.removeValue(forKey: v.id) }
        closeUploadJobs()
        let key = v.key
        let (size, mtime) = v.state.withLock { ($0.size, $0.mtime) }
        enum After { case remove, keep, clean }
        let after = local.withLock { l -> After in
            guard let f = l[key] else { return .remove }
            return f.state.withLock { s -> After in
                guard s.current === v else { return .remove }
                guard etag != nil else { return .keep }
                if s.handles > 0 { return .keep }
                l.removeValue(forKey: key)
                return .clean
            }
        }
        if after != .keep { Glibc.unlink(v.path) }
        guard after == .clean, let etag else { return }
        showUploaded(key: key, meta: Meta(isDirectory: false, size: size, etag: etag, mtime: mtime))
    }

    /// The attributes of `key` are those of the object just uploaded.
    func showUploaded(key: String, meta: Meta) {
        table.withLock { t in
            for (ino, n) in t.nodes where n.key == key && !n.meta.isDirectory {
                t.nodes[ino]?.meta = meta
                t.nodes[ino]?.fetched = .now
                if t.listings[n.parent] != nil { t.listings[n.parent]?.entries[n.name] = meta }
            }
        }
    }

    /// The version that carries `v`'s bytes to S3: `v`, or the newest version that superseded it.
    func carrier(of v: StagedVersion) -> StagedVersion {
        var cur = v
        while let next = cur.state.withLock({ s -> StagedVersion? in
            if case .superseded = s.upload { return s.successor }
            return nil
        }) { cur = next }
        return cur
    }

    /// Waits until each version (or the version that superseded it) is settled, or the deadline passes.
    /// Returns the keys not durable, with why.
    func waitDurable(_ versions: [StagedVersion], deadline: ContinuousClock.Instant?) async -> [(String, String)] {
        // Someone waits for all of them: none waits out the upload delay.
        for v in versions { carrier(of: v).markUrgent() }
        for v in versions {
            while true {
                let cur = carrier(of: v)
                cur.markUrgent()
                if cur.isSettled && carrier(of: v) === cur { break }
                if cur.isFinal && !cur.isSettled { break }  // a conflict: nothing more happens without the user
                let left = deadline.map { $0 - ContinuousClock.now }
                if let left, left <= .zero { break }
                await cur.waitFinal(timeout: left)
            }
        }
        var left: [(String, String)] = []
        for v in versions {
            let cur = carrier(of: v)
            if !cur.isSettled {
                let (key, err, up) = cur.state.withLock { ($0.key, $0.lastError, $0.upload) }
                let why: String
                if let err { why = err } else if case .uploading = up { why = "still uploading" } else { why = "waiting to upload" }
                left.append((key, why))
            }
        }
        return left
    }

    /// Blocks until every acknowledged change under `path` (relative to the mount; "" for all) is durable in
    /// S3, or the timeout passes: files closed or fsynced (queued or uploading versions), and deletes. A file still open
    /// for writing is not sealed here: only what close() or fsync() acknowledged is uploaded, so bytes of a
    /// save in progress never reach S3 (its last acknowledged version, if any, is waited for). Returns the
    /// paths that are not durable, with the reason.
    public func flushAll(under path: String, timeout: Duration?) async -> [(path: String, reason: String)] {
        let keyPrefix = prefix + path
        func under(_ key: String) -> Bool {
            path.isEmpty || key == keyPrefix || key.hasPrefix(keyPrefix.hasSuffix("/") ? keyPrefix : keyPrefix + "/")
        }
        let versions = uploadState.withLock { u in u.pending.values.filter { under($0.key) } }
        let open = local.withLock { l in l.filter { under($0.key) && !$0.value.current.state.withLock { $0.sealed } }.map(\.key) }
        if !open.isEmpty {
            logger.info("files open for writing are not uploaded until they are closed or fsynced",
                        metadata: ["keys": "\(open.sorted().prefix(10))", "count": "\(open.count)"])
        }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var failures = await waitDurable(versions, deadline: deadline)
        // Deletes too (unlink, rmdir, old names of renames), which go after the uploads before them.
        for key in await waitDeletes(under: under, deadline: deadline) {
            failures.append((key, "delete not applied yet (it waits for the uploads before it)"))
        }
        var seen = Set<String>()
        return failures.filter { seen.insert($0.0).inserted }.map { (String($0.0.dropFirst(prefix.count)), $0.1) }
    }

    public var writeBackStatus: WriteBackStatus {
        var s = WriteBackStatus()
        let pending = uploadState.withLock { u -> [StagedVersion] in
            s.uploadedFiles = u.uploadedFiles
            s.uploadedBytes = u.uploadedBytes
            s.recovered = u.recovered
            s.quarantined = u.quarantined
            s.pendingDeletes = u.deletes.count
            return Array(u.pending.values)
        }
        var versions = pending
        for f in local.withLock({ Array($0.values) }) where !versions.contains(where: { $0 === f.current }) {
            if f.current.state.withLock({ !$0.sealed }) { versions.append(f.current) }
        }
        for v in versions {
            let (key, size, up, err, sealed, sent) = v.state.withLock { ($0.key, $0.size, $0.upload, $0.lastError, $0.sealed, $0.bytesUploaded) }
            let state: String
            switch up {
            case .waiting: state = sealed ? "queued" : "open"
            case .uploading: state = "uploading"
            case .conflict: state = "conflict"
            default: continue
            }
            let age = (ContinuousClock.now - v.created).seconds
            let p = WriteBackStatus.Pending(path: String(key.dropFirst(prefix.count)), bytes: size, state: state,
                                            ageSeconds: age, error: err, sentBytes: sent)
            s.dirtyFiles += 1
            s.dirtyBytes += size
            if state == "uploading" { s.uploadsInFlight += 1 }
            s.oldestDirtySeconds = max(s.oldestDirtySeconds, age)
            s.pending.append(p)
            if err != nil { s.failures.append(p) }
        }
        s.pending.sort { $0.path < $1.path }
        s.stagingBytes = FileSystem.diskUsage(of: stagingDir)
        return s
    }

    /// Bytes the files in `dir` take on disk (allocated blocks: sparse staged files count what they hold).
    static func diskUsage(of dir: String) -> Int64 {
        var total: Int64 = 0
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            var st = stat()
            if lstat(dir + "/" + name, &st) == 0 { total += Int64(st.st_blocks) * 512 }
        }
        return total
    }

    /// Stops background uploads (what is not durable stays in the journal) and releases the cache directory,
    /// as a crash would. For tests of recovery.
    public func shutdown() {
        for t in uploadState.withLock({ Array($0.tails.values) }) { t.task.cancel() }
        cache.unlock()
    }

    // MARK: Recovery

    /// Creates a multipart upload of `v` to `key`, journaled on both sides of the request: a `starting` record
    /// before it and the upload id after it, so that recovery aborts it whenever a crash comes.
    func createUpload(_ v: StagedVersion, key: String, options put: PutOptions) async throws -> String {
        try journal.append(JournalRecord(op: .starting, id: v.id, key: key, mtime: Date().timeIntervalSince1970))
        let uploadId = try await client.createMultipartUpload(bucket, key, options: put)
        do {
            try journal.append(JournalRecord(op: .multipart, id: v.id, key: key, uploadId: uploadId))
        } catch {
            try? await client.abortMultipartUpload(bucket, key, uploadId: uploadId)
            throw error
        }
        return uploadId
    }

    /// Multipart uploads of `key` created since `time` (less a margin for clock skew) that no journal record
    /// names: a crash came between CreateMultipartUpload and its `multipart` record.
    func unrecordedUploads(of key: String, since time: Double) async -> [String] {
        let since = Date(timeIntervalSince1970: time - 300)
        var found: [String] = []
        var keyMarker: String?, idMarker: String?
        while true {
            guard let page = try? await client.listMultipartUploads(bucket, prefix: key, keyMarker: keyMarker, uploadIdMarker: idMarker) else {
                logger.warning("could not list multipart uploads to find one a crash left open", metadata: ["key": "\(key)"])
                return found
            }
            found += page.uploads.filter { $0.key == key && ($0.initiated ?? since) >= since }.map(\.uploadId)
            guard page.isTruncated, page.nextKeyMarker != nil || page.nextUploadIdMarker != nil else { return found }
            keyMarker = page.nextKeyMarker
            idMarker = page.nextUploadIdMarker
        }
    }

    /// Reads the journal left by an earlier mount, in order, and queues again what it acknowledged and S3 does
    /// not have yet: the newest acknowledged version of each key (checked against its size and checksum; a
    /// damaged one is moved to `lost+found` and reported, never uploaded) and the deletes not applied yet, in
    /// the order they were journaled (so a delete still waits for the uploads acknowledged before it). A rename
    /// a crash cut short is finished. Multipart uploads the crash left open are aborted. Reads of recovered
    /// paths see the staged bytes from now on. Call before serving requests.
    public func recover() async throws(FSError) -> RecoveryReport {
        var report = RecoveryReport()
        let (records, torn) = Journal.replay(path: journalPath)
        report.tornTail = torn
        // Versions acknowledged and neither landed nor dropped (a `done` counts only for the key the version
        // had at that point of the journal), with the position of their last commit record.
        var acked: [UInt64: (record: JournalRecord, position: Int)] = [:]
        var landed = Set<UInt64>()
        var deletes: [UInt64: (key: String, position: Int)] = [:]
        var renames: [UInt64: JournalRecord] = [:]
        var multipart: [(UInt64, String, String)] = []
        var starting: [UInt64: (key: String, time: Double)] = [:]  // created, perhaps, but no id recorded
        var maxId: UInt64 = 0
        for (position, r) in records.enumerated() {
            maxId = max(maxId, r.id)
            switch r.op {
            case .commit:
                acked[r.id] = (r, position)
                landed.remove(r.id)
            case .done:
                if let a = acked[r.id], r.key == nil || r.key == a.record.key {
                    acked[r.id] = nil
                    landed.insert(r.id)
                    // Versions of the key acknowledged before it were superseded by it (their staged files are
                    // gone): what landed carries their bytes.
                    if let key = a.record.key {
                        for (id, b) in acked where b.record.key == key && b.position < a.position { acked[id] = nil }
                    }
                }
                deletes[r.id] = nil
                renames[r.id] = nil
            case .drop: acked[r.id] = nil
            case .delete: if let k = r.key { deletes[r.id] = (k, position) }
            case .renaming: renames[r.id] = r
            case .starting: if let k = r.key { starting[r.id] = (k, r.mtime ?? 0) }
            case .multipart:
                if let k = r.key, let u = r.uploadId { multipart.append((r.id, k, u)) }
                starting[r.id] = nil
            }
        }
        for (id, s) in starting where !landed.contains(id) {
            multipart += await unrecordedUploads(of: s.key, since: s.time).map { (id, s.key, $0) }
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: stagingDir)) ?? [] {
            if let id = UInt64(name) { maxId = max(maxId, id) }
        }
        nextVersion.store(maxId, ordering: .relaxed)

        // Multipart uploads of versions that did not land were cut short (or their version was dropped): abort
        // them (an upload starts over). One that completed answers NoSuchUpload.
        for (id, key, uploadId) in multipart where !landed.contains(id) {
            do {
                try await client.abortMultipartUpload(bucket, key, uploadId: uploadId)
                report.abortedMultipart += 1
            } catch {
                if error.code != .noSuchUpload { logger.warning("could not abort an old multipart upload", metadata: ["key": "\(key)", "error": "\(error)"]) }
            }
        }

        // Renames a crash cut short are finished: the objects not copied yet are copied, local versions move to
        // the new names, and the old names are deleted (after the uploads, like any delete).
        var keptRenames: [JournalRecord] = []
        var end = records.count
        for (_, r) in renames.sorted(by: { $0.key < $1.key }) {
            guard let src = r.key, let dst = r.target else { continue }
            func mapped(_ k: String) -> String? {
                if k == src { return dst }
                return src.hasSuffix("/") && k.hasPrefix(src) ? dst + k.dropFirst(src.count) : nil
            }
            do throws(FSError) {
                for k in r.keys ?? [] {
                    guard let to = mapped(k) else { continue }
                    try await copyIfPresent(from: k, to: to)
                }
            } catch {
                logger.error("could not finish a rename a crash interrupted; the next mount tries again",
                             metadata: ["from": "\(src)", "to": "\(dst)", "error": "\(error)"])
                keptRenames.append(r)
                continue
            }
            for (id, a) in acked {
                guard let k = a.record.key, let to = mapped(k) else { continue }
                var rec = a.record
                rec.key = to
                rec.ifMatch = nil
                rec.ifNoneMatch = nil
                acked[id] = (rec, end)
                end += 1
            }
            for k in FileSystem.deleteOrder(r.keys ?? []) {
                let id = nextVersion.wrappingAdd(1, ordering: .relaxed).newValue
                deletes[id] = (k, end)
                end += 1
            }
            report.finishedRenames += 1
        }

        // The newest acknowledged version of each key is what must reach S3.
        var newest: [String: (record: JournalRecord, position: Int)] = [:]
        for (_, a) in acked {
            guard let key = a.record.key else { continue }
            if let cur = newest[key], cur.position > a.position { continue }
            newest[key] = a
        }
        var keep: [(JournalRecord, Int)] = []
        var recovered: [(StagedVersion, Int)] = []
        for (key, a) in newest {
            let r = a.record
            let path = "\(stagingDir)/\(r.id)"
            var missing = Set<Int64>()
            for range in r.missing ?? [] where range.count == 2 && range[0] < range[1] { missing.formUnion(range[0]..<range[1]) }
            let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                report.quarantined.append((key, path))
                logger.error("an acknowledged file's staged copy is missing; it cannot be uploaded",
                             metadata: ["key": "\(key)", "path": "\(path)"])
                continue
            }
            var st = stat()
            fstat(fd, &st)
            var ok = Int64(st.st_size) == r.size
            if ok, let want = r.xxh64 {
                ok = (try? checksum(fd: fd, size: r.size ?? 0, missing: missing)).map { String($0, radix: 16) } == want
            }
            guard ok else {
                close(fd)
                let lost = cache.directory + "/lost+found"
                Glibc.mkdir(lost, 0o700)
                let dest = "\(lost)/\(r.id)-" + key.replacingOccurrences(of: "/", with: "_")
                if Glibc.rename(path, dest) != 0 { Glibc.unlink(path) }
                report.quarantined.append((key, dest))
                logger.error("a staged file failed its checksum; moved aside, not uploaded",
                             metadata: ["key": "\(key)", "moved.to": "\(dest)"])
                continue
            }
            let v = StagedVersion(id: r.id, path: path, fd: fd, key: key, size: r.size ?? 0,
                                  mtime: Date(timeIntervalSince1970: r.mtime ?? Date().timeIntervalSince1970))
            v.state.withLock { s in
                s.sealed = true
                s.changed = false
                s.committedSum = r.xxh64
                s.modified = true
                if let e = r.ifMatch { s.expect = .etag(e) } else if r.ifNoneMatch == true { s.expect = .absent }
                if let bk = r.baseKey, let be = r.baseETag, let bs = r.baseSize, !missing.isEmpty {
                    s.base = FileHandle(ino: 0, key: bk, etag: be, size: bs)
                    s.baseLimit = r.baseLimit ?? bs
                    s.missing = missing
                }
            }
            local.withLock { $0[key] = LocalFile(key: key, current: v) }
            keep.append((r, a.position))
            recovered.append((v, a.position))
            report.requeued.append(String(key.dropFirst(prefix.count)))
        }
        // Staged files nobody acknowledged (close never returned), superseded or already uploaded are removed.
        let keepIds = Set(keep.map { $0.0.id })
        for name in (try? FileManager.default.contentsOfDirectory(atPath: stagingDir)) ?? [] {
            if let id = UInt64(name), keepIds.contains(id) { continue }
            Glibc.unlink("\(stagingDir)/\(name)")
        }
        for (id, d) in deletes { keep.append((JournalRecord(op: .delete, id: id, key: d.key), d.position)) }
        for r in keptRenames { keep.append((r, -1)) }
        try Journal.rewrite(path: journalPath, keep.sorted { $0.1 < $1.1 }.map(\.0))
        try journal.reopen()
        uploadState.withLock { u in
            u.recovered = report.requeued.count
            u.quarantined = report.quarantined.map { "\($0.key) -> \($0.path)" }
        }
        // Queued again in the journal's order: each delete after the uploads acknowledged before it.
        enum Op { case upload(StagedVersion), delete(UInt64, String) }
        var ops: [(Op, Int)] = recovered.map { (.upload($0.0), $0.1) }
        ops += deletes.map { (.delete($0.key, $0.value.key), $0.value.position) }
        for (op, _) in ops.sorted(by: { $0.1 < $1.1 }) {
            switch op {
            case .upload(let v): enqueueUpload(v)
            case .delete(let id, let key): queueDeletes([(id, key)], hiding: key.hasSuffix("/") ? [key] : [])
            }
        }
        report.pendingDeletes = deletes.count
        return report
    }
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }
}
