/*
 * bridge_int.h - state shared by the event loop (bridge.c) and its two I/O
 * edges (mqtt.c, redis.c). Internal: not installed.
 *
 * Thread ownership
 * ----------------
 * The main thread runs the poll() loop and owns everything here, with these
 * exceptions that Paho's threads touch:
 *   - MQTT->Redis is not main's at all: Paho's receive thread pushes into
 *     in_q (intake.c) and the ingest thread (ingest.c, its own blocking hiredis
 *     connection) pops and sends. in_q, in_acked_seq, in_release,
 *     in_waiting, ing.busy/idle/work and the counters marked [in_lock] are
 *     guarded by in_lock. For a QoS 1/2 message the receive thread waits on
 *     in_cond until the ingest thread has seen Redis accept it (Paho sends
 *     the PUBACK when the callback returns, and holds its global lock
 *     meanwhile: so the ingest thread never calls Paho);
 *   - the echo tables (redis_echo, mqtt_echo) are guarded by echo_lock:
 *     written by the side that publishes, read by the side that receives;
 *   - mqtt.ev (connection events) guarded by mqtt.ev_lock, and
 *     mqtt.inflight (atomic), which Paho's completion callbacks decrement;
 *   - sx_done, guarded by sx_lock: stream entries whose MQTT publish Paho
 *     completed, for main to XACK;
 *   - replay requests (replay_io.c): the receive thread copies a request
 *     from bridge/<id>/replay into a bounded list under the replay's own
 *     lock and wakes main; main parses it, sends XREVRANGE on the
 *     publisher connection, and publishes the answers (its own queue).
 *   - st, the per-route counters (mrb_stats_table, include/mrb/stats.h):
 *     relaxed atomics, each written by the thread that owns that step of
 *     the direction (the table in stats.h says which), read by main for
 *     the stats report. Allocated and freed by main with the route table,
 *     and like it swapped by a reload under routes_lock: the other threads
 *     count into it holding routes_lock, and a route index they kept from
 *     before a reload (a publish slot, a reply awaited) may then count for
 *     another route of the new table (bounds-checked; documented).
 *   - pub_slot[]: one per MQTT publish in flight (route, start time) as
 *     Paho's context; main takes a free one (busy 0 -> 1), the completion
 *     callback counts the route's out and latency and sets busy back to 0.
 * Paho callbacks never call into hiredis or Paho; they copy, post and wake
 * the main thread through wake_fd. The hiredis contexts are only ever used
 * by the main thread.
 *
 * The route table (routes) is replaced by the main thread on a reload
 * (SIGHUP), under routes_lock. The main thread reads it without the lock
 * (it is the only writer); Paho's receive thread (the canonical check) and
 * the ingest thread (mapping a message and building its commands) hold
 * routes_lock while they use it, and keep no pointer into it afterwards:
 * a route index is only valid under the lock it was found under.
 *
 * Route options (limits.c, ingest.c, pump.c, stream.c): the rate-limit
 * buckets are one array, b->limits, indexed like b->routes.route and
 * swapped with it (under routes_lock). Each entry has a bucket per
 * direction, owned by the thread of that direction (to_redis: the ingest
 * thread, under routes_lock; to_mqtt: main); its counts are atomics that the
 * stats line reads. Envelope wrapping and the presence hash (HSET/HDEL) are
 * the ingest thread's, unwrapping main's.
 */
#ifndef MRB_BRIDGE_INT_H
#define MRB_BRIDGE_INT_H

#include <MQTTAsync.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "mrb/backoff.h"
#include "mrb/bridge.h"
#include "mrb/bucket.h"
#include "mrb/log.h"
#include "mrb/queue.h"
#include "mrb/route.h"
#include "mrb/seen.h"
#include "mrb/stats.h"

#include "echo.h"

/* At most this many sends may be in flight inside Paho, and this many
 * PUBLISH/XADD replies outstanding on the ingest connection: past that, messages
 * wait in our bounded queues instead of in unbounded library buffers. */
