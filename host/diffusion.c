/* The forward process on a batch: training targets for each objective, converting a model's
 * output into eps / x0 estimates, and the training-batch helper (t, noise, label drops, x_t).
 * The maths is per sample (a coefficient pair from the schedule); the backend's q_sample applies
 * y = ca[s] a + cb[s] b per sample, which is every linear map needed here. */
#include <stdlib.h>
#include <string.h>

#include "diffusion/diffusion.h"
#include "diffusion/error.h"
#include "diffusion/philox.h"

typedef void (*coef_fn)(const dd_schedule *, dd_objective, int, float *, float *);

/* dst (B, per) = a(t_s) p + b(t_s) q per sample s, the pair from fn. coef: backend (2B),
 * coef_host: host (2B). */
static int per_sample_linear(const dd_backend *be, const dd_schedule *s, dd_objective obj,
                             coef_fn fn, float *dst, const float *p, const float *q,
                             const int32_t *t, int B, size_t per, float *coef, float *coef_host) {
    for (int i = 0; i < B; i++) {
        if (t[i] < 1 || t[i] > s->T)
            return dd_error("timestep %d of sample %d is outside 1..%d", (int)t[i], i, s->T);
        fn(s, obj, t[i], &coef_host[i], &coef_host[B + i]);
    }
    DD_TRY(be->to_device(coef, coef_host, 2 * (size_t)B * sizeof(float)));
    return be->q_sample(dst, p, q, coef, coef + B, B, per);
}

static int check_objective(dd_objective obj) {
    if ((unsigned)obj >= DD_OBJECTIVE_COUNT) return dd_error("unknown objective %d", (int)obj);
    return 0;
}

int dd_objective_target(const dd_backend *be, const dd_schedule *s, dd_objective obj,
                        float *target, const float *x0, const float *noise, const int32_t *t,
                        int B, size_t per, float *coef, float *coef_host) {
    DD_TRY(check_objective(obj));
    /* eps and x0 are plain copies, exact whatever the schedule */
    if (obj == DD_OBJECTIVE_EPS) return be->copy(target, noise, (size_t)B * per * sizeof(float));
    if (obj == DD_OBJECTIVE_X0) return be->copy(target, x0, (size_t)B * per * sizeof(float));
    return per_sample_linear(be, s, obj, dd_target_coefs, target, x0, noise, t, B, per, coef,
                             coef_host);
}

int dd_output_to_eps(const dd_backend *be, const dd_schedule *s, dd_objective obj, float *eps,
                     const float *out, const float *xt, const int32_t *t, int B, size_t per,
                     float *coef, float *coef_host) {
    DD_TRY(check_objective(obj));
    if (obj == DD_OBJECTIVE_EPS)
        return eps == out ? 0 : be->copy(eps, out, (size_t)B * per * sizeof(float));
    return per_sample_linear(be, s, obj, dd_output_to_eps_coefs, eps, xt, out, t, B, per, coef,
                             coef_host);
}

int dd_output_to_x0(const dd_backend *be, const dd_schedule *s, dd_objective obj, float *x0,
                    const float *out, const float *xt, const int32_t *t, int B, size_t per,
                    float *coef, float *coef_host) {
    DD_TRY(check_objective(obj));
    if (obj == DD_OBJECTIVE_X0)
        return x0 == out ? 0 : be->copy(x0, out, (size_t)B * per * sizeof(float));
    return per_sample_linear(be, s, obj, dd_output_to_x0_coefs, x0, xt, out, t, B, per, coef,
                             coef_host);
}

/* ---------------------------------------------------------------- training batches */

void dd_train_batch_free(dd_train_batch *tb) {
    if (!tb) return;
    if (tb->be) {
        if (tb->noise) tb->be->free(tb->noise);
        if (tb->xt) tb->be->free(tb->xt);
        if (tb->target) tb->be->free(tb->target);
        if (tb->coef) tb->be->free(tb->coef);
    }
    free(tb->t);
    free(tb->labels);
    free(tb->coef_host);
    memset(tb, 0, sizeof *tb);
}

int dd_train_batch_init(dd_train_batch *tb, const dd_backend *be, const dd_schedule *s,
                        dd_objective obj, int B, size_t per) {
    memset(tb, 0, sizeof *tb);
    DD_TRY(check_objective(obj));
    if (B < 1 || per < 1) return dd_error("training batch: empty batch (B = %d, per = %zu)", B, per);
    tb->be = be;
    tb->s = s;
    tb->objective = obj;
    tb->B = B;
    tb->per = per;
    const size_t bytes = (size_t)B * per * sizeof(float);
    tb->t = malloc((size_t)B * sizeof(int32_t));
    tb->labels = malloc((size_t)B * sizeof(int32_t));
    tb->coef_host = malloc(4 * (size_t)B * sizeof(float));
    if (!tb->t || !tb->labels || !tb->coef_host) {
        dd_train_batch_free(tb);
        return dd_error("training batch: out of host memory");
    }
    if (be->alloc((void **)&tb->noise, bytes) || be->alloc((void **)&tb->xt, bytes) ||
        be->alloc((void **)&tb->target, bytes) ||
        be->alloc((void **)&tb->coef, 4 * (size_t)B * sizeof(float))) {
        dd_train_batch_free(tb);
        return dd_error_prefix("training batch");
    }
    return 0;
}

int dd_train_batch_make(dd_train_batch *tb, const float *x0, const int32_t *labels,
                        int32_t generic_label, float prob_uncond, dd_rng *rng) {
    const dd_backend *be = tb->be;
    const dd_schedule *s = tb->s;
    const int B = tb->B;
    if (!(prob_uncond >= 0.0f && prob_uncond <= 1.0f))
        return dd_error("prob_uncond must be in [0, 1] (got %g)", (double)prob_uncond);
    for (int i = 0; i < B; i++) /* SPEC: t uniform in 1..T */
        tb->t[i] = 1 + (int32_t)dd_philox_below(rng->seed, rng->stream, rng->offset + i,
                                                 (uint32_t)s->T);
    rng->offset += (uint64_t)B;
    if (labels) {
        for (int i = 0; i < B; i++) {
            float u = dd_philox_uniform(rng->seed, rng->stream, rng->offset + i);
            tb->labels[i] = u < prob_uncond ? generic_label : labels[i];
        }
        rng->offset += (uint64_t)B;
    }
    const size_t n = (size_t)B * tb->per;
    DD_TRY(be->normal(tb->noise, n, rng->seed, rng->stream, rng->offset));
    rng->offset += n;
    for (int i = 0; i < B; i++) {
        tb->coef_host[i] = s->sqrt_abar[tb->t[i]];
        tb->coef_host[B + i] = s->sqrt_one_minus_abar[tb->t[i]];
    }
    DD_TRY(be->to_device(tb->coef, tb->coef_host, 2 * (size_t)B * sizeof(float)));
    DD_TRY(be->q_sample(tb->xt, x0, tb->noise, tb->coef, tb->coef + B, B, tb->per));
    /* the target's coefficients go to the other half of the scratch, so that uploading them
     * cannot race with a q_sample still reading the first half on an asynchronous backend */
    return dd_objective_target(be, s, tb->objective, tb->target, x0, tb->noise, tb->t, B, tb->per,
                               tb->coef + 2 * B, tb->coef_host + 2 * B);
}
