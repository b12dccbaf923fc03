/* The CUDA backend's handwritten kernels: elementwise and data-movement ops, GroupNorm (fused
 * per-channel add and swish), the attention softmax, losses, Adam, EMA, the step counter, and
 * the diffusion helpers (noise, the training draws, q_sample, the fused sampler step).
 *
 * The per-element arithmetic is never written here: it is the shared DD_HD functions of
 * include/diffusion/kernels.h and include/diffusion/philox.h, which cpu/ calls too. This file is
 * the parallel scaffolding only (indexing, reductions, launch shapes), checked against cpu/ by
 * tests/test_gpu_ops.c. Reductions run in a fixed order (no float atomics, except the embedding
 * gradient of a very large table: see there), so a replayed CUDA graph gives the same bits as
 * plain launches.
 *
 * Shape letters as in include/diffusion/backend.h. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "diffusion/kernels.h"
#include "diffusion/philox.h"

#define THREADS 256 /* threads per block for every 1-D kernel (a multiple of 32) */

/* Blocks for a grid-stride loop over n items: enough to fill any current GPU, never more than
 * the items need. */
static unsigned int blocks_for(size_t n) {
    size_t b = (n + THREADS - 1) / THREADS;
    const size_t cap = 65536; /* ~500 blocks per SM on the largest chips: plenty */
    if (b > cap) b = cap;
    return (unsigned int)(b ? b : 1);
}

#define GRID_STRIDE(i, n)                                                                         \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                       \
         i += (size_t)gridDim.x * blockDim.x)

/* ---------------------------------------------------------------- reductions */

template <typename T> static __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread;
 * sh is 32 values of shared scratch. Every thread of the block must call it. */
