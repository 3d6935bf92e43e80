/*
 * intake.c - MQTT -> Redis, the MQTT side: Paho's message callback, on
 * Paho's receive thread. It drops extra copies (MQTT 5 subscription ids),
 * retained messages no store route takes, replay requests (replay_io.c) and
 * oversized messages, copies the rest into in_q for the ingest thread
 * (ingest.c) and, for QoS > 0, waits until Redis has it, so that Paho's
 * PUBACK means "in Redis" (see mqtt.c for why, and bridge_int.h for the
 * locks). The connection, subscriptions and publishes are mqtt.c.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bridge_int.h"
#include "mqtt_int.h"

/* Paho's receive thread: copy the message into in_q and, for QoS > 0,
 * wait until Redis has it; return 1 so that Paho frees its copy (and
 * acknowledges the message). */
int mrb_intake_on_message(void *ctx, char *topic, int tlen, MQTTAsync_message *msg)
{
    mrb_bridge *b = ctx;
    size_t len = tlen > 0 ? (size_t)tlen : strlen(topic);
    int duplicate = 0, queued = 0;

    int n = b->mqtt.version == MQTTVERSION_5
                ? MQTTProperties_propertyCount(&msg->properties,
                                               MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER)
                : 0;
    if (n > 0) {
        unsigned ids[8];
        size_t n_ids = 0;
        for (int i = 0; i < n && n_ids < 8; i++)
            ids[n_ids++] = (unsigned)MQTTProperties_getNumericValueAt(
                &msg->properties, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER, i);
        pthread_mutex_lock(&b->routes_lock); /* main may swap the table */
        /* with one filter there is no other copy to prefer */
        duplicate = b->routes.n_mqtt_sub > 1 &&
                    mrb_routes_mqtt_is_copy(&b->routes, topic, len, ids, n_ids);
        pthread_mutex_unlock(&b->routes_lock);
    }

    /* MQTT 3.1.1 sets the retained flag only on stored messages sent
     * because we subscribed (MQTT 5 sends them only for store routes'
     * filters: Retain Handling 0 there, 2 elsewhere). A store route takes
     * them into its hash (HSET again is harmless, so a copy per overlapping
     * subscription is not a duplicate here); anything else skips them. */
    int stored = 0;
    if (msg->retained) {
        pthread_mutex_lock(&b->routes_lock);
        stored = mrb_routes_mqtt_stores(&b->routes, topic, len);
        pthread_mutex_unlock(&b->routes_lock);
    }

    if (mrb_replay_take(b, topic, len, msg)) { /* a request, never bridged */
        MQTTAsync_freeMessage(&msg);
        MQTTAsync_free(topic);
        return 1;
    }

    int64_t now = mrb_now_ms();
    uint64_t sup, seq = 0;
    char esc[MRB_LOG_ESCAPE_MAX];
    mrb_logbuf lb; /* written after in_lock is released */
    lb.n = 0;
    lb.lost = 0;
    pthread_mutex_lock(&b->in_lock);
    if (atomic_load(&b->intake_stopped)) {
        /* shutdown: a QoS > 0 message stays with the broker: close the
         * connection under Paho so that no PUBACK goes out (the session
         * keeps it for our return); a QoS 0 one is lost */
        if (msg->qos > 0) {
            b->ic.left_with_broker++;
            if (!mrb_mqtt_kill_socket(b, 1))
                while (!b->in_release)
                    pthread_cond_wait(&b->in_cond, &b->in_lock);
        } else {
            b->ic.dropped_shutdown++;
        }
        pthread_mutex_unlock(&b->in_lock);
        MQTTAsync_freeMessage(&msg);
        MQTTAsync_free(topic);
        return 1;
    }
    if (msg->dup)
        b->ic.redelivered++;
    if (duplicate && !stored) {
        b->ic.duplicates++;
    } else if (msg->retained && !stored) {
        b->ic.retained_skipped++;
    } else if (b->ic.mqtt_in++, (long)msg->payloadlen > b->cfg->max_payload) {
        b->ic.dropped_too_large++;
        /* for the first route of the subscription it came by */
        pthread_mutex_lock(&b->routes_lock); /* (lock order: in_lock first) */
        mrb_route_stats *rs =
            mrb_stats_by_mqtt_sub(b, mrb_routes_mqtt_canonical(&b->routes, topic, len));
        if (rs)
            mrb_stats_count(&rs->m2r.dropped_too_large, 1);
        pthread_mutex_unlock(&b->routes_lock);
        if (mrb_ratelimit_allow(&b->in_rl_large, now, &sup))
            mrb_logbuf_add(&lb, MRB_LOG_WARNING, "dropped message from MQTT topic "
                           "'%s': too large (%d bytes, limits.max_payload is %ld); "
                           "dropped_too_large=%llu (%llu similar not logged)",
                           mrb_log_escape(topic, len, esc, sizeof(esc)),
                           msg->payloadlen, b->cfg->max_payload,
                           (unsigned long long)b->ic.dropped_too_large,
                           (unsigned long long)sup);
    } else {
        mrb_msg *m = mrb_msg_new(topic, len, msg->payload, (size_t)msg->payloadlen,
                                 msg->qos, msg->retained);
        if (!m) {
            b->ic.nomem++;
        } else {
            m->arrived_ms = now; /* for the echo check, however long it waits */
            m->taken_us = mrb_now_us();
            m->seq = seq = ++b->in_seq;
            queued = 1;
            /* only QoS 0 messages can be dropped here: a QoS > 0 one is
             * the newest until it is done (this thread waits for it) */
            size_t dropped = 0;
            mrb_msg *old;
            while ((old = mrb_queue_pop_if_full(&b->in_q, mrb_msg_size(m))) != NULL) {
                pthread_mutex_lock(&b->routes_lock);
                mrb_route_stats *rs = mrb_stats_by_mqtt_sub(
                    b, mrb_routes_mqtt_canonical(&b->routes, mrb_msg_name(old),
                                                 old->name_len));
                if (rs)
                    mrb_stats_count(&rs->m2r.dropped_queue_full, 1);
                pthread_mutex_unlock(&b->routes_lock);
                free(old);
                dropped++;
            }
            mrb_queue_push(&b->in_q, m);
            b->ing.busy -= dropped;
            b->ing.busy += 1;
            if (dropped) {
                b->ic.dropped_queue_full += dropped;
                if (mrb_ratelimit_allow(&b->in_rl_full, now, &sup))
                    mrb_logbuf_add(&lb, MRB_LOG_WARNING, "dropped %zu oldest "
                                   "message(s) waiting for Redis: queue full "
                                   "(limits.queue_messages %ld, limits.queue_bytes "
                                   "%ld); dropped_queue_full=%llu (%llu similar "
                                   "not logged)", dropped, b->cfg->queue_messages,
                                   b->cfg->queue_bytes,
                                   (unsigned long long)b->ic.dropped_queue_full,
                                   (unsigned long long)sup);
            }
        }
    }
    if (queued)
        mrb_ingest_kick(b);
    if (queued && msg->qos > 0 && b->in_acked_seq < seq && !b->in_release) {
        atomic_store(&b->in_wait_since_ms, now);
        atomic_store(&b->in_waiting, 1);
        if (lb.n) { /* not while we wait: written now, without the lock */
            pthread_mutex_unlock(&b->in_lock);
            mrb_logbuf_flush(&lb);
            pthread_mutex_lock(&b->in_lock);
        }
        /* Paho's mutex is ours while we wait: main may be blocked in a
         * Paho call that began just before (paho_enter skips publishing
         * while we wait, but it cannot see the future). If main stays in
         * one call for MRB_CALLBACK_BLOCK_MS, it is waiting for us, and we
         * for Redis: give the message back to the broker instead (the
         * connection is closed under Paho first, so no PUBACK goes out;
         * the broker sends it again after the reconnect, and the ingest
         * thread still sends its copy: a duplicate, never a loss). */
        unsigned calls = atomic_load(&b->paho_calls);
        int64_t since = mrb_now_ms(), deadline;
        int given_back = 0;
        while (b->in_acked_seq < seq && !b->in_release) {
            int64_t t = mrb_now_ms();
            if (!atomic_load(&b->main_in_paho) ||
                atomic_load(&b->paho_calls) != calls) {
                calls = atomic_load(&b->paho_calls);
                since = t;
            } else if (t - since >= MRB_CALLBACK_BLOCK_MS) {
                if (mrb_mqtt_kill_socket(b, 0)) {
                    given_back = 1;
                    break;
                }
                since = t; /* not known: look again later */
            }
            deadline = t + 100;
            struct timespec ts = {(time_t)(deadline / 1000),
                                  (long)(deadline % 1000) * 1000000};
            pthread_cond_timedwait(&b->in_cond, &b->in_lock, &ts);
        }
        atomic_store(&b->in_waiting, 0);
        if (atomic_exchange(&b->paho_skipped, 0))
            mrb_bridge_wake(b); /* main skipped a publish meanwhile */
        if (given_back)
            b->ic.given_back++;
        else if (b->in_acked_seq < seq)
            b->ic.left_with_broker++; /* released at shutdown, socket closed */
    }
    pthread_mutex_unlock(&b->in_lock);
    mrb_logbuf_flush(&lb);
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    return 1;
}

void mrb_mqtt_release_waiter(mrb_bridge *b)
{
    pthread_mutex_lock(&b->in_lock);
    b->in_release = 1;
    pthread_cond_broadcast(&b->in_cond);
    pthread_mutex_unlock(&b->in_lock);
}
