/* The reverse process as an animated GIF (giflib): each frame shows the x_t grid on the left and
 * the x0-estimate grid on the right under a caption strip, as DenoisingDiffusion.jl shows it.
 * Text is drawn with cairo; grey sets keep an exact 256-grey palette, RGB frames are quantised
 * per frame. Frames are written as they come; one is held back so the last can get a longer
 * delay. */
#include <cairo.h>
#include <gif_lib.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion/error.h"
#include "diffusion/image.h"

#define GAP 8      /* pixels between the two grids */
#define HEADER 36  /* caption strip: frame caption line, then the panel titles */

struct dd_reverse_gif {
    dd_atomic_file af;
    GifFileType *gif;
    int n, c, h, w, rows, cols, scale, delay_cs, hold_last_cs;
    int gw, gh, fw, fh;          /* grid and frame sizes */
    uint8_t *grid;               /* (gh, gw, c) scratch */
    uint8_t *r, *g, *b;          /* (fh, fw) planes of the frame being built */
    GifByteType *pending;        /* (fh, fw) palette indices of the held-back frame */
    GifColorType pending_map[256];
    int have_pending;
    int frames;
};

void dd_reverse_gif_dims(int n, int h, int w, int rows, int cols, int scale, int *frame_w,
                         int *frame_h) {
    dd_grid_layout(n, &rows, &cols);
    int gw, gh;
    dd_grid_dims(h, w, rows, cols, scale, &gw, &gh);
    *frame_w = 2 * gw + GAP;
    *frame_h = gh + HEADER;
}

static int gif_write(GifFileType *gf, const GifByteType *data, int len) {
    return (int)fwrite(data, 1, (size_t)len, (FILE *)gf->UserData);
}

static int gif_fail(dd_reverse_gif *g, const char *what, int err) {
    return dd_error("%s: %s failed: %s", g->af.path, what, GifErrorString(err));
}

static void free_gif(dd_reverse_gif *g) {
    free(g->grid), free(g->r), free(g->g), free(g->b), free(g->pending);
    free(g);
}

void dd_reverse_gif_abort(dd_reverse_gif *g) {
    if (!g) return;
    if (g->gif) EGifCloseFile(g->gif, NULL);
    dd_atomic_abort(&g->af);
    free_gif(g);
}

