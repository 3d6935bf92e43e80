#!/usr/bin/python3
"""Route options: presence (store: hash) updated by a device's Last Will and
filled from retained messages at start without publishing them; the JSON
envelope round trip (text, JSON, binary) with unwrap, malformed envelopes
and envelopes over max_payload counted; per-route rate limits (QoS 0
dropped and counted within 10% of rate * time + burst, QoS 1 slowed and
all delivered, both directions)."""

import json
import base64
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique  # noqa: E402


class RouteOptionsTest(ServersTestCase):

    def bridge(self, routes, bid="ro", protocol=None, limits=None, ready=True):
        cfg = {"id": bid, "mqtt": {"url": self.mq.url},
               "redis": {"url": self.rs.url},
               "reconnect": {"min_ms": 100, "max_ms": 500},
               "routes": routes}
        if protocol:
            cfg["mqtt"]["protocol"] = protocol
        if limits:
            cfg["limits"] = limits
        path = self.write_config(cfg, name=bid + ".json")
        return self.start_bridge(None, None, "-c", path, ready=ready)

    def device(self, dev_id, topic):
        """A device: mosquitto_sub with a retained Last Will 'offline' on
        topic (a process we can kill: no DISCONNECT, the broker sees its
        TCP connection drop)."""
        p = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.mq.port),
             "-i", dev_id, "-t", "devices/%s/cmd" % dev_id, "-k", "5",
             "--will-topic", topic, "--will-payload", "offline",
             "--will-qos", "1", "--will-retain"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait(5)))
        # connected once the broker logs it (its log is verbose)
        self.assertTrue(harness.wait_until(
            lambda: ("as %s" % dev_id) in self.mq.log() or
            ("client %s" % dev_id) in self.mq.log() or p.poll() is not None,
            harness.SERVER_TIMEOUT))
        self.assertIsNone(p.poll(), "mosquitto_sub exited")
        return p

    def hash(self, name):
        return {k.decode(): v.decode() for k, v in self.r.hgetall(name).items()}

    def wait_hash(self, want, what, name="devices"):
        """Wait (bounded) until HGETALL name == want."""
        self.assertTrue(harness.wait_until(lambda: self.hash(name) == want,
                                           harness.DELIVERY_TIMEOUT),
                        "%s: HGETALL %s: %r" % (what, name, self.hash(name)))

    def wait_once(self, rsub, channel, payload):
        """Wait (bounded) until channel has carried payload exactly once."""
        self.assertTrue(harness.wait_until(
            lambda: rsub.count(channel, payload) == 1, harness.DELIVERY_TIMEOUT),
            rsub.summary())

    # ---- presence -------------------------------------------------------

    def test_presence_updated_by_last_will(self):
        b = self.bridge([{"mqtt": "devices/+/status", "redis": "presence:*",
                          "direction": "mqtt_to_redis", "store": "hash",
                          "hash": "devices"}])
        rsub = self.redis_sub(self.rs.port, patterns=["presence:*"])
        dev = self.device("dev1", "devices/dev1/status")
        pub = self.mqtt_client(self.mq.port, name="dev1-announce")
        pub.publish("devices/dev1/status", b"online", retain=True)
        self.wait_hash({"dev1": "online"}, "announced")
        # subscribers are told of the change on the channel as usual
        self.wait_once(rsub, "presence:dev1", b"online")

        # the device's connection dies without a DISCONNECT: its Will
        dev.send_signal(signal.SIGKILL)
        dev.wait(5)
        self.wait_hash({"dev1": "offline"}, "after the kill")
        self.wait_once(rsub, "presence:dev1", b"offline")

        # a retained status cleared (empty retained message): out of the hash
        pub.publish("devices/dev1/status", b"", retain=True)
        self.wait_hash({}, "after the cleared status")
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual((c["hash_updates"], c["retained_skipped"]), ("3", "0"), line)

    def check_fill_from_retained(self, protocol):
        # devices announced before the bridge starts
        pub = self.mqtt_client(self.mq.port, name="devs")
        pub.publish("devices/d2/status", b"online", retain=True)
        pub.publish("devices/d3/status", b"offline", retain=True)
        pub.publish("user/x", b"retained-but-not-presence", retain=True)
        rsub = self.redis_sub(self.rs.port, patterns=["presence:*", "user:*"])
        b = self.bridge([{"mqtt": "devices/+/status", "redis": "presence:*",
                          "direction": "mqtt_to_redis", "store": "hash",
                          "hash": "devices"},
                         {"mqtt": "user/+", "redis": "user:*"}],
                        protocol=protocol)
        self.wait_hash({"d2": "online", "d3": "offline"}, "filled at start")
        # state, not news: nothing published
        self.assert_none({"presence": lambda: rsub.count()},
                         "retained messages at start", subscribers=[rsub])
        # a change after the start is news
        pub.publish("devices/d3/status", b"online", retain=True)
        self.wait_once(rsub, "presence:d3", b"online")
        self.assertEqual(self.hash("devices"), {"d2": "online", "d3": "online"})
        b.stop()
        line, c = self.exit_stats(b)
        # user/x's retained message is skipped as before; MQTT 5 does not
        # even send it (Retain Handling 2 on that filter)
        self.assertEqual((c["hash_updates"], c["retained_skipped"]),
                         ("3", "0" if protocol == "5" else "1"), line)

    def test_presence_filled_from_retained_at_start(self):
        self.check_fill_from_retained("5")

    def test_presence_filled_from_retained_at_start_mqtt311(self):
        self.check_fill_from_retained("3.1.1")

    def test_presence_added_by_reload_fills_from_retained(self):
        pub = self.mqtt_client(self.mq.port, name="devs")
        pub.publish("devices/d4/status", b"online", retain=True)
        plain = {"mqtt": "devices/+/status", "redis": "presence:*",
                 "direction": "mqtt_to_redis"}
        b = self.bridge([plain])
        rsub = self.redis_sub(self.rs.port, patterns=["presence:*", "lamps:*"])
        self.assertEqual(self.hash("devices"), {})
        # the same filter gains a store route, and a rate-limited route
        self.write_config({
            "id": "ro", "mqtt": {"url": self.mq.url},
            "redis": {"url": self.rs.url},
            "reconnect": {"min_ms": 100, "max_ms": 500},
            "routes": [dict(plain, store="hash", hash="devices"),
                       {"mqtt": "lamps/+", "redis": "lamps:*", "qos": 0,
                        "direction": "mqtt_to_redis", "rate": 5, "burst": 1}]},
            name="ro.json")
        mark = b.mark()
        b.proc.send_signal(signal.SIGHUP)
        # the new lamps/+ filter must be subscribed before the 20 QoS 0
        # messages go out (one published before its SUBACK is lost at the
        # broker: seen once under valgrind in CI)
        self.assertTrue(b.wait_log("reload: subscriptions in place",
                                   harness.DELIVERY_TIMEOUT, since=mark), b.tail())
        self.wait_hash({"d4": "online"}, "after the reload")
        # the new route's limit holds: 20 at once, burst 1, 5/s
        for i in range(20):
            pub.c.publish("lamps/l1", b"%d" % i, qos=0)
        time.sleep(harness.QUIET)
        self.assertLessEqual(rsub.count("lamps:l1"), 5, rsub.summary())
        self.assertGreaterEqual(rsub.count("lamps:l1"), 1, rsub.summary())
        self.assertEqual(rsub.count("presence:d4"), 0, "state, not news")
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual(int(c["dropped_rate_limited"]), 20 - rsub.count("lamps:l1"),
                         line)

    # ---- envelope -------------------------------------------------------

    def test_envelope_round_trip(self):
        b = self.bridge([{"mqtt": "up/+", "redis": "up:*",
                          "direction": "mqtt_to_redis", "envelope": "json",
                          "qos": 1},
                         {"mqtt": "down/+", "redis": "down:*",
                          "direction": "redis_to_mqtt", "unwrap": True}],
                        limits={"max_payload": 4096})
        rsub = self.redis_sub(self.rs.port, patterns=["up:*"])
        msub = self.mqtt_client(self.mq.port, "down/#", name="down")
        pub = self.mqtt_client(self.mq.port, name="up")
        cases = {
            "text": "h\u00e9llo w\u00f6rld \"quoted\"".encode(),
            "json": b'{"t":21.5,"ok":true,"tags":["a","b"]}',
            "bin": bytes(range(256)),
        }
        t0 = time.time() * 1000
        for name, payload in cases.items():
            pub.publish("up/" + name, payload, qos=1)
        self.assertTrue(harness.wait_until(lambda: rsub.count() == 3,
                                           harness.DELIVERY_TIMEOUT), rsub.summary())
        t1 = time.time() * 1000
        envs = {m.channel.decode()[3:]: m.data for m in rsub.snapshot()}
        for name, payload in cases.items():
            e = json.loads(envs[name])
            self.assertEqual((e["topic"], e["qos"], e["retain"], e["bridge"]),
                             ("up/" + name, 1, False, "ro"), e)
            self.assertTrue(t0 - 1000 <= e["ts"] <= t1 + 1000, (t0, e["ts"], t1))
            if name == "text":
                self.assertEqual(e["payload"], payload.decode())
                self.assertNotIn("encoding", e)
            elif name == "json":
                self.assertEqual(e["payload"], json.loads(payload))
                self.assertNotIn("encoding", e)
            else:
                self.assertEqual(e["encoding"], "base64")
                self.assertEqual(base64.b64decode(e["payload"]), payload)
        # back: each envelope published to Redis arrives unwrapped, the
        # same bytes
        for name in cases:
            self.r.publish("down:" + name, envs[name])
        self.assertTrue(harness.wait_until(lambda: msub.count() == 3,
                                           harness.DELIVERY_TIMEOUT), msub.summary())
        got = {m.topic: m.payload for m in msub.snapshot()}
        self.assertEqual(got, {"down/" + n: p for n, p in cases.items()})

        # not an envelope: dropped and counted
        self.r.publish("down:bad", b"not json")
        # an envelope past limits.max_payload (4096): 3100 binary bytes are
        # 4136 in base64
        pub.publish("up/big", os.urandom(3100), qos=1)
        self.assertTrue(b.wait_log("dropped message from Redis channel 'down:bad' "
                                   "on an unwrap route: not JSON",
                                   harness.DELIVERY_TIMEOUT))
        self.assertTrue(b.wait_log("its envelope is too large",
                                   harness.DELIVERY_TIMEOUT))
        self.assert_none({"down/bad": lambda: msub.count("down/bad"),
                          "up:big": lambda: rsub.count("up:big")},
                         "dropped messages")
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual((c["dropped_malformed"], c["dropped_too_large"]),
                         ("1", "1"), line)

    def test_stream_envelope_unwrap_and_rate(self):
        """Stream routes: XADD carries the envelope; entries read for MQTT
        are unwrapped and wait for the route's tokens (none dropped, even at
        QoS 0: an entry is durable); a malformed one is acknowledged and
        counted."""
        b = self.bridge([{"mqtt": "sup/+", "redis": "sup:*", "mode": "stream",
                          "direction": "mqtt_to_redis", "envelope": "json"},
                         {"mqtt": "sdown", "redis": "sdown", "mode": "stream",
                          "direction": "redis_to_mqtt", "unwrap": True,
                          "qos": 0, "rate": 50, "burst": 10}])
        pub = self.mqtt_client(self.mq.port, name="up")
        msub = self.mqtt_client(self.mq.port, "sdown", name="down")
        pub.publish("sup/a", b"\x00\xffbin", qos=1)
        self.assertTrue(harness.wait_until(lambda: self.r.xlen("sup:a") == 1,
                                           harness.DELIVERY_TIMEOUT))
        (_, fields), = self.r.xrange("sup:a")
        e = json.loads(fields[b"payload"])
        self.assertEqual((e["topic"], e["encoding"], base64.b64decode(e["payload"])),
                         ("sup/a", "base64", b"\x00\xffbin"), e)

        n = 100
        self.r.xadd("sdown", {"payload": b"not an envelope"})
        start = time.monotonic()
        for i in range(n):
            self.r.xadd("sdown", {"payload": json.dumps({"payload": "m%d" % i})})
        min_s = (n - 10) / 50.0  # 1.8 s
        self.assertTrue(harness.wait_until(lambda: msub.count() >= n,
                                           min_s + 10 * harness.SCALE),
                        "%d of %d" % (msub.count(), n))
        took = time.monotonic() - start
        sys.stderr.write("\n  measured: %d stream entries at 50/s burst 10 in "
                         "%.2f s (>= %.2f) ... " % (n, took, min_s))
        self.assertGreaterEqual(took, 0.9 * min_s, "not slowed down")
        self.assertEqual([m.payload for m in msub.snapshot()],
                         [b"m%d" % i for i in range(n)])
        group = "mqtt-redis-bridge:ro"
        self.assertTrue(harness.wait_until(
            lambda: self.r.xpending("sdown", group)["pending"] == 0,
            harness.DELIVERY_TIMEOUT))
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual((c["dropped_malformed"], c["dropped_rate_limited"]),
                         ("1", "0"), line)

    # ---- rate limits ----------------------------------------------------

    RATE, BURST, SECONDS, SEND_RATE = 200, 20, 5.0, 1000

    def paced(self, send):
        """Call send(i) at SEND_RATE for SECONDS (bounded); returns how
        many were sent and the seconds from the first to the last (more than
        SECONDS on a loaded machine: the limit is judged over that)."""
        n = int(self.SEND_RATE * self.SECONDS)
        start = time.monotonic()
        for i in range(n):
            due = start + i / self.SEND_RATE
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            send(i)
        return n, time.monotonic() - start

    def test_rate_limit_qos0_drops_within_10_percent(self):
        b = self.bridge([{"mqtt": "rl/+", "redis": "rl:*", "qos": 0,
                          "direction": "mqtt_to_redis", "rate": self.RATE,
                          "burst": self.BURST},
                         {"mqtt": "rd/+", "redis": "rd:*", "qos": 0,
                          "direction": "redis_to_mqtt", "rate": self.RATE,
                          "burst": self.BURST}])
        rsub = self.redis_sub(self.rs.port, patterns=["rl:*"])
        pub = self.mqtt_client(self.mq.port, name="fast")
        sent, took = self.paced(lambda i: pub.c.publish("rl/a", b"%d" % i, qos=0))
        time.sleep(harness.QUIET)
        want = self.RATE * took + self.BURST
        got = rsub.count()
        self.assertTrue(0.9 * want <= got <= 1.1 * want,
                        "MQTT->Redis: %d of %d delivered in %.2f s, want %d +-10%%"
                        % (got, sent, took, want))

        # Redis -> MQTT, the same
        msub = self.mqtt_client(self.mq.port, "rd/#", qos=0, name="slow")
        sent2, took2 = self.paced(lambda i: self.r.publish("rd:a", b"%d" % i))
        time.sleep(harness.QUIET)
        want2 = self.RATE * took2 + self.BURST
        got2 = msub.count()
        self.assertTrue(0.9 * want2 <= got2 <= 1.1 * want2,
                        "Redis->MQTT: %d of %d delivered in %.2f s, want %d +-10%%"
                        % (got2, sent2, took2, want2))
        sys.stderr.write("\n  measured: QoS 0 at %d/s: %d of %d in %.2f s (want "
                         "%d) and %d of %d in %.2f s (want %d) ... " % (
                             self.SEND_RATE, got, sent, took, want, got2, sent2,
                             took2, want2))
        self.assertTrue(b.wait_log("over the rate limit of route 'rl/+ > rl:* "
                                   "qos=0 rate=200 burst=20'", 1))
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual(int(c["dropped_rate_limited"]), sent + sent2 - got - got2,
                         line)
        # and per route and direction, in the route stats lines
        per_route = {}
        for l in b.lines():
            m = re.search(r"route stats \[\d+\] (\S+) .*rate_limited=(\d+)", l)
            if m:
                per_route[m.group(1)] = int(m.group(2))
        self.assertEqual(per_route, {"rl/+": sent - got, "rd/+": sent2 - got2},
                         b.tail())

    def test_rate_limit_qos1_slows_without_loss(self):
        n = 600
        b = self.bridge([{"mqtt": "rl/+", "redis": "rl:*", "qos": 1,
                          "direction": "mqtt_to_redis", "rate": self.RATE,
                          "burst": self.BURST},
                         {"mqtt": "rd/+", "redis": "rd:*", "qos": 1,
                          "direction": "redis_to_mqtt", "rate": self.RATE,
                          "burst": self.BURST}])
        min_s = (n - self.BURST) / self.RATE  # 2.9 s
        # MQTT -> Redis: the publisher sends as fast as its window allows
        rsub = self.redis_sub(self.rs.port, patterns=["rl:*"])
        pub = self.mqtt_client(self.mq.port, name="fast")
        start = time.monotonic()
        infos = [pub.c.publish("rl/a", b"%d" % i, qos=1) for i in range(n)]
        self.assertTrue(harness.wait_until(lambda: rsub.count() >= n,
                                           min_s + 10 * harness.SCALE),
                        "%d of %d in Redis" % (rsub.count(), n))
        took = time.monotonic() - start
        sys.stderr.write("\n  measured: %d QoS 1 MQTT->Redis in %.2f s (>= %.2f) "
                         % (n, took, min_s))
        self.assertGreaterEqual(took, 0.9 * min_s, "not slowed down")
        self.assertLessEqual(took, 1.5 * min_s + 2 * harness.SCALE, "too slow")
        self.assertEqual([m.data for m in rsub.snapshot()],
                         [b"%d" % i for i in range(n)], "lost or out of order")
        self.assertTrue(all(i.is_published() for i in infos))

        # Redis -> MQTT: waits in the queue for its tokens
        msub = self.mqtt_client(self.mq.port, "rd/#", qos=1, name="slow")
        start = time.monotonic()
        for i in range(n):
            self.r.publish("rd:a", b"%d" % i)
        self.assertTrue(harness.wait_until(lambda: msub.count() >= n,
                                           min_s + 10 * harness.SCALE),
                        "%d of %d in MQTT" % (msub.count(), n))
        took = time.monotonic() - start
        sys.stderr.write("\n  measured: %d QoS 1 Redis->MQTT in %.2f s (>= %.2f) "
                         "... " % (n, took, min_s))
        self.assertGreaterEqual(took, 0.9 * min_s, "not slowed down")
        self.assertLessEqual(took, 1.5 * min_s + 2 * harness.SCALE, "too slow")
        self.assertEqual([m.payload for m in msub.snapshot()],
                         [b"%d" % i for i in range(n)], "lost or out of order")
        b.stop()
        line, c = self.exit_stats(b)
        self.assertEqual(c["dropped_rate_limited"], "0", line)


if __name__ == "__main__":
    harness.main()
