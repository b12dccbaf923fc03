/* Folders of images (PNG, JPEG, ...), decoded by stb_image and resized by stb_image_resize.
 * This file holds the one stb_image and stb_image_resize implementation of the library: other
 * files (the CLI, tests) include the headers without STB_*_IMPLEMENTATION and link to these. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "diffusion/data.h"
#include "diffusion/error.h"

/* Third-party single-file libraries: their own warnings are not ours to fix. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmisleading-indentation"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
#pragma GCC diagnostic pop

static int has_image_ext(const char *name) {
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga"};
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
        if (strcasecmp(dot, ext[i]) == 0) return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* Sorted names of the image files in dir. */
static int list_images(const char *dir, char ***names_out, size_t *count) {
    *names_out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return dd_error("image folder %s cannot be opened", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !has_image_ext(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) {
                closedir(d);
                free_names(names, n);
                return dd_error("out of memory listing %s", dir);
            }
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) {
            closedir(d);
            free_names(names, n);
            return dd_error("out of memory listing %s", dir);
        }
        n++;
    }
    closedir(d);
    if (n == 0) {
        free(names);
        return dd_error("image folder %s holds no images (.png, .jpg, .jpeg, .bmp, .gif, .tga)",
                        dir);
    }
    qsort(names, n, sizeof *names, cmp_str);
    *names_out = names;
    *count = n;
    return 0;
}

int dd_load_image_folder(dd_dataset *out, const char *dir, int channels, int height, int width,
                         int64_t limit) {
    memset(out, 0, sizeof *out);
    if (channels != 1 && channels != 3)
        return dd_error("image folder %s: channels must be 1 (grey) or 3 (RGB), not %d", dir,
                        channels);
    if (height < 1 || width < 1 || height > 4096 || width > 4096)
        return dd_error("image folder %s: bad target size %d x %d", dir, height, width);
    char **names;
    size_t count;
    DD_TRY(list_images(dir, &names, &count));
    int64_t n = (int64_t)count;
    if (limit > 0 && limit < n) n = limit;
    int64_t per = (int64_t)channels * height * width;
    out->x = malloc((size_t)(n * per) * sizeof(float)); /* (n, channels, height, width) */
    unsigned char *rs = malloc((size_t)per);            /* (height, width, channels) resized */
    size_t plen = strlen(dir) + 2;
    char *path = NULL;
    if (!out->x || !rs) {
        dd_error("out of memory loading %s", dir);
        goto fail;
    }
    for (int64_t i = 0; i < n; i++) {
        free(path);
        path = malloc(plen + strlen(names[i]));
        if (!path) {
            dd_error("out of memory");
            goto fail;
        }
        sprintf(path, "%s/%s", dir, names[i]);
        int iw, ih, ic;
        unsigned char *px = stbi_load(path, &iw, &ih, &ic, channels); /* (ih, iw, channels) */
        if (!px) {
            dd_error("%s: cannot decode image: %s", path, stbi_failure_reason());
            goto fail;
        }
        int ok;
        if (iw == width && ih == height) {
            memcpy(rs, px, (size_t)per);
            ok = 1;
        } else {
            ok = stbir_resize_uint8(px, iw, ih, 0, rs, width, height, 0, channels);
        }
        stbi_image_free(px);
        if (!ok) {
            dd_error("%s: resizing %d x %d to %d x %d failed", path, iw, ih, width, height);
            goto fail;
        }
        /* HWC u8 -> CHW in [-1, 1] */
        float *dst = out->x + i * per;
        for (int ch = 0; ch < channels; ch++)
            for (int p = 0; p < height * width; p++)
                dst[(int64_t)ch * height * width + p] = (float)rs[p * channels + ch] / 127.5f - 1.0f;
    }
    out->n = n;
    out->c = channels;
    out->h = height;
    out->w = width;
    free(path);
    free(rs);
    free_names(names, count);
    return 0;
fail:
    free(path);
    free(rs);
    free_names(names, count);
    dd_dataset_free(out);
    return -1;
}
