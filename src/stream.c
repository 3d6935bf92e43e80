/*
 * stream.c - stream mode, Redis -> MQTT: find the stream keys of the stream
 * routes, read them through a consumer group, publish each entry to MQTT and
 * XACK it once the broker has it (PUBACK for QoS 1). Main thread only, but
 * for sx_done (see bridge_int.h).
 *
 * Keys. Exact keys are used as they are (XGROUP CREATE ... MKSTREAM).
 * Wildcard keys are found with SCAN MATCH <pattern> TYPE stream, on each
 * (re)connect of the publisher and every redis.scan_interval seconds; each
 * new key gets the group. The bridge's group is "mqtt-redis-bridge:<id>",
 * its consumer "<id>": every bridge gets every entry, and a bridge that
 * restarts finds its own pending entries again.
 *
 * Where a new group starts: at "$" (entries added from now on) for the keys
 * found by the first scan of this process, so that a new bridge does not
 * replay a stream's history; at "0" (everything the stream holds) for keys
 * found later, which were created after that scan.
 *
 * Reading. One XREADGROUP at a time on the reader connection. After the
 * reader (re)connects, each key is first read from "0" (our pending
 * entries: read before, not acknowledged, e.g. before a crash), page by
 * page, then with ">" (new entries, blocking up to redis.keepalive). Keys
 * found while a read blocks are added with CLIENT UNBLOCK. Reads stop while
 * the broker is down or MRB_SX_WINDOW entries are on their way: the stream
 * holds the rest (backpressure, no drop).
 *
 * Loops: an entry the bridge itself added (field "origin" = our id) is
 * acknowledged and not published.
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"

/* ---- keys ---- */

static mrb_skey *key_find(mrb_bridge *b, const char *name, size_t len)
{
    for (size_t i = 0; i < b->n_skeys; i++)
        if (strlen(b->skeys[i].name) == len && memcmp(b->skeys[i].name, name, len) == 0)
            return &b->skeys[i];
    return NULL;
}

static void key_add(mrb_bridge *b, const char *name, size_t len)
{
    if (key_find(b, name, len))
        return;
    if (b->n_skeys == MRB_STREAM_KEYS_MAX) {
        static int warned;
        if (!warned++)
            mrb_warn("stream: more than %d stream keys match the stream routes; "
                     "the others are not read", MRB_STREAM_KEYS_MAX);
        return;
    }
    mrb_skey *k = &b->skeys[b->n_skeys];
    if (!(k->name = malloc(len + 1)))
        return;
    memcpy(k->name, name, len);
    k->name[len] = '\0';
    k->pending = 1;
    strcpy(k->last_id, "0");
    b->n_skeys++;
    b->keys_dirty = 1;
    mrb_debug("stream: following key '%s'", k->name);
}

static void keys_clear(mrb_bridge *b)
{
    for (size_t i = 0; i < b->n_skeys; i++)
        free(b->skeys[i].name);
    b->n_skeys = 0;
}

mrb_err mrb_stream_init(mrb_bridge *b)
{
    snprintf(b->group, sizeof(b->group), "mqtt-redis-bridge:%s", b->cfg->id);
    mrb_queue_init(&b->sx_q, SIZE_MAX, SIZE_MAX); /* bounded by MRB_SX_WINDOW */
    if (b->routes.n_stream_sub == 0)
        return MRB_OK;
    b->skeys = calloc(MRB_STREAM_KEYS_MAX, sizeof(*b->skeys));
    return b->skeys ? MRB_OK : MRB_ERR_NOMEM;
}

void mrb_stream_free(mrb_bridge *b)
{
    keys_clear(b);
    free(b->skeys);
    b->skeys = NULL;
    mrb_queue_clear(&b->sx_q);
    mrb_sx *sx = b->sx_done;
    while (sx) {
        mrb_sx *next = sx->next;
        free(sx);
        sx = next;
    }
    b->sx_done = NULL;
}

int mrb_stream_needed(const mrb_bridge *b) { return b->routes.n_stream_sub > 0; }

/* ---- XACK ---- */

static void on_xack_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_redis_got_reply(rc);
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        rc->b->c.stream_acked += (uint64_t)reply->integer;
}

static void on_plain_reply(redisAsyncContext *ac, void *r, void *priv)
{
    mrb_redis_got_reply(ac->data);
}

/* If the publisher is down the entry stays pending and is read again (a
 * duplicate, never a loss). */
