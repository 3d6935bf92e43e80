/* Unit tests: the JSON schema, command-line parsing and the exact text of
 * every configuration error a user can meet. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <inttypes.h>
#include <string.h>

#include "mrb/cli.h"
#include "mrb/config.h"
#include "mrb/queue.h"
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* A temporary file holding text with the given mode; path into buf. */
static void temp_file(char *buf, size_t n, const char *text, mode_t mode)
{
    snprintf(buf, n, "/tmp/mrb-test-XXXXXX");
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

/* Load json as "cfg.json" and finish; return the error, message in msg. */
static mrb_err load(const char *json, mrb_config *cfg, char *msg, size_t msglen)
{
    mrb_config_init(cfg);
    mrb_err err = mrb_config_load_json(cfg, json, strlen(json), "cfg.json", msg,
                                       msglen);
    if (err == MRB_OK)
        err = mrb_config_finish(cfg, msg, msglen);
    return err;
}

static void expect_error(const char *json, const char *want)
{
    mrb_config cfg;
    char msg[1024] = "";
    mrb_err err = load(json, &cfg, msg, sizeof(msg));
    if (err != MRB_ERR_INVALID || strcmp(msg, want) != 0)
        fail_msg("json: %s\n got (%d): %s\nwant: %s", json, err, msg, want);
    mrb_config_free(&cfg);
}

static void test_defaults(void **state)
{
    mrb_config cfg;
    char msg[256];
    assert_int_equal(load("{}", &cfg, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(cfg.n_routes, 2);
    assert_string_equal(cfg.routes[0].mqtt, "user/+");
    assert_string_equal(cfg.routes[0].redis, "user:*");
    assert_int_equal(cfg.routes[0].dir, MRB_DIR_BOTH);
    assert_int_equal(cfg.routes[0].qos, 1);
    assert_string_equal(cfg.routes[1].mqtt, "news");
    assert_string_equal(cfg.mqtt.host, "127.0.0.1");
    assert_int_equal(cfg.mqtt.port, 1883);
    assert_int_equal(cfg.redis.port, 6379);
    assert_int_equal(cfg.max_payload, 1048576);
    assert_int_equal(cfg.stats_interval, 60);
    assert_non_null(cfg.id);
    mrb_config_free(&cfg);
}

static void test_full_file(void **state)
{
    const char *json =
        "{\n"
        "  \"id\": \"pi-7\",\n"
        "  \"log_level\": \"debug\",\n"
        "  \"mqtt\": {\"url\": \"mqtt://u:p%40ss@broker:1884\", \"protocol\": \"3.1.1\",\n"
        "           \"keepalive\": 10, \"client_id\": \"c1\"},\n"
        "  \"redis\": {\"url\": \"redis://r:6380/2\"},\n"
        "  \"routes\": [\n"
        "    {\"mqtt\": \"prices/+\", \"redis\": \"stock:*\", \"direction\": \"redis_to_mqtt\",\n"
        "     \"qos\": 0, \"retain\": true}\n"
        "  ],\n"
        "  \"limits\": {\"max_payload\": 1000, \"queue_messages\": 5, \"queue_bytes\": 100000},\n"
        "  \"reconnect\": {\"min_ms\": 100, \"max_ms\": 1000},\n"
        "  \"shutdown_timeout_ms\": 0,\n"
        "  \"stats_interval\": 0\n"
        "}\n";
    mrb_config cfg;
    char msg[256] = "";
    if (load(json, &cfg, msg, sizeof(msg)) != MRB_OK)
        fail_msg("%s", msg);
    assert_string_equal(cfg.id, "pi-7");
    assert_int_equal(cfg.log_level, MRB_LOG_DEBUG);
    assert_string_equal(cfg.mqtt.user, "u");
    assert_string_equal(cfg.mqtt.password, "p@ss");
    assert_int_equal(cfg.mqtt.port, 1884);
    assert_int_equal(cfg.protocol, MRB_MQTT_311);
    assert_int_equal(cfg.keepalive, 10);
    assert_string_equal(cfg.client_id, "c1");
    assert_int_equal(cfg.redis.db, 2);
    assert_int_equal(cfg.n_routes, 1);
    assert_int_equal(cfg.routes[0].dir, MRB_DIR_REDIS_TO_MQTT);
    assert_int_equal(cfg.routes[0].qos, 0);
    assert_int_equal(cfg.routes[0].retain, 1);
    assert_int_equal(cfg.queue_messages, 5);
    assert_int_equal(cfg.shutdown_timeout_ms, 0);
    assert_int_equal(cfg.stats_interval, 0);
    assert_string_equal(cfg.status_topic, "bridge/pi-7/status");
    mrb_config_free(&cfg);
}

static void test_route_options(void **state)
{
    mrb_config cfg;
    char msg[512];
    assert_int_equal(load("{\"routes\": [{\"mqtt\": \"devices/+/status\", "
                          "\"redis\": \"presence:*\", \"direction\": "
                          "\"mqtt_to_redis\", \"store\": \"hash\", \"hash\": "
                          "\"devices\", \"envelope\": \"json\", \"rate\": 200, "
                          "\"burst\": 20}, {\"mqtt\": \"cmd/+\", \"redis\": "
                          "\"cmd:*\", \"unwrap\": true}]}", &cfg, msg, sizeof(msg)),
                     MRB_OK);
    assert_int_equal(cfg.routes[0].store, MRB_STORE_HASH);
    assert_string_equal(cfg.routes[0].hash, "devices");
    assert_int_equal(cfg.routes[0].envelope, MRB_ENVELOPE_JSON);
    assert_int_equal(cfg.routes[0].rate, 200);
    assert_int_equal(cfg.routes[0].burst, 20);
    assert_int_equal(cfg.routes[1].unwrap, 1);
    assert_int_equal(cfg.routes[1].rate, 0);
    mrb_config_free(&cfg);
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "\"store\": \"hash\"}]}",
                 "cfg.json: routes[0]: store \"hash\" needs the hash's name "
                 "(\"hash\": \"NAME\", or hash=NAME in a --route)");
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "\"store\": \"list\"}]}",
                 "cfg.json: routes[0].store: invalid value \"list\" (allowed: "
                 "none, hash)");
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "\"rate\": -1}]}",
                 "cfg.json: routes[0].rate: invalid value -1 (allowed: an integer "
                 "from 0 to 1000000)");
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "\"burst\": 5}]}",
                 "cfg.json: routes[0]: burst 5 is given without a rate (add a "
                 "rate in messages per second)");
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "\"direction\": \"mqtt_to_redis\", \"unwrap\": true}]}",
                 "cfg.json: routes[0]: unwrap takes envelopes apart on the way to "
                 "MQTT, but the route carries only MQTT to Redis (to wrap use "
                 "envelope \"json\")");
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "\"envelope\": \"xml\"}]}",
                 "cfg.json: routes[0].envelope: invalid value \"xml\" (allowed: "
                 "none, json)");
}

