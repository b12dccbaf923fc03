/* dd_runner: a model's graphs over one parameter store (see include/diffusion/runner.h). */
#include "diffusion/runner.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/cuda.h"
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
    if (rg->cg) dd_cuda_graph_destroy(rg->cg);
    dd_graph_free(rg->g);
    memset(rg, 0, sizeof *rg);
}

static int capture_wanted(const dd_runner *r) {
    const char *env = getenv("DIFFUSION_CUDA_GRAPHS");
    return !strcmp(r->be->name, "cuda") && !(env && !strcmp(env, "0"));
}

/* The model's work for one call: forward, and backward from the loss when `backward`. Plain
 * launches, or on CUDA a captured graph (see runner.h). */
static int run_model(dd_runner *r, dd_runner_graph *rg, int backward) {
    if (rg->cg && rg->cg_backward == backward) return dd_cuda_graph_replay(rg->cg);
    /* capture on the second call of a kind: the first one loaded every library kernel */
    if (!rg->cg && !rg->capture_off && rg->calls[backward] >= 1 && capture_wanted(r)) {
        int rc = dd_cuda_capture_begin();
        if (!rc) {
            rc = dd_graph_forward(rg->g);
            if (!rc && backward) rc = dd_graph_backward(rg->g, rg->loss);
            dd_cuda_graph *cg = NULL;
            if (dd_cuda_capture_end(rc ? NULL : &cg) == 0 && !rc && cg) {
                rg->cg = cg;
                rg->cg_backward = backward;
                return dd_cuda_graph_replay(cg); /* capturing recorded the work, did not run it */
            }
        }
        rg->capture_off = 1; /* plain launches from now on */
        dd_error_clear();
    }
    rg->calls[backward]++;
    DD_TRY(dd_graph_forward(rg->g));
    if (backward) DD_TRY(dd_graph_backward(rg->g, rg->loss));
    return 0;
}

void dd_runner_free(dd_runner *r) {
    graph_release(&r->train);
    graph_release(&r->eval);
    dd_params_free(r->params);
    memset(r, 0, sizeof *r);
}

static int build(dd_runner *r, dd_runner_graph *rg, int B, int with_loss) {
    graph_release(rg);
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
    if (rg->out < 0 || (with_loss && rg->loss < 0) || dd_graph_plan(g, with_loss)) {
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

static size_t per_example(const dd_runner *r) {
    return (size_t)r->cfg.in_channels * r->cfg.height * r->cfg.width;
}

/* Copy a batch into graph rg's inputs: x and target from backend memory, t and labels from host. */
static int feed(dd_runner *r, dd_runner_graph *rg, const float *x, const float *target,
                const int32_t *t, const int32_t *labels) {
    dd_graph *g = rg->g;
    size_t n = (size_t)rg->B * per_example(r);
    DD_TRY(r->be->copy(g->t[rg->x].data, x, n * sizeof(float)));
    if (rg->target >= 0 && target) DD_TRY(r->be->copy(g->t[rg->target].data, target, n * sizeof(float)));
    if (rg->t >= 0) {
        if (!t) return dd_error("model needs timesteps");
        DD_TRY(dd_graph_set_input(g, rg->t, t, (size_t)rg->B * sizeof(int32_t)));
    }
    if (rg->labels >= 0) {
        if (!labels) return dd_error("conditional model needs labels");
        DD_TRY(dd_graph_set_input(g, rg->labels, labels, (size_t)rg->B * sizeof(int32_t)));
    }
    return 0;
}

int dd_runner_train_step(dd_runner *r, int B, const float *x, const float *target,
                         const int32_t *t, const int32_t *labels, float lr, float ema_decay,
                         float *loss) {
    dd_runner_graph *rg;
    DD_TRY(dd_runner_train_graph(r, B, &rg));
    DD_TRY(feed(r, rg, x, target, t, labels));
    /* forward and backward together (one graph on CUDA); a non-finite loss is caught before
     * Adam applies anything */
    DD_TRY(run_model(r, rg, 1));
    DD_TRY(r->be->to_host(loss, rg->g->t[rg->loss].data, sizeof(float)));
    if (!isfinite(*loss)) return dd_error("the training loss is %g", (double)*loss);
    DD_TRY(dd_params_adam(r->params, lr, 0.9f, 0.999f, 1e-8f));
    if (ema_decay > 0) DD_TRY(dd_params_ema(r->params, ema_decay));
    return 0;
}

int dd_runner_eval_loss(dd_runner *r, int B, const float *x, const float *target, const int32_t *t,
                        const int32_t *labels, float *loss) {
    dd_runner_graph *rg;
    DD_TRY(dd_runner_train_graph(r, B, &rg));
    DD_TRY(feed(r, rg, x, target, t, labels));
    DD_TRY(run_model(r, rg, 0));
    return r->be->to_host(loss, rg->g->t[rg->loss].data, sizeof(float));
}

int dd_runner_denoise(void *ctx, float *out, const float *x, const int32_t *t,
                      const int32_t *labels, int B) {
    dd_runner *r = ctx;
    dd_runner_graph *rg;
    DD_TRY(dd_runner_eval_graph(r, B, &rg));
    DD_TRY(feed(r, rg, x, NULL, t, labels));
    DD_TRY(run_model(r, rg, 0));
    return r->be->copy(out, rg->g->t[rg->out].data, (size_t)B * per_example(r) * sizeof(float));
}
