/*
 * config_finish.c - the configuration as a whole, once the file and the
 * command line are in (mrb_config_finish): the defaults that depend on other
 * values (id, client id, routes), the URLs, passwords from exactly one
 * source, the TLS files, the rules between keys; the value checks the
 * schema rows of config.c call; and --check's print-out.
 */
#include "config_int.h"
#include "mrb/queue.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------- value checks */

static int id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

mrb_err mrb_config__check_id(const char *v, char *msg, size_t msglen)
{
    if (id_valid(v))
        return MRB_OK;
    return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                    "invalid value \"%s\" (allowed: 1 to 64 letters, digits, "
                    "'-', '_' or '.')", v);
}

static mrb_err check_url(const char *v, mrb_url_kind kind, char *msg,
                         size_t msglen)
{
    mrb_url u;
    mrb_err err = mrb_url_parse(v, kind, &u, msg, msglen);
    int tls = u.tls;
    mrb_url_free(&u);
    if (err == MRB_OK && tls && !MRB_WITH_TLS) {
        char shown[300];
        mrb_url_redact_text(v, shown, sizeof(shown));
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "\"%s\": this mqtt-redis-bridge was built without TLS "
                        "(cmake -DWITH_TLS=OFF): use mqtt:// or a build with "
                        "TLS", shown);
    }
    return err;
}

mrb_err mrb_config__check_mqtt_url(const char *v, char *msg, size_t msglen)
{
    return check_url(v, MRB_URL_MQTT, msg, msglen);
}

mrb_err mrb_config__check_redis_url(const char *v, char *msg, size_t msglen)
{
    return check_url(v, MRB_URL_REDIS, msg, msglen);
}

/* ------------------------------------------------------------- warnings */

static void add_warning(mrb_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void add_warning(mrb_config *cfg, const char *fmt, ...)
{
    if (cfg->n_warnings >= MRB_CONFIG_MAX_WARNINGS)
        return;
    char *line = cfg->warnings[cfg->n_warnings++];
    va_list ap;
    va_start(ap, fmt);
    /* clang-analyzer 14 reports ap as uninitialised here, after the
     * va_start above (it did not when this was in config.c) */
    vsnprintf(line, sizeof(cfg->warnings[0]), fmt, ap); // NOLINT(clang-analyzer-valist.Uninitialized)
    va_end(ap);
}

void mrb_config__warn_if_public(mrb_config *cfg, const char *what,
                                const char *path, const struct stat *st)
{
    if (st->st_mode & S_IROTH)
        add_warning(cfg, "%s \"%s\" is readable by other users (mode %04o): "
                    "chmod o-r it", what, path, (unsigned)(st->st_mode & 07777));
}

int mrb_config__has_password(const char *url)
{
    char shown[1024];
    mrb_url_redact_text(url, shown, sizeof(shown));
    return strcmp(shown, url) != 0;
}

/* ---------------------------------------------------------- finishing */

static mrb_err default_id(mrb_config *cfg)
{
    char host[256] = "";
    if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0')
        strcpy(host, "bridge");
    host[64] = '\0';
    for (char *p = host; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
            *p = '-';
    return mrb_config__set_string(&cfg->id, host);
}

static mrb_err default_routes(mrb_config *cfg)
{
    static const char *const specs[] = {"user/+ <> user:*", "news <> news"};
    size_t n = sizeof(specs) / sizeof(specs[0]);
    cfg->routes = calloc(n, sizeof(*cfg->routes));
    if (!cfg->routes)
        return MRB_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        if (mrb_route_parse_spec(specs[i], &cfg->routes[i], NULL, 0) != MRB_OK)
            return MRB_ERR_NOMEM;
        cfg->n_routes++;
    }
    return MRB_OK;
}

/* Read the first line of a password file into *out (heap). */
static mrb_err read_password_file(mrb_config *cfg, const char *key,
                                  const char *path, char **out, char *msg,
                                  size_t msglen)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen, "%s: cannot open \"%s\": %s",
                        key, path, strerror(errno));
    char buf[1024];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    int rerr = ferror(f) ? errno : 0;
    struct stat st;
    if (fstat(fileno(f), &st) == 0)
        mrb_config__warn_if_public(cfg, key, path, &st);
    fclose(f);
    buf[n] = '\0';
    size_t len = strcspn(buf, "\r\n");
    mrb_err err = MRB_OK;
    if (rerr)
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen, "%s: cannot read \"%s\": %s",
                       key, path, strerror(rerr));
    else if (n == sizeof(buf) - 1)
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                       "%s: \"%s\" is larger than %zu bytes (the password goes "
                       "on its first line)", key, path, sizeof(buf) - 2);
    else if (memchr(buf, '\0', n))
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                       "%s: \"%s\" holds a NUL byte", key, path);
    else if (len == 0)
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                       "%s: \"%s\": the first line is empty (it holds the "
                       "password)", key, path);
    if (err == MRB_OK) {
        buf[len] = '\0';
        if (!(*out = strdup(buf)))
            err = MRB_ERR_NOMEM;
    }
    return err;
}

