/*
 * seen.h - a bounded multiset of recent message fingerprints with expiry.
 *
 * The bridge uses it to recognise its own messages when they come back: each
 * time it publishes (name, payload) into a side where it also subscribes, it
 * adds the fingerprint; when a message with that fingerprint arrives from that
 * side within the TTL, one copy is taken out and the message is not forwarded.
 * Memory is fixed at init: buckets of MRB_SEEN_WAYS entries; when a bucket is
 * full the entry closest to expiry is evicted and counted. Not thread-safe:
 * one owner thread.
 */
#ifndef MRB_SEEN_H
#define MRB_SEEN_H

#include <stddef.h>
#include <stdint.h>

#include "mrb/err.h"

#define MRB_SEEN_WAYS 4

typedef struct mrb_seen_entry {
    uint64_t key;
    int64_t expires_ms;
    uint32_t count;     /* 0 = free */
} mrb_seen_entry;

typedef struct mrb_seen {
    mrb_seen_entry *e;
    size_t nbuckets;
    int64_t ttl_ms;
    uint64_t evicted;   /* live entries pushed out by newer ones */
} mrb_seen;

/* capacity is rounded up to a power-of-two number of buckets. */
mrb_err mrb_seen_init(mrb_seen *s, size_t capacity, int64_t ttl_ms);
void mrb_seen_free(mrb_seen *s);

/* Fingerprint of a (name, payload) pair. */
uint64_t mrb_seen_key(const void *name, size_t nlen, const void *payload,
                      size_t plen);

void mrb_seen_add(mrb_seen *s, uint64_t key, int64_t now_ms);
/* 1 if a live copy of key was there (and is now taken out), else 0. */
int mrb_seen_take(mrb_seen *s, uint64_t key, int64_t now_ms);

#endif
