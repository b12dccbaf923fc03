/* Checkpoints: dd_params <-> safetensors (include/diffusion/checkpoint.h). Each kind of buffer
 * (values, EMA, Adam m and v) moves between the backend and the host in one transfer of the
 * whole allocation, so a GPU model costs four copies, not four per parameter. */
#include "diffusion/checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"

/* The state kinds beside the values, as tensor-name prefixes. */
enum { K_VALUES, K_EMA, K_ADAM_M, K_ADAM_V, K_COUNT };
static const char *const kind_prefix[K_COUNT] = {
    [K_VALUES] = "", [K_EMA] = "ema/", [K_ADAM_M] = "adam_m/", [K_ADAM_V] = "adam_v/"};
static const int kind_flag[K_COUNT] = {
    [K_VALUES] = 0, [K_EMA] = DD_CKPT_EMA, [K_ADAM_M] = DD_CKPT_ADAM, [K_ADAM_V] = DD_CKPT_ADAM};

static float *kind_buffer(const dd_params *p, int k) {
    switch (k) {
    case K_VALUES: return p->data;
    case K_EMA: return p->ema;
    case K_ADAM_M: return p->adam_m;
    case K_ADAM_V: return p->adam_v;
    }
    return NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const uint64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static int check_flags(int flags) {
    if (flags & ~DD_CKPT_TRAIN) return dd_error("invalid checkpoint flags %d", flags);
    return 0;
}

/* ---------------------------------------------------------------- saving */

int dd_checkpoint_save(const char *path, const dd_params *p, const dd_st_pair *meta, int nmeta,
                       int flags) {
    DD_TRY(check_flags(flags));
    if (!p->allocated)
        return dd_error("saving %s: the parameters are not allocated", path);
    if (nmeta < 0 || (nmeta > 0 && !meta)) return dd_error("saving %s: invalid metadata", path);
    for (int i = 0; i < nmeta; i++)
        if (meta[i].key && (!strcmp(meta[i].key, "format") || !strcmp(meta[i].key, "adam_step")))
            return dd_error("saving %s: metadata key \"%s\" is reserved for the checkpoint", path,
                            meta[i].key);
    for (int i = 0; i < p->count; i++)
        if (strchr(p->info[i].name, '/'))
            return dd_error("saving %s: parameter name \"%s\" contains '/', which checkpoints "
                            "reserve for training state",
                            path, p->info[i].name);

    int kinds[K_COUNT], nk = 0;
    for (int k = 0; k < K_COUNT; k++)
        if (k == K_VALUES || (flags & kind_flag[k])) kinds[nk++] = k;

    size_t total = p->total ? p->total : 1;
    int n = p->count * nk, rc = -1;
    float *host = malloc((size_t)nk * total * sizeof(float)); /* nk copies of (total) floats */
    dd_st_entry *e = calloc((size_t)(n ? n : 1), sizeof *e);
    uint64_t *shapes = calloc((size_t)(p->count ? p->count : 1) * DD_MAX_DIMS, sizeof *shapes);
    char *names = calloc((size_t)(n ? n : 1), DD_NAME_MAX + 16);
    dd_st_pair *pairs = calloc((size_t)nmeta + 2, sizeof *pairs);
    if (!host || !e || !shapes || !names || !pairs) {
        dd_error("saving %s: out of host memory", path);
        goto done;
    }
    for (int j = 0; j < nk; j++)
        if (p->be->to_host(host + (size_t)j * total, kind_buffer(p, kinds[j]),
                           p->total * sizeof(float))) {
            dd_error_prefix("saving %s", path);
            goto done;
        }
    for (int i = 0; i < p->count; i++) {
        const dd_param_info *q = &p->info[i];
        for (int d = 0; d < q->ndim; d++) shapes[i * DD_MAX_DIMS + d] = (uint64_t)q->shape[d];
        for (int j = 0; j < nk; j++) {
            int t = j * p->count + i;
            char *name = names + (size_t)t * (DD_NAME_MAX + 16);
            snprintf(name, DD_NAME_MAX + 16, "%s%s", kind_prefix[kinds[j]], q->name);
            e[t] = (dd_st_entry){name, DD_ST_F32, q->ndim, shapes + i * DD_MAX_DIMS,
                                 host + (size_t)j * total + q->offset};
        }
    }
    int64_t adam_step = 0; /* the device's count is the true one (dd_params_read_step) */
    if (p->be->to_host(&adam_step, p->step_dev, sizeof adam_step)) {
        dd_error_prefix("saving %s", path);
        goto done;
    }
    char step[32];
    snprintf(step, sizeof step, "%" PRId64, adam_step);
    pairs[0] = (dd_st_pair){"format", DD_CKPT_FORMAT};
    pairs[1] = (dd_st_pair){"adam_step", step};
    for (int i = 0; i < nmeta; i++) pairs[2 + i] = meta[i];
    rc = dd_st_save(path, e, n, pairs, nmeta + 2);
done:
    free(pairs);
    free(names);
    free(shapes);
    free(e);
    free(host);
    return rc;
}

/* ---------------------------------------------------------------- loading */

/* Check a file's tensor against the parameter it holds state for. */
static int check_tensor(const dd_st_tensor *t, const dd_param_info *q) {
    if (t->dtype != DD_ST_F32)
        return dd_error("tensor \"%s\" is %s, expected F32", t->name, dd_st_dtype_name(t->dtype));
    int same = t->ndim == q->ndim;
    for (int d = 0; same && d < q->ndim; d++) same = t->shape[d] == (uint64_t)q->shape[d];
    if (!same) {
        uint64_t qs[DD_MAX_DIMS];
        for (int d = 0; d < q->ndim; d++) qs[d] = (uint64_t)q->shape[d];
        char a[160], b[160];
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, q->ndim, qs);
        return dd_error("tensor \"%s\" has shape %s, the model expects %s", t->name, a, b);
    }
    return 0;
}

