/* mem.c - small memory helpers (see mrb/mem.h). */
#include "mrb/mem.h"

#include <stdlib.h>
#include <string.h>

char *mrb_strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        if (n)
            memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}
