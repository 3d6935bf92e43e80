/*
 * route.c - one route: checking, topic/channel matching, and mapping a name
 * through it (see mrb/route.h for the rules). The route table with its
 * indexes and subscription lists is routes.c.
 */
#include "mrb/route.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bound on the work spent splitting one channel among a pattern's '*'s: a
 * hostile channel name must not cost more than this (then: unmappable). */
#define GLOB_STEP_BUDGET 100000

static const char *const dir_names[] = {"both", "mqtt_to_redis",
                                        "redis_to_mqtt"};
static const char *const dir_arrows[] = {"<>", ">", "<"};

static const char *const mode_names[] = {"pubsub", "stream"};

static const char *const store_names[] = {"none", "hash"};
static const char *const envelope_names[] = {"none", "json"};

const char *mrb_mode_name(mrb_mode mode) { return mode_names[mode]; }
const char *mrb_store_name(mrb_store store) { return store_names[store]; }
const char *mrb_envelope_name(mrb_envelope_kind kind) { return envelope_names[kind]; }
const char *mrb_direction_name(mrb_direction dir) { return dir_names[dir]; }
const char *mrb_direction_arrow(mrb_direction dir) { return dir_arrows[dir]; }

/* ------------------------------------------------------------------------ */

/* Decode one UTF-8 code point at s (n bytes available). Returns its length,
 * or 0 if malformed, overlong, a surrogate, or out of range. */
static size_t utf8_next(const unsigned char *s, size_t n, unsigned *cp)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4, min = 0x10000, c &= 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return len;
}

/* MQTT 5 [MQTT-1.5.4]: well-formed UTF-8, no U+0000. Brokers (mosquitto
 * among them) also refuse control characters and non-characters and drop
 * the connection of a client that sends them, so they are refused here too:
 * a Redis publisher must not be able to knock the bridge off its broker. */
int mrb_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        if (n == 0 || cp == 0 || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) ||
            (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE)
            return 0;
        i += n;
    }
    return 1;
}

int mrb_filter_valid(const char *f)
{
    size_t len = strlen(f);
    if (len == 0 || len > MRB_TOPIC_MAX || !mrb_utf8_valid(f, len))
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (f[i] != '+' && f[i] != '#')
            continue;
        int starts = i == 0 || f[i - 1] == '/';
        int ends = i + 1 == len || f[i + 1] == '/';
        if (!starts || !ends || (f[i] == '#' && i + 1 != len))
            return 0;
    }
    return 1;
}

int mrb_topic_valid(const char *t, size_t len)
{
    if (len == 0 || len > MRB_TOPIC_MAX || t[0] == '$')
        return 0;
    for (size_t i = 0; i < len; i++)
        if (t[i] == '+' || t[i] == '#' || t[i] == '\0')
            return 0;
    return mrb_utf8_valid(t, len);
}

/* A span of the topic or channel captured by the k-th wildcard. */
typedef struct span {
    size_t off, len;
} span;

/* Walk filter f over topic t, recording what each wildcard captured and its
 * kind ('+' or '#'). Returns 1 on a match, 0 otherwise. *parent is set when
 * a trailing '#' matched the parent level itself ("a/#" on "a"): a match in
 * MQTT, but one that captured nothing a Redis '*' could stand for. */
static int filter_walk(const char *f, const char *t, size_t len, span *cap,
                       char *kind, int *ncap, int *parent)
{
    size_t ti = 0;
    int k = 0;
    *parent = 0;
    if (len > 0 && t[0] == '$' && (f[0] == '+' || f[0] == '#'))
        return 0;
    for (;;) {
        if (f[0] == '#') {
            if (cap && k < MRB_WILDCARDS_MAX) {
                cap[k].off = ti;
                cap[k].len = len - ti;
                kind[k] = '#';
            }
            *ncap = k + 1;
            return 1;
        }
        const char *fe = strchr(f, '/');
        size_t fl = fe ? (size_t)(fe - f) : strlen(f);
        const char *te = memchr(t + ti, '/', len - ti);
        size_t tl = te ? (size_t)(te - (t + ti)) : len - ti;
        if (fl == 1 && f[0] == '+') {
            if (cap && k < MRB_WILDCARDS_MAX) {
                cap[k].off = ti;
                cap[k].len = tl;
                kind[k] = '+';
            }
            k++;
        } else if (fl != tl || memcmp(f, t + ti, tl) != 0) {
            return 0;
        }
        if (!fe) {
            *ncap = k;
            return te == NULL;
        }
        if (!te) {
            if (strcmp(fe + 1, "#") != 0)
                return 0;
            *parent = 1;
            *ncap = k + 1;
            return 1;
        }
        f = fe + 1;
        ti += tl + 1;
    }
}

