/* Unit tests: route checking, matching and mapping in both directions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mrb/route.h"
#include "route_spec.h"

/* Map topic through spec; expect result (NULL = no mapping). */
static void to_redis(const char *spec, const char *topic, const char *expect)
{
    mrb_route r = mk(spec);
    char out[256];
    size_t n = 0;
    mrb_err err = mrb_route_map_to_redis(&r, topic, strlen(topic), out, sizeof(out), &n);
    if (expect) {
        assert_int_equal(err, MRB_OK);
        assert_int_equal(n, strlen(expect));
        assert_memory_equal(out, expect, n);
    } else {
        assert_int_not_equal(err, MRB_OK);
    }
    mrb_route_free(&r);
}

static void to_mqtt(const char *spec, const char *channel, size_t clen,
                    const char *expect)
{
    mrb_route r = mk(spec);
    char out[256];
    size_t n = 0;
    mrb_err err = mrb_route_map_to_mqtt(&r, channel, clen, out, sizeof(out), &n);
    if (expect) {
        if (err != MRB_OK)
            fail_msg("'%s' via '%s': %d", channel, spec, err);
        assert_int_equal(n, strlen(expect));
        assert_memory_equal(out, expect, n);
    } else {
        assert_int_not_equal(err, MRB_OK);
    }
    mrb_route_free(&r);
}

static void test_plus_maps_verbatim(void **state)
{
    to_redis("user/+ <> user:*", "user/alice", "user:alice");
    to_redis("user/+ <> user:*", "user/a:b", "user:a:b");
    to_redis("user/+ <> user:*", "user/a/b", NULL);
    to_redis("user/+ <> user:*", "users/a", NULL);
    to_mqtt("user/+ <> user:*", "user:alice", 10, "user/alice");
    to_mqtt("user/+ <> user:*", "user:a:b", 8, "user/a:b");
    /* matches the pattern but not the filter: not forwarded */
    to_mqtt("user/+ <> user:*", "user:a/b", 8, NULL);
    to_mqtt("user/+ <> user:*", "users:a", 7, NULL);
}

static void test_hash_translates_separators(void **state)
{
    to_redis("sensors/# <> sensors:*", "sensors/a/b", "sensors:a:b");
    to_mqtt("sensors/# <> sensors:*", "sensors:a:b", 11, "sensors/a/b");
    /* '#' matching the parent level captures nothing a '*' could carry */
    to_redis("sensors/# <> sensors:*", "sensors", NULL);
    to_redis("# <> all:*", "a/b/c", "all:a:b:c");
    to_mqtt("# <> all:*", "all:x", 5, "x");
    /* wildcards at the first level never match $-topics */
    to_redis("# <> all:*", "$SYS/broker", NULL);
}

static void test_literals_differ_per_side(void **state)
{
    to_redis("user/+/inbox <> notify:*:in", "user/bob/inbox", "notify:bob:in");
    to_mqtt("user/+/inbox <> notify:*:in", "notify:bob:in", 13, "user/bob/inbox");
    to_redis("news <> news", "news", "news");
    to_redis("news <> news", "news/x", NULL);
    to_mqtt("news <> broadcast", "broadcast", 9, "news");
}

static void test_multiple_wildcards(void **state)
{
    to_redis("a/+/b/# <> a:*:b:*", "a/x/b/y/z", "a:x:b:y:z");
    to_mqtt("a/+/b/# <> a:*:b:*", "a:x:b:y:z", 9, "a/x/b/y/z");
    /* the first split that gives a valid topic wins, shortest first */
    to_mqtt("+/+ <> *:*", "x:y:z", 5, "x/y:z");
    /* every split puts a '/' into a capture: tried, then refused */
    to_mqtt("+/x/+ <> *:x:*", "a:x:b/c:x:d", 11, NULL);
    /* no split can make a publishable topic of a $-name */
    to_mqtt("+/+ <> *:*", "$a:b:c", 6, NULL);
}

