/* The property that CUDA-graph recording rests on, checked on the CPU: a whole training step and
 * a whole sampling step are the same backend calls, with the same arguments, every time, and
 * none of them moves data between host and device or synchronises (include/diffusion/replay.h).
 *
 * A logging backend wraps the CPU backend: every call appends (op, hash of its arguments:
 * pointer values, scalars, shape structs) to a log. The trainer's dd_train_step and the samplers
 * run on it; the log of one step must equal the log of the next, contain the work it must
 * contain (Adam, EMA and the step counter inside the training step; the fused update inside
 * the sampling step), and contain no transfer, allocation or synchronisation. A per-step value
 * passed as an argument (a time step, a noise offset, Adam's step) would make two logs differ:
 * on a GPU the replayed graph would then silently reuse the recorded value. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/diffusion.h"
#include "diffusion/error.h"
#include "diffusion/models.h"
#include "diffusion/runner.h"
#include "diffusion/train.h"
#include "testutil.h"

enum {
    OP_ALLOC, OP_FREE, OP_ZERO, OP_TO_DEVICE, OP_TO_HOST, OP_COPY, OP_SYNC, OP_CONV_WS,
    OP_CONV_F, OP_CONV_B, OP_DENSE_F, OP_DENSE_GROUP_F, OP_DENSE_B, OP_DENSE_GROUP_B, OP_GN_F, OP_GN_WS, OP_GN_B, OP_ACT_F, OP_ACT_B, OP_ADD_F,
    OP_ADD_B, OP_CAT_F, OP_CAT_B, OP_UP_F, OP_UP_B, OP_POOL_F, OP_POOL_B, OP_ATT_WS, OP_ATT_F,
    OP_ATT_B, OP_EMB_F, OP_EMB_B, OP_MSE_F, OP_MSE_B, OP_XENT_F, OP_XENT_B, OP_ADAM, OP_EMA,
    OP_COUNTER, OP_ADVANCE, OP_NORMAL, OP_TRAIN_DRAW, OP_Q_SAMPLE, OP_SAMPLER, OP_COUNT
};

#define MAX_LOG 4096
static struct {
    int on;
    int n;
    int op[MAX_LOG];
    uint64_t h[MAX_LOG];
} L;

static const dd_backend *C = &dd_cpu_backend;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}
#define H(x) h = fnv(h, &(x), sizeof(x))
static void rec(int op, uint64_t h) {
    if (!L.on) return;
    if (L.n < MAX_LOG) L.op[L.n] = op, L.h[L.n] = h;
    L.n++;
}
#define BEGIN(op) uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)(op)
#define END(op) rec(op, h)

static int w_alloc(void **p, size_t bytes) { BEGIN(OP_ALLOC); H(bytes); END(OP_ALLOC); return C->alloc(p, bytes); }
static void w_free(void *p) { BEGIN(OP_FREE); H(p); END(OP_FREE); C->free(p); }
static int w_zero(void *p, size_t n) { BEGIN(OP_ZERO); H(p); H(n); END(OP_ZERO); return C->zero(p, n); }
static int w_to_device(void *d, const void *s, size_t n) { BEGIN(OP_TO_DEVICE); H(d); H(n); END(OP_TO_DEVICE); return C->to_device(d, s, n); }
static int w_to_host(void *d, const void *s, size_t n) { BEGIN(OP_TO_HOST); H(s); H(n); END(OP_TO_HOST); return C->to_host(d, s, n); }
static int w_copy(void *d, const void *s, size_t n) { BEGIN(OP_COPY); H(d); H(s); H(n); END(OP_COPY); return C->copy(d, s, n); }
static int w_sync(void) { BEGIN(OP_SYNC); END(OP_SYNC); return C->synchronize(); }
static size_t w_conv_ws(const dd_conv_shape *s) { BEGIN(OP_CONV_WS); H(*s); END(OP_CONV_WS); return C->conv2d_workspace(s); }
static int w_conv_f(float *y, const float *x, const float *w, const float *b, const dd_conv_shape *s, void *ws) {
    BEGIN(OP_CONV_F); H(y); H(x); H(w); H(b); H(*s); H(ws); END(OP_CONV_F);
    return C->conv2d_forward(y, x, w, b, s, ws);
}
static int w_conv_b(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, const dd_conv_shape *s, void *ws) {
    BEGIN(OP_CONV_B); H(dx); H(dw); H(db); H(dy); H(x); H(w); H(*s); H(ws); END(OP_CONV_B);
    return C->conv2d_backward(dx, dw, db, dy, x, w, s, ws);
}
static int w_dense_f(float *y, const float *x, const float *w, const float *b, int N, int Ci, int Co) {
    BEGIN(OP_DENSE_F); H(y); H(x); H(w); H(b); H(N); H(Ci); H(Co); END(OP_DENSE_F);
    return C->dense_forward(y, x, w, b, N, Ci, Co);
}
/* the arrays' contents, not their (stack) addresses: what a recording captures */
static int w_dense_group_f(int count, float *const *y, const float *x, const float *const *w,
                           const float *const *b, int N, int Ci, const int *co) {
    BEGIN(OP_DENSE_GROUP_F); H(count); H(x); H(N); H(Ci);
    for (int l = 0; l < count; l++) {
        const float *bl = b ? b[l] : NULL;
        H(y[l]); H(w[l]); H(bl); H(co[l]);
    }
    END(OP_DENSE_GROUP_F);
    return C->dense_group_forward(count, y, x, w, b, N, Ci, co);
}
static int w_dense_group_b(int count, float *dx, float *const *dw, float *const *db,
                           const float *const *dy, const float *x, const float *const *w, int N,
                           int Ci, const int *co) {
    BEGIN(OP_DENSE_GROUP_B); H(count); H(dx); H(x); H(N); H(Ci);
    for (int l = 0; l < count; l++) {
        const float *dwl = dw ? dw[l] : NULL, *dbl = db ? db[l] : NULL;
        H(dwl); H(dbl); H(dy[l]); H(w[l]); H(co[l]);
    }
    END(OP_DENSE_GROUP_B);
    return C->dense_group_backward(count, dx, dw, db, dy, x, w, N, Ci, co);
}
static int w_dense_b(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int N, int Ci, int Co) {
    BEGIN(OP_DENSE_B); H(dx); H(dw); H(db); H(dy); H(x); H(w); H(N); H(Ci); H(Co); END(OP_DENSE_B);
    return C->dense_backward(dx, dw, db, dy, x, w, N, Ci, Co);
}
static int w_gn_f(float *y, float *m, float *r, const float *x, const float *g, const float *b, const float *a,
                  const float *res, const dd_gn_shape *s) {
    BEGIN(OP_GN_F); H(y); H(m); H(r); H(x); H(g); H(b); H(a); H(res); H(*s); END(OP_GN_F);
    return C->group_norm_forward(y, m, r, x, g, b, a, res, s);
}
static int w_gn_b(float *dx, float *dg, float *db, float *da, float *dres, const float *dy, const float *x, const float *m,
                  const float *r, const float *g, const float *b, const float *a, const dd_gn_shape *s, void *ws) {
    BEGIN(OP_GN_B); H(dx); H(dg); H(db); H(da); H(dres); H(dy); H(x); H(m); H(r); H(g); H(b); H(a); H(*s); H(ws); END(OP_GN_B);
    return C->group_norm_backward(dx, dg, db, da, dres, dy, x, m, r, g, b, a, s, ws);
}
static int w_act_f(float *y, const float *x, size_t n, dd_act a) { BEGIN(OP_ACT_F); H(y); H(x); H(n); H(a); END(OP_ACT_F); return C->act_forward(y, x, n, a); }
static int w_act_b(float *dx, const float *dy, const float *x, size_t n, dd_act a) {
    BEGIN(OP_ACT_B); H(dx); H(dy); H(x); H(n); H(a); END(OP_ACT_B);
    return C->act_backward(dx, dy, x, n, a);
}
static int w_add_f(float *y, const float *a, const float *b, size_t n) { BEGIN(OP_ADD_F); H(y); H(a); H(b); H(n); END(OP_ADD_F); return C->add_forward(y, a, b, n); }
static int w_add_b(float *da, float *db, const float *dy, size_t n) { BEGIN(OP_ADD_B); H(da); H(db); H(dy); H(n); END(OP_ADD_B); return C->add_backward(da, db, dy, n); }
static int w_cat_f(float *y, const float *a, const float *b, int N, int Ca, int Cb, int HW) {
    BEGIN(OP_CAT_F); H(y); H(a); H(b); H(N); H(Ca); H(Cb); H(HW); END(OP_CAT_F);
    return C->concat_forward(y, a, b, N, Ca, Cb, HW);
}
static int w_cat_b(float *da, float *db, const float *dy, int N, int Ca, int Cb, int HW) {
    BEGIN(OP_CAT_B); H(da); H(db); H(dy); H(N); H(Ca); H(Cb); H(HW); END(OP_CAT_B);
    return C->concat_backward(da, db, dy, N, Ca, Cb, HW);
}
static int w_up_f(float *y, const float *x, int N, int Cc, int Hh, int W) { BEGIN(OP_UP_F); H(y); H(x); H(N); H(Cc); H(Hh); H(W); END(OP_UP_F); return C->upsample2x_forward(y, x, N, Cc, Hh, W); }
static int w_up_b(float *dx, const float *dy, int N, int Cc, int Hh, int W) { BEGIN(OP_UP_B); H(dx); H(dy); H(N); H(Cc); H(Hh); H(W); END(OP_UP_B); return C->upsample2x_backward(dx, dy, N, Cc, Hh, W); }
static int w_pool_f(float *y, const float *x, int N, int Cc, int Hh, int W) { BEGIN(OP_POOL_F); H(y); H(x); H(N); H(Cc); H(Hh); H(W); END(OP_POOL_F); return C->maxpool2x2_forward(y, x, N, Cc, Hh, W); }
static int w_pool_b(float *dx, const float *dy, const float *x, int N, int Cc, int Hh, int W) {
    BEGIN(OP_POOL_B); H(dx); H(dy); H(x); H(N); H(Cc); H(Hh); H(W); END(OP_POOL_B);
    return C->maxpool2x2_backward(dx, dy, x, N, Cc, Hh, W);
}
static size_t w_gn_ws(const dd_gn_shape *s) { BEGIN(OP_GN_WS); H(*s); END(OP_GN_WS); return C->group_norm_workspace(s); }
static size_t w_att_ws(const dd_attn_shape *s) { BEGIN(OP_ATT_WS); H(*s); END(OP_ATT_WS); return C->attention_workspace(s); }
static int att_probs_unread = -1; /* the last attention forward's dd_attn_shape.probs_unread */
static int w_att_f(float *y, float *p, const float *qkv, const dd_attn_shape *s) {
    BEGIN(OP_ATT_F); H(y); H(p); H(qkv); H(*s); END(OP_ATT_F);
    att_probs_unread = s->probs_unread;
    return C->attention_forward(y, p, qkv, s);
}
static int w_att_b(float *dq, const float *dy, const float *qkv, const float *p, const dd_attn_shape *s, void *ws) {
    BEGIN(OP_ATT_B); H(dq); H(dy); H(qkv); H(p); H(*s); H(ws); END(OP_ATT_B);
    return C->attention_backward(dq, dy, qkv, p, s, ws);
}
static int w_emb_f(float *y, const float *t, const int32_t *i, int N, int r, int d, int b) { BEGIN(OP_EMB_F); H(y); H(t); H(i); H(N); H(r); H(d); H(b); END(OP_EMB_F); return C->embedding_forward(y, t, i, N, r, d, b); }
static int w_emb_b(float *dt, const float *dy, const int32_t *i, int N, int r, int d, int b) { BEGIN(OP_EMB_B); H(dt); H(dy); H(i); H(N); H(r); H(d); H(b); END(OP_EMB_B); return C->embedding_backward(dt, dy, i, N, r, d, b); }
static int w_mse_f(float *l, const float *p, const float *t, size_t n) { BEGIN(OP_MSE_F); H(l); H(p); H(t); H(n); END(OP_MSE_F); return C->mse_forward(l, p, t, n); }
static int w_mse_b(float *dp, const float *dl, const float *p, const float *t, size_t n) { BEGIN(OP_MSE_B); H(dp); H(dl); H(p); H(t); H(n); END(OP_MSE_B); return C->mse_backward(dp, dl, p, t, n); }
static int w_xent_f(float *l, float *p, const float *lg, const int32_t *lb, int N, int K) { BEGIN(OP_XENT_F); H(l); H(p); H(lg); H(lb); H(N); H(K); END(OP_XENT_F); return C->xent_forward(l, p, lg, lb, N, K); }
static int w_xent_b(float *dl, const float *d, const float *p, const int32_t *lb, int N, int K) { BEGIN(OP_XENT_B); H(dl); H(d); H(p); H(lb); H(N); H(K); END(OP_XENT_B); return C->xent_backward(dl, d, p, lb, N, K); }
static int w_adam(float *p, float *m, float *v, const float *g, size_t n, float lr, double b1, double b2, double eps,
                  const int64_t *step, const float *guard) {
    BEGIN(OP_ADAM); H(p); H(m); H(v); H(g); H(n); H(lr); H(b1); H(b2); H(eps); H(step); H(guard); END(OP_ADAM);
    return C->adam_update(p, m, v, g, n, lr, b1, b2, eps, step, guard);
}
static int w_ema(float *e, const float *p, size_t n, float d, const int64_t *step, const float *guard) {
    BEGIN(OP_EMA); H(e); H(p); H(n); H(d); H(step); H(guard); END(OP_EMA);
    return C->ema_update(e, p, n, d, step, guard);
}
static int w_counter(int64_t *c, int64_t d, const float *guard) { BEGIN(OP_COUNTER); H(c); H(d); H(guard); END(OP_COUNTER); return C->counter_add(c, d, guard); }
static int w_advance(int64_t *k, int64_t *noff, int64_t dn, int32_t *t, const int32_t *tt, int n) {
    BEGIN(OP_ADVANCE); H(k); H(noff); H(dn); H(t); H(tt); H(n); END(OP_ADVANCE);
    return C->sampler_advance(k, noff, dn, t, tt, n);
}
static int w_normal(float *o, size_t n, dd_rng_at at) { BEGIN(OP_NORMAL); H(o); H(n); H(at); END(OP_NORMAL); return C->normal(o, n, at); }
static int w_train_draw(int32_t *t, int32_t *lo, const int32_t *li, int N, int T, float p, int32_t g, dd_rng_at at) {
    BEGIN(OP_TRAIN_DRAW); H(t); H(lo); H(li); H(N); H(T); H(p); H(g); H(at); END(OP_TRAIN_DRAW);
    return C->train_draw(t, lo, li, N, T, p, g, at);
}
static int w_q_sample(float *xt, const float *x0, const float *z, const float *ca, const float *cb, const int32_t *idx, int N, size_t per) {
    BEGIN(OP_Q_SAMPLE); H(xt); H(x0); H(z); H(ca); H(cb); H(idx); H(N); H(per); END(OP_Q_SAMPLE);
    return C->q_sample(xt, x0, z, ca, cb, idx, N, per);
}
static int w_sampler(float *x, float *x0, const float *out, const float *un, size_t n, float g, int clip, const float *tab,
                     const int64_t *k, dd_rng_at at) {
    BEGIN(OP_SAMPLER); H(x); H(x0); H(out); H(un); H(n); H(g); H(clip); H(tab); H(k); H(at); END(OP_SAMPLER);
    return C->sampler_step(x, x0, out, un, n, g, clip, tab, k, at);
}

