/*
 * redis.c - the Redis edge: two hiredis async contexts driven by the main
 * thread's poll() loop (hiredis never owns the loop; the ev hooks below only
 * record whether it wants to read or write).
 *
 *   publisher  - AUTH/SELECT, then the stream bookkeeping (SCAN, XGROUP
 *                CREATE, XACK, CLIENT UNBLOCK) and the keepalive PING.
 *                (MQTT -> Redis messages go out on the ingest thread's own
 *                connection: ingest.c.)
 *   subscriber - AUTH/SELECT, then SUBSCRIBE/PSUBSCRIBE for every pub/sub
 *                subscription of the route table, in table order.
 *   reader     - stream routes only: AUTH/SELECT, CLIENT ID, then one
 *                XREADGROUP at a time (stream.c).
 *
 * Stalls: hiredis 0.14 has no command timeouts. With redis.keepalive K > 0
 * the publisher sends PING after K s without a reply, and a reply awaited
 * for more than K s (on the publisher, or past the reader's BLOCK time)
 * means the server stopped answering: all connections are closed and made
 * again, and what was sent without a reply is sent again. The subscriber
 * cannot PING in subscribed mode with hiredis 0.14; it shares the server,
 * so it is reset with the others.
 *
 * Refusals: a wrong password (WRONGPASS, NOAUTH...) or a command or channel
 * the Redis ACL does not allow (NOPERM) during set-up does not fix itself:
 * it is logged once as an error and retried every reconnect.max_ms.
 *
 * Echo guard (echo.h): before the subscriber (re)subscribes, on a new
 * connection or for the difference a reload makes, the PUBLISHes the
 * ingest thread appended so far must have been answered (the fence), so
 * that none of them runs after the SUBSCRIBE without its echo note; once
 * every subscription is confirmed the notes are certain.
 *
 * Held subscriber: while out_q is half full, the subscriber is not read
 * (back-pressure). Redis may close it meanwhile (client-output-buffer-limit
 * pubsub), but its FIN queues behind the data our full receive window
 * holds back, so the socket cannot tell. So while it is held, the
 * publisher asks `CLIENT LIST ID <subscriber>` every half redis.keepalive;
 * when Redis no longer knows it, the subscriber is read to its end (what
 * Redis sent before closing goes to out_q, oldest dropped and counted as
 * always), and the loss is logged and counted (redis_sub_lost) at once,
 * not when the broker is back. (POLLRDHUP is polled too, for a close that
 * did get through.)
 *
 * A command that hiredis cannot queue (out of memory) during a connection's
 * set-up ends that attempt; a keepalive PING that cannot be queued resets
 * the connection (logged like an outage, counted in redis_call_failed).
 *
 * Each context is created and freed here on the main thread only. hiredis
 * frees a context itself after a connection error; ev_cleanup clears our
 * pointer when that happens, so rc->ac is NULL exactly when there is none.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "bridge_int.h"
#include "mrb/rerror.h"

#define FENCE_POLL_MS 5

static void send_diff(mrb_bridge *b);

/* The subscription changes of a reload, sent once the fence is done. */
static void free_diff(mrb_bridge *b)
{
    for (size_t i = 0; i < b->n_sub_diff; i++)
        free(b->sub_diff[i]);
    free(b->sub_diff);
    b->sub_diff = NULL;
    b->n_sub_diff = 0;
}

static void ev_add_read(void *p) { ((mrb_rconn *)p)->want_read = 1; }
static void ev_del_read(void *p) { ((mrb_rconn *)p)->want_read = 0; }
static void ev_add_write(void *p) { ((mrb_rconn *)p)->want_write = 1; }
static void ev_del_write(void *p) { ((mrb_rconn *)p)->want_write = 0; }
static void ev_cleanup(void *p)
{
    mrb_rconn *rc = p;
    rc->want_read = rc->want_write = 0;
    rc->ac = NULL;
    if (rc == &rc->b->rsub) {
        /* nothing more comes back to a connection that is gone */
        mrb_echo_redis_down(rc->b->echo);
        rc->b->sub_fencing = 0;
        rc->b->sub_echo_on = 0;
        free_diff(rc->b);
    }
}

