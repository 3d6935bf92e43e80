/*
 * bridge.c - the event loop that wires the two edges together.
 *
 * The main thread sleeps in poll() on the Redis sockets and a wake-up pipe.
 * Paho's threads and the signal handlers write one byte to the pipe (at most
 * one outstanding: wake_pending) when they hand something over. Each turn of
 * the loop: MQTT events and timers, Redis timers, then the two pumps:
 *
 *   out_q (Redis -> MQTT): messages that arrived while the broker was down
 *                           or Paho's window was full (pump.c).
 *   stream mode (Redis -> MQTT) is read and acknowledged in stream.c.
 *   replay requests and their answers: replay_io.c.
 *
 * MQTT -> Redis does not pass here: Paho's receive thread hands messages
 * to the ingest thread (ingest.c), which has its own Redis connection.
 *
 * Loop prevention: with MQTT 5 the broker does not return our publishes (No
 * Local); Redis has no such option, so each PUBLISH to a channel that our own
 * subscriptions match is fingerprinted and the copy that comes back is
 * recognised and dropped (the echo guard, echo.h). MQTT 3.1.1 gets the same
 * treatment on the MQTT side.
 *
 * A SIGHUP is taken here and applied by reload.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h> /* malloc_trim */
#endif

#include "bridge_int.h"
#include "loop_int.h"
#include "mrb/envelope.h"

static volatile sig_atomic_t got_stop, got_usr1, got_hup;
static int signal_fd = -1; /* write end of the wake pipe, for handlers */

