/*
 * config.h - the bridge's configuration: defaults, the JSON file and their
 * validation (the command line is mrb/cli.h).
 *
 * Precedence: built-in defaults < config file < command line. Any --route on
 * the command line replaces the file's routes; with no route anywhere the
 * default routes "user/+ <> user:*" and "news <> news" apply.
 *
 * Every failure returns MRB_ERR_INVALID with one line in msg naming where
 * (file:line:col for JSON syntax, file plus key path such as
 * "routes[2].direction" for values) and what is allowed. Pure apart from
 * reading the files (configuration, password files; TLS files are only
 * checked for readability), the environment (MRB_MQTT_PASSWORD,
 * MRB_REDIS_PASSWORD) and the host name.
 *
 * Secrets: a password may come from the URL, a password_file or the
 * environment, from exactly one of them; it ends up in mqtt.password /
 * redis.password only. Nothing here prints it: messages quote URLs with the
 * password as "***".
 */
#ifndef MRB_CONFIG_H
#define MRB_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "mrb/err.h"
#include "mrb/log.h"
#include "mrb/route.h"
#include "mrb/url.h"

typedef enum mrb_mqtt_protocol {
    MRB_MQTT_AUTO = 0,   /* MQTT 5, falling back to 3.1.1 */
    MRB_MQTT_5,
    MRB_MQTT_311
} mrb_mqtt_protocol;

typedef enum mrb_tls_version {
    MRB_TLS_1_2 = 0,     /* the default: TLS 1.2 or 1.3 */
    MRB_TLS_1_3
} mrb_tls_version;

#define MRB_CONFIG_MAX_WARNINGS 4

typedef struct mrb_config {
    char *id;                 /* bridge id: client id and status topic */
    mrb_log_level log_level;
    int syslog;               /* log to syslog(3) instead of stderr */
    char *mqtt_url;           /* text as given */
    char *client_id;          /* default "mqtt-redis-bridge-<id>" */
    mrb_mqtt_protocol protocol;
    long keepalive;           /* seconds */
    uint32_t session_expiry;  /* seconds the broker keeps our session; 0: clean
                                 (MQTT 5: a four-byte integer) */
    char *redis_url;
    long redis_keepalive;     /* seconds: PING when idle, stall after; 0: off */
    long scan_interval;       /* seconds between stream key scans; 0: on connect */
    mrb_route *routes;        /* owned */
    size_t n_routes;
    long max_payload;         /* bytes; larger messages are dropped */
    long queue_messages;      /* per direction */
    long queue_bytes;         /* per direction */
    long reconnect_min_ms;
    long reconnect_max_ms;
    long shutdown_timeout_ms;
    long stats_interval;      /* seconds between stats reports; 0: off */
    /* mqtts:// */
    char *tls_ca_file;        /* PEM CA certificates; NULL: the system's */
    char *tls_ca_path;        /* directory of hashed CA certificates */
    char *tls_cert_file;      /* client certificate (chain), PEM */
    char *tls_key_file;       /* its private key, PEM; NULL: in cert_file */
    int tls_verify_hostname;  /* the certificate must name the URL's host */
    mrb_tls_version tls_min_version;
    /* passwords from files (first line) */
    char *mqtt_password_file;
    char *redis_password_file;

    /* derived by mrb_config_finish() */
    mrb_url mqtt;
    mrb_url redis;
    char *status_topic;       /* "bridge/<id>/status" */
    const char *mqtt_password_from;  /* "the URL", "mqtt.password_file", ... */
    const char *redis_password_from; /* NULL: no password */

    /* where values came from, for messages about them */
    char *source;             /* the JSON document applied (the -c file) */
    int max_payload_given;    /* limits.max_payload set there (else default) */
    int queue_bytes_given;    /* limits.queue_bytes set there */

    /* things worth a warning at start (a secret readable by others) */
    char warnings[MRB_CONFIG_MAX_WARNINGS][320];
    size_t n_warnings;
} mrb_config;


void mrb_config_init(mrb_config *cfg);
void mrb_config_free(mrb_config *cfg);

/* Apply a JSON document (text of len bytes) named source in messages. */
mrb_err mrb_config_load_json(mrb_config *cfg, const char *text, size_t len,
                             const char *source, char *msg, size_t msglen);
/* Read and apply a JSON file. */
mrb_err mrb_config_load_file(mrb_config *cfg, const char *path, char *msg,
                             size_t msglen);
/* Set the string key named by path ("mqtt.url", "id") as the file would,
 * its value checked by the schema row's check. MRB_ERR_INVALID with what is
 * wrong with the value in msg (no key or source in front). */
mrb_err mrb_config_set_string(mrb_config *cfg, const char *path,
                              const char *value, char *msg, size_t msglen);
/* Free an array of n routes and the routes' strings. */
void mrb_config_free_routes(mrb_route *routes, size_t n);
/* Fill defaults that depend on other values, parse URLs, check the whole. */
mrb_err mrb_config_finish(mrb_config *cfg, char *msg, size_t msglen);
/* The smallest limits.queue_bytes for cfg's limits.max_payload: one largest
 * message (payload, longest topic, MRB_MSG_OVERHEAD, which differs between
 * builds). --check prints it. */
long mrb_config_queue_bytes_min(const mrb_config *cfg);

/* The effective configuration, passwords redacted (for --check). */
void mrb_config_print(const mrb_config *cfg, FILE *out);

/* One key of the configuration file's schema (a row of config.c's table),
 * as the documentation names it: "limits.queue_bytes", route keys as
 * "routes[].rate". */
typedef struct mrb_config_key {
    char path[64];
    const char *type;         /* "string" "integer" "boolean" "enum" "object"
                                 "array" */
    int64_t min, max;         /* "integer": the allowed range, both included */
    const char *const *allowed; /* "enum": the values, NULL-terminated */
    char def[96];             /* the default as text ("" none), `code` quoted */
    const char *doc;          /* what it means, `code` quoted */
    int required;             /* must be given (in each route) */
    int route;                /* a key of each route object */
} mrb_config_key;

/* The schema's keys in table order, an object before its keys: the first n
 * into keys (keys may be NULL when n is 0); returns how many there are in
 * all. For tests that walk every key and for the documentation (mrb-docgen,
 * tools/docgen.c). */
size_t mrb_config_keys(mrb_config_key *keys, size_t n);

#endif
