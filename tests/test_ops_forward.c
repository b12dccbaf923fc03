/* Forward values of the CPU backend against independent references.
 *
 * - conv2d (K = 1, 3, 4, 5; stride 1 and 2; pads 0, 1, 2; 1x1 input), group_norm (with and
 *   without add and swish, G = 1, odd channels), attention (P = 1, several heads), every
 *   activation (both gelu forms), dense, maxpool, upsample and both losses against PyTorch:
 *   tests/reference/ops_reference.py writes the inputs it generated and torch's outputs (and,
 *   for conv, group_norm and attention, the gradients of sum(y * r)) to tests/reference/ops/.
 *   Outputs must agree within 1e-5 relative (norm of the difference over norm of the reference),
 *   gradients within 1e-5 too (the reference is float64 rounded once, so this measures only our
 *   float32 rounding).
 * - Adam against a two-step example computed by hand (below), EMA and guidance against their
 *   formulas, q_sample and sampler_step against the formulas of backend.h evaluated here in
 *   double, the normal entry against dd_philox_normal element by element (bit for bit).
 * - The batch-parallel conv and attention paths against one-sample-at-a-time calls.
 * - Both ways the CPU computes a 3x3 "same" convolution (DIFFUSION_CPU_CONV=gemm: im2col and the
 *   row-shift GEMMs; =winograd: Winograd F(2x2, 3x3), cpu/cpu_winograd.c): the PyTorch cases
 *   above through each, and each against a double-precision direct convolution at the UNet's
 *   shapes and at odd, narrow and one-pixel maps, forward and backward (which adds), batches
 *   split over threads, in exactly the workspace the plan asked for.
 * - Memory entries (alignment, zero fill, the out-of-memory message) and dd_backend_by_name. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/error.h"
#include "diffusion/philox.h"
#include "testutil.h"

static const dd_backend *B = &dd_cpu_backend;

#define REF_TOL 1e-5

/* ---------------------------------------------------------------- reference files */

#define REF_MAXP 16
#define REF_MAXT 24

typedef struct {
    char name[32];
    size_t n;
    float *v;
} ref_tensor;

typedef struct {
    char file[64];
    int np, nt;
    char pname[REF_MAXP][32];
    double pval[REF_MAXP];
    ref_tensor t[REF_MAXT];
} ref;

/* Parse tests/reference/ops/NAME.txt (format in ops_reference.py). 0 or -1 (test failure). */
static int ref_load(ref *r, const char *name) {
    memset(r, 0, sizeof *r);
    snprintf(r->file, sizeof r->file, "%s", name);
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/reference/ops/%s.txt", DD_SOURCE_DIR, name);
    FILE *f = fopen(path, "r");
    if (!f) {
        tu_fail(__FILE__, __LINE__, "cannot open %s (run tests/reference/ops_reference.py)", path);
        return -1;
    }
    char tok[64];
    int ok = 1;
    while (ok && fscanf(f, "%63s", tok) == 1) {
        if (tok[0] == '#') {
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n') {
            }
        } else if (strcmp(tok, "param") == 0 && r->np < REF_MAXP) {
            ok = fscanf(f, "%31s %lf", r->pname[r->np], &r->pval[r->np]) == 2;
            r->np++;
        } else if (strcmp(tok, "tensor") == 0 && r->nt < REF_MAXT) {
            ref_tensor *t = &r->t[r->nt++];
            int nd;
            ok = fscanf(f, "%31s %d", t->name, &nd) == 2 && nd >= 0 && nd <= 8;
            t->n = 1;
            for (int i = 0; ok && i < nd; i++) {
                long d;
                ok = fscanf(f, "%ld", &d) == 1 && d >= 0;
                t->n *= (size_t)d;
            }
            t->v = malloc((t->n ? t->n : 1) * sizeof(float));
            for (size_t i = 0; ok && i < t->n; i++) ok = fscanf(f, "%f", &t->v[i]) == 1;
        } else {
            ok = 0;
        }
    }
    fclose(f);
    if (!ok) tu_fail(__FILE__, __LINE__, "%s: malformed reference file", path);
    return ok ? 0 : -1;
}

static void ref_free(ref *r) {
    for (int i = 0; i < r->nt; i++) free(r->t[i].v);
}

static double P(const ref *r, const char *name) {
    for (int i = 0; i < r->np; i++)
        if (strcmp(r->pname[i], name) == 0) return r->pval[i];
    tu_fail(__FILE__, __LINE__, "%s: no param %s", r->file, name);
    return 0;
}

static const ref_tensor *T(const ref *r, const char *name) {
    for (int i = 0; i < r->nt; i++)
        if (strcmp(r->t[i].name, name) == 0) return &r->t[i];
    return NULL;
}

static const float *V(const ref *r, const char *name) {
    const ref_tensor *t = T(r, name);
    if (!t) tu_fail(__FILE__, __LINE__, "%s: no tensor %s", r->file, name);
    return t ? t->v : NULL;
}

