/* The CUDA backend's table and context: device selection, the one stream, memory, the TF32
 * switch, CUDA-graph capture (include/diffusion/cuda.h). The ops live in cuda_kernels.cu
 * (handwritten kernels) and cuda_dnn.c (cuDNN and cuBLAS). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_profiler_api.h>
#include <cudnn.h>

#include "cuda_internal.h"
#include "diffusion/cuda.h"

cudaStream_t dd_cuda_stream;
int dd_cuda_tf32_on = 1;

/* 0: not tried yet, 1: ready, -1: failed (init_msg says why; every later call repeats it) */
static int init_state;
static char init_msg[512];

const char *dd_cuda_base(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Set when the GPU faulted where the backend knew what was running (dd_cuda_note_fault): the
 * context is lost, and the calls that fail afterwards are rarely the one that caused it. */
static char fault_note[768];

void dd_cuda_note_fault(const char *what) {
    if (!fault_note[0]) snprintf(fault_note, sizeof fault_note, "%s", what); /* the first one */
}

int dd_cuda_fail(const char *file, int line, const char *call, cudaError_t err) {
    if (fault_note[0])
        return dd_error("%s:%d: %s: %s (the GPU faulted earlier: %s)", dd_cuda_base(file), line,
                        call, cudaGetErrorString(err), fault_note);
    return dd_error("%s:%d: %s: %s", dd_cuda_base(file), line, call, cudaGetErrorString(err));
}

/* An invalidated capture (a forbidden call broke it) counts too: the stream stays in capture
 * mode until dd_cuda_capture_end ends it, and nothing may search or allocate meanwhile. */
int dd_cuda_capturing(void) {
    if (init_state != 1) return 0;
    enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(dd_cuda_stream, &st) != cudaSuccess) return 0;
    return st != cudaStreamCaptureStatusNone;
}

static int refuse_in_capture(const char *what) {
    if (!dd_cuda_capturing()) return 0;
    return dd_error("cuda backend: %s is not allowed during a CUDA graph capture", what);
}

/* ---------------------------------------------------------------- memory */

static int cu_alloc(void **p, size_t bytes) {
    *p = NULL;
    DD_TRY(refuse_in_capture("alloc"));
    const size_t n = bytes ? bytes : 1; /* a valid, distinct pointer even for 0 bytes */
    cudaError_t e = cudaMalloc(p, n);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* out of memory is not sticky: clear it */
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        *p = NULL;
        return dd_error_size("cuda backend: out of GPU memory allocating %zu bytes (%.1f MiB); "
                        "%.1f MiB free of %.1f MiB",
                        bytes, (double)bytes / 1048576.0, (double)free_b / 1048576.0,
                        (double)total_b / 1048576.0);
    }
    if (e != cudaSuccess) {
        *p = NULL;
        return dd_cuda_fail(__FILE__, __LINE__, "cudaMalloc", e);
    }
    /* on the backend's stream, so every later op on it sees the zeros */
    e = cudaMemsetAsync(*p, 0, n, dd_cuda_stream);
    if (e != cudaSuccess) {
        cudaFree(*p);
        *p = NULL;
        return dd_cuda_fail(__FILE__, __LINE__, "cudaMemsetAsync", e);
    }
    return 0;
}

static void cu_free(void *p) {
    if (p) (void)cudaFree(p);
}

static int cu_zero(void *p, size_t bytes) {
    if (!bytes) return 0;
    DD_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, dd_cuda_stream));
    return 0;
}

/* Host transfers wait for the copy: the caller may reuse or free its host buffer at once. */
static int cu_to_device(void *dst, const void *src, size_t bytes) {
    if (!bytes) return 0;
    DD_TRY(refuse_in_capture("to_device"));
    DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, dd_cuda_stream));
    DD_CUDA_CHECK(cudaStreamSynchronize(dd_cuda_stream));
    return 0;
}

static int cu_to_host(void *dst, const void *src, size_t bytes) {
    if (!bytes) return 0;
    DD_TRY(refuse_in_capture("to_host"));
    DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, dd_cuda_stream));
    DD_CUDA_CHECK(cudaStreamSynchronize(dd_cuda_stream));
    return 0;
}

static int cu_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes) return 0;
    DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, dd_cuda_stream));
    return 0;
}

