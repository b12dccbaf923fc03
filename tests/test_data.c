/* Data sets: IDX files (plain and gzipped) written here and read back, every bad-input case with
 * its message, image folders (PNGs written with stb_image_write, read back resized), the real
 * Fashion-MNIST when Debian's package is installed, the generated 2-D sets on their curves, the
 * validation split, batch gather and the per-epoch shuffle. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <stb_image_write.h> /* implementation in the library (host/image.c) */

#include "diffusion/data.h"
#include "diffusion/error.h"
#include "testutil.h"

static char root[256];

/* Fail unless the last error mentions each of the given words. */
#define CHECK_MSG(word)                                                                           \
    CHECKF(strstr(dd_error_message(), (word)) != NULL, "message \"%s\" lacks \"%s\"",             \
           dd_error_message(), (word))

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Write bytes to path, gzipped or not. */
static void write_bytes(const char *path, const uint8_t *b, size_t n, int gz) {
    if (gz) {
        gzFile g = gzopen(path, "wb");
        gzwrite(g, b, (unsigned)n);
        gzclose(g);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(b, 1, n, f);
        fclose(f);
    }
}

/* An IDX file: magic 00 00 08 nd, dims, data; `cut` bytes dropped from the end, `extra` zero
 * bytes appended. */
static void write_idx(const char *path, const uint32_t *dims, int nd, const uint8_t *data, int gz,
                      int cut, int extra, uint8_t type) {
    size_t total = 1;
    for (int i = 0; i < nd; i++) total *= dims[i];
    size_t len = 4 + 4 * (size_t)nd + total;
    uint8_t *b = calloc(len + (size_t)extra, 1);
    b[2] = type, b[3] = (uint8_t)nd;
    for (int i = 0; i < nd; i++) put_be32(b + 4 + 4 * i, dims[i]);
    memcpy(b + 4 + 4 * nd, data, total);
    write_bytes(path, b, len + (size_t)extra - (size_t)cut, gz);
    free(b);
}

#define NIMG 5
#define IH 4
#define IW 3
static uint8_t pix[NIMG * IH * IW], lab_vals[NIMG] = {2, 0, 1, 2, 1};

/* A folder `name` with the four files (or only some); returns its path in dir. */
static void make_idx_dir(char *dir, size_t len, const char *name, int gz, int split_test) {
    snprintf(dir, len, "%s/%s", root, name);
    mkdir(dir, 0755);
    char p[512];
    uint32_t idims[3] = {NIMG, IH, IW}, ldims[1] = {NIMG};
    const char *pre = split_test ? "t10k" : "train";
    snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte%s", dir, pre, gz ? ".gz" : "");
    write_idx(p, idims, 3, pix, gz, 0, 0, 8);
    snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte%s", dir, pre, gz ? ".gz" : "");
    write_idx(p, ldims, 1, lab_vals, gz, 0, 0, 8);
}

static void check_tiny(const dd_dataset *d, int64_t n) {
    CHECK(d->n == n && d->c == 1 && d->h == IH && d->w == IW);
    CHECK(d->num_classes == 3);
    CHECK(d->y != NULL);
    int ok = 1;
    for (int64_t i = 0; i < n * IH * IW; i++)
        if (fabsf(d->x[i] - ((float)pix[i] / 127.5f - 1.0f)) > 1e-6f) ok = 0;
    CHECK(ok);
    for (int64_t i = 0; i < n && d->y; i++) CHECK(d->y[i] == lab_vals[i]);
}

