/* The CUDA backend's library-call ops: convolutions by cuDNN (legacy API), dense layers and the
 * attention products by cuBLAS (strided batched GEMM), with the attention softmax from
 * cuda_kernels.cu in between. (A dense forward of up to DD_CUDA_DENSE_SMALL_CIN inputs, the
 * UNets' time MLP and embedding projections, is one kernel of cuda_kernels.cu instead.)
 *
 * Convolutions: one cache entry per dd_conv_shape holds the cuDNN descriptors and, for each math
 * mode (TF32 allowed or not), the algorithm found by cudnnFind for forward, backward-data and
 * backward-filter, and per direction whether cuDNN or one of the handwritten kernels of
 * cuda_conv.cu runs. Every algorithm chosen for a shape needs at most conv_cap(shape) bytes of
 * workspace (the own backward-filter kernel keeps its partial sums within it too), and
 * conv2d_workspace reports exactly that cap: the answer depends on the shape alone, so a graph
 * planned in one mode stays safe when the switch flips and the other mode's algorithms are found
 * later. conv2d_workspace also runs the search, so calling it for every shape (the graph's
 * memory plan does) leaves nothing to choose or allocate during a CUDA graph capture. Where
 * cudnnFind fails (it allocates buffers of its own: no room on the GPU, say), cuDNN's heuristic
 * ranking stands in, with a warning.
 *
 * Which implementation: env DIFFUSION_CONV = cudnn | own | own-tf32 | auto (default auto). auto
 * times, for each new shape, cuDNN's choice and up to three more of cudnnFind's usable results
 * (cudnnFind times each algorithm once: too few to rank close ones) and every own tile
 * configuration per direction (on scratch buffers, GPU time only) and keeps the fastest cuDNN
 * algorithm, or the fastest own kernel where it beats that; an own kernel is only kept after it
 * matched an FP32 cuDNN reference on that shape (max|own - ref| / max|ref| <= 1e-5 with TF32 off;
 * with TF32 on, 1e-3 for the FP32 configurations and 4e-3 for the tensor-core ones, which round
 * their operands to TF32: unit roundoff 2^-11); a mismatch is named in one warning line and the
 * next fastest configuration is tried, down to cuDNN. The tensor-core configurations are
 * candidates only with TF32 on. own uses the own FP32 kernels wherever they fit, untimed and
 * unchecked (the tests' mode); own-tf32 the same with the tensor-core ones where TF32 is on.
 * DIFFUSION_CONV_LOG=1 prints each shape's timings and choices to stderr (=2 also every
 * candidate configuration's time);
 * DIFFUSION_CONV_TIMING_REPS (default 8) is how many timed calls each candidate gets. A timing
 * that fails falls back to cuDNN for the shape, unless the GPU faulted (a sticky error that
 * leaves the CUDA context unusable): then the run stops, naming the shape and configuration.
 *
 * With TF32 off the search keeps to the GEMM-style algorithms (no FFT or Winograd), whose FP32
 * results stay within ~1e-6 of a plain sum: that mode is the one for accuracy.
 *
 * cuBLAS is column-major; every row-major product below is written as the column-major product
 * of the transposed views (a row-major (r, c) buffer is a column-major (c, r) matrix). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cudnn.h>

#include "cuda_internal.h"

static cudnnHandle_t dnn;
static cublasHandle_t blas;
static void *blas_ws; /* cuBLAS workspace, given explicitly so capture never allocates */
#define BLAS_WS_BYTES ((size_t)32 << 20) /* NVIDIA's recommended size for Hopper */

static int dnn_fail(const char *file, int line, const char *call, cudnnStatus_t st) {
    return dd_error("%s:%d: %s: %s", dd_cuda_base(file), line, call, cudnnGetErrorString(st));
}

static int blas_fail(const char *file, int line, const char *call, cublasStatus_t st) {
    return dd_error("%s:%d: %s: %s", dd_cuda_base(file), line, call, cublasGetStatusString(st));
}

