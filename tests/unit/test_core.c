/* Unit tests: the bounded queue, the echo fingerprints, reconnect backoff and
 * the warning rate limiter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "mrb/backoff.h"
#include "mrb/log.h"
#include "mrb/queue.h"
#include "mrb/seen.h"

static mrb_msg *msg(const char *name, const char *payload)
{
    mrb_msg *m = mrb_msg_new(name, strlen(name), payload, strlen(payload), 1, 0);
    assert_non_null(m);
    return m;
}

static void test_queue_fifo_and_drop_oldest(void **state)
{
    mrb_queue q;
    mrb_queue_init(&q, 3, 1 << 20);
    assert_int_equal(mrb_queue_push(&q, msg("a", "1")), 0);
    assert_int_equal(mrb_queue_push(&q, msg("b", "2")), 0);
    assert_int_equal(mrb_queue_push(&q, msg("c", "3")), 0);
    assert_int_equal(mrb_queue_push(&q, msg("d", "4")), 1); /* "a" goes */
    assert_int_equal(q.count, 3);
    assert_int_equal(q.dropped, 1);
    mrb_msg *m = mrb_queue_pop(&q);
    assert_string_equal(mrb_msg_name(m), "b");
    assert_memory_equal(mrb_msg_payload(m), "2", 1);
    mrb_queue_push_front(&q, m);
    m = mrb_queue_pop(&q);
    assert_string_equal(mrb_msg_name(m), "b");
    free(m);
    assert_int_equal(mrb_queue_clear(&q), 2);
    assert_int_equal(q.bytes, 0);
    assert_null(mrb_queue_pop(&q));
}

static void test_queue_byte_cap(void **state)
{
    mrb_queue q;
    char big[1000];
    memset(big, 'x', sizeof(big));
    mrb_queue_init(&q, 100, 2500);
    for (int i = 0; i < 5; i++)
        mrb_queue_push(&q, mrb_msg_new("t", 1, big, sizeof(big), 0, 0));
    assert_true(q.bytes <= 2500);
    assert_int_equal(q.count, 2);
    assert_int_equal(q.dropped, 3);
    mrb_queue_clear(&q);
}

static void test_queue_binary_payload(void **state)
{
    const char payload[] = {'a', 0, 'b', 0, (char)0xff};
    mrb_msg *m = mrb_msg_new("t", 1, payload, sizeof(payload), 2, 1);
    assert_int_equal(m->payload_len, sizeof(payload));
    assert_memory_equal(mrb_msg_payload(m), payload, sizeof(payload));
    assert_int_equal(m->qos, 2);
    assert_int_equal(m->retain, 1);
    free(m);
}

static void test_seen_multiset_and_expiry(void **state)
{
    mrb_seen s;
    assert_int_equal(mrb_seen_init(&s, 64, 1000), MRB_OK);
    uint64_t k = mrb_seen_key("news", 4, "hi", 2);
    assert_int_not_equal(k, mrb_seen_key("news", 4, "ho", 2));
    assert_int_not_equal(mrb_seen_key("ab", 2, "c", 1), mrb_seen_key("a", 1, "bc", 2));
    mrb_seen_add(&s, k, 0);
    mrb_seen_add(&s, k, 10);
    assert_true(mrb_seen_take(&s, k, 20));
    assert_true(mrb_seen_take(&s, k, 20));
    assert_false(mrb_seen_take(&s, k, 20));
    mrb_seen_add(&s, k, 100);
    assert_false(mrb_seen_take(&s, k, 1200)); /* expired */
    mrb_seen_free(&s);
}

static void test_seen_is_bounded(void **state)
{
    mrb_seen s;
    assert_int_equal(mrb_seen_init(&s, 16, 100000), MRB_OK);
    for (uint64_t i = 0; i < 1000; i++)
        mrb_seen_add(&s, i * 0x9E3779B97F4A7C15ULL, 0);
    assert_true(s.evicted >= 1000 - 16);
    mrb_seen_free(&s);
}

static void test_backoff_grows_capped_with_jitter(void **state)
{
    mrb_backoff b;
    mrb_backoff_init(&b, 100, 5000, 42);
    int64_t max_seen = 0;
    for (int i = 0; i < 200; i++) {
        int64_t d = mrb_backoff_next(&b);
        assert_true(d >= 100 && d <= 5000);
        if (d > max_seen)
            max_seen = d;
    }
    assert_true(max_seen > 2500); /* it does grow */
    mrb_backoff_reset(&b);
    assert_true(mrb_backoff_next(&b) <= 300); /* back to min..3*min */
    /* two bridges with different seeds do not retry in lock-step */
    mrb_backoff a, c;
    mrb_backoff_init(&a, 100, 60000, 1);
    mrb_backoff_init(&c, 100, 60000, 2);
    int same = 0;
    for (int i = 0; i < 20; i++)
        same += mrb_backoff_next(&a) == mrb_backoff_next(&c);
    assert_true(same < 5);
}

static void test_ratelimit(void **state)
{
    mrb_ratelimit rl = {0};
    uint64_t sup = 99;
    assert_true(mrb_ratelimit_allow(&rl, 1000, &sup));
    assert_int_equal(sup, 0);
    assert_false(mrb_ratelimit_allow(&rl, 2000, &sup));
    assert_false(mrb_ratelimit_allow(&rl, 3000, &sup));
    assert_true(mrb_ratelimit_allow(&rl, 1000 + MRB_RATELIMIT_MS, &sup));
    assert_int_equal(sup, 2);
}

static void test_log_escape(void **state)
{
    char out[MRB_LOG_ESCAPE_MAX];
    assert_string_equal(mrb_log_escape("user:a", 6, out, sizeof(out)), "user:a");
    /* a forged log line stays on one line */
    assert_string_equal(mrb_log_escape("a\n2026 error x\\\xff", 16, out, sizeof(out)),
                        "a\\x0a2026 error x\\x5c\\xff");
    char big[1000];
    memset(big, 'z', sizeof(big));
    mrb_log_escape(big, sizeof(big), out, 20);
    assert_int_equal(strlen(out), 19);
    assert_string_equal(out + 16, "...");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_fifo_and_drop_oldest),
        cmocka_unit_test(test_queue_byte_cap),
        cmocka_unit_test(test_queue_binary_payload),
        cmocka_unit_test(test_seen_multiset_and_expiry),
        cmocka_unit_test(test_seen_is_bounded),
        cmocka_unit_test(test_backoff_grows_capped_with_jitter),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test(test_log_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