template <typename T> static __device__ T block_sum(T v, T *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* the previous call's readers of sh[0] are done */
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        T t = lane < nw ? sh[lane] : (T)0;
        t = warp_sum(t);
        if (lane == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

/* block_sum with one barrier instead of three, for a kernel that reduces a few values once each:
 * every warp adds the warps' partials itself (the same additions, in the same order, as
 * block_sum's warp 0), so sh (32 values) must not be written again by this block. */
template <typename T> static __device__ T block_sum_once(T v, T *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    T t = lane < nw ? sh[lane] : (T)0;
    return warp_sum(t);
}

/* Multi-block deterministic sum: each block writes its partial, the last block to finish adds
 * them in block order (the threadFenceReduction pattern of the CUDA samples). One stream, so one
 * reduction at a time uses these. */
#define RED_BLOCKS 128
__device__ double dd_red_partials[RED_BLOCKS];
__device__ unsigned int dd_red_count;

/* Called by every thread with its block's total `s`; returns 1 in thread 0 of the last block,
 * with *total the sum of all blocks' partials. Leaves the counter at 0 for the next use. */
static __device__ int grid_sum_last(double s, double *total) {
    __shared__ int last;
    if (threadIdx.x == 0) {
        dd_red_partials[blockIdx.x] = s;
        __threadfence();
        unsigned int done = atomicAdd(&dd_red_count, 1u);
        last = (done == gridDim.x - 1);
    }
    __syncthreads();
    if (!last || threadIdx.x != 0) return 0;
    volatile double *pp = dd_red_partials;
    double t = 0.0;
    for (unsigned int b = 0; b < gridDim.x; b++) t += pp[b];
    dd_red_count = 0;
    *total = t;
    return 1;
}

/* ---------------------------------------------------------------- activations, add */

static __global__ void act_forward_kernel(float *y, const float *x, size_t n, dd_act act) {
    GRID_STRIDE(i, n) y[i] = dd_act_apply(x[i], act);
}

static __global__ void act_backward_kernel(float *dx, const float *dy, const float *x, size_t n,
                                           dd_act act) {
    GRID_STRIDE(i, n) dx[i] += dy[i] * dd_act_grad(x[i], act);
}

int dd_cuda_act_forward(float *y, const float *x, size_t n, dd_act act) {
    if (!n) return 0;
    act_forward_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(y, x, n, act);
    DD_CUDA_LAUNCHED("act_forward");
    return 0;
}

int dd_cuda_act_backward(float *dx, const float *dy, const float *x, size_t n, dd_act act) {
    if (!dx || !n) return 0;
    act_backward_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(dx, dy, x, n, act);
    DD_CUDA_LAUNCHED("act_backward");
    return 0;
}

static __global__ void add_kernel(float *y, const float *a, const float *b, size_t n) {
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

/* da += dy and db += dy in one pass (either may be NULL) */
static __global__ void add_backward_kernel(float *da, float *db, const float *dy, size_t n) {
    GRID_STRIDE(i, n) {
        const float d = dy[i];
        if (da) da[i] += d;
        if (db) db[i] += d;
    }
}

int dd_cuda_add_forward(float *y, const float *a, const float *b, size_t n) {
    if (!n) return 0;
    add_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(y, a, b, n);
    DD_CUDA_LAUNCHED("add_forward");
    return 0;
}

int dd_cuda_add_backward(float *da, float *db, const float *dy, size_t n) {
    if ((!da && !db) || !n) return 0;
    add_backward_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(da, db, dy, n);
    DD_CUDA_LAUNCHED("add_backward");
    return 0;
}

/* ---------------------------------------------------------------- concat, upsample, maxpool */

/* Concat: a grid (x over a sample's elements, y over samples, looping past 65535) so that no
 * thread divides its index by the shape; it moves float4s where the sizes and addresses allow.
 * Upsample (a flat loop: its planes can be 7x7) stores float2s where they are aligned. */
#define GRID_Y_MAX 65535
static dim3 plane_grid(size_t per, size_t planes) {
    size_t bx = (per + THREADS - 1) / THREADS;
    if (bx > 4096) bx = 4096;
    if (!bx) bx = 1;
    return dim3((unsigned int)bx, (unsigned int)(planes < GRID_Y_MAX ? planes : GRID_Y_MAX));
}

#define PLANE_LOOP(n, N, r, per)                                                                  \
    for (size_t n = blockIdx.y; n < (size_t)(N); n += gridDim.y)                                  \
        for (size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x; r < (per);                 \
             r += (size_t)gridDim.x * blockDim.x)

static __device__ __forceinline__ void add_into(float &v, float d) { v += d; }
static __device__ __forceinline__ void add_into(float4 &v, float4 d) {
    v.x += d.x;
    v.y += d.y;
    v.z += d.z;
    v.w += d.w;
}

static bool aligned(const void *p, size_t bytes) { return p == NULL || ((uintptr_t)p % bytes) == 0; }

/* y (N, Ca + Cb, HW): per sample, a's block then b's block; na, nb in units of V floats */
template <typename V>
static __global__ void concat_kernel(V *y, const V *a, const V *b, int N, size_t na, size_t nb) {
    const size_t per = na + nb;
    PLANE_LOOP(n, N, r, per) y[n * per + r] = r < na ? a[n * na + r] : b[n * nb + (r - na)];
}

template <typename V>
static __global__ void concat_backward_kernel(V *da, V *db, const V *dy, int N, size_t na,
                                              size_t nb) {
    const size_t per = na + nb;
    PLANE_LOOP(n, N, r, per) {
        const V d = dy[n * per + r];
        V *t = r < na ? (da ? da + n * na + r : NULL) : (db ? db + n * nb + (r - na) : NULL);
        if (t) {
            V v = *t;
            add_into(v, d);
            *t = v;
        }
    }
}

int dd_cuda_concat_forward(float *y, const float *a, const float *b, int N, int Ca, int Cb,
                           int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW, n = (size_t)N * (na + nb);
    if (!n) return 0;
    if (na % 4 == 0 && nb % 4 == 0 && aligned(y, 16) && aligned(a, 16) && aligned(b, 16))
        concat_kernel<float4><<<plane_grid((na + nb) / 4, N), THREADS, 0, dd_cuda_stream>>>(
            (float4 *)y, (const float4 *)a, (const float4 *)b, N, na / 4, nb / 4);
    else
        concat_kernel<float><<<plane_grid(na + nb, N), THREADS, 0, dd_cuda_stream>>>(y, a, b, N, na,
                                                                                    nb);
    DD_CUDA_LAUNCHED("concat_forward");
    return 0;
}

int dd_cuda_concat_backward(float *da, float *db, const float *dy, int N, int Ca, int Cb, int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW, n = (size_t)N * (na + nb);
    if ((!da && !db) || !n) return 0;
    if (na % 4 == 0 && nb % 4 == 0 && aligned(da, 16) && aligned(db, 16) && aligned(dy, 16))
        concat_backward_kernel<float4><<<plane_grid((na + nb) / 4, N), THREADS, 0,
                                         dd_cuda_stream>>>((float4 *)da, (float4 *)db,
                                                           (const float4 *)dy, N, na / 4, nb / 4);
    else
        concat_backward_kernel<float><<<plane_grid(na + nb, N), THREADS, 0, dd_cuda_stream>>>(
            da, db, dy, N, na, nb);
    DD_CUDA_LAUNCHED("concat_backward");
    return 0;
}

/* One thread per input x[nc][iy][ix], which goes to y[nc][2 iy + (0, 1)][2 ix + (0, 1)]: two
 * float2 stores (F2) or four floats. A flat loop over every input of every plane (not a plane per
 * grid row: a 7x7 plane would leave 207 of a block's 256 threads idle). */
template <bool F2>
static __global__ void upsample2x_kernel(float *y, const float *x, size_t NC, int H, int W) {
    const int W2 = 2 * W;
    const size_t per = (size_t)H * W;
    GRID_STRIDE(i, NC * per) {
        const size_t nc = i / per;
        const int r = (int)(i - nc * per), iy = r / W, ix = r - iy * W;
        const float v = x[i];
        float *y0 = y + nc * 4 * per + (size_t)(2 * iy) * W2 + 2 * ix, *y1 = y0 + W2;
        if (F2) {
            *(float2 *)y0 = make_float2(v, v);
            *(float2 *)y1 = make_float2(v, v);
        } else {
            y0[0] = v;
            y0[1] = v;
            y1[0] = v;
            y1[1] = v;
        }
    }
}

/* one thread per input: the four values it was copied to, summed in the CPU's order */
static __global__ void upsample2x_backward_kernel(float *dx, const float *dy, size_t NC, int H,
                                                  int W) {
    const int W2 = 2 * W;
    const size_t per = (size_t)H * W;
    GRID_STRIDE(i, NC * per) {
        const size_t nc = i / per;
        const int r = (int)(i - nc * per), iy = r / W, ix = r - iy * W;
        const float *r0 = dy + nc * 4 * per + (size_t)(2 * iy) * W2, *r1 = r0 + W2;
        dx[i] += (r0[2 * ix] + r0[2 * ix + 1]) + (r1[2 * ix] + r1[2 * ix + 1]);
    }
}

int dd_cuda_upsample2x_forward(float *y, const float *x, int N, int C, int H, int W) {
    const size_t NC = (size_t)N * C, per = (size_t)H * W;
    if (!NC || !per) return 0;
    if (per > INT_MAX) return dd_error("upsample2x: %dx%d, too large a plane", H, W);
    if (aligned(y, 8))
        upsample2x_kernel<true><<<blocks_for(NC * per), THREADS, 0, dd_cuda_stream>>>(y, x, NC, H,
                                                                                    W);
    else
        upsample2x_kernel<false><<<blocks_for(NC * per), THREADS, 0, dd_cuda_stream>>>(y, x, NC,
                                                                                     H, W);
    DD_CUDA_LAUNCHED("upsample2x_forward");
    return 0;
}

int dd_cuda_upsample2x_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    const size_t NC = (size_t)N * C, per = (size_t)H * W;
    if (!dx || !NC || !per) return 0;
    if (per > INT_MAX) return dd_error("upsample2x: %dx%d, too large a plane", H, W);
    upsample2x_backward_kernel<<<blocks_for(NC * per), THREADS, 0, dd_cuda_stream>>>(dx, dy, NC,
                                                                                   H, W);
    DD_CUDA_LAUNCHED("upsample2x_backward");
    return 0;
}

/* Index (0..3, row-major in the window) of the first maximum of a 2x2 window whose top-left is
 * p (row stride W); a later value wins only when strictly greater, as on the CPU. */
static __device__ __forceinline__ int argmax4(const float *p, int W) {
    const float v[4] = {p[0], p[1], p[W], p[W + 1]};
    int k = 0;
    for (int q = 1; q < 4; q++)
        if (v[q] > v[k]) k = q;
    return k;
}

/* one thread per output; floor: an odd last row or column is never read */
static __global__ void maxpool_kernel(float *y, const float *x, size_t NC, int H, int W) {
    const int Ho = H / 2, Wo = W / 2;
    const size_t per = (size_t)Ho * Wo, n = NC * per;
    GRID_STRIDE(i, n) {
        const size_t nc = i / per, r = i - nc * per;
        const int oy = (int)(r / Wo), ox = (int)(r % Wo);
        const float *p = x + nc * H * W + (size_t)(2 * oy) * W + 2 * ox;
        const int k = argmax4(p, W);
        y[i] = p[(k >> 1) * W + (k & 1)];
    }
}

/* one thread per output: windows do not overlap, so each input gets at most one write */
static __global__ void maxpool_backward_kernel(float *dx, const float *dy, const float *x,
                                               size_t NC, int H, int W) {
    const int Ho = H / 2, Wo = W / 2;
    const size_t per = (size_t)Ho * Wo, n = NC * per;
    GRID_STRIDE(i, n) {
        const size_t nc = i / per, r = i - nc * per;
        const int oy = (int)(r / Wo), ox = (int)(r % Wo);
        const size_t o = nc * H * W + (size_t)(2 * oy) * W + 2 * ox;
        const int k = argmax4(x + o, W);
        dx[o + (size_t)(k >> 1) * W + (k & 1)] += dy[i];
    }
}

int dd_cuda_maxpool2x2_forward(float *y, const float *x, int N, int C, int H, int W) {
    const size_t NC = (size_t)N * C, n = NC * (H / 2) * (W / 2);
    if (!n) return 0;
    maxpool_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(y, x, NC, H, W);
    DD_CUDA_LAUNCHED("maxpool2x2_forward");
    return 0;
}

int dd_cuda_maxpool2x2_backward(float *dx, const float *dy, const float *x, int N, int C, int H,
                                int W) {
    const size_t NC = (size_t)N * C, n = NC * (H / 2) * (W / 2);
    if (!dx || !n) return 0;
    maxpool_backward_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(dx, dy, x, NC, H, W);
    DD_CUDA_LAUNCHED("maxpool2x2_backward");
    return 0;
}

/* ---------------------------------------------------------------- embedding */

static __global__ void embedding_kernel(float *y, const float *table, const int32_t *idx, int N,
                                        int dim, int base) {
    const size_t n_all = (size_t)N * dim;
    GRID_STRIDE(i, n_all) {
        const size_t n = i / dim, k = i - n * dim;
        y[i] = table[(size_t)(idx[n] - base) * dim + k];
    }
}

/* Two samples may share a row (labels repeat in every batch), so a thread per sample would race.
 * One thread per table element (r, k) instead adds the dy rows of the samples that use row r,
 * in sample order: no race, no atomics, and the CPU's order of additions, so the same bits. Each
 * thread reads all N indices (one address across a warp: a broadcast), so the work is
 * rows * dim * N: right for the class tables (a few rows), too much for a huge table. */
static __global__ void embedding_backward_rows_kernel(float *dtable, const float *dy,
                                                      const int32_t *idx, int N, int rows,
                                                      int dim, int base) {
    const size_t n_all = (size_t)rows * dim;
    GRID_STRIDE(i, n_all) {
        const int r = (int)(i / dim), k = (int)(i - (size_t)r * dim);
        float acc = dtable[i];
        for (int n = 0; n < N; n++)
            if (idx[n] - base == r) acc += dy[(size_t)n * dim + k];
        dtable[i] = acc;
    }
}

/* The large-table path: one thread per dy element, atomic adds (correct with repeated rows, but
 * the order of the additions, hence the last bits, is not fixed). */
static __global__ void embedding_backward_atomic_kernel(float *dtable, const float *dy,
                                                        const int32_t *idx, int N, int dim,
                                                        int base) {
    const size_t n_all = (size_t)N * dim;
    GRID_STRIDE(i, n_all) {
        const size_t n = i / dim, k = i - n * dim;
        atomicAdd(&dtable[(size_t)(idx[n] - base) * dim + k], dy[i]);
    }
}

/* rows * dim * N at most this for the deterministic path (~70M simple iterations, tens of us) */
#define EMB_ROWS_WORK_MAX ((size_t)1 << 26)

int dd_cuda_embedding_forward(float *y, const float *table, const int32_t *idx, int N, int rows,
                              int dim, int base) {
    (void)rows; /* indices were validated by the graph */
    const size_t n = (size_t)N * dim;
    if (!n) return 0;
    embedding_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(y, table, idx, N, dim, base);
    DD_CUDA_LAUNCHED("embedding_forward");
    return 0;
}

int dd_cuda_embedding_backward(float *dtable, const float *dy, const int32_t *idx, int N, int rows,
                               int dim, int base) {
    const size_t n = (size_t)N * dim, nt = (size_t)rows * dim;
    if (!dtable || !n || !nt) return 0;
    if (nt * (size_t)N <= EMB_ROWS_WORK_MAX) {
        embedding_backward_rows_kernel<<<blocks_for(nt), THREADS, 0, dd_cuda_stream>>>(
            dtable, dy, idx, N, rows, dim, base);
    } else {
        embedding_backward_atomic_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(
            dtable, dy, idx, N, dim, base);
    }
    DD_CUDA_LAUNCHED("embedding_backward");
    return 0;
}

/* ---------------------------------------------------------------- group norm */

/* dL/dz from dL/dy, recomputing z = gamma xhat + shift (the pre-activation) when swish is fused */
static __device__ __forceinline__ float gn_dz(float dy, float xhat, float gm, float sh, int swish) {
    return swish ? dy * dd_swish_grad(gm * xhat + sh) : dy;
}

/* One block per (n, g) over its M = Cg*HW values: mean, then the centred sum of squares (two
 * passes, sums in double, as on the CPU), then y (+ res: a rounded add of its own, as the CPU's,
 * not contracted into the swish's product). The group's values are read from memory once: a
 * thread keeps its (up to V) values in registers for the three passes when the group fits
 * (M <= V blockDim: every group of the UNets), else it reads them again. With the values in
 * registers, a thread sums its V (8 to 32) values in float and only the threads' sums are added
 * in double: the double sums cost a conversion and a double add an element in each pass, the
 * conversion at an eighth of the FP32 rate, while a float sum of 32 values is off by a few units
 * in the last place, far inside the tests' 1e-5 (session 11; verified on an H200 in session 17).
 * Each channel's gamma and shift (beta + add) are staged once in shared memory, and the channel
 * of an element is stepped along with its index instead of divided out.
 * The kernel is bound by instructions, not by memory (ncu on an H200, 8 warps a group: 0.8
 * instructions issued a cycle per scheduler, 25% of memory bandwidth): what a block does once
 * (two block sums, the double square root and division) every warp repeats, so a group should
 * get as few warps as hold its values, up to where fewer threads lose more latency than they
 * save instructions: where that is, the GPU measures per shape (gn_fwd_cfgs below). */
#define GN_FWD_CG_MAX 256 /* channels a group whose gamma and shift are staged in shared memory */
/* S: x and res at batch strides xs and rs of their own (dd_gn_shape); without, both are packed
 * and the strides unread, so the packed kernels compile as they did before strides existed
 * (with the strides always read, the float4 one took up to 23 more registers) */
template <int V, bool S> /* V: values a thread keeps in registers */
static __global__ void __launch_bounds__(THREADS)
    gn_forward_kernel(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                      const float *beta, const float *add, const float *res, int C, int HW, int G,
                      int swish, float eps, size_t xs, size_t rs) {
    __shared__ double sh[64]; /* the two sums' warp partials */
    __shared__ float sgm[GN_FWD_CG_MAX], ssh[GN_FWD_CG_MAX];
    const int ng = blockIdx.x, n = ng / G, g = ng - n * G, Cg = C / G;
    const int T = blockDim.x, tid = threadIdx.x;
    const int M = Cg * HW; /* the host keeps it under 2^31 */
    const size_t base = ((size_t)n * C + (size_t)g * Cg) * HW, gof = (size_t)g * Cg * HW;
    const float *xg = S ? x + (size_t)n * xs + gof : x + base;
    float *yg = y + base;
    const float *rg = !res ? NULL : S ? res + (size_t)n * rs + gof : res + base;
    const float *addn = add ? add + (size_t)n * C + (size_t)g * Cg : NULL;
    const bool cached = M <= V * T, staged = Cg <= GN_FWD_CG_MAX; /* uniform */
    if (staged)
        for (int cc = tid; cc < Cg; cc += T) { /* read after block_sum_once's barrier */
            sgm[cc] = gamma[g * Cg + cc];
            ssh[cc] = beta[g * Cg + cc] + (addn ? addn[cc] : 0.0f);
        }

    float v[V];
    double s = 0.0;
    if (cached) {
        float sf = 0.0f; /* a thread's V values in float, the threads' sums in double */
#pragma unroll
        for (int j = 0; j < V; j++) {
            const int i = tid + j * T;
            v[j] = i < M ? xg[i] : 0.0f;
            sf += v[j];
        }
        s = sf;
    } else {
        for (int i = tid; i < M; i += T) s += xg[i];
    }
    const double mu = block_sum_once(s, sh) / (double)M;
    const float m = (float)mu;
    double q = 0.0;
    if (cached) {
        /* about the float mean (the one y uses): the sum of squares exceeds the one about mu by
         * M (m - mu)^2, below float rounding of the variance */
        float qf = 0.0f;
#pragma unroll
        for (int j = 0; j < V; j++) {
            const float d = tid + j * T < M ? v[j] - m : 0.0f;
            qf = fmaf(d, d, qf);
        }
        q = qf;
    } else {
        for (int i = tid; i < M; i += T) {
            const double d = xg[i] - mu;
            q += d * d;
        }
    }
    const double var = block_sum_once(q, sh + 32) / (double)M;
    const float r = (float)(1.0 / sqrt(var + (double)eps));
    if (tid == 0) {
        mean[ng] = m;
        rstd[ng] = r;
    }
    /* element i = tid + j T is channel cc, position p; a step of T is cstep channels, pstep
     * positions */
    int cc = tid / HW, p = tid - cc * HW;
    const int cstep = T / HW, pstep = T - cstep * HW;
    auto put = [&](int i, float xv) {
        const float gm = staged ? sgm[cc] : gamma[g * Cg + cc];
        const float shift = staged ? ssh[cc] : beta[g * Cg + cc] + (addn ? addn[cc] : 0.0f);
        const float z = gm * ((xv - m) * r) + shift;
        const float o = swish ? dd_swish(z) : z;
        yg[i] = rg ? __fadd_rn(o, rg[i]) : o;
        cc += cstep;
        p += pstep;
        if (p >= HW) {
            p -= HW;
            cc++;
        }
    };
    if (cached) {
#pragma unroll
        for (int j = 0; j < V; j++)
            if (tid + j * T < M) put(tid + j * T, v[j]);
    } else {
        for (int i = tid; i < M; i += T) put(i, xg[i]);
    }
}

/* gn_forward_kernel's cached path with the group read and written as float4 (a quarter of the
 * load and store instructions, for a kernel bound by instructions): a thread keeps V4 float4s.
 * Needs M % 4 == 0 (so every group starts on a float4), x, y and res 16-byte aligned (and their
 * batch strides whole float4s), Cg <=
 * GN_FWD_CG_MAX and M <= 4 V4 blockDim (gn_fwd_applies and gn_fwd_run check). The same sums per
 * thread in float and across threads in double, and the same per-element formulas. */
template <int V4, bool S> /* S: as gn_forward_kernel's */
static __global__ void __launch_bounds__(THREADS)
    gn_forward_vec_kernel(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, const float *add, const float *res, int C, int HW,
                          int G, int swish, float eps, size_t xs, size_t rs) {
    __shared__ double sh[64];
    __shared__ float sgm[GN_FWD_CG_MAX], ssh[GN_FWD_CG_MAX];
    const int ng = blockIdx.x, n = ng / G, g = ng - n * G, Cg = C / G;
    const int T = blockDim.x, tid = threadIdx.x;
    const int M = Cg * HW, M4 = M >> 2;
    const size_t base = ((size_t)n * C + (size_t)g * Cg) * HW, gof = (size_t)g * Cg * HW;
    const float4 *xg = reinterpret_cast<const float4 *>(S ? x + (size_t)n * xs + gof : x + base);
    float4 *yg = reinterpret_cast<float4 *>(y + base);
    const float4 *rg = !res ? NULL
                       : reinterpret_cast<const float4 *>(S ? res + (size_t)n * rs + gof : res + base);
    const float *addn = add ? add + (size_t)n * C + (size_t)g * Cg : NULL;
    for (int cc = tid; cc < Cg; cc += T) { /* read after block_sum_once's barrier */
        sgm[cc] = gamma[g * Cg + cc];
        ssh[cc] = beta[g * Cg + cc] + (addn ? addn[cc] : 0.0f);
    }
    float4 v[V4];
    float sf = 0.0f;
#pragma unroll
    for (int j = 0; j < V4; j++) {
        const int q = tid + j * T;
        v[j] = q < M4 ? xg[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        sf += v[j].x;
        sf += v[j].y;
        sf += v[j].z;
        sf += v[j].w;
    }
    const double mu = block_sum_once((double)sf, sh) / (double)M;
    const float m = (float)mu;
    float qf = 0.0f;
#pragma unroll
    for (int j = 0; j < V4; j++)
        if (tid + j * T < M4) {
            float d = v[j].x - m;
            qf = fmaf(d, d, qf);
            d = v[j].y - m;
            qf = fmaf(d, d, qf);
            d = v[j].z - m;
            qf = fmaf(d, d, qf);
            d = v[j].w - m;
            qf = fmaf(d, d, qf);
        }
    const double var = block_sum_once((double)qf, sh + 32) / (double)M;
    const float r = (float)(1.0 / sqrt(var + (double)eps));
    if (tid == 0) {
        mean[ng] = m;
        rstd[ng] = r;
    }
    /* the first element of float4 q = tid + j T is 4q: channel cc, position p; a step of T
     * float4s is cstep channels and pstep positions */
    int cc = 4 * tid / HW, p = 4 * tid - cc * HW;
    const int cstep = 4 * T / HW, pstep = 4 * T - cstep * HW;
#pragma unroll
    for (int j = 0; j < V4; j++) {
        const int q = tid + j * T;
        if (q < M4) {
            float o[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
            int ce = cc, pe = p;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                if (pe >= HW) {
                    pe -= HW;
                    ce++;
                }
                const float z = sgm[ce] * ((o[e] - m) * r) + ssh[ce];
                o[e] = swish ? dd_swish(z) : z;
                pe++;
            }
            if (rg) {
                const float4 rv = rg[q];
                o[0] = __fadd_rn(o[0], rv.x);
                o[1] = __fadd_rn(o[1], rv.y);
                o[2] = __fadd_rn(o[2], rv.z);
                o[3] = __fadd_rn(o[3], rv.w);
            }
            yg[q] = make_float4(o[0], o[1], o[2], o[3]);
        }
        cc += cstep;
        p += pstep;
        if (p >= HW) {
            p -= HW;
            cc++;
        }
    }
}

/* Launch configurations of gn_forward_kernel: V values a thread in registers, T threads a block
 * (one block a group). Which is fastest depends on the group size M and the card, and guessing
 * it has cost before (ncu on an H200 at batch 256, us a group-norm: 2 warps of 8 values beat 4
 * at M = 392, 7.7 against 9.8; 2 warps of 16 beat 7 of 4 at M = 784, 11.5 against 15.4; but 2
 * warps of 32 lost to 8 of 8 at M = 1568, 27 against 19.6), so the GPU decides: for each new
 * shape, outside a capture, every configuration that holds the group (per T, the smallest V with
 * V T >= M) is timed on scratch buffers and the fastest kept, once its output matched the fixed
 * choice's (GN_FWD_FIXED). The last entry reads the values again (groups over 8192 values). */
typedef struct {
    int V, T, vec; /* vec: gn_forward_vec_kernel (V / 4 float4s a thread) */
    const char *name;
} gn_fwd_cfg;
static const gn_fwd_cfg gn_fwd_cfgs[] = {
    {8, 32, 0, "t32v8"},    {16, 32, 0, "t32v16"},   {32, 32, 0, "t32v32"},
    {64, 32, 0, "t32v64"},  {8, 64, 0, "t64v8"},     {16, 64, 0, "t64v16"},
    {32, 64, 0, "t64v32"},  {64, 64, 0, "t64v64"},   {8, 128, 0, "t128v8"},
    {16, 128, 0, "t128v16"}, {32, 128, 0, "t128v32"}, {64, 128, 0, "t128v64"},
    {8, 256, 0, "t256v8"},  {16, 256, 0, "t256v16"}, {32, 256, 0, "t256v32"},
    {8, 32, 1, "t32q8"},    {16, 32, 1, "t32q16"},   {32, 32, 1, "t32q32"},
    {64, 32, 1, "t32q64"},  {8, 64, 1, "t64q8"},     {16, 64, 1, "t64q16"},
    {32, 64, 1, "t64q32"},  {64, 64, 1, "t64q64"},   {8, 128, 1, "t128q8"},
    {16, 128, 1, "t128q16"}, {32, 128, 1, "t128q32"}, {64, 128, 1, "t128q64"},
    {8, 256, 1, "t256q8"},  {16, 256, 1, "t256q16"}, {32, 256, 1, "t256q32"},
    {0, 256, 0, "reread"},
};
#define GN_FWD_CFGS ((int)(sizeof gn_fwd_cfgs / sizeof gn_fwd_cfgs[0]))
#define GN_FWD_REREAD (GN_FWD_CFGS - 1)

static int gn_cfg_find(int V, int T) {
    for (int i = 0; i < GN_FWD_CFGS; i++)
        if (gn_fwd_cfgs[i].V == V && gn_fwd_cfgs[i].T == T && !gn_fwd_cfgs[i].vec) return i;
    return GN_FWD_REREAD;
}

/* The untimed choice (session 10's rules): 2 warps of 8 or 16 values a thread up to 1024
 * values, then 8 warps of 8, 16 or 32, else (over 8192 values) 8 warps reading the values
 * again. */
static int gn_fwd_fixed(size_t M) {
    if (M <= 8 * 64) return gn_cfg_find(8, 64);
    if (M <= 16 * 64) return gn_cfg_find(16, 64);
    if (M <= 8 * THREADS) return gn_cfg_find(8, THREADS);
    if (M <= 16 * THREADS) return gn_cfg_find(16, THREADS);
    if (M <= 32 * THREADS) return gn_cfg_find(32, THREADS);
    return GN_FWD_REREAD;
}

/* Whether configuration c runs the shape's groups as itself: it holds them (and is the smallest
 * V of its T that does; a float4 one only for groups of whole float4s, their gamma and shift
 * staged), or it is the re-reading one and nothing holds them. (A float4 one given unaligned
 * buffers runs the fixed choice instead: gn_fwd_run.) */
static int gn_fwd_applies(int c, const dd_gn_shape *s) {
    const gn_fwd_cfg *f = &gn_fwd_cfgs[c];
    const size_t M = (size_t)(s->C / s->G) * s->HW;
    if (c == GN_FWD_REREAD) return M > 32 * THREADS;
    if (f->vec && (M % 4 || s->C / s->G > GN_FWD_CG_MAX)) return 0;
    return M <= (size_t)f->V * f->T && (f->V == 8 || M > (size_t)f->V / 2 * f->T);
}

static int gn_fwd_run(int c, const dd_gn_shape *s, float *y, float *mean, float *rstd,
                      const float *x, const float *gamma, const float *beta, const float *add,
                      const float *res) {
    const unsigned int blocks = (unsigned int)(s->N * s->G);
    const int T = gn_fwd_cfgs[c].T;
    const bool strided = s->xs || s->rs;
#define GN_FWD_ARGS                                                                               \
    y, mean, rstd, x, gamma, beta, add, res, s->C, s->HW, s->G, s->swish, s->eps, dd_gn_xs(s),    \
        dd_gn_rs(s)
    if (gn_fwd_cfgs[c].vec) {
        if ((((uintptr_t)x | (uintptr_t)y | (uintptr_t)res) & 15) || (dd_gn_xs(s) | dd_gn_rs(s)) & 3)
            c = gn_fwd_fixed((size_t)(s->C / s->G) * s->HW); /* not float4-aligned */
        else {
#define GN_VEC_LAUNCH(V4)                                                                         \
    if (strided)                                                                                  \
        gn_forward_vec_kernel<V4, true><<<blocks, T, 0, dd_cuda_stream>>>(GN_FWD_ARGS);           \
    else                                                                                          \
        gn_forward_vec_kernel<V4, false><<<blocks, T, 0, dd_cuda_stream>>>(GN_FWD_ARGS)
            switch (gn_fwd_cfgs[c].V) {
            case 8: GN_VEC_LAUNCH(2); break;
            case 16: GN_VEC_LAUNCH(4); break;
            case 32: GN_VEC_LAUNCH(8); break;
            default: GN_VEC_LAUNCH(16); break;
            }
#undef GN_VEC_LAUNCH
            DD_CUDA_LAUNCHED("group_norm_forward");
            return 0;
        }
    }
#define GN_FWD_LAUNCH(V)                                                                          \
    if (strided)                                                                                  \
        gn_forward_kernel<V, true><<<blocks, T, 0, dd_cuda_stream>>>(GN_FWD_ARGS);                \
    else                                                                                          \
        gn_forward_kernel<V, false><<<blocks, T, 0, dd_cuda_stream>>>(GN_FWD_ARGS)
    switch (gn_fwd_cfgs[c].V) {
    case 8: GN_FWD_LAUNCH(8); break;
    case 16: GN_FWD_LAUNCH(16); break;
    case 64: GN_FWD_LAUNCH(64); break;
    default: GN_FWD_LAUNCH(32); break; /* 32, and the re-reading one (M > 32 T: not cached) */
    }
#undef GN_FWD_LAUNCH
#undef GN_FWD_ARGS
    DD_CUDA_LAUNCHED("group_norm_forward");
    return 0;
}

/* The policy: DIFFUSION_GN = auto (default: time per shape) | fixed (gn_fwd_fixed, untimed) |
 * a configuration's name (used wherever it holds the groups, else the fixed choice). */
#define GN_POLICY_AUTO (-1)
#define GN_POLICY_FIXED (-2)
static int gn_policy = GN_POLICY_AUTO, gn_policy_read = 0, gn_log = -1;

typedef struct {
    dd_gn_shape s;
    int has_add, has_res, cfg;
} gn_choice;
#define GN_CHOICES_MAX 256 /* shapes timed; later ones take the fixed rule */
static gn_choice gn_choices[GN_CHOICES_MAX];
static int gn_nchoices = 0;

/* forward configurations first, then the backward's (gn_bwd_cfgs below) */
static const char *gn_bwd_name(int i);
static void gn_bwd_forget(void);
const char *dd_cuda_gn_config_name(int i) {
    if (i >= 0 && i < GN_FWD_CFGS) return gn_fwd_cfgs[i].name;
    return gn_bwd_name(i - GN_FWD_CFGS);
}

int dd_cuda_gn_set_policy(const char *p) {
    int v;
    if (!p || !strcmp(p, "auto")) v = GN_POLICY_AUTO;
    else if (!strcmp(p, "fixed")) v = GN_POLICY_FIXED;
    else {
        v = -3;
        for (int i = 0; dd_cuda_gn_config_name(i); i++)
            if (!strcmp(p, dd_cuda_gn_config_name(i))) v = i;
        if (v == -3) {
            char names[1024];
            size_t k = 0;
            for (int i = 0; dd_cuda_gn_config_name(i) && k < sizeof names; i++)
                k += (size_t)snprintf(names + k, sizeof names - k, ", %s",
                                      dd_cuda_gn_config_name(i));
            return dd_error("DIFFUSION_GN=%s: expected auto, fixed%s", p, names);
        }
    }
    gn_policy = v;
    gn_policy_read = 1;
    gn_nchoices = 0; /* forget every shape's choice, forward and backward */
    gn_bwd_forget();
    return 0;
}


static int same_gn(const gn_choice *c, const dd_gn_shape *s, int has_add, int has_res) {
    return c->s.N == s->N && c->s.C == s->C && c->s.HW == s->HW && c->s.G == s->G &&
           c->s.swish == s->swish && c->has_add == has_add && c->has_res == has_res;
}

/* DIFFUSION_GN_LOG and DIFFUSION_GN, read once (DIFFUSION_GN also at the backend's start,
 * where a bad value fails at once) */
static int gn_settings(void) {
    if (gn_log < 0) {
        const char *log = getenv("DIFFUSION_GN_LOG");
        gn_log = log && log[0] && strcmp(log, "0");
    }
    if (!gn_policy_read) {
        const char *env = getenv("DIFFUSION_GN");
        DD_TRY(dd_cuda_gn_set_policy(env && env[0] ? env : "auto"));
    }
    return 0;
}

/* After a failed timing of `pass`'s configurations: -1 when the GPU faulted (a fault inside a
 * kernel stays with the context: the run cannot go on), else 0 after a warning (the caller takes
 * the fixed choice). */
static int gn_tune_failed(const char *pass) {
    const cudaError_t st = cudaStreamSynchronize(dd_cuda_stream);
    (void)cudaGetLastError();
    if (st != cudaSuccess) {
        dd_error_prefix("%s: the GPU faulted (%s) while its configurations were timed "
                        "(DIFFUSION_GN=fixed leaves the timing out)",
                        pass, cudaGetErrorString(st));
        dd_cuda_note_fault(dd_error_message());
        return -1;
    }
    fprintf(stderr, "diffusion: warning: timing the %s configurations failed (%s); the fixed "
                    "choice is used\n",
            pass, dd_error_message());
    dd_error_clear();
    return 0;
}

#define GN_TIMING_REPS 6
#define GN_TIMING_SPIN 2000000LL /* clocks (~1 ms): longer than enqueuing the timed calls */

/* One cudaMalloc for the tuners' scratch: part i is parts[i] floats at p[i] (256-byte aligned).
 * Out of memory: *base NULL and 0, after a warning naming `what` (the caller keeps the fixed
 * choice); -1 on any other error (an earlier fault, say). At most 24 parts. */
static int gn_scratch(const size_t *parts, int np, float **p, void **base, const char *what) {
    size_t off[24], total = 0;
    if (np > 24) return dd_error("gn_scratch: %d parts, at most 24", np);
    for (int i = 0; i < np; i++) {
        off[i] = total;
        total += (parts[i] * sizeof(float) + 255) / 256 * 256;
    }
    *base = NULL;
    const cudaError_t err = cudaMalloc(base, total);
    if (err != cudaSuccess && err != cudaErrorMemoryAllocation)
        return dd_cuda_fail(__FILE__, __LINE__, "cudaMalloc", err);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        *base = NULL;
        fprintf(stderr, "diffusion: warning: no GPU memory to time the %s (%.1f MiB): %s; the "
                        "fixed choice is used\n",
                what, (double)total / 1048576.0, cudaGetErrorString(err));
        return 0;
    }
    for (int i = 0; i < np; i++) p[i] = (float *)((char *)*base + off[i]);
    return 0;
}

/* *e = the largest max|out - ref| / max|ref| over the k outputs given (outs[o] NULL: left out);
 * diff is 2 floats of device scratch */
static int gn_max_rel(const float *const *outs, const float *const *refs, const size_t *cnt,
                      int k, float *diff, double *e) {
    *e = 0.0;
    for (int o = 0; o < k; o++) {
        if (!outs[o]) continue;
        float d[2];
        DD_TRY(dd_conv_maxdiff(d, outs[o], refs[o], cnt[o], diff));
        const double rel = d[1] > 0.0f ? (double)d[0] / d[1] : d[0] == 0.0f ? 0.0 : INFINITY;
        if (!(rel <= *e)) *e = rel;
    }
    return 0;
}

/* The loop both tuners share: per candidate, check(c, &err) makes one call and measures it
 * against the fixed configuration's output (over 1e-5: named in a warning and left out), then
 * GN_TIMING_REPS calls run(c) are timed after a spin; the fastest that agrees goes to *cfg.
 * DIFFUSION_GN_LOG prints `head` with each candidate's time and the choice. `pass` names the
 * configurations in messages, `shape` the shape. -1 on a failed call (*cfg is then fixed). */
template <class Run, class Check>
static int gn_tune_loop(const char *pass, const char *shape, const char *head, const int *cand,
                        int nc, int fixed, const char *(*name)(int), Run run, Check check,
                        int *cfg) {
    cudaEvent_t ev[2] = {NULL, NULL};
    float times[64], best_ms = INFINITY;
    char bad[256] = "";
    int rc = -1;
    *cfg = fixed;
    if (cudaEventCreate(&ev[0]) != cudaSuccess || cudaEventCreate(&ev[1]) != cudaSuccess) {
        dd_error("cudaEventCreate failed");
        goto done;
    }
    for (int k = 0; k < nc; k++) {
        const int c = cand[k];
        times[k] = INFINITY;
        double e = 0.0;
        if (check(c, &e)) goto done;
        if (!(e <= 1e-5)) {
            size_t b = strlen(bad);
            snprintf(bad + b, sizeof bad - b, "%s%s: max rel err %.2e", b ? ", " : "", name(c), e);
            continue;
        }
        if (dd_conv_spin(GN_TIMING_SPIN)) goto done;
        if (cudaEventRecord(ev[0], dd_cuda_stream) != cudaSuccess) goto failed_event;
        for (int i = 0; i < GN_TIMING_REPS; i++)
            if (run(c)) goto done;
        if (cudaEventRecord(ev[1], dd_cuda_stream) != cudaSuccess ||
            cudaEventSynchronize(ev[1]) != cudaSuccess)
            goto failed_event;
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, ev[0], ev[1]) != cudaSuccess) goto failed_event;
        times[k] = ms / GN_TIMING_REPS;
        if (times[k] < best_ms) {
            best_ms = times[k];
            *cfg = c;
        }
    }
    rc = 0;
    if (gn_log > 0) {
        char line[1024];
        size_t k = (size_t)snprintf(line, sizeof line, "%s", head);
        for (int j = 0; j < nc && k < sizeof line; j++)
            k += (size_t)snprintf(line + k, sizeof line - k, " %s %.1f%s", name(cand[j]),
                                  1e3 * times[j], cand[j] == fixed ? " (fixed)" : "");
        fprintf(stderr, "%s -> %s\n", line, name(*cfg));
    }
    if (bad[0])
        fprintf(stderr, "diffusion: warning: %s: configurations disagree with the fixed one (%s); "
                        "they are not used\n",
                shape, bad);
    goto done;
failed_event:
    dd_error("timing the %s configurations: %s", pass, cudaGetErrorString(cudaGetLastError()));
done:
    if (rc) *cfg = fixed;
    if (ev[0]) (void)cudaEventDestroy(ev[0]);
    if (ev[1]) (void)cudaEventDestroy(ev[1]);
    return rc;
}

