/* Model builders: SPEC.md's parameter table through the builder, the PyTorch names, config
 * validation and JSON, build-time errors, UNetFixed == UNet (1,2,4), and the decoder's merged
 * skip convolutions == the same convolutions apart, on the CPU backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/backend.h"
#include "diffusion/checkpoint.h"
#include "diffusion/error.h"
#include "diffusion/graph.h"
#include "diffusion/models.h"
#include "testutil.h"

static dd_model_config cfg(dd_model_kind kind, int mc, int n_mult, const int *mult, int attention,
                           int groups, int classes) {
    dd_model_config c;
    dd_model_config_default(&c, kind);
    if (mc) c.model_channels = mc;
    if (n_mult) {
        c.n_mult = n_mult;
        for (int i = 0; i < n_mult; i++) c.mult[i] = mult[i];
    }
    c.attention = attention;
    if (groups) c.groups = groups;
    if (classes) c.classes = classes;
    return c;
}

static size_t count(const dd_model_config *c, dd_params **keep) {
    dd_params *p = dd_params_new(&dd_cpu_backend);
    if (!p || dd_model_register(p, c)) {
        fprintf(stderr, "register failed: %s\n", dd_error_message());
        dd_params_free(p);
        return 0;
    }
    size_t n = dd_model_count_trainable(p);
    if (keep) *keep = p;
    else dd_params_free(p);
    return n;
}

static void test_counts(void) {
    const int m124[] = {1, 2, 4}, m123[] = {1, 2, 3}, m12[] = {1, 2};
    struct {
        const char *what;
        dd_model_config c;
        size_t want;
    } rows[] = {
        {"UNetFixed(1, 8, 100)", cfg(DD_MODEL_UNET_FIXED, 8, 0, NULL, 1, 0, 0), 151401},
        {"UNet(1, 16, 100) (1,2,4)", cfg(DD_MODEL_UNET, 16, 3, m124, 1, 0, 0), 602705},
        {"same, no attention", cfg(DD_MODEL_UNET, 16, 3, m124, 0, 0, 0), 376913},
        {"UNet(1, 16, 100) (1,2,3)", cfg(DD_MODEL_UNET, 16, 3, m123, 1, 0, 0), 403409},
        {"UNetConditioned 10 classes (1,2,4)", cfg(DD_MODEL_UNET_COND, 16, 3, m124, 1, 0, 10), 622865},
        {"UNetConditioned 10 classes (1,2,3)", cfg(DD_MODEL_UNET_COND, 16, 3, m123, 1, 0, 10), 420497},
        {"UNet(1, 4, 100) groups 1 (1,2)", cfg(DD_MODEL_UNET, 4, 2, m12, 1, 1, 0), 10525},
        {"UNetConditioned(1, 4, 100) 5 classes groups 1 (1,2)", cfg(DD_MODEL_UNET_COND, 4, 2, m12, 1, 1, 5), 11197},
        {"2-D denoiser h 16", cfg(DD_MODEL_MLP2D, 0, 0, NULL, 0, 0, 0), 1442},
        {"conditional 2-D denoiser h 32, 3 classes", cfg(DD_MODEL_MLP2D_COND, 0, 0, NULL, 0, 0, 3), 5826},
        {"LeNet5", cfg(DD_MODEL_LENET, 0, 0, NULL, 0, 0, 0), 44426},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        size_t n = count(&rows[i].c, NULL);
        printf("%-52s %8zu (SPEC %zu)\n", rows[i].what, n, rows[i].want);
        CHECKF(n == rows[i].want, "%s: %zu parameters, SPEC says %zu", rows[i].what, n, rows[i].want);
    }
    /* the conditional UNet's sum variant: no doubled embedding, only the class table */
    dd_model_config s = cfg(DD_MODEL_UNET_COND, 16, 3, m124, 1, 0, 10);
    s.combine = DD_COMBINE_SUM;
    CHECK(count(&s, NULL) == 602705 + 11 * 64);
    /* UNetFixed is UNet (1,2,4): same parameter set */
    dd_model_config f = cfg(DD_MODEL_UNET_FIXED, 8, 0, NULL, 1, 0, 0);
    dd_model_config u = cfg(DD_MODEL_UNET, 8, 3, m124, 1, 0, 0);
    CHECK(count(&f, NULL) == count(&u, NULL));
}

