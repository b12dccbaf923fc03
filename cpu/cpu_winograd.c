/* Winograd F(2x2, 3x3) convolutions on the CPU (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2016): the UNet's 3x3 "same" convolutions (stride 1, pad 1) in
 * 16 GEMMs with 4/9 of im2col's multiply-adds, chosen by cpu_conv.c per shape and per part
 * (forward, dx, dw: dd_cpu_wino_chosen).
 *
 * The output is cut into 2x2 tiles (th x tw of them, the last row or column clipped when H or W
 * is odd); tile (ty, tx) reads the 4x4 input patch at rows 2 ty - 1 .. 2 ty + 2, columns
 * 2 tx - 1 .. 2 tx + 2 (zero outside the image). With
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 * a tile of one output channel is y = A^T [sum over ci of (G g G^T) (.) (B^T d B)] A: per element
 * xi of the 4x4 transformed tile, a GEMM over the input channels,
 *   M[xi] (Cout, tiles) = U[xi] (Cout, Cin) @ V[xi] (Cin, tiles),
 *   U[xi][o][i] = (G w[o][i] G^T)[xi],  V[xi][i][t] = (B^T d_i,t B)[xi].
 * Backward, by the chain rule through the same identity:
 *   dx: the transposed convolution, i.e. the convolution of dy with the flipped, transposed
 *       weights (pad 3 - 1 - 1 = 1 again), so the forward code with those weights, added into dx;
 *   dw[o][i] += G^T dU[o][i] G,  dU[xi] (Cout, Cin) = sum over tiles of Yh[xi] (Cout, tiles)
 *       @ V[xi]^T, with Yh = A dy_tile A^T (the 2x2 output-gradient tile, zero outside the image,
 *       spread to 4x4) and V the input's transform as in the forward.
 * The transforms' coefficients are 0, +-1 and +-1/2, so the results stay within a few float
 * roundings of the direct sums (relative error about 1e-7 at the UNet's shapes; test_ops_forward
 * checks against double-precision direct sums, test_ops_gradcheck by finite differences).
 *
 * A chunk of whole images (about WINO_TILES tiles: 1 image at 28x28, 2 at 14x14, 4 at 7x7) is
 * transformed at a time so its V and M stay in the core's cache; threads take contiguous runs of
 * images as in cpu_conv.c, each with its own slot of the workspace.
 *
 * Layout of a chunk's transformed data: plane xi, channel c, tile t at base + xi ps + c ld + t,
 * t = image-in-chunk T1 + ty tw + tx, ld = images T1, T1 = th tw, ps = plane_stride(C, ld). */
/* before any include (see cpu_simd.h); no-tree-loop-distribute-patterns keeps GCC from turning
 * the short zeroing and copying loops into memset and memcpy calls */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=off", "no-tree-loop-distribute-patterns")
#endif

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_simd.h"
#include "diffusion/error.h"

#define WINO_TILES 64 /* tiles a chunk, at least one whole image */

int dd_cpu_wino_shape(const dd_conv_shape *s) {
    return s->K == 3 && s->stride == 1 && s->pad == 1 && s->Ho == s->H && s->Wo == s->W &&
           s->H > 0 && s->W > 0 && s->Cin > 0 && s->Cout > 0;
}

/* Whether the Winograd code computes part `what` (DD_WINO_FORWARD, _DX, _DW) of a convolution
 * (1 or 0), or -1 with the error set for a bad DIFFUSION_CPU_CONV: auto (default: by shape,
 * below) | gemm (never) | winograd (wherever the shape allows). Read at every call, so a test can
 * switch it between calls; the workspace covers both ways (cpu_conv.c). */
