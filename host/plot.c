/* Scatter plots and line plots (loss curves) drawn with cairo: axes with ticks on "nice" numbers,
 * tick labels, axis labels, title and legend in cairo's text API, written as PNG through an
 * atomic file. */
#include <cairo.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"
#include "diffusion/image.h"

/* tab10: distinguishable on white, the usual matplotlib cycle. */
static const double palette[10][3] = {
    {0.122, 0.467, 0.706}, {1.000, 0.498, 0.055}, {0.173, 0.627, 0.173}, {0.839, 0.153, 0.157},
    {0.580, 0.404, 0.741}, {0.549, 0.337, 0.294}, {0.890, 0.467, 0.761}, {0.498, 0.498, 0.498},
    {0.737, 0.741, 0.133}, {0.090, 0.745, 0.812}};

#define FONT "DejaVu Sans"

/* Plot area in pixels and the data window shown in it. */
typedef struct plot {
    cairo_surface_t *surf;
    cairo_t *cr;
    double px0, py0, pw, ph; /* plot rectangle: left, top, width, height */
    double x0, x1, y0, y1;   /* data window (y in log10 units when log_y) */
    int log_y;
} plot;

static double map_x(const plot *p, double x) { return p->px0 + (x - p->x0) / (p->x1 - p->x0) * p->pw; }
static double map_y(const plot *p, double y) {
    if (p->log_y) y = log10(y);
    return p->py0 + p->ph - (y - p->y0) / (p->y1 - p->y0) * p->ph;
}

/* 1, 2 or 5 times a power of ten, near range / target. */
static double nice_step(double range, int target) {
    double raw = range / target;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

/* A label for tick value v, with as many decimals as the step needs. */
static void tick_label(char *buf, size_t len, double v, double step) {
    if (fabs(v) < step * 1e-9) v = 0;
    double av = fabs(v);
    if (av != 0 && (av >= 1e6 || av < 1e-4)) {
        snprintf(buf, len, "%.3g", v);
        return;
    }
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    if (dec > 8) dec = 8;
    snprintf(buf, len, "%.*f", dec, v);
}

static void set_font(cairo_t *cr, double size, int bold) {
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
}

/* Text anchored at (x, y): ax, ay in 0..1 pick the anchor within the text's box. */
static void text_at(cairo_t *cr, const char *s, double x, double y, double ax, double ay) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    cairo_move_to(cr, x - e.x_bearing - ax * e.width, y - e.y_bearing - ay * e.height);
    cairo_show_text(cr, s);
}

static int plot_begin(plot *p, const dd_plot_opts *o, const char *path) {
    memset(p, 0, sizeof *p);
    int W = o->width > 0 ? o->width : 640, H = o->height > 0 ? o->height : 480;
    if (W < 160 || H < 120 || W > 10000 || H > 10000)
        return dd_error("%s: plot size %d x %d out of range (160 x 120 .. 10000 x 10000)", path, W, H);
    p->surf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
    cairo_status_t st = cairo_surface_status(p->surf);
    if (st != CAIRO_STATUS_SUCCESS) {
        cairo_surface_destroy(p->surf);
        return dd_error("%s: cairo: %s", path, cairo_status_to_string(st));
    }
    p->cr = cairo_create(p->surf);
    cairo_set_source_rgb(p->cr, 1, 1, 1);
    cairo_paint(p->cr);
    p->px0 = 78;
    p->py0 = o->title ? 40 : 18;
    p->pw = W - p->px0 - 22;
    p->ph = H - p->py0 - 58;
    return 0;
}

