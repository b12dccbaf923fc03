/* A stand-in for cuda_runtime.h that lets an unmodified .cu file compile as C++ and run its
 * kernels on the CPU (tests/emu/emu_runtime.cpp): every thread of a block is a fiber
 * and __syncthreads() switches back to a scheduler, which resumes the block's threads in a
 * (seeded) shuffled order after every barrier. Blocks run one after another, so __shared__
 * arrays become function statics. Launches are rewritten to emu_launch() by
 * tests/emu/cuda_launch_rewrite.py. What cuda/cuda_conv.cu and cuda/cuda_kernels.cu use is
 * here: warp shuffles (full mask only) are a rendezvous of the warp's 32 lanes, switched like a
 * barrier; atomics are plain read-modify-writes (one thread runs at a time, and only barriers
 * and shuffles switch threads); __threadfence is a no-op; __device__ variables are plain globals.
 * clock64 runs fast (see there); anything else not modelled stops the test with a message. */
#ifndef DD_EMU_CUDA_RUNTIME_H
#define DD_EMU_CUDA_RUNTIME_H

/* ======================================================================= the runtime API (C)
 * The subset cuda/cuda_backend.c, cuda/cuda_dnn.c, the kernels' launchers and the GPU tests call,
 * declared for C and C++ and implemented in tests/emu/emu_api.cpp (streams, deferred execution,
 * capture, device memory with guard zones: see emu_stream.h). Error codes carry the real values. */
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int cudaError_t;
enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorNoKernelImageForDevice = 209, /* EMU_NO_KERNEL_IMAGE in tests/emu/emu_api.cpp */
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalState = 401,
    cudaErrorIllegalAddress = 700, /* sticky: see EMU_FAULT_KERNEL in tests/emu/emu_api.cpp */
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903
};
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
enum cudaDeviceAttr {
    cudaDevAttrMultiProcessorCount = 16,
    /* EMU_SHARED_OPTIN_KB, else EMU_MAX_SHARED (tests/emu/emu_api.cpp) */
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
/* the most shared memory a block of sm_90 may have (cudaFuncAttributeMaxDynamicSharedMemorySize's
 * ceiling); above 48 KiB only for a kernel whose attribute allows it, as on a GPU */
#define EMU_MAX_SHARED (227 * 1024)
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2
};
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2
};
#define cudaStreamNonBlocking 0x01u
struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    int maxThreadsPerBlock, numRegs;
};
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
};

const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaDeviceSynchronize(void);
/* a kernel's attribute (only cudaFuncAttributeMaxDynamicSharedMemorySize): recorded per kernel,
 * checked by every launch of it (C++ callers use the template below) */
cudaError_t emu_func_set_attribute(const void *kernel, enum cudaFuncAttribute a, int v);
cudaError_t emu_func_get_attributes(struct cudaFuncAttributes *attr, const void *kernel);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind k,
                            cudaStream_t s);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *st);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);

cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);

#ifdef __cplusplus
}
#endif

