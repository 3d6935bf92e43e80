/*
 * fuzz_config.c - the JSON configuration schema (mrb_config_load_json) and
 * the route table built from what it accepts. Not mrb_config_finish: it
 * reads files the input would name.
 */
#include "fuzz.h"
#include "mrb/config.h"
#include "mrb/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    mrb_config cfg;
    char msg[1024];
    mrb_config_init(&cfg);
    if (mrb_config_load_json(&cfg, (const char *)data, size, "fuzz.json", msg,
                             sizeof(msg)) == MRB_OK && cfg.n_routes) {
        mrb_routes t;
        if (mrb_routes_build(&t, cfg.routes, cfg.n_routes) == MRB_OK)
            mrb_routes_free(&t);
    }
    mrb_config_free(&cfg);
    return 0;
}
