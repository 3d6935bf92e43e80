/*
 * cli.c - the command line: getopt_long over argv, the --help text, masking
 * the passwords of argv for process listings, and laying the command line
 * over a configuration (its keys set through config.c's schema).
 */
#include "mrb/cli.h"
#include "config_int.h"

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "mqtt-redis-bridge"

/* The options, one row each: getopt_long's table, --help (help: its lines
 * as printed) and the man page's OPTIONS and docs/CONFIGURATION.md (doc,
 * `code` in backquotes, printed by mrb-docgen; DOC: config_int.h) come from
 * here. */
enum { O_CONFIG, O_MQTT, O_REDIS, O_ID, O_ROUTE, O_CHECK, O_VERBOSE, O_QUIET,
       O_SYSLOG, O_HELP, O_VERSION, O_COUNT };

static const mrb_cli_option options[O_COUNT] = {
    [O_CONFIG] = {'c', "config", "FILE",
        "read a JSON configuration file (keys: see\n"
        "mqtt-redis-bridge.json(5))",
        DOC("Read a JSON configuration file; its keys are in "
        "mqtt-redis-bridge.json(5). Unknown keys, wrong types and out-of-range "
        "values are errors naming the key path; syntax errors give "
        "file:line:column.")},
    [O_MQTT] = {0, "mqtt", "URL",
        "broker, mqtt://[user[:pass]@]host[:port] or, with\n"
        "TLS, mqtts://... (port 8883; certificates: the\n"
        "mqtt.tls keys) (default mqtt://127.0.0.1:1883)",
        DOC("Broker, `mqtt://[user[:pass]@]host[:port]`, or `mqtts://...` "
        "for TLS "
        "(port 8883; the `mqtt.tls.*` keys set certificates) when the binary "
        "is built with TLS (`--version` says; otherwise an `mqtts://` URL is "
        "a configuration error). In URLs, user and password may be "
        "percent-encoded (`%40` for `@`). Default `mqtt://127.0.0.1:1883`.")},
    [O_REDIS] = {0, "redis", "URL",
        "Redis, redis://[user[:pass]@]host[:port][/db] or\n"
        "unix:/path/redis.sock (default redis://127.0.0.1:6379)",
        DOC("Redis, `redis://[user[:pass]@]host[:port][/db]` or "
        "`unix:/path/redis.sock`. Default `redis://127.0.0.1:6379`.")},
    [O_ID] = {0, "id", "NAME",
        "bridge id, used in the MQTT client id and in\n"
        "bridge/<id>/status (default: the host name)",
        DOC("Bridge id: the MQTT client id is `mqtt-redis-bridge-NAME`, the "
        "retained status topic `bridge/NAME/status` (`online` / `offline`). "
        "Default: the host name.")},
    [O_ROUTE] = {0, "route", "SPEC",
        "'MQTT_FILTER ARROW REDIS_PATTERN [qos=N] [retain]\n"
        "[stream] [maxlen=N] [OPTIONS]'; ARROW is <> (both ways),\n"
        "> (MQTT to Redis) or < (Redis to MQTT); 'stream'\n"
        "carries the route over Redis Streams (XADD, consumer\n"
        "group) instead of pub/sub. Repeatable; replaces the\n"
        "file's routes. Default: 'user/+ <> user:*' and\n"
        "'news <> news'.\n"
        "Route options: hash=NAME (or store=hash hash=NAME)\n"
        "also keeps the latest payload per topic in Redis hash\n"
        "NAME, field = the wildcard captures (presence);\n"
        "envelope=json wraps MQTT->Redis messages in a JSON\n"
        "envelope {topic,payload,qos,retain,ts,bridge};\n"
        "unwrap takes such envelopes apart on the way to MQTT;\n"
        "rate=N [burst=N] limits the route to N messages/s\n"
        "each way (QoS 0 over the limit: dropped and counted;\n"
        "QoS 1/2, and stream entries: slowed down)",
        DOC("`MQTT_FILTER ARROW REDIS_PATTERN [qos=N] [retain] [stream] "
        "[maxlen=N] [hash=NAME] [envelope=json] [unwrap] [rate=N] [burst=N]`, "
        "where ARROW is `<>` (both ways), `>` (MQTT to Redis) or `<` (Redis "
        "to MQTT). Repeatable; replaces the file's routes. The k-th wildcard "
        "of the filter corresponds to the k-th `*` of the pattern. `stream` "
        "carries the route over Redis Streams (XADD; a consumer group reads, "
        "and acknowledges only after the broker has the message) instead of "
        "pub/sub; `maxlen` bounds each stream (default 10000). `hash=NAME` "
        "(store: hash) also keeps the latest payload per topic in the Redis "
        "hash NAME (field: the wildcard captures joined with /; an empty "
        "payload deletes it), filled from the broker's retained messages at "
        "start without publishing them: device presence from retained status "
        "messages and Last Wills. `envelope=json` wraps each MQTT->Redis "
        "message in {\"topic\",\"payload\",\"qos\",\"retain\",\"ts\",\"bridge\"} "
        "(payload as JSON, as a string, or base64 with "
        "\"encoding\":\"base64\"). `unwrap` sends the payload of such "
        "envelopes to MQTT (anything else is dropped and counted as "
        "dropped_malformed). `rate=N` [`burst=N`] limits the route to N "
        "messages/s each way (token bucket, burst default N): QoS 0 beyond "
        "is dropped (dropped_rate_limited), QoS 1/2 and stream entries "
        "slowed down. The same keys in the configuration file: `routes[].*` "
        "in mqtt-redis-bridge.json(5). Default: `user/+ <> user:*` and "
        "`news <> news`.")},
    [O_CHECK] = {0, "check", NULL,
        "validate the configuration, print it and exit",
        DOC("Validate the configuration, print the effective configuration "
        "(passwords as ***) and exit 0.")},
    [O_VERBOSE] = {'v', "verbose", NULL, "log debug messages too", NULL},
    [O_QUIET] = {'q', "quiet", NULL, "log only warnings and errors", NULL},
    [O_SYSLOG] = {0, "syslog", NULL,
        "log to syslog (ident mqtt-redis-bridge, facility\n"
        "daemon) instead of stderr",
        DOC("Log to syslog(3) instead of standard error: ident "
        "`mqtt-redis-bridge`, facility `daemon`, with the PID; levels error, "
        "warning, info and debug become priorities `err`, `warning`, `info` "
        "and `debug`. One line per event, without the bridge's own time "
        "stamp; passwords are never logged. Config key `syslog` "
        "(true/false).")},
    [O_HELP] = {'h', "help", NULL, "show this help and exit", NULL},
    [O_VERSION] = {'V', "version", NULL, "show the version and exit", NULL},
};

