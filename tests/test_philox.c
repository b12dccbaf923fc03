/* Philox 4x32-10 (include/diffusion/philox.h): Random123's known answers (SPEC.md, last section),
 * then the distributions drawn from it. Statistical bounds are 5 standard errors of the
 * estimate over n = 10^6 draws (a correct generator fails one of these checks with probability
 * around 10^-6 each); every stream is fixed, so the test is deterministic. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "diffusion/philox.h"
#include "testutil.h"

#define NDRAW 1000000
#define NSE 5.0 /* standard errors allowed */

static void test_known_answers(void) {
    /* counter[4] key[2] -> output[4], as Random123's kat_vectors list them */
    static const uint32_t kat[3][10] = {
        {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x6627e8d5,
         0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int v = 0; v < 3; v++) {
        uint32_t out[4];
        dd_philox4x32_10(kat[v], kat[v] + 4, out);
        for (int k = 0; k < 4; k++)
            CHECKF(out[k] == kat[v][6 + k], "vector %d word %d: %08x, expected %08x", v, k, out[k],
                   kat[v][6 + k]);
        /* the same through dd_philox_at's (seed, stream, i) addressing: ctr = (i lo, i hi,
         * stream lo, stream hi), key = (seed lo, seed hi) */
        uint64_t i = (uint64_t)kat[v][1] << 32 | kat[v][0];
        uint64_t stream = (uint64_t)kat[v][3] << 32 | kat[v][2];
        uint64_t seed = (uint64_t)kat[v][5] << 32 | kat[v][4];
        uint32_t out2[4];
        dd_philox_at(seed, stream, i, out2);
        CHECKF(memcmp(out, out2, sizeof out) == 0, "vector %d through dd_philox_at", v);
    }
}

static void test_uniform(void) {
    double s = 0, s2 = 0;
    float lo = 1, hi = 0;
    for (uint64_t i = 0; i < NDRAW; i++) {
        float u = dd_philox_uniform(42, 7, i);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
        s += u;
        s2 += ((double)u - 0.5) * ((double)u - 0.5);
    }
    CHECKF(lo > 0 && hi < 1, "uniform outside (0, 1): min %g max %g", lo, hi);
    CHECKF(lo < 1e-5 && hi > 1 - 1e-5, "uniform does not cover (0, 1): min %g max %g", lo, hi);
    double mean = s / NDRAW, var = s2 / NDRAW;
    /* mean: sd 1/sqrt(12); var of (u - 1/2)^2 is 1/80 - 1/144 */
    double se_mean = sqrt(1.0 / 12 / NDRAW), se_var = sqrt((1.0 / 80 - 1.0 / 144) / NDRAW);
    CHECKF(fabs(mean - 0.5) < NSE * se_mean, "uniform mean %.6f (bound %.2g)", mean, NSE * se_mean);
    CHECKF(fabs(var - 1.0 / 12) < NSE * se_var, "uniform variance %.6f vs %.6f (bound %.2g)", var,
           1.0 / 12, NSE * se_var);
    /* the ends of the grid: every 32-bit word maps strictly inside (0, 1), in order */
    CHECK(dd_u32_to_unit(0) == 0.5f / 8388608.0f);
    CHECKF(dd_u32_to_unit(0xffffffffu) < 1.0f, "dd_u32_to_unit(0xffffffff) = %.9g",
           dd_u32_to_unit(0xffffffffu));
    CHECK(dd_u32_to_unit(0xffffffffu) == 1.0f - 0.5f / 8388608.0f);
    int monotone = 1;
    for (uint64_t w = 0; w < 0x100000000ull; w += 0x1ff)
        monotone &= dd_u32_to_unit((uint32_t)w) > 0 && dd_u32_to_unit((uint32_t)w) < 1 &&
                    dd_u32_to_unit((uint32_t)w) <= dd_u32_to_unit((uint32_t)(w + 0x1ff < 0x100000000ull ? w + 0x1ff : w));
    CHECK(monotone);
}

static void test_normal(void) {
    /* P(X < q) for a few quantiles */
    static const double q[5] = {-1.959963985, -1.0, 0.0, 1.0, 1.959963985};
    static const double p[5] = {0.025, 0.158655254, 0.5, 0.841344746, 0.975};
    long below[5] = {0};
    double s = 0, s2 = 0, s4 = 0;
    long tail4 = 0; /* |x| > 4 */
    int finite = 1;
    for (uint64_t i = 0; i < NDRAW; i++) {
        double x = dd_philox_normal(2024, 3, i);
        if (!isfinite(x)) finite = 0;
        s += x;
        s2 += x * x;
        s4 += x * x * x * x;
        for (int k = 0; k < 5; k++) below[k] += x < q[k];
        tail4 += fabs(x) > 4;
    }
    CHECK(finite);
    double mean = s / NDRAW, m2 = s2 / NDRAW, m4 = s4 / NDRAW;
    /* sd of x is 1, of x^2 sqrt(2), of x^4 sqrt(E x^8 - 9) = sqrt(105 - 9) */
    CHECKF(fabs(mean) < NSE * sqrt(1.0 / NDRAW), "normal mean %.5f", mean);
    CHECKF(fabs(m2 - 1) < NSE * sqrt(2.0 / NDRAW), "normal second moment %.5f", m2);
    CHECKF(fabs(m4 - 3) < NSE * sqrt(96.0 / NDRAW), "normal fourth moment %.4f", m4);
    for (int k = 0; k < 5; k++) {
        double f = (double)below[k] / NDRAW, se = sqrt(p[k] * (1 - p[k]) / NDRAW);
        CHECKF(fabs(f - p[k]) < NSE * se, "P(x < %.3f) = %.5f, expected %.5f (bound %.2g)", q[k],
               f, p[k], NSE * se);
    }
    /* P(|x| > 4) = 6.334e-5: about 63 of 10^6 (Poisson sd ~8) */
    CHECKF(tail4 > 63 - 5 * 8 && tail4 < 63 + 5 * 8, "%ld draws beyond |4|, expected ~63", tail4);
}

/* Pearson correlation of two uniform sequences and the count of identical values. */
static void compare_streams(const char *what, uint64_t seed_a, uint64_t stream_a, uint64_t off_a,
                            uint64_t seed_b, uint64_t stream_b, uint64_t off_b) {
    const int n = 100000;
    double sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
    int same = 0;
    for (int i = 0; i < n; i++) {
        double a = dd_philox_uniform(seed_a, stream_a, off_a + (uint64_t)i);
        double b = dd_philox_uniform(seed_b, stream_b, off_b + (uint64_t)i);
        same += a == b;
        sa += a, sb += b, sab += a * b, saa += a * a, sbb += b * b;
    }
    double cov = sab / n - (sa / n) * (sb / n);
    double corr = cov / sqrt((saa / n - (sa / n) * (sa / n)) * (sbb / n - (sb / n) * (sb / n)));
    /* equal by chance: n / 2^24 ~ 0.006 expected */
    CHECKF(same < 3, "%s: %d identical values of %d", what, same, n);
    CHECKF(fabs(corr) < NSE / sqrt(n), "%s: correlation %.4f", what, corr);
}

static void test_streams(void) {
    compare_streams("stream 0 vs 1", 1, 0, 0, 1, 1, 0);
    compare_streams("seed 1 vs 2", 1, 0, 0, 2, 0, 0);
    compare_streams("seed high word", 1, 0, 0, 1 + (1ull << 32), 0, 0);
    compare_streams("stream high word", 1, 5, 0, 1, 5 + (1ull << 32), 0);
    compare_streams("counter high word", 1, 0, 0, 1, 0, 1ull << 32);
    compare_streams("neighbouring counters", 9, 0, 0, 9, 0, 1);
    /* and the same address gives the same value */
    CHECK(dd_philox_normal(5, 6, 7) == dd_philox_normal(5, 6, 7));
    CHECK(dd_philox_below(5, 6, 7, 1000) == dd_philox_below(5, 6, 7, 1000));
}

static void test_below(void) {
    enum { K = 10 };
    long count[K] = {0};
    int in_range = 1;
    for (uint64_t i = 0; i < NDRAW; i++) {
        uint32_t v = dd_philox_below(77, 1, i, K);
        if (v >= K) in_range = 0;
        else count[v]++;
    }
    CHECK(in_range);
    double chi2 = 0, e = (double)NDRAW / K;
    for (int k = 0; k < K; k++) chi2 += (count[k] - e) * (count[k] - e) / e;
    /* chi-square with 9 degrees of freedom: mean 9, sd sqrt(18) */
    CHECKF(chi2 < 9 + NSE * sqrt(18.0), "dd_philox_below(10) chi-square %.1f", chi2);
    /* n = 1 is always 0; a large n stays in range and reaches its upper half */
    int ok1 = 1, okbig = 1, upper = 0;
    const uint32_t big = 3000000000u;
    for (uint64_t i = 0; i < 10000; i++) {
        ok1 &= dd_philox_below(3, 4, i, 1) == 0;
        uint32_t v = dd_philox_below(3, 4, i, big);
        okbig &= v < big;
        upper += v >= big / 2;
    }
    CHECK(ok1 && okbig);
    CHECKF(upper > 5000 - 250 && upper < 5000 + 250, "%d of 10000 in the upper half", upper);
}

int main(void) {
    test_known_answers();
    test_uniform();
    test_normal();
    test_streams();
    test_below();
    return tu_finish();
}
