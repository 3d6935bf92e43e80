/*
 * replay_io.c - replay requests for stream routes: the I/O part.
 *
 * A device publishes a JSON request ({"topic": T, "count": N}, replay.h) to
 * bridge/<id>/replay; the bridge answers with the last N entries of the
 * stream that T maps to, oldest first, and then one end marker, on the
 * request's MQTT 5 Response Topic (with its Correlation Data), else on the
 * request's "response_topic", else on bridge/<id>/replay/response.
 * Replay is on when at least one route is in stream mode (any direction),
 * from the start or from the reload that brings the first one (it stays on
 * after: a request then gets an error answer). The state is made at start
 * either way, so that the receive thread never sees it appear; "on" is an
 * atomic it reads.
 *
 * Threads: Paho's receive thread calls mrb_replay_take(), which copies the
 * request (payload, Response Topic, Correlation Data) into a bounded list
 * under rp->lock and wakes main; it never calls Paho or hiredis. Main
 * (mrb_replay_pump) pops requests, parses them, sends XREVRANGE on the
 * publisher connection, and in the reply callback (main too: hiredis async
 * runs from the poll loop) queues the answers in rp->out, which the pump
 * publishes as the broker's window allows. Everything but the request list
 * and the receive thread's counters ([lock]) is main's.
 *
 * Bounds: at most MRB_REPLAY_QUEUE requests wait for main (more are
 * dropped, counted, logged rate-limited); the answers of all requests
 * together fit limits.queue_messages / limits.queue_bytes, or the request
 * is answered with an error instead (all or nothing, never a cut answer).
 * Shutdown waits (up to its timeout) until no request waits, no XREVRANGE
 * is in flight on a live connection and no answer is queued; what is left
 * then is dropped and counted (mrb_replay_closing, mrb_replay_clear).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "mrb/mem.h"
#include "mrb/replay.h"

#define MRB_REPLAY_QUEUE 16
#define ANSWER_QOS 1

/* A request as the receive thread copied it. */
typedef struct rreq {
    struct rreq *next;
    char *response_topic;        /* MQTT 5 Response Topic, or NULL */
    void *corr;                  /* MQTT 5 Correlation Data, or NULL */
    size_t corr_len;
    size_t len;                  /* payload bytes (0 if too_large) */
    int too_large;
    int corr_too_long;           /* Correlation Data over the limit */
    char payload[];
} rreq;

/* An XREVRANGE in flight: the reply callback's context (main's). */
typedef struct rjob {
    mrb_bridge *b;
    char *response_topic;
    void *corr;
    size_t corr_len;
    char *topic;
    char *key;
    long count;
} rjob;

typedef struct mrb_replay {
    atomic_int on;               /* main sets it once; any thread reads */
    char *topic;                 /* bridge/<id>/replay */
    char *default_response;      /* bridge/<id>/replay/response */
    pthread_mutex_t lock;
    rreq *head, *tail;           /* [lock] */
    size_t n;                    /* [lock] */
    uint64_t requests, dropped;  /* [lock] */
    mrb_ratelimit rl_full;       /* [lock] */
    /* main's */
    mrb_queue out;               /* answers; tag: kind, correlation data */
    size_t jobs;                 /* XREVRANGEs sent, reply not yet in */
    int closing;                 /* shutdown: replies now are hiredis's NULLs */
    size_t closing_dropped;      /* requests dropped that way */
    uint64_t messages, errors, main_dropped;
    mrb_ratelimit rl_error;
} mrb_replay;

/* Answer tag: one kind byte, then the correlation data; for an entry the
 * stream key and entry id follow, NUL-separated, after a 2-byte length of
 * the correlation data. Layout: kind | corr_len (2 bytes, big endian) |
 * corr | key '\0' id. */
enum { KIND_ENTRY = 'e', KIND_END_OK = 'o', KIND_END_ERROR = 'x' };

int mrb_replay_update(mrb_bridge *b)
{
    mrb_replay *rp = b->replay;
    if (!rp || atomic_load(&rp->on))
        return 0;
    for (size_t i = 0; i < b->routes.n; i++) {
        if (b->routes.route[i].mode == MRB_MODE_STREAM) {
            mrb_info("replay: requests on %s (stream routes), answers by default "
                     "on %s", rp->topic, rp->default_response);
            atomic_store(&rp->on, 1);
            return 1;
        }
    }
    return 0;
}