#define MRB_MQTT_WINDOW 1000
#define MRB_REDIS_WINDOW 1000
#define MRB_REDIS_WINDOW_BYTES ((size_t)8 * 1024 * 1024)
#define MRB_CONNECT_TIMEOUT_MS 10000
#define MRB_SHORT_SESSION_MS 5000
#define MRB_IDLE_CAP_MS 60000
/* After a burst, once a thread has been idle this long, it gives freed heap
 * back to the system (mrb_trim), so memory returns to its idle size. */
#define MRB_TRIM_IDLE_MS 1000
/* A message callback that waits for Redis while main stays inside one Paho
 * call this long gives its message back to the broker (intake.c
 * mrb_intake_on_message). */
#define MRB_CALLBACK_BLOCK_MS 1000
/* A callback that has waited this long waits for something slow: main
 * does not start QoS > 0 publishes meanwhile (mqtt.c paho_enter). */
#define MRB_CALLBACK_SLOW_MS 50
/* Stream mode: entries read but not yet completed on MQTT, at most; keys
 * followed at most; entries per XREADGROUP at most. */
#define MRB_SX_WINDOW 512
#define MRB_STREAM_KEYS_MAX 4096
#define MRB_STREAM_COUNT 100

typedef enum conn_state { CONN_DOWN = 0, CONN_CONNECTING, CONN_UP } conn_state;

/* One route's rate limit (route options rate/burst; limits.c). */
typedef struct mrb_route_limit {
    mrb_bucket to_redis;          /* the ingest thread's */
    mrb_bucket to_mqtt;           /* main's */
    mrb_ratelimit rl_redis, rl_mqtt; /* its warning, per thread (the drops
                                     are counted in b->st: dropped_rate_limited) */
} mrb_route_limit;

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
    uint64_t stream_in;          /* stream entries read for MQTT */
    uint64_t stream_acked;       /* of those, XACKed after MQTT took them */
    uint64_t stream_reread;      /* pending entries read again (maybe dups) */
    uint64_t dropped_malformed;  /* stream entries without a payload field */
    uint64_t stalls;             /* Redis stopped answering: reconnected */
    uint64_t sub_lost;           /* the subscriber connection was lost */
    uint64_t redis_call_failed;  /* hiredis could not queue a command */
} mrb_counters;

/* One command on the ingest connection whose reply is awaited (ingest.c):
 * replies come in order, so they are matched to these in order. */
typedef struct mrb_cmd {
    uint64_t key;                /* PUBLISH: its echo fingerprint */
    unsigned route;              /* MRB_NO_ROUTE: not counted per route */
    unsigned target;             /* position among the message's targets */
    unsigned char kind;          /* CMD_HASH, CMD_PUBLISH, CMD_XADD */
    unsigned char note;          /* PUBLISH: mrb_echo_note_result */
} mrb_cmd;

