/*
 * routes.c - the route table: its lookup indexes by first level, its
 * subscription lists, and the lookups and mappings of one message through
 * all routes (see mrb/route.h for the rules). One route alone (checking,
 * matching, mapping) is route.c.
 */
#include "mrb/route.h"

#include <stdlib.h>
#include <string.h>

/* ---- indexes: candidates by first level ---------------------------------
 *
 * A message name can only match a filter or pattern whose first level (MQTT,
 * up to '/') or first segment (Redis, up to ':') is literal and equal to the
 * name's own, or one whose first level is a wildcard ("wild"). So each index
 * maps a literal first level to the ascending list of entries having it, and
 * keeps the wild entries apart; a lookup merges the two lists in ascending
 * order. The first match, and the order of targets, are the same as a scan
 * over all entries, at a cost independent of the number of entries with
 * other first levels.
 *   MQTT filter: keyed by its first level unless that is '+' or '#'.
 *   Redis pattern: keyed by the text before its first ':' if that ':' comes
 *   before any '*' (or there is no '*' and no ':': the whole exact name);
 *   otherwise wild ("us*" may match "user:1" and "usa").
 */
typedef struct ix_slot {
    const char *key; /* NULL: empty slot */
    size_t klen;
    size_t *v, n;
} ix_slot;

struct mrb_rindex {
    ix_slot *slot;
    size_t mask;      /* slot count - 1 (a power of two) */
    size_t *wild, nwild;
};

static uint64_t ix_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211u;
    return h;
}

/* The key of a name: its first level/segment, length in *klen. */
static const char *name_key(const char *s, size_t len, char sep, size_t *klen)
{
    const char *e = memchr(s, sep, len);
    *klen = e ? (size_t)(e - s) : len;
    return s;
}

/* The key of a filter/pattern, or NULL if it is wild. */
static const char *entry_key(const char *s, char sep, size_t *klen)
{
    size_t len = strlen(s);
    name_key(s, len, sep, klen);
    if (sep == '/')
        return (*klen == 1 && (s[0] == '+' || s[0] == '#')) ? NULL : s;
    const char *star = strchr(s, '*');
    return (!star || (size_t)(star - s) > *klen) ? s : NULL;
}

static ix_slot *ix_find(const struct mrb_rindex *x, const char *k, size_t klen)
{
    /* masked by a size_t: the slot index fits one on every target */
    for (size_t i = (size_t)(ix_hash(k, klen) & x->mask);; i = (i + 1) & x->mask) {
        ix_slot *sl = &x->slot[i];
        if (!sl->key || (sl->klen == klen && memcmp(sl->key, k, klen) == 0))
            return sl;
    }
}

static void ix_free(struct mrb_rindex *x)
{
    if (!x)
        return;
    for (size_t i = 0; x->slot && i <= x->mask; i++)
        free(x->slot[i].v);
    free(x->slot);
    free(x->wild);
    free(x);
}

/* Index n entries, the i-th named name(ctx, i) (NULL: not indexed). The
 * names must outlive the index. */
static struct mrb_rindex *ix_build(size_t n, char sep,
                                   const char *(*name)(const void *, size_t),
                                   const void *ctx)
{
    struct mrb_rindex *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    size_t ns = 8;
    while (ns < 2 * n)
        ns *= 2;
    x->mask = ns - 1;
    x->slot = calloc(ns, sizeof(*x->slot));
    x->wild = calloc(n ? n : 1, sizeof(*x->wild));
    if (!x->slot || !x->wild)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const char *s = name(ctx, i);
        if (!s)
            continue;
        size_t klen;
        const char *k = entry_key(s, sep, &klen);
        if (!k) {
            x->wild[x->nwild++] = i;
            continue;
        }
        ix_slot *sl = ix_find(x, k, klen);
        size_t *v = realloc(sl->v, (sl->n + 1) * sizeof(*v));
        if (!v)
            goto nomem;
        sl->key = k;
        sl->klen = klen;
        sl->v = v;
        sl->v[sl->n++] = i;
    }
    return x;
