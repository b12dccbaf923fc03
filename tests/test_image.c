/* Picture output: the PNG grid decodes with the expected size and pixels, the reverse-process GIF
 * decodes (DGifSlurp) with the expected frames, delay and pixels, scatter and loss PNGs decode
 * with the expected size and show drawn content, the points CSV and the raw sample file round
 * trip, and writes into a missing folder fail cleanly.
 *
 * The pictures are left in test_image_out/ of the build folder for a person to look at. */
#include <gif_lib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb_image.h> /* implementation in the library (host/data_images.c) */

#include "diffusion/data.h"
#include "diffusion/error.h"
#include "diffusion/image.h"
#include "testutil.h"

#define OUT "test_image_out"

#define CHECK_MSG(word)                                                                           \
    CHECKF(strstr(dd_error_message(), (word)) != NULL, "message \"%s\" lacks \"%s\"",             \
           dd_error_message(), (word))

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* No temporary files left beside the outputs. */
static int no_temporaries(void) { return tu_count_temporaries(OUT) == 0; }

/* Pixels that are not (near) white in an RGB(A) picture: something was drawn. */
static long drawn_pixels(const uint8_t *px, int w, int h, int c) {
    long k = 0;
    for (long i = 0; i < (long)w * h; i++)
        if (px[i * c] < 200 || px[i * c + 1] < 200 || px[i * c + 2] < 200) k++;
    return k;
}

/* Pixels near a given colour. */
static long pixels_near(const uint8_t *px, int w, int h, int c, int r, int g, int b, int tol) {
    long k = 0;
    for (long i = 0; i < (long)w * h; i++)
        if (abs(px[i * c] - r) <= tol && abs(px[i * c + 1] - g) <= tol && abs(px[i * c + 2] - b) <= tol)
            k++;
    return k;
}

static void test_grid(void) {
    /* 5 grey images of 4 x 3, image k filled with a ramp; one value out of range each way */
    enum { N = 5, H = 4, W = 3 };
    float img[N * H * W];
    for (int i = 0; i < N * H * W; i++) img[i] = -1.0f + 2.0f * (float)(i % 12) / 11.0f;
    img[0] = -3.0f; /* clamped to 0 */
    img[1] = 2.0f;  /* clamped to 255 */
    CHECK_OK(dd_write_png_grid(OUT "/grid_grey.png", img, N, 1, H, W, 0, 0, 2));
    int rows = 0, cols = 0, gw, gh;
    CHECK_OK(dd_grid_layout(N, &rows, &cols));
    CHECK(rows == 2 && cols == 3);
    dd_grid_dims(H, W, rows, cols, 2, &gw, &gh);
    CHECK(gw == 3 * 6 + 4 * DD_GRID_BORDER && gh == 2 * 8 + 3 * DD_GRID_BORDER);
    int w, h, c;
    uint8_t *px = stbi_load(OUT "/grid_grey.png", &w, &h, &c, 0);
    CHECK(px != NULL);
    if (px) {
        CHECK(w == gw && h == gh && c == 1);
        const int B = DD_GRID_BORDER;
        CHECK(px[0] == DD_GRID_BORDER_VALUE);                 /* border */
        CHECK(px[B * w + B] == 0 && px[(B + 1) * w + B + 1] == 0); /* img 0 (0,0) clamped, x2 */
        CHECK(px[B * w + B + 2] == 255);                       /* img 0 (0,1) clamped */
        /* image 4 = row 1, col 1; its pixel (y 2, x 1) is value index 2*3+1 = 7 */
        int x0 = B + 1 * (W * 2 + B), y0 = B + 1 * (H * 2 + B);
        uint8_t want = (uint8_t)lrintf((-1.0f + 2.0f * 7 / 11.0f + 1.0f) * 127.5f);
        CHECK(px[(y0 + 4) * w + x0 + 2] == want && px[(y0 + 5) * w + x0 + 3] == want);
        /* the empty sixth cell stays border grey */
        int x5 = B + 2 * (W * 2 + B);
        CHECK(px[(y0 + 1) * w + x5 + 1] == DD_GRID_BORDER_VALUE);
        stbi_image_free(px);
    }
    /* RGB, fixed layout 1 x 2: channel planes land in the right colour */
    float rgb[2 * 3 * 2 * 2];
    for (int k = 0; k < 2; k++)
        for (int ch = 0; ch < 3; ch++)
            for (int i = 0; i < 4; i++) rgb[(k * 3 + ch) * 4 + i] = ch == k ? 1.0f : -1.0f;
    CHECK_OK(dd_write_png_grid(OUT "/grid_rgb.png", rgb, 2, 3, 2, 2, 1, 2, 1));
    px = stbi_load(OUT "/grid_rgb.png", &w, &h, &c, 0);
    CHECK(px && w == 2 * 2 + 3 * DD_GRID_BORDER && h == 2 + 2 * DD_GRID_BORDER && c == 3);
    if (px) {
        const uint8_t *p0 = px + (DD_GRID_BORDER * w + DD_GRID_BORDER) * 3;
        const uint8_t *p1 = px + (DD_GRID_BORDER * w + 2 * DD_GRID_BORDER + 2) * 3;
        CHECK(p0[0] == 255 && p0[1] == 0 && p0[2] == 0);
        CHECK(p1[0] == 0 && p1[1] == 255 && p1[2] == 0);
        stbi_image_free(px);
    }
    /* errors */
    CHECK(dd_write_png_grid(OUT "/x.png", img, N, 2, H, W, 0, 0, 1) == -1);
    CHECK(dd_write_png_grid("no_such_folder_dd/grid.png", img, N, 1, H, W, 0, 0, 1) == -1);
    CHECK_MSG("cannot write");
    CHECK_MSG("no_such_folder_dd/grid.png");
    CHECK(!exists("no_such_folder_dd"));
}

