/* Unit tests: route options - their checks, the presence hash field, the
 * JSON envelope (incl. base64) and the token bucket with a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "mrb/bucket.h"
#include "mrb/envelope.h"
#include "mrb/route.h"
#include "route_spec.h"

/* ---- options: parse, check, format ---- */

static void test_options_parse_and_format(void **state)
{
    mrb_route r = mk("devices/+/status > presence:* hash=devices envelope=json "
                     "rate=200 burst=20");
    assert_int_equal(r.store, MRB_STORE_HASH);
    assert_string_equal(r.hash, "devices");
    assert_int_equal(r.envelope, MRB_ENVELOPE_JSON);
    assert_int_equal(r.rate, 200);
    assert_int_equal(r.burst, 20);
    char line[300];
    mrb_route_format(&r, line, sizeof(line));
    assert_string_equal(line, "devices/+/status > presence:* qos=1 store=hash "
                        "hash=devices envelope=json rate=200 burst=20");
    /* what format prints parses back to the same */
    mrb_route r2 = mk(line);
    char line2[300];
    mrb_route_format(&r2, line2, sizeof(line2));
    assert_string_equal(line, line2);
    mrb_route_free(&r2);
    /* a deep copy */
    mrb_route c;
    assert_int_equal(mrb_route_copy(&c, &r), MRB_OK);
    assert_ptr_not_equal(c.hash, r.hash);
    assert_string_equal(c.hash, "devices");
    mrb_route_free(&c);
    mrb_route_free(&r);

    r = mk("cmd/+ < cmd:* unwrap rate=5 qos=0");
    assert_int_equal(r.unwrap, 1);
    assert_int_equal(r.burst, 0); /* default: as rate */
    mrb_route_format(&r, line, sizeof(line));
    assert_string_equal(line, "cmd/+ < cmd:* qos=0 unwrap rate=5 burst=5");
    mrb_route_free(&r);

    /* defaults: nothing printed */
    r = mk("a/+ <> a:*");
    mrb_route_format(&r, line, sizeof(line));
    assert_string_equal(line, "a/+ <> a:* qos=1");
    assert_int_equal(r.store, MRB_STORE_NONE);
    assert_null(r.hash);
    mrb_route_free(&r);
}

static void test_option_checks(void **state)
{
    check_bad("a/+ < a:* hash=h", "store \"hash\" keeps what comes from MQTT, but "
              "the route carries only Redis to MQTT (use direction both or "
              "mqtt_to_redis)");
    check_bad("a/+ > a:* store=hash", "store \"hash\" needs the hash's name "
              "(\"hash\": \"NAME\", or hash=NAME in a --route)");
    check_bad("a/+ < a:* envelope=json", "envelope \"json\" wraps messages from "
              "MQTT, but the route carries only Redis to MQTT (to take envelopes "
              "apart on the way to MQTT use unwrap)");
    check_bad("a/+ > a:* unwrap", "unwrap takes envelopes apart on the way to "
              "MQTT, but the route carries only MQTT to Redis (to wrap use "
              "envelope \"json\")");
    check_bad("a > a rate=1000001", "rate 1000001 is out of range (messages per "
              "second, 1 to 1000000; 0 or none: unlimited)");
    check_bad("a > a rate=10 burst=2000000", "burst 2000000 is out of range (1 to "
              "1000000 messages)");
    check_bad("a > a burst=3", "burst 3 is given without a rate (add a rate in "
              "messages per second)");
    check_bad("a > a rate=x", "unknown option \"rate=x\" (allowed: qos=0, qos=1, "
              "qos=2, retain, stream, maxlen=N, store=hash, hash=NAME, "
              "envelope=json, envelope=none, unwrap, rate=N, burst=N)");
    check_bad("a > a hash=", "unknown option \"hash=\" (allowed: qos=0, qos=1, "
              "qos=2, retain, stream, maxlen=N, store=hash, hash=NAME, "
              "envelope=json, envelope=none, unwrap, rate=N, burst=N)");
    /* the check itself, as the configuration file uses it */
    mrb_route r = {.mqtt = "a", .redis = "a", .qos = 1, .hash = "h"};
    char msg[300];
    assert_int_equal(mrb_route_check(&r, msg, sizeof(msg)), MRB_ERR_INVALID);
    assert_string_equal(msg, "hash \"h\" is given but store is not \"hash\" (add "
                        "\"store\": \"hash\")");
    r.store = MRB_STORE_HASH;
    assert_int_equal(mrb_route_check(&r, msg, sizeof(msg)), MRB_OK);
    /* both ways: all options allowed */
    mrb_route ok = mk("a/+ <> a:* hash=h envelope=json unwrap rate=1");
    mrb_route_free(&ok);
}

