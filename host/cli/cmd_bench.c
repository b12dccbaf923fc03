/* diffusion bench: time a training step, one denoising forward and a whole DDIM-20 loop, the
 * same three jobs (and the same timing method: median of five timings after warm-up) as the
 * PyTorch peer (bench/README.md), so the two can be printed side by side. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli_common.h"
#include "commands.h"
#include "diffusion/atomic_file.h"
#include "diffusion/error.h"
#include "diffusion/progress.h"
#include "diffusion/safetensors.h"
#include "diffusion/train.h"

#include "diffusion/cuda.h"

static const char *usage =
    "usage: diffusion bench [OPTIONS]\n"
    "\n"
    "Times, for a model (default: the UNet of the PyTorch peer, 602,705 parameters, 28x28x1,\n"
    "T = 100, cosine): a training step (noise, q_sample, forward, MSE, backward, Adam, EMA),\n"
    "one denoising forward, and a whole DDIM-20 loop (eta 0). Median of five timings, ms.\n"
    "\n"
    "  --device DEV        auto | cpu | cuda (default auto)\n"
    "  --train LIST        training batch sizes (default 32,128,512 on a GPU, 32 on the CPU;\n"
    "                      0: no training rows)\n"
    "  --forward LIST      denoising forward batch sizes (default 64,1024 / 64; 0: none)\n"
    "  --ddim B            DDIM-20 loop batch, 0 to skip (default 256 / 16)\n"
    "  --min-time S        seconds per measurement, roughly (default 1)\n"
    "  --json FILE         also write the rows as JSON\n"
    "  --profile           after each row, a few more calls with plain launches and a\n"
    "                      synchronize after every graph node: where the time goes, by op\n"
    "  --profiler-range    (cuda) after each row, one more call between cudaProfilerStart and\n"
    "                      cudaProfilerStop: for ncu --profile-from-start off, which then\n"
    "                      profiles that call's kernels and not the autotuner's\n"
    "\n" CLI_MODEL_HELP;

typedef struct {
    dd_runner *r;
    dd_train_batch *tb;
    float *x0;
    int B;
    const dd_schedule *s;
    dd_run_info ri;  /* the training step's settings */
    dd_replay rp;    /* the recorded training step */
    dd_sample_opts so;
} job;

/* what dd_train runs per batch, after the batch upload */
static int job_train(job *j) { return dd_train_step(&j->rp, j->r, j->tb, j->x0, NULL, &j->ri); }

static int job_forward(job *j) {
    return dd_runner_denoise(j->r, j->tb->target, j->tb->xt, j->tb->t, NULL, j->B);
}

static int job_ddim(job *j) {
    dd_denoiser m = {.fn = dd_runner_denoise, .ctx = j->r, .version = dd_runner_version,
                     .objective = DD_OBJECTIVE_EPS};
    dd_sample_opts o = j->so;
    return dd_sample_ddim(j->r->be, j->s, &m, &o, 20, 0.0f, NULL);
}

/* A few more calls of a job with every graph node timed (dd_profile): plain launches, so the
 * recordings are dropped and recording is off meanwhile; the rest of a call (Adam, the draws,
 * the sampler update, host work) shows as "outside the graph". */
