/* DDPM (p_sample_loop, p_sample_loop_all) and DDIM samplers with classifier-free guidance
 * (../shared/SPEC.md). The host computes every step's scalars once, in double, into a table in
 * backend memory (one row per step, DD_SAMPLER_COLS floats, plus the step's t); a step is then
 * the same backend calls every time, reading its row through a step counter in backend memory:
 * sampler_advance (counter += 1, the noise address += n, broadcast t), the model (one call of B,
 * or 2B with guidance), one fused sampler_step (guidance, the objective's conversion, x0
 * estimate, clamp, update, noise). So nothing goes
 * back to the host inside the loop, and on CUDA the whole step is recorded once as a CUDA graph
 * and replayed (dd_replay). Buffers are allocated once per run, nothing per step. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/diffusion.h"
#include "diffusion/error.h"
#include "diffusion/replay.h"

dd_sample_opts dd_sample_opts_default(int B, size_t per) {
    dd_sample_opts o;
    memset(&o, 0, sizeof o);
    o.B = B;
    o.per = per;
    o.clip = 1;
    o.label = -1;
    o.guidance = 1.0f;
    return o;
}

/* One run's memory. Guided runs feed the model a batch of 2B: the first half conditioned on
 * the labels, the second on the generic label. A dd_sample_cache keeps it (and the recorded
 * step) for the next run of the same shape. */
typedef struct {
    const dd_backend *be;
    dd_denoiser model; /* a copy: the caller's struct may not outlive the run */
    const dd_denoiser *m; /* &model */
    int B, nb, guided, conditional, clip, steps;
    float g;
    size_t per, n;  /* n = B * per */
    float *x;       /* backend (B, per): the chain (guided: the first half of xin) */
    float *x0;      /* backend (B, per): x0 estimate of the last step */
    float *xin;     /* backend (2B, per), guided only: x, then its copy for the second half */
    float *out;     /* backend (nb, per): model output */
    int32_t *t;     /* backend (nb): this step's t for every sample */
    int32_t *lab;   /* backend (nb), conditional models only */
    float *tab;     /* backend (steps, DD_SAMPLER_COLS): every step's scalars */
    int32_t *ttab;  /* backend (steps): every step's t */
    int64_t *k;     /* backend (1): the step counter (the table row), -1 before the first */
    int64_t *noff;  /* backend (1): the Philox offset of this step's noise, += n a step */
    int *t_host;    /* host (steps): every step's t, for the step callback */
    dd_rng_at noise; /* step k's noise: (seed, stream) at *noff */
    dd_replay rp;
} run;

struct dd_sample_cache {
    run r;
    int used; /* r holds a run's buffers */
};

static void run_free(run *r) {
    void *dev[] = {r->xin ? r->xin : r->x, r->x0, r->out, r->t, r->lab, r->tab, r->ttab, r->k, r->noff};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) r->be->free(dev[i]);
    free(r->t_host);
    dd_replay_reset(&r->rp);
    memset(r, 0, sizeof *r);
}

dd_sample_cache *dd_sample_cache_new(void) {
    dd_sample_cache *c = calloc(1, sizeof *c);
    if (!c) dd_error("sampler cache: out of host memory");
    return c;
}

void dd_sample_cache_free(dd_sample_cache *c) {
    if (!c) return;
    if (c->used) run_free(&c->r);
    free(c);
}

static int label_ok(const dd_denoiser *m, int32_t l) {
    return (l >= 0 && l < m->num_classes) || l == m->generic_label;
}