static int rconn_needed(const mrb_rconn *rc)
{
    /* no pub/sub (stream) route to MQTT: no subscriber (reader) at all */
    if (rc == &rc->b->rsub)
        return rc->b->routes.n_redis_sub > 0;
    if (rc == &rc->b->rread)
        return rc->b->routes.n_stream_sub > 0;
    return 1;
}

int mrb_redis_pub_ready(const mrb_bridge *b) { return b->rpub.state == CONN_UP; }

int mrb_redis_sub_ready(const mrb_bridge *b)
{
    return (!rconn_needed(&b->rsub) || b->rsub.state == CONN_UP) &&
           (!rconn_needed(&b->rread) || b->rread.state == CONN_UP);
}

/* Every reply on the publisher and the reader passes here first. */
static void got_reply(mrb_rconn *rc)
{
    int64_t now = mrb_now_ms();
    if (rc->cmds > 0)
        rc->cmds--;
    rc->last_io_ms = now;
    rc->wait_since_ms = now;
}

static void sent_cmd(mrb_rconn *rc)
{
    if (rc->cmds++ == 0)
        rc->wait_since_ms = mrb_now_ms();
}

static void side_maybe_up(mrb_bridge *b)
{
    if (!b->redis_outage_logged || !mrb_redis_pub_ready(b) || !mrb_redis_sub_ready(b))
        return;
    mrb_info("redis: reconnected to %s after %.1f s", b->redis_url,
             (double)(mrb_now_ms() - b->redis_down_since_ms) / 1000.0);
    b->redis_outage_logged = 0;
    b->redis_refusal_logged = 0;
}

/* The connection failed or was lost: log the outage once per side, schedule
 * the next attempt. Idempotent. refused: Redis refused our credentials or
 * its ACL a set-up command (see the top of the file). */
static void rconn_failed_as(mrb_rconn *rc, const char *why, int refused)
{
    mrb_bridge *b = rc->b;
    if (rc->state == CONN_DOWN)
        return;
    int was_up = rc->state == CONN_UP;
    int64_t now = mrb_now_ms();
    if (was_up && rc == &b->rsub)
        b->c.sub_lost++;
    rc->state = CONN_DOWN;
    rc->confirmed = 0;
    rc->reading = rc->blocked = 0;
    b->ready = 0;
    if (rc == &b->rread)
        mrb_stream_on_reader_down(b);
    snprintf(rc->last_error, sizeof(rc->last_error), "%s", why);
    int64_t delay = mrb_backoff_next(&rc->backoff);
    if (refused && delay < b->cfg->reconnect_max_ms)
        delay = b->cfg->reconnect_max_ms;
    rc->next_attempt_ms = now + delay;
    if (b->stopping)
        return;
    if (refused && !b->redis_refusal_logged) {
        mrb_error("redis: %s refused the %s connection: %s; check the user "
                  "name and password (redis.url, redis.password_file or "
                  "MRB_REDIS_PASSWORD) and the Redis ACL; retrying every %ld ms "
                  "(reconnect.max_ms), logged once", b->redis_url, rc->name, why,
                  b->cfg->reconnect_max_ms);
        b->redis_refusal_logged = 1;
        if (!b->redis_outage_logged)
            b->redis_down_since_ms = now;
        b->redis_outage_logged = 1;
    } else if (!b->redis_outage_logged) {
        mrb_warn("redis: %s %s: %s; retrying with backoff (%ld ms to %ld ms), "
                 "logged once per outage", was_up ? "connection lost to" :
                 "cannot connect to", b->redis_url, why, b->cfg->reconnect_min_ms,
                 b->cfg->reconnect_max_ms);
        b->redis_outage_logged = 1;
        b->redis_down_since_ms = now;
    } else {
        mrb_debug("redis %s: attempt %u failed: %s; next in %lld ms", rc->name,
                  rc->backoff.attempts, why, (long long)delay);
    }
}