static void test_syntax_errors_have_line_and_column(void **state)
{
    expect_error("{\n  \"id\": \"x\",\n  \"mqtt\": {\"url\" \"y\"}\n}",
                 "cfg.json:3:18: JSON syntax error near '\"y\"}'");
    expect_error("{\"id\": \"x\",}", "cfg.json:1:12: JSON syntax error near '}'");
    expect_error("", "cfg.json:1:1: JSON syntax error: the file ends too early (a "
                 "missing '}', ']' or '\"'?)");
    expect_error("{\"id\": \"x\"\n", "cfg.json:2:1: JSON syntax error: the file ends "
                 "too early (a missing '}', ']' or '\"'?)");
    expect_error("{\"id\": tru}", "cfg.json:1:8: JSON syntax error near 'tru}'");
    expect_error("[1]", "cfg.json: the configuration must be a JSON object ({...})");
}

static void test_value_errors_name_the_key(void **state)
{
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\"},"
                 "{\"mqtt\": \"b\", \"redis\": \"b\"},"
                 "{\"mqtt\": \"c\", \"redis\": \"c\", \"direction\": \"sideways\"}]}",
                 "cfg.json: routes[2].direction: invalid value \"sideways\" "
                 "(allowed: both, mqtt_to_redis, redis_to_mqtt)");
    expect_error("{\"mqtt\": {\"hots\": \"x\"}}",
                 "cfg.json: mqtt.hots: unknown key (known keys here: url, "
                 "client_id, protocol, keepalive, session_expiry, password_file, tls)");
    expect_error("{\"colour\": 1}",
                 "cfg.json: colour: unknown key (known keys here: id, log_level, "
                 "syslog, mqtt, redis, routes, limits, reconnect, shutdown_timeout_ms, "
                 "stats_interval)");
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\", \"qos\": 3}]}",
                 "cfg.json: routes[0].qos: invalid value 3 (allowed: an integer "
                 "from 0 to 2)");
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\", \"qos\": 1.5}]}",
                 "cfg.json: routes[0].qos: invalid value 1.5 (allowed: an integer "
                 "from 0 to 2)");
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\", \"retain\": \"yes\"}]}",
                 "cfg.json: routes[0].retain: invalid value \"yes\" (allowed: true "
                 "or false)");
    expect_error("{\"routes\": [{\"mqtt\": \"a\"}]}",
                 "cfg.json: routes[0].redis: missing (required)");
    expect_error("{\"routes\": []}",
                 "cfg.json: routes: the list is empty (give at least one route, "
                 "or leave \"routes\" out for the defaults)");
    expect_error("{\"routes\": [{\"mqtt\": \"user/+\", \"redis\": \"user\"}]}",
                 "cfg.json: routes[0]: MQTT filter \"user/+\" has 1 wildcard but "
                 "Redis pattern \"user\" has 0 '*': the k-th wildcard maps to the "
                 "k-th '*', so the counts must agree");
    expect_error("{\"routes\": [{\"mqtt\": \"user/+\", \"redis\": \"user:?\"}]}",
                 "cfg.json: routes[0]: Redis pattern \"user:?\" contains '?': only "
                 "'*' is supported as a wildcard");
    expect_error("{\"mqtt\": {\"keepalive\": 0}}",
                 "cfg.json: mqtt.keepalive: invalid value 0 (allowed: an integer "
                 "from 1 to 3600)");
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\", \"mode\": \"log\"}]}",
                 "cfg.json: routes[0].mode: invalid value \"log\" (allowed: "
                 "pubsub, stream)");
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\", \"mode\": "
                 "\"stream\", \"maxlen\": 0}]}",
                 "cfg.json: routes[0].maxlen: invalid value 0 (allowed: an "
                 "integer from 1 to 1000000000)");
    expect_error("{\"redis\": {\"keepalive\": -1}}",
                 "cfg.json: redis.keepalive: invalid value -1 (allowed: an "
                 "integer from 0 to 3600)");
    expect_error("{\"stats_interval\": 86401}",
                 "cfg.json: stats_interval: invalid value 86401 (allowed: an "
                 "integer from 0 to 86400)");
    expect_error("{\"mqtt\": 5}",
                 "cfg.json: mqtt: invalid value 5 (allowed: an object)");
    expect_error("{\"id\": \"a\", \"id\": \"b\"}", "cfg.json: id: duplicate key");
    expect_error("{\"log_level\": \"loud\"}",
                 "cfg.json: log_level: invalid value \"loud\" (allowed: error, "
                 "warning, info, debug)");
}

