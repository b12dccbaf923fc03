/* The emulated CUDA runtime API (fake_cuda/cuda_runtime.h) and the device model of
 * emu_stream.h: device memory in guarded buffers, one in-order queue of operations, deferred
 * execution, stream capture into graphs, events, and the calls real CUDA refuses while a stream
 * is being captured.
 *
 * What real CUDA does and this models, for the bugs it can show on a machine without a GPU:
 * - an asynchronous call returns before its work runs: with emu_defer, the work runs only at the
 *   next synchronisation, so a host that reads a result early, or rewrites a page-locked buffer a
 *   queued copy still has to read, gets wrong data;
 * - a copy from pageable host memory takes its bytes at the call; a copy into pageable memory
 *   waits for everything queued before it;
 * - a captured operation does not run: it runs each time the instantiated graph is launched, with
 *   the arguments it was captured with (the device memory it then reads may have changed);
 * - in thread-local capture mode, allocating, freeing and synchronising are refused and
 *   invalidate the capture; the stream then fails every use until cudaStreamEndCapture, which
 *   reports the invalidation;
 * - cudaFree synchronises; a freed buffer is never handed out again here, and it reads as NaN, so
 *   a graph replayed over freed memory produces NaN rather than silently working;
 * - copies and memsets are checked against the live buffers (a device range out of bounds, or a
 *   direction that does not match the pointers, is a misuse: the test fails);
 * - a device fault is sticky. EMU_FAULT_KERNEL=SUBSTRING injects one: the first launch whose
 *   kernel name (the kernel expression as the source writes it, template arguments included:
 *   "conv_gemm_kernel<DATA, 3, BM, BN, BK, Math, STAGES>") contains SUBSTRING queues, instead
 *   of its grid, an illegal memory access (cudaErrorIllegalAddress, 700); EMU_FAULT_KERNEL_SKIP=N
 *   lets the first N matching launches run (default 0; a captured launch counts once, however
 *   often its graph is replayed); at most one fault per process, both variables read at each
 *   launch. When the faulting work runs (at the next synchronisation, or at once without
 *   emu_defer; in a graph, when the graph is launched), the rest of the graph and everything
 *   still queued are dropped, and from then on every call that touches the device (launches,
 *   copies, memsets, allocations, synchronisations, event records, captures, graph launches, the
 *   fake libraries' queued calls) fails with 700, and cudaGetLastError returns 700 without
 *   clearing it. cudaFree, cudaFreeHost, cudaStreamDestroy and cudaEventDestroy still release their
 *   object but return 700; the pure host queries (device count and properties, versions,
 *   cudaStreamIsCapturing) keep working. Misuse reports after the fault do not fail the process
 *   at exit (they follow from the fault): a program that reports the error exits with its own
 *   code.
 * - the device's limits and fit: EMU_SHARED_OPTIN_KB=N gives a block at most N KiB of shared
 *   memory (sm_90's 227 KiB by default; 64 stands for sm_75); EMU_NO_KERNEL_IMAGE=1 is a
 *   compute capability 7.5 card that the build has no code for (cudaFuncGetAttributes fails with
 *   cudaErrorNoKernelImageForDevice; launches still run); EMU_NO_GPU=1 is a machine without one,
 *   EMU_GPU_MEMORY_MB=N a card of N MiB.
 * Not modelled: several streams running concurrently (there is one queue), the legacy default
 * stream's implicit synchronisation, timing (events measure the emulation's own time). */
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include "emu.h"
#include "emu_stream.h"

bool emu_defer = false;

struct CUstream_st {
    bool capturing = false, invalidated = false;
    std::vector<std::function<void()>> captured;
    std::map<std::string, int> counts; /* captured operations by name (EMU_STATS) */
};
struct CUgraph_st {
    std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
    std::shared_ptr<const std::vector<std::function<void()>>> ops;
};
struct CUevent_st {
    double ms = 0;
    bool recorded = false;
};

