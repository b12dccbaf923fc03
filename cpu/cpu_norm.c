/* group_norm on the CPU, with the per-channel add and swish of the UNet's ConvEmbed fused in.
 *
 * x (N, C, HW), G groups of Cg = C/G channels, statistics per (n, g) over Cg*HW values:
 *   xhat = (x - mean) rstd,  z = gamma[c] xhat + beta[c] + add[n, c],  y = swish(z) or z.
 * Backward recomputes xhat and z from x, mean and rstd (nothing else is saved), with
 * dz = dy swish'(z) (or dy), and over each group of M = Cg*HW values:
 *   dgamma[c] += sum dz xhat,  dbeta[c] += sum dz,  dadd[n, c] += sum over HW of dz,
 *   dx = rstd (g - mean(g) - xhat mean(g xhat)),  g = gamma[c] dz.
 * Sums are accumulated in double. The op has no workspace, so nothing per element is stored:
 * with at least as many groups as threads, a thread takes whole groups (all samples), so dgamma
 * and dbeta need no reduction across threads and dz is computed once; otherwise parameter
 * gradients go in parallel over channels and dx over (n, g), computing dz twice. */
#include <math.h>

#include "cpu_internal.h"
#include "diffusion/kernels.h"

/* Mean and biased variance of M floats in one pass, in double. The values are shifted by the
 * first one before summing, so var = (S2 - S1^2 / M) / M loses about (|mean - x0| / std)^2 *
 * 1e-16 relative: x0 is one of the values, so that is ~1e-14 even for an outlier 1000 standard
 * deviations out, and a constant offset (x = 1000 + small noise) cancels exactly in the shift.
 * Eight independent accumulators keep the adds from waiting on each other (a single chain of
 * double adds is latency-bound). */
static void group_moments(const float *x, size_t M, double *mean, double *var) {
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

int dd_cpu_group_norm_forward(float *y, float *mean, float *rstd, const float *x,
                              const float *gamma, const float *beta, const float *add,
                              const dd_gn_shape *s) {
    const int N = s->N, C = s->C, G = s->G, HW = s->HW, Cg = C / G;
    const size_t M = (size_t)Cg * HW; /* values per group */
#pragma omp parallel for schedule(static) if ((size_t)N * C * HW > DD_CPU_PAR_MIN)
    for (int ng = 0; ng < N * G; ng++) {
        const int n = ng / G, g = ng % G;
        const float *xg = x + ((size_t)n * C + (size_t)g * Cg) * HW;
        float *yg = y + ((size_t)n * C + (size_t)g * Cg) * HW;
        double mu, var;
        group_moments(xg, M, &mu, &var);
        float m = (float)mu;
        float r = (float)(1.0 / sqrt(var + (double)s->eps));
        mean[ng] = m;
        rstd[ng] = r;
        for (int cc = 0; cc < Cg; cc++) {
            const int c = g * Cg + cc;
            const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
            const float *xc = xg + (size_t)cc * HW;
            float *yc = yg + (size_t)cc * HW;
            if (s->swish) {
                for (int p = 0; p < HW; p++) yc[p] = dd_swish(gamma[c] * ((xc[p] - m) * r) + sh);
            } else {
                for (int p = 0; p < HW; p++) yc[p] = gamma[c] * ((xc[p] - m) * r) + sh;
            }
        }
    }
    return 0;
}

/* dz for one channel row: recompute z from x and return dL/dz (dy through swish when fused) */
static inline float gn_dz(float dy, float xhat, float gm, float sh, int swish) {
    if (!swish) return dy;
    return dy * dd_swish_grad(gm * xhat + sh);
}

/* dx for one (n, g) once the group sums are known: the part that depends on dz was already added
 * (dx += rstd gamma dz while the sums were taken, so dz, and swish's exp, is computed once);
 * what remains is dx -= rstd (mean(g) + xhat mean(g xhat)). */
static void gn_dx_finish(float *dx, const float *x, float m, float r, double s1, double s2,
                         size_t M) {
    const float a1 = (float)(s1 / (double)M), a2 = (float)(s2 / (double)M);
    for (size_t i = 0; i < M; i++) {
        const float xh = (x[i] - m) * r;
        dx[i] -= r * (a1 + xh * a2);
    }
}

int dd_cpu_group_norm_backward(float *dx, float *dgamma, float *dbeta, float *dadd,
                               const float *dy, const float *x, const float *mean,
                               const float *rstd, const float *gamma, const float *beta,
                               const float *add, const dd_gn_shape *s) {
    const int N = s->N, C = s->C, G = s->G, HW = s->HW, Cg = C / G;
    const size_t M = (size_t)Cg * HW;
    const int par = (size_t)N * C * HW > DD_CPU_PAR_MIN;
    const int threads = par ? omp_get_max_threads() : 1;

    if (G >= threads) {
        /* Enough groups to go round: a thread owns group g for every sample, hence its channels'
         * dgamma and dbeta too, and each element's dz is computed once. */
#pragma omp parallel for schedule(static) if (par)
        for (int g = 0; g < G; g++) {
            double pg[Cg], pb[Cg]; /* this group's dgamma, dbeta sums over the batch */
            for (int cc = 0; cc < Cg; cc++) pg[cc] = pb[cc] = 0.0;
            for (int n = 0; n < N; n++) {
                const float m = mean[n * G + g], r = rstd[n * G + g];
                const size_t o = ((size_t)n * C + (size_t)g * Cg) * HW;
                double s1 = 0.0, s2 = 0.0; /* sums of gamma dz and gamma dz xhat */
                for (int cc = 0; cc < Cg; cc++) {
                    const int c = g * Cg + cc;
                    const float gm = gamma[c];
                    const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
                    const size_t oc = o + (size_t)cc * HW;
                    double sn = 0.0, sx = 0.0;
                    for (int p = 0; p < HW; p++) {
                        const float xh = (x[oc + p] - m) * r;
                        const float dz = gn_dz(dy[oc + p], xh, gm, sh, s->swish);
                        sn += dz;
                        sx += (double)dz * xh;
                        if (dx) dx[oc + p] += r * (gm * dz);
                    }
                    pg[cc] += sx;
                    pb[cc] += sn;
                    if (dadd) dadd[(size_t)n * C + c] += (float)sn;
                    s1 += gm * sn;
                    s2 += gm * sx;
                }
                if (dx) gn_dx_finish(dx + o, x + o, m, r, s1, s2, M);
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
                const size_t o = ((size_t)n * C + c) * HW;
                double sn = 0.0;
                for (int p = 0; p < HW; p++) {
                    const float xh = (x[o + p] - m) * r;
                    const float dz = gn_dz(dy[o + p], xh, gamma[c], sh, s->swish);
                    sn += dz;
                    sg += (double)dz * xh;
                }
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
        const size_t o = ((size_t)n * C + (size_t)g * Cg) * HW;
        double s1 = 0.0, s2 = 0.0;
        for (int cc = 0; cc < Cg; cc++) {
            const int c = g * Cg + cc;
            const float gm = gamma[c];
            const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
            const size_t oc = o + (size_t)cc * HW;
            for (int p = 0; p < HW; p++) {
                const float xh = (x[oc + p] - m) * r;
                const float gdz = gm * gn_dz(dy[oc + p], xh, gm, sh, s->swish);
                s1 += gdz;
                s2 += (double)gdz * xh;
                dx[oc + p] += r * gdz;
            }
        }
        gn_dx_finish(dx + o, x + o, m, r, s1, s2, M);
    }
    return 0;
}
