/* diffusion train: load a data set, build a model for it, train, write the run folder. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"
#include "commands.h"
#include "diffusion/error.h"
#include "diffusion/train.h"

/* --resume: the checkpoint fixes the model, the schedule, the objective, the seed, the batch and
 * the validation split (so the run continues exactly where it stopped). An option given for one
 * of those must agree with it, or the command fails instead of quietly ignoring the option. The
 * learning rate, EMA decay and label dropout come from the checkpoint too unless given: then
 * the given value replaces it, with a note. */
typedef struct {
    int batch, seed, sched, beta_start, beta_end, objective, val, lr, ema, pu, model, imgc;
} given_opts;

static int fixed_by_checkpoint(const char *opt, int differs, const char *theirs, const char *ours) {
    if (!differs) return 0;
    return dd_error("--%s %s: the checkpoint was trained with %s, and a resumed run keeps it "
                    "(leave --%s out, or start a new run)",
                    opt, ours, theirs, opt);
}

static int resume_options(const char *resume, const given_opts *gv, dd_run_info *ri,
                          dd_schedule_kind sched, double bs, double be, int quiet,
                          dd_run_info *saved) {
    DD_TRY(dd_run_read_info(resume, saved));
    char a[64], b[64];
#define NUM(fmt, v) (snprintf(a, sizeof a, fmt, v), a)
#define NUM2(fmt, v) (snprintf(b, sizeof b, fmt, v), b)
    if (gv->batch)
        DD_TRY(fixed_by_checkpoint("batch", ri->batch != saved->batch, NUM("%d", saved->batch),
                                   NUM2("%d", ri->batch)));
    if (gv->seed)
        DD_TRY(fixed_by_checkpoint("seed", ri->seed != saved->seed,
                                   NUM("%llu", (unsigned long long)saved->seed),
                                   NUM2("%llu", (unsigned long long)ri->seed)));
    if (gv->sched)
        DD_TRY(fixed_by_checkpoint("schedule", sched != saved->schedule,
                                   dd_schedule_kind_name(saved->schedule), dd_schedule_kind_name(sched)));
    if (gv->beta_start)
        DD_TRY(fixed_by_checkpoint("beta-start", bs != saved->beta_start,
                                   NUM("%g", saved->beta_start), NUM2("%g", bs)));
    if (gv->beta_end)
        DD_TRY(fixed_by_checkpoint("beta-end", be != saved->beta_end, NUM("%g", saved->beta_end),
                                   NUM2("%g", be)));
    if (gv->objective)
        DD_TRY(fixed_by_checkpoint("objective", ri->objective != saved->objective,
                                   dd_objective_name(saved->objective), dd_objective_name(ri->objective)));
    if (gv->val)
        DD_TRY(fixed_by_checkpoint("val-fraction", ri->val_fraction != saved->val_fraction,
                                   NUM("%g", saved->val_fraction), NUM2("%g", ri->val_fraction)));
    /* the checkpoint's, unless given */
    const struct {
        int given;
        float *ours;
        float theirs;
        const char *opt;
    } hyper[] = {{gv->lr, &ri->lr, saved->lr, "lr"},
                 {gv->ema, &ri->ema_decay, saved->ema_decay, "ema"},
                 {gv->pu, &ri->prob_uncond, saved->prob_uncond, "prob-uncond"}};
    for (size_t i = 0; i < sizeof hyper / sizeof hyper[0]; i++) {
        if (!hyper[i].given) *hyper[i].ours = hyper[i].theirs;
        else if (*hyper[i].ours != hyper[i].theirs && !quiet)
            fprintf(stderr, "note: --%s %g replaces the checkpoint's %g\n", hyper[i].opt,
                    (double)*hyper[i].ours, (double)hyper[i].theirs);
    }
#undef NUM
#undef NUM2
    return 0;
}

