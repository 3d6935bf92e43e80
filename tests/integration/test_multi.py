#!/usr/bin/python3
"""Two mosquitto brokers, two bridges (different --id), one Redis: a message
published on either broker or on Redis reaches every subscriber on both
brokers and on Redis exactly once, and nothing more arrives afterwards."""

import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique


class MultiServerTest(ServersTestCase):

    def setUp(self):
        super().setUp()
        self.a = self.mq  # broker A; B is a second one
        self.b = self.start_mosquitto()
        self.ba = self.start_bridge(self.a.port, self.rs.port, bridge_id="bra",
                                    name="bridgeA")
        self.bb = self.start_bridge(self.b.port, self.rs.port, bridge_id="brb",
                                    name="bridgeB")

    def _subscribers(self, topic, channel):
        sa = self.mqtt_client(self.a.port, topic, name="subA")
        sb = self.mqtt_client(self.b.port, topic, name="subB")
        rsub = self.redis_sub(self.rs.port, channels=[channel])
        return sa, sb, rsub

    def _check(self, what, topic, channel, payload, sa, sb, rsub):
        self.assert_once_each({
            "broker A %s" % topic: lambda: sa.count(topic, payload),
            "broker B %s" % topic: lambda: sb.count(topic, payload),
            "redis %s" % channel: lambda: rsub.count(channel, payload),
        }, what, subscribers=[sa, sb, rsub])

    def test_news_from_each_side(self):
        sa, sb, rsub = self._subscribers("news", "news")
        pa = self.mqtt_client(self.a.port, name="pubA")
        pb = self.mqtt_client(self.b.port, name="pubB")
        m1 = unique("fromA").encode()
        pa.publish("news", m1)
        self._check("publish news on broker A", "news", "news", m1, sa, sb, rsub)
        m2 = unique("fromB").encode()
        pb.publish("news", m2)
        self._check("publish news on broker B", "news", "news", m2, sa, sb, rsub)
        m3 = unique("fromRedis").encode()
        self.r.publish("news", m3)
        self._check("PUBLISH news on Redis", "news", "news", m3, sa, sb, rsub)
        # nothing but those three messages, ever
        self.assert_none({
            "extra on A": lambda: len(sa.snapshot()) - 3,
            "extra on B": lambda: len(sb.snapshot()) - 3,
            "extra on Redis": lambda: len(rsub.snapshot()) - 3,
        }, "after the three broadcasts", subscribers=[sa, sb, rsub])

    def test_user_topic_from_each_side(self):
        sa, sb, rsub = self._subscribers("user/carol", "user:carol")
        pa = self.mqtt_client(self.a.port, name="pubA")
        pb = self.mqtt_client(self.b.port, name="pubB")
        msgs = []
        for what, send in (
                ("broker A", lambda p: pa.publish("user/carol", p)),
                ("broker B", lambda p: pb.publish("user/carol", p)),
                ("Redis", lambda p: self.r.publish("user:carol", p))):
            p = unique("carol").encode()
            msgs.append(p)
            send(p)
            self._check("user/carol from %s" % what, "user/carol", "user:carol",
                        p, sa, sb, rsub)
        self.assert_none({
            "extra on A": lambda: len(sa.snapshot()) - 3,
            "extra on B": lambda: len(sb.snapshot()) - 3,
            "extra on Redis": lambda: len(rsub.snapshot()) - 3,
        }, "after the three user/carol messages", subscribers=[sa, sb, rsub])

    def test_burst_no_loops(self):
        # 20 messages from each of the three places; every subscriber gets
        # all 60 exactly once and nothing keeps circulating
        sa, sb, rsub = self._subscribers("news", "news")
        pa = self.mqtt_client(self.a.port, name="pubA")
        pb = self.mqtt_client(self.b.port, name="pubB")
        sent = []
        for i in range(20):
            for tag, send in (("A", lambda p: pa.publish("news", p)),
                              ("B", lambda p: pb.publish("news", p)),
                              ("R", lambda p: self.r.publish("news", p))):
                p = ("burst-%s-%02d-" % (tag, i)).encode() + unique().encode()
                sent.append(p)
                send(p)
        harness.wait_until(lambda: min(len(sa.snapshot()), len(sb.snapshot()),
                                       len(rsub.snapshot())) >= len(sent),
                           harness.DELIVERY_TIMEOUT * 2)
        time.sleep(harness.QUIET)
        for name, got in (("broker A", [m.payload for m in sa.snapshot()]),
                          ("broker B", [m.payload for m in sb.snapshot()]),
                          ("Redis", [m.data for m in rsub.snapshot()])):
            missing = [p for p in sent if got.count(p) == 0]
            dup = [p for p in sent if got.count(p) > 1]
            extra = [p for p in got if p not in sent]
            self.assertEqual((len(missing), len(dup), len(extra)), (0, 0, 0),
                             "%s: %d missing, %d duplicated, %d unexpected; "
                             "missing %r dup %r" % (name, len(missing), len(dup),
                                                    len(extra), missing[:5],
                                                    dup[:5]))


if __name__ == "__main__":
    harness.main()