/* A grid of real pictures to look at: Fashion-MNIST when installed, else rings. */
static void picture_grid(void) {
    dd_dataset d;
    dd_data_opts o = dd_data_opts_default();
    o.limit = 24;
    if (dd_dataset_load(&d, "fashion-mnist", &o) == 0) {
        CHECK_OK(dd_write_png_grid(OUT "/fashion_grid.png", d.x, 24, 1, 28, 28, 4, 6, 3));
        dd_dataset_free(&d);
        return;
    }
    float *x = malloc(12 * 28 * 28 * sizeof(float));
    for (int k = 0; k < 12; k++)
        for (int i = 0; i < 28 * 28; i++) {
            double r = hypot(i / 28 - 13.5, i % 28 - 13.5);
            x[k * 784 + i] = (float)cos(r * (k + 1) * 0.15);
        }
    CHECK_OK(dd_write_png_grid(OUT "/rings_grid.png", x, 12, 1, 28, 28, 3, 4, 3));
    free(x);
}

static void test_gif(void) {
    enum { F = 4, N = 6, H = 5, W = 4 };
    float *xt = malloc(sizeof(float) * F * N * H * W), *x0 = malloc(sizeof(float) * F * N * H * W);
    for (int f = 0; f < F; f++)
        for (int i = 0; i < N * H * W; i++) {
            xt[f * N * H * W + i] = -1.0f + 2.0f * (float)f / (F - 1); /* frame f: flat grey */
            x0[f * N * H * W + i] = (i % 2) ? 1.0f : -1.0f;
        }
    const char *caps[F] = {"t = 3", "t = 2", "t = 1", "t = 0"};
    CHECK_OK(dd_write_reverse_gif(OUT "/reverse_grey.gif", xt, x0, F, N, 1, H, W, 0, 0, 3, 10, caps));
    int fw, fh;
    dd_reverse_gif_dims(N, H, W, 0, 0, 3, &fw, &fh);
    int err = 0;
    GifFileType *g = DGifOpenFileName(OUT "/reverse_grey.gif", &err);
    CHECKF(g != NULL, "DGifOpenFileName: %s", GifErrorString(err));
    if (g) {
        CHECK(DGifSlurp(g) == GIF_OK);
        CHECK(g->ImageCount == F);
        CHECK(g->SWidth == fw && g->SHeight == fh);
        GraphicsControlBlock gcb;
        CHECK(DGifSavedExtensionToGCB(g, 0, &gcb) == GIF_OK && gcb.DelayTime == 10);
        CHECK(DGifSavedExtensionToGCB(g, F - 1, &gcb) == GIF_OK && gcb.DelayTime > 10); /* held */
        int loop = 0;
        for (int e = 0; e < g->SavedImages[0].ExtensionBlockCount; e++) {
            ExtensionBlock *b = &g->SavedImages[0].ExtensionBlocks[e];
            if (b->Function == APPLICATION_EXT_FUNC_CODE && b->ByteCount == 11 &&
                memcmp(b->Bytes, "NETSCAPE2.0", 11) == 0)
                loop = 1;
        }
        CHECK(loop);
        /* pixel in the first cell of x_t: frame f grey level; right half shows the x0 pattern */
        ColorMapObject *map = g->SColorMap;
        int rows = 0, cols = 0;
        dd_grid_layout(N, &rows, &cols);
        int y = fh - (H * 3 + DD_GRID_BORDER) + 1, x = DD_GRID_BORDER; /* bottom-left cell */
        for (int f = 0; f < F && g->ImageCount == F; f++) {
            SavedImage *im = &g->SavedImages[f];
            ColorMapObject *m = im->ImageDesc.ColorMap ? im->ImageDesc.ColorMap : map;
            GifByteType idx = im->RasterBits[y * fw + x + 1];
            int want = (int)lrintf((float)f / (F - 1) * 255.0f);
            CHECKF(abs(m->Colors[idx].Red - want) <= 1, "frame %d x_t grey %d, want %d", f,
                   m->Colors[idx].Red, want);
        }
        int gw, gh;
        dd_grid_dims(H, W, rows, cols, 3, &gw, &gh);
        SavedImage *im = &g->SavedImages[0];
        int xr = gw + 8 + DD_GRID_BORDER; /* first x0 cell, pixel (.., 0): index even -> black */
        CHECK(map->Colors[im->RasterBits[y * fw + xr]].Red == 0);
        CHECK(map->Colors[im->RasterBits[y * fw + xr + 3]].Red == 255); /* next source pixel */
        DGifCloseFile(g, &err);
    }
    /* RGB frames, streamed, without x0 */
    dd_reverse_gif *rg;
    CHECK_OK(dd_reverse_gif_open(&rg, OUT "/reverse_rgb.gif", 2, 3, 8, 8, 1, 2, 2, 5, 50));
    float fr[2 * 3 * 64];
    for (int f = 0; f < 3 && rg; f++) {
        for (int i = 0; i < 2 * 3 * 64; i++) fr[i] = (float)sin(0.1 * i + f);
        CHECK_OK(dd_reverse_gif_frame(rg, fr, NULL, NULL));
    }
    if (rg) CHECK_OK(dd_reverse_gif_close(rg));
    g = DGifOpenFileName(OUT "/reverse_rgb.gif", &err);
    CHECK(g != NULL);
    if (g) {
        CHECK(DGifSlurp(g) == GIF_OK && g->ImageCount == 3);
        DGifCloseFile(g, &err);
    }
    /* unwritable folder */
    CHECK(dd_reverse_gif_open(&rg, "no_such_folder_dd/a.gif", 2, 1, 4, 4, 0, 0, 1, 5, 5) == -1);
    CHECK_MSG("cannot write");
    free(xt), free(x0);
}

