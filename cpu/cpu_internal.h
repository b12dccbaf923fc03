/* Private to cpu/: the op functions that cpu_backend.c puts in dd_cpu_backend, and the helpers
 * that decide how work is spread over threads.
 *
 * Threading: OpenMP across the batch (or batch x heads, or channels) where each item is big
 * enough, OpenBLAS sgemm for the heavy products. OpenBLAS is the pthread build, which does not
 * see OpenMP: inside a batch-parallel region it is set to one thread (and restored after), and
 * when the batch is smaller than the thread count the items run one after another and sgemm
 * uses its own threads instead. Workspace is cut into per-thread "slots"; the slot count depends
 * only on the shape and omp_get_num_procs(), so the size asked at plan time always covers the
 * threads used at run time (min(slots, omp_get_max_threads()), thread i uses slot i). */
#ifndef DD_CPU_INTERNAL_H
#define DD_CPU_INTERNAL_H

#include <omp.h>
#include <stddef.h>
#include <stdint.h>

#include "diffusion/backend.h"

/* Workspace slices are rounded up to this many bytes so every slice starts 64-byte aligned. */
#define DD_CPU_ALIGN 64
static inline size_t dd_cpu_round(size_t bytes) {
    return (bytes + DD_CPU_ALIGN - 1) / DD_CPU_ALIGN * DD_CPU_ALIGN;
}

/* Slots needed for `jobs` independent items: never more than the processors. */
static inline int dd_cpu_slots(int64_t jobs) {
    int p = omp_get_num_procs();
    if (p < 1) p = 1;
    if (jobs < 1) jobs = 1;
    return jobs < p ? (int)jobs : p;
}

/* Threads to run `jobs` items in parallel with, or 1 when they should run one after another
 * (fewer items than threads: then each sgemm gets all the threads). */
static inline int dd_cpu_batch_threads(int64_t jobs) {
    int t = omp_get_max_threads();
    int s = dd_cpu_slots(jobs);
    if (t > s) t = s;
    if (jobs < omp_get_max_threads()) t = 1;
    return t < 1 ? 1 : t;
}

/* OpenBLAS thread control around a batch-parallel region (declared by OpenBLAS's cblas.h). */
int dd_cpu_blas_single_begin(void); /* returns the previous thread count */
void dd_cpu_blas_single_end(int prev);

/* Products run outside a batch-parallel region (a batch smaller than the thread count) take
 * OpenBLAS's own threads only above DD_CPU_BLAS_THREADED_MACS multiply-adds in the op: below, the
 * threads' wake-ups cost more than they give, and OpenBLAS's and OpenMP's spinning threads fight
 * over the cores (session 15, 2 cores: a training step at batch 1 took 23 ms with them, 9 ms
 * without; the attention forward 2.4 ms instead of 34 us). dd_cpu_blas_small_begin returns what
 * dd_cpu_blas_small_end needs. */
#define DD_CPU_BLAS_THREADED_MACS 8e6
static inline int dd_cpu_blas_small_begin(double macs) {
    return macs < DD_CPU_BLAS_THREADED_MACS ? dd_cpu_blas_single_begin() : -1;
}
static inline void dd_cpu_blas_small_end(int prev) {
    if (prev >= 0) dd_cpu_blas_single_end(prev);
}

/* Elementwise loops switch OpenMP on only above this size: below it the fork costs more. */
#define DD_CPU_PAR_MIN 32768

/* ---- ops (signatures as in dd_backend) ---- */
size_t dd_cpu_conv2d_workspace(const dd_conv_shape *s);
int dd_cpu_conv2d_forward(float *y, const float *x, const float *w, const float *b,
                          const dd_conv_shape *s, void *ws);
int dd_cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, const dd_conv_shape *s, void *ws);

/* multiply-adds of a convolution's forward (cpu_conv.c) */
double dd_cpu_conv_macs(const dd_conv_shape *s);
/* db[o] += the sum of dy over channel o's positions (cpu_conv.c; both ways' backward) */
void dd_cpu_conv_db_channel(float *db, const float *dy, const dd_conv_shape *s, int o);

/* Winograd F(2x2, 3x3) (cpu_winograd.c), used by the conv2d functions above for each part
 * (forward, dx, dw) that dd_cpu_wino_chosen picks (-1 with the error set for a bad
 * DIFFUSION_CPU_CONV); its workspace is within dd_cpu_conv2d_workspace. dd_cpu_wino_backward
 * takes any of dx, dw, db NULL. */