/* Page-locked host memory: the copy engine reads it directly, so an upload from it can be
 * queued without waiting (to_device_async). */
static int cu_host_alloc(void **p, size_t bytes) {
    *p = NULL;
    DD_TRY(refuse_in_capture("host_alloc"));
    cudaError_t e = cudaMallocHost(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        return dd_error("cuda backend: out of page-locked host memory allocating %zu bytes (%s)",
                        bytes, cudaGetErrorString(e));
    }
    return 0;
}

static void cu_host_free(void *p) {
    if (p) (void)cudaFreeHost(p);
}

static int cu_to_device_async(void *dst, const void *src, size_t bytes) {
    if (!bytes) return 0;
    /* in a capture the copy would become a graph node that re-reads src at every replay */
    DD_TRY(refuse_in_capture("to_device_async"));
    DD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, dd_cuda_stream));
    return 0;
}

/* Also where errors of earlier asynchronous kernels surface. */
static int cu_synchronize(void) {
    DD_TRY(refuse_in_capture("synchronize"));
    DD_CUDA_CHECK(cudaStreamSynchronize(dd_cuda_stream));
    return 0;
}

/* ---------------------------------------------------------------- the table */

static const dd_backend cuda_backend = {
    .name = "cuda",

    .alloc = cu_alloc,
    .free = cu_free,
    .zero = cu_zero,
    .to_device = cu_to_device,
    .to_host = cu_to_host,
    .copy = cu_copy,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .to_device_async = cu_to_device_async,
    .synchronize = cu_synchronize,

    .conv2d_workspace = dd_cuda_conv2d_workspace,
    .conv2d_forward = dd_cuda_conv2d_forward,
    .conv2d_backward = dd_cuda_conv2d_backward,

    .dense_forward = dd_cuda_dense_forward,
    .dense_backward = dd_cuda_dense_backward,
    .dense_group_forward = dd_cuda_dense_group_forward,
    .dense_group_act_forward = dd_cuda_dense_group_act_forward,
    .dense_group_backward = dd_cuda_dense_group_backward,

    .group_norm_forward = dd_cuda_group_norm_forward,
    .group_norm_workspace = dd_cuda_group_norm_workspace,
    .group_norm_prepare = dd_cuda_group_norm_prepare,
    .group_norm_backward = dd_cuda_group_norm_backward,

    .act_forward = dd_cuda_act_forward,
    .act_backward = dd_cuda_act_backward,
    .add_forward = dd_cuda_add_forward,
    .add_backward = dd_cuda_add_backward,
    .concat_forward = dd_cuda_concat_forward,
    .concat_backward = dd_cuda_concat_backward,
    .upsample2x_forward = dd_cuda_upsample2x_forward,
    .upsample2x_backward = dd_cuda_upsample2x_backward,
    .maxpool2x2_forward = dd_cuda_maxpool2x2_forward,
    .maxpool2x2_backward = dd_cuda_maxpool2x2_backward,

    .attention_workspace = dd_cuda_attention_workspace,
    .attention_forward = dd_cuda_attention_forward,
    .attention_backward = dd_cuda_attention_backward,

    .embedding_forward = dd_cuda_embedding_forward,
    .embedding_backward = dd_cuda_embedding_backward,

    .mse_forward = dd_cuda_mse_forward,
    .mse_backward = dd_cuda_mse_backward,
    .xent_forward = dd_cuda_xent_forward,
    .xent_backward = dd_cuda_xent_backward,

    .adam_update = dd_cuda_adam_update,
    .ema_update = dd_cuda_ema_update,
    .counter_add = dd_cuda_counter_add,
    .sampler_advance = dd_cuda_sampler_advance,

    .normal = dd_cuda_normal,
    .train_draw = dd_cuda_train_draw,
    .q_sample = dd_cuda_q_sample,
    .sampler_step = dd_cuda_sampler_step,
};

/* the architectures CMake built the kernels for, as named in messages */
#ifndef DD_CUDA_ARCHS
#define DD_CUDA_ARCHS "(not recorded)"
#endif

/* 1 when cuda_init found no GPU (or no driver): dd_cuda_gpu_absent */
static int gpu_absent;