static void test_scatter(void) {
    dd_dataset d;
    CHECK_OK(dd_make_2d(&d, "spiral", 3000, 1));
    dd_plot_opts o = dd_plot_opts_default();
    o.title = "spiral (3,000 points)";
    CHECK_OK(dd_plot_scatter(OUT "/scatter_spiral.png", d.x, NULL, d.n, &o));
    int w, h, c;
    uint8_t *px = stbi_load(OUT "/scatter_spiral.png", &w, &h, &c, 3);
    CHECK(px && w == 640 && h == 480);
    if (px) {
        CHECK(pixels_near(px, w, h, 3, 31, 119, 180, 60) > 2000); /* blue points */
        CHECK(drawn_pixels(px, w, h, 3) > 4000);
        stbi_image_free(px);
    }
    dd_dataset_free(&d);
    CHECK_OK(dd_make_2d_conditional(&d, 800, 2));
    static const char *const names[3] = {"spiral", "s-curve", "moons"};
    o = dd_plot_opts_default();
    o.title = "conditional 2-D set";
    o.width = 500, o.height = 420;
    o.class_names = names, o.num_classes = 3;
    CHECK_OK(dd_plot_scatter(OUT "/scatter_classes.png", d.x, d.y, d.n, &o));
    px = stbi_load(OUT "/scatter_classes.png", &w, &h, &c, 3);
    CHECK(px && w == 500 && h == 420);
    if (px) {
        CHECK(pixels_near(px, w, h, 3, 255, 127, 14, 50) > 300); /* orange class 1 */
        CHECK(pixels_near(px, w, h, 3, 44, 160, 44, 50) > 300);  /* green class 2 */
        stbi_image_free(px);
    }
    CHECK_OK(dd_write_points_csv(OUT "/points.csv", d.x, d.y, d.n));
    FILE *f = fopen(OUT "/points.csv", "r");
    CHECK(f != NULL);
    if (f) {
        char line[128];
        int lines = 0, ok = 1;
        CHECK(fgets(line, sizeof line, f) && strcmp(line, "x,y,label\n") == 0);
        float x, y;
        int lab;
        while (fgets(line, sizeof line, f)) {
            ok &= sscanf(line, "%f,%f,%d", &x, &y, &lab) == 3 && x == d.x[2 * lines] &&
                  y == d.x[2 * lines + 1] && lab == d.y[lines];
            lines++;
        }
        fclose(f);
        CHECK(ok && lines == 2400);
    }
    dd_dataset_free(&d);
    CHECK(dd_plot_scatter("no_such_folder_dd/s.png", (const float[]){0, 0}, NULL, 1, NULL) == -1);
    CHECK_MSG("cannot write");
}

