/* UNet, UNetFixed and UNetConditioned (SPEC.md "Models"): one builder for all three.
 *
 * Widths: C0 = mc, Ci = mc * m_i (m 1-based, m1 = 1), so C0 = C1. With L levels:
 *   init     conv3x3 in -> C0
 *   level i = 0..L-1 at H/2^i: down{i+1} = ResBlock(Ci -> Ci), output kept as skip h_i;
 *            if i < L-1: ds{i+1} = conv4x4 stride 2 (Ci -> C(i+1))
 *   bottom   conv3x3 C(L-1) -> CL; mid1 = ResBlock(CL); [attn, mid2 = ResBlock(CL)]
 *   level i = L-1..0: up{i+1} = ResBlock(Ci + C(i+1) -> C(i+1)) on concat(h_i, h) (encoder
 *            first); if i > 0: us{i} = nearest 2x + conv3x3 (C(i+1) -> Ci)
 *   final    conv3x3 C1 -> in
 * For (1,2,4) these are exactly the peer's modules (down1..3, ds1..2, up3..1, us2..1). */
#include <stdio.h>

#include "blocks.h"
#include "diffusion/error.h"
#include "diffusion/models.h"

/* Channels of level i in SPEC's numbering (C0 = mc, Ci = mc m_i). */
static int level_channels(const dd_model_config *c, int i) {
    return c->model_channels * c->mult[i > 0 ? i - 1 : 0];
}

int mb_build_unet(dd_graph *g, const dd_model_config *c, int x, int t, int labels) {
    const int L = c->n_mult, dim = 4 * c->model_channels;
    char nm[DD_NAME_MAX];

    /* Time embedding, then the class row for UNetConditioned. */
    int e = mb_time_mlp(g, mb_sinusoid_lookup(g, "table", t, c->timesteps, dim), dim);
    if (c->kind == DD_MODEL_UNET_COND) {
        int ce = mb_embedding(g, "class_emb", labels, c->classes + 1, dim); /* row K: generic */
        e = c->combine == DD_COMBINE_CONCAT ? dd_concat(g, e, ce) : dd_add(g, e, ce);
    }
    /* Every block applies Dense(swish(emb)); swish(emb) is the same for all, computed once. */
    int es = dd_activation(g, e, DD_ACT_SWISH);

    int skips[DD_MAX_LEVELS];
    int h = dd_conv2d_layer(g, "init", x, level_channels(c, 0), 3, 1, 1, 1);
    for (int i = 0; i < L; i++) {
        snprintf(nm, sizeof nm, "down%d", i + 1);
        h = mb_res_block(g, nm, h, level_channels(c, i), es, c->groups);
        skips[i] = h;
        if (i < L - 1) {
            snprintf(nm, sizeof nm, "ds%d", i + 1);
            h = mb_downsample(g, nm, h, level_channels(c, i + 1));
        }
    }
    h = dd_conv2d_layer(g, "bottom", h, level_channels(c, L), 3, 1, 1, 1);
    h = mb_res_block(g, "mid1", h, level_channels(c, L), es, c->groups);
    if (c->attention) {
        h = mb_attention(g, "attn", h, c->heads);
        h = mb_res_block(g, "mid2", h, level_channels(c, L), es, c->groups);
    }
    for (int i = L - 1; i >= 0; i--) {
        snprintf(nm, sizeof nm, "up%d", i + 1);
        h = mb_res_block(g, nm, dd_concat(g, skips[i], h), level_channels(c, i + 1), es, c->groups);
        if (i > 0) {
            snprintf(nm, sizeof nm, "us%d", i);
            h = mb_upsample(g, nm, h, level_channels(c, i));
        }
    }
    return dd_conv2d_layer(g, "final", h, c->in_channels, 3, 1, 1, 1);
}
