/* conv2d on the CPU: im2col + sgemm, any K, stride and pad.
 *
 * Per sample n (x_n: (Cin, H, W), y_n: (Cout, HoWo)):
 *   col (Cin*K*K, HoWo) = im2col(x_n)
 *   y_n = w (Cout, Cin*K*K) @ col + b
 * backward:
 *   dw += dy_n (Cout, HoWo) @ col^T;  db += sum over positions of dy_n
 *   dcol = w^T @ dy_n;  dx_n += col2im(dcol)
 * A 1x1 convolution with stride 1 and no padding needs no im2col: col is x_n itself.
 *
 * Workspace (conv2d_workspace): one slot per thread, each a col buffer (Cin*K*K, HoWo) and a
 * private dw (Cout, Cin*K*K) that the batch-parallel backward sums into dw at the end. */
#include <cblas.h>
#include <stddef.h>
#include <string.h>

#include "cpu_internal.h"

static int is_pointwise(const dd_conv_shape *s) { return s->K == 1 && s->stride == 1 && s->pad == 0; }

static size_t col_floats(const dd_conv_shape *s) {
    if (is_pointwise(s)) return 0;
    return (size_t)s->Cin * s->K * s->K * (size_t)s->Ho * s->Wo;
}

static size_t slot_bytes(const dd_conv_shape *s) {
    return dd_cpu_round(col_floats(s) * sizeof(float)) +
           dd_cpu_round((size_t)s->Cout * s->Cin * s->K * s->K * sizeof(float));
}

size_t dd_cpu_conv2d_workspace(const dd_conv_shape *s) {
    return (size_t)dd_cpu_slots(s->N) * slot_bytes(s);
}

static float *slot_col(const dd_conv_shape *s, void *ws, int slot) {
    return (float *)((char *)ws + (size_t)slot * slot_bytes(s));
}
static float *slot_dw(const dd_conv_shape *s, void *ws, int slot) {
    return (float *)((char *)ws + (size_t)slot * slot_bytes(s) +
                     dd_cpu_round(col_floats(s) * sizeof(float)));
}

/* The output columns ow for which input column iw = ow*stride - pad + kj lies in [0, W):
 * [*lo, *hi). */
static void valid_range(int kj, int stride, int pad, int W, int Wo, int *lo, int *hi) {
    int a = pad - kj; /* need ow*stride >= a */
    int l = a <= 0 ? 0 : (a + stride - 1) / stride;
    int b = W - 1 + pad - kj; /* need ow*stride <= b */
    int h = b < 0 ? 0 : b / stride + 1;
    if (h > Wo) h = Wo;
    if (l > h) l = h;
    *lo = l, *hi = h;
}

/* im2col for stride 1 with Wo == W ("same" width, 2 pad = K - 1, the UNet's 3x3 pad 1): each
 * (c, ki, kj) block of col is then the image shifted by the constant flat offset
 * (ki - pad) W + (kj - pad), so the valid rows are one memcpy, after which the few columns that
 * wrapped around a row end (ow < lo or ow >= hi) are zeroed. Rows of short images as separate
 * copies cost one library call per 28 floats; this is one per block. */
