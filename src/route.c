/*
 * route.c - route checking, topic/channel matching and mapping, and the route
 * table with its subscription lists (see mrb/route.h for the rules).
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


/* ---- indexes: candidates by first level ---------------------------------
 *
 * A message name can only match a filter or pattern whose first level (MQTT,
 * up to '/') or first segment (Redis, up to ':') is literal and equal to the
 * name's own, or one whose first level is a wildcard ("wild"). So each index
 * maps a literal first level to the ascending list of entries having it, and
 * keeps the wild entries apart; a lookup merges the two lists in ascending
 * order. The first match, and the order of targets, are the same as a scan
 * over all entries, at a cost independent of the number of entries with
 * other first levels.
 *   MQTT filter: keyed by its first level unless that is '+' or '#'.
 *   Redis pattern: keyed by the text before its first ':' if that ':' comes
 *   before any '*' (or there is no '*' and no ':': the whole exact name);
 *   otherwise wild ("us*" may match "user:1" and "usa").
 */
typedef struct ix_slot {
    const char *key; /* NULL: empty slot */
    size_t klen;
    size_t *v, n;
} ix_slot;

struct mrb_rindex {
    ix_slot *slot;
    size_t mask;      /* slot count - 1 (a power of two) */
    size_t *wild, nwild;
};

static uint64_t ix_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211u;
    return h;
}

/* The key of a name: its first level/segment, length in *klen. */
static const char *name_key(const char *s, size_t len, char sep, size_t *klen)
{
    const char *e = memchr(s, sep, len);
    *klen = e ? (size_t)(e - s) : len;
    return s;
}

/* The key of a filter/pattern, or NULL if it is wild. */
static const char *entry_key(const char *s, char sep, size_t *klen)
{
    size_t len = strlen(s);
    name_key(s, len, sep, klen);
    if (sep == '/')
        return (*klen == 1 && (s[0] == '+' || s[0] == '#')) ? NULL : s;
    const char *star = strchr(s, '*');
    return (!star || (size_t)(star - s) > *klen) ? s : NULL;
}

static ix_slot *ix_find(const struct mrb_rindex *x, const char *k, size_t klen)
{
    /* masked by a size_t: the slot index fits one on every target */
    for (size_t i = (size_t)(ix_hash(k, klen) & x->mask);; i = (i + 1) & x->mask) {
        ix_slot *sl = &x->slot[i];
        if (!sl->key || (sl->klen == klen && memcmp(sl->key, k, klen) == 0))
            return sl;
    }
}

static void ix_free(struct mrb_rindex *x)
{
    if (!x)
        return;
    for (size_t i = 0; x->slot && i <= x->mask; i++)
        free(x->slot[i].v);
    free(x->slot);
    free(x->wild);
    free(x);
}

/* Index n entries, the i-th named name(ctx, i) (NULL: not indexed). The
 * names must outlive the index. */
static struct mrb_rindex *ix_build(size_t n, char sep,
                                   const char *(*name)(const void *, size_t),
                                   const void *ctx)
{
    struct mrb_rindex *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    size_t ns = 8;
    while (ns < 2 * n)
        ns *= 2;
    x->mask = ns - 1;
    x->slot = calloc(ns, sizeof(*x->slot));
    x->wild = calloc(n ? n : 1, sizeof(*x->wild));
    if (!x->slot || !x->wild)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const char *s = name(ctx, i);
        if (!s)
            continue;
        size_t klen;
        const char *k = entry_key(s, sep, &klen);
        if (!k) {
            x->wild[x->nwild++] = i;
            continue;
        }
        ix_slot *sl = ix_find(x, k, klen);
        size_t *v = realloc(sl->v, (sl->n + 1) * sizeof(*v));
        if (!v)
            goto nomem;
        sl->key = k;
        sl->klen = klen;
        sl->v = v;
        sl->v[sl->n++] = i;
    }
    return x;
