/* Finite-difference gradient check of every backward op of the CPU backend.
 *
 * For each case (one op on one shape) the scalar L = sum_i y[i] r[i] with a fixed random r is
 * differentiated two ways:
 *   analytic: backward with dy = r, gradients starting from zero;
 *   numeric:  for every element of every differentiable input (activations and weights alike),
 *             (L(v + e) - L(v - e)) / ((v + e) - (v - e)), with L summed in double from the
 *             float outputs and the step measured after rounding v +- e to float.
 * Tolerance, per element: |fd - an| <= 2e-3 * scale + 1e-2 * |an|, scale = the largest |an| of
 * that tensor. Why that is safe both ways: a perturbation changes only the outputs it touches;
 * each carries float rounding of ~6e-8 relative, so the numeric derivative carries an absolute
 * error of about 6e-8 * sum|y r| / (2 e), i.e. 1e-5..1e-4 of scale for these small shapes at
 * e = 1e-2 (1e-3 for the curved ops, whose O(e^2) truncation error is then ~1e-6). The test
 * prints the worst error / scale it saw per tensor: most sit at 1e-6..1e-4, the largest at
 * ~3.5e-4 (group_norm with 3 values per group, the most curved case), all well below 2e-3, while
 * a wrong index, a missing term or a missed border gives errors of order scale (removing the
 * xhat * mean(g xhat) term of group_norm's dx, or dropping the last column in conv's col2im,
 * makes every affected case fail with errors of 5..100% of scale).
 * Ops that are linear in the checked input (conv, dense, add, concat, upsample, embedding, and
 * maxpool away from ties) have no truncation error at all.
 *
 * Each case also checks that
 *   - forward writes every output (outputs are poisoned with NaN first) and nothing past them,
 *     and backward writes nothing past a gradient (guard values after every buffer);
 *   - backward ADDS: called twice on zeroed gradients it gives twice the gradient;
 *   - a NULL gradient is skipped: with only one gradient requested at a time, each equals the
 *     full call's, and a call with every gradient NULL runs.
 * A failure names the op, the shape, the tensor and the element. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/error.h"
#include "testutil.h"

static const dd_backend *B = &dd_cpu_backend;

#define MAXT 5
#define GUARD 16
#define GUARD_VAL 12345.0f
#define TOL_ABS 2e-3
#define TOL_REL 1e-2

typedef struct {
    const char *name;
    float *v; /* n values, then GUARD sentinels */
    size_t n;
    int grad; /* 1: backward produces its gradient and the numeric check covers it */
} tensor;

typedef struct gc_case gc_case;
struct gc_case {
    char label[200];
    int nt;
    tensor t[MAXT];
    float *y; /* ny outputs, then GUARD sentinels */
    size_t ny;
    float eps;
    void (*fwd)(gc_case *c);
    void (*bwd)(gc_case *c, float **g, const float *dy);
    /* op parameters and saved state */
    dd_conv_shape conv;
    dd_gn_shape gn;
    dd_attn_shape attn;
    int N, C1, C2, H, W; /* dense: N, Cin=C1, Cout=C2; concat: N, Ca, Cb, HW=H; pools: N,C1,H,W */
    dd_act act;
    int32_t *idx;
    float *s1, *s2; /* saved by forward: mean/rstd, probs */
    void *ws;       /* workspace of the size the backend asks for, then GUARD sentinels */
    size_t ws_floats;
};

static uint64_t seed_counter = 1;
static double worst_seen = 0; /* largest error / scale over every passing tensor */

static float *guarded(size_t n) {
    float *p = malloc((n + GUARD) * sizeof(float));
    for (size_t i = 0; i < GUARD; i++) p[n + i] = GUARD_VAL;
    return p;
}

static int guard_ok(const float *p, size_t n) {
    for (size_t i = 0; i < GUARD; i++)
        if (p[n + i] != GUARD_VAL) return 0;
    return 1;
}

static gc_case *new_case(size_t ny, float eps, const char *fmt, ...) {
    gc_case *c = calloc(1, sizeof *c);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->label, sizeof c->label, fmt, ap);
    va_end(ap);
    c->ny = ny;
    c->y = guarded(ny);
    c->eps = eps;
    return c;
}

