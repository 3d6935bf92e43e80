/*
 * config.c - the JSON schema (one table row per key: type, bounds, default,
 * meaning), the defaults it gives, and reading a JSON file into a
 * configuration. The command line is cli.c, which sets keys through
 * mrb_config_set_string(); the whole-configuration checks are
 * config_finish.c; mrb-docgen (docgen.c) prints the table as documentation.
 */
#include "config_int.h"
#include "json_nul.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* ---------------------------------------------------------------- schema */

/* F_LONG fills a long, F_INT an int, F_U32 a uint32_t; F_ENUM and F_BOOL an
 * int. The bounds are int64_t: a long is 32 bits on the armhf board, too
 * small for some of them (mqtt.session_expiry's 4294967295). */
typedef enum ftype {
    F_STRING, F_LONG, F_INT, F_U32, F_BOOL, F_ENUM, F_OBJECT, F_ROUTES
} ftype;

typedef struct field {
    const char *name;
    ftype type;
    size_t off;                   /* into mrb_config, or mrb_route for routes */
    int64_t min, max;             /* F_LONG, F_INT, F_U32: within its type */
    const char *const *allowed;   /* F_ENUM, NULL-terminated; stored as int */
    const struct field *children; /* F_OBJECT, NULL-name-terminated */
    int required;
    /* F_STRING: further check of the value; msg says what is wrong */
    mrb_err (*check)(const char *value, char *msg, size_t msglen);
    /* The default: def for the integer, F_BOOL and F_ENUM (an index of
     * allowed) rows, which mrb_config_init() and each route start from;
     * sdef, a string row's, which mrb_config_finish() fills in when the key
     * is not set; def_doc, for the documentation only, one that depends on
     * other values (the host name, a route's rate). */
    int64_t def;
    const char *sdef, *def_doc;
    /* What the key means, for mqtt-redis-bridge.json(5) and
     * docs/CONFIGURATION.md (mrb-docgen): one paragraph, `code` in
     * backquotes. doc is DOC(): in mrb-docgen only. */
    const char *doc;
} field;


static const char *const log_levels[] = {"error", "warning", "info", "debug", NULL};
const char *const mrb_config__protocols[] = {"auto", "5", "3.1.1", NULL};
static const char *const directions[] = {"both", "mqtt_to_redis",
                                         "redis_to_mqtt", NULL};
static const char *const modes[] = {"pubsub", "stream", NULL};
static const char *const stores[] = {"none", "hash", NULL};
static const char *const envelopes[] = {"none", "json", NULL};
const char *const mrb_config__tls_versions[] = {"1.2", "1.3", NULL};

#define C(m) offsetof(mrb_config, m)
#define R(m) offsetof(mrb_route, m)
#define END {NULL, 0, 0, .doc = NULL}

static const field tls_fields[] = {
    {"ca_file", F_STRING, C(tls_ca_file), .def_doc = "the system's CAs",
     .doc = DOC("`mqtts://`: PEM file of the CA certificates the broker's "
                "certificate must chain to")},
    {"ca_path", F_STRING, C(tls_ca_path),
     .doc = DOC("`mqtts://`: directory of CA certificates (OpenSSL hashed names, "
                "`c_rehash`)")},
    {"cert_file", F_STRING, C(tls_cert_file),
     .doc = DOC("`mqtts://`: client certificate (chain), PEM, for brokers with "
                "`require_certificate`")},
    {"key_file", F_STRING, C(tls_key_file), .def_doc = "in `cert_file`",
     .doc = DOC("`mqtts://`: the client certificate's private key, PEM, "
                "unencrypted")},
    {"verify_hostname", F_BOOL, C(tls_verify_hostname), .def = 1,
     .doc = DOC("the broker's certificate must name the URL's host (DNS name or "
                "IP address)")},
    {"min_version", F_ENUM, C(tls_min_version),
     .allowed = mrb_config__tls_versions,
     .def = MRB_TLS_1_2, .doc = DOC("lowest TLS version accepted")},
    END};

