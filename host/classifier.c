/* LeNet5 for FLD: training loop, accuracy, features in batches, checkpoint, cached reference
 * statistics (see include/diffusion/classifier.h). */
#include "diffusion/classifier.h"

#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "diffusion/checkpoint.h"
#include "diffusion/error.h"
#include "diffusion/progress.h"

#define PIXELS (28 * 28)

int dd_classifier_init(dd_runner *r, const dd_backend *be, int classes, uint64_t seed) {
    dd_model_config c;
    dd_model_config_default(&c, DD_MODEL_LENET);
    c.classes = classes;
    return dd_runner_init(r, &c, be, seed);
}

void dd_classifier_opts_default(dd_classifier_opts *o) {
    memset(o, 0, sizeof *o);
    o->epochs = 10;
    o->batch = 32;
    o->lr = 1e-3f;
    o->progress = -1;
}

static int check_images(const dd_dataset *d, const char *what) {
    if (d->c != 1 || d->h != 28 || d->w != 28)
        return dd_error("%s: LeNet takes 1x28x28 images, the set has %dx%dx%d", what, d->c, d->h, d->w);
    return 0;
}

/* dst (m, 784) = src in [0, 1] */
static void to_unit(float *dst, const float *src, size_t count, dd_pixel_range range) {
    if (range == DD_PIXELS_01) {
        memcpy(dst, src, count * sizeof(float));
        return;
    }
    for (size_t i = 0; i < count; i++) dst[i] = (src[i] + 1.0f) * 0.5f;
}

int dd_classifier_train(dd_runner *r, const dd_dataset *train, const dd_classifier_opts *o,
                        double *epoch_loss) {
    if (r->cfg.kind != DD_MODEL_LENET) return dd_error("dd_classifier_train needs a LeNet runner");
    DD_TRY(check_images(train, "training set"));
    if (!train->y) return dd_error("the training set has no labels: a classifier needs them");
    if (train->num_classes > r->cfg.classes)
        return dd_error("the training set has %d classes, the classifier %d", train->num_classes, r->cfg.classes);
    const int B = o->batch;
    if (B < 1 || o->epochs < 1 || !(o->lr > 0)) return dd_error("classifier training: batch, epochs and lr must be positive");
    if (train->n < B)
        return dd_error("%lld training images are fewer than one batch of %d", (long long)train->n, B);
    const dd_backend *be = r->be;
    const int64_t batches = train->n / B; /* the last partial batch is dropped, as in dd_train */
    float *x_host = malloc((size_t)B * PIXELS * sizeof(float)); /* (B, 1, 28, 28) */
    int32_t *y_host = malloc((size_t)B * sizeof(int32_t));      /* (B) */
    int64_t *order = malloc((size_t)train->n * sizeof(int64_t)); /* (n) */
    float *x_dev = NULL;                                        /* backend (B, 1, 28, 28) */
    int32_t *y_dev = NULL;                                      /* backend (B) */
    int rc = 0;
    if (!x_host || !y_host || !order) rc = dd_error("out of host memory");
    if (!rc) rc = be->alloc((void **)&x_dev, (size_t)B * PIXELS * sizeof(float));
    if (!rc) rc = be->alloc((void **)&y_dev, (size_t)B * sizeof(int32_t));
    for (int epoch = 0; !rc && epoch < o->epochs; epoch++) {
        dd_epoch_order(order, train->n, o->seed, (uint64_t)epoch);
        dd_progress pb;
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", epoch + 1, o->epochs);
        dd_progress_start(&pb, label, batches, "img/s", o->progress);
        double sum = 0, t0 = dd_now();
        for (int64_t k = 0; !rc && k < batches; k++) {
            rc = dd_gather(x_host, y_host, train, order + k * B, B);
            if (rc) break;
            to_unit(x_host, x_host, (size_t)B * PIXELS, DD_PIXELS_PM1);
            rc = be->to_device(x_dev, x_host, (size_t)B * PIXELS * sizeof(float));
            if (!rc) rc = be->to_device(y_dev, y_host, (size_t)B * sizeof(int32_t));
            float loss = 0;
            if (!rc) rc = dd_runner_train_step(r, B, x_dev, NULL, NULL, y_dev, o->lr, 0.0f);
            if (!rc) rc = be->to_host(&loss, dd_runner_loss(r), sizeof loss);
            if (!rc && !isfinite(loss)) /* the step's guard kept every update out */
                rc = dd_error("classifier training: the loss became %g at epoch %d, batch %lld", (double)loss,
                              epoch + 1, (long long)k + 1);
            if (rc) break;
            sum += loss;
            char note[48];
            snprintf(note, sizeof note, "loss %.4f", (double)loss);
            dd_progress_update(&pb, k + 1, (double)(k + 1) * B, note);
        }
        if (rc) break;
        double mean = sum / (double)batches;
        char note[48];
        snprintf(note, sizeof note, "loss %.4f", mean);
        dd_progress_finish(&pb, note);
        if (epoch_loss) epoch_loss[epoch] = mean;
        if (o->on_epoch) rc = o->on_epoch(o->ctx, epoch + 1, o->epochs, mean, dd_now() - t0);
    }
    if (x_dev) be->free(x_dev);
    if (y_dev) be->free(y_dev);
    free(x_host);
    free(y_host);
    free(order);
    return rc;
}

