/* Atomic file writes (include/diffusion/atomic_file.h). */
#include "diffusion/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffusion/error.h"

int dd_atomic_open(dd_atomic_file *af, const char *path) {
    static atomic_uint counter;
    memset(af, 0, sizeof *af);
    size_t len = strlen(path) + 64;
    af->path = strdup(path);
    af->tmp = malloc(len);
    if (!af->path || !af->tmp) {
        dd_atomic_abort(af);
        return dd_error("out of memory");
    }
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        snprintf(af->tmp, len, "%s.tmp-%ld-%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
        fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    int err = errno;
    if (fd >= 0 && !(af->f = fdopen(fd, "wb"))) {
        err = errno;
        close(fd);
        unlink(af->tmp);
    }
    if (!af->f) {
        free(af->path);
        free(af->tmp);
        memset(af, 0, sizeof *af);
        return dd_error("cannot write %s: cannot create a file in its folder: %s", path, strerror(err));
    }
    return 0;
}

int dd_atomic_check(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return dd_error("cannot write %s: it is a folder", path);
    dd_atomic_file af;
    DD_TRY(dd_atomic_open(&af, path));
    dd_atomic_abort(&af);
    return 0;
}

void dd_atomic_abort(dd_atomic_file *af) {
    if (af->f) {
        fclose(af->f);
        if (af->tmp) unlink(af->tmp);
    }
    free(af->path);
    free(af->tmp);
    memset(af, 0, sizeof *af);
}

int dd_atomic_commit(dd_atomic_file *af) {
    const char *step = NULL;
    int err = 0;
    if (fflush(af->f) != 0 || ferror(af->f)) step = "write";
    else if (fsync(fileno(af->f)) != 0) step = "fsync";
    if (step) err = errno;
    if (fclose(af->f) != 0 && !step) step = "close", err = errno;
    af->f = NULL;
    if (!step && rename(af->tmp, af->path) != 0) step = "rename", err = errno;
    int rc = 0;
    if (step) {
        unlink(af->tmp);
        rc = dd_error("cannot write %s (%s failed): %s", af->path, step, strerror(err ? err : EIO));
    } else {
        /* make the rename itself durable; failing here leaves a complete file, so no error */
        char *dir = strdup(af->path);
        if (dir) {
            int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                (void)fsync(dfd);
                close(dfd);
            }
            free(dir);
        }
    }
    free(af->path);
    free(af->tmp);
    memset(af, 0, sizeof *af);
    return rc;
}

int dd_write_file_atomic(const char *path, const void *bytes, size_t len) {
    dd_atomic_file af;
    DD_TRY(dd_atomic_open(&af, path));
    if (len && fwrite(bytes, 1, len, af.f) != len) {
        int err = errno;
        dd_atomic_abort(&af);
        return dd_error("cannot write %s (write failed): %s", path, strerror(err ? err : EIO));
    }
    return dd_atomic_commit(&af);
}
