/*
 * mqtt.c - the MQTT edge: one Paho MQTTAsync client.
 *
 * The main thread creates, connects, subscribes, publishes and destroys the
 * client. Paho calls back on its own threads; those callbacks only copy the
 * message into the bridge's in_q, post a connection event under ev_lock, or
 * count a completed send, and then wake the main thread (see bridge_int.h).
 * The message callback, which copies into in_q and waits for Redis, is
 * intake.c.
 *
 * Subscriptions: one SUBSCRIBE per filter, in route-table order. With MQTT 5
 * each carries No Local (our own publishes do not come back) and a
 * Subscription Identifier (mrb_sub.id, kept across reloads), so that of the
 * copies a broker sends for overlapping filters the bridge forwards only the
 * one that carries the first matching filter's identifier. MQTT 3.1.1 has
 * neither: own publishes are recognised by fingerprint instead (bridge.c).
 * A reload (SIGHUP) subscribes the filters that are new, unsubscribes the
 * ones that are gone (at once, or at the next connect while down: the
 * persistent session keeps them otherwise) and leaves the others alone.
 *
 * At least once from MQTT: the session is persistent (clean start off, a
 * session expiry), subscriptions are at most QoS 1, and Paho sends the
 * PUBACK when the message callback returns (measured with 1.3.12, also
 * when it returns 0). So for a QoS 1 message the callback queues it and
 * waits until the main thread has seen Redis accept it; meanwhile the
 * broker holds the rest of the stream. At shutdown the network connection
 * is closed before a waiting callback is let go, so a message Redis has
 * not accepted is never acknowledged: the broker sends it again.
 *
 * TLS (mqtts://, built WITH_TLS): Paho's OpenSSL variant verifies the
 * broker's certificate chain (mqtt.tls.ca_file / ca_path, else the system's
 * CAs) and, unless mqtt.tls.verify_hostname is false, that the certificate
 * names the URL's host. Paho 1.3 ignores its sslVersion with OpenSSL >= 1.1,
 * so the minimum TLS version is set through OpenSSL's configuration instead
 * (tls.c). A refused login or certificate does not fix itself:
 * it is logged once as an error naming the cause and retried slowly (every
 * reconnect.max_ms) instead of with the fast backoff of an outage.
 */
#include <MQTTAsync.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if MRB_WITH_TLS
#include "mrb/tls.h"
#endif

#include "bridge_int.h"
#include "mqtt_int.h"

#define STATUS_QOS 1

/* Why a connect attempt failed: a transient outage, or something that
 * needs a person (credentials, certificates). */
enum { FAIL_OUTAGE = 0, FAIL_AUTH, FAIL_TLS };

static void post(mrb_bridge *b, unsigned ev, int code, const char *text)
{
    mrb_mqtt *m = &b->mqtt;
    pthread_mutex_lock(&m->ev_lock);
    m->ev |= ev;
    if (ev & (MQTT_EV_CONNECT_FAILED | MQTT_EV_LOST)) {
        m->ev_code = code;
        snprintf(m->ev_text, sizeof(m->ev_text), "%s", text ? text : "");
    }
    pthread_mutex_unlock(&m->ev_lock);
    mrb_bridge_wake(b);
}

/* ---- main's calls into Paho ----
 *
 * Every Paho call takes Paho's global mutex, which the receive thread holds
 * while a message callback waits for the ingest thread (a QoS 1 message:
 * see ingest.c). So main may wait inside any of them until that message is
 * in Redis. That is bounded as long as the ingest thread does not wait for
 * main, and it waits for main only when the echo table is full (echo.h):
 * then main does not publish at all while a callback waits (paho_enter
 * says so, the message stays queued), and for the other calls the ingest
 * thread sees main stay inside one (main_in_paho, paho_calls) and sends
 * anyway. */

/* 0: do not call Paho now: may_skip (a QoS > 0 publish, which takes
 * Paho's global mutex; a QoS 0 one does not) and a message callback holds
 * that mutex waiting for something slow: for echo room (or the echo table
 * is three quarters full, so the wait may begin any moment), or for longer than
 * a Redis round trip (MRB_CALLBACK_SLOW_MS: Redis is away, stopped or
 * refusing). A callback that waits a round trip only does not make main
 * skip: that would starve Redis->MQTT QoS 1 under MQTT->Redis QoS 1 load.
 * The message stays queued; the callback wakes main when it returns
 * (paho_skipped). */
static int paho_enter(mrb_bridge *b, int may_skip)
{
    atomic_fetch_add(&b->paho_calls, 1);
    atomic_store(&b->main_in_paho, 1);
    if (may_skip && atomic_load(&b->in_waiting) &&
        (atomic_load(&b->ing.echo_wait) ||
         mrb_now_ms() - atomic_load(&b->in_wait_since_ms) >= MRB_CALLBACK_SLOW_MS ||
         !mrb_echo_redis_has_room(b->echo))) {
        atomic_store(&b->main_in_paho, 0);
        atomic_store(&b->paho_skipped, 1);
        if (!atomic_load(&b->in_waiting) && atomic_exchange(&b->paho_skipped, 0))
            mrb_bridge_wake(b); /* it returned meanwhile */
        return 0;
    }
    return 1;
}

static void paho_leave(mrb_bridge *b)
{
    atomic_store(&b->main_in_paho, 0);
    if (atomic_load(&b->ing.echo_wait))
        mrb_ingest_kick_unlocked(b); /* it may be timing this call */
}

/* A Paho call of the set-up (a property, the "online" status) failed:
 * counted (mqtt_call_failed), logged once per connection. */
static void call_failed(mrb_bridge *b, const char *what, int rc)
{
    mrb_mqtt *m = &b->mqtt;
    uint64_t n = atomic_fetch_add(&m->call_failed, 1) + 1;
    if (m->call_failed_logged)
        return;
    m->call_failed_logged = 1;
    mrb_warn("mqtt: %s failed (%s); trying again; mqtt_call_failed=%llu (logged "
             "once per connection)", what, rc ? MQTTAsync_strerror(rc) : "out of memory",
             (unsigned long long)n);
}

/* Add filter to a list of names (once); 0 when out of memory. */
static int name_list_add(char ***list, size_t *n, const char *filter)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*list)[i], filter) == 0)
            return 1;
    char **v = realloc(*list, (*n + 1) * sizeof(*v));
    char *copy = v ? strdup(filter) : NULL;
    if (v)
        *list = v;
    if (!copy)
        return 0;
    (*list)[(*n)++] = copy;
    return 1;
}

static void name_list_free(char ***list, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *n = 0;
}

/* ---- callbacks: Paho threads ---- */