int dd_cpu_wino_chosen(const dd_conv_shape *s, int what) {
    const char *e = getenv("DIFFUSION_CPU_CONV");
    int forced = -1;
    if (e && *e && strcmp(e, "auto")) {
        if (!strcmp(e, "gemm"))
            forced = 0;
        else if (!strcmp(e, "winograd"))
            forced = 1;
        else
            return dd_error("DIFFUSION_CPU_CONV=%s: use auto, gemm or winograd", e);
    }
    if (!dd_cpu_wino_shape(s)) return 0;
    if (forced >= 0) return forced;
    /* auto: where it measured faster than cpu_conv.c's im2col and row-shift GEMMs. GEMM time
     * over Winograd time, one thread of the 2-core AMD EPYC (Zen 4, AVX-512) development
     * machine, OpenBLAS 0.3.21, the UNet's shapes, session 16 (after the transforms were made
     * two plain vector passes):
     *   one input or output channel: 0.36-0.89 in every part, so never;
     *   forward: 1.00-1.94 from 16 x 16 channels up, at every batch from 1 to 64;
     *   dx: 1.05-1.87 from 32 tiles in the batch (two 7x7 images) up; 0.83-1.20 with 16;
     *   dw (16 GEMMs reducing over the tiles, which want depth): 0.98-1.43 from 98 tiles up
     *     (two 14x14 images, eight 7x7), 0.79-0.97 at 64 (four 7x7), 0.56-0.80 at 16 and 32;
     *     0.80-1.14 at one 14x14 image (49), so that stays on the GEMMs. */
    const int cmin = s->Cin < s->Cout ? s->Cin : s->Cout;
    if (cmin < 16) return 0;
    const int64_t tiles = (int64_t)s->N * ((s->H + 1) / 2) * ((s->W + 1) / 2);
    if (what == DD_WINO_DW) return tiles >= 96;
    if (what == DD_WINO_DX) return tiles >= 32;
    return 1;
}

typedef struct {
    int th, tw, T1, nb; /* tiles down and across an image, tiles an image, images a chunk */
    size_t ld;          /* columns of a chunk's planes: nb T1 */
    int Cmax;           /* max(Cin, Cout): channels of the larger transformed side */
} wgeom;

/* Floats from one plane xi of a chunk's transformed data to the next: C ld and 16 more. Without
 * the 16 the planes of the 7x7 maps at 64 channels lie 16 KiB apart, the 16 stores of a tile hit
 * one set of the level-1 cache, and the transforms ran at a third of their speed. */
#define WINO_PLANE_PAD 16
static size_t plane_stride(int C, size_t ld) { return (size_t)C * ld + WINO_PLANE_PAD; }

static wgeom wino_geom(const dd_conv_shape *s) {
    wgeom g;
    g.th = (s->H + 1) / 2;
    g.tw = (s->W + 1) / 2;
    g.T1 = g.th * g.tw;
    g.nb = (WINO_TILES + g.T1 - 1) / g.T1;
    if (g.nb > s->N) g.nb = s->N;
    if (g.nb < 1) g.nb = 1;
    g.ld = (size_t)g.nb * g.T1;
    g.Cmax = s->Cin > s->Cout ? s->Cin : s->Cout;
    return g;
}

/* a slot (one a thread): two transformed buffers (16 planes of plane_stride(Cmax, ld) floats
 * each), the private dU of the backward (16 planes of wplane) and the transforms' scratch
 * (row_floats, below) */
static size_t buf_floats(wgeom g) { return (size_t)16 * plane_stride(g.Cmax, g.ld); }
/* the filters' transformed planes (U, the flipped U, dU): Cout Cin floats apart and 16 more, for
 * the same reason as plane_stride (a 64 x 64 convolution's U took 190 us to build without) */
static size_t wplane(const dd_conv_shape *s) {
    return (size_t)s->Cout * s->Cin + WINO_PLANE_PAD;
}
static size_t du_floats(const dd_conv_shape *s) { return 16 * wplane(s); }
/* tiles a row pass computes: TW rounded up to 4 or to a multiple of 8 */
static inline int twp(int tw) { return tw <= 4 ? 4 : (tw + 7) / 8 * 8; }
/* floats of one row array of the scratch: rows of TW, then TP of slack, rounded to 16 */
static size_t rowarr_floats(int th, int tw) {
    return ((size_t)(th + 1) * tw + twp(tw) + 15) / 16 * 16;
}
/* the transforms' scratch: 8 row arrays and the padded channel (2 th rows of 2 TP + 4); output_tw
 * takes 2 th rows of 2 TP from it */
static size_t row_floats(wgeom g) {
    return 8 * rowarr_floats(g.th, g.tw) + (size_t)2 * g.th * (2 * twp(g.tw) + 4);
}
static size_t slot_bytes(const dd_conv_shape *s, wgeom g) {
    return 2 * dd_cpu_round(buf_floats(g) * sizeof(float)) +
           dd_cpu_round(du_floats(s) * sizeof(float)) +
           dd_cpu_round(row_floats(g) * sizeof(float));
}
/* U (or the flipped U of dx), then weights_row()'s gathered filters, one buffer a thread */
static size_t tmp_bytes(const dd_conv_shape *s) {
    const int c = s->Cin > s->Cout ? s->Cin : s->Cout;
    return dd_cpu_round((size_t)9 * c * sizeof(float));
}
static size_t front_bytes(const dd_conv_shape *s) {
    return dd_cpu_round(du_floats(s) * sizeof(float)) + (size_t)dd_cpu_slots(s->N) * tmp_bytes(s);
}
static float *front_tmp(const dd_conv_shape *s, void *ws, int i) {
    return (float *)((char *)ws + dd_cpu_round(du_floats(s) * sizeof(float)) +
                     (size_t)i * tmp_bytes(s));
}

