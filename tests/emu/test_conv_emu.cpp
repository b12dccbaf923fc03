/* cuda/cuda_conv.cu's own convolution kernels, run unmodified on the CPU (see
 * fake_cuda/cuda_runtime.h and emu_runtime.cpp): forward, backward-data and backward-filter (with
 * db, and the += contract on dx, dw, db), in every tile configuration, against a double-precision
 * reference, for the UNet's shapes (3x3 at 28x28, 14x14, 7x7, the 4x4 stride-2 downsample) at
 * small batch and channel counts, and for awkward ones (the generic-K kernels, stride = K,
 * padding wider than the kernel, more channels than one tile, odd sizes, NULL gradients).
 * Every direction runs without a workspace (one split adding directly), with one too small for
 * a split, and with a large one (split partials and the reduction kernels: these small outputs
 * leave the 132 emulated SMs under-filled, so forward and backward-data split too). Checks launch
 * configurations, __ldg reads inside the buffers, writes inside them (guard zones), barriers that
 * every thread reaches, and that nothing is written where a NULL gradient says skip. This is
 * about indexing, barriers and reductions, not speed: the emulator is slow, so shapes are small.
 * Exit status 0 when everything matches, 1 otherwise. */
#include <cuda_runtime.h>

#include <csignal>
#include <unistd.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_internal.h"
#include "emu.h"

/* what cuda_conv.cu needs from the rest of the library */
cudaStream_t dd_cuda_stream;
int dd_cuda_tf32_on;

extern "C" int dd_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("dd_error: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return -1;
}
extern "C" const char *dd_cuda_base(const char *path) { return path; }
extern "C" int dd_cuda_fail(const char *file, int line, const char *call, cudaError_t) {
    return dd_error("%s:%d: %s", file, line, call);
}

namespace {

/* max |got - ref| relative to max |ref|: FP32 configurations, and the TF32 tensor-core ones
 * (operands rounded to 10 fraction bits, unit roundoff 2^-11 = 4.9e-4; a misplaced fragment
 * element gives errors of order 1) */
const double TOL = 1e-5, TOL_TF32 = 2e-3;
/* the tensor-core ones against a reference from the TF32-rounded operands (x, w, dy; not the
 * bias, and not db, which is summed in FP32 beside the products): only the FP32 accumulation's
 * order differs, so an operand that reaches the tensor cores unrounded (errors ~1e-4) fails */
const double TOL_TF32_ROUNDED = 2e-5;

/* x rounded to TF32 as cvt.rna.tf32.f32 (nearest, ties away from zero) */
float rna_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&x, &u, sizeof u);
    return x;
}

std::vector<float> rounded(const std::vector<float> &v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = rna_tf32(v[i]);
    return r;
}

/* y = conv(x, w) + b, dx = conv^T(dy, w), dw = dy (x) x, db = sum dy; all in double */
void reference(const dd_conv_shape &s, const float *x, const float *w, const float *b,
               const float *dy, std::vector<double> &y, std::vector<double> &dx,
               std::vector<double> &dw, std::vector<double> &db) {
    const int K = s.K;
    y.assign((size_t)s.N * s.Cout * s.Ho * s.Wo, 0.0);
    dx.assign((size_t)s.N * s.Cin * s.H * s.W, 0.0);
    dw.assign((size_t)s.Cout * s.Cin * K * K, 0.0);
    db.assign((size_t)s.Cout, 0.0);
    for (int n = 0; n < s.N; n++)
        for (int o = 0; o < s.Cout; o++)
            for (int oh = 0; oh < s.Ho; oh++)
                for (int ow = 0; ow < s.Wo; ow++) {
                    const size_t yi = (((size_t)n * s.Cout + o) * s.Ho + oh) * s.Wo + ow;
                    const double g = dy[yi];
                    double acc = b ? b[o] : 0.0;
                    db[o] += g;
                    for (int c = 0; c < s.Cin; c++)
                        for (int kh = 0; kh < K; kh++)
                            for (int kw = 0; kw < K; kw++) {
                                const int ih = oh * s.stride - s.pad + kh;
                                const int iw = ow * s.stride - s.pad + kw;
                                if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
                                const size_t xi = (((size_t)n * s.Cin + c) * s.H + ih) * s.W + iw;
                                const size_t wi = (((size_t)o * s.Cin + c) * K + kh) * K + kw;
                                acc += (double)w[wi] * x[xi];
                                dx[xi] += (double)w[wi] * g;
                                dw[wi] += g * x[xi];
                            }
                    y[yi] = acc;
                }
}

