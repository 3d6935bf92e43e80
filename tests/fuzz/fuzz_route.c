/*
 * fuzz_route.c - route specs, matching and mapping in both directions.
 *
 * Input: up to 4 route specs, one per line, then a NUL byte, then a name
 * (any bytes) that is mapped as an MQTT topic and as a Redis channel.
 * Properties (the allowlist): every name the table maps to is valid on its
 * side and matched by the route that produced it, on that route's other
 * side, in a direction the route allows; nothing maps through a route the
 * name does not match.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mrb/route.h"

#define MAX_ROUTES 4

static void check_targets(const mrb_routes *t, const mrb_targets *tg, int to_redis,
                          const char *name, size_t len)
{
    for (size_t i = 0; i < tg->n; i++) {
        const mrb_route *r = &t->route[tg->v[i].route];
        const char *out = tg->buf + tg->v[i].off;
        size_t olen = tg->v[i].len;
        char *o = malloc(olen + 1);
        if (!o)
            abort();
        memcpy(o, out, olen);
        o[olen] = '\0';
        if (to_redis) {
            if (r->dir == MRB_DIR_REDIS_TO_MQTT)
                mrb_fuzz_fail("MQTT -> Redis through a '<' route", r->mqtt);
            if (!mrb_filter_matches(r->mqtt, name, len))
                mrb_fuzz_fail("source topic not matched by the route", r->mqtt);
            if (!mrb_glob_matches(r->redis, out, olen))
                mrb_fuzz_fail("Redis name outside the route's pattern", o);
        } else {
            if (r->dir == MRB_DIR_MQTT_TO_REDIS)
                mrb_fuzz_fail("Redis -> MQTT through a '>' route", r->redis);
            if (!mrb_glob_matches(r->redis, name, len))
                mrb_fuzz_fail("source channel not matched by the route", r->redis);
            if (!mrb_topic_valid(out, olen))
                mrb_fuzz_fail("invalid MQTT topic produced", o);
            if (!mrb_filter_matches(r->mqtt, out, olen))
                mrb_fuzz_fail("MQTT topic outside the route's filter", o);
        }
        free(o);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    const uint8_t *nul = memchr(data, '\0', size);
    size_t specs_len = nul ? (size_t)(nul - data) : size;
    const char *name = nul ? (const char *)nul + 1 : "";
    size_t len = nul ? size - specs_len - 1 : 0;
    char *specs = mrb_fuzz_cstr(data, specs_len);

    mrb_route routes[MAX_ROUTES];
    size_t n = 0;
    char msg[512];
    for (char *line = specs, *next; line && n < MAX_ROUTES; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (mrb_route_parse_spec(line, &routes[n], msg, sizeof(msg)) == MRB_OK) {
            char fmt[1024], fmt2[1024];
            mrb_route_format(&routes[n], fmt, sizeof(fmt));
            /* what --check prints is a spec that means the same route */
            mrb_route again;
            if (strlen(fmt) + 1 < sizeof(fmt)) {
                if (mrb_route_parse_spec(fmt, &again, msg, sizeof(msg)) != MRB_OK)
                    mrb_fuzz_fail("a formatted route does not parse", fmt);
                mrb_route_format(&again, fmt2, sizeof(fmt2));
                mrb_route_free(&again);
                if (strcmp(fmt, fmt2) != 0)
                    mrb_fuzz_fail("format(parse(format(r))) differs", fmt2);
            }
            if (routes[n].store == MRB_STORE_HASH) {
                char field[256];
                size_t fl;
                mrb_route_hash_field(&routes[n], name, len, field, sizeof(field), &fl);
            }
            n++;
        }
    }
    mrb_routes t;
    if (n && mrb_routes_build(&t, routes, n) == MRB_OK) {
        mrb_targets tg;
        memset(&tg, 0, sizeof(tg));
        if (mrb_routes_map_mqtt(&t, name, len, &tg) == MRB_OK)
            check_targets(&t, &tg, 1, name, len);
        for (int mode = 0; mode < 2; mode++)
            if (mrb_routes_map_redis(&t, mode ? MRB_MODE_STREAM : MRB_MODE_PUBSUB,
                                     name, len, &tg) == MRB_OK)
                check_targets(&t, &tg, 0, name, len);
        mrb_routes_mqtt_canonical(&t, name, len);
        mrb_routes_mqtt_stores(&t, name, len);
        mrb_routes_redis_canonical(&t, name, len);
        mrb_targets_free(&tg);
        mrb_routes_free(&t);
    }
    for (size_t i = 0; i < n; i++)
        mrb_route_free(&routes[i]);
    free(specs);
    return 0;
}