static const dd_backend logbe = {
    .name = "logging-cpu",
    .alloc = w_alloc, .free = w_free, .zero = w_zero, .to_device = w_to_device,
    .to_host = w_to_host, .copy = w_copy, .synchronize = w_sync,
    .conv2d_workspace = w_conv_ws, .conv2d_forward = w_conv_f, .conv2d_backward = w_conv_b,
    .dense_forward = w_dense_f, .dense_backward = w_dense_b, .dense_group_forward = w_dense_group_f,
    .dense_group_backward = w_dense_group_b,
    .group_norm_forward = w_gn_f, .group_norm_workspace = w_gn_ws, .group_norm_backward = w_gn_b,
    .act_forward = w_act_f, .act_backward = w_act_b, .add_forward = w_add_f,
    .add_backward = w_add_b, .concat_forward = w_cat_f, .concat_backward = w_cat_b,
    .upsample2x_forward = w_up_f, .upsample2x_backward = w_up_b,
    .maxpool2x2_forward = w_pool_f, .maxpool2x2_backward = w_pool_b,
    .attention_workspace = w_att_ws, .attention_forward = w_att_f,
    .attention_backward = w_att_b, .embedding_forward = w_emb_f,
    .embedding_backward = w_emb_b, .mse_forward = w_mse_f, .mse_backward = w_mse_b,
    .xent_forward = w_xent_f, .xent_backward = w_xent_b, .adam_update = w_adam,
    .ema_update = w_ema, .counter_add = w_counter, .sampler_advance = w_advance,
    .normal = w_normal, .train_draw = w_train_draw, .q_sample = w_q_sample,
    .sampler_step = w_sampler,
};