mrb_err mrb_replay_init(mrb_bridge *b)
{
    mrb_replay *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return MRB_ERR_NOMEM;
    size_t n = strlen(b->cfg->id) + 32;
    rp->topic = malloc(n);
    rp->default_response = malloc(n);
    if (!rp->topic || !rp->default_response ||
        pthread_mutex_init(&rp->lock, NULL) != 0) {
        free(rp->topic);
        free(rp->default_response);
        free(rp);
        return MRB_ERR_NOMEM;
    }
    snprintf(rp->topic, n, "bridge/%s/replay", b->cfg->id);
    snprintf(rp->default_response, n, "bridge/%s/replay/response", b->cfg->id);
    mrb_queue_init(&rp->out, (size_t)b->cfg->queue_messages,
                   (size_t)b->cfg->queue_bytes);
    atomic_init(&rp->on, 0);
    b->replay = rp;
    mrb_replay_update(b);
    return MRB_OK;
}

int mrb_replay_drained(mrb_bridge *b)
{
    mrb_replay *rp = b->replay;
    if (!rp)
        return 1;
    pthread_mutex_lock(&rp->lock);
    size_t waiting = rp->n;
    pthread_mutex_unlock(&rp->lock);
    /* a query in flight on a live connection still brings an answer */
    return waiting == 0 && rp->out.count == 0 &&
           (rp->jobs == 0 || !mrb_redis_pub_ready(b));
}

void mrb_replay_closing(mrb_bridge *b)
{
    if (b->replay)
        b->replay->closing = 1;
}

size_t mrb_replay_clear(mrb_bridge *b)
{
    mrb_replay *rp = b->replay;
    if (!rp)
        return 0;
    size_t requests = 0;
    pthread_mutex_lock(&rp->lock);
    while (rp->head) {
        rreq *r = rp->head;
        rp->head = r->next;
        free(r->response_topic);
        free(r->corr);
        free(r);
        requests++;
    }
    rp->tail = NULL;
    rp->n = 0;
    rp->dropped += requests;
    pthread_mutex_unlock(&rp->lock);
    size_t answers = mrb_queue_clear(&rp->out);
    rp->main_dropped += answers;
    size_t in_flight = rp->closing_dropped; /* counted when dropped */
    rp->closing_dropped = 0;
    return requests + answers + in_flight;
}

void mrb_replay_free(mrb_bridge *b)
{
    mrb_replay *rp = b->replay;
    if (!rp)
        return;
    mrb_replay_clear(b);
    pthread_mutex_destroy(&rp->lock);
    free(rp->topic);
    free(rp->default_response);
    free(rp);
    b->replay = NULL;
}

const char *mrb_replay_topic(const mrb_bridge *b)
{
    return b->replay && atomic_load(&b->replay->on) ? b->replay->topic : NULL;
}

void mrb_replay_get_counters(mrb_bridge *b, mrb_replay_counters *out)
{
    memset(out, 0, sizeof(*out));
    mrb_replay *rp = b->replay;
    if (!rp)
        return;
    pthread_mutex_lock(&rp->lock);
    out->requests = rp->requests;
    out->dropped = rp->dropped;
    pthread_mutex_unlock(&rp->lock);
    out->messages = rp->messages;
    out->errors = rp->errors;
    out->dropped += rp->main_dropped;
}

/* ---- Paho's receive thread ---- */

