/* Unit tests: the latency histogram, the per-route counter table and the
 * stats JSON document; the queue's pop-if-full that lets callers count drops
 * per route. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mrb/queue.h"
#include "mrb/route.h"
#include "mrb/stats.h"

static void test_bucket_edges(void **state)
{
    assert_int_equal(mrb_lat_bucket(0), 0);
    assert_int_equal(mrb_lat_bucket(1), 1);
    /* then [2^e, 1.5*2^e) and [1.5*2^e, 2^(e+1)) */
    assert_int_equal(mrb_lat_bucket(2), 2);
    assert_int_equal(mrb_lat_bucket(3), 3);
    assert_int_equal(mrb_lat_bucket(4), 4);
    assert_int_equal(mrb_lat_bucket(5), 4);
    assert_int_equal(mrb_lat_bucket(6), 5);
    assert_int_equal(mrb_lat_bucket(7), 5);
    assert_int_equal(mrb_lat_bucket(1000), mrb_lat_bucket(1023));
    assert_int_equal(mrb_lat_bucket(UINT64_MAX), MRB_LAT_BUCKETS - 1);
    /* every value lies in its bucket, at or below the bucket's max and
     * above the previous bucket's */
    for (uint64_t us = 0; us < 100000; us += 1 + us / 7) {
        unsigned i = mrb_lat_bucket(us);
        assert_true(us <= mrb_lat_bucket_max(i));
        if (i > 0)
            assert_true(us > mrb_lat_bucket_max(i - 1));
    }
    assert_int_equal(mrb_lat_bucket_max(5), 7);
    assert_true(mrb_lat_bucket_max(MRB_LAT_BUCKETS - 1) == UINT64_MAX);
}

static void test_quantiles_and_take(void **state)
{
    static mrb_lat_hist h; /* zeroed */
    uint64_t acc[MRB_LAT_BUCKETS] = {0};
    assert_int_equal(mrb_lat_quantile(acc, 0.5), 0); /* empty */
    for (int i = 0; i < 98; i++)
        mrb_lat_add(&h, 100);  /* bucket [96, 127] */
    mrb_lat_add(&h, 5000);     /* [4096, 6143] */
    mrb_lat_add(&h, 900000);
    mrb_lat_take(&h, acc);
    assert_int_equal(mrb_lat_quantile(acc, 0.5), 127);
    assert_int_equal(mrb_lat_quantile(acc, 0.98), 127);
    assert_int_equal(mrb_lat_quantile(acc, 0.99), 6143);
    assert_int_equal(mrb_lat_quantile(acc, 1.0), mrb_lat_bucket_max(mrb_lat_bucket(900000)));
    /* taken: the next interval starts empty */
    uint64_t again[MRB_LAT_BUCKETS] = {0};
    mrb_lat_take(&h, again);
    assert_int_equal(mrb_lat_quantile(again, 0.5), 0);
}

static void routes_of(mrb_routes *t, mrb_route *r, const char *const *specs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_int_equal(mrb_route_parse_spec(specs[i], &r[i], NULL, 0), MRB_OK);
    assert_int_equal(mrb_routes_build(t, r, n), MRB_OK);
}

static void test_table_sub_routes(void **state)
{
    static const char *const specs[] = {"a/+ < a:*", "a/+ > x:*", "b/# <> b:*",
                                        "c <> cc"};
    mrb_route r[4];
    mrb_routes t;
    mrb_stats_table st;
    routes_of(&t, r, specs, 4);
    assert_int_equal(mrb_stats_table_alloc(&st, &t), MRB_OK);
    assert_int_equal(st.n, 4);
    /* MQTT subscriptions: a/+ (first carried MQTT->Redis by route 1), b/#, c */
    for (size_t i = 0; i < t.n_mqtt_sub; i++) {
        size_t want = strcmp(t.mqtt_sub[i].name, "a/+") == 0 ? 1
                    : strcmp(t.mqtt_sub[i].name, "b/#") == 0 ? 2 : 3;
        assert_int_equal(st.mqtt_sub_route[i], want);
    }
    /* Redis subscriptions: a:* (route 0: route 1 does not carry Redis->MQTT),
     * b:*, cc */
    assert_int_equal(t.n_redis_sub, 3);
    for (size_t i = 0; i < t.n_redis_sub; i++)
        assert_int_equal(st.redis_sub_route[i],
                         strcmp(t.redis_sub[i].name, "a:*") == 0 ? 0
                         : strcmp(t.redis_sub[i].name, "b:*") == 0 ? 2 : 3);
    mrb_stats_rate_limited(&st, 2, 1);
    mrb_stats_rate_limited(&st, 2, 0);
    mrb_stats_rate_limited(&st, 99, 0); /* no such route: ignored */
    assert_int_equal(atomic_load(&st.r[2].m2r.dropped_rate_limited), 1);
    assert_int_equal(atomic_load(&st.r[2].r2m.dropped_rate_limited), 1);
    mrb_stats_table_free(&st);
    mrb_routes_free(&t);
    for (size_t i = 0; i < 4; i++)
        mrb_route_free(&r[i]);
}

