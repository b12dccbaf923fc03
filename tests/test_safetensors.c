/* safetensors: FORMATS.md's goldens, files written by the reference implementation
 * (tests/reference/golden_safetensors.py -> tests/reference/st/) rebuilt byte for byte by the C
 * writer and read back by the C reader, every rejection case with its message, and the atomic
 * write. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "diffusion/error.h"
#include "diffusion/safetensors.h"
#include "testutil.h"

#define ST_DIR DD_SOURCE_DIR "/tests/reference/st/"

/* ---------------------------------------------------------------- the golden's value formulas */

/* float -> IEEE half for the exact values used here (normal numbers and 0; no rounding needed) */
static uint16_t to_half(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    if ((u & 0x7fffffff) == 0) return sign;
    int exp = (int)((u >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(sign | (exp << 10) | ((u >> 13) & 0x3ff));
}

/* Fill `out` with the values golden_safetensors.py writes for this dtype (its docstring). */
static void golden_values(dd_st_dtype dt, uint64_t n, unsigned char *out) {
    for (uint64_t k = 0; k < n; k++) {
        double fv = ((double)k - 3) * 0.375;
        uint64_t iv = k * 2654435761ull;
        switch (dt) {
        case DD_ST_F64: memcpy(out + 8 * k, &fv, 8); break;
        case DD_ST_F32: {
            float f = (float)fv;
            memcpy(out + 4 * k, &f, 4);
            break;
        }
        case DD_ST_F16: {
            uint16_t h = to_half((float)fv);
            memcpy(out + 2 * k, &h, 2);
            break;
        }
        case DD_ST_BF16: {
            float f = (float)fv;
            uint32_t u;
            memcpy(&u, &f, 4);
            uint16_t h = (uint16_t)(u >> 16);
            memcpy(out + 2 * k, &h, 2);
            break;
        }
        case DD_ST_BOOL: out[k] = k % 3 == 0; break;
        case DD_ST_F8_E4M3:
        case DD_ST_F8_E5M2: out[k] = (unsigned char)((k * 37 + 1) % 256); break;
        default: {
            int bytes = dd_st_dtype_bits(dt) / 8; /* integers: little-endian low bytes */
            for (int b = 0; b < bytes; b++) out[bytes * k + (uint64_t)b] = (unsigned char)(iv >> (8 * b));
        }
        }
    }
}

typedef struct {
    const char *name;
    dd_st_dtype dt;
    int ndim;
    uint64_t shape[4];
} spec;

/* Build entries with golden values; returns buffers to free through bufs. */
static void build_entries(const spec *s, int n, dd_st_entry *e, unsigned char **bufs) {
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < s[i].ndim; d++) numel *= s[i].shape[d];
        bufs[i] = calloc(numel * 8 + 1, 1);
        golden_values(s[i].dt, numel, bufs[i]);
        e[i] = (dd_st_entry){s[i].name, s[i].dt, s[i].ndim, s[i].shape, bufs[i]};
    }
}

static int same_bytes(const unsigned char *a, size_t na, const unsigned char *b, size_t nb) {
    if (na != nb) {
        fprintf(stderr, "  sizes differ: %zu vs %zu\n", na, nb);
        return 0;
    }
    for (size_t i = 0; i < na; i++)
        if (a[i] != b[i]) {
            fprintf(stderr, "  first difference at byte %zu: %02x vs %02x\n", i, a[i], b[i]);
            return 0;
        }
    return 1;
}

/* Write with the C writer and compare with the reference's file; then read the file back and
 * check every tensor against the specs and its values. */
