/* The emulated device's streams, memory and capture (tests/emu/emu_api.cpp), shared by the fake
 * runtime, cuBLAS (emu_blas.cpp) and cuDNN (emu_dnn.cpp). C++ only.
 *
 * Work model: every asynchronous call (a kernel launch, cudaMemcpyAsync, cudaMemsetAsync, a
 * cuBLAS or cuDNN call) becomes an operation queued with emu_enqueue(). In deferred mode (the
 * backend emulation: emu_defer = true) the queue runs only at a synchronisation point
 * (cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize, cudaFree, a copy into
 * pageable host memory), as on a GPU, so a host that reads a result too early or changes an input
 * before its queued use sees the wrong data. Otherwise (the kernel tests) an operation runs at once.
 * On a stream being captured, an operation goes into the capture instead, and runs only when the
 * instantiated graph is launched. An operation must therefore capture everything it reads from the
 * host BY VALUE at enqueue time (scalars, descriptors), exactly what the real libraries copy at
 * call time, and read device memory only when it runs. */
#ifndef DD_EMU_STREAM_H
#define DD_EMU_STREAM_H

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

extern bool emu_defer;

/* Queues op on stream s (NULL: the legacy default stream; there is one in-order queue for all
 * streams, as the backend uses one stream). `what` names it in messages. Returns cudaSuccess, or
 * cudaErrorStreamCaptureInvalidated when s's capture was invalidated by a forbidden call (the op
 * is dropped; as on a GPU, every use of the stream fails until the capture is ended), or
 * cudaErrorIllegalAddress after a device fault (EMU_FAULT_KERNEL in emu_api.cpp: the op is
 * dropped, and so is everything still queued when the fault runs): a fake library then returns
 * its own execution-failed status (CUBLAS_STATUS_EXECUTION_FAILED,
 * CUDNN_STATUS_EXECUTION_FAILED). */
cudaError_t emu_enqueue(cudaStream_t s, std::function<void()> op, const char *what);

/* Runs everything queued (nothing while s... is capturing: captured work is not queued). */
void emu_flush();

/* true while s is being captured (cudaStreamBeginCapture .. cudaStreamEndCapture) */
bool emu_capturing(cudaStream_t s);

/* A call that real CUDA refuses while `s` (or, for calls without a stream, any stream of this
 * thread in thread-local mode) is being captured: when one is, prints what, invalidates the
 * capture (cudaStreamEndCapture will fail) and returns cudaErrorStreamCaptureUnsupported;
 * otherwise returns cudaSuccess. s NULL: any capture counts. */
cudaError_t emu_prohibited(cudaStream_t s, const char *what);

/* true when [p, p + bytes) lies inside one live cudaMalloc buffer (device memory) */
bool emu_device_range(const void *p, size_t bytes);
/* true when p lies inside a live cudaMallocHost buffer (page-locked host memory) */
bool emu_pinned(const void *p);

/* Records a failed check of the emulation (prints "FAIL what" and counts it; emu_failures() in
 * emu.h): for misuse that a real library would reject with an error code as well, the fakes
 * return that code AND call this, so that a test sees the misuse even where the caller ignores
 * the code. */
void emu_misuse(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
