/* Every op of the CUDA backend, forward and backward, against the CPU backend on random inputs of
 * several shapes (odd sizes, stride 2, 1x1, repeated indices, ties, NULL gradients) and large ones
 * (batch 1024 of 28x28x64 activations, element counts past the 65536-block grid-stride cap), in
 * both math modes: TF32 on (cuDNN/cuBLAS products within TF32_TOL) and off (everything within
 * FP32_TOL). Then a CUDA-graph replay against plain launches (forward bit for bit) and the
 * capture rules (an unprepared convolution and an allocation are refused during a capture; a
 * capture broken by a forbidden call still ends, and the backend works afterwards).
 *
 * Error measure: max|gpu - cpu| / max|cpu| over the whole tensor, the CPU being the reference. It
 * cannot fail falsely on tiny elements (an elementwise relative error blows up where the value is
 * near 0) and one wrong element cannot hide in it (as it can in a norm over millions of values);
 * the norm ratio is printed beside it. NaN anywhere fails.
 *
 * Why TF32_TOL = 1e-3 holds (error model, not measured on a GPU yet): TF32 keeps 10 explicit
 * mantissa bits of each product input (relative rounding error at most 2^-11 = 4.9e-4, about
 * 2e-4 RMS when rounded to nearest); products are exact and sums are FP32. For the zero-mean
 * inputs here the error of a K-term sum is a random walk of the same order as the sum itself, so
 * the relative error does not grow with K. Emulating that (inputs rounded to nearest TF32, sums
 * exact) for every matmul case of this file gives max relative errors of 1.8e-4 to 3.8e-4 for
 * conv and dense and up to 5.7e-4 for attention y and probs (a score's error passes through exp
 * into probs, then through a second TF32 product): under 1e-3 by 2x or more. Were the hardware to
 * truncate the 13 low bits instead of rounding (a biased error), the same emulation gives up to
 * 8.8e-4 for conv/dense and 2e-3 for attention y and probs: this test would then fail attention,
 * which is a finding to report, not a tolerance to widen. (PyTorch's published TF32 matmul error,
 * 0.0022 of the mean |value| at the maximum over a 10240^2 product, fits rounding to nearest.)
 *
 * Outputs are poisoned with NaN before forward ops (an element the GPU never writes fails the
 * comparison), so is every SM's shared memory before each call (a kernel that reads shared
 * memory it never wrote fails), and gradients start from the same random values on both
 * backends (backward adds).
 * Every failure names its op and shape and the test carries on, so one GPU run lists them all.
 * Without a GPU (or without the CUDA build) the test exits 77: CTest reports it as skipped.
 * `test_gpu_ops --quick` runs the TF32-off pass only, small shapes, without capture (for
 * compute-sanitizer, which is slow and may not support graph capture). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef DD_HAVE_CUDA
#include <cuda_runtime.h>
/* the backend's stream (cuda/cuda_internal.h), to break a capture on purpose in test_capture */
extern cudaStream_t dd_cuda_stream;
/* cuda/cuda_internal.h: the group norm forward's launch configurations, forced one by one */
int dd_cuda_gn_set_policy(const char *policy);
const char *dd_cuda_gn_config_name(int i);
#endif

#include "diffusion/backend.h"
#include "diffusion/cuda.h"
#include "diffusion/error.h"
#include "testutil.h"

#ifdef DD_HAVE_CUDA
/* cuda/cuda_internal.h: does the fused attention forward take this shape? */
int dd_cuda_attention_fused_fits(const dd_attn_shape *s);
#endif

#define FP32_TOL 1e-5
#define TF32_TOL 1e-3

static const dd_backend *gpu;
static const dd_backend *cpu = &dd_cpu_backend;
static double mm_tol; /* tolerance for the cuDNN/cuBLAS ops in the current mode */
static int big;       /* run the large shapes too (not in --quick) */
static int tf32_pass; /* 1 in the TF32-on pass: the shapes of ops without products run once */
static uint64_t seed_counter = 1;
static char current[160] = "setup"; /* the case running, named in every failure */

/* Above 2^24 values a 1-D kernel's grid (capped at 65536 blocks of 256) must loop. */
#define BIG_N (((size_t)1 << 24) + 4099)

#ifdef DD_HAVE_CUDA
/* cuda/cuda_internal.h: every SM's shared memory filled with NaN; the cuDNN algorithm a
 * convolution direction runs */
int dd_cuda_poison_shared(void);
int dd_cuda_conv_cudnn_algo(const dd_conv_shape *s, int dir);
/* in the CPU emulation of CUDA only (tests/emu/emu_dnn.cpp): the algorithm its cudnnFind ranks
 * first and makes slow under EMU_CUDNN_FIND_SLOW_FIRST */
int emu_cudnn_slow_algo(int dir) __attribute__((weak));
#endif

/* Before each call: shared memory full of NaN (not while a capture runs), so that a kernel that
 * reads shared memory it never wrote, even against zeros, fails its comparison. */
static int poison_first(void) {
#ifdef DD_HAVE_CUDA
    if (!dd_cuda_capturing()) return dd_cuda_poison_shared();
#endif
    return 0;
}

/* A backend call that must succeed; a failure names the case and carries on. */
#define OK(call)                                                                                  \
    CHECKF(poison_first() == 0 && (call) == 0, "%s: %s failed: %s", current, #call,               \
           dd_error_message())

/* ---------------------------------------------------------------- buffers */

/* Device buffers of the current case, freed by release(). */
#define MAX_LIVE 256
static void *live[MAX_LIVE];
static int nlive;
static void *hlive[MAX_LIVE];
static int nhlive;

static void begin(const char *tag) {
    snprintf(current, sizeof current, "%s", tag);
    printf("%s\n", tag);
}

/* Only when the test cannot go on (no memory, or a dead CUDA context: every later call would
 * fail too): names the case, prints the summary so far. */
static void fatal(const char *what) {
    fprintf(stderr, "FATAL in %s: %s: %s\n", current, what, dd_error_message());
    tu_failures++;
    (void)tu_finish();
    exit(1);
}

static void *dalloc(size_t bytes) {
    void *p;
    if (gpu->alloc(&p, bytes)) fatal("gpu alloc");
    if (nlive == MAX_LIVE) fatal("too many live buffers in one case");
    live[nlive++] = p;
    return p;
}

static void *halloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) fatal("host out of memory");
    if (nhlive == MAX_LIVE) fatal("too many live host buffers in one case");
    hlive[nhlive++] = p;
    return p;
}

static void release(void) {
    while (nlive) gpu->free(live[--nlive]);
    while (nhlive) free(hlive[--nhlive]);
}

/* host values uniform in [lo, hi) */
static float *hrand(size_t n, float lo, float hi) {
    float *h = halloc(n * sizeof(float));
    tu_fill_uniform(h, n, lo, hi, seed_counter++);
    return h;
}

static float *hcopy(const float *src, size_t n) {
    float *h = halloc(n * sizeof(float));
    memcpy(h, src, n * sizeof(float));
    return h;
}

/* device copy of host data (any type) */
static void *dup_bytes(const void *h, size_t bytes) {
    void *d = dalloc(bytes);
    if (gpu->to_device(d, h, bytes)) fatal("to_device");
    return d;
}

static float *dup(const float *h, size_t n) { return dup_bytes(h, n * sizeof(float)); }

/* device buffer full of NaN: whatever a forward op leaves unwritten fails the comparison */
static float *dpoison(size_t n) {
    float *h = halloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    return dup(h, n);
}

/* max|a - b| / max|b| (see the top of the file); *norm_rel gets norm(a - b) / norm(b). NaN when
 * either side holds a NaN, infinity when b is all zeros and a is not. */
static double max_rel_err(const float *a, const float *b, size_t n, double *norm_rel) {
    double dmax = 0.0, bmax = 0.0, d2 = 0.0, b2 = 0.0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]), r = fabs((double)b[i]);
        if (isnan(d)) nan = 1;
        if (d > dmax) dmax = d;
        if (r > bmax) bmax = r;
        d2 += d * d;
        b2 += r * r;
    }
    *norm_rel = nan ? NAN : b2 > 0.0 ? sqrt(d2 / b2) : (d2 > 0.0 ? INFINITY : 0.0);
    if (nan) return NAN;
    if (bmax == 0.0) return dmax == 0.0 ? 0.0 : INFINITY;
    return dmax / bmax;
}

/* GPU result vs the CPU's. The line ends "rel err E (tol T)": bench/gpu_check.sh reads it. */
static void expect(const char *what, const float *cpu_ref, const float *dev, size_t n, double tol) {
    float *h = halloc(n * sizeof(float));
    if (gpu->to_host(h, dev, n * sizeof(float))) fatal("to_host");
    double nr, e = max_rel_err(h, cpu_ref, n, &nr);
    printf("  %-60s norm %.1e, max rel err %.2e (tol %.0e)\n", what, nr, e, tol);
    CHECKF(e <= tol, "%s: max relative error %.3e above %.1e (norm %.2e)", what, e, tol, nr);
}

/* Errors of asynchronous kernels surface here; a failed kernel may have killed the context, in
 * which case the next allocation or copy stops the test with this case's name. */
static void sync_or_fail(const char *what) {
    if (gpu->synchronize()) tu_fail(__FILE__, __LINE__, "%s: %s", what, dd_error_message());
}

/* ---------------------------------------------------------------- convolution */

static void case_conv(int N, int Cin, int H, int W, int Cout, int K, int stride, int pad,
                      int bias, int want_dx) {
    dd_conv_shape s = {N, Cin, H, W, Cout, K, stride, pad, 0, 0};
    s.Ho = (H + 2 * pad - K) / stride + 1;
    s.Wo = (W + 2 * pad - K) / stride + 1;
    char tag[96];
    snprintf(tag, sizeof tag, "conv N%d %d->%d %dx%d k%d s%d p%d%s", N, Cin, Cout, H, W, K, stride,
             pad, bias ? " +b" : "");
    begin(tag);
    const size_t nx = (size_t)N * Cin * H * W, ny = (size_t)N * Cout * s.Ho * s.Wo,
                 nw = (size_t)Cout * Cin * K * K;
    float *x = hrand(nx, -1, 1), *w = hrand(nw, -0.5f, 0.5f), *b = hrand(Cout, -1, 1);
    float *dy = hrand(ny, -1, 1);
    float *dx0 = hrand(nx, -1, 1), *dw0 = hrand(nw, -1, 1), *db0 = hrand(Cout, -1, 1);

    /* CPU reference */
    void *cws = NULL;
    size_t cwsb = cpu->conv2d_workspace(&s);
    if (cwsb && cpu->alloc(&cws, cwsb)) fatal("cpu alloc");
    float *y = halloc(ny * sizeof(float));
    float *dx = hcopy(dx0, nx), *dw = hcopy(dw0, nw), *db = hcopy(db0, Cout);
    OK(cpu->conv2d_forward(y, x, w, bias ? b : NULL, &s, cws));
    OK(cpu->conv2d_backward(want_dx ? dx : NULL, dw, bias ? db : NULL, dy, x, w, &s, cws));
    cpu->free(cws);

    /* GPU */
    size_t gwsb = gpu->conv2d_workspace(&s);
    void *gws = gwsb ? dalloc(gwsb) : NULL;
    float *gx = dup(x, nx), *gw = dup(w, nw), *gb = dup(b, Cout), *gdy = dup(dy, ny);
    float *gy = dpoison(ny), *gdx = dup(dx0, nx), *gdw = dup(dw0, nw), *gdb = dup(db0, Cout);
    OK(gpu->conv2d_forward(gy, gx, gw, bias ? gb : NULL, &s, gws));
    OK(gpu->conv2d_backward(want_dx ? gdx : NULL, gdw, bias ? gdb : NULL, gdy, gx, gw, &s,
                                  gws));
    sync_or_fail(tag);
    char what[160];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, ny, mm_tol);
    snprintf(what, sizeof what, "%s dx%s", tag, want_dx ? "" : " (NULL: untouched)");
    expect(what, dx, gdx, nx, want_dx ? mm_tol : 0.0);
    snprintf(what, sizeof what, "%s dw", tag);
    expect(what, dw, gdw, nw, mm_tol);
    snprintf(what, sizeof what, "%s db", tag);
    expect(what, db, gdb, Cout, bias ? FP32_TOL : 0.0);