#if MRB_WITH_TLS
/* OpenSSL's errors, as Paho hands them over (ERR_print_errors_cb): keep the
 * last line for the connect failure's log line. */
static int on_ssl_error(const char *str, size_t len, void *ctx)
{
    mrb_bridge *b = ctx;
    if (!str)
        return 0;
    /* OpenSSL 3: "thread:error:code:library:function:reason:file:line:"
     * keep the reason */
    const char *f = str, *end = str + len;
    for (int i = 0; i < 5 && f; i++) {
        f = memchr(f, ':', (size_t)(end - f));
        f = f ? f + 1 : NULL;
    }
    const char *fe = f ? memchr(f, ':', (size_t)(end - f)) : NULL;
    if (f && fe && fe > f) {
        str = f;
        len = (size_t)(fe - f);
    }
    while (len > 0 && (str[len - 1] == '\n' || str[len - 1] == '\r'))
        len--;
    pthread_mutex_lock(&b->mqtt.ev_lock);
    snprintf(b->mqtt.ev_tls, sizeof(b->mqtt.ev_tls), "OpenSSL: %.*s", (int)len, str);
    pthread_mutex_unlock(&b->mqtt.ev_lock);
    return 0;
}
#endif

static void on_connect_ok(void *ctx, MQTTAsync_successData *r)
{
    post(ctx, MQTT_EV_CONNECTED, 0, NULL);
}

static void on_connect_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    mrb_bridge *b = ctx;
    /* The broker's Receive Maximum bounds our QoS > 0 publishes in flight.
     * Past it Paho queues them and, measured with 1.3.12, sends the queue
     * only on its one-second housekeeping tick: 20 msg/s with mosquitto's
     * default of 20. So the bridge keeps within it. */
    int rm = 65535;
    if (r && MQTTProperties_hasProperty(&r->properties, MQTTPROPERTY_CODE_RECEIVE_MAXIMUM))
        rm = MQTTProperties_getNumericValue(&r->properties,
                                            MQTTPROPERTY_CODE_RECEIVE_MAXIMUM);
    atomic_store(&b->mqtt.receive_max, rm > 0 ? rm : 65535);
    post(ctx, MQTT_EV_CONNECTED, 0, NULL);
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData *r)
{
    post(ctx, MQTT_EV_CONNECT_FAILED, r ? r->code : 0,
         r && r->message ? r->message : NULL);
}

static void on_connect_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    char text[160] = "";
    int code = 0;
    if (r) {
        code = r->reasonCode ? (int)r->reasonCode : r->code;
        if (r->reasonCode)
            snprintf(text, sizeof(text), "%s%s%s",
                     MQTTReasonCode_toString(r->reasonCode),
                     r->message ? ": " : "", r->message ? r->message : "");
        else if (r->message)
            snprintf(text, sizeof(text), "%s", r->message);
    }
    post(ctx, MQTT_EV_CONNECT_FAILED, code, text);
}

static void on_lost(void *ctx, char *cause)
{
    post(ctx, MQTT_EV_LOST, 0, cause ? cause : "");

}

static void suback(mrb_bridge *b, int ok)
{
    mrb_mqtt *m = &b->mqtt;
    pthread_mutex_lock(&m->ev_lock);
    m->ev |= MQTT_EV_SUBACK;
    if (ok)
        m->ev_subacks++;
    else
        m->ev_subfails++;
    pthread_mutex_unlock(&m->ev_lock);
    mrb_bridge_wake(b);
}

static void on_sub_ok(void *ctx, MQTTAsync_successData *r)
{
    suback(ctx, !r || r->alt.qos < 0x80);
}

static void on_sub_ok5(void *ctx, MQTTAsync_successData5 *r)
{
    suback(ctx, !r || r->reasonCode < 0x80);
}

static void on_sub_fail(void *ctx, MQTTAsync_failureData *r) { suback(ctx, 0); }
static void on_sub_fail5(void *ctx, MQTTAsync_failureData5 *r) { suback(ctx, 0); }

static void sent(mrb_bridge *b, int ok, int acked)
{
    mrb_mqtt *m = &b->mqtt;
    atomic_fetch_add(ok ? &m->sent_ok : &m->sent_failed, 1);
    atomic_fetch_sub(&m->inflight, 1);
    if (acked)
        atomic_fetch_sub(&m->inflight_acked, 1);
    /* wake the main thread only when it waits for room, not per message */
    if (atomic_exchange(&m->window_waiting, 0))
        mrb_bridge_wake(b);
}

/* A route's message completed: its out, bytes and latency (per-route
 * stats). */
static void count_route(mrb_bridge *b, unsigned route, size_t bytes, int64_t t0_us,
                        int ok)
{
    if (route == MRB_NO_ROUTE)
        return;
    int64_t dt = mrb_now_us() - t0_us;
    pthread_mutex_lock(&b->routes_lock); /* a reload may swap b->st */
    if (route < b->st.n) {
        mrb_dir_stats *d = &b->st.r[route].r2m;
        if (!ok) {
            mrb_stats_count(&d->dropped_send_failed, 1);
        } else {
            mrb_stats_count(&d->out, 1);
            mrb_stats_count(&d->bytes_out, bytes);
            mrb_lat_add(&d->lat, dt > 0 ? (uint64_t)dt : 0);
        }
    }
    pthread_mutex_unlock(&b->routes_lock);
}

static void slot_sent(mrb_pubslot *ps, int ok, int acked)
{
    mrb_bridge *b = ps->b;
    count_route(b, ps->route, ps->bytes, ps->t0_us, ok);
    atomic_store_explicit(&ps->busy, 0, memory_order_release);
    sent(b, ok, acked);
}

/* A stream entry's publish completed: hand it to main for XACK. */
static void sx_done(mrb_sx *sx, int ok)
{
    mrb_bridge *b = sx->b;
    sx->ok = ok;
    pthread_mutex_lock(&b->sx_lock); /* a stack: main reverses it */
    sx->next = b->sx_done;
    b->sx_done = sx;
    pthread_mutex_unlock(&b->sx_lock);
}

/* QoS 0 completes when written; QoS 1/2 when acknowledged ("acked"). */
static void on_sent(void *ctx, MQTTAsync_successData *r) { slot_sent(ctx, 1, 0); }
static void on_sent5(void *ctx, MQTTAsync_successData5 *r) { slot_sent(ctx, 1, 0); }
static void on_send_fail(void *ctx, MQTTAsync_failureData *r) { slot_sent(ctx, 0, 0); }
static void on_send_fail5(void *ctx, MQTTAsync_failureData5 *r) { slot_sent(ctx, 0, 0); }
static void on_acked(void *ctx, MQTTAsync_successData *r) { slot_sent(ctx, 1, 1); }
static void on_acked5(void *ctx, MQTTAsync_successData5 *r) { slot_sent(ctx, 1, 1); }

