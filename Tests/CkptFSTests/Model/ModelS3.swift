// The contract half of the model: what S3 may hold (the events bound for it, in order), what a drain leaves
// there, and what a crash keeps. See Model.swift.
import Foundation

/// A change bound for S3, or made there.
struct S3Event {
    enum Kind {
        /// Upload of an acknowledged version (queued: it lands at some point, in order).
        case put
        /// A delete journaled by unlink, rmdir or the old name of a rename.
        case delete
        /// Made during the call itself (server-side copy, directory marker): already in S3.
        case sync
        /// The other client's put or delete: already in S3.
        case remote
    }
    var seq: Int
    var key: String
    var kind: Kind
    /// The key's object after the event (nil: absent).
    var result: Bytes?
    /// The file uploaded, for puts.
    var file: Int?
    /// The version was withdrawn (unlink, replaced by rename): it may have landed, or never will.
    var withdrawn = false
    /// Queued again by recovery after a crash (deletes applied before the crash did not wait for it).
    var recovered = false
    /// A delete of a name whose file never reached S3: it keeps its place in the order (and is held like
    /// any other) but removes nothing, also when recovery queues it again.
    var sendsNothing = false
    /// A delete that removes only this mount's own object (`ModelFile.ownOnly`): the removed file's base epoch.
    var ownOnlyBaseEpoch: Int?
    /// Such a delete leaves this object of the other client's, which the removed file's upload met (nil: it
    /// removes what is there).
    var leaves: Bytes??
    /// A delete queued after the upload of a file that an unlink then withdrew: it waits for that unlink's
    /// delete (these seqs) too. The core keeps the withdrawn upload's job open until the unlink's delete has
    /// waited for the uploads before it (`ChangeQueue.State.heldUploads`: a rotation's delete must not take the
    /// withdrawal for the upload it waited for), so a conflict that holds the unlink's delete holds this one
    /// too, though it was made before the conflicting upload (seed 23278 with `--keep-every-version`).
    var waitsForDeletes: [Int] = []
}

extension Model {
    // MARK: S3 events

    /// Appends an event (or inserts it at journal position `position`); returns its index in `events`.
    @discardableResult
    mutating func record(_ key: String, _ kind: S3Event.Kind, _ result: Bytes?, file: Int? = nil, at position: Int? = nil) -> Int {
        let e: S3Event
        if let position {
            e = S3Event(seq: position, key: key, kind: kind, result: result, file: file)
        } else {
            seq += 1
            e = S3Event(seq: seq, key: key, kind: kind, result: result, file: file)
        }
        let i = events.firstIndex { $0.seq > e.seq } ?? events.endIndex
        events.insert(e, at: i)
        return i
    }

    /// Acknowledges a file's bytes (its journal record takes the next position).
    mutating func acknowledge(_ id: Int) {
        seq += 1
        files[id]!.acked = files[id]!.data
        files[id]!.ackedHere = true
        files[id]!.dirty = false
        files[id]!.ackSeq = seq
    }

    /// F's versions still queued are withdrawn (unlink, replaced by a rename).
    mutating func withdraw(_ id: Int) {
        for i in events.indices where events[i].kind == .put && events[i].file == id { events[i].withdrawn = true }
    }

    /// Queues F's acknowledged bytes for upload under `key`.
    mutating func queue(_ id: Int, at key: String, at position: Int? = nil) {
        guard let acked = files[id]!.acked else { return }
        files[id]!.queued = acked
        files[id]!.pendingVersions.append(acked)
        files[id]!.queuedVersions += 1
        files[id]!.ackedUnqueued = false
        if !files[id]!.mayHoldObject && files[id]!.conditional { files[id]!.ownOnly = true }
        files[id]!.mayHoldObject = true
        let i = record(key, .put, acked, file: id, at: position)
        if position != nil { events[i].recovered = true }
    }

    /// Every state S3 may hold for `key` now.
    func possible(_ key: String) -> Set<Bytes?> {
        var out: Set<Bytes?> = [synced[key]]
        for e in events where e.key == key { out.insert(e.result) }
        return out
    }

    /// Whether the other client may put or delete `path` now with a predictable outcome: its S3 state is known,
    /// no delete of ours is queued for it, and its file (if any) is neither open nor in conflict.
    func remoteAllowed(_ path: String, delete: Bool) -> Bool {
        guard walkError(path) == nil, entries[path] != .directory else { return false }
        if let id = file(at: path) {
            let f = files[id]!
            if f.handles > 0 || f.conflicted { return false }
        } else if delete {
            return false
        }
        let mine = events.filter { $0.key == path && $0.kind != .remote }
        if mine.contains(where: { $0.kind == .delete }) { return false }
        if uncertain && !mine.isEmpty { return false }
        if delete && current(path) == nil { return false }
        return true
    }