static void test_bad_topics_from_redis(void **state)
{
    to_mqtt("user/+ <> user:*", "user:a+b", 8, NULL);
    to_mqtt("user/+ <> user:*", "user:a#", 7, NULL);
    to_mqtt("user/+ <> user:*", "user:a\0b", 8, NULL);
    to_mqtt("user/+ <> user:*", "user:\xff", 6, NULL);
    to_mqtt("user/+ <> user:*", "user:a\x01", 7, NULL);
    to_mqtt("# <> *", "$SYS", 4, NULL);
    /* valid UTF-8 passes */
    to_mqtt("user/+ <> user:*", "user:J\xc3\xbcrgen", 12, "user/J\xc3\xbcrgen");
}

static void test_hostile_channel_is_bounded(void **state)
{
    /* many candidate splits, none valid: must give up, not spin */
    static char ch[20000];
    memset(ch, ':', sizeof(ch));
    memcpy(ch, "a", 1);
    ch[sizeof(ch) - 1] = '/';
    to_mqtt("+/+/+/+ <> *:*:*:*", ch, sizeof(ch), NULL);
}

static void test_bad_specs(void **state)
{
    check_bad("user/+ <> user", "MQTT filter \"user/+\" has 1 wildcard but Redis "
              "pattern \"user\" has 0 '*': the k-th wildcard maps to the k-th "
              "'*', so the counts must agree");
    check_bad("user/+ <> user:?", "Redis pattern \"user:?\" contains '?': only "
              "'*' is supported as a wildcard");
    check_bad("user/+ <> user:[ab]", "Redis pattern \"user:[ab]\" contains '[': "
              "only '*' is supported as a wildcard");
    check_bad("a/b+ <> x", "MQTT filter \"a/b+\" is not a valid topic filter "
              "('+' and '#' must fill a whole level, '#' only at the end)");
    check_bad("#/a <> *:a", "MQTT filter \"#/a\" is not a valid topic filter "
              "('+' and '#' must fill a whole level, '#' only at the end)");
    check_bad("+/+ <> a:**", "Redis pattern \"a:**\" has two adjacent '*': the "
              "split between them would be ambiguous");
    check_bad("a <=> a", "unknown arrow \"<=>\" (allowed: <> both ways, > MQTT to "
              "Redis, < Redis to MQTT)");
    check_bad("a > a qos=3", "qos 3 is out of range (allowed: 0, 1, 2)");
    check_bad("a > a fast", "unknown option \"fast\" (allowed: qos=0, qos=1, "
              "qos=2, retain, stream, maxlen=N, store=hash, hash=NAME, "
              "envelope=json, envelope=none, unwrap, rate=N, burst=N)");
    check_bad("a", "expected 'MQTT_FILTER ARROW REDIS_PATTERN [qos=N] [retain] "
              "[stream] [maxlen=N] [hash=NAME] [envelope=json] [unwrap] "
              "[rate=N] [burst=N]' with ARROW one of <>, >, <");
}

static void test_spec_options(void **state)
{
    mrb_route r = mk("prices/+ < stock:* qos=0 retain");
    assert_int_equal(r.dir, MRB_DIR_REDIS_TO_MQTT);
    assert_int_equal(r.qos, 0);
    assert_int_equal(r.retain, 1);
    char buf[128];
    mrb_route_format(&r, buf, sizeof(buf));
    assert_string_equal(buf, "prices/+ < stock:* qos=0 retain");
    mrb_route_free(&r);
}

static void test_matchers(void **state)
{
    assert_true(mrb_filter_matches("a/+/c", "a/b/c", 5));
    assert_true(mrb_filter_matches("a/#", "a", 1));
    assert_true(mrb_filter_matches("+", "", 0));
    assert_false(mrb_filter_matches("a/+", "a/b/c", 5));
    assert_false(mrb_filter_matches("+/x", "$a/x", 4));
    assert_true(mrb_glob_matches("user:*", "user:", 5));
    assert_true(mrb_glob_matches("*:x:*", "a:x:b:x:c", 9));
    assert_false(mrb_glob_matches("user:*", "use", 3));
    assert_true(mrb_glob_matches("news", "news", 4));
    assert_false(mrb_glob_matches("news", "news2", 5));
}