/* MQTT -> Redis: the ingest thread's state (ingest.c). */
typedef struct mrb_ingest {
    pthread_t thread;
    int started;
    atomic_int quit;
    atomic_int up;               /* connected (for "ready") */
    pthread_cond_t work;         /* [in_lock] signalled on push when idle */
    int idle;                    /* [in_lock] waiting on work */
    int trim_due;                /* messages passed since the last mrb_trim() */
    size_t busy;                 /* [in_lock] in in_q or unacked */
    pthread_mutex_t fd_lock;
    int io_fd;                   /* [fd_lock] socket of c, or -1 */
    /* the ingest thread's own */
    redisContext *c;
    mrb_queue unacked;           /* sent or to send, replies awaited, in order */
    mrb_msg *unsent;             /* first of unacked not sent on this connection */
    mrb_msg *unsent_prev;        /* the one before it (NULL: unsent is the head) */
    mrb_msg *rcur, *rprev;       /* the message the next reply is for, and the
                                    one before it (NULL: look from the head) */
    size_t outstanding, outstanding_bytes;
    /* Redis refused messages for now (OOM, LOADING...: mrb/rerror.h) or a
     * command could not be queued: those messages are kept (in unacked, in
     * order, unacknowledged) and sent again, one at a time, at retry_at_ms
     * (backoff), until Redis takes one; nothing new is sent meanwhile */
    size_t kept;
    int refusing, probing, refusal_logged;
    int64_t retry_at_ms, refused_since_ms;
    mrb_backoff refuse_backoff;
    /* the echo table is full (echo.h): the next message waits for room,
     * unless main may be blocked in Paho behind a waiting callback */
    atomic_int echo_wait;
    size_t echo_need;            /* copies the waiting message needs */
    int echo_force;              /* send the next one without room */
    unsigned force_calls;        /* main's Paho calls when the wait began */
    int forcing;                 /* main is blocked in call forcing_calls: */
    unsigned forcing_calls;      /* ... send without room until it ends */
    int64_t force_after_ms;
    mrb_logbuf log;              /* lines formatted under a lock */
    int64_t warn_at_ms;          /* summaries of warning bursts due then */
    mrb_targets tg;
    mrb_backoff backoff;
    int64_t next_attempt_ms;
    int outage_logged;
    int64_t down_since_ms;
    mrb_ratelimit rl_unmappable, rl_send, rl_large, rl_append;
    mrb_msg *held;               /* waiting for a route's rate limit (QoS > 0)
                                    or for echo room (held_until_ms 0) */
    int64_t held_until_ms;
    /* each command sent and not answered yet, in order; grows like tg,
     * then reused */
    mrb_cmd *cmd;
    size_t cmd_cap, cmd_head, cmd_n;
    /* counters, read by the stats line */
    atomic_ullong redis_out, resent, echoes, stalls, connects;
    atomic_ullong refused;       /* commands Redis refused for now (kept) */
    atomic_ullong append_failed; /* commands that could not be queued (kept) */
    atomic_ullong echo_waits;    /* times a message waited for echo room */
    atomic_ullong dropped_unmappable, dropped_send_failed;
    atomic_ullong dropped_too_large; /* grew past max_payload in its envelope */
    atomic_ullong hash_updates;  /* HSET/HDEL of store routes sent (once
                                    per message, not per re-send) */
} mrb_ingest;

typedef struct mrb_in_counters { /* [in_lock] */
    uint64_t mqtt_in;            /* messages taken from MQTT */
    uint64_t dropped_too_large;  /* MQTT messages over max_payload */
    uint64_t dropped_queue_full; /* oldest dropped from the full MQTT->Redis queue */
    uint64_t duplicates;         /* extra copies for overlapping subscriptions */
    uint64_t retained_skipped;   /* stored retained messages replayed on subscribe */
    uint64_t redelivered;        /* arrived with the DUP flag: a broker resend */
    uint64_t left_with_broker;   /* QoS > 0, not acknowledged at shutdown */
    uint64_t given_back;         /* QoS > 0, given back to the broker while
                                    main was blocked behind its callback */
    uint64_t dropped_shutdown;   /* QoS 0 arriving after shutdown began */
    uint64_t nomem;              /* could not be copied */
} mrb_in_counters;

/* Events Paho's threads post to the main thread. */
enum {
    MQTT_EV_CONNECTED = 1u << 0,
    MQTT_EV_CONNECT_FAILED = 1u << 1,
    MQTT_EV_LOST = 1u << 2,
    MQTT_EV_SUBACK = 1u << 3,
    MQTT_EV_WINDOW = 1u << 4,
    MQTT_EV_GONE = 1u << 5       /* main: Paho says disconnected, no LOST came */
};

/* One MQTT publish in flight: Paho's context for its completion. */
typedef struct mrb_pubslot {
    atomic_int busy;
    struct mrb_bridge *b;
    unsigned route;              /* MRB_NO_ROUTE: not a route's message */
    size_t bytes;
    int64_t t0_us;               /* taken from Redis */
} mrb_pubslot;
#define MRB_NO_ROUTE ((unsigned)-1)
/* more than MRB_MQTT_WINDOW: a free one is found while below the window */
#define MRB_PUB_SLOTS (MRB_MQTT_WINDOW + 8)

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
    atomic_int sock_fd;          /* the broker connection's socket, or -1 */
    atomic_int killed;           /* closed under Paho at shutdown: stay down */
    atomic_int remake;           /* a QoS > 0 write failed: new client (mqtt.c) */
    char **unsub;                /* filters a reload removed while down: */
    size_t n_unsub;              /* ... unsubscribed at the next connect */
    char **resub;                /* filters whose SUBSCRIBE could not be made */
    size_t n_resub;              /* ... tried again from mrb_mqtt_tick */
    int online_due;              /* "online" not taken by Paho yet */
    atomic_ullong call_failed;   /* Paho set-up calls that failed */
    int call_failed_logged;      /* ... logged for this connection */
    mrb_pubslot *slot;           /* [MRB_PUB_SLOTS] */
    size_t slot_next;            /* main: where to look for a free one */
    uint64_t connects;           /* sessions begun (main) */
    char last_error[200];        /* why the last connect failed / ended (main) */

    pthread_mutex_t ev_lock;
    unsigned ev;                 /* [ev_lock] MQTT_EV_* */
    int ev_code;                 /* [ev_lock] failure code / reason */
    char ev_text[200];           /* [ev_lock] failure text */
    char ev_tls[240];            /* [ev_lock] OpenSSL's last error text */
    size_t ev_subacks, ev_subfails; /* [ev_lock] */
} mrb_mqtt;

