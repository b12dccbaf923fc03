/* Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the
 * counter-based generator of Random123, written once for the CPU and (under nvcc) the GPU.
 *
 * A stream of values is addressed by (seed, stream, i): the key is the 64-bit seed, the counter is
 * (i, stream) as four 32-bit words, low word first. Value i depends only on its address, so any
 * thread can draw any element and the CPU and GPU backends draw the same numbers. */
#ifndef DIFFUSION_PHILOX_H
#define DIFFUSION_PHILOX_H

#include <math.h>
#include <stdint.h>

#include "diffusion/hd.h"

static DD_HD inline void dd_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2],
                                          uint32_t out[4]) {
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B9u; /* golden ratio */
            k1 += 0xBB67AE85u; /* sqrt(3) - 1 */
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

static DD_HD inline void dd_philox_at(uint64_t seed, uint64_t stream, uint64_t i, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)i, (uint32_t)(i >> 32), (uint32_t)stream,
                       (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    dd_philox4x32_10(ctr, key, out);
}

/* 23 random bits to a float in (0, 1): the midpoints (k + 1/2) / 2^23, all exact in float, so
 * never 0 (safe for log) and never 1. (With 24 bits, (2^24 - 1) + 0.5 needs 25 bits of mantissa
 * and rounds up to 2^24, giving exactly 1.0 once in 2^24 draws.) */
static DD_HD inline float dd_u32_to_unit(uint32_t u) {
    return ((float)(u >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

/* Uniform in (0, 1): element i of the stream. */
static DD_HD inline float dd_philox_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    uint32_t o[4];
    dd_philox_at(seed, stream, i, o);
    return dd_u32_to_unit(o[0]);
}

/* Standard normal (Box-Muller on the first two words): element i of the stream. */
static DD_HD inline float dd_philox_normal(uint64_t seed, uint64_t stream, uint64_t i) {
    uint32_t o[4];
    dd_philox_at(seed, stream, i, o);
    float u1 = dd_u32_to_unit(o[0]), u2 = dd_u32_to_unit(o[1]);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

/* Uniform integer in [0, n) (n > 0), from the third word (64-bit multiply, no modulo bias worth
 * mentioning for n << 2^32). */
static DD_HD inline uint32_t dd_philox_below(uint64_t seed, uint64_t stream, uint64_t i, uint32_t n) {
    uint32_t o[4];
    dd_philox_at(seed, stream, i, o);
    return (uint32_t)(((uint64_t)o[2] * n) >> 32);
}

#endif
