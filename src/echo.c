/*
 * echo.c - the echo guard (echo.h): two fingerprint tables (mrb/seen.h), one
 * per side, the phases of the Redis subscriber and the fence, under one lock.
 */
#include "echo.h"

#include <pthread.h>
#include <stdlib.h>

#include "mrb/seen.h"

typedef enum phase { PHASE_OFF = 0, PHASE_SUBSCRIBING, PHASE_ON } phase;

struct mrb_echo {
    pthread_mutex_t lock;
    size_t capacity;              /* copies per side before "full" */
    mrb_seen redis, mqtt;
    phase redis_phase;
    int mqtt_up;
    uint64_t appended;            /* PUBLISHes the ingest appended */
    uint64_t answered;            /* ... answered, or lost with a connection */
    uint64_t fence;               /* appended when the fence began */
    int64_t next_tick_ms;         /* uncertain copies to expire then */
    int64_t next_shrink_ms;       /* a grown table is looked at then */
};

mrb_echo *mrb_echo_new(size_t capacity)
{
    mrb_echo *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    if (pthread_mutex_init(&e->lock, NULL) != 0) {
        free(e);
        return NULL;
    }
    e->capacity = capacity < MRB_ECHO_MIN ? MRB_ECHO_MIN : capacity;
    mrb_seen_init(&e->redis, e->capacity + MRB_ECHO_MARGIN);
    mrb_seen_init(&e->mqtt, e->capacity + MRB_ECHO_MARGIN);
    e->next_tick_ms = e->next_shrink_ms = INT64_MAX;
    return e;
}

