/* Schedules, DDIM step times, objective maps and the `diffusion schedule` command, against
 * SPEC.md's numbers and the independent numpy reference (tests/reference/schedule_reference.py,
 * its CSVs committed under tests/reference/schedule/). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "diffusion/diffusion.h"
#include "diffusion/error.h"
#include "testutil.h"

static int near(double got, double want, double rel) {
    return fabs(got - want) <= rel * fabs(want) + 1e-30;
}

/* ---------------------------------------------------------------- SPEC's numbers */

static void test_spec_cosine(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 100, 0, 0));
    CHECKF(near(s.beta[1], 6.31e-4, 2e-3), "beta_1 = %g", (double)s.beta[1]);
    CHECKF(near(s.beta[50], 0.0306, 2e-3), "beta_50 = %g", (double)s.beta[50]);
    CHECKF(s.beta[100] == 0.999f, "beta_100 = %.9g (clamped to 0.999)", (double)s.beta[100]);
    CHECKF(near(s.abar[1], 0.99937, 1e-5), "abar_1 = %.9g", (double)s.abar[1]);
    CHECKF(near(s.abar[100], 2.4e-7, 0.02), "abar_100 = %g", (double)s.abar[100]);
    /* t = 1: the last DDPM step returns the x0 estimate itself */
    CHECKF(s.coef1[1] == 1.0f && s.coef2[1] == 0.0f && s.post_var[1] == 0.0f,
           "t = 1: coef1 %.9g coef2 %g post_var %g", (double)s.coef1[1], (double)s.coef2[1],
           (double)s.post_var[1]);
    /* the t = 0 entry is the no-noise limit */
    CHECK(s.abar[0] == 1.0f && s.beta[0] == 0.0f);
    dd_schedule_free(&s);
}

static void test_linear_ends(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_LINEAR, 100, 0, 0)); /* 1e-3 .. 0.2 */
    CHECKF(near(s.beta[1], 1e-3, 1e-6) && near(s.beta[100], 0.2, 1e-6), "%g %g",
           (double)s.beta[1], (double)s.beta[100]);
    dd_schedule_free(&s);
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_LINEAR, 40, 8e-6, 9e-5)); /* 2e-4 .. 2.25e-3 */
    CHECKF(near(s.beta[1], 2e-4, 1e-6) && near(s.beta[40], 2.25e-3, 1e-6), "%g %g",
           (double)s.beta[1], (double)s.beta[40]);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- reference CSVs */

static int compare_csv(const dd_schedule *s, const char *file) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/reference/schedule/%s", DD_SOURCE_DIR, file);
    FILE *f = fopen(path, "r");
    CHECKF(f != NULL, "missing reference %s", path);
    if (!f) return -1;
    char line[1024];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    CHECKF(strncmp(line, "t,beta,alpha_bar,alpha_bar_prev,posterior_variance,coef1,coef2", 60) == 0,
           "%s: header %s", file, line);
    int rows = 0, bad = 0;
    double worst = 0;
    while (fgets(line, sizeof line, f)) {
        int t;
        double v[6];
        if (sscanf(line, "%d,%lf,%lf,%lf,%lf,%lf,%lf", &t, &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5]) != 7 || t < 1 || t > s->T) {
            bad++;
            continue;
        }
        const float got[6] = {s->beta[t], s->abar[t], s->abar_prev[t], s->post_var[t],
                              s->coef1[t], s->coef2[t]};
        for (int k = 0; k < 6; k++) {
            /* float storage of a double value: 2^-24 relative, plus the reference's 11 digits */
            double e = fabs((double)got[k] - v[k]) / (fabs(v[k]) + 1e-30);
            if (v[k] == 0) e = fabs((double)got[k]) > 1e-30 ? 1 : 0;
            if (e > worst) worst = e;
        }
        rows++;
    }
    fclose(f);
    CHECKF(rows == s->T && bad == 0, "%s: %d rows (want %d), %d unparsable", file, rows, s->T, bad);
    CHECKF(worst < 2e-7, "%s: worst relative error %.3g", file, worst);
    printf("  %-18s %4d rows, worst relative error %.2e\n", file, rows, worst);
    return 0;
}

