#!/usr/bin/python3
"""bridge/<id>/status: retained "online" while running, retained "offline"
after a clean shutdown (SIGTERM/SIGINT, exit 0, stats line) and from the
Last Will after SIGKILL."""

import re
import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import DELIVERY_TIMEOUT, ServersTestCase, unique, wait_until

STATS_RE = re.compile(r"mqtt_in=\d+.*redis_out=\d+.*redis_in=\d+"
                      r".*mqtt_out=\d+")


class StatusTest(ServersTestCase):

    def retained_status(self, bridge_id, want, timeout=None):
        """The retained status of bridge_id once it is `want` (bounded)."""
        return self.retained(self.mq.port, "bridge/%s/status" % bridge_id, want,
                             timeout)

    def assert_status(self, bridge_id, want, what, timeout=None):
        m = self.retained_status(bridge_id, want, timeout)
        self.assertIsNotNone(m, "%s: no retained message on bridge/%s/status"
                             % (what, bridge_id))
        self.assertEqual((m.payload, m.retain), (want, True),
                         "%s: retained status" % what)

    def _stop_cleanly(self, sig):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="st")
        self.assert_status("st", b"online", "while running")
        # some traffic so that the stats line has something to count
        sub = self.mqtt_client(self.mq.port, "news", name="sub")
        rsub = self.redis_sub(self.rs.port, ["news"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        p = unique("s").encode()
        pub.publish("news", p)
        r = self.redis_client(self.rs.port)
        q = unique("t").encode()
        r.publish("news", q)
        self.assertIsNotNone(sub.wait_for(lambda m: m.payload == q),
                             "redis -> mqtt before shutdown")
        # p in Redis before the signal: sent later, it would stay with the
        # broker (left_with_broker) and the counts below would race
        self.assertTrue(wait_until(lambda: rsub.count("news", p) >= 1, DELIVERY_TIMEOUT),
                        "mqtt -> redis before shutdown")
        # exit status 0 within the exit bound (checked by the harness)
        bridge.stop(sig)
        self.assert_status("st", b"offline", "after %s" % sig.name)
        msg, counters = self.exit_stats(bridge)
        self.assertRegex(msg, STATS_RE)
        # one message each way: p MQTT -> Redis, q Redis -> MQTT (MQTT 5's
        # No Local keeps q's copy from coming back; p's copy from Redis may
        # or may not have been read before the subscriber was closed, and is
        # an echo then)
        got = {k: int(counters[k]) for k in ("mqtt_in", "redis_out",
                                              "mqtt_out", "redis_in", "echoes")}
        self.assertIn(got["echoes"], (0, 1), msg)
        self.assertEqual(
            (got["mqtt_in"], got["redis_out"], got["mqtt_out"],
             got["redis_in"] - got["echoes"]), (1, 1, 1, 1),
            "(mqtt_in, redis_out, mqtt_out, redis_in - echoes) after one "
            "message each way: %s" % msg)
        for k in ("dropped_unmappable", "dropped_too_large",
                  "dropped_queue_full"):
            self.assertEqual(counters.get(k), "0", "%s in %r" % (k, msg))
        self.assert_stats_prefix(msg)

    def test_online_then_offline_on_sigterm(self):
        self._stop_cleanly(signal.SIGTERM)

    def test_offline_on_sigint(self):
        self._stop_cleanly(signal.SIGINT)

    def test_sigterm_while_redis_down_exits_in_time(self):
        # nothing can be flushed to Redis: the bridge gives up after
        # shutdown_timeout_ms, still exits 0 and still says offline
        cfg = self.write_config({"id": "sd", "mqtt": {"url": self.mq.url},
                                 "redis": {"url": self.rs.url},
                                 "shutdown_timeout_ms": 1000})
        bridge = self.start_bridge(None, None, "-c", cfg)
        pub = self.mqtt_client(self.mq.port, name="pub")
        mark = bridge.mark()
        self.rs.stop()
        self.assert_log(bridge, harness.LOST_RE, since=mark, what="Redis down")
        for i in range(3):
            pub.publish("news", unique("stuck").encode())
        t0 = time.monotonic()
        bridge.stop(signal.SIGTERM)  # exit 0 within the exit bound
        took = time.monotonic() - t0
        # the broker is up: no wait for Paho's disconnect either
        self.assertLess(took, 3.0, "exit took %.1fs with shutdown_timeout_ms "
                        "1000" % took)
        self.assert_status("sd", b"offline", "after SIGTERM with Redis down")

    def test_last_will_after_sigkill(self):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="lw")
        self.assert_status("lw", b"online", "while running")
        bridge.kill()
        self.assert_status("lw", b"offline", "Last Will after SIGKILL")

    def test_status_topic_uses_id(self):
        # two bridges with different ids on one broker keep separate statuses
        b1 = self.start_bridge(self.mq.port, self.rs.port, bridge_id="one",
                               name="b1")
        self.start_bridge(self.mq.port, self.rs.port, bridge_id="two",
                          name="b2")
        self.assert_status("one", b"online", "bridge one running")
        self.assert_status("two", b"online", "bridge two running")
        b1.stop()
        self.assert_status("one", b"offline", "bridge one stopped")
        self.assert_status("two", b"online", "bridge two still running")

    def test_same_id_twice_is_diagnosed(self):
        """Two bridges with one id take the client id from each other in
        turn; mosquitto says nothing to the one it drops, so the bridge
        notices the run of short sessions and names the likely cause."""
        cfg = self.write_config({"id": "twin", "mqtt": {"url": self.mq.url},
                                 "redis": {"url": self.rs.url},
                                 "reconnect": {"min_ms": 100, "max_ms": 500}})
        b1 = self.start_bridge(None, None, "-c", cfg, name="twin1")
        b2 = self.start_bridge(None, None, "-c", cfg, name="twin2", ready=False)
        hint = re.compile(r"another client connected with client id "
                          r"'mqtt-redis-bridge-twin'")
        found = harness.wait_until(
            lambda: b1.count(hint) + b2.count(hint) > 0, 20 * harness.SCALE, 0.1)
        self.assertTrue(found, "no hint about the shared client id:\n%s\n%s"
                        % (b1.tail(10), b2.tail(10)))
        self.assertLessEqual(b1.count(hint), 1, "the hint is said once")
        self.assertLessEqual(b2.count(hint), 1, "the hint is said once")
        for b in (b1, b2):
            b.stop()


if __name__ == "__main__":
    harness.main()