/* got vs the reference tensor `name`: relative error within tol; prints the error either way */
static void compare(const ref *r, const char *what, const char *name, const float *got, size_t n,
                    double tol) {
    const ref_tensor *t = T(r, name);
    if (!t) {
        tu_fail(__FILE__, __LINE__, "%s: no tensor %s", r->file, name);
        return;
    }
    CHECKF(t->n == n, "%s %s: reference has %zu values, the op %zu", r->file, name, t->n, n);
    if (t->n != n) return;
    double e = tu_rel_err(got, t->v, n);
    printf("  %-22s %-10s rel err %.2e\n", r->file, name, e);
    CHECKF(e <= tol, "%s: %s %s differs from PyTorch: rel err %.3g > %.0e", r->file, what, name, e,
           tol);
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static float *filled_nan(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* ---------------------------------------------------------------- against PyTorch */

static void check_conv(const char *name) {
    ref r;
    if (ref_load(&r, name)) return;
    dd_conv_shape s = {(int)P(&r, "N"), (int)P(&r, "Cin"), (int)P(&r, "H"), (int)P(&r, "W"),
                       (int)P(&r, "Cout"), (int)P(&r, "K"), (int)P(&r, "stride"),
                       (int)P(&r, "pad"), 0, 0};
    s.Ho = (s.H + 2 * s.pad - s.K) / s.stride + 1;
    s.Wo = (s.W + 2 * s.pad - s.K) / s.stride + 1;
    const int bias = (int)P(&r, "bias");
    const size_t nx = (size_t)s.N * s.Cin * s.H * s.W, nw = (size_t)s.Cout * s.Cin * s.K * s.K;
    const size_t ny = (size_t)s.N * s.Cout * s.Ho * s.Wo;
    void *ws = malloc(B->conv2d_workspace(&s) + 64);
    float *y = filled_nan(ny), *dx = zeros(nx), *dw = zeros(nw), *db = zeros(s.Cout);
    const float *x = V(&r, "x"), *w = V(&r, "w"), *b = bias ? V(&r, "b") : NULL;
    if (x && w && (b || !bias) && V(&r, "r")) {
        CHECK_OK(B->conv2d_forward(y, x, w, b, &s, ws));
        compare(&r, "conv2d forward", "y", y, ny, REF_TOL);
        CHECK_OK(B->conv2d_backward(dx, dw, bias ? db : NULL, V(&r, "r"), x, w, &s, ws));
        compare(&r, "conv2d backward", "dx", dx, nx, REF_TOL);
        compare(&r, "conv2d backward", "dw", dw, nw, REF_TOL);
        if (bias) compare(&r, "conv2d backward", "db", db, s.Cout, REF_TOL);
    }
    free(ws), free(y), free(dx), free(dw), free(db);
    ref_free(&r);
}

static void check_group_norm(const char *name) {
    ref r;
    if (ref_load(&r, name)) return;
    dd_gn_shape s = {(int)P(&r, "N"), (int)P(&r, "C"), (int)P(&r, "HW"), (int)P(&r, "G"),
                     (int)P(&r, "swish"), (float)P(&r, "eps"), 0, 0};
    const int add = (int)P(&r, "add");
    const size_t n = (size_t)s.N * s.C * s.HW, ng = (size_t)s.N * s.G;
    float *y = filled_nan(n), *mean = filled_nan(ng), *rstd = filled_nan(ng);
    float *dx = zeros(n), *dgamma = zeros(s.C), *dbeta = zeros(s.C), *dadd = zeros((size_t)s.N * s.C);
    const float *x = V(&r, "x"), *gamma = V(&r, "gamma"), *beta = V(&r, "beta");
    const float *a = add ? V(&r, "add") : NULL;
    if (x && gamma && beta && (a || !add) && V(&r, "r")) {
        CHECK_OK(B->group_norm_forward(y, mean, rstd, x, gamma, beta, a, NULL, &s));
        compare(&r, "group_norm forward", "y", y, n, REF_TOL);
        compare(&r, "group_norm forward", "mean", mean, ng, REF_TOL);
        compare(&r, "group_norm forward", "rstd", rstd, ng, REF_TOL);
        CHECK_OK(B->group_norm_backward(dx, dgamma, dbeta, add ? dadd : NULL, NULL, V(&r, "r"), x,
                                        mean, rstd, gamma, beta, a, &s, NULL));
        compare(&r, "group_norm backward", "dx", dx, n, REF_TOL);
        compare(&r, "group_norm backward", "dgamma", dgamma, s.C, REF_TOL);
        compare(&r, "group_norm backward", "dbeta", dbeta, s.C, REF_TOL);
        if (add) compare(&r, "group_norm backward", "dadd", dadd, (size_t)s.N * s.C, REF_TOL);

        /* with a residual (a ResBlock's skip): y + res to the bit, the same dx, dres += dy */
        float *res = malloc(n * sizeof(float)), *yr = filled_nan(n), *dxr = zeros(n);
        float *dres = malloc(n * sizeof(float)), *dres0 = malloc(n * sizeof(float));
        tu_fill_uniform(res, n, -1, 1, 61);
        tu_fill_uniform(dres0, n, -1, 1, 62);
        memcpy(dres, dres0, n * sizeof(float));
        float *mr = filled_nan(ng), *rr = filled_nan(ng);
        CHECK_OK(B->group_norm_forward(yr, mr, rr, x, gamma, beta, a, res, &s));
        CHECK_OK(B->group_norm_backward(dxr, NULL, NULL, NULL, dres, V(&r, "r"), x, mr, rr, gamma,
                                        beta, a, &s, NULL));
        size_t bad_y = 0, bad_dx = 0, bad_dres = 0;
        const float *dy = V(&r, "r");
        for (size_t i = 0; i < n; i++) {
            bad_y += yr[i] != y[i] + res[i];
            bad_dx += dxr[i] != dx[i];
            bad_dres += dres[i] != dres0[i] + dy[i];
        }
        CHECKF(!bad_y && !bad_dx && !bad_dres,
               "%s with a residual: %zu of y, %zu of dx, %zu of dres differ from the op without it",
               name, bad_y, bad_dx, bad_dres);
        free(res), free(yr), free(dxr), free(dres), free(dres0), free(mr), free(rr);
    }
    free(y), free(mean), free(rstd), free(dx), free(dgamma), free(dbeta), free(dadd);
    ref_free(&r);
}

static void check_attention(const char *name) {
    ref r;
    if (ref_load(&r, name)) return;
    dd_attn_shape s = {(int)P(&r, "N"), (int)P(&r, "C"), (int)P(&r, "heads"), (int)P(&r, "P"), 0};
    const size_t ny = (size_t)s.N * s.C * s.P, np = (size_t)s.N * s.heads * s.P * s.P;
    float *y = filled_nan(ny), *probs = filled_nan(np), *dqkv = zeros(3 * ny);
    void *ws = malloc(B->attention_workspace(&s) + 64);
    const float *qkv = V(&r, "qkv");
    if (qkv && V(&r, "r")) {
        CHECK_OK(B->attention_forward(y, probs, qkv, &s));
        compare(&r, "attention forward", "y", y, ny, REF_TOL);
        compare(&r, "attention forward", "probs", probs, np, REF_TOL);
        CHECK_OK(B->attention_backward(dqkv, V(&r, "r"), qkv, probs, &s, ws));
        compare(&r, "attention backward", "dqkv", dqkv, 3 * ny, REF_TOL);
    }
    free(y), free(probs), free(dqkv), free(ws);
    ref_free(&r);
}

static void check_activations(void) {
    ref r;
    if (ref_load(&r, "act")) return;
    const size_t n = (size_t)P(&r, "n");
    const float *x = V(&r, "x");
    const struct {
        dd_act act;
        const char *name;
    } acts[] = {{DD_ACT_RELU, "relu"},
                {DD_ACT_SWISH, "swish"},
                {DD_ACT_GELU_TANH, "gelu_tanh"},
                {DD_ACT_GELU_ERF, "gelu_erf"}};
    float *y = filled_nan(n);
    for (size_t i = 0; x && i < sizeof acts / sizeof acts[0]; i++) {
        CHECK_OK(B->act_forward(y, x, n, acts[i].act));
        compare(&r, "activation", acts[i].name, y, n, REF_TOL);
    }
    /* the two gelu forms differ by 6.5e-5 relative over x, more than REF_TOL, so swapping them
     * fails the comparisons above; and most at x = -2.7 (4.7e-4): make sure that shows */
    float a = 0, b = 0;
    CHECK_OK(B->act_forward(&a, (const float[]){-2.7f}, 1, DD_ACT_GELU_TANH));
    CHECK_OK(B->act_forward(&b, (const float[]){-2.7f}, 1, DD_ACT_GELU_ERF));
    CHECKF(fabsf(a - b) > 4e-4f, "gelu tanh and erf forms too close at -2.7 (%g, %g)", a, b);
    free(y);
    ref_free(&r);
}

static void check_misc(void) {
    ref r;
    if (ref_load(&r, "dense") == 0) {
        int N = (int)P(&r, "N"), Cin = (int)P(&r, "Cin"), Cout = (int)P(&r, "Cout");
        float *y = filled_nan((size_t)N * Cout);
        if (V(&r, "x") && V(&r, "w") && V(&r, "b")) {
            CHECK_OK(B->dense_forward(y, V(&r, "x"), V(&r, "w"), V(&r, "b"), N, Cin, Cout));
            compare(&r, "dense forward", "y", y, (size_t)N * Cout, REF_TOL);
        }
        free(y);
        ref_free(&r);
    }
    if (ref_load(&r, "pool_up") == 0) {
        int N = (int)P(&r, "N"), C = (int)P(&r, "C"), H = (int)P(&r, "H"), W = (int)P(&r, "W");
        const size_t np = (size_t)N * C * (H / 2) * (W / 2), nu = (size_t)N * C * 4 * H * W;
        float *yp = filled_nan(np), *yu = filled_nan(nu);
        if (V(&r, "x")) {
            CHECK_OK(B->maxpool2x2_forward(yp, V(&r, "x"), N, C, H, W));
            compare(&r, "maxpool2x2 forward", "maxpool", yp, np, REF_TOL);
            CHECK_OK(B->upsample2x_forward(yu, V(&r, "x"), N, C, H, W));
            compare(&r, "upsample2x forward", "upsample", yu, nu, REF_TOL);
        }
        free(yp), free(yu);
        ref_free(&r);
    }
    if (ref_load(&r, "loss") == 0) {
        int N = (int)P(&r, "N"), K = (int)P(&r, "K");
        const float *lf = V(&r, "labels");
        int32_t *labels = malloc((size_t)N * sizeof(int32_t));
        for (int i = 0; lf && i < N; i++) labels[i] = (int32_t)lf[i];
        float loss = NAN, *probs = filled_nan((size_t)N * K);
        if (lf && V(&r, "logits")) {
            CHECK_OK(B->xent_forward(&loss, probs, V(&r, "logits"), labels, N, K));
            compare(&r, "xent forward", "xent", &loss, 1, REF_TOL);
            compare(&r, "xent forward", "probs", probs, (size_t)N * K, REF_TOL);
        }
        const ref_tensor *pred = T(&r, "pred");
        if (pred && V(&r, "target")) {
            CHECK_OK(B->mse_forward(&loss, pred->v, V(&r, "target"), pred->n));
            compare(&r, "mse forward", "mse", &loss, 1, REF_TOL);
        }
        free(labels), free(probs);
        ref_free(&r);
    }
}

/* ---------------------------------------------------------------- optimiser */

static void check_adam(void) {
    /* Two elements, two steps, lr 0.1, b1 0.9, b2 0.999, eps 1e-8, worked by hand:
     * element 0: p 1, g 0.5 then -0.25
     *   t=1: m = 0.1*0.5 = 0.05, v = 0.001*0.25 = 2.5e-4, m/(1-0.9) = 0.5, v/(1-0.999) = 0.25,
     *        p = 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002
     *   t=2: m = 0.9*0.05 + 0.1*(-0.25) = 0.02, v = 0.999*2.5e-4 + 0.001*0.0625 = 3.1225e-4,
     *        p = 0.900000002 - 0.1 * (0.02/0.19) / (sqrt(3.1225e-4/0.001999) + 1e-8)
     *          = 0.900000002 - 0.1 * 0.1052632 / 0.3952253 = 0.8733663
     * element 1: p -2, g -1e-3 then 3e-3 (eps is no longer negligible against sqrt(v))
     *   t=1: m = -1e-4, v = 1e-9, p = -2 - 0.1 * (-1e-3) / (1e-3 + 1e-8) = -1.900001
     *   t=2: m = -9e-5 + 3e-4 = 2.1e-4, v = 0.999e-9 + 9e-9 = 9.999e-9,
     *        p = -1.900001 - 0.1 * (2.1e-4/0.19) / (sqrt(9.999e-9/0.001999) + 1e-8)
     *          = -1.900001 - 0.1 * 1.105263e-3 / 2.236504e-3 = -1.9494198
     * Tolerances: p within 2e-7 relative (float32 rounding of a few operations); m and v within
     * 1e-6: the API takes b1 and b2 in double and rounds 1 - b2 = 1e-3 to float as PyTorch does
     * (1 - 0.999f would be 0.99998713e-3 and put every v 1.3e-5 low).
     * The step comes from memory: t = *step + 1. */
    float p[2] = {1.0f, -2.0f}, m[2] = {0, 0}, v[2] = {0, 0};
    const float g1[2] = {0.5f, -1e-3f}, g2[2] = {-0.25f, 3e-3f};
    int64_t step = 0;
    CHECK_OK(B->adam_update(p, m, v, g1, 2, 0.1f, 0.9, 0.999, 1e-8, &step, NULL));
    const double p1[2] = {0.900000002, -1.90000099999}, m1[2] = {0.05, -1e-4},
                 v1[2] = {2.5e-4, 1e-9};
    for (int i = 0; i < 2; i++) {
        CHECKF(fabs(p[i] - p1[i]) <= 2e-7 * fabs(p1[i]), "adam t=1 p[%d] = %.9g, expected %.9g", i,
               p[i], p1[i]);
        CHECKF(fabs(m[i] - m1[i]) <= 1e-6 * fabs(m1[i]), "adam t=1 m[%d] = %.9g, expected %.9g", i,
               m[i], m1[i]);
        CHECKF(fabs(v[i] - v1[i]) <= 1e-6 * fabs(v1[i]), "adam t=1 v[%d] = %.9g, expected %.9g", i,
               v[i], v1[i]);
    }
    CHECK_OK(B->counter_add(&step, 1, NULL));
    CHECKF(step == 1, "counter_add: step %lld", (long long)step);
    /* a non-finite guard leaves everything as it was: parameters, moments and the counter */
    const float bad_loss = NAN, inf_loss = INFINITY, good_loss = 0.5f;
    float ps[2] = {p[0], p[1]}, ms[2] = {m[0], m[1]}, vs[2] = {v[0], v[1]};
    CHECK_OK(B->adam_update(p, m, v, g2, 2, 0.1f, 0.9, 0.999, 1e-8, &step, &bad_loss));
    CHECK_OK(B->counter_add(&step, 1, &inf_loss));
    CHECKF(!memcmp(p, ps, sizeof p) && !memcmp(m, ms, sizeof m) && !memcmp(v, vs, sizeof v) &&
               step == 1,
           "adam / counter with a NaN guard changed something");
    CHECK_OK(B->adam_update(p, m, v, g2, 2, 0.1f, 0.9, 0.999, 1e-8, &step, &good_loss));
    const double p2[2] = {0.8733662987, -1.9494197624}, m2[2] = {0.02, 2.1e-4},
                 v2[2] = {3.1225e-4, 9.999e-9};
    for (int i = 0; i < 2; i++) {
        CHECKF(fabs(p[i] - p2[i]) <= 2e-7 * fabs(p2[i]), "adam t=2 p[%d] = %.9g, expected %.9g", i,
               p[i], p2[i]);
        CHECKF(fabs(m[i] - m2[i]) <= 1e-6 * fabs(m2[i]), "adam t=2 m[%d] = %.9g, expected %.9g", i,
               m[i], m2[i]);
        CHECKF(fabs(v[i] - v2[i]) <= 1e-6 * fabs(v2[i]), "adam t=2 v[%d] = %.9g, expected %.9g", i,
               v[i], v2[i]);
    }

    /* EMA: 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * -2 + 0.1 * 0 = -1.8 */
    float ema[2] = {1.0f, -2.0f};
    const float pp[2] = {3.0f, 0.0f};
    CHECK_OK(B->ema_update(ema, pp, 2, 0.9f, NULL, NULL));
    CHECKF(fabsf(ema[0] - 1.2f) < 1e-6f && fabsf(ema[1] + 1.8f) < 1e-6f, "ema: %g %g", ema[0],
           ema[1]);
    /* with the warm-up at step 2: decay min(0.9, 3/12) = 0.25: 0.25 * 1.2 + 0.75 * 3 = 2.55 */
    int64_t two = 2;
    CHECK_OK(B->ema_update(ema, pp, 2, 0.9f, &two, &good_loss));
    CHECKF(fabsf(ema[0] - 2.55f) < 1e-6f, "ema with warm-up at step 2: %g, expected 2.55", ema[0]);
    CHECK_OK(B->ema_update(ema, pp, 2, 0.9f, &two, &bad_loss));
    CHECKF(fabsf(ema[0] - 2.55f) < 1e-6f, "ema with a NaN guard changed: %g", ema[0]);

    /* sampler_advance: the counter from -1 to 0 and then 1, the noise address on by 50 each
     * time, the step's t broadcast to the first 3 of 4 */
    const int32_t ttab[2] = {5, 7};
    int32_t t[4] = {0, 0, 0, -3};
    int64_t k = -1, noff = 100;
    CHECK_OK(B->sampler_advance(&k, &noff, 50, t, ttab, 3));
    CHECKF(k == 0 && noff == 150 && t[0] == 5 && t[2] == 5 && t[3] == -3,
           "sampler_advance: k %lld, noff %lld, t %d %d %d %d", (long long)k, (long long)noff, t[0],
           t[1], t[2], t[3]);
    CHECK_OK(B->sampler_advance(&k, &noff, 50, t, ttab, 3));
    CHECKF(k == 1 && noff == 200 && t[0] == 7 && t[1] == 7 && t[2] == 7 && t[3] == -3,
           "sampler_advance, second step: k %lld, noff %lld, t %d %d %d %d", (long long)k,
           (long long)noff, t[0], t[1], t[2], t[3]);
}

/* ---------------------------------------------------------------- diffusion helpers */

static void check_diffusion(void) {
    /* normal: element i is dd_philox_normal(seed, stream, offset + i), bit for bit; a large n
     * takes the OpenMP path */
    const size_t n = 50000;
    float *z = malloc(n * sizeof(float));
    /* the address from a counter in memory: 10 + 3 * 330 = 1000 */
    const int64_t three = 3;
    CHECK_OK(B->normal(z, n, (dd_rng_at){1234, 7, 10, &three, 330}));
    size_t mismatch = 0;
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++) {
        mismatch += memcmp(&z[i], &(float){dd_philox_normal(1234, 7, 1000 + i)}, sizeof(float)) != 0;
        sum += z[i], sq += (double)z[i] * z[i];
    }
    CHECKF(mismatch == 0, "normal: %zu of %zu values differ from dd_philox_normal", mismatch, n);
    /* and they look standard normal (mean within 5 sigma of 0, variance within 3%) */
    CHECKF(fabs(sum / n) < 5.0 / sqrt((double)n) && fabs(sq / n - 1.0) < 0.03,
           "normal: mean %g, variance %g", sum / n, sq / n);

    /* train_draw: t = 1 + below(o + i, T), label drop at o + N + i, o = 4 + 2 * 100 */
    {
        enum { TN = 300, TT = 7 };
        int32_t t[TN], lab[TN], lin[TN];
        for (int i = 0; i < TN; i++) lin[i] = i % 5;
        const int64_t two = 2;
        CHECK_OK(B->train_draw(t, lab, lin, TN, TT, 0.3f, 9, (dd_rng_at){77, 1, 4, &two, 100}));
        int badt = 0, badl = 0, dropped = 0;
        for (int i = 0; i < TN; i++) {
            badt += t[i] != 1 + (int)dd_philox_below(77, 1, 204 + (uint64_t)i, TT);
            const int want = dd_philox_uniform(77, 1, 204 + TN + (uint64_t)i) < 0.3f ? 9 : lin[i];
            badl += lab[i] != want;
            dropped += lab[i] == 9;
        }
        CHECKF(badt == 0 && badl == 0, "train_draw: %d t and %d labels off the formula", badt, badl);
        CHECKF(dropped > 45 && dropped < 135, "train_draw: %d of %d labels dropped at p = 0.3",
               dropped, TN);
        CHECK_OK(B->train_draw(t, NULL, NULL, TN, TT, 0.3f, 9, (dd_rng_at){77, 1, 204, NULL, 0}));
        for (int i = 0; i < TN; i++) badt += t[i] != 1 + (int)dd_philox_below(77, 1, 204 + (uint64_t)i, TT);
        CHECKF(badt == 0, "train_draw without labels: %d t differ", badt);
    }

    /* q_sample: per sample s, xt = ca[j] x0 + cb[j] noise, j = s, or idx[s] into a table */
    enum { QN = 3, PER = 5 };
    float x0[QN * PER], noise[QN * PER], xt[QN * PER];
    const float ca[QN] = {0.99f, 0.5f, 0.01f}, cb[QN] = {0.141f, 0.866f, 0.99995f};
    const int32_t qidx[QN] = {2, 0, 2};
    tu_fill_uniform(x0, QN * PER, -1, 1, 11);
    tu_fill_uniform(noise, QN * PER, -2, 2, 12);
    for (int with_idx = 0; with_idx < 2; with_idx++) {
        CHECK_OK(B->q_sample(xt, x0, noise, ca, cb, with_idx ? qidx : NULL, QN, PER));
        for (int s = 0; s < QN; s++)
            for (int i = 0; i < PER; i++) {
                const int k = s * PER + i, j = with_idx ? qidx[s] : s;
                double want = (double)ca[j] * x0[k] + (double)cb[j] * noise[k];
                CHECKF(fabs(xt[k] - want) <= 1e-6 * (1 + fabs(want)), "q_sample%s [%d][%d]: %g vs %g",
                       with_idx ? " (indexed)" : "", s, i, xt[k], want);
            }
    }

    /* sampler_step, row k = *at.k of the table:
     * pred = out (or uncond + g (out - uncond)); eps = ea x + eb pred; x0 = clip(ra x - rb eps);
     * x = c0 x0 + c1 x + c2 eps + sigma z, z at offset + k stride + i */
    const size_t m = 40000; /* OpenMP path */
    float *x = malloc(m * sizeof(float)), *e = malloc(m * sizeof(float));
    float *un = malloc(m * sizeof(float));
    float *xs = malloc(m * sizeof(float)), *x0o = malloc(m * sizeof(float));
    tu_fill_uniform(x, m, -3, 3, 21);
    tu_fill_uniform(e, m, -2, 2, 22);
    tu_fill_uniform(un, m, -2, 2, 23);
    const struct {
        float ea, eb, ra, rb, c0, c1, c2, sigma, g;
        int clip, want_x0, guided;
        const char *what;
    } cases[] = {
        {0, 1, 1.2f, 0.66f, 0.3f, 0.6f, 0.0f, 0.2f, 1, 1, 1, 0, "DDPM step, clip, noise"},
        {0, 1, 1.2f, 0.66f, 0.3f, 0.6f, 0.0f, 0.2f, 1, 0, 0, 0, "DDPM step, no clip, x0_out NULL"},
        {0, 1, 3.0f, 2.8f, 0.8f, 0.0f, 0.6f, 0.0f, 1, 1, 1, 0, "DDIM eta=0 step (no noise)"},
        {0, 1, 3.0f, 2.8f, 0.8f, 0.0f, 0.5f, 0.35f, 1, 1, 1, 0, "DDIM eta>0 step"},
        {0, 1, 3.0f, 2.8f, 0.8f, 0.0f, 0.5f, 0.35f, 2.5f, 1, 1, 1, "guided DDIM step"},
        {0.7f, -0.4f, 1.2f, 0.66f, 0.3f, 0.6f, 0.0f, 0.2f, 1, 0, 1, 0, "x0/v-style conversion"},
        {0.7f, -0.4f, 1.2f, 0.66f, 0.3f, 0.6f, 0.0f, 0.2f, 3, 1, 1, 1, "guided, converted"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        memcpy(xs, x, m * sizeof(float));
        for (size_t i = 0; i < m; i++) x0o[i] = NAN;
        /* row 2 of a table whose other rows are garbage */
        float tab[3 * DD_SAMPLER_COLS];
        for (int i = 0; i < 3 * DD_SAMPLER_COLS; i++) tab[i] = 1e6f;
        float *row = tab + 2 * DD_SAMPLER_COLS;
        row[DD_SAMPLER_EA] = cases[c].ea, row[DD_SAMPLER_EB] = cases[c].eb;
        row[DD_SAMPLER_RA] = cases[c].ra, row[DD_SAMPLER_RB] = cases[c].rb;
        row[DD_SAMPLER_C0] = cases[c].c0, row[DD_SAMPLER_C1] = cases[c].c1;
        row[DD_SAMPLER_C2] = cases[c].c2, row[DD_SAMPLER_SIGMA] = cases[c].sigma;
        const uint64_t seed = 99, stream = 3 + c, off = 500, stride = 7000;
        const int64_t k = 2;
        CHECK_OK(B->sampler_step(xs, cases[c].want_x0 ? x0o : NULL, e, cases[c].guided ? un : NULL,
                                 m, cases[c].g, cases[c].clip, tab, &k,
                                 (dd_rng_at){seed, stream, off, &k, stride}));
        size_t bad = 0, badx0 = 0, clipped = 0;
        for (size_t i = 0; i < m; i++) {
            const double pred = cases[c].guided ? un[i] + (double)cases[c].g * (e[i] - un[i]) : e[i];
            const double eps = cases[c].ea * (double)x[i] + cases[c].eb * pred;
            double x0 = (double)cases[c].ra * x[i] - (double)cases[c].rb * eps;
            if (cases[c].clip && (x0 > 1 || x0 < -1)) x0 = x0 > 1 ? 1 : -1, clipped++;
            double want = cases[c].c0 * x0 + cases[c].c1 * (double)x[i] + cases[c].c2 * eps;
            if (cases[c].sigma != 0)
                want += cases[c].sigma * (double)dd_philox_normal(seed, stream, off + 2 * stride + i);
            bad += !(fabs(xs[i] - want) <= 1e-5 * (1 + fabs(want)));
            if (cases[c].want_x0) badx0 += !(fabs(x0o[i] - x0) <= 1e-5 * (1 + fabs(x0)));
            else badx0 += !isnan(x0o[i]);
        }
        CHECKF(bad == 0, "sampler_step (%s): %zu of %zu values off the formula", cases[c].what, bad,
               m);
        CHECKF(badx0 == 0, "sampler_step (%s): %zu x0 values wrong", cases[c].what, badx0);
        if (cases[c].clip) CHECKF(clipped > 0, "sampler_step (%s): test never clips", cases[c].what);
    }
    free(un);
    free(z), free(x), free(e), free(xs), free(x0o);
}

/* ---------------------------------------------------------------- threading paths */

/* The batch-parallel paths (N >= threads) must give what one-sample calls give. */
/* A convolution over a batch against the same convolution one sample at a time: the CPU backend
 * takes different paths for them (several images in one GEMM for small maps, the row-shift form
 * for 'same' convolutions, one GEMM into dx...), which must agree. */
static void conv_batch_case(dd_conv_shape s) {
    dd_conv_shape s1 = s;
    s1.N = 1;
    const int N = s.N;
    const size_t xs = (size_t)s.Cin * s.H * s.W, ys = (size_t)s.Cout * s.Ho * s.Wo,
                 nw = (size_t)s.Cout * s.Cin * s.K * s.K;
    float *x = malloc(N * xs * sizeof(float)), *w = malloc(nw * sizeof(float));
    float *b = malloc(s.Cout * sizeof(float)), *dy = malloc(N * ys * sizeof(float));
    tu_fill_uniform(x, N * xs, -1, 1, 31);
    tu_fill_uniform(w, nw, -1, 1, 32);
    tu_fill_uniform(b, s.Cout, -1, 1, 33);
    tu_fill_uniform(dy, N * ys, -1, 1, 34);
    void *ws = malloc(B->conv2d_workspace(&s) + 64);
    float *y = zeros(N * ys), *y1 = zeros(N * ys), *dx = zeros(N * xs), *dx1 = zeros(N * xs);
    float *dw = zeros(nw), *dw1 = zeros(nw), *db = zeros(s.Cout), *db1 = zeros(s.Cout);
    CHECK_OK(B->conv2d_forward(y, x, w, b, &s, ws));
    CHECK_OK(B->conv2d_backward(dx, dw, db, dy, x, w, &s, ws));
    for (int n = 0; n < N; n++) {
        CHECK_OK(B->conv2d_forward(y1 + n * ys, x + n * xs, w, b, &s1, ws));
        CHECK_OK(B->conv2d_backward(dx1 + n * xs, dw1, db1, dy + n * ys, x + n * xs, w, &s1, ws));
    }
    char what[96];
    snprintf(what, sizeof what, "conv N=%d %d->%d %dx%d k%d s%d", N, s.Cin, s.Cout, s.H, s.W, s.K,
             s.stride);
    CHECKF(tu_rel_err(y, y1, N * ys) < 1e-6, "%s forward: batch path differs from per-sample", what);
    CHECKF(tu_rel_err(dx, dx1, N * xs) < 1e-6, "%s backward dx: batch path differs", what);
    CHECKF(tu_rel_err(dw, dw1, nw) < 1e-5, "%s backward dw: batch path differs", what);
    CHECKF(tu_rel_err(db, db1, s.Cout) < 1e-5, "%s backward db: batch path differs", what);
    free(x), free(w), free(b), free(dy), free(ws), free(y), free(y1), free(dx), free(dx1);
    free(dw), free(dw1), free(db), free(db1);
}

/* y = conv(x, w) + b, dx += conv^T(dy), dw += dy (x) x, db += sum dy, in double, the direct
 * sums (any K, stride, pad) */
static void conv_direct(double *y, double *dx, double *dw, double *db, const float *x,
                        const float *w, const float *b, const float *dy, const dd_conv_shape *s) {
    const int K = s->K;
    for (int n = 0; n < s->N; n++)
        for (int o = 0; o < s->Cout; o++)
            for (int oh = 0; oh < s->Ho; oh++)
                for (int ow = 0; ow < s->Wo; ow++) {
                    const size_t yi = (((size_t)n * s->Cout + o) * s->Ho + oh) * s->Wo + ow;
                    double acc = b ? b[o] : 0.0;
                    for (int i = 0; i < s->Cin; i++)
                        for (int a = 0; a < K; a++)
                            for (int c = 0; c < K; c++) {
                                const int ih = oh * s->stride - s->pad + a;
                                const int iw = ow * s->stride - s->pad + c;
                                if (ih < 0 || ih >= s->H || iw < 0 || iw >= s->W) continue;
                                const size_t xi =
                                    (((size_t)n * s->Cin + i) * s->H + ih) * s->W + iw;
                                const size_t wi = (((size_t)o * s->Cin + i) * K + a) * K + c;
                                acc += (double)x[xi] * w[wi];
                                dx[xi] += (double)dy[yi] * w[wi];
                                dw[wi] += (double)dy[yi] * x[xi];
                            }
                    y[yi] = acc;
                    db[o] += dy[yi];
                }
}

static double rel_err_d(const float *a, const double *ref, size_t n) {
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        e += (a[i] - ref[i]) * (a[i] - ref[i]);
        m += ref[i] * ref[i];
    }
    return m > 0.0 ? sqrt(e / m) : sqrt(e);
}

/* One shape through DIFFUSION_CPU_CONV=policy against conv_direct. The gradients start from
 * nonzero values (backward adds), the workspace is exactly what conv2d_workspace asked for
 * under the other policy (the plan may be made before the variable changes) with a guard
 * after it, and a backward with dx and db left out must give the same dw. */
static void conv_policy_case(dd_conv_shape s, const char *policy, const char *other) {
    const size_t nx = (size_t)s.N * s.Cin * s.H * s.W, ny = (size_t)s.N * s.Cout * s.Ho * s.Wo;
    const size_t nw = (size_t)s.Cout * s.Cin * s.K * s.K;
    float *x = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float));
    float *b = malloc(s.Cout * sizeof(float)), *dy = malloc(ny * sizeof(float));
    tu_fill_uniform(x, nx, -1, 1, 41);
    tu_fill_uniform(w, nw, -0.5f, 0.5f, 42);
    tu_fill_uniform(b, s.Cout, -1, 1, 43);
    tu_fill_uniform(dy, ny, -1, 1, 44);
    float *dx = malloc(nx * sizeof(float)), *dw = malloc(nw * sizeof(float));
    float *db = malloc(s.Cout * sizeof(float)), *dw2 = malloc(nw * sizeof(float));
    tu_fill_uniform(dx, nx, -1, 1, 45);
    tu_fill_uniform(dw, nw, -1, 1, 46);
    tu_fill_uniform(db, s.Cout, -1, 1, 47);
    memcpy(dw2, dw, nw * sizeof(float));
    double *ry = calloc(ny, sizeof(double)), *rdx = malloc(nx * sizeof(double));
    double *rdw = malloc(nw * sizeof(double)), *rdb = malloc(s.Cout * sizeof(double));
    for (size_t i = 0; i < nx; i++) rdx[i] = dx[i];
    for (size_t i = 0; i < nw; i++) rdw[i] = dw[i];
    for (int i = 0; i < s.Cout; i++) rdb[i] = db[i];
    conv_direct(ry, rdx, rdw, rdb, x, w, b, dy, &s);

    setenv("DIFFUSION_CPU_CONV", other, 1);
    const size_t wsb = B->conv2d_workspace(&s);
    setenv("DIFFUSION_CPU_CONV", policy, 1);
    const size_t wsf = (wsb + sizeof(float) - 1) / sizeof(float);
    float *ws = malloc((wsf + 64) * sizeof(float));
    for (int i = 0; i < 64; i++) ws[wsf + i] = 12345.0f;
    float *y = filled_nan(ny);
    CHECK_OK(B->conv2d_forward(y, x, w, b, &s, ws));
    CHECK_OK(B->conv2d_backward(dx, dw, db, dy, x, w, &s, ws));
    CHECK_OK(B->conv2d_backward(NULL, dw2, NULL, dy, x, w, &s, ws));
    unsetenv("DIFFUSION_CPU_CONV");
    char what[128];
    snprintf(what, sizeof what, "conv N=%d %d->%d %dx%d k%d s%d p%d (%s)", s.N, s.Cin, s.Cout, s.H,
             s.W, s.K, s.stride, s.pad, policy);
    const double ey = rel_err_d(y, ry, ny), edx = rel_err_d(dx, rdx, nx);
    const double edw = rel_err_d(dw, rdw, nw), edb = rel_err_d(db, rdb, s.Cout);
    CHECKF(ey < 1e-6, "%s forward: %.2e from the direct sums", what, ey);
    CHECKF(edx < 1e-6, "%s dx: %.2e from the direct sums", what, edx);
    CHECKF(edw < 1e-6, "%s dw: %.2e from the direct sums", what, edw);
    CHECKF(edb < 1e-6, "%s db: %.2e from the direct sums", what, edb);
    CHECKF(tu_rel_err(dw2, dw, nw) < 1e-6, "%s dw alone differs from dw with dx and db", what);
    int guard = 1;
    for (int i = 0; i < 64; i++) guard &= ws[wsf + i] == 12345.0f;
    CHECKF(guard, "%s wrote past its %zu-byte workspace", what, wsb);
    free(x), free(w), free(b), free(dy), free(dx), free(dw), free(db), free(dw2), free(ry);
    free(rdx), free(rdw), free(rdb), free(ws), free(y);
}

