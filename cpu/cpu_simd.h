/* Vectorisable elementwise math for the CPU backend's hot loops (group_norm, activations,
 * softmax), private to cpu/.
 *
 * The library is built for baseline x86-64 (SSE2) and without -ffast-math, and the loops that use
 * libm's expf are not vectorised at all. Here:
 *   - dd_cpu_expf is exp in plain float arithmetic with no branches or calls, so a loop around it
 *     vectorises; it is within 1 ulp of the exact exp over the whole float range (0.96 ulp worst,
 *     measured on every 32nd float in [-110, 90]: libm's expf is within 0.5), overflows to inf
 *     above 88.72 and underflows through the denormals to 0 as expf does, and keeps NaN.
 *   - DD_CPU_CLONES compiles a function three times, for AVX-512 (AVX512F), AVX2 and the
 *     baseline, and picks one at load time (GCC's target_clones, an ifunc): 16- or 8-wide
 *     vectors where the processor has them. The AVX-512 clone ran group_norm's forward rows
 *     1.6x faster than the AVX2 one (session 16, Zen 4, whose AVX-512 is 256 bits wide inside).
 * A file that uses them starts, before its first #include (GCC does not inline a function into
 * one compiled with other options, and a loop that calls dd_cpu_expf does not vectorise), with
 *     #pragma GCC optimize("no-trapping-math", "fp-contract=off")
 * (inside #if defined(__GNUC__) && !defined(__clang__), like DD_CPU_CLONES; another compiler
 * gets the plain loops)
 * no-trapping-math lets GCC vectorise the clamps below (it only drops the assumption that a
 * comparison may trap; no value changes); fp-contract=off keeps a clone from fusing a*b+c into
 * one FMA, so every clone, and the serial build before them, round every operation the same way:
 * what changes with the processor is speed, never a result. (The pragma, not the `optimize`
 * attribute, which with target_clones stopped GCC 12 from vectorising anything.) */
#ifndef DD_CPU_SIMD_H
#define DD_CPU_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DD_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DD_CPU_CLONES
#endif

/* e^x: x = n ln2 + r with n = round(x / ln2) (the 1.5 2^23 shift rounds to nearest and leaves n
 * in the low mantissa bits), ln2 split in two so n ln2 is exact (Cody-Waite), e^r by Cephes'
 * degree-6 polynomial on |r| <= ln2 / 2, then 2^n applied as two factors 2^(n/2) 2^(n - n/2) so
 * each is a normal float for every n in [-150, 128] (the results near the ends, inf and the
 * denormals, come out of the last multiplication rounded as expf's). x is clamped to
 * [-104, 89] first (e^-104 is below half the smallest denormal, e^89 above FLT_MAX); a NaN
 * fails both comparisons and goes through unchanged. */
static inline float dd_cpu_expf(float x) {
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    const float shift = 12582912.0f; /* 1.5 * 2^23 */
    const float t = x * 1.44269504088896341f + shift;
    const float n = t - shift;
    float r = x - n * 0.693145751953125f; /* ln2 high part: 16 bits, n * it is exact */
    r = r - n * 1.428606765330187e-06f;   /* ln2 - the high part */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    const int32_t ni = ti - 0x4B400000; /* n as an integer */
    const int32_t n1 = ni / 2, n2 = ni - n1;
    const int32_t b1 = (n1 + 127) * (1 << 23), b2 = (n2 + 127) * (1 << 23);
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return (p * s1) * s2;
}

/* The formulas of include/diffusion/kernels.h (dd_sigmoidf, dd_swish, dd_swish_grad), operation
 * for operation, with dd_cpu_expf for expf. */
static inline float dd_cpu_sigmoidf(float x) { return 1.0f / (1.0f + dd_cpu_expf(-x)); }
static inline float dd_cpu_swish(float x) { return x * dd_cpu_sigmoidf(x); }
static inline float dd_cpu_swish_grad(float x) {
    float s = dd_cpu_sigmoidf(x);
    return s * (1.0f + x * (1.0f - s));
}

#endif
