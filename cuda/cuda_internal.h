/* Private to cuda/: the one CUDA context every op uses (stream, cuDNN and cuBLAS handles, the
 * TF32 switch), the checked-call macros, and the launchers that cuda_kernels.cu exports to the C
 * files (cuda_backend.c, cuda_dnn.c).
 *
 * Everything runs on one non-blocking stream, set on both library handles, so a sequence of ops
 * is ordered without device-wide synchronisation and can be captured as one CUDA graph.
 * Shape letters as in include/diffusion/backend.h. */
#ifndef DD_CUDA_INTERNAL_H
#define DD_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

/* a kernel's dynamic shared memory (the CPU emulation in tests/emu defines its own) */
#ifndef DD_DYNAMIC_SHARED
#define DD_DYNAMIC_SHARED(T, name) extern __shared__ __align__(16) T name[]
#endif

#include "diffusion/backend.h"
#include "diffusion/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The backend's stream (created by dd_cuda_backend()); every launch and library call uses it. */
extern cudaStream_t dd_cuda_stream;

/* 1 when tensor-core TF32 math is allowed for cuDNN and cuBLAS (env DIFFUSION_TF32=0 turns it
 * off at start; dd_cuda_set_tf32 at run time). */
extern int dd_cuda_tf32_on;

/* The file name without its folders (CMake passes absolute paths, which would say nothing
 * useful and leak the build machine's layout into messages). */
const char *dd_cuda_base(const char *path);

/* A failed CUDA runtime call: "file:line: call: message", returns -1. */
int dd_cuda_fail(const char *file, int line, const char *call, cudaError_t err);
/* After a sticky error (a fault in a kernel: the CUDA context is lost): what was running, which
 * every later dd_cuda_fail message names (the first note stays). */
void dd_cuda_note_fault(const char *what);

#define DD_CUDA_CHECK(call)                                                                       \
    do {                                                                                          \
        cudaError_t dd_err_ = (call);                                                             \
        if (dd_err_ != cudaSuccess) return dd_cuda_fail(__FILE__, __LINE__, #call, dd_err_);      \
    } while (0)

/* After a kernel launch: a bad configuration is reported at once (no synchronisation). */
#define DD_CUDA_LAUNCHED(name)                                                                    \
    do {                                                                                          \
        cudaError_t dd_err_ = cudaGetLastError();                                                 \
        if (dd_err_ != cudaSuccess)                                                               \
            return dd_cuda_fail(__FILE__, __LINE__, "launching " name, dd_err_);                  \
    } while (0)

/* ---- launchers in cuda_kernels.cu (signatures as in dd_backend unless noted) ---- */
int dd_cuda_act_forward(float *y, const float *x, size_t n, dd_act act);
int dd_cuda_act_backward(float *dx, const float *dy, const float *x, size_t n, dd_act act);
int dd_cuda_add_forward(float *y, const float *a, const float *b, size_t n);
int dd_cuda_add_backward(float *da, float *db, const float *dy, size_t n);
int dd_cuda_concat_forward(float *y, const float *a, const float *b, int N, int Ca, int Cb, int HW);
int dd_cuda_concat_backward(float *da, float *db, const float *dy, int N, int Ca, int Cb, int HW);
int dd_cuda_upsample2x_forward(float *y, const float *x, int N, int C, int H, int W);
int dd_cuda_upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W);
int dd_cuda_maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W);
int dd_cuda_maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H,
                                int W);
int dd_cuda_embedding_forward(float *y, const float *table, const int32_t *idx, int N, int rows,
                              int dim, int base);
int dd_cuda_embedding_backward(float *dtable, const float *dy, const int32_t *idx, int N, int rows,
                               int dim, int base);

int dd_cuda_group_norm_forward(float *y, float *mean, float *rstd, const float *x,
                               const float *gamma, const float *beta, const float *add,
                               const float *res, const dd_gn_shape *s);
size_t dd_cuda_group_norm_workspace(const dd_gn_shape *s);
int dd_cuda_group_norm_prepare(const dd_gn_shape *s, int has_add, int has_res);
int dd_cuda_group_norm_backward(float *dx, float *dgamma, float *dbeta, float *dadd,
                                float *dres, const float *dy, const float *x, const float *mean,
                                const float *rstd, const float *gamma, const float *beta,
                                const float *add, const dd_gn_shape *s, void *ws);