/* Batched forward over n images: the eval graph at B = min(n, DD_CLASSIFIER_EVAL_BATCH), the
 * last chunk padded with zeros so that one planned graph serves every chunk. For each chunk of
 * m images, features (m, 84) and logits (m, K) host are handed to fn. */
typedef int (*chunk_fn)(void *ctx, int64_t first, int m, const float *features, const float *logits);

static int forward_chunks(dd_runner *r, const float *x, int64_t n, dd_pixel_range range,
                          int want_logits, chunk_fn fn, void *ctx) {
    if (r->cfg.kind != DD_MODEL_LENET) return dd_error("the classifier is not a LeNet");
    if (n < 1) return dd_error("no images to classify");
    const int B = n < DD_CLASSIFIER_EVAL_BATCH ? (int)n : DD_CLASSIFIER_EVAL_BATCH;
    const int K = r->cfg.classes;
    dd_runner_graph *rg;
    DD_TRY(dd_runner_eval_graph(r, B, &rg));
    float *xb = malloc((size_t)B * PIXELS * sizeof(float));              /* (B, 1, 28, 28) */
    float *fb = malloc((size_t)B * DD_LENET_FEATURES * sizeof(float));   /* (B, 84) */
    float *lb = want_logits ? malloc((size_t)B * K * sizeof(float)) : NULL; /* (B, K) */
    int rc = 0;
    if (!xb || !fb || (want_logits && !lb)) rc = dd_error("out of host memory");
    for (int64_t i = 0; !rc && i < n; i += B) {
        int m = n - i < B ? (int)(n - i) : B;
        to_unit(xb, x + (size_t)i * PIXELS, (size_t)m * PIXELS, range);
        if (m < B) memset(xb + (size_t)m * PIXELS, 0, (size_t)(B - m) * PIXELS * sizeof(float));
        rc = dd_graph_set_input(rg->g, rg->x, xb, (size_t)B * PIXELS * sizeof(float));
        if (!rc) rc = dd_graph_forward(rg->g);
        if (!rc) rc = dd_graph_get(rg->g, rg->features, fb);
        if (!rc && lb) rc = dd_graph_get(rg->g, rg->out, lb);
        if (!rc) rc = fn(ctx, i, m, fb, lb);
    }
    free(xb);
    free(fb);
    free(lb);
    return rc;
}

typedef struct {
    float *features, *logits;
    int K;
} copy_ctx;

static int copy_chunk(void *ctx, int64_t first, int m, const float *f, const float *l) {
    copy_ctx *c = ctx;
    if (c->features)
        memcpy(c->features + (size_t)first * DD_LENET_FEATURES, f, (size_t)m * DD_LENET_FEATURES * sizeof(float));
    if (c->logits) memcpy(c->logits + (size_t)first * c->K, l, (size_t)m * c->K * sizeof(float));
    return 0;
}

int dd_classifier_forward(dd_runner *r, const float *x, int64_t n, dd_pixel_range range,
                          float *features, float *logits) {
    copy_ctx c = {features, logits, r->cfg.classes};
    return forward_chunks(r, x, n, range, logits != NULL, copy_chunk, &c);
}

typedef struct {
    const int32_t *y;
    int K;
    int64_t correct;
} acc_ctx;

static int count_chunk(void *ctx, int64_t first, int m, const float *f, const float *l) {
    (void)f;
    acc_ctx *c = ctx;
    for (int i = 0; i < m; i++) {
        const float *row = l + (size_t)i * c->K;
        int best = 0;
        for (int k = 1; k < c->K; k++)
            if (row[k] > row[best]) best = k;
        c->correct += best == c->y[first + i];
    }
    return 0;
}

