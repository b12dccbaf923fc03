/* Data sets: named-set dispatch, validation split, batch gather and the per-epoch shuffle.
 * The loaders live in data_idx.c (MNIST IDX), data_images.c (image folders), data_2d.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "diffusion/data.h"
#include "diffusion/error.h"
#include "diffusion/philox.h"

/* Philox stream tags ("SHUF", "VALS" in the high word) so shuffles and splits never draw the
 * numbers that noise or 2-D generation draw from the same seed. */
#define STREAM_SHUFFLE 0x5348554600000000ull
#define STREAM_SPLIT 0x56414C5300000000ull

void dd_dataset_free(dd_dataset *d) {
    if (!d) return;
    free(d->x);
    free(d->y);
    memset(d, 0, sizeof *d);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_idx_files(const char *dir) {
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
    if (stat(p, &st) == 0) return 1;
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", dir);
    if (stat(p, &st) == 0) return 1;
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte", dir);
    if (stat(p, &st) == 0) return 1;
    snprintf(p, sizeof p, "%s/t10k-images-idx3-ubyte.gz", dir);
    return stat(p, &st) == 0;
}

/* Keep the first `limit` examples (the generated sets have no limit of their own). */
static void apply_limit(dd_dataset *d, int64_t limit) {
    if (limit > 0 && limit < d->n) d->n = limit; /* buffers stay larger; harmless */
}

int dd_dataset_load(dd_dataset *out, const char *spec, const dd_data_opts *opts) {
    memset(out, 0, sizeof *out);
    dd_data_opts def = dd_data_opts_default();
    if (!opts) opts = &def;
    if (!spec || !*spec) return dd_error("no data set named");
    if (strcmp(spec, "fashion-mnist") == 0) {
        if (!is_dir(DD_FASHION_MNIST_DIR))
            return dd_error("Fashion-MNIST not found in %s: install Debian's package "
                            "dataset-fashion-mnist (apt install dataset-fashion-mnist), or give "
                            "mnist:DIR with the four IDX files",
                            DD_FASHION_MNIST_DIR);
        return dd_load_idx(out, DD_FASHION_MNIST_DIR, opts->test_split, opts->limit);
    }
    if (strncmp(spec, "mnist:", 6) == 0) return dd_load_idx(out, spec + 6, opts->test_split, opts->limit);
    if (strncmp(spec, "idx:", 4) == 0) return dd_load_idx(out, spec + 4, opts->test_split, opts->limit);
    if (strcmp(spec, "mnist") == 0)
        return dd_error("MNIST is not packaged: download its four IDX files into a folder and "
                        "give mnist:DIR");
    if (strncmp(spec, "images:", 7) == 0)
        return dd_load_image_folder(out, spec + 7, opts->channels, opts->height, opts->width,
                                    opts->limit);
    if (strcmp(spec, "spiral") == 0 || strcmp(spec, "s-curve") == 0 || strcmp(spec, "moons") == 0) {
        DD_TRY(dd_make_2d(out, spec, opts->n_points, opts->seed));
        apply_limit(out, opts->limit);
        return 0;
    }
    if (strcmp(spec, "conditional-2d") == 0 || strcmp(spec, "2d-conditional") == 0) {
        DD_TRY(dd_make_2d_conditional(out, opts->n_points, opts->seed));
        return 0; /* no limit: it would cut whole classes away */
    }
    if (is_dir(spec)) {
        if (has_idx_files(spec)) return dd_load_idx(out, spec, opts->test_split, opts->limit);
        return dd_load_image_folder(out, spec, opts->channels, opts->height, opts->width,
                                    opts->limit);
    }
    return dd_error("unknown data set '%s': use fashion-mnist, mnist:DIR, idx:DIR, images:DIR, "
                    "spiral, s-curve, moons, conditional-2d, or an existing folder",
                    spec);
}

/* ---------------------------------------------------------------- shuffling and splitting */
void dd_iota(int64_t *idx, int64_t n) {
    for (int64_t i = 0; i < n; i++) idx[i] = i;
}

/* Fisher-Yates with draw i from Philox (seed, stream, i). */
static void shuffle_stream(int64_t *idx, int64_t n, uint64_t seed, uint64_t stream) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)dd_philox_below(seed, stream, (uint64_t)i, (uint32_t)(i + 1));
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

