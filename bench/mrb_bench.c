/*
 * mrb_bench.c - the load generator of bench/run.py: publishes numbered,
 * time-stamped messages on one side (MQTT or Redis) and receives them on one
 * side, in one single-threaded poll() loop, and prints one JSON object.
 *
 * The MQTT side is a minimal MQTT 3.1.1 client written here (CONNECT,
 * SUBSCRIBE, PUBLISH QoS 0/1, PUBACK) with buffered reads and writes, so
 * that the client costs the same few syscalls per batch on the bridge path
 * and on the direct path, and 10,000 subscriber connections fit in one
 * process. The Redis side is hiredis with its socket made non-blocking.
 *
 * Every payload starts with "SEQ TS " (sequence number, CLOCK_MONOTONIC ns
 * at send time); the receiver counts lost, duplicated and out-of-order
 * messages and records the latency of each first copy.
 *
 *   mrb_bench flow   --pub mqtt|redis --sub mqtt|redis --pub-prefix P
 *                    --sub-name S [--count N] [--window W | --rate R]
 *                    [--qos Q] [--channels K] [--size B] [--idle-ms MS]
 *                    [--timeout-s S] [--mqtt-port P] [--redis-port P]
 *   mrb_bench fanout --subs N --rounds R --mqtt-port P --redis-port P
 *                    (subscribers on fan/bridge and fan/direct; each round
 *                    one Redis PUBLISH fan:bridge and one MQTT publish to
 *                    fan/direct; time until the last subscriber has each)
 *
 * Every wait is bounded (--idle-ms without progress, --timeout-s overall).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "mrb_bench: %s%s%s\n", what, errno ? ": " : "",
            errno ? strerror(errno) : "");
    exit(1);
}

/* ---- a growable byte buffer ---- */

typedef struct buf {
    char *p;
    size_t len, off, cap; /* data is p[off..len) */
} buf;

static void buf_reserve(buf *b, size_t n)
{
    if (b->off > 0 && (b->off == b->len || b->cap - b->len < n)) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len >= n)
        return;
    size_t nc = b->cap ? b->cap * 2 : 4096;
    while (nc - b->len < n)
        nc *= 2;
    if (!(b->p = realloc(b->p, nc)))
        die("out of memory");
    b->cap = nc;
}