static const char *usage =
    "usage: diffusion train --data SET [OPTIONS]\n"
    "\n"
    "Train a denoising diffusion model; writes config.json, a checkpoint per epoch,\n"
    "model.safetensors, history.csv, loss.png and samples.png into --out.\n"
    "\n"
    "data:\n"
    "  --data SET          fashion-mnist | mnist:DIR | idx:DIR | images:DIR | spiral | s-curve |\n"
    "                      moons | conditional-2d\n"
    "  --limit N           use the first N examples (points, for the 2-D sets)\n"
    "  --image-channels C  1 (grey) or 3 (RGB) for images:DIR (default 3)\n"
    "\n" CLI_MODEL_HELP
    "  (default model: unet for images, unet-cond with --conditional, mlp2d for 2-D sets;\n"
    "   channels, size and classes follow the data)\n"
    "  --conditional       train a conditional model (unet-cond / mlp2d-cond) on the labels\n"
    "\n"
    "diffusion:\n"
    "  --schedule KIND     linear | cosine | sigmoid (default cosine; linear for 2-D)\n"
    "  --beta-start B --beta-end B   linear schedule ends before the 1000/T scaling\n"
    "  --objective OBJ     eps | x0 | v (default eps, the original's)\n"
    "\n"
    "training:\n"
    "  --epochs N          (default 10)\n"
    "  --batch N           (default 32)\n"
    "  --lr LR             Adam learning rate (default 1e-3)\n"
    "  --prob-uncond P     label dropped to the generic one, conditional (default 0.2)\n"
    "  --ema DECAY         EMA of the weights, used for sampling (default 0.999)\n"
    "  --val-fraction F    held out for validation (default 0.1)\n"
    "  --seed N            data order, noise, initial weights (default 0)\n"
    "  --device DEV        auto | cpu | cuda (default auto)\n"
    "  --resume FILE       continue from a checkpoint: its model, schedule, objective, seed,\n"
    "                      batch and validation split (an option that disagrees is an error),\n"
    "                      and its --lr, --ema and --prob-uncond unless given\n"
    "  --out DIR           run folder (default runs/train)\n"
    "  --samples N         images in samples.png (default 12; 0: none)\n"
    "  --quiet             no progress bar\n";