typedef struct mrb_rconn {
    const char *name;            /* "publisher" / "subscriber" / "reader" */
    struct mrb_bridge *b;
    redisAsyncContext *ac;       /* NULL when down; hiredis frees it */
    conn_state state;
    int want_read, want_write;
    int64_t deadline_ms;         /* CONNECTING: give up then */
    int64_t next_attempt_ms;     /* DOWN: try again then */
    mrb_backoff backoff;
    size_t confirmed;            /* subscriber: subscriptions confirmed */
    size_t cmds;                 /* publisher, reader: any replies pending */
    int64_t wait_since_ms;       /* ... awaited since (stall check) */
    int64_t last_io_ms;          /* last reply or connect (keepalive PING) */
    uint64_t connects;           /* times it came up */
    long long client_id;         /* reader: CLIENT ID, for CLIENT UNBLOCK;
                                    subscriber: for CLIENT LIST ID */
    int draining;                /* subscriber: Redis closed it: read it out */
    int reading;                 /* reader: an XREADGROUP is outstanding */
    int blocked;                 /* reader: ... and it may block */
    char last_error[200];
} mrb_rconn;

/* One stream key the reader follows. */
typedef struct mrb_skey {
    char *name;
    int pending;                 /* re-reading our pending entries (PEL) */
    int stale;                   /* the read in flight predates a failure */
    char last_id[48];            /* PEL read position */
} mrb_skey;

/* A stream entry published to MQTT and not completed yet: Paho's context.
 * Allocated by main, handed to Paho, put on sx_done by Paho's thread. */
typedef struct mrb_sx {
    struct mrb_sx *next;
    struct mrb_bridge *b;
    int ok;
    unsigned route;              /* for the stats: route, size, start */
    size_t bytes;
    int64_t t0_us;
    char tag[];                  /* key '\0' id '\0' */
} mrb_sx;

