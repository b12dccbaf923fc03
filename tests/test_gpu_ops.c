/* Every op of the CUDA backend, forward and backward, against the CPU backend on random inputs of
 * several shapes (odd sizes, stride 2, 1x1, repeated indices, ties), in both math modes:
 * TF32 on (cuDNN/cuBLAS products within TF32_TOL relative) and off (everything within
 * FP32_TOL). Then a CUDA-graph replay against plain launches (forward bit for bit) and the
 * capture rules (an unprepared convolution and an allocation are refused during a capture).
 *
 * Outputs are poisoned with NaN before forward ops (an element the GPU never writes fails the
 * comparison), and gradients start from the same random values on both backends (backward adds).
 * Without a GPU (or without the CUDA build) the test exits 77: CTest reports it as skipped.
 * `test_gpu_ops --quick` runs the TF32-off pass only, without capture (for compute-sanitizer). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/cuda.h"
#include "diffusion/error.h"
#include "testutil.h"

#define FP32_TOL 1e-5
#define TF32_TOL 1e-3

static const dd_backend *gpu;
static const dd_backend *cpu = &dd_cpu_backend;
static double mm_tol; /* tolerance for the cuDNN/cuBLAS ops in the current mode */
static uint64_t seed_counter = 1;

/* ---------------------------------------------------------------- buffers */

/* Device buffers of the current case, freed by release(). */
#define MAX_LIVE 256
static void *live[MAX_LIVE];
static int nlive;
static void *hlive[MAX_LIVE];
static int nhlive;

