/* Atomic file writes, the project's one mechanism: a temporary file beside the target (so the
 * rename stays on one file system), written, flushed and fsync'ed, then renamed over the target
 * and the folder fsync'ed. On any failure the temporary is removed and an existing target is left
 * untouched: a crash or a full disk never leaves a half-written checkpoint or picture in place.
 * Temporaries are named "<target>.tmp-<pid>-<n>" and created exclusively. */
#ifndef DIFFUSION_ATOMIC_FILE_H
#define DIFFUSION_ATOMIC_FILE_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dd_atomic_file {
    FILE *f;    /* write here */
    char *path; /* the target */
    char *tmp;  /* the temporary, renamed onto path by dd_atomic_commit */
} dd_atomic_file;

/* Opens a temporary file beside `path`; an unwritable or missing folder fails here with
 * "cannot write PATH: cannot create a file in its folder: REASON". */
int dd_atomic_open(dd_atomic_file *af, const char *path);
/* Flush, fsync, close and rename onto the target; on any failure the temporary is removed and
 * the message says which step failed ("cannot write PATH (fsync failed): ..."). */
int dd_atomic_commit(dd_atomic_file *af);
/* Close and remove the temporary (after an error while writing). */
void dd_atomic_abort(dd_atomic_file *af);
/* Can `path` be written? Fails with a message when its folder is missing or unwritable (as
 * dd_atomic_open) or when path is a folder; creates and removes a temporary beside it and leaves
 * an existing target untouched. For a command to check its output files before a long run, not
 * after. */
int dd_atomic_check(const char *path);
/* The whole of it for bytes in memory. */
int dd_write_file_atomic(const char *path, const void *bytes, size_t len);

#ifdef __cplusplus
}
#endif
#endif
