/* Handwritten convolution kernels (FP32 and TF32 tensor cores), an alternative to cuDNN that
 * cuda_dnn.c chooses per shape and direction (DIFFUSION_CONV=cudnn|own|own-tf32|auto there).
 * Every entry is correct for any dd_conv_shape (any K, stride, pad, odd sizes, no bias); the
 * tile configurations are tuned for the small UNet's convolutions (1 to 192 channels, 28x28
 * down to 7x7).
 *
 * All three directions are one implicit GEMM (no im2col buffer: the tile loaders gather from
 * the NCHW tensors, zero outside the image) with the same block structure: a BM x BN tile of
 * the output per block, BK reduction steps at a time through shared memory, and either the next
 * step's global loads issued into registers while the current step is multiplied (one buffer in
 * shared memory, two __syncthreads per step) or, in the s3 configurations, three buffers filled
 * by asynchronous copies two steps ahead (one __syncthreads per step).
 *   forward:         y[co, p] = sum over r of w[co, r] xcol[r, p] + b[co]
 *                    co < Cout, p = (n, oh, ow) < N Ho Wo, r = (ci, kh, kw) < Cin K K
 *   backward-data:   dx[ci, q] += sum over r of w[co, ci, kh, kw] dy[n, co, oh, ow]
 *                    q = (n, ih, iw) < N H W, r = (co, kh, kw) < Cout K K, (oh, ow) the output
 *                    position that reads (ih, iw) through (kh, kw), when there is one
 *   backward-filter: dw[co, r] += sum over p of dy[co, p] xcol[r, p], r < Cin K K, and one more
 *                    column r = Cin K K of ones when db is wanted, giving db[co] += sum dy[co, p]
 * The filter gradient reduces over N Ho Wo, far longer than its output, and the small UNet's deep
 * layers (7x7 at 64 to 192 channels) give forward and backward-data fewer output tiles than the
 * GPU has SMs: then the reduction is split over blockIdx.z, each split writes its partial tile to
 * the workspace, and a second kernel adds the partials in split order (deterministic: no float
 * atomics, so graph replays give the same bits). Every output element is written by exactly one
 * thread, which is what makes the backward "+=" plain read-modify-writes.
 *
 * Index ranges: positions (N Ho Wo, N H W) and every per-image offset fit an int (checked by
 * dd_conv_own_supported); offsets into whole tensors are 64-bit.
 *
 * Two kinds of tile configuration: FP32 FMA math, whose results match cuDNN's FP32 algorithms to
 * rounding and which run in both TF32 modes; and TF32 tensor-core math (mma.sync, sm_80 and
 * later), chosen only where TF32 is allowed, like cuDNN's and cuBLAS's tensor-op math. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_pipeline_primitives.h>

#include "cuda_internal.h"

namespace {

struct Geom {
    int N, Cin, H, W, Cout, K, stride, pad, Ho, Wo;
    int HW, HoWo, KK;
    int Px;   /* N H W: backward-data columns */
    int Py;   /* N Ho Wo: forward columns, backward-filter reduction */
    int Kf;   /* Cin K K: forward reduction, filter columns */
    int Kd;   /* Cout K K: backward-data reduction */
};

Geom geometry(const dd_conv_shape *s) {
    Geom g;
    g.N = s->N;
    g.Cin = s->Cin;
    g.H = s->H;
    g.W = s->W;
    g.Cout = s->Cout;
    g.K = s->K;
    g.stride = s->stride;
    g.pad = s->pad;
    g.Ho = s->Ho;
    g.Wo = s->Wo;
    g.HW = s->H * s->W;
    g.HoWo = s->Ho * s->Wo;
    g.KK = s->K * s->K;
    g.Px = s->N * g.HW;
    g.Py = s->N * g.HoWo;
    g.Kf = s->Cin * g.KK;
    g.Kd = s->Cout * g.KK;
    return g;
}

/* ---------------------------------------------------------------- the two kinds of math
 * A kernel's block computes its BM x BN tile with one of two policies, which own the
 * accumulators and say which thread holds which element of the tile:
 *   FmaTile<BM, BN, TM, TN>: FP32 FMA, a TM x TN register tile per thread (rows ty TM + i,
 *     columns tx TN + j), (BM / TM) (BN / TN) threads.
 *   MmaTile<BM, BN, WM, WN>: TF32 tensor cores (mma.sync m16n8k8, sm_80 and later), a WM x WN
 *     tile per warp as (WM / 16) x (WN / 8) mma tiles, (BM / WM) (BN / WN) warps. Operands
 *     are rounded to TF32 (nearest, ties away) when they are stored to shared memory, or, when
 *     asynchronous copies put them there, as the fragments are read; products accumulate in
 *     FP32. Only used when TF32 is allowed (dd_conv_own_config_tf32).
 * Shared tiles are reduction-major: a[k][m] at a + k AS + m, b[k][n] at b + k BS + n. */

/* n values from shared memory at p (16-byte aligned when n % 4 == 0): float4 loads halve the
 * shared-memory wavefronts of the inner product. */
template <int n> __device__ __forceinline__ void lds(float (&r)[n], const float *p) {
    if constexpr (n % 4 == 0) {
#pragma unroll
        for (int i = 0; i < n; i += 4) {
            const float4 v = *reinterpret_cast<const float4 *>(p + i);
            r[i] = v.x;
            r[i + 1] = v.y;
            r[i + 2] = v.z;
            r[i + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < n; i++) r[i] = p[i];
    }
}

template <int BM, int BN, int TM, int TN> struct FmaTile {
    static_assert(BM % TM == 0 && BN % TN == 0, "tile split");
    static_assert((TM % 4 || BM % 4 == 0) && (TN % 4 || BN % 4 == 0), "float4 tile reads aligned");
    static constexpr int T = (BM / TM) * (BN / TN), ROWS = TM, COLS = TN;
    static constexpr bool TF32 = false;
    float acc[TM][TN];
    int r0, c0;
    __device__ __forceinline__ explicit FmaTile(int tid) {
        r0 = tid / (BN / TN) * TM;
        c0 = tid % (BN / TN) * TN;
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < TN; j++) acc[i][j] = 0.f;
    }
    static __device__ __forceinline__ float prep(float v) { return v; }
    /* acc += a b over the BK reduction steps in shared memory (RAW: the values as copied, not
     * through prep; FP32 math takes them as they are) */
    template <int BK, bool RAW>
    __device__ __forceinline__ void multiply(const float *a, int AS, const float *b, int BS) {
#pragma unroll
        for (int k = 0; k < BK; k++) {
            float av[TM], bv[TN];
            lds<TM>(av, a + k * AS + r0);
            lds<TN>(bv, b + k * BS + c0);
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }
    __device__ __forceinline__ int row(int i) const { return r0 + i; }
    __device__ __forceinline__ int col(int j) const { return c0 + j; }
    __device__ __forceinline__ float val(int i, int j) const { return acc[i][j]; }
};

/* x rounded to TF32 (10 fraction bits; nearest, ties away from zero), as cvt.rna.tf32.f32 */
__device__ __forceinline__ float to_tf32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned int u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return __uint_as_float(u);
#else
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return __uint_as_float(u);
#endif
}

#if !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) /* for mma_tf32's shuffle version */
__device__ __forceinline__ unsigned long long pack2(float lo, float hi) {
    return (unsigned long long)__float_as_uint(hi) << 32 | __float_as_uint(lo);
}
__device__ __forceinline__ void unpack2(unsigned long long v, float (&out)[2]) {
    out[0] = __uint_as_float((unsigned int)v);
    out[1] = __uint_as_float((unsigned int)(v >> 32));
}
#endif

/* d += a b for one warp: a 16x8 (row), b 8x8 (col), d 16x8, in the PTX fragment layout of
 * mma.m16n8k8 .tf32. With g = lane / 4, t = lane % 4: a = {A[g][t], A[g+8][t], A[g][t+4],
 * A[g+8][t+4]}, b = {B[t][g], B[t+4][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
 * Below sm_80 (and in the CPU emulation) the same product from warp shuffles, in that layout. */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
          "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
#else
    /* lane g * 4 + q holds A[g][q], A[g+8][q], A[g][q+4], A[g+8][q+4]; lane n * 4 + q holds
     * B[q][n], B[q+4][n]: four 64-bit shuffles per q fetch what this lane's four outputs need */
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const unsigned long long a01 = pack2(a[0], a[1]), a23 = pack2(a[2], a[3]);
    const unsigned long long b01 = pack2(b[0], b[1]);
#pragma unroll
    for (int q = 0; q < 4; q++) {
        /* A rows g, g + 8 at k = q (lo) and q + 4 (hi); B columns 2t (c0), 2t + 1 (c1) */
        float lo[2], hi[2], c0[2], c1[2];
        unpack2(__shfl_sync(0xffffffffu, a01, g * 4 + q), lo);
        unpack2(__shfl_sync(0xffffffffu, a23, g * 4 + q), hi);
        unpack2(__shfl_sync(0xffffffffu, b01, 8 * t + q), c0);     /* column 2t: k = q, q + 4 */
        unpack2(__shfl_sync(0xffffffffu, b01, 8 * t + 4 + q), c1); /* column 2t + 1 */
        d[0] = fmaf(hi[0], c0[1], fmaf(lo[0], c0[0], d[0]));
        d[1] = fmaf(hi[0], c1[1], fmaf(lo[0], c1[0], d[1]));
        d[2] = fmaf(hi[1], c0[1], fmaf(lo[1], c0[0], d[2]));
        d[3] = fmaf(hi[1], c1[1], fmaf(lo[1], c1[0], d[3]));
    }
#endif
}

/* dst (shared) = ok ? *src (global) : 0, asynchronously: lands by the __pipeline_wait_prior
 * that covers its commit group. src must be a valid address even when !ok (it is not read). */
__device__ __forceinline__ void cp_async4(float *dst, const float *src, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
                 :
                 : "r"((unsigned int)__cvta_generic_to_shared(dst)), "l"(src), "r"(ok ? 4 : 0)
                 : "memory");
#else
    __pipeline_memcpy_async(dst, src, 4, ok ? 0 : 4);
#endif
}

/* the same for 16 bytes (dst and src 16-byte aligned); ok false: 16 zero bytes */
__device__ __forceinline__ void cp_async16(float *dst, const float *src, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"((unsigned int)__cvta_generic_to_shared(dst)), "l"(src), "r"(ok ? 16 : 0)
                 : "memory");
#else
    __pipeline_memcpy_async(dst, src, 16, ok ? 0 : 16);
#endif
}

/* A staged input row (the staged kernels below): RW floats, a multiple of 4, with input column
 * iw at 4 + iw (16-byte aligned from iw = 0) and the zero halo left and right of it; at least
 * Wout + 6 for a padding of 0 to 2. */
__host__ __device__ __forceinline__ int stage_rw(int Wout) { return (Wout + 9) & ~3; }

/* n4 float4s of shared memory at p rounded to TF32 in place by the block's T threads: the staged
 * kernels round each staged operand once, after its copies land, instead of at every fragment
 * read (each staged input value feeds 9 taps, each weight every warp of the block) */
__device__ __forceinline__ void round_tf32_shared(float *p, int n4, int tid, int T) {
    float4 *q = reinterpret_cast<float4 *>(p);
    for (int i = tid; i < n4; i += T) {
        float4 v = q[i];
        v.x = to_tf32(v.x);
        v.y = to_tf32(v.y);
        v.z = to_tf32(v.z);
        v.w = to_tf32(v.w);
        q[i] = v;
    }
}

template <int BM, int BN, int WM, int WN> struct MmaTile {
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 8 == 0, "warp split");
    static constexpr int MT = WM / 16, NT = WN / 8;
    static constexpr int T = (BM / WM) * (BN / WN) * 32, ROWS = 2 * MT, COLS = 2 * NT;
    static constexpr bool TF32 = true;
    float acc[MT][NT][4];
    int r0, c0, g, t; /* the warp's tile origin; the lane's group and thread in group */
    __device__ __forceinline__ explicit MmaTile(int tid) {
        const int warp = tid >> 5, lane = tid & 31;
        r0 = warp / (BN / WN) * WM;
        c0 = warp % (BN / WN) * WN;
        g = lane >> 2;
        t = lane & 3;
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
    }
    static __device__ __forceinline__ float prep(float v) { return to_tf32(v); }
    /* RAW: the tiles hold the values as copied, rounded here as the fragments are read */
    template <int BK, bool RAW>
    __device__ __forceinline__ void multiply(const float *a, int AS, const float *b, int BS) {
        static_assert(BK % 8 == 0, "whole mma steps");
#pragma unroll
        for (int k = 0; k < BK; k += 8) {
            const float *ak = a + (k + t) * AS + r0 + g, *bk = b + (k + t) * BS + c0 + g;
            float af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                af[i][0] = ak[i * 16];
                af[i][1] = ak[i * 16 + 8];
                af[i][2] = ak[4 * AS + i * 16];
                af[i][3] = ak[4 * AS + i * 16 + 8];
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
                bf[j][0] = bk[j * 8];
                bf[j][1] = bk[4 * BS + j * 8];
            }
            if constexpr (RAW) {
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int e = 0; e < 4; e++) af[i][e] = to_tf32(af[i][e]);
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) bf[j][e] = to_tf32(bf[j][e]);
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) mma_tf32(acc[i][j], af[i], bf[j]);
        }
    }
    /* row i: mma tile i / 2, upper (g) or lower (g + 8) half; column j: mma tile j / 2, 2t or
     * 2t + 1 */
    __device__ __forceinline__ int row(int i) const { return r0 + (i >> 1) * 16 + (i & 1) * 8 + g; }
    __device__ __forceinline__ int col(int j) const { return c0 + (j >> 1) * 8 + 2 * t + (j & 1); }
    __device__ __forceinline__ float val(int i, int j) const {
        return acc[i >> 1][j >> 1][(i & 1) * 2 + (j & 1)];
    }
};

/* ---------------------------------------------------------------- forward and backward-data */

/* Both are C (M x cols) = A (M x R) B (R x cols) with A a weight gather and B an activation
 * gather; each thread loads B in one fixed column (tid % BN), so its column decode is done once.
 * A is loaded reduction-index fastest (contiguous in w for both directions) into As[r][m]
 * (rows padded: fewer bank conflicts on the transposing store; 8 floats for the tensor cores,
 * whose fragment reads are then conflict-free). KT is K when known at compile time (3, 4), else
 * 0 (K from g). DATA selects backward-data. */
/* The split reductions' second pass without a second kernel: each split's block writes its
 * partial tile, and the last of an output tile's splits to finish (a counter per tile, which
 * that block sets back to zero for the next launch) adds the partials in split order, the same
 * sums as conv_*_reduce_kernel's, bit for bit, whichever block is last. The partials are read
 * through L2 (__ldcg): they were written by other SMs during this launch. One stream runs the
 * kernels, so one launch at a time uses the counters. */
constexpr int TILE_COUNTERS = 1 << 16; /* more output tiles than this: the second kernel */
__device__ unsigned int conv_tile_counters[TILE_COUNTERS];

