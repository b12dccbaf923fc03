/* Frechet distance between two sets of feature vectors: the core of FLD (SPEC.md, "Frechet LeNet
 * Distance"), the same formula as FID on LeNet5's 84 features (any dimension d works).
 *
 *   FD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))
 *
 * mu and S are the mean and the covariance with the n-1 correction (np.cov's default), computed in
 * double from float features. Three parts:
 * - dd_fld_accum: streaming statistics, one batch of features at a time, so that features of
 *   10,000 images never need to be held at once;
 * - dd_frechet_distance(): the distance between two sets of statistics, through LAPACK;
 * - dd_fld_stats_save() / _load(): reference statistics cached in a small file beside the
 *   classifier (format below).
 *
 * Shape letters: n feature vectors, d features per vector. Matrices are row-major (C order).
 */
#ifndef DIFFUSION_FLD_H
#define DIFFUSION_FLD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest feature dimension accepted (the statistics file stores d*d doubles: 128 MiB at most). */
#define DD_FLD_MAX_DIM 4096

/* Rows of a batch converted to double at a time by dd_fld_accum_add (its scratch size). */
#define DD_FLD_CHUNK 256

/* Statistics of one set of feature vectors. */
typedef struct {
    int d;        /* features per vector */
    int64_t n;    /* how many vectors they came from (kept for reporting; n >= 2) */
    double *mean; /* (d) */
    double *cov;  /* (d, d), symmetric, n-1 correction */
} dd_fld_stats;

/* Allocate mean and cov for dimension d (zeroed, n = 0). */
int dd_fld_stats_alloc(dd_fld_stats *s, int d);
/* Free what alloc, finish or load allocated; safe on a zeroed struct and twice. */
void dd_fld_stats_free(dd_fld_stats *s);

/* Streaming accumulator. Every vector is accumulated as x - shift, where shift is the mean of the
 * first batch: sums of squares about a point close to the mean do not cancel catastrophically the
 * way raw sums of squares do (features of 1000 +- 1 keep their digits). */
typedef struct {
    int d;
    int64_t n;       /* vectors added so far */
    double *shift;   /* (d) mean of the first batch */
    double *sum;     /* (d) sum of (x - shift) */
    double *cross;   /* (d, d) sum of (x - shift)(x - shift)^T; upper triangle (row-major) kept */
    double *scratch; /* (DD_FLD_CHUNK, d) one chunk of a batch converted to double */
} dd_fld_accum;

int dd_fld_accum_init(dd_fld_accum *a, int d);
/* Add n feature vectors x: (n, d) float, row-major. n = 0 is allowed; NaN or Inf is an error
 * (the accumulator is then left unchanged). */
int dd_fld_accum_add(dd_fld_accum *a, const float *x, int64_t n);
/* Mean and covariance of everything added so far (needs at least 2 vectors). Allocates out (free
 * it with dd_fld_stats_free); the accumulator stays usable: more batches can be added after. */
int dd_fld_accum_finish(const dd_fld_accum *a, dd_fld_stats *out);
void dd_fld_accum_free(dd_fld_accum *a);

/* One-shot statistics of x: (n, d) float. Allocates out. */
int dd_fld_stats_compute(dd_fld_stats *out, const float *x, int64_t n, int d);

/* FD between (mu1, s1) and (mu2, s2): mu (d), s (d, d) symmetric positive semi-definite (only
 * the upper triangle is read). Rounding can make the result a tiny negative number when the two
 * sets are the same; it is returned as computed, not clamped. */
int dd_frechet_distance(double *fd, const double *mu1, const double *s1, const double *mu2,
                        const double *s2, int d);
/* The same on two dd_fld_stats of equal d. */
int dd_fld_distance(double *fd, const dd_fld_stats *a, const dd_fld_stats *b);

/* Statistics file: safetensors (../shared/FORMATS.md, include/diffusion/safetensors.h), so
 * numpy or the safetensors library read it as well:
 *   "mean" F64 [d], "cov" F64 [d, d] (row-major),
 *   __metadata__ {"format": "diffusion-fld-stats", "version": "1", "n": "<sample count>"}.
 * Loading checks the format tag, the version, n >= 2, exactly these two tensors with these
 * dtypes and shapes, 1 <= d <= DD_FLD_MAX_DIM, finite values (plus everything the safetensors
 * reader checks: lengths, offsets, header). Written atomically (temporary file, fsync, rename). */
int dd_fld_stats_save(const dd_fld_stats *s, const char *path);
/* Allocates s (free it with dd_fld_stats_free); on error s is left zeroed. */
int dd_fld_stats_load(dd_fld_stats *s, const char *path);

#ifdef __cplusplus
}
#endif
#endif