/* ---------------------------------------------------------------- checks on a step's log */

typedef struct {
    int n;
    int op[MAX_LOG];
    uint64_t h[MAX_LOG];
} steplog;

static void take(steplog *s) {
    CHECKF(L.n <= MAX_LOG, "log overflow (%d calls)", L.n);
    s->n = L.n < MAX_LOG ? L.n : MAX_LOG;
    memcpy(s->op, L.op, (size_t)s->n * sizeof(int));
    memcpy(s->h, L.h, (size_t)s->n * sizeof(uint64_t));
    L.n = 0;
}

static int count(const steplog *s, int op) {
    int c = 0;
    for (int i = 0; i < s->n; i++) c += s->op[i] == op;
    return c;
}

static int count_log(int op) { /* in the log being written */
    int c = 0;
    for (int i = 0; i < L.n && i < MAX_LOG; i++) c += L.op[i] == op;
    return c;
}

/* A replayable step: only device work, no transfer, allocation or synchronisation. */
static void expect_device_only(const char *what, const steplog *s) {
    static const int host_ops[] = {OP_ALLOC, OP_FREE, OP_TO_DEVICE, OP_TO_HOST, OP_SYNC};
    for (size_t i = 0; i < sizeof host_ops / sizeof host_ops[0]; i++)
        CHECKF(count(s, host_ops[i]) == 0, "%s: %d calls of host op %d inside the step", what,
               count(s, host_ops[i]), host_ops[i]);
}