size_t dd_cpu_wino_workspace(const dd_conv_shape *s) {
    if (!dd_cpu_wino_shape(s)) return 0;
    const wgeom g = wino_geom(s);
    return front_bytes(s) + (size_t)dd_cpu_slots(s->N) * slot_bytes(s, g);
}

typedef struct {
    float *a, *b, *du, *rows;
} wslot;

static wslot get_slot(const dd_conv_shape *s, wgeom g, void *ws, int i) {
    char *p = (char *)ws + front_bytes(s) + (size_t)i * slot_bytes(s, g);
    wslot r;
    r.a = (float *)p;
    p += dd_cpu_round(buf_floats(g) * sizeof(float));
    r.b = (float *)p;
    p += dd_cpu_round(buf_floats(g) * sizeof(float));
    r.du = (float *)p;
    p += dd_cpu_round(du_floats(s) * sizeof(float));
    r.rows = (float *)p;
    return r;
}

/* U[xi][o][i] = (G g G^T)[xi] for nO x nI filters g: w[o][i] (flip 0: the convolution, nO = Cout,
 * nI = Cin) or w[i][o] turned by 180 degrees (flip 1: its transpose, nO = Cin, nI = Cout). Row
 * o: its nI filters gathered element-major into tmp (9 nI floats), so the arithmetic and the
 * stores run along i (a filter at a time it took 80 us of a 64 x 64 convolution's 380 us at
 * batch 8). The rows are shared out among the threads of the convolution (wino_weights), since
 * one thread doing them all held the others back: a fifth of a 192 x 64 forward at batch 16 on
 * two threads. */
static void weights_row(float *restrict U, const float *restrict w, const dd_conv_shape *s,
                        int flip, float *restrict tmp, int o) {
    const int nI = flip ? s->Cout : s->Cin;
    const size_t plane = wplane(s);
    for (int i = 0; i < nI; i++) {
        const float *src =
            w + (flip ? (size_t)i * s->Cin + o : (size_t)o * s->Cin + i) * 9;
        for (int e = 0; e < 9; e++) tmp[(size_t)e * nI + i] = src[flip ? 8 - e : e];
    }
    const float *restrict g0 = tmp, *restrict g1 = tmp + nI, *restrict g2 = tmp + 2 * nI,
                          *restrict g3 = tmp + 3 * nI, *restrict g4 = tmp + 4 * nI,
                          *restrict g5 = tmp + 5 * nI, *restrict g6 = tmp + 6 * nI,
                          *restrict g7 = tmp + 7 * nI, *restrict g8 = tmp + 8 * nI;
    float *restrict u = U + (size_t)o * nI;
    for (int i = 0; i < nI; i++) {
        /* t = G g (4 x 3), rows of g: (g0 g1 g2), (g3 g4 g5), (g6 g7 g8) */
        const float t00 = g0[i], t01 = g1[i], t02 = g2[i];
        const float t10 = 0.5f * (g0[i] + g3[i] + g6[i]), t11 = 0.5f * (g1[i] + g4[i] + g7[i]),
                    t12 = 0.5f * (g2[i] + g5[i] + g8[i]);
        const float t20 = 0.5f * (g0[i] - g3[i] + g6[i]), t21 = 0.5f * (g1[i] - g4[i] + g7[i]),
                    t22 = 0.5f * (g2[i] - g5[i] + g8[i]);
        const float t30 = g6[i], t31 = g7[i], t32 = g8[i];
        const float t[4][3] = {
            {t00, t01, t02}, {t10, t11, t12}, {t20, t21, t22}, {t30, t31, t32}};
        for (int r = 0; r < 4; r++) { /* (G g) G^T */
            u[(size_t)(4 * r) * plane + i] = t[r][0];
            u[(size_t)(4 * r + 1) * plane + i] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
            u[(size_t)(4 * r + 2) * plane + i] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
            u[(size_t)(4 * r + 3) * plane + i] = t[r][2];
        }
    }
}

/* all of U: the rows shared out when called inside a parallel region (orphaned `omp for`, with
 * its barrier), all by the caller outside one */
