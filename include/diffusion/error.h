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
/* dd_error for a request too large: memory a backend could not allocate, or a tensor over the
 * size limit. dd_error_was_size() then says 1 (through any dd_error_prefix) until the next
 * dd_error, so a command can say which of its options (a batch size) would need less. */
int dd_error_size(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
int dd_error_was_size(void);
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
