#include "cli_common.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/cuda.h"
#include "diffusion/error.h"

int cli_i64(const char *opt, const char *arg, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (errno || end == arg || *end) return dd_error("--%s: '%s' is not an integer", opt, arg);
    if (v < lo || v > hi) return dd_error("--%s: %lld is outside [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

int cli_int(const char *opt, const char *arg, long lo, long hi, int *out) {
    int64_t v = 0;
    DD_TRY(cli_i64(opt, arg, lo, hi, &v));
    *out = (int)v;
    return 0;
}

int cli_u64(const char *opt, const char *arg, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-') return dd_error("--%s: '%s' is not a non-negative integer", opt, arg);
    *out = v;
    return 0;
}

int cli_double(const char *opt, const char *arg, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || !isfinite(v)) return dd_error("--%s: '%s' is not a number", opt, arg);
    if (v < lo || v > hi) return dd_error("--%s: %g is outside [%g, %g]", opt, v, lo, hi);
    *out = v;
    return 0;
}

int cli_float(const char *opt, const char *arg, double lo, double hi, float *out) {
    double v = 0;
    DD_TRY(cli_double(opt, arg, lo, hi, &v));
    *out = (float)v;
    return 0;
}

int cli_ddim_only(int ddim, int steps_given, int eta_given) {
    if (ddim || (!steps_given && !eta_given)) return 0;
    return dd_error("--%s is DDIM's (add --sampler ddim); DDPM runs every one of the model's T "
                    "steps",
                    steps_given ? "steps" : "eta");
}

int cli_size(const char *opt, const char *arg, int *h, int *w) {
    char *end;
    long a = strtol(arg, &end, 10), b = a;
    if (end == arg) return dd_error("--%s: '%s' is not a size like 28x28", opt, arg);
    if (*end == 'x' || *end == 'X') {
        char *e2;
        b = strtol(end + 1, &e2, 10);
        if (e2 == end + 1 || *e2) return dd_error("--%s: '%s' is not a size like 28x28", opt, arg);
    } else if (*end) {
        return dd_error("--%s: '%s' is not a size like 28x28", opt, arg);
    }
    if (a < 1 || b < 1 || a > 4096 || b > 4096) return dd_error("--%s: %s is out of range", opt, arg);
    *h = (int)a;
    *w = (int)b;
    return 0;
}

void cli_model_opts_init(cli_model_opts *m) {
    memset(m, 0, sizeof *m);
    m->in = m->channels = m->groups = m->heads = m->classes = m->hidden = m->timesteps = -1;
    m->h = m->w = -1;
    m->combine = -1;
}

int cli_model_opt(cli_model_opts *m, int opt, const char *arg) {
    switch (opt) {
    case CLI_OPT_MODEL:
        DD_TRY(dd_model_kind_parse(arg, &m->kind));
        m->have_kind = 1;
        return 0;
    case CLI_OPT_IN: return cli_int("in", arg, 1, 64, &m->in);
    case CLI_OPT_CHANNELS: return cli_int("channels", arg, 1, 4096, &m->channels);
    case CLI_OPT_GROUPS: return cli_int("groups", arg, 1, 4096, &m->groups);
    case CLI_OPT_HEADS: return cli_int("heads", arg, 1, 4096, &m->heads);
    case CLI_OPT_CLASSES: return cli_int("classes", arg, 1, 100000, &m->classes);
    case CLI_OPT_HIDDEN: return cli_int("hidden", arg, 1, 65536, &m->hidden);
    case CLI_OPT_TIMESTEPS: return cli_int("timesteps", arg, 1, 100000, &m->timesteps);
    case CLI_OPT_SIZE: return cli_size("size", arg, &m->h, &m->w);
    case CLI_OPT_NO_ATTENTION: m->no_attention = 1; return 0;
    case CLI_OPT_COMBINE:
        if (!strcmp(arg, "concat")) m->combine = DD_COMBINE_CONCAT;
        else if (!strcmp(arg, "sum")) m->combine = DD_COMBINE_SUM;
        else return dd_error("--combine: '%s' is not concat or sum", arg);
        return 0;
    case CLI_OPT_MULT: {
        const char *p = arg;
        m->n_mult = 0;
        while (*p) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > 64) return dd_error("--mult: '%s' is not a list like 1,2,4", arg);
            if (m->n_mult == DD_MAX_LEVELS) return dd_error("--mult: at most %d levels", DD_MAX_LEVELS);
            m->mult[m->n_mult++] = (int)v;
            p = end;
            if (*p == ',') p++;
            else if (*p) return dd_error("--mult: '%s' is not a list like 1,2,4", arg);
        }
        if (!m->n_mult) return dd_error("--mult: empty list");
        return 0;
    }
    }
    return dd_error("unknown model option %d", opt);
}

int cli_model_config(const cli_model_opts *m, dd_model_kind default_kind, dd_model_config *c) {
    dd_model_config_default(c, m->have_kind ? m->kind : default_kind);
    if (m->in > 0) c->in_channels = m->in;
    if (m->channels > 0) c->model_channels = m->channels;
    if (m->groups > 0) c->groups = m->groups;
    if (m->heads > 0) c->heads = m->heads;
    if (m->classes > 0) c->classes = m->classes;
    if (m->hidden > 0) c->hidden = m->hidden;
    if (m->timesteps > 0) c->timesteps = m->timesteps;
    if (m->h > 0) c->height = m->h, c->width = m->w;
    if (m->no_attention) c->attention = 0;
    if (m->combine >= 0) c->combine = (dd_combine)m->combine;
    if (m->n_mult) {
        c->n_mult = m->n_mult;
        memcpy(c->mult, m->mult, sizeof c->mult);
    }
    return dd_model_config_validate(c);
}

const dd_backend *cli_backend(const char *name) {
    if (!name) name = "auto";
    /* auto without a GPU is the CPU, quietly; with a GPU that cannot be used, say why */
    if (!strcmp(name, "auto") && !dd_cuda_backend() && !dd_cuda_gpu_absent())
        fprintf(stderr, "diffusion: warning: %s; --device auto runs on the CPU\n",
                dd_error_message());
    return dd_backend_by_name(name);
}

int cli_load_data(dd_dataset *d, const char *spec, int64_t limit, uint64_t seed, int test_split,
                  int img_channels, int img_h, int img_w) {
    dd_data_opts o = dd_data_opts_default();
    o.limit = limit;
    o.seed = seed;
    o.test_split = test_split;
    if (img_channels > 0) o.channels = img_channels;
    if (img_h > 0) o.height = img_h, o.width = img_w;
    const char *twod[] = {"spiral", "s-curve", "moons", "conditional-2d"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(spec, twod[i]) && limit > 0) o.n_points = limit;
    return dd_dataset_load(d, spec, &o);
}
