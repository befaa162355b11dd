// The checksum of a file written front to back, computed as it is written, so close() need not read the file
// back. The kernel's write-back sends a sequential writer's pages a little out of order (several requests in
// flight on several FUSE threads: in a 1 GiB save most writes arrive past a gap), so bytes past a gap are kept
// in memory (up to `maxHeld`) and hashed once the gap fills; past that bound, or where writes past the gap
// overlap each other, only their ranges are kept and the bytes are read back from the file then (a staged file
// written with O_DIRECT is not in the page cache: reading it back costs a disk read, page-cache pages and a
// copy, which is why memory comes first). A write below the hashed point (a rewrite) ends the sum; the checksum
// is then computed at close. One rewrite is taken: the write-back sends a page again when the writer added to
// it after it was sent (a writer whose writes end mid-page, as torch.save's do), so a write that starts in the
// last page hashed and repeats the bytes hashed there goes on (the last 4 KiB hashed are kept to compare).
import CkptCache
import CkptDigest
import CkptSystem
import Foundation
import SystemPackage

struct RunningChecksum: Sendable {
    private var hasher = XXH64()
    /// Bytes [0, hashedTo) are hashed and final as far as this sum knows (a write below ends the sum).
    private(set) var hashedTo: Int64 = 0
    /// Written ranges past a gap, sorted and disjoint, all ending above `hashedTo`; each with its bytes when
    /// they are held in memory (nil: read them back from the file).
    private var ahead: [(range: Range<Int64>, bytes: [UInt8]?)] = []
    private var aheadBytes: Int64 = 0
    /// Bytes of `ahead` held in memory.
    private(set) var heldBytes = 0
    /// Bytes read back from the file so far (for tests and the debug log).
    private(set) var readBack: Int64 = 0
    /// Buffers of held bytes already hashed, reused for the next ones (at most 1, of `maxEntryBytes`): the
    /// daemon has glibc map each block of 256 KiB or more on its own, so a fresh buffer per write would cost
    /// page faults and zeroing each time.
    private var spare: [[UInt8]] = []
    /// The last bytes hashed (up to `repeatable`), to recognise a page sent again.
    private var lastHashed: [UInt8] = []
    static let repeatable = 4096
    /// How much may wait past a gap before the sum gives up.
    static let maxAhead: Int64 = 256 << 20
    /// How many ranges may wait past a gap (adjacent writes extend one range; see `insert`).
    static let maxRanges = 1024
    /// How much of what waits past a gap is held in memory (per file being written; 16 files written at once
    /// took the daemon to 277 MiB RSS with 32 MiB, over bench/load.py's 256 MiB bound). Writes the kernel's
    /// write-back reorders wait a few MiB at most; past this they are read back from the file.
    static let maxHeld = 8 << 20
    /// Most bytes one waiting entry holds (adjacent writes are appended to it up to this).
    static let maxEntryBytes = 4 << 20

    /// Takes a write of `data` at `offset`, already in `fd`. Returns false when the sum cannot go on (the
    /// write lands below `hashedTo`, too much waits past a gap, or the file cannot be read back).
    mutating func wrote(_ data: UnsafeRawBufferPointer, at offset: Int64, fd: Int32) -> Bool {
        let end = offset + Int64(data.count)
        if offset < hashedTo {
            // Below the hashed point: only a repeat of the last bytes hashed (a page sent again) goes on.
            let again = Int(min(hashedTo, end) - offset)
            guard hashedTo - offset <= Int64(lastHashed.count),
                  lastHashed.withUnsafeBytes({ $0[($0.count - Int(hashedTo - offset))...].starts(with: data[0..<again]) })
            else { return data.isEmpty }
            if end <= hashedTo { return true }
            return wrote(UnsafeRawBufferPointer(rebasing: data[again...]), at: hashedTo, fd: fd)
        }
        if offset > hashedTo {
            insert(offset..<end, data)
            return aheadBytes <= RunningChecksum.maxAhead && ahead.count <= RunningChecksum.maxRanges
        }
        hash(data)
        hashedTo = end
        // The gap may be filled now: hash what waited, from memory or from the file.
        while let first = ahead.first, first.range.lowerBound <= hashedTo {
            ahead.removeFirst()
            aheadBytes -= Int64(first.range.count)
            defer { if let b = first.bytes { recycle(b) } }
            let r = first.range
            guard r.upperBound > hashedTo else { continue }
            if let b = first.bytes {
                // Bytes below `hashedTo` were written again by the write that filled the gap; the rest are still
                // what the file holds (a later write over them would have dropped `bytes`, see `insert`).
                b.withUnsafeBytes { hash(UnsafeRawBufferPointer(rebasing: $0[Int(hashedTo - r.lowerBound)...])) }
            } else {
                guard hashFile(fd, hashedTo..<r.upperBound) else { return false }
            }
            hashedTo = r.upperBound
        }
        return true
    }