static void check_golden(const char *file, const spec *s, int n, const dd_st_pair *meta,
                         int nmeta) {
    char path[512];
    snprintf(path, sizeof path, ST_DIR "%s", file);
    size_t glen;
    unsigned char *golden = tu_read_file(path, &glen);
    CHECKF(golden != NULL, "missing golden %s (run tests/reference/golden_safetensors.py)", path);
    if (!golden) return;

    dd_st_entry e[32];
    unsigned char *bufs[32];
    build_entries(s, n, e, bufs);
    unsigned char *mine;
    size_t mlen;
    CHECK_OK(dd_st_serialize(e, n, meta, nmeta, &mine, &mlen));
    CHECKF(mine && same_bytes(mine, mlen, golden, glen), "%s: C writer differs from the reference",
           file);
    free(mine);

    dd_safetensors st;
    CHECK_OK(dd_st_load(path, &st));
    CHECKF(st.ntensors == n, "%s: %d tensors, expected %d", file, st.ntensors, n);
    for (int i = 0; i < n; i++) {
        const dd_st_tensor *t = dd_st_find(&st, s[i].name);
        CHECKF(t != NULL, "%s: tensor %s not found", file, s[i].name);
        if (!t) continue;
        CHECKF(t->dtype == s[i].dt, "%s/%s: dtype %s", file, s[i].name, dd_st_dtype_name(t->dtype));
        CHECK(t->ndim == s[i].ndim);
        uint64_t numel = 1;
        for (int d = 0; d < s[i].ndim && d < t->ndim; d++) {
            CHECK(t->shape[d] == s[i].shape[d]);
            numel *= s[i].shape[d];
        }
        CHECK(t->numel == numel);
        size_t bytes = (size_t)(numel * (uint64_t)dd_st_dtype_bits(s[i].dt) / 8);
        CHECK(t->end - t->begin == bytes);
        CHECKF(bytes == 0 || memcmp(t->data, bufs[i], bytes) == 0, "%s/%s: values differ", file,
               s[i].name);
    }
    for (int i = 0; i < nmeta; i++) {
        const char *v = dd_st_meta(&st, meta[i].key);
        CHECKF(v && strcmp(v, meta[i].value) == 0, "%s: metadata %s", file, meta[i].key);
    }
    CHECK(st.nmeta == nmeta);

    /* the header-only reader sees the same names and shapes, no data */
    dd_safetensors h;
    CHECK_OK(dd_st_load_header(path, &h));
    CHECK(h.ntensors == st.ntensors && h.nmeta == st.nmeta && h.file_size == glen);
    for (int i = 0; i < h.ntensors && i < st.ntensors; i++) {
        CHECK(strcmp(h.tensors[i].name, st.tensors[i].name) == 0);
        CHECK(h.tensors[i].data == NULL && h.tensors[i].end == st.tensors[i].end);
    }
    dd_st_free(&h);
    dd_st_free(&st);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(golden);
}

static void test_formats_goldens(void) {
    /* FORMATS.md: an empty file is N = 8 with {} and six spaces */
    unsigned char *b;
    size_t n;
    CHECK_OK(dd_st_serialize(NULL, 0, NULL, 0, &b, &n));
    CHECK(n == 16 && b && memcmp(b, "\x08\0\0\0\0\0\0\0{}      ", 16) == 0);
    free(b);
    /* one F32 tensor "attn.0" of shape [1,2,3]: N = 64 with no padding */
    uint64_t shape[3] = {1, 2, 3};
    float zeros[6] = {0};
    dd_st_entry e = {"attn.0", DD_ST_F32, 3, shape, zeros};
    CHECK_OK(dd_st_serialize(&e, 1, NULL, 0, &b, &n));
    const char *json = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    CHECK(strlen(json) == 64);
    CHECK(n == 8 + 64 + 24 && b && b[0] == 64 && memcmp(b + 8, json, 64) == 0);
    free(b);
}