#ifdef DD_HAVE_CUDA
    /* Emulated, with EMU_CUDNN_FIND_SLOW_FIRST: cudnnFind ranks an algorithm first that is
     * slow, and DIFFUSION_CONV=auto, which times cudnnFind's first results again, must not keep
     * it (cuda_dnn.c: cudnnFind times each algorithm once, too few to rank close ones). */
    if (emu_cudnn_slow_algo && emu_cudnn_slow_algo(0) >= 0)
        for (int d = 0; d < 3; d++) {
            const int got = dd_cuda_conv_cudnn_algo(&s, d), slow = emu_cudnn_slow_algo(d);
            CHECKF(got >= 0 && got != slow,
                   "%s: direction %d runs cuDNN algorithm %d, the one cudnnFind misranked",
                   tag, d, got);
        }
#endif
    release();
}

static void test_conv(void) {
    case_conv(2, 3, 8, 8, 5, 3, 1, 1, 1, 1);
    case_conv(3, 4, 9, 7, 6, 4, 2, 1, 1, 1); /* the UNet's downsample: 4x4 stride 2, odd sizes */
    case_conv(2, 16, 7, 7, 32, 3, 1, 1, 0, 1);
    case_conv(1, 1, 5, 5, 2, 1, 1, 0, 1, 0); /* 1x1, dx not wanted */
    case_conv(4, 1, 28, 28, 6, 5, 1, 0, 1, 1); /* LeNet's first layer */
    if (!big) return;
    case_conv(1024, 1, 28, 28, 16, 3, 1, 1, 1, 0); /* the UNet's first conv at batch 1024 */
    case_conv(64, 64, 14, 14, 64, 3, 1, 1, 1, 1);
    case_conv(32, 96, 7, 7, 33, 3, 1, 1, 1, 1); /* channels not a multiple of 32 */
}

/* ---------------------------------------------------------------- dense */

static void case_dense(int N, int Cin, int Cout, int bias, int want_dx) {
    char tag[80];
    snprintf(tag, sizeof tag, "dense N%d %d->%d%s%s", N, Cin, Cout, bias ? " +b" : "",
             want_dx ? "" : " (dx NULL)");
    begin(tag);
    const size_t nx = (size_t)N * Cin, ny = (size_t)N * Cout, nw = (size_t)Cout * Cin;
    float *x = hrand(nx, -1, 1), *w = hrand(nw, -1, 1), *b = hrand(Cout, -1, 1);
    float *dy = hrand(ny, -1, 1), *dx0 = hrand(nx, -1, 1), *dw0 = hrand(nw, -1, 1),
          *db0 = hrand(Cout, -1, 1);
    float *y = halloc(ny * sizeof(float)), *dx = hcopy(dx0, nx), *dw = hcopy(dw0, nw),
          *db = hcopy(db0, Cout);
    OK(cpu->dense_forward(y, x, w, bias ? b : NULL, N, Cin, Cout));
    OK(cpu->dense_backward(want_dx ? dx : NULL, dw, bias ? db : NULL, dy, x, w, N, Cin, Cout));

    float *gy = dpoison(ny), *gdx = dup(dx0, nx), *gdw = dup(dw0, nw), *gdb = dup(db0, Cout);
    OK(gpu->dense_forward(gy, dup(x, nx), dup(w, nw), bias ? dup(b, Cout) : NULL, N, Cin, Cout));
    OK(gpu->dense_backward(want_dx ? gdx : NULL, gdw, bias ? gdb : NULL, dup(dy, ny), dup(x, nx),
                           dup(w, nw), N, Cin, Cout));
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, ny, mm_tol);
    snprintf(what, sizeof what, "%s dx%s", tag, want_dx ? "" : " (NULL: untouched)");
    expect(what, dx, gdx, nx, want_dx ? mm_tol : 0.0);
    snprintf(what, sizeof what, "%s dw", tag);
    expect(what, dw, gdw, nw, mm_tol);
    snprintf(what, sizeof what, "%s db", tag);
    expect(what, db, gdb, Cout, bias ? FP32_TOL : 0.0);
    release();
}

/* count layers of one x in one call, layer l with cout[l] outputs, a bias where bias_mask has
 * bit l (no_bias_array: b itself NULL), each against the CPU's dense_forward; then the group's
 * backward against the CPU's dense_backward calls: dx (unless no_dx), and each layer's dw and
 * db (where it has a bias) added to random values */
static void case_dense_group(int N, int Cin, int count, const int *cout, unsigned bias_mask,
                             int no_bias_array, int no_dx) {
    char tag[96];
    snprintf(tag, sizeof tag, "dense group N%d %d-> %d layers (%d..%d)%s", N, Cin, count, cout[0],
             cout[count - 1], no_bias_array ? ", no biases" : "");
    begin(tag);
    const size_t nx = (size_t)N * Cin;
    float *x = hrand(nx, -1, 1), *gx = dup(x, nx);
    float *y[DD_DENSE_GROUP_MAX], *gy[DD_DENSE_GROUP_MAX];
    const float *gw[DD_DENSE_GROUP_MAX], *gb[DD_DENSE_GROUP_MAX];
    const float *hw[DD_DENSE_GROUP_MAX], *hdy[DD_DENSE_GROUP_MAX], *gdy[DD_DENSE_GROUP_MAX];
    float *hdw[DD_DENSE_GROUP_MAX], *hdb[DD_DENSE_GROUP_MAX], *gdw[DD_DENSE_GROUP_MAX],
        *gdb[DD_DENSE_GROUP_MAX];
    for (int l = 0; l < count; l++) {
        const size_t nw = (size_t)cout[l] * Cin, ny = (size_t)N * cout[l];
        const int has_b = !no_bias_array && (bias_mask >> l & 1);
        float *w = hrand(nw, -1, 1), *b = hrand((size_t)cout[l], -1, 1);
        y[l] = halloc(ny * sizeof(float));
        OK(cpu->dense_forward(y[l], x, w, has_b ? b : NULL, N, Cin, cout[l]));
        gy[l] = dpoison(ny);
        gw[l] = dup(w, nw);
        gb[l] = has_b ? dup(b, (size_t)cout[l]) : NULL;
        /* backward's inputs and the gradients it adds to */
        float *dw0 = hrand(nw, -1, 1), *db0 = hrand((size_t)cout[l], -1, 1);
        hw[l] = w;
        hdy[l] = hrand(ny, -1, 1);
        gdy[l] = dup(hdy[l], ny);
        hdw[l] = hcopy(dw0, nw);
        gdw[l] = dup(dw0, nw);
        hdb[l] = has_b ? hcopy(db0, (size_t)cout[l]) : NULL;
        gdb[l] = has_b ? dup(db0, (size_t)cout[l]) : NULL;
    }
    OK(gpu->dense_group_forward(count, gy, gx, gw, no_bias_array ? NULL : gb, N, Cin, cout));
    float *dx0 = hrand(nx, -1, 1), *hdx = hcopy(dx0, nx), *gdx = dup(dx0, nx);
    OK(cpu->dense_group_backward(count, no_dx ? NULL : hdx, hdw, no_bias_array ? NULL : hdb, hdy,
                                 x, hw, N, Cin, cout));
    OK(gpu->dense_group_backward(count, no_dx ? NULL : gdx, gdw, no_bias_array ? NULL : gdb, gdy,
                                 gx, gw, N, Cin, cout));
    sync_or_fail(tag);
    char what[128];
    /* of act(x), where the one-kernel forward takes it: against act_forward, then the layers */
    const int with_act = Cin <= DD_DENSE_GROUP_ACT_CIN;
    const dd_act act = count % 2 ? DD_ACT_GELU_TANH : DD_ACT_SWISH;
    float *ax = halloc(nx * sizeof(float)), *ya[DD_DENSE_GROUP_MAX], *gya[DD_DENSE_GROUP_MAX];
    OK(cpu->act_forward(ax, x, nx, act));
    for (int l = 0; with_act && l < count; l++) {
        const int has_b = !no_bias_array && (bias_mask >> l & 1);
        ya[l] = halloc((size_t)N * cout[l] * sizeof(float));
        gya[l] = dpoison((size_t)N * cout[l]);
        /* the CPU's weights and biases: copies of what went to the GPU */
        float *w = halloc((size_t)cout[l] * Cin * sizeof(float));
        float *b = has_b ? halloc((size_t)cout[l] * sizeof(float)) : NULL;
        OK(gpu->to_host(w, gw[l], (size_t)cout[l] * Cin * sizeof(float)));
        if (b) OK(gpu->to_host(b, gb[l], (size_t)cout[l] * sizeof(float)));
        OK(cpu->dense_forward(ya[l], ax, w, b, N, Cin, cout[l]));
    }
    if (with_act) {
        OK(gpu->dense_group_act_forward(count, gya, gx, act, gw, no_bias_array ? NULL : gb, N,
                                        Cin, cout));
        sync_or_fail(tag);
    }
    for (int l = 0; l < count; l++) {
        snprintf(what, sizeof what, "%s layer %d y", tag, l);
        expect(what, y[l], gy[l], (size_t)N * cout[l], mm_tol);
        if (with_act) {
            snprintf(what, sizeof what, "%s layer %d y of %s(x)", tag, l,
                     act == DD_ACT_SWISH ? "swish" : "gelu");
            expect(what, ya[l], gya[l], (size_t)N * cout[l], mm_tol);
        }
        snprintf(what, sizeof what, "%s layer %d dw", tag, l);
        expect(what, hdw[l], gdw[l], (size_t)cout[l] * Cin, mm_tol);
        if (hdb[l]) {
            snprintf(what, sizeof what, "%s layer %d db", tag, l);
            expect(what, hdb[l], gdb[l], (size_t)cout[l], FP32_TOL);
        }
    }
    snprintf(what, sizeof what, "%s dx%s", tag, no_dx ? " (NULL: untouched)" : "");
    expect(what, no_dx ? dx0 : hdx, gdx, nx, no_dx ? 0.0 : mm_tol);
    release();
}

