// The FUSE adapter: libfuse's low-level API on one side, the filesystem core on the other.
//
// Every operation is "copy the arguments, call the core, reply": the callbacks are capture-free C
// function pointers that recover the adapter from fuse_req_userdata, copy what libfuse only lends for the
// duration of the call (names, fuse_file_info), and start a Task that awaits the core and sends exactly
// one reply. No FUSE worker thread waits for S3, and no Swift task blocks in libfuse.
// Cached data is replied with fd-backed buffers (fuse_reply_data), so warm reads are not copied through
// this process. This is the only module that touches libfuse.
import CFuse
import CkptFS
import CkptSystem
import Foundation
import Logging
import Synchronization

public final class FuseAdapter: Sendable {
    public let fs: FileSystem
    let logger: Logger
    /// How long the kernel may cache attributes and entries (the metadata TTL; a day when immutable).
    let timeout: Double
    /// Handles open for writing, and whether changes are still accepted (not after the drain at unmount).
    public let gate = WriteGate()
    /// What the core says stopped being true of the kernel's caches goes to the kernel through this.
    let notifier = KernelNotifier()

    public init(fs: FileSystem, logger: Logger) {
        self.fs = fs
        self.logger = logger
        fs.tell(notifier)
        let ttl = fs.options.metadataTTL.components
        // An immutable bucket's entries and attributes stay true: the kernel may keep them for a day.
        self.timeout = fs.options.immutable ? 86_400 : Double(ttl.seconds) + Double(ttl.attoseconds) / 1e18
    }

    static func adapter(_ req: fuse_req_t?) -> FuseAdapter {
        Unmanaged<FuseAdapter>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    func stat(_ a: Attributes) -> stat {
        var st = Glibc.stat()
        st.st_ino = ino_t(a.ino)
        st.st_mode = (a.isDirectory ? S_IFDIR : S_IFREG) | mode_t(a.permissions)
        st.st_nlink = nlink_t(a.nlink)
        st.st_uid = a.uid
        st.st_gid = a.gid
        st.st_size = off_t(a.size)
        st.st_blksize = 1 << 20
        st.st_blocks = blkcnt_t((a.size + 511) / 512)
        let t = a.mtime.timeIntervalSince1970
        let ts = timespec(tv_sec: Int(t.rounded(.down)), tv_nsec: Int((t - t.rounded(.down)) * 1e9))
        st.st_mtim = ts
        st.st_ctim = ts
        st.st_atim = ts
        return st
    }

    func entry(_ attr: Attributes) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = fuse_ino_t(attr.ino)
        e.generation = 1
        e.attr = stat(attr)
        e.attr_timeout = timeout
        e.entry_timeout = timeout
        return e
    }

    /// Answers readdir (names and types) or readdirplus (with attributes, so `ls -l` needs no lookup per
    /// entry afterwards; each entry given with attributes is a lookup reference, taken only once it fits).
    /// `request`: the request the entries are sized for (libfuse needs one; any request of the session does for
    /// plain readdir, whose sizes do not depend on it); `send` answers it.
    func replyDirectory(handle h: UInt64, size: Int, offset off: off_t, plus: Bool, request: fuse_req_t? = nil,
                        send: ((fuse_req_t?) -> Int32) -> Int32?) async throws(FSError) {
        var reply = DirectoryBuffer(adapter: self, req: UnsafeSendable(request), size: size, plus: plus)
        try await fs.readdir(handle: h, offset: Int64(off), limit: max(16, size / (plus ? 64 : 32)), into: &reply)
        _ = send { req in reply.buffer.withUnsafeBufferPointer { fuse_reply_buf(req, $0.baseAddress, reply.used) } }
    }

    /// One readdir reply being filled: libfuse's packed dirent (or direntplus) records in a buffer of the size
    /// the kernel asked for.
    struct DirectoryBuffer: DirectoryReplier {
        let adapter: FuseAdapter
        let req: UnsafeSendable<fuse_req_t?>
        let size: Int
        let plus: Bool
        var buffer: [CChar]
        var used = 0