static void check_conv_policies(void) {
    /* the PyTorch cases through each way (only the 3x3 pad 1 ones differ) */
    static const char *const pol[2] = {"gemm", "winograd"};
    for (int p = 0; p < 2; p++) {
        setenv("DIFFUSION_CPU_CONV", pol[p], 1);
        check_conv("conv_k3_s1_p1");
        check_conv("conv_k3_s1_p1_1x1");
        unsetenv("DIFFUSION_CPU_CONV");
    }
    const dd_conv_shape shapes[] = {
        /* the UNet's: 28x28 (one image a chunk), 14x14 (two), 7x7 (four), more out than in */
        {3, 32, 28, 28, 16, 3, 1, 1, 28, 28},
        {5, 48, 14, 14, 32, 3, 1, 1, 14, 14},
        {9, 64, 7, 7, 64, 3, 1, 1, 7, 7},
        {2, 64, 7, 7, 192, 3, 1, 1, 7, 7},
        /* odd and even sides, narrow maps, one pixel, one channel, more images than threads */
        {3, 5, 9, 6, 7, 3, 1, 1, 9, 6},
        {2, 3, 1, 7, 4, 3, 1, 1, 1, 7},
        {2, 3, 8, 1, 2, 3, 1, 1, 8, 1},
        {3, 2, 1, 1, 3, 3, 1, 1, 1, 1},
        {4, 1, 5, 5, 1, 3, 1, 1, 5, 5},
        {1, 16, 30, 2, 17, 3, 1, 1, 30, 2},
        {7, 4, 2, 3, 3, 3, 1, 1, 2, 3},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        conv_policy_case(shapes[i], "winograd", "gemm");
        conv_policy_case(shapes[i], "gemm", "winograd");
        conv_policy_case(shapes[i], "auto", "gemm");
    }
    /* a value the variable does not know: every convolution refuses, with the value named */
    {
        dd_conv_shape s = {1, 2, 4, 4, 3, 3, 1, 1, 4, 4};
        float x[32] = {0}, w[96] = {0}, y[48], dx[32] = {0}, dw[54] = {0}, dy[48] = {0};
        void *ws = malloc(B->conv2d_workspace(&s) + 64);
        setenv("DIFFUSION_CPU_CONV", "fast", 1);
        CHECK(B->conv2d_forward(y, x, w, NULL, &s, ws) != 0);
        CHECKF(strstr(dd_error_message(), "DIFFUSION_CPU_CONV=fast") != NULL, "message: %s",
               dd_error_message());
        CHECK(B->conv2d_backward(dx, dw, NULL, dy, x, w, &s, ws) != 0);
        dd_conv_shape k4 = {1, 2, 4, 4, 3, 4, 2, 1, 2, 2}; /* not a Winograd shape: the same */
        CHECK(B->conv2d_forward(y, x, w, NULL, &k4, ws) != 0);
        unsetenv("DIFFUSION_CPU_CONV");
        free(ws);
    }
    /* shapes Winograd does not take: the variable must leave them on the GEMMs */
    conv_policy_case((dd_conv_shape){2, 16, 28, 28, 32, 4, 2, 1, 14, 14}, "winograd", "gemm");
    conv_policy_case((dd_conv_shape){2, 3, 6, 5, 4, 3, 1, 0, 4, 3}, "winograd", "gemm");
    conv_policy_case((dd_conv_shape){2, 3, 6, 5, 4, 3, 2, 1, 3, 3}, "winograd", "gemm");
    conv_policy_case((dd_conv_shape){2, 3, 6, 5, 4, 5, 1, 2, 6, 5}, "winograd", "gemm");
}