/* Called by every thread of the block after its partial is written; true in every thread of the
 * block that is its tile's last split. */
__device__ __forceinline__ bool last_split(int *flag) {
    __threadfence(); /* this thread's partial is visible to the whole GPU... */
    __syncthreads(); /* ...for every thread of the block, before the count */
    if (threadIdx.x == 0) {
        unsigned int *cnt = &conv_tile_counters[blockIdx.y * gridDim.x + blockIdx.x];
        const bool last = atomicAdd(cnt, 1u) == gridDim.z - 1;
        if (last) {
            atomicExch(cnt, 0u);
            __threadfence(); /* the other splits' partials are read after the count */
        }
        *flag = last;
    }
    __syncthreads();
    return *flag != 0;
}

/* element i of the splits' partials part[z][i] (n each), summed in split order; read through L2
 * (other SMs wrote them, possibly during this launch) */
__device__ __forceinline__ float split_sum(const float *part, int64_t n, int64_t i, int splits) {
    float s = 0.f;
    for (int z = 0; z < splits; z++) s += __ldcg(part + (int64_t)z * n + i);
    return s;
}

/* Forward / backward-data: element i = (m, c) of the splits' partials part[z][m][c], summed and
 * stored into the NCHW output: forward y = sum + b, backward-data dx += sum. */
template <bool DATA>
__device__ __forceinline__ void gemm_split_store(float *out, const float *part, const float *bias,
                                                 int M, int cols, int plane, int splits,
                                                 int64_t i) {
    const float s = split_sum(part, (int64_t)M * cols, i, splits);
    const int m = (int)(i / cols), c = (int)(i - (int64_t)m * cols);
    const int img = c / plane, pos = c - img * plane;
    float *o = out + ((int64_t)img * M + m) * plane + pos;
    if (DATA)
        *o += s;
    else
        *o = s + (bias ? __ldg(bias + m) : 0.f);
}

/* Backward-filter: element i = (m, r) of the splits' partials part[z][m][r], summed and added to
 * dw[m][r] (r < Kf) or db[m] (r = Kf, the bias column). */
__device__ __forceinline__ void filter_split_store(float *dw, float *db, const float *part, int Cout,
                                                   int NR, int Kf, int splits, int64_t i) {
    const float s = split_sum(part, (int64_t)Cout * NR, i, splits);
    const int m = (int)(i / NR), r = (int)(i - (int64_t)m * NR);
    if (r < Kf) {
        if (dw) dw[(int64_t)m * Kf + r] += s;
    } else {
        db[m] += s;
    }
}

template <bool DATA, int KT, int BM, int BN, int BK, class Math, int STAGES>
__global__ void __launch_bounds__(Math::T)
    conv_gemm_kernel(float *__restrict__ out, const float *__restrict__ act,
                     const float *__restrict__ w, const float *__restrict__ bias, const Geom g,
                     float *__restrict__ part, int chunk, int fused) {
    constexpr int T = Math::T;
    static_assert(T % BN == 0 && (BK * BN) % T == 0, "B tile: whole rows per pass");
    static_assert(STAGES >= 1 && STAGES <= 4, "pipeline depth");
    constexpr int NA = (BM * BK + T - 1) / T, NB = BK * BN / T, RSTEP = T / BN;
    constexpr int AS = BM + (Math::TF32 ? 8 : 4), BS = BN + (Math::TF32 ? 8 : 0);
    __shared__ __align__(16) float As[STAGES * BK * AS];
    __shared__ __align__(16) float Bs[STAGES * BK * BS];

    const int K = KT ? KT : g.K, KK = KT ? KT * KT : g.KK;
    const int M = DATA ? g.Cin : g.Cout;     /* output channels of this GEMM */
    const int R = DATA ? g.Kd : g.Kf;        /* reduction length */
    const int cols = DATA ? g.Px : g.Py;     /* output positions */
    const int plane = DATA ? g.HW : g.HoWo;  /* output plane size */
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, c0 = blockIdx.x * BN;
    /* this split's reduction range [kb, ke) (the whole of it without a split) */
    const int kb = blockIdx.z * chunk;
    const int ke = (int64_t)kb + chunk < R ? kb + chunk : R;

    /* this thread's B column, decoded once */
    const int bc = tid % BN, br = tid / BN;
    const int c = c0 + bc;
    const bool cok = c < cols;
    int r0 = 0, s0 = 0;   /* forward: ih0, iw0; backward-data: ih + pad, iw + pad */
    const float *src = act; /* the column's image in the gathered tensor */
    if (cok) {
        if (DATA) {
            const int img = c / g.HW, hw = c - img * g.HW, ih = hw / g.W, iw = hw - ih * g.W;
            r0 = ih + g.pad;
            s0 = iw + g.pad;
            src = act + (int64_t)img * g.Cout * g.HoWo;
        } else {
            const int img = c / g.HoWo, hw = c - img * g.HoWo, oh = hw / g.Wo, ow = hw - oh * g.Wo;
            r0 = oh * g.stride - g.pad;
            s0 = ow * g.stride - g.pad;
            src = act + (int64_t)img * g.Cin * g.HW;
        }
    }

    /* the global address of this thread's i-th element of the A / B tile at step k0, or NULL
     * where the element is zero (padding, past the tile's edge, past the reduction) */
    auto a_src = [&](int i, int k0) -> const float * {
        const int e = tid + i * T, m = e / BK, k = k0 + e % BK;
        if (e >= BM * BK || m0 + m >= M || k >= ke) return nullptr;
        if (DATA) { /* k = (co, kh, kw): w[co, ci = m0 + m, kh, kw] */
            const int co = k / KK, rr = k - co * KK;
            return w + ((int64_t)co * g.Cin + m0 + m) * KK + rr;
        }
        return w + (int64_t)(m0 + m) * R + k;
    };
    auto b_src = [&](int i, int k0) -> const float * {
        const int k = k0 + br + i * RSTEP;
        if (!cok || k >= ke) return nullptr;
        const int ch = k / KK, rr = k - ch * KK, kh = rr / K, kw = rr - kh * K;
        if (DATA) { /* dy[co = ch, oh, ow] with oh stride = ih + pad - kh */
            const int nh = r0 - kh, nw = s0 - kw;
            int oh = nh, ow = nw;
            if (g.stride != 1) {
                if (nh < 0 || nw < 0 || nh % g.stride || nw % g.stride) return nullptr;
                oh = nh / g.stride;
                ow = nw / g.stride;
            }
            if ((unsigned)oh < (unsigned)g.Ho && (unsigned)ow < (unsigned)g.Wo)
                return src + ch * g.HoWo + oh * g.Wo + ow;
            return nullptr;
        }
        const int ih = r0 + kh, iw = s0 + kw; /* x[ci = ch, ih, iw] */
        if ((unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W)
            return src + ch * g.HW + ih * g.W + iw;
        return nullptr;
    };
    /* where element i of each tile goes in shared memory */
    auto a_dst = [&](int i) { const int e = tid + i * T; return (e % BK) * AS + e / BK; };
    auto b_dst = [&](int i) { return (br + i * RSTEP) * BS + bc; };

    Math tile(tid);
    if constexpr (STAGES == 1) {
        /* one tile in shared memory; the next step's loads wait in registers meanwhile */
        float ra[NA], rb[NB];
        auto load = [&](int k0) {
#pragma unroll
            for (int i = 0; i < NA; i++) {
                const float *p = a_src(i, k0);
                ra[i] = p ? __ldg(p) : 0.f;
            }
#pragma unroll
            for (int i = 0; i < NB; i++) {
                const float *p = b_src(i, k0);
                rb[i] = p ? __ldg(p) : 0.f;
            }
        };
        if (kb < ke) load(kb);
        for (int k0 = kb; k0 < ke; k0 += BK) {
#pragma unroll
            for (int i = 0; i < NA; i++)
                if (tid + i * T < BM * BK) As[a_dst(i)] = Math::prep(ra[i]);
#pragma unroll
            for (int i = 0; i < NB; i++) Bs[b_dst(i)] = Math::prep(rb[i]);
            __syncthreads();
            if (k0 + BK < ke) load(k0 + BK); /* in flight while this step multiplies */
            tile.template multiply<BK, false>(As, AS, Bs, BS);
            __syncthreads(); /* before the next step overwrites the tiles */
        }
    } else {
        /* STAGES tiles in shared memory, filled by asynchronous copies STAGES - 1 steps ahead
         * (one commit group per step, empty past the end); operands are rounded to TF32 as the
         * fragments are read */
        const int steps = kb < ke ? (ke - kb + BK - 1) / BK : 0;
        auto issue = [&](int step) {
            if (step < steps) {
                const int k0 = kb + step * BK, st = step % STAGES;
#pragma unroll
                for (int i = 0; i < NA; i++)
                    if (tid + i * T < BM * BK) {
                        const float *p = a_src(i, k0);
                        cp_async4(&As[st * BK * AS + a_dst(i)], p ? p : w, p != nullptr);
                    }
#pragma unroll
                for (int i = 0; i < NB; i++) {
                    const float *p = b_src(i, k0);
                    cp_async4(&Bs[st * BK * BS + b_dst(i)], p ? p : act, p != nullptr);
                }
            }
            __pipeline_commit();
        };
#pragma unroll
        for (int st = 0; st < STAGES - 1; st++) issue(st);
        for (int step = 0; step < steps; step++) {
            __pipeline_wait_prior(STAGES - 2); /* this thread's copies for `step` have landed */
            /* everyone's have; and everyone is done with step - 1's stage. The barrier is also
             * what keeps the compiler from moving shared reads above the wait (CUDA's
             * __pipeline_wait_prior has no memory clobber): no stage is read between the two. */
            __syncthreads();
            issue(step + STAGES - 1); /* into step - 1's stage */
            const int st = step % STAGES;
            tile.template multiply<BK, true>(As + st * BK * AS, AS, Bs + st * BK * BS, BS);
        }
        __pipeline_wait_prior(0); /* only empty groups are left; shared memory is not reused */
    }

    if (part) { /* a split: the partial tile to part[z][m][column] */
        const int64_t n = (int64_t)M * cols;
        float *pz = part + (int64_t)blockIdx.z * n;
#pragma unroll
        for (int i = 0; i < Math::ROWS; i++) {
            const int m = m0 + tile.row(i);
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < Math::COLS; j++) {
                const int cj = c0 + tile.col(j);
                if (cj < cols) pz[(int64_t)m * cols + cj] = tile.val(i, j);
            }
        }
        __shared__ int last;
        if (!fused || !last_split(&last)) return;
        /* the tile's last split: its sums, as conv_gemm_reduce_kernel's */
        for (int e = tid; e < BM * BN; e += T) {
            const int m = m0 + e / BN, cj = c0 + e % BN;
            if (m < M && cj < cols)
                gemm_split_store<DATA>(out, part, bias, M, cols, plane, (int)gridDim.z,
                                       (int64_t)m * cols + cj);
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < Math::COLS; j++) {
        const int cj = c0 + tile.col(j);
        if (cj >= cols) continue;
        const int img = cj / plane, pos = cj - img * plane;
        float *o = out + (int64_t)img * M * plane + pos;
#pragma unroll
        for (int i = 0; i < Math::ROWS; i++) {
            const int m = m0 + tile.row(i);
            if (m >= M) continue;
            if (DATA)
                o[(int64_t)m * plane] += tile.val(i, j);
            else
                o[(int64_t)m * plane] = tile.val(i, j) + (bias ? __ldg(bias + m) : 0.f);
        }
    }
}

/* ---------------------------------------------------------------- stride-1 3x3: staged input
 * Forward and backward-data of a stride-1 3x3 convolution (any padding up to 2) as an implicit
 * GEMM whose activation operand is read from a tile of the input staged in shared memory, instead
 * of gathered element by element from global memory: each block takes one image, th whole output
 * rows (th Wout <= BN columns) and BM output channels; per group of CK input channels it copies
 * the th + 2 input rows its outputs read, with their zero halo, into shared memory with
 * asynchronous copies, beside the weights (m-major, rows of KS = 76 floats; 16-byte copies in the
 * forward when Cin is a multiple of 8), while the tensor cores work on the previous group:
 * rows whose width is a multiple of 4 as 16-byte copies of their interior (stage_rw's layout puts
 * input column 0 on a 16-byte boundary; the halo columns are zeroed once per block and never
 * written again), others a warp per row, 4 bytes a lane, halo included. An element (k = (ci, kh, kw), p = (oh, ow)) of the activation
 * operand is then xs[koff[k] + noff(p)]: the k offsets are a table in shared memory and each
 * lane's p offsets are computed once, the same for every group. Backward-data is the forward
 * convolution of dy with the weights transposed and flipped (w'[ci][co][kh][kw] =
 * w[co][ci][2 - kh][2 - kw], padding 2 - pad), done in the weight loads. TF32 tensor cores,
 * operands rounded in shared memory once a group's copies have landed (round_tf32_shared; one
 * more barrier a group, instead of a conversion at every fragment read). Registers are capped
 * for 24 warps per SM (80 a thread, no spills under ptxas for sm_90): the copies are latency-
 * bound, and more blocks in flight hide them. Shapes it does not cover (other strides and kernel
 * sizes, rows wider than BN, tiles larger than the shared buffers) go to the tc32x64s3
 * configuration. */
constexpr int ST_CK = 8; /* input channels per staged group: 72 reduction steps, 9 mma k-steps */

/* A group's weights for the staged kernels (conv_stage_kernel, conv_plane_kernel) into ws,
 * m-major: ws[m KS + k] = A[m0 + m][ci0 9 + k] (KS = 76; k = (input channel cl, tap rr)), zeros
 * where a channel does not exist. Forward: A = w[co][ci][rr], 72 contiguous floats a row, as
 * 16-byte copies when wvec (whole groups, w aligned). Backward-data: A[ci][co, rr] =
 * w[co][ci][8 - rr] (the GEMM's input channels are the convolution's outputs): a thread takes one
 * (m, cl) pair and copies its 9 taps, reversed, from one index computation. */
template <bool DATA, int BM, int T>
__device__ __forceinline__ void stage_weights(float *ws, const float *__restrict__ w,
                                              const Geom &g, int Ci, int Co, int ci0, int m0,
                                              bool wvec, int tid) {
    constexpr int CK = ST_CK, KC = ST_CK * 9, KS = KC + 4;
    if (wvec) { /* w[co][ci0 .. ci0 + 8][9]: 72 contiguous floats, 18 float4s */
        for (int e = tid; e < BM * (KC / 4); e += T) {
            const int m = e / (KC / 4), q = e - m * (KC / 4), co = m0 + m;
            const bool ok = co < Co;
            cp_async16(ws + m * KS + 4 * q, ok ? w + ((int64_t)co * g.Cin + ci0) * 9 + 4 * q : w,
                       ok);
        }
    } else if (DATA) {
        for (int e = tid; e < BM * CK; e += T) {
            const int m = e / CK, cl = e - m * CK, co = m0 + m;
            const bool ok = co < Co && ci0 + cl < Ci;
            const float *src = ok ? w + ((int64_t)(ci0 + cl) * g.Cin + co) * 9 : w;
            float *dst = ws + m * KS + cl * 9;
#pragma unroll
            for (int rr = 0; rr < 9; rr++) cp_async4(dst + rr, ok ? src + (8 - rr) : w, ok);
        }
    } else { /* a partial last group (Cin not a multiple of 8) or an unaligned w */
        const int kmax = (Ci - ci0) * 9; /* this group's reduction rows that exist */
        for (int e = tid; e < BM * KC; e += T) {
            const int m = e / KC, k = e - m * KC, co = m0 + m;
            const bool ok = k < kmax && co < Co;
            const int64_t idx = ((int64_t)co * g.Cin + ci0) * 9 + k;
            cp_async4(ws + m * KS + k, ok ? w + idx : w, ok);
        }
    }
}

/* One staged group's 9 mma k-steps for a warp of the staged kernels: A fragments from the
 * m-major weights at ak = ws + (warp's first row + gq) KS + tq, B fragments from the staged input
 * at koff[k] + noff[j] (both rounded to TF32 already) */
template <int MT, int NT>
__device__ __forceinline__ void group_mma(float (&acc)[MT][NT][4], const float *xb,
                                          const float *ak0, const int *koff,
                                          const int (&noff)[NT], int tq) {
    constexpr int KC = ST_CK * 9, KS = KC + 4;
#pragma unroll
    for (int st = 0; st < KC / 8; st++) {
        const float *ak = ak0 + st * 8;
        float af[MT][4], bf[NT][2];
#pragma unroll
        for (int i = 0; i < MT; i++) {
            af[i][0] = ak[i * 16 * KS];
            af[i][1] = ak[(i * 16 + 8) * KS];
            af[i][2] = ak[i * 16 * KS + 4];
            af[i][3] = ak[(i * 16 + 8) * KS + 4];
        }
        const int k0 = koff[st * 8 + tq], k1 = koff[st * 8 + tq + 4];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            bf[j][0] = xb[k0 + noff[j]];
            bf[j][1] = xb[k1 + noff[j]];
        }
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++) mma_tf32(acc[i][j], af[i], bf[j]);
    }
}