int dd_classifier_accuracy(dd_runner *r, const dd_dataset *d, double *accuracy) {
    DD_TRY(check_images(d, "test set"));
    if (!d->y) return dd_error("the set has no labels: accuracy needs them");
    acc_ctx c = {d->y, r->cfg.classes, 0};
    DD_TRY(forward_chunks(r, d->x, d->n, DD_PIXELS_PM1, 1, count_chunk, &c));
    *accuracy = (double)c.correct / (double)d->n;
    return 0;
}

static int accum_chunk(void *ctx, int64_t first, int m, const float *f, const float *l) {
    (void)first;
    (void)l;
    return dd_fld_accum_add(ctx, f, m);
}

int dd_classifier_accumulate(dd_runner *r, dd_fld_accum *a, const float *x, int64_t n,
                             dd_pixel_range range) {
    if (a->d != DD_LENET_FEATURES)
        return dd_error("the accumulator holds %d features, LeNet gives %d", a->d, DD_LENET_FEATURES);
    return forward_chunks(r, x, n, range, 0, accum_chunk, a);
}

int dd_classifier_stats(dd_runner *r, const float *x, int64_t n, dd_pixel_range range,
                        dd_fld_stats *out) {
    dd_fld_accum a;
    DD_TRY(dd_fld_accum_init(&a, DD_LENET_FEATURES));
    int rc = dd_classifier_accumulate(r, &a, x, n, range);
    if (!rc) rc = dd_fld_accum_finish(&a, out);
    dd_fld_accum_free(&a);
    return rc;
}

/* ---------------------------------------------------------------- checkpoint */

int dd_classifier_save(const char *path, const dd_runner *r, const char *data,
                       double test_accuracy, int epochs) {
    if (r->cfg.kind != DD_MODEL_LENET) return dd_error("dd_classifier_save needs a LeNet runner");
    char *config = dd_model_config_to_json(&r->cfg);
    if (!config) return -1;
    char acc[32], ep[32];
    snprintf(acc, sizeof acc, "%.6f", test_accuracy);
    snprintf(ep, sizeof ep, "%d", epochs);
    dd_st_pair meta[] = {{"kind", DD_CLASSIFIER_KIND},
                         {"config", config},
                         {"data", data ? data : ""},
                         {"test_accuracy", acc},
                         {"epochs", ep}};
    int rc = dd_checkpoint_save(path, r->params, meta, (int)(sizeof meta / sizeof meta[0]), DD_CKPT_VALUES);
    free(config);
    return rc;
}

int dd_classifier_load(const char *path, const dd_backend *be, dd_runner *r,
                       double *test_accuracy) {
    memset(r, 0, sizeof *r);
    dd_safetensors h;
    if (dd_checkpoint_read_meta(path, &h)) return dd_error_prefix("classifier");
    int rc = 0;
    const char *kind = dd_st_meta(&h, "kind"), *cfg = dd_st_meta(&h, "config");
    dd_model_config mc;
    if (!kind || strcmp(kind, DD_CLASSIFIER_KIND))
        rc = dd_error("%s is not a classifier checkpoint (metadata \"kind\" is %s%s%s; train one with "
                      "diffusion train-classifier)", path, kind ? "\"" : "", kind ? kind : "absent", kind ? "\"" : "");
    else if (!cfg)
        rc = dd_error("%s: no model config in the metadata", path);
    else if (dd_model_config_from_json(&mc, cfg))
        rc = dd_error_prefix("%s: model config", path);
    else if (mc.kind != DD_MODEL_LENET)
        rc = dd_error("%s holds a %s model, not LeNet", path, dd_model_kind_name(mc.kind));
    else if (mc.in_channels != 1 || mc.height != 28 || mc.width != 28)
        rc = dd_error("%s: LeNet for %dx%dx%d images; FLD needs 1x28x28", path, mc.in_channels, mc.height, mc.width);
    if (test_accuracy) {
        const char *a = dd_st_meta(&h, "test_accuracy");
        char *end = NULL;
        *test_accuracy = a ? strtod(a, &end) : NAN;
        if (a && (end == a || *end)) *test_accuracy = NAN;
    }
    dd_st_free(&h);
    if (!rc) rc = dd_runner_init(r, &mc, be, 0);
    if (!rc && dd_checkpoint_load(path, r->params, DD_CKPT_VALUES)) rc = dd_error_prefix("classifier");
    if (rc) dd_runner_free(r);
    return rc;
}

/* ---------------------------------------------------------------- reference statistics */

