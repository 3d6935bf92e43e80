/*
 * mrb_bench.c - the load generator of bench/run.py: publishes numbered,
 * time-stamped messages on one side (MQTT or Redis) and receives them on one
 * side, in one single-threaded poll() loop, and prints one JSON object.
 *
 * The MQTT side is libmosquitto (MQTT 3.1.1), without its own thread: each
 * client's socket is in this poll() loop, which calls mosquitto_loop_read /
 * _write / _misc when it is ready. The same client on the bridge path and on
 * the direct path; 10,000 subscriber connections fit in one process. The
 * Redis side is hiredis with its socket made non-blocking.
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
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <mosquitto.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
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

/* ---- the MQTT side: libmosquitto, driven from our own poll() loop ---- */

/* libmosquitto opens a socketpair on every connect, only to wake its own
 * loop thread (mosquitto_loop_start / mosquitto_loop), which is not used
 * here; it goes on without one when socketpair() fails (it only logs a
 * warning). This definition takes the place of libc's for the whole process
 * (nothing else here calls socketpair), so a client takes one descriptor
 * instead of three (10,000 subscribers fit in ulimit -n 20000) and a queued
 * packet costs no extra write() to the pair. */
int socketpair(int domain, int type, int protocol, int sv[2])
{
    (void)domain, (void)type, (void)protocol, (void)sv;
    errno = EMFILE;
    return -1;
}

/* One client: libmosquitto without its thread; the caller polls
 * mosquitto_socket() (POLLOUT while mosquitto_want_write()) and calls
 * mc_read() / mc_write(). */
typedef struct mc {
    struct mosquitto *m;
    void (*on_msg)(void *ctx, const char *topic, const char *payload, size_t n);
    void *ctx;
    const char *filter[2];
    int nfilter, qos;
    int connack_rc, got_connack, got_suback;
    long pubacks, events;
    int count_pubacks;
} mc;

static void mc_on_connect(struct mosquitto *m, void *ud, int rc)
{
    mc *c = ud;
    c->events++;
    c->got_connack = 1;
    c->connack_rc = rc;
    for (int i = 0; rc == 0 && i < c->nfilter; i++)
        if (mosquitto_subscribe(m, NULL, c->filter[i], c->qos) != MOSQ_ERR_SUCCESS)
            c->connack_rc = -1;
}

static void mc_on_subscribe(struct mosquitto *m, void *ud, int mid, int n,
                            const int *granted)
{
    mc *c = ud;
    c->events++;
    c->got_suback++;
}

static void mc_on_message(struct mosquitto *m, void *ud,
                          const struct mosquitto_message *msg)
{
    mc *c = ud;
    c->events++;
    if (c->on_msg)
        c->on_msg(c->ctx, msg->topic, msg->payload, (size_t)msg->payloadlen);
}

/* QoS 1: called when the PUBACK is in (QoS 0: when the PUBLISH is written) */
static void mc_on_publish(struct mosquitto *m, void *ud, int mid)
{
    mc *c = ud;
    c->events++;
    if (c->count_pubacks)
        c->pubacks++;
}

/* Connects (async: the TCP connect and CONNECT go out from mc_write when the
 * socket is writable) and, on CONNACK, subscribes to c->filter[]. */
static void mc_start(mc *c, int port, const char *id, int async)
{
    if (!(c->m = mosquitto_new(id, true, c)))
        die("mosquitto_new");
    mosquitto_connect_callback_set(c->m, mc_on_connect);
    mosquitto_subscribe_callback_set(c->m, mc_on_subscribe);
    mosquitto_message_callback_set(c->m, mc_on_message);
    mosquitto_publish_callback_set(c->m, mc_on_publish);
    mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
    /* the closed loop bounds what is in flight itself (--window) */
    mosquitto_max_inflight_messages_set(c->m, 0);
    /* keep-alive: the longest MQTT allows, i.e. no PINGREQ in a run */
    int rc = async ? mosquitto_connect_async(c->m, "127.0.0.1", port, 65535)
                   : mosquitto_connect(c->m, "127.0.0.1", port, 65535);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mrb_bench: mosquitto_connect: %s\n", mosquitto_strerror(rc));
        exit(1);
    }
}

/* Write what libmosquitto has queued; -1 on a broken connection. */
static int mc_write(mc *c)
{
    if (!mosquitto_want_write(c->m))
        return 0;
    return mosquitto_loop_write(c->m, 1) == MOSQ_ERR_SUCCESS ? 0 : -1;
}

/* Read and handle the packets that have arrived; -1 on a closed or broken
 * connection. mosquitto_loop_read() handles about one QoS 0 packet per call,
 * so call it until a call handles nothing (the socket is drained, or only
 * part of a packet is in), at most 4096 times: poll() reports the rest. */