static void expect_same(const char *what, const steplog *a, const steplog *b) {
    int first = -1;
    for (int i = 0; i < a->n && i < b->n && first < 0; i++)
        if (a->op[i] != b->op[i] || a->h[i] != b->h[i]) first = i;
    CHECKF(a->n == b->n && first < 0,
           "%s: the step's calls differ from the previous step's (%d and %d calls, first "
           "difference at call %d, op %d)",
           what, a->n, b->n, first, first >= 0 ? a->op[first] : -1);
}

static dd_model_config small_cond_unet(void) {
    dd_model_config c;
    dd_model_config_default(&c, DD_MODEL_UNET_COND);
    c.height = c.width = 8;
    c.model_channels = 8;
    c.n_mult = 2;
    c.mult[0] = 1;
    c.mult[1] = 2;
    c.groups = 4;
    c.heads = 2;
    c.classes = 3;
    c.timesteps = 10;
    return c;
}

/* ---------------------------------------------------------------- the training step */

static void test_training_step(void) {
    dd_model_config cfg = small_cond_unet();
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, cfg.timesteps, 0, 0));
    const int B = 4;
    const size_t per = (size_t)cfg.height * cfg.width;
    dd_runner r;
    CHECK_OK(dd_runner_init(&r, &cfg, &logbe, 1));
    dd_train_batch tb;
    CHECK_OK(dd_train_batch_init(&tb, &logbe, &s, DD_OBJECTIVE_V, B, per));
    float *x0;
    int32_t *lab;
    CHECK_OK(logbe.alloc((void **)&x0, B * per * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&lab, B * sizeof(int32_t)));
    tu_fill_uniform(x0, B * per, -1, 1, 3);
    for (int i = 0; i < B; i++) lab[i] = i % 3;
    dd_run_info ri;
    dd_run_info_default(&ri, DD_MODEL_UNET_COND);
    ri.model = cfg;
    ri.prob_uncond = 0.5f;
    dd_replay rp;
    memset(&rp, 0, sizeof rp);

    steplog *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    CHECK_OK(dd_train_step(&rp, &r, &tb, x0, lab, &ri)); /* builds and plans the graph */
    L.on = 1;
    L.n = 0;
    CHECK_OK(dd_train_step(&rp, &r, &tb, x0, lab, &ri));
    take(a);
    for (int k = 0; k < 3; k++) {
        CHECK_OK(dd_train_step(&rp, &r, &tb, x0, lab, &ri));
        take(b);
        expect_same("training step", a, b);
    }
    L.on = 0;
    printf("  training step: %d backend calls\n", a->n);
    expect_device_only("training step", a);
    CHECKF(count(a, OP_TRAIN_DRAW) == 1 && count(a, OP_NORMAL) == 1 && count(a, OP_ADAM) == 1 &&
               count(a, OP_EMA) == 1 && count(a, OP_COUNTER) == 1 && count(a, OP_CONV_B) > 5,
           "training step: draws %d, noise %d, Adam %d, EMA %d, counter %d, conv backward %d",
           count(a, OP_TRAIN_DRAW), count(a, OP_NORMAL), count(a, OP_ADAM), count(a, OP_EMA),
           count(a, OP_COUNTER), count(a, OP_CONV_B));
    /* the blocks' projections of the time embedding: one grouped call each way, the time MLP's
     * two layers (and the class embedding's none) on their own */
    CHECKF(count(a, OP_DENSE_GROUP_F) == 1 && count(a, OP_DENSE_GROUP_B) == 1 &&
               count(a, OP_DENSE_F) == 2 && count(a, OP_DENSE_B) == 2,
           "training step: grouped dense %d forward, %d backward; single %d forward, %d backward",
           count(a, OP_DENSE_GROUP_F), count(a, OP_DENSE_GROUP_B), count(a, OP_DENSE_F),
           count(a, OP_DENSE_B));
    /* a backward follows: the attention must write its probabilities */
    CHECKF(att_probs_unread == 0, "training step: attention told its probabilities go unread");
    /* the batch reaches the graph in place: x, the target and the labels are bound, not copied;
     * the one copy is backward's seed, d(loss) = 1 */
    CHECKF(count(a, OP_COPY) == 1, "training step: %d copies (want 1: the inputs are bound)",
           count(a, OP_COPY));
    /* and the steps did train: the counter moved 5 times */
    CHECK_OK(dd_params_read_step(r.params));
    CHECKF(r.params->adam_step == 5, "step counter %lld after 5 steps", (long long)r.params->adam_step);
    free(a), free(b);
    dd_replay_reset(&rp);
    logbe.free(x0), logbe.free(lab);
    dd_train_batch_free(&tb);
    dd_runner_free(&r);
    dd_schedule_free(&s);
}