static void check_batch_paths(void) {
    conv_batch_case((dd_conv_shape){4, 3, 9, 8, 5, 3, 1, 1, 9, 8});
    conv_batch_case((dd_conv_shape){5, 64, 7, 7, 64, 3, 1, 1, 7, 7});     /* images batched */
    conv_batch_case((dd_conv_shape){3, 64, 7, 7, 192, 3, 1, 1, 7, 7});    /* more out than in */
    conv_batch_case((dd_conv_shape){3, 16, 28, 28, 16, 3, 1, 1, 28, 28}); /* row-shift form */
    conv_batch_case((dd_conv_shape){3, 16, 28, 28, 32, 4, 2, 1, 14, 14}); /* the downsample */
    setenv("DIFFUSION_CPU_CONV", "winograd", 1); /* chunks of 4 images, threads, one at a time */
    conv_batch_case((dd_conv_shape){5, 64, 7, 7, 64, 3, 1, 1, 7, 7});
    conv_batch_case((dd_conv_shape){3, 16, 28, 28, 32, 3, 1, 1, 28, 28});
    unsetenv("DIFFUSION_CPU_CONV");

    /* group_norm backward has two schedules: whole groups per thread (G >= threads, what the
     * small gradcheck cases run) and channels / (n, g) in parallel (fewer groups than threads,
     * only above the OpenMP size threshold). Both must give the same gradients. */
    dd_gn_shape g = {3, 6, 2500, 2, 1, 1e-5f, 0, 0};
    const size_t n = 3 * 6 * 2500;
    float *gx = malloc(n * sizeof(float)), *gdy = malloc(n * sizeof(float)), gm[6], gb[6], ga[18];
    tu_fill_uniform(gx, n, -2, 2, 41);
    tu_fill_uniform(gdy, n, -1, 1, 42);
    tu_fill_uniform(gm, 6, 0.5f, 1.5f, 43);
    tu_fill_uniform(gb, 6, -0.5f, 0.5f, 44);
    tu_fill_uniform(ga, 18, -0.5f, 0.5f, 45);
    float *gy = malloc(n * sizeof(float)), mean[6], rstd[6];
    CHECK_OK(B->group_norm_forward(gy, mean, rstd, gx, gm, gb, ga, NULL, &g));
    float *gdx[2], gdg[2][6], gdb[2][6], gda[2][18];
    const int threads[2] = {1, 4};
    const int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(threads[k]);
        gdx[k] = zeros(n);
        memset(gdg[k], 0, sizeof gdg[k]), memset(gdb[k], 0, sizeof gdb[k]);
        memset(gda[k], 0, sizeof gda[k]);
        CHECK_OK(B->group_norm_backward(gdx[k], gdg[k], gdb[k], gda[k], NULL, gdy, gx, mean, rstd,
                                        gm, gb, ga, &g, NULL));
    }
    omp_set_num_threads(saved);
    CHECKF(tu_rel_err(gdx[1], gdx[0], n) < 1e-6, "group_norm dx: schedules differ (%g)",
           tu_rel_err(gdx[1], gdx[0], n));
    CHECKF(tu_rel_err(gdg[1], gdg[0], 6) < 1e-6, "group_norm dgamma: schedules differ");
    CHECKF(tu_rel_err(gdb[1], gdb[0], 6) < 1e-6, "group_norm dbeta: schedules differ");
    CHECKF(tu_rel_err(gda[1], gda[0], 18) < 1e-6, "group_norm dadd: schedules differ");
    free(gx), free(gdy), free(gy), free(gdx[0]), free(gdx[1]);
}

