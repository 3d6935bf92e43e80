/*
 * rerror.h - what a Redis error reply means for the bridge: a refusal of
 * our credentials or by the ACL (needs a person), a state that passes
 * (resend later), or a refusal of this one command (resending cannot help).
 * Pure: the error text in, a kind out.
 */
#ifndef MRB_RERROR_H
#define MRB_RERROR_H

typedef enum mrb_rerror_kind {
    MRB_RERR_PERMANENT = 0, /* WRONGTYPE, ERR ...: this command never works */
    MRB_RERR_REFUSAL,       /* WRONGPASS, NOAUTH, NOPERM, ...: needs a person */
    MRB_RERR_TRANSIENT      /* OOM, LOADING, BUSY, MISCONF, READONLY,
                               MASTERDOWN, TRYAGAIN, CLUSTERDOWN: passes */
} mrb_rerror_kind;

/* The kind of error reply text err ("OOM command not allowed ..."); NULL
 * is permanent. */
mrb_rerror_kind mrb_rerror_classify(const char *err);
/* Is err a refusal of our credentials or by the ACL? */
int mrb_redis_is_refusal(const char *err);

#endif