namespace {
struct Op {
    std::function<void()> run;
    const char *what;
};
std::deque<Op> queue;
bool flushing;
CUstream_st legacy_stream; /* stream 0 */
std::vector<CUstream_st *> streams;
cudaError_t last_error = cudaSuccess;
/* the sticky device fault (EMU_FAULT_KERNEL): set when the faulting work runs */
bool faulted;
int failures_at_fault; /* emu_failures() then: later reports follow from the fault */
int fault_matches;     /* launches whose name matched EMU_FAULT_KERNEL so far */
bool fault_queued;     /* the one fault of the process has been queued */
size_t device_bytes;                    /* live cudaMalloc bytes */
std::map<uintptr_t, size_t> pinned;     /* cudaMallocHost: base -> bytes */
std::map<void *, size_t> device_allocs; /* cudaMalloc: base -> bytes asked */
const auto t0 = std::chrono::steady_clock::now();

CUstream_st *stream_of(cudaStream_t s) { return s ? s : &legacy_stream; }

size_t memory_limit() {
    static size_t lim = 0;
    if (!lim) {
        const char *v = getenv("EMU_GPU_MEMORY_MB");
        lim = (size_t)(v && atol(v) > 0 ? atol(v) : 4096) << 20;
    }
    return lim;
}

cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess) last_error = e;
    return e;
}

/* the error of every device call after the fault (kept as the last error too) */
cudaError_t fault_error() { return set_error(cudaErrorIllegalAddress); }

void enter_fault(const std::string &kernel) {
    if (faulted) return;
    faulted = true;
    failures_at_fault = emu_failures();
    last_error = cudaErrorIllegalAddress;
    printf("emulated CUDA: injected fault (EMU_FAULT_KERNEL): %s made an illegal memory access; "
           "every later device call fails with error 700\n",
           kernel.c_str());
    fflush(stdout);
}

/* true when this launch is the one EMU_FAULT_KERNEL (and EMU_FAULT_KERNEL_SKIP) pick */
bool fault_pick(const char *name) {
    if (fault_queued || !name) return false;
    const char *sub = getenv("EMU_FAULT_KERNEL");
    if (!sub || !*sub || !strstr(name, sub)) return false;
    const char *skip = getenv("EMU_FAULT_KERNEL_SKIP");
    if (fault_matches++ < (skip ? atoi(skip) : 0)) return false;
    fault_queued = true;
    return true;
}
} /* namespace */

void emu_misuse(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emu_fail("emulated CUDA: %s", msg);
}

cudaError_t emu_enqueue(cudaStream_t s, std::function<void()> op, const char *what) {
    if (faulted) return cudaErrorIllegalAddress;
    CUstream_st *st = stream_of(s);
    if (st->capturing) {
        if (st->invalidated) return cudaErrorStreamCaptureInvalidated;
        st->captured.push_back(std::move(op));
        st->counts[what]++;
        return cudaSuccess;
    }
    if (!emu_defer) {
        op();
        return cudaSuccess;
    }
    queue.push_back({std::move(op), what});
    return cudaSuccess;
}

void emu_flush() {
    if (flushing) return; /* an operation's own synchronising call: the queue is in order */
    flushing = true;
    while (!queue.empty()) {
        Op op = std::move(queue.front());
        queue.pop_front();
        op.run();
        if (faulted) queue.clear(); /* as on a GPU: nothing after the fault runs */
    }
    flushing = false;
}

bool emu_capturing(cudaStream_t s) { return stream_of(s)->capturing; }

cudaError_t emu_prohibited(cudaStream_t s, const char *what) {
    CUstream_st *st = nullptr;
    if (s || legacy_stream.capturing)
        st = stream_of(s);
    else
        for (CUstream_st *x : streams)
            if (x->capturing) st = x;
    if (!st || !st->capturing) return cudaSuccess;
    if (!st->invalidated)
        printf("emulated CUDA: %s during a stream capture: refused, the capture is invalidated\n",
               what);
    st->invalidated = true;
    return set_error(cudaErrorStreamCaptureUnsupported);
}

bool emu_device_range(const void *p, size_t bytes) {
    return p && emu_in_buffer(p, bytes) && !emu_pinned(p);
}

