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
    size_t n = len / 8, i = 0;
    /* Four independent lanes, then combined to exactly the word-by-word
     * sums: over k steps of 4 words, b gains 4k*a plus each word times the
     * count of words from it to the end, 4*sum(t) - (s1 + 2*s2 + 3*s3). */
    if (n >= 16) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        size_t k = n / 4;
        for (size_t j = 0; j < k; j++, w += 4) {
            s0 += w[0]; t0 += s0;
            s1 += w[1]; t1 += s1;
            s2 += w[2]; t2 += s2;
            s3 += w[3]; t3 += s3;
        }
        b += 4 * (uint64_t)k * a + 4 * (t0 + t1 + t2 + t3) - (s1 + 2 * s2 + 3 * s3);
        a += s0 + s1 + s2 + s3;
        i = 4 * k;
    }
    for (w = (const ucr_unaligned_u64 *)buf; i < n; i++) {
        a += w[i];
        b += a;
    }
    state[0] = a;
    state[1] = b;
}
#endif
