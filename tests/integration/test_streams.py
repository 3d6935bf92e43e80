#!/usr/bin/python3
"""Stream mode: XADD from MQTT (with origin, trimmed to maxlen), consumer
group reads to MQTT with the entry ID as user properties, keys of a pattern
found by SCAN, the bridge's own entries not sent back, malformed entries
counted, pending entries delivered again after a crash."""

import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique


class StreamTest(ServersTestCase):

    def bridge(self, routes, bid="st"):
        cfg = self.write_config({
            "id": bid, "mqtt": {"url": self.mq.url},
            "redis": {"url": self.rs.url, "scan_interval": 1},
            "reconnect": {"min_ms": 100, "max_ms": 500},
            "routes": routes}, name=bid + ".json")
        return self.start_bridge(None, None, "-c", cfg)

    def test_both_ways_entry_ids_and_no_echo(self):
        b = self.bridge([
            {"mqtt": "dev/+", "redis": "dev:*", "mode": "stream", "maxlen": 50},
            {"mqtt": "alerts", "redis": "alerts", "direction": "redis_to_mqtt",
             "mode": "stream"},
            # MQTT -> Redis only: the bridge does not read these entries
            # back, so what it acknowledges below does not depend on how
            # many were trimmed before it could read them
            {"mqtt": "log/+", "redis": "log:*", "mode": "stream",
             "direction": "mqtt_to_redis", "maxlen": 50, "qos": 1}])
        msub = self.mqtt_client(self.mq.port, "dev/#", "alerts", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")

        # MQTT -> Redis: appended with payload and origin
        x = unique("x").encode()
        pub.publish("dev/a", x)
        self.assertTrue(harness.wait_until(lambda: self.r.xlen("dev:a") >= 1,
                                           harness.DELIVERY_TIMEOUT))
        (eid, fields), = self.r.xrange("dev:a")
        self.assertEqual(fields, {b"payload": x, b"origin": b"st"})

        # Redis -> MQTT on an exact key, with the entry ID
        eid = self.r.xadd("alerts", {"payload": b"fire"})
        m = msub.wait_for(lambda m: m.topic == "alerts")
        self.assertIsNotNone(m, "XADD alerts did not reach MQTT")
        self.assertEqual((m.payload, m.props),
                         (b"fire", {"stream": "alerts", "stream-id": eid.decode()}))

        # a key of the pattern created now is found by the next scan (1 s)
        y = unique("y").encode()
        self.r.xadd("dev:b", {"payload": y})
        self.assertIsNotNone(msub.wait_for(lambda m: m.payload == y, 5 * harness.SCALE),
                             "XADD to a new key dev:b did not reach MQTT")

        # a malformed entry is acknowledged and counted, not published
        self.r.xadd("alerts", {"text": b"no payload field"})
        # our own entries (origin st, on dev:a) are not sent back: the
        # subscriber saw x once (from the publisher), never from the stream
        time.sleep(1.5 + harness.QUIET)  # a scan has found dev:a meanwhile
        self.assertEqual(msub.count("dev/a", x), 1)

        # maxlen bounds the stream: XADD MAXLEN ~ 50. Approximate trimming
        # removes whole radix tree nodes only, a node holding up to
        # stream-node-max-entries entries (default 100): after each XADD the
        # stream keeps at least maxlen entries, and fewer than maxlen + the
        # first node's entries, so maxlen <= XLEN <= maxlen + node max - 1
        # (330: the last node is part full, so trimming too much shows too)
        n, maxlen = 330, 50
        node_max = int(self.r.config_get("stream-node-max-entries")
                       ["stream-node-max-entries"])
        infos = [pub.c.publish("log/a", b"%d" % i, qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(harness.DELIVERY_TIMEOUT)

        def added():  # entries ever added to the key (Redis >= 7.0)
            try:
                return self.r.xinfo_stream("log:a")["entries-added"]
            except harness.redis.exceptions.ResponseError:  # no such key yet
                return 0
        # QoS 1 into a stream: at least once, so every one is written
        self.assertTrue(harness.wait_until(lambda: added() >= n,
                                           harness.DELIVERY_TIMEOUT),
                        "XADDs to log:a: %d of %d" % (added(), n))
        time.sleep(harness.QUIET)
        self.assertEqual(added(), n, "entries added to log:a (no duplicates "
                         "without a reconnect)")
        xlen = self.r.xlen("log:a")
        self.assertTrue(maxlen <= xlen <= maxlen + node_max - 1,
                        "XLEN log:a %d after %d XADD MAXLEN ~ %d "
                        "(stream-node-max-entries %d)" % (xlen, n, maxlen, node_max))
        # the newest ones survive, in order
        self.assertEqual([f[b"payload"] for _, f in self.r.xrange("log:a")],
                         [b"%d" % i for i in range(n - xlen, n)])

        # every entry the bridge read is acknowledged: x (its own, on dev:a,
        # found by a scan after the first one, so read from its start),
        # fire, y and the malformed one
        group = "mqtt-redis-bridge:st"
        self.assertTrue(harness.wait_until(
            lambda: [self.r.xpending(k, group)["pending"]
                     for k in ("alerts", "dev:a", "dev:b")] == [0, 0, 0],
            harness.DELIVERY_TIMEOUT), "entries left pending")
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual({k: c[k] for k in ("dropped_malformed", "stream_in",
                                            "stream_acked", "echoes")},
                         {"dropped_malformed": "1", "stream_in": "4",
                          "stream_acked": "4", "echoes": "1"}, line)
        # and the route's own count: all n written
        route = [harness.log_message(l) for l in b.lines()
                 if "route stats [2] log/+ > log:*" in l]
        self.assertEqual(len(route), 1, b.tail())
        self.assertIn("mqtt_to_redis: in=%d out=%d " % (n, n), route[0])

    def test_pending_entry_delivered_again_after_a_crash(self):
        routes = [{"mqtt": "jobs", "redis": "jobs", "direction": "redis_to_mqtt",
                   "mode": "stream", "qos": 1}]
        b = self.bridge(routes, "crash")
        msub = self.mqtt_client(self.mq.port, "jobs", name="sub")
        group = "mqtt-redis-bridge:crash"
        # the broker stops answering: the bridge reads the entry and
        # publishes it, but no PUBACK comes, so it stays pending
        self.mq.proc.send_signal(signal.SIGSTOP)
        self.addCleanup(lambda: self.mq.proc.poll() is None and
                        self.mq.proc.send_signal(signal.SIGCONT))
        eid = self.r.xadd("jobs", {"payload": b"job-1"}).decode()
        ok = harness.wait_until(
            lambda: self.r.xpending("jobs", group)["pending"] == 1,
            harness.DELIVERY_TIMEOUT)
        self.assertTrue(ok, "the entry was not read (pending)")
        b.kill()
        self.mq.proc.send_signal(signal.SIGCONT)
        b2 = self.bridge(routes, "crash")
        # the restarted bridge reads its pending entry again and acks it
        self.assertTrue(harness.wait_until(
            lambda: self.r.xpending("jobs", group)["pending"] == 0,
            harness.RECOVERY_TIMEOUT), "still pending after the restart")
        m = msub.wait_for(lambda m: m.payload == b"job-1")
        self.assertIsNotNone(m, "job-1 never reached MQTT")
        # every copy (the broker may also deliver the one the first run
        # had written) carries the same entry ID: a consumer can drop it
        ids = {x.props.get("stream-id") for x in msub.snapshot() if x.topic == "jobs"}
        self.assertEqual(ids, {eid})
        b2.stop()
        line, c = self.exit_stats(b2)
        self.assertEqual(c["stream_reread"], "1", line)


if __name__ == "__main__":
    harness.main()