bool emu_pinned(const void *p) {
    auto it = pinned.upper_bound((uintptr_t)p);
    if (it == pinned.begin()) return false;
    --it;
    return (uintptr_t)p < it->first + it->second;
}

/* A misuse is a bug however the caller handles the error code: fail the process at exit. */
namespace {
void report_at_exit() {
    const int before_guards = emu_failures();
    emu_check_guards("at exit");
    /* after a device fault, the reports that followed it are its consequences */
    const int failures = faulted ? failures_at_fault + (emu_failures() - before_guards)
                                 : emu_failures();
    if (faulted && failures != emu_failures())
        printf("emulated CUDA: %d report(s) after the injected fault, not counted\n",
               emu_failures() - failures);
    if (failures) {
        printf("emulated CUDA: %d failed check(s) of the emulation: the test fails\n", failures);
        fflush(stdout);
        _exit(1);
    }
}
struct AtExit {
    AtExit() { atexit(report_at_exit); }
} at_exit;
} /* namespace */

/* ---------------------------------------------------------------- launches */

/* each kernel's cudaFuncAttributeMaxDynamicSharedMemorySize, where one was set */
static std::map<const void *, int> max_dynamic_shared;

/* the most shared memory a block may have: EMU_MAX_SHARED (sm_90's), or EMU_SHARED_OPTIN_KB
 * KiB, to stand for a GPU with less (64 on sm_75, 99 on sm_86 and sm_89) */
static int shared_optin() {
    const char *v = getenv("EMU_SHARED_OPTIN_KB");
    const long kb = v ? atol(v) : 0;
    return kb > 0 && kb * 1024 < EMU_MAX_SHARED ? (int)(kb * 1024) : EMU_MAX_SHARED;
}

cudaError_t emu_func_set_attribute(const void *kernel, enum cudaFuncAttribute a, int v) {
    if (!kernel || a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 ||
        v > shared_optin())
        return set_error(cudaErrorInvalidValue);
    max_dynamic_shared[kernel] = v;
    return cudaSuccess;
}

/* EMU_NO_KERNEL_IMAGE=1: the device is one the build has no code for (a compute capability 7.5
 * card and a build for 8.0 and 9.0, say): asking for a kernel's attributes fails as on a GPU */
static bool no_kernel_image() {
    const char *v = getenv("EMU_NO_KERNEL_IMAGE");
    return v && *v && strcmp(v, "0");
}

cudaError_t emu_func_get_attributes(struct cudaFuncAttributes *attr, const void *kernel) {
    if (!attr || !kernel) return set_error(cudaErrorInvalidValue);
    if (no_kernel_image()) return set_error(cudaErrorNoKernelImageForDevice);
    memset(attr, 0, sizeof *attr);
    attr->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}

bool emu_launch_check(dim3 grid, dim3 block, size_t smem, cudaStream_t s, const void *kernel) {
    if (faulted) {
        fault_error();
        return false;
    }
    const unsigned long nt = (unsigned long)block.x * block.y * block.z;
    const auto lim = max_dynamic_shared.find(kernel);
    const size_t smem_max = lim == max_dynamic_shared.end() ? 48 * 1024 : (size_t)lim->second;
    if (!grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 || !nt || nt > 1024 ||
        block.z > 64 || smem > smem_max) {
        emu_misuse("bad launch: grid %u %u %u, block %u %u %u, %zu bytes of shared memory",
                   grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
        set_error(cudaErrorInvalidConfiguration);
        return false;
    }
    CUstream_st *st = stream_of(s);
    if (st->capturing && st->invalidated) {
        set_error(cudaErrorStreamCaptureInvalidated);
        return false;
    }
    return true;
}

void emu_launch_queue(cudaStream_t s, std::function<void()> run, const char *name) {
    if (fault_pick(name)) {
        const std::string kernel = name;
        (void)emu_enqueue(s, [kernel] { enter_fault(kernel); }, "kernel");
        return;
    }
    /* EMU_STATS=2: a recording's launches counted by kernel (name: a string literal) */
    static const int by_name = [] {
        const char *v = getenv("EMU_STATS");
        return v && !strcmp(v, "2");
    }();
    (void)emu_enqueue(s, std::move(run), by_name ? name : "kernel");
}

/* ---------------------------------------------------------------- the C API */

extern "C" {

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoKernelImageForDevice:
        return "no kernel image is available for execution on the device";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not initiated in this stream";
    default: return "unrecognized error code";
    }
}

