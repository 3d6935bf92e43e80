/* Unit tests: server URL parsing and redaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mrb/url.h"

static void test_mqtt_urls(void **state)
{
    mrb_url u;
    char msg[256];
    assert_int_equal(mrb_url_parse("mqtt://h", MRB_URL_MQTT, &u, msg, sizeof(msg)), MRB_OK);
    assert_string_equal(u.host, "h");
    assert_int_equal(u.port, 1883);
    assert_null(u.user);
    mrb_url_free(&u);
    assert_int_equal(mrb_url_parse("mqtt://al%3Ai:s3:cr@t@[::1]:18", MRB_URL_MQTT,
                                   &u, msg, sizeof(msg)), MRB_OK);
    assert_string_equal(u.user, "al:i");
    assert_string_equal(u.password, "s3:cr@t");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 18);
    char buf[128];
    mrb_url_format_redacted(&u, MRB_URL_MQTT, buf, sizeof(buf));
    assert_string_equal(buf, "mqtt://al:i:***@[::1]:18");
    mrb_url_free(&u);
}

static void test_redis_urls(void **state)
{
    mrb_url u;
    char msg[256], buf[128];
    assert_int_equal(mrb_url_parse("redis://:pw@r:6380/3", MRB_URL_REDIS, &u, msg,
                                   sizeof(msg)), MRB_OK);
    assert_null(u.user);
    assert_string_equal(u.password, "pw");
    assert_int_equal(u.db, 3);
    mrb_url_format_redacted(&u, MRB_URL_REDIS, buf, sizeof(buf));
    assert_string_equal(buf, "redis://:***@r:6380/3");
    mrb_url_free(&u);
    assert_int_equal(mrb_url_parse("unix:/run/redis.sock", MRB_URL_REDIS, &u, msg,
                                   sizeof(msg)), MRB_OK);
    assert_string_equal(u.path, "/run/redis.sock");
    assert_null(u.host);
    mrb_url_free(&u);
}

static void test_mqtts_urls(void **state)
{
    mrb_url u;
    char msg[256], buf[128];
    assert_int_equal(mrb_url_parse("mqtts://b:pw@broker.example", MRB_URL_MQTT, &u,
                                   msg, sizeof(msg)), MRB_OK);
    assert_int_equal(u.tls, 1);
    assert_int_equal(u.port, 8883);
    mrb_url_format_redacted(&u, MRB_URL_MQTT, buf, sizeof(buf));
    assert_string_equal(buf, "mqtts://b:***@broker.example:8883");
    mrb_url_free(&u);
    assert_int_equal(mrb_url_parse("mqtt://h", MRB_URL_MQTT, &u, msg, sizeof(msg)),
                     MRB_OK);
    assert_int_equal(u.tls, 0);
    mrb_url_free(&u);
}

static void test_redact_text(void **state)
{
    char buf[128];
    static const char *const cases[][2] = {
        {"mqtt://u:p@h", "mqtt://u:***@h"},
        {"mqtts://u:p:q@r@h:1", "mqtts://u:***@h:1"},
        {"redis://:pw@h/2", "redis://:***@h/2"},
        {"redis://u@h", "redis://u@h"},          /* no password */
        {"redis://h/a@b:c", "redis://h/a@b:c"},  /* '@' after the path */
        {"u:p@h", "u:***@h"},                    /* no scheme */
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mrb_url_redact_text(cases[i][0], buf, sizeof(buf));
        assert_string_equal(buf, cases[i][1]);
    }
}

static void bad(const char *text, mrb_url_kind kind, const char *want)
{
    mrb_url u;
    char msg[256] = "";
    assert_int_equal(mrb_url_parse(text, kind, &u, msg, sizeof(msg)), MRB_ERR_INVALID);
    if (strcmp(msg, want) != 0)
        fail_msg(" got: %s\nwant: %s", msg, want);
    assert_null(u.host);
}

static void test_bad_urls(void **state)
{
    bad("tcp://h", MRB_URL_MQTT,
        "\"tcp://h\": the URL must start with mqtt:// or mqtts://");
    bad("mqtt://h:0", MRB_URL_MQTT,
        "\"mqtt://h:0\": the port must be a number from 1 to 65535");
    bad("mqtt://h:x", MRB_URL_MQTT,
        "\"mqtt://h:x\": the port must be a number from 1 to 65535");
    bad("mqtt://h/x", MRB_URL_MQTT, "\"mqtt://h/x\": an mqtt:// URL has no path");
    bad("mqtt://", MRB_URL_MQTT, "\"mqtt://\": missing or malformed host");
    /* the password is never quoted back: messages go to logs */
    bad("mqtt://u:%zz@h", MRB_URL_MQTT,
        "\"mqtt://u:***@h\": bad percent-escape in user or password");
    bad("mqtt://u:secret@h:0", MRB_URL_MQTT,
        "\"mqtt://u:***@h:0\": the port must be a number from 1 to 65535");
    bad("redis://:secret@h/x", MRB_URL_REDIS,
        "\"redis://:***@h/x\": the database after '/' must be a number");
    bad("rediss://:secret@h", MRB_URL_REDIS,
        "\"rediss://:***@h\": rediss:// (TLS) is not supported by this build "
        "(hiredis 0.14 has no TLS): put stunnel in front of Redis, see "
        "docs/SECURITY.md \"Redis over TLS\"");
    bad("redis://h/db", MRB_URL_REDIS,
        "\"redis://h/db\": the database after '/' must be a number");
    bad("unix:relative", MRB_URL_REDIS,
        "\"unix:relative\": a unix socket URL needs an absolute path "
        "(unix:/path/redis.sock)");
    bad("http://h", MRB_URL_REDIS,
        "\"http://h\": the URL must start with redis:// or unix:/");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mqtt_urls),
        cmocka_unit_test(test_redis_urls),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_mqtts_urls),
        cmocka_unit_test(test_redact_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