int dd_cuda_mse_forward(float *loss, const float *pred, const float *target, size_t n);
int dd_cuda_mse_backward(float *dpred, const float *dloss, const float *pred, const float *target,
                         size_t n);
int dd_cuda_xent_forward(float *loss, float *probs, const float *logits, const int32_t *labels,
                         int N, int K);
int dd_cuda_xent_backward(float *dlogits, const float *dloss, const float *probs,
                          const int32_t *labels, int N, int K);

int dd_cuda_adam_update(float *p, float *m, float *v, const float *g, size_t n, float lr,
                        double b1, double b2, double eps, const int64_t *step,
                        const float *guard);
int dd_cuda_ema_update(float *ema, const float *p, size_t n, float decay, const int64_t *step,
                       const float *guard);
int dd_cuda_counter_add(int64_t *c, int64_t d, const float *guard);
int dd_cuda_sampler_advance(int64_t *k, int64_t *noff, int64_t dn, int32_t *t, const int32_t *ttab,
                            int n);

/* For tests: fills every SM's shared memory with NaN (blocks of the largest shared memory a
 * block may have, two an SM), so that a later kernel that reads shared memory it never wrote
 * sees NaN instead of some earlier kernel's finite leftovers. Shared memory is not cleared
 * between kernels of one context, so this usually holds; nothing guarantees it. 0 or -1. */
int dd_cuda_poison_shared(void);

/* Whether this build holds code the GPU can run: cudaSuccess, or the error of asking for one
 * kernel's attributes (cudaErrorNoKernelImageForDevice when none of the architectures it was
 * built for fits the device). Every kernel in cuda/ is built for the same architectures. */
cudaError_t dd_cuda_kernel_image(void);

int dd_cuda_normal(float *out, size_t n, dd_rng_at at);
int dd_cuda_train_draw(int32_t *t, int32_t *lab_out, const int32_t *lab_in, int N, int T,
                       float p_uncond, int32_t generic, dd_rng_at at);
int dd_cuda_q_sample(float *xt, const float *x0, const float *noise, const float *ca,
                     const float *cb, const int32_t *idx, int N, size_t per);
int dd_cuda_sampler_step(float *x, float *x0_out, const float *out, const float *uncond, size_t n,
                         float g, int clip, const float *tab, const int64_t *k,
                        dd_rng_at at);

/* Helpers for the library-call ops in cuda_dnn.c:
 * y (R, Ccols) row-major: every row = b (Ccols)   [dense bias before the GEMM accumulates]
 * colsum: out[c] += sum over r of m[r, c], m (R, Ccols) row-major   [dense bias gradient]
 * dense_small: y (N, Cout) = x (N, Cin) w^T + b (b may be NULL) in one kernel, FP32 FMA, for
 *   Cin <= DD_CUDA_DENSE_SMALL_CIN (a warp per row and 16 outputs)
 * softmax_rows: in place over `rows` rows of length L
 * softmax_rows_backward: d (rows, L) holds dL/dprobs on entry and dL/dscores on return:
 *   d = p (d - sum_j d p) */
#define DD_CUDA_DENSE_SMALL_CIN 1024
int dd_cuda_dense_small_forward(float *y, const float *x, const float *w, const float *b, int N,
                                int Cin, int Cout);
/* dense_group_small: dense_small for count layers of the same x in one kernel (the backend's
 * dense_group_forward), of dd_act_apply(x, act) when act >= 0 (dense_group_act_forward) */
int dd_cuda_dense_group_small_forward(int count, float *const *y, const float *x, int act,
                                      const float *const *w, const float *const *b, int N, int Cin,
                                      const int *cout);
#if DD_CUDA_DENSE_SMALL_CIN < DD_DENSE_GROUP_ACT_CIN
#error "the dense group's activation needs the one-kernel forward up to DD_DENSE_GROUP_ACT_CIN"
#endif
/* dense_small_backward: dx += dy w, dw += dy^T x, db += column sums of dy (any may be NULL) in
 * one kernel, FP32, for Cin and Cout up to DD_CUDA_DENSE_SMALL_BWD and N up to
 * DD_CUDA_DENSE_SMALL_BWD_N */
