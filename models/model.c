/* dd_model_build: input checks and dispatch; registration, counting and the layer listing. */
#include <stdio.h>
#include <string.h>

#include "blocks.h"
#include "diffusion/error.h"
#include "diffusion/models.h"

/* An input tensor id the caller made: in range, float or index as expected. */
static int check_input(const dd_graph *g, int id, const char *what, int want_index) {
    if (id < 0 || id >= g->nt) return dd_error("model input %s: invalid tensor id %d", what, id);
    if (!!g->t[id].is_index != want_index)
        return dd_error("model input %s must be %s", what,
                        want_index ? "an int32 index input (N)" : "a float tensor (N, C, H, W)");
    return 0;
}

int dd_model_build(dd_graph *g, const dd_model_config *c, int x, int t, int labels, int *features) {
    const char *kind = dd_model_kind_name(c->kind);
    if (features) *features = -1;
    if (dd_model_config_validate(c)) return dd_error_prefix("building %s", kind ? kind : "model");
    DD_TRY(check_input(g, x, "x", 0));
    const dd_tensor *xt = &g->t[x];
    const int64_t N = xt->shape[0];
    if (xt->ndim != 4 || xt->shape[1] != c->in_channels)
        return dd_error("building %s: x must be (N, %d, H, W), got %d dims with %lld channels",
                        kind, c->in_channels, xt->ndim, (long long)xt->shape[1]);
    const int64_t H = xt->shape[2], W = xt->shape[3];
    if (c->kind == DD_MODEL_UNET || c->kind == DD_MODEL_UNET_FIXED || c->kind == DD_MODEL_UNET_COND) {
        /* The graph's size rules, not only the config's: a sampling graph may use another size. */
        int64_t f = (int64_t)1 << (c->n_mult - 1);
        if (H % f || W % f)
            return dd_error("building %s: image size %lldx%lld is not divisible by 2^%d = %lld, "
                            "which %d levels need (each downsample halves the size)",
                            kind, (long long)H, (long long)W, c->n_mult - 1, (long long)f, c->n_mult);
    } else if (H != c->height || W != c->width) {
        return dd_error("building %s: x must be (N, %d, %d, %d), got spatial size %lldx%lld", kind,
                        c->in_channels, c->height, c->width, (long long)H, (long long)W);
    }
    if (c->kind != DD_MODEL_LENET) {
        DD_TRY(check_input(g, t, "t", 1));
        if (g->t[t].index_base != 1)
            return dd_error("building %s: t must be made with dd_input_index_from(g, name, N, 1) "
                            "(timesteps run 1..T)", kind);
        if (g->t[t].shape[0] != N)
            return dd_error("building %s: t has %lld entries for a batch of %lld", kind,
                            (long long)g->t[t].shape[0], (long long)N);
    }
    if (dd_model_is_conditional(c)) {
        DD_TRY(check_input(g, labels, "labels", 1));
        if (g->t[labels].shape[0] != N)
            return dd_error("building %s: labels has %lld entries for a batch of %lld", kind,
                            (long long)g->t[labels].shape[0], (long long)N);
    } else if (labels >= 0) {
        return dd_error("building %s: this model takes no class labels", kind);
    }

    int out;
    switch (c->kind) {
    case DD_MODEL_UNET:
    case DD_MODEL_UNET_FIXED:
    case DD_MODEL_UNET_COND: out = mb_build_unet(g, c, x, t, labels); break;
    case DD_MODEL_MLP2D:
    case DD_MODEL_MLP2D_COND: out = mb_build_mlp2d(g, c, x, t, labels); break;
    case DD_MODEL_LENET: out = mb_build_lenet(g, c, x, features); break;
    case DD_MODEL_KIND_COUNT:
    default: return dd_error("invalid model kind %d", (int)c->kind);
    }
    if (out < 0) {
        if (features) *features = -1;
        return dd_error_prefix("building %s", kind);
    }
    return out;
}

int dd_model_register(dd_params *p, const dd_model_config *c) {
    DD_TRY(dd_model_config_validate(c));
    dd_graph *g = dd_graph_new(p);
    if (!g) return -1;
    int x = dd_input(g, "x", 1, c->in_channels, c->height, c->width);
    int t = c->kind == DD_MODEL_LENET ? -1 : dd_input_index_from(g, "t", 1, 1);
    int labels = dd_model_is_conditional(c) ? dd_input_index(g, "labels", 1) : -1;
    int rc = x < 0 || (c->kind != DD_MODEL_LENET && t < 0) ||
                     (dd_model_is_conditional(c) && labels < 0)
                 ? -1
                 : dd_model_build(g, c, x, t, labels, NULL);
    dd_graph_free(g);
    return rc < 0 ? -1 : 0;
}

size_t dd_model_count_trainable(const dd_params *p) {
    size_t n = 0;
    for (int i = 0; i < p->count; i++)
        if (p->info[i].trainable && p->info[i].init != DD_INIT_FIXED) n += p->info[i].numel;
    return n;
}

/* The module a parameter belongs to: its name without the last ".component". */
static size_t module_len(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? (size_t)(dot - name) : strlen(name);
}

static void shape_str(const dd_param_info *pi, char *buf, size_t size) {
    int n = snprintf(buf, size, "(");
    for (int d = 0; d < pi->ndim && n >= 0 && (size_t)n < size; d++)
        n += snprintf(buf + n, size - (size_t)n, "%s%lld", d ? ", " : "", (long long)pi->shape[d]);
    if (n >= 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, ")");
}

int dd_model_print_layers(FILE *f, const dd_model_config *c) {
    dd_params *p = dd_params_new(&dd_cpu_backend);
    if (!p) return -1;
    if (dd_model_register(p, c)) {
        dd_params_free(p);
        return -1;
    }
    char desc[256];
    dd_model_config_describe(c, desc, sizeof desc);
    fprintf(f, "model: %s\n", desc);
    /* One line per module, in registration (= forward) order. */
    for (int i = 0; i < p->count;) {
        const char *name = p->info[i].name;
        size_t ml = module_len(name);
        char shapes[256] = "";
        size_t numel = 0;
        int fixed = 0, j = i;
        for (; j < p->count && module_len(p->info[j].name) == ml &&
               !strncmp(p->info[j].name, name, ml);
             j++) {
            char s[64];
            shape_str(&p->info[j], s, sizeof s);
            size_t used = strlen(shapes);
            /* "weight (16, 1, 3, 3)"; a name without a component (the table) shows its shape */
            const char *comp = ml < strlen(p->info[j].name) ? p->info[j].name + ml + 1 : "";
            snprintf(shapes + used, sizeof shapes - used, "%s%s%s%s", used ? "  " : "", comp,
                     comp[0] ? " " : "", s);
            numel += p->info[j].numel;
            fixed |= p->info[j].init == DD_INIT_FIXED;
        }
        fprintf(f, "  %-14.*s %-48s %10zu%s\n", (int)ml, name, shapes, numel,
                fixed ? " (fixed, not trained)" : "");
        i = j;
    }
    fprintf(f, "parameters: %zu\n", dd_model_count_trainable(p));
    dd_params_free(p);
    return 0;
}
