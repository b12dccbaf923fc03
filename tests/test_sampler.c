/* Samplers, guidance and training batches, against closed forms.
 *
 * Data x0 ~ N(mu, s^2) per coordinate has the exact noise predictor
 *   eps*(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar),
 * so every sampler step is an affine map of x_t plus Gaussian noise, and the exact mean and
 * variance of each sampler's output can be propagated in double alongside (expected_moments).
 * Two kinds of check use it (n independent values, clipping off):
 *  - implementation (n = 65536): sample mean and variance within 5 standard errors of the exact
 *    moments of the discrete algorithm (SE(mean) = sqrt(v/n), SE(var) = v sqrt(2/(n-1)), 0.6% of
 *    v at this n). A wrong sigma (e.g. sqrt(beta) for DDPM's sqrt(posterior variance)),
 *    coefficient or step time moves the variance by many standard errors (DDIM eta 0 vs 1 at
 *    tau = 10 differ by 20%).
 *  - SPEC's claim (n = 16384): with fine steps (linear, T = 1000; DDPM and DDIM tau = T, eta 0
 *    and 1) the samples' mean and variance match mu and s^2 within 5 standard errors plus 2% of
 *    s^2 for the variance (the discretisation shrinks it by 0.5-1.6% there: with coarse steps DDPM's fixed
 *    posterior variance and DDIM's big steps shrink it far more, 7% at cosine T = 100 and 40% at
 *    DDIM tau = 10, eta 1; the exact moments above account for that).
 *
 * Everything runs on two backends: dd_cpu_backend and a minimal table written here from the
 * comments of backend.h (only memory and the four diffusion ops), which also checks that both
 * draw the same noise from the same (seed, stream, offset). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/diffusion.h"
#include "diffusion/error.h"
#include "diffusion/philox.h"
#include "testutil.h"

/* ---------------------------------------------------------------- minimal backend */

static int mb_alloc(void **p, size_t bytes) {
    *p = calloc(1, bytes ? bytes : 1);
    return *p ? 0 : dd_error("mini backend: out of memory (%zu bytes)", bytes);
}
static void mb_free(void *p) { free(p); }
static int mb_zero(void *p, size_t bytes) { return memset(p, 0, bytes), 0; }
static int mb_memcpy(void *d, const void *s, size_t bytes) { return memmove(d, s, bytes), 0; }
static int mb_sync(void) { return 0; }
static uint64_t mb_offset(dd_rng_at at) { return at.offset + (at.k ? (uint64_t)*at.k * at.stride : 0); }
static int mb_normal(float *out, size_t n, dd_rng_at at) {
    for (size_t i = 0; i < n; i++) out[i] = dd_philox_normal(at.seed, at.stream, mb_offset(at) + i);
    return 0;
}
static int mb_train_draw(int32_t *t, int32_t *lab_out, const int32_t *lab_in, int N, int T,
                         float p_uncond, int32_t generic, dd_rng_at at) {
    const uint64_t o = mb_offset(at);
    for (int i = 0; i < N; i++) {
        t[i] = 1 + (int32_t)dd_philox_below(at.seed, at.stream, o + i, (uint32_t)T);
        if (lab_in)
            lab_out[i] = dd_philox_uniform(at.seed, at.stream, o + N + i) < p_uncond ? generic : lab_in[i];
    }
    return 0;
}
static int mb_q_sample(float *xt, const float *x0, const float *noise, const float *ca,
                       const float *cb, const int32_t *idx, int N, size_t per) {
    for (int s = 0; s < N; s++) {
        const int j = idx ? idx[s] : s;
        for (size_t i = 0; i < per; i++)
            xt[s * per + i] = ca[j] * x0[s * per + i] + cb[j] * noise[s * per + i];
    }
    return 0;
}
static int mb_sampler_step(float *x, float *x0_out, const float *out, const float *uncond, size_t n,
                           float g, int clip, const float *tab, const int64_t *k, dd_rng_at at) {
    const float *r = tab + *k * DD_SAMPLER_COLS;
    for (size_t i = 0; i < n; i++) {
        const float pred = uncond ? uncond[i] + g * (out[i] - uncond[i]) : out[i];
        const float eps = r[DD_SAMPLER_EA] * x[i] + r[DD_SAMPLER_EB] * pred;
        float x0 = r[DD_SAMPLER_RA] * x[i] - r[DD_SAMPLER_RB] * eps;
        if (clip) x0 = x0 < -1.0f ? -1.0f : x0 > 1.0f ? 1.0f : x0;
        if (x0_out) x0_out[i] = x0;
        float v = r[DD_SAMPLER_C0] * x0 + r[DD_SAMPLER_C1] * x[i] + r[DD_SAMPLER_C2] * eps;
        if (r[DD_SAMPLER_SIGMA] != 0.0f)
            v += r[DD_SAMPLER_SIGMA] * dd_philox_normal(at.seed, at.stream, mb_offset(at) + i);
        x[i] = v;
    }
    return 0;
}
static int mb_sampler_advance(int64_t *k, int64_t *noff, int64_t dn, int32_t *t,
                              const int32_t *ttab, int n) {
    ++*k;
    *noff += dn;
    for (int i = 0; i < n; i++) t[i] = ttab[*k];
    return 0;
}
static int mb_counter_add(int64_t *c, int64_t d, const float *guard) {
    if (!guard || isfinite(*guard)) *c += d;
    return 0;
}
static const dd_backend mini_backend = {
    .name = "mini",
    .alloc = mb_alloc,
    .free = mb_free,
    .zero = mb_zero,
    .to_device = mb_memcpy,
    .to_host = mb_memcpy,
    .copy = mb_memcpy,
    .synchronize = mb_sync,
    .counter_add = mb_counter_add,
    .sampler_advance = mb_sampler_advance,
    .normal = mb_normal,
    .train_draw = mb_train_draw,
    .q_sample = mb_q_sample,
    .sampler_step = mb_sampler_step,
};

