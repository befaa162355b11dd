// The reference model: what POSIX and ckptfs's durability contract (README "Durability contract",
// "Semantics") promise, kept in memory, with no S3 and no cache.
//
// It has two halves. The namespace half is POSIX: paths name files (inodes) and directories; a file keeps its
// bytes, its open handles follow it through renames, an unlinked file lives until its last close. The
// contract half says what a crash keeps and what S3 may hold:
// - A file's `acked` bytes are what close(), fsync() or a truncate without an open writer acknowledged: a crash
//   keeps exactly those (nothing, for a file never acknowledged). Unacknowledged bytes never reach S3.
// - Every change bound for S3 is an event in the order the mount made it (uploads of acknowledged versions,
//   deletes, synchronous copies and directory markers) plus the other client's puts and deletes. Between two
//   drains S3 may hold, for each key, the state at the last drain or the result of one of its events; a delete
//   that S3 shows applied means every upload queued before it (of a file still there and unchanged since)
//   has landed. After a drain S3 holds exactly what the events lead to.
// - An upload is conditional on the object its file started from; another client's change in between is a
//   conflict: S3 keeps theirs, the mount keeps showing ours and flush names it.
// Where the contract allows more than one outcome (a file replaced by rename while never acknowledged, after a
// crash) the model lists the outcomes it allows and adopts the one the core shows.
import Foundation

typealias Bytes = [UInt8]

