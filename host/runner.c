/* dd_runner: a model's graphs over one parameter store (see include/diffusion/runner.h). */
#include "diffusion/runner.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"

int dd_runner_init(dd_runner *r, const dd_model_config *cfg, const dd_backend *be, uint64_t seed) {
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    r->be = be;
    DD_TRY(dd_model_config_validate(cfg));
    r->params = dd_params_new(be);
    if (!r->params) return -1;
    if (dd_model_register(r->params, cfg) || dd_params_alloc(r->params, seed)) {
        dd_params_free(r->params);
        r->params = NULL;
        return -1;
    }
    return 0;
}

static void graph_release(dd_runner_graph *rg) {
    dd_replay_reset(&rg->rp[0]);
    dd_replay_reset(&rg->rp[1]);
    dd_graph_free(rg->g);
    memset(rg, 0, sizeof *rg);
}

void dd_runner_free(dd_runner *r) {
    graph_release(&r->train);
    graph_release(&r->eval);
    dd_params_free(r->params);
    memset(r, 0, sizeof *r);
}

static int build(dd_runner *r, dd_runner_graph *rg, int B, int with_loss) {
    graph_release(rg);
    r->builds++;
    const dd_model_config *c = &r->cfg;
    dd_graph *g = dd_graph_new(r->params);
    if (!g) return -1;
    rg->g = g;
    rg->B = B;
    rg->labels = rg->t = rg->target = rg->loss = rg->features = -1;
    if (c->kind == DD_MODEL_LENET) {
        rg->x = dd_input(g, "x", B, c->in_channels, c->height, c->width);
        rg->labels = dd_input_index(g, "labels", B);
        rg->out = dd_model_build(g, c, rg->x, -1, -1, &rg->features);
        if (with_loss) rg->loss = dd_xent(g, rg->out, rg->labels);
    } else {
        rg->x = dd_input(g, "x", B, c->in_channels, c->height, c->width);
        rg->t = dd_input_index_from(g, "t", B, 1); /* SPEC's t = 1..T -> table row t - 1 */
        if (dd_model_is_conditional(c)) rg->labels = dd_input_index(g, "labels", B);
        rg->out = dd_model_build(g, c, rg->x, rg->t, rg->labels, NULL);
        if (with_loss) {
            rg->target = dd_input(g, "target", B, c->in_channels, c->height, c->width);
            rg->loss = dd_mse(g, rg->out, rg->target);
        }
    }
    /* a forward-only graph shares memory between activations; what the caller reads stays */
    int rc = rg->out < 0 || (with_loss && rg->loss < 0);
    if (!rc && !with_loss)
        rc = dd_graph_reuse_memory(g) || dd_graph_keep(g, rg->out) ||
             (rg->features >= 0 && dd_graph_keep(g, rg->features));
    if (rc || dd_graph_plan(g, with_loss)) {
        graph_release(rg);
        return -1;
    }
    return 0;
}

int dd_runner_train_graph(dd_runner *r, int B, dd_runner_graph **out) {
    if (!r->train.g || r->train.B != B) DD_TRY(build(r, &r->train, B, 1));
    *out = &r->train;
    return 0;
}

int dd_runner_eval_graph(dd_runner *r, int B, dd_runner_graph **out) {
    if (!r->eval.g || r->eval.B != B) DD_TRY(build(r, &r->eval, B, 0));
    *out = &r->eval;
    return 0;
}

/* One call's arguments: what its body needs, and (as the dd_replay key) the buffers it reads. */
typedef struct {
    dd_runner *r;
    dd_runner_graph *rg;
    const float *x, *target;
    const int32_t *t, *labels;
    float *out;          /* denoise: where the output goes */
    float lr, ema_decay; /* training step */
} call;

static void call_key(const call *c, const void *key[DD_REPLAY_KEYS]) {
    const void *k[DD_REPLAY_KEYS] = {c->rg->g,  c->x,   c->target,
                                     c->t,      c->labels, c->out,
                                     dd_replay_key_float(c->lr), dd_replay_key_float(c->ema_decay)};
    memcpy(key, k, sizeof k);
}

/* The caller's buffer as graph tensor id: bound in place of its arena slot (no copy; see
 * dd_graph_bind), or, when it is not aligned like the arena, copied there. */
static int feed_floats(const call *c, int id, const float *src) {
    dd_graph *g = c->rg->g; /* 4-byte values: floats, or the int32 timesteps and labels */
    const int rc = dd_graph_bind(g, id, (void *)src); /* the graph only reads its inputs */
    if (rc <= 0) return rc;
    return c->r->be->copy(g->t[id].data, src, g->t[id].numel * sizeof(float));
}

/* Give the tensors feed and forward_body bound their arena slots back, so that the graph's
 * tensors are its own again between calls (dd_graph_set_input, dd_graph_get); a replayed
 * recording keeps the buffers it was recorded with, which the replay key names. */
