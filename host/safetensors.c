/* safetensors reader and writer (../shared/FORMATS.md). The reader follows the reference's
 * validation (huggingface/safetensors, tensor.rs: read_metadata, Metadata::validate) check by
 * check, with one message per problem; the writer follows its prepare()/serialize() byte for
 * byte. JSON is parsed and printed by cJSON; what cJSON is lenient about (duplicate keys, raw
 * control characters, "\u0000" inside strings) is checked here first. */
#include "diffusion/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffusion/error.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this file assumes a little-endian host"
#endif

/* ---------------------------------------------------------------- dtypes */

static const char *const dtype_names[DD_ST_DTYPE_COUNT] = {
    [DD_ST_BOOL] = "BOOL",
    [DD_ST_F4] = "F4",
    [DD_ST_F6_E2M3] = "F6_E2M3",
    [DD_ST_F6_E3M2] = "F6_E3M2",
    [DD_ST_U8] = "U8",
    [DD_ST_I8] = "I8",
    [DD_ST_F8_E5M2] = "F8_E5M2",
    [DD_ST_F8_E4M3] = "F8_E4M3",
    [DD_ST_F8_E8M0] = "F8_E8M0",
    [DD_ST_F8_E4M3FNUZ] = "F8_E4M3FNUZ",
    [DD_ST_F8_E5M2FNUZ] = "F8_E5M2FNUZ",
    [DD_ST_I16] = "I16",
    [DD_ST_U16] = "U16",
    [DD_ST_F16] = "F16",
    [DD_ST_BF16] = "BF16",
    [DD_ST_I32] = "I32",
    [DD_ST_U32] = "U32",
    [DD_ST_F32] = "F32",
    [DD_ST_C64] = "C64",
    [DD_ST_F64] = "F64",
    [DD_ST_I64] = "I64",
    [DD_ST_U64] = "U64",
};

static const unsigned char dtype_bits[DD_ST_DTYPE_COUNT] = {
    [DD_ST_BOOL] = 8,         [DD_ST_F4] = 4,           [DD_ST_F6_E2M3] = 6,
    [DD_ST_F6_E3M2] = 6,      [DD_ST_U8] = 8,           [DD_ST_I8] = 8,
    [DD_ST_F8_E5M2] = 8,      [DD_ST_F8_E4M3] = 8,      [DD_ST_F8_E8M0] = 8,
    [DD_ST_F8_E4M3FNUZ] = 8,  [DD_ST_F8_E5M2FNUZ] = 8,  [DD_ST_I16] = 16,
    [DD_ST_U16] = 16,         [DD_ST_F16] = 16,         [DD_ST_BF16] = 16,
    [DD_ST_I32] = 32,         [DD_ST_U32] = 32,         [DD_ST_F32] = 32,
    [DD_ST_C64] = 64,         [DD_ST_F64] = 64,         [DD_ST_I64] = 64,
    [DD_ST_U64] = 64,
};

const char *dd_st_dtype_name(dd_st_dtype dt) {
    return (unsigned)dt < DD_ST_DTYPE_COUNT ? dtype_names[dt] : "?";
}

int dd_st_dtype_bits(dd_st_dtype dt) { return (unsigned)dt < DD_ST_DTYPE_COUNT ? dtype_bits[dt] : 0; }

int dd_st_dtype_parse(const char *name, dd_st_dtype *dt) {
    for (int i = 0; i < DD_ST_DTYPE_COUNT; i++)
        if (strcmp(name, dtype_names[i]) == 0) {
            *dt = (dd_st_dtype)i;
            return 0;
        }
    return dd_error("unknown dtype \"%s\"", name);
}

/* Bytes of `numel` elements of dt, or -1 after dd_error (overflow, or a sub-byte dtype that does
 * not fill whole bytes). `what` names the tensor in the message. */
