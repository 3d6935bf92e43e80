/* backoff.c - decorrelated-jitter reconnect delays (mrb/backoff.h). */
#include "mrb/backoff.h"

void mrb_backoff_init(mrb_backoff *b, int64_t min_ms, int64_t max_ms,
                      uint64_t seed)
{
    b->min_ms = min_ms;
    b->max_ms = max_ms;
    b->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    mrb_backoff_reset(b);
}

void mrb_backoff_reset(mrb_backoff *b)
{
    b->prev_ms = b->min_ms;
    b->attempts = 0;
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int64_t mrb_backoff_next(mrb_backoff *b)
{
    int64_t hi = b->prev_ms * 3;
    if (hi > b->max_ms)
        hi = b->max_ms;
    int64_t d = b->min_ms;
    if (hi > b->min_ms)
        d += (int64_t)(xorshift64(&b->rng) % (uint64_t)(hi - b->min_ms + 1));
    b->prev_ms = d;
    b->attempts++;
    return d;
}
