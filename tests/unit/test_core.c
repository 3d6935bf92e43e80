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
#include "mrb/rerror.h"
#include "mrb/seen.h"
#include "../../src/echo.h"

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

static void test_seen_multiset(void **state)
{
    mrb_seen s;
    mrb_seen_init(&s, 64);
    uint64_t k = mrb_seen_key("news", 4, "hi", 2);
    assert_int_not_equal(k, mrb_seen_key("news", 4, "ho", 2));
    assert_int_not_equal(mrb_seen_key("ab", 2, "c", 1), mrb_seen_key("a", 1, "bc", 2));
    assert_int_equal(mrb_seen_add(&s, k, 0, INT64_MAX), MRB_OK);
    assert_int_equal(mrb_seen_add(&s, k, 0, INT64_MAX), MRB_OK);
    assert_int_equal(s.copies, 2);
    assert_int_equal(s.used, 1);
    assert_true(mrb_seen_take(&s, k, 20));
    assert_true(mrb_seen_take(&s, k, 20));
    assert_false(mrb_seen_take(&s, k, 20));
    assert_int_equal(s.copies, 0);
    assert_int_equal(s.peak, 2);
    mrb_seen_free(&s);
}

/* A certain copy waits for its message however long it takes, and however
 * many others come and go meanwhile (the 5 s TTL and the 4096 entries of
 * the old table are both passed here). */
static void test_seen_certain_never_expires_or_is_evicted(void **state)
{
    mrb_seen s;
    mrb_seen_init(&s, 20000);
    for (uint64_t i = 0; i < 10000; i++)
        assert_int_equal(mrb_seen_add(&s, i * 0x9E3779B97F4A7C15ULL, 0, INT64_MAX),
                         MRB_OK);
    assert_int_equal(mrb_seen_expire(&s, INT64_MAX - 1), 0);
    for (uint64_t i = 0; i < 10000; i++)
        assert_true(mrb_seen_take(&s, i * 0x9E3779B97F4A7C15ULL, 1000000000));
    assert_int_equal(s.copies, 0);
    assert_int_equal(s.evicted + s.expired + s.cleared, 0);
    mrb_seen_shrink(&s);
    assert_int_equal(s.slots, MRB_SEEN_MIN_SLOTS);
    mrb_seen_free(&s);
}

static void test_seen_full_refuses_then_evicts_counted(void **state)
{
    mrb_seen s;
    mrb_seen_init(&s, 100);
    for (uint64_t i = 1; i <= 100; i++)
        assert_int_equal(mrb_seen_add(&s, i, i == 7, i == 7 ? 50 : INT64_MAX), MRB_OK);
    assert_int_equal(mrb_seen_add(&s, 1000, 0, INT64_MAX), MRB_ERR_FULL);
    assert_int_equal(s.copies, 100);
    /* the uncertain one goes first */
    assert_int_equal(mrb_seen_evict(&s), 1);
    assert_int_equal(s.evicted, 1);
    assert_false(mrb_seen_take(&s, 7, 0));
    assert_int_equal(mrb_seen_add(&s, 1000, 0, INT64_MAX), MRB_OK);
    assert_true(mrb_seen_take(&s, 1000, 0));
    mrb_seen_free(&s);
}

static void test_seen_uncertain_expire_counted_and_certain_first(void **state)
{
    mrb_seen s;
    mrb_seen_init(&s, 64);
    uint64_t k = 42;
    assert_int_equal(mrb_seen_add(&s, k, 1, INT64_MAX), MRB_OK);
    /* no expiry yet: kept */
    assert_int_equal(mrb_seen_expire(&s, 1000000), 0);
    mrb_seen_start_expiry(&s, 100);
    assert_int_equal(mrb_seen_add(&s, k, 0, INT64_MAX), MRB_OK);
    assert_int_equal(s.uncertain, 1);
    assert_true(mrb_seen_take(&s, k, 50)); /* the certain one */
    assert_int_equal(s.uncertain, 1);
    assert_int_equal(s.copies, 1);
    assert_false(mrb_seen_take(&s, k, 100)); /* expired: removed, counted */
    assert_int_equal(s.expired, 1);
    assert_int_equal(s.copies, 0);
    /* the sweep counts too */
    assert_int_equal(mrb_seen_add(&s, 1, 1, 10), MRB_OK);
    assert_int_equal(mrb_seen_add(&s, 2, 1, 30), MRB_OK);
    assert_int_equal(mrb_seen_expire(&s, 20), 1);
    assert_int_equal(s.expired, 2);
    assert_true(mrb_seen_take(&s, 2, 20));
    mrb_seen_free(&s);
}