static void xack(mrb_bridge *b, const char *key, size_t klen, const char *id,
                 size_t idlen)
{
    const char *argv[] = {"XACK", key, b->group, id};
    size_t lens[] = {4, klen, strlen(b->group), idlen};
    mrb_redis_command(&b->rpub, on_xack_reply, NULL, 4, argv, lens);
}

/* ---- discovery ---- */

static void scan_next(mrb_bridge *b, const char *cursor);

/* Only patterns need scanning again: exact keys are set up on connect. */
static int has_patterns(const mrb_bridge *b)
{
    const mrb_routes *t = &b->routes;
    for (size_t i = 0; i < t->n_stream_sub; i++) /* any order after a reload */
        if (!t->stream_sub[i].exact)
            return 1;
    return 0;
}

static void scan_done_one(mrb_bridge *b)
{
    if (--b->scan_busy > 0)
        return;
    b->scanned_once = 1;
    if (b->scan_from_now) {
        /* the keys of the routes a reload added are followed now: a key of
         * theirs found from here on is new, read from its start */
        for (size_t i = 0; i < b->routes.n_stream_sub; i++)
            b->routes.stream_sub[i].fresh = 0;
    }
    b->scan_from_now = 0;
    b->next_scan_ms = b->cfg->scan_interval > 0 && has_patterns(b)
                          ? mrb_now_ms() + b->cfg->scan_interval * 1000
                          : INT64_MAX;
    if (b->rescan) { /* the routes changed during this scan */
        b->rescan = 0;
        b->scan_from_now = 1;
        b->next_scan_ms = mrb_now_ms();
    }
    mrb_bridge_wake(b); /* ready may now be logged, reads may start */
}

static void on_group_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_bridge *b = rc->b;
    char *key = priv;
    mrb_redis_got_reply(rc);
    if (reply && (reply->type != REDIS_REPLY_ERROR ||
                  strncmp(reply->str, "BUSYGROUP", 9) == 0)) {
        key_add(b, key, strlen(key));
    } else if (reply) {
        char esc[MRB_LOG_ESCAPE_MAX];
        mrb_warn("stream: cannot create the consumer group on '%s': %s",
                 mrb_log_escape(key, strlen(key), esc, sizeof(esc)), reply->str);
    }
    free(key);
    if (reply)
        scan_done_one(b);
    else
        b->scan_busy = 0; /* the connection went: scanned again on return */
}

/* Does key match only stream routes that a reload just added (fresh)? Such
 * a key existed before the route: its group starts at '$', as at a first
 * start. A key that a route held before matches is new: read from '0'. */
static int only_fresh(const mrb_bridge *b, const char *key, size_t len)
{
    int any = 0;
    for (size_t i = 0; i < b->routes.n_stream_sub; i++) {
        const mrb_sub *s = &b->routes.stream_sub[i];
        int match = s->exact ? strlen(s->name) == len && memcmp(s->name, key, len) == 0
                             : mrb_glob_matches(s->name, key, len);
        if (match && !s->fresh)
            return 0;
        any |= match;
    }
    return any;
}

static void group_create(mrb_bridge *b, const char *key, size_t len, int mkstream)
{
    char *copy = malloc(len + 1);
    if (!copy)
        return;
    memcpy(copy, key, len);
    copy[len] = '\0';
    const char *argv[] = {"XGROUP", "CREATE", key, b->group,
                          b->scanned_once && !only_fresh(b, key, len) ? "0" : "$",
                          "MKSTREAM"};
    size_t lens[] = {6, 6, len, strlen(b->group), 1, 8};
    if (mrb_redis_command(&b->rpub, on_group_reply, copy, mkstream ? 6 : 5, argv,
                          lens) != MRB_OK) {
        free(copy);
        return;
    }
    b->scan_busy++;
}

static void on_scan_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_bridge *b = rc->b;
    int full = priv != NULL;
    mrb_redis_got_reply(rc);
    if (!reply) {
        b->scan_busy = 0;
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_ARRAY) {
        redisReply *keys = reply->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *k = keys->element[i];
            if (k->type != REDIS_REPLY_STRING)
                continue;
            /* the pattern may match keys no route can map: those too are
             * read, and dropped as unmappable, like channel messages */
            if (full || !key_find(b, k->str, k->len))
                group_create(b, k->str, k->len, 0);
        }
        if (strcmp(reply->element[0]->str, "0") != 0) {
            scan_next(b, reply->element[0]->str);
            scan_done_one(b);
            return;
        }
    } else if (reply->type == REDIS_REPLY_ERROR) {
        mrb_warn("stream: SCAN refused: %s", reply->str);
    }
    b->scan_sub++;
    scan_next(b, "0");
    scan_done_one(b);
}