typedef struct mrb_bridge {
    const mrb_config *cfg;
    char mqtt_url[300];          /* URLs for logs, passwords as "***" */
    char redis_url[300];
    mrb_routes routes;           /* swapped by main on reload, see above */
    pthread_mutex_t routes_lock;
    unsigned routes_gen;         /* [routes_lock] +1 per reload */
    atomic_ullong rate_limited_total; /* QoS 0 dropped over a rate, all routes */
    mrb_reload_fn reload;        /* reads the configuration again (SIGHUP) */
    void *reload_ctx;
    mrb_route_limit *limits;     /* per route (see above); NULL: none limited;
                                    swapped with routes */
    int64_t limits_due_ms[2];    /* [to_redis] a summary of their warnings
                                    is due then (mrb_limits_flush; [1] under
                                    routes_lock) */
    int64_t out_rate_wait_ms;    /* main: out_q's head waits for a token until */
    int64_t sx_rate_wait_ms;     /* main: sx_q's head likewise (streams) */
    int wake_fd[2];
    atomic_int wake_pending;

    pthread_mutex_t in_lock;
    mrb_queue in_q;              /* [in_lock] MQTT -> Redis */
    mrb_in_counters ic;          /* [in_lock] */
    mrb_ratelimit in_rl_large;   /* [in_lock] */
    mrb_ratelimit in_rl_full;    /* [in_lock] */

    pthread_cond_t in_cond;      /* [in_lock] in_acked_seq or in_release */
    uint64_t in_seq;             /* [in_lock] last arrival number given */
    uint64_t in_acked_seq;       /* [in_lock] a QoS > 0 message done */
    int in_release;              /* [in_lock] MQTT disconnected: stop waiting */
    atomic_int in_waiting;       /* [in_lock to write] a receive thread waits */
    atomic_llong in_wait_since_ms; /* ... since then */
    atomic_int intake_stopped;   /* shutdown: take no new messages */
    mrb_ingest ing;

    /* main's calls into Paho (mqtt.c paho_enter): counted, and flagged
     * while inside, so that the ingest thread can tell whether main may
     * be blocked behind a waiting message callback (echo.h, ingest.c) */
    atomic_uint paho_calls;
    atomic_int main_in_paho;
    atomic_int paho_skipped;     /* main skipped a publish: wake it */
    mrb_echo *echo;              /* the echo guard (echo.h) */
    atomic_int mqtt_echo_wait;   /* main holds publishes for MQTT echo room */
    mrb_queue out_q;             /* Redis -> MQTT, waiting for the broker */
    mrb_mqtt mqtt;
    mrb_rconn rpub, rsub, rread;

    /* stream mode, Redis -> MQTT */
    mrb_skey *skeys;
    size_t n_skeys;
    int scanned_once;            /* first scan done: later groups start at 0 */
    int scan_busy;               /* SCAN/XGROUP replies outstanding */
    int scan_full;               /* this scan re-creates known keys' groups */
    int scan_from_now;           /* the scan after a reload: clears mrb_sub.fresh */
    int rescan;                  /* scan again when the current scan ends */
    size_t scan_sub;             /* stream_sub being scanned */
    int64_t next_scan_ms;
    mrb_queue sx_q;              /* entries read, waiting for the broker */
    size_t sx_inflight;          /* handed to Paho, not on sx_done yet */
    pthread_mutex_t sx_lock;
    mrb_sx *sx_done;             /* [sx_lock] completed by Paho */
    char group[96];              /* consumer group: mqtt-redis-bridge:<id> */
    int keys_dirty;              /* keys added while a read was blocked */
    int unblock_sent;            /* CLIENT UNBLOCK sent for this read */
    int64_t read_after_ms;       /* after a refused read: wait until then */
    /* echo guard (echo.h) on the subscriber: the fence before it
     * connects; every subscription confirmed; a reload's changes waiting
     * for the fence ("0name" SUBSCRIBE, 1 PSUBSCRIBE, 2 UNSUBSCRIBE, 3
     * PUNSUBSCRIBE) */
    int sub_fencing, sub_echo_on;
    /* subscriber held for back-pressure: looked for (CLIENT LIST ID) then */
    int sub_held, sub_check_busy, sub_check_off;
    int64_t sub_check_ms;
    char **sub_diff;
    size_t n_sub_diff;
    int redis_outage_logged;
    int redis_refusal_logged;    /* credentials / ACL refusal logged */
    int64_t redis_down_since_ms;

    mrb_targets tg;
    mrb_counters c;
    mrb_stats_table st;          /* per-route counters (see above) */
    int64_t started_unix, started_ms;
    int64_t next_stats_ms;       /* stats_interval: next report due */
    int stats_reported;          /* the first report (at "ready") is out */
    int stats_final;             /* the "stopped" report was sent */
    size_t stats_pending;        /* its Redis replies outstanding */
    mrb_ratelimit rl_unmappable, rl_large, rl_full, rl_send, rl_malformed;
    struct mrb_replay *replay;   /* replay_io.c; NULL: no stream route */

    int ready;                   /* logged "ready" for the current up-phase */
    int reload_wait;             /* a reload's subscriptions not all in place */
    int stopping;
    int fatal;                   /* an unrecoverable error was logged: exit 1 */
} mrb_bridge;

/* pump.c: Redis -> MQTT, pub/sub (main thread) */
void mrb_bridge_on_redis_message(mrb_bridge *b, const char *sub, size_t sublen,
                                 const char *channel, size_t clen,
                                 const char *payload, size_t plen);