static const field mqtt_fields[] = {
    {"url", F_STRING, C(mqtt_url), .check = mrb_config__check_mqtt_url,
     .sdef = "mqtt://127.0.0.1:1883",
     .doc = DOC("broker URL, as `--mqtt`: `mqtt://[user[:pass]@]host[:port]`, or "
                "`mqtts://...` for TLS (port 8883)")},
    {"client_id", F_STRING, C(client_id), .def_doc = "`mqtt-redis-bridge-<id>`",
     .doc = DOC("MQTT client identifier (must be unique per broker)")},
    {"protocol", F_ENUM, C(protocol), .allowed = mrb_config__protocols,
     .def = MRB_MQTT_AUTO,
     .doc = DOC("`auto` tries MQTT 5 and falls back to 3.1.1 if the broker refuses "
                "it (one warning; reconnects stay on 3.1.1; tested against aedes, "
                "a broker without MQTT 5)")},
    {"keepalive", F_LONG, C(keepalive), 1, 3600, .def = 30,
     .doc = DOC("MQTT keep-alive, seconds: a broker that stops answering is "
                "noticed within about twice this; also the connect timeout (2 s "
                "to 10 s)")},
    {"session_expiry", F_U32, C(session_expiry), 0, UINT32_MAX, .def = 3600,
     .doc = DOC("(on every board, 32-bit armhf included) seconds the broker keeps "
                "the bridge's session (subscriptions and QoS 1 messages) while it "
                "is away; `0`: a clean session each time (messages published "
                "while the bridge is away are not kept)")},
    {"password_file", F_STRING, C(mqtt_password_file),
     .doc = DOC("file whose first line is the MQTT password (instead of the URL "
                "or `MRB_MQTT_PASSWORD`)")},
    {"tls", F_OBJECT, 0, .children = tls_fields,
     .doc = DOC("certificates and TLS settings of an `mqtts://` broker URL")},
    END};

static const field redis_fields[] = {
    {"url", F_STRING, C(redis_url), .check = mrb_config__check_redis_url,
     .sdef = "redis://127.0.0.1:6379",
     .doc = DOC("as `--redis`: `redis://[user[:pass]@]host[:port][/db]` or "
                "`unix:/path/redis.sock`; user/password give `AUTH`, `/db` a "
                "`SELECT`")},
    {"keepalive", F_LONG, C(redis_keepalive), 0, 3600, .def = 30,
     .doc = DOC("seconds: PING after this long without a reply; a reply awaited "
                "longer means Redis stopped answering, and the bridge reconnects "
                "and sends again what was not confirmed. `0`: off (only TCP "
                "keepalive)")},
    {"scan_interval", F_LONG, C(scan_interval), 0, 86400, .def = 10,
     .doc = DOC("stream mode: seconds between scans for new keys of `*` patterns; "
                "`0`: only on connect")},
    {"password_file", F_STRING, C(redis_password_file),
     .doc = DOC("file whose first line is the Redis password (instead of the URL "
                "or `MRB_REDIS_PASSWORD`); the user name stays in the URL "
                "(`redis://bridge@host`)")},
    END};

