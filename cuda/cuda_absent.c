/* Built when the CUDA backend is not: asking for it, or for anything of include/diffusion/cuda.h,
 * is a clear error, not a crash. */
#include "diffusion/backend.h"
#include "diffusion/cuda.h"
#include "diffusion/error.h"

#define NO_CUDA                                                                                   \
    "this build of diffusion has no CUDA backend (configure with nvcc and cuDNN present, "        \
    "-DDIFFUSION_CUDA=ON)"

const dd_backend *dd_cuda_backend(void) {
    dd_error(NO_CUDA);
    return NULL;
}

int dd_cuda_gpu_absent(void) { return 1; }

int dd_cuda_device_info(dd_cuda_info *info) {
    (void)info;
    return dd_error(NO_CUDA);
}

int dd_cuda_set_tf32(int on) {
    (void)on;
    return dd_error(NO_CUDA);
}

int dd_cuda_tf32(void) {
    dd_error(NO_CUDA);
    return -1;
}

int dd_cuda_capture_begin(void) { return dd_error(NO_CUDA); }

int dd_cuda_capturing(void) { return 0; }

int dd_cuda_capture_end(dd_cuda_graph **graph) {
    if (graph) *graph = NULL;
    return dd_error(NO_CUDA);
}

int dd_cuda_graph_replay(dd_cuda_graph *graph) {
    (void)graph;
    return dd_error(NO_CUDA);
}

void dd_cuda_graph_destroy(dd_cuda_graph *graph) { (void)graph; }

int dd_cuda_profiler_range(int on) {
    (void)on;
    return dd_error(NO_CUDA);
}
