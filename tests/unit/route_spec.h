/* route_spec.h - helpers of the route unit tests (test_route.c,
 * test_routeopts.c): a route from a --route spec, and a spec that must be
 * refused with exactly a given message. Include after <cmocka.h>. */
#ifndef MRB_TEST_ROUTE_SPEC_H
#define MRB_TEST_ROUTE_SPEC_H

#include <string.h>

#include "mrb/route.h"

static mrb_route mk(const char *spec)
{
    mrb_route r;
    char msg[512];
    if (mrb_route_parse_spec(spec, &r, msg, sizeof(msg)) != MRB_OK)
        fail_msg("spec '%s': %s", spec, msg);
    return r;
}

static void check_bad(const char *spec, const char *expect)
{
    mrb_route r;
    char msg[512];
    mrb_err err = mrb_route_parse_spec(spec, &r, msg, sizeof(msg));
    assert_int_equal(err, MRB_ERR_INVALID);
    if (strcmp(msg, expect) != 0)
        fail_msg("spec '%s'\n got: %s\nwant: %s", spec, msg, expect);
}

#endif