cudaError_t cudaGetLastError(void) {
    if (faulted) return cudaErrorIllegalAddress; /* sticky: not cleared */
    const cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) {
    return faulted ? cudaErrorIllegalAddress : last_error;
}

/* EMU_NO_GPU=1: the machine has no GPU (the backend's error path) */
cudaError_t cudaGetDeviceCount(int *n) {
    const char *v = getenv("EMU_NO_GPU");
    if (v && *v && strcmp(v, "0")) {
        *n = 0;
        return set_error(cudaErrorNoDevice);
    }
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidValue); }
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
    if (d != 0) return set_error(cudaErrorInvalidValue);
    if (a == cudaDevAttrMultiProcessorCount) {
        *v = emu_sms;
        return cudaSuccess;
    }
    if (a == cudaDevAttrMaxSharedMemoryPerBlockOptin) {
        *v = shared_optin();
        return cudaSuccess;
    }
    return set_error(cudaErrorInvalidValue);
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (d != 0) return set_error(cudaErrorInvalidValue);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "emulated GPU (CPU emulation of CUDA)");
    p->totalGlobalMem = memory_limit();
    p->major = no_kernel_image() ? 7 : 9; /* as the card EMU_NO_KERNEL_IMAGE stands for */
    p->minor = no_kernel_image() ? 5 : 0;
    p->multiProcessorCount = emu_sms;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    if (faulted) return fault_error();
    *total_b = memory_limit();
    *free_b = memory_limit() - device_bytes;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    if (faulted) return fault_error();
    if (emu_prohibited(nullptr, "cudaDeviceSynchronize")) return cudaErrorStreamCaptureUnsupported;
    emu_flush();
    return faulted ? fault_error() : cudaSuccess;
}

