/*
 * stats_report.c - the bridge's statistics out: the log lines (SIGUSR1, exit)
 * and, every stats_interval seconds, the JSON document (stats.c) as a
 * retained message on bridge/<id>/stats and in the Redis hash
 * bridge:<id>:stats (with a TTL) plus the id in the set "bridges", which the
 * `stats` subcommand (statscmd.c) reads. Main thread only: it reads the
 * other threads' counters (atomics, or under their lock) and uses the
 * async publisher connection and Paho.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bridge_int.h"

#define N_TOTALS 39

/* The global counters, by the names of the stats line (unchanged order). */
static size_t totals(mrb_bridge *b, const mrb_route_snap *rs, size_t n_rs,
                     mrb_stat_kv *kv)
{
    pthread_mutex_lock(&b->in_lock);
    mrb_in_counters ic = b->ic;
    size_t in_queued = b->ing.busy;
    pthread_mutex_unlock(&b->in_lock);
    mrb_ingest *g = &b->ing;
    mrb_echo_counters ec;
    mrb_echo_get_counters(b->echo, &ec);
    const mrb_counters *c = &b->c;
    /* (not the sum of the routes': a reload drops removed routes' counts) */
    uint64_t rate_limited = atomic_load(&b->rate_limited_total);
    (void)rs;
    (void)n_rs;
    size_t n = 0;
#define KV(k, v) (kv[n].name = (k), kv[n].value = (uint64_t)(v), n++)
    KV("mqtt_in", ic.mqtt_in);
    KV("redis_out", atomic_load(&g->redis_out));
    KV("redis_in", c->redis_in);
    KV("stream_in", c->stream_in);
    KV("mqtt_out", atomic_load(&b->mqtt.sent_ok));
    KV("stream_acked", c->stream_acked);
    KV("queued_to_redis", in_queued);
    KV("queued_to_mqtt", b->out_q.count + b->sx_q.count);
    KV("echoes", c->echoes + atomic_load(&g->echoes));
    KV("duplicates", c->duplicates + ic.duplicates);
    KV("redelivered", ic.redelivered);
    KV("redis_resent", atomic_load(&g->resent));
    KV("stream_reread", c->stream_reread);
    KV("left_with_broker", ic.left_with_broker);
    KV("stalls", c->stalls + atomic_load(&g->stalls));
    KV("dropped_unmappable", c->dropped_unmappable + atomic_load(&g->dropped_unmappable));
    KV("dropped_too_large", c->dropped_too_large + ic.dropped_too_large +
                                atomic_load(&g->dropped_too_large));
    KV("dropped_queue_full", c->dropped_queue_full + ic.dropped_queue_full);
    KV("dropped_send_failed", c->dropped_send_failed + atomic_load(&b->mqtt.sent_failed) +
                                  ic.nomem + atomic_load(&g->dropped_send_failed));
    KV("dropped_malformed", c->dropped_malformed);
    KV("dropped_shutdown", c->dropped_shutdown + ic.dropped_shutdown);
    KV("retained_skipped", ic.retained_skipped);
    KV("echo_evicted", ec.evicted);
    KV("dropped_rate_limited", rate_limited);
    mrb_replay_counters rc;
    mrb_replay_get_counters(b, &rc);
    KV("replay_requests", rc.requests);
    KV("replay_messages", rc.messages);
    KV("replay_errors", rc.errors);
    KV("replay_dropped", rc.dropped);
    KV("hash_updates", atomic_load(&g->hash_updates));
    /* (new ones at the end: the order of the line is kept) */
    KV("redis_refused", atomic_load(&g->refused));
    KV("redis_append_failed", atomic_load(&g->append_failed));
    KV("redis_call_failed", c->redis_call_failed);
    KV("mqtt_call_failed", atomic_load(&b->mqtt.call_failed));
    KV("redis_sub_lost", c->sub_lost);
    KV("echo_expired", ec.expired);
    KV("echo_cleared", ec.cleared);
    KV("echo_peak", ec.peak);
    KV("echo_waits", atomic_load(&g->echo_waits));
    KV("given_back", ic.given_back);
#undef KV
    return n;
}

static uint64_t kv_get(const mrb_stat_kv *kv, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(kv[i].name, name) == 0)
            return kv[i].value;
    return 0;
}

static uint64_t kv_dropped(const mrb_stat_kv *kv, size_t n)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(kv[i].name, "dropped_", 8) == 0)
            sum += kv[i].value;
    return sum;
}

