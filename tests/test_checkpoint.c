/* Checkpoints (include/diffusion/checkpoint.h) on the CPU backend: round trips of values, EMA and
 * Adam state, the metadata, PyTorch-compatible names, and every refusal (missing tensor, wrong
 * shape, wrong dtype, unknown tensor, absent state, truncated or foreign file, unwritable
 * folder), with the parameters unchanged after a refused load and a good file unchanged after
 * a failed save. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffusion/backend.h"
#include "diffusion/checkpoint.h"
#include "diffusion/error.h"
#include "diffusion/graph.h"
#include "testutil.h"

static char dir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][400];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* A small model with every init kind, odd sizes (padding between views) and a fixed table. */
static dd_params *make_params(uint64_t seed, int extra, int drop_bias) {
    dd_params *p = dd_params_new(&dd_cpu_backend);
    int64_t cw[4] = {4, 3, 3, 3}, cb[1] = {4}, nw[1] = {5}, tb[2] = {5, 2}, ew[2] = {3, 7},
            xw[2] = {2, 2};
    int ok = dd_params_add(p, "down.0.conv.weight", 4, cw, DD_INIT_GLOROT) >= 0;
    if (!drop_bias) ok &= dd_params_add(p, "down.0.conv.bias", 1, cb, DD_INIT_ZERO) >= 0;
    ok &= dd_params_add(p, "norm.weight", 1, nw, DD_INIT_ONE) >= 0;
    int t = dd_params_add(p, "table", 2, tb, DD_INIT_FIXED);
    ok &= t >= 0;
    ok &= dd_params_add(p, "emb.weight", 2, ew, DD_INIT_NORMAL) >= 0;
    if (extra) ok &= dd_params_add(p, "extra.weight", 2, xw, DD_INIT_GLOROT) >= 0;
    float table[10];
    for (int i = 0; i < 10; i++) table[i] = (float)i * 0.1f;
    if (t >= 0) ok &= dd_params_set_fixed(p, t, table) == 0;
    CHECKF(ok, "building parameters: %s", dd_error_message());
    CHECK_OK(dd_params_alloc(p, seed));
    return p;
}

/* A few optimizer steps so that values, EMA, m and v all differ. */
static void train_a_little(dd_params *p) {
    for (int s = 0; s < 3; s++) {
        CHECK_OK(dd_params_zero_grad(p));
        for (size_t i = 0; i < p->total; i++) p->grad[i] = (float)((i * 7 + (size_t)s) % 11) - 5.0f;
        CHECK_OK(dd_params_adam(p, 1e-2f, 0.9, 0.999, 1e-8, NULL));
        CHECK_OK(dd_params_ema(p, 0.5f, 0, NULL));
        CHECK_OK(dd_params_step_done(p, NULL));
    }
}

/* Whether kind buffers of a and b agree on every parameter (bitwise). */
static int same_buffer(const dd_params *a, const float *ba, const dd_params *b, const float *bb) {
    for (int i = 0; i < a->count; i++) {
        int j = dd_params_find(b, a->info[i].name);
        if (j < 0 || memcmp(ba + a->info[i].offset, bb + b->info[j].offset,
                            a->info[i].numel * sizeof(float)))
            return 0;
    }
    return 1;
}

static int all_zero(const dd_params *p, const float *buf) {
    for (size_t i = 0; i < p->total; i++)
        if (buf[i] != 0) return 0;
    return 1;
}

static void expect_load_fails(const char *what, const char *path, dd_params *p, int flags,
                              const char *needle) {
    /* p must not change on a refused load */
    float *before = malloc(p->total * sizeof(float) * 2);
    memcpy(before, p->data, p->total * sizeof(float));
    memcpy(before + p->total, p->ema, p->total * sizeof(float));
    int64_t step = p->adam_step, step_dev = *p->step_dev; /* the CPU backend: host memory */
    dd_error_clear();
    int rc = dd_checkpoint_load(path, p, flags);
    CHECKF(rc != 0, "%s: loaded", what);
    CHECKF(rc == 0 || strstr(dd_error_message(), needle), "%s: message \"%s\" lacks \"%s\"", what,
           dd_error_message(), needle);
    CHECKF(!memcmp(before, p->data, p->total * sizeof(float)) &&
               !memcmp(before + p->total, p->ema, p->total * sizeof(float)) && step == p->adam_step &&
               step_dev == *p->step_dev,
           "%s: the parameters changed", what);
    free(before);
}

