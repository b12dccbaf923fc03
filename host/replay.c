/* Record-once, replay-many (see include/diffusion/replay.h). */
#include "diffusion/replay.h"

#include <stdlib.h>
#include <string.h>

#include "diffusion/cuda.h"
#include "diffusion/error.h"

static int recording_wanted(const dd_backend *be) {
    const char *env = getenv("DIFFUSION_CUDA_GRAPHS");
    return be && be->name && !strcmp(be->name, "cuda") && !(env && !strcmp(env, "0"));
}

int dd_replay_run(dd_replay *rp, const dd_backend *be, dd_replay_body body, void *ctx,
                  const void *const key[DD_REPLAY_KEYS]) {
    if (memcmp(rp->key, key, sizeof rp->key)) { /* other buffers: start over */
        dd_replay_reset(rp);
        memcpy(rp->key, key, sizeof rp->key);
    }
    /* inside an outer recording: the body's calls join it (even when this one has a graph of
     * its own: launching a graph into a capture is not something to rely on) */
    if (recording_wanted(be) && dd_cuda_capturing()) return body(ctx);
    if (rp->cg) return dd_cuda_graph_replay(rp->cg);
    /* record on the second call: the first one loaded every library kernel */
    if (!rp->off && rp->calls >= 1 && recording_wanted(be)) {
        int rc = dd_cuda_capture_begin();
        if (!rc) {
            rc = body(ctx);
            struct dd_cuda_graph *cg = NULL;
            if (dd_cuda_capture_end(rc ? NULL : &cg) == 0 && !rc && cg) {
                rp->cg = cg;
                return dd_cuda_graph_replay(cg); /* recording did not run the work */
            }
        }
        rp->off = 1;
        dd_error_clear();
    }
    rp->calls++;
    return body(ctx);
}

void dd_replay_reset(dd_replay *rp) {
    if (rp->cg) dd_cuda_graph_destroy(rp->cg);
    memset(rp, 0, sizeof *rp);
}