static const field limit_fields[] = {
    {"max_payload", F_LONG, C(max_payload), 1, 268435455, .def = 1048576,
     .doc = DOC("larger messages are dropped and counted (`dropped_too_large`)")},
    {"queue_messages", F_LONG, C(queue_messages), 1, 10000000, .def = 10000,
     .doc = DOC("per direction: messages waiting while the other side is down")},
    {"queue_bytes", F_LONG, C(queue_bytes), 1024, 2147483647,
     .def = 16L * 1024 * 1024,
     .doc = DOC("per direction: bytes those messages take, each its payload + "
                "topic + a bookkeeping overhead of `sizeof(mrb_msg)` + 1 bytes "
                "(stream entries and replay answers also their stream key and "
                "entry ID), which depends on the build (`MRB_MSG_OVERHEAD`, "
                "`include/mrb/queue.h`); must be at least `max_payload` + the "
                "longest topic (`MRB_TOPIC_MAX`, 65535) + that overhead, or the "
                "configuration is refused; `mqtt-redis-bridge --check` prints the "
                "minimum for your settings in its `limits:` line (`(at least N "
                "bytes with this max_payload)`), and a smaller value is refused "
                "naming the file. Example for x86_64 (`--check`, 2026-12-03, gcc "
                "12; it changes when `mrb_msg` does): overhead 113 bytes, minimum "
                "`max_payload` + 65648 (1114224 with the default `max_payload`); "
                "it differs on 32-bit (armhf: 97 bytes, `max_payload` + 65632)")},
    END};

static const field reconnect_fields[] = {
    {"min_ms", F_LONG, C(reconnect_min_ms), 10, 60000, .def = 250,
     .doc = DOC("first reconnect delay")},
    {"max_ms", F_LONG, C(reconnect_max_ms), 100, 3600000, .def = 30000,
     .doc = DOC("cap of the reconnect delay")},
    END};

static const field route_fields[] = {
    {"mqtt", F_STRING, R(mqtt), .required = 1, .doc = DOC("MQTT topic filter")},
    {"redis", F_STRING, R(redis), .required = 1,
     .doc = DOC("Redis channel or `*` pattern")},
    {"direction", F_ENUM, R(dir), .allowed = directions, .def = MRB_DIR_BOTH,
     .doc = DOC("which way messages cross")},
    {"qos", F_INT, R(qos), 0, 2, .def = 1,
     .doc = DOC("subscription QoS and QoS of publishes to MQTT")},
    {"retain", F_BOOL, R(retain), .doc = DOC("publish to MQTT retained")},
    {"mode", F_ENUM, R(mode), .allowed = modes, .def = MRB_MODE_PUBSUB,
     .doc = DOC("Redis pub/sub channels, or Redis Streams keys")},
    {"maxlen", F_LONG, R(maxlen), 1, 1000000000L, .def = MRB_MAXLEN_DEFAULT,
     .doc = DOC("stream mode: `XADD MAXLEN ~` bound of each stream")},
    {"store", F_ENUM, R(store), .allowed = stores, .def = MRB_STORE_NONE,
     .doc = DOC("`hash`: also keep the latest payload per topic in the Redis hash "
                "`routes[].hash` (presence; not on `redis_to_mqtt` routes)")},
    {"hash", F_STRING, R(hash),
     .doc = DOC("the hash's name; required with `store: hash`, an error without "
                "it")},
    {"envelope", F_ENUM, R(envelope), .allowed = envelopes,
     .def = MRB_ENVELOPE_NONE,
     .doc = DOC("`json`: wrap MQTT->Redis messages in a JSON envelope (not on "
                "`redis_to_mqtt` routes)")},
    {"unwrap", F_BOOL, R(unwrap),
     .doc = DOC("Redis->MQTT payloads are envelopes: send their `payload` (not on "
                "`mqtt_to_redis` routes)")},
    {"rate", F_LONG, R(rate), 0, MRB_RATE_MAX,
     .doc = DOC("messages per second, per direction: QoS 0 beyond is dropped, QoS "
                "1/2 slowed; `0`: unlimited")},
    {"burst", F_LONG, R(burst), 1, MRB_RATE_MAX, .def_doc = "`rate`",
     .doc = DOC("token bucket size; only with `rate`")},
    END};