        init(adapter: FuseAdapter, req: UnsafeSendable<fuse_req_t?>, size: Int, plus: Bool) {
            self.adapter = adapter
            self.req = req
            self.size = size
            self.plus = plus
            buffer = [CChar](repeating: 0, count: size)
        }

        func fits(_ name: String) -> Bool {
            let need = plus ? fuse_add_direntry_plus(req.value, nil, 0, name, nil, 0) : fuse_add_direntry(req.value, nil, 0, name, nil, 0)
            return used + need <= size
        }

        mutating func add(name: String, ino: UInt64, isDirectory: Bool, attributes: Attributes?, nextOffset: Int64) {
            var p = fuse_entry_param()
            if let attributes {
                p = adapter.entry(attributes)
            } else {
                p.attr.st_ino = ino_t(ino)
                p.attr.st_mode = isDirectory ? S_IFDIR : S_IFREG
            }
            let (req, size, used, plus) = (req.value, size, used, plus)
            self.used += buffer.withUnsafeMutableBufferPointer { b in
                plus ? fuse_add_direntry_plus(req, b.baseAddress! + used, size - used, name, &p, off_t(nextOffset))
                    : fuse_add_direntry(req, b.baseAddress! + used, size - used, name, &p.attr, off_t(nextOffset))
            }
        }
    }

    func replyError(_ req: fuse_req_t?, _ e: FSError, _ op: String) {
        // An open answering ESTALE asks the kernel to look the name up again (the inode it looked up stopped
        // naming the file: a save by rename replaced it meanwhile); the caller sees nothing of it. Logged as an
        // error, a loop of saves by rename racing opens of the name wrote about 50 lines a second.
        let retried = e.errno == ESTALE && op == "open"
        if !retried && (e.errno == EIO || e.errno == ESTALE || e.errno == EACCES) {
            logger.error("operation failed", metadata: ["fuse.op": "\(op)", "fuse.error": "\(e)"])
        } else {
            logger.debug("operation failed", metadata: ["fuse.op": "\(op)", "fuse.error": "\(e)"])
        }
        fuse_reply_err(req, e.errno)
    }

    /// The process (thread group) whose thread sent `req`, or 0 when that cannot be told: the kernel gives the
    /// calling thread's id (in the daemon's pid namespace; 0 from outside it).
    static func process(_ req: fuse_req_t?) -> pid_t {
        guard let tid = fuse_req_ctx(req)?.pointee.pid, tid > 0 else { return 0 }
        return threadGroup(ofThread: tid)
    }

    /// Replies EROFS and returns true once the mount stopped accepting changes (the drain before an unmount
    /// is over): a change made then is refused, never acknowledged and left behind.
    static func refused(_ req: fuse_req_t?) -> Bool {
        guard !adapter(req).gate.acceptsChanges else { return false }
        fuse_reply_err(req, EROFS)
        return true
    }

    /// The name the kernel passed, or nil after replying `errno` when its bytes are not UTF-8: no S3 key holds
    /// such a name (S-NAME-LIMITS), and `String(cString:)` would replace them with U+FFFD, so that `a\xff` and
    /// `a\xfe` became one key and a save under one replaced the other. A lookup answers ENOENT (nothing can
    /// exist under it), a change EINVAL.
    static func utf8Name(_ req: fuse_req_t?, _ name: UnsafePointer<CChar>?, else errno: Int32 = EINVAL) -> String? {
        if let n = String(validatingCString: name!) { return n }
        fuse_reply_err(req, errno)
        return nil
    }

