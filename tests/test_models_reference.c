/* The models against PyTorch (tests/reference/make_reference.py wrote the files under
 * tests/reference/models/): same weights and inputs -> outputs within 1e-4 and every parameter's
 * gradient within 1e-3, relative (norm of the difference over norm of the reference), on the CPU
 * backend. The parameter names and shapes must match the PyTorch state_dict exactly, both ways.
 *
 * The other direction: for every case this test also initialises the model on the C side (its
 * own Glorot init), runs the same inputs, and writes DD_BINARY_DIR/models_c_CASE.safetensors (a
 * checkpoint, with EMA and Adam state, the config as metadata) and models_io_CASE.safetensors
 * (inputs and the C outputs); tests/reference/check_c_checkpoint.py loads the checkpoint into the
 * PyTorch module (strict) and checks the outputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/checkpoint.h"
#include "diffusion/error.h"
#include "diffusion/graph.h"
#include "diffusion/models.h"
#include "diffusion/safetensors.h"
#include "testutil.h"

#define OUT_TOL 1e-4
#define GRAD_TOL 1e-3

static const char *const cases[] = {"unet", "unet_noattn", "unet_cond", "unet_cond_sum",
                                    "mlp2d", "mlp2d_cond", "lenet"};

/* A reference tensor as floats (malloc'd), or NULL with a test failure. */
static float *ref_f32(const dd_safetensors *st, const char *name, size_t *n) {
    const dd_st_tensor *t = dd_st_find(st, name);
    CHECKF(t != NULL, "reference tensor %s missing", name);
    if (!t) return NULL;
    float *v = malloc(t->numel * sizeof(float) + 1);
    CHECK_OK(dd_st_copy_f32(t, v, t->numel));
    if (n) *n = t->numel;
    return v;
}

static int32_t *ref_i32(const dd_safetensors *st, const char *name, size_t *n) {
    const dd_st_tensor *t = dd_st_find(st, name);
    if (!t) return NULL;
    CHECKF(t->dtype == DD_ST_I32, "%s is not I32", name);
    int32_t *v = malloc(t->numel * sizeof(int32_t) + 1);
    memcpy(v, t->data, t->numel * sizeof(int32_t)); /* unaligned source: copy */
    if (n) *n = t->numel;
    return v;
}

typedef struct {
    dd_params *p;
    dd_graph *g;
    int x, t, labels, target, out, features, loss;
    int N;
} model_run;

/* Build model + loss over fresh parameters, allocated with seed. */
static int build(model_run *r, const dd_model_config *c, int N) {
    memset(r, 0, sizeof *r);
    r->N = N;
    r->p = dd_params_new(&dd_cpu_backend);
    r->g = dd_graph_new(r->p);
    if (!r->p || !r->g) return -1;
    r->x = dd_input(r->g, "x", N, c->in_channels, c->height, c->width);
    r->t = c->kind == DD_MODEL_LENET ? -1 : dd_input_index_from(r->g, "t", N, 1);
    r->labels = dd_model_is_conditional(c) || c->kind == DD_MODEL_LENET
                    ? dd_input_index(r->g, "labels", N)
                    : -1;
    r->out = dd_model_build(r->g, c, r->x, r->t, c->kind == DD_MODEL_LENET ? -1 : r->labels,
                            &r->features);
    if (r->out < 0) return -1;
    if (c->kind == DD_MODEL_LENET) {
        r->target = -1;
        r->loss = dd_xent(r->g, r->out, r->labels);
    } else {
        const dd_tensor *o = dd_graph_tensor(r->g, r->out);
        r->target = dd_input(r->g, "target", N, (int)o->shape[1], (int)o->shape[2], (int)o->shape[3]);
        r->loss = dd_mse(r->g, r->out, r->target);
    }
    return r->loss < 0 ? -1 : 0;
}

static void run_free(model_run *r) {
    dd_graph_free(r->g);
    dd_params_free(r->p);
}

static int set_inputs(model_run *r, const dd_safetensors *st) {
    size_t n;
    float *x = ref_f32(st, "io/x", &n);
    int rc = !x || dd_graph_set_input(r->g, r->x, x, n * sizeof(float));
    free(x);
    if (r->t >= 0) {
        int32_t *t = ref_i32(st, "io/t", &n);
        rc = rc || !t || dd_graph_set_input(r->g, r->t, t, n * sizeof(int32_t));
        free(t);
    }
    if (r->labels >= 0) {
        int32_t *l = ref_i32(st, "io/labels", &n);
        rc = rc || !l || dd_graph_set_input(r->g, r->labels, l, n * sizeof(int32_t));
        free(l);
    }
    if (r->target >= 0) {
        float *tg = ref_f32(st, "io/target", &n);
        rc = rc || !tg || dd_graph_set_input(r->g, r->target, tg, n * sizeof(float));
        free(tg);
    }
    return rc ? -1 : 0;
}

static double norm2(const float *v, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}

