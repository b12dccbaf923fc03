/* The handwritten convolution kernels (cuda/cuda_conv.cu) against the CPU backend: forward, dx,
 * dw and db, for each of the UNet's 15 convolution shapes and awkward ones (odd sizes, Cin = 1,
 * Cout = 1, K = 1, 2, 5, stride 2 and 3, no bias, dx or dw not wanted, batch 1 and 300), in every
 * tile configuration of each direction (DIFFUSION_CONV=own semantics: no cuDNN, no safety net):
 * the FP32 ones with TF32 off to FP32_TOL, the TF32 tensor-core ones ("tc...", paired with each
 * other) with TF32 on to TF32_TOL. Gradients start from random
 * values on both backends, so the += contract is checked; forward outputs start as NaN, so an
 * element never written fails; a NULL gradient must stay untouched. The default pick runs once
 * more without a workspace (the own kernels need none; the filter gradient is then one split),
 * and once with the split reductions summed by a second kernel instead of by each output tile's
 * last split (the results must not change). Every call runs on shared memory filled with NaN
 * (dd_cuda_poison_shared), so a kernel that reads shared memory it never wrote fails.
 *
 * Then DIFFUSION_CONV=auto on the UNet's shapes in both TF32 modes (timing, the safety net, and
 * whichever implementation wins, against the CPU). Set DIFFUSION_CONV_LOG=1 to see each shape's
 * timings and choices on stderr.
 *
 * Every failing case is reported by name and the test carries on. Without a GPU (or without the
 * CUDA build) it exits 77: CTest reports it as skipped. `test_gpu_conv --quick` runs the own
 * kernels on the small shapes only (no batch 300, no auto): for compute-sanitizer; `--quick --only
 * TEXT` only the configurations whose names ("own FWD/DATA/FILTER") contain TEXT. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/cuda.h"
#include "diffusion/error.h"
#include "testutil.h"

#ifdef DD_HAVE_CUDA /* to the end of the variants; without CUDA main only skips */
#include "../cuda/cuda_internal.h"

#define FP32_TOL 1e-5
#define TF32_TOL 1e-3

static const dd_backend *gpu;
static const dd_backend *cpu = &dd_cpu_backend;
static uint64_t seed_counter = 1;
static int no_workspace;   /* set by a variant: the GPU calls get ws = NULL */
static double variant_tol; /* set by a variant: its tolerance instead of run_case's (0: none) */

static void fatal(const char *what) {
    fprintf(stderr, "FATAL: %s: %s\n", what, dd_error_message());
    exit(1);
}

static float *hrand(size_t n, float lo, float hi) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h) fatal("host out of memory");
    tu_fill_uniform(h, n, lo, hi, seed_counter++);
    return h;
}

static float *hdup(const float *src, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h) fatal("host out of memory");
    memcpy(h, src, n * sizeof(float));
    return h;
}

static float *dup(const float *h, size_t n) {
    void *d;
    if (gpu->alloc(&d, n * sizeof(float))) fatal("gpu alloc");
    if (gpu->to_device(d, h, n * sizeof(float))) fatal("to_device");
    return d;
}

/* relative error (norm of the difference over the reference's norm) of the GPU's result */
static void expect(const char *what, const float *ref, const float *dev, size_t n, double tol,
                   int verbose) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    if (!h) fatal("host out of memory");
    if (gpu->to_host(h, dev, n * sizeof(float))) fatal("to_host");
    double e = tu_rel_err(h, ref, n);
    if (tol == 0.0) e = memcmp(h, ref, n * sizeof(float)) ? INFINITY : 0.0; /* must be untouched */
    if (verbose || !(e <= tol)) printf("  %-64s rel err %.2e (tol %.0e)\n", what, e, tol);
    CHECKF(e <= tol, "%s: relative error %.3e above %.1e", what, e, tol);
    free(h);
}

typedef struct {
    int N, Cin, H, W, Cout, K, stride, pad;
    int bias, want_dx, want_dw;
} conv_case;

/* One shape: the CPU's results once, then the GPU in each configuration set by `configure`
 * (called with the variant index; returns 0 when the variant exists). */