static const field top_fields[] = {
    {"id", F_STRING, C(id), .check = mrb_config__check_id,
     .def_doc = "the host name",
     .doc = DOC("1 to 64 of `A-Z a-z 0-9 - _ .`: names the bridge in its client "
                "id and `bridge/<id>/status`, as `--id`")},
    {"log_level", F_ENUM, C(log_level), .allowed = log_levels,
     .def = MRB_LOG_INFO, .doc = DOC("what is logged (to stderr or syslog)")},
    {"syslog", F_BOOL, C(syslog),
     .doc = DOC("log to syslog instead of stderr, as `--syslog`")},
    {"mqtt", F_OBJECT, 0, .children = mqtt_fields,
     .doc = DOC("the MQTT broker and the bridge's session on it")},
    {"redis", F_OBJECT, 0, .children = redis_fields, .doc = DOC("the Redis server")},
    {"routes", F_ROUTES, 0, .children = route_fields,
     .def_doc = "`user/+ <> user:*` and `news <> news`",
     .doc = DOC("the route objects, at least one; replaced by any `--route`")},
    {"limits", F_OBJECT, 0, .children = limit_fields,
     .doc = DOC("message size and queue bounds")},
    {"reconnect", F_OBJECT, 0, .children = reconnect_fields,
     .doc = DOC("the capped exponential backoff of both sides' reconnects")},
    {"shutdown_timeout_ms", F_LONG, C(shutdown_timeout_ms), 0, 600000,
     .def = 5000, .doc = DOC("how long shutdown waits to flush queued messages")},
    {"stats_interval", F_LONG, C(stats_interval), 0, 86400, .def = 60,
     .doc = DOC("seconds between statistics reports on `bridge/<id>/stats` and in "
                "`bridge:<id>:stats` (the first one when the bridge is ready); "
                "`0`: off, nothing is written")},
    END};

#undef C
#undef R
#undef END

static const char *type_name(const field *f)
{
    switch (f->type) {
    case F_STRING: return "string";
    case F_LONG: case F_INT: case F_U32: return "integer";
    case F_BOOL: return "boolean";
    case F_ENUM: return "enum";
    case F_OBJECT: return "object";
    case F_ROUTES: return "array";
    }
    return "?";
}

/* The default of row f as text: "" for none. */
static void default_text(const field *f, char *buf, size_t len)
{
    if (f->def_doc)
        snprintf(buf, len, "%s", f->def_doc);
    else if (f->type == F_STRING)
        snprintf(buf, len, "%s%s%s", f->sdef ? "`" : "", f->sdef ? f->sdef : "",
                 f->sdef ? "`" : "");
    else if (f->type == F_BOOL)
        snprintf(buf, len, "%s", f->def ? "true" : "false");
    else if (f->type == F_ENUM)
        snprintf(buf, len, "`%s`", f->allowed[f->def]);
    else if (f->type == F_OBJECT || f->type == F_ROUTES)
        buf[0] = '\0';
    else
        snprintf(buf, len, "%" PRId64, f->def);
}

/* Collect the rows of fields (recursively, an object before its keys) under
 * prefix; route keys are named "routes[].KEY". */
static void walk_keys(const field *fields, const char *prefix, int route,
                      mrb_config_key *keys, size_t n, size_t *count)
{
    for (const field *f = fields; f->name; f++) {
        char path[sizeof(keys->path)];
        snprintf(path, sizeof(path), "%s%s%s%s", prefix, *prefix ? "." : "",
                 f->name, f->type == F_ROUTES ? "[]" : "");
        if (*count < n) {
            mrb_config_key *k = &keys[*count];
            snprintf(k->path, sizeof(k->path), "%s%s%s", prefix,
                     *prefix ? "." : "", f->name);
            k->type = type_name(f);
            k->min = f->min;
            k->max = f->max;
            k->allowed = f->allowed;
            default_text(f, k->def, sizeof(k->def));
            k->doc = f->doc;
            k->required = f->required;
            k->route = route;
        }
        (*count)++;
        if (f->type == F_OBJECT || f->type == F_ROUTES)
            walk_keys(f->children, path, route || f->type == F_ROUTES, keys, n,
                      count);
    }
}

