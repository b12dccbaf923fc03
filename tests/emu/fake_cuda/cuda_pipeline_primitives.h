/* Stand-in for CUDA's cuda_pipeline_primitives.h in the CPU emulation (fake_cuda/cuda_runtime.h):
 * asynchronous copies from global to shared memory. emu_runtime.cpp models their asynchrony:
 * a copy reads its source when issued (checked to lie inside a buffer unless it is all zero
 * fill) and lands in shared memory either at once or only when __pipeline_wait_prior releases
 * its group (drawn per copy from a seeded generator), so a read before the wait, or a copy into
 * a stage that another thread still reads, shows as wrong results. A thread that ends with
 * copies never waited for fails the emulation. */
#ifndef DD_EMU_CUDA_PIPELINE_PRIMITIVES_H
#define DD_EMU_CUDA_PIPELINE_PRIMITIVES_H

#include <cstddef>

void emu_cp_async(void *dst, const void *src, size_t size, size_t zfill);
void emu_cp_commit();
void emu_cp_wait(size_t prior);

inline void __pipeline_memcpy_async(void *dst_shared, const void *src_global, size_t size_and_align,
                                    size_t zfill = 0) {
    emu_cp_async(dst_shared, src_global, size_and_align, zfill);
}
inline void __pipeline_commit() { emu_cp_commit(); }
inline void __pipeline_wait_prior(size_t prior) { emu_cp_wait(prior); }

#endif