static mrb_routes table(const char **specs, size_t n)
{
    mrb_route r[8];
    mrb_routes t;
    for (size_t i = 0; i < n; i++)
        r[i] = mk(specs[i]);
    assert_int_equal(mrb_routes_build(&t, r, n), MRB_OK);
    for (size_t i = 0; i < n; i++)
        mrb_route_free(&r[i]);
    return t;
}

static void test_mqtt_is_copy(void **state)
{
    (void)state;
    const char *a[] = {"a/# > a:*", "a/+ > b:*", "c/+ > c:*"};
    mrb_routes t = table(a, 3);
    unsigned hash = t.mqtt_sub[0].id, plus = t.mqtt_sub[1].id, c = t.mqtt_sub[2].id;
    unsigned both[2] = {plus, hash}, gone[1] = {hash ^ 0x5a5a5};
    /* a/b matches a/# (canonical: first) and a/+ */
    assert_int_equal(mrb_routes_mqtt_is_copy(&t, "a/b", 3, &hash, 1), 0);
    assert_int_equal(mrb_routes_mqtt_is_copy(&t, "a/b", 3, &plus, 1), 1);
    assert_int_equal(mrb_routes_mqtt_is_copy(&t, "a/b", 3, both, 2), 0);
    /* a copy only by a filter no longer held is forwarded, not dropped */
    assert_int_equal(mrb_routes_mqtt_is_copy(&t, "a/b", 3, gone, 1), 0);
    /* an id of a filter that does not match this topic says nothing */
    assert_int_equal(mrb_routes_mqtt_is_copy(&t, "a/b/c", 5, &c, 1), 0);
    assert_int_equal(mrb_routes_mqtt_is_copy(&t, "a/b/c", 5, &hash, 1), 0);
    mrb_routes_free(&t);
}

/* A reload keeps the subscriptions it already has first, in their order and
 * with their ids; new ones follow with new ids. */
static void test_table_reload_order(void **state)
{
    (void)state;
    const char *a[] = {"user/+ <> user:*", "news <> news", "cmd/+ <> cmd:*"};
    const char *b[] = {"alerts <> alerts", "cmd/+ <> cmd:*", "user/+ <> user:*",
                       "prices/+ <> prices:*"};
    mrb_routes old = table(a, 3);
    assert_int_equal(old.n_mqtt_sub, 3);
    assert_string_equal(old.redis_sub[0].name, "news"); /* exact first */
    unsigned id_user = old.mqtt_sub[0].id, id_cmd = old.mqtt_sub[2].id;
    assert_true(id_user >= 1 && id_user < 268435455u);
    assert_true(id_cmd != id_user && id_cmd != old.mqtt_sub[1].id);

    mrb_route r[4];
    mrb_routes t;
    for (size_t i = 0; i < 4; i++)
        r[i] = mk(b[i]);
    assert_int_equal(mrb_routes_build_from(&t, r, 4, &old), MRB_OK);
    /* the same routes built fresh (a restart) give each filter the same id */
    mrb_routes fresh;
    assert_int_equal(mrb_routes_build(&fresh, r, 4), MRB_OK);
    for (size_t i = 0; i < 4; i++)
        mrb_route_free(&r[i]);
    /* kept: user/+, cmd/+ in the old order with their ids; then alerts,
     * prices/+ (fresh; "news" is gone) */
    assert_int_equal(t.n_mqtt_sub, 4);
    assert_string_equal(t.mqtt_sub[0].name, "user/+");
    assert_int_equal(t.mqtt_sub[0].id, id_user);
    assert_false(t.mqtt_sub[0].fresh);
    assert_string_equal(t.mqtt_sub[1].name, "cmd/+");
    assert_int_equal(t.mqtt_sub[1].id, id_cmd);
    assert_string_equal(t.mqtt_sub[2].name, "alerts");
    assert_true(t.mqtt_sub[2].fresh);
    assert_string_equal(t.mqtt_sub[3].name, "prices/+");
    for (size_t i = 0; i < 4; i++) {
        size_t j = 0;
        while (strcmp(fresh.mqtt_sub[j].name, t.mqtt_sub[i].name) != 0)
            j++;
        assert_int_equal(fresh.mqtt_sub[j].id, t.mqtt_sub[i].id);
        assert_false(fresh.mqtt_sub[j].fresh);
        for (size_t k = 0; k < i; k++)
            assert_int_not_equal(t.mqtt_sub[k].id, t.mqtt_sub[i].id);
    }
    mrb_routes_free(&fresh);
    assert_string_equal(t.redis_sub[0].name, "user:*");
    assert_string_equal(t.redis_sub[1].name, "cmd:*");
    assert_string_equal(t.redis_sub[2].name, "alerts"); /* new: after the old */
    assert_string_equal(t.redis_sub[3].name, "prices:*");
    /* the lookups use the new order */
    assert_int_equal(mrb_routes_mqtt_canonical(&t, "cmd/x", 5), 1);
    assert_int_equal(mrb_routes_redis_canonical(&t, "alerts", 6), 2);
    assert_int_equal(mrb_routes_redis_sub_index(&t, "prices:*", 8), 3);
    assert_int_equal(mrb_routes_redis_sub_index(&t, "news", 4), MRB_NO_SUB);
    mrb_routes_free(&t);
    mrb_routes_free(&old);
}

