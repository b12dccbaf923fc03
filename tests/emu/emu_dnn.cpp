/* cuDNN's legacy convolution API on the CPU emulator (fake_cuda/cudnn.h): what cuda/cuda_dnn.c
 * uses. 4-D NCHW float tensors, KCRS float filters, 2-D convolution or cross-correlation with
 * padding, stride and dilation:
 *   Forward         y  = alpha conv(x, w) + beta y
 *   BackwardData    dx = alpha conv^T(dy, w) + beta dx
 *   BackwardFilter  dw = alpha corr(x, dy) + beta dw
 *   BackwardBias    db = alpha sum_{n,h,w} dy + beta db        (db 1 x C x 1 x 1)
 *   AddTensor       C  = alpha A + beta C, A broadcast along every dimension where it is 1
 * Sums in double, stored as float; beta == 0 overwrites the output without reading it. Unless the
 * convolution's math type is CUDNN_FMA_MATH, the inputs of a convolution are first rounded to
 * TF32 (CUDNN_DEFAULT_MATH permits TF32 tensor cores for FP32 data on sm_80+): the worst the
 * hardware may do.
 *
 * Checked as cuDNN does (CUDNN_STATUS_BAD_PARAM / NOT_SUPPORTED) and reported as misuse too
 * (emu_misuse, so a test sees it even where the caller ignores the code): descriptors created,
 * set and not destroyed; data types; x's C == the filter's C; y's dims == the output dims the
 * convolution gives; the algorithm supports the shape; alpha/beta non-NULL host pointers; every
 * data pointer lies in one live device buffer for the bytes its descriptor implies (checked at
 * the call and again when the queued operation runs); the workspace is at least what
 * cudnnGet*WorkspaceSize reports for the algorithm and lies in device memory; no output overlaps
 * an input or the workspace. A queued convolution scribbles NaN over the workspace bytes it uses,
 * as a real algorithm leaves garbage there.
 *
 * Algorithms: a deterministic model per direction. GEMM-style ones (IMPLICIT_GEMM, ALGO_0, and
 * backward-data ALGO_1) need no workspace, PRECOMP_GEMM and backward-filter ALGO_1/ALGO_3 a small
 * one, GEMM an im2col buffer of the whole batch, Winograd (3x3, stride 1) a medium one, FFT
 * (stride 1) a large one; DIRECT and backward-filter WINOGRAD are not supported. cudnnFind*
 * (refused during a capture: it allocates and synchronises) flushes the queue and returns them
 * sorted fastest first by a modelled time (FFT and Winograd fastest, so the caller's workspace
 * cap matters), the unsupported ones last with CUDNN_STATUS_NOT_SUPPORTED; backward-data ALGO_0
 * and backward-filter ALGO_0/ALGO_3 are NON_DETERMINISTIC and a little faster than the
 * deterministic ALGO_1, which is within 10% of them for some shapes and not for others.
 * cudnnGet*Algorithm_v7 gives the same ranking untimed (no flush, no allocation).
 * EMU_CUDNN_FIND_FAIL=1 makes cudnnFind* fail as with no room for its buffers, and
 * EMU_CUDNN_NO_CNN=1 cudnnCnnVersionCheck as when libcudnn_cnn cannot be loaded. A
 * non-deterministic algorithm's results change in the last bit from one execution to the next
 * (jitter below), so a test that expects bit-identical results from one fails here too. */
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "emu_stream.h"

