/* diffusion fld: Frechet LeNet Distance between the test images of a data set (the reference,
 * cached beside the classifier) and a set of images: the test set itself, training images,
 * uniform noise, a raw sample file, or samples drawn from a diffusion checkpoint. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_common.h"
#include "commands.h"
#include "diffusion/checkpoint.h"
#include "diffusion/classifier.h"
#include "diffusion/error.h"
#include "diffusion/image.h"
#include "diffusion/philox.h"
#include "diffusion/progress.h"
#include "diffusion/train.h"

static const char *usage =
    "usage: diffusion fld --classifier FILE --against SET [OPTIONS]\n"
    "\n"
    "Frechet LeNet Distance: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) over the 84 LeNet5\n"
    "features of the judged images and of the data set's test images (the reference, cached\n"
    "as FILE.ref-<data>-<key>.safetensors). Prints `FLD: value` on stdout.\n"
    "\n"
    "  --classifier FILE   a checkpoint from diffusion train-classifier\n"
    "  --data SET          the reference data set (default: the one the classifier was trained on)\n"
    "  --against SET       test       the test images themselves (FLD ~ 0)\n"
    "                      train      the first N training images\n"
    "                      noise      N images of uniform noise in [0, 1]\n"
    "                      raw:FILE   samples written by diffusion sample --raw (values in [-1, 1])\n"
    "                      CHECKPOINT samples drawn from a diffusion checkpoint\n"
    "  --n N               images to judge (default 10000; test, raw: all; conditional\n"
    "                      checkpoints: --per-label)\n"
    "\n"
    "sampling (--against CHECKPOINT):\n"
    "  --sampler S         ddpm | ddim (default ddpm)\n"
    "  --steps TAU         DDIM steps, at most T (default 20)\n"
    "  --eta ETA           DDIM eta (default 0)\n"
    "  --guidance G        classifier-free guidance, conditional models (default 1)\n"
    "  --per-label N       samples of each class, conditional models (default 1000)\n"
    "  --batch N           samples drawn at a time (default 256; bounds memory)\n"
    "  --seed N            noise seed (default 0; also the noise set's seed)\n"
    "  --no-clip           do not clamp the x0 estimate to [-1, 1]\n"
    "  --no-ema            sample with the raw weights, not their moving average\n"
    "\n"
    "  --device DEV        auto | cpu | cuda (default auto)\n"
    "  --quiet             no progress bar\n";

typedef struct {
    dd_progress pb;
    int64_t base; /* steps done by earlier batches */
    int B;
} step_ctx;

static int on_step(void *ctx, int step, int nsteps, int t, const float *x, const float *x0, int B, size_t per) {
    (void)nsteps, (void)t, (void)x, (void)x0, (void)per;
    step_ctx *s = ctx;
    dd_progress_update(&s->pb, s->base + step + 1, (double)(s->base + step + 1) * B, NULL);
    return 0;
}

typedef struct {
    dd_sampler_choice sc;
    float guidance;
    int per_label, batch, clip;
    int64_t n;
    uint64_t seed;
    int quiet;
} sample_args;