static void test_loss(void) {
    enum { S = 3000, E = 10 };
    float *sx = malloc(S * sizeof(float)), *sy = malloc(S * sizeof(float));
    float ex[E], ey[E];
    for (int i = 0; i < S; i++) {
        sx[i] = (float)(i + 1) / 300.0f; /* epochs */
        sy[i] = 0.03f + 0.8f * expf(-(float)i / 200.0f) + 0.01f * (float)sin(i * 1.7) * (float)sin(i * 0.31);
    }
    for (int e = 0; e < E; e++) {
        ex[e] = (float)(e + 1);
        ey[e] = 0.035f + 0.8f * expf(-(float)(e + 1) * 300.0f / 200.0f);
    }
    dd_plot_opts o = dd_plot_opts_default();
    o.xlabel = "epoch";
    CHECK_OK(dd_plot_loss(OUT "/loss.png", sx, sy, S, ex, ey, E, &o));
    int w, h, c;
    uint8_t *px = stbi_load(OUT "/loss.png", &w, &h, &c, 3);
    CHECK(px && w == 640 && h == 480);
    if (px) {
        CHECK(pixels_near(px, w, h, 3, 31, 119, 180, 40) > 300); /* batch loss line */
        CHECK(pixels_near(px, w, h, 3, 255, 127, 14, 40) > 100); /* validation line */
        stbi_image_free(px);
    }
    /* linear axis forced, bigger picture, a single series through dd_plot_lines */
    o.log_y = 0;
    o.width = 800, o.height = 300;
    o.title = "linear";
    dd_series s = {"batch loss", sx, sy, S, 0};
    CHECK_OK(dd_plot_lines(OUT "/loss_linear.png", &s, 1, &o));
    px = stbi_load(OUT "/loss_linear.png", &w, &h, &c, 3);
    CHECK(px && w == 800 && h == 300);
    if (px) stbi_image_free(px);
    /* the history as CSV: step, loss, a column with gaps */
    float steps[3] = {1, 2, 3}, loss[3] = {0.5f, 0.25f, 0.125f}, val[3] = {NAN, NAN, 0.2f};
    const float *cols[3] = {steps, loss, val};
    const char *names[3] = {"step", "loss", "val_loss"};
    CHECK_OK(dd_write_csv_columns(OUT "/loss.csv", names, cols, 3, 3));
    size_t clen;
    char *csv = tu_read_file(OUT "/loss.csv", &clen);
    CHECK(csv && clen == strlen("step,loss,val_loss\n1,0.5,\n2,0.25,\n3,0.125,0.200000003\n") &&
          memcmp(csv, "step,loss,val_loss\n1,0.5,\n2,0.25,\n3,0.125,0.200000003\n", clen) == 0);
    free(csv);
    CHECK(dd_plot_loss(OUT "/none.png", NULL, NULL, 0, NULL, NULL, 0, NULL) == -1);
    CHECK(dd_plot_loss("no_such_folder_dd/l.png", sx, sy, S, NULL, NULL, 0, NULL) == -1);
    CHECK_MSG("cannot write");
    free(sx), free(sy);
}

