/*
 * fuzz_envelope.c - the JSON envelope (route options envelope and unwrap).
 *
 * Properties: no crash, leak or undefined behaviour on any input, as an
 * envelope to unwrap (from Redis: any bytes) and as a payload to wrap; a
 * wrapped payload is valid JSON that unwraps to the same bytes, except a
 * JSON payload embedded as JSON (cJSON reprints it): that one must unwrap
 * to what cJSON prints for it.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mrb/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char msg[200], *out = NULL, *env = NULL;
    size_t n = 0, envn = 0;
    /* as an envelope */
    if (mrb_envelope_unwrap((const char *)data, size, &out, &n, msg, sizeof(msg)) ==
        MRB_OK)
        free(out);
    out = NULL;
    /* as a payload */
    if (mrb_envelope_wrap("fuzz/t", data, size, 1, 0, 1700000000000LL, "fz", &env,
                          &envn) != MRB_OK)
        return 0;
    cJSON *j = cJSON_Parse(env);
    if (!j)
        mrb_fuzz_fail("the envelope is not JSON", env);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "payload");
    int embedded = p && !cJSON_IsString(p);
    char *reprint = embedded ? cJSON_PrintUnformatted(p) : NULL;
    if (mrb_envelope_unwrap(env, envn, &out, &n, msg, sizeof(msg)) != MRB_OK)
        mrb_fuzz_fail("the envelope does not unwrap", msg);
    if (embedded ? (n != strlen(reprint) || memcmp(out, reprint, n) != 0)
                 : (n != size || (size && memcmp(out, data, size) != 0)))
        mrb_fuzz_fail("unwrap(wrap(p)) differs", env);
    free(reprint);
    free(out);
    cJSON_Delete(j);
    free(env);
    return 0;
}
