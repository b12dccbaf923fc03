/* diffusion info: a model's layers and parameter count, from options or from a checkpoint.
 *
 *   diffusion info --model unet --mult 1,2,3 --no-attention
 *   diffusion info run/model.safetensors
 *
 * The count is PyTorch's sum(p.numel() for p in parameters()): the sinusoidal table is a buffer,
 * listed but not counted (SPEC.md's parameter table counts the same way). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"
#include "commands.h"
#include "diffusion/checkpoint.h"
#include "diffusion/error.h"
#include "diffusion/models.h"
#include "diffusion/safetensors.h"

static const char usage[] =
    "usage: diffusion info [MODEL OPTIONS]\n"
    "       diffusion info FILE.safetensors\n"
    "\n"
    "Print a model's layers (modules in forward order with their parameter shapes) and a line\n"
    "'parameters: N'; for a checkpoint, its stored config and metadata as well.\n"
    "\n" CLI_MODEL_HELP "  -h, --help          this text\n";

/* A checkpoint: metadata, then the model its config describes, checked against the tensors. */
static int info_file(const char *path) {
    dd_safetensors h;
    if (dd_checkpoint_read_meta(path, &h)) return cli_error("%s", dd_error_message());
    const char *cfg = dd_st_meta(&h, "config");
    dd_model_config c;
    if (!cfg) {
        dd_st_free(&h);
        return cli_error("%s: no model config in the metadata (key \"config\")", path);
    }
    if (dd_model_config_from_json(&c, cfg)) {
        int rc = cli_error("%s: %s", path, dd_error_message());
        dd_st_free(&h);
        return rc;
    }
    printf("file: %s\nconfig: %s\n", path, cfg);
    for (int i = 0; i < h.nmeta; i++)
        if (strcmp(h.meta[i].key, "config")) printf("%s: %s\n", h.meta[i].key, h.meta[i].value);
    /* The model's own tensors (names without '/'); EMA and Adam state live under prefixes. */
    uint64_t stored = 0;
    int nstored = 0;
    for (int i = 0; i < h.ntensors; i++)
        if (!strchr(h.tensors[i].name, '/')) stored += h.tensors[i].numel, nstored++;
    int state = dd_checkpoint_state(&h);
    printf("stored: %d model tensors (%llu values)%s%s\n", nstored, (unsigned long long)stored,
           state & DD_CKPT_EMA ? ", EMA" : "", state & DD_CKPT_ADAM ? ", Adam state" : "");
    dd_st_free(&h);

    dd_params *p = dd_params_new(&dd_cpu_backend);
    if (!p || dd_model_register(p, &c)) {
        dd_params_free(p);
        return cli_error("%s: %s", path, dd_error_message());
    }
    uint64_t want = dd_params_count_numel(p);
    int nwant = p->count;
    dd_params_free(p);
    if (dd_model_print_layers(stdout, &c)) return cli_error("%s", dd_error_message());
    if (nwant != nstored || want != stored)
        return cli_error("%s: the file holds %d tensors (%llu values), its config's model has %d "
                         "(%llu values)", path, nstored, (unsigned long long)stored, nwant,
                         (unsigned long long)want);
    return 0;
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {CLI_MODEL_OPTIONS, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    cli_model_opts m;
    cli_model_opts_init(&m);
    int any_model_opt = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(usage, stdout);
            return 0;
        }
        if (c == '?') return cli_error("info: unknown option '%s' (diffusion info --help)", argv[optind - 1]);
        if (c == ':') return cli_error("info: option '%s' needs a value", argv[optind - 1]);
        if (cli_model_opt(&m, c, optarg)) return cli_error("info: %s", dd_error_message());
        any_model_opt = 1;
    }
    if (optind < argc) {
        if (any_model_opt)
            return cli_error("info: give either model options or a checkpoint file, not both");
        if (optind + 1 < argc) return cli_error("info: one checkpoint file at a time");
        return info_file(argv[optind]);
    }
    if (!any_model_opt)
        return cli_error("info: give --model KIND (and options) or a checkpoint file "
                         "(diffusion info --help)");
    dd_model_config cfg;
    if (cli_model_config(&m, DD_MODEL_UNET, &cfg)) return cli_error("info: %s", dd_error_message());
    if (dd_model_print_layers(stdout, &cfg)) return cli_error("info: %s", dd_error_message());
    return 0;
}
