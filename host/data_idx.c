/* MNIST-format IDX files (../shared/FORMATS.md), plain or gzipped: zlib's gzread reads both
 * transparently, so one code path serves both. Every check names the file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "diffusion/data.h"
#include "diffusion/error.h"

/* Read exactly `len` bytes (gzread takes an unsigned int, so go in chunks). Returns the number
 * of bytes read, or -1 on a zlib error (message set). */
static const char *zmsg(const char *m, const char *path);

static int64_t gz_read_all(gzFile g, uint8_t *dst, uint64_t len, const char *path) {
    uint64_t got = 0;
    while (got < len) {
        uint64_t want = len - got;
        if (want > (1u << 30)) want = 1u << 30;
        int r = gzread(g, dst + got, (unsigned)want);
        if (r < 0) {
            int zerr;
            const char *m = gzerror(g, &zerr);
            return dd_error("%s: read error: %s", path, zmsg(m, path));
        }
        if (r == 0) break;
        got += (uint64_t)r;
    }
    /* A truncated gzip stream ends with a zlib error, not a short count, on some zlib versions. */
    int zerr = Z_OK;
    const char *m = gzerror(g, &zerr);
    if (zerr != Z_OK && zerr != Z_STREAM_END)
        return dd_error("%s: read error (truncated or corrupt gzip?): %s", path, zmsg(m, path));
    return (int64_t)got;
}