static void test_idx(void) {
    for (int i = 0; i < NIMG * IH * IW; i++) pix[i] = (uint8_t)(i * 37 % 256);
    pix[0] = 0, pix[1] = 255;
    char dir[512], p[600];
    dd_dataset d;

    make_idx_dir(dir, sizeof dir, "plain", 0, 0);
    CHECK_OK(dd_load_idx(&d, dir, 0, 0));
    check_tiny(&d, NIMG);
    CHECK(d.x[0] == -1.0f && d.x[1] == 1.0f);
    dd_dataset_free(&d);
    CHECK_OK(dd_load_idx(&d, dir, 0, 2)); /* limit */
    check_tiny(&d, 2);
    CHECK(d.num_classes == 3);
    dd_dataset_free(&d);
    /* no t10k files in this folder */
    CHECK(dd_load_idx(&d, dir, 1, 0) == -1);
    CHECK_MSG("t10k-images-idx3-ubyte");
    CHECK_MSG("missing");

    make_idx_dir(dir, sizeof dir, "gz", 1, 1);
    CHECK_OK(dd_load_idx(&d, dir, 1, 0));
    check_tiny(&d, NIMG);
    dd_dataset_free(&d);
    /* the named forms */
    dd_data_opts o = dd_data_opts_default();
    o.test_split = 1;
    snprintf(p, sizeof p, "idx:%s", dir);
    CHECK_OK(dd_dataset_load(&d, p, &o));
    check_tiny(&d, NIMG);
    dd_dataset_free(&d);
    snprintf(p, sizeof p, "mnist:%s", dir);
    o.limit = 3;
    CHECK_OK(dd_dataset_load(&d, p, &o));
    check_tiny(&d, 3);
    dd_dataset_free(&d);
    o.limit = 0;
    CHECK(dd_dataset_load(&d, p, NULL) == -1); /* default = train split, absent here */
    CHECK_MSG("train-images-idx3-ubyte");

    /* missing folder */
    snprintf(p, sizeof p, "mnist:%s/nowhere", root);
    CHECK(dd_dataset_load(&d, p, &o) == -1);
    CHECK_MSG("nowhere");
    CHECK(dd_dataset_load(&d, "no-such-set", &o) == -1);
    CHECK_MSG("unknown data set");

    uint32_t idims[3] = {NIMG, IH, IW}, ldims[1] = {NIMG}, ldims_bad[1] = {NIMG - 1};
    struct {
        const char *name, *expect;
        int gz, cut, extra, nd;
        uint8_t type;
        const uint32_t *ld;
    } bad[] = {
        {"magic", "magic", 0, 0, 0, 3, 0x0D, ldims},
        {"trunc", "truncated", 0, 7, 0, 3, 8, ldims},
        {"truncgz", "truncated", 1, 7, 0, 3, 8, ldims},
        {"trailing", "trailing", 0, 0, 5, 3, 8, ldims},
        {"trailinggz", "trailing", 1, 0, 5, 3, 8, ldims},
        {"count", "do not match", 1, 0, 0, 3, 8, ldims_bad},
        {"ndim", "3 dimensions", 0, 0, 0, 2, 8, ldims},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        snprintf(dir, sizeof dir, "%s/bad_%s", root, bad[k].name);
        mkdir(dir, 0755);
        const char *gz = bad[k].gz ? ".gz" : "";
        uint32_t d2[2] = {NIMG * IH, IW};
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte%s", dir, gz);
        write_idx(p, bad[k].nd == 3 ? idims : d2, bad[k].nd, pix, bad[k].gz, bad[k].cut,
                  bad[k].extra, bad[k].type);
        char lp[600];
        snprintf(lp, sizeof lp, "%s/train-labels-idx1-ubyte%s", dir, gz);
        write_idx(lp, bad[k].ld, 1, lab_vals, bad[k].gz, 0, 0, 8);
        dd_error_clear();
        int rc = dd_load_idx(&d, dir, 0, 0);
        CHECKF(rc == -1, "bad case %s loaded", bad[k].name);
        printf("bad %-10s -> %s\n", bad[k].name, dd_error_message());
        CHECK_MSG(bad[k].expect);
        CHECK_MSG("train-images-idx3-ubyte"); /* names the file */
        CHECK(d.x == NULL);
    }
    /* truncated label file: the message names the label file */
    snprintf(dir, sizeof dir, "%s/bad_labels", root);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
    write_idx(p, idims, 3, pix, 0, 0, 0, 8);
    snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte.gz", dir);
    write_idx(p, ldims, 1, lab_vals, 1, 2, 0, 8);
    CHECK(dd_load_idx(&d, dir, 0, 0) == -1);
    CHECK_MSG("train-labels-idx1-ubyte.gz");
    CHECK_MSG("truncated");
    /* a gzip stream cut short (the compressed file itself truncated) */
    snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte.gz", dir);
    write_idx(p, ldims, 1, lab_vals, 1, 0, 0, 8);
    struct stat st;
    CHECK(stat(p, &st) == 0 && truncate(p, st.st_size - 6) == 0);
    CHECK(dd_load_idx(&d, dir, 0, 0) == -1);
    printf("cut gzip -> %s\n", dd_error_message());
    CHECK_MSG("train-labels-idx1-ubyte.gz");
    CHECK_MSG("truncated");
}

