// After an upload: the version settles, the file may become clean, and the namespace shows what landed.
import CkptCache
import CkptDigest
import CkptS3
import Foundation
import Synchronization

extension WriteBack {
    /// After a version settles (landed, superseded, dropped): it leaves the queue. Its staged copy goes unless
    /// it is the current version of a file still open (a rename may need it again; the last close cleans up).
    /// A landed current version of a file nobody has open makes the file clean: stat shows the object.
    func finishUpload(_ v: StagedVersion, etag: String? = nil) {
        abandonEarlyUpload(v, because: "superseded")  // superseded or dropped before its parts were used
        // A version a rename queued again (under its new name) after it landed is not finished: its new job
        // uploads it, and flush waits for it.
        changes.state.withLock { u in if v.isSettled { _ = u.pending.removeValue(forKey: v.id) } }
        closeUploadJobs()
        staging.wakeWaiters()  // writers held back by the dirty bound check whether uploads still pend
        let key = v.key
        let (size, mtime) = v.state.withLock { ($0.size, $0.mtime) }
        enum After { case remove, keep, clean }
        let after = localFiles.byKey.withLock { l -> After in
            // Under this lock a rename has moved the version completely or not at all (retarget).
            guard v.isSettled, v.key == key else { return .keep }
            guard let f = l[key] else { return .remove }
            return f.state.withLock { s -> After in
                guard s.current === v else { return .remove }
                guard etag != nil else { return .keep }
                if s.handles > 0 { return .keep }
                l.removeValue(forKey: key)
                return .clean
            }
        }
        if after != .keep { staging.remove(v) }
        guard after == .clean, let etag else { return }
        showUploaded(key: key, meta: Meta(isDirectory: false, size: size, etag: etag, mtime: mtime))
    }

    /// The attributes of `key` are those of the object just uploaded.
    func showUploaded(key: String, meta: Meta) {
        notices.objectLanded(key: key, meta: meta)
    }
}
