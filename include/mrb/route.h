/*
 * route.h - routes between MQTT topic filters and Redis channel patterns.
 *
 * A route pairs an MQTT filter with a Redis pattern. The k-th wildcard of the
 * filter ('+' one level, '#' the rest) corresponds to the k-th '*' of the
 * pattern. A '+' capture is copied verbatim; a '#' capture has its level
 * separators translated ('/' <-> ':'). A message crosses a route only if it
 * matches on both sides: the name it is mapped to must itself be a valid name
 * that the other side of the route matches.
 *
 * Everything here is pure: strings in, strings out, no I/O, no threads.
 * mrb_routes is immutable once built and may be read from any thread.
 */
#ifndef MRB_ROUTE_H
#define MRB_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "mrb/err.h"

#define MRB_TOPIC_MAX 65535 /* MQTT topic names are length-prefixed u16 */
#define MRB_WILDCARDS_MAX 16

typedef enum mrb_direction {
    MRB_DIR_BOTH = 0,
    MRB_DIR_MQTT_TO_REDIS,
    MRB_DIR_REDIS_TO_MQTT
} mrb_direction;

/* How a route carries messages on the Redis side. */
typedef enum mrb_mode {
    MRB_MODE_PUBSUB = 0, /* PUBLISH / (P)SUBSCRIBE: at most once in Redis */
    MRB_MODE_STREAM      /* XADD / XREADGROUP + XACK: a durable log per key */
} mrb_mode;

#define MRB_MAXLEN_DEFAULT 10000
#define MRB_RATE_MAX 1000000L /* route rate and burst: at most this */

/* Where else an MQTT->Redis route keeps what it carries. */
typedef enum mrb_store {
    MRB_STORE_NONE = 0,
    MRB_STORE_HASH       /* latest value per topic in a Redis hash (presence) */
} mrb_store;

/* How an MQTT->Redis route wraps a payload (see mrb/envelope.h). */
typedef enum mrb_envelope_kind {
    MRB_ENVELOPE_NONE = 0, /* raw pass-through */
    MRB_ENVELOPE_JSON
} mrb_envelope_kind;

typedef struct mrb_route {
    char *mqtt;         /* MQTT topic filter (owned) */
    char *redis;        /* Redis channel or pattern, or stream key (owned) */
    mrb_direction dir;
    int qos;            /* 0..2: subscription QoS and QoS of MQTT publishes */
    int retain;         /* publish to MQTT with the retain flag */
    mrb_mode mode;
    long maxlen;        /* stream mode: XADD MAXLEN ~ maxlen */
    /* route options (all off by default) */
    mrb_store store;    /* MQTT->Redis: also HSET hash field payload */
    char *hash;         /* store: the hash's name (owned; NULL otherwise) */
    mrb_envelope_kind envelope; /* MQTT->Redis: wrap payloads */
    int unwrap;         /* Redis->MQTT: payloads are envelopes to unwrap */
    long rate;          /* messages/s per direction, 0 = unlimited */
    long burst;         /* token bucket size (0: as rate) */
} mrb_route;

const char *mrb_direction_name(mrb_direction dir);
const char *mrb_direction_arrow(mrb_direction dir);
const char *mrb_mode_name(mrb_mode mode);
const char *mrb_store_name(mrb_store store);
const char *mrb_envelope_name(mrb_envelope_kind kind);

/* Check a route's filter, pattern and options; message says what is wrong
 * (without the key path or source, which the caller prepends). */
mrb_err mrb_route_check(const mrb_route *r, char *msg, size_t msglen);

/* Parse "FILTER ARROW PATTERN [qos=N] [retain] [stream] [maxlen=N]
 * [store=hash] [hash=NAME] [envelope=json|none] [unwrap] [rate=N] [burst=N]"
 * into *out (strings owned by *out; free with mrb_route_free). "hash=NAME"
 * alone implies store=hash. Checks the route as mrb_route_check. */
mrb_err mrb_route_parse_spec(const char *spec, mrb_route *out, char *msg,
                             size_t msglen);
void mrb_route_free(mrb_route *r);
/* Deep copy (strings duplicated); MRB_ERR_NOMEM leaves *dst freed. */
mrb_err mrb_route_copy(mrb_route *dst, const mrb_route *src);

/* "user/+ <> user:* qos=1 retain", "... stream maxlen=1000", options after
 * ("store=hash hash=NAME envelope=json unwrap rate=N burst=N"): the same
 * syntax mrb_route_parse_spec reads. */
void mrb_route_format(const mrb_route *r, char *buf, size_t buflen);

/* --- name checks -------------------------------------------------------- */

int mrb_utf8_valid(const char *s, size_t len);
/* MQTT filter syntax (wildcards whole levels, '#' last). */
int mrb_filter_valid(const char *filter);
/* A topic a client may publish to: non-empty, <= 65535 bytes, UTF-8, no
 * '+', '#' or NUL, not starting with '$'. */
int mrb_topic_valid(const char *topic, size_t len);
/* MQTT matching, including "wildcards do not match $-topics at level 1". */
int mrb_filter_matches(const char *filter, const char *topic, size_t len);
/* Redis glob matching for patterns whose only special character is '*'. */
int mrb_glob_matches(const char *pattern, const char *s, size_t len);

/* --- mapping one route --------------------------------------------------- */

/* Map an MQTT topic through route r to a Redis channel written to out
 * (outlen bytes, not NUL-terminated; length in *outn). MRB_ERR_NOMATCH if the
 * topic does not match or cannot be mapped, MRB_ERR_FULL if out is small. */
mrb_err mrb_route_map_to_redis(const mrb_route *r, const char *topic,
                               size_t len, char *out, size_t outlen,
                               size_t *outn);