static void on_signal(int sig)
{
    int saved = errno;
    if (sig == SIGUSR1)
        got_usr1 = 1;
    else if (sig == SIGHUP)
        got_hup = 1;
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

void mrb_bridge_warn_too_large(mrb_bridge *b, const char *side,
                               const char *name, size_t len, size_t plen)
{
    uint64_t sup;
    char esc[MRB_LOG_ESCAPE_MAX];
    b->c.dropped_too_large++;
    if (mrb_ratelimit_allow(&b->rl_large, mrb_now_ms(), &sup))
        mrb_warn("dropped message from %s '%s': too large (%zu bytes, "
                 "limits.max_payload is %ld); dropped_too_large=%llu "
                 "(%llu similar not logged)", side,
                 mrb_log_escape(name, len, esc, sizeof(esc)), plen,
                 b->cfg->max_payload, (unsigned long long)b->c.dropped_too_large,
                 (unsigned long long)sup);
}

void mrb_warn_unmappable(mrb_ratelimit *rl, uint64_t count, const char *side,
                         const char *name, size_t len, mrb_logbuf *lb)
{
    uint64_t sup;
    char esc[MRB_LOG_ESCAPE_MAX];
    if (!mrb_ratelimit_allow(rl, mrb_now_ms(), &sup))
        return;
#define UNMAPPABLE_FMT "dropped message from %s '%s': unmappable (it matches a " \
                       "route on this side, but the name it maps to is not "    \
                       "valid or not matched on the other side); "              \
                       "dropped_unmappable=%llu (%llu similar not logged)"
    if (lb)
        mrb_logbuf_add(lb, MRB_LOG_WARNING, UNMAPPABLE_FMT, side,
                       mrb_log_escape(name, len, esc, sizeof(esc)),
                       (unsigned long long)count, (unsigned long long)sup);
    else
        mrb_warn(UNMAPPABLE_FMT, side, mrb_log_escape(name, len, esc, sizeof(esc)),
                 (unsigned long long)count, (unsigned long long)sup);
#undef UNMAPPABLE_FMT
}

void mrb_bridge_warn_unmappable(mrb_bridge *b, const char *side,
                                const char *name, size_t len)
{
    b->c.dropped_unmappable++;
    mrb_warn_unmappable(&b->rl_unmappable, b->c.dropped_unmappable, side, name, len,
                        NULL);
}

int mrb_bridge_unwrap(mrb_bridge *b, const char *side, const char *name,
                      size_t len, const char *p, size_t plen, char **out,
                      size_t *outn)
{
    char why[160];
    mrb_err err = mrb_envelope_unwrap(p, plen, out, outn, why, sizeof(why));
    if (err == MRB_OK)
        return 1;
    uint64_t sup;
    char esc[MRB_LOG_ESCAPE_MAX];
    b->c.dropped_malformed++;
    if (mrb_ratelimit_allow(&b->rl_malformed, mrb_now_ms(), &sup))
        mrb_warn("dropped message from %s '%s' on an unwrap route: %s; "
                 "dropped_malformed=%llu (%llu similar not logged)", side,
                 mrb_log_escape(name, len, esc, sizeof(esc)),
                 err == MRB_ERR_NOMEM ? "out of memory" : why,
                 (unsigned long long)b->c.dropped_malformed,
                 (unsigned long long)sup);
    return 0;
}

/* ---- the loop ---- */

static void check_ready(mrb_bridge *b)
{
    if (b->ready || b->stopping || !mrb_mqtt_ready(b) || !mrb_redis_pub_ready(b) ||
        !atomic_load(&b->ing.up) ||
        !mrb_redis_sub_ready(b) || (mrb_stream_needed(b) && !b->scanned_once))
        return;
    b->ready = 1;
    mrb_info("ready: MQTT %s (MQTT %s) and Redis %s connected; %zu MQTT "
             "subscription(s), %zu Redis subscription(s), %zu stream key(s), "
             "%zu route(s)",
             b->mqtt_url, b->mqtt.version == MQTTVERSION_5 ? "5" : "3.1.1",
             b->redis_url, b->routes.n_mqtt_sub, b->routes.n_redis_sub,
             b->n_skeys, b->routes.n);
}

/* After a reload: say once when all its subscriptions are in place. */
static void check_reload_done(mrb_bridge *b)
{
    if (!b->reload_wait || b->stopping || !mrb_mqtt_ready(b) ||
        !mrb_redis_sub_in_place(b) ||
        (mrb_stream_needed(b) && (!b->scanned_once || b->scan_busy || b->rescan ||
                                  b->scan_from_now)))
        return;
    b->reload_wait = 0;
    mrb_info("reload: subscriptions in place (%zu MQTT, %zu Redis, %zu stream "
             "key(s))", b->routes.n_mqtt_sub, b->routes.n_redis_sub, b->n_skeys);
}

static int drained(mrb_bridge *b)
{
    pthread_mutex_lock(&b->in_lock);
    size_t busy = b->ing.busy;
    pthread_mutex_unlock(&b->in_lock);
    return busy == 0 && b->out_q.count == 0 && atomic_load(&b->mqtt.inflight) == 0 &&
           mrb_stream_drained(b) && mrb_replay_drained(b);
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
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

/* Free a queue's messages; QoS 0 ones are returned as lost, QoS > 0 ones
 * added to *kept (unacknowledged: the broker still has them). */
static size_t clear_counting(mrb_queue *q, size_t *kept)
{
    size_t lost = 0;
    mrb_msg *m;
    while ((m = mrb_queue_pop(q)) != NULL) {
        if (m->qos > 0)
            (*kept)++;
        else
            lost++;
        free(m);
    }
    return lost;
}

void mrb_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* The summaries of main's warning bursts that ended (log.h); returns when
 * the next is due. */
static int64_t flush_warnings(mrb_bridge *b, int64_t now)
{
    int64_t next = INT64_MAX;
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->rl_large, now, NULL, "dropped messages from Redis: too large",
        "dropped_too_large", b->c.dropped_too_large));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->rl_unmappable, now, NULL, "dropped messages from Redis: unmappable",
        "dropped_unmappable", b->c.dropped_unmappable));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->rl_malformed, now, NULL, "dropped malformed messages from Redis",
        "dropped_malformed", b->c.dropped_malformed));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->rl_full, now, NULL, "dropped oldest messages waiting for MQTT: queue full",
        "dropped_queue_full", b->c.dropped_queue_full));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->rl_send, now, NULL, "dropped messages to MQTT: refused by the MQTT library",
        "dropped_send_failed", b->c.dropped_send_failed));
    next = mrb_min_ms(next, mrb_limits_flush(b, 0, now, NULL));
    return mrb_min_ms(next, mrb_replay_flush_warnings(b, now));
}

