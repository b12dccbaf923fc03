/* A progress bar on stderr: label, bar, count, rate, ETA and a caller's note, redrawn in place
 * at most ~10 times a second when stderr is a terminal; otherwise a plain line per finish. */
#ifndef DIFFUSION_PROGRESS_H
#define DIFFUSION_PROGRESS_H

#include <stdint.h>

typedef struct {
    char label[64];
    int64_t total, done;
    double t0, last_draw;
    int enabled, tty;
    const char *unit; /* e.g. "img/s": rate = items / s with items given per update */
    double items;
} dd_progress;

/* enabled: 1 always, 0 never, -1 when stderr is a terminal. */
void dd_progress_start(dd_progress *p, const char *label, int64_t total, const char *unit, int enabled);
/* done steps so far, items processed in all (for the rate), and a short note (may be NULL). */
void dd_progress_update(dd_progress *p, int64_t done, double items, const char *note);
void dd_progress_finish(dd_progress *p, const char *note);
double dd_now(void); /* monotonic seconds */

#endif
