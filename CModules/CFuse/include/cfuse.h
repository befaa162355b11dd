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

/// Runs the multi-threaded session loop (the `fuse_session_loop_mt` macro).
/// `max_idle_threads` < 0 keeps libfuse's default; `max_threads` <= 0 likewise.
int ckpt_fuse_session_loop_mt(struct fuse_session *se, int clone_fd, int max_idle_threads, int max_threads);

/// The libfuse version the library reports at run time (e.g. 314 for 3.14).
int ckpt_fuse_runtime_version(void);

/// FUSE_USE_VERSION this shim was compiled with.
int ckpt_fuse_use_version(void);

#endif