/* Continue the scan at stream_sub[scan_sub] (cursor for a pattern). */
static void scan_next(mrb_bridge *b, const char *cursor)
{
    const mrb_routes *t = &b->routes;
    while (b->scan_sub < t->n_stream_sub && t->stream_sub[b->scan_sub].exact) {
        const char *k = t->stream_sub[b->scan_sub].name;
        if (b->scan_full || !key_find(b, k, strlen(k)))
            group_create(b, k, strlen(k), 1);
        b->scan_sub++;
    }
    if (b->scan_sub >= t->n_stream_sub)
        return;
    const char *pat = t->stream_sub[b->scan_sub].name;
    const char *argv[] = {"SCAN", cursor, "MATCH", pat, "COUNT", "1000", "TYPE",
                          "stream"};
    size_t lens[] = {4, strlen(cursor), 5, strlen(pat), 5, 4, 4, 6};
    if (mrb_redis_command(&b->rpub, on_scan_reply, b->scan_full ? b : NULL, 8,
                          argv, lens) == MRB_OK)
        b->scan_busy++;
}

static void scan_start(mrb_bridge *b, int full)
{
    if (!mrb_stream_needed(b) || b->scan_busy || !mrb_redis_pub_ready(b) ||
        b->stopping)
        return;
    b->scan_sub = 0;
    b->scan_full = full;
    b->scan_busy = 1; /* held until the chain is issued */
    scan_next(b, "0");
    scan_done_one(b);
}

void mrb_stream_on_pub_up(mrb_bridge *b)
{
    /* Redis may have restarted without its data: make sure of the groups */
    scan_start(b, 1);
}

static int stream_sub_has(const mrb_routes *t, const char *name)
{
    for (size_t i = 0; i < t->n_stream_sub; i++)
        if (strcmp(t->stream_sub[i].name, name) == 0)
            return 1;
    return 0;
}

mrb_err mrb_stream_apply_routes(mrb_bridge *b, const mrb_routes *old,
                                size_t *added, size_t *removed)
{
    const mrb_routes *t = &b->routes;
    *added = *removed = 0;
    for (size_t i = 0; i < old->n_stream_sub; i++)
        *removed += !stream_sub_has(t, old->stream_sub[i].name);
    for (size_t i = 0; i < t->n_stream_sub; i++)
        *added += !stream_sub_has(old, t->stream_sub[i].name);
    if (*added == 0 && *removed == 0)
        return MRB_OK;
    if (t->n_stream_sub == 0) {
        /* no stream route to MQTT any more: stop reading (what was read and
         * not acknowledged stays pending in Redis) */
        mrb_redis_close_reader(b);
        mrb_stream_on_reader_down(b);
        keys_clear(b);
        return MRB_OK;
    }
    if (!b->skeys && !(b->skeys = calloc(MRB_STREAM_KEYS_MAX, sizeof(*b->skeys))))
        return MRB_ERR_NOMEM;
    /* forget the keys no stream route matches now */
    size_t k = 0;
    for (size_t i = 0; i < b->n_skeys; i++) {
        mrb_skey *key = &b->skeys[i];
        int keep = 0;
        for (size_t j = 0; j < t->n_stream_sub && !keep; j++) {
            const mrb_sub *s = &t->stream_sub[j];
            /* entries below n_skeys have a name (key_add); the analyzer
             * does not tie the count to them */
            keep = s->exact ? strcmp(s->name, key->name) == 0 // NOLINT(clang-analyzer-core.NonNullParamChecker)
                            : mrb_glob_matches(s->name, key->name, strlen(key->name)); // NOLINT(clang-analyzer-core.NonNullParamChecker)
        }
        if (keep)
            b->skeys[k++] = *key;
        else
            free(key->name);
    }
    b->n_skeys = k;
    b->keys_dirty = 1; /* a blocked read is ended and re-issued */
    if (!b->scanned_once) {
        /* the first stream route: its first scan, as on connect (a scan
         * under way already reads the new table) */
        if (!b->scan_busy)
            scan_start(b, 1);
        return MRB_OK;
    }
    if (b->scan_busy) {
        b->rescan = 1;
    } else {
        b->scan_from_now = 1;
        b->next_scan_ms = 0;
    }
    return MRB_OK;
}

