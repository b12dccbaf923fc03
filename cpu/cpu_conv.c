/* conv2d on the CPU: im2col + sgemm, any K, stride and pad.
 *
 * The batch is cut into chunks of m <= nb images whose columns sit side by side, so each GEMM is
 * (.., m HoWo) wide: per image a 7x7 map gives only 49 columns, too narrow for sgemm to run at
 * speed, while 16 of them give 784. nb depends only on the shape (chunk_images). Per chunk:
 *   col (Cin*K*K, m HoWo) = im2col(x_chunk)
 *   y_chunk (Cout, m HoWo) = w (Cout, Cin*K*K) @ col + b      (then scattered to NCHW if m > 1)
 * backward:
 *   db += sum over positions of dy
 *   dw += dy_chunk (Cout, m HoWo) @ col^T                       (dy gathered to that layout)
 *   dx: for stride 1, the transposed convolution is itself a convolution of dy with the weights
 *       flipped and Cin/Cout swapped (pad K-1-pad), so dx_chunk += wflip (Cin, Cout K K) @
 *       im2col(dy_chunk): a GEMM whose inner size is Cout*K*K (not Cout, as w^T @ dy has) and
 *       whose output is dx itself, with no col2im scatter (used when Cout <= Cin: dx_by_flip).
 *       Otherwise dcol (Cin K K, m HoWo) = w^T @ dy_chunk, dx_n += col2im(dcol) image by image.
 * GEMMs with few rows are cut into column blocks (gemm) to stay in OpenBLAS's faster
 * small-matrix kernels.
 * A 1x1 convolution with stride 1 and no padding needs no im2col: col is x_n itself (nb = 1).
 *
 * Row-shift form of a "same" convolution (stride 1, odd K, pad (K-1)/2) done one image at a
 * time (nb = 1: the 28x28 maps): the K rows (c, ki, 0..K-1) of im2col for one ki are the rows
 * (c, kj) of one matrix R (C K, (H + 2 pad) W), the image shifted sideways by kj - pad between
 * pad zero rows above and below, read from column ki W on. So R is built once (K copies of the
 * image, where im2col makes K^2) and the product is K GEMMs over column windows of it:
 *   y_n = sum over ki of W_ki (Cout, Cin K) @ R(x_n)[:, ki W ..],
 *         W_ki[o][i K + kj] = w[o][i][ki][kj]
 *   dW_ki += dy_n @ R(x_n)[:, ki W ..]^T
 *   dx_n += sum over ki of Wflip_ki @ R(dy_n)[:, ki W ..]
 * Each GEMM has an inner size of Cin K (48 for 16 channels), small enough for OpenBLAS's
 * unpacked small-matrix kernels, which measured faster here than one packed GEMM over Cin K K.
 *
 * Workspace (conv2d_workspace): the weights rearranged for the GEMMs (when used), then one slot
 * per thread, each a col buffer, a chunk buffer (the NCHW <-> chunk layout of y, dy or dx) and a
 * private dw that the batch-parallel backward (and the row-shift form's, which keeps dw as the
 * dW_ki) sums into dw at the end. A thread owns a contiguous run of images. */
#include <cblas.h>
#include <stddef.h>
#include <string.h>

#include "cpu_internal.h"

/* A chunk's GEMM is made at least this many columns wide where the batch allows. */
#define CHUNK_COLS 768

static int is_pointwise(const dd_conv_shape *s) {
    return s->K == 1 && s->stride == 1 && s->pad == 0;
}

/* dx as a convolution of dy with flipped weights: stride 1 and a pad the flip can mirror. Its
 * im2col is of dy (Cout K K rows) where col2im's is of dcol (Cin K K rows), so it pays when
 * Cout <= Cin; with more output channels than input ones (64 -> 192, 32 -> 64, 1 -> 16) the
 * w^T @ dy + col2im way was measured faster. */
static int dx_by_flip(const dd_conv_shape *s) {
    return !is_pointwise(s) && s->stride == 1 && s->pad <= s->K - 1 && s->Cout <= s->Cin;
}

/* The convolution that maps dy to dx when dx_by_flip: dy (Cout, Ho, Wo) in, dx (Cin, H, W) out. */
static dd_conv_shape flip_shape(const dd_conv_shape *s) {
    dd_conv_shape f = {1, s->Cout, s->Ho, s->Wo, s->Cin, s->K, 1, s->K - 1 - s->pad, s->H, s->W};
    return f;
}