#define DD_CUDA_DENSE_SMALL_BWD 256
#define DD_CUDA_DENSE_SMALL_BWD_N 4096
int dd_cuda_dense_small_backward(float *dx, float *dw, float *db, const float *dy,
                                 const float *x, const float *w, int N, int Cin, int Cout);
/* dense_group_small_backward: dense_small_backward for count layers of one x in one kernel,
 * dx += the layers' parts summed first (the same limits, every layer) */
int dd_cuda_dense_group_small_backward(int count, float *dx, float *const *dw, float *const *db,
                                       const float *const *dy, const float *x,
                                       const float *const *w, int N, int Cin, const int *cout);
int dd_cuda_fill_rows(float *y, const float *b, int R, int Ccols);
int dd_cuda_colsum_add(float *out, const float *m, int R, int Ccols);
int dd_cuda_softmax_rows(float *p, int64_t rows, int L);
/* The attention forward in one kernel, FP32, a block per (sample, head), where _fits says the
 * head's q, k, v and y fit its shared memory; else the cuBLAS path in cuda_dnn.c */
int dd_cuda_attention_fused_fits(const dd_attn_shape *s);
int dd_cuda_attention_fused_forward(float *y, float *probs, const float *qkv,
                                    const dd_attn_shape *s);
int dd_cuda_softmax_rows_backward(float *d, const float *p, int64_t rows, int L);

/* ---- cuda_dnn.c: cuDNN and cuBLAS ops ---- */
int dd_cuda_dnn_init(void); /* creates the handles on dd_cuda_stream; 0 or -1 */
int dd_cuda_dnn_apply_math(void); /* re-applies dd_cuda_tf32_on to the cuBLAS handle */
size_t dd_cuda_conv2d_workspace(const dd_conv_shape *s);
int dd_cuda_conv_cudnn_algo(const dd_conv_shape *s, int dir); /* for tests: cuDNN's pick, or -1 */
int dd_cuda_conv2d_forward(float *y, const float *x, const float *w, const float *b,
                           const dd_conv_shape *s, void *ws);
int dd_cuda_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, const dd_conv_shape *s, void *ws);
int dd_cuda_dense_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                          int Cout);
int dd_cuda_dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, int N, int Cin, int Cout);
int dd_cuda_dense_group_forward(int count, float *const *y, const float *x, const float *const *w,
                                const float *const *b, int N, int Cin, const int *cout);
int dd_cuda_dense_group_act_forward(int count, float *const *y, const float *x, dd_act act,
                                    const float *const *w, const float *const *b, int N, int Cin,
                                    const int *cout);
int dd_cuda_dense_group_backward(int count, float *dx, float *const *dw, float *const *db,
                                 const float *const *dy, const float *x, const float *const *w,
                                 int N, int Cin, const int *cout);
size_t dd_cuda_attention_workspace(const dd_attn_shape *s);
int dd_cuda_attention_forward(float *y, float *probs, const float *qkv, const dd_attn_shape *s);
int dd_cuda_attention_backward(float *dqkv, const float *dy, const float *qkv, const float *probs,
                               const dd_attn_shape *s, void *ws);

/* 1 while dd_cuda_stream is being captured (then nothing may search, allocate or synchronise) */
int dd_cuda_capturing(void);

#ifdef __cplusplus
}
#endif

/* ======================================================================= own convolution kernels
 * cuda/cuda_conv.cu: implicit-GEMM convolutions, correct for every dd_conv_shape, in several
 * tile configurations per direction (FP32, and TF32 tensor-core ones); cuda_dnn.c chooses
 * between them and cuDNN.
 * Argument conventions as dd_backend's conv2d (backward ADDS, NULL = skip). */