size_t mrb_config_keys(mrb_config_key *keys, size_t n)
{
    size_t count = 0;
    walk_keys(top_fields, "", 0, keys, n, &count);
    return count;
}

/* ------------------------------------------------------------- defaults */

mrb_err mrb_config__set_string(char **slot, const char *value)
{
    char *d = strdup(value);
    if (!d)
        return MRB_ERR_NOMEM;
    free(*slot);
    *slot = d;
    return MRB_OK;
}

/* Store x in the slot of an integer row; 0 if it does not fit the slot's
 * type: a row whose bounds exceed that type (a schema bug, which the unit
 * test walking every key finds on the target where it happens). */
static int store_int(const field *f, void *slot, int64_t x)
{
    switch (f->type) {
    case F_INT:
        if (x < INT_MIN || x > INT_MAX)
            return 0;
        *(int *)slot = (int)x;
        return 1;
    case F_LONG:
        if (x < LONG_MIN || x > LONG_MAX)
            return 0;
        *(long *)slot = (long)x;
        return 1;
    case F_U32:
        if (x < 0 || x > (int64_t)UINT32_MAX)
            return 0;
        *(uint32_t *)slot = (uint32_t)x;
        return 1;
    default:
        return 0;
    }
}

/* The defaults of the non-string rows of fields into base (zeroed). */
static void set_defaults(const field *fields, void *base)
{
    for (const field *f = fields; f->name; f++) {
        void *slot = (char *)base + f->off;
        if (f->type == F_OBJECT)
            set_defaults(f->children, base);
        else if (f->type == F_BOOL || f->type == F_ENUM)
            *(int *)slot = (int)f->def;
        else if (f->type != F_STRING && f->type != F_ROUTES)
            (void)store_int(f, slot, f->def); /* in range: unit-tested */
    }
}

/* The string rows of fields with a default (sdef) that are not set. */
static mrb_err set_string_defaults(const field *fields, void *base)
{
    mrb_err err = MRB_OK;
    for (const field *f = fields; f->name && err == MRB_OK; f++) {
        char **slot = (char **)(void *)((char *)base + f->off);
        if (f->type == F_OBJECT)
            err = set_string_defaults(f->children, base);
        else if (f->type == F_STRING && f->sdef && !*slot)
            err = mrb_config__set_string(slot, f->sdef);
    }
    return err;
}

mrb_err mrb_config__string_defaults(mrb_config *cfg)
{
    return set_string_defaults(top_fields, cfg);
}

void mrb_config_init(mrb_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    set_defaults(top_fields, cfg);
}

void mrb_config_free_routes(mrb_route *routes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        mrb_route_free(&routes[i]);
    free(routes);
}

void mrb_config_free(mrb_config *cfg)
{
    free(cfg->id);
    free(cfg->mqtt_url);
    free(cfg->client_id);
    free(cfg->redis_url);
    free(cfg->tls_ca_file);
    free(cfg->tls_ca_path);
    free(cfg->tls_cert_file);
    free(cfg->tls_key_file);
    free(cfg->mqtt_password_file);
    free(cfg->redis_password_file);
    mrb_config_free_routes(cfg->routes, cfg->n_routes);
    mrb_url_free(&cfg->mqtt);
    mrb_url_free(&cfg->redis);
    free(cfg->status_topic);
    free(cfg->source);
    memset(cfg, 0, sizeof(*cfg));
}

/* --------------------------------------------------------------- JSON */

typedef struct jctx {
    const char *source;
    char *msg;
    size_t msglen;
    const mrb_json_nul *nuls;     /* the document's strings with a NUL */
    size_t n_nuls;
} jctx;

static int has_nul(const jctx *j, const cJSON *item, int key)
{
    return mrb_json_has_nul(j->nuls, j->n_nuls, item, key);
}

static mrb_err nul_value(jctx *j, const char *path)
{
    return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                    "%s: %s: invalid value, a string holding a NUL character, "
                    "\\u0000 (allowed: a string without NUL characters)",
                    j->source, path);
}