    /// Does `first`, then answers `req` with `ino`'s attributes on this thread if they need no HEAD. True when it
    /// replied (the attributes, or the error `first` or the lookup threw); false when a task must fetch them.
    func answerAttributesNow(_ req: fuse_req_t?, ino: UInt64, op: String,
                             first: () throws(FSError) -> Void = {}) -> Bool {
        do throws(FSError) {
            try first()
            guard let attr = try fs.getattrNow(ino: ino) else { return false }
            var st = stat(attr)
            fuse_reply_attr(req, &st, timeout)
        } catch {
            replyError(req, error, op)
        }
        return true
    }

    /// Runs `body` in a Task and replies with its error if it throws (a successful body replies itself).
    static func async(_ req: fuse_req_t?, _ op: String,
                      _ body: @escaping @Sendable (FuseAdapter, UnsafeSendable<fuse_req_t?>) async throws(FSError) -> Void) {
        let a = FuseAdapter.adapter(req)
        let r = UnsafeSendable(req)
        Task {
            do throws(FSError) { try await body(a, r) } catch { a.replyError(r.value, error, op) }
        }
    }

    /// Runs `body` in a Task and answers EINTR as soon as the kernel interrupts the request (FUSE INTERRUPT: the
    /// caller got a signal), else what the body answers through its `InterruptibleReply` (`send`), else 0 when
    /// it returns, or its errno when it throws. Once a request is with the daemon, the kernel makes even SIGKILL
    /// wait for its reply: without this a process waiting in fsync() (or a lookup, stat, open or read) while S3
    /// does not answer could not be killed. The body runs, and goes on, also after an interrupt (an upload is
    /// not cancelled; what it acknowledges stays acknowledged); only the answer is given early. For operations
    /// that change nothing, or whose change the caller asked to wait for (fsync, flush): a rename or unlink
    /// answered EINTR and done all the same would mislead the caller.
    static func interruptible(_ req: fuse_req_t?, _ op: String,
                              _ body: @escaping @Sendable (FuseAdapter, InterruptibleReply) async throws(FSError) -> Void) {
        let a = FuseAdapter.adapter(req)
        let reply = InterruptibleReply(req)
        let context = UnsafeSendable(Unmanaged.passRetained(reply).toOpaque())
        // While registering, libfuse may call the handler on this thread with the request's lock held, where a
        // reply would free the request under libfuse's feet: the handler then only notes it.
        reply.state.withLock { $0.registering = true }
        fuse_req_interrupt_func(req, { req, data in
            Unmanaged<InterruptibleReply>.fromOpaque(data!)._withUnsafeGuaranteedRef { reply in
                reply.state.withLock { s in
                    if s.registering {
                        s.interruptedWhileRegistering = true
                        return
                    }
                    guard !s.replied else { return }
                    s.replied = true
                    fuse_reply_err(req, EINTR)
                }
            }
        }, context.value)
        let early = reply.state.withLock { s -> Bool in
            s.registering = false
            return s.interruptedWhileRegistering
        }
        if early { _ = reply.send { fuse_reply_err($0, EINTR) } }
        Task {
            do throws(FSError) {
                try await body(a, reply)
                _ = reply.send { fuse_reply_err($0, 0) }
            } catch {
                _ = reply.send { req in
                    a.replyError(req, error, op)
                    return 0
                }
            }
            Unmanaged<InterruptibleReply>.fromOpaque(context.value).release()
        }
    }