static void test_table_subscriptions(void **state)
{
    const char *specs[] = {"user/+ <> user:*", "news <> news", "alerts > alerts",
                           "user/+ < user:*", "cmd/+ < cmd:*"};
    mrb_routes t = table(specs, 5);
    /* MQTT side: routes that carry MQTT -> Redis, distinct */
    assert_int_equal(t.n_mqtt_sub, 3);
    assert_string_equal(t.mqtt_sub[0].name, "user/+");
    assert_string_equal(t.mqtt_sub[1].name, "news");
    assert_string_equal(t.mqtt_sub[2].name, "alerts");
    /* Redis side: exact channels first, then patterns */
    assert_int_equal(t.n_redis_sub, 3);
    assert_string_equal(t.redis_sub[0].name, "news");
    assert_true(t.redis_sub[0].exact);
    assert_string_equal(t.redis_sub[1].name, "user:*");
    assert_string_equal(t.redis_sub[2].name, "cmd:*");
    assert_int_equal(mrb_routes_redis_canonical(&t, "user:x", 6), 1);
    assert_int_equal(mrb_routes_redis_canonical(&t, "alerts", 6), MRB_NO_SUB);
    assert_int_equal(mrb_routes_mqtt_canonical(&t, "alerts", 6), 2);
    mrb_routes_free(&t);
}

static void test_targets_are_distinct(void **state)
{
    const char *specs[] = {"user/+ > user:*", "user/# > user:*", "user/# > all:*"};
    mrb_routes t = table(specs, 3);
    mrb_targets tg = {0};
    assert_int_equal(mrb_routes_map_mqtt(&t, "user/x", 6, &tg), MRB_OK);
    assert_int_equal(tg.n, 2); /* user:x once, all:x once */
    assert_memory_equal(tg.buf + tg.v[0].off, "user:x", 6);
    assert_memory_equal(tg.buf + tg.v[1].off, "all:x", 5);
    assert_int_equal(mrb_routes_map_mqtt(&t, "user/x/y", 8, &tg), MRB_OK);
    assert_int_equal(tg.n, 2);
    assert_memory_equal(tg.buf + tg.v[0].off, "user:x:y", 8);
    mrb_targets_free(&tg);
    mrb_routes_free(&t);

    const char *back[] = {"user/+ < user:*", "user/# < user:*"};
    t = table(back, 2);
    assert_int_equal(mrb_routes_map_redis(&t, MRB_MODE_PUBSUB, "user:x", 6, &tg), MRB_OK);
    assert_int_equal(tg.n, 1);
    assert_int_equal(mrb_routes_map_redis(&t, MRB_MODE_PUBSUB, "user:a/b", 8, &tg), MRB_OK);
    assert_int_equal(tg.n, 0);
    assert_int_equal(tg.unmappable, 2); /* '/' inside a capture, both routes */
    mrb_targets_free(&tg);
    mrb_routes_free(&t);
}