static const char *gn_fwd_name(int c) { return gn_fwd_cfgs[c].name; }

/* Times every configuration that applies to the shape on scratch buffers (never the caller's:
 * a group norm may run in place) and returns the fastest that agrees with the fixed one
 * (max |y - y_fixed| / max |y_fixed| and the same for mean and rstd within 1e-5); *cfg stays the
 * fixed choice when nothing else applies. -1 on a failed call. */
static int gn_fwd_tune(const dd_gn_shape *shape_in, int has_add, int has_res, int *cfg) {
    /* timed packed: a batch stride changes where a group is, not what reading it costs (the
     * float4 configurations are checked against the strides when they run: gn_fwd_run) */
    dd_gn_shape packed = *shape_in;
    packed.xs = packed.rs = 0;
    const dd_gn_shape *s = &packed;
    const size_t M = (size_t)(s->C / s->G) * s->HW, n = (size_t)s->N * s->C * s->HW,
                 nng = (size_t)s->N * s->G, nnc = (size_t)s->N * s->C;
    const int fixed = gn_fwd_fixed(M);
    *cfg = fixed;
    int cand[GN_FWD_CFGS], nc = 0;
    for (int c = 0; c < GN_FWD_CFGS; c++)
        if (gn_fwd_applies(c, s)) cand[nc++] = c;
    if (nc < 2) return 0;
    /* x, res, y, y_fixed (n each); add (N C); gamma, beta (C); mean, rstd and their fixed
     * copies (N G); 2 floats for dd_conv_maxdiff */
    const size_t parts[] = {n, n, n, n, nnc, (size_t)s->C, (size_t)s->C, nng, nng, nng, nng, 2};
    float *p[sizeof parts / sizeof parts[0]];
    void *base;
    DD_TRY(gn_scratch(parts, (int)(sizeof parts / sizeof parts[0]), p, &base, "group norms"));
    if (!base) return 0;
    float *x = p[0], *res = p[1], *y = p[2], *yf = p[3], *add = p[4], *gamma = p[5], *beta = p[6],
          *mean = p[7], *rstd = p[8], *meanf = p[9], *rstdf = p[10], *diff = p[11];
    const float *a = has_add ? add : NULL, *r = has_res ? res : NULL;
    char shape[96], head[160];
    snprintf(shape, sizeof shape, "group_norm N=%d C=%d HW=%d G=%d", s->N, s->C, s->HW, s->G);
    snprintf(head, sizeof head, "diffusion: %s%s%s%s, us:", shape, s->swish ? " swish" : "",
             has_add ? " +add" : "", has_res ? " +res" : "");
    auto run = [&](int c) { return gn_fwd_run(c, s, y, mean, rstd, x, gamma, beta, a, r); };
    auto check = [&](int c, double *e) { /* its output against the fixed choice's */
        const float *outs[3] = {y, mean, rstd}, *refs[3] = {yf, meanf, rstdf};
        const size_t cnt[3] = {n, nng, nng};
        DD_TRY(run(c));
        return gn_max_rel(outs, refs, cnt, 3, diff, e);
    };
    int rc = -1;
    if (!dd_conv_fill(x, n, 11u) && !dd_conv_fill(res, n, 12u) && !dd_conv_fill(add, nnc, 13u) &&
        !dd_conv_fill(gamma, (size_t)s->C, 14u) && !dd_conv_fill(beta, (size_t)s->C, 15u) &&
        !gn_fwd_run(fixed, s, yf, meanf, rstdf, x, gamma, beta, a, r))
        rc = gn_tune_loop("group norm", shape, head, cand, nc, fixed, gn_fwd_name, run, check, cfg);
    if (rc) {
        *cfg = fixed;
        (void)cudaStreamSynchronize(dd_cuda_stream);
    }
    (void)cudaFree(base);
    return rc;
}

