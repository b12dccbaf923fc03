/* diffusion train-classifier: train the LeNet5 that FLD measures with, report its test accuracy
 * and save it as a checkpoint. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_common.h"
#include "commands.h"
#include "diffusion/atomic_file.h"
#include "diffusion/classifier.h"
#include "diffusion/error.h"
#include "diffusion/progress.h"

static const char *usage =
    "usage: diffusion train-classifier --data SET --out FILE.safetensors [OPTIONS]\n"
    "\n"
    "Train the LeNet5 classifier used by `diffusion fld` (Adam, softmax cross-entropy, inputs\n"
    "in [0, 1]); prints the loss and the test accuracy after every epoch.\n"
    "\n"
    "  --data SET          fashion-mnist | mnist:DIR | idx:DIR (28x28 grey, labelled)\n"
    "  --out FILE          the checkpoint to write (folders are created)\n"
    "  --epochs N          (default 10)\n"
    "  --batch N           (default 32)\n"
    "  --lr LR             Adam learning rate (default 1e-3)\n"
    "  --limit N           train on the first N training images (the test set stays whole)\n"
    "  --seed N            initial weights and epoch order (default 0)\n"
    "  --device DEV        auto | cpu | cuda (default auto)\n"
    "  --quiet             no progress bar\n";

/* mkdir -p of the folder holding `path` */
static int make_parent(const char *path) {
    char buf[1100];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return dd_error("--out: path too long");
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return 0;
    *slash = 0;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) && errno != EEXIST) return dd_error("cannot create %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) && errno != EEXIST) return dd_error("cannot create %s: %s", buf, strerror(errno));
    return 0;
}

typedef struct {
    dd_runner *r;
    const dd_dataset *test;
    double last_acc;
} epoch_ctx;

/* after each epoch: its loss and the test accuracy so far, on stdout */
static int on_epoch(void *ctx, int epoch, int epochs, double loss, double seconds) {
    epoch_ctx *e = ctx;
    DD_TRY(dd_classifier_accuracy(e->r, e->test, &e->last_acc));
    printf("epoch %d/%d: loss %.4f  test accuracy %.4f  (%.1f s)\n", epoch, epochs, loss, e->last_acc, seconds);
    fflush(stdout);
    return 0;
}

int cmd_train_classifier(int argc, char **argv) {
    enum { O_DATA = 1, O_OUT, O_EPOCHS, O_BATCH, O_LR, O_LIMIT, O_SEED, O_DEVICE, O_QUIET, O_HELP };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA}, {"out", required_argument, 0, O_OUT},
        {"epochs", required_argument, 0, O_EPOCHS}, {"batch", required_argument, 0, O_BATCH},
        {"lr", required_argument, 0, O_LR}, {"limit", required_argument, 0, O_LIMIT},
        {"seed", required_argument, 0, O_SEED}, {"device", required_argument, 0, O_DEVICE},
        {"quiet", no_argument, 0, O_QUIET}, {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    const char *data = NULL, *out = NULL, *device = "auto";
    int64_t limit = 0;
    uint64_t seed = 0;
    int quiet = 0, rc = 0, c;
    dd_classifier_opts co;
    dd_classifier_opts_default(&co);
    optind = 1;
    opterr = 0;
    while (!rc && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_DATA: data = optarg; break;
        case O_OUT: out = optarg; break;
        case O_EPOCHS: rc = cli_int("epochs", optarg, 1, 100000, &co.epochs); break;
        case O_BATCH: rc = cli_int("batch", optarg, 1, 1 << 16, &co.batch); break;
        case O_LR: rc = cli_float("lr", optarg, 1e-12, 10, &co.lr); break;
        case O_LIMIT: rc = cli_i64("limit", optarg, 1, INT64_MAX, &limit); break;
        case O_SEED: rc = cli_u64("seed", optarg, &seed); break;
        case O_DEVICE: device = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default:
            return cli_error("unknown or incomplete option '%s' (diffusion train-classifier --help)", argv[optind - 1]);
        }
    }
    if (rc) return cli_error("%s", dd_error_message());
    if (optind < argc) return cli_error("unexpected argument '%s'", argv[optind]);
    if (!data) return cli_error("--data is required (diffusion train-classifier --help)");
    if (!out) return cli_error("--out is required (diffusion train-classifier --help)");
    const dd_backend *be = cli_backend(device);
    if (!be) return cli_error("%s", dd_error_message());

    dd_dataset train, test;
    memset(&test, 0, sizeof test);
    if (cli_load_data(&train, data, limit, seed, 0, 1, 28, 28)) return cli_error("%s", dd_error_message());
    if (cli_load_data(&test, data, 0, seed, 1, 1, 28, 28)) rc = dd_error_prefix("test split of %s", data);
    if (!rc && (train.c != 1 || train.h != 28 || train.w != 28))
        rc = dd_error("%s holds %dx%dx%d examples; LeNet takes 1x28x28 images", data, train.c, train.h, train.w);
    if (!rc && (!train.y || !test.y || train.num_classes < 2))
        rc = dd_error("%s has no class labels: the classifier needs them (mnist:DIR, idx:DIR, fashion-mnist)", data);
    if (!rc && test.num_classes > train.num_classes)
        rc = dd_error("the test split has %d classes, the training split %d", test.num_classes, train.num_classes);
    if (!rc) rc = make_parent(out);
    if (!rc) rc = dd_atomic_check(out); /* before the training, not after */
    dd_runner r;
    memset(&r, 0, sizeof r);
    if (!rc) rc = dd_classifier_init(&r, be, train.num_classes, seed);
    epoch_ctx ec = {&r, &test, 0};
    co.seed = seed;
    co.progress = quiet ? 0 : -1;
    co.on_epoch = on_epoch;
    co.ctx = &ec;
    double t0 = dd_now();
    if (!rc) {
        fprintf(stderr, "LeNet5 on %lld images of %s (%d classes), %d epoch%s, batch %d, lr %g, device %s\n",
                (long long)train.n, data, train.num_classes, co.epochs, co.epochs == 1 ? "" : "s",
                co.batch, (double)co.lr, be->name);
        rc = dd_classifier_train(&r, &train, &co, NULL);
    }
    double seconds = dd_now() - t0;
    if (!rc) rc = dd_classifier_save(out, &r, data, ec.last_acc, co.epochs);
    if (!rc) {
        printf("test accuracy: %.4f (%lld test images)\n", ec.last_acc, (long long)test.n);
        printf("trained in %.1f s; wrote %s\n", seconds, out);
    }
    dd_runner_free(&r);
    dd_dataset_free(&train);
    dd_dataset_free(&test);
    return rc ? cli_error("%s", dd_error_message()) : 0;
}
