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
//
// The same pass computes the CRC32C of each multipart part (their `x-amz-checksum-crc32c`, `partChecksum`), so an
// upload over plain http need not read each part from the staged file once more to checksum it.
import CkptCache
import CkptDigest
import CkptSystem
import Foundation
import Synchronization
import SystemPackage

/// Bytes that running checksums may hold in memory, over all the files being written at once: each file's share
/// is at most `RunningChecksum.maxHeld`, and all of them together at most `limit`. Past it, writes past a gap
/// wait as ranges and are read back from their file.
final class HeldBudget: Sendable {
    let limit: Int
    private let used = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    /// No bound over files (unit tests of one sum, and versions recovered from the journal, which are not written).
    static let unbounded = HeldBudget(limit: .max)

    /// Bytes held now, over all files.
    var inUse: Int { used.load(ordering: .relaxed) }

    /// Takes `n` bytes if they fit under `limit`.
    func take(_ n: Int) -> Bool {
        var now = used.load(ordering: .relaxed)
        while true {
            guard n <= limit - now else { return false }
            let (exchanged, original) = used.compareExchange(expected: now, desired: now + n, ordering: .relaxed)
            if exchanged { return true }
            now = original
        }
    }

    func give(_ n: Int) { used.wrappingSubtract(n, ordering: .relaxed) }
}

/// One sum's share of a `HeldBudget`: given back whole when the sum goes (a version dropped or emptied while
/// bytes waited past a gap).
private final class HeldShare: Sendable {
    let budget: HeldBudget
    private let bytes = Atomic<Int>(0)

    init(_ budget: HeldBudget) { self.budget = budget }

    func take(_ n: Int) -> Bool {
        guard budget.take(n) else { return false }
        bytes.wrappingAdd(n, ordering: .relaxed)
        return true
    }

    func give(_ n: Int) {
        bytes.wrappingSubtract(n, ordering: .relaxed)
        budget.give(n)
    }

    deinit { budget.give(bytes.load(ordering: .relaxed)) }
}

struct RunningChecksum: Sendable {
    private var hasher = XXH64()
    /// This sum's share of the bytes all sums may hold.
    private let share: HeldShare
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
    /// Buffers of held bytes already hashed, reused for the next ones (at most 1, of `maxEntryBytes`; it still
    /// counts against the budget, as its pages stay resident): the
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
    /// Most bytes one waiting entry holds (adjacent writes are appended to it up to this). Each entry's buffer
    /// is this large from the start (so appends never move it), and counts whole against the budget.
    static let maxEntryBytes = 1 << 20
    /// How much all files being written hold past their gaps together (the mount's `HeldBudget`), counting
    /// the buffers' full size: 16 writers at `maxHeld` each would hold 128 MiB, and CI's load test saw the
    /// daemon at 262 and 270 MiB RSS with 25 files' 4 MiB buffers live (bench/load.py's bound is 256 MiB).
    static let maxHeldTotal = 32 << 20

    /// The part layout whose CRC32Cs this sum computes (`WriteBack.partRanges(minimum:)`), or nil for none.
    let partSize: Int64?
    /// Parts whose CRC32C is complete, by their first byte: their end and CRC32C.
    private var finishedParts: [Int64: (end: Int64, crc: UInt32)] = [:]
    /// The part being hashed: its first byte, and the CRC32C of its bytes up to `crcTo`.
    private var partStart: Int64 = 0
    private var partCRC = CRC32C()
    private var crcTo: Int64 = 0

    /// A sum of nothing yet, holding bytes past gaps within `budget`, computing the CRC32C of every part of
    /// `partSize`'s layout too (nil: none).
    init(budget: HeldBudget = .unbounded, partSize: Int64? = nil) {
        share = HeldShare(budget)
        self.partSize = partSize
    }

    /// The budget this sum's held bytes count against (a sum started again uses the same).
    var budget: HeldBudget { share.budget }

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
        if let partSize { addToParts(bytes, minimum: partSize) }
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

