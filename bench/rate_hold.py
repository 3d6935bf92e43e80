#!/usr/bin/python3
"""Measure what a rate-limited QoS 1 MQTT->Redis route costs the other
direction (README "Route options", rate): while such a route is held over
its rate, Paho's receive thread waits in the message callback holding the
MQTT library's lock, so the bridge's Redis->MQTT publishes wait too.

    bench/rate_hold.py [--bridge build/mqtt-redis-bridge] [--rate 50]

Starts its own redis-server and mosquitto on free loopback ports in a temp
dir (the integration tests' harness), a bridge with route A `flood/+ >
flood:*` (QoS 1, rate R, burst 1) and route B `news < news`, then prints the
latency of 40 Redis PUBLISH news -> MQTT subscriber, one every 50 ms: first
without traffic on A, then with 4 x R QoS 1 messages queued on A (about 4 s
of work at R/s). Everything is stopped by PID at the end."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.dont_write_bytecode = True
import harness  # noqa: E402
import redis as redislib  # noqa: E402

SAMPLES = 40


def sample(r, sub, label):
    lat = []
    for i in range(SAMPLES):
        p = ("%d-%d" % (i, time.monotonic_ns())).encode()
        t0 = time.monotonic()
        r.publish("news", p)
        ok = harness.wait_until(lambda: sub.count("news", p) >= 1, 5, 0.0005)
        lat.append((time.monotonic() - t0) * 1000 if ok else float("inf"))
        time.sleep(0.05)
    lat.sort()
    print("%-34s n=%d  p50 %7.2f ms  p90 %7.2f ms  max %7.2f ms"
          % (label, SAMPLES, lat[SAMPLES // 2], lat[int(SAMPLES * 0.9)], lat[-1]),
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bridge", default=os.path.join(ROOT, "build", "mqtt-redis-bridge"))
    ap.add_argument("--rate", type=int, default=50)
    a = ap.parse_args()
    if not 1 <= a.rate <= 5000:
        ap.error("--rate: 1 to 5000")
    wd = tempfile.mkdtemp(prefix="mrb-ratehold-")
    rs = harness.RedisServer(wd)
    mq = harness.Mosquitto(wd)
    br = None
    clients = []
    try:
        rs.start()
        mq.start()
        cfg = os.path.join(wd, "bridge.json")
        with open(cfg, "w") as f:
            json.dump({"id": "ratehold", "log_level": "warning",
                       "mqtt": {"url": mq.url}, "redis": {"url": rs.url},
                       "routes": [{"mqtt": "flood/+", "redis": "flood:*",
                                   "direction": "mqtt_to_redis", "qos": 1,
                                   "rate": a.rate, "burst": 1},
                                  {"mqtt": "news", "redis": "news",
                                   "direction": "redis_to_mqtt", "qos": 1}]}, f)
        with open(os.path.join(wd, "bridge.log"), "wb") as log:
            br = subprocess.Popen([a.bridge, "-c", cfg], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT)
        r = redislib.Redis(host="127.0.0.1", port=rs.port)
        sub = harness.MqttClient(mq.port, name="sub")
        clients.append(sub)
        sub.connect()
        sub.subscribe("news")
        # ready: a message crosses B
        if not harness.wait_until(lambda: r.publish("news", b"probe") and
                                  sub.count("news", b"probe") >= 1, 10, 0.1):
            sys.exit("bridge not ready in 10 s (see %s/bridge.log)" % wd)
        sample(r, sub, "B, A idle")
        pub = harness.MqttClient(mq.port, name="pub")
        clients.append(pub)
        pub.connect()
        for i in range(a.rate * 4):
            pub.c.publish("flood/x", b"f%d" % i, qos=1)
        time.sleep(0.3)
        sample(r, sub, "B, A held at %d/s (QoS 1)" % a.rate)
    finally:
        for c in clients:
            c.close()
        harness.stop_process(br)
        mq.stop()
        rs.stop()
        shutil.rmtree(wd, ignore_errors=True)


if __name__ == "__main__":
    main()