static void wino_weights(float *U, const float *w, const dd_conv_shape *s, int flip, void *ws) {
    const int nO = flip ? s->Cin : s->Cout;
    float *tmp = front_tmp(s, ws, omp_get_thread_num());
#pragma omp for schedule(static)
    for (int o = 0; o < nO; o++) weights_row(U, w, s, flip, tmp, o);
}

/* The three transforms, each written once with the tiles across an image (TW) as a parameter and
 * instantiated for the UNet's widths (4, 7, 14 at 7x7, 14x14, 28x28) as well as for any width,
 * and compiled for each vector width the processor may have (DD_CPU_CLONES). The input and
 * gradient transforms run in two passes, so that every loop is a plain vector loop:
 *   - along the rows (the transform's column side), one image row at a time, from a padded copy
 *     of the channel: TP = twp(TW) tiles (TW rounded up to a vector), so the loop has a fixed
 *     length; the TP - TW tiles past the row's end are garbage that spills into the next row's
 *     place and is overwritten by it (the last row's into the scratch's slack; rows that must be
 *     zero are written after the spill);
 *   - down the columns, over all th TW tiles of a channel at once: the transformed rows are kept
 *     in arrays by the parity of the image row (input: E rows 2k - 1, O rows 2k, k = 0 .. th;
 *     gradient: P rows 2k, Q rows 2k + 1), so the rows a tile row needs sit TW floats apart and
 *     the loop runs along the tiles as the planes lie.
 * Before session 16 they ran one pass per tile row with TW tiles, which left the 7- and 14-tile
 * rows to scalar code: the input transform took 14% of a training step's convolution time, and
 * the two passes made it 1.3-2.1x faster, the gradient's 2.5-2.8x. The output transform stays in
 * one pass per tile row: two passes measured 1.5-3x slower on the 7x7 and 14x14 maps. An image
 * is W = 2 TW - 1 or 2 TW wide. */
#define WINO_INLINE static inline __attribute__((always_inline))

/* the rows passes' inner loops, apart so that their pointers are restrict parameters (GCC
 * otherwise versioned the loops for aliasing and ran them scalar): TP tiles of the padded row q
 * combined by B (input) or A (grad) into the four rows d0..d3 */
WINO_INLINE void input_row(float *restrict d0, float *restrict d1, float *restrict d2,
                           float *restrict d3, const float *restrict q, const int TP) {
    for (int tx = 0; tx < TP; tx++) {
        const float e0 = q[2 * tx], e1 = q[2 * tx + 1], e2 = q[2 * tx + 2], e3 = q[2 * tx + 3];
        d0[tx] = e0 - e2;
        d1[tx] = e1 + e2;
        d2[tx] = e2 - e1;
        d3[tx] = e1 - e3;
    }
}
WINO_INLINE void grad_row(float *restrict d0, float *restrict d1, float *restrict d2,
                          float *restrict d3, const float *restrict q, const int TP) {
    for (int tx = 0; tx < TP; tx++) {
        const float e0 = q[2 * tx], e1 = q[2 * tx + 1];
        d0[tx] = e0;
        d1[tx] = e0 + e1;
        d2[tx] = e0 - e1;
        d3[tx] = -e1;
    }
}

/* the scratch of the input and gradient transforms (row_floats): the row arrays a[0..3] and
 * b[0..3] (the two parities of the image rows), and the padded channel after them, returned
 * zeroed: H rows of L = 2 twp(TW) + 4 floats */
static inline float *split_scratch(float *rows, int th, const int TW, int H, float **a, float **b) {
    const size_t ra = rowarr_floats(th, TW);
    for (int j = 0; j < 4; j++) a[j] = rows + (size_t)j * ra, b[j] = rows + (size_t)(4 + j) * ra;
    float *pad = rows + 8 * ra;
    const int L = 2 * twp(TW) + 4;
    for (int k = 0; k < H * L; k++) pad[k] = 0.0f;
    return pad;
}

/* a channel (H x W) into rows L floats apart, whose other columns stay as they are (zero): the
 * whole channel before its rows are read, since a row copied just before would be read while its
 * stores are still in flight (store-forwarding stalls took a fifth of the input transform) */
WINO_INLINE void copy_channel(float *restrict dst, int L, const float *restrict src, int H, int W,
                              const int TW) {
    for (int h = 0; h < H; h++) {
        const float *restrict r = src + (size_t)h * W;
        float *restrict d = dst + (size_t)h * L;
        for (int k = 0; k < 2 * TW - 1; k++) d[k] = r[k]; /* a fixed-length loop */
        if (W == 2 * TW) d[2 * TW - 1] = r[2 * TW - 1];
    }
}

