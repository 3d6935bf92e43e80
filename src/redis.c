/*
 * redis.c - the Redis edge: two hiredis async contexts driven by the main
 * thread's poll() loop (hiredis never owns the loop; the ev hooks below only
 * record whether it wants to read or write).
 *
 *   publisher  - AUTH/SELECT, then pipelined PUBLISHes; at most
 *                MRB_REDIS_WINDOW replies outstanding.
 *   subscriber - AUTH, then SUBSCRIBE/PSUBSCRIBE for every Redis-side
 *                subscription of the route table, in table order.
 *
 * Each context is created and freed here on the main thread only. hiredis
 * frees a context itself after a connection error; ev_cleanup clears our
 * pointer when that happens, so rc->ac is NULL exactly when there is none.
 */
#include <hiredis/hiredis.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "bridge_int.h"

static void ev_add_read(void *p) { ((mrb_rconn *)p)->want_read = 1; }
static void ev_del_read(void *p) { ((mrb_rconn *)p)->want_read = 0; }
static void ev_add_write(void *p) { ((mrb_rconn *)p)->want_write = 1; }
static void ev_del_write(void *p) { ((mrb_rconn *)p)->want_write = 0; }
static void ev_cleanup(void *p)
{
    mrb_rconn *rc = p;
    rc->want_read = rc->want_write = 0;
    rc->ac = NULL;
}

static int rconn_needed(const mrb_rconn *rc)
{
    /* no Redis-to-MQTT route: no subscriber connection at all */
    return rc != &rc->b->rsub || rc->b->routes.n_redis_sub > 0;
}

int mrb_redis_pub_ready(const mrb_bridge *b) { return b->rpub.state == CONN_UP; }

int mrb_redis_sub_ready(const mrb_bridge *b)
{
    return !rconn_needed(&b->rsub) || b->rsub.state == CONN_UP;
}

static void side_maybe_up(mrb_bridge *b)
{
    if (!b->redis_outage_logged || !mrb_redis_pub_ready(b) || !mrb_redis_sub_ready(b))
        return;
    mrb_info("redis: reconnected to %s after %.1f s", b->redis_url,
             (double)(mrb_now_ms() - b->redis_down_since_ms) / 1000.0);
    b->redis_outage_logged = 0;
}

/* The connection failed or was lost: log the outage once per side, schedule
 * the next attempt. Idempotent. */
static void rconn_failed(mrb_rconn *rc, const char *why)
{
    mrb_bridge *b = rc->b;
    if (rc->state == CONN_DOWN)
        return;
    int was_up = rc->state == CONN_UP;
    int64_t now = mrb_now_ms();
    rc->state = CONN_DOWN;
    rc->confirmed = 0;
    b->ready = 0;
    snprintf(rc->last_error, sizeof(rc->last_error), "%s", why);
    int64_t delay = mrb_backoff_next(&rc->backoff);
    rc->next_attempt_ms = now + delay;
    if (b->stopping)
        return;
    if (!b->redis_outage_logged) {
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

static void rconn_up(mrb_rconn *rc)
{
    rc->state = CONN_UP;
    mrb_backoff_reset(&rc->backoff);
    mrb_debug("redis %s: up", rc->name);
    side_maybe_up(rc->b);
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
    rconn_failed(rc, status == REDIS_OK ? "closed" :
                 (ac->errstr[0] ? ac->errstr : "connection error"));
}

/* A reply to AUTH or SELECT during set-up: an error ends this attempt. */
static void on_setup_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        char why[240];
        snprintf(why, sizeof(why), "%s refused: %s", (const char *)priv,
                 reply->str);
        rconn_failed(rc, why); /* logs it, once per outage */
        redisAsyncDisconnect(ac);
    }
}

static void on_ping_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    if (!reply || rc->state != CONN_CONNECTING)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* NOAUTH, LOADING, MISCONF...: say so instead of timing out */
        on_setup_reply(ac, r, "PING");
        return;
    }
    rconn_up(rc);
}

static void on_publish_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_bridge *b = rc->b;
    rc->outstanding--;
    rc->outstanding_bytes -= (size_t)(uintptr_t)priv;
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        b->c.redis_out++;
        return;
    }
    /* NULL: the connection went away before Redis answered; whether the
     * message got through is unknown, so it counts as lost. */
    b->c.dropped_send_failed++;
    uint64_t sup;
    if (mrb_ratelimit_allow(&b->rl_send, mrb_now_ms(), &sup))
        mrb_warn("redis: PUBLISH %s (%llu similar not logged); "
                 "dropped_send_failed=%llu",
                 reply ? reply->str : "lost with the connection",
                 (unsigned long long)sup,
                 (unsigned long long)b->c.dropped_send_failed);
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
        rconn_failed(rc, why); /* logs it, once per outage */
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
        if (++rc->confirmed == b->routes.n_redis_sub && rc->state == CONN_CONNECTING)
            rconn_up(rc);
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
    rc->deadline_ms = now + MRB_CONNECT_TIMEOUT_MS;

    if (u->password && u->user)
        redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s %s", u->user,
                          u->password);
    else if (u->password)
        redisAsyncCommand(ac, on_setup_reply, "AUTH", "AUTH %s", u->password);
    if (rc == &b->rpub) {
        if (u->db)
            redisAsyncCommand(ac, on_setup_reply, "SELECT", "SELECT %d", u->db);
        redisAsyncCommand(ac, on_ping_reply, NULL, "PING");
        return;
    }
    /* Subscribe in table order: exact channels, then patterns. The bridge
     * acts on a message only for the first subscription that matches it,
     * and since Redis takes these in order, the active ones are always a
     * prefix of the list (see mrb_routes_redis_canonical). */
    for (size_t i = 0; i < b->routes.n_redis_sub; i++) {
        const mrb_sub *s = &b->routes.redis_sub[i];
        redisAsyncCommand(ac, on_sub_reply, NULL,
                          s->exact ? "SUBSCRIBE %s" : "PSUBSCRIBE %s", s->name);
    }
}

