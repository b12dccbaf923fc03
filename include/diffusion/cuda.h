/* CUDA-only API: device information, the TF32 switch, and CUDA-graph capture and replay of a
 * sequence of backend calls. Declared in every build; without CUDA each function fails with a
 * clear message (cuda/cuda_absent.c).
 *
 * The CUDA backend runs everything on one non-blocking stream (set on its cuDNN and cuBLAS
 * handles). Capture records the backend calls made between dd_cuda_capture_begin and
 * dd_cuda_capture_end on that stream into a graph; replaying it relaunches the same kernels with
 * the same arguments and pointers, for a fraction of the host time (the legacy cuDNN calls cost
 * tens of microseconds each on the host: ../shared/DEVICE.md).
 *
 * Rules for a captured sequence:
 * - Choose and allocate before capture: call conv2d_workspace for every convolution shape (the
 *   graph's memory plan does) with the TF32 setting the replay will use, allocate every buffer,
 *   and run the sequence once uncaptured (this loads kernels lazily loaded by CUDA, cuDNN and
 *   cuBLAS). Inside a capture, alloc, to_device, to_host and synchronize fail, and a convolution
 *   shape not prepared is an error naming it.
 * - A replay reuses every scalar argument as captured. So everything that changes from step to
 *   step lives in backend memory: the step counter that Adam, the EMA warm-up, the training
 *   draws and the sampler read (backend.h), the time steps, labels and inputs. The host writes
 *   the inputs before a replay (to_device, outside the capture) and reads results after it.
 *   dd_replay (include/diffusion/replay.h) does the record-once, replay-many bookkeeping.
 * - If a call fails during capture, still call dd_cuda_capture_end (it ends the capture, returns
 *   -1 and leaves *graph NULL). */
#ifndef DIFFUSION_CUDA_H
#define DIFFUSION_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char name[256];      /* e.g. "NVIDIA H100 80GB HBM3" */
    int cc_major, cc_minor; /* compute capability */
    int sm_count;
    size_t total_bytes, free_bytes; /* device memory */
    int runtime_version;  /* e.g. 13000 */
    int driver_version;
    size_t cudnn_version; /* e.g. 91400 */
} dd_cuda_info;

/* Whether the CUDA backend is unavailable for want of a GPU: 1 when this build has no CUDA
 * backend or the machine shows no GPU (no device, or no driver that fits the CUDA runtime), 0
 * when the backend works or when a GPU is there but cannot be used (dd_cuda_backend's message
 * says why: a build without code for it, cuDNN that cannot load, a bad setting). Initialises the
 * backend if needed; leaves the error message alone when it works. */
int dd_cuda_gpu_absent(void);

/* Information on the backend's device (initialising the backend if needed); 0 or -1. */
int dd_cuda_device_info(dd_cuda_info *info);

/* TF32 tensor-core math for cuDNN convolutions and cuBLAS products: on by default, off when the
 * environment has DIFFUSION_TF32=0 at start. Switching is allowed between captures, not during
 * one; convolution algorithms are searched per mode (the first call in a new mode searches). */
int dd_cuda_set_tf32(int on);
int dd_cuda_tf32(void); /* 1 on, 0 off, -1 no CUDA backend */

typedef struct dd_cuda_graph dd_cuda_graph;

int dd_cuda_capture_begin(void);
/* 1 while a capture is running on the backend's stream, else 0 (also without CUDA). */
int dd_cuda_capturing(void);
/* Ends the capture. graph NULL: discard what was captured. On success *graph is ready to
 * replay; on failure (a call failed while capturing, or instantiation failed) -1, *graph NULL. */
int dd_cuda_capture_end(dd_cuda_graph **graph);
/* Launches the graph on the backend's stream (asynchronous: synchronize to wait for it). */
int dd_cuda_graph_replay(dd_cuda_graph *graph);
void dd_cuda_graph_destroy(dd_cuda_graph *graph);

/* Starts (on = 1) or stops (on = 0) a profiler's collection (cudaProfilerStart/Stop), for
 * `ncu --profile-from-start off`: only the kernels launched in between are profiled. */
int dd_cuda_profiler_range(int on);

#ifdef __cplusplus
}
#endif
#endif