static int chunk_images(const dd_conv_shape *s) {
    if (is_pointwise(s)) return 1;
    /* Below about 100^3 multiply-adds OpenBLAS multiplies without packing (its small-matrix
     * kernels), which per image beats a packed GEMM over a chunk: measured on the UNet's 4x4
     * stride-2 and 16/32-channel layers. */
    if ((double)s->Cout * s->Cin * s->K * s->K * s->Ho * s->Wo < 1048576.0) return 1;
    int hw = s->Ho * s->Wo;
    if (hw < 1) hw = 1;
    int nb = (CHUNK_COLS + hw - 1) / hw;
    if (nb > s->N) nb = s->N;
    return nb < 1 ? 1 : nb;
}

/* the row-shift form (above): a "same" convolution run one image per GEMM */
static int use_rows(const dd_conv_shape *s) {
    return s->K > 1 && s->stride == 1 && 2 * s->pad == s->K - 1 && chunk_images(s) == 1;
}

static size_t wsize(const dd_conv_shape *s) { return (size_t)s->Cout * s->Cin * s->K * s->K; }

/* multiply-adds of the forward (for dd_cpu_blas_small_begin) */
double dd_cpu_conv_macs(const dd_conv_shape *s) {
    return (double)s->N * s->Cout * s->Cin * s->K * s->K * s->Ho * s->Wo;
}

/* floats of one slot's col buffer, for nb images */
static size_t col_floats(const dd_conv_shape *s) {
    if (is_pointwise(s)) return 0;
    size_t a = (size_t)s->Cin * s->K * s->K * (size_t)s->Ho * s->Wo; /* im2col(x) */
    size_t b = dx_by_flip(s) ? (size_t)s->Cout * s->K * s->K * (size_t)s->H * s->W : 0; /* dy */
    return (size_t)chunk_images(s) * (a > b ? a : b);
}

/* floats of one slot's chunk buffer: y or dy (Cout, m HoWo), or dx (Cin, m HW); none if nb = 1 */
static size_t chunk_floats(const dd_conv_shape *s) {
    int nb = chunk_images(s);
    if (nb == 1) return 0;
    size_t a = (size_t)s->Cout * s->Ho * s->Wo, b = (size_t)s->Cin * s->H * s->W;
    return (size_t)nb * (a > b ? a : b);
}

/* im2col's buffer also holds R(x) (Cin K (H + 2 pad) W <= Cin K K H W floats as H >= 1) and,
 * when dx_by_flip, R(dy) (likewise within Cout K K H W). */

/* the rearranged weights at the start of the workspace */
static size_t front_bytes(const dd_conv_shape *s) {
    return dx_by_flip(s) || use_rows(s) ? dd_cpu_round(wsize(s) * sizeof(float)) : 0;
}

static size_t slot_bytes(const dd_conv_shape *s) {
    return dd_cpu_round(col_floats(s) * sizeof(float)) +
           dd_cpu_round(chunk_floats(s) * sizeof(float)) + dd_cpu_round(wsize(s) * sizeof(float));
}

/* Both ways' needs where Winograd could run (DIFFUSION_CPU_CONV may change between the plan and
 * a call) */
size_t dd_cpu_conv2d_workspace(const dd_conv_shape *s) {
    const size_t a = front_bytes(s) + (size_t)dd_cpu_slots(s->N) * slot_bytes(s);
    const size_t b = dd_cpu_wino_workspace(s);
    return a > b ? a : b;
}

typedef struct {
    float *col, *chunk, *dw;
} slot;

static slot get_slot(const dd_conv_shape *s, void *ws, int i) {
    char *p = (char *)ws + front_bytes(s) + (size_t)i * slot_bytes(s);
    slot r;
    r.col = (float *)p;
    p += dd_cpu_round(col_floats(s) * sizeof(float));
    r.chunk = (float *)p;
    p += dd_cpu_round(chunk_floats(s) * sizeof(float));
    r.dw = (float *)p;
    return r;
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

/* GCC turns short zeroing loops into memset calls; im2col's are a float or a row, far below a
 * call's cost (the calls were 4-8% of a denoising step's time), so it is told not to. */
#if defined(__GNUC__) && !defined(__clang__)
#define DD_NO_MEMSET __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define DD_NO_MEMSET
#endif

static inline void zero_floats(float *p, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) p[i] = 0.0f;
}

/* x (C, H, W) -> R (C K, (H + 2 pad) W) of the row-shift form: row (c, kj) is pad zero rows,
 * then the image with input column ow + kj - pad at column ow (zero outside the image), then pad
 * zero rows. Built as im2col_same_width builds a block: one memcpy of the flat image shifted by
 * kj - pad, then the columns that wrapped around a row end zeroed. */