/* The hash field of a store route for an MQTT topic: the parts of the topic
 * its wildcards matched, joined with '/' (a '#' part keeps its own '/'s);
 * a filter without wildcards gives the whole topic. MRB_ERR_NOMATCH if r
 * does not match, MRB_ERR_FULL if out is small. */
mrb_err mrb_route_hash_field(const mrb_route *r, const char *topic, size_t len,
                             char *out, size_t outlen, size_t *outn);
/* Map a Redis channel through r to an MQTT topic, likewise. */
mrb_err mrb_route_map_to_mqtt(const mrb_route *r, const char *channel,
                              size_t len, char *out, size_t outlen,
                              size_t *outn);

/* --- the route table ------------------------------------------------------ */

/* One subscription the bridge holds on a side. Several routes may share it. */
typedef struct mrb_sub {
    char *name;        /* MQTT filter or Redis channel/pattern (owned) */
    int qos;           /* MQTT: highest QoS of the routes using it */
    int exact;         /* Redis: no '*', so SUBSCRIBE instead of PSUBSCRIBE */
    int retained;      /* MQTT: a store route uses it: have the broker send
                          its retained messages on subscribe */
    unsigned id;       /* MQTT 5 subscription identifier: derived from the
                          name, kept across reloads and restarts */
    int fresh;         /* new in a reloaded table (stream.c clears it once
                          the keys of the routes held before are found) */
} mrb_sub;

typedef struct mrb_routes {
    mrb_route *route;  /* copies of the routes (owned) */
    size_t n;
    mrb_sub *mqtt_sub; /* distinct filters of routes that carry MQTT->Redis */
    size_t n_mqtt_sub;
    mrb_sub *redis_sub;/* distinct patterns of pub/sub routes that carry
                          Redis->MQTT; exact channels first, then patterns */
    size_t n_redis_sub;
    mrb_sub *stream_sub;/* distinct keys/patterns of stream routes that carry
                          Redis->MQTT (read through a consumer group) */
    size_t n_stream_sub;
    /* Lookup indexes by first level / first segment (routes.c), so that the
     * cost per message does not grow with the number of routes: routes by
     * MQTT filter, routes by Redis pattern, mqtt_sub, redis_sub. */
    struct mrb_rindex *ix_route_mqtt, *ix_route_redis, *ix_mqtt_sub, *ix_redis_sub;
} mrb_routes;

#define MRB_NO_SUB ((size_t)-1)

/* Build the table from n checked routes (copied). Free with mrb_routes_free. */
mrb_err mrb_routes_build(mrb_routes *t, const mrb_route *routes, size_t n);
/* The same for a table that replaces prev (a reload): the subscriptions prev
 * also has come first, in prev's order and with prev's ids, so that a
 * subscription the bridge already holds stays the canonical one for the
 * messages it carries; new subscriptions follow, marked fresh. Table order
 * is the priority order of the canonical lookups below. */
mrb_err mrb_routes_build_from(mrb_routes *t, const mrb_route *routes, size_t n,
                              const mrb_routes *prev);
void mrb_routes_free(mrb_routes *t);

/* The first MQTT subscription whose filter matches topic, or MRB_NO_SUB. A
 * broker may deliver one message once per matching subscription; the bridge
 * acts only on the copy that carries this one (see bridge.c). */
size_t mrb_routes_mqtt_canonical(const mrb_routes *t, const char *topic,
                                 size_t len);
/* MQTT 5: is a message that carries the Subscription Identifiers ids an
 * extra copy, to be dropped? 1 if it carries the id of a subscription that
 * matches topic but not the canonical one's; 0 (forward it) if it carries
 * the canonical one's, or none of a matching subscription: a copy by a
 * filter a reload just removed, whose replacement may not be in place yet,
 * is forwarded rather than lost (at least once). */
int mrb_routes_mqtt_is_copy(const mrb_routes *t, const char *topic, size_t len,
                            const unsigned *ids, size_t n_ids);
/* Likewise for Redis: the first subscription matching channel. */
size_t mrb_routes_redis_canonical(const mrb_routes *t, const char *channel,
                                  size_t len);
/* Does a store route carrying MQTT->Redis match topic? (Its retained
 * messages are state for the hash.) */
int mrb_routes_mqtt_stores(const mrb_routes *t, const char *topic, size_t len);
/* Index of the Redis subscription named name (as Redis reports it). */
size_t mrb_routes_redis_sub_index(const mrb_routes *t, const char *name,
                                  size_t len);

/* The distinct targets of one message. Reused across messages so the hot
 * path does not allocate once it has grown; owned by one thread. */
typedef struct mrb_target {
    size_t off, len;   /* name in buf */
    size_t route;      /* index of the first route that produced it */
} mrb_target;

typedef struct mrb_targets {
    char *buf;
    size_t cap, used;
    mrb_target *v;
    size_t n, vcap;
    size_t unmappable; /* routes that matched one side but not the other */
} mrb_targets;

void mrb_targets_free(mrb_targets *tg);

/* Fill tg with the distinct Redis names an MQTT topic maps to, through
 * routes of both modes: a channel and a stream key of the same name are two
 * targets (the route of each tells its mode). */
mrb_err mrb_routes_map_mqtt(const mrb_routes *t, const char *topic, size_t len,
                            mrb_targets *tg);
/* Fill tg with the distinct MQTT topics a Redis name maps to, through the
 * routes of one mode only: a channel message (MRB_MODE_PUBSUB) or a stream
 * entry (MRB_MODE_STREAM). */
mrb_err mrb_routes_map_redis(const mrb_routes *t, mrb_mode mode,
                             const char *name, size_t len, mrb_targets *tg);

#endif