static const dd_backend *BE; /* the backend under test */

/* ---------------------------------------------------------------- the exact Gaussian model */

typedef struct {
    const dd_schedule *s;
    dd_objective obj;
    double mu, s2;
    float *host; /* (maxB, per) */
    size_t per;
    int calls;
} gauss_model;

static int gauss_fn(void *ctx, float *out, const float *x, const int32_t *t, const int32_t *labels,
                    int B) {
    gauss_model *g = ctx;
    (void)labels;
    g->calls++;
    const size_t n = (size_t)B * g->per;
    DD_TRY(BE->to_host(g->host, x, n * sizeof(float)));
    for (int b = 0; b < B; b++) {
        const double a = g->s->abar64[t[b]], sa = sqrt(a), sb = sqrt(1 - a);
        const double V = a * g->s2 + 1 - a;
        for (size_t i = 0; i < g->per; i++) {
            const double r = (g->host[b * g->per + i] - sa * g->mu) / V;
            const double eps = sb * r, x0 = g->mu + sa * g->s2 * r;
            const double o = g->obj == DD_OBJECTIVE_EPS ? eps
                             : g->obj == DD_OBJECTIVE_X0 ? x0
                                                         : sa * eps - sb * x0;
            g->host[b * g->per + i] = (float)o;
        }
    }
    return BE->to_device(out, g->host, n * sizeof(float));
}

/* Exact output moments of DDPM (tau = 0) or DDIM(tau, eta) driven by eps*, from x_T ~ N(0, 1),
 * no clipping: each step maps x to A x + C (+ noise of variance q). */
static void expected_moments(const dd_schedule *s, double mu, double s2, int tau, double eta,
                             double *mean, double *var) {
    double m = 0, v = 1;
    const int T = s->T;
    int *times = malloc(((size_t)(tau ? tau : T) + 1) * sizeof(int));
    if (tau) {
        dd_ddim_times(T, tau, times);
    } else {
        for (int i = 0; i <= T; i++) times[i] = T - i; /* DDPM: t -> t - 1 */
    }
    const int steps = tau ? tau : T;
    for (int k = 0; k < steps; k++) {
        const int t = times[k], tn = times[k + 1];
        const double a = s->abar64[t], sa = sqrt(a), sb = sqrt(1 - a), V = a * s2 + 1 - a;
        /* x0hat = mu + sa s2 (x - sa mu)/V, epshat = sb (x - sa mu)/V */
        const double x0A = sa * s2 / V, x0C = mu - sa * sa * s2 * mu / V;
        const double eA = sb / V, eC = -sb * sa * mu / V;
        double A, C, q;
        if (!tau) {
            const double beta = 1 - a / s->abar64[t - 1], ap = s->abar64[t - 1];
            const double c1 = beta * sqrt(ap) / (1 - a), c2 = (1 - ap) * sqrt(1 - beta) / (1 - a);
            A = c1 * x0A + c2;
            C = c1 * x0C;
            q = t > 1 ? beta * (1 - ap) / (1 - a) : 0;
        } else {
            const double an = s->abar64[tn];
            const double sig = eta * sqrt(fmax(0, 1 - a / an) * (1 - an) / (1 - a));
            const double c = sqrt(fmax(0, 1 - an - sig * sig));
            A = sqrt(an) * x0A + c * eA;
            C = sqrt(an) * x0C + c * eC;
            q = tn != 1 ? sig * sig : 0;
        }
        m = A * m + C;
        v = A * A * v + q;
    }
    free(times);
    *mean = m, *var = v;
}

static void moments(const float *x, size_t n, double *mean, double *var) {
    double m = 0, v = 0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
    *mean = m, *var = v / (double)(n - 1);
}

enum { GB = 256, GPER = 64 }; /* 16384 values: the 1000-step runs */
enum { GB_BIG = 1024 };        /* 65536 values: the coarse runs, cheap and sharper */

/* Run one sampler on the Gaussian model; returns the samples (host, nb*GPER), caller frees. */
static float *run_gauss_b(const dd_schedule *s, dd_objective obj, int tau, float eta,
                          uint64_t seed, int nb);
static float *run_gauss(const dd_schedule *s, dd_objective obj, int tau, float eta, uint64_t seed) {
    return run_gauss_b(s, obj, tau, eta, seed, GB);
}
static float *run_gauss_b(const dd_schedule *s, dd_objective obj, int tau, float eta,
                          uint64_t seed, int nb) {
    gauss_model g = {.s = s, .obj = obj, .mu = 0.3, .s2 = 0.25, .per = GPER};
    g.host = malloc((size_t)2 * nb * GPER * sizeof(float));
    float *out = malloc((size_t)nb * GPER * sizeof(float));
    dd_denoiser m = {.fn = gauss_fn, .ctx = &g, .objective = obj};
    dd_sample_opts o = dd_sample_opts_default(nb, GPER);
    o.clip = 0;
    o.rng = (dd_rng){seed, 3, 0};
    int rc = tau ? dd_sample_ddim(BE, s, &m, &o, tau, eta, out) : dd_sample_ddpm(BE, s, &m, &o, out);
    CHECK_OK(rc);
    CHECKF(g.calls == (tau ? tau : s->T), "%d model calls", g.calls);
    /* x_T plus one block of addresses per step */
    CHECK(o.rng.offset == (uint64_t)(1 + (tau ? tau : s->T)) * nb * GPER);
    free(g.host);
    return out;
}