static void test_stream_routes(void **state)
{
    mrb_route r = mk("user/+ <> user:* stream maxlen=500 qos=0");
    assert_int_equal(r.mode, MRB_MODE_STREAM);
    assert_int_equal(r.maxlen, 500);
    char line[128];
    mrb_route_format(&r, line, sizeof(line));
    assert_string_equal(line, "user/+ <> user:* qos=0 stream maxlen=500");
    mrb_route_free(&r);
    r = mk("news > news");
    assert_int_equal(r.mode, MRB_MODE_PUBSUB);
    assert_int_equal(r.maxlen, MRB_MAXLEN_DEFAULT);
    mrb_route_free(&r);
    check_bad("a > a stream maxlen=0", "maxlen 0 is out of range (a stream must "
              "be bounded: 1 or more entries)");
    check_bad("a > a maxlen=x", "unknown option \"maxlen=x\" (allowed: qos=0, "
              "qos=1, qos=2, retain, stream, maxlen=N, store=hash, hash=NAME, "
              "envelope=json, envelope=none, unwrap, rate=N, burst=N)");

    /* A stream route and a pub/sub route to the same name are two targets;
     * the Redis-side lists keep the modes apart. */
    const char *specs[] = {"user/+ <> user:*", "user/+ <> user:* stream",
                           "dev/+ < dev:*:in stream", "alerts < alerts stream"};
    mrb_routes t = table(specs, 4);
    assert_int_equal(t.n_redis_sub, 1);
    assert_string_equal(t.redis_sub[0].name, "user:*");
    assert_int_equal(t.n_stream_sub, 3);
    assert_string_equal(t.stream_sub[0].name, "alerts"); /* exact first */
    assert_true(t.stream_sub[0].exact);
    mrb_targets tg = {0};
    assert_int_equal(mrb_routes_map_mqtt(&t, "user/x", 6, &tg), MRB_OK);
    assert_int_equal(tg.n, 2);
    assert_int_equal(t.route[tg.v[0].route].mode, MRB_MODE_PUBSUB);
    assert_int_equal(t.route[tg.v[1].route].mode, MRB_MODE_STREAM);
    assert_int_equal(mrb_routes_map_redis(&t, MRB_MODE_STREAM, "dev:7:in", 8, &tg),
                     MRB_OK);
    assert_int_equal(tg.n, 1);
    assert_memory_equal(tg.buf + tg.v[0].off, "dev/7", 5);
    assert_int_equal(mrb_routes_map_redis(&t, MRB_MODE_PUBSUB, "dev:7:in", 8, &tg),
                     MRB_OK);
    assert_int_equal(tg.n, 0); /* no pub/sub route carries dev:* */
    mrb_targets_free(&tg);
    mrb_routes_free(&t);
}

/* The first-level indexes give the same answers as a scan over all routes:
 * canonical subscriptions, subscription lookup by name, and the targets in
 * route order, for overlapping keyed and wild filters and patterns. */
