/* Diffusion helpers on the CPU (the host owns the maths; these are the per-element loops):
 * Philox normals, q_sample, classifier-free guidance and one sampler step. Formulas from
 * include/diffusion/kernels.h, noise from include/diffusion/philox.h, so the GPU draws and
 * computes the same numbers. */
#include "cpu_internal.h"
#include "diffusion/kernels.h"
#include "diffusion/philox.h"

int dd_cpu_normal(float *out, size_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN / 8)
    for (size_t i = 0; i < n; i++) out[i] = dd_philox_normal(seed, stream, offset + i);
    return 0;
}

/* per sample s: xt = ca[s] x0 + cb[s] noise over its `per` values */
int dd_cpu_q_sample(float *xt, const float *x0, const float *noise, const float *ca,
                    const float *cb, int N, size_t per) {
#pragma omp parallel for schedule(static) if ((size_t)N * per > DD_CPU_PAR_MIN)
    for (int s = 0; s < N; s++) {
        const size_t o = (size_t)s * per;
        for (size_t i = 0; i < per; i++)
            xt[o + i] = dd_q_sample_elem(x0[o + i], noise[o + i], ca[s], cb[s]);
    }
    return 0;
}

int dd_cpu_guidance(float *eps, const float *cond, const float *uncond, size_t n, float g) {
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) eps[i] = dd_guidance_elem(cond[i], uncond[i], g);
    return 0;
}

int dd_cpu_sampler_step(float *x, float *x0_out, const float *eps, size_t n, float ra, float rb,
                        int clip, float c0, float c1, float c2, float sigma, uint64_t seed,
                        uint64_t stream, uint64_t offset) {
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN / 8)
    for (size_t i = 0; i < n; i++) {
        const float x0 = dd_predict_x0_elem(x[i], eps[i], ra, rb, clip);
        if (x0_out) x0_out[i] = x0;
        /* draw only when the step has noise: a deterministic DDIM step costs no Philox */
        const float z = sigma != 0.0f ? dd_philox_normal(seed, stream, offset + i) : 0.0f;
        x[i] = dd_sampler_elem(x[i], x0, eps[i], c0, c1, c2, sigma, z);
    }
    return 0;
}
