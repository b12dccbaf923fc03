/* The training loop (include/diffusion/train.h): epochs over shuffled batches, a held-out
 * validation set, Adam, EMA, loss history, a checkpoint per epoch, exact resume. */
#include "diffusion/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "diffusion/error.h"
#include "diffusion/image.h"
#include "diffusion/progress.h"
#include "diffusion/safetensors.h"

void dd_run_info_default(dd_run_info *ri, dd_model_kind kind) {
    memset(ri, 0, sizeof *ri);
    dd_model_config_default(&ri->model, kind);
    int is2d = kind == DD_MODEL_MLP2D || kind == DD_MODEL_MLP2D_COND;
    /* SPEC's "training defaults of the original's examples" */
    ri->schedule = is2d ? DD_SCHEDULE_LINEAR : DD_SCHEDULE_COSINE;
    ri->beta_start = is2d ? 8e-6 : DD_LINEAR_BETA_START;
    ri->beta_end = is2d ? 9e-5 : DD_LINEAR_BETA_END;
    ri->objective = DD_OBJECTIVE_EPS;
    ri->batch = 32;
    ri->lr = 1e-3f;
    ri->ema_decay = 0.999f;
    ri->prob_uncond = 0.2f;
    ri->val_fraction = DD_VAL_FRACTION_DEFAULT;
}

void dd_train_opts_default(dd_train_opts *o, dd_model_kind kind) {
    memset(o, 0, sizeof *o);
    dd_run_info_default(&o->run, kind);
    o->epochs = 10;
    o->progress = -1;
    o->sample_n = 12;
    o->checkpoint_every_epoch = 1;
}

/* mkdir -p */
static int make_dirs(const char *path) {
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return dd_error("path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0777) && errno != EEXIST)
                return dd_error("cannot create folder %s: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    struct stat st;
    if (stat(path, &st) || !S_ISDIR(st.st_mode)) return dd_error("%s is not a folder", path);
    return 0;
}

static int write_config_json(const char *path, const dd_train_opts *o, const dd_dataset *d,
                             const char *backend) {
    const dd_run_info *ri = &o->run;
    cJSON *j = cJSON_CreateObject();
    char *model = dd_model_config_to_json(&ri->model);
    if (!j || !model) {
        cJSON_Delete(j);
        free(model);
        return dd_error_prefix("writing %s", path);
    }
    cJSON_AddItemToObject(j, "model", cJSON_Parse(model));
    free(model);
    cJSON_AddStringToObject(j, "data", ri->data);
    cJSON *shape = cJSON_AddArrayToObject(j, "data_shape");
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(d->c));
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(d->h));
    cJSON_AddItemToArray(shape, cJSON_CreateNumber(d->w));
    cJSON_AddNumberToObject(j, "examples", (double)d->n);
    cJSON_AddNumberToObject(j, "num_classes", d->num_classes);
    cJSON_AddStringToObject(j, "schedule", dd_schedule_kind_name(ri->schedule));
    cJSON_AddNumberToObject(j, "timesteps", ri->model.timesteps);
    if (ri->schedule == DD_SCHEDULE_LINEAR) {
        cJSON_AddNumberToObject(j, "beta_start", ri->beta_start);
        cJSON_AddNumberToObject(j, "beta_end", ri->beta_end);
    }
    cJSON_AddStringToObject(j, "objective", dd_objective_name(ri->objective));
    cJSON_AddNumberToObject(j, "epochs", o->epochs);
    cJSON_AddNumberToObject(j, "batch", ri->batch);
    cJSON_AddNumberToObject(j, "lr", ri->lr);
    cJSON_AddNumberToObject(j, "ema_decay", ri->ema_decay);
    cJSON_AddNumberToObject(j, "prob_uncond", ri->prob_uncond);
    cJSON_AddNumberToObject(j, "val_fraction", ri->val_fraction);
    cJSON_AddNumberToObject(j, "seed", (double)ri->seed);
    cJSON_AddStringToObject(j, "device", backend);
    if (o->resume) cJSON_AddStringToObject(j, "resumed_from", o->resume);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return dd_error("writing %s: out of memory", path);
    size_t n = strlen(text);
    text[n] = '\n'; /* replace the terminator: the file ends with a newline */
    int rc = dd_write_file_atomic(path, text, n + 1);
    free(text);
    return rc;
}

