/* CPU emulation of CUDA kernels: every thread a fiber (its own stack), __syncthreads() and the warp
 * shuffles the switch points, the runnable threads of a block resumed in a seeded shuffled order
 * at every round (so a missing barrier or a shared-memory race shows as wrong results), guard
 * zones around every buffer. A shuffle waits for the 32 lanes of its warp only; a barrier for
 * the whole block. Asynchronous copies to shared memory (fake_cuda/cuda_pipeline_primitives.h)
 * land at once or only at their wait, drawn per copy. Deterministic: fixed seeds. */
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <unordered_map>
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
/* live buffers by base address (the lookups of __ldg and the fake libraries are logarithmic) */
std::map<uintptr_t, Buf> bufs;
/* freed buffers are kept, refilled with the sentinel and out of `bufs`, so that a later use of
 * a stale pointer reads NaN (or fails an __ldg check) instead of someone else's data */
std::vector<float *> retired;

bool is_sentinel(const float *p) {
    uint32_t u;
    memcpy(&u, p, sizeof u);
    return u == SENTINEL;
}
size_t lead_of(size_t guard) { return (guard * sizeof(float) + 255) / 256 * 256; }

const Buf *find(const void *p) {
    auto it = bufs.upper_bound((uintptr_t)p);
    if (it == bufs.begin()) return nullptr;
    --it;
    const Buf &b = it->second;
    /* one past the end counts too (an empty range there) */
    return (uintptr_t)p <= (uintptr_t)(b.base + b.n) ? &b : nullptr;
}

bool guards_ok(const Buf &b) {
    for (size_t i = 0; i < b.guard; i++)
        if (!is_sentinel(&b.base[-1 - (ptrdiff_t)i]) || !is_sentinel(&b.base[b.n + i])) return false;
    return true;
}
} /* namespace */

float *emu_alloc(size_t n) {
    const size_t guard = guard_of(n), total = n + 2 * guard;
    /* the buffer itself 256-byte aligned, as cudaMalloc's */
    const size_t lead = lead_of(guard);
    const size_t bytes = (lead + (n + guard) * sizeof(float) + 255) / 256 * 256;
    char *raw = (char *)aligned_alloc(256, bytes);
    if (!raw) fatal("out of memory");
    float *p = (float *)(raw + lead) - guard;
    for (size_t i = 0; i < total; i++) memcpy(&p[i], &SENTINEL, sizeof SENTINEL);
    bufs[(uintptr_t)(p + guard)] = {p + guard, n, guard};
    return p + guard;
}

static void release(float *p, bool keep) {
    auto it = bufs.find((uintptr_t)p);
    if (it == bufs.end()) fatal("emu_free of an unknown pointer");
    const Buf b = it->second;
    bufs.erase(it);
    if (!guards_ok(b)) emu_fail("a write outside a buffer of %zu floats (into its guard zone)", b.n);
    if (keep) {
        for (size_t i = 0; i < b.n; i++) memcpy(&b.base[i], &SENTINEL, sizeof SENTINEL);
        retired.push_back(b.base);
    } else {
        free((char *)b.base - lead_of(b.guard));
    }
}

void emu_free(float *p) { release(p, false); }
void emu_retire(float *p) { release(p, true); }

bool emu_in_buffer(const void *p, size_t bytes) {
    const Buf *b = find(p);
    return b && (uintptr_t)p + bytes <= (uintptr_t)(b->base + b->n);
}

bool emu_is_buffer_start(const void *p) { return bufs.count((uintptr_t)p) != 0; }

void emu_check_guards(const char *what) {
    for (const auto &kv : bufs)
        if (!guards_ok(kv.second)) {
            emu_fail("%s: a write outside a buffer (into its guard zone)", what);
            return;
        }
}

float emu_ldg(const float *p) {
    if (emu_in_buffer(p, sizeof(float))) return *p;
    fatal("__ldg outside every buffer");
}

/* ---------------------------------------------------------------- fibers */

/* Switching between fibers: on x86-64 a few instructions that save the callee-saved registers
 * and the floating-point control words on the old stack and load them from the new one (no
 * system call: glibc's swapcontext saves the signal mask with one, twice per switch, which made
 * the emulation of a whole training step spend most of its time in the kernel). Elsewhere
 * ucontext. A new fiber's stack starts as if it had switched out just before its entry. */