/* The peer's state_dict names and shapes (a sample of every module kind). */
static void test_names(void) {
    dd_model_config c;
    dd_model_config_default(&c, DD_MODEL_UNET);
    dd_params *p = NULL;
    count(&c, &p);
    if (!p) {
        CHECK(0);
        return;
    }
    struct {
        const char *name;
        int ndim;
        int64_t shape[4];
    } want[] = {
        {"table", 2, {100, 64}},
        {"t1.weight", 2, {64, 64}},
        {"t2.bias", 1, {64}},
        {"init.weight", 4, {16, 1, 3, 3}},
        {"down1.inl.conv.weight", 4, {16, 16, 3, 3}},
        {"down1.inl.norm.weight", 1, {16}},
        {"down1.inl.emb.weight", 2, {16, 64}},
        {"down1.conv.bias", 1, {16}},
        {"down1.norm.bias", 1, {16}},
        {"ds1.weight", 4, {16, 16, 4, 4}},
        {"ds2.weight", 4, {32, 16, 4, 4}},
        {"down3.inl.conv.weight", 4, {32, 32, 3, 3}},
        {"bottom.weight", 4, {64, 32, 3, 3}},
        {"mid1.norm.weight", 1, {64}},
        {"attn.qkv.weight", 4, {192, 64, 3, 3}},
        {"attn.out.weight", 4, {64, 64, 3, 3}},
        {"mid2.inl.emb.bias", 1, {64}},
        {"up3.inl.conv.weight", 4, {64, 96, 3, 3}},
        {"up3.skip.weight", 4, {64, 96, 3, 3}},
        {"us2.weight", 4, {32, 64, 3, 3}},
        {"up2.skip.bias", 1, {32}},
        {"us1.weight", 4, {16, 32, 3, 3}},
        {"up1.inl.conv.weight", 4, {16, 32, 3, 3}},
        {"final.weight", 4, {1, 16, 3, 3}},
        {"final.bias", 1, {1}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int k = dd_params_find(p, want[i].name);
        CHECKF(k >= 0, "missing parameter %s", want[i].name);
        if (k < 0) continue;
        const dd_param_info *q = &p->info[k];
        int same = q->ndim == want[i].ndim;
        for (int d = 0; same && d < q->ndim; d++) same = q->shape[d] == want[i].shape[d];
        CHECKF(same, "parameter %s has the wrong shape", want[i].name);
    }
    CHECK(dd_params_find(p, "attn.qkv.bias") < 0); /* qkv has no bias */
    CHECK(dd_params_find(p, "down1.skip.weight") < 0); /* identity skip */
    CHECK(dd_params_find(p, "ds3.weight") < 0 && dd_params_find(p, "us3.weight") < 0);
    int tk = dd_params_find(p, "table");
    CHECK(tk >= 0 && !p->info[tk].trainable);
    /* state_dict size: 602,705 + the 100x64 table */
    CHECK(dd_params_count_numel(p) == 602705 + 6400);
    /* 108 tensors, as len(UNet().state_dict()) of the peer */
    CHECKF(p->count == 108, "%d tensors", p->count);
    dd_params_free(p);

    dd_model_config_default(&c, DD_MODEL_UNET_COND);
    count(&c, &p);
    if (p) {
        int k = dd_params_find(p, "class_emb.weight");
        CHECK(k >= 0 && p->info[k].shape[0] == 11 && p->info[k].shape[1] == 64);
        k = dd_params_find(p, "down1.inl.emb.weight");
        CHECK(k >= 0 && p->info[k].shape[1] == 128); /* concat: 2 dim */
        dd_params_free(p);
    }
    dd_model_config_default(&c, DD_MODEL_LENET);
    count(&c, &p);
    if (p) {
        int k = dd_params_find(p, "fc1.weight");
        CHECK(k >= 0 && p->info[k].shape[0] == 120 && p->info[k].shape[1] == 256);
        dd_params_free(p);
    }
}

static void test_sinusoid(void) {
    float tab[3 * 8]; /* (3, 8) */
    dd_sinusoid_table(tab, 3, 8);
    /* p = 2, r = 4: f = 1/10000^(4/6) */
    double f = 1.0 / pow(10000.0, 4.0 / 6.0);
    CHECK(fabsf(tab[8 + 4] - (float)sin(2 * f)) < 1e-7f);
    CHECK(fabsf(tab[8 + 5] - (float)cos(2 * f)) < 1e-7f);
    CHECK(fabsf(tab[0] - (float)sin(1.0)) < 1e-7f); /* r = 0: f = 1 */
    CHECK(fabsf(tab[7] - (float)cos(1e-4)) < 1e-7f); /* last pair: f = 1e-4 */
}

/* A config error must name the problem. */
static void expect_invalid(const dd_model_config *c, const char *needle) {
    dd_error_clear();
    int rc = dd_model_config_validate(c);
    CHECKF(rc != 0, "config accepted, expected an error with '%s'", needle);
    CHECKF(strstr(dd_error_message(), needle), "message '%s' lacks '%s'", dd_error_message(), needle);
    /* and the builder refuses it too */
    dd_params *p = dd_params_new(&dd_cpu_backend);
    CHECK(dd_model_register(p, c) != 0);
    CHECKF(strstr(dd_error_message(), needle), "build message '%s' lacks '%s'", dd_error_message(), needle);
    dd_params_free(p);
}

static void test_validation(void) {
    dd_model_config c;
    for (int k = 0; k < DD_MODEL_KIND_COUNT; k++) {
        dd_model_config_default(&c, (dd_model_kind)k);
        CHECKF(dd_model_config_validate(&c) == 0, "defaults of %s: %s",
               dd_model_kind_name((dd_model_kind)k), dd_error_message());
    }
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.height = 30; /* 30 / 4 */
    expect_invalid(&c, "not divisible by 2^2 = 4");
    c.height = 28, c.width = 26;
    expect_invalid(&c, "26 is not divisible");
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.n_mult = 4, c.mult[3] = 8; /* 28 / 8 */
    expect_invalid(&c, "not divisible by 2^3 = 8");
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.groups = 3;
    expect_invalid(&c, "3 GroupNorm groups do not divide the 16 channels");
    c.groups = 8, c.model_channels = 12; /* 12 % 8 */
    expect_invalid(&c, "do not divide the 12 channels");
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.mult[2] = 3, c.groups = 16; /* 48 ok for 16 groups, but level 2 has 32 */
    CHECK(dd_model_config_validate(&c) == 0);
    c.model_channels = 8, c.groups = 16;
    expect_invalid(&c, "16 GroupNorm groups do not divide the 8 channels");
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.heads = 5;
    expect_invalid(&c, "5 attention heads do not divide the 64 channels");
    c.attention = 0; /* heads do not matter without attention */
    CHECK(dd_model_config_validate(&c) == 0);
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.mult[0] = 2;
    expect_invalid(&c, "first channel multiplier must be 1");
    dd_model_config_default(&c, DD_MODEL_UNET_FIXED);
    c.mult[2] = 3;
    expect_invalid(&c, "unet-fixed has channel multipliers (1,2,4)");
    dd_model_config_default(&c, DD_MODEL_UNET_COND);
    c.classes = 0;
    expect_invalid(&c, "classes");
    dd_model_config_default(&c, DD_MODEL_MLP2D);
    c.hidden = 15;
    expect_invalid(&c, "hidden width must be even");
    dd_model_config_default(&c, DD_MODEL_LENET);
    c.height = 32;
    expect_invalid(&c, "lenet takes 1x28x28");
    dd_model_config_default(&c, DD_MODEL_UNET);
    c.timesteps = 0;
    expect_invalid(&c, "timesteps");
}

/* The graph's inputs, not only the config, are checked at build time. */
static void test_build_errors(void) {
    dd_model_config c;
    dd_model_config_default(&c, DD_MODEL_UNET);
    dd_params *p = dd_params_new(&dd_cpu_backend);
    dd_graph *g = dd_graph_new(p);
    int x = dd_input(g, "x", 2, 1, 30, 28);
    int t = dd_input_index_from(g, "t", 2, 1);
    dd_error_clear();
    CHECK(dd_model_build(g, &c, x, t, -1, NULL) < 0);
    CHECKF(strstr(dd_error_message(), "30x28 is not divisible by 2^2 = 4"), "%s", dd_error_message());
    int x3 = dd_input(g, "x3", 2, 3, 28, 28);
    CHECK(dd_model_build(g, &c, x3, t, -1, NULL) < 0);
    CHECKF(strstr(dd_error_message(), "x must be (N, 1, H, W)"), "%s", dd_error_message());
    int x2 = dd_input(g, "x2", 2, 1, 28, 28);
    int t0 = dd_input_index(g, "t0", 2); /* base 0: timesteps would be off by one */
    CHECK(dd_model_build(g, &c, x2, t0, -1, NULL) < 0);
    CHECKF(strstr(dd_error_message(), "dd_input_index_from"), "%s", dd_error_message());
    int t3 = dd_input_index_from(g, "t3", 3, 1);
    CHECK(dd_model_build(g, &c, x2, t3, -1, NULL) < 0);
    CHECKF(strstr(dd_error_message(), "t has 3 entries for a batch of 2"), "%s", dd_error_message());
    int lab = dd_input_index(g, "labels", 2);
    CHECK(dd_model_build(g, &c, x2, t, lab, NULL) < 0);
    CHECKF(strstr(dd_error_message(), "takes no class labels"), "%s", dd_error_message());
    dd_model_config cc;
    dd_model_config_default(&cc, DD_MODEL_UNET_COND);
    CHECK(dd_model_build(g, &cc, x2, t, -1, NULL) < 0);
    CHECKF(strstr(dd_error_message(), "labels"), "%s", dd_error_message());
    /* a 56x56 sampling graph of a 28x28 model is fine: only divisibility matters */
    int x56 = dd_input(g, "x56", 2, 1, 56, 56);
    int out = dd_model_build(g, &c, x56, t, -1, NULL);
    CHECKF(out >= 0, "%s", dd_error_message());
    if (out >= 0) CHECK(g->t[out].shape[2] == 56 && g->t[out].shape[1] == 1);
    dd_graph_free(g);
    dd_params_free(p);
}

static void test_json(void) {
    for (int k = 0; k < DD_MODEL_KIND_COUNT; k++) {
        dd_model_config c, d;
        dd_model_config_default(&c, (dd_model_kind)k);
        if (k == DD_MODEL_UNET) {
            c.n_mult = 4, c.mult[3] = 4, c.attention = 0, c.groups = 4, c.height = c.width = 32;
        }
        if (k == DD_MODEL_UNET_COND) c.combine = DD_COMBINE_SUM, c.classes = 7;
        char *js = dd_model_config_to_json(&c);
        CHECK(js != NULL);
        if (!js) continue;
        memset(&d, 0x55, sizeof d);
        CHECKF(dd_model_config_from_json(&d, js) == 0, "%s: %s", js, dd_error_message());
        char a[256], b[256];
        dd_model_config_describe(&c, a, sizeof a);
        dd_model_config_describe(&d, b, sizeof b);
        CHECKF(!strcmp(a, b), "round trip: '%s' != '%s'", a, b);
        CHECK(d.kind == c.kind && d.n_mult == c.n_mult && d.combine == c.combine);
        free(js);
    }
    dd_model_config c;
    CHECK(dd_model_config_from_json(&c, "{\"kind\":\"unet\",\"model_channels\":8}") == 0 &&
          c.model_channels == 8 && c.n_mult == 3 && c.groups == 8);
    CHECK(dd_model_config_from_json(&c, "{\"kind\":\"unet\",\"colour\":1}") != 0);
    CHECK(strstr(dd_error_message(), "unknown key \"colour\""));
    CHECK(dd_model_config_from_json(&c, "{\"kind\":\"vae\"}") != 0);
    CHECK(strstr(dd_error_message(), "unknown model 'vae'"));
    CHECK(dd_model_config_from_json(&c, "{\"kind\":\"unet\",\"groups\":2.5}") != 0);
    CHECK(dd_model_config_from_json(&c, "{\"kind\":\"unet\",\"height\":30}") != 0);
    CHECK(strstr(dd_error_message(), "model config: image size 30x28"));
    CHECK(dd_model_config_from_json(&c, "[1,2]") != 0);
    CHECK(dd_model_config_from_json(&c, "{\"kind\":") != 0);
}

/* Copy every parameter of src into dst by name (same shapes). */
static int copy_params(dd_params *dst, const dd_params *src) {
    for (int i = 0; i < src->count; i++) {
        int j = dd_params_find(dst, src->info[i].name);
        if (j < 0 || dst->info[j].numel != src->info[i].numel) return -1;
        float *v = malloc(src->info[i].numel * sizeof(float));
        int rc = !v || dd_params_get(src, i, v, 0) || dd_params_set(dst, j, v, 0);
        free(v);
        if (rc) return -1;
    }
    return 0;
}

typedef struct {
    dd_params *p;
    dd_graph *g;
    int x, t, out;
} built;

static int build_run(built *b, const dd_model_config *c, int N, uint64_t seed) {
    memset(b, 0, sizeof *b);
    b->p = dd_params_new(&dd_cpu_backend);
    b->g = dd_graph_new(b->p);
    b->x = dd_input(b->g, "x", N, c->in_channels, c->height, c->width);
    b->t = dd_input_index_from(b->g, "t", N, 1);
    b->out = dd_model_build(b->g, c, b->x, b->t, -1, NULL);
    if (b->out < 0) return -1;
    return dd_params_alloc(b->p, seed);
}

static void test_fixed_equals_unet(void) {
    dd_model_config f, u;
    dd_model_config_default(&f, DD_MODEL_UNET_FIXED);
    f.model_channels = 8;
    u = f;
    u.kind = DD_MODEL_UNET;
    const int N = 2;
    built bf, bu;
    CHECK_OK(build_run(&bf, &f, N, 11));
    CHECK_OK(build_run(&bu, &u, N, 99)); /* other seed: the copy below must matter */
    CHECK_OK(copy_params(bu.p, bf.p));
    CHECK_OK(dd_graph_plan(bf.g, 0));
    CHECK_OK(dd_graph_plan(bu.g, 0));
    float x[2 * 28 * 28]; /* (N, 1, 28, 28) */
    tu_fill_uniform(x, sizeof x / sizeof x[0], -1, 1, 5);
    int32_t t[2] = {1, 77};
    float yf[2 * 28 * 28], yu[2 * 28 * 28];
    CHECK_OK(dd_graph_set_input(bf.g, bf.x, x, sizeof x));
    CHECK_OK(dd_graph_set_input(bu.g, bu.x, x, sizeof x));
    CHECK_OK(dd_graph_set_input(bf.g, bf.t, t, sizeof t));
    CHECK_OK(dd_graph_set_input(bu.g, bu.t, t, sizeof t));
    CHECK_OK(dd_graph_forward(bf.g));
    CHECK_OK(dd_graph_forward(bu.g));
    CHECK_OK(dd_graph_get(bf.g, bf.out, yf));
    CHECK_OK(dd_graph_get(bu.g, bu.out, yu));
    double norm = 0;
    for (int i = 0; i < 2 * 28 * 28; i++) norm += (double)yf[i] * yf[i];
    CHECKF(norm > 1e-6, "output is all zero (norm^2 %g): the comparison would be empty", norm);
    CHECKF(!memcmp(yf, yu, sizeof yf), "UNetFixed and UNet (1,2,4) differ: rel %g",
           tu_rel_err(yu, yf, 2 * 28 * 28));
    /* and the output depends on the weights: UNet with its own initialisation differs */
    built bo;
    CHECK_OK(build_run(&bo, &u, N, 99));
    CHECK_OK(dd_graph_plan(bo.g, 0));
    CHECK_OK(dd_graph_set_input(bo.g, bo.x, x, sizeof x));
    CHECK_OK(dd_graph_set_input(bo.g, bo.t, t, sizeof t));
    CHECK_OK(dd_graph_forward(bo.g));
    CHECK_OK(dd_graph_get(bo.g, bo.out, yu));
    CHECK(memcmp(yf, yu, sizeof yf) != 0);
    /* an out-of-range timestep is refused at the input, not read past the table */
    int32_t bad[2] = {0, 5};
    CHECK(dd_graph_set_input(bf.g, bf.t, bad, sizeof bad) != 0);
    bad[0] = 101;
    CHECK(dd_graph_set_input(bf.g, bf.t, bad, sizeof bad) != 0);
    built *all[3] = {&bf, &bu, &bo};
    for (int i = 0; i < 3; i++) {
        dd_graph_free(all[i]->g);
        dd_params_free(all[i]->p);
    }
}

/* A forward-only graph that reuses memory gives the same bits as one that does not, in a far
 * smaller arena; the kept outputs (the output, LeNet's features) stay readable. */
static void reuse_case(const char *what, dd_model_kind kind, int N, double min_ratio) {
    dd_model_config c;
    dd_model_config_default(&c, kind);
    if (kind != DD_MODEL_LENET) c.model_channels = 8;
    dd_params *p = dd_params_new(&dd_cpu_backend);
    dd_graph *g[2];
    int x[2], t[2] = {-1, -1}, lab[2] = {-1, -1}, out[2], feat[2] = {-1, -1};
    for (int k = 0; k < 2; k++) {
        g[k] = dd_graph_new(p);
        x[k] = dd_input(g[k], "x", N, c.in_channels, c.height, c.width);
        if (kind != DD_MODEL_LENET) t[k] = dd_input_index_from(g[k], "t", N, 1);
        if (dd_model_is_conditional(&c) || kind == DD_MODEL_LENET)
            lab[k] = dd_input_index(g[k], "labels", N);
        out[k] = dd_model_build(g[k], &c, x[k], t[k], kind == DD_MODEL_LENET ? -1 : lab[k],
                                kind == DD_MODEL_LENET ? &feat[k] : NULL);
        CHECKF(out[k] >= 0, "%s: build: %s", what, dd_error_message());
        if (out[k] < 0) return;
        if (k == 0) CHECK_OK(dd_params_alloc(p, 7));
    }
    CHECK_OK(dd_graph_reuse_memory(g[1]));
    CHECK_OK(dd_graph_keep(g[1], out[1]));
    if (feat[1] >= 0) CHECK_OK(dd_graph_keep(g[1], feat[1]));
    CHECK_OK(dd_graph_plan(g[0], 0));
    CHECK_OK(dd_graph_plan(g[1], 0));
    CHECKF(g[1]->arena_floats * min_ratio < g[0]->arena_floats,
           "%s: arena %zu floats with reuse, %zu without", what, g[1]->arena_floats, g[0]->arena_floats);
    printf("  %s: arena %.2f MB with reuse, %.2f MB without\n", what, g[1]->arena_floats * 4e-6,
           g[0]->arena_floats * 4e-6);
    const size_t nx = (size_t)N * c.in_channels * c.height * c.width;
    float *xv = malloc(nx * sizeof(float));
    int32_t *iv = malloc((size_t)N * sizeof(int32_t));
    tu_fill_uniform(xv, nx, -1, 1, 3);
    const size_t no = dd_graph_tensor(g[0], out[0])->numel;
    float *y[2] = {malloc(no * sizeof(float)), malloc(no * sizeof(float))};
    size_t nf = feat[0] >= 0 ? dd_graph_tensor(g[0], feat[0])->numel : 1;
    float *f[2] = {malloc(nf * sizeof(float)), malloc(nf * sizeof(float))};
    for (int rep = 0; rep < 2; rep++) /* twice: the second pass finds stale values everywhere */
        for (int k = 0; k < 2; k++) {
            CHECK_OK(dd_graph_set_input(g[k], x[k], xv, nx * sizeof(float)));
            if (t[k] >= 0) {
                for (int i = 0; i < N; i++) iv[i] = 1 + (i * 37 + rep) % c.timesteps;
                CHECK_OK(dd_graph_set_input(g[k], t[k], iv, (size_t)N * sizeof(int32_t)));
            }
            for (int i = 0; i < N; i++) iv[i] = (i + rep) % (c.classes > 0 ? c.classes : 1);
            if (lab[k] >= 0) CHECK_OK(dd_graph_set_input(g[k], lab[k], iv, (size_t)N * sizeof(int32_t)));
            CHECK_OK(dd_graph_forward(g[k]));
            CHECK_OK(dd_graph_get(g[k], out[k], y[k]));
            if (feat[k] >= 0) CHECK_OK(dd_graph_get(g[k], feat[k], f[k]));
        }
    CHECKF(!memcmp(y[0], y[1], no * sizeof(float)), "%s: outputs differ with memory reuse", what);
    if (feat[0] >= 0)
        CHECKF(!memcmp(f[0], f[1], nf * sizeof(float)), "%s: kept features differ with reuse", what);
    free(xv), free(iv), free(y[0]), free(y[1]), free(f[0]), free(f[1]);
    dd_graph_free(g[0]);
    dd_graph_free(g[1]);
    dd_params_free(p);
}

static void test_reuse_memory(void) {
    /* the UNets keep only their skips alive: a sixth of the memory; LeNet5 is mostly its input
     * and its kept features */
    reuse_case("UNet", DD_MODEL_UNET, 3, 4.0);
    reuse_case("UNetConditioned", DD_MODEL_UNET_COND, 2, 4.0);
    reuse_case("LeNet5", DD_MODEL_LENET, 5, 1.3);
}

/* Planning puts dense layers of one input next to each other (each only after its weights
 * exist) and forward runs them as one dense_group_forward; the values are those of the graph
 * as built. out = gelu(x W1^T + b1) + x W2^T + b2 + x W3^T, with an unrelated dense layer of
 * another input (v) between the first two, checked against direct backend calls, and against
 * a backend without dense_group_forward and dense_group_backward (the nodes one by one) bit
 * for bit, gradients too. */
static void test_dense_groups(void) {
    enum { N = 3, CIN = 5, CO = 4 };
    dd_backend single = dd_cpu_backend; /* the same ops, no group entry */
    single.dense_group_forward = NULL;
    single.dense_group_backward = NULL;
    const dd_backend *bes[2] = {&dd_cpu_backend, &single};
    float xv[N * CIN], vv[N * CIN], out[2][N * CO], *grads[2] = {NULL, NULL};
    size_t total = 0;
    for (int i = 0; i < N * CIN; i++) xv[i] = sinf(0.7f * (float)i), vv[i] = cosf(0.3f * (float)i);
    dd_params *keep = NULL;
    for (int k = 0; k < 2; k++) {
        dd_params *p = dd_params_new(bes[k]);
        dd_graph *g = dd_graph_new(p);
        const int x = dd_input(g, "x", N, CIN, 1, 1), v = dd_input(g, "v", N, CIN, 1, 1);
        const int d1 = dd_dense_layer(g, "d1", x, CO, 1);
        const int a = dd_activation(g, d1, DD_ACT_GELU_TANH);
        const int e = dd_dense_layer(g, "e", v, CO, 1); /* another input: not grouped */
        const int d2 = dd_dense_layer(g, "d2", x, CO, 1);
        const int s = dd_add(g, dd_add(g, a, e), d2);
        const int d3 = dd_dense_layer(g, "d3", x, CO, 0);
        const int o = dd_add(g, s, d3);
        const int loss = dd_mse(g, o, dd_input(g, "target", N, CO, 1, 1));
        CHECKF(loss >= 0, "building: %s", dd_error_message());
        if (loss < 0) return;
        CHECK_OK(dd_params_alloc(p, 5));
        CHECK_OK(dd_graph_plan(g, 1));
        /* d1, d2, d3 consecutive, in that order */
        int at[3] = {-1, -1, -1};
        for (int i = 0; i < g->nn; i++)
            for (int j = 0; j < 3; j++)
                if (g->nodes[i].out == (j == 0 ? d1 : j == 1 ? d2 : d3)) at[j] = i;
        CHECKF(at[1] == at[0] + 1 && at[2] == at[0] + 2, "dense nodes at %d, %d, %d", at[0],
               at[1], at[2]);
        float target[N * CO] = {0};
        CHECK_OK(dd_graph_set_input(g, x, xv, sizeof xv));
        CHECK_OK(dd_graph_set_input(g, v, vv, sizeof vv));
        CHECK_OK(dd_graph_set_input(g, dd_graph_find(g, "target"), target, sizeof target));
        CHECK_OK(dd_graph_forward(g));
        CHECK_OK(dd_graph_get(g, o, out[k]));
        CHECK_OK(dd_graph_backward(g, loss));
        total = p->total; /* the parameters' gradients (CPU memory) */
        grads[k] = malloc(total * sizeof(float));
        if (grads[k]) memcpy(grads[k], p->grad, total * sizeof(float));
        if (k == 0) {
            /* direct calls on the same parameters */
            const float *P = p->data;
            const dd_param_info *I = p->info;
            float y1[N * CO], y2[N * CO], y3[N * CO], ye[N * CO], ref[N * CO];
            const int w1 = dd_params_find(p, "d1.weight"), b1 = dd_params_find(p, "d1.bias");
            const int w2 = dd_params_find(p, "d2.weight"), b2 = dd_params_find(p, "d2.bias");
            const int w3 = dd_params_find(p, "d3.weight"), we = dd_params_find(p, "e.weight");
            const int be = dd_params_find(p, "e.bias");
            dd_cpu_backend.dense_forward(y1, xv, P + I[w1].offset, P + I[b1].offset, N, CIN, CO);
            dd_cpu_backend.act_forward(y1, y1, N * CO, DD_ACT_GELU_TANH);
            dd_cpu_backend.dense_forward(ye, vv, P + I[we].offset, P + I[be].offset, N, CIN, CO);
            dd_cpu_backend.dense_forward(y2, xv, P + I[w2].offset, P + I[b2].offset, N, CIN, CO);
            dd_cpu_backend.dense_forward(y3, xv, P + I[w3].offset, NULL, N, CIN, CO);
            double err = 0.0;
            for (int i = 0; i < N * CO; i++) {
                ref[i] = y1[i] + ye[i] + y2[i] + y3[i];
                err = fmax(err, fabs((double)ref[i] - out[0][i]));
            }
            CHECKF(err < 1e-6, "grouped forward differs from direct calls by %g", err);
        }
        dd_graph_free(g);
        if (k == 0) keep = p;
        else dd_params_free(p);
    }
    dd_params_free(keep);
    CHECKF(!memcmp(out[0], out[1], sizeof out[0]), "outputs differ with and without groups");
    CHECKF(grads[0] && grads[1] && !memcmp(grads[0], grads[1], total * sizeof(float)),
           "gradients differ with and without groups");
    free(grads[0]), free(grads[1]);
}

/* One training graph of the UNet with its decoder ResBlocks' skip convolutions merged into their
 * first ones (the default) or apart (DIFFUSION_SKIP_MERGE=0): loss = mse(out, target). */
typedef struct {
    dd_params *p;
    dd_graph *g;
    int x, t, out, target, loss, convs;
} skip_run;

static int skip_build(skip_run *r, const dd_model_config *c, int N, int merge, dd_params *over) {
    memset(r, 0, sizeof *r);
    setenv("DIFFUSION_SKIP_MERGE", merge ? "1" : "0", 1);
    r->p = over ? over : dd_params_new(&dd_cpu_backend);
    r->g = dd_graph_new(r->p);
    r->x = dd_input(r->g, "x", N, c->in_channels, c->height, c->width);
    r->t = dd_input_index_from(r->g, "t", N, 1);
    r->out = dd_model_build(r->g, c, r->x, r->t, -1, NULL);
    r->target = dd_input(r->g, "target", N, c->in_channels, c->height, c->width);
    r->loss = dd_mse(r->g, r->out, r->target);
    unsetenv("DIFFUSION_SKIP_MERGE");
    if (r->loss < 0) return -1;
    for (int i = 0; i < r->g->nn; i++) r->convs += r->g->nodes[i].op == DD_OP_CONV2D;
    return over ? 0 : dd_params_alloc(r->p, 7);
}

static int skip_step(skip_run *r, const float *x, const int32_t *t, const float *target,
                     float *out, float *loss, int backward) {
    DD_TRY(dd_graph_set_input(r->g, r->x, x, (size_t)r->g->t[r->x].numel * sizeof(float)));
    DD_TRY(dd_graph_set_input(r->g, r->t, t, (size_t)r->g->t[r->t].numel * sizeof(int32_t)));
    DD_TRY(dd_graph_set_input(r->g, r->target, target, (size_t)r->g->t[r->x].numel * sizeof(float)));
    DD_TRY(dd_graph_forward(r->g));
    DD_TRY(dd_graph_get(r->g, r->out, out));
    DD_TRY(dd_graph_get(r->g, r->loss, loss));
    return backward ? dd_graph_backward(r->g, r->loss) : 0;
}

/* The merged skip convolutions compute what the convolutions apart do: the same initial values
 * (registration order kept), the skip's weights right after ConvEmbed's, three fewer
 * convolutions, and the same output, loss and gradients (to float rounding: the merged
 * convolution's input gradient sums both halves in one pass). A second graph over the merged
 * parameters merges too; a graph over parameters laid out apart builds apart. */
static void test_skip_merge(void) {
    dd_model_config c;
    dd_model_config_default(&c, DD_MODEL_UNET);
    const int N = 2, n = N * 28 * 28;
    skip_run m, a;
    CHECK_OK(skip_build(&m, &c, N, 1, NULL));
    CHECK_OK(skip_build(&a, &c, N, 0, NULL));
    if (m.loss < 0 || a.loss < 0) return;
    CHECKF(m.convs == a.convs - 3, "%d convolutions merged, %d apart", m.convs, a.convs);
    CHECK(m.p->count == a.p->count);
    for (int i = 0; i < m.p->count && i < a.p->count; i++) {
        const dd_param_info *q = &m.p->info[i];
        CHECKF(!strcmp(q->name, a.p->info[i].name), "parameter %d: %s merged, %s apart", i,
               q->name, a.p->info[i].name);
        CHECKF(!memcmp(m.p->data + q->offset, a.p->data + a.p->info[i].offset,
                       q->numel * sizeof(float)), "%s: other initial values when merged", q->name);
    }
    const char *lv[3] = {"up1", "up2", "up3"};
    for (int l = 0; l < 3; l++) {
        char n1[64], n2[64];
        const char *sfx[2] = {"weight", "bias"};
        for (int k = 0; k < 2; k++) {
            snprintf(n1, sizeof n1, "%s.inl.conv.%s", lv[l], sfx[k]);
            snprintf(n2, sizeof n2, "%s.skip.%s", lv[l], sfx[k]);
            const int i1 = dd_params_find(m.p, n1), i2 = dd_params_find(m.p, n2);
            CHECK(i1 >= 0 && i2 >= 0);
            if (i1 < 0 || i2 < 0) continue;
            CHECKF(m.p->info[i2].offset == m.p->info[i1].offset + m.p->info[i1].numel,
                   "%s does not follow %s", n2, n1);
        }
    }
    CHECK_OK(dd_graph_plan(m.g, 1));
    CHECK_OK(dd_graph_plan(a.g, 1));
    float *x = malloc(3 * sizeof(float) * (size_t)n), *target = x + n, *tmp = x + 2 * n;
    float *om = malloc(2 * sizeof(float) * (size_t)n), *oa = om + n;
    CHECK(x && om);
    if (!x || !om) return;
    tu_fill_uniform(x, (size_t)n, -1, 1, 3);
    tu_fill_uniform(target, (size_t)n, -1, 1, 4);
    const int32_t t[2] = {3, 90};
    float lm, la;
    CHECK_OK(skip_step(&m, x, t, target, om, &lm, 1));
    CHECK_OK(skip_step(&a, x, t, target, oa, &la, 1));
    double e = tu_rel_err(om, oa, (size_t)n);
    CHECKF(e < 1e-5, "output: merged against apart, rel %.3e", e);
    CHECKF(fabs(lm - la) <= 1e-5 * fabs(la), "loss %.9g merged, %.9g apart", lm, la);
    double worst = 0;
    for (int i = 0; i < m.p->count; i++) {
        const dd_param_info *q = &m.p->info[i];
        if (!q->trainable) continue;
        const float *gm = m.p->grad + q->offset, *ga = a.p->grad + a.p->info[i].offset;
        double s = 0;
        for (size_t j = 0; j < q->numel; j++) s += (double)ga[j] * ga[j];
        CHECKF(s > 0, "%s: zero gradient apart: nothing to compare", q->name);
        const double ei = tu_rel_err(gm, ga, q->numel);
        CHECKF(ei < 1e-4, "%s: gradient merged against apart, rel %.3e", q->name, ei);
        if (ei > worst) worst = ei;
    }
    printf("skip merge: output rel %.2e, worst gradient rel %.2e\n", e, worst);
    /* a second graph (forward only, reusing memory) over the merged parameters merges again */
    skip_run m2, a2;
    CHECK_OK(skip_build(&m2, &c, N, 1, m.p));
    CHECK(m2.convs == m.convs);
    CHECK_OK(dd_graph_reuse_memory(m2.g));
    CHECK_OK(dd_graph_plan(m2.g, 0));
    CHECK_OK(skip_step(&m2, x, t, target, tmp, &lm, 0));
    CHECKF(!memcmp(tmp, om, sizeof(float) * (size_t)n), "second merged graph differs: rel %.3e",
           tu_rel_err(tmp, om, (size_t)n));
    /* ... and one over parameters laid out apart builds apart, asked to merge or not */
    CHECK_OK(skip_build(&a2, &c, N, 1, a.p));
    CHECK(a2.convs == a.convs);
    dd_graph_free(a2.g);
    /* the merged parameters read apart: the skip found where it was placed */
    CHECK_OK(skip_build(&a2, &c, N, 0, m.p));
    CHECK(a2.convs == a.convs);
    CHECK_OK(dd_graph_plan(a2.g, 0));
    CHECK_OK(skip_step(&a2, x, t, target, tmp, &la, 0));
    e = tu_rel_err(tmp, om, (size_t)n);
    CHECKF(e < 1e-5, "merged parameters built apart: rel %.3e", e);
    dd_graph_free(a2.g);
    /* a checkpoint of the parameters laid out apart, after an Adam step, loads into the merged
     * layout by name (values, EMA, Adam's moments), and the merged graph then gives the apart
     * one's output: checkpoints from before the merge keep working, and the other way round */
    CHECK_OK(dd_params_adam(a.p, 1e-3f, 0.9, 0.999, 1e-8, NULL));
    CHECK_OK(dd_params_ema(a.p, 0.9f, 0, NULL));
    CHECK_OK(dd_params_step_done(a.p, NULL));
    CHECK_OK(dd_params_read_step(a.p));
    char path[400];
    snprintf(path, sizeof path, "%s/test_models_skip_%ld.safetensors", DD_BINARY_DIR, (long)getpid());
    CHECK_OK(dd_checkpoint_save(path, a.p, NULL, 0, DD_CKPT_TRAIN));
    CHECK_OK(dd_checkpoint_load(path, m.p, DD_CKPT_TRAIN));
    remove(path);
    CHECK(m.p->adam_step == 1);
    for (int i = 0; i < m.p->count; i++) {
        const dd_param_info *q = &m.p->info[i], *qa = &a.p->info[i];
        const float *bm[4] = {m.p->data, m.p->ema, m.p->adam_m, m.p->adam_v};
        const float *ba[4] = {a.p->data, a.p->ema, a.p->adam_m, a.p->adam_v};
        for (int k = 0; k < 4; k++)
            CHECKF(!memcmp(bm[k] + q->offset, ba[k] + qa->offset, q->numel * sizeof(float)),
                   "%s: buffer %d differs after loading the apart checkpoint", q->name, k);
    }
    CHECK_OK(skip_step(&m2, x, t, target, tmp, &lm, 0));
    CHECK_OK(skip_step(&a, x, t, target, oa, &la, 0));
    e = tu_rel_err(tmp, oa, (size_t)n);
    CHECKF(e < 1e-5, "merged layout loaded from the apart checkpoint: rel %.3e", e);
    /* a bad DIFFUSION_SKIP_MERGE stops the build with a message */
    setenv("DIFFUSION_SKIP_MERGE", "yes", 1);
    a2.g = dd_graph_new(m.p);
    CHECK(dd_model_build(a2.g, &c, dd_input(a2.g, "x", N, 1, 28, 28),
                         dd_input_index_from(a2.g, "t", N, 1), -1, NULL) < 0);
    CHECK(strstr(dd_error_message(), "DIFFUSION_SKIP_MERGE=yes: use 1"));
    unsetenv("DIFFUSION_SKIP_MERGE");
    dd_graph_free(a2.g);
    /* bad slices and spans are refused with a message */
    a2.g = dd_graph_new(m.p);
    const int xx = dd_input(a2.g, "x", 2, 32, 4, 4), yy = dd_input(a2.g, "y", 2, 8, 4, 4);
    const int w = dd_param(a2.g, "up1.norm.weight", 1, (int64_t[]){16}, DD_INIT_ONE);
    const int b = dd_param(a2.g, "up1.norm.bias", 1, (int64_t[]){16}, DD_INIT_ZERO);
    CHECK(dd_group_norm_slice(a2.g, xx, 16, w, b, 8, -1, 1, -1, 0) >= 0);
    CHECK(dd_group_norm_slice(a2.g, xx, 17, w, b, 8, -1, 1, -1, 0) < 0);
    CHECK(strstr(dd_error_message(), "channels 17 to 33 of input (2, 32, 4, 4)"));
    CHECK(dd_group_norm_slice(a2.g, xx, 0, w, b, 8, -1, 1, yy, 0) < 0);
    CHECK(strstr(dd_error_message(), "residual (2, 8, 4, 4) (from channel 0)"));
    CHECK(dd_group_norm_slice(a2.g, xx, 0, w, b, 3, -1, 1, -1, 0) < 0);
    CHECK(dd_param_span(a2.g, xx, 4) < 0);
    CHECK(strstr(dd_error_message(), "not a parameter view"));
    const int wi = dd_param(a2.g, "up1.inl.conv.weight", 4, (int64_t[]){16, 32, 3, 3}, DD_INIT_GLOROT);
    CHECK(dd_param_span(a2.g, wi, 32) >= 0); /* the skip's room */
    CHECK(dd_param_span(a2.g, wi, 33) < 0);  /* past it */
    CHECK(strstr(dd_error_message(), "do not fit it and the room after it"));
    CHECK(dd_param_span(a2.g, w, 32) < 0); /* no room after a GroupNorm's scale */
    dd_graph_free(a2.g);
    dd_graph_free(m2.g);
    dd_graph_free(m.g);
    dd_graph_free(a.g);
    dd_params_free(m.p);
    dd_params_free(a.p);
    free(x);
    free(om);
}

int main(void) {
    test_dense_groups();
    test_counts();
    test_names();
    test_sinusoid();
    test_validation();
    test_build_errors();
    test_json();
    test_fixed_equals_unet();
    test_reuse_memory();
    test_skip_merge();
    return tu_finish();
}