static void field_is(const char *spec, const char *topic, const char *want)
{
    mrb_route r = mk(spec);
    char out[256];
    size_t n = 0;
    mrb_err err = mrb_route_hash_field(&r, topic, strlen(topic), out, sizeof(out), &n);
    if (want) {
        assert_int_equal(err, MRB_OK);
        out[n] = '\0';
        assert_string_equal(out, want);
    } else {
        assert_int_equal(err, MRB_ERR_NOMATCH);
    }
    mrb_route_free(&r);
}

static void test_hash_field(void **state)
{
    field_is("devices/+/status > presence:* hash=h", "devices/dev1/status", "dev1");
    field_is("devices/+/status > presence:* hash=h", "devices/dev1/other", NULL);
    /* several wildcards: their captures joined with '/' */
    field_is("site/+/dev/+/status > p:*:* hash=h", "site/s1/dev/d7/status", "s1/d7");
    /* '#' keeps its own levels */
    field_is("dev/# > p:* hash=h", "dev/a/b/c", "a/b/c");
    /* no wildcard: the whole topic */
    field_is("lamp/status > lamp hash=h", "lamp/status", "lamp/status");
    /* an empty level is a capture too */
    field_is("devices/+/status > presence:* hash=h", "devices//status", "");
}

static void test_table_retained_subscriptions(void **state)
{
    mrb_route r[3] = {mk("devices/+/status > presence:* hash=devices"),
                      mk("user/+ <> user:*"),
                      mk("devices/+/status > other:*")};
    mrb_routes t;
    assert_int_equal(mrb_routes_build(&t, r, 3), MRB_OK);
    assert_int_equal(t.n_mqtt_sub, 2);
    /* the filter a store route uses wants retained messages, even when
     * another route shares it */
    for (size_t i = 0; i < t.n_mqtt_sub; i++)
        assert_int_equal(t.mqtt_sub[i].retained,
                         strcmp(t.mqtt_sub[i].name, "devices/+/status") == 0);
    assert_true(mrb_routes_mqtt_stores(&t, "devices/d1/status", 17));
    assert_false(mrb_routes_mqtt_stores(&t, "user/x", 6));
    assert_string_equal(t.route[0].hash, "devices");
    mrb_routes_free(&t);
    for (int i = 0; i < 3; i++)
        mrb_route_free(&r[i]);
}

/* ---- envelope ---- */

static cJSON *wrap(const void *p, size_t n)
{
    char *out = NULL;
    size_t outn = 0;
    assert_int_equal(mrb_envelope_wrap("dev/1/t", p, n, 1, 0, 1700000000123LL, "b1",
                                       &out, &outn),
                     MRB_OK);
    assert_int_equal(strlen(out), outn);
    cJSON *j = cJSON_Parse(out);
    if (!j)
        fail_msg("not JSON: %s", out);
    free(out);
    assert_string_equal(cJSON_GetObjectItem(j, "topic")->valuestring, "dev/1/t");
    assert_int_equal(cJSON_GetObjectItem(j, "qos")->valueint, 1);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "retain")));
    assert_true(cJSON_GetObjectItem(j, "ts")->valuedouble == 1700000000123.0);
    assert_string_equal(cJSON_GetObjectItem(j, "bridge")->valuestring, "b1");
    return j;
}

/* unwrap(wrap(p)) == p byte for byte */
static void round_trip(const void *p, size_t n)
{
    char *env = NULL, *back = NULL, msg[200];
    size_t envn = 0, backn = 0;
    assert_int_equal(mrb_envelope_wrap("t", p, n, 0, 1, 5, "b", &env, &envn), MRB_OK);
    assert_int_equal(mrb_envelope_unwrap(env, envn, &back, &backn, msg, sizeof(msg)),
                     MRB_OK);
    assert_int_equal(backn, n);
    if (n)
        assert_memory_equal(back, p, n);
    free(env);
    free(back);
}