static double num(const cJSON *o, const char *path)
{
    char buf[200];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *v = o;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, "."))
        v = cJSON_GetObjectItemCaseSensitive(v, tok);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static void test_json_document(void **state)
{
    static const char *const specs[] = {"a/+ > a:* qos=0", "b/+ <> b:*"};
    mrb_route r[2];
    mrb_routes t;
    mrb_stats_table st;
    routes_of(&t, r, specs, 2);
    assert_int_equal(mrb_stats_table_alloc(&st, &t), MRB_OK);
    for (int i = 0; i < 10; i++) {
        mrb_stats_count(&st.r[0].m2r.in, 1);
        mrb_stats_count(&st.r[0].m2r.bytes_in, 5);
        mrb_stats_count(&st.r[0].m2r.out, 1);
        mrb_lat_add(&st.r[0].m2r.lat, 300);
    }
    mrb_stats_count(&st.r[1].r2m.dropped_unmappable, 1);
    mrb_lat_add(&st.r[1].r2m.lat, 20);
    mrb_route_snap snap[2];
    uint64_t m2r[MRB_LAT_BUCKETS] = {0}, r2m[MRB_LAT_BUCKETS] = {0};
    mrb_stats_read(&st, &t, snap, 1, m2r, r2m);
    mrb_stat_kv kv[] = {{"mqtt_in", 10}, {"dropped_unmappable", 1}};
    mrb_stats_snap s = {.id = "b1", .version = "9.9", .status = "running",
                        .now_unix = 1000, .started_unix = 900, .uptime_s = 100,
                        .interval_s = 60,
                        .mqtt = {"mqtt://h:1883", 1, 2, ""},
                        .redis = {"redis://:***@h:6379", 0, 0, "refused"},
                        .totals = kv, .n_totals = 2,
                        .lat_m2r = mrb_lat_summarize(m2r),
                        .lat_r2m = mrb_lat_summarize(r2m),
                        .routes = snap, .n_routes = 2};
    char *text = mrb_stats_json(&s);
    assert_non_null(text);
    cJSON *d = cJSON_Parse(text);
    assert_non_null(d);
    assert_string_equal(cJSON_GetObjectItem(d, "id")->valuestring, "b1");
    assert_string_equal(cJSON_GetObjectItem(d, "status")->valuestring, "running");
    assert_true(num(d, "uptime_s") == 100 && num(d, "interval_s") == 60);
    assert_true(num(d, "totals.mqtt_in") == 10);
    assert_true(num(d, "mqtt.reconnects") == 2);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "redis"),
                                                  "connected")));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "redis"), "url")
                            ->valuestring, "redis://:***@h:6379");
    assert_true(num(d, "latency.mqtt_to_redis.count") == 10);
    assert_true(num(d, "latency.mqtt_to_redis.p50_us") == 383); /* [256, 383] */
    assert_true(num(d, "latency.redis_to_mqtt.p99_us") == 23);  /* [16, 23] */
    cJSON *routes = cJSON_GetObjectItem(d, "routes");
    assert_int_equal(cJSON_GetArraySize(routes), 2);
    cJSON *r0 = cJSON_GetArrayItem(routes, 0), *r1 = cJSON_GetArrayItem(routes, 1);
    assert_string_equal(cJSON_GetObjectItem(r0, "route")->valuestring, "a/+ > a:* qos=0");
    assert_string_equal(cJSON_GetObjectItem(r0, "direction")->valuestring,
                        "mqtt_to_redis");
    assert_string_equal(cJSON_GetObjectItem(r1, "mode")->valuestring, "pubsub");
    assert_null(cJSON_GetObjectItem(r0, "redis_to_mqtt"));
    assert_true(num(r0, "mqtt_to_redis.in") == 10 && num(r0, "mqtt_to_redis.bytes_in") == 50);
    assert_true(num(r0, "mqtt_to_redis.dropped.rate_limited") == 0);
    assert_true(num(r1, "redis_to_mqtt.dropped.unmappable") == 1);
    assert_true(num(r1, "mqtt_to_redis.latency.count") == 0);
    assert_true(num(r0, "mqtt_to_redis.latency.count") == 10);
    assert_true(num(r0, "mqtt_to_redis.latency.p99_us") == 383);
    assert_true(num(r1, "redis_to_mqtt.latency.p50_us") == 23);
    cJSON_Delete(d);
    free(text);
    /* the interval's latencies were taken */
    mrb_stats_read(&st, &t, snap, 0, NULL, NULL);
    assert_int_equal(snap[0].m2r.lat.count, 0);
    assert_int_equal(snap[0].m2r.in, 10); /* counters are not reset */
    mrb_stats_table_free(&st);
    mrb_routes_free(&t);
    for (size_t i = 0; i < 2; i++)
        mrb_route_free(&r[i]);
}

