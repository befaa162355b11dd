// Shim for Intel's ISA-L (Debian: libisal-dev): CRC32C, the checksum S3 names `x-amz-checksum-crc32c`.
//
// Why a shim: ISA-L's crc32_iscsi takes an `int` length and a caller-managed initial value and final
// inversion; this wrapper takes a size_t and the standard CRC32C convention (RFC 3720, appendix B.4).
#ifndef CKPT_CISAL_H
#define CKPT_CISAL_H

#include <stddef.h>
#include <stdint.h>

/// CRC32C (Castagnoli) of `len` bytes at `data`, continuing from `crc` (0 for the first bytes): the value of
/// the bytes before followed by these. CRC32C("123456789") = 0xE3069283. SSE4.2/PCLMUL where the CPU has them.
uint32_t ckpt_crc32c(uint32_t crc, const void *data, size_t len);

#endif
