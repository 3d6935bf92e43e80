/*
 * bridge_int.h - state shared by the event loop (bridge.c) and its two I/O
 * edges (mqtt.c, redis.c). Internal: not installed.
 *
 * Thread ownership
 * ----------------
 * The main thread runs the poll() loop and owns everything here, with two
 * exceptions that Paho's threads touch:
 *   - the MQTT->Redis hand-off: in_q and the counters marked [in_lock] are
 *     guarded by in_lock; Paho's receive thread pushes, main pops;
 *   - mqtt.ev (connection events) guarded by mqtt.ev_lock, and
 *     mqtt.inflight (atomic), which Paho's completion callbacks decrement.
 * Paho callbacks never call into hiredis or Paho; they copy, post and wake
 * the main thread through wake_fd. Both hiredis contexts are only ever used
 * by the main thread. The route table is immutable after start and is read
 * by both.
 */
#ifndef MRB_BRIDGE_INT_H
#define MRB_BRIDGE_INT_H

#include <MQTTAsync.h>
#include <hiredis/async.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "mrb/backoff.h"
#include "mrb/bridge.h"
#include "mrb/log.h"
#include "mrb/queue.h"
#include "mrb/route.h"
#include "mrb/seen.h"

/* At most this many sends may be in flight inside Paho, and this many
 * PUBLISH replies outstanding on the Redis publisher: past that, messages
 * wait in our bounded queues instead of in unbounded library buffers. */
#define MRB_MQTT_WINDOW 1000
#define MRB_REDIS_WINDOW 1000
#define MRB_REDIS_WINDOW_BYTES (8u * 1024 * 1024)
#define MRB_CONNECT_TIMEOUT_MS 10000
#define MRB_ECHO_CAPACITY 4096
#define MRB_ECHO_TTL_MS 5000
#define MRB_SHORT_SESSION_MS 5000

typedef enum conn_state { CONN_DOWN = 0, CONN_CONNECTING, CONN_UP } conn_state;

/* Counters of the main thread. Those of Paho's receive thread live in
 * mrb_in_counters under in_lock; the completion counts of publishes to the
 * broker are atomics in mrb_mqtt. */
typedef struct mrb_counters {
    uint64_t redis_out;          /* PUBLISHes Redis accepted */
    uint64_t redis_in;           /* messages taken from Redis */
    uint64_t dropped_too_large;  /* Redis messages over max_payload */
    uint64_t dropped_unmappable; /* matched a route on one side only */
    uint64_t dropped_queue_full; /* oldest dropped from the full Redis->MQTT queue */
    uint64_t dropped_send_failed;/* refused or lost in flight by a library */
    uint64_t dropped_shutdown;   /* still queued when shutdown timed out */
    uint64_t echoes;             /* own messages recognised and not re-sent */
    uint64_t duplicates;         /* extra copies for overlapping subscriptions */
} mrb_counters;

typedef struct mrb_in_counters { /* [in_lock] */
    uint64_t mqtt_in;            /* messages taken from MQTT */
    uint64_t dropped_too_large;  /* MQTT messages over max_payload */
    uint64_t dropped_queue_full; /* oldest dropped from the full MQTT->Redis queue */
    uint64_t duplicates;         /* extra copies for overlapping subscriptions */
    uint64_t retained_skipped;   /* stored retained messages replayed on subscribe */
    uint64_t nomem;              /* could not be copied */
} mrb_in_counters;

/* Events Paho's threads post to the main thread. */
enum {
    MQTT_EV_CONNECTED = 1u << 0,
    MQTT_EV_CONNECT_FAILED = 1u << 1,
    MQTT_EV_LOST = 1u << 2,
    MQTT_EV_SUBACK = 1u << 3,
    MQTT_EV_WINDOW = 1u << 4
};

typedef struct mrb_mqtt {
    MQTTAsync client;            /* main thread creates/destroys */
    int version;                 /* MQTTVERSION_5 or MQTTVERSION_3_1_1 */
    conn_state state;
    size_t subacks;              /* subscriptions confirmed this session */
    int64_t next_attempt_ms;
    mrb_backoff backoff;
    int64_t down_since_ms;
    int outage_logged;
    int64_t up_since_ms;
    int short_sessions;          /* consecutive sessions shorter than below */
    char uri[300];
    atomic_int inflight;         /* sends Paho has not completed yet */
    atomic_int inflight_acked;   /* of those, QoS 1/2 (await PUBACK/PUBCOMP) */
    atomic_int receive_max;      /* the broker's Receive Maximum (MQTT 5) */
    atomic_ullong sent_ok;       /* publishes Paho completed */
    atomic_ullong sent_failed;   /* publishes Paho failed */
    atomic_int window_waiting;   /* main waits for inflight to drop */

    pthread_mutex_t ev_lock;
    unsigned ev;                 /* [ev_lock] MQTT_EV_* */
    int ev_code;                 /* [ev_lock] failure code / reason */
    char ev_text[200];           /* [ev_lock] failure text */
    size_t ev_subacks, ev_subfails; /* [ev_lock] */
} mrb_mqtt;

