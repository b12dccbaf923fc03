/* LeNet5 classifier for FLD on real data (skipped, 77, without Debian's Fashion-MNIST):
 * - 1 epoch on the first 2,000 training images reaches >= 60% on the first 2,000 test images
 *   (chance is 10%; measured 67.2%), and the mean loss falls below ln 10 (chance);
 * - features are (n, 84), non-negative (after relu), and the same whether an image goes
 *   through a full batch or a padded last one;
 * - FLD of a set against itself is 0 within rounding (< 1e-9 of the trace), train vs test is
 *   small and noise vs test is more than 20 times larger;
 * - checkpoint round trip gives the same logits; a checkpoint without kind "classifier" is refused;
 * - the reference-statistics cache: computed once, read back equal, a changed classifier file
 *   gets a new cache and the stale one is removed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/backend.h"
#include "diffusion/checkpoint.h"
#include "diffusion/classifier.h"
#include "diffusion/error.h"
#include "testutil.h"

#define NTRAIN 2000
#define NTEST 2000
#define ACC_BOUND 0.60

static char tmp[512];

static double trace(const dd_fld_stats *s) {
    double t = 0;
    for (int i = 0; i < s->d; i++) t += s->cov[(size_t)i * s->d + i];
    return t;
}

static void test_features(dd_runner *r, const dd_dataset *test) {
    dd_runner_graph *rg;
    CHECK_OK(dd_runner_eval_graph(r, 7, &rg));
    CHECKF(rg->features >= 0 && rg->g->t[rg->features].numel == 7 * DD_LENET_FEATURES,
           "the feature tensor is not (7, 84)");
    /* 300 images: one full batch of 256 and a padded batch of 44 */
    const int n = 300, K = r->cfg.classes;
    float *f = malloc((size_t)n * DD_LENET_FEATURES * sizeof(float));
    float *l = malloc((size_t)n * K * sizeof(float));
    float *f1 = malloc(DD_LENET_FEATURES * sizeof(float));
    CHECK_OK(dd_classifier_forward(r, test->x, n, DD_PIXELS_PM1, f, l));
    int neg = 0, nonzero = 0;
    for (size_t i = 0; i < (size_t)n * DD_LENET_FEATURES; i++) {
        neg += f[i] < 0;
        nonzero += f[i] != 0;
    }
    CHECKF(neg == 0, "%d negative features after relu", neg);
    CHECKF(nonzero > n * DD_LENET_FEATURES / 10, "only %d of %d features non-zero", nonzero, n * DD_LENET_FEATURES);
    /* image 270 alone (a batch of 1) against its row from the padded batch */
    CHECK_OK(dd_classifier_forward(r, test->x + (size_t)270 * 784, 1, DD_PIXELS_PM1, f1, NULL));
    double e = tu_rel_err(f1, f + (size_t)270 * DD_LENET_FEATURES, DD_LENET_FEATURES);
    CHECKF(e < 1e-5, "features of one image depend on its batch: rel err %g", e);
    /* [0, 1] input gives the same as [-1, 1] rescaled */
    float *x01 = malloc(784 * sizeof(float));
    for (int i = 0; i < 784; i++) x01[i] = (test->x[(size_t)270 * 784 + i] + 1) / 2;
    CHECK_OK(dd_classifier_forward(r, x01, 1, DD_PIXELS_01, f1, NULL));
    CHECKF(tu_rel_err(f1, f + (size_t)270 * DD_LENET_FEATURES, DD_LENET_FEATURES) < 1e-5, "DD_PIXELS_01 differs");
    free(x01);
    free(f);
    free(l);
    free(f1);
}

