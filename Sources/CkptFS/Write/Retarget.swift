// Moving a local file to a new key (rename): its handles follow it, and every version not settled goes to the new
// key, journaled again under it.
import CkptS3
import Foundation

extension WriteBack {
    /// What moving a local file's versions to a new key needs: journal records, versions to queue again.
    struct Retarget {
        var records: [JournalRecord] = []
        var requeue: [StagedVersion] = []
        /// A version was stopped by a conflict under the old name: the object there is someone else's and stays.
        var keepsSource = false
    }

    /// Moves local file `f` from `src` to `dst`: handles follow it, and every version not settled goes to the
    /// new key. A version waiting or uploaded (still held: the file is open) is queued again under the new key; one
    /// uploading is queued again by its uploader when it lands. The destination is replaced whatever it holds
    /// (POSIX rename): uploads to it carry no condition. The caller journals the records before queueing.
    func retarget(_ f: LocalFile, from src: String, to dst: String) -> Retarget {
        var out = Retarget()
        let vs = versions(of: src, newest: f.current)
        // The file, and its versions' keys and states, move under the local files' lock: an upload that lands
        // meanwhile (`finishUpload`) sees either the version before the move or after it, never between (it
        // would take a version queued again under the new name for a finished one and remove its staged file).
        var moved: [(StagedVersion, Bool, String?)] = []
        localFiles.byKey.withLock { l in
            if l[src] === f { l.removeValue(forKey: src) }
            l[dst] = f
            f.state.withLock { $0.key = dst }
            for v in vs {
                let (requeue, sum) = v.state.withLock { s -> (Bool, String?) in
                    s.key = dst
                    s.expect = .anything
                    var requeue = false
                    switch s.upload {
                    case .waiting: requeue = s.sealed
                    case .uploading: break
                    case .done:
                        s.upload = .waiting
                        requeue = true
                    case .conflict:
                        s.upload = .waiting
                        s.lastError = nil
                        requeue = true
                        out.keepsSource = true
                    case .superseded, .dropped: break
                    }
                    return (requeue, !s.unjournaled ? s.committedSum : nil)
                }
                moved.append((v, requeue, sum))
            }
        }
        for (v, requeue, sum) in moved {
            abandonEarlyUpload(v, because: "renamed")  // its parts went to the old name
            if requeue { out.requeue.append(v) }
            if let sum { out.records.append(commitRecord(v, checksum: sum)) }
        }
        return out
    }
}
