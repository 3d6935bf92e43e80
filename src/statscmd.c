/*
 * statscmd.c - `mqtt-redis-bridge stats`: what every bridge reported to
 * Redis (set "bridges", hashes bridge:<id>:stats written by stats_report.c)
 * and, per Redis pattern of their pub/sub routes, the active channels with
 * their subscriber counts (PUBSUB CHANNELS / NUMSUB). A table, or one JSON
 * document with --json; --watch N redraws every N seconds until SIGINT or
 * SIGTERM. One synchronous hiredis connection, this process's only thread.
 */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "mrb/cli.h"
#include "mrb/config.h"
#include "mrb/mem.h"
#include "mrb/statscmd.h"

#define PROG "mqtt-redis-bridge stats"
#define CHANNELS_MAX 20   /* channels listed per pattern, at most */
#define BRIDGES_MAX 1000  /* bridges shown, at most */
#define PATTERNS_MAX 200  /* route patterns looked at, at most */
#define WATCH_MAX 86400

static volatile sig_atomic_t got_stop;

static void on_stop(int sig)
{
    (void)sig;
    got_stop = 1;
}

static void usage(FILE *out)
{
    fputs(
"Usage: " PROG " [--redis URL] [--config FILE] [--json] [--watch N]\n"
"Show the bridges that report to this Redis (stats_interval > 0): id,\n"
"status, uptime, messages each way and drops; then, per Redis pattern of\n"
"their pub/sub routes, the active channels and their subscriber counts\n"
"(PUBSUB CHANNELS / NUMSUB; at most 20 channels listed per pattern).\n"
"\n"
"      --redis URL     Redis, as for the bridge (default: the configuration\n"
"                      file's redis.url, else redis://127.0.0.1:6379)\n"
"  -c, --config FILE   take redis.url and the password from this bridge\n"
"                      configuration file (password sources as the bridge:\n"
"                      redis.password_file, MRB_REDIS_PASSWORD, the URL)\n"
"      --json          print one JSON document instead of the table\n"
"      --watch N       redraw every N seconds (1..86400) until interrupted\n"
"  -h, --help          show this help and exit\n"
"\n"
"A bridge whose report has expired (none for 3 intervals) is shown once as\n"
"'gone' and removed from the set 'bridges'. Exit status: 0, 1 if Redis\n"
"cannot be read, 2 for a bad command line or configuration.\n", out);
}

/* ---- Redis ---- */

static redisReply *cmd(redisContext *c, int argc, const char **argv, const size_t *lens)
{
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    return r;
}

static redisContext *connect_redis(const mrb_config *cfg, const char *shown)
{
    const mrb_url *u = &cfg->redis;
    struct timeval tv = {5, 0};
    redisContext *c = u->path ? redisConnectUnixWithTimeout(u->path, tv)
                              : redisConnectWithTimeout(u->host, u->port, tv);
    if (!c || c->err) {
        fprintf(stderr, PROG ": cannot connect to Redis %s: %s\n", shown,
                c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    const char *what = NULL;
    if (u->password) {
        r = u->user ? redisCommand(c, "AUTH %s %s", u->user, u->password)
                    : redisCommand(c, "AUTH %s", u->password);
        what = "AUTH";
    }
    if ((!what || (r && r->type != REDIS_REPLY_ERROR)) && u->db) {
        freeReplyObject(r);
        r = redisCommand(c, "SELECT %d", u->db);
        what = "SELECT";
    }
    if (what && (!r || r->type == REDIS_REPLY_ERROR)) {
        fprintf(stderr, PROG ": Redis %s refused %s: %s\n", shown, what,
                r ? r->str : c->errstr);
        freeReplyObject(r);
        redisFree(c);
        return NULL;
    }
    freeReplyObject(r);
    return c;
}

/* ---- gathering ---- */

typedef struct bridge_row {
    char *id;
    char *status, *mqtt, *redis, *version;
    long long started, uptime, updated, mqtt_in, redis_out, redis_in, mqtt_out, dropped;
    cJSON *doc;                  /* the "json" field, parsed (or NULL) */
} bridge_row;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_row(const void *a, const void *b)
{
    return strcmp(((const bridge_row *)a)->id, ((const bridge_row *)b)->id);
}

static void rows_free(bridge_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].id);
        free(rows[i].status);
        free(rows[i].mqtt);
        free(rows[i].redis);
        free(rows[i].version);
        cJSON_Delete(rows[i].doc);
    }
    free(rows);
}

