// Telling the kernel what stopped being true of its caches: the core's `KernelCaches`, sent with libfuse's
// notify calls (fuse_lowlevel.h).
import CFuse
import CkptFS
import Dispatch
import Glibc
import Synchronization

/// Sends the core's notices to the kernel, one at a time, from a queue of its own. The kernel takes the
/// directory's lock to drop an entry, which a request of that directory being answered may hold: so neither a
/// FUSE worker nor a task of the core ever waits for a notice to be applied.
final class KernelNotifier: KernelCaches {
    private let session = Mutex<UnsafeSendable<OpaquePointer>?>(nil)
    private let queue = DispatchQueue(label: "ckptfs.kernel-notices")

    /// From now on notices go to session `se`.
    func attach(_ se: OpaquePointer) { session.withLock { $0 = UnsafeSendable(se) } }

    /// No notice goes to the session any more; returns once none is being sent (before the session is destroyed).
    func detach() {
        session.withLock { $0 = nil }
        queue.sync {}
    }

    func entryReplaced(parent: UInt64, name: String, ino: UInt64) {
        queue.async { [self] in
            guard let se = session.withLock({ $0 })?.value else { return }
            // ENOENT: the kernel holds no such entry or inode (forgotten already); nothing to drop.
            _ = name.withCString { fuse_lowlevel_notify_inval_entry(se, fuse_ino_t(parent), $0, strlen($0)) }
            _ = fuse_lowlevel_notify_inval_inode(se, fuse_ino_t(ino), 0, 0)  // its pages; 0, 0: all of them
        }
    }
}
