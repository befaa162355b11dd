// Overwrite in place and conditional writes.
//
// Opening an existing object for writing (without O_TRUNC) does not download it. The staged file starts
// sparse, with every block "missing": its bytes are those of the object version seen at open (the base,
// pinned by ETag). A block is fetched (through the block cache) when it is read, when a write covers part of
// it, or when the change is acknowledged: close(), fsync() or a truncate acknowledge a changed version only
// once it holds every block it did not rewrite, so an acknowledged version never depends on an object that
// another client can replace (or that this file's own upload replaces) before it is uploaded. A block a write
// covers whole is never fetched. A file opened for writing and closed without a change fetches nothing and is
// not uploaded at all.
//
// Every upload is conditional where the server supports it: a new key with `If-None-Match: *`, an
// overwrite with `If-Match: <ETag seen at open>`. If someone else changed the object meanwhile the upload
// stops with a conflict: the local copy is kept (journaled, readable through the mount) and reported by
// `ckptfs status` and `ckptfs flush`; renaming the file uploads it under the new name without a condition.
import CkptCache
import CkptS3
import CkptSystem
import Foundation
import SystemPackage

extension WriteBack {
    var fillBlock: Int64 { Int64(cache.blockSize) }

    /// Blocks of `v` that are missing and overlap [offset, offset+count); with `partialOnly`, only those the
    /// range covers in part (a write must fetch them first; it replaces the others whole).
    func missingBlocks(_ v: StagedVersion, offset: Int64, count: Int, partialOnly: Bool) -> [Int64] {
        guard count > 0 else { return [] }
        let bs = fillBlock, end = offset + Int64(count)
        return v.state.withLock { s -> [Int64] in
            guard s.base != nil, !s.missing.isEmpty else { return [] }
            var out: [Int64] = []
            for b in (offset / bs)...((end - 1) / bs) where s.missing.contains(b) {
                if partialOnly && covers(offset, end, block: b, size: s.size) { continue }
                out.append(b)
            }
            return out
        }
    }

    /// Whether [offset, end) covers block `b` of a file of `size` bytes whole (a write there replaces it).
    func covers(_ offset: Int64, _ end: Int64, block b: Int64, size: Int64) -> Bool {
        offset <= b * fillBlock && end >= min((b + 1) * fillBlock, size)
    }

    /// A write that first fetches the blocks it covers in part (`write` returned `.later`).
    func writeFetching(_ h: LocalHandle, offset: Int64, data: [UInt8]) async throws(FSError) -> Int {
        for _ in 0..<8 {
            let v = try writableVersion(h.file)
            try await fill(v, blocks: missingBlocks(v, offset: offset, count: data.count, partialOnly: true))
            let r = data.withUnsafeBytes { p in Result { () throws(FSError) in try writeNow(h, offset: offset, data: p) } }
            // Not written: the file was copied on write meanwhile; fetch into the copy.
            if try r.get() { return data.count }
        }
        throw FSError(EIO, "could not prepare \(h.key) for a write")
    }

    /// Called before a write lands: blocks the write covers whole stop being missing. A block it covers in part
    /// must have been fetched first: then nothing changes and this returns false (see `writeFetching`).
    func claimBlocks(_ v: StagedVersion, offset: Int64, count: Int) -> Bool {
        guard count > 0 else { return true }
        let bs = fillBlock, end = offset + Int64(count)
        return v.state.withLock { s in
            guard s.base != nil, !s.missing.isEmpty else { return true }
            let touched = ((offset / bs)...((end - 1) / bs)).filter { s.missing.contains($0) }
            // All or nothing: a block marked present here must be the one this write fills.
            if touched.contains(where: { !covers(offset, end, block: $0, size: s.size) }) { return false }
            for b in touched { s.missing.remove(b) }
            return true
        }
    }

    /// Truncation of an in-place file: bytes at or past `size` no longer come from the base.
    func truncateBase(_ s: inout StagedVersion.State, to size: Int64) {
        guard s.base != nil else { return }
        s.baseLimit = min(s.baseLimit, size)
        let bs = fillBlock
        s.missing = s.missing.filter { $0 * bs < s.baseLimit }
    }

