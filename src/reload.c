/*
 * reload.c - SIGHUP: the configuration is read again into a fresh struct
 * and, if valid, its routes and log level are swapped in (the loop,
 * bridge.c, calls mrb_reload when the signal came). Main thread only.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge_int.h"
#include "loop_int.h"

/* What --check prints of cfg, apart from the routes and the log level: the
 * settings a reload does not apply. NULL if out of memory. */
static char *other_settings(const mrb_config *cfg)
{
    mrb_config c = *cfg; /* a shallow copy, only printed */
    c.routes = NULL;
    c.n_routes = 0;
    c.log_level = MRB_LOG_INFO;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    mrb_config_print(&c, f);
    fclose(f);
    return text;
}

static int route_in(const mrb_routes *t, const char *line)
{
    char other[600];
    for (size_t i = 0; i < t->n; i++) {
        mrb_route_format(&t->route[i], other, sizeof(other));
        if (strcmp(other, line) == 0)
            return 1;
    }
    return 0;
}

/* Log the routes of a that b does not have, as "what: route"; count them. */
static size_t log_route_diff(const mrb_routes *a, const mrb_routes *b,
                             const char *what)
{
    size_t n = 0;
    char line[600];
    for (size_t i = 0; i < a->n; i++) {
        mrb_route_format(&a->route[i], line, sizeof(line));
        if (!route_in(b, line)) {
            mrb_info("reload: route %s: %s", what, line);
            n++;
        }
    }
    return n;
}

/* Read the configuration again; if it is valid, apply its routes (subscribe
 * and unsubscribe the difference, on connections that stay up) and its log
 * level. An invalid one changes nothing. */
void mrb_reload(mrb_bridge *b)
{
    mrb_config nc;
    char msg[1024];
    mrb_config_init(&nc);
    if (!b->reload) {
        mrb_warn("reload: not supported here; SIGHUP ignored");
        goto out;
    }
    mrb_info("reload: reading the configuration again (SIGHUP)");
    mrb_err err = b->reload(b->reload_ctx, &nc, msg, sizeof(msg));
    if (err != MRB_OK) {
        mrb_error("reload: %s; the running configuration stays as it is",
                  err == MRB_ERR_INVALID ? msg : mrb_strerror(err));
        goto out;
    }
    mrb_routes t, old;
    int had_replay = mrb_replay_topic(b) != NULL;
    if (mrb_routes_build_from(&t, nc.routes, nc.n_routes, &b->routes) != MRB_OK) {
        mrb_error("reload: out of memory; the running configuration stays as it is");
        goto out;
    }
    mrb_stats_table st, old_st;
    /* the rate limits of the new table start full */
    mrb_route_limit *limits = mrb_limits_alloc(&t, mrb_now_ms(), &err), *old_limits;
    if (err != MRB_OK || mrb_stats_table_alloc(&st, &t) != MRB_OK) {
        mrb_limits_free(limits);
        mrb_routes_free(&t);
        mrb_error("reload: out of memory; the running configuration stays as it is");
        goto out;
    }
    /* with the lock held no other thread counts: the counters of the
     * routes that stay are carried over whole */
    pthread_mutex_lock(&b->routes_lock);
    mrb_stats_table_carry(&st, &t, &b->st, &b->routes);
    old_st = b->st;
    b->st = st;
    old = b->routes;
    b->routes = t;
    b->routes_gen++;
    old_limits = b->limits;
    b->limits = limits;
    b->limits_due_ms[0] = b->limits_due_ms[1] = INT64_MAX; /* fresh buckets */
    pthread_mutex_unlock(&b->routes_lock);
    mrb_stats_table_free(&old_st);
    mrb_limits_free(old_limits);
    /* messages waiting for a token of the old table go without one */
    for (mrb_msg *m = b->out_q.head; m; m = m->next)
        m->seq = 0;
    for (mrb_msg *m = b->sx_q.head; m; m = m->next)
        m->seq = 0;
    mrb_log_set_level(nc.log_level);

    size_t added = log_route_diff(&b->routes, &old, "added");
    size_t removed = log_route_diff(&old, &b->routes, "removed");
    size_t ma, mr, ra, rr, sa, sr;
    mrb_replay_update(b); /* the first stream route turns replay on */
    mrb_mqtt_apply_routes(b, &old, had_replay, &ma, &mr);
    mrb_redis_apply_routes(b, &old, &ra, &rr);
    if (mrb_stream_apply_routes(b, &old, &sa, &sr) != MRB_OK)
        mrb_error("reload: out of memory: stream keys are not read until the "
                  "next reconnect");
    mrb_routes_free(&old);
    b->reload_wait = 1;
    mrb_info("reload: done: %zu route(s), %zu added, %zu removed; MQTT "
             "subscriptions +%zu -%zu, Redis subscriptions +%zu -%zu, stream "
             "keys/patterns +%zu -%zu; log level %s",
             b->routes.n, added, removed, ma, mr, ra, rr, sa, sr,
             mrb_log_level_name(nc.log_level));

    char *was = other_settings(b->cfg), *now = other_settings(&nc);
    if (was && now && strcmp(was, now) != 0)
        mrb_warn("reload: settings other than routes and log_level differ from "
                 "the running ones; they take effect at the next restart");
    free(was);
    free(now);
out:
    mrb_config_free(&nc);
}