/* Paho 1.3.12 keeps a QoS > 0 publish whose write failed (code -1, the
 * socket broke under it) for its resend after the reconnect, but its send
 * thread has freed the topic and payload by then: the resend sends freed
 * memory (ASan: heap-use-after-free in the receive thread, allocated by
 * MQTTAsync_sendMessage, freed by the send thread), the broker closes the
 * connection for a malformed packet, and again after every reconnect with
 * the session. So such a failure makes main create the client anew before
 * the next connect (mqtt_connect): Paho's own resends go with it, and the
 * bridge's redelivery covers them (a stream entry is read again). */
static void ack_failed(mrb_bridge *b, int code)
{
    if (code == MQTTASYNC_FAILURE)
        atomic_store(&b->mqtt.remake, 1);
}

static void on_ack_fail(void *ctx, MQTTAsync_failureData *r)
{
    mrb_pubslot *ps = ctx;
    ack_failed(ps->b, r ? r->code : 0);
    slot_sent(ps, 0, 1);
}

static void on_ack_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    mrb_pubslot *ps = ctx;
    ack_failed(ps->b, r ? r->code : 0);
    slot_sent(ps, 0, 1);
}

/* Stream entries: the same, then wake main to XACK. */
static void sx_sent(mrb_sx *sx, int ok, int acked)
{
    mrb_bridge *b = sx->b;
    count_route(b, sx->route, sx->bytes, sx->t0_us, ok);
    sx_done(sx, ok);
    atomic_store(&b->mqtt.window_waiting, 1); /* always wake main */
    sent(b, ok, acked);
}
static void on_sx_sent(void *ctx, MQTTAsync_successData *r) { sx_sent(ctx, 1, 0); }
static void on_sx_sent5(void *ctx, MQTTAsync_successData5 *r) { sx_sent(ctx, 1, 0); }
static void on_sx_send_fail(void *ctx, MQTTAsync_failureData *r) { sx_sent(ctx, 0, 0); }
static void on_sx_send_fail5(void *ctx, MQTTAsync_failureData5 *r) { sx_sent(ctx, 0, 0); }
static void on_sx_acked(void *ctx, MQTTAsync_successData *r) { sx_sent(ctx, 1, 1); }
static void on_sx_acked5(void *ctx, MQTTAsync_successData5 *r) { sx_sent(ctx, 1, 1); }
static void on_sx_ack_fail(void *ctx, MQTTAsync_failureData *r)
{
    mrb_sx *sx = ctx;
    ack_failed(sx->b, r ? r->code : 0);
    sx_sent(sx, 0, 1);
}

static void on_sx_ack_fail5(void *ctx, MQTTAsync_failureData5 *r)
{
    mrb_sx *sx = ctx;
    ack_failed(sx->b, r ? r->code : 0);
    sx_sent(sx, 0, 1);
}

/* ---- main thread ---- */

static mrb_err client_create(mrb_bridge *b)
{
    mrb_mqtt *m = &b->mqtt;
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = m->version;
    paho_enter(b, 0);
    int rc = MQTTAsync_createWithOptions(&m->client, m->uri, b->cfg->client_id,
                                         MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc == MQTTASYNC_SUCCESS)
        MQTTAsync_setCallbacks(m->client, b, on_lost, mrb_intake_on_message, NULL);
    paho_leave(b);
    if (rc != MQTTASYNC_SUCCESS) {
        mrb_error("mqtt: cannot create a client for %s: %s", m->uri,
                  MQTTAsync_strerror(rc));
        m->client = NULL;
        return MRB_ERR_INVALID;
    }
    return MRB_OK;
}

/* Destroy the client and create it again (main, not connected): for the
 * MQTT 3.1.1 fallback, and after the Paho defect described at ack_failed.
 * 0 when it cannot be created (logged; nothing could reconnect). */
static int client_remake(mrb_bridge *b)
{
    paho_enter(b, 0);
    MQTTAsync_destroy(&b->mqtt.client);
    paho_leave(b);
    b->mqtt.state = CONN_DOWN;
    if (client_create(b) != MRB_OK) {
        b->fatal = 1;
        return 0;
    }
    return 1;
}

/* Paho refused a call as disconnected while the bridge counts the
 * connection up: it can close the connection without calling connection
 * lost (a resend failing while it handles the CONNACK). The next tick
 * treats that as a loss. */
static void paho_disconnected(mrb_bridge *b)
{
    if (b->mqtt.state == CONN_UP)
        post(b, MQTT_EV_GONE, 0, NULL);
}

mrb_err mrb_mqtt_init(mrb_bridge *b)
{
    mrb_mqtt *m = &b->mqtt;
    const mrb_url *u = &b->cfg->mqtt;
    int v6 = strchr(u->host, ':') != NULL;
    snprintf(m->uri, sizeof(m->uri), "%s://%s%s%s:%d", u->tls ? "ssl" : "tcp",
             v6 ? "[" : "", u->host, v6 ? "]" : "", u->port);
#if MRB_WITH_TLS
    if (u->tls && mrb_tls_init(b->cfg->tls_min_version) != MRB_OK)
        return MRB_ERR_INVALID;
#endif
    m->version = b->cfg->protocol == MRB_MQTT_311 ? MQTTVERSION_3_1_1
                                                  : MQTTVERSION_5;
    m->state = CONN_DOWN;
    m->next_attempt_ms = 0;
    atomic_init(&m->inflight, 0);
    atomic_init(&m->inflight_acked, 0);
    atomic_init(&m->receive_max, MRB_MQTT_WINDOW);
    atomic_init(&m->window_waiting, 0);
    atomic_init(&m->sent_ok, 0);
    atomic_init(&m->sent_failed, 0);
    atomic_init(&m->sock_fd, -1);
    atomic_init(&m->killed, 0);
    mrb_backoff_init(&m->backoff, b->cfg->reconnect_min_ms,
                     b->cfg->reconnect_max_ms, (uint64_t)time(NULL) ^ 0xA5A5u);
    m->slot = calloc(MRB_PUB_SLOTS, sizeof(*m->slot));
    if (!m->slot)
        return MRB_ERR_NOMEM;
    for (size_t i = 0; i < MRB_PUB_SLOTS; i++) {
        atomic_init(&m->slot[i].busy, 0);
        m->slot[i].b = b;
    }
    if (pthread_mutex_init(&m->ev_lock, NULL) != 0)
        return MRB_ERR_NOMEM;
    return client_create(b);
}