/* ---- reading ---- */

void mrb_stream_on_reader_up(mrb_bridge *b)
{
    for (size_t i = 0; i < b->n_skeys; i++) {
        b->skeys[i].pending = 1;
        strcpy(b->skeys[i].last_id, "0");
    }
}

/* The read in flight is answered or gone: no key's answer is stale. */
static void keys_unstale(mrb_bridge *b)
{
    for (size_t i = 0; i < b->n_skeys; i++)
        b->skeys[i].stale = 0;
}

void mrb_stream_on_reader_down(mrb_bridge *b)
{
    /* not acknowledged, so still pending in Redis: read again later */
    mrb_queue_clear(&b->sx_q);
    b->rread.reading = b->rread.blocked = 0;
    keys_unstale(b);
}

static void warn_malformed(mrb_bridge *b, const char *key, size_t klen)
{
    uint64_t sup;
    char esc[MRB_LOG_ESCAPE_MAX];
    b->c.dropped_malformed++;
    if (mrb_ratelimit_allow(&b->rl_malformed, mrb_now_ms(), &sup))
        mrb_warn("dropped entry of stream '%s': it has no 'payload' field; "
                 "dropped_malformed=%llu (%llu similar not logged)",
                 mrb_log_escape(key, klen, esc, sizeof(esc)),
                 (unsigned long long)b->c.dropped_malformed,
                 (unsigned long long)sup);
}

/* One entry read from key: queue it for MQTT, or acknowledge it as done
 * with (echo, malformed, too large, unmappable). */
static void take_entry(mrb_bridge *b, const redisReply *key, const redisReply *e,
                       int reread)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 ||
        e->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *id = e->element[0];
    const redisReply *f = e->elements > 1 ? e->element[1] : NULL;
    const redisReply *payload = NULL, *origin = NULL;
    for (size_t i = 0; f && f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
        const redisReply *n = f->element[i], *v = f->element[i + 1];
        if (n->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (n->len == 7 && memcmp(n->str, "payload", 7) == 0)
            payload = v;
        else if (n->len == 6 && memcmp(n->str, "origin", 6) == 0)
            origin = v;
    }
    b->c.stream_in++;
    if (reread)
        b->c.stream_reread++;
    if (!f || f->type != REDIS_REPLY_ARRAY) {
        /* in our pending list but trimmed away (MAXLEN) meanwhile */
        b->c.dropped_malformed++;
        xack(b, key->str, key->len, id->str, id->len);
        return;
    }
    if (origin && origin->len == strlen(b->cfg->id) &&
        memcmp(origin->str, b->cfg->id, origin->len) == 0) {
        b->c.echoes++;
        xack(b, key->str, key->len, id->str, id->len);
        return;
    }
    if (!payload) {
        warn_malformed(b, key->str, key->len);
        xack(b, key->str, key->len, id->str, id->len);
        return;
    }
    if ((long)payload->len > b->cfg->max_payload) {
        mrb_bridge_warn_too_large(b, "Redis stream", key->str, key->len, payload->len);
        xack(b, key->str, key->len, id->str, id->len);
        return;
    }
    mrb_targets *tg = &b->tg;
    if (mrb_routes_map_redis(&b->routes, MRB_MODE_STREAM, key->str, key->len, tg) !=
            MRB_OK ||
        tg->n == 0) {
        mrb_bridge_warn_unmappable(b, "Redis stream", key->str, key->len);
        xack(b, key->str, key->len, id->str, id->len);
        return;
    }
    char tag[MRB_TOPIC_MAX + 64];
    size_t tlen = 0;
    if (key->len + 1 + id->len < sizeof(tag)) {
        memcpy(tag, key->str, key->len);
        tag[key->len] = '\0';
        memcpy(tag + key->len + 1, id->str, id->len);
        tlen = key->len + 1 + id->len;
    }
    /* unwrap routes: one try for all; a payload that is not an envelope
     * is dropped on those routes (counted) */
    char *unwrapped = NULL;
    size_t ulen = 0, last = tg->n;
    int unwrap_state = 0;
    for (size_t i = 0; i < tg->n; i++) {
        if (!b->routes.route[tg->v[i].route].unwrap) {
            last = i;
        } else {
            if (unwrap_state == 0)
                unwrap_state = mrb_bridge_unwrap(b, "Redis stream", key->str,
                                                 key->len, payload->str,
                                                 payload->len, &unwrapped, &ulen)
                                   ? 1 : -1;
            if (unwrap_state > 0)
                last = i;
        }
    }
    if (last == tg->n) { /* nothing to publish */
        xack(b, key->str, key->len, id->str, id->len);
        return;
    }
    int64_t t0_us = mrb_now_us();
    for (size_t i = 0; i <= last; i++) {
        unsigned ri = (unsigned)tg->v[i].route;
        const mrb_route *r = &b->routes.route[ri];
        if (r->unwrap && unwrap_state < 0)
            continue;
        /* the entry is acknowledged when the last of its topics has it */
        mrb_msg *m = mrb_msg_new_tagged(tg->buf + tg->v[i].off, tg->v[i].len,
                                        r->unwrap ? unwrapped : payload->str,
                                        r->unwrap ? ulen : payload->len, tag,
                                        i == last ? tlen : 0, r->qos, r->retain);
        if (!m) {
            b->c.dropped_send_failed++; /* stays pending: read again later */
            break;
        }
        m->route = ri;
        m->taken_us = t0_us;
        mrb_stats_count(&b->st.r[ri].r2m.in, 1);
        mrb_stats_count(&b->st.r[ri].r2m.bytes_in, payload->len);
        /* a rate-limited route: the entry waits for its token, whatever
         * its QoS (an entry is durable: slowed, not dropped) */
        if (b->limits && mrb_bucket_limited(&b->limits[ri].to_mqtt))
            m->seq = 1;
        mrb_queue_push(&b->sx_q, m);
    }
    free(unwrapped);
}

