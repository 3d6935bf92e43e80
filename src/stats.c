/*
 * stats.c - per-route counters, latency histogram, the stats document (see
 * include/mrb/stats.h). Pure apart from reading the monotonic clock.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mrb/stats.h"

int64_t mrb_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- histogram ---- */

unsigned mrb_lat_bucket(uint64_t us)
{
    if (us < 2)
        return (unsigned)us;
    unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= 1 */
    unsigned i = 2 + 2 * (e - 1) + (unsigned)((us >> (e - 1)) & 1);
    return i < MRB_LAT_BUCKETS ? i : MRB_LAT_BUCKETS - 1;
}

uint64_t mrb_lat_bucket_max(unsigned i)
{
    if (i < 2)
        return i;
    if (i >= MRB_LAT_BUCKETS - 1)
        return UINT64_MAX;
    unsigned e = (i - 2) / 2 + 1, half = (i - 2) % 2;
    /* [2^e, 1.5 * 2^e) or [1.5 * 2^e, 2^(e+1)) */
    return ((uint64_t)1 << e) + ((uint64_t)(half + 1) << (e - 1)) - 1;
}

void mrb_lat_take(mrb_lat_hist *h, uint64_t acc[MRB_LAT_BUCKETS])
{
    for (unsigned i = 0; i < MRB_LAT_BUCKETS; i++)
        acc[i] += atomic_exchange_explicit(&h->n[i], 0, memory_order_relaxed);
}

uint64_t mrb_lat_quantile(const uint64_t counts[MRB_LAT_BUCKETS], double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < MRB_LAT_BUCKETS; i++)
        total += counts[i];
    if (total == 0)
        return 0;
    /* the rank of the quantile, 1-based, rounded up */
    double r = q * (double)total;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r)
        rank++;
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < MRB_LAT_BUCKETS; i++) {
        seen += counts[i];
        if (seen >= rank)
            return mrb_lat_bucket_max(i);
    }
    return mrb_lat_bucket_max(MRB_LAT_BUCKETS - 1);
}

mrb_lat_summary mrb_lat_summarize(const uint64_t counts[MRB_LAT_BUCKETS])
{
    mrb_lat_summary s = {0, mrb_lat_quantile(counts, 0.5), mrb_lat_quantile(counts, 0.99)};
    for (unsigned i = 0; i < MRB_LAT_BUCKETS; i++)
        s.count += counts[i];
    return s;
}

/* ---- the table ---- */

static size_t first_route(const mrb_routes *t, const char *name, int redis)
{
    for (size_t i = 0; i < t->n; i++) {
        const mrb_route *r = &t->route[i];
        if (redis ? (r->mode == MRB_MODE_PUBSUB && r->dir != MRB_DIR_MQTT_TO_REDIS &&
                     strcmp(r->redis, name) == 0)
                  : (r->dir != MRB_DIR_REDIS_TO_MQTT && strcmp(r->mqtt, name) == 0))
            return i;
    }
    return (size_t)-1;
}

mrb_err mrb_stats_table_alloc(mrb_stats_table *st, const mrb_routes *t)
{
    memset(st, 0, sizeof(*st));
    st->r = calloc(t->n ? t->n : 1, sizeof(*st->r));
    st->mqtt_sub_route = calloc(t->n_mqtt_sub ? t->n_mqtt_sub : 1, sizeof(size_t));
    st->redis_sub_route = calloc(t->n_redis_sub ? t->n_redis_sub : 1, sizeof(size_t));
    if (!st->r || !st->mqtt_sub_route || !st->redis_sub_route) {
        mrb_stats_table_free(st);
        return MRB_ERR_NOMEM;
    }
    st->n = t->n;
    for (size_t i = 0; i < t->n_mqtt_sub; i++)
        st->mqtt_sub_route[i] = first_route(t, t->mqtt_sub[i].name, 0);
    for (size_t i = 0; i < t->n_redis_sub; i++)
        st->redis_sub_route[i] = first_route(t, t->redis_sub[i].name, 1);
    return MRB_OK;
}

void mrb_stats_table_free(mrb_stats_table *st)
{
    free(st->r);
    free(st->mqtt_sub_route);
    free(st->redis_sub_route);
    memset(st, 0, sizeof(*st));
}