static int mc_read(mc *c)
{
    for (int i = 0; i < 4096; i++) {
        long ev = c->events;
        if (mosquitto_loop_read(c->m, 1) != MOSQ_ERR_SUCCESS)
            return -1;
        if (c->events == ev)
            break;
    }
    mosquitto_loop_misc(c->m);
    return mc_write(c);
}

static short mc_events(mc *c)
{
    return (short)(POLLIN | (mosquitto_want_write(c->m) ? POLLOUT : 0));
}

/* Wait (bounded) until connected and subscribed to every filter. */
static void mc_wait_ready(mc *c, int64_t deadline, const char *what)
{
    while (!c->got_connack || c->got_suback < c->nfilter) {
        if (c->got_connack && c->connack_rc != 0) {
            fprintf(stderr, "mrb_bench: %s: connection refused (%d)\n", what,
                    c->connack_rc);
            exit(1);
        }
        struct pollfd p = {.fd = mosquitto_socket(c->m), .events = mc_events(c)};
        if (now_ns() > deadline) {
            fprintf(stderr, "mrb_bench: %s: no CONNACK/SUBACK in time\n", what);
            exit(1);
        }
        if (poll(&p, 1, 100) > 0 &&
            ((p.revents & POLLOUT && mc_write(c) < 0) ||
             (p.revents & (POLLIN | POLLHUP | POLLERR) && mc_read(c) < 0))) {
            fprintf(stderr, "mrb_bench: %s: connection closed\n", what);
            exit(1);
        }
    }
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

static void on_mq_msg(void *ctx, const char *t, const char *p, size_t n)
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
    mc msub = {0}, mpub = {0};
    redisContext *rsub = NULL, *rpub = NULL;
    char id[40];
    int64_t deadline = now_ns() + 10 * 1000000000LL;
    if (sub_mqtt) {
        snprintf(id, sizeof(id), "bench-sub-%d", (int)getpid());
        msub = (mc){.on_msg = on_mq_msg, .ctx = f, .filter = {f->sub_name},
                    .nfilter = 1, .qos = f->qos};
        mc_start(&msub, f->mqtt_port, id, 0);
        mc_wait_ready(&msub, deadline, "subscriber");
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
        mpub = (mc){.on_msg = on_mq_msg, .ctx = f, .count_pubacks = f->qos > 0};
        mc_start(&mpub, f->mqtt_port, id, 0);
        mc_wait_ready(&mpub, deadline, "publisher");
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
            if (!interval && f->window == 0 && pub_mqtt && mosquitto_want_write(mpub.m))
                break; /* open loop: as fast as the socket takes it */
            int nl = snprintf(name + plen, sizeof(name) - plen, "%ld",
                              f->channels > 1 ? sent % f->channels + 1 : 1);
            int hl = snprintf(payload, 40, "%ld %lld ", sent, (long long)now_ns());
            payload[hl] = 'x';
            if (pub_mqtt) {
                int rc = mosquitto_publish(mpub.m, NULL, name, (int)f->size, payload,
                                           f->qos, false);
                if (rc != MOSQ_ERR_SUCCESS) {
                    fprintf(stderr, "mrb_bench: mosquitto_publish: %s\n",
                            mosquitto_strerror(rc));
                    exit(1);
                }
            } else {
                const char *av[] = {"PUBLISH", name, payload};
                size_t al[] = {7, plen + (size_t)nl, (size_t)f->size};
                redisAppendCommandArgv(rpub, 3, av, al);
            }
            sent++;
        }
        if (pub_mqtt ? mc_write(&mpub) < 0 : rd_flush(rpub) < 0)
            die("publisher connection broken");
        if (rpub) { /* discard PUBLISH replies */
            void *r;
            while (redisGetReplyFromReader(rpub, &r) == REDIS_OK && r)
                freeReplyObject(r);
        }
        /* wait */
        struct pollfd p[2];
        int np = 0;
        int pubfd = pub_mqtt ? mosquitto_socket(mpub.m) : rpub->fd;
        int subfd = sub_mqtt ? mosquitto_socket(msub.m) : rsub->fd;
        int pub_wants_out = pub_mqtt ? mosquitto_want_write(mpub.m)
                                     : sdslen(rpub->obuf) > 0;
        p[np++] = (struct pollfd){.fd = subfd, .events = sub_mqtt ? mc_events(&msub) : POLLIN};
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
                if (mc_read(&msub) < 0)
                    die("subscriber connection closed");
            } else {
                if (redisBufferRead(rsub) != REDIS_OK)
                    die("redis subscriber read");
                rd_sub_replies(f, rsub);
            }
        }
        if (pub_mqtt && p[1].revents) {
            if (mc_read(&mpub) < 0) /* reads PUBACKs, writes what is queued */
                die("publisher connection closed");
        } else if (!pub_mqtt && p[1].revents & POLLIN &&
                   redisBufferRead(rpub) != REDIS_OK) {
            die("redis publisher read");
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
    if (msub.m) mosquitto_destroy(msub.m);
    if (mpub.m) mosquitto_destroy(mpub.m);
    if (rsub) redisFree(rsub);
    if (rpub) redisFree(rpub);
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

static void on_fan_msg(void *ctx, const char *t, const char *p, size_t n)
{
    fan *F = ctx;
    size_t tl = strlen(t);
    int which = tl >= 6 && memcmp(t + tl - 6, "direct", 6) == 0;
    char tmp[24];
    size_t k = n < sizeof(tmp) - 1 ? n : sizeof(tmp) - 1;
    memcpy(tmp, p, k);
    tmp[k] = '\0';
    long r = strtol(tmp, NULL, 10);
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
    rlim_t need = (rlim_t)subs + 64;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = need;
        if (rl.rlim_max < need)
            rl.rlim_max = need; /* root only */
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "mrb_bench: %ld subscribers need ulimit -n %lu\n", subs,
                    (unsigned long)need);
            return 1;
        }
    }
    mc *c = calloc((size_t)subs, sizeof(*c));
    struct pollfd *p = calloc((size_t)subs, sizeof(*p));
    fan F = {.round = -1};
    int64_t t_conn = now_ns(), deadline = t_conn + 120 * 1000000000LL;
    /* connect in slices of 200 so the broker's listen backlog keeps up */
    long connected = 0;
    for (long i = 0; i < subs; i++) {
        char id[48];
        snprintf(id, sizeof(id), "bench-fan-%d-%ld", (int)getpid(), i);
        c[i] = (mc){.on_msg = on_fan_msg, .ctx = &F,
                    .filter = {"fan/bridge", "fan/direct"}, .nfilter = 2};
        mc_start(&c[i], mport, id, 1);
        if ((i + 1) % 200 == 0 || i + 1 == subs) {
            for (;;) {
                long ready = 0;
                for (long j = connected; j <= i; j++) {
                    if (c[j].got_connack && c[j].connack_rc != 0)
                        die("fan-out connection refused");
                    if (c[j].got_suback >= 2 && !mosquitto_want_write(c[j].m))
                        ready++;
                    p[j] = (struct pollfd){.fd = mosquitto_socket(c[j].m),
                                           .events = mc_events(&c[j])};
                }
                if (ready == i + 1 - connected)
                    break;
                if (now_ns() > deadline)
                    die("fan-out subscribers did not all connect in 120 s");
                poll(p + connected, (nfds_t)(i + 1 - connected), 100);
                for (long j = connected; j <= i; j++) {
                    if (p[j].revents & POLLOUT && mc_write(&c[j]) < 0)
                        die("fan-out connection failed");
                    if (p[j].revents & (POLLIN | POLLHUP | POLLERR) && mc_read(&c[j]) < 0)
                        die("fan-out connection closed");
                }
            }
            connected = i + 1;
        }
    }
    double connect_s = (double)(now_ns() - t_conn) / 1e9;
    for (long j = 0; j < subs; j++)
        p[j] = (struct pollfd){.fd = mosquitto_socket(c[j].m), .events = POLLIN};
    usleep(300000); /* both SUBACKs are in for each; let the broker settle */
    redisContext *r = rd_connect(rport);
    mc pub = {0};
    char id[40];
    snprintf(id, sizeof(id), "bench-fanpub-%d", (int)getpid());
    mc_start(&pub, mport, id, 0);
    mc_wait_ready(&pub, now_ns() + 10 * 1000000000LL, "fan-out publisher");
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
            if (which) {
                if (mosquitto_publish(pub.m, NULL, "fan/direct", n, pl, 0, false) !=
                        MOSQ_ERR_SUCCESS || mc_write(&pub) < 0)
                    die("fan-out publish");
            } else
                freeReplyObject(redisCommand(r, "PUBLISH fan:bridge %b", pl, (size_t)n));
            int64_t stop = t0 + 10 * 1000000000LL;
            while (F.got[which] < subs && now_ns() < stop) {
                if (poll(p, (nfds_t)subs, 100) <= 0)
                    continue;
                for (long j = 0; j < subs; j++)
                    if (p[j].revents && mc_read(&c[j]) < 0)
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
    for (long j = 0; j < subs; j++)
        mosquitto_destroy(c[j].m);
    mosquitto_destroy(pub.m);
    redisFree(r);
    free(c);
    free(p);
    free(tb);
    free(td);
    return 0;
}

int main(int argc, char **argv)
{
    mosquitto_lib_init();
    if (argc >= 2 && !strcmp(argv[1], "flow"))
        return run_flow(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "fanout"))
        return run_fanout(argc, argv);
    fprintf(stderr, "usage: mrb_bench flow|fanout [options] (see the source)\n");
    return 2;
}
