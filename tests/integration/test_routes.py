#!/usr/bin/python3
"""Route semantics: overlapping routes, arrows (direction), the '#' capture
translation, per-route qos and retain."""

import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique


class RoutesTest(ServersTestCase):

    def bridge(self, *routes):
        args = []
        for r in routes:
            args += ["--route", r]
        return self.start_bridge(self.mq.port, self.rs.port, *args,
                                 bridge_id="routes")

    def test_overlapping_mqtt_to_redis_routes(self):
        # user/x matches both filters: user/+ captures x, user/# captures x
        self.bridge("user/+ > user:*", "user/# > all:*")
        rsub = self.redis_sub(self.rs.port, patterns=["*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        p1 = unique("x").encode()
        pub.publish("user/x", p1)
        self.assert_once_each({
            "redis user:x": lambda: rsub.count("user:x", p1),
            "redis all:x": lambda: rsub.count("all:x", p1),
        }, "MQTT user/x with routes 'user/+ > user:*' and 'user/# > all:*'",
            subscribers=[rsub])
        self.assertEqual(rsub.count(None, p1), 2,
                         "copies on other channels: %r" % rsub.summary())
        # user/a/b only matches user/#; '#' capture a/b becomes a:b
        p2 = unique("ab").encode()
        pub.publish("user/a/b", p2)
        self.assert_once_each({
            "redis all:a:b": lambda: rsub.count("all:a:b", p2),
        }, "MQTT user/a/b with route 'user/# > all:*'", subscribers=[rsub])
        self.assertEqual(rsub.count(None, p2), 1,
                         "copies on other channels: %r" % rsub.summary())

    def test_overlapping_redis_to_mqtt_routes_same_target(self):
        # both routes map redis user:x to the same MQTT topic user/x
        self.bridge("user/+ < user:*", "user/# < user:*")
        sub = self.mqtt_client(self.mq.port, "user/#", name="sub")
        p = unique("same").encode()
        self.r.publish("user:x", p)
        self.assert_once_each({
            "mqtt user/x": lambda: sub.count("user/x", p),
        }, "redis user:x with routes 'user/+ < user:*' and 'user/# < user:*'",
            subscribers=[sub])
        self.assertEqual(sub.count(None, p), 1, "copies on other topics: %r"
                         % sub.summary())

    def test_overlapping_redis_subscriptions(self):
        """Redis sends one copy per matching subscription (SUBSCRIBE news and
        PSUBSCRIBE *, or two patterns); each target still gets one copy."""
        self.bridge("news < news", "all/# < *", "u/+ < user:*")
        sub = self.mqtt_client(self.mq.port, "#", name="sub")
        p = unique("ov").encode()
        self.r.publish("news", p)
        self.assert_once_each({
            "mqtt news": lambda: sub.count("news", p),
            "mqtt all/news": lambda: sub.count("all/news", p),
        }, "redis news via SUBSCRIBE news and PSUBSCRIBE *", subscribers=[sub])
        q = unique("ov2").encode()
        self.r.publish("user:x", q)
        self.assert_once_each({
            "mqtt u/x": lambda: sub.count("u/x", q),
            "mqtt all/user/x": lambda: sub.count("all/user/x", q),
        }, "redis user:x via PSUBSCRIBE * and PSUBSCRIBE user:*",
            subscribers=[sub])
        self.assertEqual(sub.count(None, p) + sub.count(None, q), 4,
                         "copies on other topics: %r" % sub.summary())

    def test_plus_capture_verbatim_hash_capture_translated(self):
        # redis user:a:b: via user/+ the capture "a:b" is copied verbatim
        # (user/a:b); via user/# it is translated ':' -> '/' (user/a/b).
        self.bridge("user/+ < user:*", "user/# < user:*")
        sub = self.mqtt_client(self.mq.port, "user/#", name="sub")
        p = unique("ab").encode()
        self.r.publish("user:a:b", p)
        self.assert_once_each({
            "mqtt user/a:b (via user/+)": lambda: sub.count("user/a:b", p),
            "mqtt user/a/b (via user/#)": lambda: sub.count("user/a/b", p),
        }, "redis user:a:b", subscribers=[sub])
        self.assertEqual(sub.count(None, p), 2, "copies on other topics: %r"
                         % sub.summary())

    def test_hash_route_multi_level_redis_to_mqtt(self):
        self.bridge("sensors/# <> sensors:*")
        sub = self.mqtt_client(self.mq.port, "sensors/#", name="sub")
        rsub = self.redis_sub(self.rs.port, patterns=["sensors:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        down = unique("down").encode()
        self.r.publish("sensors:k:l:m", down)
        up = unique("up").encode()
        pub.publish("sensors/p/q", up)
        self.assert_once_each({
            "mqtt sensors/k/l/m": lambda: sub.count("sensors/k/l/m", down),
            "redis sensors:k:l:m (direct)": lambda: rsub.count("sensors:k:l:m", down),
            "redis sensors:p:q": lambda: rsub.count("sensors:p:q", up),
            "mqtt sensors/p/q (direct)": lambda: sub.count("sensors/p/q", up),
        }, "route 'sensors/# <> sensors:*'", subscribers=[sub, rsub])
        self.assertEqual(sub.count(None, down) + sub.count(None, up), 2,
                         "copies on other topics: %r" % sub.summary())
        self.assertEqual(rsub.count(None, down) + rsub.count(None, up), 2,
                         "copies on other channels: %r" % rsub.summary())

    def test_direction_arrows(self):
        self.bridge("up > up", "down < down")
        sub = self.mqtt_client(self.mq.port, "up", "down", name="sub")
        rsub = self.redis_sub(self.rs.port, channels=["up", "down"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        up_ok = unique("up-ok").encode()        # mqtt up -> redis up
        down_ok = unique("down-ok").encode()    # redis down -> mqtt down
        up_bad = unique("up-bad").encode()      # redis up: must not reach mqtt
        down_bad = unique("down-bad").encode()  # mqtt down: must not reach redis
        pub.publish("up", up_ok)
        pub.publish("down", down_bad)
        self.r.publish("down", down_ok)
        self.r.publish("up", up_bad)
        self.assert_once_each({
            "redis up (from mqtt)": lambda: rsub.count("up", up_ok),
            "mqtt down (from redis)": lambda: sub.count("down", down_ok),
        }, "routes 'up > up' and 'down < down'", subscribers=[sub, rsub])
        self.assert_none({
            "mqtt got redis 'up'": lambda: sub.count(None, up_bad),
            "redis got mqtt 'down'": lambda: rsub.count(None, down_bad),
        }, "wrong-direction messages", subscribers=[sub, rsub])

    def test_route_qos_and_retain(self):
        self.bridge("news < news qos=2 retain")
        sub = self.mqtt_client(self.mq.port, "news", qos=2, name="sub")
        p = unique("retained").encode()
        self.r.publish("news", p)
        m = sub.wait_for(lambda m: m.payload == p)
        self.assertIsNotNone(m, "redis news did not reach MQTT: %r" % sub.summary())
        self.assertEqual(m.qos, 2, "route qos=2 should publish with QoS 2")
        # a subscriber that arrives later gets it as a retained message
        late = self.mqtt_client(self.mq.port, "news", qos=2, name="late")
        lm = late.wait_for(lambda m: m.payload == p)
        self.assertIsNotNone(lm, "route 'retain': no retained message for a "
                                 "late subscriber")
        self.assertTrue(lm.retain, "late copy should carry the retain flag")

    def test_default_route_is_not_retained(self):
        self.start_bridge(self.mq.port, self.rs.port, bridge_id="routes")
        sub = self.mqtt_client(self.mq.port, "news", name="sub")
        p = unique("live").encode()
        self.r.publish("news", p)
        self.assertIsNotNone(sub.wait_for(lambda m: m.payload == p),
                             "redis news did not reach MQTT")
        late = self.mqtt_client(self.mq.port, "news", name="late")
        self.assert_none({"late subscriber got a retained copy":
                          lambda: late.count("news", p)},
                         "default route (retain false)", subscribers=[late])

    def test_overlapping_routes_repeated_identical_messages(self):
        # the bridge must collapse the broker's one-copy-per-matching-
        # subscription deliveries, but not two genuine identical messages
        self.bridge("user/+ > user:*", "user/# > all:*")
        rsub = self.redis_sub(self.rs.port, patterns=["*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        p = unique("twice").encode()
        pub.publish("user/x", p)
        pub.publish("user/x", p)
        harness.wait_until(lambda: rsub.count("user:x", p) >= 2 and
                           rsub.count("all:x", p) >= 2, harness.DELIVERY_TIMEOUT)
        time.sleep(harness.QUIET)
        self.assertEqual({"user:x": rsub.count("user:x", p),
                          "all:x": rsub.count("all:x", p),
                          "anywhere": rsub.count(None, p)},
                         {"user:x": 2, "all:x": 2, "anywhere": 4},
                         "one payload published twice on MQTT user/x")

    def test_overlapping_redis_routes_repeated_identical_messages(self):
        self.bridge("user/+ < user:*", "user/# < user:*")
        sub = self.mqtt_client(self.mq.port, "user/#", name="sub")
        p = unique("twice").encode()
        self.r.publish("user:x", p)
        self.r.publish("user:x", p)
        harness.wait_until(lambda: sub.count("user/x", p) >= 2,
                           harness.DELIVERY_TIMEOUT)
        time.sleep(harness.QUIET)
        self.assertEqual(sub.count(None, p), 2, "one payload published twice "
                         "on Redis user:x: %r" % sub.summary())


if __name__ == "__main__":
    harness.main()