typedef struct mrb_rconn {
    const char *name;            /* "publisher" / "subscriber" */
    struct mrb_bridge *b;
    redisAsyncContext *ac;       /* NULL when down; hiredis frees it */
    conn_state state;
    int want_read, want_write;
    int64_t deadline_ms;         /* CONNECTING: give up then */
    int64_t next_attempt_ms;     /* DOWN: try again then */
    mrb_backoff backoff;
    size_t confirmed;            /* subscriber: subscriptions confirmed */
    size_t outstanding;          /* publisher: PUBLISH replies pending */
    size_t outstanding_bytes;
    char last_error[200];
} mrb_rconn;

typedef struct mrb_bridge {
    const mrb_config *cfg;
    char mqtt_url[300];          /* URLs for logs, passwords as "***" */
    char redis_url[300];
    mrb_routes routes;
    int wake_fd[2];
    atomic_int wake_pending;

    pthread_mutex_t in_lock;
    mrb_queue in_q;              /* [in_lock] MQTT -> Redis */
    mrb_in_counters ic;          /* [in_lock] */
    mrb_ratelimit in_rl_large;   /* [in_lock] */
    mrb_ratelimit in_rl_full;    /* [in_lock] */

    mrb_msg *in_pending;         /* popped from in_q, not fully forwarded */
    size_t in_done;              /* its targets already sent */
    mrb_queue out_q;             /* Redis -> MQTT, waiting for the broker */
    mrb_mqtt mqtt;
    mrb_rconn rpub, rsub;
    int redis_outage_logged;
    int64_t redis_down_since_ms;

    mrb_seen redis_echo;         /* what we PUBLISHed where we subscribe */
    mrb_seen mqtt_echo;          /* MQTT 3.1.1 only: no No Local there */
    mrb_targets tg;
    mrb_counters c;
    mrb_ratelimit rl_unmappable, rl_large, rl_full, rl_send;

    int ready;                   /* logged "ready" for the current up-phase */
    int stopping;
    int fatal;                   /* an unrecoverable error was logged: exit 1 */
} mrb_bridge;

/* bridge.c */
void mrb_bridge_wake(mrb_bridge *b);
void mrb_bridge_on_redis_message(mrb_bridge *b, const char *sub, size_t sublen,
                                 const char *channel, size_t clen,
                                 const char *payload, size_t plen);

/* mqtt.c: all main thread unless noted */
mrb_err mrb_mqtt_init(mrb_bridge *b);
void mrb_mqtt_destroy(mrb_bridge *b);
void mrb_mqtt_tick(mrb_bridge *b, int64_t now);      /* events, reconnects */
int64_t mrb_mqtt_next_timer(const mrb_bridge *b);
/* MRB_OK sent; MRB_ERR_FULL try later; MRB_ERR_CONN down; MRB_ERR_INVALID
 * refused by Paho (dropped by the caller). */
mrb_err mrb_mqtt_publish(mrb_bridge *b, const char *topic, const void *payload,
                         size_t len, int qos, int retain);
int mrb_mqtt_ready(const mrb_bridge *b);
void mrb_mqtt_unsubscribe_all(mrb_bridge *b);
/* Publish "offline", disconnect; waits at most timeout_ms. */
void mrb_mqtt_shutdown(mrb_bridge *b, int timeout_ms);

/* redis.c */
void mrb_redis_init(mrb_bridge *b);
void mrb_redis_tick(mrb_bridge *b, int64_t now);     /* connects, timeouts */
int64_t mrb_redis_next_timer(const mrb_bridge *b);
/* Add the hiredis fds to pfd; returns how many were added (<= 2). */
int mrb_redis_pollfds(mrb_bridge *b, struct pollfd *pfd, mrb_rconn **owner);
void mrb_redis_handle(mrb_rconn *rc, short revents);
int mrb_redis_pub_ready(const mrb_bridge *b);
int mrb_redis_sub_ready(const mrb_bridge *b);
/* PUBLISH channel payload, pipelined; MRB_ERR_FULL when the window is full. */
mrb_err mrb_redis_publish(mrb_bridge *b, const char *channel, size_t clen,
                          const char *payload, size_t plen);
void mrb_redis_close_sub(mrb_bridge *b);
void mrb_redis_destroy(mrb_bridge *b);

#endif
