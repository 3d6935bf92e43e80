/*
 * envelope.c - wrap MQTT messages in a JSON envelope and take envelopes
 * apart (see mrb/envelope.h for the format). The JSON is cJSON's; the one
 * thing done by hand is base64, which cJSON does not offer.
 */
#include "mrb/envelope.h"
#include "mrb/route.h" /* mrb_utf8_valid */

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#if MRB_WITH_ENVELOPE

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t mrb_base64_encode(const void *in, size_t n, char *out)
{
    const unsigned char *s = in;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
        out[o++] = b64[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0);
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64, c) : NULL;
    return p ? (int)(p - b64) : -1;
}

int mrb_base64_decode(const char *in, size_t n, unsigned char *out, size_t *outn)
{
    size_t o = 0;
    if (n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int last = i + 4 == n;
        int pad = (in[i + 3] == '=') + (in[i + 2] == '=' && in[i + 3] == '=');
        if (pad && !last)
            return -1;
        int v[4] = {b64_value(in[i]), b64_value(in[i + 1]),
                    pad >= 2 ? 0 : b64_value(in[i + 2]),
                    pad >= 1 ? 0 : b64_value(in[i + 3])};
        if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0)
            return -1;
        unsigned x = (unsigned)v[0] << 18 | (unsigned)v[1] << 12 |
                     (unsigned)v[2] << 6 | (unsigned)v[3];
        /* canonical: the bits padding drops must be zero */
        if ((pad == 1 && (x & 0xff)) || (pad == 2 && (x & 0xffff)))
            return -1;
        out[o++] = (unsigned char)(x >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(x >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)x;
    }
    *outn = o;
    return 0;
}

/* Add the payload to env as JSON, text or base64. 0, or -1 out of memory. */
static int add_payload(cJSON *env, const void *payload, size_t plen)
{
    char *copy = malloc(plen + 1);
    if (!copy)
        return -1;
    if (plen)
        memcpy(copy, payload, plen);
    copy[plen] = '\0';
    int text = memchr(copy, '\0', plen) == NULL && mrb_utf8_valid(copy, plen);
    int rc = -1;
    cJSON *json = NULL;
    /* a lone JSON string stays text: embedded, it would unwrap without its
     * quotes */
    if (text && plen > 0 &&
        (json = cJSON_ParseWithLengthOpts(copy, plen + 1, NULL, 1)) != NULL &&
        !cJSON_IsString(json)) {
        /* cJSON also takes what JSON does not allow (007, 1., a raw tab in
         * a string): the payload goes in as it came only if it is exactly
         * what cJSON writes for it (compact JSON, as most devices send);
         * otherwise as cJSON writes it, so the envelope is always JSON */
        char *printed = cJSON_PrintUnformatted(json);
        if (printed && strcmp(printed, copy) == 0) {
            rc = cJSON_AddRawToObject(env, "payload", copy) ? 0 : -1;
        } else if (printed) {
            rc = cJSON_AddItemToObject(env, "payload", json) ? 0 : -1;
            if (rc == 0)
                json = NULL; /* env's now */
        }
        cJSON_free(printed);
    } else if (text) {
        rc = cJSON_AddStringToObject(env, "payload", copy) ? 0 : -1;
    } else {
        char *enc = malloc(MRB_BASE64_LEN(plen) + 1);
        if (enc) {
            mrb_base64_encode(payload, plen, enc);
            rc = cJSON_AddStringToObject(env, "payload", enc) &&
                         cJSON_AddStringToObject(env, "encoding", "base64")
                     ? 0 : -1;
            free(enc);
        }
    }
    cJSON_Delete(json);
    free(copy);
    return rc;
}