#define DNN_CHECK(call)                                                                           \
    do {                                                                                          \
        cudnnStatus_t dd_st_ = (call);                                                            \
        if (dd_st_ != CUDNN_STATUS_SUCCESS) return dnn_fail(__FILE__, __LINE__, #call, dd_st_);   \
    } while (0)

#define BLAS_CHECK(call)                                                                          \
    do {                                                                                          \
        cublasStatus_t dd_st_ = (call);                                                           \
        if (dd_st_ != CUBLAS_STATUS_SUCCESS) return blas_fail(__FILE__, __LINE__, #call, dd_st_); \
    } while (0)

int dd_cuda_dnn_init(void) {
#if CUDNN_MAJOR >= 9
    /* cuDNN 9 loads its sub-libraries at their first call: load the two this backend uses now,
     * so that a missing or mismatched libcudnn_ops / libcudnn_cnn is a clear error at start and
     * not one in the middle of planning the first convolution */
    const size_t v = cudnnGetVersion();
    if (v / 10000 != CUDNN_MAJOR)
        return dd_error("the cuDNN library is version %zu.%zu.%zu, this program was built against "
                        "cuDNN %d's headers",
                        v / 10000, v / 100 % 100, v % 100, CUDNN_MAJOR);
    cudnnStatus_t st = cudnnOpsVersionCheck();
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnCnnVersionCheck();
    if (st != CUDNN_STATUS_SUCCESS)
        return dd_error("cuDNN %zu.%zu.%zu: its sub-libraries libcudnn_ops and libcudnn_cnn are "
                        "missing, cannot be loaded or do not match it (%s)",
                        v / 10000, v / 100 % 100, v % 100, cudnnGetErrorString(st));
#endif
    DNN_CHECK(cudnnCreate(&dnn));
    DNN_CHECK(cudnnSetStream(dnn, dd_cuda_stream));
    BLAS_CHECK(cublasCreate(&blas));
    BLAS_CHECK(cublasSetStream(blas, dd_cuda_stream));
    DD_CUDA_CHECK(cudaMalloc(&blas_ws, BLAS_WS_BYTES));
    BLAS_CHECK(cublasSetWorkspace(blas, blas_ws, BLAS_WS_BYTES));
    BLAS_CHECK(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST));
    return dd_cuda_dnn_apply_math();
}

int dd_cuda_dnn_apply_math(void) {
    BLAS_CHECK(cublasSetMathMode(blas, dd_cuda_tf32_on ? CUBLAS_TF32_TENSOR_OP_MATH
                                                       : CUBLAS_DEFAULT_MATH));
    return 0;
}

/* ---------------------------------------------------------------- convolution cache */

typedef struct {
    int algo; /* cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t */
    cudnnMathType_t math;
    size_t bytes;
    int deterministic;
} conv_choice;

/* cudnnFind's choice and the next usable results (its order) that DIFFUSION_CONV=auto times
 * again, 8 calls each: cudnnFind times each algorithm once, and on an H200 (session 17) it
 * ranked winograd-nonfused (77.5 us when timed again) over implicit-precomp-gemm (41.7 us in
 * another run) for the 64 -> 192 7x7 forward at batch 256: about 0.65 ms of a DDIM-20 loop */
#define CUDNN_ALTS 4

#define USE_CUDNN (-1) /* conv_entry.use: cuDNN, else an own kernel configuration */

typedef struct {
    dd_conv_shape s;
    cudnnTensorDescriptor_t x, y, b; /* x (N, Cin, H, W), y (N, Cout, Ho, Wo), b (1, Cout, 1, 1) */
    cudnnFilterDescriptor_t w;        /* (Cout, Cin, K, K) */
    cudnnConvolutionDescriptor_t conv;
    size_t cap;         /* workspace bound for every algorithm of this shape */
    int found[2];       /* [tf32 mode]: use[mode] is set (and the cuDNN choices it needs) */
    int cudnn_found[2]; /* the cuDNN algorithms below were searched */
    conv_choice fwd[2], bwd_data[2], bwd_filter[2];
    conv_choice alt[2][DD_CONV_DIRS][CUDNN_ALTS]; /* the choice first, then cudnnFind's order */
    int nalt[2][DD_CONV_DIRS];
    int use[2][DD_CONV_DIRS]; /* per mode and direction (DD_CONV_FWD, ...) */
} conv_entry;

static conv_entry *conv_cache; /* grows at plan time only */
static int conv_count, conv_capacity;

/* DIFFUSION_CONV (read at the first convolution) */
enum { POLICY_UNSET, POLICY_AUTO, POLICY_CUDNN, POLICY_OWN, POLICY_OWN_TF32 };
static int conv_policy = POLICY_UNSET;
static int conv_log; /* DIFFUSION_CONV_LOG: 0 (unset), 1 choices, 2 also every timing */
static int timing_reps = 8; /* DIFFUSION_CONV_TIMING_REPS: timed calls per candidate */
static int conv_forced[DD_CONV_DIRS] = {-1, -1, -1};     /* dd_cuda_conv_force_own */
static const char *const dir_name[DD_CONV_DIRS] = {"forward", "backward-data", "backward-filter"};

static int read_policy(void) {
    if (conv_policy != POLICY_UNSET) return 0;
    const char *l = getenv("DIFFUSION_CONV_LOG");
    conv_log = !l || !*l || !strcmp(l, "0") ? 0 : !strcmp(l, "2") ? 2 : 1;
    const char *r = getenv("DIFFUSION_CONV_TIMING_REPS");
    if (r && *r) {
        char *end;
        const long n = strtol(r, &end, 10);
        if (*end || n < 1 || n > 1000)
            return dd_error("DIFFUSION_CONV_TIMING_REPS=%s: a count from 1 to 1000", r);
        timing_reps = (int)n;
    }
    const char *v = getenv("DIFFUSION_CONV");
    if (!v || !*v || !strcmp(v, "auto"))
        conv_policy = POLICY_AUTO;
    else if (!strcmp(v, "cudnn"))
        conv_policy = POLICY_CUDNN;
    else if (!strcmp(v, "own"))
        conv_policy = POLICY_OWN;
    else if (!strcmp(v, "own-tf32"))
        conv_policy = POLICY_OWN_TF32;
    else
        return dd_error("DIFFUSION_CONV=%s: use cudnn, own, own-tf32 or auto", v);
    return 0;
}

int dd_cuda_conv_force_own(int fwd_cfg, int bwd_data_cfg, int bwd_filter_cfg) {
    const int cfg[DD_CONV_DIRS] = {fwd_cfg, bwd_data_cfg, bwd_filter_cfg};
    for (int d = 0; d < DD_CONV_DIRS; d++)
        if (cfg[d] < -1 || cfg[d] >= dd_conv_own_configs(d))
            return dd_error("dd_cuda_conv_force_own: %s has no configuration %d", dir_name[d],
                            cfg[d]);
    if (dd_cuda_capturing()) return dd_error("dd_cuda_conv_force_own: not during a capture");
    (void)read_policy(); /* for DIFFUSION_CONV_LOG; the policy is overridden below */
    dd_error_clear();
    conv_policy = POLICY_OWN;
    for (int d = 0; d < DD_CONV_DIRS; d++) conv_forced[d] = cfg[d];
    for (int i = 0; i < conv_count; i++) conv_cache[i].found[0] = conv_cache[i].found[1] = 0;
    return 0;
}

int dd_cuda_conv_set_policy(const char *policy) {
    int p;
    if (!strcmp(policy, "auto"))
        p = POLICY_AUTO;
    else if (!strcmp(policy, "cudnn"))
        p = POLICY_CUDNN;
    else if (!strcmp(policy, "own"))
        p = POLICY_OWN;
    else if (!strcmp(policy, "own-tf32"))
        p = POLICY_OWN_TF32;
    else
        return dd_error("dd_cuda_conv_set_policy(%s): use cudnn, own, own-tf32 or auto", policy);
    if (dd_cuda_capturing()) return dd_error("dd_cuda_conv_set_policy: not during a capture");
    (void)read_policy(); /* for DIFFUSION_CONV_LOG; the policy is overridden below */
    dd_error_clear();
    conv_policy = p;
    for (int d = 0; d < DD_CONV_DIRS; d++) conv_forced[d] = -1;
    for (int i = 0; i < conv_count; i++) conv_cache[i].found[0] = conv_cache[i].found[1] = 0;
    return 0;
}

/* The shape's workspace bound: twice its im2col buffer (what the GEMM-style algorithms need, with
 * room for the faster ones), at least 4 MiB, at most 64 MiB. One workspace serves every op of a
 * graph, so this is also about the most a graph's workspace will be. The own backward-filter
 * kernel keeps its split partials within it too. */
static size_t conv_cap(const dd_conv_shape *s) {
    size_t col = (size_t)s->N * s->Cin * s->K * s->K * s->Ho * s->Wo * sizeof(float);
    size_t cap = 2 * col;
    const size_t lo = (size_t)4 << 20, hi = (size_t)64 << 20;
    return cap < lo ? lo : cap > hi ? hi : cap;
}

static int same_shape(const dd_conv_shape *a, const dd_conv_shape *b) {
    return a->N == b->N && a->Cin == b->Cin && a->H == b->H && a->W == b->W &&
           a->Cout == b->Cout && a->K == b->K && a->stride == b->stride && a->pad == b->pad &&
           a->Ho == b->Ho && a->Wo == b->Wo;
}

static void shape_text(char *buf, size_t n, const dd_conv_shape *s) {
    snprintf(buf, n, "N=%d %d->%d %dx%d k%d s%d p%d", s->N, s->Cin, s->Cout, s->H, s->W, s->K,
             s->stride, s->pad);
}

/* Destroys the entry's descriptors (those created so far: the others are NULL). */
static void conv_undescribe(conv_entry *e) {
    if (e->x) (void)cudnnDestroyTensorDescriptor(e->x);
    if (e->y) (void)cudnnDestroyTensorDescriptor(e->y);
    if (e->b) (void)cudnnDestroyTensorDescriptor(e->b);
    if (e->w) (void)cudnnDestroyFilterDescriptor(e->w);
    if (e->conv) (void)cudnnDestroyConvolutionDescriptor(e->conv);
    e->x = e->y = e->b = NULL;
    e->w = NULL;
    e->conv = NULL;
}

/* Creates and sets the entry's descriptors (e zeroed but for e->s); on failure the caller
 * destroys what was created (conv_undescribe). */
static int conv_describe(conv_entry *e) {
    const dd_conv_shape *s = &e->s;
    DNN_CHECK(cudnnCreateTensorDescriptor(&e->x));
    DNN_CHECK(cudnnCreateTensorDescriptor(&e->y));
    DNN_CHECK(cudnnCreateTensorDescriptor(&e->b));
    DNN_CHECK(cudnnCreateFilterDescriptor(&e->w));
    DNN_CHECK(cudnnCreateConvolutionDescriptor(&e->conv));
    DNN_CHECK(cudnnSetTensor4dDescriptor(e->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s->N, s->Cin,
                                         s->H, s->W));
    DNN_CHECK(cudnnSetTensor4dDescriptor(e->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s->N, s->Cout,
                                         s->Ho, s->Wo));
    DNN_CHECK(cudnnSetTensor4dDescriptor(e->b, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, s->Cout, 1,
                                         1));
    DNN_CHECK(cudnnSetFilter4dDescriptor(e->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s->Cout, s->Cin,
                                         s->K, s->K));
    DNN_CHECK(cudnnSetConvolution2dDescriptor(e->conv, s->pad, s->pad, s->stride, s->stride, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    int n, c, h, w;
    DNN_CHECK(cudnnGetConvolution2dForwardOutputDim(e->conv, e->x, e->w, &n, &c, &h, &w));
    if (n != s->N || c != s->Cout || h != s->Ho || w != s->Wo)
        return dd_error("conv2d: shape says output (%d, %d, %d, %d), cuDNN computes "
                        "(%d, %d, %d, %d)",
                        s->N, s->Cout, s->Ho, s->Wo, n, c, h, w);
    return 0;
}

/* GEMM-style algorithms: the only ones tried with TF32 off (see the top of the file) */
static int fwd_plain(int a) {
    return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}
static int bwd_data_plain(int a) {
    return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
}
static int bwd_filter_plain(int a) {
    return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
           a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

/* One of cudnnFind's results, whichever direction it came from. */
typedef struct {
    int algo;
    cudnnStatus_t status;
    size_t bytes;
    cudnnMathType_t math;
    float ms;
    int deterministic;
} conv_candidate;

/* From cudnnFind's results (fastest first): the first that ran, fits the cap and, in strict
 * mode, is GEMM-style (failing that, the first that ran and fits); then, if that one is not
 * deterministic, a deterministic one within 10% (+2 us) of its time instead: reproducible
 * gradients (and bit-identical graph replays) nearly for free. In strict mode (TF32 off) only
 * results with FMA math count: the math type is applied to the descriptor before every call,
 * and a result of another math type (whose workspace size is that variant's) would bring
 * tensor cores back. With the descriptor at FMA, cuDNN reports FMA (PyTorch asserts as much).
 * alts gets the choice and then up to CUDNN_ALTS - 1 more results usable in the same pass, in
 * cudnnFind's order (*nalt of them), for the autotuner to time again. */
static int pick(conv_choice *out, conv_choice *alts, int *nalt, const conv_candidate *c, int n,
                size_t cap, int strict, int (*plain)(int), const char *what,
                const dd_conv_shape *s) {
    for (int pass = strict ? 0 : 1; pass < 2; pass++) {
#define USABLE(i)                                                                                 \
    (c[i].status == CUDNN_STATUS_SUCCESS && c[i].bytes <= cap &&                                  \
     (!strict || c[i].math == CUDNN_FMA_MATH) && (pass || plain(c[i].algo)))
        int best = -1;
        for (int i = 0; i < n && best < 0; i++)
            if (USABLE(i)) best = i;
        if (best < 0) continue;
        int chosen = best;
        for (int j = best + 1; j < n && !c[best].deterministic; j++) {
            if (USABLE(j) && c[j].deterministic && c[j].ms <= c[best].ms * 1.1f + 0.002f) {
                chosen = j;
                break;
            }
        }
        out->algo = c[chosen].algo;
        out->math = c[chosen].math;
        out->bytes = c[chosen].bytes;
        out->deterministic = c[chosen].deterministic;
        alts[0] = *out;
        *nalt = 1;
        for (int i = 0; i < n && *nalt < CUDNN_ALTS; i++)
            if (i != chosen && USABLE(i))
                alts[(*nalt)++] = (conv_choice){c[i].algo, c[i].math, c[i].bytes,
                                                c[i].deterministic};
        return 0;
    }
#undef USABLE
    return dd_error("conv2d %s: cuDNN found no algorithm%s within %zu bytes of workspace for "
                    "N=%d Cin=%d %dx%d -> Cout=%d K=%d stride=%d pad=%d",
                    what, strict ? " with FMA math (TF32 off)" : "", cap, s->N, s->Cin, s->H,
                    s->W, s->Cout, s->K, s->stride, s->pad);
}

#define MAX_ALGOS 16

/* The perf structs of the three directions differ only in type. */
#define TO_CANDIDATES(perf, n, c)                                                                 \
    for (int i_ = 0; i_ < (n); i_++)                                                              \
        (c)[i_] = (conv_candidate){(int)(perf)[i_].algo, (perf)[i_].status, (perf)[i_].memory,    \
                                   (perf)[i_].mathType, (perf)[i_].time,                          \
                                   (perf)[i_].determinism == CUDNN_DETERMINISTIC}

/* One direction's search into perf (n results): cudnnFind, which times every algorithm on
 * buffers and workspaces it allocates itself; where that fails (no room for them on the GPU, say),
 * cuDNN's heuristic ranking (cudnnGet*_v7: no allocation, no timing) instead, with a warning
 * (one per shape). */
#define SEARCH(find, get, perf, ...)                                                              \
    do {                                                                                          \
        cudnnStatus_t st_ = find(dnn, __VA_ARGS__, MAX_ALGOS, &n, perf);                          \
        if (st_ != CUDNN_STATUS_SUCCESS) {                                                        \
            (void)cudaGetLastError(); /* whatever it left behind must not fail the next launch */ \
            if (!warned++) {                                                                      \
                char shape_[96];                                                                  \
                shape_text(shape_, sizeof shape_, &e->s);                                         \
                fprintf(stderr,                                                                   \
                        "diffusion: warning: conv %s: %s failed (%s); cuDNN's heuristic choices " \
                        "are used there\n",                                                       \
                        shape_, #find, cudnnGetErrorString(st_));                                 \
            }                                                                                     \
            DNN_CHECK(get(dnn, __VA_ARGS__, MAX_ALGOS, &n, perf));                                \
        }                                                                                         \
    } while (0)

static int conv_find(conv_entry *e, int mode) {
    int n, warned = 0;
    conv_candidate c[MAX_ALGOS];
    const int strict = !mode;
    /* FP32 data: DEFAULT math permits TF32 tensor cores on sm_80+, FMA forbids them (the
     * settings PyTorch uses for allow_tf32 on and off) */
    DNN_CHECK(cudnnSetConvolutionMathType(e->conv, mode ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));

    cudnnConvolutionFwdAlgoPerf_t pf[MAX_ALGOS];
    SEARCH(cudnnFindConvolutionForwardAlgorithm, cudnnGetConvolutionForwardAlgorithm_v7, pf, e->x,
           e->w, e->conv, e->y);
    TO_CANDIDATES(pf, n, c);
    DD_TRY(pick(&e->fwd[mode], e->alt[mode][DD_CONV_FWD], &e->nalt[mode][DD_CONV_FWD], c, n,
                e->cap, strict, fwd_plain, "forward", &e->s));

    cudnnConvolutionBwdDataAlgoPerf_t pd[MAX_ALGOS];
    SEARCH(cudnnFindConvolutionBackwardDataAlgorithm, cudnnGetConvolutionBackwardDataAlgorithm_v7,
           pd, e->w, e->y, e->conv, e->x);
    TO_CANDIDATES(pd, n, c);
    DD_TRY(pick(&e->bwd_data[mode], e->alt[mode][DD_CONV_BWD_DATA],
                &e->nalt[mode][DD_CONV_BWD_DATA], c, n, e->cap, strict, bwd_data_plain,
                "backward-data", &e->s));

    cudnnConvolutionBwdFilterAlgoPerf_t pw[MAX_ALGOS];
    SEARCH(cudnnFindConvolutionBackwardFilterAlgorithm,
           cudnnGetConvolutionBackwardFilterAlgorithm_v7, pw, e->x, e->y, e->conv, e->w);
    TO_CANDIDATES(pw, n, c);
    DD_TRY(pick(&e->bwd_filter[mode], e->alt[mode][DD_CONV_BWD_FILTER],
                &e->nalt[mode][DD_CONV_BWD_FILTER], c, n, e->cap, strict, bwd_filter_plain,
                "backward-filter", &e->s));
    e->cudnn_found[mode] = 1;
    return 0;
}
#undef SEARCH

/* The mode's cuDNN choice for direction d */
static conv_choice *dir_choice_mut(conv_entry *e, int mode, int d) {
    return d == DD_CONV_FWD ? &e->fwd[mode] : d == DD_CONV_BWD_DATA ? &e->bwd_data[mode]
                                                                    : &e->bwd_filter[mode];
}
static const conv_choice *dir_choice(const conv_entry *e, int mode, int d) {
    return dir_choice_mut((conv_entry *)e, mode, d);
}

/* "winograd-nonfused/default": the algorithm and math type of a cuDNN choice, for the log */
static const char *choice_text(char *buf, size_t n, int d, const conv_choice *c) {
    static const char *const fwd[] = {"implicit-gemm", "implicit-precomp-gemm", "gemm", "direct",
                                      "fft", "fft-tiling", "winograd", "winograd-nonfused"};
    static const char *const bwd_data[] = {"algo0", "algo1", "fft", "fft-tiling", "winograd",
                                           "winograd-nonfused"};
    static const char *const bwd_filter[] = {"algo0", "algo1", "fft", "algo3", "winograd",
                                             "winograd-nonfused", "fft-tiling"};
    const char *const *names = d == DD_CONV_FWD ? fwd : d == DD_CONV_BWD_DATA ? bwd_data : bwd_filter;
    const int count = d == DD_CONV_FWD ? 8 : d == DD_CONV_BWD_DATA ? 6 : 7;
    const char *math = c->math == CUDNN_FMA_MATH         ? "fma"
                       : c->math == CUDNN_TENSOR_OP_MATH ? "tensor-op"
                       : c->math == CUDNN_DEFAULT_MATH   ? "default"
                                                         : "other";
    if (c->algo >= 0 && c->algo < count)
        snprintf(buf, n, "%s/%s", names[c->algo], math);
    else
        snprintf(buf, n, "algo%d/%s", c->algo, math);
    return buf;
}

/* ---------------------------------------------------------------- running one direction */

static const float ONE = 1.0f, ZERO = 0.0f;

static int no_workspace(const char *what, size_t bytes) {
    return dd_error("conv2d %s: the algorithm needs %zu bytes of workspace, got none (allocate "
                    "conv2d_workspace(shape) bytes)",
                    what, bytes);
}

/* cuDNN with algorithm c; beta 1 adds into the gradients (the backend's contract), beta 0 (the
 * reference runs of the autotuner) overwrites them. */
static int cudnn_forward(conv_entry *e, const conv_choice *c, float *y, const float *x,
                         const float *w, const float *b, void *ws) {
    if (c->bytes && !ws) return no_workspace("forward", c->bytes);
    DNN_CHECK(cudnnSetConvolutionMathType(e->conv, c->math));
    DNN_CHECK(cudnnConvolutionForward(dnn, &ONE, e->x, x, e->w, w, e->conv,
                                      (cudnnConvolutionFwdAlgo_t)c->algo, ws, c->bytes, &ZERO,
                                      e->y, y));
    if (b) DNN_CHECK(cudnnAddTensor(dnn, &ONE, e->b, b, &ONE, e->y, y));
    return 0;
}

static int cudnn_backward_data(conv_entry *e, const conv_choice *c, const float *beta, float *dx,
                               const float *dy, const float *w, void *ws) {
    if (c->bytes && !ws) return no_workspace("backward-data", c->bytes);
    DNN_CHECK(cudnnSetConvolutionMathType(e->conv, c->math));
    DNN_CHECK(cudnnConvolutionBackwardData(dnn, &ONE, e->w, w, e->y, dy, e->conv,
                                           (cudnnConvolutionBwdDataAlgo_t)c->algo, ws, c->bytes,
                                           beta, e->x, dx));
    return 0;
}

static int cudnn_backward_filter(conv_entry *e, const conv_choice *c, const float *beta,
                                 float *dw, float *db, const float *dy, const float *x, void *ws) {
    if (dw) {
        if (c->bytes && !ws) return no_workspace("backward-filter", c->bytes);
        DNN_CHECK(cudnnSetConvolutionMathType(e->conv, c->math));
        DNN_CHECK(cudnnConvolutionBackwardFilter(dnn, &ONE, e->x, x, e->y, dy, e->conv,
                                                 (cudnnConvolutionBwdFilterAlgo_t)c->algo, ws,
                                                 c->bytes, beta, e->w, dw));
    }
    if (db) DNN_CHECK(cudnnConvolutionBackwardBias(dnn, &ONE, e->y, dy, beta, e->b, db));
    return 0;
}

/* ---------------------------------------------------------------- choosing per shape */

/* The autotuner's buffers: random inputs, two sets of outputs (a: cuDNN, b: own), workspace. */
typedef struct {
    void *base;
    float *x, *w, *b, *dy, *ya, *yb, *dxa, *dxb, *dwa, *dwb, *dba, *dbb;
    float *ws, *diff; /* workspace (ws_bytes), 8 bytes for dd_conv_maxdiff */
    size_t nx, ny, nw, ws_bytes;
} conv_scratch;

static int scratch_alloc(conv_scratch *sc, const dd_conv_shape *s, size_t ws_bytes) {
    memset(sc, 0, sizeof *sc);
    sc->nx = (size_t)s->N * s->Cin * s->H * s->W;
    sc->ny = (size_t)s->N * s->Cout * s->Ho * s->Wo;
    sc->nw = (size_t)s->Cout * s->Cin * s->K * s->K;
    sc->ws_bytes = ws_bytes;
    const size_t nb = (size_t)s->Cout;
    /* floats per part, each part rounded up to 256 bytes */
    const size_t n[] = {sc->nx, sc->nw, nb,     sc->ny, sc->ny, sc->ny, sc->nx,
                        sc->nx, sc->nw, sc->nw, nb,     nb,     ws_bytes / sizeof(float) + 1, 2};
    float **dst[] = {&sc->x,   &sc->w,   &sc->b,   &sc->dy,  &sc->ya,
                     &sc->yb,  &sc->dxa, &sc->dxb, &sc->dwa, &sc->dwb,
                     &sc->dba, &sc->dbb, &sc->ws,  &sc->diff};
    const size_t parts = sizeof n / sizeof n[0];
    size_t off[sizeof n / sizeof n[0]], total = 0;
    for (size_t i = 0; i < parts; i++) {
        off[i] = total;
        total += (n[i] * sizeof(float) + 255) / 256 * 256;
    }
    cudaError_t err = cudaMalloc(&sc->base, total);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        sc->base = NULL;
        return dd_error("no GPU memory for the timing buffers (%.1f MiB): %s",
                        (double)total / 1048576.0, cudaGetErrorString(err));
    }
    for (size_t i = 0; i < parts; i++) *dst[i] = (float *)((char *)sc->base + off[i]);
    /* uniform [-1, 1) inputs; the outputs start at zero */
    DD_CUDA_CHECK(cudaMemsetAsync(sc->base, 0, total, dd_cuda_stream));
    DD_TRY(dd_conv_fill(sc->x, sc->nx, 1u));
    DD_TRY(dd_conv_fill(sc->w, sc->nw, 2u));
    DD_TRY(dd_conv_fill(sc->b, nb, 3u));
    DD_TRY(dd_conv_fill(sc->dy, sc->ny, 4u));
    return 0;
}

/* Runs direction d with impl (USE_CUDNN: the mode's cuDNN choice, else an own configuration)
 * into output set b (own) or a (cuDNN), adding into the gradients as the backend does. */
static int run_dir(conv_entry *e, int mode, int d, int impl, const conv_scratch *sc) {
    const dd_conv_shape *s = &e->s;
    const int own = impl != USE_CUDNN;
    switch (d) {
    case DD_CONV_FWD:
        return own ? dd_conv_own_forward(impl, sc->yb, sc->x, sc->w, sc->b, s, sc->ws, e->cap)
                   : cudnn_forward(e, &e->fwd[mode], sc->ya, sc->x, sc->w, sc->b, sc->ws);
    case DD_CONV_BWD_DATA:
        return own ? dd_conv_own_backward_data(impl, sc->dxb, sc->dy, sc->w, s, sc->ws, e->cap)
                   : cudnn_backward_data(e, &e->bwd_data[mode], &ONE, sc->dxa, sc->dy, sc->w,
                                         sc->ws);
    default:
        return own ? dd_conv_own_backward_filter(impl, sc->dwb, sc->dbb, sc->dy, sc->x, s, sc->ws,
                                                 e->cap)
                   : cudnn_backward_filter(e, &e->bwd_filter[mode], &ONE, sc->dwa, sc->dba, sc->dy,
                                           sc->x, sc->ws);
    }
}

#define TIMING_SPIN 4000000LL /* clocks (~2 ms): longer than enqueuing the timed calls */

/* Mean GPU time of one call in ms (after a warm-up call, which also loads lazy kernels). */
static int time_dir(conv_entry *e, int mode, int d, int impl, const conv_scratch *sc,
                    cudaEvent_t ev[2], float *ms) {
    DD_TRY(run_dir(e, mode, d, impl, sc));
    DD_TRY(dd_conv_spin(TIMING_SPIN));
    DD_CUDA_CHECK(cudaEventRecord(ev[0], dd_cuda_stream));
    for (int r = 0; r < timing_reps; r++) DD_TRY(run_dir(e, mode, d, impl, sc));
    DD_CUDA_CHECK(cudaEventRecord(ev[1], dd_cuda_stream));
    DD_CUDA_CHECK(cudaEventSynchronize(ev[1]));
    float t = 0.0f;
    DD_CUDA_CHECK(cudaEventElapsedTime(&t, ev[0], ev[1]));
    *ms = t / timing_reps;
    return 0;
}

/* max|own - ref| / max|ref| (infinity for NaN; 0/0 = 0) */
static int rel_diff(const float *own, const float *ref, size_t n, void *dev8, double *out) {
    float r[2];
    DD_TRY(dd_conv_maxdiff(r, own, ref, n, dev8));
    *out = r[1] > 0.0f ? (double)r[0] / r[1] : r[0] == 0.0f ? 0.0 : INFINITY;
    return 0;
}

/* The FP32 reference for the safety net: a plain GEMM-style cuDNN algorithm with FMA math when
 * cuDNN offers it for the shape within limits, else the mode's own choice. */
static void reference_choice(conv_entry *e, int mode, int d, size_t ws_limit, conv_choice *c) {
    size_t bytes = 0;
    cudnnStatus_t st = cudnnSetConvolutionMathType(e->conv, CUDNN_FMA_MATH);
    if (st == CUDNN_STATUS_SUCCESS) {
        if (d == DD_CONV_FWD) {
            c->algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
            st = cudnnGetConvolutionForwardWorkspaceSize(
                dnn, e->x, e->w, e->conv, e->y, (cudnnConvolutionFwdAlgo_t)c->algo, &bytes);
        } else if (d == DD_CONV_BWD_DATA) {
            c->algo = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
            st = cudnnGetConvolutionBackwardDataWorkspaceSize(
                dnn, e->w, e->y, e->conv, e->x, (cudnnConvolutionBwdDataAlgo_t)c->algo, &bytes);
        } else {
            c->algo = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
            st = cudnnGetConvolutionBackwardFilterWorkspaceSize(
                dnn, e->x, e->y, e->conv, e->w, (cudnnConvolutionBwdFilterAlgo_t)c->algo, &bytes);
        }
    }
    if (st == CUDNN_STATUS_SUCCESS && bytes <= ws_limit) {
        c->math = CUDNN_FMA_MATH;
        c->bytes = bytes;
    } else {
        *c = *dir_choice(e, mode, d);
    }
}

/* The safety net: configuration cfg against the cuDNN reference on the scratch inputs (bias and
 * both filter gradients included); *err = the largest max|own - ref| / max|ref|. */
static int validate(conv_entry *e, int mode, int d, int cfg, const conv_scratch *sc,
                    double *err) {
    const dd_conv_shape *s = &e->s;
    conv_choice ref;
    reference_choice(e, mode, d, sc->ws_bytes, &ref);
    double e1 = 0.0, e2 = 0.0;
    if (d == DD_CONV_FWD) {
        DD_TRY(cudnn_forward(e, &ref, sc->ya, sc->x, sc->w, sc->b, sc->ws));
        DD_TRY(dd_conv_own_forward(cfg, sc->yb, sc->x, sc->w, sc->b, s, sc->ws, e->cap));
        DD_TRY(rel_diff(sc->yb, sc->ya, sc->ny, sc->diff, &e1));
    } else if (d == DD_CONV_BWD_DATA) {
        DD_TRY(cudnn_backward_data(e, &ref, &ZERO, sc->dxa, sc->dy, sc->w, sc->ws));
        DD_CUDA_CHECK(cudaMemsetAsync(sc->dxb, 0, sc->nx * sizeof(float), dd_cuda_stream));
        DD_TRY(dd_conv_own_backward_data(cfg, sc->dxb, sc->dy, sc->w, s, sc->ws, e->cap));
        DD_TRY(rel_diff(sc->dxb, sc->dxa, sc->nx, sc->diff, &e1));
    } else {
        DD_TRY(cudnn_backward_filter(e, &ref, &ZERO, sc->dwa, sc->dba, sc->dy, sc->x, sc->ws));
        DD_CUDA_CHECK(cudaMemsetAsync(sc->dwb, 0, sc->nw * sizeof(float), dd_cuda_stream));
        DD_CUDA_CHECK(cudaMemsetAsync(sc->dbb, 0, (size_t)s->Cout * sizeof(float), dd_cuda_stream));
        DD_TRY(dd_conv_own_backward_filter(cfg, sc->dwb, sc->dbb, sc->dy, sc->x, s, sc->ws, e->cap));
        DD_TRY(rel_diff(sc->dwb, sc->dwa, sc->nw, sc->diff, &e1));
        DD_TRY(rel_diff(sc->dbb, sc->dba, (size_t)s->Cout, sc->diff, &e2));
    }
    *err = e1 > e2 ? e1 : e2;
    return 0;
}

/* DIFFUSION_CONV=auto for one shape and mode: per direction, times cuDNN's choice and every own
 * configuration on scratch buffers (never the caller's: backward adds), and takes the fastest
 * own one when it beats cuDNN and agrees with the reference. Fills e->use[mode]; on failure
 * (-1) the caller keeps cuDNN everywhere. */
static int conv_autotune(conv_entry *e, int mode) {
    const dd_conv_shape *s = &e->s;
    char shape[96], line[1024], bad[256], times[DD_CONV_DIRS][1024] = {{0}};
    shape_text(shape, sizeof shape, s);
    size_t len = (size_t)snprintf(line, sizeof line, "diffusion: conv %s (TF32 %s):", shape,
                                  mode ? "on" : "off");
    bad[0] = '\0';
    conv_scratch sc;
    cudaEvent_t ev[2] = {NULL, NULL};
    int rc = -1;
    /* the cap, and room for the reference algorithms' workspace */
    const size_t ws_bytes = e->cap + ((size_t)64 << 20);
    if (scratch_alloc(&sc, s, ws_bytes)) goto done;
    if (cudaEventCreate(&ev[0]) != cudaSuccess || cudaEventCreate(&ev[1]) != cudaSuccess) {
        dd_error("cudaEventCreate failed");
        goto done;
    }
    for (int d = 0; d < DD_CONV_DIRS; d++) {
        const int nc = dd_conv_own_configs(d);
        float t_dnn, t_own[64];
        if (nc > 64) {
            dd_error("conv autotune: %d configurations, more than 64", nc);
            goto done;
        }
        /* cuDNN: its choice and the alternatives, each timed as the own ones are; the fastest,
         * or, when that one is not deterministic, the fastest deterministic one within 10%
         * (+2 us) of it (pick's rule, on these timings) */
        conv_choice *cur = dir_choice_mut(e, mode, d);
        const int na = e->nalt[mode][d]; /* at least 1: conv_find's pick */
        float t_alt[CUDNN_ALTS];
        for (int i = 0; i < na; i++) {
            *cur = e->alt[mode][d][i];
            if (time_dir(e, mode, d, USE_CUDNN, &sc, ev, &t_alt[i])) {
                *cur = e->alt[mode][d][0];
                goto done;
            }
        }
        int ac = 0;
        for (int i = 1; i < na; i++)
            if (t_alt[i] < t_alt[ac]) ac = i;
        if (!e->alt[mode][d][ac].deterministic) {
            int det = -1;
            for (int i = 0; i < na; i++)
                if (e->alt[mode][d][i].deterministic &&
                    t_alt[i] <= t_alt[ac] * 1.1f + 0.002f && (det < 0 || t_alt[i] < t_alt[det]))
                    det = i;
            if (det >= 0) ac = det;
        }
        *cur = e->alt[mode][d][ac];
        t_dnn = t_alt[ac];
        for (int c = 0; c < nc; c++) {
            t_own[c] = INFINITY;
            if (!mode && dd_conv_own_config_tf32(d, c)) continue; /* strict: no tensor cores */
            if (!dd_conv_own_config_applies(d, c, s)) continue;   /* it would run another one */
            if (time_dir(e, mode, d, c, &sc, ev, &t_own[c])) {
                dd_error_prefix("timing the own %s configuration %s", dir_name[d],
                                dd_conv_own_config_name(d, c));
                goto done;
            }
        }
        char algo[48];
        choice_text(algo, sizeof algo, d, dir_choice(e, mode, d));
        if (conv_log >= 2) { /* every candidate's time ("-": not a candidate in this mode) */
            size_t k = (size_t)snprintf(times[d], sizeof times[d],
                                        "diffusion: conv %s (TF32 %s) %s times, us: cudnn %s %.1f",
                                        shape, mode ? "on" : "off", dir_name[d], algo, 1e3 * t_dnn);
            for (int i = 0; i < na && k < sizeof times[d]; i++) { /* every cuDNN one timed */
                char alt[48];
                k += (size_t)snprintf(times[d] + k, sizeof times[d] - k, "%s %s %.1f",
                                      i ? "," : " (cudnn candidates, cudnnFind's pick first:",
                                      choice_text(alt, sizeof alt, d, &e->alt[mode][d][i]),
                                      1e3 * t_alt[i]);
            }
            if (k < sizeof times[d])
                k += (size_t)snprintf(times[d] + k, sizeof times[d] - k, ")");
            for (int c = 0; c < nc && k < sizeof times[d]; c++)
                k += (size_t)(isinf(t_own[c])
                                  ? snprintf(times[d] + k, sizeof times[d] - k, ", %s -",
                                             dd_conv_own_config_name(d, c))
                                  : snprintf(times[d] + k, sizeof times[d] - k, ", %s %.1f",
                                             dd_conv_own_config_name(d, c), 1e3 * t_own[c]));
        }
        /* the fastest configuration that beats cuDNN and agrees with the reference; one that
         * disagrees is reported and the next fastest tried */
        int chosen = -1, fastest = -1, rejected = 0;
        float t_fastest = INFINITY; /* for the log: the fastest own one, rejected or not */
        double err = 0.0;
        for (;;) {
            int best = -1;
            for (int c = 0; c < nc; c++)
                if (t_own[c] < t_dnn && (best < 0 || t_own[c] < t_own[best])) best = c;
            if (best < 0) break;
            if (fastest < 0) {
                fastest = best;
                t_fastest = t_own[best];
            }
            const double tol = !mode ? 1e-5 : dd_conv_own_config_tf32(d, best) ? 4e-3 : 1e-3;
            if (validate(e, mode, d, best, &sc, &err)) {
                dd_error_prefix("checking the own %s configuration %s", dir_name[d],
                                dd_conv_own_config_name(d, best));
                goto done;
            }
            if (err <= tol) {
                chosen = best;
                break;
            }
            size_t b = strlen(bad);
            snprintf(bad + b, sizeof bad - b, "%s%s %s: max rel err %.2e > %.0e", b ? ", " : "",
                     dir_name[d], dd_conv_own_config_name(d, best), err, tol);
            rejected++;
            t_own[best] = INFINITY;
        }
        if (fastest < 0) /* none beat cuDNN: name the fastest for the log */
            for (int c = 0; c < nc; c++)
                if (t_own[c] < t_fastest) {
                    fastest = c;
                    t_fastest = t_own[c];
                }
        if (chosen >= 0) e->use[mode][d] = chosen;
        if (len < sizeof line) {
            if (chosen >= 0)
                len += (size_t)snprintf(
                    line + len, sizeof line - len,
                    "%s %s cudnn %s %.1f us, own %s %.1f us -> own (err %.1e%s)", d ? ";" : "",
                    dir_name[d], algo, 1e3 * t_dnn, dd_conv_own_config_name(d, chosen),
                    1e3 * t_own[chosen], err, rejected ? ", faster ones disagreed" : "");
            else
                len += (size_t)snprintf(line + len, sizeof line - len,
                                        "%s %s cudnn %s %.1f us, own %s %.1f us -> cudnn%s",
                                        d ? ";" : "", dir_name[d], algo, 1e3 * t_dnn,
                                        dd_conv_own_config_name(d, fastest), 1e3 * t_fastest,
                                        rejected ? " (own disagrees)" : "");
        }
    }
    rc = 0;
done:
    /* after a failure, calls on the scratch buffers may still be queued: let them finish (or
     * fail) before the buffers go */
    if (rc) (void)cudaStreamSynchronize(dd_cuda_stream);
    if (ev[0]) (void)cudaEventDestroy(ev[0]);
    if (ev[1]) (void)cudaEventDestroy(ev[1]);
    if (sc.base) (void)cudaFree(sc.base);
    if (rc == 0) {
        if (conv_log) fprintf(stderr, "%s\n", line);
        for (int d = 0; d < DD_CONV_DIRS; d++)
            if (times[d][0]) fprintf(stderr, "%s\n", times[d]);
        if (bad[0])
            fprintf(stderr,
                    "diffusion: warning: own conv kernels disagree with cuDNN on %s (%s); the "
                    "fastest one that agrees, or cuDNN, is used there\n",
                    shape, bad);
    }
    return rc;
}

/* Chooses cuDNN or an own kernel per direction for the entry's shape in this mode. */
static int conv_choose(conv_entry *e, int mode) {
    const int own_ok = dd_conv_own_supported(&e->s);
    char shape[96];
    shape_text(shape, sizeof shape, &e->s);
    if (own_ok) DD_TRY(dd_conv_own_prepare());
    if ((conv_policy == POLICY_OWN || conv_policy == POLICY_OWN_TF32) && own_ok) {
        const int tc = conv_policy == POLICY_OWN_TF32 && mode;
        for (int d = 0; d < DD_CONV_DIRS; d++) {
            e->use[mode][d] = conv_forced[d] >= 0 ? conv_forced[d]
                              : tc                ? dd_conv_own_default_tf32(d, &e->s)
                                                  : dd_conv_own_default(d, &e->s);
            if (!mode && dd_conv_own_config_tf32(d, e->use[mode][d]))
                return dd_error("conv %s: own %s configuration %s uses TF32 tensor cores, and "
                                "TF32 is off",
                                shape, dir_name[d], dd_conv_own_config_name(d, e->use[mode][d]));
        }
        if (conv_log)
            fprintf(stderr, "diffusion: conv %s: own %s / %s / %s (DIFFUSION_CONV=%s, untimed)\n",
                    shape, dd_conv_own_config_name(0, e->use[mode][0]),
                    dd_conv_own_config_name(1, e->use[mode][1]),
                    dd_conv_own_config_name(2, e->use[mode][2]), tc ? "own-tf32" : "own");
        return 0;
    }
    if (!e->cudnn_found[mode]) DD_TRY(conv_find(e, mode));
    for (int d = 0; d < DD_CONV_DIRS; d++) e->use[mode][d] = USE_CUDNN;
    if (conv_policy != POLICY_AUTO || !own_ok) {
        if (conv_log) {
            char a[3][48];
            fprintf(stderr, "diffusion: conv %s (TF32 %s): cudnn %s / %s / %s (%s)\n", shape,
                    mode ? "on" : "off", choice_text(a[0], sizeof a[0], 0, dir_choice(e, mode, 0)),
                    choice_text(a[1], sizeof a[1], 1, dir_choice(e, mode, 1)),
                    choice_text(a[2], sizeof a[2], 2, dir_choice(e, mode, 2)),
                    own_ok ? "DIFFUSION_CONV=cudnn" : "too large for the own kernels");
        }
        return 0;
    }
    if (conv_autotune(e, mode)) {
        /* A failed launch (a bad configuration) is cleared by cudaGetLastError and cuDNN can take
         * over. A fault inside a kernel (an illegal address, say) is not: it stays with the CUDA
         * context, every later call fails with it, and the run cannot go on. */
        (void)cudaGetLastError();
        const cudaError_t st = cudaStreamSynchronize(dd_cuda_stream);
        if (st != cudaSuccess) {
            dd_error_prefix("conv %s: the GPU faulted (%s) while the own conv kernels were timed, "
                            "and the CUDA context is lost (DIFFUSION_CONV=cudnn leaves them out)",
                            shape, cudaGetErrorString(st));
            dd_cuda_note_fault(dd_error_message());
            return -1;
        }
        fprintf(stderr, "diffusion: warning: timing the own conv kernels on %s failed (%s); cuDNN "
                        "is used there\n",
                shape, dd_error_message());
        dd_error_clear();
        for (int d = 0; d < DD_CONV_DIRS; d++) e->use[mode][d] = USE_CUDNN;
    }
    return 0;
}

/* The entry for a shape with its choices for the current mode, searching when needed (never
 * during a capture: that is an error naming the shape). */
static int conv_ready(const dd_conv_shape *s, conv_entry **out) {
    const int mode = dd_cuda_tf32_on ? 1 : 0;
    conv_entry *e = NULL;
    for (int i = 0; i < conv_count; i++)
        if (same_shape(&conv_cache[i].s, s)) e = &conv_cache[i];
    if (e && e->found[mode]) {
        *out = e;
        return 0;
    }
    if (dd_cuda_capturing())
        return dd_error("conv2d N=%d Cin=%d %dx%d -> Cout=%d K=%d: not prepared before the CUDA "
                        "graph capture (call conv2d_workspace for every shape first, with the "
                        "same TF32 setting)",
                        s->N, s->Cin, s->H, s->W, s->Cout, s->K);
    DD_TRY(read_policy());
    if (!e) {
        if (conv_count == conv_capacity) {
            int cap = conv_capacity ? 2 * conv_capacity : 32;
            conv_entry *c = realloc(conv_cache, (size_t)cap * sizeof *c);
            if (!c) return dd_error("conv2d: out of host memory for the algorithm cache");
            conv_cache = c;
            conv_capacity = cap;
        }
        e = &conv_cache[conv_count];
        memset(e, 0, sizeof *e);
        e->s = *s;
        e->cap = conv_cap(s);
        if (conv_describe(e)) { /* the slot is reused by the next try: no descriptor leaks */
            conv_undescribe(e);
            return -1;
        }
        conv_count++;
    }
    DD_TRY(conv_choose(e, mode));
    e->found[mode] = 1;
    *out = e;
    return 0;
}

size_t dd_cuda_conv2d_workspace(const dd_conv_shape *s) {
    conv_entry *e;
    /* On failure the message stays set and the next forward call reports it again; the bound
     * itself does not depend on the search. */
    (void)conv_ready(s, &e);
    return conv_cap(s);
}

/* For tests: the cuDNN algorithm (cudnnConvolution*Algo_t) that direction dir of shape s runs
 * in the current math mode when cuDNN runs it, or -1 when the shape has not been searched. */
int dd_cuda_conv_cudnn_algo(const dd_conv_shape *s, int dir) {
    const int mode = dd_cuda_tf32_on ? 1 : 0;
    for (int i = 0; i < conv_count; i++)
        if (same_shape(&conv_cache[i].s, s) && conv_cache[i].found[mode] && dir >= 0 &&
            dir < DD_CONV_DIRS)
            return dir_choice(&conv_cache[i], mode, dir)->algo;
    return -1;
}

/* ---------------------------------------------------------------- the backend's entries */

int dd_cuda_conv2d_forward(float *y, const float *x, const float *w, const float *b,
                           const dd_conv_shape *s, void *ws) {
    conv_entry *e;
    DD_TRY(conv_ready(s, &e));
    const int mode = dd_cuda_tf32_on ? 1 : 0, use = e->use[mode][DD_CONV_FWD];
    /* the own kernels keep any split partials within the workspace the caller was told about */
    if (use != USE_CUDNN) return dd_conv_own_forward(use, y, x, w, b, s, ws, ws ? e->cap : 0);
    return cudnn_forward(e, &e->fwd[mode], y, x, w, b, ws);
}

/* beta = 1 throughout: backward adds into the gradients it is given */
int dd_cuda_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, const dd_conv_shape *s, void *ws) {
    conv_entry *e;
    DD_TRY(conv_ready(s, &e));
    const int mode = dd_cuda_tf32_on ? 1 : 0;
    if (dx) {
        const int use = e->use[mode][DD_CONV_BWD_DATA];
        if (use != USE_CUDNN)
            DD_TRY(dd_conv_own_backward_data(use, dx, dy, w, s, ws, ws ? e->cap : 0));
        else
            DD_TRY(cudnn_backward_data(e, &e->bwd_data[mode], &ONE, dx, dy, w, ws));
    }
    if (dw || db) {
        const int use = e->use[mode][DD_CONV_BWD_FILTER];
        if (use != USE_CUDNN)
            DD_TRY(dd_conv_own_backward_filter(use, dw, db, dy, x, s, ws, ws ? e->cap : 0));
        else
            DD_TRY(cudnn_backward_filter(e, &e->bwd_filter[mode], &ONE, dw, db, dy, x, ws));
    }
    return 0;
}

/* ---------------------------------------------------------------- dense */

/* y (N, Cout) = x (N, Cin) w^T + b: up to DD_CUDA_DENSE_SMALL_CIN inputs by one kernel
 * (cuda_kernels.cu), beyond by cuBLAS: the bias rows, then the GEMM adding into them.
 * Column-major: y^T (Cout x N) = w (Cout x Cin) x^T, where w's buffer read column-major is
 * w^T (Cin x Cout), hence OP_T. */
int dd_cuda_dense_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                          int Cout) {
    if (N <= 0 || Cout <= 0) return 0;
    if (Cin <= DD_CUDA_DENSE_SMALL_CIN) return dd_cuda_dense_small_forward(y, x, w, b, N, Cin, Cout);
    if (b) DD_TRY(dd_cuda_fill_rows(y, b, N, Cout));
    BLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, Cout, N, Cin, &ONE, w, Cin, x, Cin,
                           b ? &ONE : &ZERO, y, Cout));
    return 0;
}

