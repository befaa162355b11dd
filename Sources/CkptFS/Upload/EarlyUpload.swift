// Parts uploaded while a large file is still being written.
//
// A checkpoint writer (torch.save, safetensors, numpy) creates a file and appends to it. Once such a file has
// more than one part's worth of bytes, a multipart upload starts and each part goes up as soon as the writer is
// past it, so by the time the last handle closes most of the file is already in S3: the upload after close is
// the tail, and "durable" comes about one part after "closed" instead of one whole upload later.
//
// The parts are only a head start; correctness never depends on them. The object appears only when the
// ordinary upload (Uploads.swift, in the key's order, with its conditions) completes the multipart upload
// after the seal, uploading whatever parts are missing. Any write below what was already sent, a truncate
// under it, a rename, an unlink, an explicit mtime or a superseding version abandons the parts (the upload
// is aborted and the ordinary upload starts afresh). A crash while writing leaves a `multipart` journal record
// for a version that was never acknowledged; recovery aborts it like any other.
import CkptS3
import Foundation

/// The head start of one version's upload.
struct EarlyUpload: Sendable {
    var key: String
    /// Nil while CreateMultipartUpload is in flight (or if it failed).
    var uploadId: String?
    /// Finished parts, by part number.
    var parts: [Int: CompletedPart] = [:]
    /// The end of the last part started; the next part starts here.
    var scheduledEnd: Int64 = 0
    var nextPart = 1
    var inFlight = 0
    /// A task is creating the upload or uploading parts.
    var driving = false
    /// A request failed: no more parts start early (the ordinary upload sends the rest).
    var stalled = false
    var abandoned = false
    /// The ordinary upload took the parts over.
    var taken = false
    /// A part is in flight or a task drives the upload (`FileSystem.earlyIdle` waits until neither).
    var busy: Bool { inFlight > 0 || driving }
}

extension WriteBack {
    /// The end of the multipart part that starts at `start`: parts are `minimum` bytes, or a thousandth of
    /// their start offset (rounded up to a MiB) once that is larger, at most 5 GiB (S3's limit). The layout
    /// does not depend on the final size (parts can go up before it is known), and 10,000 parts reach past
    /// S3's 5 TiB object limit.
    static func partEnd(start: Int64, minimum: Int64) -> Int64 {
        let mib: Int64 = 1 << 20
        return start + max(minimum, min(5 << 30, (start / 1000 + mib - 1) / mib * mib))
    }

    /// The parts of a `size`-byte multipart upload (the last one shorter).
    static func partRanges(size: Int64, minimum: Int64) -> [Range<Int64>] {
        var ranges: [Range<Int64>] = []
        var start: Int64 = 0
        while start < size {
            let end = min(partEnd(start: start, minimum: minimum), size)
            ranges.append(start..<end)
            start = end
        }
        return ranges
    }

    /// Names that are usually renamed right after they are written (write-temp-then-rename): their bytes would
    /// go up under a name that does not last, so they are uploaded only after close, like small files.
    static func looksTemporary(_ key: String) -> Bool {
        let name = key.split(separator: "/").last.map { $0.lowercased() } ?? ""
        let suffixes = [".tmp", ".temp", ".part", ".partial", ".swp", "~"]
        return name.hasPrefix("tmp") || name.hasPrefix(".tmp") || name.hasPrefix(".~") || name.hasPrefix("~")
            || suffixes.contains { name.hasSuffix($0) } || name.contains(".tmp") || name.contains("tempstate")
    }

    /// Called after each write: starts parts the writer has moved past, if `v` is a new file written from the
    /// start without gaps (its running checksum still covers everything).
    func streamIfReady(_ v: StagedVersion) {
        guard options.uploadWhileWriting else { return }
        let minimum = options.partSize
        let start = v.state.withLock { s -> Bool in
            guard !s.sealed, !s.orphaned, let hashed = s.sum?.hashedTo, s.base == nil else { return false }
            if s.early == nil {
                guard hashed > minimum, !WriteBack.looksTemporary(s.key) else { return false }
                s.early = EarlyUpload(key: s.key)
                logger.info("uploading a new file while it is written", metadata: ["key": "\(s.key)"])
            }
            guard var e = s.early, !e.driving, !e.abandoned, !e.stalled, !e.taken, e.key.sameBytes(s.key) else { return false }
            guard e.uploadId == nil || hashed > WriteBack.partEnd(start: e.scheduledEnd, minimum: minimum) else { return false }
            e.driving = true
            s.early = e
            return true
        }
        if start { Task { await self.driveEarlyUpload(v) } }
    }