static void carry_dir(mrb_dir_stats *to, mrb_dir_stats *from)
{
#define MV(f) mrb_stats_count(&to->f, atomic_load_explicit(&from->f, memory_order_relaxed))
    MV(in);
    MV(bytes_in);
    MV(out);
    MV(bytes_out);
    MV(dropped_too_large);
    MV(dropped_unmappable);
    MV(dropped_queue_full);
    MV(dropped_rate_limited);
    MV(dropped_send_failed);
#undef MV
    for (unsigned i = 0; i < MRB_LAT_BUCKETS; i++)
        atomic_fetch_add_explicit(&to->lat.n[i],
                                  atomic_load_explicit(&from->lat.n[i],
                                                       memory_order_relaxed),
                                  memory_order_relaxed);
}

void mrb_stats_table_carry(mrb_stats_table *st, const mrb_routes *t,
                           mrb_stats_table *old, const mrb_routes *old_t)
{
    char a[600], b[600];
    size_t n_old = old->n < old_t->n ? old->n : old_t->n, hint = 0;
    for (size_t i = 0; i < st->n && i < t->n; i++) {
        mrb_route_format(&t->route[i], a, sizeof(a));
        /* routes mostly keep their order: look on from the last match */
        for (size_t k = 0; k < n_old; k++) {
            size_t j = (hint + k) % n_old;
            mrb_route_format(&old_t->route[j], b, sizeof(b));
            if (strcmp(a, b) == 0) {
                carry_dir(&st->r[i].m2r, &old->r[j].m2r);
                carry_dir(&st->r[i].r2m, &old->r[j].r2m);
                hint = j + 1;
                break;
            }
        }
    }
}

static void read_dir(mrb_dir_stats *d, mrb_dir_snap *s, int take,
                     uint64_t acc[MRB_LAT_BUCKETS])
{
    uint64_t lat[MRB_LAT_BUCKETS] = {0};
#define LD(f) atomic_load_explicit(&d->f, memory_order_relaxed)
    s->in = LD(in);
    s->bytes_in = LD(bytes_in);
    s->out = LD(out);
    s->bytes_out = LD(bytes_out);
    s->too_large = LD(dropped_too_large);
    s->unmappable = LD(dropped_unmappable);
    s->queue_full = LD(dropped_queue_full);
    s->rate_limited = LD(dropped_rate_limited);
    s->send_failed = LD(dropped_send_failed);
#undef LD
    if (take)
        mrb_lat_take(&d->lat, lat);
    else
        for (unsigned i = 0; i < MRB_LAT_BUCKETS; i++)
            lat[i] = atomic_load_explicit(&d->lat.n[i], memory_order_relaxed);
    s->lat = mrb_lat_summarize(lat);
    for (unsigned i = 0; acc && i < MRB_LAT_BUCKETS; i++)
        acc[i] += lat[i];
}

void mrb_stats_read(mrb_stats_table *st, const mrb_routes *t, mrb_route_snap *snap,
                    int take, uint64_t m2r[MRB_LAT_BUCKETS],
                    uint64_t r2m[MRB_LAT_BUCKETS])
{
    for (size_t i = 0; i < st->n; i++) {
        snap[i].route = &t->route[i];
        read_dir(&st->r[i].m2r, &snap[i].m2r, take, m2r);
        read_dir(&st->r[i].r2m, &snap[i].r2m, take, r2m);
    }
}

/* ---- the document ---- */

static int add_num(cJSON *o, const char *name, double v)
{
    return cJSON_AddNumberToObject(o, name, v) != NULL;
}

static cJSON *latency(const mrb_lat_summary *l)
{
    cJSON *o = cJSON_CreateObject();
    if (o && add_num(o, "count", (double)l->count) &&
        add_num(o, "p50_us", (double)l->p50_us) &&
        add_num(o, "p99_us", (double)l->p99_us))
        return o;
    cJSON_Delete(o);
    return NULL;
}

static cJSON *dir_json(const mrb_dir_snap *d)
{
    cJSON *o = cJSON_CreateObject(), *dr = cJSON_CreateObject(), *lat = latency(&d->lat);
    if (!o || !dr || !lat || !add_num(o, "in", (double)d->in) ||
        !add_num(o, "bytes_in", (double)d->bytes_in) || !add_num(o, "out", (double)d->out) ||
        !add_num(o, "bytes_out", (double)d->bytes_out) ||
        !add_num(dr, "too_large", (double)d->too_large) ||
        !add_num(dr, "unmappable", (double)d->unmappable) ||
        !add_num(dr, "queue_full", (double)d->queue_full) ||
        !add_num(dr, "rate_limited", (double)d->rate_limited) ||
        !add_num(dr, "send_failed", (double)d->send_failed)) {
        cJSON_Delete(o);
        cJSON_Delete(dr);
        cJSON_Delete(lat);
        return NULL;
    }
    cJSON_AddItemToObject(o, "dropped", dr);
    cJSON_AddItemToObject(o, "latency", lat);
    return o;
}

