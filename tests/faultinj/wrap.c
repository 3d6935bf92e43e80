/*
 * wrap.c - fault injection for the tests: makes chosen library calls fail.
 *
 * mqtt-redis-bridge-faultinj is the bridge (src/main.c and mrbio) linked
 * with this file and
 *     -Wl,--wrap=redisAppendCommandArgv,--wrap=MQTTAsync_sendMessage,
 *            --wrap=MQTTProperties_add,--wrap=redisAsyncCommand
 * so that the bridge's calls of these four functions come here. Without
 * MRB_FAULTINJ every call goes on to the real function (redisAsyncCommand
 * to redisvAsyncCommand, which is what the real one does too). With it, a
 * call that a rule selects fails the way it would when the library runs
 * out of memory: it returns REDIS_ERR, MQTTASYNC_FAILURE or -1 without
 * calling the real function, so nothing is queued, sent or added. Nothing
 * else is changed: the bridge runs with the real libraries against real
 * servers. Tests only; never installed (tests/integration/test_faultinj.py).
 *
 * MRB_FAULTINJ = RULE[;RULE...]
 * RULE         = FUNCTION[,KEY=VALUE...]
 * FUNCTION     = redisAppendCommandArgv | redisAsyncCommand |
 *                MQTTAsync_sendMessage | MQTTProperties_add
 * KEY:
 *   match=TEXT  only calls whose description (below) contains TEXT (case
 *               matters; TEXT may hold spaces and ':', not ',' or ';')
 *   after=N     the first N calls that match go through (default 0)
 *   every=N     of the matching calls after those, the Nth, 2Nth, 3Nth ...
 *               fail (default 1: each of them)
 *   count=N     at most N calls fail (default 0: no limit)
 *   nth=N       only the Nth matching call fails: after=N-1,count=1
 *   rc=N        the value a failed call returns instead of the default
 *               (REDIS_ERR; MQTTASYNC_FAILURE; -1)
 *   oom=1       redisAppendCommandArgv only: also set the context's error
 *               as hiredis does when its allocation fails (err
 *               REDIS_ERR_OOM, errstr "Out of memory"); the context then
 *               refuses to read and write, as after a real out of memory.
 *               Default 0: only the return value is forced.
 * Descriptions (cut at 255 bytes):
 *   redisAppendCommandArgv  the arguments joined by spaces ("XADD s:a MAXLEN ~ ...")
 *   redisAsyncCommand       the command as hiredis formats it, its arguments
 *                           joined by spaces ("CLIENT SETNAME mrb:id:publisher")
 *   MQTTAsync_sendMessage   the topic, a space, the payload ("bridge/id/status online")
 *   MQTTProperties_add      Paho's name of the property, and "=value" for an
 *                           integer one ("SUBSCRIPTION_IDENTIFIER=42")
 * Each rule counts the calls of its function that match it, independently
 * of the other rules; a call fails if any rule selects it. Example:
 *   MRB_FAULTINJ='redisAppendCommandArgv,every=7;MQTTAsync_sendMessage,match=/status online,count=2'
 * A malformed MRB_FAULTINJ makes the program exit 2 at start-up (no test
 * runs with a rule silently ignored).
 *
 * MRB_FAULTINJ_REPORT=1: at exit, lines on stderr (after the bridge's own):
 *   faultinj: FUNCTION calls=N failed=K
 * for each of the four functions, and for each rule
 *   faultinj: rule I FUNCTION matched=N failed=K
 * MRB_FAULTINJ_REPORT=2: also, at once, one line per failed call:
 *   faultinj: failing FUNCTION call N: DESCRIPTION
 *
 * Thread-safe: the bridge's main thread, its ingest thread and Paho's
 * threads call these. The rules are parsed before main (a constructor);
 * after that only atomics change; each report line is one write(2).
 */
#include <MQTTAsync.h>
#include <MQTTProperties.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { F_APPEND, F_ASYNC, F_SEND, F_PROP, F_N };
static const char *const fname[F_N] = {"redisAppendCommandArgv", "redisAsyncCommand",
                                       "MQTTAsync_sendMessage", "MQTTProperties_add"};