/* Fill rows from SMEMBERS bridges and their hashes. -1 on a Redis error
 * (printed). */
static int read_bridges(redisContext *c, bridge_row **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    redisReply *m = redisCommand(c, "SMEMBERS bridges");
    if (!m || m->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, PROG ": SMEMBERS bridges: %s\n",
                m && m->type == REDIS_REPLY_ERROR ? m->str : c->errstr);
        freeReplyObject(m);
        return -1;
    }
    size_t n = m->elements < BRIDGES_MAX ? m->elements : BRIDGES_MAX;
    bridge_row *rows = calloc(n ? n : 1, sizeof(*rows));
    if (!rows) {
        freeReplyObject(m);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = m->element[i];
        bridge_row *row = &rows[i];
        row->id = mrb_strndup(e->str ? e->str : "", e->str ? e->len : 0);
        char key[300];
        snprintf(key, sizeof(key), "bridge:%s:stats", row->id ? row->id : "");
        const char *argv[] = {"HGETALL", key};
        size_t lens[] = {7, strlen(key)};
        redisReply *h = cmd(c, 2, argv, lens);
        if (!h || h->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, PROG ": HGETALL %s: %s\n", key,
                    h && h->type == REDIS_REPLY_ERROR ? h->str : c->errstr);
            freeReplyObject(h);
            rc = -1;
            break;
        }
        if (h->elements == 0) {
            /* expired: no report for 3 intervals */
            row->status = mrb_strndup("gone", 4);
            const char *srem[] = {"SREM", "bridges", row->id ? row->id : ""};
            size_t slen[] = {4, 7, strlen(srem[2])};
            freeReplyObject(cmd(c, 3, srem, slen));
        }
        for (size_t k = 0; k + 1 < h->elements; k += 2) {
            const redisReply *f = h->element[k], *v = h->element[k + 1];
            if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            static const struct {
                const char *name;
                size_t off;
            } nums[] = {
                {"started", offsetof(bridge_row, started)},
                {"uptime_s", offsetof(bridge_row, uptime)},
                {"updated", offsetof(bridge_row, updated)},
                {"mqtt_in", offsetof(bridge_row, mqtt_in)},
                {"redis_out", offsetof(bridge_row, redis_out)},
                {"redis_in", offsetof(bridge_row, redis_in)},
                {"mqtt_out", offsetof(bridge_row, mqtt_out)},
                {"dropped", offsetof(bridge_row, dropped)},
            };
            static const struct {
                const char *name;
                size_t off;
            } strs[] = {
                {"status", offsetof(bridge_row, status)},
                {"mqtt", offsetof(bridge_row, mqtt)},
                {"redis", offsetof(bridge_row, redis)},
                {"version", offsetof(bridge_row, version)},
            };
            for (size_t j = 0; j < sizeof(nums) / sizeof(nums[0]); j++)
                if (strcmp(f->str, nums[j].name) == 0)
                    *(long long *)(void *)((char *)row + nums[j].off) =
                        strtoll(v->str, NULL, 10);
            for (size_t j = 0; j < sizeof(strs) / sizeof(strs[0]); j++) {
                char **dst = (char **)(void *)((char *)row + strs[j].off);
                if (strcmp(f->str, strs[j].name) == 0 && !*dst)
                    *dst = mrb_strndup(v->str, v->len);
            }
            if (strcmp(f->str, "json") == 0 && !row->doc)
                row->doc = cJSON_ParseWithLength(v->str, v->len);
        }
        freeReplyObject(h);
    }
    freeReplyObject(m);
    if (rc != 0) {
        rows_free(rows, n);
        return -1;
    }
    qsort(rows, n, sizeof(*rows), cmp_row);
    *out = rows;
    *n_out = n;
    return 0;
}