/* Layers of one input: one kernel for all of them up to DD_CUDA_DENSE_SMALL_CIN inputs, else one
 * call each. */
int dd_cuda_dense_group_forward(int count, float *const *y, const float *x, const float *const *w,
                                const float *const *b, int N, int Cin, const int *cout) {
    if (count < 1 || count > DD_DENSE_GROUP_MAX)
        return dd_error("dense group: %d layers, from 1 to %d", count, DD_DENSE_GROUP_MAX);
    if (N <= 0) return 0;
    if (Cin <= DD_CUDA_DENSE_SMALL_CIN)
        return dd_cuda_dense_group_small_forward(count, y, x, -1, w, b, N, Cin, cout);
    for (int l = 0; l < count; l++)
        DD_TRY(dd_cuda_dense_forward(y[l], x, w[l], b ? b[l] : NULL, N, Cin, cout[l]));
    return 0;
}

/* The same of act(x), within the one-kernel forward's inputs (which checks the count) */
int dd_cuda_dense_group_act_forward(int count, float *const *y, const float *x, dd_act act,
                                    const float *const *w, const float *const *b, int N, int Cin,
                                    const int *cout) {
    if ((int)act < 0 || act >= DD_ACT_COUNT) return dd_error("dense group: activation %d", (int)act);
    if (Cin > DD_DENSE_GROUP_ACT_CIN)
        return dd_error("dense group of an activation: %d inputs, at most %d", Cin,
                        DD_DENSE_GROUP_ACT_CIN);
    if (N <= 0) return 0;
    return dd_cuda_dense_group_small_forward(count, y, x, (int)act, w, b, N, Cin, cout);
}

