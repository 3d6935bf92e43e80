/*
 * ingest.c - MQTT -> Redis: the ingest thread and its own blocking hiredis
 * connection.
 *
 * Why a thread of its own: Paho sends a QoS 1 message's PUBACK when the
 * message callback returns, and it holds its global lock while the callback
 * runs, so no other thread can call Paho meanwhile (measured with 1.3.12).
 * For "acknowledged only once Redis has it" the callback must wait, and what
 * it waits for must not need Paho: that is this thread. It never calls Paho;
 * the main thread, which does, never waits for it.
 *
 * Flow: Paho's receive thread pushes each message into in_q (bounded, drop
 * oldest: only QoS 0 messages can be dropped, since a QoS > 0 one is the
 * newest until it is done) and, for QoS > 0, waits on in_cond until
 * in_acked_seq reaches it. This thread pops in_q in order, maps each message
 * through the routes and appends PUBLISH or XADD commands (pipelined, at most
 * MRB_REDIS_WINDOW messages / MRB_REDIS_WINDOW_BYTES unanswered); messages
 * wait in `unacked`, in order, until all their replies are in. When the
 * connection fails or a reply is overdue (redis.keepalive), every unanswered
 * message is sent again, in order, after the reconnect: at least once, and
 * in order as first seen by a reader.
 *
 * Route options, per target (the routes of one message may differ): a
 * store route (presence) also pipelines HSET hash field payload, or HDEL
 * for an empty payload, before the PUBLISH/XADD, counted with the other
 * replies; a retained message (a stored one, sent because we subscribed)
 * updates the hash only. An envelope route sends the wrapped payload
 * (mrb/envelope.h). A rate-limited route drops new QoS 0 messages over its
 * limit (the target's bit in m->skip, so a re-send skips it too) and holds
 * a QoS > 0 one (g->held) until its tokens are there.
 *
 * Ownership: ing (but for the [in_lock] fields of the bridge) belongs to
 * this thread; its counters are atomics read by the stats line.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "bridge_int.h"
#include "mrb/envelope.h"

#define BATCH 64
#define SKIP_BITS 64 /* targets past this many are never rate-limited */

static int64_t io_timeout_ms(const mrb_bridge *b)
{
    return b->cfg->redis_keepalive > 0 ? b->cfg->redis_keepalive * 1000 : 0;
}

/* ---- finishing messages ---- */

/* m is finished with: Redis accepted it, or it was dropped (counted). Paho's
 * receive thread may be waiting for exactly this (a QoS > 0 message). */
static void finish(mrb_bridge *b, mrb_msg *m)
{
    pthread_mutex_lock(&b->in_lock);
    b->ing.busy--;
    if (m->qos > 0) {
        if (m->seq > b->in_acked_seq)
            b->in_acked_seq = m->seq;
        pthread_cond_broadcast(&b->in_cond);
    }
    pthread_mutex_unlock(&b->in_lock);
    free(m);
}

/* ---- per-route stats of the replies ---- */

/* The route of each command sent, in order: replies come in that order.
 * If it cannot grow, attribution stops until the next connection (whose
 * commands are all sent again) rather than going out of step. */
static void cmd_push(mrb_ingest *g, unsigned route)
{
    if (g->cmd_n == SIZE_MAX)
        return; /* off for this connection */
    if (g->cmd_n == g->cmd_cap) {
        size_t cap = g->cmd_cap ? 2 * g->cmd_cap : 1024;
        unsigned *v = malloc(cap * sizeof(*v));
        if (!v) {
            g->cmd_n = SIZE_MAX;
            return;
        }
        for (size_t i = 0; i < g->cmd_n; i++)
            v[i] = g->cmd_route[(g->cmd_head + i) % g->cmd_cap];
        free(g->cmd_route);
        g->cmd_route = v;
        g->cmd_cap = cap;
        g->cmd_head = 0;
    }
    g->cmd_route[(g->cmd_head + g->cmd_n) % g->cmd_cap] = route;
    g->cmd_n++;
}