int mrb_replay_take(mrb_bridge *b, const char *topic, size_t len,
                    MQTTAsync_message *msg)
{
    mrb_replay *rp = b->replay;
    if (!rp || !atomic_load(&rp->on) || len != strlen(rp->topic) ||
        memcmp(topic, rp->topic, len) != 0)
        return 0;
    int v5 = b->mqtt.version == MQTTVERSION_5;
    if (v5) {
        /* a route's filter may match the request topic too: of the broker's
         * copies, act on the one for our own subscription */
        int n = MQTTProperties_propertyCount(&msg->properties,
                                             MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER);
        int mine = n == 0;
        for (int i = 0; i < n; i++)
            if ((size_t)MQTTProperties_getNumericValueAt(
                    &msg->properties, MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER,
                    i) == MRB_REPLAY_SUB_ID)
                mine = 1;
        if (!mine)
            return 1;
    }
    if (msg->retained || atomic_load(&b->intake_stopped)) {
        /* a stored request is stale; none at shutdown */
        pthread_mutex_lock(&rp->lock);
        rp->requests++;
        rp->dropped++;
        pthread_mutex_unlock(&rp->lock);
        return 1;
    }

    size_t plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    int too_large = plen > MRB_REPLAY_MAX_REQUEST;
    if (too_large)
        plen = 0;
    rreq *r = calloc(1, sizeof(*r) + plen + 1);
    if (r) {
        r->len = plen;
        r->too_large = too_large;
        if (plen)
            memcpy(r->payload, msg->payload, plen);
        if (v5) {
            MQTTProperty *p = MQTTProperties_getProperty(
                &msg->properties, MQTTPROPERTY_CODE_RESPONSE_TOPIC);
            if (p && p->value.data.len > 0)
                r->response_topic = mrb_strndup(p->value.data.data, (size_t)p->value.data.len);
            p = MQTTProperties_getProperty(&msg->properties,
                                           MQTTPROPERTY_CODE_CORRELATION_DATA);
            r->corr_too_long = p && p->value.data.len > MRB_REPLAY_MAX_CORRELATION;
            if (p && p->value.data.len > 0 && !r->corr_too_long) {
                r->corr = malloc((size_t)p->value.data.len);
                if (r->corr) {
                    memcpy(r->corr, p->value.data.data, (size_t)p->value.data.len);
                    r->corr_len = (size_t)p->value.data.len;
                }
            }
        }
    }
    uint64_t sup;
    mrb_logbuf lb; /* written after the unlock */
    lb.n = 0;
    lb.lost = 0;
    pthread_mutex_lock(&rp->lock);
    rp->requests++;
    if (!r || rp->n >= MRB_REPLAY_QUEUE) {
        rp->dropped++;
        if (mrb_ratelimit_allow(&rp->rl_full, mrb_now_ms(), &sup))
            mrb_logbuf_add(&lb, MRB_LOG_WARNING, "replay: dropped a request on %s: "
                           "%s (at most %d wait); replay_dropped=%llu (%llu similar "
                           "not logged)", rp->topic,
                           r ? "too many requests" : "out of memory",
                           MRB_REPLAY_QUEUE, (unsigned long long)rp->dropped,
                           (unsigned long long)sup);
        pthread_mutex_unlock(&rp->lock);
        mrb_logbuf_flush(&lb);
        if (r) {
            free(r->response_topic);
            free(r->corr);
            free(r);
        }
        return 1;
    }
    if (rp->tail)
        rp->tail->next = r;
    else
        rp->head = r;
    rp->tail = r;
    rp->n++;
    pthread_mutex_unlock(&rp->lock);
    mrb_bridge_wake(b);
    return 1;
}

/* ---- main thread ---- */

/* Queue one answer; 0 if out of memory. */
static int queue_answer(mrb_replay *rp, const char *rtopic, int kind,
                        const void *corr, size_t corr_len, const char *payload,
                        size_t plen, const char *key, const char *id)
{
    size_t klen = key ? strlen(key) : 0, ilen = id ? strlen(id) : 0;
    size_t tlen = 3 + corr_len + (key ? klen + 1 + ilen : 0);
    char *tag = malloc(tlen + 1);
    if (!tag)
        return 0;
    tag[0] = (char)kind;
    tag[1] = (char)(corr_len >> 8);
    tag[2] = (char)(corr_len & 0xff);
    if (corr_len)
        memcpy(tag + 3, corr, corr_len);
    if (key) {
        memcpy(tag + 3 + corr_len, key, klen + 1);
        memcpy(tag + 3 + corr_len + klen + 1, id, ilen + 1);
    }
    mrb_msg *m = mrb_msg_new_tagged(rtopic, strlen(rtopic), payload, plen, tag,
                                    tlen, ANSWER_QOS, 0);
    free(tag);
    if (!m)
        return 0;
    if (rp->out.count >= rp->out.max_count ||
        rp->out.bytes + mrb_msg_size(m) > rp->out.max_bytes) {
        free(m); /* never drop queued answers for this one */
        return 0;
    }
    mrb_queue_push(&rp->out, m);
    return 1;
}

