/* Building blocks of the models (SPEC.md "Models"), in the PyTorch peer's layer order. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blocks.h"
#include "diffusion/error.h"
#include "diffusion/models.h"

const char *mb_name(char *buf, size_t size, const char *prefix, const char *suffix) {
    if (prefix && prefix[0]) snprintf(buf, size, "%s.%s", prefix, suffix);
    else snprintf(buf, size, "%s", suffix);
    return buf;
}

int mb_channels(const dd_graph *g, int x) {
    return x < 0 || x >= g->nt ? -1 : (int)g->t[x].shape[1];
}

void dd_sinusoid_table(float *table, int rows, int dim) {
    for (int p = 1; p <= rows; p++)
        for (int r = 0; r + 1 < dim; r += 2) {
            double f = 1.0 / pow(10000.0, (double)r / (double)(dim - 2));
            table[(size_t)(p - 1) * dim + r] = (float)sin(p * f);
            table[(size_t)(p - 1) * dim + r + 1] = (float)cos(p * f);
        }
}

int mb_sinusoid_lookup(dd_graph *g, const char *name, int t, int rows, int dim) {
    if (t < 0) return -1;
    int known = dd_params_find(g->params, name) >= 0;
    int64_t shape[2] = {rows, dim};
    int table = dd_param(g, name, 2, shape, DD_INIT_FIXED);
    if (table < 0) return -1;
    /* Values are given once, at first registration; a second graph over allocated parameters
     * finds the table already filled. */
    if (!known && !g->params->allocated) {
        float *v = malloc(sizeof(float) * (size_t)rows * (size_t)dim); /* (rows, dim) */
        if (!v) return dd_error("out of memory for the %dx%d sinusoidal table", rows, dim);
        dd_sinusoid_table(v, rows, dim);
        int rc = dd_params_set_fixed(g->params, dd_params_find(g->params, name), v);
        free(v);
        if (rc) return -1;
    }
    return dd_embedding(g, table, t);
}

int mb_embedding(dd_graph *g, const char *prefix, int idx, int rows, int dim) {
    char nm[DD_NAME_MAX];
    int64_t shape[2] = {rows, dim};
    int table = dd_param(g, mb_name(nm, sizeof nm, prefix, "weight"), 2, shape, DD_INIT_NORMAL);
    return dd_embedding(g, table, idx);
}

int mb_time_mlp(dd_graph *g, int emb, int dim) {
    int h = dd_dense_layer(g, "t1", emb, dim, 1);
    h = dd_activation(g, h, DD_ACT_GELU_TANH); /* Flux's gelu is the tanh form */
    return dd_dense_layer(g, "t2", h, dim, 1);
}

/* a GroupNorm's scale and shift parameters, for x's channels */
static int gn_params(dd_graph *g, const char *prefix, int x, int *gamma, int *beta) {
    char nm[DD_NAME_MAX];
    int C = mb_channels(g, x);
    if (C < 0) return -1;
    int64_t shape[1] = {C};
    *gamma = dd_param(g, mb_name(nm, sizeof nm, prefix, "weight"), 1, shape, DD_INIT_ONE);
    *beta = dd_param(g, mb_name(nm, sizeof nm, prefix, "bias"), 1, shape, DD_INIT_ZERO);
    return *gamma < 0 || *beta < 0 ? -1 : 0;
}

int mb_group_norm(dd_graph *g, const char *prefix, int x, int groups, int add, int swish) {
    int gamma, beta;
    if (gn_params(g, prefix, x, &gamma, &beta)) return -1;
    return dd_group_norm(g, x, gamma, beta, groups, add, swish, -1);
}

int mb_conv_embed(dd_graph *g, const char *prefix, int x, int cout, int emb_swish, int groups) {
    char nm[DD_NAME_MAX];
    int h = dd_conv2d_layer(g, mb_name(nm, sizeof nm, prefix, "conv"), x, cout, 3, 1, 1, 1);
    int e = dd_dense_layer(g, mb_name(nm, sizeof nm, prefix, "emb"), emb_swish, cout, 1);
    /* GroupNorm, + the per-channel embedding, swish: one fused op */
    return mb_group_norm(g, mb_name(nm, sizeof nm, prefix, "norm"), h, groups, e, 1);
}

/* Whether a ResBlock with a skip convolution runs it merged with its first convolution (both
 * read x): 1 (DIFFUSION_SKIP_MERGE unset or 1), 0 (DIFFUSION_SKIP_MERGE=0: apart, for
 * comparison), or -1 with a message for another value. */
static int skip_merge_wanted(void) {
    const char *e = getenv("DIFFUSION_SKIP_MERGE");
    if (!e || !*e || !strcmp(e, "1")) return 1;
    if (!strcmp(e, "0")) return 0;
    return dd_error("DIFFUSION_SKIP_MERGE=%s: use 1 (merge, the default) or 0", e);
}

/* The ResBlock's two convolutions of x (ConvEmbed's, and the skip) as one convolution of 2 cout
 * outputs: one pass over x instead of two, and on a GPU one launch that fills the wider tiles a
 * cout of 16 leaves half empty. Their weights and biases sit side by side in the parameter
 * buffers (dd_params_reserve), registered in the modules' order as apart. The two group norms
 * read the halves of the output in place. Returns 1 (nothing built, no message) when the
 * parameters cannot be laid out so (sizes that are not whole 16-byte units, or a graph built
 * earlier over the same parameters laid them out apart), 0 with *out set, -1 on an error. */