typedef struct {
    float *x0;        /* backend (B, per) */
    int32_t *y;       /* backend (B) */
    /* host (B, per) and (B), be->host_alloc, two of each: uploaded while a step runs. An upload
     * gathers into one pair while the copy queued from the other may not have run yet (the first
     * two batches are queued without a wait between them); a pair is written again only after a
     * loss read-back has waited for its previous copy. */
    float *x_host[2];
    int32_t *y_host[2];
    int slot; /* the pair the next upload uses */
    float *out_host, *target_host; /* host (B, per), validation */
    int64_t *order;   /* host (n_train) */
} train_bufs;

static void bufs_free(train_bufs *b, const dd_backend *be) {
    if (b->x0) be->free(b->x0);
    if (b->y) be->free(b->y);
    for (int i = 0; i < 2; i++) {
        if (b->x_host[i]) be->host_free(b->x_host[i]);
        if (b->y_host[i]) be->host_free(b->y_host[i]);
    }
    free(b->out_host);
    free(b->target_host);
    free(b->order);
    memset(b, 0, sizeof *b);
}

/* A batch: gather examples idx[0..B) into a pair of host buffers, then queue their copy to the
 * backend (asynchronous on a GPU, so the trainer gathers and queues the next batch while a step
 * runs; the copy into x0 is ordered after the step that reads the previous batch). Two uploads in
 * a row without a wait between them are safe: they use different pairs. */
static int upload(const dd_backend *be, train_bufs *b, const dd_dataset *d, const int64_t *idx, int B,
                  size_t per, int cond) {
    float *xh = b->x_host[b->slot];
    int32_t *yh = b->y_host[b->slot];
    b->slot ^= 1;
    DD_TRY(dd_gather(xh, cond ? yh : NULL, d, idx, B));
    DD_TRY(be->to_device_async(b->x0, xh, (size_t)B * per * sizeof(float)));
    return cond ? be->to_device_async(b->y, yh, (size_t)B * sizeof(int32_t)) : 0;
}

typedef struct {
    dd_runner *r;
    dd_train_batch *tb;
    const float *x0;
    const int32_t *labels;
    const dd_run_info *ri;
} step_args;

static int train_step_body(void *ctx) {
    const step_args *a = ctx;
    const dd_run_info *ri = a->ri;
    /* the step's draws come from (seed, stream 1, step * stride): a function of the step alone
     * (read on the device), so a resumed run draws exactly what the unbroken run drew */
    dd_rng_at at = {ri->seed, 1, 0, a->r->params->step_dev, dd_train_batch_stride(a->tb)};
    DD_TRY(dd_train_batch_make(a->tb, a->x0, a->labels, (int32_t)ri->model.classes, ri->prob_uncond, at));
    return dd_runner_train_step(a->r, a->tb->B, a->tb->xt, a->tb->target, a->tb->t,
                                a->labels ? a->tb->labels : NULL, ri->lr, ri->ema_decay);
}

int dd_train_step(dd_replay *rp, dd_runner *r, dd_train_batch *tb, const float *x0,
                  const int32_t *labels, const dd_run_info *ri) {
    step_args a = {r, tb, x0, labels, ri};
    /* everything a replay reuses: buffers and the scalars passed down as arguments; the runner's
     * build count, not its graph's address, which a rebuilt graph could share */
    const void *key[DD_REPLAY_KEYS] = {dd_replay_key_int(r->builds),
                                       tb->xt,
                                       x0,
                                       labels,
                                       dd_replay_key_int(ri->seed),
                                       dd_replay_key_float(ri->lr),
                                       dd_replay_key_float(ri->ema_decay),
                                       dd_replay_key_float(ri->prob_uncond)};
    return dd_replay_run(rp, r->be, train_step_body, &a, key);
}

/* Mean validation loss over batches of B (cycling through the set when it is smaller than B),
 * with fixed noise (stream 2) so the number is comparable from epoch to epoch. */