template <int MT, int NT, int WMW, int WNW> struct StageShape {
    static constexpr int BM = 16 * MT * WMW, BN = 8 * NT * WNW, T = 32 * WMW * WNW;
    static constexpr int XC = BN + 96; /* staged floats per channel: (th + 2) stage_rw(Wout) */
    static constexpr int KC = ST_CK * 9, KS = KC + 4; /* weights m-major, rows padded to 76:
                                                       * conflict-free fragment reads */
};

template <bool DATA, int MT, int NT, int WMW, int WNW>
__global__ void __launch_bounds__(32 * WMW * WNW, 768 / (32 * WMW * WNW))
    conv_stage_kernel(float *__restrict__ out, const float *__restrict__ in,
                      const float *__restrict__ w, const float *__restrict__ bias, const Geom g,
                      int th, int tiles_h) {
    using S = StageShape<MT, NT, WMW, WNW>;
    constexpr int BM = S::BM, T = S::T, XC = S::XC, KS = S::KS, KC = S::KC, CK = ST_CK;
    static_assert(KC % 8 == 0, "whole mma k-steps per group");
    __shared__ __align__(16) float xs[2][CK * XC];
    __shared__ __align__(16) float ws[2][BM * KS];

    const int Ci = DATA ? g.Cout : g.Cin, Co = DATA ? g.Cin : g.Cout; /* GEMM in / out channels */
    const int Hi = DATA ? g.Ho : g.H, Wi = DATA ? g.Wo : g.W;
    const int Hout = DATA ? g.H : g.Ho, Wout = DATA ? g.W : g.Wo;
    const int pp = DATA ? 2 - g.pad : g.pad;
    /* staged rows: RW floats, staged column c (input column c - pp) at o0 + c; Wp columns */
    const int Wp = Wout + 2, RW = stage_rw(Wout), o0 = 4 - pp, cs = (th + 2) * RW;
    const int nrows = CK * (th + 2);
    /* rows copied as float4s (their interior; the halo stays zero from the start) when they are
     * whole, aligned float4s: q per row, rpi rows per warp pass, this lane's row and float4 */
    const int q = Wi >> 2;
    const bool vec = (Wi & 3) == 0 && q <= 32 && ((uintptr_t)in & 15) == 0;
    const int img = blockIdx.x / tiles_h, oh0 = (blockIdx.x - img * tiles_h) * th;
    const int m0 = blockIdx.y * BM;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    const int rpi = vec ? 32 / q : 1, lr = vec ? lane / q : 0, lc = vec ? lane - lr * q : 0;
    const int wm = warp / WNW * (16 * MT), wn = warp % WNW * (8 * NT);
    const int rows_here = Hout - oh0 < th ? Hout - oh0 : th;
    const int npos = rows_here * Wout; /* this block's output positions, contiguous in the plane */
    const float *src = in + (int64_t)img * Ci * Hi * Wi;
    const bool wvec = !DATA && Ci % CK == 0 && ((uintptr_t)w & 15) == 0; /* 16-byte weights */

    /* this lane's activation columns (p = wn + 8 j + gq) and reduction rows (k = 8 s + tq, + 4) */
    int noff[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int p = wn + j * 8 + gq;
        noff[j] = p < npos ? (p / Wout) * RW + p % Wout + o0 : 0;
    }
    __shared__ int koff[KC]; /* k's offset in the staged tile, the same for every group */
    for (int k = tid; k < KC; k += T) {
        const int cl = k / 9, rr = k - cl * 9;
        koff[k] = cl * cs + (rr / 3) * RW + rr % 3;
    } /* read after the first group's barrier */
    if (vec) {
        for (int i = tid; i < 2 * CK * XC; i += T) (&xs[0][0])[i] = 0.f;
        __syncthreads(); /* before any copy lands on the zeros */
    }

    /* group c (input channels [8 c, 8 c + 8)) into buffer b: input rows, then weights */
    auto issue = [&](int c, int b) {
        const int ci0 = c * CK;
        if (vec) {
            for (int rw0 = warp * rpi; rw0 < nrows; rw0 += (T / 32) * rpi) {
                const int rw = rw0 + lr;
                if (lr >= rpi || rw >= nrows) continue;
                const int cl = rw / (th + 2), r = rw - cl * (th + 2);
                const int ci = ci0 + cl, ih = oh0 - pp + r;
                const bool rok = ci < Ci && (unsigned)ih < (unsigned)Hi;
                const float *rowp = rok ? src + ((int64_t)ci * Hi + ih) * Wi + 4 * lc : in;
                cp_async16(&xs[b][cl * cs + r * RW + 4 + 4 * lc], rowp, rok);
            }
        } else {
            for (int rw = warp; rw < nrows; rw += T / 32) {
                const int cl = rw / (th + 2), r = rw - cl * (th + 2);
                const int ci = ci0 + cl, ih = oh0 - pp + r;
                const bool rok = ci < Ci && (unsigned)ih < (unsigned)Hi;
                const float *rowp = rok ? src + ((int64_t)ci * Hi + ih) * Wi : in;
                for (int col = lane; col < Wp; col += 32) {
                    const int iw = col - pp;
                    const bool ok = rok && (unsigned)iw < (unsigned)Wi;
                    cp_async4(&xs[b][cl * cs + r * RW + o0 + col], ok ? rowp + iw : in, ok);
                }
            }
        }
        stage_weights<DATA, BM, T>(ws[b], w, g, Ci, Co, ci0, m0, wvec, tid);
        __pipeline_commit();
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    const int groups = (Ci + CK - 1) / CK;
    if (groups > 0) issue(0, 0);
    for (int c = 0; c < groups; c++) {
        if (c + 1 < groups) {
            issue(c + 1, (c + 1) & 1); /* into the buffer group c - 1 used */
            __pipeline_wait_prior(1);  /* group c's copies have landed (this thread's) */
        } else {
            __pipeline_wait_prior(0);
        }
        __syncthreads(); /* everyone's have */
        round_tf32_shared(xs[c & 1], CK * cs / 4, tid, T);
        round_tf32_shared(ws[c & 1], BM * KS / 4, tid, T);
        __syncthreads(); /* rounded, before anyone reads them */
        group_mma<MT, NT>(acc, xs[c & 1], ws[c & 1] + (wm + gq) * KS + tq, koff, noff, tq);
        __syncthreads(); /* before the next issue overwrites this buffer */
    }

    /* D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1] of each mma tile */
    float *ob = out + (int64_t)img * Co * Hout * Wout + (int64_t)oh0 * Wout;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++) {
            const int m = m0 + wm + i * 16 + gq + e2 * 8;
            if (m >= Co) continue;
            const float bv = !DATA && bias ? __ldg(bias + m) : 0.f;
            float *o = ob + (int64_t)m * Hout * Wout;
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e1 = 0; e1 < 2; e1++) {
                    const int p = wn + j * 8 + 2 * tq + e1;
                    if (p >= npos) continue;
                    if (DATA)
                        o[p] += acc[i][j][e2 * 2 + e1];
                    else
                        o[p] = acc[i][j][e2 * 2 + e1] + bv;
                }
        }
}

/* conv_plane_kernel: the staged kernel for small maps (7x7, 14x14: planes of at most
 * PLANE_MAX values), where a block of conv_stage_kernel holds one image's rows and most of its
 * columns stay empty (49 positions of 128 at 7x7) while the weights are staged again for every
 * image. Here a block takes `ipb` whole images side by side (positions p = image * Ho Wo + oh Wo +
 * ow, 98 of 112 columns at 7x7), so one staging of each group's weights serves them all. Each
 * (channel, image) plane is copied by one warp as contiguous 4-byte asynchronous copies (a lane
 * an element, its place in the zero-haloed staged plane computed once), instead of a warp pass
 * per 7-float row. The weights are staged m-major (KS = 76 floats a row: the fragment reads are
 * conflict-free), as 16-byte copies in the forward when every group is whole (Cin a multiple of
 * 8) and w is aligned. Everything else (the mma steps, TF32 rounding in shared memory, the
 * backward-data's flipped weights, the two buffers) is as in conv_stage_kernel.
 *
 * KSPLIT > 1 (the pk configurations): the block's warps form KSPLIT sets of WMW x WNW warps, each
 * set the whole output tile; a stage copies KSPLIT groups (8 input channels each) at once and set
 * h multiplies group KSPLIT s + h. These layers are short (8 groups at 64 channels) and few
 * warps fit the output (16 x 56 a warp: about 7 warps an SM at 7x7 and batch 256), so each warp
 * waits out every group's barriers and copies in turn; splitting the reduction halves that chain
 * and doubles the warps that hide it. The sets' sums meet in shared memory at the end and are
 * added in set order (the same bits every run), and set 0 writes the tile. Shared memory is
 * dynamic (over 48 KiB): two buffers of KSPLIT groups' planes and weights, then the k table. */
constexpr int PLANE_PASSES = 8, PLANE_MAX = 32 * PLANE_PASSES; /* values of an input plane */

template <int MT, int NT, int WMW, int WNW, int KSPLIT> struct PlaneShape {
    static constexpr int BM = 16 * MT * WMW, BN = 8 * NT * WNW;
    static constexpr int TW = 32 * WMW * WNW, T = TW * KSPLIT; /* a set's threads, the block's */
    static constexpr int XC = BN <= 112 ? 336 : 384; /* staged floats per channel, at most */
    static constexpr int KC = ST_CK * 9, KS = KC + 4;
    static constexpr int XF = ST_CK * XC, WF = BM * KS; /* floats of a group's planes, weights */
    static constexpr int SMEM = (2 * KSPLIT * (XF + WF) + KC) * 4; /* bytes, the k table's too */
    /* blocks an SM can hold (shared memory, 1 KiB reserved a block; 24 warps at most) */
    static constexpr int FIT = (228 * 1024) / (SMEM + 1024) < 768 / T ? (228 * 1024) / (SMEM + 1024)
                                                                       : 768 / T;
    /* the launch bound: as many blocks as fit, but a split kernel gets at least 96 registers a
     * thread (at 80 the set-split forward of 16 x 224 spills) */
    static constexpr int BLOCKS = FIT < 1                                          ? 1
                                  : KSPLIT > 1 && FIT > 1 && 65536 / (FIT * T) < 96 ? FIT - 1
                                                                                    : FIT;
    static_assert(KSPLIT == 1 || TW * MT * NT * 4 <= 2 * KSPLIT * XF, "the sets' sums fit");
    static_assert(SMEM <= 227 * 1024, "a block's shared memory");
};

template <bool DATA, int MT, int NT, int WMW, int WNW, int KSPLIT>
__global__ void __launch_bounds__(PlaneShape<MT, NT, WMW, WNW, KSPLIT>::T,
                                  PlaneShape<MT, NT, WMW, WNW, KSPLIT>::BLOCKS)
    conv_plane_kernel(float *__restrict__ out, const float *__restrict__ in,
                      const float *__restrict__ w, const float *__restrict__ bias, const Geom g,
                      int ipb) {
    using S = PlaneShape<MT, NT, WMW, WNW, KSPLIT>;
    constexpr int BM = S::BM, T = S::T, XF = S::XF, WF = S::WF, KS = S::KS, KC = S::KC;
    constexpr int CK = ST_CK, SW = WMW * WNW; /* warps a set */
    DD_DYNAMIC_SHARED(float, smem);
    float *const xs0 = smem;                      /* [2][KSPLIT][XF] */
    float *const ws0 = smem + 2 * KSPLIT * XF;    /* [2][KSPLIT][WF] */
    int *const koff = reinterpret_cast<int *>(ws0 + 2 * KSPLIT * WF); /* [KC] */

    const int Ci = DATA ? g.Cout : g.Cin, Co = DATA ? g.Cin : g.Cout; /* GEMM in / out channels */
    const int Hi = DATA ? g.Ho : g.H, Wi = DATA ? g.Wo : g.W;
    const int Hout = DATA ? g.H : g.Ho, Wout = DATA ? g.W : g.Wo;
    const int pp = DATA ? 2 - g.pad : g.pad;
    const int HWi = Hi * Wi, HWo = Hout * Wout, RW = stage_rw(Wout), IS = (Hout + 2) * RW;
    const int cs = ipb * IS; /* staged floats per channel */
    const int img0 = blockIdx.x * ipb, nimg = g.N - img0 < ipb ? g.N - img0 : ipb;
    const int m0 = blockIdx.y * BM;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    const int set = warp / SW, ws_ = warp - set * SW; /* this warp's set, its place in it */
    const int wm = ws_ / WNW * (16 * MT), wn = ws_ % WNW * (8 * NT);
    const int npos = nimg * HWo;
    const bool wvec = !DATA && Ci % CK == 0 && ((uintptr_t)w & 15) == 0;

    /* input (ih, iw) of a plane sits at (ih + pp) RW + 4 + iw of its staged plane, so output
     * (oh, ow) and tap (kh, kw) read (oh + kh) RW + ow + kw + 4 - pp */
    int noff[NT];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int p = wn + j * 8 + gq;
        const int il = p / HWo, r = p - il * HWo, oh = r / Wout;
        noff[j] = p < npos ? il * IS + oh * RW + (r - oh * Wout) + 4 - pp : 0;
    }
    int soff[PLANE_PASSES]; /* this lane's elements e = lane + 32 t of an input plane */
