/* Diffusion helpers on the CPU (the host owns the maths; these are the per-element loops):
 * Philox normals, the training draws, q_sample and one sampler step. Formulas from
 * include/diffusion/kernels.h, noise from include/diffusion/philox.h, so the GPU draws and
 * computes the same numbers. */
#include "cpu_internal.h"
#include "diffusion/kernels.h"
#include "diffusion/philox.h"

int dd_cpu_normal(float *out, size_t n, dd_rng_at at) {
    const uint64_t o = dd_rng_at_offset(at);
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN / 8)
    for (size_t i = 0; i < n; i++) out[i] = dd_philox_normal(at.seed, at.stream, o + i);
    return 0;
}

int dd_cpu_train_draw(int32_t *t, int32_t *lab_out, const int32_t *lab_in, int N, int T,
                      float p_uncond, int32_t generic, dd_rng_at at) {
    const uint64_t o = dd_rng_at_offset(at);
    for (int i = 0; i < N; i++) t[i] = dd_train_t_elem(at.seed, at.stream, o, i, T);
    if (lab_in)
        for (int i = 0; i < N; i++)
            lab_out[i] = dd_train_label_elem(at.seed, at.stream, o, N, i, lab_in[i], p_uncond,
                                             generic);
    return 0;
}

/* per sample s: xt = ca[j] x0 + cb[j] noise over its `per` values, j = idx ? idx[s] : s */
int dd_cpu_q_sample(float *xt, const float *x0, const float *noise, const float *ca,
                    const float *cb, const int32_t *idx, int N, size_t per) {
#pragma omp parallel for schedule(static) if ((size_t)N * per > DD_CPU_PAR_MIN)
    for (int s = 0; s < N; s++) {
        const size_t o = (size_t)s * per;
        const int j = idx ? idx[s] : s;
        for (size_t i = 0; i < per; i++)
            xt[o + i] = dd_q_sample_elem(x0[o + i], noise[o + i], ca[j], cb[j]);
    }
    return 0;
}

int dd_cpu_sampler_step(float *x, float *x0_out, const float *out, const float *uncond, size_t n,
                        float g, int clip, const float *tab, const int64_t *k, dd_rng_at at) {
    const float *row = tab + *k * DD_SAMPLER_COLS;
    const uint64_t o = dd_rng_at_offset(at);
    const int guided = uncond != NULL;
    const float sigma = row[DD_SAMPLER_SIGMA];
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN / 8)
    for (size_t i = 0; i < n; i++) {
        /* draw only when the step has noise: a deterministic DDIM step costs no Philox */
        const float z = sigma != 0.0f ? dd_philox_normal(at.seed, at.stream, o + i) : 0.0f;
        float x0;
        x[i] = dd_sampler_full_elem(x[i], out[i], guided ? uncond[i] : 0.0f, guided, g, clip, row,
                                    z, &x0);
        if (x0_out) x0_out[i] = x0;
    }
    return 0;
}
