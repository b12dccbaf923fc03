/* dd_graph: builders that append nodes (shapes checked here, once), the memory plan, and the
 * executor: forward in order, backward in reverse, through the backend's op table. */
#include "diffusion/graph.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"
#include "diffusion/progress.h"

#define DD_ALIGN_FLOATS 4

const char *const dd_op_names[DD_OP_COUNT] = {
    [DD_OP_INPUT] = "input",
    [DD_OP_PARAM] = "param",
    [DD_OP_CONV2D] = "conv2d",
    [DD_OP_DENSE] = "dense",
    [DD_OP_GROUP_NORM] = "group_norm",
    [DD_OP_ACT] = "activation",
    [DD_OP_ADD] = "add",
    [DD_OP_CONCAT] = "concat",
    [DD_OP_UPSAMPLE2X] = "upsample2x",
    [DD_OP_MAXPOOL2X2] = "maxpool2x2",
    [DD_OP_ATTENTION] = "attention",
    [DD_OP_EMBEDDING] = "embedding",
    [DD_OP_MSE] = "mse",
    [DD_OP_XENT] = "xent",
};

dd_graph *dd_graph_new(dd_params *params) {
    dd_graph *g = calloc(1, sizeof *g);
    if (!g) {
        dd_error("out of host memory");
        return NULL;
    }
    g->params = params;
    g->be = params->be;
    return g;
}

void dd_graph_free(dd_graph *g) {
    if (!g) return;
    if (g->planned) {
        g->be->free(g->arena);
        if (g->grad_arena) g->be->free(g->grad_arena);
        if (g->ws) g->be->free(g->ws);
        g->be->free(g->one);
    }
    free(g->t);
    free(g->nodes);
    free(g->fold);
    free(g);
}

/* ------------------------------------------------------------------ tensors and nodes */

static int new_tensor(dd_graph *g, const char *name, int ndim, const int64_t *shape) {
    if (g->planned) return dd_error("graph already planned: cannot add %s", name);
    if (g->nt == g->capt) {
        int cap = g->capt ? 2 * g->capt : 256;
        dd_tensor *nt = realloc(g->t, (size_t)cap * sizeof *nt);
        if (!nt) return dd_error("out of host memory");
        g->t = nt;
        g->capt = cap;
    }
    dd_tensor *t = &g->t[g->nt];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
    t->param = -1;
    return g->nt++;
}

static int act_tensor(dd_graph *g, const char *name, int64_t N, int64_t C, int64_t H, int64_t W) {
    int64_t s[4] = {N, C, H, W};
    return new_tensor(g, name, 4, s);
}

/* Append a node computing tensor `out` (-1: an earlier failure, passed on) from nin inputs (-1
 * where absent); the output needs a gradient when any input does. Returns the node, for the
 * caller to fill in its parameters, or NULL after dd_error. */
