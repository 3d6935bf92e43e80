#!/usr/bin/python3
"""Basic forwarding with the default routes (user/+ <> user:*, news <> news):
the POC user notification, broadcast on news without echo, Redis channel
statistics, binary, empty and 1 MiB payloads, identical payloads (no false
echo suppression or deduplication) and a 500-message burst each way."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique

USER_JSON = b'{"type":"info","message":"Hello Alice!"}'


class DefaultRoutesTest(ServersTestCase):

    def setUp(self):
        super().setUp()
        self.bridge = self.start_bridge(self.mq.port, self.rs.port,
                                        bridge_id="fwd")

    # 1. POC user notification --------------------------------------------
    def test_redis_user_notification_reaches_mqtt_once(self):
        sub = self.mqtt_client(self.mq.port, "user/alice", name="alice")
        wide = self.mqtt_client(self.mq.port, "user/#", name="wide")
        # a Redis listener too: the bridge must not echo it back into Redis
        rsub = self.redis_sub(self.rs.port, channels=["user:alice"])
        self.r.publish("user:alice", USER_JSON)
        self.assert_once_each({
            "mqtt user/alice": lambda: sub.count("user/alice", USER_JSON),
            "mqtt user/# sees it on any topic": lambda: wide.count(None, USER_JSON),
            "redis user:alice": lambda: rsub.count("user:alice", USER_JSON),
        }, "redis PUBLISH user:alice", subscribers=[sub, wide, rsub])
        m = sub.snapshot()[0]
        self.assertEqual(m.topic, "user/alice")

    def test_mqtt_user_message_reaches_redis_once(self):
        payload = unique("bob").encode()
        rsub = self.redis_sub(self.rs.port, channels=["user:bob"])
        msub = self.mqtt_client(self.mq.port, "user/bob", name="bobsub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        pub.publish("user/bob", payload)
        self.assert_once_each({
            "redis user:bob": lambda: rsub.count("user:bob", payload),
            "mqtt user/bob": lambda: msub.count("user/bob", payload),
        }, "MQTT publish user/bob", subscribers=[rsub, msub])

    # 2. broadcast on news ---------------------------------------------------
    def test_news_from_mqtt_no_echo(self):
        payload = unique("news-mqtt").encode()
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        s1 = self.mqtt_client(self.mq.port, "news", name="s1")
        s2 = self.mqtt_client(self.mq.port, "news", name="s2")
        pub = self.mqtt_client(self.mq.port, name="pub")
        pub.publish("news", payload)
        self.assert_once_each({
            "redis news": lambda: rsub.count("news", payload),
            "mqtt sub1 news": lambda: s1.count("news", payload),
            "mqtt sub2 news": lambda: s2.count("news", payload),
        }, "MQTT publish news", subscribers=[rsub, s1, s2])

    def test_news_from_redis_no_echo(self):
        payload = unique("news-redis").encode()
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        rpsub = self.redis_sub(self.rs.port, patterns=["*"])
        s1 = self.mqtt_client(self.mq.port, "news", name="s1")
        self.r.publish("news", payload)
        self.assert_once_each({
            "mqtt news": lambda: s1.count("news", payload),
            "redis SUBSCRIBE news": lambda: rsub.count("news", payload),
            "redis PSUBSCRIBE *": lambda: rpsub.count(None, payload),
        }, "redis PUBLISH news", subscribers=[s1, rsub, rpsub])

    # 4. channel statistics --------------------------------------------------
    def test_pubsub_channel_stats(self):
        numsub = dict(self.r.pubsub_numsub("news"))
        self.assertEqual(numsub.get(b"news"), 1,
                         "PUBSUB NUMSUB news should count exactly the bridge")
        # one PSUBSCRIBE per pattern route: user:* is the only one (and no
        # other client of this Redis subscribes)
        self.assertEqual(self.r.pubsub_numpat(), 1,
                         "PUBSUB NUMPAT: user:* must be one PSUBSCRIBE")
        # (NUMPAT counts distinct patterns: the subscriber connection's own
        # counts say that it subscribed each once, and no other one did)
        subs = {c["name"]: (int(c["sub"]), int(c["psub"]))
                for c in self.r.client_list()
                if int(c["sub"]) or int(c["psub"])}
        self.assertEqual(subs, {"mrb:fwd:subscriber": (1, 1)},
                         "(SUBSCRIBEs, PSUBSCRIBEs) per connection")
        channels = self.r.pubsub_channels()
        self.assertIn(b"news", channels)
        self.assertNotIn(b"user:*", channels,
                         "user:* must be PSUBSCRIBEd, not SUBSCRIBEd")

    # 5. payloads ------------------------------------------------------------
    def _both_ways(self, payload_up, payload_down, timeout=None):
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        pub.publish("news", payload_up, timeout=timeout)
        self.assert_once_each({
            "redis news (mqtt->redis)": lambda: rsub.count("news", payload_up),
            "mqtt news (direct)": lambda: msub.count("news", payload_up),
        }, "MQTT -> Redis payload of %d bytes" % len(payload_up),
            timeout=timeout, subscribers=[rsub, msub])
        self.r.publish("news", payload_down)
        self.assert_once_each({
            "mqtt news (redis->mqtt)": lambda: msub.count("news", payload_down),
            "redis news (direct)": lambda: rsub.count("news", payload_down),
        }, "Redis -> MQTT payload of %d bytes" % len(payload_down),
            timeout=timeout, subscribers=[rsub, msub])
        # all received payloads are byte-exact copies (count() compares bytes);
        # additionally make sure no truncated/altered copy arrived
        for m in msub.snapshot():
            self.assertIn(m.payload, (payload_up, payload_down),
                          "altered payload of %d bytes on MQTT" % len(m.payload))
        for m in rsub.snapshot():
            self.assertIn(m.data, (payload_up, payload_down),
                          "altered payload of %d bytes on Redis" % len(m.data))

    def test_binary_payload_with_nul_bytes(self):
        up = b"\x00up\x00" + bytes(range(256)) + b"\x00\xff\x00"
        down = b"\x00\x00down\x00" + bytes(reversed(range(256))) + b"\x00"
        self._both_ways(up, down)

    def test_one_mib_payload(self):
        size = 1048576
        up = bytearray(os.urandom(size))
        up[0] = 0
        up[size // 2] = 0
        up[-1] = 0
        down = bytearray(os.urandom(size))
        down[1] = 0
        down[-2] = 0
        self._both_ways(bytes(up), bytes(down), timeout=15 * harness.SCALE)

    def test_empty_payload_news(self):
        # a zero-length payload is a legal message on both sides
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        self.r.publish("news", b"")
        self.assert_once_each({
            "mqtt news empty": lambda: msub.count("news", b""),
        }, "Redis -> MQTT empty payload", subscribers=[msub, rsub])

    # repeated and simultaneous identical messages ----------------------------
    def test_repeated_identical_messages_all_delivered(self):
        # identical messages are distinct messages: no deduplication
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        up = unique("same-up").encode()
        down = unique("same-down").encode()
        for _ in range(5):
            pub.publish("news", up)
        for _ in range(5):
            self.r.publish("news", down)
        harness.wait_until(lambda: rsub.count("news", up) >= 5 and
                           msub.count("news", down) >= 5,
                           harness.DELIVERY_TIMEOUT)
        time.sleep(harness.QUIET)
        self.assertEqual({
            "redis copies of the MQTT message": rsub.count("news", up),
            "mqtt copies of the MQTT message": msub.count("news", up),
            "mqtt copies of the Redis message": msub.count("news", down),
            "redis copies of the Redis message": rsub.count("news", down),
        }, {
            "redis copies of the MQTT message": 5,
            "mqtt copies of the MQTT message": 5,
            "mqtt copies of the Redis message": 5,
            "redis copies of the Redis message": 5,
        }, "each of 5 identical publications on each side")

    def test_same_payload_from_both_sides_at_once(self):
        # the echo table must swallow only the bridge's own copy, not a
        # genuine identical message from the other side
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        p = unique("both").encode()
        self.r.publish("news", p)
        pub.publish("news", p)
        harness.wait_until(lambda: rsub.count("news", p) >= 2 and
                           msub.count("news", p) >= 2,
                           harness.DELIVERY_TIMEOUT)
        time.sleep(harness.QUIET)
        self.assertEqual((rsub.count("news", p), msub.count("news", p)), (2, 2),
                         "(redis copies, mqtt copies) of one payload published "
                         "once on Redis and once on MQTT")

    def test_burst_in_order(self):
        n = 500
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        tag = unique("burst")
        ups = [("%s-up-%04d" % (tag, i)).encode() for i in range(n)]
        downs = [("%s-down-%04d" % (tag, i)).encode() for i in range(n)]
        infos = [pub.c.publish("news", p, qos=1) for p in ups]
        pipe = self.r.pipeline(transaction=False)
        for p in downs:
            pipe.publish("news", p)
        pipe.execute()
        for i in infos:
            i.wait_for_publish(harness.DELIVERY_TIMEOUT)
        up_set, down_set = set(ups), set(downs)
        # 500 small messages each way over loopback take ~0.1 s; allow 5 s
        # (>= 100 messages/s) before calling it a stall
        harness.wait_until(
            lambda: sum(1 for m in rsub.snapshot() if m.data in up_set) >= n
            and sum(1 for m in msub.snapshot() if m.payload in down_set) >= n,
            harness.DELIVERY_TIMEOUT, 0.1)
        time.sleep(harness.QUIET)
        got_up = [m.data for m in rsub.snapshot() if m.data.startswith(
            (tag + "-up").encode())]
        got_down = [m.payload for m in msub.snapshot() if m.payload.startswith(
            (tag + "-down").encode())]
        self.assertEqual((len(got_up), len(set(got_up))), (n, n),
                         "MQTT -> Redis: %d messages sent, Redis got %d (%d "
                         "distinct) within %.1f s" % (n, len(got_up),
                                                      len(set(got_up)),
                                                      harness.DELIVERY_TIMEOUT))
        self.assertEqual((len(got_down), len(set(got_down))), (n, n),
                         "Redis -> MQTT: %d messages sent, MQTT got %d (%d "
                         "distinct) within %.1f s" % (n, len(got_down),
                                                      len(set(got_down)),
                                                      harness.DELIVERY_TIMEOUT))
        self.assertEqual(got_up, ups, "MQTT -> Redis order")
        self.assertEqual(got_down, downs, "Redis -> MQTT order")


if __name__ == "__main__":
    harness.main()