static unsigned cmd_pop(mrb_ingest *g)
{
    if (g->cmd_n == 0 || g->cmd_n == SIZE_MAX)
        return MRB_NO_ROUTE;
    unsigned r = g->cmd_route[g->cmd_head];
    g->cmd_head = (g->cmd_head + 1) % g->cmd_cap;
    g->cmd_n--;
    return r;
}

static void warn_unmappable(mrb_bridge *b, const mrb_msg *m)
{
    mrb_ingest *g = &b->ing;
    mrb_route_stats *rs = mrb_stats_by_mqtt_sub(
        b, mrb_routes_mqtt_canonical(&b->routes, mrb_msg_name(m), m->name_len));
    if (rs)
        mrb_stats_count(&rs->m2r.dropped_unmappable, 1);
    uint64_t n = atomic_fetch_add(&g->dropped_unmappable, 1) + 1;
    mrb_warn_unmappable(&g->rl_unmappable, n, "MQTT topic", mrb_msg_name(m),
                        m->name_len);
}

/* ---- the connection ---- */

/* The socket of the context being set up or used, for mrb_ingest_stop() to
 * shut down so that a blocking handshake returns at once. fd_lock keeps it
 * from being closed (and its number reused) meanwhile. */
static void set_io_fd(mrb_ingest *g, int fd)
{
    pthread_mutex_lock(&g->fd_lock);
    g->io_fd = fd;
    pthread_mutex_unlock(&g->fd_lock);
}

static void free_context(mrb_ingest *g, redisContext *c)
{
    set_io_fd(g, -1);
    redisFree(c);
}

static void conn_lost(mrb_bridge *b, const char *why)
{
    mrb_ingest *g = &b->ing;
    if (g->c) {
        free_context(g, g->c);
        g->c = NULL;
    }
    atomic_store(&g->up, 0);
    g->cmd_n = 0; /* in step again: every command goes again */
    g->cmd_head = 0;
    g->unsent = g->unacked.head; /* all of them go again */
    g->outstanding = 0;
    g->outstanding_bytes = 0;
    for (mrb_msg *m = g->unacked.head; m; m = m->next)
        m->pending = 0;
    int64_t now = mrb_now_ms();
    g->next_attempt_ms = now + mrb_backoff_next(&g->backoff);
    /* the main thread's connections log the outage itself (once); this
     * one only says what it will send again */
    if (!g->outage_logged) {
        mrb_debug("redis ingest: %s; %zu message(s) to send again", why,
                  g->unacked.count);
        g->outage_logged = 1;
        g->down_since_ms = now;
    }
}