std::vector<float> random_floats(size_t n, uint64_t seed) {
    EmuRng r(seed);
    std::vector<float> v(n);
    for (float &e : v) e = r.uniform();
    return v;
}

/* got == base + ref to tol (base empty: got == ref) */
void compare(const std::string &what, const float *got, const std::vector<double> &ref,
             const std::vector<float> &base, double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    for (size_t i = 0; i < ref.size(); i++) {
        const double r = ref[i] + (base.empty() ? 0.0 : base[i]);
        double d = std::fabs((double)got[i] - r);
        if (std::isnan(d)) d = INFINITY;
        if (d > maxdiff) maxdiff = d;
        if (std::fabs(r) > maxref) maxref = std::fabs(r);
    }
    const double err = maxref > 0.0 ? maxdiff / maxref : maxdiff;
    if (!(err <= tol)) emu_fail("%s: max error %.3e relative to max |ref| (tolerance %.0e)",
                                what.c_str(), err, tol);
}

void untouched(const std::string &what, const float *got, const std::vector<float> &before) {
    if (memcmp(got, before.data(), before.size() * sizeof(float)))
        emu_fail("%s: written although its gradient pointer was NULL", what.c_str());
}

struct Case {
    int N, Cin, H, W, Cout, K, stride, pad;
    bool bias, dx, dw; /* b and db given; dx wanted; dw wanted */
};

enum Workspace { WS_NONE, WS_SMALL, WS_LARGE };
const size_t ws_bytes_of[] = {0, 4096, (size_t)16 << 20};

/* every forward/backward-data configuration, each with a backward-filter configuration (all of
 * those are reached too, since there are fewer) */
