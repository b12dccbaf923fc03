/* Atomic files, image grids as PNG (stb_image_write), CSV of points and the raw sample file.
 * Plots are in plot.c (cairo), the animated GIF in gif.c (giflib). This file holds the library's
 * one stb_image_write implementation. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffusion/error.h"
#include "diffusion/image.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop

/* ---------------------------------------------------------------- grids */
int dd_grid_layout(int n, int *rows, int *cols) {
    if (n < 1) return dd_error("image grid of %d images", n);
    if (*rows < 0 || *cols < 0) return dd_error("image grid: negative rows or columns");
    if (*rows == 0 && *cols == 0) {
        int c = (int)ceil(sqrt((double)n));
        *cols = c;
        *rows = (n + c - 1) / c;
    } else if (*rows == 0) {
        *rows = (n + *cols - 1) / *cols;
    } else if (*cols == 0) {
        *cols = (n + *rows - 1) / *rows;
    }
    return 0;
}

void dd_grid_dims(int h, int w, int rows, int cols, int scale, int *grid_w, int *grid_h) {
    if (scale < 1) scale = 1;
    *grid_w = cols * w * scale + (cols + 1) * DD_GRID_BORDER;
    *grid_h = rows * h * scale + (rows + 1) * DD_GRID_BORDER;
}

static uint8_t to_u8(float v) {
    if (!(v > -1.0f)) return 0; /* also NaN */
    if (v >= 1.0f) return 255;
    return (uint8_t)lrintf((v + 1.0f) * 127.5f);
}

int dd_grid_render(uint8_t *out, const float *imgs, int n, int c, int h, int w, int rows, int cols,
                   int scale) {
    if (c != 1 && c != 3) return dd_error("image grid: %d channels (1 or 3 expected)", c);
    if (h < 1 || w < 1) return dd_error("image grid: bad image size %d x %d", h, w);
    DD_TRY(dd_grid_layout(n, &rows, &cols));
    if (scale < 1) scale = 1;
    int gw, gh;
    dd_grid_dims(h, w, rows, cols, scale, &gw, &gh);
    memset(out, DD_GRID_BORDER_VALUE, (size_t)gw * gh * c);
    int shown = n < rows * cols ? n : rows * cols;
    for (int k = 0; k < shown; k++) {
        const float *img = imgs + (size_t)k * c * h * w; /* (c, h, w) */
        int x0 = DD_GRID_BORDER + (k % cols) * (w * scale + DD_GRID_BORDER);
        int y0 = DD_GRID_BORDER + (k / cols) * (h * scale + DD_GRID_BORDER);
        for (int y = 0; y < h * scale; y++)
            for (int x = 0; x < w * scale; x++) {
                uint8_t *px = out + ((size_t)(y0 + y) * gw + (x0 + x)) * c;
                for (int ch = 0; ch < c; ch++)
                    px[ch] = to_u8(img[((size_t)ch * h + y / scale) * w + x / scale]);
            }
    }
    return 0;
}

static void write_to_file(void *ctx, void *data, int size) {
    FILE *f = ctx;
    fwrite(data, 1, (size_t)size, f);
}

int dd_write_png_u8(const char *path, const uint8_t *px, int w, int h, int c) {
    if (w < 1 || h < 1 || c < 1 || c > 4) return dd_error("%s: bad picture size %d x %d x %d", path, w, h, c);
    dd_atomic_file af;
    DD_TRY(dd_atomic_open(&af, path));
    if (!stbi_write_png_to_func(write_to_file, af.f, w, h, c, px, w * c)) {
        dd_atomic_abort(&af);
        return dd_error("%s: PNG encoding failed", path);
    }
    return dd_atomic_commit(&af);
}

