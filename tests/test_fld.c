/* FLD core: feature statistics against numpy, the Frechet distance against scipy (and against
 * 40-digit arithmetic on the near-singular cases), its invariants, and the statistics file.
 * Reference files: tests/reference/fld_reference.py writes tests/reference/fld/ (formats there). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"
#include "diffusion/fld.h"
#include "diffusion/safetensors.h"
#include "testutil.h"

#define REF_DIR DD_SOURCE_DIR "/tests/reference/fld/"

/* The reference files are little-endian; so are the machines this project runs on. */
static uint64_t rd_u64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

typedef struct {
    int d;
    double fd_scipy, fd_exact; /* fd_exact NaN when the script did not compute it */
    double *mu1, *s1, *mu2, *s2;
    void *raw;
} ref_pair;

static int load_pair(ref_pair *r, const char *name) {
    char path[512];
    snprintf(path, sizeof path, REF_DIR "pair_%s.bin", name);
    size_t len = 0;
    unsigned char *b = tu_read_file(path, &len);
    memset(r, 0, sizeof *r);
    if (!b || len < 32 || memcmp(b, "DDFLDREF", 8) != 0) {
        fprintf(stderr, "cannot read %s (run tests/reference/fld_reference.py)\n", path);
        free(b);
        return -1;
    }
    uint64_t d = rd_u64(b + 8);
    if (d < 1 || d > 1000 || len != 32 + 8 * (2 * d + 2 * d * d)) {
        fprintf(stderr, "%s: bad size\n", path);
        free(b);
        return -1;
    }
    r->d = (int)d;
    memcpy(&r->fd_scipy, b + 16, 8);
    memcpy(&r->fd_exact, b + 24, 8);
    /* copy out: the file's doubles need not be aligned */
    double *x = malloc(8 * (2 * d + 2 * d * d));
    memcpy(x, b + 32, 8 * (2 * d + 2 * d * d));
    free(b);
    r->raw = x;
    r->mu1 = x;
    r->s1 = r->mu1 + d;
    r->mu2 = r->s1 + d * d;
    r->s2 = r->mu2 + d;
    return 0;
}

static double trace(const double *s, int d) {
    double t = 0;
    for (int i = 0; i < d; i++) t += s[(size_t)i * d + i];
    return t;
}

static void test_reference_pairs(void) {
    static const char *names[] = {"spd5",           "spd20",          "spd84", "features84",
                                  "nearsingular84", "bothsingular84", "dead84", "rankdef84"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        ref_pair r;
        CHECKF(load_pair(&r, names[k]) == 0, "reference pair %s missing", names[k]);
        if (!r.raw) continue;
        const int d = r.d;
        double fd = NAN, fd21 = NAN;
        CHECK_OK(dd_frechet_distance(&fd, r.mu1, r.s1, r.mu2, r.s2, d));
        double rel = fabs(fd - r.fd_scipy) / fabs(r.fd_scipy);
        printf("%-15s d=%2d  FD %.12f  scipy %.12f  rel %.1e", names[k], d, fd, r.fd_scipy, rel);
        CHECKF(rel < 1e-6, "%s: FD %.15g vs scipy %.15g (rel %.2e)", names[k], fd, r.fd_scipy, rel);
        if (!isnan(r.fd_exact)) {
            /* Our route is meant to be better than scipy's on these: hold it to the exact value. */
            double rex = fabs(fd - r.fd_exact) / fabs(r.fd_exact);
            printf("  exact %.12f  rel %.1e", r.fd_exact, rex);
            CHECKF(rex < 1e-10, "%s: FD %.15g vs exact %.15g (rel %.2e)", names[k], fd, r.fd_exact, rex);
        }
        printf("\n");

        /* symmetric */
        CHECK_OK(dd_frechet_distance(&fd21, r.mu2, r.s2, r.mu1, r.s1, d));
        CHECKF(fabs(fd21 - fd) <= 1e-12 * fabs(fd), "%s: FD(1,2) %.17g != FD(2,1) %.17g", names[k], fd, fd21);

        /* a set against itself: 0 up to rounding of the traces */
        for (int side = 0; side < 2; side++) {
            const double *mu = side ? r.mu2 : r.mu1, *s = side ? r.s2 : r.s1;
            double self = NAN;
            CHECK_OK(dd_frechet_distance(&self, mu, s, mu, s, d));
            CHECKF(fabs(self) <= 1e-12 * trace(s, d), "%s: FD(S%d, S%d) = %.3g, not 0", names[k],
                   side + 1, side + 1, self);
        }

        /* moving one mean by v adds exactly |mu1 + v - mu2|^2 - |mu1 - mu2|^2; against itself the
         * distance is |v|^2 */
        double *mv = malloc(sizeof(double) * d), v2 = 0, old2 = 0, new2 = 0;
        for (int i = 0; i < d; i++) {
            double v = 0.25 * sin(1.0 + i);
            mv[i] = r.mu1[i] + v;
            v2 += v * v;
            old2 += (r.mu1[i] - r.mu2[i]) * (r.mu1[i] - r.mu2[i]);
            new2 += (mv[i] - r.mu2[i]) * (mv[i] - r.mu2[i]);
        }
        double fdv = NAN, selfv = NAN;
        CHECK_OK(dd_frechet_distance(&fdv, mv, r.s1, r.mu2, r.s2, d));
        CHECKF(fabs((fdv - fd) - (new2 - old2)) <= 1e-12 * (fabs(fd) + new2), "%s: mean shift", names[k]);
        CHECK_OK(dd_frechet_distance(&selfv, mv, r.s1, r.mu1, r.s1, d));
        CHECKF(fabs(selfv - v2) <= 1e-12 * trace(r.s1, d) + 1e-14 * v2,
               "%s: FD(mu + v, S; mu, S) = %.17g, |v|^2 = %.17g", names[k], selfv, v2);
        free(mv);
        free(r.raw);
    }
}