/* ---------------------------------------------------------------- image folders */
static void test_images(void) {
    char dir[512], p[600];
    dd_dataset d;
    snprintf(dir, sizeof dir, "%s/imgs", root);
    mkdir(dir, 0755);
    /* b.png 8x6 RGB uniform (200, 100, 50); a.png 5x5 grey 30; c.jpg-named PNG? no: c.png RGBA */
    uint8_t rgb[6 * 8 * 3], grey[25], rgba[10 * 10 * 4];
    for (int i = 0; i < 48; i++) rgb[3 * i] = 200, rgb[3 * i + 1] = 100, rgb[3 * i + 2] = 50;
    memset(grey, 30, sizeof grey);
    for (int i = 0; i < 100; i++)
        rgba[4 * i] = 10, rgba[4 * i + 1] = 250, rgba[4 * i + 2] = 130, rgba[4 * i + 3] = 255;
    snprintf(p, sizeof p, "%s/b.png", dir);
    CHECK(stbi_write_png(p, 8, 6, 3, rgb, 8 * 3));
    snprintf(p, sizeof p, "%s/a.png", dir);
    CHECK(stbi_write_png(p, 5, 5, 1, grey, 5));
    snprintf(p, sizeof p, "%s/c.PNG", dir);
    CHECK(stbi_write_png(p, 10, 10, 4, rgba, 10 * 4));
    snprintf(p, sizeof p, "%s/notes.txt", dir); /* ignored: not an image name */
    write_bytes(p, (const uint8_t *)"hello", 5, 0);

    CHECK_OK(dd_load_image_folder(&d, dir, 3, 4, 7, 0));
    CHECK(d.n == 3 && d.c == 3 && d.h == 4 && d.w == 7 && d.y == NULL && d.num_classes == 0);
    const float expect[3][3] = {{30, 30, 30}, {200, 100, 50}, {10, 250, 130}}; /* a, b, c */
    int ok = 1;
    for (int k = 0; k < 3 && d.x; k++)
        for (int ch = 0; ch < 3; ch++)
            for (int i = 0; i < 4 * 7; i++) {
                float v = d.x[((size_t)k * 3 + ch) * 28 + i];
                if (fabsf(v - (expect[k][ch] / 127.5f - 1.0f)) > 2.5f / 127.5f) ok = 0;
            }
    CHECKF(ok, "image folder values (sorted order a, b, c; resized uniform colours)");
    dd_dataset_free(&d);
    /* grey, via the named form, with a limit */
    dd_data_opts o = dd_data_opts_default();
    o.channels = 1, o.height = 3, o.width = 3, o.limit = 2;
    snprintf(p, sizeof p, "images:%s", dir);
    CHECK_OK(dd_dataset_load(&d, p, &o));
    CHECK(d.n == 2 && d.c == 1 && d.h == 3 && d.w == 3);
    /* stb's luma: (77 r + 150 g + 29 b) >> 8 = 124 for (200, 100, 50) */
    if (d.x) {
        CHECK(fabsf(d.x[0] - (30 / 127.5f - 1)) < 2.5f / 127.5f);
        CHECK(fabsf(d.x[9] - (124 / 127.5f - 1)) < 2.5f / 127.5f);
    }
    dd_dataset_free(&d);
    /* a plain folder without IDX files is an image folder */
    CHECK_OK(dd_dataset_load(&d, dir, &o));
    CHECK(d.n == 2 && d.c == 1);
    dd_dataset_free(&d);

    /* empty folder */
    snprintf(dir, sizeof dir, "%s/empty", root);
    mkdir(dir, 0755);
    CHECK(dd_load_image_folder(&d, dir, 3, 8, 8, 0) == -1);
    CHECK_MSG("no images");
    CHECK_MSG("empty");
    /* an image that does not decode */
    snprintf(dir, sizeof dir, "%s/broken", root);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/good.png", dir);
    CHECK(stbi_write_png(p, 5, 5, 1, grey, 5));
    snprintf(p, sizeof p, "%s/junk.png", dir);
    write_bytes(p, (const uint8_t *)"this is not a PNG at all", 24, 0);
    CHECK(dd_load_image_folder(&d, dir, 3, 8, 8, 0) == -1);
    CHECK_MSG("junk.png");
    CHECK_MSG("decode");
    CHECK(d.x == NULL);
    CHECK(dd_load_image_folder(&d, dir, 2, 8, 8, 0) == -1); /* 2 channels: not offered */
}

