/*
 * bucket.c - the token bucket of per-route rate limits (see mrb/bucket.h).
 */
#include "mrb/bucket.h"

void mrb_bucket_init(mrb_bucket *k, long rate_per_s, long burst, int64_t now_ms)
{
    k->rate = rate_per_s > 0 ? (double)rate_per_s / 1000.0 : 0;
    k->burst = (double)(burst > 0 ? burst : rate_per_s);
    if (k->burst < 1)
        k->burst = 1;
    k->tokens = k->burst;
    k->last_ms = now_ms;
}

static void refill(mrb_bucket *k, int64_t now_ms)
{
    if (now_ms > k->last_ms) {
        k->tokens += (double)(now_ms - k->last_ms) * k->rate;
        if (k->tokens > k->burst)
            k->tokens = k->burst;
        k->last_ms = now_ms;
    }
}

int mrb_bucket_take(mrb_bucket *k, int64_t now_ms)
{
    if (k->rate <= 0)
        return 1;
    refill(k, now_ms);
    if (k->tokens < 1.0)
        return 0;
    k->tokens -= 1.0;
    return 1;
}

int64_t mrb_bucket_wait_ms(mrb_bucket *k, int64_t now_ms)
{
    if (k->rate <= 0)
        return 0;
    refill(k, now_ms);
    if (k->tokens >= 1.0)
        return 0;
    /* round up: waking before the token is there would spin (less a
     * rounding error's worth, or a whole ms is lost to it) */
    double ms = (1.0 - k->tokens) / k->rate - 1e-6;
    int64_t w = (int64_t)ms; /* ms <= 1000 (rate >= 1/s): exact in a double */
    return (double)w < ms ? w + 1 : (w > 0 ? w : 1);
}