static int try_connect(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    const mrb_url *u = &b->cfg->redis;
    int64_t cto = mrb_redis_connect_timeout_ms(b);
    struct timeval tv = {(time_t)(cto / 1000), (suseconds_t)(cto % 1000) * 1000};
    redisContext *c = u->path ? redisConnectUnixWithTimeout(u->path, tv)
                              : redisConnectWithTimeout(u->host, u->port, tv);
    char why[240];
    int refused = 0;
    if (c && !c->err)
        set_io_fd(g, c->fd);
    if (!c || c->err) {
        snprintf(why, sizeof(why), "cannot connect: %s", c ? c->errstr : "out of memory");
        goto fail;
    }
    /* the handshake within the connect timeout, then the stall timeout */
    redisSetTimeout(c, tv);
    if (!u->path)
        redisEnableKeepAlive(c);
    redisReply *r = NULL;
    if (u->password)
        r = u->user ? redisCommand(c, "AUTH %s %s", u->user, u->password)
                    : redisCommand(c, "AUTH %s", u->password);
    if (u->password && (!r || r->type == REDIS_REPLY_ERROR)) {
        snprintf(why, sizeof(why), "AUTH refused: %s", r ? r->str : c->errstr);
        goto fail_reply;
    }
    freeReplyObject(r);
    r = NULL;
    if (u->db) {
        r = redisCommand(c, "SELECT %d", u->db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, sizeof(why), "SELECT refused: %s", r ? r->str : c->errstr);
            goto fail_reply;
        }
        freeReplyObject(r);
    }
    r = redisCommand(c, "CLIENT SETNAME mrb:%s:ingest", b->cfg->id);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof(why), "CLIENT SETNAME: %s", r ? r->str : c->errstr);
        goto fail_reply;
    }
    freeReplyObject(r);
    r = redisCommand(c, "PING");
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof(why), "PING: %s", r ? r->str : c->errstr);
        goto fail_reply;
    }
    freeReplyObject(r);
    /* from here on every wait is a poll() in slices (wait_fd) */
    redisSetTimeout(c, (struct timeval){0, 0});
    g->c = c;
    atomic_store(&g->up, 1);
    atomic_fetch_add(&g->connects, 1);
    mrb_backoff_reset(&g->backoff);
    if (g->outage_logged) {
        if (g->unacked.count)
            mrb_info("redis: sending %zu message(s) from MQTT again that were "
                     "not confirmed before the connection was lost (duplicates "
                     "are possible, losses are not)", g->unacked.count);
        g->outage_logged = 0;
    }
    mrb_bridge_wake(b); /* "ready" may be due */
    return 1;
fail_reply:
    /* a refusal does not fix itself: the main thread's connections log it;
     * try again only every reconnect.max_ms */
    refused = r && r->type == REDIS_REPLY_ERROR && mrb_redis_is_refusal(r->str);
    freeReplyObject(r);
fail:
    if (c)
        free_context(g, c);
    conn_lost(b, why);
    if (refused && g->next_attempt_ms < mrb_now_ms() + b->cfg->reconnect_max_ms)
        g->next_attempt_ms = mrb_now_ms() + b->cfg->reconnect_max_ms;
    return 0;
}

/* ---- sending ---- */

/* Milliseconds since the epoch when m arrived (its arrival is noted on
 * the monotonic clock). */
static int64_t arrival_wall_ms(const mrb_msg *m)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return wall - (mrb_now_ms() - m->arrived_ms);
}

static void warn_envelope_too_large(mrb_bridge *b, const mrb_msg *m, size_t n)
{
    mrb_ingest *g = &b->ing;
    uint64_t sup, c = atomic_fetch_add(&g->dropped_too_large, 1) + 1;
    char esc[MRB_LOG_ESCAPE_MAX];
    if (mrb_ratelimit_allow(&g->rl_large, mrb_now_ms(), &sup))
        mrb_warn("dropped message from MQTT topic '%s' on an envelope route: "
                 "its envelope is too large (%zu bytes wrapped, %zu raw; "
                 "limits.max_payload is %ld); dropped_too_large=%llu (%llu "
                 "similar not logged)",
                 mrb_log_escape(mrb_msg_name(m), m->name_len, esc, sizeof(esc)),
                 n, m->payload_len, b->cfg->max_payload, (unsigned long long)c,
                 (unsigned long long)sup);
}

/* Append the HSET/HDEL of a store route. */
static int append_store(mrb_bridge *b, const mrb_route *r, const mrb_msg *m,
                        const char *payload, size_t plen, int fresh)
{
    char field[MRB_TOPIC_MAX];
    size_t flen;
    if (mrb_route_hash_field(r, mrb_msg_name(m), m->name_len, field, sizeof(field),
                             &flen) != MRB_OK)
        return 0;
    if (m->payload_len == 0) { /* a retained status cleared: gone */
        const char *argv[] = {"HDEL", r->hash, field};
        size_t lens[] = {4, strlen(r->hash), flen};
        redisAppendCommandArgv(b->ing.c, 3, argv, lens);
    } else {
        const char *argv[] = {"HSET", r->hash, field, payload};
        size_t lens[] = {4, strlen(r->hash), flen, plen};
        redisAppendCommandArgv(b->ing.c, 4, argv, lens);
    }
    if (fresh)
        atomic_fetch_add(&b->ing.hash_updates, 1);
    return 1;
}

