/*
 * bucket.h - a token bucket: at most `rate` events per second on average,
 * with bursts of up to `burst`. Pure: the caller passes the time (ms, any
 * monotonic clock), so tests drive it with a fake clock. Not thread-safe:
 * one owner thread per bucket.
 */
#ifndef MRB_BUCKET_H
#define MRB_BUCKET_H

#include <stdint.h>

typedef struct mrb_bucket {
    double rate;       /* tokens per ms; 0 = unlimited */
    double burst;      /* capacity */
    double tokens;
    int64_t last_ms;   /* time of the last refill */
} mrb_bucket;

/* rate_per_s 0 makes a bucket that always allows; burst 0 means rate. The
 * bucket starts full. */
void mrb_bucket_init(mrb_bucket *k, long rate_per_s, long burst, int64_t now_ms);
/* Take one token if there is one: 1 taken, 0 over the limit. */
int mrb_bucket_take(mrb_bucket *k, int64_t now_ms);
/* Milliseconds until a token is there (0: now). */
int64_t mrb_bucket_wait_ms(mrb_bucket *k, int64_t now_ms);
static inline int mrb_bucket_limited(const mrb_bucket *k) { return k->rate > 0; }

#endif