/* V (planes of C channels, at one image's column offset): (B^T d B) of each tile of x (C, H, W).
 * Rows pass: Ej/Oj = the row combined by B (tile tx: q[2 tx .. 2 tx + 3] = e0..e3 into e0 - e2,
 * e1 + e2, e2 - e1, e1 - e3); columns pass: plane 4 i + j from rows 2 ty - 1 .. 2 ty + 2 =
 * E[ty], O[ty], E[ty + 1], O[ty + 1] combined by B^T. */
WINO_INLINE void input_tw(float *restrict V, size_t ld, const float *restrict x, int C, int H,
                          int W, int th, const int TW, float *restrict rows) {
    const size_t ps = plane_stride(C, ld);
    const int TP = twp(TW), T1 = th * TW, L = 2 * TP + 4;
    float *E[4], *O[4];
    float *restrict xp = split_scratch(rows, th, TW, H, E, O); /* column j at 1 + j */
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int j = 0; j < 4; j++)
            for (int tx = 0; tx < TW; tx++) E[j][tx] = 0.0f; /* row -1 */
        copy_channel(xp + 1, L, xc, H, W, TW);
        for (int h = 0; h < H; h++) {
            const float *restrict q = xp + (size_t)h * L;
            const size_t at = (size_t)((h + 1) / 2) * TW; /* row h is E[(h + 1) / 2] or O[h / 2] */
            float *const *D = h & 1 ? E : O;
            input_row(D[0] + at, D[1] + at, D[2] + at, D[3] + at, q, TP);
        }
        /* rows H and H + 1 are zero: O[th] always (row 2 th >= H), E[th] when H is odd */
        for (int j = 0; j < 4; j++)
            for (int tx = 0; tx < TW; tx++) {
                O[j][(size_t)th * TW + tx] = 0.0f;
                if (H & 1) E[j][(size_t)th * TW + tx] = 0.0f;
            }
        float *v = V + (size_t)c * ld;
        for (int j = 0; j < 4; j++) {
            const float *restrict e = E[j], *restrict o = O[j];
            float *restrict v0 = v + (size_t)j * ps, *restrict v1 = v0 + 4 * ps,
                            *restrict v2 = v1 + 4 * ps, *restrict v3 = v2 + 4 * ps;
            for (int t = 0; t < T1; t++) {
                const float a0 = e[t], a1 = o[t], a2 = e[t + TW], a3 = o[t + TW];
                v0[t] = a0 - a2;
                v1[t] = a1 + a2;
                v2[t] = a2 - a1;
                v3[t] = a1 - a3;
            }
        }
    }
}

/* one tile row of the output: TP tiles' 16 values (plane k at m + k ps) combined by A^T . A
 * into the two image rows Y0 and Y1 (2 TP values each), plus bc; its pointers restrict
 * parameters, as input_row's */
WINO_INLINE void output_row(float *restrict Y0, float *restrict Y1, const float *restrict m,
                            size_t ps, float bc, const int TP) {
    for (int tx = 0; tx < TP; tx++) {
        float a[16];
        for (int k = 0; k < 16; k++) a[k] = m[(size_t)k * ps + tx];
        float s0[4], s1[4];
        for (int q = 0; q < 4; q++) {
            s0[q] = a[q] + a[4 + q] + a[8 + q];
            s1[q] = a[4 + q] - a[8 + q] - a[12 + q];
        }
        Y0[2 * tx] = s0[0] + s0[1] + s0[2] + bc;
        Y0[2 * tx + 1] = s0[1] - s0[2] - s0[3] + bc;
        Y1[2 * tx] = s1[0] + s1[1] + s1[2] + bc;
        Y1[2 * tx + 1] = s1[1] - s1[2] - s1[3] + bc;
    }
}

/* y (C, H, W) of one image from M (planes of C channels, at the image's column offset): A^T m A
 * of each tile, plus bias[c] when bias, written (acc 0) or added (acc 1). A tile row at a time,
 * TP tiles wide: the TP - TW past its end read the next row's tiles, the next image's or
 * channel's, or for the last channel the plane's padding (zeroed by the caller), and their
 * values are dropped. The whole channel's rows are made first and copied out after (read back
 * at once, they stalled on their stores in flight). */
