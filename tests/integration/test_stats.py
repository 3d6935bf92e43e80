#!/usr/bin/python3
"""Statistics: the JSON document on bridge/<id>/stats (retained) and in the
Redis hash bridge:<id>:stats (TTL, set "bridges"), exact per-route counts
after a known number of messages, stats_interval 0 writes nothing, SIGUSR1
logs the per-route lines once, a clean stop reports "stopped", and the
`stats` subcommand over two bridges (table, --json, --watch, channels with
their subscriber counts)."""

import json
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique

ROUTE_IN = "a/+ > a:*"    # MQTT -> Redis only
ROUTE_OUT = "b/+ < b:*"   # Redis -> MQTT only
M2R_N, R2M_N = 10, 7


def has_stats_cmd():
    """Built WITH_STATS_CMD? (--version says "stats command: yes")."""
    return b"stats command: yes" in harness.run_bridge(["--version"]).stdout


def stats_cmd(*args, timeout=15):
    return subprocess.run([harness.BRIDGE, "stats"] + list(args),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout * harness.SCALE)


class StatsTest(ServersTestCase):

    def config(self, bridge_id, mq, interval, routes, **extra):
        dirs = {"<>": "both", ">": "mqtt_to_redis", "<": "redis_to_mqtt"}
        routes = [r if isinstance(r, dict) else
                  {"mqtt": r.split()[0], "redis": r.split()[2],
                   "direction": dirs[r.split()[1]]} for r in routes]
        cfg = {"id": bridge_id, "mqtt": {"url": mq.url},
               "redis": {"url": self.rs.url}, "stats_interval": interval,
               "routes": routes}
        cfg.update(extra)
        return self.write_config(cfg, name=bridge_id + ".json")

    def retained_doc(self, bridge_id, pred, timeout=None, mq=None):
        """Poll (bounded) with fresh subscribers until the retained document
        on bridge/<id>/stats satisfies pred; returns the last one seen."""
        m = self.retained((mq or self.mq).port, "bridge/%s/stats" % bridge_id,
                          lambda m: pred(json.loads(m.payload)),
                          timeout or 10 * harness.SCALE, interval=0.2, wait=0.5)
        return json.loads(m.payload) if m is not None else None

    def test_counts_in_json_and_redis(self):
        """10 MQTT->Redis messages on one route, 7 Redis->MQTT on another, one
        too large and one unmappable: exact counts per route and in the
        totals, latency counted once per message over all reports."""
        routes = [ROUTE_IN, ROUTE_OUT]
        cfg = self.config("st1", self.mq, 2,
                          [{"mqtt": "a/+", "redis": "a:*",
                            "direction": "mqtt_to_redis"},
                           {"mqtt": "b/+", "redis": "b:*",
                            "direction": "redis_to_mqtt"}],
                          limits={"max_payload": 100})
        # every report as it is published, to add up the latency counts
        reports = self.mqtt_client(self.mq.port, "bridge/st1/stats", name="rep")
        t0, wall0 = time.monotonic(), time.time()
        bridge = self.start_bridge(None, None, "-c", cfg)
        rsub = self.redis_sub(self.rs.port, patterns=["a:*"])
        msub = self.mqtt_client(self.mq.port, "b/+", name="msub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        r = self.redis_client(self.rs.port)
        for i in range(M2R_N):
            pub.publish("a/x", b"m2r-%02d" % i)          # 6 bytes each
        pub.publish("a/x", b"L" * 200)                  # too large
        for i in range(R2M_N):
            r.publish("b:y", b"r2m-%03d" % i)           # 7 bytes each
        r.publish("b:x/y", b"unmappable")               # b/x/y: not b/+
        self.assertTrue(harness.wait_until(
            lambda: rsub.count() == M2R_N and msub.count() == R2M_N,
            harness.DELIVERY_TIMEOUT), "delivered: %d to Redis, %d to MQTT"
            % (rsub.count(), msub.count()))

        def complete(d):
            t = d["totals"]
            return (d["status"] == "running" and t["redis_out"] == M2R_N and
                    t["mqtt_out"] == R2M_N and t["dropped_unmappable"] == 1)
        doc = self.retained_doc("st1", complete)
        self.assertIsNotNone(doc, "no retained stats document")
        self.assertTrue(complete(doc), json.dumps(doc, indent=1))
        self.assertEqual((doc["id"], doc["interval_s"]), ("st1", 2))
        # uptime: seconds since the start, not more than have passed; the
        # same as the document's time - started (both whole seconds)
        since_start = time.monotonic() - t0
        self.assertTrue(0 <= doc["uptime_s"] <= since_start,
                        "uptime_s %r, %.1f s after starting the bridge"
                        % (doc["uptime_s"], since_start))
        self.assertTrue(int(wall0) <= doc["started"] <= doc["time"] <= time.time(),
                        "started %r, time %r: between %.0f and now"
                        % (doc["started"], doc["time"], wall0))
        self.assertLessEqual(abs(doc["time"] - doc["started"] - doc["uptime_s"]), 1,
                             "uptime_s %r, time - started %r"
                             % (doc["uptime_s"], doc["time"] - doc["started"]))
        self.assertTrue(doc["mqtt"]["connected"] and doc["redis"]["connected"])
        self.assertNotIn("***", doc["redis"]["url"])  # no password to hide here
        t = doc["totals"]
        for k, v in {"mqtt_in": M2R_N + 1, "redis_out": M2R_N,
                     "redis_in": R2M_N + 1, "mqtt_out": R2M_N,
                     "dropped_too_large": 1, "dropped_unmappable": 1,
                     "dropped_queue_full": 0, "dropped_send_failed": 0,
                     "dropped_rate_limited": 0, "queued_to_redis": 0,
                     "queued_to_mqtt": 0}.items():
            self.assertEqual(t[k], v, "totals.%s in %s" % (k, json.dumps(t)))
        self.assertEqual([x["route"] for x in doc["routes"]],
                         [r + " qos=1" for r in routes])
        a, b = doc["routes"]
        self.assertEqual((a["mqtt"], a["redis"], a["mode"], a["direction"]),
                         ("a/+", "a:*", "pubsub", "mqtt_to_redis"))
        self.assertNotIn("redis_to_mqtt", a)
        self.assertNotIn("mqtt_to_redis", b)
        m2r, r2m = a["mqtt_to_redis"], b["redis_to_mqtt"]
        self.assertEqual({k: m2r[k] for k in ("in", "out", "bytes_in", "bytes_out")},
                         {"in": M2R_N, "out": M2R_N, "bytes_in": 6 * M2R_N,
                          "bytes_out": 6 * M2R_N})
        self.assertEqual(m2r["dropped"], {"too_large": 1, "unmappable": 0,
                                          "queue_full": 0, "rate_limited": 0,
                                          "send_failed": 0})
        self.assertEqual({k: r2m[k] for k in ("in", "out", "bytes_in", "bytes_out")},
                         {"in": R2M_N, "out": R2M_N, "bytes_in": 7 * R2M_N,
                          "bytes_out": 7 * R2M_N})
        self.assertEqual(r2m["dropped"], {"too_large": 0, "unmappable": 1,
                                          "queue_full": 0, "rate_limited": 0,
                                          "send_failed": 0})

        # latency: each message counted once, in the report of its interval
        def lat_sum():
            n = {"m2r": 0, "r2m": 0}
            for m in reports.snapshot():
                if m.topic != "bridge/st1/stats":
                    continue
                d = json.loads(m.payload)
                for x in d["routes"]:
                    if "mqtt_to_redis" in x:
                        n["m2r"] += x["mqtt_to_redis"]["latency"]["count"]
                    if "redis_to_mqtt" in x:
                        n["r2m"] += x["redis_to_mqtt"]["latency"]["count"]
            return n
        want = {"m2r": M2R_N, "r2m": R2M_N}
        harness.wait_until(lambda: lat_sum() == want, 10 * harness.SCALE, 0.2)
        self.assertEqual(lat_sum(), want, "latency counts over all reports")
        for m in reports.snapshot():
            d = json.loads(m.payload)
            for side in ("mqtt_to_redis", "redis_to_mqtt"):
                lat = d["latency"][side]
                if lat["count"]:
                    self.assertTrue(0 < lat["p50_us"] <= lat["p99_us"] < 5e6,
                                    "latency %s: %r" % (side, lat))

        # the Redis side: hash, TTL, set membership
        h = {k.decode(): v.decode() for k, v in r.hgetall("bridge:st1:stats").items()}
        for k in ("id", "status", "version", "started", "uptime_s", "updated",
                  "mqtt", "redis", "mqtt_in", "redis_out", "redis_in",
                  "mqtt_out", "dropped", "json"):
            self.assertIn(k, h, "field %s of bridge:st1:stats" % k)
        self.assertEqual((h["id"], h["status"], h["mqtt"], h["redis"]),
                         ("st1", "running", "up", "up"))
        self.assertEqual((h["mqtt_in"], h["redis_out"], h["redis_in"],
                          h["mqtt_out"], h["dropped"]),
                         (str(M2R_N + 1), str(M2R_N), str(R2M_N + 1),
                          str(R2M_N), "2"))
        self.assertEqual(json.loads(h["json"])["totals"]["redis_out"], M2R_N)
        since_start = time.monotonic() - t0
        self.assertTrue(0 <= int(h["uptime_s"]) <= since_start and
                        int(wall0) <= int(h["started"]) <= int(h["updated"]) <= time.time(),
                        "uptime_s %s, started %s, updated %s; %.1f s after "
                        "starting the bridge at %.0f" % (h["uptime_s"], h["started"],
                                                         h["updated"], since_start, wall0))
        ttl = r.ttl("bridge:st1:stats")
        self.assertTrue(20 <= ttl <= 30, "TTL %r (3 x 2 s, at least 30 s)" % ttl)
        self.assertTrue(r.sismember("bridges", "st1"))
        bridge.stop()

    def test_stream_route_counts(self):
        """A stream route both ways: XADD confirmed counts MQTT->Redis, an
        entry published to MQTT (stream-id context) counts Redis->MQTT."""
        cfg = self.config("ss", self.mq, 1,
                          [{"mqtt": "s/+", "redis": "s:*", "mode": "stream"}],
                          redis={"url": self.rs.url, "scan_interval": 1})
        bridge = self.start_bridge(None, None, "-c", cfg)
        msub = self.mqtt_client(self.mq.port, "s/+", name="msub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        r = self.redis_client(self.rs.port)
        for i in range(3):
            pub.publish("s/in", b"x%d" % i)
        self.assertTrue(harness.wait_until(lambda: r.xlen("s:in") == 3,
                                           harness.DELIVERY_TIMEOUT))
        r.xadd("s:out", {"payload": b"from-redis"})
        # a new key of a pattern is found by the next scan (1 s)
        self.assertIsNotNone(msub.wait_for(lambda m: m.payload == b"from-redis",
                                           harness.DELIVERY_TIMEOUT + 2))

        def done(d):
            x = d["routes"][0]
            return (x["mqtt_to_redis"]["out"], x["redis_to_mqtt"]["out"]) == (3, 1)
        doc = self.retained_doc("ss", done)
        self.assertTrue(doc and done(doc), json.dumps(doc))
        x = doc["routes"][0]
        self.assertEqual((x["mode"], x["mqtt_to_redis"]["in"],
                          x["mqtt_to_redis"]["bytes_out"], x["redis_to_mqtt"]["in"],
                          x["redis_to_mqtt"]["bytes_out"]), ("stream", 3, 6, 1, 10))
        bridge.stop()

    def test_reconnects_and_last_error(self):
        cfg = self.config("rc", self.mq, 1, [ROUTE_IN],
                          reconnect={"min_ms": 100, "max_ms": 500})
        bridge = self.start_bridge(None, None, "-c", cfg)
        mark = bridge.mark()
        self.rs.stop()
        self.assert_log(bridge, harness.LOST_RE, since=mark, what="Redis down")
        self.rs.start()  # same port
        self.assert_log(bridge, re.compile(r"redis: reconnected"), since=mark,
                        timeout=harness.RECOVERY_TIMEOUT)
        # the publisher came back (the idle ingest connection notices only
        # when it next sends; no subscriber for an MQTT->Redis route)
        # one restart: the publisher reconnected once (failed attempts are
        # not reconnects; this route has no subscriber or reader)
        doc = self.retained_doc("rc", lambda d: d["redis"]["reconnects"] >= 1 and
                                d["redis"]["connected"])
        self.assertIsNotNone(doc)
        self.assertEqual((doc["redis"]["reconnects"], doc["redis"]["connected"]),
                         (1, True), json.dumps(doc["redis"]))
        self.assertRegex(doc["redis"]["last_error"], r"closed|reset|refused")
        self.assertEqual((doc["mqtt"]["reconnects"], doc["mqtt"]["last_error"]), (0, ""))
        bridge.stop()

    def test_message_through_two_routes_counts_in_each(self):
        """One message, two routes, two targets: each route counts it, and
        each reply/completion is counted for its own route."""
        routes = ["m/+ > m1:*", "m/+ > m2:*", "n/+ < nn:*", "o/+ < nn:*"]
        cfg = self.config("tw", self.mq, 0, routes)
        bridge = self.start_bridge(None, None, "-c", cfg)
        rsub = self.redis_sub(self.rs.port, patterns=["m1:*", "m2:*"])
        msub = self.mqtt_client(self.mq.port, "n/+", "o/+", name="msub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        for i in range(2):
            pub.publish("m/x", b"abc")
        self.redis_client(self.rs.port).publish("nn:y", b"hello")
        self.assertTrue(harness.wait_until(
            lambda: rsub.count() == 4 and msub.count() == 2,
            harness.DELIVERY_TIMEOUT), "%r %r" % (rsub.summary(), msub.summary()))
        want = {0: ("mqtt_to_redis", "2", "2", "6", "6"),
                1: ("mqtt_to_redis", "2", "2", "6", "6"),
                2: ("redis_to_mqtt", "1", "1", "5", "5"),
                3: ("redis_to_mqtt", "1", "1", "5", "5")}
        # "out" counts Paho's completion (the broker's PUBACK), which may
        # come after the subscriber has the message: ask again (bounded)
        got, lines = None, []
        deadline = time.monotonic() + harness.DELIVERY_TIMEOUT
        for _ in range(50):
            mark = bridge.mark()
            bridge.proc.send_signal(signal.SIGUSR1)
            self.assert_log(bridge, re.compile(r"route stats \[3\]"), since=mark)
            lines = [harness.log_message(l) for l in bridge.lines(mark)]
            got = {}
            for l in lines:
                m = re.match(r"route stats \[(\d)\] .*: (\w+): in=(\d+) out=(\d+) "
                             r"bytes_in=(\d+) bytes_out=(\d+)", l)
                if m:
                    got[int(m.group(1))] = m.group(2, 3, 4, 5, 6)
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(got, want, "\n".join(lines))
        bridge.stop()

    def test_interval_zero_writes_nothing(self):
        cfg = self.config("st0", self.mq, 0, [ROUTE_IN])
        bridge = self.start_bridge(None, None, "-c", cfg)
        watcher = self.mqtt_client(self.mq.port, "bridge/st0/stats", name="w")
        pub = self.mqtt_client(self.mq.port, name="pub")
        for i in range(3):
            pub.publish("a/x", b"x%d" % i)
        time.sleep(2.5)
        bridge.stop()
        time.sleep(harness.QUIET)
        r = self.redis_client(self.rs.port)
        self.assertEqual(r.exists("bridge:st0:stats"), 0)
        self.assertFalse(r.sismember("bridges", "st0"))
        self.assertEqual(watcher.count("bridge/st0/stats"), 0,
                         "stats published with stats_interval 0")

    def test_sigusr1_logs_route_lines_once(self):
        cfg = self.config("su", self.mq, 0, [ROUTE_IN, ROUTE_OUT])
        bridge = self.start_bridge(None, None, "-c", cfg)
        pub = self.mqtt_client(self.mq.port, name="pub")
        rsub = self.redis_sub(self.rs.port, patterns=["a:*"])
        for i in range(3):
            pub.publish("a/x", b"x%d" % i)
        harness.wait_until(lambda: rsub.count() == 3, harness.DELIVERY_TIMEOUT)
        mark = bridge.mark()
        bridge.proc.send_signal(signal.SIGUSR1)
        self.assert_log(bridge, re.compile(r"route stats \[1\]"), since=mark,
                        what="per-route stats after SIGUSR1")
        time.sleep(harness.QUIET)
        lines = [harness.log_message(l) for l in bridge.lines(mark)]
        r0 = [l for l in lines if l.startswith("route stats [0]")]
        r1 = [l for l in lines if l.startswith("route stats [1]")]
        totals = [l for l in lines if l.startswith("stats:")]
        self.assertEqual((len(totals), len(r0), len(r1)), (1, 1, 1), "\n".join(lines))
        self.assertEqual("route stats [0] %s qos=1: mqtt_to_redis: in=3 out=3 "
                         "bytes_in=6 bytes_out=6 too_large=0 unmappable=0 "
                         "queue_full=0 rate_limited=0 send_failed=0" % ROUTE_IN,
                         r0[0])
        self.assertNotIn("redis_to_mqtt", r0[0])
        self.assertIn("redis_to_mqtt: in=0 out=0", r1[0])
        bridge.stop()

    def test_stop_reports_stopped(self):
        cfg = self.config("sp", self.mq, 30, [ROUTE_IN])
        bridge = self.start_bridge(None, None, "-c", cfg)
        r = self.redis_client(self.rs.port)
        self.assertTrue(harness.wait_until(
            lambda: r.hget("bridge:sp:stats", "status") == b"running",
            harness.DELIVERY_TIMEOUT), "first report at ready")
        rsub = self.redis_sub(self.rs.port, patterns=["a:*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        pub.publish("a/x", b"one")
        # the broker's PUBACK says nothing about the bridge: wait for Redis
        self.assertTrue(harness.wait_until(lambda: rsub.count() == 1,
                                           harness.DELIVERY_TIMEOUT))
        bridge.stop()
        self.assertEqual(r.hget("bridge:sp:stats", "status"), b"stopped")
        d = json.loads(r.hget("bridge:sp:stats", "json"))
        self.assertEqual((d["status"], d["totals"]["redis_out"]), ("stopped", 1))
        self.assertTrue(0 < r.ttl("bridge:sp:stats") <= 90)
        doc = self.retained_doc("sp", lambda d: d["status"] == "stopped")
        self.assertEqual(doc and doc["status"], "stopped")

    def test_stats_command_two_bridges(self):
        """Two bridges (two brokers, one Redis): the table and --json list
        both with their counts; a channel with 3 Redis subscribers shows 3."""
        if not has_stats_cmd():
            self.skipTest("built without the stats subcommand (WITH_STATS_CMD=OFF)")
        mq2 = self.start_mosquitto()
        routes = ["w/+ <> watch:*"]
        b1 = self.start_bridge(None, None, "-c",
                               self.config("alpha", self.mq, 1, routes), name="alpha")
        b2 = self.start_bridge(None, None, "-c",
                               self.config("beta", mq2, 1, routes), name="beta")
        subs = [self.redis_sub(self.rs.port, channels=["watch:one"]) for _ in range(3)]
        p1 = self.mqtt_client(self.mq.port, name="p1")
        p2 = self.mqtt_client(mq2.port, name="p2")
        for i in range(4):
            p1.publish("w/one", b"a%d" % i)
        for i in range(2):
            p2.publish("w/two", b"b%d" % i)
        harness.wait_until(lambda: subs[0].count() == 4, harness.DELIVERY_TIMEOUT)
        r = self.redis_client(self.rs.port)

        def reported():
            v = [r.hget("bridge:%s:stats" % i, "redis_out") for i in ("alpha", "beta")]
            return v == [b"4", b"2"]
        self.assertTrue(harness.wait_until(reported, 10 * harness.SCALE, 0.2),
                        "both bridges reported their counts")

        out = stats_cmd("--redis", self.rs.url)
        text = out.stdout.decode()
        self.assertEqual(out.returncode, 0, out.stderr.decode() + text)
        rows = {l.split()[0]: l.split() for l in text.splitlines() if l.strip()}
        self.assertIn("BRIDGE", rows, text)
        hdr = rows["BRIDGE"]
        for bid, n in (("alpha", "4"), ("beta", "2")):
            self.assertIn(bid, rows, text)
            row = dict(zip(hdr, rows[bid]))
            self.assertEqual((row["STATUS"], row["MQTT_IN"], row["REDIS_OUT"],
                              row["DROPPED"]), ("running", n, n, "0"), text)
        self.assertIn("channels matching 'watch:*': 1 active", text)
        self.assertRegex(text, r"\n  watch:one +3 subscriber\(s\)\n")

        out = stats_cmd("--redis", self.rs.url, "--json")
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        doc = json.loads(out.stdout)
        by_id = {x["id"]: x for x in doc["bridges"]}
        self.assertEqual(sorted(by_id), ["alpha", "beta"])
        self.assertEqual(by_id["alpha"]["redis_out"], 4)
        self.assertEqual(by_id["beta"]["stats"]["totals"]["redis_out"], 2)
        self.assertEqual(doc["patterns"], [{"pattern": "watch:*", "total": 1,
                                            "channels": [{"name": "watch:one",
                                                          "subscribers": 3}]}])

        # --watch redraws until SIGINT
        w = subprocess.Popen([harness.BRIDGE, "stats", "--redis", self.rs.url,
                              "--watch", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        time.sleep(2.5)
        w.send_signal(signal.SIGINT)
        try:
            wout, werr = w.communicate(timeout=5 * harness.SCALE)
        except subprocess.TimeoutExpired:
            w.kill()
            w.communicate()
            self.fail("stats --watch did not stop on SIGINT")
        self.assertEqual(w.returncode, 0, werr.decode())
        self.assertGreaterEqual(wout.decode().count("BRIDGE "), 2, wout.decode())

        # a stopped bridge says so
        b2.stop()
        out = stats_cmd("--redis", self.rs.url)
        self.assertRegex(out.stdout.decode(), r"\nbeta +stopped ")
        b1.stop()

    def test_stats_command_errors(self):
        if not has_stats_cmd():
            self.skipTest("built without the stats subcommand (WITH_STATS_CMD=OFF)")
        port = harness.free_port()
        out = stats_cmd("--redis", "redis://127.0.0.1:%d" % port)
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stdout, b"")
        self.assertEqual(out.stderr.decode(),
                         "mqtt-redis-bridge stats: cannot connect to Redis "
                         "redis://127.0.0.1:%d: Connection refused\n" % port)
        out = stats_cmd("--watch", "0")
        self.assertEqual(out.returncode, 2)
        self.assertIn("--watch '0'", out.stderr.decode())
        out = stats_cmd("--help")
        self.assertEqual(out.returncode, 0)
        self.assertIn(b"--watch N", out.stdout)
        out = stats_cmd("--redis", self.rs.url)
        self.assertEqual(out.returncode, 0)
        self.assertIn(b"no bridge reports to this Redis", out.stdout)

    def test_without_stats_command(self):
        if has_stats_cmd():
            self.skipTest("built with the stats subcommand")
        out = stats_cmd("--redis", self.rs.url)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"built without the stats subcommand", out.stderr)


if __name__ == "__main__":
    harness.main()