int dd_write_png_grid(const char *path, const float *imgs, int n, int c, int h, int w, int rows,
                      int cols, int scale) {
    if (dd_grid_layout(n, &rows, &cols) != 0) return dd_error_prefix("%s", path);
    int gw, gh;
    dd_grid_dims(h, w, rows, cols, scale, &gw, &gh);
    if (c != 1 && c != 3) return dd_error("%s: %d channels (1 or 3 expected)", path, c);
    uint8_t *buf = malloc((size_t)gw * gh * c); /* (gh, gw, c) */
    if (!buf) return dd_error("%s: out of memory", path);
    int rc = dd_grid_render(buf, imgs, n, c, h, w, rows, cols, scale);
    if (rc == 0) rc = dd_write_png_u8(path, buf, gw, gh, c);
    else dd_error_prefix("%s", path);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- CSV */
int dd_write_points_csv(const char *path, const float *xy, const int32_t *labels, int64_t n) {
    dd_atomic_file af;
    DD_TRY(dd_atomic_open(&af, path));
    fputs(labels ? "x,y,label\n" : "x,y\n", af.f);
    for (int64_t i = 0; i < n; i++) {
        if (labels) fprintf(af.f, "%.9g,%.9g,%d\n", xy[2 * i], xy[2 * i + 1], labels[i]);
        else fprintf(af.f, "%.9g,%.9g\n", xy[2 * i], xy[2 * i + 1]);
    }
    return dd_atomic_commit(&af);
}

int dd_write_csv_columns(const char *path, const char *const *names, const float *const *cols,
                         int ncols, int64_t n) {
    if (ncols < 1) return dd_error("%s: a CSV needs at least one column", path);
    dd_atomic_file af;
    DD_TRY(dd_atomic_open(&af, path));
    for (int j = 0; j < ncols; j++) fprintf(af.f, "%s%s", j ? "," : "", names[j]);
    fputc('\n', af.f);
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < ncols; j++) {
            if (j) fputc(',', af.f);
            if (!isnan(cols[j][i])) fprintf(af.f, "%.9g", cols[j][i]);
        }
        fputc('\n', af.f);
    }
    return dd_atomic_commit(&af);
}

/* ---------------------------------------------------------------- raw sample files */
static void put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int dd_raw_write(const char *path, const float *x, uint32_t n, uint32_t c, uint32_t h, uint32_t w) {
    uint64_t count = (uint64_t)n * c * h * w;
    if (count > ((uint64_t)1 << 40)) return dd_error("%s: sample tensor too large", path);
    dd_atomic_file af;
    DD_TRY(dd_atomic_open(&af, path));
    uint8_t head[24];
    memcpy(head, DD_RAW_MAGIC, 8);
    put_le32(head + 8, n), put_le32(head + 12, c), put_le32(head + 16, h), put_le32(head + 20, w);
    fwrite(head, 1, sizeof head, af.f);
    /* Little-endian on any host: go through bytes in chunks. */
    uint8_t buf[4096];
    for (uint64_t i = 0; i < count;) {
        size_t k = 0;
        for (; k < sizeof buf / 4 && i < count; k++, i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            put_le32(buf + 4 * k, u);
        }
        fwrite(buf, 4, k, af.f);
    }
    return dd_atomic_commit(&af);
}

int dd_raw_read(const char *path, float **x, uint32_t dims[4]) {
    *x = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return dd_error("%s: cannot open: %s", path, strerror(errno));
    uint8_t head[24];
    size_t got = fread(head, 1, sizeof head, f);
    if (got < 8 || memcmp(head, DD_RAW_MAGIC, 8) != 0) {
        fclose(f);
        return dd_error("%s: not a raw sample file (magic \"DDRAW1\" missing)", path);
    }
    if (got < sizeof head) {
        fclose(f);
        return dd_error("%s: truncated header", path);
    }
    uint64_t count = 1;
    for (int i = 0; i < 4; i++) {
        dims[i] = get_le32(head + 8 + 4 * i);
        count *= dims[i];
        if (count > ((uint64_t)1 << 40)) {
            fclose(f);
            return dd_error("%s: dimensions too large", path);
        }
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return dd_error("%s: cannot seek", path);
    }
    long len = ftell(f);
    uint64_t want = 24 + 4 * count;
    if (len < 0 || (uint64_t)len != want) {
        fclose(f);
        return dd_error("%s: file length %ld does not match the header's %u x %u x %u x %u floats "
                        "(%llu bytes expected)%s",
                        path, len, dims[0], dims[1], dims[2], dims[3], (unsigned long long)want,
                        (uint64_t)len < want ? ": truncated" : ": trailing bytes");
    }
    fseek(f, 24, SEEK_SET);
    float *out = malloc((size_t)(count ? count : 1) * sizeof(float)); /* (n, c, h, w) */
    if (!out) {
        fclose(f);
        return dd_error("%s: out of memory", path);
    }
    uint8_t buf[4096];
    for (uint64_t i = 0; i < count;) {
        size_t want_k = (size_t)((count - i) < sizeof buf / 4 ? (count - i) : sizeof buf / 4);
        if (fread(buf, 4, want_k, f) != want_k) {
            free(out);
            fclose(f);
            return dd_error("%s: read error", path);
        }
        for (size_t k = 0; k < want_k; k++, i++) {
            uint32_t u = get_le32(buf + 4 * k);
            memcpy(&out[i], &u, 4);
        }
    }
    fclose(f);
    *x = out;
    return 0;
}