void mrb_mqtt_destroy(mrb_bridge *b)
{
    if (b->mqtt.client) {
        paho_enter(b, 0);
        MQTTAsync_destroy(&b->mqtt.client);
        paho_leave(b);
    }
    pthread_mutex_destroy(&b->mqtt.ev_lock);
    free(b->mqtt.slot); /* no Paho thread runs any more */
    b->mqtt.slot = NULL;
}

/* A connect failed or the connection was lost. kind FAIL_AUTH / FAIL_TLS:
 * the broker refused our credentials or the TLS handshake failed (why says
 * how): that does not fix itself, so it is an error, and the next attempt
 * is reconnect.max_ms away instead of the backoff's first steps. */
static void mqtt_failed(mrb_bridge *b, int64_t now, int was_up, int kind,
                        const char *why)
{
    mrb_mqtt *m = &b->mqtt;
    if (m->state == CONN_UP)
        mrb_echo_mqtt_down(b->echo); /* QoS 1 copies may still come */
    m->state = CONN_DOWN;
    m->subacks = 0;
    b->ready = 0;
    name_list_free(&m->resub, &m->n_resub); /* all are subscribed again */
    int64_t delay = mrb_backoff_next(&m->backoff);
    if (kind != FAIL_OUTAGE && delay < b->cfg->reconnect_max_ms)
        delay = b->cfg->reconnect_max_ms;
    m->next_attempt_ms = now + delay;
    snprintf(m->last_error, sizeof(m->last_error), "%s", why[0] ? why : "connection lost");
    if (b->stopping)
        return;
    /* A session that keeps ending right after it began is usually another
     * client taking over our client id (mosquitto 2.0 closes the old
     * connection without saying why). Say so once. */
    if (was_up && now - m->up_since_ms < MRB_SHORT_SESSION_MS) {
        if (++m->short_sessions == 3)
            mrb_warn("mqtt: the connection to %s ended within %d s of being "
                     "made 3 times in a row: is another client connected with "
                     "client id '%s' (two bridges with the same --id)?", b->mqtt_url,
                     MRB_SHORT_SESSION_MS / 1000, b->cfg->client_id);
    } else if (was_up) {
        m->short_sessions = 0;
    }
    if (kind != FAIL_OUTAGE && m->outage_logged != kind + 1) {
        mrb_error("mqtt: %s %s: %s; retrying every %ld ms (reconnect.max_ms), "
                  "logged once", kind == FAIL_AUTH ? "the broker refused the "
                  "login to" : "TLS failed with", b->mqtt_url, why,
                  b->cfg->reconnect_max_ms);
        if (!m->outage_logged)
            m->down_since_ms = now;
        m->outage_logged = kind + 1;
    } else if (!m->outage_logged) {
        mrb_warn("mqtt: %s %s: %s; retrying with backoff (%ld ms to %ld ms), "
                 "logged once per outage", was_up ? "connection lost to" :
                 "cannot connect to", b->mqtt_url, why[0] ? why : "no reason given",
                 b->cfg->reconnect_min_ms, b->cfg->reconnect_max_ms);
        m->outage_logged = 1;
        m->down_since_ms = now;
    } else {
        mrb_debug("mqtt: attempt %u failed: %s; next in %lld ms",
                  m->backoff.attempts, why, (long long)delay);
    }
}

/* MQTT 5 reason codes 134 bad user name or password, 135 not authorized,
 * 140 bad authentication method; MQTT 3.1.1 CONNACK codes 4 and 5. */
static int is_auth_refusal(int version, int code)
{
    if (version == MQTTVERSION_5)
        return code == 134 || code == 135 || code == 140;
    return code == 4 || code == 5;
}

/* Why a connect attempt failed, in why; returns the FAIL_* kind. */
static int classify_failure(mrb_bridge *b, int code, const char *text,
                            const char *tls, char *why, size_t len)
{
    mrb_mqtt *m = &b->mqtt;
    if (is_auth_refusal(m->version, code)) {
        snprintf(why, len, "%s (CONNACK code %d): check the user name and "
                 "password (mqtt.url, mqtt.password_file or MRB_MQTT_PASSWORD) "
                 "and the broker's password file and ACL",
                 code == 4 || code == 134 ? "bad user name or password"
                 : code == 140 ? "bad authentication method" : "not authorized",
                 code);
        return FAIL_AUTH;
    }
#if MRB_WITH_TLS
    /* Paho says only "TCP/TLS connect failure" (-1): ask OpenSSL, once per
     * outage (the probe blocks for up to 3 s); after that, the same failure
     * keeps the slow pace */
    if (b->cfg->mqtt.tls && code == MQTTASYNC_FAILURE) {
        char diag[300] = "";
        if (m->outage_logged == FAIL_TLS + 1) {
            snprintf(why, len, "%s", tls[0] ? tls : text);
            return FAIL_TLS;
        }
        mrb_tls_diagnose(b->cfg, diag, sizeof(diag));
        if (diag[0] || tls[0]) {
            snprintf(why, len, "%s", diag[0] ? diag : tls);
            return FAIL_TLS;
        }
    }
#endif
    snprintf(why, len, "%s%s(code %d)", text, text[0] ? " " : "", code);
    return FAIL_OUTAGE;
}