/* The password of one side from exactly one of: the URL, a file, the
 * environment. Stored in url->password; *from names the source. */
static mrb_err resolve_password(mrb_config *cfg, const char *side, mrb_url *url,
                                const char *file, const char *env,
                                const char **from, char *msg, size_t msglen)
{
    static const char *const url_name[] = {"the URL (mqtt.url / --mqtt)",
                                           "the URL (redis.url / --redis)"};
    int mqtt = strcmp(side, "mqtt") == 0;
    const char *envval = getenv(env);
    const char *src[3] = {url->password ? url_name[mqtt ? 0 : 1] : NULL,
                          file ? (mqtt ? "mqtt.password_file"
                                       : "redis.password_file") : NULL,
                          envval && envval[0] ? env : NULL};
    const char *first = NULL;
    *from = NULL;
    for (int i = 0; i < 3; i++) {
        if (!src[i])
            continue;
        if (first)
            return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                            "%s: the password is given twice, in %s and in %s: "
                            "keep one", side, first, src[i]);
        first = src[i];
    }
    if (!first)
        return MRB_OK;
    char *pw = NULL;
    if (src[1]) {
        mrb_err err = read_password_file(cfg, src[1], file, &pw, msg, msglen);
        if (err != MRB_OK)
            return err;
    } else if (src[2] && !(pw = strdup(envval))) {
        return MRB_ERR_NOMEM;
    }
    if (pw) {
        free(url->password);
        url->password = pw;
    }
    *from = first;
    return MRB_OK;
}

/* The mqtts:// settings: only with mqtts://, files readable. */
static mrb_err finish_tls(mrb_config *cfg, char *msg, size_t msglen)
{
    int given = cfg->tls_ca_file || cfg->tls_ca_path || cfg->tls_cert_file ||
                cfg->tls_key_file || !cfg->tls_verify_hostname ||
                cfg->tls_min_version != MRB_TLS_1_2;
    if (!cfg->mqtt.tls)
        return given ? mrb_fail(MRB_ERR_INVALID, msg, msglen,
                                "mqtt.tls: TLS settings are given but the broker "
                                "URL is not mqtts://") : MRB_OK;
    if (cfg->tls_key_file && !cfg->tls_cert_file)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "mqtt.tls.key_file: given without mqtt.tls.cert_file");
    const struct {
        const char *key, *path;
        int mode;
    } files[] = {
        {"mqtt.tls.ca_file", cfg->tls_ca_file, R_OK},
        {"mqtt.tls.ca_path", cfg->tls_ca_path, R_OK | X_OK},
        {"mqtt.tls.cert_file", cfg->tls_cert_file, R_OK},
        {"mqtt.tls.key_file", cfg->tls_key_file, R_OK},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (files[i].path && access(files[i].path, files[i].mode) != 0)
            return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                            "%s: cannot read \"%s\": %s", files[i].key,
                            files[i].path, strerror(errno));
    struct stat st;
    const char *key = cfg->tls_key_file ? cfg->tls_key_file : cfg->tls_cert_file;
    if (key && stat(key, &st) == 0)
        mrb_config__warn_if_public(cfg, cfg->tls_key_file ? "mqtt.tls.key_file"
                                              : "mqtt.tls.cert_file (holding the key)",
                       key, &st);
    return MRB_OK;
}