nomem:
    ix_free(x);
    return NULL;
}

/* Ascending merge of the keyed and the wild candidates of one name. */
typedef struct ix_iter {
    const size_t *a, *b;
    size_t na, nb, ia, ib;
} ix_iter;

static void ix_lookup(const struct mrb_rindex *x, const char *s, size_t len,
                      char sep, ix_iter *it)
{
    size_t klen;
    const char *k = name_key(s, len, sep, &klen);
    const ix_slot *sl = ix_find(x, k, klen);
    *it = (ix_iter){.a = sl->v, .na = sl->key ? sl->n : 0, .b = x->wild,
                    .nb = x->nwild};
}

static int ix_next(ix_iter *it, size_t *out)
{
    if (it->ia < it->na && (it->ib >= it->nb || it->a[it->ia] < it->b[it->ib]))
        *out = it->a[it->ia++];
    else if (it->ib < it->nb)
        *out = it->b[it->ib++];
    else
        return 0;
    return 1;
}

static const char *route_mqtt_name(const void *ctx, size_t i)
{
    const mrb_route *r = &((const mrb_routes *)ctx)->route[i];
    return r->dir == MRB_DIR_REDIS_TO_MQTT ? NULL : r->mqtt;
}

static const char *route_redis_name(const void *ctx, size_t i)
{
    const mrb_route *r = &((const mrb_routes *)ctx)->route[i];
    return r->dir == MRB_DIR_MQTT_TO_REDIS ? NULL : r->redis;
}

static const char *mqtt_sub_name(const void *ctx, size_t i)
{
    return ((const mrb_routes *)ctx)->mqtt_sub[i].name;
}

static const char *redis_sub_name(const void *ctx, size_t i)
{
    return ((const mrb_routes *)ctx)->redis_sub[i].name;
}

static mrb_err routes_index(mrb_routes *t)
{
    t->ix_route_mqtt = ix_build(t->n, '/', route_mqtt_name, t);
    t->ix_route_redis = ix_build(t->n, ':', route_redis_name, t);
    t->ix_mqtt_sub = ix_build(t->n_mqtt_sub, '/', mqtt_sub_name, t);
    t->ix_redis_sub = ix_build(t->n_redis_sub, ':', redis_sub_name, t);
    return t->ix_route_mqtt && t->ix_route_redis && t->ix_mqtt_sub && t->ix_redis_sub
               ? MRB_OK
               : MRB_ERR_NOMEM;
}

/* ------------------------------------------------------------------------ */

static void subs_free(mrb_sub *s, size_t n)
{
    if (!s) /* a table whose build failed part-way */
        return;
    for (size_t i = 0; i < n; i++)
        free(s[i].name);
    free(s);
}

void mrb_routes_free(mrb_routes *t)
{
    for (size_t i = 0; i < t->n; i++)
        mrb_route_free(&t->route[i]);
    free(t->route);
    subs_free(t->mqtt_sub, t->n_mqtt_sub);
    subs_free(t->redis_sub, t->n_redis_sub);
    subs_free(t->stream_sub, t->n_stream_sub);
    ix_free(t->ix_route_mqtt);
    ix_free(t->ix_route_redis);
    ix_free(t->ix_mqtt_sub);
    ix_free(t->ix_redis_sub);
    memset(t, 0, sizeof(*t));
}

static mrb_err sub_add(mrb_sub *subs, size_t *n, const char *name, int qos,
                       int exact, int retained)
{
    for (size_t i = 0; i < *n; i++) {
        /* entries below *n were filled by strdup below; the analyzer does
         * not tie the count to them */
        if (strcmp(subs[i].name, name) == 0) { // NOLINT(clang-analyzer-core.NonNullParamChecker)
            if (qos > subs[i].qos)
                subs[i].qos = qos;
            subs[i].retained |= retained;
            return MRB_OK;
        }
    }
    if (!(subs[*n].name = strdup(name)))
        return MRB_ERR_NOMEM;
    subs[*n].qos = qos;
    subs[*n].exact = exact;
    subs[*n].retained = retained;
    (*n)++;
    return MRB_OK;
}

