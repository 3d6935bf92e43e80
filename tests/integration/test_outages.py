#!/usr/bin/python3
"""Outages seen in the log and the counters (issue 13 items 7 and 8).

- A burst of drops is one warning line, and when the burst ends (10 s,
  MRB_RATELIMIT_MS, after that line with events swallowed since) one
  summary line "<what>: N more not logged in the last 10 s; <counter>=<value>"
  reports what the first line did not: its counter is the exit statistics'.
- A Redis subscriber connection that Redis closes (client-output-buffer-limit
  pubsub) while the bridge does not read it (back-pressure: the broker is
  stalled) is noticed within redis.keepalive, logged, reconnected and
  counted (redis_sub_lost), not when the broker resumes."""

import datetime
import re
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import SCALE, ServersTestCase  # noqa: E402

RATELIMIT_S = 10  # MRB_RATELIMIT_MS (include/mrb/log.h)
SUMMARY_WAIT = 12 * SCALE  # from the burst's first line to its summary


def log_time(line):
    """The monotonic-comparable time (seconds) of a '<ISO time> ...' line."""
    stamp = line.split(" ", 1)[0]
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


class DropSummaryTest(ServersTestCase):
    """Item 7: a burst of queue-full drops is logged as one line, and its
    summary follows when the burst ends, carrying the exact counter."""

    N = 3000          # messages of the burst
    QUEUE = 100       # limits.queue_messages

    def stopped(self, server):
        proc = server.proc
        proc.send_signal(harness.signal.SIGSTOP)
        self.addCleanup(lambda: proc.poll() is None and
                        proc.send_signal(harness.signal.SIGCONT))
        return proc

    def check_burst(self, b, first_re, summary_re, first_seen):
        """The burst's first line (one), then within SUMMARY_WAIT of it its
        summary (one, at least 10 s later); returns (first counter, N more,
        summary counter)."""
        ok = b.wait_log(summary_re, max(0.0, first_seen + SUMMARY_WAIT -
                                        time.monotonic()))
        self.assertTrue(ok, "no summary line matching %r within %.0f s of the "
                        "burst's first line:\n%s"
                        % (summary_re.pattern, SUMMARY_WAIT, b.tail(15)))
        time.sleep(harness.QUIET)
        firsts = [l for l in b.lines() if first_re.search(l)]
        sums = [l for l in b.lines() if summary_re.search(l)]
        self.assertEqual((len(firsts), len(sums)), (1, 1),
                         "one line for the burst and one summary:\n%s"
                         % "\n".join(firsts + sums))
        f = first_re.search(firsts[0])
        s = summary_re.search(sums[0])
        gap = log_time(sums[0]) - log_time(firsts[0])
        self.assertGreaterEqual(gap, RATELIMIT_S - 0.05,
                                "summary %.2f s after the first line" % gap)
        self.assertLessEqual(gap, SUMMARY_WAIT, "summary %.2f s after the first "
                             "line" % gap)
        # the first line of a burst reports nothing swallowed before it
        self.assertEqual((f.group(1), f.group(3) or "0"), ("1", "0"), firsts[0])
        return int(f.group(2)), int(s.group(1)), int(s.group(2))

    def check_counts(self, b, first_counter, more, counter, taken_key):
        code, _ = b.stop()
        line, c = self.exit_stats(b)
        # the summary's counter is the total: no drop after it, none lost
        self.assertEqual(c["dropped_queue_full"], str(counter), line)
        self.assertGreater(counter, 0, line)
        # each swallowed event dropped exactly one message (the queue is
        # bounded by count, one arrival pushes one out): the first line's
        # counter plus the summary's "N more" events are all of them
        self.assertEqual(first_counter + more, counter,
                         "first line's dropped_queue_full=%d + %d more events "
                         "!= %d" % (first_counter, more, counter))
        self.assertEqual(c[taken_key], str(self.N), line)
        self.assertEqual(c["dropped_shutdown"], "0", line)
        return c

    def test_mqtt_to_redis_burst_while_redis_is_stopped(self):
        cfg = self.write_config({
            "id": "od", "mqtt": {"url": self.mq.url}, "redis": {"url": self.rs.url},
            "limits": {"queue_messages": self.QUEUE}, "stats_interval": 0,
            "routes": [{"mqtt": "m/+", "redis": "m:*", "direction": "mqtt_to_redis",
                        "qos": 0}]})
        b = self.start_bridge(None, None, "-c", cfg)
        rsub = self.redis_sub(self.rs.port, channels=["m:x"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        redis = self.stopped(self.rs)
        first_re = re.compile(r"dropped (\d+) oldest message\(s\) waiting for Redis: "
                              r"queue full .*; dropped_queue_full=(\d+)"
                              r"(?: \((\d+) similar not logged\))?$")
        summary_re = re.compile(r"dropped oldest messages waiting for Redis: queue "
                                r"full: (\d+) more not logged in the last 10 s; "
                                r"dropped_queue_full=(\d+)$")
        t0 = time.monotonic()
        for i in range(self.N):  # about 2000 msg/s
            pub.c.publish("m/x", b"%06d" % i + b"." * 100, qos=0)
            if i % 100 == 99:
                time.sleep(0.05)
        self.assertTrue(b.wait_log(first_re, harness.DELIVERY_TIMEOUT), b.tail())
        first_seen = t0  # (it came during the burst)
        time.sleep(0.5 * SCALE)  # the broker's last ones are in
        redis.send_signal(harness.signal.SIGCONT)
        first, more, counter = self.check_burst(b, first_re, summary_re, first_seen)
        c = self.check_counts(b, first, more, counter, "mqtt_in")
        # and what was not dropped reached Redis
        self.assertEqual(rsub.count("m:x"), self.N - counter,
                         "in Redis; stats %r" % c)
        self.assertEqual(c["redis_out"], str(self.N - counter))

    def test_redis_to_mqtt_burst_while_the_broker_is_stopped(self):
        cfg = self.write_config({
            "id": "oq", "mqtt": {"url": self.mq.url, "keepalive": 2},
            "redis": {"url": self.rs.url},
            "reconnect": {"min_ms": 200, "max_ms": 1000},
            "limits": {"queue_messages": self.QUEUE}, "stats_interval": 0,
            "routes": [{"mqtt": "r/+", "redis": "r:*", "direction": "redis_to_mqtt",
                        "qos": 0}]})
        b = self.start_bridge(None, None, "-c", cfg)
        r = self.redis_client(self.rs.port)
        broker = self.stopped(self.mq)
        # out_q drops only while the broker is known to be down (while it
        # is up, a half full out_q holds the subscriber instead)
        self.assert_log(b, re.compile(r"mqtt: .*(connection lost|cannot connect)"),
                        timeout=10 * SCALE, what="the stopped broker")
        first_re = re.compile(r"dropped (\d+) oldest message\(s\) waiting for MQTT: "
                              r"queue full .*; dropped_queue_full=(\d+)"
                              r"(?: \((\d+) similar not logged\))?$")
        summary_re = re.compile(r"dropped oldest messages waiting for MQTT: queue "
                                r"full: (\d+) more not logged in the last 10 s; "
                                r"dropped_queue_full=(\d+)$")
        t0 = time.monotonic()
        for i in range(0, self.N, 100):  # about 2000 msg/s
            p = r.pipeline(transaction=False)
            for j in range(i, i + 100):
                p.publish("r:x", b"%06d" % j + b"." * 100)
            self.assertEqual(p.execute(), [1] * 100)  # the bridge's subscriber
            time.sleep(0.05)
        self.assertTrue(b.wait_log(first_re, harness.DELIVERY_TIMEOUT), b.tail())
        time.sleep(0.2 * SCALE)
        broker.send_signal(harness.signal.SIGCONT)
        first, more, counter = self.check_burst(b, first_re, summary_re, t0)
        self.check_counts(b, first, more, counter, "redis_in")


    def test_rate_limit_burst_of_a_route(self):
        """The per-route rate-limit warning: one line, then its summary with
        the route's exact rate_limited count (mrb_limits_flush)."""
        cfg = self.write_config({
            "id": "orl", "mqtt": {"url": self.mq.url}, "redis": {"url": self.rs.url},
            "stats_interval": 0,
            "routes": [{"mqtt": "l/+", "redis": "l:*", "direction": "mqtt_to_redis",
                        "qos": 0, "rate": 10, "burst": 1}]})
        b = self.start_bridge(None, None, "-c", cfg)
        pub = self.mqtt_client(self.mq.port, name="pub")
        first_re = re.compile(r"dropped QoS 0 message from MQTT topic 'l/x': over "
                              r"the rate limit of route '.*'; rate_limited=(\d+) on "
                              r"that route \((\d+) similar not logged\)$")
        summary_re = re.compile(r"dropped QoS 0 messages from MQTT over the rate "
                                r"limit of route 'l/\+ > l:\* .*': (\d+) more not "
                                r"logged in the last 10 s; rate_limited=(\d+)$")
        n = 300
        t0 = time.monotonic()
        for i in range(n):  # about 1000 msg/s, far over 10/s
            pub.c.publish("l/x", b"%06d" % i, qos=0)
            if i % 50 == 49:
                time.sleep(0.05)
        self.assertTrue(b.wait_log(first_re, harness.DELIVERY_TIMEOUT), b.tail())
        ok = b.wait_log(summary_re, max(0.0, t0 + SUMMARY_WAIT - time.monotonic()))
        self.assertTrue(ok, "no rate-limit summary within %.0f s:\n%s"
                        % (SUMMARY_WAIT, b.tail(15)))
        time.sleep(harness.QUIET)
        firsts = [l for l in b.lines() if first_re.search(l)]
        sums = [l for l in b.lines() if summary_re.search(l)]
        self.assertEqual((len(firsts), len(sums)), (1, 1), "\n".join(firsts + sums))
        f, sm = first_re.search(firsts[0]), summary_re.search(sums[0])
        b.stop()
        route = [l for l in b.lines() if "route stats [0]" in l]
        self.assertEqual(len(route), 1, b.tail())
        limited = int(re.search(r"rate_limited=(\d+)", route[0]).group(1))
        # the summary's total is the route's; first line + N more are all
        self.assertEqual(int(sm.group(2)), limited, route[0])
        self.assertEqual(int(f.group(1)) + int(sm.group(1)), limited, sums[0])
        self.assertGreater(limited, n // 2, route[0])


class HeldSubscriberTest(ServersTestCase):
    """Item 8: the broker stalled (SIGSTOP), out_q half full, so the bridge
    stops reading its Redis subscriber; Redis cuts that subscriber off
    (client-output-buffer-limit pubsub). The bridge must see it within
    redis.keepalive while the broker is still stopped: log it, reconnect
    the subscriber, count it in redis_sub_lost."""

    KEEPALIVE = 5

    def test_subscriber_cut_off_while_the_broker_is_stalled(self):
        self.r.config_set("client-output-buffer-limit", "pubsub 256kb 128kb 1")
        cfg = self.write_config({
            "id": "ol", "mqtt": {"url": self.mq.url, "keepalive": 60},
            "redis": {"url": self.rs.url, "keepalive": self.KEEPALIVE},
            "reconnect": {"min_ms": 200, "max_ms": 1000},
            "limits": {"queue_messages": 200}, "stats_interval": 0,
            "routes": [{"mqtt": "r/+", "redis": "r:*", "direction": "redis_to_mqtt",
                        "qos": 1}]})
        b = self.start_bridge(None, None, "-c", cfg)

        def subscribers():
            return [int(c["id"]) for c in self.r.client_list() if c["psub"] == "1"]
        first = subscribers()
        self.assertEqual(len(first), 1, self.r.client_list())
        proc = self.mq.proc
        proc.send_signal(harness.signal.SIGSTOP)
        self.addCleanup(lambda: proc.poll() is None and
                        proc.send_signal(harness.signal.SIGCONT))
        mark = b.mark()
        # 16 KiB messages until Redis cuts the subscriber off (a PUBLISH
        # then reaches nobody); at most 64 MiB
        payload = b"x" * 16384
        sent = 0
        cut = False
        for _ in range(128):
            p = self.r.pipeline(transaction=False)
            for _ in range(32):
                p.publish("r:x", payload)
            res = p.execute()
            sent += len(res)
            if 0 in res:
                cut = True
                break
        self.assertTrue(cut, "Redis did not cut the subscriber off after %d "
                        "messages of 16 KiB" % sent)
        cut_at = time.monotonic()
        self.assertNotIn(first[0], subscribers())
        within = self.KEEPALIVE * SCALE
        lost = re.compile(r"redis: connection lost to ")
        ok = b.wait_log(lost, within, since=mark)
        self.assertEqual(proc.poll(), None)
        self.assertTrue(ok, "the closed subscriber was not logged within "
                        "redis.keepalive (%.0f s) while the broker was stopped "
                        "(%d messages of 16 KiB published); log since:\n%s"
                        % (within, sent, harness.tail(b.log()[mark:])))
        again = harness.wait_until(
            lambda: [i for i in subscribers() if i != first[0]],
            max(0.1, cut_at + within - time.monotonic()))
        self.assertTrue(again, "no new subscriber connection within %.0f s "
                        "while the broker was stopped: %r"
                        % (within, self.r.client_list()))
        self.assertEqual(proc.poll(), None)
        proc.send_signal(harness.signal.SIGCONT)
        time.sleep(1.0 * SCALE)
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual(c.get("redis_sub_lost"), "1", line)
        self.assertEqual(b.count(lost, mark), 1, b.tail())


if __name__ == "__main__":
    harness.main()
