#include "copenssl.h"
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <pthread.h>

/* OpenSSL frees its global state in an atexit handler by default; a thread still hashing when the process
   exits (a cache store, an upload, a request's signature) would then crash on a freed lock. Initialise it
   without that, before main: libcurl's global init would otherwise initialise OpenSSL first, with the
   handler (seen: a benchmark tool crashed in CRYPTO_THREAD_read_lock at exit). */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static void init_openssl(void) { OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL); }
__attribute__((constructor)) static void init_openssl_at_load(void) { pthread_once(&init_once, init_openssl); }

void *ckpt_digest_new(ckpt_digest_alg alg) {
    pthread_once(&init_once, init_openssl);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) return NULL;
    const EVP_MD *md = alg == CKPT_DIGEST_MD5 ? EVP_md5() : alg == CKPT_DIGEST_SHA1 ? EVP_sha1() : EVP_sha256();
    if (EVP_DigestInit_ex(ctx, md, NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int ckpt_digest_update(void *ctx, const void *data, size_t len) {
    return EVP_DigestUpdate((EVP_MD_CTX *)ctx, data, len);
}

int ckpt_digest_final_free(void *ctx, uint8_t *out) {
    unsigned int n = 0;
    int rc = EVP_DigestFinal_ex((EVP_MD_CTX *)ctx, out, &n);
    EVP_MD_CTX_free((EVP_MD_CTX *)ctx);
    return rc;
}

void ckpt_digest_free(void *ctx) { EVP_MD_CTX_free((EVP_MD_CTX *)ctx); }

int ckpt_hmac_sha256(const void *key, size_t key_len, const void *data, size_t data_len, uint8_t *out) {
    unsigned int n = 0;
    pthread_once(&init_once, init_openssl);
    return HMAC(EVP_sha256(), key, (int)key_len, data, data_len, out, &n) != NULL;
}
