// Which process a thread belongs to, from /proc (proc(5)): the FUSE adapter gets the calling thread's id with
// each request and needs its process (a close() acknowledges only in the process that opened the file).
import CGlibc
import Glibc

/// The calling thread's id (gettid(2)), as FUSE reports a request's caller.
public func currentThreadID() -> pid_t { pid_t(ckpt_glibc_gettid()) }

/// The thread group (process) id of thread `tid`, from the `Tgid:` line of /proc/TID/status; 0 when the thread
/// is gone or the file cannot be read. Plain open/read into a stack buffer (the line is the fourth, within the
/// first 512 bytes whatever the thread's name, which the kernel escapes): it is asked at every create, write
/// open and close, where Foundation's file reading cost a measurable share of a small file's save.
public func threadGroup(ofThread tid: pid_t) -> pid_t {
    let fd = open("/proc/\(tid)/status", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 512) { buf -> pid_t in
        let n = read(fd, buf.baseAddress, buf.count)
        guard n > 0 else { return 0 }
        return threadGroup(inStatus: UnsafeBufferPointer(rebasing: buf[0..<n]))
    }
}

/// The number on the `Tgid:` line of a /proc/PID/status text, or 0 when it has none.
public func threadGroup(inStatus text: UnsafeBufferPointer<UInt8>) -> pid_t {
    let label = Array("\nTgid:".utf8)
    var i = 0
    while i + label.count <= text.count {
        if text[i..<(i + label.count)].elementsEqual(label) {
            var j = i + label.count
            while j < text.count && (text[j] == UInt8(ascii: " ") || text[j] == UInt8(ascii: "\t")) { j += 1 }
            var value: Int64 = 0
            var digits = 0
            while j < text.count, text[j] >= UInt8(ascii: "0"), text[j] <= UInt8(ascii: "9"), digits < 10 {
                value = value * 10 + Int64(text[j] - UInt8(ascii: "0"))
                j += 1
                digits += 1
            }
            return digits > 0 && value <= Int64(Int32.max) ? pid_t(value) : 0
        }
        i += 1
    }
    return 0
}