static void test_dense(void) {
    /* the UNet's eight projections of its time embedding (64 -> 16..64) */
    const int unet[] = {16, 32, 64, 64, 64, 64, 32, 16};
    case_dense_group(6, 64, 8, unet, 0xffu, 0, 0);
    const int odd[] = {5, 1, 33, 17};
    case_dense_group(3, 84, 4, odd, 0x5u, 0, 0); /* some layers without a bias */
    case_dense_group(3, 84, 4, odd, 0x5u, 0, 1); /* and no dx */
    /* no bias array; 300 inputs: past the one-kernel backward's 256, one call a layer */
    case_dense_group(2, 300, 4, odd, 0u, 1, 0);
    const int sixteen[DD_DENSE_GROUP_MAX] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    case_dense_group(2, 7, DD_DENSE_GROUP_MAX, sixteen, 0xaaaau, 0, 0); /* the most layers */
    const int two[] = {20, 3}, wide[] = {300, 8};
    case_dense_group(4, 1100, 2, two, 0x3u, 0, 0); /* over 1024 inputs: one cuBLAS call each */
    case_dense_group(5, 40, 2, wide, 0x1u, 0, 0);  /* a layer of 300 outputs: one call each */
    case_dense(4, 7, 5, 1, 1);
    case_dense(33, 64, 128, 1, 1);
    case_dense(3, 84, 10, 0, 1);
    case_dense(5, 64, 16, 1, 0); /* a first layer: no dx */
    case_dense(3, 1100, 5, 1, 1); /* over 1024 inputs: cuBLAS, not the one-kernel forward */
    case_dense(2, 1024, 3, 0, 1); /* the one-kernel forward's largest */
    if (!big) return;
    case_dense(1024, 1000, 77, 1, 1);
    case_dense(37, 3136, 10, 1, 1); /* LeNet-like flatten of 7x7x64 */
}

/* ---------------------------------------------------------------- group norm */

/* params 0: dgamma, dbeta and dadd NULL (only dx wanted), which must leave them untouched;
 * with_ws 0: backward without its workspace (the backend's slower path for the parameters);
 * with_res: a residual added to y, whose gradient dres += dy */
static float gn_offset; /* added to x: a mean far from zero against the spread */

static void case_gn_ws(int N, int C, int HW, int G, int swish, int with_add, int params,
                       int with_ws, int with_res) {
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f, 0, 0};
    char tag[120];
    snprintf(tag, sizeof tag, "group_norm N%d C%d HW%d G%d%s%s%s%s%s%s", N, C, HW, G,
             swish ? " swish" : "", with_add ? " +add" : "", with_res ? " +res" : "",
             params ? "" : " (dx only)", with_ws ? "" : " (no workspace)",
             gn_offset != 0.0f ? " x+40" : "");
    begin(tag);
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    /* an offset and scale so the mean and variance matter */
    float *x = hrand(n, -2 + gn_offset, 3 + gn_offset), *gamma = hrand(C, 0.5f, 1.5f), *beta = hrand(C, -0.5f, 0.5f);
    float *add = hrand(nnc, -1, 1), *dy = hrand(n, -1, 1);
    float *dx0 = hrand(n, -1, 1), *dg0 = hrand(C, -1, 1), *db0 = hrand(C, -1, 1),
          *da0 = hrand(nnc, -1, 1);
    float *y = halloc(n * sizeof(float)), *mean = halloc(nng * sizeof(float)),
          *rstd = halloc(nng * sizeof(float));
    float *dx = hcopy(dx0, n), *dg = hcopy(dg0, C), *db = hcopy(db0, C), *da = hcopy(da0, nnc);
    float *res = hrand(n, -1, 1), *dr0 = hrand(n, -1, 1), *dr = hcopy(dr0, n);
    const float *a = with_add ? add : NULL, *rs = with_res ? res : NULL;
    OK(cpu->group_norm_forward(y, mean, rstd, x, gamma, beta, a, rs, &s));
    OK(cpu->group_norm_backward(dx, params ? dg : NULL, params ? db : NULL,
                                params && with_add ? da : NULL, with_res ? dr : NULL, dy, x, mean,
                                rstd, gamma, beta, a, &s, NULL));

    float *gx = dup(x, n), *gg = dup(gamma, C), *gb = dup(beta, C);
    float *ga = with_add ? dup(add, nnc) : NULL;
    float *gy = dpoison(n), *gmean = dpoison(nng), *grstd = dpoison(nng);
    float *gdx = dup(dx0, n), *gdg = dup(dg0, C), *gdb = dup(db0, C), *gda = dup(da0, nnc);
    float *gres = with_res ? dup(res, n) : NULL, *gdr = dup(dr0, n);
    OK(gpu->group_norm_forward(gy, gmean, grstd, gx, gg, gb, ga, gres, &s));
    /* backward from the CPU's statistics, so the comparison isolates backward */
    float *cm = dup(mean, nng), *cr = dup(rstd, nng);
    const size_t wsb = gpu->group_norm_workspace(&s);
    void *gws = with_ws && wsb ? (void *)dpoison(wsb / sizeof(float) + 1) : NULL;
    OK(gpu->group_norm_backward(gdx, params ? gdg : NULL, params ? gdb : NULL,
                                params && with_add ? gda : NULL, with_res ? gdr : NULL, dup(dy, n),
                                gx, cm, cr, gg, gb, ga, &s, gws));
    sync_or_fail(tag);
    char what[160];
#define GN_EXPECT(name, ref, dev, cnt, tol)                                                       \
    snprintf(what, sizeof what, "%s %s", tag, name);                                              \
    expect(what, ref, dev, cnt, tol)
    GN_EXPECT("y", y, gy, n, FP32_TOL);
    GN_EXPECT("mean", mean, gmean, nng, FP32_TOL);
    GN_EXPECT("rstd", rstd, grstd, nng, FP32_TOL);
    GN_EXPECT("dx", dx, gdx, n, FP32_TOL);
    GN_EXPECT("dgamma", dg, gdg, C, params ? FP32_TOL : 0.0);
    GN_EXPECT("dbeta", db, gdb, C, params ? FP32_TOL : 0.0);
    GN_EXPECT("dadd", da, gda, nnc, params && with_add ? FP32_TOL : 0.0);
    GN_EXPECT("dres", dr, gdr, n, with_res ? FP32_TOL : 0.0);
#undef GN_EXPECT
    release();
}

#ifdef DD_HAVE_CUDA
/* The forward's launch configurations forced one by one (DIFFUSION_GN=<name>: where one does not
 * hold the groups, the fixed choice runs), then auto again (timed per shape, as every other case
 * here runs it), against the CPU. */
static void case_gn_configs(int N, int C, int HW, int G, int swish, int with_add, int with_res) {
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f, 0, 0};
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    float *x = hrand(n, 28, 33), *gamma = hrand(C, 0.5f, 1.5f), *beta = hrand(C, -0.5f, 0.5f);
    float *add = hrand(nnc, -1, 1), *res = hrand(n, -1, 1);
    float *y = halloc(n * sizeof(float)), *mean = halloc(nng * sizeof(float)),
          *rstd = halloc(nng * sizeof(float));
    OK(cpu->group_norm_forward(y, mean, rstd, x, gamma, beta, with_add ? add : NULL,
                               with_res ? res : NULL, &s));
    float *gx = dup(x, n), *gg = dup(gamma, C), *gb = dup(beta, C);
    float *ga = with_add ? dup(add, nnc) : NULL, *gres = with_res ? dup(res, n) : NULL;
    float *nan_h = halloc(n * sizeof(float)), *gy = dalloc(n * sizeof(float)),
          *gm = dalloc(nng * sizeof(float)), *gr = dalloc(nng * sizeof(float));
    for (size_t i = 0; i < n; i++) nan_h[i] = NAN;
    for (int c = 0; dd_cuda_gn_config_name(c); c++) {
        char tag[160], what[200];
        snprintf(tag, sizeof tag, "group_norm forward %s N%d C%d HW%d G%d%s%s%s (x + 30)",
                 dd_cuda_gn_config_name(c), N, C, HW, G, swish ? " swish" : "",
                 with_add ? " +add" : "", with_res ? " +res" : "");
        begin(tag);
        OK(dd_cuda_gn_set_policy(dd_cuda_gn_config_name(c)));
        /* NaN outputs: whatever the configuration leaves unwritten fails */
        OK(gpu->to_device(gy, nan_h, n * sizeof(float)));
        OK(gpu->to_device(gm, nan_h, nng * sizeof(float)));
        OK(gpu->to_device(gr, nan_h, nng * sizeof(float)));
        OK(gpu->group_norm_forward(gy, gm, gr, gx, gg, gb, ga, gres, &s));
        sync_or_fail(tag);
        snprintf(what, sizeof what, "%s y", tag);
        expect(what, y, gy, n, FP32_TOL);
        snprintf(what, sizeof what, "%s mean", tag);
        expect(what, mean, gm, nng, FP32_TOL);
        snprintf(what, sizeof what, "%s rstd", tag);
        expect(what, rstd, gr, nng, FP32_TOL);
    }
    release();
    OK(dd_cuda_gn_set_policy("auto"));
}

/* The fused backward's launch configurations (the names starting with b) forced one by one,
 * against the CPU's backward from the same statistics and starting gradients. */