const mrb_cli_option *mrb_cli_options(size_t *n)
{
    *n = O_COUNT;
    return options;
}

/* "-c, --config FILE" or "    --mqtt URL", as --help shows it. */
static void option_names(const mrb_cli_option *o, char *buf, size_t len)
{
    snprintf(buf, len, "%c%c%s--%s%s%s", o->short_name ? '-' : ' ',
             o->short_name ? o->short_name : ' ', o->short_name ? ", " : "  ",
             o->long_name, o->arg ? " " : "", o->arg ? o->arg : "");
}

void mrb_cli_usage(FILE *out)
{
#if MRB_WITH_STATS_CMD
    fputs(
"Usage: " PROG " [OPTIONS]\n"
"       " PROG " stats [--redis URL] [-c FILE] [--json] [--watch N]\n"
"Bridge MQTT topics and Redis pub/sub channels or streams both ways.\n"
"The stats subcommand prints what the bridges report to Redis (every\n"
"stats_interval seconds: counters per route, drops, latency) and the active\n"
"channels of their routes; see '" PROG " stats --help'.\n", out);
#else
    fputs(
"Usage: " PROG " [OPTIONS]\n"
"Bridge MQTT topics and Redis pub/sub channels or streams both ways.\n"
"(Built without the stats subcommand.)\n", out);
#endif
    fputs("\n", out);
    for (size_t i = 0; i < O_COUNT; i++) {
        char names[40];
        option_names(&options[i], names, sizeof(names));
        fprintf(out, "  %-20s", names);
        for (const char *l = options[i].help; *l;) {
            size_t n = strcspn(l, "\n");
            fprintf(out, "%s%.*s\n", l == options[i].help ? "" : "                      ",
                    (int)n, l);
            l += n + (l[n] == '\n');
        }
    }
    fputs(
"\n"
"Replay (with a stream route): publish {\"topic\": \"T\", \"count\": N} (N up\n"
"to 1000) to bridge/<id>/replay to get the last N messages of topic T's\n"
"stream, oldest first, then an end marker {\"replay\":\"end\",...}, on the\n"
"request's MQTT 5 Response Topic, else its \"response_topic\", else\n"
"bridge/<id>/replay/response.\n"
"\n"
"Passwords: rather than in a URL (visible to other users until the bridge\n"
"has started), give them in mqtt.password_file / redis.password_file or in\n"
"the environment variables MRB_MQTT_PASSWORD / MRB_REDIS_PASSWORD; one\n"
"source per side. They are never printed.\n"
"\n"
"Signals: SIGINT/SIGTERM stop cleanly; SIGHUP reads the configuration\n"
"again and applies its routes and log_level without reconnecting (an\n"
"invalid one is logged and changes nothing; other settings need a\n"
"restart); SIGUSR1 logs the counters.\n"
"\n"
"Command-line values override the configuration file. Exit status: 0 after\n"
"SIGINT/SIGTERM or --check, 2 for a bad command line or configuration,\n"
"1 for a fatal run-time error.\n"
"Configuration keys: mqtt-redis-bridge.json(5); more: mqtt-redis-bridge(8).\n",
          out);
}