DD_NO_MEMSET static void shift_rows(float *R, const float *x, int C, int H, int W, int K, int pad) {
    const ptrdiff_t HW = (ptrdiff_t)H * W, L = HW + (ptrdiff_t)2 * pad * W;
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * HW;
        for (int kj = 0; kj < K; kj++) {
            float *r = R + ((size_t)c * K + kj) * L;
            float *d = r + (ptrdiff_t)pad * W; /* d[q] = xc[q + sh] where the column is inside */
            const ptrdiff_t sh = kj - pad;
            int lo, hi;
            valid_range(kj, 1, pad, W, W, &lo, &hi);
            zero_floats(r, (ptrdiff_t)pad * W);
            const ptrdiff_t q0 = sh < 0 ? -sh : 0, q1 = sh > 0 ? HW - sh : HW;
            if (q1 > q0) memcpy(d + q0, xc + q0 + sh, sizeof(float) * (size_t)(q1 - q0));
            if (lo > 0 || hi < W) {
                for (int ih = 0; ih < H; ih++) {
                    float *row = d + (ptrdiff_t)ih * W;
                    for (int ow = 0; ow < lo; ow++) row[ow] = 0.0f;
                    for (int ow = hi; ow < W; ow++) row[ow] = 0.0f;
                }
            }
            zero_floats(d + HW, (ptrdiff_t)pad * W);
        }
    }
}

/* The weights as the GEMMs take them, into dst (wsize floats):
 *   flip = 0: V[o][i][a][b] = w[o][i][a][b]           (nO = Cout, nI = Cin: the convolution)
 *   flip = 1: V[o][i][a][b] = w[i][o][K-1-a][K-1-b]   (nO = Cin, nI = Cout: its transpose)
 * stored as V (nO, nI K K) when rows = 0, or as the K blocks V_a (nO, nI K), V_a[o][i K + b] =
 * V[o][i][a][b], of the row-shift form when rows = 1. */
static void arrange_weights(float *dst, const float *w, const dd_conv_shape *s, int flip,
                            int rows) {
    const int K = s->K, nO = flip ? s->Cin : s->Cout, nI = flip ? s->Cout : s->Cin;
    for (int o = 0; o < nO; o++)
        for (int i = 0; i < nI; i++)
            for (int a = 0; a < K; a++)
                for (int b = 0; b < K; b++) {
                    const size_t src =
                        flip ? (((size_t)i * s->Cin + o) * K + (K - 1 - a)) * K + (K - 1 - b)
                             : (((size_t)o * s->Cin + i) * K + a) * K + b;
                    const size_t d =
                        rows ? ((size_t)a * nO + o) * ((size_t)nI * K) + (size_t)i * K + b
                             : (((size_t)o * nI + i) * K + a) * K + b;
                    dst[d] = w[src];
                }
}

/* im2col for stride 1 with Wo == W ("same" width, 2 pad = K - 1, the UNet's 3x3 pad 1): each
 * (c, ki, kj) block of col is then the image shifted by the constant flat offset
 * (ki - pad) W + (kj - pad), so the valid rows are one memcpy, after which the few columns that
 * wrapped around a row end (ow < lo or ow >= hi) are zeroed. Rows of short images as separate
 * copies cost one library call per 28 floats; this is one per block. Row r of col starts at
 * col + r ld. */
DD_NO_MEMSET static void im2col_same_width(float *col, size_t ld, const float *x,
                                           const dd_conv_shape *s) {
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
                float *row = col + ((size_t)(c * K + ki) * K + kj) * ld;
                const ptrdiff_t delta = (ptrdiff_t)(ki - pad) * W + (kj - pad);
                int lo, hi;
                valid_range(kj, 1, pad, W, W, &lo, &hi);
                /* plain loops, not memset: these are a row or two of a small image */
                zero_floats(row, (ptrdiff_t)oh_lo * W);
                zero_floats(row + (size_t)oh_hi * W, (ptrdiff_t)(Ho - oh_hi) * W);
                ptrdiff_t d0 = (ptrdiff_t)oh_lo * W, d1 = (ptrdiff_t)oh_hi * W;
                if (d0 < -delta) d0 = -delta;         /* source before the image: first row's */
                if (d1 > HW - delta) d1 = HW - delta; /* left or last row's right padding */
                if (d1 > d0) memcpy(row + d0, xc + d0 + delta, sizeof(float) * (size_t)(d1 - d0));
                if (lo > 0 || hi < W) {
                    for (int oh = oh_lo; oh < oh_hi; oh++) {
                        float *r = row + (size_t)oh * W;
                        for (int ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                        for (int ow = hi; ow < W; ow++) r[ow] = 0.0f;
                    }
                }
            }
        }
    }
}