static void case_gn_bwd_configs(int N, int C, int HW, int G, int swish) {
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f, 0, 0};
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    float *x = hrand(n, -2, 3), *gamma = hrand(C, 0.5f, 1.5f), *beta = hrand(C, -0.5f, 0.5f);
    float *add = hrand(nnc, -1, 1), *dy = hrand(n, -1, 1);
    float *dx0 = hrand(n, -1, 1), *dg0 = hrand(C, -1, 1), *db0 = hrand(C, -1, 1),
          *da0 = hrand(nnc, -1, 1), *dr0 = hrand(n, -1, 1);
    float *y = halloc(n * sizeof(float)), *mean = halloc(nng * sizeof(float)),
          *rstd = halloc(nng * sizeof(float));
    float *dx = hcopy(dx0, n), *dg = hcopy(dg0, C), *db = hcopy(db0, C), *da = hcopy(da0, nnc),
          *dr = hcopy(dr0, n);
    OK(cpu->group_norm_forward(y, mean, rstd, x, gamma, beta, add, NULL, &s));
    OK(cpu->group_norm_backward(dx, dg, db, da, dr, dy, x, mean, rstd, gamma, beta, add, &s,
                                NULL));
    float *gx = dup(x, n), *gg = dup(gamma, C), *gb = dup(beta, C), *ga = dup(add, nnc),
          *gdy = dup(dy, n), *gm = dup(mean, nng), *gr = dup(rstd, nng);
    float *gdx = dalloc(n * sizeof(float)), *gdg = dalloc(C * sizeof(float)),
          *gdb = dalloc(C * sizeof(float)), *gda = dalloc(nnc * sizeof(float)),
          *gdr = dalloc(n * sizeof(float));
    const size_t wsb = gpu->group_norm_workspace(&s);
    void *gws = wsb ? dalloc(wsb) : NULL;
    for (int c = 0; dd_cuda_gn_config_name(c); c++) {
        if (dd_cuda_gn_config_name(c)[0] != 'b') continue;
        char tag[160], what[200];
        snprintf(tag, sizeof tag, "group_norm backward %s N%d C%d HW%d G%d%s",
                 dd_cuda_gn_config_name(c), N, C, HW, G, swish ? " swish" : "");
        begin(tag);
        OK(dd_cuda_gn_set_policy(dd_cuda_gn_config_name(c)));
        OK(gpu->to_device(gdx, dx0, n * sizeof(float)));
        OK(gpu->to_device(gdg, dg0, C * sizeof(float)));
        OK(gpu->to_device(gdb, db0, C * sizeof(float)));
        OK(gpu->to_device(gda, da0, nnc * sizeof(float)));
        OK(gpu->to_device(gdr, dr0, n * sizeof(float)));
        OK(gpu->group_norm_backward(gdx, gdg, gdb, gda, gdr, gdy, gx, gm, gr, gg, gb, ga, &s,
                                    gws));
        sync_or_fail(tag);
        const float *ref[5] = {dx, dg, db, da, dr}, *got[5] = {gdx, gdg, gdb, gda, gdr};
        const size_t cnt[5] = {n, (size_t)C, (size_t)C, nnc, n};
        const char *nm[5] = {"dx", "dgamma", "dbeta", "dadd", "dres"};
        for (int o = 0; o < 5; o++) {
            snprintf(what, sizeof what, "%s %s", tag, nm[o]);
            expect(what, ref[o], got[o], cnt[o], FP32_TOL);
        }
    }
    release();
    OK(dd_cuda_gn_set_policy("auto"));
}
#endif

/* x and res as channel slices of wider tensors (batch strides xC HW and rC HW: a merged
 * convolution's halves, models/blocks.c): on the CPU the slice gives what the packed op gives
 * on a copy of it, bit for bit, and leaves the channels outside it alone; the GPU's against
 * that, over the whole wide buffers (so a write outside the slice fails too). */
static void case_gn_strided(int N, int C, int HW, int G, int with_add, int with_ws, int xC, int xc,
                            int rC, int rc) {
    char tag[160];
    snprintf(tag, sizeof tag, "group_norm N%d C%d HW%d G%d strided: x channels %d+ of %d, res %d+ "
             "of %d%s%s", N, C, HW, G, xc, xC, rc, rC, with_add ? " +add" : "",
             with_ws ? "" : " (no workspace)");
    begin(tag);
    dd_gn_shape s = {N, C, HW, G, 1, 1e-5f, (size_t)xC * HW, (size_t)rC * HW};
    dd_gn_shape pk = {N, C, HW, G, 1, 1e-5f, 0, 0};
    const size_t n = (size_t)N * C * HW, nx = (size_t)N * xC * HW, nr = (size_t)N * rC * HW,
                 nng = (size_t)N * G, nnc = (size_t)N * C, chw = (size_t)C * HW;
    const size_t xo = (size_t)xc * HW, ro = (size_t)rc * HW;
    float *X = hrand(nx, -2, 3), *R = hrand(nr, -1, 1), *gamma = hrand(C, 0.5f, 1.5f),
          *beta = hrand(C, -0.5f, 0.5f), *add = hrand(nnc, -1, 1), *dy = hrand(n, -1, 1);
    float *dX0 = hrand(nx, -1, 1), *dR0 = hrand(nr, -1, 1), *dg0 = hrand(C, -1, 1),
          *db0 = hrand(C, -1, 1), *da0 = hrand(nnc, -1, 1);
    const float *a = with_add ? add : NULL;
    float *y = halloc(n * sizeof(float)), *mean = halloc(nng * sizeof(float)),
          *rstd = halloc(nng * sizeof(float));
    float *dX = hcopy(dX0, nx), *dR = hcopy(dR0, nr), *dg = hcopy(dg0, C), *db = hcopy(db0, C),
          *da = hcopy(da0, nnc);
    OK(cpu->group_norm_forward(y, mean, rstd, X + xo, gamma, beta, a, R + ro, &s));
    OK(cpu->group_norm_backward(dX + xo, dg, db, with_add ? da : NULL, dR + ro, dy, X + xo, mean,
                                rstd, gamma, beta, a, &s, NULL));
    /* the packed op on copies of the slices */
    float *x = halloc(n * sizeof(float)), *res = halloc(n * sizeof(float)),
          *dx = halloc(n * sizeof(float)), *dres = halloc(n * sizeof(float));
    for (int i = 0; i < N; i++) {
        memcpy(x + i * chw, X + (size_t)i * xC * HW + xo, chw * sizeof(float));
        memcpy(res + i * chw, R + (size_t)i * rC * HW + ro, chw * sizeof(float));
        memcpy(dx + i * chw, dX0 + (size_t)i * xC * HW + xo, chw * sizeof(float));
        memcpy(dres + i * chw, dR0 + (size_t)i * rC * HW + ro, chw * sizeof(float));
    }
    float *py = halloc(n * sizeof(float)), *pm = halloc(nng * sizeof(float)),
          *pr = halloc(nng * sizeof(float));
    float *pdg = hcopy(dg0, C), *pdb = hcopy(db0, C), *pda = hcopy(da0, nnc);
    OK(cpu->group_norm_forward(py, pm, pr, x, gamma, beta, a, res, &pk));
    OK(cpu->group_norm_backward(dx, pdg, pdb, with_add ? pda : NULL, dres, dy, x, pm, pr, gamma,
                                beta, a, &pk, NULL));
    int same = !memcmp(y, py, n * sizeof(float)) && !memcmp(mean, pm, nng * sizeof(float)) &&
               !memcmp(rstd, pr, nng * sizeof(float)) && !memcmp(dg, pdg, C * sizeof(float)) &&
               !memcmp(db, pdb, C * sizeof(float)) && !memcmp(da, pda, nnc * sizeof(float));
    for (int i = 0; i < N; i++) {
        const float *sx = dX + (size_t)i * xC * HW, *sx0 = dX0 + (size_t)i * xC * HW;
        const float *sr = dR + (size_t)i * rC * HW, *sr0 = dR0 + (size_t)i * rC * HW;
        same = same && !memcmp(sx + xo, dx + i * chw, chw * sizeof(float)) &&
               !memcmp(sr + ro, dres + i * chw, chw * sizeof(float)) &&
               !memcmp(sx, sx0, xo * sizeof(float)) &&
               !memcmp(sx + xo + chw, sx0 + xo + chw, ((size_t)xC * HW - xo - chw) * sizeof(float)) &&
               !memcmp(sr, sr0, ro * sizeof(float)) &&
               !memcmp(sr + ro + chw, sr0 + ro + chw, ((size_t)rC * HW - ro - chw) * sizeof(float));
    }
    CHECKF(same, "%s: the CPU's slice differs from its packed op on a copy", tag);
    float *gX = dup(X, nx), *gR = dup(R, nr), *gg = dup(gamma, C), *gb = dup(beta, C);
    float *ga = with_add ? dup(add, nnc) : NULL;
    float *gy = dpoison(n), *gm = dpoison(nng), *gr = dpoison(nng);
    float *gdX = dup(dX0, nx), *gdR = dup(dR0, nr), *gdg = dup(dg0, C), *gdb = dup(db0, C),
          *gda = dup(da0, nnc);
    OK(gpu->group_norm_forward(gy, gm, gr, gX + xo, gg, gb, ga, gR + ro, &s));
    const size_t wsb = gpu->group_norm_workspace(&s);
    void *gws = with_ws && wsb ? (void *)dalloc(wsb) : NULL;
    float *cm = dup(mean, nng), *cr = dup(rstd, nng);
    OK(gpu->group_norm_backward(gdX + xo, gdg, gdb, with_add ? gda : NULL, gdR + ro, dup(dy, n),
                                gX + xo, cm, cr, gg, gb, ga, &s, gws));
    sync_or_fail(tag);
    char what[220];
    const float *ref[8] = {y, mean, rstd, dX, dR, dg, db, da};
    const float *got[8] = {gy, gm, gr, gdX, gdR, gdg, gdb, gda};
    const size_t cnt[8] = {n, nng, nng, nx, nr, (size_t)C, (size_t)C, nnc};
    const char *nm[8] = {"y", "mean", "rstd", "dx (whole buffer)", "dres (whole buffer)",
                         "dgamma", "dbeta", "dadd"};
    for (int o = 0; o < 8; o++) {
        snprintf(what, sizeof what, "%s %s", tag, nm[o]);
        expect(what, ref[o], got[o], cnt[o], FP32_TOL);
    }
#ifdef DD_HAVE_CUDA
    /* every forward and backward launch configuration on the slices (a float4 one on strides
     * that are not whole float4s runs the fixed choice) */
    const size_t big_n = nx > nr ? nx : nr;
    float *nanh = halloc(big_n * sizeof(float)), *back = halloc(big_n * sizeof(float));
    for (size_t i = 0; i < big_n; i++) nanh[i] = NAN;
    float *cy = dalloc(n * sizeof(float)), *cmn = dalloc(nng * sizeof(float)),
          *crs = dalloc(nng * sizeof(float)), *cdX = dalloc(nx * sizeof(float)),
          *cdR = dalloc(nr * sizeof(float)), *cdg = dalloc(C * sizeof(float)),
          *cdb = dalloc(C * sizeof(float)), *cda = dalloc(nnc * sizeof(float)), *gdy = dup(dy, n);
    for (int c = 0; !tf32_pass && dd_cuda_gn_config_name(c); c++) {
        OK(dd_cuda_gn_set_policy(dd_cuda_gn_config_name(c)));
        OK(gpu->to_device(cy, nanh, n * sizeof(float)));
        OK(gpu->to_device(cmn, nanh, nng * sizeof(float)));
        OK(gpu->to_device(crs, nanh, nng * sizeof(float)));
        OK(gpu->to_device(cdX, dX0, nx * sizeof(float)));
        OK(gpu->to_device(cdR, dR0, nr * sizeof(float)));
        OK(gpu->to_device(cdg, dg0, C * sizeof(float)));
        OK(gpu->to_device(cdb, db0, C * sizeof(float)));
        OK(gpu->to_device(cda, da0, nnc * sizeof(float)));
        OK(gpu->group_norm_forward(cy, cmn, crs, gX + xo, gg, gb, ga, gR + ro, &s));
        OK(gpu->group_norm_backward(cdX + xo, cdg, cdb, with_add ? cda : NULL, cdR + ro, gdy,
                                    gX + xo, cm, cr, gg, gb, ga, &s, gws));
        sync_or_fail(tag);
        const float *cgot[8] = {cy, cmn, crs, cdX, cdR, cdg, cdb, cda};
        double worst = 0.0;
        for (int o = 0; o < 8; o++) {
            if (gpu->to_host(back, cgot[o], cnt[o] * sizeof(float))) fatal("to_host");
            double nrel, e = max_rel_err(back, ref[o], cnt[o], &nrel);
            CHECKF(e <= FP32_TOL, "%s, %s: %s max relative error %.3e above %.1e", tag,
                   dd_cuda_gn_config_name(c), nm[o], e, FP32_TOL);
            if (!(e <= worst)) worst = e;
        }
        printf("  %s: %-8s all eight outputs, max rel err %.2e (tol %.0e)\n", tag,
               dd_cuda_gn_config_name(c), worst, FP32_TOL);
    }
    OK(dd_cuda_gn_set_policy("auto"));
#endif
    release();
}