static void on_read_reply(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    mrb_rconn *rc = ac->data;
    mrb_bridge *b = rc->b;
    mrb_redis_got_reply(rc);
    rc->reading = rc->blocked = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY)
        keys_unstale(b);
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        uint64_t sup;
        if (mrb_ratelimit_allow(&b->rl_send, mrb_now_ms(), &sup))
            mrb_warn("stream: XREADGROUP refused: %s (%llu similar not logged)",
                     reply->str, (unsigned long long)sup);
        if (strncmp(reply->str, "NOGROUP", 7) == 0) {
            /* a key or group was deleted: find the keys again */
            keys_clear(b);
            b->next_scan_ms = mrb_now_ms();
        }
        b->read_after_ms = mrb_now_ms() + 1000;
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        mrb_bridge_wake(b); /* nil: BLOCK timed out or unblocked */
        return;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *s = reply->element[i];
        if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
            s->element[0]->type != REDIS_REPLY_STRING ||
            s->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        redisReply *key = s->element[0], *entries = s->element[1];
        mrb_skey *k = key_find(b, key->str, key->len);
        if (k && k->stale)
            continue; /* read before an entry of it failed: these stay
                       * pending and come again, in order, from "0" */
        int reread = k && k->pending;
        for (size_t j = 0; j < entries->elements; j++)
            take_entry(b, key, entries->element[j], reread);
        if (k && k->pending) {
            if (entries->elements == 0) {
                k->pending = 0; /* our pending entries are all out */
            } else {
                redisReply *last = entries->element[entries->elements - 1];
                if (last->type == REDIS_REPLY_ARRAY && last->elements > 0 &&
                    last->element[0]->len < sizeof(k->last_id))
                    snprintf(k->last_id, sizeof(k->last_id), "%s",
                             last->element[0]->str);
            }
        }
    }
    keys_unstale(b);
    mrb_bridge_wake(b);
}

