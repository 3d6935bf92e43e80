#!/usr/bin/python3
"""The echo guard at any lag (issue 13 item 6): Redis pub/sub has no "no
local", so every PUBLISH the bridge makes on a channel it also subscribes
comes back to its subscriber, however late, and its fingerprint must still
be there then: not evicted from a full table, not expired.

Set-up of both cases: routes s0/+ <> s0:* (QoS 0) and s1/+ <> s1:* (QoS
1), both directions. The bridge reaches Redis through relay.py, which
delays everything Redis sends to the bridge's subscriber connection (only
that one) by DELAY = 6 s: each echo, and each message from Redis to MQTT,
arrives 6 s after Redis sent it. Load, for PUBLISH_S = 8 s at once: MQTT
publishers on s0/d<k> (QoS 0) and s1/d<k> (QoS 1), and Redis publishers on
s0:r<k> and s1:r<k>. Every payload is unique.

1. test_echo_guard_holds_at_6s_lag_and_6000_in_flight: default limits
   (queue_messages 10000: the echo table holds 10000 copies per side),
   MQTT_RATE messages/s on each MQTT route (1000/s into Redis in all: about
   6000 of the bridge's PUBLISHes wait for their echo at once, more than
   the old table's 4096 and longer than its 5 s TTL), REDIS_RATE/s on each
   Redis route. The table never fills.

   Then, exactly: an MQTT subscriber on s0/# and s1/# gets every MQTT
   original once (no echo came back) and every Redis original once; a Redis
   subscriber on s0:* and s1:* gets every MQTT original once and every Redis
   original once. Proof that the conditions were reached: the relay delayed
   only the subscriber's connection, by at least DELAY > 5 s; more than 4096
   of the bridge's PUBLISHes had reached Redis before the first message
   could reach its subscriber (6000 at these rates); the bridge's exit
   statistics: echoes == every one of them, echo_peak > 4096, echo_evicted
   == echo_expired == echo_cleared == 0, nothing dropped, nothing sent
   again; redis_sub_lost == 0 before the stop (SIGUSR1: the exit line also
   counts the bridge's own close of its subscriber at shutdown).

2. test_echo_guard_holds_back_when_the_table_is_full: the back-pressure
   path (echo.h "Full"). limits.queue_messages FULL_QUEUE = 1000, so the
   table holds CAPACITY = 4096 copies (MRB_ECHO_MIN), in_q and out_q 1000
   messages; FULL_MQTT_RATE/s on each MQTT route, the QoS 0 ones in
   bursts of FULL_QOS0_BURST (more than in_q holds: a burst that arrives
   while the bridge holds back makes in_q drop its oldest QoS 0 messages,
   counted) and the QoS 1 ones evenly (1200/s into Redis on average: the
   table is full after about 3.4 s, and from then on the bridge can send
   only as fast as its echoes come back, 4096 per DELAY), FULL_REDIS_RATE/s
   on each Redis route (800 in all: fewer than out_q holds, since main does
   not start a QoS 1 publish while a callback waits, so Redis -> MQTT
   waits in out_q behind the held MQTT -> Redis traffic). The broker keeps
   every message for the bridge (mosquitto max_queued_messages 0: its
   default of 1000 per client would drop QoS 1 and QoS 0 messages the
   bridge never saw, and no counter of the bridge could say so).

   Then, exactly: on MQTT, every MQTT original once (no echo came back) and
   every Redis original once; on Redis, every QoS 1 MQTT original once (the
   broker held them while the bridge held back: none lost), every QoS 0 one
   at most once and the missing ones counted (arrived + dropped_queue_full
   == sent: in_q drops its oldest QoS 0 messages when full), every Redis
   original once. Before the stop (SIGUSR1) nothing is left queued and the
   subscriber was never lost. Exit statistics (SIGTERM, exit 0):
   echo_waits >= 1 (it held back), CAPACITY <= echo_peak <= CAPACITY +
   MARGIN, echo_evicted == echo_expired == echo_cleared == 0, echoes ==
   redis_out == the bridge's PUBLISHes seen on Redis, nothing sent again,
   nothing given back to the broker, mqtt_in == every MQTT original.

The rates do not depend on MRB_TIMEOUT_SCALE (the ASan build keeps up);
only the waits scale. MRB_ECHO_VERBOSE=1 prints the exit statistics and
the relay's figures of a passing run."""

