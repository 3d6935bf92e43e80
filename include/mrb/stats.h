/*
 * stats.h - per-route counters, the latency histogram and the stats JSON
 * document (published on bridge/<id>/stats and in bridge:<id>:stats).
 *
 * Pure: no I/O, no threads of its own. The counters are relaxed atomics so
 * that the thread that owns a direction's step can count without a lock
 * and the main thread can read them for the report:
 *
 *   MQTT -> Redis  in, bytes_in, out, bytes_out, latency, unmappable,
 *                  send_failed: the ingest thread; too_large, queue_full:
 *                  Paho's receive thread (under in_lock).
 *   Redis -> MQTT  in, bytes_in, too_large, unmappable, queue_full,
 *                  send_failed (refused): the main thread; out, bytes_out,
 *                  latency, send_failed (failed in flight): Paho's
 *                  completion callbacks.
 *   rate_limited   whoever applies a route's rate limit: mrb_stats_rate_limited().
 *
 * The latency of a message is from the moment the bridge took it to the
 * moment the other side confirmed it (Redis's reply; Paho's completion, which
 * for QoS 0 is when it was written), in microseconds, in a log-scale
 * histogram of fixed size; p50/p99 cover the last interval: the main thread
 * takes (and zeroes) the buckets each time it reports.
 */
#ifndef MRB_STATS_H
#define MRB_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "mrb/err.h"
#include "mrb/route.h"

/* Buckets: 0 and 1 us exactly, then two per power of two (edges 2^e and
 * 1.5 * 2^e), the last one open (from about 53 minutes). */
#define MRB_LAT_BUCKETS 64

typedef struct mrb_lat_hist {
    atomic_uint n[MRB_LAT_BUCKETS];
} mrb_lat_hist;

unsigned mrb_lat_bucket(uint64_t us);
/* The largest value bucket i holds (UINT64_MAX for the last). */
uint64_t mrb_lat_bucket_max(unsigned i);
static inline void mrb_lat_add(mrb_lat_hist *h, uint64_t us)
{
    atomic_fetch_add_explicit(&h->n[mrb_lat_bucket(us)], 1, memory_order_relaxed);
}
/* Add h's counts to acc and zero them in h (no count is lost to a
 * concurrent mrb_lat_add). */
void mrb_lat_take(mrb_lat_hist *h, uint64_t acc[MRB_LAT_BUCKETS]);
/* The q-quantile (0 < q <= 1) of counts: the largest value of the bucket
 * that holds it, so at most 50% high; 0 when there are no counts. */
uint64_t mrb_lat_quantile(const uint64_t counts[MRB_LAT_BUCKETS], double q);

typedef struct mrb_lat_summary {
    uint64_t count, p50_us, p99_us;
} mrb_lat_summary;
mrb_lat_summary mrb_lat_summarize(const uint64_t counts[MRB_LAT_BUCKETS]);

/* One route, one direction. */
typedef struct mrb_dir_stats {
    atomic_ullong in, bytes_in;     /* taken from the source via this route */
    atomic_ullong out, bytes_out;   /* confirmed by the other side */
    atomic_ullong dropped_too_large, dropped_unmappable, dropped_queue_full,
        dropped_rate_limited, dropped_send_failed;
    mrb_lat_hist lat;
} mrb_dir_stats;

typedef struct mrb_route_stats {
    mrb_dir_stats m2r, r2m;
} mrb_route_stats;

/* The counters of one route table: one mrb_route_stats per route, indexed
 * like t->route[], and, for drops seen before a message is mapped, the
 * first route behind each subscription (indexed like t->mqtt_sub[] and
 * t->redis_sub[]). */
typedef struct mrb_stats_table {
    mrb_route_stats *r;
    size_t n;
    size_t *mqtt_sub_route, *redis_sub_route;
} mrb_stats_table;

/* Allocate zeroed counters for t. Free with mrb_stats_table_free. */
mrb_err mrb_stats_table_alloc(mrb_stats_table *st, const mrb_routes *t);
void mrb_stats_table_free(mrb_stats_table *st);
/* For a route table swapped in (reload): add the counters of each route of
 * old_t to the route of new_t with the same text (mrb_route_format), so
 * that a route that stays keeps counting on. Routes that went away are
 * dropped. Call when no thread counts into old any more. */
void mrb_stats_table_carry(mrb_stats_table *st, const mrb_routes *t,
                           mrb_stats_table *old, const mrb_routes *old_t);

static inline void mrb_stats_count(atomic_ullong *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}
/* For the per-route rate limiter: a message of route index `route` dropped
 * because the route's rate was exceeded (any thread). */
static inline void mrb_stats_rate_limited(mrb_stats_table *st, size_t route,
                                          int to_redis)
{
    if (route < st->n)
        mrb_stats_count(to_redis ? &st->r[route].m2r.dropped_rate_limited
                                 : &st->r[route].r2m.dropped_rate_limited, 1);
}

/* Monotonic clock in microseconds. */
int64_t mrb_now_us(void);

/* --- the snapshot the document is built from --------------------------- */

typedef struct mrb_dir_snap {
    uint64_t in, bytes_in, out, bytes_out;
    uint64_t too_large, unmappable, queue_full, rate_limited, send_failed;
    mrb_lat_summary lat;            /* this interval's latencies */
} mrb_dir_snap;

typedef struct mrb_route_snap {
    const mrb_route *route;
    mrb_dir_snap m2r, r2m;
} mrb_route_snap;

/* A global counter, by the name the stats line uses. */
typedef struct mrb_stat_kv {
    const char *name;
    uint64_t value;
} mrb_stat_kv;

typedef struct mrb_side_snap {
    const char *url;              /* redacted */
    int connected;
    uint64_t reconnects;
    const char *last_error;       /* "" if none */
} mrb_side_snap;

typedef struct mrb_stats_snap {
    const char *id, *version, *status; /* status: "running" / "stopped" */
    int64_t now_unix, started_unix, uptime_s, interval_s;
    mrb_side_snap mqtt, redis;
    const mrb_stat_kv *totals;
    size_t n_totals;
    mrb_lat_summary lat_m2r, lat_r2m;  /* all routes, this interval */
    const mrb_route_snap *routes;
    size_t n_routes;
} mrb_stats_snap;

/* Copy route stats st->r[i] into snap[i] (snap holds st->n entries). take:
 * the latency buckets are taken (zeroed: a new interval begins); else they
 * are only read. The buckets of all routes are added to m2r and r2m (each
 * may be NULL), for the totals. */
void mrb_stats_read(mrb_stats_table *st, const mrb_routes *t, mrb_route_snap *snap,
                    int take, uint64_t m2r[MRB_LAT_BUCKETS],
                    uint64_t r2m[MRB_LAT_BUCKETS]);

/* The document (see README, "Statistics"), compact JSON, NUL-terminated;
 * NULL when out of memory. Free with free(). */
char *mrb_stats_json(const mrb_stats_snap *s);

#endif
