/*
 * url.h - parse the two server URLs the bridge accepts.
 *
 *   mqtt://[user[:pass]@]host[:port]                (default port 1883)
 *   mqtts://[user[:pass]@]host[:port]               (TLS, default port 8883)
 *   redis://[user[:pass]@]host[:port][/db]          (default port 6379, db 0)
 *   unix:/path/redis.sock                           (Redis only)
 *
 * A host may be an IPv6 literal in brackets. User and password may contain
 * percent-escapes (%40 for '@'). Pure code, no I/O. Error messages quote the
 * URL with its password replaced by "***": they end up in logs.
 */
#ifndef MRB_URL_H
#define MRB_URL_H

#include "mrb/err.h"

typedef enum mrb_url_kind { MRB_URL_MQTT, MRB_URL_REDIS } mrb_url_kind;

typedef struct mrb_url {
    char *host;        /* NULL for unix sockets */
    int port;
    char *path;        /* unix socket path, else NULL */
    char *user;        /* NULL when absent */
    char *password;    /* NULL when absent */
    int db;            /* Redis database, 0 by default */
    int tls;           /* mqtts:// */
} mrb_url;

/* Parse text into *out (zeroed first). On failure returns MRB_ERR_INVALID
 * with a message in msg and leaves *out empty. The caller frees *out with
 * mrb_url_free(). */
mrb_err mrb_url_parse(const char *text, mrb_url_kind kind, mrb_url *out,
                      char *msg, size_t msglen);
void mrb_url_free(mrb_url *url);

/* Write the URL with the password replaced by "***" (for logs and --check). */
void mrb_url_format_redacted(const mrb_url *url, mrb_url_kind kind, char *buf,
                             size_t buflen);

/* Copy URL text as given (parsed or not) into buf with the password part of
 * its user information replaced by "***". */
void mrb_url_redact_text(const char *text, char *buf, size_t buflen);

#endif
