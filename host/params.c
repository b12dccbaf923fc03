/* dd_params: a model's named parameters and their training state, one allocation per kind. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"
#include "diffusion/graph.h"
#include "diffusion/philox.h"

/* Every view starts on a 16-byte boundary so vector loads stay legal. */
#define DD_ALIGN_FLOATS 4

dd_params *dd_params_new(const dd_backend *be) {
    dd_params *p = calloc(1, sizeof *p);
    if (!p) {
        dd_error("out of host memory");
        return NULL;
    }
    p->be = be;
    return p;
}

void dd_params_free(dd_params *p) {
    if (!p) return;
    if (p->allocated) {
        p->be->free(p->data);
        p->be->free(p->grad);
        p->be->free(p->adam_m);
        p->be->free(p->adam_v);
        p->be->free(p->ema);
        p->be->free(p->step_dev);
    }
    free(p->info);
    free(p->fixed_host);
    free(p);
}

int dd_params_find(const dd_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (!strcmp(p->info[i].name, name)) return i;
    return -1;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* at: the offset to place a new parameter at (a reserved room), or SIZE_MAX for the end */
static int params_add(dd_params *p, const char *name, int ndim, const int64_t *shape,
                      dd_init init, size_t at) {
    if (ndim < 1 || ndim > DD_MAX_DIMS) return dd_error("parameter %s: %d dimensions", name, ndim);
    if (strlen(name) >= DD_NAME_MAX) return dd_error("parameter name too long: %s", name);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) return dd_error("parameter %s: dimension %d is %lld", name, i, (long long)shape[i]);
        numel *= (size_t)shape[i];
    }
    int idx = dd_params_find(p, name);
    if (idx >= 0) {
        const dd_param_info *q = &p->info[idx];
        int same = q->ndim == ndim;
        for (int i = 0; same && i < ndim; i++) same = q->shape[i] == shape[i];
        if (!same) {
            char a[64], b[64];
            shape_str(a, sizeof a, q->ndim, q->shape);
            shape_str(b, sizeof b, ndim, shape);
            return dd_error("parameter %s registered with shape %s, now asked for %s", name, a, b);
        }
        if (at != SIZE_MAX && q->offset != at)
            return dd_error("parameter %s is registered, but not after the one it should follow", name);
        return idx;
    }
    if (p->allocated)
        return dd_error("parameter %s: parameters are already allocated, cannot add more", name);
    if (p->count == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        dd_param_info *ni = realloc(p->info, (size_t)cap * sizeof *ni);
        if (!ni) return dd_error("out of host memory");
        p->info = ni;
        p->cap = cap;
    }
    dd_param_info *q = &p->info[p->count];
    memset(q, 0, sizeof *q);
    snprintf(q->name, sizeof q->name, "%s", name);
    q->ndim = ndim;
    for (int i = 0; i < ndim; i++) q->shape[i] = shape[i];
    q->numel = numel;
    q->offset = at != SIZE_MAX ? at : p->total;
    q->init = init;
    q->trainable = init != DD_INIT_FIXED;
    if (at == SIZE_MAX) p->total += (numel + DD_ALIGN_FLOATS - 1) / DD_ALIGN_FLOATS * DD_ALIGN_FLOATS;
    if (init == DD_INIT_FIXED) {
        /* fixed values live on the host until allocation; grow the host copy to `total` */
        float *fh = realloc(p->fixed_host, p->total * sizeof(float));
        if (!fh) return dd_error("out of host memory");
        memset(fh + q->offset, 0, (p->total - q->offset) * sizeof(float));
        p->fixed_host = fh;
    }
    return p->count++;
}

int dd_params_add(dd_params *p, const char *name, int ndim, const int64_t *shape, dd_init init) {
    return params_add(p, name, ndim, shape, init, SIZE_MAX);
}