/* x: (Cin, H, W) -> col: (Cin*K*K, Ho*Wo), row r at col + r ld; zero where the window hangs over
 * the padding */
DD_NO_MEMSET static void im2col(float *col, size_t ld, const float *x, const dd_conv_shape *s) {
    const int K = s->K, st = s->stride, pad = s->pad, H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo;
    if (st == 1 && Wo == W) {
        im2col_same_width(col, ld, x, s);
        return;
    }
    for (int c = 0; c < s->Cin; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int ki = 0; ki < K; ki++) {
            for (int kj = 0; kj < K; kj++) {
                float *row = col + ((size_t)(c * K + ki) * K + kj) * ld;
                int lo, hi;
                valid_range(kj, st, pad, W, Wo, &lo, &hi);
                for (int oh = 0; oh < Ho; oh++) {
                    float *r = row + (size_t)oh * Wo;
                    int ih = oh * st - pad + ki;
                    if (ih < 0 || ih >= H) {
                        zero_floats(r, Wo);
                        continue;
                    }
                    /* input index of output column ow: off + ow*st (valid for lo <= ow < hi) */
                    const ptrdiff_t off = (ptrdiff_t)ih * W - pad + kj;
                    for (int ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    if (st == 1) {
                        if (hi > lo) memcpy(r + lo, xc + off + lo, sizeof(float) * (hi - lo));
                    } else if (st == 2) { /* the downsampling convs: a constant stride vectorises */
                        for (int ow = lo; ow < hi; ow++) r[ow] = xc[off + (ptrdiff_t)ow * 2];
                    } else {
                        for (int ow = lo; ow < hi; ow++) r[ow] = xc[off + (ptrdiff_t)ow * st];
                    }
                    for (int ow = hi; ow < Wo; ow++) r[ow] = 0.0f;
                }
            }
        }
    }
}

/* col: (Cin*K*K, Ho*Wo), row r at col + r ld, added into dx: (Cin, H, W); the exact adjoint of
 * im2col */
static void col2im_add(float *dx, const float *col, size_t ld, const dd_conv_shape *s) {
    const int K = s->K, st = s->stride, pad = s->pad, H = s->H, W = s->W, Ho = s->Ho, Wo = s->Wo;
    for (int c = 0; c < s->Cin; c++) {
        float *dxc = dx + (size_t)c * H * W;
        for (int ki = 0; ki < K; ki++) {
            for (int kj = 0; kj < K; kj++) {
                const float *row = col + ((size_t)(c * K + ki) * K + kj) * ld;
                int lo, hi;
                valid_range(kj, st, pad, W, Wo, &lo, &hi);
                for (int oh = 0; oh < Ho; oh++) {
                    int ih = oh * st - pad + ki;
                    if (ih < 0 || ih >= H) continue;
                    const float *r = row + (size_t)oh * Wo;
                    const ptrdiff_t off = (ptrdiff_t)ih * W - pad + kj;
                    if (st == 2) { /* constant strides vectorise (as in im2col) */
                        for (int ow = lo; ow < hi; ow++) dxc[off + (ptrdiff_t)ow * 2] += r[ow];
                    } else if (st == 1) {
                        for (int ow = lo; ow < hi; ow++) dxc[off + ow] += r[ow];
                    } else {
                        for (int ow = lo; ow < hi; ow++) dxc[off + (ptrdiff_t)ow * st] += r[ow];
                    }
                }
            }
        }
    }
}

/* C (M, N) = alpha A (M, K) op(B) + beta C, row-major, op(B) = B (K, N), or B^T for B (N, K)
 * when transB. With few rows (M <= 32, the 16- and 32-channel layers) and over 100^3
 * multiply-adds, OpenBLAS 0.3 packs both operands and ran at 60-90 GFLOP/s a core on the
 * development machine (AVX-512); cut into column blocks of at most 100^3 it takes its unpacked
 * small-matrix kernels instead, at 95-110 (measured at the UNet's shapes, M = 16 and 32). A column
 * block is a plain sub-product (each element is still one dot product over K), so the split
 * changes no arithmetic, and on a BLAS without such kernels it costs only repacking the small A. */
