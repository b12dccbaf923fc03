/* Model configurations: SPEC's defaults per kind, validation, JSON for checkpoint metadata. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "diffusion/error.h"
#include "diffusion/models.h"

static const char *const kind_names[DD_MODEL_KIND_COUNT] = {
    [DD_MODEL_UNET] = "unet",
    [DD_MODEL_UNET_FIXED] = "unet-fixed",
    [DD_MODEL_UNET_COND] = "unet-cond",
    [DD_MODEL_MLP2D] = "mlp2d",
    [DD_MODEL_MLP2D_COND] = "mlp2d-cond",
    [DD_MODEL_LENET] = "lenet",
};

static const char *const combine_names[DD_COMBINE_COUNT] = {
    [DD_COMBINE_CONCAT] = "concat",
    [DD_COMBINE_SUM] = "sum",
};

/* Upper bounds that keep every product below in int range; far above any sensible model. */
#define MAX_CHANNELS 65536
#define MAX_SIZE 65536
#define MAX_MULT 64
#define MAX_ROWS 10000000

const char *dd_model_kind_name(dd_model_kind kind) {
    return (unsigned)kind < DD_MODEL_KIND_COUNT ? kind_names[kind] : NULL;
}

int dd_model_kind_parse(const char *name, dd_model_kind *kind) {
    for (int k = 0; k < DD_MODEL_KIND_COUNT; k++)
        if (name && !strcmp(name, kind_names[k])) {
            *kind = (dd_model_kind)k;
            return 0;
        }
    return dd_error("unknown model '%s' (unet, unet-fixed, unet-cond, mlp2d, mlp2d-cond, lenet)",
                    name ? name : "(null)");
}

const char *dd_combine_name(dd_combine c) {
    return (unsigned)c < DD_COMBINE_COUNT ? combine_names[c] : "?";
}

static int is_unet(dd_model_kind k) {
    return k == DD_MODEL_UNET || k == DD_MODEL_UNET_FIXED || k == DD_MODEL_UNET_COND;
}
static int is_mlp(dd_model_kind k) { return k == DD_MODEL_MLP2D || k == DD_MODEL_MLP2D_COND; }

int dd_model_is_conditional(const dd_model_config *c) {
    return c->kind == DD_MODEL_UNET_COND || c->kind == DD_MODEL_MLP2D_COND;
}

int dd_model_time_dim(const dd_model_config *c) {
    if (is_unet(c->kind)) {
        int dim = 4 * c->model_channels;
        return c->kind == DD_MODEL_UNET_COND && c->combine == DD_COMBINE_CONCAT ? 2 * dim : dim;
    }
    if (is_mlp(c->kind)) return c->hidden;
    return 0;
}

void dd_model_config_default(dd_model_config *c, dd_model_kind kind) {
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->combine = DD_COMBINE_CONCAT;
    if (is_unet(kind)) {
        c->in_channels = 1;
        c->height = c->width = 28;
        c->model_channels = 16;
        c->n_mult = 3;
        c->mult[0] = 1, c->mult[1] = 2, c->mult[2] = 4;
        c->attention = 1;
        c->groups = 8;
        c->heads = 4;
        c->timesteps = 100;
        if (kind == DD_MODEL_UNET_COND) c->classes = 10;
    } else if (is_mlp(kind)) {
        c->in_channels = 2;
        c->height = c->width = 1;
        c->hidden = kind == DD_MODEL_MLP2D_COND ? 32 : 16;
        c->classes = kind == DD_MODEL_MLP2D_COND ? 3 : 0;
        c->timesteps = 40;
    } else if (kind == DD_MODEL_LENET) {
        c->in_channels = 1;
        c->height = c->width = 28;
        c->classes = 10;
    }
}

static int check_range(const char *what, int v, int lo, int hi) {
    if (v < lo || v > hi) return dd_error("%s must be in [%d, %d], got %d", what, lo, hi, v);
    return 0;
}