static void test_carry_by_route_text(void **state)
{
    static const char *const old_specs[] = {"a/+ > a:*", "b/+ <> b:*"};
    static const char *const new_specs[] = {"c <> c", "b/+ <> b:*"};
    mrb_route ro[2], rn[2];
    mrb_routes to, tn;
    mrb_stats_table so, sn;
    routes_of(&to, ro, old_specs, 2);
    routes_of(&tn, rn, new_specs, 2);
    assert_int_equal(mrb_stats_table_alloc(&so, &to), MRB_OK);
    assert_int_equal(mrb_stats_table_alloc(&sn, &tn), MRB_OK);
    mrb_stats_count(&so.r[0].m2r.in, 5);   /* a/+: gone */
    mrb_stats_count(&so.r[1].r2m.out, 7);  /* b/+: stays, now index 1 */
    mrb_lat_add(&so.r[1].r2m.lat, 40);
    mrb_stats_table_carry(&sn, &tn, &so, &to);
    assert_int_equal(atomic_load(&sn.r[0].m2r.in), 0);
    assert_int_equal(atomic_load(&sn.r[1].r2m.out), 7);
    assert_int_equal(atomic_load(&sn.r[1].m2r.in), 0);
    assert_int_equal(atomic_load(&sn.r[1].r2m.lat.n[mrb_lat_bucket(40)]), 1);
    mrb_stats_table_free(&so);
    mrb_stats_table_free(&sn);
    mrb_routes_free(&to);
    mrb_routes_free(&tn);
    for (size_t i = 0; i < 2; i++) {
        mrb_route_free(&ro[i]);
        mrb_route_free(&rn[i]);
    }
}

static void test_queue_pop_if_full(void **state)
{
    mrb_queue q;
    mrb_queue_init(&q, 2, 1 << 20);
    mrb_msg *a = mrb_msg_new("a", 1, "1", 1, 0, 0), *b = mrb_msg_new("b", 1, "2", 1, 0, 0);
    mrb_msg *c = mrb_msg_new("c", 1, "3", 1, 0, 0);
    assert_null(mrb_queue_pop_if_full(&q, mrb_msg_size(a)));
    mrb_queue_push(&q, a);
    mrb_queue_push(&q, b);
    mrb_msg *old = mrb_queue_pop_if_full(&q, mrb_msg_size(c));
    assert_ptr_equal(old, a);
    free(old);
    assert_null(mrb_queue_pop_if_full(&q, mrb_msg_size(c)));
    assert_int_equal(mrb_queue_push(&q, c), 0);
    assert_int_equal(q.dropped, 1);
    mrb_queue_clear(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_edges),
        cmocka_unit_test(test_quantiles_and_take),
        cmocka_unit_test(test_table_sub_routes),
        cmocka_unit_test(test_json_document),
        cmocka_unit_test(test_carry_by_route_text),
        cmocka_unit_test(test_queue_pop_if_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
