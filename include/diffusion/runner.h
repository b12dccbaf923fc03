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

#ifdef __cplusplus
extern "C" {
#endif

struct dd_cuda_graph;

/* On the CUDA backend the model's work of a call (forward, or forward + backward) is captured
 * as one CUDA graph on the second call at a batch size and replayed from then on: the inputs are
 * written into the same buffers before each replay, and Adam, EMA and the loss read-back stay
 * outside (their scalars change every step). DIFFUSION_CUDA_GRAPHS=0 in the environment turns
 * this off; a capture that fails falls back to plain launches. */
typedef struct {
    int B;
    dd_graph *g;
    int x, t, labels, out, target, loss, features; /* tensor ids (-1 where absent) */
    int calls[2];              /* plain runs so far: [0] forward, [1] with backward */
    int capture_off;           /* capture failed or not wanted: plain launches */
    struct dd_cuda_graph *cg;  /* the captured work, or NULL */
    int cg_backward;           /* whether cg includes backward */
} dd_runner_graph;

typedef struct dd_runner {
    dd_model_config cfg;
    const dd_backend *be;
    dd_params *params;
    dd_runner_graph train, eval;
} dd_runner;

/* Register the model's parameters and allocate them (initialised from seed). */
int dd_runner_init(dd_runner *r, const dd_model_config *cfg, const dd_backend *be, uint64_t seed);
void dd_runner_free(dd_runner *r);

/* The training graph at batch B (built and planned on first use or when B changes). */
int dd_runner_train_graph(dd_runner *r, int B, dd_runner_graph **out);
/* The forward-only graph at batch B. */
int dd_runner_eval_graph(dd_runner *r, int B, dd_runner_graph **out);

/* One training step: x (B, per) model input and target (B, per), both backend memory; t (B)
 * 1-based host timesteps; labels (B) host or NULL. Forward, loss, backward, Adam, EMA.
 * *loss receives the batch loss (before the update). */
int dd_runner_train_step(dd_runner *r, int B, const float *x, const float *target,
                         const int32_t *t, const int32_t *labels, float lr, float ema_decay,
                         float *loss);
/* Loss without any update (validation). */
int dd_runner_eval_loss(dd_runner *r, int B, const float *x, const float *target, const int32_t *t,
                        const int32_t *labels, float *loss);

/* dd_denoise_fn over the eval graph: ctx is the dd_runner. */
int dd_runner_denoise(void *ctx, float *out, const float *x, const int32_t *t,
                      const int32_t *labels, int B);

#ifdef __cplusplus
}
#endif
#endif