mrb_err mrb_cli_parse(int argc, char **argv, mrb_cli *cli, char *msg,
                      size_t msglen)
{
    struct option opts[O_COUNT + 1];
    char shorts[2 * O_COUNT + 2] = ":";
    size_t ns = 1;
    for (int i = 0; i < O_COUNT; i++) {
        opts[i] = (struct option){options[i].long_name,
                                  options[i].arg ? required_argument : no_argument,
                                  NULL, 256 + i};
        if (options[i].short_name) {
            shorts[ns++] = options[i].short_name;
            if (options[i].arg)
                shorts[ns++] = ':';
        }
    }
    opts[O_COUNT] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = '\0';

    memset(cli, 0, sizeof(*cli));
    cli->argc = argc;
    cli->argv = argv;
    cli->routes = calloc((size_t)argc + 1, sizeof(*cli->routes));
    if (!cli->routes)
        return MRB_ERR_NOMEM;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        for (int i = 0; c > 0 && c < 256 && i < O_COUNT; i++)
            if (options[i].short_name == c)
                c = 256 + i;
        switch (c - 256) {
        case O_CONFIG: cli->config_file = optarg; break;
        case O_MQTT: cli->mqtt_url = optarg; break;
        case O_REDIS: cli->redis_url = optarg; break;
        case O_ID: cli->id = optarg; break;
        case O_ROUTE: cli->routes[cli->n_routes++] = optarg; break;
        case O_CHECK: cli->check = 1; break;
        case O_VERBOSE: cli->verbosity = 1; break;
        case O_QUIET: cli->verbosity = -1; break;
        case O_SYSLOG: cli->syslog = 1; break;
        case O_HELP: cli->help = 1; break;
        case O_VERSION: cli->version = 1; break;
        case ':' - 256:
            return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                            "option '%s' needs a value (see --help)",
                            argv[optind - 1]);
        default:
            return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                            "unknown option '%s' (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "unexpected argument '%s' (see --help)", argv[optind]);
    return MRB_OK;
}

#define MASK "***"
#define MASK_LEN (sizeof(MASK) - 1)

/* Whether argv's strings lie back to back in one block, as the kernel lays
 * them out (what /proc/PID/cmdline shows): then [*start, *end) is it. */
static int argv_block(const mrb_cli *cli, char **start, char **end)
{
    if (!cli->argv || cli->argc <= 0)
        return 0;
    char *lo = NULL, *hi = NULL;
    size_t total = 0;
    for (int i = 0; i < cli->argc; i++) {
        char *a = cli->argv[i];
        if (!a)
            return 0;
        size_t n = strlen(a) + 1;
        if (!lo || (uintptr_t)a < (uintptr_t)lo)
            lo = a;
        if (!hi || (uintptr_t)(a + n) > (uintptr_t)hi)
            hi = a + n;
        total += n;
    }
    *start = lo;
    *end = hi;
    return (uintptr_t)hi - (uintptr_t)lo == total;
}

