// A file with local changes, and the handles open on it.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

/// A file with local changes, from its first local version until it is clean again (uploaded, and no handle
/// open). It follows renames (its handles write to it whatever its name now is) and outlives an unlink while
/// open: it is then an orphan, read and written through its handles, never journaled or uploaded, and gone at
/// its last close, as POSIX says of an unlinked open file.
final class LocalFile: Sendable {
    struct State: Sendable {
        var key: String
        var current: StagedVersion
        /// Open handles, and those of them open for writing.
        var handles = 0
        var writers = 0
        var unlinked = false
    }
    let state: Mutex<State>

    init(key: String, current: StagedVersion) { state = Mutex(State(key: key, current: current)) }

    var current: StagedVersion { state.withLock { $0.current } }
    var key: String { state.withLock { $0.key } }
    var unlinked: Bool { state.withLock { $0.unlinked } }
}

/// An open handle on a file that has a local version (written, or being uploaded).
final class LocalHandle: Sendable {
    let ino: UInt64
    let file: LocalFile
    let writable: Bool
    /// The key the handle writes: it follows renames (the kernel may write back cached pages after one).
    var key: String { file.key }

    init(ino: UInt64, file: LocalFile, writable: Bool) {
        self.ino = ino
        self.file = file
        self.writable = writable
    }
}