static void check_gauss(const dd_schedule *s, int tau, float eta, int against_data) {
    const int B = against_data ? GB : GB_BIG;
    const size_t n = (size_t)B * GPER;
    float *x = run_gauss_b(s, DD_OBJECTIVE_EPS, tau, eta, 11, B);
    double m, v, em, ev;
    moments(x, n, &m, &v);
    expected_moments(s, 0.3, 0.25, tau, eta, &em, &ev);
    const double se_m = sqrt(ev / n), se_v = ev * sqrt(2.0 / (n - 1));
    const char *name = tau ? "DDIM" : "DDPM";
    printf("  %s %-7s T=%-4d tau=%-4d eta=%.0f n=%-6zu: mean %.5f (exact %.5f), var %.5f "
           "(exact %.5f)\n",
           name, dd_schedule_kind_name(s->kind), s->T, tau, (double)eta, n, m, em, v, ev);
    CHECKF(fabs(m - em) < 5 * se_m, "%s tau %d eta %g: mean %g vs exact %g (5 SE = %g)", name, tau,
           (double)eta, m, em, 5 * se_m);
    CHECKF(fabs(v - ev) < 5 * se_v, "%s tau %d eta %g: var %g vs exact %g (5 SE = %g)", name, tau,
           (double)eta, v, ev, 5 * se_v);
    if (against_data) {
        const double se_m0 = sqrt(0.25 / n), se_v0 = 0.25 * sqrt(2.0 / (n - 1));
        CHECKF(fabs(m - 0.3) < 5 * se_m0, "%s: mean %g vs mu 0.3", name, m);
        CHECKF(fabs(v - 0.25) < 5 * se_v0 + 0.02 * 0.25, "%s: var %g vs s^2 0.25", name, v);
    }
    free(x);
}

/* full: also the 1000-step runs. Those go to the minimal backend only: dd_cpu_backend's OpenMP
 * regions, thousands of them on a loaded 2-core machine, cost seconds of spinning, and
 * test_backends_agree shows that both backends give the same bits. */
static void test_gaussian_samplers(int full) {
    dd_schedule cos100, lin1000;
    CHECK_OK(dd_schedule_init(&cos100, DD_SCHEDULE_COSINE, 100, 0, 0));
    CHECK_OK(dd_schedule_init(&lin1000, DD_SCHEDULE_LINEAR, 1000, 0, 0));
    /* the discrete algorithms, exactly */
    check_gauss(&cos100, 0, 0, 0);
    check_gauss(&cos100, 10, 0.0f, 0);
    check_gauss(&cos100, 10, 1.0f, 0);
    check_gauss(&cos100, 20, 0.0f, 0);
    check_gauss(&cos100, 20, 1.0f, 0);
    /* SPEC's claim, in the fine-step limit */
    if (full) {
        check_gauss(&lin1000, 0, 0, 1);
        check_gauss(&lin1000, 1000, 0.0f, 1);
        check_gauss(&lin1000, 1000, 1.0f, 1);
    }

    /* every objective drives every sampler to the same samples (deterministic DDIM exactly up to
     * rounding; DDPM too, as the noise addresses are the same) */
    const size_t n = (size_t)GB * GPER;
    float *ref = run_gauss(&cos100, DD_OBJECTIVE_EPS, 20, 0.0f, 5);
    float *ref_p = run_gauss(&cos100, DD_OBJECTIVE_EPS, 0, 0.0f, 5);
    for (int obj = DD_OBJECTIVE_X0; obj <= DD_OBJECTIVE_V; obj++) {
        float *x = run_gauss(&cos100, (dd_objective)obj, 20, 0.0f, 5);
        double e = tu_rel_err(x, ref, n);
        CHECKF(e < 1e-4, "DDIM objective %s vs eps: rel err %g", dd_objective_name(obj), e);
        free(x);
        x = run_gauss(&cos100, (dd_objective)obj, 0, 0.0f, 5);
        e = tu_rel_err(x, ref_p, n);
        CHECKF(e < 1e-4, "DDPM objective %s vs eps: rel err %g", dd_objective_name(obj), e);
        free(x);
    }
    free(ref);
    free(ref_p);
    dd_schedule_free(&cos100);
    dd_schedule_free(&lin1000);
}

/* ---------------------------------------------------------------- the last DDPM step */

typedef struct {
    float *prev_x, *x, *x0; /* host (n) */
    size_t n;
    int calls, last_t, order_ok, first_t;
} step_rec;

static int record_step(void *ctx, int step, int nsteps, int t, const float *x, const float *x0,
                       int B, size_t per) {
    step_rec *r = ctx;
    if (r->calls == 0) r->first_t = t;
    if (step != r->calls || (r->calls && t >= r->last_t) || (size_t)B * per != r->n || nsteps < 1)
        r->order_ok = 0;
    r->calls++;
    r->last_t = t;
    memcpy(r->prev_x, r->x, r->n * sizeof(float));
    DD_TRY(BE->to_host(r->x, x, r->n * sizeof(float)));
    return BE->to_host(r->x0, x0, r->n * sizeof(float));
}

