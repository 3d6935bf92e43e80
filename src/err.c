/* err.c - error codes to text, and the helper that fills error messages. */
#include "mrb/err.h"

#include <stdarg.h>
#include <stdio.h>

const char *mrb_strerror(mrb_err err)
{
    switch (err) {
    case MRB_OK: return "success";
    case MRB_ERR_INVALID: return "invalid argument";
    case MRB_ERR_NOMEM: return "out of memory";
    case MRB_ERR_NOMATCH: return "no match";
    case MRB_ERR_FULL: return "full";
    case MRB_ERR_CONN: return "connection error";
    }
    return "unknown error";
}

mrb_err mrb_fail(mrb_err err, char *msg, size_t msglen, const char *fmt, ...)
{
    if (msg && msglen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
    }
    return err;
}