static void run_case(const conv_case *c, int variants, int (*configure)(int v, char *name, size_t n),
                     double case_tol) {
    dd_conv_shape s = {c->N, c->Cin, c->H, c->W, c->Cout, c->K, c->stride, c->pad, 0, 0};
    s.Ho = (c->H + 2 * c->pad - c->K) / c->stride + 1;
    s.Wo = (c->W + 2 * c->pad - c->K) / c->stride + 1;
    char tag[128];
    snprintf(tag, sizeof tag, "N%d %d->%d %dx%d k%d s%d p%d%s%s%s", c->N, c->Cin, c->Cout, c->H,
             c->W, c->K, c->stride, c->pad, c->bias ? " +b" : "", c->want_dx ? "" : " no-dx",
             c->want_dw ? "" : " no-dw");
    const size_t nx = (size_t)s.N * s.Cin * s.H * s.W, ny = (size_t)s.N * s.Cout * s.Ho * s.Wo,
                 nw = (size_t)s.Cout * s.Cin * s.K * s.K, nb = (size_t)s.Cout;
    float *x = hrand(nx, -1, 1), *w = hrand(nw, -0.5f, 0.5f), *b = hrand(nb, -1, 1);
    float *dy = hrand(ny, -1, 1);
    float *dx0 = hrand(nx, -1, 1), *dw0 = hrand(nw, -1, 1), *db0 = hrand(nb, -1, 1);

    /* CPU reference */
    void *cws = NULL;
    const size_t cwsb = cpu->conv2d_workspace(&s);
    if (cwsb && cpu->alloc(&cws, cwsb)) fatal("cpu alloc");
    float *y = hrand(ny, 0, 1), *dx = hdup(dx0, nx), *dw = hdup(dw0, nw), *db = hdup(db0, nb);
    if (cpu->conv2d_forward(y, x, w, c->bias ? b : NULL, &s, cws) ||
        cpu->conv2d_backward(c->want_dx ? dx : NULL, c->want_dw ? dw : NULL, c->bias ? db : NULL,
                             dy, x, w, &s, cws))
        fatal("cpu conv2d");
    cpu->free(cws);

    float *nan_y = malloc((ny ? ny : 1) * sizeof(float));
    if (!nan_y) fatal("host out of memory");
    for (size_t i = 0; i < ny; i++) nan_y[i] = NAN;
    float *gx = dup(x, nx), *gw = dup(w, nw), *gb = dup(b, nb), *gdy = dup(dy, ny);
    float *gy = dup(nan_y, ny), *gdx = dup(dx0, nx), *gdw = dup(dw0, nw), *gdb = dup(db0, nb);

    for (int v = 0; v < variants; v++) {
        char vname[64], what[256];
        if (configure(v, vname, sizeof vname)) continue;
        /* fresh outputs: NaN for y, the starting gradients */
        if (gpu->to_device(gy, nan_y, ny * sizeof(float)) ||
            gpu->to_device(gdx, dx0, nx * sizeof(float)) ||
            gpu->to_device(gdw, dw0, nw * sizeof(float)) ||
            gpu->to_device(gdb, db0, nb * sizeof(float)))
            fatal("to_device");
        const size_t gwsb = gpu->conv2d_workspace(&s);
        void *gws = NULL;
        if (gwsb && !no_workspace && gpu->alloc(&gws, gwsb)) fatal("gpu alloc workspace");
        snprintf(what, sizeof what, "%s [%s]", tag, vname);
        /* shared memory full of NaN before each call: a kernel that reads places it never
         * wrote (even against zeros) then fails here, not only under compute-sanitizer */
        int ok = dd_cuda_poison_shared() == 0 &&
                 gpu->conv2d_forward(gy, gx, gw, c->bias ? gb : NULL, &s, gws) == 0 &&
                 dd_cuda_poison_shared() == 0 &&
                 gpu->conv2d_backward(c->want_dx ? gdx : NULL, c->want_dw ? gdw : NULL,
                                      c->bias ? gdb : NULL, gdy, gx, gw, &s, gws) == 0 &&
                 gpu->synchronize() == 0;
        CHECKF(ok, "%s: %s", what, dd_error_message());
        const double tol = variant_tol > 0.0 ? variant_tol : case_tol;
        if (ok) {
            char item[300];
            snprintf(item, sizeof item, "%s y", what);
            expect(item, y, gy, ny, tol, 0);
            snprintf(item, sizeof item, "%s dx%s", what, c->want_dx ? "" : " (NULL: untouched)");
            expect(item, dx, gdx, nx, c->want_dx ? tol : 0.0, 0);
            snprintf(item, sizeof item, "%s dw%s", what, c->want_dw ? "" : " (NULL: untouched)");
            expect(item, dw, gdw, nw, c->want_dw ? tol : 0.0, 0);
            snprintf(item, sizeof item, "%s db%s", what, c->bias ? "" : " (NULL: untouched)");
            expect(item, db, gdb, nb, c->bias ? tol : 0.0, 0);
        }
        gpu->free(gws);
    }
    printf("  %s: done\n", tag);
    fflush(stdout);
    gpu->free(gx);
    gpu->free(gw);
    gpu->free(gb);
    gpu->free(gdy);
    gpu->free(gy);
    gpu->free(gdx);
    gpu->free(gdw);
    gpu->free(gdb);
    free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0);
    free(y), free(dx), free(dw), free(db), free(nan_y);
}

