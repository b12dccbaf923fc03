/* DDPM (p_sample_loop, p_sample_loop_all) and DDIM samplers with classifier-free guidance
 * (../shared/SPEC.md). The host walks the time steps and computes each step's scalars in double;
 * the backend does the per-element work: be->normal for x_T, be->guidance for the mix,
 * be->sampler_step for predict-x0 / clip / update / noise. Buffers are allocated once per run,
 * nothing per step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/diffusion.h"
#include "diffusion/error.h"

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
 * the labels, the second on the generic label. */
typedef struct {
    const dd_backend *be;
    int B, guided;
    size_t per, n; /* n = B * per */
    float *x;      /* backend (B, per): the chain */
    float *x0;     /* backend (B, per): x0 estimate of the last step */
    float *xin;    /* backend (2B, per), guided only: x twice */
    float *out;    /* backend (B or 2B, per): model output */
    float *mix;    /* backend (B, per), guided only: uncond + g (cond - uncond) */
    float *eps;    /* backend (B, per), objectives other than eps: the eps estimate */
    float *coef;   /* backend (2B): per-sample conversion coefficients */
    int32_t *t;    /* host (2B) */
    int32_t *lab;  /* host (2B), conditional models only */
    float *coef_host; /* host (2B) */
} run;

static void run_free(run *r) {
    float *dev[] = {r->x, r->x0, r->xin, r->out, r->mix, r->eps, r->coef};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) r->be->free(dev[i]);
    free(r->t);
    free(r->lab);
    free(r->coef_host);
}

static int label_ok(const dd_denoiser *m, int32_t l) {
    return (l >= 0 && l < m->num_classes) || l == m->generic_label;
}