#define MAX_RULES 16
#define DESC_MAX 256

typedef struct rule {
    int fn;
    char match[DESC_MAX];
    unsigned long after, every, count;
    int rc, has_rc, oom;
    atomic_ulong matched, failed;
} rule;

static rule rules[MAX_RULES];
static int n_rules;
static int report_level;
static atomic_ulong calls[F_N], failed[F_N];

/* the real functions (--wrap); redisAsyncCommand's is redisvAsyncCommand */
int __real_redisAppendCommandArgv(redisContext *c, int argc, const char **argv,
                                  const size_t *argvlen);
int __real_MQTTAsync_sendMessage(MQTTAsync handle, const char *destinationName,
                                 const MQTTAsync_message *msg,
                                 MQTTAsync_responseOptions *response);
int __real_MQTTProperties_add(MQTTProperties *props, const MQTTProperty *prop);

int __wrap_redisAppendCommandArgv(redisContext *c, int argc, const char **argv,
                                  const size_t *argvlen);
int __wrap_redisAsyncCommand(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                             const char *format, ...);
int __wrap_MQTTAsync_sendMessage(MQTTAsync handle, const char *destinationName,
                                 const MQTTAsync_message *msg,
                                 MQTTAsync_responseOptions *response);
int __wrap_MQTTProperties_add(MQTTProperties *props, const MQTTProperty *prop);

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[DESC_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(2, line, len);
    (void)w;
}

static void bad_spec(const char *spec, const char *why)
{
    fprintf(stderr, "faultinj: MRB_FAULTINJ %s: '%s'\n", why, spec);
    exit(2);
}

static unsigned long number(const char *spec, const char *v, int allow_neg, int *neg)
{
    char *end;
    *neg = 0;
    if (allow_neg && *v == '-') {
        *neg = 1;
        v++;
    }
    if (*v < '0' || *v > '9')
        bad_spec(spec, "expects a number");
    unsigned long n = strtoul(v, &end, 10);
    if (*end)
        bad_spec(spec, "expects a number");
    return n;
}

/* one rule: FUNCTION[,KEY=VALUE...] (spec is modified) */
static void parse_rule(char *spec)
{
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", spec);
    if (n_rules == MAX_RULES)
        bad_spec(copy, "has too many rules");
    rule *r = &rules[n_rules];
    memset(r, 0, sizeof(*r));
    r->fn = -1;
    r->every = 1;
    char *save = NULL;
    char *tok = strtok_r(spec, ",", &save);
    for (int i = 0; tok && i < F_N; i++)
        if (strcmp(tok, fname[i]) == 0)
            r->fn = i;
    if (r->fn < 0)
        bad_spec(copy, "names no function this wrapper knows");
    int neg;
    while ((tok = strtok_r(NULL, ",", &save)) != NULL) {
        char *eq = strchr(tok, '=');
        if (!eq)
            bad_spec(copy, "has a field without '='");
        *eq = 0;
        const char *k = tok, *v = eq + 1;
        if (strcmp(k, "match") == 0) {
            if (strlen(v) >= sizeof(r->match))
                bad_spec(copy, "has a match text that is too long");
            snprintf(r->match, sizeof(r->match), "%s", v);
        } else if (strcmp(k, "after") == 0) {
            r->after = number(copy, v, 0, &neg);
        } else if (strcmp(k, "every") == 0) {
            r->every = number(copy, v, 0, &neg);
            if (r->every == 0)
                bad_spec(copy, "has every=0");
        } else if (strcmp(k, "count") == 0) {
            r->count = number(copy, v, 0, &neg);
        } else if (strcmp(k, "nth") == 0) {
            unsigned long n = number(copy, v, 0, &neg);
            if (n == 0)
                bad_spec(copy, "has nth=0 (the first call is nth=1)");
            r->after = n - 1;
            r->count = 1;
            r->every = 1;
        } else if (strcmp(k, "rc") == 0) {
            unsigned long n = number(copy, v, 1, &neg);
            r->rc = neg ? -(int)n : (int)n;
            r->has_rc = 1;
        } else if (strcmp(k, "oom") == 0) {
            r->oom = (int)number(copy, v, 0, &neg);
            if (r->oom && r->fn != F_APPEND)
                bad_spec(copy, "has oom=1 for a function other than redisAppendCommandArgv");
        } else {
            bad_spec(copy, "has an unknown key");
        }
    }
    n_rules++;
}

