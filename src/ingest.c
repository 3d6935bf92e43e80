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
 * this thread; its counters are atomics read by the stats line. Nothing is
 * written to the log while a lock is held: lines are formatted into
 * ing.log and written after the unlock.
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
#include "mrb/rerror.h"

#define BATCH 64
#define SKIP_BITS 64 /* targets past this many are never rate-limited and are
                        always sent again in full */
#define FORCE_AFTER_MS 2

enum { CMD_HASH = 1, CMD_PUBLISH, CMD_XADD };
#define MSG_RETRY 1u /* a target was refused for now, or not queued */

/* append(): what became of the message */
enum { APPEND_DONE = 0, APPEND_SENT, APPEND_KEPT, APPEND_ECHO_WAIT };

static int64_t io_timeout_ms(const mrb_bridge *b)
{
    return b->cfg->redis_keepalive > 0 ? b->cfg->redis_keepalive * 1000 : 0;
}

static struct timespec abs_ts(int64_t t)
{
    return (struct timespec){(time_t)(t / 1000), (long)(t % 1000) * 1000000};
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

/* ---- the commands awaiting replies ---- */

/* Replies come in the order of the commands: each command sent is
 * recorded here first. 0 if the record cannot be made (out of memory):
 * then the command must not be sent either. */
static int cmd_push(mrb_ingest *g, const mrb_cmd *c)
{
    if (g->cmd_n == g->cmd_cap) {
        size_t cap = g->cmd_cap ? 2 * g->cmd_cap : 1024;
        mrb_cmd *v = malloc(cap * sizeof(*v));
        if (!v)
            return 0;
        for (size_t i = 0; i < g->cmd_n; i++)
            v[i] = g->cmd[(g->cmd_head + i) % g->cmd_cap];
        free(g->cmd);
        g->cmd = v;
        g->cmd_cap = cap;
        g->cmd_head = 0;
    }
    g->cmd[(g->cmd_head + g->cmd_n) % g->cmd_cap] = *c;
    g->cmd_n++;
    return 1;
}

/* The newest record goes: its command could not be queued after all. */
static void cmd_unpush(mrb_ingest *g)
{
    g->cmd_n--;
}

static int cmd_pop(mrb_ingest *g, mrb_cmd *c)
{
    if (g->cmd_n == 0)
        return 0;
    *c = g->cmd[g->cmd_head];
    g->cmd_head = (g->cmd_head + 1) % g->cmd_cap;
    g->cmd_n--;
    return 1;
}

/* Format a warning into ing.log (written after the locks are released). */
#define defer_warn(g, ...) mrb_logbuf_add(&(g)->log, MRB_LOG_WARNING, __VA_ARGS__)

/* Holds routes_lock. */
static void warn_unmappable_locked(mrb_bridge *b, const mrb_msg *m)
{
    mrb_ingest *g = &b->ing;
    mrb_route_stats *rs = mrb_stats_by_mqtt_sub(
        b, mrb_routes_mqtt_canonical(&b->routes, mrb_msg_name(m), m->name_len));
    if (rs)
        mrb_stats_count(&rs->m2r.dropped_unmappable, 1);
    uint64_t n = atomic_fetch_add(&g->dropped_unmappable, 1) + 1;
    mrb_warn_unmappable(&g->rl_unmappable, n, "MQTT topic", mrb_msg_name(m),
                        m->name_len, &g->log);
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

/* Every message in unacked is to be sent (again) from the first on, on
 * this connection or the next. */
static void rewind_all(mrb_ingest *g)
{
    g->unsent = g->unacked.head;
    g->unsent_prev = NULL;
    g->rcur = g->rprev = NULL;
    g->outstanding = 0;
    g->outstanding_bytes = 0;
    g->kept = 0;
    for (mrb_msg *m = g->unacked.head; m; m = m->next) {
        m->pending = 0;
        m->flags &= ~MSG_RETRY;
    }
}

/* The commands sent and not answered are lost with the connection: a
 * PUBLISH may or may not have been executed, so its echo note is no longer
 * certain; the fence counts them as done (they are noted again when sent
 * again). */
static void forget_commands(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    mrb_cmd c;
    size_t publishes = 0;
    int64_t now = mrb_now_ms();
    while (cmd_pop(g, &c)) {
        if (c.kind != CMD_PUBLISH)
            continue;
        publishes++;
        if (c.note == MRB_ECHO_NOTED)
            mrb_echo_redis_doubt(b->echo, c.key, now);
    }
    if (publishes)
        mrb_echo_redis_answered(b->echo, publishes);
    g->cmd_head = 0;
}

static void conn_lost(mrb_bridge *b, const char *why)
{
    mrb_ingest *g = &b->ing;
    if (g->c) {
        free_context(g, g->c);
        g->c = NULL;
    }
    atomic_store(&g->up, 0);
    forget_commands(b);
    rewind_all(g);
    g->refusing = g->probing = 0; /* a new connection starts afresh */
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

/* Holds routes_lock. */
static void warn_envelope_too_large(mrb_bridge *b, const mrb_msg *m, size_t n)
{
    mrb_ingest *g = &b->ing;
    uint64_t sup, c = atomic_fetch_add(&g->dropped_too_large, 1) + 1;
    char esc[MRB_LOG_ESCAPE_MAX];
    if (mrb_ratelimit_allow(&g->rl_large, mrb_now_ms(), &sup))
        defer_warn(g, "dropped message from MQTT topic '%s' on an envelope route: "
                   "its envelope is too large (%zu bytes wrapped, %zu raw; "
                   "limits.max_payload is %ld); dropped_too_large=%llu (%llu "
                   "similar not logged)",
                   mrb_log_escape(mrb_msg_name(m), m->name_len, esc, sizeof(esc)),
                   n, m->payload_len, b->cfg->max_payload, (unsigned long long)c,
                   (unsigned long long)sup);
}

/* A command could not be queued (hiredis out of memory, or no room for
 * its record): the message is kept and sent again later. */
static void append_failed(mrb_bridge *b, mrb_msg *m)
{
    mrb_ingest *g = &b->ing;
    uint64_t sup, n = atomic_fetch_add(&g->append_failed, 1) + 1;
    char esc[MRB_LOG_ESCAPE_MAX];
    m->flags |= MSG_RETRY;
    if (mrb_ratelimit_allow(&g->rl_append, mrb_now_ms(), &sup))
        defer_warn(g, "redis: cannot queue a command for the message from MQTT "
                   "topic '%s' (out of memory); it stays unacknowledged and is "
                   "sent again; redis_append_failed=%llu (%llu similar not "
                   "logged)",
                   mrb_log_escape(mrb_msg_name(m), m->name_len, esc, sizeof(esc)),
                   (unsigned long long)n, (unsigned long long)sup);
}

/* Queue one command with its record; 1 if queued (m->pending counts it). */
static int send_cmd(mrb_bridge *b, mrb_msg *m, const mrb_cmd *c, int argc,
                    const char **argv, const size_t *lens)
{
    mrb_ingest *g = &b->ing;
    if (!cmd_push(g, c)) {
        append_failed(b, m);
        return 0;
    }
    if (redisAppendCommandArgv(g->c, argc, argv, lens) != REDIS_OK) {
        cmd_unpush(g);
        append_failed(b, m);
        return 0;
    }
    m->pending++;
    return 1;
}

/* Append the HSET/HDEL of a store route. */
static void append_store(mrb_bridge *b, const mrb_route *r, mrb_msg *m,
                         const char *payload, size_t plen, unsigned target,
                         int fresh)
{
    char field[MRB_TOPIC_MAX];
    size_t flen;
    if (mrb_route_hash_field(r, mrb_msg_name(m), m->name_len, field, sizeof(field),
                             &flen) != MRB_OK)
        return;
    /* its reply is not the route's message: no per-route count */
    mrb_cmd c = {0, MRB_NO_ROUTE, target, CMD_HASH, 0};
    int ok;
    if (m->payload_len == 0) { /* a retained status cleared: gone */
        const char *argv[] = {"HDEL", r->hash, field};
        size_t lens[] = {4, strlen(r->hash), flen};
        ok = send_cmd(b, m, &c, 3, argv, lens);
    } else {
        const char *argv[] = {"HSET", r->hash, field, payload};
        size_t lens[] = {4, strlen(r->hash), flen, plen};
        ok = send_cmd(b, m, &c, 4, argv, lens);
    }
    if (ok && fresh)
        atomic_fetch_add(&b->ing.hash_updates, 1);
}

/* Is target i of m (of the current table) still to be sent? The bits are
 * positions in the table m was first sent with. */
static int bit_set(const mrb_bridge *b, const mrb_msg *m, uint64_t bits, size_t i)
{
    return i < SKIP_BITS && m->gen == b->routes_gen && (bits >> i & 1);
}

/* How many notes m's PUBLISHes may add (an upper bound): the room they
 * need in the echo table. Holds routes_lock; b->ing.tg is m's targets. */
static size_t notes_needed(mrb_bridge *b, const mrb_msg *m)
{
    const mrb_targets *tg = &b->ing.tg;
    size_t n = 0;
    if (m->retain)
        return 0;
    for (size_t i = 0; i < tg->n; i++) {
        const mrb_route *r = &b->routes.route[tg->v[i].route];
        if (r->mode == MRB_MODE_PUBSUB && !bit_set(b, m, m->done, i) &&
            !bit_set(b, m, m->skip, i))
            n++;
    }
    return n;
}

/* Append m's commands (fresh: sent for the first time, so counted in;
 * force: without waiting for echo room). APPEND_DONE if it has nothing to
 * send (finished here), APPEND_SENT, APPEND_KEPT (nothing could be queued:
 * to be sent again later), APPEND_ECHO_WAIT (nothing queued: no room in the
 * echo table). Holds routes_lock (bridge_int.h). */
static int append_locked(mrb_bridge *b, mrb_msg *m, int fresh, int force)
{
    mrb_ingest *g = &b->ing;
    mrb_targets *tg = &g->tg;
    if (mrb_routes_map_mqtt(&b->routes, mrb_msg_name(m), m->name_len, tg) != MRB_OK ||
        tg->n == 0) {
        if (fresh)
            warn_unmappable_locked(b, m);
        return APPEND_DONE;
    }
    if (fresh)
        m->gen = b->routes_gen; /* (admit, under this same lock hold, too) */
    if (!force) {
        size_t need = notes_needed(b, m);
        if (need && !mrb_echo_redis_room_for(b->echo, need)) {
            g->echo_need = need;
            return APPEND_ECHO_WAIT;
        }
    }
    m->pending = 0;
    for (size_t i = 0; i < tg->n; i++) {
        unsigned ri = (unsigned)tg->v[i].route;
        unsigned target = (unsigned)i;
        const mrb_route *r = &b->routes.route[ri];
        const char *name = tg->buf + tg->v[i].off;
        size_t nlen = tg->v[i].len;
        const char *payload = mrb_msg_payload(m);
        size_t plen = m->payload_len;
        char *env = NULL;
        if (bit_set(b, m, m->skip, i))
            continue; /* over the route's rate (counted in admit; after a
                         reload the positions are stale: sent) */
        if (bit_set(b, m, m->done, i))
            continue; /* delivered before a refusal or a lost connection */
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
        if (r->store == MRB_STORE_HASH && !bit_set(b, m, m->hdone, i))
            append_store(b, r, m, payload, plen, target, fresh);
        if (m->retain) {
            free(env);
            continue;
        }
        if (r->mode == MRB_MODE_STREAM) {
            char maxlen[24];
            snprintf(maxlen, sizeof(maxlen), "%ld", r->maxlen);
            const char *argv[] = {"XADD", name, "MAXLEN", "~", maxlen, "*",
                                  "payload", payload, "origin", b->cfg->id};
            size_t lens[] = {4, nlen, 6, 1, strlen(maxlen), 1, 7, plen,
                             6, strlen(b->cfg->id)};
            mrb_cmd c = {0, ri, target, CMD_XADD, 0};
            send_cmd(b, m, &c, 10, argv, lens);
        } else {
            const char *argv[] = {"PUBLISH", name, payload};
            size_t lens[] = {7, nlen, plen};
            /* our copy will come back where we subscribe: note it first
             * (the copy may be back before the reply) */
            uint64_t key = mrb_seen_key(name, nlen, payload, plen);
            int subscribed =
                mrb_routes_redis_canonical(&b->routes, name, nlen) != MRB_NO_SUB;
            mrb_echo_note_result note =
                mrb_echo_note_redis(b->echo, key, subscribed, 1);
            mrb_cmd c = {key, ri, target, CMD_PUBLISH, (unsigned char)note};
            if (!send_cmd(b, m, &c, 3, argv, lens)) {
                mrb_echo_unnote_redis(b->echo, key, note);
                mrb_echo_redis_answered(b->echo, 1); /* never sent */
            }
        }
        free(env);
    }
    if (m->pending == 0)
        return m->flags & MSG_RETRY ? APPEND_KEPT : APPEND_DONE;
    g->outstanding++;
    g->outstanding_bytes += m->name_len + m->payload_len;
    return APPEND_SENT;
}

static int append(mrb_bridge *b, mrb_msg *m, int fresh, int force)
{
    pthread_mutex_lock(&b->routes_lock);
    int r = append_locked(b, m, fresh, force);
    pthread_mutex_unlock(&b->routes_lock);
    mrb_logbuf_flush(&b->ing.log);
    return r;
}

/* The rate limits of m's routes, before m is first sent: a QoS 0 message
 * over a route's limit is not sent there (counted); a QoS > 0 one waits
 * until every limited route has a token. Returns the ms to wait (0: go).
 * Retained messages (hash state) are not limited. */
static int64_t admit_locked(mrb_bridge *b, mrb_msg *m);

/* Admit and, if it may go, append m under one hold of routes_lock (the
 * table and its buckets may be swapped by a reload: the skip positions
 * admit sets are those append uses). Returns the ms to wait (m not
 * appended), else 0 with *appended as append's result. A message that
 * waits for echo room was admitted already: it is not admitted again. */
static int64_t admit_append(mrb_bridge *b, mrb_msg *m, int admitted, int force,
                            int *appended)
{
    pthread_mutex_lock(&b->routes_lock);
    int64_t w = admitted ? 0 : admit_locked(b, m);
    if (w <= 0)
        *appended = append_locked(b, m, 1, force);
    pthread_mutex_unlock(&b->routes_lock);
    mrb_logbuf_flush(&b->ing.log);
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
                                   mrb_msg_name(m), m->name_len, &g->log);
        }
    }
    return 0;
}