static void read_next(mrb_bridge *b, int64_t now)
{
    mrb_rconn *rc = &b->rread;
    if (b->stopping || rc->state != CONN_UP || rc->reading || b->n_skeys == 0 ||
        !mrb_mqtt_ready(b) || now < b->read_after_ms)
        return;
    size_t busy = b->sx_q.count + b->sx_inflight;
    if (busy >= MRB_SX_WINDOW)
        return;
    size_t count = MRB_SX_WINDOW - busy;
    size_t per = (size_t)b->cfg->max_payload + MRB_TOPIC_MAX + MRB_MSG_OVERHEAD;
    size_t by_bytes = b->sx_q.bytes < (size_t)b->cfg->queue_bytes
                          ? ((size_t)b->cfg->queue_bytes - b->sx_q.bytes) / per : 0;
    if (by_bytes < count)
        count = by_bytes;
    if (count > MRB_STREAM_COUNT)
        count = MRB_STREAM_COUNT;
    if (count == 0) {
        if (b->sx_q.count > 0)
            return; /* wait for room */
        count = 1;
    }

    size_t n = 0, pending = 0;
    for (size_t i = 0; i < b->n_skeys; i++)
        pending += b->skeys[i].pending != 0;
    size_t nk = pending ? pending : b->n_skeys;
    const char **argv = malloc((9 + 2 * nk) * sizeof(*argv));
    size_t *lens = malloc((9 + 2 * nk) * sizeof(*lens));
    if (!argv || !lens) {
        free(argv);
        free(lens);
        return;
    }
    char cnt[24], blk[24];
    snprintf(cnt, sizeof(cnt), "%zu", count);
    snprintf(blk, sizeof(blk), "%ld", b->cfg->redis_keepalive * 1000);
#define ARG(s) (argv[n] = (s), lens[n] = strlen(argv[n]), n++)
    ARG("XREADGROUP");
    ARG("GROUP");
    ARG(b->group);
    ARG(b->cfg->id);
    ARG("COUNT");
    ARG(cnt);
    if (!pending) {
        ARG("BLOCK");
        ARG(blk);
    }
    ARG("STREAMS");
    for (size_t i = 0; i < b->n_skeys; i++)
        if (!pending || b->skeys[i].pending)
            ARG(b->skeys[i].name);
    for (size_t i = 0; i < b->n_skeys; i++)
        if (!pending || b->skeys[i].pending)
            ARG(pending ? b->skeys[i].last_id : ">");
#undef ARG
    if (mrb_redis_command(rc, on_read_reply, NULL, (int)n, argv, lens) == MRB_OK) {
        rc->reading = 1;
        rc->blocked = !pending;
        b->keys_dirty = 0;
        b->unblock_sent = 0;
    }
    free(argv);
    free(lens);
}

/* ---- publishing and acknowledging ---- */

/* An entry of k failed to publish: its later entries must not go out
 * before it does. Those queued and those of the read in flight are pending
 * in Redis as well, so they are dropped here and come again, in order,
 * when k is read from "0". (Those already in flight may still complete:
 * a connection loss fails them too.) */
static void key_rewind(mrb_bridge *b, mrb_skey *k, const char *tag, size_t klen)
{
    if (b->rread.reading)
        k->stale = 1;
    mrb_msg *prev = NULL, *m = b->sx_q.head;
    while (m) {
        if (m->tag_len > klen && memcmp(mrb_msg_tag(m), tag, klen + 1) == 0) {
            free(mrb_queue_unlink_after(&b->sx_q, prev));
            m = prev ? prev->next : b->sx_q.head;
        } else {
            prev = m;
            m = m->next;
        }
    }
}

/* Completed publishes: XACK the entries that MQTT has; an entry whose
 * publish failed stays pending, and its key is read from "0" again. */
static void collect_done(mrb_bridge *b)
{
    pthread_mutex_lock(&b->sx_lock);
    mrb_sx *sx = b->sx_done, *rev = NULL;
    b->sx_done = NULL;
    pthread_mutex_unlock(&b->sx_lock);
    while (sx) { /* oldest first */
        mrb_sx *next = sx->next;
        sx->next = rev;
        rev = sx;
        sx = next;
    }
    for (sx = rev; sx; sx = rev) {
        rev = sx->next;
        b->sx_inflight--;
        size_t klen = strlen(sx->tag);
        const char *id = sx->tag + klen + 1;
        if (sx->ok) {
            xack(b, sx->tag, klen, id, strlen(id));
        } else {
            mrb_skey *k = key_find(b, sx->tag, klen);
            if (k && !k->pending) {
                k->pending = 1;
                strcpy(k->last_id, "0");
            }
            if (k)
                key_rewind(b, k, sx->tag, klen);
        }
        free(sx);
    }
}

