/* dense (fully connected) on the CPU: one sgemm each way.
 * x (N, Cin), w (Cout, Cin) as PyTorch's Linear, b (Cout) -> y (N, Cout) = x w^T + b */
#include <cblas.h>

#include "cpu_internal.h"

int dd_cpu_dense_forward(float *y, const float *x, const float *w, const float *b, int N, int Cin,
                         int Cout) {
    if (b) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < Cout; o++) y[(size_t)n * Cout + o] = b[o];
    }
    const int small = dd_cpu_blas_small_begin((double)N * Cin * Cout);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Cout, Cin, 1.0f, x, Cin, w, Cin,
                b ? 1.0f : 0.0f, y, Cout);
    dd_cpu_blas_small_end(small);
    return 0;
}

/* one sgemm a layer: on the CPU a group costs what its layers cost */
int dd_cpu_dense_group_forward(int count, float *const *y, const float *x, const float *const *w,
                               const float *const *b, int N, int Cin, const int *cout) {
    for (int l = 0; l < count; l++)
        dd_cpu_dense_forward(y[l], x, w[l], b ? b[l] : NULL, N, Cin, cout[l]);
    return 0;
}

/* the layers' backward calls in order (the same sums as running the nodes one by one) */
int dd_cpu_dense_group_backward(int count, float *dx, float *const *dw, float *const *db,
                                const float *const *dy, const float *x, const float *const *w,
                                int N, int Cin, const int *cout) {
    for (int l = 0; l < count; l++)
        dd_cpu_dense_backward(dx, dw ? dw[l] : NULL, db ? db[l] : NULL, dy[l], x, w[l], N, Cin,
                              cout[l]);
    return 0;
}

int dd_cpu_dense_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int Cin, int Cout) {
    const int small = dd_cpu_blas_small_begin(2.0 * N * Cin * Cout);
    /* dx (N, Cin) += dy (N, Cout) @ w (Cout, Cin) */
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, Cin, Cout, 1.0f, dy, Cout, w,
                    Cin, 1.0f, dx, Cin);
    /* dw (Cout, Cin) += dy^T (Cout, N) @ x (N, Cin) */
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Cout, Cin, N, 1.0f, dy, Cout, x, Cin,
                    1.0f, dw, Cin);
    if (db) {
        for (int o = 0; o < Cout; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += dy[(size_t)n * Cout + o];
            db[o] += (float)acc;
        }
    }
    dd_cpu_blas_small_end(small);
    return 0;
}
