/*
 * backoff.h - reconnect delays: capped exponential backoff with decorrelated
 * jitter (delay = min(max, random(min, 3 * previous))), so that many bridges
 * that lost the same server do not come back in lock-step. Pure.
 */
#ifndef MRB_BACKOFF_H
#define MRB_BACKOFF_H

#include <stdint.h>

typedef struct mrb_backoff {
    int64_t min_ms, max_ms, prev_ms;
    uint64_t rng;
    unsigned attempts;  /* delays handed out since the last reset */
} mrb_backoff;

void mrb_backoff_init(mrb_backoff *b, int64_t min_ms, int64_t max_ms,
                      uint64_t seed);
int64_t mrb_backoff_next(mrb_backoff *b);
void mrb_backoff_reset(mrb_backoff *b);

#endif