void run_case(const Case &c, Workspace wsm) {
    dd_conv_shape s;
    memset(&s, 0, sizeof s);
    s.N = c.N;
    s.Cin = c.Cin;
    s.H = c.H;
    s.W = c.W;
    s.Cout = c.Cout;
    s.K = c.K;
    s.stride = c.stride;
    s.pad = c.pad;
    s.Ho = (c.H + 2 * c.pad - c.K) / c.stride + 1;
    s.Wo = (c.W + 2 * c.pad - c.K) / c.stride + 1;
    char shape[160];
    snprintf(shape, sizeof shape, "N%d %d->%d %dx%d K%d s%d p%d%s%s%s ws%d", c.N, c.Cin, c.Cout,
             c.H, c.W, c.K, c.stride, c.pad, c.bias ? " bias" : "", c.dx ? " dx" : "",
             c.dw ? " dw" : "", (int)wsm);
    if (!dd_conv_own_supported(&s)) {
        emu_fail("%s: not supported by the own kernels", shape);
        return;
    }
    const size_t nx = (size_t)s.N * s.Cin * s.H * s.W, ny = (size_t)s.N * s.Cout * s.Ho * s.Wo;
    const size_t nw = (size_t)s.Cout * s.Cin * s.K * s.K, nb = (size_t)s.Cout;
    const std::vector<float> hx = random_floats(nx, 1), hw = random_floats(nw, 2),
                             hb = random_floats(nb, 3), hdy = random_floats(ny, 4),
                             dx0 = random_floats(nx, 5), dw0 = random_floats(nw, 6),
                             db0 = random_floats(nb, 7);
    std::vector<double> y, dx, dw, db, ry, rdx, rdw, rdb;
    reference(s, hx.data(), hw.data(), c.bias ? hb.data() : NULL, hdy.data(), y, dx, dw, db);
    const std::vector<float> rx = rounded(hx), rw = rounded(hw), rdy = rounded(hdy);
    reference(s, rx.data(), rw.data(), c.bias ? hb.data() : NULL, rdy.data(), ry, rdx, rdw, rdb);

    float *x = emu_alloc(nx), *w = emu_alloc(nw), *b = emu_alloc(nb), *dy = emu_alloc(ny);
    float *gy = emu_alloc(ny), *gdx = emu_alloc(nx), *gdw = emu_alloc(nw), *gdb = emu_alloc(nb);
    memcpy(x, hx.data(), nx * sizeof(float));
    memcpy(w, hw.data(), nw * sizeof(float));
    memcpy(b, hb.data(), nb * sizeof(float));
    memcpy(dy, hdy.data(), ny * sizeof(float));
    const size_t ws_bytes = ws_bytes_of[wsm];
    float *ws = ws_bytes ? emu_alloc(ws_bytes / sizeof(float)) : NULL;

    const int nf = dd_conv_own_configs(DD_CONV_BWD_FILTER);
    for (int v = 0; v < dd_conv_own_configs(DD_CONV_FWD); v++) {
        const int f = v % nf;
        const std::string tag = std::string(shape) + " cfg " +
                                dd_conv_own_config_name(DD_CONV_FWD, v) + "/" +
                                dd_conv_own_config_name(DD_CONV_BWD_FILTER, f);
        for (size_t i = 0; i < ny; i++) gy[i] = NAN; /* every output must be written */
        memcpy(gdx, dx0.data(), nx * sizeof(float));
        memcpy(gdw, dw0.data(), nw * sizeof(float));
        memcpy(gdb, db0.data(), nb * sizeof(float));
        const int failed = emu_failures();
        if (dd_conv_own_forward(v, gy, x, w, c.bias ? b : NULL, &s, ws, ws_bytes))
            emu_fail("%s: forward returned an error", tag.c_str());
        if (dd_conv_own_backward_data(v, c.dx ? gdx : NULL, dy, w, &s, ws, ws_bytes))
            emu_fail("%s: backward-data returned an error", tag.c_str());
        if (dd_conv_own_backward_filter(f, c.dw ? gdw : NULL, c.bias ? gdb : NULL, dy, x, &s, ws,
                                        ws_bytes))
            emu_fail("%s: backward-filter returned an error", tag.c_str());
        emu_check_guards(tag.c_str());
        const bool tcg = dd_conv_own_config_tf32(DD_CONV_FWD, v) != 0;
        const bool tcf = dd_conv_own_config_tf32(DD_CONV_BWD_FILTER, f) != 0;
        const double tg = tcg ? TOL_TF32 : TOL, tf = tcf ? TOL_TF32 : TOL;
        compare(tag + " y", gy, y, {}, tg);
        if (tcg) compare(tag + " y (TF32 operands)", gy, ry, {}, TOL_TF32_ROUNDED);
        if (c.dx) {
            compare(tag + " dx (+=)", gdx, dx, dx0, tg);
            if (tcg) compare(tag + " dx (+=, TF32 operands)", gdx, rdx, dx0, TOL_TF32_ROUNDED);
        } else {
            untouched(tag + " dx", gdx, dx0);
        }
        if (c.dw) {
            compare(tag + " dw (+=)", gdw, dw, dw0, tf);
            if (tcf) compare(tag + " dw (+=, TF32 operands)", gdw, rdw, dw0, TOL_TF32_ROUNDED);
        } else {
            untouched(tag + " dw", gdw, dw0);
        }
        if (c.bias)
            compare(tag + " db (+=)", gdb, db, db0, tf);
        else
            untouched(tag + " db", gdb, db0);
        if (emu_failures() != failed) break; /* one configuration's report is enough */
    }
    emu_free(x);
    emu_free(w);
    emu_free(b);
    emu_free(dy);
    emu_free(gy);
    emu_free(gdx);
    emu_free(gdw);
    emu_free(gdb);
    if (ws) emu_free(ws);
}

/* a wild write can land beyond a guard zone: say so, rather than die silently */
void on_crash(int) {
    static const char msg[] = "FAIL (fatal) crashed: an access outside every buffer\n";
    (void)!write(1, msg, sizeof msg - 1);
    _exit(2);
}

} /* namespace */