/* The state kind of a tensor name and the parameter name after its prefix; -1 for a prefix
 * this format does not know (ignored). */
static int name_kind(const char *name, const char **base) {
    if (!strchr(name, '/')) {
        *base = name;
        return K_VALUES;
    }
    for (int k = K_EMA; k < K_COUNT; k++) {
        size_t n = strlen(kind_prefix[k]);
        if (!strncmp(name, kind_prefix[k], n)) {
            *base = name + n;
            return k;
        }
    }
    return -1;
}

static int parse_step(const char *s, int64_t *step) {
    char *end;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : -1;
    if (!s || !*s || *end || errno || v < 0)
        return dd_error("metadata \"adam_step\" is %s%s%s, not a non-negative integer",
                        s ? "\"" : "", s ? s : "missing", s ? "\"" : "");
    *step = v;
    return 0;
}

static int check_format(const dd_safetensors *st) {
    const char *f = dd_st_meta(st, "format");
    if (f && strcmp(f, DD_CKPT_FORMAT))
        return dd_error("not a diffusion checkpoint: format is \"%s\", expected \"%s\"", f,
                        DD_CKPT_FORMAT);
    return 0;
}

/* Every check, before p changes: found[k][i] receives the tensor of kind k for parameter i. */
static int validate(const dd_safetensors *st, const dd_params *p, int flags,
                    const dd_st_tensor **found[K_COUNT], int64_t *step) {
    DD_TRY(check_format(st));
    for (int i = 0; i < st->ntensors; i++) {
        const dd_st_tensor *t = &st->tensors[i];
        const char *base;
        int k = name_kind(t->name, &base);
        if (k < 0) continue;
        int idx = dd_params_find(p, base);
        if (idx < 0)
            return dd_error("unexpected tensor \"%s\": the model has no parameter \"%s\" (a "
                            "checkpoint of another model or config?)",
                            t->name, base);
        DD_TRY(check_tensor(t, &p->info[idx])); /* state that is present must be sound too */
        found[k][idx] = t;
    }
    for (int k = 0; k < K_COUNT; k++) {
        if (k != K_VALUES && !(flags & kind_flag[k])) continue;
        for (int i = 0; i < p->count; i++)
            if (!found[k][i]) {
                if (k == K_VALUES)
                    return dd_error("missing tensor \"%s\" (the model's parameter)",
                                    p->info[i].name);
                return dd_error("missing tensor \"%s%s\": the checkpoint has no %s state",
                                kind_prefix[k], p->info[i].name, k == K_EMA ? "EMA" : "Adam");
            }
    }
    if (flags & DD_CKPT_ADAM) DD_TRY(parse_step(dd_st_meta(st, "adam_step"), step));
    return 0;
}