static int window_full(const mrb_ingest *g)
{
    if (g->probing)
        return g->outstanding >= 1; /* after a refusal: one at a time */
    return g->outstanding >= MRB_REDIS_WINDOW ||
           g->outstanding_bytes >= MRB_REDIS_WINDOW_BYTES;
}

/* The message waits for echo room: say so (main reads the subscriber
 * even when its queue is half full, and does not publish into Paho while
 * a callback waits: see paho_enter in mqtt.c). */
static void echo_wait_begin(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    if (atomic_exchange(&g->echo_wait, 1))
        return;
    atomic_fetch_add(&g->echo_waits, 1);
    g->force_calls = atomic_load(&b->paho_calls);
    g->force_after_ms = 0;
    mrb_bridge_wake(b);
}

static void echo_wait_end(mrb_bridge *b)
{
    if (atomic_exchange(&b->ing.echo_wait, 0))
        mrb_bridge_wake(b); /* main may have skipped publishing */
}

/* Send what was not sent on this connection yet, then new messages. */
static void send_some(mrb_bridge *b)
{
    mrb_ingest *g = &b->ing;
    int force = g->echo_force;
    g->echo_force = 0;
    if (g->kept)
        return; /* in order: nothing passes the kept ones */
    while (g->unsent && !window_full(g)) {
        mrb_msg *m = g->unsent;
        int r = append(b, m, 0, force);
        force = 0;
        if (r == APPEND_ECHO_WAIT) {
            echo_wait_begin(b);
            return;
        }
        echo_wait_end(b);
        if (r == APPEND_DONE) {
            /* everything it had went through before: finished */
            mrb_queue_unlink_after(&g->unacked, g->unsent_prev);
            g->unsent = g->unsent_prev ? g->unsent_prev->next : g->unacked.head;
            g->rcur = g->rprev = NULL; /* it may have pointed here */
            finish(b, m);
            continue;
        }
        atomic_fetch_add(&g->resent, 1);
        g->unsent_prev = m;
        g->unsent = m->next;
        if (r == APPEND_KEPT) {
            g->kept++;
            g->refusing = 1;
            return;
        }
    }
    if (g->unsent)
        return;
    mrb_msg *batch[BATCH];
    size_t n = 0;
    int was_held = 0, held_echo = 0;
    if (g->held) {
        if (g->held_until_ms && mrb_now_ms() < g->held_until_ms)
            return; /* in order: nothing passes it */
        was_held = 1;
        held_echo = g->held_until_ms == 0; /* admitted already */
        batch[n++] = g->held;
        g->held = NULL;
    }
    pthread_mutex_lock(&b->in_lock);
    while (n < BATCH && n + g->outstanding < MRB_REDIS_WINDOW &&
           (batch[n] = mrb_queue_pop(&b->in_q)) != NULL)
        n++;
    pthread_mutex_unlock(&b->in_lock);
    size_t i;
    for (i = 0; i < n; i++) {
        mrb_msg *m = batch[i];
        int first = i == 0 && was_held;
        /* MQTT 3.1.1 has no No Local: our own publishes come back; judged
         * at arrival time, however long the message waited */
        if (b->mqtt.version != MQTTVERSION_5 && !first &&
            mrb_echo_take_mqtt(b->echo,
                               mrb_seen_key(mrb_msg_name(m), m->name_len,
                                            mrb_msg_payload(m), m->payload_len),
                               m->arrived_ms)) {
            atomic_fetch_add(&g->echoes, 1);
            finish(b, m);
            /* main may hold publishes back for this room */
            if (atomic_load(&b->mqtt_echo_wait) && mrb_echo_mqtt_has_room(b->echo) &&
                atomic_exchange(&b->mqtt_echo_wait, 0))
                mrb_bridge_wake(b);
            continue;
        }
        if (window_full(g))
            break; /* m goes back first */
        int appended = APPEND_DONE;
        int64_t wait = admit_append(b, m, first && held_echo, force, &appended);
        force = 0;
        if (wait > 0 || appended == APPEND_ECHO_WAIT) {
            /* hold it, for its rate limit's token or for echo room; the
             * rest waits behind it */
            g->held = m;
            g->held_until_ms = wait > 0 ? mrb_now_ms() + wait : 0;
            if (appended == APPEND_ECHO_WAIT)
                echo_wait_begin(b);
            i++;
            goto put_back;
        }
        echo_wait_end(b);
        if (appended == APPEND_DONE) {
            finish(b, m);
            continue;
        }
        mrb_queue_push(&g->unacked, m);
        if (appended == APPEND_KEPT) {
            g->kept++;
            g->refusing = 1;
            i++;
            goto put_back;
        }
    }
put_back:
    /* what is left goes back in order (there is hardly any: Paho's receive
     * thread waits for a QoS > 0 message) */
    if (i < n) {
        pthread_mutex_lock(&b->in_lock);
        for (size_t j = n; j-- > i;)
            mrb_queue_push_front(&b->in_q, batch[j]);
        pthread_mutex_unlock(&b->in_lock);
    }
}