/// Deterministic contents for writes and remote puts: `count` bytes from `seed`, starting with the seed's bytes
/// so that different seeds never give equal contents of 4 bytes or more.
func contents(_ count: Int, seed: Int) -> Bytes {
    var out = Bytes(repeating: 0, count: count)
    var x = UInt64(truncatingIfNeeded: seed) &* 0x9E37_79B9_7F4A_7C15 &+ 0x1234_5678
    for i in 0..<count {
        if i < 4 {
            out[i] = UInt8(truncatingIfNeeded: seed >> (8 * i))
            continue
        }
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

struct ModelFile {
    var data: Bytes = []
    /// What a crash keeps: the last acknowledged bytes (nil: nothing acknowledged, a crash loses the file).
    var acked: Bytes?
    /// Changed since the last acknowledgement.
    var dirty = false
    /// Acknowledged (close of one descriptor while another writer stays open) and not queued for upload yet.
    var ackedUnqueued = false
    /// Bytes queued for upload that have not landed.
    var queued: Bytes?
    /// Versions queued since the file last landed (one supersedes another).
    var queuedVersions = 0
    var handles = 0
    /// Handles on the core's local version (write handles, and read handles opened while the file was local);
    /// a read handle opened on the object does not keep the local version.
    var localHandles = 0
    var writers = 0
    /// The core keeps a local version: from a write-open (or truncate) until it is uploaded and closed.
    var local = false
    var unlinked = false
    /// The upload expects `base` in S3 (If-None-Match for nil, If-Match otherwise); false after a rename (a
    /// rename destination is replaced without a condition) until the file lands.
    var conditional = true
    var base: Bytes?
    /// The other client's change count of the key when `base` was taken.
    var baseEpoch = 0
    /// The last drain found a conflict; stays until the file is renamed (or unlinked), also for later versions.
    var conflicted = false
    /// Opened in place (for writing, without truncating, with bytes in S3): blocks not written are fetched
    /// from the object only when needed, until the file lands or is emptied.
    var inPlace = false
    /// The position of the upload job a conflict stopped: deletes made after it wait for it (README: "a file
    /// stopped by a conflict holds the deletes made after it").
    var conflictSeq: Int?
    /// The position of the upload job of the version a rename moved while it was queued under the old name:
    /// that job stays open until the version settles under the new name, so a conflict there holds the
    /// deletes made after this position, not only those after the job queued under the new name.
    var movedJobSeq: Int?
    /// `pendingVersions.count` when `movedJobSeq` was set: more since means a newer version was queued after the
    /// moved one.
    var movedJobVersions = 0
    /// The position of the last acknowledgement (its journal record): recovery queues the version there.
    var ackSeq = 0
    /// The acknowledged bytes were acknowledged by this mount (a version here holds them until a later write
    /// lets it go), not taken from the object (opened from S3, or after a crash that left nothing to upload).
    var ackedHere = false
    /// The versions queued since the file last landed, oldest first (`queued` is the last): with
    /// `keepEveryVersion` each is uploaded; without, a newer one supersedes those still waiting. A rename
    /// leaves those before the newest under the old name, but of a file stopped by a conflict, whose versions
    /// all go to the new name, in order.
    var pendingVersions: [Bytes] = []
    /// S3 may hold an object under the file's key that removing its name must delete (the core's
    /// `WriteBack.keyMayHoldObject`): false for a file created here until a version of it is queued (with no
    /// upload delay, as here, its upload counts as started then); true once opened from an object, renamed onto
    /// a name, or recovered after a crash. Its unlink, or a rename away, journals no delete while false.
    var mayHoldObject = true
    /// Removing the name removes only an object this mount uploaded (the core's `Removal.ownObject`): the file
    /// was created here on a name that held nothing and a conditional save of it was queued (or it was renamed
    /// over such a file), and nothing of it has landed yet. Another client's object its upload then meets
    /// stays (S-CONFLICT-IN-FLIGHT).
    var ownOnly = false
}

/// An open file of the model.
struct ModelHandle {
    var file: Int
    var writable: Bool
    /// A handle on the core's local version (not on the object).
    var local = true
    /// Bytes at open, when the core may have pinned the object version (a read-only open of a file without
    /// local changes): reads may show these, or fail with ESTALE/ENOENT once the object changed.
    var pinned: Bytes?
}

/// What a step should do: succeed, or fail with one of these errnos.
enum Expect: Equatable, CustomStringConvertible {
    case ok
    case fails(Set<Int32>)

    static func fails(_ e: Int32) -> Expect { .fails([e]) }

    var description: String {
        switch self {
        case .ok: return "success"
        case .fails(let es): return es.map(ErrnoName.of).sorted().joined(separator: " or ")
        }
    }
}

struct Model {
    enum Entry: Equatable {
        case file(Int)
        case directory
    }

    /// Every path but the root ("").
    var entries: [String: Entry] = [:]
    var files: [Int: ModelFile] = [:]
    var nextFile = 1
    /// Open handles by the number the steps give them.
    var handles: [Int: ModelHandle] = [:]
    /// FSOptions.keepEveryVersion: every save is uploaded, also those of a closed file a rename replaced.
    var keepEveryVersion = false

    /// S3 as of the last drain (key → bytes; directory markers are "dir/" → []).
    var synced: [String: Bytes] = [:]
    /// Changes since the last drain, in order.
    var events: [S3Event] = []
    var seq = 0
    /// A held upload request went on (or landed at a crash) since the last drain: queued uploads may have landed.
    var uncertain = false
    /// Directories S3 shows only because an object under them is there (no marker): the parents of another
    /// client's object that a delete left (S-CONFLICT-IN-FLIGHT) after a rename of its directory (seed 30022:
    /// a directory renamed while its file's save meets the other client's object; the old directory's markers
    /// go, their object stays, and the listing shows the old directory again, holding it). No step names one or
    /// a path related to one (`Step.valid`): the model has no rules for a directory without a marker.
    var implicitDirectories: Set<String> = []
    /// The other client's changes, per key: how many, and the object after the last one.
    var epoch: [String: Int] = [:]
    var remoteState: [String: Bytes?] = [:]

    // MARK: Namespace

    static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[..<slash])
    }

    func isDirectory(_ path: String) -> Bool { path.isEmpty || entries[path] == .directory }

    func file(at path: String) -> Int? {
        if case .file(let id)? = entries[path] { return id }
        return nil
    }

    /// Names in directory `dir` → whether each is a directory.
    func children(of dir: String) -> [String: Bool] {
        var out: [String: Bool] = [:]
        for (p, e) in entries where Model.parent(p) == dir {
            out[String(p.split(separator: "/").last!)] = e == .directory
        }
        return out
    }

    /// Paths of files that may show or not until the next drain: a removed file's, whose delete leaves another
    /// client's object (S-CONFLICT-IN-FLIGHT), which shows once the delete's turn has passed (it waits for the
    /// uploads before it, which the runner holds, or not). With the object each would show.
    func namesShowingTheirsLater() -> [String: Bytes] {
        var out: [String: Bytes] = [:]
        for (n, e) in events.enumerated() where e.kind == .delete && entries[e.key] == nil {
            if case .some(.some(let theirs)) = e.leaves, !events[(n + 1)...].contains(where: { $0.key == e.key }) {
                out[e.key] = theirs
            }
        }
        return out
    }

    /// The names in `dir` of `namesShowingTheirsLater` → whether each is a directory: the name itself, or the
    /// directory on its way that the model has no entry for (its directory was renamed away: S3 shows the
    /// prefix as a directory while the object is there).
    func mayShowTheirs(in dir: String) -> [String: Bool] {
        var out: [String: Bool] = [:]
        for k in namesShowingTheirsLater().keys where dir.isEmpty || k.hasPrefix(dir + "/") {
            let rest = dir.isEmpty ? k : String(k.dropFirst(dir.count + 1))
            let parts = rest.split(separator: "/").map(String.init)
            if parts.count == 1 {
                out[parts[0]] = false
            } else if entries[dir.isEmpty ? parts[0] : dir + "/" + parts[0]] == nil {
                out[parts[0]] = true
            }
        }
        return out
    }

    /// The paths no step may name (nor a path under one, nor a directory on the way to one) while they are so:
    /// names that may show the other client's object or not (`namesShowingTheirsLater`), the directories on
    /// the way to one that the model has no entry for (they show with it), and `implicitDirectories`.
    func unpredictablePaths() -> [String] {
        var out = Array(implicitDirectories)
        for k in namesShowingTheirsLater().keys {
            out.append(k)
            var p = Model.parent(k)
            while !p.isEmpty && entries[p] == nil {
                out.append(p)
                p = Model.parent(p)
            }
        }
        return out
    }

    /// Shows `theirs`, another client's object that a delete of this mount left under `path`: with the
    /// directories on the way to it that the model has no entry for (their markers went with a rename of the
    /// directory; the prefix shows as a directory while the object is there), as `implicitDirectories`.
    mutating func showLeftObject(_ theirs: Bytes, at path: String) {
        var p = Model.parent(path)
        while !p.isEmpty && entries[p] == nil {
            entries[p] = .directory
            implicitDirectories.insert(p)
            p = Model.parent(p)
        }
        entries[path] = .file(newFile(ModelFile(data: theirs, acked: theirs)))
    }

    /// Paths under `dir` (not `dir` itself).
    func descendants(of dir: String) -> [String] { entries.keys.filter { $0.hasPrefix(dir + "/") }.sorted() }

    /// The error of walking to `path`'s parent: ENOENT for a missing directory on the way, ENOTDIR for a file.
    func walkError(_ path: String) -> Int32? {
        let parts = path.split(separator: "/").map(String.init)
        var p = ""
        for c in parts.dropLast() {
            p = p.isEmpty ? c : p + "/" + c
            switch entries[p] {
            case nil: return ENOENT
            case .file: return ENOTDIR
            case .directory: continue
            }
        }
        return nil
    }

    // MARK: Expected outcomes

    func expect(_ step: Step) -> Expect {
        switch step {
        case .open(let path, _, let mode):
            if let e = walkError(path) { return .fails(e) }
            switch entries[path] {
            case nil: return mode.create ? .ok : .fails(ENOENT)
            case .directory: return mode.create && mode.exclusive ? .fails(EEXIST) : .fails(EISDIR)
            case .file: return mode.create && mode.exclusive ? .fails(EEXIST) : .ok
            }
        case .truncate(let path, _):
            if let e = walkError(path) { return .fails(e) }
            switch entries[path] {
            case nil: return .fails(ENOENT)
            case .directory: return .fails(EISDIR)
            case .file: return .ok
            }
        case .unlink(let path):
            if let e = walkError(path) { return .fails(e) }
            switch entries[path] {
            case nil: return .fails(ENOENT)
            case .directory: return .fails([EISDIR, EPERM])
            case .file: return .ok
            }
        case .mkdir(let path):
            if let e = walkError(path) { return .fails(e) }
            return entries[path] == nil ? .ok : .fails(EEXIST)
        case .rmdir(let path):
            if let e = walkError(path) { return .fails(e) }
            switch entries[path] {
            case nil: return .fails(ENOENT)
            case .file: return .fails(ENOTDIR)
            case .directory: return children(of: path).isEmpty ? .ok : .fails(ENOTEMPTY)
            }
        case .rename(let src, let dst, let noReplace):
            var errs = Set<Int32>()
            if let e = walkError(src) { errs.insert(e) } else if entries[src] == nil { errs.insert(ENOENT) }
            if let e = walkError(dst) { errs.insert(e) }
            if !errs.isEmpty { return .fails(errs) }
            let s = entries[src]!, d = entries[dst]
            if src == dst { return noReplace ? .fails(EEXIST) : .ok }
            if d != nil && noReplace { errs.insert(EEXIST) }
            if s == .directory {
                if dst.hasPrefix(src + "/") { errs.insert(EINVAL) }
                if case .file? = d { errs.insert(ENOTDIR) }
                if d == .directory && !children(of: dst).isEmpty { errs.insert(ENOTEMPTY) }
            } else if d == .directory {
                errs.insert(EISDIR)
            }
            return errs.isEmpty ? .ok : .fails(errs)
        default:
            return .ok
        }
    }

    // MARK: Applying steps that succeeded

    mutating func newFile(_ f: ModelFile) -> Int {
        let id = nextFile
        nextFile += 1
        files[id] = f
        return id
    }

    /// The file becomes local in the core (a write-open or truncate of a file without local changes): its
    /// upload will expect the object as it is now.
    mutating func makeLocal(_ id: Int, key: String, truncating: Bool = false) {
        guard !files[id]!.local else { return }
        files[id]!.local = true
        files[id]!.mayHoldObject = true  // opened from the object
        files[id]!.ownOnly = false
        files[id]!.ackedHere = false  // what was acknowledged is the object now
        files[id]!.inPlace = !truncating && !files[id]!.data.isEmpty
        files[id]!.base = files[id]!.data
        files[id]!.baseEpoch = epoch[key, default: 0]
        files[id]!.conditional = true
    }

    mutating func open(_ path: String, handle: Int, mode: Step.Mode) {
        if let id = file(at: path) {
            var h = ModelHandle(file: id, writable: mode.write)
            if mode.write {
                makeLocal(id, key: path, truncating: mode.truncate)
                files[id]!.writers += 1
                if mode.truncate {
                    files[id]!.data = []
                    files[id]!.dirty = true
                }
            } else {
                h.local = files[id]!.local
                // A read-only open of a file without local changes (or perhaps without: an upload may have
                // landed since) reads the object's version.
                if !files[id]!.local || uncertain { h.pinned = files[id]!.data }
            }
            files[id]!.handles += 1
            if h.local { files[id]!.localHandles += 1 }
            handles[handle] = h
            return
        }
        let id = newFile(ModelFile(dirty: true, handles: 1, localHandles: 1, writers: 1, local: true, base: nil,
                                   baseEpoch: freshBaseEpoch(path), mayHoldObject: false))
        entries[path] = .file(id)
        handles[handle] = ModelHandle(file: id, writable: true)
    }

    /// The base epoch of a file created at `path` (or renamed there) where the mount knows of no file: now, or
    /// while the delete of a removed file that removes only this mount's own object waits (S-CONFLICT-IN-FLIGHT),
    /// that file's: the new file's upload expects no object all the same (it replaces that delete), so another
    /// client's object created since the removed file was is a conflict for it too.
    func freshBaseEpoch(_ path: String) -> Int {
        events.last { $0.key == path && $0.kind == .delete }?.ownOnlyBaseEpoch ?? epoch[path, default: 0]
    }

    mutating func write(handle: Int, at offset: Int, _ bytes: Bytes) {
        let id = handles[handle]!.file
        var d = files[id]!.data
        if d.count < offset + bytes.count { d += Bytes(repeating: 0, count: offset + bytes.count - d.count) }
        d.replaceSubrange(offset..<offset + bytes.count, with: bytes)
        files[id]!.data = d
        files[id]!.dirty = true
    }

    /// The path a live file has now.
    func path(of id: Int) -> String? { entries.first { $0.value == .file(id) }?.key }

    mutating func truncate(_ id: Int, to size: Int) {
        if size == 0 { files[id]!.inPlace = false }
        var d = files[id]!.data
        if d.count > size { d.removeLast(d.count - size) } else { d += Bytes(repeating: 0, count: size - d.count) }
        files[id]!.data = d
        files[id]!.dirty = true
        guard !files[id]!.unlinked, let key = path(of: id) else { return }
        if files[id]!.writers == 0 {
            // A truncate without an open writer is a complete change: acknowledged and queued at once.
            acknowledge(id)
            queue(id, at: key)
        }
    }

    mutating func truncate(_ path: String, to size: Int) {
        let id = file(at: path)!
        // The old bytes are the base: the core opens the file in place first.
        makeLocal(id, key: path, truncating: size == 0)
        truncate(id, to: size)
    }

    /// close() of one descriptor: a writer's changes are acknowledged.
    mutating func flush(handle: Int) {
        let h = handles[handle]!
        guard h.writable else { return }
        acknowledgeChanges(h.file)
    }

    /// close() or fsync() acknowledges the file's changes. A file opened for writing and not changed is not
    /// acknowledged (README: "opened for writing and closed without a change: nothing is uploaded"): its
    /// object already is the file, nothing is journaled or queued.
    mutating func acknowledgeChanges(_ id: Int) {
        guard !files[id]!.unlinked else { return }
        if files[id]!.dirty {
            acknowledge(id)
            files[id]!.ackedUnqueued = true
        }
    }

    /// The last close of a handle: flush, then release; the last writer queues what was acknowledged.
    mutating func close(handle: Int) {
        flush(handle: handle)
        let h = handles.removeValue(forKey: handle)!
        let id = h.file
        files[id]!.handles -= 1
        if h.local { files[id]!.localHandles -= 1 }
        if h.writable { files[id]!.writers -= 1 }
        let f = files[id]!
        if f.unlinked {
            if f.handles == 0 { files[id] = nil }
            return
        }
        if h.writable && f.writers == 0, f.ackedUnqueued, let key = path(of: id) {
            // The last writer's close queues what was acknowledged.
            queue(id, at: key)
        }
        settleIfClean(id)
    }

    /// With no handle and nothing to upload, the core has no local version any more.
    mutating func settleIfClean(_ id: Int) {
        let f = files[id]!
        if f.localHandles == 0 && f.queued == nil && !f.ackedUnqueued && !f.dirty && !f.conflicted {
            files[id]!.local = false
        }
    }

    /// fsync(): acknowledges and queues the file's changes (of a file with local changes). The runner drains.
    mutating func fsync(handle: Int) {
        let h = handles[handle]!
        let id = h.file
        // A handle pinned to the object version (opened while the file had no local changes) fsyncs nothing.
        guard h.pinned == nil, !files[id]!.unlinked, files[id]!.local, let key = path(of: id) else { return }
        acknowledgeChanges(id)
        if files[id]!.ackedUnqueued { queue(id, at: key) }
    }

    /// A file loses its name (unlink, or replaced by a rename): its queued versions are withdrawn; open, it
    /// lives on until its last close.
    mutating func orphan(_ id: Int) {
        withdraw(id)
        files[id]!.unlinked = true
        files[id]!.queued = nil
        files[id]!.ackedUnqueued = false
        files[id]!.conflictSeq = nil
        if files[id]!.handles == 0 { files[id] = nil }
    }

    mutating func unlink(_ path: String) {
        let id = file(at: path)!
        entries[path] = nil
        if files[id]!.conflicted {
            // Stopped by a conflict, the key holds the other client's object: the unlink leaves it, and the
            // name shows it again (as after renaming the file away).
            orphan(id)
            if let theirs = remoteState[path] ?? nil { entries[path] = .file(newFile(ModelFile(data: theirs, acked: theirs))) }
            return
        }
        let f = files[id]!
        // The uploads of the file still queued: the deletes queued after them wait for this unlink's delete.
        let open = events.filter { $0.kind == .put && $0.file == id && !$0.withdrawn }.map(\.seq).min()
        orphan(id)
        let i = recordDelete(of: f, at: path)
        if let open {
            let unlinkDelete = events[i].seq
            for j in events.indices where events[j].kind == .delete && events[j].seq > open && events[j].seq < unlinkDelete {
                events[j].waitsForDeletes.append(unlinkDelete)
            }
        }
    }

    /// Journals the delete of `path`, the name of `f` until now (unlink, or a rename away): one that sends nothing
    /// (nothing of `f` reached S3 there), or that removes only this mount's own object and leaves another
    /// client's, which `f`'s upload met (S-CONFLICT-IN-FLIGHT).
    @discardableResult
    mutating func recordDelete(of f: ModelFile, at path: String) -> Int {
        let i = record(path, .delete, nil)
        events[i].sendsNothing = !f.mayHoldObject
        guard f.mayHoldObject && f.ownOnly else { return i }
        events[i].ownOnlyBaseEpoch = f.baseEpoch
        let theirs = remoteState[path] ?? f.base
        if epoch[path, default: 0] > f.baseEpoch && theirs != f.base { events[i].leaves = .some(theirs) }
        return i
    }

    /// A name a rename moved a file from without a delete (nothing of it reached S3) shows what the other
    /// client put there meanwhile, if anything.
    mutating func showTheirs(at path: String) {
        // The key's last change that is not an upload of ours: a delete of ours still hides what came before it.
        guard let last = events.last(where: { $0.key == path && $0.kind != .put }), last.kind == .remote,
              let theirs = last.result else { return }
        entries[path] = .file(newFile(ModelFile(data: theirs, acked: theirs)))
    }

    mutating func mkdir(_ path: String) {
        entries[path] = .directory
        record(path + "/", .sync, [])
    }

    mutating func rmdir(_ path: String) {
        entries[path] = nil
        record(path + "/", .delete, nil)
    }

    /// A local file's versions move from `src` to `dst` (handles follow): the uploads go to the new key without
    /// a condition, but with `expectNoObject` (a file renamed onto a name that held nothing the mount knew of):
    /// then they expect no object there, and another client's object created meanwhile is a conflict
    /// (S-CONFLICT-RENAMED-NEW). `keepSource`: a file rename of a file in conflict, whose old name keeps the other
    /// writer's object.
    /// Returns whether the old name's delete was journaled (false: nothing of the file reached S3 under it).
    @discardableResult
    mutating func move(_ id: Int, from src: String, to dst: String, keepSource: Bool, destinationMayHoldObject: Bool,
                       expectNoObject: Bool = false, destinationConflicted: Bool = false,
                       destinationOwnOnlyEpoch: Int? = nil) -> Bool {
        let f = files[id]!
        // Nothing of a file created here reached S3 until a version of it was queued: no delete of the old name.
        let deleteSource = !keepSource && f.mayHoldObject
        let destinationOwnOnly = destinationOwnOnlyEpoch != nil
        let queuedJob = events.last { $0.kind == .put && $0.file == id && $0.key == src && !$0.withdrawn }?.seq
        // Whatever the new name held is this file's to delete now, and a copy of the object made there.
        files[id]!.mayHoldObject = true
        files[id]!.ownOnly = false
        files[id]!.conditional = false
        files[id]!.conflicted = false
        files[id]!.conflictSeq = nil
        // The newest version queued under the old name goes to the new one (the core retargets it); those
        // before it stay under `src` (one in flight lands, one waiting with every save kept is uploaded), before
        // the old name's delete (the key's chain waits for them): withdrawn there, they may land or not. A
        // file stopped by a conflict moves them all (the object under the old name is someone else's).
        for i in events.indices where events[i].kind == .put && events[i].file == id && events[i].key == src {
            events[i].withdrawn = true
        }
        // The last acknowledged bytes are the object in S3 and no local version holds them: taken from the
        // object (the file was opened from it), or uploaded and let go by a later write (which made a new
        // version). The rename copies the object server-side during the call, and a crash afterwards leaves
        // nothing to upload.
        let landedAndChanged = f.local && f.acked != nil && f.queued == nil && !f.ackedUnqueued && (f.dirty || !f.ackedHere)
        if f.local && !landedAndChanged {
            files[id]!.mayHoldObject = destinationMayHoldObject  // no copy: the versions move
            files[id]!.ownOnly = destinationOwnOnly
            if expectNoObject {
                files[id]!.conditional = true
                files[id]!.base = nil
                // Over a file stopped by a conflict, the other client's object is there already; over one whose
                // upload may meet another client's object, that object is as new to this one.
                files[id]!.baseEpoch = destinationConflicted ? -1 : destinationOwnOnlyEpoch ?? freshBaseEpoch(dst)
            }
            // The acknowledged version is journaled again under the new key (also one a later write copied).
            if f.acked != nil {
                seq += 1
                files[id]!.ackSeq = seq
            }
            // Versions queued before the newest of a file stopped by a conflict go to the new name too, in order.
            if f.conflicted {
                if f.pendingVersions.count > 1 { files[id]!.mayHoldObject = true }
                for v in f.pendingVersions.dropLast() { record(dst, .put, v, file: id) }
            }
        }
        // A version queued again under the new name counts as sent there (no upload delay here).
        func requeue(_ v: Bytes?) {
            record(dst, .put, v, file: id)
            if !files[id]!.mayHoldObject && files[id]!.conditional { files[id]!.ownOnly = true }
            files[id]!.mayHoldObject = true
        }
        if landedAndChanged {
            record(dst, .sync, f.acked)
            if deleteSource { recordDelete(of: f, at: src) }
        } else if f.local {
            if f.acked != nil && !f.ackedUnqueued {
                if f.queued != nil, let queuedJob {
                    // The version an earlier rename moved, when a newer one was queued since: it stays under the
                    // old name now (the core leaves the saves before the newest there, `keptByRename`) and settles
                    // there, so its job holds nothing for this file any more (seed 20578 with
                    // `--keep-every-version`: the model held the first name's delete too).
                    let earlier = f.movedJobVersions == f.pendingVersions.count ? f.movedJobSeq : nil
                    files[id]!.movedJobSeq = min(earlier ?? queuedJob, queuedJob)
                    files[id]!.movedJobVersions = f.pendingVersions.count
                }
                files[id]!.queued = f.queued ?? f.acked
                requeue(files[id]!.queued)
            } else if let q = f.queued, f.conflicted {
                requeue(q)
            } else if f.queued != nil {
                // The newest save is acknowledged and not queued yet (a writer is still open): it is the one
                // that moves; those queued before it stay under the old name, before its delete.
                files[id]!.queued = nil
                files[id]!.pendingVersions = []
                files[id]!.queuedVersions = 0
            }
            if deleteSource { recordDelete(of: f, at: src) }
        } else {
            // Only in S3: a server-side copy, made during the call; the old name is deleted later.
            record(dst, .sync, f.data)
            record(src, .delete, nil)
            return true
        }
        return deleteSource
    }

    mutating func rename(_ src: String, _ dst: String) {
        guard src != dst else { return }
        let s = entries[src]!
        if case .file(let id) = s {
            // S3 may hold an object under the new name: the replaced file's, unless nothing of it was sent.
            var keptOld = false
            var keptMeetsTheirs = false
            let destinationMayHoldObject = file(at: dst).map { !files[$0]!.local || files[$0]!.mayHoldObject } ?? false
            // A file stopped by a conflict under the new name: the object there is the other client's, which the
            // renamed file's upload must not replace either.
            let destinationConflicted = file(at: dst).map { files[$0]!.conflicted } ?? false
            // Over a file whose delete would remove only this mount's own object: so would the renamed file's.
            let destinationOwnOnlyEpoch = file(at: dst).flatMap { o in files[o]!.ownOnly && !files[o]!.conflicted ? files[o]!.baseEpoch : nil }
            if let old = file(at: dst) {
                let o = files[old]!
                if keepEveryVersion && o.handles == 0 && o.local && !o.conflicted && o.queued != nil {
                    // Its saves still go up, in order, with no condition, before the renamed file's; one in
                    // flight with its condition may be dropped instead. One in flight that meets the other
                    // client's object (the conflict criterion) is dropped, and the renamed file's saves then
                    // expect no object: they meet theirs as a conflict too (S-CONFLICT-RENAMED-OVER-KEPT).
                    if uncertain { withdraw(old) }
                    let theirs = remoteState[dst] ?? o.base
                    keptMeetsTheirs = !uncertain && o.conditional && epoch[dst, default: 0] > o.baseEpoch && theirs != o.base
                    if keptMeetsTheirs { withdraw(old) }  // none of its saves lands over theirs
                    files[old] = nil
                    keptOld = true
                } else {
                    orphan(old)
                }
            }
            let f = files[id]!
            let keep = f.local && f.conflicted
            let deleted = move(id, from: src, to: dst, keepSource: keep,
                               destinationMayHoldObject: destinationMayHoldObject || keptOld,
                               expectNoObject: (!destinationMayHoldObject && !keptOld) || destinationConflicted
                                   || destinationOwnOnlyEpoch != nil || keptMeetsTheirs,
                               destinationConflicted: destinationConflicted || keptMeetsTheirs,
                               destinationOwnOnlyEpoch: keptOld ? nil : destinationOwnOnlyEpoch)
            entries[src] = nil
            entries[dst] = .file(id)
            if keep, let theirs = remoteState[src] ?? nil {
                // The old name shows the other writer's object again.
                entries[src] = .file(newFile(ModelFile(data: theirs, acked: theirs)))
            } else if !deleted {
                showTheirs(at: src)
            }
            return
        }
        if entries[dst] == .directory {
            record(dst + "/", .delete, nil)
            entries[dst] = nil
        }
        let moving = [src] + descendants(of: src)
        for p in moving {
            let q = dst + p.dropFirst(src.count)
            switch entries[p]! {
            case .directory:
                record(q + "/", .sync, [])
                record(p + "/", .delete, nil)
            case .file(let id):
                // The new directory is new or empty: a file's versions moved there expect no object
                // (S-CONFLICT-DIR-RENAMED-NEW).
                move(id, from: p, to: q, keepSource: false, destinationMayHoldObject: false, expectNoObject: true)
            }
        }
        for p in moving {
            let q = dst + p.dropFirst(src.count)
            entries[q] = entries.removeValue(forKey: p)
        }
    }

    mutating func remotePut(_ path: String, _ bytes: Bytes) {
        epoch[path, default: 0] += 1
        remoteState[path] = .some(bytes)
        record(path, .remote, bytes)
        if let id = file(at: path), files[id]!.local { return }  // ours is shown until it lands (or conflicts)
        if let id = file(at: path) { files[id] = nil }
        entries[path] = .file(newFile(ModelFile(data: bytes, acked: bytes)))
    }

    mutating func remoteDelete(_ path: String) {
        epoch[path, default: 0] += 1
        remoteState[path] = .some(nil)
        record(path, .remote, nil)
        if let id = file(at: path), files[id]!.local { return }
        if let id = file(at: path) { files[id] = nil }
        entries[path] = nil
    }
}