static void rconn_failed(mrb_rconn *rc, const char *why)
{
    rconn_failed_as(rc, why, 0);
}

/* Every subscription of the table confirmed: our echoes now come back for
 * sure. */
static void sub_confirmed(mrb_bridge *b)
{
    if (b->sub_echo_on || b->n_sub_diff)
        return;
    b->sub_echo_on = 1;
    mrb_echo_redis_up(b->echo, mrb_now_ms());
}

static void rconn_up(mrb_rconn *rc)
{
    rc->state = CONN_UP;
    if (rc == &rc->b->rsub)
        sub_confirmed(rc->b);
    rc->connects++;
    rc->last_io_ms = rc->wait_since_ms = mrb_now_ms();
    mrb_backoff_reset(&rc->backoff);
    mrb_debug("redis %s: up", rc->name);
    side_maybe_up(rc->b);
    if (rc == &rc->b->rpub)
        mrb_stream_on_pub_up(rc->b);
    else if (rc == &rc->b->rread)
        mrb_stream_on_reader_up(rc->b);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    mrb_rconn *rc = ac->data;
    if (status != REDIS_OK)
        rconn_failed(rc, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    mrb_rconn *rc = ac->data;
    /* hiredis 0.14 ends a subscribed connection on an error reply (NOPERM
     * for a channel the ACL does not allow): errstr holds it */
    rconn_failed_as(rc, status == REDIS_OK ? "closed" :
                    (ac->errstr[0] ? ac->errstr : "connection error"),
                    status != REDIS_OK && mrb_redis_is_refusal(ac->errstr));
}

/* A reply to AUTH or SELECT during set-up: an error ends this attempt. */
static void on_setup_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    if (rc != &rc->b->rsub)
        got_reply(rc);
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        char why[240];
        snprintf(why, sizeof(why), "%s refused: %s", (const char *)priv,
                 reply->str);
        /* logs it, once per outage */
        rconn_failed_as(rc, why, mrb_redis_is_refusal(reply->str));
        redisAsyncDisconnect(ac);
    }
}

/* The handshake's last reply (PING on the publisher, CLIENT ID on the
 * reader); later, a keepalive PING's. */
static void on_ping_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    got_reply(rc);
    if (!reply || rc->state != CONN_CONNECTING)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* NOAUTH, LOADING, MISCONF...: say so instead of timing out */
        on_setup_reply(ac, r, priv ? priv : "PING");
        return;
    }
    if (reply->type == REDIS_REPLY_INTEGER)
        rc->client_id = reply->integer;
    rconn_up(rc);
}

static void on_sub_id_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    rc->client_id = reply && reply->type == REDIS_REPLY_INTEGER ? reply->integer : 0;
}

/* The publisher's answer to CLIENT LIST ID <subscriber>. */
static void on_sub_check(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_bridge *b = rc->b;
    got_reply(rc);
    b->sub_check_busy = 0;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* not allowed by the ACL, say: only a close that gets through
         * (POLLRDHUP) or the end of the back-pressure shows it then */
        if (!b->sub_check_off)
            mrb_info("redis: cannot ask whether the subscriber connection "
                     "still exists while it is paused (%s); a closed one is "
                     "noticed when reading resumes", reply->str);
        b->sub_check_off = 1;
        return;
    }
    if (reply->type == REDIS_REPLY_STRING && reply->len == 0 && b->rsub.ac &&
        b->rsub.state == CONN_UP && !b->rsub.draining) {
        /* gone: read what it sent before, then its end */
        b->rsub.draining = 1;
        mrb_warn("redis: the server closed the subscriber connection while it "
                 "was paused for back-pressure (client-output-buffer-limit "
                 "pubsub?); reading what it sent before, then reconnecting");
    }
}