/* The UNet's 15 convolution shapes (../shared/SPEC.md; `diffusion info --model unet`) at batch
 * n: input conv, 28x28 res blocks, the two 4x4 stride-2 downsamples, 14x14 and 7x7 blocks, the
 * middle (64 channels and the attention's 64->192 qkv, no bias), the up path with its
 * concatenated inputs and skip convs, the final conv to one channel. */
static int unet_cases(conv_case *out, int n) {
    const conv_case c[] = {
        {n, 1, 28, 28, 16, 3, 1, 1, 1, 1, 1},  {n, 16, 28, 28, 16, 3, 1, 1, 1, 1, 1},
        {n, 16, 28, 28, 16, 4, 2, 1, 1, 1, 1}, {n, 16, 14, 14, 16, 3, 1, 1, 1, 1, 1},
        {n, 16, 14, 14, 32, 4, 2, 1, 1, 1, 1}, {n, 32, 7, 7, 32, 3, 1, 1, 1, 1, 1},
        {n, 32, 7, 7, 64, 3, 1, 1, 1, 1, 1},   {n, 64, 7, 7, 64, 3, 1, 1, 1, 1, 1},
        {n, 64, 7, 7, 192, 3, 1, 1, 0, 1, 1},  {n, 96, 7, 7, 64, 3, 1, 1, 1, 1, 1},
        {n, 64, 14, 14, 32, 3, 1, 1, 1, 1, 1}, {n, 48, 14, 14, 32, 3, 1, 1, 1, 1, 1},
        {n, 32, 14, 14, 32, 3, 1, 1, 1, 1, 1}, {n, 32, 28, 28, 16, 3, 1, 1, 1, 1, 1},
        {n, 16, 28, 28, 1, 3, 1, 1, 1, 1, 1},
    };
    const int k = (int)(sizeof c / sizeof c[0]);
    memcpy(out, c, sizeof c);
    return k;
}