/* group_norm's statistics against a two-pass double computation, on data far from zero (a
 * large offset with a small spread, where a naive sum of squares would cancel) and on data with
 * one outlier. */
static void check_group_norm_moments(void) {
    enum { C = 4, HW = 300 };
    dd_gn_shape s = {1, C, HW, 2, 0, 1e-5f, 0, 0};
    float *x = malloc(C * HW * sizeof(float)), *y = malloc(C * HW * sizeof(float));
    const float gamma[C] = {1, 1, 1, 1}, beta[C] = {0, 0, 0, 0};
    tu_fill_uniform(x, C * HW, -0.05f, 0.05f, 51);
    for (int i = 0; i < 2 * HW; i++) x[i] += 1000.0f; /* group 0: 1000 +- 0.05 */
    x[2 * HW + 7] = 300.0f;                            /* group 1: one outlier */
    float mean[2], rstd[2];
    CHECK_OK(B->group_norm_forward(y, mean, rstd, x, gamma, beta, NULL, NULL, &s));
    for (int g = 0; g < 2; g++) {
        const float *xg = x + g * 2 * HW;
        double mu = 0, var = 0;
        for (int i = 0; i < 2 * HW; i++) mu += xg[i];
        mu /= 2 * HW;
        for (int i = 0; i < 2 * HW; i++) var += (xg[i] - mu) * (xg[i] - mu);
        var /= 2 * HW;
        const double r = 1.0 / sqrt(var + 1e-5);
        CHECKF(fabs(mean[g] - mu) <= 1e-7 * fabs(mu) + 1e-9, "group_norm mean[%d] %.9g vs %.9g", g,
               mean[g], mu);
        CHECKF(fabs(rstd[g] - r) <= 1e-6 * r, "group_norm rstd[%d] %.9g vs %.9g", g, rstd[g], r);
    }
    free(x), free(y);
}