static float *add_tensor(gc_case *c, const char *name, size_t n, float lo, float hi, int grad) {
    tensor *t = &c->t[c->nt++];
    t->name = name;
    t->n = n;
    t->grad = grad;
    t->v = guarded(n);
    tu_fill_uniform(t->v, n, lo, hi, seed_counter++);
    return t->v;
}

static void free_case(gc_case *c) {
    for (int i = 0; i < c->nt; i++) free(c->t[i].v);
    free(c->y);
    free(c->idx);
    free(c->s1);
    free(c->s2);
    free(c->ws);
    free(c);
}

static double loss_of(gc_case *c, const float *r) {
    c->fwd(c);
    double L = 0;
    for (size_t i = 0; i < c->ny; i++) L += (double)c->y[i] * (double)r[i];
    return L;
}

/* Run all the checks of one case; frees it. */
static void run_case(gc_case *c) {
    float *r = malloc(c->ny * sizeof(float));
    tu_fill_uniform(r, c->ny, -1.0f, 1.0f, seed_counter++);
    float *an[MAXT] = {0}, *g[MAXT] = {0};
    for (int i = 0; i < c->nt; i++)
        if (c->t[i].grad) {
            an[i] = guarded(c->t[i].n);
            memset(an[i], 0, c->t[i].n * sizeof(float));
            g[i] = guarded(c->t[i].n);
        }

    /* forward: every output written, nothing past them */
    for (size_t i = 0; i < c->ny; i++) c->y[i] = NAN;
    c->fwd(c);
    size_t nonfinite = 0;
    for (size_t i = 0; i < c->ny; i++) nonfinite += !isfinite(c->y[i]);
    CHECKF(nonfinite == 0, "%s: forward left %zu of %zu outputs unwritten or not finite", c->label,
           nonfinite, c->ny);
    CHECKF(guard_ok(c->y, c->ny), "%s: forward wrote past its output", c->label);

    /* analytic gradients */
    c->bwd(c, an, r);
    for (int i = 0; i < c->nt; i++)
        if (an[i])
            CHECKF(guard_ok(an[i], c->t[i].n), "%s: backward wrote past d%s", c->label,
                   c->t[i].name);

    /* numeric gradients, element by element */
    char report[400] = "";
    for (int i = 0; i < c->nt; i++) {
        if (!c->t[i].grad) continue;
        tensor *t = &c->t[i];
        double scale = 0;
        for (size_t j = 0; j < t->n; j++) scale = fmax(scale, fabs(an[i][j]));
        if (scale == 0) scale = 1e-30;
        double worst = 0;
        size_t bad = 0, first_bad = 0;
        double first_fd = 0;
        for (size_t j = 0; j < t->n; j++) {
            const float v0 = t->v[j];
            const float vp = v0 + c->eps, vm = v0 - c->eps;
            t->v[j] = vp;
            double Lp = loss_of(c, r);
            t->v[j] = vm;
            double Lm = loss_of(c, r);
            t->v[j] = v0;
            double fd = (Lp - Lm) / ((double)vp - (double)vm);
            double err = fabs(fd - an[i][j]);
            worst = fmax(worst, err / scale);
            if (err > TOL_ABS * scale + TOL_REL * fabs(an[i][j])) {
                if (!bad) first_bad = j, first_fd = fd;
                bad++;
            }
        }
        if (bad) {
            tu_fail(__FILE__, __LINE__,
                    "%s: d%s wrong at %zu of %zu elements; first at [%zu]: analytic %.7g, "
                    "numeric %.7g (scale %.3g)",
                    c->label, t->name, bad, t->n, first_bad, an[i][first_bad], first_fd, scale);
        } else {
            worst_seen = fmax(worst_seen, worst);
        }
        tu_checks++;
        size_t len = strlen(report);
        snprintf(report + len, sizeof report - len, " d%s %.1e", t->name, worst);
    }
    printf("%-64s worst err/scale:%s\n", c->label, report);

    /* the saved state (mean, rstd, probs) must be the unperturbed forward's again */
    c->fwd(c);

    /* backward adds: twice from zero gives twice */
    for (int i = 0; i < c->nt; i++)
        if (g[i]) memset(g[i], 0, c->t[i].n * sizeof(float));
    c->bwd(c, g, r);
    c->bwd(c, g, r);
    for (int i = 0; i < c->nt; i++) {
        if (!g[i]) continue;
        float *twice = malloc(c->t[i].n * sizeof(float));
        for (size_t j = 0; j < c->t[i].n; j++) twice[j] = 2.0f * an[i][j];
        double e = tu_rel_err(g[i], twice, c->t[i].n);
        CHECKF(e < 1e-5, "%s: backward twice does not double d%s (rel err %.3g): it must add",
               c->label, c->t[i].name, e);
        free(twice);
    }

    /* NULL gradients are skipped: one gradient at a time, then none */
    for (int i = 0; i < c->nt; i++) {
        if (!g[i]) continue;
        float *only[MAXT] = {0};
        only[i] = g[i];
        memset(g[i], 0, c->t[i].n * sizeof(float));
        c->bwd(c, only, r);
        double e = tu_rel_err(g[i], an[i], c->t[i].n);
        CHECKF(e < 1e-6, "%s: d%s alone (other gradients NULL) differs from the full call (%.3g)",
               c->label, c->t[i].name, e);
        CHECKF(guard_ok(g[i], c->t[i].n), "%s: backward wrote past d%s", c->label, c->t[i].name);
    }
    float *none[MAXT] = {0};
    c->bwd(c, none, r);
    tu_checks++;

    if (c->ws)
        CHECKF(guard_ok(c->ws, c->ws_floats), "%s: the op wrote past its workspace", c->label);

    for (int i = 0; i < c->nt; i++) {
        free(an[i]);
        free(g[i]);
    }
    free(r);
    free_case(c);
}