/* The distinct Redis patterns of the pub/sub routes the bridges report. */
static size_t route_patterns(const bridge_row *rows, size_t n, char **pats, size_t max)
{
    size_t np = 0;
    for (size_t i = 0; i < n; i++) {
        const cJSON *routes = cJSON_GetObjectItemCaseSensitive(rows[i].doc, "routes");
        const cJSON *r;
        cJSON_ArrayForEach(r, routes) {
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(r, "redis");
            const cJSON *mode = cJSON_GetObjectItemCaseSensitive(r, "mode");
            if (!cJSON_IsString(p) || !cJSON_IsString(mode) ||
                strcmp(mode->valuestring, "pubsub") != 0)
                continue;
            int seen = 0;
            for (size_t k = 0; k < np && !seen; k++)
                seen = strcmp(pats[k], p->valuestring) == 0;
            if (!seen && np < max && (pats[np] = strdup(p->valuestring)) != NULL)
                np++;
        }
    }
    qsort(pats, np, sizeof(*pats), cmp_str);
    return np;
}

/* One pattern's channels: {"pattern", "total", "channels": [{name, subscribers}]}.
 * NULL on a Redis error (printed). */
static cJSON *pattern_channels(redisContext *c, const char *pattern)
{
    const char *argv[3 + CHANNELS_MAX] = {"PUBSUB", "CHANNELS", pattern};
    size_t lens[3 + CHANNELS_MAX] = {6, 8, strlen(pattern)};
    redisReply *ch = cmd(c, 3, argv, lens);
    if (!ch || ch->type != REDIS_REPLY_ARRAY) {
        fprintf(stderr, PROG ": PUBSUB CHANNELS %s: %s\n", pattern,
                ch && ch->type == REDIS_REPLY_ERROR ? ch->str : c->errstr);
        freeReplyObject(ch);
        return NULL;
    }
    /* sorted, the first CHANNELS_MAX */
    char **names = calloc(ch->elements ? ch->elements : 1, sizeof(*names));
    cJSON *o = cJSON_CreateObject(), *list = cJSON_CreateArray();
    if (!names || !o || !list) {
        free(names);
        cJSON_Delete(o);
        cJSON_Delete(list);
        freeReplyObject(ch);
        return NULL;
    }
    size_t nn = 0;
    for (size_t i = 0; i < ch->elements; i++)
        if (ch->element[i]->type == REDIS_REPLY_STRING)
            names[nn++] = ch->element[i]->str;
    qsort(names, nn, sizeof(*names), cmp_str);
    size_t shown = nn < CHANNELS_MAX ? nn : CHANNELS_MAX;
    cJSON_AddStringToObject(o, "pattern", pattern);
    cJSON_AddNumberToObject(o, "total", (double)nn);
    cJSON_AddItemToObject(o, "channels", list);
    if (shown > 0) {
        argv[0] = "PUBSUB";
        argv[1] = "NUMSUB";
        lens[0] = 6;
        lens[1] = 6;
        for (size_t i = 0; i < shown; i++) {
            argv[2 + i] = names[i];
            lens[2 + i] = strlen(names[i]);
        }
        redisReply *ns = cmd(c, (int)(2 + shown), argv, lens);
        if (!ns || ns->type != REDIS_REPLY_ARRAY || ns->elements != 2 * shown) {
            fprintf(stderr, PROG ": PUBSUB NUMSUB: %s\n",
                    ns && ns->type == REDIS_REPLY_ERROR ? ns->str : c->errstr);
            freeReplyObject(ns);
            free(names);
            freeReplyObject(ch);
            cJSON_Delete(o);
            return NULL;
        }
        for (size_t i = 0; i < shown; i++) {
            cJSON *e = cJSON_CreateObject();
            if (!e)
                break;
            cJSON_AddStringToObject(e, "name", names[i]);
            cJSON_AddNumberToObject(e, "subscribers",
                                    (double)ns->element[2 * i + 1]->integer);
            cJSON_AddItemToArray(list, e);
        }
        freeReplyObject(ns);
    }
    free(names);
    freeReplyObject(ch);
    return o;
}

