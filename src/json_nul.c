/*
 * json_nul.c - which strings of a parsed JSON document held a NUL character.
 *
 * cJSON decodes "\u0000" (and takes a raw 0 byte) into a NUL inside the
 * string it returns, which then reads as cut short there: "x\u0000y" as
 * "x". It keeps no length, so the text is scanned instead: its string tokens
 * (key names and values) come in the order a depth-first walk of the tree
 * meets them.
 */
#include "json_nul.h"

#include <stdlib.h>
#include <string.h>

/* The string token at p[0] == '"': whether it holds a NUL; *next: after it.
 * Escapes are skipped as cJSON skips them (a backslash takes the next byte
 * along); only \u0000 decodes to a NUL (a surrogate pair never does). */
static int token_has_nul(const char *p, const char *end, const char **next)
{
    int nul = 0;
    for (p++; p < end && *p != '"'; p++) {
        if (*p == '\0')
            nul = 1;
        else if (*p == '\\' && p + 1 < end) {
            if (p[1] == 'u' && end - p >= 6 && memcmp(p + 2, "0000", 4) == 0)
                nul = 1;
            p++;
        }
    }
    *next = p < end ? p + 1 : end;
    return nul;
}

/* The ordinals (0: the first string token) of the tokens in text[0..len)
 * holding a NUL, into ords (up to max); returns how many there are. */
static size_t nul_tokens(const char *text, size_t len, size_t *ords, size_t max)
{
    const char *p = text, *end = text + len;
    size_t ord = 0, n = 0;
    while (p < end) {
        if (*p != '"') {
            p++;
            continue;
        }
        if (token_has_nul(p, end, &p)) {
            if (n < max)
                ords[n] = ord;
            n++;
        }
        ord++;
    }
    return n;
}

/* Walk v as the tokens come, pairing the ordinals with their items. */
static void mark_nuls(const cJSON *v, const size_t *ords, size_t n_ords,
                      size_t *ord, mrb_json_nul *marks, size_t *n_marks)
{
    if (cJSON_IsString(v)) {
        if (*n_marks < n_ords && ords[*n_marks] == *ord)
            marks[(*n_marks)++] = (mrb_json_nul){v, 0};
        (*ord)++;
        return;
    }
    int obj = cJSON_IsObject(v);
    if (!obj && !cJSON_IsArray(v))
        return;
    for (const cJSON *c = v->child; c; c = c->next) {
        if (obj) {
            if (*n_marks < n_ords && ords[*n_marks] == *ord)
                marks[(*n_marks)++] = (mrb_json_nul){c, 1};
            (*ord)++;
        }
        mark_nuls(c, ords, n_ords, ord, marks, n_marks);
    }
}

mrb_err mrb_json_find_nuls(const cJSON *root, const char *text, size_t len,
                           mrb_json_nul **marks, size_t *n)
{
    size_t n_ords = nul_tokens(text, len, NULL, 0), ord = 0;
    *marks = NULL;
    *n = 0;
    if (n_ords == 0)
        return MRB_OK;
    size_t *ords = calloc(n_ords, sizeof(*ords));
    *marks = calloc(n_ords, sizeof(**marks));
    if (!ords || !*marks) {
        free(ords);
        free(*marks);
        *marks = NULL;
        return MRB_ERR_NOMEM;
    }
    nul_tokens(text, len, ords, n_ords);
    mark_nuls(root, ords, n_ords, &ord, *marks, n);
    free(ords);
    return MRB_OK;
}

int mrb_json_has_nul(const mrb_json_nul *marks, size_t n, const cJSON *item,
                     int key)
{
    for (size_t i = 0; i < n; i++)
        if (marks[i].item == item && marks[i].key == key)
            return 1;
    return 0;
}
