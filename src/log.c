/* log.c - the logger (stderr, or syslog(3) with --syslog) and the rate
 * limiter for repeated warnings. */
#include "mrb/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

static volatile int log_level = MRB_LOG_INFO;
/* Set once by main before any other thread exists, read by all after. */
static int log_to_syslog;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

void mrb_log_set_level(mrb_log_level level) { log_level = (int)level; }
int mrb_log_enabled(mrb_log_level level) { return (int)level <= log_level; }

int mrb_log_level_parse(const char *s, mrb_log_level *out)
{
    for (int i = 0; i <= MRB_LOG_DEBUG; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (mrb_log_level)i;
            return 0;
        }
    }
    return -1;
}

const char *mrb_log_level_name(mrb_log_level level)
{
    return (unsigned)level <= MRB_LOG_DEBUG ? level_names[level] : "?";
}

void mrb_log_use_syslog(void)
{
    /* LOG_NDELAY: connect to /dev/log now, while the process may still
     * open files (before any sandboxing), not at the first line. */
    openlog("mqtt-redis-bridge", LOG_PID | LOG_NDELAY, LOG_DAEMON);
    log_to_syslog = 1;
}

void mrb_log_close(void)
{
    if (log_to_syslog) {
        closelog();
        log_to_syslog = 0;
    }
}

void mrb_log(mrb_log_level level, const char *fmt, ...)
{
    if (!mrb_log_enabled(level))
        return;

    char line[1024];
    int n = 0;
    if (!log_to_syslog) { /* syslog adds time, host, ident and PID itself */
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
        n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ldZ %s ",
                      ts.tv_nsec / 1000000L, mrb_log_level_name(level));
    }

    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2; /* truncated: keep the line a line */
    if (log_to_syslog) {
        /* glibc's syslog() is thread-safe (its own lock): one datagram
         * per line */
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        line[len] = '\0';
        syslog(prio[level], "%s", line);
        return;
    }
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

int mrb_ratelimit_allow(mrb_ratelimit *rl, int64_t now_ms, uint64_t *suppressed)
{
    if (rl->last_ms != 0 && now_ms - rl->last_ms < MRB_RATELIMIT_MS) {
        rl->suppressed++;
        return 0;
    }
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    rl->last_ms = now_ms;
    return 1;
}

int mrb_ratelimit_due(mrb_ratelimit *rl, int64_t now_ms, uint64_t *suppressed)
{
    if (rl->suppressed == 0 || now_ms - rl->last_ms < MRB_RATELIMIT_MS)
        return 0;
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    rl->last_ms = now_ms;
    return 1;
}

int64_t mrb_ratelimit_next_ms(const mrb_ratelimit *rl)
{
    return rl->suppressed ? rl->last_ms + MRB_RATELIMIT_MS : INT64_MAX;
}

void mrb_logbuf_add(mrb_logbuf *lb, mrb_log_level level, const char *fmt, ...)
{
    if (!mrb_log_enabled(level))
        return;
    if (lb->n >= MRB_LOGBUF_LINES) {
        lb->lost++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lb->line[lb->n], sizeof(lb->line[0]), fmt, ap);
    va_end(ap);
    lb->level[lb->n++] = level;
}

void mrb_logbuf_flush(mrb_logbuf *lb)
{
    for (int i = 0; i < lb->n; i++)
        mrb_log(lb->level[i], "%s", lb->line[i]);
    if (lb->lost)
        mrb_warn("(%u more log line(s) of this kind were not kept)", lb->lost);
    lb->n = 0;
    lb->lost = 0;
}

int64_t mrb_ratelimit_flush(mrb_ratelimit *rl, int64_t now_ms, mrb_logbuf *lb,
                            const char *what, const char *counter, uint64_t value)
{
    uint64_t sup;
    if (mrb_ratelimit_due(rl, now_ms, &sup)) {
#define FLUSH_FMT "%s: %llu more not logged in the last %d s; %s=%llu"
        if (lb)
            mrb_logbuf_add(lb, MRB_LOG_WARNING, FLUSH_FMT, what, (unsigned long long)sup,
                           MRB_RATELIMIT_MS / 1000, counter, (unsigned long long)value);
        else
            mrb_warn(FLUSH_FMT, what, (unsigned long long)sup, MRB_RATELIMIT_MS / 1000,
                     counter, (unsigned long long)value);
#undef FLUSH_FMT
    }
    return mrb_ratelimit_next_ms(rl);
}

int64_t mrb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *mrb_log_escape(const char *s, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (outlen < 8) {
        if (outlen)
            out[0] = '\0';
        return out;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int plain = c >= 0x20 && c < 0x7f && c != '\\';
        if (o + (plain ? 1 : 4) > outlen - 4) { /* keep room for "..." */
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return out;
}