static void test_whole_config_errors(void **state)
{
    expect_error("{\"mqtt\": {\"url\": \"http://x\"}}",
                 "cfg.json: mqtt.url: \"http://x\": the URL must start with mqtt:// or mqtts://");
    expect_error("{\"redis\": {\"url\": \"redis://h:99999\"}}",
                 "cfg.json: redis.url: \"redis://h:99999\": the port must be a number from 1 "
                 "to 65535");
    expect_error("{\"id\": \"a/b\"}",
                 "cfg.json: id: invalid value \"a/b\" (allowed: 1 to 64 letters, digits, "
                 "'-', '_' or '.')");
    expect_error("{\"reconnect\": {\"min_ms\": 5000, \"max_ms\": 1000}}",
                 "reconnect.min_ms (5000) must not exceed reconnect.max_ms (1000)");
    /* a queue must hold one largest message: named after the file, with
     * the minimum that --check prints */
    char want[320];
    long over = MRB_TOPIC_MAX + (long)MRB_MSG_OVERHEAD;
    snprintf(want, sizeof(want), "cfg.json: limits.queue_bytes (70000) must be at "
             "least %ld (limits.max_payload 5000 + %ld for the topic and "
             "bookkeeping), or a largest message could not wait in the queue",
             5000 + over, over);
    expect_error("{\"limits\": {\"max_payload\": 5000, \"queue_bytes\": 70000}}",
                 want);
    snprintf(want, sizeof(want), "cfg.json: limits.queue_bytes (16777216, the "
             "default) must be at least %ld (limits.max_payload 268435455 + %ld "
             "for the topic and bookkeeping), or a largest message could not "
             "wait in the queue", 268435455 + over, over);
    expect_error("{\"limits\": {\"max_payload\": 268435455}}", want);
    snprintf(want, sizeof(want), "cfg.json: limits.queue_bytes (70000) must be at "
             "least %ld (the default limits.max_payload 1048576 + %ld for the "
             "topic and bookkeeping), or a largest message could not wait in "
             "the queue", 1048576 + over, over);
    expect_error("{\"limits\": {\"queue_bytes\": 70000}}", want);

    /* --check prints that minimum; it is accepted, one less is not */
    char json[128], out[2048] = "", line[160];
    snprintf(json, sizeof(json), "{\"limits\": {\"max_payload\": 5000, "
             "\"queue_bytes\": %ld}}", 5000 + over);
    mrb_config cfg;
    char msg[512] = "";
    if (load(json, &cfg, msg, sizeof(msg)) != MRB_OK)
        fail_msg("%s", msg);
    FILE *f = fmemopen(out, sizeof(out) - 1, "w");
    mrb_config_print(&cfg, f);
    fclose(f);
    mrb_config_free(&cfg);
    snprintf(line, sizeof(line), "limits: max_payload 5000 bytes; queue 10000 "
             "messages / %ld bytes per direction (at least %ld bytes with this "
             "max_payload)\n", 5000 + over, 5000 + over);
    if (!strstr(out, line))
        fail_msg("--check output without \"%s\":\n%s", line, out);
    snprintf(json, sizeof(json), "{\"limits\": {\"max_payload\": 5000, "
             "\"queue_bytes\": %ld}}", 5000 + over - 1);
    snprintf(want, sizeof(want), "cfg.json: limits.queue_bytes (%ld) must be at "
             "least %ld (limits.max_payload 5000 + %ld for the topic and "
             "bookkeeping), or a largest message could not wait in the queue",
             5000 + over - 1, 5000 + over, over);
    expect_error(json, want);
}

/* Load json as "cfg.json" without finishing: the schema's checks only. */
static mrb_err load_only(const char *json, char *msg, size_t msglen)
{
    mrb_config cfg;
    mrb_config_init(&cfg);
    mrb_err err = mrb_config_load_json(&cfg, json, strlen(json), "cfg.json",
                                       msg, msglen);
    mrb_config_free(&cfg);
    return err;
}

/* A document setting one integer key to v: "a.b" as {"a": {"b": v}}, a
 * route key in the one route of "routes". */
static void key_json(const mrb_config_key *k, int64_t v, char *buf,
                     size_t n)
{
    char name[64];
    if (k->route) {
        const char *dot = strrchr(k->path, '.');
        assert_non_null(dot);
        snprintf(name, sizeof(name), "%.63s", dot + 1);
        /* the one rule between route integers: a burst needs a rate */
        snprintf(buf, n, "{\"routes\": [{\"mqtt\": \"a/+\", \"redis\": \"a:*\", "
                 "%s\"%s\": %" PRId64 "}]}",
                 strcmp(name, "burst") == 0 ? "\"rate\": 1, " : "", name, v);
        return;
    }
    size_t o = 0, depth = 0;
    const char *p = k->path;
    for (int i = 0; i < 8; i++) { /* at most 8 levels */
        size_t len = strcspn(p, ".");
        o += (size_t)snprintf(buf + o, n - o, "{\"%.*s\": ", (int)len, p);
        depth++;
        if (!p[len])
            break;
        p += len + 1;
    }
    o += (size_t)snprintf(buf + o, n - o, "%" PRId64, v);
    for (size_t i = 0; i < depth; i++)
        o += (size_t)snprintf(buf + o, n - o, "}");
    assert_true(o < n);
}

