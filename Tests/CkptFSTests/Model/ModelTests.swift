import Foundation
import XCTest

/// The filesystem core against the reference model: random sequences (seeded, reproducible), shrunk on failure;
/// and every failure found so far, kept as a named regression test.
///
/// `CKPTFS_MODEL_SEQUENCES=100000 swift test --filter ModelTests/testRandomSequences` is the soak by hand;
/// `CKPTFS_MODEL_SEED=N` starts elsewhere; a failure prints its shrunk sequence as a test to paste below.
final class ModelTests: XCTestCase {
    func testRandomSequencesAgreeWithTheModel() async throws {
        let settings = ModelCheck.Settings.fromEnvironment()
        let start = ContinuousClock.now
        let report = await ModelCheck.explore(settings)
        let elapsed = ContinuousClock.now - start
        let seeds = settings.only.map { "seeds \($0)" } ?? "seeds \(settings.seed)..<\(settings.seed + UInt64(settings.sequences))"
        print("model test: \(report.sequences) sequences (\(seeds)), "
              + "\(report.steps) steps, \(report.faults) faults, \(report.drains) drains, \(report.crashes) crashes, "
              + "\(report.failures.count) failed, in \(elapsed)")
        var unknown = 0
        let shrinking = ProcessInfo.processInfo.environment["CKPTFS_MODEL_SHRINK"].flatMap(Int.init) ?? 3
        let verbose = ProcessInfo.processInfo.environment["CKPTFS_MODEL_VERBOSE"] != nil
        for (seed, failure, _, trace) in report.failures {
            print("model test: seed \(seed) failed: \(failure)")
            if verbose { print(trace.joined(separator: "\n")) }
        }
        for (seed, failure, steps, _) in report.failures.prefix(shrinking) {
            let (shrunk, last) = await ModelCheck.shrink(steps, failure)
            unknown += 1
            print("""
                model test: seed \(seed) failed: \(failure)
                shrunk to \(shrunk.count) steps: \(last)
                \(swiftSource(shrunk, name: "SEED\(seed)", seed: seed))
                """)
            if verbose {
                print((await ModelCheck.run(shrunk)).trace.joined(separator: "\n"))
            }
        }
        unknown += report.failures.dropFirst(shrinking).count
        XCTAssertEqual(unknown, 0, "sequences that disagree with the model (seeds \(report.failures.map(\.seed)))")
    }
}

/// Core bugs the model found that are not fixed yet. Each has a regression test in ModelRegressionTests,
/// skipped while the bug is listed in `open`; the property test skips the steps that would hit it (see
/// `Model.hitsKnownBug`), so it stays green and keeps looking for others. The fix removes the entry.
enum KnownCoreBugs {
    enum Bug: String, CaseIterable, Sendable {
        case renamedWhileUploading = "a version renamed while its upload is in flight is queued again behind newer versions, or stranded by a conflict under its old name"
        case unlinkKeepsAVersion = "unlink leaves an acknowledged version (a fallback, or one superseded behind an upload in flight) in the journal; the file comes back after a crash"
        case renameOfOpenFileLosesLastClose = "rename of a file open with unacknowledged changes deletes the old name with nothing queued for the new one"
        case headFailureIsAConflict = "a failed HEAD while an upload checks a failed precondition makes a permanent conflict"
        case recreateWhileDeleteQueued = "a file re-created while the delete of the old object is queued conflicts with that object"
        case droppedUploadConflicts = "a version unlinked while its upload is in flight is marked a conflict when that upload fails its condition; its staged file stays"
        case lostCreateReplyLeavesUpload = "a CreateMultipartUpload whose reply is lost leaves that multipart upload open until the next mount"
        case inPlaceBaseReplaced = "a file overwritten in place whose object another client replaces before the upload cannot be read (or uploaded): the blocks it never fetched are gone"
        case recoveryRefetchesInPlaceBlocks = "recovery fetches an in-place file's blocks from its base object again though the staged file holds them; once that object changed (its own upload landed, another client) and the block cache lacks them, the file cannot be read"
        case noopJournaled = "a file opened for writing and closed unchanged is journaled and queued as a new version: after a crash it is uploaded as changed (a conflict over another client's newer object, which the mount then hides), and until its no-op upload runs the mount shows it over such a change"
        case orphanWritesIntoUpload = "a file unlinked while its upload is in flight and open for writing: the orphan's writes go into the staged file that upload sends, so S3 gets bytes nobody acknowledged"
        case failedRenameDropsDestination = "a rename onto a file with local changes that fails (its copy fails) has already dropped the destination's versions (journaled)"
        case rmdirReadsOnePage = "rmdir looks at the first page of the directory's listing only: objects whose deletes are queued can fill it, and a directory with more in it is removed"
        case openRacesUploadEnd = "a read-only open racing with the end of the file's upload fails with ENOENT"
        case listingRacesDelete = "a readdir whose LIST was answered before a queued delete landed, and read after, shows the deleted name"
    }

    static let open: Set<Bug> = Set(Bug.allCases)
}
