#!/usr/bin/python3
"""Library calls that fail (issue 13 item 3), with the real libraries and
real servers: the bridge binary is mqtt-redis-bridge-faultinj
(tests/faultinj), whose wrappers make the calls that MRB_FAULTINJ selects
return their out-of-memory failure without calling the real function
(syntax in tests/faultinj/wrap.c). Nothing else is mocked.

- redisAppendCommandArgv fails for every 7th XADD and every 7th PUBLISH
  under QoS 1 traffic: every message reaches Redis exactly once and in
  order (nothing acknowledged that Redis did not confirm), one rate-limited
  warning and no other line about them, redis_append_failed counts them.
- MQTTAsync_sendMessage fails for the "online" status twice: it is retried
  and becomes "online", one warning, mqtt_call_failed == 2.
- MQTTProperties_add fails for a Subscription Identifier: the subscription
  is made again (with its identifier) before "ready", messages once each;
  and for the Session Expiry: the connect attempt is retried, the session
  is persistent.
- redisAsyncCommand fails for the publisher's CLIENT SETNAME and for a
  keepalive PING: the attempt / connection starts again, redis_call_failed
  == 2, no stall.

The decisive assertion of each test comes first (delivery, the retained
status, no stall); the counters and log lines after it. The wrapper's exit
report (MRB_FAULTINJ_REPORT) says how many calls it made fail.

Run with --bridge PATH-OF-mqtt-redis-bridge-faultinj (ctest does).
"""

import collections
import re
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique  # noqa: E402

REPORT_RE = re.compile(r"^faultinj: (\w+) calls=(\d+) failed=(\d+)$", re.M)
RULE_RE = re.compile(r"^faultinj: rule (\d+) \w+ matched=(\d+) failed=(\d+)$",
                     re.M)
N_MSGS = 300          # per route in the append test
EVERY = 7             # every 7th XADD and every 7th PUBLISH fails