static void buf_put(buf *b, const void *d, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

/* ---- minimal MQTT 3.1.1 client ---- */

typedef struct mq {
    int fd;
    buf in, out;
    uint16_t next_id;
    long pubacks;
    int got_connack, got_suback;
} mq;

typedef void (*on_publish_fn)(void *ctx, mq *c, const char *topic, size_t tlen,
                              const char *payload, size_t plen);

static size_t put_varint(unsigned char *p, size_t v)
{
    size_t n = 0;
    do {
        unsigned char d = v % 128;
        v /= 128;
        p[n++] = d | (v ? 0x80 : 0);
    } while (v);
    return n;
}

static void mq_packet(mq *c, unsigned char type, const void *var, size_t varlen,
                      const void *pl, size_t pllen)
{
    unsigned char h[5];
    h[0] = type;
    size_t n = 1 + put_varint(h + 1, varlen + pllen);
    buf_put(&c->out, h, n);
    buf_put(&c->out, var, varlen);
    if (pllen)
        buf_put(&c->out, pl, pllen);
}

static void mq_publish(mq *c, const char *topic, size_t tlen, const char *pl,
                       size_t plen, int qos)
{
    unsigned char var[2 + 256 + 2];
    var[0] = (unsigned char)(tlen >> 8);
    var[1] = (unsigned char)tlen;
    memcpy(var + 2, topic, tlen);
    size_t n = 2 + tlen;
    if (qos) {
        if (++c->next_id == 0)
            c->next_id = 1;
        var[n++] = (unsigned char)(c->next_id >> 8);
        var[n++] = (unsigned char)c->next_id;
    }
    mq_packet(c, (unsigned char)(0x30 | (qos << 1)), var, n, pl, plen);
}

static void mq_subscribe(mq *c, const char *filter, int qos)
{
    size_t fl = strlen(filter);
    unsigned char var[2 + 2 + 256 + 1];
    var[0] = 0;
    var[1] = (unsigned char)(++c->next_id);
    var[2] = (unsigned char)(fl >> 8);
    var[3] = (unsigned char)fl;
    memcpy(var + 4, filter, fl);
    var[4 + fl] = (unsigned char)qos;
    mq_packet(c, 0x82, var, 5 + fl, NULL, 0);
}

static int tcp_connect(int port, int nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        die("connect");
    if (!nonblock)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void mq_start(mq *c, int port, const char *id, int nonblock)
{
    memset(c, 0, sizeof(*c));
    c->fd = tcp_connect(port, nonblock);
    size_t il = strlen(id);
    unsigned char var[10 + 2 + 64];
    static const unsigned char hdr[10] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 0};
    memcpy(var, hdr, 10); /* clean session, keep-alive 0 (off) */
    var[10] = 0;
    var[11] = (unsigned char)il;
    memcpy(var + 12, id, il);
    mq_packet(c, 0x10, var, 12 + il, NULL, 0);
}

/* Write what is buffered; -1 on a broken connection. */
static int mq_flush(mq *c)
{
    while (c->out.off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off,
                         MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR || errno == ENOTCONN ? 0 : -1;
        c->out.off += (size_t)n;
    }
    c->out.off = c->out.len = 0;
    return 0;
}

/* Read and handle whole packets; -1 on a closed or broken connection. */
static int mq_read(mq *c, on_publish_fn cb, void *ctx)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        buf_reserve(&c->in, 65536);
        ssize_t n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            return -1;
        }
        c->in.len += (size_t)n;
        for (;;) {
            const unsigned char *p = (const unsigned char *)c->in.p + c->in.off;
            size_t avail = c->in.len - c->in.off, rl = 0, i = 1, mul = 1;
            for (;; i++) {
                if (i >= avail || i > 4)
                    goto more;
                rl += (p[i] & 0x7F) * mul;
                mul *= 128;
                if (!(p[i] & 0x80))
                    break;
            }
            size_t hl = i + 1;
            if (avail < hl + rl)
                goto more;
            const unsigned char *v = p + hl;
            switch (p[0] >> 4) {
            case 2: c->got_connack = 1; break;
            case 9: c->got_suback++; break;
            case 4: c->pubacks++; break;
            case 3: {
                int qos = (p[0] >> 1) & 3;
                size_t tl = (size_t)v[0] << 8 | v[1];
                size_t off = 2 + tl + (qos ? 2 : 0);
                if (qos) {
                    unsigned char ack[4] = {0x40, 2, v[2 + tl], v[3 + tl]};
                    buf_put(&c->out, ack, 4);
                }
                cb(ctx, c, (const char *)v + 2, tl, (const char *)v + off, rl - off);
                break;
            }
            default: break;
            }
            c->in.off += hl + rl;
        }
    more:
        if ((size_t)n < 65536)
            break;
    }
    return mq_flush(c);
}

/* ---- Redis ---- */

static redisContext *rd_connect(int port)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    if (!c || c->err)
        die("redis connect");
    return c;
}

static void rd_nonblock(redisContext *c)
{
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->flags &= ~REDIS_BLOCK;
}

static int rd_flush(redisContext *c)
{
    int done = 0;
    return redisBufferWrite(c, &done) == REDIS_OK ? 0 : -1;
}

/* ---- the flow benchmark ---- */

typedef struct flow {
    const char *pub, *sub, *pub_prefix, *sub_name;
    long count, window, rate, channels, size;
    int qos, mqtt_port, redis_port;
    long idle_ms, timeout_s;
    /* receiver */
    unsigned char *seen;
    long unique, dups, reordered, received, bad;
    long max_seq;
    uint32_t *lat_us;
    int64_t first_send, last_recv;
} flow;

static void got_payload(flow *f, const char *p, size_t n)
{
    char tmp[48];
    size_t k = n < sizeof(tmp) - 1 ? n : sizeof(tmp) - 1;
    memcpy(tmp, p, k);
    tmp[k] = '\0';
    long seq;
    long long ts;
    int64_t t = now_ns();
    f->received++;
    if (sscanf(tmp, "%ld %lld", &seq, &ts) != 2 || seq < 0 || seq >= f->count) {
        f->bad++;
        return;
    }
    if (f->seen[seq]) {
        f->dups++;
        return;
    }
    f->seen[seq] = 1;
    f->lat_us[f->unique++] = (uint32_t)((t - ts) / 1000);
    if (seq < f->max_seq)
        f->reordered++;
    else
        f->max_seq = seq;
    f->last_recv = t;
}