static int count_tmp_files(void) { return tu_count_temporaries(dir); }

static void test_round_trip(void) {
    dd_params *a = make_params(1, 0, 0);
    train_a_little(a);
    CHECK_OK(dd_params_read_step(a));
    CHECK(a->adam_step == 3);
    dd_st_pair meta[2] = {{"config", "{\"kind\":\"unet\"}"}, {"epoch", "3"}};
    const char *path = tmp_path("train.safetensors");
    CHECK_OK(dd_checkpoint_save(path, a, meta, 2, DD_CKPT_TRAIN));

    /* full state into a model initialised differently */
    dd_params *b = make_params(2, 0, 0);
    CHECK(!same_buffer(a, a->data, b, b->data));
    CHECK_OK(dd_checkpoint_load(path, b, DD_CKPT_TRAIN));
    CHECK(same_buffer(a, a->data, b, b->data));
    CHECK(same_buffer(a, a->ema, b, b->ema));
    CHECK(same_buffer(a, a->adam_m, b, b->adam_m));
    CHECK(same_buffer(a, a->adam_v, b, b->adam_v));
    CHECK(!same_buffer(a, a->data, b, b->ema)); /* the EMA really is a different tensor */
    CHECK(b->adam_step == 3 && *b->step_dev == 3);
    /* and training continues identically */
    train_a_little(a);
    train_a_little(b);
    CHECK(same_buffer(a, a->data, b, b->data) && same_buffer(a, a->ema, b, b->ema));
    dd_params_free(b);

    /* values only: EMA = the values, Adam restarts */
    dd_params *c = make_params(3, 0, 0);
    train_a_little(c);
    CHECK_OK(dd_checkpoint_load(path, c, DD_CKPT_VALUES));
    dd_params *a0 = make_params(1, 0, 0); /* a's values at save time */
    train_a_little(a0);
    CHECK(same_buffer(a0, a0->data, c, c->data));
    CHECK(same_buffer(c, c->data, c, c->ema));
    CHECK(all_zero(c, c->adam_m) && all_zero(c, c->adam_v) && c->adam_step == 0);
    /* EMA only */
    CHECK_OK(dd_checkpoint_load(path, c, DD_CKPT_EMA));
    CHECK(same_buffer(a0, a0->ema, c, c->ema) && c->adam_step == 0);
    dd_params_free(c);

    /* the header: metadata in order, tensor names, state */
    dd_safetensors h;
    CHECK_OK(dd_checkpoint_read_meta(path, &h));
    CHECK(h.nmeta == 4);
    if (h.nmeta == 4) {
        CHECK(!strcmp(h.meta[0].key, "format") && !strcmp(h.meta[0].value, DD_CKPT_FORMAT));
        CHECK(!strcmp(h.meta[1].key, "adam_step") && !strcmp(h.meta[1].value, "3"));
        CHECK(!strcmp(h.meta[2].key, "config") && !strcmp(h.meta[2].value, meta[0].value));
        CHECK(!strcmp(h.meta[3].key, "epoch") && !strcmp(h.meta[3].value, "3"));
    }
    CHECK(h.ntensors == 4 * a0->count);
    CHECK(dd_checkpoint_state(&h) == DD_CKPT_TRAIN);
    /* what PyTorch's strict load sees: the names without '/' are exactly the parameters */
    int model_tensors = 0;
    for (int i = 0; i < h.ntensors; i++) {
        const dd_st_tensor *t = &h.tensors[i];
        CHECK(t->dtype == DD_ST_F32 && t->data == NULL);
        if (strchr(t->name, '/')) {
            CHECK(!strncmp(t->name, "ema/", 4) || !strncmp(t->name, "adam_m/", 7) ||
                  !strncmp(t->name, "adam_v/", 7));
            continue;
        }
        model_tensors++;
        int idx = dd_params_find(a0, t->name);
        CHECKF(idx >= 0, "unknown model tensor %s", t->name);
        if (idx >= 0) {
            CHECK(t->ndim == a0->info[idx].ndim);
            for (int d = 0; d < t->ndim && d < a0->info[idx].ndim; d++)
                CHECK(t->shape[d] == (uint64_t)a0->info[idx].shape[d]);
        }
    }
    CHECK(model_tensors == a0->count);
    dd_st_free(&h);

    /* values-only save: no state, and asking for it is an error */
    const char *vpath = tmp_path("values.safetensors");
    CHECK_OK(dd_checkpoint_save(vpath, a, NULL, 0, DD_CKPT_VALUES));
    CHECK_OK(dd_checkpoint_read_meta(vpath, &h));
    CHECK(h.ntensors == a->count && dd_checkpoint_state(&h) == 0);
    CHECK(dd_st_meta(&h, "adam_step") && !strcmp(dd_st_meta(&h, "adam_step"), "6"));
    dd_st_free(&h);
    dd_params *d = make_params(4, 0, 0);
    expect_load_fails("EMA absent", vpath, d, DD_CKPT_EMA, "no EMA state");
    expect_load_fails("Adam absent", vpath, d, DD_CKPT_ADAM, "no Adam state");
    CHECK(strstr(dd_error_message(), "adam_m/") != NULL);
    CHECK_OK(dd_checkpoint_load(vpath, d, DD_CKPT_VALUES));
    CHECK(same_buffer(a, a->data, d, d->data));
    dd_params_free(d);

    /* EMA-only save */
    const char *epath = tmp_path("ema.safetensors");
    CHECK_OK(dd_checkpoint_save(epath, a, NULL, 0, DD_CKPT_EMA));
    CHECK_OK(dd_checkpoint_read_meta(epath, &h));
    CHECK(dd_checkpoint_state(&h) == DD_CKPT_EMA && h.ntensors == 2 * a->count);
    dd_st_free(&h);

    dd_params_free(a0);
    dd_params_free(a);
}