static dd_node *emit(dd_graph *g, dd_op op, int out, const int *in, int nin) {
    if (out < 0) return NULL;
    if (g->nn == g->capn) {
        int cap = g->capn ? 2 * g->capn : 256;
        dd_node *nn = realloc(g->nodes, (size_t)cap * sizeof *nn);
        if (!nn) {
            dd_error("out of host memory");
            return NULL;
        }
        g->nodes = nn;
        g->capn = cap;
    }
    dd_node *n = &g->nodes[g->nn++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->out = out;
    for (int i = 0; i < DD_MAX_INPUTS; i++) n->in[i] = i < nin ? in[i] : -1;
    for (int i = 0; i < DD_MAX_AUX; i++) n->aux[i] = -1;
    int ng = 0;
    for (int i = 0; i < nin; i++)
        if (in[i] >= 0 && g->t[in[i]].needs_grad) ng = 1;
    g->t[out].needs_grad = ng;
    return n;
}

static int valid(const dd_graph *g, int id) { return id >= 0 && id < g->nt; }

/* A -1 input means an earlier builder failed: its message stands, pass the failure along. */
#define NEED(id)                                                                                  \
    do {                                                                                          \
        if (!valid(g, (id))) return (id) < 0 ? -1 : dd_error("bad tensor id %d", (id));           \
    } while (0)
#define T(id) (&g->t[(id)])

static const char *shp(const dd_tensor *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (k < n) snprintf(buf + k, n - k, ")");
    return buf;
}

static int is_act4(const dd_tensor *t) { return t->ndim == 4 && !t->is_index; }

static int same_act4(const dd_tensor *a, const dd_tensor *b) {
    int same = is_act4(a) && is_act4(b);
    for (int i = 0; same && i < 4; i++) same = a->shape[i] == b->shape[i];
    return same;
}

/* ------------------------------------------------------------------ leaves */

int dd_input(dd_graph *g, const char *name, int N, int C, int H, int W) {
    if (N < 1 || C < 1 || H < 1 || W < 1)
        return dd_error("input %s: bad shape (%d, %d, %d, %d)", name, N, C, H, W);
    return act_tensor(g, name, N, C, H, W);
}

int dd_input_index_from(dd_graph *g, const char *name, int N, int base) {
    if (N < 1) return dd_error("index input %s: batch %d", name, N);
    int64_t s[1] = {N};
    int id = new_tensor(g, name, 1, s);
    if (id < 0) return -1;
    T(id)->is_index = 1;
    T(id)->index_base = base;
    return id;
}

int dd_input_index(dd_graph *g, const char *name, int N) { return dd_input_index_from(g, name, N, 0); }

int dd_param(dd_graph *g, const char *name, int ndim, const int64_t *shape, dd_init init) {
    int pi = dd_params_add(g->params, name, ndim, shape, init);
    if (pi < 0) return -1;
    for (int i = 0; i < g->nt; i++) /* one view per parameter per graph */
        if (g->t[i].param == pi && !g->t[i].span) return i;
    int id = new_tensor(g, name, ndim, shape);
    if (id < 0) return -1;
    T(id)->param = pi;
    T(id)->needs_grad = g->params->info[pi].trainable;
    return id;
}

int dd_param_span(dd_graph *g, int param, int64_t rows) {
    NEED(param);
    const dd_tensor *P = T(param);
    if (P->param < 0 || P->span) return dd_error("param_span: %s is not a parameter view", P->name);
    const dd_param_info *q = &g->params->info[P->param];
    const size_t inner = P->numel / (size_t)P->shape[0];
    if (rows < P->shape[0] || q->numel % 4 || (size_t)rows * inner > q->numel + q->reserved)
        return dd_error("param_span: %lld rows of %s do not fit it and the room after it",
                        (long long)rows, P->name);
    int64_t shape[DD_MAX_DIMS];
    for (int i = 0; i < P->ndim; i++) shape[i] = P->shape[i];
    shape[0] = rows;
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.80s:span", P->name);
    const int pi = P->param, nd = P->ndim, tr = q->trainable;
    int id = new_tensor(g, name, nd, shape);
    if (id < 0) return -1;
    T(id)->param = pi;
    T(id)->span = 1;
    T(id)->needs_grad = tr;
    return id;
}

/* ------------------------------------------------------------------ ops */

int dd_conv2d(dd_graph *g, int x, int w, int b, int stride, int pad) {
    NEED(x);
    NEED(w);
    if (b != -1) NEED(b);
    char s1[64], s2[64];
    const dd_tensor *X = T(x), *Wt = T(w);
    if (!is_act4(X) || Wt->ndim != 4 || Wt->shape[1] != X->shape[1] || Wt->shape[2] != Wt->shape[3])
        return dd_error("conv2d %s: input %s does not fit weight %s", Wt->name, shp(X, s1, 64), shp(Wt, s2, 64));
    if (b >= 0 && (T(b)->ndim != 1 || T(b)->shape[0] != Wt->shape[0]))
        return dd_error("conv2d %s: bias shape %s", Wt->name, shp(T(b), s1, 64));
    if (stride < 1 || pad < 0) return dd_error("conv2d %s: stride %d, pad %d", Wt->name, stride, pad);
    dd_conv_shape cs = {.N = (int)X->shape[0], .Cin = (int)X->shape[1], .H = (int)X->shape[2],
                        .W = (int)X->shape[3], .Cout = (int)Wt->shape[0], .K = (int)Wt->shape[2],
                        .stride = stride, .pad = pad};
    if (cs.H + 2 * pad < cs.K || cs.W + 2 * pad < cs.K)
        return dd_error("conv2d %s: kernel %d larger than padded input %s", Wt->name, cs.K, shp(X, s1, 64));
    cs.Ho = (cs.H + 2 * pad - cs.K) / stride + 1;
    cs.Wo = (cs.W + 2 * pad - cs.K) / stride + 1;
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.80s:out", Wt->name);
    int out = act_tensor(g, name, cs.N, cs.Cout, cs.Ho, cs.Wo);
    dd_node *n = emit(g, DD_OP_CONV2D, out, (const int[]){x, w, b}, 3);
    if (!n) return -1;
    n->p.conv = cs;
    return out;
}

int dd_dense(dd_graph *g, int x, int w, int b) {
    NEED(x);
    NEED(w);
    if (b != -1) NEED(b);
    char s1[64], s2[64];
    const dd_tensor *X = T(x), *Wt = T(w);
    if (!is_act4(X) || Wt->ndim != 2)
        return dd_error("dense %s: input %s, weight %s", Wt->name, shp(X, s1, 64), shp(Wt, s2, 64));
    int64_t cin = X->shape[1] * X->shape[2] * X->shape[3]; /* flattened as torch.flatten(x, 1) */
    if (Wt->shape[1] != cin)
        return dd_error("dense %s: input %s has %lld features, weight %s expects %lld", Wt->name,
                        shp(X, s1, 64), (long long)cin, shp(Wt, s2, 64), (long long)Wt->shape[1]);
    if (b >= 0 && (T(b)->ndim != 1 || T(b)->shape[0] != Wt->shape[0]))
        return dd_error("dense %s: bias shape %s", Wt->name, shp(T(b), s1, 64));
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.80s:out", Wt->name);
    int out = act_tensor(g, name, X->shape[0], Wt->shape[0], 1, 1);
    dd_node *n = emit(g, DD_OP_DENSE, out, (const int[]){x, w, b}, 3);
    if (!n) return -1;
    n->p.dense.N = (int)T(x)->shape[0];
    n->p.dense.Cin = (int)cin;
    n->p.dense.Cout = (int)T(w)->shape[0];
    return out;
}

int dd_group_norm(dd_graph *g, int x, int gamma, int beta, int groups, int add, int swish,
                  int res) {
    /* the packed form's own checks (all of x's channels, res of x's shape), then the slice's */
    NEED(x);
    NEED(gamma);
    NEED(beta);
    if (res != -1) NEED(res);
    char s1[64];
    const dd_tensor *X = T(x);
    if (!is_act4(X)) return dd_error("group_norm %s: input %s", T(gamma)->name, shp(X, s1, 64));
    int64_t C = X->shape[1];
    if (T(gamma)->ndim != 1 || T(gamma)->shape[0] != C || T(beta)->ndim != 1 || T(beta)->shape[0] != C)
        return dd_error("group_norm %s: scale/shift do not have %lld channels", T(gamma)->name, (long long)C);
    if (res >= 0 && !same_act4(T(res), X)) {
        char s2[64];
        return dd_error("group_norm %s: residual %s does not match the input %s", T(gamma)->name,
                        shp(T(res), s1, 64), shp(X, s2, 64));
    }
    return dd_group_norm_slice(g, x, 0, gamma, beta, groups, add, swish, res, 0);
}

int dd_group_norm_slice(dd_graph *g, int x, int xc, int gamma, int beta, int groups, int add,
                        int swish, int res, int rc) {
    NEED(x);
    NEED(gamma);
    NEED(beta);
    if (add != -1) NEED(add);
    if (res != -1) NEED(res);
    char s1[64];
    const dd_tensor *X = T(x);
    if (!is_act4(X)) return dd_error("group_norm %s: input %s", T(gamma)->name, shp(X, s1, 64));
    if (T(gamma)->ndim != 1 || T(beta)->ndim != 1 || T(beta)->shape[0] != T(gamma)->shape[0])
        return dd_error("group_norm %s: scale/shift are not one vector each", T(gamma)->name);
    const int64_t C = T(gamma)->shape[0], HW = X->shape[2] * X->shape[3];
    if (xc < 0 || xc + C > X->shape[1])
        return dd_error("group_norm %s: channels %d to %lld of input %s", T(gamma)->name, xc,
                        (long long)(xc + C), shp(X, s1, 64));
    if (groups < 1 || C % groups)
        return dd_error("group_norm %s: %d groups do not divide %lld channels", T(gamma)->name,
                        groups, (long long)C);
    if (add >= 0 && (!is_act4(T(add)) || T(add)->shape[0] != X->shape[0] || T(add)->shape[1] != C ||
                     T(add)->shape[2] * T(add)->shape[3] != 1))
        return dd_error("group_norm %s: per-channel add has shape %s, expected (%lld, %lld, 1, 1)",
                        T(gamma)->name, shp(T(add), s1, 64), (long long)X->shape[0], (long long)C);
    if (res >= 0) {
        const dd_tensor *R = T(res);
        if (!is_act4(R) || R->shape[0] != X->shape[0] || R->shape[2] != X->shape[2] ||
            R->shape[3] != X->shape[3] || rc < 0 || rc + C > R->shape[1]) {
            char s2[64];
            return dd_error("group_norm %s: residual %s (from channel %d) does not match the "
                            "input %s", T(gamma)->name, shp(R, s1, 64), rc, shp(X, s2, 64));
        }
    }
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.80s:out", T(gamma)->name);
    int out = act_tensor(g, name, X->shape[0], C, X->shape[2], X->shape[3]);
    snprintf(name, sizeof name, "%.80s:mean", T(gamma)->name);
    int mean = act_tensor(g, name, X->shape[0], groups, 1, 1);
    snprintf(name, sizeof name, "%.80s:rstd", T(gamma)->name);
    int rstd = act_tensor(g, name, X->shape[0], groups, 1, 1);
    if (out < 0 || mean < 0 || rstd < 0) return -1;
    dd_node *n = emit(g, DD_OP_GROUP_NORM, out, (const int[]){x, gamma, beta, add, res}, 5);
    if (!n) return -1;
    const size_t xs = (size_t)(T(x)->shape[1] * HW);
    const size_t rs = res >= 0 ? (size_t)(T(res)->shape[1] * HW) : 0;
    n->p.gn = (dd_gn_shape){.N = (int)T(x)->shape[0], .C = (int)C, .HW = (int)HW, .G = groups,
                            .swish = swish != 0, .eps = 1e-5f,
                            .xs = xs == (size_t)(C * HW) ? 0 : xs,
                            .rs = rs == (size_t)(C * HW) ? 0 : rs};
    n->in_off[0] = (size_t)xc * (size_t)HW;
    n->in_off[4] = (size_t)rc * (size_t)HW;
    n->aux[0] = mean;
    n->aux[1] = rstd;
    return out;
}

static int unary_like(dd_graph *g, dd_op op, int x, const char *what) {
    NEED(x);
    const dd_tensor *X = T(x);
    char s1[64];
    if (!is_act4(X)) return dd_error("%s: input %s is not a float (N, C, H, W) tensor", what, shp(X, s1, 64));
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.60s:%s", X->name, what);
    int out = act_tensor(g, name, X->shape[0], X->shape[1], X->shape[2], X->shape[3]);
    dd_node *n = emit(g, op, out, (const int[]){x}, 1);
    if (!n) return -1;
    return out;
}

int dd_activation(dd_graph *g, int x, dd_act act) {
    if ((int)act < 0 || act >= DD_ACT_COUNT) return dd_error("unknown activation %d", (int)act);
    static const char *names[DD_ACT_COUNT] = {
        [DD_ACT_RELU] = "relu", [DD_ACT_SWISH] = "swish",
        [DD_ACT_GELU_TANH] = "gelu_tanh", [DD_ACT_GELU_ERF] = "gelu"};
    int out = unary_like(g, DD_OP_ACT, x, names[act]);
    if (out < 0) return -1;
    g->nodes[g->nn - 1].p.act.act = act;
    return out;
}

int dd_add(dd_graph *g, int a, int b) {
    NEED(a);
    NEED(b);
    char s1[64], s2[64];
    const dd_tensor *A = T(a), *B = T(b);
    if (!same_act4(A, B)) return dd_error("add: shapes %s and %s differ", shp(A, s1, 64), shp(B, s2, 64));
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.60s:add", A->name);
    int out = act_tensor(g, name, A->shape[0], A->shape[1], A->shape[2], A->shape[3]);
    dd_node *n = emit(g, DD_OP_ADD, out, (const int[]){a, b}, 2);
    if (!n) return -1;
    return out;
}

int dd_concat(dd_graph *g, int a, int b) {
    NEED(a);
    NEED(b);
    char s1[64], s2[64];
    const dd_tensor *A = T(a), *B = T(b);
    if (!is_act4(A) || !is_act4(B) || A->shape[0] != B->shape[0] || A->shape[2] != B->shape[2] ||
        A->shape[3] != B->shape[3])
        return dd_error("concat: shapes %s and %s do not match outside the channels", shp(A, s1, 64), shp(B, s2, 64));
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.60s:cat", A->name);
    int out = act_tensor(g, name, A->shape[0], A->shape[1] + B->shape[1], A->shape[2], A->shape[3]);
    dd_node *n = emit(g, DD_OP_CONCAT, out, (const int[]){a, b}, 2);
    if (!n) return -1;
    n->p.concat.N = (int)A->shape[0];
    n->p.concat.Ca = (int)A->shape[1];
    n->p.concat.Cb = (int)B->shape[1];
    n->p.concat.HW = (int)(A->shape[2] * A->shape[3]);
    return out;
}

static int pool_like(dd_graph *g, dd_op op, int x, int up) {
    NEED(x);
    const dd_tensor *X = T(x);
    char s1[64];
    const char *what = up ? "upsample2x" : "maxpool2x2";
    if (!is_act4(X)) return dd_error("%s: input %s", what, shp(X, s1, 64));
    if (!up && (X->shape[2] < 2 || X->shape[3] < 2))
        return dd_error("maxpool2x2: input %s is smaller than 2x2", shp(X, s1, 64));
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.60s:%s", X->name, up ? "up" : "pool");
    int64_t H = up ? 2 * X->shape[2] : X->shape[2] / 2, W = up ? 2 * X->shape[3] : X->shape[3] / 2;
    int out = act_tensor(g, name, X->shape[0], X->shape[1], H, W);
    dd_node *n = emit(g, op, out, (const int[]){x}, 1);
    if (!n) return -1;
    n->p.pool.N = (int)X->shape[0];
    n->p.pool.C = (int)X->shape[1];
    n->p.pool.H = (int)X->shape[2];
    n->p.pool.W = (int)X->shape[3];
    return out;
}

int dd_upsample2x(dd_graph *g, int x) { return pool_like(g, DD_OP_UPSAMPLE2X, x, 1); }
int dd_maxpool2x2(dd_graph *g, int x) { return pool_like(g, DD_OP_MAXPOOL2X2, x, 0); }

int dd_attention(dd_graph *g, int qkv, int heads) {
    NEED(qkv);
    const dd_tensor *Q = T(qkv);
    char s1[64];
    if (!is_act4(Q) || Q->shape[1] % 3)
        return dd_error("attention: qkv %s must have 3 x C channels", shp(Q, s1, 64));
    int64_t C = Q->shape[1] / 3;
    if (heads < 1 || C % heads)
        return dd_error("attention: %d heads do not divide %lld channels", heads, (long long)C);
    int64_t P = Q->shape[2] * Q->shape[3];
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.60s:attn", Q->name);
    int out = act_tensor(g, name, Q->shape[0], C, Q->shape[2], Q->shape[3]);
    snprintf(name, sizeof name, "%.60s:probs", Q->name);
    int probs = act_tensor(g, name, Q->shape[0], heads, P, P);
    if (out < 0 || probs < 0) return -1;
    dd_node *n = emit(g, DD_OP_ATTENTION, out, (const int[]){qkv}, 1);
    if (!n) return -1;
    n->p.attn = (dd_attn_shape){.N = (int)Q->shape[0], .C = (int)C, .heads = heads, .P = (int)P};
    n->aux[0] = probs;
    return out;
}

int dd_embedding(dd_graph *g, int table, int idx) {
    NEED(table);
    NEED(idx);
    const dd_tensor *Tb = T(table), *I = T(idx);
    if (Tb->ndim != 2 || !I->is_index)
        return dd_error("embedding %s: needs a (rows, dim) table and an index input", Tb->name);
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%.80s:emb", Tb->name);
    int out = act_tensor(g, name, I->shape[0], Tb->shape[1], 1, 1);
    dd_node *n = emit(g, DD_OP_EMBEDDING, out, (const int[]){table, idx}, 2);
    if (!n) return -1;
    n->p.emb.N = (int)I->shape[0];
    n->p.emb.rows = (int)Tb->shape[0];
    n->p.emb.dim = (int)Tb->shape[1];
    n->p.emb.base = I->index_base;
    return out;
}

int dd_mse(dd_graph *g, int pred, int target) {
    NEED(pred);
    NEED(target);
    char s1[64], s2[64];
    const dd_tensor *P = T(pred), *Q = T(target);
    if (!same_act4(P, Q)) return dd_error("mse: prediction %s and target %s differ", shp(P, s1, 64), shp(Q, s2, 64));
    int out = act_tensor(g, "loss", 1, 1, 1, 1);
    dd_node *n = emit(g, DD_OP_MSE, out, (const int[]){pred, target}, 2);
    if (!n) return -1;
    return out;
}

int dd_xent(dd_graph *g, int logits, int labels) {
    NEED(logits);
    NEED(labels);
    const dd_tensor *L = T(logits), *Y = T(labels);
    char s1[64];
    if (!is_act4(L) || L->shape[2] * L->shape[3] != 1 || !Y->is_index || Y->shape[0] != L->shape[0])
        return dd_error("xent: logits %s need (N, K, 1, 1) and N int labels", shp(L, s1, 64));
    if (Y->index_base != 0) /* the labels go to the op as they are: classes 0..K-1 */
        return dd_error("xent: labels %s must be 0-based (dd_input_index)", Y->name);
    int out = act_tensor(g, "loss", 1, 1, 1, 1);
    int probs = act_tensor(g, "xent:probs", L->shape[0], L->shape[1], 1, 1);
    if (out < 0 || probs < 0) return -1;
    dd_node *n = emit(g, DD_OP_XENT, out, (const int[]){logits, labels}, 2);
    if (!n) return -1;
    n->p.xent.N = (int)L->shape[0];
    n->p.xent.K = (int)L->shape[1];
    n->aux[0] = probs;
    return out;
}

int dd_conv2d_layer(dd_graph *g, const char *prefix, int x, int cout, int k, int stride, int pad,
                    int bias) {
    NEED(x);
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int64_t ws[4] = {cout, T(x)->shape[1], k, k};
    int w = dd_param(g, name, 4, ws, DD_INIT_GLOROT);
    int b = -1;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        int64_t bs[1] = {cout};
        b = dd_param(g, name, 1, bs, DD_INIT_ZERO);
        if (b < 0) return -1;
    }
    return dd_conv2d(g, x, w, b, stride, pad);
}