/* Append m's commands (fresh: sent for the first time, so counted in). 0
 * if it has nothing to send (finished here). Holds routes_lock
 * (bridge_int.h). */
static int append_locked(mrb_bridge *b, mrb_msg *m, int fresh);

static int append(mrb_bridge *b, mrb_msg *m, int fresh)
{
    pthread_mutex_lock(&b->routes_lock);
    int r = append_locked(b, m, fresh);
    pthread_mutex_unlock(&b->routes_lock);
    return r;
}

static int append_locked(mrb_bridge *b, mrb_msg *m, int fresh)
{
    mrb_ingest *g = &b->ing;
    mrb_targets *tg = &g->tg;
    if (mrb_routes_map_mqtt(&b->routes, mrb_msg_name(m), m->name_len, tg) != MRB_OK ||
        tg->n == 0) {
        if (fresh)
            warn_unmappable(b, m);
        return 0;
    }
    int64_t now = mrb_now_ms();
    m->pending = 0;
    for (size_t i = 0; i < tg->n; i++) {
        unsigned ri = (unsigned)tg->v[i].route;
        const mrb_route *r = &b->routes.route[ri];
        const char *name = tg->buf + tg->v[i].off;
        size_t nlen = tg->v[i].len;
        const char *payload = mrb_msg_payload(m);
        size_t plen = m->payload_len;
        char *env = NULL;
        if (i < SKIP_BITS && (m->skip >> i & 1) && m->gen == b->routes_gen)
            continue; /* over the route's rate (counted in admit; after a
                         reload the positions are stale: sent) */
        /* a stored retained message is state: only a hash keeps it (and
         * it is not counted as a message of the route) */
        if (m->retain && r->store == MRB_STORE_NONE)
            continue;
        if (fresh && !m->retain) {
            mrb_stats_count(&b->st.r[ri].m2r.in, 1);
            mrb_stats_count(&b->st.r[ri].m2r.bytes_in, m->payload_len);
        }
        if (r->envelope == MRB_ENVELOPE_JSON) {
            if (mrb_envelope_wrap(mrb_msg_name(m), payload, plen, m->qos, m->retain,
                                  arrival_wall_ms(m), b->cfg->id, &env,
                                  &plen) != MRB_OK) {
                if (fresh && !m->retain) {
                    atomic_fetch_add(&g->dropped_send_failed, 1);
                    mrb_stats_count(&b->st.r[ri].m2r.dropped_send_failed, 1);
                }
                continue;
            }
            if ((long)plen > b->cfg->max_payload) {
                if (fresh) {
                    if (!m->retain)
                        mrb_stats_count(&b->st.r[ri].m2r.dropped_too_large, 1);
                    warn_envelope_too_large(b, m, plen);
                }
                free(env);
                continue;
            }
            payload = env;
        }
        /* the hash first: whoever reacts to the PUBLISH reads the new value */
        if (r->store == MRB_STORE_HASH && append_store(b, r, m, payload, plen, fresh)) {
            /* its reply is not the route's message: no per-route count */
            cmd_push(g, MRB_NO_ROUTE);
            m->pending++;
        }
        if (m->retain) {
            free(env);
            continue;
        }
        cmd_push(g, ri);
        if (r->mode == MRB_MODE_STREAM) {
            char maxlen[24];
            snprintf(maxlen, sizeof(maxlen), "%ld", r->maxlen);
            const char *argv[] = {"XADD", name, "MAXLEN", "~", maxlen, "*",
                                  "payload", payload, "origin", b->cfg->id};
            size_t lens[] = {4, nlen, 6, 1, strlen(maxlen), 1, 7, plen,
                             6, strlen(b->cfg->id)};
            redisAppendCommandArgv(g->c, 10, argv, lens);
        } else {
            const char *argv[] = {"PUBLISH", name, payload};
            size_t lens[] = {7, nlen, plen};
            redisAppendCommandArgv(g->c, 3, argv, lens);
            /* our copy will come back where we subscribe: note it */
            if (atomic_load(&b->sub_alive) &&
                mrb_routes_redis_canonical(&b->routes, name, nlen) != MRB_NO_SUB) {
                pthread_mutex_lock(&b->echo_lock);
                mrb_seen_add(&b->redis_echo, mrb_seen_key(name, nlen, payload, plen),
                             now);
                pthread_mutex_unlock(&b->echo_lock);
            }
        }
        free(env);
        m->pending++;
    }
    if (m->pending == 0)
        return 0;
    g->outstanding++;
    g->outstanding_bytes += m->name_len + m->payload_len;
    return 1;
}