/* The group's backward: one kernel when every layer fits dense_small_backward, else one call
 * each. */
int dd_cuda_dense_group_backward(int count, float *dx, float *const *dw, float *const *db,
                                 const float *const *dy, const float *x, const float *const *w,
                                 int N, int Cin, const int *cout) {
    if (count < 1 || count > DD_DENSE_GROUP_MAX)
        return dd_error("dense group backward: %d layers, from 1 to %d", count,
                        DD_DENSE_GROUP_MAX);
    if (N <= 0) return 0;
    int small = Cin > 0 && Cin <= DD_CUDA_DENSE_SMALL_BWD && N <= DD_CUDA_DENSE_SMALL_BWD_N;
    for (int l = 0; l < count; l++) small &= cout[l] > 0 && cout[l] <= DD_CUDA_DENSE_SMALL_BWD;
    if (small)
        return dd_cuda_dense_group_small_backward(count, dx, dw, db, dy, x, w, N, Cin, cout);
    for (int l = 0; l < count; l++)
        DD_TRY(dd_cuda_dense_backward(dx, dw ? dw[l] : NULL, db ? db[l] : NULL, dy[l], x, w[l], N,
                                      Cin, cout[l]));
    return 0;
}

int dd_cuda_dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, int N, int Cin, int Cout) {
    if (N <= 0 || Cout <= 0) return 0;
    /* the UNets' small layers (the time MLP, the blocks' embedding projections): one kernel */
    if (Cin > 0 && Cin <= DD_CUDA_DENSE_SMALL_BWD && Cout <= DD_CUDA_DENSE_SMALL_BWD &&
        N <= DD_CUDA_DENSE_SMALL_BWD_N)
        return dd_cuda_dense_small_backward(dx, dw, db, dy, x, w, N, Cin, Cout);
    /* dx (N, Cin) += dy (N, Cout) w (Cout, Cin): dx^T (Cin x N) += w^T (Cin x Cout) dy^T */
    if (dx)
        BLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, Cin, N, Cout, &ONE, w, Cin, dy, Cout,
                               &ONE, dx, Cin));
    /* dw (Cout, Cin) += dy^T x: dw^T (Cin x Cout) += x^T (Cin x N) dy (N x Cout) */
    if (dw)
        BLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, Cin, Cout, N, &ONE, x, Cin, dy, Cout,
                               &ONE, dw, Cin));
    if (db) DD_TRY(dd_cuda_colsum_add(db, dy, N, Cout));
    return 0;
}