int dd_dense_layer(dd_graph *g, const char *prefix, int x, int cout, int bias) {
    NEED(x);
    char name[DD_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", prefix);
    int64_t ws[2] = {cout, T(x)->shape[1] * T(x)->shape[2] * T(x)->shape[3]};
    int w = dd_param(g, name, 2, ws, DD_INIT_GLOROT);
    int b = -1;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        int64_t bs[1] = {cout};
        b = dd_param(g, name, 1, bs, DD_INIT_ZERO);
        if (b < 0) return -1;
    }
    return dd_dense(g, x, w, b);
}

/* ------------------------------------------------------------------ plan */

static size_t align_up(size_t n) { return (n + DD_ALIGN_FLOATS - 1) / DD_ALIGN_FLOATS * DD_ALIGN_FLOATS; }

int dd_graph_reuse_memory(dd_graph *g) {
    if (g->planned) return dd_error("reuse_memory: the graph is already planned");
    g->reuse = 1;
    return 0;
}

int dd_graph_keep(dd_graph *g, int id) {
    if (g->planned) return dd_error("keep: the graph is already planned");
    if (!valid(g, id)) return dd_error("keep: bad tensor id %d", id);
    g->t[id].keep = 1;
    return 0;
}

/* Interval packing for a forward-only graph (dd_graph_reuse_memory). Tensor i lives from the
 * node that writes it (first[i]; -1 for inputs) to the last node that reads it (last[i]; nn for
 * inputs and kept tensors: to the end). A node's inputs are still live when it writes its
 * outputs, so an output never shares memory with what its node reads. Tensors are placed in
 * the order they are written, each at the lowest offset where it overlaps no tensor live at the
 * same time; returns the arena size in floats. */