mrb_err mrb_envelope_wrap(const char *topic, const void *payload, size_t plen,
                          int qos, int retain, int64_t ts_ms, const char *bridge,
                          char **out, size_t *outn)
{
    cJSON *env = cJSON_CreateObject();
    if (!env || !cJSON_AddStringToObject(env, "topic", topic) ||
        add_payload(env, payload, plen) != 0 ||
        !cJSON_AddNumberToObject(env, "qos", qos) ||
        !cJSON_AddBoolToObject(env, "retain", retain) ||
        /* a double holds ms since the epoch exactly (< 2^53) */
        !cJSON_AddNumberToObject(env, "ts", (double)ts_ms) ||
        !cJSON_AddStringToObject(env, "bridge", bridge)) {
        cJSON_Delete(env);
        return MRB_ERR_NOMEM;
    }
    char *s = cJSON_PrintUnformatted(env);
    cJSON_Delete(env);
    if (!s)
        return MRB_ERR_NOMEM;
    *out = s;
    *outn = strlen(s);
    return MRB_OK;
}

mrb_err mrb_envelope_unwrap(const char *env, size_t len, char **out,
                            size_t *outn, char *msg, size_t msglen)
{
    const mrb_err E = MRB_ERR_INVALID;
    mrb_err err = MRB_OK;
    cJSON *j = cJSON_ParseWithLength(env, len);
    if (!j)
        return mrb_fail(E, msg, msglen, "not JSON");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "payload");
    const cJSON *enc = cJSON_GetObjectItemCaseSensitive(j, "encoding");
    char *res = NULL;
    size_t n = 0;
    if (!cJSON_IsObject(j) || !p) {
        err = mrb_fail(E, msg, msglen, "not an envelope (a JSON object with "
                       "\"payload\")");
    } else if (enc && !(cJSON_IsString(enc) && strcmp(enc->valuestring, "base64") == 0)) {
        err = mrb_fail(E, msg, msglen, "unknown \"encoding\" (allowed: "
                       "\"base64\")");
    } else if (enc && !cJSON_IsString(p)) {
        err = mrb_fail(E, msg, msglen, "a base64 \"payload\" must be a string");
    } else if (enc) {
        size_t slen = strlen(p->valuestring);
        res = malloc(slen / 4 * 3 + 1);
        if (!res)
            err = MRB_ERR_NOMEM;
        else if (mrb_base64_decode(p->valuestring, slen, (unsigned char *)res, &n) != 0)
            err = mrb_fail(E, msg, msglen, "\"payload\" is not valid base64");
    } else if (cJSON_IsString(p)) {
        n = strlen(p->valuestring);
        res = malloc(n + 1);
        if (!res)
            err = MRB_ERR_NOMEM;
        else
            memcpy(res, p->valuestring, n);
    } else {
        res = cJSON_PrintUnformatted(p);
        if (!res)
            err = MRB_ERR_NOMEM;
        else
            n = strlen(res);
    }
    cJSON_Delete(j);
    if (err != MRB_OK || !res) {
        free(res);
        return err != MRB_OK ? err : MRB_ERR_NOMEM;
    }
    res[n] = '\0';
    *out = res;
    *outn = n;
    return MRB_OK;
}

#else /* a build without envelopes (cmake -DWITH_ENVELOPE=OFF): the
       * configuration refuses envelope and unwrap (route.c), so these are
       * never called */

mrb_err mrb_envelope_wrap(const char *topic, const void *payload, size_t plen,
                          int qos, int retain, int64_t ts_ms, const char *bridge,
                          char **out, size_t *outn)
{
    (void)topic, (void)payload, (void)plen, (void)qos, (void)retain;
    (void)ts_ms, (void)bridge;
    *out = NULL;
    *outn = 0;
    return MRB_ERR_INVALID;
}

mrb_err mrb_envelope_unwrap(const char *env, size_t len, char **out,
                            size_t *outn, char *msg, size_t msglen)
{
    (void)env, (void)len;
    *out = NULL;
    *outn = 0;
    return mrb_fail(MRB_ERR_INVALID, msg, msglen, "built without envelopes");
}

#endif
