/* Optimiser updates on the CPU: Adam and the EMA of the weights, element formulas from
 * include/diffusion/kernels.h. */
#include <math.h>

#include "cpu_internal.h"
#include "diffusion/kernels.h"

/* Bias corrections in double, once per step (as PyTorch computes them in Python floats). */
int dd_cpu_adam_update(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                       float b2, float eps, int64_t t) {
    const double bc1 = 1.0 - pow((double)b1, (double)t);
    const double bc2 = 1.0 - pow((double)b2, (double)t);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++)
        dd_adam_elem(&p[i], &m[i], &v[i], g[i], b1, b2, eps, step_size, bc2_sqrt);
    return 0;
}

int dd_cpu_ema_update(float *ema, const float *p, size_t n, float decay) {
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) ema[i] = dd_ema_elem(ema[i], p[i], decay);
    return 0;
}
