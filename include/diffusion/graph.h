/* The static op graph (like ggml): builders append nodes, forward runs them in order, backward
 * runs them in reverse and accumulates gradients.
 *
 * Two objects:
 * - dd_params: a model's named parameters (names as the PyTorch module's state_dict gives them,
 *   shapes in PyTorch's layouts), one allocation each for values, gradients, Adam m and v, and
 *   the EMA copy. It outlives graphs: one model has a training graph at batch 32 and a sampling
 *   graph at batch 64, both over the same dd_params.
 * - dd_graph: the nodes for one batch size. Builders return a tensor id (>= 0) or -1 with a
 *   message; a builder given a -1 input returns -1 at once, so a model builder can chain calls
 *   and check once at the end. dd_graph_plan() then allocates the activation arena (and the
 *   gradient arena when asked) once; nothing allocates in forward or backward.
 */
#ifndef DIFFUSION_GRAPH_H
#define DIFFUSION_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "diffusion/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DD_NAME_MAX 96
#define DD_MAX_DIMS 4

/* ---------------------------------------------------------------- parameters */

typedef enum {
    DD_INIT_GLOROT,  /* Glorot/Xavier uniform with fans from the PyTorch shape (Flux's default) */
    DD_INIT_ZERO,    /* biases, GroupNorm shift */
    DD_INIT_ONE,     /* GroupNorm scale */
    DD_INIT_NORMAL,  /* standard normal: embedding tables */
    DD_INIT_FIXED,   /* set by the builder (e.g. the sinusoidal table); not trained */
} dd_init;

typedef struct {
    char name[DD_NAME_MAX];
    int ndim;
    int64_t shape[DD_MAX_DIMS];
    size_t numel;
    size_t offset; /* in floats, into every buffer of dd_params; 16-byte aligned */
    dd_init init;
    int trainable; /* 0 for fixed tables: no gradient, not updated, still checkpointed */
    size_t reserved; /* floats kept free right after it, for dd_params_add_after */
} dd_param_info;

typedef struct dd_params {
    const dd_backend *be;
    dd_param_info *info;
    int count, cap;
    size_t total; /* floats, including alignment padding */
    /* backend memory, allocated by dd_params_alloc, each `total` floats */
    float *data, *grad, *adam_m, *adam_v, *ema;
    int64_t adam_step; /* optimiser steps taken: host copy as of dd_params_set/read_step */
    int64_t *step_dev; /* backend memory: the same count, for the ops that read it there */
    int allocated;
    float *fixed_host; /* values of DD_INIT_FIXED parameters, set before allocation */
} dd_params;

dd_params *dd_params_new(const dd_backend *be);
void dd_params_free(dd_params *p);
/* Register (or find, checking the shape) a parameter; returns its index or -1. Registration is
 * only possible before dd_params_alloc. */
int dd_params_add(dd_params *p, const char *name, int ndim, const int64_t *shape, dd_init init);
int dd_params_find(const dd_params *p, const char *name); /* index or -1 (no message) */
size_t dd_params_count_numel(const dd_params *p);         /* all parameters, as PyTorch counts */
/* Room right after a parameter for another one registered later (dd_params_add_after), so that
 * the two are one contiguous block in every buffer: a ResBlock's first and skip convolutions run
 * as one convolution over their weights side by side, while the registration order (which gives
 * each parameter its initial values' random stream) stays the modules' order. Only for the
 * parameter registered last, before allocation, and when its size is whole 16-byte units; returns
 * 0 when the room is there (also when an earlier call made it), 1 (no message) when it cannot be
 * made. */
int dd_params_reserve(dd_params *p, int idx, size_t floats);
/* Register (or find) a trainable parameter placed in the room reserved after parameter `after`;
 * returns its index, or -1 with a message (no room, or found elsewhere). */
int dd_params_add_after(dd_params *p, int after, const char *name, int ndim, const int64_t *shape,
                        dd_init init);
/* Allocate values, gradients, Adam state and EMA (zeroed), then initialise values with a Philox
 * stream from seed and copy them into the EMA. */
int dd_params_alloc(dd_params *p, uint64_t seed);
/* Host copies of one parameter's values (or EMA values). */
int dd_params_get(const dd_params *p, int idx, float *host, int ema);
int dd_params_set(dd_params *p, int idx, const float *host, int ema);
/* A host copy of one parameter's gradient (as the last backward left it). */
int dd_params_get_grad(const dd_params *p, int idx, float *host);
/* For DD_INIT_FIXED parameters: provide host values before dd_params_alloc (copied). */
int dd_params_set_fixed(dd_params *p, int idx, const float *host);
int dd_params_zero_grad(dd_params *p);
/* One optimiser step is dd_params_adam, dd_params_ema, then dd_params_step_done; all three read
 * the step from step_dev, so the sequence can be recorded once and replayed. guard (backend
 * memory, may be NULL): the step's loss; when it is not finite none of them changes anything.
 * Adam at t = adam_step + 1 over every trainable parameter. */