#pragma unroll
    for (int t = 0; t < PLANE_PASSES; t++) {
        const int e = lane + 32 * t, ih = e / Wi;
        soff[t] = e < HWi ? (ih + pp) * RW + 4 + (e - ih * Wi) : 0;
    }
    for (int k = tid; k < KC; k += T) {
        const int cl = k / 9, rr = k - cl * 9;
        koff[k] = cl * cs + (rr / 3) * RW + rr % 3;
    }
    for (int i = tid; i < 2 * KSPLIT * XF; i += T) xs0[i] = 0.f; /* the halos, for good */
    __syncthreads(); /* before any copy lands on the zeros */

    const int groups = (Ci + CK - 1) / CK, stages = (groups + KSPLIT - 1) / KSPLIT;
    /* stage st (groups KSPLIT st + h, input channels [8 c, 8 c + 8)) into buffer b: the planes,
     * then the weights, of each group that exists */
    auto issue = [&](int st, int b) {
#pragma unroll 1
        for (int h = 0; h < KSPLIT; h++) {
            const int c = st * KSPLIT + h, ci0 = c * CK;
            if (c >= groups) break;
            float *const xb = xs0 + (b * KSPLIT + h) * XF;
            for (int pl = warp; pl < CK * ipb; pl += T / 32) {
                const int cl = pl / ipb, il = pl - cl * ipb, ci = ci0 + cl;
                const bool ok = ci < Ci && il < nimg;
                const float *src = ok ? in + ((int64_t)(img0 + il) * Ci + ci) * HWi : in;
                float *dst = xb + cl * cs + il * IS;
#pragma unroll
                for (int t = 0; t < PLANE_PASSES; t++) {
                    const int e = lane + 32 * t;
                    if (e < HWi) cp_async4(dst + soff[t], ok ? src + e : in, ok);
                }
            }
            stage_weights<DATA, BM, T>(ws0 + (b * KSPLIT + h) * WF, w, g, Ci, Co, ci0, m0, wvec,
                                       tid);
        }
        __pipeline_commit();
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    if (stages > 0) issue(0, 0);
    for (int st = 0; st < stages; st++) {
        const int b = st & 1;
        if (st + 1 < stages) {
            issue(st + 1, b ^ 1);     /* into the buffer stage st - 1 used */
            __pipeline_wait_prior(1); /* stage st's copies have landed (this thread's) */
        } else {
            __pipeline_wait_prior(0);
        }
        __syncthreads(); /* everyone's have */
#pragma unroll
        for (int h = 0; h < KSPLIT; h++)
            round_tf32_shared(xs0 + (b * KSPLIT + h) * XF, CK * cs / 4, tid, T);
        round_tf32_shared(ws0 + b * KSPLIT * WF, KSPLIT * WF / 4, tid, T);
        __syncthreads(); /* rounded, before anyone reads them */
        if (st * KSPLIT + set < groups) /* uniform over the warp */
            group_mma<MT, NT>(acc, xs0 + (b * KSPLIT + set) * XF,
                              ws0 + (b * KSPLIT + set) * WF + (wm + gq) * KS + tq, koff, noff, tq);
        __syncthreads(); /* before the next issue overwrites this buffer */
    }

    if (KSPLIT > 1) { /* the sets' sums into set 0's, in set order (the loop's last barrier
                       * ended every read of the buffers this reuses) */
        float *const red = smem + ws_ * (MT * NT * 4 * 32) + lane;
        for (int h = 1; h < KSPLIT; h++) {
            if (set == h)
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++) red[((i * NT + j) * 4 + e) * 32] = acc[i][j][e];
            __syncthreads();
            if (set == 0)
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            acc[i][j][e] += red[((i * NT + j) * 4 + e) * 32];
            __syncthreads();
        }
        if (set) return;
    }

    /* D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1] of each mma tile; column p is image
     * img0 + il, position r, stepped along with p */
    int il = 0, r = wn + 2 * tq;
    while (r >= HWo) r -= HWo, il++;
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int e1 = 0; e1 < 2; e1++) {
            const int p = wn + j * 8 + 2 * tq + e1;
            int il1 = il, r1 = r + e1;
            if (r1 >= HWo) r1 -= HWo, il1++;
            if (p < npos) {
                float *ob = out + (int64_t)(img0 + il1) * Co * HWo + r1;
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int e2 = 0; e2 < 2; e2++) {
                        const int m = m0 + wm + i * 16 + gq + e2 * 8;
                        if (m >= Co) continue;
                        float *o = ob + (int64_t)m * HWo;
                        const float v = acc[i][j][e2 * 2 + e1];
                        if (DATA)
                            *o += v;
                        else
                            *o = v + (bias ? __ldg(bias + m) : 0.f);
                    }
            }
        }
        r += 8;
        while (r >= HWo) r -= HWo, il++;
    }
}

/* ---------------------------------------------------------------- forward: direct, few channels
 * The UNet's first and last convolutions (1 -> 16 and 16 -> 1 channels) are GEMMs with one side
 * of 1 to 16: the tiled kernels above waste most of a tile there (BM 8 for one output channel),
 * and cuDNN took 27 us for the 16 -> 1 one at batch 256 on an H200 (its FFT algorithm plus a
 * separate bias kernel, ncu) where reading the input once takes about 3. conv_direct_kernel is a
 * thread per output position for CO output channels at once (blockIdx.y: which CO): the CO
 * channels' weights are staged in shared memory (a block's CO x Cin x K x K of them, per input
 * channel padded to a multiple of 4 floats, so a channel's are read as float4), and every input
 * value the thread needs is loaded once and used for all CO outputs; neighbouring threads read
 * neighbouring positions, so the K x K overlap is served by L1. FP32 FMA, the sum over
 * (ci, kh, kw) in that order, the bias added last. KT: K known at compile time (3), or 0. */
constexpr int DIRECT_WS = 4096; /* staged weight floats, at most (16 KiB) */
constexpr int DIRECT_T = 256;   /* threads a block */

template <int CO> __host__ __device__ __forceinline__ int direct_cis(int KK) {
    return (KK * CO + 3) / 4 * 4; /* staged floats per input channel */
}

/* whether conv_direct_kernel<CO> runs this forward shape (else launch_direct runs the 8x128
 * configuration) */
template <int CO> bool direct_fits(const Geom &g) {
    return g.Cin > 0 && g.Cout > 0 && (int64_t)g.Cin * direct_cis<CO>(g.KK) <= DIRECT_WS &&
           (g.Cout + CO - 1) / CO <= 65535;
}