/* ---------------------------------------------------------------- conv2d */

static void conv_fwd(gc_case *c) {
    CHECK_OK(B->conv2d_forward(c->y, c->t[0].v, c->t[1].v, c->nt > 2 ? c->t[2].v : NULL, &c->conv,
                               c->ws));
}
static void conv_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->conv2d_backward(g[0], g[1], c->nt > 2 ? g[2] : NULL, dy, c->t[0].v, c->t[1].v,
                                &c->conv, c->ws));
}

static void conv_case(int N, int Cin, int H, int W, int Cout, int K, int stride, int pad,
                      int bias) {
    dd_conv_shape s = {N, Cin, H, W, Cout, K, stride, pad, 0, 0};
    s.Ho = (H + 2 * pad - K) / stride + 1;
    s.Wo = (W + 2 * pad - K) / stride + 1;
    const char *pol = getenv("DIFFUSION_CPU_CONV");
    gc_case *c = new_case((size_t)N * Cout * s.Ho * s.Wo, 1e-2f,
                          "conv2d N=%d Cin=%d %dx%d Cout=%d K=%d stride=%d pad=%d%s%s%s", N, Cin, H,
                          W, Cout, K, stride, pad, bias ? "" : " no-bias", pol ? " via " : "",
                          pol ? pol : "");
    c->conv = s;
    add_tensor(c, "x", (size_t)N * Cin * H * W, -1, 1, 1);
    add_tensor(c, "w", (size_t)Cout * Cin * K * K, -1, 1, 1);
    if (bias) add_tensor(c, "b", (size_t)Cout, -1, 1, 1);
    c->ws_floats = (B->conv2d_workspace(&s) + sizeof(float) - 1) / sizeof(float);
    c->ws = guarded(c->ws_floats);
    c->fwd = conv_fwd;
    c->bwd = conv_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- dense */

static void dense_fwd(gc_case *c) {
    CHECK_OK(B->dense_forward(c->y, c->t[0].v, c->t[1].v, c->nt > 2 ? c->t[2].v : NULL, c->N,
                              c->C1, c->C2));
}
static void dense_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->dense_backward(g[0], g[1], c->nt > 2 ? g[2] : NULL, dy, c->t[0].v, c->t[1].v,
                               c->N, c->C1, c->C2));
}

