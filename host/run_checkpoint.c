/* A diffusion run's checkpoint: the parameters with their training state (checkpoint.h) and, as
 * flat metadata keys, what the run needs to go on or to sample: the model config (JSON), the
 * schedule, the objective, the data, epoch, step, seed and training settings. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/checkpoint.h"
#include "diffusion/error.h"
#include "diffusion/train.h"

int dd_run_save(const char *path, const dd_runner *r, const dd_run_info *ri) {
    char *model = dd_model_config_to_json(&ri->model);
    if (!model) return -1;
    char epoch[32], step[32], seed[32], bs[40], be[40], batch[32], lr[40], ema[40], pu[40], val[40];
    snprintf(epoch, sizeof epoch, "%d", ri->epoch);
    snprintf(step, sizeof step, "%" PRId64, ri->step);
    snprintf(seed, sizeof seed, "%" PRIu64, ri->seed);
    snprintf(bs, sizeof bs, "%.17g", ri->beta_start);
    snprintf(be, sizeof be, "%.17g", ri->beta_end);
    snprintf(batch, sizeof batch, "%d", ri->batch);
    snprintf(lr, sizeof lr, "%.9g", (double)ri->lr);
    snprintf(ema, sizeof ema, "%.9g", (double)ri->ema_decay);
    snprintf(pu, sizeof pu, "%.9g", (double)ri->prob_uncond);
    snprintf(val, sizeof val, "%.17g", ri->val_fraction);
    const dd_st_pair meta[] = {
        {"config", model},
        {"schedule", dd_schedule_kind_name(ri->schedule)},
        {"beta_start", bs},
        {"beta_end", be},
        {"objective", dd_objective_name(ri->objective)},
        {"epoch", epoch},
        {"step", step},
        {"seed", seed},
        {"data", ri->data},
        {"batch", batch},
        {"lr", lr},
        {"ema_decay", ema},
        {"prob_uncond", pu},
        {"val_fraction", val},
    };
    int rc = dd_checkpoint_save(path, r->params, meta, (int)(sizeof meta / sizeof meta[0]), DD_CKPT_TRAIN);
    free(model);
    return rc;
}

static int meta_num(const dd_safetensors *h, const char *key, double *out, int required) {
    const char *v = dd_st_meta(h, key);
    if (!v) return required ? dd_error("the checkpoint has no '%s' in its metadata", key) : 0;
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end) return dd_error("the checkpoint's '%s' is not a number: '%s'", key, v);
    *out = d;
    return 0;
}

int dd_run_read_info(const char *path, dd_run_info *ri) {
    dd_safetensors h;
    DD_TRY(dd_checkpoint_read_meta(path, &h));
    int rc = 0;
    const char *cfg = dd_st_meta(&h, "config");
    if (!cfg) rc = dd_error("%s: no model config in the metadata (not written by diffusion train?)", path);
    dd_model_config mc;
    if (!rc && dd_model_config_from_json(&mc, cfg)) rc = dd_error_prefix("%s: model config", path);
    if (!rc) {
        dd_run_info_default(ri, mc.kind);
        ri->model = mc;
        const char *s = dd_st_meta(&h, "schedule");
        if (s && dd_schedule_kind_parse(s, &ri->schedule)) rc = -1;
        s = dd_st_meta(&h, "objective");
        if (!rc && s && dd_objective_parse(s, &ri->objective)) rc = -1;
        s = dd_st_meta(&h, "data");
        if (s) snprintf(ri->data, sizeof ri->data, "%s", s);
        double v;
        if (!rc && !meta_num(&h, "beta_start", &ri->beta_start, 0) && !meta_num(&h, "beta_end", &ri->beta_end, 0)) {
            v = ri->epoch;
            if (meta_num(&h, "epoch", &v, 0)) rc = -1;
            ri->epoch = (int)v;
            v = (double)ri->step;
            if (!rc && meta_num(&h, "step", &v, 0)) rc = -1;
            ri->step = (int64_t)v;
            v = ri->batch;
            if (!rc && meta_num(&h, "batch", &v, 0)) rc = -1;
            ri->batch = (int)v;
            v = ri->lr;
            if (!rc && meta_num(&h, "lr", &v, 0)) rc = -1;
            ri->lr = (float)v;
            v = ri->ema_decay;
            if (!rc && meta_num(&h, "ema_decay", &v, 0)) rc = -1;
            ri->ema_decay = (float)v;
            v = ri->prob_uncond;
            if (!rc && meta_num(&h, "prob_uncond", &v, 0)) rc = -1;
            ri->prob_uncond = (float)v;
            if (!rc && meta_num(&h, "val_fraction", &ri->val_fraction, 0)) rc = -1;
        } else {
            rc = -1;
        }
        s = dd_st_meta(&h, "seed"); /* a u64: not through double */
        if (!rc && s) {
            char *end;
            ri->seed = strtoull(s, &end, 10);
            if (end == s || *end) rc = dd_error("the checkpoint's seed is not a number: '%s'", s);
        }
        if (rc) dd_error_prefix("%s", path);
    }
    dd_st_free(&h);
    return rc;
}

int dd_run_load(const char *path, const dd_backend *be, int with_state, dd_runner *r, dd_run_info *ri) {
    DD_TRY(dd_run_read_info(path, ri));
    /* the EMA when the file has it (weights written by PyTorch have none: the EMA then starts as
     * the weights); Adam's state only to resume, where it must be there */
    dd_safetensors h;
    if (dd_checkpoint_read_meta(path, &h)) return -1;
    int flags = dd_checkpoint_state(&h) & DD_CKPT_EMA;
    dd_st_free(&h);
    if (with_state) flags |= DD_CKPT_TRAIN;
    DD_TRY(dd_runner_init(r, &ri->model, be, ri->seed));
    if (dd_checkpoint_load(path, r->params, flags)) {
        dd_runner_free(r);
        return -1;
    }
    return 0;
}
