// Read-ahead as a pure planner: given where one handle's reads have been, decide whether a read continues a
// stream and which blocks to fetch ahead of it. No I/O, no locks: the handle keeps one `ReadAhead` under its
// own lock and the object reader acts on the plan.
import Foundation

/// One handle's stream detection and read-ahead window (all offsets in bytes, blocks as indexes).
struct ReadAhead: Sendable, Equatable {
    /// The furthest end of the reads that formed the current stream (-1: none yet).
    var lastEnd: Int64 = -1
    /// How many reads in a row continued the stream.
    var streak = 0
    /// The read-ahead window in bytes (0: closed).
    var window: Int64 = 0
    /// Blocks below this index were already considered for prefetch.
    var prefetchedTo: Int64 = 0

    /// What a read should do besides fetching its own blocks.
    struct Plan: Sendable, Equatable {
        /// The read continues a stream: a miss fetches a whole request, not one block.
        var sequential: Bool
        /// Blocks to fetch ahead of the reader, in whole requests (nil: none now).
        var prefetch: Range<Int64>?
    }

    /// Sizes the planner works with.
    struct Limits: Sendable {
        var blockSize: Int64
        /// One ranged GET (FSOptions.requestSize).
        var requestSize: Int64
        /// The largest window (FSOptions.maxReadAhead).
        var maxReadAhead: Int64
    }

    /// Updates the stream state for a read of [offset, end) of a `fileSize`-byte object and returns its plan.
    ///
    /// The kernel sends a sequential reader's reads several at a time and not always in order, so a read counts
    /// as sequential when it is large (≥ 64 KiB, or reaches the end of the file) and lands within 16 MiB of the
    /// furthest point reached, or when it starts exactly where the last one ended (small reads of a direct-I/O
    /// handle reach us as the program makes them). Two such reads in a row open the window at `requestSize`;
    /// each further one doubles it up to `maxReadAhead`. A read elsewhere closes it, so random readers fetch only
    /// what they touch. Prefetch is issued in whole requests only (or up to the end of the file), so the
    /// window's steady advance does not turn into one small GET per read.
    mutating func plan(offset: Int64, end: Int64, fileSize: Int64, _ l: Limits) -> Plan {
        let band: Int64 = 16 << 20
        let bs = l.blockSize
        let large = end - offset >= 64 << 10 || end == fileSize
        let near = offset == lastEnd || (large && lastEnd >= 0 && offset >= lastEnd - band && offset <= lastEnd + band)
        lastEnd = near ? max(lastEnd, end) : end
        streak = near ? streak + 1 : 0
        guard streak >= 2 else {
            window = 0
            prefetchedTo = 0
            return Plan(sequential: streak >= 1, prefetch: nil)
        }
        window = window == 0 ? l.requestSize : min(l.maxReadAhead, window * 2)
        let from = max((lastEnd + bs - 1) / bs, prefetchedTo)
        let fileBlocks = (fileSize + bs - 1) / bs
        let to = min((end + window + bs - 1) / bs, fileBlocks)
        let per = max(1, l.requestSize / bs)
        guard from < to, to - from >= per || to == fileBlocks else { return Plan(sequential: true, prefetch: nil) }
        let upTo = to == fileBlocks ? to : from + (to - from) / per * per
        prefetchedTo = upTo
        return Plan(sequential: true, prefetch: from..<upTo)
    }
}