static int failing_step(void *ctx, int step, int nsteps, int t, const float *x, const float *x0,
                        int B, size_t per) {
    (void)ctx, (void)nsteps, (void)t, (void)x, (void)x0, (void)B, (void)per;
    return step == 1 ? dd_error("stop here") : 0;
}

/* eps = -4 x: x0 estimates = (ra + 4 rb) x, outside [-1, 1] for part of x_1, so clipping
 * matters */
static int twice_fn(void *ctx, float *out, const float *x, const int32_t *t, const int32_t *labels,
                    int B) {
    size_t per = *(size_t *)ctx;
    (void)t, (void)labels;
    float *h = malloc((size_t)B * per * sizeof(float));
    DD_TRY(BE->to_host(h, x, (size_t)B * per * sizeof(float)));
    for (size_t i = 0; i < (size_t)B * per; i++) h[i] *= -4.0f;
    int rc = BE->to_device(out, h, (size_t)B * per * sizeof(float));
    free(h);
    return rc;
}

static void test_last_step(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 5, 0, 0));
    size_t per = 50;
    const int B = 4;
    step_rec r = {.n = B * per, .order_ok = 1};
    r.prev_x = calloc(r.n, sizeof(float)), r.x = calloc(r.n, sizeof(float));
    r.x0 = calloc(r.n, sizeof(float));
    float *out = malloc(r.n * sizeof(float));
    dd_denoiser m = {.fn = twice_fn, .ctx = &per};
    dd_sample_opts o = dd_sample_opts_default(B, per);
    o.rng = (dd_rng){7, 0, 0};
    o.on_step = record_step;
    o.step_ctx = &r;
    CHECK_OK(dd_sample_ddpm(BE, &s, &m, &o, out));
    CHECKF(r.calls == 5 && r.order_ok && r.first_t == 5 && r.last_t == 1,
           "step callback: %d calls, order %d, t %d..%d", r.calls, r.order_ok, r.first_t, r.last_t);
    /* x_1 (after the t = 2 step) -> clip(ra x_1 - rb (-4 x_1)), exactly, no noise */
    int exact = 1, clipped = 0;
    const float ra = s.sqrt_recip_abar[1], rb = s.sqrt_recipm1_abar[1];
    for (size_t i = 0; i < r.n; i++) {
        float x0 = ra * r.prev_x[i] - rb * (-4.0f * r.prev_x[i]);
        x0 = x0 < -1.0f ? -1.0f : x0 > 1.0f ? 1.0f : x0;
        clipped += fabsf(x0) == 1.0f;
        if (fabsf(out[i] - x0) > 1e-6f || out[i] != r.x0[i] || out[i] != r.x[i]) exact = 0;
    }
    CHECKF(exact, "the t = 1 step is not the clipped x0 estimate");
    CHECKF(clipped > 0 && clipped < (int)r.n, "%d of %zu values clipped", clipped, r.n);
    /* same seed, same samples; another seed, others */
    float *again = malloc(r.n * sizeof(float));
    o.rng = (dd_rng){7, 0, 0};
    o.on_step = NULL;
    CHECK_OK(dd_sample_ddpm(BE, &s, &m, &o, again));
    CHECK(memcmp(again, out, r.n * sizeof(float)) == 0);
    o.rng = (dd_rng){8, 0, 0};
    CHECK_OK(dd_sample_ddpm(BE, &s, &m, &o, again));
    CHECK(memcmp(again, out, r.n * sizeof(float)) != 0);
    /* the ready-made recorder: T frames, the last one has x = x0 estimate = the result */
    float *xs = malloc(5 * r.n * sizeof(float)), *x0s = malloc(5 * r.n * sizeof(float));
    dd_step_recorder rec = {.be = BE, .xs = xs, .x0s = x0s, .capacity = 5};
    o.rng = (dd_rng){7, 0, 0};
    o.on_step = dd_step_record;
    o.step_ctx = &rec;
    CHECK_OK(dd_sample_ddpm(BE, &s, &m, &o, again));
    CHECK(rec.frames == 5 && memcmp(again, out, r.n * sizeof(float)) == 0);
    CHECK(memcmp(xs + 4 * r.n, out, r.n * sizeof(float)) == 0);
    CHECK(memcmp(x0s + 4 * r.n, out, r.n * sizeof(float)) == 0);
    CHECK(memcmp(xs + 3 * r.n, r.prev_x, r.n * sizeof(float)) == 0); /* x_1 */
    rec.capacity = 4; /* too small: refused, not overrun */
    CHECK(dd_sample_ddpm(BE, &s, &m, &o, again) == -1);
    free(xs), free(x0s);
    /* a callback that fails stops the run with its message */
    o.on_step = failing_step;
    dd_error_clear();
    CHECK(dd_sample_ddim(BE, &s, &m, &o, 3, 0.0f, again) == -1);
    CHECKF(strstr(dd_error_message(), "stop here") != NULL, "%s", dd_error_message());
    free(again), free(out), free(r.prev_x), free(r.x), free(r.x0);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- guidance */

enum { MAXCALLS = 64 };
typedef struct {
    size_t per;
    int generic;
    int calls, batch[MAXCALLS], t0[MAXCALLS];
    int32_t labels[MAXCALLS][16];
    int halves_equal[MAXCALLS];
    /* for the "manual" wrappers */
    const int32_t *fixed_labels;
    float g;
    int manual_guidance;
} rec_model;

