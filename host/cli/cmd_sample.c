/* diffusion sample: draw samples from a checkpoint with DDPM or DDIM, optional guidance; write a
 * PNG grid (or, for 2-D models, a scatter plot and a CSV), an optional reverse-process GIF and
 * an optional raw float32 file. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"
#include "commands.h"
#include "diffusion/atomic_file.h"
#include "diffusion/data.h"
#include "diffusion/error.h"
#include "diffusion/image.h"
#include "diffusion/progress.h"
#include "diffusion/train.h"

static const char *usage =
    "usage: diffusion sample --checkpoint FILE [OPTIONS]\n"
    "\n"
    "  --checkpoint FILE   a model.safetensors or epoch-NNN.safetensors from diffusion train\n"
    "  --n N               samples (per class with --labels all; default 16, 2-D: 2000)\n"
    "  --batch B           sample B at a time (default: all N at once); the batches continue\n"
    "                      one noise stream, so the samples depend on --seed and --batch.\n"
    "                      One batch must fit the memory, and no tensor may pass 2^31 - 1\n"
    "                      values (the default UNet: at most 85,598 a batch, 42,799 guided)\n"
    "  --out FILE          PNG to write (default samples.png; 2-D models also write FILE.csv)\n"
    "  --sampler S         ddpm | ddim (default ddpm)\n"
    "  --steps TAU         DDIM steps, at most T (default 20)\n"
    "  --eta ETA           DDIM eta: 0 deterministic, 1 DDPM-like (default 0)\n"
    "  --guidance G        classifier-free guidance scale, conditional models (default 1)\n"
    "  --label L           one class for every sample, conditional models\n"
    "  --labels all        one row per class, conditional models\n"
    "  --seed N            noise seed (default 0)\n"
    "  --no-clip           do not clamp the x0 estimate to [-1, 1]\n"
    "  --no-ema            use the raw weights, not their moving average\n"
    "  --animation F.gif   the reverse process: x_t beside the x0 estimate, every step\n"
    "  --raw FILE          the samples as float32 (header DDRAW1, N C H W) for other tools\n"
    "  --device DEV        auto | cpu | cuda (default auto)\n"
    "  --quiet             no progress bar\n";

typedef struct {
    dd_reverse_gif *gif;
    const dd_backend *be;
    float *xt, *x0; /* host (B, per) */
    dd_progress pb;
    int64_t steps_before;   /* steps of the batches already done */
    double samples_before;  /* sample-steps of the batches already done */
} step_ctx;

static int on_step(void *ctx, int step, int nsteps, int t, const float *x, const float *x0, int B, size_t per) {
    step_ctx *s = ctx;
    dd_progress_update(&s->pb, s->steps_before + step + 1, s->samples_before + (double)(step + 1) * B,
                       NULL);
    if (!s->gif) return 0;
    (void)nsteps;
    DD_TRY(s->be->to_host(s->xt, x, (size_t)B * per * sizeof(float)));
    DD_TRY(s->be->to_host(s->x0, x0, (size_t)B * per * sizeof(float)));
    char cap[32];
    snprintf(cap, sizeof cap, "t = %d", t);
    return dd_reverse_gif_frame(s->gif, s->xt, s->x0, cap);
}

static int with_ext(char *buf, size_t n, const char *path, const char *ext) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - path) : strlen(path);
    return snprintf(buf, n, "%.*s%s", (int)stem, path, ext) >= (int)n ? dd_error("path too long") : 0;
}

