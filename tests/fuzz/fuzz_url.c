/*
 * fuzz_url.c - URL parsing (both kinds), formatting and redaction.
 *
 * Properties: no crash, leak or undefined behaviour; a parsed URL has a
 * host or a socket path; and the redacted form does not depend on the
 * password: it is the same with the password swapped for another. (Three
 * earlier, weaker forms of that last property - "the password does not
 * appear in the output" - raised false alarms when the user name or host
 * spelled the password; those inputs are in regressions/url/.)
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mrb/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *text = mrb_fuzz_cstr(data, size);
    char msg[512], out[1024];
    mrb_url_redact_text(text, out, sizeof(out));
    for (int k = 0; k < 2; k++) {
        mrb_url u;
        mrb_url_kind kind = k ? MRB_URL_REDIS : MRB_URL_MQTT;
        if (mrb_url_parse(text, kind, &u, msg, sizeof(msg)) == MRB_OK) {
            char other[1024];
            if (!u.host == !u.path)
                mrb_fuzz_fail("host xor path", text);
            mrb_url_format_redacted(&u, kind, out, sizeof(out));
            if (u.password) {
                char *pw = u.password;
                u.password = "another password";
                mrb_url_format_redacted(&u, kind, other, sizeof(other));
                u.password = pw;
                if (strcmp(out, other) != 0)
                    mrb_fuzz_fail("redacted URL depends on the password", out);
            }
        }
        mrb_url_free(&u);
    }
    free(text);
    return 0;
}
