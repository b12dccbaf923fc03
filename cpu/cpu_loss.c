/* Losses on the CPU: mean squared error and softmax cross-entropy. Sums in double. */
#include <math.h>

#include "cpu_internal.h"

/* loss[0] = mean((pred - target)^2) over n values */
int dd_cpu_mse_forward(float *loss, const float *pred, const float *target, size_t n) {
    double acc = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : acc) if (n > DD_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        double d = (double)pred[i] - (double)target[i];
        acc += d * d;
    }
    loss[0] = (float)(acc / (double)n);
    return 0;
}

/* dpred += dloss[0] 2 (pred - target) / n */
int dd_cpu_mse_backward(float *dpred, const float *dloss, const float *pred, const float *target,
                        size_t n) {
    if (!dpred) return 0;
    const float k = (float)(2.0 * (double)dloss[0] / (double)n);
#pragma omp parallel for schedule(static) if (n > DD_CPU_PAR_MIN)
    for (size_t i = 0; i < n; i++) dpred[i] += k * (pred[i] - target[i]);
    return 0;
}

/* logits (N, K), labels (N) -> loss[0] = mean over rows of logsumexp(row) - row[label];
 * probs (N, K) = softmax of each row, saved for backward */
int dd_cpu_xent_forward(float *loss, float *probs, const float *logits, const int32_t *labels,
                        int N, int K) {
    double total = 0.0;
    for (int n = 0; n < N; n++) {
        const float *r = logits + (size_t)n * K;
        float *pr = probs + (size_t)n * K;
        float mx = r[0];
        for (int k = 1; k < K; k++) mx = r[k] > mx ? r[k] : mx;
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += exp((double)r[k] - mx);
        for (int k = 0; k < K; k++) pr[k] = (float)(exp((double)r[k] - mx) / sum);
        total += (double)mx + log(sum) - (double)r[labels[n]];
    }
    loss[0] = (float)(total / (double)N);
    return 0;
}

/* dlogits += dloss[0] (probs - onehot(label)) / N */
int dd_cpu_xent_backward(float *dlogits, const float *dloss, const float *probs,
                         const int32_t *labels, int N, int K) {
    if (!dlogits) return 0;
    const float k = (float)((double)dloss[0] / (double)N);
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * K;
        const float *pr = probs + (size_t)n * K;
        for (int j = 0; j < K; j++) d[j] += k * (pr[j] - (j == labels[n] ? 1.0f : 0.0f));
    }
    return 0;
}
