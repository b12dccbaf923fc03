/* cuBLAS on the CPU emulator (fake_cuda/cublas_v2.h): the handle calls and single-precision
 * GEMM (plain and strided batched) that cuda/cuda_dnn.c uses, column-major as the real library:
 * C = alpha op(A) op(B) + beta C, op(A) m x k, op(B) k x n, C m x n.
 *
 * What is checked, as the real library does (CUBLAS_STATUS_INVALID_VALUE): m, n, k, batchCount
 * >= 0; the ops; lda >= max(1, rows of A as stored), ldb likewise, ldc >= max(1, m); alpha, beta
 * and C not NULL. On top of that, as misuse (emu_misuse AND an error code, since a GPU would
 * read garbage or fault instead): every matrix the call reads or writes lies inside one live
 * cudaMalloc buffer (A and B only when they are read: k > 0 and alpha != 0), checked at the call
 * and again when the queued operation runs (a capture may be replayed after a free); alpha and
 * beta are host memory (only CUBLAS_POINTER_MODE_HOST is modelled); the output matrices overlap
 * no input and no other output of the batch (a race on a GPU); a call on a stream being captured
 * has a workspace set by cublasSetWorkspace (cuBLAS would allocate its own, which a capture
 * cannot); the workspace is still live device memory. cublasSetStream resets the workspace to the
 * library's own, as documented, so cublasSetWorkspace must come after it.
 *
 * Numerics: sums in double, stored as float; beta == 0 overwrites C without reading it (NaN there
 * does not propagate), alpha == 0 or k == 0 scales C by beta without reading A or B (reference
 * BLAS). With CUBLAS_TF32_TENSOR_OP_MATH the elements of A and B are first rounded to TF32 (10
 * explicit mantissa bits, to nearest, ties away from zero, as cvt.rna.tf32.f32): the worst the
 * hardware may do, so that a tolerance that only holds for FP32 shows here. */
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "emu_stream.h"