/* Before each publish to the broker: MQTT 3.1.1 has no No Local, so note
 * what may come back on our own subscriptions. MRB_ECHO_FULL: do not
 * publish now (the table is full; the ingest thread wakes main when it has
 * taken copies). If the publish then does not go out, take the note back. Before, not after: the copy
 * can be back, and judged on the ingest thread, before the send returns. */
mrb_echo_note_result mrb_bridge_note_mqtt_publish(mrb_bridge *b, const char *topic,
                                                  size_t tlen, const char *payload,
                                                  size_t plen);
void mrb_bridge_unnote_mqtt_publish(mrb_bridge *b, const char *topic, size_t tlen,
                                    const char *payload, size_t plen,
                                    mrb_echo_note_result how);

/* bridge.c */
void mrb_bridge_wake(mrb_bridge *b);
/* One rate-limited line for a message no route can map (any thread, with
 * its own rl and counter; lb: formatted into it, to be written after a
 * lock is released; NULL: written now). */
void mrb_warn_unmappable(mrb_ratelimit *rl, uint64_t count, const char *side,
                         const char *name, size_t len, mrb_logbuf *lb);
void mrb_bridge_warn_unmappable(mrb_bridge *b, const char *side,
                                const char *name, size_t len);
void mrb_bridge_warn_too_large(mrb_bridge *b, const char *side,
                               const char *name, size_t len, size_t plen);
/* Route option unwrap: the payload of the envelope p (main thread). 1 and
 * *out (free()) on success; 0 if p is not an envelope (counted as
 * dropped_malformed, one rate-limited warning). */
int mrb_bridge_unwrap(mrb_bridge *b, const char *side, const char *name,
                      size_t len, const char *p, size_t plen, char **out,
                      size_t *outn);

/* limits.c: the per-route rate limits (main thread, before and after the
 * other threads run). NULL from alloc when no route has a rate or out of
 * memory (*err says which). */
mrb_route_limit *mrb_limits_alloc(const mrb_routes *t, int64_t now, mrb_err *err);
void mrb_limits_free(mrb_route_limit *l);
/* A QoS 0 message dropped over route ri's limit: counted in the route's
 * stats (b->st, direction to_redis or not), one rate-limited warning (the
 * calling direction's thread, its rl; the ingest thread holds
 * routes_lock, and gives lb: the line is written after the unlock). */
void mrb_limits_dropped_one(mrb_bridge *b, size_t ri, int to_redis,
                            mrb_ratelimit *rl, const char *side, const char *name,
                            size_t len, mrb_logbuf *lb);
/* The summaries of the ended bursts of those warnings, for one direction
 * (its thread; the ingest thread holds routes_lock and gives lb). Returns
 * when the next is due. */
int64_t mrb_limits_flush(mrb_bridge *b, int to_redis, int64_t now, mrb_logbuf *lb);

/* mqtt.c: all main thread unless noted */
mrb_err mrb_mqtt_init(mrb_bridge *b);
void mrb_mqtt_destroy(mrb_bridge *b);
void mrb_mqtt_tick(mrb_bridge *b, int64_t now);      /* events, reconnects */
int64_t mrb_mqtt_next_timer(const mrb_bridge *b);
/* MRB_OK sent; MRB_ERR_FULL try later; MRB_ERR_CONN down; MRB_ERR_INVALID
 * refused by Paho (dropped by the caller). */
mrb_err mrb_mqtt_publish(mrb_bridge *b, const char *topic, const void *payload,
                         size_t len, int qos, int retain, unsigned route,
                         int64_t t0_us);
/* A QoS 0 message of the bridge's own (stats), not counted; MRB_ERR_CONN
 * when not connected. */
mrb_err mrb_mqtt_publish_own(mrb_bridge *b, const char *topic, const void *payload,
                             size_t len, int retain);
/* The same for a stream entry: sx (key and entry id, MQTT 5 user properties
 * "stream" and "stream-id") is Paho's until it puts it on sx_done. */
mrb_err mrb_mqtt_publish_sx(mrb_bridge *b, const char *topic, const void *payload,
                            size_t len, int qos, int retain, mrb_sx *sx);
