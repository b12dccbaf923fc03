/* Minimal test harness: CHECK records a failure (with file and line) and carries on; a test's
 * main ends with `return tu_finish();`, which prints a summary and returns 1 if anything failed.
 * tu_skip() exits with 77, which CTest reports as skipped. */
#ifndef DD_TESTUTIL_H
#define DD_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

extern int tu_checks, tu_failures;

void tu_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int tu_finish(void);
void tu_skip(const char *why) __attribute__((noreturn));

#define CHECK(cond)                                                                               \
    do {                                                                                          \
        tu_checks++;                                                                              \
        if (!(cond)) tu_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                             \
    } while (0)
#define CHECKF(cond, ...)                                                                         \
    do {                                                                                          \
        tu_checks++;                                                                              \
        if (!(cond)) tu_fail(__FILE__, __LINE__, __VA_ARGS__);                                    \
    } while (0)
/* A library call that must succeed; on failure prints the library's message. */
#define CHECK_OK(call)                                                                            \
    do {                                                                                          \
        tu_checks++;                                                                              \
        if ((call) != 0) tu_fail(__FILE__, __LINE__, "%s failed: %s", #call, dd_error_message()); \
    } while (0)

/* norm(a - b) / norm(b) (0 when both are zero) */
double tu_rel_err(const float *a, const float *b, size_t n);
/* Fill with uniform values in [lo, hi) from a fixed simple generator. */
void tu_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed);
/* Temporary files of dd_atomic_open ("*.tmp-*") in a folder, hidden ones included; -1 when the
 * folder cannot be read. */
int tu_count_temporaries(const char *dir);
/* Read a whole file; NULL when missing. *len receives the size. Caller frees. */
void *tu_read_file(const char *path, size_t *len);

#endif