class FaultInjTest(ServersTestCase):

    # helpers -------------------------------------------------------------
    def bridge(self, bid, routes, spec, redis_extra=None, name=None, **kw):
        """A bridge with MRB_FAULTINJ=spec (None: no fault) and the report."""
        redis_cfg = {"url": self.rs.url}
        redis_cfg.update(redis_extra or {})
        cfg = self.write_config({
            "id": bid, "mqtt": {"url": self.mq.url, "protocol": "5"},
            "redis": redis_cfg,
            "reconnect": {"min_ms": 100, "max_ms": 500},
            "routes": routes}, name=bid + ".json")
        env = {"MRB_FAULTINJ_REPORT": "2", "MRB_FAULTINJ": spec or ""}
        return self.start_bridge(None, None, "-c", cfg, env=env, name=name,
                                 **kw)

    def report(self, bridge):
        """{function: (calls, failed)} from the wrapper's exit report."""
        got = {f: (int(c), int(n)) for f, c, n in REPORT_RE.findall(bridge.log())}
        self.assertEqual(len(got), 4, "no fault-injection report at exit "
                         "(is --bridge the -faultinj binary?):\n%s" % bridge.tail())
        return got

    def rules(self, bridge):
        """[(matched, failed)] of each rule, in order, from the report."""
        return [(int(m), int(n)) for _, m, n in RULE_RE.findall(bridge.log())]

    def stop_and_stats(self, bridge):
        bridge.stop()
        msg, counters = self.exit_stats(bridge)
        return msg, counters, self.report(bridge)

    def counter(self, counters, msg, name):
        self.assertIn(name, counters, "no %s in the exit stats: %s" % (name, msg))
        return int(counters[name])


    def stream_payloads(self, key):
        return [f[b"payload"] for _, f in self.r.xrange(key)]

    def assert_exactly_once_in_order(self, got, want, what):
        if got == want:
            return
        c = collections.Counter(got)
        missing = [p for p in want if c[p] == 0]
        doubled = sorted(p for p, n in c.items() if n > 1)
        foreign = sorted(set(got) - set(want))
        self.fail("%s: %d entries for %d messages; missing %d %r, more than "
                  "once %d %r, unknown %r; in order: %s"
                  % (what, len(got), len(want), len(missing), missing[:10],
                     len(doubled), doubled[:10], foreign[:10],
                     sorted(got, key=want.index) == got if not foreign else "?"))

    # (a) ------------------------------------------------------------------
    def test_append_fails_every_7th_call_nothing_lost_or_misacknowledged(self):
        b = self.bridge("fia", [
            {"mqtt": "s/+", "redis": "s:*", "mode": "stream",
             "direction": "mqtt_to_redis", "qos": 1},
            {"mqtt": "p/+", "redis": "p:*", "direction": "mqtt_to_redis",
             "qos": 1}],
            # both commands, each on its own count (one count over both
            # would fall on the same route each time)
            "redisAppendCommandArgv,match=XADD,every=%d;"
            "redisAppendCommandArgv,match=PUBLISH,every=%d" % (EVERY, EVERY))
        rsub = self.redis_sub(self.rs.port, patterns=["p:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        run = unique("a")
        s_want = [("%s-s-%03d" % (run, i)).encode() for i in range(N_MSGS)]
        p_want = [("%s-p-%03d" % (run, i)).encode() for i in range(N_MSGS)]
        infos = []
        for s, p in zip(s_want, p_want):
            infos.append(pub.c.publish("s/a", s, qos=1))
            infos.append(pub.c.publish("p/a", p, qos=1))
        for info in infos:
            info.wait_for_publish(harness.DELIVERY_TIMEOUT)
            self.assertTrue(info.is_published(), "the broker did not take a "
                            "test message")
        timeout = 20 * harness.SCALE
        harness.wait_until(lambda: self.r.xlen("s:a") >= N_MSGS and
                           rsub.count("p:a") >= N_MSGS, timeout, 0.05)
        time.sleep(harness.QUIET)
        # the decisive assertions: each message in Redis exactly once
        self.assert_exactly_once_in_order(self.stream_payloads("s:a"), s_want,
                                          "stream s:a (XRANGE)")
        self.assert_exactly_once_in_order(
            [m.data for m in rsub.snapshot() if m.channel == b"p:a"], p_want,
            "pub/sub p:a (a Redis subscriber)")
        self.assertEqual(rsub.count(), N_MSGS, "copies on other channels")

        msg, counters, rep = self.stop_and_stats(b)
        calls, injected = rep["redisAppendCommandArgv"]
        # the wrapper did work: every 7th of at least 300 calls of each
        # command failed (a failed call is made again: counted too)
        (xadds, xfailed), (pubs, pfailed) = self.rules(b)
        self.assertGreaterEqual(min(xadds, pubs), N_MSGS, rep)
        self.assertEqual((xfailed, pfailed), (xadds // EVERY, pubs // EVERY),
                         self.rules(b))
        self.assertEqual((calls, injected), (xadds + pubs, xfailed + pfailed),
                         rep)
        self.assertEqual(self.counter(counters, msg, "redis_append_failed"),
                         injected, msg)
        self.assertEqual(self.counter(counters, msg, "dropped_send_failed"), 0,
                         msg)
        self.assertEqual(b.count("cannot queue a command"), 1,
                         "one warning, rate-limited:\n%s" % b.tail())
        # logged once: no other line about them (the run is far shorter
        # than the 10 s rate limit, so no summary line either), apart from
        # the exit stats line
        about = [l for l in b.lines() if "redis_append_failed=" in l and
                 not harness.log_message(l).startswith("stats")]
        self.assertEqual(len(about), 1, "lines about the failed appends "
                         "(%d):\n%s" % (len(about), "\n".join(about[:5])))

    # (b) ------------------------------------------------------------------
    def test_online_status_publish_fails_twice_then_sent(self):
        topic = "bridge/fib/status"
        b = self.bridge("fib", [{"mqtt": "b/+", "redis": "b:*"}],
                        "MQTTAsync_sendMessage,match=%s online,count=2" % topic)
        m = self.retained(self.mq.port, topic, b"online", harness.DELIVERY_TIMEOUT)
        self.assertIsNotNone(m, "no retained message on %s" % topic)
        self.assertEqual((m.payload, m.retain), (b"online", True),
                         "retained status after two failed publishes")
        msg, counters, rep = self.stop_and_stats(b)
        self.assertEqual(rep["MQTTAsync_sendMessage"][1], 2, rep)
        self.assertEqual(self.counter(counters, msg, "mqtt_call_failed"), 2, msg)
        self.assertEqual(b.count('publishing the "online" status failed'), 1,
                         "one warning line:\n%s" % b.tail())

    # (c) ------------------------------------------------------------------
    def test_subscription_identifier_fails_once_subscribed_before_ready(self):
        # overlapping filters: the copies the broker sends for o/x are told
        # apart by their Subscription Identifiers; the second filter's
        # identifier cannot be added at first
        b = self.bridge("fic", [
            {"mqtt": "o/+", "redis": "o1:*", "direction": "mqtt_to_redis",
             "qos": 1},
            {"mqtt": "o/#", "redis": "o2:*", "direction": "mqtt_to_redis",
             "qos": 1}],
            "MQTTProperties_add,match=SUBSCRIPTION_IDENTIFIER,nth=2",
            ready=False)
        rsub = self.redis_sub(self.rs.port, patterns=["o1:*", "o2:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        b.wait_ready()
        # at once after "ready": a filter not subscribed yet would lose these
        p1, p2 = unique("ox").encode(), unique("oxy").encode()
        pub.publish("o/x", p1)
        pub.publish("o/x/y", p2)
        self.assert_once_each({
            "redis o1:x": lambda: rsub.count("o1:x", p1),
            "redis o2:x": lambda: rsub.count("o2:x", p1),
            "redis o2:x:y": lambda: rsub.count("o2:x:y", p2),
        }, "o/x and o/x/y published right after ready", subscribers=[rsub])
        self.assertEqual(rsub.count(), 3, "copies: %r" % rsub.summary())
        msg, counters, rep = self.stop_and_stats(b)
        self.assertEqual(rep["MQTTProperties_add"][1], 1, rep)
        self.assertEqual(self.counter(counters, msg, "mqtt_call_failed"), 1, msg)
        self.assertEqual(b.count("adding a Subscription Identifier failed"), 1,
                         b.tail())
        # "ready" came after the subscription was made again
        lines = b.lines()
        warn = [i for i, l in enumerate(lines)
                if "adding a Subscription Identifier failed" in l]
        ready = [i for i, l in enumerate(lines) if "ready:" in l]
        self.assertTrue(warn and ready and warn[0] < ready[0], b.tail())

    def test_session_expiry_fails_once_connect_retried_session_kept(self):
        routes = [{"mqtt": "q/+", "redis": "q:*", "mode": "stream",
                   "direction": "mqtt_to_redis", "qos": 1}]
        b = self.bridge("fid", routes,
                        "MQTTProperties_add,match=SESSION_EXPIRY_INTERVAL,count=1")
        # the broker saw one connection, the one with the Session Expiry
        connects = self.mq.log().count("New client connected")
        b.stop()
        # published while no bridge runs: the persistent session keeps them
        pub = self.mqtt_client(self.mq.port, name="pub")
        want = [unique("q%d" % i).encode() for i in range(5)]
        for p in want:
            pub.publish("q/a", p)
        self.bridge("fid", routes, None, name="again")
        harness.wait_until(lambda: self.r.xlen("q:a") >= len(want),
                           harness.DELIVERY_TIMEOUT)
        time.sleep(harness.QUIET)
        self.assert_exactly_once_in_order(
            self.stream_payloads("q:a"), want,
            "stream q:a: messages published while the bridge was stopped")
        # the first bridge: one failure, counted, logged; its connect retried
        msg, counters = self.exit_stats(b)
        rep = self.report(b)
        self.assertEqual(rep["MQTTProperties_add"][1], 1, rep)
        self.assertEqual(self.counter(counters, msg, "mqtt_call_failed"), 1, msg)
        self.assertEqual(b.count("adding the Session Expiry Interval failed"),
                         1, b.tail())
        self.assertEqual(connects, 1, harness.tail(self.mq.log()))

    # (d) ------------------------------------------------------------------
    def test_setup_command_and_keepalive_ping_fail_once(self):
        b = self.bridge("fie", [
            {"mqtt": "d/+", "redis": "d:*", "direction": "mqtt_to_redis",
             "qos": 1},
            {"mqtt": "u/+", "redis": "u:*", "direction": "redis_to_mqtt"}],
            "redisAsyncCommand,match=CLIENT SETNAME mrb:fie:publisher,count=1;"
            "redisAsyncCommand,match=PING,after=1,count=1",
            redis_extra={"keepalive": 1})
        # the second PING, the first keepalive one (idle for redis.keepalive
        # 1 s) cannot be queued (the wrapper says so: MRB_FAULTINJ_REPORT=2)
        self.assertTrue(b.wait_log(re.compile(
            r"^faultinj: failing redisAsyncCommand call \d+: PING$"),
            5 * harness.SCALE), b.tail())
        sub = self.mqtt_client(self.mq.port, "u/#", name="sub")
        rsub = self.redis_sub(self.rs.port, patterns=["d:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")

        def conns():
            return {c["name"]: c for c in self.r.client_list()
                    if c["name"].startswith("mrb:fie:")}
        # back: the publisher (named: its CLIENT SETNAME went through in
        # the end) and the subscriber with its pattern
        self.assertTrue(harness.wait_until(
            lambda: "mrb:fie:publisher" in conns() and
            conns().get("mrb:fie:subscriber", {}).get("psub") == "1",
            harness.RECOVERY_TIMEOUT), "connections: %r" % sorted(conns()))
        # messages flow both ways, once each
        p, q = unique("d").encode(), unique("u").encode()
        pub.publish("d/a", p)
        self.r.publish("u:a", q)
        self.assert_once_each({
            "redis d:a": lambda: rsub.count("d:a", p),
            "mqtt u/a": lambda: sub.count("u/a", q),
        }, "d/a MQTT -> Redis and u:a Redis -> MQTT after the faults",
            timeout=harness.RECOVERY_TIMEOUT, subscribers=[rsub, sub])
        msg, counters, rep = self.stop_and_stats(b)
        # no reply was awaited that had not been asked for: no stall
        self.assertEqual([harness.log_message(l) for l in b.lines()
                          if "stopped answering" in l], [],
                         "a reply awaited that was never asked for")
        self.assertEqual(self.counter(counters, msg, "stalls"), 0, msg)
        self.assertEqual(rep["redisAsyncCommand"][1], 2, rep)
        self.assertEqual(self.counter(counters, msg, "redis_call_failed"), 2, msg)
        self.assertEqual(b.count("cannot queue the connection's set-up "
                                 "commands"), 1, b.tail())
        self.assertEqual(b.count("cannot queue a keepalive PING"), 1, b.tail())


if __name__ == "__main__":
    harness.main()