/* ---------------------------------------------------------------- attention */

/* One cuBLAS call per product for all samples and heads: cublasSgemmBatched over the N * heads
 * (sample, head) pairs, entry b = n * heads + h (the head stride is not the sample stride, so
 * no single strided batch covers them; a loop over heads cost `heads` calls per product).
 * Column-major views of the row-major slices, each with leading dimension P:
 *   Qc, Kc, Vc (P x D): Qc[i, d] = q[d, i]      (q slice at qkv + n 3CP + h DP)
 *   probs slice (P x P) at probs + b PP, read column-major = probs^T
 *   Yc (P x D): Yc[i, d] = y[h D + d, i]        (at y + n CP + h DP)
 * The pointer arrays live in device memory (cuBLAS reads them there). They are built on the host
 * and uploaded the first time a set of buffers is seen, which is always outside a capture (a
 * recorded step's first call runs plainly), and kept for the life of the process: a recorded
 * graph may still read them, and they are a few KB per planned model. */
size_t dd_cuda_attention_workspace(const dd_attn_shape *s) {
    return (size_t)s->N * s->heads * s->P * s->P * sizeof(float); /* dL/dscores */
}

typedef struct {
    long long qkv, y, pp; /* sample strides of qkv, y/dy and probs */
    int P, D;
    float scale;
} attn_geom;