static int validate_unet(const dd_model_config *c) {
    DD_TRY(check_range("model channels", c->model_channels, 1, MAX_CHANNELS));
    if (c->n_mult < 1 || c->n_mult > DD_MAX_LEVELS)
        return dd_error("the number of channel multipliers must be in [1, %d], got %d",
                        DD_MAX_LEVELS, c->n_mult);
    if (c->mult[0] != 1)
        return dd_error("the first channel multiplier must be 1 (the first level has the model's "
                        "%d channels), got %d", c->model_channels, c->mult[0]);
    for (int i = 0; i < c->n_mult; i++) {
        if (c->mult[i] < 1 || c->mult[i] > MAX_MULT)
            return dd_error("channel multiplier %d must be in [1, %d], got %d", i + 1, MAX_MULT,
                            c->mult[i]);
        if ((long)c->model_channels * c->mult[i] > MAX_CHANNELS)
            return dd_error("level %d would have %ld channels (at most %d)", i + 1,
                            (long)c->model_channels * c->mult[i], MAX_CHANNELS);
    }
    if (c->kind == DD_MODEL_UNET_FIXED) {
        if (c->n_mult != 3 || c->mult[1] != 2 || c->mult[2] != 4)
            return dd_error("unet-fixed has channel multipliers (1,2,4); use unet for others");
        if (!c->attention) return dd_error("unet-fixed always has its middle attention; use unet "
                                           "for a model without it");
    }
    if (c->groups < 1) return dd_error("groups must be at least 1, got %d", c->groups);
    for (int i = 0; i < c->n_mult; i++) {
        int ch = c->model_channels * c->mult[i];
        if (ch % c->groups)
            return dd_error("%d GroupNorm groups do not divide the %d channels of level %d "
                            "(model channels %d x multiplier %d)", c->groups, ch, i + 1,
                            c->model_channels, c->mult[i]);
    }
    int deepest = c->model_channels * c->mult[c->n_mult - 1];
    if (c->attention) {
        if (c->heads < 1) return dd_error("attention heads must be at least 1, got %d", c->heads);
        if (deepest % c->heads)
            return dd_error("%d attention heads do not divide the %d channels of the middle "
                            "attention", c->heads, deepest);
    }
    int f = 1 << (c->n_mult - 1);
    if (c->height % f || c->width % f)
        return dd_error("image size %dx%d is not divisible by 2^%d = %d, which %d levels need "
                        "(each downsample halves the size)", c->height, c->width, c->n_mult - 1,
                        f, c->n_mult);
    if (c->kind == DD_MODEL_UNET_COND) {
        DD_TRY(check_range("classes", c->classes, 1, MAX_ROWS));
        if ((unsigned)c->combine >= DD_COMBINE_COUNT)
            return dd_error("combine must be concat or sum");
    }
    return 0;
}

int dd_model_config_validate(const dd_model_config *c) {
    if (!dd_model_kind_name(c->kind)) return dd_error("invalid model kind %d", (int)c->kind);
    DD_TRY(check_range("input channels", c->in_channels, 1, MAX_CHANNELS));
    DD_TRY(check_range("image height", c->height, 1, MAX_SIZE));
    DD_TRY(check_range("image width", c->width, 1, MAX_SIZE));
    if (c->kind != DD_MODEL_LENET) DD_TRY(check_range("timesteps", c->timesteps, 1, MAX_ROWS));
    if (is_unet(c->kind)) return validate_unet(c);
    if (is_mlp(c->kind)) {
        if (c->height != 1 || c->width != 1)
            return dd_error("%s takes points (size 1x1), got %dx%d", kind_names[c->kind],
                            c->height, c->width);
        DD_TRY(check_range("hidden width", c->hidden, 4, MAX_CHANNELS));
        if (c->hidden % 2)
            return dd_error("hidden width must be even (the sinusoidal table has sin/cos pairs), "
                            "got %d", c->hidden);
        if (c->kind == DD_MODEL_MLP2D_COND) DD_TRY(check_range("classes", c->classes, 1, MAX_ROWS));
        return 0;
    }
    /* lenet: the 256-wide flatten fixes the input at 1x28x28 */
    if (c->in_channels != 1 || c->height != 28 || c->width != 28)
        return dd_error("lenet takes 1x28x28 images, got %dx%dx%d", c->in_channels, c->height,
                        c->width);
    DD_TRY(check_range("classes", c->classes, 2, MAX_ROWS));
    return 0;
}

void dd_model_config_describe(const dd_model_config *c, char *buf, size_t size) {
    int n = snprintf(buf, size, "%s in %d %dx%d", dd_model_kind_name(c->kind) ? dd_model_kind_name(c->kind) : "?",
                     c->in_channels, c->height, c->width);
#define ADD(...)                                                                                  \
    do {                                                                                          \
        if (n >= 0 && (size_t)n < size) n += snprintf(buf + n, size - (size_t)n, __VA_ARGS__);    \
    } while (0)
    if (is_unet(c->kind)) {
        ADD(" mc %d mult ", c->model_channels);
        for (int i = 0; i < c->n_mult && i < DD_MAX_LEVELS; i++) ADD("%s%d", i ? "," : "", c->mult[i]);
        ADD(" %s groups %d", c->attention ? "attention" : "no-attention", c->groups);
        if (c->attention) ADD(" heads %d", c->heads);
        if (c->kind == DD_MODEL_UNET_COND) ADD(" classes %d %s", c->classes, dd_combine_name(c->combine));
    } else if (is_mlp(c->kind)) {
        ADD(" hidden %d", c->hidden);
        if (c->kind == DD_MODEL_MLP2D_COND) ADD(" classes %d", c->classes);
    } else {
        ADD(" classes %d", c->classes);
    }
    if (c->kind != DD_MODEL_LENET) ADD(" T %d", c->timesteps);
#undef ADD
}

