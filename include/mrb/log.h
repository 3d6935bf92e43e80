/*
 * log.h - one printf-style logger for the whole daemon.
 *
 * Lines go to stderr as "<UTC time> <level> <message>"; systemd/procd
 * capture them. With mrb_log_use_syslog() they go to syslog(3) instead
 * (ident "mqtt-redis-bridge", LOG_PID, facility LOG_DAEMON; error/warning/
 * info/debug as LOG_ERR/LOG_WARNING/LOG_INFO/LOG_DEBUG; no time or level
 * prefix of ours). The level is checked before any formatting. The logger
 * is safe to call from any thread (each line is one fwrite under stdio's
 * lock, or one syslog() call under glibc's lock).
 *
 * mrb_ratelimit keeps a repeated warning (a drop per message, say) to one line
 * per interval, saying how many were suppressed in between.
 */
#ifndef MRB_LOG_H
#define MRB_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum mrb_log_level {
    MRB_LOG_ERROR = 0,
    MRB_LOG_WARNING,
    MRB_LOG_INFO,
    MRB_LOG_DEBUG
} mrb_log_level;

void mrb_log_set_level(mrb_log_level level);
/* Log to syslog from now on. Call once from main before other threads
 * start; mrb_log_close() at exit. */
void mrb_log_use_syslog(void);
void mrb_log_close(void);
int mrb_log_enabled(mrb_log_level level);

/* Parse "error" | "warning" | "info" | "debug"; returns 0 on success. */
int mrb_log_level_parse(const char *s, mrb_log_level *out);
const char *mrb_log_level_name(mrb_log_level level);

void mrb_log(mrb_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define mrb_error(...) mrb_log(MRB_LOG_ERROR, __VA_ARGS__)
#define mrb_warn(...) mrb_log(MRB_LOG_WARNING, __VA_ARGS__)
#define mrb_info(...) mrb_log(MRB_LOG_INFO, __VA_ARGS__)
#define mrb_debug(...)                                                         \
    do {                                                                       \
        if (mrb_log_enabled(MRB_LOG_DEBUG))                                    \
            mrb_log(MRB_LOG_DEBUG, __VA_ARGS__);                               \
    } while (0)

/* One instance per kind of repeated warning; zero-initialise it. Not
 * thread-safe: each instance belongs to one thread. */
typedef struct mrb_ratelimit {
    int64_t last_ms;         /* monotonic ms of the last line logged */
    uint64_t suppressed;     /* events not logged since then */
} mrb_ratelimit;

#define MRB_RATELIMIT_MS 10000

/* Returns 1 if a line may be logged now (and sets *suppressed to the number
 * of events swallowed since the last line), 0 if this event is swallowed. */
int mrb_ratelimit_allow(mrb_ratelimit *rl, int64_t now_ms, uint64_t *suppressed);

/* Names from the network (Redis channels are any bytes) made safe to log:
 * printable ASCII as is, other bytes as \xHH, cut to fit out with "...".
 * Returns out. */
#define MRB_LOG_ESCAPE_MAX 256
const char *mrb_log_escape(const char *s, size_t len, char *out, size_t outlen);

/* Monotonic clock in milliseconds. */
int64_t mrb_now_ms(void);

#endif
