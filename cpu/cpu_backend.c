/* The CPU backend's table: host memory (64-byte aligned, zero-filled) and every op. The ops live
 * in the other cpu/ files, one per family. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "diffusion/error.h"

static int cpu_alloc(void **p, size_t bytes) {
    /* aligned_alloc wants a multiple of the alignment; 0 bytes still gets a valid pointer */
    size_t n = dd_cpu_round(bytes ? bytes : 1);
    if (n < bytes) {
        *p = NULL;
        return dd_error_size("cpu backend: out of memory allocating %zu bytes (size overflows)", bytes);
    }
    void *q = aligned_alloc(DD_CPU_ALIGN, n);
    if (!q) {
        *p = NULL;
        return dd_error_size("cpu backend: out of memory allocating %zu bytes (%.1f MiB)", bytes,
                        (double)bytes / (1024.0 * 1024.0));
    }
    memset(q, 0, n);
    *p = q;
    return 0;
}

static void cpu_free(void *p) { free(p); }

static int cpu_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
    return 0;
}

/* Host and "device" are the same memory here: every transfer is a memcpy (memmove for copy, so
 * a copy within one buffer is safe too). */
static int cpu_memcpy(void *dst, const void *src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
    return 0;
}

static int cpu_synchronize(void) { return 0; }

/* the processor's model name from /proc/cpuinfo (Linux), or "" */
static void cpu_model(char *out, size_t n) {
    out[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        const char *c = strchr(line, ':');
        if (strncmp(line, "model name", 10) || !c) continue;
        for (c++; *c == ' ' || *c == '\t'; c++) {}
        snprintf(out, n, "%s", c);
        out[strcspn(out, "\n")] = '\0';
        break;
    }
    fclose(f);
}

void dd_cpu_describe(char *buf, size_t n) {
    char model[256];
    cpu_model(model, sizeof model);
    const char *simd = "baseline";
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        simd = "AVX-512";
    else if (__builtin_cpu_supports("avx2"))
        simd = "AVX2";
#endif
    const int threads = omp_get_max_threads();
    snprintf(buf, n, "%s%s%d thread%s (OMP_NUM_THREADS) of %d processors; %s; vector loops %s",
             model, model[0] ? ", " : "", threads, threads == 1 ? "" : "s", omp_get_num_procs(),
             openblas_get_config(), simd);
}

int dd_cpu_blas_single_begin(void) {
    int prev = openblas_get_num_threads();
    if (prev != 1) openblas_set_num_threads(1);
    return prev;
}

void dd_cpu_blas_single_end(int prev) {
    if (prev != 1) openblas_set_num_threads(prev);
}

const dd_backend dd_cpu_backend = {
    .name = "cpu",

    .alloc = cpu_alloc,
    .free = cpu_free,
    .zero = cpu_zero,
    .to_device = cpu_memcpy,
    .to_host = cpu_memcpy,
    .copy = cpu_memcpy,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .to_device_async = cpu_memcpy,
    .synchronize = cpu_synchronize,

    .conv2d_workspace = dd_cpu_conv2d_workspace,
    .conv2d_forward = dd_cpu_conv2d_forward,
    .conv2d_backward = dd_cpu_conv2d_backward,

    .dense_forward = dd_cpu_dense_forward,
    .dense_backward = dd_cpu_dense_backward,
    .dense_group_forward = dd_cpu_dense_group_forward,
    .dense_group_backward = dd_cpu_dense_group_backward,

    .group_norm_forward = dd_cpu_group_norm_forward,
    .group_norm_workspace = dd_cpu_group_norm_workspace,
    .group_norm_backward = dd_cpu_group_norm_backward,

    .act_forward = dd_cpu_act_forward,
    .act_backward = dd_cpu_act_backward,
    .add_forward = dd_cpu_add_forward,
    .add_backward = dd_cpu_add_backward,
    .concat_forward = dd_cpu_concat_forward,
    .concat_backward = dd_cpu_concat_backward,
    .upsample2x_forward = dd_cpu_upsample2x_forward,
    .upsample2x_backward = dd_cpu_upsample2x_backward,
    .maxpool2x2_forward = dd_cpu_maxpool2x2_forward,
    .maxpool2x2_backward = dd_cpu_maxpool2x2_backward,

    .attention_workspace = dd_cpu_attention_workspace,
    .attention_forward = dd_cpu_attention_forward,
    .attention_backward = dd_cpu_attention_backward,

    .embedding_forward = dd_cpu_embedding_forward,
    .embedding_backward = dd_cpu_embedding_backward,

    .mse_forward = dd_cpu_mse_forward,
    .mse_backward = dd_cpu_mse_backward,
    .xent_forward = dd_cpu_xent_forward,
    .xent_backward = dd_cpu_xent_backward,

    .adam_update = dd_cpu_adam_update,
    .ema_update = dd_cpu_ema_update,
    .counter_add = dd_cpu_counter_add,
    .sampler_advance = dd_cpu_sampler_advance,

    .normal = dd_cpu_normal,
    .train_draw = dd_cpu_train_draw,
    .q_sample = dd_cpu_q_sample,
    .sampler_step = dd_cpu_sampler_step,
};