/* Every integer key of the schema (walked from the table, not listed here)
 * takes its minimum and its maximum and refuses one beyond each, saying the
 * range. Loading only: the whole-configuration rules (reconnect.min_ms <=
 * max_ms, a largest message fits limits.queue_bytes) are
 * mrb_config_finish's, tested above. On 32-bit boards this is what shows a
 * bound that does not fit the type it is kept in. */
static void test_every_integer_key_range(void **state)
{
    mrb_config_key keys[64];
    size_t n = mrb_config_keys(keys, 64);
    assert_true(n > 0 && n <= 64);
    for (size_t i = 0; i < n; i++) {
        const mrb_config_key *k = &keys[i];
        char json[256], msg[512], want[512], where[80];
        if (strcmp(k->type, "integer") != 0)
            continue;
        if (k->route)
            snprintf(where, sizeof(where), "routes[0].%.63s",
                     strrchr(k->path, '.') + 1);
        else
            snprintf(where, sizeof(where), "%.63s", k->path);
        if (k->min > k->max)
            fail_msg("%s: the range %" PRId64 " to %" PRId64 " is empty",
                     k->path, k->min, k->max);
        const int64_t ok[2] = {k->min, k->max};
        for (int e = 0; e < 2; e++) {
            key_json(k, ok[e], json, sizeof(json));
            msg[0] = '\0';
            if (load_only(json, msg, sizeof(msg)) != MRB_OK)
                fail_msg("%s: %" PRId64 " (its %s) refused: %s", k->path,
                         ok[e], e ? "maximum" : "minimum", msg);
        }
        const int64_t bad[2] = {k->min - 1, k->max + 1};
        for (int e = 0; e < 2; e++) {
            key_json(k, bad[e], json, sizeof(json));
            snprintf(want, sizeof(want), "cfg.json: %s: invalid value %" PRId64
                     " (allowed: an integer from %" PRId64 " to %" PRId64 ")",
                     where, bad[e], k->min, k->max);
            msg[0] = '\0';
            mrb_err err = load_only(json, msg, sizeof(msg));
            if (err != MRB_ERR_INVALID || strcmp(msg, want) != 0)
                fail_msg("%s = %" PRId64 ":\n got (%d): %s\nwant: %s", k->path,
                         bad[e], err, msg, want);
        }
    }
}

/* Whether line starts an entry of the reference: in Markdown a row of the
 * key table ("| `limits.queue_bytes` | ...", not an option's "| `--"), in
 * roff a ".B KEY" right after ".TP" (prev: the line before). */
static int entry_line(const char *line, const char *prev, int roff)
{
    if (roff)
        return strcmp(prev, ".TP\n") == 0 && strncmp(line, ".B ", 3) == 0;
    return strncmp(line, "| `", 3) == 0 && line[3] != '-';
}

/* Where the reference at path documents key: the line of its entry, the
 * rest of it (md: after the key's cell; roff: the next line, font escapes
 * taken out) into type; 0 if it has none. *rows: the reference's entries.
 * md: docs/CONFIGURATION.md, "| `limits.queue_bytes` | integer
 * 1024-2147483647 | 16777216 | ..."; roff: mqtt-redis-bridge.json(5),
 * ".TP", ".B limits.queue_bytes", "integer 1024-2147483647 (default:
 * 16777216)". */
static int find_key(const char *path, int roff, const char *key, char *type,
                    size_t typelen, int *rows)
{
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    char line[4096], prev[4096] = "", want[128];
    int found = 0, next = 0;
    *rows = 0;
    snprintf(want, sizeof(want), roff ? ".B %s\n" : "| `%s` | ", key);
    for (int ln = 1; fgets(line, sizeof(line), f); ln++) {
        if (next) {
            size_t o = 0;
            for (const char *p = line; *p && o + 1 < typelen; p++) {
                if (p[0] == '\\' && p[1] == 'f' && p[2]) {
                    p += 2; /* \fB \fR \fI: out */
                } else if (p[0] == '\\' && p[1] == 'e') {
                    type[o++] = '\\';
                    p++;
                } else if (p[0] == '\\' && p[1] == '-') {
                    type[o++] = '-';
                    p++;
                } else {
                    type[o++] = *p;
                }
            }
            type[o] = '\0';
            next = 0;
        }
        if (entry_line(line, prev, roff)) {
            (*rows)++;
            if (!found && strcmp(line, want) == 0) {
                found = ln;
                next = 1;
            } else if (!found && !roff && strncmp(line, want, strlen(want)) == 0) {
                found = ln;
                snprintf(type, typelen, "%s", line + strlen(want));
            }
        }
        snprintf(prev, sizeof(prev), "%s", line);
    }
    fclose(f);
    return found;
}

/* Every key of the schema has its entry in the reference at path, integer
 * keys with the schema's range and every key with its default; and the
 * reference has no entry that is not a key of the schema. */
static void check_reference(const char *path, int roff)
{
    mrb_config_key keys[64];
    size_t n = mrb_config_keys(keys, 64);
    assert_true(n > 0 && n <= 64);
    int rows = 0;
    for (size_t i = 0; i < n; i++) {
        const mrb_config_key *k = &keys[i];
        char type[4096], def[160];
        int ln = find_key(path, roff, k->path, type, sizeof(type), &rows);
        if (!ln)
            fail_msg("%s: no entry for the key %s (%s)", path, k->path, k->type);
        long long lo, hi;
        if (strcmp(k->type, "integer") == 0 &&
            (sscanf(type, "integer %lld-%lld", &lo, &hi) != 2 ||
             lo != k->min || hi != k->max))
            fail_msg("%s:%d: %s is documented as \"%.40s\", the schema allows "
                     "%" PRId64 "-%" PRId64, path, ln, k->path, type, k->min,
                     k->max);
        if (k->def[0]) {
            snprintf(def, sizeof(def), roff ? "(default: %s)" : "| %s |", k->def);
            if (roff) /* the page shows `code` in bold: no backquotes */
                for (char *q; (q = strchr(def, '`'));)
                    memmove(q, q + 1, strlen(q));
            if (!strstr(type, def))
                fail_msg("%s:%d: %s: no default \"%s\" in \"%.80s\"", path, ln,
                         k->path, def, type);
        }
    }
    if ((size_t)rows != n) /* and no entry for a key the schema lacks */
        fail_msg("%s: %d entries, the schema has %zu keys", path, rows, n);
}

