/* Unit tests: replay requests (parsing, validation, exact error texts) and
 * the end marker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "mrb/replay.h"

static mrb_err parse(const char *json, mrb_replay_request *r, char *msg,
                     size_t msglen)
{
    msg[0] = '\0';
    return mrb_replay_parse(json, strlen(json), r, msg, msglen);
}

static void test_good_requests(void **state)
{
    mrb_replay_request r;
    char msg[300];
    assert_int_equal(parse("{\"topic\": \"sensors/t1\", \"count\": 5}", &r, msg,
                           sizeof(msg)), MRB_OK);
    assert_string_equal(r.topic, "sensors/t1");
    assert_int_equal(r.count, 5);
    assert_null(r.response_topic);
    mrb_replay_request_free(&r);
    assert_int_equal(parse("{\"count\": 1000, \"topic\": \"a\", "
                           "\"response_topic\": \"me/answers\"}", &r, msg,
                           sizeof(msg)), MRB_OK);
    assert_int_equal(r.count, 1000);
    assert_string_equal(r.response_topic, "me/answers");
    mrb_replay_request_free(&r);
    /* 5.0 is the integer 5 */
    assert_int_equal(parse("{\"topic\": \"a\", \"count\": 5.0}", &r, msg,
                           sizeof(msg)), MRB_OK);
    assert_int_equal(r.count, 5);
    mrb_replay_request_free(&r);
}

static void bad(const char *json, const char *want)
{
    mrb_replay_request r;
    char msg[300];
    assert_int_equal(parse(json, &r, msg, sizeof(msg)), MRB_ERR_INVALID);
    assert_string_equal(msg, want);
    mrb_replay_request_free(&r);
}

static void test_bad_requests(void **state)
{
    bad("", "request is not a JSON object (expected {\"topic\": \"...\", "
            "\"count\": N})");
    bad("{not json", "request is not a JSON object (expected {\"topic\": "
                     "\"...\", \"count\": N})");
    bad("[1]", "request is not a JSON object (expected {\"topic\": \"...\", "
               "\"count\": N})");
    bad("{\"count\": 5}", "topic: missing");
    bad("{\"topic\": 5, \"count\": 5}",
        "topic: not a topic name (a non-empty string without + or #)");
    bad("{\"topic\": \"a/+\", \"count\": 5}",
        "topic: not a topic name (a non-empty string without + or #)");
    bad("{\"topic\": \"\", \"count\": 5}",
        "topic: not a topic name (a non-empty string without + or #)");
    bad("{\"topic\": \"a\"}", "count: missing (an integer from 1 to 1000)");
    bad("{\"topic\": \"a\", \"count\": 0}", "count: not an integer from 1 to 1000");
    bad("{\"topic\": \"a\", \"count\": 1001}", "count: not an integer from 1 to 1000");
    bad("{\"topic\": \"a\", \"count\": 2.5}", "count: not an integer from 1 to 1000");
    bad("{\"topic\": \"a\", \"count\": -1}", "count: not an integer from 1 to 1000");
    bad("{\"topic\": \"a\", \"count\": 1e300}", "count: not an integer from 1 to 1000");
    bad("{\"topic\": \"a\", \"count\": \"5\"}", "count: not an integer from 1 to 1000");
    bad("{\"topic\": \"a\", \"count\": 5, \"colour\": 1}",
        "unknown key \"colour\" (known: topic, count, response_topic)");
    bad("{\"topic\": \"a\", \"count\": 5, \"response_topic\": \"x/#\"}",
        "response_topic: not a topic name (a non-empty string without + or #)");
}

static void test_error_keeps_response_topic(void **state)
{
    mrb_replay_request r;
    char msg[300];
    assert_int_equal(parse("{\"topic\": \"a\", \"count\": 0, "
                           "\"response_topic\": \"me/x\"}", &r, msg, sizeof(msg)),
                     MRB_ERR_INVALID);
    assert_string_equal(r.response_topic, "me/x");
    mrb_replay_request_free(&r);
}

static void test_too_large(void **state)
{
    size_t n = MRB_REPLAY_MAX_REQUEST + 1;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, ' ', n);
    mrb_replay_request r;
    char msg[300];
    assert_int_equal(mrb_replay_parse(big, n, &r, msg, sizeof(msg)), MRB_ERR_INVALID);
    assert_string_equal(msg, "request too large (4097 bytes, at most 4096)");
    mrb_replay_request_free(&r);
    free(big);
}

static void test_end_marker(void **state)
{
    char *s = mrb_replay_end_json(1, "sensors/t1", "sensors:t1", 5, NULL);
    assert_string_equal(s, "{\"replay\":\"end\",\"status\":\"ok\",\"topic\":"
                           "\"sensors/t1\",\"stream\":\"sensors:t1\",\"count\":5}");
    free(s);
    s = mrb_replay_end_json(0, NULL, NULL, 0, "topic: missing \"x\"");
    assert_string_equal(s, "{\"replay\":\"end\",\"status\":\"error\",\"error\":"
                           "\"topic: missing \\\"x\\\"\"}");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_requests),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_error_keeps_response_topic),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_end_marker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
