/* group_norm on the CPU, with the per-channel add and swish of the UNet's ConvEmbed fused in.
 *
 * x (N, C, HW), G groups of Cg = C/G channels, statistics per (n, g) over Cg*HW values:
 *   xhat = (x - mean) rstd,  z = gamma[c] xhat + beta[c] + add[n, c],  y = swish(z) or z,
 *   then y += res (a ResBlock's skip; its gradient is dy) when res is given.
 * Backward recomputes xhat and z from x, mean and rstd (nothing else is saved), with
 * dz = dy swish'(z) (or dy), and over each group of M = Cg*HW values:
 *   dgamma[c] += sum dz xhat,  dbeta[c] += sum dz,  dadd[n, c] += sum over HW of dz,
 *   dx = rstd (g - mean(g) - xhat mean(g xhat)),  g = gamma[c] dz.
 * x and dx, and res and dres, may be images at a batch stride of their own (dd_gn_shape's xs, rs:
 * the halves of a merged convolution's output); y and dy are packed.
 * Sums are accumulated in double. The op has no workspace, so nothing per element is stored:
 * with at least as many groups as threads, a thread takes whole groups (all samples), so dgamma
 * and dbeta need no reduction across threads and dz is computed once; otherwise parameter
 * gradients go in parallel over channels and dx over (n, g), computing dz twice.
 * The per-row loops are DD_CPU_CLONES functions with cpu_simd.h's swish, so they vectorise; the
 * double sums of a row go into interleaved partial sums (8 in the moments, 16 in the backward's
 * rows, whose 16 lanes fill an AVX-512 register of floats: 1.4x faster than 8 in session 16),
 * which changes their rounding only at the double level. */
/* before any include, so the inline functions of cpu_simd.h get the same options as their
 * callers (GCC will not inline across different ones): see cpu_simd.h */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#endif

#include <math.h>

#include "cpu_internal.h"
#include "cpu_simd.h"

/* Mean and biased variance of M floats in one pass, in double. The values are shifted by the
 * first one before summing, so var = (S2 - S1^2 / M) / M loses about (|mean - x0| / std)^2 *
 * 1e-16 relative: x0 is one of the values, so that is ~1e-14 even for an outlier 1000 standard
 * deviations out, and a constant offset (x = 1000 + small noise) cancels exactly in the shift.
 * Eight independent accumulators keep the adds from waiting on each other (a single chain of
 * double adds is latency-bound). */
DD_CPU_CLONES static void group_moments(const float *x, size_t M, double *mean, double *var) {
    const double x0 = x[0];
    double s1[8] = {0}, s2[8] = {0};
    size_t i = 0;
    for (; i + 8 <= M; i += 8)
        for (int k = 0; k < 8; k++) {
            const double d = (double)x[i + k] - x0;
            s1[k] += d;
            s2[k] += d * d;
        }
    for (; i < M; i++) {
        const double d = (double)x[i] - x0;
        s1[0] += d;
        s2[0] += d * d;
    }
    double a = 0.0, b = 0.0;
    for (int k = 0; k < 8; k++) a += s1[k], b += s2[k];
    const double dm = a / (double)M;
    *mean = x0 + dm;
    double v = b / (double)M - dm * dm;
    *var = v > 0.0 ? v : 0.0;
}

/* one channel's row: y = swish(gm xhat + sh) or gm xhat + sh, then + res when res is given */
DD_CPU_CLONES static void gn_row(float *y, const float *x, const float *res, int HW, float m,
                                 float r, float gm, float sh, int swish) {
    if (swish && res) {
        for (int p = 0; p < HW; p++) y[p] = dd_cpu_swish(gm * ((x[p] - m) * r) + sh) + res[p];
    } else if (swish) {
        for (int p = 0; p < HW; p++) y[p] = dd_cpu_swish(gm * ((x[p] - m) * r) + sh);
    } else if (res) {
        for (int p = 0; p < HW; p++) y[p] = (gm * ((x[p] - m) * r) + sh) + res[p];
    } else {
        for (int p = 0; p < HW; p++) y[p] = gm * ((x[p] - m) * r) + sh;
    }
}