/* The configuration for the shape: the policy's, or (auto) the cached timed choice, timing it
 * now when outside a capture; inside one an untimed shape takes the fixed choice. */
static int gn_fwd_config(const dd_gn_shape *s, int has_add, int has_res, int *cfg) {
    const size_t M = (size_t)(s->C / s->G) * s->HW;
    DD_TRY(gn_settings());
    if (gn_policy == GN_POLICY_FIXED) {
        *cfg = gn_fwd_fixed(M);
        return 0;
    }
    if (gn_policy >= 0) { /* a backward configuration's name: the forward's fixed rule */
        *cfg = gn_policy < GN_FWD_CFGS && gn_fwd_applies(gn_policy, s) ? gn_policy
                                                                        : gn_fwd_fixed(M);
        return 0;
    }
    for (int i = 0; i < gn_nchoices; i++)
        if (same_gn(&gn_choices[i], s, has_add, has_res)) {
            *cfg = gn_choices[i].cfg;
            return 0;
        }
    if (dd_cuda_capturing() || gn_nchoices == GN_CHOICES_MAX) { /* untimed: the fixed rule */
        *cfg = gn_fwd_fixed(M);
        return 0;
    }
    if (gn_fwd_tune(s, has_add, has_res, cfg)) {
        DD_TRY(gn_tune_failed("group_norm"));
        *cfg = gn_fwd_fixed(M);
    }
    {
        gn_choice *c = &gn_choices[gn_nchoices++];
        c->s = *s;
        c->has_add = has_add;
        c->has_res = has_res;
        c->cfg = *cfg;
    }
    return 0;
}

/* The backward without its workspace (or with more than GN_FUSED_CG_MAX channels a group): two
 * kernels, each reading x and dy. Parameter gradients, one block per channel c: warp w takes
 * samples n = w, w + warps, ...; each warp reduces its (n, c) row over HW, adds it to dadd[n, c]
 * and keeps its share of the channel's sums; the warps' shares are then added in warp order
 * (deterministic, no atomics).
 * Only C blocks (16 to 192 in the UNet) each reduce N * HW values (400k at batch 512, 28x28),
 * so a block is as large as it can be (32 warps, 32 shares: shg/shb hold them) to keep more
 * loads in flight; __launch_bounds__ holds the registers to what 1024 threads may use. */
#define GN_PARAM_THREADS 1024
static __global__ void __launch_bounds__(GN_PARAM_THREADS)
    gn_backward_params_kernel(float *dgamma, float *dbeta, float *dadd, const float *dy,
                              const float *x, const float *mean, const float *rstd,
                              const float *gamma, const float *beta, const float *add, int N,
                              int C, int HW, int G, int swish, size_t xs) {
    __shared__ double shg[32], shb[32];
    const int c = blockIdx.x, g = c / (C / G);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    double sg = 0.0, sb = 0.0;
    for (int n = wid; n < N; n += nw) {
        const float m = mean[n * G + g], r = rstd[n * G + g];
        const float shift = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
        const size_t o = ((size_t)n * C + c) * HW, ox = (size_t)n * xs + (size_t)c * HW;
        double sn = 0.0, sgn = 0.0;
        for (int p = lane; p < HW; p += 32) {
            const float xh = (x[ox + p] - m) * r;
            const float dz = gn_dz(dy[o + p], xh, gamma[c], shift, swish);
            sn += dz;
            sgn += (double)dz * xh;
        }
        sn = warp_sum(sn);
        sgn = warp_sum(sgn);
        if (lane == 0 && dadd) dadd[(size_t)n * C + c] += (float)sn;
        sb += sn;
        sg += sgn;
    }
    if (lane == 0) {
        shg[wid] = sg;
        shb[wid] = sb;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double tg = 0.0, tb = 0.0;
        for (int w = 0; w < nw; w++) tg += shg[w], tb += shb[w];
        if (dgamma) dgamma[c] += (float)tg;
        if (dbeta) dbeta[c] += (float)tb;
    }
}

/* dx, one block per (n, g): dx += rstd (gdz - mean(gdz) - xhat mean(gdz xhat)), gdz = gamma dz */
static __global__ void gn_backward_dx_kernel(float *dx, const float *dy, const float *x,
                                             const float *mean, const float *rstd,
                                             const float *gamma, const float *beta,
                                             const float *add, int C, int HW, int G, int swish,
                                             size_t xs) {
    __shared__ double sh[32];
    const int ng = blockIdx.x, n = ng / G, g = ng % G, Cg = C / G;
    const size_t M = (size_t)Cg * HW, base = ((size_t)n * C + (size_t)g * Cg) * HW;
    const size_t bx = (size_t)n * xs + (size_t)g * Cg * HW; /* in x and dx */
    const float m = mean[ng], r = rstd[ng];
    double s1 = 0.0, s2 = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        const int c = g * Cg + (int)(i / HW);
        const float shift = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
        const float xh = (x[bx + i] - m) * r;
        const float gdz = gamma[c] * gn_dz(dy[base + i], xh, gamma[c], shift, swish);
        s1 += gdz;
        s2 += (double)gdz * xh;
    }
    s1 = block_sum(s1, sh);
    s2 = block_sum(s2, sh);
    const float a1 = (float)(s1 / (double)M), a2 = (float)(s2 / (double)M);
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        const int c = g * Cg + (int)(i / HW);
        const float shift = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
        const float xh = (x[bx + i] - m) * r;
        const float gdz = gamma[c] * gn_dz(dy[base + i], xh, gamma[c], shift, swish);
        dx[bx + i] += r * (gdz - a1 - xh * a2);
    }
}

/* The backward in one pass over each (n, g), as cpu/cpu_norm.c does it: one block per (n, g)
 * takes every channel's row sums sn = sum dz and sx = sum dz xhat (each element's dz, and
 * swish's exponential, computed once) while adding the dz part of dx (dx += rstd gamma dz); the
 * group sums s1 = sum_c gamma_c sn_c and s2 = sum_c gamma_c sx_c (in channel order) then give
 * dx -= rstd (s1 / M + xhat s2 / M). The row sums go to dadd[n, c] and, for dgamma and dbeta,
 * to the workspace (sx, then sn, N C doubles each), which gn_param_sums_kernel adds over n.
 * So the parameter gradients cost no second read of x and dy, and the reading is spread over
 * N G blocks instead of C (16 to 64 in the UNet, far fewer than the SMs). A residual's
 * gradient (dres += dy) is added from the same read of dy.
 * Warps share a channel's row when there are fewer channels than warps (Cg = 2 at 16 channels
 * and 8 groups); the shares meet in shared memory and are added in order, so the results do not
 * depend on timing. */

/* the most channels per group the fused backward takes (its shares fit 4 KiB of shared memory;
 * the UNets have 2 to 8); more go to the two-kernel path below */
#define GN_FUSED_CG_MAX 256

/* V: positions a lane keeps in registers (the cached path); S: as gn_forward_kernel's */
template <int V, bool S>
static __global__ void __launch_bounds__(THREADS, V == 8 ? 4 : V == 16 ? 2 : 1)
    gn_backward_fused_kernel(float *dx, double *ws, float *dadd, float *dres, const float *dy,
                             const float *x, const float *mean, const float *rstd,
                             const float *gamma, const float *beta, const float *add, int N, int C,
                             int HW, int G, int swish, size_t xs, size_t rs) {
    /* [Cg][wpc] sn shares, [Cg][wpc] sx shares, s1, s2; Cg wpc <= max(Cg, warps) */
    __shared__ double gn_sh[2 * GN_FUSED_CG_MAX + 2];
    const int ng = blockIdx.x, n = ng / G, g = ng % G, Cg = C / G;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int wpc = Cg >= nw ? 1 : nw / Cg, cpp = nw / wpc; /* warps a channel, channels a pass */
    const int wc = wid / wpc, wp = wid % wpc;
    double *shn = gn_sh, *shx = gn_sh + (size_t)Cg * wpc, *s12 = shx + (size_t)Cg * wpc;
    const size_t M = (size_t)Cg * HW, base = ((size_t)n * C + (size_t)g * Cg) * HW;
    /* where the group starts in x and dx, and in dres (dy's is base) */
    const size_t bx = S ? (size_t)n * xs + (size_t)g * Cg * HW : base;
    const size_t br = S ? (size_t)n * rs + (size_t)g * Cg * HW : base;
    const float m = mean[ng], r = rstd[ng];

    /* cached: one pass over the channels covers the group and a thread has at most V
     * positions: its xhat and partly updated dx stay in registers for the second part instead of
     * going through memory (the same roundings, so the same results) */
    const bool cached = dx && Cg <= cpp && (HW + wpc * 32 - 1) / (wpc * 32) <= V;
    float cxh[V], cdx[V];
    for (int c0 = 0; c0 < Cg; c0 += cpp) {
        const int cc = c0 + wc;
        if (wc >= cpp || cc >= Cg) continue; /* whole warps: the shuffles below stay converged */
        const int c = g * Cg + cc;
        const float gm = gamma[c];
        const float sh = beta[c] + (add ? add[(size_t)n * C + c] : 0.0f);
        const size_t o = base + (size_t)cc * HW, ox = bx + (size_t)cc * HW,
                     orr = br + (size_t)cc * HW;
        double sn = 0.0, sx = 0.0;
        if (cached) {
            /* a lane's (at most V) terms in float, the lanes' sums in double (as the
             * forward's statistics: three conversions to double an element fewer) */
            float snf = 0.0f, sxf = 0.0f;
#pragma unroll
            for (int k = 0; k < V; k++) {
                const int p = wp * 32 + lane + k * wpc * 32;
                if (p >= HW) continue;
                const float xh = (x[ox + p] - m) * r, d = dy[o + p];
                if (dres) dres[orr + p] += d;
                const float dz = gn_dz(d, xh, gm, sh, swish);
                snf += dz;
                sxf = fmaf(dz, xh, sxf);
                cxh[k] = xh;
                cdx[k] = dx[ox + p] + r * (gm * dz);
            }
            sn = snf;
            sx = sxf;
        } else {
            for (int p = wp * 32 + lane; p < HW; p += wpc * 32) {
                const float xh = (x[ox + p] - m) * r, d = dy[o + p];
                if (dres) dres[orr + p] += d;
                const float dz = gn_dz(d, xh, gm, sh, swish);
                sn += dz;
                sx += (double)dz * xh;
                if (dx) dx[ox + p] += r * (gm * dz);
            }
        }
        sn = warp_sum(sn);
        sx = warp_sum(sx);
        if (lane == 0) {
            shn[cc * wpc + wp] = sn;
            shx[cc * wpc + wp] = sx;
        }
    }
    __syncthreads();
    for (int cc = threadIdx.x; cc < Cg; cc += blockDim.x) { /* each channel's shares, in order */
        double sn = 0.0, sx = 0.0;
        for (int k = 0; k < wpc; k++) sn += shn[cc * wpc + k], sx += shx[cc * wpc + k];
        shn[cc * wpc] = sn;
        shx[cc * wpc] = sx;
        const size_t nc = (size_t)n * C + (size_t)(g * Cg + cc);
        if (dadd) dadd[nc] += (float)sn;
        if (ws) {
            ws[nc] = sx;
            ws[(size_t)N * C + nc] = sn;
        }
    }
    if (!dx) return; /* uniform: the rest is dx's */
    __syncthreads();
    if (threadIdx.x == 0) { /* the group sums, in channel order (as the CPU) */
        double s1 = 0.0, s2 = 0.0;
        for (int cc = 0; cc < Cg; cc++) {
            const double gm = gamma[g * Cg + cc];
            s1 += gm * shn[cc * wpc];
            s2 += gm * shx[cc * wpc];
        }
        s12[0] = s1;
        s12[1] = s2;
    }
    __syncthreads(); /* also orders this block's dx writes above before the reads below */
    const float a1 = (float)(s12[0] / (double)M), a2 = (float)(s12[1] / (double)M);
    if (cached) {
        if (wc < Cg) { /* this warp's channel: the one pass's cc = wc */
            const size_t ox = bx + (size_t)wc * HW;
#pragma unroll
            for (int k = 0; k < V; k++) {
                const int p = wp * 32 + lane + k * wpc * 32;
                if (p < HW) dx[ox + p] = cdx[k] - r * (a1 + cxh[k] * a2);
            }
        }
        return;
    }
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        const float xh = (x[bx + i] - m) * r;
        dx[bx + i] -= r * (a1 + xh * a2);
    }
}