/* ---- memory */

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = nullptr;
    if (faulted) return fault_error();
    if (emu_prohibited(nullptr, "cudaMalloc")) return cudaErrorStreamCaptureUnsupported;
    if (bytes == 0) return cudaSuccess; /* as CUDA: a null pointer, no error */
    const size_t rounded = (bytes + 255) / 256 * 256;
    if (rounded > memory_limit() - device_bytes) return set_error(cudaErrorMemoryAllocation);
    float *b = emu_alloc(rounded / sizeof(float));
    /* fresh device memory is not zero: garbage (a NaN pattern) shows a missing initialisation */
    memset(b, 0xff, rounded);
    device_bytes += rounded;
    device_allocs[b] = rounded;
    *p = b;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (faulted) { /* the buffer is released (nothing queued can still use it); 700 as CUDA */
        auto it = device_allocs.find(p);
        if (it != device_allocs.end()) {
            device_bytes -= it->second;
            device_allocs.erase(it);
            emu_retire((float *)p);
        }
        return fault_error();
    }
    if (!p) return cudaSuccess;
    if (emu_prohibited(nullptr, "cudaFree")) return cudaErrorStreamCaptureUnsupported;
    auto it = device_allocs.find(p);
    if (it == device_allocs.end()) {
        emu_misuse("cudaFree of a pointer cudaMalloc did not return");
        return set_error(cudaErrorInvalidValue);
    }
    emu_flush(); /* cudaFree synchronises the device */
    device_bytes -= it->second;
    device_allocs.erase(it);
    emu_retire((float *)p);
    return faulted ? fault_error() : cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = nullptr;
    if (faulted) return fault_error();
    if (emu_prohibited(nullptr, "cudaMallocHost")) return cudaErrorStreamCaptureUnsupported;
    const size_t n = bytes ? bytes : 1;
    void *b = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    if (!b) return set_error(cudaErrorMemoryAllocation);
    pinned[(uintptr_t)b] = n;
    *p = b;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
    if (faulted) {
        auto it = pinned.find((uintptr_t)p);
        if (it != pinned.end()) {
            pinned.erase(it);
            free(p);
        }
        return fault_error();
    }
    if (!p) return cudaSuccess;
    if (emu_prohibited(nullptr, "cudaFreeHost")) return cudaErrorStreamCaptureUnsupported;
    auto it = pinned.find((uintptr_t)p);
    if (it == pinned.end()) {
        emu_misuse("cudaFreeHost of a pointer cudaMallocHost did not return");
        return set_error(cudaErrorInvalidValue);
    }
    emu_flush(); /* synchronises: a queued copy may still read it */
    pinned.erase(it);
    free(p);
    return faulted ? fault_error() : cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s) {
    if (faulted) return fault_error();
    if (!bytes) return cudaSuccess;
    if (!emu_device_range(p, bytes)) {
        emu_misuse("cudaMemsetAsync of %zu bytes outside device memory", bytes);
        return set_error(cudaErrorInvalidValue);
    }
    return set_error(emu_enqueue(s, [=] { memset(p, v, bytes); }, "cudaMemsetAsync"));
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind k,
                            cudaStream_t s) {
    if (faulted) return fault_error();
    if (!bytes) return cudaSuccess;
    const bool dev_dst = emu_device_range(dst, bytes), dev_src = emu_device_range(src, bytes);
    const bool host_dst = !emu_in_buffer(dst, 1) || emu_pinned(dst);
    const bool host_src = !emu_in_buffer(src, 1) || emu_pinned(src);
    bool ok = false;
    switch (k) {
    case cudaMemcpyHostToDevice: ok = dev_dst && host_src; break;
    case cudaMemcpyDeviceToHost: ok = host_dst && dev_src; break;
    case cudaMemcpyDeviceToDevice: ok = dev_dst && dev_src; break;
    default: break; /* the backend always names its direction */
    }
    if (!ok) {
        emu_misuse("cudaMemcpyAsync kind %d of %zu bytes: a pointer is not where the kind says, "
                   "or the range runs past its buffer",
                   (int)k, bytes);
        return set_error(cudaErrorInvalidValue);
    }
    CUstream_st *st = stream_of(s);
    if (k == cudaMemcpyHostToDevice && !emu_pinned(src)) {
        if (st->capturing) { /* a graph node would read the pageable buffer at each launch */
            emu_misuse("cudaMemcpyAsync from pageable host memory during a capture");
            return set_error(emu_prohibited(s, "a copy from pageable memory"));
        }
        /* the bytes are taken now (staged), the device write comes in order */
        auto staged = std::make_shared<std::vector<char>>((const char *)src,
                                                          (const char *)src + bytes);
        return set_error(emu_enqueue(
            s, [=] { memcpy(dst, staged->data(), bytes); }, "cudaMemcpyAsync H2D (pageable)"));
    }
    if (k == cudaMemcpyDeviceToHost && !emu_pinned(dst)) {
        if (st->capturing) {
            emu_misuse("cudaMemcpyAsync into pageable host memory during a capture");
            return set_error(emu_prohibited(s, "a copy into pageable memory"));
        }
        /* returns once the copy is done: everything queued before it first */
        emu_flush();
        if (faulted) return fault_error();
        memcpy(dst, src, bytes);
        return cudaSuccess;
    }
    return set_error(emu_enqueue(s, [=] { memcpy(dst, src, bytes); }, "cudaMemcpyAsync"));
}