int dd_params_reserve(dd_params *p, int idx, size_t floats) {
    if (idx < 0 || idx >= p->count) return 1;
    dd_param_info *q = &p->info[idx];
    if (q->reserved >= floats) return 0; /* made by an earlier graph's builder */
    if (p->allocated || idx != p->count - 1 || q->init == DD_INIT_FIXED ||
        q->numel % DD_ALIGN_FLOATS || floats % DD_ALIGN_FLOATS || q->reserved)
        return 1;
    q->reserved = floats;
    p->total += floats;
    return 0;
}

int dd_params_add_after(dd_params *p, int after, const char *name, int ndim, const int64_t *shape,
                        dd_init init) {
    if (after < 0 || after >= p->count) return dd_error("parameter %s: no parameter %d to follow", name, after);
    const dd_param_info *a = &p->info[after];
    size_t numel = 1;
    for (int i = 0; i < ndim && i < DD_MAX_DIMS; i++) numel *= shape[i] > 0 ? (size_t)shape[i] : 0;
    if (init == DD_INIT_FIXED || numel > a->reserved)
        return dd_error("parameter %s: %zu floats, the room after %s holds %zu", name, numel,
                        a->name, a->reserved);
    const size_t at = a->offset + a->numel;
    for (int i = 0; i < p->count; i++)
        if (p->info[i].offset == at && strcmp(p->info[i].name, name))
            return dd_error("parameter %s: the room after %s is taken by %s", name, a->name,
                            p->info[i].name);
    return params_add(p, name, ndim, shape, init, at);
}

size_t dd_params_count_numel(const dd_params *p) {
    size_t n = 0;
    for (int i = 0; i < p->count; i++) n += p->info[i].numel;
    return n;
}

int dd_params_set_fixed(dd_params *p, int idx, const float *host) {
    if (idx < 0 || idx >= p->count) return dd_error("no parameter %d", idx);
    const dd_param_info *q = &p->info[idx];
    if (q->init != DD_INIT_FIXED) return dd_error("parameter %s is not a fixed table", q->name);
    if (p->allocated) return dd_params_set(p, idx, host, 0) || dd_params_set(p, idx, host, 1);
    memcpy(p->fixed_host + q->offset, host, q->numel * sizeof(float));
    return 0;
}

/* Flux's defaults: Glorot uniform for weights (fans from the PyTorch shape: [out, in] for dense,
 * [out, in, kh, kw] for conv), zero biases, GroupNorm scale 1, embedding tables N(0, 1). */
static void init_values(const dd_param_info *q, float *v, uint64_t seed, uint64_t stream,
                        const float *fixed) {
    switch (q->init) {
    case DD_INIT_GLOROT: {
        double fan_in = 1, fan_out = 1;
        if (q->ndim == 1) {
            fan_in = fan_out = (double)q->shape[0];
        } else {
            double rf = 1;
            for (int i = 2; i < q->ndim; i++) rf *= (double)q->shape[i];
            fan_in = (double)q->shape[1] * rf;
            fan_out = (double)q->shape[0] * rf;
        }
        float lim = (float)sqrt(6.0 / (fan_in + fan_out));
        for (size_t i = 0; i < q->numel; i++)
            v[i] = lim * (2.0f * dd_philox_uniform(seed, stream, i) - 1.0f);
        break;
    }
    case DD_INIT_ZERO:
        memset(v, 0, q->numel * sizeof(float));
        break;
    case DD_INIT_ONE:
        for (size_t i = 0; i < q->numel; i++) v[i] = 1.0f;
        break;
    case DD_INIT_NORMAL:
        for (size_t i = 0; i < q->numel; i++) v[i] = dd_philox_normal(seed, stream, i);
        break;
    case DD_INIT_FIXED:
        memcpy(v, fixed + q->offset, q->numel * sizeof(float));
        break;
    }
}

