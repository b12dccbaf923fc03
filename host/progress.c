#include "diffusion/progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double dd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dd_progress_start(dd_progress *p, const char *label, int64_t total, const char *unit, int enabled) {
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total;
    p->unit = unit ? unit : "it/s";
    p->tty = isatty(2);
    p->enabled = enabled < 0 ? p->tty : enabled;
    p->t0 = p->last_draw = dd_now();
}

static void fmt_time(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e7) {
        snprintf(buf, n, "--");
        return;
    }
    int v = (int)(s + 0.5);
    if (v >= 3600) snprintf(buf, n, "%dh%02dm", v / 3600, v / 60 % 60);
    else if (v >= 60) snprintf(buf, n, "%dm%02ds", v / 60, v % 60);
    else snprintf(buf, n, "%ds", v);
}

static void draw(dd_progress *p, const char *note, int final) {
    double el = dd_now() - p->t0;
    double rate = el > 0 ? p->items / el : 0;
    double eta = p->done > 0 ? el * (double)(p->total - p->done) / (double)p->done : -1;
    char e[32], tot[32];
    fmt_time(e, sizeof e, final ? el : eta);
    fmt_time(tot, sizeof tot, el);
    char bar[21];
    int filled = p->total > 0 ? (int)(20 * p->done / p->total) : 20;
    for (int i = 0; i < 20; i++) bar[i] = i < filled ? '#' : '.';
    bar[20] = 0;
    fprintf(stderr, "%s%s [%s] %lld/%lld %.1f %s %s %s%s%s", p->tty ? "\r\033[K" : "", p->label, bar,
            (long long)p->done, (long long)p->total, rate, p->unit, final ? "took" : "ETA", e,
            note ? "  " : "", note ? note : "");
    if (final || !p->tty) fputc('\n', stderr);
    fflush(stderr);
}

void dd_progress_update(dd_progress *p, int64_t done, double items, const char *note) {
    p->done = done;
    p->items = items;
    if (!p->enabled || !p->tty) return;
    double now = dd_now();
    if (now - p->last_draw < 0.1 && done < p->total) return;
    p->last_draw = now;
    draw(p, note, 0);
}

void dd_progress_finish(dd_progress *p, const char *note) {
    if (p->enabled) draw(p, note, 1);
}