static void on_sub_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_bridge *b = rc->b;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[240];
        snprintf(why, sizeof(why), "subscribe refused: %s", reply->str);
        /* logs it, once per outage */
        rconn_failed_as(rc, why, mrb_redis_is_refusal(reply->str));
        redisAsyncDisconnect(ac);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    redisReply **e = reply->element;
    const char *kind = e[0]->str;
    if (!kind)
        return;
    if (strcmp(kind, "pmessage") == 0 && reply->elements == 4) {
        mrb_bridge_on_redis_message(b, e[1]->str, e[1]->len, e[2]->str,
                                    e[2]->len, e[3]->str, e[3]->len);
    } else if (strcmp(kind, "message") == 0) {
        mrb_bridge_on_redis_message(b, e[1]->str, e[1]->len, e[1]->str,
                                    e[1]->len, e[2]->str, e[2]->len);
    } else if (strcmp(kind, "subscribe") == 0 || strcmp(kind, "psubscribe") == 0) {
        if (++rc->confirmed == b->routes.n_redis_sub) {
            if (rc->state == CONN_CONNECTING)
                rconn_up(rc);
            else if (rc->state == CONN_UP)
                sub_confirmed(b); /* the new ones of a reload */
        }
    }
}

static void rconn_start(mrb_rconn *rc, int64_t now)
{
    mrb_bridge *b = rc->b;
    const mrb_url *u = &b->cfg->redis;
    redisAsyncContext *ac = u->path ? redisAsyncConnectUnix(u->path)
                                    : redisAsyncConnect(u->host, u->port);
    rc->state = CONN_CONNECTING;
    rc->confirmed = 0;
    rc->cmds = 0;
    rc->draining = 0;
    rc->client_id = 0;
    rc->reading = rc->blocked = 0;
    if (!ac || ac->err) {
        char why[200];
        snprintf(why, sizeof(why), "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        rconn_failed(rc, why);
        return;
    }
    ac->data = rc;
    ac->ev.data = rc;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rc->ac = ac;
    rc->want_write = 1; /* the first writable event completes connect() */
    rc->deadline_ms = now + mrb_redis_connect_timeout_ms(b);
    /* a peer that vanishes without a FIN is found by TCP keepalive too
     * (hiredis 0.14: probes after 15 s idle) */
    if (!u->path)
        redisEnableKeepAlive(&ac->c);

    /* set-up commands, in order; one hiredis cannot queue (out of memory)
     * ends this attempt */
    int counted = rc != &b->rsub, ok = 1;
    if (u->password && u->user)
        ok = redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s %s", u->user,
                               u->password) == REDIS_OK;
    else if (u->password)
        ok = redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s",
                               u->password) == REDIS_OK;
    if (u->password && counted && ok)
        sent_cmd(rc);
    /* CLIENT LIST tells operators (and tests) which connection is which */
    if (ok && redisAsyncCommand(ac, on_setup_reply, "CLIENT SETNAME",
                                "CLIENT SETNAME mrb:%s:%s", b->cfg->id,
                                rc->name) != REDIS_OK)
        ok = 0;
    if (counted && ok)
        sent_cmd(rc);
    /* every connection in the configured database: pub/sub ignores it, but
     * CLIENT LIST shows it, and operators and ACLs may rely on it */
    if (ok && u->db) {
        ok = redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d",
                               u->db) == REDIS_OK;
        if (counted && ok)
            sent_cmd(rc);
    }
    if (ok && (rc == &b->rpub || rc == &b->rread)) {
        ok = rc == &b->rpub
                 ? redisAsyncCommand(ac, on_ping_reply, NULL, "PING") == REDIS_OK
                 : redisAsyncCommand(ac, on_ping_reply, "CLIENT ID", "CLIENT ID") ==
                       REDIS_OK;
        if (ok)
            sent_cmd(rc);
    }
    /* the subscriber's id: to ask whether Redis still has it (held) */
    if (ok && rc == &b->rsub)
        ok = redisAsyncCommand(ac, on_sub_id_reply, NULL, "CLIENT ID") == REDIS_OK;
    /* Subscribe in table order: exact channels, then patterns. The bridge
     * acts on a message only for the first subscription that matches it,
     * and since Redis takes these in order, the active ones are always a
     * prefix of the list (see mrb_routes_redis_canonical). */
    for (size_t i = 0; ok && rc == &b->rsub && i < b->routes.n_redis_sub; i++) {
        const mrb_sub *s = &b->routes.redis_sub[i];
        ok = redisAsyncCommand(ac, on_sub_reply, NULL,
                               s->exact ? "SUBSCRIBE %s" : "PSUBSCRIBE %s",
                               s->name) == REDIS_OK;
    }
    if (!ok) {
        b->c.redis_call_failed++;
        rconn_failed(rc, "cannot queue the connection's set-up commands (out of "
                     "memory)");
        redisAsyncFree(ac);
    }
}