static int res_block_merged(dd_graph *g, const char *prefix, int x, int cin, int cout,
                            int emb_swish, int groups, int *out) {
    char nm[DD_NAME_MAX], pf[DD_NAME_MAX];
    const size_t wn = (size_t)cout * cin * 9;
    if (wn % 4 || cout % 4) return 1;
    mb_name(pf, sizeof pf, prefix, "inl");
    int64_t ws[4] = {cout, cin, 3, 3}, bs[1] = {cout};
    int wa = dd_param(g, mb_name(nm, sizeof nm, pf, "conv.weight"), 4, ws, DD_INIT_GLOROT);
    if (wa < 0) return -1;
    const int wi = g->t[wa].param;
    if (dd_params_reserve(g->params, wi, wn)) return 1; /* laid out apart already: build apart */
    int ba = dd_param(g, mb_name(nm, sizeof nm, pf, "conv.bias"), 1, bs, DD_INIT_ZERO);
    if (ba < 0) return -1;
    const int bi = g->t[ba].param;
    if (dd_params_reserve(g->params, bi, (size_t)cout))
        return dd_error("%s: no room after the bias for the skip's", pf);
    /* x -> (N, 2 cout, H, W): ConvEmbed's channels, then the skip's */
    int m = dd_conv2d(g, x, dd_param_span(g, wa, 2 * cout), dd_param_span(g, ba, 2 * cout), 1, 1);
    int e = dd_dense_layer(g, mb_name(nm, sizeof nm, pf, "emb"), emb_swish, cout, 1);
    /* ConvEmbed's GroupNorm (gn_params would take m's 2 cout channels) */
    int64_t gs[1] = {cout};
    int gamma = dd_param(g, mb_name(nm, sizeof nm, pf, "norm.weight"), 1, gs, DD_INIT_ONE);
    int beta = dd_param(g, mb_name(nm, sizeof nm, pf, "norm.bias"), 1, gs, DD_INIT_ZERO);
    int h = dd_group_norm_slice(g, m, 0, gamma, beta, groups, e, 1, -1, 0);
    h = dd_conv2d_layer(g, mb_name(nm, sizeof nm, prefix, "conv"), h, cout, 3, 1, 1, 1);
    if (gn_params(g, mb_name(nm, sizeof nm, prefix, "norm"), h, &gamma, &beta)) return -1;
    /* the skip's parameters last, as apart, but in the rooms after ConvEmbed's */
    int sw = dd_params_add_after(g->params, wi, mb_name(nm, sizeof nm, prefix, "skip.weight"), 4,
                                 ws, DD_INIT_GLOROT);
    int sb = sw < 0 ? -1
                    : dd_params_add_after(g->params, bi, mb_name(nm, sizeof nm, prefix, "skip.bias"),
                                          1, bs, DD_INIT_ZERO);
    if (sb < 0) return -1;
    *out = dd_group_norm_slice(g, h, 0, gamma, beta, groups, -1, 1, m, cout);
    return *out < 0 ? -1 : 0;
}

int mb_res_block(dd_graph *g, const char *prefix, int x, int cout, int emb_swish, int groups) {
    char nm[DD_NAME_MAX];
    int cin = mb_channels(g, x);
    if (cin < 0) return -1;
    const int merge = cin != cout ? skip_merge_wanted() : 0;
    if (merge < 0) return -1;
    if (merge) {
        int out = -1, rc = res_block_merged(g, prefix, x, cin, cout, emb_swish, groups, &out);
        if (rc <= 0) return rc ? -1 : out;
    }
    int h = mb_conv_embed(g, mb_name(nm, sizeof nm, prefix, "inl"), x, cout, emb_swish, groups);
    h = dd_conv2d_layer(g, mb_name(nm, sizeof nm, prefix, "conv"), h, cout, 3, 1, 1, 1);
    /* GroupNorm, swish, + skip (no activation after the sum): one fused op, which comes after
     * the skip convolution; its parameters are made before the skip's, as the modules are
     * ordered (the order gives each parameter its initial values' random stream) */
    int gamma, beta;
    if (gn_params(g, mb_name(nm, sizeof nm, prefix, "norm"), h, &gamma, &beta)) return -1;
    int skip = cin == cout
                   ? x
                   : dd_conv2d_layer(g, mb_name(nm, sizeof nm, prefix, "skip"), x, cout, 3, 1, 1, 1);
    if (skip < 0) return -1;
    return dd_group_norm(g, h, gamma, beta, groups, -1, 1, skip);
}

int mb_attention(dd_graph *g, const char *prefix, int x, int heads) {
    char nm[DD_NAME_MAX];
    int C = mb_channels(g, x);
    if (C < 0) return -1;
    int qkv = dd_conv2d_layer(g, mb_name(nm, sizeof nm, prefix, "qkv"), x, 3 * C, 3, 1, 1, 0);
    int a = dd_attention(g, qkv, heads); /* (N, C, H, W) */
    int o = dd_conv2d_layer(g, mb_name(nm, sizeof nm, prefix, "out"), a, C, 3, 1, 1, 1);
    return dd_add(g, x, o);
}

int mb_downsample(dd_graph *g, const char *prefix, int x, int cout) {
    return dd_conv2d_layer(g, prefix, x, cout, 4, 2, 1, 1);
}

int mb_upsample(dd_graph *g, const char *prefix, int x, int cout) {
    return dd_conv2d_layer(g, prefix, dd_upsample2x(g, x), cout, 3, 1, 1, 1);
}