/* ---- streams and graphs */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int) {
    *s = nullptr;
    if (faulted) return fault_error();
    *s = new CUstream_st;
    streams.push_back(*s);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    for (size_t i = 0; i < streams.size(); i++)
        if (streams[i] == s) {
            emu_flush();
            streams.erase(streams.begin() + (ptrdiff_t)i);
            delete s;
            return faulted ? fault_error() : cudaSuccess;
        }
    return set_error(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (faulted) return fault_error();
    if (stream_of(s)->capturing) return emu_prohibited(s, "cudaStreamSynchronize");
    if (emu_prohibited(nullptr, "cudaStreamSynchronize")) return cudaErrorStreamCaptureUnsupported;
    emu_flush();
    return faulted ? fault_error() : cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status) {
    const CUstream_st *st = stream_of(s);
    *status = !st->capturing   ? cudaStreamCaptureStatusNone
              : st->invalidated ? cudaStreamCaptureStatusInvalidated
                                : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    if (faulted) return fault_error();
    CUstream_st *st = stream_of(s);
    if (!s) {
        emu_misuse("capturing the legacy default stream");
        return set_error(cudaErrorStreamCaptureUnsupported);
    }
    if (st->capturing) return set_error(cudaErrorIllegalState);
    if (mode != cudaStreamCaptureModeThreadLocal && mode != cudaStreamCaptureModeGlobal) {
        emu_misuse("relaxed capture mode (not modelled)");
        return set_error(cudaErrorInvalidValue);
    }
    st->capturing = true;
    st->invalidated = false;
    st->captured.clear();
    st->counts.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    *g = nullptr;
    CUstream_st *st = stream_of(s);
    if (!st->capturing) return faulted ? fault_error() : set_error(cudaErrorIllegalState);
    st->capturing = false;
    std::vector<std::function<void()>> ops;
    ops.swap(st->captured);
    if (faulted) { /* the capture ends, without a graph */
        st->invalidated = false;
        st->counts.clear();
        return fault_error();
    }
    if (st->invalidated) {
        st->invalidated = false;
        return set_error(cudaErrorStreamCaptureInvalidated);
    }
    /* EMU_STATS=1: what each recording holds (how many launches and library calls a replayed
     * step costs the GPU); EMU_STATS=2 counts the launches by kernel */
    const char *stats = getenv("EMU_STATS");
    if (stats && *stats && strcmp(stats, "0")) {
        printf("emulated CUDA: a graph of %zu operations:", ops.size());
        for (const auto &kv : st->counts) printf(" %s %d,", kv.first.c_str(), kv.second);
        printf("\n");
    }
    st->counts.clear();
    *g = new CUgraph_st{std::move(ops)};
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long) {
    *e = nullptr;
    if (faulted) return fault_error();
    if (!g) return set_error(cudaErrorInvalidValue);
    *e = new CUgraphExec_st{std::make_shared<const std::vector<std::function<void()>>>(g->ops)};
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (faulted) return fault_error();
    if (!e) return set_error(cudaErrorInvalidValue);
    auto ops = e->ops; /* the exec may be destroyed before the launch runs, as on a GPU */
    return set_error(emu_enqueue(
        s,
        [ops] {
            for (const auto &op : *ops) {
                if (faulted) return; /* a node faulted: the rest does not run */
                op();
            }
        },
        "cudaGraphLaunch"));
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}

/* ---- profiler range (no profiler here) */

cudaError_t cudaProfilerStart(void) { return faulted ? fault_error() : cudaSuccess; }
cudaError_t cudaProfilerStop(void) { return faulted ? fault_error() : cudaSuccess; }

/* ---- events */

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = nullptr;
    if (faulted) return fault_error();
    *e = new CUevent_st;
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    emu_flush(); /* a queued record may still write it */
    delete e;
    return faulted ? fault_error() : cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (faulted) return fault_error();
    return set_error(emu_enqueue(
        s,
        [e] {
            e->ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
            e->recorded = true;
        },
        "cudaEventRecord"));
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
    if (faulted) return fault_error();
    if (emu_prohibited(nullptr, "cudaEventSynchronize")) return cudaErrorStreamCaptureUnsupported;
    emu_flush();
    return faulted ? fault_error() : cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (faulted) return fault_error();
    if (!a->recorded || !b->recorded) return set_error(cudaErrorInvalidResourceHandle);
    *ms = (float)(b->ms - a->ms);
    return cudaSuccess;
}

} /* extern "C" */
