/*
 * pump.c - Redis -> MQTT on the pub/sub side: a channel message from the
 * subscriber (redis.c) is mapped through the routes, checked against the
 * echo guard, and published to the broker now, or queued in out_q while the
 * broker is away, Paho's window is full or its route's rate limit holds it;
 * the loop (bridge.c) drains out_q each turn. Main thread only. Stream mode
 * (Redis -> MQTT through consumer groups) is stream.c.
 */
#include <stdint.h>
#include <stdlib.h>

#include "bridge_int.h"
#include "loop_int.h"

/* Queue for MQTT; need_token: the message must still take a token of its
 * route's rate limit before it goes. */
static void out_enqueue(mrb_bridge *b, const char *topic, size_t tlen,
                        const char *payload, size_t plen, int qos, int retain,
                        unsigned route, int64_t t0_us, int need_token)
{
    mrb_msg *m = mrb_msg_new(topic, tlen, payload, plen, qos, retain);
    if (!m) {
        b->c.dropped_send_failed++;
        if (route < b->st.n)
            mrb_stats_count(&b->st.r[route].r2m.dropped_send_failed, 1);
        return;
    }
    m->route = route;
    m->taken_us = t0_us;
    m->seq = need_token; /* over its route's rate: takes a token first */
    size_t dropped = 0;
    mrb_msg *old;
    while ((old = mrb_queue_pop_if_full(&b->out_q, mrb_msg_size(m))) != NULL) {
        if (old->route < b->st.n)
            mrb_stats_count(&b->st.r[old->route].r2m.dropped_queue_full, 1);
        free(old);
        dropped++;
    }
    mrb_queue_push(&b->out_q, m);
    if (dropped) {
        uint64_t sup;
        b->c.dropped_queue_full += dropped;
        if (mrb_ratelimit_allow(&b->rl_full, mrb_now_ms(), &sup))
            mrb_warn("dropped %zu oldest message(s) waiting for MQTT: queue full "
                     "(limits.queue_messages %ld, limits.queue_bytes %ld); "
                     "dropped_queue_full=%llu (%llu similar not logged)", dropped,
                     b->cfg->queue_messages, b->cfg->queue_bytes,
                     (unsigned long long)b->c.dropped_queue_full,
                     (unsigned long long)sup);
    }
}

/* Send to the broker now; 0 if it must wait (down or window full). */
static int mqtt_send(mrb_bridge *b, const char *topic, size_t tlen,
                     const char *payload, size_t plen, int qos, int retain,
                     unsigned route, int64_t t0_us)
{
    /* before the send: the echo may be back (and judged by the ingest
     * thread) before mrb_mqtt_publish() returns */
    mrb_echo_note_result noted = mrb_bridge_note_mqtt_publish(b, topic, tlen, payload,
                                                              plen);
    if (noted == MRB_ECHO_FULL)
        return 0; /* the ingest thread wakes us when there is room */
    mrb_err err = mrb_mqtt_publish(b, topic, payload, plen, qos, retain, route, t0_us);
    if (err != MRB_OK)
        mrb_bridge_unnote_mqtt_publish(b, topic, tlen, payload, plen, noted);
    if (err == MRB_ERR_FULL || err == MRB_ERR_CONN)
        return 0;
    if (err != MRB_OK) {
        uint64_t sup;
        char esc[MRB_LOG_ESCAPE_MAX];
        b->c.dropped_send_failed++;
        if (route < b->st.n)
            mrb_stats_count(&b->st.r[route].r2m.dropped_send_failed, 1);
        if (mrb_ratelimit_allow(&b->rl_send, mrb_now_ms(), &sup))
            mrb_warn("dropped message to MQTT topic '%s': the MQTT library "
                     "refused it; dropped_send_failed=%llu (%llu similar not "
                     "logged)", mrb_log_escape(topic, tlen, esc, sizeof(esc)),
                     (unsigned long long)b->c.dropped_send_failed,
                     (unsigned long long)sup);
        return 1;
    }
    return 1;
}

mrb_echo_note_result mrb_bridge_note_mqtt_publish(mrb_bridge *b, const char *topic,
                                                  size_t tlen, const char *payload,
                                                  size_t plen)
{
    if (b->mqtt.version == MQTTVERSION_5 ||
        mrb_routes_mqtt_canonical(&b->routes, topic, tlen) == MRB_NO_SUB)
        return MRB_ECHO_NOT_NEEDED;
    mrb_echo_note_result r =
        mrb_echo_note_mqtt(b->echo, mrb_seen_key(topic, tlen, payload, plen));
    if (r == MRB_ECHO_FULL) {
        /* held back until the ingest thread takes copies (it wakes us);
         * then look again, in case it took the last one meanwhile */
        atomic_store(&b->mqtt_echo_wait, 1);
        if (mrb_echo_mqtt_has_room(b->echo))
            mrb_bridge_wake(b);
    }
    return r;
}

void mrb_bridge_unnote_mqtt_publish(mrb_bridge *b, const char *topic, size_t tlen,
                                    const char *payload, size_t plen,
                                    mrb_echo_note_result how)
{
    mrb_echo_unnote_mqtt(b->echo, mrb_seen_key(topic, tlen, payload, plen), how);
}