void dd_shuffle(int64_t *idx, int64_t n, uint64_t seed, uint64_t epoch) {
    shuffle_stream(idx, n, seed, STREAM_SHUFFLE + (epoch & 0xFFFFFFFFull));
}

void dd_epoch_order(int64_t *idx, int64_t n, uint64_t seed, uint64_t epoch) {
    dd_iota(idx, n);
    dd_shuffle(idx, n, seed, epoch);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int dd_split_indices(int64_t n, double val_fraction, uint64_t seed, int64_t **train_idx,
                     int64_t *n_train, int64_t **val_idx, int64_t *n_val) {
    *train_idx = *val_idx = NULL;
    *n_train = *n_val = 0;
    if (n < 1) return dd_error("validation split of an empty data set");
    if (n > ((int64_t)1 << 32)) return dd_error("validation split: too many examples");
    if (!(val_fraction >= 0.0 && val_fraction < 1.0))
        return dd_error("validation fraction %g not in [0, 1)", val_fraction);
    int64_t nv = (int64_t)llround(val_fraction * (double)n);
    if (val_fraction > 0 && nv == 0 && n > 1) nv = 1;
    if (nv >= n) nv = n - 1; /* keep at least one training example */
    int64_t *perm = malloc((size_t)n * sizeof *perm);      /* (n) */
    int64_t *v = malloc((size_t)(nv ? nv : 1) * sizeof *v); /* (nv) */
    int64_t *t = malloc((size_t)(n - nv) * sizeof *t);     /* (n - nv) */
    if (!perm || !v || !t) {
        free(perm), free(v), free(t);
        return dd_error("out of memory splitting %lld examples", (long long)n);
    }
    dd_iota(perm, n);
    shuffle_stream(perm, n, seed, STREAM_SPLIT);
    memcpy(v, perm, (size_t)nv * sizeof *v);
    memcpy(t, perm + nv, (size_t)(n - nv) * sizeof *t);
    free(perm);
    qsort(v, (size_t)nv, sizeof *v, cmp_i64);
    qsort(t, (size_t)(n - nv), sizeof *t, cmp_i64);
    *train_idx = t;
    *n_train = n - nv;
    *val_idx = v;
    *n_val = nv;
    return 0;
}

int dd_dataset_subset(dd_dataset *out, const dd_dataset *src, const int64_t *idx, int64_t count) {
    memset(out, 0, sizeof *out);
    int64_t per = dd_dataset_example_size(src);
    out->x = malloc((size_t)((count ? count : 1) * per) * sizeof(float)); /* (count, c, h, w) */
    if (src->y) out->y = malloc((size_t)(count ? count : 1) * sizeof(int32_t)); /* (count) */
    if (!out->x || (src->y && !out->y)) {
        dd_dataset_free(out);
        return dd_error("out of memory for a subset of %lld examples", (long long)count);
    }
    if (dd_gather(out->x, out->y, src, idx, count) != 0) {
        dd_dataset_free(out);
        return -1;
    }
    out->n = count;
    out->c = src->c, out->h = src->h, out->w = src->w;
    out->num_classes = src->num_classes;
    out->raw_min = src->raw_min, out->raw_max = src->raw_max;
    return 0;
}

int dd_dataset_split(const dd_dataset *all, double val_fraction, uint64_t seed, dd_dataset *train,
                     dd_dataset *val) {
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    int64_t *ti, *vi, nt, nv;
    DD_TRY(dd_split_indices(all->n, val_fraction, seed, &ti, &nt, &vi, &nv));
    int rc = dd_dataset_subset(train, all, ti, nt);
    if (rc == 0) rc = dd_dataset_subset(val, all, vi, nv);
    if (rc != 0) dd_dataset_free(train);
    free(ti);
    free(vi);
    return rc;
}

int dd_gather(float *x_batch, int32_t *y_batch, const dd_dataset *d, const int64_t *idx,
              int64_t count) {
    int64_t per = dd_dataset_example_size(d);
    for (int64_t b = 0; b < count; b++)
        if (idx[b] < 0 || idx[b] >= d->n)
            return dd_error("batch index %lld out of range [0, %lld)", (long long)idx[b],
                            (long long)d->n);
    for (int64_t b = 0; b < count; b++) {
        memcpy(x_batch + b * per, d->x + idx[b] * per, (size_t)per * sizeof(float));
        if (y_batch && d->y) y_batch[b] = d->y[idx[b]];
    }
    return 0;
}