static void gemm(int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    int nb = N;
    const double mk = (double)M * K, limit = 1e6;
    if (M <= 32 && mk * N > limit && limit / mk >= 32.0) {
        /* equal blocks, a multiple of 16 wide (the kernels' width) and at most `most` */
        const int most = (int)(limit / mk) / 16 * 16, blocks = (N + most - 1) / most;
        nb = ((N + blocks - 1) / blocks + 15) / 16 * 16;
    }
    for (int j = 0; j < N; j += nb) {
        const int w = N - j < nb ? N - j : nb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, w, K, alpha,
                    A, lda, transB ? B + (size_t)j * ldb : B + j, ldb, beta, C + j, ldc);
    }
}

/* y_n = sum over ki of W_ki @ R(x_n)[:, ki W ..] + b, the row-shift form; wr from
 * arrange_weights(flip 0, rows 1) */
static void forward_rows(float *y, const float *x, const float *wr, const float *b,
                         const dd_conv_shape *s, slot sl, int n) {
    const int K = s->K, W = s->W, IK = s->Cin * s->K;
    const size_t HW = (size_t)s->H * W, L = HW + (size_t)2 * s->pad * W;
    float *yn = y + n * (size_t)s->Cout * HW;
    shift_rows(sl.col, x + n * (size_t)s->Cin * HW, s->Cin, s->H, W, K, s->pad);
    if (b) {
        for (int o = 0; o < s->Cout; o++) {
            float *r = yn + (size_t)o * HW;
            for (size_t p = 0; p < HW; p++) r[p] = b[o];
        }
    }
    for (int a = 0; a < K; a++)
        gemm(0, s->Cout, (int)HW, IK, 1.0f, wr + (size_t)a * s->Cout * IK, IK,
             sl.col + (size_t)a * W, (int)L, a > 0 || b ? 1.0f : 0.0f, yn, (int)HW);
}

/* y[n0 .. n0+m) = w @ col(x[n0 .. n0+m)) + b */
static void forward_chunk(float *y, const float *x, const float *w, const float *b,
                          const dd_conv_shape *s, slot sl, int n0, int m) {
    const size_t HoWo = (size_t)s->Ho * s->Wo, CKK = (size_t)s->Cin * s->K * s->K;
    const size_t xs = (size_t)s->Cin * s->H * s->W, ys = (size_t)s->Cout * HoWo;
    const size_t ld = (size_t)m * HoWo;
    const float *cm = x + n0 * xs;
    if (!is_pointwise(s)) {
        for (int j = 0; j < m; j++) im2col(sl.col + j * HoWo, ld, x + (n0 + j) * xs, s);
        cm = sl.col;
    }
    if (m == 1) {
        float *yn = y + n0 * ys;
        if (b) {
            for (int o = 0; o < s->Cout; o++) {
                float *r = yn + (size_t)o * HoWo;
                for (size_t p = 0; p < HoWo; p++) r[p] = b[o];
            }
        }
        gemm(0, s->Cout, (int)HoWo, (int)CKK, 1.0f, w, (int)CKK, cm, (int)HoWo, b ? 1.0f : 0.0f, yn,
             (int)HoWo);
        return;
    }
    gemm(0, s->Cout, (int)ld, (int)CKK, 1.0f, w, (int)CKK, cm, (int)ld, 0.0f, sl.chunk, (int)ld);
    for (int j = 0; j < m; j++) {
        for (int o = 0; o < s->Cout; o++) {
            const float *src = sl.chunk + (size_t)o * ld + j * HoWo;
            float *dst = y + (n0 + j) * ys + (size_t)o * HoWo;
            const float bo = b ? b[o] : 0.0f;
            if (b) {
                for (size_t p = 0; p < HoWo; p++) dst[p] = src[p] + bo;
            } else {
                memcpy(dst, src, HoWo * sizeof(float));
            }
        }
    }
}

/* images [n0, n1) of a thread, chunk by chunk */
static void forward_range(float *y, const float *x, const float *w, const float *b,
                          const dd_conv_shape *s, slot sl, int n0, int n1) {
    if (use_rows(s)) {
        for (int n = n0; n < n1; n++) forward_rows(y, x, w, b, s, sl, n);
        return;
    }
    const int nb = chunk_images(s);
    for (int n = n0; n < n1; n += nb)
        forward_chunk(y, x, w, b, s, sl, n, n1 - n < nb ? n1 - n : nb);
}

