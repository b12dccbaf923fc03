/* Noise schedules and the per-time coefficients derived from them (../shared/SPEC.md,
 * "Schedules"), and the objectives' linear maps. Everything is computed in double and stored in
 * float; arrays are indexed by SPEC's t = 1..T directly (entry 0 is the t = 0 limit). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/diffusion.h"
#include "diffusion/error.h"

static const char *const kind_names[DD_SCHEDULE_COUNT] = {
    [DD_SCHEDULE_LINEAR] = "linear",
    [DD_SCHEDULE_COSINE] = "cosine",
    [DD_SCHEDULE_SIGMOID] = "sigmoid",
};

const char *dd_schedule_kind_name(dd_schedule_kind kind) {
    return (unsigned)kind < DD_SCHEDULE_COUNT ? kind_names[kind] : "unknown";
}

int dd_schedule_kind_parse(const char *name, dd_schedule_kind *kind) {
    for (int k = 0; k < DD_SCHEDULE_COUNT; k++)
        if (name && !strcmp(name, kind_names[k])) {
            *kind = (dd_schedule_kind)k;
            return 0;
        }
    return dd_error("unknown schedule '%s' (linear, cosine or sigmoid)", name ? name : "(null)");
}

static double clamp(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }
static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* beta[1..T] of each kind, in double. */
static void linear_betas(double *beta, int T, double b0, double b1) {
    /* Both ends scaled by 1000/T (so T = 100 gives 1e-3 .. 0.2), as the original. */
    const double scale = 1000.0 / T;
    b0 *= scale, b1 *= scale;
    for (int i = 0; i < T; i++) beta[i + 1] = T == 1 ? b0 : b0 + (b1 - b0) * i / (T - 1);
}

static void betas_from_abar(double *beta, const double *abar, int T) {
    /* abar (T + 1) from the closed form, normalised so abar[0] = 1; clamped as the original. */
    for (int t = 1; t <= T; t++) beta[t] = clamp(1.0 - abar[t] / abar[t - 1], 0.0, 0.999);
}

static void cosine_betas(double *beta, double *work, int T) {
    const double s = 0.008, half_pi = 1.57079632679489661923;
    for (int i = 0; i <= T; i++) {
        double c = cos(((double)i / T + s) / (1.0 + s) * half_pi);
        work[i] = c * c;
    }
    for (int i = T; i >= 0; i--) work[i] /= work[0];
    betas_from_abar(beta, work, T);
}

static void sigmoid_betas(double *beta, double *work, int T) {
    /* lucidrains' sigmoid_beta_schedule(T, start=-3, end=3, tau=1). */
    const double start = -3.0, end = 3.0, tau = 1.0;
    const double v_start = sigmoid(start / tau), v_end = sigmoid(end / tau);
    for (int i = 0; i <= T; i++) {
        double u = (double)i / T;
        work[i] = (-sigmoid((u * (end - start) + start) / tau) + v_end) / (v_end - v_start);
    }
    for (int i = T; i >= 0; i--) work[i] /= work[0];
    betas_from_abar(beta, work, T);
}

void dd_schedule_free(dd_schedule *s) {
    if (!s) return;
    free(s->beta); /* the one float block; every other float array points into it */
    free(s->abar64);
    memset(s, 0, sizeof *s);
}

int dd_schedule_init(dd_schedule *s, dd_schedule_kind kind, int T, double beta_start,
                     double beta_end) {
    memset(s, 0, sizeof *s);
    if ((unsigned)kind >= DD_SCHEDULE_COUNT) return dd_error("unknown schedule kind %d", (int)kind);
    if (T < 1) return dd_error("the number of timesteps must be at least 1 (got %d)", T);
    if (T > 100000000) return dd_error("too many timesteps (%d)", T);
    if (beta_start <= 0) beta_start = DD_LINEAR_BETA_START;
    if (beta_end <= 0) beta_end = DD_LINEAR_BETA_END;
    if (kind == DD_SCHEDULE_LINEAR && (beta_end * 1000.0 / T >= 1.0 || beta_start > beta_end))
        return dd_error("linear schedule: scaled betas %g .. %g must satisfy 0 < start <= end < 1",
                        beta_start * 1000.0 / T, beta_end * 1000.0 / T);

    const size_t n = (size_t)T + 1;
    enum { NARR = 11 };
    float *block = malloc(NARR * n * sizeof(float));
    double *beta = malloc(n * sizeof(double)), *work = malloc(n * sizeof(double));
    s->abar64 = malloc(n * sizeof(double));
    if (!block || !beta || !work || !s->abar64) {
        free(block), free(beta), free(work), free(s->abar64);
        s->abar64 = NULL;
        return dd_error("schedule: out of memory for T = %d", T);
    }
    s->kind = kind;
    s->T = T;
    s->beta_start = beta_start;
    s->beta_end = beta_end;
    float **arrs[NARR] = {&s->beta,      &s->alpha,           &s->abar,
                          &s->abar_prev, &s->sqrt_abar,       &s->sqrt_one_minus_abar,
                          &s->sqrt_recip_abar, &s->sqrt_recipm1_abar, &s->post_var,
                          &s->coef1,     &s->coef2};
    for (int k = 0; k < NARR; k++) *arrs[k] = block + (size_t)k * n;

    beta[0] = 0.0;
    switch (kind) {
    case DD_SCHEDULE_LINEAR: linear_betas(beta, T, beta_start, beta_end); break;
    case DD_SCHEDULE_COSINE: cosine_betas(beta, work, T); break;
    case DD_SCHEDULE_SIGMOID: sigmoid_betas(beta, work, T); break;
    case DD_SCHEDULE_COUNT: break;
    }

    /* t = 0: no noise yet. Its coefficients make a "step" the identity on x0 and are unused. */
    double abar = 1.0;
    s->abar64[0] = 1.0;
    s->beta[0] = 0.0f, s->alpha[0] = 1.0f, s->abar[0] = 1.0f, s->abar_prev[0] = 1.0f;
    s->sqrt_abar[0] = 1.0f, s->sqrt_one_minus_abar[0] = 0.0f;
    s->sqrt_recip_abar[0] = 1.0f, s->sqrt_recipm1_abar[0] = 0.0f;
    s->post_var[0] = 0.0f, s->coef1[0] = 1.0f, s->coef2[0] = 0.0f;
    for (int t = 1; t <= T; t++) {
        const double b = beta[t], a = 1.0 - b, prev = abar;
        abar *= a;
        s->abar64[t] = abar;
        s->beta[t] = (float)b;
        s->alpha[t] = (float)a;
        s->abar[t] = (float)abar;
        s->abar_prev[t] = (float)prev;
        s->sqrt_abar[t] = (float)sqrt(abar);
        s->sqrt_one_minus_abar[t] = (float)sqrt(1.0 - abar);
        s->sqrt_recip_abar[t] = (float)sqrt(1.0 / abar);
        s->sqrt_recipm1_abar[t] = (float)sqrt(1.0 / abar - 1.0);
        /* At t = 1, abar_prev = 1: variance 0, coef2 0, and coef1 = beta/(1 - alpha) = 1 up to
         * the rounding of 1 - (1 - beta), which float storage removes. */
        s->post_var[t] = (float)(b * (1.0 - prev) / (1.0 - abar));
        s->coef1[t] = (float)(b * sqrt(prev) / (1.0 - abar));
        s->coef2[t] = (float)((1.0 - prev) * sqrt(a) / (1.0 - abar));
    }
    free(beta);
    free(work);
    return 0;
}