static void test_reference_csvs(void) {
    const int Ts[] = {40, 100, 1000};
    for (int k = 0; k < DD_SCHEDULE_COUNT; k++)
        for (int i = 0; i < 3; i++) {
            dd_schedule s;
            CHECK_OK(dd_schedule_init(&s, (dd_schedule_kind)k, Ts[i], 0, 0));
            char file[64];
            snprintf(file, sizeof file, "%s_%d.csv", dd_schedule_kind_name((dd_schedule_kind)k),
                     Ts[i]);
            compare_csv(&s, file);
            dd_schedule_free(&s);
        }
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_LINEAR, 40, 8e-6, 9e-5));
    compare_csv(&s, "linear2d_40.csv");
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- DDIM step times */

static void test_ddim_times(void) {
    int times[1001];
    CHECK_OK(dd_ddim_times(100, 10, times));
    const int want10[] = {100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 1};
    CHECK(memcmp(times, want10, sizeof want10) == 0);
    CHECK_OK(dd_ddim_times(100, 20, times));
    for (int i = 0; i < 20; i++) CHECKF(times[i] == 100 - 5 * i, "tau 20: times[%d] = %d", i, times[i]);
    CHECK(times[20] == 1);

    const int pairs[][2] = {{100, 10}, {100, 20}, {1000, 50}, {100, 100}, {40, 7}};
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        const int T = pairs[p][0], tau = pairs[p][1];
        CHECK_OK(dd_ddim_times(T, tau, times));
        CHECK(times[0] == T && times[tau] == 1);
        char path[1024];
        snprintf(path, sizeof path, "%s/tests/reference/schedule/ddim_%d_%d.csv", DD_SOURCE_DIR, T,
                 tau);
        FILE *f = fopen(path, "r");
        CHECKF(f != NULL, "missing %s", path);
        if (!f) continue;
        char line[128];
        int k = 0, mism = 0;
        if (!fgets(line, sizeof line, f)) line[0] = 0;
        while (fgets(line, sizeof line, f)) {
            int a, b;
            if (sscanf(line, "%d,%d", &a, &b) != 2 || k >= tau || a != times[k] || b != times[k + 1])
                mism++;
            k++;
        }
        fclose(f);
        CHECKF(k == tau && mism == 0, "ddim %d/%d: %d pairs (want %d), %d differ from numpy", T,
               tau, k, tau, mism);
    }
    /* numpy: floor(linspace(1, 31, 23))[11] = floor(15.999...) = 15; exactly 1 + 11*30/22 = 16 */
    CHECK_OK(dd_ddim_times(31, 22, times));
    CHECK(times[22 - 11] == 16);

    dd_error_clear();
    CHECK(dd_ddim_times(100, 101, times) == -1);
    CHECKF(strstr(dd_error_message(), "tau must be <= T") != NULL, "message: %s", dd_error_message());
    CHECK(dd_ddim_times(100, 0, times) == -1);
}

static void test_refusals(void) {
    dd_schedule s;
    CHECK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 0, 0, 0) == -1);
    dd_schedule_free(&s); /* safe on a failed init */
    CHECK(dd_schedule_init(&s, DD_SCHEDULE_LINEAR, 10, 0, 0) == -1); /* beta_end 2.0 */
    CHECK(dd_schedule_init(&s, (dd_schedule_kind)7, 10, 0, 0) == -1);
    dd_schedule_kind k;
    CHECK(dd_schedule_kind_parse("quadratic", &k) == -1);
    CHECK(dd_schedule_kind_parse("sigmoid", &k) == 0 && k == DD_SCHEDULE_SIGMOID);
    dd_objective o;
    CHECK(dd_objective_parse("v", &o) == 0 && o == DD_OBJECTIVE_V);
    CHECK(dd_objective_parse("score", &o) == -1);
}

/* ---------------------------------------------------------------- objectives */