WINO_INLINE void output_tw(float *restrict y, const float *restrict M, size_t ld,
                           const float *restrict bias, int C, int H, int W, int th, const int TW,
                           int acc, float *restrict rows) {
    const size_t ps = plane_stride(C, ld);
    const int TP = twp(TW);
    float *restrict Y = rows; /* the channel's image rows, 2 TP apart */
    const int full = W == 2 * TW, n = 2 * TW - 1;
    for (int c = 0; c < C; c++) {
        const float bc = bias ? bias[c] : 0.0f;
        for (int ty = 0; ty < th; ty++)
            output_row(Y + (size_t)(4 * ty) * TP, Y + (size_t)(4 * ty + 2) * TP,
                       M + (size_t)c * ld + (size_t)ty * TW, ps, bc, TP);
        float *yc = y + (size_t)c * H * W;
        for (int ty = 0; ty < th; ty++) {
            const float *restrict Y0 = Y + (size_t)(4 * ty) * TP, *restrict Y1 = Y0 + 2 * TP;
            float *restrict d0 = yc + (size_t)(2 * ty) * W;
            float *restrict d1 = d0 + W;
            const int two = 2 * ty + 1 < H;
            if (acc) {
                for (int j = 0; j < n; j++) d0[j] += Y0[j];
                if (full) d0[n] += Y0[n];
                if (two) {
                    for (int j = 0; j < n; j++) d1[j] += Y1[j];
                    if (full) d1[n] += Y1[n];
                }
            } else {
                for (int j = 0; j < n; j++) d0[j] = Y0[j];
                if (full) d0[n] = Y0[n];
                if (two) {
                    for (int j = 0; j < n; j++) d1[j] = Y1[j];
                    if (full) d1[n] = Y1[n];
                }
            }
        }
    }
}

/* Yh (planes of C channels, at one image's column offset): A dy A^T of each 2x2 tile of
 * dy (C, H, W), zero outside the image, A = [1 0; 1 1; 1 -1; 0 -1]. Rows pass: each image row's
 * tiles (p0, p1) into p0, p0 + p1, p0 - p1, -p1, kept as P (rows 2 ty) and Q (rows 2 ty + 1);
 * columns pass: plane 4 i + j = P, P + Q, P - Q, -Q. */
WINO_INLINE void grad_tw(float *restrict Yh, size_t ld, const float *restrict dy, int C, int H,
                         int W, int th, const int TW, float *restrict rows) {
    const size_t ps = plane_stride(C, ld);
    const int TP = twp(TW), T1 = th * TW, L = 2 * TP + 4;
    float *P[4], *Q[4];
    float *restrict dp = split_scratch(rows, th, TW, H, P, Q); /* column j at j */
    for (int c = 0; c < C; c++) {
        const float *dc = dy + (size_t)c * H * W;
        copy_channel(dp, L, dc, H, W, TW);
        for (int h = 0; h < H; h++) {
            const float *restrict q = dp + (size_t)h * L;
            const size_t at = (size_t)(h / 2) * TW;
            float *const *D = h & 1 ? Q : P;
            grad_row(D[0] + at, D[1] + at, D[2] + at, D[3] + at, q, TP);
        }
        if (H & 1) /* the last tile row has no second image row */
            for (int j = 0; j < 4; j++)
                for (int tx = 0; tx < TW; tx++) Q[j][(size_t)(th - 1) * TW + tx] = 0.0f;
        float *v = Yh + (size_t)c * ld;
        for (int j = 0; j < 4; j++) {
            const float *restrict p = P[j], *restrict r = Q[j];
            float *restrict v0 = v + (size_t)j * ps, *restrict v1 = v0 + 4 * ps,
                            *restrict v2 = v1 + 4 * ps, *restrict v3 = v2 + 4 * ps;
            for (int t = 0; t < T1; t++) {
                v0[t] = p[t];
                v1[t] = p[t] + r[t];
                v2[t] = p[t] - r[t];
                v3[t] = -r[t];
            }
        }
    }
}

DD_CPU_CLONES static void input_tiles(float *V, size_t ld, const float *x, int C, int H, int W,
                                      wgeom g, float *rows) {
    switch (g.tw) {
    case 4: input_tw(V, ld, x, C, H, W, g.th, 4, rows); break;
    case 7: input_tw(V, ld, x, C, H, W, g.th, 7, rows); break;
    case 14: input_tw(V, ld, x, C, H, W, g.th, 14, rows); break;
    default: input_tw(V, ld, x, C, H, W, g.th, g.tw, rows); break;
    }
}

