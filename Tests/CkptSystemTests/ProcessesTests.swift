import CkptSystem
import Foundation
import Glibc
import Synchronization
import XCTest

/// `threadGroup(ofThread:)`: the process a FUSE request's thread belongs to (S-DUR-ACKED-ONLY depends on it).
final class ProcessesTests: XCTestCase {
    func testAThreadBelongsToItsProcess() {
        XCTAssertEqual(threadGroup(ofThread: currentThreadID()), getpid())
        let other = Mutex<(tid: pid_t, tgid: pid_t)>((0, 0))
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            let tid = currentThreadID()
            other.withLock { $0 = (tid, threadGroup(ofThread: tid)) }
            done.signal()
        }
        t.start()
        done.wait()
        let (tid, tgid) = other.withLock { $0 }
        XCTAssertNotEqual(tid, getpid(), "a second thread has an id of its own")
        XCTAssertEqual(tgid, getpid())
        // A child process is a thread group of its own.
        let child = fork()
        if child == 0 { pause(); _exit(0) }
        defer { kill(child, SIGKILL); var st: Int32 = 0; waitpid(child, &st, 0) }
        XCTAssertEqual(threadGroup(ofThread: child), child)
    }

    func testNoThreadOrNoLineGivesZero() {
        XCTAssertEqual(threadGroup(ofThread: 0x3fff_fff0), 0)
        let texts = ["Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4243\n": 4242,
                     "Name:\tx\\nTgid: 7\nTgid:\t9\n": 9,  // a name is escaped: only a line start counts
                     "Name:\tx\nPid:\t5\n": 0, "Name:\tx\nTgid:\t\n": 0]
        for (text, want) in texts {
            let got = Array(text.utf8).withUnsafeBufferPointer { threadGroup(inStatus: $0) }
            XCTAssertEqual(got, pid_t(want), text)
        }
    }
}