int64_t mrb_redis_connect_timeout_ms(const mrb_bridge *b)
{
    long ka = b->cfg->redis_keepalive;
    return ka > 0 && ka * 1000 < MRB_CONNECT_TIMEOUT_MS ? (ka < 2 ? 2000 : ka * 1000)
                                                        : MRB_CONNECT_TIMEOUT_MS;
}

void mrb_redis_init(mrb_bridge *b)
{
    mrb_rconn *rcs[3] = {&b->rpub, &b->rsub, &b->rread};
    const char *names[3] = {"publisher", "subscriber", "reader"};
    for (int i = 0; i < 3; i++) {
        memset(rcs[i], 0, sizeof(*rcs[i]));
        rcs[i]->name = names[i];
        rcs[i]->b = b;
        mrb_backoff_init(&rcs[i]->backoff, b->cfg->reconnect_min_ms,
                         b->cfg->reconnect_max_ms,
                         (uint64_t)mrb_now_ms() * 2654435761u + (uint64_t)i);
    }
}

/* When a reply awaited on rc counts as overdue (INT64_MAX: never). */
static int64_t stall_deadline(const mrb_bridge *b, const mrb_rconn *rc)
{
    long ka = b->cfg->redis_keepalive;
    if (ka <= 0 || rc->state != CONN_UP || rc->cmds == 0)
        return INT64_MAX;
    /* a blocking XREADGROUP answers by itself after its BLOCK time */
    return rc->wait_since_ms + ka * 1000 * (rc->blocked ? 2 : 1);
}

static int64_t ping_due(const mrb_bridge *b)
{
    long ka = b->cfg->redis_keepalive;
    const mrb_rconn *rc = &b->rpub;
    if (ka <= 0 || rc->state != CONN_UP || rc->cmds > 0 || b->stopping)
        return INT64_MAX;
    return rc->last_io_ms + ka * 1000;
}

void mrb_redis_reset(mrb_rconn *rc, const char *why)
{
    if (!rc->ac)
        return;
    rconn_failed(rc, why); /* first: the reason logged is this one */
    redisAsyncFree(rc->ac);
}

static int is_stopped(const mrb_bridge *b, const mrb_rconn *rc)
{
    /* while stopping, only the publisher is kept (flush, XACK) */
    return b->stopping && rc != &b->rpub;
}

/* How often a held subscriber is looked for (CLIENT LIST ID): twice per
 * redis.keepalive, at least every second. */
static int64_t sub_check_every(const mrb_bridge *b)
{
    long ka = b->cfg->redis_keepalive > 0 ? b->cfg->redis_keepalive : 10;
    return ka * 500 > 1000 ? ka * 500 : 1000;
}

/* Before the subscriber connects: the fence (echo.h). 1 once done. */
static int sub_fence_done(mrb_bridge *b)
{
    if (!b->sub_fencing) {
        mrb_echo_redis_fence(b->echo);
        b->sub_fencing = 1;
    }
    return mrb_echo_redis_fenced(b->echo);
}

