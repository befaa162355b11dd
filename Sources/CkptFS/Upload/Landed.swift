// After an upload: the version settles, the file may become clean, and the namespace shows what landed.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    /// After a version settles (landed, superseded, dropped): it leaves the queue. Its staged copy goes unless
    /// it is the current version of its file: that one stays while the file is open (a rename may need it
    /// again), and once nobody has the file open a landed one makes it clean (`cleanIfUploaded`); or the
    /// current version of an orphan (unlinked while open), which its handles still read and whose last close
    /// removes it.
    func finishUpload(_ v: StagedVersion) {
        abandonEarlyUpload(v, because: "superseded")  // superseded or dropped before its parts were used
        // A version a rename queued again (under its new name) after it landed is not finished: its new job
        // uploads it, and flush waits for it.
        changes.state.withLock { u in if v.isSettled { _ = u.pending.removeValue(forKey: v.id) } }
        closeUploadJobs()
        staging.wakeWaiters()  // writers held back by the dirty bound check whether uploads still pend
        let key = v.key
        let (remove, file) = localFiles.byKey.withLock { l -> (Bool, LocalFile?) in
            // Under this lock a rename has moved the version completely or not at all (retarget).
            guard v.isSettled, v.key.sameBytes(key) else { return (false, nil) }
            guard let f = l[key], f.state.withLock({ $0.current === v }) else { return (!v.state.withLock { $0.orphaned }, nil) }
            return (false, f)
        }
        if remove { staging.remove(v) }
        if let file { cleanIfUploaded(file) }
    }
}
