/* GaussianDiffusion (../shared/SPEC.md): noise schedules, the forward process and the training
 * targets, the DDPM and DDIM samplers, classifier-free guidance. The host owns the maths; every
 * per-element operation goes through the backend (include/diffusion/backend.h), and the model is
 * any function behind a callback (dd_denoise_fn), so this file knows neither the graph nor CUDA.
 *
 * Time convention: SPEC's t runs 1..T (t = 1 is the last reverse step). Every schedule array has
 * T + 1 entries and is indexed by that t directly, so s->abar[t] is SPEC's abar_t; entry 0 holds
 * the t = 0 limit (beta 0, abar 1) and is never used by a sampler. The timesteps handed to a model
 * are these 1-based t; a model that looks rows up in a 0-based table uses row t - 1.
 *
 * Random numbers: every draw takes n consecutive Philox addresses (seed, stream, offset + i) and
 * then advances the offset by n (dd_rng), so a run is reproducible and the CPU and GPU backends
 * draw the same numbers.
 */
#ifndef DIFFUSION_DIFFUSION_H
#define DIFFUSION_DIFFUSION_H

#include <stddef.h>
#include <stdint.h>

#include "diffusion/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- schedules */

typedef enum {
    DD_SCHEDULE_LINEAR,  /* ends scaled by 1000/T, T evenly spaced betas */
    DD_SCHEDULE_COSINE,  /* s = 0.008, betas clamped to [0, 0.999] */
    DD_SCHEDULE_SIGMOID, /* lucidrains' sigmoid_beta_schedule(T, start=-3, end=3, tau=1) */
    DD_SCHEDULE_COUNT
} dd_schedule_kind;

#define DD_LINEAR_BETA_START 1e-4
#define DD_LINEAR_BETA_END 0.02

typedef struct {
    dd_schedule_kind kind;
    int T;
    double beta_start, beta_end; /* linear only, before the 1000/T scaling */
    /* Each array: T + 1 floats, index t = 1..T (entry 0: the t = 0 limit). Computed in double. */
    float *beta, *alpha, *abar, *abar_prev;
    float *sqrt_abar, *sqrt_one_minus_abar;     /* q_sample's ca, cb */
    float *sqrt_recip_abar, *sqrt_recipm1_abar; /* predict_x0's ra = sqrt(1/abar), rb */
    float *post_var;                            /* beta (1 - abar_prev) / (1 - abar); 0 at t = 1 */
    float *coef1, *coef2;                       /* posterior mean = coef1 x0 + coef2 x_t */
    double *abar64; /* abar in double, for coefficients the samplers derive per step (DDIM) */
} dd_schedule;

/* Build a schedule of T >= 1 steps. beta_start/beta_end are the linear schedule's ends before
 * scaling (<= 0: the defaults 1e-4 and 0.02; the 2-D example uses 8e-6 and 9e-5); the other kinds
 * ignore them. Free with dd_schedule_free (also safe on a zeroed or failed schedule). */
int dd_schedule_init(dd_schedule *s, dd_schedule_kind kind, int T, double beta_start,
                     double beta_end);
void dd_schedule_free(dd_schedule *s);
/* "linear", "cosine", "sigmoid" <-> kind; dd_schedule_kind_parse returns -1 with a message. */
const char *dd_schedule_kind_name(dd_schedule_kind kind);
int dd_schedule_kind_parse(const char *name, dd_schedule_kind *kind);

/* DDIM step times: reverse(floor(linspace(1, T, tau + 1))), tau + 1 values starting at T and
 * ending at 1 (consecutive pairs are the (t, t_next) steps). The floor is taken in exact integer
 * arithmetic, 1 + floor(i (T - 1) / tau): Julia's range gives these values, and numpy's
 * floor(linspace) does too except where its rounding puts an exact integer just below itself
 * (e.g. T = 31, tau = 22, i = 11: numpy 15, exact 16). times: tau + 1 ints. Refuses tau > T and tau < 1 with a message. */
int dd_ddim_times(int T, int tau, int *times);

/* ---------------------------------------------------------------- objectives */

/* What the model predicts. eps is the original's; v = sqrt(abar) eps - sqrt(1 - abar) x0. */
typedef enum { DD_OBJECTIVE_EPS, DD_OBJECTIVE_X0, DD_OBJECTIVE_V, DD_OBJECTIVE_COUNT } dd_objective;

