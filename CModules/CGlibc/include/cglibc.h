// Shim for glibc constants and functions Swift cannot import.
//
// Why a shim: glibc defines O_DIRECT and POSIX_SPAWN_SETSID, and declares fallocate(2), only when
// _GNU_SOURCE is defined, and Swift's Glibc module is built without it, so Swift sees none of them (nor
// mallopt(3), whose <malloc.h> the module does not include); the
// constants' values also differ by architecture (O_DIRECT is 040000 on x86_64, 0200000 on aarch64), so they
// must not be written out by hand. cglibc.c is compiled on its own with _GNU_SOURCE and exports the values as
// constants and fallocate, mallopt, gettid and pidfd_open (a raw syscall: glibc 2.36 wraps it only in <sys/pidfd.h>) as functions. Nothing else lives here: the other calls go through swift-system
// (SystemPackage).
#ifndef CKPT_CGLIBC_H
#define CKPT_CGLIBC_H

/// open(2) flag O_DIRECT: transfers bypass the page cache (buffers, offsets and lengths must be aligned,
/// usually to 4096 bytes; open fails with EINVAL where the filesystem does not support it, e.g. tmpfs).
extern const int ckpt_glibc_O_DIRECT;

/// posix_spawnattr_setflags(3) flag POSIX_SPAWN_SETSID: the child starts a new session (setsid), so it
/// outlives the terminal of the process that spawned it. posix_spawnattr_setflags takes a short.
extern const short ckpt_glibc_POSIX_SPAWN_SETSID;

/// mallopt(3) M_MMAP_THRESHOLD: allocations of at least `bytes` are mapped on their own and unmapped when
/// freed, and glibc no longer raises the threshold by itself. Returns 1 on success, 0 on error.
int ckpt_glibc_set_mmap_threshold(int bytes);

/// fallocate(2) with FALLOC_FL_KEEP_SIZE: allocates disk blocks for bytes [offset, offset + length) of `fd`
/// without changing its size. Returns 0, or -1 with errno set (ENOSPC, EOPNOTSUPP where the filesystem cannot).
int ckpt_glibc_fallocate_keep_size(int fd, long long offset, long long length);

/// pidfd_open(2): a descriptor that refers to process `pid` and becomes readable (POLLIN) when it exits, so
/// a process that is not its parent can wait for it without polling (Linux 5.3). Returns the descriptor, or
/// -1 with errno set (ESRCH: no such process; ENOSYS: an older kernel).
int ckpt_glibc_pidfd_open(int pid);

/// gettid(2): the calling thread's id (glibc declares it only under _GNU_SOURCE).
int ckpt_glibc_gettid(void);

#endif
