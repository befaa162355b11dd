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

extension WriteBack {
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
            enum Go { case go(generation: Int, key: String), stale, settled }
            let go = v.state.withLock { s -> Go in
                guard s.job == job else { return .stale }
                guard case .waiting = s.upload else { return .settled }
                s.upload = .uploading
                s.reachedKey = true
                return .go(generation: s.commits, key: s.key)
            }
            let generation: Int
            let attemptKey: String
            switch go {
            case .stale: return
            case .settled:
                finishUpload(v)
                return
            case .go(let g, let k): (generation, attemptKey) = (g, k)
            }
            do throws(FSError) {
                let (key, etag, sent, body) = try await uploadOnce(v)
                // What enters the version in the block cache once it has landed (SaveSeeder), taken now: the body
                // a small file was sent from, else a descriptor of the staged file (it keeps the bytes readable
                // after the staged file is removed).
                let seedFile = sent && options.cacheSaves
                    ? seeder.take(v, stagingMayTake: maxDirty - staging.stagedBytes, sentBody: body) : nil
                // The record names the key and the commit the upload started from: a rename after it journals the
                // version again, under a new key and generation.
                var done = JournalRecord(op: .done, id: v.id, key: key, etag: etag)
                done.generation = generation
                try await journal.record(done)
                // The object under the key holds this file's acknowledged bytes now. Decided before `land` wakes
                // fsync and flush, under the local files' lock, where renames swap files: while the version is
                // still uploading under this key and job, the file under the key is its own (a rename over the
                // key drops the replaced file's versions before it puts another file there; a rename of this
                // one moves the version first, and sets the flag itself), unless a rename left it under the key
                // (`keptByRename`, every save kept): then it is the replaced file's save, or an earlier save of
                // the file renamed away, and the file there now has none of its bytes (model seed 98618: a
                // rename of that file copied it to the new name as the file's own).
                localFiles.byKey.withLock { l in
                    let mine = v.state.withLock { s in
                        if case .uploading = s.upload { s.job == job && s.key.sameBytes(key) && !s.keptByRename } else { false }
                    }
                    if mine, let f = l[key] { f.state.withLock { $0.objectIsAcknowledged = true } }
                }
                switch v.land(job: job, key: key, etag: etag) {
                case .dropped:
                    // Unlinked while uploading: the delete queued behind this job removes what landed.
                    finishUpload(v)
                    return
                case .moved:
                    // Renamed while uploading: the job the rename queued under the new name waits for this one,
                    // then uploads it there (the old name's delete is queued after that job).
                    return
                case .landed: break
                }
                // The version this save replaced in S3 (its condition named it) has no use in the cache any more.
                if case .ifMatch(let replaced)? = condition(for: v), replaced != etag {
                    openObjects.versionGone(key: key, etag: replaced)
                }
                resolveExpectations(after: v, etag: etag)
                changes.state.withLock { u in
                    u.uploadedFiles += 1
                    u.uploadedBytes += v.size
                }
                finishUpload(v)
                if let seedFile { seeder.seed(v, from: seedFile, key: key, etag: etag) }
                return
            } catch {
                // Unlinked while uploading (dropped): whatever the failure, nothing of it is wanted any more; a
                // conflict with what the key holds now is none of this file's.
                if v.state.withLock({ s in if case .dropped = s.upload { true } else { false } }) {
                    finishUpload(v)
                    return
                }
                // Renamed while uploading: what the old name holds (a conflict there too) is none of this
                // version's any more; the job the rename queued waits for this one and uploads it there. The
                // rename moves the key first and queues that job after journaling: a failure in between is the
                // old name's too (seed 1363: a conflict met just before the rename was reported under the new
                // name, held the old name's delete, and the file never went up there).
                let moved = v.state.withLock { s -> Bool in
                    guard s.job != job || !s.key.sameBytes(attemptKey) else { return false }
                    s.upload = .waiting
                    return true
                }
                if moved { return }
                if error.isConflict && v.state.withLock({ $0.keptByRename }) {
                    // A replaced file's save, sent with its condition before the rename: the rename put
                    // another file under the key, so this save is history only; dropped, not a conflict.
                    logger.warning("a save of a file a rename replaced met another client's object and was not kept",
                                   metadata: ["key": "\(v.key)", "error": "\(error)"])
                    // The saves queued after it under the key with no condition were to replace what it left:
                    // that is another client's object, which nobody here saw, so they expect no object instead
                    // and meet it as a conflict too (S-CONFLICT-RENAMED-OVER-KEPT; outside testing round 13, F3).
                    // (Queued after it in the key's order; also the current version of the file the rename put
                    // there, not queued while a writer has it open.)
                    // Not once the name was removed since the rename: the saves under it then are a new file's,
                    // which replaced that removal's delete and replace what the key holds (keep-every-version
                    // seed 32488: a file created under the name after an unlink was stopped as a conflict).
                    var later: [StagedVersion] = []
                    if !v.state.withLock({ $0.nameRemoved }) {
                        later = changes.state.withLock { u in
                            u.pending.values.filter { w in w.key.sameBytes(v.key) && w.state.withLock { $0.job } > job }
                        }
                        if let cur = localFiles.byKey.withLock({ $0[v.key]?.current }), cur !== v { later.append(cur) }
                    }
                    var changed: [StagedVersion] = []
                    for w in later {
                        let now = w.state.withLock { s -> Bool in
                            guard case .anything = s.expect else { return false }
                            s.expect = .absent
                            return true
                        }
                        if now { changed.append(w) }
                    }
                    // Journaled too: recovered after a crash with their old records, they went with no condition.
                    for w in changed {
                        guard let sum = w.state.withLock({ $0.committedSum }) else { continue }
                        do throws(FSError) { try await journal.record(commitRecord(w, checksum: sum)) } catch {
                            logger.warning("could not journal that a save expects no object; after a crash it replaces what is there",
                                           metadata: ["key": "\(w.key)", "error": "\(error)"])
                        }
                    }
                    v.settle(.dropped)
                    finishUpload(v)
                    return
                }
                if error.isConflict {
                    // Someone else changed the object: keep ours (journaled, readable here) and say so.
                    v.state.withLock { $0.lastError = error.message + "; the local copy is kept (rename it to upload it under another name)" }
                    logger.error("upload stopped by a conflict; the local copy is kept",
                                 metadata: ["key": "\(v.key)", "error": "\(error)"])
                    v.settle(.conflict)
                    staging.wakeWaiters()  // a conflict brings nothing down: held writers check again
                    // A flush waiting for deletes looks again: this conflict may hold them all (`waitDeletes`).
                    for w in changes.state.withLock({ $0.deleteWaiters.removeAll() }) { w.resume() }
                    return
                }
                v.attemptFailed(error.description, refused: error.cause?.isRefusal ?? false)
                let stop = v.state.withLock { s -> Bool in
                    if case .uploading = s.upload { s.upload = .waiting; return false }
                    return true
                }
                logger.warning("upload failed; retrying", metadata: ["key": "\(v.key)", "error": "\(error)",
                                                                    "retry.in": "\(delay)"])
                if stop { finishUpload(v); return }
                await v.waitToRetry(delay)
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    /// One attempt: PutObject or multipart, then a HEAD that checks the size. Returns the key and the ETag the
    /// version landed under, and `sent`: whether S3 certainly holds this version's staged bytes, whole, under
    /// that key and ETag (the reply to the write says so; a file opened in place and never changed, whose
    /// staged copy may lack blocks, is not `sent`), so they may be entered in the block cache (SaveSeeder);
    /// `body`, the bytes of a file of at most `inMemoryPutLimit` bytes that one PutObject sent from memory.
    func uploadOnce(_ v: StagedVersion) async throws(FSError) -> (key: String, etag: String, sent: Bool, body: [UInt8]?) {
        // Opened in place and never changed: the object in S3 is already this file.
        if let base = v.state.withLock({ $0.differsFromBase ? nil : $0.base }), base.key.sameBytes(v.key) { return (v.key, base.etag, false, nil) }
        try await fillAll(v)
        let (key, size, mtime) = v.state.withLock { ($0.key, $0.size, $0.mtime) }
        var put = PutOptions(metadata: ownTags(v, key: key).merging(["mtime": String(format: "%.3f", mtime.timeIntervalSince1970)]) { a, _ in a })
        put.condition = conditionsUnsupported.load(ordering: .relaxed) ? nil : condition(for: v)
        let ranges = WriteBack.partRanges(size: size, minimum: options.partSize)
        var expectedParts = 0
        await keepReaders(of: key)  // descriptors reading the object it replaces read on
        do throws(FSError) {
            return try await putOrMultipart()
        } catch where error.kind == .conflict {
            // Perhaps our own earlier attempt landed (a crash or a lost reply after it completed), or another
            // version of this key from this cache directory that the condition was written before (a crash
            // while it was uploading; a save the trainer removed or replaced, whose delete this upload replaced,
            // S-CONFLICT-IN-FLIGHT): the object's tag tells. This mount's changes of one key go in order, so
            // any other of its versions there is one the trainer replaced. Only an answer tells: a HEAD that fails (not
            // "no such key") fails this attempt, which is retried; it is no conflict.
            let info: ObjectInfo?
            do throws(S3Error) {
                info = try await client.headObject(bucket, key, versionId: nil, ifMatch: nil)
            } catch where error.code == .noSuchKey {
                info = nil
            } catch {
                throw FSError(error, during: .other)
            }
            if let info, let tagged = ownVersion(info, key: key) {
                // Tagged with this version in the same reply as its ETag: this version's bytes.
                if tagged == v.id { return (key, info.etag, true, nil) }
                logger.info("another save of this name from this cache directory is there; uploading over it",
                            metadata: ["key": "\(key)"])
                put.condition = .ifMatch(info.etag)
                return try await putOrMultipart()
            }
            if let info, info.size == size,
               try await offPool({ () throws(FSError) in
                   let file = try v.open()
                   return try withExtendedLifetime(file) { () throws(FSError) in try StagingArea.localETag(fd: file.rawValue, parts: ranges) }
               })
                == info.etag.trimmingCharacters(in: CharacterSet(charactersIn: "\"")) {
                return (key, info.etag, true, nil)
            }
            let what: String
            switch put.condition {
            case .ifNoneMatch: what = "\(key) was created in S3 by someone else after this file was created here"
            default: what = "\(key) was changed in S3 by someone else after this file was opened here"
            }
            throw FSError.conflict(what)
        } catch where error.kind == .conditionsUnsupported && put.condition != nil {
            logger.warning("the server does not support conditional writes; uploading without conditions")
            conditionsUnsupported.store(true, ordering: .relaxed)
            put.condition = nil
            return try await putOrMultipart()
        }

        func putOrMultipart() async throws(FSError) -> (key: String, etag: String, sent: Bool, body: [UInt8]?) {
            if ranges.count <= 1 {
                // One PUT with Content-MD5: the server rejects a body damaged in transit, and a plain-MD5 ETag
                // must equal ours. No HEAD needed. A small file is read once, into memory: its MD5, the body
                // and what the block cache gets (SaveSeeder) all come from that one read; a larger one is hashed
                // from the staged file and sent from it.
                let file = try v.open()
                defer { withExtendedLifetime(file) {} }  // the request reads it until it returns
                let (sum, bytes) = try await offPool { () throws(FSError) -> ([UInt8], [UInt8]?) in
                    if size <= WriteBack.inMemoryPutLimit {
                        let b = try StagingArea.read(fd: file.rawValue, size: size)
                        var md5 = StreamingDigest(.md5)
                        b.withUnsafeBytes { md5.update($0) }
                        return (md5.finalize(), b)
                    }
                    return (try StagingArea.md5(of: file.rawValue, size: size), nil)
                }
                var o = put
                o.contentMD5 = sum
                let body: ObjectBody = bytes.map { .bytes($0) } ?? .file(descriptor: file.rawValue, offset: 0, length: size)
                let r = try await s3(.write) { () async throws(S3Error) in
                    try await client.putObject(bucket, key, body: body, options: o)
                }
                let etag = r.etag.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                if r.etagIsMD5, etag.count == 32, etag.allSatisfy(\.isHexDigit), etag.lowercased() != sum.hexString {
                    throw FSError(EIO, "uploaded \(key) but the server's ETag \(etag) is not the MD5 of the file")
                }
                puts.wrappingAdd(1, ordering: .relaxed)
                return (key, r.etag, true, bytes)
            }
            // Parts sent while the file was written are kept; otherwise a new multipart upload.
            let early = await takeEarlyUpload(v, key: key)
            let uploadId: String
            if let early { uploadId = early.uploadId } else { uploadId = try await createUpload(v, key: key, options: put) }
            let completed: CkptS3.WriteResult
            do throws(FSError) {
                let parts = try await uploadParts(v, key: key, uploadId: uploadId, ranges: ranges, done: early?.parts ?? [:])
                expectedParts = parts.count
                let condition = put.condition
                completed = try await s3(.write) { () async throws(S3Error) in
                    try await client.completeMultipartUpload(bucket, key, uploadId: uploadId, parts: parts, condition: condition)
                }
                liveMultipart.withLock { _ = $0.remove(uploadId) }
            } catch {
                try? await client.abortMultipartUpload(bucket, key, uploadId: uploadId)
                liveMultipart.withLock { _ = $0.remove(uploadId) }
                throw error
            }
            let info = try await s3(.other) { () async throws(S3Error) in try await client.headObject(bucket, key, versionId: nil, ifMatch: nil) }
            guard info.size == size else {
                throw FSError(EIO, "uploaded \(key) but the server reports \(info.size) bytes instead of \(size)")
            }
            if let dash = info.etag.lastIndex(of: "-"),
               let n = Int(info.etag[info.etag.index(after: dash)...].filter(\.isNumber)), n != expectedParts {
                throw FSError(EIO, "uploaded \(key) in \(expectedParts) parts but the server's ETag says \(n)")
            }
            puts.wrappingAdd(max(1, expectedParts), ordering: .relaxed)
            // The HEAD's ETag is this upload's only if CompleteMultipartUpload answered with the same one
            // (another client may have written the key in between).
            return (key, info.etag, !completed.etag.isEmpty && completed.etag == info.etag, nil)
        }
    }

    /// Files of at most this many bytes are uploaded from memory (`uploadOnce`): one read of the staged file
    /// instead of three (the MD5, the body, the block cache's copy). At most `FSOptions.smallUploadConcurrency` of
    /// them are in flight (32 by default: 32 MiB of bodies at most), and SaveSeeder keeps at most
    /// `SaveSeeder.heldBodyLimit` of those that landed.
    static let inMemoryPutLimit: Int64 = 1 << 20

    /// User metadata naming the cache directory and version an object was uploaded from
    /// (x-amz-meta-ckptfs-version: WRITER.VERSION), and the key it was uploaded under (x-amz-meta-ckptfs-key:
    /// the first 8 bytes of its SHA-256, hex): a copy keeps user metadata (CopyObject's default
    /// MetadataDirective COPY), so the version tag alone follows an object another client copies elsewhere.
    static let versionTag = "ckptfs-version"
    static let keyTag = "ckptfs-key"

    /// The user metadata of an upload of `v` under `key` (`versionTag`, `keyTag`).
    func ownTags(_ v: StagedVersion, key: String) -> [String: String] {
        [WriteBack.versionTag: "\(writerId).\(v.id)", WriteBack.keyTag: WriteBack.keyTag(key)]
    }

    static func keyTag(_ key: String) -> String { Array(Digest.sha256(key).prefix(8)).hexString }

    /// The version id, if `info` (the object under `key`) is an object this cache directory uploaded under
    /// that key: not a copy of one made elsewhere (outside testing round 13, F1: another client's copy of one
    /// of ours was taken for ours, and replaced or deleted). An object of an earlier build has no key tag.
    func ownVersion(_ info: ObjectInfo, key: String) -> UInt64? {
        guard let tag = info.metadata[WriteBack.versionTag], let dot = tag.lastIndex(of: "."),
              tag[..<dot] == writerId else { return nil }
        if let k = info.metadata[WriteBack.keyTag], k != WriteBack.keyTag(key) { return nil }
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

    /// Uploads the parts not in `done` (by part number), several at a time; returns all of them in order.
    func uploadParts(_ v: StagedVersion, key: String, uploadId: String, ranges: [Range<Int64>],
                     done: [Int: CompletedPart]) async throws(FSError) -> [CompletedPart] {
        let slots = self.changes.partSlots
        let result = await withTaskGroup(of: Result<CompletedPart, FSError>.self) { group -> Result<[CompletedPart], FSError> in
            var parts: [CompletedPart] = []
            for (i, r) in ranges.enumerated() {
                if let part = done[i + 1] {
                    parts.append(part)
                    continue
                }
                await slots.acquire()
                group.addTask {
                    defer { slots.release() }
                    do throws(FSError) {
                        return .success(try await self.sendPart(v, key: key, uploadId: uploadId, number: i + 1, range: r))
                    } catch {
                        return .failure(error)
                    }
                }
            }
            for await r in group {
                switch r {
                case .success(let p): parts.append(p)
                case .failure(let e):
                    group.cancelAll()
                    return .failure(e)
                }
            }
            return .success(parts.sorted { $0.partNumber < $1.partNumber })
        }
        return try result.get()
    }

    /// Uploads bytes `range` of `v`'s staged file as part `number`, and counts them as sent. Returns the part as
    /// CompleteMultipartUpload names it. With its CRC32C (`FSOptions.partChecksums`: over plain http; the upload
    /// declared it in `createUpload`): the server refuses a body damaged on the way (BadDigest, which the client
    /// sends again), where without it S3 stored it and the upload was reported durable with other bytes in S3
    /// (outside testing round 11, O1: one byte flipped in a part). The CRC32C comes from the running checksum,
    /// which computed it as the file was written, or else from reading the part from the staged file.
    func sendPart(_ v: StagedVersion, key: String, uploadId: String, number: Int, range: Range<Int64>) async throws(FSError) -> CompletedPart {
        let file = try v.open()
        defer { withExtendedLifetime(file) {} }  // the request reads it until it returns
        let body = ObjectBody.file(descriptor: file.rawValue, offset: range.lowerBound, length: Int64(range.count))
        func fromFile() async throws(FSError) -> UInt32 {
            try await offPool { () throws(FSError) in try StagingArea.crc32c(of: file.rawValue, range: range) }
        }
        func send(_ crc: UInt32?) async throws(FSError) -> String {
            try await s3(.write) { () async throws(S3Error) in
                try await client.uploadPart(bucket, key, uploadId: uploadId, partNumber: number, body: body, checksum: crc.map { .crc32c($0) })
            }
        }
        var crc: UInt32?
        let etag: String
        if partChecksums, let running = v.state.withLock({ $0.sum?.partChecksum(range) }) {
            crc = running
            do throws(FSError) {
                etag = try await send(running)
            } catch where error.cause?.code == .badDigest {
                // The part was refused every time it was sent: the running checksum and the staged file disagree
                // (a write it did not see). The file's bytes are what is uploaded; their own CRC32C goes with them.
                logger.warning("a part's running CRC32C does not match the staged file; checksumming the file",
                               metadata: ["key": "\(key)", "part": "\(number)"])
                crc = try await fromFile()
                etag = try await send(crc)
            }
        } else {
            crc = partChecksums ? try await fromFile() : nil
            etag = try await send(crc)
        }
        v.state.withLock { $0.bytesUploaded += Int64(range.count) }
        return CompletedPart(partNumber: number, etag: etag, checksumCRC32C: crc)
    }

    /// Whether parts carry their CRC32C: over plain http (`FSOptions.partChecksums`), unless the server refused them.
    var partChecksums: Bool { options.partChecksums && !checksumsUnsupported.load(ordering: .relaxed) }

    /// A CreateMultipartUpload refused for its `x-amz-checksum-algorithm` by a server without additional
    /// checksums (S3-compatible servers answer 501 NotImplemented, or 400 InvalidArgument / InvalidRequest).
    static func refusesChecksums(_ e: FSError) -> Bool {
        guard let c = e.cause else { return false }
        return c.httpStatus == 501 || c.code == .invalidRequest || c.s3Code == "InvalidArgument" || c.s3Code == "NotImplemented"
    }

    /// Creates a multipart upload of `v` to `key`, journaled on both sides of the request: a `starting` record
    /// before it and the upload id after it, so that recovery aborts it whenever a crash comes.
    func createUpload(_ v: StagedVersion, key: String, options: PutOptions) async throws(FSError) -> String {
        var put = options
        put.checksumAlgorithm = partChecksums ? .crc32c : nil  // every part carries it (sendPart)
        let started = Date()
        try await journal.record(JournalRecord(op: .starting, id: v.id, key: key, mtime: started.timeIntervalSince1970))
        let uploadId: String
        do throws(FSError) {
            uploadId = try await s3(.write) { () async throws(S3Error) in
                try await createMultipartUpload(key, options: put, since: started)
            }
        } catch where put.checksumAlgorithm != nil && WriteBack.refusesChecksums(error) {
            logger.warning("the server does not take part checksums (x-amz-checksum-algorithm); parts go without them",
                           metadata: ["key": "\(key)", "error": "\(error)"])
            checksumsUnsupported.store(true, ordering: .relaxed)
            put.checksumAlgorithm = nil
            uploadId = try await s3(.write) { () async throws(S3Error) in
                try await createMultipartUpload(key, options: put, since: started)
            }
        }
        do throws(FSError) {
            try await journal.record(JournalRecord(op: .multipart, id: v.id, key: key, uploadId: uploadId))
        } catch {
            try? await client.abortMultipartUpload(bucket, key, uploadId: uploadId)
            throw error
        }
        return uploadId
    }

    /// CreateMultipartUpload of `key` (`since`: when the caller began it), the upload id registered in
    /// `liveMultipart`. When it failed, or was sent more than once (the client retried), a reply may have been
    /// lost with an upload S3 made: `abortLostCreates` (outside testing round 11, F3: one stayed open for good).
    /// Errors: the request's.
    func createMultipartUpload(_ key: String, options: PutOptions, since started: Date) async throws(S3Error) -> String {
        let tally = RequestTally()
        let uploadId: String
        do throws(S3Error) {
            uploadId = try await tally.counting { () async throws(S3Error) in
                try await client.createMultipartUpload(bucket, key, options: options)
            }
        } catch {
            await abortLostCreates(key: key, since: started)
            throw error
        }
        liveMultipart.withLock { _ = $0.insert(uploadId) }
        if tally.sent > 1 { await abortLostCreates(key: key, since: started) }
        return uploadId
    }

    /// After a CreateMultipartUpload of `key` that failed, or succeeded only when sent again: a reply may be what
    /// was lost, and S3 may hold the upload it created, which nobody would complete or abort until the next
    /// mount's recovery (or ever, after a success). Aborts the
    /// multipart uploads of `key` initiated since `since` (less 30 s for the server's clock) that this mount
    /// does not know as its own. Another client starting one for the same key within that moment would have
    /// its upload aborted (its CompleteMultipartUpload then fails with NoSuchUpload), as recovery would.
    func abortLostCreates(key: String, since: Date) async {
        let live = liveMultipart.withLock { $0 }
        for id in await unrecordedUploads(of: key, since: since.timeIntervalSince1970, margin: 30) where !live.contains(id) {
            do throws(S3Error) {
                try await client.abortMultipartUpload(bucket, key, uploadId: id)
                logger.notice("aborted a multipart upload whose CreateMultipartUpload reply was lost", metadata: ["key": "\(key)", "upload_id": "\(id)"])
            } catch {
                if error.code != .noSuchUpload {
                    logger.warning("could not abort a multipart upload whose creation reply was lost; the next mount aborts it",
                                   metadata: ["key": "\(key)", "error": "\(error)"])
                }
            }
        }
    }
}