/* Draw the samples of a diffusion checkpoint batch by batch and add their features to acc. */
static int judge_checkpoint(const char *path, const dd_run_info *ri, const sample_args *a, const dd_backend *be,
                            dd_runner *clf, dd_fld_accum *acc, int64_t *n_out) {
    const dd_model_config *m = &ri->model;
    const int cond = dd_model_is_conditional(m);
    const int64_t n = cond ? (int64_t)a->per_label * m->classes : a->n;
    const size_t per = 28 * 28;
    const int B = n < a->batch ? (int)n : a->batch;
    dd_runner r;
    memset(&r, 0, sizeof r);
    dd_run_info loaded;
    DD_TRY(dd_run_load(path, be, 0, &r, &loaded));
    float *x = malloc((size_t)B * per * sizeof(float)); /* (B, 1, 28, 28) in [-1, 1] */
    int32_t *labels = cond ? malloc((size_t)B * sizeof(int32_t)) : NULL; /* (B) */
    int rc = 0;
    if (!x || (cond && !labels)) rc = dd_error("out of host memory");
    const int steps = a->sc.ddim ? a->sc.steps : m->timesteps;
    const int64_t batches = (n + B - 1) / B;
    step_ctx sx = {.B = B};
    dd_progress_start(&sx.pb, a->sc.ddim ? "ddim" : "ddpm", batches * steps, "img-steps/s", a->quiet ? 0 : -1);
    /* one Philox stream for the whole run: each batch continues where the previous one stopped,
     * so the samples depend on --seed and --batch only */
    dd_rng rng = {.seed = a->seed, .stream = 0, .offset = 0};
    /* the batches share buffers and the recorded sampling step */
    dd_sample_cache *cache = rc ? NULL : dd_sample_cache_new();
    if (!rc && !cache) rc = -1;
    for (int64_t i = 0; !rc && i < n; i += B) {
        int b = n - i < B ? (int)(n - i) : B;
        dd_sample_opts o = dd_sample_opts_default(b, per);
        o.clip = a->clip;
        o.guidance = a->guidance;
        o.rng = rng;
        o.on_step = on_step;
        o.step_ctx = &sx;
        o.cache = cache;
        if (cond) {
            /* class of sample k is k / per_label: per_label samples of every class */
            for (int k = 0; k < b; k++) labels[k] = (int32_t)((i + k) / a->per_label);
            o.labels = labels;
        }
        rc = dd_run_sample(&r, ri, &a->sc, &o, x);
        rng = o.rng;
        sx.base += steps;
        if (!rc) rc = dd_classifier_accumulate(clf, acc, x, b, DD_PIXELS_PM1);
    }
    if (!rc) dd_progress_finish(&sx.pb, NULL);
    dd_sample_cache_free(cache);
    free(x);
    free(labels);
    dd_runner_free(&r);
    *n_out = n;
    return rc;
}

