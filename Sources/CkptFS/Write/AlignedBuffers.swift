// Page-aligned buffers for O_DIRECT writes of staged files.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

/// Page-aligned buffers of at least 1 MiB for O_DIRECT writes, kept for reuse.
final class AlignedBuffers: Sendable {
    /// Addresses of free buffers of `size` bytes.
    private let free = Mutex<[UInt]>([])
    static let size = 1 << 20

    func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        if count <= AlignedBuffers.size, let a = free.withLock({ $0.popLast() }) {
            return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: a), count: AlignedBuffers.size)
        }
        return .allocate(byteCount: max(count, AlignedBuffers.size), alignment: 4096)
    }

    func give(_ b: UnsafeMutableRawBufferPointer) {
        let a = UInt(bitPattern: b.baseAddress)
        let kept = b.count == AlignedBuffers.size && free.withLock { f -> Bool in
            guard f.count < 16 else { return false }
            f.append(a)
            return true
        }
        if !kept { b.deallocate() }
    }
}