/* The classifier's step (LeNet5, cross-entropy, Adam without EMA) through the runner. */
static void test_classifier_step(void) {
    dd_model_config cfg;
    dd_model_config_default(&cfg, DD_MODEL_LENET);
    const int B = 4;
    dd_runner r;
    CHECK_OK(dd_runner_init(&r, &cfg, &logbe, 1));
    float *x;
    int32_t *y;
    CHECK_OK(logbe.alloc((void **)&x, (size_t)B * 28 * 28 * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&y, B * sizeof(int32_t)));
    tu_fill_uniform(x, (size_t)B * 28 * 28, 0, 1, 4);
    for (int i = 0; i < B; i++) y[i] = i;
    steplog *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    CHECK_OK(dd_runner_train_step(&r, B, x, NULL, NULL, y, 1e-3f, 0.0f));
    L.on = 1;
    L.n = 0;
    CHECK_OK(dd_runner_train_step(&r, B, x, NULL, NULL, y, 1e-3f, 0.0f));
    take(a);
    CHECK_OK(dd_runner_train_step(&r, B, x, NULL, NULL, y, 1e-3f, 0.0f));
    take(b);
    L.on = 0;
    expect_same("classifier step", a, b);
    expect_device_only("classifier step", a);
    CHECKF(count(a, OP_COPY) == 1, "classifier step: %d copies (want 1, the seed of backward)",
           count(a, OP_COPY));
    CHECKF(count(a, OP_XENT_B) == 1 && count(a, OP_ADAM) == 1 && count(a, OP_EMA) == 0 &&
               count(a, OP_COUNTER) == 1,
           "classifier step: xent backward %d, Adam %d, EMA %d, counter %d", count(a, OP_XENT_B),
           count(a, OP_ADAM), count(a, OP_EMA), count(a, OP_COUNTER));
    printf("  classifier step: %d backend calls\n", a->n);
    free(a), free(b);
    logbe.free(x), logbe.free(y);
    dd_runner_free(&r);
}

