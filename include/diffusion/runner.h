/* dd_runner: one model (config + parameters) on one backend, with the graphs that run it: a
 * training graph (model + MSE loss) at the training batch size, and a forward-only graph at
 * whatever batch size sampling asks for (rebuilt, and so re-planned, only when that size
 * changes). It is the bridge between the graph executor and the host code of diffusion.h:
 * dd_runner_denoise is a dd_denoise_fn. */
#ifndef DIFFUSION_RUNNER_H
#define DIFFUSION_RUNNER_H

#include <stdint.h>

#include "diffusion/graph.h"
#include "diffusion/models.h"
#include "diffusion/replay.h"

#ifdef __cplusplus
extern "C" {
#endif

/* On the CUDA backend each kind of call (dd_replay, include/diffusion/replay.h) is recorded as one
 * CUDA graph on its second call with the same buffers and replayed from then on; a call made
 * inside a caller's recording (a whole training or sampling step) is taken into that one. */
typedef struct {
    int B;
    dd_graph *g;
    int x, t, labels, out, target, loss, features; /* tensor ids (-1 where absent) */
    dd_replay rp[2]; /* [0] forward (eval loss, denoise), [1] the training step */
} dd_runner_graph;

typedef struct dd_runner {
    dd_model_config cfg;
    const dd_backend *be;
    dd_params *params;
    dd_runner_graph train, eval;
    uint64_t builds; /* graphs built so far: dd_runner_version */
} dd_runner;

/* Register the model's parameters and allocate them (initialised from seed). */
int dd_runner_init(dd_runner *r, const dd_model_config *cfg, const dd_backend *be, uint64_t seed);
void dd_runner_free(dd_runner *r);

/* The training graph at batch B (built and planned on first use or when B changes). */
int dd_runner_train_graph(dd_runner *r, int B, dd_runner_graph **out);
/* The forward-only graph at batch B. */
int dd_runner_eval_graph(dd_runner *r, int B, dd_runner_graph **out);

/* Per-step values are backend memory throughout, so that a step is the same calls every time:
 * x (B, per) the model input, target (B, per), t (B) SPEC's 1-based time steps, labels (B) or
 * NULL for an unconditional model. Time steps and labels are not checked here (a device cannot
 * report them): their makers keep them in range (train_draw, the sampler's validated labels). */

/* One training step: forward, MSE loss, backward, Adam (lr, betas 0.9 and 0.999, eps 1e-8), the
 * EMA (ema_decay with its warm-up; 0: none) and the step count, all guarded by the loss (a
 * non-finite loss changes nothing: include/diffusion/backend.h). The loss stays in backend
 * memory: dd_runner_loss. */
int dd_runner_train_step(dd_runner *r, int B, const float *x, const float *target,
                         const int32_t *t, const int32_t *labels, float lr, float ema_decay);
/* The loss of the last training step or eval loss (backend memory, one float). */
const float *dd_runner_loss(const dd_runner *r);
/* Loss without any update (validation), read back into *loss. */
int dd_runner_eval_loss(dd_runner *r, int B, const float *x, const float *target, const int32_t *t,
                        const int32_t *labels, float *loss);

/* For dd_denoiser.version: changes whenever the runner builds a graph (new buffers). */
uint64_t dd_runner_version(void *ctx);

/* dd_denoise_fn over the eval graph: ctx is the dd_runner. */
int dd_runner_denoise(void *ctx, float *out, const float *x, const int32_t *t,
                      const int32_t *labels, int B);

#ifdef __cplusplus
}
#endif
#endif