DD_CPU_CLONES static void output_tiles(float *y, const float *M, size_t ld, const float *bias,
                                       int C, int H, int W, wgeom g, int acc, float *rows) {
    switch (g.tw) {
    case 4: output_tw(y, M, ld, bias, C, H, W, g.th, 4, acc, rows); break;
    case 7: output_tw(y, M, ld, bias, C, H, W, g.th, 7, acc, rows); break;
    case 14: output_tw(y, M, ld, bias, C, H, W, g.th, 14, acc, rows); break;
    default: output_tw(y, M, ld, bias, C, H, W, g.th, g.tw, acc, rows); break;
    }
}

DD_CPU_CLONES static void grad_tiles(float *Yh, size_t ld, const float *dy, int C, int H, int W,
                                     wgeom g, float *rows) {
    switch (g.tw) {
    case 4: grad_tw(Yh, ld, dy, C, H, W, g.th, 4, rows); break;
    case 7: grad_tw(Yh, ld, dy, C, H, W, g.th, 7, rows); break;
    case 14: grad_tw(Yh, ld, dy, C, H, W, g.th, 14, rows); break;
    default: grad_tw(Yh, ld, dy, C, H, W, g.th, g.tw, rows); break;
    }
}

/* the 16 products of a chunk: out[xi] (nO, ld) = U[xi] (nO, nI) @ in[xi] (nI, ld), U's planes up
 * floats apart */
static void products(float *out, const float *U, size_t up, const float *in, int nO, int nI,
                     size_t ld) {
    for (int k = 0; k < 16; k++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nO, (int)ld, nI, 1.0f,
                    U + (size_t)k * up, nI, in + (size_t)k * plane_stride(nI, ld), (int)ld,
                    0.0f, out + (size_t)k * plane_stride(nO, ld), (int)ld);
}

/* y[n0 .. n1) (acc 0: = conv + bias; acc 1: += conv) of x (nI channels) with U (nO x nI): the
 * forward (nI = Cin, nO = Cout) and dx (nI = Cout, nO = Cin) */
static void conv_range(float *y, const float *x, const float *U, const float *bias, int nI,
                       int nO, const dd_conv_shape *s, wgeom g, wslot sl, int n0, int n1,
                       int acc) {
    const size_t HW = (size_t)s->H * s->W;
    for (int n = n0; n < n1; n += g.nb) {
        const int m = n1 - n < g.nb ? n1 - n : g.nb;
        const size_t ld = (size_t)m * g.T1;
        for (int j = 0; j < m; j++)
            input_tiles(sl.a + (size_t)j * g.T1, ld, x + (size_t)(n + j) * nI * HW, nI, s->H,
                        s->W, g, sl.rows);
        products(sl.b, U, wplane(s), sl.a, nO, nI, ld);
        /* output_tw's last tile row reads twp(tw) - tw (at most 7) floats into each plane's
         * padding (WINO_PLANE_PAD, 16), which no product writes */
        for (int k = 0; k < 16; k++)
            memset(sl.b + (size_t)k * plane_stride(nO, ld) + (size_t)nO * ld, 0,
                   (size_t)(twp(g.tw) - g.tw) * sizeof(float));
        for (int j = 0; j < m; j++)
            output_tiles(y + (size_t)(n + j) * nO * HW, sl.b + (size_t)j * g.T1, ld, bias, nO,
                         s->H, s->W, g, acc, sl.rows);
    }
}

/* du (16 planes of Cout x Cin) += sum over images [n0, n1) of Yh[xi] @ V[xi]^T */
static void filter_range(float *du, const float *dy, const float *x, const dd_conv_shape *s,
                         wgeom g, wslot sl, int n0, int n1) {
    const size_t HW = (size_t)s->H * s->W;
    for (int n = n0; n < n1; n += g.nb) {
        const int m = n1 - n < g.nb ? n1 - n : g.nb;
        const size_t ld = (size_t)m * g.T1;
        for (int j = 0; j < m; j++) {
            grad_tiles(sl.a + (size_t)j * g.T1, ld, dy + (size_t)(n + j) * s->Cout * HW, s->Cout,
                       s->H, s->W, g, sl.rows);
            input_tiles(sl.b + (size_t)j * g.T1, ld, x + (size_t)(n + j) * s->Cin * HW, s->Cin,
                        s->H, s->W, g, sl.rows);
        }
        for (int k = 0; k < 16; k++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->Cout, s->Cin, (int)ld, 1.0f,
                        sl.a + (size_t)k * plane_stride(s->Cout, ld), (int)ld,
                        sl.b + (size_t)k * plane_stride(s->Cin, ld),
                        (int)ld, 1.0f, du + (size_t)k * wplane(s), s->Cin);
    }
}