template <int KT, int CO>
static __global__ void __launch_bounds__(DIRECT_T)
    conv_direct_kernel(float *__restrict__ y, const float *__restrict__ x,
                       const float *__restrict__ w, const float *__restrict__ bias, Geom g) {
    __shared__ __align__(16) float ws[DIRECT_WS];
    const int K = KT ? KT : g.K, KK = K * K, CIS = direct_cis<CO>(KK);
    const int co0 = (int)blockIdx.y * CO;
    /* ws[ci CIS + r CO + j] = w[co0 + j][ci][r], zero past Cout and in the padding */
    for (int i = threadIdx.x; i < g.Cin * CIS; i += DIRECT_T) {
        const int ci = i / CIS, q = i - ci * CIS, r = q / CO, j = q - r * CO;
        ws[i] = r < KK && co0 + j < g.Cout ? __ldg(w + ((int64_t)(co0 + j) * g.Cin + ci) * KK + r)
                                           : 0.f;
    }
    __syncthreads();
    const int p = (int)blockIdx.x * DIRECT_T + (int)threadIdx.x;
    if (p >= g.Py) return; /* no barrier after this */
    const int n = p / g.HoWo, pi = p - n * g.HoWo, oh = pi / g.Wo, ow = pi - oh * g.Wo;
    const int ih0 = oh * g.stride - g.pad, iw0 = ow * g.stride - g.pad;
    const float *xc = x + (int64_t)n * g.Cin * g.HW;
    float acc[CO];
#pragma unroll
    for (int j = 0; j < CO; j++) acc[j] = 0.f;
    if constexpr (KT > 0) {
        /* the K x K window's offsets in a plane, and which of them are inside the image */
        int off[KT * KT];
        bool in[KT * KT];
#pragma unroll
        for (int kh = 0; kh < KT; kh++)
#pragma unroll
            for (int kw = 0; kw < KT; kw++) {
                const int ih = ih0 + kh, iw = iw0 + kw;
                in[kh * KT + kw] = (unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W;
                off[kh * KT + kw] = ih * g.W + iw;
            }
        constexpr int C4 = (KT * KT * CO + 3) / 4 * 4;
        for (int ci = 0; ci < g.Cin; ci++, xc += g.HW) {
            float xv[KT * KT], wv[C4];
#pragma unroll
            for (int r = 0; r < KT * KT; r++) xv[r] = in[r] ? __ldg(xc + off[r]) : 0.f;
            lds<C4>(wv, ws + ci * C4);
#pragma unroll
            for (int r = 0; r < KT * KT; r++)
#pragma unroll
                for (int j = 0; j < CO; j++) acc[j] = fmaf(xv[r], wv[r * CO + j], acc[j]);
        }
    } else {
        for (int ci = 0; ci < g.Cin; ci++, xc += g.HW)
            for (int kh = 0; kh < K; kh++) {
                const int ih = ih0 + kh;
                for (int kw = 0; kw < K; kw++) {
                    const int iw = iw0 + kw;
                    const float v = (unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W
                                        ? __ldg(xc + ih * g.W + iw)
                                        : 0.f;
                    const float *wr = ws + ci * CIS + (kh * K + kw) * CO;
#pragma unroll
                    for (int j = 0; j < CO; j++) acc[j] = fmaf(v, wr[j], acc[j]);
                }
            }
    }
    float *yo = y + ((int64_t)n * g.Cout + co0) * g.HoWo + pi;
#pragma unroll
    for (int j = 0; j < CO; j++)
        if (co0 + j < g.Cout) yo[(int64_t)j * g.HoWo] = acc[j] + (bias ? __ldg(bias + co0 + j) : 0.f);
}

/* ---------------------------------------------------------------- backward-filter */

/* C (Cout x NR) = dy (Cout x P) xcol^T (P x NR), NR = Kf (+1 for the bias column), over the
 * positions [z chunk, min(P, (z+1) chunk)) of split z = blockIdx.z. Both tiles are loaded
 * position-fastest (coalesced along ow); each thread keeps one position per step (tid % BK),
 * decoded once per step. part NULL: add into dw/db directly (one split); else write the
 * partial tile to part[z][co][r]. */
template <int KT, int BM, int BN, int BK, class Math, int STAGES>
__global__ void __launch_bounds__(Math::T)
    conv_filter_kernel(float *__restrict__ dw, float *__restrict__ db, float *__restrict__ part,
                       const float *__restrict__ dy, const float *__restrict__ x, const Geom g,
                       int NR, int chunk, int fused) {
    constexpr int T = Math::T;
    static_assert(T % BK == 0 && (BM * BK) % T == 0 && (BN * BK) % T == 0, "tile loads");
    static_assert(!Math::TF32 || (BK % 8 == 0 && T >= BM), "whole mma steps; a thread per row");
    static_assert(STAGES == 1 || (Math::TF32 && STAGES <= 4), "pipelines: tensor cores only");
    constexpr int RS = T / BK, NA = BM * BK / T, NB = BN * BK / T;
    constexpr int AS = BM + 4, BS = BN + 4;
    __shared__ __align__(16) float As[STAGES * BK * AS];
    __shared__ __align__(16) float Bs[STAGES * BK * BS];

    const int K = KT ? KT : g.K, KK = KT ? KT * KT : g.KK;
    const int tid = threadIdx.x;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int kb = blockIdx.z * chunk;
    const int64_t kend = (int64_t)kb + chunk; /* may pass INT_MAX: the last split's end */
    const int ke = kend < g.Py ? (int)kend : g.Py;
    const int kt = tid % BK, rt = tid / BK;

    /* this thread's position at step k0 (one per step: tid % BK), decoded once per step */
    struct Pos {
        bool ok;
        const float *dyb, *xb;
        int ih0, iw0;
    };
    auto pos_at = [&](int k0) {
        Pos q = {false, dy, x, 0, 0};
        const int p = k0 + kt;
        if (p < ke) {
            const int img = p / g.HoWo, hw = p - img * g.HoWo, oh = hw / g.Wo, ow = hw - oh * g.Wo;
            q.ok = true;
            q.dyb = dy + (int64_t)img * g.Cout * g.HoWo + hw;
            q.xb = x + (int64_t)img * g.Cin * g.HW;
            q.ih0 = oh * g.stride - g.pad;
            q.iw0 = ow * g.stride - g.pad;
        }
        return q;
    };
    /* global addresses of this thread's i-th element of each tile, NULL where it is zero; the
     * bias column (n = Kf) has none: its ones are put in by the register path */
    auto a_src = [&](int i, const Pos &q) -> const float * {
        const int m = m0 + rt + i * RS;
        return q.ok && m < g.Cout ? q.dyb + m * g.HoWo : nullptr;
    };
    auto b_src = [&](int i, const Pos &q) -> const float * {
        const int n = n0 + rt + i * RS;
        if (!q.ok || n >= g.Kf) return nullptr;
        const int ci = n / KK, rr = n - ci * KK, kh = rr / K, kw = rr - kh * K;
        const int ih = q.ih0 + kh, iw = q.iw0 + kw;
        if ((unsigned)ih < (unsigned)g.H && (unsigned)iw < (unsigned)g.W)
            return q.xb + ci * g.HW + ih * g.W + iw;
        return nullptr;
    };

    /* With TF32 math, db would sum dy rounded to TF32 through the ones column: instead the block
     * that holds that column sums its dy values in FP32 on the side (rsum: this thread's rows),
     * and its column Kf takes those sums (bsum, below). */
    const bool side_db = Math::TF32 && db && n0 <= g.Kf && g.Kf < n0 + BN;
    float rsum[NA];
#pragma unroll
    for (int i = 0; i < NA; i++) rsum[i] = 0.f;

    Math tile(tid);
    if constexpr (STAGES == 1) {
        float ra[NA], rb[NB];
        auto load = [&](int k0) {
            const Pos q = pos_at(k0);
#pragma unroll
            for (int i = 0; i < NA; i++) {
                const float *p = a_src(i, q);
                ra[i] = p ? __ldg(p) : 0.f;
            }
#pragma unroll
            for (int i = 0; i < NB; i++) {
                const float *p = b_src(i, q);
                const bool ones = q.ok && n0 + rt + i * RS == g.Kf && g.Kf < NR; /* db's */
                rb[i] = p ? __ldg(p) : ones ? 1.f : 0.f;
            }
        };
        if (kb < ke) load(kb);
        for (int k0 = kb; k0 < ke; k0 += BK) {
#pragma unroll
            for (int i = 0; i < NA; i++) {
                As[kt * AS + rt + i * RS] = Math::prep(ra[i]);
                if (side_db) rsum[i] += ra[i];
            }
#pragma unroll
            for (int i = 0; i < NB; i++) Bs[kt * BS + rt + i * RS] = Math::prep(rb[i]);
            __syncthreads();
            if (k0 + BK < ke) load(k0 + BK);
            tile.template multiply<BK, false>(As, AS, Bs, BS);
            __syncthreads();
        }
    } else {
        /* as conv_gemm_kernel's pipeline; the bias column stays zero in the tiles (side_db
         * gives that column its value), and the side sums read this thread's own copies */
        const int steps = kb < ke ? (ke - kb + BK - 1) / BK : 0;
        auto issue = [&](int step) {
            if (step < steps) {
                const Pos q = pos_at(kb + step * BK);
                float *as = As + step % STAGES * BK * AS, *bs = Bs + step % STAGES * BK * BS;
#pragma unroll
                for (int i = 0; i < NA; i++) {
                    const float *p = a_src(i, q);
                    cp_async4(&as[kt * AS + rt + i * RS], p ? p : dy, p != nullptr);
                }
#pragma unroll
                for (int i = 0; i < NB; i++) {
                    const float *p = b_src(i, q);
                    cp_async4(&bs[kt * BS + rt + i * RS], p ? p : x, p != nullptr);
                }
            }
            __pipeline_commit();
        };
#pragma unroll
        for (int st = 0; st < STAGES - 1; st++) issue(st);
        for (int step = 0; step < steps; step++) {
            __pipeline_wait_prior(STAGES - 2);
            __syncthreads();
            issue(step + STAGES - 1);
            const float *as = As + step % STAGES * BK * AS, *bs = Bs + step % STAGES * BK * BS;
            if (side_db)
#pragma unroll
                for (int i = 0; i < NA; i++) rsum[i] += as[kt * AS + rt + i * RS];
            tile.template multiply<BK, true>(as, AS, bs, BS);
        }
        __pipeline_wait_prior(0);
        __syncthreads(); /* the stages are reused below */
    }
    /* the side sums per row, in a fixed order (the tiles are free now): bsum[m - m0] */
    float *const bsum = Bs;
    if (side_db) {
#pragma unroll
        for (int i = 0; i < NA; i++) As[(rt + i * RS) * BK + kt] = rsum[i];
        __syncthreads();
        if (tid < BM) {
            float v = 0.f;
            for (int k = 0; k < BK; k++) v += As[tid * BK + k];
            bsum[tid] = v;
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < Math::ROWS; i++) {
        const int m = m0 + tile.row(i);
        if (m >= g.Cout) continue;
#pragma unroll
        for (int j = 0; j < Math::COLS; j++) {
            const int n = n0 + tile.col(j);
            if (n >= NR) continue;
            const float v = side_db && n == g.Kf ? bsum[m - m0] : tile.val(i, j);
            if (part)
                part[((int64_t)blockIdx.z * g.Cout + m) * NR + n] = v;
            else if (n < g.Kf) {
                if (dw) dw[(int64_t)m * g.Kf + n] += v;
            } else {
                db[m] += v; /* n == Kf: only there when db is wanted */
            }
        }
    }
    __shared__ int last;
    if (!part || !fused || !last_split(&last)) return;
    /* the tile's last split: its sums, as conv_filter_reduce_kernel's */
    for (int e = tid; e < BM * BN; e += T) {
        const int m = m0 + e / BN, n = n0 + e % BN;
        if (m < g.Cout && n < NR)
            filter_split_store(dw, db, part, g.Cout, NR, g.Kf, (int)gridDim.z, (int64_t)m * NR + n);
    }
}

/* The end of the staged filter kernels (conv_filter_stage_kernel, conv_filter_plane_kernel): the
 * warps' sums red[w][m][n] (n over the group's 72 columns) added in warp order into dw, and the
 * block's db sum, or both into this split's partial tile; the tile's last split then sums the
 * partials (fused). Every thread of the block calls it. */
template <int BM, int T, int NW>
__device__ __forceinline__ void filter_tile_store(float *dw, float *db, float *part,
                                                  const float *red, const Geom &g, int NR,
                                                  int ci0, int m0, bool bias_col, float bsum,
                                                  int fused, int *last) {
    constexpr int KC = ST_CK * 9;
    const int tid = threadIdx.x, Kf = g.Kf;
    float *pz = part ? part + (int64_t)blockIdx.z * g.Cout * NR : NULL;
    for (int e = tid; e < BM * KC; e += T) {
        const int m = e / KC, n = e - m * KC, co = m0 + m, ci = ci0 + n / 9;
        if (co >= g.Cout || ci >= g.Cin) continue;
        float v = 0.f;
        for (int w = 0; w < NW; w++) v += red[w * BM * KC + e];
        const int r = ci0 * 9 + n;
        if (pz)
            pz[(int64_t)co * NR + r] = v;
        else if (dw)
            dw[(int64_t)co * Kf + r] += v;
    }
    if (bias_col && tid < BM && m0 + tid < g.Cout) {
        if (pz)
            pz[(int64_t)(m0 + tid) * NR + Kf] = bsum;
        else
            db[m0 + tid] += bsum;
    }
    if (!part || !fused || !last_split(last)) return;
    /* the tile's last split: its columns' sums (and db's, for blockIdx.x = 0) */
    const int ncol = KC + (bias_col ? 1 : 0);
    for (int e = tid; e < BM * ncol; e += T) {
        const int m = e / ncol, n = e - m * ncol, co = m0 + m;
        const int r = n < KC ? ci0 * 9 + n : Kf;
        if (co >= g.Cout || (n < KC && ci0 + n / 9 >= g.Cin)) continue;
        filter_split_store(dw, db, part, g.Cout, NR, Kf, (int)gridDim.z, (int64_t)co * NR + r);
    }
}

/* Backward-filter of a stride-1 3x3 convolution from staged tiles, the counterpart of
 * conv_stage_kernel: dw[co][(ci, kh, kw)] += sum over positions p of dy[co][p] x[ci][p + (kh, kw)
 * - pad]. A block owns BM output channels and a group of 8 input channels (72 columns: 9 mma
 * n-tiles) and runs over `chunk` (image, th-row tile) pieces of the reduction: per piece it stages
 * the BM channels' dy rows (the A operand, position-major) and the 8 channels' th + 2 input rows
 * with their zero halo, double-buffered with asynchronous copies. The 4 warps take turns over the
 * piece's 8-position mma k-steps, each summing into its own accumulators; at the end they are
 * added in warp order through shared memory (deterministic). Blocks with blockIdx.x = 0 also sum
 * dy's rows for db, in FP32 as they come. x's staged rows are rounded to TF32 in shared memory
 * once they land (dy's at the fragment reads: db sums them unrounded). Splits write partials and
 * the last one sums them, as in conv_filter_kernel, in the same layout part[z][co][r] (r = Kf:
 * db). */
template <int MT> struct FilterStage {
    static constexpr int BM = 16 * MT, T = 128, NW = 4, CK = ST_CK, KC = ST_CK * 9;
    static constexpr int BP = 128;     /* positions per piece: th Wo */
    static constexpr int XC = BP + 96; /* staged input floats per channel: (th + 2) stage_rw(Wo) */
    static constexpr int DS = BP + 4;  /* dy rows padded: conflict-free fragment reads */
    static constexpr int STAGE = 2 * CK * XC + 2 * BM * DS, RED = NW * BM * KC;
    static constexpr int SM = STAGE > RED ? STAGE : RED;
};

template <int MT>
__global__ void __launch_bounds__(128, MT == 1 ? 5 : 4)
    conv_filter_stage_kernel(float *__restrict__ dw, float *__restrict__ db,
                             float *__restrict__ part, const float *__restrict__ dy,
                             const float *__restrict__ x, const Geom g, int NR, int th,
                             int tiles_h, int chunk, int fused) {
    using F = FilterStage<MT>;
    constexpr int BM = F::BM, T = F::T, NW = F::NW, CK = F::CK, KC = F::KC, BP = F::BP;
    constexpr int XC = F::XC, DS = F::DS;
    __shared__ __align__(16) float sm[F::SM];
    __shared__ int noff[BP];
    __shared__ int last;
    float *const xs0 = sm, *const ds0 = sm + 2 * CK * XC;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    /* staged input rows as in conv_stage_kernel: RW floats, input column iw at 4 + iw */
    const int Wp = g.Wo + 2, RW = stage_rw(g.Wo), o0 = 4 - g.pad, cs = (th + 2) * RW;
    const int tp = th * g.Wo, nrows = CK * (th + 2);
    /* float4 copies: x's rows (interior; the halo stays zero) when W is a multiple of 4, dy's
     * positions when Wo is (each piece then starts and ends on a float4) */
    const int q = g.W >> 2;
    const bool xvec = (g.W & 3) == 0 && q <= 32 && ((uintptr_t)x & 15) == 0;
    const bool dvec = (g.Wo & 3) == 0 && ((uintptr_t)dy & 15) == 0;
    const int rpi = xvec ? 32 / q : 1, lr = xvec ? lane / q : 0, lc = xvec ? lane - lr * q : 0;
    const int ci0 = blockIdx.x * CK, m0 = blockIdx.y * BM;
    const int total = g.N * tiles_h;
    const int cb = blockIdx.z * chunk;
    const int ce = (int64_t)cb + chunk < total ? cb + chunk : total;
    const bool bias_col = db && blockIdx.x == 0;

    for (int p = tid; p < BP; p += T) noff[p] = p < tp ? (p / g.Wo) * RW + p % g.Wo + o0 : 0;
    /* Zeros everywhere, for good: the halos, and the columns that no copy writes, which the
     * k-steps past the piece's last position read (noff 0) against dy's zero-filled places. Left
     * as whatever the SM's last kernel had there, an Inf or NaN times zero made dw NaN (found under
     * compute-sanitizer racecheck; test_gpu_conv now fills shared memory with NaN beforehand). */
    for (int i = tid; i < 2 * CK * XC; i += T) xs0[i] = 0.f;
    __syncthreads(); /* before any copy lands on the zeros */
    int koff[9]; /* this lane's columns n = 8 j + gq: (ci, kh, kw) */
#pragma unroll
    for (int j = 0; j < 9; j++) {
        const int n = j * 8 + gq, cl = n / 9, rr = n - cl * 9;
        koff[j] = cl * cs + (rr / 3) * RW + rr % 3;
    }

    /* piece c (image, row tile) into buffer b */
    auto issue = [&](int c, int b) {
        const int img = c / tiles_h, oh0 = (c - img * tiles_h) * th;
        const int np = (g.Ho - oh0 < th ? g.Ho - oh0 : th) * g.Wo;
        const float *xsrc = x + (int64_t)img * g.Cin * g.HW;
        float *xb = xs0 + b * CK * XC, *dsb = ds0 + b * BM * DS;
        if (xvec) {
            for (int rw0 = warp * rpi; rw0 < nrows; rw0 += NW * rpi) {
                const int rw = rw0 + lr;
                if (lr >= rpi || rw >= nrows) continue;
                const int cl = rw / (th + 2), r = rw - cl * (th + 2);
                const int ci = ci0 + cl, ih = oh0 - g.pad + r;
                const bool rok = ci < g.Cin && (unsigned)ih < (unsigned)g.H;
                const float *rowp = rok ? xsrc + ((int64_t)ci * g.H + ih) * g.W + 4 * lc : x;
                cp_async16(&xb[cl * cs + r * RW + 4 + 4 * lc], rowp, rok);
            }
        } else {
            for (int rw = warp; rw < nrows; rw += NW) {
                const int cl = rw / (th + 2), r = rw - cl * (th + 2);
                const int ci = ci0 + cl, ih = oh0 - g.pad + r;
                const bool rok = ci < g.Cin && (unsigned)ih < (unsigned)g.H;
                const float *rowp = rok ? xsrc + ((int64_t)ci * g.H + ih) * g.W : x;
                for (int col = lane; col < Wp; col += 32) {
                    const int iw = col - g.pad;
                    const bool ok = rok && (unsigned)iw < (unsigned)g.W;
                    cp_async4(&xb[cl * cs + r * RW + o0 + col], ok ? rowp + iw : x, ok);
                }
            }
        }
        const float *dsrc = dy + (int64_t)img * g.Cout * g.HoWo + oh0 * g.Wo;
        if (dvec) {
            for (int e = tid; e < BM * (BP / 4); e += T) {
                const int m = e / (BP / 4), p = 4 * (e - m * (BP / 4));
                const bool ok = m0 + m < g.Cout && p < np;
                cp_async16(&dsb[m * DS + p], ok ? dsrc + (int64_t)(m0 + m) * g.HoWo + p : dy, ok);
            }
        } else {
            for (int e = tid; e < BM * BP; e += T) {
                const int m = e / BP, p = e - m * BP;
                const bool ok = m0 + m < g.Cout && p < np;
                cp_async4(&dsb[m * DS + p], ok ? dsrc + (int64_t)(m0 + m) * g.HoWo + p : dy, ok);
            }
        }
        __pipeline_commit();
    };

    float acc[MT][9][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 9; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
    float bsum = 0.f; /* db: thread tid < BM, channel m0 + tid */
    const int ksteps = (tp + 7) / 8;

    if (cb < ce) issue(cb, 0);
    for (int c = cb; c < ce; c++) {
        const int b = (c - cb) & 1;
        if (c + 1 < ce) {
            issue(c + 1, b ^ 1); /* into the buffer piece c - 1 used */
            __pipeline_wait_prior(1);
        } else {
            __pipeline_wait_prior(0);
        }
        __syncthreads();
        round_tf32_shared(xs0 + b * CK * XC, CK * cs / 4, tid, T); /* x: the B operand */
        __syncthreads(); /* rounded, before anyone reads it; dy stays unrounded for db */
        const float *xb = xs0 + b * CK * XC, *dsb = ds0 + b * BM * DS;
        if (bias_col && tid < BM)
            for (int p = 0; p < tp; p++) bsum += dsb[tid * DS + p];
        for (int st = warp; st < ksteps; st += NW) {
            const int p0 = st * 8;
            const float *ak = dsb + gq * DS + p0 + tq;
            float af[MT][4], bf[9][2];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                af[i][0] = to_tf32(ak[i * 16 * DS]);
                af[i][1] = to_tf32(ak[(i * 16 + 8) * DS]);
                af[i][2] = to_tf32(ak[i * 16 * DS + 4]);
                af[i][3] = to_tf32(ak[(i * 16 + 8) * DS + 4]);
            }
            const int n0 = noff[p0 + tq], n1 = noff[p0 + tq + 4];
#pragma unroll
            for (int j = 0; j < 9; j++) {
                bf[j][0] = xb[koff[j] + n0];
                bf[j][1] = xb[koff[j] + n1];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < 9; j++) mma_tf32(acc[i][j], af[i], bf[j]);
        }
        __syncthreads(); /* before the next issue overwrites this buffer */
    }

    /* the warps' sums, added in warp order: red[w][m][n] */
    __pipeline_wait_prior(0);
    __syncthreads();
    float *red = sm;
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 9; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[(warp * BM + i * 16 + gq + (e >> 1) * 8) * KC + j * 8 + 2 * tq + (e & 1)] =
                    acc[i][j][e];
    __syncthreads();
    filter_tile_store<BM, T, NW>(dw, db, part, red, g, NR, ci0, m0, bias_col, bsum, fused, &last);
}

/* conv_filter_plane_kernel: conv_filter_stage_kernel for small maps (input planes of at most
 * PLANE_MAX values, output planes of at most BP positions), with pieces of `ipb` whole images
 * instead of one image's row tile, so that a piece holds 98 positions at 7x7 instead of 49 and
 * the per-piece costs (the barriers, the copies' set-up) serve twice the mma steps. The x planes
 * are copied as in conv_plane_kernel (a warp a plane, a lane an element, places computed once);
 * dy's (channel, image) planes go side by side into the A rows, position p = image HoWo + r.
 * A block owns 16 output channels and 8 input channels; the rest (warps taking turns over the
 * k-steps, the ordered sums, db, the splits) is conv_filter_stage_kernel's. */
template <int BP> struct FilterPlane {
    static constexpr int BM = 16, T = 128, NW = 4, CK = ST_CK, KC = ST_CK * 9;
    static constexpr int XC = BP <= 112 ? 336 : 320; /* staged input floats per channel */
    static constexpr int BP8 = (BP + 7) / 8 * 8;      /* positions of whole k-steps */
    /* dy rows padded to an odd multiple of 4 floats: conflict-free fragment reads */
    static constexpr int DS = (BP8 + 4) / 4 % 2 ? BP8 + 4 : BP8 + 8;
    static constexpr int STAGE = 2 * CK * XC + 2 * BM * DS, RED = NW * BM * KC;
    static constexpr int SM = STAGE > RED ? STAGE : RED;
};

template <int BP>
__global__ void __launch_bounds__(128, 4)
    conv_filter_plane_kernel(float *__restrict__ dw, float *__restrict__ db,
                             float *__restrict__ part, const float *__restrict__ dy,
                             const float *__restrict__ x, const Geom g, int NR, int ipb,
                             int chunk, int fused) {
    using F = FilterPlane<BP>;
    constexpr int BM = F::BM, T = F::T, NW = F::NW, CK = F::CK, KC = F::KC;
    constexpr int XC = F::XC, DS = F::DS;
    __shared__ __align__(16) float sm[F::SM];
    __shared__ int noff[F::BP8];
    __shared__ int last;
    float *const xs0 = sm, *const ds0 = sm + 2 * CK * XC;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    const int RW = stage_rw(g.Wo), IS = (g.Ho + 2) * RW, cs = ipb * IS;
    const int ci0 = blockIdx.x * CK, m0 = blockIdx.y * BM;
    const int total = (g.N + ipb - 1) / ipb;
    const int cb = blockIdx.z * chunk;
    const int ce = (int64_t)cb + chunk < total ? cb + chunk : total;
    const bool bias_col = db && blockIdx.x == 0;

    /* position p = il HoWo + oh Wo + ow reads input (oh + kh - pad, ow + kw - pad) of image il,
     * staged at il IS + (oh + kh) RW + ow + kw + 4 - pad */
    for (int p = tid; p < F::BP8; p += T) {
        const int il = p / g.HoWo, r = p - il * g.HoWo, oh = r / g.Wo;
        noff[p] = p < ipb * g.HoWo ? il * IS + oh * RW + (r - oh * g.Wo) + 4 - g.pad : 0;
    }
    int soff[PLANE_PASSES]; /* this lane's elements e = lane + 32 t of an x plane */
#pragma unroll
    for (int t = 0; t < PLANE_PASSES; t++) {
        const int e = lane + 32 * t, ih = e / g.W;
        soff[t] = e < g.HW ? (ih + g.pad) * RW + 4 + (e - ih * g.W) : 0;
    }
    for (int i = tid; i < 2 * CK * XC; i += T) xs0[i] = 0.f; /* the halos, for good */
    __syncthreads(); /* before any copy lands on the zeros */
    int koff[9]; /* this lane's columns n = 8 j + gq: (ci, kh, kw) */
#pragma unroll
    for (int j = 0; j < 9; j++) {
        const int n = j * 8 + gq, cl = n / 9, rr = n - cl * 9;
        koff[j] = cl * cs + (rr / 3) * RW + rr % 3;
    }

    /* piece c (images [c ipb, c ipb + ipb)) into buffer b */
    auto issue = [&](int c, int b) {
        const int img0 = c * ipb, nimg = g.N - img0 < ipb ? g.N - img0 : ipb;
        float *xb = xs0 + b * CK * XC, *dsb = ds0 + b * BM * DS;
        for (int pl = warp; pl < CK * ipb; pl += NW) {
            const int cl = pl / ipb, il = pl - cl * ipb, ci = ci0 + cl;
            const bool ok = ci < g.Cin && il < nimg;
            const float *src = ok ? x + ((int64_t)(img0 + il) * g.Cin + ci) * g.HW : x;
            float *dst = xb + cl * cs + il * IS;
#pragma unroll
            for (int t = 0; t < PLANE_PASSES; t++) {
                const int e = lane + 32 * t;
                if (e < g.HW) cp_async4(dst + soff[t], ok ? src + e : x, ok);
            }
        }
        /* dy: row m holds the images' planes side by side; past the last image, zeros */
        for (int pl = warp; pl < BM * ipb; pl += NW) {
            const int m = pl / ipb, il = pl - m * ipb, co = m0 + m;
            const bool ok = co < g.Cout && il < nimg;
            const float *src = ok ? dy + ((int64_t)(img0 + il) * g.Cout + co) * g.HoWo : dy;
            float *dst = dsb + m * DS + il * g.HoWo;
            for (int r = lane; r < g.HoWo; r += 32) cp_async4(dst + r, ok ? src + r : dy, ok);
        }
        __pipeline_commit();
    };

    float acc[9][4];
#pragma unroll
    for (int j = 0; j < 9; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] = 0.f;
    float bsum = 0.f; /* db: thread tid < BM, channel m0 + tid */
    const int tp = ipb * g.HoWo, ksteps = (tp + 7) / 8;
    /* the k-steps' padding positions [tp, 8 ksteps) of every dy row: zero, for good */
    for (int e = tid; e < 2 * BM * (8 * ksteps - tp); e += T) {
        const int b = e / (BM * (8 * ksteps - tp)), rest = e - b * BM * (8 * ksteps - tp);
        const int m = rest / (8 * ksteps - tp), p = tp + rest - m * (8 * ksteps - tp);
        ds0[b * BM * DS + m * DS + p] = 0.f;
    }
    __syncthreads();

    if (cb < ce) issue(cb, 0);
    for (int c = cb; c < ce; c++) {
        const int b = (c - cb) & 1;
        if (c + 1 < ce) {
            issue(c + 1, b ^ 1); /* into the buffer piece c - 1 used */
            __pipeline_wait_prior(1);
        } else {
            __pipeline_wait_prior(0);
        }
        __syncthreads();
        round_tf32_shared(xs0 + b * CK * XC, CK * cs / 4, tid, T); /* x: the B operand */
        __syncthreads(); /* rounded, before anyone reads it; dy stays unrounded for db */
        const float *xb = xs0 + b * CK * XC, *dsb = ds0 + b * BM * DS;
        if (bias_col && tid < BM)
            for (int p = 0; p < tp; p++) bsum += dsb[tid * DS + p];
        for (int st = warp; st < ksteps; st += NW) {
            const int p0 = st * 8;
            const float *ak = dsb + gq * DS + p0 + tq;
            float af[4], bf[9][2];
            af[0] = to_tf32(ak[0]);
            af[1] = to_tf32(ak[8 * DS]);
            af[2] = to_tf32(ak[4]);
            af[3] = to_tf32(ak[8 * DS + 4]);
            const int n0 = noff[p0 + tq], n1 = noff[p0 + tq + 4];
#pragma unroll
            for (int j = 0; j < 9; j++) {
                bf[j][0] = xb[koff[j] + n0];
                bf[j][1] = xb[koff[j] + n1];
            }
#pragma unroll
            for (int j = 0; j < 9; j++) mma_tf32(acc[j], af, bf[j]);
        }
        __syncthreads(); /* before the next issue overwrites this buffer */
    }

    /* the warps' sums, added in warp order: red[w][m][n] */
    __pipeline_wait_prior(0);
    __syncthreads();
    float *red = sm;
#pragma unroll
    for (int j = 0; j < 9; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            red[(warp * BM + gq + (e >> 1) * 8) * KC + j * 8 + 2 * tq + (e & 1)] = acc[j][e];
    __syncthreads();
    filter_tile_store<BM, T, NW>(dw, db, part, red, g, NR, ci0, m0, bias_col, bsum, fused, &last);
}

/* dw/db += the sum of the splits' partials, in split order (when the last split does not). */
__global__ void conv_filter_reduce_kernel(float *__restrict__ dw, float *__restrict__ db,
                                          const float *__restrict__ part, int Cout, int NR, int Kf,
                                          int splits) {
    const int64_t n = (int64_t)Cout * NR;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        filter_split_store(dw, db, part, Cout, NR, Kf, splits, i);
}

/* The forward / backward-data splits' partials summed in split order into the NCHW output (when
 * the last split does not). */
template <bool DATA>
__global__ void conv_gemm_reduce_kernel(float *__restrict__ out, const float *__restrict__ part,
                                        const float *__restrict__ bias, int M, int cols, int plane,
                                        int splits) {
    const int64_t n = (int64_t)M * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        gemm_split_store<DATA>(out, part, bias, M, cols, plane, splits, i);
}

/* max |a - b| and max |b| into out[0], out[1] (non-negative floats order as their bits; out
 * zeroed first); a NaN difference counts as infinity. */
__global__ void maxdiff_kernel(unsigned int *out, const float *a, const float *b, size_t n) {
    float d = 0.f, m = 0.f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float e = fabsf(a[i] - b[i]);
        if (isnan(e)) e = INFINITY;
        d = fmaxf(d, e);
        m = fmaxf(m, fabsf(b[i]));
    }
    for (int o = 16; o > 0; o >>= 1) {
        d = fmaxf(d, __shfl_xor_sync(0xffffffffu, d, o));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    }
    if ((threadIdx.x & 31) == 0) {
        atomicMax(out, __float_as_uint(d));
        atomicMax(out + 1, __float_as_uint(m));
    }
}

/* ---------------------------------------------------------------- launchers */

int sm_count = 0; /* set by dd_conv_own_prepare (outside any capture) */
/* the most dynamic shared memory a block may ask for on this GPU (set by dd_conv_own_prepare;
 * 0: not known yet, no limit assumed): 227 KiB on sm_90, 163 on sm_80, 99 on sm_86 and sm_89,
 * 64 on sm_75 */
static int smem_optin = 0;
static bool smem_fits(int bytes) { return smem_optin <= 0 || bytes <= smem_optin; }
/* 1: a split's sums by the last block of each output tile (last_split); 0: by a second kernel
 * (DIFFUSION_CONV_SPLIT_REDUCE=kernel, dd_conv_own_set_fused_reduce) */
int fused_reduce = 1;
/* 0: the direct kernels (dc1, dc4, dc8) are left out of the autotuner's candidates
 * (DIFFUSION_CUDA_OFF=direct-conv, dd_conv_own_set_direct) */
int direct_on = 1;

unsigned int ceil_div(int64_t a, int64_t b) { return (unsigned int)((a + b - 1) / b); }

/* blocks of 256 threads for a split reduction of n outputs (grid-stride beyond 4096) */
unsigned int reduce_blocks(int64_t n) { return n > 4096 * 256 ? 4096u : ceil_div(n, 256); }

/* Splits of a reduction of length R into chunks (multiples of BK) when its output tiles alone
 * leave the GPU under-filled: about 4 blocks per SM in all, each split at least two steps long,
 * the partials (out_bytes each) within the workspace (and 16 MiB, so that the second pass stays
 * cheap). *chunk = R and 1 split (no workspace needed) when that leaves fewer than two. */
int64_t split_plan(int64_t tiles, int64_t R, int BK, int64_t out_bytes, const void *ws,
                   size_t ws_bytes, int64_t *chunk) {
    const int64_t sms = sm_count > 0 ? sm_count : 132;
    int64_t splits = (4 * sms + tiles - 1) / tiles;
    const int64_t by_len = (R + 2 * BK - 1) / (2 * BK);
    const int64_t room = (int64_t)(ws_bytes < ((size_t)16 << 20) ? ws_bytes : ((size_t)16 << 20));
    const int64_t by_ws = ws && out_bytes > 0 ? room / out_bytes : 0;
    if (splits > by_len) splits = by_len;
    if (splits > by_ws) splits = by_ws;
    if (splits > 4096) splits = 4096;
    *chunk = R;
    if (splits >= 2) {
        int64_t c = (R + splits - 1) / splits;
        c = (c + BK - 1) / BK * BK;
        splits = (R + c - 1) / c; /* no empty split */
        if (splits >= 2) {
            *chunk = c;
            return splits;
        }
    }
    return 1;
}

/* Forward and backward-data: split over the reduction (split_plan) when the output has fewer
 * tiles than two per SM; the splits' partials are summed by each tile's last split, or by a
 * second kernel (fused_reduce 0, or more tiles than there are counters). */
template <bool DATA, int BM, int BN, int BK, class Math, int STAGES = 1>
int launch_gemm(float *out, const float *act, const float *w, const float *bias, const Geom &g,
                void *ws, size_t ws_bytes) {
    constexpr int T = Math::T;
    const int M = DATA ? g.Cin : g.Cout, cols = DATA ? g.Px : g.Py, R = DATA ? g.Kd : g.Kf;
    const int plane = DATA ? g.HW : g.HoWo;
    if (M <= 0 || cols <= 0) return 0;
    const int64_t tiles = (int64_t)ceil_div(cols, BN) * ceil_div(M, BM);
    const int64_t sms = sm_count > 0 ? sm_count : 132;
    int64_t chunk = R, splits = 1;
    if (tiles < 2 * sms)
        splits = split_plan(tiles, R, BK, (int64_t)M * cols * (int64_t)sizeof(float), ws,
                            ws_bytes, &chunk);
    float *part = splits > 1 ? (float *)ws : NULL;
    if (R <= 0) chunk = 1; /* an empty reduction: one split writes zeros (plus bias) */
    const dim3 grid(ceil_div(cols, BN), ceil_div(M, BM), (unsigned int)splits);
    if (grid.y > 65535) return dd_error("conv2d (own kernels): %d channels, too many", M);
    const int fused = part && fused_reduce && tiles <= TILE_COUNTERS;
    if (g.K == 3)
        conv_gemm_kernel<DATA, 3, BM, BN, BK, Math, STAGES>
            <<<grid, T, 0, dd_cuda_stream>>>(out, act, w, bias, g, part, (int)chunk, fused);
    else if (g.K == 4)
        conv_gemm_kernel<DATA, 4, BM, BN, BK, Math, STAGES>
            <<<grid, T, 0, dd_cuda_stream>>>(out, act, w, bias, g, part, (int)chunk, fused);
    else
        conv_gemm_kernel<DATA, 0, BM, BN, BK, Math, STAGES>
            <<<grid, T, 0, dd_cuda_stream>>>(out, act, w, bias, g, part, (int)chunk, fused);
    if (DATA)
        DD_CUDA_LAUNCHED("conv backward-data (own)");
    else
        DD_CUDA_LAUNCHED("conv forward (own)");
    if (part && !fused) {
        conv_gemm_reduce_kernel<DATA><<<reduce_blocks((int64_t)M * cols), 256, 0, dd_cuda_stream>>>(
            out, part, bias, M, cols, plane, (int)splits);
        if (DATA)
            DD_CUDA_LAUNCHED("conv backward-data reduction (own)");
        else
            DD_CUDA_LAUNCHED("conv forward reduction (own)");
    }
    return 0;
}

/* Rows of output per block of the staged kernel for this shape (BN columns, XC staged floats per
 * channel), or 0 when it does not apply: a stride-1 3x3 convolution with padding up to 2 whose
 * output rows fit the block's columns. */
template <int BN, int XC> int stage_rows(const Geom &g, bool data) {
    if (g.K != 3 || g.stride != 1 || g.pad > 2) return 0;
    const int Hout = data ? g.H : g.Ho, Wout = data ? g.W : g.Wo;
    if (Hout <= 0 || Wout <= 0 || Wout > BN) return 0;
    const int RW = stage_rw(Wout);
    int th = BN / Wout < Hout ? BN / Wout : Hout;
    while (th > 1 && (th + 2) * RW > XC) th--;
    return (th + 2) * RW <= XC ? th : 0;
}

/* The staged kernel where it applies (stage_rows), else the tc32x64s3 configuration: every
 * configuration is correct for every shape. */
template <bool DATA, int MT, int NT, int WMW, int WNW>
int launch_stage(float *out, const float *act, const float *w, const float *bias, const Geom &g,
                 void *ws, size_t ws_bytes) {
    using S = StageShape<MT, NT, WMW, WNW>;
    const int th = stage_rows<S::BN, S::XC>(g, DATA);
    const int Co = DATA ? g.Cin : g.Cout, Hout = DATA ? g.H : g.Ho;
    const int tiles_h = th ? (Hout + th - 1) / th : 0;
    if (!th || (int64_t)g.N * tiles_h > INT_MAX)
        return launch_gemm<DATA, 32, 64, 16, MmaTile<32, 64, 16, 32>, 3>(out, act, w, bias, g, ws,
                                                                         ws_bytes);
    if (Co <= 0 || g.N <= 0) return 0;
    const dim3 grid((unsigned int)(g.N * tiles_h), ceil_div(Co, S::BM));
    if (grid.y > 65535) return dd_error("conv2d (own kernels): %d channels, too many", Co);
    conv_stage_kernel<DATA, MT, NT, WMW, WNW><<<grid, S::T, 0, dd_cuda_stream>>>(out, act, w, bias,
                                                                                 g, th, tiles_h);
    if (DATA)
        DD_CUDA_LAUNCHED("conv backward-data (own, staged)");
    else
        DD_CUDA_LAUNCHED("conv forward (own, staged)");
    return 0;
}

/* Images per block of the plane kernel for this shape (BN columns, XC staged floats per channel),
 * or 0 when it does not apply: a stride-1 3x3 convolution with padding up to 2 whose input planes
 * have at most PLANE_MAX values and whose output planes fit the block's columns. */
template <int BN, int XC> int plane_images(const Geom &g, bool data) {
    if (g.K != 3 || g.stride != 1 || g.pad > 2) return 0;
    const int Hi = data ? g.Ho : g.H, Wi = data ? g.Wo : g.W;
    const int Hout = data ? g.H : g.Ho, Wout = data ? g.W : g.Wo;
    if (Hout <= 0 || Wout <= 0 || Hi <= 0 || Wi <= 0 || Hi * Wi > PLANE_MAX) return 0;
    if (Hout * Wout > BN) return 0;
    const int IS = (Hout + 2) * stage_rw(Wout);
    const int ipb = BN / (Hout * Wout) < XC / IS ? BN / (Hout * Wout) : XC / IS;
    return ipb > 0 ? ipb : 0;
}

/* The plane kernel where it applies (plane_images, and the GPU allows its shared memory), else
 * the tc32x64s3 configuration. Its shared memory is dynamic: the limit is raised once per kernel
 * (a call outside any stream, so also allowed while a graph is being captured). */
template <bool DATA, int MT, int NT, int WMW, int WNW, int KSPLIT>
int launch_plane(float *out, const float *act, const float *w, const float *bias, const Geom &g,
                 void *ws, size_t ws_bytes) {
    using S = PlaneShape<MT, NT, WMW, WNW, KSPLIT>;
    const int ipb = smem_fits(S::SMEM) ? plane_images<S::BN, S::XC>(g, DATA) : 0;
    if (!ipb)
        return launch_gemm<DATA, 32, 64, 16, MmaTile<32, 64, 16, 32>, 3>(out, act, w, bias, g, ws,
                                                                         ws_bytes);
    const int Co = DATA ? g.Cin : g.Cout;
    if (Co <= 0 || g.N <= 0) return 0;
    const dim3 grid((unsigned int)ceil_div(g.N, ipb), ceil_div(Co, S::BM));
    if (grid.y > 65535) return dd_error("conv2d (own kernels): %d channels, too many", Co);
    static bool raised; /* one per kernel */
    if (!raised) {
        DD_CUDA_CHECK(cudaFuncSetAttribute(conv_plane_kernel<DATA, MT, NT, WMW, WNW, KSPLIT>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, S::SMEM));
        raised = true;
    }
    conv_plane_kernel<DATA, MT, NT, WMW, WNW, KSPLIT>
        <<<grid, S::T, S::SMEM, dd_cuda_stream>>>(out, act, w, bias, g, ipb);
    if (DATA)
        DD_CUDA_LAUNCHED("conv backward-data (own, planes)");
    else
        DD_CUDA_LAUNCHED("conv forward (own, planes)");
    return 0;
}

/* The direct kernel (forward, where direct_fits), else the 8x128 FP32 configuration: backward-data
 * always, and forward shapes whose weights do not fit (dd_conv_own_config_applies says which). */
template <bool DATA, int CO>
int launch_direct(float *out, const float *act, const float *w, const float *bias, const Geom &g,
                  void *ws, size_t ws_bytes) {
    if (DATA || !direct_fits<CO>(g))
        return launch_gemm<DATA, 8, 128, 8, FmaTile<8, 128, 2, 4>>(out, act, w, bias, g, ws,
                                                                   ws_bytes);
    if (g.Py <= 0) return 0;
    const dim3 grid(ceil_div(g.Py, DIRECT_T), (unsigned int)((g.Cout + CO - 1) / CO));
    if (g.K == 3)
        conv_direct_kernel<3, CO><<<grid, DIRECT_T, 0, dd_cuda_stream>>>(out, act, w, bias, g);
    else
        conv_direct_kernel<0, CO><<<grid, DIRECT_T, 0, dd_cuda_stream>>>(out, act, w, bias, g);
    DD_CUDA_LAUNCHED("conv forward (own, direct)");
    return 0;
}

/* Backward-filter: its reduction (N Ho Wo positions) is always split by split_plan; the sums as
 * launch_gemm's. */
template <int BM, int BN, int BK, class Math, int STAGES = 1>
int launch_filter(float *dw, float *db, const float *dy, const float *x, const Geom &g, void *ws,
                  size_t ws_bytes) {
    constexpr int T = Math::T;
    const int NR = g.Kf + (db ? 1 : 0);
    if (g.Cout <= 0 || NR <= 0 || g.Py <= 0 || (!dw && !db)) return 0;
    const int64_t tiles = (int64_t)ceil_div(NR, BN) * ceil_div(g.Cout, BM);
    int64_t chunk;
    const int64_t out_bytes = (int64_t)g.Cout * NR * (int64_t)sizeof(float);
    const int64_t splits = split_plan(tiles, g.Py, BK, out_bytes, ws, ws_bytes, &chunk);
    float *part = splits > 1 ? (float *)ws : NULL;
    const dim3 grid(ceil_div(NR, BN), ceil_div(g.Cout, BM), (unsigned int)splits);
    if (grid.y > 65535) return dd_error("conv2d (own kernels): %d channels, too many", g.Cout);
    const int fused = part && fused_reduce && tiles <= TILE_COUNTERS;
    if (g.K == 3)
        conv_filter_kernel<3, BM, BN, BK, Math, STAGES>
            <<<grid, T, 0, dd_cuda_stream>>>(dw, db, part, dy, x, g, NR, (int)chunk, fused);
    else if (g.K == 4)
        conv_filter_kernel<4, BM, BN, BK, Math, STAGES>
            <<<grid, T, 0, dd_cuda_stream>>>(dw, db, part, dy, x, g, NR, (int)chunk, fused);
    else
        conv_filter_kernel<0, BM, BN, BK, Math, STAGES>
            <<<grid, T, 0, dd_cuda_stream>>>(dw, db, part, dy, x, g, NR, (int)chunk, fused);
    DD_CUDA_LAUNCHED("conv backward-filter (own)");
    if (part && !fused) {
        conv_filter_reduce_kernel<<<reduce_blocks((int64_t)g.Cout * NR), 256, 0, dd_cuda_stream>>>(
            dw, db, part, g.Cout, NR, g.Kf, (int)splits);
        DD_CUDA_LAUNCHED("conv backward-filter reduction (own)");
    }
    return 0;
}

/* Backward-filter from staged tiles (conv_filter_stage_kernel) where stage_rows applies, else the
 * tc32x64s3 configuration. The reduction's pieces (image, row tile) are split by split_plan. */
template <int MT>
int launch_filter_stage(float *dw, float *db, const float *dy, const float *x, const Geom &g,
                        void *ws, size_t ws_bytes) {
    using F = FilterStage<MT>;
    const int th = g.Cin > 0 ? stage_rows<F::BP, F::XC>(g, false) : 0;
    const int tiles_h = th ? (g.Ho + th - 1) / th : 0;
    if (!th || (int64_t)g.N * tiles_h > INT_MAX)
        return launch_filter<32, 64, 16, MmaTile<32, 64, 16, 32>, 3>(dw, db, dy, x, g, ws,
                                                                     ws_bytes);
    const int NR = g.Kf + (db ? 1 : 0);
    if (g.Cout <= 0 || g.Py <= 0 || (!dw && !db)) return 0;
    const int total = g.N * tiles_h;
    const int64_t tiles = (int64_t)ceil_div(g.Cin, F::CK) * ceil_div(g.Cout, F::BM);
    int64_t chunk;
    const int64_t out_bytes = (int64_t)g.Cout * NR * (int64_t)sizeof(float);
    const int64_t splits = split_plan(tiles, total, 1, out_bytes, ws, ws_bytes, &chunk);
    float *part = splits > 1 ? (float *)ws : NULL;
    const dim3 grid(ceil_div(g.Cin, F::CK), ceil_div(g.Cout, F::BM), (unsigned int)splits);
    if (grid.y > 65535) return dd_error("conv2d (own kernels): %d channels, too many", g.Cout);
    const int fused = part && fused_reduce && tiles <= TILE_COUNTERS;
    conv_filter_stage_kernel<MT><<<grid, F::T, 0, dd_cuda_stream>>>(
        dw, db, part, dy, x, g, NR, th, tiles_h, (int)chunk, fused);
    DD_CUDA_LAUNCHED("conv backward-filter (own, staged)");
    if (part && !fused) {
        conv_filter_reduce_kernel<<<reduce_blocks((int64_t)g.Cout * NR), 256, 0, dd_cuda_stream>>>(
            dw, db, part, g.Cout, NR, g.Kf, (int)splits);
        DD_CUDA_LAUNCHED("conv backward-filter reduction (own)");
    }
    return 0;
}

/* Backward-filter from whole-image pieces (conv_filter_plane_kernel) where plane_images applies,
 * else the tc32x64s3 configuration; the pieces are split by split_plan. */
template <int BP>
int launch_filter_plane(float *dw, float *db, const float *dy, const float *x, const Geom &g,
                        void *ws, size_t ws_bytes) {
    using F = FilterPlane<BP>;
    const int ipb = g.Cin > 0 ? plane_images<BP, F::XC>(g, false) : 0;
    if (!ipb)
        return launch_filter<32, 64, 16, MmaTile<32, 64, 16, 32>, 3>(dw, db, dy, x, g, ws,
                                                                     ws_bytes);
    const int NR = g.Kf + (db ? 1 : 0);
    if (g.Cout <= 0 || g.Py <= 0 || (!dw && !db)) return 0;
    const int total = ceil_div(g.N, ipb);
    const int64_t tiles = (int64_t)ceil_div(g.Cin, F::CK) * ceil_div(g.Cout, F::BM);
    int64_t chunk;
    const int64_t out_bytes = (int64_t)g.Cout * NR * (int64_t)sizeof(float);
    const int64_t splits = split_plan(tiles, total, 1, out_bytes, ws, ws_bytes, &chunk);
    float *part = splits > 1 ? (float *)ws : NULL;
    const dim3 grid(ceil_div(g.Cin, F::CK), ceil_div(g.Cout, F::BM), (unsigned int)splits);
    if (grid.y > 65535) return dd_error("conv2d (own kernels): %d channels, too many", g.Cout);
    const int fused = part && fused_reduce && tiles <= TILE_COUNTERS;
    conv_filter_plane_kernel<BP><<<grid, F::T, 0, dd_cuda_stream>>>(dw, db, part, dy, x, g, NR,
                                                                    ipb, (int)chunk, fused);
    DD_CUDA_LAUNCHED("conv backward-filter (own, planes)");
    if (part && !fused) {
        conv_filter_reduce_kernel<<<reduce_blocks((int64_t)g.Cout * NR), 256, 0, dd_cuda_stream>>>(
            dw, db, part, g.Cout, NR, g.Kf, (int)splits);
        DD_CUDA_LAUNCHED("conv backward-filter reduction (own)");
    }
    return 0;
}

typedef int (*gemm_fn)(float *, const float *, const float *, const float *, const Geom &, void *,
                       size_t);
typedef int (*filter_fn)(float *, float *, const float *, const float *, const Geom &, void *,
                         size_t);

/* Tile configurations, BMxBN: first FP32 FMA (BK, TMxTN), all 128 threads except the first
 * filter one (64); then, named tc..., TF32 tensor-core ones (BK, warp tile WMxWN), 128 threads
 * (4 warps); k32: BK = 32, half the steps (each step waits once for its global loads) for more
 * registers; s3: three tiles in shared memory filled by asynchronous copies (cp.async) two steps
 * ahead, instead of one tile and the next step's loads in registers; dcN: the direct kernel
 * for few channels, N output channels a thread (forward only: their backward-data is 8x128's).
 * The FP32 ones come first and the tiled ones are the default picks: the tc ones run only where
 * TF32 is allowed (dd_conv_own_config_tf32). */
template <int BM, int BN, int TM, int TN> using F = FmaTile<BM, BN, TM, TN>;
template <int BM, int BN, int WM, int WN> using TC = MmaTile<BM, BN, WM, WN>;
template <bool DATA> struct GemmConfigs {
    static constexpr gemm_fn fn[] = {
        launch_gemm<DATA, 8, 128, 8, F<8, 128, 2, 4>>,
        launch_gemm<DATA, 16, 128, 16, F<16, 128, 4, 4>>,
        launch_gemm<DATA, 32, 64, 16, F<32, 64, 4, 4>>,
        launch_gemm<DATA, 64, 64, 16, F<64, 64, 8, 4>>,
        launch_direct<DATA, 1>,
        launch_direct<DATA, 4>,
        launch_direct<DATA, 8>,
        launch_gemm<DATA, 16, 128, 16, TC<16, 128, 16, 32>>,
        launch_gemm<DATA, 32, 64, 16, TC<32, 64, 16, 32>>,
        launch_gemm<DATA, 32, 64, 32, TC<32, 64, 16, 32>>,
        launch_gemm<DATA, 32, 64, 16, TC<32, 64, 16, 32>, 3>,
        launch_stage<DATA, 1, 4, 1, 4>,
        launch_stage<DATA, 2, 4, 1, 4>,
        launch_plane<DATA, 1, 7, 2, 2, 1>,
        launch_plane<DATA, 1, 7, 1, 4, 1>,
        launch_plane<DATA, 1, 7, 2, 4, 1>,
        launch_plane<DATA, 1, 7, 1, 2, 2>,
        launch_plane<DATA, 1, 7, 2, 2, 2>,
        launch_plane<DATA, 1, 7, 1, 4, 2>,
        launch_plane<DATA, 1, 7, 2, 4, 2>,
    };
};
/* Retired after an H200 run where none of them was the fastest handwritten kernel for any of the
 * UNet's shapes at any batch (bench/RESULTS.md, session 9): FP32 64x128, tc64x64, tc64x128,
 * tc64x64k32, tc64x64s3, st32x64, st16x64, pl16x112 */
const char *const gemm_names[] = {"8x128",     "16x128",   "32x64",    "64x64",    "dc1",
                                  "dc4",       "dc8",      "tc16x128",
                                  "tc32x64",   "tc32x64k32", "tc32x64s3", "st16x128", "st32x128",
                                  "pl32x112",  "pl16x224", "pl32x224", "pk16x112", "pk32x112",
                                  "pk16x224",  "pk32x224"};
constexpr int GEMM_CONFIGS = 20, GEMM_FP32_CONFIGS = 7;
/* the plane configurations (launch_plane): their BN, or 0 (the staged ones: 8 and 9) */
const int gemm_plane_bn[GEMM_CONFIGS] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         112, 224, 224, 112, 112, 224, 224};
/* and their dynamic shared memory, bytes (GemmConfigs' order) */
const int gemm_plane_smem[GEMM_CONFIGS] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    PlaneShape<1, 7, 2, 2, 1>::SMEM, PlaneShape<1, 7, 1, 4, 1>::SMEM,
    PlaneShape<1, 7, 2, 4, 1>::SMEM, PlaneShape<1, 7, 1, 2, 2>::SMEM,
    PlaneShape<1, 7, 2, 2, 2>::SMEM, PlaneShape<1, 7, 1, 4, 2>::SMEM,
    PlaneShape<1, 7, 2, 4, 2>::SMEM};
constexpr int GEMM_DIRECT_FIRST = 4, GEMM_DIRECT_LAST = 6, GEMM_STAGE_FIRST = 11,
              GEMM_STAGE_LAST = 12;
/* the direct configurations' channels a block (launch_direct's CO) */
int direct_co(int cfg) { return cfg == GEMM_DIRECT_FIRST ? 1 : cfg == GEMM_DIRECT_FIRST + 1 ? 4 : 8; }
static_assert(sizeof gemm_names / sizeof gemm_names[0] == GEMM_CONFIGS, "a name each");
static_assert(sizeof GemmConfigs<false>::fn / sizeof(gemm_fn) == GEMM_CONFIGS, "a kernel each");

const filter_fn filter_fns[] = {
    launch_filter<16, 64, 16, F<16, 64, 4, 4>>,
    launch_filter<32, 64, 32, F<32, 64, 4, 4>>,
    launch_filter<64, 64, 32, F<64, 64, 8, 4>>,
    launch_filter<16, 64, 32, TC<16, 64, 16, 16>>,
    launch_filter<32, 64, 16, TC<32, 64, 16, 32>, 3>,
    launch_filter<64, 64, 16, TC<64, 64, 32, 32>, 3>,
    launch_filter_stage<1>,
    launch_filter_plane<112>,
    launch_filter_plane<196>,
};
/* retired with the forward ones above: tc32x64, tc64x64, st32x72 */
const char *const filter_names[] = {"16x64",   "32x64",     "64x64",     "tc16x64",   "tc32x64s3",
                                    "tc64x64s3", "st16x72", "pl16x112",  "pl16x196"};
constexpr int FILTER_CONFIGS = 9, FILTER_FP32_CONFIGS = 3, FILTER_STAGE_FIRST = 6,
              FILTER_PLANE_FIRST = 7;
static_assert(sizeof filter_names / sizeof filter_names[0] == FILTER_CONFIGS, "a name each");
static_assert(sizeof filter_fns / sizeof filter_fns[0] == FILTER_CONFIGS, "a kernel each");

/* the first configuration whose BM covers m channels (the last for more) */
int by_channels(int m) {
    static const int bm[] = {8, 16, 32, 64};
    for (int i = 0; i < 4; i++)
        if (m <= bm[i]) return i;
    return 3;
}

} /* namespace */