/* ---- output ---- */

static void fmt_duration(long long s, char *buf, size_t len)
{
    if (s < 0)
        snprintf(buf, len, "-");
    else if (s < 3600)
        snprintf(buf, len, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%lldh%02lldm", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, len, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

static const char *or_dash(const char *s) { return s ? s : "-"; }

static void print_table(const bridge_row *rows, size_t n, cJSON *pats)
{
    printf("%-20s %-8s %-9s %-5s %-5s %10s %10s %10s %10s %8s\n", "BRIDGE", "STATUS",
           "UPTIME", "MQTT", "REDIS", "MQTT_IN", "REDIS_OUT", "REDIS_IN", "MQTT_OUT",
           "DROPPED");
    if (n == 0)
        printf("(no bridge reports to this Redis: is stats_interval 0?)\n");
    for (size_t i = 0; i < n; i++) {
        const bridge_row *r = &rows[i];
        char up[32] = "-";
        if (r->status && strcmp(r->status, "gone") != 0)
            fmt_duration(r->uptime, up, sizeof(up));
        printf("%-20s %-8s %-9s %-5s %-5s %10lld %10lld %10lld %10lld %8lld\n", r->id,
               or_dash(r->status), up, or_dash(r->mqtt), or_dash(r->redis), r->mqtt_in,
               r->redis_out, r->redis_in, r->mqtt_out, r->dropped);
    }
    const cJSON *p;
    cJSON_ArrayForEach(p, pats) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *total = cJSON_GetObjectItemCaseSensitive(p, "total");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "channels");
        int t = cJSON_IsNumber(total) ? total->valueint : 0;
        printf("\nchannels matching '%s': %d active", name->valuestring, t);
        if (t > CHANNELS_MAX)
            printf(" (the first %d listed)", CHANNELS_MAX);
        printf("\n");
        const cJSON *e;
        cJSON_ArrayForEach(e, list) {
            printf("  %-40s %6d subscriber(s)\n",
                   cJSON_GetObjectItemCaseSensitive(e, "name")->valuestring,
                   cJSON_GetObjectItemCaseSensitive(e, "subscribers")->valueint);
        }
    }
}