static int pack_offsets(dd_graph *g, size_t *arena_floats) {
    int *first = malloc((size_t)g->nt * sizeof(int)), *last = malloc((size_t)g->nt * sizeof(int));
    int *order = malloc((size_t)g->nt * sizeof(int));
    if (!first || !last || !order) {
        free(first), free(last), free(order);
        return dd_error("out of host memory");
    }
    for (int i = 0; i < g->nt; i++) first[i] = -1, last[i] = g->t[i].keep ? g->nn : -1;
    for (int k = 0; k < g->nn; k++) {
        const dd_node *n = &g->nodes[k];
        first[n->out] = k;
        if (last[n->out] < k) last[n->out] = k;
        /* a dense node that reads a skipped activation's input reads it here */
        if (g->fold && g->fold[k].src >= 0 && last[g->fold[k].src] < k) last[g->fold[k].src] = k;
        for (int a = 0; a < DD_MAX_AUX; a++)
            if (n->aux[a] >= 0) first[n->aux[a]] = k, last[n->aux[a]] = last[n->aux[a]] < k ? k : last[n->aux[a]];
        for (int j = 0; j < DD_MAX_INPUTS; j++)
            if (n->in[j] >= 0 && last[n->in[j]] < k) last[n->in[j]] = k;
    }
    int m = 0;
    for (int i = 0; i < g->nt; i++) {
        if (g->t[i].param >= 0) continue;
        if (first[i] < 0) last[i] = g->nn; /* an input: written before forward, kept */
        order[m++] = i;
    }
    /* stable sort by first use (insertion sort: a few hundred tensors) */
    for (int a = 1; a < m; a++) {
        int v = order[a], b = a - 1;
        while (b >= 0 && first[order[b]] > first[v]) order[b + 1] = order[b], b--;
        order[b + 1] = v;
    }
    size_t top = 0;
    for (int a = 0; a < m; a++) {
        dd_tensor *t = &g->t[order[a]];
        const size_t size = align_up(t->numel);
        size_t off = 0;
        for (int moved = 1; moved;) { /* first fit: move past every clash, until none */
            moved = 0;
            for (int b = 0; b < a; b++) {
                const int o = order[b];
                if (last[o] < first[order[a]]) continue; /* dead before this one is written */
                const dd_tensor *u = &g->t[o];
                const size_t us = align_up(u->numel);
                if (off < u->offset + us && u->offset < off + size) {
                    off = u->offset + us;
                    moved = 1;
                }
            }
        }
        t->offset = off;
        if (off + size > top) top = off + size;
    }
    free(first), free(last), free(order);
    *arena_floats = top;
    return 0;
}

