/* Training a diffusion model (or the LeNet5 classifier) and the checkpoints that hold it.
 *
 * A run folder holds: config.json (the run's settings), epoch-NNN.safetensors after every epoch,
 * model.safetensors (the final checkpoint), history.csv (loss per batch and per epoch), loss.png
 * (batch and validation loss) and samples.png (a grid drawn with the EMA weights).
 *
 * Checkpoints are safetensors (include/diffusion/checkpoint.h): the model's tensors under the
 * PyTorch names, the EMA copy, Adam's moments, and in the metadata the model config, schedule,
 * objective, data shape, classes, epoch, step and seed. Resuming from one continues exactly as if
 * never stopped: the data order of an epoch and the noise of a step are functions of (seed,
 * epoch) and (seed, step) alone (Philox), so no generator state needs saving beyond the step. */
#ifndef DIFFUSION_TRAIN_H
#define DIFFUSION_TRAIN_H

#include <stdint.h>

#include "diffusion/data.h"
#include "diffusion/diffusion.h"
#include "diffusion/models.h"
#include "diffusion/runner.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a diffusion checkpoint describes besides its tensors. */
typedef struct {
    dd_model_config model;
    dd_schedule_kind schedule;
    double beta_start, beta_end; /* linear schedule ends before the 1000/T scaling */
    dd_objective objective;
    int epoch;       /* completed epochs */
    int64_t step;    /* completed optimizer steps */
    uint64_t seed;   /* the run's seed (data order, noise) */
    char data[256];  /* the --data the model was trained on */
    int batch;       /* training batch size */
    float lr, ema_decay, prob_uncond;
    double val_fraction;
} dd_run_info;

void dd_run_info_default(dd_run_info *ri, dd_model_kind kind);

/* Save the runner's parameters (with EMA and Adam state) and ri atomically. */
int dd_run_save(const char *path, const dd_runner *r, const dd_run_info *ri);
/* Read only the run info of a checkpoint (to build the model before loading it). */
int dd_run_read_info(const char *path, dd_run_info *ri);
/* Load a checkpoint into a fresh runner on backend be: reads the info, builds the model,
 * loads the tensors (and the training state when with_state). */
int dd_run_load(const char *path, const dd_backend *be, int with_state, dd_runner *r,
                dd_run_info *ri);

typedef struct {
    dd_run_info run;       /* model, schedule, objective, batch, lr, ema_decay, prob_uncond, seed */
    int epochs;            /* total epochs (a resumed run continues up to this) */
    const char *out_dir;   /* created if missing */
    const char *resume;    /* checkpoint to continue from, or NULL */
    int progress;          /* progress bar on stderr: 1 always, 0 never, -1 when stderr is a tty */
    int sample_n;          /* images in samples.png after training (0: none) */
    int checkpoint_every_epoch; /* 1: epoch-NNN.safetensors after every epoch (the default) */
} dd_train_opts;

void dd_train_opts_default(dd_train_opts *o, dd_model_kind kind);

/* One whole training step on a batch in backend memory, x0 (B, per) and labels (B, or NULL for
 * an unconditional model): the draws (t, label drops, noise) at (ri->seed, stream 1, step *
 * dd_train_batch_stride) with the step read from the parameters' counter in backend memory, x_t
 * and the target, then dd_runner_train_step with ri's lr and EMA decay. Recorded once and
 * replayed through rp (zeroed before the first call; dd_replay_reset after the last). The loss
 * is left in dd_runner_loss(r). */
int dd_train_step(dd_replay *rp, dd_runner *r, dd_train_batch *tb, const float *x0,
                  const int32_t *labels, const dd_run_info *ri);

/* Train on `data` (already loaded, in [-1, 1]) with backend be. On a NaN or infinite loss the
 * run stops with an error naming the epoch and step; the last epoch's checkpoint stays. */
int dd_train(const dd_train_opts *o, const dd_dataset *data, const dd_backend *be);

/* Sample with a loaded runner: the EMA weights when use_ema, sampler "ddpm" or "ddim". */
typedef struct {
    int ddim;       /* 0: DDPM, 1: DDIM */
    int steps;      /* DDIM tau */
    float eta;      /* DDIM eta */
    int use_ema;
} dd_sampler_choice;
int dd_run_sample(dd_runner *r, const dd_run_info *ri, const dd_sampler_choice *sc,
                  dd_sample_opts *o, float *out);

#ifdef __cplusplus
}
#endif
#endif