/* largest |a - b| over largest |b| */
static double max_rel(const double *a, const double *b, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    return m > 0 ? e / m : e;
}

static void test_statistics(void) {
    size_t len = 0;
    unsigned char *b = tu_read_file(REF_DIR "features.bin", &len);
    CHECKF(b && len >= 24 && memcmp(b, "DDFLDFEA", 8) == 0, "features.bin missing or bad");
    if (!b || len < 24) {
        free(b);
        return;
    }
    const int64_t n = (int64_t)rd_u64(b + 8);
    const int d = (int)rd_u64(b + 16);
    const size_t nd = (size_t)n * d, dd = (size_t)d * d;
    CHECK(len == 24 + 4 * nd + 8 * (d + dd));
    if (len != 24 + 4 * nd + 8 * (d + dd)) {
        free(b);
        return;
    }
    float *x = malloc(4 * nd);          /* (n, d) */
    double *mean_ref = malloc(8 * d);   /* (d) */
    double *cov_ref = malloc(8 * dd);   /* (d, d) */
    memcpy(x, b + 24, 4 * nd);
    memcpy(mean_ref, b + 24 + 4 * nd, 8 * d);
    memcpy(cov_ref, b + 24 + 4 * nd + 8 * d, 8 * dd);
    free(b);

    /* one shot */
    dd_fld_stats s1;
    CHECK_OK(dd_fld_stats_compute(&s1, x, n, d));
    double em = max_rel(s1.mean, mean_ref, d), ec = max_rel(s1.cov, cov_ref, dd);
    printf("features n=%lld d=%d: mean rel %.1e, cov rel %.1e vs numpy\n", (long long)n, d, em, ec);
    CHECKF(em < 1e-14, "mean vs numpy: %.2e", em);
    /* the features sit at 1000 +- a few: a sum-of-squares formula in double would be off ~1e-9 */
    CHECKF(ec < 1e-12, "cov vs numpy: %.2e", ec);
    CHECK(s1.n == n);
    int dead_ok = s1.mean[7] == 0.0;
    for (int j = 0; j < d; j++) dead_ok &= s1.cov[7 * d + j] == 0.0 && s1.cov[(size_t)j * d + 7] == 0.0;
    CHECKF(dead_ok, "the dead feature 7 must have exactly zero mean and covariance");
    int sym = 1;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) sym &= s1.cov[(size_t)i * d + j] == s1.cov[(size_t)j * d + i];
    CHECK(sym);

    /* streaming, with a first batch of one vector (shift = that vector), odd batch sizes, an empty
     * batch, and a finish in the middle (the accumulator stays usable) */
    dd_fld_accum a;
    CHECK_OK(dd_fld_accum_init(&a, d));
    static const int64_t sizes[] = {1, 0, 37, 256, 7};
    int64_t off = 0;
    dd_fld_stats mid = {0};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        CHECK_OK(dd_fld_accum_add(&a, x + (size_t)off * d, sizes[k]));
        off += sizes[k];
        if (k == 2) CHECK_OK(dd_fld_accum_finish(&a, &mid));
    }
    CHECK(off == n);
    CHECK(mid.n == 38);
    dd_fld_stats s2;
    CHECK_OK(dd_fld_accum_finish(&a, &s2));
    em = max_rel(s2.mean, mean_ref, d);
    ec = max_rel(s2.cov, cov_ref, dd);
    CHECKF(em < 1e-14 && ec < 1e-12, "batched stats vs numpy: mean %.2e cov %.2e", em, ec);

    /* a batch with a NaN is refused and leaves the accumulator as it was */
    float bad[84 * 2];
    memcpy(bad, x, sizeof(float) * 2 * d);
    bad[d + 3] = NAN;
    CHECK(d == 84);
    CHECK(dd_fld_accum_add(&a, bad, 2) == -1);
    CHECK(strstr(dd_error_message(), "not finite") != NULL);
    dd_fld_stats s3;
    CHECK_OK(dd_fld_accum_finish(&a, &s3));
    CHECK(s3.n == n && memcmp(s3.cov, s2.cov, 8 * dd) == 0 && memcmp(s3.mean, s2.mean, 8 * d) == 0);

    /* FD of the set against itself, and against the set moved by v: exactly |v|^2 (the covariance
     * of x + v equals that of x up to rounding of the float features) */
    double fd = NAN;
    CHECK_OK(dd_fld_distance(&fd, &s1, &s2));
    CHECKF(fabs(fd) < 1e-10 * trace(s1.cov, d), "FD(x, x) = %.3g", fd);
    float *xv = malloc(4 * nd);
    double v2 = 0;
    for (int j = 0; j < d; j++) {
        float v = (float)(j % 5) - 2.0f; /* small integers: x + v is exact in float */
        v2 += (double)v * v;
        for (int64_t r = 0; r < n; r++) xv[(size_t)r * d + j] = x[(size_t)r * d + j] + v;
    }
    dd_fld_stats sv;
    CHECK_OK(dd_fld_stats_compute(&sv, xv, n, d));
    CHECK_OK(dd_fld_distance(&fd, &sv, &s1));
    CHECKF(fabs(fd - v2) < 1e-9 * v2, "FD(x + v, x) = %.17g, |v|^2 = %.17g", fd, v2);

    /* a distance between two halves of the data is positive and symmetric */
    dd_fld_stats h1, h2;
    CHECK_OK(dd_fld_stats_compute(&h1, x, 150, d));
    CHECK_OK(dd_fld_stats_compute(&h2, x + 150 * (size_t)d, n - 150, d));
    double f12 = NAN, f21 = NAN;
    CHECK_OK(dd_fld_distance(&f12, &h1, &h2));
    CHECK_OK(dd_fld_distance(&f21, &h2, &h1));
    CHECKF(f12 > 0 && fabs(f12 - f21) <= 1e-12 * f12, "halves: %.17g %.17g", f12, f21);

    /* errors */
    dd_fld_accum one;
    CHECK_OK(dd_fld_accum_init(&one, d));
    CHECK_OK(dd_fld_accum_add(&one, x, 1));
    dd_fld_stats none;
    CHECK(dd_fld_accum_finish(&one, &none) == -1);
    CHECK(strstr(dd_error_message(), "at least 2") != NULL);
    CHECK(none.mean == NULL);
    dd_fld_accum_free(&one);
    CHECK(dd_fld_accum_add(&one, x, 1) == -1); /* freed */
    CHECK(dd_fld_accum_init(&one, 0) == -1);
    dd_fld_stats small;
    CHECK_OK(dd_fld_stats_compute(&small, x, 10, 5)); /* 10 vectors of 5 (a reshaped view) */
    CHECK(dd_fld_distance(&fd, &small, &s1) == -1);
    CHECK(strstr(dd_error_message(), "dimensions differ") != NULL);

    dd_fld_stats_free(&small);
    dd_fld_stats_free(&h1);
    dd_fld_stats_free(&h2);
    dd_fld_stats_free(&sv);
    dd_fld_stats_free(&s3);
    dd_fld_stats_free(&s2);
    dd_fld_stats_free(&s2); /* twice is fine */
    dd_fld_stats_free(&mid);
    dd_fld_stats_free(&s1);
    dd_fld_accum_free(&a);
    free(xv);
    free(x);
    free(mean_ref);
    free(cov_ref);
}