const char *dd_objective_name(dd_objective obj);
int dd_objective_parse(const char *name, dd_objective *obj); /* "eps", "x0", "v" */

/* Per-sample coefficients of the linear maps below, from the schedule at time t (1..T):
 * target = a x0 + b noise;  eps = a x_t + b out;  x0 = a x_t + b out. */
void dd_target_coefs(const dd_schedule *s, dd_objective obj, int t, float *a, float *b);
void dd_output_to_eps_coefs(const dd_schedule *s, dd_objective obj, int t, float *a, float *b);
void dd_output_to_x0_coefs(const dd_schedule *s, dd_objective obj, int t, float *a, float *b);

/* Backend versions over a batch of B samples of `per` values (all pointers backend memory except
 * the host array t). coef: backend scratch of 2B floats; coef_host: host scratch of 2B floats.
 * dd_output_to_eps / dd_output_to_x0: convert a model output (B, per) at x_t into the eps or x0
 * estimate (dst may be `out` itself only for the eps objective, where it is a copy). */
int dd_output_to_eps(const dd_backend *be, const dd_schedule *s, dd_objective obj, float *eps,
                     const float *out, const float *xt, const int32_t *t, int B, size_t per,
                     float *coef, float *coef_host);
int dd_output_to_x0(const dd_backend *be, const dd_schedule *s, dd_objective obj, float *x0,
                    const float *out, const float *xt, const int32_t *t, int B, size_t per,
                    float *coef, float *coef_host);

/* ---------------------------------------------------------------- the model */

/* The model: out (B, per) = model(x (B, per), t, labels). Everything is backend memory: out, x,
 * t (B) and labels (B, or NULL for an unconditional model), so that a sampling step involves no
 * host round trip; the sampler keeps t in 1..T (SPEC's 1-based time) and the labels valid. A
 * callback is called with the same buffers at every step of a run, and on CUDA its calls may be
 * recorded and replayed (include/diffusion/replay.h): it must not read the host or synchronise.
 * Returns 0, or -1 after dd_error(). */
typedef int (*dd_denoise_fn)(void *ctx, float *out, const float *x, const int32_t *t,
                             const int32_t *labels, int B);

typedef struct {
    dd_denoise_fn fn;
    void *ctx;
    /* A number that changes whenever the buffers the model's calls use change (a model that
     * re-plans itself for another batch size), so that a sampling step recorded with the old
     * buffers is never replayed with the new ones; NULL: the buffers never change. */
    uint64_t (*version)(void *ctx);
    dd_objective objective;
    int num_classes;       /* 0: unconditional (labels are NULL); K: labels 0..K-1 */
    int32_t generic_label; /* the "unconditioned" label of a conditional model (usually K) */
} dd_denoiser;

/* A Philox address that advances: draw n values at (seed, stream, offset .. offset + n - 1),
 * then offset += n. */
typedef struct {
    uint64_t seed, stream, offset;
} dd_rng;

/* ---------------------------------------------------------------- sampling */

/* Called after every sampler step with backend pointers: x (B, per) is the new x (x_{t-1} for
 * DDPM, x at t_next for DDIM) and x0 (B, per) the (clipped) x0 estimate made at t. This is what
 * the reverse-process animation shows (p_sample_loop_all); at the last DDPM step they are equal.
 * step counts from 0; nsteps is T for DDPM, tau for DDIM. Copy with be->to_host. Return 0 to go
 * on, -1 (after dd_error) to stop the run with that error. */
typedef int (*dd_step_fn)(void *ctx, int step, int nsteps, int t, const float *x, const float *x0,
                          int B, size_t per);

typedef struct {
    int B;      /* samples */
    size_t per; /* values per sample (C*H*W, or 2 for points) */
    int clip;   /* clamp the x0 estimate to [-1, 1] (the original's default: on) */
    /* Labels, conditional models only: per sample (labels, B host values) or one for all (label,
     * used when labels is NULL and label >= 0). Neither on a conditional model: every sample
     * gets the generic label (unconditioned sampling). */
    const int32_t *labels;
    int32_t label;
    float guidance; /* g: eps = uncond + g (cond - uncond); 1 = plain conditional (one pass) */
    dd_rng rng;     /* x_T and every step's noise; advanced in place */
    dd_step_fn on_step; /* NULL: none */
    void *step_ctx;
    struct dd_sample_cache *cache; /* NULL: none (see dd_sample_cache) */
} dd_sample_opts;