nomem:
    ix_free(x);
    return NULL;
}

/* Ascending merge of the keyed and the wild candidates of one name. */
typedef struct ix_iter {
    const size_t *a, *b;
    size_t na, nb, ia, ib;
} ix_iter;

static void ix_lookup(const struct mrb_rindex *x, const char *s, size_t len,
                      char sep, ix_iter *it)
{
    size_t klen;
    const char *k = name_key(s, len, sep, &klen);
    const ix_slot *sl = ix_find(x, k, klen);
    *it = (ix_iter){.a = sl->v, .na = sl->key ? sl->n : 0, .b = x->wild,
                    .nb = x->nwild};
}

static int ix_next(ix_iter *it, size_t *out)
{
    if (it->ia < it->na && (it->ib >= it->nb || it->a[it->ia] < it->b[it->ib]))
        *out = it->a[it->ia++];
    else if (it->ib < it->nb)
        *out = it->b[it->ib++];
    else
        return 0;
    return 1;
}

static const char *route_mqtt_name(const void *ctx, size_t i)
{
    const mrb_route *r = &((const mrb_routes *)ctx)->route[i];
    return r->dir == MRB_DIR_REDIS_TO_MQTT ? NULL : r->mqtt;
}

static const char *route_redis_name(const void *ctx, size_t i)
{
    const mrb_route *r = &((const mrb_routes *)ctx)->route[i];
    return r->dir == MRB_DIR_MQTT_TO_REDIS ? NULL : r->redis;
}

static const char *mqtt_sub_name(const void *ctx, size_t i)
{
    return ((const mrb_routes *)ctx)->mqtt_sub[i].name;
}

static const char *redis_sub_name(const void *ctx, size_t i)
{
    return ((const mrb_routes *)ctx)->redis_sub[i].name;
}

static mrb_err routes_index(mrb_routes *t)
{
    t->ix_route_mqtt = ix_build(t->n, '/', route_mqtt_name, t);
    t->ix_route_redis = ix_build(t->n, ':', route_redis_name, t);
    t->ix_mqtt_sub = ix_build(t->n_mqtt_sub, '/', mqtt_sub_name, t);
    t->ix_redis_sub = ix_build(t->n_redis_sub, ':', redis_sub_name, t);
    return t->ix_route_mqtt && t->ix_route_redis && t->ix_mqtt_sub && t->ix_redis_sub
               ? MRB_OK
               : MRB_ERR_NOMEM;
}

/* ------------------------------------------------------------------------ */

static void subs_free(mrb_sub *s, size_t n)
{
    if (!s) /* a table whose build failed part-way */
        return;
    for (size_t i = 0; i < n; i++)
        free(s[i].name);
    free(s);
}

void mrb_routes_free(mrb_routes *t)
{
    for (size_t i = 0; i < t->n; i++)
        mrb_route_free(&t->route[i]);
    free(t->route);
    subs_free(t->mqtt_sub, t->n_mqtt_sub);
    subs_free(t->redis_sub, t->n_redis_sub);
    subs_free(t->stream_sub, t->n_stream_sub);
    ix_free(t->ix_route_mqtt);
    ix_free(t->ix_route_redis);
    ix_free(t->ix_mqtt_sub);
    ix_free(t->ix_redis_sub);
    memset(t, 0, sizeof(*t));
}

static mrb_err sub_add(mrb_sub *subs, size_t *n, const char *name, int qos,
                       int exact, int retained)
{
    for (size_t i = 0; i < *n; i++) {
        /* entries below *n were filled by strdup below; the analyzer does
         * not tie the count to them */
        if (strcmp(subs[i].name, name) == 0) { // NOLINT(clang-analyzer-core.NonNullParamChecker)
            if (qos > subs[i].qos)
                subs[i].qos = qos;
            subs[i].retained |= retained;
            return MRB_OK;
        }
    }
    if (!(subs[*n].name = strdup(name)))
        return MRB_ERR_NOMEM;
    subs[*n].qos = qos;
    subs[*n].exact = exact;
    subs[*n].retained = retained;
    (*n)++;
    return MRB_OK;
}