static void answer_end(mrb_bridge *b, const char *rtopic, const void *corr,
                       size_t corr_len, int ok, const char *topic,
                       const char *stream, long count, const char *error)
{
    mrb_replay *rp = b->replay;
    char *json = mrb_replay_end_json(ok, topic, stream, count, error);
    if (!ok) {
        uint64_t sup;
        char esc[MRB_LOG_ESCAPE_MAX];
        rp->errors++;
        if (mrb_ratelimit_allow(&rp->rl_error, mrb_now_ms(), &sup))
            mrb_warn("replay: request for '%s' answered with an error: %s; "
                     "replay_errors=%llu (%llu similar not logged)",
                     topic ? mrb_log_escape(topic, strlen(topic), esc, sizeof(esc))
                           : "?",
                     error, (unsigned long long)rp->errors,
                     (unsigned long long)sup);
    }
    if (!json || !queue_answer(rp, rtopic, ok ? KIND_END_OK : KIND_END_ERROR, corr,
                               corr_len, json, strlen(json), NULL, NULL))
        rp->main_dropped++;
    free(json);
}

static void job_free(rjob *j)
{
    free(j->response_topic);
    free(j->corr);
    free(j->topic);
    free(j->key);
    free(j);
}

/* The payload field of an entry's field list, or NULL. */
static const redisReply *payload_of(const redisReply *fields)
{
    if (!fields || fields->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t k = 0; k + 1 < fields->elements; k += 2) {
        const redisReply *f = fields->element[k];
        if (f->type == REDIS_REPLY_STRING && f->len == 7 &&
            memcmp(f->str, "payload", 7) == 0 &&
            fields->element[k + 1]->type == REDIS_REPLY_STRING)
            return fields->element[k + 1];
    }
    return NULL;
}

static void on_xrevrange(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    rjob *j = priv;
    mrb_bridge *b = j->b;
    mrb_redis_got_reply(ac->data);
    mrb_replay *rp = b->replay;
    rp->jobs--;
    if (rp->closing) {
        /* hiredis is being freed at shutdown: not an error of the request,
         * a request dropped (counted, logged once by mrb_replay_clear) */
        rp->main_dropped++;
        rp->closing_dropped++;
        job_free(j);
        return;
    }
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        char why[200];
        snprintf(why, sizeof(why), "Redis: %s",
                 !reply ? "connection lost"
                 : reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        answer_end(b, j->response_topic, j->corr, j->corr_len, 0, j->topic, NULL, 0,
                   why);
        job_free(j);
        return;
    }
    /* all or nothing: the whole answer must fit the queue's bounds */
    size_t n = 0, bytes = 0, tlen = strlen(j->response_topic);
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        const redisReply *p = e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
                                      e->element[0]->type == REDIS_REPLY_STRING
                                  ? payload_of(e->element[1]) : NULL;
        if (p) {
            n++;
            bytes += MRB_MSG_OVERHEAD + tlen + 1 + p->len + 4 + j->corr_len +
                     strlen(j->key) + e->element[0]->len + 2;
        }
    }
    if (rp->out.count + n + 1 > rp->out.max_count ||
        rp->out.bytes + bytes + 1024 + tlen > rp->out.max_bytes) {
        char why[200];
        snprintf(why, sizeof(why), "the answer (%zu messages, %zu bytes) does not "
                 "fit limits.queue_messages / limits.queue_bytes now: ask for fewer",
                 n, bytes);
        answer_end(b, j->response_topic, j->corr, j->corr_len, 0, j->topic, NULL, 0,
                   why);
        job_free(j);
        return;
    }
    long sent = 0;
    for (size_t i = reply->elements; i-- > 0;) { /* newest first: reverse */
        const redisReply *e = reply->element[i];
        const redisReply *p = e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
                                      e->element[0]->type == REDIS_REPLY_STRING
                                  ? payload_of(e->element[1]) : NULL;
        if (!p)
            continue; /* without a payload field: not a bridged message */
        if (queue_answer(rp, j->response_topic, KIND_ENTRY, j->corr, j->corr_len,
                         p->str, p->len, j->key, e->element[0]->str))
            sent++;
        else
            rp->main_dropped++;
    }
    answer_end(b, j->response_topic, j->corr, j->corr_len, 1, j->topic, j->key,
               sent, NULL);
    job_free(j);
}

