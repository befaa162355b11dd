/* splice(2) */
#define _GNU_SOURCE
#include "cfuse.h"
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <sys/uio.h>
#include <unistd.h>

int ckpt_fuse_session_loop_mt(struct fuse_session *se, int clone_fd, int max_idle_threads, int max_threads) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (cfg == NULL) return -1;
    fuse_loop_cfg_set_clone_fd(cfg, (unsigned int)clone_fd);
    if (max_idle_threads >= 0) fuse_loop_cfg_set_idle_threads(cfg, (unsigned int)max_idle_threads);
    if (max_threads > 0) fuse_loop_cfg_set_max_threads(cfg, (unsigned int)max_threads);
    int rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return rc;
}

int ckpt_fuse_runtime_version(void) { return fuse_version(); }

int ckpt_fuse_use_version(void) { return FUSE_USE_VERSION; }

int ckpt_fuse_reply_segments(fuse_req_t req, size_t n, const int *fd, const off_t *off, const void *const *mem,
                             const size_t *len) {
    if (n == 0) return fuse_reply_buf(req, NULL, 0);
    int any_fd = 0;
    for (size_t i = 0; i < n; i++) any_fd |= fd[i] >= 0;
    if (!any_fd) {
        /* Memory only: one writev. fuse_reply_data would first copy memory into a pipe to splice it. */
        struct iovec iov[n];
        for (size_t i = 0; i < n; i++) {
            iov[i].iov_base = (void *)mem[i];
            iov[i].iov_len = len[i];
        }
        return fuse_reply_iov(req, iov, (int)n);
    }
    struct fuse_bufvec *v = calloc(1, sizeof(struct fuse_bufvec) + (n - 1) * sizeof(struct fuse_buf));
    if (v == NULL) return fuse_reply_err(req, ENOMEM);
    v->count = n;
    for (size_t i = 0; i < n; i++) {
        v->buf[i].size = len[i];
        if (fd[i] >= 0) {
            v->buf[i].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
            v->buf[i].fd = fd[i];
            v->buf[i].pos = off[i];
        } else {
            v->buf[i].flags = 0;
            v->buf[i].mem = (void *)mem[i];
        }
    }
    int rc = fuse_reply_data(req, v, FUSE_BUF_SPLICE_MOVE);
    free(v);
    return rc;
}

void ckpt_fuse_fi_set(struct fuse_file_info *fi, uint64_t fh, int keep_cache, int direct_io) {
    fi->fh = fh;
    fi->keep_cache = keep_cache ? 1 : 0;
    fi->direct_io = direct_io ? 1 : 0;
}

void ckpt_fuse_init_conn(struct fuse_conn_info *conn, unsigned max_readahead) {
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
    if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
    /* Writes land in the kernel's page cache and reach us in large, parallel requests; close() still waits
       for all of them (the kernel writes back before FLUSH). */
    if (conn->capable & FUSE_CAP_WRITEBACK_CACHE) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    /* Listings carry every entry's attributes: hand them over with the names (the kernel decides when). */
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
    /* Lookups and readdir in one directory run in parallel (each may wait a round trip to S3). */
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    conn->max_readahead = max_readahead;
    /* libfuse derives the kernel's max_pages from max_write: 1 MiB lets the kernel send 1 MiB reads
       (one cache block per request) instead of 128 KiB ones. */
    conn->max_write = 1 << 20;
    /* The kernel sends read-ahead as background requests and stops at max_background (default 12) of
       them; a network filesystem wants many more in flight so parallel fetches can be waited on together. */
    conn->max_background = 64;
    conn->congestion_threshold = 48;
}

static volatile int exit_notify_fd = -1;

/* Only writes the signal number: the session keeps serving while the daemon drains, and the thread reading
   `exit_notify_fd` ends it afterwards. write(2) is async-signal-safe. */
static void exit_signal_handler(int sig) {
    int fd = exit_notify_fd;
    if (fd >= 0) {
        char c = (char)sig;
        ssize_t ignored = write(fd, &c, 1);
        (void)ignored;
    }
}

int ckpt_fuse_install_exit_signals(int notify_fd) {
    exit_notify_fd = notify_fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = exit_signal_handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGHUP, &sa, NULL) != 0) return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

void ckpt_fuse_remove_exit_signals(void) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    exit_notify_fd = -1;
}

/* FUSE_DIRECT_IO_ALLOW_MMAP (protocol 7.39, Linux 6.6): shared mmap of a file opened with direct_io. libfuse
   3.14 predates it, so its INIT reply never carries the flag; the custom I/O below notes whether the kernel
   offers it (read of the INIT request, before libfuse calls the init operation) and adds it to the reply. */
#define CKPT_DIRECT_IO_ALLOW_MMAP_FLAGS2 (1u << (36 - 32))

static _Atomic uint64_t init_unique;
static _Atomic int direct_io_mmap;

static ssize_t ckpt_io_read(int fd, void *buf, size_t len, void *userdata) {
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, unused))) {
        const struct fuse_in_header *h = buf;
        if (h->opcode == FUSE_INIT) {
            const struct fuse_init_in *in = (const void *)(h + 1);
            uint32_t flags2 = (in->flags & FUSE_INIT_EXT) ? in->flags2 : 0;
            atomic_store(&direct_io_mmap, (flags2 & CKPT_DIRECT_IO_ALLOW_MMAP_FLAGS2) ? 1 : 0);
            atomic_store(&init_unique, h->unique);
        }
    }
    return n;
}

static ssize_t ckpt_io_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    uint64_t unique = atomic_load(&init_unique);
    if (unique != 0 && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header) &&
        iov[1].iov_len >= offsetof(struct fuse_init_out, unused)) {
        const struct fuse_out_header *h = iov[0].iov_base;
        if (h->unique == unique && h->error == 0) {
            struct fuse_init_out *out = iov[1].iov_base;
            /* The kernel only reads flags2 when the reply has FUSE_INIT_EXT, which libfuse sets whenever the
               request had it (and without it the kernel offered nothing in flags2). */
            if (atomic_load(&direct_io_mmap) && (out->flags & FUSE_INIT_EXT))
                out->flags2 |= CKPT_DIRECT_IO_ALLOW_MMAP_FLAGS2;
            atomic_store(&init_unique, 0);
        }
    }
    return writev(fd, iov, count);
}

/* libfuse offers the kernel spliced replies (FUSE_CAP_SPLICE_WRITE) only when the custom I/O can send them:
   without this, every read answered from a cache block file was copied through a buffer malloc'd per reply
   (1 MiB: fresh pages each time), a third of the daemon's CPU on a cached epoch. Requests are still read
   with `ckpt_io_read` (no splice_receive), which must see INIT. */
static ssize_t ckpt_io_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags,
                                   void *userdata) {
    (void)userdata;
    return splice(fdin, offin, fdout, offout, len, flags);
}

int ckpt_fuse_negotiate_direct_io_mmap(struct fuse_session *se) {
    static const struct fuse_custom_io io = {.read = ckpt_io_read, .writev = ckpt_io_writev,
                                             .splice_send = ckpt_io_splice_send};
    return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

int ckpt_fuse_direct_io_mmap(void) { return atomic_load(&direct_io_mmap); }
