/*
 * queue.h - messages and the bounded FIFO they wait in.
 *
 * An mrb_msg is one allocation holding the name (topic or channel,
 * NUL-terminated) and the payload. A queue is capped both in messages and in
 * bytes; pushing into a full queue drops the oldest messages until the new one
 * fits, and counts them. Not thread-safe: the bridge locks the one queue that
 * two threads share.
 */
#ifndef MRB_QUEUE_H
#define MRB_QUEUE_H

#include <stddef.h>
#include <stdint.h>

typedef struct mrb_msg {
    struct mrb_msg *next;
    size_t name_len;
    size_t payload_len;
    size_t tag_len;     /* optional owner's note after the payload (0: none) */
    int qos;
    int retain;
    int64_t arrived_ms; /* monotonic time it was taken in (mrb_now_ms) */
    uint64_t seq;       /* owner's bookkeeping: arrival number */
    unsigned pending;   /* owner's bookkeeping: replies still awaited */
    uint64_t skip;      /* owner's bookkeeping: targets (bit i: the i-th)
                           not to send, e.g. over a route's rate limit */
    unsigned route;     /* owner's bookkeeping: route index (stats) */
    unsigned gen;       /* owner's bookkeeping: route table generation of
                           skip and done (a reload makes target positions
                           stale) */
    unsigned flags;     /* owner's bookkeeping */
    uint64_t done;      /* owner's bookkeeping: targets already delivered
                           (bit i: the i-th), not to send again */
    uint64_t hdone;     /* ... the same for a second command per target */
    int64_t taken_us;   /* monotonic us it was taken in (latency, stats) */
    char data[];        /* name '\0' payload tag '\0' */
} mrb_msg;

/* Per-message overhead counted against a queue's byte cap, besides name and
 * payload (the largest message costs MRB_MSG_OVERHEAD + 65535 + max_payload). */
#define MRB_MSG_OVERHEAD (sizeof(mrb_msg) + 1)

/* A new message (copies both); NULL when out of memory. Free with free(). */
mrb_msg *mrb_msg_new(const char *name, size_t nlen, const void *payload,
                     size_t plen, int qos, int retain);
/* The same with a tag (any bytes, kept NUL-terminated after the payload). */
mrb_msg *mrb_msg_new_tagged(const char *name, size_t nlen, const void *payload,
                            size_t plen, const void *tag, size_t tlen, int qos,
                            int retain);
static inline const char *mrb_msg_name(const mrb_msg *m) { return m->data; }
static inline const char *mrb_msg_payload(const mrb_msg *m)
{
    return m->data + m->name_len + 1;
}
static inline const char *mrb_msg_tag(const mrb_msg *m)
{
    return m->data + m->name_len + 1 + m->payload_len;
}
static inline size_t mrb_msg_size(const mrb_msg *m)
{
    return sizeof(*m) + m->name_len + 1 + m->payload_len +
           (m->tag_len ? m->tag_len + 1 : 0);
}

typedef struct mrb_queue {
    mrb_msg *head, *tail;
    size_t count, bytes;
    size_t max_count, max_bytes;
    uint64_t dropped;   /* oldest messages dropped to make room */
} mrb_queue;

void mrb_queue_init(mrb_queue *q, size_t max_count, size_t max_bytes);
/* Takes ownership of m; returns how many old messages were dropped. */
size_t mrb_queue_push(mrb_queue *q, mrb_msg *m);
/* If a message of size bytes (mrb_msg_size) cannot be pushed without a
 * drop, the oldest message, now the caller's (who counts it); else NULL.
 * Callers that want to know what they drop call this until NULL, then
 * push. */
mrb_msg *mrb_queue_pop_if_full(mrb_queue *q, size_t size);
/* Puts m back at the head (a send that could not go out yet); no drop. */
void mrb_queue_push_front(mrb_queue *q, mrb_msg *m);
/* The oldest message, now the caller's; NULL when empty. */
mrb_msg *mrb_queue_pop(mrb_queue *q);
/* Takes out the message after prev (prev NULL: the head), now the
 * caller's; NULL if there is none. */
mrb_msg *mrb_queue_unlink_after(mrb_queue *q, mrb_msg *prev);
/* Frees all queued messages; returns how many there were. */
size_t mrb_queue_clear(mrb_queue *q);

#endif