struct cublasContext {
    cudaStream_t stream = nullptr;
    void *ws = nullptr; /* set by cublasSetWorkspace; nullptr: the library's own pool */
    size_t ws_bytes = 0;
    bool ws_user = false;
    cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

namespace {

/* FP32 -> TF32 (kept in a float): round to nearest on the 13 dropped bits, ties away */
float tf32(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return f; /* inf, NaN */
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

struct Span { /* [lo, hi) bytes, an output or not */
    uintptr_t lo, hi;
    bool out;
};

/* The column spans of a column-major rows x cols matrix with leading dimension ld. */
void add_spans(std::vector<Span> &v, const float *p, int rows, int cols, int ld, bool out) {
    for (int j = 0; j < cols; j++) {
        const uintptr_t lo = (uintptr_t)(p + (ptrdiff_t)j * ld);
        v.push_back({lo, lo + (uintptr_t)rows * sizeof(float), out});
    }
}

/* true when an output span overlaps any other span (inputs overlapping each other are fine) */
bool outputs_overlap(std::vector<Span> &v) {
    std::sort(v.begin(), v.end(), [](const Span &a, const Span &b) { return a.lo < b.lo; });
    uintptr_t end_all = 0, end_out = 0;
    for (const Span &s : v) {
        if (s.lo < (s.out ? end_all : end_out)) return true;
        end_all = std::max(end_all, s.hi);
        if (s.out) end_out = std::max(end_out, s.hi);
    }
    return false;
}

/* bytes a column-major rows x cols matrix spans with leading dimension ld (rows, cols > 0) */
size_t matrix_bytes(int rows, int cols, int ld) {
    return ((size_t)ld * (size_t)(cols - 1) + (size_t)rows) * sizeof(float);
}

struct Gemm {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, batch;
    long long sa, sb, sc;
    float alpha, beta;
    const float *A, *B;
    float *C;
    bool round_tf32;
    bool reads_ab() const { return k > 0 && alpha != 0.0f; }
    int a_rows() const { return ta == CUBLAS_OP_N ? m : k; }
    int a_cols() const { return ta == CUBLAS_OP_N ? k : m; }
    int b_rows() const { return tb == CUBLAS_OP_N ? k : n; }
    int b_cols() const { return tb == CUBLAS_OP_N ? n : k; }
};

/* Every matrix the call touches lies in device memory; `when` names the moment in messages. */
bool in_device_memory(const Gemm &g, const char *name, const char *when) {
    bool ok = true;
    for (int b = 0; b < g.batch && ok; b++) {
        if (g.reads_ab() && !emu_device_range(g.A + b * g.sa, matrix_bytes(g.a_rows(), g.a_cols(), g.lda))) {
            emu_misuse("%s (%s): A of batch %d (%d x %d, lda %d) is not inside one device buffer",
                       name, when, b, g.a_rows(), g.a_cols(), g.lda);
            ok = false;
        } else if (g.reads_ab() &&
                   !emu_device_range(g.B + b * g.sb, matrix_bytes(g.b_rows(), g.b_cols(), g.ldb))) {
            emu_misuse("%s (%s): B of batch %d (%d x %d, ldb %d) is not inside one device buffer",
                       name, when, b, g.b_rows(), g.b_cols(), g.ldb);
            ok = false;
        } else if (!emu_device_range(g.C + b * g.sc, matrix_bytes(g.m, g.n, g.ldc))) {
            emu_misuse("%s (%s): C of batch %d (%d x %d, ldc %d) is not inside one device buffer",
                       name, when, b, g.m, g.n, g.ldc);
            ok = false;
        }
    }
    return ok;
}

void run_gemm(const Gemm &g) {
    std::vector<double> col; /* one column of op(B), rounded as the math mode says */
    for (int b = 0; b < g.batch; b++) {
        /* A and B are not even addressed when not read (they may be NULL then) */
        const float *A = g.reads_ab() ? g.A + b * g.sa : nullptr;
        const float *B = g.reads_ab() ? g.B + b * g.sb : nullptr;
        float *C = g.C + b * g.sc;
        for (int j = 0; j < g.n; j++) {
            if (g.reads_ab()) {
                col.assign((size_t)g.k, 0.0);
                for (int l = 0; l < g.k; l++) {
                    const float v = g.tb == CUBLAS_OP_N ? B[l + (ptrdiff_t)j * g.ldb]
                                                        : B[j + (ptrdiff_t)l * g.ldb];
                    col[(size_t)l] = g.round_tf32 ? tf32(v) : v;
                }
            }
            for (int i = 0; i < g.m; i++) {
                double s = 0.0;
                if (g.reads_ab())
                    for (int l = 0; l < g.k; l++) {
                        float a = g.ta == CUBLAS_OP_N ? A[i + (ptrdiff_t)l * g.lda]
                                                      : A[l + (ptrdiff_t)i * g.lda];
                        if (g.round_tf32) a = tf32(a);
                        s += (double)a * col[(size_t)l];
                    }
                float &c = C[i + (ptrdiff_t)j * g.ldc];
                double r = (double)g.alpha * s;
                if (g.beta != 0.0f) r += (double)g.beta * c;
                c = (float)r;
            }
        }
    }
}

bool op_ok(cublasOperation_t t) {
    return t == CUBLAS_OP_N || t == CUBLAS_OP_T || t == CUBLAS_OP_C;
}

Gemm make_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
               float alpha, const float *A, int lda, const float *B, int ldb, float beta, float *C,
               int ldc) {
    return Gemm{ta, tb, m, n, k, lda, ldb, ldc, 1, 0, 0, 0, alpha, beta, A, B, C,
                (h->math & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) ==
                    CUBLAS_TF32_TENSOR_OP_MATH};
}

/* The call's checks (every misuse reported, the library's status returned); SUCCESS with
 * nothing to do is CUBLAS_STATUS_SUCCESS too, so callers test m, n and batch themselves. */
cublasStatus_t gemm_check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                          int n, int k, const float *alpha, const float *A, int lda, long long sa,
                          const float *B, int ldb, long long sb, const float *beta, float *C,
                          int ldc, long long sc, int batch, const char *name) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    /* the documented checks, in the real library's terms */
    if (m < 0 || n < 0 || k < 0 || batch < 0 || !op_ok(ta) || !op_ok(tb) ||
        lda < std::max(1, ta == CUBLAS_OP_N ? m : k) ||
        ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) || ldc < std::max(1, m) || !alpha ||
        !beta) {
        emu_misuse("%s: invalid arguments (m %d n %d k %d, lda %d ldb %d ldc %d, ops %d %d, "
                   "batch %d)",
                   name, m, n, k, lda, ldb, ldc, (int)ta, (int)tb, batch);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (h->pointer_mode != CUBLAS_POINTER_MODE_HOST) {
        emu_misuse("%s: CUBLAS_POINTER_MODE_DEVICE is not modelled", name);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    /* host pointer mode: alpha and beta are read now, on the host */
    if (emu_device_range(alpha, sizeof(float)) || emu_device_range(beta, sizeof(float))) {
        emu_misuse("%s: alpha or beta points into device memory in CUBLAS_POINTER_MODE_HOST",
                   name);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS; /* nothing touched */
    if (!C) {
        emu_misuse("%s: C is NULL", name);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (emu_capturing(h->stream) && !h->ws_user) {
        emu_misuse("%s on a stream being captured without cublasSetWorkspace (cuBLAS would "
                   "allocate its own workspace)",
                   name);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (h->ws_user && h->ws_bytes && !emu_device_range(h->ws, h->ws_bytes)) {
        emu_misuse("%s: the workspace given to cublasSetWorkspace (%zu bytes) is no longer live "
                   "device memory",
                   name, h->ws_bytes);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    Gemm g = make_gemm(h, ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    g.batch = batch;
    g.sa = sa;
    g.sb = sb;
    g.sc = sc;
    if (g.reads_ab() && (!A || !B)) {
        emu_misuse("%s: A or B is NULL", name);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!in_device_memory(g, name, "at the call")) return CUBLAS_STATUS_INVALID_VALUE;
    std::vector<Span> spans;
    for (int b = 0; b < batch; b++) {
        if (g.reads_ab()) {
            add_spans(spans, A + b * sa, g.a_rows(), g.a_cols(), lda, false);
            add_spans(spans, B + b * sb, g.b_rows(), g.b_cols(), ldb, false);
        }
        add_spans(spans, C + b * sc, m, n, ldc, true);
    }
    if (outputs_overlap(spans)) {
        emu_misuse("%s: an output matrix overlaps an input or another output of the batch "
                   "(m %d n %d k %d, ldc %d, strideC %lld, batch %d)",
                   name, m, n, k, ldc, sc, batch);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                    int k, const float *alpha, const float *A, int lda, long long sa,
                    const float *B, int ldb, long long sb, const float *beta, float *C, int ldc,
                    long long sc, int batch, const char *name) {
    const cublasStatus_t st =
        gemm_check(h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch, name);
    if (st != CUBLAS_STATUS_SUCCESS || m == 0 || n == 0 || batch == 0) return st;
    Gemm g = make_gemm(h, ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    g.batch = batch;
    g.sa = sa;
    g.sb = sb;
    g.sc = sc;
    /* a capture invalidated by a refused call fails every later use of the stream */
    if (emu_enqueue(
            h->stream,
            [g, name] {
                if (in_device_memory(g, name, "when run")) run_gemm(g);
            },
            name) != cudaSuccess)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    return CUBLAS_STATUS_SUCCESS;
}

} /* namespace */

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle; /* queued operations hold copies of everything they need */
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = streamId;
    /* documented: "unconditionally resets the cuBLAS library workspace back to the default
     * workspace pool" */
    handle->ws = nullptr;
    handle->ws_bytes = 0;
    handle->ws_user = false;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t *streamId) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!streamId) return CUBLAS_STATUS_INVALID_VALUE;
    *streamId = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace,
                                     size_t workspaceSizeInBytes) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    /* documented: the workspace must be aligned to at least 256 bytes */
    if ((uintptr_t)workspace % 256) {
        emu_misuse("cublasSetWorkspace: the workspace is not 256-byte aligned");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (workspaceSizeInBytes && !emu_device_range(workspace, workspaceSizeInBytes)) {
        emu_misuse("cublasSetWorkspace: [%p, +%zu bytes) is not inside one device buffer",
                   workspace, workspaceSizeInBytes);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->ws = workspace;
    handle->ws_bytes = workspaceSizeInBytes;
    handle->ws_user = true;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t *mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH &&
        base != CUBLAS_PEDANTIC_MATH && base != CUBLAS_TF32_TENSOR_OP_MATH &&
        base != CUBLAS_FP32_EMULATED_BF16X9_MATH && base != CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (base == CUBLAS_FP32_EMULATED_BF16X9_MATH) {
        emu_misuse("cublasSetMathMode: CUBLAS_FP32_EMULATED_BF16X9_MATH is not modelled");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

/* The real one returns a description ("an invalid numeric value was used as an argument"); the
 * name is what a reader of the backend's messages needs here. */
const char *cublasGetStatusString(cublasStatus_t status) { return cublasGetStatusName(status); }

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                              cublasOperation_t transb, int m, int n, int k, const float *alpha,
                              const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1,
                "cublasSgemm");
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long int strideA, const float *B, int ldb,
                                         long long int strideB, const float *beta, float *C,
                                         int ldc, long long int strideC, int batchCount) {
    return gemm(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C,
                ldc, strideC, batchCount, "cublasSgemmStridedBatched");
}

/* The pointer arrays are device memory, read when the call runs (as the GPU's kernel reads
 * them), so a capture replays whatever they hold then. Each entry is checked as one GEMM of the
 * strided path: arguments and device ranges at the call against the arrays' contents then, and
 * again when run; outputs must not overlap across the batch. */
cublasStatus_t cublasSgemmBatched(cublasHandle_t handle, cublasOperation_t transa,
                                  cublasOperation_t transb, int m, int n, int k,
                                  const float *alpha, const float *const Aarray[], int lda,
                                  const float *const Barray[], int ldb, const float *beta,
                                  float *const Carray[], int ldc, int batchCount) {
    const char *name = "cublasSgemmBatched";
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (batchCount < 0) {
        emu_misuse("%s: batchCount %d", name, batchCount);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (batchCount == 0 || m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const size_t bytes = (size_t)batchCount * sizeof(void *);
    if (!emu_device_range(Aarray, bytes) || !emu_device_range(Barray, bytes) ||
        !emu_device_range(Carray, bytes)) {
        emu_misuse("%s: a pointer array of %d entries is not in device memory", name, batchCount);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    /* the checks of the strided path, entry by entry, against the arrays as they are now; the
     * arrays' contents are host-visible here only because the emulated device memory is */
    const float a = *alpha, b = *beta;
    std::vector<Span> spans;
    for (int i = 0; i < batchCount; i++) {
        cublasStatus_t st = gemm_check(handle, transa, transb, m, n, k, alpha, Aarray[i], lda, 0,
                                       Barray[i], ldb, 0, beta, Carray[i], ldc, 0, 1, name);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
        const Gemm g = make_gemm(handle, transa, transb, m, n, k, a, Aarray[i], lda, Barray[i],
                                 ldb, b, Carray[i], ldc);
        if (g.reads_ab()) {
            add_spans(spans, g.A, g.a_rows(), g.a_cols(), lda, false);
            add_spans(spans, g.B, g.b_rows(), g.b_cols(), ldb, false);
        }
        add_spans(spans, g.C, m, n, ldc, true);
    }
    if (outputs_overlap(spans)) {
        emu_misuse("%s: an output matrix overlaps an input or another output of the batch", name);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    /* the math mode as it is at the call */
    const Gemm proto = make_gemm(handle, transa, transb, m, n, k, a, nullptr, lda, nullptr, ldb, b,
                                 nullptr, ldc);
    if (emu_enqueue(
            handle->stream,
            [=] {
                for (int i = 0; i < batchCount; i++) {
                    Gemm g = proto;
                    g.A = Aarray[i];
                    g.B = Barray[i];
                    g.C = Carray[i];
                    if (in_device_memory(g, name, "when run")) run_gemm(g);
                }
            },
            name) != cudaSuccess)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