int main() {
    setvbuf(stdout, NULL, _IOLBF, 0); /* every report line out before a crash */
    signal(SIGSEGV, on_crash);
    signal(SIGBUS, on_crash);
    if (dd_conv_own_prepare()) return 1; /* reads the emulated SM count (132, as an H100) */
    /* N, Cin, H, W, Cout, K, stride, pad, bias, dx, dw */
    const Case unet[] = {
        {2, 1, 28, 28, 16, 3, 1, 1, true, true, true},   /* the input convolution */
        {1, 16, 28, 28, 16, 3, 1, 1, true, true, true},
        {1, 16, 28, 28, 16, 4, 2, 1, true, true, true},  /* downsample 28 -> 14 */
        {2, 16, 14, 14, 32, 3, 1, 1, true, true, true},
        {1, 32, 14, 14, 32, 4, 2, 1, true, true, true},  /* downsample 14 -> 7 */
        {2, 64, 7, 7, 64, 3, 1, 1, true, true, true},
        {2, 16, 28, 28, 1, 3, 1, 1, true, true, true},   /* the output convolution */
    };
    const Case awkward[] = {
        {2, 3, 9, 7, 5, 5, 1, 2, true, true, true},      /* generic K, odd sizes */
        {2, 67, 5, 5, 3, 1, 1, 0, false, true, true},    /* K = 1, no bias */
        {3, 2, 7, 7, 70, 3, 1, 1, true, true, true},     /* Cout past one 64-wide tile */
        {2, 130, 3, 3, 5, 2, 2, 1, true, true, true},    /* Cin past two 64-wide tiles, even K */
        {2, 3, 10, 10, 5, 4, 4, 0, true, true, true},    /* stride = K */
        {1, 2, 5, 5, 3, 3, 2, 3, true, true, true},      /* padding wider than the kernel */
        {3, 4, 9, 7, 6, 4, 2, 1, true, true, true},      /* K 4 stride 2 on odd sizes */
        {2, 8, 6, 6, 4, 3, 1, 1, true, false, false},    /* db only: no dx, no dw */
        {2, 3, 6, 6, 4, 5, 1, 2, false, false, true},    /* dw without db */
        {1, 1, 1, 1, 1, 1, 1, 0, true, true, true},      /* one of everything */
        {2, 20, 7, 6, 40, 3, 1, 0, true, true, true},    /* staged 3x3: no padding, 20 = 8+8+4 */
        {1, 5, 5, 9, 7, 3, 1, 2, true, true, true},      /* staged 3x3: padding 2 */
        {1, 3, 3, 60, 4, 3, 1, 1, true, true, true},     /* staged: one row per block, or none */
        {1, 2, 2, 140, 3, 3, 1, 1, true, true, true},    /* rows wider than any staged block */
    };
    /* the plane kernels (several images a block), which take no workspace: once each */
    const Case planes[] = {
        {3, 12, 7, 7, 20, 3, 1, 1, true, true, true},    /* planes: 3 images, 12 = 8+4, Cout 20 */
        {3, 16, 14, 14, 24, 3, 1, 1, true, true, true},  /* planes: 14x14, whole groups */
        {5, 9, 6, 5, 10, 3, 1, 0, true, true, true},     /* planes: 4x3 out, images per block */
        {3, 8, 5, 5, 8, 3, 1, 2, true, true, true},      /* planes: padding 2 */
        {2, 17, 14, 15, 5, 3, 1, 1, true, true, true},   /* planes: 210 positions, 17 channels */
    };
    for (const Case &c : unet) run_case(c, WS_LARGE);
    for (const Case &c : planes) run_case(c, WS_LARGE);
    for (const Case &c : awkward)
        for (Workspace m : {WS_NONE, WS_SMALL, WS_LARGE}) run_case(c, m);
    printf("%s (%d failures)\n", emu_failures() ? "FAILED" : "all passed", emu_failures());
    return emu_failures() ? 1 : 0;
}