void mrb_echo_free(mrb_echo *e)
{
    if (!e)
        return;
    mrb_seen_free(&e->redis);
    mrb_seen_free(&e->mqtt);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* Add one note to t (lock held). */
static mrb_echo_note_result note(mrb_echo *e, mrb_seen *t, uint64_t key, int uncertain,
                                 int force, int64_t expires_ms)
{
    if (t->copies >= e->capacity && !force)
        return MRB_ECHO_FULL;
    mrb_err err = mrb_seen_add(t, key, uncertain, expires_ms);
    if (err == MRB_ERR_FULL && mrb_seen_evict(t))
        err = mrb_seen_add(t, key, uncertain, expires_ms);
    if (err != MRB_OK)
        return MRB_ECHO_FULL; /* out of memory: hold back, try again later */
    if (uncertain && expires_ms != INT64_MAX && expires_ms < e->next_tick_ms)
        e->next_tick_ms = expires_ms;
    return uncertain ? MRB_ECHO_NOTED_UNCERTAIN : MRB_ECHO_NOTED;
}

/* ---- Redis side ---- */

mrb_echo_note_result mrb_echo_note_redis(mrb_echo *e, uint64_t key, int subscribed,
                                         int force)
{
    mrb_echo_note_result r = MRB_ECHO_NOT_NEEDED;
    pthread_mutex_lock(&e->lock);
    if (subscribed && e->redis_phase != PHASE_OFF)
        r = note(e, &e->redis, key, e->redis_phase != PHASE_ON, force, INT64_MAX);
    if (r != MRB_ECHO_FULL)
        e->appended++;
    pthread_mutex_unlock(&e->lock);
    return r;
}

void mrb_echo_unnote_redis(mrb_echo *e, uint64_t key, mrb_echo_note_result how)
{
    if (how == MRB_ECHO_FULL)
        return;
    pthread_mutex_lock(&e->lock);
    if (how != MRB_ECHO_NOT_NEEDED)
        mrb_seen_remove(&e->redis, key, how == MRB_ECHO_NOTED_UNCERTAIN);
    e->appended--;
    pthread_mutex_unlock(&e->lock);
}

void mrb_echo_redis_answered(mrb_echo *e, size_t n)
{
    pthread_mutex_lock(&e->lock);
    e->answered += n;
    pthread_mutex_unlock(&e->lock);
}

static int take(mrb_echo *e, mrb_seen *t, uint64_t key, int64_t now_ms)
{
    pthread_mutex_lock(&e->lock);
    int r = t->copies ? mrb_seen_take(t, key, now_ms) : 0;
    pthread_mutex_unlock(&e->lock);
    return r;
}

/* The uncertain copies of t expire MRB_ECHO_TTL_MS from now (lock held). */
static void start_expiry(mrb_echo *e, mrb_seen *t, int64_t now_ms)
{
    if (!t->uncertain)
        return;
    mrb_seen_start_expiry(t, now_ms + MRB_ECHO_TTL_MS);
    if (now_ms + MRB_ECHO_TTL_MS < e->next_tick_ms)
        e->next_tick_ms = now_ms + MRB_ECHO_TTL_MS;
}

int mrb_echo_take_redis(mrb_echo *e, uint64_t key, int64_t now_ms)
{
    return take(e, &e->redis, key, now_ms);
}

void mrb_echo_redis_down(mrb_echo *e)
{
    pthread_mutex_lock(&e->lock);
    e->redis_phase = PHASE_OFF;
    mrb_seen_clear(&e->redis);
    pthread_mutex_unlock(&e->lock);
}

void mrb_echo_redis_fence(mrb_echo *e)
{
    pthread_mutex_lock(&e->lock);
    e->redis_phase = PHASE_SUBSCRIBING;
    e->fence = e->appended;
    pthread_mutex_unlock(&e->lock);
}

int mrb_echo_redis_fenced(mrb_echo *e)
{
    pthread_mutex_lock(&e->lock);
    int r = e->answered >= e->fence;
    pthread_mutex_unlock(&e->lock);
    return r;
}

void mrb_echo_redis_up(mrb_echo *e, int64_t now_ms)
{
    pthread_mutex_lock(&e->lock);
    e->redis_phase = PHASE_ON;
    start_expiry(e, &e->redis, now_ms);
    pthread_mutex_unlock(&e->lock);
}

int mrb_echo_redis_room_for(mrb_echo *e, size_t n)
{
    pthread_mutex_lock(&e->lock);
    int r = e->redis.copies + n <= e->capacity;
    pthread_mutex_unlock(&e->lock);
    return r;
}

void mrb_echo_redis_doubt(mrb_echo *e, uint64_t key, int64_t now_ms)
{
    pthread_mutex_lock(&e->lock);
    if (mrb_seen_remove(&e->redis, key, 0))
        note(e, &e->redis, key, 1, 1, now_ms + MRB_ECHO_TTL_MS);
    pthread_mutex_unlock(&e->lock);
}

int mrb_echo_redis_has_room(mrb_echo *e)
{
    pthread_mutex_lock(&e->lock);
    int r = e->redis.copies * 4 < e->capacity * 3;
    pthread_mutex_unlock(&e->lock);
    return r;
}

/* ---- MQTT side ---- */

mrb_echo_note_result mrb_echo_note_mqtt(mrb_echo *e, uint64_t key)
{
    pthread_mutex_lock(&e->lock);
    /* not up: nothing is published (the caller is not connected) */
    mrb_echo_note_result r = e->mqtt_up ? note(e, &e->mqtt, key, 0, 0, INT64_MAX)
                                        : MRB_ECHO_NOT_NEEDED;
    pthread_mutex_unlock(&e->lock);
    return r;
}

void mrb_echo_unnote_mqtt(mrb_echo *e, uint64_t key, mrb_echo_note_result how)
{
    if (how != MRB_ECHO_NOTED && how != MRB_ECHO_NOTED_UNCERTAIN)
        return;
    pthread_mutex_lock(&e->lock);
    mrb_seen_remove(&e->mqtt, key, how == MRB_ECHO_NOTED_UNCERTAIN);
    pthread_mutex_unlock(&e->lock);
}

int mrb_echo_take_mqtt(mrb_echo *e, uint64_t key, int64_t now_ms)
{
    return take(e, &e->mqtt, key, now_ms);
}

void mrb_echo_mqtt_down(mrb_echo *e)
{
    pthread_mutex_lock(&e->lock);
    e->mqtt_up = 0;
    mrb_seen_mark_uncertain(&e->mqtt);
    pthread_mutex_unlock(&e->lock);
}

void mrb_echo_mqtt_up(mrb_echo *e, int64_t now_ms)
{
    pthread_mutex_lock(&e->lock);
    e->mqtt_up = 1;
    start_expiry(e, &e->mqtt, now_ms);
    pthread_mutex_unlock(&e->lock);
}

int mrb_echo_mqtt_has_room(mrb_echo *e)
{
    pthread_mutex_lock(&e->lock);
    int r = e->mqtt.copies < e->capacity;
    pthread_mutex_unlock(&e->lock);
    return r;
}

/* ---- both ---- */

static int grown(const mrb_echo *e)
{
    return e->redis.slots > MRB_SEEN_MIN_SLOTS || e->mqtt.slots > MRB_SEEN_MIN_SLOTS;
}

int64_t mrb_echo_tick(mrb_echo *e, int64_t now_ms)
{
    pthread_mutex_lock(&e->lock);
    if (now_ms >= e->next_tick_ms) {
        mrb_seen_expire(&e->redis, now_ms);
        mrb_seen_expire(&e->mqtt, now_ms);
        /* uncertain copies left (with expiries still ahead): look again in
         * a second; else nothing to expire until a new one starts */
        e->next_tick_ms = e->redis.uncertain || e->mqtt.uncertain ? now_ms + 1000
                                                                  : INT64_MAX;
    }
    if (now_ms >= e->next_shrink_ms) {
        /* after a burst: give the grown table back once mostly empty */
        mrb_seen_shrink(&e->redis);
        mrb_seen_shrink(&e->mqtt);
        e->next_shrink_ms = INT64_MAX;
    }
    if (e->next_shrink_ms == INT64_MAX && grown(e))
        e->next_shrink_ms = now_ms + 1000;
    int64_t next = e->next_tick_ms < e->next_shrink_ms ? e->next_tick_ms
                                                       : e->next_shrink_ms;
    pthread_mutex_unlock(&e->lock);
    return next;
}

void mrb_echo_get_counters(mrb_echo *e, mrb_echo_counters *out)
{
    pthread_mutex_lock(&e->lock);
    out->evicted = e->redis.evicted + e->mqtt.evicted;
    out->expired = e->redis.expired + e->mqtt.expired;
    out->cleared = e->redis.cleared + e->mqtt.cleared;
    out->peak = e->redis.peak > e->mqtt.peak ? e->redis.peak : e->mqtt.peak;
    out->held_now = e->redis.copies + e->mqtt.copies;
    pthread_mutex_unlock(&e->lock);
}