static void test_envelope_text_json_binary(void **state)
{
    /* text: a string */
    cJSON *j = wrap("online", 6);
    assert_string_equal(cJSON_GetObjectItem(j, "payload")->valuestring, "online");
    assert_null(cJSON_GetObjectItem(j, "encoding"));
    cJSON_Delete(j);
    /* UTF-8 text that is not JSON, quotes and all */
    j = wrap("h\xc3\xa9 \"x\"", 7);
    assert_string_equal(cJSON_GetObjectItem(j, "payload")->valuestring, "h\xc3\xa9 \"x\"");
    cJSON_Delete(j);
    /* compact JSON: embedded byte for byte */
    const char *js = "{\"t\":21.5,\"n\":[1,2]}";
    char *out = NULL;
    size_t outn;
    assert_int_equal(mrb_envelope_wrap("a", js, strlen(js), 0, 0, 1, "b", &out, &outn),
                     MRB_OK);
    assert_non_null(strstr(out, "\"payload\":{\"t\":21.5,\"n\":[1,2]}"));
    free(out);
    /* other JSON: as cJSON writes it, so the envelope stays JSON (cJSON
     * reads 007, which JSON does not allow) */
    const char *spaced = "{\"t\": 21.50, \"n\": [1, 007]}";
    assert_int_equal(mrb_envelope_wrap("a", spaced, strlen(spaced), 0, 0, 1, "b", &out,
                                       &outn), MRB_OK);
    assert_non_null(strstr(out, "\"payload\":{\"t\":21.5,\"n\":[1,7]}"));
    free(out);
    j = wrap("007", 3);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "payload")));
    assert_int_equal(cJSON_GetObjectItem(j, "payload")->valueint, 7);
    cJSON_Delete(j);
    /* a lone JSON string is text (embedded, it would lose its quotes) */
    j = wrap("\"abc\"", 5);
    assert_string_equal(cJSON_GetObjectItem(j, "payload")->valuestring, "\"abc\"");
    cJSON_Delete(j);
    j = wrap("42", 2);
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(j, "payload")));
    cJSON_Delete(j);
    /* binary (invalid UTF-8): base64 */
    j = wrap("\xff\x00\x01\xfe", 4);
    assert_string_equal(cJSON_GetObjectItem(j, "payload")->valuestring, "/wAB/g==");
    assert_string_equal(cJSON_GetObjectItem(j, "encoding")->valuestring, "base64");
    cJSON_Delete(j);
    /* a NUL byte in otherwise valid UTF-8: base64 too */
    j = wrap("a\0b", 3);
    assert_string_equal(cJSON_GetObjectItem(j, "encoding")->valuestring, "base64");
    cJSON_Delete(j);
    /* a JSON-looking payload with invalid UTF-8 inside a string: base64 */
    j = wrap("\"\xc3\x28\"", 4);
    assert_string_equal(cJSON_GetObjectItem(j, "encoding")->valuestring, "base64");
    cJSON_Delete(j);
    /* empty: an empty string */
    j = wrap("", 0);
    assert_string_equal(cJSON_GetObjectItem(j, "payload")->valuestring, "");
    cJSON_Delete(j);

    round_trip("online", 6);
    round_trip("", 0);
    round_trip("{\"a\":1,\"b\":[true,null,\"x\"]}", 27);
    round_trip("\"abc\"", 5);
    unsigned char bin[256];
    for (int i = 0; i < 256; i++)
        bin[i] = (unsigned char)(255 - i);
    for (size_t n = 0; n <= 7; n++)
        round_trip(bin, n); /* every padding case */
    round_trip(bin, sizeof(bin));
}

static void test_envelope_large(void **state)
{
    /* a large binary payload grows by a third in base64: the caller
     * compares the result with limits.max_payload */
    size_t n = 300000;
    unsigned char *p = malloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7 + 128);
    char *out = NULL;
    size_t outn = 0;
    assert_int_equal(mrb_envelope_wrap("t", p, n, 0, 0, 1, "b", &out, &outn), MRB_OK);
    assert_true(outn > MRB_BASE64_LEN(n));
    char *back = NULL, msg[200];
    size_t backn = 0;
    assert_int_equal(mrb_envelope_unwrap(out, outn, &back, &backn, msg, sizeof(msg)),
                     MRB_OK);
    assert_int_equal(backn, n);
    assert_memory_equal(back, p, n);
    free(back);
    free(out);
    free(p);
}

static void unwrap_bad(const char *env, const char *why)
{
    char *out = NULL, msg[200];
    size_t n;
    assert_int_equal(mrb_envelope_unwrap(env, strlen(env), &out, &n, msg, sizeof(msg)),
                     MRB_ERR_INVALID);
    assert_null(out);
    assert_string_equal(msg, why);
}

