#include "cfuse.h"
#include <stddef.h>

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