/* MQTT 5 Subscription Identifiers are 1 .. 268,435,455; the largest is the
 * replay topic's (MRB_REPLAY_SUB_ID in bridge_int.h). */
#define SUB_ID_MAX 268435454u

static int sub_id_used(const mrb_sub *subs, size_t n, unsigned id)
{
    for (size_t i = 0; i < n; i++)
        if (subs[i].id == id)
            return 1;
    return 0;
}

/* Order subs: those prev also has first, in prev's order and with prev's
 * id; then the new ones in their own order (fresh, if there is a prev).
 * A new id is derived from the name (FNV-1a), so that the same filter gets
 * the same id in every run: messages a persistent session queued while
 * the bridge was away carry the ids of the run that subscribed. Two names
 * with one hash (rare) take the next free id in table order. */
static void subs_order(mrb_sub *subs, size_t n, const mrb_sub *prev, size_t np)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        subs[i].id = 0;
        subs[i].fresh = prev != NULL;
    }
    for (size_t j = 0; j < np; j++) {
        for (size_t i = k; i < n; i++) {
            if (strcmp(subs[i].name, prev[j].name) == 0) {
                mrb_sub tmp = subs[i];
                memmove(&subs[k + 1], &subs[k], (i - k) * sizeof(*subs));
                subs[k] = tmp;
                subs[k].fresh = 0;
                subs[k++].id = prev[j].id;
                break;
            }
        }
    }
    for (size_t i = k; i < n; i++) {
        uint32_t h = 2166136261u;
        /* entries below n have a name (sub_add); see there */
        for (const char *c = subs[i].name; *c; c++) // NOLINT(clang-analyzer-core.NullDereference)
            h = (h ^ (uint8_t)*c) * 16777619u;
        unsigned id = h % SUB_ID_MAX + 1;
        while (sub_id_used(subs, n, id))
            id = id % SUB_ID_MAX + 1;
        subs[i].id = id;
    }
}

mrb_err mrb_routes_build(mrb_routes *t, const mrb_route *routes, size_t n)
{
    return mrb_routes_build_from(t, routes, n, NULL);
}

mrb_err mrb_routes_build_from(mrb_routes *t, const mrb_route *routes, size_t n,
                              const mrb_routes *prev)
{
    memset(t, 0, sizeof(*t));
    t->route = calloc(n ? n : 1, sizeof(*t->route));
    t->mqtt_sub = calloc(n ? n : 1, sizeof(*t->mqtt_sub));
    t->redis_sub = calloc(n ? n : 1, sizeof(*t->redis_sub));
    t->stream_sub = calloc(n ? n : 1, sizeof(*t->stream_sub));
    if (!t->route || !t->mqtt_sub || !t->redis_sub || !t->stream_sub)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        if (mrb_route_copy(&t->route[i], &routes[i]) != MRB_OK)
            goto nomem;
        t->n++;
    }
    for (size_t i = 0; i < n; i++) {
        const mrb_route *r = &t->route[i];
        if (r->dir != MRB_DIR_REDIS_TO_MQTT &&
            sub_add(t->mqtt_sub, &t->n_mqtt_sub, r->mqtt, r->qos, 0,
                    r->store != MRB_STORE_NONE))
            goto nomem;
    }
    /* Exact channels first: Redis sends a channel's subscribers their copy
     * before the pattern subscribers theirs, and the canonical subscription
     * is the first one that matches. (After a reload, new subscriptions
     * follow the ones already held, exact or not: subs_order.) */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const mrb_route *r = &t->route[i];
            int exact = strchr(r->redis, '*') == NULL;
            if (r->dir == MRB_DIR_MQTT_TO_REDIS || exact != (pass == 0))
                continue;
            if (r->mode == MRB_MODE_STREAM
                    ? sub_add(t->stream_sub, &t->n_stream_sub, r->redis, 0, exact, 0)
                    : sub_add(t->redis_sub, &t->n_redis_sub, r->redis, 0, exact, 0))
                goto nomem;
        }
    }
    subs_order(t->mqtt_sub, t->n_mqtt_sub, prev ? prev->mqtt_sub : NULL,
               prev ? prev->n_mqtt_sub : 0);
    subs_order(t->redis_sub, t->n_redis_sub, prev ? prev->redis_sub : NULL,
               prev ? prev->n_redis_sub : 0);
    subs_order(t->stream_sub, t->n_stream_sub, prev ? prev->stream_sub : NULL,
               prev ? prev->n_stream_sub : 0);
    if (routes_index(t) != MRB_OK)
        goto nomem;
    return MRB_OK;
