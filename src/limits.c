/*
 * limits.c - the per-route rate limits (route options rate and burst): one
 * array of token buckets indexed like the route table, allocated and freed
 * in one place (see bridge_int.h for which thread owns which bucket).
 *
 * Over the limit, a QoS 0 message is dropped and counted (the route's
 * dropped_rate_limited in b->st, summed in the stats line); a QoS 1/2
 * one waits for a token: MQTT->Redis the ingest thread holds it (and so
 * Paho's receive thread, and so the broker), Redis->MQTT it waits in out_q
 * (pub/sub) or in the reader's window (streams).
 */
#include <stdlib.h>

#include <stdio.h>

#include "bridge_int.h"

mrb_route_limit *mrb_limits_alloc(const mrb_routes *t, int64_t now, mrb_err *err)
{
    size_t limited = 0;
    *err = MRB_OK;
    for (size_t i = 0; i < t->n; i++)
        limited += t->route[i].rate > 0;
    if (limited == 0)
        return NULL;
    mrb_route_limit *l = calloc(t->n, sizeof(*l));
    if (!l) {
        *err = MRB_ERR_NOMEM;
        return NULL;
    }
    for (size_t i = 0; i < t->n; i++) {
        const mrb_route *r = &t->route[i];
        mrb_bucket_init(&l[i].to_redis, r->rate, r->burst, now);
        mrb_bucket_init(&l[i].to_mqtt, r->rate, r->burst, now);
    }
    return l;
}

void mrb_limits_free(mrb_route_limit *l)
{
    free(l);
}

void mrb_limits_dropped_one(mrb_bridge *b, size_t ri, int to_redis,
                            mrb_ratelimit *rl, const char *side, const char *name,
                            size_t len, mrb_logbuf *lb)
{
    uint64_t sup, n = 0;
    atomic_fetch_add(&b->rate_limited_total, 1); /* survives reloads */
    if (ri < b->st.n) {
        mrb_dir_stats *d = to_redis ? &b->st.r[ri].m2r : &b->st.r[ri].r2m;
        mrb_stats_count(&d->dropped_rate_limited, 1);
        n = atomic_load(&d->dropped_rate_limited);
    }
    char esc[MRB_LOG_ESCAPE_MAX];
    if (!mrb_ratelimit_allow(rl, mrb_now_ms(), &sup)) {
        /* swallowed: its summary is due then (mrb_limits_flush) */
        int64_t *due = &b->limits_due_ms[to_redis ? 1 : 0];
        *due = mrb_min_ms(*due, mrb_ratelimit_next_ms(rl));
    } else {
        char line[600];
        mrb_route_format(&b->routes.route[ri], line, sizeof(line));
#define DROPPED_FMT "dropped QoS 0 message from %s '%s': over the rate limit of " \
                    "route '%s'; rate_limited=%llu on that route (%llu similar " \
                    "not logged)"
        if (lb)
            mrb_logbuf_add(lb, MRB_LOG_WARNING, DROPPED_FMT, side,
                           mrb_log_escape(name, len, esc, sizeof(esc)), line,
                           (unsigned long long)n, (unsigned long long)sup);
        else
            mrb_warn(DROPPED_FMT, side, mrb_log_escape(name, len, esc, sizeof(esc)),
                     line, (unsigned long long)n, (unsigned long long)sup);
#undef DROPPED_FMT
    }
}

int64_t mrb_limits_flush(mrb_bridge *b, int to_redis, int64_t now, mrb_logbuf *lb)
{
    int64_t *due = &b->limits_due_ms[to_redis ? 1 : 0];
    if (now < *due)
        return *due; /* (not a walk over the routes every turn) */
    int64_t next = INT64_MAX;
    for (size_t i = 0; b->limits && i < b->routes.n; i++) {
        mrb_route_limit *l = &b->limits[i];
        mrb_ratelimit *rl = to_redis ? &l->rl_redis : &l->rl_mqtt;
        if (!rl->suppressed)
            continue;
        char line[600], what[700];
        mrb_route_format(&b->routes.route[i], line, sizeof(line));
        snprintf(what, sizeof(what), "dropped QoS 0 messages from %s over the "
                 "rate limit of route '%s'", to_redis ? "MQTT" : "Redis", line);
        mrb_dir_stats *d = i < b->st.n ? (to_redis ? &b->st.r[i].m2r : &b->st.r[i].r2m)
                                       : NULL;
        next = mrb_min_ms(next, mrb_ratelimit_flush(
            rl, now, lb, what, "rate_limited",
            d ? atomic_load(&d->dropped_rate_limited) : 0));
    }
    *due = next;
    return next;
}
