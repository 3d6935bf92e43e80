/* seen.c - the fingerprint multiset of the echo guard (mrb/seen.h). */
#include "mrb/seen.h"

#include <stdlib.h>
#include <string.h>

#define NONE SIZE_MAX

void mrb_seen_init(mrb_seen *s, size_t max_copies)
{
    memset(s, 0, sizeof(*s));
    s->max_copies = max_copies;
}

void mrb_seen_free(mrb_seen *s)
{
    free(s->e);
    s->e = NULL;
    s->slots = s->used = s->copies = s->uncertain = 0;
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

static size_t home(const mrb_seen *s, uint64_t key)
{
    /* the low bits of FNV are weak; fold the high half in */
    return (size_t)(key ^ (key >> 32)) & (s->slots - 1);
}

static size_t find(const mrb_seen *s, uint64_t key, uint32_t uncertain)
{
    if (!s->slots)
        return NONE;
    for (size_t i = home(s, key);; i = (i + 1) & (s->slots - 1)) {
        const mrb_seen_entry *e = &s->e[i];
        if (!e->count)
            return NONE;
        if (e->key == key && e->uncertain == uncertain)
            return i;
    }
}

/* Into a table with a free slot (load at most 3/4). */
static void put(mrb_seen_entry *tab, size_t slots, const mrb_seen_entry *x)
{
    size_t i = (size_t)(x->key ^ (x->key >> 32)) & (slots - 1);
    while (tab[i].count)
        i = (i + 1) & (slots - 1);
    tab[i] = *x;
}

static mrb_err resize(mrb_seen *s, size_t slots)
{
    mrb_seen_entry *tab = calloc(slots, sizeof(*tab));
    if (!tab)
        return MRB_ERR_NOMEM;
    for (size_t i = 0; i < s->slots; i++)
        if (s->e[i].count)
            put(tab, slots, &s->e[i]);
    free(s->e);
    s->e = tab;
    s->slots = slots;
    return MRB_OK;
}

/* Backward-shift deletion: the entries after i that would no longer be
 * found move up, so that no probe sequence has a hole. */
static void delete_at(mrb_seen *s, size_t i)
{
    size_t mask = s->slots - 1;
    s->copies -= s->e[i].count;
    if (s->e[i].uncertain)
        s->uncertain -= s->e[i].count;
    s->used--;
    for (size_t j = (i + 1) & mask; s->e[j].count; j = (j + 1) & mask) {
        size_t h = home(s, s->e[j].key);
        /* may e[j] move to i: is i cyclically within [h, j)? */
        int movable = i <= j ? (h <= i || h > j) : (h <= i && h > j);
        if (movable) {
            s->e[i] = s->e[j];
            i = j;
        }
    }
    s->e[i].count = 0;
}

static void take_one(mrb_seen *s, size_t i)
{
    if (s->e[i].count == 1) {
        delete_at(s, i);
        return;
    }
    s->e[i].count--;
    s->copies--;
    if (s->e[i].uncertain)
        s->uncertain--;
}

mrb_err mrb_seen_add(mrb_seen *s, uint64_t key, int uncertain, int64_t expires_ms)
{
    uint32_t unc = uncertain ? 1u : 0u;
    if (s->copies >= s->max_copies)
        return MRB_ERR_FULL;
    size_t i = find(s, key, unc);
    if (i != NONE) {
        s->e[i].count++;
        /* copies of one key share the later expiry */
        if (unc && expires_ms > s->e[i].expires_ms)
            s->e[i].expires_ms = expires_ms;
    } else {
        if (!s->slots || (s->used + 1) * 4 > s->slots * 3) {
            mrb_err err = resize(s, s->slots ? 2 * s->slots : MRB_SEEN_MIN_SLOTS);
            if (err != MRB_OK)
                return err;
        }
        mrb_seen_entry x = {key, unc ? expires_ms : INT64_MAX, 1, unc};
        put(s->e, s->slots, &x);
        s->used++;
    }
    s->copies++;
    if (unc)
        s->uncertain++;
    if (s->copies > s->peak)
        s->peak = s->copies;
    return MRB_OK;
}

int mrb_seen_evict(mrb_seen *s)
{
    size_t victim = NONE;
    for (size_t i = 0; i < s->slots; i++) {
        const mrb_seen_entry *e = &s->e[i];
        if (!e->count)
            continue;
        if (victim == NONE ||
            (e->uncertain && (!s->e[victim].uncertain ||
                              e->expires_ms < s->e[victim].expires_ms)))
            victim = i;
    }
    if (victim == NONE)
        return 0;
    s->evicted++;
    take_one(s, victim);
    return 1;
}

int mrb_seen_take(mrb_seen *s, uint64_t key, int64_t now_ms)
{
    size_t i = find(s, key, 0);
    if (i != NONE) {
        take_one(s, i);
        return 1;
    }
    i = find(s, key, 1);
    if (i == NONE)
        return 0;
    if (s->e[i].expires_ms <= now_ms) {
        s->expired += s->e[i].count;
        delete_at(s, i);
        return 0;
    }
    take_one(s, i);
    return 1;
}

int mrb_seen_remove(mrb_seen *s, uint64_t key, int uncertain)
{
    size_t i = find(s, key, uncertain ? 1u : 0u);
    if (i == NONE)
        return 0;
    take_one(s, i);
    return 1;
}

size_t mrb_seen_clear(mrb_seen *s)
{
    size_t n = s->copies;
    s->cleared += n;
    if (s->slots)
        memset(s->e, 0, s->slots * sizeof(*s->e));
    s->used = s->copies = s->uncertain = 0;
    return n;
}

void mrb_seen_mark_uncertain(mrb_seen *s)
{
    if (s->copies == s->uncertain)
        return;
    /* rebuilt in a new array: the certain and uncertain copies of a key
     * become one entry, kept as long as the later of the two */
    mrb_seen_entry *old = s->e;
    size_t slots = s->slots;
    s->e = calloc(slots, sizeof(*s->e));
    if (!s->e) {
        /* out of memory: they stay certain (until taken or cleared) */
        s->e = old;
        return;
    }
    s->used = 0;
    s->uncertain = s->copies;
    for (size_t i = 0; i < slots; i++) {
        mrb_seen_entry x = old[i];
        if (!x.count)
            continue;
        if (!x.uncertain)
            x.expires_ms = INT64_MAX;
        x.uncertain = 1;
        size_t j = find(s, x.key, 1);
        if (j == NONE) {
            put(s->e, slots, &x);
            s->used++;
            continue;
        }
        s->e[j].count += x.count;
        if (x.expires_ms > s->e[j].expires_ms)
            s->e[j].expires_ms = x.expires_ms;
    }
    free(old);
}

void mrb_seen_start_expiry(mrb_seen *s, int64_t expires_ms)
{
    if (!s->uncertain)
        return;
    for (size_t i = 0; i < s->slots; i++)
        if (s->e[i].count && s->e[i].uncertain && s->e[i].expires_ms == INT64_MAX)
            s->e[i].expires_ms = expires_ms;
}

size_t mrb_seen_expire(mrb_seen *s, int64_t now_ms)
{
    size_t n = 0;
    if (!s->uncertain)
        return 0;
    for (size_t i = 0; i < s->slots;) {
        mrb_seen_entry *e = &s->e[i];
        if (e->count && e->uncertain && e->expires_ms <= now_ms) {
            n += e->count;
            delete_at(s, i); /* a later entry may have moved into i */
            continue;
        }
        i++;
    }
    s->expired += n;
    return n;
}

void mrb_seen_shrink(mrb_seen *s)
{
    size_t slots = s->slots;
    while (slots > MRB_SEEN_MIN_SLOTS && s->used * 8 <= slots)
        slots /= 2;
    if (slots != s->slots)
        (void)resize(s, slots); /* out of memory: stays as large as it is */
}
