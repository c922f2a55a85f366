/* The image checksum: a Fletcher-style pair of 64-bit sums over little-endian
 * 8-byte words. Cheap enough to run at memory speed, order-sensitive, and
 * resumable: the Python reader, the C dumper and the restorer each carry
 * the same two words forward. */
#ifndef UCR_CSUM_H
#define UCR_CSUM_H
#include <stdint.h>
#include <stddef.h>

typedef uint64_t __attribute__((may_alias, aligned(1))) ucr_unaligned_u64;

static inline void ucr_csum_words(uint64_t *state, const void *buf, size_t len)
{
    const ucr_unaligned_u64 *w = buf;
    uint64_t a = state[0], b = state[1];
    size_t n = len / 8;
    for (size_t i = 0; i < n; i++) {
        a += w[i];
        b += a;
    }
    state[0] = a;
    state[1] = b;
}
#endif