/* MQTT 5 Subscription Identifiers are 1 .. 268,435,455; the largest is the
 * replay topic's (MRB_REPLAY_SUB_ID in bridge_int.h). */
#define SUB_ID_MAX 268435454u

static int sub_id_used(const mrb_sub *subs, size_t n, unsigned id)
{
    for (size_t i = 0; i < n; i++)
        if (subs[i].id == id)
            return 1;
    return 0;
}

/* Order subs: those prev also has first, in prev's order and with prev's
 * id; then the new ones in their own order (fresh, if there is a prev).
 * A new id is derived from the name (FNV-1a), so that the same filter gets
 * the same id in every run: messages a persistent session queued while
 * the bridge was away carry the ids of the run that subscribed. Two names
 * with one hash (rare) take the next free id in table order. */
static void subs_order(mrb_sub *subs, size_t n, const mrb_sub *prev, size_t np)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        subs[i].id = 0;
        subs[i].fresh = prev != NULL;
    }
    for (size_t j = 0; j < np; j++) {
        for (size_t i = k; i < n; i++) {
            if (strcmp(subs[i].name, prev[j].name) == 0) {
                mrb_sub tmp = subs[i];
                memmove(&subs[k + 1], &subs[k], (i - k) * sizeof(*subs));
                subs[k] = tmp;
                subs[k].fresh = 0;
                subs[k++].id = prev[j].id;
                break;
            }
        }
    }
    for (size_t i = k; i < n; i++) {
        uint32_t h = 2166136261u;
        /* entries below n have a name (sub_add); see there */
        for (const char *c = subs[i].name; *c; c++) // NOLINT(clang-analyzer-core.NullDereference)
            h = (h ^ (uint8_t)*c) * 16777619u;
        unsigned id = h % SUB_ID_MAX + 1;
        while (sub_id_used(subs, n, id))
            id = id % SUB_ID_MAX + 1;
        subs[i].id = id;
    }
}

mrb_err mrb_routes_build(mrb_routes *t, const mrb_route *routes, size_t n)
{
    return mrb_routes_build_from(t, routes, n, NULL);
}

mrb_err mrb_routes_build_from(mrb_routes *t, const mrb_route *routes, size_t n,
                              const mrb_routes *prev)
{
    memset(t, 0, sizeof(*t));
    t->route = calloc(n ? n : 1, sizeof(*t->route));
    t->mqtt_sub = calloc(n ? n : 1, sizeof(*t->mqtt_sub));
    t->redis_sub = calloc(n ? n : 1, sizeof(*t->redis_sub));
    t->stream_sub = calloc(n ? n : 1, sizeof(*t->stream_sub));
    if (!t->route || !t->mqtt_sub || !t->redis_sub || !t->stream_sub)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        if (mrb_route_copy(&t->route[i], &routes[i]) != MRB_OK)
            goto nomem;
        t->n++;
    }
    for (size_t i = 0; i < n; i++) {
        const mrb_route *r = &t->route[i];
        if (r->dir != MRB_DIR_REDIS_TO_MQTT &&
            sub_add(t->mqtt_sub, &t->n_mqtt_sub, r->mqtt, r->qos, 0,
                    r->store != MRB_STORE_NONE))
            goto nomem;
    }
    /* Exact channels first: Redis sends a channel's subscribers their copy
     * before the pattern subscribers theirs, and the canonical subscription
     * is the first one that matches. (After a reload, new subscriptions
     * follow the ones already held, exact or not: subs_order.) */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const mrb_route *r = &t->route[i];
            int exact = strchr(r->redis, '*') == NULL;
            if (r->dir == MRB_DIR_MQTT_TO_REDIS || exact != (pass == 0))
                continue;
            if (r->mode == MRB_MODE_STREAM
                    ? sub_add(t->stream_sub, &t->n_stream_sub, r->redis, 0, exact, 0)
                    : sub_add(t->redis_sub, &t->n_redis_sub, r->redis, 0, exact, 0))
                goto nomem;
        }
    }
    subs_order(t->mqtt_sub, t->n_mqtt_sub, prev ? prev->mqtt_sub : NULL,
               prev ? prev->n_mqtt_sub : 0);
    subs_order(t->redis_sub, t->n_redis_sub, prev ? prev->redis_sub : NULL,
               prev ? prev->n_redis_sub : 0);
    subs_order(t->stream_sub, t->n_stream_sub, prev ? prev->stream_sub : NULL,
               prev ? prev->n_stream_sub : 0);
    if (routes_index(t) != MRB_OK)
        goto nomem;
    return MRB_OK;