static void test_distance_errors(void) {
    /* a "covariance" with eigenvalue -1 is refused; NaN is refused; d out of range is refused */
    double mu[2] = {0, 0}, good[4] = {1, 0, 0, 1}, neg[4] = {0, 1, 1, 0}, nan_[4] = {1, NAN, NAN, 1};
    double fd = 0;
    CHECK(dd_frechet_distance(&fd, mu, neg, mu, good, 2) == -1);
    CHECK(strstr(dd_error_message(), "positive semi-definite") != NULL);
    CHECK(dd_frechet_distance(&fd, mu, good, mu, nan_, 2) == -1);
    CHECK(dd_frechet_distance(&fd, mu, good, mu, good, 0) == -1);
    /* d = 1 closed form: (m1 - m2)^2 + (sqrt s1 - sqrt s2)^2 */
    double m1 = 0.5, m2 = -1.0, a = 4.0, c = 0.25;
    CHECK_OK(dd_frechet_distance(&fd, &m1, &a, &m2, &c, 1));
    CHECKF(fabs(fd - (2.25 + 2.25)) < 1e-15, "d=1: %.17g", fd);
    /* only the upper triangle is read */
    double upper[4] = {2, 0.5, 12345, 1}, full[4] = {2, 0.5, 0.5, 1}, fu = 0, ff = 0;
    CHECK_OK(dd_frechet_distance(&fu, mu, upper, mu, good, 2));
    CHECK_OK(dd_frechet_distance(&ff, mu, full, mu, good, 2));
    CHECK(fu == ff);
    /* singular and zero covariances: FD(0, I) = tr I = d */
    double zero[4] = {0, 0, 0, 0};
    CHECK_OK(dd_frechet_distance(&fd, mu, zero, mu, good, 2));
    CHECKF(fabs(fd - 2.0) < 1e-15, "FD(0, I) = %.17g", fd);
}