/* The stream key topic maps to through the first stream route (either
 * direction) that maps it; NULL if none. */
static char *stream_key(const mrb_bridge *b, const char *topic)
{
    char key[MRB_TOPIC_MAX + 1];
    size_t kn;
    for (size_t i = 0; i < b->routes.n; i++) {
        const mrb_route *r = &b->routes.route[i];
        if (r->mode == MRB_MODE_STREAM &&
            mrb_route_map_to_redis(r, topic, strlen(topic), key, sizeof(key) - 1,
                                   &kn) == MRB_OK)
            return mrb_strndup(key, kn);
    }
    return NULL;
}

/* A job without key and correlation data (the caller sets them); NULL when
 * out of memory. */
static rjob *new_job(mrb_bridge *b, const char *topic, long count,
                     const char *rtopic)
{
    rjob *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->b = b;
    j->count = count;
    j->topic = mrb_strndup(topic, strlen(topic));
    j->response_topic = mrb_strndup(rtopic, strlen(rtopic));
    if (!j->topic || !j->response_topic) {
        job_free(j);
        return NULL;
    }
    return j;
}

static void handle(mrb_bridge *b, rreq *r)
{
    mrb_replay *rp = b->replay;
    mrb_replay_request req;
    char msg[300];
    memset(&req, 0, sizeof(req));
    mrb_err err = r->too_large
        ? mrb_fail(MRB_ERR_INVALID, msg, sizeof(msg),
                   "request too large (more than %d bytes)", MRB_REPLAY_MAX_REQUEST)
        : mrb_replay_parse(r->payload, r->len, &req, msg, sizeof(msg));
    /* where to answer: Response Topic, else response_topic, else default */
    const char *rtopic = r->response_topic ? r->response_topic
                       : req.response_topic ? req.response_topic
                                            : rp->default_response;
    if (!mrb_topic_valid(rtopic, strlen(rtopic)) || strcmp(rtopic, rp->topic) == 0) {
        /* never answer on the request topic: that would be a new request */
        rtopic = rp->default_response;
        if (err == MRB_OK)
            err = mrb_fail(MRB_ERR_INVALID, msg, sizeof(msg),
                           "the response topic is not a topic name or is the "
                           "request topic");
    }
    char *key = NULL;
    if (err == MRB_OK && (!req.topic || !(key = stream_key(b, req.topic))))
        err = mrb_fail(MRB_ERR_NOMATCH, msg, sizeof(msg),
                       "no stream route maps this topic");
    if (err == MRB_OK && r->corr_too_long)
        err = mrb_fail(MRB_ERR_INVALID, msg, sizeof(msg),
                       "Correlation Data longer than %d bytes",
                       MRB_REPLAY_MAX_CORRELATION);
    if (err == MRB_OK && !mrb_redis_pub_ready(b))
        err = mrb_fail(MRB_ERR_CONN, msg, sizeof(msg), "Redis is not connected");
    if (err == MRB_OK && key && req.topic) { /* (both set when OK) */
        rjob *j = new_job(b, req.topic, req.count, rtopic);
        if (!j) {
            err = mrb_fail(MRB_ERR_NOMEM, msg, sizeof(msg), "out of memory");
        } else {
            char count[24];
            snprintf(count, sizeof(count), "%ld", j->count);
            const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", count};
            size_t lens[] = {9, strlen(key), 1, 1, 5, strlen(count)};
            j->key = key;
            j->corr = r->corr;
            j->corr_len = r->corr_len;
            if (mrb_redis_command(&b->rpub, on_xrevrange, j, 6, argv, lens) == MRB_OK) {
                b->replay->jobs++;
                mrb_debug("replay: XREVRANGE %s COUNT %s sent for a request", key,
                          count);
                key = NULL;     /* the job's now */
                r->corr = NULL;
            } else {
                err = mrb_fail(MRB_ERR_CONN, msg, sizeof(msg), "Redis is not connected");
                j->key = NULL;
                j->corr = NULL;
                job_free(j);
            }
        }
    }
    if (err != MRB_OK)
        answer_end(b, rtopic, r->corr, r->corr_len, 0, req.topic, NULL, 0, msg);
    free(key);
    mrb_replay_request_free(&req);
}