int dd_params_adam(dd_params *p, float lr, double b1, double b2, double eps, const float *guard);
/* EMA with decay, or with warmup the decay min(decay, (1 + s) / (10 + s)), s = adam_step. */
int dd_params_ema(dd_params *p, float decay, int warmup, const float *guard);
/* The device's step count += 1 (unless the guard says otherwise). */
int dd_params_step_done(dd_params *p, const float *guard);
/* adam_step = the device's count. */
int dd_params_read_step(dd_params *p);
/* Set the step count (host and device), e.g. after loading a checkpoint. */
int dd_params_set_step(dd_params *p, int64_t step);
/* Exchange the values and the EMA copy (sample with the EMA weights, then swap back). Copies
 * through the gradient buffer, so gradients are clobbered; graphs stay valid. */
int dd_params_swap_ema(dd_params *p);

/* ---------------------------------------------------------------- graph */

typedef enum {
    DD_OP_INPUT, /* no computation: filled by dd_graph_set_input */
    DD_OP_PARAM, /* a view of a dd_params entry */
    DD_OP_CONV2D,
    DD_OP_DENSE,
    DD_OP_GROUP_NORM,
    DD_OP_ACT,
    DD_OP_ADD,
    DD_OP_CONCAT,
    DD_OP_UPSAMPLE2X,
    DD_OP_MAXPOOL2X2,
    DD_OP_ATTENTION,
    DD_OP_EMBEDDING,
    DD_OP_MSE,
    DD_OP_XENT,
    DD_OP_COUNT
} dd_op;

extern const char *const dd_op_names[DD_OP_COUNT];

typedef struct {
    char name[DD_NAME_MAX];
    int ndim;
    int64_t shape[DD_MAX_DIMS]; /* activations: (N, C, H, W); dense outputs (N, C, 1, 1) */
    size_t numel;
    int is_index;   /* int32 values (timesteps, labels) */
    int index_base; /* values run from it: embedding reads row value - base */
    int param;    /* index into dd_params, or -1 */
    int needs_grad;
    int keep;     /* dd_graph_keep: own memory even in a graph that reuses memory */
    int span;     /* a dd_param_span view: the parameter and what lies after it */
    size_t offset, grad_offset; /* floats into the arenas (activations only) */
    float *data, *grad;         /* resolved by dd_graph_plan */
} dd_tensor;

#define DD_MAX_INPUTS 6
#define DD_MAX_AUX 2

typedef struct {
    dd_op op;
    int out;                  /* tensor id */
    int in[DD_MAX_INPUTS];    /* tensor ids, -1 where absent */
    int aux[DD_MAX_AUX];      /* saved-for-backward tensors (no gradient), -1 where absent */
    size_t in_off[DD_MAX_INPUTS]; /* floats into each input (and its gradient) where the op's
                                     view starts: group norm's channel slices, else 0 */
    union {
        dd_conv_shape conv;
        dd_gn_shape gn;
        dd_attn_shape attn;
        struct { int N, Cin, Cout; } dense;
        struct { dd_act act; } act;
        struct { int N, Ca, Cb, HW; } concat;
        struct { int N, C, H, W; } pool; /* upsample and maxpool: input sizes */
        struct { int N, rows, dim, base; } emb; /* base: the index input's */
        struct { int N, K; } xent;
    } p;
} dd_node;

/* Where a graph's time goes (dd_graph.profile; NULL: off). Each node runs between two
 * synchronizes and is timed on the host, so the numbers include launch costs, and a profiled
 * graph cannot be recorded (a recording refuses synchronize): for finding the expensive ops,
 * not for timing the whole. */
typedef struct {
    double ms[DD_OP_COUNT][2]; /* [op][0 forward, 1 backward], summed over calls */
    long calls[DD_OP_COUNT][2];
} dd_profile;

typedef struct dd_graph {
    const dd_backend *be;
    dd_params *params;
    dd_tensor *t;
    int nt, capt;
    dd_node *nodes;
    int nn, capn;
    int planned, with_grad;
    int reuse;                 /* dd_graph_reuse_memory */
    float *arena, *grad_arena; /* backend memory */
    size_t arena_floats, grad_floats;
    void *ws;
    size_t ws_bytes;
    float *one;             /* backend: the constant 1, the seed of backward */
    dd_profile *profile;    /* NULL, or where node times are added (see dd_profile) */
    /* Per node, set by dd_graph_plan for a forward-only graph that reuses memory, when the
     * backend has dense_group_act_forward: an activation read only by dense layers is not run
     * (skip), and those layers read its input (src, a tensor id; -1: none) through it (act). */
    struct dd_fold {
        int skip, src;
        dd_act act;
    } *fold;
} dd_graph;

dd_graph *dd_graph_new(dd_params *params);
void dd_graph_free(dd_graph *g);