static void test_reference_is_the_schema(void **state)
{
    check_reference(MRB_REFERENCE, 0);
#ifdef MRB_JSON5
    check_reference(MRB_JSON5, 1);
#endif
}

#define NUL_VALUE "invalid value, a string holding a NUL character, \\u0000 " \
                  "(allowed: a string without NUL characters)"

/* A NUL in a JSON string (\u0000, or a raw 0 byte, which cJSON takes too)
 * would cut the value short: "x\u0000y" used to be the id "x". Refused for
 * every string key, top-level, nested and in routes, naming the key. */
static void test_nul_in_strings_refused(void **state)
{
    expect_error("{\"id\": \"x\\u0000y\"}", "cfg.json: id: " NUL_VALUE);
    expect_error("{\"log_level\": \"info\\u0000x\"}",
                 "cfg.json: log_level: " NUL_VALUE);
    expect_error("{\"mqtt\": {\"url\": \"mqtt://h\\u0000x\"}}",
                 "cfg.json: mqtt.url: " NUL_VALUE);
    expect_error("{\"mqtt\": {\"client_id\": \"\\u0000\"}}",
                 "cfg.json: mqtt.client_id: " NUL_VALUE);
    expect_error("{\"mqtt\": {\"password_file\": \"/run/pw\\u0000.txt\"}}",
                 "cfg.json: mqtt.password_file: " NUL_VALUE);
    expect_error("{\"mqtt\": {\"tls\": {\"ca_file\": \"/ca\\u0000.pem\"}}}",
                 "cfg.json: mqtt.tls.ca_file: " NUL_VALUE);
    expect_error("{\"mqtt\": {\"tls\": {\"key_file\": \"/k\", \"min_version\": "
                 "\"1.3\\u0000\"}}}", "cfg.json: mqtt.tls.min_version: " NUL_VALUE);
    expect_error("{\"redis\": {\"url\": \"redis://:p\\u0000w@h\"}}",
                 "cfg.json: redis.url: " NUL_VALUE);
    expect_error("{\"routes\": [{\"mqtt\": \"a/+\\u0000zz\", \"redis\": \"a:*\"}]}",
                 "cfg.json: routes[0].mqtt: " NUL_VALUE);
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\"}, {\"mqtt\": "
                 "\"b/+\", \"redis\": \"b:*\", \"store\": \"hash\", \"hash\": "
                 "\"h\\u0000\"}]}", "cfg.json: routes[1].hash: " NUL_VALUE);
    expect_error("{\"routes\": [{\"redis\": \"a\\u0000b\", \"mqtt\": \"a\"}]}",
                 "cfg.json: routes[0].redis: " NUL_VALUE);
    expect_error("{\"routes\": [{\"mqtt\": \"a\", \"redis\": \"a\", "
                 "\"direction\": \"both\\u0000\"}]}",
                 "cfg.json: routes[0].direction: " NUL_VALUE);
    /* after other strings with escapes, and in a key's name */
    expect_error("{\"mqtt\": {\"client_id\": \"q\\\"\\\\u0000\\u00e9\", "
                 "\"url\": \"mqtt://h\\u0000\"}}", "cfg.json: mqtt.url: " NUL_VALUE);
    expect_error("{\"mqtt\": {\"url\\u0000x\": \"mqtt://h\"}}",
                 "cfg.json: mqtt.url: invalid key, a name holding a NUL "
                 "character, \\u0000 (allowed: a name without NUL characters)");

    /* a raw NUL byte inside a string: the same */
    static const char raw[] = "{\"id\": \"x\0y\"}";
    mrb_config cfg;
    char msg[512] = "";
    mrb_config_init(&cfg);
    assert_int_equal(mrb_config_load_json(&cfg, raw, sizeof(raw) - 1, "cfg.json",
                                          msg, sizeof(msg)), MRB_ERR_INVALID);
    assert_string_equal(msg, "cfg.json: id: " NUL_VALUE);
    mrb_config_free(&cfg);

    /* an escaped backslash before "u0000" is no NUL */
    assert_int_equal(load("{\"mqtt\": {\"client_id\": \"c\\\\u0000\"}}", &cfg, msg,
                          sizeof(msg)), MRB_OK);
    assert_string_equal(cfg.client_id, "c\\u0000");
    mrb_config_free(&cfg);
}

static mrb_err cli(int argc, char **argv, mrb_config *cfg, char *msg, size_t n)
{
    mrb_cli c;
    mrb_config_init(cfg);
    mrb_err err = mrb_cli_parse(argc, argv, &c, msg, n);
    if (err == MRB_OK)
        err = mrb_config_apply_cli(cfg, &c, msg, n);
    if (err == MRB_OK)
        err = mrb_config_finish(cfg, msg, n);
    mrb_cli_free(&c);
    return err;
}