/* ---------------------------------------------------------------- Fashion-MNIST */
static void test_fashion(void) {
    struct stat st;
    if (stat(DD_FASHION_MNIST_DIR, &st) != 0) {
        printf("Fashion-MNIST not installed (dataset-fashion-mnist): that part skipped\n");
        dd_dataset d;
        CHECK(dd_dataset_load(&d, "fashion-mnist", NULL) == -1);
        CHECK_MSG("dataset-fashion-mnist");
        return;
    }
    const int64_t want[2] = {60000, 10000};
    for (int split = 0; split < 2; split++) {
        dd_dataset d;
        dd_data_opts o = dd_data_opts_default();
        o.test_split = split;
        CHECK_OK(dd_dataset_load(&d, "fashion-mnist", &o));
        CHECK(d.n == want[split] && d.c == 1 && d.h == 28 && d.w == 28 && d.num_classes == 10);
        if (!d.x || !d.y) continue;
        float lo = 1e9f, hi = -1e9f;
        int64_t counts[10] = {0}, badlab = 0;
        for (int64_t i = 0; i < d.n * 784; i++) lo = fminf(lo, d.x[i]), hi = fmaxf(hi, d.x[i]);
        for (int64_t i = 0; i < d.n; i++) {
            if (d.y[i] < 0 || d.y[i] > 9) badlab++;
            else counts[d.y[i]]++;
        }
        CHECK(lo == -1.0f && hi == 1.0f);
        CHECK(badlab == 0);
        for (int k = 0; k < 10; k++) CHECK(counts[k] == d.n / 10); /* balanced classes */
        dd_dataset_free(&d);
    }
}