static void test_raw(void) {
    enum { N = 3, C = 2, H = 4, W = 5 };
    float x[N * C * H * W];
    for (int i = 0; i < N * C * H * W; i++) x[i] = (float)sin(i * 0.7) * 3.0f;
    x[5] = -0.0f, x[6] = 1e-40f; /* bit patterns kept: signed zero, subnormal */
    CHECK_OK(dd_raw_write(OUT "/samples.raw", x, N, C, H, W));
    size_t len;
    uint8_t *b = tu_read_file(OUT "/samples.raw", &len);
    CHECK(b && len == 24 + sizeof x);
    if (b) {
        CHECK(memcmp(b, "DDRAW1\0\0", 8) == 0);
        CHECK(b[8] == 3 && b[9] == 0 && b[12] == 2 && b[16] == 4 && b[20] == 5);
    }
    float *y;
    uint32_t dims[4];
    CHECK_OK(dd_raw_read(OUT "/samples.raw", &y, dims));
    CHECK(dims[0] == N && dims[1] == C && dims[2] == H && dims[3] == W);
    CHECK(y && memcmp(x, y, sizeof x) == 0);
    free(y);
    /* truncated, trailing bytes, wrong magic, missing */
    FILE *f = fopen(OUT "/bad.raw", "wb");
    fwrite(b, 1, len - 3, f);
    fclose(f);
    CHECK(dd_raw_read(OUT "/bad.raw", &y, dims) == -1 && y == NULL);
    CHECK_MSG("truncated");
    f = fopen(OUT "/bad.raw", "wb");
    fwrite(b, 1, len, f);
    fputc(0, f);
    fclose(f);
    CHECK(dd_raw_read(OUT "/bad.raw", &y, dims) == -1);
    CHECK_MSG("trailing");
    b[3] = 'X';
    f = fopen(OUT "/bad.raw", "wb");
    fwrite(b, 1, len, f);
    fclose(f);
    CHECK(dd_raw_read(OUT "/bad.raw", &y, dims) == -1);
    CHECK_MSG("magic");
    remove(OUT "/bad.raw");
    CHECK(dd_raw_read(OUT "/missing.raw", &y, dims) == -1);
    CHECK_MSG("missing.raw");
    CHECK(dd_raw_write("no_such_folder_dd/s.raw", x, N, C, H, W) == -1);
    CHECK_MSG("cannot write");
    free(b);
    /* an existing file is replaced whole */
    CHECK_OK(dd_raw_write(OUT "/samples.raw", x, 1, 1, 1, 2));
    CHECK_OK(dd_raw_read(OUT "/samples.raw", &y, dims));
    CHECK(dims[0] == 1 && dims[3] == 2 && y && y[0] == x[0] && y[1] == x[1]);
    free(y);
}

int main(void) {
    mkdir(OUT, 0755);
    test_grid();
    picture_grid();
    test_gif();
    test_scatter();
    test_loss();
    test_raw();
    CHECK(no_temporaries());
    return tu_finish();
}