mrb_err mrb_config_finish(mrb_config *cfg, char *msg, size_t msglen)
{
    mrb_err err;
    if (!cfg->id && (err = default_id(cfg)) != MRB_OK)
        return err;
    if (!id_valid(cfg->id))
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "id: invalid value \"%s\" (allowed: 1 to 64 letters, "
                        "digits, '-', '_' or '.')", cfg->id);
    if ((err = mrb_config__string_defaults(cfg)) != MRB_OK)
        return err;
    if (!cfg->n_routes && (err = default_routes(cfg)) != MRB_OK)
        return err;

    char umsg[256];
    mrb_url_free(&cfg->mqtt);
    mrb_url_free(&cfg->redis);
    if ((err = mrb_url_parse(cfg->mqtt_url, MRB_URL_MQTT, &cfg->mqtt, umsg,
                             sizeof(umsg))) != MRB_OK)
        return mrb_fail(err, msg, msglen, "mqtt.url: %s", umsg);
    if ((err = mrb_url_parse(cfg->redis_url, MRB_URL_REDIS, &cfg->redis, umsg,
                             sizeof(umsg))) != MRB_OK)
        return mrb_fail(err, msg, msglen, "redis.url: %s", umsg);
    if ((err = resolve_password(cfg, "mqtt", &cfg->mqtt, cfg->mqtt_password_file,
                                "MRB_MQTT_PASSWORD", &cfg->mqtt_password_from,
                                msg, msglen)) != MRB_OK ||
        (err = resolve_password(cfg, "redis", &cfg->redis, cfg->redis_password_file,
                                "MRB_REDIS_PASSWORD", &cfg->redis_password_from,
                                msg, msglen)) != MRB_OK ||
        (err = finish_tls(cfg, msg, msglen)) != MRB_OK)
        return err;

    if (!cfg->client_id) {
        char cid[96];
        snprintf(cid, sizeof(cid), "mqtt-redis-bridge-%s", cfg->id);
        if ((err = mrb_config__set_string(&cfg->client_id, cid)) != MRB_OK)
            return err;
    }
    char topic[96];
    snprintf(topic, sizeof(topic), "bridge/%s/status", cfg->id);
    if ((err = mrb_config__set_string(&cfg->status_topic, topic)) != MRB_OK)
        return err;

    if (cfg->reconnect_min_ms > cfg->reconnect_max_ms)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "reconnect.min_ms (%ld) must not exceed reconnect.max_ms "
                        "(%ld)", cfg->reconnect_min_ms, cfg->reconnect_max_ms);
    long need = mrb_config_queue_bytes_min(cfg);
    if (cfg->queue_bytes < need) {
        /* one of the two comes from the file: the defaults fit each other */
        char where[300] = "";
        if (cfg->source && (cfg->queue_bytes_given || cfg->max_payload_given))
            snprintf(where, sizeof(where), "%s: ", cfg->source);
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "%slimits.queue_bytes (%ld%s) must be at least %ld "
                        "(%slimits.max_payload %ld + %ld for the topic and "
                        "bookkeeping), or a largest message could not wait in "
                        "the queue", where, cfg->queue_bytes,
                        cfg->queue_bytes_given ? "" : ", the default", need,
                        cfg->max_payload_given ? "" : "the default ",
                        cfg->max_payload, need - cfg->max_payload);
    }
    return MRB_OK;
}

long mrb_config_queue_bytes_min(const mrb_config *cfg)
{
    /* at most 268435455 + 65535 + ~100: fits a 32-bit long */
    return cfg->max_payload + MRB_TOPIC_MAX + (long)MRB_MSG_OVERHEAD;
}

void mrb_config_print(const mrb_config *cfg, FILE *out)
{
    char url[512], line[1024];
    fprintf(out, "id: %s\n", cfg->id);
    fprintf(out, "log_level: %s (to %s)\n", mrb_log_level_name(cfg->log_level),
            cfg->syslog ? "syslog" : "stderr");
    mrb_url_format_redacted(&cfg->mqtt, MRB_URL_MQTT, url, sizeof(url));
    fprintf(out, "mqtt: %s (protocol %s, client id %s, keepalive %ld s, "
            "session expiry %" PRIu32 " s)\n", url, mrb_config__protocols[cfg->protocol],
            cfg->client_id, cfg->keepalive, cfg->session_expiry);
    if (cfg->mqtt.tls)
        fprintf(out, "mqtt tls: ca_file %s, ca_path %s, cert_file %s, key_file %s, "
                "verify_hostname %s, min_version %s\n",
                cfg->tls_ca_file ? cfg->tls_ca_file : "(system CAs)",
                cfg->tls_ca_path ? cfg->tls_ca_path : "-",
                cfg->tls_cert_file ? cfg->tls_cert_file : "-",
                cfg->tls_key_file ? cfg->tls_key_file : "-",
                cfg->tls_verify_hostname ? "yes" : "NO",
                mrb_config__tls_versions[cfg->tls_min_version]);
    if (cfg->mqtt_password_from)
        fprintf(out, "mqtt password: *** (from %s)\n", cfg->mqtt_password_from);
    mrb_url_format_redacted(&cfg->redis, MRB_URL_REDIS, url, sizeof(url));
    fprintf(out, "redis: %s (keepalive %ld s, stream scan every %ld s)\n", url,
            cfg->redis_keepalive, cfg->scan_interval);
    if (cfg->redis_password_from)
        fprintf(out, "redis password: *** (from %s)\n", cfg->redis_password_from);
    fprintf(out, "status topic: %s\n", cfg->status_topic);
    fprintf(out, "limits: max_payload %ld bytes; queue %ld messages / %ld bytes "
            "per direction (at least %ld bytes with this max_payload)\n",
            cfg->max_payload, cfg->queue_messages, cfg->queue_bytes,
            mrb_config_queue_bytes_min(cfg));
    fprintf(out, "reconnect: %ld ms to %ld ms; shutdown_timeout: %ld ms\n",
            cfg->reconnect_min_ms, cfg->reconnect_max_ms,
            cfg->shutdown_timeout_ms);
    if (cfg->stats_interval > 0)
        fprintf(out, "stats: every %ld s on bridge/%s/stats and bridge:%s:stats\n",
                cfg->stats_interval, cfg->id, cfg->id);
    else
        fprintf(out, "stats: off (stats_interval 0)\n");
    fprintf(out, "routes (%zu):\n", cfg->n_routes);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        mrb_route_format(&cfg->routes[i], line, sizeof(line));
        fprintf(out, "  %s\n", line);
    }
}
