/* safetensors files (../shared/FORMATS.md), read and written as the reference implementation
 * (huggingface/safetensors) does:
 *
 *   bytes [0, 8)      N, the header length, u64 little-endian
 *   bytes [8, 8 + N)  UTF-8 JSON: {"__metadata__": {str: str}, name: {"dtype", "shape",
 *                     "data_offsets": [begin, end)}, ...}, padded with spaces
 *   bytes [8 + N, )   the data buffer; offsets are relative to its start, tensors are
 *                     little-endian, C order, packed back to back without gaps
 *
 * The reader validates everything the reference validates (and a little more: duplicate names,
 * raw control characters) and reports each problem with its own message. Tensor data in a loaded
 * file is generally NOT aligned: copy it out with memcpy (dd_st_copy_f32), never cast the pointer.
 * The writer reproduces the reference's bytes exactly and replaces the target atomically. */
#ifndef DIFFUSION_SAFETENSORS_H
#define DIFFUSION_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "diffusion/atomic_file.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The reference's enum, in its order: the writer sorts tensors by this order, descending. */
typedef enum {
    DD_ST_BOOL,
    DD_ST_F4, /* 4 bits per element */
    DD_ST_F6_E2M3, /* 6 bits */
    DD_ST_F6_E3M2, /* 6 bits */
    DD_ST_U8,
    DD_ST_I8,
    DD_ST_F8_E5M2,
    DD_ST_F8_E4M3,
    DD_ST_F8_E8M0,
    DD_ST_F8_E4M3FNUZ,
    DD_ST_F8_E5M2FNUZ,
    DD_ST_I16,
    DD_ST_U16,
    DD_ST_F16,
    DD_ST_BF16,
    DD_ST_I32,
    DD_ST_U32,
    DD_ST_F32,
    DD_ST_C64,
    DD_ST_F64,
    DD_ST_I64,
    DD_ST_U64,
    DD_ST_DTYPE_COUNT
} dd_st_dtype;

const char *dd_st_dtype_name(dd_st_dtype dt); /* "F32"; "?" when out of range */
int dd_st_dtype_bits(dd_st_dtype dt);         /* bits per element: 4, 6, 8, 16, 32, 64 */
int dd_st_dtype_parse(const char *name, dd_st_dtype *dt); /* 0, or -1 after dd_error */

/* Most dimensions a tensor may have here (the format sets no limit; more is refused). */
#define DD_ST_MAX_DIMS 16
/* The reference refuses larger headers. */
#define DD_ST_MAX_HEADER 100000000u

typedef struct {
    char *key, *value; /* NUL-terminated UTF-8 */
} dd_st_kv;

typedef struct {
    char *name; /* NUL-terminated UTF-8 */
    dd_st_dtype dtype;
    int ndim; /* 0: a scalar */
    uint64_t shape[DD_ST_MAX_DIMS];
    uint64_t numel;          /* product of shape (1 for a scalar, 0 when a dimension is 0) */
    uint64_t begin, end;     /* data_offsets, relative to the data buffer */
    const unsigned char *data; /* end - begin bytes, unaligned; NULL after dd_st_load_header */
} dd_st_tensor;

typedef struct {
    unsigned char *file; /* the whole file (or, from dd_st_load_header, the header only) */
    size_t file_size;    /* the size of the file on disk, in both cases */
    uint64_t header_len; /* N */
    dd_st_tensor *tensors; /* sorted by data offset (the order of the data buffer) */
    int ntensors;
    dd_st_kv *meta; /* "__metadata__" entries in the order of the file */
    int nmeta;
} dd_safetensors;

/* Read and validate a whole file. On failure *st is left empty (safe to dd_st_free) and the
 * message starts with the path. */
int dd_st_load(const char *path, dd_safetensors *st);
/* The same over bytes in memory (copied), for tests and embedded data. */
int dd_st_load_mem(const void *bytes, size_t len, dd_safetensors *st);
/* Read and validate only the header (the file size is checked against the offsets, the data is
 * not read): tensor names, dtypes, shapes and the metadata; tensors[i].data is NULL. */
int dd_st_load_header(const char *path, dd_safetensors *st);
void dd_st_free(dd_safetensors *st);

const dd_st_tensor *dd_st_find(const dd_safetensors *st, const char *name); /* NULL if absent */
const char *dd_st_meta(const dd_safetensors *st, const char *key);          /* NULL if absent */
/* Copy an F32 tensor's values out (n floats; checks the dtype and that numel == n). */
int dd_st_copy_f32(const dd_st_tensor *t, float *out, size_t n);

/* ---------------------------------------------------------------- writing */

typedef struct {
    const char *name;
    dd_st_dtype dtype;
    int ndim;
    const uint64_t *shape; /* ndim values (may be NULL when ndim == 0) */
    const void *data;      /* numel * bits / 8 bytes, little-endian, C order */
} dd_st_entry;

typedef struct {
    const char *key, *value;
} dd_st_pair;

/* Serialise to memory exactly as the reference does: "__metadata__" first (keys in the order
 * given: the reference writes them in hash order, so any order is one it could produce), then
 * the tensors sorted by dtype descending and then by name (bytewise), compact JSON, the header
 * padded with spaces to a multiple of 8. Checks names (UTF-8, unique, not "__metadata__"),
 * dtypes and sizes. *out is malloc'ed; the caller frees it. */
int dd_st_serialize(const dd_st_entry *tensors, int ntensors, const dd_st_pair *meta, int nmeta,
                    unsigned char **out, size_t *len);
/* Write a file atomically: a temporary file beside `path`, written, flushed and fsync'ed, then
 * renamed over `path` (and the folder fsync'ed). On any failure the temporary file is removed
 * and an existing `path` is left untouched. */
int dd_st_save(const char *path, const dd_st_entry *tensors, int ntensors, const dd_st_pair *meta,
               int nmeta);

#ifdef __cplusplus
}
#endif
#endif