/* Check the request (before anything is allocated). */
static int check_request(const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                         const dd_sample_opts *o) {
    if (!be || !be->alloc || !be->normal || !be->sampler_step || !be->sampler_advance)
        return dd_error("sampler: backend '%s' lacks the diffusion ops",
                        be && be->name ? be->name : "(null)");
    if (!s || !s->beta) return dd_error("sampler: no schedule");
    if (!m || !m->fn) return dd_error("sampler: no model");
    if ((unsigned)m->objective >= DD_OBJECTIVE_COUNT)
        return dd_error("sampler: unknown objective %d", (int)m->objective);
    if (o->B < 1 || o->per < 1)
        return dd_error("sampler: empty batch (B = %d, values per sample %zu)", o->B, o->per);
    if (!isfinite(o->guidance))
        return dd_error("sampler: guidance scale must be finite (got %g)", (double)o->guidance);
    const int has_labels = o->labels || o->label >= 0, guided = o->guidance != 1.0f;
    if (m->num_classes <= 0) {
        if (guided)
            return dd_error("classifier-free guidance (scale %g) needs a conditional model; this "
                            "model is unconditional",
                            (double)o->guidance);
        if (has_labels) return dd_error("labels given to an unconditional model");
    } else {
        if (guided && !has_labels)
            return dd_error("classifier-free guidance (scale %g) needs labels to condition on",
                            (double)o->guidance);
        if (o->labels) {
            for (int i = 0; i < o->B; i++)
                if (!label_ok(m, o->labels[i]))
                    return dd_error("label %d of sample %d is outside 0..%d", (int)o->labels[i],
                                    i, m->num_classes - 1);
        } else if (o->label >= 0 && !label_ok(m, o->label)) {
            return dd_error("label %d is outside 0..%d", (int)o->label, m->num_classes - 1);
        }
    }
    return 0;
}

/* Allocate a run for `steps` steps. */
static int run_alloc(run *r, const dd_backend *be, const dd_denoiser *m, const dd_sample_opts *o,
                     int steps) {
    memset(r, 0, sizeof *r);
    r->be = be;
    r->model = *m;
    r->m = &r->model;
    r->B = o->B;
    r->per = o->per;
    r->n = (size_t)o->B * o->per;
    r->guided = o->guidance != 1.0f;
    r->conditional = m->num_classes > 0;
    r->nb = r->guided ? 2 * o->B : o->B; /* the model's batch */
    r->steps = steps;
    const size_t bytes = r->n * sizeof(float);
    r->t_host = malloc((size_t)steps * sizeof(int));
    if (!r->t_host) return dd_error("sampler: out of host memory");
    /* guided: the chain is the model input's first half, so a step copies x once, not twice */
    int rc = (r->guided ? be->alloc((void **)&r->xin, 2 * bytes) : be->alloc((void **)&r->x, bytes)) ||
             be->alloc((void **)&r->x0, bytes) ||
             be->alloc((void **)&r->out, (size_t)r->nb * r->per * sizeof(float)) ||
             be->alloc((void **)&r->t, (size_t)r->nb * sizeof(int32_t)) ||
             be->alloc((void **)&r->tab, (size_t)steps * DD_SAMPLER_COLS * sizeof(float)) ||
             be->alloc((void **)&r->ttab, (size_t)steps * sizeof(int32_t)) ||
             be->alloc((void **)&r->k, sizeof(int64_t)) ||
             be->alloc((void **)&r->noff, sizeof(int64_t));
    if (!rc && r->guided) r->x = r->xin;
    if (!rc && r->conditional)
        rc = be->alloc((void **)&r->lab, (size_t)r->nb * sizeof(int32_t));
    if (rc) {
        run_free(r);
        return dd_error_prefix("sampler");
    }
    return 0;
}

/* This run's setup: check it, take the cached buffers when they fit (else allocate), and load
 * the labels. *rp points at the run to use. */
static int run_init(run **rp, run *local, dd_sample_cache *cache, const dd_backend *be,
                    const dd_schedule *s, const dd_denoiser *m, const dd_sample_opts *o,
                    int steps) {
    DD_TRY(check_request(be, s, m, o));
    run *r = cache ? &cache->r : local;
    const int fits = cache && cache->used && r->be == be && r->model.fn == m->fn &&
                     r->model.ctx == m->ctx && r->B == o->B && r->per == o->per &&
                     r->guided == (o->guidance != 1.0f) && r->conditional == (m->num_classes > 0) &&
                     r->steps == steps;
    if (!fits) {
        if (cache && cache->used) run_free(r);
        if (cache) cache->used = 0;
        DD_TRY(run_alloc(r, be, m, o, steps));
        if (cache) cache->used = 1;
    }
    r->model = *m; /* the same function and context; objective and labels may differ */
    r->m = &r->model;
    r->g = o->guidance;
    r->clip = o->clip;
    *rp = r;
    if (r->conditional) {
        /* Conditioned half: the labels (none given: the generic label, unconditioned
         * sampling); the second half of a guided batch: the generic label. */
        int32_t *lab = malloc((size_t)r->nb * sizeof(int32_t));
        if (!lab) return dd_error("sampler: out of host memory");
        for (int i = 0; i < o->B; i++)
            lab[i] = o->labels ? o->labels[i] : o->label >= 0 ? o->label : m->generic_label;
        for (int i = o->B; i < r->nb; i++) lab[i] = m->generic_label;
        int rc = be->to_device(r->lab, lab, (size_t)r->nb * sizeof(int32_t));
        free(lab);
        DD_TRY(rc);
    }
    return 0;
}

