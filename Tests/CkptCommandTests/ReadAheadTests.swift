// Finding a mount's device for its kernel read-ahead window (FuseSession.setReadAhead): the mount point as
// /proc/self/mountinfo spells it, and the device number it gives.
@testable import CkptFUSE
import Foundation
import XCTest

final class ReadAheadTests: XCTestCase {
    func testTheWindowIsTheLargestReadWhoseReplyFitsInAPipe() {
        // libfuse splices a reply through a pipe only if the reply and a few pages fit in it.
        XCTAssertEqual(FuseSession.readAheadKiB(pipeMaxSize: 1 << 20), 512, "the default pipe-max-size")
        XCTAssertEqual(FuseSession.readAheadKiB(pipeMaxSize: 2 << 20), 1024, "one cache block at most")
        XCTAssertEqual(FuseSession.readAheadKiB(pipeMaxSize: 64 << 20), 1024)
        XCTAssertEqual(FuseSession.readAheadKiB(pipeMaxSize: 300 << 10), 256)
        XCTAssertEqual(FuseSession.readAheadKiB(pipeMaxSize: 4096), 128, "never below the kernel's default")
    }

    func testMountinfoEscapesAreDecoded() {
        XCTAssertEqual(FuseSession.unescapeMountField("/tmp/a\\040b\\011c\\134d"), "/tmp/a b\tc\\d")
        XCTAssertEqual(FuseSession.unescapeMountField("/plain/path"), "/plain/path")
        XCTAssertEqual(FuseSession.unescapeMountField("/ends\\04"), "/ends\\04", "a cut escape is kept as it is")
    }

    func testTheDeviceOfAMountPointIsTheOneStatGives() throws {
        var st = stat()
        XCTAssertEqual(stat("/proc", &st), 0)
        let device = try XCTUnwrap(FuseSession.mountDevice("/proc"))
        // glibc's major() and minor() are macros Swift cannot import.
        let dev = UInt64(st.st_dev)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        XCTAssertEqual(device, "\(major):\(minor)")
        XCTAssertNil(FuseSession.mountDevice("/no/such/mount/point"))
    }
}
