#!/usr/bin/python3
"""Hot reload (SIGHUP): routes added and removed without reconnecting and
without losing messages on unchanged routes; an invalid configuration keeps
the running one; stream routes; filters removed while the broker is away are
unsubscribed when it returns."""

import os
import re
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique, with_servers


N_FLOW = 1000  # messages each way on the unchanged route during the reload


class ReloadTest(ServersTestCase):

    def config(self, routes, bid="rl", **extra):
        cfg = {"id": bid, "mqtt": {"url": self.mq.url},
               "redis": {"url": self.rs.url, "scan_interval": 1},
               "reconnect": {"min_ms": 100, "max_ms": 500},
               "routes": routes}
        cfg.update(extra)
        return self.write_config(cfg, name=bid + ".json")

    def hup(self, b, what="reload", in_place=True):
        """SIGHUP; wait for the reload's result and (in_place) for its
        subscriptions to be confirmed (the "in place" line)."""
        mark = b.mark()
        b.proc.send_signal(signal.SIGHUP)
        self.assert_log(b, re.compile(r"reload: (done|.*the running configuration stays)"),
                        since=mark, what=what)
        if in_place and "reload: done" in b.log()[mark:]:
            self.assert_log(b, "reload: subscriptions in place", since=mark,
                            what=what + " (subscriptions)")
        return mark

    def test_routes_added_and_removed_while_messages_flow(self):
        flow = {"mqtt": "flow/+", "redis": "flow:*", "qos": 1}
        old = {"mqtt": "old/+", "redis": "old:*"}
        new = {"mqtt": "new/+", "redis": "new:*"}
        path = self.config([flow, old])
        b = self.start_bridge(None, None, "-c", path)
        rsub = self.redis_sub(self.rs.port, patterns=["flow:*", "old:*", "new:*"])
        msub = self.mqtt_client(self.mq.port, "flow/in", "old/#", "new/#", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")

        # both routes work before the reload
        pub.publish("old/a", b"before")
        self.assertTrue(harness.wait_until(
            lambda: rsub.count("old:a", b"before"), harness.DELIVERY_TIMEOUT),
            "the old route before the reload: %r" % rsub.summary())

        # 1,000 messages each way on the unchanged route, the reload in the
        # middle of them
        errors = []

        def mqtt_side():
            try:
                for i in range(N_FLOW):
                    pub.c.publish("flow/out", b"m%d" % i, qos=1)
                    time.sleep(0.002)
            except Exception as e:  # reported below
                errors.append(e)

        def redis_side():
            try:
                for i in range(N_FLOW):
                    self.r.publish("flow:in", b"r%d" % i)
                    time.sleep(0.002)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=mqtt_side), threading.Thread(target=redis_side)]
        for t in threads:
            t.start()
        time.sleep(0.8)
        self.config([flow, new])
        mark = self.hup(b)
        for t in threads:
            t.join(30 * harness.SCALE)
        self.assertEqual(errors, [])
        self.assertFalse(any(t.is_alive() for t in threads), "publishers hung")
        self.assertNotRegex(b.log()[mark:], r"reload: .*configuration stays")
        self.assertRegex(b.log()[mark:], r"reload: route added: new/\+ <> new:\*")
        self.assertRegex(b.log()[mark:], r"reload: route removed: old/\+ <> old:\*")
        # the reload happened while the messages flowed
        done_at = b.log()[mark:]
        self.assertIn("reload: done", done_at)

        want_out = [b"m%d" % i for i in range(N_FLOW)]
        want_in = [b"r%d" % i for i in range(N_FLOW)]
        harness.wait_until(lambda: rsub.count("flow:out") >= N_FLOW and
                           msub.count("flow/in") >= N_FLOW, 20 * harness.SCALE)
        got_out = [m.data for m in rsub.snapshot() if m.channel == b"flow:out"]
        got_in = [m.payload for m in msub.snapshot() if m.topic == "flow/in"]
        self.assertEqual(len(got_out), N_FLOW, "MQTT -> Redis on the unchanged route")
        self.assertEqual(got_out, want_out, "MQTT -> Redis: lost, doubled or reordered")
        self.assertEqual(len(got_in), N_FLOW, "Redis -> MQTT on the unchanged route")
        self.assertEqual(got_in, want_in, "Redis -> MQTT: lost, doubled or reordered")

        # the new route carries both ways, the removed one neither way
        x, y = unique("x").encode(), unique("y").encode()
        pub.publish("new/a", x)
        self.r.publish("new:b", y)
        self.assert_once_each({"redis new:a": lambda: rsub.count("new:a", x),
                               "mqtt new/b": lambda: msub.count("new/b", y)},
                              "the added route", subscribers=[msub])
        pub.publish("old/a", b"after")
        self.r.publish("old:b", b"after")
        self.assert_none({"redis old:a": lambda: rsub.count("old:a", b"after"),
                          "mqtt old/b": lambda: msub.count("old/b", b"after")},
                         "the removed route")
        # without reconnecting
        self.assertNotRegex(b.log(), r"connection lost|reconnected")
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual((c["dropped_unmappable"], c["dropped_send_failed"]),
                         ("0", "0"), line)

    def test_invalid_configuration_keeps_the_running_one(self):
        path = self.config([{"mqtt": "a/+", "redis": "a:*"}])
        b = self.start_bridge(None, None, "-c", path)
        rsub = self.redis_sub(self.rs.port, patterns=["a:*", "b:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        cases = [
            ('{"routes": [', r"reload: .*rl\.json:\d+:\d+.*the running configuration stays"),
            ('{"routes": [{"mqtt": "b/#/x", "redis": "b:*"}]}',
             r"reload: .*routes\[0\]: MQTT filter \"b/#/x\" is not a valid.*the running configuration stays"),
        ]
        for text, pattern in cases:
            with open(path, "w") as f:
                f.write(text)
            mark = self.hup(b)
            self.assertRegex(b.log()[mark:], pattern)
            x = unique("x").encode()
            pub.publish("a/1", x)
            self.assert_once_each({"a:1": lambda: rsub.count("a:1", x)},
                                  "the old route after a refused reload")
        # a missing file too
        os.unlink(path)
        mark = self.hup(b)
        self.assertRegex(b.log()[mark:], r"reload: .*the running configuration stays")
        self.assertTrue(b.alive())
        # one line per refused reload, an error
        self.assertEqual(b.count(" error reload: "), 3, b.tail())

    def test_stream_route_added_and_removed(self):
        plain = {"mqtt": "p/+", "redis": "p:*"}
        jobs = {"mqtt": "jobs/+", "redis": "jobs:*", "mode": "stream",
                "direction": "redis_to_mqtt", "qos": 1}
        path = self.config([plain])
        b = self.start_bridge(None, None, "-c", path)
        msub = self.mqtt_client(self.mq.port, "jobs/#", name="sub")
        self.r.xadd("jobs:a", {"payload": b"before the route"})
        self.config([plain, jobs])
        self.hup(b)
        # a route added by a reload starts at the end of an existing stream
        # ('$'), like a bridge started then: new entries only
        harness.wait_until(lambda: self.r.execute_command(
            "XINFO", "GROUPS", "jobs:a"), 5 * harness.SCALE)
        self.r.xadd("jobs:a", {"payload": b"j1"})
        self.assertIsNotNone(msub.wait_for(lambda m: m.payload == b"j1",
                                           5 * harness.SCALE),
                             "the stream route added by the reload carries nothing")
        self.assertEqual(msub.count(payload=b"before the route"), 0)
        self.config([plain])
        self.hup(b)
        self.r.xadd("jobs:a", {"payload": b"j2"})
        self.assert_none({"j2": lambda: msub.count(payload=b"j2")},
                         "a removed stream route", quiet=1.5)
        b.stop()

    def test_route_counters_carried_over(self):
        keep = {"mqtt": "k/+", "redis": "k:*", "direction": "mqtt_to_redis"}
        gone = {"mqtt": "g/+", "redis": "g:*", "direction": "mqtt_to_redis"}
        new = {"mqtt": "n/+", "redis": "n:*", "direction": "mqtt_to_redis"}
        path = self.config([gone, keep])
        b = self.start_bridge(None, None, "-c", path)
        rsub = self.redis_sub(self.rs.port, patterns=["k:*", "n:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        for i in range(5):
            pub.publish("k/a", b"%d" % i)
        self.assertTrue(harness.wait_until(lambda: rsub.count("k:a") == 5,
                                           harness.DELIVERY_TIMEOUT))
        self.config([keep, new])  # the kept route moves from index 1 to 0
        self.hup(b)
        for i in range(3):
            pub.publish("k/a", b"x%d" % i)
        pub.publish("n/a", b"y")
        self.assertTrue(harness.wait_until(
            lambda: rsub.count("k:a") == 8 and rsub.count("n:a") == 1,
            harness.DELIVERY_TIMEOUT))
        mark = b.mark()
        b.proc.send_signal(signal.SIGUSR1)
        self.assert_log(b, "route stats [1]", since=mark)
        lines = [harness.log_message(l) for l in b.lines(mark)]
        r = [l for l in lines if l.startswith("route stats [")]
        self.assertEqual(len(r), 2, r)
        self.assertTrue(r[0].startswith("route stats [0] k/+ > k:* qos=1: "
                                        "mqtt_to_redis: in=8 out=8 "), r[0])
        self.assertTrue(r[1].startswith("route stats [1] n/+ > n:* qos=1: "
                                        "mqtt_to_redis: in=1 out=1 "), r[1])
        b.stop()

    def test_restart_after_a_reload_keeps_the_queued_messages(self):
        # subscription identifiers must not depend on the order in which
        # reloads made the table: the broker queues messages for an absent
        # bridge with the ids of the run that subscribed
        a = {"mqtt": "a/+", "redis": "a:*", "direction": "mqtt_to_redis", "qos": 1}
        bb = {"mqtt": "b/+", "redis": "b:*", "direction": "mqtt_to_redis", "qos": 1}
        c = {"mqtt": "c/+", "redis": "c:*", "direction": "mqtt_to_redis", "qos": 1}
        path = self.config([a, bb, c])
        b = self.start_bridge(None, None, "-c", path)
        self.config([bb, c])
        self.hup(b)
        b.stop()
        pub = self.mqtt_client(self.mq.port, name="pub")
        for i in range(5):  # queued by the broker for the bridge's session
            pub.publish("c/x", b"q%d" % i)
        rsub = self.redis_sub(self.rs.port, patterns=["c:*"])
        b2 = self.start_bridge(None, None, "-c", path, name="again")
        self.assertTrue(harness.wait_until(lambda: rsub.count("c:x") >= 5,
                                           harness.DELIVERY_TIMEOUT),
                        "queued messages lost after the restart: %s" % rsub.summary())
        self.assertEqual([m.data for m in rsub.snapshot()], [b"q%d" % i for i in range(5)])
        b2.stop()

    def test_new_key_of_an_unchanged_stream_route_is_read_from_its_start(self):
        orders = {"mqtt": "orders/+", "redis": "orders:*", "mode": "stream",
                  "direction": "redis_to_mqtt", "qos": 1}
        jobs = {"mqtt": "jobs/+", "redis": "jobs:*", "mode": "stream",
                "direction": "redis_to_mqtt", "qos": 1}
        path = self.config([orders], redis={"url": self.rs.url, "scan_interval": 3600})
        b = self.start_bridge(None, None, "-c", path)
        msub = self.mqtt_client(self.mq.port, "orders/#", "jobs/#", name="sub")
        # a key made after the last scan (none for an hour): the reload's
        # scan finds it; it is new, so read from '0', unlike the keys of the
        # route the reload adds (existing ones start at '$')
        self.r.xadd("orders:42", {"payload": b"o1"})
        self.r.xadd("jobs:1", {"payload": b"old job"})
        self.config([orders, jobs], redis={"url": self.rs.url, "scan_interval": 3600})
        self.hup(b)
        self.assertIsNotNone(msub.wait_for(lambda m: m.payload == b"o1"),
                             "the first entry of a new key of an unchanged route was "
                             "skipped: %s" % msub.summary())
        self.r.xadd("jobs:1", {"payload": b"new job"})
        self.assertIsNotNone(msub.wait_for(lambda m: m.payload == b"new job"))
        self.assertEqual(msub.count(payload=b"old job"), 0)
        b.stop()

    def test_first_stream_route_turns_replay_on(self):
        path = self.config([{"mqtt": "p/+", "redis": "p:*"}])
        b = self.start_bridge(None, None, "-c", path)
        resp = self.mqtt_client(self.mq.port, "bridge/rl/replay/response", name="resp")
        pub = self.mqtt_client(self.mq.port, name="pub")
        self.assertNotIn("replay: requests on", b.log())
        self.config([{"mqtt": "p/+", "redis": "p:*"},
                     {"mqtt": "s/+", "redis": "s:*", "mode": "stream"}])
        mark = self.hup(b)
        self.assertIn("replay: requests on bridge/rl/replay", b.log()[mark:])
        for i in range(3):
            self.r.xadd("s:a", {"payload": b"e%d" % i})
        # the request is sent until the replay subscription is in place
        req = b'{"topic": "s/a", "count": 2}'
        ok = harness.wait_until(
            lambda: (pub.c.publish("bridge/rl/replay", req, qos=1),
                     resp.count(payload=b"e2"))[1], 5 * harness.SCALE, interval=0.5)
        self.assertTrue(ok, "no replay answer after the reload: %s" % resp.summary())
        got = [m.payload for m in resp.snapshot()
               if m.topic == "bridge/rl/replay/response" and not m.payload.startswith(b"{")]
        self.assertEqual(got[:2], [b"e1", b"e2"])
        b.stop()

    @with_servers(mosquitto={"persistence": True})
    def test_filter_removed_while_the_broker_is_away(self):
        keep = {"mqtt": "keep/+", "redis": "keep:*", "qos": 1}
        gone = {"mqtt": "gone/+", "redis": "gone:*", "qos": 1}
        path = self.config([keep, gone])
        b = self.start_bridge(None, None, "-c", path)
        # the broker goes away; the route is removed meanwhile; the broker
        # comes back with its persistent session (still subscribed to gone/+)
        self.mq.stop()
        self.assert_log(b, harness.LOST_RE, what="broker stopped")
        self.config([keep])
        mark = self.hup(b, in_place=False)
        self.assertNotIn("subscriptions in place", b.log()[mark:])
        mark = b.mark()
        self.mq.start()
        self.assert_log(b, "mqtt: reconnected", since=mark,
                        timeout=harness.RECOVERY_TIMEOUT)
        # once the broker is back and the subscriptions are confirmed
        self.assert_log(b, "reload: subscriptions in place", since=mark)
        pub = self.mqtt_client(self.mq.port, name="pub")
        rsub = self.redis_sub(self.rs.port, patterns=["keep:*", "gone:*"])
        # the kept route carries (once the subscriptions are back)
        x = unique("x").encode()
        ok = harness.wait_until(lambda: (pub.publish("keep/a", x), rsub.count("keep:a", x))[1],
                                harness.RECOVERY_TIMEOUT, interval=0.5)
        self.assertTrue(ok, "the kept route does not carry after the broker returned")
        for i in range(5):
            pub.publish("gone/a", b"g%d" % i)
        time.sleep(harness.QUIET)
        b.stop()
        line, c = self.exit_stats(b)
        # the session no longer holds gone/+: nothing of it reached the
        # bridge at all (not even to be dropped)
        self.assertEqual(rsub.count("gone:a"), 0)
        self.assertEqual(int(c["mqtt_in"]), rsub.count("keep:a"), line)

    def test_mqtt311_route_added(self):
        path = self.config([{"mqtt": "a/+", "redis": "a:*"}],
                           mqtt={"url": self.mq.url, "protocol": "3.1.1"})
        b = self.start_bridge(None, None, "-c", path)
        rsub = self.redis_sub(self.rs.port, patterns=["a:*", "b:*"])
        msub = self.mqtt_client(self.mq.port, "b/#", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        self.config([{"mqtt": "a/+", "redis": "a:*"}, {"mqtt": "b/+", "redis": "b:*"}],
                    mqtt={"url": self.mq.url, "protocol": "3.1.1"})
        self.hup(b)
        x, y = unique("x").encode(), unique("y").encode()
        pub.publish("b/1", x)
        self.r.publish("b:2", y)
        # exactly once each, no echo of our own publish in either direction
        self.assert_once_each({"redis b:1": lambda: rsub.count("b:1", x),
                               "mqtt b/2": lambda: msub.count("b/2", y)},
                              "route added over MQTT 3.1.1", subscribers=[msub])
        self.assertEqual(rsub.count("b:2"), 1)
        b.stop()


if __name__ == "__main__":
    harness.main()