int dd_cpu_conv2d_forward(float *y, const float *x, const float *w, const float *b,
                          const dd_conv_shape *s, void *ws) {
    const int wf = dd_cpu_wino_chosen(s, DD_WINO_FORWARD);
    if (wf < 0) return -1;
    if (wf) return dd_cpu_wino_forward(y, x, w, b, s, ws);
    if (use_rows(s)) { /* the ranges below then take the rearranged weights for w */
        arrange_weights((float *)ws, w, s, 0, 1);
        w = (const float *)ws;
    }
    int nt = dd_cpu_batch_threads(s->N);
    if (nt == 1) {
        const int small = dd_cpu_blas_small_begin(dd_cpu_conv_macs(s));
        forward_range(y, x, w, b, s, get_slot(s, ws, 0), 0, s->N);
        dd_cpu_blas_small_end(small);
        return 0;
    }
    int prev = dd_cpu_blas_single_begin();
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
        int n0 = (int)((int64_t)s->N * tid / T), n1 = (int)((int64_t)s->N * (tid + 1) / T);
        forward_range(y, x, w, b, s, get_slot(s, ws, tid), n0, n1);
    }
    dd_cpu_blas_single_end(prev);
    return 0;
}

/* dx_n += w^T @ dy_n through col2im (per image; col holds dcol) */
static void dx_col2im(float *dx, const float *dy, const float *w, const dd_conv_shape *s, slot sl,
                      int n) {
    const size_t HoWo = (size_t)s->Ho * s->Wo, CKK = (size_t)s->Cin * s->K * s->K;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CKK, (int)HoWo, s->Cout, 1.0f, w,
                (int)CKK, dy + n * (size_t)s->Cout * HoWo, (int)HoWo, 0.0f, sl.col, (int)HoWo);
    col2im_add(dx + n * (size_t)s->Cin * s->H * s->W, sl.col, HoWo, s);
}

/* The row-shift form's backward for image n: dwr (the dW_ki blocks, K x (Cout, Cin K)) +=
 * dy_n @ R(x_n)[:, ki W ..]^T; dx_n += sum over ki of Wflip_ki @ R(dy_n)[:, ki W ..] when wf
 * (arrange_weights(flip 1, rows 1)), else through col2im. */
static void backward_rows(float *dx, float *dwr, const float *dy, const float *x, const float *w,
                          const float *wf, const dd_conv_shape *s, slot sl, int n) {
    const int K = s->K, W = s->W, pad = s->pad;
    const size_t HW = (size_t)s->H * W, L = HW + (size_t)2 * pad * W;
    const float *dyn = dy + n * (size_t)s->Cout * HW;
    if (dwr) {
        const int IK = s->Cin * K;
        shift_rows(sl.col, x + n * (size_t)s->Cin * HW, s->Cin, s->H, W, K, pad);
        for (int a = 0; a < K; a++)
            gemm(1, s->Cout, IK, (int)HW, 1.0f, dyn, (int)HW, sl.col + (size_t)a * W, (int)L, 1.0f,
                 dwr + (size_t)a * s->Cout * IK, IK);
    }
    if (!dx) return;
    if (!wf) {
        dx_col2im(dx, dy, w, s, sl, n);
        return;
    }
    const int OK = s->Cout * K;
    shift_rows(sl.col, dyn, s->Cout, s->H, W, K, pad); /* the transpose's pad K-1-pad = pad */
    for (int a = 0; a < K; a++)
        gemm(0, s->Cin, (int)HW, OK, 1.0f, wf + (size_t)a * s->Cin * OK, OK, sl.col + (size_t)a * W,
             (int)L, 1.0f, dx + n * (size_t)s->Cin * HW, (int)HW);
}

/* m images of (C, P) at src, one after another -> dst (C, m P): image j in columns j P .. */
static void gather_chunk(float *dst, const float *src, int C, size_t P, int m) {
    const size_t ld = (size_t)m * P;
    for (int j = 0; j < m; j++)
        for (int c = 0; c < C; c++)
            memcpy(dst + (size_t)c * ld + j * P, src + ((size_t)j * C + c) * P, P * sizeof(float));
}

