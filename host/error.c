#include "diffusion/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char msg[1024];
static _Thread_local int too_big; /* the message is dd_error_size's: a request too large */

static void set_message(int size, const char *fmt, va_list ap) {
    vsnprintf(msg, sizeof msg, fmt, ap);
    too_big = size;
}

int dd_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_message(0, fmt, ap);
    va_end(ap);
    return -1;
}

int dd_error_size(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_message(1, fmt, ap);
    va_end(ap);
    return -1;
}

int dd_error_was_size(void) { return too_big; }

int dd_error_prefix(const char *fmt, ...) {
    char old[sizeof msg], pre[512];
    memcpy(old, msg, sizeof msg);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    int k = snprintf(msg, sizeof msg, "%s: ", pre);
    if (k >= 0 && (size_t)k < sizeof msg) snprintf(msg + k, sizeof msg - (size_t)k, "%s", old);
    return -1;
}

const char *dd_error_message(void) { return msg[0] ? msg : "unknown error"; }
void dd_error_clear(void) {
    msg[0] = 0;
    too_big = 0;
}
