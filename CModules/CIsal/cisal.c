#include "cisal.h"

#include <isa-l/crc.h>
#include <limits.h>

uint32_t ckpt_crc32c(uint32_t crc, const void *data, size_t len) {
    // ISA-L keeps the register un-inverted between calls: invert on the way in and on the way out.
    unsigned int c = ~crc;
    const unsigned char *p = data;
    while (len > 0) {
        int n = len > (size_t)INT_MAX ? INT_MAX : (int)len;
        c = crc32_iscsi((unsigned char *)p, n, c);
        p += n;
        len -= (size_t)n;
    }
    return ~c;
}