static void run_done(run *r, const run *local) {
    if (r == local) run_free(r);
}

/* Step k's row: the objective's conversion to eps at t, the x0 estimate at t, then the update. */
static void fill_row(float *row, const dd_schedule *s, dd_objective obj, int t, float c0, float c1,
                     float c2, float sigma) {
    dd_output_to_eps_coefs(s, obj, t, &row[DD_SAMPLER_EA], &row[DD_SAMPLER_EB]);
    row[DD_SAMPLER_RA] = s->sqrt_recip_abar[t];
    row[DD_SAMPLER_RB] = s->sqrt_recipm1_abar[t];
    row[DD_SAMPLER_C0] = c0;
    row[DD_SAMPLER_C1] = c1;
    row[DD_SAMPLER_C2] = c2;
    row[DD_SAMPLER_SIGMA] = sigma;
}

/* Upload the tables made in tab / t_host, set the counters one step before the first, draw x_T. */
static int run_start(run *r, const float *tab, dd_rng *rng) {
    const dd_backend *be = r->be;
    int32_t *tt = malloc((size_t)r->steps * sizeof(int32_t));
    if (!tt) return dd_error("sampler: out of host memory");
    for (int k = 0; k < r->steps; k++) tt[k] = r->t_host[k];
    int rc = be->to_device(r->ttab, tt, (size_t)r->steps * sizeof(int32_t));
    free(tt);
    DD_TRY(rc);
    DD_TRY(be->to_device(r->tab, tab, (size_t)r->steps * DD_SAMPLER_COLS * sizeof(float)));
    const int64_t before = -1;
    DD_TRY(be->to_device(r->k, &before, sizeof before));
    DD_TRY(be->normal(r->x, r->n, (dd_rng_at){rng->seed, rng->stream, rng->offset, NULL, 0}));
    /* every step owns n addresses, used or not: step k's noise starts at offset + k n (offset
     * past x_T's draws), and the step's sampler_advance adds the n */
    const int64_t noff = (int64_t)rng->offset;
    rng->offset += r->n;
    DD_TRY(be->to_device(r->noff, &noff, sizeof noff));
    r->noise = (dd_rng_at){rng->seed, rng->stream, 0, r->noff, 1};
    return 0;
}

/* One step, the same calls every time (see the top of the file). */
static int step_body(void *ctx) {
    run *r = ctx;
    const dd_backend *be = r->be;
    DD_TRY(be->sampler_advance(r->k, r->noff, (int64_t)r->n, r->t, r->ttab, r->nb));
    const float *in = r->x;
    if (r->guided) {
        DD_TRY(be->copy(r->xin + r->n, r->x, r->n * sizeof(float)));
        in = r->xin;
    }
    DD_TRY(r->m->fn(r->m->ctx, r->out, in, r->t, r->lab, r->nb));
    /* the row comes from k; the noise from noff (its own counter, so that a recorded step
     * serves any later run whatever its seed offset) */
    return be->sampler_step(r->x, r->x0, r->out, r->guided ? r->out + r->n : NULL, r->n, r->g,
                            r->clip, r->tab, r->k, r->noise);
}

static int loop(run *r, dd_sample_opts *o, float *out) {
    /* the buffers, and the values the step's calls take as arguments; the model's version is
     * read at every step, since its first call may build (and so re-plan) its graph */
    const void *key[DD_REPLAY_KEYS] = {r->x,
                                       r->out,
                                       r->tab,
                                       r->k,
                                       (const void *)r->m->fn,
                                       r->m->ctx,
                                       dd_replay_key_float(r->g),
                                       dd_replay_key_int((uint64_t)r->clip),
                                       dd_replay_key_int(r->noise.seed),
                                       dd_replay_key_int(r->noise.stream)};
    for (int k = 0; k < r->steps; k++) {
        key[10] = dd_replay_key_int(r->m->version ? r->m->version(r->m->ctx) : 0);
        if (dd_replay_run(&r->rp, r->be, step_body, r, key))
            return dd_error_prefix("sampler step at t = %d", r->t_host[k]);
        if (o->on_step &&
            o->on_step(o->step_ctx, k, r->steps, r->t_host[k], r->x, r->x0, r->B, r->per))
            return dd_error_prefix("sampler step callback at t = %d", r->t_host[k]);
    }
    o->rng.offset += (uint64_t)r->steps * r->n;
    if (out) DD_TRY(r->be->to_host(out, r->x, r->n * sizeof(float)));
    return 0;
}