namespace {
#if defined(__x86_64__)
struct Ctx {
    void *sp;
};
extern "C" void emu_ctx_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .p2align 4
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch
)");
inline void ctx_switch(Ctx *from, Ctx *to) { emu_ctx_switch(&from->sp, to->sp); }
/* the stack a switch into `entry` pops: control words, six registers, entry as the return
 * address (16-byte aligned, so entry starts as if called) */
void ctx_start(Ctx *c, char *stack, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack + size) & ~(uintptr_t)15) - 16;
    uint64_t *sp = (uint64_t *)top;
    sp[0] = (uint64_t)(uintptr_t)entry; /* the return address, at a 16-byte boundary */
    sp[1] = 0;
    sp -= 6;
    for (int i = 0; i < 6; i++) sp[i] = 0;
    sp -= 1;
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    memcpy((char *)sp, &mxcsr, 4);
    memcpy((char *)sp + 4, &fpucw, 2);
    c->sp = sp;
}
#else
struct Ctx {
    ucontext_t uc;
};
inline void ctx_switch(Ctx *from, Ctx *to) { swapcontext(&from->uc, &to->uc); }
void ctx_start(Ctx *c, char *stack, size_t size, void (*entry)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = NULL;
    makecontext(&c->uc, entry, 0);
}
#endif

enum State { RUNNABLE, AT_BARRIER, AT_SHFL, DONE };
struct Fiber {
    Ctx ctx;
    char *stack;
    dim3 tid;
    State state;
    long barriers, shfls; /* calls so far: every thread of a block (lane of a warp) must agree */
    uint64_t val, res;    /* a shuffle's deposited value and its result */
    EmuShfl kind;
    int arg, width;
    /* asynchronous copies issued and not landed yet, in issue order; groups committed so far */
    struct Copy {
        void *dst;
        size_t n;
        long group;
        unsigned char bytes[16];
    };
    std::vector<Copy> copies;
    long committed;
};
const size_t STACK = 256 << 10;
Ctx scheduler;
std::vector<Fiber> fibers;
int current;
const std::function<void()> *kernel_body;
EmuRng order_rng(1);
EmuRng copy_rng(2); /* whether an asynchronous copy lands at once or at its wait */

/* a fiber's first frame: never returns (its last switch is never resumed) */
void fiber_entry() {
    (*kernel_body)();
    if (!fibers[current].copies.empty())
        emu_fail("a thread ended with %zu asynchronous copies never waited for",
                 fibers[current].copies.size());
    fibers[current].copies.clear();
    fibers[current].state = DONE;
    ctx_switch(&fibers[current].ctx, &scheduler);
    abort();
}
/* kept out of emu_run_grid: with ucontext, getcontext returns twice, which would make GCC
 * assume that every local there may be clobbered */
__attribute__((noinline)) void start_fiber(Fiber &f, dim3 tid) {
    ctx_start(&f.ctx, f.stack, STACK, fiber_entry);
    f.tid = tid;
    f.state = RUNNABLE;
    f.barriers = 0;
    f.shfls = 0;
    f.copies.clear();
    f.committed = 0;
}

/* Releases warp [lo, lo + 32) if every lane waits at the same shuffle: computes each lane's
 * result before any lane runs on (a lane's next shuffle overwrites its deposited value).
 * Returns 1 when released. */
int release_warp(unsigned lo, unsigned nt) {
    if (lo + 32 > nt) fatal("a warp shuffle in a partial warp (block size not a multiple of 32)");
    for (unsigned t = lo; t < lo + 32; t++)
        if (fibers[t].state != AT_SHFL) return 0;
    const Fiber &f0 = fibers[lo];
    for (unsigned t = lo; t < lo + 32; t++) {
        const Fiber &f = fibers[t];
        if (f.shfls != f0.shfls || f.kind != f0.kind || f.width != f0.width)
            fatal("divergent warp shuffle (lanes of a warp at different shuffle calls)");
    }
    const int w = f0.width;
    for (unsigned t = lo; t < lo + 32; t++) {
        Fiber &f = fibers[t];
        const int lane = (int)(t - lo), seg = lane & ~(w - 1);
        int src = lane;
        switch (f.kind) {
        case EMU_SHFL_IDX: src = seg + (f.arg & (w - 1)); break;
        case EMU_SHFL_UP: src = lane - f.arg < seg ? lane : lane - f.arg; break;
        case EMU_SHFL_DOWN: src = lane + f.arg >= seg + w ? lane : lane + f.arg; break;
        case EMU_SHFL_XOR: src = (lane ^ f.arg) >= seg + w ? lane : lane ^ f.arg; break;
        }
        f.res = fibers[lo + (unsigned)src].val;
    }
    for (unsigned t = lo; t < lo + 32; t++) fibers[t].state = RUNNABLE;
    return 1;
}
/* a seeded Fisher-Yates shuffle of v[0..n) */
void shuffle(int *v, size_t n) {
    for (size_t i = n; i > 1; i--) {
        const size_t j = (size_t)(order_rng.next() % i);
        const int tmp = v[i - 1];
        v[i - 1] = v[j];
        v[j] = tmp;
    }
}