int dd_params_alloc(dd_params *p, uint64_t seed) {
    if (p->allocated) return dd_error("parameters already allocated");
    size_t bytes = (p->total ? p->total : DD_ALIGN_FLOATS) * sizeof(float);
    float **bufs[] = {&p->data, &p->grad, &p->adam_m, &p->adam_v, &p->ema};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if (p->be->alloc((void **)bufs[i], bytes)) {
            for (size_t j = 0; j < i; j++) p->be->free(*bufs[j]);
            return dd_error_prefix("allocating parameters");
        }
    }
    if (p->be->alloc((void **)&p->step_dev, sizeof(int64_t))) { /* zeroed: step 0 */
        for (size_t j = 0; j < sizeof bufs / sizeof bufs[0]; j++) p->be->free(*bufs[j]);
        return dd_error_prefix("allocating parameters");
    }
    p->allocated = 1;
    p->adam_step = 0;
    float *host = calloc(p->total ? p->total : 1, sizeof(float));
    if (!host) return dd_error("out of host memory");
    /* stream = index + 1 keeps every parameter's draws independent of the others' sizes */
    for (int i = 0; i < p->count; i++)
        init_values(&p->info[i], host + p->info[i].offset, seed, (uint64_t)i + 1, p->fixed_host);
    int rc = p->be->to_device(p->data, host, p->total * sizeof(float));
    if (!rc) rc = p->be->to_device(p->ema, host, p->total * sizeof(float));
    free(host);
    return rc;
}

static int check_idx(const dd_params *p, int idx) {
    if (idx < 0 || idx >= p->count) return dd_error("no parameter %d", idx);
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    return 0;
}

int dd_params_get(const dd_params *p, int idx, float *host, int ema) {
    DD_TRY(check_idx(p, idx));
    const dd_param_info *q = &p->info[idx];
    return p->be->to_host(host, (ema ? p->ema : p->data) + q->offset, q->numel * sizeof(float));
}

int dd_params_get_grad(const dd_params *p, int idx, float *host) {
    DD_TRY(check_idx(p, idx));
    const dd_param_info *q = &p->info[idx];
    return p->be->to_host(host, p->grad + q->offset, q->numel * sizeof(float));
}

int dd_params_set(dd_params *p, int idx, const float *host, int ema) {
    DD_TRY(check_idx(p, idx));
    const dd_param_info *q = &p->info[idx];
    return p->be->to_device((ema ? p->ema : p->data) + q->offset, host, q->numel * sizeof(float));
}

int dd_params_zero_grad(dd_params *p) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    return p->be->zero(p->grad, p->total * sizeof(float));
}

/* One call over the whole buffer: fixed tables and padding have zero gradients forever, so their
 * m and v stay 0 and Adam moves them by exactly 0. */
int dd_params_adam(dd_params *p, float lr, double b1, double b2, double eps, const float *guard) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    return p->be->adam_update(p->data, p->adam_m, p->adam_v, p->grad, p->total, lr, b1, b2, eps,
                              p->step_dev, guard);
}

int dd_params_ema(dd_params *p, float decay, int warmup, const float *guard) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    return p->be->ema_update(p->ema, p->data, p->total, decay, warmup ? p->step_dev : NULL,
                             guard);
}

int dd_params_step_done(dd_params *p, const float *guard) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    return p->be->counter_add(p->step_dev, 1, guard);
}

int dd_params_read_step(dd_params *p) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    return p->be->to_host(&p->adam_step, p->step_dev, sizeof p->adam_step);
}

int dd_params_set_step(dd_params *p, int64_t step) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    DD_TRY(p->be->to_device(p->step_dev, &step, sizeof step));
    p->adam_step = step;
    return 0;
}

/* By copying, not by swapping pointers: planned graphs (and captured CUDA graphs) hold the
 * address of p->data. The gradient buffer is the scratch, so gradients are lost. */
int dd_params_swap_ema(dd_params *p) {
    if (!p->allocated) return dd_error("parameters are not allocated yet");
    size_t bytes = p->total * sizeof(float);
    DD_TRY(p->be->copy(p->grad, p->data, bytes));
    DD_TRY(p->be->copy(p->data, p->ema, bytes));
    return p->be->copy(p->ema, p->grad, bytes);
}