/* target = a x0 + b z; then eps and x0 recovered from (x_t, target) must give z and x0 back. */
static void test_objective_maps(void) {
    dd_schedule s;
    CHECK_OK(dd_schedule_init(&s, DD_SCHEDULE_COSINE, 100, 0, 0));
    const double x0 = 0.37, z = -1.3;
    double worst = 0;
    for (int obj = 0; obj < DD_OBJECTIVE_COUNT; obj++)
        for (int t = 1; t <= 99; t += 7) { /* t = 100 has abar ~ 2e-7: x0 from x_t is ill-posed */
            const double sa = sqrt(s.abar64[t]), sb = sqrt(1 - s.abar64[t]);
            const double xt = sa * x0 + sb * z;
            float a, b;
            dd_target_coefs(&s, (dd_objective)obj, t, &a, &b);
            const double target = a * x0 + b * z;
            dd_output_to_eps_coefs(&s, (dd_objective)obj, t, &a, &b);
            const double eps = a * xt + b * target;
            dd_output_to_x0_coefs(&s, (dd_objective)obj, t, &a, &b);
            const double x0e = a * xt + b * target;
            worst = fmax(worst, fmax(fabs(eps - z), fabs(x0e - x0)));
            if (obj == DD_OBJECTIVE_V) CHECK(fabs(target - (sa * z - sb * x0)) < 1e-6);
        }
    CHECKF(worst < 2e-4, "objective round trip error %g", worst);
    dd_schedule_free(&s);
}

/* ---------------------------------------------------------------- the CLI */

static char *run_cli(const char *args, int *status) {
    const char *bin = getenv("DIFFUSION_BIN");
    if (!bin) return NULL;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' schedule %s 2>&1", bin, args);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += got;
        if (cap - len < 1024) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    int st = pclose(p);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return buf;
}

static void test_cli(void) {
    if (!getenv("DIFFUSION_BIN")) {
        printf("  (DIFFUSION_BIN not set: CLI checks not run)\n");
        return;
    }
    int st;
    char *out = run_cli("--kind cosine --timesteps 100", &st);
    CHECKF(out && st == 0, "exit %d", st);
    if (out) {
        CHECKF(strncmp(out, "t,beta,alpha_bar,posterior_variance\n", 36) == 0, "header: %.60s", out);
        int lines = 0;
        for (char *c = out; *c; c++) lines += *c == '\n';
        CHECKF(lines == 101, "%d lines", lines);
        char *row = strstr(out, "\n100,");
        double beta = 0, abar = 0, pv = 0;
        CHECK(row && sscanf(row + 1, "100,%lf,%lf,%lf", &beta, &abar, &pv) == 3);
        CHECKF(fabs(beta - 0.999) < 1e-7 && near(abar, 2.4285722794e-07, 1e-6), "row 100: %g %g",
               beta, abar);
        free(out);
    }
    out = run_cli("--kind linear --timesteps 100 --ddim 10", &st);
    CHECKF(out && st == 0 && strncmp(out, "t,t_next\n100,90\n90,80\n", 22) == 0 &&
               strstr(out, "\n10,1\n"),
           "ddim pairs: %s", out ? out : "(none)");
    free(out);
    struct {
        const char *args, *msg;
    } bad[] = {
        {"--timesteps 100 --ddim 101", "diffusion: error: --ddim 101 is more than --timesteps 100"},
        {"--timesteps 0", "diffusion: error: --timesteps must be at least 1"},
        {"--kind quadratic", "diffusion: error: unknown schedule 'quadratic'"},
        {"--timesteps x", "diffusion: error: --timesteps: 'x' is not an integer"},
        {"--bogus", "diffusion: error: unknown option"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        out = run_cli(bad[i].args, &st);
        CHECKF(out && st == 1 && strstr(out, bad[i].msg), "'%s': exit %d, output: %s", bad[i].args,
               st, out ? out : "(none)");
        free(out);
    }
    out = run_cli("--help", &st);
    CHECK(out && st == 0 && strstr(out, "usage: diffusion schedule"));
    free(out);
}

int main(void) {
    test_spec_cosine();
    test_linear_ends();
    test_reference_csvs();
    test_ddim_times();
    test_refusals();
    test_objective_maps();
    test_cli();
    return tu_finish();
}
