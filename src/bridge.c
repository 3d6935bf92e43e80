/*
 * bridge.c - the event loop that wires the two edges together.
 *
 * The main thread sleeps in poll() on the Redis sockets and a wake-up pipe.
 * Paho's threads and the signal handlers write one byte to the pipe (at most
 * one outstanding: wake_pending) when they hand something over. Each turn of
 * the loop: MQTT events and timers, Redis timers, then the two pumps:
 *
 *   in_q  (MQTT -> Redis): pop, map through the routes, PUBLISH pipelined;
 *                           waits while Redis is down or the window is full.
 *   out_q (Redis -> MQTT): messages that arrived while the broker was down
 *                           or Paho's window was full.
 *
 * Loop prevention: with MQTT 5 the broker does not return our publishes (No
 * Local); Redis has no such option, so each PUBLISH to a channel that our own
 * subscriptions match is fingerprinted (redis_echo) and the copy that comes
 * back is recognised and dropped. MQTT 3.1.1 gets the same treatment on the
 * MQTT side (mqtt_echo).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge_int.h"

static volatile sig_atomic_t got_stop, got_usr1;
static int signal_fd = -1; /* write end of the wake pipe, for handlers */

static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGUSR1)
        got_usr1 = 1;
    else
        got_stop = 1;
    if (signal_fd >= 0) {
        ssize_t n = write(signal_fd, "s", 1);
        (void)n;
    }
    errno = saved;
}

void mrb_bridge_wake(mrb_bridge *b)
{
    if (atomic_exchange(&b->wake_pending, 1))
        return;
    ssize_t n = write(b->wake_fd[1], "w", 1);
    (void)n; /* a full pipe already holds a wake-up */
}

static void log_stats(mrb_bridge *b)
{
    pthread_mutex_lock(&b->in_lock);
    mrb_in_counters ic = b->ic;
    size_t in_queued = b->in_q.count;
    pthread_mutex_unlock(&b->in_lock);
    unsigned long long sent_ok = atomic_load(&b->mqtt.sent_ok);
    unsigned long long sent_failed = atomic_load(&b->mqtt.sent_failed);
    const mrb_counters *c = &b->c;
    mrb_info("stats: mqtt_in=%llu redis_out=%llu redis_in=%llu mqtt_out=%llu "
             "queued_to_redis=%zu queued_to_mqtt=%zu echoes=%llu duplicates=%llu "
             "dropped_unmappable=%llu dropped_too_large=%llu "
             "dropped_queue_full=%llu dropped_send_failed=%llu "
             "dropped_shutdown=%llu retained_skipped=%llu echo_evicted=%llu",
             (unsigned long long)ic.mqtt_in, (unsigned long long)c->redis_out,
             (unsigned long long)c->redis_in, sent_ok, in_queued, b->out_q.count,
             (unsigned long long)c->echoes,
             (unsigned long long)(c->duplicates + ic.duplicates),
             (unsigned long long)c->dropped_unmappable,
             (unsigned long long)(c->dropped_too_large + ic.dropped_too_large),
             (unsigned long long)(c->dropped_queue_full + ic.dropped_queue_full),
             (unsigned long long)(c->dropped_send_failed + sent_failed + ic.nomem),
             (unsigned long long)c->dropped_shutdown,
             (unsigned long long)ic.retained_skipped,
             (unsigned long long)(b->redis_echo.evicted + b->mqtt_echo.evicted));
}

static void warn_unmappable(mrb_bridge *b, const char *side, const char *name,
                            size_t len)
{
    uint64_t sup;
    char esc[MRB_LOG_ESCAPE_MAX];
    b->c.dropped_unmappable++;
    if (mrb_ratelimit_allow(&b->rl_unmappable, mrb_now_ms(), &sup))
        mrb_warn("dropped message from %s '%s': unmappable (it matches a "
                 "route on this side, but the name it maps to is not valid or "
                 "not matched on the other side); dropped_unmappable=%llu "
                 "(%llu similar not logged)", side,
                 mrb_log_escape(name, len, esc, sizeof(esc)),
                 (unsigned long long)b->c.dropped_unmappable,
                 (unsigned long long)sup);
}

/* ---- Redis -> MQTT ---- */

static void out_enqueue(mrb_bridge *b, const char *topic, size_t tlen,
                        const char *payload, size_t plen, int qos, int retain)
{
    mrb_msg *m = mrb_msg_new(topic, tlen, payload, plen, qos, retain);
    if (!m) {
        b->c.dropped_send_failed++;
        return;
    }
    size_t dropped = mrb_queue_push(&b->out_q, m);
    if (dropped) {
        uint64_t sup;
        b->c.dropped_queue_full += dropped;
        if (mrb_ratelimit_allow(&b->rl_full, mrb_now_ms(), &sup))
            mrb_warn("dropped %zu oldest message(s) waiting for MQTT: queue full "
                     "(limits.queue_messages %ld, limits.queue_bytes %ld); "
                     "dropped_queue_full=%llu", dropped, b->cfg->queue_messages,
                     b->cfg->queue_bytes,
                     (unsigned long long)b->c.dropped_queue_full);
    }
}