    /// The operations table.
    public static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            ckpt_fuse_init_conn(conn, 16 << 20)
        }
        ops.lookup = { req, parent, name in
            guard let n = FuseAdapter.utf8Name(req, name, else: ENOENT) else { return }
            // Answered on this thread when it needs no request (a listing, a fresh node: most lookups of an
            // epoch); otherwise in a task.
            let a = FuseAdapter.adapter(req)
            do throws(FSError) {
                if let attr = try a.fs.lookupNow(parent: UInt64(parent), name: n) {
                    var e = a.entry(attr)
                    fuse_reply_entry(req, &e)
                    return
                }
            } catch {
                a.replyError(req, error, "lookup")
                return
            }
            FuseAdapter.interruptible(req, "lookup") { a, reply throws(FSError) in
                let attr = try await a.fs.lookup(parent: UInt64(parent), name: n)
                var e = a.entry(attr)
                // Not given to the kernel (interrupted): the reference the lookup took is given back.
                if reply.send({ fuse_reply_entry($0, &e) }) == nil { a.fs.forget(ino: attr.ino, count: 1) }
            }
        }
        ops.forget = { req, ino, nlookup in
            FuseAdapter.adapter(req).fs.forget(ino: UInt64(ino), count: UInt64(nlookup))
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, forgets in
            let a = FuseAdapter.adapter(req)
            for i in 0..<count {
                let f = forgets![i]
                a.fs.forget(ino: UInt64(f.ino), count: UInt64(f.nlookup))
            }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, _ in
            // Answered on this thread when it needs no HEAD (a file written here, a directory, a fresh node).
            if FuseAdapter.adapter(req).answerAttributesNow(req, ino: UInt64(ino), op: "getattr") { return }
            FuseAdapter.interruptible(req, "getattr") { a, reply throws(FSError) in
                var st = a.stat(try await a.fs.getattr(ino: UInt64(ino)))
                _ = reply.send { fuse_reply_attr($0, &st, a.timeout) }
            }
        }
        ops.open = { req, ino, fi in
            let flags = fi!.pointee.flags
            let write = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) != 0
            if write && FuseAdapter.refused(req) { return }
            let opener = write ? FuseAdapter.process(req) : 0
            if !write {
                // A read-only open of a clean file whose version is known is answered on this thread.
                let a = FuseAdapter.adapter(req)
                do throws(FSError) {
                    if let o = try a.fs.openNow(ino: UInt64(ino), flags: flags) {
                        var copy = fi!.pointee
                        ckpt_fuse_fi_set(&copy, o.handle, o.keepCache ? 1 : 0, o.directIO && ckpt_fuse_direct_io_mmap() == 1 ? 1 : 0)
                        if fuse_reply_open(req, &copy) != 0 { a.fs.release(handle: o.handle) }
                        return
                    }
                } catch {
                    a.replyError(req, error, "open")
                    return
                }
            }
            let boxed = UnsafeSendable(fi!.pointee)
            /// Opens and answers with the handle; a handle the kernel did not take is released.
            @Sendable func open(_ a: FuseAdapter, _ send: ((fuse_req_t?) -> Int32) -> Int32?) async throws(FSError) {
                let o = try await a.fs.open(ino: UInt64(ino), flags: flags)
                let h = o.handle
                var copy = boxed.value
                // direct_io for the cold reads the core asks it for, only where the kernel also lets such files
                // be mapped (mmap must keep working): the shim learned that at INIT.
                let direct = o.directIO && ckpt_fuse_direct_io_mmap() == 1
                ckpt_fuse_fi_set(&copy, h, o.keepCache ? 1 : 0, direct ? 1 : 0)
                if write { a.gate.opened(writer: h, by: opener) }
                if (send { fuse_reply_open($0, &copy) } ?? -1) != 0 {
                    a.gate.released(h)
                    a.fs.release(handle: h)
                }
            }
            if write {
                // A write open (perhaps truncating) is not answered EINTR while it goes on.
                FuseAdapter.async(req, "open") { a, r throws(FSError) in try await open(a) { $0(r.value) } }
            } else {
                FuseAdapter.interruptible(req, "open") { a, reply throws(FSError) in try await open(a) { reply.send($0) } }
            }
        }
        ops.create = { req, parent, name, _, fi in
            if FuseAdapter.refused(req) { return }
            guard let n = FuseAdapter.utf8Name(req, name) else { return }
            let flags = fi!.pointee.flags
            let opener = FuseAdapter.process(req)
            // On this thread: a create asks S3 nothing (the staged file is made on local disk).
            let a = FuseAdapter.adapter(req)
            do throws(FSError) {
                let (attr, h) = try a.fs.create(parent: UInt64(parent), name: n, flags: flags)
                var e = a.entry(attr)
                var copy = fi!.pointee
                ckpt_fuse_fi_set(&copy, h, 0, 0)
                a.gate.opened(writer: h, by: opener)
                if fuse_reply_create(req, &e, &copy) != 0 {
                    a.gate.released(h)
                    a.fs.release(handle: h)
                }
            } catch {
                a.replyError(req, error, "create")
            }
        }
        ops.write = { req, _, buf, size, off, fi in
            // Synchronous: the bytes go to local disk, and libfuse only lends `buf` for this call. Unless the
            // file was opened in place and the write covers part of a block still in S3 (`.later`): then the
            // core has copied the bytes and the write waits for that block in a Task.
            if FuseAdapter.refused(req) { return }
            let a = FuseAdapter.adapter(req)
            let h = fi!.pointee.fh
            do throws(FSError) {
                switch try a.fs.write(handle: h, offset: Int64(off), data: UnsafeRawBufferPointer(start: buf, count: size)) {
                case .done(let n):
                    fuse_reply_write(req, n)
                case .later(let rest):
                    FuseAdapter.async(req, "write") { _, r throws(FSError) in fuse_reply_write(r.value, try await rest.finish()) }
                }
            } catch {
                a.replyError(req, error, "write")
            }
        }
        ops.flush = { req, _, fi in
            // close(): returns once the data and its journal record are on local disk. After the drain, a
            // writer's close is refused: what it wrote since the drain ended is not acknowledged.
            // A close by another process than the opener (an inherited copy of the descriptor) acknowledges
            // nothing (WriteGate.closeAcknowledges).
            let a = FuseAdapter.adapter(req)
            let h = fi!.pointee.fh
            if a.gate.isWriter(h) && FuseAdapter.refused(req) { return }
            if a.gate.isWriter(h) && !a.gate.closeAcknowledges(h, by: FuseAdapter.process(req)) {
                fuse_reply_err(req, 0)
                return
            }
            do throws(FSError) {
                if try a.fs.flushNow(handle: h) {
                    fuse_reply_err(req, 0)
                    return
                }
            } catch {
                a.replyError(req, error, "flush")
                return
            }
            // A file changed in place: the blocks it did not rewrite come from S3 first (interruptible, as
            // fsync is: S3 may not answer for long).
            FuseAdapter.interruptible(req, "flush") { a, _ throws(FSError) in try await a.fs.flush(handle: h) }
        }
        ops.fsync = { req, _, _, fi in
            let h = fi!.pointee.fh
            if FuseAdapter.adapter(req).gate.isWriter(h) && FuseAdapter.refused(req) { return }
            FuseAdapter.interruptible(req, "fsync") { a, _ throws(FSError) in try await a.fs.fsync(handle: h) }
        }
        ops.setattr = { req, ino, attr, toSet, _ in
            if FuseAdapter.refused(req) { return }
            let st = attr!.pointee
            let size: Int64? = toSet & FUSE_SET_ATTR_SIZE != 0 ? Int64(st.st_size) : nil
            var mtime: Date?
            if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 {
                mtime = Date()
            } else if toSet & FUSE_SET_ATTR_MTIME != 0 {
                mtime = Date(timeIntervalSince1970: Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
            }
            let newMtime = mtime
            if size == nil {
                // Times only (the kernel's write-back of a file's times at close, utime): set on this thread,
                // and answered here too unless the attributes need a HEAD.
                let a = FuseAdapter.adapter(req)
                if a.answerAttributesNow(req, ino: UInt64(ino), op: "setattr", first: {
                    () throws(FSError) in try a.fs.setTimes(ino: UInt64(ino), mtime: newMtime)
                }) { return }
                FuseAdapter.async(req, "setattr") { a, r throws(FSError) in
                    var out = a.stat(try await a.fs.attributesAfterTimes(ino: UInt64(ino)))
                    fuse_reply_attr(r.value, &out, a.timeout)
                }
                return
            }
            FuseAdapter.async(req, "setattr") { a, r throws(FSError) in
                var out = a.stat(try await a.fs.setattr(ino: UInt64(ino), size: size, mtime: newMtime))
                fuse_reply_attr(r.value, &out, a.timeout)
            }
        }
        ops.mkdir = { req, parent, name, _ in
            if FuseAdapter.refused(req) { return }
            guard let n = FuseAdapter.utf8Name(req, name) else { return }
            FuseAdapter.async(req, "mkdir") { a, r throws(FSError) in
                var e = a.entry(try await a.fs.mkdir(parent: UInt64(parent), name: n))
                fuse_reply_entry(r.value, &e)
            }
        }
        ops.unlink = { req, parent, name in
            if FuseAdapter.refused(req) { return }
            guard let n = FuseAdapter.utf8Name(req, name) else { return }
            FuseAdapter.async(req, "unlink") { a, r throws(FSError) in
                try await a.fs.unlink(parent: UInt64(parent), name: n)
                fuse_reply_err(r.value, 0)
            }
        }
        ops.rmdir = { req, parent, name in
            if FuseAdapter.refused(req) { return }
            guard let n = FuseAdapter.utf8Name(req, name) else { return }
            FuseAdapter.async(req, "rmdir") { a, r throws(FSError) in
                try await a.fs.rmdir(parent: UInt64(parent), name: n)
                fuse_reply_err(r.value, 0)
            }
        }
        ops.read = { req, _, size, off, fi in
            // Answered on this thread when the bytes are at hand (no Task: most of a small read's cost).
            let a = FuseAdapter.adapter(req)
            do throws(FSError) {
                switch try a.fs.readNow(handle: fi!.pointee.fh, offset: Int64(off), size: size) {
                case .done(let segments):
                    a.reply(req, segments)
                case .later(let rest):
                    FuseAdapter.interruptible(req, "read") { a, reply throws(FSError) in
                        let segments = try await rest.segments()
                        _ = reply.send { req in
                            a.reply(req, segments)
                            return 0
                        }
                    }
                }
            } catch {
                a.replyError(req, error, "read")
            }
        }
        ops.release = { req, _, fi in
            let a = FuseAdapter.adapter(req)
            a.fs.release(handle: fi!.pointee.fh)
            a.gate.released(fi!.pointee.fh)
            fuse_reply_err(req, 0)
        }
        ops.opendir = { req, ino, fi in
            var info = fi!.pointee
            do throws(FSError) {
                let h = try FuseAdapter.adapter(req).fs.opendir(ino: UInt64(ino))
                ckpt_fuse_fi_set(&info, h, 0, 0)
                fuse_reply_open(req, &info)
            } catch {
                FuseAdapter.adapter(req).replyError(req, error, "opendir")
            }
        }
        ops.readdir = { req, _, size, off, fi in
            let h = fi!.pointee.fh
            // Interruptible: the reply is built first and sent only if the request still waits (readdirplus
            // is not: the entries it fits take lookup references as they are added).
            FuseAdapter.interruptible(req, "readdir") { a, reply throws(FSError) in
                try await a.replyDirectory(handle: h, size: size, offset: off, plus: false, send: reply.send)
            }
        }
        ops.readdirplus = { req, _, size, off, fi in
            let h = fi!.pointee.fh
            FuseAdapter.async(req, "readdirplus") { a, r throws(FSError) in
                try await a.replyDirectory(handle: h, size: size, offset: off, plus: true, request: r.value) { $0(r.value) }
            }
        }
        ops.releasedir = { req, _, fi in
            FuseAdapter.adapter(req).fs.releasedir(handle: fi!.pointee.fh)
            fuse_reply_err(req, 0)
        }
        ops.statfs = { req, _ in
            let s = FuseAdapter.adapter(req).fs.statfs()
            var v = statvfs()
            v.f_bsize = UInt(s.blockSize)
            v.f_frsize = UInt(s.blockSize)
            v.f_blocks = fsblkcnt_t(s.blocks)
            v.f_bfree = fsblkcnt_t(s.freeBlocks)
            v.f_bavail = fsblkcnt_t(s.freeBlocks)
            v.f_files = fsfilcnt_t(s.files)
            v.f_ffree = fsfilcnt_t(s.freeFiles)
            v.f_favail = fsfilcnt_t(s.freeFiles)
            v.f_namemax = UInt(s.nameMax)
            fuse_reply_statfs(req, &v)
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            if FuseAdapter.refused(req) { return }
            guard let n = FuseAdapter.utf8Name(req, name, else: ENOENT) else { return }
            guard let nn = FuseAdapter.utf8Name(req, newName) else { return }
            FuseAdapter.async(req, "rename") { a, r throws(FSError) in
                try await a.fs.rename(parent: UInt64(parent), name: n, newParent: UInt64(newParent), newName: nn, flags: UInt32(flags))
                fuse_reply_err(r.value, 0)
            }
        }
        // Special files and links have no S3 form (EPERM; ENAMETOOLONG first for a name that is too long).
        ops.mknod = { req, parent, name, _, _ in FuseAdapter.special(req, parent, name) }
        ops.symlink = { req, _, parent, name in FuseAdapter.special(req, parent, name) }
        ops.link = { req, _, parent, name in FuseAdapter.special(req, parent, name) }
        return ops
    }

    /// Refuses a special file or link named `name` in `parent`.
    static func special(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        guard let n = utf8Name(req, name) else { return }
        let a = FuseAdapter.adapter(req)
        do throws(FSError) { try a.fs.makeSpecial(parent: UInt64(parent), name: n) } catch {
            a.replyError(req, error, "mknod")
        }
    }

    /// Sends read segments. Memory segments are passed by pointer, files by descriptor: both are owned by
    /// `segments`, which lives until the reply has been written.
    func reply(_ req: fuse_req_t?, _ segments: [ReadSegment]) {
        var fds: [Int32] = []
        var offs: [off_t] = []
        var lens: [Int] = []
        var mems: [UnsafeRawPointer?] = []
        for s in segments {
            switch s {
            case .file(let fd, let off, let n):
                fds.append(fd.rawValue); offs.append(off_t(off)); lens.append(n); mems.append(nil)
            case .memory(let buf, let off, let n):
                fds.append(-1); offs.append(0); lens.append(n); mems.append(buf.bytes.baseAddress.map { $0 + off })
            }
        }
        withExtendedLifetime(segments) {
            mems.withUnsafeBufferPointer { m in
                _ = ckpt_fuse_reply_segments(req, segments.count, fds, offs, m.baseAddress, lens)
            }
        }
    }
}

/// Carries a value libfuse guarantees stays valid (a request handle until replied) into a Task.
struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Who answers an interruptible request (`FuseAdapter.interruptible`): the operation or the interrupt handler,
/// whichever comes first.
final class InterruptibleReply: Sendable {
    struct State {
        var registering = false
        var interruptedWhileRegistering = false
        var replied = false
    }
    let state = Mutex(State())
    private let req: UnsafeSendable<fuse_req_t?>

    init(_ req: fuse_req_t?) { self.req = UnsafeSendable(req) }

    /// Answers the request with `reply` (libfuse's fuse_reply_* result) unless it was answered already (the
    /// interrupt handler's EINTR, or an earlier answer); nil then, and the caller undoes what the answer would
    /// have handed the kernel (a lookup reference, an open handle).
    func send(_ reply: (fuse_req_t?) -> Int32) -> Int32? {
        let won = state.withLock { s -> Bool in
            defer { s.replied = true }
            return !s.replied
        }
        guard won else { return nil }
        // Waits for a handler running now (it holds the request's lock), which then finds `replied`.
        fuse_req_interrupt_func(req.value, nil, nil)
        return reply(req.value)
    }
}