static attn_geom attn_geometry(const dd_attn_shape *s) {
    attn_geom g;
    g.P = s->P;
    g.D = s->C / s->heads;
    g.qkv = 3LL * s->C * s->P;
    g.y = (long long)s->C * s->P;
    g.pp = (long long)s->heads * s->P * s->P;
    g.scale = 1.0f / sqrtf((float)g.D);
    return g;
}

enum { ATTN_FWD_PRODUCTS = 2, ATTN_BWD_PRODUCTS = 4, ATTN_KEYS = 5 };

typedef struct attn_arrays {
    const void *key[ATTN_KEYS]; /* the buffers the arrays point into */
    dd_attn_shape s;
    int products;
    float **dev; /* products x {A, B, C} x (N heads) pointers, device memory */
    struct attn_arrays *next;
} attn_arrays;
static attn_arrays *attn_cache;

/* The device copy of host[0 .. products * 3 * Nh), cached under (key, shape, products). */
static int attn_arrays_get(float ***out, const void *const key[ATTN_KEYS], const dd_attn_shape *s,
                           int products, float *const *host) {
    for (attn_arrays *e = attn_cache; e; e = e->next)
        if (!memcmp(e->key, key, sizeof e->key) && e->products == products && e->s.N == s->N &&
            e->s.C == s->C && e->s.heads == s->heads && e->s.P == s->P) {
            *out = e->dev;
            return 0;
        }
    if (dd_cuda_capturing())
        return dd_error("attention: new buffers during a CUDA graph capture (their pointer arrays "
                        "are built on the first, plain call)");
    const size_t bytes = (size_t)products * 3 * s->N * s->heads * sizeof(float *);
    attn_arrays *e = calloc(1, sizeof *e);
    if (!e) return dd_error("attention: out of host memory");
    cudaError_t err = cudaMalloc((void **)&e->dev, bytes);
    if (err == cudaSuccess)
        err = cudaMemcpyAsync(e->dev, host, bytes, cudaMemcpyHostToDevice, dd_cuda_stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(dd_cuda_stream);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* a failed allocation must not fail the next launch check */
        if (e->dev) cudaFree(e->dev);
        free(e);
        return dd_cuda_fail(__FILE__, __LINE__, "attention pointer arrays", err);
    }
    memcpy(e->key, key, sizeof e->key);
    e->s = *s;
    e->products = products;
    e->next = attn_cache;
    attn_cache = e;
    *out = e->dev;
    return 0;
}

