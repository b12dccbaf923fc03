/* The backend interface: memory and every op, forward and backward, with one signature shared by
 * cpu/ (dd_cpu_backend) and cuda/ (dd_cuda_backend). Only the graph executor and the diffusion
 * host code call through it; tests call the same entries on both backends and compare.
 *
 * Conventions (as llm.c):
 * - Argument order: outputs, then inputs and weights, then sizes/shape struct, then workspace.
 * - Every pointer is backend memory (host memory for cpu, device memory for cuda), except the
 *   host side of the transfers (to_device, to_host, to_device_async) and host_alloc's memory.
 * - Nothing that changes from step to step is passed by value to the ops a training or sampling
 *   step is made of: steps, noise offsets and coefficients are read from backend memory (see
 *   "state that lives in backend memory" below), so a step can be recorded once and replayed.
 * - Forward writes its outputs (=). Backward ADDS into every gradient it is given (+=), so a
 *   tensor used twice sums for free; a NULL gradient pointer means "not needed, skip".
 * - Every entry returns 0, or -1 after dd_error(...) (only the CUDA backend can fail at run time;
 *   shapes are validated when the graph is built, not here).
 *
 * Shape letters: N batch, C channels, H, W spatial, HW = H*W, P positions, K kernel size,
 * G groups, D head dimension. Tensors are float32 NCHW, weights in PyTorch layouts.
 */
#ifndef DIFFUSION_BACKEND_H
#define DIFFUSION_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DD_ACT_RELU,
    DD_ACT_SWISH,     /* x * sigmoid(x), PyTorch's silu */
    DD_ACT_GELU_TANH, /* 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))): Flux's gelu */
    DD_ACT_GELU_ERF,  /* 0.5x(1 + erf(x/sqrt 2)): PyTorch's default gelu */
    DD_ACT_COUNT
} dd_act;

/* conv2d: x (N, Cin, H, W), w (Cout, Cin, K, K), b (Cout) or NULL -> y (N, Cout, Ho, Wo),
 * Ho = (H + 2 pad - K) / stride + 1. */
typedef struct {
    int N, Cin, H, W, Cout, K, stride, pad, Ho, Wo;
} dd_conv_shape;

/* group_norm: x (N, C, HW), gamma/beta (C), add (N, C) or NULL, res (N, C, HW) or NULL,
 * per-sample per-group statistics mean/rstd (N, G).
 * y = act(gamma * (x - mean) * rstd + beta + add) + res, act = swish if swish else identity:
 * res is a ResBlock's skip, added after the activation. Variance is biased (as PyTorch), eps
 * inside the square root. */
typedef struct {
    int N, C, HW, G, swish;
    float eps;
    /* batch strides in floats (0: C*HW, packed): image n of x and dx starts at n*xs, of res and
     * dres at n*rs; y and dy are always packed. A ResBlock whose skip convolution is merged with
     * its first one (models/blocks.c) reads both halves of that convolution's output this way. */
    size_t xs, rs;
} dd_gn_shape;

/* the batch strides of a group norm's x and res, with 0 resolved to the packed C*HW */
static inline size_t dd_gn_xs(const dd_gn_shape *s) { return s->xs ? s->xs : (size_t)s->C * s->HW; }
static inline size_t dd_gn_rs(const dd_gn_shape *s) { return s->rs ? s->rs : (size_t)s->C * s->HW; }

/* attention: qkv (N, 3C, P) from one conv; heads split C into D = C/heads channels:
 * q[n,h,d,p] = qkv[n, h*D + d, p], k = qkv[n, C + h*D + d, p], v = qkv[n, 2C + h*D + d, p].
 * probs (N, heads, P, P) = softmax_j(sum_d q[.,d,i] k[.,d,j] / sqrt(D)), saved for backward.
 * y[n, h*D + d, i] = sum_j probs[n,h,i,j] v[n,h,d,j]  -> y (N, C, P).
 * probs_unread: no backward follows (a forward-only graph), so the forward may leave probs as
 * it likes (a backend that needs it as scratch still gets the buffer; one that does not may skip
 * writing it: 9.8 MB a call at batch 256 in the UNet's middle attention). */
typedef struct {
    int N, C, heads, P;
    int probs_unread;
} dd_attn_shape;

/* A Philox address (include/diffusion/philox.h) that may depend on a counter in backend memory:
 * offset + (*k) * stride when k is not NULL, else offset (dd_rng_at_offset). */
