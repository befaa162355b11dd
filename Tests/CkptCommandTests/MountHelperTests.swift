import ArgumentParser
import Foundation
import XCTest

@testable import CkptCommand

final class MountHelperTests: XCTestCase {
    func meaning(_ argv: [String]) throws -> MountHelper.Meaning? { try MountHelper.translate(argv) }

    func testOrdinaryCommandLinesAreLeftAlone() throws {
        XCTAssertNil(try meaning(["/usr/local/bin/ckptfs", "mount", "s3://b", "/mnt"]))
        XCTAssertNil(try meaning(["ckptfs", "status", "/mnt"]))
        XCTAssertNil(try meaning(["ckptfs"]))
    }

    /// mount.fuse3 runs `ckptfs SOURCE MOUNTPOINT -o OPTIONS`; mount(8) runs `/sbin/mount.fuse.ckptfs` the same way.
    func testMountHelperInvocationsBecomeMountCommands() throws {
        let expected = MountHelper.Meaning.run(["mount", "s3://b/run-1", "/mnt/ckpt", "--cache-dir", "/nvme/c", "--allow-other",
                                                "--upload-delay", "0", "--read-only", "--metrics-address", "127.0.0.1:9464"])
        let opts = "_netdev,nofail,defaults,rw,dev,suid,x-systemd.requires=a.service,cache_dir=/nvme/c,allow_other,upload-delay=0,ro,"
            + "metrics_address=127.0.0.1:9464"
        XCTAssertEqual(try meaning(["ckptfs", "s3://b/run-1", "/mnt/ckpt", "-o", opts]), expected)
        XCTAssertEqual(try meaning(["/sbin/mount.fuse.ckptfs", "s3://b/run-1", "/mnt/ckpt", "-n", "-o", opts]), expected)
        XCTAssertEqual(try meaning(["/sbin/mount.fuse.ckptfs", "s3://b/run-1", "/mnt/ckpt", "-o" + opts, "-v", "-t", "fuse.ckptfs"]), expected)
        XCTAssertEqual(try meaning(["mount.fuse.ckptfs", "s3://b", "/m"]), .run(["mount", "s3://b", "/m"]))
        XCTAssertEqual(try meaning(["mount.fuse.ckptfs", "s3://b", "/m", "-f", "-o", "cache_dir=/c"]), .fake)
        XCTAssertEqual(try meaning(["/sbin/umount.fuse.ckptfs", "/mnt/ckpt", "-n", "-v"]), .run(["unmount", "/mnt/ckpt"]))
    }

    func testBadOptionsSayWhatIsWrong() {
        for (argv, message) in [
            (["ckptfs", "s3://b", "/m", "-o", "cache_dirr=/x"], "unknown mount option 'cache_dirr'"),
            (["ckptfs", "s3://b", "/m", "-o", "cache_dir"], "mount option 'cache_dir' needs a value: cache_dir=VALUE"),
            (["ckptfs", "s3://b", "/m", "-o", "allow_other=1"], "mount option 'allow_other' takes no value"),
            (["mount.fuse.ckptfs", "s3://b"], "expected SOURCE and MOUNTPOINT"),
            (["mount.fuse.ckptfs", "s3://b", "/m", "-N", "/proc/1/ns/mnt"], "-N"),
            (["ckptfs", "s3://b", "/m", "-o"], "-o needs a value"),
        ] {
            XCTAssertThrowsError(try MountHelper.translate(argv), "\(argv)") { error in
                XCTAssertTrue((error as! UserFacingFailure).message.contains(message), "\(argv): \(error)")
            }
        }
    }

    /// Every option of `ckptfs mount` that a user may set has an -o form, with the same kind (value or flag):
    /// the lists are compared with what swift-argument-parser knows of the command.
    func testEveryMountOptionHasAnOForm() throws {
        struct Dump: Decodable {
            struct Command: Decodable { var arguments: [Argument] }
            struct Argument: Decodable {
                struct Name: Decodable { var kind: String; var name: String }
                var kind: String
                var names: [Name]?
                var shouldDisplay: Bool
            }
            var command: Command
        }
        let dump = try JSONDecoder().decode(Dump.self, from: Data(Mount._dumpHelp().utf8))
        var options: Set<String> = [], flags: Set<String> = []
        for a in dump.command.arguments where a.shouldDisplay {
            for n in a.names ?? [] where n.kind == "long" && n.name != "help" {
                if a.kind == "option" { options.insert(n.name) } else if a.kind == "flag" { flags.insert(n.name) }
            }
        }
        // --foreground makes mount(8) wait forever; it has no -o form on purpose.
        flags.remove("foreground")
        XCTAssertEqual(Set(MountHelper.valued), options)
        XCTAssertEqual(Set(MountHelper.flags), flags)
        for name in MountHelper.valued + MountHelper.flags {
            XCTAssertFalse(MountHelper.ignored.contains(name.replacingOccurrences(of: "-", with: "_")), name)
        }
    }
}