    /// Creates the multipart upload if needed, then starts every part the writer is past (strictly: the part
    /// must not be the last one), each in a part slot. Returns when nothing more can start now; the next
    /// write starts it again.
    func driveEarlyUpload(_ v: StagedVersion) async {
        let minimum = options.partSize
        if v.state.withLock({ $0.early?.uploadId == nil }) {
            let key = v.key
            do {
                // No metadata: the mtime is not known yet (the object gets Last-Modified, about the close).
                let uploadId = try await createUpload(v, key: key, options: PutOptions(metadata: ownTags(v, key: key)))
                v.state.withLock { $0.early?.uploadId = uploadId }
            } catch {
                logger.info("could not start uploading a file being written; it is uploaded after close",
                            metadata: ["key": "\(key)", "error": "\(error)"])
                v.state.withLock { $0.early?.stalled = true }
            }
        }
        while true {
            // The next part, if the writer is past its end and the early upload still stands.
            let next = v.state.withLock { s -> (Int, Range<Int64>, String, String)? in
                guard var e = s.early, let id = e.uploadId, !e.abandoned, !e.stalled, !e.taken, !s.sealed,
                      let hashed = s.sum?.hashedTo, e.key.sameBytes(s.key) else {
                    s.early?.driving = false
                    return nil
                }
                let end = WriteBack.partEnd(start: e.scheduledEnd, minimum: minimum)
                guard hashed > end, e.inFlight < options.partsWhileWriting else {
                    e.driving = false
                    s.early = e
                    return nil
                }
                let part = (e.nextPart, e.scheduledEnd..<end, e.key, id)
                e.nextPart += 1
                e.scheduledEnd = end
                e.inFlight += 1
                s.early = e
                return part
            }
            guard let (number, range, key, uploadId) = next else {
                v.wakeIfEarlyIdle()
                return
            }
            await changes.partSlots.acquire()
            Task {
                defer { self.changes.partSlots.release() }
                var sent: CompletedPart?
                do {
                    sent = try await self.sendPart(v, key: key, uploadId: uploadId, number: number, range: range)
                } catch {
                    self.logger.info("an early part failed; it is sent again after close",
                                     metadata: ["key": "\(key)", "part": "\(number)", "error": "\(error)"])
                }
                v.state.withLock { s in
                    s.early?.inFlight -= 1
                    if let sent {
                        s.early?.parts[number] = sent
                    } else {
                        s.early?.stalled = true
                    }
                }
                v.wakeIfEarlyIdle()
                self.streamIfReady(v)  // the next part, if the writer is past it
            }
        }
    }

    /// Waits until no early part of `v` is in flight and no task drives it (woken by `wakeIfEarlyIdle`).
    func earlyIdle(_ v: StagedVersion) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let idle = v.state.withLock { s -> Bool in
                guard s.early?.busy == true else { return true }
                _ = s.earlyIdleWaiters.add(c)
                return false
            }
            if idle { c.resume() }
        }
    }

    /// The early upload the ordinary upload of `v` to `key` can finish (upload id and finished parts), or nil.
    /// One that cannot be used is aborted.
    func takeEarlyUpload(_ v: StagedVersion, key: String) async -> (uploadId: String, parts: [Int: CompletedPart])? {
        guard v.state.withLock({ $0.early != nil }) else { return nil }
        v.state.withLock { $0.early?.stalled = true }  // nothing new starts
        await earlyIdle(v)
        let usable = v.state.withLock { s -> (String, [Int: CompletedPart])? in
            guard var e = s.early, let id = e.uploadId, !e.abandoned, !e.taken, e.key.sameBytes(key),
                  e.scheduledEnd <= s.size else { return nil }
            e.taken = true
            s.early = e
            return (id, e.parts)
        }
        if usable == nil { abandonEarlyUpload(v, because: "it does not fit the file as closed") }
        return usable
    }

    /// Gives up `v`'s early upload (if any, and not taken over): no more parts start, and once those in flight
    /// are done the multipart upload is aborted, so nothing is left on the server.
    func abandonEarlyUpload(_ v: StagedVersion, because reason: String) {
        let had = v.state.withLock { s -> Bool in
            guard var e = s.early, !e.abandoned, !e.taken else { return false }
            e.abandoned = true
            s.early = e
            s.bytesUploaded = 0
            return true
        }
        guard had else { return }
        logger.info("parts sent while writing are dropped; the file is uploaded afresh after close",
                    metadata: ["key": "\(v.key)", "reason": "\(reason)"])
        Task {
            await self.earlyIdle(v)
            guard let (key, uploadId) = v.state.withLock({ s in s.early.flatMap { e in e.uploadId.map { (e.key, $0) } } }) else { return }
            defer { self.liveMultipart.withLock { _ = $0.remove(uploadId) } }
            do throws(S3Error) { try await self.client.abortMultipartUpload(self.bucket, key, uploadId: uploadId) } catch {
                if error.code != .noSuchUpload {
                    self.logger.warning("could not abort an abandoned multipart upload; the next mount aborts it",
                                        metadata: ["key": "\(key)", "error": "\(error)"])
                }
            }
        }
    }

    /// After a write or truncate: bytes below what already went up changed, so the early parts are stale.
    func checkEarlyUpload(_ v: StagedVersion, changedFrom offset: Int64) {
        guard options.uploadWhileWriting else { return }  // no early upload exists: spare every write the lock
        if v.state.withLock({ s in s.early.map { !$0.abandoned && !$0.taken && offset < $0.scheduledEnd } ?? false }) {
            abandonEarlyUpload(v, because: "bytes below what was sent changed (at \(offset))")
        }
    }
}