static void im2col_same_width(float *col, const float *x, const dd_conv_shape *s) {
    const int K = s->K, pad = s->pad, H = s->H, W = s->W, Ho = s->Ho;
    const ptrdiff_t HW = (ptrdiff_t)H * W;
    for (int c = 0; c < s->Cin; c++) {
        const float *xc = x + (size_t)c * HW;
        for (int ki = 0; ki < K; ki++) {
            /* output rows whose input row oh - pad + ki lies in [0, H) */
            int oh_lo = pad - ki > 0 ? pad - ki : 0;
            int oh_hi = H + pad - ki < Ho ? H + pad - ki : Ho;
            if (oh_hi < oh_lo) oh_hi = oh_lo;
            for (int kj = 0; kj < K; kj++) {
                float *row = col + ((size_t)(c * K + ki) * K + kj) * Ho * W;
                const ptrdiff_t delta = (ptrdiff_t)(ki - pad) * W + (kj - pad);
                int lo, hi;
                valid_range(kj, 1, pad, W, W, &lo, &hi);
                if (oh_lo > 0) memset(row, 0, sizeof(float) * (size_t)oh_lo * W);
                if (oh_hi < Ho) memset(row + (size_t)oh_hi * W, 0, sizeof(float) * (size_t)(Ho - oh_hi) * W);
                ptrdiff_t d0 = (ptrdiff_t)oh_lo * W, d1 = (ptrdiff_t)oh_hi * W;
                if (d0 < -delta) d0 = -delta;     /* source before the image: first row's */
                if (d1 > HW - delta) d1 = HW - delta; /* left or last row's right padding */
                if (d1 > d0) memcpy(row + d0, xc + d0 + delta, sizeof(float) * (size_t)(d1 - d0));
                for (int oh = oh_lo; oh < oh_hi; oh++) {
                    float *r = row + (size_t)oh * W;
                    for (int ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    for (int ow = hi; ow < W; ow++) r[ow] = 0.0f;
                }
            }
        }
    }
}

/* x: (Cin, H, W) -> col: (Cin*K*K, Ho*Wo); zero where the window hangs over the padding */
static void im2col(float *col, const float *x, const dd_conv_shape *s) {
    const int K = s->K, st = s->stride, pad = s->pad, H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo;
    if (st == 1 && Wo == W) {
        im2col_same_width(col, x, s);
        return;
    }
    for (int c = 0; c < s->Cin; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int ki = 0; ki < K; ki++) {
            for (int kj = 0; kj < K; kj++) {
                float *row = col + ((size_t)(c * K + ki) * K + kj) * Ho * Wo;
                int lo, hi;
                valid_range(kj, st, pad, W, Wo, &lo, &hi);
                for (int oh = 0; oh < Ho; oh++) {
                    float *r = row + (size_t)oh * Wo;
                    int ih = oh * st - pad + ki;
                    if (ih < 0 || ih >= H) {
                        memset(r, 0, sizeof(float) * Wo);
                        continue;
                    }
                    /* input index of output column ow: off + ow*st (valid for lo <= ow < hi) */
                    const ptrdiff_t off = (ptrdiff_t)ih * W - pad + kj;
                    for (int ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    if (st == 1) {
                        if (hi > lo) memcpy(r + lo, xc + off + lo, sizeof(float) * (hi - lo));
                    } else {
                        for (int ow = lo; ow < hi; ow++) r[ow] = xc[off + (ptrdiff_t)ow * st];
                    }
                    for (int ow = hi; ow < Wo; ow++) r[ow] = 0.0f;
                }
            }
        }
    }
}

/* col: (Cin*K*K, Ho*Wo) added into dx: (Cin, H, W); the exact adjoint of im2col */
static void col2im_add(float *dx, const float *col, const dd_conv_shape *s) {
    const int K = s->K, st = s->stride, pad = s->pad, H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo;
    for (int c = 0; c < s->Cin; c++) {
        float *dxc = dx + (size_t)c * H * W;
        for (int ki = 0; ki < K; ki++) {
            for (int kj = 0; kj < K; kj++) {
                const float *row = col + ((size_t)(c * K + ki) * K + kj) * Ho * Wo;
                int lo, hi;
                valid_range(kj, st, pad, W, Wo, &lo, &hi);
                for (int oh = 0; oh < Ho; oh++) {
                    int ih = oh * st - pad + ki;
                    if (ih < 0 || ih >= H) continue;
                    const float *r = row + (size_t)oh * Wo;
                    const ptrdiff_t off = (ptrdiff_t)ih * W - pad + kj;
                    for (int ow = lo; ow < hi; ow++) dxc[off + (ptrdiff_t)ow * st] += r[ow];
                }
            }
        }
    }
}

/* y_n (Cout, HoWo) = w @ col(x_n) + b */
static void forward_one(float *yn, const float *xn, const float *w, const float *b,
                        const dd_conv_shape *s, float *col) {
    const int HoWo = s->Ho * s->Wo, CKK = s->Cin * s->K * s->K;
    const float *cm = xn;
    if (!is_pointwise(s)) {
        im2col(col, xn, s);
        cm = col;
    }
    if (b) {
        for (int o = 0; o < s->Cout; o++) {
            float *r = yn + (size_t)o * HoWo;
            for (int p = 0; p < HoWo; p++) r[p] = b[o];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->Cout, HoWo, CKK, 1.0f, w, CKK, cm,
                HoWo, b ? 1.0f : 0.0f, yn, HoWo);
}

int dd_cpu_conv2d_forward(float *y, const float *x, const float *w, const float *b,
                          const dd_conv_shape *s, void *ws) {
    const size_t xs = (size_t)s->Cin * s->H * s->W, ys = (size_t)s->Cout * s->Ho * s->Wo;
    int nt = dd_cpu_batch_threads(s->N);
    if (nt == 1) {
        for (int n = 0; n < s->N; n++)
            forward_one(y + n * ys, x + n * xs, w, b, s, slot_col(s, ws, 0));
        return 0;
    }
    int prev = dd_cpu_blas_single_begin();
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
        float *col = slot_col(s, ws, tid);
        for (int n = tid; n < s->N; n += T) forward_one(y + n * ys, x + n * xs, w, b, s, col);
    }
    dd_cpu_blas_single_end(prev);
    return 0;
}

/* dw_acc += dy_n @ col^T; dx_n += col2im(w^T @ dy_n) */
static void backward_one(float *dxn, float *dw_acc, const float *dyn, const float *xn,
                         const float *w, const dd_conv_shape *s, float *col) {
    const int HoWo = s->Ho * s->Wo, CKK = s->Cin * s->K * s->K;
    const int pw = is_pointwise(s);
    if (dw_acc) {
        const float *cm = xn;
        if (!pw) {
            im2col(col, xn, s);
            cm = col;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->Cout, CKK, HoWo, 1.0f, dyn, HoWo,
                    cm, HoWo, 1.0f, dw_acc, CKK);
    }
    if (dxn) {
        if (pw) { /* dx_n is the col: accumulate straight into it */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CKK, HoWo, s->Cout, 1.0f, w, CKK,
                        dyn, HoWo, 1.0f, dxn, HoWo);
        } else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CKK, HoWo, s->Cout, 1.0f, w, CKK,
                        dyn, HoWo, 0.0f, col, HoWo);
            col2im_add(dxn, col, s);
        }
    }
}