/* Frame, grid lines, ticks, tick labels, axis labels and title. */
static void draw_axes(plot *p, const dd_plot_opts *o, const char *xlabel, const char *ylabel) {
    cairo_t *cr = p->cr;
    char buf[64];
    set_font(cr, 12, 0);
    cairo_set_line_width(cr, 1);
    /* x ticks */
    double xs = nice_step(p->x1 - p->x0, 6);
    for (double v = ceil(p->x0 / xs - 1e-9) * xs; v <= p->x1 + xs * 1e-9; v += xs) {
        double X = round(map_x(p, v)) + 0.5;
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        cairo_move_to(cr, X, p->py0), cairo_line_to(cr, X, p->py0 + p->ph), cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, X, p->py0 + p->ph), cairo_line_to(cr, X, p->py0 + p->ph + 5), cairo_stroke(cr);
        tick_label(buf, sizeof buf, v, xs);
        text_at(cr, buf, X, p->py0 + p->ph + 9, 0.5, 0);
    }
    /* y ticks: nice steps, or decades (with 2 and 5 when few decades show) on a log axis */
    if (p->log_y) {
        int d0 = (int)floor(p->y0), d1 = (int)ceil(p->y1);
        int sub = (p->y1 - p->y0) < 2.5;
        for (int d = d0; d <= d1; d++)
            for (int m = 1; m <= 5; m++) {
                if (m != 1 && !(sub && (m == 2 || m == 5))) continue;
                double v = m * pow(10.0, d), lv = log10(v);
                if (lv < p->y0 - 1e-9 || lv > p->y1 + 1e-9) continue;
                double Y = round(map_y(p, v)) + 0.5;
                cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
                cairo_move_to(cr, p->px0, Y), cairo_line_to(cr, p->px0 + p->pw, Y), cairo_stroke(cr);
                cairo_set_source_rgb(cr, 0, 0, 0);
                cairo_move_to(cr, p->px0 - 5, Y), cairo_line_to(cr, p->px0, Y), cairo_stroke(cr);
                snprintf(buf, sizeof buf, "%g", v);
                text_at(cr, buf, p->px0 - 8, Y, 1, 0.5);
            }
    } else {
        double ys = nice_step(p->y1 - p->y0, 6);
        for (double v = ceil(p->y0 / ys - 1e-9) * ys; v <= p->y1 + ys * 1e-9; v += ys) {
            double Y = round(map_y(p, v)) + 0.5;
            cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
            cairo_move_to(cr, p->px0, Y), cairo_line_to(cr, p->px0 + p->pw, Y), cairo_stroke(cr);
            cairo_set_source_rgb(cr, 0, 0, 0);
            cairo_move_to(cr, p->px0 - 5, Y), cairo_line_to(cr, p->px0, Y), cairo_stroke(cr);
            tick_label(buf, sizeof buf, v, ys);
            text_at(cr, buf, p->px0 - 8, Y, 1, 0.5);
        }
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_rectangle(cr, round(p->px0) + 0.5, round(p->py0) + 0.5, round(p->pw), round(p->ph));
    cairo_stroke(cr);
    set_font(cr, 13, 0);
    if (xlabel) text_at(cr, xlabel, p->px0 + p->pw / 2, p->py0 + p->ph + 32, 0.5, 0);
    if (ylabel) {
        cairo_save(cr);
        cairo_translate(cr, 16, p->py0 + p->ph / 2);
        cairo_rotate(cr, -M_PI / 2);
        text_at(cr, ylabel, 0, 0, 0.5, 0.5);
        cairo_restore(cr);
    }
    if (o->title) {
        set_font(cr, 15, 1);
        text_at(cr, o->title, p->px0 + p->pw / 2, 12, 0.5, 0);
    }
}

/* Legend box in the top right corner of the plot: a line or a dot per entry. */
static void draw_legend(plot *p, const char *const *names, const int *colour, int count, int dots) {
    if (count <= 0) return;
    cairo_t *cr = p->cr;
    set_font(cr, 12, 0);
    double wmax = 0;
    for (int i = 0; i < count; i++) {
        cairo_text_extents_t e;
        cairo_text_extents(cr, names[i], &e);
        if (e.x_advance > wmax) wmax = e.x_advance;
    }
    double bw = wmax + 44, bh = 20.0 * count + 8;
    double bx = p->px0 + p->pw - bw - 8, by = p->py0 + 8;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, bx, by, bw, bh);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    for (int i = 0; i < count; i++) {
        double y = by + 14 + 20.0 * i;
        const double *c = palette[colour[i] % 10];
        cairo_set_source_rgb(cr, c[0], c[1], c[2]);
        if (dots) {
            cairo_arc(cr, bx + 18, y, 4, 0, 2 * M_PI);
            cairo_fill(cr);
        } else {
            cairo_set_line_width(cr, 2);
            cairo_move_to(cr, bx + 8, y), cairo_line_to(cr, bx + 28, y), cairo_stroke(cr);
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        text_at(cr, names[i], bx + 36, y, 0, 0.5);
    }
}

