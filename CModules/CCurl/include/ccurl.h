// Shim for libcurl.
//
// Why a shim: `curl_easy_setopt`, `curl_easy_getinfo` and `curl_multi_setopt` are variadic C
// functions, which Swift cannot call. Each wrapper here fixes one argument type, so Swift gets a
// typed, non-variadic function. Some flag constants are macros built from other macros; they are
// re-exported as functions. Nothing else lives here: all logic is in the CkptHTTP Swift target.
#ifndef CKPT_CCURL_H
#define CKPT_CCURL_H

#include <curl/curl.h>
#include <stddef.h>

typedef size_t (*ckpt_curl_data_cb)(char *ptr, size_t size, size_t nmemb, void *userdata);
typedef int (*ckpt_curl_xferinfo_cb)(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
                                     curl_off_t ultotal, curl_off_t ulnow);
typedef int (*ckpt_curl_seek_cb)(void *userdata, curl_off_t offset, int origin);

/// curl_global_init with an allocator that page-aligns blocks of 64 KiB and more (O_DIRECT reads into the
/// upload buffer).
CURLcode ckpt_curl_global_init(void);

CURLcode ckpt_curl_setopt_long(CURL *h, CURLoption opt, long value);
CURLcode ckpt_curl_setopt_off(CURL *h, CURLoption opt, curl_off_t value);
CURLcode ckpt_curl_setopt_ptr(CURL *h, CURLoption opt, void *value);
CURLcode ckpt_curl_setopt_str(CURL *h, CURLoption opt, const char *value);
CURLcode ckpt_curl_setopt_slist(CURL *h, CURLoption opt, struct curl_slist *value);

/// Installs the write, read, header, seek and progress callbacks with one user-data pointer.
CURLcode ckpt_curl_set_callbacks(CURL *h, ckpt_curl_data_cb write_cb, ckpt_curl_data_cb read_cb,
                                 ckpt_curl_data_cb header_cb, ckpt_curl_seek_cb seek_cb,
                                 ckpt_curl_xferinfo_cb progress_cb, void *userdata);

CURLcode ckpt_curl_getinfo_off(CURL *h, CURLINFO info, curl_off_t *out);

CURLMcode ckpt_curl_multi_setopt_long(CURLM *m, CURLMoption opt, long value);

/// Fields of CURLMsg, whose `data` member is a union.
CURL *ckpt_curl_msg_easy(const CURLMsg *msg);
int ckpt_curl_msg_is_done(const CURLMsg *msg);
CURLcode ckpt_curl_msg_result(const CURLMsg *msg);

/// Return values a read callback may use (macros in curl.h).
size_t ckpt_curl_readfunc_abort(void);
int ckpt_curl_seekfunc_ok(void);
int ckpt_curl_seekfunc_fail(void);

/// The libcurl version string and its TLS backend, for `ckptfs --version` and bug reports.
const char *ckpt_curl_version(void);
const char *ckpt_curl_ssl_version(void);

#endif