static void on_mq_msg(void *ctx, mq *c, const char *t, size_t tl, const char *p,
                      size_t n)
{
    got_payload(ctx, p, n);
}

static void rd_sub_replies(flow *f, redisContext *c)
{
    void *r;
    while (redisGetReplyFromReader(c, &r) == REDIS_OK && r) {
        redisReply *x = r;
        if (x->type == REDIS_REPLY_ARRAY && x->elements == 4 &&
            strcmp(x->element[0]->str, "pmessage") == 0)
            got_payload(f, x->element[3]->str, x->element[3]->len);
        else if (x->type == REDIS_REPLY_ARRAY && x->elements == 3 &&
                 strcmp(x->element[0]->str, "message") == 0)
            got_payload(f, x->element[2]->str, x->element[2]->len);
        freeReplyObject(r);
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static long arg_long(const char *s)
{
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (errno || *e || v < 0) {
        errno = 0;
        die("bad number");
    }
    return v;
}

static int run_flow(int argc, char **argv)
{
    flow F = {.count = 10000, .window = 500, .channels = 1, .size = 64,
              .idle_ms = 2000, .timeout_s = 60, .mqtt_port = 1883,
              .redis_port = 6379, .max_seq = -1};
    flow *f = &F;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--pub")) f->pub = v;
        else if (!strcmp(k, "--sub")) f->sub = v;
        else if (!strcmp(k, "--pub-prefix")) f->pub_prefix = v;
        else if (!strcmp(k, "--sub-name")) f->sub_name = v;
        else if (!strcmp(k, "--count")) f->count = arg_long(v);
        else if (!strcmp(k, "--window")) f->window = arg_long(v);
        else if (!strcmp(k, "--rate")) f->rate = arg_long(v);
        else if (!strcmp(k, "--channels")) f->channels = arg_long(v);
        else if (!strcmp(k, "--size")) f->size = arg_long(v);
        else if (!strcmp(k, "--qos")) f->qos = (int)arg_long(v);
        else if (!strcmp(k, "--idle-ms")) f->idle_ms = arg_long(v);
        else if (!strcmp(k, "--timeout-s")) f->timeout_s = arg_long(v);
        else if (!strcmp(k, "--mqtt-port")) f->mqtt_port = (int)arg_long(v);
        else if (!strcmp(k, "--redis-port")) f->redis_port = (int)arg_long(v);
        else { fprintf(stderr, "mrb_bench: unknown option %s\n", k); return 2; }
    }
    if (!f->pub || !f->sub || !f->pub_prefix || !f->sub_name || f->count < 1 ||
        f->channels < 1 || f->size < 40 || f->size > 65536) {
        fprintf(stderr, "mrb_bench flow: --pub, --sub, --pub-prefix, --sub-name needed\n");
        return 2;
    }
    int pub_mqtt = !strcmp(f->pub, "mqtt"), sub_mqtt = !strcmp(f->sub, "mqtt");
    f->seen = calloc((size_t)f->count, 1);
    f->lat_us = calloc((size_t)f->count, sizeof(uint32_t));
    if (!f->seen || !f->lat_us)
        die("out of memory");

    /* subscriber first, confirmed, then the publisher */
    mq msub = {.fd = -1}, mpub = {.fd = -1};
    redisContext *rsub = NULL, *rpub = NULL;
    char id[40];
    int64_t deadline = now_ns() + 10 * 1000000000LL;
    if (sub_mqtt) {
        snprintf(id, sizeof(id), "bench-sub-%d", (int)getpid());
        mq_start(&msub, f->mqtt_port, id, 0);
        mq_subscribe(&msub, f->sub_name, f->qos);
        mq_flush(&msub);
        while (!msub.got_suback) {
            struct pollfd p = {.fd = msub.fd, .events = POLLIN};
            if (now_ns() > deadline)
                die("no SUBACK");
            if (poll(&p, 1, 100) > 0 && mq_read(&msub, on_mq_msg, f) < 0)
                die("subscriber connection closed");
        }
    } else {
        rsub = rd_connect(f->redis_port);
        redisReply *r = redisCommand(rsub, strchr(f->sub_name, '*') ? "PSUBSCRIBE %s"
                                                                     : "SUBSCRIBE %s",
                                     f->sub_name);
        if (!r)
            die("redis subscribe");
        freeReplyObject(r);
        rd_nonblock(rsub);
    }
    if (pub_mqtt) {
        snprintf(id, sizeof(id), "bench-pub-%d", (int)getpid());
        mq_start(&mpub, f->mqtt_port, id, 0);
        mq_flush(&mpub);
    } else {
        rpub = rd_connect(f->redis_port);
        rd_nonblock(rpub);
    }

    char *payload = malloc((size_t)f->size);
    memset(payload, 'x', (size_t)f->size);
    char name[512];
    size_t plen = strlen(f->pub_prefix);
    if (plen > 400)
        die("prefix too long");
    memcpy(name, f->pub_prefix, plen);

    long sent = 0;
    int64_t t0 = now_ns(), last_progress = t0, end = t0 + f->timeout_s * 1000000000LL;
    f->first_send = t0;
    int64_t interval = f->rate > 0 ? 1000000000LL / f->rate : 0;
    long last_unique = 0;
    while (f->unique < f->count) {
        int64_t now = now_ns();
        /* send what the mode allows */
        long budget = 256; /* per loop turn, so receiving keeps up */
        while (sent < f->count && budget-- > 0) {
            if (f->window > 0 && sent - f->unique >= f->window)
                break;
            if (interval && now < t0 + sent * interval)
                break;
            if (!interval && f->window == 0 && pub_mqtt && mpub.out.len > (4u << 20))
                break; /* open loop: the socket takes it as fast as it can */
            int nl = snprintf(name + plen, sizeof(name) - plen, "%ld",
                              f->channels > 1 ? sent % f->channels + 1 : 1);
            int hl = snprintf(payload, 40, "%ld %lld ", sent, (long long)now_ns());
            payload[hl] = 'x';
            if (pub_mqtt)
                mq_publish(&mpub, name, plen + (size_t)nl, payload, (size_t)f->size,
                           f->qos);
            else {
                const char *av[] = {"PUBLISH", name, payload};
                size_t al[] = {7, plen + (size_t)nl, (size_t)f->size};
                redisAppendCommandArgv(rpub, 3, av, al);
            }
            sent++;
        }
        if (pub_mqtt ? mq_flush(&mpub) < 0 : rd_flush(rpub) < 0)
            die("publisher connection broken");
        if (rpub) { /* discard PUBLISH replies */
            void *r;
            while (redisGetReplyFromReader(rpub, &r) == REDIS_OK && r)
                freeReplyObject(r);
        }
        /* wait */
        struct pollfd p[2];
        int np = 0;
        int pubfd = pub_mqtt ? mpub.fd : rpub->fd;
        int subfd = sub_mqtt ? msub.fd : rsub->fd;
        int pub_wants_out = pub_mqtt ? mpub.out.len > mpub.out.off
                                     : sdslen(rpub->obuf) > 0;
        p[np++] = (struct pollfd){.fd = subfd, .events = POLLIN};
        p[np++] = (struct pollfd){.fd = pubfd, .events = POLLIN | (pub_wants_out ? POLLOUT : 0)};
        int64_t tmo = 50000000; /* ns; ppoll, so a 0.5 ms wait does not spin */
        if (interval && sent < f->count) {
            int64_t due = t0 + sent * interval - now_ns();
            tmo = due <= 0 ? 0 : due;
        } else if (sent < f->count && f->window == 0) {
            tmo = 0;
        }
        struct timespec ts = {(time_t)(tmo / 1000000000), (long)(tmo % 1000000000)};
        if (ppoll(p, (nfds_t)np, &ts, NULL) < 0 && errno != EINTR)
            die("poll");
        if (p[0].revents) {
            if (sub_mqtt) {
                if (mq_read(&msub, on_mq_msg, f) < 0)
                    die("subscriber connection closed");
            } else {
                if (redisBufferRead(rsub) != REDIS_OK)
                    die("redis subscriber read");
                rd_sub_replies(f, rsub);
            }
        }
        if (p[1].revents & POLLIN) {
            if (pub_mqtt) {
                if (mq_read(&mpub, on_mq_msg, f) < 0)
                    die("publisher connection closed");
            } else if (redisBufferRead(rpub) != REDIS_OK) {
                die("redis publisher read");
            }
        }
        now = now_ns();
        if (f->unique != last_unique) {
            last_unique = f->unique;
            last_progress = now;
        }
        /* a lost QoS 0 message would stall a closed loop: after idle_ms
         * without progress, the window opens again (counted as lost) */
        if (now - last_progress > f->idle_ms * 1000000LL) {
            if (sent >= f->count)
                break;
            f->window = f->window ? f->window + f->window : 0;
            last_progress = now;
        }
        if (now > end)
            break;
    }
    int64_t t1 = f->last_recv ? f->last_recv : now_ns();
    double secs = (double)(t1 - f->first_send) / 1e9;
    qsort(f->lat_us, (size_t)f->unique, sizeof(uint32_t), cmp_u32);
#define PCT(q) (f->unique ? f->lat_us[(size_t)((double)(f->unique - 1) * (q))] : 0)
    printf("{\"sent\": %ld, \"received\": %ld, \"unique\": %ld, \"lost\": %ld, "
           "\"duplicated\": %ld, \"reordered\": %ld, \"malformed\": %ld, "
           "\"seconds\": %.6f, \"msg_per_s\": %.1f, \"lat_us\": {\"p50\": %u, "
           "\"p99\": %u, \"max\": %u}, \"puback\": %ld}\n",
           sent, f->received, f->unique, f->count - f->unique, f->dups, f->reordered,
           f->bad, secs, secs > 0 ? (double)f->unique / secs : 0.0, PCT(0.5),
           PCT(0.99), PCT(1.0), mpub.pubacks);
    fflush(stdout);
    if (msub.fd >= 0) close(msub.fd);
    if (mpub.fd >= 0) close(mpub.fd);
    if (rsub) redisFree(rsub);
    if (rpub) redisFree(rpub);
    free(msub.in.p); free(msub.out.p); free(mpub.in.p); free(mpub.out.p);
    free(payload);
    free(f->seen);
    free(f->lat_us);
    return 0;
}

/* ---- fan-out ---- */

typedef struct fan {
    long got[2]; /* per target: subscribers that have this round's message */
    int64_t last[2];
    long round;
} fan;

static void on_fan_msg(void *ctx, mq *c, const char *t, size_t tl, const char *p,
                       size_t n)
{
    fan *F = ctx;
    int which = tl >= 6 && memcmp(t + tl - 6, "direct", 6) == 0;
    long r = strtol(p, NULL, 10);
    if (r != F->round)
        return;
    F->got[which]++;
    F->last[which] = now_ns();
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int run_fanout(int argc, char **argv)
{
    long subs = 1000, rounds = 5;
    int mport = 1883, rport = 6379;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--subs")) subs = arg_long(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds")) rounds = arg_long(argv[i + 1]);
        else if (!strcmp(argv[i], "--mqtt-port")) mport = (int)arg_long(argv[i + 1]);
        else if (!strcmp(argv[i], "--redis-port")) rport = (int)arg_long(argv[i + 1]);
        else { fprintf(stderr, "mrb_bench: unknown option %s\n", argv[i]); return 2; }
    }
    if (subs < 1 || rounds < 1 || rounds > 1000)
        return 2;
    mq *c = calloc((size_t)subs, sizeof(*c));
    struct pollfd *p = calloc((size_t)subs, sizeof(*p));
    fan F = {.round = -1};
    int64_t t_conn = now_ns(), deadline = t_conn + 120 * 1000000000LL;
    /* connect in slices of 200 so the broker's listen backlog keeps up */
    long connected = 0;
    for (long i = 0; i < subs; i++) {
        char id[48];
        snprintf(id, sizeof(id), "bench-fan-%d-%ld", (int)getpid(), i);
        mq_start(&c[i], mport, id, 1);
        mq_subscribe(&c[i], "fan/bridge", 0);
        mq_subscribe(&c[i], "fan/direct", 0);
        if ((i + 1) % 200 == 0 || i + 1 == subs) {
            for (;;) {
                long ready = 0;
                for (long j = connected; j <= i; j++) {
                    if (c[j].got_suback >= 2 && c[j].out.len == 0)
                        ready++;
                    p[j] = (struct pollfd){.fd = c[j].fd,
                                           .events = POLLIN | (c[j].out.len ? POLLOUT : 0)};
                }
                if (ready == i + 1 - connected)
                    break;
                if (now_ns() > deadline)
                    die("fan-out subscribers did not all connect in 120 s");
                poll(p + connected, (nfds_t)(i + 1 - connected), 100);
                for (long j = connected; j <= i; j++) {
                    if (p[j].revents & POLLOUT && mq_flush(&c[j]) < 0)
                        die("fan-out connection failed");
                    if (p[j].revents & POLLIN && mq_read(&c[j], on_fan_msg, &F) < 0)
                        die("fan-out connection closed");
                }
            }
            connected = i + 1;
        }
    }
    double connect_s = (double)(now_ns() - t_conn) / 1e9;
    for (long j = 0; j < subs; j++)
        p[j] = (struct pollfd){.fd = c[j].fd, .events = POLLIN};
    usleep(300000); /* both SUBACKs are in for each; let the broker settle */
    redisContext *r = rd_connect(rport);
    mq pub;
    char id[40];
    snprintf(id, sizeof(id), "bench-fanpub-%d", (int)getpid());
    mq_start(&pub, mport, id, 0);
    mq_flush(&pub);
    usleep(100000);
    int64_t *tb = calloc((size_t)rounds, sizeof(int64_t));
    int64_t *td = calloc((size_t)rounds, sizeof(int64_t));
    long incomplete[2] = {0, 0};
    for (long rd = 0; rd < rounds; rd++) {
        for (int step = 0; step < 2; step++) {
            /* alternate which goes first, so drift in the machine's load
             * does not favour one */
            int which = (int)((rd + step) % 2);
            F.round = rd * 2 + step;
            F.got[which] = 0;
            char pl[32];
            int n = snprintf(pl, sizeof(pl), "%ld", F.round);
            int64_t t0 = now_ns();
            if (which)
                mq_publish(&pub, "fan/direct", 10, pl, (size_t)n, 0), mq_flush(&pub);
            else
                freeReplyObject(redisCommand(r, "PUBLISH fan:bridge %b", pl, (size_t)n));
            int64_t stop = t0 + 10 * 1000000000LL;
            while (F.got[which] < subs && now_ns() < stop) {
                if (poll(p, (nfds_t)subs, 100) <= 0)
                    continue;
                for (long j = 0; j < subs; j++)
                    if (p[j].revents && mq_read(&c[j], on_fan_msg, &F) < 0)
                        die("fan-out connection closed");
            }
            if (F.got[which] < subs)
                incomplete[which]++;
            (which ? td : tb)[rd] = F.last[which] - t0;
            usleep(50000);
        }
    }
    qsort(tb, (size_t)rounds, sizeof(int64_t), cmp_i64);
    qsort(td, (size_t)rounds, sizeof(int64_t), cmp_i64);
    printf("{\"subscribers\": %ld, \"rounds\": %ld, \"connect_s\": %.2f, "
           "\"bridge_ms\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}, "
           "\"direct_ms\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}, "
           "\"incomplete_rounds\": {\"bridge\": %ld, \"direct\": %ld}}\n",
           subs, rounds, connect_s, tb[rounds / 2] / 1e6, tb[0] / 1e6,
           tb[rounds - 1] / 1e6, td[rounds / 2] / 1e6, td[0] / 1e6,
           td[rounds - 1] / 1e6, incomplete[0], incomplete[1]);
    fflush(stdout);
    for (long j = 0; j < subs; j++) {
        close(c[j].fd);
        free(c[j].in.p);
        free(c[j].out.p);
    }
    close(pub.fd);
    free(pub.in.p);
    free(pub.out.p);
    redisFree(r);
    free(c);
    free(p);
    free(tb);
    free(td);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "flow"))
        return run_flow(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "fanout"))
        return run_fanout(argc, argv);
    fprintf(stderr, "usage: mrb_bench flow|fanout [options] (see the source)\n");
    return 2;
}