/* A dense node's inputs other than x are ready before node k: parameters, graph inputs, or
 * tensors written by nodes before k (pos: the node writing each tensor, -1 for none). */
static int dense_ready_before(const dd_node *n, const int *pos, int k) {
    for (int j = 1; j < 3; j++)
        if (n->in[j] >= 0 && pos[n->in[j]] >= k) return 0;
    return 1;
}

static int dense_same_group(const dd_node *a, const dd_node *b) {
    return b->op == DD_OP_DENSE && b->in[0] == a->in[0] && b->p.dense.N == a->p.dense.N &&
           b->p.dense.Cin == a->p.dense.Cin;
}

/* Dense nodes that read the same input (the UNet's blocks each project the one time embedding)
 * are moved up to follow the first of them, up to DD_DENSE_GROUP_MAX in a row, so that forward
 * runs them as one backend call (dense_group_forward). A node moves only when its weights and
 * bias are ready by then, and nothing that reads its output comes earlier than it did, so every
 * value stays the same; backward's order of the sums into the shared input's gradient changes
 * (the same on every backend). */
static int group_dense_nodes(dd_graph *g) {
    int ndense = 0;
    for (int k = 0; k < g->nn; k++) ndense += g->nodes[k].op == DD_OP_DENSE;
    if (ndense < 2) return 0;
    int *pos = malloc((size_t)g->nt * sizeof(int));
    char *moved = calloc((size_t)g->nn, 1);
    dd_node *out = malloc((size_t)g->nn * sizeof(dd_node));
    if (!pos || !moved || !out) {
        free(pos), free(moved), free(out);
        return dd_error("out of host memory");
    }
    for (int i = 0; i < g->nt; i++) pos[i] = -1;
    for (int k = 0; k < g->nn; k++) pos[g->nodes[k].out] = k;
    int m = 0;
    for (int k = 0; k < g->nn; k++) {
        if (moved[k]) continue;
        const dd_node *lead = &g->nodes[k];
        out[m++] = *lead;
        if (lead->op != DD_OP_DENSE) continue;
        int members = 1;
        for (int j = k + 1; j < g->nn && members < DD_DENSE_GROUP_MAX; j++) {
            const dd_node *n = &g->nodes[j];
            if (moved[j] || !dense_same_group(lead, n) || !dense_ready_before(n, pos, k))
                continue;
            out[m++] = *n;
            moved[j] = 1;
            members++;
        }
    }
    memcpy(g->nodes, out, (size_t)g->nn * sizeof(dd_node));
    free(pos), free(moved), free(out);
    return 0;
}

/* For a forward-only graph that reuses memory (so no activation is read after forward unless
 * kept): an activation whose output is read only by dense layers (as their x, up to
 * DD_DENSE_GROUP_ACT_CIN inputs) and is not kept is skipped, and those layers apply it to its
 * input as they read it (dense_group_act_forward): one launch and one pass over memory fewer,
 * the same values. Runs after group_dense_nodes, before the memory is packed (pack_offsets
 * keeps the activation's input alive up to its last dense reader). */
static int fold_activations(dd_graph *g) {
    free(g->fold);
    g->fold = NULL;
    if (!g->be->dense_group_act_forward) return 0;
    g->fold = malloc((size_t)g->nn * sizeof *g->fold);
    int *readers = calloc((size_t)g->nt, sizeof(int)), *others = calloc((size_t)g->nt, sizeof(int));
    if (!g->fold || !readers || !others) {
        free(readers), free(others);
        return dd_error("out of host memory");
    }
    for (int k = 0; k < g->nn; k++) g->fold[k].skip = 0, g->fold[k].src = -1, g->fold[k].act = 0;
    for (int k = 0; k < g->nn; k++) {
        const dd_node *n = &g->nodes[k];
        for (int j = 0; j < DD_MAX_INPUTS; j++) {
            const int t = n->in[j];
            if (t < 0) continue;
            if (j == 0 && n->op == DD_OP_DENSE && n->p.dense.Cin <= DD_DENSE_GROUP_ACT_CIN)
                readers[t]++;
            else
                others[t]++;
        }
        for (int a = 0; a < DD_MAX_AUX; a++)
            if (n->aux[a] >= 0) others[n->aux[a]]++;
    }
    int folded = 0;
    for (int k = 0; k < g->nn; k++) {
        const dd_node *n = &g->nodes[k];
        const int t = n->out;
        if (n->op != DD_OP_ACT || g->t[t].keep || !readers[t] || others[t]) continue;
        g->fold[k].skip = 1;
        for (int j = k + 1; j < g->nn; j++)
            if (g->nodes[j].op == DD_OP_DENSE && g->nodes[j].in[0] == t) {
                g->fold[j].src = n->in[0];
                g->fold[j].act = n->p.act.act;
            }
        folded++;
    }
    free(readers), free(others);
    if (!folded) {
        free(g->fold);
        g->fold = NULL;
    }
    return 0;
}

/* cuDNN's descriptors, and the kernels' int indices, hold at most 2^31 - 1 values a tensor. For
 * the activations (N, C, H, W) that limit is one on the batch: the error names the largest batch
 * every tensor of the graph allows. */
static int check_sizes(const dd_graph *g) {
    int big = -1;
    size_t most = SIZE_MAX; /* the largest batch that fits every activation */
    for (int i = 0; i < g->nt; i++) {
        const dd_tensor *t = &g->t[i];
        if (t->numel > (size_t)INT32_MAX && big < 0) big = i;
        if (t->param < 0 && t->ndim == 4 && t->shape[0] > 0) {
            const size_t per = t->numel / (size_t)t->shape[0];
            if (per && (size_t)INT32_MAX / per < most) most = (size_t)INT32_MAX / per;
        }
    }
    if (big < 0) return 0;
    const dd_tensor *t = &g->t[big];
    if (t->param < 0 && t->ndim == 4 && most > 0)
        return dd_error_size("a batch of %lld is too large: tensor %s (%lld, %lld, %lld, %lld) "
                             "would hold %zu values, more than the 2^31 - 1 a tensor may; at "
                             "most %zu fit",
                             (long long)t->shape[0], t->name, (long long)t->shape[0],
                             (long long)t->shape[1], (long long)t->shape[2],
                             (long long)t->shape[3], t->numel, most);
    return dd_error_size("tensor %s would hold %zu values, more than the 2^31 - 1 a tensor may",
                         t->name, t->numel);
}

