/* Per-element formulas shared by the CPU backend (cpu/) and the CUDA backend (cuda/ .cu files).
 *
 * Each function is the whole arithmetic of one element of one op, written once: cpu/ loops over
 * elements calling them, a CUDA kernel calls them from each thread, so the CPU tests exercise
 * the GPU's arithmetic too. Rules that keep this header valid under both compilers: plain C,
 * math.h single-precision functions (expf, tanhf, erff, sqrtf) and float literals (an unsuffixed
 * double literal would promote the computation to double on the GPU) except where double is
 * meant (dd_adam_scalars, once per step), no globals.
 */
#ifndef DIFFUSION_KERNELS_H
#define DIFFUSION_KERNELS_H

#include <math.h>

#include "diffusion/backend.h"
#include "diffusion/hd.h"
#include "diffusion/philox.h"

/* ---------------------------------------------------------------- activations */

/* 1 / (1 + e^-x): for x -> -inf e^-x overflows to inf and the result is 0, as it should be. */
static DD_HD inline float dd_sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* swish(x) = x sigmoid(x) (PyTorch's silu) */
static DD_HD inline float dd_swish(float x) { return x * dd_sigmoidf(x); }
/* d/dx x s(x) = s(x) + x s(x) (1 - s(x)) = s(x) (1 + x (1 - s(x))) */
static DD_HD inline float dd_swish_grad(float x) {
    float s = dd_sigmoidf(x);
    return s * (1.0f + x * (1.0f - s));
}

#define DD_SQRT_2_OVER_PI 0.79788456080286535588f /* sqrt(2 / pi) */
#define DD_GELU_C 0.044715f
#define DD_INV_SQRT2 0.70710678118654752440f      /* 1 / sqrt(2) */
#define DD_INV_SQRT_2PI 0.39894228040143267794f   /* 1 / sqrt(2 pi) */

/* gelu, tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) */
static DD_HD inline float dd_gelu_tanh(float x) {
    float u = DD_SQRT_2_OVER_PI * (x + DD_GELU_C * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}
/* 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
static DD_HD inline float dd_gelu_tanh_grad(float x) {
    float u = DD_SQRT_2_OVER_PI * (x + DD_GELU_C * x * x * x);
    float t = tanhf(u);
    float du = DD_SQRT_2_OVER_PI * (1.0f + 3.0f * DD_GELU_C * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

/* gelu, exact form: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) */
static DD_HD inline float dd_gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * DD_INV_SQRT2)); }
/* Phi(x) + x phi(x), phi(x) = e^(-x^2/2) / sqrt(2 pi) */
static DD_HD inline float dd_gelu_erf_grad(float x) {
    return 0.5f * (1.0f + erff(x * DD_INV_SQRT2)) + x * DD_INV_SQRT_2PI * expf(-0.5f * x * x);
}

static DD_HD inline float dd_relu(float x) { return x > 0.0f ? x : 0.0f; }
/* The subgradient at 0 is 0, as PyTorch's. */
static DD_HD inline float dd_relu_grad(float x) { return x > 0.0f ? 1.0f : 0.0f; }

static DD_HD inline float dd_act_apply(float x, dd_act act) {
    switch (act) {
    case DD_ACT_RELU: return dd_relu(x);
    case DD_ACT_SWISH: return dd_swish(x);
    case DD_ACT_GELU_TANH: return dd_gelu_tanh(x);
    case DD_ACT_GELU_ERF: return dd_gelu_erf(x);
    case DD_ACT_COUNT: break;
    }
    return x;
}

/* d act / dx at x (the input of the activation) */
static DD_HD inline float dd_act_grad(float x, dd_act act) {
    switch (act) {
    case DD_ACT_RELU: return dd_relu_grad(x);
    case DD_ACT_SWISH: return dd_swish_grad(x);
    case DD_ACT_GELU_TANH: return dd_gelu_tanh_grad(x);
    case DD_ACT_GELU_ERF: return dd_gelu_erf_grad(x);
    case DD_ACT_COUNT: break;
    }
    return 1.0f;
}

/* ---------------------------------------------------------------- optimiser */

/* One Adam element (PyTorch's torch.optim.Adam without weight decay, single-tensor path):
 * m = b1 m + omb1 g; v = b2 v + omb2 g^2; p -= step_size m / (sqrt(v) / bc2_sqrt + eps)
 * with omb1 = 1 - b1 and omb2 = 1 - b2 rounded to float from double (as PyTorch turns its Python
 * scalars into float), step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) from
 * dd_adam_scalars. */
static DD_HD inline void dd_adam_elem(float *p, float *m, float *v, float g, float b1, float omb1,
                                      float b2, float omb2, float eps, float step_size,
                                      float bc2_sqrt) {
    float mi = b1 * *m + omb1 * g;
    float vi = b2 * *v + omb2 * g * g;
    *m = mi;
    *v = vi;
    *p -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
}