static void test_unwrap(void **state)
{
    char *out = NULL, msg[200];
    size_t n;
    /* a JSON payload is printed compactly by cJSON */
    const char *e = "{\"payload\": {\"a\": [1, 2]}, \"topic\": \"ignored\"}";
    assert_int_equal(mrb_envelope_unwrap(e, strlen(e), &out, &n, msg, sizeof(msg)),
                     MRB_OK);
    assert_string_equal(out, "{\"a\":[1,2]}");
    free(out);
    e = "{\"payload\":\"AP8=\",\"encoding\":\"base64\"}";
    assert_int_equal(mrb_envelope_unwrap(e, strlen(e), &out, &n, msg, sizeof(msg)),
                     MRB_OK);
    assert_int_equal(n, 2);
    assert_memory_equal(out, "\x00\xff", 2);
    free(out);
    unwrap_bad("online", "not JSON");
    unwrap_bad("[1]", "not an envelope (a JSON object with \"payload\")");
    unwrap_bad("{\"topic\":\"x\"}", "not an envelope (a JSON object with \"payload\")");
    unwrap_bad("{\"payload\":\"x\",\"encoding\":\"hex\"}",
               "unknown \"encoding\" (allowed: \"base64\")");
    unwrap_bad("{\"payload\":1,\"encoding\":\"base64\"}",
               "a base64 \"payload\" must be a string");
    unwrap_bad("{\"payload\":\"AP8\",\"encoding\":\"base64\"}",
               "\"payload\" is not valid base64");
    unwrap_bad("{\"payload\":\"A===\",\"encoding\":\"base64\"}",
               "\"payload\" is not valid base64");
    unwrap_bad("{\"payload\":\"AP9=\",\"encoding\":\"base64\"}",
               "\"payload\" is not valid base64"); /* non-canonical */
    unwrap_bad("{\"payload\":\"A=AA\",\"encoding\":\"base64\"}",
               "\"payload\" is not valid base64");
}

static void test_base64_vectors(void **state)
{
    /* RFC 4648, section 10 */
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                          "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char out[16];
        unsigned char back[16];
        size_t n;
        assert_int_equal(mrb_base64_encode(in[i], strlen(in[i]), out), strlen(want[i]));
        assert_string_equal(out, want[i]);
        assert_int_equal(mrb_base64_decode(out, strlen(out), back, &n), 0);
        assert_int_equal(n, strlen(in[i]));
        assert_memory_equal(back, in[i], n);
    }
}

/* ---- token bucket ---- */

static void test_bucket(void **state)
{
    mrb_bucket k;
    int64_t t = 1000;
    mrb_bucket_init(&k, 200, 20, t);
    /* the burst at once, then nothing */
    for (int i = 0; i < 20; i++)
        assert_true(mrb_bucket_take(&k, t));
    assert_false(mrb_bucket_take(&k, t));
    assert_int_equal(mrb_bucket_wait_ms(&k, t), 5); /* 200/s: one per 5 ms */
    assert_false(mrb_bucket_take(&k, t + 4));
    assert_true(mrb_bucket_take(&k, t + 5));
    /* over 5 s at 1000 tries/s: rate * 5 s pass (the burst is spent) */
    int ok = 0;
    for (int ms = 6; ms <= 5005; ms++)
        ok += mrb_bucket_take(&k, t + ms);
    assert_int_equal(ok, 1000);
    /* idle refills up to the burst only */
    t += 100000;
    ok = 0;
    for (int i = 0; i < 100; i++)
        ok += mrb_bucket_take(&k, t);
    assert_int_equal(ok, 20);
    /* a clock going backwards gives nothing */
    assert_false(mrb_bucket_take(&k, t - 50));
    /* default burst = rate; slow rates wait long */
    mrb_bucket_init(&k, 1, 0, 0);
    assert_true(mrb_bucket_take(&k, 0));
    assert_false(mrb_bucket_take(&k, 999));
    assert_int_equal(mrb_bucket_wait_ms(&k, 999), 1);
    assert_true(mrb_bucket_take(&k, 1000));
    /* unlimited */
    mrb_bucket_init(&k, 0, 0, 0);
    assert_false(mrb_bucket_limited(&k));
    for (int i = 0; i < 1000; i++)
        assert_true(mrb_bucket_take(&k, 0));
    assert_int_equal(mrb_bucket_wait_ms(&k, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_parse_and_format),
        cmocka_unit_test(test_option_checks),
        cmocka_unit_test(test_hash_field),
        cmocka_unit_test(test_table_retained_subscriptions),
        cmocka_unit_test(test_envelope_text_json_binary),
        cmocka_unit_test(test_envelope_large),
        cmocka_unit_test(test_unwrap),
        cmocka_unit_test(test_base64_vectors),
        cmocka_unit_test(test_bucket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