static void dense_case(int N, int Cin, int Cout, int bias) {
    gc_case *c = new_case((size_t)N * Cout, 1e-2f, "dense N=%d Cin=%d Cout=%d%s", N, Cin, Cout,
                          bias ? "" : " no-bias");
    c->N = N, c->C1 = Cin, c->C2 = Cout;
    add_tensor(c, "x", (size_t)N * Cin, -1, 1, 1);
    add_tensor(c, "w", (size_t)Cout * Cin, -1, 1, 1);
    if (bias) add_tensor(c, "b", (size_t)Cout, -1, 1, 1);
    c->fwd = dense_fwd;
    c->bwd = dense_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- group_norm */

/* tensors x, gamma, beta, then add (at index C1, or C1 = -1) and res (at C2, or -1) */
#define GN_OPT(c, k) ((c)->k >= 0 ? (c)->t[(c)->k].v : NULL)
static void gn_fwd(gc_case *c) {
    CHECK_OK(B->group_norm_forward(c->y, c->s1, c->s2, c->t[0].v, c->t[1].v, c->t[2].v,
                                   GN_OPT(c, C1), GN_OPT(c, C2), &c->gn));
}
static void gn_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->group_norm_backward(g[0], g[1], g[2], c->C1 >= 0 ? g[c->C1] : NULL,
                                    c->C2 >= 0 ? g[c->C2] : NULL, dy, c->t[0].v, c->s1, c->s2,
                                    c->t[1].v, c->t[2].v, GN_OPT(c, C1), &c->gn, NULL));
}

static void gn_case_res(int N, int C, int HW, int G, int add, int swish, int res) {
    gc_case *c = new_case((size_t)N * C * HW, 1e-3f, "group_norm N=%d C=%d HW=%d G=%d%s%s%s", N,
                          C, HW, G, add ? " +add" : "", swish ? " +swish" : "",
                          res ? " +res" : "");
    c->gn = (dd_gn_shape){N, C, HW, G, swish, 1e-5f, 0, 0};
    float *x = add_tensor(c, "x", (size_t)N * C * HW, -1.5f, 1.5f, 1);
    /* a different offset per channel, so the group statistics are not all alike */
    for (int n = 0; n < N; n++)
        for (int ch = 0; ch < C; ch++)
            for (int p = 0; p < HW; p++) x[((size_t)n * C + ch) * HW + p] += 0.3f * (ch % 4) - 0.4f;
    add_tensor(c, "gamma", (size_t)C, 0.5f, 1.5f, 1);
    add_tensor(c, "beta", (size_t)C, -0.5f, 0.5f, 1);
    c->C1 = c->C2 = -1;
    if (add) {
        c->C1 = c->nt;
        add_tensor(c, "add", (size_t)N * C, -0.5f, 0.5f, 1);
    }
    if (res) {
        c->C2 = c->nt;
        add_tensor(c, "res", (size_t)N * C * HW, -1.0f, 1.0f, 1);
    }
    c->s1 = malloc((size_t)N * G * sizeof(float));
    c->s2 = malloc((size_t)N * G * sizeof(float));
    c->fwd = gn_fwd;
    c->bwd = gn_bwd;
    run_case(c);
}

static void gn_case(int N, int C, int HW, int G, int add, int swish) {
    gn_case_res(N, C, HW, G, add, swish, 0);
}

/* ---------------------------------------------------------------- activations, add */

static void act_fwd(gc_case *c) { CHECK_OK(B->act_forward(c->y, c->t[0].v, c->ny, c->act)); }
static void act_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->act_backward(g[0], dy, c->t[0].v, c->ny, c->act));
}

static void act_case(dd_act act, const char *name, size_t n) {
    gc_case *c = new_case(n, 1e-3f, "act %s n=%zu", name, n);
    c->act = act;
    float *x = add_tensor(c, "x", n, -4.0f, 4.0f, 1);
    /* relu has a kink at 0: keep every input well away from it */
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) < 0.05f) x[i] += x[i] < 0 ? -0.1f : 0.1f;
    c->fwd = act_fwd;
    c->bwd = act_bwd;
    run_case(c);
}

static void add_fwd(gc_case *c) { CHECK_OK(B->add_forward(c->y, c->t[0].v, c->t[1].v, c->ny)); }
static void add_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->add_backward(g[0], g[1], dy, c->ny));
}

static void add_case(size_t n) {
    gc_case *c = new_case(n, 1e-2f, "add n=%zu", n);
    add_tensor(c, "a", n, -1, 1, 1);
    add_tensor(c, "b", n, -1, 1, 1);
    c->fwd = add_fwd;
    c->bwd = add_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- concat, upsample, maxpool */

static void concat_fwd(gc_case *c) {
    CHECK_OK(B->concat_forward(c->y, c->t[0].v, c->t[1].v, c->N, c->C1, c->C2, c->H));
}
static void concat_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->concat_backward(g[0], g[1], dy, c->N, c->C1, c->C2, c->H));
}