static void dir_text(const char *name, const mrb_dir_snap *d, char *buf, size_t len)
{
    snprintf(buf, len, " %s: in=%llu out=%llu bytes_in=%llu bytes_out=%llu "
             "too_large=%llu unmappable=%llu queue_full=%llu rate_limited=%llu "
             "send_failed=%llu", name,
             (unsigned long long)d->in, (unsigned long long)d->out,
             (unsigned long long)d->bytes_in, (unsigned long long)d->bytes_out,
             (unsigned long long)d->too_large, (unsigned long long)d->unmappable,
             (unsigned long long)d->queue_full, (unsigned long long)d->rate_limited,
             (unsigned long long)d->send_failed);
}

void mrb_stats_log(mrb_bridge *b)
{
    mrb_route_snap *rs = b->st.n ? calloc(b->st.n, sizeof(*rs)) : NULL;
    size_t n_rs = rs ? b->st.n : 0;
    if (rs) /* the latency interval is the publisher's: only read */
        mrb_stats_read(&b->st, &b->routes, rs, 0, NULL, NULL);
    mrb_stat_kv kv[N_TOTALS];
    size_t n = totals(b, rs, n_rs, kv);
    char line[2048];
    size_t used = (size_t)snprintf(line, sizeof(line), "stats:");
    for (size_t i = 0; i < n && used < sizeof(line); i++)
        used += (size_t)snprintf(line + used, sizeof(line) - used, " %s=%llu",
                                 kv[i].name, (unsigned long long)kv[i].value);
    mrb_info("%s", line);
    for (size_t i = 0; i < n_rs; i++) {
        const mrb_route *r = rs[i].route;
        char text[600], a[400] = "", c[400] = "";
        mrb_route_format(r, text, sizeof(text));
        if (r->dir != MRB_DIR_REDIS_TO_MQTT)
            dir_text("mqtt_to_redis", &rs[i].m2r, a, sizeof(a));
        if (r->dir != MRB_DIR_MQTT_TO_REDIS)
            dir_text("redis_to_mqtt", &rs[i].r2m, c, sizeof(c));
        mrb_info("route stats [%zu] %s:%s%s%s", i, text, a, a[0] && c[0] ? ";" : "", c);
    }
    free(rs);
}

/* ---- publishing ---- */

static const char *redis_last_error(const mrb_bridge *b)
{
    const mrb_rconn *rcs[3] = {&b->rpub, &b->rsub, &b->rread};
    for (int i = 0; i < 3; i++)
        if (rcs[i]->last_error[0])
            return rcs[i]->last_error;
    return "";
}

static uint64_t reconnects(uint64_t connects)
{
    return connects > 1 ? connects - 1 : 0;
}

static void on_stats_reply(redisAsyncContext *ac, void *r, void *priv)
{
    mrb_rconn *rc = ac->data;
    mrb_redis_got_reply(rc);
    if (rc->b->stats_pending > 0)
        rc->b->stats_pending--;
}