/* Publish queued answers while the broker takes them. */
static void send_answers(mrb_bridge *b)
{
    mrb_replay *rp = b->replay;
    mrb_msg *m;
    while ((m = mrb_queue_pop(&rp->out)) != NULL) {
        const char *tag = mrb_msg_tag(m);
        size_t corr_len = ((size_t)(unsigned char)tag[1] << 8) | (unsigned char)tag[2];
        mrb_pub_props pp;
        memset(&pp, 0, sizeof(pp));
        pp.corr = corr_len ? tag + 3 : NULL;
        pp.corr_len = corr_len;
        if (tag[0] == KIND_ENTRY) {
            const char *key = tag + 3 + corr_len;
            pp.names[0] = "stream";
            pp.vals[0] = key;
            pp.names[1] = "stream-id";
            pp.vals[1] = key + strlen(key) + 1;
            pp.n_user = 2;
        } else {
            pp.names[0] = "replay-end";
            pp.vals[0] = tag[0] == KIND_END_OK ? "ok" : "error";
            pp.n_user = 1;
        }
        const char *topic = mrb_msg_name(m);
        const char *payload = mrb_msg_payload(m);
        mrb_echo_note_result noted = mrb_bridge_note_mqtt_publish(
            b, topic, m->name_len, payload, m->payload_len);
        mrb_err err = noted == MRB_ECHO_FULL
                          ? MRB_ERR_FULL
                          : mrb_mqtt_publish_props(b, topic, payload, m->payload_len,
                                                   m->qos, 0, &pp);
        if (err != MRB_OK)
            mrb_bridge_unnote_mqtt_publish(b, topic, m->name_len, payload,
                                           m->payload_len, noted);
        if (err == MRB_ERR_FULL || err == MRB_ERR_CONN) {
            mrb_queue_push_front(&rp->out, m); /* wait: a completion wakes us */
            return;
        }
        if (err != MRB_OK)
            rp->main_dropped++;
        else if (tag[0] == KIND_ENTRY)
            rp->messages++;
        free(m);
    }
}

int64_t mrb_replay_flush_warnings(mrb_bridge *b, int64_t now)
{
    mrb_replay *rp = b->replay;
    if (!rp)
        return INT64_MAX;
    mrb_logbuf lb;
    lb.n = 0;
    lb.lost = 0;
    pthread_mutex_lock(&rp->lock);
    int64_t next = mrb_ratelimit_flush(&rp->rl_full, now, &lb,
                                       "replay: dropped requests", "replay_dropped",
                                       rp->dropped + rp->main_dropped);
    pthread_mutex_unlock(&rp->lock);
    mrb_logbuf_flush(&lb);
    return mrb_min_ms(next, mrb_ratelimit_flush(&rp->rl_error, now, NULL,
                                                "replay: requests answered with "
                                                "an error", "replay_errors",
                                                rp->errors));
}

void mrb_replay_pump(mrb_bridge *b)
{
    mrb_replay *rp = b->replay;
    if (!rp)
        return;
    for (int i = 0; i < MRB_REPLAY_QUEUE; i++) {
        pthread_mutex_lock(&rp->lock);
        rreq *r = rp->head;
        if (r) {
            rp->head = r->next;
            if (!rp->head)
                rp->tail = NULL;
            rp->n--;
        }
        pthread_mutex_unlock(&rp->lock);
        if (!r)
            break;
        handle(b, r);
        free(r->response_topic);
        free(r->corr);
        free(r);
    }
    send_answers(b);
}