static const char *json_type_name(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    return "an object";
}

static mrb_err bad_value(jctx *j, const char *path, const cJSON *v,
                         const char *allowed)
{
    if (cJSON_IsString(v) && has_nul(j, v, 0))
        return nul_value(j, path);
    if (cJSON_IsString(v))
        return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                        "%s: %s: invalid value \"%s\" (allowed: %s)", j->source,
                        path, v->valuestring, allowed);
    if (cJSON_IsNumber(v)) {
        /* whole numbers in full (4294967296, not 4.29497e+09) */
        char num[32];
        double d = v->valuedouble;
        if (d > -1e15 && d < 1e15 && d == (double)(int64_t)d)
            snprintf(num, sizeof(num), "%" PRId64, (int64_t)d);
        else
            snprintf(num, sizeof(num), "%g", d);
        return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                        "%s: %s: invalid value %s (allowed: %s)", j->source,
                        path, num, allowed);
    }
    return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                    "%s: %s: invalid value, %s (allowed: %s)", j->source, path,
                    json_type_name(v), allowed);
}

static mrb_err apply_object(jctx *j, const cJSON *obj, const field *fields,
                            void *base, const char *prefix);

static mrb_err apply_routes(jctx *j, const cJSON *arr, mrb_config *cfg,
                            const char *path)
{
    if (!cJSON_IsArray(arr))
        return bad_value(j, path, arr, "an array of route objects");
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    if (n == 0)
        return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                        "%s: %s: the list is empty (give at least one route, or "
                        "leave \"routes\" out for the defaults)", j->source, path);
    mrb_route *routes = calloc(n, sizeof(*routes));
    if (!routes)
        return MRB_ERR_NOMEM;
    mrb_err err = MRB_OK;
    const cJSON *item;
    cJSON_ArrayForEach(item, arr) {
        char rpath[160], rmsg[512];
        snprintf(rpath, sizeof(rpath), "%s[%zu]", path, i);
        mrb_route *r = &routes[i++];
        set_defaults(route_fields, r);
        if (!cJSON_IsObject(item)) {
            err = bad_value(j, rpath, item, "an object with \"mqtt\" and \"redis\"");
            break;
        }
        if ((err = apply_object(j, item, route_fields, r, rpath)) != MRB_OK)
            break;
        if ((err = mrb_route_check(r, rmsg, sizeof(rmsg))) != MRB_OK) {
            mrb_fail(err, j->msg, j->msglen, "%s: %s: %s", j->source, rpath, rmsg);
            break;
        }
    }
    if (err != MRB_OK) {
        mrb_config_free_routes(routes, n);
        return err;
    }
    mrb_config_free_routes(cfg->routes, cfg->n_routes);
    cfg->routes = routes;
    cfg->n_routes = n;
    return MRB_OK;
}