    /// Hashes `bytes` (the next after `hashedTo`) and keeps the last 4 KiB hashed.
    private mutating func hash(_ bytes: UnsafeRawBufferPointer) {
        hasher.update(bytes)
        let keep = RunningChecksum.repeatable
        if bytes.count >= keep {
            lastHashed.removeAll(keepingCapacity: true)
            lastHashed.append(contentsOf: bytes[(bytes.count - keep)...])
        } else {
            let drop = max(0, lastHashed.count + bytes.count - keep)
            if drop > 0 { lastHashed.removeFirst(drop) }
            lastHashed.append(contentsOf: bytes)
        }
    }

    /// The sum of the first `size` bytes, if it covers exactly them.
    func value(size: Int64) -> UInt64? {
        ahead.isEmpty && hashedTo == size ? hasher.finalize() : nil
    }

    /// Records a write past the gap. A write right after the last one waiting extends it (its bytes appended
    /// while it holds under `maxEntryBytes` and all held bytes fit in `maxHeld`; without bytes, its range only),
    /// so a run of small writes is one entry; a write overlapping ranges already waiting is merged with them
    /// and loses the bytes (they are read back from the file, which has the newest).
    private mutating func insert(_ r: Range<Int64>, _ data: UnsafeRawBufferPointer) {
        guard !r.isEmpty else { return }
        var lo = r.lowerBound, hi = r.upperBound
        var i = 0
        while i < ahead.count && ahead[i].range.upperBound <= lo { i += 1 }
        var j = i
        while j < ahead.count && ahead[j].range.lowerBound < hi {
            lo = min(lo, ahead[j].range.lowerBound)
            hi = max(hi, ahead[j].range.upperBound)
            if let b = ahead[j].bytes { recycle(b) }
            aheadBytes -= Int64(ahead[j].range.count)
            j += 1
        }
        aheadBytes += hi - lo
        let fits = heldBytes + data.count <= RunningChecksum.maxHeld
        if j == i, i > 0, ahead[i - 1].range.upperBound == lo {
            // Right after the entry before: extend it.
            // (Counted, not bound to a local: a second reference would make the append copy the buffer.)
            let heldCount = ahead[i - 1].bytes?.count
            if heldCount == nil || (fits && heldCount! + data.count <= RunningChecksum.maxEntryBytes) {
                if heldCount != nil {
                    ahead[i - 1].bytes!.append(contentsOf: data)
                    heldBytes += data.count
                }
                ahead[i - 1].range = ahead[i - 1].range.lowerBound..<hi
                return
            }
        }
        let bytes: [UInt8]?
        if j == i && fits {
            var b = spare.popLast() ?? []
            b.removeAll(keepingCapacity: true)
            b.reserveCapacity(RunningChecksum.maxEntryBytes)
            b.append(contentsOf: data)
            bytes = b
            heldBytes += data.count
        } else {
            bytes = nil
        }
        ahead.replaceSubrange(i..<j, with: [(lo..<hi, bytes)])
    }

    /// Drops held bytes from the count, keeping the buffer for reuse (a few).
    private mutating func recycle(_ b: [UInt8]) {
        heldBytes -= b.count
        if spare.isEmpty { spare.append(b) }
    }

    private mutating func hashFile(_ fd: Int32, _ r: Range<Int64>) -> Bool {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buf.deallocate() }
        var off = r.lowerBound
        while off < r.upperBound {
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buf[0..<min(buf.count, Int(r.upperBound - off))])
            guard (try? FileDescriptor(rawValue: fd).readAll(fromAbsoluteOffset: off, into: chunk)) == chunk.count else { return false }
            hash(UnsafeRawBufferPointer(chunk))
            off += Int64(chunk.count)
        }
        readBack += r.upperBound - r.lowerBound
        return true
    }
}
