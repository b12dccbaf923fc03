/* diffusion schedule: print a noise schedule (or DDIM's step pairs) as CSV. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "commands.h"
#include "diffusion/diffusion.h"
#include "diffusion/error.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: diffusion schedule [--kind linear|cosine|sigmoid] [--timesteps T] [--ddim TAU]\n"
            "                          [--beta-start B0] [--beta-end B1]\n\n"
            "Print a noise schedule as CSV: t,beta,alpha_bar,posterior_variance for t = 1..T.\n"
            "With --ddim, print DDIM's TAU step pairs t,t_next instead (TAU <= T).\n\n"
            "options:\n"
            "  -k, --kind KIND       linear, cosine (default) or sigmoid\n"
            "  -T, --timesteps T     number of timesteps, >= 1 (default 100)\n"
            "  -d, --ddim TAU        DDIM sampling steps\n"
            "      --beta-start B0   linear only: first beta before the 1000/T scaling (1e-4)\n"
            "      --beta-end B1     linear only: last beta before the 1000/T scaling (0.02)\n"
            "  -h, --help            this help\n");
}

static int parse_int(const char *s, const char *what, int *v) {
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x < INT_MIN || x > INT_MAX)
        return cli_error("%s: '%s' is not an integer", what, s);
    *v = (int)x;
    return 0;
}

static int parse_double(const char *s, const char *what, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (errno || end == s || *end) return cli_error("%s: '%s' is not a number", what, s);
    return 0;
}

int cmd_schedule(int argc, char **argv) {
    enum { OPT_BETA_START = 1000, OPT_BETA_END };
    static const struct option opts[] = {
        {"kind", required_argument, 0, 'k'},
        {"timesteps", required_argument, 0, 'T'},
        {"ddim", required_argument, 0, 'd'},
        {"beta-start", required_argument, 0, OPT_BETA_START},
        {"beta-end", required_argument, 0, OPT_BETA_END},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    dd_schedule_kind kind = DD_SCHEDULE_COSINE;
    int T = 100, tau = 0, have_tau = 0;
    double b0 = DD_LINEAR_BETA_START, b1 = DD_LINEAR_BETA_END;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":k:T:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            if (dd_schedule_kind_parse(optarg, &kind)) return cli_error("%s", dd_error_message());
            break;
        case 'T':
            if (parse_int(optarg, "--timesteps", &T)) return 1;
            break;
        case 'd':
            if (parse_int(optarg, "--ddim", &tau)) return 1;
            have_tau = 1;
            break;
        case OPT_BETA_START:
            if (parse_double(optarg, "--beta-start", &b0)) return 1;
            if (!(b0 > 0)) return cli_error("--beta-start must be > 0");
            break;
        case OPT_BETA_END:
            if (parse_double(optarg, "--beta-end", &b1)) return 1;
            if (!(b1 > 0)) return cli_error("--beta-end must be > 0");
            break;
        case 'h': usage(stdout); return 0;
        case ':': return cli_error("option '%s' needs a value", argv[optind - 1]);
        default: return cli_error("unknown option '%s' (diffusion schedule --help)", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_error("unexpected argument '%s'", argv[optind]);
    if (T < 1) return cli_error("--timesteps must be at least 1 (got %d)", T);

    if (have_tau) {
        if (tau > T) return cli_error("--ddim %d is more than --timesteps %d (tau must be <= T)", tau, T);
        int *times = malloc(((size_t)(tau > 0 ? tau : 0) + 1) * sizeof(int));
        if (!times) return cli_error("out of memory");
        if (dd_ddim_times(T, tau, times)) {
            free(times);
            return cli_error("%s", dd_error_message());
        }
        printf("t,t_next\n");
        for (int i = 0; i < tau; i++) printf("%d,%d\n", times[i], times[i + 1]);
        free(times);
        return 0;
    }
    dd_schedule s;
    if (dd_schedule_init(&s, kind, T, b0, b1)) return cli_error("%s", dd_error_message());
    printf("t,beta,alpha_bar,posterior_variance\n");
    for (int t = 1; t <= T; t++)
        printf("%d,%.9g,%.9g,%.9g\n", t, (double)s.beta[t], (double)s.abar[t],
               (double)s.post_var[t]);
    dd_schedule_free(&s);
    return 0;
}