nomem:
    mrb_routes_free(t);
    return MRB_ERR_NOMEM;
}

size_t mrb_routes_mqtt_canonical(const mrb_routes *t, const char *topic,
                                 size_t len)
{
    ix_iter it;
    size_t i;
    ix_lookup(t->ix_mqtt_sub, topic, len, '/', &it);
    while (ix_next(&it, &i))
        if (mrb_filter_matches(t->mqtt_sub[i].name, topic, len))
            return i;
    return MRB_NO_SUB;
}

int mrb_routes_mqtt_is_copy(const mrb_routes *t, const char *topic, size_t len,
                            const unsigned *ids, size_t n_ids)
{
    ix_iter it;
    size_t i;
    int first = 1, known = 0;
    ix_lookup(t->ix_mqtt_sub, topic, len, '/', &it);
    while (ix_next(&it, &i)) {
        if (!mrb_filter_matches(t->mqtt_sub[i].name, topic, len))
            continue;
        for (size_t k = 0; k < n_ids; k++) {
            if (ids[k] == t->mqtt_sub[i].id) {
                if (first)
                    return 0; /* it carries the canonical subscription */
                known = 1;
            }
        }
        first = 0;
    }
    return known;
}

size_t mrb_routes_redis_canonical(const mrb_routes *t, const char *channel,
                                  size_t len)
{
    ix_iter it;
    size_t i;
    ix_lookup(t->ix_redis_sub, channel, len, ':', &it);
    while (ix_next(&it, &i)) {
        const mrb_sub *s = &t->redis_sub[i];
        if (s->exact ? (strlen(s->name) == len && memcmp(s->name, channel, len) == 0)
                     : mrb_glob_matches(s->name, channel, len))
            return i;
    }
    return MRB_NO_SUB;
}

int mrb_routes_mqtt_stores(const mrb_routes *t, const char *topic, size_t len)
{
    /* store routes are few: a plain scan */
    for (size_t i = 0; i < t->n; i++) {
        const mrb_route *r = &t->route[i];
        if (r->store != MRB_STORE_NONE && r->dir != MRB_DIR_REDIS_TO_MQTT &&
            mrb_filter_matches(r->mqtt, topic, len))
            return 1;
    }
    return 0;
}

/* A subscription name is found under its own key (an exact name is its own
 * only match; a pattern's key is the first segment of the pattern itself). */
size_t mrb_routes_redis_sub_index(const mrb_routes *t, const char *name,
                                  size_t len)
{
    ix_iter it;
    size_t i;
    ix_lookup(t->ix_redis_sub, name, len, ':', &it);
    while (ix_next(&it, &i))
        if (strlen(t->redis_sub[i].name) == len &&
            memcmp(t->redis_sub[i].name, name, len) == 0)
            return i;
    return MRB_NO_SUB;
}

void mrb_targets_free(mrb_targets *tg)
{
    free(tg->buf);
    free(tg->v);
    memset(tg, 0, sizeof(*tg));
}