/* The rate limits of m's routes, before m is first sent: a QoS 0 message
 * over a route's limit is not sent there (counted); a QoS > 0 one waits
 * until every limited route has a token. Returns the ms to wait (0: go).
 * Retained messages (hash state) are not limited. */
static int64_t admit_locked(mrb_bridge *b, mrb_msg *m);

/* Admit and, if it may go, append m under one hold of routes_lock (the
 * table and its buckets may be swapped by a reload: the skip positions
 * admit sets are those append uses). Returns the ms to wait (m not
 * appended), else 0 with *appended as append's result. */
static int64_t admit_append(mrb_bridge *b, mrb_msg *m, int *appended)
{
    pthread_mutex_lock(&b->routes_lock);
    int64_t w = admit_locked(b, m);
    if (w <= 0)
        *appended = append_locked(b, m, 1);
    pthread_mutex_unlock(&b->routes_lock);
    return w;
}

static int64_t admit_locked(mrb_bridge *b, mrb_msg *m)
{
    mrb_ingest *g = &b->ing;
    mrb_targets *tg = &g->tg;
    if (!b->limits || m->retain ||
        mrb_routes_map_mqtt(&b->routes, mrb_msg_name(m), m->name_len, tg) != MRB_OK)
        return 0;
    int64_t now = mrb_now_ms(), wait = 0;
    if (m->qos > 0) {
        for (size_t i = 0; i < tg->n; i++) {
            int64_t w = mrb_bucket_wait_ms(&b->limits[tg->v[i].route].to_redis, now);
            if (w > wait)
                wait = w;
        }
        if (wait > 0)
            return wait;
        for (size_t i = 0; i < tg->n; i++)
            mrb_bucket_take(&b->limits[tg->v[i].route].to_redis, now);
        return 0;
    }
    m->gen = b->routes_gen;
    for (size_t i = 0; i < tg->n && i < SKIP_BITS; i++) {
        size_t ri = tg->v[i].route;
        if (!mrb_bucket_take(&b->limits[ri].to_redis, now)) {
            m->skip |= (uint64_t)1 << i;
            mrb_limits_dropped_one(b, ri, 1, &b->limits[ri].rl_redis, "MQTT topic",
                                   mrb_msg_name(m), m->name_len);
        }
    }
    return 0;
}

static int window_full(const mrb_ingest *g)
{
    return g->outstanding >= MRB_REDIS_WINDOW ||
           g->outstanding_bytes >= MRB_REDIS_WINDOW_BYTES;
}