/* The message the next reply is for: the first one in unacked with replies
 * pending (kept ones, before it, have none). */
static mrb_msg *reply_owner(mrb_ingest *g)
{
    if (!g->rcur) {
        g->rprev = NULL;
        g->rcur = g->unacked.head;
    }
    while (g->rcur && g->rcur->pending == 0) {
        g->rprev = g->rcur;
        g->rcur = g->rcur->next;
    }
    return g->rcur;
}

/* A refusal that passes (OOM, LOADING...): the first of an episode is
 * logged, the rest counted. */
static void refused_for_now(mrb_bridge *b, const mrb_msg *m, const char *err)
{
    mrb_ingest *g = &b->ing;
    uint64_t n = atomic_fetch_add(&g->refused, 1) + 1;
    if (g->refusal_logged)
        return;
    char esc[MRB_LOG_ESCAPE_MAX];
    g->refusing = 1;
    g->refusal_logged = 1;
    g->refused_since_ms = mrb_now_ms();
    mrb_warn("redis: refused a message from MQTT topic '%s' for now: %s; it and "
             "what follows stay unacknowledged and are sent again in order, "
             "with backoff (%ld ms to %ld ms), until Redis takes them; logged "
             "once until then; redis_refused=%llu",
             mrb_log_escape(mrb_msg_name(m), m->name_len, esc, sizeof(esc)), err,
             b->cfg->reconnect_min_ms, b->cfg->reconnect_max_ms,
             (unsigned long long)n);
}

