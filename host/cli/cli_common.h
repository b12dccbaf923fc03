/* Option parsing shared by the subcommands: numbers with range checks, the model options that
 * `info` and `train` both take, the device, and loading a data set by name. Each parser prints
 * nothing: it returns -1 after dd_error() and the command reports it with cli_error(). */
#ifndef DD_CLI_COMMON_H
#define DD_CLI_COMMON_H

#include <getopt.h>
#include <stdint.h>

#include "diffusion/backend.h"
#include "diffusion/data.h"
#include "diffusion/models.h"

int cli_int(const char *opt, const char *arg, long lo, long hi, int *out);
int cli_i64(const char *opt, const char *arg, int64_t lo, int64_t hi, int64_t *out);
int cli_u64(const char *opt, const char *arg, uint64_t *out);
int cli_float(const char *opt, const char *arg, double lo, double hi, float *out);
/* --steps and --eta choose DDIM's schedule: with DDPM (ddim 0) either one is an error, not a
 * setting quietly ignored */
int cli_ddim_only(int ddim, int steps_given, int eta_given);
int cli_double(const char *opt, const char *arg, double lo, double hi, double *out);
/* "28x28" or "32" */
int cli_size(const char *opt, const char *arg, int *h, int *w);

/* The model options (--model, --in, --channels, --mult, --no-attention, --groups, --heads,
 * --classes, --hidden, --timesteps, --size, --combine): their getopt_long entries (append
 * CLI_MODEL_OPTIONS to a command's table; the values are CLI_OPT_BASE + k) and the applier. */
enum {
    CLI_OPT_BASE = 1000,
    CLI_OPT_MODEL = CLI_OPT_BASE,
    CLI_OPT_IN,
    CLI_OPT_CHANNELS,
    CLI_OPT_MULT,
    CLI_OPT_NO_ATTENTION,
    CLI_OPT_GROUPS,
    CLI_OPT_HEADS,
    CLI_OPT_CLASSES,
    CLI_OPT_HIDDEN,
    CLI_OPT_TIMESTEPS,
    CLI_OPT_SIZE,
    CLI_OPT_COMBINE,
    CLI_OPT_MODEL_END
};
#define CLI_MODEL_OPTIONS                                                                         \
    {"model", required_argument, 0, CLI_OPT_MODEL}, {"in", required_argument, 0, CLI_OPT_IN},     \
        {"channels", required_argument, 0, CLI_OPT_CHANNELS},                                     \
        {"mult", required_argument, 0, CLI_OPT_MULT},                                             \
        {"no-attention", no_argument, 0, CLI_OPT_NO_ATTENTION},                                   \
        {"groups", required_argument, 0, CLI_OPT_GROUPS},                                         \
        {"heads", required_argument, 0, CLI_OPT_HEADS},                                           \
        {"classes", required_argument, 0, CLI_OPT_CLASSES},                                       \
        {"hidden", required_argument, 0, CLI_OPT_HIDDEN},                                         \
        {"timesteps", required_argument, 0, CLI_OPT_TIMESTEPS},                                   \
        {"size", required_argument, 0, CLI_OPT_SIZE},                                             \
        {"combine", required_argument, 0, CLI_OPT_COMBINE}
#define CLI_MODEL_HELP                                                                            \
    "model options:\n"                                                                            \
    "  --model KIND        unet | unet-fixed | unet-cond | mlp2d | mlp2d-cond | lenet\n"          \
    "  --in C              input channels\n"                                                      \
    "  --channels N        model channels (unet*)\n"                                              \
    "  --mult 1,2,4        channel multipliers per level, the first 1 (unet*)\n"                  \
    "  --no-attention      no middle attention (unet*)\n"                                         \
    "  --groups G          GroupNorm groups (unet*)\n"                                            \
    "  --heads H           attention heads (unet*)\n"                                             \
    "  --classes K         classes of a conditional model\n"                                      \
    "  --combine concat|sum  class embedding with the time embedding (unet-cond)\n"               \
    "  --hidden H          hidden width (mlp2d*)\n"                                               \
    "  --timesteps T       diffusion steps (rows of the time table)\n"                            \
    "  --size HxW          image size\n"

/* Model options seen so far, applied after the kind is known (the kind's defaults first). */
typedef struct {
    int have_kind;
    dd_model_kind kind;
    int in, channels, groups, heads, classes, hidden, timesteps, h, w, no_attention, combine;
    int n_mult, mult[DD_MAX_LEVELS];
} cli_model_opts;

void cli_model_opts_init(cli_model_opts *m);
/* Record one model option (opt in [CLI_OPT_MODEL, CLI_OPT_MODEL_END)). */
int cli_model_opt(cli_model_opts *m, int opt, const char *arg);
/* kind's defaults, then every recorded option; validated. */
int cli_model_config(const cli_model_opts *m, dd_model_kind default_kind, dd_model_config *c);

/* --device auto|cpu|cuda */
const dd_backend *cli_backend(const char *name);

/* Load --data SPEC (with limit, seed, image size/channels for image folders). */
int cli_load_data(dd_dataset *d, const char *spec, int64_t limit, uint64_t seed, int test_split,
                  int img_channels, int img_h, int img_w);

#endif
