// Core bugs the model test found that are not fixed yet, and the steps that would hit them.
import Foundation

/// Core bugs the model found that are not fixed yet. Each has a regression test in ModelRegressionTests,
/// skipped while the bug is listed in `open`; the property test skips the steps that would hit it (see
/// `Model.hitsKnownBug`), so it stays green and keeps looking for others. The fix removes the entry.
enum KnownCoreBugs {
    enum Bug: String, CaseIterable, Sendable {
        case renamedWhileUploading = "a version renamed while its upload is in flight is queued again behind newer versions, or stranded by a conflict under its old name"
        case unlinkKeepsAVersion = "unlink leaves an acknowledged version (a fallback, or one superseded behind an upload in flight) in the journal; the file comes back after a crash"
        case renameOfOpenFileLosesLastClose = "rename of a file open with unacknowledged changes deletes the old name with nothing queued for the new one"
        case lostCreateReplyLeavesUpload = "a CreateMultipartUpload whose reply is lost leaves that multipart upload open until the next mount"
        case inPlaceBaseReplaced = "a file overwritten in place whose object another client replaces before the upload cannot be read (or uploaded): the blocks it never fetched are gone"
        case recoveryRefetchesInPlaceBlocks = "recovery fetches an in-place file's blocks from its base object again though the staged file holds them; once that object changed (its own upload landed, another client) and the block cache lacks them, the file cannot be read"
        case noopJournaled = "a file opened for writing and closed unchanged is journaled and queued as a new version: after a crash it is uploaded as changed (a conflict over another client's newer object, which the mount then hides), and until its no-op upload runs the mount shows it over such a change"
        case orphanWritesIntoUpload = "a file unlinked while its upload is in flight and open for writing: the orphan's writes go into the staged file that upload sends, so S3 gets bytes nobody acknowledged"
        case failedRenameDropsDestination = "a rename onto a file with local changes that fails (its copy fails) has already dropped the destination's versions (journaled)"
        case rmdirReadsOnePage = "rmdir looks at the first page of the directory's listing only: objects whose deletes are queued can fill it, and a directory with more in it is removed"
        case openRacesUploadEnd = "a read-only open racing with the end of the file's upload fails with ENOENT"
        case failedChangeRevivesDeleted = "a mkdir or rename that fails after cancelling the queued delete of its target (an rmdir, unlink or rename before) brings the deleted object back"
        case renameRejournalsStaleChecksum = "rename journals a file's acknowledged in-place version again with its old checksum (blocks not fetched then counted as zeros) but the blocks fetched since: after a crash recovery finds the checksum wrong and quarantines the file"
        case waitsForHeldDeletes = "mkdir, or rename onto a name, whose queued delete waits for deletes under it that a conflict holds back never returns"
    }

    static let open: Set<Bug> = Set(Bug.allCases)
}

