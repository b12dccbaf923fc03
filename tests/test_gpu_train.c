/* Whole-model agreement between the CUDA and CPU backends: a small conditional UNet (two levels,
 * middle attention, GroupNorm, class embedding) built from the same seed on both, then
 *   - the initial parameters (initialised on the host: must be identical),
 *   - four whole training steps (dd_train_step: draws, x_t, forward, backward, Adam, EMA, step
 *     count), which on the GPU run plainly, then recorded as one CUDA graph, then replayed
 *     twice: t, labels, x_t, loss, every gradient, the updated parameters, EMA, step counter,
 *   - a fifth step whose data is NaN: the guard must leave parameters and counter alone, on the
 *     replayed graph as on the CPU,
 *   - a guided DDIM run (eta 1, so the sampler's noise is exercised) and a DDPM run, each step
 *     recorded once and replayed on the GPU,
 * compared in both math modes (TF32 on and off, with tolerances for a whole network: small
 * differences in the products compound through 20 layers and Adam's normalisation).
 * Without a GPU (or without the CUDA build) the test exits 77: CTest reports it as skipped. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/cuda.h"
#include "diffusion/diffusion.h"
#include "diffusion/error.h"
#include "diffusion/models.h"
#include "diffusion/runner.h"
#include "diffusion/train.h"
#include "testutil.h"

/* Whole-network tolerances, relative (norm of the difference over the CPU's norm). With TF32
 * off every op agrees to ~1e-6 (test_gpu_ops), and a few layers deep that stays below 1e-4;
 * TF32 rounds every product's inputs to 10 bits. */
#define NET_TOL_FP32 1e-4
#define NET_TOL_TF32 1e-2
/* Samples go through 20 steps of a random model: errors grow step by step. With TF32 they grow
 * far more: guidance doubles the model's rounding error at every step, and clipping and the
 * injected noise make the chain chaotic. The CPU emulation of CUDA (tests/emu), which rounds
 * every product's inputs to TF32 as tensor cores do, measured 1.4e-1 for the guided DDIM run and
 * 5.7e-3 for DDPM; a wrong formula moves samples by O(1). The chains are held to FP32 accuracy
 * in the TF32-off pass, and one model evaluation to NET_TOL_TF32 above. */
#define SAMPLE_TOL_FP32 1e-3
#define SAMPLE_TOL_TF32 3e-1

static const dd_backend *gpu;
static const dd_backend *cpu = &dd_cpu_backend;

static void fatal(const char *what) {
    fprintf(stderr, "FATAL: %s: %s\n", what, dd_error_message());
    exit(1);
}

static void compare(const char *what, const float *gpu_host, const float *cpu_host, size_t n,
                    double tol) {
    double e = tu_rel_err(gpu_host, cpu_host, n);
    printf("  %-44s rel err %.2e (tol %.0e)\n", what, e, tol);
    CHECKF(e <= tol, "%s: relative error %.3e above %.1e", what, e, tol);
}

/* a whole backend buffer of n floats, on the host */
static float *fetch(const dd_backend *be, const float *p, size_t n) {
    float *h = malloc(n * sizeof(float));
    if (!h) fatal("host memory");
    if (be->to_host(h, p, n * sizeof(float))) fatal("to_host");
    return h;
}

static void compare_buffers(const char *what, const float *g, const float *c, size_t n,
                            double tol) {
    float *hg = fetch(gpu, g, n), *hc = fetch(cpu, c, n);
    compare(what, hg, hc, n, tol);
    free(hg);
    free(hc);
}

/* two GPU buffers */
static void compare_gpu_buffers(const char *what, const float *a, const float *b, size_t n,
                                double tol) {
    float *ha = fetch(gpu, a, n), *hb = fetch(gpu, b, n);
    compare(what, ha, hb, n, tol);
    free(ha);
    free(hb);
}