void resume(int t) {
    current = t;
    emu_threadIdx_p = &fibers[t].tid;
    ctx_switch(&scheduler, &fibers[t].ctx);
}
} /* namespace */

void emu_syncthreads() {
    Fiber &f = fibers[current];
    f.barriers++;
    f.state = AT_BARRIER;
    ctx_switch(&f.ctx, &scheduler);
}

uint64_t emu_shfl(unsigned mask, uint64_t bits, EmuShfl kind, int arg, int width) {
    if (mask != 0xffffffffu) fatal("a warp shuffle with a partial lane mask (not modelled)");
    if (width < 1 || width > 32 || (width & (width - 1)))
        fatal("a warp shuffle width that is not a power of two up to 32");
    if (arg < 0 || (kind == EMU_SHFL_XOR && arg > 31))
        fatal("a warp shuffle offset out of range");
    Fiber &f = fibers[current];
    f.shfls++;
    f.val = bits;
    f.kind = kind;
    f.arg = arg;
    f.width = width;
    f.state = AT_SHFL;
    ctx_switch(&f.ctx, &scheduler);
    return fibers[current].res;
}

void emu_cp_async(void *dst, const void *src, size_t size, size_t zfill) {
    if (size != 4 && size != 8 && size != 16)
        fatal("an asynchronous copy of other than 4, 8 or 16 bytes");
    if (zfill > size) fatal("an asynchronous copy with more zero fill than bytes");
    if (((uintptr_t)dst | (uintptr_t)src) & (size - 1)) fatal("a misaligned asynchronous copy");
    if (zfill < size && !emu_in_buffer(src, size - zfill))
        fatal("an asynchronous copy from outside every buffer");
    Fiber &f = fibers[current];
    Fiber::Copy c;
    c.dst = dst;
    c.n = size;
    c.group = f.committed;
    memset(c.bytes, 0, sizeof c.bytes);
    if (zfill < size) memcpy(c.bytes, src, size - zfill);
    if (copy_rng.next() & 1)
        memcpy(dst, c.bytes, size); /* lands at once */
    else
        f.copies.push_back(c);
}

void emu_cp_commit() { fibers[current].committed++; }

void emu_cp_wait(size_t prior) {
    Fiber &f = fibers[current];
    const long limit = f.committed - (long)prior; /* groups below it must have landed */
    size_t keep = 0;
    for (size_t i = 0; i < f.copies.size(); i++) {
        Fiber::Copy &c = f.copies[i];
        if (c.group < limit)
            memcpy(c.dst, c.bytes, c.n);
        else
            f.copies[keep++] = c;
    }
    f.copies.resize(keep);
}

/* the running grid's dynamic shared memory, 16-byte aligned (DD_DYNAMIC_SHARED) */
struct alignas(16) Shared16 {
    unsigned char b[16];
};
static std::vector<Shared16> dynamic_shared;
static size_t dynamic_shared_bytes;

void *emu_dynamic_shared() {
    if (!dynamic_shared_bytes)
        fatal("a kernel declares dynamic shared memory but was launched with none");
    return dynamic_shared.data();
}

/* which block (a count over all launches) last filled each static __shared__ variable */
static unsigned long long block_serial;
static std::unordered_map<void *, unsigned long long> shared_filled;

void emu_shared_poison(void *p, size_t n) {
    unsigned long long &b = shared_filled[p];
    if (b == block_serial) return; /* another thread of this block got there first */
    memset(p, 0xff, n);
    b = block_serial;
}