static void report(mrb_bridge *b, const char *status)
{
    mrb_route_snap *rs = b->st.n ? calloc(b->st.n, sizeof(*rs)) : NULL;
    if (b->st.n && !rs)
        return; /* out of memory: skip this turn */
    uint64_t m2r[MRB_LAT_BUCKETS] = {0}, r2m[MRB_LAT_BUCKETS] = {0};
    mrb_stats_read(&b->st, &b->routes, rs, 1, m2r, r2m);
    mrb_stat_kv kv[N_TOTALS];
    size_t n = totals(b, rs, b->st.n, kv);
    int64_t now = (int64_t)time(NULL);
    mrb_stats_snap s = {
        .id = b->cfg->id, .version = MRB_VERSION, .status = status,
        .now_unix = now, .started_unix = b->started_unix,
        .uptime_s = (mrb_now_ms() - b->started_ms) / 1000,
        .interval_s = b->cfg->stats_interval,
        .mqtt = {b->mqtt_url, b->mqtt.state == CONN_UP,
                 reconnects(b->mqtt.connects), b->mqtt.last_error},
        .redis = {b->redis_url, mrb_redis_pub_ready(b) && mrb_redis_sub_ready(b),
                  reconnects(b->rpub.connects) + reconnects(b->rsub.connects) +
                      reconnects(b->rread.connects) +
                      reconnects(atomic_load(&b->ing.connects)),
                  redis_last_error(b)},
        .totals = kv, .n_totals = n, .lat_m2r = mrb_lat_summarize(m2r),
        .lat_r2m = mrb_lat_summarize(r2m), .routes = rs, .n_routes = b->st.n};
    char *json = mrb_stats_json(&s);
    free(rs);
    if (!json)
        return;
    size_t jlen = strlen(json);
    char topic[128];
    snprintf(topic, sizeof(topic), "bridge/%s/stats", b->cfg->id);
    mrb_mqtt_publish_own(b, topic, json, jlen, 1); /* not connected: skipped */
    if (mrb_redis_pub_ready(b)) {
        char key[128], started[24], uptime[24], updated[24], m2r_in[24], m2r_out[24],
            r2m_in[24], r2m_out[24], dropped[24], ttl[24];
        snprintf(key, sizeof(key), "bridge:%s:stats", b->cfg->id);
        snprintf(started, sizeof(started), "%lld", (long long)s.started_unix);
        snprintf(uptime, sizeof(uptime), "%lld", (long long)s.uptime_s);
        snprintf(updated, sizeof(updated), "%lld", (long long)now);
        snprintf(m2r_in, sizeof(m2r_in), "%llu",
                 (unsigned long long)kv_get(kv, n, "mqtt_in"));
        snprintf(m2r_out, sizeof(m2r_out), "%llu",
                 (unsigned long long)kv_get(kv, n, "redis_out"));
        uint64_t from_redis = kv_get(kv, n, "redis_in") + kv_get(kv, n, "stream_in");
        snprintf(r2m_in, sizeof(r2m_in), "%llu", (unsigned long long)from_redis);
        snprintf(r2m_out, sizeof(r2m_out), "%llu",
                 (unsigned long long)kv_get(kv, n, "mqtt_out"));
        snprintf(dropped, sizeof(dropped), "%llu", (unsigned long long)kv_dropped(kv, n));
        long t = 3 * b->cfg->stats_interval;
        snprintf(ttl, sizeof(ttl), "%ld", t < 30 ? 30L : t);
        const char *hset[] = {"HSET", key, "id", b->cfg->id, "status", status,
                              "version", MRB_VERSION, "started", started,
                              "uptime_s", uptime, "updated", updated,
                              "mqtt", s.mqtt.connected ? "up" : "down",
                              "redis", s.redis.connected ? "up" : "down",
                              "mqtt_in", m2r_in, "redis_out", m2r_out,
                              "redis_in", r2m_in, "mqtt_out", r2m_out,
                              "dropped", dropped, "json", json};
        size_t hlen[sizeof(hset) / sizeof(hset[0])];
        for (size_t i = 0; i < sizeof(hset) / sizeof(hset[0]); i++)
            hlen[i] = strlen(hset[i]);
        const char *expire[] = {"EXPIRE", key, ttl};
        size_t elen[] = {6, strlen(key), strlen(ttl)};
        const char *sadd[] = {"SADD", "bridges", b->cfg->id};
        size_t slen[] = {4, 7, strlen(b->cfg->id)};
        if (mrb_redis_command(&b->rpub, on_stats_reply, NULL,
                              (int)(sizeof(hset) / sizeof(hset[0])), hset, hlen) == MRB_OK)
            b->stats_pending++;
        if (mrb_redis_command(&b->rpub, on_stats_reply, NULL, 3, expire, elen) == MRB_OK)
            b->stats_pending++;
        if (mrb_redis_command(&b->rpub, on_stats_reply, NULL, 3, sadd, slen) == MRB_OK)
            b->stats_pending++;
    }
    free(json);
}

void mrb_stats_tick(mrb_bridge *b, int64_t now)
{
    /* the first one as soon as the bridge is ready, then every interval */
    if (b->cfg->stats_interval <= 0 || b->stopping ||
        (now < b->next_stats_ms && (b->stats_reported || !b->ready)))
        return;
    b->stats_reported = 1;
    b->next_stats_ms = now + b->cfg->stats_interval * 1000;
    report(b, "running");
}

int64_t mrb_stats_next_timer(const mrb_bridge *b)
{
    if (b->cfg->stats_interval <= 0 || b->stopping)
        return INT64_MAX;
    return !b->stats_reported && b->ready ? 0 : b->next_stats_ms;
}

void mrb_stats_stopped(mrb_bridge *b)
{
    if (b->cfg->stats_interval > 0)
        report(b, "stopped");
}