static void mqtt_connect(mrb_bridge *b, int64_t now)
{
    mrb_mqtt *m = &b->mqtt;
    const mrb_config *cfg = b->cfg;
    if (atomic_exchange(&m->remake, 0)) {
        mrb_info("mqtt: creating the client anew before reconnecting (a "
                 "QoS > 0 publish failed on the broken connection; see mqtt.c)");
        if (!client_remake(b))
            return;
    }
    int v5 = m->version == MQTTVERSION_5;
    MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
    if (v5)
        o = o5;
    MQTTAsync_willOptions will = MQTTAsync_willOptions_initializer;

    will.topicName = cfg->status_topic;
    will.message = NULL;
    will.payload.data = "offline";
    will.payload.len = 7;
    will.retained = 1;
    will.qos = STATUS_QOS;
    o.will = &will;
    o.keepAliveInterval = (int)cfg->keepalive;
    /* persistent: what is published while we are away is kept for us */
    MQTTProperties props = MQTTProperties_initializer;
    if (v5) {
        o.cleanstart = cfg->session_expiry == 0;
        MQTTProperty p;
        memset(&p, 0, sizeof(p));
        p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
        p.value.integer4 = (unsigned)cfg->session_expiry;
        /* without it the broker would end the session with the
         * connection, and drop what it keeps for us: not without it */
        if (MQTTProperties_add(&props, &p) != 0) {
            MQTTProperties_free(&props);
            call_failed(b, "adding the Session Expiry Interval", 0);
            mqtt_failed(b, now, 0, FAIL_OUTAGE, "out of memory");
            return;
        }
        o.connectProperties = &props;
    } else {
        o.cleansession = cfg->session_expiry == 0;
    }
    /* a broker that accepts TCP but does not answer (stopped) is given up
     * on after the keepalive, at most 10 s */
    o.connectTimeout = cfg->keepalive < 2 ? 2 : cfg->keepalive < 10 ? (int)cfg->keepalive
                                                                   : 10;
    o.maxInflight = MRB_MQTT_WINDOW;
    o.automaticReconnect = 0; /* ours has jitter and re-subscribes */
    o.username = cfg->mqtt.user;
    o.password = cfg->mqtt.password;
    o.context = b;
#if MRB_WITH_TLS
    /* Paho copies these (MQTTAsync_connect) */
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    if (cfg->mqtt.tls) {
        ssl.trustStore = cfg->tls_ca_file;
        ssl.CApath = cfg->tls_ca_path;
        ssl.keyStore = cfg->tls_cert_file;
        ssl.privateKey = cfg->tls_key_file;
        ssl.enableServerCertAuth = 1;
        ssl.verify = cfg->tls_verify_hostname;
        ssl.ssl_error_cb = on_ssl_error;
        ssl.ssl_error_context = b;
        o.ssl = &ssl;
        pthread_mutex_lock(&m->ev_lock);
        m->ev_tls[0] = '\0';
        pthread_mutex_unlock(&m->ev_lock);
    }
#endif
    if (v5) {
        o.onSuccess5 = on_connect_ok5;
        o.onFailure5 = on_connect_fail5;
    } else {
        o.onSuccess = on_connect_ok;
        o.onFailure = on_connect_fail;
    }
    paho_enter(b, 0);
    int rc = MQTTAsync_connect(m->client, &o);
    paho_leave(b);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS) {
        mqtt_failed(b, now, 0, FAIL_OUTAGE, MQTTAsync_strerror(rc));
        return;
    }
    m->state = CONN_CONNECTING;
}

/* The replay request topic is subscribed after the routes' filters, with
 * its own Subscription Identifier (replay_io.c checks it). */
static size_t n_subs(const mrb_bridge *b)
{
    return b->routes.n_mqtt_sub + (mrb_replay_topic(b) ? 1 : 0);
}

/* Filters removed by a reload while the broker was away: unsubscribed at
 * the next connect (a persistent session would keep them). */
static void unsub_pending_flush(mrb_bridge *b)
{
    mrb_mqtt *m = &b->mqtt;
    for (size_t i = 0; i < m->n_unsub; i++) {
        MQTTAsync_responseOptions o = MQTTAsync_responseOptions_initializer;
        paho_enter(b, 0);
        int rc = MQTTAsync_unsubscribe(m->client, m->unsub[i], &o);
        paho_leave(b);
        if (rc != MQTTASYNC_SUCCESS)
            mrb_warn("mqtt: cannot unsubscribe from '%s': %s", m->unsub[i],
                     MQTTAsync_strerror(rc));
        free(m->unsub[i]);
    }
    m->n_unsub = 0;
}

static void unsub_pending_add(mrb_bridge *b, const char *filter)
{
    mrb_mqtt *m = &b->mqtt;
    if (!name_list_add(&m->unsub, &m->n_unsub, filter))
        mrb_warn("mqtt: out of memory: '%s' stays subscribed in the session "
                 "until it expires", filter);
}

/* Subscribe one filter. A subscription that cannot be made here (its
 * Subscription Identifier could not be added: out of memory) is tried
 * again from mrb_mqtt_tick (m->resub); it does not count as confirmed, so
 * "ready" waits for it. */
static void subscribe_one(mrb_bridge *b, const mrb_sub *s)
{
    mrb_mqtt *m = &b->mqtt;
    int v5 = m->version == MQTTVERSION_5;
    MQTTAsync_responseOptions o = MQTTAsync_responseOptions_initializer;
    o.context = b;
    if (v5) {
        MQTTProperty p;
        memset(&p, 0, sizeof(p));
        p.identifier = MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER;
        p.value.integer4 = s->id;
        /* without its identifier the copies of overlapping filters could
         * not be told apart: not subscribed without it */
        if (MQTTProperties_add(&o.properties, &p) != 0) {
            MQTTProperties_free(&o.properties);
            call_failed(b, "adding a Subscription Identifier", 0);
            name_list_add(&m->resub, &m->n_resub, s->name);
            return;
        }
        o.subscribeOptions.noLocal = 1;
        /* the broker's stored retained messages are state, not news:
         * replaying them into Redis on every (re)subscribe would
         * duplicate them; but a store route (presence) wants that
         * state in its hash, on every subscribe (it may have changed
         * while we were away): the ingest thread writes a retained
         * delivery to the hash only */
        o.subscribeOptions.retainHandling = s->retained ? 0 : 2;
        o.onSuccess5 = on_sub_ok5;
        o.onFailure5 = on_sub_fail5;
    } else {
        o.onSuccess = on_sub_ok;
        o.onFailure = on_sub_fail;
    }
    /* QoS 2 is taken as QoS 1: Paho keeps a QoS 2 message only in
     * memory between PUBREC and PUBREL, so a crash would lose it;
     * with QoS 1 the broker sends it again instead */
    paho_enter(b, 0);
    int rc = MQTTAsync_subscribe(m->client, s->name, s->qos > 1 ? 1 : s->qos, &o);
    paho_leave(b);
    MQTTProperties_free(&o.properties);
    if (rc == MQTTASYNC_DISCONNECTED) {
        paho_disconnected(b); /* all are subscribed again after the reconnect */
    } else if (rc != MQTTASYNC_SUCCESS) {
        mrb_error("mqtt: cannot subscribe to '%s': %s", s->name,
                  MQTTAsync_strerror(rc));
        suback(b, 0);
    }
}

static void subscribe_replay(mrb_bridge *b)
{
    mrb_sub replay = {.name = (char *)mrb_replay_topic(b), .qos = 1, .exact = 1,
                      .id = MRB_REPLAY_SUB_ID};
    subscribe_one(b, &replay);
}

static void mqtt_subscribe_all(mrb_bridge *b)
{
    unsub_pending_flush(b);
    for (size_t i = 0; i < b->routes.n_mqtt_sub; i++)
        subscribe_one(b, &b->routes.mqtt_sub[i]);
    if (mrb_replay_topic(b))
        subscribe_replay(b);
}

