/* Picking a backend by the name the user gives (--device cpu|cuda|auto). */
#include <string.h>

#include "diffusion/backend.h"
#include "diffusion/error.h"

const dd_backend *dd_backend_by_name(const char *name) {
    if (!name) {
        dd_error("no backend name given (expected cpu, cuda or auto)");
        return NULL;
    }
    if (strcmp(name, "cpu") == 0) return &dd_cpu_backend;
    if (strcmp(name, "cuda") == 0) return dd_cuda_backend(); /* NULL with its own message */
    if (strcmp(name, "auto") == 0) {
        const dd_backend *be = dd_cuda_backend();
        if (be) return be;
        dd_error_clear(); /* no GPU is not an error for auto: the CPU it is */
        return &dd_cpu_backend;
    }
    dd_error("unknown backend '%s' (expected cpu, cuda or auto)", name);
    return NULL;
}