static int profile_job(int (*fn)(job *), job *j, const dd_backend *be, const char *name) {
    enum { REPS = 3 };
    const char *was = getenv("DIFFUSION_CUDA_GRAPHS");
    char *saved = was ? strdup(was) : NULL;
    setenv("DIFFUSION_CUDA_GRAPHS", "0", 1);
    dd_replay_reset(&j->rp);
    dd_runner_graph *gs[2] = {&j->r->train, &j->r->eval};
    for (int i = 0; i < 2; i++) dd_replay_reset(&gs[i]->rp[0]), dd_replay_reset(&gs[i]->rp[1]);
    int rc = 0;
    if (j->so.cache) { /* its recorded step goes too */
        dd_sample_cache_free(j->so.cache);
        if (!(j->so.cache = dd_sample_cache_new())) rc = -1;
    }
    dd_profile prof;
    memset(&prof, 0, sizeof prof);
    double total = 0;
    if (!rc) rc = fn(j); /* a plain call first: no recording, nothing left to set up */
    for (int i = 0; i < 2; i++)
        if (gs[i]->g) gs[i]->g->profile = &prof;
    if (!rc) rc = be->synchronize();
    const double t0 = dd_now();
    for (int k = 0; !rc && k < REPS; k++) rc = fn(j);
    if (!rc) rc = be->synchronize();
    total = (dd_now() - t0) * 1e3 / REPS;
    for (int i = 0; i < 2; i++)
        if (gs[i]->g) gs[i]->g->profile = NULL;
    if (saved) setenv("DIFFUSION_CUDA_GRAPHS", saved, 1);
    else unsetenv("DIFFUSION_CUDA_GRAPHS");
    free(saved);
    if (rc) return rc;
    /* the ops by time, largest first */
    double in_graph = 0;
    int order[2 * DD_OP_COUNT], n = 0;
    for (int o = 0; o < 2 * DD_OP_COUNT; o++)
        if (prof.calls[o / 2][o % 2]) order[n++] = o, in_graph += prof.ms[o / 2][o % 2];
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0 && prof.ms[order[b] / 2][order[b] % 2] > prof.ms[order[b - 1] / 2][order[b - 1] % 2]; b--) {
            int t = order[b];
            order[b] = order[b - 1], order[b - 1] = t;
        }
    printf("  profile of %s (plain launches, a synchronize after every node, %d calls): %.3f ms a "
           "call, %.3f ms in graph nodes\n", name, REPS, total, in_graph / REPS);
    for (int a = 0; a < n; a++) {
        const int op = order[a] / 2, bw = order[a] % 2;
        printf("    %-12s %-8s %9.3f ms %6.1f%% %6.1f calls\n", dd_op_names[op], bw ? "backward" : "forward",
               prof.ms[op][bw] / REPS, 100.0 * prof.ms[op][bw] / (total * REPS), (double)prof.calls[op][bw] / REPS);
    }
    printf("    %-21s %9.3f ms %6.1f%%\n", "outside the graph", total - in_graph / REPS,
           100.0 * (total - in_graph / REPS) / total);
    return 0;
}

/* Median of five timings, each of enough calls to last about min_s / 5 (as the peer). */
static int timed(int (*fn)(job *), job *j, const dd_backend *be, double min_s, double *ms) {
    for (int i = 0; i < 2; i++) DD_TRY(fn(j));
    DD_TRY(be->synchronize());
    double t0 = dd_now();
    int n = 0;
    while (dd_now() - t0 < min_s / 5 || n < 1) {
        DD_TRY(fn(j));
        DD_TRY(be->synchronize());
        n++;
    }
    double s[5];
    for (int k = 0; k < 5; k++) {
        double a = dd_now();
        for (int i = 0; i < n; i++) DD_TRY(fn(j));
        DD_TRY(be->synchronize());
        s[k] = (dd_now() - a) / n;
    }
    for (int a = 0; a < 5; a++)
        for (int b = a + 1; b < 5; b++)
            if (s[b] < s[a]) {
                double t = s[a];
                s[a] = s[b];
                s[b] = t;
            }
    *ms = s[2] * 1e3;
    return 0;
}

/* "32,128" -> {32, 128}; "0" -> no rows */
static int parse_list(const char *opt, const char *arg, int *v, int max, int *n) {
    *n = 0;
    if (!strcmp(arg, "0")) return 0;
    const char *p = arg;
    while (*p) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || (*end && *end != ','))
            return dd_error("--%s: '%s' is not a list like 32,128 (or 0 for none)", opt, arg);
        if (x < 1 || x > 65536) return dd_error("--%s: batch %ld is outside 1..65536", opt, x);
        if (*n == max) return dd_error("--%s: at most %d batch sizes", opt, max);
        v[(*n)++] = (int)x;
        p = *end == ',' ? end + 1 : end;
    }
    return *n ? 0 : dd_error("--%s: empty list", opt);
}

