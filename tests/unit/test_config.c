/* Unit tests: the JSON schema, command-line parsing and the exact text of
 * every configuration error a user can meet. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mrb/config.h"
#include "mrb/queue.h"
#include <stdio.h>

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
        "  \"shutdown_timeout_ms\": 0\n"
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
    assert_string_equal(cfg.status_topic, "bridge/pi-7/status");
    mrb_config_free(&cfg);
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
                 "client_id, protocol, keepalive, session_expiry)");
    expect_error("{\"colour\": 1}",
                 "cfg.json: colour: unknown key (known keys here: id, log_level, "
                 "mqtt, redis, routes, limits, reconnect, shutdown_timeout_ms)");
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
                 "cfg.json: mqtt.url: \"http://x\": the URL must start with mqtt://");
    expect_error("{\"redis\": {\"url\": \"redis://h:99999\"}}",
                 "cfg.json: redis.url: \"redis://h:99999\": the port must be a number from 1 "
                 "to 65535");
    expect_error("{\"id\": \"a/b\"}",
                 "cfg.json: id: invalid value \"a/b\" (allowed: 1 to 64 letters, digits, "
                 "'-', '_' or '.')");
    expect_error("{\"reconnect\": {\"min_ms\": 5000, \"max_ms\": 1000}}",
                 "reconnect.min_ms (5000) must not exceed reconnect.max_ms (1000)");
    char want[256];
    long need = 5000 + MRB_TOPIC_MAX + (long)MRB_MSG_OVERHEAD;
    snprintf(want, sizeof(want), "limits.queue_bytes (70000) must be at least %ld "
             "(limits.max_payload + %ld for the topic and bookkeeping), or a "
             "largest message could not wait in the queue", need, need - 5000);
    expect_error("{\"limits\": {\"max_payload\": 5000, \"queue_bytes\": 70000}}",
                 want);
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
                    "n < n qos=2 retain", "-q", NULL};
    mrb_config cfg;
    char msg[256] = "";
    mrb_config_init(&cfg);
    /* a file's routes are replaced by command-line routes */
    const char *json = "{\"id\": \"file\", \"routes\": [{\"mqtt\": \"f\", \"redis\": \"f\"}]}";
    assert_int_equal(mrb_config_load_json(&cfg, json, strlen(json), "f.json", msg,
                                          sizeof(msg)), MRB_OK);
    mrb_cli c;
    assert_int_equal(mrb_cli_parse(12, argv, &c, msg, sizeof(msg)), MRB_OK);
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
    expect_cli_error(3, a5, "--redis: \"redis://:pw@\": missing or malformed host");
    char *a6[] = {"mrb", "--id", "a b", NULL};
    expect_cli_error(3, a6, "--id: invalid value \"a b\" (allowed: 1 to 64 letters, "
                     "digits, '-', '_' or '.')");
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
