/*
 * json_nul.h - the strings of a cJSON document that held a NUL character
 * ("\u0000", or a raw 0 byte), which cJSON's NUL-terminated strings cut
 * short without a trace. For config.c, which refuses them.
 */
#ifndef MRB_JSON_NUL_H
#define MRB_JSON_NUL_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "mrb/err.h"

/* A string of the document (a value, or the name of an object's key) that
 * holds a NUL character. */
typedef struct mrb_json_nul {
    const cJSON *item;
    int key;                  /* the item's name, not its value */
} mrb_json_nul;

/* The strings of root (parsed from text[0..len)) that hold a NUL: *marks
 * (heap, the caller frees; NULL when there are none), *n of them. */
mrb_err mrb_json_find_nuls(const cJSON *root, const char *text, size_t len,
                           mrb_json_nul **marks, size_t *n);
/* Whether item's value (key 0) or name (key 1) is one of marks. */
int mrb_json_has_nul(const mrb_json_nul *marks, size_t n, const cJSON *item,
                     int key);

#endif