static const mrb_sub *sub_find(const mrb_sub *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return &v[i];
    return NULL;
}

void mrb_mqtt_apply_routes(mrb_bridge *b, const mrb_routes *old, int had_replay,
                           size_t *added, size_t *removed)
{
    mrb_mqtt *m = &b->mqtt;
    const mrb_routes *t = &b->routes;
    int up = m->state == CONN_UP && !b->stopping;
    size_t kept = 0;
    *added = *removed = 0;
    /* a filter the session held when it was complete and still holds at
     * the same QoS needs nothing; a new one, or a new QoS, a SUBSCRIBE */
    int complete = up && m->subacks >= old->n_mqtt_sub + (had_replay ? 1 : 0);
    if (had_replay)
        kept++; /* the replay topic stays subscribed */
    else if (mrb_replay_topic(b) && up)
        subscribe_replay(b); /* the first stream route came with this reload */
    for (size_t i = 0; i < t->n_mqtt_sub; i++) {
        const mrb_sub *s = &t->mqtt_sub[i];
        const mrb_sub *o = sub_find(old->mqtt_sub, old->n_mqtt_sub, s->name);
        /* a filter that a store route now uses (or no longer uses) is
         * subscribed again for its retained messages' option */
        if (o && o->qos == s->qos && o->retained == s->retained) {
            kept++;
            continue;
        }
        (*added)++;
        if (up)
            subscribe_one(b, s);
    }
    /* after the SUBSCRIBEs: the broker takes them in order, so a filter
     * edited by the reload never has neither one in place */
    for (size_t i = 0; i < old->n_mqtt_sub; i++) {
        const mrb_sub *s = &old->mqtt_sub[i];
        if (sub_find(t->mqtt_sub, t->n_mqtt_sub, s->name))
            continue;
        (*removed)++;
        if (up) {
            MQTTAsync_responseOptions o = MQTTAsync_responseOptions_initializer;
            paho_enter(b, 0);
            int rc = MQTTAsync_unsubscribe(m->client, s->name, &o);
            paho_leave(b);
            if (rc == MQTTASYNC_SUCCESS)
                continue;
            mrb_warn("mqtt: cannot unsubscribe from '%s': %s (tried again at "
                     "the next connect)", s->name, MQTTAsync_strerror(rc));
        }
        unsub_pending_add(b, s->name);
    }
    if (complete)
        m->subacks = kept; /* the new ones' SUBACKs count on from here */
}

void mrb_mqtt_free_pending(mrb_bridge *b)
{
    name_list_free(&b->mqtt.unsub, &b->mqtt.n_unsub);
    name_list_free(&b->mqtt.resub, &b->mqtt.n_resub);
}

/* Subscriptions that could not be made (subscribe_one): again, now. */
static void resubscribe_failed(mrb_bridge *b)
{
    mrb_mqtt *m = &b->mqtt;
    size_t n = m->n_resub;
    char **names = m->resub;
    m->resub = NULL;
    m->n_resub = 0;
    for (size_t i = 0; i < n; i++) {
        const char *replay = mrb_replay_topic(b);
        const mrb_sub *s = NULL;
        for (size_t j = 0; j < b->routes.n_mqtt_sub && !s; j++)
            if (strcmp(b->routes.mqtt_sub[j].name, names[i]) == 0)
                s = &b->routes.mqtt_sub[j];
        if (s)
            subscribe_one(b, s);
        else if (replay && strcmp(replay, names[i]) == 0)
            subscribe_replay(b);
        /* else: a reload removed it meanwhile */
    }
    name_list_free(&names, &n);
}

/* Is fd a TCP socket connected to the broker's port? */
static int is_broker_socket(const mrb_bridge *b, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int type;
    socklen_t tlen = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 ||
        type != SOCK_STREAM || getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    int port = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
             : ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
             : -1;
    return port == b->cfg->mqtt.port;
}

/* Paho C 1.3 neither sets TCP_NODELAY nor exposes its socket, and with
 * Nagle on, a small publish can wait for the ACK of the previous one. After
 * each connect, find our TCP socket whose peer is the broker's port (a
 * Redis on the same port would be one of ours: those are skipped; the
 * ingest thread's is not known here, so a Redis on the broker's port is
 * not supported) and set it. The socket is remembered for
 * mrb_mqtt_kill_socket(). */
static void mqtt_find_socket(mrb_bridge *b)
{
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 4096)
        max = 4096;
    atomic_store(&b->mqtt.sock_fd, -1);
    for (int fd = 0; fd < max; fd++) {
        int one = 1;
        if (is_broker_socket(b, fd) &&
            (!b->rpub.ac || b->rpub.ac->c.fd != fd) &&
            (!b->rsub.ac || b->rsub.ac->c.fd != fd) &&
            (!b->rread.ac || b->rread.ac->c.fd != fd)) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            atomic_store(&b->mqtt.sock_fd, fd);
        }
    }
}

int mrb_mqtt_kill_socket(mrb_bridge *b, int stay_down)
{
    int fd = atomic_load(&b->mqtt.sock_fd);
    /* re-checked: Paho may have closed it and the number been reused */
    if (fd < 0 || !is_broker_socket(b, fd))
        return 0;
    if (stay_down)
        atomic_store(&b->mqtt.killed, 1);
    shutdown(fd, SHUT_RDWR);
    return 1;
}

/* The retained "online" status; tried again from mrb_mqtt_tick until Paho
 * takes it (the Last Will says "offline" otherwise). */
static void send_online(mrb_bridge *b)
{
    mrb_mqtt *m = &b->mqtt;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = "online";
    msg.payloadlen = 6;
    msg.qos = STATUS_QOS;
    msg.retained = 1;
    paho_enter(b, 0);
    int rc = MQTTAsync_sendMessage(m->client, b->cfg->status_topic, &msg, NULL);
    paho_leave(b);
    if (rc == MQTTASYNC_SUCCESS) {
        m->online_due = 0;
        return;
    }
    call_failed(b, "publishing the \"online\" status", rc);
    if (rc == MQTTASYNC_DISCONNECTED)
        paho_disconnected(b);
}

static void mqtt_up(mrb_bridge *b, int64_t now)
{
    mrb_mqtt *m = &b->mqtt;
    m->state = CONN_UP;
    m->subacks = 0;
    m->up_since_ms = now;
    m->connects++;
    mrb_backoff_reset(&m->backoff);
    mqtt_find_socket(b);
    if (m->outage_logged) {
        mrb_info("mqtt: reconnected to %s after %.1f s", b->mqtt_url,
                 (double)(now - m->down_since_ms) / 1000.0);
        m->outage_logged = 0;
    }
    m->call_failed_logged = 0;
    /* the broker returns a copy of what we publish from now on (3.1.1) */
    mrb_echo_mqtt_up(b->echo, now);
    if (b->stopping)
        return; /* back in time to flush out_q: no intake, no "online" */
    m->online_due = 1;
    send_online(b);
    mqtt_subscribe_all(b);
}

