/*
 * cli.h - the command line: parsing argv, --help, masking the passwords of
 * argv, and applying the command line over a configuration (mrb/config.h).
 */
#ifndef MRB_CLI_H
#define MRB_CLI_H

#include <stdio.h>

#include "mrb/config.h"
#include "mrb/err.h"

/* Command-line values: NULL / -1 / 0 when not given. Strings point into argv. */
typedef struct mrb_cli {
    const char *config_file;
    char *mqtt_url;           /* argv strings: mrb_cli_scrub() masks them */
    char *redis_url;
    const char *id;
    const char **routes;      /* owned array of argv pointers */
    size_t n_routes;
    int check;
    int verbosity;            /* -1 quiet, 0 default, 1 verbose */
    int syslog;               /* --syslog */
    int help, version;
    int argc;                 /* as given to mrb_cli_parse(), for the scrub */
    char **argv;
} mrb_cli;

/* Parse argv. MRB_ERR_INVALID with a message on bad usage. Free with
 * mrb_cli_free(). */
mrb_err mrb_cli_parse(int argc, char **argv, mrb_cli *cli, char *msg,
                      size_t msglen);
void mrb_cli_free(mrb_cli *cli);
/* Replace the passwords of --mqtt and --redis in argv with "***", so that
 * process listings (/proc/PID/cmdline) no longer show them nor their
 * length. argv cannot grow: the rest of argv moves up over the gap (its
 * pointers and the strings of cli follow) and NULs fill the end of argv's
 * block, where /proc/PID/cmdline shows them as empty arguments after the
 * last one. Strings that are not one block (an argv built otherwise): each
 * URL closes up within itself. A password shorter than "***" is starred
 * over. Call after mrb_config_apply_cli() has copied the URLs; pointers into
 * argv kept elsewhere are stale afterwards. */
void mrb_cli_scrub(mrb_cli *cli);
/* --help: the usage text, from the table of options. */
void mrb_cli_usage(FILE *out);

/* One command-line option (a row of cli.c's table). */
typedef struct mrb_cli_option {
    char short_name;          /* 'c' for -c; 0 for none */
    const char *long_name;    /* "config" for --config */
    const char *arg;          /* the argument's name, NULL: none */
    const char *help;         /* --help: lines, '\n'-separated */
    const char *doc;          /* the man page: a paragraph, `code` in
                                 backquotes; NULL: help */
} mrb_cli_option;

/* The options in --help order; *n: how many. Static storage. */
const mrb_cli_option *mrb_cli_options(size_t *n);

/* Apply command-line overrides (routes, URLs, id, verbosity). */
mrb_err mrb_config_apply_cli(mrb_config *cfg, const mrb_cli *cli, char *msg,
                             size_t msglen);

#endif