/* Send what was not sent on this connection yet, then new messages. */
static void send_some(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    for (; g->unsent && !window_full(g); g->unsent = g->unsent->next) {
        if (append(b, g->unsent, 0))
            atomic_fetch_add(&g->resent, 1);
    }
    if (g->unsent)
        return;
    mrb_msg *batch[BATCH];
    size_t n = 0;
    if (g->held) {
        if (mrb_now_ms() < g->held_until_ms)
            return; /* in order: nothing passes it */
        batch[n++] = g->held;
        g->held = NULL;
    }
    pthread_mutex_lock(&b->in_lock);
    while (n < BATCH && n + g->outstanding < MRB_REDIS_WINDOW &&
           (batch[n] = mrb_queue_pop(&b->in_q)) != NULL)
        n++;
    pthread_mutex_unlock(&b->in_lock);
    for (size_t i = 0; i < n; i++) {
        mrb_msg *m = batch[i];
        /* MQTT 3.1.1 has no No Local: our own publishes come back; judged
         * at arrival time, however long the message waited */
        if (b->mqtt.version != MQTTVERSION_5) {
            pthread_mutex_lock(&b->echo_lock);
            int echo = mrb_seen_take(&b->mqtt_echo,
                                     mrb_seen_key(mrb_msg_name(m), m->name_len,
                                                  mrb_msg_payload(m), m->payload_len),
                                     m->arrived_ms);
            pthread_mutex_unlock(&b->echo_lock);
            if (echo) {
                atomic_fetch_add(&g->echoes, 1);
                finish(b, m);
                continue;
            }
        }
        int appended = 0;
        int64_t wait = admit_append(b, m, &appended);
        if (wait > 0) {
            /* hold it, and put the rest back in order (there is hardly
             * any: Paho's receive thread waits for this one) */
            g->held = m;
            g->held_until_ms = mrb_now_ms() + wait;
            pthread_mutex_lock(&b->in_lock);
            for (size_t j = n; j-- > i + 1;)
                mrb_queue_push_front(&b->in_q, batch[j]);
            pthread_mutex_unlock(&b->in_lock);
            return;
        }
        if (!appended) {
            finish(b, m);
            continue;
        }
        mrb_queue_push(&g->unacked, m);
    }
}

/* One reply: it belongs to the oldest message with replies pending. */
static void take_reply(mrb_bridge *b, redisReply *r)
{
    mrb_ingest *g = &b->ing;
    mrb_msg *m = g->unacked.head;
    if (!m || m->pending == 0) {
        freeReplyObject(r); /* not ours (cannot happen) */
        return;
    }
    unsigned ri = cmd_pop(g);
    int64_t dt = mrb_now_us() - m->taken_us;
    pthread_mutex_lock(&b->routes_lock); /* a reload may swap b->st */
    mrb_dir_stats *d = ri < b->st.n ? &b->st.r[ri].m2r : NULL;
    if (d && r->type == REDIS_REPLY_ERROR) {
        mrb_stats_count(&d->dropped_send_failed, 1);
    } else if (d) {
        mrb_stats_count(&d->out, 1);
        mrb_stats_count(&d->bytes_out, m->payload_len);
        mrb_lat_add(&d->lat, dt > 0 ? (uint64_t)dt : 0);
    }
    pthread_mutex_unlock(&b->routes_lock);
    if (r->type == REDIS_REPLY_ERROR) {
        /* refused (a key of another type, OOM...): sending again would not
         * help; dropped and counted */
        uint64_t sup, n = atomic_fetch_add(&g->dropped_send_failed, 1) + 1;
        char esc[MRB_LOG_ESCAPE_MAX];
        if (mrb_ratelimit_allow(&g->rl_send, mrb_now_ms(), &sup))
            mrb_warn("redis: refused a message from MQTT topic '%s': %s (%llu "
                     "similar not logged); dropped_send_failed=%llu",
                     mrb_log_escape(mrb_msg_name(m), m->name_len, esc, sizeof(esc)),
                     r->str, (unsigned long long)sup, (unsigned long long)n);
    } else {
        atomic_fetch_add(&g->redis_out, 1);
    }
    freeReplyObject(r);
    if (--m->pending > 0)
        return;
    g->outstanding--;
    g->outstanding_bytes -= m->name_len + m->payload_len;
    finish(b, mrb_queue_pop(&g->unacked));
}

/* Wait until fd is ready for events, in slices so that a stop is seen.
 * 1 ready, 0 overdue (redis.keepalive), -1 stopping, -2 poll error. */