int cmd_bench(int argc, char **argv) {
    enum { O_DEVICE = 1, O_TRAIN, O_FWD, O_DDIM, O_MIN, O_JSON, O_PROFILE, O_PRANGE, O_HELP };
    static const struct option opts[] = {
        {"device", required_argument, 0, O_DEVICE}, {"train", required_argument, 0, O_TRAIN},
        {"forward", required_argument, 0, O_FWD}, {"ddim", required_argument, 0, O_DDIM},
        {"min-time", required_argument, 0, O_MIN}, {"json", required_argument, 0, O_JSON},
        {"profile", no_argument, 0, O_PROFILE}, {"profiler-range", no_argument, 0, O_PRANGE},
        {"help", no_argument, 0, O_HELP}, CLI_MODEL_OPTIONS, {0, 0, 0, 0}};
    const char *device = "auto", *json = NULL;
    int train_b[8], fwd_b[8], ntrain = -1, nfwd = -1, ddim_b = -1, rc = 0, c, profile = 0, prange = 0;
    double min_s = 1.0;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    optind = 1;
    opterr = 0;
    while (!rc && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_DEVICE: device = optarg; break;
        case O_TRAIN: rc = parse_list("train", optarg, train_b, 8, &ntrain); break;
        case O_FWD: rc = parse_list("forward", optarg, fwd_b, 8, &nfwd); break;
        case O_DDIM: rc = cli_int("ddim", optarg, 0, 65536, &ddim_b); break;
        case O_MIN: rc = cli_double("min-time", optarg, 0.01, 600, &min_s); break;
        case O_JSON: json = optarg; break;
        case O_PROFILE: profile = 1; break;
        case O_PRANGE: prange = 1; break;
        case O_HELP: fputs(usage, stdout); return 0;
        case '?': return cli_error("unknown or incomplete option '%s' (diffusion bench --help)", argv[optind - 1]);
        default:
            if (c >= CLI_OPT_BASE && c < CLI_OPT_MODEL_END) rc = cli_model_opt(&mo, c, optarg);
        }
    }
    if (rc) return cli_error("%s", dd_error_message());
    if (optind < argc) return cli_error("unexpected argument '%s'", argv[optind]);
    dd_model_config cfg;
    if (cli_model_config(&mo, DD_MODEL_UNET, &cfg)) return cli_error("%s", dd_error_message());
    if (dd_model_is_conditional(&cfg) || cfg.kind == DD_MODEL_LENET)
        return cli_error("bench times unconditional diffusion models (unet, unet-fixed, mlp2d)");
    /* before the timings, which may take minutes */
    if (json && dd_atomic_check(json)) return cli_error("%s", dd_error_message());
    const dd_backend *be = cli_backend(device);
    if (!be) return cli_error("%s", dd_error_message());
    int gpu = !strcmp(be->name, "cuda");
    if (prange && !gpu) return cli_error("--profiler-range needs the cuda backend");
    if (ntrain < 0) {
        ntrain = gpu ? 3 : 1;
        train_b[0] = 32, train_b[1] = 128, train_b[2] = 512;
    }
    if (nfwd < 0) {
        nfwd = gpu ? 2 : 1;
        fwd_b[0] = 64, fwd_b[1] = 1024;
    }
    if (ddim_b < 0) ddim_b = gpu ? 256 : 16;
    char devname[256], detail[512] = "";
    snprintf(devname, sizeof devname, "cpu");
    dd_cuda_info info;
    if (!gpu) dd_cpu_describe(detail, sizeof detail);
    if (gpu && !dd_cuda_device_info(&info)) {
        snprintf(devname, sizeof devname, "%s", info.name);
        /* what a GPU timing depends on besides the card */
        snprintf(detail, sizeof detail,
                 "compute %d.%d, %d SMs, %.1f GiB; CUDA runtime %d.%d, driver %d.%d, cuDNN "
                 "%zu.%zu.%zu; TF32 %s",
                 info.cc_major, info.cc_minor, info.sm_count,
                 (double)info.total_bytes / (1024.0 * 1024.0 * 1024.0),
                 info.runtime_version / 1000, info.runtime_version % 1000 / 10,
                 info.driver_version / 1000, info.driver_version % 1000 / 10,
                 info.cudnn_version / 10000, info.cudnn_version / 100 % 100,
                 info.cudnn_version % 100, dd_cuda_tf32() == 1 ? "on" : "off");
    }
    dd_schedule s;
    if (dd_schedule_init(&s, DD_SCHEDULE_COSINE, cfg.timesteps, 0, 0)) return cli_error("%s", dd_error_message());
    size_t per = (size_t)cfg.in_channels * cfg.height * cfg.width;
    dd_runner r;
    if (dd_runner_init(&r, &cfg, be, 0)) {
        dd_schedule_free(&s);
        return cli_error("%s", dd_error_message());
    }
    printf("diffusion bench on %s (%s backend), %zu parameters, %dx%dx%d, T = %d\n", devname, be->name,
           dd_model_count_trainable(r.params), cfg.in_channels, cfg.height, cfg.width, cfg.timesteps);
    if (detail[0]) printf("  %s\n", detail);
    printf("%-12s %6s %10s %12s\n", "work", "batch", "ms", "per second");
    cJSON *rows = cJSON_CreateArray();
    struct { const char *name; int (*fn)(job *); int *b; int n; } work[3] = {
        {"train_step", job_train, train_b, ntrain}, {"denoise_fwd", job_forward, fwd_b, nfwd},
        {"ddim20_loop", job_ddim, &ddim_b, ddim_b > 0}};
    for (int w = 0; !rc && w < 3; w++) {
        for (int k = 0; !rc && k < work[w].n; k++) {
            int B = work[w].b[k];
            dd_train_batch tb;
            memset(&tb, 0, sizeof tb);
            job j = {.r = &r, .tb = &tb, .B = B, .s = &s};
            dd_run_info_default(&j.ri, DD_MODEL_UNET);
            j.ri.lr = 1e-4f;
            j.ri.ema_decay = 0.999f;
            rc = dd_train_batch_init(&tb, be, &s, DD_OBJECTIVE_EPS, B, per);
            if (!rc) rc = be->alloc((void **)&j.x0, (size_t)B * per * sizeof(float));
            if (!rc) rc = be->normal(j.x0, (size_t)B * per, (dd_rng_at){5, 0, 0, NULL, 0});
            if (!rc) rc = be->normal(tb.xt, (size_t)B * per, (dd_rng_at){6, 0, 0, NULL, 0});
            if (!rc) { /* every sample at t = 50 for the denoising forward */
                int32_t *t50 = malloc((size_t)B * sizeof *t50);
                if (!t50) rc = dd_error("out of host memory");
                for (int i = 0; !rc && i < B; i++) t50[i] = 50;
                if (!rc) rc = be->to_device(tb.t, t50, (size_t)B * sizeof *t50);
                free(t50);
            }
            j.so = dd_sample_opts_default(B, per);
            /* repeated DDIM runs keep their buffers and their recorded step, as a user's
             * sampling of many batches does */
            if (!rc && work[w].fn == job_ddim && !(j.so.cache = dd_sample_cache_new())) rc = -1;
            double ms = 0;
            if (!rc) rc = timed(work[w].fn, &j, be, min_s, &ms);
            if (!rc) {
                printf("%-12s %6d %10.3f %12.1f\n", work[w].name, B, ms, B / ms * 1e3);
                fflush(stdout);
                cJSON *row = cJSON_CreateObject();
                cJSON_AddStringToObject(row, "task", work[w].name);
                cJSON_AddNumberToObject(row, "batch", B);
                cJSON_AddNumberToObject(row, "ms", ms);
                cJSON_AddNumberToObject(row, "per_s", B / ms * 1e3);
                cJSON_AddItemToArray(rows, row);
            }
            if (!rc && prange) { /* one more call, as timed (recorded graphs replayed) */
                rc = be->synchronize();
                if (!rc) rc = dd_cuda_profiler_range(1);
                if (!rc) rc = work[w].fn(&j);
                if (!rc) rc = be->synchronize();
                if (!rc) rc = dd_cuda_profiler_range(0);
            }
            if (!rc && profile) {
                char name[64];
                snprintf(name, sizeof name, "%s at batch %d", work[w].name, B);
                rc = profile_job(work[w].fn, &j, be, name);
                fflush(stdout);
            }
            if (rc) dd_error_prefix("%s at batch %d", work[w].name, B);
            dd_replay_reset(&j.rp);
            dd_sample_cache_free(j.so.cache);
            if (j.x0) be->free(j.x0);
            dd_train_batch_free(&tb);
        }
    }
    if (!rc && json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "device", devname);
        if (detail[0]) cJSON_AddStringToObject(root, "device_detail", detail);
        cJSON_AddStringToObject(root, "backend", be->name);
        cJSON_AddNumberToObject(root, "parameters", (double)dd_model_count_trainable(r.params));
        cJSON_AddItemToObject(root, "rows", rows);
        rows = NULL;
        char *text = cJSON_Print(root);
        cJSON_Delete(root);
        rc = text ? dd_write_file_atomic(json, text, strlen(text)) : dd_error("out of memory");
        free(text);
    }
    cJSON_Delete(rows);
    dd_runner_free(&r);
    dd_schedule_free(&s);
    if (rc && dd_error_was_size())
        return cli_error("%s (try a smaller batch in --train, --forward or --ddim)", dd_error_message());
    if (rc) return cli_error("%s", dd_error_message());
    return 0;
}