static void test_distances(dd_runner *r, const dd_dataset *train, const dd_dataset *test) {
    dd_fld_stats ref, again, tr, noise;
    memset(&ref, 0, sizeof ref);
    memset(&again, 0, sizeof again);
    memset(&tr, 0, sizeof tr);
    memset(&noise, 0, sizeof noise);
    CHECK_OK(dd_classifier_stats(r, test->x, test->n, DD_PIXELS_PM1, &ref));
    CHECK_OK(dd_classifier_stats(r, test->x, test->n, DD_PIXELS_PM1, &again));
    CHECK(ref.d == DD_LENET_FEATURES && ref.n == test->n);
    double self = NAN, fd_train = NAN, fd_noise = NAN;
    CHECK_OK(dd_fld_distance(&self, &ref, &again));
    CHECKF(fabs(self) < 1e-9 * trace(&ref), "FLD of a set against itself %g (trace %g)", self, trace(&ref));

    /* the batched accumulator equals one-shot statistics of the features held at once */
    float *f = malloc((size_t)test->n * DD_LENET_FEATURES * sizeof(float));
    dd_fld_stats once;
    memset(&once, 0, sizeof once);
    CHECK_OK(dd_classifier_forward(r, test->x, test->n, DD_PIXELS_PM1, f, NULL));
    CHECK_OK(dd_fld_stats_compute(&once, f, test->n, DD_LENET_FEATURES));
    double maxd = 0;
    for (int i = 0; i < DD_LENET_FEATURES * DD_LENET_FEATURES; i++) {
        double dlt = fabs(once.cov[i] - ref.cov[i]);
        maxd = dlt > maxd ? dlt : maxd;
    }
    CHECKF(maxd < 1e-9 * trace(&ref), "batched covariance differs by %g", maxd);
    free(f);
    dd_fld_stats_free(&once);

    CHECK_OK(dd_classifier_stats(r, train->x, train->n, DD_PIXELS_PM1, &tr));
    float *u = malloc((size_t)NTEST * 784 * sizeof(float));
    tu_fill_uniform(u, (size_t)NTEST * 784, 0.0f, 1.0f, 5);
    CHECK_OK(dd_classifier_stats(r, u, NTEST, DD_PIXELS_01, &noise));
    free(u);
    CHECK_OK(dd_fld_distance(&fd_train, &tr, &ref));
    CHECK_OK(dd_fld_distance(&fd_noise, &noise, &ref));
    printf("FLD self %.3g  train-vs-test %.4g  noise-vs-test %.4g\n", self, fd_train, fd_noise);
    CHECKF(fd_train > 0 && fd_noise > 20 * fd_train, "noise %g is not >> train %g", fd_noise, fd_train);
    dd_fld_stats_free(&ref);
    dd_fld_stats_free(&again);
    dd_fld_stats_free(&tr);
    dd_fld_stats_free(&noise);
}

static void test_checkpoint(dd_runner *r, const dd_dataset *test, double acc) {
    char path[600], bad[600];
    snprintf(path, sizeof path, "%s/lenet.safetensors", tmp);
    snprintf(bad, sizeof bad, "%s/nokind.safetensors", tmp);
    CHECK_OK(dd_classifier_save(path, r, "fashion-mnist", acc, 1));
    dd_runner r2;
    double acc2 = 0;
    CHECK_OK(dd_classifier_load(path, &dd_cpu_backend, &r2, &acc2));
    CHECKF(fabs(acc2 - acc) < 1e-6, "saved accuracy %g, read %g", acc, acc2);
    const int K = r->cfg.classes;
    float *l1 = malloc((size_t)20 * K * sizeof(float)), *l2 = malloc((size_t)20 * K * sizeof(float));
    CHECK_OK(dd_classifier_forward(r, test->x, 20, DD_PIXELS_PM1, NULL, l1));
    CHECK_OK(dd_classifier_forward(&r2, test->x, 20, DD_PIXELS_PM1, NULL, l2));
    CHECKF(tu_rel_err(l2, l1, (size_t)20 * K) == 0, "logits differ after a checkpoint round trip");
    dd_runner_free(&r2);
    free(l1);
    free(l2);
    /* the same weights without kind "classifier" (e.g. any other checkpoint) */
    CHECK_OK(dd_checkpoint_save(bad, r->params, NULL, 0, DD_CKPT_VALUES));
    CHECK(dd_classifier_load(bad, &dd_cpu_backend, &r2, NULL) == -1);
    CHECKF(strstr(dd_error_message(), "not a classifier"), "message: %s", dd_error_message());
    /* kind "classifier" over a model that is not LeNet */
    dd_model_config uc;
    dd_model_config_default(&uc, DD_MODEL_UNET);
    char *ujson = dd_model_config_to_json(&uc);
    dd_st_pair meta[] = {{"kind", DD_CLASSIFIER_KIND}, {"config", ujson}};
    CHECK_OK(dd_checkpoint_save(bad, r->params, meta, 2, DD_CKPT_VALUES));
    CHECK(dd_classifier_load(bad, &dd_cpu_backend, &r2, NULL) == -1);
    CHECKF(strstr(dd_error_message(), "not LeNet"), "message: %s", dd_error_message());
    free(ujson);
    remove(bad);
    snprintf(bad, sizeof bad, "%s/missing.safetensors", tmp);
    CHECK(dd_classifier_load(bad, &dd_cpu_backend, &r2, NULL) == -1);
}