/* Validate the request and set up the run. */
static int run_init(run *r, const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                    const dd_sample_opts *o) {
    memset(r, 0, sizeof *r);
    r->be = be;
    if (!be || !be->alloc || !be->normal || !be->sampler_step || !be->guidance || !be->q_sample)
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
    const int has_labels = o->labels || o->label >= 0;
    r->guided = o->guidance != 1.0f;
    if (m->num_classes <= 0) {
        if (r->guided)
            return dd_error("classifier-free guidance (scale %g) needs a conditional model; this "
                            "model is unconditional",
                            (double)o->guidance);
        if (has_labels) return dd_error("labels given to an unconditional model");
    } else {
        if (r->guided && !has_labels)
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

    r->B = o->B;
    r->per = o->per;
    r->n = (size_t)o->B * o->per;
    const int nb = r->guided ? 2 * o->B : o->B; /* the model's batch */
    const size_t bytes = r->n * sizeof(float);
    r->t = malloc((size_t)nb * sizeof(int32_t));
    r->coef_host = malloc(2 * (size_t)o->B * sizeof(float));
    if (m->num_classes > 0) r->lab = malloc((size_t)nb * sizeof(int32_t));
    if (!r->t || !r->coef_host || (m->num_classes > 0 && !r->lab)) {
        run_free(r);
        return dd_error("sampler: out of host memory");
    }
    int rc = be->alloc((void **)&r->x, bytes) || be->alloc((void **)&r->x0, bytes) ||
             be->alloc((void **)&r->out, (size_t)nb * r->per * sizeof(float)) ||
             be->alloc((void **)&r->coef, 2 * (size_t)o->B * sizeof(float));
    if (!rc && r->guided)
        rc = be->alloc((void **)&r->xin, 2 * bytes) || be->alloc((void **)&r->mix, bytes);
    if (!rc && m->objective != DD_OBJECTIVE_EPS) rc = be->alloc((void **)&r->eps, bytes);
    if (rc) {
        run_free(r);
        return dd_error_prefix("sampler");
    }
    if (m->num_classes > 0) {
        /* Conditioned half: the labels (none given: the generic label, unconditioned
         * sampling); the second half of a guided batch: the generic label. */
        for (int i = 0; i < o->B; i++)
            r->lab[i] = o->labels ? o->labels[i] : o->label >= 0 ? o->label : m->generic_label;
        for (int i = o->B; i < nb; i++) r->lab[i] = m->generic_label;
    }
    return 0;
}

/* The model's eps estimate at time t for the current x: one model call of batch B, or of 2B with
 * guidance. Returns a backend pointer (B, per) in *eps_out. */
static int predict_eps(run *r, const dd_schedule *s, const dd_denoiser *m, float g, int t,
                       const float **eps_out) {
    const dd_backend *be = r->be;
    const int nb = r->guided ? 2 * r->B : r->B;
    for (int i = 0; i < nb; i++) r->t[i] = t;
    const float *pred;
    if (r->guided) {
        DD_TRY(be->copy(r->xin, r->x, r->n * sizeof(float)));
        DD_TRY(be->copy(r->xin + r->n, r->x, r->n * sizeof(float)));
        if (m->fn(m->ctx, r->out, r->xin, r->t, r->lab, nb))
            return dd_error_prefix("model at t = %d", t);
        /* the combination is linear in the output, so it is the same in every objective's
         * space and is applied before converting to eps */
        DD_TRY(be->guidance(r->mix, r->out, r->out + r->n, r->n, g));
        pred = r->mix;
    } else {
        if (m->fn(m->ctx, r->out, r->x, r->t, r->lab, nb))
            return dd_error_prefix("model at t = %d", t);
        pred = r->out;
    }
    if (m->objective == DD_OBJECTIVE_EPS) {
        *eps_out = pred;
        return 0;
    }
    DD_TRY(dd_output_to_eps(be, s, m->objective, r->eps, pred, r->x, r->t, r->B, r->per, r->coef,
                            r->coef_host));
    *eps_out = r->eps;
    return 0;
}

static int draw_x_T(run *r, dd_rng *rng) {
    DD_TRY(r->be->normal(r->x, r->n, rng->seed, rng->stream, rng->offset));
    rng->offset += r->n;
    return 0;
}

static int finish(run *r, float *out) {
    if (out) DD_TRY(r->be->to_host(out, r->x, r->n * sizeof(float)));
    return 0;
}

static int ddpm_loop(run *r, const dd_schedule *s, const dd_denoiser *m, dd_sample_opts *o,
                     float *out) {
    DD_TRY(draw_x_T(r, &o->rng));
    for (int t = s->T, step = 0; t >= 1; t--, step++) {
        const float *eps = NULL;
        DD_TRY(predict_eps(r, s, m, o->guidance, t, &eps));
        /* mean = coef1 x0 + coef2 x_t; noise sqrt(posterior variance), none at t = 1, so the
         * last step returns the (clipped) x0 estimate */
        const float sigma = t > 1 ? sqrtf(s->post_var[t]) : 0.0f;
        DD_TRY(r->be->sampler_step(r->x, r->x0, eps, r->n, s->sqrt_recip_abar[t],
                                   s->sqrt_recipm1_abar[t], o->clip, s->coef1[t], s->coef2[t],
                                   0.0f, sigma, o->rng.seed, o->rng.stream, o->rng.offset));
        o->rng.offset += r->n; /* every step owns n addresses, used or not */
        if (o->on_step && o->on_step(o->step_ctx, step, s->T, t, r->x, r->x0, r->B, r->per))
            return dd_error_prefix("sampler step callback at t = %d", t);
    }
    return finish(r, out);
}

int dd_sample_ddpm(const dd_backend *be, const dd_schedule *s, const dd_denoiser *m,
                   dd_sample_opts *o, float *out) {
    run r;
    DD_TRY(run_init(&r, be, s, m, o));
    int rc = ddpm_loop(&r, s, m, o, out);
    run_free(&r);
    return rc;
}

static int ddim_loop(run *r, const dd_schedule *s, const dd_denoiser *m, dd_sample_opts *o,
                     const int *times, int tau, double eta, float *out) {
    DD_TRY(draw_x_T(r, &o->rng));
    for (int k = 0; k < tau; k++) {
        const int t = times[k], tn = times[k + 1];
        const float *eps = NULL;
        DD_TRY(predict_eps(r, s, m, o->guidance, t, &eps));
        /* SPEC: sigma = eta sqrt((1 - abar_t/abar_next)(1 - abar_next)/(1 - abar_t));
         * x = sqrt(abar_next) x0 + sqrt(1 - abar_next - sigma^2) eps (+ sigma z unless
         * t_next = 1). The max(0, .) guard only absorbs rounding (t == t_next gives 0). */
        const double ab = s->abar64[t], abn = s->abar64[tn];
        const double r1 = fmax(0.0, 1.0 - ab / abn);
        const double sigma = eta * sqrt(r1 * (1.0 - abn) / (1.0 - ab));
        const double c = sqrt(fmax(0.0, 1.0 - abn - sigma * sigma));
        DD_TRY(r->be->sampler_step(r->x, r->x0, eps, r->n, s->sqrt_recip_abar[t],
                                   s->sqrt_recipm1_abar[t], o->clip, (float)sqrt(abn), 0.0f,
                                   (float)c, tn != 1 ? (float)sigma : 0.0f, o->rng.seed,
                                   o->rng.stream, o->rng.offset));
        o->rng.offset += r->n;
        if (o->on_step && o->on_step(o->step_ctx, k, tau, t, r->x, r->x0, r->B, r->per))
            return dd_error_prefix("sampler step callback at t = %d", t);
    }
    return finish(r, out);
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
    run r;
    if (run_init(&r, be, s, m, o)) {
        free(times);
        return -1;
    }
    int rc = ddim_loop(&r, s, m, o, times, tau, eta, out);
    run_free(&r);
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