int dd_reverse_gif_open(dd_reverse_gif **out, const char *path, int n, int c, int h, int w,
                        int rows, int cols, int scale, int delay_cs, int hold_last_cs) {
    *out = NULL;
    if (c != 1 && c != 3) return dd_error("%s: %d channels (1 or 3 expected)", path, c);
    if (h < 1 || w < 1) return dd_error("%s: bad image size %d x %d", path, h, w);
    if (dd_grid_layout(n, &rows, &cols) != 0) return dd_error_prefix("%s", path);
    if (scale < 1) scale = 1;
    dd_reverse_gif *g = calloc(1, sizeof *g);
    if (!g) return dd_error("out of memory");
    g->n = n, g->c = c, g->h = h, g->w = w, g->rows = rows, g->cols = cols, g->scale = scale;
    g->delay_cs = delay_cs < 0 ? 0 : delay_cs;
    g->hold_last_cs = hold_last_cs < 0 ? g->delay_cs : hold_last_cs;
    dd_grid_dims(h, w, rows, cols, scale, &g->gw, &g->gh);
    g->fw = 2 * g->gw + GAP;
    g->fh = g->gh + HEADER;
    if (g->fw > 65535 || g->fh > 65535) {
        int rc = dd_error("%s: frame %d x %d too large for GIF", path, g->fw, g->fh);
        free_gif(g);
        return rc;
    }
    size_t np = (size_t)g->fw * g->fh;
    g->grid = malloc((size_t)g->gw * g->gh * c);
    g->r = malloc(np), g->g = malloc(np), g->b = malloc(np), g->pending = malloc(np);
    if (!g->grid || !g->r || !g->g || !g->b || !g->pending) {
        free_gif(g);
        return dd_error("%s: out of memory", path);
    }
    if (dd_atomic_open(&g->af, path) != 0) {
        free_gif(g);
        return -1;
    }
    int err = 0;
    g->gif = EGifOpen(g->af.f, gif_write, &err);
    if (!g->gif) {
        int rc = gif_fail(g, "EGifOpen", err);
        dd_reverse_gif_abort(g);
        return rc;
    }
    EGifSetGifVersion(g->gif, true); /* GIF89a: delays and looping */
    GifColorType grey[256];
    for (int i = 0; i < 256; i++) grey[i].Red = grey[i].Green = grey[i].Blue = (GifByteType)i;
    ColorMapObject *map = GifMakeMapObject(256, grey);
    int rc = map ? EGifPutScreenDesc(g->gif, g->fw, g->fh, 8, 255, map) : GIF_ERROR;
    GifFreeMapObject(map);
    if (rc == GIF_ERROR) {
        rc = gif_fail(g, "writing the screen descriptor", g->gif->Error);
        dd_reverse_gif_abort(g);
        return rc;
    }
    /* NETSCAPE2.0 application extension: loop count 0 = forever */
    static const GifByteType loop[3] = {1, 0, 0};
    if (EGifPutExtensionLeader(g->gif, APPLICATION_EXT_FUNC_CODE) == GIF_ERROR ||
        EGifPutExtensionBlock(g->gif, 11, "NETSCAPE2.0") == GIF_ERROR ||
        EGifPutExtensionBlock(g->gif, 3, loop) == GIF_ERROR ||
        EGifPutExtensionTrailer(g->gif) == GIF_ERROR) {
        rc = gif_fail(g, "writing the loop extension", g->gif->Error);
        dd_reverse_gif_abort(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* Write the held-back frame with the given delay. */
static int put_pending(dd_reverse_gif *g, int delay_cs) {
    GraphicsControlBlock gcb = {DISPOSE_DO_NOT, false, delay_cs, NO_TRANSPARENT_COLOR};
    GifByteType ext[4];
    size_t len = EGifGCBToExtension(&gcb, ext);
    ColorMapObject *map = NULL;
    if (g->c == 3) {
        map = GifMakeMapObject(256, g->pending_map);
        if (!map) return dd_error("%s: out of memory", g->af.path);
    }
    int rc = EGifPutExtension(g->gif, GRAPHICS_EXT_FUNC_CODE, (int)len, ext);
    if (rc != GIF_ERROR) rc = EGifPutImageDesc(g->gif, 0, 0, g->fw, g->fh, false, map);
    for (int y = 0; rc != GIF_ERROR && y < g->fh; y++)
        rc = EGifPutLine(g->gif, g->pending + (size_t)y * g->fw, g->fw);
    GifFreeMapObject(map);
    if (rc == GIF_ERROR) return gif_fail(g, "writing a frame", g->gif->Error);
    g->have_pending = 0;
    return 0;
}

/* Grid pixels (gh, gw, c) into the cairo surface at (x0, y0). */
static void blit_grid(uint8_t *data, int stride, const uint8_t *grid, int gw, int gh, int c, int x0,
                      int y0) {
    for (int y = 0; y < gh; y++) {
        uint32_t *row = (uint32_t *)(data + (size_t)(y0 + y) * stride) + x0;
        for (int x = 0; x < gw; x++) {
            const uint8_t *p = grid + ((size_t)y * gw + x) * c;
            uint32_t r = p[0], gg = c == 3 ? p[1] : p[0], b = c == 3 ? p[2] : p[0];
            row[x] = r << 16 | gg << 8 | b;
        }
    }
}

/* Centred text, or `brief` instead when `s` is wider than max_w, or nothing when both are. */
static void centred_text(cairo_t *cr, const char *s, const char *brief, double cx, double top,
                         double max_w) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    if (e.width > max_w && brief) {
        s = brief;
        cairo_text_extents(cr, s, &e);
    }
    if (e.width > max_w) return;
    cairo_move_to(cr, cx - e.x_bearing - e.width / 2, top - e.y_bearing);
    cairo_show_text(cr, s);
}

int dd_reverse_gif_frame(dd_reverse_gif *g, const float *xt, const float *x0, const char *caption) {
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, g->fw, g->fh);
    if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) {
        cairo_surface_destroy(s);
        return dd_error("%s: cairo surface failed", g->af.path);
    }
    cairo_t *cr = cairo_create(s);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_surface_flush(s);
    uint8_t *data = cairo_image_surface_get_data(s);
    int stride = cairo_image_surface_get_stride(s);
    int rc = dd_grid_render(g->grid, xt, g->n, g->c, g->h, g->w, g->rows, g->cols, g->scale);
    if (rc == 0) blit_grid(data, stride, g->grid, g->gw, g->gh, g->c, 0, HEADER);
    if (rc == 0 && x0) {
        rc = dd_grid_render(g->grid, x0, g->n, g->c, g->h, g->w, g->rows, g->cols, g->scale);
        if (rc == 0) blit_grid(data, stride, g->grid, g->gw, g->gh, g->c, g->gw + GAP, HEADER);
    }
    cairo_surface_mark_dirty(s);
    if (rc == 0) {
        cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_set_font_size(cr, 12);
        if (caption) centred_text(cr, caption, NULL, g->fw / 2.0, 3, g->fw);
        cairo_set_font_size(cr, 11);
        centred_text(cr, "x_t", NULL, g->gw / 2.0, 20, g->gw);
        if (x0) centred_text(cr, "x0 estimate", "x0", g->gw + GAP + g->gw / 2.0, 20, g->gw);
        cairo_surface_flush(s);
    }
    if (rc == 0) { /* split into planes; grey frames are grey everywhere (text too) */
        for (int y = 0; y < g->fh; y++) {
            const uint32_t *row = (const uint32_t *)(data + (size_t)y * stride);
            for (int x = 0; x < g->fw; x++) {
                size_t i = (size_t)y * g->fw + x;
                g->r[i] = (uint8_t)(row[x] >> 16), g->g[i] = (uint8_t)(row[x] >> 8),
                g->b[i] = (uint8_t)row[x];
            }
        }
    }
    cairo_destroy(cr);
    cairo_surface_destroy(s);
    if (rc != 0) return dd_error_prefix("%s", g->af.path);
    if (g->have_pending) DD_TRY(put_pending(g, g->delay_cs));
    size_t np = (size_t)g->fw * g->fh;
    if (g->c == 1) {
        /* Anti-aliased black text on white stays grey; the green channel is the grey level. */
        memcpy(g->pending, g->g, np);
    } else {
        int size = 256;
        if (GifQuantizeBuffer((unsigned)g->fw, (unsigned)g->fh, &size, g->r, g->g, g->b, g->pending,
                              g->pending_map) == GIF_ERROR)
            return dd_error("%s: colour quantisation failed", g->af.path);
        for (int i = size; i < 256; i++) g->pending_map[i] = g->pending_map[0];
    }
    g->have_pending = 1;
    g->frames++;
    return 0;
}

