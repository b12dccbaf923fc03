/* Elementwise and data-movement ops on the CPU: activations, add, channel concat, nearest 2x
 * upsample, 2x2 max pool, embedding lookup. The activation formulas are the shared ones of
 * include/diffusion/kernels.h. */
#include <string.h>

#include "cpu_internal.h"
#include "diffusion/kernels.h"

/* One loop per activation so the switch is outside the loop and each body vectorises alone. */
#define ACT_LOOP(expr)                                                                            \
    do {                                                                                          \
        _Pragma("omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN)")                      \
        for (size_t i = 0; i < n; i++) expr;                                                      \
    } while (0)

int dd_cpu_act_forward(float *y, const float *x, size_t n, dd_act act) {
    switch (act) {
    case DD_ACT_RELU: ACT_LOOP(y[i] = dd_relu(x[i])); break;
    case DD_ACT_SWISH: ACT_LOOP(y[i] = dd_swish(x[i])); break;
    case DD_ACT_GELU_TANH: ACT_LOOP(y[i] = dd_gelu_tanh(x[i])); break;
    case DD_ACT_GELU_ERF: ACT_LOOP(y[i] = dd_gelu_erf(x[i])); break;
    case DD_ACT_COUNT: break;
    }
    return 0;
}

int dd_cpu_act_backward(float *dx, const float *dy, const float *x, size_t n, dd_act act) {
    if (!dx) return 0;
    switch (act) {
    case DD_ACT_RELU: ACT_LOOP(dx[i] += dy[i] * dd_relu_grad(x[i])); break;
    case DD_ACT_SWISH: ACT_LOOP(dx[i] += dy[i] * dd_swish_grad(x[i])); break;
    case DD_ACT_GELU_TANH: ACT_LOOP(dx[i] += dy[i] * dd_gelu_tanh_grad(x[i])); break;
    case DD_ACT_GELU_ERF: ACT_LOOP(dx[i] += dy[i] * dd_gelu_erf_grad(x[i])); break;
    case DD_ACT_COUNT: break;
    }
    return 0;
}

int dd_cpu_add_forward(float *y, const float *a, const float *b, size_t n) {
    ACT_LOOP(y[i] = a[i] + b[i]);
    return 0;
}

/* both gradients in one OpenMP region: a region costs a thread wake-up (~45 us under
 * OMP_WAIT_POLICY=passive on the 2-core development machine); the two loops split alike */
int dd_cpu_add_backward(float *da, float *db, const float *dy, size_t n) {
#pragma omp parallel if (n > DD_CPU_PAR_MIN)
    {
        if (da) {
#pragma omp for schedule(static) nowait
            for (size_t i = 0; i < n; i++) da[i] += dy[i];
        }
        if (db) {
#pragma omp for schedule(static) nowait
            for (size_t i = 0; i < n; i++) db[i] += dy[i];
        }
    }
    return 0;
}

/* a (N, Ca, HW), b (N, Cb, HW) -> y (N, Ca + Cb, HW): per sample, a's block then b's block */
int dd_cpu_concat_forward(float *y, const float *a, const float *b, int N, int Ca, int Cb, int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static) if ((size_t)N * (na + nb) > DD_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        memcpy(y + n * (na + nb), a + n * na, na * sizeof(float));
        memcpy(y + n * (na + nb) + na, b + n * nb, nb * sizeof(float));
    }
    return 0;
}

int dd_cpu_concat_backward(float *da, float *db, const float *dy, int N, int Ca, int Cb, int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static) if ((size_t)N * (na + nb) > DD_CPU_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *d = dy + n * (na + nb);
        if (da)
            for (size_t i = 0; i < na; i++) da[n * na + i] += d[i];
        if (db)
            for (size_t i = 0; i < nb; i++) db[n * nb + i] += d[na + i];
    }
    return 0;
}

/* x (N, C, H, W) -> y (N, C, 2H, 2W), y[2i + a][2j + b] = x[i][j] */
int dd_cpu_upsample2x_forward(float *y, const float *x, int N, int C, int H, int W) {
    const int NC = N * C, W2 = 2 * W;
#pragma omp parallel for schedule(static) if ((size_t)NC * H * W > DD_CPU_PAR_MIN)
    for (int nc = 0; nc < NC; nc++) {
        const float *xp = x + (size_t)nc * H * W;
        float *yp = y + (size_t)nc * 4 * H * W;
        for (int i = 0; i < H; i++) {
            float *r0 = yp + (size_t)(2 * i) * W2;
            for (int j = 0; j < W; j++) r0[2 * j] = r0[2 * j + 1] = xp[(size_t)i * W + j];
            memcpy(r0 + W2, r0, (size_t)W2 * sizeof(float));
        }
    }
    return 0;
}