static mrb_err apply_field(jctx *j, const field *f, const cJSON *v, void *base,
                           const char *path)
{
    char *slot = (char *)base + f->off;
    char allowed[160];
    if (cJSON_IsString(v) && has_nul(j, v, 0))
        return nul_value(j, path);
    switch (f->type) {
    case F_STRING:
        if (!cJSON_IsString(v))
            return bad_value(j, path, v, "a string");
        if (v->valuestring[0] == '\0')
            return bad_value(j, path, v, "a non-empty string");
        if (f->check) {
            char cmsg[300];
            if (f->check(v->valuestring, cmsg, sizeof(cmsg)) != MRB_OK)
                return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen, "%s: %s: %s",
                                j->source, path, cmsg);
        }
        return mrb_config__set_string((char **)(void *)slot, v->valuestring);
    case F_LONG:
    case F_INT:
    case F_U32:
        snprintf(allowed, sizeof(allowed), "an integer from %" PRId64 " to %"
                 PRId64, f->min, f->max);
        /* range first: the cast is defined only for values in range */
        if (!cJSON_IsNumber(v) || v->valuedouble < (double)f->min ||
            v->valuedouble > (double)f->max ||
            v->valuedouble != (double)(int64_t)v->valuedouble)
            return bad_value(j, path, v, allowed);
        if (!store_int(f, slot, (int64_t)v->valuedouble))
            return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                            "%s: %s: internal error: %.0f does not fit the "
                            "setting's type in this build", j->source, path,
                            v->valuedouble);
        return MRB_OK;
    case F_BOOL:
        if (!cJSON_IsBool(v))
            return bad_value(j, path, v, "true or false");
        *(int *)(void *)slot = cJSON_IsTrue(v);
        return MRB_OK;
    case F_ENUM: {
        size_t o = 0;
        allowed[0] = '\0';
        for (int i = 0; f->allowed[i]; i++)
            o += (size_t)snprintf(allowed + o, sizeof(allowed) - o, "%s%s",
                                  i ? ", " : "", f->allowed[i]);
        if (cJSON_IsString(v))
            for (int i = 0; f->allowed[i]; i++)
                if (strcmp(v->valuestring, f->allowed[i]) == 0) {
                    *(int *)(void *)slot = i;
                    return MRB_OK;
                }
        return bad_value(j, path, v, allowed);
    }
    case F_OBJECT:
        if (!cJSON_IsObject(v))
            return bad_value(j, path, v, "an object");
        return apply_object(j, v, f->children, base, path);
    case F_ROUTES:
        return apply_routes(j, v, (mrb_config *)base, path);
    }
    return MRB_ERR_INVALID;
}

static mrb_err apply_object(jctx *j, const cJSON *obj, const field *fields,
                            void *base, const char *prefix)
{
    const cJSON *item;
    char path[128];
    cJSON_ArrayForEach(item, obj) {
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "",
                 item->string);
        if (has_nul(j, item, 1))
            return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                            "%s: %s: invalid key, a name holding a NUL "
                            "character, \\u0000 (allowed: a name without NUL "
                            "characters)", j->source, path);
        for (const cJSON *prev = obj->child; prev != item; prev = prev->next)
            if (strcmp(prev->string, item->string) == 0)
                return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                                "%s: %s: duplicate key", j->source, path);
        const field *f = fields;
        while (f->name && strcmp(f->name, item->string) != 0)
            f++;
        if (!f->name) {
            char known[256];
            size_t o = 0;
            for (const field *k = fields; k->name; k++)
                o += (size_t)snprintf(known + o, sizeof(known) - o, "%s%s",
                                      k == fields ? "" : ", ", k->name);
            return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                            "%s: %s: unknown key (known keys here: %s)",
                            j->source, path, known);
        }
        mrb_err err = apply_field(j, f, item, base, path);
        if (err != MRB_OK)
            return err;
    }
    for (const field *f = fields; f->name; f++) {
        if (f->required && !cJSON_GetObjectItemCaseSensitive(obj, f->name))
            return mrb_fail(MRB_ERR_INVALID, j->msg, j->msglen,
                            "%s: %s%s%s: missing (required)", j->source, prefix,
                            *prefix ? "." : "", f->name);
    }
    return MRB_OK;
}

/* The row of the string key at path ("mqtt.url"), or NULL. Not into routes. */
static const field *string_field(const char *path)
{
    const field *fields = top_fields;
    for (;;) {
        size_t n = strcspn(path, ".");
        const field *f = fields;
        while (f->name && (strlen(f->name) != n || strncmp(f->name, path, n) != 0))
            f++;
        if (!f->name)
            return NULL;
        if (path[n] == '\0')
            return f->type == F_STRING ? f : NULL;
        if (f->type != F_OBJECT)
            return NULL;
        fields = f->children;
        path += n + 1;
    }
}

