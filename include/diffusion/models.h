/* Model builders: they describe a model as nodes of a dd_graph (include/diffusion/graph.h) and
 * register its parameters in the graph's dd_params under the PyTorch state_dict names of the
 * modules in tests/reference/models.py (for UNet (1,2,4) the names of the PyTorch peer,
 * ../shared/peer/torch_unet_peer.py). Nothing here computes; the graph executor does.
 *
 * Kinds (SPEC.md "Models"):
 *   unet        UNet(in, mc, T; multipliers m1..mL, m1 = 1), ResBlocks, optional middle attention
 *   unet-fixed  UNet with multipliers (1,2,4) and attention: the same code path as unet
 *   unet-cond   UNetConditioned: unet plus a class table "class_emb.weight" of K+1 rows; rows
 *               0..K-1 are the classes, row K is the generic ("unconditioned") label used by
 *               classifier-free guidance (the original uses label 1 for it; we put it last so
 *               that class k is row k). The class row is concatenated after the time embedding
 *               (blocks see 2*dim values) or summed with it (blocks see dim values).
 *   mlp2d       2-D denoiser: three stages of Dense(x) + Dense(table[t]), swish, then Dense(h->2)
 *   mlp2d-cond  the same plus, per stage, a class table of K+1 rows (row K generic) added in
 *   lenet       LeNet5 classifier for FLD; outputs 10 logits and the 84 features
 *
 * Graph inputs a builder expects (created by the caller with dd_input / dd_input_index):
 *   x       (N, C, H, W) floats; for mlp2d* (N, 2, 1, 1); for lenet (N, 1, 28, 28)
 *   t       (N) int32 timesteps t = 1..T (SPEC's convention), an index input made with
 *           dd_input_index_from(g, "t", N, 1): base 1 makes table row t - 1 the one used, as the
 *           peer's table[t - 1]. A base-0 t input is refused at build time.
 *   labels  (N) int32 in [0, K] for the conditional kinds (K = generic), -1 id otherwise.
 */
#ifndef DIFFUSION_MODELS_H
#define DIFFUSION_MODELS_H

#include <stddef.h>
#include <stdio.h>

#include "diffusion/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DD_MODEL_UNET,
    DD_MODEL_UNET_FIXED,
    DD_MODEL_UNET_COND,
    DD_MODEL_MLP2D,
    DD_MODEL_MLP2D_COND,
    DD_MODEL_LENET,
    DD_MODEL_KIND_COUNT
} dd_model_kind;

typedef enum { DD_COMBINE_CONCAT, DD_COMBINE_SUM, DD_COMBINE_COUNT } dd_combine;

#define DD_MAX_LEVELS 8

typedef struct {
    dd_model_kind kind;
    int in_channels;           /* C of x */
    int height, width;         /* data shape (H, W); 1 x 1 for mlp2d */
    int model_channels;        /* unet*: mc; the time embedding has dim = 4 mc */
    int n_mult;                /* unet*: L, the number of levels */
    int mult[DD_MAX_LEVELS];   /* unet*: m1..mL, m1 = 1; level i has mc * m(i+1) channels */
    int attention;             /* unet*: middle attention on (1) or off (0) */
    int groups;                /* unet*: GroupNorm groups */
    int heads;                 /* unet*: attention heads */
    int classes;               /* K: conditional kinds (plus one generic row), lenet's outputs */
    dd_combine combine;        /* unet-cond: concat or sum */
    int hidden;                /* mlp2d*: h */
    int timesteps;             /* T: rows of the sinusoidal table */
} dd_model_config;

const char *dd_model_kind_name(dd_model_kind kind);      /* "unet", ..., NULL if invalid */
int dd_model_kind_parse(const char *name, dd_model_kind *kind); /* 0 or -1 with message */
const char *dd_combine_name(dd_combine c);               /* "concat" or "sum" */

/* SPEC's defaults for a kind (the original's examples): unet* 1x28x28, mc 16, (1,2,4), attention,
 * 8 groups, 4 heads, T 100, unet-cond 10 classes concat; mlp2d h 16 and mlp2d-cond h 32 with 3
 * classes, 2 inputs, T 40; lenet 1x28x28, 10 classes. */
void dd_model_config_default(dd_model_config *c, dd_model_kind kind);
/* Every rule the builder relies on, with a message naming the offending value. */
int dd_model_config_validate(const dd_model_config *c);
/* Whether the kind takes labels (unet-cond, mlp2d-cond). */
int dd_model_is_conditional(const dd_model_config *c);
/* Time embedding width the blocks see (4 mc, doubled by concat), or h for mlp2d. */
int dd_model_time_dim(const dd_model_config *c);

/* JSON for checkpoint metadata ("config" key), e.g.
 * {"kind":"unet","in_channels":1,"height":28,"width":28,"model_channels":16,
 *  "multipliers":[1,2,4],"attention":true,"groups":8,"heads":4,"timesteps":100}.
 * Only the fields that matter for the kind are written. Returns a malloc'd string (caller
 * frees) or NULL with a message. */
char *dd_model_config_to_json(const dd_model_config *c);
/* Parse: the kind's defaults, overridden by the fields present, then validated. Unknown keys
 * and wrong types are errors. */
int dd_model_config_from_json(dd_model_config *c, const char *json);

/* One-line summary: "unet in 1 28x28 mc 16 mult 1,2,4 attention groups 8 heads 4 T 100". */
void dd_model_config_describe(const dd_model_config *c, char *buf, size_t size);

/* Append the model to g. x, t, labels: input tensor ids as described at the top (labels -1 for
 * unconditional kinds, t -1 for lenet). Returns the output tensor id: (N, C, H, W) noise
 * prediction for unet*, (N, 2, 1, 1) for mlp2d*, (N, K, 1, 1) logits for lenet; -1 with a
 * message on any invalid config or input shape. For lenet, *features (may be NULL) receives the
 * (N, 84, 1, 1) feature tensor id; for other kinds it is set to -1. The sinusoidal table is a
 * DD_INIT_FIXED parameter "table" whose values are provided here when it is first registered.
 * Building a second graph over the same (allocated) dd_params reuses the parameters. */
int dd_model_build(dd_graph *g, const dd_model_config *c, int x, int t, int labels, int *features);

/* Register the model's parameters in p (builds a throw-away batch-1 graph over p). */
int dd_model_register(dd_params *p, const dd_model_config *c);

/* Trainable parameters, as PyTorch's sum(p.numel() for p in parameters()) counts them: the
 * sinusoidal table is a buffer, in the state_dict but not counted (SPEC's table excludes it). */
size_t dd_model_count_trainable(const dd_params *p);

/* Sinusoidal table (rows, dim), SPEC.md: row p-1 holds position p = 1..rows; for even r,
 * f = 1/10000^(r/(dim-2)), [r] = sin(p f), [r+1] = cos(p f). Computed in double. dim even >= 4. */
void dd_sinusoid_table(float *table /* (rows, dim) */, int rows, int dim);

/* Print the layers (one line per module: name, parameter shapes, count) and "parameters: N". */
int dd_model_print_layers(FILE *f, const dd_model_config *c);

#ifdef __cplusplus
}
#endif
#endif