static void report(void)
{
    if (!report_level)
        return;
    for (int i = 0; i < F_N; i++)
        say("faultinj: %s calls=%lu failed=%lu", fname[i], atomic_load(&calls[i]),
            atomic_load(&failed[i]));
    for (int i = 0; i < n_rules; i++)
        say("faultinj: rule %d %s matched=%lu failed=%lu", i + 1, fname[rules[i].fn],
            atomic_load(&rules[i].matched), atomic_load(&rules[i].failed));
}

__attribute__((constructor)) static void faultinj_init(void)
{
    const char *rep = getenv("MRB_FAULTINJ_REPORT");
    report_level = rep ? atoi(rep) : 0;
    const char *env = getenv("MRB_FAULTINJ");
    if (env && *env) {
        size_t len = strlen(env);
        char *spec = malloc(len + 1);
        if (!spec)
            bad_spec("", "cannot be parsed: out of memory");
        memcpy(spec, env, len + 1);
        char *save = NULL;
        for (char *r = strtok_r(spec, ";", &save); r; r = strtok_r(NULL, ";", &save))
            if (*r)
                parse_rule(r);
        free(spec);
    }
    if (report_level)
        atexit(report);
}

/* Does a rule for function fn select this call (desc: its description)?
 * *which: the first rule that does (its rc= is returned). */
static int should_fail(int fn, const char *desc, rule **which)
{
    unsigned long n = atomic_fetch_add(&calls[fn], 1) + 1;
    int fail = 0;
    *which = NULL;
    for (int i = 0; i < n_rules; i++) {
        rule *r = &rules[i];
        if (r->fn != fn || (r->match[0] && !strstr(desc, r->match)))
            continue;
        unsigned long m = atomic_fetch_add(&r->matched, 1) + 1;
        if (m <= r->after || (m - r->after) % r->every != 0)
            continue;
        if (r->count) {
            /* claim one of the count failures */
            unsigned long f = atomic_load(&r->failed);
            int claimed = 0;
            while (f < r->count) {
                if (atomic_compare_exchange_weak(&r->failed, &f, f + 1)) {
                    claimed = 1;
                    break;
                }
            }
            if (!claimed)
                continue;
        } else {
            atomic_fetch_add(&r->failed, 1);
        }
        if (!fail)
            *which = r;
        fail = 1;
    }
    if (fail) {
        atomic_fetch_add(&failed[fn], 1);
        if (report_level >= 2)
            say("faultinj: failing %s call %lu: %s", fname[fn], n, desc);
    }
    return fail;
}

static int any_rule(int fn)
{
    for (int i = 0; i < n_rules; i++)
        if (rules[i].fn == fn)
            return 1;
    return 0;
}

/* argv joined by spaces into d (DESC_MAX), cut where it does not fit */
static void join_args(char *d, int argc, const char **argv, const size_t *lens)
{
    size_t n = 0;
    for (int i = 0; i < argc && n < DESC_MAX - 1; i++) {
        if (i)
            d[n++] = ' ';
        size_t l = lens ? lens[i] : strlen(argv[i]);
        for (size_t j = 0; j < l && n < DESC_MAX - 1; j++)
            d[n++] = argv[i][j] ? argv[i][j] : '.';
    }
    d[n] = 0;
}

/* a RESP command (as redisvFormatCommand makes it) as its arguments
 * joined by spaces */