/* m has no reply pending any more: finished, or kept for sending again. */
static void settled(mrb_bridge *b, mrb_msg *m)
{
    mrb_ingest *g = &b->ing;
    g->outstanding--;
    g->outstanding_bytes -= m->name_len + m->payload_len;
    if (m->flags & MSG_RETRY) {
        g->kept++;
        g->refusing = 1;
        g->rprev = m;
        g->rcur = m->next;
    } else {
        if (g->probing) {
            /* the first message taken after a refusal: back to normal */
            g->probing = g->refusing = 0;
            mrb_backoff_reset(&g->refuse_backoff);
        }
        if (g->refusal_logged && !g->kept) {
            /* said once, like the refusal (a command that could not be
             * queued has its own rate-limited line) */
            g->refusal_logged = 0;
            mrb_info("redis: takes messages from MQTT again after %.1f s "
                     "(redis_refused=%llu, redis_append_failed=%llu)",
                     (double)(mrb_now_ms() - g->refused_since_ms) / 1000.0,
                     (unsigned long long)atomic_load(&g->refused),
                     (unsigned long long)atomic_load(&g->append_failed));
        }
        mrb_queue_unlink_after(&g->unacked, g->rprev);
        g->rcur = g->rprev ? g->rprev->next : g->unacked.head;
        if (g->unsent_prev == m)
            g->unsent_prev = g->rprev;
        finish(b, m);
    }
    if (g->kept && g->outstanding == 0)
        g->retry_at_ms = mrb_now_ms() + mrb_backoff_next(&g->refuse_backoff);
}