static int wait_fd(mrb_bridge *b, short events)
{
    int64_t ka = io_timeout_ms(b), waited = 0;
    for (;;) {
        if (atomic_load(&b->ing.quit))
            return -1;
        struct pollfd p = {.fd = b->ing.c->fd, .events = events};
        int n = poll(&p, 1, 500);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return -2;
        waited += 500;
        if (ka > 0 && waited >= ka)
            return 0;
    }
}

/* Read replies: all that are there; if block, wait for at least one.
 * 0 fine, -1 connection failed, -2 overdue or stopping. */
static int read_replies(mrb_bridge *b, int block)
{
    mrb_ingest *g = &b->ing;
    void *r;
    int got = 0;
    for (;;) {
        if (redisGetReplyFromReader(g->c, &r) != REDIS_OK)
            return -1;
        if (r) {
            take_reply(b, r);
            got = 1;
            continue;
        }
        if (g->outstanding == 0)
            return 0;
        if (!block || got) {
            struct pollfd p = {.fd = g->c->fd, .events = POLLIN};
            if (poll(&p, 1, 0) <= 0)
                return 0;
        } else {
            int w = wait_fd(b, POLLIN);
            if (w == -2)
                return -1;
            if (w <= 0)
                return -2;
        }
        if (redisBufferRead(g->c) != REDIS_OK)
            return -1;
    }
}

/* Write all that is buffered. 0 fine, -1 failed, -2 overdue or stopping. */
static int flush_writes(mrb_bridge *b)
{
    int done = 0;
    while (!done) {
        int w = wait_fd(b, POLLOUT);
        if (w == -2)
            return -1;
        if (w <= 0)
            return -2;
        if (redisBufferWrite(b->ing.c, &done) != REDIS_OK)
            return -1;
    }
    return 0;
}

static void io_failed(mrb_bridge *b, int rc)
{
    mrb_ingest *g = &b->ing;
    char why[200];
    if (rc == -2 && !atomic_load(&g->quit)) {
        atomic_fetch_add(&g->stalls, 1);
        snprintf(why, sizeof(why), "no reply for %ld s (redis.keepalive): the "
                 "server stopped answering", b->cfg->redis_keepalive);
    } else {
        snprintf(why, sizeof(why), "%s",
                 g->c->errstr[0] ? g->c->errstr : "connection lost");
    }
    conn_lost(b, why);
}

/* ---- the thread ---- */

static void *ingest_main(void *arg)
{
    mrb_bridge *b = arg;
    mrb_ingest *g = &b->ing;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are main's */

    for (;;) {
        pthread_mutex_lock(&b->in_lock);
        for (;;) {
            if (atomic_load(&g->quit)) {
                pthread_mutex_unlock(&b->in_lock);
                return NULL;
            }
            if (g->c && (g->unsent || g->outstanding ||
                         (g->held && mrb_now_ms() >= g->held_until_ms) ||
                         (!g->held && b->in_q.count > 0 && !window_full(g))))
                break;
            /* connect even when idle: "ready" waits for it */
            if (!g->c && mrb_now_ms() >= g->next_attempt_ms)
                break;
            g->idle = 1;
            if (g->c && g->held) {
                /* a rate limit: wake when its token is there (or to quit) */
                int64_t t = g->held_until_ms;
                struct timespec ts = {(time_t)(t / 1000), (long)(t % 1000) * 1000000};
                pthread_cond_timedwait(&g->work, &b->in_lock, &ts);
            } else if (g->c && g->trim_due) {
                /* idle after traffic: give the heap back once quiet */
                int64_t t = mrb_now_ms() + MRB_TRIM_IDLE_MS;
                struct timespec ts = {(time_t)(t / 1000), (long)(t % 1000) * 1000000};
                if (pthread_cond_timedwait(&g->work, &b->in_lock, &ts) == ETIMEDOUT &&
                    b->in_q.count == 0) {
                    g->trim_due = 0;
                    mrb_trim();
                }
            } else if (g->c) {
                pthread_cond_wait(&g->work, &b->in_lock);
            } else {
                int64_t t = g->next_attempt_ms;
                struct timespec ts = {(time_t)(t / 1000), (long)(t % 1000) * 1000000};
                pthread_cond_timedwait(&g->work, &b->in_lock, &ts);
            }
            g->idle = 0;
        }
        pthread_mutex_unlock(&b->in_lock);

        if (!g->c) {
            try_connect(b);
            continue;
        }
        send_some(b);
        g->trim_due = 1;
        int rc = flush_writes(b);
        if (rc != 0) {
            io_failed(b, rc);
            continue;
        }
        /* wait for a reply when there is nothing new to send meanwhile */
        pthread_mutex_lock(&b->in_lock);
        int more = b->in_q.count > 0 && !window_full(g) && !g->held;
        pthread_mutex_unlock(&b->in_lock);
        rc = read_replies(b, !more);
        if (rc != 0)
            io_failed(b, rc);
    }
}