extern "C" {

int dd_conv_own_configs(int dir) {
    return dir == DD_CONV_BWD_FILTER ? FILTER_CONFIGS
           : dir == DD_CONV_FWD || dir == DD_CONV_BWD_DATA ? GEMM_CONFIGS
                                                           : 0;
}

const char *dd_conv_own_config_name(int dir, int cfg) {
    if (cfg < 0 || cfg >= dd_conv_own_configs(dir)) return "?";
    return dir == DD_CONV_BWD_FILTER ? filter_names[cfg] : gemm_names[cfg];
}

int dd_conv_own_config_tf32(int dir, int cfg) {
    if (cfg < 0 || cfg >= dd_conv_own_configs(dir)) return 0;
    return cfg >= (dir == DD_CONV_BWD_FILTER ? FILTER_FP32_CONFIGS : GEMM_FP32_CONFIGS);
}

int dd_conv_own_config_applies(int dir, int cfg, const dd_conv_shape *s) {
    if (cfg < 0 || cfg >= dd_conv_own_configs(dir)) return 0;
    const Geom g = geometry(s);
    if (dir == DD_CONV_BWD_FILTER) {
        if (cfg >= FILTER_PLANE_FIRST)
            return g.Cin > 0 && (cfg == FILTER_PLANE_FIRST
                                     ? plane_images<112, FilterPlane<112>::XC>(g, false) > 0
                                     : plane_images<196, FilterPlane<196>::XC>(g, false) > 0);
        return cfg < FILTER_STAGE_FIRST ||
               (g.Cin > 0 && stage_rows<FilterStage<1>::BP, FilterStage<1>::XC>(g, false) > 0);
    }
    const bool data = dir == DD_CONV_BWD_DATA;
    if (cfg >= GEMM_DIRECT_FIRST && cfg <= GEMM_DIRECT_LAST) {
        /* forward only, where the block's weights fit; and only where few channels make the
         * tiled kernels wasteful (the autotuner need not time them on the rest): up to 4 output
         * channels (dc1, dc4), or up to 4 input channels (dc8) */
        if (data || !direct_on) return 0;
        const int co = direct_co(cfg);
        const bool fits = co == 1 ? direct_fits<1>(g) : co == 4 ? direct_fits<4>(g)
                                                              : direct_fits<8>(g);
        return fits && (co == 8 ? g.Cin <= 4 : g.Cout <= 4);
    }
    if (gemm_plane_bn[cfg])
        return smem_fits(gemm_plane_smem[cfg]) &&
               (gemm_plane_bn[cfg] == 112
                    ? plane_images<112, PlaneShape<1, 7, 2, 2, 1>::XC>(g, data) > 0
                    : plane_images<224, PlaneShape<1, 7, 2, 4, 1>::XC>(g, data) > 0);
    if (cfg < GEMM_STAGE_FIRST || cfg > GEMM_STAGE_LAST) return 1;
    return stage_rows<128, StageShape<1, 4, 1, 4>::XC>(g, data) > 0;
}

int dd_conv_own_default(int dir, const dd_conv_shape *s) {
    if (dir == DD_CONV_BWD_FILTER) return s->Cout <= 16 ? 0 : s->Cout <= 32 ? 1 : 2;
    return by_channels(dir == DD_CONV_BWD_DATA ? s->Cin : s->Cout);
}

int dd_conv_own_default_tf32(int dir, const dd_conv_shape *s) {
    const int m = dir == DD_CONV_BWD_FILTER ? s->Cout : dir == DD_CONV_BWD_DATA ? s->Cin : s->Cout;
    const int i = m <= 16 ? 0 : m <= 32 ? 1 : 2;
    return (dir == DD_CONV_BWD_FILTER ? FILTER_FP32_CONFIGS : GEMM_FP32_CONFIGS) + i;
}

int dd_conv_own_supported(const dd_conv_shape *s) {
    if (s->N < 0 || s->Cin < 0 || s->Cout < 0 || s->H < 0 || s->W < 0 || s->Ho < 0 || s->Wo < 0)
        return 0;
    if (s->K < 1 || s->stride < 1 || s->pad < 0) return 0;
    /* channel tiles along grid.y (at most 65535) in every configuration: the smallest BM is 8 */
    if (s->Cin > 8 * 65535 || s->Cout > 8 * 65535) return 0;
    /* every int the kernels compute stays below the limit (positions plus a tile, per-image
     * offsets, weight offsets) */
    const int64_t lim = (int64_t)INT_MAX - 4096;
    const int64_t KK = (int64_t)s->K * s->K;
    const int64_t v[] = {(int64_t)s->N * s->H * s->W, (int64_t)s->N * s->Ho * s->Wo,
                         (int64_t)s->Cin * s->H * s->W, (int64_t)s->Cout * s->Ho * s->Wo,
                         (int64_t)s->Cin * KK + 1, (int64_t)s->Cout * KK,
                         (int64_t)s->Cout * (s->Cin * KK + 1), (int64_t)s->H + 2 * s->pad,
                         (int64_t)s->W + 2 * s->pad, (int64_t)s->Ho * s->stride + s->K};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (v[i] > lim) return 0;
    return 1;
}

int dd_conv_own_set_direct(int on) {
    const int was = direct_on;
    direct_on = on != 0;
    return was;
}

int dd_conv_own_set_fused_reduce(int on) {
    const int was = fused_reduce;
    fused_reduce = on != 0;
    return was;
}

int dd_conv_own_prepare(void) {
    if (sm_count > 0) return 0;
    const char *v = getenv("DIFFUSION_CONV_SPLIT_REDUCE");
    if (v && *v && strcmp(v, "last-block") && strcmp(v, "kernel"))
        return dd_error("DIFFUSION_CONV_SPLIT_REDUCE=%s: use last-block (the default) or kernel",
                        v);
    if (v && !strcmp(v, "kernel")) fused_reduce = 0;
    int dev = 0, n = 0, smem = 0;
    DD_CUDA_CHECK(cudaGetDevice(&dev));
    DD_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    DD_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    smem_optin = smem;
    sm_count = n > 0 ? n : 132;
    return 0;
}

static int bad_config(const char *what, int cfg) {
    return dd_error("conv2d %s (own kernels): no tile configuration %d", what, cfg);
}

int dd_conv_own_forward(int cfg, float *y, const float *x, const float *w, const float *b,
                        const dd_conv_shape *s, void *ws, size_t ws_bytes) {
    if (cfg < 0 || cfg >= GEMM_CONFIGS) return bad_config("forward", cfg);
    return GemmConfigs<false>::fn[cfg](y, x, w, b, geometry(s), ws, ws_bytes);
}

int dd_conv_own_backward_data(int cfg, float *dx, const float *dy, const float *w,
                              const dd_conv_shape *s, void *ws, size_t ws_bytes) {
    if (cfg < 0 || cfg >= GEMM_CONFIGS) return bad_config("backward-data", cfg);
    if (!dx) return 0;
    return GemmConfigs<true>::fn[cfg](dx, dy, w, NULL, geometry(s), ws, ws_bytes);
}

int dd_conv_own_backward_filter(int cfg, float *dw, float *db, const float *dy, const float *x,
                                const dd_conv_shape *s, void *ws, size_t ws_bytes) {
    if (cfg < 0 || cfg >= FILTER_CONFIGS) return bad_config("backward-filter", cfg);
    return filter_fns[cfg](dw, db, dy, x, geometry(s), ws, ws_bytes);
}

int dd_conv_maxdiff(float out[2], const float *a, const float *b, size_t n, void *dev8) {
    unsigned int *d = (unsigned int *)dev8, h[2];
    DD_CUDA_CHECK(cudaMemsetAsync(d, 0, 2 * sizeof(unsigned int), dd_cuda_stream));
    if (n) {
        size_t blocks = (n + 255) / 256;
        if (blocks > 1024) blocks = 1024;
        maxdiff_kernel<<<(unsigned int)blocks, 256, 0, dd_cuda_stream>>>(d, a, b, n);
        DD_CUDA_LAUNCHED("conv maxdiff");
    }
    DD_CUDA_CHECK(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, dd_cuda_stream));
    DD_CUDA_CHECK(cudaStreamSynchronize(dd_cuda_stream));
    memcpy(&out[0], &h[0], sizeof(float));
    memcpy(&out[1], &h[1], sizeof(float));
    return 0;
}

} /* extern "C" */

/* ---------------------------------------------------------------- timing helper */

namespace {
__global__ void spin_kernel(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}
} /* namespace */

extern "C" int dd_conv_spin(long long cycles) {
    spin_kernel<<<1, 1, 0, dd_cuda_stream>>>(cycles);
    DD_CUDA_LAUNCHED("conv timing spin");
    return 0;
}

/* ---------------------------------------------------------------- test data */

namespace {
/* uniform in [-1, 1) from a hash of (seed, i): independent of the diffusion RNG's interface */
__global__ void fill_kernel(float *out, size_t n, unsigned int seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 0x9e3779b9u ^ (unsigned int)(i >> 32) ^ seed;
        h ^= h >> 16;
        h *= 0x7feb352du;
        h ^= h >> 15;
        h *= 0x846ca68bu;
        h ^= h >> 16;
        out[i] = (float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f;
    }
}
} /* namespace */

extern "C" int dd_conv_fill(float *out, size_t n, unsigned int seed) {
    if (!n) return 0;
    size_t blocks = (n + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    fill_kernel<<<(unsigned int)blocks, 256, 0, dd_cuda_stream>>>(out, n, seed);
    DD_CUDA_LAUNCHED("conv test fill");
    return 0;
}