static const conv_case awkward[] = {
    {2, 3, 9, 7, 5, 3, 1, 1, 1, 1, 1},     /* odd sizes */
    {2, 1, 12, 12, 6, 5, 1, 0, 1, 1, 1},   /* Cin = 1, K = 5, no padding (LeNet's first) */
    {2, 5, 7, 9, 1, 3, 2, 1, 1, 1, 1},     /* Cout = 1, stride 2, odd sizes */
    {2, 67, 5, 5, 3, 1, 1, 0, 0, 1, 1},    /* K = 1, many input channels, no bias */
    {1, 1, 5, 5, 2, 1, 1, 0, 1, 0, 1},     /* 1x1, dx not wanted */
    {3, 4, 9, 7, 6, 4, 2, 1, 1, 1, 1},     /* 4x4 stride 2 on odd sizes */
    {2, 5, 11, 13, 3, 3, 2, 0, 0, 1, 1},   /* stride 2 without padding, no bias */
    {1, 3, 9, 9, 7, 5, 3, 2, 1, 1, 1},     /* stride 3, K = 5 */
    {2, 7, 6, 5, 9, 2, 1, 1, 1, 1, 1},     /* K = 2 (even, generic path) */
    {1, 2, 4, 4, 3, 7, 1, 3, 1, 1, 1},     /* kernel larger than the image */
    {3, 2, 7, 7, 70, 3, 1, 1, 1, 1, 1},    /* Cout past one 64-wide tile */
    {1, 16, 28, 28, 16, 3, 1, 1, 0, 1, 0}, /* batch 1, dw not wanted (db is not wanted either) */
    {2, 8, 6, 6, 4, 3, 1, 1, 1, 0, 0},     /* only db wanted */
    {1, 64, 7, 7, 64, 3, 1, 1, 1, 1, 1},   /* batch 1 */
    {2, 3, 10, 10, 5, 4, 4, 0, 1, 1, 1},   /* stride = K: windows side by side */
    {1, 2, 5, 5, 3, 3, 2, 3, 1, 1, 1},     /* padding wider than the kernel */
    {5, 3, 3, 3, 130, 1, 1, 0, 1, 1, 1},   /* Cout past two 64-wide tiles */
    {2, 130, 3, 3, 5, 2, 2, 1, 1, 1, 1},   /* Cin past two tiles (backward-data's rows) */
    {2, 20, 13, 11, 40, 3, 1, 0, 1, 1, 1},  /* stride-1 3x3, no padding, 20 = 8 + 8 + 4 channels */
    {2, 5, 9, 17, 7, 3, 1, 2, 1, 1, 1},     /* stride-1 3x3, padding 2 */
    {1, 4, 5, 60, 6, 3, 1, 1, 1, 1, 1},     /* staged: one output row per block, or none */
    {1, 3, 4, 140, 5, 3, 1, 1, 1, 1, 1},    /* rows wider than any staged block */
    {3, 12, 7, 7, 20, 3, 1, 1, 1, 1, 1},   /* planes: 3 images, 12 = 8 + 4 channels, Cout 20 */
    {3, 16, 14, 14, 24, 3, 1, 1, 1, 1, 1}, /* planes: 14x14, whole channel groups */
    {5, 9, 6, 5, 10, 3, 1, 0, 1, 1, 1},    /* planes: 4x3 outputs, several images a block */
    {3, 8, 5, 5, 8, 3, 1, 2, 1, 1, 1},     /* planes: padding 2 */
    {2, 17, 14, 15, 5, 3, 1, 1, 1, 1, 1},  /* planes: 210 positions, 17 channels */
    {300, 16, 14, 14, 32, 4, 2, 1, 1, 1, 1}, /* batch 300: many filter splits */
    {300, 64, 7, 7, 64, 3, 1, 1, 1, 1, 1},
};

/* the filter configuration that runs beside forward/backward-data configuration v: one of the
 * same kind (FP32 or tensor cores), in turn, so that every one of them runs */
static int paired_filter(int v) {
    const int tc = dd_conv_own_config_tf32(DD_CONV_FWD, v);
    int rank = 0, same[32], n = 0;
    for (int i = 0; i < v; i++) rank += dd_conv_own_config_tf32(DD_CONV_FWD, i) == tc;
    for (int f = 0; f < dd_conv_own_configs(DD_CONV_BWD_FILTER) && n < 32; f++)
        if (dd_conv_own_config_tf32(DD_CONV_BWD_FILTER, f) == tc) same[n++] = f;
    if (!n) fatal("no backward-filter configuration of the same kind");
    return same[rank % n];
}

/* variant v: configuration v of forward and backward-data with paired_filter(v), TF32 on and
 * TF32_TOL for the tensor-core ones (FP32 ones: TF32 off, the caller's tolerance); then the
 * default pick, with and without a workspace (the own kernels need none: the filter gradient
 * then runs as one split), and with the splits' sums by a second kernel instead of each output
 * tile's last split (dd_conv_own_set_fused_reduce) */
static const char *only; /* --only TEXT: the own variants whose names contain TEXT */