int dd_cpu_wino_forward(float *y, const float *x, const float *w, const float *b,
                        const dd_conv_shape *s, void *ws) {
    const wgeom g = wino_geom(s);
    float *U = (float *)ws;
    const int nt = dd_cpu_batch_threads(s->N);
    if (nt == 1) {
        wino_weights(U, w, s, 0, ws);
        const int small = dd_cpu_blas_small_begin(dd_cpu_conv_macs(s));
        conv_range(y, x, U, b, s->Cin, s->Cout, s, g, get_slot(s, g, ws, 0), 0, s->N, 0);
        dd_cpu_blas_small_end(small);
        return 0;
    }
    const int prev = dd_cpu_blas_single_begin();
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num(), T = omp_get_num_threads();
        const int n0 = (int)((int64_t)s->N * tid / T), n1 = (int)((int64_t)s->N * (tid + 1) / T);
        wino_weights(U, w, s, 0, ws);
        conv_range(y, x, U, b, s->Cin, s->Cout, s, g, get_slot(s, g, ws, tid), n0, n1, 0);
    }
    dd_cpu_blas_single_end(prev);
    return 0;
}

/* dw[o][i] += G^T d G for the 4x4 d = du[.][o][i] (the sum of the threads' du when several) */
static void filter_out(float *dw, const float *du0, size_t stride, int used, int o,
                       const dd_conv_shape *s) {
    const size_t plane = wplane(s);
    for (int i = 0; i < s->Cin; i++) {
        float d[4][4];
        for (int k = 0; k < 16; k++) {
            float a = 0.0f;
            for (int t = 0; t < used; t++)
                a += du0[(size_t)t * stride + (size_t)k * plane + (size_t)o * s->Cin + i];
            d[k / 4][k % 4] = a;
        }
        float z[3][4]; /* G^T d */
        for (int c = 0; c < 4; c++) {
            z[0][c] = d[0][c] + 0.5f * (d[1][c] + d[2][c]);
            z[1][c] = 0.5f * (d[1][c] - d[2][c]);
            z[2][c] = 0.5f * (d[1][c] + d[2][c]) + d[3][c];
        }
        float *dst = dw + ((size_t)o * s->Cin + i) * 9;
        for (int r = 0; r < 3; r++) { /* (G^T d) G */
            dst[r * 3 + 0] += z[r][0] + 0.5f * (z[r][1] + z[r][2]);
            dst[r * 3 + 1] += 0.5f * (z[r][1] - z[r][2]);
            dst[r * 3 + 2] += 0.5f * (z[r][1] + z[r][2]) + z[r][3];
        }
    }
}

int dd_cpu_wino_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, const dd_conv_shape *s, void *ws) {
    const wgeom g = wino_geom(s);
    float *Uf = (float *)ws;
    const int nt = dd_cpu_batch_threads(s->N);
    const int prev = nt > 1 ? dd_cpu_blas_single_begin()
                            : dd_cpu_blas_small_begin(((dx != NULL) + (dw != NULL)) *
                                                      dd_cpu_conv_macs(s));
    const size_t stride = slot_bytes(s, g) / sizeof(float);
    int used = nt;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        const int tid = omp_get_thread_num(), T = omp_get_num_threads();
        if (dx) wino_weights(Uf, w, s, 1, ws); /* ends in a barrier: Uf is whole below */
        if (db) {
#pragma omp for schedule(static) nowait
            for (int o = 0; o < s->Cout; o++) dd_cpu_conv_db_channel(db, dy, s, o);
        }
#pragma omp single
        used = T;
        const wslot sl = get_slot(s, g, ws, tid);
        const int n0 = (int)((int64_t)s->N * tid / T), n1 = (int)((int64_t)s->N * (tid + 1) / T);
        if (dw) {
            memset(sl.du, 0, du_floats(s) * sizeof(float));
            filter_range(sl.du, dy, x, s, g, sl, n0, n1);
        }
        if (dx) conv_range(dx, dy, Uf, NULL, s->Cout, s->Cin, s, g, sl, n0, n1, 1);
#pragma omp barrier
        if (dw) {
            const float *du0 = get_slot(s, g, ws, 0).du;
#pragma omp for schedule(static)
            for (int o = 0; o < s->Cout; o++) filter_out(dw, du0, stride, used, o, s);
        }
    }
    if (nt > 1)
        dd_cpu_blas_single_end(prev);
    else
        dd_cpu_blas_small_end(prev);
    return 0;
}
