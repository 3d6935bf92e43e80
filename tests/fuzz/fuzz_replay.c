/*
 * fuzz_replay.c - replay requests (payloads any MQTT client may publish to
 * bridge/<id>/replay) and the end marker built from their error messages.
 *
 * Properties: no crash, leak or undefined behaviour; an accepted request
 * has a valid topic, a count from 1 to MRB_REPLAY_MAX_COUNT and, if any, a
 * valid response topic; a rejected one has a message; the end marker is
 * JSON that cJSON reads back with the same error text.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mrb/replay.h"
#include "mrb/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * MRB_REPLAY_MAX_REQUEST)
        return 0;
    mrb_replay_request r;
    char msg[300] = "";
    mrb_err err = mrb_replay_parse((const char *)data, size, &r, msg, sizeof(msg));
    if (err == MRB_OK) {
        if (!r.topic || !mrb_topic_valid(r.topic, strlen(r.topic)))
            mrb_fuzz_fail("accepted an invalid topic", r.topic ? r.topic : "(null)");
        if (r.count < 1 || r.count > MRB_REPLAY_MAX_COUNT)
            mrb_fuzz_fail("accepted a count out of range", r.topic);
    } else if (err == MRB_ERR_INVALID && msg[0] == '\0') {
        mrb_fuzz_fail("rejected without a message", "");
    }
    if (r.response_topic && !mrb_topic_valid(r.response_topic, strlen(r.response_topic)))
        mrb_fuzz_fail("kept an invalid response topic", r.response_topic);
    char *end = mrb_replay_end_json(err == MRB_OK, r.topic, "k", r.count,
                                    err == MRB_OK ? NULL : msg);
    if (end) {
        cJSON *o = cJSON_Parse(end);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "error");
        if (!cJSON_IsObject(o) ||
            (err != MRB_OK && (!cJSON_IsString(e) || strcmp(e->valuestring, msg) != 0)))
            mrb_fuzz_fail("end marker does not read back", end);
        cJSON_Delete(o);
        free(end);
    }
    mrb_replay_request_free(&r);
    return 0;
}