    /// Adds `bytes` (the next after `crcTo`) to the CRC32C of the parts they fall in.
    private mutating func addToParts(_ bytes: UnsafeRawBufferPointer, minimum: Int64) {
        var rest = bytes
        while !rest.isEmpty {
            let end = WriteBack.partEnd(start: partStart, minimum: minimum)
            let n = Int(min(Int64(rest.count), end - crcTo))
            partCRC.update(UnsafeRawBufferPointer(rebasing: rest[..<n]))
            crcTo += Int64(n)
            if crcTo == end {
                finishedParts[partStart] = (end, partCRC.value)
                partCRC = CRC32C()
                partStart = end
            }
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
        }
    }

    /// The CRC32C of bytes `range`, if they are a part of `partSize`'s layout (or the end of the file in the
    /// part being hashed) that this sum hashed whole. Bytes hashed are final as long as the sum goes on (a
    /// write below what it hashed ends it), so the checksum is the file's.
    func partChecksum(_ range: Range<Int64>) -> UInt32? {
        if let p = finishedParts[range.lowerBound] { return p.end == range.upperBound ? p.crc : nil }
        return range.lowerBound == partStart && range.upperBound == crcTo ? partCRC.value : nil
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
        // Whether this file's share has room; the budget over all files is asked only when bytes are kept.
        let fits = heldBytes + data.count <= RunningChecksum.maxHeld
        if j == i, i > 0, ahead[i - 1].range.upperBound == lo {
            // Right after the entry before: extend it.
            // (Counted, not bound to a local: a second reference would make the append copy the buffer.)
            let heldCount = ahead[i - 1].bytes?.count
            if heldCount == nil
                || (fits && heldCount! + data.count <= RunningChecksum.maxEntryBytes) {
                if heldCount != nil {
                    ahead[i - 1].bytes!.append(contentsOf: data)
                    heldBytes += data.count
                }
                ahead[i - 1].range = ahead[i - 1].range.lowerBound..<hi
                return
            }
        }
        let bytes: [UInt8]?
        if j == i && fits, var b = buffer(for: data.count) {
            b.append(contentsOf: data)
            bytes = b
            heldBytes += data.count
        } else {
            bytes = nil
        }
        ahead.replaceSubrange(i..<j, with: [(lo..<hi, bytes)])
    }

    /// An empty buffer for an entry whose first write has `count` bytes: the spare, or a new one if the budget
    /// has room for it (nil: hold the range only).
    private mutating func buffer(for count: Int) -> [UInt8]? {
        if count <= RunningChecksum.maxEntryBytes, var b = spare.popLast() {
            b.removeAll(keepingCapacity: true)
            return b
        }
        let size = RunningChecksum.counted(count)
        guard share.take(size) else { return nil }
        var b: [UInt8] = []
        b.reserveCapacity(size)
        return b
    }

    /// What a buffer whose first write had `count` bytes counts against the budget (entries grow only up to
    /// `maxEntryBytes`, so one that holds more took it all at once).
    private static func counted(_ count: Int) -> Int { max(count, maxEntryBytes) }

    /// Frees the buffer kept for reuse (the file was closed or synced: writes past a gap are over for now).
    /// A file waiting for its upload would otherwise hold one it no longer needs: 16 writers' closed files
    /// held 25 of them in bench/load.py.
    mutating func dropSpare() {
        for b in spare { share.give(RunningChecksum.counted(b.count)) }
        spare = []
    }

    /// Drops held bytes from the count, keeping the buffer for reuse (one, of `maxEntryBytes`) or giving its
    /// size back to the budget.
    private mutating func recycle(_ b: [UInt8]) {
        heldBytes -= b.count
        if spare.isEmpty && b.count <= RunningChecksum.maxEntryBytes {
            spare.append(b)
        } else {
            share.give(RunningChecksum.counted(b.count))
        }
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