static void test_cli_overrides(void **state)
{
    char *argv[] = {"mrb", "--mqtt", "mqtt://h:1", "--redis", "unix:/tmp/r.sock",
                    "--id", "b2", "--route", "a/+ > x:*", "--route",
                    "n < n qos=2 retain", "-q", "--syslog", NULL};
    mrb_config cfg;
    char msg[256] = "";
    mrb_config_init(&cfg);
    /* a file's routes are replaced by command-line routes */
    const char *json = "{\"id\": \"file\", \"routes\": [{\"mqtt\": \"f\", \"redis\": \"f\"}]}";
    assert_int_equal(mrb_config_load_json(&cfg, json, strlen(json), "f.json", msg,
                                          sizeof(msg)), MRB_OK);
    mrb_cli c;
    assert_int_equal(mrb_cli_parse(13, argv, &c, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(mrb_config_apply_cli(&cfg, &c, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(mrb_config_finish(&cfg, msg, sizeof(msg)), MRB_OK);
    mrb_cli_free(&c);
    assert_string_equal(cfg.id, "b2");
    assert_string_equal(cfg.redis.path, "/tmp/r.sock");
    assert_int_equal(cfg.n_routes, 2);
    assert_string_equal(cfg.routes[0].mqtt, "a/+");
    assert_int_equal(cfg.routes[1].qos, 2);
    assert_int_equal(cfg.routes[1].retain, 1);
    assert_int_equal(cfg.log_level, MRB_LOG_WARNING);
    assert_int_equal(cfg.syslog, 1);
    mrb_config_free(&cfg);
}

static void expect_cli_error(int argc, char **argv, const char *want)
{
    mrb_config cfg;
    char msg[512] = "";
    mrb_err err = cli(argc, argv, &cfg, msg, sizeof(msg));
    if (err != MRB_ERR_INVALID || strcmp(msg, want) != 0)
        fail_msg(" got (%d): %s\nwant: %s", err, msg, want);
    mrb_config_free(&cfg);
}

static void test_cli_errors(void **state)
{
    char *a1[] = {"mrb", "--bogus", NULL};
    expect_cli_error(2, a1, "unknown option '--bogus' (see --help)");
    char *a2[] = {"mrb", "--mqtt", NULL};
    expect_cli_error(2, a2, "option '--mqtt' needs a value (see --help)");
    char *a3[] = {"mrb", "extra", NULL};
    expect_cli_error(2, a3, "unexpected argument 'extra' (see --help)");
    char *a4[] = {"mrb", "--route", "user/+ <> user", NULL};
    expect_cli_error(3, a4, "--route 'user/+ <> user': MQTT filter \"user/+\" has "
                     "1 wildcard but Redis pattern \"user\" has 0 '*': the k-th "
                     "wildcard maps to the k-th '*', so the counts must agree");
    char *a5[] = {"mrb", "--redis", "redis://:pw@", NULL};
    expect_cli_error(3, a5, "--redis: \"redis://:***@\": missing or malformed host");
    char *a6[] = {"mrb", "--id", "a b", NULL};
    expect_cli_error(3, a6, "--id: invalid value \"a b\" (allowed: 1 to 64 letters, "
                     "digits, '-', '_' or '.')");
}

static void test_tls_settings(void **state)
{
    char ca[64], key[64], json[512], msg[512] = "";
    temp_file(ca, sizeof(ca), "ca", 0644);
    temp_file(key, sizeof(key), "key", 0640);
    mrb_config cfg;
    snprintf(json, sizeof(json),
             "{\"mqtt\": {\"url\": \"mqtts://b@broker\", \"tls\": {\"ca_file\": \"%s\", "
             "\"cert_file\": \"%s\", \"key_file\": \"%s\", \"verify_hostname\": false, "
             "\"min_version\": \"1.3\"}}}", ca, ca, key);
    mrb_err err = load(json, &cfg, msg, sizeof(msg));
#if MRB_WITH_TLS
    if (err != MRB_OK)
        fail_msg("%s", msg);
    assert_int_equal(cfg.mqtt.tls, 1);
    assert_int_equal(cfg.mqtt.port, 8883);
    assert_string_equal(cfg.tls_ca_file, ca);
    assert_string_equal(cfg.tls_key_file, key);
    assert_int_equal(cfg.tls_verify_hostname, 0);
    assert_int_equal(cfg.tls_min_version, MRB_TLS_1_3);
    assert_int_equal(cfg.n_warnings, 0); /* 0640: not readable by others */
    mrb_config_free(&cfg);

    expect_error("{\"mqtt\": {\"url\": \"mqtts://h\", \"tls\": {\"key_file\": \"/k\"}}}",
                 "mqtt.tls.key_file: given without mqtt.tls.cert_file");
    expect_error("{\"mqtt\": {\"url\": \"mqtts://h\", \"tls\": "
                 "{\"ca_file\": \"/nonexistent/ca.pem\"}}}",
                 "mqtt.tls.ca_file: cannot read \"/nonexistent/ca.pem\": No such "
                 "file or directory");
    expect_error("{\"mqtt\": {\"url\": \"mqtts://h\", \"tls\": {\"min_version\": \"1.1\"}}}",
                 "cfg.json: mqtt.tls.min_version: invalid value \"1.1\" (allowed: "
                 "1.2, 1.3)");
    /* a private key others can read */
    assert_int_equal(chmod(key, 0604), 0);
    assert_int_equal(load(json, &cfg, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(cfg.n_warnings, 1);
    char want[320];
    snprintf(want, sizeof(want), "mqtt.tls.key_file \"%s\" is readable by other "
             "users (mode 0604): chmod o-r it", key);
    assert_string_equal(cfg.warnings[0], want);
    mrb_config_free(&cfg);
#else
    assert_int_equal(err, MRB_ERR_INVALID);
    assert_string_equal(msg, "cfg.json: mqtt.url: \"mqtts://b@broker\": this "
                        "mqtt-redis-bridge was built without TLS (cmake "
                        "-DWITH_TLS=OFF): use mqtt:// or a build with TLS");
    mrb_config_free(&cfg);
#endif
    /* TLS settings for a plain connection would give a false sense of safety */
    expect_error("{\"mqtt\": {\"url\": \"mqtt://h\", \"tls\": {\"ca_file\": \"/ca\"}}}",
                 "mqtt.tls: TLS settings are given but the broker URL is not "
                 "mqtts://");
    unlink(ca);
    unlink(key);
}

static void test_passwords(void **state)
{
    char pf[64], json[512], msg[512] = "", want[512];
    mrb_config cfg;
    temp_file(pf, sizeof(pf), "s3cret\nignored\n", 0600);
    snprintf(json, sizeof(json), "{\"mqtt\": {\"url\": \"mqtt://bridge@h\", "
             "\"password_file\": \"%s\"}, \"redis\": {\"password_file\": \"%s\"}}",
             pf, pf);
    unsetenv("MRB_MQTT_PASSWORD");
    unsetenv("MRB_REDIS_PASSWORD");
    if (load(json, &cfg, msg, sizeof(msg)) != MRB_OK)
        fail_msg("%s", msg);
    assert_string_equal(cfg.mqtt.user, "bridge");
    assert_string_equal(cfg.mqtt.password, "s3cret");
    assert_string_equal(cfg.redis.password, "s3cret");
    assert_string_equal(cfg.mqtt_password_from, "mqtt.password_file");
    assert_int_equal(cfg.n_warnings, 0);
    /* --check: never the password itself */
    char out[2048] = "";
    FILE *f = fmemopen(out, sizeof(out) - 1, "w");
    mrb_config_print(&cfg, f);
    fclose(f);
    assert_null(strstr(out, "s3cret"));
    assert_non_null(strstr(out, "mqtt password: *** (from mqtt.password_file)"));
    mrb_config_free(&cfg);

    /* readable by others: a warning */
    assert_int_equal(chmod(pf, 0644), 0);
    assert_int_equal(load(json, &cfg, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(cfg.n_warnings, 2);
    snprintf(want, sizeof(want), "mqtt.password_file \"%s\" is readable by other "
             "users (mode 0644): chmod o-r it", pf);
    assert_string_equal(cfg.warnings[0], want);
    mrb_config_free(&cfg);

    /* from the environment */
    setenv("MRB_REDIS_PASSWORD", "from-env", 1);
    assert_int_equal(load("{}", &cfg, msg, sizeof(msg)), MRB_OK);
    assert_string_equal(cfg.redis.password, "from-env");
    assert_string_equal(cfg.redis_password_from, "MRB_REDIS_PASSWORD");
    assert_null(cfg.mqtt_password_from);
    mrb_config_free(&cfg);
    /* one source per side */
    expect_error("{\"redis\": {\"url\": \"redis://:pw@h\"}}",
                 "redis: the password is given twice, in the URL (redis.url / "
                 "--redis) and in MRB_REDIS_PASSWORD: keep one");
    unsetenv("MRB_REDIS_PASSWORD");
    snprintf(json, sizeof(json), "{\"mqtt\": {\"url\": \"mqtt://u:pw@h\", "
             "\"password_file\": \"%s\"}}", pf);
    expect_error(json, "mqtt: the password is given twice, in the URL (mqtt.url / "
                 "--mqtt) and in mqtt.password_file: keep one");
    /* unusable files */
    expect_error("{\"mqtt\": {\"password_file\": \"/nonexistent/pw\"}}",
                 "mqtt.password_file: cannot open \"/nonexistent/pw\": No such file "
                 "or directory");
    unlink(pf);
    temp_file(pf, sizeof(pf), "\nsecond line\n", 0600);
    snprintf(json, sizeof(json), "{\"redis\": {\"password_file\": \"%s\"}}", pf);
    snprintf(want, sizeof(want), "redis.password_file: \"%s\": the first line is "
             "empty (it holds the password)", pf);
    expect_error(json, want);
    unlink(pf);
}

static void test_world_readable_config(void **state)
{
    char path[64], msg[512] = "", want[512];
    mrb_config cfg;
    temp_file(path, sizeof(path), "{\"redis\": {\"url\": \"redis://:pw@h\"}}", 0644);
    mrb_config_init(&cfg);
    assert_int_equal(mrb_config_load_file(&cfg, path, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(mrb_config_finish(&cfg, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(cfg.n_warnings, 1);
    snprintf(want, sizeof(want), "the configuration file, which holds a password, "
             "\"%s\" is readable by other users (mode 0644): chmod o-r it", path);
    assert_string_equal(cfg.warnings[0], want);
    mrb_config_free(&cfg);
    /* no password in it: no warning */
    unlink(path);
    temp_file(path, sizeof(path), "{\"redis\": {\"url\": \"redis://u@h\"}}", 0644);
    mrb_config_init(&cfg);
    assert_int_equal(mrb_config_load_file(&cfg, path, msg, sizeof(msg)), MRB_OK);
    assert_int_equal(cfg.n_warnings, 0);
    mrb_config_free(&cfg);
    unlink(path);
}

/* An argv as the kernel lays it out: the strings back to back in one
 * block (what /proc/PID/cmdline shows), argv[argc] NULL. */
static int argv_in_block(char *block, size_t size, const char *const *args,
                         char **argv, int max)
{
    size_t o = 0;
    int n = 0;
    memset(block, 'X', size);
    for (; args[n] && n < max - 1; n++) {
        size_t len = strlen(args[n]) + 1;
        assert_true(o + len <= size);
        memcpy(block + o, args[n], len);
        argv[n] = block + o;
        o += len;
    }
    argv[n] = NULL;
    return n;
}

static void test_cli_scrub(void **state)
{
    char msg[256];
    mrb_cli c;
    /* the kernel's layout: the password becomes "***", the rest of the
     * block moves up, NULs fill its end; the argv pointers and what the
     * options point at follow */
    static const char *const args[] = {
        "mrb", "--mqtt", "mqtts://u:topsecret@h:8883", "-c", "/etc/b.json",
        "--redis", "redis://:pw-4@r/2", "--id", "b1", "--route", "a > b", NULL};
    static const char masked[] =
        "mrb\0--mqtt\0mqtts://u:***@h:8883\0-c\0/etc/b.json\0--redis\0"
        "redis://:***@r/2\0--id\0b1\0--route\0a > b\0";
    char block[256], *argv[16];
    int argc = argv_in_block(block, sizeof(block), args, argv, 16);
    size_t used = 0;
    for (int i = 0; i < argc; i++)
        used += strlen(args[i]) + 1;
    assert_int_equal(mrb_cli_parse(argc, argv, &c, msg, sizeof(msg)), MRB_OK);
    mrb_cli_scrub(&c);
    assert_memory_equal(block, masked, sizeof(masked) - 1);
    for (size_t i = sizeof(masked) - 1; i < used; i++)
        if (block[i] != '\0')
            fail_msg("byte %zu of the block: 0x%02x, not NUL", i,
                     (unsigned char)block[i]);
    assert_int_equal(block[used], 'X'); /* nothing beyond the block */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], args[i]) != 0 && i != 2 && i != 6)
            fail_msg("argv[%d]: \"%s\", want \"%s\"", i, argv[i], args[i]);
    assert_string_equal(argv[2], "mqtts://u:***@h:8883");
    assert_string_equal(argv[6], "redis://:***@r/2");
    assert_string_equal(c.mqtt_url, "mqtts://u:***@h:8883");
    assert_string_equal(c.redis_url, "redis://:***@r/2");
    assert_string_equal(c.config_file, "/etc/b.json");
    assert_string_equal(c.id, "b1");
    assert_int_equal(c.n_routes, 1);
    assert_string_equal(c.routes[0], "a > b");
    mrb_cli_free(&c);

    /* short and long passwords look the same */
    char pw[80];
    memset(pw, 'L', 64);
    pw[64] = '\0';
    char long_url[128];
    snprintf(long_url, sizeof(long_url), "mqtt://u:%s@h", pw);
    const char *const a2[] = {"mrb", "--mqtt", long_url, "--redis",
                              "redis://:abc@r", NULL};
    argc = argv_in_block(block, sizeof(block), a2, argv, 16);
    assert_int_equal(mrb_cli_parse(argc, argv, &c, msg, sizeof(msg)), MRB_OK);
    mrb_cli_scrub(&c);
    assert_string_equal(c.mqtt_url, "mqtt://u:***@h");
    assert_string_equal(c.redis_url, "redis://:***@r");
    assert_memory_equal(block, "mrb\0--mqtt\0mqtt://u:***@h\0--redis\0"
                        "redis://:***@r\0\0", 51);
    mrb_cli_free(&c);

    /* strings that are not one block (here: separate arrays): each is
     * masked within itself, NUL-padded; a password too short for "***"
     * (the text cannot grow) is starred over */
    char s1[] = "mqtts://u:topsecret@h:8883", s2[] = "redis://:pw@r/2",
         s3[] = "redis://r/a@b:c";
    char *argv1[] = {"mrb", "--mqtt", s1, "--redis", s2, NULL};
    assert_int_equal(mrb_cli_parse(5, argv1, &c, msg, sizeof(msg)), MRB_OK);
    mrb_cli_scrub(&c);
    assert_string_equal(s1, "mqtts://u:***@h:8883");
    assert_memory_equal(s1 + 20, "\0\0\0\0\0\0\0", 7);
    assert_string_equal(s2, "redis://:**@r/2");
    mrb_cli_free(&c);
    char *argv2[] = {"mrb", "--redis", s3, NULL};
    assert_int_equal(mrb_cli_parse(3, argv2, &c, msg, sizeof(msg)), MRB_OK);
    mrb_cli_scrub(&c);
    assert_string_equal(s3, "redis://r/a@b:c"); /* no user information */
    mrb_cli_free(&c);
}

static void test_missing_file(void **state)
{
    mrb_config cfg;
    char msg[256];
    mrb_config_init(&cfg);
    assert_int_equal(mrb_config_load_file(&cfg, "/nonexistent/x.json", msg,
                                          sizeof(msg)), MRB_ERR_INVALID);
    assert_string_equal(msg, "/nonexistent/x.json: cannot open: No such file or directory");
    mrb_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_syntax_errors_have_line_and_column),
        cmocka_unit_test(test_value_errors_name_the_key),
        cmocka_unit_test(test_whole_config_errors),
        cmocka_unit_test(test_cli_overrides),
        cmocka_unit_test(test_cli_errors),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_tls_settings),
        cmocka_unit_test(test_passwords),
        cmocka_unit_test(test_world_readable_config),
        cmocka_unit_test(test_cli_scrub),
        cmocka_unit_test(test_route_options),
        cmocka_unit_test(test_every_integer_key_range),
        cmocka_unit_test(test_reference_is_the_schema),
        cmocka_unit_test(test_nul_in_strings_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