/* For images [n0, n0+m): dw_acc += dy_chunk @ col^T; dx += the transposed convolution of dy. */
static void backward_chunk(float *dx, float *dw_acc, const float *dy, const float *x,
                           const float *w, const float *wflip, const dd_conv_shape *s, slot sl,
                           int n0, int m) {
    const size_t HoWo = (size_t)s->Ho * s->Wo, HW = (size_t)s->H * s->W;
    const size_t CKK = (size_t)s->Cin * s->K * s->K, OKK = (size_t)s->Cout * s->K * s->K;
    const size_t xs = (size_t)s->Cin * HW, ys = (size_t)s->Cout * HoWo;
    const int pw = is_pointwise(s);
    const size_t ldo = (size_t)m * HoWo; /* columns of a chunk of outputs */
    int gathered = 0;                    /* sl.chunk holds dy of the chunk as (Cout, m HoWo) */
    if (dw_acc) {
        const float *cm = x + n0 * xs, *dm = dy + n0 * ys;
        if (!pw) {
            for (int j = 0; j < m; j++) im2col(sl.col + j * HoWo, ldo, x + (n0 + j) * xs, s);
            cm = sl.col;
        }
        if (m > 1) {
            gather_chunk(sl.chunk, dy + n0 * ys, s->Cout, HoWo, m);
            gathered = 1;
            dm = sl.chunk;
        }
        gemm(1, s->Cout, (int)CKK, (int)ldo, 1.0f, dm, (int)ldo, cm, (int)ldo, 1.0f, dw_acc,
             (int)CKK);
    }
    if (!dx) return;
    if (pw) { /* m == 1 and dx_n is the col: accumulate straight into it */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CKK, (int)HoWo, s->Cout, 1.0f, w,
                    (int)CKK, dy + n0 * ys, (int)HoWo, 1.0f, dx + n0 * xs, (int)HoWo);
        return;
    }
    if (!dx_by_flip(s)) {
        if (m == 1) {
            dx_col2im(dx, dy, w, s, sl, n0);
            return;
        }
        /* dcol (CKK, m HoWo) = w^T @ dy_chunk in one GEMM (per image it is only HoWo wide), then
         * col2im image by image */
        if (!gathered) gather_chunk(sl.chunk, dy + n0 * ys, s->Cout, HoWo, m);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)CKK, (int)ldo, s->Cout, 1.0f, w,
                    (int)CKK, sl.chunk, (int)ldo, 0.0f, sl.col, (int)ldo);
        for (int j = 0; j < m; j++) col2im_add(dx + (n0 + j) * xs, sl.col + j * HoWo, ldo, s);
        return;
    }
    const dd_conv_shape f = flip_shape(s);
    const size_t ld = (size_t)m * HW;
    for (int j = 0; j < m; j++) im2col(sl.col + j * HW, ld, dy + (n0 + j) * ys, &f);
    if (m == 1) {
        gemm(0, s->Cin, (int)HW, (int)OKK, 1.0f, wflip, (int)OKK, sl.col, (int)HW, 1.0f,
             dx + n0 * xs, (int)HW);
        return;
    }
    gemm(0, s->Cin, (int)ld, (int)OKK, 1.0f, wflip, (int)OKK, sl.col, (int)ld, 0.0f, sl.chunk,
         (int)ld);
    for (int j = 0; j < m; j++) {
        for (int c = 0; c < s->Cin; c++) {
            const float *src = sl.chunk + (size_t)c * ld + j * HW;
            float *dst = dx + (n0 + j) * xs + (size_t)c * HW;
            for (size_t q = 0; q < HW; q++) dst[q] += src[q];
        }
    }
}

static void backward_range(float *dx, float *dw_acc, const float *dy, const float *x,
                           const float *w, const float *wflip, const dd_conv_shape *s, slot sl,
                           int n0, int n1) {
    if (use_rows(s)) {
        for (int n = n0; n < n1; n++) backward_rows(dx, dw_acc, dy, x, w, wflip, s, sl, n);
        return;
    }
    const int nb = chunk_images(s);
    for (int n = n0; n < n1; n += nb)
        backward_chunk(dx, dw_acc, dy, x, w, wflip, s, sl, n, n1 - n < nb ? n1 - n : nb);
}

/* db[o] += sum over n, p of dy[n, o, p], summed in double into 8 interleaved partial sums (one
 * chain of dependent double adds would wait ~4 cycles an element) */
void dd_cpu_conv_db_channel(float *db, const float *dy, const dd_conv_shape *s, int o) {
    const size_t HoWo = (size_t)s->Ho * s->Wo, ys = (size_t)s->Cout * HoWo;
    double acc[8] = {0};
    for (int n = 0; n < s->N; n++) {
        const float *r = dy + n * ys + (size_t)o * HoWo;
        size_t p = 0;
        for (; p + 8 <= HoWo; p += 8)
            for (int k = 0; k < 8; k++) acc[k] += r[p + k];
        for (; p < HoWo; p++) acc[p % 8] += r[p];
    }
    double sum = 0.0;
    for (int k = 0; k < 8; k++) sum += acc[k];
    db[o] += (float)sum;
}