/* Whether p points into [from, end). */
static int within(const char *p, const char *from, const char *end)
{
    return p && (uintptr_t)p >= (uintptr_t)from && (uintptr_t)p < (uintptr_t)end;
}

/* Mask the password of one URL argument: "***", the rest moved up. */
static void scrub_url(mrb_cli *cli, char *url)
{
    if (!url)
        return;
    char *sep = strstr(url, "://");
    char *p = sep ? sep + 3 : url;
    char *end = p + strcspn(p, "/");
    char *at = NULL;
    for (char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
    if (!colon)
        return;
    size_t len = (size_t)(at - colon - 1);
    if (len <= MASK_LEN) { /* nothing to close up */
        memset(colon + 1, '*', len);
        return;
    }
    size_t gap = len - MASK_LEN;
    char *bstart, *bend;
    if (!argv_block(cli, &bstart, &bend) || !within(url, bstart, bend))
        bend = url + strlen(url) + 1; /* this string alone */
    memcpy(colon + 1, MASK, MASK_LEN);
    memmove(colon + 1 + MASK_LEN, at, (size_t)(bend - at));
    memset(bend - gap, '\0', gap);
    /* what pointed behind the password moved up with it */
    for (int i = 0; cli->argv && i < cli->argc; i++)
        if (within(cli->argv[i], at, bend))
            cli->argv[i] -= gap;
    for (size_t i = 0; i < cli->n_routes; i++)
        if (within(cli->routes[i], at, bend))
            cli->routes[i] -= gap;
    if (within(cli->config_file, at, bend))
        cli->config_file -= gap;
    if (within(cli->id, at, bend))
        cli->id -= gap;
    if (within(cli->mqtt_url, at, bend))
        cli->mqtt_url -= gap;
    if (within(cli->redis_url, at, bend))
        cli->redis_url -= gap;
}

void mrb_cli_scrub(mrb_cli *cli)
{
    scrub_url(cli, cli->mqtt_url);
    scrub_url(cli, cli->redis_url);
}

void mrb_cli_free(mrb_cli *cli)
{
    free(cli->routes);
    memset(cli, 0, sizeof(*cli));
}

mrb_err mrb_config_apply_cli(mrb_config *cfg, const mrb_cli *cli, char *msg,
                             size_t msglen)
{
    const struct {
        const char *opt, *key, *value;
    } given[] = {
        {"--mqtt", "mqtt.url", cli->mqtt_url},
        {"--redis", "redis.url", cli->redis_url},
        {"--id", "id", cli->id},
    };
    for (size_t i = 0; i < sizeof(given) / sizeof(given[0]); i++) {
        char cmsg[300];
        mrb_err err = given[i].value
            ? mrb_config_set_string(cfg, given[i].key, given[i].value, cmsg,
                                    sizeof(cmsg))
            : MRB_OK;
        if (err == MRB_ERR_INVALID)
            return mrb_fail(err, msg, msglen, "%s: %s", given[i].opt, cmsg);
        if (err != MRB_OK)
            return err;
    }
    if (cli->verbosity > 0)
        cfg->log_level = MRB_LOG_DEBUG;
    else if (cli->verbosity < 0)
        cfg->log_level = MRB_LOG_WARNING;
    if (cli->syslog)
        cfg->syslog = 1;
    if (cli->n_routes == 0)
        return MRB_OK;
    mrb_route *routes = calloc(cli->n_routes, sizeof(*routes));
    if (!routes)
        return MRB_ERR_NOMEM;
    for (size_t i = 0; i < cli->n_routes; i++) {
        char rmsg[512];
        mrb_err err = mrb_route_parse_spec(cli->routes[i], &routes[i], rmsg,
                                           sizeof(rmsg));
        if (err != MRB_OK) {
            mrb_config_free_routes(routes, cli->n_routes);
            return mrb_fail(err, msg, msglen, "--route '%s': %s",
                            cli->routes[i], rmsg);
        }
    }
    mrb_config_free_routes(cfg->routes, cfg->n_routes);
    cfg->routes = routes;
    cfg->n_routes = cli->n_routes;
    return MRB_OK;
}