/* ---------------------------------------------------------------- JSON */

char *dd_model_config_to_json(const dd_model_config *c) {
    if (dd_model_config_validate(c)) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) return dd_error("out of memory writing the model config"), NULL;
    int ok = 1;
#define NUM(key, v) ok = ok && cJSON_AddNumberToObject(o, key, (double)(v)) != NULL
    ok = ok && cJSON_AddStringToObject(o, "kind", kind_names[c->kind]) != NULL;
    NUM("in_channels", c->in_channels);
    NUM("height", c->height);
    NUM("width", c->width);
    if (is_unet(c->kind)) {
        NUM("model_channels", c->model_channels);
        cJSON *m = cJSON_AddArrayToObject(o, "multipliers");
        ok = ok && m;
        for (int i = 0; ok && i < c->n_mult; i++) {
            cJSON *v = cJSON_CreateNumber(c->mult[i]);
            ok = v && cJSON_AddItemToArray(m, v);
        }
        ok = ok && cJSON_AddBoolToObject(o, "attention", c->attention) != NULL;
        NUM("groups", c->groups);
        NUM("heads", c->heads);
    }
    if (is_mlp(c->kind)) NUM("hidden", c->hidden);
    if (dd_model_is_conditional(c) || c->kind == DD_MODEL_LENET) NUM("classes", c->classes);
    if (c->kind == DD_MODEL_UNET_COND)
        ok = ok && cJSON_AddStringToObject(o, "combine", combine_names[c->combine]) != NULL;
    if (c->kind != DD_MODEL_LENET) NUM("timesteps", c->timesteps);
#undef NUM
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) dd_error("out of memory writing the model config");
    return s;
}

static int json_int(const cJSON *v, const char *key, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble)
        return dd_error("model config: \"%s\" must be an integer", key);
    *out = (int)v->valuedouble;
    return 0;
}

int dd_model_config_from_json(dd_model_config *c, const char *json) {
    cJSON *o = cJSON_Parse(json ? json : "");
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return dd_error("model config: not a JSON object");
    }
    int rc = -1;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
    dd_model_kind k;
    if (!cJSON_IsString(kind)) {
        dd_error("model config: \"kind\" (a string) is missing");
        goto done;
    }
    if (dd_model_kind_parse(kind->valuestring, &k)) {
        dd_error_prefix("model config");
        goto done;
    }
    dd_model_config_default(c, k);
    for (const cJSON *v = o->child; v; v = v->next) {
        const char *key = v->string;
        int *field = NULL;
        if (!strcmp(key, "kind")) continue;
        else if (!strcmp(key, "in_channels")) field = &c->in_channels;
        else if (!strcmp(key, "height")) field = &c->height;
        else if (!strcmp(key, "width")) field = &c->width;
        else if (!strcmp(key, "model_channels")) field = &c->model_channels;
        else if (!strcmp(key, "groups")) field = &c->groups;
        else if (!strcmp(key, "heads")) field = &c->heads;
        else if (!strcmp(key, "classes")) field = &c->classes;
        else if (!strcmp(key, "hidden")) field = &c->hidden;
        else if (!strcmp(key, "timesteps")) field = &c->timesteps;
        if (field) {
            if (json_int(v, key, field)) goto done;
        } else if (!strcmp(key, "attention")) {
            if (!cJSON_IsBool(v)) {
                dd_error("model config: \"attention\" must be true or false");
                goto done;
            }
            c->attention = cJSON_IsTrue(v);
        } else if (!strcmp(key, "combine")) {
            int found = 0;
            for (int i = 0; cJSON_IsString(v) && i < DD_COMBINE_COUNT; i++)
                if (!strcmp(v->valuestring, combine_names[i])) c->combine = (dd_combine)i, found = 1;
            if (!found) {
                dd_error("model config: \"combine\" must be \"concat\" or \"sum\"");
                goto done;
            }
        } else if (!strcmp(key, "multipliers")) {
            int n = cJSON_GetArraySize(v);
            if (!cJSON_IsArray(v) || n < 1 || n > DD_MAX_LEVELS) {
                dd_error("model config: \"multipliers\" must be an array of 1 to %d integers",
                         DD_MAX_LEVELS);
                goto done;
            }
            int i = 0;
            for (const cJSON *m = v->child; m; m = m->next, i++)
                if (json_int(m, key, &c->mult[i])) goto done;
            c->n_mult = n;
        } else {
            dd_error("model config: unknown key \"%s\"", key);
            goto done;
        }
    }
    if (dd_model_config_validate(c)) {
        dd_error_prefix("model config");
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(o);
    return rc;
}