int dd_graph_plan(dd_graph *g, int with_grad) {
    if (g->planned) return dd_error("graph already planned");
    dd_params *P = g->params;
    if (!P->allocated) return dd_error("plan: allocate the parameters first (dd_params_alloc)");
    DD_TRY(check_sizes(g));
    DD_TRY(group_dense_nodes(g));
    if (g->reuse && !with_grad) DD_TRY(fold_activations(g));
    /* a forward-only graph that shares memory reads no attention probabilities after their node
     * (they are not kept): the backend may skip writing them */
    for (int k = 0; k < g->nn; k++)
        if (g->nodes[k].op == DD_OP_ATTENTION)
            g->nodes[k].p.attn.probs_unread = g->reuse && !with_grad && !g->t[g->nodes[k].aux[0]].keep;
    /* Every non-parameter tensor gets its own slot, unless a forward-only graph asked to reuse
     * memory (backward needs the activations anyway, and distinct slots keep every activation
     * readable for tests). */
    size_t off = 0, goff = 0;
    if (g->reuse && !with_grad) {
        DD_TRY(pack_offsets(g, &off));
    } else {
        for (int i = 0; i < g->nt; i++) {
            dd_tensor *t = &g->t[i];
            if (t->param >= 0) continue;
            t->offset = off;
            off += align_up(t->numel);
            if (with_grad && t->needs_grad) {
                t->grad_offset = goff;
                goff += align_up(t->numel);
            }
        }
    }
    size_t ws = 0;
    for (int i = 0; i < g->nn; i++) {
        const dd_node *n = &g->nodes[i];
        size_t w = 0;
        if (n->op == DD_OP_CONV2D) w = g->be->conv2d_workspace(&n->p.conv);
        if (n->op == DD_OP_ATTENTION && with_grad) w = g->be->attention_workspace(&n->p.attn);
        if (n->op == DD_OP_GROUP_NORM && with_grad) w = g->be->group_norm_workspace(&n->p.gn);
        if (n->op == DD_OP_GROUP_NORM && g->be->group_norm_prepare &&
            g->be->group_norm_prepare(&n->p.gn, n->in[3] >= 0, n->in[4] >= 0))
            return dd_error_prefix("planning group_norm node %d", i);
        if (w > ws) ws = w;
    }
    if (g->be->alloc((void **)&g->arena, (off ? off : DD_ALIGN_FLOATS) * sizeof(float)))
        return dd_error_prefix("planning the activation arena (%zu floats)", off);
    g->grad_arena = NULL;
    g->ws = NULL;
    if (with_grad && g->be->alloc((void **)&g->grad_arena, (goff ? goff : DD_ALIGN_FLOATS) * sizeof(float))) {
        g->be->free(g->arena);
        return dd_error_prefix("planning the gradient arena (%zu floats)", goff);
    }
    if (ws && g->be->alloc(&g->ws, ws)) {
        g->be->free(g->arena);
        if (g->grad_arena) g->be->free(g->grad_arena);
        return dd_error_prefix("allocating the %zu-byte workspace", ws);
    }
    const float one = 1.0f;
    g->one = NULL;
    if (g->be->alloc((void **)&g->one, sizeof(float)) || g->be->to_device(g->one, &one, sizeof one)) {
        if (g->one) g->be->free(g->one);
        g->be->free(g->arena);
        if (g->grad_arena) g->be->free(g->grad_arena);
        if (g->ws) g->be->free(g->ws);
        return dd_error_prefix("planning the graph");
    }
    g->arena_floats = off;
    g->grad_floats = goff;
    g->ws_bytes = ws;
    for (int i = 0; i < g->nt; i++) {
        dd_tensor *t = &g->t[i];
        if (t->param >= 0) {
            const dd_param_info *q = &P->info[t->param];
            t->data = P->data + q->offset;
            t->grad = q->trainable ? P->grad + q->offset : NULL;
        } else {
            t->data = g->arena + t->offset;
            t->grad = with_grad && t->needs_grad ? g->grad_arena + t->grad_offset : NULL;
        }
    }
    g->planned = 1;
    g->with_grad = with_grad;
    return 0;
}

/* ------------------------------------------------------------------ run */

#define D(id) ((id) >= 0 ? g->t[(id)].data : NULL)
#define G(id) ((id) >= 0 ? g->t[(id)].grad : NULL)
#define IDX(id) ((const int32_t *)g->t[(id)].data)
/* input k of node n where the node's view of it starts (in_off), and its gradient's */
#define DO(n, k) ((n)->in[k] >= 0 ? g->t[(n)->in[k]].data + (n)->in_off[k] : NULL)
#define GO(n, k) ((n)->in[k] >= 0 && g->t[(n)->in[k]].grad ? g->t[(n)->in[k]].grad + (n)->in_off[k] : NULL)

static int forward_node(dd_graph *g, const dd_node *n) {
    const dd_backend *be = g->be;
    float *y = g->t[n->out].data;
    switch (n->op) {
    case DD_OP_INPUT:
    case DD_OP_PARAM:
        return 0;
    case DD_OP_CONV2D:
        return be->conv2d_forward(y, D(n->in[0]), D(n->in[1]), D(n->in[2]), &n->p.conv, g->ws);
    case DD_OP_DENSE:
        return be->dense_forward(y, D(n->in[0]), D(n->in[1]), D(n->in[2]), n->p.dense.N,
                                 n->p.dense.Cin, n->p.dense.Cout);
    case DD_OP_GROUP_NORM:
        return be->group_norm_forward(y, D(n->aux[0]), D(n->aux[1]), DO(n, 0), D(n->in[1]),
                                      D(n->in[2]), D(n->in[3]), DO(n, 4), &n->p.gn);
    case DD_OP_ACT:
        return be->act_forward(y, D(n->in[0]), g->t[n->out].numel, n->p.act.act);
    case DD_OP_ADD:
        return be->add_forward(y, D(n->in[0]), D(n->in[1]), g->t[n->out].numel);
    case DD_OP_CONCAT:
        return be->concat_forward(y, D(n->in[0]), D(n->in[1]), n->p.concat.N, n->p.concat.Ca,
                                  n->p.concat.Cb, n->p.concat.HW);
    case DD_OP_UPSAMPLE2X:
        return be->upsample2x_forward(y, D(n->in[0]), n->p.pool.N, n->p.pool.C, n->p.pool.H, n->p.pool.W);
    case DD_OP_MAXPOOL2X2:
        return be->maxpool2x2_forward(y, D(n->in[0]), n->p.pool.N, n->p.pool.C, n->p.pool.H, n->p.pool.W);
    case DD_OP_ATTENTION:
        return be->attention_forward(y, D(n->aux[0]), D(n->in[0]), &n->p.attn);
    case DD_OP_EMBEDDING:
        return be->embedding_forward(y, D(n->in[0]), IDX(n->in[1]), n->p.emb.N, n->p.emb.rows,
                                     n->p.emb.dim, n->p.emb.base);
    case DD_OP_MSE:
        return be->mse_forward(y, D(n->in[0]), D(n->in[1]), g->t[n->in[0]].numel);
    case DD_OP_XENT:
        return be->xent_forward(y, D(n->aux[0]), D(n->in[0]), IDX(n->in[1]), n->p.xent.N, n->p.xent.K);
    case DD_OP_COUNT:
        break;
    }
    return dd_error("forward: unknown op %d", (int)n->op);
}

