import CFuse
import XCTest

/// The libfuse shim compiles against the low-level API and links to the installed libfuse3.
final class CFuseTests: XCTestCase {
    func testShimUsesTheLowLevelAPIVersionAndLinks() {
        XCTAssertEqual(ckpt_fuse_use_version(), 312)
        // Debian 12 ships libfuse 3.14; anything older than the API version we compile for cannot work.
        XCTAssertGreaterThanOrEqual(ckpt_fuse_runtime_version(), 312)
    }
}
