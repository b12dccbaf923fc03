/* CPU emulation of CUDA kernels: every thread a ucontext fiber, __syncthreads() the switch
 * point, the threads of a block resumed in a seeded shuffled order at every phase (so a missing
 * barrier or a shared-memory race shows as wrong results), guard zones around every buffer.
 * Deterministic: one fixed seed for the thread order. */
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <ucontext.h>
#include <vector>

#include "emu.h"

dim3 emu_blockIdx, emu_blockDim, emu_gridDim;
const dim3 *emu_threadIdx_p;
int emu_sms = 132;

static int failures;

void emu_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failures++;
}

int emu_failures() { return failures; }

[[noreturn]] static void fatal(const char *what) {
    printf("FAIL (fatal) %s\n", what);
    fflush(stdout);
    exit(2);
}

void emu_unsupported(const char *what) { fatal(what); }

/* ---------------------------------------------------------------- buffers */

namespace {
const uint32_t SENTINEL = 0x7fa5a5a5u; /* a NaN that no kernel computes */
struct Buf {
    float *base;
    size_t n, guard; /* floats: the buffer, each guard zone */
};

/* as long as the buffer (up to 64k floats), so that a write one image or one channel plane
 * past either end lands in the guard zone rather than in the heap */
size_t guard_of(size_t n) { return (n < ((size_t)1 << 16) ? n : (size_t)1 << 16) + 256; }
std::vector<Buf> bufs;

bool is_sentinel(const float *p) {
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u == SENTINEL;
}
} /* namespace */

float *emu_alloc(size_t n) {
    const size_t guard = guard_of(n), total = n + 2 * guard;
    /* the buffer itself 256-byte aligned, as cudaMalloc's */
    const size_t lead = (guard * sizeof(float) + 255) / 256 * 256;
    const size_t bytes = (lead + (n + guard) * sizeof(float) + 255) / 256 * 256;
    char *raw = (char *)aligned_alloc(256, bytes);
    if (!raw) fatal("out of memory");
    float *p = (float *)(raw + lead) - guard;
    for (size_t i = 0; i < total; i++) memcpy(&p[i], &SENTINEL, sizeof SENTINEL);
    bufs.push_back({p + guard, n, guard});
    return p + guard;
}

void emu_free(float *p) {
    for (size_t i = 0; i < bufs.size(); i++)
        if (bufs[i].base == p) {
            const size_t lead = (bufs[i].guard * sizeof(float) + 255) / 256 * 256;
            bufs.erase(bufs.begin() + (ptrdiff_t)i);
            free((char *)p - lead);
            return;
        }
    fatal("emu_free of an unknown pointer");
}

void emu_check_guards(const char *what) {
    for (const Buf &b : bufs)
        for (size_t i = 0; i < b.guard; i++)
            if (!is_sentinel(&b.base[-1 - (ptrdiff_t)i]) || !is_sentinel(&b.base[b.n + i])) {
                emu_fail("%s: a write outside a buffer (into its guard zone)", what);
                return;
            }
}

float emu_ldg(const float *p) {
    for (const Buf &b : bufs)
        if (p >= b.base && p < b.base + b.n) return *p;
    fatal("__ldg outside every buffer");
}

/* ---------------------------------------------------------------- fibers */

namespace {
enum State { RUNNING, AT_BARRIER, DONE };
struct Fiber {
    ucontext_t ctx;
    char *stack;
    dim3 tid;
    State state;
    long barriers;
};
const size_t STACK = 256 << 10;
ucontext_t scheduler;
std::vector<Fiber> fibers;
int current;
const std::function<void()> *kernel_body;
EmuRng order_rng(1);

void fiber_entry() {
    (*kernel_body)();
    fibers[current].state = DONE;
    swapcontext(&fibers[current].ctx, &scheduler);
}
/* kept out of emu_run_grid: getcontext returns twice, which would make GCC assume that every
 * local there may be clobbered */
__attribute__((noinline)) void start_fiber(Fiber &f, dim3 tid) {
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK;
    f.ctx.uc_link = NULL;
    makecontext(&f.ctx, fiber_entry, 0);
    f.tid = tid;
    f.state = RUNNING;
    f.barriers = 0;
}
} /* namespace */

void emu_syncthreads() {
    Fiber &f = fibers[current];
    f.barriers++;
    f.state = AT_BARRIER;
    swapcontext(&f.ctx, &scheduler);
}

void emu_run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body) {
    const unsigned long nt = (unsigned long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 || !nt || nt > 1024 ||
        smem > 48 * 1024) {
        emu_fail("bad launch: grid %u %u %u, block %u %u %u, %zu bytes of shared memory", grid.x,
                 grid.y, grid.z, block.x, block.y, block.z, smem);
        return;
    }
    while (fibers.size() < nt) {
        fibers.emplace_back();
        fibers.back().stack = (char *)malloc(STACK);
        if (!fibers.back().stack) fatal("out of memory");
    }
    kernel_body = &body;
    emu_gridDim = grid;
    emu_blockDim = block;
    std::vector<int> order(nt);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                emu_blockIdx = dim3(bx, by, bz);
                for (unsigned t = 0; t < nt; t++) {
                    start_fiber(fibers[t],
                                dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y)));
                    order[t] = (int)t;
                }
                for (;;) { /* one phase: every live thread runs to its next barrier or its end */
                    for (size_t i = nt - 1; i > 0; i--) {
                        const size_t j = (size_t)(order_rng.next() % (i + 1));
                        const int tmp = order[i];
                        order[i] = order[j];
                        order[j] = tmp;
                    }
                    for (int t : order) {
                        if (fibers[t].state == DONE) continue;
                        current = t;
                        emu_threadIdx_p = &fibers[t].tid;
                        fibers[t].state = RUNNING;
                        swapcontext(&scheduler, &fibers[t].ctx);
                    }
                    unsigned done = 0;
                    bool same = true;
                    for (unsigned t = 0; t < nt; t++) {
                        if (fibers[t].state == DONE)
                            done++;
                        else if (fibers[t].barriers != fibers[order[0]].barriers)
                            same = false;
                    }
                    if (done == nt) break;
                    if (done || !same)
                        fatal("divergent __syncthreads (threads at different barriers or ended)");
                }
            }
}