static void publish_queued(mrb_bridge *b)
{
    mrb_msg *m;
    b->sx_rate_wait_ms = 0;
    while ((m = b->sx_q.head) != NULL) {
        mrb_sx *sx = NULL;
        if (m->seq && b->limits && m->route < b->routes.n) {
            /* over the route's rate: no token, no publish (and with the
             * window full, no more reading either) */
            mrb_bucket *k = &b->limits[m->route].to_mqtt;
            int64_t now = mrb_now_ms();
            if (!mrb_bucket_take(k, now)) {
                b->sx_rate_wait_ms = now + mrb_bucket_wait_ms(k, now);
                return;
            }
            m->seq = 0;
        }
        if (m->tag_len) {
            sx = malloc(sizeof(*sx) + m->tag_len + 1);
            if (!sx)
                return;
            sx->b = b;
            sx->next = NULL;
            sx->ok = 0;
            sx->route = m->route;
            sx->bytes = m->payload_len;
            sx->t0_us = m->taken_us;
            memcpy(sx->tag, mrb_msg_tag(m), m->tag_len + 1);
        }
        mrb_echo_note_result noted = mrb_bridge_note_mqtt_publish(
            b, mrb_msg_name(m), m->name_len, mrb_msg_payload(m), m->payload_len);
        mrb_err err = noted == MRB_ECHO_FULL ? MRB_ERR_FULL : sx ? mrb_mqtt_publish_sx(b, mrb_msg_name(m), mrb_msg_payload(m),
                                               m->payload_len, m->qos, m->retain, sx)
                         : mrb_mqtt_publish(b, mrb_msg_name(m), mrb_msg_payload(m),
                                            m->payload_len, m->qos, m->retain,
                                            m->route, m->taken_us);
        if (err != MRB_OK)
            mrb_bridge_unnote_mqtt_publish(b, mrb_msg_name(m), m->name_len,
                                           mrb_msg_payload(m), m->payload_len, noted);
        if (err == MRB_ERR_FULL || err == MRB_ERR_CONN) {
            free(sx);
            return;
        }
        if (err != MRB_OK) {
            /* refused by Paho: it never will take it; do not loop on it */
            b->c.dropped_send_failed++;
            if (m->route < b->st.n)
                mrb_stats_count(&b->st.r[m->route].r2m.dropped_send_failed, 1);
            if (sx) {
                size_t klen = strlen(sx->tag);
                xack(b, sx->tag, klen, sx->tag + klen + 1, strlen(sx->tag + klen + 1));
                free(sx);
            }
        } else if (sx) {
            b->sx_inflight++;
        }
        free(mrb_queue_pop(&b->sx_q));
    }
}

void mrb_stream_pump(mrb_bridge *b)
{
    if (!mrb_stream_needed(b))
        return;
    collect_done(b);
    publish_queued(b);
    read_next(b, mrb_now_ms());
}

void mrb_stream_tick(mrb_bridge *b, int64_t now)
{
    if (!mrb_stream_needed(b) || b->stopping)
        return;
    if (now >= b->next_scan_ms && b->scanned_once)
        scan_start(b, 0);
    /* new keys while a read blocks: end it now rather than after BLOCK */
    if (b->keys_dirty && b->rread.reading && b->rread.blocked && !b->unblock_sent &&
        b->rread.client_id > 0 && mrb_redis_pub_ready(b)) {
        char id[24];
        snprintf(id, sizeof(id), "%lld", b->rread.client_id);
        const char *argv[] = {"CLIENT", "UNBLOCK", id};
        size_t lens[] = {6, 7, strlen(id)};
        if (mrb_redis_command(&b->rpub, on_plain_reply, NULL, 3, argv, lens) == MRB_OK)
            b->unblock_sent = 1;
    }
}

int64_t mrb_stream_next_timer(const mrb_bridge *b)
{
    if (!mrb_stream_needed(b) || b->stopping)
        return INT64_MAX;
    int64_t t = INT64_MAX;
    if (b->scanned_once && !b->scan_busy && mrb_redis_pub_ready(b))
        t = b->next_scan_ms;
    if (b->read_after_ms > mrb_now_ms() && b->read_after_ms < t)
        t = b->read_after_ms;
    return t;
}

int mrb_stream_drained(mrb_bridge *b)
{
    if (!mrb_stream_needed(b))
        return 1;
    pthread_mutex_lock(&b->sx_lock);
    int done_empty = b->sx_done == NULL;
    pthread_mutex_unlock(&b->sx_lock);
    /* the last XACKs answered, or no way to send them */
    return b->sx_inflight == 0 && done_empty &&
           (b->rpub.state != CONN_UP || b->rpub.cmds == 0);
}