void mrb_bridge_on_redis_message(mrb_bridge *b, const char *sub, size_t sublen,
                                 const char *channel, size_t clen,
                                 const char *payload, size_t plen)
{
    if (b->stopping)
        return; /* the subscriber is being closed: intake has stopped */
    /* Overlapping subscriptions deliver one copy each; act on the copy of
     * the first subscription that matches. */
    size_t idx = mrb_routes_redis_sub_index(&b->routes, sub, sublen);
    if (idx != mrb_routes_redis_canonical(&b->routes, channel, clen)) {
        b->c.duplicates++;
        return;
    }
    b->c.redis_in++;
    int64_t t0_us = mrb_now_us();
    if (mrb_echo_take_redis(b->echo, mrb_seen_key(channel, clen, payload, plen),
                            mrb_now_ms())) {
        b->c.echoes++;
        /* the ingest thread may wait for this room */
        if (atomic_load(&b->ing.echo_wait) && mrb_echo_redis_has_room(b->echo))
            mrb_ingest_kick_unlocked(b);
        return;
    }
    /* drops before mapping count for the first route of the subscription */
    mrb_route_stats *rs = mrb_stats_by_redis_sub(b, idx);
    if ((long)plen > b->cfg->max_payload) {
        if (rs)
            mrb_stats_count(&rs->r2m.dropped_too_large, 1);
        mrb_bridge_warn_too_large(b, "Redis channel", channel, clen, plen);
        return;
    }
    mrb_targets *tg = &b->tg;
    if (mrb_routes_map_redis(&b->routes, MRB_MODE_PUBSUB, channel, clen, tg) != MRB_OK) {
        b->c.dropped_send_failed++;
        if (rs)
            mrb_stats_count(&rs->r2m.dropped_send_failed, 1);
        return;
    }
    if (tg->n == 0) {
        if (rs)
            mrb_stats_count(&rs->r2m.dropped_unmappable, 1);
        mrb_bridge_warn_unmappable(b, "Redis channel", channel, clen);
        return;
    }
    char *unwrapped = NULL;
    size_t ulen = 0;
    int unwrap_state = 0; /* 0 not tried, 1 done, -1 not an envelope */
    for (size_t i = 0; i < tg->n; i++) {
        unsigned ri = (unsigned)tg->v[i].route;
        const mrb_route *r = &b->routes.route[ri];
        mrb_stats_count(&b->st.r[ri].r2m.in, 1);
        mrb_stats_count(&b->st.r[ri].r2m.bytes_in, plen);
        char *topic = tg->buf + tg->v[i].off;
        size_t tlen = tg->v[i].len;
        const char *p = payload;
        size_t pl = plen;
        if (r->unwrap) {
            if (unwrap_state == 0)
                unwrap_state = mrb_bridge_unwrap(b, "Redis channel", channel, clen,
                                                 payload, plen, &unwrapped, &ulen)
                                   ? 1 : -1;
            if (unwrap_state < 0)
                continue;
            p = unwrapped;
            pl = ulen;
        }
        int limited = 0;
        mrb_route_limit *lim = b->limits ? &b->limits[ri] : NULL;
        if (lim && mrb_bucket_limited(&lim->to_mqtt)) {
            if (r->qos == 0 && !mrb_bucket_take(&lim->to_mqtt, mrb_now_ms())) {
                mrb_limits_dropped_one(b, ri, 0, &lim->rl_mqtt, "Redis channel",
                                       channel, clen, NULL);
                continue;
            }
            /* QoS > 0: waits in out_q for its token (in order) */
            limited = r->qos > 0 && (b->out_q.count > 0 ||
                                     !mrb_bucket_take(&lim->to_mqtt, mrb_now_ms()));
        }
        char save = topic[tlen];
        topic[tlen] = '\0'; /* Paho wants a C string; the buffer has room */
        if (limited || b->out_q.count > 0 ||
            !mqtt_send(b, topic, tlen, p, pl, r->qos, r->retain, ri, t0_us))
            out_enqueue(b, topic, tlen, p, pl, r->qos, r->retain, ri, t0_us, limited);
        topic[tlen] = save;
    }
    free(unwrapped);
}

void mrb_pump_out(mrb_bridge *b)
{
    mrb_msg *m;
    b->out_rate_wait_ms = 0;
    while ((m = mrb_queue_pop(&b->out_q)) != NULL) {
        if (m->seq && b->limits && m->route < b->routes.n) {
            /* a QoS > 0 message over its route's rate limit: its turn
             * comes with the token (a timer of the loop) */
            mrb_bucket *k = &b->limits[m->route].to_mqtt;
            int64_t now = mrb_now_ms();
            if (!mrb_bucket_take(k, now)) {
                b->out_rate_wait_ms = now + mrb_bucket_wait_ms(k, now);
                mrb_queue_push_front(&b->out_q, m);
                return;
            }
            m->seq = 0;
        }
        if (!mqtt_send(b, mrb_msg_name(m), m->name_len, mrb_msg_payload(m),
                       m->payload_len, m->qos, m->retain, m->route, m->taken_us)) {
            mrb_queue_push_front(&b->out_q, m);
            return;
        }
        free(m);
    }
}
