/*
 * loop_int.h - what the event loop (bridge.c) calls in the files cut from
 * it: the Redis -> MQTT pump (pump.c) and the reload (reload.c). Main
 * thread only. Internal: not installed.
 */
#ifndef MRB_LOOP_INT_H
#define MRB_LOOP_INT_H

#include "bridge_int.h"

/* pump.c: publish what waits in out_q, in order, until the broker or a
 * route's rate limit holds the next one back. */
void mrb_pump_out(mrb_bridge *b);

/* reload.c: SIGHUP (what it applies: there). */
void mrb_reload(mrb_bridge *b);

#endif