nomem:
    mrb_routes_free(t);
    return MRB_ERR_NOMEM;
}

size_t mrb_routes_mqtt_canonical(const mrb_routes *t, const char *topic,
                                 size_t len)
{
    ix_iter it;
    size_t i;
    ix_lookup(t->ix_mqtt_sub, topic, len, '/', &it);
    while (ix_next(&it, &i))
        if (mrb_filter_matches(t->mqtt_sub[i].name, topic, len))
            return i;
    return MRB_NO_SUB;
}

int mrb_routes_mqtt_is_copy(const mrb_routes *t, const char *topic, size_t len,
                            const unsigned *ids, size_t n_ids)
{
    ix_iter it;
    size_t i;
    int first = 1, known = 0;
    ix_lookup(t->ix_mqtt_sub, topic, len, '/', &it);
    while (ix_next(&it, &i)) {
        if (!mrb_filter_matches(t->mqtt_sub[i].name, topic, len))
            continue;
        for (size_t k = 0; k < n_ids; k++) {
            if (ids[k] == t->mqtt_sub[i].id) {
                if (first)
                    return 0; /* it carries the canonical subscription */
                known = 1;
            }
        }
        first = 0;
    }
    return known;
}

size_t mrb_routes_redis_canonical(const mrb_routes *t, const char *channel,
                                  size_t len)
{
    ix_iter it;
    size_t i;
    ix_lookup(t->ix_redis_sub, channel, len, ':', &it);
    while (ix_next(&it, &i)) {
        const mrb_sub *s = &t->redis_sub[i];
        if (s->exact ? (strlen(s->name) == len && memcmp(s->name, channel, len) == 0)
                     : mrb_glob_matches(s->name, channel, len))
            return i;
    }
    return MRB_NO_SUB;
}

int mrb_routes_mqtt_stores(const mrb_routes *t, const char *topic, size_t len)
{
    /* store routes are few: a plain scan */
    for (size_t i = 0; i < t->n; i++) {
        const mrb_route *r = &t->route[i];
        if (r->store != MRB_STORE_NONE && r->dir != MRB_DIR_REDIS_TO_MQTT &&
            mrb_filter_matches(r->mqtt, topic, len))
            return 1;
    }
    return 0;
}

/* A subscription name is found under its own key (an exact name is its own
 * only match; a pattern's key is the first segment of the pattern itself). */
size_t mrb_routes_redis_sub_index(const mrb_routes *t, const char *name,
                                  size_t len)
{
    ix_iter it;
    size_t i;
    ix_lookup(t->ix_redis_sub, name, len, ':', &it);
    while (ix_next(&it, &i))
        if (strlen(t->redis_sub[i].name) == len &&
            memcmp(t->redis_sub[i].name, name, len) == 0)
            return i;
    return MRB_NO_SUB;
}

void mrb_targets_free(mrb_targets *tg)
{
    free(tg->buf);
    free(tg->v);
    memset(tg, 0, sizeof(*tg));
}