/* ---------------------------------------------------------------- the sampling step */

static steplog *slog[64];
static int nsteps_seen;

static int on_step(void *ctx, int step, int nsteps, int t, const float *x, const float *x0, int B,
                   size_t per) {
    (void)ctx, (void)nsteps, (void)t, (void)x, (void)x0, (void)B, (void)per;
    if (step < 64) take(slog[step]);
    nsteps_seen = step + 1;
    return 0;
}

static void sampling_case(const char *what, int ddim, float guidance, int use_cache) {
    dd_model_config cfg = small_cond_unet();
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, cfg.timesteps, 0, 0));
    dd_runner r;
    CHECK_OK(dd_runner_init(&r, &cfg, &logbe, 2));
    dd_denoiser m = {.fn = dd_runner_denoise, .ctx = &r, .version = dd_runner_version, .objective = DD_OBJECTIVE_X0,
                     .num_classes = cfg.classes, .generic_label = cfg.classes};
    dd_sample_cache *cache = use_cache ? dd_sample_cache_new() : NULL;
    steplog *first_run = malloc(sizeof *first_run);
    for (int run = 0; run < (use_cache ? 2 : 1); run++) {
        dd_sample_opts o = dd_sample_opts_default(3, (size_t)cfg.height * cfg.width);
        o.label = 1;
        o.guidance = guidance;
        o.rng.seed = 9;
        o.rng.offset = (uint64_t)run * 1000; /* a later batch continues the stream */
        o.on_step = on_step;
        o.cache = cache;
        L.on = 1;
        L.n = 0;
        nsteps_seen = 0;
        CHECK_OK(ddim ? dd_sample_ddim(&logbe, &s, &m, &o, 5, 1.0f, NULL)
                      : dd_sample_ddpm(&logbe, &s, &m, &o, NULL));
        L.on = 0;
        const int n = nsteps_seen;
        CHECKF(n == (ddim ? 5 : cfg.timesteps), "%s: %d steps", what, n);
        /* step 0 of a run also holds the run's setup (and, fresh, the model's graph being
         * built); every later step must be the same calls, and with a cache the second run's
         * steps must be the first run's (its recorded step is replayed there) */
        for (int k = 1; k + 1 < n; k++) expect_same(what, slog[k], slog[k + 1]);
        if (run == 0) {
            *first_run = *slog[1];
        } else {
            expect_same(what, first_run, slog[1]);
            steplog *tail = malloc(sizeof *tail); /* step 0 ends with the step's calls */
            tail->n = slog[1]->n;
            const int skip = slog[0]->n - tail->n;
            CHECKF(skip >= 0, "%s: step 0 shorter than step 1", what);
            if (skip >= 0) {
                memcpy(tail->op, slog[0]->op + skip, (size_t)tail->n * sizeof(int));
                memcpy(tail->h, slog[0]->h + skip, (size_t)tail->n * sizeof(uint64_t));
                expect_same(what, slog[1], tail);
            }
            free(tail);
        }
        expect_device_only(what, slog[n - 1]);
        CHECKF(count(slog[n - 1], OP_SAMPLER) == 1 && count(slog[n - 1], OP_CONV_F) > 5 &&
                   count(slog[n - 1], OP_NORMAL) == 0,
               "%s: a step has %d sampler updates, %d convolutions, %d noise draws", what,
               count(slog[n - 1], OP_SAMPLER), count(slog[n - 1], OP_CONV_F),
               count(slog[n - 1], OP_NORMAL));
        /* the step's counters and its t: one call, and the model reads that t as it is */
        CHECKF(count(slog[n - 1], OP_ADVANCE) == 1 && count(slog[n - 1], OP_COUNTER) == 0,
               "%s: a step has %d sampler_advance and %d counter_add calls (want 1 and 0)", what,
               count(slog[n - 1], OP_ADVANCE), count(slog[n - 1], OP_COUNTER));
        /* the blocks' projections of the time embedding: one grouped call, the time MLP's two
         * layers on their own */
        CHECKF(count(slog[n - 1], OP_DENSE_GROUP_F) == 1 && count(slog[n - 1], OP_DENSE_F) == 2,
               "%s: a step has %d grouped dense calls and %d single ones (want 1 and 2)", what,
               count(slog[n - 1], OP_DENSE_GROUP_F), count(slog[n - 1], OP_DENSE_F));
        /* no backward: the attention may leave its probabilities unwritten */
        CHECKF(att_probs_unread == 1, "%s: the attention was not told its probabilities go unread", what);
        /* the model reads the chain and writes its output in place (bound graph tensors): the
         * only copy is guidance's second half of the model's input */
        const int copies = count(slog[n - 1], OP_COPY);
        CHECKF(copies == (guidance != 1.0f), "%s: a step has %d copies (want %d)", what, copies,
               guidance != 1.0f);
        if (run == 0) printf("  %s: %d backend calls a step\n", what, slog[n - 1]->n);
    }
    free(first_run);
    dd_sample_cache_free(cache);
    dd_runner_free(&r);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- bound inputs and outputs */