static int backward_node(dd_graph *g, const dd_node *n) {
    const dd_backend *be = g->be;
    const float *dy = g->t[n->out].grad;
    switch (n->op) {
    case DD_OP_INPUT:
    case DD_OP_PARAM:
        return 0;
    case DD_OP_CONV2D:
        return be->conv2d_backward(G(n->in[0]), G(n->in[1]), G(n->in[2]), dy, D(n->in[0]),
                                   D(n->in[1]), &n->p.conv, g->ws);
    case DD_OP_DENSE:
        return be->dense_backward(G(n->in[0]), G(n->in[1]), G(n->in[2]), dy, D(n->in[0]),
                                  D(n->in[1]), n->p.dense.N, n->p.dense.Cin, n->p.dense.Cout);
    case DD_OP_GROUP_NORM:
        return be->group_norm_backward(GO(n, 0), G(n->in[1]), G(n->in[2]), G(n->in[3]),
                                       GO(n, 4), dy,
                                       DO(n, 0), D(n->aux[0]), D(n->aux[1]), D(n->in[1]),
                                       D(n->in[2]), D(n->in[3]), &n->p.gn, g->ws);
    case DD_OP_ACT:
        return be->act_backward(G(n->in[0]), dy, D(n->in[0]), g->t[n->out].numel, n->p.act.act);
    case DD_OP_ADD:
        return be->add_backward(G(n->in[0]), G(n->in[1]), dy, g->t[n->out].numel);
    case DD_OP_CONCAT:
        return be->concat_backward(G(n->in[0]), G(n->in[1]), dy, n->p.concat.N, n->p.concat.Ca,
                                   n->p.concat.Cb, n->p.concat.HW);
    case DD_OP_UPSAMPLE2X:
        return be->upsample2x_backward(G(n->in[0]), dy, n->p.pool.N, n->p.pool.C, n->p.pool.H, n->p.pool.W);
    case DD_OP_MAXPOOL2X2:
        return be->maxpool2x2_backward(G(n->in[0]), dy, D(n->in[0]), n->p.pool.N, n->p.pool.C,
                                       n->p.pool.H, n->p.pool.W);
    case DD_OP_ATTENTION:
        return be->attention_backward(G(n->in[0]), dy, D(n->in[0]), D(n->aux[0]), &n->p.attn, g->ws);
    case DD_OP_EMBEDDING:
        return be->embedding_backward(G(n->in[0]), dy, IDX(n->in[1]), n->p.emb.N, n->p.emb.rows,
                                      n->p.emb.dim, n->p.emb.base);
    case DD_OP_MSE:
        return be->mse_backward(G(n->in[0]), dy, D(n->in[0]), D(n->in[1]), g->t[n->in[0]].numel);
    case DD_OP_XENT:
        return be->xent_backward(G(n->in[0]), dy, D(n->aux[0]), IDX(n->in[1]), n->p.xent.N, n->p.xent.K);
    case DD_OP_COUNT:
        break;
    }
    return dd_error("backward: unknown op %d", (int)n->op);
}

/* Under the profile (g->profile), a call is drained before, synchronized after and timed in
 * between: profile_begin, the call, profile_end (each does nothing without a profile). */
static int profile_begin(dd_graph *g, double *t0) {
    if (!g->profile) return 0;
    DD_TRY(g->be->synchronize());
    *t0 = dd_now();
    return 0;
}

static int profile_end(dd_graph *g, dd_op op, int backward, double t0) {
    if (!g->profile) return 0;
    DD_TRY(g->be->synchronize());
    g->profile->ms[op][backward] += (dd_now() - t0) * 1e3;
    g->profile->calls[op][backward]++;
    return 0;
}

static int profiled(dd_graph *g, const dd_node *n, int backward) {
    double t0 = 0.0;
    DD_TRY(profile_begin(g, &t0));
    DD_TRY(backward ? backward_node(g, n) : forward_node(g, n));
    return profile_end(g, n->op, backward, t0);
}

static int run_node(dd_graph *g, const dd_node *n, int backward) {
    if (g->profile) return profiled(g, n, backward);
    return backward ? backward_node(g, n) : forward_node(g, n);
}

/* Dense nodes i.. that group_dense_nodes put in a row: one dense_group_forward call (timed as
 * one dense node under the profile). Returns how many nodes it ran, or -1. */
static int forward_dense_group(dd_graph *g, int i) {
    const dd_node *lead = &g->nodes[i];
    float *y[DD_DENSE_GROUP_MAX];
    const float *w[DD_DENSE_GROUP_MAX], *b[DD_DENSE_GROUP_MAX];
    int cout[DD_DENSE_GROUP_MAX], count = 0;
    int ids[DD_DENSE_GROUP_MAX];
    while (count < DD_DENSE_GROUP_MAX && i + count < g->nn &&
           dense_same_group(lead, &g->nodes[i + count])) {
        const dd_node *n = &g->nodes[i + count];
        int reads_group = 0; /* a weight or bias that an earlier member writes: not with it */
        for (int j = 0; j < count; j++) reads_group |= n->in[1] == ids[j] || n->in[2] == ids[j];
        if (reads_group) break;
        ids[count] = n->out;
        y[count] = g->t[n->out].data;
        w[count] = D(n->in[1]);
        b[count] = D(n->in[2]);
        cout[count] = n->p.dense.Cout;
        count++;
    }
    const int folded = g->fold && g->fold[i].src >= 0; /* x = act(src): the same for all */
    if (count < 2 && !folded) return run_node(g, lead, 0) ? -1 : 1;
    double t0 = 0.0;
    if (profile_begin(g, &t0) ||
        (folded ? g->be->dense_group_act_forward(count, y, D(g->fold[i].src), g->fold[i].act, w,
                                                 b, lead->p.dense.N, lead->p.dense.Cin, cout)
                : g->be->dense_group_forward(count, y, D(lead->in[0]), w, b, lead->p.dense.N,
                                             lead->p.dense.Cin, cout)) ||
        profile_end(g, DD_OP_DENSE, 0, t0))
        return -1;
    return count;
}

