/* diffusion: train denoising diffusion models and sample from them (see README.md). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"

int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("diffusion: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command;

static int usage(FILE *f, const command *cmds, int n) {
    fprintf(f, "usage: diffusion COMMAND [OPTIONS]   (diffusion COMMAND --help for its options)\n\n"
               "Denoising diffusion models (DDPM, DDIM, classifier-free guidance) on the CPU or an\n"
               "NVIDIA GPU.\n\ncommands:\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "  %-17s %s%s\n", cmds[i].name, cmds[i].what, cmds[i].run ? "" : " (not in this build)");
    return f == stderr ? 2 : 0;
}

int main(int argc, char **argv) {
    const command cmds[] = {
        {"train", cmd_train, "train a diffusion model on a data set"},
        {"sample", cmd_sample, "generate samples from a checkpoint (DDPM or DDIM, guidance)"},
        {"info", cmd_info, "print a model's layers and parameter count, or a checkpoint's config"},
        {"schedule", cmd_schedule, "print a noise schedule as CSV"},
        {"train-classifier", cmd_train_classifier, "train the LeNet5 classifier used by fld"},
        {"fld", cmd_fld, "Frechet LeNet Distance of samples or data against a reference set"},
        {"bench", cmd_bench, "time training and sampling on this machine"},
    };
    const int n = (int)(sizeof cmds / sizeof cmds[0]);
    if (argc < 2) return usage(stderr, cmds, n);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))
        return usage(stdout, cmds, n);
    if (!strcmp(argv[1], "--version")) {
        puts("diffusion 0.1.0");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(argv[1], cmds[i].name)) continue;
        if (!cmds[i].run) return cli_error("command '%s' is not in this build", cmds[i].name);
        return cmds[i].run(argc - 1, argv + 1);
    }
    cli_error("unknown command '%s' (diffusion --help lists them)", argv[1]);
    return 2;
}