int dd_ddim_times(int T, int tau, int *times) {
    if (T < 1) return dd_error("DDIM: the number of timesteps must be at least 1 (got %d)", T);
    if (tau < 1) return dd_error("DDIM: the number of sampling steps must be at least 1 (got %d)", tau);
    if (tau > T)
        return dd_error("DDIM: %d sampling steps is more than the schedule's %d timesteps "
                        "(tau must be <= T)",
                        tau, T);
    /* floor(linspace(1, T, tau + 1))[i] = 1 + floor(i (T - 1) / tau), exactly, then reversed. */
    for (int i = 0; i <= tau; i++)
        times[tau - i] = 1 + (int)(((int64_t)i * (T - 1)) / tau);
    return 0;
}

/* ---------------------------------------------------------------- objectives */

static const char *const objective_names[DD_OBJECTIVE_COUNT] = {
    [DD_OBJECTIVE_EPS] = "eps",
    [DD_OBJECTIVE_X0] = "x0",
    [DD_OBJECTIVE_V] = "v",
};

const char *dd_objective_name(dd_objective obj) {
    return (unsigned)obj < DD_OBJECTIVE_COUNT ? objective_names[obj] : "unknown";
}

int dd_objective_parse(const char *name, dd_objective *obj) {
    for (int k = 0; k < DD_OBJECTIVE_COUNT; k++)
        if (name && !strcmp(name, objective_names[k])) {
            *obj = (dd_objective)k;
            return 0;
        }
    return dd_error("unknown objective '%s' (eps, x0 or v)", name ? name : "(null)");
}

/* With sa = sqrt(abar_t), sb = sqrt(1 - abar_t) (sa^2 + sb^2 = 1): x_t = sa x0 + sb eps and
 * v = sa eps - sb x0, hence eps = sb x_t + sa v and x0 = sa x_t - sb v. Coefficients in double. */
void dd_target_coefs(const dd_schedule *s, dd_objective obj, int t, float *a, float *b) {
    const double ab = s->abar64[t], sa = sqrt(ab), sb = sqrt(1.0 - ab);
    switch (obj) {
    case DD_OBJECTIVE_EPS: *a = 0.0f, *b = 1.0f; return;
    case DD_OBJECTIVE_X0: *a = 1.0f, *b = 0.0f; return;
    case DD_OBJECTIVE_V: *a = (float)-sb, *b = (float)sa; return;
    case DD_OBJECTIVE_COUNT: break;
    }
    *a = 0.0f, *b = 0.0f;
}

void dd_output_to_eps_coefs(const dd_schedule *s, dd_objective obj, int t, float *a, float *b) {
    const double ab = s->abar64[t], sa = sqrt(ab), sb = sqrt(1.0 - ab);
    switch (obj) {
    case DD_OBJECTIVE_EPS: *a = 0.0f, *b = 1.0f; return;
    case DD_OBJECTIVE_X0: *a = (float)(1.0 / sb), *b = (float)(-sa / sb); return;
    case DD_OBJECTIVE_V: *a = (float)sb, *b = (float)sa; return;
    case DD_OBJECTIVE_COUNT: break;
    }
    *a = 0.0f, *b = 0.0f;
}

void dd_output_to_x0_coefs(const dd_schedule *s, dd_objective obj, int t, float *a, float *b) {
    const double ab = s->abar64[t], sa = sqrt(ab), sb = sqrt(1.0 - ab);
    switch (obj) {
    case DD_OBJECTIVE_EPS: *a = (float)(1.0 / sa), *b = (float)(-sb / sa); return;
    case DD_OBJECTIVE_X0: *a = 0.0f, *b = 1.0f; return;
    case DD_OBJECTIVE_V: *a = (float)sa, *b = (float)-sb; return;
    case DD_OBJECTIVE_COUNT: break;
    }
    *a = 0.0f, *b = 0.0f;
}