static void unbind_all(const call *c) {
    const dd_runner_graph *rg = c->rg;
    const int ids[] = {rg->x, rg->target, rg->t, rg->labels, rg->out};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i] >= 0) dd_graph_unbind(rg->g, ids[i]);
}

/* The batch as the graph's inputs, all within backend memory (no host round trip). */
static int feed(const call *c) {
    const dd_runner_graph *rg = c->rg;
    DD_TRY(feed_floats(c, rg->x, c->x));
    if (rg->target >= 0 && c->target) DD_TRY(feed_floats(c, rg->target, c->target));
    if (rg->t >= 0) { /* SPEC's t = 1..T, as the graph takes them (its embedding subtracts 1) */
        if (!c->t) return dd_error("model needs timesteps");
        DD_TRY(feed_floats(c, rg->t, (const float *)c->t));
    }
    if (rg->labels >= 0) { /* 0-based, as the graph takes them: bound like x */
        if (!c->labels) return dd_error("conditional model needs labels");
        DD_TRY(feed_floats(c, rg->labels, (const float *)c->labels));
    }
    return 0;
}

/* Do [a, a + n) and [b, b + m) (floats) share memory? */
static int overlap(const float *a, size_t n, const float *b, size_t m) {
    return (uintptr_t)a < (uintptr_t)(b + m) && (uintptr_t)b < (uintptr_t)(a + n);
}

static int forward_work(const call *c) {
    const dd_runner_graph *rg = c->rg;
    DD_TRY(feed(c));
    /* the model writes its output straight into out, unless out is unaligned or shares memory
     * with the input (which the graph may still read when it writes the output) */
    const size_t n = rg->g->t[rg->out].numel;
    int copy_out = c->out != NULL;
    if (c->out && !overlap(c->out, n, c->x, rg->g->t[rg->x].numel)) {
        const int rc = dd_graph_bind(rg->g, rg->out, c->out);
        if (rc < 0) return rc;
        copy_out = rc;
    }
    DD_TRY(dd_graph_forward(rg->g));
    if (!copy_out) return 0;
    return c->r->be->copy(c->out, rg->g->t[rg->out].data, n * sizeof(float));
}

static int forward_body(void *ctx) {
    const call *c = ctx;
    const int rc = forward_work(c);
    unbind_all(c);
    return rc;
}

static int train_body(void *ctx) {
    const call *c = ctx;
    dd_params *p = c->r->params;
    const float *loss = c->rg->g->t[c->rg->loss].data;
    const int failed =
        feed(c) || dd_graph_forward(c->rg->g) || dd_graph_backward(c->rg->g, c->rg->loss);
    unbind_all(c);
    if (failed) return -1;
    DD_TRY(dd_params_adam(p, c->lr, 0.9, 0.999, 1e-8, loss));
    if (c->ema_decay > 0) DD_TRY(dd_params_ema(p, c->ema_decay, 1, loss));
    return dd_params_step_done(p, loss);
}

static int run(dd_runner_graph *rg, int slot, dd_replay_body body, call *c) {
    const void *key[DD_REPLAY_KEYS];
    call_key(c, key);
    return dd_replay_run(&rg->rp[slot], c->r->be, body, c, key);
}

int dd_runner_train_step(dd_runner *r, int B, const float *x, const float *target,
                         const int32_t *t, const int32_t *labels, float lr, float ema_decay) {
    dd_runner_graph *rg;
    DD_TRY(dd_runner_train_graph(r, B, &rg));
    call c = {r, rg, x, target, t, labels, NULL, lr, ema_decay};
    return run(rg, 1, train_body, &c);
}

const float *dd_runner_loss(const dd_runner *r) {
    return r->train.g && r->train.loss >= 0 ? r->train.g->t[r->train.loss].data : NULL;
}

int dd_runner_eval_loss(dd_runner *r, int B, const float *x, const float *target, const int32_t *t,
                        const int32_t *labels, float *loss) {
    dd_runner_graph *rg;
    DD_TRY(dd_runner_train_graph(r, B, &rg));
    call c = {r, rg, x, target, t, labels, NULL, 0, 0};
    DD_TRY(run(rg, 0, forward_body, &c));
    return r->be->to_host(loss, rg->g->t[rg->loss].data, sizeof(float));
}

uint64_t dd_runner_version(void *ctx) { return ((const dd_runner *)ctx)->builds; }

int dd_runner_denoise(void *ctx, float *out, const float *x, const int32_t *t,
                      const int32_t *labels, int B) {
    dd_runner *r = ctx;
    dd_runner_graph *rg;
    DD_TRY(dd_runner_eval_graph(r, B, &rg));
    call c = {r, rg, x, NULL, t, labels, out, 0, 0};
    return run(rg, 0, forward_body, &c);
}