/* host pointer table: product p, role r (0 A, 1 B, 2 C), entry b */
#define ATTN_AT(t, p, r, b, Nh) ((t)[((size_t)(p) * 3 + (r)) * (Nh) + (b)])

static int attn_batched(float **arr, int p, size_t Nh, cublasOperation_t ta,
                        cublasOperation_t tb, int m, int n, int k, const float *alpha,
                        const float *beta, int P) {
    BLAS_CHECK(cublasSgemmBatched(blas, ta, tb, m, n, k, alpha,
                                  (const float *const *)&ATTN_AT(arr, p, 0, 0, Nh), P,
                                  (const float *const *)&ATTN_AT(arr, p, 1, 0, Nh), P, beta,
                                  &ATTN_AT(arr, p, 2, 0, Nh), P, (int)Nh));
    return 0;
}

int dd_cuda_attention_forward(float *y, float *probs, const float *qkv, const dd_attn_shape *s) {
    const attn_geom g = attn_geometry(s);
    const int P = g.P, D = g.D;
    const long long PP = (long long)P * P;
    if (s->N <= 0 || P <= 0) return 0;
    if (dd_cuda_attention_fused_fits(s)) return dd_cuda_attention_fused_forward(y, probs, qkv, s);
    const size_t Nh = (size_t)s->N * s->heads;
    float **host = malloc((size_t)ATTN_FWD_PRODUCTS * 3 * Nh * sizeof *host);
    if (!host) return dd_error("attention: out of host memory");
    for (int n = 0; n < s->N; n++)
        for (int h = 0; h < s->heads; h++) {
            const size_t b = (size_t)n * s->heads + h;
            float *q = (float *)qkv + n * g.qkv + (size_t)h * D * P;
            float *k = q + (size_t)s->C * P, *v = q + (size_t)2 * s->C * P;
            float *pb = probs + (long long)b * PP;
            /* scores: C (P x P, column-major) = Kc Qc^T, i.e. row-major S[i, j] = q_i . k_j */
            ATTN_AT(host, 0, 0, b, Nh) = k;
            ATTN_AT(host, 0, 1, b, Nh) = q;
            ATTN_AT(host, 0, 2, b, Nh) = pb;
            /* Yc (P x D) = probs (row-major, so OP_T of its column-major view) Vc */
            ATTN_AT(host, 1, 0, b, Nh) = pb;
            ATTN_AT(host, 1, 1, b, Nh) = v;
            ATTN_AT(host, 1, 2, b, Nh) = y + n * g.y + (size_t)h * D * P;
        }
    const void *key[ATTN_KEYS] = {y, probs, qkv, NULL, NULL};
    float **arr;
    const int rc = attn_arrays_get(&arr, key, s, ATTN_FWD_PRODUCTS, host);
    free(host);
    DD_TRY(rc);
    DD_TRY(attn_batched(arr, 0, Nh, CUBLAS_OP_N, CUBLAS_OP_T, P, P, D, &g.scale, &ZERO, P));
    DD_TRY(dd_cuda_softmax_rows(probs, (int64_t)Nh * P, P));
    return attn_batched(arr, 1, Nh, CUBLAS_OP_T, CUBLAS_OP_N, P, D, P, &ONE, &ZERO, P);
}