int dd_checkpoint_load(const char *path, dd_params *p, int flags) {
    DD_TRY(check_flags(flags));
    if (!p->allocated) return dd_error("loading %s: the parameters are not allocated", path);
    dd_safetensors st;
    DD_TRY(dd_st_load(path, &st));

    int rc = -1;
    size_t total = p->total ? p->total : 1;
    const dd_st_tensor **found[K_COUNT] = {0};
    float *host = malloc(total * sizeof(float));
    for (int k = 0; k < K_COUNT; k++)
        found[k] = calloc((size_t)(p->count ? p->count : 1), sizeof *found[k]);
    int64_t step = 0;
    if (!host || !found[0] || !found[1] || !found[2] || !found[3]) {
        dd_error("out of host memory");
        goto fail;
    }
    if (validate(&st, p, flags, found, &step)) goto fail;

    /* apply: read the backend's buffer (padding stays as it was), overwrite, write it back */
    for (int k = 0; k < K_COUNT; k++) {
        float *dev = kind_buffer(p, k);
        size_t bytes = p->total * sizeof(float);
        if (k != K_VALUES && !(flags & kind_flag[k])) {
            /* not restored: the EMA starts from the loaded values, Adam from zero */
            if (k == K_EMA ? p->be->copy(dev, p->data, bytes) : p->be->zero(dev, bytes))
                goto fail;
            continue;
        }
        if (p->be->to_host(host, dev, bytes)) goto fail;
        for (int i = 0; i < p->count; i++)
            memcpy(host + p->info[i].offset, found[k][i]->data, p->info[i].numel * sizeof(float));
        if (p->be->to_device(dev, host, bytes)) goto fail;
    }
    if (dd_params_set_step(p, flags & DD_CKPT_ADAM ? step : 0)) goto fail;
    rc = 0;
fail:
    if (rc) dd_error_prefix("loading %s", path);
    for (int k = 0; k < K_COUNT; k++) free(found[k]);
    free(host);
    dd_st_free(&st);
    return rc;
}

int dd_checkpoint_read_meta(const char *path, dd_safetensors *hdr) {
    DD_TRY(dd_st_load_header(path, hdr));
    if (check_format(hdr)) {
        dd_st_free(hdr);
        return dd_error_prefix("%s", path);
    }
    return 0;
}

int dd_checkpoint_state(const dd_safetensors *hdr) {
    int have[K_COUNT] = {0, 1, 1, 1}, nmodel = 0;
    char name[DD_NAME_MAX + 16];
    for (int i = 0; i < hdr->ntensors; i++) {
        const char *base;
        if (name_kind(hdr->tensors[i].name, &base) != K_VALUES) continue;
        nmodel++;
        for (int k = K_EMA; k < K_COUNT; k++) {
            snprintf(name, sizeof name, "%s%s", kind_prefix[k], base);
            if (!dd_st_find(hdr, name)) have[k] = 0;
        }
    }
    if (nmodel == 0) return 0;
    const char *s = dd_st_meta(hdr, "adam_step");
    char *end = NULL;
    int step_ok = s && *s >= '0' && *s <= '9' && (strtoll(s, &end, 10), *end == 0);
    return (have[K_EMA] ? DD_CKPT_EMA : 0) |
           (have[K_ADAM_M] && have[K_ADAM_V] && step_ok ? DD_CKPT_ADAM : 0);
}