/* ======================================================================= kernels (C++ only) */
#ifdef __cplusplus
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float a, float b) { return float2{a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
/* after each `__shared__` declaration (tests/emu/cuda_launch_rewrite.py adds the calls): the
 * variable, n bytes at p, filled with 0xff bytes (NaN floats, -1 ints) by the first thread of
 * each block to get there, as dynamic shared memory is: a read before any write in the block
 * shows, instead of seeing what the previous block left */
void emu_shared_poison(void *p, size_t n);
/* for the code's own shared-memory poisoning (dd_cuda_poison_shared), which the above makes
 * redundant here */
#define DD_CUDA_EMULATION 1
/* `extern __shared__ T name[]` (dynamic shared memory) as the source writes it through
 * DD_DYNAMIC_SHARED (cuda/cuda_conv.cu): the running block's buffer of the launch's size,
 * filled with 0xff bytes (NaN floats) for every block, so that a read before a write shows */
void *emu_dynamic_shared();
#define DD_DYNAMIC_SHARED(T, name) T *const name = static_cast<T *>(emu_dynamic_shared())
#define __align__(n) __attribute__((aligned(n)))

extern dim3 emu_blockIdx, emu_blockDim, emu_gridDim;
extern const dim3 *emu_threadIdx_p; /* the running fiber's thread index */
#define threadIdx (*emu_threadIdx_p)
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim

void emu_syncthreads();
#define __syncthreads() emu_syncthreads()
/* a read through the read-only path: checked to lie inside a registered buffer */
float emu_ldg(const float *p);
#define __ldg(p) emu_ldg(p)
#define __ldcg(p) emu_ldg(p) /* a load through L2 only: one memory here */
[[noreturn]] void emu_unsupported(const char *what);

inline int min(int a, int b) { return a < b ? a : b; }
/* a clock that runs fast: each read is 2^20 cycles after the previous one, so a kernel that
 * spins until some cycles have passed (the autotuner's launch-queue filler) ends at once */
inline long long clock64() {
    static long long c;
    return c += 1 << 20;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
/* a float add rounded on its own, never contracted into a neighbouring product (the emulation,
 * built for baseline x86-64, has no FMA instruction to contract into) */
inline float __fadd_rn(float a, float b) { return a + b; }

/* Warp shuffles: the calling thread deposits its value and waits until every lane of its warp
 * has reached a shuffle (emu_runtime.cpp checks that they are the same call: same kind, width,
 * count); each then gets its source lane's value (its own when the source lies outside its
 * width segment, as on the GPU). Values of up to 8 bytes travel as raw bits. */
enum EmuShfl { EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR };
uint64_t emu_shfl(unsigned mask, uint64_t bits, EmuShfl kind, int arg, int width);
template <typename T> T emu_shfl_as(unsigned mask, T v, EmuShfl kind, int arg, int width) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value over 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    b = emu_shfl(mask, b, kind, arg, width);
    T r;
    memcpy(&r, &b, sizeof r);
    return r;
}
/* a warp barrier: every lane of the warp reaches it before any goes on (a shuffle's rendezvous) */
inline void __syncwarp(unsigned m = 0xffffffffu) { (void)emu_shfl(m, 0, EMU_SHFL_IDX, 0, 32); }
template <typename T> T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    return emu_shfl_as(m, v, EMU_SHFL_IDX, src, w);
}
template <typename T> T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32) {
    return emu_shfl_as(m, v, EMU_SHFL_UP, (int)d, w);
}
template <typename T> T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    return emu_shfl_as(m, v, EMU_SHFL_DOWN, (int)d, w);
}
template <typename T> T __shfl_xor_sync(unsigned m, T v, int lane_mask, int w = 32) {
    return emu_shfl_as(m, v, EMU_SHFL_XOR, lane_mask, w);
}

/* Atomics: plain read-modify-writes, returning the old value (no other thread runs between a
 * fiber's switch points). */
template <typename T> T atomicAdd(T *p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <typename T> T atomicSub(T *p, T v) {
    const T old = *p;
    *p = old - v;
    return old;
}
template <typename T> T atomicMax(T *p, T v) {
    const T old = *p;
    if (v > old) *p = v;
    return old;
}
template <typename T> T atomicMin(T *p, T v) {
    const T old = *p;
    if (v < old) *p = v;
    return old;
}
template <typename T> T atomicExch(T *p, T v) {
    const T old = *p;
    *p = v;
    return old;
}
template <typename T> T atomicCAS(T *p, T cmp, T v) {
    const T old = *p;
    if (old == cmp) *p = v;
    return old;
}
/* one thread runs at a time, in program order: every fence is already satisfied */
inline void __threadfence() {}
inline void __threadfence_block() {}

/* Runs body once per thread of every block of the grid (fails the test on a bad configuration:
 * grid.y or grid.z above 65535, more than 1024 threads, an empty grid, divergent barriers). */
void emu_run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body);
/* A launch: the configuration is checked at once (a bad one sets the error cudaGetLastError
 * returns, as on a GPU; after a device fault every launch fails); the arguments are converted to
 * the kernel's parameter types and copied, and the grid runs when the stream's queue does
 * (emu_api.cpp). `name` is the kernel expression as the source writes it (the rewrite passes it):
 * the launch EMU_FAULT_KERNEL picks queues the fault instead of the grid. */
extern int emu_sms; /* the SM count the emulated device reports */

bool emu_launch_check(dim3 grid, dim3 block, size_t smem, cudaStream_t s, const void *kernel);
void emu_launch_queue(cudaStream_t s, std::function<void()> run, const char *name);
template <typename... KA>
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, void (*k)(KA...)) {
    return emu_func_get_attributes(attr, reinterpret_cast<const void *>(k));
}
template <typename... KA>
cudaError_t cudaFuncSetAttribute(void (*k)(KA...), enum cudaFuncAttribute a, int v) {
    return emu_func_set_attribute(reinterpret_cast<const void *>(k), a, v);
}
template <typename... KA, typename... A>
void emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t s, void (*k)(KA...),
                const char *name, A &&...args) {
    if (!emu_launch_check(grid, block, smem, s, reinterpret_cast<const void *>(k))) return;
    std::tuple<typename std::decay<KA>::type...> params(std::forward<A>(args)...);
    emu_launch_queue(
        s, [=] { emu_run_grid(grid, block, smem, [&] { std::apply(k, params); }); }, name);
}

#endif /* __cplusplus */

#endif
