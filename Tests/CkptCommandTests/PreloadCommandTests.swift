import CkptFS
import Foundation
import XCTest

@testable import CkptCommand

/// The parts of `ckptfs preload` that need no mount: where the rank comes from, how progress reads, exit codes.
final class PreloadCommandTests: XCTestCase {
    func share(_ env: [String: String], rank: Int? = nil, world: Int? = nil, all: Bool = false) throws -> (Int, Int, String) {
        let (s, source) = try Preload.share(rank: rank, worldSize: world, all: all, strategy: .count, environment: env)
        return (s.rank, s.worldSize, source)
    }

    func testTheRankComesFromTheOptionsThenTorchrunSlurmAndOpenMPI() throws {
        let everything = ["RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "4",
                          "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"]
        XCTAssertEqual(try share(everything, rank: 5, world: 6).0, 5)
        XCTAssertEqual(try share(everything, all: true).1, 1)
        let torchrun = try share(everything)
        XCTAssertEqual([torchrun.0, torchrun.1], [3, 8])
        XCTAssertEqual(torchrun.2, "RANK/WORLD_SIZE")
        let slurm = try share(["SLURM_PROCID": "1", "SLURM_NTASKS": "4", "RANK": "2"])  // RANK alone is not a pair
        XCTAssertEqual([slurm.0, slurm.1], [1, 4])
        XCTAssertEqual(try share(["OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"]).2, "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE")
        XCTAssertEqual(try share([:]).1, 1, "nothing set: everything")
        XCTAssertThrowsError(try share(["RANK": "4", "WORLD_SIZE": "4"])) { e in
            XCTAssertTrue("\(e)".contains("RANK=4 and WORLD_SIZE=4"), "\(e)")
        }
        XCTAssertThrowsError(try share(["SLURM_PROCID": "x", "SLURM_NTASKS": "4"]))
    }

    func testOptionsAreCheckedBeforeAnythingIsContacted() {
        XCTAssertThrowsError(try Preload.parse(["/mnt/x", "--rank", "1"]))
        XCTAssertThrowsError(try Preload.parse(["/mnt/x", "--rank", "2", "--world-size", "2"]))
        XCTAssertThrowsError(try Preload.parse(["/mnt/x", "--all", "--world-size", "2", "--rank", "0"]))
        XCTAssertThrowsError(try Preload.parse(["/mnt/x", "--check", "--evict"]))
        XCTAssertThrowsError(try Preload.parse(["/mnt/x", "--shard-by", "name"]))
        XCTAssertThrowsError(try Preload.parse(["/mnt/x", "--parallel", "0"]))
        XCTAssertThrowsError(try Preload.parse([]))
        XCTAssertNoThrow(try Preload.parse(["/mnt/x", "--rank", "1", "--world-size", "2", "--shard-by", "size", "--json"]))
    }

    func testProgressLineAndExitCodes() {
        var p = PreloadProgress()
        p.files = 2000
        p.filesDone = 1234
        p.bytes = 2 << 30
        p.bytesDone = 1 << 30
        p.bytesFetched = 1 << 30
        p.elapsedSeconds = 4
        XCTAssertEqual(PreloadDisplay.line(p), "1,234/2,000 files, 1.0 GiB/2.0 GiB (50%), 268.4 MB/s, ETA 0:00:04")
        var plan = PreloadPlan()
        p.state = .done
        XCTAssertEqual(PreloadDisplay.exitCode(plan, p), 0)
        plan.missing = ["x"]
        XCTAssertEqual(PreloadDisplay.exitCode(plan, p), 1, "a path that names nothing")
        p.state = .stoppedAtBound
        XCTAssertEqual(PreloadDisplay.exitCode(plan, p), 3)
        p.state = .cancelled
        XCTAssertEqual(PreloadDisplay.exitCode(plan, p), 130)
        XCTAssertEqual(grouped(1_234_567), "1,234,567")
        XCTAssertEqual(ordinal(2), "2nd")
        XCTAssertEqual(ordinal(12), "12th")
    }
}