import collections
import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, stats_counters, stats_lines  # noqa: E402
from relay import DelayRelay  # noqa: E402

# relay: Redis -> the bridge's subscriber (> 5 s TTL); longer in the slower
# sanitizer builds (MRB_TIMEOUT_SCALE > 1), where the bridge made only ~3800
# PUBLISHes in the first 6 s in 2 runs of 5, so that more than 4096 still
# wait for their echo at once there
DELAY = 6.0 if harness.SCALE <= 1 else 9.0
PUBLISH_S = 8.0        # all publishers at once, this long
MQTT_RATE = 500        # messages/s on s0/ (QoS 0) and on s1/ (QoS 1) each
REDIS_RATE = 200       # messages/s on s0: and on s1: each
DEVICES = 4            # s0/d0..d3, s1/d0..d3
REDIS_NAMES = 2        # s0:r0..r1, s1:r0..r1
OLD_TABLE = 4096       # the old echo table's size (and MRB_ECHO_MIN)

# case 2: the table fills
FULL_QUEUE = 1000      # limits.queue_messages
CAPACITY = 4096        # max(MRB_ECHO_MIN, FULL_QUEUE): copies before full
MARGIN = 1024          # MRB_ECHO_MARGIN: forced notes past full
FULL_MQTT_RATE = 600   # messages/s on s0/ and on s1/ each
FULL_REDIS_RATE = 50   # messages/s on s0: and on s1: each
FULL_QOS0_BURST = 1200  # the QoS 0 ones in groups this large (every 2 s)


def paced(n, rate, t0, stop, fn, burst=1):
    """fn(i) for i in 0..n-1, the i-th at t0 + i/rate (catching up when
    behind); burst > 1: in groups of burst, each group at once at the time
    of its first. Bounded by n and by stop."""
    for i in range(n):
        if stop.is_set():
            return i
        wait = t0 + (i - i % burst) / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        fn(i)
    return n


def exact_problem(got, want, what, stats, relay_report):
    """The failure text for got != want (each exactly once), or None."""
    extra = got - want
    missing = want - got
    twice = [k for k, n in got.items() if n > 1 and k in want]
    unknown = [k for k in got if k not in want]
    if not extra and not missing:
        return None
    return ("%s: expected each of %d exactly once; %d arrived more "
            "than once (%d copies too many, e.g. %r), %d missing (e.g. "
            "%r), %d unexpected (e.g. %r)\nbridge counters now: %s\n"
            "relay: %r" % (what, sum(want.values()), len(twice),
                           sum(extra.values()), sorted(twice)[:3],
                           len(missing), sorted(missing)[:3],
                           len(unknown), sorted(unknown)[:3], stats,
                           relay_report))


class Load:
    """The originals of one run, (topic or channel, payload) each:
    m[q] from MQTT on sq/d<k>, r[q] from Redis on sq:r<k>."""

    def __init__(self, n_m, n_r):
        self.n_m, self.n_r = n_m, n_r
        self.m = {0: [("s0/d%d" % (i % DEVICES), b"m0-%06d" % i) for i in range(n_m)],
                  1: [("s1/d%d" % (i % DEVICES), b"m1-%06d" % i) for i in range(n_m)]}
        self.r = {q: [("s%d:r%d" % (q, i % REDIS_NAMES), b"r%d-%06d" % (q, i))
                      for i in range(n_r)] for q in (0, 1)}
        self.sent_t = {}   # "m0", "m1", "r": when the first one went
        self.took = None   # seconds the publishing took

    def mqtt_originals(self):
        return collections.Counter(self.m[0] + self.m[1])

    def want_mqtt(self):
        """On MQTT: every original once (Redis ones mapped to topics)."""
        return collections.Counter(
            self.m[0] + self.m[1] +
            [(c.replace(":", "/"), p) for c, p in self.r[0] + self.r[1]])

    def want_redis(self, qos=(0, 1)):
        """On Redis: the MQTT originals of these QoS (mapped to channels)
        and every Redis original, once each."""
        return collections.Counter(
            [(t.replace("/", ":"), p) for q in qos for t, p in self.m[q]] +
            self.r[0] + self.r[1])


