// Shim for OpenSSL's libcrypto.
//
// Why a shim: the EVP API works through opaque pointers and a few macros (EVP_MAX_MD_SIZE);
// these wrappers give Swift a small fixed surface: one-shot and streaming SHA-256, MD5 and SHA-1,
// and HMAC-SHA256. The cache-block checksum (XXH64) is computed in Swift.
#ifndef CKPT_COPENSSL_H
#define CKPT_COPENSSL_H

#include <stddef.h>
#include <stdint.h>

/// Digest algorithms the shim exposes.
typedef enum { CKPT_DIGEST_SHA256 = 0, CKPT_DIGEST_MD5 = 1, CKPT_DIGEST_SHA1 = 2 } ckpt_digest_alg;

/// An opaque streaming digest context; NULL on allocation failure.
void *ckpt_digest_new(ckpt_digest_alg alg);
int ckpt_digest_update(void *ctx, const void *data, size_t len);
/// Writes the digest to `out` (32 bytes for SHA-256, 16 for MD5, 20 for SHA-1) and frees the context.
int ckpt_digest_final_free(void *ctx, uint8_t *out);
void ckpt_digest_free(void *ctx);

/// HMAC-SHA256 of `data` under `key`; writes 32 bytes to `out`. Returns 1 on success.
int ckpt_hmac_sha256(const void *key, size_t key_len, const void *data, size_t data_len, uint8_t *out);

#endif