int dd_cpu_group_norm_forward(float *y, float *mean, float *rstd, const float *x,
                              const float *gamma, const float *beta, const float *add,
                              const float *res, const dd_gn_shape *s) {
    const int N = s->N, C = s->C, G = s->G, HW = s->HW, Cg = C / G;
    const size_t M = (size_t)Cg * HW; /* values per group */
    const size_t xs = dd_gn_xs(s), rs = dd_gn_rs(s);
#pragma omp parallel for schedule(static) if ((size_t)N * C * HW > DD_CPU_PAR_MIN)
    for (int ng = 0; ng < N * G; ng++) {
        const int n = ng / G, g = ng % G;
        const float *xg = x + (size_t)n * xs + (size_t)g * Cg * HW;
        double mu, var;
        group_moments(xg, M, &mu, &var);
        float m = (float)mu;
        float r = (float)(1.0 / sqrt(var + (double)s->eps));
        mean[ng] = m;
        rstd[ng] = r;
        for (int cc = 0; cc < Cg; cc++) {
            const int c = g * Cg + cc;
            const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
            const size_t o = ((size_t)n * C + (size_t)c) * HW, oc = (size_t)c * HW;
            gn_row(y + o, x + (size_t)n * xs + oc, res ? res + (size_t)n * rs + oc : NULL, HW, m, r,
                   gamma[c], sh, s->swish);
        }
    }
    return 0;
}

/* One channel's row of the backward: recompute z from x, dz = dL/dz (dy through swish when
 * fused); *sn = sum dz, *sx = sum dz xhat, and dx += r gm dz when dx is not NULL. Inlined with
 * constant swish and dx so each of the four variants is a loop of its own. */
static inline __attribute__((always_inline)) void
gn_bwd_body(float *dx, const float *x, const float *dy, int HW, float m, float r, float gm,
            float sh, int swish, double *sn_out, double *sx_out) {
    double sn[16] = {0}, sx[16] = {0};
    int p = 0;
    for (; p + 16 <= HW; p += 16)
        for (int k = 0; k < 16; k++) {
            const float xh = (x[p + k] - m) * r;
            const float dz = swish ? dy[p + k] * dd_cpu_swish_grad(gm * xh + sh) : dy[p + k];
            sn[k] += dz;
            sx[k] += (double)dz * xh;
            if (dx) dx[p + k] += r * (gm * dz);
        }
    for (; p < HW; p++) {
        const float xh = (x[p] - m) * r;
        const float dz = swish ? dy[p] * dd_cpu_swish_grad(gm * xh + sh) : dy[p];
        sn[0] += dz;
        sx[0] += (double)dz * xh;
        if (dx) dx[p] += r * (gm * dz);
    }
    double a = 0.0, b = 0.0;
    for (int k = 0; k < 16; k++) a += sn[k], b += sx[k];
    *sn_out = a;
    *sx_out = b;
}

DD_CPU_CLONES static void gn_bwd_row(float *dx, const float *x, const float *dy, int HW, float m,
                                     float r, float gm, float sh, int swish, double *sn,
                                     double *sx) {
    if (swish) {
        if (dx)
            gn_bwd_body(dx, x, dy, HW, m, r, gm, sh, 1, sn, sx);
        else
            gn_bwd_body(NULL, x, dy, HW, m, r, gm, sh, 1, sn, sx);
    } else {
        if (dx)
            gn_bwd_body(dx, x, dy, HW, m, r, gm, sh, 0, sn, sx);
        else
            gn_bwd_body(NULL, x, dy, HW, m, r, gm, sh, 0, sn, sx);
    }
}

/* dx for one (n, g) once the group sums are known: the part that depends on dz was already added
 * (dx += rstd gamma dz while the sums were taken, so dz, and swish's exp, is computed once);
 * what remains is dx -= rstd (mean(g) + xhat mean(g xhat)). */
DD_CPU_CLONES static void gn_dx_finish(float *dx, const float *x, float m, float r, double s1,
                                       double s2, size_t M) {
    const float a1 = (float)(s1 / (double)M), a2 = (float)(s2 / (double)M);
    for (size_t i = 0; i < M; i++) {
        const float xh = (x[i] - m) * r;
        dx[i] -= r * (a1 + xh * a2);
    }
}

size_t dd_cpu_group_norm_workspace(const dd_gn_shape *s) {
    (void)s;
    return 0;
}