/* Send to the broker now; 0 if it must wait (down or window full). */
static int mqtt_send(mrb_bridge *b, const char *topic, size_t tlen,
                     const char *payload, size_t plen, int qos, int retain)
{
    mrb_err err = mrb_mqtt_publish(b, topic, payload, plen, qos, retain);
    if (err == MRB_ERR_FULL || err == MRB_ERR_CONN)
        return 0;
    if (err != MRB_OK) {
        uint64_t sup;
        char esc[MRB_LOG_ESCAPE_MAX];
        b->c.dropped_send_failed++;
        if (mrb_ratelimit_allow(&b->rl_send, mrb_now_ms(), &sup))
            mrb_warn("dropped message to MQTT topic '%s': the MQTT library "
                     "refused it; dropped_send_failed=%llu",
                     mrb_log_escape(topic, tlen, esc, sizeof(esc)),
                     (unsigned long long)b->c.dropped_send_failed);
        return 1;
    }
    if (b->mqtt.version != MQTTVERSION_5 &&
        mrb_routes_mqtt_canonical(&b->routes, topic, tlen) != MRB_NO_SUB)
        mrb_seen_add(&b->mqtt_echo, mrb_seen_key(topic, tlen, payload, plen),
                     mrb_now_ms());
    return 1;
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
    int64_t now = mrb_now_ms();
    if (mrb_seen_take(&b->redis_echo, mrb_seen_key(channel, clen, payload, plen), now)) {
        b->c.echoes++;
        return;
    }
    if ((long)plen > b->cfg->max_payload) {
        uint64_t sup;
        char esc[MRB_LOG_ESCAPE_MAX];
        b->c.dropped_too_large++;
        if (mrb_ratelimit_allow(&b->rl_large, now, &sup))
            mrb_warn("dropped message from Redis channel '%s': too large (%zu "
                     "bytes, limits.max_payload is %ld); dropped_too_large=%llu "
                     "(%llu similar not logged)",
                     mrb_log_escape(channel, clen, esc, sizeof(esc)), plen,
                     b->cfg->max_payload,
                     (unsigned long long)b->c.dropped_too_large,
                     (unsigned long long)sup);
        return;
    }
    mrb_targets *tg = &b->tg;
    if (mrb_routes_map_redis(&b->routes, channel, clen, tg) != MRB_OK) {
        b->c.dropped_send_failed++;
        return;
    }
    if (tg->n == 0) {
        warn_unmappable(b, "Redis channel", channel, clen);
        return;
    }
    for (size_t i = 0; i < tg->n; i++) {
        const mrb_route *r = &b->routes.route[tg->v[i].route];
        char *topic = tg->buf + tg->v[i].off;
        size_t tlen = tg->v[i].len;
        char save = topic[tlen];
        topic[tlen] = '\0'; /* Paho wants a C string; the buffer has room */
        if (b->out_q.count > 0 ||
            !mqtt_send(b, topic, tlen, payload, plen, r->qos, r->retain))
            out_enqueue(b, topic, tlen, payload, plen, r->qos, r->retain);
        topic[tlen] = save;
    }
}

static void pump_out(mrb_bridge *b)
{
    mrb_msg *m;
    while ((m = mrb_queue_pop(&b->out_q)) != NULL) {
        if (!mqtt_send(b, mrb_msg_name(m), m->name_len, mrb_msg_payload(m),
                       m->payload_len, m->qos, m->retain)) {
            mrb_queue_push_front(&b->out_q, m);
            return;
        }
        free(m);
    }
}

/* ---- MQTT -> Redis ---- */

/* Forward one message to every distinct channel it maps to. 0 if Redis
 * cannot take it now (the caller keeps it). With several targets, those
 * already sent are not sent again: *done counts them. */
static int forward_to_redis(mrb_bridge *b, const mrb_msg *m, size_t *done)
{
    mrb_targets *tg = &b->tg;
    if (mrb_routes_map_mqtt(&b->routes, mrb_msg_name(m), m->name_len, tg) != MRB_OK) {
        b->c.dropped_send_failed++;
        return 1;
    }
    if (tg->n == 0) {
        warn_unmappable(b, "MQTT topic", mrb_msg_name(m), m->name_len);
        return 1;
    }
    int64_t now = mrb_now_ms();
    for (size_t i = *done; i < tg->n; i++) {
        const char *ch = tg->buf + tg->v[i].off;
        size_t clen = tg->v[i].len;
        if (mrb_redis_publish(b, ch, clen, mrb_msg_payload(m), m->payload_len) != MRB_OK)
            return 0;
        (*done)++;
        /* While the subscriber is (re)subscribing, Redis may already have
         * taken its SUBSCRIBE before we saw the confirmation: fingerprint
         * whenever a subscriber connection exists, not only once it is up.
         * An unused fingerprint just expires. */
        if (b->rsub.ac &&
            mrb_routes_redis_canonical(&b->routes, ch, clen) != MRB_NO_SUB)
            mrb_seen_add(&b->redis_echo,
                         mrb_seen_key(ch, clen, mrb_msg_payload(m), m->payload_len),
                         now);
    }
    return 1;
}