static void concat_case(int N, int Ca, int Cb, int HW) {
    gc_case *c = new_case((size_t)N * (Ca + Cb) * HW, 1e-2f, "concat N=%d Ca=%d Cb=%d HW=%d", N,
                          Ca, Cb, HW);
    c->N = N, c->C1 = Ca, c->C2 = Cb, c->H = HW;
    add_tensor(c, "a", (size_t)N * Ca * HW, -1, 1, 1);
    add_tensor(c, "b", (size_t)N * Cb * HW, -1, 1, 1);
    c->fwd = concat_fwd;
    c->bwd = concat_bwd;
    run_case(c);
}

static void up_fwd(gc_case *c) {
    CHECK_OK(B->upsample2x_forward(c->y, c->t[0].v, c->N, c->C1, c->H, c->W));
}
static void up_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->upsample2x_backward(g[0], dy, c->N, c->C1, c->H, c->W));
}

static void upsample_case(int N, int C, int H, int W) {
    gc_case *c = new_case((size_t)N * C * 4 * H * W, 1e-2f, "upsample2x N=%d C=%d %dx%d", N, C, H,
                          W);
    c->N = N, c->C1 = C, c->H = H, c->W = W;
    add_tensor(c, "x", (size_t)N * C * H * W, -1, 1, 1);
    c->fwd = up_fwd;
    c->bwd = up_bwd;
    run_case(c);
}

static void pool_fwd(gc_case *c) {
    CHECK_OK(B->maxpool2x2_forward(c->y, c->t[0].v, c->N, c->C1, c->H, c->W));
}
static void pool_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->maxpool2x2_backward(g[0], dy, c->t[0].v, c->N, c->C1, c->H, c->W));
}

static void maxpool_case(int N, int C, int H, int W) {
    gc_case *c = new_case((size_t)N * C * (H / 2) * (W / 2), 1e-2f, "maxpool2x2 N=%d C=%d %dx%d",
                          N, C, H, W);
    c->N = N, c->C1 = C, c->H = H, c->W = W;
    size_t n = (size_t)N * C * H * W;
    float *x = add_tensor(c, "x", n, 0, 1, 1);
    /* distinct values at least 0.037 apart (a shuffled ramp): no window has a near-tie that a
     * step of 0.01 could flip */
    for (size_t i = 0; i < n; i++) x[i] = 0.037f * (float)i - 0.5f;
    uint64_t st = 88172645463325252ull;
    for (size_t i = n - 1; i > 0; i--) {
        st ^= st << 13, st ^= st >> 7, st ^= st << 17;
        size_t j = (size_t)(st % (i + 1));
        float tmp = x[i];
        x[i] = x[j], x[j] = tmp;
    }
    c->fwd = pool_fwd;
    c->bwd = pool_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- attention */

static void attn_fwd(gc_case *c) { CHECK_OK(B->attention_forward(c->y, c->s1, c->t[0].v, &c->attn)); }
static void attn_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->attention_backward(g[0], dy, c->t[0].v, c->s1, &c->attn, c->ws));
}

static void attention_case(int N, int C, int heads, int P) {
    gc_case *c = new_case((size_t)N * C * P, 1e-3f, "attention N=%d C=%d heads=%d P=%d", N, C,
                          heads, P);
    c->attn = (dd_attn_shape){N, C, heads, P, 0};
    add_tensor(c, "qkv", (size_t)N * 3 * C * P, -1.5f, 1.5f, 1);
    c->s1 = malloc((size_t)N * heads * P * P * sizeof(float));
    c->ws_floats = (B->attention_workspace(&c->attn) + sizeof(float) - 1) / sizeof(float);
    c->ws = guarded(c->ws_floats);
    c->fwd = attn_fwd;
    c->bwd = attn_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- embedding */

/* the index base in H: values run base..base + rows - 1 */
static void emb_fwd(gc_case *c) {
    CHECK_OK(B->embedding_forward(c->y, c->t[0].v, c->idx, c->N, c->C1, c->C2, c->H));
}
static void emb_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->embedding_backward(g[0], dy, c->idx, c->N, c->C1, c->C2, c->H));
}

