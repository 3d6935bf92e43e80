/*
 * bridge.h - run the bridge: connect both sides, forward, shut down cleanly.
 */
#ifndef MRB_BRIDGE_H
#define MRB_BRIDGE_H

#include "mrb/config.h"

/* Reads the configuration again for a reload: fills *out (initialised by
 * the caller with mrb_config_init) the way the start did, or returns
 * MRB_ERR_INVALID with one line in msg. */
typedef mrb_err (*mrb_reload_fn)(void *ctx, mrb_config *out, char *msg,
                                 size_t msglen);

/* Runs until SIGINT/SIGTERM (installs its own handlers for those, SIGHUP,
 * SIGUSR1 and SIGPIPE). On SIGHUP, reload (if not NULL) reads the
 * configuration again and the bridge applies its routes and log level
 * without reconnecting. Returns the process exit status: 0 after a clean
 * shutdown, 1 on a fatal run-time error (logged). cfg must stay valid
 * throughout. */
int mrb_bridge_run(const mrb_config *cfg, mrb_reload_fn reload, void *reload_ctx);

#endif