static int tensor_bytes(const char *what, dd_st_dtype dt, uint64_t numel, uint64_t *bytes) {
    uint64_t bits;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_bits[dt], &bits))
        return dd_error("tensor \"%s\": %" PRIu64 " elements of %s overflow the byte count", what,
                        numel, dtype_names[dt]);
    if (bits % 8)
        return dd_error("tensor \"%s\": %" PRIu64 " elements of %s do not fill whole bytes", what,
                        numel, dtype_names[dt]);
    *bytes = bits / 8;
    return 0;
}

/* Product of the shape, or -1 after dd_error on overflow. */
static int shape_numel(const char *what, int ndim, const uint64_t *shape, uint64_t *numel) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, shape[i], &n))
            return dd_error("tensor \"%s\": the product of its shape overflows 64 bits", what);
    *numel = n;
    return 0;
}

/* ---------------------------------------------------------------- text checks */

/* Index of the first byte that is not part of valid UTF-8 (as Rust's str::from_utf8: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or len when all of it is valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            if (c == 0xED) hi = 0x9F;      /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            if (c == 0xF4) hi = 0x8F;      /* above U+10FFFF */
        } else {
            return i;
        }
        if (i + n > len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += n;
    }
    return len;
}

static int utf8_valid(const char *s) {
    size_t n = strlen(s);
    return utf8_invalid_at((const unsigned char *)s, n) == n;
}

static int json_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* What valid JSON never contains but cJSON would let through: raw control characters (inside or
 * outside strings) and "\u0000" escapes (cJSON would cut the string there, so two different
 * names could compare equal). */
static int json_prescan(const unsigned char *s, size_t len) {
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (c < 0x20 && !(json_space(c) && !in_string))
            return dd_error("header is not valid JSON: raw control character 0x%02x at byte %zu",
                            c, i);
        if (!in_string) {
            if (c == '"') in_string = 1;
            /* a number with a leading zero ("01", "-01"), which JSON forbids and strtod reads */
            int starts = i == 0 || !strchr("0123456789.eE+-", s[i - 1]);
            if (starts && c == '-' && i + 1 < len && s[i + 1] == '0') c = '0', i++;
            if (starts && c == '0' && i + 1 < len && s[i + 1] >= '0' && s[i + 1] <= '9')
                return dd_error("header is not valid JSON: number with a leading zero at byte %zu",
                                i);
            continue;
        }
        if (c == '"') {
            in_string = 0;
        } else if (c == '\\' && i + 1 < len) {
            if (s[i + 1] == 'u' && i + 5 < len && memcmp(s + i + 2, "0000", 4) == 0)
                return dd_error("header has a NUL character (\\u0000) in a string at byte %zu", i);
            i++; /* skip the escaped character */
        }
    }
    return 0;
}

static const char *json_type_name(const cJSON *j) {
    if (cJSON_IsObject(j)) return "an object";
    if (cJSON_IsArray(j)) return "an array";
    if (cJSON_IsString(j)) return "a string";
    if (cJSON_IsNumber(j)) return "a number";
    if (cJSON_IsBool(j)) return "a boolean";
    if (cJSON_IsNull(j)) return "null";
    return "an unknown value";
}

/* A JSON number that is a non-negative integer cJSON holds exactly (its numbers are doubles, so
 * integers above 2^53 cannot be told apart and are refused). */
static int json_u64(const cJSON *j, uint64_t *v) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return -1;
    *v = (uint64_t)d;
    return 0;
}

/* ---------------------------------------------------------------- reading */

void dd_st_free(dd_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->ntensors; i++) free(st->tensors[i].name);
    for (int i = 0; i < st->nmeta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->tensors);
    free(st->meta);
    free(st->file);
    memset(st, 0, sizeof *st);
}

