/* Multi-head attention core on the CPU (see dd_attn_shape in backend.h).
 *
 * Per (n, h), with Q, K, V the (D, P) blocks of qkv and s = 1/sqrt(D):
 *   S (P, P) = s Q^T K,  probs = softmax over j of S[i, j],  Y (D, P) = V probs^T
 * backward (probs saved by forward):
 *   dP = dY^T V,  dV += dY probs,  dS = probs * (dP - rowsum(probs * dP)),
 *   dQ += s K dS^T,  dK += s Q dS
 * The (n, h) pairs are independent: OpenMP across them, sgemm inside. The workspace holds one
 * P x P scratch (dP, then dS in place) per thread. */
/* before any include: see cpu_simd.h (vectorised clamps, no FMA contraction) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#endif

#include <cblas.h>
#include <math.h>

#include "cpu_internal.h"
#include "cpu_simd.h"

static size_t pp_bytes(const dd_attn_shape *s) {
    return dd_cpu_round((size_t)s->P * s->P * sizeof(float));
}

size_t dd_cpu_attention_workspace(const dd_attn_shape *s) {
    return (size_t)dd_cpu_slots((int64_t)s->N * s->heads) * pp_bytes(s);
}

/* softmax of each row of S (P, P) in place; the sum in double. The exponentials are a loop of
 * their own so it vectorises (cpu_simd.h's expf, within 1 ulp of libm's). */
DD_CPU_CLONES static void softmax_rows(float *S, int P) {
    for (int i = 0; i < P; i++) {
        float *r = S + (size_t)i * P;
        float mx = r[0];
        for (int j = 1; j < P; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < P; j++) r[j] = dd_cpu_expf(r[j] - mx);
        double sum = 0.0;
        for (int j = 0; j < P; j++) sum += r[j];
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < P; j++) r[j] *= inv;
    }
}

static void forward_one(float *y, float *probs, const float *qkv, const dd_attn_shape *s, int nh) {
    const int C = s->C, P = s->P, H = s->heads, D = C / H, n = nh / H, h = nh % H;
    const float scale = 1.0f / sqrtf((float)D);
    const float *q = qkv + ((size_t)n * 3 * C + (size_t)h * D) * P; /* (D, P) */
    const float *k = q + (size_t)C * P;
    const float *v = k + (size_t)C * P;
    float *pr = probs + (size_t)nh * P * P; /* (P, P) */
    float *yh = y + ((size_t)n * C + (size_t)h * D) * P; /* (D, P) */
    /* S = scale Q^T K */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, P, D, scale, q, P, k, P, 0.0f, pr, P);
    softmax_rows(pr, P);
    /* Y = V probs^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, D, P, P, 1.0f, v, P, pr, P, 0.0f, yh, P);
}

/* multiply-adds of the forward's two products, all heads (for dd_cpu_blas_small_begin) */
static double attn_macs(const dd_attn_shape *s) {
    return 2.0 * s->N * s->C * (double)s->P * s->P;
}

int dd_cpu_attention_forward(float *y, float *probs, const float *qkv, const dd_attn_shape *s) {
    const int jobs = s->N * s->heads;
    int nt = dd_cpu_batch_threads(jobs);
    if (nt == 1) {
        const int small = dd_cpu_blas_small_begin(attn_macs(s));
        for (int nh = 0; nh < jobs; nh++) forward_one(y, probs, qkv, s, nh);
        dd_cpu_blas_small_end(small);
        return 0;
    }
    int prev = dd_cpu_blas_single_begin();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int nh = 0; nh < jobs; nh++) forward_one(y, probs, qkv, s, nh);
    dd_cpu_blas_single_end(prev);
    return 0;
}

static void backward_one(float *dqkv, const float *dy, const float *qkv, const float *probs,
                         const dd_attn_shape *s, int nh, float *dS) {
    const int C = s->C, P = s->P, H = s->heads, D = C / H, n = nh / H, h = nh % H;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t off = ((size_t)n * 3 * C + (size_t)h * D) * P, cp = (size_t)C * P;
    const float *q = qkv + off, *k = q + cp, *v = k + cp;
    float *dq = dqkv + off, *dk = dq + cp, *dv = dk + cp;
    const float *pr = probs + (size_t)nh * P * P;
    const float *dyh = dy + ((size_t)n * C + (size_t)h * D) * P;
    /* dP (P, P) = dY^T V */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, P, D, 1.0f, dyh, P, v, P, 0.0f, dS, P);
    /* dV (D, P) += dY probs */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, D, P, P, 1.0f, dyh, P, pr, P, 1.0f, dv,
                P);
    /* dS = probs * (dP - sum_j probs dP), in place */
    for (int i = 0; i < P; i++) {
        float *r = dS + (size_t)i * P;
        const float *pi = pr + (size_t)i * P;
        double dot = 0.0;
        for (int j = 0; j < P; j++) dot += (double)pi[j] * r[j];
        const float d = (float)dot;
        for (int j = 0; j < P; j++) r[j] = pi[j] * (r[j] - d);
    }
    /* dQ (D, P) += scale K dS^T;  dK (D, P) += scale Q dS */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, D, P, P, scale, k, P, dS, P, 1.0f, dq, P);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, D, P, P, scale, q, P, dS, P, 1.0f, dk,
                P);
}

int dd_cpu_attention_backward(float *dqkv, const float *dy, const float *qkv, const float *probs,
                              const dd_attn_shape *s, void *ws) {
    if (!dqkv) return 0;
    const int jobs = s->N * s->heads;
    const size_t slot = pp_bytes(s);
    int nt = dd_cpu_batch_threads(jobs);
    if (nt == 1) {
        const int small = dd_cpu_blas_small_begin(2.0 * attn_macs(s));
        for (int nh = 0; nh < jobs; nh++) backward_one(dqkv, dy, qkv, probs, s, nh, (float *)ws);
        dd_cpu_blas_small_end(small);
        return 0;
    }
    int prev = dd_cpu_blas_single_begin();
#pragma omp parallel num_threads(nt)
    {
        float *dS = (float *)((char *)ws + (size_t)omp_get_thread_num() * slot);
#pragma omp for schedule(static)
        for (int nh = 0; nh < jobs; nh++) backward_one(dqkv, dy, qkv, probs, s, nh, dS);
    }
    dd_cpu_blas_single_end(prev);
    return 0;
}