void emu_run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body) {
    const unsigned long nt = (unsigned long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 || !nt || nt > 1024 ||
        smem > EMU_MAX_SHARED) {
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
    dynamic_shared.assign((smem + 15) / 16, Shared16{});
    dynamic_shared_bytes = smem;
    emu_gridDim = grid;
    emu_blockDim = block;
    std::vector<int> order(nt);
    for (unsigned t = 0; t < nt; t++) order[t] = (int)t;
    const unsigned nw = (unsigned)((nt + 31) / 32);
    std::vector<int> warps(nw);
    for (unsigned w = 0; w < nw; w++) warps[w] = (int)w;
    int lanes[32];
    /* Blocks run one after another, in a shuffled order (up to 2^20 blocks; beyond, in index
     * order): a kernel must not depend on which block runs first or finishes last. */
    const unsigned long nb = (unsigned long)grid.x * grid.y * grid.z;
    std::vector<int> blocks;
    if (nb <= (1ul << 20)) {
        blocks.resize(nb);
        for (unsigned long b = 0; b < nb; b++) blocks[b] = (int)b;
        shuffle(blocks.data(), nb);
    }
    for (unsigned long k = 0; k < nb; k++) {
        const unsigned long b = blocks.empty() ? k : (unsigned long)blocks[k];
        const unsigned bx = (unsigned)(b % grid.x), by = (unsigned)(b / grid.x % grid.y),
                       bz = (unsigned)(b / ((unsigned long)grid.x * grid.y));
        emu_blockIdx = dim3(bx, by, bz);
        if (smem) memset(dynamic_shared.data(), 0xff, smem); /* NaNs: no block sees another's */
        block_serial++; /* the static __shared__ variables too, at their declarations */
        for (unsigned t = 0; t < nt; t++)
            start_fiber(fibers[t],
                        dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y)));
        /* Two schedules, drawn per block: threads interleaved across the block (a
         * warp at a shuffle goes on once no thread is runnable), or warp by warp in a
         * shuffled warp order, each warp run on through its shuffles until it waits at
         * a barrier or ends (so one warp gets far ahead of the others: a missing
         * barrier between warps shows). One round: every runnable thread runs to its
         * next barrier, shuffle or end. */
        const bool by_warp = order_rng.next() & 1;
        for (;;) {
            if (!by_warp) {
                shuffle(order.data(), nt);
                for (int t : order)
                    if (fibers[t].state == RUNNABLE) resume(t);
            } else {
                shuffle(warps.data(), nw);
                for (int w : warps) {
                    const unsigned lo = 32 * (unsigned)w;
                    const unsigned n = nt - lo < 32 ? (unsigned)(nt - lo) : 32;
                    for (;;) {
                        for (unsigned i = 0; i < n; i++) lanes[i] = (int)(lo + i);
                        shuffle(lanes, n);
                        bool at_shfl = false;
                        for (unsigned i = 0; i < n; i++)
                            if (fibers[lanes[i]].state == RUNNABLE) resume(lanes[i]);
                        for (unsigned i = 0; i < n; i++)
                            if (fibers[lo + i].state == AT_SHFL) at_shfl = true;
                        if (!at_shfl || !release_warp(lo, (unsigned)nt)) break;
                    }
                }
            }
            unsigned done = 0, at_shfl = 0;
            for (unsigned t = 0; t < nt; t++) {
                if (fibers[t].state == DONE) done++;
                if (fibers[t].state == AT_SHFL) at_shfl++;
            }
            if (done == nt) break;
            if (at_shfl) { /* warps complete at a shuffle go on, barriers wait */
                int released = 0;
                for (unsigned lo = 0; lo < nt; lo += 32)
                    for (unsigned t = lo; t < lo + 32 && t < nt; t++)
                        if (fibers[t].state == AT_SHFL) {
                            released |= release_warp(lo, (unsigned)nt);
                            break;
                        }
                if (released) continue;
                fatal("a warp shuffle that not every lane of its warp reaches (lanes at a "
                      "barrier, finished, or divergent)");
            }
            /* every live thread at a barrier: the same one, and none finished */
            bool same = true;
            for (unsigned t = 0; t < nt; t++)
                if (fibers[t].barriers != fibers[0].barriers) same = false;
            if (done || !same)
                fatal("divergent __syncthreads (threads at different barriers or ended)");
            for (unsigned t = 0; t < nt; t++) fibers[t].state = RUNNABLE;
        }
    }
}
