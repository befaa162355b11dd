// memtrace: which allocations make a process's RSS. An LD_PRELOAD library that records every live
// allocation of at least 256 KiB (malloc, calloc, realloc, posix_memalign, aligned_alloc) with its call stack,
// samples the process's RssAnon (/proc/self/status) every 100 ms, and at each new peak (2 MiB above the last)
// writes the live set, grouped by call stack, to $MEMTRACE_OUT. Symbolize with memtrace.py.
//
//   gcc -O1 -g -shared -fPIC -o /tmp/memtrace.so scripts/memtrace/memtrace.c -ldl -lpthread
//   LD_PRELOAD=/tmp/memtrace.so MEMTRACE_OUT=/tmp/peak.txt ckptfs mount ... --foreground
//   python3 scripts/memtrace/memtrace.py /tmp/peak.txt .build/debug/ckptfs
//
// Allocations below 256 KiB are not tracked: the daemon has glibc map each allocation of 256 KiB or more on
// its own (CkptSystem.FileIO, M_MMAP_THRESHOLD), and those were 95% of its anonymous memory under
// bench/load.py. A diagnostic, not for production: the table is a fixed array and lookups are linear.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIN_SIZE (256 * 1024)
#define SLOTS 16384
#define DEPTH 14

typedef struct { void *ptr; size_t size; int depth; void *stack[DEPTH]; } Allocation;

static Allocation table[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int busy;  // set while this thread is inside the tracker (backtrace may allocate)
static void *(*real_malloc)(size_t), *(*real_calloc)(size_t, size_t), *(*real_realloc)(void *, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void (*real_free)(void *);
// dlsym itself may allocate before the real functions are known: served from here, never freed.
static char early[65536];
static size_t early_used;

static void resolve(void) {
    if (real_malloc) return;
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_free = dlsym(RTLD_NEXT, "free");
    real_malloc = dlsym(RTLD_NEXT, "malloc");
}

static void record(void *ptr, size_t size) {
    if (!ptr || size < MIN_SIZE || busy) return;
    busy = 1;
    Allocation a = {.ptr = ptr, .size = size};
    a.depth = backtrace(a.stack, DEPTH);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++) if (!table[i].ptr) { table[i] = a; break; }
    pthread_mutex_unlock(&lock);
    busy = 0;
}

static void forget(void *ptr) {
    if (!ptr || malloc_usable_size(ptr) < MIN_SIZE) return;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < SLOTS; i++) if (table[i].ptr == ptr) { table[i].ptr = NULL; break; }
    pthread_mutex_unlock(&lock);
}

static int same_stack(const Allocation *a, const Allocation *b) {
    return a->depth == b->depth && !memcmp(a->stack, b->stack, sizeof(void *) * a->depth);
}

// Writes the live set grouped by stack (caller holds `lock`).
static void dump(const char *path, long rss_anon_kib) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    size_t live = 0;
    for (int i = 0; i < SLOTS; i++) if (table[i].ptr) live += table[i].size;
    dprintf(fd, "rss_anon_kib %ld live_kib %zu\n", rss_anon_kib, live / 1024);
    for (int i = 0; i < SLOTS; i++) {
        if (!table[i].ptr) continue;
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = table[j].ptr && same_stack(&table[j], &table[i]);
        if (seen) continue;
        size_t total = 0;
        int count = 0;
        for (int j = i; j < SLOTS; j++)
            if (table[j].ptr && same_stack(&table[j], &table[i])) { total += table[j].size; count++; }
        dprintf(fd, "== %zu KiB in %d\n", total / 1024, count);
        backtrace_symbols_fd(table[i].stack + 1, table[i].depth - 1, fd);
    }
    close(fd);
}

static long rss_anon_kib(void) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strstr(buf, "RssAnon:");
    return p ? atol(p + 8) : 0;
}

static void *watch(void *path) {
    busy = 1;  // this thread's own allocations are not the process's
    long peak = 0;
    for (;;) {
        usleep(100 * 1000);
        long now = rss_anon_kib();
        if (now < peak + 2048) continue;
        peak = now;
        pthread_mutex_lock(&lock);
        dump(path, now);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

__attribute__((constructor)) static void start(void) {
    resolve();
    const char *out = getenv("MEMTRACE_OUT");
    if (!out) return;
    // Each process that inherits the variable writes its own file: OUT.PID.
    static char path[4096];
    snprintf(path, sizeof path, "%s.%d", out, (int)getpid());
    pthread_t t;
    pthread_create(&t, NULL, watch, path);
}

void *malloc(size_t n) {
    if (!real_malloc) {
        if (early_used + n > sizeof early) return NULL;
        void *p = early + early_used;
        early_used += (n + 15) & ~(size_t)15;
        return p;
    }
    void *p = real_malloc(n);
    record(p, n);
    return p;
}

void *calloc(size_t count, size_t size) {
    if (!real_calloc) {
        void *p = malloc(count * size);  // early memory is zero already
        return p;
    }
    void *p = real_calloc(count, size);
    record(p, count * size);
    return p;
}

void free(void *p) {
    if ((char *)p >= early && (char *)p < early + sizeof early) return;
    resolve();
    forget(p);
    real_free(p);
}

void *realloc(void *p, size_t n) {
    resolve();
    forget(p);
    void *q = real_realloc(p, n);
    record(q, n);
    return q;
}

int posix_memalign(void **out, size_t alignment, size_t n) {
    resolve();
    int rc = real_posix_memalign(out, alignment, n);
    if (rc == 0) record(*out, n);
    return rc;
}

void *aligned_alloc(size_t alignment, size_t n) {
    resolve();
    void *p = real_aligned_alloc(alignment, n);
    record(p, n);
    return p;
}