/* ---------------------------------------------------------------- memory, selection */

/* Ops on a batch smaller than the thread count run the batch in order, and below a size
 * (DD_CPU_BLAS_THREADED_MACS) keep OpenBLAS to one thread meanwhile: they must give its thread
 * count back, whichever way they went (a lost count would leave every later product on one
 * core). */
static void check_blas_threads_restored(void) {
    const int saved = openblas_get_num_threads(), before = 2;
    openblas_set_num_threads(before); /* a known count above one, on any machine */
    const dd_conv_shape shapes[] = {
        {1, 16, 7, 7, 16, 3, 1, 1, 7, 7},     /* small: one thread meanwhile (GEMMs) */
        {1, 64, 7, 7, 64, 3, 1, 1, 7, 7},     /* small, Winograd */
        {1, 64, 64, 64, 64, 3, 1, 1, 64, 64}, /* over the threshold: OpenBLAS's threads */
        {1, 16, 28, 28, 32, 4, 2, 1, 14, 14},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const dd_conv_shape *s = &shapes[i];
        const size_t nx = (size_t)s->N * s->Cin * s->H * s->W;
        const size_t ny = (size_t)s->N * s->Cout * s->Ho * s->Wo;
        const size_t nw = (size_t)s->Cout * s->Cin * s->K * s->K;
        float *x = zeros(nx), *w = zeros(nw), *y = zeros(ny), *dx = zeros(nx), *dw = zeros(nw);
        void *ws = malloc(B->conv2d_workspace(s) + 64);
        CHECK_OK(B->conv2d_forward(y, x, w, NULL, s, ws));
        CHECKF(openblas_get_num_threads() == before,
               "conv forward %zu left OpenBLAS at %d threads, was %d", i,
               openblas_get_num_threads(), before);
        CHECK_OK(B->conv2d_backward(dx, dw, NULL, y, x, w, s, ws));
        CHECKF(openblas_get_num_threads() == before,
               "conv backward %zu left OpenBLAS at %d threads, was %d", i,
               openblas_get_num_threads(), before);
        free(x), free(w), free(y), free(dx), free(dw), free(ws);
    }
    float x[8 * 64] = {0}, w[64 * 64] = {0}, y[8 * 64], dx[8 * 64] = {0}, dw[64 * 64] = {0};
    CHECK_OK(B->dense_forward(y, x, w, NULL, 8, 64, 64));
    CHECK_OK(B->dense_backward(dx, dw, NULL, y, x, w, 8, 64, 64));
    CHECKF(openblas_get_num_threads() == before, "dense left OpenBLAS at %d threads, was %d",
           openblas_get_num_threads(), before);
    openblas_set_num_threads(saved);
}

