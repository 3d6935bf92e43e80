#!/usr/bin/python3
"""Footprint benchmark of mqtt-redis-bridge (issue "Boards", docs/FOOTPRINT.md).

For each binary given as NAME=PATH[@EMULATOR] it prints:
  - the stripped size of the binary;
  - for native binaries (no emulator), with one subscription each side
    connected: wake-ups per second over --idle seconds (voluntary and
    involuntary context switches of all threads, per thread too), then
    VmRSS, VmHWM, private memory (Private_Clean + Private_Dirty of
    /proc/PID/smaps_rollup; Private_Dirty alone in parentheses) and the
    thread count at the end of that idle window;
    the peak private memory while forwarding --rate msg/s each way for --load
    seconds, and private memory --settle seconds after the load stopped.
Under an emulator (qemu-user) the process is qemu's: its memory, threads and
wake-ups are the emulator's, so only the binary size is printed for those.

Servers: its own redis-server and mosquitto on free 127.0.0.1 ports in a
temporary directory (tests/integration/harness.py), stopped by PID.
Every loop is bounded in count and time.

    scripts/footprint.py [--idle 30] [--load 20] [--rate 5000] \\
        native=build/boards/x86_64/mqtt-redis-bridge tls=... static=...
scripts/footprint.sh builds the usual variants and runs this on them.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import redis  # noqa: E402

STATS_RE = re.compile(r"stats: (.*)")


def stripped_size(path, strip):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "s")
        subprocess.run([strip, "-o", out, path], check=True, timeout=60)
        return os.path.getsize(out)


def status_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def private_kb(pid, keys=("Private_Clean:", "Private_Dirty:")):
    """Private memory, kB. Private_Clean counts file pages (code of the
    binary and of shared libraries) that no other process maps right now, so
    it drops when another process maps the same libraries; Private_Dirty
    (heap, stacks, written data) does not depend on other processes."""
    total = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith(keys):
                total += int(line.split()[1])
    return total


def dirty_kb(pid):
    return private_kb(pid, ("Private_Dirty:",))


def threads(pid):
    """{tid: (name, voluntary switches, involuntary switches)}"""
    out = {}
    base = "/proc/%d/task" % pid
    for tid in os.listdir(base):
        try:
            with open(os.path.join(base, tid, "comm")) as f:
                name = f.read().strip()
            vol = invol = 0
            with open(os.path.join(base, tid, "status")) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol = int(line.split()[1])
            out[int(tid)] = (name, vol, invol)
        except FileNotFoundError:
            pass  # thread ended meanwhile
    return out


def stats(bridge, timeout=5):
    """Ask for the counters (SIGUSR1), return the newest stats line as a dict."""
    mark = bridge.mark()
    bridge.proc.send_signal(signal.SIGUSR1)
    bridge.wait_log("stats:", timeout, since=mark)
    found = [STATS_RE.search(l) for l in bridge.lines(mark)]
    found = [m for m in found if m]
    if not found:
        return {}
    return dict(kv.split("=", 1) for kv in found[-1].group(1).split())


class Load:
    """Publishes `rate` msg/s into MQTT (topic user/load, QoS 0) and `rate`
    msg/s into Redis (channel news) for `seconds`, in 10 ms batches."""

    def __init__(self, mqtt_port, redis_port, rate, seconds, payload=b"x" * 64):
        self.rate, self.seconds, self.payload = rate, seconds, payload
        self.mqtt = mqtt.Client(client_id=harness.unique("load"),
                                protocol=mqtt.MQTTv311)
        self.mqtt.max_queued_messages_set(0)
        self.mqtt.connect("127.0.0.1", mqtt_port)
        self.mqtt.loop_start()
        self.redis = redis.Redis(port=redis_port)
        self.sent_mqtt = self.sent_redis = 0
        self.late = 0.0

    def run(self):
        batch = max(1, self.rate // 100)
        start = time.monotonic()
        ticks = int(self.seconds * 100)
        for i in range(ticks):
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(batch):
                pipe.publish("news", self.payload)
            pipe.execute()
            self.sent_redis += batch
            for _ in range(batch):
                self.mqtt.publish("user/load", self.payload, qos=0)
            self.sent_mqtt += batch
            delay = start + (i + 1) / 100.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.elapsed = time.monotonic() - start

    def close(self):
        self.mqtt.loop_stop()
        self.mqtt.disconnect()
        self.redis.close()


def measure(name, path, emulator, strip, args, work):
    row = {"name": name, "size": stripped_size(path, strip)}
    if emulator:
        return row
    rs = harness.RedisServer(work).start()
    mq = harness.Mosquitto(work).start()
    bridge = None
    try:
        harness.BRIDGE = path
        bridge = harness.Bridge(work, [
            "--mqtt", mq.url, "--redis", rs.url, "--id", harness.unique("fp"),
            "--route", "user/+ > user:*", "--route", "news < news"],
            name=name)
        bridge.wait_ready(timeout=15)
        pid = bridge.proc.pid
        time.sleep(2)  # let start-up settle
        t0 = threads(pid)
        time.sleep(args.idle)
        t1 = threads(pid)
        # Idle memory: at the end of the idle window.
        row["threads"] = len(t1)
        row["rss"] = status_kb(pid, "VmRSS")
        row["hwm"] = status_kb(pid, "VmHWM")
        row["private"] = private_kb(pid)
        row["dirty"] = dirty_kb(pid)
        per = []
        total = 0
        for tid, (tname, vol, invol) in t1.items():
            v0 = t0.get(tid, (tname, 0, 0))
            n = (vol - v0[1]) + (invol - v0[2])
            total += n
            per.append("%s%s=%.2f" % (tname, "(main)" if tid == pid else "",
                                      n / args.idle))
        row["wakeups"] = total / args.idle
        row["per_thread"] = " ".join(sorted(per))

        load = Load(mq.port, rs.port, args.rate, args.load)
        peak = [0, 0]
        stop = threading.Event()

        def sample():
            for _ in range(int(args.load * 10) + 100):
                if stop.is_set():
                    return
                peak[0] = max(peak[0], private_kb(pid))
                peak[1] = max(peak[1], dirty_kb(pid))
                time.sleep(0.1)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load.run()
        stop.set()
        sampler.join(5)
        load.close()
        row["load_private"] = peak[0]
        row["load_dirty"] = peak[1]
        row["load_hwm"] = status_kb(pid, "VmHWM")
        row["achieved"] = (load.sent_mqtt / load.elapsed,
                           load.sent_redis / load.elapsed)
        time.sleep(args.settle)
        row["after_private"] = private_kb(pid)
        row["after_dirty"] = dirty_kb(pid)
        row["stats"] = stats(bridge)
        row["sent"] = (load.sent_mqtt, load.sent_redis)
        rc, in_time = bridge.stop()
        row["exit"] = rc
    finally:
        if bridge and bridge.alive():
            bridge.kill()
        mq.stop()
        rs.stop()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin", nargs="+", help="NAME=PATH[@EMULATOR]")
    ap.add_argument("--idle", type=float, default=30, help="idle wake-up window, s")
    ap.add_argument("--load", type=float, default=20, help="load duration, s")
    ap.add_argument("--rate", type=int, default=5000, help="msg/s each way")
    ap.add_argument("--settle", type=float, default=10, help="wait after load, s")
    args = ap.parse_args()

    print("footprint of mqtt-redis-bridge, %s, %s, %s" % (
        time.strftime("%Y-%m-%d"), os.uname().machine,
        subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()))
    rows = []
    work = tempfile.mkdtemp(prefix="mrb-footprint-")
    try:
        for spec in args.bin:
            name, path = spec.split("=", 1)
            emulator = None
            if "@" in path:
                path, emulator = path.split("@", 1)
            strip = "strip"
            if emulator:
                triple = {"qemu-aarch64": "aarch64-linux-gnu",
                          "qemu-arm": "arm-linux-gnueabihf"}[emulator]
                strip = triple + "-strip"
            print("measuring %s (%s)..." % (name, path), flush=True)
            rows.append(measure(name, path, emulator, strip, args, work))
    finally:
        subprocess.run(["rm", "-rf", work], check=False)

    print()
    print("| build | stripped binary | idle VmRSS | idle VmHWM | idle private "
          "(dirty) | threads | idle wake-ups/s | private under load, peak "
          "(dirty) | private %g s after (dirty) | VmHWM after load |"
          % args.settle)
    print("|---|---|---|---|---|---|---|---|---|---|")
    kb = lambda v: "%.2f MB" % (v / 1024.0) if isinstance(v, int) else "-"
    for r in rows:
        size = "%.1f KB" % (r["size"] / 1024.0)
        if "rss" not in r:
            print("| %s | %s | - | - | - | - | - | - | - | - |" % (r["name"], size))
            continue
        print("| %s | %s | %s | %s | %s (%s) | %d | %.2f | %s (%s) | %s (%s) | %s |" % (
            r["name"], size, kb(r["rss"]), kb(r["hwm"]), kb(r["private"]),
            kb(r["dirty"]), r["threads"], r["wakeups"], kb(r["load_private"]),
            kb(r["load_dirty"]), kb(r["after_private"]), kb(r["after_dirty"]),
            kb(r["load_hwm"])))
    print()
    for r in rows:
        if "rss" in r:
            s = r["stats"]
            print("%s: wake-ups/s per thread: %s" % (r["name"], r["per_thread"]))
            print("%s: load sent %d to MQTT, %d to Redis (%.0f / %.0f msg/s); "
                  "bridge counted mqtt_in=%s redis_out=%s redis_in=%s mqtt_out=%s; "
                  "exit %s" % (r["name"], r["sent"][0], r["sent"][1],
                               r["achieved"][0], r["achieved"][1],
                               s.get("mqtt_in"), s.get("redis_out"),
                               s.get("redis_in"), s.get("mqtt_out"), r["exit"]))


if __name__ == "__main__":
    main()
