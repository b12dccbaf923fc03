/* Errors: library calls return 0 on success and -1 on failure, after setting a message that
 * dd_error_message() returns (one per thread). Nothing in the library exits or aborts. */
#ifndef DIFFUSION_ERROR_H
#define DIFFUSION_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* printf-style; returns -1 so that `return dd_error("...")` reads naturally. */
int dd_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* Prefix the current message with context: "loading x.safetensors: <old message>". Returns -1. */
int dd_error_prefix(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
const char *dd_error_message(void);
void dd_error_clear(void);

/* Propagate a failing call: DD_TRY(f(x)); returns -1 from the caller if f returned non-zero. */
#define DD_TRY(call)                                                                              \
    do {                                                                                          \
        if ((call) != 0) return -1;                                                               \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
