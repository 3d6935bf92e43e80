/*
 * bridge.h - run the bridge: connect both sides, forward, shut down cleanly.
 */
#ifndef MRB_BRIDGE_H
#define MRB_BRIDGE_H

#include "mrb/config.h"

/* Runs until SIGINT/SIGTERM (installs its own handlers for those, SIGUSR1
 * and SIGPIPE). Returns the process exit status: 0 after a clean shutdown,
 * 1 on a fatal run-time error (logged). cfg must stay valid throughout. */
int mrb_bridge_run(const mrb_config *cfg);

#endif
