// Shim for glibc constants Swift cannot import.
//
// Why a shim: glibc defines O_DIRECT and POSIX_SPAWN_SETSID only when _GNU_SOURCE is defined, and
// Swift's Glibc module is built without it, so Swift sees neither macro; their values also differ by
// architecture (O_DIRECT is 040000 on x86_64, 0200000 on aarch64), so they must not be written out by
// hand. cglibc.c is compiled on its own with _GNU_SOURCE and exports the values as constants.
// Nothing else lives here: the calls themselves go through swift-system (SystemPackage).
#ifndef CKPT_CGLIBC_H
#define CKPT_CGLIBC_H

/// open(2) flag O_DIRECT: transfers bypass the page cache (buffers, offsets and lengths must be aligned,
/// usually to 4096 bytes; open fails with EINVAL where the filesystem does not support it, e.g. tmpfs).
extern const int ckpt_glibc_O_DIRECT;

/// posix_spawnattr_setflags(3) flag POSIX_SPAWN_SETSID: the child starts a new session (setsid), so it
/// outlives the terminal of the process that spawned it. posix_spawnattr_setflags takes a short.
extern const short ckpt_glibc_POSIX_SPAWN_SETSID;

#endif