static cairo_status_t png_to_file(void *closure, const unsigned char *data, unsigned int length) {
    return fwrite(data, 1, length, (FILE *)closure) == length ? CAIRO_STATUS_SUCCESS
                                                               : CAIRO_STATUS_WRITE_ERROR;
}

/* Write the PNG atomically and free the plot. */
static int plot_finish(plot *p, const char *path) {
    cairo_destroy(p->cr);
    cairo_surface_flush(p->surf);
    dd_atomic_file af;
    if (dd_atomic_open(&af, path) != 0) {
        cairo_surface_destroy(p->surf);
        return -1;
    }
    cairo_status_t st = cairo_surface_write_to_png_stream(p->surf, png_to_file, af.f);
    cairo_surface_destroy(p->surf);
    if (st != CAIRO_STATUS_SUCCESS) {
        dd_atomic_abort(&af);
        return dd_error("%s: writing the PNG failed: %s", path, cairo_status_to_string(st));
    }
    return dd_atomic_commit(&af);
}

/* [lo, hi] widened by a margin (and made non-empty). */
static void pad_range(double *lo, double *hi, double frac) {
    if (!(*hi > *lo)) {
        double c = isfinite(*lo) ? *lo : 0;
        *lo = c - 1, *hi = c + 1;
        return;
    }
    double m = (*hi - *lo) * frac;
    *lo -= m, *hi += m;
}

int dd_plot_scatter(const char *path, const float *xy, const int32_t *labels, int64_t n,
                    const dd_plot_opts *opts) {
    dd_plot_opts def = dd_plot_opts_default();
    const dd_plot_opts *o = opts ? opts : &def;
    if (n < 0) return dd_error("%s: negative point count", path);
    plot p;
    DD_TRY(plot_begin(&p, o, path));
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double x = xy[2 * i], y = xy[2 * i + 1];
        if (!isfinite(x) || !isfinite(y)) continue;
        xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
    }
    int autox = !(o->xmax > o->xmin), autoy = !(o->ymax > o->ymin);
    if (autox) pad_range(&xlo, &xhi, 0.05);
    else xlo = o->xmin, xhi = o->xmax;
    if (autoy) pad_range(&ylo, &yhi, 0.05);
    else ylo = o->ymin, yhi = o->ymax;
    if (autox && autoy) { /* same units per pixel on both axes, so shapes are not distorted */
        double ux = (xhi - xlo) / p.pw, uy = (yhi - ylo) / p.ph;
        if (ux > uy) {
            double c = (ylo + yhi) / 2, half = ux * p.ph / 2;
            ylo = c - half, yhi = c + half;
        } else {
            double c = (xlo + xhi) / 2, half = uy * p.pw / 2;
            xlo = c - half, xhi = c + half;
        }
    }
    p.x0 = xlo, p.x1 = xhi, p.y0 = ylo, p.y1 = yhi;
    draw_axes(&p, o, o->xlabel ? o->xlabel : "x", o->ylabel ? o->ylabel : "y");
    cairo_t *cr = p.cr;
    cairo_save(cr);
    cairo_rectangle(cr, p.px0, p.py0, p.pw, p.ph);
    cairo_clip(cr);
    double r = n > 5000 ? 1.4 : n > 500 ? 2.0 : 3.0;
    double alpha = n > 5000 ? 0.5 : 0.8;
    for (int64_t i = 0; i < n; i++) {
        double x = xy[2 * i], y = xy[2 * i + 1];
        if (!isfinite(x) || !isfinite(y)) continue;
        int k = labels ? (labels[i] < 0 ? 0 : labels[i]) : 0;
        const double *c = palette[k % 10];
        cairo_set_source_rgba(cr, c[0], c[1], c[2], alpha);
        cairo_arc(cr, map_x(&p, x), map_y(&p, y), r, 0, 2 * M_PI);
        cairo_fill(cr);
    }
    cairo_restore(cr);
    if (labels && o->num_classes > 0) {
        int k = o->num_classes > 10 ? 10 : o->num_classes;
        char names_buf[10][32];
        const char *names[10];
        int colour[10];
        for (int i = 0; i < k; i++) {
            if (o->class_names && o->class_names[i]) names[i] = o->class_names[i];
            else {
                snprintf(names_buf[i], sizeof names_buf[i], "class %d", i);
                names[i] = names_buf[i];
            }
            colour[i] = i;
        }
        draw_legend(&p, names, colour, k, 1);
    }
    return plot_finish(&p, path);
}

