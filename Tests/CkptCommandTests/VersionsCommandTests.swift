import CkptFS
import Foundation
import XCTest

@testable import CkptCommand

final class VersionsCommandTests: XCTestCase {
    /// `ckptfs versions` prints one line per version, columns aligned whatever the widths, local versions and
    /// delete markers named.
    func testTheTableAlignsItsColumnsAndNamesWhatEachVersionIs() {
        let t0 = Date(timeIntervalSince1970: 1_764_433_881)  // 2025-11-29T16:31:21Z
        let h = FileHistory(path: "run/model.pt", key: "run/model.pt", versioned: true, versions: [
            FileVersion(versionId: nil, lastModified: t0, size: 3 << 20, etag: nil, isLatest: false, isDeleteMarker: false, localState: "queued"),
            FileVersion(versionId: "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", lastModified: t0, size: 0, etag: nil, isLatest: true, isDeleteMarker: true),
            FileVersion(versionId: "v2", lastModified: t0.addingTimeInterval(-60), size: 1000, etag: "\"e\"", isLatest: false, isDeleteMarker: false),
        ])
        let lines = Versions.table(h).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 4)
        let dateColumn = lines[0].range(of: "LAST MODIFIED")!.lowerBound.utf16Offset(in: lines[0])
        for l in lines.dropFirst() {
            XCTAssertEqual(l.range(of: "2025-11-29T")?.lowerBound.utf16Offset(in: l), dateColumn, l)
        }
        XCTAssertTrue(lines[1].hasPrefix("local ") && lines[1].contains("2025-11-29T16:31:21Z") && lines[1].hasSuffix("written here, not in S3 yet (queued)"), lines[1])
        XCTAssertTrue(lines[2].hasSuffix("delete marker, latest"), lines[2])
        XCTAssertTrue(lines[3].hasPrefix("v2 ") && lines[3].contains("1000 B") && lines[3].contains("16:30:21Z"), lines[3])
    }

    /// `--time` takes ISO 8601 with or without fractional seconds, and nothing else.
    func testRestoreTimesAreISO8601() {
        XCTAssertEqual(Restore.parseTime("2026-11-29T16:31:21Z")?.timeIntervalSince1970, 1_795_969_881)
        XCTAssertEqual(Restore.parseTime("2026-11-29T16:31:21.500Z")?.timeIntervalSince1970, 1_795_969_881.5)
        XCTAssertNil(Restore.parseTime("yesterday"))
        XCTAssertNil(Restore.parseTime("2026-11-29"))
    }
}