void mrb_redis_tick(mrb_bridge *b, int64_t now)
{
    mrb_rconn *rcs[3] = {&b->rpub, &b->rsub, &b->rread};
    if (stall_deadline(b, &b->rpub) <= now || stall_deadline(b, &b->rread) <= now) {
        char why[160];
        snprintf(why, sizeof(why), "no reply for %ld s (redis.keepalive): the "
                 "server stopped answering", b->cfg->redis_keepalive);
        b->c.stalls++;
        for (int i = 0; i < 3; i++)
            mrb_redis_reset(rcs[i], why);
    }
    if (ping_due(b) <= now) {
        if (redisAsyncCommand(b->rpub.ac, on_ping_reply, NULL, "PING") == REDIS_OK) {
            sent_cmd(&b->rpub);
        } else {
            b->c.redis_call_failed++;
            mrb_redis_reset(&b->rpub, "cannot queue a keepalive PING (out of memory)");
        }
    }
    /* a reload's subscription changes, once the fence is done */
    if (b->n_sub_diff && mrb_echo_redis_fenced(b->echo))
        send_diff(b);
    /* a held subscriber: does Redis still have it? */
    if (b->sub_held && !b->sub_check_off && !b->sub_check_busy &&
        b->rsub.client_id > 0 && now >= b->sub_check_ms && b->rpub.state == CONN_UP) {
        char id[24];
        snprintf(id, sizeof(id), "%lld", b->rsub.client_id);
        const char *argv[] = {"CLIENT", "LIST", "ID", id};
        size_t lens[] = {6, 4, 2, strlen(id)};
        if (mrb_redis_command(&b->rpub, on_sub_check, NULL, 4, argv, lens) == MRB_OK)
            b->sub_check_busy = 1;
        b->sub_check_ms = now + sub_check_every(b);
    }
    for (int i = 0; i < 3; i++) {
        mrb_rconn *rc = rcs[i];
        if (!rconn_needed(rc) || is_stopped(b, rc))
            continue;
        if (rc->state == CONN_DOWN && !rc->ac && now >= rc->next_attempt_ms) {
            if (rc == &b->rsub && !sub_fence_done(b))
                continue; /* (the timer looks again in FENCE_POLL_MS) */
            rconn_start(rc, now);
        } else if (rc->state == CONN_CONNECTING && now >= rc->deadline_ms && rc->ac) {
            /* first, so that the reason logged is this one, not the
             * "closed" of the on_disconnect that the free may call */
            rconn_failed(rc, "timed out waiting for the server to answer");
            redisAsyncFree(rc->ac);
        }
    }
}

int64_t mrb_redis_next_timer(const mrb_bridge *b)
{
    const mrb_rconn *rcs[3] = {&b->rpub, &b->rsub, &b->rread};
    int64_t t = ping_due(b);
    if (b->n_sub_diff) /* a reload's changes wait for the fence */
        t = mrb_now_ms() + FENCE_POLL_MS;
    if (b->sub_held && !b->sub_check_off && b->sub_check_ms < t)
        t = b->sub_check_ms;
    if (stall_deadline(b, &b->rpub) < t)
        t = stall_deadline(b, &b->rpub);
    if (stall_deadline(b, &b->rread) < t)
        t = stall_deadline(b, &b->rread);
    for (int i = 0; i < 3; i++) {
        const mrb_rconn *rc = rcs[i];
        /* the same conditions as mrb_redis_tick: a timer it would not act
         * on would make poll() spin */
        if (!rconn_needed(rc) || is_stopped(b, rc))
            continue;
        if (rc->state == CONN_DOWN && !rc->ac && rc->next_attempt_ms < t)
            t = rc->next_attempt_ms;
        /* waiting for the fence: the ingest thread's replies do not wake
         * us, so look again soon */
        if (rc == &b->rsub && rc->state == CONN_DOWN && !rc->ac && b->sub_fencing &&
            rc->next_attempt_ms <= mrb_now_ms())
            t = mrb_now_ms() + FENCE_POLL_MS;
        if (rc->state == CONN_CONNECTING && rc->deadline_ms < t)
            t = rc->deadline_ms;
    }
    return t;
}