/* each shape with and without the workspace, and with a residual (both backward paths) */
static void case_gn(int N, int C, int HW, int G, int swish, int with_add, int params) {
    case_gn_ws(N, C, HW, G, swish, with_add, params, 1, 0);
    case_gn_ws(N, C, HW, G, swish, with_add, params, 0, 0);
    case_gn_ws(N, C, HW, G, swish, with_add, params, 1, 1);
    case_gn_ws(N, C, HW, G, swish, with_add, params, 0, 1);
}

static void test_group_norm(void) {
    case_gn(2, 8, 9, 4, 0, 0, 1);
    case_gn(2, 8, 9, 4, 1, 1, 1);
    case_gn(3, 16, 49, 8, 1, 1, 1);
    case_gn(2, 6, 1, 1, 0, 1, 1);    /* 1x1 spatial, one group */
    case_gn(9, 32, 196, 8, 1, 0, 1); /* more samples than warps per block */
    case_gn(3, 24, 49, 8, 1, 1, 0);  /* dx only */
    case_gn(2, 40, 20, 2, 1, 1, 1);  /* 20 channels a group: passes of 8 warps */
    case_gn(3, 7, 33, 1, 0, 1, 1);   /* 7 channels a group: a warp each, one idle */
    case_gn(2, 300, 5, 1, 1, 1, 1);  /* 300 channels a group: beyond the one-pass kernel */
    /* the forward's launches by group size: 2 warps of 8 or 16 values a thread (above), 8 warps
     * of 8, 16 or 32, and over 8192 values a second read */
    case_gn(2, 16, 784, 8, 1, 1, 1); /* 1568 values a group (28x28, 2 channels a group) */
    case_gn(2, 8, 600, 2, 1, 1, 1);  /* 2400 */
    case_gn(2, 8, 1500, 2, 1, 1, 1); /* 6000 */
    case_gn(2, 4, 4500, 1, 1, 1, 1); /* 18000: the forward reads them again */
    /* a mean 30 spreads from zero: the forward's float partial sums (8 to 32 values a thread)
     * must still give the CPU's double statistics */
    gn_offset = 40.0f;
    case_gn(3, 16, 784, 8, 1, 1, 1);
    case_gn(2, 64, 49, 8, 1, 1, 1);
    gn_offset = 0.0f;
#ifdef DD_HAVE_CUDA
    /* every forward configuration where it is the smallest of its block size: groups of 200,
     * 392, 784, 1568, 3000, 6000 and 9000 (re-read) values, and the UNet's at batch 256 */
    if (!tf32_pass) {
        case_gn_configs(2, 4, 50, 1, 1, 1, 0);
        case_gn_configs(3, 16, 49, 2, 1, 0, 1);
        case_gn_configs(2, 16, 49, 1, 0, 1, 1);
        case_gn_configs(2, 16, 784, 8, 1, 1, 0);
        case_gn_configs(2, 2, 1500, 1, 1, 0, 1);
        case_gn_configs(1, 8, 1500, 2, 1, 1, 1);
        case_gn_configs(1, 2, 4500, 1, 0, 1, 0);
        case_gn_configs(2, 6, 7, 2, 1, 1, 1); /* 21 values: no float4 configuration applies */
        /* each backward configuration where it is the smallest V for its positions */
        static const int hws[] = {200, 400, 784, 1500, 3000};
        for (int i = 0; i < 5; i++) case_gn_bwd_configs(2, 4, hws[i], 2, 1);
        case_gn_bwd_configs(3, 64, 49, 8, 1);
        if (big) case_gn_configs(256, 16, 784, 8, 1, 1, 1);
    }
#endif
    /* channel slices (a merged convolution's halves): the UNet's decoder shapes, a slice in
     * the middle, an odd one that no float4 configuration takes, both backward paths */
    case_gn_strided(3, 16, 784, 8, 1, 1, 32, 0, 32, 16);
    case_gn_strided(2, 32, 196, 8, 1, 1, 64, 0, 64, 32);
    case_gn_strided(3, 64, 49, 8, 1, 1, 128, 0, 128, 64);
    case_gn_strided(2, 8, 25, 4, 0, 1, 24, 8, 12, 3);
    case_gn_strided(2, 6, 7, 2, 1, 1, 9, 1, 7, 1);
    case_gn_strided(3, 16, 784, 8, 1, 0, 32, 0, 32, 16);
    case_gn_strided(2, 300, 5, 1, 1, 1, 600, 0, 600, 300); /* beyond the one-pass backward */
    if (!big || tf32_pass) return;   /* no products: the large shape once */
    case_gn(1024, 64, 784, 8, 1, 1, 1); /* batch 1024 of 28x28x64: 51M values */
    case_gn(2, 192, 3000, 8, 1, 1, 1);  /* 72000 values per group */
}

/* ---------------------------------------------------------------- elementwise */

static const char *act_name(dd_act a) {
    switch (a) {
    case DD_ACT_RELU: return "relu";
    case DD_ACT_SWISH: return "swish";
    case DD_ACT_GELU_TANH: return "gelu_tanh";
    case DD_ACT_GELU_ERF: return "gelu_erf";
    case DD_ACT_COUNT: break;
    }
    return "?";
}

static void case_act(dd_act a, size_t n) {
    char tag[64];
    snprintf(tag, sizeof tag, "%s n%zu", act_name(a), n);
    begin(tag);
    float *x = hrand(n, -6, 6), *dy = hrand(n, -1, 1), *dx0 = hrand(n, -1, 1);
    float *y = halloc(n * sizeof(float)), *dx = hcopy(dx0, n);
    OK(cpu->act_forward(y, x, n, a));
    OK(cpu->act_backward(dx, dy, x, n, a));
    float *gy = dpoison(n), *gdx = dup(dx0, n), *gx = dup(x, n);
    OK(gpu->act_forward(gy, gx, n, a));
    OK(gpu->act_backward(gdx, dup(dy, n), gx, n, a));
    OK(gpu->act_backward(NULL, dy, gx, n, a)); /* NULL gradient: nothing to do, no launch */
    sync_or_fail(tag);
    char what[96];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, n, FP32_TOL);
    snprintf(what, sizeof what, "%s dx", tag);
    expect(what, dx, gdx, n, FP32_TOL);
    release();
}

static void test_act(void) {
    for (int a = 0; a < DD_ACT_COUNT; a++) case_act((dd_act)a, 3001);
    if (big && !tf32_pass) case_act(DD_ACT_SWISH, BIG_N);
}

static void case_add(size_t n) {
    char tag[64];
    snprintf(tag, sizeof tag, "add n%zu", n);
    begin(tag);
    float *a = hrand(n, -1, 1), *b = hrand(n, -1, 1), *dy = hrand(n, -1, 1);
    float *da0 = hrand(n, -1, 1), *db0 = hrand(n, -1, 1);
    float *y = halloc(n * sizeof(float)), *da = hcopy(da0, n), *db = hcopy(db0, n);
    OK(cpu->add_forward(y, a, b, n));
    OK(cpu->add_backward(da, NULL, dy, n));
    OK(cpu->add_backward(da, db, dy, n));
    float *gy = dpoison(n), *gda = dup(da0, n), *gdb = dup(db0, n), *gdy = dup(dy, n);
    OK(gpu->add_forward(gy, dup(a, n), dup(b, n), n));
    OK(gpu->add_backward(gda, NULL, gdy, n));
    OK(gpu->add_backward(gda, gdb, gdy, n));
    sync_or_fail(tag);
    char what[96];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, n, 0.0); /* one rounding on both sides: exact */
    snprintf(what, sizeof what, "%s da (twice, once with db NULL)", tag);
    expect(what, da, gda, n, 0.0);
    snprintf(what, sizeof what, "%s db", tag);
    expect(what, db, gdb, n, 0.0);
    release();
}

static void case_concat(int N, int Ca, int Cb, int HW) {
    char tag[80];
    snprintf(tag, sizeof tag, "concat N%d %d+%d HW%d", N, Ca, Cb, HW);
    begin(tag);
    const size_t na = (size_t)N * Ca * HW, nb = (size_t)N * Cb * HW, ny = na + nb;
    float *ca = hrand(na, -1, 1), *cb = hrand(nb, -1, 1), *cdy = hrand(ny, -1, 1);
    float *cda0 = hrand(na, -1, 1), *cdb0 = hrand(nb, -1, 1);
    float *cy = halloc(ny * sizeof(float)), *cda = hcopy(cda0, na), *cdb = hcopy(cdb0, nb);
    OK(cpu->concat_forward(cy, ca, cb, N, Ca, Cb, HW));
    OK(cpu->concat_backward(cda, cdb, cdy, N, Ca, Cb, HW));
    float *gcy = dpoison(ny), *gcda = dup(cda0, na), *gcdb = dup(cdb0, nb), *gdy = dup(cdy, ny);
    OK(gpu->concat_forward(gcy, dup(ca, na), dup(cb, nb), N, Ca, Cb, HW));
    OK(gpu->concat_backward(gcda, gcdb, gdy, N, Ca, Cb, HW));
    OK(gpu->concat_backward(NULL, NULL, gdy, N, Ca, Cb, HW)); /* both NULL: nothing */
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, cy, gcy, ny, 0.0); /* data movement: exact */
    snprintf(what, sizeof what, "%s da", tag);
    expect(what, cda, gcda, na, 0.0);
    snprintf(what, sizeof what, "%s db", tag);
    expect(what, cdb, gcdb, nb, 0.0);
    release();
}

static void test_add_concat(void) {
    case_add(1237);
    case_concat(3, 2, 5, 7);
    case_concat(2, 4, 8, 9); /* whole float4s */
    if (!big || tf32_pass) return;
    case_add(BIG_N);
    case_concat(512, 64, 32, 784); /* 38.5M values */
}