static void fatal(const char *what) {
    fprintf(stderr, "FATAL: %s: %s\n", what, dd_error_message());
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
    if (!p) {
        fprintf(stderr, "FATAL: host out of memory\n");
        exit(1);
    }
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

/* GPU result vs the CPU's: relative error (norm of the difference over the CPU's norm) */
static void expect(const char *what, const float *cpu_ref, const float *dev, size_t n, double tol) {
    float *h = halloc(n * sizeof(float));
    if (gpu->to_host(h, dev, n * sizeof(float))) fatal("to_host");
    double e = tu_rel_err(h, cpu_ref, n);
    printf("  %-52s rel err %.2e (tol %.0e)\n", what, e, tol);
    CHECKF(e <= tol, "%s: relative error %.3e above %.1e", what, e, tol);
}

static void sync_or_fail(const char *what) {
    if (gpu->synchronize()) {
        tu_fail(__FILE__, __LINE__, "%s: %s", what, dd_error_message());
    }
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
    CHECK_OK(cpu->conv2d_forward(y, x, w, bias ? b : NULL, &s, cws));
    CHECK_OK(cpu->conv2d_backward(want_dx ? dx : NULL, dw, bias ? db : NULL, dy, x, w, &s, cws));
    cpu->free(cws);

    /* GPU */
    size_t gwsb = gpu->conv2d_workspace(&s);
    void *gws = gwsb ? dalloc(gwsb) : NULL;
    float *gx = dup(x, nx), *gw = dup(w, nw), *gb = dup(b, Cout), *gdy = dup(dy, ny);
    float *gy = dpoison(ny), *gdx = dup(dx0, nx), *gdw = dup(dw0, nw), *gdb = dup(db0, Cout);
    CHECK_OK(gpu->conv2d_forward(gy, gx, gw, bias ? gb : NULL, &s, gws));
    CHECK_OK(gpu->conv2d_backward(want_dx ? gdx : NULL, gdw, bias ? gdb : NULL, gdy, gx, gw, &s,
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
    release();
}

static void test_conv(void) {
    case_conv(2, 3, 8, 8, 5, 3, 1, 1, 1, 1);
    case_conv(3, 4, 9, 7, 6, 4, 2, 1, 1, 1); /* the UNet's downsample: 4x4 stride 2, odd sizes */
    case_conv(2, 16, 7, 7, 32, 3, 1, 1, 0, 1);
    case_conv(1, 1, 5, 5, 2, 1, 1, 0, 1, 0); /* 1x1, dx not wanted */
    case_conv(4, 1, 28, 28, 6, 5, 1, 0, 1, 1); /* LeNet's first layer */
}

/* ---------------------------------------------------------------- dense */

static void case_dense(int N, int Cin, int Cout, int bias) {
    char tag[64];
    snprintf(tag, sizeof tag, "dense N%d %d->%d%s", N, Cin, Cout, bias ? " +b" : "");
    const size_t nx = (size_t)N * Cin, ny = (size_t)N * Cout, nw = (size_t)Cout * Cin;
    float *x = hrand(nx, -1, 1), *w = hrand(nw, -1, 1), *b = hrand(Cout, -1, 1);
    float *dy = hrand(ny, -1, 1), *dx0 = hrand(nx, -1, 1), *dw0 = hrand(nw, -1, 1),
          *db0 = hrand(Cout, -1, 1);
    float *y = halloc(ny * sizeof(float)), *dx = hcopy(dx0, nx), *dw = hcopy(dw0, nw),
          *db = hcopy(db0, Cout);
    CHECK_OK(cpu->dense_forward(y, x, w, bias ? b : NULL, N, Cin, Cout));
    CHECK_OK(cpu->dense_backward(dx, dw, bias ? db : NULL, dy, x, w, N, Cin, Cout));

    float *gy = dpoison(ny), *gdx = dup(dx0, nx), *gdw = dup(dw0, nw), *gdb = dup(db0, Cout);
    CHECK_OK(gpu->dense_forward(gy, dup(x, nx), dup(w, nw), bias ? dup(b, Cout) : NULL, N, Cin,
                                Cout));
    CHECK_OK(gpu->dense_backward(gdx, gdw, bias ? gdb : NULL, dup(dy, ny), dup(x, nx), dup(w, nw),
                                 N, Cin, Cout));
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, ny, mm_tol);
    snprintf(what, sizeof what, "%s dx", tag);
    expect(what, dx, gdx, nx, mm_tol);
    snprintf(what, sizeof what, "%s dw", tag);
    expect(what, dw, gdw, nw, mm_tol);
    snprintf(what, sizeof what, "%s db", tag);
    expect(what, db, gdb, Cout, bias ? FP32_TOL : 0.0);
    release();
}

static void test_dense(void) {
    case_dense(4, 7, 5, 1);
    case_dense(33, 64, 128, 1);
    case_dense(3, 84, 10, 0);
}

/* ---------------------------------------------------------------- group norm */

static void case_gn(int N, int C, int HW, int G, int swish, int with_add) {
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f};
    char tag[80];
    snprintf(tag, sizeof tag, "group_norm N%d C%d HW%d G%d%s%s", N, C, HW, G, swish ? " swish" : "",
             with_add ? " +add" : "");
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    /* an offset and scale so the mean and variance matter */
    float *x = hrand(n, -2, 3), *gamma = hrand(C, 0.5f, 1.5f), *beta = hrand(C, -0.5f, 0.5f);
    float *add = hrand(nnc, -1, 1), *dy = hrand(n, -1, 1);
    float *dx0 = hrand(n, -1, 1), *dg0 = hrand(C, -1, 1), *db0 = hrand(C, -1, 1),
          *da0 = hrand(nnc, -1, 1);
    float *y = halloc(n * sizeof(float)), *mean = halloc(nng * sizeof(float)),
          *rstd = halloc(nng * sizeof(float));
    float *dx = hcopy(dx0, n), *dg = hcopy(dg0, C), *db = hcopy(db0, C), *da = hcopy(da0, nnc);
    const float *a = with_add ? add : NULL;
    CHECK_OK(cpu->group_norm_forward(y, mean, rstd, x, gamma, beta, a, &s));
    CHECK_OK(cpu->group_norm_backward(dx, dg, db, with_add ? da : NULL, dy, x, mean, rstd, gamma,
                                      beta, a, &s));

    float *gx = dup(x, n), *gg = dup(gamma, C), *gb = dup(beta, C);
    float *ga = with_add ? dup(add, nnc) : NULL;
    float *gy = dpoison(n), *gmean = dpoison(nng), *grstd = dpoison(nng);
    float *gdx = dup(dx0, n), *gdg = dup(dg0, C), *gdb = dup(db0, C), *gda = dup(da0, nnc);
    CHECK_OK(gpu->group_norm_forward(gy, gmean, grstd, gx, gg, gb, ga, &s));
    /* backward from the CPU's statistics, so the comparison isolates backward */
    float *cm = dup(mean, nng), *cr = dup(rstd, nng);
    CHECK_OK(gpu->group_norm_backward(gdx, gdg, gdb, with_add ? gda : NULL, dup(dy, n), gx, cm, cr,
                                      gg, gb, ga, &s));
    sync_or_fail(tag);
    char what[128];
#define GN_EXPECT(name, ref, dev, cnt, tol)                                                       \
    snprintf(what, sizeof what, "%s %s", tag, name);                                              \
    expect(what, ref, dev, cnt, tol)
    GN_EXPECT("y", y, gy, n, FP32_TOL);
    GN_EXPECT("mean", mean, gmean, nng, FP32_TOL);
    GN_EXPECT("rstd", rstd, grstd, nng, FP32_TOL);
    GN_EXPECT("dx", dx, gdx, n, FP32_TOL);
    GN_EXPECT("dgamma", dg, gdg, C, FP32_TOL);
    GN_EXPECT("dbeta", db, gdb, C, FP32_TOL);
    GN_EXPECT("dadd", da, gda, nnc, with_add ? FP32_TOL : 0.0);
#undef GN_EXPECT
    release();
}

static void test_group_norm(void) {
    case_gn(2, 8, 9, 4, 0, 0);
    case_gn(2, 8, 9, 4, 1, 1);
    case_gn(3, 16, 49, 8, 1, 1);
    case_gn(2, 6, 1, 1, 0, 1);     /* 1x1 spatial, one group */
    case_gn(9, 32, 196, 8, 1, 0);  /* more samples than warps per block */
}

/* ---------------------------------------------------------------- elementwise */

static void test_act(void) {
    const char *names[DD_ACT_COUNT] = {[DD_ACT_RELU] = "relu", [DD_ACT_SWISH] = "swish",
                                       [DD_ACT_GELU_TANH] = "gelu_tanh",
                                       [DD_ACT_GELU_ERF] = "gelu_erf"};
    const size_t n = 3001;
    for (int a = 0; a < DD_ACT_COUNT; a++) {
        float *x = hrand(n, -6, 6), *dy = hrand(n, -1, 1), *dx0 = hrand(n, -1, 1);
        float *y = halloc(n * sizeof(float)), *dx = hcopy(dx0, n);
        CHECK_OK(cpu->act_forward(y, x, n, (dd_act)a));
        CHECK_OK(cpu->act_backward(dx, dy, x, n, (dd_act)a));
        float *gy = dpoison(n), *gdx = dup(dx0, n), *gx = dup(x, n);
        CHECK_OK(gpu->act_forward(gy, gx, n, (dd_act)a));
        CHECK_OK(gpu->act_backward(gdx, dup(dy, n), gx, n, (dd_act)a));
        sync_or_fail(names[a]);
        char what[64];
        snprintf(what, sizeof what, "%s y", names[a]);
        expect(what, y, gy, n, FP32_TOL);
        snprintf(what, sizeof what, "%s dx", names[a]);
        expect(what, dx, gdx, n, FP32_TOL);
        release();
    }
}

static void test_add_concat(void) {
    const size_t n = 1237;
    float *a = hrand(n, -1, 1), *b = hrand(n, -1, 1), *dy = hrand(n, -1, 1);
    float *da0 = hrand(n, -1, 1), *db0 = hrand(n, -1, 1);
    float *y = halloc(n * sizeof(float)), *da = hcopy(da0, n), *db = hcopy(db0, n);
    CHECK_OK(cpu->add_forward(y, a, b, n));
    CHECK_OK(cpu->add_backward(da, NULL, dy, n));
    CHECK_OK(cpu->add_backward(da, db, dy, n));
    float *gy = dpoison(n), *gda = dup(da0, n), *gdb = dup(db0, n), *gdy = dup(dy, n);
    CHECK_OK(gpu->add_forward(gy, dup(a, n), dup(b, n), n));
    CHECK_OK(gpu->add_backward(gda, NULL, gdy, n));
    CHECK_OK(gpu->add_backward(gda, gdb, gdy, n));
    sync_or_fail("add");
    expect("add y", y, gy, n, FP32_TOL);
    expect("add da (twice)", da, gda, n, FP32_TOL);
    expect("add db", db, gdb, n, FP32_TOL);
    release();

    const int N = 3, Ca = 2, Cb = 5, HW = 7;
    const size_t na = (size_t)N * Ca * HW, nb = (size_t)N * Cb * HW, ny = na + nb;
    float *ca = hrand(na, -1, 1), *cb = hrand(nb, -1, 1), *cdy = hrand(ny, -1, 1);
    float *cda0 = hrand(na, -1, 1), *cdb0 = hrand(nb, -1, 1);
    float *cy = halloc(ny * sizeof(float)), *cda = hcopy(cda0, na), *cdb = hcopy(cdb0, nb);
    CHECK_OK(cpu->concat_forward(cy, ca, cb, N, Ca, Cb, HW));
    CHECK_OK(cpu->concat_backward(cda, cdb, cdy, N, Ca, Cb, HW));
    float *gcy = dpoison(ny), *gcda = dup(cda0, na), *gcdb = dup(cdb0, nb);
    CHECK_OK(gpu->concat_forward(gcy, dup(ca, na), dup(cb, nb), N, Ca, Cb, HW));
    CHECK_OK(gpu->concat_backward(gcda, gcdb, dup(cdy, ny), N, Ca, Cb, HW));
    sync_or_fail("concat");
    expect("concat y", cy, gcy, ny, 0.0); /* data movement: exact */
    expect("concat da", cda, gcda, na, FP32_TOL);
    expect("concat db", cdb, gcdb, nb, FP32_TOL);
    release();
}

static void test_upsample_maxpool(void) {
    const int N = 2, C = 3, H = 5, W = 4;
    const size_t nx = (size_t)N * C * H * W, nu = nx * 4;
    float *x = hrand(nx, -1, 1), *dy = hrand(nu, -1, 1), *dx0 = hrand(nx, -1, 1);
    float *y = halloc(nu * sizeof(float)), *dx = hcopy(dx0, nx);
    CHECK_OK(cpu->upsample2x_forward(y, x, N, C, H, W));
    CHECK_OK(cpu->upsample2x_backward(dx, dy, N, C, H, W));
    float *gy = dpoison(nu), *gdx = dup(dx0, nx);
    CHECK_OK(gpu->upsample2x_forward(gy, dup(x, nx), N, C, H, W));
    CHECK_OK(gpu->upsample2x_backward(gdx, dup(dy, nu), N, C, H, W));
    sync_or_fail("upsample2x");
    expect("upsample2x y", y, gy, nu, 0.0);
    expect("upsample2x dx", dx, gdx, nx, FP32_TOL);
    release();

    /* odd H and W (floor), values on a coarse grid so windows hold ties: the first maximum wins */
    const int Hm = 7, Wm = 6;
    const size_t nm = (size_t)N * C * Hm * Wm, np = (size_t)N * C * (Hm / 2) * (Wm / 2);
    float *mx = hrand(nm, -2, 2);
    for (size_t i = 0; i < nm; i++) mx[i] = floorf(mx[i] * 2.0f) / 2.0f;
    float *mdy = hrand(np, -1, 1), *mdx0 = hrand(nm, -1, 1);
    float *my = halloc(np * sizeof(float)), *mdx = hcopy(mdx0, nm);
    CHECK_OK(cpu->maxpool2x2_forward(my, mx, N, C, Hm, Wm));
    CHECK_OK(cpu->maxpool2x2_backward(mdx, mdy, mx, N, C, Hm, Wm));
    float *gmx = dup(mx, nm), *gmy = dpoison(np), *gmdx = dup(mdx0, nm);
    CHECK_OK(gpu->maxpool2x2_forward(gmy, gmx, N, C, Hm, Wm));
    CHECK_OK(gpu->maxpool2x2_backward(gmdx, dup(mdy, np), gmx, N, C, Hm, Wm));
    sync_or_fail("maxpool2x2");
    expect("maxpool2x2 y (ties)", my, gmy, np, 0.0);
    expect("maxpool2x2 dx (ties: first maximum)", mdx, gmdx, nm, 0.0);
    release();
}

/* ---------------------------------------------------------------- attention */

static void case_attn(int N, int C, int heads, int P) {
    dd_attn_shape s = {N, C, heads, P};
    char tag[64];
    snprintf(tag, sizeof tag, "attention N%d C%d heads%d P%d", N, C, heads, P);
    const size_t nqkv = (size_t)N * 3 * C * P, ny = (size_t)N * C * P,
                 npr = (size_t)N * heads * P * P;
    float *qkv = hrand(nqkv, -1.5f, 1.5f), *dy = hrand(ny, -1, 1), *dq0 = hrand(nqkv, -1, 1);
    float *y = halloc(ny * sizeof(float)), *probs = halloc(npr * sizeof(float)),
          *dq = hcopy(dq0, nqkv);
    void *cws = NULL;
    size_t cwsb = cpu->attention_workspace(&s);
    if (cwsb && cpu->alloc(&cws, cwsb)) fatal("cpu alloc");
    CHECK_OK(cpu->attention_forward(y, probs, qkv, &s));
    CHECK_OK(cpu->attention_backward(dq, dy, qkv, probs, &s, cws));
    cpu->free(cws);

    size_t gwsb = gpu->attention_workspace(&s);
    void *gws = gwsb ? dalloc(gwsb) : NULL;
    float *gqkv = dup(qkv, nqkv), *gy = dpoison(ny), *gpr = dpoison(npr), *gdq = dup(dq0, nqkv);
    CHECK_OK(gpu->attention_forward(gy, gpr, gqkv, &s));
    /* backward from the CPU's probs, so the comparison isolates backward */
    CHECK_OK(gpu->attention_backward(gdq, dup(dy, ny), gqkv, dup(probs, npr), &s, gws));
    sync_or_fail(tag);
    char what[128];
    snprintf(what, sizeof what, "%s y", tag);
    expect(what, y, gy, ny, mm_tol);
    snprintf(what, sizeof what, "%s probs", tag);
    expect(what, probs, gpr, npr, mm_tol);
    snprintf(what, sizeof what, "%s dqkv", tag);
    expect(what, dq, gdq, nqkv, mm_tol);
    release();
}

static void test_attention(void) {
    case_attn(2, 8, 2, 9);
    case_attn(3, 64, 4, 49); /* the UNet's middle attention at 7x7 */
    case_attn(1, 12, 3, 40); /* P not a multiple of 32 and above it */
}

/* ---------------------------------------------------------------- embedding, losses */

static void test_embedding(void) {
    const int N = 9, rows = 10, dim = 6;
    int32_t idx[9] = {3, 0, 9, 3, 3, 7, 1, 0, 9}; /* repeats: the backward must sum them */
    const size_t nt = (size_t)rows * dim, ny = (size_t)N * dim;
    float *table = hrand(nt, -1, 1), *dy = hrand(ny, -1, 1), *dt0 = hrand(nt, -1, 1);
    float *y = halloc(ny * sizeof(float)), *dt = hcopy(dt0, nt);
    CHECK_OK(cpu->embedding_forward(y, table, idx, N, rows, dim));
    CHECK_OK(cpu->embedding_backward(dt, dy, idx, N, rows, dim));
    int32_t *gidx = dup_bytes(idx, sizeof idx);
    float *gy = dpoison(ny), *gdt = dup(dt0, nt);
    CHECK_OK(gpu->embedding_forward(gy, dup(table, nt), gidx, N, rows, dim));
    CHECK_OK(gpu->embedding_backward(gdt, dup(dy, ny), gidx, N, rows, dim));
    sync_or_fail("embedding");
    expect("embedding y", y, gy, ny, 0.0);
    expect("embedding dtable (repeated rows)", dt, gdt, nt, FP32_TOL);
    release();
}

static void case_mse(size_t n) {
    char tag[64];
    snprintf(tag, sizeof tag, "mse n%zu", n);
    float *p = hrand(n, -2, 2), *t = hrand(n, -1, 1), *dp0 = hrand(n, -1, 1);
    float dloss[1] = {0.75f}, loss[1];
    float *dp = hcopy(dp0, n);
    CHECK_OK(cpu->mse_forward(loss, p, t, n));
    CHECK_OK(cpu->mse_backward(dp, dloss, p, t, n));
    float *gp = dup(p, n), *gt = dup(t, n), *gl = dpoison(1), *gdp = dup(dp0, n);
    CHECK_OK(gpu->mse_forward(gl, gp, gt, n));
    CHECK_OK(gpu->mse_backward(gdp, dup(dloss, 1), gp, gt, n));
    sync_or_fail(tag);
    char what[96];
    snprintf(what, sizeof what, "%s loss", tag);
    expect(what, loss, gl, 1, FP32_TOL);
    snprintf(what, sizeof what, "%s dpred", tag);
    expect(what, dp, gdp, n, FP32_TOL);
    /* again: the multi-block reduction must leave its counter ready for the next call */
    CHECK_OK(gpu->mse_forward(gl, gp, gt, n));
    snprintf(what, sizeof what, "%s loss (second call)", tag);
    expect(what, loss, gl, 1, FP32_TOL);
    release();
}

static void case_xent(int N, int K) {
    char tag[64];
    snprintf(tag, sizeof tag, "xent N%d K%d", N, K);
    const size_t n = (size_t)N * K;
    float *logits = hrand(n, -4, 4), *dl0 = hrand(n, -1, 1);
    int32_t *labels = halloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) labels[i] = (i * 7 + 3) % K;
    float dloss[1] = {1.25f}, loss[1];
    float *probs = halloc(n * sizeof(float)), *dl = hcopy(dl0, n);
    CHECK_OK(cpu->xent_forward(loss, probs, logits, labels, N, K));
    CHECK_OK(cpu->xent_backward(dl, dloss, probs, labels, N, K));
    int32_t *glab = dup_bytes(labels, (size_t)N * sizeof(int32_t));
    float *gl = dpoison(1), *gpr = dpoison(n), *gdl = dup(dl0, n);
    CHECK_OK(gpu->xent_forward(gl, gpr, dup(logits, n), glab, N, K));
    CHECK_OK(gpu->xent_backward(gdl, dup(dloss, 1), dup(probs, n), glab, N, K));
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
}