int dd_cuda_attention_backward(float *dqkv, const float *dy, const float *qkv, const float *probs,
                               const dd_attn_shape *s, void *ws) {
    if (!dqkv) return 0;
    const attn_geom g = attn_geometry(s);
    const int P = g.P, D = g.D;
    const long long PP = (long long)P * P;
    float *dS = (float *)ws; /* (N, heads, P, P) row-major: dL/dprobs, then dL/dscores */
    if (s->N <= 0 || P <= 0) return 0;
    if (!dS) return dd_error("attention backward: needs %zu bytes of workspace, got none",
                             dd_cuda_attention_workspace(s));
    const size_t Nh = (size_t)s->N * s->heads;
    float **host = malloc((size_t)ATTN_BWD_PRODUCTS * 3 * Nh * sizeof *host);
    if (!host) return dd_error("attention: out of host memory");
    for (int n = 0; n < s->N; n++)
        for (int h = 0; h < s->heads; h++) {
            const size_t b = (size_t)n * s->heads + h, o = (size_t)h * D * P;
            float *q = (float *)qkv + n * g.qkv + o;
            float *k = q + (size_t)s->C * P, *v = q + (size_t)2 * s->C * P;
            float *dq = dqkv + n * g.qkv + o;
            float *dk = dq + (size_t)s->C * P, *dv = dq + (size_t)2 * s->C * P;
            float *dyh = (float *)dy + n * g.y + o;
            float *pb = (float *)probs + (long long)b * PP, *dSb = dS + (long long)b * PP;
            /* dP[i, j] = dy_i . v_j: column-major (P x P) = Vc DYc^T */
            ATTN_AT(host, 0, 0, b, Nh) = v;
            ATTN_AT(host, 0, 1, b, Nh) = dyh;
            ATTN_AT(host, 0, 2, b, Nh) = dSb;
            /* dVc[j, d] += sum_i probs[i, j] dy[d, i]: column-major view of probs (= probs^T) DYc */
            ATTN_AT(host, 1, 0, b, Nh) = pb;
            ATTN_AT(host, 1, 1, b, Nh) = dyh;
            ATTN_AT(host, 1, 2, b, Nh) = dv;
            /* dQc[i, d] += scale sum_j dS[i, j] k[d, j]: OP_T of dS's column-major view, times Kc */
            ATTN_AT(host, 2, 0, b, Nh) = dSb;
            ATTN_AT(host, 2, 1, b, Nh) = k;
            ATTN_AT(host, 2, 2, b, Nh) = dq;
            /* dKc[j, d] += scale sum_i dS[i, j] q[d, i]: dS's column-major view (= dS^T) times Qc */
            ATTN_AT(host, 3, 0, b, Nh) = dSb;
            ATTN_AT(host, 3, 1, b, Nh) = q;
            ATTN_AT(host, 3, 2, b, Nh) = dk;
        }
    const void *key[ATTN_KEYS] = {dqkv, dy, qkv, probs, ws};
    float **arr;
    const int rc = attn_arrays_get(&arr, key, s, ATTN_BWD_PRODUCTS, host);
    free(host);
    DD_TRY(rc);
    DD_TRY(attn_batched(arr, 0, Nh, CUBLAS_OP_N, CUBLAS_OP_T, P, P, D, &ONE, &ZERO, P));
    DD_TRY(attn_batched(arr, 1, Nh, CUBLAS_OP_N, CUBLAS_OP_N, P, D, P, &ONE, &ONE, P));
    DD_TRY(dd_cuda_softmax_rows_backward(dS, probs, (int64_t)Nh * P, P));
    DD_TRY(attn_batched(arr, 2, Nh, CUBLAS_OP_T, CUBLAS_OP_N, P, D, P, &g.scale, &ONE, P));
    return attn_batched(arr, 3, Nh, CUBLAS_OP_N, CUBLAS_OP_N, P, D, P, &g.scale, &ONE, P);
}