/* Some deterministic function of (x, t, label) for each value. */
static float fmodel(float x, int t, int label, size_t i) {
    return 0.3f * x + 0.01f * (float)t - 0.05f * (float)label + 0.001f * (float)(i % 7);
}

static int recording_fn(void *ctx, float *out, const float *x, const int32_t *t,
                        const int32_t *labels, int B) {
    rec_model *r = ctx;
    const size_t n = (size_t)B * r->per;
    float *h = malloc(n * sizeof(float));
    DD_TRY(BE->to_host(h, x, n * sizeof(float)));
    if (r->calls < MAXCALLS) {
        r->batch[r->calls] = B;
        r->t0[r->calls] = t[0];
        for (int b = 0; b < B && b < 16; b++) r->labels[r->calls][b] = labels ? labels[b] : -7;
        r->halves_equal[r->calls] = B % 2 == 0 && !memcmp(h, h + n / 2, n / 2 * sizeof(float));
    }
    r->calls++;
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < r->per; i++)
            h[b * r->per + i] = fmodel(h[b * r->per + i], t[b], labels ? labels[b] : 0, i);
    int rc = BE->to_device(out, h, n * sizeof(float));
    free(h);
    return rc;
}

/* An "unconditional" wrapper that applies the labels itself: the plain conditional pass
 * (manual_guidance 0) or the guidance formula computed here on the host (manual_guidance 1). */
static int manual_fn(void *ctx, float *out, const float *x, const int32_t *t,
                     const int32_t *labels, int B) {
    rec_model *r = ctx;
    (void)labels;
    const size_t n = (size_t)B * r->per;
    float *h = malloc(n * sizeof(float));
    DD_TRY(BE->to_host(h, x, n * sizeof(float)));
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < r->per; i++) {
            float xv = h[b * r->per + i];
            float c = fmodel(xv, t[b], r->fixed_labels[b], i);
            if (r->manual_guidance) {
                float u = fmodel(xv, t[b], r->generic, i);
                c = u + r->g * (c - u);
            }
            h[b * r->per + i] = c;
        }
    int rc = BE->to_device(out, h, n * sizeof(float));
    free(h);
    return rc;
}