int dd_cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, const dd_conv_shape *s, void *ws) {
    const size_t ys = (size_t)s->Cout * s->Ho * s->Wo;
    const size_t wn = wsize(s);

    if (!dx && !dw) {
        if (db) {
#pragma omp parallel for schedule(static) if ((size_t)s->N * ys > DD_CPU_PAR_MIN)
            for (int o = 0; o < s->Cout; o++) dd_cpu_conv_db_channel(db, dy, s, o);
        }
        return 0;
    }
    /* the parts Winograd takes (cpu_winograd.c), db with them; the rest below */
    const int cdx = dd_cpu_wino_chosen(s, DD_WINO_DX), cdw = dd_cpu_wino_chosen(s, DD_WINO_DW);
    if (cdx < 0 || cdw < 0) return -1;
    const int wdx = dx && cdx, wdw = dw && cdw;
    if (wdx || wdw) {
        int rc = dd_cpu_wino_backward(wdx ? dx : NULL, wdw ? dw : NULL, db, dy, x, w, s, ws);
        if (rc || ((wdx || !dx) && (wdw || !dw))) return rc;
        if (wdx) dx = NULL;
        if (wdw) dw = NULL;
        db = NULL;
    }

    const int rows = use_rows(s);
    float *wflip = NULL; /* the transposed convolution's weights, when dx_by_flip */
    if (dx && dx_by_flip(s)) {
        wflip = (float *)ws;
        arrange_weights(wflip, w, s, 1, rows);
    }

    /* dw: one thread in the im2col form adds straight into dw; otherwise each thread sums into
     * its slot's private dw, in the row-shift form as the dW_ki blocks, and the slots are added
     * into dw (rearranged back) at the end. */
    const int nt = dd_cpu_batch_threads(s->N);
    const int private_dw = dw && (nt > 1 || rows);
    const double macs = ((dx != NULL) + (dw != NULL)) * dd_cpu_conv_macs(s);
    const int prev = nt > 1 ? dd_cpu_blas_single_begin() : dd_cpu_blas_small_begin(macs);
    int used = nt;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
        /* db in the same region (each OpenMP region costs a thread wake-up, ~45 us under
         * OMP_WAIT_POLICY=passive on the development machine), channels shared out */
        if (db) {
#pragma omp for schedule(static) nowait
            for (int o = 0; o < s->Cout; o++) dd_cpu_conv_db_channel(db, dy, s, o);
        }
#pragma omp single
        used = T;
        slot sl = get_slot(s, ws, tid);
        float *dwp = private_dw ? sl.dw : dw;
        if (private_dw) memset(dwp, 0, wn * sizeof(float));
        int n0 = (int)((int64_t)s->N * tid / T), n1 = (int)((int64_t)s->N * (tid + 1) / T);
        backward_range(dx, dwp, dy, x, w, wflip, s, sl, n0, n1);
        /* the implicit barrier of `single` above and the one below order the reduction */
#pragma omp barrier
        if (private_dw) {
            const float *dw0 = get_slot(s, ws, 0).dw;
            const size_t stride = slot_bytes(s) / sizeof(float); /* slot to slot, in floats */
            const int K = s->K, IK = s->Cin * K;
            if (rows) {
                /* w[o][c][a][b] sits at dW_a[o][c K + b] in the slots */
#pragma omp for schedule(static)
                for (int o = 0; o < s->Cout; o++) {
                    float *d = dw + (size_t)o * s->Cin * K * K;
                    for (int c = 0; c < s->Cin; c++)
                        for (int a = 0; a < K; a++)
                            for (int b = 0; b < K; b++) {
                                const size_t j = ((size_t)a * s->Cout + o) * IK + (size_t)c * K + b;
                                float acc = 0.0f;
                                for (int t = 0; t < used; t++) acc += dw0[t * stride + j];
                                *d++ += acc;
                            }
                }
            } else {
#pragma omp for schedule(static)
                for (size_t i = 0; i < wn; i++) {
                    float acc = 0.0f;
                    for (int t = 0; t < used; t++) acc += dw0[t * stride + i];
                    dw[i] += acc;
                }
            }
        }
    }
    if (nt > 1)
        dd_cpu_blas_single_end(prev);
    else
        dd_cpu_blas_small_end(prev);
    return 0;
}
