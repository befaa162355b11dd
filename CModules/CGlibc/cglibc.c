// Compiled with _GNU_SOURCE, unlike Swift's Glibc module: see cglibc.h for why.
#define _GNU_SOURCE
#include "cglibc.h"
#include <fcntl.h>
#include <malloc.h>
#include <spawn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

const int ckpt_glibc_O_DIRECT = O_DIRECT;
const short ckpt_glibc_POSIX_SPAWN_SETSID = POSIX_SPAWN_SETSID;

int ckpt_glibc_fallocate_keep_size(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

int ckpt_glibc_set_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}

int ckpt_glibc_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int ckpt_glibc_gettid(void) {
    return (int)syscall(SYS_gettid);
}