/* Returns 0 after a clean stop, 1 after a fatal error (logged). */
static int run_loop(mrb_bridge *b)
{
    int64_t deadline = 0, busy_ms = 0, warn_at, echo_at;
    int trim_due = 0;
    for (;;) {
        int64_t now = mrb_now_ms();
        /* (every turn: cheap, and new uncertain copies may be due earlier
         * than the last answer said) */
        echo_at = mrb_echo_tick(b->echo, now);
        /* expired copies make room the ingest thread may wait for */
        if (atomic_load(&b->ing.echo_wait) && mrb_echo_redis_has_room(b->echo))
            mrb_ingest_kick_unlocked(b);
        if (got_usr1) {
            got_usr1 = 0;
            mrb_stats_log(b);
        }
        if (got_hup) {
            got_hup = 0;
            if (!b->stopping)
                mrb_reload(b);
        }
        if (got_stop && !b->stopping) {
            pthread_mutex_lock(&b->in_lock);
            size_t inq = b->ing.busy;
            pthread_mutex_unlock(&b->in_lock);
            mrb_info("shutdown: no longer taking messages; flushing %zu to Redis "
                     "and %zu to MQTT (at most %ld ms)", inq, b->out_q.count,
                     b->cfg->shutdown_timeout_ms);
            b->stopping = 1;
            deadline = now + b->cfg->shutdown_timeout_ms;
            /* the MQTT subscriptions stay: the session keeps collecting
             * for our return; the message callback takes no more */
            atomic_store(&b->intake_stopped, 1);
            mrb_redis_close_sub(b);
            mrb_stream_on_reader_down(b);
        }
        mrb_mqtt_tick(b, now);
        mrb_redis_tick(b, now);
        mrb_stream_tick(b, now);
        mrb_pump_out(b);
        mrb_stream_pump(b);
        mrb_replay_pump(b);
        check_ready(b);
        check_reload_done(b);
        mrb_stats_tick(b, now);
        if (b->fatal)
            return 1;
        if (b->stopping && (drained(b) || now >= deadline)) {
            /* the last report says "stopped"; wait (bounded) for Redis to
             * take it */
            if (!b->stats_final && now < deadline) {
                b->stats_final = 1;
                mrb_stats_stopped(b);
            }
            if (b->stats_pending == 0 || now >= deadline ||
                b->rpub.state != CONN_UP)
                return 0;
        }
        if (b->stopping && atomic_load(&b->mqtt.inflight) > 0) {
            /* have the last completions wake us, not the poll timeout */
            atomic_store(&b->mqtt.window_waiting, 1);
            if (atomic_load(&b->mqtt.inflight) == 0)
                continue;
        }

        struct pollfd pfd[4];
        mrb_rconn *owner[3];
        pfd[0].fd = b->wake_fd[0];
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        int n = 1 + mrb_redis_pollfds(b, pfd + 1, owner);
        int64_t next = mrb_mqtt_next_timer(b);
        int64_t rt = mrb_redis_next_timer(b);
        if (rt < next)
            next = rt;
        rt = mrb_stream_next_timer(b);
        if (rt < next)
            next = rt;
        if (b->out_rate_wait_ms && b->out_rate_wait_ms < next)
            next = b->out_rate_wait_ms;
        if (b->sx_rate_wait_ms && b->sx_rate_wait_ms < next)
            next = b->sx_rate_wait_ms;
        rt = mrb_stats_next_timer(b);
        if (rt < next)
            next = rt;
        /* (again: what the pumps and handlers swallowed since) */
        warn_at = flush_warnings(b, now);
        if (warn_at < next)
            next = warn_at;
        if (echo_at < next)
            next = echo_at;
        if (b->stopping && deadline < next)
            next = deadline;
        if (trim_due && now - busy_ms >= MRB_TRIM_IDLE_MS) {
            trim_due = 0;
            mrb_trim();
        } else if (trim_due && busy_ms + MRB_TRIM_IDLE_MS < next) {
            next = busy_ms + MRB_TRIM_IDLE_MS;
        }
        /* asleep until there is work or a timer is due (the cap is only a
         * safety net: every hand-over writes to the wake pipe) */
        int64_t wait = next == INT64_MAX ? MRB_IDLE_CAP_MS : next - now;
        if (wait < 0)
            wait = 0;
        if (wait > MRB_IDLE_CAP_MS)
            wait = MRB_IDLE_CAP_MS;
        int ready = poll(pfd, (nfds_t)n, (int)wait);
        if (ready < 0 && errno != EINTR) {
            mrb_error("poll: %s", strerror(errno));
            return 1;
        }
        if (ready > 0) {
            busy_ms = mrb_now_ms();
            trim_due = 1;
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

int mrb_bridge_run(const mrb_config *cfg, mrb_reload_fn reload_fn, void *reload_ctx)
{
    mrb_bridge *b = calloc(1, sizeof(*b));
    int status = 1, have_lock = 0, have_mqtt = 0;
    if (!b) {
        mrb_error("out of memory");
        return 1;
    }
    b->cfg = cfg;
    b->reload = reload_fn;
    b->reload_ctx = reload_ctx;
    b->wake_fd[0] = b->wake_fd[1] = -1;
    mrb_url_format_redacted(&cfg->mqtt, MRB_URL_MQTT, b->mqtt_url, sizeof(b->mqtt_url));
    mrb_url_format_redacted(&cfg->redis, MRB_URL_REDIS, b->redis_url,
                            sizeof(b->redis_url));
    b->started_unix = (int64_t)time(NULL);
    b->started_ms = mrb_now_ms();
    b->next_stats_ms = b->started_ms + cfg->stats_interval * 1000;
    if (mrb_routes_build(&b->routes, cfg->routes, cfg->n_routes) != MRB_OK ||
        mrb_stats_table_alloc(&b->st, &b->routes) != MRB_OK ||
        !(b->echo = mrb_echo_new((size_t)cfg->queue_messages))) {
        mrb_error("out of memory");
        goto out;
    }
    mrb_err lerr;
    b->limits = mrb_limits_alloc(&b->routes, mrb_now_ms(), &lerr);
    if (lerr != MRB_OK) {
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
    pthread_condattr_t ca; /* in_cond waits use CLOCK_MONOTONIC (mqtt.c) */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int cond_rc = pthread_cond_init(&b->in_cond, &ca);
    pthread_condattr_destroy(&ca);
    if (cond_rc != 0 ||
        pthread_mutex_init(&b->sx_lock, NULL) != 0 ||
        pthread_mutex_init(&b->routes_lock, NULL) != 0) {
        pthread_mutex_destroy(&b->in_lock);
        goto out;
    }
    have_lock = 1;
    atomic_init(&b->intake_stopped, 0);
    atomic_init(&b->in_waiting, 0);
    atomic_init(&b->in_wait_since_ms, 0);
    atomic_init(&b->paho_calls, 0);
    atomic_init(&b->main_in_paho, 0);
    atomic_init(&b->paho_skipped, 0);
    b->limits_due_ms[0] = b->limits_due_ms[1] = INT64_MAX;
    atomic_init(&b->mqtt_echo_wait, 0);
    atomic_init(&b->ing.echo_wait, 0);
    mrb_queue_init(&b->in_q, (size_t)cfg->queue_messages, (size_t)cfg->queue_bytes);
    mrb_queue_init(&b->out_q, (size_t)cfg->queue_messages, (size_t)cfg->queue_bytes);
    if (mrb_stream_init(b) != MRB_OK || mrb_replay_init(b) != MRB_OK) {
        mrb_error("out of memory");
        goto out;
    }
    signal_fd = b->wake_fd[1];
    install_signals();
    mrb_redis_init(b);
    if (mrb_ingest_start(b) != MRB_OK) {
        mrb_error("cannot start the ingest thread");
        goto out;
    }
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
    atomic_store(&b->intake_stopped, 1);
    /* No more sends to Redis. A message callback still waiting for its
     * message (Redis down, or the timeout) must not let Paho send the
     * PUBACK: close the broker connection under Paho first. */
    mrb_ingest_stop(b);
    pthread_mutex_lock(&b->in_lock);
    int waiting = b->in_waiting;
    pthread_mutex_unlock(&b->in_lock);
    if (waiting && !mrb_mqtt_kill_socket(b, 1))
        mrb_warn("shutdown: cannot close the broker connection before "
                 "releasing a waiting QoS 1 message: it may be acknowledged "
                 "without having reached Redis");
    mrb_mqtt_release_waiter(b);
    mrb_mqtt_shutdown(b, 2000);

out:
    mrb_ingest_stop(b); /* (again: a no-op after a clean stop) */
    if (!have_mqtt) { /* mrb_mqtt_init failed part way: no Paho thread ran */
        free(b->mqtt.slot);
        b->mqtt.slot = NULL;
    }
    if (have_mqtt) {
        mrb_replay_closing(b);
        mrb_redis_destroy(b);
        /* after this no Paho thread runs: what is left is counted below,
         * including publishes Paho failed while being destroyed */
        mrb_mqtt_destroy(b);
        size_t kept = 0, lost = 0;
        mrb_ingest_clear(b, &lost, &kept);
        lost += clear_counting(&b->in_q, &kept) + mrb_queue_clear(&b->out_q);
        b->c.dropped_shutdown += lost;
        if (lost)
            mrb_warn("shutdown: %zu queued message(s) could not be delivered "
                     "in time and were dropped", lost);
        if (kept)
            mrb_info("shutdown: %zu QoS 1 message(s) not yet in Redis stay "
                     "unacknowledged with the broker, which sends them again",
                     kept);
        size_t replay_lost = mrb_replay_clear(b);
        if (replay_lost)
            mrb_warn("shutdown: %zu replay request(s) or answer(s) could not be "
                     "sent in time and were dropped (counted in replay_dropped)",
                     replay_lost);
        mrb_stats_log(b);
    }
    signal_fd = -1;
    if (have_lock) {
        mrb_queue_clear(&b->in_q);
        pthread_mutex_destroy(&b->in_lock);
        pthread_cond_destroy(&b->in_cond);
        pthread_mutex_destroy(&b->sx_lock);
        pthread_mutex_destroy(&b->routes_lock);
    }
    mrb_stream_free(b);
    mrb_mqtt_free_pending(b);
    mrb_replay_free(b);
    mrb_queue_clear(&b->out_q);
    mrb_targets_free(&b->tg);
    mrb_echo_free(b->echo);
    mrb_stats_table_free(&b->st);
    mrb_limits_free(b->limits);
    mrb_routes_free(&b->routes);
    if (b->wake_fd[0] >= 0)
        close(b->wake_fd[0]);
    if (b->wake_fd[1] >= 0)
        close(b->wake_fd[1]);
    free(b);
    mrb_info("shutdown complete%s", status ? " after a fatal error" : "");
    return status;
}