    /// S3's object at `path` when it is known (remoteAllowed): the last remote change, else the last sync state.
    func current(_ path: String) -> Bytes? {
        for e in events.reversed() where e.key == path && (e.kind == .remote || e.kind == .sync) { return e.result }
        return synced[path]
    }

    // MARK: Drains and crashes

    /// A flush (every drain, fsync's, the final one) first queues what close() acknowledged of files still open
    /// for writing (WriteBack.queueAcknowledged): their last acknowledged version goes up, not the bytes
    /// written after it. Its upload job is made now, so deletes queued since the acknowledgement do not wait
    /// for it.
    mutating func queueAcknowledged() {
        for (path, e) in entries.sorted(by: { $0.key < $1.key }) {
            guard case .file(let id) = e, files[id]!.ackedUnqueued, !files[id]!.unlinked else { continue }
            queue(id, at: path)
        }
    }

    /// Files whose upload a drain stops with a conflict: the other client changed the key since the file's
    /// base, and its upload is conditional (or it is already in conflict).
    func conflicts() -> Set<String> {
        var out = Set<String>()
        for (path, e) in entries {
            guard case .file(let id) = e else { continue }
            let f = files[id]!
            guard f.queued != nil || f.conflicted else { continue }
            if f.conflicted {
                out.insert(path)
                continue
            }
            let theirs = remoteState[path] ?? f.base
            if f.conditional && epoch[path, default: 0] > f.baseEpoch && theirs != f.base { out.insert(path) }
        }
        return out
    }

    /// The file at `path`, when an upload let go since the last drain (`uncertain`) may have stopped it with a
    /// conflict the model does not know yet: its upload is conditional and the other client changed the key.
    func mayHaveConflicted(_ path: String) -> Int? {
        guard uncertain, let id = file(at: path) else { return nil }
        let f = files[id]!
        guard f.local, f.queued != nil, !f.conflicted, f.conditional else { return nil }
        let theirs = remoteState[path] ?? f.base
        return epoch[path, default: 0] > f.baseEpoch && theirs != f.base ? id : nil
    }

    /// The position from which a drain that finds `conflicts` holds deletes back: the earliest upload job a
    /// conflict stops.
    func holdFrom(conflicts: Set<String>) -> Int? {
        var low: Int?
        for p in conflicts {
            guard let id = file(at: p) else { continue }
            let f = files[id]!
            var first = f.conflictSeq ?? events.first { $0.kind == .put && !$0.withdrawn && $0.file == id }?.seq
            if f.conflictSeq == nil, let moved = f.movedJobSeq { first = min(first ?? moved, moved) }
            if let first { low = min(low ?? first, first) }
        }
        return low
    }

    /// Deletes a drain that finds `conflicts` leaves queued: made after an upload a conflict stops, and not
    /// replaced by a later write of the same key.
    func heldDeletes(conflicts: Set<String>) -> [S3Event] {
        guard let from = holdFrom(conflicts: conflicts) else { return [] }
        let waiting = events.enumerated().filter { i, e in
            e.kind == .delete && !events[(i + 1)...].contains { $0.key == e.key && ($0.kind == .put || $0.kind == .sync) }
        }.map(\.element)
        var held = Set(waiting.filter { $0.seq > from }.map(\.seq))
        // And those waiting for an unlink's delete that is held (`S3Event.waitsForDeletes`), in turn.
        var grew = true
        while grew {
            grew = false
            for e in waiting where !held.contains(e.seq) && e.waitsForDeletes.contains(where: held.contains) {
                held.insert(e.seq)
                grew = true
            }
        }
        return waiting.filter { held.contains($0.seq) }
    }

    /// What S3 may hold for each key once every queued change has landed (conflicting uploads, and the deletes
    /// they hold back, excepted). The other client's changes are in S3 at once; queued uploads and deletes land
    /// later, so they win over the other client's changes made after them (a rename destination is uploaded
    /// without a condition); a copy or marker waits for the key's queued changes.
    func afterDrain(conflicts: Set<String>) -> [String: Set<Bytes?>] {
        var keys = Set(synced.keys)
        for e in events { keys.insert(e.key) }
        let conflicting = Set(conflicts.compactMap { file(at: $0) })
        let held = Set(heldDeletes(conflicts: conflicts).map(\.seq))
        var out: [String: Set<Bytes?>] = [:]
        for k in keys {
            var now = synced[k]
            var later: Bytes??
            var maybe = Set<Bytes?>()
            for e in events where e.key == k {
                switch e.kind {
                case .remote: now = e.result
                case .sync:
                    now = e.result
                    if later != nil { later = .some(e.result) }
                    maybe.removeAll()
                case .put where e.withdrawn: maybe.insert(e.result)
                case .put where e.file.map(conflicting.contains) == true: continue
                case .delete where held.contains(e.seq) || e.sendsNothing: continue
                case .delete where e.leaves != nil:
                    // Another client's object, which the removed file's upload met: it stays.
                    later = .some(e.leaves!)
                    maybe.removeAll()
                case .put, .delete:
                    // The key's chain: a withdrawn version in flight lands before this change, never after it.
                    later = .some(e.result)
                    maybe.removeAll()
                }
            }
            out[k] = maybe.union([later ?? now])
        }
        return out
    }