static void test_reference_cache(dd_runner *r) {
    char path[600], cache1[1200], cache2[1200];
    snprintf(path, sizeof path, "%s/lenet.safetensors", tmp);
    dd_fld_stats a, b;
    int from = -1;
    CHECK_OK(dd_fld_reference_stats(r, path, "fashion-mnist", &a, &from, cache1, sizeof cache1));
    CHECK(from == 0 && a.n == 10000 && a.d == DD_LENET_FEATURES);
    CHECKF(access(cache1, F_OK) == 0, "no cache at %s", cache1);
    CHECK_OK(dd_fld_reference_stats(r, path, "fashion-mnist", &b, &from, NULL, 0));
    CHECK(from == 1);
    double fd = NAN;
    CHECK_OK(dd_fld_distance(&fd, &a, &b));
    CHECK(memcmp(a.mean, b.mean, DD_LENET_FEATURES * sizeof(double)) == 0 && fabs(fd) < 1e-9 * trace(&a));
    dd_fld_stats_free(&b);
    /* the classifier file changes (other weights): a new cache key, the old cache goes */
    dd_runner other;
    CHECK_OK(dd_classifier_init(&other, &dd_cpu_backend, 10, 99));
    CHECK_OK(dd_classifier_save(path, &other, "fashion-mnist", 0.1, 0));
    CHECK_OK(dd_fld_reference_path(cache2, sizeof cache2, path, "fashion-mnist"));
    CHECKF(strcmp(cache1, cache2) != 0, "the cache name did not change with the classifier");
    CHECK_OK(dd_fld_reference_stats(&other, path, "fashion-mnist", &b, &from, NULL, 0));
    CHECK(from == 0);
    CHECKF(access(cache1, F_OK) != 0, "stale cache %s left behind", cache1);
    CHECK(access(cache2, F_OK) == 0);
    CHECK(memcmp(a.mean, b.mean, DD_LENET_FEATURES * sizeof(double)) != 0);
    /* the same classifier on another data spec: another name */
    CHECK_OK(dd_fld_reference_path(cache1, sizeof cache1, path, "idx:some/dir"));
    CHECKF(strstr(cache1, ".ref-idx_some_dir-") != NULL, "cache name %s", cache1);
    dd_runner_free(&other);
    dd_fld_stats_free(&a);
    dd_fld_stats_free(&b);
    remove(cache2);
    remove(path);
}

int main(void) {
    if (access(DD_FASHION_MNIST_DIR "/train-images-idx3-ubyte.gz", R_OK) != 0)
        tu_skip(DD_FASHION_MNIST_DIR " is missing (Debian package dataset-fashion-mnist)");
    snprintf(tmp, sizeof tmp, "%s/test_classifier_XXXXXX", DD_BINARY_DIR);
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    dd_dataset train, test;
    dd_data_opts o = dd_data_opts_default();
    o.limit = NTRAIN;
    CHECK_OK(dd_dataset_load(&train, "fashion-mnist", &o));
    o.limit = NTEST;
    o.test_split = 1;
    CHECK_OK(dd_dataset_load(&test, "fashion-mnist", &o));
    if (tu_failures) return tu_finish();

    dd_runner r;
    CHECK_OK(dd_classifier_init(&r, &dd_cpu_backend, 10, 1));
    dd_classifier_opts co;
    dd_classifier_opts_default(&co);
    co.epochs = 1;
    co.progress = 0;
    double loss = NAN, acc0 = 0, acc = 0;
    CHECK_OK(dd_classifier_accuracy(&r, &test, &acc0));
    CHECK_OK(dd_classifier_train(&r, &train, &co, &loss));
    CHECK_OK(dd_classifier_accuracy(&r, &test, &acc));
    printf("1 epoch on %d images: mean loss %.4f, test accuracy %.4f (untrained %.4f)\n", NTRAIN, loss, acc, acc0);
    CHECKF(loss < log(10.0), "mean loss %g is not below chance (ln 10)", loss);
    CHECKF(acc >= ACC_BOUND, "test accuracy %.4f < %.2f", acc, ACC_BOUND);

    /* refusals: unlabelled set, set smaller than a batch */
    dd_dataset nolab = train;
    nolab.y = NULL;
    CHECK(dd_classifier_train(&r, &nolab, &co, NULL) == -1);
    dd_dataset tiny = train;
    tiny.n = 5;
    CHECK(dd_classifier_train(&r, &tiny, &co, NULL) == -1);

    test_features(&r, &test);
    test_distances(&r, &train, &test);
    test_checkpoint(&r, &test, acc);
    test_reference_cache(&r);
    rmdir(tmp);
    dd_runner_free(&r);
    dd_dataset_free(&train);
    dd_dataset_free(&test);
    return tu_finish();
}