static void check_memory_and_select(void) {
    void *p = NULL;
    CHECK_OK(B->alloc(&p, 1000));
    CHECKF(p && ((uintptr_t)p % 64) == 0, "alloc: not 64-byte aligned");
    size_t nonzero = 0;
    for (int i = 0; p && i < 1000; i++) nonzero += ((unsigned char *)p)[i] != 0;
    CHECKF(nonzero == 0, "alloc: memory not zero-filled");
    memset(p, 7, 1000);
    CHECK_OK(B->zero(p, 1000));
    CHECK(((unsigned char *)p)[999] == 0);
    char host[16] = "0123456789abcde";
    CHECK_OK(B->to_device(p, host, 16));
    char back[16] = {0};
    CHECK_OK(B->to_host(back, p, 16));
    CHECK(memcmp(back, host, 16) == 0);
    /* page-locked host memory and the queued upload */
    char *pinned = NULL;
    CHECK_OK(B->host_alloc((void **)&pinned, 16));
    memcpy(pinned, "fedcba987654321", 16);
    CHECK_OK(B->to_device_async(p, pinned, 16));
    CHECK_OK(B->to_host(back, p, 16));
    CHECK(memcmp(back, "fedcba987654321", 16) == 0);
    B->host_free(pinned);
    CHECK_OK(B->synchronize());
    B->free(p);

    void *q = (void *)1;
    dd_error_clear();
    CHECK(B->alloc(&q, SIZE_MAX / 2) == -1);
    CHECK(q == NULL);
    CHECKF(strstr(dd_error_message(), "out of memory") &&
               strstr(dd_error_message(), "9223372036854775807"),
           "out-of-memory message does not say so with the size: \"%s\"", dd_error_message());

    CHECK(dd_backend_by_name("cpu") == &dd_cpu_backend);
    dd_error_clear();
    const dd_backend *cuda = dd_cuda_backend();
    dd_error_clear();
    const dd_backend *a = dd_backend_by_name("auto");
    CHECK(a != NULL);
    if (!cuda) {
        CHECK(a == &dd_cpu_backend);
        CHECKF(strcmp(dd_error_message(), "unknown error") == 0,
               "auto falling back to cpu left an error set: \"%s\"", dd_error_message());
        CHECK(dd_backend_by_name("cuda") == NULL);
        CHECKF(strstr(dd_error_message(), "CUDA") != NULL, "no CUDA message: \"%s\"",
               dd_error_message());
    } else {
        CHECK(a == cuda);
    }
    CHECK(dd_backend_by_name("gpu") == NULL);
    CHECKF(strstr(dd_error_message(), "'gpu'") != NULL, "unknown-name message: \"%s\"",
           dd_error_message());
    CHECK(dd_backend_by_name(NULL) == NULL);
}

int main(void) {
    check_conv("conv_k3_s1_p1");
    check_conv("conv_k4_s2_p1");
    check_conv("conv_k5_s1_p2_nobias");
    check_conv("conv_k1_s1_p0");
    check_conv("conv_k3_s2_p0");
    check_conv("conv_k3_s1_p1_1x1");
    check_group_norm("gn_add_swish");
    check_group_norm("gn_plain");
    check_group_norm("gn_g1_add_swish");
    check_group_norm("gn_swish_odd");
    check_attention("attn_h2");
    check_attention("attn_h4");
    check_attention("attn_p1");
    check_activations();
    check_misc();
    check_adam();
    check_diffusion();
    check_batch_paths();
    check_conv_policies();
    check_blas_threads_restored();
    check_group_norm_moments();
    check_memory_and_select();
    return tu_finish();
}
