/* queue.c - the bounded, drop-oldest message FIFO (mrb/queue.h). */
#include "mrb/queue.h"

#include <stdlib.h>
#include <string.h>

mrb_msg *mrb_msg_new_tagged(const char *name, size_t nlen, const void *payload,
                            size_t plen, const void *tag, size_t tlen, int qos,
                            int retain)
{
    mrb_msg *m = malloc(sizeof(*m) + nlen + 1 + plen + (tlen ? tlen + 1 : 0));
    if (!m)
        return NULL;
    memset(m, 0, sizeof(*m));
    m->name_len = nlen;
    m->payload_len = plen;
    m->tag_len = tlen;
    m->qos = qos;
    m->retain = retain;
    memcpy(m->data, name, nlen);
    m->data[nlen] = '\0';
    if (plen)
        memcpy(m->data + nlen + 1, payload, plen);
    if (tlen) {
        memcpy(m->data + nlen + 1 + plen, tag, tlen);
        m->data[nlen + 1 + plen + tlen] = '\0';
    }
    return m;
}

mrb_msg *mrb_msg_new(const char *name, size_t nlen, const void *payload,
                     size_t plen, int qos, int retain)
{
    return mrb_msg_new_tagged(name, nlen, payload, plen, NULL, 0, qos, retain);
}

void mrb_queue_init(mrb_queue *q, size_t max_count, size_t max_bytes)
{
    memset(q, 0, sizeof(*q));
    q->max_count = max_count;
    q->max_bytes = max_bytes;
}

mrb_msg *mrb_queue_pop(mrb_queue *q)
{
    mrb_msg *m = q->head;
    if (!m)
        return NULL;
    q->head = m->next;
    if (!q->head)
        q->tail = NULL;
    q->count--;
    q->bytes -= mrb_msg_size(m);
    m->next = NULL;
    return m;
}

size_t mrb_queue_push(mrb_queue *q, mrb_msg *m)
{
    size_t dropped = 0, size = mrb_msg_size(m);
    while (q->head && (q->count + 1 > q->max_count || q->bytes + size > q->max_bytes)) {
        free(mrb_queue_pop(q));
        dropped++;
    }
    m->next = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->count++;
    q->bytes += size;
    q->dropped += dropped;
    return dropped;
}

mrb_msg *mrb_queue_pop_if_full(mrb_queue *q, size_t size)
{
    if (!q->head || (q->count + 1 <= q->max_count && q->bytes + size <= q->max_bytes))
        return NULL;
    q->dropped++;
    return mrb_queue_pop(q);
}

void mrb_queue_push_front(mrb_queue *q, mrb_msg *m)
{
    m->next = q->head;
    q->head = m;
    if (!q->tail)
        q->tail = m;
    q->count++;
    q->bytes += mrb_msg_size(m);
}

mrb_msg *mrb_queue_unlink_after(mrb_queue *q, mrb_msg *prev)
{
    if (!prev)
        return mrb_queue_pop(q);
    mrb_msg *m = prev->next;
    if (!m)
        return NULL;
    prev->next = m->next;
    if (q->tail == m)
        q->tail = prev;
    m->next = NULL;
    q->count--;
    q->bytes -= mrb_msg_size(m);
    return m;
}

size_t mrb_queue_clear(mrb_queue *q)
{
    size_t n = 0;
    mrb_msg *m;
    while ((m = mrb_queue_pop(q)) != NULL) {
        free(m);
        n++;
    }
    return n;
}