    /// Copies the given missing blocks of `v` from its base object (ETag-pinned, through the block cache).
    /// Safe against concurrent writes: a block is written here only while still missing, under the lock.
    func fill(_ v: StagedVersion, blocks: [Int64]) async throws(FSError) {
        guard !blocks.isEmpty, let base = v.state.withLock({ $0.base }) else { return }
        let bs = fillBlock
        let file = try v.open()
        defer { withExtendedLifetime(file) {} }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(bs), alignment: 4096)
        defer { buf.deallocate() }
        for b in blocks {
            let (still, limit) = v.state.withLock { ($0.missing.contains(b), $0.baseLimit) }
            guard still else { continue }
            let start = b * bs
            let want = Int(max(0, min(start + bs, limit, base.size) - start))
            var got = 0
            if want > 0 {
                let segments: [ReadSegment]
                do throws(FSError) {
                    segments = try await reader.read(base, offset: start, size: want)
                } catch {
                    if error.kind == .objectChanged {
                        throw FSError.conflict("\(base.key) changed in S3 since it was opened for writing, so the "
                                               + "parts of it this file did not rewrite are gone")
                    }
                    throw error
                }
                for seg in segments {
                    switch seg {
                    case .memory(let m, let off, let len):
                        buf.baseAddress!.advanced(by: got).copyMemory(from: m.bytes.baseAddress! + off, byteCount: len)
                        got += len
                    case .file(let fd, let off, let len):
                        let into = UnsafeMutableRawBufferPointer(rebasing: buf[got..<(got + len)])
                        guard (try? FileDescriptor(rawValue: fd.rawValue).readAll(fromAbsoluteOffset: off, into: into)) == len else {
                            throw FSError(EIO, "reading a cached block failed")
                        }
                        got += len
                    }
                }
                guard got == want else { throw FSError(EIO, "fetched \(got) bytes of block \(b) of \(base.key), wanted \(want)") }
            }
            try v.state.withLock { (s) throws(FSError) in
                guard s.missing.contains(b) else { return }
                // A truncate may have lowered the limit while we fetched.
                let n = Int(max(0, min(Int64(got), s.baseLimit - start)))
                if n > 0 {
                    try staging.writeAll(file.rawValue, UnsafeRawBufferPointer(rebasing: buf[0..<n]), at: start)
                    staging.account(v, upTo: start + Int64(n))
                }
                s.missing.remove(b)
            }
        }
    }

    /// Before this mount changes `key` in S3 (a delete, an upload, a copy over it): descriptors still reading
    /// what it holds read on (S-UNLINK-OPEN, S-UNLINK-OPEN-CLEAN). The versions clean read handles pinned are
    /// kept in the block cache (`OpenObjects.keep(key:)`); a file opened for writing in place from that object
    /// (its blocks not rewritten come from the object when read) that lost its name, an orphan, or that a copy
    /// over the key replaces (`replacingLocalFile`), fetches those blocks now, while the object is there.
    /// Before, its descriptors' reads and its last close failed with EIO once the change landed, this mount's
    /// own change taken for another client's (outside testing round 9). A fetch that fails is logged and the
    /// change goes ahead, as for read handles.
    func keepReaders(of key: String, replacingLocalFile: Bool = false) async {
        await openObjects.keep(key: key)
        var vs = localFiles.orphans.withLock { o in o.values.map(\.current) }
        if replacingLocalFile, let f = localFiles[key] { vs += versionsWithFallback(of: f.key, newest: f.current) }
        for v in vs where v.state.withLock({ s in s.base.map { $0.key.sameBytes(key) } == true && !s.missing.isEmpty }) {
            do throws(FSError) { try await fillAll(v) } catch {
                logger.warning("could not fetch what a file opened in place still reads from an object this mount changes",
                               metadata: ["key": "\(key)", "error": "\(error)"])
            }
        }
    }

    /// Fetches every block still missing (before an acknowledgement, an upload, or a rename that deletes the
    /// base object).
    func fillAll(_ v: StagedVersion) async throws(FSError) {
        let blocks = v.state.withLock { $0.missing.sorted() }
        try await fill(v, blocks: blocks)
    }

    /// Whether `v` has changes to acknowledge and blocks still only in its base object: they are fetched first
    /// (`fillForAcknowledgement`). Not for a version whose write or fetch failed: it is never acknowledged.
    func needsFill(_ v: StagedVersion) -> Bool {
        v.state.withLock { $0.failedErrno == 0 && $0.unjournaled && $0.base != nil && !$0.missing.isEmpty }
    }

    /// Before `v` (changed, opened in place) is acknowledged: fetches what is still missing, so the acknowledged
    /// version holds every byte itself. Errors (the version is then never acknowledged, and the caller's close(),
    /// fsync() or truncate fails): the object changed in S3 since it was opened (a conflict, EIO: the bytes this
    /// file did not rewrite are gone), or the fetch failed (EIO).
    func fillForAcknowledgement(_ v: StagedVersion) async throws(FSError) {
        guard needsFill(v) else { return }
        do throws(FSError) { try await fillAll(v) } catch {
            v.fail(error.errno)
            throw error
        }
    }

    // MARK: Conditional writes

    /// The expectation for a new version that follows `previous` of the same key: the ETag `previous` landed
    /// as, or else whatever it lands as (`.after`). While `previous` has not landed, the new version's condition
    /// is `previous`'s own (`condition(for:)`), so one after an unconditional version (a rename's) goes
    /// unconditionally only until that one lands, and is conditional on the ETag it landed as from then on.
    func expectation(after previous: StagedVersion) -> StagedVersion.Expect {
        previous.state.withLock { s in
            if case .done(let etag) = s.upload { return .etag(etag) }
            return .after(previous)
        }
    }

    /// The condition `v`'s upload carries, resolving "after the previous version" chains.
    func condition(for v: StagedVersion) -> WriteCondition? {
        guard options.conditionalWrites else { return nil }
        var cur = v
        for _ in 0..<10_000 {
            switch cur.state.withLock({ $0.expect }) {
            case .anything: return nil
            case .absent: return .ifNoneMatch
            case .etag(let e): return .ifMatch(e)
            case .after(let p):
                if case .done(let etag) = p.state.withLock({ $0.upload }) { return .ifMatch(etag) }
                cur = p
            }
        }
        return nil
    }

    /// After `v` landed as `etag`: versions that were waiting on it now expect that ETag (and drop the
    /// reference, so finished versions are freed).
    func resolveExpectations(after v: StagedVersion, etag: String) {
        var others = changes.state.withLock { u in Array(u.pending.values) }
        if let cur = localFiles.byKey.withLock({ $0[v.key]?.current }) { others.append(cur) }
        for o in others where o !== v {
            o.state.withLock { s in
                if case .after(let p) = s.expect, p === v { s.expect = .etag(etag) }
            }
        }
    }
}
