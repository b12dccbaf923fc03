/* The emulator's cuda_profiler_api.h: the profiler range calls (no profiler here: they succeed
 * and do nothing). */
#ifndef DD_EMU_CUDA_PROFILER_API_H
#define DD_EMU_CUDA_PROFILER_API_H
#include "cuda_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif
cudaError_t cudaProfilerStart(void);
cudaError_t cudaProfilerStop(void);
#ifdef __cplusplus
}
#endif
#endif
