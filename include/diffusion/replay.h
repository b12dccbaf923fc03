/* Record-once, replay-many for a step that is the same sequence of backend calls every time (a
 * training step, a sampling step, a model call): its per-step values live in backend memory
 * (the step counter, time steps, labels, inputs), never in host arguments.
 *
 * On the CUDA backend the first call runs plainly (it loads lazily loaded kernels and makes the
 * one-time choices: convolution algorithms, workspaces), the second is recorded as one CUDA
 * graph and launched, and every later call launches that graph: one host call per step instead
 * of hundreds. A call made while an outer recording is running just runs its body, which the
 * outer recording takes in, so recordings nest (a sampling step records the model call inside
 * it). On other backends, or with DIFFUSION_CUDA_GRAPHS=0 in the environment, or when a
 * recording fails, every call runs plainly. */
#ifndef DIFFUSION_REPLAY_H
#define DIFFUSION_REPLAY_H

#include <stdint.h>
#include <string.h>

#include "diffusion/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

struct dd_cuda_graph;

#define DD_REPLAY_KEYS 12

/* key: the buffers (and any other values) the body's calls are made with. A recording is only
 * valid for the key it was made with: a call with another key drops it and starts over. */
typedef struct {
    int calls;                /* plain runs so far with this key */
    int off;                  /* recording failed or not wanted: plain runs from now on */
    struct dd_cuda_graph *cg; /* the recorded step, or NULL */
    const void *key[DD_REPLAY_KEYS];
} dd_replay;

typedef int (*dd_replay_body)(void *ctx);

/* Key entries for values rather than buffers (a float by its bits, an integer as is). */
static inline const void *dd_replay_key_float(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (const void *)(uintptr_t)u;
}
static inline const void *dd_replay_key_int(uint64_t v) { return (const void *)(uintptr_t)v; }

/* Run body(ctx) once, plainly or as the recorded graph (see above). A body that fails while
 * being recorded turns recording off for this dd_replay and is then run plainly, so the caller
 * sees the body's own error if it fails again. */
int dd_replay_run(dd_replay *rp, const dd_backend *be, dd_replay_body body, void *ctx,
                  const void *const key[DD_REPLAY_KEYS]);
/* Forget the recording (the buffers it uses are about to change); safe on a zeroed struct. */
void dd_replay_reset(dd_replay *rp);

#ifdef __cplusplus
}
#endif
#endif