static void test_guidance(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 10, 0, 0));
    const int B = 6;
    const size_t per = 20, n = B * per;
    const int32_t labels[6] = {0, 1, 2, 3, 4, 2};
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));

    for (int ddim = 0; ddim < 2; ddim++) {
        const int steps = ddim ? 5 : 10;
        /* g = 1: one model call of batch B per step with the labels, and exactly the plain
         * conditional pass */
        rec_model r = {.per = per, .generic = 5};
        dd_denoiser m = {.fn = recording_fn, .ctx = &r, .num_classes = 5, .generic_label = 5};
        dd_sample_opts o = dd_sample_opts_default(B, per);
        o.labels = labels;
        o.rng = (dd_rng){21, 4, 0};
        CHECK_OK(ddim ? dd_sample_ddim(BE, &s, &m, &o, 5, 1.0f, a) : dd_sample_ddpm(BE, &s, &m, &o, a));
        CHECKF(r.calls == steps, "g = 1: %d calls for %d steps", r.calls, steps);
        int ok = 1;
        for (int c = 0; c < r.calls && c < MAXCALLS; c++) {
            ok &= r.batch[c] == B;
            for (int i = 0; i < B; i++) ok &= r.labels[c][i] == labels[i];
        }
        CHECKF(ok, "g = 1: every call has batch %d and the labels", B);
        CHECK(r.t0[0] == 10 && r.t0[r.calls - 1] == (ddim ? 2 : 1)); /* DDIM: 10 8 6 4 2 (1) */

        rec_model w = {.per = per, .generic = 5, .fixed_labels = labels};
        dd_denoiser plain = {.fn = manual_fn, .ctx = &w};
        o.labels = NULL;
        o.rng = (dd_rng){21, 4, 0};
        CHECK_OK(ddim ? dd_sample_ddim(BE, &s, &plain, &o, 5, 1.0f, b)
                      : dd_sample_ddpm(BE, &s, &plain, &o, b));
        CHECKF(memcmp(a, b, n * sizeof(float)) == 0, "g = 1 differs from the plain conditional pass");

        /* g = 2.5: one call of batch 2B per step, second half generic, same x in both halves;
         * eps = uncond + g (cond - uncond) */
        rec_model r2 = {.per = per, .generic = 5};
        m.ctx = &r2;
        o.labels = labels;
        o.guidance = 2.5f;
        o.rng = (dd_rng){21, 4, 0};
        CHECK_OK(ddim ? dd_sample_ddim(BE, &s, &m, &o, 5, 1.0f, a) : dd_sample_ddpm(BE, &s, &m, &o, a));
        CHECKF(r2.calls == steps, "g = 2.5: %d calls for %d steps", r2.calls, steps);
        ok = 1;
        for (int c = 0; c < r2.calls && c < MAXCALLS; c++) {
            ok &= r2.batch[c] == 2 * B && r2.halves_equal[c];
            for (int i = 0; i < B; i++) ok &= r2.labels[c][i] == labels[i];
            for (int i = B; i < 2 * B; i++) ok &= r2.labels[c][i] == 5;
        }
        CHECKF(ok, "g = 2.5: every call has batch 2B, the labels then the generic label, x twice");
        rec_model w2 = {.per = per, .generic = 5, .fixed_labels = labels, .g = 2.5f,
                        .manual_guidance = 1};
        plain.ctx = &w2;
        o.labels = NULL;
        o.guidance = 1.0f;
        o.rng = (dd_rng){21, 4, 0};
        CHECK_OK(ddim ? dd_sample_ddim(BE, &s, &plain, &o, 5, 1.0f, b)
                      : dd_sample_ddpm(BE, &s, &plain, &o, b));
        double e = tu_rel_err(a, b, n);
        CHECKF(e < 1e-6, "guided run vs the formula applied by hand: rel err %g", e);

        /* one label for all = the same label per sample */
        const int32_t same[6] = {3, 3, 3, 3, 3, 3};
        o = dd_sample_opts_default(B, per);
        o.guidance = 2.0f;
        o.labels = same;
        o.rng = (dd_rng){2, 0, 0};
        CHECK_OK(ddim ? dd_sample_ddim(BE, &s, &m, &o, 5, 0.5f, a) : dd_sample_ddpm(BE, &s, &m, &o, a));
        o.labels = NULL;
        o.label = 3;
        o.rng = (dd_rng){2, 0, 0};
        CHECK_OK(ddim ? dd_sample_ddim(BE, &s, &m, &o, 5, 0.5f, b) : dd_sample_ddpm(BE, &s, &m, &o, b));
        CHECK(memcmp(a, b, n * sizeof(float)) == 0);
    }

    /* refusals */
    rec_model r = {.per = per, .generic = 5};
    dd_denoiser uncond = {.fn = recording_fn, .ctx = &r};
    dd_sample_opts o = dd_sample_opts_default(B, per);
    o.guidance = 2.0f;
    dd_error_clear();
    CHECK(dd_sample_ddpm(BE, &s, &uncond, &o, a) == -1);
    CHECKF(strstr(dd_error_message(), "needs a conditional model") != NULL, "%s", dd_error_message());
    CHECK(r.calls == 0);
    o.guidance = 1.0f;
    o.label = 2;
    CHECK(dd_sample_ddim(BE, &s, &uncond, &o, 5, 0.0f, a) == -1);
    CHECKF(strstr(dd_error_message(), "unconditional") != NULL, "%s", dd_error_message());
    dd_denoiser cond = {.fn = recording_fn, .ctx = &r, .num_classes = 5, .generic_label = 5};
    o.label = 9;
    CHECK(dd_sample_ddpm(BE, &s, &cond, &o, a) == -1);
    o.label = -1;
    o.guidance = 3.0f;
    CHECK(dd_sample_ddpm(BE, &s, &cond, &o, a) == -1); /* guidance without labels */
    o.guidance = 1.0f;
    CHECK(dd_sample_ddim(BE, &s, &cond, &o, 11, 0.0f, a) == -1); /* tau > T */
    CHECKF(strstr(dd_error_message(), "tau must be <= T") != NULL, "%s", dd_error_message());
    CHECK(r.calls == 0);
    /* a conditional model without labels samples unconditioned: every label generic */
    CHECK_OK(dd_sample_ddim(BE, &s, &cond, &o, 2, 0.0f, a));
    CHECK(r.calls == 2 && r.labels[0][0] == 5 && r.labels[1][B - 1] == 5);
    free(a), free(b);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- training batches */