/* One reply, for the oldest command awaiting one. */
static void take_reply(mrb_bridge *b, redisReply *r)
{
    mrb_ingest *g = &b->ing;
    mrb_msg *m = reply_owner(g);
    mrb_cmd c;
    if (!m || !cmd_pop(g, &c)) {
        freeReplyObject(r); /* not ours (cannot happen) */
        return;
    }
    int err = r->type == REDIS_REPLY_ERROR;
    mrb_rerror_kind kind = err ? mrb_rerror_classify(r->str) : MRB_RERR_PERMANENT;
    int transient = err && kind == MRB_RERR_TRANSIENT;
    if (c.kind == CMD_PUBLISH) {
        mrb_echo_redis_answered(b->echo, 1);
        if (err) /* not executed: nothing comes back */
            mrb_echo_unnote_redis(b->echo, c.key, (mrb_echo_note_result)c.note);
    }
    if (!transient && c.target < SKIP_BITS) {
        /* delivered, or refused for good: not to be sent again */
        uint64_t bit = (uint64_t)1 << c.target;
        if (c.kind == CMD_HASH)
            m->hdone |= bit;
        else
            m->done |= bit;
    }
    if (c.route != MRB_NO_ROUTE && !transient) {
        int64_t dt = mrb_now_us() - m->taken_us;
        pthread_mutex_lock(&b->routes_lock); /* a reload may swap b->st */
        mrb_dir_stats *d = c.route < b->st.n ? &b->st.r[c.route].m2r : NULL;
        if (d && err) {
            mrb_stats_count(&d->dropped_send_failed, 1);
        } else if (d) {
            mrb_stats_count(&d->out, 1);
            mrb_stats_count(&d->bytes_out, m->payload_len);
            mrb_lat_add(&d->lat, dt > 0 ? (uint64_t)dt : 0);
        }
        pthread_mutex_unlock(&b->routes_lock);
    }
    if (transient) {
        m->flags |= MSG_RETRY;
        refused_for_now(b, m, r->str);
    } else if (err) {
        /* refused for good (a key of another type, an ACL refusal...):
         * sending again would not help; dropped and counted */
        uint64_t sup, n = atomic_fetch_add(&g->dropped_send_failed, 1) + 1;
        char esc[MRB_LOG_ESCAPE_MAX];
        if (mrb_ratelimit_allow(&g->rl_send, mrb_now_ms(), &sup))
            mrb_warn("redis: refused a message from MQTT topic '%s': %s (%llu "
                     "similar not logged); dropped_send_failed=%llu",
                     mrb_log_escape(mrb_msg_name(m), m->name_len, esc, sizeof(esc)),
                     r->str, (unsigned long long)sup, (unsigned long long)n);
    } else if (c.kind != CMD_HASH) {
        atomic_fetch_add(&g->redis_out, 1);
    }
    freeReplyObject(r);
    if (--m->pending == 0)
        settled(b, m);
}