/* Some gradients are zero in exact arithmetic: a conv bias right before a GroupNorm with one
 * channel per group is removed again by the normalisation. The float64 reference then holds
 * ~1e-17 and the float32 C side rounding noise, so a relative error means nothing; such a
 * tensor (reference norm below ZERO_REL of the whole gradient's norm) must instead have a C
 * norm below ZERO_ABS of the whole gradient's norm. Set per case before comparing. */
#define ZERO_REL 1e-10
#define ZERO_ABS 1e-6
static double grad_scale; /* norm of the reference gradient over all parameters */

/* Compare one graph tensor (or its gradient) with a reference tensor; returns the error. */
/* A graph tensor (id >= 0) or its gradient, or (id < 0) the gradient of parameter -1 - id, read
 * from the parameters' buffers: a parameter the graph reads only through another's span (the
 * merged skip convolutions) has no view of its own. */
static double compare(model_run *r, int id, int grad, const dd_safetensors *st, const char *ref,
                      double tol, const char *label) {
    size_t n = 0;
    float *want = ref_f32(st, ref, &n);
    if (!want) return INFINITY;
    const size_t numel = id >= 0 ? dd_graph_tensor(r->g, id)->numel : r->p->info[-1 - id].numel;
    CHECKF(numel == n, "%s: %zu values, reference %zu", label, numel, n);
    double err = INFINITY, amax = 0;
    if (numel == n) {
        float *got = malloc(n * sizeof(float) + 1);
        int rc = id < 0  ? dd_params_get_grad(r->p, -1 - id, got)
                 : grad ? dd_graph_get_grad(r->g, id, got)
                        : dd_graph_get(r->g, id, got);
        CHECK_OK(rc);
        err = tu_rel_err(got, want, n);
        for (size_t i = 0; i < n; i++)
            if (fabs((double)got[i] - want[i]) > amax) amax = fabs((double)got[i] - want[i]);
        if (grad && norm2(want, n) <= ZERO_REL * grad_scale) {
            double g = norm2(got, n) / grad_scale;
            printf("    %-30s zero in exact arithmetic: C norm %.3e of the gradient's%s\n", label,
                   g, g <= ZERO_ABS ? "" : "  FAIL");
            CHECKF(g <= ZERO_ABS, "%s: should be zero, C norm %.3e of the whole gradient", label, g);
            free(got);
            free(want);
            return 0;
        }
        free(got);
    }
    printf("    %-30s rel %.3e  max abs %.3e%s\n", label, err, amax, err <= tol ? "" : "  FAIL");
    CHECKF(err <= tol, "%s: relative error %.3e above %.0e", label, err, tol);
    free(want);
    return err;
}

/* The C model's parameter names and shapes are exactly the file's non-"/" tensors. */
static void check_names(const dd_params *p, const dd_safetensors *st, const char *cname) {
    int nref = 0;
    for (int i = 0; i < st->ntensors; i++) {
        const dd_st_tensor *t = &st->tensors[i];
        if (strchr(t->name, '/')) continue;
        nref++;
        int k = dd_params_find(p, t->name);
        CHECKF(k >= 0, "%s: PyTorch's %s is not a C parameter", cname, t->name);
        if (k < 0) continue;
        int same = p->info[k].ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = (uint64_t)p->info[k].shape[d] == t->shape[d];
        CHECKF(same, "%s: %s has another shape in C", cname, t->name);
    }
    CHECKF(nref == p->count, "%s: %d C parameters, %d PyTorch state_dict entries", cname, p->count, nref);
}

/* Load every parameter from the file (the table is compared instead: C computes it). */
static void load_params(dd_params *p, const dd_safetensors *st, const char *cname) {
    for (int k = 0; k < p->count; k++) {
        const dd_param_info *q = &p->info[k];
        float *v = ref_f32(st, q->name, NULL);
        if (!v) continue;
        if (q->init == DD_INIT_FIXED) {
            float *mine = malloc(q->numel * sizeof(float));
            CHECK_OK(dd_params_get(p, k, mine, 0));
            double e = tu_rel_err(mine, v, q->numel);
            CHECKF(e < 1e-6, "%s: C's %s differs from PyTorch's by %.3e", cname, q->name, e);
            free(mine);
        } else {
            CHECK_OK(dd_params_set(p, k, v, 0));
        }
        free(v);
    }
}

/* The other direction: the C side's own model (its initialisation), saved by the checkpoint
 * writer with EMA and Adam state (names with '/', which PyTorch must drop), and beside it
 * models_io_CASE.safetensors with the inputs (copied from the reference) and the C outputs, for
 * tests/reference/check_c_checkpoint.py. */