static void test_train_batch(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 4, 0, 0));
    const int B = 4096;
    const size_t per = 16, n = (size_t)B * per;
    const double mu = 0.3, sd = 0.5;
    float *x0h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x0h[i] = (float)(mu + sd * dd_philox_normal(99, 0, i));
    float *x0;
    CHECK_OK(BE->alloc((void **)&x0, n * sizeof(float)));
    CHECK_OK(BE->to_device(x0, x0h, n * sizeof(float)));
    int32_t *labels_h = malloc(B * sizeof(int32_t)), *labels;
    for (int i = 0; i < B; i++) labels_h[i] = i % 3;
    CHECK_OK(BE->alloc((void **)&labels, B * sizeof(int32_t)));
    CHECK_OK(BE->to_device(labels, labels_h, B * sizeof(int32_t)));
    float *xt = malloc(n * sizeof(float)), *tg = malloc(n * sizeof(float));
    float *z = malloc(n * sizeof(float));
    int32_t *tt = malloc(B * sizeof(int32_t)), *tl = malloc(B * sizeof(int32_t));
    /* the batch's step from a counter in backend memory: step 2 */
    int64_t *kstep, two = 2;
    CHECK_OK(BE->alloc((void **)&kstep, sizeof *kstep));
    CHECK_OK(BE->to_device(kstep, &two, sizeof two));

    for (int obj = 0; obj < DD_OBJECTIVE_COUNT; obj++) {
        dd_train_batch tb;
        CHECK_OK(dd_train_batch_init(&tb, BE, &s, (dd_objective)obj, B, per));
        const uint64_t stride = dd_train_batch_stride(&tb), o = 5 + 2 * stride;
        CHECK(stride == 2 * (uint64_t)B + n);
        dd_rng_at at = {1234, 1, 5, kstep, stride};
        CHECK_OK(dd_train_batch_make(&tb, x0, labels, 3, 0.2f, at));
        CHECK_OK(BE->to_host(xt, tb.xt, n * sizeof(float)));
        CHECK_OK(BE->to_host(tg, tb.target, n * sizeof(float)));
        CHECK_OK(BE->to_host(z, tb.noise, n * sizeof(float)));
        CHECK_OK(BE->to_host(tt, tb.t, B * sizeof(int32_t)));
        CHECK_OK(BE->to_host(tl, tb.labels, B * sizeof(int32_t)));
        /* t uniform in 1..T; labels dropped with probability 0.2, otherwise kept */
        int count[5] = {0}, dropped = 0, wrong = 0;
        for (int i = 0; i < B; i++) {
            if (tt[i] >= 1 && tt[i] <= 4) count[tt[i]]++;
            else wrong++;
            if (tt[i] != 1 + (int)dd_philox_below(1234, 1, o + i, 4)) wrong++; /* its address */
            if (tl[i] == 3) dropped++;
            else if (tl[i] != labels_h[i]) wrong++;
        }
        CHECK(wrong == 0);
        for (int t = 1; t <= 4; t++) /* binomial(4096, 1/4): sd 27.7 */
            CHECKF(fabs(count[t] - B / 4.0) < 5 * 27.7, "t = %d drawn %d times", t, count[t]);
        CHECKF(fabs(dropped - 0.2 * B) < 5 * sqrt(0.16 * B), "%d labels dropped", dropped);
        /* noise is the Philox stream after t and the drops; q_sample's and the target's maths */
        double werr = 0;
        for (int i = 0; i < B; i++) {
            const int t = tt[i];
            const double sa = sqrt(s.abar64[t]), sb = sqrt(1 - s.abar64[t]);
            for (size_t k = 0; k < per; k++) {
                const size_t j = (size_t)i * per + k;
                if (z[j] != dd_philox_normal(1234, 1, o + 2 * (uint64_t)B + j)) werr = 1;
                werr = fmax(werr, fabs(xt[j] - (sa * x0h[j] + sb * z[j])));
                const double want = obj == DD_OBJECTIVE_EPS ? z[j]
                                    : obj == DD_OBJECTIVE_X0 ? x0h[j]
                                                             : sa * z[j] - sb * x0h[j];
                werr = fmax(werr, fabs(tg[j] - want));
            }
        }
        CHECKF(werr < 1e-6, "objective %s: x_t / target error %g", dd_objective_name(obj), werr);
        /* q_sample's statistics per t: mean sqrt(abar) mu, variance abar s^2 + 1 - abar */
        if (obj == DD_OBJECTIVE_EPS)
            for (int t = 1; t <= 4; t++) {
                double m = 0, v = 0, cnt = 0;
                for (int i = 0; i < B; i++)
                    if (tt[i] == t)
                        for (size_t k = 0; k < per; k++) m += xt[(size_t)i * per + k], cnt++;
                m /= cnt;
                for (int i = 0; i < B; i++)
                    if (tt[i] == t)
                        for (size_t k = 0; k < per; k++) {
                            double d = xt[(size_t)i * per + k] - m;
                            v += d * d;
                        }
                v /= cnt - 1;
                const double a = s.abar64[t], em = sqrt(a) * mu, ev = a * sd * sd + 1 - a;
                printf("  q_sample t=%d: mean %.4f (exact %.4f), var %.4f (exact %.4f), %g values\n",
                       t, m, em, v, ev, cnt);
                CHECKF(fabs(m - em) < 5 * sqrt(ev / cnt), "q_sample t = %d mean %g vs %g", t, m, em);
                CHECKF(fabs(v - ev) < 5 * ev * sqrt(2 / (cnt - 1)), "q_sample t = %d var %g vs %g",
                       t, v, ev);
            }
        /* the converters invert the target: (x_t, target) -> noise and x0 */
        if (obj != DD_OBJECTIVE_EPS) {
            float *e_dev, *coef, coef_h[2 * 4096];
            CHECK_OK(BE->alloc((void **)&e_dev, n * sizeof(float)));
            CHECK_OK(BE->alloc((void **)&coef, 2 * (size_t)B * sizeof(float)));
            CHECK_OK(dd_output_to_eps(BE, &s, (dd_objective)obj, e_dev, tb.target, tb.xt, tt, B,
                                      per, coef, coef_h));
            float *e = malloc(n * sizeof(float));
            CHECK_OK(BE->to_host(e, e_dev, n * sizeof(float)));
            double ee = 0;
            for (size_t j = 0; j < n; j++) ee = fmax(ee, fabs(e[j] - z[j]));
            CHECK_OK(dd_output_to_x0(BE, &s, (dd_objective)obj, e_dev, tb.target, tb.xt, tt, B,
                                     per, coef, coef_h));
            CHECK_OK(BE->to_host(e, e_dev, n * sizeof(float)));
            double xe = 0;
            for (size_t j = 0; j < n; j++) xe = fmax(xe, fabs(e[j] - x0h[j]));
            /* at T = 4 the smallest sqrt(1 - abar) is 0.5: errors stay at float rounding */
            CHECKF(ee < 1e-5 && xe < 1e-5, "objective %s: eps error %g, x0 error %g",
                   dd_objective_name(obj), ee, xe);
            free(e);
            BE->free(e_dev);
            BE->free(coef);
        }
        /* unconditional: the same t and noise addresses, no labels; prob_uncond 1 drops all */
        CHECK_OK(dd_train_batch_make(&tb, x0, NULL, 3, 0.2f, at));
        CHECK_OK(BE->to_host(xt, tb.noise, n * sizeof(float)));
        CHECK(!memcmp(xt, z, n * sizeof(float)));
        CHECK_OK(dd_train_batch_make(&tb, x0, labels, 3, 1.0f, at));
        CHECK_OK(BE->to_host(tl, tb.labels, B * sizeof(int32_t)));
        int all = 1;
        for (int i = 0; i < B; i++) all &= tl[i] == 3;
        CHECK(all);
        CHECK(dd_train_batch_make(&tb, x0, labels, 3, 1.5f, at) == -1);
        dd_train_batch_free(&tb);
    }
    BE->free(x0);
    BE->free(labels);
    BE->free(kstep);
    free(x0h), free(labels_h), free(xt), free(tg), free(z), free(tt), free(tl);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- the sampler cache */

