/* rerror.c - kinds of Redis error replies (mrb/rerror.h). */
#include "mrb/rerror.h"

#include <string.h>

/* Does err start with the error code code (a whole word)? */
static int has_code(const char *err, const char *code)
{
    size_t n = strlen(code);
    return strncmp(err, code, n) == 0 && (err[n] == ' ' || err[n] == '\0');
}

static int has_prefix(const char *err, const char *prefix)
{
    return strncmp(err, prefix, strlen(prefix)) == 0;
}

int mrb_redis_is_refusal(const char *err)
{
    static const char *const codes[] = {"WRONGPASS", "NOAUTH", "NOPERM"};
    static const char *const prefixes[] = {
        "ERR invalid password",       /* Redis < 6 */
        "ERR invalid username",
        "ERR AUTH",                   /* AUTH without a password set (6+) */
        "ERR Client sent AUTH",       /* the same, Redis < 6 */
    };
    if (!err)
        return 0;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (has_code(err, codes[i]))
            return 1;
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
        if (has_prefix(err, prefixes[i]))
            return 1;
    return 0;
}

mrb_rerror_kind mrb_rerror_classify(const char *err)
{
    /* states of the server that end by themselves: out of memory under
     * noeviction, loading the data set, a script running, a failed save
     * that stops writes, a replica (after a failover), a replica cut off
     * from its primary, a cluster resharding or without quorum */
    static const char *const transient[] = {"OOM", "LOADING", "BUSY", "MISCONF",
                                            "READONLY", "MASTERDOWN", "TRYAGAIN",
                                            "CLUSTERDOWN"};
    if (!err)
        return MRB_RERR_PERMANENT;
    if (mrb_redis_is_refusal(err))
        return MRB_RERR_REFUSAL;
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
        if (has_code(err, transient[i]))
            return MRB_RERR_TRANSIENT;
    return MRB_RERR_PERMANENT;
}