static int sample(run *r, dd_sample_opts *o, float *tab, float *out) {
    int rc = run_start(r, tab, &o->rng);
    if (!rc) rc = loop(r, o, out);
    return rc;
}

int dd_sample_ddpm(const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                   dd_sample_opts *o, float *out) {
    if (!s || !s->beta) return dd_error("sampler: no schedule");
    run local, *r;
    DD_TRY(run_init(&r, &local, o->cache, be, s, m, o, s->T));
    float *tab = malloc((size_t)s->T * DD_SAMPLER_COLS * sizeof(float));
    if (!tab) {
        run_done(r, &local);
        return dd_error("sampler: out of host memory");
    }
    for (int k = 0; k < s->T; k++) {
        const int t = s->T - k;
        r->t_host[k] = t;
        /* mean = coef1 x0 + coef2 x_t; noise sqrt(posterior variance), none at t = 1, so the
         * last step returns the (clipped) x0 estimate */
        fill_row(tab + (size_t)k * DD_SAMPLER_COLS, s, m->objective, t, s->coef1[t], s->coef2[t],
                 0.0f, t > 1 ? sqrtf(s->post_var[t]) : 0.0f);
    }
    int rc = sample(r, o, tab, out);
    free(tab);
    run_done(r, &local);
    return rc;
}

int dd_sample_ddim(const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                   dd_sample_opts *o, int tau, float eta, float *out) {
    if (!s || !s->beta) return dd_error("sampler: no schedule");
    if (!(eta >= 0.0f) || !isfinite(eta)) return dd_error("DDIM: eta must be >= 0 (got %g)", (double)eta);
    int *times = malloc(((size_t)(tau > 0 ? tau : 0) + 1) * sizeof(int));
    if (!times) return dd_error("DDIM: out of host memory");
    if (dd_ddim_times(s->T, tau, times)) {
        free(times);
        return -1;
    }
    run local, *r;
    if (run_init(&r, &local, o->cache, be, s, m, o, tau)) {
        free(times);
        return -1;
    }
    float *tab = malloc((size_t)tau * DD_SAMPLER_COLS * sizeof(float));
    int rc = tab ? 0 : dd_error("DDIM: out of host memory");
    for (int k = 0; !rc && k < tau; k++) {
        const int t = times[k], tn = times[k + 1];
        r->t_host[k] = t;
        /* SPEC: sigma = eta sqrt((1 - abar_t/abar_next)(1 - abar_next)/(1 - abar_t));
         * x = sqrt(abar_next) x0 + sqrt(1 - abar_next - sigma^2) eps (+ sigma z unless
         * t_next = 1). The max(0, .) guard only absorbs rounding (t == t_next gives 0). */
        const double ab = s->abar64[t], abn = s->abar64[tn];
        const double r1 = fmax(0.0, 1.0 - ab / abn);
        const double sigma = eta * sqrt(r1 * (1.0 - abn) / (1.0 - ab));
        const double c = sqrt(fmax(0.0, 1.0 - abn - sigma * sigma));
        fill_row(tab + (size_t)k * DD_SAMPLER_COLS, s, m->objective, t, (float)sqrt(abn), 0.0f,
                 (float)c, tn != 1 ? (float)sigma : 0.0f);
    }
    if (!rc) rc = sample(r, o, tab, out);
    free(tab);
    run_done(r, &local);
    free(times);
    return rc;
}

int dd_step_record(void *recorder, int step, int nsteps, int t, const float *x, const float *x0,
                   int B, size_t per) {
    dd_step_recorder *r = recorder;
    (void)t;
    if (step >= r->capacity || nsteps > r->capacity)
        return dd_error("step recorder: room for %d frames, the run has %d steps", r->capacity,
                        nsteps);
    const size_t n = (size_t)B * per;
    if (r->xs) DD_TRY(r->be->to_host(r->xs + (size_t)step * n, x, n * sizeof(float)));
    if (r->x0s) DD_TRY(r->be->to_host(r->x0s + (size_t)step * n, x0, n * sizeof(float)));
    r->frames = step + 1;
    return 0;
}
