/* Picture and sample output: PNG grids, the reverse process as an animated GIF, scatter plots and
 * loss curves (cairo), CSV of points, and the raw float32 sample file.
 *
 * Images come in as float32 (n, c, h, w) in [-1, 1] (c = 1 grey or 3 RGB); values are clamped
 * and rescaled to 0..255 as round((v + 1) * 127.5). Every file is written atomically (a temporary
 * file beside the target, fsync, rename), so a failed write never leaves a half file in place.
 * Errors follow diffusion/error.h: 0 on success, -1 after dd_error() naming the file.
 *
 * The library holds the stb_image, stb_image_write and stb_image_resize implementations; code
 * linking to it includes <stb_image*.h> without defining STB_*_IMPLEMENTATION. */
#ifndef DIFFUSION_IMAGE_H
#define DIFFUSION_IMAGE_H

#include <stdint.h>
#include <stdio.h>

#include "diffusion/atomic_file.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- image grids */
/* Grid geometry: cells of (h * scale) x (w * scale) pixels, `DD_GRID_BORDER` grey pixels around
 * and between cells:  width = cols * w * scale + (cols + 1) * border, likewise height.
 * rows or cols 0: chosen from n (cols = ceil(sqrt(n)), rows = ceil(n / cols), or the missing
 * one from the given one). scale 0 means 1. Cells past n stay border grey. */
#define DD_GRID_BORDER 2
#define DD_GRID_BORDER_VALUE 128
int dd_grid_layout(int n, int *rows, int *cols);
void dd_grid_dims(int h, int w, int rows, int cols, int scale, int *grid_w, int *grid_h);
/* Render into out (grid_h, grid_w, c) u8, rows x cols of the first n images. */
int dd_grid_render(uint8_t *out, const float *imgs, int n, int c, int h, int w, int rows, int cols,
                   int scale);
/* PNG of the grid. imgs: (n, c, h, w) in [-1, 1]. */
int dd_write_png_grid(const char *path, const float *imgs, int n, int c, int h, int w, int rows,
                      int cols, int scale);
/* A single u8 picture (h, w, c) as PNG, c in 1..4. */
int dd_write_png_u8(const char *path, const uint8_t *px, int w, int h, int c);

/* ---------------------------------------------------------------- animated GIF */
/* The reverse process, one frame per call: the x_t grid on the left and the x0-estimate grid on
 * the right (as DenoisingDiffusion.jl shows it), each under a caption line, and an optional
 * frame caption (e.g. "t = 37") at the top. Looped forever; the last frame is held for
 * hold_last_cs centiseconds. Grey images give a grey palette; RGB frames are quantised to 256
 * colours each (giflib's GifQuantizeBuffer). */
typedef struct dd_reverse_gif dd_reverse_gif;
/* n images of (c, h, w) per frame, laid out rows x cols (0 = auto), upscaled by `scale`;
 * delay_cs: centiseconds per frame. */
int dd_reverse_gif_open(dd_reverse_gif **g, const char *path, int n, int c, int h, int w, int rows,
                        int cols, int scale, int delay_cs, int hold_last_cs);
/* xt, x0: (n, c, h, w) in [-1, 1]; x0 may be NULL (its half then stays blank). caption may be
 * NULL. */
int dd_reverse_gif_frame(dd_reverse_gif *g, const float *xt, const float *x0, const char *caption);
/* Writes the held last frame and commits the file; frees g either way. */
int dd_reverse_gif_close(dd_reverse_gif *g);
/* Discard: frees g and removes the temporary file. */
void dd_reverse_gif_abort(dd_reverse_gif *g);
/* Whole animation at once: xt, x0 (frames, n, c, h, w); x0 may be NULL; captions may be NULL
 * (else frames strings). */
int dd_write_reverse_gif(const char *path, const float *xt, const float *x0, int frames, int n,
                         int c, int h, int w, int rows, int cols, int scale, int delay_cs,
                         const char *const *captions);
/* Pixel size of each frame of such a GIF. */
void dd_reverse_gif_dims(int n, int h, int w, int rows, int cols, int scale, int *frame_w,
                         int *frame_h);

/* ---------------------------------------------------------------- plots (cairo) */
typedef struct dd_plot_opts {
    const char *title;  /* NULL: none */
    const char *xlabel; /* NULL: none ("x" for scatter, "step" for loss) */
    const char *ylabel;
    int width, height;  /* pixels */
    int log_y;          /* lines / loss: -1 auto (log when all > 0 and max/min > 30), 0, 1 */
    /* Axis ranges; lo == hi means automatic (data range plus a margin, on nice ticks). */
    double xmin, xmax, ymin, ymax;
    const char *const *class_names; /* scatter legend, num_classes entries; NULL: "class k" */
    int num_classes;                /* scatter: > 0 draws a legend */
} dd_plot_opts;
static inline dd_plot_opts dd_plot_opts_default(void) {
    dd_plot_opts o = {NULL, NULL, NULL, 640, 480, -1, 0, 0, 0, 0, NULL, 0};
    return o;
}
/* xy: (n, 2) points; labels (n) in [0, 16) or NULL: colour per class. Same aspect on both axes
 * when the ranges are automatic. */
int dd_plot_scatter(const char *path, const float *xy, const int32_t *labels, int64_t n,
                    const dd_plot_opts *opts);
/* One line series: n points (x[i], y[i]); markers draws a dot at each point. */
typedef struct dd_series {
    const char *name; /* legend entry */
    const float *x, *y;
    int64_t n;
    int markers;
} dd_series;
int dd_plot_lines(const char *path, const dd_series *s, int ns, const dd_plot_opts *opts);
/* Loss curves: batch loss (n_batch points at x = batch_x, e.g. step or fractional epoch) and
 * validation loss (n_val points at val_x, same unit; may be 0). */
int dd_plot_loss(const char *path, const float *batch_x, const float *batch_loss, int64_t n_batch,
                 const float *val_x, const float *val_loss, int64_t n_val,
                 const dd_plot_opts *opts);

/* CSV of points: header "x,y" or "x,y,label", one point a line. xy: (n, 2). */
int dd_write_points_csv(const char *path, const float *xy, const int32_t *labels, int64_t n);

/* CSV of float columns (e.g. a loss history): a header of `names`, then n rows of ncols values;
 * cols[j] points to column j (n floats). A NaN is written as an empty field. */
int dd_write_csv_columns(const char *path, const char *const *names, const float *const *cols,
                         int ncols, int64_t n);

/* ---------------------------------------------------------------- raw sample files */
/* Magic "DDRAW1\0\0", then N, C, H, W as little-endian u32, then N*C*H*W float32 little-endian. */
#define DD_RAW_MAGIC "DDRAW1\0\0"
int dd_raw_write(const char *path, const float *x, uint32_t n, uint32_t c, uint32_t h, uint32_t w);
/* *x (n, c, h, w) allocated here, caller frees; dims = {N, C, H, W}. Checks magic and exact length. */
int dd_raw_read(const char *path, float **x, uint32_t dims[4]);

#ifdef __cplusplus
}
#endif
#endif