int dd_reverse_gif_close(dd_reverse_gif *g) {
    if (!g) return dd_error("no GIF to close");
    int rc = 0;
    if (g->frames == 0) rc = dd_error("%s: an animation needs at least one frame", g->af.path);
    if (rc == 0 && g->have_pending) rc = put_pending(g, g->hold_last_cs);
    int err = 0;
    if (EGifCloseFile(g->gif, &err) == GIF_ERROR && rc == 0)
        rc = dd_error("%s: closing the GIF failed: %s", g->af.path, GifErrorString(err));
    g->gif = NULL;
    if (rc == 0) rc = dd_atomic_commit(&g->af);
    else dd_atomic_abort(&g->af);
    free_gif(g);
    return rc;
}

int dd_write_reverse_gif(const char *path, const float *xt, const float *x0, int frames, int n,
                         int c, int h, int w, int rows, int cols, int scale, int delay_cs,
                         const char *const *captions) {
    if (frames < 1) return dd_error("%s: an animation needs at least one frame", path);
    dd_reverse_gif *g;
    DD_TRY(dd_reverse_gif_open(&g, path, n, c, h, w, rows, cols, scale, delay_cs, 4 * delay_cs + 100));
    size_t per = (size_t)n * c * h * w; /* floats per frame */
    for (int f = 0; f < frames; f++)
        if (dd_reverse_gif_frame(g, xt + f * per, x0 ? x0 + f * per : NULL,
                                 captions ? captions[f] : NULL) != 0) {
            dd_reverse_gif_abort(g);
            return -1;
        }
    return dd_reverse_gif_close(g);
}
