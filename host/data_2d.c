/* Generated 2-D sets of ../shared/SPEC.md (no noise added), drawn from Philox so that a seed
 * gives the same points on every machine. Each shape draws from its own Philox stream. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/data.h"
#include "diffusion/error.h"
#include "diffusion/philox.h"

#define PI 3.14159265358979323846

/* Philox stream tags: "2D" in the high half, the shape in the low half, so these draws never
 * coincide with the streams training uses for noise and shuffling. */
#define STREAM_2D 0x32440000ull
static const char *const shape_names[3] = {"spiral", "s-curve", "moons"};

const char *dd_2d_class_name(int k) { return k >= 0 && k < 3 ? shape_names[k] : NULL; }

static int shape_index(const char *kind) {
    for (int k = 0; k < 3; k++)
        if (strcmp(kind, shape_names[k]) == 0) return k;
    return -1;
}

/* Raw points of shape k into xy (n, 2), then mapped to [-1, 1] with one global min and max. */
static void make_shape(float *xy, int k, int64_t n, uint64_t seed, float *raw_min, float *raw_max) {
    uint64_t stream = STREAM_2D + (uint64_t)k;
    for (int64_t i = 0; i < n; i++) {
        double u = dd_philox_uniform(seed, stream, (uint64_t)i), t, x, y;
        if (k == 0) { /* spiral: t in [1.5 pi, 4.5 pi], (t cos t, t sin t) */
            t = 1.5 * PI + 3.0 * PI * u;
            x = t * cos(t);
            y = t * sin(t);
        } else if (k == 1) { /* s-curve: t in [-1.5 pi, 1.5 pi], (sin t, sign(t)(cos t - 1)) */
            t = -1.5 * PI + 3.0 * PI * u;
            x = sin(t);
            y = (t > 0 ? 1.0 : t < 0 ? -1.0 : 0.0) * (cos(t) - 1.0);
        } else { /* moons: n/2 on the upper arc, the rest on the lower, shifted one */
            t = PI * u;
            if (i < n / 2) {
                x = cos(t);
                y = sin(t);
            } else {
                x = 1.0 - cos(t);
                y = 1.0 - sin(t) - 0.5;
            }
        }
        xy[2 * i] = (float)x;
        xy[2 * i + 1] = (float)y;
    }
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < 2 * n; i++) {
        if (xy[i] < lo) lo = xy[i];
        if (xy[i] > hi) hi = xy[i];
    }
    double span = hi > lo ? hi - lo : 1.0;
    for (int64_t i = 0; i < 2 * n; i++) xy[i] = (float)(2.0 * (xy[i] - lo) / span - 1.0);
    *raw_min = (float)lo;
    *raw_max = (float)hi;
}

int dd_make_2d(dd_dataset *out, const char *kind, int64_t n, uint64_t seed) {
    memset(out, 0, sizeof *out);
    int k = shape_index(kind);
    if (k < 0) return dd_error("unknown 2-D data set '%s' (spiral, s-curve, moons)", kind);
    if (n < 1 || n > ((int64_t)1 << 32)) return dd_error("2-D data set: bad point count %lld", (long long)n);
    out->x = malloc((size_t)n * 2 * sizeof(float)); /* (n, 2, 1, 1) */
    if (!out->x) return dd_error("out of memory for %lld points", (long long)n);
    make_shape(out->x, k, n, seed, &out->raw_min, &out->raw_max);
    out->n = n;
    out->c = 2;
    out->h = out->w = 1;
    return 0;
}

int dd_make_2d_conditional(dd_dataset *out, int64_t n, uint64_t seed) {
    memset(out, 0, sizeof *out);
    if (n < 1 || n > ((int64_t)1 << 30)) return dd_error("2-D data set: bad point count %lld", (long long)n);
    out->x = malloc((size_t)(3 * n) * 2 * sizeof(float)); /* (3n, 2, 1, 1) */
    out->y = malloc((size_t)(3 * n) * sizeof(int32_t));   /* (3n) */
    if (!out->x || !out->y) {
        dd_dataset_free(out);
        return dd_error("out of memory for %lld points", (long long)(3 * n));
    }
    for (int k = 0; k < 3; k++) {
        float lo, hi; /* per class; not kept (raw_min/max describe one mapping only) */
        make_shape(out->x + 2 * k * n, k, n, seed, &lo, &hi);
        for (int64_t i = 0; i < n; i++) out->y[k * n + i] = k;
    }
    out->n = 3 * n;
    out->c = 2;
    out->h = out->w = 1;
    out->num_classes = 3;
    return 0;
}