static int validate(dd_runner *r, const dd_run_info *ri, dd_train_batch *tb, train_bufs *b,
                    const dd_dataset *d, const int64_t *val_idx, int64_t n_val, float *out) {
    int B = tb->B;
    int cond = dd_model_is_conditional(&ri->model);
    int64_t batches = n_val / B > 0 ? n_val / B : 1;
    double sum = 0;
    int64_t *idx = malloc((size_t)B * sizeof *idx);
    if (!idx) return dd_error("out of host memory");
    for (int64_t k = 0; k < batches; k++) {
        for (int i = 0; i < B; i++) idx[i] = val_idx[(k * B + i) % n_val];
        int rc = upload(r->be, b, d, idx, B, tb->per, cond);
        dd_rng_at at = {ri->seed, 2, (uint64_t)k * dd_train_batch_stride(tb), NULL, 0};
        /* validation keeps the true labels: prob_uncond 0 */
        if (!rc) rc = dd_train_batch_make(tb, b->x0, cond ? b->y : NULL, (int32_t)ri->model.classes, 0.0f, at);
        float loss = 0;
        if (!rc) rc = dd_runner_eval_loss(r, B, tb->xt, tb->target, tb->t, cond ? tb->labels : NULL, &loss);
        if (rc) {
            free(idx);
            return dd_error_prefix("validation");
        }
        sum += loss;
    }
    free(idx);
    *out = (float)(sum / (double)batches);
    return 0;
}

static int check_data(const dd_model_config *m, const dd_dataset *d) {
    if (m->kind == DD_MODEL_LENET) return dd_error("use train-classifier for lenet");
    if (d->c != m->in_channels || d->h != m->height || d->w != m->width)
        return dd_error("the data has shape %dx%dx%d but the model expects %dx%dx%d (channels x height x width)",
                        d->c, d->h, d->w, m->in_channels, m->height, m->width);
    if (dd_model_is_conditional(m)) {
        if (!d->y || d->num_classes < 1)
            return dd_error("a conditional model needs labelled data, and this data set has no labels");
        if (d->num_classes > m->classes)
            return dd_error("the data has %d classes but the model was built for %d", d->num_classes, m->classes);
    }
    if (d->n < 2) return dd_error("the data set has %lld examples: too few to train", (long long)d->n);
    return 0;
}

int dd_run_sample(dd_runner *r, const dd_run_info *ri, const dd_sampler_choice *sc,
                  dd_sample_opts *o, float *out) {
    dd_schedule s;
    DD_TRY(dd_schedule_init(&s, ri->schedule, ri->model.timesteps, ri->beta_start, ri->beta_end));
    int cond = dd_model_is_conditional(&ri->model);
    dd_denoiser m = {.fn = dd_runner_denoise, .ctx = r, .version = dd_runner_version, .objective = ri->objective,
                     .num_classes = cond ? ri->model.classes : 0,
                     .generic_label = cond ? (int32_t)ri->model.classes : -1};
    int rc = 0;
    if (sc->use_ema) rc = dd_params_swap_ema(r->params);
    if (!rc) rc = sc->ddim ? dd_sample_ddim(r->be, &s, &m, o, sc->steps, sc->eta, out)
                           : dd_sample_ddpm(r->be, &s, &m, o, out);
    if (sc->use_ema && dd_params_swap_ema(r->params) && !rc) rc = -1;
    dd_schedule_free(&s);
    return rc;
}

