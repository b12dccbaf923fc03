/* The 2-D denoiser of the spiral example (SPEC.md "Models") and its conditional variant.
 *
 *   stage s = 1..3: swish(s{s}.x(h) + s{s}.t(table[t]) [+ s{s}.c[label]])
 *   out: Dense(h -> in)
 * Each stage of the original carries its own sinusoidal table; all three hold the same values,
 * so one fixed "table" (T, h) serves them. The conditional variant has one class table per stage
 * (K+1 rows, row K generic), as the original's count (5,826 at h = 32, K = 3) requires. */
#include <stdio.h>

#include "blocks.h"
#include "diffusion/models.h"

int mb_build_mlp2d(dd_graph *g, const dd_model_config *c, int x, int t, int labels) {
    const int hid = c->hidden;
    char nm[DD_NAME_MAX];
    int te = mb_sinusoid_lookup(g, "table", t, c->timesteps, hid); /* (N, h) */
    int h = x;
    for (int s = 1; s <= 3; s++) {
        snprintf(nm, sizeof nm, "s%d.x", s);
        int a = dd_dense_layer(g, nm, h, hid, 1);
        snprintf(nm, sizeof nm, "s%d.t", s);
        int sum = dd_add(g, a, dd_dense_layer(g, nm, te, hid, 1));
        if (c->kind == DD_MODEL_MLP2D_COND) {
            snprintf(nm, sizeof nm, "s%d.c", s);
            sum = dd_add(g, sum, mb_embedding(g, nm, labels, c->classes + 1, hid));
        }
        h = dd_activation(g, sum, DD_ACT_SWISH);
    }
    return dd_dense_layer(g, "out", h, c->in_channels, 1);
}