/* ---------------------------------------------------------------- generated 2-D */
static void test_2d(void) {
    const char *kinds[3] = {"spiral", "s-curve", "moons"};
    const int64_t n = 2000;
    for (int k = 0; k < 3; k++) {
        dd_dataset d, e;
        CHECK_OK(dd_make_2d(&d, kinds[k], n, 7));
        CHECK(d.n == n && d.c == 2 && d.h == 1 && d.w == 1 && d.y == NULL);
        if (!d.x) continue;
        float lo = 2, hi = -2;
        for (int64_t i = 0; i < 2 * n; i++) lo = fminf(lo, d.x[i]), hi = fmaxf(hi, d.x[i]);
        CHECKF(lo >= -1.0f && hi <= 1.0f && lo < -0.999f && hi > 0.999f, "%s range [%g, %g]",
               kinds[k], lo, hi);
        /* back to raw coordinates and onto the curve of ../shared/SPEC.md */
        double worst = 0, span = d.raw_max - d.raw_min;
        for (int64_t i = 0; i < n; i++) {
            double x = d.raw_min + (d.x[2 * i] + 1.0) / 2 * span;
            double y = d.raw_min + (d.x[2 * i + 1] + 1.0) / 2 * span;
            double err;
            if (k == 0) { /* r = t in [1.5 pi, 4.5 pi], angle = t mod 2 pi */
                double r = hypot(x, y), dt = remainder(atan2(y, x) - r, 2 * M_PI);
                err = fabs(dt) * r / 14;
                if (r < 1.5 * M_PI - 0.01 || r > 4.5 * M_PI + 0.01) err = 1;
            } else if (k == 1) { /* sin t = x, 1 - cos t = |y| */
                err = fabs(x * x + (1 - fabs(y)) * (1 - fabs(y)) - 1);
            } else if (i < n / 2) { /* upper arc */
                err = fabs(hypot(x, y) - 1) + (y < -1e-4 ? 1 : 0);
            } else {
                err = fabs(hypot(1 - x, 0.5 - y) - 1) + (y > 0.5 + 1e-4 ? 1 : 0);
            }
            if (err > worst) worst = err;
        }
        CHECKF(worst < 2e-3, "%s: worst distance from the curve %g", kinds[k], worst);
        /* deterministic in the seed */
        CHECK_OK(dd_make_2d(&e, kinds[k], n, 7));
        CHECK(e.x && memcmp(d.x, e.x, (size_t)n * 2 * sizeof(float)) == 0);
        dd_dataset_free(&e);
        CHECK_OK(dd_make_2d(&e, kinds[k], n, 8));
        CHECK(e.x && memcmp(d.x, e.x, (size_t)n * 2 * sizeof(float)) != 0);
        dd_dataset_free(&e);
        dd_dataset_free(&d);
    }
    dd_dataset d;
    CHECK(dd_make_2d(&d, "circle", 10, 0) == -1);
    CHECK_MSG("circle");

    /* conditional: class k is exactly the single set k */
    dd_dataset c;
    CHECK_OK(dd_make_2d_conditional(&c, 500, 3));
    CHECK(c.n == 1500 && c.num_classes == 3 && c.y != NULL);
    for (int k = 0; k < 3 && c.x && c.y; k++) {
        dd_dataset s;
        CHECK_OK(dd_make_2d(&s, dd_2d_class_name(k), 500, 3));
        CHECK(memcmp(c.x + 2 * 500 * k, s.x, 500 * 2 * sizeof(float)) == 0);
        int lab_ok = 1;
        for (int i = 0; i < 500; i++) lab_ok &= c.y[500 * k + i] == k;
        CHECK(lab_ok);
        dd_dataset_free(&s);
    }
    dd_dataset_free(&c);
    dd_data_opts o = dd_data_opts_default();
    o.n_points = 100, o.seed = 5;
    CHECK_OK(dd_dataset_load(&c, "conditional-2d", &o));
    CHECK(c.n == 300 && c.num_classes == 3);
    dd_dataset_free(&c);
    CHECK_OK(dd_dataset_load(&c, "moons", &o));
    CHECK(c.n == 100 && c.c == 2);
    dd_dataset_free(&c);
}