static void embedding_case(int N, int rows, int dim, int base) {
    gc_case *c = new_case((size_t)N * dim, 1e-2f, "embedding N=%d rows=%d dim=%d base=%d", N, rows,
                          dim, base);
    c->N = N, c->C1 = rows, c->C2 = dim, c->H = base;
    const float *table = add_tensor(c, "table", (size_t)rows * dim, -1, 1, 1);
    c->idx = malloc((size_t)N * sizeof(int32_t));
    /* repeated rows (their gradients must sum), row 0 and the last row included */
    for (int n = 0; n < N; n++) c->idx[n] = base + (int32_t)((n * 3 + n / 2) % rows);
    c->idx[0] = base + rows - 1;
    /* the rows themselves: value v reads row v - base */
    emb_fwd(c);
    for (int n = 0; n < N; n++)
        CHECKF(!memcmp(c->y + (size_t)n * dim, table + (size_t)(c->idx[n] - base) * dim,
                       (size_t)dim * sizeof(float)),
               "%s: sample %d does not hold row %d", c->label, n, c->idx[n] - base);
    c->fwd = emb_fwd;
    c->bwd = emb_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- losses */

static void mse_fwd(gc_case *c) { CHECK_OK(B->mse_forward(c->y, c->t[0].v, c->t[1].v, c->t[0].n)); }
static void mse_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->mse_backward(g[0], dy, c->t[0].v, c->t[1].v, c->t[0].n));
}

static void mse_case(size_t n) {
    gc_case *c = new_case(1, 1e-3f, "mse n=%zu", n);
    add_tensor(c, "pred", n, -1, 1, 1);
    add_tensor(c, "target", n, -1, 1, 0); /* backward gives no target gradient */
    c->fwd = mse_fwd;
    c->bwd = mse_bwd;
    run_case(c);
}

static void xent_fwd(gc_case *c) {
    CHECK_OK(B->xent_forward(c->y, c->s1, c->t[0].v, c->idx, c->N, c->C1));
}
static void xent_bwd(gc_case *c, float **g, const float *dy) {
    CHECK_OK(B->xent_backward(g[0], dy, c->s1, c->idx, c->N, c->C1));
}