/* Extra MQTT 5 properties of a publish (ignored with MQTT 3.1.1). */
typedef struct mrb_pub_props {
    const void *corr;            /* Correlation Data, or NULL */
    size_t corr_len;
    const char *names[2], *vals[2]; /* user properties */
    int n_user;
} mrb_pub_props;
mrb_err mrb_mqtt_publish_props(mrb_bridge *b, const char *topic,
                               const void *payload, size_t len, int qos,
                               int retain, const mrb_pub_props *pp);
/* Close the broker connection's socket under Paho (any thread): nothing
 * more, a PUBACK included, reaches the broker. 0 if not known. stay_down:
 * no reconnect (shutdown); else main reconnects as after any loss. */
int mrb_mqtt_kill_socket(mrb_bridge *b, int stay_down);
int mrb_mqtt_ready(const mrb_bridge *b);
/* After a reload replaced old with b->routes: subscribe the new filters,
 * unsubscribe the removed ones (now, or at the next connect). Counts both. */
void mrb_mqtt_apply_routes(mrb_bridge *b, const mrb_routes *old, int had_replay,
                           size_t *added, size_t *removed);
void mrb_mqtt_free_pending(mrb_bridge *b);
/* Publish "offline", disconnect; waits at most timeout_ms. */
void mrb_mqtt_shutdown(mrb_bridge *b, int timeout_ms);

/* intake.c: Paho's message callback (its receive thread; mqtt_int.h) */
/* Let a receive thread waiting in the message callback return (after the
 * network connection is closed, so that its PUBACK is not sent). Main. */
void mrb_mqtt_release_waiter(mrb_bridge *b);

/* redis.c */
void mrb_redis_init(mrb_bridge *b);
void mrb_redis_tick(mrb_bridge *b, int64_t now);     /* connects, timeouts */
int64_t mrb_redis_next_timer(const mrb_bridge *b);
/* Add the hiredis fds to pfd; returns how many were added (<= 2). */
int mrb_redis_pollfds(mrb_bridge *b, struct pollfd *pfd, mrb_rconn **owner);
void mrb_redis_handle(mrb_rconn *rc, short revents);
int mrb_redis_pub_ready(const mrb_bridge *b);
int mrb_redis_sub_ready(const mrb_bridge *b);
void mrb_redis_close_sub(mrb_bridge *b);
void mrb_redis_close_reader(mrb_bridge *b);
/* Every Redis subscription of the table confirmed (or none needed). */
int mrb_redis_sub_in_place(const mrb_bridge *b);
/* After a reload replaced old with b->routes: SUBSCRIBE / UNSUBSCRIBE the
 * difference on a subscriber that is up (else it subscribes the new table
 * when it connects). Counts the Redis subscriptions added and removed. */
void mrb_redis_apply_routes(mrb_bridge *b, const mrb_routes *old, size_t *added,
                            size_t *removed);
void mrb_redis_destroy(mrb_bridge *b);
/* Send cmd (argv form) on the publisher; fn gets the reply (or NULL). */
mrb_err mrb_redis_command(mrb_rconn *rc, redisCallbackFn *fn, void *priv,
                          int argc, const char **argv, const size_t *lens);
/* A connection that stopped answering, or the whole server: reconnect. */
void mrb_redis_reset(mrb_rconn *rc, const char *why);
void mrb_redis_got_reply(mrb_rconn *rc);
int64_t mrb_redis_connect_timeout_ms(const mrb_bridge *b);

/* stats_report.c: main thread */
void mrb_stats_tick(mrb_bridge *b, int64_t now);     /* publish when due */
int64_t mrb_stats_next_timer(const mrb_bridge *b);
void mrb_stats_log(mrb_bridge *b);                   /* SIGUSR1 and exit */
void mrb_stats_stopped(mrb_bridge *b);               /* status "stopped" */
/* The route behind a subscription, for drops before mapping (any thread). */
static inline mrb_route_stats *mrb_stats_by_mqtt_sub(mrb_bridge *b, size_t sub)
{
    size_t r = sub < b->routes.n_mqtt_sub ? b->st.mqtt_sub_route[sub] : MRB_NO_SUB;
    return r < b->st.n ? &b->st.r[r] : NULL;
}
static inline mrb_route_stats *mrb_stats_by_redis_sub(mrb_bridge *b, size_t sub)
{
    size_t r = sub < b->routes.n_redis_sub ? b->st.redis_sub_route[sub] : MRB_NO_SUB;
    return r < b->st.n ? &b->st.r[r] : NULL;
}