    /// After a drain that found `conflicts` and left S3 as `s3`: queued versions landed (or conflict), S3 is known;
    /// the deletes a conflict holds back stay queued.
    mutating func drained(conflicts: Set<String>, s3: [String: Bytes]) {
        let held = heldDeletes(conflicts: conflicts)
        for (path, e) in entries {
            guard case .file(let id) = e else { continue }
            if conflicts.contains(path) {
                if files[id]!.conflictSeq == nil {
                    let first = events.first { $0.kind == .put && !$0.withdrawn && $0.file == id }?.seq
                    files[id]!.conflictSeq = [first, files[id]!.movedJobSeq].compactMap { $0 }.min()
                }
                files[id]!.conflicted = true
                continue
            }
            files[id]!.movedJobSeq = nil
            if let q = files[id]!.queued {
                files[id]!.mayHoldObject = true  // landed
                files[id]!.ownOnly = false
                files[id]!.queued = nil
                files[id]!.pendingVersions = []
                files[id]!.queuedVersions = 0
                files[id]!.inPlace = false
                files[id]!.base = q
                files[id]!.baseEpoch = epoch[path, default: 0]
                files[id]!.conditional = true
            }
            settleIfClean(id)
        }
        // A name whose delete left another client's object shows that object.
        let heldSeqs = Set(held.map(\.seq))
        for e in events where e.kind == .delete && !heldSeqs.contains(e.seq) && entries[e.key] == nil {
            if let theirs = e.leaves ?? nil, !events.contains(where: { $0.key == e.key && $0.seq > e.seq }) {
                showLeftObject(theirs, at: e.key)
            }
        }
        synced = s3
        events = held
        uncertain = false
    }

    /// A crash: handles are gone, unacknowledged bytes with them. Returns the paths whose outcome the contract
    /// leaves open (a file never acknowledged that replaced another) with the outcomes it allows, for the
    /// runner to adopt from the core.
    mutating func crash(landing: Bool) -> [String: Set<Bytes?>] {
        handles = [:]
        var open: [String: Set<Bytes?>] = [:]
        // A name whose delete leaves another client's object: recovery queues that delete again, and it may
        // have run by the time the runner looks (adopted from the core).
        for (path, theirs) in namesShowingTheirsLater() { open[path] = [nil, theirs] }
        for (id, f) in files where f.unlinked { files[id] = nil }
        for (path, e) in entries {
            guard case .file(let id) = e else { continue }
            var f = files[id]!
            guard let acked = f.acked else {
                open[path] = possible(path)
                entries[path] = nil
                files[id] = nil
                continue
            }
            let pending = f.queued != nil || f.ackedUnqueued
            f.data = acked
            f.dirty = false
            f.handles = 0
            f.localHandles = 0
            f.writers = 0
            f.conflicted = false
            f.conflictSeq = nil
            f.movedJobSeq = nil
            f.ackedUnqueued = false
            f.queuedVersions = 0
            f.pendingVersions = []
            f.local = pending
            f.ackedHere = pending
            f.mayHoldObject = true  // recovery's local files make no difference
            // but one created here on a free name, whose save expects no object: its removal removes only
            // this mount's own object, as before the crash.
            f.ownOnly = pending && f.conditional && f.base == nil
            files[id] = f
            if pending {
                // Recovery queues the newest acknowledged version again (the same bytes, perhaps already in S3),
                // in the journal's order: where it was acknowledged. The versions queued before the crash may
                // have landed, or never will.
                withdraw(id)
                queue(id, at: path, at: f.ackSeq)
            }
        }
        if landing { uncertain = true }
        return open
    }

    /// The core showed `bytes` (nil: nothing) at `path` after a crash left it open.
    mutating func adopt(_ path: String, _ bytes: Bytes?) {
        guard let bytes else { return }
        showLeftObject(bytes, at: path)
    }

    /// What S3 must hold at the end, after every handle is closed and a drain: each file's bytes (the other
    /// writer's object for a file in conflict) and each directory's marker.
    func finalObjects() -> [String: Bytes] {
        var out: [String: Bytes] = [:]
        for (path, e) in entries {
            switch e {
            case .directory: if !implicitDirectories.contains(path) { out[path + "/"] = [] }
            case .file(let id):
                let f = files[id]!
                if f.conflicted {
                    if let theirs = remoteState[path] ?? nil { out[path] = theirs }
                } else {
                    out[path] = f.data
                }
            }
        }
        return out
    }
}
