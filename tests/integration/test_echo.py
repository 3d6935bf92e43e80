#!/usr/bin/python3
"""The echo guard at any lag (issue 13 item 6): Redis pub/sub has no "no
local", so every PUBLISH the bridge makes on a channel it also subscribes
comes back to its subscriber, however late, and its fingerprint must still
be there then: not evicted from a full table, not expired.

Set-up: routes s0/+ <> s0:* (QoS 0) and s1/+ <> s1:* (QoS 1), both
directions, default limits (queue_messages 10000: the echo table holds
10000 copies per side). The bridge reaches Redis through relay.py, which
delays everything Redis sends to the bridge's subscriber connection (only
that one) by DELAY = 6 s: each echo, and each message from Redis to MQTT,
arrives 6 s after Redis sent it.

Load, for PUBLISH_S = 8 s at once: MQTT publishers on s0/d<k> (QoS 0) and
s1/d<k> (QoS 1), MQTT_RATE messages/s each (1000/s into Redis in all: about
6000 of the bridge's PUBLISHes wait for their echo at once, more than the
old table's 4096 and longer than its 5 s TTL), and Redis publishers on
s0:r<k> and s1:r<k>, REDIS_RATE/s each. Every payload is unique.

Then, exactly: an MQTT subscriber on s0/# and s1/# gets every MQTT original
once (no echo came back) and every Redis original once; a Redis subscriber
on s0:* and s1:* gets every MQTT original once and every Redis original
once. Proof that the conditions were reached: the relay delayed only the
subscriber's connection, by at least DELAY > 5 s; more than 4096 of the
bridge's PUBLISHes had reached Redis before the first message could reach
its subscriber (6000 at these rates); the bridge's exit statistics:
echoes == every one of them, echo_peak > 4096, echo_evicted ==
echo_expired == echo_cleared == 0, nothing dropped, nothing sent again;
redis_sub_lost == 0 before the stop (SIGUSR1: the exit line also counts the
bridge's own close of its subscriber at shutdown).

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
from harness import BridgeTestCase, stats_counters, stats_lines  # noqa: E402
from relay import DelayRelay  # noqa: E402

DELAY = 6.0            # relay: Redis -> the bridge's subscriber (> 5 s TTL)
PUBLISH_S = 8.0        # all publishers at once, this long
MQTT_RATE = 500        # messages/s on s0/ (QoS 0) and on s1/ (QoS 1) each
REDIS_RATE = 200       # messages/s on s0: and on s1: each
DEVICES = 4            # s0/d0..d3, s1/d0..d3
REDIS_NAMES = 2        # s0:r0..r1, s1:r0..r1
OLD_TABLE = 4096       # the old echo table's size (and MRB_ECHO_MIN)


def paced(n, rate, t0, stop, fn):
    """fn(i) for i in 0..n-1, the i-th at t0 + i/rate (catching up when
    behind). Bounded by n and by stop."""
    for i in range(n):
        if stop.is_set():
            return i
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        fn(i)
    return n


class EchoLagTest(BridgeTestCase):

    def setUp(self):
        super().setUp()
        self.rs = self.start_redis()
        self.mq = self.start_mosquitto()
        self.relay = DelayRelay(self.rs.port, DELAY,
                                lifetime=300 * harness.SCALE).start()
        self.addCleanup(self.relay.stop)

    def start(self):
        cfg = self.write_config({
            "id": "echo",
            "mqtt": {"url": self.mq.url},
            "redis": {"url": self.relay.url},
            "stats_interval": 0,
            "routes": [
                {"mqtt": "s0/+", "redis": "s0:*", "direction": "both", "qos": 0},
                {"mqtt": "s1/+", "redis": "s1:*", "direction": "both", "qos": 1}]})
        b = self.start_bridge(None, None, "-c", cfg, ready=False)
        # "ready:" waits for the subscriber's confirmations: DELAY late
        b.wait_ready(timeout=harness.READY_TIMEOUT + 2 * DELAY)
        return b

    def stats_now(self, b):
        """The bridge's counters now (SIGUSR1), for the failure messages."""
        before = len(stats_lines(b))
        b.proc.send_signal(signal.SIGUSR1)
        harness.wait_until(lambda: len(stats_lines(b)) > before,
                           harness.DELIVERY_TIMEOUT)
        lines = stats_lines(b)
        return lines[-1] if len(lines) > before else "(no stats line on SIGUSR1)"

    def test_echo_guard_holds_at_6s_lag_and_6000_in_flight(self):
        msub = self.mqtt_client(self.mq.port, "s0/#", "s1/#", qos=1, name="msub")
        rsub = self.redis_sub(self.rs.port, patterns=["s0:*", "s1:*"])
        b = self.start()
        delayed = self.relay.delayed_connections()
        self.assertEqual([c.name for c in delayed], ["mrb:echo:subscriber"],
                         "the relay delays exactly the bridge's subscriber: %r"
                         % self.relay.report())

        n_m = int(MQTT_RATE * PUBLISH_S)
        n_r = int(REDIS_RATE * PUBLISH_S)
        # originals: (topic or channel, payload)
        m_orig = {0: [("s0/d%d" % (i % DEVICES), b"m0-%06d" % i) for i in range(n_m)],
                  1: [("s1/d%d" % (i % DEVICES), b"m1-%06d" % i) for i in range(n_m)]}
        r_orig = {q: [("s%d:r%d" % (q, i % REDIS_NAMES), b"r%d-%06d" % (q, i))
                      for i in range(n_r)] for q in (0, 1)}
        pubs = {q: self.mqtt_client(self.mq.port, name="pub%d" % q) for q in (0, 1)}
        rpub = self.redis_client(self.rs.port)
        stop = threading.Event()
        self.addCleanup(stop.set)
        infos = {0: [], 1: []}
        sent_t = {}
        errors = []

        def mqtt_pub(q):
            c = pubs[q].c

            def one(i):
                info = c.publish(m_orig[q][i][0], m_orig[q][i][1], qos=q)
                if info.rc != 0:
                    errors.append("MQTT publish %r: rc %d" % (m_orig[q][i], info.rc))
                    stop.set()
                infos[q].append(info)
                if i == 0:
                    sent_t["m%d" % q] = time.monotonic()
            paced(n_m, MQTT_RATE, t0, stop, one)

        def redis_pub():
            def one(i):
                for q in (0, 1):
                    rpub.publish(*r_orig[q][i])
                if i == 0:
                    sent_t["r"] = time.monotonic()
            try:
                paced(n_r, REDIS_RATE, t0, stop, one)
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
            self.assertEqual(len(infos[q]), n_m)
        for info in infos[1]:  # QoS 1: all acknowledged by the broker
            info.wait_for_publish(max(0.1, pub_end + harness.DELIVERY_TIMEOUT
                                      - time.monotonic()))
        self.assertTrue(all(i.is_published() for i in infos[1]),
                        "QoS 1 publishes not acknowledged by the broker")
        took = pub_end - t0

        # drain: everything crosses (DELAY late), then the relay is idle and
        # quiet for a while: a copy that was to come back is back
        want_mqtt = collections.Counter(
            m_orig[0] + m_orig[1] +
            [(c.replace(":", "/"), p) for c, p in r_orig[0] + r_orig[1]])
        want_redis = collections.Counter(
            [(t.replace("/", ":"), p) for t, p in m_orig[0] + m_orig[1]] +
            r_orig[0] + r_orig[1])

        def got_mqtt():
            return collections.Counter((m.topic, m.payload) for m in msub.snapshot())

        def got_redis():
            return collections.Counter((m.channel.decode(), m.data)
                                       for m in rsub.snapshot())

        def drained():
            idle, waiting = self.relay.idle_since()
            return (not waiting and idle is not None and idle >= harness.QUIET and
                    not (want_mqtt - got_mqtt()) and not (want_redis - got_redis()))
        harness.wait_until(drained, DELAY + 20 * harness.SCALE, 0.2)
        time.sleep(harness.QUIET)
        mq_got, rd_got = got_mqtt(), got_redis()
        stats = self.stats_now(b)

        def exact(got, want, what):
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
                                   self.relay.report()))

        # 1. the decisive one: no MQTT original came back to MQTT
        mqtt_originals = collections.Counter(m_orig[0] + m_orig[1])
        problem = exact(collections.Counter({k: n for k, n in mq_got.items()
                                             if k in mqtt_originals or
                                             k[1][:1] == b"m"}),
                        mqtt_originals,
                        "MQTT subscriber on s0/# s1/#, the %d MQTT originals "
                        "(QoS 0 and 1; a second copy is the bridge's echo "
                        "forwarded back)" % (2 * n_m))
        if problem:
            self.fail(problem)
        # 2. and every Redis original arrived once, nothing else
        problem = exact(mq_got, want_mqtt,
                        "MQTT subscriber on s0/# s1/#, all messages")
        if problem:
            self.fail(problem)
        # 3. Redis: every MQTT original once (QoS 1: promised as long as
        # nothing reconnects; QoS 0 only loses what a counter says: see
        # the exit counters below), and the Redis originals once
        problem = exact(rd_got, want_redis, "Redis subscriber on s0:* s1:*")
        if problem:
            self.fail(problem)

        # the conditions were reached: lag > 5 s and > 4096 in flight
        sub = self.relay.delayed_connections()
        self.assertEqual(len(sub), 1, "the subscriber connected once: %r"
                         % self.relay.report())
        sub = sub[0]
        self.assertGreater(sub.min_lag, 5.0, "the relay's lag: %r" % sub.summary())
        first_pub = min(sent_t["m0"], sent_t["m1"], sent_t["r"])
        first_back = sub.first_message_sent_t
        self.assertIsNotNone(first_back, "the relay forwarded no message")
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
        first_r = min(m.t for m in msub.snapshot() if m.payload[:1] == b"r")
        self.assertGreater(first_r - sent_t["r"], 5.0,
                           "Redis -> MQTT lag (first Redis original on MQTT)")

        b.stop()
        self.assertEqual(b.proc.returncode, 0, b.tail())
        lines = stats_lines(b)
        self.assertTrue(lines, "no stats line at exit:\n" + b.tail())
        self.assert_stats_prefix(lines[-1])
        c = {k: int(v) for k, v in stats_counters(lines[-1]).items()}
        to_redis = sum(n for (ch, p), n in rd_got.items() if p[:1] == b"m")
        report = ("exit stats: %s\npublishing took %.1f s; relay: %r"
                  % (lines[-1], took, sub.summary()))
        for k in ("echo_peak", "echo_expired", "echo_cleared"):
            self.assertIn(k, c, "counter %s missing from the stats line\n%s"
                          % (k, report))
        dropped = {k: v for k, v in c.items() if k.startswith("dropped_") and v}
        self.assertEqual(c["mqtt_in"], 2 * n_m, report)
        # every message lost on the way into Redis has its counter (there
        # is none missing here: see 3.)
        self.assertLessEqual(2 * n_m - to_redis, sum(dropped.values()), report)
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


if __name__ == "__main__":
    harness.main()