static void xent_case(int N, int K) {
    gc_case *c = new_case(1, 1e-3f, "xent N=%d K=%d", N, K);
    c->N = N, c->C1 = K;
    add_tensor(c, "logits", (size_t)N * K, -2, 2, 1);
    c->idx = malloc((size_t)N * sizeof(int32_t));
    for (int n = 0; n < N; n++) c->idx[n] = (int32_t)((n * 7 + 2) % K);
    c->s1 = malloc((size_t)N * K * sizeof(float));
    c->fwd = xent_fwd;
    c->bwd = xent_bwd;
    run_case(c);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    /* optional filter: only cases whose op name starts with argv[1] (for debugging) */
    const char *only = argc > 1 ? argv[1] : NULL;
#define WANT(op) (!only || strncmp(op, only, strlen(only)) == 0)

    if (WANT("conv2d")) {
        conv_case(2, 3, 5, 5, 4, 3, 1, 1, 1); /* the UNet's 3x3 pad 1, batch-parallel path */
        conv_case(1, 3, 5, 5, 4, 3, 1, 1, 0); /* batch 1 (serial path), no bias */
        conv_case(1, 3, 6, 7, 3, 4, 2, 1, 1); /* K=4 stride 2 pad 1, non-square */
        conv_case(2, 2, 7, 5, 3, 3, 2, 0, 1); /* stride 2 pad 0, odd sizes */
        conv_case(1, 2, 6, 6, 3, 5, 1, 2, 1); /* K=5 pad 2 */
        conv_case(2, 3, 1, 1, 5, 1, 1, 0, 1); /* 1x1 spatial, 1x1 kernel (no im2col) */
        conv_case(2, 5, 4, 3, 3, 1, 1, 0, 0); /* pointwise, odd channels */
        conv_case(1, 3, 5, 4, 2, 1, 2, 0, 1); /* K=1 stride 2 */
        conv_case(1, 3, 1, 1, 2, 3, 1, 2, 1); /* 1x1 input, K=3 pad 2: a 3x3 output of borders */
        conv_case(3, 1, 4, 4, 1, 4, 1, 2, 1); /* K=4 pad 2, one channel in and out, batch 3 */
        /* "same" width at stride 1 takes the one-copy im2col: narrow images where the shift
         * wraps across rows, and a pad as wide as the image */
        conv_case(2, 2, 4, 1, 3, 3, 1, 1, 1); /* W=1 */
        conv_case(1, 2, 3, 2, 2, 3, 1, 1, 1); /* W=2 */
        conv_case(1, 2, 2, 3, 2, 5, 1, 2, 1); /* K=5 pad 2 on 2x3 */
        /* the 3x3 pad 1 cases through Winograd F(2x2, 3x3) (cpu/cpu_winograd.c), which the
         * default policy keeps for wider layers than these: odd and even sides, one row, one
         * column, one pixel */
        setenv("DIFFUSION_CPU_CONV", "winograd", 1);
        conv_case(2, 3, 5, 5, 4, 3, 1, 1, 1);
        conv_case(1, 3, 5, 5, 4, 3, 1, 1, 0);
        conv_case(3, 2, 4, 7, 3, 3, 1, 1, 1);
        conv_case(2, 2, 4, 1, 3, 3, 1, 1, 1);
        conv_case(1, 2, 1, 6, 2, 3, 1, 1, 1);
        conv_case(2, 2, 1, 1, 3, 3, 1, 1, 1);
        unsetenv("DIFFUSION_CPU_CONV");
    }
    if (WANT("dense")) {
        dense_case(3, 5, 4, 1);
        dense_case(1, 7, 1, 0);
        dense_case(4, 1, 6, 1);
    }
    if (WANT("group_norm")) {
        gn_case(2, 6, 5, 3, 0, 0); /* C=6, G=3 */
        gn_case(2, 6, 5, 3, 1, 0); /* + add */
        gn_case(2, 6, 5, 3, 0, 1); /* + swish */
        gn_case(2, 6, 5, 3, 1, 1); /* + add + swish (ConvEmbed) */
        gn_case(1, 6, 4, 1, 1, 1); /* G=1 (layer norm over channels), batch 1 */
        gn_case(2, 6, 3, 6, 1, 1); /* G=C (instance norm) */
        gn_case(2, 9, 2, 3, 1, 1); /* odd channels */
        gn_case(3, 6, 1, 2, 1, 1); /* 1x1 spatial: 3 values per group */
        gn_case(1, 5, 3, 5, 0, 1); /* odd channels, G=C, batch 1 */
        gn_case_res(2, 6, 5, 3, 0, 1, 1); /* + swish + residual (a ResBlock's end) */
        gn_case_res(2, 6, 5, 3, 1, 0, 1); /* + add + residual, no swish */
    }
    if (WANT("act")) {
        act_case(DD_ACT_RELU, "relu", 37);
        act_case(DD_ACT_SWISH, "swish", 37);
        act_case(DD_ACT_GELU_TANH, "gelu_tanh", 37);
        act_case(DD_ACT_GELU_ERF, "gelu_erf", 37);
    }
    if (WANT("add")) {
        add_case(1);
        add_case(23);
    }
    if (WANT("concat")) {
        concat_case(2, 3, 2, 5);
        concat_case(1, 1, 4, 1);
        concat_case(3, 2, 1, 3);
    }
    if (WANT("upsample2x")) {
        upsample_case(2, 3, 2, 3);
        upsample_case(1, 1, 1, 1);
    }
    if (WANT("maxpool2x2")) {
        maxpool_case(2, 3, 4, 6);
        maxpool_case(1, 2, 5, 3); /* odd sizes: last row and column dropped */
        maxpool_case(1, 1, 2, 2);
    }
    if (WANT("attention")) {
        attention_case(2, 4, 2, 3);
        attention_case(1, 6, 3, 1); /* P=1: softmax is 1, only v has a gradient */
        attention_case(1, 8, 1, 5); /* one head */
        attention_case(2, 6, 3, 4); /* several heads, batch-parallel */
        attention_case(1, 8, 4, 2);
    }
    if (WANT("embedding")) {
        embedding_case(7, 5, 3, 0);
        embedding_case(1, 1, 4, 0);
        embedding_case(6, 4, 3, 1); /* SPEC's timesteps: 1..T address rows 0..T-1 */
    }
    if (WANT("mse")) {
        mse_case(1);
        mse_case(17);
    }
    if (WANT("xent")) {
        xent_case(3, 5);
        xent_case(1, 2);
    }
    printf("largest error / scale among passing tensors: %.2e (tolerance %.0e + %.0e |g|)\n",
           worst_seen, TOL_ABS, TOL_REL);
    return tu_finish();
}