int mrb_filter_matches(const char *filter, const char *topic, size_t len)
{
    int ncap, parent;
    return filter_walk(filter, topic, len, NULL, NULL, &ncap, &parent);
}

int mrb_glob_matches(const char *p, const char *s, size_t len)
{
    /* Iterative matcher: on a mismatch, let the last '*' swallow one more. */
    size_t si = 0, star_s = 0;
    const char *star_p = NULL;
    while (si < len) {
        if (*p == '*') {
            star_p = ++p;
            star_s = si;
        } else if (*p && *p == s[si]) {
            p++;
            si++;
        } else if (star_p) {
            p = star_p;
            si = ++star_s;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

/* ------------------------------------------------------------------------ */

static int count_wildcards(const char *f)
{
    int n = 0;
    for (size_t i = 0; f[i]; i++)
        if ((f[i] == '+' || f[i] == '#') && (i == 0 || f[i - 1] == '/'))
            n++;
    return n;
}

mrb_err mrb_route_check(const mrb_route *r, char *msg, size_t msglen)
{
    const mrb_err E = MRB_ERR_INVALID;
    if (!mrb_filter_valid(r->mqtt))
        return mrb_fail(E, msg, msglen,
                        "MQTT filter \"%s\" is not a valid topic filter ('+' "
                        "and '#' must fill a whole level, '#' only at the end)",
                        r->mqtt);
    size_t plen = strlen(r->redis);
    if (plen == 0)
        return mrb_fail(E, msg, msglen, "the Redis pattern is empty");
    const char *bad = strpbrk(r->redis, "?[\\");
    if (bad)
        return mrb_fail(E, msg, msglen,
                        "Redis pattern \"%s\" contains '%c': only '*' is "
                        "supported as a wildcard",
                        r->redis, *bad);
    if (strstr(r->redis, "**"))
        return mrb_fail(E, msg, msglen,
                        "Redis pattern \"%s\" has two adjacent '*': the split "
                        "between them would be ambiguous",
                        r->redis);
    int nf = count_wildcards(r->mqtt), np = 0;
    for (size_t i = 0; i < plen; i++)
        np += r->redis[i] == '*';
    if (nf != np)
        return mrb_fail(E, msg, msglen,
                        "MQTT filter \"%s\" has %d wildcard%s but Redis pattern "
                        "\"%s\" has %d '*': the k-th wildcard maps to the k-th "
                        "'*', so the counts must agree",
                        r->mqtt, nf, nf == 1 ? "" : "s", r->redis, np);
    if (nf > MRB_WILDCARDS_MAX)
        return mrb_fail(E, msg, msglen, "route has %d wildcards, at most %d "
                        "are supported", nf, MRB_WILDCARDS_MAX);
    if (r->qos < 0 || r->qos > 2)
        return mrb_fail(E, msg, msglen, "qos %d is out of range (allowed: 0, 1, 2)",
                        r->qos);
    if (r->mode == MRB_MODE_STREAM && !MRB_WITH_STREAMS)
        return mrb_fail(E, msg, msglen, "mode \"stream\" is not in this build "
                        "(built with cmake -DWITH_STREAMS=OFF, the boards' "
                        "--minimal preset): use pubsub, or a full build");
    if ((r->envelope != MRB_ENVELOPE_NONE || r->unwrap) && !MRB_WITH_ENVELOPE)
        return mrb_fail(E, msg, msglen, "envelopes are not in this build (built "
                        "with cmake -DWITH_ENVELOPE=OFF, the boards' --minimal "
                        "preset): leave out envelope and unwrap, or use a full "
                        "build");
    if (r->mode == MRB_MODE_STREAM && r->maxlen < 1)
        return mrb_fail(E, msg, msglen, "maxlen %ld is out of range (a stream "
                        "must be bounded: 1 or more entries)", r->maxlen);
    if (r->store == MRB_STORE_HASH && r->dir == MRB_DIR_REDIS_TO_MQTT)
        return mrb_fail(E, msg, msglen, "store \"hash\" keeps what comes from "
                        "MQTT, but the route carries only Redis to MQTT (use "
                        "direction both or mqtt_to_redis)");
    if (r->store == MRB_STORE_HASH && (!r->hash || !r->hash[0]))
        return mrb_fail(E, msg, msglen, "store \"hash\" needs the hash's name "
                        "(\"hash\": \"NAME\", or hash=NAME in a --route)");
    if (r->store != MRB_STORE_HASH && r->hash)
        return mrb_fail(E, msg, msglen, "hash \"%s\" is given but store is "
                        "not \"hash\" (add \"store\": \"hash\")", r->hash);
    if (r->envelope != MRB_ENVELOPE_NONE && r->dir == MRB_DIR_REDIS_TO_MQTT)
        return mrb_fail(E, msg, msglen, "envelope \"%s\" wraps messages from "
                        "MQTT, but the route carries only Redis to MQTT (to "
                        "take envelopes apart on the way to MQTT use unwrap)",
                        mrb_envelope_name(r->envelope));
    if (r->unwrap && r->dir == MRB_DIR_MQTT_TO_REDIS)
        return mrb_fail(E, msg, msglen, "unwrap takes envelopes apart on the "
                        "way to MQTT, but the route carries only MQTT to Redis "
                        "(to wrap use envelope \"json\")");
    if (r->rate < 0 || r->rate > MRB_RATE_MAX)
        return mrb_fail(E, msg, msglen, "rate %ld is out of range (messages per "
                        "second, 1 to %ld; 0 or none: unlimited)", r->rate,
                        MRB_RATE_MAX);
    if (r->burst < 0 || r->burst > MRB_RATE_MAX)
        return mrb_fail(E, msg, msglen, "burst %ld is out of range (1 to %ld "
                        "messages)", r->burst, MRB_RATE_MAX);
    if (r->burst > 0 && r->rate == 0)
        return mrb_fail(E, msg, msglen, "burst %ld is given without a rate "
                        "(add a rate in messages per second)", r->burst);
    return MRB_OK;
}

void mrb_route_free(mrb_route *r)
{
    free(r->mqtt);
    free(r->redis);
    free(r->hash);
    r->mqtt = r->redis = r->hash = NULL;
}

mrb_err mrb_route_copy(mrb_route *dst, const mrb_route *src)
{
    *dst = *src;
    dst->mqtt = strdup(src->mqtt);
    dst->redis = strdup(src->redis);
    dst->hash = src->hash ? strdup(src->hash) : NULL;
    if (!dst->mqtt || !dst->redis || (src->hash && !dst->hash)) {
        mrb_route_free(dst);
        return MRB_ERR_NOMEM;
    }
    return MRB_OK;
}

/* "name=N" with N a decimal integer in 0..LONG_MAX: 1 and *v set. */
static int long_opt(const char *tok, const char *name, long *v)
{
    size_t n = strlen(name);
    char *end = NULL;
    if (strncmp(tok, name, n) != 0 || tok[n] != '=' || tok[n + 1] < '0' ||
        tok[n + 1] > '9')
        return 0;
    errno = 0;
    long x = strtol(tok + n + 1, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    *v = x;
    return 1;
}

mrb_err mrb_route_parse_spec(const char *spec, mrb_route *out, char *msg,
                             size_t msglen)
{
    const mrb_err E = MRB_ERR_INVALID;
    char *copy = strdup(spec), *save = NULL;
    char *tok[16];
    int n = 0;
    if (!copy)
        return MRB_ERR_NOMEM;
    for (char *t = strtok_r(copy, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        if (n == 16) {
            free(copy);
            return mrb_fail(E, msg, msglen, "too many words");
        }
        tok[n++] = t;
    }
    memset(out, 0, sizeof(*out));
    out->qos = 1;
    out->maxlen = MRB_MAXLEN_DEFAULT;
    mrb_err err = MRB_OK;
    if (n < 3) {
        err = mrb_fail(E, msg, msglen,
                       "expected 'MQTT_FILTER ARROW REDIS_PATTERN [qos=N] "
                       "[retain] [stream] [maxlen=N] [hash=NAME] [envelope=json] "
                       "[unwrap] [rate=N] [burst=N]' with ARROW one of <>, >, <");
        goto out;
    }
    if (strcmp(tok[1], "<>") == 0)
        out->dir = MRB_DIR_BOTH;
    else if (strcmp(tok[1], ">") == 0)
        out->dir = MRB_DIR_MQTT_TO_REDIS;
    else if (strcmp(tok[1], "<") == 0)
        out->dir = MRB_DIR_REDIS_TO_MQTT;
    else {
        err = mrb_fail(E, msg, msglen,
                       "unknown arrow \"%s\" (allowed: <> both ways, > MQTT to "
                       "Redis, < Redis to MQTT)", tok[1]);
        goto out;
    }
    const char *hash = NULL;
    for (int i = 3; i < n; i++) {
        if (long_opt(tok[i], "maxlen", &out->maxlen) ||
            long_opt(tok[i], "rate", &out->rate) ||
            long_opt(tok[i], "burst", &out->burst)) {
            /* range checked below */
        } else if (strcmp(tok[i], "store=hash") == 0) {
            out->store = MRB_STORE_HASH;
        } else if (strcmp(tok[i], "store=none") == 0) {
            out->store = MRB_STORE_NONE;
        } else if (strncmp(tok[i], "hash=", 5) == 0 && tok[i][5]) {
            out->store = MRB_STORE_HASH;
            hash = tok[i] + 5;
        } else if (strcmp(tok[i], "envelope=json") == 0) {
            out->envelope = MRB_ENVELOPE_JSON;
        } else if (strcmp(tok[i], "envelope=none") == 0) {
            out->envelope = MRB_ENVELOPE_NONE;
        } else if (strcmp(tok[i], "unwrap") == 0) {
            out->unwrap = 1;
        } else if (strcmp(tok[i], "retain") == 0) {
            out->retain = 1;
        } else if (strcmp(tok[i], "stream") == 0) {
            out->mode = MRB_MODE_STREAM;
        } else if (strncmp(tok[i], "qos=", 4) == 0 && tok[i][4] >= '0' &&
                   tok[i][4] <= '9' && tok[i][5] == '\0') {
            out->qos = tok[i][4] - '0';
        } else {
            err = mrb_fail(E, msg, msglen,
                           "unknown option \"%s\" (allowed: qos=0, qos=1, "
                           "qos=2, retain, stream, maxlen=N, store=hash, "
                           "hash=NAME, envelope=json, envelope=none, unwrap, "
                           "rate=N, burst=N)", tok[i]);
            goto out;
        }
    }
    out->mqtt = strdup(tok[0]);
    out->redis = strdup(tok[2]);
    out->hash = hash ? strdup(hash) : NULL;
    if (!out->mqtt || !out->redis || (hash && !out->hash))
        err = MRB_ERR_NOMEM;
    else
        err = mrb_route_check(out, msg, msglen);
out:
    if (err != MRB_OK)
        mrb_route_free(out);
    free(copy);
    return err;
}

void mrb_route_format(const mrb_route *r, char *buf, size_t buflen)
{
    int n;
    if (r->mode == MRB_MODE_STREAM)
        n = snprintf(buf, buflen, "%s %s %s qos=%d%s stream maxlen=%ld", r->mqtt,
                     mrb_direction_arrow(r->dir), r->redis, r->qos,
                     r->retain ? " retain" : "", r->maxlen);
    else
        n = snprintf(buf, buflen, "%s %s %s qos=%d%s", r->mqtt,
                     mrb_direction_arrow(r->dir), r->redis, r->qos,
                     r->retain ? " retain" : "");
    size_t o = n > 0 ? (size_t)n : 0;
    if (o >= buflen)
        return;
    if (r->store == MRB_STORE_HASH)
        o += (size_t)snprintf(buf + o, buflen - o, " store=hash hash=%s",
                              r->hash ? r->hash : "");
    if (o < buflen && r->envelope != MRB_ENVELOPE_NONE)
        o += (size_t)snprintf(buf + o, buflen - o, " envelope=%s",
                              mrb_envelope_name(r->envelope));
    if (o < buflen && r->unwrap)
        o += (size_t)snprintf(buf + o, buflen - o, " unwrap");
    if (o < buflen && r->rate > 0)
        snprintf(buf + o, buflen - o, " rate=%ld burst=%ld", r->rate,
                 r->burst > 0 ? r->burst : r->rate);
}

/* ------------------------------------------------------------------------ */

/* Append n bytes to out, translating separator a to b (0 = no translation). */
static int put(char *out, size_t outlen, size_t *o, const char *s, size_t n,
               char a, char b)
{
    if (outlen - *o < n)
        return -1;
    for (size_t i = 0; i < n; i++)
        out[*o + i] = (a && s[i] == a) ? b : s[i];
    *o += n;
    return 0;
}

mrb_err mrb_route_map_to_redis(const mrb_route *r, const char *topic,
                               size_t len, char *out, size_t outlen,
                               size_t *outn)
{
    span cap[MRB_WILDCARDS_MAX];
    char kind[MRB_WILDCARDS_MAX];
    int ncap, parent;
    if (!filter_walk(r->mqtt, topic, len, cap, kind, &ncap, &parent) || parent)
        return MRB_ERR_NOMATCH;
    size_t o = 0;
    int k = 0;
    for (const char *p = r->redis; *p; p++) {
        int rc;
        if (*p == '*') {
            rc = put(out, outlen, &o, topic + cap[k].off, cap[k].len,
                     kind[k] == '#' ? '/' : 0, ':');
            k++;
        } else {
            rc = put(out, outlen, &o, p, 1, 0, 0);
        }
        if (rc)
            return MRB_ERR_FULL;
    }
    *outn = o;
    return MRB_OK;
}

mrb_err mrb_route_hash_field(const mrb_route *r, const char *topic, size_t len,
                             char *out, size_t outlen, size_t *outn)
{
    span cap[MRB_WILDCARDS_MAX];
    char kind[MRB_WILDCARDS_MAX];
    int ncap, parent;
    if (!filter_walk(r->mqtt, topic, len, cap, kind, &ncap, &parent) || parent)
        return MRB_ERR_NOMATCH;
    size_t o = 0;
    if (ncap == 0 && put(out, outlen, &o, topic, len, 0, 0))
        return MRB_ERR_FULL;
    for (int k = 0; k < ncap && k < MRB_WILDCARDS_MAX; k++)
        if ((k > 0 && put(out, outlen, &o, "/", 1, 0, 0)) ||
            put(out, outlen, &o, topic + cap[k].off, cap[k].len, 0, 0))
            return MRB_ERR_FULL;
    *outn = o;
    return MRB_OK;
}

typedef struct glob_ctx {
    const mrb_route *r;
    const char *s;
    size_t len;
    span cap[MRB_WILDCARDS_MAX];
    long steps;
    char *out;
    size_t outlen, outn;
    int full;
} glob_ctx;

/* Build the MQTT topic for the current captures; 1 if it is a valid topic
 * that the route's filter matches. */
static int glob_build(glob_ctx *g)
{
    size_t o = 0;
    int k = 0;
    for (const char *f = g->r->mqtt; *f; f++) {
        int wild = (*f == '+' || *f == '#') && (f == g->r->mqtt || f[-1] == '/');
        int rc;
        if (wild) {
            const span *c = &g->cap[k++];
            /* '/' is MQTT's level separator: a Redis name carrying one
             * inside a capture has no faithful MQTT spelling */
            if (memchr(g->s + c->off, '/', c->len))
                return 0;
            rc = put(g->out, g->outlen, &o, g->s + c->off, c->len,
                     *f == '#' ? ':' : 0, '/');
        } else {
            rc = put(g->out, g->outlen, &o, f, 1, 0, 0);
        }
        if (rc) {
            g->full = 1;
            return 0;
        }
    }
    if (!mrb_topic_valid(g->out, o) || !mrb_filter_matches(g->r->mqtt, g->out, o))
        return 0;
    g->outn = o;
    return 1;
}

/* Match pattern p against s from si, k-th '*' next; shortest captures first,
 * backtracking when the topic they make is not valid. 1 found, 0 not, -1
 * budget spent. */
static int glob_capture(glob_ctx *g, const char *p, size_t si, int k)
{
    if (++g->steps > GLOB_STEP_BUDGET)
        return -1;
    while (*p && *p != '*') {
        if (si >= g->len || g->s[si] != *p)
            return 0;
        p++;
        si++;
    }
    if (!*p)
        return si == g->len ? glob_build(g) : 0;
    p++;
    size_t first = si, last = g->len;
    if (!*p)
        first = g->len; /* a trailing '*' takes the rest */
    for (size_t end = first; end <= last; end++) {
        if (*p && (end >= g->len || g->s[end] != *p))
            continue; /* the literal after '*' must start here */
        g->cap[k].off = si;
        g->cap[k].len = end - si;
        int rc = glob_capture(g, p, end, k + 1);
        if (rc != 0)
            return rc;
    }
    return 0;
}

mrb_err mrb_route_map_to_mqtt(const mrb_route *r, const char *channel,
                              size_t len, char *out, size_t outlen,
                              size_t *outn)
{
    glob_ctx g = {.r = r, .s = channel, .len = len, .out = out, .outlen = outlen};
    if (glob_capture(&g, r->redis, 0, 0) != 1)
        return g.full ? MRB_ERR_FULL : MRB_ERR_NOMATCH;
    *outn = g.outn;
    return MRB_OK;
}