/* dgamma[c] += sum over n of sx[n, c], dbeta[c] += sum of sn[n, c]: a warp per channel, lanes
 * over n, added in lane order */
static __global__ void gn_param_sums_kernel(float *dgamma, float *dbeta, const double *ws, int N,
                                            int C) {
    const int lane = threadIdx.x & 31;
    const int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c >= C) return; /* whole warps */
    double sg = 0.0, sb = 0.0;
    for (int n = lane; n < N; n += 32) {
        sg += ws[(size_t)n * C + c];
        sb += ws[(size_t)N * C + (size_t)n * C + c];
    }
    sg = warp_sum(sg);
    sb = warp_sum(sb);
    if (lane == 0) {
        if (dgamma) dgamma[c] += (float)sg;
        if (dbeta) dbeta[c] += (float)sb;
    }
}

size_t dd_cuda_group_norm_workspace(const dd_gn_shape *s) {
    if (s->G <= 0 || s->C / s->G > GN_FUSED_CG_MAX) return 0;
    return (size_t)2 * s->N * s->C * sizeof(double);
}

int dd_cuda_group_norm_prepare(const dd_gn_shape *s, int has_add, int has_res) {
    if (s->N * s->G == 0) return 0;
    int cfg;
    return gn_fwd_config(s, has_add, has_res, &cfg);
}

int dd_cuda_group_norm_forward(float *y, float *mean, float *rstd, const float *x,
                               const float *gamma, const float *beta, const float *add,
                               const float *res, const dd_gn_shape *s) {
    if (s->N * s->G == 0) return 0;
    const size_t M = (size_t)(s->C / s->G) * s->HW;
    if (M > INT_MAX)
        return dd_error("group_norm: %zu values a group, at most %d", M, INT_MAX);
    int cfg;
    DD_TRY(gn_fwd_config(s, add != NULL, res != NULL, &cfg));
    return gn_fwd_run(cfg, s, y, mean, rstd, x, gamma, beta, add, res);
}

/* Launch configurations of the fused backward: T threads a block, V positions a lane keeps in
 * registers. T sets how the block's warps split the group's channels (gn_bwd_positions), V
 * whether a lane's positions fit its registers (else dx goes through memory twice). As for the
 * forward, the GPU times them per shape (the first backward call of a shape outside a capture)
 * and keeps the fastest whose dx, dadd, dres, dgamma and dbeta match the fixed one's (b256v8,
 * the launch before session 12) within 1e-5. DIFFUSION_GN (fixed, or auto) covers both. */
typedef struct {
    int T, V;
    const char *name;
} gn_bwd_cfg;
static const gn_bwd_cfg gn_bwd_cfgs[] = {
    {256, 8, "b256v8"}, {256, 16, "b256v16"}, {256, 32, "b256v32"},
    {128, 8, "b128v8"}, {128, 16, "b128v16"}, {128, 32, "b128v32"},
    {64, 8, "b64v8"},   {64, 16, "b64v16"},   {64, 32, "b64v32"},
};
#define GN_BWD_CFGS ((int)(sizeof gn_bwd_cfgs / sizeof gn_bwd_cfgs[0]))
#define GN_BWD_FIXED 0

static const char *gn_bwd_name(int i) { return i >= 0 && i < GN_BWD_CFGS ? gn_bwd_cfgs[i].name : NULL; }

/* positions a lane takes in one pass over the channels with T threads, or INT_MAX when the
 * channels take more than one pass (no caching) */
static int gn_bwd_positions(int T, int Cg, int HW) {
    const int nw = T / 32, wpc = Cg >= nw ? 1 : nw / Cg, cpp = nw / wpc;
    return Cg > cpp ? INT_MAX : (HW + wpc * 32 - 1) / (wpc * 32);
}

/* configuration c runs as itself: the smallest V that caches its T's positions, or V = 8 where
 * nothing caches (V matters only to the cached path, which needs dx) */
static int gn_bwd_applies(int c, const dd_gn_shape *s, int has_dx) {
    const gn_bwd_cfg *f = &gn_bwd_cfgs[c];
    const int pos = has_dx ? gn_bwd_positions(f->T, s->C / s->G, s->HW) : INT_MAX;
    const int v = pos <= 8 ? 8 : pos <= 16 ? 16 : pos <= 32 ? 32 : 8;
    return f->V == v;
}

static int gn_bwd_run(int c, const dd_gn_shape *s, float *dx, float *dgamma, float *dbeta,
                      float *dadd, float *dres, const float *dy, const float *x,
                      const float *mean, const float *rstd, const float *gamma, const float *beta,
                      const float *add, void *ws) {
    const int params = dgamma || dbeta;
    const int T = gn_bwd_cfgs[c].T;
    static_assert(THREADS / 32 <= GN_FUSED_CG_MAX, "shares fit gn_sh");
    const bool strided = s->xs || s->rs;
#define GN_BWD_ARGS                                                                               \
    dx, params ? (double *)ws : NULL, dadd, dres, dy, x, mean, rstd, gamma, beta, add, s->N,      \
        s->C, s->HW, s->G, s->swish, dd_gn_xs(s), dd_gn_rs(s)
#define GN_BWD_LAUNCH(V)                                                                          \
    if (strided)                                                                                  \
        gn_backward_fused_kernel<V, true><<<s->N * s->G, T, 0, dd_cuda_stream>>>(GN_BWD_ARGS);    \
    else                                                                                          \
        gn_backward_fused_kernel<V, false><<<s->N * s->G, T, 0, dd_cuda_stream>>>(GN_BWD_ARGS)
    switch (gn_bwd_cfgs[c].V) {
    case 16: GN_BWD_LAUNCH(16); break;
    case 32: GN_BWD_LAUNCH(32); break;
    default: GN_BWD_LAUNCH(8); break;
    }
#undef GN_BWD_LAUNCH
#undef GN_BWD_ARGS
    DD_CUDA_LAUNCHED("group_norm_backward");
    if (params) {
        const int per = THREADS / 32;
        gn_param_sums_kernel<<<(s->C + per - 1) / per, THREADS, 0, dd_cuda_stream>>>(
            dgamma, dbeta, (const double *)ws, s->N, s->C);
        DD_CUDA_LAUNCHED("group_norm_backward (parameter sums)");
    }
    return 0;
}

typedef struct {
    dd_gn_shape s;
    int flags, cfg; /* flags: dx, params, add, dadd, dres (bits 0-4) */
} gn_bwd_choice;
static gn_bwd_choice gn_bwd_choices[GN_CHOICES_MAX];
static int gn_bwd_nchoices = 0;
static void gn_bwd_forget(void) { gn_bwd_nchoices = 0; }

/* Times every backward configuration that applies on scratch buffers and returns the fastest
 * that agrees with the fixed one; -1 on a failed call (*cfg is then the fixed one). */
static int gn_bwd_tune(const dd_gn_shape *shape_in, int flags, int *cfg) {
    dd_gn_shape packed = *shape_in; /* timed packed, as the forward (gn_fwd_tune) */
    packed.xs = packed.rs = 0;
    const dd_gn_shape *s = &packed;
    const size_t n = (size_t)s->N * s->C * s->HW, nng = (size_t)s->N * s->G,
                 nnc = (size_t)s->N * s->C, C = (size_t)s->C;
    const int has_dx = flags & 1, params = flags & 2, has_add = flags & 4, has_dadd = flags & 8,
              has_dres = flags & 16;
    *cfg = GN_BWD_FIXED;
    int cand[GN_BWD_CFGS], nc = 0;
    for (int c = 0; c < GN_BWD_CFGS; c++)
        if (c == GN_BWD_FIXED || gn_bwd_applies(c, s, has_dx)) cand[nc++] = c;
    if (nc < 2) return 0;
    /* x, dy (n each); then the outputs, each with the fixed one's copy: dx, dres (n), dgamma,
     * dbeta (C), dadd (N C); mean, rstd (N G); gamma, beta (C); add (N C); ws (4 N C); 2 floats
     * for dd_conv_maxdiff */
    const size_t parts[] = {n, n, n, n, C, C, nnc, n, n, C, C, nnc, nng, nng, C, C, nnc,
                            4 * nnc, 2};
    float *p[sizeof parts / sizeof parts[0]];
    void *base;
    DD_TRY(gn_scratch(parts, (int)(sizeof parts / sizeof parts[0]), p, &base,
                      "group norm backward"));
    if (!base) return 0;
    /* o[0..4]: dx, dres, dgamma, dbeta, dadd (NULL where not wanted); f[0..4]: the fixed one's */
    const int want[5] = {has_dx, has_dres, params, params, has_dadd};
    const size_t cnt[5] = {n, n, C, C, nnc};
    float *o[5], *f[5];
    for (int k = 0; k < 5; k++) {
        o[k] = want[k] ? p[2 + k] : NULL;
        f[k] = want[k] ? p[7 + k] : NULL;
    }
    float *x = p[0], *dy = p[1], *mean = p[12], *rstd = p[13], *gamma = p[14], *beta = p[15],
          *add = p[16], *ws = p[17], *diff = p[18];
    const float *a = has_add ? add : NULL;
    char shape[96], head[200];
    snprintf(shape, sizeof shape, "group_norm backward N=%d C=%d HW=%d G=%d", s->N, s->C, s->HW,
             s->G);
    snprintf(head, sizeof head, "diffusion: %s%s%s%s%s%s, us:", shape, s->swish ? " swish" : "",
             has_dx ? " dx" : "", params ? " params" : "", has_dadd ? " dadd" : "",
             has_dres ? " dres" : "");
    auto run_into = [&](int c, float *const *out) {
        return gn_bwd_run(c, s, out[0], out[2], out[3], out[4], out[1], dy, x, mean, rstd, gamma,
                          beta, a, ws);
    };
    auto zero = [&](float *const *out) { /* the backward adds into its outputs */
        for (int k = 0; k < 5; k++)
            if (out[k] && cudaMemsetAsync(out[k], 0, cnt[k] * sizeof(float), dd_cuda_stream) !=
                              cudaSuccess)
                return dd_error("cudaMemsetAsync: %s", cudaGetErrorString(cudaGetLastError()));
        return 0;
    };
    auto run = [&](int c) { return run_into(c, o); };
    auto check = [&](int c, double *e) { /* one call from zero against the fixed one's */
        DD_TRY(zero(o));
        DD_TRY(run_into(c, o));
        return gn_max_rel(o, f, cnt, 5, diff, e);
    };
    int rc = -1;
    /* the statistics of x by the forward (its y into dres's fixed copy, zeroed after), then the
     * fixed configuration's outputs from zero */
    if (!dd_conv_fill(x, n, 21u) && !dd_conv_fill(dy, n, 22u) && !dd_conv_fill(add, nnc, 23u) &&
        !dd_conv_fill(gamma, C, 24u) && !dd_conv_fill(beta, C, 25u) &&
        !gn_fwd_run(gn_fwd_fixed((size_t)(s->C / s->G) * s->HW), s, p[8], mean, rstd, x, gamma,
                    beta, a, NULL) &&
        !zero(f) && !run_into(GN_BWD_FIXED, f))
        rc = gn_tune_loop("group norm backward", shape, head, cand, nc, GN_BWD_FIXED, gn_bwd_name,
                          run, check, cfg);
    if (rc) {
        *cfg = GN_BWD_FIXED;
        (void)cudaStreamSynchronize(dd_cuda_stream);
    }
    (void)cudaFree(base);
    return rc;
}

/* The backward's configuration: the policy's (fixed, or a forward configuration's name:
 * b256v8; a backward one's: itself where it applies), or (auto) the cached timed choice, timing
 * it now when outside a capture. */
static int gn_bwd_config(const dd_gn_shape *s, int flags, int *cfg) {
    *cfg = GN_BWD_FIXED;
    DD_TRY(gn_settings());
    if (gn_policy >= GN_FWD_CFGS) {
        const int b = gn_policy - GN_FWD_CFGS;
        *cfg = gn_bwd_applies(b, s, flags & 1) ? b : GN_BWD_FIXED;
        return 0;
    }
    if (gn_policy != GN_POLICY_AUTO) return 0;
    for (int i = 0; i < gn_bwd_nchoices; i++) {
        const gn_bwd_choice *c = &gn_bwd_choices[i];
        if (c->flags == flags && c->s.N == s->N && c->s.C == s->C && c->s.HW == s->HW &&
            c->s.G == s->G && c->s.swish == s->swish) {
            *cfg = c->cfg;
            return 0;
        }
    }
    if (dd_cuda_capturing() || gn_bwd_nchoices == GN_CHOICES_MAX) return 0;
    if (gn_bwd_tune(s, flags, cfg)) {
        DD_TRY(gn_tune_failed("group_norm backward"));
        *cfg = GN_BWD_FIXED;
    }
    gn_bwd_choice *c = &gn_bwd_choices[gn_bwd_nchoices++];
    c->s = *s;
    c->flags = flags;
    c->cfg = *cfg;
    return 0;
}