int cmd_fld(int argc, char **argv) {
    enum { O_CLF = 1, O_DATA, O_AGAINST, O_N, O_SAMPLER, O_STEPS, O_ETA, O_G, O_PER_LABEL, O_BATCH, O_SEED,
           O_NOCLIP, O_NOEMA, O_DEVICE, O_QUIET, O_HELP };
    static const struct option opts[] = {
        {"classifier", required_argument, 0, O_CLF}, {"data", required_argument, 0, O_DATA},
        {"against", required_argument, 0, O_AGAINST}, {"n", required_argument, 0, O_N},
        {"sampler", required_argument, 0, O_SAMPLER}, {"steps", required_argument, 0, O_STEPS},
        {"eta", required_argument, 0, O_ETA}, {"guidance", required_argument, 0, O_G},
        {"per-label", required_argument, 0, O_PER_LABEL}, {"batch", required_argument, 0, O_BATCH},
        {"seed", required_argument, 0, O_SEED}, {"no-clip", no_argument, 0, O_NOCLIP},
        {"no-ema", no_argument, 0, O_NOEMA}, {"device", required_argument, 0, O_DEVICE},
        {"quiet", no_argument, 0, O_QUIET}, {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    const char *clf_path = NULL, *data = NULL, *against = NULL, *device = "auto";
    sample_args sa = {.sc = {.ddim = 0, .steps = 20, .eta = 0.0f, .use_ema = 1},
                      .guidance = 1.0f, .per_label = -1, .batch = 256, .clip = 1, .n = -1};
    int rc = 0, c, sampling_opt = 0, steps_given = 0, eta_given = 0;
    optind = 1;
    opterr = 0;
    while (!rc && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_CLF: clf_path = optarg; break;
        case O_DATA: data = optarg; break;
        case O_AGAINST: against = optarg; break;
        case O_N: rc = cli_i64("n", optarg, 2, (int64_t)1 << 30, &sa.n); break;
        case O_SAMPLER:
            sampling_opt = 1;
            if (!strcmp(optarg, "ddpm")) sa.sc.ddim = 0;
            else if (!strcmp(optarg, "ddim")) sa.sc.ddim = 1;
            else rc = dd_error("--sampler: '%s' is not ddpm or ddim", optarg);
            break;
        case O_STEPS: sampling_opt = steps_given = 1; rc = cli_int("steps", optarg, 1, 1000000, &sa.sc.steps); break;
        case O_ETA: sampling_opt = eta_given = 1; rc = cli_float("eta", optarg, 0, 10, &sa.sc.eta); break;
        case O_G: sampling_opt = 1; rc = cli_float("guidance", optarg, -100, 100, &sa.guidance); break;
        case O_PER_LABEL: sampling_opt = 1; rc = cli_int("per-label", optarg, 1, 1 << 24, &sa.per_label); break;
        case O_BATCH: rc = cli_int("batch", optarg, 1, 1 << 16, &sa.batch); break;
        case O_SEED: rc = cli_u64("seed", optarg, &sa.seed); break;
        case O_NOCLIP: sampling_opt = 1; sa.clip = 0; break;
        case O_NOEMA: sampling_opt = 1; sa.sc.use_ema = 0; break;
        case O_DEVICE: device = optarg; break;
        case O_QUIET: sa.quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default:
            return cli_error("unknown or incomplete option '%s' (diffusion fld --help)", argv[optind - 1]);
        }
    }
    if (!rc) rc = cli_ddim_only(sa.sc.ddim, steps_given, eta_given);
    if (rc) return cli_error("%s", dd_error_message());
    if (optind < argc) return cli_error("unexpected argument '%s'", argv[optind]);
    if (!clf_path) return cli_error("--classifier is required (diffusion fld --help)");
    if (!against) return cli_error("--against is required: test, train, noise, raw:FILE or a checkpoint");

    /* what is judged; everything that can be refused is refused before any work */
    enum { A_TEST, A_TRAIN, A_NOISE, A_RAW, A_CKPT } kind = A_TEST;
    dd_run_info ri;
    memset(&ri, 0, sizeof ri);
    if (!strcmp(against, "test")) kind = A_TEST;
    else if (!strcmp(against, "train")) kind = A_TRAIN;
    else if (!strcmp(against, "noise")) kind = A_NOISE;
    else if (!strncmp(against, "raw:", 4)) kind = A_RAW;
    else {
        struct stat st;
        if (stat(against, &st) != 0 || !S_ISREG(st.st_mode))
            return cli_error("--against: '%s' is not test, train, noise, raw:FILE or an existing checkpoint file", against);
        kind = A_CKPT;
        if (dd_run_read_info(against, &ri)) return cli_error("%s", dd_error_message());
        const dd_model_config *m = &ri.model;
        int cond = dd_model_is_conditional(m);
        if (m->kind == DD_MODEL_LENET)
            return cli_error("%s is a classifier, not a diffusion model", against);
        if (m->in_channels != 1 || m->height != 28 || m->width != 28)
            return cli_error("%s generates %dx%dx%d samples; FLD's LeNet takes 1x28x28", against,
                             m->in_channels, m->height, m->width);
        if (!cond && sa.guidance != 1.0f)
            return cli_error("guidance needs a conditional model, and %s holds an unconditional one", against);
        if (!cond && sa.per_label > 0)
            return cli_error("--per-label needs a conditional model, and %s holds an unconditional one (use --n)", against);
        if (cond && sa.n > 0 && sa.per_label > 0) return cli_error("--n and --per-label exclude each other");
        if (sa.sc.ddim && sa.sc.steps > m->timesteps)
            return cli_error("--steps %d is more than the model's T = %d timesteps (DDIM needs tau <= T)", sa.sc.steps, m->timesteps);
        if (cond) {
            /* --n on a conditional model: split evenly over the classes */
            if (sa.per_label < 0) sa.per_label = sa.n > 0 ? (int)((sa.n + m->classes - 1) / m->classes) : 1000;
        } else if (sa.n < 0) {
            sa.n = 10000;
        }
    }
    if (kind != A_CKPT && sampling_opt)
        return cli_error("sampling options (--sampler, --steps, --eta, --guidance, --per-label, --no-clip, --no-ema) "
                         "need --against CHECKPOINT");
    const dd_backend *be = cli_backend(device);
    if (!be) return cli_error("%s", dd_error_message());

    dd_runner clf;
    if (dd_classifier_load(clf_path, be, &clf, NULL)) return cli_error("%s", dd_error_message());
    /* --data defaults to the set the classifier learnt */
    char data_buf[512] = "";
    if (!data) {
        dd_safetensors h;
        if (!dd_checkpoint_read_meta(clf_path, &h)) {
            const char *d = dd_st_meta(&h, "data");
            if (d) snprintf(data_buf, sizeof data_buf, "%s", d);
            dd_st_free(&h);
        }
        if (!data_buf[0]) {
            dd_runner_free(&clf);
            return cli_error("--data is required: %s does not say what it was trained on", clf_path);
        }
        data = data_buf;
    }

    float *x = NULL;   /* (n, 1, 28, 28) host: the judged images, when held at once */
    int64_t n = 0;
    dd_pixel_range range = DD_PIXELS_PM1;
    char what[1200];
    dd_dataset d;
    memset(&d, 0, sizeof d);
    if (kind == A_TEST || kind == A_TRAIN) {
        int64_t limit = sa.n > 0 ? sa.n : (kind == A_TRAIN ? 10000 : 0);
        rc = cli_load_data(&d, data, limit, 0, kind == A_TEST, 1, 28, 28);
        if (!rc) {
            x = d.x;
            n = d.n;
            snprintf(what, sizeof what, "%lld %s images of %s", (long long)n, kind == A_TEST ? "test" : "training", data);
        }
    } else if (kind == A_NOISE) {
        n = sa.n > 0 ? sa.n : 10000;
        x = malloc((size_t)n * 784 * sizeof(float));
        if (!x) rc = dd_error("out of host memory for %lld noise images", (long long)n);
        for (size_t i = 0; !rc && i < (size_t)n * 784; i++) x[i] = dd_philox_uniform(sa.seed, 0, i);
        range = DD_PIXELS_01;
        snprintf(what, sizeof what, "%lld images of uniform noise in [0, 1] (seed %llu)", (long long)n,
                 (unsigned long long)sa.seed);
    } else if (kind == A_RAW) {
        uint32_t dims[4];
        rc = dd_raw_read(against + 4, &x, dims);
        if (!rc && (dims[1] != 1 || dims[2] != 28 || dims[3] != 28))
            rc = dd_error("%s holds %ux%ux%u samples; FLD's LeNet takes 1x28x28", against + 4, dims[1], dims[2], dims[3]);
        if (!rc && dims[0] < 2) rc = dd_error("%s holds %u samples; FLD needs at least 2", against + 4, dims[0]);
        if (!rc) {
            n = sa.n > 0 && sa.n < (int64_t)dims[0] ? sa.n : (int64_t)dims[0];
            snprintf(what, sizeof what, "%lld samples from %s", (long long)n, against + 4);
        }
    }

    dd_fld_stats ref, judged;
    memset(&ref, 0, sizeof ref);
    memset(&judged, 0, sizeof judged);
    char cache[1200] = "";
    int from_cache = 0;
    if (!rc) rc = dd_fld_reference_stats(&clf, clf_path, data, &ref, &from_cache, cache, sizeof cache);
    if (!rc) {
        dd_fld_accum acc;
        rc = dd_fld_accum_init(&acc, DD_LENET_FEATURES);
        if (!rc && kind == A_CKPT) {
            rc = judge_checkpoint(against, &ri, &sa, be, &clf, &acc, &n);
            const int cond = dd_model_is_conditional(&ri.model);
            int off = snprintf(what, sizeof what, "%lld %s samples from %s", (long long)n, sa.sc.ddim ? "DDIM" : "DDPM", against);
            if (sa.sc.ddim) off += snprintf(what + off, sizeof what - off, " (tau %d, eta %g)", sa.sc.steps, (double)sa.sc.eta);
            if (cond) snprintf(what + off, sizeof what - off, ", %d per label, guidance %g", sa.per_label, (double)sa.guidance);
        } else if (!rc) {
            rc = dd_classifier_accumulate(&clf, &acc, x, n, range);
        }
        if (!rc) rc = dd_fld_accum_finish(&acc, &judged);
        dd_fld_accum_free(&acc);
    }
    double fld = 0;
    if (!rc) rc = dd_fld_distance(&fld, &judged, &ref);
    if (!rc) {
        fprintf(stderr, "judged: %s\nreference: %lld test images of %s (%s %s)\n", what, (long long)ref.n, data,
                from_cache ? "cached in" : "computed, saved to", cache);
        printf("FLD: %.6g\n", fld);
    }
    if (d.x) dd_dataset_free(&d);
    else free(x);
    dd_fld_stats_free(&ref);
    dd_fld_stats_free(&judged);
    dd_runner_free(&clf);
    return rc ? cli_error("%s", dd_error_message()) : 0;
}