typedef struct {
    uint64_t seed, stream, offset;
    const int64_t *k; /* backend memory or NULL */
    uint64_t stride;
} dd_rng_at;

/* The sampler's per-step row (sampler_step): ea, eb, ra, rb, c0, c1, c2, sigma. */
enum { DD_SAMPLER_EA, DD_SAMPLER_EB, DD_SAMPLER_RA, DD_SAMPLER_RB, DD_SAMPLER_C0, DD_SAMPLER_C1,
       DD_SAMPLER_C2, DD_SAMPLER_SIGMA, DD_SAMPLER_COLS };

#define DD_DENSE_GROUP_MAX 16
#define DD_DENSE_GROUP_ACT_CIN 1024

typedef struct dd_backend {
    const char *name; /* "cpu" or "cuda" */

    /* memory */
    int (*alloc)(void **p, size_t bytes); /* zero-filled; clear message on out-of-memory */
    void (*free)(void *p);
    int (*zero)(void *p, size_t bytes);
    int (*to_device)(void *dst, const void *host_src, size_t bytes);
    int (*to_host)(void *host_dst, const void *src, size_t bytes);
    int (*copy)(void *dst, const void *src, size_t bytes); /* within the backend */
    int (*synchronize)(void);
    /* Host memory the device reads directly (page-locked on CUDA, plain on the CPU), and a copy
     * from it that only queues: to_device_async returns at once, and src must stay unchanged
     * until the backend has caught up (synchronize, or a to_host, which waits for everything
     * queued before it). The trainer uploads the next batch this way while a step runs. */
    int (*host_alloc)(void **p, size_t bytes);
    void (*host_free)(void *p);
    int (*to_device_async)(void *dst, const void *host_src, size_t bytes);

    /* conv2d; backward: dx (may be NULL), dw, db (may be NULL) */
    size_t (*conv2d_workspace)(const dd_conv_shape *s); /* bytes, forward and backward */
    int (*conv2d_forward)(float *y, const float *x, const float *w, const float *b,
                          const dd_conv_shape *s, void *ws);
    int (*conv2d_backward)(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, const dd_conv_shape *s, void *ws);

    /* dense: x (N, Cin) (any trailing dims flattened, C-order), w (Cout, Cin), b (Cout) or NULL
     * -> y (N, Cout) */
    int (*dense_forward)(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                         int Cout);
    int (*dense_backward)(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int Cin, int Cout);
    /* several dense layers of the same x in one call (the UNet's blocks each project the one
     * time embedding; a GPU runs them as one kernel instead of one launch each): for l < count
     * (1 to DD_DENSE_GROUP_MAX), y[l] (N, cout[l]) = x w[l]^T + b[l], each exactly as
     * dense_forward; b NULL (no layer has a bias) or b[l] NULL (layer l has none). */
    int (*dense_group_forward)(int count, float *const *y, const float *x, const float *const *w,
                               const float *const *b, int N, int Cin, const int *cout);
    /* the same of act(x) (may be NULL), for Cin up to DD_DENSE_GROUP_ACT_CIN: every input goes
     * through dd_act_apply (kernels.h) as it is read, so y is exactly act_forward's output fed
     * to dense_group_forward; a forward-only graph runs an activation read only by dense
     * layers this way (the time MLP's gelu, the swish before the blocks' projections), without
     * its own launch and pass over memory */
    int (*dense_group_act_forward)(int count, float *const *y, const float *x, dd_act act,
                                   const float *const *w, const float *const *b, int N, int Cin,
                                   const int *cout);
    /* the same group's backward (may be NULL): for each l, dense_backward's dw[l] += and db[l]
     * += (dw, db NULL or entries NULL: not wanted), and dx (may be NULL) += the sum over l of
     * dy[l] w[l]; a backend may add the layers' parts into dx in one sum, so its rounding may
     * differ from count dense_backward calls (the CPU's are those calls, in order l = 0, 1..) */
    int (*dense_group_backward)(int count, float *dx, float *const *dw, float *const *db,
                                const float *const *dy, const float *x, const float *const *w,
                                int N, int Cin, const int *cout);

    /* group_norm with optional per-channel add, swish and residual fused (see dd_gn_shape) */
    int (*group_norm_forward)(float *y, float *mean, float *rstd, const float *x,
                              const float *gamma, const float *beta, const float *add,
                              const float *res, const dd_gn_shape *s);
    /* backward: dx, dgamma, dbeta, dadd, dres each NULL when not wanted (dres += dy);
     * ws: group_norm_workspace(s) bytes (may be NULL when that is 0; a backend may also accept
     * NULL and run slower) */
    size_t (*group_norm_workspace)(const dd_gn_shape *s); /* bytes, backward */
    /* optional (NULL: nothing to do): called by planning for every group norm of a graph, before
     * any capture, with whether the forward gets an add and a res. The CUDA backend chooses the
     * forward's launch configuration for the shape there (it times them: DIFFUSION_GN). */
    int (*group_norm_prepare)(const dd_gn_shape *s, int has_add, int has_res);
    int (*group_norm_backward)(float *dx, float *dgamma, float *dbeta, float *dadd, float *dres,
                               const float *dy, const float *x, const float *mean,
                               const float *rstd, const float *gamma, const float *beta,
                               const float *add, const dd_gn_shape *s, void *ws);

    /* elementwise activation over n values */
    int (*act_forward)(float *y, const float *x, size_t n, dd_act act);
    int (*act_backward)(float *dx, const float *dy, const float *x, size_t n, dd_act act);

    /* y = a + b over n values; backward adds dy into da and db */
    int (*add_forward)(float *y, const float *a, const float *b, size_t n);
    int (*add_backward)(float *da, float *db, const float *dy, size_t n);

    /* channel concat: a (N, Ca, HW), b (N, Cb, HW) -> y (N, Ca + Cb, HW) */
    int (*concat_forward)(float *y, const float *a, const float *b, int N, int Ca, int Cb, int HW);
    int (*concat_backward)(float *da, float *db, const float *dy, int N, int Ca, int Cb, int HW);

    /* nearest 2x upsample: x (N, C, H, W) -> y (N, C, 2H, 2W) */
    int (*upsample2x_forward)(float *y, const float *x, int N, int C, int H, int W);
    int (*upsample2x_backward)(float *dx, const float *dy, int N, int C, int H, int W);

    /* 2x2 max pool, stride 2, floor: x (N, C, H, W) -> y (N, C, H/2, W/2); backward routes dy
     * to the first maximum (row-major within the window), recomputed from x */
    int (*maxpool2x2_forward)(float *y, const float *x, int N, int C, int H, int W);
    int (*maxpool2x2_backward)(float *dx, const float *dy, const float *x, int N, int C, int H,
                               int W);

    /* multi-head attention core (see dd_attn_shape) */
    size_t (*attention_workspace)(const dd_attn_shape *s); /* bytes, backward */
    int (*attention_forward)(float *y, float *probs, const float *qkv, const dd_attn_shape *s);
    int (*attention_backward)(float *dqkv, const float *dy, const float *qkv, const float *probs,
                              const dd_attn_shape *s, void *ws);

    /* embedding lookup: table (rows, dim), idx (N) int32 in [base, base + rows) -> y (N, dim),
     * y[n] = table[idx[n] - base] (base 1: SPEC's timesteps 1..T address rows 0..T-1, so a
     * caller's t buffer is read as it is, without a shifted copy) */
    int (*embedding_forward)(float *y, const float *table, const int32_t *idx, int N, int rows,
                             int dim, int base);
    int (*embedding_backward)(float *dtable, const float *dy, const int32_t *idx, int N, int rows,
                              int dim, int base);

    /* mean squared error: loss[0] = mean((pred - target)^2) over n values;
     * backward: dpred += dloss[0] * 2 (pred - target) / n */
    int (*mse_forward)(float *loss, const float *pred, const float *target, size_t n);
    int (*mse_backward)(float *dpred, const float *dloss, const float *pred, const float *target,
                        size_t n);

    /* softmax cross-entropy: logits (N, K), labels (N) int32 -> loss[0] = mean over N of
     * -log softmax(logits)[label]; probs (N, K) saved. backward: dlogits += dloss[0] (probs -
     * onehot) / N */
    int (*xent_forward)(float *loss, float *probs, const float *logits, const int32_t *labels,
                        int N, int K);
    int (*xent_backward)(float *dlogits, const float *dloss, const float *probs,
                         const int32_t *labels, int N, int K);

    /* ---- state that lives in backend memory ----
     * The optimiser, the training draws and the sampler read their step from a counter in
     * backend memory (int64, see counter_add) instead of a host argument, so a whole training or
     * sampling step is the same sequence of calls every time and can be recorded once and
     * replayed (CUDA graphs) with no host round trip. `guard` (backend memory, may be NULL) is
     * the step's loss: when it is not finite, adam_update, ema_update and counter_add do nothing,
     * so a NaN step leaves parameters, averages and step counter as they were. */

    /* Adam (PyTorch's, no weight decay), step t = *step + 1:
     * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
     * b1, b2 in double: 1 - b1 and 1 - b2 are rounded to float from double, as PyTorch does. */
    int (*adam_update)(float *p, float *m, float *v, const float *g, size_t n, float lr,
                       double b1, double b2, double eps, const int64_t *step, const float *guard);
    /* exponential moving average: ema = d ema + (1 - d) p, d = decay, or with step (backend
     * memory, may be NULL) the warm-up d = min(decay, (1 + s) / (10 + s)), s = *step
     * (dd_ema_warmup in kernels.h) */
    int (*ema_update)(float *ema, const float *p, size_t n, float decay, const int64_t *step,
                      const float *guard);
    /* *c += d (a single int64 in backend memory) */
    int (*counter_add)(int64_t *c, int64_t d, const float *guard);
    /* The start of a sampler step, one call: *k += 1 and *noff += dn (the step counter and the
     * step's noise address), then t[i] = ttab[*k] for i < n (the step's time, broadcast); all
     * in backend memory */
    int (*sampler_advance)(int64_t *k, int64_t *noff, int64_t dn, int32_t *t,
                           const int32_t *ttab, int n);

    /* ---- diffusion helpers (the host owns the maths, these are its per-element kernels) ---- */
    /* out[i] = dd_philox_normal(seed, stream, dd_rng_at_offset(at) + i) for i < n
     * (include/diffusion/philox.h), so the CPU and the GPU draw the same noise for the same
     * address. */
    int (*normal)(float *out, size_t n, dd_rng_at at);
    /* A training batch's draws, N samples, o = dd_rng_at_offset(at):
     * t[i] = 1 + dd_philox_below(seed, stream, o + i, T) (uniform in 1..T); with lab_in (may be
     * NULL) lab_out[i] = generic if dd_philox_uniform(seed, stream, o + N + i) < p_uncond, else
     * lab_in[i]. */
    int (*train_draw)(int32_t *t, int32_t *lab_out, const int32_t *lab_in, int N, int T,
                      float p_uncond, int32_t generic, dd_rng_at at);
    /* per sample s (N of them, `per` values each): xt = ca[j] x0 + cb[j] noise, j = idx[s] when
     * idx (backend memory) is given (a table indexed by time step), else j = s */
    int (*q_sample)(float *xt, const float *x0, const float *noise, const float *ca,
                    const float *cb, const int32_t *idx, int N, size_t per);
    /* One sampler step for the whole batch, in place on x (n values), its scalars read from row
     * *k of tab (k in backend memory; DD_SAMPLER_COLS floats a row):
     *   pred = out, or with guidance (uncond not NULL) uncond + g (out - uncond);
     *   eps  = ea x + eb pred                (the objective's conversion; eps: ea 0, eb 1);
     *   x0   = ra x - rb eps, clamped to [-1, 1] when clip; x0_out (may be NULL) receives it;
     *   x    = c0 x0 + c1 x + c2 eps + sigma z, z = dd_philox_normal at dd_rng_at_offset(at)
     *          + i; no noise when sigma == 0.
     * DDPM: c0 = coef1, c1 = coef2, c2 = 0, sigma = sqrt(post var) (0 at t = 1).
     * DDIM: c0 = sqrt(abar_next), c1 = 0, c2 = sqrt(1 - abar_next - sigma^2). */
    int (*sampler_step)(float *x, float *x0_out, const float *out, const float *uncond, size_t n,
                        float g, int clip, const float *tab, const int64_t *k, dd_rng_at at);
} dd_backend;

extern const dd_backend dd_cpu_backend;

/* What the CPU backend's speed depends on, in one line for a benchmark's header: the processor's
 * model name, the threads (OpenMP's: OMP_NUM_THREADS) of the processors, OpenBLAS's build and
 * kernel (openblas_get_config), and the widest of the vector loops' clones the processor runs
 * (cpu/cpu_simd.h). */
void dd_cpu_describe(char *buf, size_t n);

/* The CUDA backend, or NULL with a message (built without CUDA, no GPU, no cuDNN). */
const dd_backend *dd_cuda_backend(void);

/* "cpu", "cuda" or "auto" (the GPU when there is one, else the CPU). */
const dd_backend *dd_backend_by_name(const char *name);

#ifdef __cplusplus
}
#endif
#endif
