/* seen.c - the fingerprint multiset used for echo suppression (mrb/seen.h). */
#include "mrb/seen.h"

#include <stdlib.h>
#include <string.h>

mrb_err mrb_seen_init(mrb_seen *s, size_t capacity, int64_t ttl_ms)
{
    size_t nb = 1;
    while (nb * MRB_SEEN_WAYS < capacity)
        nb *= 2;
    s->e = calloc(nb * MRB_SEEN_WAYS, sizeof(*s->e));
    if (!s->e)
        return MRB_ERR_NOMEM;
    s->nbuckets = nb;
    s->ttl_ms = ttl_ms;
    s->evicted = 0;
    return MRB_OK;
}

void mrb_seen_free(mrb_seen *s)
{
    free(s->e);
    s->e = NULL;
    s->nbuckets = 0;
}

/* FNV-1a 64 over name, a separator byte and the payload. */
uint64_t mrb_seen_key(const void *name, size_t nlen, const void *payload,
                      size_t plen)
{
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *p = name;
    for (size_t i = 0; i < nlen; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    h = (h ^ 0xFFu) * 1099511628211ULL;
    p = payload;
    for (size_t i = 0; i < plen; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static mrb_seen_entry *bucket(mrb_seen *s, uint64_t key)
{
    /* the low bits of FNV are weak; fold the high half in */
    uint64_t b = (key ^ (key >> 32)) & (s->nbuckets - 1);
    return &s->e[b * MRB_SEEN_WAYS];
}

void mrb_seen_add(mrb_seen *s, uint64_t key, int64_t now_ms)
{
    mrb_seen_entry *b = bucket(s, key), *victim = NULL;
    for (int i = 0; i < MRB_SEEN_WAYS; i++) {
        mrb_seen_entry *e = &b[i];
        if (e->count && e->expires_ms <= now_ms)
            e->count = 0;
        if (e->count && e->key == key) {
            e->count++;
            e->expires_ms = now_ms + s->ttl_ms;
            return;
        }
        if (!victim || (victim->count && (!e->count || e->expires_ms < victim->expires_ms)))
            victim = e;
    }
    if (victim->count)
        s->evicted += victim->count;
    victim->key = key;
    victim->count = 1;
    victim->expires_ms = now_ms + s->ttl_ms;
}

int mrb_seen_take(mrb_seen *s, uint64_t key, int64_t now_ms)
{
    mrb_seen_entry *b = bucket(s, key);
    for (int i = 0; i < MRB_SEEN_WAYS; i++) {
        mrb_seen_entry *e = &b[i];
        if (e->count && e->key == key) {
            if (e->expires_ms <= now_ms) {
                e->count = 0;
                return 0;
            }
            e->count--;
            return 1;
        }
    }
    return 0;
}
