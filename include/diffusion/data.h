/* Data sets: MNIST-format IDX files (optionally gzipped), folders of PNG/JPEG images, and the
 * generated 2-D sets of ../shared/SPEC.md; plus the validation split, batch gather and the
 * per-epoch shuffle that training needs.
 *
 * Every set is held in memory as float32 NCHW with values in [-1, 1]:
 *   N examples, C channels, H x W pixels; 2-D points are (N, 2, 1, 1).
 * Labels (int32, 0 .. num_classes-1) are kept when the source has them, else y is NULL and
 * num_classes is 0.
 *
 * Named sets (dd_dataset_load):
 *   "fashion-mnist"          Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist
 *   "mnist:DIR", "idx:DIR"   a folder holding the four MNIST files (.gz or not)
 *   "images:DIR"             a folder of PNG/JPEG images, resized to opts height x width
 *   "spiral", "s-curve", "moons"   generated 2-D points (opts n_points, seed)
 *   "conditional-2d"         the three 2-D shapes as classes 0, 1, 2 (n_points each)
 *   DIR                      a plain folder: IDX when it holds train-images-idx3-ubyte[.gz],
 *                            else a folder of images.
 * Errors follow diffusion/error.h: 0 on success, -1 after dd_error(). */
#ifndef DIFFUSION_DATA_H
#define DIFFUSION_DATA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DD_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"

typedef struct dd_dataset {
    float *x;        /* (n, c, h, w), values in [-1, 1]; owned */
    int32_t *y;      /* (n) labels in [0, num_classes), or NULL; owned */
    int64_t n;       /* number of examples */
    int c, h, w;     /* example shape */
    int num_classes; /* 0 when unlabelled */
    /* Generated 2-D sets: the raw coordinate range [raw_min, raw_max] that was mapped to [-1, 1]
     * (raw = raw_min + (v + 1) / 2 * (raw_max - raw_min)); both 0 for other sets and for the
     * conditional set, whose classes are mapped one by one. */
    float raw_min, raw_max;
} dd_dataset;

typedef struct dd_data_opts {
    int test_split;   /* IDX: 0 = train files, 1 = t10k (test) files */
    int64_t limit;    /* keep the first `limit` examples; 0 = all */
    int channels;     /* image folders: 1 = grey, 3 = RGB */
    int height, width;/* image folders: size every image is resized to */
    int64_t n_points; /* generated 2-D sets: points (per class for conditional-2d) */
    uint64_t seed;    /* generated 2-D sets */
} dd_data_opts;

/* train split, no limit, 3 x 32 x 32 for image folders, 10,000 points, seed 0 */
static inline dd_data_opts dd_data_opts_default(void) {
    dd_data_opts o = {0, 0, 3, 32, 32, 10000, 0};
    return o;
}

/* Load a named set (see the list above). `out` is overwritten; free with dd_dataset_free. */
int dd_dataset_load(dd_dataset *out, const char *spec, const dd_data_opts *opts);
void dd_dataset_free(dd_dataset *d);
/* Floats per example: c * h * w. */
static inline int64_t dd_dataset_example_size(const dd_dataset *d) {
    return (int64_t)d->c * d->h * d->w;
}

/* ---------------------------------------------------------------- the loaders themselves */
/* The four MNIST files in `dir` (each plain or .gz); test_split picks t10k-* over train-*.
 * Images (n, 1, 28, 28) scaled u8 -> v / 127.5 - 1; labels 0..9, num_classes = 10 (max label + 1
 * if a file has more). limit 0 = all. */
int dd_load_idx(dd_dataset *out, const char *dir, int test_split, int64_t limit);
/* One IDX file read whole (gzip or plain): checks magic (0 0 8 ndim), dimensions and exact file
 * length. *data (u8, product of dims) and dims[0 .. *ndim) are returned; caller frees *data. */
int dd_read_idx_file(const char *path, uint8_t **data, int *ndim, uint32_t dims[4]);

/* Every PNG/JPEG/BMP/GIF/TGA file of `dir` in sorted name order, decoded to `channels` (1 or 3)
 * and resized to height x width; no labels. limit 0 = all. */
int dd_load_image_folder(dd_dataset *out, const char *dir, int channels, int height, int width,
                         int64_t limit);

/* Generated 2-D sets (../shared/SPEC.md), shape (n, 2, 1, 1), one global min/max to [-1, 1].
 * kind: "spiral", "s-curve" or "moons". Deterministic in (kind, n, seed). */
int dd_make_2d(dd_dataset *out, const char *kind, int64_t n, uint64_t seed);
/* spiral, s-curve and moons as classes 0, 1, 2, n points each (3n in all, class by class),
 * each shape mapped to [-1, 1] on its own as the original does; class k equals
 * dd_make_2d(kind k, n, seed). */
int dd_make_2d_conditional(dd_dataset *out, int64_t n, uint64_t seed);
/* Name of class k of the conditional set ("spiral", "s-curve", "moons"), NULL out of range. */
const char *dd_2d_class_name(int k);

/* ---------------------------------------------------------------- splitting and batching */
/* Deterministic hold-out: a Philox permutation of 0..n-1 from `seed`; the first
 * round(val_fraction * n) indices (at least 1 when val_fraction > 0 and n > 1) go to
 * validation, the rest to training, each list sorted ascending. val_fraction in [0, 1); pass
 * DD_VAL_FRACTION_DEFAULT for 10%. The caller frees *train_idx and *val_idx. */
#define DD_VAL_FRACTION_DEFAULT 0.1
int dd_split_indices(int64_t n, double val_fraction, uint64_t seed, int64_t **train_idx,
                     int64_t *n_train, int64_t **val_idx, int64_t *n_val);
/* The same split materialised as two data sets (copies); `all` is left untouched. */
int dd_dataset_split(const dd_dataset *all, double val_fraction, uint64_t seed, dd_dataset *train,
                     dd_dataset *val);
/* A copy of the examples idx[0 .. count) of `src`. */
int dd_dataset_subset(dd_dataset *out, const dd_dataset *src, const int64_t *idx, int64_t count);

/* Copy examples idx[0 .. count) into a batch: x_batch (count, c, h, w); y_batch (count) may be
 * NULL (and is left alone when the set has no labels). Indices must be in [0, d->n). */
int dd_gather(float *x_batch, int32_t *y_batch, const dd_dataset *d, const int64_t *idx,
              int64_t count);

/* Fisher-Yates shuffle of idx[0 .. n) in place, drawn from Philox (seed, epoch) only, so a run
 * resumed at `epoch` reproduces that epoch's order. Usually idx = 0..n-1 (dd_iota) first. */
void dd_shuffle(int64_t *idx, int64_t n, uint64_t seed, uint64_t epoch);
/* idx[i] = i */
void dd_iota(int64_t *idx, int64_t n);
/* The order of one epoch: dd_iota then dd_shuffle(seed, epoch). */
void dd_epoch_order(int64_t *idx, int64_t n, uint64_t seed, uint64_t epoch);

#ifdef __cplusplus
}
#endif
#endif