static void test_index_matches_scan(void **state)
{
    static const char *specs[] = {
        "a/+ <> a:*", "+/x <> *:x", "a/# <> ax:*", "# > all:*",
        "b/c <> b:c", "user/+ <> user:*", "us/+ < us*", "a/b < a:b",
        "q/+ <> q:*:z stream", "+/+ <> *:*", "$SYS/+ > sys:*", "a <> a",
        "d/+/e <> d:*:e", "x/# < x:*"};
    static const char *names[] = {
        "a/b", "a/x", "a", "a/b/c", "b/c", "b/x", "user/1", "us/1", "q/1",
        "zz/x", "$SYS/x", "d/1/e", "x/1/2", "c", "", "a:b", "a:x", "ax:1",
        "b:c", "user:1", "usa", "us:1", "q:1:z", "zz:x", "x:1:2", "a",
        "d:1:e", "sys:1", "all:1", "user", "us*"};
    size_t ns = sizeof(specs) / sizeof(*specs);
    mrb_route r[sizeof(specs) / sizeof(*specs)];
    for (size_t i = 0; i < ns; i++)
        r[i] = mk(specs[i]);
    mrb_routes t;
    assert_int_equal(mrb_routes_build(&t, r, ns), MRB_OK);
    mrb_targets tg = {0};
    for (size_t k = 0; k < sizeof(names) / sizeof(*names); k++) {
        const char *nm = names[k];
        size_t len = strlen(nm);
        size_t want = MRB_NO_SUB;
        for (size_t i = 0; i < t.n_mqtt_sub && want == MRB_NO_SUB; i++)
            if (mrb_filter_matches(t.mqtt_sub[i].name, nm, len))
                want = i;
        assert_int_equal(mrb_routes_mqtt_canonical(&t, nm, len), want);
        want = MRB_NO_SUB;
        for (size_t i = 0; i < t.n_redis_sub && want == MRB_NO_SUB; i++)
            if (t.redis_sub[i].exact ? strcmp(t.redis_sub[i].name, nm) == 0
                                     : mrb_glob_matches(t.redis_sub[i].name, nm, len))
                want = i;
        assert_int_equal(mrb_routes_redis_canonical(&t, nm, len), want);
        /* targets: the routes that map it, in route order, first of each name */
        for (int side = 0; side < 3; side++) {
            mrb_err e = side == 0 ? mrb_routes_map_mqtt(&t, nm, len, &tg)
                                  : mrb_routes_map_redis(&t, side == 1 ? MRB_MODE_PUBSUB
                                                                       : MRB_MODE_STREAM,
                                                         nm, len, &tg);
            assert_int_equal(e, MRB_OK);
            size_t n = 0;
            for (size_t i = 0; i < ns; i++) {
                char out[256];
                size_t on;
                if (side == 0 ? (r[i].dir == MRB_DIR_REDIS_TO_MQTT ||
                                 mrb_route_map_to_redis(&r[i], nm, len, out, sizeof(out), &on))
                              : (r[i].dir == MRB_DIR_MQTT_TO_REDIS ||
                                 (int)r[i].mode != side - 1 ||
                                 mrb_route_map_to_mqtt(&r[i], nm, len, out, sizeof(out), &on)))
                    continue;
                int dup = 0;
                for (size_t j = 0; j < n; j++)
                    dup |= tg.v[j].len == on && memcmp(tg.buf + tg.v[j].off, out, on) == 0 &&
                           r[tg.v[j].route].mode == r[i].mode;
                if (dup)
                    continue;
                assert_true(n < tg.n);
                assert_int_equal(tg.v[n].route, i);
                assert_int_equal(tg.v[n].len, on);
                assert_memory_equal(tg.buf + tg.v[n].off, out, on);
                n++;
            }
            assert_int_equal(n, tg.n);
        }
    }
    for (size_t i = 0; i < t.n_redis_sub; i++)
        assert_int_equal(mrb_routes_redis_sub_index(&t, t.redis_sub[i].name,
                                                    strlen(t.redis_sub[i].name)), i);
    assert_int_equal(mrb_routes_redis_sub_index(&t, "nope", 4), MRB_NO_SUB);
    mrb_targets_free(&tg);
    mrb_routes_free(&t);
    for (size_t i = 0; i < ns; i++)
        mrb_route_free(&r[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plus_maps_verbatim),
        cmocka_unit_test(test_hash_translates_separators),
        cmocka_unit_test(test_literals_differ_per_side),
        cmocka_unit_test(test_multiple_wildcards),
        cmocka_unit_test(test_bad_topics_from_redis),
        cmocka_unit_test(test_hostile_channel_is_bounded),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_spec_options),
        cmocka_unit_test(test_matchers),
        cmocka_unit_test(test_table_subscriptions),
        cmocka_unit_test(test_targets_are_distinct),
        cmocka_unit_test(test_stream_routes),
        cmocka_unit_test(test_index_matches_scan),
        cmocka_unit_test(test_table_reload_order),
        cmocka_unit_test(test_mqtt_is_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