static int cmp_offsets(const void *a, const void *b) {
    const dd_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_strp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A duplicate among n strings (sorted copy of the pointers), or NULL. */
static const char *find_duplicate(const char **names, int n) {
    qsort(names, (size_t)n, sizeof *names, cmp_strp);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

static int parse_metadata(dd_safetensors *st, const cJSON *m) {
    if (cJSON_IsNull(m)) return 0; /* the reference reads null as "no metadata" */
    if (!cJSON_IsObject(m))
        return dd_error("header: \"__metadata__\" must be an object of strings, not %s",
                        json_type_name(m));
    int n = cJSON_GetArraySize(m);
    for (const cJSON *c = m->child; c; c = c->next)
        if (!cJSON_IsString(c)) {
            /* an object in a tensor's form under the reserved name */
            if (cJSON_IsObject(m) && cJSON_GetObjectItemCaseSensitive(m, "data_offsets"))
                return dd_error("header: a tensor may not be named \"__metadata__\" (the name is "
                                "reserved for the metadata)");
            return dd_error("header: \"__metadata__\" value of \"%s\" must be a string, not %s",
                            c->string, json_type_name(c));
        }
    st->meta = calloc((size_t)(n ? n : 1), sizeof *st->meta);
    const char **keys = calloc((size_t)(n ? n : 1), sizeof *keys);
    if (!st->meta || !keys) {
        free(keys);
        return dd_error("out of memory reading the metadata");
    }
    for (const cJSON *c = m->child; c; c = c->next) {
        dd_st_kv *kv = &st->meta[st->nmeta];
        kv->key = strdup(c->string);
        kv->value = strdup(c->valuestring);
        st->nmeta++;
        if (!kv->key || !kv->value) {
            free(keys);
            return dd_error("out of memory reading the metadata");
        }
        keys[st->nmeta - 1] = kv->key;
    }
    const char *dup = find_duplicate(keys, st->nmeta);
    int rc = dup ? dd_error("header: duplicate metadata key \"%s\"", dup) : 0;
    free(keys);
    return rc;
}

/* One tensor's {"dtype", "shape", "data_offsets"}. Unknown fields are ignored, as the reference
 * (serde without deny_unknown_fields) does; repeated ones are refused, as serde does. */
static int parse_tensor(dd_st_tensor *t, const cJSON *j) {
    const char *name = t->name;
    if (!cJSON_IsObject(j))
        return dd_error("tensor \"%s\": expected an object with dtype, shape and data_offsets, "
                        "got %s",
                        name, json_type_name(j));
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *c = j->child; c; c = c->next) {
        const cJSON **slot = strcmp(c->string, "dtype") == 0          ? &dtype
                             : strcmp(c->string, "shape") == 0        ? &shape
                             : strcmp(c->string, "data_offsets") == 0 ? &offsets
                                                                      : NULL;
        if (!slot) continue;
        if (*slot) return dd_error("tensor \"%s\": duplicate field \"%s\"", name, c->string);
        *slot = c;
    }
    if (!dtype) return dd_error("tensor \"%s\": missing field \"dtype\"", name);
    if (!shape) return dd_error("tensor \"%s\": missing field \"shape\"", name);
    if (!offsets) return dd_error("tensor \"%s\": missing field \"data_offsets\"", name);

    if (!cJSON_IsString(dtype))
        return dd_error("tensor \"%s\": dtype must be a string, not %s", name,
                        json_type_name(dtype));
    if (dd_st_dtype_parse(dtype->valuestring, &t->dtype))
        return dd_error_prefix("tensor \"%s\"", name);

    if (!cJSON_IsArray(shape))
        return dd_error("tensor \"%s\": shape must be an array, not %s", name,
                        json_type_name(shape));
    int nd = cJSON_GetArraySize(shape);
    if (nd > DD_ST_MAX_DIMS)
        return dd_error("tensor \"%s\": %d dimensions, more than the %d supported", name, nd,
                        DD_ST_MAX_DIMS);
    t->ndim = 0;
    for (const cJSON *c = shape->child; c; c = c->next)
        if (json_u64(c, &t->shape[t->ndim++]))
            return dd_error("tensor \"%s\": shape entries must be non-negative integers "
                            "(at most 2^53), got %s",
                            name, cJSON_IsNumber(c) ? "a number that is not one" : json_type_name(c));

    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_u64(offsets->child, &t->begin) || json_u64(offsets->child->next, &t->end))
        return dd_error("tensor \"%s\": data_offsets must be two non-negative integers "
                        "[begin, end]",
                        name);
    return shape_numel(name, t->ndim, t->shape, &t->numel);
}