int dd_plot_lines(const char *path, const dd_series *s, int ns, const dd_plot_opts *opts) {
    dd_plot_opts def = dd_plot_opts_default();
    const dd_plot_opts *o = opts ? opts : &def;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int k = 0; k < ns; k++)
        for (int64_t i = 0; i < s[k].n; i++) {
            double x = s[k].x[i], y = s[k].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
        }
    int log_y = o->log_y;
    if (log_y < 0) log_y = ylo > 0 && isfinite(yhi) && yhi / ylo > 30;
    if (log_y && !(ylo > 0)) log_y = 0; /* a log axis cannot show zero or negatives */
    plot p;
    DD_TRY(plot_begin(&p, o, path));
    p.log_y = log_y;
    if (o->xmax > o->xmin) xlo = o->xmin, xhi = o->xmax;
    else pad_range(&xlo, &xhi, 0.02);
    if (o->ymax > o->ymin && (!log_y || o->ymin > 0)) ylo = o->ymin, yhi = o->ymax;
    else if (log_y) {
        ylo = log10(ylo), yhi = log10(yhi);
        pad_range(&ylo, &yhi, 0.05);
    } else pad_range(&ylo, &yhi, 0.05);
    if (log_y && o->ymax > o->ymin && o->ymin > 0) ylo = log10(ylo), yhi = log10(yhi);
    p.x0 = xlo, p.x1 = xhi, p.y0 = ylo, p.y1 = yhi;
    draw_axes(&p, o, o->xlabel ? o->xlabel : "step", o->ylabel);
    cairo_t *cr = p.cr;
    cairo_save(cr);
    cairo_rectangle(cr, p.px0, p.py0, p.pw, p.ph);
    cairo_clip(cr);
    const char *names[10];
    int colour[10], nl = 0;
    for (int k = 0; k < ns; k++) {
        const double *c = palette[k % 10];
        cairo_set_source_rgb(cr, c[0], c[1], c[2]);
        cairo_set_line_width(cr, s[k].n > 2000 ? 1.0 : 1.8);
        cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
        int pen = 0;
        for (int64_t i = 0; i < s[k].n; i++) {
            double x = s[k].x[i], y = s[k].y[i];
            if (!isfinite(x) || !isfinite(y) || (log_y && y <= 0)) {
                pen = 0; /* a gap rather than a line to nowhere */
                continue;
            }
            if (pen) cairo_line_to(cr, map_x(&p, x), map_y(&p, y));
            else cairo_move_to(cr, map_x(&p, x), map_y(&p, y));
            pen = 1;
        }
        cairo_stroke(cr);
        if (s[k].markers)
            for (int64_t i = 0; i < s[k].n; i++) {
                double x = s[k].x[i], y = s[k].y[i];
                if (!isfinite(x) || !isfinite(y) || (log_y && y <= 0)) continue;
                cairo_arc(cr, map_x(&p, x), map_y(&p, y), 3.5, 0, 2 * M_PI);
                cairo_fill(cr);
            }
        if (s[k].name && nl < 10) names[nl] = s[k].name, colour[nl++] = k;
    }
    cairo_restore(cr);
    draw_legend(&p, names, colour, nl, 0);
    return plot_finish(&p, path);
}

int dd_plot_loss(const char *path, const float *batch_x, const float *batch_loss, int64_t n_batch,
                 const float *val_x, const float *val_loss, int64_t n_val,
                 const dd_plot_opts *opts) {
    dd_plot_opts o = opts ? *opts : dd_plot_opts_default();
    if (!o.ylabel) o.ylabel = "loss";
    if (!o.title) o.title = "Training loss";
    dd_series s[2];
    int ns = 0;
    if (n_batch > 0) s[ns++] = (dd_series){"batch loss", batch_x, batch_loss, n_batch, n_batch < 50};
    if (n_val > 0) s[ns++] = (dd_series){"validation loss", val_x, val_loss, n_val, 1};
    if (ns == 0) return dd_error("%s: no loss values to plot", path);
    return dd_plot_lines(path, s, ns, &o);
}