/* The condvar waits use CLOCK_MONOTONIC, like mrb_now_ms(). */
mrb_err mrb_ingest_start(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&g->work, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        return MRB_ERR_NOMEM;
    if (pthread_mutex_init(&g->fd_lock, NULL) != 0) {
        pthread_cond_destroy(&g->work);
        return MRB_ERR_NOMEM;
    }
    g->io_fd = -1;
    mrb_queue_init(&g->unacked, SIZE_MAX, SIZE_MAX); /* bounded by the window */
    mrb_backoff_init(&g->backoff, b->cfg->reconnect_min_ms, b->cfg->reconnect_max_ms,
                     (uint64_t)mrb_now_ms() * 2654435761u + 7u);
    if (pthread_create(&g->thread, NULL, ingest_main, b) != 0) {
        pthread_cond_destroy(&g->work);
        pthread_mutex_destroy(&g->fd_lock);
        return MRB_ERR_NOMEM;
    }
    g->started = 1;
    return MRB_OK;
}

/* Called by Paho's receive thread with in_lock held, after a push. */
void mrb_ingest_kick(mrb_bridge *b)
{
    if (b->ing.idle)
        pthread_cond_signal(&b->ing.work);
}

void mrb_ingest_stop(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    if (!g->started)
        return;
    pthread_mutex_lock(&b->in_lock);
    atomic_store(&g->quit, 1);
    pthread_cond_signal(&g->work);
    pthread_mutex_unlock(&b->in_lock);
    /* a handshake blocked on a silent server returns now; other waits are
     * poll() slices that see quit (a connect() itself still takes up to
     * its timeout) */
    pthread_mutex_lock(&g->fd_lock);
    if (g->io_fd >= 0)
        shutdown(g->io_fd, SHUT_RDWR);
    pthread_mutex_unlock(&g->fd_lock);
    pthread_join(g->thread, NULL);
    pthread_mutex_destroy(&g->fd_lock);
    g->started = 0;
    pthread_cond_destroy(&g->work);
    if (g->c)
        redisFree(g->c);
    g->c = NULL;
    atomic_store(&g->up, 0);
}

/* After mrb_ingest_stop: what is left unanswered; QoS > 0 ones are still
 * the broker's (unacknowledged), QoS 0 ones are lost. */
void mrb_ingest_clear(mrb_bridge *b, size_t *lost, size_t *kept)
{
    mrb_msg *m;
    if (b->ing.held) {
        (*kept)++; /* held ones are QoS > 0 */
        free(b->ing.held);
        b->ing.held = NULL;
    }
    while ((m = mrb_queue_pop(&b->ing.unacked)) != NULL) {
        if (m->qos > 0)
            (*kept)++;
        else
            (*lost)++;
        free(m);
    }
    mrb_targets_free(&b->ing.tg);
    free(b->ing.cmd_route);
    b->ing.cmd_route = NULL;
    b->ing.cmd_cap = b->ing.cmd_n = b->ing.cmd_head = 0;
}