/* Write a statistics-like safetensors file with the given pieces (NULL skips one). */
static void write_st(const char *path, const char *format, const char *version, const char *n,
                     dd_st_dtype mean_dtype, const void *mean, uint64_t dm, const double *cov,
                     uint64_t c0, uint64_t c1, int extra) {
    const uint64_t ms[1] = {dm}, cs[2] = {c0, c1};
    static const double one = 1.0;
    dd_st_entry t[3];
    int nt = 0;
    if (mean) t[nt++] = (dd_st_entry){"mean", mean_dtype, 1, ms, mean};
    if (cov) t[nt++] = (dd_st_entry){"cov", DD_ST_F64, 2, cs, cov};
    if (extra) t[nt++] = (dd_st_entry){"extra", DD_ST_F64, 0, NULL, &one};
    dd_st_pair m[3];
    int nm = 0;
    if (format) m[nm++] = (dd_st_pair){"format", format};
    if (version) m[nm++] = (dd_st_pair){"version", version};
    if (n) m[nm++] = (dd_st_pair){"n", n};
    CHECK_OK(dd_st_save(path, t, nt, m, nm));
}

static void expect_load_error(const char *path, const char *what, const char *msg) {
    dd_fld_stats u;
    int rc = dd_fld_stats_load(&u, path);
    CHECKF(rc == -1 && strstr(dd_error_message(), msg) != NULL, "%s: rc %d, message '%s'", what, rc,
           dd_error_message());
    CHECK(u.mean == NULL && u.cov == NULL && u.d == 0);
    dd_fld_stats_free(&u);
}