static void test_seen_mark_uncertain_and_clear(void **state)
{
    mrb_seen s;
    mrb_seen_init(&s, 64);
    assert_int_equal(mrb_seen_add(&s, 5, 0, INT64_MAX), MRB_OK);
    assert_int_equal(mrb_seen_add(&s, 5, 1, 40), MRB_OK);
    assert_int_equal(mrb_seen_add(&s, 6, 0, INT64_MAX), MRB_OK);
    mrb_seen_mark_uncertain(&s);
    assert_int_equal(s.uncertain, 3);
    assert_int_equal(s.used, 2); /* the two copies of 5 are one entry */
    mrb_seen_start_expiry(&s, 100);
    assert_int_equal(mrb_seen_expire(&s, 99), 0);
    assert_true(mrb_seen_take(&s, 6, 99));
    assert_int_equal(mrb_seen_expire(&s, 100), 2);
    assert_int_equal(s.expired, 2);
    assert_int_equal(mrb_seen_add(&s, 8, 0, INT64_MAX), MRB_OK);
    assert_int_equal(mrb_seen_add(&s, 9, 1, INT64_MAX), MRB_OK);
    assert_int_equal(mrb_seen_clear(&s), 2);
    assert_int_equal(s.cleared, 2);
    assert_false(mrb_seen_take(&s, 8, 0));
    assert_int_equal(mrb_seen_remove(&s, 9, 1), 0);
    mrb_seen_free(&s);
}

/* Adds and takes in a random order over keys that all probe from the same
 * few slots, against a plain count per key: linear probing with
 * backward-shift deletion must find every copy and nothing else. */
static void test_seen_matches_a_reference_under_collisions(void **state)
{
    enum { KEYS = 300, OPS = 60000 };
    static unsigned ref[KEYS];
    mrb_seen s;
    mrb_seen_init(&s, 100000);
    memset(ref, 0, sizeof(ref));
    uint64_t x = 88172645463325252ULL;
    for (int op = 0; op < OPS; op++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        unsigned k = (unsigned)(x % KEYS);
        /* the same home slot for many keys: high bits vary, the folded low
         * bits repeat every 8 keys */
        uint64_t key = ((uint64_t)k << 32) | (uint64_t)(k % 8 ^ k);
        if ((x >> 20) % 3 != 0) {
            assert_int_equal(mrb_seen_add(&s, key, 0, INT64_MAX), MRB_OK);
            ref[k]++;
        } else {
            assert_int_equal(mrb_seen_take(&s, key, 0), ref[k] > 0);
            if (ref[k])
                ref[k]--;
        }
        if (op % 10007 == 0)
            mrb_seen_shrink(&s);
    }
    size_t total = 0;
    for (unsigned k = 0; k < KEYS; k++)
        total += ref[k];
    assert_int_equal(s.copies, total);
    for (unsigned k = 0; k < KEYS; k++) {
        uint64_t key = ((uint64_t)k << 32) | (uint64_t)(k % 8 ^ k);
        for (unsigned i = 0; i < ref[k]; i++)
            assert_true(mrb_seen_take(&s, key, 0));
        assert_false(mrb_seen_take(&s, key, 0));
    }
    assert_int_equal(s.copies, 0);
    assert_int_equal(s.used, 0);
    mrb_seen_free(&s);
}

static void test_redis_error_kinds(void **state)
{
    static const char *const transient[] = {
        "OOM command not allowed when used memory > 'maxmemory'.",
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script.",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable",
        "READONLY You can't write against a read only replica.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
    };
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
        assert_int_equal(mrb_rerror_classify(transient[i]), MRB_RERR_TRANSIENT);
    assert_int_equal(mrb_rerror_classify("WRONGTYPE Operation against a key holding "
                                         "the wrong kind of value"),
                     MRB_RERR_PERMANENT);
    assert_int_equal(mrb_rerror_classify("BUSYKEY Target key name already exists."),
                     MRB_RERR_PERMANENT);
    assert_int_equal(mrb_rerror_classify("OOMX"), MRB_RERR_PERMANENT);
    assert_int_equal(mrb_rerror_classify("ERR unknown command"), MRB_RERR_PERMANENT);
    assert_int_equal(mrb_rerror_classify(NULL), MRB_RERR_PERMANENT);
    assert_int_equal(mrb_rerror_classify("NOPERM this user has no permissions to run "
                                         "the 'xadd' command"),
                     MRB_RERR_REFUSAL);
    assert_int_equal(mrb_rerror_classify("WRONGPASS invalid username-password pair"),
                     MRB_RERR_REFUSAL);
    assert_true(mrb_redis_is_refusal("ERR invalid password"));
    assert_false(mrb_redis_is_refusal("OOM command not allowed"));
}