extension Model {
    /// The known core bug (KnownCoreBugs) step `s` would hit in this state, if any: the property test leaves
    /// such steps out, their regression tests keep them.
    func hitsKnownBug(_ s: Step) -> KnownCoreBugs.Bug? {
        let open = KnownCoreBugs.open
        // (A conflict is found when the upload goes: at a drain, or once held uploads are let go.)
        if open.contains(.waitsForHeldDeletes), let target = writtenName(s),
           events.contains(where: { $0.kind == .delete && ($0.key == target || $0.key == target + "/") }), !conflicts().isEmpty {
            return .waitsForHeldDeletes
        }
        switch s {
        case .faulty(_, .rename(let src, let dst, _)):
            // A rename that copies (the source only in S3) and fails has already dropped the destination.
            if open.contains(.failedRenameDropsDestination), expect(.rename(src, dst, noReplace: false)) == .ok,
               let from = file(at: src), !files[from]!.local, let to = file(at: dst), files[to]!.local {
                return .failedRenameDropsDestination
            }
            if open.contains(.failedChangeRevivesDeleted),
               events.contains(where: { $0.kind == .delete && ($0.key == dst || $0.key.hasPrefix(dst + "/")) }) {
                return .failedChangeRevivesDeleted
            }
            return hitsKnownBug(.rename(src, dst, noReplace: false))
        case .faulty(_, .mkdir(let path)):
            if open.contains(.failedChangeRevivesDeleted), events.contains(where: { $0.kind == .delete && $0.key == path + "/" }) {
                return .failedChangeRevivesDeleted
            }
            return hitsKnownBug(.mkdir(path))
        case .faulty(_, let inner):
            return hitsKnownBug(inner)
        case .rmdir(let path):
            // Deletes still queued under it fill the first page of the listing rmdir looks at.
            if open.contains(.rmdirReadsOnePage), expect(s) == .fails(ENOTEMPTY),
               events.contains(where: { $0.kind == .delete && $0.key.hasPrefix(path + "/") }) {
                return .rmdirReadsOnePage
            }
        case .rename(let src, let dst, _):
            // Onto a directory: rename removes it first, with rmdir's check.
            if open.contains(.rmdirReadsOnePage), entries[src] == .directory, entries[dst] == .directory,
               !children(of: dst).isEmpty, events.contains(where: { $0.kind == .delete && $0.key.hasPrefix(dst + "/") }) {
                return .rmdirReadsOnePage
            }
            guard expect(s) == .ok, src != dst else { return nil }
            let moved = (file(at: src).map { [$0] } ?? descendants(of: src).compactMap { file(at: $0) }).map { files[$0]! }
            if open.contains(.renamedWhileUploading) && moved.contains(where: { $0.queued != nil }) { return .renamedWhileUploading }
            // A file closed unchanged may still have its local version (the no-op upload not run yet, or kept by a
            // handle opened meanwhile): the model cannot tell whether the rename moves it or copies the object.
            if open.contains(.noopJournaled) && moved.contains(where: \.noop) { return .noopJournaled }
            if open.contains(.renameRejournalsStaleChecksum) && moved.contains(where: { $0.local && $0.ackedInPlace }) {
                return .renameRejournalsStaleChecksum
            }
            if open.contains(.renameOfOpenFileLosesLastClose)
                && moved.contains(where: { $0.writers > 0 && $0.acked != nil && $0.queued == nil && (!$0.ackedUnqueued || $0.dirty) }) {
                return .renameOfOpenFileLosesLastClose
            }
            if open.contains(.unlinkKeepsAVersion), let id = file(at: dst), leavesAVersion(files[id]!) { return .unlinkKeepsAVersion }
            if open.contains(.orphanWritesIntoUpload), let id = file(at: dst), files[id]!.queued != nil && files[id]!.writers > 0 {
                return .orphanWritesIntoUpload
            }
        case .unlink(let path):
            if open.contains(.unlinkKeepsAVersion), expect(s) == .ok, let id = file(at: path), leavesAVersion(files[id]!) {
                return .unlinkKeepsAVersion
            }
            if open.contains(.orphanWritesIntoUpload), expect(s) == .ok, let id = file(at: path),
               files[id]!.queued != nil && files[id]!.writers > 0 {
                return .orphanWritesIntoUpload
            }
        case .remotePut(let path, _, _), .remoteDelete(let path):
            if open.contains(.noopJournaled), let id = file(at: path), files[id]!.noop { return .noopJournaled }
            if let id = file(at: path), files[id]!.local && files[id]!.inPlace {
                if open.contains(.inPlaceBaseReplaced) { return .inPlaceBaseReplaced }
                if open.contains(.recoveryRefetchesInPlaceBlocks) { return .recoveryRefetchesInPlaceBlocks }
            }
        case .crash(let landing):
            if open.contains(.noopJournaled), files.values.contains(where: \.noop) { return .noopJournaled }
            // The file's own upload lands: its base object is gone.
            if landing, open.contains(.recoveryRefetchesInPlaceBlocks),
               files.values.contains(where: { $0.local && $0.inPlace && $0.queued != nil }) {
                return .recoveryRefetchesInPlaceBlocks
            }
        default: break
        }
        return nil
    }

    /// The name a mkdir or rename writes (it waits for a queued delete of that name first).
    func writtenName(_ s: Step) -> String? {
        switch s {
        case .faulty(_, let inner): return writtenName(inner)
        case .mkdir(let p): return p
        case .rename(_, let dst, _): return dst
        default: return nil
        }
    }

    /// Whether unlinking `f` leaves an acknowledged version in the journal (KnownCoreBugs.unlinkKeepsAVersion):
    /// one acknowledged while another writer stayed open (a later write copies it), or one superseded by a
    /// newer version while waiting behind an upload in flight.
    func leavesAVersion(_ f: ModelFile) -> Bool { f.ackedUnqueued || f.queuedVersions > 1 || f.noop }
}