void mrb_mqtt_tick(mrb_bridge *b, int64_t now)
{
    mrb_mqtt *m = &b->mqtt;
    pthread_mutex_lock(&m->ev_lock);
    unsigned ev = m->ev;
    int code = m->ev_code;
    char text[sizeof(m->ev_text)], tls[sizeof(m->ev_tls)];
    memcpy(text, m->ev_text, sizeof(text));
    memcpy(tls, m->ev_tls, sizeof(tls));
    size_t oks = m->ev_subacks, fails = m->ev_subfails;
    m->ev = 0;
    m->ev_subacks = m->ev_subfails = 0;
    pthread_mutex_unlock(&m->ev_lock);

    if (ev & MQTT_EV_CONNECT_FAILED) {
        /* 132 (0x84): MQTT 5 "unsupported protocol version"; 1: the same
         * refusal in an MQTT 3.1.1 CONNACK */
        if (m->version == MQTTVERSION_5 && b->cfg->protocol == MRB_MQTT_AUTO &&
            (code == 132 || code == 1)) {
            mrb_warn("mqtt: the broker refused MQTT 5 (%s); falling back to "
                     "MQTT 3.1.1", text);
            m->version = MQTTVERSION_3_1_1;
            if (!client_remake(b))
                return;
            mqtt_connect(b, now);
        } else {
            char why[600];
            int kind = classify_failure(b, code, text, tls, why, sizeof(why));
            mqtt_failed(b, now, 0, kind, why);
        }
    }
    if (ev & MQTT_EV_CONNECTED)
        mqtt_up(b, now);
    /* only while up: after MQTT_EV_GONE the client was made anew, and a
     * LOST of the old one may still be in this batch */
    if (ev & MQTT_EV_LOST && m->state == CONN_UP)
        mqtt_failed(b, now, 1, FAIL_OUTAGE, text[0] ? text : "connection lost");
    if (ev & MQTT_EV_GONE && m->state == CONN_UP) {
        atomic_store(&m->remake, 1); /* no stale callback of the old one */
        mqtt_failed(b, now, 1, FAIL_OUTAGE, "Paho reports the connection closed");
    }
    if (ev & MQTT_EV_SUBACK && m->state == CONN_UP) {
        m->subacks += oks + fails;
        if (fails)
            mrb_error("mqtt: the broker refused %zu subscription(s) (not "
                      "authorised?); messages on those filters will not be "
                      "forwarded", fails);
    }
    if (m->state == CONN_UP && !b->stopping) {
        if (m->online_due)
            send_online(b);
        if (m->n_resub)
            resubscribe_failed(b);
    }
    /* also while stopping: out_q may still be flushed if the broker
     * comes back before the shutdown timeout */
    if (m->state == CONN_DOWN && m->client && now >= m->next_attempt_ms &&
        !atomic_load(&m->killed))
        mqtt_connect(b, now);
}

int64_t mrb_mqtt_next_timer(const mrb_bridge *b)
{
    return b->mqtt.state == CONN_DOWN && b->mqtt.client &&
                   !atomic_load(&b->mqtt.killed) ? b->mqtt.next_attempt_ms
                                                 : INT64_MAX;
}

int mrb_mqtt_ready(const mrb_bridge *b)
{
    return b->mqtt.state == CONN_UP && b->mqtt.subacks >= n_subs(b);
}

/* 0 when out of memory. */
static int add_user_property(MQTTProperties *props, const char *name, const char *val)
{
    MQTTProperty p;
    memset(&p, 0, sizeof(p));
    p.identifier = MQTTPROPERTY_CODE_USER_PROPERTY;
    p.value.data.data = (char *)name;
    p.value.data.len = (int)strlen(name);
    p.value.value.data = (char *)val;
    p.value.value.len = (int)strlen(val);
    return MQTTProperties_add(props, &p) == 0;
}