int dd_graph_forward(dd_graph *g) {
    if (!g->planned) return dd_error("forward: graph not planned");
    for (int i = 0; i < g->nn;) {
        const dd_node *n = &g->nodes[i];
        if (g->fold && g->fold[i].skip) { /* its dense readers apply it */
            i++;
            continue;
        }
        const int ran = n->op == DD_OP_DENSE && g->be->dense_group_forward
                            ? forward_dense_group(g, i)
                            : run_node(g, n, 0) ? -1 : 1;
        if (ran < 0)
            return dd_error_prefix("forward %s (%s)", dd_op_names[n->op], g->t[n->out].name);
        i += ran;
    }
    return 0;
}

/* The backward of dense nodes i, i - 1, .. of one group (visited in backward's order): one
 * dense_group_backward call. A member stops the group when its output has no gradient or is
 * a weight or bias of a member already taken (whose backward feeds its gradient). Returns how
 * many nodes it ran, or -1. */
static int backward_dense_group(dd_graph *g, int i) {
    const dd_node *lead = &g->nodes[i];
    float *dw[DD_DENSE_GROUP_MAX], *db[DD_DENSE_GROUP_MAX];
    const float *dy[DD_DENSE_GROUP_MAX], *w[DD_DENSE_GROUP_MAX];
    int cout[DD_DENSE_GROUP_MAX], count = 0;
    const dd_node *taken[DD_DENSE_GROUP_MAX];
    while (count < DD_DENSE_GROUP_MAX && i - count >= 0 &&
           dense_same_group(lead, &g->nodes[i - count])) {
        const dd_node *n = &g->nodes[i - count];
        if (!g->t[n->out].grad) break;
        int feeds = 0;
        for (int j = 0; j < count; j++)
            feeds |= taken[j]->in[1] == n->out || taken[j]->in[2] == n->out;
        if (feeds) break;
        taken[count] = n;
        dy[count] = g->t[n->out].grad;
        w[count] = D(n->in[1]);
        dw[count] = G(n->in[1]);
        db[count] = G(n->in[2]);
        cout[count] = n->p.dense.Cout;
        count++;
    }
    if (count < 2) return run_node(g, lead, 1) ? -1 : 1;
    double t0 = 0.0;
    if (profile_begin(g, &t0) ||
        g->be->dense_group_backward(count, G(lead->in[0]), dw, db, dy, D(lead->in[0]), w,
                                    lead->p.dense.N, lead->p.dense.Cin, cout) ||
        profile_end(g, DD_OP_DENSE, 1, t0))
        return -1;
    return count;
}

int dd_graph_backward(dd_graph *g, int loss) {
    if (!g->planned || !g->with_grad) return dd_error("backward: graph not planned with gradients");
    if (!valid(g, loss) || g->t[loss].numel != 1) return dd_error("backward: tensor %d is not a scalar loss", loss);
    if (!g->t[loss].grad) return dd_error("backward: the loss does not depend on any parameter");
    DD_TRY(g->be->zero(g->grad_arena, (g->grad_floats ? g->grad_floats : 1) * sizeof(float)));
    DD_TRY(dd_params_zero_grad(g->params));
    /* the seed d(loss) = 1 comes from a planned device constant: a device-to-device copy, so
     * backward has no host transfer and can be captured as a CUDA graph */
    DD_TRY(g->be->copy(g->t[loss].grad, g->one, sizeof(float)));
    for (int i = g->nn - 1; i >= 0;) {
        const dd_node *n = &g->nodes[i];
        if (!g->t[n->out].grad) { /* nothing upstream needs a gradient */
            i--;
            continue;
        }
        const int ran = n->op == DD_OP_DENSE && g->be->dense_group_backward
                            ? backward_dense_group(g, i)
                            : run_node(g, n, 1) ? -1 : 1;
        if (ran < 0)
            return dd_error_prefix("backward %s (%s)", dd_op_names[n->op], g->t[n->out].name);
        i -= ran;
    }
    return 0;
}

/* ------------------------------------------------------------------ transfers */

int dd_graph_find(const dd_graph *g, const char *name) {
    for (int i = 0; i < g->nt; i++)
        if (!strcmp(g->t[i].name, name)) return i;
    return -1;
}

int dd_graph_bind(dd_graph *g, int id, void *data) {
    if (!g->planned) return dd_error("bind: graph not planned");
    if (!valid(g, id)) return dd_error("bind: bad tensor id %d", id);
    if (g->t[id].param >= 0) return dd_error("bind: %s is a parameter", g->t[id].name);
    if (!data) return dd_error("bind: %s: no memory given", g->t[id].name);
    if ((uintptr_t)data % (DD_ALIGN_FLOATS * sizeof(float))) return 1;
    g->t[id].data = data;
    return 0;
}

void dd_graph_unbind(dd_graph *g, int id) {
    if (g->planned && valid(g, id) && g->t[id].param < 0) g->t[id].data = g->arena + g->t[id].offset;
}

int dd_graph_set_input(dd_graph *g, int id, const void *host, size_t bytes) {
    if (!g->planned) return dd_error("set_input: graph not planned");
    if (!valid(g, id)) return dd_error("set_input: bad tensor id %d", id);
    dd_tensor *t = &g->t[id];
    dd_graph_unbind(g, id);
    if (bytes != t->numel * 4)
        return dd_error("input %s: %zu bytes given, %zu expected", t->name, bytes, t->numel * 4);
    if (!t->is_index) return g->be->to_device(t->data, host, bytes);
    /* indices: checked against every table they address; the ops that read them subtract the
     * base themselves, so the values go as they are */
    int rows = -1;
    for (int i = 0; i < g->nn; i++) {
        const dd_node *n = &g->nodes[i];
        if (n->op == DD_OP_EMBEDDING && n->in[1] == id && (rows < 0 || n->p.emb.rows < rows)) rows = n->p.emb.rows;
        if (n->op == DD_OP_XENT && n->in[1] == id && (rows < 0 || n->p.xent.K < rows)) rows = n->p.xent.K;
    }
    const int32_t *v = host;
    for (size_t i = 0; i < t->numel; i++) {
        int64_t k = (int64_t)v[i] - t->index_base;
        if (k < 0 || (rows >= 0 && k >= rows)) {
            return dd_error("input %s: value %d at position %zu is out of range [%d, %d)", t->name,
                            v[i], i, t->index_base, t->index_base + rows);
        }
    }
    return g->be->to_device(t->data, host, bytes);
}

int dd_graph_get(dd_graph *g, int id, float *host) {
    if (!g->planned) return dd_error("get: graph not planned");
    if (!valid(g, id)) return dd_error("get: bad tensor id %d", id);
    return g->be->to_host(host, g->t[id].data, g->t[id].numel * sizeof(float));
}

int dd_graph_get_grad(dd_graph *g, int id, float *host) {
    if (!g->planned) return dd_error("get_grad: graph not planned");
    if (!valid(g, id)) return dd_error("get_grad: bad tensor id %d", id);
    if (!g->t[id].grad) return dd_error("tensor %s has no gradient", g->t[id].name);
    return g->be->to_host(host, g->t[id].grad, g->t[id].numel * sizeof(float));
}