/* After a refusal, once every reply is in and the backoff has passed: the
 * kept messages (and those behind them) go again, one at a time. */
static void retry_kept(mrb_ingest *g)
{
    rewind_all(g); /* (nothing is outstanding now) */
    g->probing = 1;
}

static int64_t flush_warnings(mrb_bridge *b, int64_t now);

/* Wait until fd is ready for events, in slices so that a stop is seen (and
 * the summaries of warning bursts are not held up by a silent server).
 * 1 ready, 0 overdue (redis.keepalive), -1 stopping, -2 poll error. */
static int wait_fd(mrb_bridge *b, short events)
{
    int64_t ka = io_timeout_ms(b), waited = 0;
    for (;;) {
        if (atomic_load(&b->ing.quit))
            return -1;
        /* (the receive thread's warnings go on while we wait) */
        pthread_mutex_lock(&b->in_lock);
        b->ing.warn_at_ms = flush_warnings(b, mrb_now_ms());
        pthread_mutex_unlock(&b->in_lock);
        mrb_logbuf_flush(&b->ing.log);
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

/* Under in_lock: 0 if there is work now, else until when to wait
 * (INT64_MAX: until kicked). */
static int64_t next_work(mrb_bridge *b, int64_t now)
{
    mrb_ingest *g = &b->ing;
    if (!g->c) /* connect even when idle: "ready" waits for it */
        return now >= g->next_attempt_ms ? 0 : g->next_attempt_ms;
    if (g->outstanding)
        return 0; /* replies to read */
    if (g->kept) {
        if (now < g->retry_at_ms)
            return g->retry_at_ms;
        retry_kept(g);
        return 0;
    }
    if (atomic_load(&g->echo_wait)) {
        if (mrb_echo_redis_room_for(b->echo, g->echo_need))
            return 0;
        /* a callback waits for us and main is inside Paho: if that call
         * does not end soon, main is blocked behind the callback, and only
         * sending the message ends it */
        if (atomic_load(&b->in_waiting) && atomic_load(&b->main_in_paho)) {
            unsigned calls = atomic_load(&b->paho_calls);
            /* once main is found blocked in a call, everything goes until
             * that call ends: one message per FORCE_AFTER_MS would leave
             * a callback behind a full in_q waiting long enough to give
             * its message back */
            if (g->forcing && calls == g->forcing_calls) {
                g->echo_force = 1;
                return 0;
            }
            if (calls != g->force_calls || !g->force_after_ms) {
                g->force_calls = calls;
                g->force_after_ms = now + FORCE_AFTER_MS;
            }
            if (now < g->force_after_ms)
                return g->force_after_ms;
            g->forcing = 1;
            g->forcing_calls = calls;
            g->echo_force = 1;
            return 0;
        }
        g->forcing = 0;
        g->force_after_ms = 0;
        return INT64_MAX; /* main kicks us when there is room */
    }
    if (g->unsent)
        return window_full(g) ? INT64_MAX : 0;
    if (g->held)
        return now >= g->held_until_ms ? 0 : g->held_until_ms;
    if (b->in_q.count > 0 && !window_full(g))
        return 0;
    return INT64_MAX;
}

/* Under in_lock: the summaries of warning bursts that ended (this
 * thread's and the receive thread's), formatted into ing.log; returns when
 * the next is due. */
static int64_t flush_warnings(mrb_bridge *b, int64_t now)
{
    mrb_ingest *g = &b->ing;
    mrb_logbuf *lb = &g->log;
    int64_t next = INT64_MAX;
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->in_rl_large, now, lb, "dropped messages from MQTT: too large",
        "dropped_too_large", b->ic.dropped_too_large));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &b->in_rl_full, now, lb, "dropped oldest messages waiting for Redis: queue full",
        "dropped_queue_full", b->ic.dropped_queue_full));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &g->rl_unmappable, now, lb, "dropped messages from MQTT: unmappable",
        "dropped_unmappable", atomic_load(&g->dropped_unmappable)));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &g->rl_large, now, lb, "dropped messages from MQTT on envelope routes: "
        "envelope too large", "dropped_too_large", atomic_load(&g->dropped_too_large)));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &g->rl_send, now, lb, "redis: refused messages from MQTT", "dropped_send_failed",
        atomic_load(&g->dropped_send_failed)));
    next = mrb_min_ms(next, mrb_ratelimit_flush(
        &g->rl_append, now, lb, "redis: commands that could not be queued",
        "redis_append_failed", atomic_load(&g->append_failed)));
    /* b->limits is swapped by a reload under routes_lock: read it there */
    pthread_mutex_lock(&b->routes_lock); /* lock order: in_lock first */
    if (b->limits)
        next = mrb_min_ms(next, mrb_limits_flush(b, 1, now, lb));
    pthread_mutex_unlock(&b->routes_lock);
    return next;
}