/* After training: samples.png (images) or samples.png + samples.csv (2-D points), EMA weights. */
static int final_samples(dd_runner *r, const dd_run_info *ri, const dd_dataset *d, const char *dir, int n) {
    if (n <= 0) return 0;
    int is2d = d->h == 1 && d->w == 1 && d->c == 2;
    int cond = dd_model_is_conditional(&ri->model);
    int K = cond ? d->num_classes : 0;
    int cols = 0, rows = 0;
    if (is2d) n = n < 1000 ? 1000 : n;
    if (cond && !is2d) { /* one row per class */
        cols = n / K > 0 ? n / K : 1;
        if (cols < 6) cols = 6;
        rows = K;
        n = rows * cols;
    }
    size_t per = (size_t)d->c * d->h * d->w;
    float *x = malloc((size_t)n * per * sizeof(float));
    int32_t *labels = cond ? malloc((size_t)n * sizeof(int32_t)) : NULL;
    if (!x || (cond && !labels)) {
        free(x);
        free(labels);
        return dd_error("out of host memory");
    }
    dd_sample_opts o = dd_sample_opts_default(n, per);
    o.rng.seed = ri->seed;
    o.rng.stream = 3;
    if (cond) {
        for (int i = 0; i < n; i++) labels[i] = is2d ? i % K : i / cols;
        o.labels = labels;
        o.guidance = 2.0f; /* the original's examples sample with g = 2 */
    }
    dd_sampler_choice sc = {.ddim = 0, .use_ema = 1};
    char path[1100];
    int rc = dd_run_sample(r, ri, &sc, &o, x);
    if (!rc && is2d) {
        snprintf(path, sizeof path, "%s/samples.csv", dir);
        rc = dd_write_points_csv(path, x, labels, n);
        if (!rc) {
            dd_plot_opts po = dd_plot_opts_default();
            po.title = "samples (DDPM, EMA weights)";
            po.num_classes = K;
            const char *names[3] = {dd_2d_class_name(0), dd_2d_class_name(1), dd_2d_class_name(2)};
            if (K == 3 && !strcmp(ri->data, "conditional-2d")) po.class_names = names;
            snprintf(path, sizeof path, "%s/samples.png", dir);
            rc = dd_plot_scatter(path, x, labels, n, &po);
        }
    } else if (!rc) {
        snprintf(path, sizeof path, "%s/samples.png", dir);
        rc = dd_write_png_grid(path, x, n, d->c, d->h, d->w, rows, cols, 2);
    }
    free(x);
    free(labels);
    return rc;
}

/* history.csv: kind,epoch,step,loss  (kind "batch" or "val"); appended as training goes so a
 * resumed run in the same folder continues the file. */
static int plot_history(const char *dir) {
    char path[1100];
    snprintf(path, sizeof path, "%s/history.csv", dir);
    FILE *f = fopen(path, "r");
    if (!f) return dd_error("cannot read %s: %s", path, strerror(errno));
    size_t cap = 1024, nb = 0, nv = 0;
    float *bx = malloc(cap * sizeof *bx), *by = malloc(cap * sizeof *by);
    float *vx = malloc(cap * sizeof *vx), *vy = malloc(cap * sizeof *vy);
    char line[256];
    int rc = 0;
    while (bx && by && vx && vy && fgets(line, sizeof line, f)) {
        char kind[16];
        int epoch;
        long long step;
        float loss;
        if (sscanf(line, "%15[^,],%d,%lld,%f", kind, &epoch, &step, &loss) != 4) continue; /* header */
        if (nb == cap || nv == cap) {
            cap *= 2;
            float *p[4] = {realloc(bx, cap * 4), NULL, NULL, NULL};
            if (p[0]) bx = p[0];
            p[1] = realloc(by, cap * 4);
            if (p[1]) by = p[1];
            p[2] = realloc(vx, cap * 4);
            if (p[2]) vx = p[2];
            p[3] = realloc(vy, cap * 4);
            if (p[3]) vy = p[3];
            if (!p[0] || !p[1] || !p[2] || !p[3]) {
                rc = dd_error("out of host memory");
                break;
            }
        }
        if (!strcmp(kind, "batch")) bx[nb] = (float)step, by[nb++] = loss;
        else if (!strcmp(kind, "val")) vx[nv] = (float)step, vy[nv++] = loss;
    }
    fclose(f);
    if (!rc && (!bx || !by || !vx || !vy)) rc = dd_error("out of host memory");
    if (!rc) {
        dd_plot_opts po = dd_plot_opts_default();
        po.title = "training loss";
        po.xlabel = "step";
        po.ylabel = "MSE loss";
        snprintf(path, sizeof path, "%s/loss.png", dir);
        rc = dd_plot_loss(path, bx, by, (int64_t)nb, vx, vy, (int64_t)nv, &po);
    }
    free(bx);
    free(by);
    free(vx);
    free(vy);
    return rc;
}

