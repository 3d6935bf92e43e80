/*
 * replay.h - replay requests for stream routes: the pure part.
 *
 * A device publishes a JSON request to bridge/<id>/replay:
 *     {"topic": "sensors/t1", "count": 5, "response_topic": "me/answers"}
 * and the bridge answers with the last count entries of the stream the
 * topic maps to, oldest first, then one end marker (replay_io.c does the
 * I/O). This module parses and validates requests and builds the end
 * marker's JSON (cJSON); no I/O, no threads.
 */
#ifndef MRB_REPLAY_H
#define MRB_REPLAY_H

#include <stddef.h>

#include "mrb/err.h"

#define MRB_REPLAY_MAX_COUNT 1000    /* entries per request, at most */
#define MRB_REPLAY_MAX_REQUEST 4096  /* bytes of a request payload, at most */
#define MRB_REPLAY_MAX_CORRELATION 1024 /* bytes of Correlation Data kept */

typedef struct mrb_replay_request {
    char *topic;           /* MQTT topic whose stream to replay (owned) */
    long count;            /* 1..MRB_REPLAY_MAX_COUNT */
    char *response_topic;  /* from the JSON, or NULL (owned) */
} mrb_replay_request;

/* Parse a request payload. On MRB_ERR_INVALID msg says what is wrong, and
 * out->response_topic is still set if the request carried a valid one (so
 * that the error can be answered there). Free out with
 * mrb_replay_request_free() whatever the result. Keys other than topic,
 * count and response_topic are errors. */
mrb_err mrb_replay_parse(const char *payload, size_t len,
                         mrb_replay_request *out, char *msg, size_t msglen);
void mrb_replay_request_free(mrb_replay_request *r);

/* The end marker, a JSON object (malloc'd string, NULL when out of memory):
 *   {"replay":"end","status":"ok","topic":T,"stream":K,"count":N}
 *   {"replay":"end","status":"error","topic":T,"error":E}
 * topic and stream may be NULL (left out). */
char *mrb_replay_end_json(int ok, const char *topic, const char *stream,
                          long count, const char *error);

#endif