int cmd_train(int argc, char **argv) {
    enum { O_DATA = 1, O_LIMIT, O_IMGC, O_COND, O_SCHED, O_BS, O_BE, O_OBJ, O_EPOCHS, O_BATCH, O_LR,
           O_PU, O_EMA, O_VAL, O_SEED, O_DEVICE, O_RESUME, O_OUT, O_SAMPLES, O_QUIET, O_HELP };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA}, {"limit", required_argument, 0, O_LIMIT},
        {"image-channels", required_argument, 0, O_IMGC}, {"conditional", no_argument, 0, O_COND},
        {"schedule", required_argument, 0, O_SCHED}, {"beta-start", required_argument, 0, O_BS},
        {"beta-end", required_argument, 0, O_BE}, {"objective", required_argument, 0, O_OBJ},
        {"epochs", required_argument, 0, O_EPOCHS}, {"batch", required_argument, 0, O_BATCH},
        {"lr", required_argument, 0, O_LR}, {"prob-uncond", required_argument, 0, O_PU},
        {"ema", required_argument, 0, O_EMA}, {"val-fraction", required_argument, 0, O_VAL},
        {"seed", required_argument, 0, O_SEED}, {"device", required_argument, 0, O_DEVICE},
        {"resume", required_argument, 0, O_RESUME}, {"out", required_argument, 0, O_OUT},
        {"samples", required_argument, 0, O_SAMPLES}, {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, O_HELP}, CLI_MODEL_OPTIONS, {0, 0, 0, 0}};
    const char *data = NULL, *device = "auto", *out = "runs/train", *resume = NULL;
    int64_t limit = 0;
    int img_c = 3, cond = 0, quiet = 0, have_sched = 0;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    dd_train_opts o;
    dd_train_opts_default(&o, DD_MODEL_UNET);
    dd_run_info *ri = &o.run;
    dd_schedule_kind sched = DD_SCHEDULE_COSINE;
    double bs = -1, be_ = -1;
    given_opts gv = {0};
    int rc = 0, c;
    optind = 1;
    opterr = 0;
    while (!rc && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_DATA: data = optarg; break;
        case O_LIMIT: rc = cli_i64("limit", optarg, 1, INT64_MAX, &limit); break;
        case O_IMGC:
            rc = cli_int("image-channels", optarg, 1, 3, &img_c);
            if (!rc && img_c == 2) rc = dd_error("--image-channels must be 1 or 3");
            gv.imgc = 1;
            break;
        case O_COND: cond = gv.model = 1; break;
        case O_SCHED: rc = dd_schedule_kind_parse(optarg, &sched); have_sched = gv.sched = 1; break;
        case O_BS: rc = cli_double("beta-start", optarg, 1e-12, 1, &bs); gv.beta_start = 1; break;
        case O_BE: rc = cli_double("beta-end", optarg, 1e-12, 1, &be_); gv.beta_end = 1; break;
        case O_OBJ: rc = dd_objective_parse(optarg, &ri->objective); gv.objective = 1; break;
        case O_EPOCHS: rc = cli_int("epochs", optarg, 1, 1000000, &o.epochs); break;
        case O_BATCH: rc = cli_int("batch", optarg, 1, 1 << 20, &ri->batch); gv.batch = 1; break;
        case O_LR: rc = cli_float("lr", optarg, 1e-12, 10, &ri->lr); gv.lr = 1; break;
        case O_PU: rc = cli_float("prob-uncond", optarg, 0, 1, &ri->prob_uncond); gv.pu = 1; break;
        case O_EMA: rc = cli_float("ema", optarg, 0, 0.999999, &ri->ema_decay); gv.ema = 1; break;
        case O_VAL: rc = cli_double("val-fraction", optarg, 0, 0.9, &ri->val_fraction); gv.val = 1; break;
        case O_SEED: rc = cli_u64("seed", optarg, &ri->seed); gv.seed = 1; break;
        case O_DEVICE: device = optarg; break;
        case O_RESUME: resume = optarg; break;
        case O_OUT: out = optarg; break;
        case O_SAMPLES: rc = cli_int("samples", optarg, 0, 10000, &o.sample_n); break;
        case O_QUIET: quiet = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case '?':
            return cli_error("unknown or incomplete option '%s' (diffusion train --help)", argv[optind - 1]);
        default:
            if (c >= CLI_OPT_BASE && c < CLI_OPT_MODEL_END) rc = cli_model_opt(&mo, c, optarg);
            gv.model = 1;
            break;
        }
    }
    if (rc) return cli_error("%s", dd_error_message());
    if (optind < argc) return cli_error("unexpected argument '%s'", argv[optind]);
    if (!data) return cli_error("--data is required (diffusion train --help)");
    if (gv.imgc && strncmp(data, "images:", 7))
        return cli_error("--image-channels is for --data images:DIR (%s has its own channels)", data);
    dd_run_info saved;
    if (resume && resume_options(resume, &gv, ri, sched, bs, be_, quiet, &saved))
        return cli_error("%s", dd_error_message());
    const dd_backend *be = cli_backend(device);
    if (!be) return cli_error("%s", dd_error_message());

    dd_dataset d;
    if (cli_load_data(&d, data, limit, ri->seed, 0, img_c, mo.h, mo.w))
        return cli_error("%s", dd_error_message());
    /* the model follows the data: 2-D sets get the 2-D denoiser, images the UNet */
    int is2d = d.c == 2 && d.h == 1 && d.w == 1;
    dd_model_kind kind = is2d ? (cond ? DD_MODEL_MLP2D_COND : DD_MODEL_MLP2D) : (cond ? DD_MODEL_UNET_COND : DD_MODEL_UNET);
    if (!is2d) {
        if (mo.in < 0) mo.in = d.c;
        if (mo.h < 0) mo.h = d.h, mo.w = d.w;
    }
    if ((cond || (mo.have_kind && (mo.kind == DD_MODEL_UNET_COND || mo.kind == DD_MODEL_MLP2D_COND))) && mo.classes < 0 && d.num_classes > 0)
        mo.classes = d.num_classes;
    rc = cli_model_config(&mo, kind, &ri->model);
    if (!rc && resume && gv.model) { /* the model the options ask for must be the checkpoint's */
        char ours[256], theirs[256];
        dd_model_config_describe(&ri->model, ours, sizeof ours);
        dd_model_config_describe(&saved.model, theirs, sizeof theirs);
        if (strcmp(ours, theirs))
            rc = dd_error("the model options ask for %s, but the checkpoint holds %s, and a resumed "
                          "run keeps it (leave the model options out, or start a new run)",
                          ours, theirs);
    }
    if (!rc && gv.pu && !dd_model_is_conditional(resume ? &saved.model : &ri->model))
        rc = dd_error("--prob-uncond is for conditional models (train one with --conditional)");
    if (rc) {
        dd_dataset_free(&d);
        return cli_error("%s", dd_error_message());
    }
    int model2d = ri->model.kind == DD_MODEL_MLP2D || ri->model.kind == DD_MODEL_MLP2D_COND;
    if (!have_sched) sched = model2d ? DD_SCHEDULE_LINEAR : DD_SCHEDULE_COSINE;
    ri->schedule = sched;
    ri->beta_start = bs > 0 ? bs : (model2d ? 8e-6 : DD_LINEAR_BETA_START);
    ri->beta_end = be_ > 0 ? be_ : (model2d ? 9e-5 : DD_LINEAR_BETA_END);
    snprintf(ri->data, sizeof ri->data, "%s", data);
    o.out_dir = out;
    o.resume = resume;
    o.progress = quiet ? 0 : -1;
    rc = dd_train(&o, &d, be);
    dd_dataset_free(&d);
    if (rc && dd_error_was_size() && !resume && ri->batch > 1) /* a resumed run keeps its batch */
        return cli_error("%s (training batches of %d: try a smaller --batch)",
                         dd_error_message(), ri->batch);
    if (rc) return cli_error("%s", dd_error_message());
    printf("trained: %s/model.safetensors\n", out);
    return 0;
}