static void test_reference_files(void) {
    spec empty[1] = {{0}};
    check_golden("empty.safetensors", empty, 0, NULL, 0);
    spec attn[] = {{"attn.0", DD_ST_F32, 3, {1, 2, 3}}};
    check_golden("attn.safetensors", attn, 1, NULL, 0);
    spec mixed[] = {
        {"f64", DD_ST_F64, 2, {2, 3}},
        {"f32.b", DD_ST_F32, 1, {4}},
        {"f32.a", DD_ST_F32, 2, {2, 2}},
        {"F32.upper", DD_ST_F32, 1, {1}},
        {"f32.a.10", DD_ST_F32, 0, {0}},
        {"f32.a.2", DD_ST_F32, 2, {0, 3}},
        {"bf16", DD_ST_BF16, 1, {3}},
        {"f16", DD_ST_F16, 3, {2, 2, 2}},
        {"i64", DD_ST_I64, 1, {3}},
        {"u64", DD_ST_U64, 1, {2}},
        {"i32", DD_ST_I32, 1, {5}},
        {"u32", DD_ST_U32, 1, {2}},
        {"i16", DD_ST_I16, 1, {3}},
        {"u16", DD_ST_U16, 1, {3}},
        {"i8", DD_ST_I8, 1, {7}},
        {"u8", DD_ST_U8, 2, {1, 5}},
        {"bool", DD_ST_BOOL, 1, {6}},
        {"f8_e4m3", DD_ST_F8_E4M3, 1, {3}},
        {"f8_e5m2", DD_ST_F8_E5M2, 1, {2}},
        {"zero.u8", DD_ST_U8, 1, {0}},
        {"caf\xc3\xa9", DD_ST_F32, 1, {2}},
    };
    dd_st_pair note = {"note", "quote \" backslash \\ newline \n tab \t ctrl \x01 caf\xc3\xa9 "
                               "\xe2\x98\x83 /"};
    check_golden("mixed.safetensors", mixed, (int)(sizeof mixed / sizeof *mixed), &note, 1);

    /* Several metadata keys: the reference wrote them in hash order, so take the order from the
     * file (checking every value), and the bytes must then match. */
    dd_safetensors st;
    CHECK_OK(dd_st_load(ST_DIR "meta.safetensors", &st));
    const char *want[][2] = {{"format", "pt"},
                             {"model", "{\"channels\": 16, \"T\": 100}"},
                             {"step", "1200"},
                             {"empty", ""}};
    CHECK(st.nmeta == 4);
    for (int i = 0; i < 4; i++) {
        const char *v = dd_st_meta(&st, want[i][0]);
        CHECKF(v && strcmp(v, want[i][1]) == 0, "meta.safetensors: %s", want[i][0]);
    }
    CHECK(dd_st_meta(&st, "absent") == NULL);
    dd_st_pair pairs[4];
    for (int i = 0; i < st.nmeta && i < 4; i++) pairs[i] = (dd_st_pair){st.meta[i].key, st.meta[i].value};
    spec ms[] = {{"w", DD_ST_F32, 2, {2, 3}}, {"b", DD_ST_F32, 1, {3}}};
    check_golden("meta.safetensors", ms, 2, pairs, st.nmeta < 4 ? st.nmeta : 4);
    /* copying out an F32 tensor, with dtype and size checks */
    float w[6];
    const dd_st_tensor *tw = dd_st_find(&st, "w");
    CHECK(tw && dd_st_copy_f32(tw, w, 6) == 0 && w[0] == -1.125f && w[5] == 0.75f);
    CHECK(tw && dd_st_copy_f32(tw, w, 5) != 0);
    dd_st_free(&st);
}

/* ---------------------------------------------------------------- rejections */

