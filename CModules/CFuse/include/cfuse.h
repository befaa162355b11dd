// Shim for libfuse3's low-level API.
//
// Why a shim: libfuse selects ABI versions with macros (`fuse_session_loop_mt` and
// `fuse_session_new` are macros over versioned symbols in 3.14), which Swift cannot call, and
// FUSE_USE_VERSION must be defined before the header is read. Everything else in
// <fuse_lowlevel.h> is imported as is.
#ifndef CKPT_CFUSE_H
#define CKPT_CFUSE_H

#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <stdint.h>
#include <signal.h>

/// Runs the multi-threaded session loop (the `fuse_session_loop_mt` macro).
/// `max_idle_threads` < 0 keeps libfuse's default; `max_threads` <= 0 likewise.
int ckpt_fuse_session_loop_mt(struct fuse_session *se, int clone_fd, int max_idle_threads, int max_threads);

/// Replies to a read with `n` segments, each either `len[i]` bytes of file `fd[i]` at `off[i]` (fd >= 0)
/// or `len[i]` bytes at `mem[i]` (fd < 0). File segments go to the kernel without passing through this
/// process's memory where the kernel allows (splice). `struct fuse_bufvec` ends in a one-element array,
/// so a vector of several buffers has to be allocated here.
int ckpt_fuse_reply_segments(fuse_req_t req, size_t n, const int *fd, const off_t *off, const void *const *mem,
                             const size_t *len);

/// Sets the fields of a fuse_file_info that are C bitfields.
void ckpt_fuse_fi_set(struct fuse_file_info *fi, uint64_t fh, int keep_cache, int direct_io);

/// Lets the kernel map files opened with direct_io (shared mmap then goes through the page cache):
/// installs read/writev hooks on the session's /dev/fuse fd (call after fuse_session_mount) that add
/// FUSE_DIRECT_IO_ALLOW_MMAP to libfuse's INIT reply when the kernel offers it. Returns 0 or -errno.
int ckpt_fuse_negotiate_direct_io_mmap(struct fuse_session *se);

/// 1 when the kernel offered FUSE_DIRECT_IO_ALLOW_MMAP in INIT (known from the init operation on), else 0.
int ckpt_fuse_direct_io_mmap(void);

/// Turns on the capabilities a read-mostly filesystem wants, if the kernel offers them.
void ckpt_fuse_init_conn(struct fuse_conn_info *conn, unsigned max_readahead);

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that only write the signal number to `notify_fd`.
/// They do not end the session (libfuse's own handlers would, at once): the daemon keeps serving while it
/// drains its uploads, so nothing written during the drain falls through to the directory underneath, and
/// the thread reading `notify_fd` ends the session and unmounts afterwards. SIGPIPE is ignored.
int ckpt_fuse_install_exit_signals(int notify_fd);
void ckpt_fuse_remove_exit_signals(void);

/// The libfuse version the library reports at run time (e.g. 314 for 3.14).
int ckpt_fuse_runtime_version(void);

/// FUSE_USE_VERSION this shim was compiled with.
int ckpt_fuse_use_version(void);

#endif