static void resp_to_desc(char *d, const char *cmd, int len)
{
    const char *p = cmd, *end = cmd + len;
    size_t n = 0;
    int first = 1;
    if (p < end && *p == '*')
        p = memchr(p, '\n', (size_t)(end - p));
    p = p ? p + 1 : end;
    while (p < end && *p == '$' && n < DESC_MAX - 1) {
        long l = strtol(p + 1, NULL, 10);
        p = memchr(p, '\n', (size_t)(end - p));
        if (!p || l < 0 || p + 1 + l > end)
            break;
        p++;
        if (!first)
            d[n++] = ' ';
        first = 0;
        for (long j = 0; j < l && n < DESC_MAX - 1; j++)
            d[n++] = p[j] ? p[j] : '.';
        p += l + 2; /* and \r\n */
    }
    d[n] = 0;
}

int __wrap_redisAppendCommandArgv(redisContext *c, int argc, const char **argv,
                                  const size_t *argvlen)
{
    char desc[DESC_MAX] = "";
    rule *r;
    if (any_rule(F_APPEND))
        join_args(desc, argc, argv, argvlen);
    if (!should_fail(F_APPEND, desc, &r))
        return __real_redisAppendCommandArgv(c, argc, argv, argvlen);
    if (r->oom) { /* what hiredis's __redisSetError does */
        c->err = REDIS_ERR_OOM;
        snprintf(c->errstr, sizeof(c->errstr), "%s", "Out of memory");
    }
    return r->has_rc ? r->rc : REDIS_ERR;
}

int __wrap_redisAsyncCommand(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                             const char *format, ...)
{
    char desc[DESC_MAX] = "";
    va_list ap;
    rule *r;
    if (any_rule(F_ASYNC)) {
        char *cmd = NULL;
        va_start(ap, format);
        int len = redisvFormatCommand(&cmd, format, ap);
        va_end(ap);
        if (len > 0 && cmd)
            resp_to_desc(desc, cmd, len);
        if (cmd)
            redisFreeCommand(cmd);
    }
    if (should_fail(F_ASYNC, desc, &r))
        return r->has_rc ? r->rc : REDIS_ERR;
    va_start(ap, format);
    int status = redisvAsyncCommand(ac, fn, privdata, format, ap);
    va_end(ap);
    return status;
}

int __wrap_MQTTAsync_sendMessage(MQTTAsync handle, const char *destinationName,
                                 const MQTTAsync_message *msg,
                                 MQTTAsync_responseOptions *response)
{
    char desc[DESC_MAX] = "";
    rule *r;
    if (any_rule(F_SEND)) {
        const char *parts[2] = {destinationName ? destinationName : "",
                                msg && msg->payload ? (const char *)msg->payload : ""};
        size_t lens[2] = {strlen(parts[0]),
                          msg && msg->payload && msg->payloadlen > 0
                              ? (size_t)msg->payloadlen : 0};
        join_args(desc, 2, parts, lens);
    }
    if (should_fail(F_SEND, desc, &r))
        return r->has_rc ? r->rc : MQTTASYNC_FAILURE;
    return __real_MQTTAsync_sendMessage(handle, destinationName, msg, response);
}

int __wrap_MQTTProperties_add(MQTTProperties *props, const MQTTProperty *prop)
{
    char desc[DESC_MAX] = "";
    rule *r;
    if (any_rule(F_PROP) && prop) {
        const char *name = MQTTPropertyName(prop->identifier);
        int n = snprintf(desc, sizeof(desc), "%s", name ? name : "?");
        size_t off = n > 0 && (size_t)n < sizeof(desc) ? (size_t)n : 0;
        switch (MQTTProperty_getType(prop->identifier)) {
        case MQTTPROPERTY_TYPE_BYTE:
            snprintf(desc + off, sizeof(desc) - off, "=%u", (unsigned)prop->value.byte);
            break;
        case MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER:
            snprintf(desc + off, sizeof(desc) - off, "=%u",
                     (unsigned)prop->value.integer2);
            break;
        case MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER:
        case MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER:
            snprintf(desc + off, sizeof(desc) - off, "=%u",
                     (unsigned)prop->value.integer4);
            break;
        default:
            break;
        }
    }
    if (should_fail(F_PROP, desc, &r))
        return r->has_rc ? r->rc : -1;
    return __real_MQTTProperties_add(props, prop);
}