static cJSON *side_json(const mrb_side_snap *s)
{
    cJSON *o = cJSON_CreateObject();
    if (o && cJSON_AddStringToObject(o, "url", s->url ? s->url : "") &&
        cJSON_AddBoolToObject(o, "connected", s->connected) &&
        add_num(o, "reconnects", (double)s->reconnects) &&
        cJSON_AddStringToObject(o, "last_error", s->last_error ? s->last_error : ""))
        return o;
    cJSON_Delete(o);
    return NULL;
}

static cJSON *route_json(const mrb_route_snap *rs)
{
    const mrb_route *r = rs->route;
    char text[600];
    mrb_route_format(r, text, sizeof(text));
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "route", text) ||
        !cJSON_AddStringToObject(o, "mqtt", r->mqtt) ||
        !cJSON_AddStringToObject(o, "redis", r->redis) ||
        !cJSON_AddStringToObject(o, "mode", mrb_mode_name(r->mode)) ||
        !cJSON_AddStringToObject(o, "direction", mrb_direction_name(r->dir)))
        goto fail;
    if (r->dir != MRB_DIR_REDIS_TO_MQTT) {
        cJSON *d = dir_json(&rs->m2r);
        if (!d)
            goto fail;
        cJSON_AddItemToObject(o, "mqtt_to_redis", d);
    }
    if (r->dir != MRB_DIR_MQTT_TO_REDIS) {
        cJSON *d = dir_json(&rs->r2m);
        if (!d)
            goto fail;
        cJSON_AddItemToObject(o, "redis_to_mqtt", d);
    }
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

char *mrb_stats_json(const mrb_stats_snap *s)
{
    char *out = NULL;
    cJSON *doc = cJSON_CreateObject(), *totals = cJSON_CreateObject();
    cJSON *lat = cJSON_CreateObject(), *routes = cJSON_CreateArray();
    cJSON *mq = side_json(&s->mqtt), *rd = side_json(&s->redis);
    if (!doc || !totals || !lat || !routes || !mq || !rd) {
        cJSON_Delete(totals);
        cJSON_Delete(lat);
        cJSON_Delete(routes);
        cJSON_Delete(mq);
        cJSON_Delete(rd);
        goto out;
    }
    cJSON_AddItemToObject(doc, "mqtt", mq);
    cJSON_AddItemToObject(doc, "redis", rd);
    cJSON_AddItemToObject(doc, "totals", totals);
    cJSON_AddItemToObject(doc, "latency", lat);
    cJSON_AddItemToObject(doc, "routes", routes);
    if (!cJSON_AddStringToObject(doc, "id", s->id) ||
        !cJSON_AddStringToObject(doc, "version", s->version) ||
        !cJSON_AddStringToObject(doc, "status", s->status) ||
        !add_num(doc, "time", (double)s->now_unix) ||
        !add_num(doc, "started", (double)s->started_unix) ||
        !add_num(doc, "uptime_s", (double)s->uptime_s) ||
        !add_num(doc, "interval_s", (double)s->interval_s))
        goto out;
    for (size_t i = 0; i < s->n_totals; i++)
        if (!add_num(totals, s->totals[i].name, (double)s->totals[i].value))
            goto out;
    for (size_t i = 0; i < s->n_routes; i++) {
        cJSON *r = route_json(&s->routes[i]);
        if (!r)
            goto out;
        cJSON_AddItemToArray(routes, r);
    }
    cJSON *a = latency(&s->lat_m2r), *b = latency(&s->lat_r2m);
    if (!a || !b) {
        cJSON_Delete(a);
        cJSON_Delete(b);
        goto out;
    }
    cJSON_AddItemToObject(lat, "mqtt_to_redis", a);
    cJSON_AddItemToObject(lat, "redis_to_mqtt", b);
    out = cJSON_PrintUnformatted(doc);
out:
    cJSON_Delete(doc);
    return out;
}