/* Room for one more name of up to need bytes, growing the buffers. */
static mrb_err targets_reserve(mrb_targets *tg, size_t need)
{
    if (tg->n == tg->vcap) {
        size_t nc = tg->vcap ? tg->vcap * 2 : 8;
        mrb_target *v = realloc(tg->v, nc * sizeof(*v));
        if (!v)
            return MRB_ERR_NOMEM;
        tg->v = v;
        tg->vcap = nc;
    }
    if (tg->cap - tg->used < need) {
        size_t nc = tg->cap ? tg->cap : 256;
        while (nc - tg->used < need)
            nc *= 2;
        char *b = realloc(tg->buf, nc);
        if (!b)
            return MRB_ERR_NOMEM;
        tg->buf = b;
        tg->cap = nc;
    }
    return MRB_OK;
}

/* Keep the name just written at buf+used unless an earlier target of the
 * same mode has it. */
static void targets_commit(const mrb_routes *t, mrb_targets *tg, size_t len,
                           size_t route)
{
    const char *name = tg->buf + tg->used;
    for (size_t i = 0; i < tg->n; i++)
        if (tg->v[i].len == len && memcmp(tg->buf + tg->v[i].off, name, len) == 0 &&
            t->route[tg->v[i].route].mode == t->route[route].mode)
            return;
    tg->v[tg->n].off = tg->used;
    tg->v[tg->n].len = len;
    tg->v[tg->n].route = route;
    tg->n++;
    tg->used += len;
}

/* mode: only routes of this mode, or -1 for all */
static mrb_err map_all(const mrb_routes *t, const struct mrb_rindex *ix, char sep,
                       const char *name, size_t len,
                       mrb_targets *tg, mrb_direction skip, int mode,
                       mrb_err (*map)(const mrb_route *, const char *, size_t,
                                      char *, size_t, size_t *),
                       int (*matches)(const mrb_route *, const char *, size_t))
{
    ix_iter it;
    size_t i;
    tg->n = tg->used = tg->unmappable = 0;
    ix_lookup(ix, name, len, sep, &it);
    while (ix_next(&it, &i)) {
        const mrb_route *r = &t->route[i];
        if (r->dir == skip || (mode >= 0 && (int)r->mode != mode) ||
            !matches(r, name, len))
            continue;
        /* a mapped name is the pattern's literals plus the captures, and a
         * '#' capture only changes separators, so this bound is exact */
        size_t need = len + strlen(r->mqtt) + strlen(r->redis) + 1;
        if (targets_reserve(tg, need) != MRB_OK)
            return MRB_ERR_NOMEM;
        size_t n;
        if (map(r, name, len, tg->buf + tg->used, tg->cap - tg->used, &n) != MRB_OK) {
            tg->unmappable++;
            continue;
        }
        targets_commit(t, tg, n, i);
    }
    return MRB_OK;
}

static int route_matches_mqtt(const mrb_route *r, const char *s, size_t len)
{
    return mrb_filter_matches(r->mqtt, s, len);
}

static int route_matches_redis(const mrb_route *r, const char *s, size_t len)
{
    return mrb_glob_matches(r->redis, s, len);
}

mrb_err mrb_routes_map_mqtt(const mrb_routes *t, const char *topic, size_t len,
                            mrb_targets *tg)
{
    return map_all(t, t->ix_route_mqtt, '/', topic, len, tg, MRB_DIR_REDIS_TO_MQTT, -1,
                   mrb_route_map_to_redis, route_matches_mqtt);
}

mrb_err mrb_routes_map_redis(const mrb_routes *t, mrb_mode mode,
                             const char *name, size_t len, mrb_targets *tg)
{
    return map_all(t, t->ix_route_redis, ':', name, len, tg, MRB_DIR_MQTT_TO_REDIS,
                   (int)mode,
                   mrb_route_map_to_mqtt, route_matches_redis);
}
