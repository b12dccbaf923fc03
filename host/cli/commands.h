/* The subcommands of the `diffusion` program. Each lives in host/cli/cmd_NAME.c, parses its own
 * options (getopt_long), prints `diffusion: error: ...` on failure and returns the exit code.
 * Declared weak so that main.c lists every command and reports one not built in. */
#ifndef DD_CLI_COMMANDS_H
#define DD_CLI_COMMANDS_H

#define DD_CMD(name) int cmd_##name(int argc, char **argv) __attribute__((weak))
DD_CMD(train);
DD_CMD(sample);
DD_CMD(info);
DD_CMD(schedule);
DD_CMD(train_classifier);
DD_CMD(fld);
DD_CMD(bench);
#undef DD_CMD

/* Print "diffusion: error: <msg>" to stderr; returns 1 (the exit code for errors). */
int cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