/* zlib's messages start with the path again; drop it since ours already does. */
static const char *zmsg(const char *m, const char *path) {
    size_t n = strlen(path);
    if (!m) return "zlib error";
    if (strncmp(m, path, n) == 0 && m[n] == ':' && m[n + 1] == ' ') return m + n + 2;
    return m;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int dd_read_idx_file(const char *path, uint8_t **data, int *ndim, uint32_t dims[4]) {
    *data = NULL;
    *ndim = 0;
    gzFile g = gzopen(path, "rb");
    if (!g) return dd_error("%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
    gzbuffer(g, 1 << 17);
    uint8_t head[4 + 4 * 4];
    int64_t got = gz_read_all(g, head, 4, path);
    if (got < 0) goto fail;
    if (got < 4) {
        dd_error("%s: truncated: %lld bytes, shorter than the 4-byte IDX magic", path,
                 (long long)got);
        goto fail;
    }
    if (head[0] != 0 || head[1] != 0 || head[2] != 0x08) {
        dd_error("%s: wrong magic %02x %02x %02x %02x: not an unsigned-byte IDX file "
                 "(expected 00 00 08 <ndim>)",
                 path, head[0], head[1], head[2], head[3]);
        goto fail;
    }
    int nd = head[3];
    if (nd < 1 || nd > 4) {
        dd_error("%s: IDX dimension count %d not in 1..4", path, nd);
        goto fail;
    }
    got = gz_read_all(g, head + 4, 4u * (unsigned)nd, path);
    if (got < 0) goto fail;
    if (got < 4 * nd) {
        dd_error("%s: truncated in the header (%d dimensions announced)", path, nd);
        goto fail;
    }
    uint64_t total = 1;
    for (int i = 0; i < nd; i++) {
        dims[i] = be32(head + 4 + 4 * i);
        total *= dims[i];
        if (total > ((uint64_t)1 << 34)) {
            dd_error("%s: dimensions too large", path);
            goto fail;
        }
    }
    uint8_t *buf = malloc(total ? total : 1);
    if (!buf) {
        dd_error("%s: out of memory for %llu bytes", path, (unsigned long long)total);
        goto fail;
    }
    got = gz_read_all(g, buf, total, path);
    if (got < 0) {
        free(buf);
        goto fail;
    }
    uint64_t header_len = 4 + 4 * (uint64_t)nd;
    if ((uint64_t)got < total) {
        dd_error("%s: truncated: the header announces %llu data bytes (%llu in all) but the "
                 "file holds %llu",
                 path, (unsigned long long)total, (unsigned long long)(header_len + total),
                 (unsigned long long)(header_len + (uint64_t)got));
        free(buf);
        goto fail;
    }
    uint8_t extra[64];
    got = gz_read_all(g, extra, sizeof extra, path);
    if (got != 0) {
        if (got > 0)
            dd_error("%s: trailing bytes after the %llu data bytes the header announces "
                     "(the dimensions and file length disagree)",
                     path, (unsigned long long)total);
        free(buf);
        goto fail;
    }
    gzclose(g);
    *data = buf;
    *ndim = nd;
    return 0;
fail:
    gzclose(g);
    return -1;
}

/* dir/name, else dir/name.gz; NULL (with message) when neither exists. Caller frees. */
static char *find_idx_file(const char *dir, const char *name) {
    size_t len = strlen(dir) + strlen(name) + 8;
    char *p = malloc(len);
    if (!p) {
        dd_error("out of memory");
        return NULL;
    }
    struct stat st;
    snprintf(p, len, "%s/%s", dir, name);
    if (stat(p, &st) == 0) return p;
    snprintf(p, len, "%s/%s.gz", dir, name);
    if (stat(p, &st) == 0) return p;
    dd_error("missing data set file %s/%s (or %s.gz)", dir, name, name);
    free(p);
    return NULL;
}

int dd_load_idx(dd_dataset *out, const char *dir, int test_split, int64_t limit) {
    memset(out, 0, sizeof *out);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return dd_error("IDX data set folder %s not found", dir);
    const char *img_name = test_split ? "t10k-images-idx3-ubyte" : "train-images-idx3-ubyte";
    const char *lab_name = test_split ? "t10k-labels-idx1-ubyte" : "train-labels-idx1-ubyte";
    char *img_path = find_idx_file(dir, img_name);
    if (!img_path) return -1;
    char *lab_path = find_idx_file(dir, lab_name);
    if (!lab_path) {
        free(img_path);
        return -1;
    }
    uint8_t *img = NULL, *lab = NULL;
    int ind = 0, lnd = 0, rc = -1;
    uint32_t idims[4] = {0}, ldims[4] = {0};
    if (dd_read_idx_file(img_path, &img, &ind, idims) != 0) goto done;
    if (ind != 3) {
        dd_error("%s: an image file needs 3 dimensions (count, rows, cols), found %d", img_path,
                 ind);
        goto done;
    }
    if (idims[1] == 0 || idims[2] == 0) {
        dd_error("%s: empty image size %u x %u", img_path, idims[1], idims[2]);
        goto done;
    }
    if (dd_read_idx_file(lab_path, &lab, &lnd, ldims) != 0) goto done;
    if (lnd != 1) {
        dd_error("%s: a label file needs 1 dimension (count), found %d", lab_path, lnd);
        goto done;
    }
    if (idims[0] != ldims[0]) {
        dd_error("image and label counts do not match: %s holds %u images, %s holds %u labels",
                 img_path, idims[0], lab_path, ldims[0]);
        goto done;
    }
    if (idims[0] == 0) {
        dd_error("%s: holds no images", img_path);
        goto done;
    }
    int maxlab = 0;
    for (uint32_t i = 0; i < ldims[0]; i++)
        if (lab[i] > maxlab) maxlab = lab[i];
    int64_t n = idims[0];
    if (limit > 0 && limit < n) n = limit;
    int64_t per = (int64_t)idims[1] * idims[2];
    out->x = malloc((size_t)(n * per) * sizeof(float)); /* (n, 1, rows, cols) */
    out->y = malloc((size_t)n * sizeof(int32_t));       /* (n) */
    if (!out->x || !out->y) {
        dd_error("out of memory loading %s", img_path);
        dd_dataset_free(out);
        goto done;
    }
    for (int64_t i = 0; i < n * per; i++) out->x[i] = (float)img[i] / 127.5f - 1.0f;
    for (int64_t i = 0; i < n; i++) out->y[i] = lab[i];
    out->n = n;
    out->c = 1;
    out->h = (int)idims[1];
    out->w = (int)idims[2];
    out->num_classes = maxlab + 1; /* from the whole label file, so a limit does not shrink it */
    rc = 0;
done:
    free(img);
    free(lab);
    free(img_path);
    free(lab_path);
    return rc;
}