static void case_upsample(int N, int C, int H, int W) {
    char tag[80];
    snprintf(tag, sizeof tag, "upsample2x N%d C%d %dx%d", N, C, H, W);
    begin(tag);
    const size_t nx = (size_t)N * C * H * W, nu = nx * 4;
    float *x = hrand(nx, -1, 1), *dy = hrand(nu, -1, 1), *dx0 = hrand(nx, -1, 1);
    float *y = halloc(nu * sizeof(float)), *dx = hcopy(dx0, nx);
    OK(cpu->upsample2x_forward(y, x, N, C, H, W));
    OK(cpu->upsample2x_backward(dx, dy, N, C, H, W));
    float *gy = dpoison(nu), *gdx = dup(dx0, nx);
    OK(gpu->upsample2x_forward(gy, dup(x, nx), N, C, H, W));
    OK(gpu->upsample2x_backward(gdx, dup(dy, nu), N, C, H, W));
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, nu, 0.0);
    snprintf(what, sizeof what, "%s dx", tag);
    expect(what, dx, gdx, nx, FP32_TOL);
    release();
}

/* values on a coarse grid so windows hold ties: the first maximum wins; odd H or W: floor */
static void case_maxpool(int N, int C, int H, int W) {
    char tag[80];
    snprintf(tag, sizeof tag, "maxpool2x2 N%d C%d %dx%d (ties)", N, C, H, W);
    begin(tag);
    const size_t nm = (size_t)N * C * H * W, np = (size_t)N * C * (H / 2) * (W / 2);
    float *mx = hrand(nm, -2, 2);
    for (size_t i = 0; i < nm; i++) mx[i] = floorf(mx[i] * 2.0f) / 2.0f;
    float *mdy = hrand(np, -1, 1), *mdx0 = hrand(nm, -1, 1);
    float *my = halloc(np * sizeof(float)), *mdx = hcopy(mdx0, nm);
    OK(cpu->maxpool2x2_forward(my, mx, N, C, H, W));
    OK(cpu->maxpool2x2_backward(mdx, mdy, mx, N, C, H, W));
    float *gmx = dup(mx, nm), *gmy = dpoison(np), *gmdx = dup(mdx0, nm);
    OK(gpu->maxpool2x2_forward(gmy, gmx, N, C, H, W));
    OK(gpu->maxpool2x2_backward(gmdx, dup(mdy, np), gmx, N, C, H, W));
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, my, gmy, np, 0.0);
    snprintf(what, sizeof what, "%s dx (first maximum)", tag);
    expect(what, mdx, gmdx, nm, 0.0);
    release();
}

static void test_upsample_maxpool(void) {
    case_upsample(2, 3, 5, 4);
    case_upsample(1, 2, 3, 5); /* odd width */
    case_maxpool(2, 3, 7, 6);
    if (!big || tf32_pass) return;
    case_upsample(1024, 64, 14, 14); /* 51M outputs */
    case_maxpool(1024, 64, 28, 28);  /* 51M inputs */
    case_maxpool(3, 5, 29, 31);
}

/* ---------------------------------------------------------------- attention */

static void case_attn(int N, int C, int heads, int P) {
    dd_attn_shape s = {N, C, heads, P, 0};
    char tag[64];
    snprintf(tag, sizeof tag, "attention N%d C%d heads%d P%d", N, C, heads, P);
    begin(tag);
    const size_t nqkv = (size_t)N * 3 * C * P, ny = (size_t)N * C * P,
                 npr = (size_t)N * heads * P * P;
    float *qkv = hrand(nqkv, -1.5f, 1.5f), *dy = hrand(ny, -1, 1), *dq0 = hrand(nqkv, -1, 1);
    float *y = halloc(ny * sizeof(float)), *probs = halloc(npr * sizeof(float)),
          *dq = hcopy(dq0, nqkv);
    void *cws = NULL;
    size_t cwsb = cpu->attention_workspace(&s);
    if (cwsb && cpu->alloc(&cws, cwsb)) fatal("cpu alloc");
    OK(cpu->attention_forward(y, probs, qkv, &s));
    OK(cpu->attention_backward(dq, dy, qkv, probs, &s, cws));
    cpu->free(cws);

    size_t gwsb = gpu->attention_workspace(&s);
    void *gws = gwsb ? dalloc(gwsb) : NULL;
    float *gqkv = dup(qkv, nqkv), *gy = dpoison(ny), *gpr = dpoison(npr), *gdq = dup(dq0, nqkv);
    OK(gpu->attention_forward(gy, gpr, gqkv, &s));
    /* backward from the CPU's probs, so the comparison isolates backward */
    float *gdy = dup(dy, ny);
    OK(gpu->attention_backward(gdq, gdy, gqkv, dup(probs, npr), &s, gws));
    OK(gpu->attention_backward(NULL, gdy, gqkv, gpr, &s, gws)); /* NULL gradient: nothing */
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, ny, mm_tol);
    snprintf(what, sizeof what, "%s probs", tag);
    expect(what, probs, gpr, npr, mm_tol);
    snprintf(what, sizeof what, "%s dqkv", tag);
    expect(what, dq, gdq, nqkv, mm_tol);
#ifdef DD_HAVE_CUDA
    /* a forward-only graph's call (probs_unread): the same y, and the fused kernel leaves the
     * probabilities unwritten */
    dd_attn_shape su = s;
    su.probs_unread = 1;
    float *gy2 = dpoison(ny), *gpr2 = dpoison(npr);
    OK(gpu->attention_forward(gy2, gpr2, gqkv, &su));
    sync_or_fail(tag);
    snprintf(what, sizeof what, "%s y, probs unread", tag);
    expect(what, y, gy2, ny, mm_tol);
    if (dd_cuda_attention_fused_fits(&s)) {
        float *h = halloc(npr * sizeof(float));
        if (gpu->to_host(h, gpr2, npr * sizeof(float))) fatal("to_host");
        size_t written = 0;
        for (size_t i = 0; i < npr; i++) written += !isnan(h[i]);
        CHECKF(written == 0, "%s: %zu probabilities written, though unread", tag, written);
    }
#endif
    release();
}

static void test_attention(void) {
    case_attn(2, 8, 2, 9);
    case_attn(3, 64, 4, 49); /* the UNet's middle attention at 7x7 */
    case_attn(1, 12, 3, 40); /* P not a multiple of 32 and above it */
    case_attn(1, 32, 1, 72);  /* D = 32, P = 72: near the fused forward's shared memory */
    case_attn(1, 16, 1, 120); /* too many positions for the fused forward: cuBLAS */
    case_attn(2, 12, 4, 1);   /* one position, D = 3 */
    case_attn(2, 40, 2, 30); /* D = 20: two passes of 16 lanes over d */
    if (!big) return;
    case_attn(256, 64, 4, 49); /* the middle attention at batch 256 */
    case_attn(16, 64, 4, 196); /* 14x14 positions */
}

/* ---------------------------------------------------------------- embedding, losses */

/* idx[n] = base + (n * 7 + 3) % rows, and every third sample reuses the row of the one before:
 * repeated rows, which the backward must sum. Small tables take the deterministic path (the CPU's
 * order of additions: exact), a large one the atomic path (any order: within FP32_TOL). */
static void case_embedding(int N, int rows, int dim, int base, int exact) {
    char tag[80];
    snprintf(tag, sizeof tag, "embedding N%d rows%d dim%d base%d", N, rows, dim, base);
    begin(tag);
    int32_t *idx = halloc((size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++)
        idx[n] = n % 3 == 2 ? idx[n - 1] : base + (int32_t)((n * 7 + 3) % rows);
    const size_t nt = (size_t)rows * dim, ny = (size_t)N * dim;
    float *table = hrand(nt, -1, 1), *dy = hrand(ny, -1, 1), *dt0 = hrand(nt, -1, 1);
    float *y = halloc(ny * sizeof(float)), *dt = hcopy(dt0, nt);
    OK(cpu->embedding_forward(y, table, idx, N, rows, dim, base));
    OK(cpu->embedding_backward(dt, dy, idx, N, rows, dim, base));
    int32_t *gidx = dup_bytes(idx, (size_t)N * sizeof(int32_t));
    float *gy = dpoison(ny), *gdt = dup(dt0, nt), *gdy = dup(dy, ny);
    OK(gpu->embedding_forward(gy, dup(table, nt), gidx, N, rows, dim, base));
    OK(gpu->embedding_backward(gdt, gdy, gidx, N, rows, dim, base));
    OK(gpu->embedding_backward(NULL, gdy, gidx, N, rows, dim, base)); /* NULL gradient: nothing */
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, ny, 0.0);
    snprintf(what, sizeof what, "%s dtable (repeated rows)", tag);
    expect(what, dt, gdt, nt, exact ? 0.0 : FP32_TOL);
    release();
}

static void test_embedding(void) {
    case_embedding(9, 10, 6, 0, 1);
    case_embedding(1024, 11, 64, 0, 1); /* the class table at batch 1024 */
    case_embedding(256, 100, 64, 1, 1); /* the timestep table: t = 1..T, rows 0..T-1 */
    if (!big || tf32_pass) return;
    case_embedding(300, 4096, 64, 1, 0); /* rows * dim * N above 2^26: atomic path */
}

static void case_mse(size_t n) {
    char tag[64];
    snprintf(tag, sizeof tag, "mse n%zu", n);
    begin(tag);
    float *p = hrand(n, -2, 2), *t = hrand(n, -1, 1), *dp0 = hrand(n, -1, 1);
    float dloss[1] = {0.75f}, loss[1];
    float *dp = hcopy(dp0, n);
    OK(cpu->mse_forward(loss, p, t, n));
    OK(cpu->mse_backward(dp, dloss, p, t, n));
    float *gp = dup(p, n), *gt = dup(t, n), *gl = dpoison(1), *gdp = dup(dp0, n);
    OK(gpu->mse_forward(gl, gp, gt, n));
    OK(gpu->mse_backward(gdp, dup(dloss, 1), gp, gt, n));
    sync_or_fail(tag);
    char what[96];
    snprintf(what, sizeof what, "%s loss", tag);
    expect(what, loss, gl, 1, FP32_TOL);
    snprintf(what, sizeof what, "%s dpred", tag);
    expect(what, dp, gdp, n, FP32_TOL);
    /* again: the multi-block reduction must leave its counter ready for the next call */
    OK(gpu->mse_forward(gl, gp, gt, n));
    snprintf(what, sizeof what, "%s loss (second call)", tag);
    expect(what, loss, gl, 1, FP32_TOL);
    release();
}