int dd_cuda_group_norm_backward(float *dx, float *dgamma, float *dbeta, float *dadd,
                                float *dres, const float *dy, const float *x, const float *mean,
                                const float *rstd, const float *gamma, const float *beta,
                                const float *add, const dd_gn_shape *s, void *ws) {
    if (s->N * s->G == 0) return 0;
    const int Cg = s->C / s->G, params = dgamma || dbeta;
    if (Cg <= GN_FUSED_CG_MAX && (ws || !params)) {
        const int flags = (dx ? 1 : 0) | (params ? 2 : 0) | (add ? 4 : 0) | (dadd ? 8 : 0) |
                          (dres ? 16 : 0);
        int cfg;
        DD_TRY(gn_bwd_config(s, flags, &cfg));
        return gn_bwd_run(cfg, s, dx, dgamma, dbeta, dadd, dres, dy, x, mean, rstd, gamma, beta,
                          add, ws);
    }
    /* no workspace (or a huge group): the parameter gradients by a kernel of their own, and
     * dres += dy by another */
    const size_t chw = (size_t)s->C * s->HW;
    if (dres && dd_gn_rs(s) == chw)
        DD_TRY(dd_cuda_add_backward(dres, NULL, dy, (size_t)s->N * chw));
    else if (dres) /* an image at a time into a strided residual (a fallback's fallback) */
        for (int n = 0; n < s->N; n++)
            DD_TRY(dd_cuda_add_backward(dres + (size_t)n * dd_gn_rs(s), NULL, dy + (size_t)n * chw,
                                        chw));
    if (dgamma || dbeta || dadd) {
        gn_backward_params_kernel<<<s->C, GN_PARAM_THREADS, 0, dd_cuda_stream>>>(
            dgamma, dbeta, dadd, dy, x, mean, rstd, gamma, beta, add, s->N, s->C, s->HW, s->G,
            s->swish, dd_gn_xs(s));
        DD_CUDA_LAUNCHED("group_norm_backward (parameters)");
    }
    if (dx) {
        gn_backward_dx_kernel<<<s->N * s->G, THREADS, 0, dd_cuda_stream>>>(
            dx, dy, x, mean, rstd, gamma, beta, add, s->C, s->HW, s->G, s->swish, dd_gn_xs(s));
        DD_CUDA_LAUNCHED("group_norm_backward (dx)");
    }
    return 0;
}

/* ---------------------------------------------------------------- softmax rows (attention) */

#define ROWS_PER_BLOCK (THREADS / 32) /* one warp per row */

/* p (rows, L) in place: p = softmax over each row, max subtracted first, the sum in double and
 * applied as one reciprocal (as cpu/cpu_attention.c) */
static __global__ void softmax_rows_kernel(float *p, int64_t rows, int L) {
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return; /* the whole warp leaves together */
    float *r = p + row * L;
    float mx = -INFINITY;
    for (int j = lane; j < L; j += 32) mx = fmaxf(mx, r[j]);
    mx = warp_max(mx);
    double s = 0.0;
    for (int j = lane; j < L; j += 32) {
        const float e = expf(r[j] - mx);
        r[j] = e;
        s += e;
    }
    const float inv = (float)(1.0 / warp_sum(s));
    for (int j = lane; j < L; j += 32) r[j] *= inv;
}

/* d (rows, L) in place: d = p (d - sum_j d p) */
static __global__ void softmax_rows_backward_kernel(float *d, const float *p, int64_t rows, int L) {
    const int64_t row = (int64_t)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float *dr = d + row * L;
    const float *pr = p + row * L;
    double dot = 0.0;
    for (int j = lane; j < L; j += 32) dot += (double)pr[j] * dr[j];
    const float dt = (float)warp_sum(dot);
    for (int j = lane; j < L; j += 32) dr[j] = pr[j] * (dr[j] - dt);
}

int dd_cuda_softmax_rows(float *p, int64_t rows, int L) {
    if (rows <= 0 || L <= 0) return 0;
    const unsigned int blocks = (unsigned int)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    softmax_rows_kernel<<<blocks, THREADS, 0, dd_cuda_stream>>>(p, rows, L);
    DD_CUDA_LAUNCHED("softmax");
    return 0;
}

int dd_cuda_softmax_rows_backward(float *d, const float *p, int64_t rows, int L) {
    if (rows <= 0 || L <= 0) return 0;
    const unsigned int blocks = (unsigned int)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    softmax_rows_backward_kernel<<<blocks, THREADS, 0, dd_cuda_stream>>>(d, p, rows, L);
    DD_CUDA_LAUNCHED("softmax_backward");
    return 0;
}

/* ---------------------------------------------------------------- attention, fused forward */

/* The whole forward of one (sample, head) in a block, for heads whose q, k, v and scores fit
 * ATTN_FUSED_FLOATS of shared memory (the UNets' middle attention: P = 49, D = 16, about 21 KB),
 * in FP32: where cuBLAS took two batched GEMMs, the softmax kernel between them and the scores'
 * round trip through memory. q, k, v (D x P each, contiguous in qkv) are staged with rows of
 * Pp = P rounded up to 4 (zeros after P), then three phases, each spread over the block's
 * threads with register tiles (an ncu run on an H200 found the former warp-per-row kernel
 * bound by its serial loops: 52 us at batch 256):
 * - scores: a thread takes a row i and 4 columns j: s_ij = scale (sum_d q_di k_dj), the products
 *   added in d order, into S (P x Pp);
 * - softmax: 4 lanes a row (max first, exponentials summed in double, each lane over every
 *   4th j, then across the quad in a fixed order; one reciprocal), the padding columns set to
 *   0; probs written out whole (coalesced), unless no backward reads them (probs_unread);
 * - y_di = sum_j p_ij v_dj, the products added in j order (padding adds zeros), a thread per
 *   2 rows x 4 d's, written straight to y. */
#define ATTN_FUSED_FLOATS 12288 /* 48 KB: dynamic shared memory without an opt-in */
#define ATTN_FUSED_WARPS 4
#define ATTN_STAGE 4 /* staging: elements of each of q, k, v a thread loads at once */
static __device__ __forceinline__ int attn_pad4(int P) { return (P + 3) & ~3; }
static __global__ void __launch_bounds__(32 * ATTN_FUSED_WARPS)
    attention_fused_kernel(float *y, float *probs, const float *qkv, int C, int heads, int P,
                           float scale) {
    DD_DYNAMIC_SHARED(float, sm);
    const int D = C / heads, b = blockIdx.x, n = b / heads, h = b - n * heads, DP = D * P;
    const int Pp = attn_pad4(P), T = 32 * ATTN_FUSED_WARPS, tid = threadIdx.x;
    float *qs = sm, *ks = qs + D * Pp, *vs = ks + D * Pp, *S = vs + D * Pp; /* S: Pp x Pp */
    const float *q = qkv + (size_t)n * 3 * C * P + (size_t)h * DP;
    /* ATTN_STAGE elements of each of q, k, v a thread are loaded before any is stored, so that
     * their loads are in flight together (a load-store loop waits one memory latency a turn) */
    for (int e0 = tid; e0 < D * Pp; e0 += ATTN_STAGE * T) {
        float rq[ATTN_STAGE], rk[ATTN_STAGE], rv[ATTN_STAGE];
#pragma unroll
        for (int u = 0; u < ATTN_STAGE; u++) {
            const int e = e0 + u * T, d = e / Pp, i = e - d * Pp;
            const bool in = e < D * Pp && i < P;
            rq[u] = in ? q[d * P + i] : 0.0f;
            rk[u] = in ? q[(size_t)C * P + d * P + i] : 0.0f;
            rv[u] = in ? q[(size_t)2 * C * P + d * P + i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < ATTN_STAGE; u++) {
            const int e = e0 + u * T;
            if (e < D * Pp) {
                qs[e] = rq[u];
                ks[e] = rk[u];
                vs[e] = rv[u];
            }
        }
    }
    __syncthreads();
    const int J4 = Pp / 4;
    for (int t = tid; t < P * J4; t += T) { /* scores: row i, columns 4 jc .. 4 jc + 3 */
        const int i = t / J4, j0 = 4 * (t - i * J4);
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (int d = 0; d < D; d++) {
            const float qv = qs[d * Pp + i];
            const float4 kv = *(const float4 *)&ks[d * Pp + j0];
            a0 = fmaf(qv, kv.x, a0);
            a1 = fmaf(qv, kv.y, a1);
            a2 = fmaf(qv, kv.z, a2);
            a3 = fmaf(qv, kv.w, a3);
        }
        *(float4 *)&S[i * Pp + j0] = make_float4(scale * a0, scale * a1, scale * a2, scale * a3);
    }
    __syncthreads();
    for (int r0 = 0; r0 < Pp; r0 += T / 4) { /* softmax: a quad of lanes a row */
        const int i = r0 + tid / 4, qd = tid & 3;
        const int n = i < P ? P : 0; /* every lane runs the shuffles, rows past P none of j */
        float *row = S + (size_t)i * Pp;
        float mx = -INFINITY;
        for (int j = qd; j < n; j += 4) mx = fmaxf(mx, row[j]);
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1, 4));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2, 4));
        double sum = 0.0;
        for (int j = qd; j < n; j += 4) {
            const float e = expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1, 4);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2, 4);
        const float inv = (float)(1.0 / sum);
        for (int j = qd; j < n; j += 4) row[j] *= inv;
        if (i < Pp) /* padding columns, and the padding rows the last row tiles below read */
            for (int j = n + qd; j < Pp; j += 4) row[j] = 0.0f;
    }
    __syncthreads();
    if (probs) {
        float *pb = probs + (size_t)b * P * P;
        for (int e = tid; e < P * P; e += T) {
            const int i = e / P;
            pb[e] = S[i * Pp + (e - i * P)];
        }
    }
    const int I2 = Pp / 2, D4 = (D + 3) / 4;
    float *yb = y + (size_t)n * C * P + (size_t)h * DP;
    for (int t = tid; t < I2 * D4; t += T) { /* y: rows 2 ic, 2 ic + 1; d's 4 dc .. 4 dc + 3 */
        const int ic = t / D4, i0 = 2 * ic, d0 = 4 * (t - ic * D4);
        float acc[2][4] = {{0.0f}};
        for (int j = 0; j < Pp; j += 4) {
            float4 p4[2], v4[4];
#pragma unroll
            for (int a = 0; a < 2; a++) p4[a] = *(const float4 *)&S[(i0 + a) * Pp + j];
#pragma unroll
            for (int c = 0; c < 4; c++)
                v4[c] = d0 + c < D ? *(const float4 *)&vs[(d0 + c) * Pp + j]
                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
            for (int a = 0; a < 2; a++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    float r = acc[a][c];
                    r = fmaf(p4[a].x, v4[c].x, r);
                    r = fmaf(p4[a].y, v4[c].y, r);
                    r = fmaf(p4[a].z, v4[c].z, r);
                    acc[a][c] = fmaf(p4[a].w, v4[c].w, r);
                }
        }
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                if (i0 + a < P && d0 + c < D) yb[(size_t)(d0 + c) * P + i0 + a] = acc[a][c];
    }
}

static size_t attn_fused_floats(const dd_attn_shape *s) {
    const size_t D = (size_t)(s->C / s->heads), Pp = (size_t)((s->P + 3) & ~3);
    return 3 * D * Pp + Pp * Pp;
}

int dd_cuda_attention_fused_fits(const dd_attn_shape *s) {
    if (s->heads <= 0 || s->C % s->heads || s->P <= 0) return 0;
    return attn_fused_floats(s) <= ATTN_FUSED_FLOATS;
}

int dd_cuda_attention_fused_forward(float *y, float *probs, const float *qkv,
                                    const dd_attn_shape *s) {
    const int64_t blocks = (int64_t)s->N * s->heads;
    if (blocks <= 0) return 0;
    if (!dd_cuda_attention_fused_fits(s) || blocks > INT_MAX)
        return dd_error("attention (fused kernel): shape N %d C %d heads %d P %d does not fit",
                        s->N, s->C, s->heads, s->P);
    /* probs only where a backward will read them */
    attention_fused_kernel<<<(unsigned int)blocks, 32 * ATTN_FUSED_WARPS,
                             attn_fused_floats(s) * sizeof(float), dd_cuda_stream>>>(
        y, s->probs_unread ? NULL : probs, qkv, s->C, s->heads, s->P,
        1.0f / sqrtf((float)(s->C / s->heads)));
    DD_CUDA_LAUNCHED("attention_forward (fused)");
    return 0;
}

/* ---------------------------------------------------------------- dense helpers */

/* The UNet's dense layers (time MLP, the blocks' embedding projections: 64 to 256 inputs, a row
 * per sample) are far too small for a GEMM to pay: one kernel does the dot products and adds the
 * bias, one graph node where cuBLAS needed two (the bias rows, then the GEMM). A warp takes one
 * row and DENSE_OPW consecutive outputs: its lanes hold the row's inputs k = lane + 32 t in
 * registers and read each weight row lane by lane (coalesced, where a thread per output read 32
 * rows at once), then add the lanes' products in a fixed butterfly order. The outputs' loops are
 * unrolled and every sum is reduced before any store, so all DENSE_OPW rows' loads are in flight
 * at once (one memory latency a warp, not one an output: 9 us became 4 us at batch 256 on an
 * H200, ncu); lane j then stores output j, the warp's stores coalesced. */
#define DENSE_OPW 16 /* outputs a warp */
/* One warp's task: row r = task / chunks, outputs co0 = (task % chunks) DENSE_OPW onward
 * (task < N chunks). */
template <int XT> /* inputs a lane holds, at most: Cin <= 32 XT */
static __device__ __forceinline__ void dense_warp(float *__restrict__ y,
                                                  const float *__restrict__ x,
                                                  const float *__restrict__ w,
                                                  const float *__restrict__ b, int Cin, int Cout,
                                                  int64_t task, int act = -1) {
    const int lane = threadIdx.x & 31;
    const int chunks = (Cout + DENSE_OPW - 1) / DENSE_OPW;
    const int r = (int)(task / chunks), co0 = (int)(task - (int64_t)r * chunks) * DENSE_OPW;
    const float *xr = x + (size_t)r * Cin;
    float xv[XT];
#pragma unroll
    for (int t = 0; t < XT; t++) {
        const int k = lane + 32 * t;
        xv[t] = k < Cin ? (act < 0 ? xr[k] : dd_act_apply(xr[k], (dd_act)act)) : 0.0f;
    }
    float acc[DENSE_OPW];
#pragma unroll
    for (int t = 0; t < XT; t++) { /* every weight of this slice loaded before any product */
        const int k = lane + 32 * t;
        float wv[DENSE_OPW];
#pragma unroll
        for (int j = 0; j < DENSE_OPW; j++)
            wv[j] = k < Cin && co0 + j < Cout ? __ldg(w + (size_t)(co0 + j) * Cin + k) : 0.0f;
#pragma unroll
        for (int j = 0; j < DENSE_OPW; j++) {
            const float a = t ? acc[j] : 0.0f;
            acc[j] = k < Cin ? fmaf(xv[t], wv[j], a) : a;
        }
    }
    float out = 0.0f;
#pragma unroll
    for (int j = 0; j < DENSE_OPW; j++) {
        const float v = warp_sum(acc[j]);
        if (lane == j) out = v;
    }
    const int co = co0 + lane;
    if (lane < DENSE_OPW && co < Cout) y[(size_t)r * Cout + co] = b ? out + b[co] : out;
}

