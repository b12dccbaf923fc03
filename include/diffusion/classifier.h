/* The LeNet5 classifier behind the Frechet LeNet Distance (SPEC.md "Frechet LeNet Distance"):
 * training it (Adam, softmax cross-entropy, shuffled epochs), its test accuracy, its 84 features
 * over a whole set of images in batches, its checkpoint, and the reference statistics of a data
 * set's test images cached beside the classifier file.
 *
 * Pixel ranges: the project holds every image in [-1, 1] (data sets, samples, raw files); LeNet
 * was trained, as the original's, on [0, 1]. Every function here that takes images says which
 * range it gets (dd_pixel_range) and maps [-1, 1] to [0, 1] by (x + 1) / 2, without clamping:
 * samples drawn with --no-clip that leave [-1, 1] are judged as they are.
 *
 * Shape letters: n images, B batch, K classes, F = 84 features. Images are (n, 1, 28, 28). */
#ifndef DIFFUSION_CLASSIFIER_H
#define DIFFUSION_CLASSIFIER_H

#include <stddef.h>
#include <stdint.h>

#include "diffusion/data.h"
#include "diffusion/fld.h"
#include "diffusion/runner.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DD_LENET_FEATURES 84
/* Images per forward pass when extracting features or measuring accuracy (bounds memory). */
#define DD_CLASSIFIER_EVAL_BATCH 256
/* Metadata "kind" of a classifier checkpoint. */
#define DD_CLASSIFIER_KIND "classifier"

typedef enum {
    DD_PIXELS_PM1, /* values in [-1, 1]: rescaled by (x + 1) / 2 */
    DD_PIXELS_01   /* values already in [0, 1] */
} dd_pixel_range;

/* A fresh LeNet5 for K classes (1x28x28 inputs) on backend be, weights from seed. */
int dd_classifier_init(dd_runner *r, const dd_backend *be, int classes, uint64_t seed);

typedef struct {
    int epochs;     /* default 10 (SPEC) */
    int batch;      /* default 32 */
    float lr;       /* Adam learning rate, default 1e-3 */
    uint64_t seed;  /* epoch order (dd_epoch_order(seed, epoch)); the weights' seed is init's */
    int progress;   /* progress bar on stderr: 1 always, 0 never, -1 when stderr is a tty */
    /* Called after every epoch with its mean batch loss and seconds taken (may be NULL). A
     * non-zero return stops training with that status (set dd_error first). */
    int (*on_epoch)(void *ctx, int epoch, int epochs, double mean_loss, double seconds);
    void *ctx;
} dd_classifier_opts;

void dd_classifier_opts_default(dd_classifier_opts *o);

/* Train r on the labelled set `train` (pixels in [-1, 1], as dd_dataset_load gives; 1x28x28;
 * labels < r->cfg.classes). Each epoch visits a Philox shuffle of the set in batches of
 * o->batch (the last partial batch is dropped; a set smaller than one batch is an error). A NaN
 * or infinite loss stops with an error naming the epoch. epoch_loss (o->epochs) or NULL receives
 * each epoch's mean batch loss. */
int dd_classifier_train(dd_runner *r, const dd_dataset *train, const dd_classifier_opts *o,
                        double *epoch_loss);

/* Forward pass over n images x (n, 1, 28, 28) host memory in `range`, in batches of
 * DD_CLASSIFIER_EVAL_BATCH (the last one padded, never a new graph). Either output may be NULL:
 * features (n, 84) host, logits (n, K) host. */
int dd_classifier_forward(dd_runner *r, const float *x, int64_t n, dd_pixel_range range,
                          float *features, float *logits);

/* Fraction of d's examples (pixels in [-1, 1], labelled) whose largest logit is the label. */
int dd_classifier_accuracy(dd_runner *r, const dd_dataset *d, double *accuracy);

/* Add the features of n images (host, `range`) to a (an accumulator of d = 84), in batches:
 * the features of a whole set never need to be held at once. */
int dd_classifier_accumulate(dd_runner *r, dd_fld_accum *a, const float *x, int64_t n,
                             dd_pixel_range range);

/* Statistics (mean, covariance) of the features of n images: accumulate + finish. */
int dd_classifier_stats(dd_runner *r, const float *x, int64_t n, dd_pixel_range range,
                        dd_fld_stats *out);

/* ---------------------------------------------------------------- checkpoint */

/* Save r's values as a checkpoint (include/diffusion/checkpoint.h) with metadata "kind" =
 * "classifier", "config" = the LeNet config JSON, "data", "test_accuracy", "epochs". */
int dd_classifier_save(const char *path, const dd_runner *r, const char *data,
                       double test_accuracy, int epochs);
/* Load a classifier checkpoint into a fresh runner on be. Refuses, with a message naming the
 * file, a checkpoint whose "kind" is not "classifier" or whose config is not LeNet 1x28x28.
 * test_accuracy (may be NULL) receives the saved accuracy (NAN when absent). */
int dd_classifier_load(const char *path, const dd_backend *be, dd_runner *r,
                       double *test_accuracy);

/* ---------------------------------------------------------------- reference statistics */

/* Where the cached reference statistics of (classifier file, data set) live:
 *   <classifier>.ref-<name>-<key>.safetensors
 * <name> is the data spec with every character outside [A-Za-z0-9._-] replaced by '_' (cut to
 * 48 characters); <key> is 16 hex digits: the CRC-32 (zlib) of the classifier file's bytes and
 * the CRC-32 of "<file size>:<data spec>". A retrained classifier has other bytes, so other
 * statistics: the old cache is never read again. */
int dd_fld_reference_path(char *buf, size_t size, const char *classifier_path,
                          const char *data_spec);

/* Reference statistics for FLD: the features of every test image (test split) of data_spec,
 * taken from the cache when it exists (and loads), else computed and saved there (stale caches
 * of other keys for the same classifier and name are removed). *from_cache (may be NULL)
 * says which; cache_path (may be NULL, cache_size bytes) receives the cache's path. */
int dd_fld_reference_stats(dd_runner *r, const char *classifier_path, const char *data_spec,
                           dd_fld_stats *out, int *from_cache, char *cache_path,
                           size_t cache_size);

#ifdef __cplusplus
}
#endif
#endif