/* dx[i][j] += the four dy values it was copied to */
int dd_cpu_upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    if (!dx) return 0;
    const int NC = N * C, W2 = 2 * W;
#pragma omp parallel for schedule(static) if ((size_t)NC * H * W > DD_CPU_PAR_MIN)
    for (int nc = 0; nc < NC; nc++) {
        float *xp = dx + (size_t)nc * H * W;
        const float *yp = dy + (size_t)nc * 4 * H * W;
        for (int i = 0; i < H; i++) {
            const float *r0 = yp + (size_t)(2 * i) * W2, *r1 = r0 + W2;
            for (int j = 0; j < W; j++)
                xp[(size_t)i * W + j] += (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
    return 0;
}

/* Index (0..3, row-major in the window) of the first maximum of a 2x2 window at row pointer r0
 * and r1 = the next row; a later value wins only when strictly greater. */
static inline int argmax4(const float *r0, const float *r1, int j) {
    float v[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
    int k = 0;
    for (int q = 1; q < 4; q++)
        if (v[q] > v[k]) k = q;
    return k;
}

/* x (N, C, H, W) -> y (N, C, H/2, W/2), floor: an odd last row or column is dropped */
int dd_cpu_maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W) {
    const int NC = N * C, Ho = H / 2, Wo = W / 2;
#pragma omp parallel for schedule(static) if ((size_t)NC * H * W > DD_CPU_PAR_MIN)
    for (int nc = 0; nc < NC; nc++) {
        const float *xp = x + (size_t)nc * H * W;
        float *yp = y + (size_t)nc * Ho * Wo;
        for (int i = 0; i < Ho; i++) {
            const float *r0 = xp + (size_t)(2 * i) * W, *r1 = r0 + W;
            for (int j = 0; j < Wo; j++) {
                int k = argmax4(r0, r1, j);
                yp[(size_t)i * Wo + j] = (k < 2 ? r0 : r1)[2 * j + (k & 1)];
            }
        }
    }
    return 0;
}

int dd_cpu_maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H,
                               int W) {
    if (!dx) return 0;
    const int NC = N * C, Ho = H / 2, Wo = W / 2;
#pragma omp parallel for schedule(static) if ((size_t)NC * H * W > DD_CPU_PAR_MIN)
    for (int nc = 0; nc < NC; nc++) {
        const float *xp = x + (size_t)nc * H * W;
        float *dxp = dx + (size_t)nc * H * W;
        const float *dyp = dy + (size_t)nc * Ho * Wo;
        for (int i = 0; i < Ho; i++) {
            const float *r0 = xp + (size_t)(2 * i) * W, *r1 = r0 + W;
            for (int j = 0; j < Wo; j++) {
                int k = argmax4(r0, r1, j);
                dxp[(size_t)(2 * i + (k >> 1)) * W + 2 * j + (k & 1)] += dyp[(size_t)i * Wo + j];
            }
        }
    }
    return 0;
}

/* table (rows, dim), idx (N) -> y (N, dim), row idx[n] - base. Indices were validated by the
 * caller. */
int dd_cpu_embedding_forward(float *y, const float *table, const int32_t *idx, int N, int rows,
                             int dim, int base) {
    (void)rows;
    for (int n = 0; n < N; n++)
        memcpy(y + (size_t)n * dim, table + (size_t)(idx[n] - base) * dim,
               (size_t)dim * sizeof(float));
    return 0;
}

/* dtable[idx[n] - base] += dy[n]; serial, because two samples may share a row */
int dd_cpu_embedding_backward(float *dtable, const float *dy, const int32_t *idx, int N, int rows,
                              int dim, int base) {
    (void)rows;
    if (!dtable) return 0;
    for (int n = 0; n < N; n++) {
        float *d = dtable + (size_t)(idx[n] - base) * dim;
        const float *g = dy + (size_t)n * dim;
        for (int i = 0; i < dim; i++) d[i] += g[i];
    }
    return 0;
}