template <int XT>
static __global__ void __launch_bounds__(THREADS)
    dense_small_kernel(float *__restrict__ y, const float *__restrict__ x,
                       const float *__restrict__ w, const float *__restrict__ b, int N, int Cin,
                       int Cout) {
    const int64_t task = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (task >= (int64_t)N * ((Cout + DENSE_OPW - 1) / DENSE_OPW)) return; /* whole warps */
    dense_warp<XT>(y, x, w, b, Cin, Cout, task);
}

/* Several layers of one input (dd_cuda_dense_group_forward): the warps' tasks numbered layer by
 * layer, layer l's from first[l]; the layer is found by comparisons with constant indices, so
 * the parameters are read from the constant bank where they are passed. */
struct DenseGroup {
    float *y[DD_DENSE_GROUP_MAX];
    const float *w[DD_DENSE_GROUP_MAX], *b[DD_DENSE_GROUP_MAX];
    int cout[DD_DENSE_GROUP_MAX];
    int64_t first[DD_DENSE_GROUP_MAX + 1]; /* first[count] onward: the total */
};

template <int XT>
static __global__ void __launch_bounds__(THREADS)
    dense_group_kernel(const DenseGroup p, const float *__restrict__ x, int Cin, int act) {
    const int64_t task = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (task >= p.first[DD_DENSE_GROUP_MAX]) return; /* whole warps */
    int l = 0;
#pragma unroll
    for (int i = 1; i < DD_DENSE_GROUP_MAX; i++)
        if (task >= p.first[i]) l = i;
    float *y = p.y[0];
    const float *w = p.w[0], *b = p.b[0];
    int cout = p.cout[0];
    int64_t t0 = 0;
#pragma unroll
    for (int i = 1; i < DD_DENSE_GROUP_MAX; i++)
        if (l == i) y = p.y[i], w = p.w[i], b = p.b[i], cout = p.cout[i], t0 = p.first[i];
    dense_warp<XT>(y, x, w, b, Cin, cout, task - t0, act);
}

int dd_cuda_dense_small_forward(float *y, const float *x, const float *w, const float *b, int N,
                                int Cin, int Cout) {
    if (N <= 0 || Cout <= 0) return 0;
    if (Cin > DD_CUDA_DENSE_SMALL_CIN)
        return dd_error("dense (small kernel): %d inputs, at most %d", Cin,
                        DD_CUDA_DENSE_SMALL_CIN);
    const int64_t warps = (int64_t)N * ((Cout + DENSE_OPW - 1) / DENSE_OPW);
    const int64_t blocks = (warps + THREADS / 32 - 1) / (THREADS / 32);
    if (blocks > INT_MAX) return dd_error("dense (small kernel): %d rows, too many", N);
    const unsigned int nb = (unsigned int)blocks;
    if (Cin <= 64)
        dense_small_kernel<2><<<nb, THREADS, 0, dd_cuda_stream>>>(y, x, w, b, N, Cin, Cout);
    else if (Cin <= 256)
        dense_small_kernel<8><<<nb, THREADS, 0, dd_cuda_stream>>>(y, x, w, b, N, Cin, Cout);
    else
        dense_small_kernel<DD_CUDA_DENSE_SMALL_CIN / 32>
            <<<nb, THREADS, 0, dd_cuda_stream>>>(y, x, w, b, N, Cin, Cout);
    DD_CUDA_LAUNCHED("dense_forward");
    return 0;
}

int dd_cuda_dense_group_small_forward(int count, float *const *y, const float *x, int act,
                                      const float *const *w, const float *const *b, int N, int Cin,
                                      const int *cout) {
    if (count < 1 || count > DD_DENSE_GROUP_MAX)
        return dd_error("dense group: %d layers, from 1 to %d", count, DD_DENSE_GROUP_MAX);
    if (Cin > DD_CUDA_DENSE_SMALL_CIN)
        return dd_error("dense group (small kernel): %d inputs, at most %d", Cin,
                        DD_CUDA_DENSE_SMALL_CIN);
    DenseGroup p;
    memset(&p, 0, sizeof p);
    int64_t tasks = 0;
    for (int l = 0; l < DD_DENSE_GROUP_MAX; l++) {
        p.first[l] = tasks;
        if (l >= count) continue;
        p.y[l] = y[l];
        p.w[l] = w[l];
        p.b[l] = b ? b[l] : NULL;
        p.cout[l] = cout[l];
        tasks += (int64_t)N * ((cout[l] + DENSE_OPW - 1) / DENSE_OPW);
    }
    p.first[DD_DENSE_GROUP_MAX] = tasks;
    /* the layers past count start at the total: no warp reaches them */
    for (int l = count; l < DD_DENSE_GROUP_MAX; l++) p.first[l] = tasks;
    if (tasks == 0) return 0;
    const int64_t blocks = (tasks + THREADS / 32 - 1) / (THREADS / 32);
    if (blocks > INT_MAX) return dd_error("dense group (small kernel): %d rows, too many", N);
    const unsigned int nb = (unsigned int)blocks;
    if (Cin <= 64)
        dense_group_kernel<2><<<nb, THREADS, 0, dd_cuda_stream>>>(p, x, Cin, act);
    else if (Cin <= 256)
        dense_group_kernel<8><<<nb, THREADS, 0, dd_cuda_stream>>>(p, x, Cin, act);
    else
        dense_group_kernel<DD_CUDA_DENSE_SMALL_CIN / 32>
            <<<nb, THREADS, 0, dd_cuda_stream>>>(p, x, Cin, act);
    DD_CUDA_LAUNCHED("dense_group_forward");
    return 0;
}

/* The small dense layers' backward in one kernel (where cuBLAS took two GEMMs and the bias
 * column sums, three graph nodes), FP32:
 * - blocks [0, bx): dx[n][k] += sum_co dy[n][co] w[co][k], a thread per (n, k), k fastest
 *   (w's rows read coalesced, dy's value the same across a warp);
 * - blocks [bx, bx + Cout ceil(Cin / 32)): dw[co][k] += sum_n dy[n][co] x[n][k] for one co and
 *   32 k's, the 8 warps over n = warp, warp + 8, ... (x's rows coalesced), their sums added in
 *   warp order through shared memory; the blocks of the first 32 k's also sum db[co] the same
 *   way. Deterministic, no atomics. */
#define DENSE_BWD_MAX DD_CUDA_DENSE_SMALL_BWD
/* acc + sum over co of dy[n][co] w[co][k] */
static __device__ __forceinline__ float dense_bwd_dx(float acc, const float *__restrict__ dy,
                                                     const float *__restrict__ w, int n, int k,
                                                     int Cin, int Cout) {
    const float *dyn = dy + (size_t)n * Cout;
#pragma unroll 8
    for (int co = 0; co < Cout; co++) acc = fmaf(dyn[co], w[(size_t)co * Cin + k], acc);
    return acc;
}

/* block b of the dw/db part (every thread of the block calls it: it has a barrier) */
static __device__ __forceinline__ void dense_bwd_dw(float *__restrict__ dw, float *__restrict__ db,
                                                    const float *__restrict__ dy,
                                                    const float *__restrict__ x, int N, int Cin,
                                                    int Cout, int b) {
    __shared__ float shw[THREADS / 32][32], shb[THREADS / 32];
    const int kt = (Cin + 31) / 32, co = b / kt;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, k = (b - co * kt) * 32 + lane;
    const bool bias = db && b - co * kt == 0;
    float sw = 0.0f, sb = 0.0f;
#pragma unroll 8
    for (int n = warp; n < N; n += THREADS / 32) {
        const float d = dy[(size_t)n * Cout + co];
        if (k < Cin) sw = fmaf(d, x[(size_t)n * Cin + k], sw);
        sb += d;
    }
    shw[warp][lane] = sw;
    if (lane == 0) shb[warp] = sb;
    __syncthreads();
    if (warp == 0) {
        float t = 0.0f, tb = 0.0f;
        for (int v = 0; v < THREADS / 32; v++) t += shw[v][lane], tb += shb[v];
        if (dw && k < Cin) dw[(size_t)co * Cin + k] += t;
        if (bias && lane == 0) db[co] += tb;
    }
}

static __global__ void __launch_bounds__(THREADS)
    dense_small_backward_kernel(float *__restrict__ dx, float *__restrict__ dw,
                                float *__restrict__ db, const float *__restrict__ dy,
                                const float *__restrict__ x, const float *__restrict__ w, int N,
                                int Cin, int Cout, int bx) {
    if ((int)blockIdx.x < bx) {
        const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= (int64_t)N * Cin) return; /* no barrier in this part */
        const int n = (int)(i / Cin), k = (int)(i - (int64_t)n * Cin);
        dx[i] += dense_bwd_dx(0.0f, dy, w, n, k, Cin, Cout);
        return;
    }
    dense_bwd_dw(dw, db, dy, x, N, Cin, Cout, (int)blockIdx.x - bx);
}

/* Layers of one x (dd_cuda_dense_group_backward): blocks [0, bx) dx += sum over the layers (in
 * their order) of dy_l w_l, added to dx once; then each layer's dw/db blocks, layer l's from
 * bx + first[l]. */
struct DenseGroupBwd {
    const float *dy[DD_DENSE_GROUP_MAX], *w[DD_DENSE_GROUP_MAX];
    float *dw[DD_DENSE_GROUP_MAX], *db[DD_DENSE_GROUP_MAX];
    int cout[DD_DENSE_GROUP_MAX];
    int first[DD_DENSE_GROUP_MAX + 1];
};

static __global__ void __launch_bounds__(THREADS)
    dense_group_backward_kernel(const DenseGroupBwd p, float *__restrict__ dx,
                                const float *__restrict__ x, int N, int Cin, int count, int bx) {
    if ((int)blockIdx.x < bx) {
        const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= (int64_t)N * Cin) return; /* no barrier in this part */
        const int n = (int)(i / Cin), k = (int)(i - (int64_t)n * Cin);
        float acc = 0.0f;
#pragma unroll
        for (int l = 0; l < DD_DENSE_GROUP_MAX; l++)
            if (l < count) acc = dense_bwd_dx(acc, p.dy[l], p.w[l], n, k, Cin, p.cout[l]);
        dx[i] += acc;
        return;
    }
    const int b = (int)blockIdx.x - bx;
    int l = 0;
#pragma unroll
    for (int i = 1; i < DD_DENSE_GROUP_MAX; i++)
        if (b >= p.first[i]) l = i;
    const float *dy = p.dy[0];
    float *dw = p.dw[0], *db = p.db[0];
    int cout = p.cout[0], b0 = 0;
#pragma unroll
    for (int i = 1; i < DD_DENSE_GROUP_MAX; i++)
        if (l == i) dy = p.dy[i], dw = p.dw[i], db = p.db[i], cout = p.cout[i], b0 = p.first[i];
    dense_bwd_dw(dw, db, dy, x, N, Cin, cout, b - b0);
}

int dd_cuda_dense_small_backward(float *dx, float *dw, float *db, const float *dy,
                                 const float *x, const float *w, int N, int Cin, int Cout) {
    if (N <= 0 || Cout <= 0 || Cin <= 0) return 0;
    if (Cin > DENSE_BWD_MAX || Cout > DENSE_BWD_MAX)
        return dd_error("dense backward (small kernel): %d -> %d, at most %d each", Cin, Cout,
                        DENSE_BWD_MAX);
    const int64_t bx = dx ? ((int64_t)N * Cin + THREADS - 1) / THREADS : 0;
    const int64_t bw = dw || db ? (int64_t)Cout * ((Cin + 31) / 32) : 0;
    if (bx + bw > INT_MAX) return dd_error("dense backward (small kernel): %d rows, too many", N);
    if (bx + bw == 0) return 0;
    dense_small_backward_kernel<<<(unsigned int)(bx + bw), THREADS, 0, dd_cuda_stream>>>(
        dx, dw, db, dy, x, w, N, Cin, Cout, (int)bx);
    DD_CUDA_LAUNCHED("dense_backward");
    return 0;
}

int dd_cuda_dense_group_small_backward(int count, float *dx, float *const *dw, float *const *db,
                                       const float *const *dy, const float *x,
                                       const float *const *w, int N, int Cin, const int *cout) {
    if (count < 1 || count > DD_DENSE_GROUP_MAX)
        return dd_error("dense group backward: %d layers, from 1 to %d", count,
                        DD_DENSE_GROUP_MAX);
    if (N <= 0 || Cin <= 0) return 0;
    if (Cin > DENSE_BWD_MAX || N > DD_CUDA_DENSE_SMALL_BWD_N)
        return dd_error("dense group backward (small kernel): %d rows of %d inputs, at most %d "
                        "of %d",
                        N, Cin, DD_CUDA_DENSE_SMALL_BWD_N, DENSE_BWD_MAX);
    DenseGroupBwd p;
    memset(&p, 0, sizeof p);
    int64_t bw = 0;
    const int kt = (Cin + 31) / 32;
    for (int l = 0; l < DD_DENSE_GROUP_MAX; l++) {
        p.first[l] = (int)bw;
        if (l >= count) continue;
        if (cout[l] <= 0 || cout[l] > DENSE_BWD_MAX)
            return dd_error("dense group backward (small kernel): layer %d has %d outputs, from "
                            "1 to %d",
                            l, cout[l], DENSE_BWD_MAX);
        p.dy[l] = dy[l];
        p.w[l] = w[l];
        p.dw[l] = dw ? dw[l] : NULL;
        p.db[l] = db ? db[l] : NULL;
        p.cout[l] = cout[l];
        if (p.dw[l] || p.db[l]) bw += (int64_t)cout[l] * kt;
    }
    p.first[DD_DENSE_GROUP_MAX] = (int)bw;
    for (int l = count; l < DD_DENSE_GROUP_MAX; l++) p.first[l] = (int)bw;
    const int64_t bx = dx ? ((int64_t)N * Cin + THREADS - 1) / THREADS : 0;
    if (bx + bw == 0) return 0;
    dense_group_backward_kernel<<<(unsigned int)(bx + bw), THREADS, 0, dd_cuda_stream>>>(
        p, dx, x, N, Cin, count, (int)bx);
    DD_CUDA_LAUNCHED("dense_group_backward");
    return 0;
}