int dd_cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, const dd_conv_shape *s, void *ws) {
    const size_t xs = (size_t)s->Cin * s->H * s->W, ys = (size_t)s->Cout * s->Ho * s->Wo;
    const size_t wn = (size_t)s->Cout * s->Cin * s->K * s->K;
    const int HoWo = s->Ho * s->Wo;

    if (db) {
        /* db[o] += sum over n, p of dy[n, o, p]; summed in double, one channel per iteration */
#pragma omp parallel for schedule(static) if ((size_t)s->N * ys > DD_CPU_PAR_MIN)
        for (int o = 0; o < s->Cout; o++) {
            double acc = 0.0;
            for (int n = 0; n < s->N; n++) {
                const float *r = dy + n * ys + (size_t)o * HoWo;
                for (int p = 0; p < HoWo; p++) acc += r[p];
            }
            db[o] += (float)acc;
        }
    }
    if (!dx && !dw) return 0;

    int nt = dd_cpu_batch_threads(s->N);
    if (nt == 1) {
        for (int n = 0; n < s->N; n++)
            backward_one(dx ? dx + n * xs : NULL, dw, dy + n * ys, x + n * xs, w, s,
                         slot_col(s, ws, 0));
        return 0;
    }
    int prev = dd_cpu_blas_single_begin();
    int used = nt;
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
#pragma omp single
        used = T;
        float *col = slot_col(s, ws, tid);
        float *dwp = dw ? slot_dw(s, ws, tid) : NULL; /* this thread's share of dw */
        if (dwp) memset(dwp, 0, wn * sizeof(float));
        for (int n = tid; n < s->N; n += T)
            backward_one(dx ? dx + n * xs : NULL, dwp, dy + n * ys, x + n * xs, w, s, col);
        /* the implicit barrier of `single` above and the one below order the reduction */
#pragma omp barrier
        if (dw) {
#pragma omp for schedule(static)
            for (size_t i = 0; i < wn; i++) {
                float acc = 0.0f;
                for (int t = 0; t < used; t++) acc += slot_dw(s, ws, t)[i];
                dw[i] += acc;
            }
        }
    }
    dd_cpu_blas_single_end(prev);
    return 0;
}
