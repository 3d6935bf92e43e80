/*
 * cli.c - the command line: getopt_long over argv, the --help text, masking
 * the passwords of argv for process listings, and laying the command line
 * over a configuration (its keys set through config.c's schema).
 */
#include "mrb/cli.h"

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROG "mqtt-redis-bridge"

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
    fputs(
"\n"
"  -c, --config FILE   read a JSON configuration file (keys: see README)\n"
"      --mqtt URL      broker, mqtt://[user[:pass]@]host[:port] or, with\n"
"                      TLS, mqtts://... (port 8883; certificates: see the\n"
"                      mqtt.tls keys in README) (default mqtt://127.0.0.1:1883)\n"
"      --redis URL     Redis, redis://[user[:pass]@]host[:port][/db] or\n"
"                      unix:/path/redis.sock (default redis://127.0.0.1:6379)\n"
"      --id NAME       bridge id, used in the MQTT client id and in\n"
"                      bridge/<id>/status (default: the host name)\n"
"      --route SPEC    'MQTT_FILTER ARROW REDIS_PATTERN [qos=N] [retain]\n"
"                      [stream] [maxlen=N] [OPTIONS]'; ARROW is <> (both ways),\n"
"                      > (MQTT to Redis) or < (Redis to MQTT); 'stream'\n"
"                      carries the route over Redis Streams (XADD, consumer\n"
"                      group) instead of pub/sub. Repeatable; replaces the\n"
"                      file's routes. Default: 'user/+ <> user:*' and\n"
"                      'news <> news'.\n"
"                      Route options: hash=NAME (or store=hash hash=NAME)\n"
"                      also keeps the latest payload per topic in Redis hash\n"
"                      NAME, field = the wildcard captures (presence);\n"
"                      envelope=json wraps MQTT->Redis messages in a JSON\n"
"                      envelope {topic,payload,qos,retain,ts,bridge};\n"
"                      unwrap takes such envelopes apart on the way to MQTT;\n"
"                      rate=N [burst=N] limits the route to N messages/s\n"
"                      each way (QoS 0 over the limit: dropped and counted;\n"
"                      QoS 1/2, and stream entries: slowed down)\n"
"      --check         validate the configuration, print it and exit\n"
"  -v, --verbose       log debug messages too\n"
"  -q, --quiet         log only warnings and errors\n"
"      --syslog        log to syslog (ident mqtt-redis-bridge, facility\n"
"                      daemon) instead of stderr\n"
"  -h, --help          show this help and exit\n"
"  -V, --version       show the version and exit\n"
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
"1 for a fatal run-time error.\n", out);
}

mrb_err mrb_cli_parse(int argc, char **argv, mrb_cli *cli, char *msg,
                      size_t msglen)
{
    enum { O_MQTT = 256, O_REDIS, O_ID, O_ROUTE, O_CHECK, O_SYSLOG };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"mqtt", required_argument, NULL, O_MQTT},
        {"redis", required_argument, NULL, O_REDIS},
        {"id", required_argument, NULL, O_ID},
        {"route", required_argument, NULL, O_ROUTE},
        {"check", no_argument, NULL, O_CHECK},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"syslog", no_argument, NULL, O_SYSLOG},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};

    memset(cli, 0, sizeof(*cli));
    cli->argc = argc;
    cli->argv = argv;
    cli->routes = calloc((size_t)argc + 1, sizeof(*cli->routes));
    if (!cli->routes)
        return MRB_ERR_NOMEM;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":c:vqhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c': cli->config_file = optarg; break;
        case O_MQTT: cli->mqtt_url = optarg; break;
        case O_REDIS: cli->redis_url = optarg; break;
        case O_ID: cli->id = optarg; break;
        case O_ROUTE: cli->routes[cli->n_routes++] = optarg; break;
        case O_CHECK: cli->check = 1; break;
        case 'v': cli->verbosity = 1; break;
        case 'q': cli->verbosity = -1; break;
        case O_SYSLOG: cli->syslog = 1; break;
        case 'h': cli->help = 1; break;
        case 'V': cli->version = 1; break;
        case ':':
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