/* Parse and validate the JSON header `h` (N bytes) of a file of file_size bytes. */
static int parse_header(dd_safetensors *st, const unsigned char *h, uint64_t N, uint64_t file_size) {
    size_t bad = utf8_invalid_at(h, (size_t)N);
    if (bad != N) return dd_error("header is not valid UTF-8 (byte %zu of the header)", bad);
    DD_TRY(json_prescan(h, (size_t)N));
    size_t lead = 0;
    while (lead < N && json_space(h[lead])) lead++;
    if (lead == N) return dd_error("header is not valid JSON: it is empty");
    if (h[lead] != '{')
        return dd_error("header is not valid JSON object: it starts with '%c', not '{'", h[lead]);

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)h, (size_t)N, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - (const char *)h) : 0;
        return dd_error("header is not valid JSON (parse error near byte %zu of the header)", at);
    }
    for (const char *p = end; p < (const char *)h + N; p++)
        if (!json_space((unsigned char)*p)) {
            cJSON_Delete(root);
            return dd_error("header is not valid JSON: characters after the object (byte %zu)",
                            (size_t)(p - (const char *)h));
        }

    int rc = 0, n = 0, nmeta_entries = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        if (strcmp(c->string, "__metadata__") == 0) nmeta_entries++;
        else n++;
    if (nmeta_entries > 1) {
        cJSON_Delete(root);
        return dd_error("header: duplicate name \"__metadata__\" (a tensor may not be named "
                        "\"__metadata__\")");
    }
    st->tensors = calloc((size_t)(n ? n : 1), sizeof *st->tensors);
    const char **names = calloc((size_t)(n ? n : 1), sizeof *names);
    if (!st->tensors || !names) {
        rc = dd_error("out of memory reading the header");
        goto done;
    }
    for (const cJSON *c = root->child; c && rc == 0; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            rc = parse_metadata(st, c);
            continue;
        }
        dd_st_tensor *t = &st->tensors[st->ntensors++];
        if (!(t->name = strdup(c->string))) {
            rc = dd_error("out of memory reading the header");
            break;
        }
        names[st->ntensors - 1] = t->name;
        rc = parse_tensor(t, c);
    }
    if (rc) goto done;
    const char *dup = find_duplicate(names, st->ntensors);
    if (dup) {
        rc = dd_error("header: duplicate tensor name \"%s\"", dup);
        goto done;
    }

    /* Metadata::validate: the tensors, sorted by offsets, must tile [0, end) exactly */
    qsort(st->tensors, (size_t)st->ntensors, sizeof *st->tensors, cmp_offsets);
    uint64_t pos = 0;
    for (int i = 0; i < st->ntensors; i++) {
        dd_st_tensor *t = &st->tensors[i];
        if (t->end < t->begin) {
            rc = dd_error("tensor \"%s\": data_offsets end %" PRIu64 " is before begin %" PRIu64,
                          t->name, t->end, t->begin);
            goto done;
        }
        if (t->begin != pos) {
            if (i == 0)
                rc = dd_error("tensor \"%s\": data_offsets start at %" PRIu64
                              ", but the first tensor must start at 0",
                              t->name, t->begin);
            else if (t->begin > pos)
                rc = dd_error("gap in the data: %" PRIu64 " unused bytes between tensor \"%s\" "
                              "(ends at %" PRIu64 ") and tensor \"%s\" (begins at %" PRIu64 ")",
                              t->begin - pos, st->tensors[i - 1].name, pos, t->name, t->begin);
            else
                rc = dd_error("tensor \"%s\" (offsets %" PRIu64 "..%" PRIu64 ") overlaps tensor "
                              "\"%s\" (ends at %" PRIu64 ")",
                              t->name, t->begin, t->end, st->tensors[i - 1].name, pos);
            goto done;
        }
        uint64_t bytes = 0;
        if ((rc = tensor_bytes(t->name, t->dtype, t->numel, &bytes))) goto done;
        if (bytes != t->end - t->begin) {
            rc = dd_error("tensor \"%s\": %" PRIu64 " elements of %s are %" PRIu64
                          " bytes, but data_offsets span %" PRIu64 " bytes",
                          t->name, t->numel, dtype_names[t->dtype], bytes, t->end - t->begin);
            goto done;
        }
        pos = t->end;
    }
    uint64_t have = file_size - 8 - N; /* the callers checked 8 + N <= file_size */
    if (pos < have)
        rc = dd_error("%" PRIu64 " unexpected bytes after the last tensor's data (the tensors "
                      "end at %" PRIu64 " of a %" PRIu64 "-byte data buffer)",
                      have - pos, pos, have);
    else if (pos > have)
        rc = dd_error("file is truncated: the tensors need %" PRIu64 " data bytes, the file has "
                      "%" PRIu64 " (%" PRIu64 " missing)",
                      pos, have, pos - have);