static mrb_err publish(mrb_bridge *b, const char *topic, const void *payload,
                       size_t len, int qos, int retain, mrb_sx *sx,
                       const mrb_pub_props *pp, unsigned route, int64_t t0_us)
{
    mrb_mqtt *m = &b->mqtt;
    if (m->state != CONN_UP)
        return MRB_ERR_CONN;
    int acked = qos > 0;
    if (!paho_enter(b, acked))
        return MRB_ERR_FULL; /* the waiting callback wakes us when it returns */
    if (atomic_load(&m->inflight) >= MRB_MQTT_WINDOW ||
        (acked && atomic_load(&m->inflight_acked) >= atomic_load(&m->receive_max))) {
        atomic_store(&m->window_waiting, 1);
        /* re-check: a completion between the test and the store would
         * not have seen window_waiting */
        if (atomic_load(&m->inflight) >= MRB_MQTT_WINDOW ||
            (acked && atomic_load(&m->inflight_acked) >= atomic_load(&m->receive_max))) {
            paho_leave(b);
            return MRB_ERR_FULL; /* a completion will wake us */
        }
    }
    int v5 = m->version == MQTTVERSION_5;
    MQTTAsync_responseOptions o = MQTTAsync_responseOptions_initializer;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    mrb_pubslot *ps = NULL;
    if (!sx) {
        /* below the window a free slot exists; should none be found, wait
         * like a full window: a completion frees one and wakes us */
        for (size_t i = 0; i < MRB_PUB_SLOTS && !ps; i++) {
            mrb_pubslot *c = &m->slot[(m->slot_next + i) % MRB_PUB_SLOTS];
            if (!atomic_load_explicit(&c->busy, memory_order_acquire)) {
                ps = c;
                m->slot_next = (m->slot_next + i + 1) % MRB_PUB_SLOTS;
            }
        }
        if (!ps) {
            paho_leave(b);
            atomic_store(&m->window_waiting, 1);
            return MRB_ERR_FULL;
        }
        ps->route = route;
        ps->bytes = len;
        ps->t0_us = t0_us;
        atomic_store_explicit(&ps->busy, 1, memory_order_relaxed);
        o.context = ps;
    }
    int props_ok = 1;
    if (sx) {
        o.context = sx;
        if (v5) {
            o.onSuccess5 = acked ? on_sx_acked5 : on_sx_sent5;
            o.onFailure5 = acked ? on_sx_ack_fail5 : on_sx_send_fail5;
        } else {
            o.onSuccess = acked ? on_sx_acked : on_sx_sent;
            o.onFailure = acked ? on_sx_ack_fail : on_sx_send_fail;
        }
        if (v5) {
            /* consumers drop redeliveries by entry id (docs/ROUTES.md) */
            const char *key = sx->tag, *id = sx->tag + strlen(sx->tag) + 1;
            const char *names[2] = {"stream", "stream-id"};
            const char *vals[2] = {key, id};
            for (int i = 0; i < 2 && props_ok; i++)
                props_ok = add_user_property(&msg.properties, names[i], vals[i]);
        }
    } else if (v5) {
        if (pp && pp->corr) {
            MQTTProperty p;
            memset(&p, 0, sizeof(p));
            p.identifier = MQTTPROPERTY_CODE_CORRELATION_DATA;
            p.value.data.data = (char *)pp->corr;
            p.value.data.len = (int)pp->corr_len;
            props_ok = MQTTProperties_add(&msg.properties, &p) == 0;
        }
        for (int i = 0; pp && i < pp->n_user && props_ok; i++)
            props_ok = add_user_property(&msg.properties, pp->names[i], pp->vals[i]);
        o.onSuccess5 = acked ? on_acked5 : on_sent5;
        o.onFailure5 = acked ? on_ack_fail5 : on_send_fail5;
    } else {
        o.onSuccess = acked ? on_acked : on_sent;
        o.onFailure = acked ? on_ack_fail : on_send_fail;
    }
    if (!props_ok) {
        paho_leave(b);
        /* not without them (the ids consumers rely on, the correlation
         * of a replay answer): the message waits and is tried again */
        MQTTProperties_free(&msg.properties);
        if (ps)
            atomic_store(&ps->busy, 0);
        call_failed(b, "adding a property to a publish", 0);
        atomic_store(&m->window_waiting, 1);
        if (atomic_load(&m->inflight) == 0)
            mrb_bridge_wake(b); /* nothing to complete: retry soon */
        return MRB_ERR_FULL;
    }
    msg.payload = (void *)payload; /* Paho copies it */
    msg.payloadlen = (int)len;
    msg.qos = qos;
    msg.retained = retain;
    atomic_fetch_add(&m->inflight, 1);
    if (acked)
        atomic_fetch_add(&m->inflight_acked, 1);
    int rc = MQTTAsync_sendMessage(m->client, topic, &msg, &o);
    paho_leave(b);
    MQTTProperties_free(&msg.properties);
    if (rc == MQTTASYNC_SUCCESS)
        return MRB_OK;
    if (ps) /* no callback comes for a refused send */
        atomic_store(&ps->busy, 0);
    atomic_fetch_sub(&m->inflight, 1);
    if (acked)
        atomic_fetch_sub(&m->inflight_acked, 1);
    if (rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT || rc == MQTTASYNC_MAX_BUFFERED_MESSAGES) {
        /* Paho's own limit (the broker's Receive Maximum for QoS > 0) is
         * below ours: wait for the next completion, which wakes us */
        atomic_store(&m->window_waiting, 1);
        if (atomic_load(&m->inflight) == 0)
            mrb_bridge_wake(b); /* nothing left to complete: retry soon */
        return MRB_ERR_FULL;
    }
    if (rc == MQTTASYNC_DISCONNECTED) {
        paho_disconnected(b);
        return MRB_ERR_CONN;
    }
    return MRB_ERR_INVALID;
}

mrb_err mrb_mqtt_publish(mrb_bridge *b, const char *topic, const void *payload,
                         size_t len, int qos, int retain, unsigned route,
                         int64_t t0_us)
{
    return publish(b, topic, payload, len, qos, retain, NULL, NULL, route, t0_us);
}

mrb_err mrb_mqtt_publish_props(mrb_bridge *b, const char *topic,
                               const void *payload, size_t len, int qos,
                               int retain, const mrb_pub_props *pp)
{
    return publish(b, topic, payload, len, qos, retain, NULL, pp, MRB_NO_ROUTE, 0);
}

mrb_err mrb_mqtt_publish_own(mrb_bridge *b, const char *topic, const void *payload,
                             size_t len, int retain)
{
    mrb_mqtt *m = &b->mqtt;
    if (m->state != CONN_UP || !m->client)
        return MRB_ERR_CONN;
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = (void *)payload; /* Paho copies it */
    msg.payloadlen = (int)len;
    msg.qos = 0;
    msg.retained = retain;
    paho_enter(b, 0); /* QoS 0: does not wait for Paho's mutex */
    int rc = MQTTAsync_sendMessage(m->client, topic, &msg, NULL);
    paho_leave(b);
    return rc == MQTTASYNC_SUCCESS ? MRB_OK : MRB_ERR_CONN;
}

mrb_err mrb_mqtt_publish_sx(mrb_bridge *b, const char *topic, const void *payload,
                            size_t len, int qos, int retain, mrb_sx *sx)
{
    return publish(b, topic, payload, len, qos, retain, sx, NULL, MRB_NO_ROUTE, 0);
}

void mrb_mqtt_shutdown(mrb_bridge *b, int timeout_ms)
{
    mrb_mqtt *m = &b->mqtt;
    if (!m->client)
        return;
    paho_enter(b, 0);
    int up = m->state == CONN_UP && MQTTAsync_isConnected(m->client);
    paho_leave(b);
    if (up) {
        MQTTAsync_message msg = MQTTAsync_message_initializer;
        MQTTAsync_responseOptions o = MQTTAsync_responseOptions_initializer;
        msg.payload = "offline";
        msg.payloadlen = 7;
        msg.qos = STATUS_QOS;
        msg.retained = 1;
        paho_enter(b, 0);
        if (MQTTAsync_sendMessage(m->client, b->cfg->status_topic, &msg, &o) ==
            MQTTASYNC_SUCCESS)
            MQTTAsync_waitForCompletion(m->client, o.token, (unsigned long)timeout_ms);
        MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
        MQTTAsync_disconnectOptions d5 = MQTTAsync_disconnectOptions_initializer5;
        if (m->version == MQTTVERSION_5)
            d = d5;
        d.timeout = timeout_ms;
        if (MQTTAsync_disconnect(m->client, &d) == MQTTASYNC_SUCCESS) {
            /* bounded: the disconnect completes or times out within timeout */
            for (int i = 0; i < timeout_ms / 10 + 1 && MQTTAsync_isConnected(m->client); i++)
                nanosleep(&(struct timespec){0, 10L * 1000 * 1000}, NULL);
        }
        paho_leave(b);
    }
    m->state = CONN_DOWN;
}
