/* fuzz_util.c - helpers shared by the fuzz targets (see fuzz.h). */
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *mrb_fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

void mrb_fuzz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz: property broken: %s: %s\n", what, detail);
    abort();
}