static void write_c_checkpoint(const dd_model_config *c, const dd_safetensors *st, const char *cname) {
    model_run r;
    CHECK_OK(build(&r, c, (int)dd_st_find(st, "io/x")->shape[0]));
    CHECK_OK(dd_params_alloc(r.p, 20240601u));
    CHECK_OK(dd_graph_plan(r.g, 0));
    CHECK_OK(set_inputs(&r, st));
    CHECK_OK(dd_graph_forward(r.g));

    char *cfg = dd_model_config_to_json(c);
    dd_st_pair meta[1] = {{"config", cfg}};
    char path[1024];
    snprintf(path, sizeof path, "%s/models_c_%s.safetensors", DD_BINARY_DIR, cname);
    CHECK_OK(dd_checkpoint_save(path, r.p, meta, 1, DD_CKPT_TRAIN));
    free(cfg);

    dd_st_entry e[5];
    float *bufs[2] = {NULL, NULL};
    uint64_t shapes[5][4];
    int n = 0;
    const char *io_in[] = {"io/x", "io/t", "io/labels"};
    for (int i = 0; i < 3; i++) {
        const dd_st_tensor *t = dd_st_find(st, io_in[i]);
        if (!t) continue;
        for (int d = 0; d < t->ndim; d++) shapes[n][d] = t->shape[d];
        e[n] = (dd_st_entry){io_in[i], t->dtype, t->ndim, shapes[n], t->data};
        n++;
    }
    int outs[2] = {r.out, r.features};
    const char *onames[2] = {"io/out", "io/features"};
    for (int i = 0; i < 2; i++) {
        if (outs[i] < 0) continue;
        const dd_tensor *t = dd_graph_tensor(r.g, outs[i]);
        bufs[i] = malloc(t->numel * sizeof(float));
        CHECK_OK(dd_graph_get(r.g, outs[i], bufs[i]));
        for (int d = 0; d < 4; d++) shapes[n][d] = (uint64_t)t->shape[d];
        e[n] = (dd_st_entry){onames[i], DD_ST_F32, 4, shapes[n], bufs[i]};
        n++;
    }
    snprintf(path, sizeof path, "%s/models_io_%s.safetensors", DD_BINARY_DIR, cname);
    CHECK_OK(dd_st_save(path, e, n, NULL, 0));
    free(bufs[0]);
    free(bufs[1]);
    run_free(&r);
}

static void run_case(const char *cname) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/reference/models/%s.safetensors", DD_SOURCE_DIR, cname);
    dd_safetensors st;
    if (dd_st_load(path, &st)) {
        CHECKF(0, "%s", dd_error_message());
        return;
    }
    dd_model_config c;
    const char *cfg = dd_st_meta(&st, "config");
    CHECKF(cfg && dd_model_config_from_json(&c, cfg) == 0, "%s: config: %s", cname, dd_error_message());
    const dd_st_tensor *xt = dd_st_find(&st, "io/x");
    if (!cfg || !xt) {
        dd_st_free(&st);
        return;
    }
    char desc[256];
    dd_model_config_describe(&c, desc, sizeof desc);
    printf("%s: %s, batch %d\n", cname, desc, (int)xt->shape[0]);

    model_run r;
    if (build(&r, &c, (int)xt->shape[0])) {
        CHECKF(0, "%s: build: %s", cname, dd_error_message());
        run_free(&r);
        dd_st_free(&st);
        return;
    }
    check_names(r.p, &st, cname);
    CHECK_OK(dd_params_alloc(r.p, 1));
    load_params(r.p, &st, cname);
    CHECK_OK(dd_graph_plan(r.g, 1));
    CHECK_OK(set_inputs(&r, &st));
    CHECK_OK(dd_graph_forward(r.g));
    CHECK_OK(dd_graph_backward(r.g, r.loss));

    compare(&r, r.out, 0, &st, "io/out", OUT_TOL, "output");
    if (r.features >= 0) compare(&r, r.features, 0, &st, "io/features", OUT_TOL, "features");
    compare(&r, r.loss, 0, &st, "io/loss", OUT_TOL, "loss");
    grad_scale = 0;
    for (int i = 0; i < st.ntensors; i++)
        if (!strncmp(st.tensors[i].name, "grad/", 5)) {
            float *v = ref_f32(&st, st.tensors[i].name, NULL);
            double nv = v ? norm2(v, st.tensors[i].numel) : 0;
            grad_scale += nv * nv;
            free(v);
        }
    grad_scale = sqrt(grad_scale);
    double worst = 0;
    const char *worst_name = "";
    int ngrad = 0;
    for (int k = 0; k < r.p->count; k++) {
        const dd_param_info *q = &r.p->info[k];
        if (!q->trainable) continue;
        char ref[DD_NAME_MAX + 8];
        snprintf(ref, sizeof ref, "grad/%s", q->name);
        double e = compare(&r, -1 - k, 1, &st, ref, GRAD_TOL, ref);
        ngrad++;
        if (e > worst) worst = e, worst_name = q->name;
    }
    /* every gradient in the file was compared */
    int nref = 0;
    for (int i = 0; i < st.ntensors; i++) nref += !strncmp(st.tensors[i].name, "grad/", 5);
    CHECKF(nref == ngrad, "%s: %d gradients compared, the file has %d", cname, ngrad, nref);
    printf("  %s: worst gradient %s %.3e over %d tensors\n", cname, worst_name, worst, ngrad);
    run_free(&r);

    write_c_checkpoint(&c, &st, cname);
    dd_st_free(&st);
}

int main(int argc, char **argv) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (argc < 2 || !strcmp(argv[1], cases[i])) run_case(cases[i]);
    return tu_finish();
}