int mrb_redis_pollfds(mrb_bridge *b, struct pollfd *pfd, mrb_rconn **owner)
{
    mrb_rconn *rcs[3] = {&b->rpub, &b->rsub, &b->rread};
    int n = 0;
    /* Flow control: while the broker is connected and only slower than
     * Redis (a burst), stop reading the subscriber once out_q is half full,
     * so messages wait in the socket and in Redis's output buffer instead of
     * being dropped from out_q; one read (16 KiB) adds far less than the
     * other half. While the broker is down, out_q drops the oldest as
     * documented (Redis would otherwise cut off a subscriber that stops
     * reading for long: client-output-buffer-limit pubsub). Only once the
     * subscriber is up: its SUBSCRIBE confirmations have a deadline. */
    int hold_sub = mrb_mqtt_ready(b) && b->rsub.state == CONN_UP && !b->rsub.draining &&
                   (b->out_q.count * 2 >= b->out_q.max_count ||
                    b->out_q.bytes * 2 >= b->out_q.max_bytes);
    /* the ingest thread waits for echo room: the copies are in there */
    if (atomic_load(&b->ing.echo_wait))
        hold_sub = 0;
    if (hold_sub && !b->sub_held)
        b->sub_check_ms = mrb_now_ms() + sub_check_every(b);
    b->sub_held = hold_sub;
    for (int i = 0; i < 3; i++) {
        mrb_rconn *rc = rcs[i];
        int held = hold_sub && rc == &b->rsub && rc->want_read;
        int want_read = rc->want_read && !held;
        if (!rc->ac || (!want_read && !rc->want_write && !held))
            continue;
        pfd[n].fd = rc->ac->c.fd;
        /* held: only whether the server closed it (read then, to the end) */
        pfd[n].events = (short)((want_read ? POLLIN : 0) | (held ? POLLRDHUP : 0) |
                                (rc->want_write ? POLLOUT : 0));
        pfd[n].revents = 0;
        owner[n++] = rc;
    }
    return n;
}

void mrb_redis_handle(mrb_rconn *rc, short revents)
{
    /* A read may end in an error that frees the context: re-check rc->ac. */
    if (rc->ac && (revents & (POLLIN | POLLERR | POLLHUP | POLLRDHUP)))
        redisAsyncHandleRead(rc->ac);
    if (rc->ac && (revents & POLLOUT))
        redisAsyncHandleWrite(rc->ac);
}

mrb_err mrb_redis_command(mrb_rconn *rc, redisCallbackFn *fn, void *priv,
                          int argc, const char **argv, const size_t *lens)
{
    if (rc->state != CONN_UP || !rc->ac)
        return MRB_ERR_CONN;
    if (redisAsyncCommandArgv(rc->ac, fn, priv, argc, argv, lens) != REDIS_OK)
        return MRB_ERR_CONN;
    sent_cmd(rc);
    return MRB_OK;
}

/* For stream.c's reply callbacks. */
void mrb_redis_got_reply(mrb_rconn *rc) { got_reply(rc); }

static int has_sub(const mrb_sub *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return 1;
    return 0;
}

/* Send a reload's subscription changes (the fence is done). */
static void send_diff(mrb_bridge *b)
{
    mrb_rconn *rc = &b->rsub;
    size_t added = 0;
    int ok = 1;
    for (size_t i = 0; i < b->n_sub_diff && rc->ac && ok; i++) {
        const char *d = b->sub_diff[i];
        static const char *const fmt[] = {"SUBSCRIBE %s", "PSUBSCRIBE %s",
                                          "UNSUBSCRIBE %s", "PUNSUBSCRIBE %s"};
        int k = d[0] - '0';
        added += k < 2;
        /* the unsubscribe replies come to the channel's callback
         * (on_sub_reply), which ignores them */
        ok = redisAsyncCommand(rc->ac, k < 2 ? on_sub_reply : NULL, NULL, fmt[k],
                               d + 1) == REDIS_OK;
    }
    free_diff(b);
    if (!ok) {
        b->c.redis_call_failed++;
        mrb_redis_reset(rc, "cannot queue the subscription changes of a reload "
                        "(out of memory)");
        return;
    }
    /* the kept ones are confirmed; the new ones' replies count on from
     * here (mrb_redis_sub_in_place) */
    rc->confirmed = b->routes.n_redis_sub - added;
    if (rc->confirmed >= b->routes.n_redis_sub)
        sub_confirmed(b); /* only removals */
}

