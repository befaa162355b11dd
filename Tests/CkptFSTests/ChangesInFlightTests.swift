@testable import CkptFS
import Foundation
import XCTest

/// The record of this mount's changes to S3 while reads of S3 are in flight (ChangesInFlight.swift), alone.
final class ChangesInFlightTests: XCTestCase {
    let file = Meta(isDirectory: false, size: 5, etag: "\"e\"", mtime: Date(timeIntervalSince1970: 1))

    func isAbsent(_ c: KeyChange?) -> Bool { if case .absent = c { true } else { false } }
    func isPresent(_ c: KeyChange?) -> Bool { if case .present = c { true } else { false } }

    func testARequestSeesOnlyTheChangesRecordedWhileItWasInFlight() {
        var log = ChangesInFlight()
        log.record("before", .absent)  // no request in flight: nothing kept
        XCTAssertEqual(log.logged, 0)
        let a = log.begin()
        log.record("gone", .absent)
        let b = log.begin()
        log.record("landed", .present(file))
        let seenA = log.end(a)
        XCTAssertTrue(isAbsent(seenA.change(of: "gone")))
        XCTAssertTrue(isPresent(seenA.change(of: "landed")))
        XCTAssertNil(seenA.change(of: "before"))
        XCTAssertEqual(log.logged, 1, "b began after `gone`: only `landed` is still of use")
        let seenB = log.end(b)
        XCTAssertNil(seenB.change(of: "gone"))
        XCTAssertTrue(isPresent(seenB.change(of: "landed")))
        XCTAssertEqual(log.logged, 0)
    }

    func testTheNewestChangeOfAKeyWinsAndADeletedDirectoryHidesWhatWasUnderIt() {
        var log = ChangesInFlight()
        let t = log.begin()
        log.record("d/f", .present(file))
        log.record("d/", .absent)
        log.record("x", .absent)
        log.record("x", .present(file))
        let seen = log.end(t)
        XCTAssertTrue(isAbsent(seen.change(of: "d/f")), "d/ was deleted after d/f landed")
        XCTAssertTrue(isAbsent(seen.change(of: "d/g")))
        XCTAssertTrue(isPresent(seen.change(of: "x")))
        XCTAssertTrue(isAbsent(seen.children(of: "")["d/"]))
        XCTAssertTrue(isPresent(seen.children(of: "")["x"]))
    }

    func testADirectoryIsPresentWhenSomethingLandedUnderItAfterItsDelete() {
        var log = ChangesInFlight()
        let t = log.begin()
        log.record("d/", .absent)
        log.record("d/sub/f", .present(file))
        let seen = log.end(t)
        XCTAssertTrue(isPresent(seen.change(of: "d/")))
        XCTAssertTrue(isPresent(seen.children(of: "")["d/"]))
        XCTAssertTrue(isPresent(seen.children(of: "d/")["sub/"]))
        XCTAssertTrue(isPresent(seen.change(of: "d/sub/f")))
    }
}
