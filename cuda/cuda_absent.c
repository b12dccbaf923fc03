/* Built when the CUDA backend is not: asking for it is a clear error, not a crash. */
#include "diffusion/backend.h"
#include "diffusion/error.h"

const dd_backend *dd_cuda_backend(void) {
    dd_error("this build of diffusion has no CUDA backend (configure with nvcc and cuDNN present, "
             "-DDIFFUSION_CUDA=ON)");
    return NULL;
}