static cJSON *rows_json(const bridge_row *rows, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++) {
        const bridge_row *r = &rows[i];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            break;
        cJSON_AddStringToObject(o, "id", r->id ? r->id : "");
        cJSON_AddStringToObject(o, "status", or_dash(r->status));
        cJSON_AddNumberToObject(o, "uptime_s", (double)r->uptime);
        cJSON_AddNumberToObject(o, "mqtt_in", (double)r->mqtt_in);
        cJSON_AddNumberToObject(o, "redis_out", (double)r->redis_out);
        cJSON_AddNumberToObject(o, "redis_in", (double)r->redis_in);
        cJSON_AddNumberToObject(o, "mqtt_out", (double)r->mqtt_out);
        cJSON_AddNumberToObject(o, "dropped", (double)r->dropped);
        cJSON_AddItemToObject(o, "stats", r->doc ? cJSON_Duplicate(r->doc, 1)
                                                 : cJSON_CreateNull());
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

/* One view: 0 fine, 1 a Redis error (printed). */
static int show(redisContext *c, int json)
{
    bridge_row *rows;
    size_t n;
    if (read_bridges(c, &rows, &n) != 0)
        return 1;
    char *pats[PATTERNS_MAX] = {0};
    size_t np = route_patterns(rows, n, pats, PATTERNS_MAX);
    cJSON *pl = cJSON_CreateArray();
    int rc = pl ? 0 : 1;
    for (size_t i = 0; i < np; i++) {
        cJSON *p = rc == 0 ? pattern_channels(c, pats[i]) : NULL;
        if (!p)
            rc = 1;
        else
            cJSON_AddItemToArray(pl, p);
        free(pats[i]);
    }
    if (rc == 0 && json) {
        cJSON *doc = cJSON_CreateObject();
        char *text = NULL;
        if (doc) {
            cJSON_AddItemToObject(doc, "bridges", rows_json(rows, n));
            cJSON_AddItemToObject(doc, "patterns", pl);
            pl = NULL;
            text = cJSON_PrintUnformatted(doc);
        }
        if (text)
            printf("%s\n", text);
        else
            rc = 1;
        free(text);
        cJSON_Delete(doc);
    } else if (rc == 0) {
        print_table(rows, n, pl);
    }
    fflush(stdout);
    cJSON_Delete(pl);
    rows_free(rows, n);
    return rc;
}

int mrb_statscmd_main(int argc, char **argv)
{
    enum { O_REDIS = 256, O_JSON, O_WATCH };
    static const struct option opts[] = {
        {"redis", required_argument, NULL, O_REDIS},
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, O_JSON},
        {"watch", required_argument, NULL, O_WATCH},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *config_file = NULL;
    char *redis_url = NULL;
    int json = 0, status = 2;
    long watch = 0;
    char msg[1024];
    mrb_config cfg;
    mrb_cli cli;
    redisContext *c = NULL;

    mrb_config_init(&cfg);
    memset(&cli, 0, sizeof(cli));
    opterr = 0;
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, ":c:h", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case O_REDIS: redis_url = optarg; break;
        case 'c': config_file = optarg; break;
        case O_JSON: json = 1; break;
        case O_WATCH:
            watch = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || watch < 1 || watch > WATCH_MAX) {
                fprintf(stderr, PROG ": --watch '%s': give whole seconds from 1 to "
                        "%d\n", optarg, WATCH_MAX);
                goto out;
            }
            break;
        case 'h':
            usage(stdout);
            status = 0;
            goto out;
        case ':':
            fprintf(stderr, PROG ": option '%s' needs a value (see --help)\n",
                    argv[optind - 1]);
            goto out;
        default:
            fprintf(stderr, PROG ": unknown option '%s' (see --help)\n",
                    argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (see --help)\n", argv[optind]);
        goto out;
    }
    cli.redis_url = redis_url;
    mrb_err err;
    if ((config_file &&
         (err = mrb_config_load_file(&cfg, config_file, msg, sizeof(msg))) != MRB_OK) ||
        (err = mrb_config_apply_cli(&cfg, &cli, msg, sizeof(msg))) != MRB_OK ||
        (err = mrb_config_finish(&cfg, msg, sizeof(msg))) != MRB_OK) {
        fprintf(stderr, PROG ": %s\n", err == MRB_ERR_INVALID ? msg : mrb_strerror(err));
        status = err == MRB_ERR_INVALID ? 2 : 1;
        goto out;
    }
    mrb_cli_scrub(&cli); /* copied: hide the password from process listings */
    char shown[300];
    mrb_url_format_redacted(&cfg.redis, MRB_URL_REDIS, shown, sizeof(shown));
    status = 1;
    c = connect_redis(&cfg, shown);
    if (!c)
        goto out;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL); /* no SA_RESTART: the sleep ends */
    sigaction(SIGTERM, &sa, NULL);
    for (;;) {
        if (watch && !json && isatty(1))
            fputs("\033[H\033[2J", stdout);
        if (watch && !json) {
            time_t now = time(NULL);
            char when[64];
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&now));
            printf("%s  (every %ld s; Ctrl-C to stop)\n", when, watch);
        }
        if (show(c, json) != 0)
            goto out;
        if (!watch)
            break;
        struct timespec ts = {(time_t)watch, 0};
        while (!got_stop && nanosleep(&ts, &ts) != 0)
            ;
        if (got_stop)
            break;
        if (!json)
            printf("\n");
    }
    status = 0;
out:
    if (c)
        redisFree(c);
    mrb_config_free(&cfg);
    return status;
}