/* Write a safetensors file holding a's tensors, with one of them replaced (or dropped). */
static void write_variant(const char *path, const dd_params *a, const char *name, int drop,
                          dd_st_dtype dt, int ndim, const uint64_t *shape, const char *extra) {
    dd_st_entry e[16];
    uint64_t shapes[16][DD_MAX_DIMS];
    static double zeros[256];
    int n = 0;
    for (int i = 0; i < a->count; i++) {
        const dd_param_info *q = &a->info[i];
        if (!strcmp(q->name, name)) {
            if (drop) continue;
            e[n++] = (dd_st_entry){q->name, dt, ndim, shape, zeros};
            continue;
        }
        for (int k = 0; k < q->ndim; k++) shapes[i][k] = (uint64_t)q->shape[k];
        e[n++] = (dd_st_entry){q->name, DD_ST_F32, q->ndim, shapes[i], a->data + q->offset};
    }
    static const uint64_t one = 1;
    if (extra) e[n++] = (dd_st_entry){extra, DD_ST_F32, 1, &one, zeros};
    CHECK_OK(dd_st_save(path, e, n, NULL, 0));
}

static void test_refusals(void) {
    dd_params *a = make_params(1, 0, 0);
    dd_params *b = make_params(2, 0, 0);
    const char *path = tmp_path("bad.safetensors");

    write_variant(path, a, "down.0.conv.bias", 1, DD_ST_F32, 0, NULL, NULL);
    expect_load_fails("missing tensor", path, b, 0, "missing tensor \"down.0.conv.bias\"");
    uint64_t s5[1] = {5};
    write_variant(path, a, "down.0.conv.bias", 0, DD_ST_F32, 1, s5, NULL);
    expect_load_fails("wrong shape", path, b, 0,
                      "tensor \"down.0.conv.bias\" has shape [5], the model expects [4]");
    uint64_t s41[2] = {4, 1};
    write_variant(path, a, "down.0.conv.bias", 0, DD_ST_F32, 2, s41, NULL);
    expect_load_fails("wrong rank", path, b, 0, "has shape [4, 1], the model expects [4]");
    uint64_t s4[1] = {4};
    write_variant(path, a, "down.0.conv.bias", 0, DD_ST_F64, 1, s4, NULL);
    expect_load_fails("wrong dtype", path, b, 0, "\"down.0.conv.bias\" is F64, expected F32");
    write_variant(path, a, "", 0, DD_ST_F32, 0, NULL, "up.9.weight");
    expect_load_fails("unknown tensor", path, b, 0, "unexpected tensor \"up.9.weight\"");
    write_variant(path, a, "", 0, DD_ST_F32, 0, NULL, "ema/nothing");
    expect_load_fails("unknown state tensor", path, b, 0, "unexpected tensor \"ema/nothing\"");
    write_variant(path, a, "", 0, DD_ST_F32, 0, NULL, "rng/state");
    CHECK_OK(dd_checkpoint_load(path, b, 0)); /* other prefixes are ignored */
    /* a bad EMA tensor is refused even when only values are asked for */
    write_variant(path, a, "", 0, DD_ST_F32, 0, NULL, "ema/norm.weight");
    expect_load_fails("state of the wrong shape", path, b, 0,
                      "tensor \"ema/norm.weight\" has shape [1], the model expects [5]");

    /* checkpoints of a different model */
    const char *good = tmp_path("good.safetensors");
    CHECK_OK(dd_checkpoint_save(good, a, NULL, 0, DD_CKPT_TRAIN));
    dd_params *bigger = make_params(2, 1, 0), *smaller = make_params(2, 0, 1);
    expect_load_fails("model with an extra parameter", good, bigger, DD_CKPT_TRAIN,
                      "missing tensor \"extra.weight\"");
    expect_load_fails("model lacking a parameter", good, smaller, DD_CKPT_TRAIN,
                      "unexpected tensor");
    CHECK(strstr(dd_error_message(), "down.0.conv.bias") != NULL);
    dd_params_free(bigger);
    dd_params_free(smaller);

    /* truncated: every cut of the file is refused (the last 4 bytes, half, the header) */
    size_t len;
    unsigned char *bytes = tu_read_file(good, &len);
    CHECK(bytes != NULL);
    size_t cuts[] = {len - 4, len / 2, 100, 12, 5, 0};
    const char *why[] = {"truncated", "truncated", "runs past the end", "runs past the end",
                         "shorter than the 8-byte", "shorter than the 8-byte"};
    for (size_t i = 0; bytes && i < sizeof cuts / sizeof *cuts; i++) {
        FILE *f = fopen(path, "wb");
        if (cuts[i]) fwrite(bytes, 1, cuts[i], f);
        fclose(f);
        char what[64];
        snprintf(what, sizeof what, "cut at %zu of %zu", cuts[i], len);
        expect_load_fails(what, path, b, DD_CKPT_TRAIN, why[i]);
        CHECK(strstr(dd_error_message(), "bad.safetensors") != NULL); /* names the file */
    }
    /* a single flipped byte in the header's lengths */
    if (bytes) {
        unsigned char *c = malloc(len);
        memcpy(c, bytes, len);
        c[0] ^= 0x10; /* N changes */
        FILE *f = fopen(path, "wb");
        fwrite(c, 1, len, f);
        fclose(f);
        expect_load_fails("corrupted header length", path, b, DD_CKPT_TRAIN, "header");
        free(c);
    }
    free(bytes);

    /* not safetensors at all */
    FILE *f = fopen(path, "wb");
    fputs("P6\n28 28\n255\n this is an image, not a checkpoint ..........................", f);
    fclose(f);
    expect_load_fails("text file", path, b, 0, "not a safetensors file");
    dd_safetensors h;
    CHECK(dd_checkpoint_read_meta(path, &h) != 0);
    expect_load_fails("missing file", tmp_path("nope.safetensors"), b, 0, "cannot open");
    expect_load_fails("a folder", dir, b, 0, "not a regular file");

    /* a safetensors file of another format version */
    dd_st_pair fmt = {"format", "diffusion-checkpoint-999"};
    write_variant(path, a, "", 0, DD_ST_F32, 0, NULL, NULL);
    {
        dd_safetensors st;
        CHECK_OK(dd_st_load(path, &st));
        dd_st_entry e[16];
        for (int i = 0; i < st.ntensors; i++)
            e[i] = (dd_st_entry){st.tensors[i].name, st.tensors[i].dtype, st.tensors[i].ndim,
                                 st.tensors[i].shape, st.tensors[i].data};
        CHECK_OK(dd_st_save(tmp_path("v999.safetensors"), e, st.ntensors, &fmt, 1));
        dd_st_free(&st);
    }
    expect_load_fails("other format", tmp_path("v999.safetensors"), b, 0,
                      "format is \"diffusion-checkpoint-999\"");
    CHECK(dd_checkpoint_read_meta(tmp_path("v999.safetensors"), &h) != 0);
    CHECK(strstr(dd_error_message(), "not a diffusion checkpoint") != NULL);

    /* argument checks */
    dd_st_pair reserved = {"adam_step", "5"};
    CHECK(dd_checkpoint_save(path, a, &reserved, 1, 0) != 0);
    CHECK(strstr(dd_error_message(), "reserved") != NULL);
    CHECK(dd_checkpoint_save(path, a, NULL, 0, 8) != 0);
    dd_params *un = dd_params_new(&dd_cpu_backend);
    CHECK(dd_checkpoint_load(good, un, 0) != 0);
    CHECK(strstr(dd_error_message(), "not allocated") != NULL);
    dd_params_free(un);

    dd_params_free(a);
    dd_params_free(b);
}

