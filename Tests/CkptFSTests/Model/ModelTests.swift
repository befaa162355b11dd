import Foundation
import XCTest

/// The filesystem core against the reference model: random sequences (seeded, reproducible), shrunk on failure;
/// and every failure found so far, kept as a named regression test.
///
/// `CKPTFS_MODEL_SEQUENCES=100000 swift test --filter ModelTests/testRandomSequences` is the soak by hand;
/// `CKPTFS_MODEL_SEED=N` starts elsewhere; a failure prints its shrunk sequence as a test to paste into
/// ModelRegressionTests (shrinking gets CKPTFS_MODEL_SHRINK_SECONDS, 120 by default, for all failures of a run).
final class ModelTests: XCTestCase {
    override class func tearDown() { ModelRun.removeBase() }

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
        let deadline = ContinuousClock.now + settings.shrinkTime
        for (seed, failure, steps, _) in report.failures.prefix(shrinking) {
            let (shrunk, last) = await ModelCheck.shrink(steps, failure, deadline: deadline)
            if ContinuousClock.now >= deadline { print("model test: shrinking stopped at its time limit (\(settings.shrinkTime))") }
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