int cmd_sample(int argc, char **argv) {
    enum { O_CKPT = 1, O_N, O_BATCH, O_OUT, O_SAMPLER, O_STEPS, O_ETA, O_G, O_LABEL, O_LABELS, O_SEED,
           O_NOCLIP, O_NOEMA, O_ANIM, O_RAW, O_DEVICE, O_QUIET, O_HELP };
    static const struct option opts[] = {
        {"checkpoint", required_argument, 0, O_CKPT}, {"n", required_argument, 0, O_N},
        {"batch", required_argument, 0, O_BATCH},
        {"out", required_argument, 0, O_OUT}, {"sampler", required_argument, 0, O_SAMPLER},
        {"steps", required_argument, 0, O_STEPS}, {"eta", required_argument, 0, O_ETA},
        {"guidance", required_argument, 0, O_G}, {"label", required_argument, 0, O_LABEL},
        {"labels", required_argument, 0, O_LABELS}, {"seed", required_argument, 0, O_SEED},
        {"no-clip", no_argument, 0, O_NOCLIP}, {"no-ema", no_argument, 0, O_NOEMA},
        {"animation", required_argument, 0, O_ANIM}, {"raw", required_argument, 0, O_RAW},
        {"device", required_argument, 0, O_DEVICE}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    const char *ckpt = NULL, *out = "samples.png", *anim = NULL, *raw = NULL, *device = "auto";
    int n = -1, batch = 0, label = -1, all_labels = 0, clip = 1, quiet = 0, rc = 0, c;
    int steps_given = 0, eta_given = 0;
    float guidance = 1.0f;
    dd_sampler_choice sc = {.ddim = 0, .steps = 20, .eta = 0.0f, .use_ema = 1};
    uint64_t seed = 0;
    optind = 1;
    opterr = 0;
    while (!rc && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_CKPT: ckpt = optarg; break;
        case O_N: rc = cli_int("n", optarg, 1, 1 << 20, &n); break;
        case O_BATCH: rc = cli_int("batch", optarg, 1, 1 << 20, &batch); break;
        case O_OUT: out = optarg; break;
        case O_SAMPLER:
            if (!strcmp(optarg, "ddpm")) sc.ddim = 0;
            else if (!strcmp(optarg, "ddim")) sc.ddim = 1;
            else rc = dd_error("--sampler: '%s' is not ddpm or ddim", optarg);
            break;
        case O_STEPS: rc = cli_int("steps", optarg, 1, 1000000, &sc.steps); steps_given = 1; break;
        case O_ETA: rc = cli_float("eta", optarg, 0, 10, &sc.eta); eta_given = 1; break;
        case O_G: rc = cli_float("guidance", optarg, -100, 100, &guidance); break;
        case O_LABEL: rc = cli_int("label", optarg, 0, 1 << 30, &label); break;
        case O_LABELS:
            if (strcmp(optarg, "all")) rc = dd_error("--labels: only 'all' is understood (use --label L for one class)");
            all_labels = 1;
            break;
        case O_SEED: rc = cli_u64("seed", optarg, &seed); break;
        case O_NOCLIP: clip = 0; break;
        case O_NOEMA: sc.use_ema = 0; break;
        case O_ANIM: anim = optarg; break;
        case O_RAW: raw = optarg; break;
        case O_DEVICE: device = optarg; break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        default:
            return cli_error("unknown or incomplete option '%s' (diffusion sample --help)", argv[optind - 1]);
        }
    }
    if (!rc) rc = cli_ddim_only(sc.ddim, steps_given, eta_given);
    if (rc) return cli_error("%s", dd_error_message());
    if (optind < argc) return cli_error("unexpected argument '%s'", argv[optind]);
    if (!ckpt) return cli_error("--checkpoint is required (diffusion sample --help)");
    if (label >= 0 && all_labels) return cli_error("--label and --labels all exclude each other");

    dd_run_info ri;
    if (dd_run_read_info(ckpt, &ri)) return cli_error("%s", dd_error_message());
    const dd_model_config *m = &ri.model;
    int cond = dd_model_is_conditional(m);
    int is2d = m->kind == DD_MODEL_MLP2D || m->kind == DD_MODEL_MLP2D_COND;
    if (!cond && (label >= 0 || all_labels))
        return cli_error("%s holds an unconditional model: --label/--labels need a conditional one", ckpt);
    if (!cond && guidance != 1.0f)
        return cli_error("guidance needs a conditional model, and %s holds an unconditional one", ckpt);
    if (cond && label >= m->classes)
        return cli_error("--label %d is out of range: the model has classes 0..%d", label, m->classes - 1);
    if (sc.ddim && sc.steps > m->timesteps)
        return cli_error("--steps %d is more than the model's T = %d timesteps (DDIM needs tau <= T)", sc.steps, m->timesteps);
    /* the output files before the work, so that a long run cannot end in "cannot write" */
    char csv[1100];
    if (is2d && with_ext(csv, sizeof csv, out, ".csv")) return cli_error("%s", dd_error_message());
    if ((is2d && dd_atomic_check(csv)) || dd_atomic_check(out) || (raw && dd_atomic_check(raw)))
        return cli_error("%s", dd_error_message());
    const dd_backend *be = cli_backend(device);
    if (!be) return cli_error("%s", dd_error_message());

    int rows = 0, cols = 0;
    if (n < 0) n = is2d ? 2000 : 16;
    if (all_labels) {
        cols = n;
        rows = m->classes;
        n = rows * cols;
    }
    const int batch_given = batch > 0 && batch < n;
    if (batch <= 0 || batch > n) batch = n;
    if (anim && batch < n)
        return cli_error("--animation shows one batch: leave out --batch, or make it at least --n (%d)", n);
    size_t per = (size_t)m->in_channels * m->height * m->width;
    float *x = malloc((size_t)n * per * sizeof(float));
    int32_t *labels = cond ? malloc((size_t)n * sizeof(int32_t)) : NULL;
    step_ctx sx = {.be = be};
    if (!x || (cond && !labels)) return cli_error("out of memory for %d samples", n);
    /* --label: every sample; --labels all: row k is class k; neither: classes in turn */
    for (int i = 0; cond && i < n; i++) labels[i] = label >= 0 ? label : all_labels ? i / cols : i % m->classes;
    dd_runner r;
    memset(&r, 0, sizeof r);
    rc = dd_run_load(ckpt, be, 0, &r, &ri);
    if (!rc) { /* the model's graph for a whole batch first: one too large fails before the
                * sampler's buffers are allocated (the sampler's first step reuses this graph) */
        dd_runner_graph *rg;
        rc = dd_runner_eval_graph(&r, guidance != 1.0f ? 2 * batch : batch, &rg);
    }
    if (!rc && anim) {
        if (is2d) rc = dd_error("--animation is for image models; 2-D models write a scatter plot");
        sx.xt = malloc((size_t)n * per * sizeof(float));
        sx.x0 = malloc((size_t)n * per * sizeof(float));
        if (!rc && (!sx.xt || !sx.x0)) rc = dd_error("out of memory");
        if (!rc) rc = dd_reverse_gif_open(&sx.gif, anim, n, m->in_channels, m->height, m->width, rows, cols, 2, 8, 150);
    }
    if (!rc) {
        const int steps = sc.ddim ? sc.steps : m->timesteps;
        const int batches = (n + batch - 1) / batch;
        dd_progress_start(&sx.pb, sc.ddim ? "ddim" : "ddpm", (int64_t)batches * steps, "img-steps/s", quiet ? 0 : -1);
        /* batches share their buffers and recorded step, and continue one Philox stream */
        dd_sample_cache *cache = batches > 1 ? dd_sample_cache_new() : NULL;
        if (batches > 1 && !cache) rc = -1;
        dd_rng rng = {.seed = seed, .stream = 0, .offset = 0};
        for (int i = 0; !rc && i < n; i += batch) {
            const int b = n - i < batch ? n - i : batch;
            dd_sample_opts o = dd_sample_opts_default(b, per);
            o.clip = clip;
            o.guidance = guidance;
            o.rng = rng;
            o.labels = cond ? labels + i : NULL;
            o.on_step = on_step;
            o.step_ctx = &sx;
            o.cache = cache;
            rc = dd_run_sample(&r, &ri, &sc, &o, x + (size_t)i * per);
            rng = o.rng;
            sx.steps_before += steps;
            sx.samples_before += (double)steps * b;
        }
        dd_sample_cache_free(cache);
        if (!rc) dd_progress_finish(&sx.pb, NULL);
    }
    if (sx.gif) {
        if (rc) dd_reverse_gif_abort(sx.gif);
        else rc = dd_reverse_gif_close(sx.gif);
    }
    if (!rc && is2d) {
        rc = dd_write_points_csv(csv, x, labels, n);
        dd_plot_opts po = dd_plot_opts_default();
        po.title = sc.ddim ? "DDIM samples" : "DDPM samples";
        po.num_classes = cond ? m->classes : 0;
        /* the conditional 2-D set's classes have names */
        const char *names[3] = {dd_2d_class_name(0), dd_2d_class_name(1), dd_2d_class_name(2)};
        if (cond && m->classes == 3 && !strcmp(ri.data, "conditional-2d")) po.class_names = names;
        if (!rc) rc = dd_plot_scatter(out, x, labels, n, &po);
    } else if (!rc) {
        rc = dd_write_png_grid(out, x, n, m->in_channels, m->height, m->width, rows, cols, 2);
    }
    if (!rc && raw) rc = dd_raw_write(raw, x, (uint32_t)n, (uint32_t)m->in_channels, (uint32_t)m->height, (uint32_t)m->width);
    free(x);
    free(labels);
    free(sx.xt);
    free(sx.x0);
    dd_runner_free(&r);
    if (rc && dd_error_was_size() && batch > 1)
        return cli_error("%s (%s %d samples at once: draw fewer at a time with a smaller --batch)",
                         dd_error_message(), batch_given ? "--batch draws" : "drawing all", batch);
    if (rc) return cli_error("%s", dd_error_message());
    printf("wrote %s\n", out);
    return 0;
}