done:
    free(names);
    cJSON_Delete(root);
    return rc;
}

/* The first checks, on the 8-byte length and the size of the file. */
static int check_lengths(const unsigned char *first8, uint64_t file_size, uint64_t *N) {
    if (file_size < 8)
        return dd_error("file is %" PRIu64 " bytes, shorter than the 8-byte header length: not "
                        "a safetensors file",
                        file_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | first8[i];
    if (n > DD_ST_MAX_HEADER)
        return dd_error("header length %" PRIu64 " is over the limit of %u bytes: not a "
                        "safetensors file",
                        n, DD_ST_MAX_HEADER);
    if (8 + n > file_size)
        return dd_error("header length %" PRIu64 " runs past the end of the %" PRIu64
                        "-byte file",
                        n, file_size);
    *N = n;
    return 0;
}

/* st->file holds `have` bytes: the whole file, or (header_only) its first 8 + N bytes. */
static int parse_loaded(dd_safetensors *st, uint64_t file_size, int header_only) {
    uint64_t N = 0;
    DD_TRY(check_lengths(st->file, file_size, &N));
    st->header_len = N;
    st->file_size = (size_t)file_size;
    DD_TRY(parse_header(st, st->file + 8, N, file_size));
    if (!header_only)
        for (int i = 0; i < st->ntensors; i++)
            st->tensors[i].data = st->file + 8 + N + st->tensors[i].begin;
    return 0;
}

int dd_st_load_mem(const void *bytes, size_t len, dd_safetensors *st) {
    memset(st, 0, sizeof *st);
    st->file = malloc(len ? len : 1);
    if (!st->file) return dd_error("out of memory (%zu bytes) loading safetensors", len);
    if (len) memcpy(st->file, bytes, len);
    if (parse_loaded(st, len, 0)) {
        dd_st_free(st);
        return -1;
    }
    return 0;
}

/* Open a regular file for reading and get its size. */
static FILE *open_regular(const char *path, uint64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        dd_error("cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        dd_error("not a regular file");
        return NULL;
    }
    *size = (uint64_t)sb.st_size;
    return f;
}

static int read_exact(FILE *f, void *dst, size_t n) {
    if (n && fread(dst, 1, n, f) != n)
        return dd_error("read error: %s", ferror(f) ? strerror(errno) : "unexpected end of file");
    return 0;
}

static int load_path(const char *path, dd_safetensors *st, int header_only) {
    memset(st, 0, sizeof *st);
    uint64_t size;
    FILE *f = open_regular(path, &size);
    if (!f) return dd_error_prefix("%s", path);
    int rc = 0;
    uint64_t want = size;
    if (header_only) {
        unsigned char first8[8];
        uint64_t N = 0;
        if (size >= 8 && (rc = read_exact(f, first8, 8))) goto done;
        if ((rc = check_lengths(first8, size, &N))) goto done;
        want = 8 + N;
        rewind(f);
    }
    if (want > SIZE_MAX - 1 || !(st->file = malloc((size_t)want + 1))) {
        rc = dd_error("out of memory (%" PRIu64 " bytes)", want);
        goto done;
    }
    if ((rc = read_exact(f, st->file, (size_t)want))) goto done;
    rc = parse_loaded(st, size, header_only);
done:
    fclose(f);
    if (rc) {
        dd_st_free(st);
        return dd_error_prefix("%s", path);
    }
    return 0;
}

int dd_st_load(const char *path, dd_safetensors *st) { return load_path(path, st, 0); }
int dd_st_load_header(const char *path, dd_safetensors *st) { return load_path(path, st, 1); }

const dd_st_tensor *dd_st_find(const dd_safetensors *st, const char *name) {
    for (int i = 0; i < st->ntensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const char *dd_st_meta(const dd_safetensors *st, const char *key) {
    for (int i = 0; i < st->nmeta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

int dd_st_copy_f32(const dd_st_tensor *t, float *out, size_t n) {
    if (!t) return dd_error("tensor not found");
    if (t->dtype != DD_ST_F32)
        return dd_error("tensor \"%s\" is %s, expected F32", t->name, dtype_names[t->dtype]);
    if (t->numel != n)
        return dd_error("tensor \"%s\" has %" PRIu64 " elements, expected %zu", t->name, t->numel,
                        n);
    if (!t->data) return dd_error("tensor \"%s\": data not loaded (header only)", t->name);
    if (n) memcpy(out, t->data, n * sizeof(float)); /* data is not aligned: copy, never cast */
    return 0;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    const dd_st_entry *e;
    uint64_t bytes;
} sorted_entry;

/* The reference's order: dtype descending, then name ascending (bytewise). */
static int cmp_write_order(const void *a, const void *b) {
    const dd_st_entry *x = ((const sorted_entry *)a)->e, *y = ((const sorted_entry *)b)->e;
    if (x->dtype != y->dtype) return x->dtype > y->dtype ? -1 : 1;
    return strcmp(x->name, y->name);
}

static cJSON *json_u64_raw(uint64_t v) {
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, v); /* exact, where cJSON's doubles would round */
    return cJSON_CreateRaw(s);
}

static int validate_entries(const dd_st_entry *t, int n, sorted_entry *se) {
    for (int i = 0; i < n; i++) {
        const dd_st_entry *e = &t[i];
        if (!e->name) return dd_error("tensor %d has no name", i);
        if (!utf8_valid(e->name)) return dd_error("tensor name \"%s\" is not valid UTF-8", e->name);
        if (strcmp(e->name, "__metadata__") == 0)
            return dd_error("a tensor may not be named \"__metadata__\"");
        if ((unsigned)e->dtype >= DD_ST_DTYPE_COUNT)
            return dd_error("tensor \"%s\": invalid dtype %d", e->name, (int)e->dtype);
        if (e->ndim < 0 || e->ndim > DD_ST_MAX_DIMS || (e->ndim > 0 && !e->shape))
            return dd_error("tensor \"%s\": invalid number of dimensions %d", e->name, e->ndim);
        uint64_t numel = 0;
        DD_TRY(shape_numel(e->name, e->ndim, e->shape, &numel));
        DD_TRY(tensor_bytes(e->name, e->dtype, numel, &se[i].bytes));
        if (se[i].bytes && !e->data) return dd_error("tensor \"%s\" has no data", e->name);
        se[i].e = e;
    }
    return 0;
}

static int validate_meta(const dd_st_pair *m, int n) {
    const char **keys = calloc((size_t)(n ? n : 1), sizeof *keys);
    if (!keys) return dd_error("out of memory");
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!m[i].key || !m[i].value) rc = dd_error("metadata entry %d has no key or value", i);
        else if (!utf8_valid(m[i].key) || !utf8_valid(m[i].value))
            rc = dd_error("metadata \"%s\" is not valid UTF-8", m[i].key);
        keys[i] = m[i].key;
    }
    const char *dup = rc ? NULL : find_duplicate(keys, n);
    if (dup) rc = dd_error("duplicate metadata key \"%s\"", dup);
    free(keys);
    return rc;
}

static int names_unique(const sorted_entry *se, int n) {
    /* se is sorted by (dtype, name): equal names of different dtypes are not adjacent */
    const char **names = calloc((size_t)(n ? n : 1), sizeof *names);
    if (!names) return dd_error("out of memory");
    for (int i = 0; i < n; i++) names[i] = se[i].e->name;
    const char *dup = find_duplicate(names, n);
    int rc = dup ? dd_error("duplicate tensor name \"%s\"", dup) : 0;
    free(names);
    return rc;
}

int dd_st_serialize(const dd_st_entry *tensors, int ntensors, const dd_st_pair *meta, int nmeta,
                    unsigned char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    if (ntensors < 0 || nmeta < 0) return dd_error("negative tensor or metadata count");
    sorted_entry *se = calloc((size_t)(ntensors ? ntensors : 1), sizeof *se);
    if (!se) return dd_error("out of memory");
    cJSON *root = NULL;
    char *json = NULL;
    int rc = -1;
    if (validate_entries(tensors, ntensors, se) || validate_meta(meta, nmeta) ||
        names_unique(se, ntensors))
        goto done;
    qsort(se, (size_t)ntensors, sizeof *se, cmp_write_order);

    /* cJSON keeps insertion order: __metadata__, then the tensors in data order */
    root = cJSON_CreateObject();
    if (!root) goto oom;
    if (nmeta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        if (!m) goto oom;
        for (int i = 0; i < nmeta; i++)
            if (!cJSON_AddStringToObject(m, meta[i].key, meta[i].value)) goto oom;
    }
    uint64_t offset = 0;
    for (int i = 0; i < ntensors; i++) {
        const dd_st_entry *e = se[i].e;
        cJSON *t = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        if (t) cJSON_AddItemToObject(root, e->name, t);
        if (!t || !shape || !offs || !cJSON_AddStringToObject(t, "dtype", dtype_names[e->dtype])) {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            goto oom;
        }
        cJSON_AddItemToObject(t, "shape", shape);
        cJSON_AddItemToObject(t, "data_offsets", offs);
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, json_u64_raw(e->shape[d]));
        cJSON_AddItemToArray(offs, json_u64_raw(offset));
        cJSON_AddItemToArray(offs, json_u64_raw(offset + se[i].bytes));
        if (cJSON_GetArraySize(shape) != e->ndim || cJSON_GetArraySize(offs) != 2) goto oom;
        offset += se[i].bytes;
    }
    json = cJSON_PrintUnformatted(root);
    if (!json) goto oom;

    size_t jlen = strlen(json), N = (jlen + 7) / 8 * 8; /* padded with spaces to 8 */
    size_t total = 8 + N + (size_t)offset;
    unsigned char *buf = malloc(total ? total : 1);
    if (!buf) goto oom;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)N >> (8 * i));
    memcpy(buf + 8, json, jlen);
    memset(buf + 8 + jlen, ' ', N - jlen);
    unsigned char *p = buf + 8 + N;
    for (int i = 0; i < ntensors; i++) {
        if (se[i].bytes) memcpy(p, se[i].e->data, (size_t)se[i].bytes);
        p += se[i].bytes;
    }
    *out = buf;
    *len = total;
    rc = 0;
    goto done;
oom:
    rc = dd_error("out of memory serialising safetensors");
done:
    free(json);
    cJSON_Delete(root);
    free(se);
    return rc;
}

int dd_st_save(const char *path, const dd_st_entry *tensors, int ntensors, const dd_st_pair *meta,
               int nmeta) {
    unsigned char *buf;
    size_t len;
    if (dd_st_serialize(tensors, ntensors, meta, nmeta, &buf, &len))
        return dd_error_prefix("writing %s", path);
    int rc = dd_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}