/* Leaves. Inputs are (N, C, H, W) floats, or (N) int32 indices. An index input made with
 * dd_input_index_from(..., base) takes host values in [base, base + rows) and stores value - base:
 * timesteps t = 1..T (SPEC.md's convention) use base 1 to address table rows 0..T-1, as the
 * PyTorch peer's table[t - 1]. dd_input_index is base 0 (class labels). */
int dd_input(dd_graph *g, const char *name, int N, int C, int H, int W);
int dd_input_index(dd_graph *g, const char *name, int N);
int dd_input_index_from(dd_graph *g, const char *name, int N, int base);
/* A parameter view: registered in g->params under `name` (or found there, shape checked). */
int dd_param(dd_graph *g, const char *name, int ndim, const int64_t *shape, dd_init init);
/* A view of parameter view `param` and the parameters placed after it (dd_params_reserve), as
 * one tensor of `rows` rows of the parameter's trailing shape: the weights (or biases) of
 * convolutions side by side, read as one convolution's. */
int dd_param_span(dd_graph *g, int param, int64_t rows);

/* Ops. Each validates shapes and returns the output tensor id or -1 with a message. */
int dd_conv2d(dd_graph *g, int x, int w, int b /* -1: none */, int stride, int pad);
int dd_dense(dd_graph *g, int x, int w, int b /* -1: none */);
/* y = swish?(GroupNorm(x) + add per channel) + res: add (N, C, 1, 1) and res (shape of x)
 * optional (-1) */
int dd_group_norm(dd_graph *g, int x, int gamma, int beta, int groups, int add /* -1 */,
                  int swish, int res /* -1 */);
/* The same over channels [xc, xc + C) of x and [rc, rc + C) of res (C: gamma's length), which
 * may have more channels than C: the two halves of a merged convolution's output, read in place
 * (dd_gn_shape's batch strides). */
int dd_group_norm_slice(dd_graph *g, int x, int xc, int gamma, int beta, int groups, int add,
                        int swish, int res, int rc);
int dd_activation(dd_graph *g, int x, dd_act act);
int dd_add(dd_graph *g, int a, int b);
int dd_concat(dd_graph *g, int a, int b);
int dd_upsample2x(dd_graph *g, int x);
int dd_maxpool2x2(dd_graph *g, int x);
int dd_attention(dd_graph *g, int qkv, int heads);
int dd_embedding(dd_graph *g, int table, int idx);
int dd_mse(dd_graph *g, int pred, int target);
int dd_xent(dd_graph *g, int logits, int labels);

/* Convenience builders over dd_param + ops, naming parameters "<prefix>.weight"/".bias". */
int dd_conv2d_layer(dd_graph *g, const char *prefix, int x, int cout, int k, int stride, int pad,
                    int bias);
int dd_dense_layer(dd_graph *g, const char *prefix, int x, int cout, int bias);

/* Before dd_graph_plan, for a graph planned without gradients: activations whose lifetimes do
 * not overlap share memory (a greedy interval packing in node order), so a forward pass touches
 * a fraction of the memory (the UNet at batch 256: a tenth), which stays in cache. Inputs and the
 * tensors marked with dd_graph_keep keep memory of their own and are readable after forward;
 * any other activation is then only valid while the nodes that read it run. */
int dd_graph_reuse_memory(dd_graph *g);
int dd_graph_keep(dd_graph *g, int id);

/* Allocate the activation arena (and, with_grad, the gradient arena and the workspace). The
 * parameters must be allocated first (dd_params_alloc). */
int dd_graph_plan(dd_graph *g, int with_grad);
int dd_graph_forward(dd_graph *g);
/* Zero all gradients (parameters too), seed d(loss) = 1, run the nodes in reverse. */
int dd_graph_backward(dd_graph *g, int loss);

/* Host <-> graph transfers, by tensor id. Index inputs are checked against their range when the
 * graph knows it (embedding rows): an out-of-range label is an error, not a crash. */
int dd_graph_set_input(dd_graph *g, int id, const void *host, size_t bytes);
int dd_graph_get(dd_graph *g, int id, float *host);
int dd_graph_get_grad(dd_graph *g, int id, float *host);
int dd_graph_find(const dd_graph *g, const char *name); /* tensor id or -1 */

/* Storage the caller owns, in place of a tensor's arena slot: after dd_graph_bind, the graph's
 * nodes read and write the activation (not a parameter) `id` at `data` (backend memory of
 * t->numel values that the caller keeps alive), so an input or output need not be copied to or
 * from the arena. Returns 0 when bound, 1 (and binds nothing, no message) when data is not
 * 16-byte aligned like the arena's slots, so that the caller copies instead; -1 after
 * dd_error() on a bad call. dd_graph_unbind gives the tensor its own slot back (a no-op when
 * not bound); dd_graph_set_input unbinds before it writes, so it never writes the caller's
 * memory. */
int dd_graph_bind(dd_graph *g, int id, void *data);
void dd_graph_unbind(dd_graph *g, int id);
static inline dd_tensor *dd_graph_tensor(dd_graph *g, int id) { return &g->t[id]; }

#ifdef __cplusplus
}
#endif
#endif