/* ---------------------------------------------------------------- split, gather, shuffle */
static void test_split_gather_shuffle(void) {
    int64_t *ti, *vi, nt, nv;
    CHECK_OK(dd_split_indices(1000, DD_VAL_FRACTION_DEFAULT, 42, &ti, &nt, &vi, &nv));
    CHECK(nt == 900 && nv == 100);
    uint8_t *seen = calloc(1000, 1);
    int sorted = 1;
    for (int64_t i = 0; i < nt; i++) seen[ti[i]]++, sorted &= i == 0 || ti[i] > ti[i - 1];
    for (int64_t i = 0; i < nv; i++) seen[vi[i]]++, sorted &= i == 0 || vi[i] > vi[i - 1];
    int once = 1;
    for (int i = 0; i < 1000; i++) once &= seen[i] == 1;
    CHECK(once && sorted);
    /* held out from across the set, not a block at the end */
    CHECK(vi[0] < 200 && vi[nv - 1] > 800);
    int64_t *ti2, *vi2, nt2, nv2;
    CHECK_OK(dd_split_indices(1000, 0.1, 42, &ti2, &nt2, &vi2, &nv2));
    CHECK(memcmp(vi, vi2, 100 * sizeof *vi) == 0); /* deterministic */
    free(ti2), free(vi2);
    CHECK_OK(dd_split_indices(1000, 0.1, 43, &ti2, &nt2, &vi2, &nv2));
    CHECK(memcmp(vi, vi2, 100 * sizeof *vi) != 0);
    free(ti2), free(vi2);
    free(ti), free(vi), free(seen);
    CHECK(dd_split_indices(10, 1.0, 0, &ti, &nt, &vi, &nv) == -1);
    CHECK_OK(dd_split_indices(5, 0.1, 0, &ti, &nt, &vi, &nv)); /* rounds to 0: still one held out */
    CHECK(nt == 4 && nv == 1);
    free(ti), free(vi);

    /* a labelled set: example i has every value i, label i % 3 */
    dd_dataset all = {0};
    all.n = 50, all.c = 1, all.h = 2, all.w = 2, all.num_classes = 3;
    all.x = malloc(50 * 4 * sizeof(float));
    all.y = malloc(50 * sizeof(int32_t));
    for (int i = 0; i < 50; i++) {
        for (int j = 0; j < 4; j++) all.x[4 * i + j] = (float)i;
        all.y[i] = i % 3;
    }
    dd_dataset tr, va;
    CHECK_OK(dd_dataset_split(&all, 0.2, 1, &tr, &va));
    CHECK(tr.n == 40 && va.n == 10 && tr.num_classes == 3 && tr.h == 2);
    int consistent = 1;
    for (int64_t i = 0; i < va.n; i++) {
        int e = (int)va.x[4 * i];
        consistent &= va.y[i] == e % 3 && va.x[4 * i + 3] == (float)e;
    }
    CHECK(consistent);
    dd_dataset_free(&tr), dd_dataset_free(&va);

    int64_t idx[3] = {7, 0, 49};
    float xb[3 * 4];
    int32_t yb[3];
    CHECK_OK(dd_gather(xb, yb, &all, idx, 3));
    CHECK(xb[0] == 7 && xb[3] == 7 && xb[4] == 0 && xb[8] == 49 && xb[11] == 49);
    CHECK(yb[0] == 1 && yb[1] == 0 && yb[2] == 1);
    CHECK_OK(dd_gather(xb, NULL, &all, idx, 3)); /* labels not wanted */
    int64_t badidx[2] = {3, 50};
    CHECK(dd_gather(xb, yb, &all, badidx, 2) == -1);
    CHECK_MSG("out of range");
    dd_dataset_free(&all);

    /* shuffle: a permutation, reproducible from (seed, epoch), different per epoch */
    int64_t a[100], b[100];
    dd_epoch_order(a, 100, 9, 3);
    dd_iota(b, 100);
    dd_shuffle(b, 100, 9, 3);
    CHECK(memcmp(a, b, sizeof a) == 0);
    uint8_t hit[100] = {0};
    for (int i = 0; i < 100; i++) hit[a[i]]++;
    int perm = 1, moved = 0;
    for (int i = 0; i < 100; i++) perm &= hit[i] == 1, moved += a[i] != i;
    CHECK(perm && moved > 80);
    dd_epoch_order(b, 100, 9, 4);
    CHECK(memcmp(a, b, sizeof a) != 0);
    dd_epoch_order(b, 100, 10, 3);
    CHECK(memcmp(a, b, sizeof a) != 0);
    /* unbiased: each of the 6 orders of 3 elements about equally often over 6000 epochs */
    int count[6] = {0};
    for (int e = 0; e < 6000; e++) {
        int64_t s[3];
        dd_epoch_order(s, 3, 1, (uint64_t)e);
        count[s[0] * 2 + (s[1] > s[2] ? 1 : 0)]++;
    }
    for (int k = 0; k < 6; k++) CHECKF(count[k] > 850 && count[k] < 1150, "order %d: %d of 6000", k, count[k]);
}

/* Remove root and everything under it (two levels: root/dir/file). */
static void cleanup(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
}

int main(void) {
    snprintf(root, sizeof root, "test_data_XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_idx();
    test_images();
    test_2d();
    test_split_gather_shuffle();
    test_fashion();
    cleanup();
    return tu_finish();
}