/* dd_runner_denoise binds the caller's buffers to the graph's input and output (no copy) when
 * they are aligned like the arena, copies them when not, and copies the output when it shares
 * memory with the input; every way gives the same bits, and the graph's tensors are its own again
 * after the call (so dd_graph_set_input never writes the caller's memory). */
static void test_bound_buffers(void) {
    dd_model_config cfg = small_cond_unet();
    const int B = 3;
    const size_t n = (size_t)B * cfg.height * cfg.width;
    dd_runner r;
    CHECK_OK(dd_runner_init(&r, &cfg, &logbe, 5));
    float *x, *out, *xu, *outu, *io;
    int32_t *t, *lab;
    CHECK_OK(logbe.alloc((void **)&x, n * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&out, n * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&xu, (n + 1) * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&outu, (n + 1) * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&io, n * sizeof(float)));
    CHECK_OK(logbe.alloc((void **)&t, B * sizeof(int32_t)));
    CHECK_OK(logbe.alloc((void **)&lab, B * sizeof(int32_t)));
    tu_fill_uniform(x, n, -1, 1, 11);
    for (int i = 0; i < B; i++) t[i] = 1 + 3 * i, lab[i] = i % 3;
    float *keep = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
    memcpy(keep, x, n * sizeof(float));

    CHECK_OK(dd_runner_denoise(&r, out, x, t, lab, B)); /* builds and plans the graph */
    memcpy(want, out, n * sizeof(float));
    L.on = 1;
    L.n = 0;
    CHECK_OK(dd_runner_denoise(&r, out, x, t, lab, B));
    CHECKF(count_log(OP_COPY) == 0, "aligned buffers: %d copies (want 0)", count_log(OP_COPY));
    CHECKF(!memcmp(out, want, n * sizeof(float)), "aligned buffers: another output");

    /* one float past an aligned address: copied in and out */
    memcpy(xu + 1, x, n * sizeof(float));
    L.n = 0;
    CHECK_OK(dd_runner_denoise(&r, outu + 1, xu + 1, t, lab, B));
    CHECKF(count_log(OP_COPY) == 2, "unaligned buffers: %d copies (want 2)", count_log(OP_COPY));
    CHECKF(!memcmp(outu + 1, want, n * sizeof(float)), "unaligned buffers: another output");

    /* in place: the input bound, the output written to the arena and copied over it */
    memcpy(io, x, n * sizeof(float));
    L.n = 0;
    CHECK_OK(dd_runner_denoise(&r, io, io, t, lab, B));
    CHECKF(count_log(OP_COPY) == 1, "in place: %d copies (want 1)", count_log(OP_COPY));
    CHECKF(!memcmp(io, want, n * sizeof(float)), "in place: another output");
    L.on = 0;

    /* the graph's own slots again: a host write to its input leaves the caller's x alone */
    dd_runner_graph *rg;
    CHECK_OK(dd_runner_eval_graph(&r, B, &rg));
    CHECKF(rg->g->t[rg->x].data != x && rg->g->t[rg->out].data != out &&
               rg->g->t[rg->t].data != (void *)t && rg->g->t[rg->labels].data != (void *)lab,
           "the graph's input, output, timesteps or labels still point at the caller's buffers "
           "after the call");
    float *zeros = calloc(n, sizeof(float));
    CHECK_OK(dd_graph_set_input(rg->g, rg->x, zeros, n * sizeof(float)));
    CHECKF(!memcmp(x, keep, n * sizeof(float)), "dd_graph_set_input wrote the caller's buffer");
    /* and a misaligned pointer is refused without a message, a parameter with one */
    CHECKF(dd_graph_bind(rg->g, rg->x, xu + 1) == 1, "binding an unaligned buffer did not say 1");
    CHECKF(rg->g->t[rg->x].data != xu + 1, "an unaligned buffer was bound");
    int param = -1;
    for (int i = 0; i < rg->g->nt && param < 0; i++)
        if (rg->g->t[i].param >= 0) param = i;
    CHECKF(param >= 0 && dd_graph_bind(rg->g, param, x) == -1, "binding a parameter was not refused");
    dd_error_clear();
    free(zeros), free(keep), free(want);
    void *bufs[] = {x, out, xu, outu, io, t, lab};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) logbe.free(bufs[i]);
    dd_runner_free(&r);
}

int main(void) {
    for (int i = 0; i < 64; i++) slog[i] = malloc(sizeof(steplog));
    test_training_step();
    test_classifier_step();
    test_bound_buffers();
    sampling_case("DDIM, guided", 1, 2.0f, 0);
    sampling_case("DDPM, plain conditional", 0, 1.0f, 0);
    sampling_case("DDIM, guided, two batches through a cache", 1, 3.0f, 1);
    for (int i = 0; i < 64; i++) free(slog[i]);
    return tu_finish();
}