mrb_err mrb_config_set_string(mrb_config *cfg, const char *path,
                              const char *value, char *msg, size_t msglen)
{
    const field *f = string_field(path);
    if (!f)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen, "no string key %s", path);
    if (f->check && f->check(value, msg, msglen) != MRB_OK)
        return MRB_ERR_INVALID;
    return mrb_config__set_string((char **)(void *)((char *)cfg + f->off), value);
}

mrb_err mrb_config_load_json(mrb_config *cfg, const char *text, size_t len,
                             const char *source, char *msg, size_t msglen)
{
    jctx j = {source, msg, msglen, NULL, 0};
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        if (!at || at < text || at > text + len)
            at = end && end >= text && end <= text + len ? end : text + len;
        /* point at the next token, not at the blank before it */
        while (at < text + len && (*at == ' ' || *at == '\t' || *at == '\r' || *at == '\n'))
            at++;
        int line = 1, col = 1;
        for (const char *p = text; p < at; p++) {
            if (*p == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        /* show where: the rest of that line, shortened, control bytes as '?' */
        char near[40];
        size_t k = 0;
        for (const char *p = at; p < text + len && *p != '\n' && k < 24; p++)
            near[k++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
        near[k] = '\0';
        if (k == 0)
            return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                            "%s:%d:%d: JSON syntax error: the file ends too early "
                            "(a missing '}', ']' or '\"'?)", source, line, col);
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "%s:%d:%d: JSON syntax error near '%s%s'", source, line,
                        col, near, k == 24 ? "..." : "");
    }
    mrb_json_nul *marks = NULL;
    mrb_err err;
    if (!cJSON_IsObject(root))
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                       "%s: the configuration must be a JSON object ({...})",
                       source);
    else if ((err = mrb_json_find_nuls(root, text, (size_t)(end - text), &marks,
                              &j.n_nuls)) == MRB_OK) {
        j.nuls = marks;
        err = apply_object(&j, root, top_fields, cfg, "");
    }
    /* for mrb_config_finish's messages: which limits this document set */
    if (err == MRB_OK && (err = mrb_config__set_string(&cfg->source, source)) == MRB_OK) {
        const cJSON *lim = cJSON_GetObjectItemCaseSensitive(root, "limits");
        if (cJSON_GetObjectItemCaseSensitive(lim, "max_payload"))
            cfg->max_payload_given = 1;
        if (cJSON_GetObjectItemCaseSensitive(lim, "queue_bytes"))
            cfg->queue_bytes_given = 1;
    }
    free(marks);
    cJSON_Delete(root);
    return err;
}

mrb_err mrb_config_load_file(mrb_config *cfg, const char *path, char *msg,
                             size_t msglen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen, "%s: cannot open: %s",
                        path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    mrb_err err = MRB_OK;
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap)
            break;
        if (cap >= (1u << 24)) {
            err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                           "%s: file is larger than 16 MiB", path);
            break;
        }
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
        } else {
            buf = nb;
            cap *= 2;
        }
    }
    if (!buf)
        err = MRB_ERR_NOMEM;
    else if (err == MRB_OK && ferror(f))
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen, "%s: read error: %s", path,
                       strerror(errno));
    struct stat st;
    int st_ok = fstat(fileno(f), &st) == 0;
    fclose(f);
    const char *mqtt_before = cfg->mqtt_url, *redis_before = cfg->redis_url;
    if (err == MRB_OK)
        err = mrb_config_load_json(cfg, buf, len, path, msg, msglen);
    free(buf);
    /* a password in a URL of this file: the file is a secret */
    if (err == MRB_OK && st_ok &&
        ((cfg->mqtt_url != mqtt_before && mrb_config__has_password(cfg->mqtt_url)) ||
         (cfg->redis_url != redis_before && mrb_config__has_password(cfg->redis_url))))
        mrb_config__warn_if_public(cfg, "the configuration file, which holds a password,",
                       path, &st);
    return err;
}