static int fail_to_host(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return dd_error("simulated device failure");
}

static void test_failed_writes(void) {
    dd_params *a = make_params(1, 0, 0);
    const char *good = tmp_path("keep.safetensors");
    CHECK_OK(dd_checkpoint_save(good, a, NULL, 0, DD_CKPT_TRAIN));
    size_t len0;
    unsigned char *before = tu_read_file(good, &len0);
    CHECK(before != NULL);
    train_a_little(a); /* what a new save would write differs */

    /* 1. the write itself fails midway: a file size limit below the checkpoint's size */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_IGN); /* get EFBIG from write() instead of the signal */
    lim = old;
    lim.rlim_cur = 1024;
    CHECK(len0 > 2048);
    if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
        dd_error_clear();
        CHECK(dd_checkpoint_save(good, a, NULL, 0, DD_CKPT_TRAIN) != 0);
        CHECKF(strstr(dd_error_message(), "failed") != NULL, "message: %s", dd_error_message());
        setrlimit(RLIMIT_FSIZE, &old);
    } else {
        fprintf(stderr, "note: setrlimit(RLIMIT_FSIZE) refused, mid-write failure not tested\n");
    }
    CHECK(count_tmp_files() == 0);

    /* 2. the device copy fails before anything is written */
    dd_backend broken = dd_cpu_backend;
    broken.to_host = fail_to_host;
    const dd_backend *be = a->be;
    a->be = &broken;
    CHECK(dd_checkpoint_save(good, a, NULL, 0, DD_CKPT_TRAIN) != 0);
    CHECK(strstr(dd_error_message(), "simulated device failure") != NULL);
    a->be = be;

    /* 3. invalid metadata (not UTF-8) */
    dd_st_pair bad = {"note", "\xff\xfe"};
    CHECK(dd_checkpoint_save(good, a, &bad, 1, DD_CKPT_TRAIN) != 0);

    size_t len1;
    unsigned char *after = tu_read_file(good, &len1);
    CHECK(after && before && len1 == len0 && !memcmp(after, before, len0));
    free(after);
    CHECK(count_tmp_files() == 0);
    /* the good checkpoint still loads */
    dd_params *b = make_params(2, 0, 0);
    CHECK_OK(dd_checkpoint_load(good, b, DD_CKPT_TRAIN));
    dd_params_free(b);

    /* an unwritable folder: a clear message, nothing created */
    dd_error_clear();
    CHECK(dd_checkpoint_save(tmp_path("missing/dir/x.safetensors"), a, NULL, 0, 0) != 0);
    CHECKF(strstr(dd_error_message(), "cannot create a file in its folder") != NULL, "message: %s",
           dd_error_message());
    if (geteuid() != 0) { /* root writes anywhere */
        chmod(dir, 0555);
        CHECK(dd_checkpoint_save(good, a, NULL, 0, 0) != 0);
        CHECK(strstr(dd_error_message(), "Permission denied") != NULL);
        chmod(dir, 0755);
        size_t len2;
        unsigned char *still = tu_read_file(good, &len2);
        CHECK(still && len2 == len0 && !memcmp(still, before, len0));
        free(still);
    }
    free(before);
    dd_params_free(a);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/checkpoint_test_%ld", DD_BINARY_DIR, (long)getpid());
    if (mkdir(dir, 0755) != 0) {
        fprintf(stderr, "cannot create %s\n", dir);
        return 1;
    }
    test_round_trip();
    test_refusals();
    test_failed_writes();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return tu_finish();
}
