#include "ccurl.h"

#include <stdlib.h>
#include <string.h>

/* libcurl's allocator, with large blocks page-aligned. Its upload buffer (CURLOPT_UPLOAD_BUFFERSIZE, 1 MiB)
   is then a valid target for an O_DIRECT pread: a file body is read from disk straight into the buffer
   libcurl sends from, with no copy through the page cache (see CkptHTTP's read callback). glibc's free and
   realloc take blocks from posix_memalign, so only malloc and calloc differ from the defaults. */
static void *ckpt_curl_malloc(size_t size) {
    if (size < (64u << 10)) return malloc(size);
    void *p = NULL;
    return posix_memalign(&p, 4096, size) == 0 ? p : NULL;
}

static void *ckpt_curl_calloc(size_t count, size_t size) {
    if (size != 0 && count > (size_t)-1 / size) return NULL;
    size_t n = count * size;
    if (n < (64u << 10)) return calloc(count, size);
    void *p = ckpt_curl_malloc(n);
    if (p) memset(p, 0, n);
    return p;
}

static void ckpt_curl_free(void *p) { free(p); }
static void *ckpt_curl_realloc(void *p, size_t size) { return realloc(p, size); }
static char *ckpt_curl_strdup(const char *s) { return strdup(s); }

CURLcode ckpt_curl_global_init(void) {
    return curl_global_init_mem(CURL_GLOBAL_ALL, ckpt_curl_malloc, ckpt_curl_free, ckpt_curl_realloc,
                                ckpt_curl_strdup, ckpt_curl_calloc);
}

CURLcode ckpt_curl_setopt_long(CURL *h, CURLoption opt, long value) { return curl_easy_setopt(h, opt, value); }
CURLcode ckpt_curl_setopt_off(CURL *h, CURLoption opt, curl_off_t value) { return curl_easy_setopt(h, opt, value); }
CURLcode ckpt_curl_setopt_ptr(CURL *h, CURLoption opt, void *value) { return curl_easy_setopt(h, opt, value); }
CURLcode ckpt_curl_setopt_str(CURL *h, CURLoption opt, const char *value) { return curl_easy_setopt(h, opt, value); }
CURLcode ckpt_curl_setopt_slist(CURL *h, CURLoption opt, struct curl_slist *value) {
    return curl_easy_setopt(h, opt, value);
}

CURLcode ckpt_curl_set_callbacks(CURL *h, ckpt_curl_data_cb write_cb, ckpt_curl_data_cb read_cb,
                                 ckpt_curl_data_cb header_cb, ckpt_curl_seek_cb seek_cb,
                                 ckpt_curl_xferinfo_cb progress_cb, void *userdata) {
    CURLcode rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_WRITEDATA, userdata)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_READDATA, userdata)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_HEADERDATA, userdata)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, seek_cb)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_SEEKDATA, userdata)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_XFERINFODATA, userdata)) != CURLE_OK) return rc;
    return curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
}

CURLcode ckpt_curl_getinfo_off(CURL *h, CURLINFO info, curl_off_t *out) { return curl_easy_getinfo(h, info, out); }

CURLMcode ckpt_curl_multi_setopt_long(CURLM *m, CURLMoption opt, long value) { return curl_multi_setopt(m, opt, value); }

CURL *ckpt_curl_msg_easy(const CURLMsg *msg) { return msg->easy_handle; }
int ckpt_curl_msg_is_done(const CURLMsg *msg) { return msg->msg == CURLMSG_DONE; }
CURLcode ckpt_curl_msg_result(const CURLMsg *msg) { return msg->data.result; }

size_t ckpt_curl_readfunc_abort(void) { return CURL_READFUNC_ABORT; }
int ckpt_curl_seekfunc_ok(void) { return CURL_SEEKFUNC_OK; }
int ckpt_curl_seekfunc_fail(void) { return CURL_SEEKFUNC_FAIL; }

const char *ckpt_curl_version(void) { return curl_version_info(CURLVERSION_NOW)->version; }
const char *ckpt_curl_ssl_version(void) {
    const char *v = curl_version_info(CURLVERSION_NOW)->ssl_version;
    return v ? v : "none";
}