/* ---------------------------------------------------------------- optimiser, diffusion */

static void test_optim(void) {
    const size_t n = 4099;
    float *p = hrand(n, -1, 1), *m = hrand(n, -0.1f, 0.1f), *v = hrand(n, 0, 0.01f);
    float *gp = dup(p, n), *gm = dup(m, n), *gv = dup(v, n);
    for (int64_t t = 1; t <= 3; t++) {
        float *g = hrand(n, -1, 1);
        CHECK_OK(cpu->adam_update(p, m, v, g, n, 1e-3f, 0.9f, 0.999f, 1e-8f, t));
        CHECK_OK(gpu->adam_update(gp, gm, gv, dup(g, n), n, 1e-3f, 0.9f, 0.999f, 1e-8f, t));
    }
    sync_or_fail("adam");
    expect("adam p (3 steps)", p, gp, n, FP32_TOL);
    expect("adam m", m, gm, n, FP32_TOL);
    expect("adam v", v, gv, n, FP32_TOL);
    float *ema = hrand(n, -1, 1), *gema = dup(ema, n);
    CHECK_OK(cpu->ema_update(ema, p, n, 0.999f));
    CHECK_OK(gpu->ema_update(gema, gp, n, 0.999f));
    sync_or_fail("ema");
    expect("ema", ema, gema, n, FP32_TOL);
    release();
}