static __global__ void fill_rows_kernel(float *y, const float *b, int R, int Ccols) {
    const size_t n = (size_t)R * Ccols;
    GRID_STRIDE(i, n) y[i] = b[i % Ccols];
}

int dd_cuda_fill_rows(float *y, const float *b, int R, int Ccols) {
    const size_t n = (size_t)R * Ccols;
    if (!n) return 0;
    fill_rows_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(y, b, R, Ccols);
    DD_CUDA_LAUNCHED("dense bias");
    return 0;
}

/* Block (32, 8): column c = 32 blockIdx.x + tx, rows ty, ty + 8, ... (coalesced across tx), then
 * the 8 partial sums added in ty order. */
static __global__ void colsum_kernel(float *out, const float *m, int R, int Ccols) {
    __shared__ double sh[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y, c = blockIdx.x * 32 + tx;
    double s = 0.0;
    if (c < Ccols)
        for (int r = ty; r < R; r += 8) s += m[(size_t)r * Ccols + c];
    sh[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < Ccols) {
        double t = 0.0;
        for (int k = 0; k < 8; k++) t += sh[k][tx];
        out[c] += (float)t;
    }
}

int dd_cuda_colsum_add(float *out, const float *m, int R, int Ccols) {
    if (R <= 0 || Ccols <= 0) return 0;
    colsum_kernel<<<(Ccols + 31) / 32, dim3(32, 8), 0, dd_cuda_stream>>>(out, m, R, Ccols);
    DD_CUDA_LAUNCHED("dense bias gradient");
    return 0;
}

/* ---------------------------------------------------------------- losses */

static __global__ void mse_forward_kernel(float *loss, const float *pred, const float *target,
                                          size_t n) {
    __shared__ double sh[32];
    double s = 0.0;
    GRID_STRIDE(i, n) {
        const double d = (double)pred[i] - (double)target[i];
        s += d * d;
    }
    s = block_sum(s, sh);
    double total;
    if (grid_sum_last(s, &total)) loss[0] = (float)(total / (double)n);
}

static __global__ void mse_backward_kernel(float *dpred, const float *dloss, const float *pred,
                                           const float *target, size_t n) {
    const float k = (float)(2.0 * (double)dloss[0] / (double)n); /* as cpu/cpu_loss.c */
    GRID_STRIDE(i, n) dpred[i] += k * (pred[i] - target[i]);
}

int dd_cuda_mse_forward(float *loss, const float *pred, const float *target, size_t n) {
    if (!n) {
        DD_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(float), dd_cuda_stream));
        return 0;
    }
    unsigned int b = blocks_for(n);
    if (b > RED_BLOCKS) b = RED_BLOCKS;
    mse_forward_kernel<<<b, THREADS, 0, dd_cuda_stream>>>(loss, pred, target, n);
    DD_CUDA_LAUNCHED("mse_forward");
    return 0;
}

int dd_cuda_mse_backward(float *dpred, const float *dloss, const float *pred, const float *target,
                         size_t n) {
    if (!dpred || !n) return 0;
    mse_backward_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(dpred, dloss, pred, target,
                                                                        n);
    DD_CUDA_LAUNCHED("mse_backward");
    return 0;
}

/* One block; warp w takes rows w, w + warps, ...: max, sum of exponentials and probs (in double,
 * as cpu/cpu_loss.c), and the row's loss max + log(sum) - logit[label]; the warps' losses are
 * added in warp order. */
static __global__ void xent_forward_kernel(float *loss, float *probs, const float *logits,
                                           const int32_t *labels, int N, int K) {
    __shared__ double sh[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    double acc = 0.0;
    for (int n = wid; n < N; n += nw) {
        const float *l = logits + (size_t)n * K;
        float *p = probs + (size_t)n * K;
        float mx = -INFINITY;
        for (int k = lane; k < K; k += 32) mx = fmaxf(mx, l[k]);
        mx = warp_max(mx);
        double s = 0.0;
        for (int k = lane; k < K; k += 32) s += exp((double)l[k] - mx);
        s = warp_sum(s);
        for (int k = lane; k < K; k += 32) p[k] = (float)(exp((double)l[k] - mx) / s);
        acc += (double)mx + log(s) - (double)l[labels[n]];
    }
    if (lane == 0) sh[wid] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < nw; w++) t += sh[w];
        loss[0] = (float)(t / (double)N);
    }
}

static __global__ void xent_backward_kernel(float *dlogits, const float *dloss, const float *probs,
                                            const int32_t *labels, int N, int K) {
    const float k = (float)((double)dloss[0] / (double)N);
    const size_t n_all = (size_t)N * K;
    GRID_STRIDE(i, n_all) {
        const int n = (int)(i / K), j = (int)(i % K);
        dlogits[i] += k * (probs[i] - (j == labels[n] ? 1.0f : 0.0f));
    }
}

int dd_cuda_xent_forward(float *loss, float *probs, const float *logits, const int32_t *labels,
                         int N, int K) {
    if (N <= 0 || K <= 0) return 0;
    xent_forward_kernel<<<1, THREADS, 0, dd_cuda_stream>>>(loss, probs, logits, labels, N, K);
    DD_CUDA_LAUNCHED("xent_forward");
    return 0;
}

int dd_cuda_xent_backward(float *dlogits, const float *dloss, const float *probs,
                          const int32_t *labels, int N, int K) {
    const size_t n = (size_t)N * K;
    if (!dlogits || !n) return 0;
    xent_backward_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(dlogits, dloss, probs,
                                                                         labels, N, K);
    DD_CUDA_LAUNCHED("xent_backward");
    return 0;
}

/* ---------------------------------------------------------------- optimiser, counters */

/* The step and the guard are read on the device (backend.h), so a recorded graph replays every
 * step correctly. The guard is one value every thread reads: the early return is uniform. */
static __global__ void adam_kernel(float *p, float *m, float *v, const float *g, size_t n,
                                   double lr, double b1, double b2, float b1f, float omb1,
                                   float b2f, float omb2, float eps, const int64_t *step,
                                   const float *guard) {
    if (!dd_guard_ok(guard)) return;
    __shared__ float sc[2]; /* step_size, bc2_sqrt: once per block, in double */
    if (threadIdx.x == 0) dd_adam_scalars(lr, b1, b2, (long long)*step + 1, &sc[0], &sc[1]);
    __syncthreads();
    const float step_size = sc[0], bc2_sqrt = sc[1];
    GRID_STRIDE(i, n) {
        float pi = p[i], mi = m[i], vi = v[i];
        dd_adam_elem(&pi, &mi, &vi, g[i], b1f, omb1, b2f, omb2, eps, step_size, bc2_sqrt);
        p[i] = pi, m[i] = mi, v[i] = vi;
    }
}

int dd_cuda_adam_update(float *p, float *m, float *v, const float *g, size_t n, float lr,
                        double b1, double b2, double eps, const int64_t *step,
                        const float *guard) {
    if (!n) return 0;
    adam_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(
        p, m, v, g, n, (double)lr, b1, b2, (float)b1, (float)(1.0 - b1), (float)b2,
        (float)(1.0 - b2), (float)eps, step, guard);
    DD_CUDA_LAUNCHED("adam_update");
    return 0;
}

static __global__ void ema_kernel(float *ema, const float *p, size_t n, float decay,
                                  const int64_t *step, const float *guard) {
    if (!dd_guard_ok(guard)) return;
    const float d = step ? dd_ema_warmup(decay, (long long)*step) : decay;
    GRID_STRIDE(i, n) ema[i] = dd_ema_elem(ema[i], p[i], d);
}

int dd_cuda_ema_update(float *ema, const float *p, size_t n, float decay, const int64_t *step,
                       const float *guard) {
    if (!n) return 0;
    ema_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(ema, p, n, decay, step, guard);
    DD_CUDA_LAUNCHED("ema_update");
    return 0;
}

static __global__ void counter_add_kernel(int64_t *c, int64_t d, const float *guard) {
    if (dd_guard_ok(guard)) *c += d;
}

int dd_cuda_counter_add(int64_t *c, int64_t d, const float *guard) {
    counter_add_kernel<<<1, 1, 0, dd_cuda_stream>>>(c, d, guard);
    DD_CUDA_LAUNCHED("counter_add");
    return 0;
}

/* One block: every thread reads the counter before thread 0 moves it on (the barrier), then all
 * write the step's t. A sampling batch is at most tens of thousands of samples (planning keeps
 * every tensor under 2^31 values), a few hundred turns of one block's loop. */
static __global__ void sampler_advance_kernel(int64_t *k, int64_t *noff, int64_t dn, int32_t *t,
                                              const int32_t *ttab, int n) {
    const int64_t kk = *k + 1;
    __syncthreads();
    if (threadIdx.x == 0) {
        *k = kk;
        *noff += dn;
    }
    const int32_t v = ttab[kk];
    for (int i = threadIdx.x; i < n; i += blockDim.x) t[i] = v;
}

int dd_cuda_sampler_advance(int64_t *k, int64_t *noff, int64_t dn, int32_t *t, const int32_t *ttab,
                            int n) {
    sampler_advance_kernel<<<1, THREADS, 0, dd_cuda_stream>>>(k, noff, dn, t, ttab, n > 0 ? n : 0);
    DD_CUDA_LAUNCHED("sampler_advance");
    return 0;
}

/* ---------------------------------------------------------------- diffusion helpers */

static __global__ void normal_kernel(float *out, size_t n, dd_rng_at at) {
    const uint64_t o = dd_rng_at_offset(at);
    GRID_STRIDE(i, n) out[i] = dd_philox_normal(at.seed, at.stream, o + i);
}

int dd_cuda_normal(float *out, size_t n, dd_rng_at at) {
    if (!n) return 0;
    normal_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(out, n, at);
    DD_CUDA_LAUNCHED("normal");
    return 0;
}

static __global__ void train_draw_kernel(int32_t *t, int32_t *lab_out, const int32_t *lab_in,
                                         int N, int T, float p_uncond, int32_t generic,
                                         dd_rng_at at) {
    const uint64_t o = dd_rng_at_offset(at);
    GRID_STRIDE(i, (size_t)N) {
        t[i] = dd_train_t_elem(at.seed, at.stream, o, (int)i, T);
        if (lab_in)
            lab_out[i] = dd_train_label_elem(at.seed, at.stream, o, N, (int)i, lab_in[i],
                                             p_uncond, generic);
    }
}

int dd_cuda_train_draw(int32_t *t, int32_t *lab_out, const int32_t *lab_in, int N, int T,
                       float p_uncond, int32_t generic, dd_rng_at at) {
    if (N <= 0) return 0;
    train_draw_kernel<<<blocks_for((size_t)N), THREADS, 0, dd_cuda_stream>>>(
        t, lab_out, lab_in, N, T, p_uncond, generic, at);
    DD_CUDA_LAUNCHED("train_draw");
    return 0;
}

/* one thread per element; sample s = i / per picks its coefficients (by t when idx) */
static __global__ void q_sample_kernel(float *xt, const float *x0, const float *noise,
                                       const float *ca, const float *cb, const int32_t *idx,
                                       size_t per, size_t n) {
    GRID_STRIDE(i, n) {
        const size_t s = i / per;
        const size_t j = idx ? (size_t)idx[s] : s;
        xt[i] = dd_q_sample_elem(x0[i], noise[i], ca[j], cb[j]);
    }
}

int dd_cuda_q_sample(float *xt, const float *x0, const float *noise, const float *ca,
                     const float *cb, const int32_t *idx, int N, size_t per) {
    const size_t n = (size_t)N * per;
    if (!n) return 0;
    q_sample_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(xt, x0, noise, ca, cb, idx,
                                                                   per, n);
    DD_CUDA_LAUNCHED("q_sample");
    return 0;
}

/* The whole sampler step (backend.h): its row read once per thread from the table. */
static __global__ void sampler_step_kernel(float *x, float *x0_out, const float *out,
                                           const float *uncond, size_t n, float g, int clip,
                                           const float *tab, const int64_t *k, dd_rng_at at) {
    const float *rp = tab + *k * DD_SAMPLER_COLS;
    float row[DD_SAMPLER_COLS];
    for (int c = 0; c < DD_SAMPLER_COLS; c++) row[c] = rp[c];
    const uint64_t o = dd_rng_at_offset(at);
    const int guided = uncond != NULL;
    GRID_STRIDE(i, n) {
        /* draw only when the step has noise: a deterministic DDIM step costs no Philox */
        const float z = row[DD_SAMPLER_SIGMA] != 0.0f ? dd_philox_normal(at.seed, at.stream, o + i)
                                                      : 0.0f;
        float x0;
        x[i] = dd_sampler_full_elem(x[i], out[i], guided ? uncond[i] : 0.0f, guided, g, clip, row,
                                    z, &x0);
        if (x0_out) x0_out[i] = x0;
    }
}

int dd_cuda_sampler_step(float *x, float *x0_out, const float *out, const float *uncond, size_t n,
                         float g, int clip, const float *tab, const int64_t *k, dd_rng_at at) {
    if (!n) return 0;
    sampler_step_kernel<<<blocks_for(n), THREADS, 0, dd_cuda_stream>>>(x, x0_out, out, uncond, n,
                                                                       g, clip, tab, k, at);
    DD_CUDA_LAUNCHED("sampler_step");
    return 0;
}

static __global__ void poison_shared_kernel(int n) {
    DD_DYNAMIC_SHARED(float, poison_sm);
    volatile float *sm = poison_sm; /* stores that nothing reads back, kept */
    for (int i = threadIdx.x; i < n; i += blockDim.x) sm[i] = __uint_as_float(0x7fc00000u);
}

cudaError_t dd_cuda_kernel_image(void) {
    /* a GPU newer than every architecture built compiles the newest one's PTX here, once */
    struct cudaFuncAttributes attr;
    return cudaFuncGetAttributes(&attr, add_kernel);
}

int dd_cuda_poison_shared(void) {
#ifdef DD_CUDA_EMULATION
    return 0; /* the CPU emulation fills every block's shared memory with NaN anyway */
#endif
    int dev, bytes, sms;
    DD_CUDA_CHECK(cudaGetDevice(&dev));
    DD_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    DD_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    bytes = bytes / 16 * 16;
    if (bytes < 16) return 0;
    DD_CUDA_CHECK(cudaFuncSetAttribute(poison_shared_kernel,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    poison_shared_kernel<<<2 * sms, 256, (size_t)bytes, dd_cuda_stream>>>(bytes / 4);
    DD_CUDA_LAUNCHED("poison_shared");
    return 0;
}