int dd_train(const dd_train_opts *o, const dd_dataset *data, const dd_backend *be) {
    dd_run_info ri = o->run;
    dd_runner r;
    memset(&r, 0, sizeof r);
    if (o->epochs < 1) return dd_error("epochs must be at least 1 (got %d)", o->epochs);
    if (ri.batch < 1) return dd_error("batch size must be at least 1 (got %d)", ri.batch);
    if (!(ri.lr > 0)) return dd_error("learning rate must be positive");
    if (!(ri.prob_uncond >= 0 && ri.prob_uncond <= 1)) return dd_error("prob_uncond must be in [0, 1]");
    if (!(ri.ema_decay >= 0 && ri.ema_decay < 1)) return dd_error("EMA decay must be in [0, 1)");
    if (o->resume) {
        dd_run_info saved;
        DD_TRY(dd_run_load(o->resume, be, 1, &r, &saved));
        /* the model and its maths come from the checkpoint; data order and noise from its seed */
        ri.model = saved.model;
        ri.schedule = saved.schedule;
        ri.beta_start = saved.beta_start;
        ri.beta_end = saved.beta_end;
        ri.objective = saved.objective;
        ri.epoch = saved.epoch;
        ri.step = saved.step;
        ri.seed = saved.seed;
        ri.batch = saved.batch;
        ri.val_fraction = saved.val_fraction;
        if (ri.epoch >= o->epochs) {
            dd_runner_free(&r);
            return dd_error("%s has already trained %d epochs; ask for more than that with --epochs", o->resume, ri.epoch);
        }
    }
    if (check_data(&ri.model, data)) {
        dd_runner_free(&r);
        return -1;
    }
    if (!o->resume && dd_runner_init(&r, &ri.model, be, ri.seed)) return -1;
    /* what can fail for the request's size before the run folder is made: the split leaving
     * less than a batch, then the training graph and its memory */
    int64_t *train_idx = NULL, *val_idx = NULL, n_train = 0, n_val = 0;
    int rc = dd_split_indices(data->n, ri.val_fraction, ri.seed, &train_idx, &n_train, &val_idx, &n_val);
    if (!rc && n_train < ri.batch)
        rc = dd_error("%lld training examples are fewer than one batch of %d (lower --batch or raise --limit)",
                      (long long)n_train, ri.batch);
    dd_runner_graph *train_graph;
    if (!rc) rc = dd_runner_train_graph(&r, ri.batch, &train_graph);
    if (!rc) rc = make_dirs(o->out_dir);
    if (rc) {
        free(train_idx);
        free(val_idx);
        dd_runner_free(&r);
        return -1;
    }

    dd_schedule s;
    memset(&s, 0, sizeof s);
    dd_train_batch tb;
    memset(&tb, 0, sizeof tb);
    train_bufs b;
    memset(&b, 0, sizeof b);
    FILE *hist = NULL;
    char path[1100];
    const int B = ri.batch;
    const size_t per = (size_t)dd_dataset_example_size(data);
    const int cond = dd_model_is_conditional(&ri.model);

    snprintf(path, sizeof path, "%s/config.json", o->out_dir);
    rc = write_config_json(path, o, data, be->name);
    if (!rc) rc = dd_schedule_init(&s, ri.schedule, ri.model.timesteps, ri.beta_start, ri.beta_end);
    if (!rc) rc = dd_train_batch_init(&tb, be, &s, ri.objective, B, per);
    if (!rc) rc = be->alloc((void **)&b.x0, (size_t)B * per * sizeof(float));
    if (!rc) rc = be->alloc((void **)&b.y, (size_t)B * sizeof(int32_t));
    /* the step counter the whole step reads: the trainer's step (also Adam's, by construction) */
    if (!rc) rc = dd_params_set_step(r.params, ri.step);
    if (!rc) {
        for (int i = 0; !rc && i < 2; i++)
            rc = be->host_alloc((void **)&b.x_host[i], (size_t)B * per * sizeof(float)) ||
                 be->host_alloc((void **)&b.y_host[i], (size_t)B * sizeof(int32_t));
        b.order = malloc((size_t)n_train * sizeof(int64_t));
        if (!rc && !b.order) rc = dd_error("out of host memory");
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/history.csv", o->out_dir);
        struct stat st;
        int fresh = stat(path, &st) != 0 || !o->resume;
        hist = fopen(path, fresh ? "w" : "a");
        if (!hist) rc = dd_error("cannot write %s: %s", path, strerror(errno));
        else if (fresh) fprintf(hist, "kind,epoch,step,loss\n");
    }
    const int64_t batches = n_train / B; /* the last partial batch is dropped, as Flux's DataLoader(partial=false) */
    char last_ckpt[1100] = "";
    dd_replay step_rp;
    memset(&step_rp, 0, sizeof step_rp);
    if (o->resume) snprintf(last_ckpt, sizeof last_ckpt, "%s", o->resume);
    for (int epoch = ri.epoch; !rc && epoch < o->epochs; epoch++) {
        /* this epoch's order: a Philox shuffle of the training indices from (seed, epoch) */
        dd_epoch_order(b.order, n_train, ri.seed, (uint64_t)epoch);
        for (int64_t i = 0; i < n_train; i++) b.order[i] = train_idx[b.order[i]];
        dd_progress pb;
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", epoch + 1, o->epochs);
        dd_progress_start(&pb, label, batches, "img/s", o->progress);
        double loss_sum = 0;
        /* the step is launched (asynchronous on a GPU); the next batch is gathered on the host
         * while the device works and its copy queued behind the step; then the loss is read,
         * which waits for both, and the next step is launched at once */
        rc = batches > 0 ? upload(be, &b, data, b.order, B, per, cond) : 0;
        for (int64_t k = 0; !rc && k < batches; k++) {
            float loss = 0;
            rc = dd_train_step(&step_rp, &r, &tb, b.x0, cond ? b.y : NULL, &ri);
            if (!rc && k + 1 < batches) rc = upload(be, &b, data, b.order + (k + 1) * B, B, per, cond);
            if (!rc) rc = be->to_host(&loss, dd_runner_loss(&r), sizeof loss);
            if (!rc && !isfinite(loss)) /* the step's guard kept every update out */
                rc = dd_error("the loss became %g at epoch %d, step %lld: training stopped; %s%s", (double)loss,
                              epoch + 1, (long long)ri.step + 1,
                              last_ckpt[0] ? "the last good checkpoint is " : "no checkpoint was written", last_ckpt);
            if (rc) break;
            ri.step++;
            loss_sum += loss;
            fprintf(hist, "batch,%d,%lld,%.6g\n", epoch + 1, (long long)ri.step, (double)loss);
            if (ri.step % 100 == 0) fflush(hist); /* someone may be watching the file */
            char note[64];
            snprintf(note, sizeof note, "loss %.4f", (double)loss);
            dd_progress_update(&pb, k + 1, (double)(k + 1) * B, note);
        }
        if (rc) break;
        float val = NAN;
        if (n_val > 0) rc = validate(&r, &ri, &tb, &b, data, val_idx, n_val, &val);
        if (rc) break;
        ri.epoch = epoch + 1;
        fprintf(hist, "val,%d,%lld,%.6g\n", epoch + 1, (long long)ri.step, (double)val);
        fflush(hist);
        char note[96];
        snprintf(note, sizeof note, "loss %.4f  val %.4f", batches ? loss_sum / (double)batches : 0.0, (double)val);
        dd_progress_finish(&pb, note);
        if (o->checkpoint_every_epoch) {
            snprintf(path, sizeof path, "%s/epoch-%03d.safetensors", o->out_dir, epoch + 1);
            rc = dd_run_save(path, &r, &ri);
            if (!rc) snprintf(last_ckpt, sizeof last_ckpt, "%s", path);
        }
    }
    dd_replay_reset(&step_rp);
    if (hist) fclose(hist);
    if (!rc) {
        snprintf(path, sizeof path, "%s/model.safetensors", o->out_dir);
        rc = dd_run_save(path, &r, &ri);
    }
    if (!rc) rc = plot_history(o->out_dir);
    if (!rc) rc = final_samples(&r, &ri, data, o->out_dir, o->sample_n);
    bufs_free(&b, be);
    dd_train_batch_free(&tb);
    dd_schedule_free(&s);
    free(train_idx);
    free(val_idx);
    dd_runner_free(&r);
    return rc;
}
