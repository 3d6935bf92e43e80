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
/* The end of a burst: events were swallowed and MRB_RATELIMIT_MS have passed
 * since the last line, so nothing else will report them. Returns 1 (with
 * *suppressed, and counts as a line) when the owner should log a summary
 * now; owners call it from their loop, at mrb_ratelimit_next_ms(). */
int mrb_ratelimit_due(mrb_ratelimit *rl, int64_t now_ms, uint64_t *suppressed);
/* When a summary is due (INT64_MAX: nothing swallowed). */
int64_t mrb_ratelimit_next_ms(const mrb_ratelimit *rl);
/* The earlier of two times (for collecting when the next summary is due). */
static inline int64_t mrb_min_ms(int64_t a, int64_t b) { return a < b ? a : b; }

/* Lines formatted now and written later: for a thread that must not write
 * (I/O) while it holds a lock. The level is checked when the line is
 * added; a line past MRB_LOGBUF_LINES is written in the flush as a count. */
#define MRB_LOGBUF_LINES 4
#define MRB_LOGBUF_LEN 768
typedef struct mrb_logbuf {
    int n;
    unsigned lost;                 /* lines that did not fit */
    mrb_log_level level[MRB_LOGBUF_LINES];
    char line[MRB_LOGBUF_LINES][MRB_LOGBUF_LEN];
} mrb_logbuf;
void mrb_logbuf_add(mrb_logbuf *lb, mrb_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Write the lines (no lock held) and empty lb. */
void mrb_logbuf_flush(mrb_logbuf *lb);

/* The summary of a burst that ended (mrb_ratelimit_due), as one warning:
 * "<what>: N more not logged in the last 10 s; <counter>=<value>", into lb
 * (NULL: logged now). Returns mrb_ratelimit_next_ms() after it. */
int64_t mrb_ratelimit_flush(mrb_ratelimit *rl, int64_t now_ms, mrb_logbuf *lb,
                            const char *what, const char *counter, uint64_t value);

/* Names from the network (Redis channels are any bytes) made safe to log:
 * printable ASCII as is, other bytes as \xHH, cut to fit out with "...".
 * Returns out. */
#define MRB_LOG_ESCAPE_MAX 256
const char *mrb_log_escape(const char *s, size_t len, char *out, size_t outlen);

/* Monotonic clock in milliseconds. */
int64_t mrb_now_ms(void);

#endif