static void safe_name(char *dst, size_t size, const char *spec) {
    size_t i = 0;
    for (; spec[i] && i + 1 < size && i < 48; i++) {
        char ch = spec[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
        dst[i] = ok ? ch : '_';
    }
    dst[i] = 0;
}

/* CRC-32 of the file's bytes (read in blocks) and its size. */
static int file_crc(const char *path, uLong *crc, long long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return dd_error("cannot read classifier %s: %s", path, strerror(errno));
    unsigned char buf[1 << 16];
    uLong c = crc32(0L, Z_NULL, 0);
    long long total = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        c = crc32(c, buf, (uInt)got);
        total += (long long)got;
    }
    int err = ferror(f);
    fclose(f);
    if (err) return dd_error("error reading classifier %s", path);
    *crc = c;
    *size = total;
    return 0;
}

/* prefix "<classifier>.ref-<name>-" */
static int ref_prefix(char *buf, size_t size, const char *classifier_path, const char *data_spec) {
    char name[64];
    safe_name(name, sizeof name, data_spec);
    if (snprintf(buf, size, "%s.ref-%s-", classifier_path, name) >= (int)size) return dd_error("path too long");
    return 0;
}

int dd_fld_reference_path(char *buf, size_t size, const char *classifier_path,
                          const char *data_spec) {
    uLong crc;
    long long fsize;
    DD_TRY(file_crc(classifier_path, &crc, &fsize));
    char key[600];
    snprintf(key, sizeof key, "%lld:%s", fsize, data_spec);
    uLong kcrc = crc32(crc32(0L, Z_NULL, 0), (const Bytef *)key, (uInt)strlen(key));
    char prefix[1100];
    DD_TRY(ref_prefix(prefix, sizeof prefix, classifier_path, data_spec));
    if (snprintf(buf, size, "%s%08lx%08lx.safetensors", prefix, crc & 0xffffffffUL, kcrc & 0xffffffffUL) >= (int)size)
        return dd_error("path too long");
    return 0;
}

/* Remove "<prefix><16 hex>.safetensors" other than keep: caches of earlier versions of the classifier.
 * Failures are ignored: a stale cache is never read, only left behind. */
static void remove_stale(const char *prefix, const char *keep) {
    char pattern[2400];
    size_t j = 0;
    for (size_t i = 0; prefix[i] && j + 2 < sizeof pattern - 160; i++) {
        if (strchr("*?[\\", prefix[i])) pattern[j++] = '\\'; /* the path itself is literal */
        pattern[j++] = prefix[i];
    }
    /* exactly 16 hex digits: "<name>-x-<key>" of another data set must not match "<name>-" */
    for (int k = 0; k < 16; k++) j += (size_t)snprintf(pattern + j, sizeof pattern - j, "[0-9a-f]");
    snprintf(pattern + j, sizeof pattern - j, ".safetensors");
    glob_t gl;
    if (glob(pattern, 0, NULL, &gl) != 0) return;
    for (size_t i = 0; i < gl.gl_pathc; i++)
        if (strcmp(gl.gl_pathv[i], keep)) remove(gl.gl_pathv[i]);
    globfree(&gl);
}

int dd_fld_reference_stats(dd_runner *r, const char *classifier_path, const char *data_spec,
                           dd_fld_stats *out, int *from_cache, char *cache_path,
                           size_t cache_size) {
    memset(out, 0, sizeof *out);
    char path[1200];
    DD_TRY(dd_fld_reference_path(path, sizeof path, classifier_path, data_spec));
    if (cache_path && cache_size) snprintf(cache_path, cache_size, "%s", path);
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        /* a damaged or foreign file under the cache's name is recomputed, not trusted */
        if (!dd_fld_stats_load(out, path) && out->d == DD_LENET_FEATURES) {
            if (from_cache) *from_cache = 1;
            return 0;
        }
        dd_fld_stats_free(out);
    }
    if (from_cache) *from_cache = 0;
    dd_dataset test;
    dd_data_opts o = dd_data_opts_default();
    o.test_split = 1;
    o.channels = 1;
    o.height = o.width = 28;
    if (dd_dataset_load(&test, data_spec, &o)) return dd_error_prefix("reference set %s (test split)", data_spec);
    int rc = check_images(&test, data_spec);
    if (!rc) rc = dd_classifier_stats(r, test.x, test.n, DD_PIXELS_PM1, out);
    dd_dataset_free(&test);
    if (!rc) rc = dd_fld_stats_save(out, path);
    if (!rc) {
        char prefix[1100];
        if (!ref_prefix(prefix, sizeof prefix, classifier_path, data_spec)) remove_stale(prefix, path);
    }
    if (rc) dd_fld_stats_free(out);
    return rc;
}
