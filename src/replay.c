/* replay.c - parsing and validating replay requests, building the end
 * marker (pure; see replay.h). */
#include "mrb/replay.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "mrb/route.h"

void mrb_replay_request_free(mrb_replay_request *r)
{
    free(r->topic);
    free(r->response_topic);
    memset(r, 0, sizeof(*r));
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

mrb_err mrb_replay_parse(const char *payload, size_t len,
                         mrb_replay_request *out, char *msg, size_t msglen)
{
    memset(out, 0, sizeof(*out));
    if (len > MRB_REPLAY_MAX_REQUEST)
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "request too large (%zu bytes, at most %d)", len,
                        MRB_REPLAY_MAX_REQUEST);
    cJSON *root = cJSON_ParseWithLength(payload, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mrb_fail(MRB_ERR_INVALID, msg, msglen,
                        "request is not a JSON object (expected "
                        "{\"topic\": \"...\", \"count\": N})");
    }
    mrb_err err = MRB_OK;
    /* the response topic first: an error can then be answered there */
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(root, "response_topic");
    if (rt) {
        if (!cJSON_IsString(rt) || !mrb_topic_valid(rt->valuestring,
                                                    strlen(rt->valuestring))) {
            err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                           "response_topic: not a topic name (a non-empty string "
                           "without + or #)");
            goto out;
        }
        if (!(out->response_topic = dup_str(rt->valuestring))) {
            err = MRB_ERR_NOMEM;
            goto out;
        }
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "topic") != 0 && strcmp(it->string, "count") != 0 &&
            strcmp(it->string, "response_topic") != 0) {
            err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                           "unknown key \"%.64s\" (known: topic, count, "
                           "response_topic)", it->string);
            goto out;
        }
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "topic");
    if (!cJSON_IsString(t) || !mrb_topic_valid(t->valuestring, strlen(t->valuestring))) {
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                       t ? "topic: not a topic name (a non-empty string without "
                           "+ or #)"
                         : "topic: missing");
        goto out;
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "count");
    double v = cJSON_IsNumber(c) ? c->valuedouble : 0;
    if (!cJSON_IsNumber(c) || !(v >= 1 && v <= MRB_REPLAY_MAX_COUNT) ||
        (double)(long)v != v) {
        err = mrb_fail(MRB_ERR_INVALID, msg, msglen,
                       c ? "count: not an integer from 1 to %d"
                         : "count: missing (an integer from 1 to %d)",
                       MRB_REPLAY_MAX_COUNT);
        goto out;
    }
    out->count = (long)v;
    if (!(out->topic = dup_str(t->valuestring)))
        err = MRB_ERR_NOMEM;
out:
    cJSON_Delete(root);
    return err;
}

char *mrb_replay_end_json(int ok, const char *topic, const char *stream,
                          long count, const char *error)
{
    cJSON *o = cJSON_CreateObject();
    char *s = NULL;
    if (!o)
        return NULL;
    if (!cJSON_AddStringToObject(o, "replay", "end") ||
        !cJSON_AddStringToObject(o, "status", ok ? "ok" : "error") ||
        (topic && !cJSON_AddStringToObject(o, "topic", topic)) ||
        (ok && stream && !cJSON_AddStringToObject(o, "stream", stream)) ||
        (ok && !cJSON_AddNumberToObject(o, "count", (double)count)) ||
        (!ok && !cJSON_AddStringToObject(o, "error", error ? error : "")))
        goto out;
    s = cJSON_PrintUnformatted(o);
out:
    cJSON_Delete(o);
    return s;
}