static void case_xent(int N, int K) {
    char tag[64];
    snprintf(tag, sizeof tag, "xent N%d K%d", N, K);
    begin(tag);
    const size_t n = (size_t)N * K;
    float *logits = hrand(n, -4, 4), *dl0 = hrand(n, -1, 1);
    int32_t *labels = halloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) labels[i] = (i * 7 + 3) % K;
    float dloss[1] = {1.25f}, loss[1];
    float *probs = halloc(n * sizeof(float)), *dl = hcopy(dl0, n);
    OK(cpu->xent_forward(loss, probs, logits, labels, N, K));
    OK(cpu->xent_backward(dl, dloss, probs, labels, N, K));
    int32_t *glab = dup_bytes(labels, (size_t)N * sizeof(int32_t));
    float *gl = dpoison(1), *gpr = dpoison(n), *gdl = dup(dl0, n);
    OK(gpu->xent_forward(gl, gpr, dup(logits, n), glab, N, K));
    OK(gpu->xent_backward(gdl, dup(dloss, 1), dup(probs, n), glab, N, K));
    sync_or_fail(tag);
    char what[96];
    snprintf(what, sizeof what, "%s loss", tag);
    expect(what, loss, gl, 1, FP32_TOL);
    snprintf(what, sizeof what, "%s probs", tag);
    expect(what, probs, gpr, n, FP32_TOL);
    snprintf(what, sizeof what, "%s dlogits", tag);
    expect(what, dl, gdl, n, FP32_TOL);
    release();
}

static void test_losses(void) {
    case_mse(1000);
    case_mse(300007); /* many blocks */
    case_xent(5, 10);
    case_xent(37, 3);
    case_xent(3, 100); /* K above a warp */
    case_xent(1024, 10);
    if (!big || tf32_pass) return;
    case_mse(BIG_N); /* the grid-stride loop of 128 blocks */
}

/* ---------------------------------------------------------------- optimiser, diffusion */

/* int32 or int64 device buffer against the CPU's, exactly */
static void expect_bytes(const char *what, const void *cpu_ref, const void *dev, size_t bytes) {
    void *h = halloc(bytes);
    if (gpu->to_host(h, dev, bytes)) fatal(what);
    CHECKF(!memcmp(h, cpu_ref, bytes), "%s: differs from the CPU", what);
}

static void test_optim(void) {
    const size_t n = 4099;
    float *p = hrand(n, -1, 1), *m = hrand(n, -0.1f, 0.1f), *v = hrand(n, 0, 0.01f);
    float *gp = dup(p, n), *gm = dup(m, n), *gv = dup(v, n);
    /* the step and the guard come from memory; a NaN guard must change nothing */
    int64_t step = 0;
    int64_t *gstep = dup_bytes(&step, sizeof step);
    const float good = 0.25f, bad = NAN;
    float *ggood = dup(&good, 1), *gbad = dup(&bad, 1);
    for (int t = 0; t < 4; t++) {
        float *g = hrand(n, -1, 1);
        const int nan_step = t == 2;
        CHECK_OK(cpu->adam_update(p, m, v, g, n, 1e-3f, 0.9, 0.999, 1e-8, &step,
                                  nan_step ? &bad : &good));
        CHECK_OK(gpu->adam_update(gp, gm, gv, dup(g, n), n, 1e-3f, 0.9, 0.999, 1e-8, gstep,
                                  nan_step ? gbad : ggood));
        CHECK_OK(cpu->counter_add(&step, 1, nan_step ? &bad : &good));
        CHECK_OK(gpu->counter_add(gstep, 1, nan_step ? gbad : ggood));
    }
    sync_or_fail("adam");
    expect("adam p (3 steps and a NaN-guarded one)", p, gp, n, FP32_TOL);
    expect("adam m", m, gm, n, FP32_TOL);
    expect("adam v", v, gv, n, FP32_TOL);
    expect_bytes("counter_add (3 steps and a NaN-guarded one)", &step, gstep, sizeof step);
    CHECKF(step == 3, "counter_add on the CPU: %lld", (long long)step);
    float *ema = hrand(n, -1, 1), *gema = dup(ema, n);
    CHECK_OK(cpu->ema_update(ema, p, n, 0.999f, NULL, NULL));
    CHECK_OK(gpu->ema_update(gema, gp, n, 0.999f, NULL, NULL));
    CHECK_OK(cpu->ema_update(ema, p, n, 0.999f, &step, &good)); /* warm-up: decay 4/13 */
    CHECK_OK(gpu->ema_update(gema, gp, n, 0.999f, gstep, ggood));
    CHECK_OK(cpu->ema_update(ema, v, n, 0.999f, &step, &bad));
    CHECK_OK(gpu->ema_update(gema, gv, n, 0.999f, gstep, gbad));
    sync_or_fail("ema");
    expect("ema (plain, warm-up, guarded)", ema, gema, n, FP32_TOL);

    /* the sampler's step start, over more samples than one block has threads: two steps from
     * the counter's start (-1), then a third */
    const int32_t ttab[3] = {100, 95, 90};
    enum { NT = 700 };
    int32_t t[NT];
    int64_t k = -1, noff = 1000;
    int32_t *gttab = dup_bytes(ttab, sizeof ttab), *gt = dup_bytes(t, sizeof t);
    int64_t *gk = dup_bytes(&k, sizeof k), *gnoff = dup_bytes(&noff, sizeof noff);
    for (int s = 0; s < 3; s++) {
        CHECK_OK(cpu->sampler_advance(&k, &noff, 784, t, ttab, NT));
        CHECK_OK(gpu->sampler_advance(gk, gnoff, 784, gt, gttab, NT));
    }
    sync_or_fail("sampler_advance");
    CHECKF(k == 2 && noff == 1000 + 3 * 784 && t[0] == 90 && t[NT - 1] == 90,
           "sampler_advance on the CPU: k %lld, noff %lld, t %d..%d", (long long)k,
           (long long)noff, t[0], t[NT - 1]);
    expect_bytes("sampler_advance t", t, gt, sizeof t);
    expect_bytes("sampler_advance k", &k, gk, sizeof k);
    expect_bytes("sampler_advance noise offset", &noff, gnoff, sizeof noff);
    release();
}

/* page-locked host memory and the queued upload: a large buffer (a copy engine, not a memcpy),
 * written while the copy before it may still be in flight only after a synchronize */
static void test_async_upload(void) {
    const size_t n = (size_t)1 << 22;
    float *pinned = NULL;
    CHECK_OK(gpu->host_alloc((void **)&pinned, n * sizeof(float)));
    if (!pinned) return;
    for (size_t i = 0; i < n; i++) pinned[i] = (float)i * 0.5f;
    float *d = dpoison(n), *back = halloc(n * sizeof(float));
    CHECK_OK(gpu->to_device_async(d, pinned, n * sizeof(float)));
    CHECK_OK(gpu->to_host(back, d, n * sizeof(float))); /* waits for the queued copy */
    CHECKF(!memcmp(back, pinned, n * sizeof(float)), "to_device_async: the data did not arrive");
    gpu->host_free(pinned);
    release();
}