/* Room for one more name of up to need bytes, growing the buffers. */
static mrb_err targets_reserve(mrb_targets *tg, size_t need)
{
    if (tg->n == tg->vcap) {
        size_t nc = tg->vcap ? tg->vcap * 2 : 8;
        mrb_target *v = realloc(tg->v, nc * sizeof(*v));
        if (!v)
            return MRB_ERR_NOMEM;
        tg->v = v;
        tg->vcap = nc;
    }
    if (tg->cap - tg->used < need) {
        size_t nc = tg->cap ? tg->cap : 256;
        while (nc - tg->used < need)
            nc *= 2;
        char *b = realloc(tg->buf, nc);
        if (!b)
            return MRB_ERR_NOMEM;
        tg->buf = b;
        tg->cap = nc;
    }
    return MRB_OK;
}

/* Keep the name just written at buf+used unless an earlier target of the
 * same mode has it. */
static void targets_commit(const mrb_routes *t, mrb_targets *tg, size_t len,
                           size_t route)
{
    const char *name = tg->buf + tg->used;
    for (size_t i = 0; i < tg->n; i++)
        if (tg->v[i].len == len && memcmp(tg->buf + tg->v[i].off, name, len) == 0 &&
            t->route[tg->v[i].route].mode == t->route[route].mode)
            return;
    tg->v[tg->n].off = tg->used;
    tg->v[tg->n].len = len;
    tg->v[tg->n].route = route;
    tg->n++;
    tg->used += len;
}

/* mode: only routes of this mode, or -1 for all */
static mrb_err map_all(const mrb_routes *t, const struct mrb_rindex *ix, char sep,
                       const char *name, size_t len,
                       mrb_targets *tg, mrb_direction skip, int mode,
                       mrb_err (*map)(const mrb_route *, const char *, size_t,
                                      char *, size_t, size_t *),
                       int (*matches)(const mrb_route *, const char *, size_t))
{
    ix_iter it;
    size_t i;
    tg->n = tg->used = tg->unmappable = 0;
    ix_lookup(ix, name, len, sep, &it);
    while (ix_next(&it, &i)) {
        const mrb_route *r = &t->route[i];
        if (r->dir == skip || (mode >= 0 && (int)r->mode != mode) ||
            !matches(r, name, len))
            continue;
        /* a mapped name is the pattern's literals plus the captures, and a
         * '#' capture only changes separators, so this bound is exact */
        size_t need = len + strlen(r->mqtt) + strlen(r->redis) + 1;
        if (targets_reserve(tg, need) != MRB_OK)
            return MRB_ERR_NOMEM;
        size_t n;
        if (map(r, name, len, tg->buf + tg->used, tg->cap - tg->used, &n) != MRB_OK) {
            tg->unmappable++;
            continue;
        }
        targets_commit(t, tg, n, i);
    }
    return MRB_OK;
}

static int route_matches_mqtt(const mrb_route *r, const char *s, size_t len)
{
    return mrb_filter_matches(r->mqtt, s, len);
}

static int route_matches_redis(const mrb_route *r, const char *s, size_t len)
{
    return mrb_glob_matches(r->redis, s, len);
}

mrb_err mrb_routes_map_mqtt(const mrb_routes *t, const char *topic, size_t len,
                            mrb_targets *tg)
{
    return map_all(t, t->ix_route_mqtt, '/', topic, len, tg, MRB_DIR_REDIS_TO_MQTT, -1,
                   mrb_route_map_to_redis, route_matches_mqtt);
}

mrb_err mrb_routes_map_redis(const mrb_routes *t, mrb_mode mode,
                             const char *name, size_t len, mrb_targets *tg)
{
    return map_all(t, t->ix_route_redis, ':', name, len, tg, MRB_DIR_MQTT_TO_REDIS,
                   (int)mode,
                   mrb_route_map_to_mqtt, route_matches_redis);
}
