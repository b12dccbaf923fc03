/* The CPU emulator's test-side interface (tests/emu/emu_runtime.cpp): "device" buffers with
 * guard zones, failure accounting, a seeded generator. See fake_cuda/cuda_runtime.h. */
#ifndef DD_EMU_H
#define DD_EMU_H

#include <cstddef>
#include <cstdint>

/* A buffer of n floats between two guard zones of a sentinel value; __ldg outside every live
 * buffer fails the test, and emu_check_guards() reports any write into a guard zone. */
float *emu_alloc(size_t n);
void emu_free(float *p);
/* as emu_free, but the memory is kept, refilled with the sentinel and no longer a buffer: a stale
 * pointer reads NaN instead of a newer buffer's data (the emulated cudaFree) */
void emu_retire(float *p);
void emu_check_guards(const char *what);
/* true when [p, p + bytes) lies inside one live buffer */
bool emu_in_buffer(const void *p, size_t bytes);
/* true when p is the start of a live buffer */
bool emu_is_buffer_start(const void *p);

/* printf-style: prints "FAIL ..." and counts a failure */
void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int emu_failures();

/* xorshift64*: the same sequence everywhere (the standard distributions are not) */
struct EmuRng {
    uint64_t s;
    explicit EmuRng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
    uint64_t next() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 0x2545f4914f6cdd1dull;
    }
    float uniform() { return (float)(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; } /* [-1, 1) */
};

#endif