static void test_file(void) {
    const int d = 84;
    dd_fld_stats s;
    CHECK_OK(dd_fld_stats_alloc(&s, d));
    s.n = 10000;
    for (int i = 0; i < d; i++) {
        s.mean[i] = 0.1 * i - 3.0 + 1e-17 * i;
        for (int j = 0; j <= i; j++)
            s.cov[(size_t)i * d + j] = s.cov[(size_t)j * d + i] = (i == j ? 2.0 : 0.0) + 1.0 / (1 + i + j);
    }
    const char *path = DD_BINARY_DIR "/test_fld_stats.safetensors";
    CHECK_OK(dd_fld_stats_save(&s, path));
    dd_fld_stats t;
    CHECK_OK(dd_fld_stats_load(&t, path));
    CHECK(t.d == d && t.n == 10000);
    CHECK(t.mean && memcmp(t.mean, s.mean, 8 * (size_t)d) == 0);
    CHECK(t.cov && memcmp(t.cov, s.cov, 8 * (size_t)d * d) == 0);
    double fd = NAN;
    CHECK_OK(dd_fld_distance(&fd, &s, &t));
    CHECK(fabs(fd) < 1e-12);
    dd_fld_stats_free(&t);

    /* the file is plain safetensors: the generic reader sees the two tensors and the metadata */
    dd_safetensors st;
    CHECK_OK(dd_st_load(path, &st));
    const dd_st_tensor *c = dd_st_find(&st, "cov");
    CHECK(c && c->dtype == DD_ST_F64 && c->ndim == 2 && c->shape[0] == 84 && c->shape[1] == 84);
    CHECK(dd_st_meta(&st, "n") && strcmp(dd_st_meta(&st, "n"), "10000") == 0);
    dd_st_free(&st);

    /* damaged or wrong files, each refused with its own message */
    const char *bad = DD_BINARY_DIR "/test_fld_stats_bad.safetensors";
    size_t len = 0;
    unsigned char *b = tu_read_file(path, &len);
    CHECK(b && len > 1000);
    if (b) {
        FILE *f = fopen(bad, "wb");
        CHECK(f && fwrite(b, 1, len - 1000, f) == len - 1000);
        if (f) fclose(f);
        expect_load_error(bad, "truncated", "truncated");
    }
    free(b);
    float meanf[84] = {0};
    double *cov2 = calloc((size_t)d * (d + 1), sizeof(double));
    const char *F = "diffusion-fld-stats";
    write_st(bad, "something-else", "1", "10000", DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "format", "not an FLD statistics file");
    write_st(bad, NULL, "1", "10000", DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "no format", "not an FLD statistics file");
    write_st(bad, F, "2", "10000", DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "version", "version \"2\"");
    write_st(bad, F, "1", NULL, DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "no n", "sample count");
    write_st(bad, F, "1", "12x", DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "n not a number", "sample count");
    write_st(bad, F, "1", "1", DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "n = 1", "sample count");
    write_st(bad, F, "1", "10000", DD_ST_F32, meanf, d, s.cov, d, d, 0);
    expect_load_error(bad, "F32 mean", "expected F64");
    write_st(bad, F, "1", "10000", DD_ST_F64, s.mean, d, cov2, d, d + 1, 0);
    expect_load_error(bad, "cov shape", "shape [84, 85], expected [84, 84]");
    write_st(bad, F, "1", "10000", DD_ST_F64, s.mean, d, NULL, 0, 0, 0);
    expect_load_error(bad, "no cov", "1 tensors");
    write_st(bad, F, "1", "10000", DD_ST_F64, s.mean, d, s.cov, d, d, 1);
    expect_load_error(bad, "extra tensor", "3 tensors");
    write_st(bad, F, "1", "10000", DD_ST_F64, NULL, 0, cov2, d, d + 1, 1);
    expect_load_error(bad, "no mean", "\"mean\" missing");
    s.cov[5 * d + 9] = NAN;
    write_st(bad, F, "1", "10000", DD_ST_F64, s.mean, d, s.cov, d, d, 0);
    expect_load_error(bad, "NaN", "non-finite");
    s.cov[5 * d + 9] = 0;
    free(cov2);
    remove(bad);
    remove(path);
    expect_load_error(DD_BINARY_DIR "/no_such_fld_stats.safetensors", "missing file", "no_such_fld_stats");
    CHECK(dd_fld_stats_save(&s, DD_BINARY_DIR "/no_such_dir/x.safetensors") == -1);
    s.n = 1;
    CHECK(dd_fld_stats_save(&s, path) == -1);
    dd_fld_stats_free(&s);
}

int main(void) {
    test_reference_pairs();
    test_statistics();
    test_distance_errors();
    test_file();
    return tu_finish();
}
