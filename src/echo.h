/*
 * echo.h - the echo guard: the bridge's own messages, recognised when they
 * come back. Internal (not installed); one instance per bridge, private
 * state in echo.c, its own lock (a leaf: nothing else is locked under it).
 *
 * Redis side. Redis pub/sub has no "no local": every PUBLISH of the ingest
 * thread on a channel that the bridge's subscriber is subscribed to comes
 * back to that subscriber, however late. So the ingest notes each such
 * PUBLISH before it sends it (mrb_echo_note_redis) and main takes the note
 * when the copy arrives (mrb_echo_take_redis). A note taken while the
 * subscriber is up and its subscriptions confirmed is certain: it never
 * expires and is never evicted; it leaves only with its copy or when the
 * subscriber connection is lost (mrb_echo_redis_down: cleared, counted).
 * While the subscriber is (re)subscribing, notes are uncertain: they expire
 * MRB_ECHO_TTL_MS after the confirmation (mrb_echo_redis_up), counted.
 *
 * Fence: before main (re)subscribes (a new subscriber connection, or the
 * subscriptions a reload changes), every PUBLISH the ingest appended before
 * must have been answered (mrb_echo_redis_fence / _fenced): then none of
 * them can be executed after the new SUBSCRIBE, unnoted, and come back.
 *
 * Full: a table holds at most limits.queue_messages copies (at least
 * MRB_ECHO_MIN). When it is full the ingest holds its sending back instead
 * of evicting (back-pressure); mrb_echo_note_redis says so. Only with force
 * (main may be blocked in Paho behind a waiting callback, see ingest.c) a
 * note goes past that, into a margin of MRB_ECHO_MARGIN, and past the
 * margin the oldest uncertain, else any, copy is evicted (counted).
 *
 * MQTT side (MQTT 3.1.1 only: MQTT 5 has No Local): main notes before each
 * publish on a topic the bridge subscribes (mrb_echo_note_mqtt; full: main
 * keeps the message queued), the ingest thread takes the note when the copy
 * arrives. The broker returns a copy for every publish made after our
 * SUBSCRIBE on the same connection; after a lost connection the session may
 * still return the QoS 1 ones, so the notes become uncertain and expire
 * MRB_ECHO_TTL_MS after the next connect.
 */
#ifndef MRB_ECHO_H
#define MRB_ECHO_H

#include <stddef.h>
#include <stdint.h>

#include "mrb/err.h"

#define MRB_ECHO_TTL_MS 5000      /* uncertain notes, after their start */
#define MRB_ECHO_MIN 4096         /* copies per side, at least */
#define MRB_ECHO_MARGIN 1024      /* past full, for forced notes */

typedef struct mrb_echo mrb_echo;

/* What a note did. */
typedef enum mrb_echo_note_result {
    MRB_ECHO_NOT_NEEDED = 0,      /* nothing can come back: not noted */
    MRB_ECHO_NOTED,               /* noted (certain) */
    MRB_ECHO_NOTED_UNCERTAIN,     /* noted (may not come back) */
    MRB_ECHO_FULL                 /* full: not noted, hold the message back */
} mrb_echo_note_result;

typedef struct mrb_echo_counters {
    uint64_t evicted;             /* copies pushed out past the margin */
    uint64_t expired;             /* uncertain copies that did not return */
    uint64_t cleared;             /* copies dropped with a lost connection */
    uint64_t peak;                /* most copies held at once, either side */
    size_t held_now;              /* copies held now, both sides */
} mrb_echo_counters;

/* capacity: copies per side before back-pressure (at least MRB_ECHO_MIN).
 * NULL when out of memory. */
mrb_echo *mrb_echo_new(size_t capacity);
void mrb_echo_free(mrb_echo *e);

/* ---- Redis side ---- */
/* Ingest thread, for every PUBLISH it is about to append: subscribed: its
 * channel is one our subscriptions match (so it may come back). Counts the
 * PUBLISH for the fence unless the result is MRB_ECHO_FULL. */
mrb_echo_note_result mrb_echo_note_redis(mrb_echo *e, uint64_t key, int subscribed,
                                         int force);
/* Ingest thread: a noted PUBLISH was not appended after all: the note goes
 * (not counted anywhere), and so does its count for the fence. */
void mrb_echo_unnote_redis(mrb_echo *e, uint64_t key, mrb_echo_note_result how);
/* Ingest thread: n PUBLISHes answered, or lost with their connection (they
 * are appended, and noted, again when sent again). */
void mrb_echo_redis_answered(mrb_echo *e, size_t n);
/* Main: a copy arrived on the subscriber; 1 if it is one of ours. */
int mrb_echo_take_redis(mrb_echo *e, uint64_t key, int64_t now_ms);
/* Main: the subscriber connection is gone (lost, closed): its notes leave,
 * counted; nothing is noted until the next mrb_echo_redis_fence. */
void mrb_echo_redis_down(mrb_echo *e);
/* Main, before sending SUBSCRIBE/UNSUBSCRIBE (connect, reload): notes are
 * uncertain from now on, and the PUBLISHes appended so far are to be
 * answered first (mrb_echo_redis_fenced). */
void mrb_echo_redis_fence(mrb_echo *e);
int mrb_echo_redis_fenced(mrb_echo *e);
/* Main: every subscription confirmed. Notes are certain from now on; the
 * uncertain ones expire MRB_ECHO_TTL_MS from now. */
void mrb_echo_redis_up(mrb_echo *e, int64_t now_ms);
/* Ingest thread: is there room for n more notes without passing full? */
int mrb_echo_redis_room_for(mrb_echo *e, size_t n);
/* Main: is the Redis side below three quarters of full (time to wake an
 * ingest thread that waits for room)? */
int mrb_echo_redis_has_room(mrb_echo *e);
/* Ingest thread: a certain note whose PUBLISH was lost with the ingest's
 * connection (it may or may not have been executed): it becomes
 * uncertain, expiring MRB_ECHO_TTL_MS from now. */
void mrb_echo_redis_doubt(mrb_echo *e, uint64_t key, int64_t now_ms);

/* ---- MQTT side ---- */
/* Main, before a publish on a topic we subscribe (MQTT 3.1.1). */
mrb_echo_note_result mrb_echo_note_mqtt(mrb_echo *e, uint64_t key);
void mrb_echo_unnote_mqtt(mrb_echo *e, uint64_t key, mrb_echo_note_result how);
/* Ingest thread: a copy arrived from the broker; 1 if it is one of ours. */
int mrb_echo_take_mqtt(mrb_echo *e, uint64_t key, int64_t now_ms);
/* Main: the broker connection was lost / is up again (subscribed). */
void mrb_echo_mqtt_down(mrb_echo *e);
void mrb_echo_mqtt_up(mrb_echo *e, int64_t now_ms);
int mrb_echo_mqtt_has_room(mrb_echo *e);

/* Main, about once a second: expire uncertain notes, give memory back.
 * Returns when it is next due (INT64_MAX: nothing to expire). */
int64_t mrb_echo_tick(mrb_echo *e, int64_t now_ms);
/* Any thread. */
void mrb_echo_get_counters(mrb_echo *e, mrb_echo_counters *out);

#endif