class EchoLagTest(ServersTestCase):

    # max_queued 0, the broker keeps everything for the bridge: under ASan
    # the bridge may fall more than mosquitto's default 1000 queued messages
    # behind, which the broker would drop (seen: mqtt_in=7701 of 8000,
    # "Outgoing messages are being dropped"), and while it holds back
    SERVERS = {"mosquitto": {"max_queued": 0}}

    def setUp(self):
        super().setUp()
        self.relay = DelayRelay(self.rs.port, DELAY,
                                lifetime=300 * harness.SCALE).start()
        self.addCleanup(self.relay.stop)

    # the parts both cases share -----------------------------------------
    def start(self, limits=None):
        cfg = {
            "id": "echo",
            "mqtt": {"url": self.mq.url},
            "redis": {"url": self.relay.url},
            "stats_interval": 0,
            "routes": [
                {"mqtt": "s0/+", "redis": "s0:*", "direction": "both", "qos": 0},
                {"mqtt": "s1/+", "redis": "s1:*", "direction": "both", "qos": 1}]}
        if limits:
            cfg["limits"] = limits
        b = self.start_bridge(None, None, "-c", self.write_config(cfg), ready=False)
        # "ready:" waits for the subscriber's confirmations: DELAY late
        b.wait_ready(timeout=harness.READY_TIMEOUT + 2 * DELAY)
        delayed = self.relay.delayed_connections()
        self.assertEqual([c.name for c in delayed], ["mrb:echo:subscriber"],
                         "the relay delays exactly the bridge's subscriber: %r"
                         % self.relay.report())
        return b

    def subscribers(self):
        msub = self.mqtt_client(self.mq.port, "s0/#", "s1/#", qos=1, name="msub")
        rsub = self.redis_sub(self.rs.port, patterns=["s0:*", "s1:*"])
        return msub, rsub

    @staticmethod
    def got_mqtt(msub):
        return collections.Counter((m.topic, m.payload) for m in msub.snapshot())

    @staticmethod
    def got_redis(rsub):
        return collections.Counter((m.channel.decode(), m.data)
                                   for m in rsub.snapshot())

    def stats_now(self, b):
        """The bridge's counters now (SIGUSR1), for the failure messages."""
        before = len(stats_lines(b))
        b.proc.send_signal(signal.SIGUSR1)
        harness.wait_until(lambda: len(stats_lines(b)) > before,
                           harness.DELIVERY_TIMEOUT)
        lines = stats_lines(b)
        return lines[-1] if len(lines) > before else "(no stats line on SIGUSR1)"

    def publish(self, load, mqtt_rate, redis_rate, qos0_burst=1):
        """All publishers at once, paced (load.n_m at mqtt_rate on each MQTT
        route, the QoS 0 ones in groups of qos0_burst, load.n_r at
        redis_rate on each Redis one); returns when the broker has
        acknowledged every QoS 1 publish."""
        pubs = {q: self.mqtt_client(self.mq.port, name="pub%d" % q) for q in (0, 1)}
        rpub = self.redis_client(self.rs.port)
        stop = threading.Event()
        self.addCleanup(stop.set)
        infos = {0: [], 1: []}
        errors = []

        def mqtt_pub(q):
            c = pubs[q].c

            def one(i):
                info = c.publish(load.m[q][i][0], load.m[q][i][1], qos=q)
                if info.rc != 0:
                    errors.append("MQTT publish %r: rc %d" % (load.m[q][i], info.rc))
                    stop.set()
                infos[q].append(info)
                if i == 0:
                    load.sent_t["m%d" % q] = time.monotonic()
            paced(load.n_m, mqtt_rate, t0, stop, one, qos0_burst if q == 0 else 1)

        def redis_pub():
            def one(i):
                for q in (0, 1):
                    rpub.publish(*load.r[q][i])
                if i == 0:
                    load.sent_t["r"] = time.monotonic()
            try:
                paced(load.n_r, redis_rate, t0, stop, one)
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append("Redis PUBLISH: %r" % e)

        threads = [threading.Thread(target=mqtt_pub, args=(q,), daemon=True)
                   for q in (0, 1)] + [threading.Thread(target=redis_pub, daemon=True)]
        t0 = time.monotonic() + 0.2
        for t in threads:
            t.start()
        for t in threads:
            t.join(PUBLISH_S * 3 * harness.SCALE + 10)
        stop.set()
        pub_end = time.monotonic()
        self.assertFalse([t for t in threads if t.is_alive()],
                         "publishers did not finish")
        self.assertEqual(errors, [])
        for q in (0, 1):
            self.assertEqual(len(infos[q]), load.n_m)
        for info in infos[1]:  # QoS 1: all acknowledged by the broker
            info.wait_for_publish(max(0.1, pub_end + harness.DELIVERY_TIMEOUT
                                      - time.monotonic()))
        self.assertTrue(all(i.is_published() for i in infos[1]),
                        "QoS 1 publishes not acknowledged by the broker")
        load.took = pub_end - t0

    def drain(self, arrived, timeout):
        """Waits (bounded) until arrived() and the relay has been idle, with
        nothing waiting, for QUIET (a copy that was to come back is back),
        then QUIET more."""
        def drained():
            idle, waiting = self.relay.idle_since()
            return (not waiting and idle is not None and idle >= harness.QUIET and
                    arrived())
        harness.wait_until(drained, timeout, 0.2)
        time.sleep(harness.QUIET)

    def check_exact(self, got, want, what, stats):
        problem = exact_problem(got, want, what, stats, self.relay.report())
        if problem:
            self.fail(problem)

    def check_mqtt(self, load, mq_got, stats):
        # the decisive one: no MQTT original came back to MQTT
        mqtt_originals = load.mqtt_originals()
        self.check_exact(collections.Counter({k: n for k, n in mq_got.items()
                                              if k in mqtt_originals or
                                              k[1][:1] == b"m"}),
                         mqtt_originals,
                         "MQTT subscriber on s0/# s1/#, the %d MQTT originals "
                         "(QoS 0 and 1; a second copy is the bridge's echo "
                         "forwarded back)" % (2 * load.n_m), stats)
        # and every Redis original arrived once, nothing else
        self.check_exact(mq_got, load.want_mqtt(),
                         "MQTT subscriber on s0/# s1/#, all messages", stats)

    def check_lag(self, load, msub):
        """The relay delayed the subscriber only, once, by more than the
        5 s TTL, also for Redis -> MQTT. (the relay's connection, and when
        the bridge's subscriber could read its first message)"""
        sub = self.relay.delayed_connections()
        self.assertEqual(len(sub), 1, "the subscriber connected once: %r"
                         % self.relay.report())
        sub = sub[0]
        self.assertGreater(sub.min_lag, 5.0, "the relay's lag: %r" % sub.summary())
        first_back = sub.first_message_sent_t
        self.assertIsNotNone(first_back, "the relay forwarded no message")
        first_r = min(m.t for m in msub.snapshot() if m.payload[:1] == b"r")
        self.assertGreater(first_r - load.sent_t["r"], 5.0,
                           "Redis -> MQTT lag (first Redis original on MQTT)")
        return sub, first_back

    def exit_counters(self, b):
        """Stop the bridge (SIGTERM, exit 0): its exit counters."""
        b.stop()
        self.assertEqual(b.proc.returncode, 0, b.tail())
        lines = stats_lines(b)
        self.assertTrue(lines, "no stats line at exit:\n" + b.tail())
        self.assert_stats_prefix(lines[-1])
        return lines[-1], {k: int(v) for k, v in stats_counters(lines[-1]).items()}

    def assert_counters_present(self, c, report):
        for k in ("echo_peak", "echo_waits", "echo_evicted", "echo_expired",
                  "echo_cleared", "given_back"):
            self.assertIn(k, c, "counter %s missing from the stats line\n%s"
                          % (k, report))

    # the cases ------------------------------------------------------------
    def test_echo_guard_holds_at_6s_lag_and_6000_in_flight(self):
        msub, rsub = self.subscribers()
        b = self.start()
        load = Load(int(MQTT_RATE * PUBLISH_S), int(REDIS_RATE * PUBLISH_S))
        n_m = load.n_m
        self.publish(load, MQTT_RATE, REDIS_RATE)

        # drain: everything crosses (DELAY late), then the relay is idle and
        # quiet for a while: a copy that was to come back is back
        want_mqtt, want_redis = load.want_mqtt(), load.want_redis()
        self.drain(lambda: not (want_mqtt - self.got_mqtt(msub)) and
                   not (want_redis - self.got_redis(rsub)),
                   DELAY + 20 * harness.SCALE)
        mq_got, rd_got = self.got_mqtt(msub), self.got_redis(rsub)
        stats = self.stats_now(b)

        # 1. no MQTT original came back to MQTT, 2. and every Redis original
        # arrived once, nothing else
        self.check_mqtt(load, mq_got, stats)
        # 3. Redis: every MQTT original once (QoS 1: promised as long as
        # nothing reconnects; QoS 0 only loses what a counter says: see
        # the exit counters below), and the Redis originals once
        self.check_exact(rd_got, want_redis, "Redis subscriber on s0:* s1:*", stats)

        # the conditions were reached: lag > 5 s and > 4096 in flight
        sub, first_back = self.check_lag(load, msub)
        first_pub = min(load.sent_t.values())
        self.assertGreater(first_back - first_pub, 5.0,
                           "from the first publish to the first message the "
                           "bridge's subscriber could read")
        # what the bridge had published into Redis (seen by our direct
        # subscriber) before anything could come back to it
        before = sum(1 for m in rsub.snapshot()
                     if m.data[:1] == b"m" and m.t < first_back)
        self.assertGreater(before, OLD_TABLE,
                           "the bridge's PUBLISHes waiting for their echo when "
                           "the first one could come back")

        line, c = self.exit_counters(b)
        to_redis = sum(n for (ch, p), n in rd_got.items() if p[:1] == b"m")
        report = ("exit stats: %s\npublishing took %.1f s; relay: %r"
                  % (line, load.took, sub.summary()))
        self.assert_counters_present(c, report)
        dropped = {k: v for k, v in c.items() if k.startswith("dropped_") and v}
        self.assertEqual(c["mqtt_in"], 2 * n_m, report)
        # (3. found every MQTT original on Redis: nothing to count as lost)
        self.assertEqual(dropped, {}, "at this rate nothing is dropped\n" + report)
        self.assertEqual(c["redis_resent"], 0, report)
        self.assertEqual(c["redis_out"], 2 * n_m, report)
        # every PUBLISH of the bridge came back and was taken as its echo
        self.assertEqual(c["echoes"], to_redis, report)
        self.assertGreater(c["echo_peak"], OLD_TABLE, report)
        self.assertEqual(c["echo_evicted"], 0, report)
        self.assertEqual(c["echo_expired"], 0, report)
        self.assertEqual(c["echo_cleared"], 0, report)
        # the subscriber was never lost while it mattered: before the stop
        # (the exit line counts the bridge's own close at shutdown too)
        self.assertEqual(stats_counters(stats).get("redis_sub_lost"), "0",
                         "before the stop: %s" % stats)
        if os.environ.get("MRB_ECHO_VERBOSE"):
            sys.stderr.write("\n%s\nbefore first echo: %d; first echo %.2f s "
                             "after the first publish\n"
                             % (report, before, first_back - first_pub))

    def test_echo_guard_holds_back_when_the_table_is_full(self):
        msub, rsub = self.subscribers()
        b = self.start(limits={"queue_messages": FULL_QUEUE})
        load = Load(int(FULL_MQTT_RATE * PUBLISH_S), int(FULL_REDIS_RATE * PUBLISH_S))
        n_m = load.n_m
        t_start = time.monotonic()
        self.publish(load, FULL_MQTT_RATE, FULL_REDIS_RATE, FULL_QOS0_BURST)

        # drain: held back, the bridge sends CAPACITY per DELAY at most;
        # done when every message that cannot be dropped has crossed, the
        # relay is idle and Redis quiet
        want_mqtt = load.want_mqtt()
        want_sure = load.want_redis(qos=(1,))  # QoS 1 and Redis originals
        qos0 = collections.Counter((t.replace("/", ":"), p) for t, p in load.m[0])

        def arrived():
            return (not (want_mqtt - self.got_mqtt(msub)) and
                    not (want_sure - self.got_redis(rsub)))
        self.drain(arrived, DELAY * (2 * n_m // CAPACITY + 2) + 20 * harness.SCALE)
        mq_got, rd_got = self.got_mqtt(msub), self.got_redis(rsub)
        stats = self.stats_now(b)
        drained_at = time.monotonic() - t_start
        now = stats_counters(stats)

        # 1. no MQTT original came back to MQTT, 2. and every Redis original
        # arrived once, nothing else
        self.check_mqtt(load, mq_got, stats)
        # 3. Redis: every QoS 1 MQTT original once (none lost: the broker
        # held them), every Redis original once
        self.check_exact(collections.Counter({k: n for k, n in rd_got.items()
                                              if k not in qos0}),
                         want_sure, "Redis subscriber on s0:* s1:*, the QoS 1 "
                         "MQTT originals and the Redis originals", stats)
        # 4. and every QoS 0 MQTT original at most once (the missing ones
        # are counted at the exit)
        got0 = collections.Counter({k: n for k, n in rd_got.items() if k in qos0})
        twice0 = sorted(k for k, n in got0.items() if n > 1)
        self.assertEqual(twice0, [], "QoS 0 MQTT originals more than once on "
                         "Redis (%d)\nbridge counters now: %s"
                         % (len(twice0), stats))
        arrived0 = len(got0)
        # the bridge had finished: nothing queued either way, the subscriber
        # never lost
        self.assertEqual((now.get("queued_to_redis"), now.get("queued_to_mqtt")),
                         ("0", "0"), "left in the bridge after the drain: %s"
                         % stats)
        self.assertEqual(now.get("redis_sub_lost"), "0", "before the stop: %s"
                         % stats)

        sub, first_back = self.check_lag(load, msub)

        line, c = self.exit_counters(b)
        to_redis = sum(n for (ch, p), n in rd_got.items() if p[:1] == b"m")
        report = ("exit stats: %s\npublishing took %.1f s, drained %.1f s after "
                  "the start; QoS 0 on Redis %d of %d; relay: %r"
                  % (line, load.took, drained_at, arrived0, n_m, sub.summary()))
        self.assert_counters_present(c, report)
        self.assertEqual(c["mqtt_in"], 2 * n_m, report)
        # exact: each QoS 0 original reached Redis or is counted (the Redis
        # originals all reached MQTT: none of the count is theirs)
        dropped = {k: v for k, v in c.items() if k.startswith("dropped_") and v}
        self.assertEqual(dropped, {"dropped_queue_full": n_m - arrived0}
                         if arrived0 < n_m else {},
                         "QoS 0 MQTT originals not on Redis must be counted, "
                         "and only they\n" + report)
        self.assertEqual(c["redis_resent"], 0, report)
        self.assertEqual(c["given_back"], 0, report)
        self.assertEqual(c["redis_out"], to_redis, report)
        # the table filled and the bridge held back instead of evicting
        self.assertGreaterEqual(c["echo_waits"], 1, report)
        self.assertGreaterEqual(c["echo_peak"], CAPACITY, report)
        self.assertLessEqual(c["echo_peak"], CAPACITY + MARGIN, report)
        self.assertEqual(c["echo_evicted"], 0, report)
        self.assertEqual(c["echo_expired"], 0, report)
        self.assertEqual(c["echo_cleared"], 0, report)
        # every PUBLISH of the bridge came back and was taken as its echo
        self.assertEqual(c["echoes"], to_redis, report)
        if os.environ.get("MRB_ECHO_VERBOSE"):
            sys.stderr.write("\n%s\nfirst echo %.2f s after the first publish\n"
                             % (report, first_back - min(load.sent_t.values())))


if __name__ == "__main__":
    harness.main()
