/* The forward process on a batch: training targets for each objective, converting a model's
 * output into eps / x0 estimates, and the training-batch helper (t, noise, label drops, x_t).
 * The maths is per sample (a coefficient pair from the schedule); the backend's q_sample applies
 * y = ca[s] a + cb[s] b per sample, which is every linear map needed here. */
#include <stdlib.h>
#include <string.h>

#include "diffusion/diffusion.h"
#include "diffusion/error.h"

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
    return be->q_sample(dst, p, q, coef, coef + B, NULL, B, per);
}

static int check_objective(dd_objective obj) {
    if ((unsigned)obj >= DD_OBJECTIVE_COUNT) return dd_error("unknown objective %d", (int)obj);
    return 0;
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
        void *bufs[] = {tb->noise, tb->xt, tb->target, tb->t, tb->labels, tb->tab};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i]) tb->be->free(bufs[i]);
    }
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
    const size_t bytes = (size_t)B * per * sizeof(float), rows = (size_t)s->T + 1;
    if (be->alloc((void **)&tb->noise, bytes) || be->alloc((void **)&tb->xt, bytes) ||
        be->alloc((void **)&tb->target, bytes) ||
        be->alloc((void **)&tb->t, (size_t)B * sizeof(int32_t)) ||
        be->alloc((void **)&tb->labels, (size_t)B * sizeof(int32_t)) ||
        be->alloc((void **)&tb->tab, 4 * rows * sizeof(float))) {
        dd_train_batch_free(tb);
        return dd_error_prefix("training batch");
    }
    /* the per-t coefficients, once: the batch then looks them up by its t on the backend */
    float *h = calloc(4 * rows, sizeof(float));
    if (!h) {
        dd_train_batch_free(tb);
        return dd_error("training batch: out of host memory");
    }
    for (int t = 1; t <= s->T; t++) {
        h[t] = s->sqrt_abar[t];
        h[rows + t] = s->sqrt_one_minus_abar[t];
        dd_target_coefs(s, obj, t, &h[2 * rows + t], &h[3 * rows + t]);
    }
    int rc = be->to_device(tb->tab, h, 4 * rows * sizeof(float));
    free(h);
    if (rc) dd_train_batch_free(tb);
    return rc;
}

uint64_t dd_train_batch_stride(const dd_train_batch *tb) {
    return (uint64_t)2 * (uint64_t)tb->B + (uint64_t)tb->B * tb->per;
}

int dd_train_batch_make(dd_train_batch *tb, const float *x0, const int32_t *labels,
                        int32_t generic_label, float prob_uncond, dd_rng_at at) {
    const dd_backend *be = tb->be;
    const int B = tb->B;
    const size_t n = (size_t)B * tb->per, rows = (size_t)tb->s->T + 1;
    if (!(prob_uncond >= 0.0f && prob_uncond <= 1.0f))
        return dd_error("prob_uncond must be in [0, 1] (got %g)", (double)prob_uncond);
    DD_TRY(be->train_draw(tb->t, tb->labels, labels, B, tb->s->T, prob_uncond, generic_label, at));
    dd_rng_at z = at;
    z.offset += 2 * (uint64_t)B;
    DD_TRY(be->normal(tb->noise, n, z));
    DD_TRY(be->q_sample(tb->xt, x0, tb->noise, tb->tab, tb->tab + rows, tb->t, B, tb->per));
    /* eps and x0 are plain copies, exact whatever the schedule */
    if (tb->objective == DD_OBJECTIVE_EPS) return be->copy(tb->target, tb->noise, n * sizeof(float));
    if (tb->objective == DD_OBJECTIVE_X0) return be->copy(tb->target, x0, n * sizeof(float));
    return be->q_sample(tb->target, x0, tb->noise, tb->tab + 2 * rows, tb->tab + 3 * rows, tb->t, B,
                        tb->per);
}