static int cuda_init(void) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    gpu_absent = e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
                 (e == cudaSuccess && count == 0);
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice)
        return dd_error("no usable CUDA GPU: no NVIDIA driver or GPU on this machine, or a driver "
                        "older than this CUDA runtime (cudaGetDeviceCount: %s)",
                        cudaGetErrorString(e));
    if (e != cudaSuccess)
        return dd_error("no usable CUDA GPU (cudaGetDeviceCount: %s)", cudaGetErrorString(e));
    if (count == 0) return dd_error("no CUDA GPU found (cudaGetDeviceCount returned 0)");
    /* device 0 of those visible: CUDA_VISIBLE_DEVICES picks another */
    DD_CUDA_CHECK(cudaSetDevice(0));
    e = dd_cuda_kernel_image();
    if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction) {
        struct cudaDeviceProp prop;
        DD_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        return dd_error("this GPU, %s (compute capability %d.%d), cannot run this build of diffusion, "
                        "which has code for CUDA architectures %s only: build it on a machine "
                        "with this GPU (the build then targets the GPU's own architecture), or "
                        "name it: CUDAARCHS=%d%d bash scripts/setup.sh, or cmake "
                        "-DCMAKE_CUDA_ARCHITECTURES=%d%d (%s)",
                        prop.name, prop.major, prop.minor, DD_CUDA_ARCHS, prop.major, prop.minor,
                        prop.major, prop.minor, cudaGetErrorString(e));
    }
    if (e != cudaSuccess) return dd_cuda_fail(__FILE__, __LINE__, "cudaFuncGetAttributes", e);
    const char *tf32 = getenv("DIFFUSION_TF32");
    dd_cuda_tf32_on = !(tf32 && !strcmp(tf32, "0"));
    DD_CUDA_CHECK(cudaStreamCreateWithFlags(&dd_cuda_stream, cudaStreamNonBlocking));
    if (dd_cuda_dnn_init()) return dd_error_prefix("initialising cuDNN and cuBLAS");
    return 0;
}

/* The table as used: cuda_backend less what DIFFUSION_CUDA_OFF turns off, a comma-separated
 * list of optimisations to leave out, so that one run can say what each is worth (bench/README.md)
 * or step around one that misbehaves on some card:
 *   dense-group   the grouped dense calls (dense_group_forward/backward, and so dense-act too)
 *   dense-act     activations folded into the grouped dense reads (dense_group_act_forward)
 *   direct-conv   the direct few-channel convolutions (dc1, dc4, dc8) as autotuner candidates
 *   gn-tune       the group norm forward's timed launch configurations (as DIFFUSION_GN=fixed) */
static dd_backend cuda_backend_used;

static int read_off_list(void) {
    cuda_backend_used = cuda_backend;
    const char *gn = getenv("DIFFUSION_GN"); /* checked here, so that a bad value fails at once */
    if (gn && gn[0]) DD_TRY(dd_cuda_gn_set_policy(gn));
    const char *env = getenv("DIFFUSION_CUDA_OFF");
    if (!env) return 0;
    for (const char *p = env; *p;) {
        const size_t len = strcspn(p, ", ");
        char tok[32];
        snprintf(tok, sizeof tok, "%.*s", (int)(len < sizeof tok ? len : sizeof tok - 1), p);
        p += len;
        while (*p == ',' || *p == ' ') p++;
        if (!len) continue;
        if (!strcmp(tok, "dense-group")) {
            cuda_backend_used.dense_group_forward = NULL;
            cuda_backend_used.dense_group_backward = NULL;
            cuda_backend_used.dense_group_act_forward = NULL;
        } else if (!strcmp(tok, "dense-act")) {
            cuda_backend_used.dense_group_act_forward = NULL;
        } else if (!strcmp(tok, "direct-conv")) {
            (void)dd_conv_own_set_direct(0);
        } else if (!strcmp(tok, "gn-tune")) {
            DD_TRY(dd_cuda_gn_set_policy("fixed"));
        } else {
            return dd_error("DIFFUSION_CUDA_OFF: unknown '%s' (expected a comma-separated list of "
                            "dense-group, dense-act, direct-conv, gn-tune)",
                            tok);
        }
    }
    return 0;
}

