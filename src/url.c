/* url.c - parsing of mqtt://, redis:// and unix: URLs (see mrb/url.h). */
#include "mrb/url.h"
#include "mrb/mem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a new string. NULL with *bad set on a bad
 * escape or an escaped NUL; NULL alone when out of memory. */
static char *pct_decode(const char *s, size_t n, int *bad)
{
    char *d = malloc(n + 1), *p = d;
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *p++ = s[i];
            continue;
        }
        int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(d);
            *bad = 1;
            return NULL;
        }
        *p++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *p = '\0';
    return d;
}

static int parse_int(const char *s, size_t n, long lo, long hi, long *out)
{
    char buf[16];
    if (n == 0 || n >= sizeof(buf))
        return -1;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    long v = strtol(buf, NULL, 10);
    if (errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

void mrb_url_free(mrb_url *url)
{
    free(url->host);
    free(url->path);
    free(url->user);
    free(url->password);
    memset(url, 0, sizeof(*url));
}

/* Where the user information of text ends ('@'), or NULL. It ends at the
 * last '@' before the path. */
static const char *userinfo_end(const char *p)
{
    const char *slash = strchr(p, '/'), *end = slash ? slash : p + strlen(p);
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    return at;
}

void mrb_url_redact_text(const char *text, char *buf, size_t buflen)
{
    const char *sep = strstr(text, "://");
    const char *p = sep ? sep + 3 : text;
    const char *at = userinfo_end(p);
    const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
    if (!colon) {
        snprintf(buf, buflen, "%s", text);
        return;
    }
    snprintf(buf, buflen, "%.*s***%s", (int)(colon + 1 - text), text, at);
}

mrb_err mrb_url_parse(const char *text, mrb_url_kind kind, mrb_url *out,
                      char *msg, size_t msglen)
{
    mrb_err err = MRB_ERR_INVALID;
    char shown[512]; /* text as quoted in messages: without the password */

    mrb_url_redact_text(text, shown, sizeof(shown));
    memset(out, 0, sizeof(*out));
    out->port = kind == MRB_URL_MQTT ? 1883 : 6379;

    if (kind == MRB_URL_REDIS && strncmp(text, "unix:", 5) == 0) {
        const char *path = text + 5;
        if (strncmp(path, "//", 2) == 0)
            path += 2;
        if (path[0] != '/')
            return mrb_fail(err, msg, msglen,
                            "\"%s\": a unix socket URL needs an absolute path "
                            "(unix:/path/redis.sock)", shown);
        out->path = strdup(path);
        out->port = 0;
        return out->path ? MRB_OK : MRB_ERR_NOMEM;
    }
    size_t slen;
    if (kind == MRB_URL_MQTT && strncmp(text, "mqtts://", 8) == 0) {
        slen = 8;
        out->tls = 1;
        out->port = 8883;
    } else if (kind == MRB_URL_MQTT && strncmp(text, "mqtt://", 7) == 0) {
        slen = 7;
    } else if (kind == MRB_URL_REDIS && strncmp(text, "redis://", 8) == 0) {
        slen = 8;
    } else if (kind == MRB_URL_REDIS && strncmp(text, "rediss://", 9) == 0) {
        return mrb_fail(err, msg, msglen,
                        "\"%s\": rediss:// (TLS) is not supported by this build "
                        "(hiredis 0.14 has no TLS): put stunnel in front of "
                        "Redis, see docs/SECURITY.md \"Redis over TLS\"", shown);
    } else {
        return mrb_fail(err, msg, msglen, "\"%s\": the URL must start with %s",
                        shown, kind == MRB_URL_MQTT ? "mqtt:// or mqtts://"
                                                    : "redis:// or unix:/");
    }

    const char *p = text + slen;
    const char *end = p + strlen(p);
    const char *slash = strchr(p, '/');
    const char *auth_end = userinfo_end(p);

    int bad = 0;
    if (auth_end) {
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        const char *uend = colon ? colon : auth_end;
        if (uend > p && !(out->user = pct_decode(p, (size_t)(uend - p), &bad)))
            goto bad_auth;
        if (colon && !(out->password = pct_decode(colon + 1,
                                                  (size_t)(auth_end - colon - 1),
                                                  &bad)))
            goto bad_auth;
        p = auth_end + 1;
    }

    const char *hend = slash ? slash : end;
    const char *hstart = p, *port = NULL;
    size_t hlen;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(hend - p));
        if (!rb)
            goto bad_host;
        hstart = p + 1;
        hlen = (size_t)(rb - hstart);
        if (rb + 1 < hend) {
            if (rb[1] != ':')
                goto bad_host;
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(hend - p));
        hlen = (size_t)((colon ? colon : hend) - p);
        if (colon)
            port = colon + 1;
    }
    if (hlen == 0)
        goto bad_host;
    if (port) {
        long v;
        if (parse_int(port, (size_t)(hend - port), 1, 65535, &v) != 0) {
            mrb_url_free(out);
            return mrb_fail(err, msg, msglen,
                            "\"%s\": the port must be a number from 1 to 65535",
                            shown);
        }
        out->port = (int)v;
    }
    if (slash) {
        long v;
        if (kind == MRB_URL_MQTT) {
            if (slash + 1 != end) {
                mrb_url_free(out);
                return mrb_fail(err, msg, msglen,
                                "\"%s\": an mqtt:// URL has no path", shown);
            }
        } else if (slash + 1 != end) {
            if (parse_int(slash + 1, (size_t)(end - slash - 1), 0, 1000000,
                          &v) != 0) {
                mrb_url_free(out);
                return mrb_fail(err, msg, msglen,
                                "\"%s\": the database after '/' must be a "
                                "number", shown);
            }
            out->db = (int)v;
        }
    }
    if (!(out->host = mrb_strndup(hstart, hlen))) {
        mrb_url_free(out);
        return MRB_ERR_NOMEM;
    }
    return MRB_OK;

bad_auth:
    mrb_url_free(out);
    if (!bad)
        return MRB_ERR_NOMEM;
    return mrb_fail(err, msg, msglen,
                    "\"%s\": bad percent-escape in user or password", shown);
bad_host:
    mrb_url_free(out);
    return mrb_fail(err, msg, msglen, "\"%s\": missing or malformed host",
                    shown);
}

void mrb_url_format_redacted(const mrb_url *url, mrb_url_kind kind, char *buf,
                             size_t buflen)
{
    if (url->path) {
        snprintf(buf, buflen, "unix:%s", url->path);
        return;
    }
    int v6 = url->host && strchr(url->host, ':') != NULL;
    char db[16] = "";
    if (kind == MRB_URL_REDIS && url->db)
        snprintf(db, sizeof(db), "/%d", url->db);
    snprintf(buf, buflen, "%s://%s%s%s%s%s%s%s:%d%s",
             kind == MRB_URL_REDIS ? "redis" : url->tls ? "mqtts" : "mqtt",
             url->user ? url->user : "", url->password ? ":***" : "",
             (url->user || url->password) ? "@" : "", v6 ? "[" : "",
             url->host ? url->host : "", v6 ? "]" : "", "", url->port, db);
}