/* Runs that share a dd_sample_cache give the same bits as runs that do not: consecutive batches
 * continuing one Philox stream (as the FLD evaluation does), guided and not, DDIM and DDPM, and
 * a change of shape in between (the cache must rebuild, not reuse a too-small buffer). */
/* the Gaussian model, plus 0.01 * label: so that stale labels would show */
static int labelled_fn(void *ctx, float *out, const float *x, const int32_t *t,
                       const int32_t *labels, int B) {
    gauss_model *g = ctx;
    DD_TRY(gauss_fn(ctx, out, x, t, labels, B));
    DD_TRY(BE->to_host(g->host, out, (size_t)B * g->per * sizeof(float)));
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < g->per; i++) g->host[b * g->per + i] += 0.01f * (float)labels[b];
    return BE->to_device(out, g->host, (size_t)B * g->per * sizeof(float));
}

static void test_cache(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 12, 0, 0));
    enum { MAXB = 6 };
    gauss_model g = {.s = &s, .obj = DD_OBJECTIVE_V, .mu = 0.3, .s2 = 0.25, .per = GPER};
    g.host = malloc((size_t)2 * MAXB * GPER * sizeof(float));
    dd_denoiser m = {.fn = labelled_fn, .ctx = &g, .objective = DD_OBJECTIVE_V, .num_classes = 3,
                     .generic_label = 3};
    const struct {
        int B, tau;
        float guidance;
        int32_t label;
    } runs[] = {{4, 5, 1.0f, -1}, {4, 5, 1.0f, 2}, {4, 5, 2.5f, 1}, {4, 5, 2.5f, 0},
                {6, 5, 2.5f, 0},  {6, 0, 2.5f, 2}, {6, 0, 2.5f, 1}, {4, 5, 1.0f, -1}};
    const int nr = (int)(sizeof runs / sizeof runs[0]);
    float *a = malloc((size_t)MAXB * GPER * sizeof(float)), *b = malloc((size_t)MAXB * GPER * sizeof(float));
    dd_sample_cache *cache = dd_sample_cache_new();
    CHECK(cache != NULL);
    dd_rng ra = {5, 0, 0}, rb = ra;
    for (int i = 0; i < nr; i++) {
        for (int with = 0; with < 2; with++) {
            dd_sample_opts o = dd_sample_opts_default(runs[i].B, GPER);
            o.guidance = runs[i].guidance;
            o.label = runs[i].label;
            o.rng = with ? rb : ra;
            o.cache = with ? cache : NULL;
            float *out = with ? b : a;
            CHECK_OK(runs[i].tau ? dd_sample_ddim(BE, &s, &m, &o, runs[i].tau, 0.5f, out)
                                 : dd_sample_ddpm(BE, &s, &m, &o, out));
            if (with) rb = o.rng;
            else ra = o.rng;
        }
        CHECKF(!memcmp(a, b, (size_t)runs[i].B * GPER * sizeof(float)) && ra.offset == rb.offset,
               "run %d: a cached sampler gives other samples", i);
    }
    dd_sample_cache_free(cache);
    dd_sample_cache_free(NULL);
    free(a), free(b), free(g.host);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- two backends, same numbers */

static void test_backends_agree(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 100, 0, 0));
    const size_t n = (size_t)GB * GPER;
    const dd_backend *keep = BE;
    BE = &mini_backend;
    float *a = run_gauss(&s, DD_OBJECTIVE_EPS, 0, 0, 77);
    float *c = run_gauss(&s, DD_OBJECTIVE_V, 10, 0.5f, 77);
    BE = &dd_cpu_backend;
    float *b = run_gauss(&s, DD_OBJECTIVE_EPS, 0, 0, 77);
    float *d = run_gauss(&s, DD_OBJECTIVE_V, 10, 0.5f, 77);
    BE = keep;
    double e1 = tu_rel_err(b, a, n), e2 = tu_rel_err(d, c, n);
    printf("  cpu vs mini backend: DDPM rel err %.2e, DDIM rel err %.2e\n", e1, e2);
    CHECKF(e1 < 1e-5 && e2 < 1e-5, "cpu and mini backends differ: %g %g", e1, e2);
    free(a), free(b), free(c), free(d);
    dd_schedule_free(&s);
}

int main(void) {
    const dd_backend *bes[] = {&dd_cpu_backend, &mini_backend};
    for (int k = 0; k < 2; k++) {
        BE = bes[k];
        printf("backend %s\n", BE->name);
        test_gaussian_samplers(BE == &mini_backend);
        test_last_step();
        test_guidance();
        test_train_batch();
        test_cache();
    }
    test_backends_agree();
    return tu_finish();
}
