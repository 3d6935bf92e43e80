#!/usr/bin/python3
"""Run-time bad input: Redis channels that cannot become MQTT topics and
payloads over limits.max_payload are dropped with a warning and counted;
good messages keep flowing."""

import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique

MAX = 64


class BadInputTest(ServersTestCase):

    def stop_and_stats(self, bridge):
        bridge.stop()  # exit 0 within its exit bound (the harness checks)
        return self.exit_stats(bridge)

    def test_unmappable_redis_channels_dropped(self):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="bad")
        sub = self.mqtt_client(self.mq.port, "#", name="all")
        mark = bridge.mark()
        bad = {"user:a/b": unique("slash").encode(),   # '/' in a '+' capture
               "user:a+b": unique("plus").encode(),    # '+' in a topic name
               "user:a#b": unique("hash").encode()}    # '#' in a topic name
        for ch, p in bad.items():
            self.r.publish(ch, p)
        good = unique("good").encode()
        self.r.publish("user:a", good)
        self.assert_once_each({"mqtt user/a": lambda: sub.count("user/a", good)},
                              "a good message after the bad ones",
                              subscribers=[sub])
        leaked = [(m.topic, m.payload) for m in sub.snapshot()
                  if m.payload in bad.values()]
        self.assertEqual(leaked, [], "unmappable channels reached MQTT")
        self.assert_log(bridge, re.compile(r"dropped.*unmappable|unmappable.*dropped"),
                        since=mark, what="warning for an unmappable channel")
        line, c = self.stop_and_stats(bridge)
        self.assertEqual(c.get("dropped_unmappable"), "3", line)
        self.assertEqual(c.get("dropped_too_large"), "0", line)
        self.assert_stats_prefix(line)

    def test_channels_invalid_as_mqtt_topics_dropped(self):
        # a '+' capture that is not valid UTF-8, holds a NUL or a control
        # character, or makes the topic too long cannot be an MQTT topic
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="bad")
        sub = self.mqtt_client(self.mq.port, "#", name="all")
        mark = bridge.mark()
        bad = {b"user:\xff\xfe": unique("utf8").encode(),
               b"user:a\x00b": unique("nul").encode(),
               # a control character: brokers drop a client that sends it
               b"user:a\x07b": unique("bel").encode(),
               # longer than an MQTT topic can be (65535 bytes)
               b"user:" + b"x" * 65531: unique("long").encode()}
        for ch, p in bad.items():
            self.r.publish(ch, p)
        good = unique("good").encode()
        self.r.publish("user:b", good)
        longest = "user/" + "y" * 65530  # exactly 65535 bytes: still valid
        self.r.publish(longest.replace("/", ":", 1), good)
        self.assert_once_each({"mqtt user/b": lambda: sub.count("user/b", good),
                               "mqtt 65535-byte topic": lambda: sub.count(longest, good)},
                              "good messages after the bad ones",
                              subscribers=[sub])
        leaked = [(m.topic, m.payload) for m in sub.snapshot()
                  if m.payload in bad.values()]
        self.assertEqual(leaked, [], "invalid topics reached MQTT")
        self.assertTrue(bridge.alive(), bridge.tail())
        self.assert_log(bridge, re.compile(r"dropped.*unmappable|unmappable.*dropped"),
                        since=mark, what="warning for an unmappable channel")
        line, c = self.stop_and_stats(bridge)
        self.assertEqual(c.get("dropped_unmappable"), "4", line)

    def _limited_bridge(self):
        cfg = self.write_config({
            "id": "lim",
            "mqtt": {"url": self.mq.url},
            "redis": {"url": self.rs.url},
            "routes": [{"mqtt": "news", "redis": "news"}],
            "limits": {"max_payload": MAX}})
        return self.start_bridge(None, None, "-c", cfg)

    def test_too_large_mqtt_to_redis(self):
        bridge = self._limited_bridge()
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        mark = bridge.mark()
        big = (unique("big") + "x" * MAX)[:MAX + 1].encode()
        ok = (unique("ok") + "y" * MAX)[:MAX].encode()
        pub.publish("news", big)
        pub.publish("news", ok)
        self.assert_once_each({"redis news %d bytes" % MAX:
                               lambda: rsub.count("news", ok)},
                              "payload of exactly max_payload", subscribers=[rsub])
        self.assertEqual(rsub.count("news", big), 0,
                         "payload of max_payload+1 bytes reached Redis")
        self.assert_log(bridge, re.compile(r"dropped.*too large|too large.*dropped"),
                        since=mark, what="warning for a too large payload")
        line, c = self.stop_and_stats(bridge)
        self.assertEqual(c.get("dropped_too_large"), "1", line)
        self.assertEqual(c.get("dropped_unmappable"), "0", line)
        self.assert_stats_prefix(line)

    def test_too_large_redis_to_mqtt(self):
        bridge = self._limited_bridge()
        sub = self.mqtt_client(self.mq.port, "news", name="sub")
        mark = bridge.mark()
        big = (unique("big") + "x" * MAX)[:MAX + 1].encode()
        ok = (unique("ok") + "y" * MAX)[:MAX].encode()
        self.r.publish("news", big)
        self.r.publish("news", ok)
        self.assert_once_each({"mqtt news %d bytes" % MAX:
                               lambda: sub.count("news", ok)},
                              "payload of exactly max_payload", subscribers=[sub])
        self.assertEqual(sub.count("news", big), 0,
                         "payload of max_payload+1 bytes reached MQTT")
        self.assert_log(bridge, re.compile(r"dropped.*too large|too large.*dropped"),
                        since=mark, what="warning for a too large payload")
        line, c = self.stop_and_stats(bridge)
        self.assertEqual(c.get("dropped_too_large"), "1", line)
        self.assertEqual(c.get("dropped_unmappable"), "0", line)
        self.assert_stats_prefix(line)


if __name__ == "__main__":
    harness.main()