/* Keeps a sampler's buffers and its recorded step (CUDA graph, include/diffusion/replay.h)
 * from one run to the next run of the same shape (backend, model callback and context, batch,
 * guidance on or off, number of steps): the batches of an FLD evaluation or a benchmark then
 * replay from their first step instead of recording again. Results do not depend on it. Free a
 * cache before the model it was used with. */
typedef struct dd_sample_cache dd_sample_cache;
dd_sample_cache *dd_sample_cache_new(void); /* NULL with a message when out of memory */
void dd_sample_cache_free(dd_sample_cache *c);

/* Defaults: clip on, no labels (label -1), guidance 1, seed 0 stream 0 offset 0, no callback,
 * no cache. */
dd_sample_opts dd_sample_opts_default(int B, size_t per);

/* DDPM p_sample_loop (and p_sample_loop_all through on_step): x_T ~ N(0, I), then T steps.
 * out: host (B, per), or NULL when on_step takes what it needs. */
int dd_sample_ddpm(const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                   dd_sample_opts *o, float *out);
/* DDIM with tau <= T steps (dd_ddim_times) and eta (0 deterministic, 1 DDPM-like); returns x at
 * t = 1, as SPEC. */
int dd_sample_ddim(const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                   dd_sample_opts *o, int tau, float eta, float *out);

/* A ready-made dd_step_fn (p_sample_loop_all): copies every step's x and x0 estimate to host
 * arrays, frame k = step k, each (B, per). Set be and the arrays (either may be NULL), with room
 * for nsteps frames (T for DDPM, tau for DDIM); frames counts the frames written. */
typedef struct {
    const dd_backend *be;
    float *xs;  /* host (nsteps, B, per) or NULL */
    float *x0s; /* host (nsteps, B, per) or NULL */
    int capacity; /* frames the arrays hold; a run with more steps is an error */
    int frames;
} dd_step_recorder;
int dd_step_record(void *recorder, int step, int nsteps, int t, const float *x, const float *x0,
                   int B, size_t per);

/* ---------------------------------------------------------------- training batches */

/* Everything one training step needs besides the model, allocated once (dd_train_batch_init)
 * for a batch of B samples of `per` values. All of it is backend memory and the per-step work
 * reads its step from backend memory, so making a batch involves no host round trip. */
typedef struct {
    const dd_backend *be;
    const dd_schedule *s;
    dd_objective objective;
    int B;
    size_t per;
    float *noise;    /* (B, per): z ~ N(0, I) */
    float *xt;       /* (B, per): q_sample(x0, t, z), the model's input */
    float *target;   /* (B, per): what the model must predict (z, x0 or v) */
    int32_t *t;      /* (B): 1..T, uniform */
    int32_t *labels; /* (B): the labels after dropping to the generic one */
    float *tab;      /* (4, T + 1): sqrt(abar), sqrt(1 - abar), the target's a and b, by t */
} dd_train_batch;

int dd_train_batch_init(dd_train_batch *tb, const dd_backend *be, const dd_schedule *s,
                        dd_objective obj, int B, size_t per);
void dd_train_batch_free(dd_train_batch *tb);
/* Philox addresses one batch uses: B for t, B for the label drops, B * per for z. */
uint64_t dd_train_batch_stride(const dd_train_batch *tb);
/* Draw t (uniform in 1..T per sample), z and, for a conditional model (labels != NULL), replace
 * each label by generic_label with probability prob_uncond (be->train_draw, be->normal); then
 * fill xt and target. x0 (B, per) and labels (B) or NULL: backend memory. At o =
 * dd_rng_at_offset(at): t at o + i, the drops at o + B + i, z at o + 2B + i, so consecutive
 * batches use at.stride = dd_train_batch_stride(tb). */
int dd_train_batch_make(dd_train_batch *tb, const float *x0, const int32_t *labels,
                        int32_t generic_label, float prob_uncond, dd_rng_at at);

#ifdef __cplusplus
}
#endif
#endif