/* Adam's per-step scalars at step t >= 1, in double: step_size = lr / (1 - b1^t),
 * bc2_sqrt = sqrt(1 - b2^t). */
static DD_HD inline void dd_adam_scalars(double lr, double b1, double b2, long long t,
                                         float *step_size, float *bc2_sqrt) {
    *step_size = (float)(lr / (1.0 - pow(b1, (double)t)));
    *bc2_sqrt = (float)sqrt(1.0 - pow(b2, (double)t));
}

/* The EMA decay with a warm-up (as in common diffusion trainers): early on the average follows
 * the weights closely, so short runs do not sample from nearly initial weights. step counts
 * the optimiser steps already taken. */
static DD_HD inline float dd_ema_warmup(float decay, long long step) {
    float warm = (float)(1.0 + (double)step) / (float)(10.0 + (double)step);
    return decay < warm ? decay : warm;
}

/* A guard (see backend.h): 1 when the step may apply its update. */
static DD_HD inline int dd_guard_ok(const float *guard) { return !guard || isfinite(*guard); }

/* The offset a dd_rng_at addresses (its counter read from backend memory). */
static DD_HD inline unsigned long long dd_rng_at_offset(dd_rng_at at) {
    return at.offset + (at.k ? (unsigned long long)*at.k * at.stride : 0ull);
}

/* ema = decay ema + (1 - decay) p */
static DD_HD inline float dd_ema_elem(float ema, float p, float decay) {
    return decay * ema + (1.0f - decay) * p;
}

/* ---------------------------------------------------------------- diffusion */

/* x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with ca = sqrt(abar_t), cb = sqrt(1 - abar_t) */
static DD_HD inline float dd_q_sample_elem(float x0, float noise, float ca, float cb) {
    return ca * x0 + cb * noise;
}

/* classifier-free guidance: uncond + g (cond - uncond) */
static DD_HD inline float dd_guidance_elem(float cond, float uncond, float g) {
    return uncond + g * (cond - uncond);
}

/* The x0 estimate: ra x - rb eps (ra = sqrt(1/abar_t), rb = sqrt(1/abar_t - 1)), clamped to
 * [-1, 1] when clip. */
static DD_HD inline float dd_predict_x0_elem(float x, float eps, float ra, float rb, int clip) {
    float x0 = ra * x - rb * eps;
    if (clip) x0 = fminf(fmaxf(x0, -1.0f), 1.0f);
    return x0;
}

/* One sampler step for one element given its x0 estimate and its noise z:
 * c0 x0 + c1 x + c2 eps + sigma z, the noise term left out when sigma == 0 (so a NaN or inf z
 * can never leak into a deterministic step). */
static DD_HD inline float dd_sampler_elem(float x, float x0, float eps, float c0, float c1,
                                          float c2, float sigma, float z) {
    float r = c0 * x0 + c1 * x + c2 * eps;
    if (sigma != 0.0f) r += sigma * z;
    return r;
}

/* A training batch's draws at Philox offset o (backend.h, train_draw): sample i's time step
 * (1..T, uniform) at o + i, and its label after the drop to `generic` at o + N + i. */
static DD_HD inline int dd_train_t_elem(uint64_t seed, uint64_t stream, uint64_t o, int i, int T) {
    return 1 + (int)dd_philox_below(seed, stream, o + (uint64_t)i, (uint32_t)T);
}
static DD_HD inline int dd_train_label_elem(uint64_t seed, uint64_t stream, uint64_t o, int N,
                                            int i, int label, float p_uncond, int generic) {
    return dd_philox_uniform(seed, stream, o + (uint64_t)N + (uint64_t)i) < p_uncond ? generic
                                                                                     : label;
}

/* The whole sampler step for one element (backend.h, sampler_step): row = the step's
 * DD_SAMPLER_COLS scalars; uncond_i is ignored unless guided; z is only used when sigma != 0.
 * Writes the x0 estimate to *x0 and returns the new x. The operations and their order are those
 * of the separate ops this replaced (guidance, the objective's conversion, predict-x0, update),
 * so results do not depend on the fusion. */
static DD_HD inline float dd_sampler_full_elem(float x, float out_i, float uncond_i, int guided,
                                               float g, int clip, const float *row, float z,
                                               float *x0) {
    const float pred = guided ? dd_guidance_elem(out_i, uncond_i, g) : out_i;
    const float eps = row[DD_SAMPLER_EA] * x + row[DD_SAMPLER_EB] * pred;
    *x0 = dd_predict_x0_elem(x, eps, row[DD_SAMPLER_RA], row[DD_SAMPLER_RB], clip);
    return dd_sampler_elem(x, *x0, eps, row[DD_SAMPLER_C0], row[DD_SAMPLER_C1],
                           row[DD_SAMPLER_C2], row[DD_SAMPLER_SIGMA], z);
}

#endif