static void test_diffusion(void) {
    const size_t n = 50001;
    const uint64_t seed = 0x5EEDull, stream = 3, offset = (1ull << 33) + 17; /* > 32 bits */
    float *z = halloc(n * sizeof(float)), *gz = dpoison(n);
    CHECK_OK(cpu->normal(z, n, seed, stream, offset));
    CHECK_OK(gpu->normal(gz, n, seed, stream, offset));
    sync_or_fail("normal");
    expect("normal (Philox, same seed)", z, gz, n, FP32_TOL);

    const int N = 7;
    const size_t per = 785; /* odd, not a multiple of the block */
    float *x0 = hrand(N * per, -1, 1), *noise = hrand(N * per, -2, 2);
    float *ca = hrand(N, 0.1f, 1), *cb = hrand(N, 0.1f, 1);
    float *xt = halloc(N * per * sizeof(float)), *gxt = dpoison(N * per);
    CHECK_OK(cpu->q_sample(xt, x0, noise, ca, cb, N, per));
    CHECK_OK(gpu->q_sample(gxt, dup(x0, N * per), dup(noise, N * per), dup(ca, N), dup(cb, N), N,
                           per));
    sync_or_fail("q_sample");
    expect("q_sample", xt, gxt, N * per, FP32_TOL);

    float *cond = hrand(n, -1, 1), *unc = hrand(n, -1, 1), *eps = halloc(n * sizeof(float));
    float *geps = dpoison(n);
    CHECK_OK(cpu->guidance(eps, cond, unc, n, 2.0f));
    CHECK_OK(gpu->guidance(geps, dup(cond, n), dup(unc, n), n, 2.0f));
    sync_or_fail("guidance");
    expect("guidance", eps, geps, n, FP32_TOL);

    /* DDPM-like step with noise and clipping, then a deterministic DDIM-like step */
    for (int k = 0; k < 2; k++) {
        const float sigma = k == 0 ? 0.3f : 0.0f;
        const int clip = k == 0;
        float *x = hrand(n, -3, 3), *e = hrand(n, -2, 2);
        float *gx = dup(x, n), *gx0 = dpoison(n), *x0o = halloc(n * sizeof(float));
        CHECK_OK(cpu->sampler_step(x, x0o, e, n, 1.7f, 1.3f, clip, 0.4f, 0.6f, k ? 0.2f : 0.0f,
                                   sigma, seed, stream, offset));
        CHECK_OK(gpu->sampler_step(gx, gx0, dup(e, n), n, 1.7f, 1.3f, clip, 0.4f, 0.6f,
                                   k ? 0.2f : 0.0f, sigma, seed, stream, offset));
        sync_or_fail("sampler_step");
        expect(k ? "sampler_step x (no noise, no clip)" : "sampler_step x (noise, clip)", x, gx, n,
               FP32_TOL);
        expect("sampler_step x0 estimate", x0o, gx0, n, FP32_TOL);
    }
    /* x0_out NULL is allowed */
    float *x = hrand(n, -1, 1), *e = hrand(n, -1, 1), *gx = dup(x, n);
    CHECK_OK(cpu->sampler_step(x, NULL, e, n, 1.1f, 0.4f, 1, 0.5f, 0.5f, 0.0f, 0.1f, 9, 1, 0));
    CHECK_OK(gpu->sampler_step(gx, NULL, dup(e, n), n, 1.1f, 0.4f, 1, 0.5f, 0.5f, 0.0f, 0.1f, 9, 1,
                               0));
    sync_or_fail("sampler_step");
    expect("sampler_step x (x0_out NULL)", x, gx, n, FP32_TOL);
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
    DD_TRY(g->group_norm_forward(q->h, q->mean, q->rstd, q->h, q->gamma, q->beta, NULL, &q->gs));
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
    q.gs = (dd_gn_shape){4, 8, 144, 4, 1, 1e-5f};
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

    CHECK_OK(run_seq(&q)); /* warm-up (lazy kernel loading), then the reference */
    CHECK_OK(run_seq(&q));
    sync_or_fail("plain sequence");
    float *ref = seq_outputs(&q);
    const size_t total = 1 + q.nh + q.nx + q.nw + 8;

    dd_cuda_graph *graph = NULL;
    CHECK_OK(dd_cuda_capture_begin());
    int rc = run_seq(&q);
    CHECK_OK(rc);
    CHECK_OK(dd_cuda_capture_end(&graph));
    CHECK(graph != NULL);
    if (graph) {
        /* scribble over the outputs so the replay must rewrite them */
        CHECK_OK(gpu->zero(q.h, q.nh * sizeof(float)));
        CHECK_OK(gpu->zero(q.loss, sizeof(float)));
        /* the forward part (loss and h: fixed-order kernels and deterministic cuDNN forward
         * algorithms) must match bit for bit; the gradients too unless cuDNN's fastest backward
         * algorithm for the shape accumulates with atomics (then within 1e-6) */
        const size_t nfwd = 1 + q.nh;
        for (int rep = 0; rep < 2; rep++) {
            CHECK_OK(dd_cuda_graph_replay(graph));
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
    CHECK_OK(dd_cuda_capture_begin());
    int conv_rc = gpu->conv2d_forward(q.h, q.x, q.w, NULL, &fresh, q.ws);
    CHECKF(conv_rc != 0, "an unprepared conv shape must be refused during capture");
    if (conv_rc) printf("  refused as expected: %s\n", dd_error_message());
    void *p = NULL;
    int alloc_rc = gpu->alloc(&p, 64);
    CHECKF(alloc_rc != 0 && p == NULL, "alloc must be refused during capture");
    CHECK_OK(dd_cuda_capture_end(NULL));
    /* and the backend still works afterwards */
    CHECK_OK(run_seq(&q));
    sync_or_fail("sequence after a discarded capture");
    float *after = seq_outputs(&q);
    CHECKF(memcmp(after, ref, (1 + q.nh) * sizeof(float)) == 0 &&
               tu_rel_err(after, ref, total) <= 1e-6,
           "plain launches after a discarded capture differ");
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
    test_optim();
    test_diffusion();
}

/* --quick: the TF32-off pass only, no capture (for a run under compute-sanitizer, which is slow
 * and may not support graph capture) */
int main(int argc, char **argv) {
    const int quick = argc > 1 && !strcmp(argv[1], "--quick");
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
        printf("== TF32 %s: cuDNN/cuBLAS ops within %.0e, the rest within %.0e\n",
               tf32 ? "on" : "off", mm_tol, FP32_TOL);
        run_all();
    }
    if (!quick) {
        printf("== CUDA graph capture (TF32 off)\n");
        test_capture();
    }
    return tu_finish();
}
