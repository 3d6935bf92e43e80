/*
 * mem.h - small memory helpers shared by the modules.
 */
#ifndef MRB_MEM_H
#define MRB_MEM_H

#include <stddef.h>

/* A heap copy of the n bytes at s (NUL bytes included: binary-safe, unlike
 * strndup) with a terminating NUL added. NULL when out of memory. Free with
 * free(). */
char *mrb_strndup(const char *s, size_t n);

#endif