/* Assemble a file: N, the header text padded with `pad` spaces, then `data` zero bytes. */
static unsigned char *make_file(const char *header, size_t data, size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data;
    unsigned char *b = calloc(*len + 1, 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    return b;
}

static void expect_reject_bytes(const char *what, const unsigned char *b, size_t len,
                                const char *needle) {
    dd_safetensors st;
    dd_error_clear();
    int rc = dd_st_load_mem(b, len, &st);
    CHECKF(rc != 0, "%s: accepted", what);
    if (rc == 0) {
        dd_st_free(&st);
        return;
    }
    CHECKF(strstr(dd_error_message(), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what,
           dd_error_message(), needle);
    CHECK(st.ntensors == 0 && st.file == NULL); /* left empty */
}

static void expect_reject(const char *what, const char *header, size_t data, const char *needle) {
    size_t len;
    unsigned char *b = make_file(header, data, &len);
    expect_reject_bytes(what, b, len, needle);
    free(b);
}

static void expect_accept(const char *what, const char *header, size_t data) {
    size_t len;
    unsigned char *b = make_file(header, data, &len);
    dd_safetensors st;
    int rc = dd_st_load_mem(b, len, &st);
    CHECKF(rc == 0, "%s: refused: %s", what, dd_error_message());
    if (rc == 0) dd_st_free(&st);
    free(b);
}

#define T1(name, dt, shape, b, e)                                                                 \
    "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_rejections(void) {
    unsigned char b[16] = {0};
    expect_reject_bytes("5-byte file", b, 5, "shorter than the 8-byte header");
    expect_reject_bytes("empty file", b, 0, "shorter than the 8-byte header");
    /* N = 100,000,001 */
    uint64_t big = 100000001;
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(big >> (8 * i));
    expect_reject_bytes("N > 1e8", b, 16, "over the limit");
    /* N past the end */
    b[0] = 9, b[1] = b[2] = b[3] = 0;
    memcpy(b + 8, "{}      ", 8);
    expect_reject_bytes("8 + N past end", b, 16, "runs past the end");
    /* N = 2^64 - 1 (8 + N would wrap) */
    memset(b, 0xff, 8);
    expect_reject_bytes("N = 2^64-1", b, 16, "over the limit");

    /* invalid UTF-8: a lone continuation byte, an overlong '/', a surrogate */
    expect_reject("invalid UTF-8", "{\"a\x80\":{}}", 0, "not valid UTF-8");
    expect_reject("overlong UTF-8", "{\"\xc0\xaf\":{}}  ", 0, "not valid UTF-8");
    expect_reject("surrogate UTF-8", "{\"\xed\xa0\x80\":{}}", 0, "not valid UTF-8");
    /* JSON that does not parse, or has the wrong types */
    expect_reject("not JSON", "{\"a\":", 0, "not valid JSON");
    expect_reject("trailing JSON", "{} {}   ", 0, "after the object");
    expect_reject("not an object", "[1,2]   ", 0, "not valid JSON object");
    expect_reject("raw newline in string", "{\"a\nb\":1}", 0, "control character");
    expect_reject("NUL escape", "{\"a\\u0000b\":1}  ", 0, "NUL");
    expect_reject("leading zero", "{" T1("a", "F32", "[01]", 0, 4) "}", 4, "leading zero");
    expect_reject("negative leading zero", "{" T1("a", "F32", "[-01]", 0, 4) "}", 4, "leading zero");
    expect_accept("zeros", "{" T1("a", "F32", "[0,10,0]", 0, 0) "}", 0);
    expect_reject("tensor not an object", "{\"a\":1}", 0, "expected an object");
    expect_reject("dtype not a string", "{\"a\":{\"dtype\":3,\"shape\":[],\"data_offsets\":[0,4]}}",
                  4, "dtype must be a string");
    expect_reject("unknown dtype", "{" T1("a", "F33", "[1]", 0, 4) "}", 4, "unknown dtype");
    expect_reject("shape not array", "{" T1("a", "F32", "1", 0, 4) "}", 4, "shape must be");
    expect_reject("negative shape", "{" T1("a", "F32", "[-1]", 0, 4) "}", 4, "non-negative");
    expect_reject("fractional shape", "{" T1("a", "F32", "[1.5]", 0, 4) "}", 4, "non-negative");
    expect_reject("string shape", "{" T1("a", "F32", "[\"1\"]", 0, 4) "}", 4, "non-negative");
    expect_reject("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
                  "missing field \"shape\"");
    expect_reject("missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "missing field \"dtype\"");
    expect_reject("missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                  "missing field \"data_offsets\"");
    expect_reject("three offsets",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4,
                  "data_offsets must be two");
    expect_reject("duplicate field",
                  "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                  4, "duplicate field");
    expect_reject("metadata not strings", "{\"__metadata__\":{\"k\":1}}", 0,
                  "must be a string");
    expect_reject("metadata not object", "{\"__metadata__\":[1]}", 0, "must be an object");

    /* offsets */
    expect_reject("offsets not from 0", "{" T1("a", "F32", "[1]", 4, 8) "}", 8,
                  "first tensor must start at 0");
    expect_reject("gap",
                  "{" T1("a", "F32", "[1]", 0, 4) "," T1("b", "F32", "[1]", 8, 12) "}", 12,
                  "gap in the data");
    expect_reject("overlap",
                  "{" T1("a", "F32", "[2]", 0, 8) "," T1("b", "F32", "[1]", 4, 8) "}", 8,
                  "overlaps");
    expect_reject("end < begin",
                  "{" T1("a", "F32", "[1]", 0, 4) "," T1("b", "F32", "[0]", 4, 0) "}", 4,
                  "is before begin");
    /* header order does not matter: sorted by offset first */
    expect_accept("out of order",
                  "{" T1("b", "F32", "[1]", 4, 8) "," T1("a", "F32", "[1]", 0, 4) "}", 8);
    /* sizes */
    expect_reject("shape overflow", "{" T1("a", "F32", "[4294967296,4294967296,2]", 0, 4) "}", 4,
                  "overflows 64 bits");
    expect_reject("bytes overflow", "{" T1("a", "F64", "[4294967296,1073741824]", 0, 4) "}", 4,
                  "overflow the byte count");
    expect_reject("size mismatch", "{" T1("a", "F32", "[2]", 0, 4) "}", 4,
                  "data_offsets span 4 bytes");
    expect_reject("sub-byte", "{" T1("a", "F4", "[3]", 0, 1) "}", 1, "whole bytes");
    expect_reject("trailing bytes", "{" T1("a", "F32", "[1]", 0, 4) "}", 5, "unexpected bytes");
    expect_reject("missing bytes", "{" T1("a", "F32", "[2]", 0, 8) "}", 7, "truncated");
    expect_reject("no tensors, trailing", "{}", 3, "unexpected bytes");
    /* names */
    expect_reject("duplicate names",
                  "{" T1("a", "F32", "[1]", 0, 4) "," T1("a", "F32", "[1]", 4, 8) "}", 8,
                  "duplicate tensor name \"a\"");
    expect_reject("duplicate metadata key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
                  "duplicate metadata key");
    expect_reject("tensor named __metadata__", "{" T1("__metadata__", "F32", "[1]", 0, 4) "}", 4,
                  "may not be named \"__metadata__\"");
    expect_reject("two __metadata__",
                  "{\"__metadata__\":{\"k\":\"1\"},\"__metadata__\":{\"k\":\"1\"}}", 0,
                  "__metadata__");

    /* accepted: leading whitespace, unaligned data, scalar, zero-size, null metadata, F4 pairs */
    expect_accept("leading whitespace", " \n\t{" T1("a", "F32", "[]", 0, 4) "}", 4);
    expect_accept("unaligned", "{" T1("a", "U8", "[1]", 0, 1) "," T1("b", "F64", "[1]", 1, 9) "}",
                  9);
    expect_accept("zero-size", "{" T1("a", "F32", "[0,5]", 0, 0) "}", 0);
    expect_accept("null metadata", "{\"__metadata__\":null}", 0);
    expect_accept("F4 pairs", "{" T1("a", "F4", "[4]", 0, 2) "}", 2);
    expect_accept("unknown field", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],"
                                   "\"extra\":1}}",
                  1);

    /* unaligned data is copied out correctly */
    size_t len;
    unsigned char *f = make_file("{" T1("a", "U8", "[1]", 0, 1) "," T1("b", "F32", "[2]", 1, 9) "}",
                                 9, &len);
    float v[2] = {1.5f, -2.25f};
    memcpy(f + len - 8, v, 8);
    dd_safetensors st;
    CHECK_OK(dd_st_load_mem(f, len, &st));
    float got[2] = {0};
    CHECK_OK(dd_st_copy_f32(dd_st_find(&st, "b"), got, 2));
    CHECK(got[0] == 1.5f && got[1] == -2.25f);
    CHECK(dd_st_copy_f32(dd_st_find(&st, "a"), got, 1) != 0); /* U8, not F32 */
    dd_st_free(&st);
    free(f);

    /* the path reader names the file */
    dd_error_clear();
    CHECK(dd_st_load(ST_DIR "does-not-exist.safetensors", &st) != 0);
    CHECK(strstr(dd_error_message(), "does-not-exist.safetensors") != NULL);
    CHECK(dd_st_load(ST_DIR, &st) != 0); /* a folder */
    CHECK(strstr(dd_error_message(), "not a regular file") != NULL);
}

/* ---------------------------------------------------------------- the writer's checks */

static void test_writer_checks(void) {
    uint64_t shape[1] = {1};
    float x = 1;
    unsigned char *b;
    size_t n;
    dd_st_entry dup[2] = {{"a", DD_ST_F32, 1, shape, &x}, {"a", DD_ST_F32, 1, shape, &x}};
    CHECK(dd_st_serialize(dup, 2, NULL, 0, &b, &n) != 0);
    CHECK(strstr(dd_error_message(), "duplicate tensor name") != NULL);
    dd_st_entry dup2[2] = {{"a", DD_ST_F32, 1, shape, &x}, {"a", DD_ST_U8, 1, shape, &x}};
    CHECK(dd_st_serialize(dup2, 2, NULL, 0, &b, &n) != 0); /* different dtypes, same name */
    dd_st_entry meta_name = {"__metadata__", DD_ST_F32, 1, shape, &x};
    CHECK(dd_st_serialize(&meta_name, 1, NULL, 0, &b, &n) != 0);
    dd_st_entry bad_utf8 = {"a\xff", DD_ST_F32, 1, shape, &x};
    CHECK(dd_st_serialize(&bad_utf8, 1, NULL, 0, &b, &n) != 0);
    dd_st_pair kv[2] = {{"k", "1"}, {"k", "2"}};
    CHECK(dd_st_serialize(NULL, 0, kv, 2, &b, &n) != 0);
    CHECK(strstr(dd_error_message(), "duplicate metadata key") != NULL);

    /* what the writer writes, the reader reads: F4 and a large dimension */
    uint64_t s4[2] = {3, 2}, sbig[1] = {5000000000ull};
    unsigned char f4[3] = {0x12, 0x34, 0x56};
    dd_st_entry e[2] = {{"f4", DD_ST_F4, 2, s4, f4}, {"z", DD_ST_U8, 2, (uint64_t[]){0, 5000000000ull}, NULL}};
    (void)sbig;
    CHECK_OK(dd_st_serialize(e, 2, NULL, 0, &b, &n));
    dd_safetensors st;
    CHECK_OK(dd_st_load_mem(b, n, &st));
    const dd_st_tensor *t = dd_st_find(&st, "z");
    CHECK(t && t->shape[1] == 5000000000ull && t->numel == 0);
    t = dd_st_find(&st, "f4");
    CHECK(t && t->end - t->begin == 3 && memcmp(t->data, f4, 3) == 0);
    dd_st_free(&st);
    free(b);
}

/* ---------------------------------------------------------------- atomic writes */

static void test_atomic(void) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/st_atomic_%ld", DD_BINARY_DIR, (long)getpid());
    mkdir(dir, 0755);
    char path[300];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    uint64_t shape[1] = {3};
    float x[3] = {1, 2, 3};
    dd_st_entry e = {"x", DD_ST_F32, 1, shape, x};
    dd_st_pair kv = {"k", "v"};
    CHECK_OK(dd_st_save(path, &e, 1, &kv, 1));
    size_t len1;
    unsigned char *good = tu_read_file(path, &len1);
    CHECK(good != NULL);

    /* a failing write (duplicate names) leaves the existing file untouched */
    dd_st_entry two[2] = {e, e};
    CHECK(dd_st_save(path, two, 2, NULL, 0) != 0);
    size_t len2;
    unsigned char *after = tu_read_file(path, &len2);
    CHECK(after && good && same_bytes(after, len2, good, len1));
    free(after);

    /* overwrite succeeds; no temporary file is left behind */
    x[0] = 7;
    CHECK_OK(dd_st_save(path, &e, 1, NULL, 0));
    dd_safetensors st;
    CHECK_OK(dd_st_load(path, &st));
    float got[3];
    CHECK(dd_st_copy_f32(dd_st_find(&st, "x"), got, 3) == 0 && got[0] == 7);
    dd_st_free(&st);
    int ntmp = tu_count_temporaries(dir);
    CHECKF(ntmp == 0, "temporary files left: %d", ntmp);

    /* a folder that does not exist (or cannot be written) is a clear error */
    char bad[400];
    snprintf(bad, sizeof bad, "%s/no/such/folder/x.safetensors", dir);
    CHECK(dd_st_save(bad, &e, 1, NULL, 0) != 0);
    CHECKF(strstr(dd_error_message(), "cannot create a file in its folder") != NULL, "message: %s",
           dd_error_message());
    if (geteuid() != 0) { /* root writes anywhere */
        chmod(dir, 0555);
        CHECK(dd_st_save(path, &e, 1, NULL, 0) != 0);
        CHECK(strstr(dd_error_message(), "Permission denied") != NULL);
        chmod(dir, 0755);
    }
    /* the target is a folder: rename fails, the temporary file is removed */
    char sub[400];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0755);
    char subf[420];
    snprintf(subf, sizeof subf, "%s/f", sub);
    FILE *q = fopen(subf, "w");
    if (q) fclose(q);
    CHECK(dd_st_save(sub, &e, 1, NULL, 0) != 0);
    ntmp = tu_count_temporaries(dir);
    CHECKF(ntmp == 0, "temporary files left after a failed rename: %d", ntmp);

    /* the header-only reader checks the file size against the offsets without reading data */
    char cut[400];
    snprintf(cut, sizeof cut, "%s/cut.safetensors", dir);
    FILE *c = fopen(cut, "wb");
    if (c && good) {
        fwrite(good, 1, len1 - 1, c);
        fclose(c);
        dd_safetensors h;
        CHECK(dd_st_load_header(cut, &h) != 0);
        CHECK(strstr(dd_error_message(), "truncated") && strstr(dd_error_message(), "cut.safetensors"));
        c = fopen(cut, "ab");
        fputs("xy", c); /* one byte too many */
        fclose(c);
        CHECK(dd_st_load_header(cut, &h) != 0);
        CHECK(strstr(dd_error_message(), "unexpected bytes") != NULL);
    }
    CHECK(dd_st_copy_f32(NULL, x, 1) != 0);

    free(good);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    test_formats_goldens();
    test_reference_files();
    test_rejections();
    test_writer_checks();
    test_atomic();
    return tu_finish();
}
