import Foundation
import Logging
import XCTest

@testable import CkptCommand

final class JSONLogHandlerTests: XCTestCase {
    /// One line, valid JSON, the four fields first, metadata flattened (nested values kept), control characters
    /// and quotes escaped, a metadata key named like a field kept under metadata.KEY.
    func testALineIsOneJSONObject() throws {
        let date = Date(timeIntervalSince1970: 1_748_779_200.123)
        let line = JSONLogHandler.line(time: date, level: .notice, label: "ckptfs", message: "a \"quoted\"\nline\u{1}",
                                       metadata: ["s3.key": "run/ckpt.pt", "files": .array(["a", "b"]),
                                                  "cache": .dictionary(["blocks": "3"]), "message": "shadow"])
        XCTAssertTrue(line.hasSuffix("}\n"))
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1)
        XCTAssertTrue(line.hasPrefix(#"{"time":"2025-06-01T12:00:00.123Z","level":"notice","logger":"ckptfs","message":"a \"quoted\"\nline\u0001""#), line)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(object["message"] as? String, "a \"quoted\"\nline\u{1}")
        XCTAssertEqual(object["s3.key"] as? String, "run/ckpt.pt")
        XCTAssertEqual(object["files"] as? [String], ["a", "b"])
        XCTAssertEqual((object["cache"] as? [String: String])?["blocks"], "3")
        XCTAssertEqual(object["metadata.message"] as? String, "shadow")
        XCTAssertEqual(object["level"] as? String, "notice")
    }
}
