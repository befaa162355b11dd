// What the namespace does when this mount itself puts an earlier version of an object back (ckptfs restore):
// the path shows the restored version at once, as when another writer replaced the object.
import Foundation

extension Namespace {
    /// S3 now holds `meta` under `key`, put there by this mount without a local file (a restore). Paths showing
    /// the object get a new inode with it (the old one is superseded: its opens fail with ESTALE, so the kernel
    /// looks the path up again); a name missing until now (a restore of a deleted file) is no longer known
    /// missing, and the listings of its directory are dropped.
    func objectRestored(key: String, meta: Meta) {
        changedInS3(key: key, .present(meta))
        let shown = table.withLock { t -> [(UInt64, Node)] in
            let (dirKey, name) = InodeTable.split(key)
            for p in t.inos(forKey: dirKey) {
                t.listings.removeValue(forKey: p)
                t.clearMissing(parent: p, name: name)
            }
            return t.inos(forKey: key).compactMap { i in t[i].map { (i, $0) } }.filter { !$0.1.meta.isDirectory && !$0.1.superseded }
        }
        for (ino, n) in shown { replaced(ino, n, by: meta) }
    }
}