static dd_model_config small_unet(void) {
    dd_model_config c;
    dd_model_config_default(&c, DD_MODEL_UNET_COND);
    c.in_channels = 1;
    c.height = c.width = 12;
    c.model_channels = 8;
    c.n_mult = 2;
    c.mult[0] = 1;
    c.mult[1] = 2;
    c.attention = 1;
    c.groups = 4;
    c.heads = 2;
    c.classes = 3;
    c.timesteps = 20;
    return c;
}

static void run_mode(int tf32) {
    if (dd_cuda_set_tf32(tf32)) fatal("dd_cuda_set_tf32");
    const double net_tol = tf32 ? NET_TOL_TF32 : NET_TOL_FP32;
    const double sample_tol = tf32 ? SAMPLE_TOL_TF32 : SAMPLE_TOL_FP32;
    printf("== TF32 %s\n", tf32 ? "on" : "off");

    dd_model_config cfg = small_unet();
    if (dd_model_config_validate(&cfg)) fatal("model config");
    dd_schedule s;
    if (dd_schedule_init(&s, DD_SCHEDULE_COSINE, cfg.timesteps, 0, 0)) fatal("schedule");
    const int B = 6;
    const size_t per = (size_t)cfg.in_channels * cfg.height * cfg.width;

    dd_runner rg, rc;
    memset(&rg, 0, sizeof rg);
    memset(&rc, 0, sizeof rc);
    if (dd_runner_init(&rc, &cfg, cpu, 11)) fatal("cpu runner");
    if (dd_runner_init(&rg, &cfg, gpu, 11)) fatal("gpu runner");
    const size_t total = rc.params->total;
    CHECK(rg.params->total == total);
    {
        float *hg = fetch(gpu, rg.params->data, total), *hc = fetch(cpu, rc.params->data, total);
        CHECKF(memcmp(hg, hc, total * sizeof(float)) == 0,
               "initial parameters differ between the backends");
        free(hg);
        free(hc);
    }

    /* the same data on both, the same Philox addresses for t, label drops and noise */
    float *x0 = malloc(B * per * sizeof(float));
    if (!x0) fatal("host memory");
    tu_fill_uniform(x0, B * per, -1, 1, 5);
    const int32_t labels[6] = {0, 1, 2, 2, 1, 0};
    float *gx0, *cx0;
    int32_t *glab, *clab;
    if (gpu->alloc((void **)&gx0, B * per * sizeof(float)) ||
        gpu->to_device(gx0, x0, B * per * sizeof(float)) ||
        gpu->alloc((void **)&glab, sizeof labels) || gpu->to_device(glab, labels, sizeof labels))
        fatal("gpu x0");
    if (cpu->alloc((void **)&cx0, B * per * sizeof(float)) ||
        cpu->alloc((void **)&clab, sizeof labels))
        fatal("cpu x0");
    memcpy(cx0, x0, B * per * sizeof(float));
    memcpy(clab, labels, sizeof labels);
    dd_train_batch tg, tc;
    memset(&tg, 0, sizeof tg);
    memset(&tc, 0, sizeof tc);
    if (dd_train_batch_init(&tg, gpu, &s, DD_OBJECTIVE_EPS, B, per) ||
        dd_train_batch_init(&tc, cpu, &s, DD_OBJECTIVE_EPS, B, per))
        fatal("train batch");
    dd_run_info ri;
    dd_run_info_default(&ri, DD_MODEL_UNET_COND);
    ri.model = cfg;
    ri.seed = 3;
    ri.lr = 1e-3f;
    ri.ema_decay = 0.99f;
    ri.prob_uncond = 0.3f;
    dd_replay rpg, rpc;
    memset(&rpg, 0, sizeof rpg);
    memset(&rpc, 0, sizeof rpc);

    for (int step = 0; step < 4; step++) {
        CHECK_OK(dd_train_step(&rpg, &rg, &tg, gx0, glab, &ri));
        CHECK_OK(dd_train_step(&rpc, &rc, &tc, cx0, clab, &ri));
        int32_t tt[6], tl[6];
        if (gpu->to_host(tt, tg.t, sizeof tt) || gpu->to_host(tl, tg.labels, sizeof tl))
            fatal("to_host");
        char what[96];
        snprintf(what, sizeof what, "step %d (%s)", step + 1,
                 step == 0 ? "plain" : step == 1 ? "recorded" : "replayed");
        CHECKF(!memcmp(tt, tc.t, sizeof tt) && !memcmp(tl, tc.labels, sizeof tl),
               "%s: t or labels differ", what);
        printf(" %s\n", what);
        compare_buffers("  x_t (q_sample of Philox noise)", tg.xt, tc.xt, B * per, 1e-5);
        float lg = NAN, lc = NAN;
        if (gpu->to_host(&lg, dd_runner_loss(&rg), sizeof lg)) fatal("to_host");
        lc = *dd_runner_loss(&rc);
        snprintf(what, sizeof what, "  loss (%.6f on the CPU)", lc);
        compare(what, &lg, &lc, 1, net_tol);
        compare_buffers("  every gradient", rg.params->grad, rc.params->grad, total, net_tol);
        compare_buffers("  parameters after Adam", rg.params->data, rc.params->data, total, net_tol);
        compare_buffers("  EMA", rg.params->ema, rc.params->ema, total, net_tol);
        CHECK_OK(dd_params_read_step(rg.params));
        CHECKF(rg.params->adam_step == step + 1 && *rc.params->step_dev == step + 1,
               "step counters %lld (GPU) and %lld (CPU) after %d steps",
               (long long)rg.params->adam_step, (long long)*rc.params->step_dev, step + 1);
    }
    const char *graphs = getenv("DIFFUSION_CUDA_GRAPHS");
    if (!(graphs && !strcmp(graphs, "0"))) {
        CHECKF(rpg.cg != NULL, "the training step was not recorded as a CUDA graph");
        /* replayed against plain launches on the GPU: the same four steps with recording off
         * give the same parameters (the same kernels; only a non-deterministic cuDNN algorithm
         * could make them differ at all) */
        dd_runner rn;
        dd_train_batch tn;
        dd_replay rpn;
        memset(&rn, 0, sizeof rn);
        memset(&rpn, 0, sizeof rpn);
        if (dd_runner_init(&rn, &cfg, gpu, 11) ||
            dd_train_batch_init(&tn, gpu, &s, DD_OBJECTIVE_EPS, B, per))
            fatal("plain runner");
        setenv("DIFFUSION_CUDA_GRAPHS", "0", 1);
        for (int step = 0; step < 4; step++) CHECK_OK(dd_train_step(&rpn, &rn, &tn, gx0, glab, &ri));
        unsetenv("DIFFUSION_CUDA_GRAPHS");
        CHECKF(rpn.cg == NULL, "recording was not off");
        compare_gpu_buffers("4 steps, replayed vs plain launches: parameters", rg.params->data,
                            rn.params->data, total, 1e-5);
        compare_gpu_buffers("4 steps, replayed vs plain launches: EMA", rg.params->ema,
                            rn.params->ema, total, 1e-5);
        dd_replay_reset(&rpn);
        dd_train_batch_free(&tn);
        dd_runner_free(&rn);
    }

    /* a NaN batch: the loss is NaN and the guard keeps every update out, replayed or not */
    {
        float *before = fetch(gpu, rg.params->data, total);
        float nan = NAN;
        if (gpu->to_device(gx0, &nan, sizeof nan)) fatal("to_device");
        cx0[0] = NAN;
        CHECK_OK(dd_train_step(&rpg, &rg, &tg, gx0, glab, &ri));
        CHECK_OK(dd_train_step(&rpc, &rc, &tc, cx0, clab, &ri));
        float lg = 0;
        if (gpu->to_host(&lg, dd_runner_loss(&rg), sizeof lg)) fatal("to_host");
        float *after = fetch(gpu, rg.params->data, total);
        CHECK_OK(dd_params_read_step(rg.params));
        CHECKF(isnan(lg) && isnan(*dd_runner_loss(&rc)), "NaN data: losses %g, %g", lg,
               *dd_runner_loss(&rc));
        CHECKF(!memcmp(before, after, total * sizeof(float)) && rg.params->adam_step == 4 &&
                   *rc.params->step_dev == 4,
               "NaN step: the GPU's parameters or either step counter moved");
        free(before);
        free(after);
        if (gpu->to_device(gx0, x0, sizeof(float))) fatal("to_device");
        cx0[0] = x0[0];
    }
    dd_replay_reset(&rpg);
    dd_replay_reset(&rpc);

    /* sampling with the trained weights: guided DDIM with noise, then DDPM */
    const int S = 4;
    float *og = malloc(S * per * sizeof(float)), *oc = malloc(S * per * sizeof(float));
    if (!og || !oc) fatal("host memory");
    dd_denoiser mg = {.fn = dd_runner_denoise, .ctx = &rg, .version = dd_runner_version,
                      .objective = DD_OBJECTIVE_EPS,
                      .num_classes = cfg.classes, .generic_label = cfg.classes};
    dd_denoiser mc = mg;
    mc.ctx = &rc;
    for (int k = 0; k < 2; k++) {
        dd_sample_opts og_o = dd_sample_opts_default(S, per), oc_o;
        og_o.label = 1;
        og_o.guidance = 2.0f;
        og_o.rng.seed = 77;
        oc_o = og_o;
        int rcg, rcc;
        if (k == 0) {
            rcg = dd_sample_ddim(gpu, &s, &mg, &og_o, 5, 1.0f, og);
            rcc = dd_sample_ddim(cpu, &s, &mc, &oc_o, 5, 1.0f, oc);
        } else {
            rcg = dd_sample_ddpm(gpu, &s, &mg, &og_o, og);
            rcc = dd_sample_ddpm(cpu, &s, &mc, &oc_o, oc);
        }
        CHECK_OK(rcg);
        CHECK_OK(rcc);
        compare(k == 0 ? "DDIM tau 5 eta 1, guidance 2: samples" : "DDPM T 20, guidance 2: samples",
                og, oc, S * per, sample_tol);
    }

    /* a sampler cache keeps the recorded step between runs, but never across a re-planned model:
     * run, re-plan the model for another batch, run again with the cache (a stale replay would
     * read freed buffers), against the first run */
    {
        dd_sample_cache *cache = dd_sample_cache_new();
        float *o2 = malloc(S * per * sizeof(float)), *o3 = malloc((S + 1) * per * sizeof(float));
        if (!cache || !o2 || !o3) fatal("cache");
        for (int run = 0; run < 3; run++) {
            dd_sample_opts o = dd_sample_opts_default(run == 1 ? S + 1 : S, per);
            o.label = 1;
            o.guidance = 2.0f;
            o.rng.seed = 77;
            o.cache = run == 1 ? NULL : cache;
            CHECK_OK(dd_sample_ddim(gpu, &s, &mg, &o, 5, 1.0f, run == 0 ? og : run == 1 ? o3 : o2));
        }
        compare("cached DDIM after the model was re-planned vs before", o2, og, S * per, 1e-6);
        dd_sample_cache_free(cache);
        free(o2);
        free(o3);
    }

    free(og);
    free(oc);
    free(x0);
    gpu->free(gx0);
    cpu->free(cx0);
    gpu->free(glab);
    cpu->free(clab);
    dd_train_batch_free(&tg);
    dd_train_batch_free(&tc);
    dd_runner_free(&rg);
    dd_runner_free(&rc);
    dd_schedule_free(&s);
}

int main(void) {
    gpu = dd_cuda_backend();
    if (!gpu) tu_skip(dd_error_message());
    run_mode(0);
    run_mode(1);
    return tu_finish();
}