#ifdef __cplusplus
extern "C" {
#endif

enum { DD_CONV_FWD, DD_CONV_BWD_DATA, DD_CONV_BWD_FILTER, DD_CONV_DIRS };

int dd_conv_own_configs(int dir);                          /* tile configurations of a direction */
const char *dd_conv_own_config_name(int dir, int cfg);     /* e.g. "64x64" (BM x BN) */
/* 1 when configuration cfg multiplies on TF32 tensor cores ("tc..."): only for TF32 on */
int dd_conv_own_config_tf32(int dir, int cfg);
/* 0 when configuration cfg would hand shape s to another configuration (the staged "st..." ones
 * cover stride-1 3x3 convolutions only): the autotuner skips it */
int dd_conv_own_config_applies(int dir, int cfg, const dd_conv_shape *s);
int dd_conv_own_default(int dir, const dd_conv_shape *s);  /* the untimed pick for a shape */
int dd_conv_own_default_tf32(int dir, const dd_conv_shape *s); /* the same among the tc ones */
int dd_conv_own_supported(const dd_conv_shape *s);         /* 1 when its sizes fit the kernels */
int dd_conv_own_prepare(void); /* reads the SM count; call outside any capture first */
/* How a split reduction's partials are summed: on (the default) by the last block of each output
 * tile to finish, off by a second kernel (also DIFFUSION_CONV_SPLIT_REDUCE=kernel, read by
 * dd_conv_own_prepare). The same sums in the same order either way. Returns the old setting. */
int dd_conv_own_set_fused_reduce(int on);
/* Whether the direct kernels (dc1, dc4, dc8) are autotuner candidates (on by default; off with
 * DIFFUSION_CUDA_OFF=direct-conv). Returns the old setting. */
int dd_conv_own_set_direct(int on);
/* y = conv(x, w) + b (b may be NULL); dx += conv^T(dy, w) (dx may be NULL); dw += (may be NULL),
 * db += (may be NULL). When the output alone has too few tiles to fill the GPU (always, for the
 * filter gradient), the reduction is split and the splits' partials use up to ws_bytes of ws (ws
 * NULL or small: fewer splits, or one, and no workspace). Results depend only on the shape, the
 * configuration, ws_bytes and the GPU's SM count (deterministic: no float atomics). */
int dd_conv_own_forward(int cfg, float *y, const float *x, const float *w, const float *b,
                        const dd_conv_shape *s, void *ws, size_t ws_bytes);
int dd_conv_own_backward_data(int cfg, float *dx, const float *dy, const float *w,
                              const dd_conv_shape *s, void *ws, size_t ws_bytes);
int dd_conv_own_backward_filter(int cfg, float *dw, float *db, const float *dy, const float *x,
                                const dd_conv_shape *s, void *ws, size_t ws_bytes);
/* out[0] = max |a - b| (infinity if any difference is NaN), out[1] = max |b| over n values;
 * dev8 is 8 bytes of device scratch. Synchronises: never during a capture. */
int dd_conv_maxdiff(float out[2], const float *a, const float *b, size_t n, void *dev8);
/* One thread busy for about `cycles` clocks on the stream: queued before timed calls, it lets the
 * host enqueue them all before they start, so events time the GPU and not the launches. */
int dd_conv_spin(long long cycles);
/* out[i] uniform in [-1, 1) from a hash of (seed, i): the autotuner's inputs */
int dd_conv_fill(float *out, size_t n, unsigned int seed);

/* cuda_dnn.c, for tests: from now on use the own kernels for every convolution (as
 * DIFFUSION_CONV=own) with these configurations per direction (-1: the default pick), and forget
 * every shape's earlier choice. Fails for a configuration out of range. */
int dd_cuda_conv_force_own(int fwd_cfg, int bwd_data_cfg, int bwd_filter_cfg);
/* cuda_kernels.cu, for tests: the group norm's launches as DIFFUSION_GN = policy ("auto": timed
 * per shape, "fixed", or a configuration's name: a forward one leaves the backward fixed and the
 * other way round), from now on; forgets every choice. */
int dd_cuda_gn_set_policy(const char *policy);
/* The name of group norm configuration i (the forward's, t..., then the backward's, b...), NULL
 * past the last. */
const char *dd_cuda_gn_config_name(int i);

/* As DIFFUSION_CONV = policy ("auto", "cudnn", "own", "own-tf32"), from now on; forgets every
 * choice. */
int dd_cuda_conv_set_policy(const char *policy);

#ifdef __cplusplus
}
#endif

#endif /* DD_CUDA_INTERNAL_H */