/* ingest.c */
mrb_err mrb_ingest_start(mrb_bridge *b);
void mrb_ingest_kick(mrb_bridge *b);         /* receive thread, in_lock held */
void mrb_ingest_kick_unlocked(mrb_bridge *b); /* main: takes in_lock */
/* Return freed heap pages to the system (glibc malloc_trim; elsewhere a
 * no-op). Any thread; called only when idle after traffic. */
void mrb_trim(void);
void mrb_ingest_stop(mrb_bridge *b);         /* main: quit and join */
void mrb_ingest_clear(mrb_bridge *b, size_t *lost, size_t *kept);

/* stream.c: stream mode, Redis -> MQTT (main thread) */
mrb_err mrb_stream_init(mrb_bridge *b);
void mrb_stream_free(mrb_bridge *b);
int mrb_stream_needed(const mrb_bridge *b);
void mrb_stream_on_pub_up(mrb_bridge *b);     /* (re)discover keys */
void mrb_stream_on_reader_up(mrb_bridge *b);  /* re-read our PEL */
void mrb_stream_on_reader_down(mrb_bridge *b);
void mrb_stream_tick(mrb_bridge *b, int64_t now);
int64_t mrb_stream_next_timer(const mrb_bridge *b);
void mrb_stream_pump(mrb_bridge *b);          /* publish, XACK, read */
int mrb_stream_drained(mrb_bridge *b);
/* After a reload replaced old with b->routes: stop following keys no stream
 * route matches, find the new ones (their groups start at '$'). */
mrb_err mrb_stream_apply_routes(mrb_bridge *b, const mrb_routes *old,
                                size_t *added, size_t *removed);

/* replay_io.c: replay requests for stream routes (docs/ROUTES.md "Replay") */
typedef struct mrb_replay_counters {
    uint64_t requests;           /* requests taken */
    uint64_t messages;           /* stream entries sent as answers */
    uint64_t errors;             /* requests answered with an error */
    uint64_t dropped;            /* requests or answers dropped (full, down) */
} mrb_replay_counters;
/* The replay request subscription's MQTT 5 Subscription Identifier: the
 * largest allowed; the routes' ids (mrb_sub.id, derived from the filter
 * text) stay below it. */
#define MRB_REPLAY_SUB_ID 268435455u
/* Main, before the MQTT client exists: on if any route is in stream mode. */
mrb_err mrb_replay_init(mrb_bridge *b);
/* Main, after a reload: turn replay on if a route is now in stream mode.
 * 1 if it was turned on now (its topic is to be subscribed). */
int mrb_replay_update(mrb_bridge *b);
void mrb_replay_free(mrb_bridge *b);          /* main, after Paho and hiredis */
/* Main: no request waiting, no query in flight on a live connection, no
 * answer queued (shutdown waits for it). */
int mrb_replay_drained(mrb_bridge *b);
/* Main, at shutdown, before hiredis is freed: its queries still in flight
 * are then dropped and counted, not answered with an error. */
void mrb_replay_closing(mrb_bridge *b);
/* Main, after Paho and hiredis (shutdown): drop the waiting requests and
 * queued answers, counted as replay_dropped; returns how many were dropped
 * since mrb_replay_closing(), these included. */
size_t mrb_replay_clear(mrb_bridge *b);
/* The request topic bridge/<id>/replay, or NULL when replay is off. */
const char *mrb_replay_topic(const mrb_bridge *b);
/* Paho's receive thread: 1 if topic is the request topic, and then the
 * message is dealt with (queued for main, or dropped and counted) and must
 * not be bridged; 0 otherwise. */
int mrb_replay_take(mrb_bridge *b, const char *topic, size_t len,
                    MQTTAsync_message *msg);
void mrb_replay_pump(mrb_bridge *b);          /* requests out, answers out */
/* Main: summaries of ended warning bursts; when the next is due. */
int64_t mrb_replay_flush_warnings(mrb_bridge *b, int64_t now);
void mrb_replay_get_counters(mrb_bridge *b, mrb_replay_counters *out);

#endif
