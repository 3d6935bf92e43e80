/*
 * statscmd.h - the `stats` subcommand: read the bridges' reports from Redis
 * and print them (statscmd.c).
 */
#ifndef MRB_STATSCMD_H
#define MRB_STATSCMD_H

/* argv[0] is "stats"; returns the exit status (0, 1 Redis failed, 2 usage). */
int mrb_statscmd_main(int argc, char **argv);

#endif