enum { DD_WINO_FORWARD, DD_WINO_DX, DD_WINO_DW };
int dd_cpu_wino_shape(const dd_conv_shape *s);
int dd_cpu_wino_chosen(const dd_conv_shape *s, int what);
size_t dd_cpu_wino_workspace(const dd_conv_shape *s);
int dd_cpu_wino_forward(float *y, const float *x, const float *w, const float *b,
                        const dd_conv_shape *s, void *ws);
int dd_cpu_wino_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, const dd_conv_shape *s, void *ws);

int dd_cpu_dense_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                         int Cout);
int dd_cpu_dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int Cin, int Cout);
int dd_cpu_dense_group_forward(int count, float *const *y, const float *x, const float *const *w,
                               const float *const *b, int N, int Cin, const int *cout);
int dd_cpu_dense_group_backward(int count, float *dx, float *const *dw, float *const *db,
                                const float *const *dy, const float *x, const float *const *w,
                                int N, int Cin, const int *cout);

int dd_cpu_group_norm_forward(float *y, float *mean, float *rstd, const float *x,
                              const float *gamma, const float *beta, const float *add,
                              const float *res, const dd_gn_shape *s);
size_t dd_cpu_group_norm_workspace(const dd_gn_shape *s);
int dd_cpu_group_norm_backward(float *dx, float *dgamma, float *dbeta, float *dadd,
                               float *dres, const float *dy, const float *x, const float *mean,
                               const float *rstd, const float *gamma, const float *beta,
                               const float *add, const dd_gn_shape *s, void *ws);

int dd_cpu_act_forward(float *y, const float *x, size_t n, dd_act act);
int dd_cpu_act_backward(float *dx, const float *dy, const float *x, size_t n, dd_act act);
int dd_cpu_add_forward(float *y, const float *a, const float *b, size_t n);
int dd_cpu_add_backward(float *da, float *db, const float *dy, size_t n);
int dd_cpu_concat_forward(float *y, const float *a, const float *b, int N, int Ca, int Cb, int HW);
int dd_cpu_concat_backward(float *da, float *db, const float *dy, int N, int Ca, int Cb, int HW);
int dd_cpu_upsample2x_forward(float *y, const float *x, int N, int C, int H, int W);
int dd_cpu_upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W);
int dd_cpu_maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W);
int dd_cpu_maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H,
                               int W);
int dd_cpu_embedding_forward(float *y, const float *table, const int32_t *idx, int N, int rows,
                             int dim, int base);
int dd_cpu_embedding_backward(float *dtable, const float *dy, const int32_t *idx, int N, int rows,
                              int dim, int base);

size_t dd_cpu_attention_workspace(const dd_attn_shape *s);
int dd_cpu_attention_forward(float *y, float *probs, const float *qkv, const dd_attn_shape *s);
int dd_cpu_attention_backward(float *dqkv, const float *dy, const float *qkv, const float *probs,
                              const dd_attn_shape *s, void *ws);

int dd_cpu_mse_forward(float *loss, const float *pred, const float *target, size_t n);
int dd_cpu_mse_backward(float *dpred, const float *dloss, const float *pred, const float *target,
                        size_t n);
int dd_cpu_xent_forward(float *loss, float *probs, const float *logits, const int32_t *labels,
                        int N, int K);
int dd_cpu_xent_backward(float *dlogits, const float *dloss, const float *probs,
                         const int32_t *labels, int N, int K);

int dd_cpu_adam_update(float *p, float *m, float *v, const float *g, size_t n, float lr,
                       double b1, double b2, double eps, const int64_t *step, const float *guard);
int dd_cpu_ema_update(float *ema, const float *p, size_t n, float decay, const int64_t *step,
                      const float *guard);
int dd_cpu_counter_add(int64_t *c, int64_t d, const float *guard);
int dd_cpu_sampler_advance(int64_t *k, int64_t *noff, int64_t dn, int32_t *t, const int32_t *ttab,
                           int n);

int dd_cpu_normal(float *out, size_t n, dd_rng_at at);
int dd_cpu_train_draw(int32_t *t, int32_t *lab_out, const int32_t *lab_in, int N, int T,
                      float p_uncond, int32_t generic, dd_rng_at at);
int dd_cpu_q_sample(float *xt, const float *x0, const float *noise, const float *ca,
                    const float *cb, const int32_t *idx, int N, size_t per);
int dd_cpu_sampler_step(float *x, float *x0_out, const float *out, const float *uncond, size_t n,
                        float g, int clip, const float *tab, const int64_t *k,
                        dd_rng_at at);

#endif
