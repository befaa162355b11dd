// Waiting for durability: fsync, `ckptfs flush` and unmount wait for versions (and deletes) to reach S3;
// the write-back status.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
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
        // Someone waits for all of them: none waits out the upload delay, and one S3 refused is tried again now
        // (the wait ends when S3 refuses it again: it says how S3 answers now, not how it answered before).
        let began = ContinuousClock.now
        for v in versions {
            let cur = carrier(of: v)
            cur.markUrgent()
            if cur.wasRefused { cur.retrySoon() }
        }
        for v in versions {
            while true {
                let cur = carrier(of: v)
                cur.markUrgent()
                if cur.isSettled && carrier(of: v) === cur { break }
                if cur.isFinal && !cur.isSettled { break }  // a conflict: nothing more happens without the user
                if cur.isRefused(since: began) { break }  // S3 refuses it (a key it cannot store, AccessDenied): say so
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
                if let err, cur.wasRefused {
                    why = err + " (S3 refuses this upload; it is retried every 30 s until it lands, or the file is renamed or removed)"
                } else if let err { why = err } else if case .uploading = up { why = "still uploading" } else { why = "waiting to upload" }
                left.append((key, why))
            }
        }
        return left
    }

    /// Blocks until every acknowledged change under `path` (relative to the mount; "" for all) is durable in
    /// S3, or the timeout passes: files closed or fsynced, and deletes. A file still open for writing has its
    /// last acknowledged version (by close() of one of its descriptors, whose release may not have come yet)
    /// sealed and queued here (`queueAcknowledged`) and waited for; bytes written after it are not uploaded,
    /// so bytes of a save in progress never reach S3. Returns the paths that are not durable, with the reason.
    func flushAll(under path: String, timeout: Duration?) async -> [(path: String, reason: String)] {
        let keyPrefix = prefix + path
        func under(_ key: String) -> Bool {
            path.isEmpty || key.sameBytes(keyPrefix) || key.hasKeyPrefix(keyPrefix.endsWithSlash ? keyPrefix : keyPrefix + "/")
        }
        let files = localFiles.byKey.withLock { l in l.filter { under($0.key) }.map(\.value) }
        _ = try? await offPool { () throws(FSError) in for f in files { self.queueAcknowledged(f) } }  // may wait for a write
        let versions = changes.state.withLock { u in u.pending.values.filter { under($0.key) } }
        let open = localFiles.byKey.withLock { l in l.filter { under($0.key) && !$0.value.current.state.withLock { $0.sealed } }.map(\.key) }
        if !open.isEmpty {
            logger.info("files open for writing are not uploaded until they are closed or fsynced",
                        metadata: ["keys": "\(open.sorted { $0.bytesPrecede($1) }.prefix(10))", "count": "\(open.count)"])
        }
        let deadline = timeout.map { ContinuousClock.now + $0 }
        var failures = await waitDurable(versions, deadline: deadline)
        // Deletes too (unlink, rmdir, old names of renames), which go after the uploads before them.
        let (left, heldByConflict) = await waitDeletes(under: under, deadline: deadline)
        let queued = changes.state.withLock { u in
            BytesDictionary(u.deletes.values.reversed().map { ($0.key, $0) })
        }
        for key in left {
            let why: String
            if let e = queued[key]?.lastError, queued[key]?.refusals.refused == true {
                why = ": S3 refuses the DeleteObject (\(e)); it is retried every 30 s"
            } else if let e = queued[key]?.lastError {
                why = ": DeleteObject fails (\(e)); it is retried"
            } else if queued[key]?.started == true {
                why = " (sent, no answer yet)"
            } else if heldByConflict {
                why = " (a file stopped by a conflict holds it: rename or remove that file)"
            } else if key.endsWithSlash && queued.keys.contains(where: { !$0.sameBytes(key) && $0.hasKeyPrefix(key) }) {
                why = " (it waits for the deletes under it)"  // a directory marker goes after them (runDelete)
            } else {
                why = " (it waits for the uploads before it)"
            }
            failures.append((key, "delete not applied yet" + why))
        }
        var seen = BytesSet()
        return failures.filter { seen.insert($0.0).inserted }.map { ($0.0.keySuffix(after: prefix), $0.1) }
    }

    var writeBackStatus: WriteBackStatus {
        var s = WriteBackStatus()
        let pending = changes.state.withLock { u -> [StagedVersion] in
            s.uploadedFiles = u.uploadedFiles
            s.uploadedBytes = u.uploadedBytes
            s.recovered = u.recovered
            s.quarantined = u.quarantined
            s.pendingDeletes = u.deletes.count
            s.deletes = u.deletes.values.filter { !$0.cancelled }.sorted { $0.job < $1.job }.map { d in
                WriteBackStatus.Pending(path: d.key.keySuffix(after: prefix), bytes: 0,
                                        state: d.started ? "deleting" : "waiting", ageSeconds: 0, error: d.lastError)
            }
            return Array(u.pending.values)
        }
        var versions = pending
        for f in localFiles.byKey.withLock({ Array($0.values) }) where !versions.contains(where: { $0 === f.current }) {
            // Open and changed. One opened in place and not changed is still the object: nothing to upload.
            if f.current.state.withLock({ !$0.sealed && ($0.base == nil || $0.differsFromBase) }) { versions.append(f.current) }
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
            let p = WriteBackStatus.Pending(path: key.keySuffix(after: prefix), bytes: size, state: state,
                                            ageSeconds: age, error: err, sentBytes: sent)
            s.dirtyFiles += 1
            s.dirtyBytes += size
            if state == "uploading" { s.uploadsInFlight += 1 }
            s.oldestDirtySeconds = max(s.oldestDirtySeconds, age)
            s.pending.append(p)
            if err != nil { s.failures.append(p) }
        }
        s.pending.sort { $0.path.bytesPrecede($1.path) }
        s.stagingBytes = staging.diskUsage()
        s.maxDirty = maxDirty
        s.heldWriters = heldWriters.load(ordering: .relaxed)
        s.stagedBytes = staging.stagedBytes
        return s
    }


    /// Stops background uploads (what is not durable stays in the journal) and releases the cache directory,
    /// as a crash would. For tests of recovery.
    func shutdown() {
        // Every upload job, not only each key's last (`tails`): an earlier version's job retrying a failed
        // upload went on after the "crash" (unit tests logged its retries long after their teardown).
        let tasks = changes.state.withLock { u in
            u.tails.values.map(\.task) + u.pending.values.compactMap { v in v.state.withLock { $0.uploadTask } }
        }
        for t in tasks { t.cancel() }
        seeder.stop()
        cache.unlock()
    }
}
