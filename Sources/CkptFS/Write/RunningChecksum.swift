// The checksum of a file written front to back, computed as it is written, so close() need not read the file
// back. The kernel's write-back sends a sequential writer's pages a little out of order (several requests in
// flight), so bytes past a gap are remembered as ranges and hashed, read back from the file, once the gap
// fills. A write below the hashed point (a rewrite) ends it; the checksum is then computed at close.
import CkptCache
import CkptDigest
import CkptSystem
import Foundation
import SystemPackage

struct RunningChecksum: Sendable {
    private var hasher = XXH64()
    /// Bytes [0, hashedTo) are hashed and final as far as this sum knows (a write below ends the sum).
    private(set) var hashedTo: Int64 = 0
    /// Written ranges past a gap, sorted and disjoint, all above `hashedTo`.
    private var ahead: [Range<Int64>] = []
    private var aheadBytes: Int64 = 0
    /// How much may wait past a gap before the sum gives up.
    static let maxAhead: Int64 = 256 << 20
    static let maxRanges = 256

    /// Takes a write of `data` at `offset`, already in `fd`. Returns false when the sum cannot go on (the
    /// write lands below `hashedTo`, too much waits past a gap, or the file cannot be read back).
    mutating func wrote(_ data: UnsafeRawBufferPointer, at offset: Int64, fd: Int32) -> Bool {
        let end = offset + Int64(data.count)
        if offset < hashedTo { return data.isEmpty }
        if offset > hashedTo {
            insert(offset..<end)
            return aheadBytes <= RunningChecksum.maxAhead && ahead.count <= RunningChecksum.maxRanges
        }
        hasher.update(data)
        hashedTo = end
        // The gap may be filled now: hash what waited, from the file.
        while let r = ahead.first, r.lowerBound <= hashedTo {
            ahead.removeFirst()
            aheadBytes -= Int64(r.count)
            if r.upperBound > hashedTo {
                guard hashFile(fd, hashedTo..<r.upperBound) else { return false }
                hashedTo = r.upperBound
            }
        }
        return true
    }

    /// The sum of the first `size` bytes, if it covers exactly them.
    func value(size: Int64) -> UInt64? {
        ahead.isEmpty && hashedTo == size ? hasher.finalize() : nil
    }

    private mutating func insert(_ r: Range<Int64>) {
        var lo = r.lowerBound, hi = r.upperBound
        var kept: [Range<Int64>] = []
        var i = 0
        while i < ahead.count && ahead[i].upperBound < lo {
            kept.append(ahead[i])
            i += 1
        }
        while i < ahead.count && ahead[i].lowerBound <= hi {
            lo = min(lo, ahead[i].lowerBound)
            hi = max(hi, ahead[i].upperBound)
            i += 1
        }
        kept.append(lo..<hi)
        kept += ahead[i...]
        ahead = kept
        aheadBytes = ahead.reduce(0) { $0 + Int64($1.count) }
    }

    private mutating func hashFile(_ fd: Int32, _ r: Range<Int64>) -> Bool {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        var off = r.lowerBound
        while off < r.upperBound {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buf[0..<min(buf.count, Int(r.upperBound - off))])
            guard (try? FileDescriptor(rawValue: fd).readAll(fromAbsoluteOffset: off, into: chunk)) == chunk.count else { return false }
            hasher.update(UnsafeRawBufferPointer(chunk))
            off += Int64(chunk.count)
        }
        return true
    }
}
