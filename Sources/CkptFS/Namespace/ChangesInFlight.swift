// What this mount changed in S3 while a request that reads S3 (LIST, HEAD) was in flight.
//
// A LIST or HEAD answers for the moment S3 served it, but the mount reads the answer later, against its local
// state of that later moment. In between, a change of this mount's own may have landed in the background and
// the local state that stood for it may have gone: a queued delete applied (its key no longer hidden), an
// upload landed (its local version dropped), a directory made or a name renamed. Read naively, the answer
// then shows a deleted name again, or misses a file just uploaded, and a listing kept for lookups repeats that
// until its TTL passes. So every such request is bracketed (`begin`, `end`), every change is recorded before
// the local state that stood for it goes (`record`), and the request's answer is corrected with the changes
// recorded since it began (`Seen`). Entries are kept only while a request that began before them is in flight.
//
// A pure value, kept by the namespace under a lock of its own that takes no other (the write-back records
// under its own locks).
import Foundation

/// What S3 holds for a key after one of this mount's changes: a file key, or a directory prefix ending in "/"
/// (absent: the directory and everything under it was deleted; present: made).
enum KeyChange: Sendable {
    case present(Meta)
    case absent
    /// Changed in a way not known here (the target of a rename): an answer from before is out of date.
    case changed
}

struct ChangesInFlight: Sendable {
    struct Ticket: Sendable {
        fileprivate let id: UInt64
    }

    private var seq: UInt64 = 0
    private var nextTicket: UInt64 = 0
    /// Requests in flight: ticket id → `seq` when they began.
    private var began: [UInt64: UInt64] = [:]
    /// Changes recorded while a request was in flight, oldest first.
    private var log: [(seq: UInt64, key: String, change: KeyChange)] = []

    /// A request to S3 begins: what it answers is corrected with the changes recorded from now on.
    mutating func begin() -> Ticket {
        nextTicket += 1
        began[nextTicket] = seq
        return Ticket(id: nextTicket)
    }

    /// S3 now holds `change` for `key`, by this mount's doing. Call it before the local state that stood for
    /// the change goes (the hide of a delete, the local version of an upload).
    mutating func record(_ key: String, _ change: KeyChange) {
        seq += 1
        guard !began.isEmpty else { return }  // no request can have missed it
        log.append((seq, key, change))
    }

    /// The request of `ticket` was answered: the changes recorded since it began, newest per key.
    mutating func end(_ ticket: Ticket) -> Seen {
        guard let from = began.removeValue(forKey: ticket.id) else { return Seen() }
        var seen = Seen()
        for e in log where e.seq > from { seen.changes[e.key] = (e.seq, e.change) }
        // Entries every request in flight began after are of no use any more.
        let oldest = began.values.min() ?? seq
        if let keep = log.firstIndex(where: { $0.seq > oldest }) { log.removeFirst(keep) } else { log.removeAll() }
        return seen
    }

    /// Counts every change recorded: unchanged between two reads, nothing was recorded in between.
    var current: UInt64 { seq }

    /// Entries kept (for tests: they go once no request that began before them is in flight).
    var logged: Int { log.count }

    /// The changes one request missed, by key (newest per key, with its order).
    struct Seen: Sendable {
        fileprivate(set) var changes = BytesDictionary<(seq: UInt64, change: KeyChange)>()

        var isEmpty: Bool { changes.isEmpty }

        /// What S3 now holds for `key` (a file key, or a directory prefix ending in "/"), if it changed: a key
        /// under a directory deleted later than the key's own change is absent.
        func change(of key: String) -> KeyChange? {
            var latest = changes[key]
            for p in key.keyPrefixes() where !p.sameBytes(key) {
                if let c = changes[p], case .absent = c.change, c.seq > (latest?.seq ?? 0) { latest = c }
            }
            // A directory made again, or a file that landed under it, after it was deleted (or with no change of
            // its own).
            if key.endsWithSlash, latest.map({ if case .absent = $0.change { true } else { false } }) ?? true,
               changes.contains(where: { e in
                   guard e.key.hasKeyPrefix(key), !e.key.sameBytes(key), e.value.seq > (latest?.seq ?? 0),
                         case .present = e.value.change else { return false }
                   return true
               }) {
                return .present(Meta(isDirectory: true, size: 0, etag: "", mtime: Date()))
            }
            return latest?.change
        }

        /// The entries directly under `dirKey` (a prefix ending in "/", or "" for the top) that changed: a file's
        /// name, or a directory's name with "/" (a directory is present when something under it is).
        func children(of dirKey: String) -> BytesDictionary<KeyChange> {
            var out = BytesDictionary<KeyChange>()
            for key in changes.keys where key.hasKeyPrefix(dirKey) && !key.sameBytes(dirKey) {
                let child = key.keySuffix(after: dirKey).firstKeySegment
                if out[child] == nil, let c = change(of: dirKey + child) { out[child] = c }
            }
            return out
        }
    }
}