/* The echo guard's phases (echo.h): nothing noted while the subscriber is
 * down, uncertain while it subscribes (expiring from its confirmation),
 * certain once confirmed, all cleared (counted) when it is lost; the fence
 * waits for the PUBLISHes appended before it. */
static void test_echo_phases_and_fence(void **state)
{
    mrb_echo *e = mrb_echo_new(10);
    mrb_echo_counters c;
    assert_non_null(e);
    /* down: not noted, but counted for the fence */
    assert_int_equal(mrb_echo_note_redis(e, 1, 1, 0), MRB_ECHO_NOT_NEEDED);
    assert_int_equal(mrb_echo_note_redis(e, 2, 0, 0), MRB_ECHO_NOT_NEEDED);
    mrb_echo_redis_fence(e);
    assert_false(mrb_echo_redis_fenced(e));
    mrb_echo_redis_answered(e, 1);
    assert_false(mrb_echo_redis_fenced(e));
    mrb_echo_redis_answered(e, 1);
    assert_true(mrb_echo_redis_fenced(e));
    /* subscribing: uncertain */
    assert_int_equal(mrb_echo_note_redis(e, 3, 1, 0), MRB_ECHO_NOTED_UNCERTAIN);
    assert_true(mrb_echo_redis_fenced(e)); /* later ones are not waited for */
    mrb_echo_redis_up(e, 1000);
    /* up: certain; the uncertain one expires 5 s after the confirmation */
    assert_int_equal(mrb_echo_note_redis(e, 4, 1, 0), MRB_ECHO_NOTED);
    assert_int_equal(mrb_echo_tick(e, 1000 + MRB_ECHO_TTL_MS - 1) <= 1000 + MRB_ECHO_TTL_MS, 1);
    assert_true(mrb_echo_take_redis(e, 3, 1000 + MRB_ECHO_TTL_MS - 1));
    assert_int_equal(mrb_echo_note_redis(e, 3, 1, 0), MRB_ECHO_NOTED);
    mrb_echo_redis_down(e);
    mrb_echo_redis_fence(e);
    assert_int_equal(mrb_echo_note_redis(e, 5, 1, 0), MRB_ECHO_NOTED_UNCERTAIN);
    mrb_echo_redis_up(e, 2000);
    mrb_echo_tick(e, 2000 + MRB_ECHO_TTL_MS);
    mrb_echo_get_counters(e, &c);
    assert_int_equal(c.cleared, 2); /* 4 and 3, with the lost connection */
    assert_int_equal(c.expired, 1); /* 5 */
    assert_int_equal(c.held_now, 0);
    /* full: back-pressure, not eviction; force goes into the margin */
    for (uint64_t k = 100; k < 100 + MRB_ECHO_MIN; k++)
        assert_int_equal(mrb_echo_note_redis(e, k, 1, 0), MRB_ECHO_NOTED);
    assert_false(mrb_echo_redis_room_for(e, 1));
    assert_int_equal(mrb_echo_note_redis(e, 7, 1, 0), MRB_ECHO_FULL);
    assert_int_equal(mrb_echo_note_redis(e, 7, 1, 1), MRB_ECHO_NOTED);
    assert_true(mrb_echo_take_redis(e, 100, 3000));
    assert_true(mrb_echo_take_redis(e, 7, 3000));
    mrb_echo_get_counters(e, &c);
    assert_int_equal(c.evicted, 0);
    assert_int_equal(c.peak, MRB_ECHO_MIN + 1);
    /* MQTT side: uncertain after a lost connection, from the next connect */
    mrb_echo_mqtt_up(e, 0);
    assert_int_equal(mrb_echo_note_mqtt(e, 9), MRB_ECHO_NOTED);
    mrb_echo_mqtt_down(e);
    mrb_echo_mqtt_up(e, 10000);
    assert_true(mrb_echo_take_mqtt(e, 9, 10000 + MRB_ECHO_TTL_MS - 1));
    mrb_echo_free(e);
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
        cmocka_unit_test(test_seen_multiset),
        cmocka_unit_test(test_seen_certain_never_expires_or_is_evicted),
        cmocka_unit_test(test_seen_full_refuses_then_evicts_counted),
        cmocka_unit_test(test_seen_uncertain_expire_counted_and_certain_first),
        cmocka_unit_test(test_seen_mark_uncertain_and_clear),
        cmocka_unit_test(test_seen_matches_a_reference_under_collisions),
        cmocka_unit_test(test_redis_error_kinds),
        cmocka_unit_test(test_echo_phases_and_fence),
        cmocka_unit_test(test_backoff_grows_capped_with_jitter),
        cmocka_unit_test(test_ratelimit),
        cmocka_unit_test(test_log_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