static void pump_in(mrb_bridge *b)
{
    for (int budget = 0; budget < 4096; budget++) {
        if (!mrb_redis_pub_ready(b))
            return;
        mrb_msg *m = b->in_pending;
        if (!m) {
            pthread_mutex_lock(&b->in_lock);
            m = mrb_queue_pop(&b->in_q);
            pthread_mutex_unlock(&b->in_lock);
            if (!m)
                return;
            b->in_done = 0;
            /* judged at its arrival time: an echo that waited in in_q
             * (Redis down) is still an echo */
            if (b->mqtt.version != MQTTVERSION_5 &&
                mrb_seen_take(&b->mqtt_echo,
                              mrb_seen_key(mrb_msg_name(m), m->name_len,
                                           mrb_msg_payload(m), m->payload_len),
                              m->arrived_ms)) {
                b->c.echoes++;
                free(m);
                continue;
            }
        }
        if (!forward_to_redis(b, m, &b->in_done)) {
            b->in_pending = m; /* Redis's window is full: resume here later */
            return;
        }
        b->in_pending = NULL;
        free(m);
    }
    mrb_bridge_wake(b); /* more to do: yield to I/O, then come back */
}

/* ---- the loop ---- */

static void check_ready(mrb_bridge *b)
{
    if (b->ready || b->stopping || !mrb_mqtt_ready(b) || !mrb_redis_pub_ready(b) ||
        !mrb_redis_sub_ready(b))
        return;
    b->ready = 1;
    mrb_info("ready: MQTT %s (MQTT %s) and Redis %s connected; %zu MQTT "
             "subscription(s), %zu Redis subscription(s), %zu route(s)",
             b->mqtt_url, b->mqtt.version == MQTTVERSION_5 ? "5" : "3.1.1",
             b->redis_url,
             b->routes.n_mqtt_sub, b->routes.n_redis_sub, b->routes.n);
}

static int drained(mrb_bridge *b)
{
    pthread_mutex_lock(&b->in_lock);
    size_t inq = b->in_q.count;
    pthread_mutex_unlock(&b->in_lock);
    return inq == 0 && !b->in_pending && b->rpub.outstanding == 0 &&
           b->out_q.count == 0 && atomic_load(&b->mqtt.inflight) == 0;
}

static int set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
           fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ? -1 : 0;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* Returns 0 after a clean stop, 1 after a fatal error (logged). */
static int run_loop(mrb_bridge *b)
{
    int64_t deadline = 0;
    for (;;) {
        int64_t now = mrb_now_ms();
        if (got_usr1) {
            got_usr1 = 0;
            log_stats(b);
        }
        if (got_stop && !b->stopping) {
            pthread_mutex_lock(&b->in_lock);
            size_t inq = b->in_q.count;
            pthread_mutex_unlock(&b->in_lock);
            mrb_info("shutdown: no longer taking messages; flushing %zu to Redis "
                     "and %zu to MQTT (at most %ld ms)", inq, b->out_q.count,
                     b->cfg->shutdown_timeout_ms);
            b->stopping = 1;
            deadline = now + b->cfg->shutdown_timeout_ms;
            mrb_redis_close_sub(b);
            mrb_mqtt_unsubscribe_all(b);
        }
        mrb_mqtt_tick(b, now);
        mrb_redis_tick(b, now);
        pump_out(b);
        pump_in(b);
        check_ready(b);
        if (b->fatal)
            return 1;
        if (b->stopping && (drained(b) || now >= deadline))
            return 0;
        if (b->stopping && atomic_load(&b->mqtt.inflight) > 0) {
            /* have the last completions wake us, not the poll timeout */
            atomic_store(&b->mqtt.window_waiting, 1);
            if (atomic_load(&b->mqtt.inflight) == 0)
                continue;
        }

        struct pollfd pfd[3];
        mrb_rconn *owner[2];
        pfd[0].fd = b->wake_fd[0];
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        int n = 1 + mrb_redis_pollfds(b, pfd + 1, owner);
        int64_t next = mrb_mqtt_next_timer(b);
        int64_t rt = mrb_redis_next_timer(b);
        if (rt < next)
            next = rt;
        if (b->stopping && deadline < next)
            next = deadline;
        int64_t wait = next == INT64_MAX ? 1000 : next - now;
        if (wait < 0)
            wait = 0;
        if (wait > 1000)
            wait = 1000;
        if (poll(pfd, (nfds_t)n, (int)wait) < 0 && errno != EINTR) {
            mrb_error("poll: %s", strerror(errno));
            return 1;
        }
        if (pfd[0].revents & POLLIN) {
            /* Drain first, then clear: a wake-up posted after the clear
             * writes a new byte; one posted before it is seen by the pumps
             * of the next turn. (Clearing first loses the byte of a wake-up
             * that lands between the clear and the read.) */
            char buf[64];
            while (read(b->wake_fd[0], buf, sizeof(buf)) > 0)
                ;
            atomic_store(&b->wake_pending, 0);
        }
        for (int i = 1; i < n; i++)
            if (pfd[i].revents)
                mrb_redis_handle(owner[i - 1], pfd[i].revents);
    }
}

