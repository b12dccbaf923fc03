/* Checkpoints: a dd_params saved as a safetensors file (include/diffusion/safetensors.h).
 *
 * Tensors, all F32 in the parameters' PyTorch shapes:
 *   <name>          every parameter's values, under its PyTorch state_dict name, so a PyTorch
 *                   module loads the file with strict=True after dropping every tensor whose name
 *                   contains '/'
 *   ema/<name>      the EMA copy            (saved with DD_CKPT_EMA)
 *   adam_m/<name>   Adam's first moment     (saved with DD_CKPT_ADAM)
 *   adam_v/<name>   Adam's second moment    (saved with DD_CKPT_ADAM)
 * Metadata (flat string keys): "format" = DD_CKPT_FORMAT, "adam_step" = the optimizer's step
 * count in decimal, then the caller's pairs (e.g. "config" = the model's JSON) in their order.
 *
 * Writes are atomic (a failed save leaves an existing file untouched). Loads check everything
 * before changing anything: every parameter present as F32 with its exact shape, no unknown
 * model tensors, and the asked-for state present; messages name the tensor and the problem. */
#ifndef DIFFUSION_CHECKPOINT_H
#define DIFFUSION_CHECKPOINT_H

#include "diffusion/graph.h"
#include "diffusion/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DD_CKPT_FORMAT "diffusion-checkpoint-1"

/* Which training state to save or load besides the values. */
enum {
    DD_CKPT_VALUES = 0, /* the values only */
    DD_CKPT_EMA = 1,    /* ema/<name> */
    DD_CKPT_ADAM = 2,   /* adam_m/<name>, adam_v/<name> and the "adam_step" metadata */
    DD_CKPT_TRAIN = 3,  /* both: everything an exact resume needs */
};

/* Save p's values (and the state in `flags`) with the caller's metadata pairs (keys "format"
 * and "adam_step" are reserved). p must be allocated; parameter names must not contain '/'. */
int dd_checkpoint_save(const char *path, const dd_params *p, const dd_st_pair *meta, int nmeta,
                       int flags);

/* Load into an allocated p whose parameters are registered (the model built from the same
 * config). Values always; with DD_CKPT_EMA the EMA copy (else the EMA is set to the loaded
 * values); with DD_CKPT_ADAM Adam's moments and step (else they restart from zero). Asking for
 * state the file does not hold is an error. A "format" other than DD_CKPT_FORMAT is refused; a
 * file without one (weights written by PyTorch) is accepted. Tensors named "<other>/<x>" with a
 * prefix other than ema, adam_m, adam_v are ignored. On failure p is unchanged. */
int dd_checkpoint_load(const char *path, dd_params *p, int flags);

/* Read only the header (metadata, tensor names and shapes) without the data, validated as
 * dd_st_load_header does, and refuse a "format" other than DD_CKPT_FORMAT. Look keys up with
 * dd_st_meta(hdr, "config"); release with dd_st_free(hdr). */
int dd_checkpoint_read_meta(const char *path, dd_safetensors *hdr);

/* Which state a checkpoint (its header) holds: DD_CKPT_EMA | DD_CKPT_ADAM bits, each set only
 * when the tensors of every parameter in hdr are there. */
int dd_checkpoint_state(const dd_safetensors *hdr);

#ifdef __cplusplus
}
#endif
#endif