const dd_backend *dd_cuda_backend(void) {
    if (init_state == 0) {
        if (read_off_list() == 0 && cuda_init() == 0) {
            init_state = 1;
        } else {
            init_state = -1;
            snprintf(init_msg, sizeof init_msg, "cuda backend unavailable: %s",
                     dd_error_message());
        }
    }
    if (init_state < 0) {
        dd_error("%s", init_msg);
        return NULL;
    }
    return &cuda_backend_used;
}

int dd_cuda_gpu_absent(void) { return dd_cuda_backend() ? 0 : gpu_absent; }

/* ---------------------------------------------------------------- include/diffusion/cuda.h */

int dd_cuda_device_info(dd_cuda_info *info) {
    if (!dd_cuda_backend()) return -1;
    memset(info, 0, sizeof *info);
    int dev = 0;
    struct cudaDeviceProp prop;
    DD_CUDA_CHECK(cudaGetDevice(&dev));
    DD_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->cc_major = prop.major;
    info->cc_minor = prop.minor;
    info->sm_count = prop.multiProcessorCount;
    DD_CUDA_CHECK(cudaMemGetInfo(&info->free_bytes, &info->total_bytes));
    DD_CUDA_CHECK(cudaRuntimeGetVersion(&info->runtime_version));
    DD_CUDA_CHECK(cudaDriverGetVersion(&info->driver_version));
    info->cudnn_version = cudnnGetVersion();
    return 0;
}

int dd_cuda_set_tf32(int on) {
    if (!dd_cuda_backend()) return -1;
    DD_TRY(refuse_in_capture("switching TF32"));
    dd_cuda_tf32_on = on ? 1 : 0;
    return dd_cuda_dnn_apply_math();
}

int dd_cuda_tf32(void) { return dd_cuda_backend() ? dd_cuda_tf32_on : -1; }

struct dd_cuda_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

int dd_cuda_capture_begin(void) {
    if (!dd_cuda_backend()) return -1;
    if (dd_cuda_capturing()) return dd_error("dd_cuda_capture_begin: a capture is already running");
    /* Thread-local mode: a forbidden call (cudaMalloc, a synchronisation) from this thread fails
     * and invalidates the capture instead of silently escaping it. */
    DD_CUDA_CHECK(cudaStreamBeginCapture(dd_cuda_stream, cudaStreamCaptureModeThreadLocal));
    return 0;
}

int dd_cuda_capture_end(dd_cuda_graph **out) {
    if (out) *out = NULL;
    if (!dd_cuda_backend()) return -1;
    if (!dd_cuda_capturing()) return dd_error("dd_cuda_capture_end: no capture is running");
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(dd_cuda_stream, &g);
    if (e != cudaSuccess) {
        if (g) cudaGraphDestroy(g);
        (void)cudaGetLastError(); /* the capture is over; its failure must not fail the next op */
        return dd_error("CUDA graph capture failed (%s): an operation inside it failed or is not "
                        "allowed while capturing",
                        cudaGetErrorString(e));
    }
    if (!out) {
        DD_CUDA_CHECK(cudaGraphDestroy(g));
        return 0;
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, g, 0);
    if (e != cudaSuccess) {
        cudaGraphDestroy(g);
        return dd_cuda_fail(__FILE__, __LINE__, "cudaGraphInstantiate", e);
    }
    dd_cuda_graph *r = malloc(sizeof *r);
    if (!r) {
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(g);
        return dd_error("dd_cuda_capture_end: out of host memory");
    }
    r->graph = g;
    r->exec = exec;
    *out = r;
    return 0;
}

int dd_cuda_graph_replay(dd_cuda_graph *g) {
    if (!g) return dd_error("dd_cuda_graph_replay: no graph");
    DD_CUDA_CHECK(cudaGraphLaunch(g->exec, dd_cuda_stream));
    return 0;
}

void dd_cuda_graph_destroy(dd_cuda_graph *g) {
    if (!g) return;
    cudaGraphExecDestroy(g->exec);
    cudaGraphDestroy(g->graph);
    free(g);
}

int dd_cuda_profiler_range(int on) {
    if (!dd_cuda_backend()) return -1;
    if (on) DD_CUDA_CHECK(cudaProfilerStart());
    else DD_CUDA_CHECK(cudaProfilerStop());
    return 0;
}