static void test_diffusion(void) {
    const size_t n = 50001;
    const uint64_t seed = 0x5EEDull, stream = 3, offset = (1ull << 33) + 17; /* > 32 bits */
    const int64_t kk = 5;
    int64_t *gk = dup_bytes(&kk, sizeof kk);
    float *z = halloc(n * sizeof(float)), *gz = dpoison(n);
    CHECK_OK(cpu->normal(z, n, (dd_rng_at){seed, stream, offset, &kk, 1000003}));
    CHECK_OK(gpu->normal(gz, n, (dd_rng_at){seed, stream, offset, gk, 1000003}));
    sync_or_fail("normal");
    expect("normal (Philox, same address from a counter)", z, gz, n, FP32_TOL);

    const int N = 7, T = 1000;
    const size_t per = 785; /* odd, not a multiple of the block */
    int32_t lin[7] = {0, 1, 2, 3, 4, 5, 6}, t[7], lab[7];
    int32_t *gt = dup_bytes(lin, sizeof lin), *glab = dup_bytes(lin, sizeof lin);
    CHECK_OK(cpu->train_draw(t, lab, lin, N, T, 0.5f, 10, (dd_rng_at){seed, 1, 3, &kk, 99}));
    CHECK_OK(gpu->train_draw(gt, glab, dup_bytes(lin, sizeof lin), N, T, 0.5f, 10,
                             (dd_rng_at){seed, 1, 3, gk, 99}));
    expect_bytes("train_draw t", t, gt, sizeof t);
    expect_bytes("train_draw labels", lab, glab, sizeof lab);

    float *x0 = hrand(N * per, -1, 1), *noise = hrand(N * per, -2, 2);
    float *ca = hrand(T + 1, 0.1f, 1), *cb = hrand(T + 1, 0.1f, 1);
    float *xt = halloc(N * per * sizeof(float)), *gxt = dpoison(N * per);
    for (int indexed = 0; indexed < 2; indexed++) {
        CHECK_OK(cpu->q_sample(xt, x0, noise, ca, cb, indexed ? t : NULL, N, per));
        CHECK_OK(gpu->q_sample(gxt, dup(x0, N * per), dup(noise, N * per), dup(ca, T + 1),
                               dup(cb, T + 1), indexed ? gt : NULL, N, per));
        sync_or_fail("q_sample");
        expect(indexed ? "q_sample (by t)" : "q_sample", xt, gxt, N * per, FP32_TOL);
    }

    /* sampler steps from row 5 of a table: DDPM-like with noise and clipping, deterministic
     * DDIM-like, guided, and with an objective's conversion */
    const struct {
        float ea, eb, c1, c2, sigma, g;
        int clip, guided, x0_out;
        const char *what;
    } cases[] = {{0, 1, 0.6f, 0.0f, 0.3f, 1, 1, 0, 1, "sampler_step (noise, clip)"},
                 {0, 1, 0.0f, 0.2f, 0.0f, 1, 0, 0, 1, "sampler_step (no noise, no clip)"},
                 {0, 1, 0.0f, 0.2f, 0.1f, 2.5f, 1, 1, 1, "sampler_step (guided)"},
                 {0.6f, -0.3f, 0.5f, 0.1f, 0.2f, 3, 1, 1, 0, "sampler_step (converted, x0_out NULL)"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float tab[6 * DD_SAMPLER_COLS];
        for (int i = 0; i < 6 * DD_SAMPLER_COLS; i++) tab[i] = 1e3f; /* wrong rows */
        float *row = tab + 5 * DD_SAMPLER_COLS;
        row[DD_SAMPLER_EA] = cases[c].ea, row[DD_SAMPLER_EB] = cases[c].eb;
        row[DD_SAMPLER_RA] = 1.7f, row[DD_SAMPLER_RB] = 1.3f, row[DD_SAMPLER_C0] = 0.4f;
        row[DD_SAMPLER_C1] = cases[c].c1, row[DD_SAMPLER_C2] = cases[c].c2;
        row[DD_SAMPLER_SIGMA] = cases[c].sigma;
        float *x = hrand(n, -3, 3), *e = hrand(n, -2, 2), *u = hrand(n, -2, 2);
        float *gx = dup(x, n), *gx0 = dpoison(n), *x0o = halloc(n * sizeof(float));
        CHECK_OK(cpu->sampler_step(x, cases[c].x0_out ? x0o : NULL, e, cases[c].guided ? u : NULL,
                                   n, cases[c].g, cases[c].clip, tab, &kk,
                                   (dd_rng_at){seed, stream, offset, &kk, n}));
        CHECK_OK(gpu->sampler_step(gx, cases[c].x0_out ? gx0 : NULL, dup(e, n),
                                   cases[c].guided ? dup(u, n) : NULL, n, cases[c].g,
                                   cases[c].clip, dup(tab, 6 * DD_SAMPLER_COLS), gk,
                                   (dd_rng_at){seed, stream, offset, gk, n}));
        sync_or_fail(cases[c].what);
        expect(cases[c].what, x, gx, n, FP32_TOL);
        if (cases[c].x0_out) expect("sampler_step x0 estimate", x0o, gx0, n, FP32_TOL);
    }
    release();
}

/* ---------------------------------------------------------------- CUDA graph capture */

/* A small training-like sequence: conv -> group norm + swish -> conv backward-data/filter ->
 * mse; run plainly, then captured and replayed twice: the same results (see test_capture). */
typedef struct {
    dd_conv_shape cs;
    dd_gn_shape gs;
    float *x, *w, *b, *h, *mean, *rstd, *gamma, *beta, *target, *loss, *dloss, *dh, *dx, *dw,
        *db;
    void *ws;
    size_t nx, nh, nw;
} seq;

static int run_seq(const seq *q) {
    const dd_backend *g = gpu;
    DD_TRY(g->conv2d_forward(q->h, q->x, q->w, q->b, &q->cs, q->ws));
    DD_TRY(g->group_norm_forward(q->h, q->mean, q->rstd, q->h, q->gamma, q->beta, NULL, NULL,
                                 &q->gs));
    DD_TRY(g->mse_forward(q->loss, q->h, q->target, q->nh));
    DD_TRY(g->zero(q->dh, q->nh * sizeof(float)));
    DD_TRY(g->mse_backward(q->dh, q->dloss, q->h, q->target, q->nh));
    DD_TRY(g->zero(q->dx, q->nx * sizeof(float)));
    DD_TRY(g->zero(q->dw, q->nw * sizeof(float)));
    DD_TRY(g->zero(q->db, q->cs.Cout * sizeof(float)));
    DD_TRY(g->conv2d_backward(q->dx, q->dw, q->db, q->dh, q->x, q->w, &q->cs, q->ws));
    return 0;
}

/* outputs of the sequence, copied to the host in one buffer */
static float *seq_outputs(const seq *q) {
    const size_t parts[5] = {1, q->nh, q->nx, q->nw, (size_t)q->cs.Cout};
    const float *src[5] = {q->loss, q->h, q->dx, q->dw, q->db};
    size_t total = 0;
    for (int i = 0; i < 5; i++) total += parts[i];
    float *out = halloc(total * sizeof(float)), *p = out;
    for (int i = 0; i < 5; i++) {
        if (gpu->to_host(p, src[i], parts[i] * sizeof(float))) fatal("to_host");
        p += parts[i];
    }
    return out;
}

static void test_capture(void) {
    seq q;
    memset(&q, 0, sizeof q);
    q.cs = (dd_conv_shape){4, 3, 12, 12, 8, 3, 1, 1, 12, 12};
    q.gs = (dd_gn_shape){4, 8, 144, 4, 1, 1e-5f, 0, 0};
    q.nx = (size_t)4 * 3 * 144;
    q.nh = (size_t)4 * 8 * 144;
    q.nw = (size_t)8 * 3 * 9;
    q.x = dup(hrand(q.nx, -1, 1), q.nx);
    q.w = dup(hrand(q.nw, -0.5f, 0.5f), q.nw);
    q.b = dup(hrand(8, -1, 1), 8);
    q.gamma = dup(hrand(8, 0.5f, 1.5f), 8);
    q.beta = dup(hrand(8, -0.5f, 0.5f), 8);
    q.target = dup(hrand(q.nh, -1, 1), q.nh);
    float one = 1.0f;
    q.dloss = dup(&one, 1);
    q.h = dalloc(q.nh * sizeof(float));
    q.mean = dalloc(4 * 4 * sizeof(float));
    q.rstd = dalloc(4 * 4 * sizeof(float));
    q.loss = dalloc(sizeof(float));
    q.dh = dalloc(q.nh * sizeof(float));
    q.dx = dalloc(q.nx * sizeof(float));
    q.dw = dalloc(q.nw * sizeof(float));
    q.db = dalloc(8 * sizeof(float));
    size_t wsb = gpu->conv2d_workspace(&q.cs); /* chooses the algorithms: before capture */
    q.ws = dalloc(wsb);

    OK(run_seq(&q)); /* warm-up (lazy kernel loading), then the reference */
    OK(run_seq(&q));
    sync_or_fail("plain sequence");
    float *ref = seq_outputs(&q);
    const size_t total = 1 + q.nh + q.nx + q.nw + 8;

    dd_cuda_graph *graph = NULL;
    OK(dd_cuda_capture_begin());
    int rc = run_seq(&q);
    OK(rc);
    OK(dd_cuda_capture_end(&graph));
    CHECK(graph != NULL);
    if (graph) {
        /* scribble over the outputs so the replay must rewrite them */
        OK(gpu->zero(q.h, q.nh * sizeof(float)));
        OK(gpu->zero(q.loss, sizeof(float)));
        /* the forward part (loss and h: fixed-order kernels and deterministic cuDNN forward
         * algorithms) must match bit for bit; the gradients too unless cuDNN's fastest backward
         * algorithm for the shape accumulates with atomics (then within 1e-6) */
        const size_t nfwd = 1 + q.nh;
        for (int rep = 0; rep < 2; rep++) {
            OK(dd_cuda_graph_replay(graph));
            sync_or_fail("graph replay");
            float *got = seq_outputs(&q);
            int same_fwd = memcmp(got, ref, nfwd * sizeof(float)) == 0;
            int same_bwd = memcmp(got + nfwd, ref + nfwd, (total - nfwd) * sizeof(float)) == 0;
            double e_bwd = tu_rel_err(got + nfwd, ref + nfwd, total - nfwd);
            printf("  graph replay %d: forward %s, gradients %s (rel err %.2e)\n", rep + 1,
                   same_fwd ? "bit-identical" : "DIFFER", same_bwd ? "bit-identical" : "differ",
                   e_bwd);
            CHECKF(same_fwd, "graph replay %d: forward outputs differ from plain launches",
                   rep + 1);
            CHECKF(e_bwd <= 1e-6, "graph replay %d: gradients differ by %.2e", rep + 1, e_bwd);
        }
        dd_cuda_graph_destroy(graph);
    }

    /* capture rules: an unprepared convolution shape and an allocation are refused with a
     * message, and the capture can still be ended (discarded) cleanly */
    dd_conv_shape fresh = {1, 2, 5, 5, 3, 3, 1, 1, 5, 5};
    OK(dd_cuda_capture_begin());
    int conv_rc = gpu->conv2d_forward(q.h, q.x, q.w, NULL, &fresh, q.ws);
    CHECKF(conv_rc != 0, "an unprepared conv shape must be refused during capture");
    if (conv_rc) printf("  refused as expected: %s\n", dd_error_message());
    void *p = NULL;
    int alloc_rc = gpu->alloc(&p, 64);
    CHECKF(alloc_rc != 0 && p == NULL, "alloc must be refused during capture");
    OK(dd_cuda_capture_end(NULL));
    /* and the backend still works afterwards */
    OK(run_seq(&q));
    sync_or_fail("sequence after a discarded capture");
    float *after = seq_outputs(&q);
    CHECKF(memcmp(after, ref, (1 + q.nh) * sizeof(float)) == 0 &&
               tu_rel_err(after, ref, total) <= 1e-6,
           "plain launches after a discarded capture differ");

#ifdef DD_HAVE_CUDA
    /* A capture broken by a forbidden call (synchronising the stream being captured invalidates
     * the capture; the stream then fails every use until the capture is ended): it still counts
     * as running, dd_cuda_capture_end ends it with an error, and the backend works afterwards. */
    OK(dd_cuda_capture_begin());
    OK(gpu->zero(q.dh, q.nh * sizeof(float)));
    cudaError_t se = cudaStreamSynchronize(dd_cuda_stream);
    printf("  cudaStreamSynchronize inside a capture: %s\n", cudaGetErrorString(se));
    CHECKF(se != cudaSuccess, "synchronising a capturing stream must fail");
    CHECKF(dd_cuda_capturing() == 1, "a broken capture must count as running until it is ended");
    const int end_rc = dd_cuda_capture_end(NULL);
    printf("  capture_end after it: %s\n", end_rc ? dd_error_message() : "returned 0");
    CHECKF(end_rc != 0, "capture_end must report the broken capture");
    CHECKF(dd_cuda_capturing() == 0, "capture_end must end a broken capture");
    OK(run_seq(&q));
    sync_or_fail("sequence after a broken capture");
    float *after2 = seq_outputs(&q);
    CHECKF(memcmp(after2, ref, (1 + q.nh) * sizeof(float)) == 0,
           "plain launches after a broken capture differ");
#endif
    release();
}

/* ---------------------------------------------------------------- main */

static void run_all(void) {
    test_conv();
    test_dense();
    test_attention();
    test_group_norm();
    test_act();
    test_add_concat();
    test_upsample_maxpool();
    test_embedding();
    test_losses();
    begin("optimiser");
    test_optim();
    begin("diffusion helpers");
    test_diffusion();
    begin("async upload");
    test_async_upload();
}

/* --quick: the TF32-off pass only, small shapes, no capture (for a run under compute-sanitizer,
 * which is slow and may not support graph capture). --small: everything but the large shapes
 * (the CPU emulation of CUDA, tests/emu, runs it so). */
int main(int argc, char **argv) {
    const int quick = argc > 1 && !strcmp(argv[1], "--quick");
    big = !quick && !(argc > 1 && !strcmp(argv[1], "--small"));
    gpu = dd_cuda_backend();
    if (!gpu) tu_skip(dd_error_message());
    dd_cuda_info info;
    if (dd_cuda_device_info(&info) == 0)
        printf("device: %s (sm_%d%d, %d SMs, %.1f GiB), cuDNN %zu, CUDA runtime %d\n", info.name,
               info.cc_major, info.cc_minor, info.sm_count,
               (double)info.total_bytes / 1073741824.0, info.cudnn_version, info.runtime_version);

    for (int tf32 = quick ? 0 : 1; tf32 >= 0; tf32--) {
        if (dd_cuda_set_tf32(tf32)) fatal("dd_cuda_set_tf32");
        CHECK(dd_cuda_tf32() == tf32);
        mm_tol = tf32 ? TF32_TOL : FP32_TOL;
        tf32_pass = tf32;
        printf("== TF32 %s: cuDNN/cuBLAS ops within %.0e, the rest within %.0e\n",
               tf32 ? "on" : "off", mm_tol, FP32_TOL);
        run_all();
    }
    if (!quick) {
        begin("== CUDA graph capture (TF32 off)");
        test_capture();
    }
    return tu_finish();
}