static int diff_add(mrb_bridge *b, int kind, const char *name)
{
    char **v = realloc(b->sub_diff, (b->n_sub_diff + 1) * sizeof(*v));
    if (!v)
        return 0;
    b->sub_diff = v;
    size_t n = strlen(name);
    char *d = malloc(n + 2);
    if (!d)
        return 0;
    d[0] = (char)('0' + kind);
    memcpy(d + 1, name, n + 1);
    b->sub_diff[b->n_sub_diff++] = d;
    return 1;
}

void mrb_redis_apply_routes(mrb_bridge *b, const mrb_routes *old, size_t *added,
                            size_t *removed)
{
    const mrb_routes *t = &b->routes;
    mrb_rconn *rc = &b->rsub;
    *added = *removed = 0;
    for (size_t i = 0; i < old->n_redis_sub; i++)
        *removed += !has_sub(t->redis_sub, t->n_redis_sub, old->redis_sub[i].name);
    for (size_t i = 0; i < t->n_redis_sub; i++)
        *added += !has_sub(old->redis_sub, old->n_redis_sub, t->redis_sub[i].name);
    if ((*added == 0 && *removed == 0) || !rc->ac || b->stopping)
        return; /* a connection made later subscribes from the new table */
    int ok = 1;
    /* Up: change only the difference, so the unchanged subscriptions keep
     * delivering; subscribes first. After the fence (echo.h): the changes
     * go out once the PUBLISHes appended before this reload are answered. */
    for (size_t i = 0; ok && rc->state == CONN_UP && i < t->n_redis_sub; i++) {
        const mrb_sub *s = &t->redis_sub[i];
        if (!has_sub(old->redis_sub, old->n_redis_sub, s->name))
            ok = diff_add(b, s->exact ? 0 : 1, s->name);
    }
    for (size_t i = 0; ok && rc->state == CONN_UP && i < old->n_redis_sub; i++) {
        const mrb_sub *s = &old->redis_sub[i];
        if (!has_sub(t->redis_sub, t->n_redis_sub, s->name))
            ok = diff_add(b, s->exact ? 2 : 3, s->name);
    }
    if (t->n_redis_sub == 0 || rc->state != CONN_UP || !ok) {
        /* nothing left to subscribe, still confirming the old set, or out
         * of memory: close; a new connection (if needed) subscribes the new
         * table */
        free_diff(b);
        rc->state = CONN_DOWN; /* first: not an outage (rconn_failed_as) */
        rc->confirmed = 0;
        redisAsyncFree(rc->ac);
        rc->next_attempt_ms = 0;
        return;
    }
    b->sub_echo_on = 0;
    mrb_echo_redis_fence(b->echo);
    if (mrb_echo_redis_fenced(b->echo))
        send_diff(b);
}

void mrb_redis_close_reader(mrb_bridge *b)
{
    b->rread.state = CONN_DOWN; /* first: not an outage (rconn_failed_as) */
    if (b->rread.ac)
        redisAsyncFree(b->rread.ac);
}

int mrb_redis_sub_in_place(const mrb_bridge *b)
{
    return !rconn_needed(&b->rsub) ||
           (b->rsub.state == CONN_UP && !b->n_sub_diff &&
            b->rsub.confirmed >= b->routes.n_redis_sub);
}

void mrb_redis_close_sub(mrb_bridge *b)
{
    mrb_rconn *rcs[2] = {&b->rsub, &b->rread};
    for (int i = 0; i < 2; i++) {
        rcs[i]->state = CONN_DOWN; /* first: not an outage (rconn_failed_as) */
        if (rcs[i]->ac)
            redisAsyncFree(rcs[i]->ac);
    }
}

void mrb_redis_destroy(mrb_bridge *b)
{
    mrb_rconn *rcs[3] = {&b->rsub, &b->rread, &b->rpub};
    for (int i = 0; i < 3; i++)
        if (rcs[i]->ac)
            redisAsyncFree(rcs[i]->ac);
}