static int own_variant(int v, char *name, size_t n) {
    const int ng = dd_conv_own_configs(DD_CONV_FWD);
    if (v >= ng) {
        if (only) return 1;
        no_workspace = v == ng + 1;
        dd_conv_own_set_fused_reduce(v != ng + 2);
        snprintf(name, n, "own default%s", no_workspace   ? ", no workspace"
                                           : v == ng + 2 ? ", split sums by a second kernel"
                                                         : "");
        if (dd_cuda_set_tf32(0)) fatal("dd_cuda_set_tf32");
        variant_tol = 0.0;
        if (dd_cuda_conv_force_own(-1, -1, -1)) fatal("dd_cuda_conv_force_own");
        return 0;
    }
    const int f = paired_filter(v), tc = dd_conv_own_config_tf32(DD_CONV_FWD, v);
    snprintf(name, n, "own %s/%s/%s", dd_conv_own_config_name(DD_CONV_FWD, v),
             dd_conv_own_config_name(DD_CONV_BWD_DATA, v),
             dd_conv_own_config_name(DD_CONV_BWD_FILTER, f));
    if (only && !strstr(name, only)) return 1; /* skipped before any setting changes */
    no_workspace = 0;
    dd_conv_own_set_fused_reduce(1);
    if (dd_cuda_set_tf32(tc)) fatal("dd_cuda_set_tf32");
    variant_tol = tc ? TF32_TOL : 0.0;
    if (dd_cuda_conv_force_own(v, v, f)) fatal("dd_cuda_conv_force_own");
    return 0;
}

static int auto_variant(int v, char *name, size_t n) {
    (void)v;
    snprintf(name, n, "auto, TF32 %s", dd_cuda_tf32() ? "on" : "off");
    return 0;
}
#endif

int main(int argc, char **argv) {
#ifndef DD_HAVE_CUDA
    (void)argc, (void)argv;
    if (!dd_cuda_backend()) tu_skip(dd_error_message());
    tu_skip("built without CUDA");
#else
    const int quick = argc > 1 && !strcmp(argv[1], "--quick");
    if (quick && argc > 3 && !strcmp(argv[2], "--only")) only = argv[3];
    gpu = dd_cuda_backend();
    if (!gpu) tu_skip(dd_error_message());
    dd_cuda_info info;
    if (dd_cuda_device_info(&info) == 0)
        printf("device: %s (sm_%d%d, %d SMs), cuDNN %zu\n", info.name, info.cc_major,
               info.cc_minor, info.sm_count, info.cudnn_version);
    conv_case unet[32];
    const int nu = unet_cases(unet, 3);
    const int variants = dd_conv_own_configs(DD_CONV_FWD) + 3;

    /* own kernels: the FP32 ones with TF32 off, the tensor-core ones with it on (own_variant) */
    printf("== own kernels, every configuration, the UNet's shapes at batch 3\n");
    for (int i = 0; i < nu; i++) run_case(&unet[i], variants, own_variant, FP32_TOL);
    printf("== own kernels, every configuration, awkward shapes\n");
    for (size_t i = 0; i < sizeof awkward / sizeof awkward[0]; i++)
        if (!quick || awkward[i].N < 100) run_case(&awkward[i], variants, own_variant, FP32_TOL);
    if (quick) return tu_finish();

    /* auto: timing and the safety net choose per shape and direction */
    no_workspace = 0;
    dd_conv_own_set_fused_reduce(1);
    variant_tol = 0.0;
    if (dd_cuda_conv_set_policy("auto")) fatal("dd_cuda_conv_set_policy");
    const int na = unet_cases(unet, 32);
    for (int tf32 = 1; tf32 >= 0; tf32--) {
        if (dd_cuda_set_tf32(tf32)) fatal("dd_cuda_set_tf32");
        printf("== DIFFUSION_CONV=auto, TF32 %s, the UNet's shapes at batch 32\n",
               tf32 ? "on" : "off");
        for (int i = 0; i < na; i++)
            run_case(&unet[i], 1, auto_variant, tf32 ? TF32_TOL : FP32_TOL);
    }
    return tu_finish();
#endif
}