static void *ingest_main(void *arg)
{
    mrb_bridge *b = arg;
    mrb_ingest *g = &b->ing;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are main's */
    int64_t busy_ms = 0;

    for (;;) {
        int trim = 0, work = 0;
        pthread_mutex_lock(&b->in_lock);
        for (;;) {
            if (atomic_load(&g->quit)) {
                pthread_mutex_unlock(&b->in_lock);
                mrb_logbuf_flush(&g->log);
                return NULL;
            }
            int64_t now = mrb_now_ms();
            /* every time: events since may have made one due later */
            g->warn_at_ms = flush_warnings(b, now);
            int64_t until = next_work(b, now);
            work = until == 0;
            if (work || g->log.n)
                break; /* (lines to write: outside the lock) */
            /* idle after traffic: give the heap back once quiet */
            if (g->c && g->trim_due && b->in_q.count == 0) {
                if (now - busy_ms >= MRB_TRIM_IDLE_MS) {
                    g->trim_due = 0;
                    trim = 1;
                    break;
                }
                if (busy_ms + MRB_TRIM_IDLE_MS < until)
                    until = busy_ms + MRB_TRIM_IDLE_MS;
            }
            if (g->warn_at_ms < until)
                until = g->warn_at_ms;
            g->idle = 1;
            if (until == INT64_MAX) {
                pthread_cond_wait(&g->work, &b->in_lock);
            } else {
                struct timespec ts = abs_ts(until);
                pthread_cond_timedwait(&g->work, &b->in_lock, &ts);
            }
            g->idle = 0;
        }
        pthread_mutex_unlock(&b->in_lock);
        mrb_logbuf_flush(&g->log);
        if (trim) {
            mrb_trim(); /* no lock held: it can take a while */
            continue;
        }
        if (!work)
            continue;
        if (!g->c) {
            if (mrb_now_ms() >= g->next_attempt_ms)
                try_connect(b);
            continue;
        }
        send_some(b);
        g->trim_due = 1;
        busy_ms = mrb_now_ms();
        int rc = flush_writes(b);
        if (rc != 0) {
            io_failed(b, rc);
            continue;
        }
        /* wait for a reply when there is nothing new to send meanwhile */
        pthread_mutex_lock(&b->in_lock);
        int more = b->in_q.count > 0 && !window_full(g) && !g->held && !g->kept &&
                   !atomic_load(&g->echo_wait);
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
    mrb_backoff_init(&g->refuse_backoff, b->cfg->reconnect_min_ms,
                     b->cfg->reconnect_max_ms, (uint64_t)mrb_now_ms() * 40503u + 11u);
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

void mrb_ingest_kick_unlocked(mrb_bridge *b)
{
    pthread_mutex_lock(&b->in_lock);
    mrb_ingest_kick(b);
    pthread_mutex_unlock(&b->in_lock);
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
    if (b->ing.held) { /* for a rate limit (QoS > 0) or echo room (any) */
        if (b->ing.held->qos > 0)
            (*kept)++;
        else
            (*lost)++;
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
    free(b->ing.cmd);
    b->ing.cmd = NULL;
    b->ing.cmd_cap = b->ing.cmd_n = b->ing.cmd_head = 0;
}