int mrb_bridge_run(const mrb_config *cfg)
{
    mrb_bridge *b = calloc(1, sizeof(*b));
    int status = 1, have_lock = 0, have_mqtt = 0;
    if (!b) {
        mrb_error("out of memory");
        return 1;
    }
    b->cfg = cfg;
    b->wake_fd[0] = b->wake_fd[1] = -1;
    mrb_url_format_redacted(&cfg->mqtt, MRB_URL_MQTT, b->mqtt_url, sizeof(b->mqtt_url));
    mrb_url_format_redacted(&cfg->redis, MRB_URL_REDIS, b->redis_url,
                            sizeof(b->redis_url));
    if (mrb_routes_build(&b->routes, cfg->routes, cfg->n_routes) != MRB_OK ||
        mrb_seen_init(&b->redis_echo, MRB_ECHO_CAPACITY, MRB_ECHO_TTL_MS) != MRB_OK ||
        mrb_seen_init(&b->mqtt_echo, MRB_ECHO_CAPACITY, MRB_ECHO_TTL_MS) != MRB_OK) {
        mrb_error("out of memory");
        goto out;
    }
    if (pipe(b->wake_fd) != 0 || set_nonblock_cloexec(b->wake_fd[0]) ||
        set_nonblock_cloexec(b->wake_fd[1])) {
        mrb_error("cannot create the wake-up pipe: %s", strerror(errno));
        goto out;
    }
    if (pthread_mutex_init(&b->in_lock, NULL) != 0)
        goto out;
    have_lock = 1;
    mrb_queue_init(&b->in_q, (size_t)cfg->queue_messages, (size_t)cfg->queue_bytes);
    mrb_queue_init(&b->out_q, (size_t)cfg->queue_messages, (size_t)cfg->queue_bytes);
    signal_fd = b->wake_fd[1];
    install_signals();
    mrb_redis_init(b);
    if (mrb_mqtt_init(b) != MRB_OK)
        goto out;
    have_mqtt = 1;

    mrb_info("mqtt-redis-bridge %s starting: id %s, MQTT %s, Redis %s, %zu route(s)",
             MRB_VERSION, cfg->id, b->mqtt_url, b->redis_url, cfg->n_routes);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        char line[600];
        mrb_route_format(&cfg->routes[i], line, sizeof(line));
        mrb_info("route: %s", line);
    }

    status = run_loop(b);
    mrb_mqtt_shutdown(b, 2000);

out:
    if (have_mqtt) {
        mrb_redis_destroy(b);
        /* after this no Paho thread runs: what is left is counted below,
         * including publishes Paho failed while being destroyed */
        mrb_mqtt_destroy(b);
        size_t left = mrb_queue_clear(&b->in_q) + mrb_queue_clear(&b->out_q) +
                      (b->in_pending ? 1 : 0);
        free(b->in_pending);
        b->in_pending = NULL;
        b->c.dropped_shutdown += left;
        if (left)
            mrb_warn("shutdown: %zu queued message(s) could not be delivered "
                     "in time and were dropped", left);
        log_stats(b);
    }
    signal_fd = -1;
    if (have_lock) {
        mrb_queue_clear(&b->in_q);
        pthread_mutex_destroy(&b->in_lock);
    }
    mrb_queue_clear(&b->out_q);
    mrb_targets_free(&b->tg);
    mrb_seen_free(&b->redis_echo);
    mrb_seen_free(&b->mqtt_echo);
    mrb_routes_free(&b->routes);
    if (b->wake_fd[0] >= 0)
        close(b->wake_fd[0]);
    if (b->wake_fd[1] >= 0)
        close(b->wake_fd[1]);
    free(b);
    mrb_info("shutdown complete%s", status ? " after a fatal error" : "");
    return status;
}