struct cudnnContext {
    cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
    bool set = false;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
    bool set = false;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int k = 0, c = 0, h = 0, w = 0;
};
struct cudnnConvolutionStruct {
    bool set = false;
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1;
    cudnnConvolutionMode_t mode = CUDNN_CONVOLUTION;
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

/* live descriptors and handles: a call with a destroyed or never created one is misuse */
std::set<const void *> live;

bool alive(const void *p) { return p && live.count(p); }

float tf32(float f) { /* as in emu_blas.cpp: round to nearest, ties away, 10 mantissa bits */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* One convolution, as the descriptors said at the call. */
struct Geom {
    int N, C, H, W;         /* x */
    int K, R, S;            /* w (K, C, R, S) */
    int P, Q;               /* y (N, K, P, Q) */
    int ph, pw, u, v, dh, dw;
    bool flip;              /* CUDNN_CONVOLUTION: the filter is mirrored */
    bool round_tf32;
    size_t nx() const { return (size_t)N * C * H * W; }
    size_t nw() const { return (size_t)K * C * R * S; }
    size_t ny() const { return (size_t)N * K * P * Q; }
    double flops() const { return 2.0 * N * K * P * Q * (double)C * R * S; }
    bool unit() const { return u == 1 && v == 1 && dh == 1 && dw == 1; }
    bool k3() const { return R == 3 && S == 3; }
};

enum Dir { FWD, BWD_DATA, BWD_FILTER };
const char *const dir_call[] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData",
                                "cudnnConvolutionBackwardFilter"};

/* descriptor consistency as cuDNN checks it; fills g */
cudnnStatus_t check_conv(const char *call, cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w,
                         cudnnConvolutionDescriptor_t conv, cudnnTensorDescriptor_t y, Geom *g) {
    if (!alive(x) || !alive(w) || !alive(conv) || !alive(y)) {
        emu_misuse("%s: a descriptor is NULL, destroyed or was never created", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (!x->set || !w->set || !conv->set || !y->set) {
        emu_misuse("%s: a descriptor was created but never set", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->type != w->type || x->type != y->type || x->type != CUDNN_DATA_FLOAT ||
        conv->compute != CUDNN_DATA_FLOAT) {
        emu_misuse("%s: data types differ (x %d, w %d, y %d, compute %d)", call, (int)x->type,
                   (int)w->type, (int)y->type, (int)conv->compute);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->c != w->c) {
        emu_misuse("%s: x has %d channels, the filter %d", call, x->c, w->c);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const int eh = (w->h - 1) * conv->dil_h + 1, ew = (w->w - 1) * conv->dil_w + 1;
    if (x->h + 2 * conv->pad_h < eh || x->w + 2 * conv->pad_w < ew) {
        emu_misuse("%s: the filter (%d x %d, dilated %d x %d) is larger than the padded input "
                   "(%d x %d)",
                   call, w->h, w->w, eh, ew, x->h + 2 * conv->pad_h, x->w + 2 * conv->pad_w);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const int P = (x->h + 2 * conv->pad_h - eh) / conv->u + 1;
    const int Q = (x->w + 2 * conv->pad_w - ew) / conv->v + 1;
    if (y->n != x->n || y->c != w->k || y->h != P || y->w != Q) {
        emu_misuse("%s: y is (%d, %d, %d, %d), the convolution gives (%d, %d, %d, %d)", call,
                   y->n, y->c, y->h, y->w, x->n, w->k, P, Q);
        return CUDNN_STATUS_BAD_PARAM;
    }
    *g = Geom{x->n,        x->c,       x->h,    x->w,    w->k,       w->h,
              w->w,        P,          Q,       conv->pad_h, conv->pad_w, conv->u,
              conv->v,     conv->dil_h, conv->dil_w, conv->mode == CUDNN_CONVOLUTION,
              conv->math != CUDNN_FMA_MATH};
    return CUDNN_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- the algorithm model */

struct Algo {
    bool supported;
    size_t bytes;
    bool deterministic;
    double factor; /* modelled time relative to a plain implicit GEMM */
};

size_t pow2_at_least(size_t n) {
    size_t p = 1;
    while (p < n) p *= 2;
    return p;
}

/* FFT over the padded image, complex floats for x, w and y in the frequency domain */
size_t fft_bytes(const Geom &g) {
    const size_t hf = pow2_at_least((size_t)g.H + 2 * g.ph), wf = pow2_at_least((size_t)g.W + 2 * g.pw);
    return ((size_t)g.N * g.C + (size_t)g.K * g.C + (size_t)g.N * g.K) * hf * (wf / 2 + 1) * 8;
}
bool fft_ok(const Geom &g) {
    return g.unit() && g.H + 2 * g.ph <= 256 && g.W + 2 * g.pw <= 256 && g.R > g.ph && g.S > g.pw;
}
/* 32 x 32 tiles */
bool fft_tiling_ok(const Geom &g) { return g.unit() && g.R <= 32 && g.S <= 32 && g.R > g.ph && g.S > g.pw; }
size_t fft_tiling_bytes(const Geom &g) {
    const size_t tiles = (size_t)((g.P + 32 - g.R) / (33 - g.R)) * (size_t)((g.Q + 32 - g.S) / (33 - g.S));
    return ((size_t)g.N * g.C * tiles + (size_t)g.K * g.C + (size_t)g.N * g.K * tiles) * 32 * 17 * 8;
}
/* F(4x4, 3x3): 6 x 6 transformed tiles */
size_t winograd_nonfused_bytes(const Geom &g) {
    const size_t tiles = (size_t)((g.P + 3) / 4) * (size_t)((g.Q + 3) / 4);
    return ((size_t)g.N * g.C * tiles + (size_t)g.K * g.C + (size_t)g.N * g.K * tiles) * 36 * 4;
}
size_t winograd_bytes(const Geom &g) { return (size_t)g.K * g.C * 16 * sizeof(float); }

/* which of two shapes' deterministic ALGO_1 is within 10% of the non-deterministic ones */
double algo1_factor(const Geom &g) { return ((g.C * 7 + g.K * 3 + g.H + g.R) & 1) ? 1.2 : 1.0; }

Algo algo_info(Dir d, int a, const Geom &g) {
    const Algo none{false, 0, true, 0.0};
    if (d == FWD) {
        switch (a) {
        case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return {true, 0, true, 1.3};
        case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM:
            return {true, ((size_t)g.C * g.R * g.S + (size_t)g.P * g.Q) * sizeof(int), true, 1.0};
        case CUDNN_CONVOLUTION_FWD_ALGO_GEMM:
            return {true, (size_t)g.N * g.C * g.R * g.S * g.P * g.Q * sizeof(float), true, 1.15};
        case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return none;
        case CUDNN_CONVOLUTION_FWD_ALGO_FFT:
            return fft_ok(g) ? Algo{true, fft_bytes(g), true, 0.7} : none;
        case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING:
            return fft_tiling_ok(g) ? Algo{true, fft_tiling_bytes(g), true, 0.85} : none;
        case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD:
            return g.unit() && g.k3() ? Algo{true, winograd_bytes(g), true, 0.8} : none;
        case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED:
            return g.unit() && g.k3() ? Algo{true, winograd_nonfused_bytes(g), true, 0.75} : none;
        }
    } else if (d == BWD_DATA) {
        switch (a) {
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0: return {true, 0, false, 0.95};
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: return {true, 0, true, algo1_factor(g)};
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT:
            return fft_ok(g) ? Algo{true, fft_bytes(g), true, 0.7} : none;
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING:
            return fft_tiling_ok(g) ? Algo{true, fft_tiling_bytes(g), true, 0.85} : none;
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD:
            return g.unit() && g.k3() ? Algo{true, winograd_bytes(g), true, 0.8} : none;
        case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED:
            return g.unit() && g.k3() ? Algo{true, winograd_nonfused_bytes(g), true, 0.75} : none;
        }
    } else {
        switch (a) {
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0: return {true, 0, false, 0.95};
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1:
            return {true, g.nw() * sizeof(float), true, algo1_factor(g)};
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT:
            return fft_ok(g) ? Algo{true, fft_bytes(g), true, 0.7} : none;
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3:
            return {true, g.nw() * sizeof(float) * (size_t)std::min(g.N, 4), false, 0.9};
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD: return none; /* not implemented */
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED:
            return g.unit() && g.k3() ? Algo{true, winograd_nonfused_bytes(g), true, 0.75} : none;
        case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING:
            return fft_tiling_ok(g) ? Algo{true, fft_tiling_bytes(g), true, 0.85} : none;
        }
    }
    return none;
}

const int algo_count[] = {CUDNN_CONVOLUTION_FWD_ALGO_COUNT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT};

cudnnStatus_t workspace_size(Dir d, const char *call, cudnnTensorDescriptor_t x,
                             cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                             cudnnTensorDescriptor_t y, int algo, size_t *bytes) {
    Geom g;
    if (!bytes) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_conv(call, x, w, conv, y, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (algo < 0 || algo >= algo_count[d]) {
        emu_misuse("%s: algorithm %d does not exist", call, algo);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const Algo a = algo_info(d, algo, g);
    if (!a.supported) return CUDNN_STATUS_NOT_SUPPORTED;
    *bytes = a.bytes;
    return CUDNN_STATUS_SUCCESS;
}

bool env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0");
}

/* EMU_CUDNN_FIND_SLOW_FIRST=X: cudnnFind misranks. It puts algorithm 0 of each direction
 * (implicit GEMM, ALGO_0, ALGO_0: always supported, no workspace, GEMM-style) first, timed at
 * 1 us, while every call of it takes X ms more. The backend's autotuner, which times cudnnFind's
 * first few results again, has to find that out and keep another (emu_cudnn_slow_algo). */
double slow_first_ms() {
    static const double ms = [] {
        const char *v = getenv("EMU_CUDNN_FIND_SLOW_FIRST");
        return v ? atof(v) : 0.0;
    }();
    return ms;
}

/* The perf results of cudnnFind* (timed: times fastest first) or, heuristic, of
 * cudnnGet*Algorithm_v7 (the same order, no times: -1), unsupported last.
 * EMU_CUDNN_FIND_FAIL=1: cudnnFind* fails as when the GPU has no room for its buffers. */
template <typename Perf>
cudnnStatus_t find(Dir d, const char *call, cudnnHandle_t h, cudnnTensorDescriptor_t x,
                   cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                   cudnnTensorDescriptor_t y, int requested, int *returned, Perf *perf,
                   bool heuristic = false) {
    if (!alive(h)) {
        emu_misuse("%s: the handle is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    /* Find allocates its own buffers and synchronises the device: refused by a capture */
    if (!heuristic && emu_prohibited(nullptr, call) != cudaSuccess)
        return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
    if (!returned || !perf || requested <= 0) {
        emu_misuse("%s: requestedAlgoCount %d, returnedAlgoCount %p, perfResults %p", call,
                   requested, (void *)returned, (void *)perf);
        return CUDNN_STATUS_BAD_PARAM;
    }
    Geom g;
    const cudnnStatus_t st = check_conv(call, x, w, conv, y, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (!heuristic && env_on("EMU_CUDNN_FIND_FAIL"))
        return CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
    if (!heuristic) emu_flush(); /* cudaDeviceSynchronize before timing */
    const double base_ms = 0.02 + g.flops() / 2e10; /* launch overhead + 20 TFLOP/s */
    std::vector<Perf> ok, failed;
    for (int a = 0; a < algo_count[d]; a++) {
        const Algo info = algo_info(d, a, g);
        Perf p;
        memset(&p, 0, sizeof p);
        p.algo = (decltype(p.algo))a;
        p.mathType = conv->math;
        p.determinism = info.deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
        if (info.supported) {
            p.status = CUDNN_STATUS_SUCCESS;
            p.time = heuristic ? -1.0f : (float)(info.factor * base_ms);
            p.memory = info.bytes;
            ok.push_back(p);
        } else {
            p.status = CUDNN_STATUS_NOT_SUPPORTED;
            p.time = -1.0f;
            p.memory = 0;
            failed.push_back(p);
        }
    }
    std::stable_sort(ok.begin(), ok.end(),
                     [](const Perf &a, const Perf &b) { return a.time < b.time; });
    if (!heuristic && slow_first_ms() > 0)
        for (size_t i = 0; i < ok.size(); i++)
            if ((int)ok[i].algo == 0) {
                Perf p = ok[i];
                p.time = 0.001f;
                ok.erase(ok.begin() + (long)i);
                ok.insert(ok.begin(), p);
                break;
            }
    ok.insert(ok.end(), failed.begin(), failed.end());
    const int n = std::min(requested, (int)ok.size());
    for (int i = 0; i < n; i++) perf[i] = ok[(size_t)i];
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- running */

struct Region {
    const void *p;
    size_t bytes;
    bool out;
    const char *name;
};

/* every region in one live device buffer (`when`: "at the call" or "when run") */
bool regions_in_device(const char *call, const char *when, const Region *r, int n) {
    for (int i = 0; i < n; i++)
        if (r[i].bytes && !emu_device_range(r[i].p, r[i].bytes)) {
            emu_misuse("%s (%s): %s [%p, +%zu bytes) is not inside one device buffer", call, when,
                       r[i].name, r[i].p, r[i].bytes);
            return false;
        }
    return true;
}

bool overlap(const Region &a, const Region &b) {
    const uintptr_t a0 = (uintptr_t)a.p, b0 = (uintptr_t)b.p;
    return a.bytes && b.bytes && a0 < b0 + b.bytes && b0 < a0 + a.bytes;
}

/* the checks every data-touching call shares: alpha/beta, device memory, no output aliasing */
cudnnStatus_t check_call(const char *call, const void *alpha, const void *beta, const Region *r,
                         int n) {
    if (!alpha || !beta) {
        emu_misuse("%s: alpha or beta is NULL", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    /* the scaling factors live in host memory (read at the call) */
    if (emu_device_range(alpha, sizeof(float)) || emu_device_range(beta, sizeof(float))) {
        emu_misuse("%s: alpha or beta points into device memory", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    for (int i = 0; i < n; i++)
        if (r[i].bytes && !r[i].p) {
            emu_misuse("%s: %s is NULL", call, r[i].name);
            return CUDNN_STATUS_BAD_PARAM;
        }
    if (!regions_in_device(call, "at the call", r, n)) return CUDNN_STATUS_BAD_PARAM;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && r[i].out && overlap(r[i], r[j])) {
                emu_misuse("%s: %s overlaps %s (in-place is not supported)", call, r[i].name,
                           r[j].name);
                return CUDNN_STATUS_BAD_PARAM;
            }
    return CUDNN_STATUS_SUCCESS;
}

/* a copy of n floats, rounded to TF32 when asked */
std::vector<float> load(const float *p, size_t n, bool round) {
    std::vector<float> v(p, p + n);
    if (round)
        for (float &f : v) f = tf32(f);
    return v;
}

/* output = alpha acc + beta output, the output unread when beta == 0 */
void store(float *out, const double *acc, size_t n, float alpha, float beta) {
    for (size_t i = 0; i < n; i++) {
        double r = (double)alpha * acc[i];
        if (beta != 0.0f) r += (double)beta * out[i];
        out[i] = (float)r;
    }
}

/* the range of output columns q with 0 <= q v - pad + s dil < W: [*lo, *hi) */
void valid_range(int Q, int v, int pad, int off, int W, int *lo, int *hi) {
    int a = 0;
    while (a < Q && a * v - pad + off < 0) a++;
    int b = a;
    while (b < Q && b * v - pad + off < W) b++;
    *lo = a;
    *hi = b;
}

/* A NON_DETERMINISTIC algorithm sums with float atomics in whatever order the blocks run: its
 * results differ from run to run in the last bits. Modelled after the exact sum: a quarter of the
 * (finite, non-zero) outputs move by one ulp, up or down, chosen afresh at every execution (so
 * two runs, or two replays of a graph, differ), never at the call. */
uint64_t nondet_runs;
void jitter(float *o, size_t n) {
    const uint64_t run = ++nondet_runs;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = run * 0x9e3779b97f4a7c15ull ^ (uint64_t)i * 0xbf58476d1ce4e5b9ull;
        z ^= z >> 31;
        z *= 0x94d049bb133111ebull;
        z ^= z >> 29;
        if ((z & 3) == 0 && std::isfinite(o[i]) && o[i] != 0.0f)
            o[i] = std::nextafter(o[i], (z & 4) ? INFINITY : -INFINITY);
    }
}

int fidx(const Geom &g, int r, int R) { return g.flip ? R - 1 - r : r; }

void forward(const Geom &g, const float *xp, const float *wp, float *yp, float alpha, float beta) {
    const std::vector<float> x = load(xp, g.nx(), g.round_tf32), w = load(wp, g.nw(), g.round_tf32);
    std::vector<double> acc((size_t)g.P * g.Q);
    for (int n = 0; n < g.N; n++)
        for (int k = 0; k < g.K; k++) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int c = 0; c < g.C; c++)
                for (int r = 0; r < g.R; r++)
                    for (int s = 0; s < g.S; s++) {
                        const double wv =
                            w[(((size_t)k * g.C + c) * g.R + fidx(g, r, g.R)) * g.S + fidx(g, s, g.S)];
                        int q0, q1;
                        valid_range(g.Q, g.v, g.pw, s * g.dw, g.W, &q0, &q1);
                        for (int p = 0; p < g.P; p++) {
                            const int ih = p * g.u - g.ph + r * g.dh;
                            if (ih < 0 || ih >= g.H) continue;
                            const float *xr = &x[(((size_t)n * g.C + c) * g.H + ih) * g.W];
                            double *ar = &acc[(size_t)p * g.Q];
                            for (int q = q0; q < q1; q++) ar[q] += wv * xr[q * g.v - g.pw + s * g.dw];
                        }
                    }
            store(yp + ((size_t)n * g.K + k) * g.P * g.Q, acc.data(), acc.size(), alpha, beta);
        }
}

void backward_data(const Geom &g, const float *wp, const float *dyp, float *dxp, float alpha,
                   float beta) {
    const std::vector<float> w = load(wp, g.nw(), g.round_tf32),
                             dy = load(dyp, g.ny(), g.round_tf32);
    std::vector<double> acc((size_t)g.H * g.W);
    for (int n = 0; n < g.N; n++)
        for (int c = 0; c < g.C; c++) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int k = 0; k < g.K; k++)
                for (int r = 0; r < g.R; r++)
                    for (int s = 0; s < g.S; s++) {
                        const double wv =
                            w[(((size_t)k * g.C + c) * g.R + fidx(g, r, g.R)) * g.S + fidx(g, s, g.S)];
                        int q0, q1;
                        valid_range(g.Q, g.v, g.pw, s * g.dw, g.W, &q0, &q1);
                        for (int p = 0; p < g.P; p++) {
                            const int ih = p * g.u - g.ph + r * g.dh;
                            if (ih < 0 || ih >= g.H) continue;
                            const float *dr = &dy[(((size_t)n * g.K + k) * g.P + p) * g.Q];
                            double *ar = &acc[(size_t)ih * g.W];
                            for (int q = q0; q < q1; q++) ar[q * g.v - g.pw + s * g.dw] += wv * dr[q];
                        }
                    }
            store(dxp + ((size_t)n * g.C + c) * g.H * g.W, acc.data(), acc.size(), alpha, beta);
        }
}

void backward_filter(const Geom &g, const float *xp, const float *dyp, float *dwp, float alpha,
                     float beta) {
    const std::vector<float> x = load(xp, g.nx(), g.round_tf32),
                             dy = load(dyp, g.ny(), g.round_tf32);
    std::vector<double> acc(g.nw());
    for (int k = 0; k < g.K; k++)
        for (int c = 0; c < g.C; c++)
            for (int r = 0; r < g.R; r++)
                for (int s = 0; s < g.S; s++) {
                    int q0, q1;
                    valid_range(g.Q, g.v, g.pw, s * g.dw, g.W, &q0, &q1);
                    double sum = 0.0;
                    for (int n = 0; n < g.N; n++)
                        for (int p = 0; p < g.P; p++) {
                            const int ih = p * g.u - g.ph + r * g.dh;
                            if (ih < 0 || ih >= g.H) continue;
                            const float *xr = &x[(((size_t)n * g.C + c) * g.H + ih) * g.W];
                            const float *dr = &dy[(((size_t)n * g.K + k) * g.P + p) * g.Q];
                            for (int q = q0; q < q1; q++)
                                sum += (double)xr[q * g.v - g.pw + s * g.dw] * dr[q];
                        }
                    acc[(((size_t)k * g.C + c) * g.R + fidx(g, r, g.R)) * g.S + fidx(g, s, g.S)] = sum;
                }
    store(dwp, acc.data(), acc.size(), alpha, beta);
}


/* EMU_CUDNN_DELAY_MS=X: every convolution takes X ms more (busy), so that the backend's
 * autotuner, which compares event times, keeps the handwritten kernels where they are faster
 * than that, and its FP32 safety net (cuda_dnn.c) runs in the emulation too; slow_algo: the
 * EMU_CUDNN_FIND_SLOW_FIRST one, slower still. */
void slow_down(bool slow_algo) {
    static const double ms = [] {
        const char *v = getenv("EMU_CUDNN_DELAY_MS");
        return v ? atof(v) : 0.0;
    }();
    const double total = ms + (slow_algo ? slow_first_ms() : 0.0);
    if (total <= 0) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(total);
    while (std::chrono::steady_clock::now() < until) {
    }
}

/* Checks and queues one convolution direction. in0/in1: the inputs in the order of the call. */
cudnnStatus_t convolve(Dir d, cudnnHandle_t h, const void *alpha, cudnnTensorDescriptor_t x,
                       cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t conv,
                       cudnnTensorDescriptor_t y, int algo, void *ws, size_t ws_bytes,
                       const void *beta, const void *in0, const void *in1, void *out) {
    const char *call = dir_call[d];
    if (!alive(h)) {
        emu_misuse("%s: the handle is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    Geom g;
    cudnnStatus_t st = check_conv(call, x, w, conv, y, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (algo < 0 || algo >= algo_count[d]) {
        emu_misuse("%s: algorithm %d does not exist", call, algo);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const Algo a = algo_info(d, algo, g);
    if (!a.supported) {
        emu_misuse("%s: algorithm %d does not support N=%d C=%d %dx%d -> K=%d %dx%d filter %dx%d "
                   "stride %d,%d dilation %d,%d",
                   call, algo, g.N, g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S, g.u, g.v, g.dh, g.dw);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (ws_bytes < a.bytes) {
        emu_misuse("%s: algorithm %d needs %zu bytes of workspace, got %zu", call, algo, a.bytes,
                   ws_bytes);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const size_t fx = g.nx() * sizeof(float), fw = g.nw() * sizeof(float),
                 fy = g.ny() * sizeof(float);
    Region r[4];
    if (d == FWD)
        r[0] = {in0, fx, false, "x"}, r[1] = {in1, fw, false, "w"}, r[2] = {out, fy, true, "y"};
    else if (d == BWD_DATA)
        r[0] = {in0, fw, false, "w"}, r[1] = {in1, fy, false, "dy"}, r[2] = {out, fx, true, "dx"};
    else
        r[0] = {in0, fx, false, "x"}, r[1] = {in1, fy, false, "dy"}, r[2] = {out, fw, true, "dw"};
    r[3] = {ws, ws_bytes, false, "the workspace"};
    st = check_call(call, alpha, beta, r, 4);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    /* the part of the workspace the algorithm uses is written: it may not hold any data */
    const Region used{ws, a.bytes, true, "the workspace"};
    for (int i = 0; i < 3; i++)
        if (overlap(used, r[i])) {
            emu_misuse("%s: the workspace overlaps %s", call, r[i].name);
            return CUDNN_STATUS_BAD_PARAM;
        }
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const size_t used_bytes = a.bytes;
    const bool nondet = !a.deterministic;
    const bool slow = algo == 0 && slow_first_ms() > 0;
    const std::array<Region, 4> regions{r[0], r[1], r[2], r[3]};
    const cudaError_t qe = emu_enqueue(
        h->stream,
        [d, g, al, be, regions, used_bytes, nondet, call, slow] {
            if (!regions_in_device(call, "when run", regions.data(), 4)) return;
            /* what the algorithm leaves in its workspace: garbage (here NaN) */
            if (used_bytes) memset(const_cast<void *>(regions[3].p), 0xff, used_bytes);
            const float *a0 = (const float *)regions[0].p, *a1 = (const float *)regions[1].p;
            float *o = (float *)const_cast<void *>(regions[2].p);
            if (d == FWD)
                forward(g, a0, a1, o, al, be);
            else if (d == BWD_DATA)
                backward_data(g, a0, a1, o, al, be);
            else
                backward_filter(g, a0, a1, o, al, be);
            if (nondet) jitter(o, regions[2].bytes / sizeof(float));
            slow_down(slow);
        },
        call);
    /* a capture invalidated by a refused call fails every later use of the stream */
    return qe == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

size_t elems(const cudnnTensorStruct *t) { return (size_t)t->n * t->c * t->h * t->w; }

cudnnStatus_t check_tensor(const char *call, cudnnTensorDescriptor_t t) {
    if (!alive(t)) {
        emu_misuse("%s: a tensor descriptor is NULL, destroyed or was never created", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (!t->set) {
        emu_misuse("%s: a tensor descriptor was created but never set", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    return CUDNN_STATUS_SUCCESS;
}

bool valid_type(cudnnDataType_t t) {
    return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_DOUBLE || t == CUDNN_DATA_HALF ||
           t == CUDNN_DATA_INT8 || t == CUDNN_DATA_INT32 || t == CUDNN_DATA_BFLOAT16;
}

/* common part of Set{Tensor,Filter}4dDescriptor */
cudnnStatus_t check_4d(const char *call, cudnnTensorFormat_t format, cudnnDataType_t type, int n,
                       int c, int h, int w) {
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0 || !valid_type(type) ||
        (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC &&
         format != CUDNN_TENSOR_NCHW_VECT_C)) {
        emu_misuse("%s: (%d, %d, %d, %d), format %d, type %d", call, n, c, h, w, (int)format,
                   (int)type);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if ((double)n * c * h * w > 2147483647.0) {
        emu_misuse("%s: (%d, %d, %d, %d) has more than 2^31 - 1 elements", call, n, c, h, w);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    if (format != CUDNN_TENSOR_NCHW || type != CUDNN_DATA_FLOAT) {
        emu_misuse("%s: only NCHW float is modelled (format %d, type %d)", call, (int)format,
                   (int)type);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    return CUDNN_STATUS_SUCCESS;
}

template <typename T> cudnnStatus_t create(T **out) {
    if (!out) return CUDNN_STATUS_BAD_PARAM;
    *out = new T;
    live.insert(*out);
    return CUDNN_STATUS_SUCCESS;
}

template <typename T> cudnnStatus_t destroy(T *p, const char *call) {
    if (!p) return CUDNN_STATUS_SUCCESS;
    if (!live.erase(p)) {
        emu_misuse("%s: not a live object (destroyed twice?)", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    delete p;
    return CUDNN_STATUS_SUCCESS;
}

} /* namespace */

extern "C" {

size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

/* EMU_CUDNN_NO_CNN=1: libcudnn_cnn cannot be loaded */
cudnnStatus_t cudnnOpsVersionCheck(void) { return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnCnnVersionCheck(void) {
    return env_on("EMU_CUDNN_NO_CNN") ? CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED
                                      : CUDNN_STATUS_SUCCESS;
}

const char *cudnnGetErrorString(cudnnStatus_t status) {
    switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH:
        return "CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH";
    case CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED: return "CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED";
    case CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED:
        return "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED";
    case CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED:
        return "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_INVALID_VALUE: return "CUDNN_STATUS_INVALID_VALUE";
    case CUDNN_STATUS_BAD_PARAM_NULL_POINTER: return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    case CUDNN_STATUS_EXECUTION_FAILED_CUDART: return "CUDNN_STATUS_EXECUTION_FAILED_CUDART";
    }
    return "CUDNN_STATUS_UNKNOWN";
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) { return create(handle); }
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) { return destroy(handle, "cudnnDestroy"); }

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
    if (!alive(handle)) return CUDNN_STATUS_BAD_PARAM;
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t *streamId) {
    if (!alive(handle) || !streamId) return CUDNN_STATUS_BAD_PARAM;
    *streamId = handle->stream;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc) {
    return create(tensorDesc);
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc,
                                         cudnnTensorFormat_t format, cudnnDataType_t dataType,
                                         int n, int c, int h, int w) {
    const char *call = "cudnnSetTensor4dDescriptor";
    if (!alive(tensorDesc)) {
        emu_misuse("%s: the descriptor is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const cudnnStatus_t st = check_4d(call, format, dataType, n, c, h, w);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    *tensorDesc = cudnnTensorStruct{true, dataType, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc) {
    return destroy(tensorDesc, "cudnnDestroyTensorDescriptor");
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc) {
    return create(filterDesc);
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc,
                                         cudnnDataType_t dataType, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w) {
    const char *call = "cudnnSetFilter4dDescriptor";
    if (!alive(filterDesc)) {
        emu_misuse("%s: the descriptor is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const cudnnStatus_t st = check_4d(call, format, dataType, k, c, h, w);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    *filterDesc = cudnnFilterStruct{true, dataType, k, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc) {
    return destroy(filterDesc, "cudnnDestroyFilterDescriptor");
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc) {
    return create(convDesc);
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc) {
    return destroy(convDesc, "cudnnDestroyConvolutionDescriptor");
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                          cudnnMathType_t mathType) {
    const char *call = "cudnnSetConvolutionMathType";
    if (!alive(convDesc)) {
        emu_misuse("%s: the descriptor is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
        mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH) {
        emu_misuse("%s: math type %d", call, (int)mathType);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) {
        emu_misuse("%s: CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION (FP16 down-conversion) is not "
                   "modelled",
                   call);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    convDesc->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                          cudnnMathType_t *mathType) {
    if (!alive(convDesc) || !mathType) return CUDNN_STATUS_BAD_PARAM;
    *mathType = convDesc->math;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc, int pad_h,
                                              int pad_w, int u, int v, int dilation_h,
                                              int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType) {
    const char *call = "cudnnSetConvolution2dDescriptor";
    if (!alive(convDesc)) {
        emu_misuse("%s: the descriptor is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 || dilation_w <= 0 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION) || !valid_type(computeType)) {
        emu_misuse("%s: pad %d,%d stride %d,%d dilation %d,%d mode %d type %d", call, pad_h, pad_w,
                   u, v, dilation_h, dilation_w, (int)mode, (int)computeType);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (computeType != CUDNN_DATA_FLOAT) {
        emu_misuse("%s: only a float compute type is modelled", call);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    convDesc->set = true;
    convDesc->pad_h = pad_h;
    convDesc->pad_w = pad_w;
    convDesc->u = u;
    convDesc->v = v;
    convDesc->dil_h = dilation_h;
    convDesc->dil_w = dilation_w;
    convDesc->mode = mode;
    convDesc->compute = computeType;
    return CUDNN_STATUS_SUCCESS; /* the math type is kept */
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t convDesc,
                                                    const cudnnTensorDescriptor_t inputTensorDesc,
                                                    const cudnnFilterDescriptor_t filterDesc,
                                                    int *n, int *c, int *h, int *w) {
    const char *call = "cudnnGetConvolution2dForwardOutputDim";
    const cudnnTensorDescriptor_t x = inputTensorDesc;
    const cudnnFilterDescriptor_t f = filterDesc;
    if (!alive(convDesc) || !alive(x) || !alive(f) || !convDesc->set || !x->set || !f->set ||
        !n || !c || !h || !w) {
        emu_misuse("%s: a descriptor or output pointer is NULL, destroyed or unset", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (x->c != f->c || x->type != f->type) {
        emu_misuse("%s: x has %d channels (type %d), the filter %d (type %d)", call, x->c,
                   (int)x->type, f->c, (int)f->type);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const int eh = (f->h - 1) * convDesc->dil_h + 1, ew = (f->w - 1) * convDesc->dil_w + 1;
    if (x->h + 2 * convDesc->pad_h < eh || x->w + 2 * convDesc->pad_w < ew) {
        emu_misuse("%s: the filter is larger than the padded input", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    *n = x->n;
    *c = f->k;
    *h = (x->h + 2 * convDesc->pad_h - eh) / convDesc->u + 1;
    *w = (x->w + 2 * convDesc->pad_w - ew) / convDesc->v + 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionFwdAlgoPerf_t *perfResults) {
    return find(FWD, "cudnnFindConvolutionForwardAlgorithm", handle, xDesc, wDesc, convDesc, yDesc,
                requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
    const cudnnTensorDescriptor_t dyDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t dxDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
    return find(BWD_DATA, "cudnnFindConvolutionBackwardDataAlgorithm", handle, dxDesc, wDesc,
                convDesc, dyDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
    const cudnnTensorDescriptor_t dyDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t dwDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
    return find(BWD_FILTER, "cudnnFindConvolutionBackwardFilterAlgorithm", handle, xDesc, dwDesc,
                convDesc, dyDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnFilterDescriptor_t filterDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t destDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionFwdAlgoPerf_t *perfResults) {
    return find(FWD, "cudnnGetConvolutionForwardAlgorithm_v7", handle, srcDesc, filterDesc,
                convDesc, destDesc, requestedAlgoCount, returnedAlgoCount, perfResults, true);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t filterDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t gradDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
    return find(BWD_DATA, "cudnnGetConvolutionBackwardDataAlgorithm_v7", handle, gradDesc,
                filterDesc, convDesc, diffDesc, requestedAlgoCount, returnedAlgoCount,
                perfResults, true);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, const int requestedAlgoCount, int *returnedAlgoCount,
    cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
    return find(BWD_FILTER, "cudnnGetConvolutionBackwardFilterAlgorithm_v7", handle, srcDesc,
                gradDesc, convDesc, diffDesc, requestedAlgoCount, returnedAlgoCount, perfResults,
                true);
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc, const cudnnFilterDescriptor_t wDesc,
    const cudnnConvolutionDescriptor_t convDesc, const cudnnTensorDescriptor_t yDesc,
    cudnnConvolutionFwdAlgo_t algo, size_t *sizeInBytes) {
    if (!alive(handle)) return CUDNN_STATUS_BAD_PARAM;
    return workspace_size(FWD, "cudnnGetConvolutionForwardWorkspaceSize", xDesc, wDesc, convDesc,
                          yDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
    const cudnnTensorDescriptor_t dyDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t dxDesc, cudnnConvolutionBwdDataAlgo_t algo,
    size_t *sizeInBytes) {
    if (!alive(handle)) return CUDNN_STATUS_BAD_PARAM;
    return workspace_size(BWD_DATA, "cudnnGetConvolutionBackwardDataWorkspaceSize", dxDesc, wDesc,
                          convDesc, dyDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
    const cudnnTensorDescriptor_t dyDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, cudnnConvolutionBwdFilterAlgo_t algo,
    size_t *sizeInBytes) {
    if (!alive(handle)) return CUDNN_STATUS_BAD_PARAM;
    return workspace_size(BWD_FILTER, "cudnnGetConvolutionBackwardFilterWorkspaceSize", xDesc,
                          gradDesc, convDesc, dyDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha,
                                      const cudnnTensorDescriptor_t xDesc, const void *x,
                                      const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc,
                                      cudnnConvolutionFwdAlgo_t algo, void *workSpace,
                                      size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y) {
    return convolve(FWD, handle, alpha, xDesc, wDesc, convDesc, yDesc, (int)algo, workSpace,
                    workSpaceSizeInBytes, beta, x, w, y);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha,
                                           const cudnnFilterDescriptor_t wDesc, const void *w,
                                           const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workSpace,
                                           size_t workSpaceSizeInBytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxDesc, void *dx) {
    return convolve(BWD_DATA, handle, alpha, dxDesc, wDesc, convDesc, dyDesc, (int)algo, workSpace,
                    workSpaceSizeInBytes, beta, w, dy, dx);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void *alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void *x,
                                             const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo,
                                             void *workSpace, size_t workSpaceSizeInBytes,
                                             const void *beta,
                                             const cudnnFilterDescriptor_t dwDesc, void *dw) {
    return convolve(BWD_FILTER, handle, alpha, xDesc, dwDesc, convDesc, dyDesc, (int)algo,
                    workSpace, workSpaceSizeInBytes, beta, x, dy, dw);
}

cudnnStatus_t cudnnConvolutionBackwardBias(cudnnHandle_t handle, const void *alpha,
                                           const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const void *beta, const cudnnTensorDescriptor_t dbDesc,
                                           void *db) {
    const char *call = "cudnnConvolutionBackwardBias";
    if (!alive(handle)) {
        emu_misuse("%s: the handle is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    cudnnStatus_t st = check_tensor(call, dyDesc);
    if (st == CUDNN_STATUS_SUCCESS) st = check_tensor(call, dbDesc);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const cudnnTensorStruct t = *dyDesc, b = *dbDesc;
    if (b.n != 1 || b.h != 1 || b.w != 1 || b.c != t.c || b.type != t.type) {
        emu_misuse("%s: db is (%d, %d, %d, %d), dy (%d, %d, %d, %d): db must be (1, %d, 1, 1) "
                   "of dy's type",
                   call, b.n, b.c, b.h, b.w, t.n, t.c, t.h, t.w, t.c);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const Region r[2] = {{dy, elems(&t) * sizeof(float), false, "dy"},
                         {db, elems(&b) * sizeof(float), true, "db"}};
    st = check_call(call, alpha, beta, r, 2);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const cudaError_t qe = emu_enqueue(
        handle->stream,
        [t, al, be, dy, db, call] {
            const Region rr[2] = {{dy, elems(&t) * sizeof(float), false, "dy"},
                                  {db, (size_t)t.c * sizeof(float), true, "db"}};
            if (!regions_in_device(call, "when run", rr, 2)) return;
            const float *g = (const float *)dy;
            std::vector<double> acc((size_t)t.c, 0.0);
            const size_t hw = (size_t)t.h * t.w;
            for (int n = 0; n < t.n; n++)
                for (int c = 0; c < t.c; c++) {
                    const float *p = g + ((size_t)n * t.c + c) * hw;
                    double s = 0.0;
                    for (size_t i = 0; i < hw; i++) s += p[i];
                    acc[(size_t)c] += s;
                }
            store((float *)db, acc.data(), acc.size(), al, be);
        },
        call);
    /* a capture invalidated by a refused call fails every later use of the stream */
    return qe == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

cudnnStatus_t cudnnAddTensor(cudnnHandle_t handle, const void *alpha,
                             const cudnnTensorDescriptor_t aDesc, const void *A, const void *beta,
                             const cudnnTensorDescriptor_t cDesc, void *C) {
    const char *call = "cudnnAddTensor";
    if (!alive(handle)) {
        emu_misuse("%s: the handle is NULL or destroyed", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    cudnnStatus_t st = check_tensor(call, aDesc);
    if (st == CUDNN_STATUS_SUCCESS) st = check_tensor(call, cDesc);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const cudnnTensorStruct a = *aDesc, c = *cDesc;
    /* documented: each dimension of A matches C's or is 1 (then broadcast) */
    const int ad[4] = {a.n, a.c, a.h, a.w}, cd[4] = {c.n, c.c, c.h, c.w};
    for (int i = 0; i < 4; i++)
        if (ad[i] != cd[i] && ad[i] != 1) {
            emu_misuse("%s: A (%d, %d, %d, %d) does not broadcast to C (%d, %d, %d, %d)", call,
                       a.n, a.c, a.h, a.w, c.n, c.c, c.h, c.w);
            return CUDNN_STATUS_BAD_PARAM;
        }
    if (a.type != c.type) {
        emu_misuse("%s: A and C have different data types", call);
        return CUDNN_STATUS_BAD_PARAM;
    }
    const Region r[2] = {{A, elems(&a) * sizeof(float), false, "A"},
                         {C, elems(&c) * sizeof(float), true, "C"}};
    st = check_call(call, alpha, beta, r, 2);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const cudaError_t qe = emu_enqueue(
        handle->stream,
        [a, c, al, be, A, C, call] {
            const Region rr[2] = {{A, elems(&a) * sizeof(float), false, "A"},
                                  {C, elems(&c) * sizeof(float), true, "C"}};
            if (!regions_in_device(call, "when run", rr, 2)) return;
            const float *pa = (const float *)A;
            float *pc = (float *)C;
            for (int n = 0; n < c.n; n++)
                for (int ch = 0; ch < c.c; ch++)
                    for (int h = 0; h < c.h; h++)
                        for (int w = 0; w < c.w; w++) {
                            const size_t ia =
                                (((size_t)(a.n == 1 ? 0 : n) * a.c + (a.c == 1 ? 0 : ch)) * a.h +
                                 (a.h == 1 ? 0 : h)) * a.w + (a.w == 1 ? 0 : w);
                            float &o = pc[(((size_t)n * c.c + ch) * c.h + h) * c.w + w];
                            double v = (double)al * pa[ia];
                            if (be != 0.0f) v += (double)be * o;
                            o = (float)v;
                        }
        },
        call);
    /* a capture invalidated by a refused call fails every later use of the stream */
    return qe == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

/* for tests: the algorithm EMU_CUDNN_FIND_SLOW_FIRST makes cudnnFind rank first and slows down,
 * in direction dir (0 forward, 1 backward-data, 2 backward-filter), or -1 when it is not set */
int emu_cudnn_slow_algo(int dir) {
    return dir >= 0 && dir < 3 && slow_first_ms() > 0 ? 0 : -1;
}

} /* extern "C" */