void mrb_redis_init(mrb_bridge *b)
{
    mrb_rconn *rcs[2] = {&b->rpub, &b->rsub};
    const char *names[2] = {"publisher", "subscriber"};
    for (int i = 0; i < 2; i++) {
        memset(rcs[i], 0, sizeof(*rcs[i]));
        rcs[i]->name = names[i];
        rcs[i]->b = b;
        mrb_backoff_init(&rcs[i]->backoff, b->cfg->reconnect_min_ms,
                         b->cfg->reconnect_max_ms,
                         (uint64_t)mrb_now_ms() * 2654435761u + (uint64_t)i);
    }
}

void mrb_redis_tick(mrb_bridge *b, int64_t now)
{
    mrb_rconn *rcs[2] = {&b->rpub, &b->rsub};
    for (int i = 0; i < 2; i++) {
        mrb_rconn *rc = rcs[i];
        if (!rconn_needed(rc) || (b->stopping && rc == &b->rsub))
            continue;
        if (rc->state == CONN_DOWN && !rc->ac && now >= rc->next_attempt_ms) {
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
    const mrb_rconn *rcs[2] = {&b->rpub, &b->rsub};
    int64_t t = INT64_MAX;
    for (int i = 0; i < 2; i++) {
        const mrb_rconn *rc = rcs[i];
        /* the same conditions as mrb_redis_tick: a timer it would not act
         * on would make poll() spin */
        if (!rconn_needed(rc) || (b->stopping && rc == &b->rsub))
            continue;
        if (rc->state == CONN_DOWN && !rc->ac && rc->next_attempt_ms < t)
            t = rc->next_attempt_ms;
        if (rc->state == CONN_CONNECTING && rc->deadline_ms < t)
            t = rc->deadline_ms;
    }
    return t;
}

int mrb_redis_pollfds(mrb_bridge *b, struct pollfd *pfd, mrb_rconn **owner)
{
    mrb_rconn *rcs[2] = {&b->rpub, &b->rsub};
    int n = 0;
    for (int i = 0; i < 2; i++) {
        mrb_rconn *rc = rcs[i];
        if (!rc->ac || (!rc->want_read && !rc->want_write))
            continue;
        pfd[n].fd = rc->ac->c.fd;
        pfd[n].events = (short)((rc->want_read ? POLLIN : 0) |
                                (rc->want_write ? POLLOUT : 0));
        pfd[n].revents = 0;
        owner[n++] = rc;
    }
    return n;
}

void mrb_redis_handle(mrb_rconn *rc, short revents)
{
    /* A read may end in an error that frees the context: re-check rc->ac. */
    if (rc->ac && (revents & (POLLIN | POLLERR | POLLHUP)))
        redisAsyncHandleRead(rc->ac);
    if (rc->ac && (revents & POLLOUT))
        redisAsyncHandleWrite(rc->ac);
}

mrb_err mrb_redis_publish(mrb_bridge *b, const char *channel, size_t clen,
                          const char *payload, size_t plen)
{
    mrb_rconn *rc = &b->rpub;
    if (rc->state != CONN_UP || !rc->ac)
        return MRB_ERR_CONN;
    if (rc->outstanding >= MRB_REDIS_WINDOW ||
        rc->outstanding_bytes >= MRB_REDIS_WINDOW_BYTES)
        return MRB_ERR_FULL;
    size_t bytes = clen + plen;
    if (redisAsyncCommand(rc->ac, on_publish_reply, (void *)(uintptr_t)bytes,
                          "PUBLISH %b %b", channel, clen, payload, plen) != REDIS_OK)
        return MRB_ERR_CONN;
    rc->outstanding++;
    rc->outstanding_bytes += bytes;
    return MRB_OK;
}

void mrb_redis_close_sub(mrb_bridge *b)
{
    if (b->rsub.ac)
        redisAsyncFree(b->rsub.ac);
    b->rsub.state = CONN_DOWN;
}

void mrb_redis_destroy(mrb_bridge *b)
{
    if (b->rsub.ac)
        redisAsyncFree(b->rsub.ac);
    if (b->rpub.ac)
        redisAsyncFree(b->rpub.ac);
}
