/*
 * seen.h - a bounded multiset of message fingerprints: the echo guard's table.
 *
 * The bridge uses it to recognise its own messages when they come back: each
 * time it publishes (name, payload) into a side where it also subscribes, it
 * adds the fingerprint; when a message with that fingerprint arrives from that
 * side, one copy is taken out and the message is not forwarded.
 *
 * A copy is either certain (its message will come back: nothing takes it out
 * but its message, a clear, or a cap that can only be reached on purpose) or
 * uncertain (it may never come back: it is given an expiry, and leaves the
 * table when that passes). Every copy that leaves unmatched is counted:
 * cleared, expired or evicted. A take prefers a certain copy.
 *
 * Memory: open addressing (linear probing, backward-shift deletion), grown by
 * doubling on demand up to max_copies and shrunk again when mostly empty
 * (mrb_seen_shrink), so an idle bridge holds a few KB. mrb_seen_add refuses a
 * copy past max_copies (MRB_ERR_FULL): the caller holds back instead
 * (back-pressure) or, as a last resort, evicts. Not thread-safe: the caller
 * locks.
 */
#ifndef MRB_SEEN_H
#define MRB_SEEN_H

#include <stddef.h>
#include <stdint.h>

#include "mrb/err.h"

/* Slots allocated at first use, and the least the table shrinks to. */
#define MRB_SEEN_MIN_SLOTS 256

typedef struct mrb_seen_entry {
    uint64_t key;
    int64_t expires_ms;  /* uncertain only; INT64_MAX: not yet given one */
    uint32_t count;      /* copies; 0 = free slot */
    uint32_t uncertain;  /* 1: its copies may never come back */
} mrb_seen_entry;

typedef struct mrb_seen {
    mrb_seen_entry *e;
    size_t slots;        /* a power of two, or 0 before the first add */
    size_t used;         /* slots in use */
    size_t copies;       /* live copies (the sum of count) */
    size_t uncertain;    /* of those, in uncertain entries */
    size_t max_copies;   /* mrb_seen_add refuses past this */
    size_t peak;         /* most copies held at once */
    uint64_t cleared;    /* copies that left unmatched: mrb_seen_clear */
    uint64_t expired;    /* ... uncertain ones whose expiry passed */
    uint64_t evicted;    /* ... pushed out at the cap (mrb_seen_evict) */
} mrb_seen;

/* No memory is taken until the first add. */
void mrb_seen_init(mrb_seen *s, size_t max_copies);
void mrb_seen_free(mrb_seen *s);

/* Fingerprint of a (name, payload) pair. */
uint64_t mrb_seen_key(const void *name, size_t nlen, const void *payload,
                      size_t plen);

/* Add one copy; an uncertain one expires at expires_ms (INT64_MAX: not
 * yet, see mrb_seen_start_expiry; copies of one key share the later
 * expiry). MRB_ERR_FULL: max_copies copies are held (nothing added);
 * MRB_ERR_NOMEM: the table could not grow (nothing added). */
mrb_err mrb_seen_add(mrb_seen *s, uint64_t key, int uncertain, int64_t expires_ms);
/* Make room for one copy at the cap: the uncertain copy closest to expiry,
 * else any copy, leaves (counted in evicted). 1 if one left. */
int mrb_seen_evict(mrb_seen *s);
/* 1 if a live copy of key was there (now taken out: a certain one first;
 * an expired uncertain one is removed and counted, not taken), else 0. */
int mrb_seen_take(mrb_seen *s, uint64_t key, int64_t now_ms);
/* Take back one copy just added (its message did not go out): not counted
 * anywhere. 1 if one was there. */
int mrb_seen_remove(mrb_seen *s, uint64_t key, int uncertain);
/* Every copy leaves unmatched (counted in cleared); returns how many. */
size_t mrb_seen_clear(mrb_seen *s);
/* Every certain copy becomes uncertain (not yet given an expiry). */
void mrb_seen_mark_uncertain(mrb_seen *s);
/* Uncertain copies without an expiry get expires_ms. */
void mrb_seen_start_expiry(mrb_seen *s, int64_t expires_ms);
/* Uncertain copies whose expiry has passed leave (counted in expired);
 * returns how many. */
size_t mrb_seen_expire(mrb_seen *s, int64_t now_ms);
/* Give memory back when the table is mostly empty (an eighth or less of
 * its slots in use; never below MRB_SEEN_MIN_SLOTS). */
void mrb_seen_shrink(mrb_seen *s);

#endif