int dd_cpu_group_norm_backward(float *dx, float *dgamma, float *dbeta, float *dadd, float *dres,
                               const float *dy, const float *x, const float *mean,
                               const float *rstd, const float *gamma, const float *beta,
                               const float *add, const dd_gn_shape *s, void *ws) {
    (void)ws; /* none needed */
    const int N = s->N, C = s->C, G = s->G, HW = s->HW, Cg = C / G;
    const size_t M = (size_t)Cg * HW;
    const int par = (size_t)N * C * HW > DD_CPU_PAR_MIN;
    const int threads = par ? omp_get_max_threads() : 1;
    const size_t xs = dd_gn_xs(s), rs = dd_gn_rs(s), CHW = (size_t)C * HW;
    if (dres) { /* the residual is added after everything else: its gradient is dy */
#pragma omp parallel for schedule(static) if (par)
        for (int n = 0; n < N; n++) {
            float *d = dres + (size_t)n * rs;
            const float *e = dy + (size_t)n * CHW;
            for (size_t i = 0; i < CHW; i++) d[i] += e[i];
        }
    }

    if (G >= threads) {
        /* Enough groups to go round: a thread owns group g for every sample, hence its channels'
         * dgamma and dbeta too, and each element's dz is computed once. */
#pragma omp parallel for schedule(static) if (par)
        for (int g = 0; g < G; g++) {
            double pg[Cg], pb[Cg]; /* this group's dgamma, dbeta sums over the batch */
            for (int cc = 0; cc < Cg; cc++) pg[cc] = pb[cc] = 0.0;
            for (int n = 0; n < N; n++) {
                const float m = mean[n * G + g], r = rstd[n * G + g];
                const size_t o = (size_t)n * CHW + (size_t)g * Cg * HW; /* in dy */
                const size_t ox = (size_t)n * xs + (size_t)g * Cg * HW; /* in x and dx */
                double s1 = 0.0, s2 = 0.0; /* sums of gamma dz and gamma dz xhat */
                for (int cc = 0; cc < Cg; cc++) {
                    const int c = g * Cg + cc;
                    const float gm = gamma[c];
                    const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
                    const size_t oc = (size_t)cc * HW;
                    double sn, sx;
                    gn_bwd_row(dx ? dx + ox + oc : NULL, x + ox + oc, dy + o + oc, HW, m, r, gm,
                               sh, s->swish, &sn, &sx);
                    pg[cc] += sx;
                    pb[cc] += sn;
                    if (dadd) dadd[(size_t)n * C + c] += (float)sn;
                    s1 += gm * sn;
                    s2 += gm * sx;
                }
                if (dx) gn_dx_finish(dx + ox, x + ox, m, r, s1, s2, M);
            }
            for (int cc = 0; cc < Cg; cc++) {
                if (dgamma) dgamma[g * Cg + cc] += (float)pg[cc];
                if (dbeta) dbeta[g * Cg + cc] += (float)pb[cc];
            }
        }
        return 0;
    }

    /* Fewer groups than threads: the parameter gradients in parallel over channels, then dx in
     * parallel over (n, g); dz is computed in each of the two passes. */
    if (dgamma || dbeta || dadd) {
#pragma omp parallel for schedule(static) if (par)
        for (int c = 0; c < C; c++) {
            const int g = c / Cg;
            double sg = 0.0, sb = 0.0;
            for (int n = 0; n < N; n++) {
                const float m = mean[n * G + g], r = rstd[n * G + g];
                const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
                double sn, sx;
                gn_bwd_row(NULL, x + (size_t)n * xs + (size_t)c * HW, dy + (size_t)n * CHW +
                           (size_t)c * HW, HW, m, r, gamma[c], sh, s->swish, &sn, &sx);
                sg += sx;
                sb += sn;
                if (dadd) dadd[(size_t)n * C + c] += (float)sn;
            }
            if (dgamma) dgamma[c] += (float)sg;
            if (dbeta) dbeta[c] += (float)sb;
        }
    }
    if (!dx) return 0;

#pragma omp parallel for schedule(static) if (par)
    for (int ng = 0; ng < N * G; ng++) {
        const int n = ng / G, g = ng % G;
        const float m = mean[ng], r = rstd[ng];
        const size_t o = (size_t)n * CHW + (size_t)g * Cg * HW; /* in dy */
        const size_t ox = (size_t)n * xs + (size_t)g * Cg * HW; /* in x and dx */
        double s1 = 0.0, s2 = 0.0;
        for (int cc = 0; cc < Cg; cc++) {
            const int c = g * Cg + cc;
            const float gm = gamma[c];
            const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
            const size_t oc = (size_t)cc * HW;
            double sn, sx;
            gn_bwd_row(dx + ox + oc, x + ox + oc, dy + o + oc, HW, m, r, gm, sh, s->swish, &sn,
                       &sx);
            s1 += gm * sn;
            s2 += gm * sx;
        }
        gn_dx_finish(dx + ox, x + ox, m, r, s1, s2, M);
    }
    return 0;
}
