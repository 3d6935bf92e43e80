/*
 * err.h - the one error type of mqtt-redis-bridge.
 *
 * Every function that can fail returns an mrb_err (0 = MRB_OK). Where a
 * human-readable explanation exists, the function also fills a caller-owned
 * message buffer (char *msg, size_t msglen); mrb_strerror() names the code.
 */
#ifndef MRB_ERR_H
#define MRB_ERR_H

#include <stddef.h>

typedef enum mrb_err {
    MRB_OK = 0,
    MRB_ERR_INVALID,   /* bad configuration, command line, URL or route */
    MRB_ERR_NOMEM,     /* allocation failed */
    MRB_ERR_NOMATCH,   /* a topic/channel matched nothing or cannot be mapped */
    MRB_ERR_FULL,      /* a bounded container is full */
    MRB_ERR_CONN       /* a server connection failed or is not up */
} mrb_err;

/* Static text for an error code; never NULL. */
const char *mrb_strerror(mrb_err err);

/* snprintf into msg (if non-NULL) and return err: `return mrb_fail(...)`. */
mrb_err mrb_fail(mrb_err err, char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
