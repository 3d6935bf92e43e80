/*
 * envelope.h - the JSON envelope a route can wrap MQTT messages in on their
 * way to Redis, and take apart on the way back (route options envelope=json
 * and unwrap).
 *
 *   {"topic":"t","payload":P,"qos":1,"retain":false,"ts":1700000000000,
 *    "bridge":"id"}
 *
 * P is the payload itself when it is a JSON text (valid UTF-8 that cJSON
 * parses, other than a lone JSON string; byte for byte if it is exactly what
 * cJSON prints for it, else as cJSON prints it, so P is always JSON), a JSON
 * string when it is other UTF-8 text without NUL bytes, and otherwise a base64 string (RFC 4648, padded) with
 * "encoding":"base64" added. ts is milliseconds since the epoch.
 *
 * Pure: buffers in, heap buffers out (free with free()), no I/O. JSON is
 * built and parsed by cJSON; base64 is not JSON and is done here.
 */
#ifndef MRB_ENVELOPE_H
#define MRB_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "mrb/err.h"

/* Wrap one message. topic is NUL-terminated UTF-8, bridge the bridge id.
 * *out (NUL-terminated, *outn bytes without the NUL) is the caller's to
 * free(). MRB_ERR_NOMEM if out of memory. */
mrb_err mrb_envelope_wrap(const char *topic, const void *payload, size_t plen,
                          int qos, int retain, int64_t ts_ms, const char *bridge,
                          char **out, size_t *outn);

/* The payload of an envelope: a JSON object with "payload" (and optionally
 * "encoding":"base64"). A string payload gives its bytes (decoded when
 * base64); any other JSON value is printed compactly by cJSON (its
 * whitespace is not kept; numbers are cJSON's doubles). Other members are
 * ignored. *out (*outn bytes, NUL after them) is the caller's to free().
 * MRB_ERR_INVALID with the reason in msg if env is not an envelope. */
mrb_err mrb_envelope_unwrap(const char *env, size_t len, char **out,
                            size_t *outn, char *msg, size_t msglen);

/* Base64 (RFC 4648 alphabet, '=' padding). encode writes
 * MRB_BASE64_LEN(n) bytes plus a NUL to out and returns the length. decode
 * accepts only canonical padded input (whitespace is an error); out needs
 * n / 4 * 3 bytes; returns 0 and sets *outn, or -1. */
#define MRB_BASE64_LEN(n) (((n) + 2) / 3 * 4)
size_t mrb_base64_encode(const void *in, size_t n, char *out);
int mrb_base64_decode(const char *in, size_t n, unsigned char *out, size_t *outn);

#endif
