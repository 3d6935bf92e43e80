#!/usr/bin/env python3
"""bench/run.py - the bridge against the direct paths and two peers, in one run.

Starts a fresh redis-server and mosquitto (set_tcp_nodelay true) on free
loopback ports in a temporary directory (through tests/integration/harness.py,
the integration tests' servers), starts the bridge, and runs the load
generator (bench/mrb_bench.c) for each measurement, bridge and direct side by
side: closed-loop throughput at QoS 0 and 1, latency at a fixed rate, an
open-loop burst, fan-out to many subscribers, the bridge's CPU time per message
and memory, and a scale case (1,000 routes, 100,000 channels). Beside them,
each on its own fresh servers, the peers: the Node peer
(bench/peer-node/peer.js: mqtt.js + ioredis, the bridge's routes) and
mosquitto's own bridge (MQTT -> MQTT), and redis-benchmark -c 1 -P 1 PUBLISH
on the bridge's Redis. Prints a table with ours / each peer / direct, writes
JSON (--json) and optionally the Markdown report (--doc).

    bench/run.py --bridge build/mqtt-redis-bridge --gen build/bench/mrb_bench
                 [--quick] [--json out.json] [--doc docs/PERFORMANCE.md]
                 [--check] [--no-peers] [--node-modules DIR]

--check exits 1 if a receiver count is not sane or breaks what the path
promises (what the ctest 'bench' test uses: see PROMISES; the peers promise
nothing, only their counts are checked); timing targets are only printed,
never fail the run. Everything is bounded in time; every process started
here is stopped by its PID. Standard library, and harness.py's Debian
python3-paho-mqtt and python3-redis; node for the Node peer (skipped
without its node_modules).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(BENCH, "..", "tests", "integration"))
import harness  # noqa: E402  (the servers of the integration tests)

PEER_JS = os.path.join(BENCH, "peer-node", "peer.js")
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# SIGTERM to exit, at most: the bridge's shutdown_timeout_ms (default 5000,
# not set here) + 4.01 s for Paho's bounded disconnect (src/bridge.c,
# src/mqtt.c mrb_mqtt_shutdown) + 1 s (as tests/integration/harness.py)
BRIDGE_EXIT_S = 5.0 + 4.01 + 1.0


def stop(proc, timeout=10.0):
    """SIGTERM, wait, SIGKILL after timeout. (exit code, seconds it took or
    None if killed); (None, 0) if it was not running."""
    if proc is None or proc.poll() is not None:
        return (None if proc is None else proc.returncode), 0.0
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return proc.returncode, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return proc.returncode, None


# --------------------------------------------------------------------------
# /proc readings

def cpu_s(pid):
    """utime+stime of all threads of pid, seconds (from /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def run_ns(pid):
    """Run time of all threads of pid, ns (schedstat: finer than ticks)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def mem_kb(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    priv = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Private_Clean", "Private_Dirty"):
                out[k] = int(v.split()[0])
                priv += out[k]
    # Private_Clean: file pages (code of the binary and its libraries) that
    # no other process maps now; Private_Dirty: heap, stacks, written data
    out["Private"] = priv
    return out


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


class MemSampler:
    """Samples a PID's memory every 50 ms while a measurement runs."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, {}, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                m = mem_kb(self.pid)
            except OSError:
                return
            for k, v in m.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(2)


# --------------------------------------------------------------------------
# servers and bridge

class Env:
    """Fresh servers for one subject (the bridge, a peer): a redis-server and
    a mosquitto (set_tcp_nodelay true, sys_interval 1) on free loopback ports
    in a temporary directory, started and stopped by PID through
    tests/integration/harness.py; and the subject's process (self.bridge)."""

    def __init__(self, args, subject="bridge"):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="mrb-bench-%s-" % subject)
        self.bridge = None
        self.problems = []  # the subject's exits (stop_bridge)
        # the 10,000-subscriber fan-out needs more clients than Redis's
        # default 10,000
        self.redis = harness.RedisServerArgs(self.dir, args=["--maxclients", "20000"])
        self.mosq = harness.MosquittoConf(self.dir, extra=["max_connections -1",
                                                           "sys_interval 1"])
        self.rport, self.mport = self.redis.port, self.mosq.port

    def start_servers(self):
        self.redis.start()
        self.mosq.start()

    def stop_bridge(self):
        """Stop the running bridge: it must exit 0 within BRIDGE_EXIT_S
        (else a problem, which --check reports)."""
        if self.bridge is None:
            return
        rc, took = stop(self.bridge, BRIDGE_EXIT_S + 5)
        if rc != 0 or took is None or took > BRIDGE_EXIT_S:
            self.problems.append(
                "bridge %s: exit status %r %s after SIGTERM (want 0 within "
                "%.1f s); log %s" % (self.bridge_name, rc,
                                     "killed" if took is None else "%.1f s" % took,
                                     BRIDGE_EXIT_S, self.blog_path))
        self.bridge = None

    def config(self, routes, name):
        """The bridge's configuration file for routes (the Node peer reads
        the same file): its path."""
        cfg = {"id": "bench", "log_level": "warning",
               "mqtt": {"url": self.mosq.url, "session_expiry": 0},
               "redis": {"url": self.redis.url},
               "routes": routes}
        path = os.path.join(self.dir, "bridge-%s.json" % name)
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def start_bridge(self, routes, name):
        self.launch(name, [self.args.bridge, "-c", self.config(routes, name)],
                    ("bridge_m2r_q0", "bridge_r2m_q0"))

    def start_node_peer(self, routes, name="node-peer"):
        """bench/peer-node/peer.js with the bridge's configuration file."""
        env = dict(os.environ, NODE_PATH=self.args.node_modules)
        self.launch(name, [shutil.which("node") or "nodejs", PEER_JS,
                           self.config(routes, name)],
                    ("bridge_m2r_q0", "bridge_r2m_q0"), env=env)

    def start_mosquitto_bridge(self, name="mosquitto-bridge"):
        """A second mosquitto (the subject) bridging to the first with two
        connections: one takes mb/in/+ from it (as local mbl/+), the other
        gives mbl/+ back to it as mb/out/+. So each message makes one bridge
        hop in and one out of the bridging broker, as through our bridge:
        publisher -> mosquitto -> bridging broker -> mosquitto -> subscriber.
        (Two connections: mosquitto sends nothing back to the bridge
        connection it came from.)"""
        self.stop_bridge()
        conf = []
        for conn, topic in (("in", "+ in 0 mbl/ mb/in/"), ("out", "+ out 0 mbl/ mb/out/")):
            conf += ["connection mrb-bench-%s" % conn,
                     "address 127.0.0.1:%d" % self.mport, "cleansession true",
                     "notifications false", "topic %s" % topic]
        broker = harness.MosquittoConf(self.dir, extra=conf).start()
        self.bridge_name, self.bridge, self.blog_path = name, broker.proc, broker.log_path
        self.wait_ready(("mqbridge_m2m_q0",))

    def launch(self, name, cmd, probes, env=None):
        """Start the subject's process cmd (stopping the one before) and wait
        until a message crosses it on each of the paths probes."""
        self.stop_bridge()
        self.bridge_name = name
        self.blog_path = os.path.join(self.dir, "%s.log" % name)
        with open(self.blog_path, "wb") as log:
            self.bridge = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=env)
        self.wait_ready(probes)

    def wait_ready(self, probes):
        """Ready: subscribed on both sides; probed by a message on each path."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.bridge.poll() is not None:
                raise RuntimeError("%s exited: %s" % (self.bridge_name,
                                                      harness.read_text(self.blog_path)))
            if all(self.probe(p) for p in probes):
                time.sleep(0.5)
                return
            time.sleep(0.2)
        raise RuntimeError("%s not ready in 20 s: %s" % (self.bridge_name,
                                                         harness.read_text(self.blog_path)))

    def probe(self, path):
        pub, pp, sub, sn, _ = PATHS[path]
        r = self.gen(["flow", "--pub", pub, "--sub", sub, "--pub-prefix", pp,
                      "--sub-name", sn, "--count", "1", "--idle-ms", "300",
                      "--timeout-s", "1"], quiet=True)
        return bool(r) and r["unique"] == 1

    def gen(self, argv, quiet=False, timeout=200):
        cmd = [self.args.gen] + argv + ["--mqtt-port", str(self.mport),
                                        "--redis-port", str(self.rport)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
        if p.returncode != 0:
            if quiet:
                return None
            raise RuntimeError("%s failed: %s" % (" ".join(cmd), p.stderr.decode()))
        return json.loads(p.stdout.decode().strip().splitlines()[-1])

    def broker_dropped(self):
        """mosquitto's $SYS counter of dropped messages (its queue limits)."""
        for _ in range(3):
            try:
                p = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p",
                                    str(self.mport), "-t",
                                    "$SYS/broker/publish/messages/dropped",
                                    "-C", "1", "-W", "5"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   timeout=8)
                if p.returncode != 0 or not p.stdout.strip():
                    self.sys_error = "mosquitto_sub exit %d %r" % (p.returncode,
                                                                   p.stderr[-200:])
                    time.sleep(0.5)
                    continue
                return int(p.stdout.decode().split()[0])
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as e:
                self.sys_error = "%s: %r" % (type(e).__name__, e)
                time.sleep(0.5)
        print("could not read $SYS/broker/publish/messages/dropped: %s" % self.sys_error)
        return None

    def close(self):
        self.stop_bridge()
        for p in (self.mosq, self.redis):
            p.stop()
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------

BASE_ROUTES = [
    {"mqtt": "b0/in/+", "redis": "b0:in:*", "direction": "mqtt_to_redis", "qos": 0},
    {"mqtt": "b1/in/+", "redis": "b1:in:*", "direction": "mqtt_to_redis", "qos": 1},
    {"mqtt": "b0/out/+", "redis": "b0:out:*", "direction": "redis_to_mqtt", "qos": 0},
    {"mqtt": "b1/out/+", "redis": "b1:out:*", "direction": "redis_to_mqtt", "qos": 1},
    {"mqtt": "fan/bridge", "redis": "fan:bridge", "direction": "redis_to_mqtt", "qos": 0},
    {"mqtt": "user/+", "redis": "user:*", "direction": "both", "qos": 0},
]


def scale_routes(n):
    """n routes: the base ones after n - len(base) others. Half are
    MQTT->Redis wildcard routes, half exact channels both ways, so that Redis
    itself (which scans its pattern subscriptions linearly per PUBLISH) is
    not what is measured."""
    extra = []
    for i in range(n - len(BASE_ROUTES)):
        if i % 2:
            extra.append({"mqtt": "t%d/+" % i, "redis": "t%d:*" % i,
                          "direction": "mqtt_to_redis", "qos": 0})
        else:
            extra.append({"mqtt": "d%d/x" % i, "redis": "d%d:x" % i, "qos": 0})
    return extra + BASE_ROUTES


PATHS = {
    # name: (pub side, pub prefix, sub side, sub name)
    "bridge_m2r_q0": ("mqtt", "b0/in/", "redis", "b0:in:*", 0),
    "bridge_m2r_q1": ("mqtt", "b1/in/", "redis", "b1:in:*", 1),
    "bridge_r2m_q0": ("redis", "b0:out:", "mqtt", "b0/out/+", 0),
    "bridge_r2m_q1": ("redis", "b1:out:", "mqtt", "b1/out/+", 1),
    "direct_m2m_q0": ("mqtt", "direct/", "mqtt", "direct/+", 0),
    "direct_m2m_q1": ("mqtt", "direct/", "mqtt", "direct/+", 1),
    "direct_r2r": ("redis", "direct:", "redis", "direct:*", 0),
    "bridge_user_m2r": ("mqtt", "user/", "redis", "user:*", 0),
    "bridge_user_r2m": ("redis", "user:", "mqtt", "user/+", 0),
    # through mosquitto's own bridge (Env.start_mosquitto_bridge)
    "mqbridge_m2m_q0": ("mqtt", "mb/in/", "mqtt", "mb/out/+", 0),
}

# The peers' measurements after ours of the same figure (Bench.peer_flows):
# our result key -> (subject, path)s; their keys are SUBJECT/KIND_PATH
PEER_FLOWS = {
    "tput_bridge_m2r_q0": (("node", "bridge_m2r_q0"), ("mosquitto-bridge", "mqbridge_m2m_q0")),
    "tput_bridge_r2m_q0": (("node", "bridge_r2m_q0"),),
    "tput_bridge_m2r_q1": (("node", "bridge_m2r_q1"),),
    "lat_bridge_m2r_q0": (("node", "bridge_m2r_q0"), ("mosquitto-bridge", "mqbridge_m2m_q0")),
    "lat_bridge_r2m_q0": (("node", "bridge_r2m_q0"),),
}

# The Node peer's routes: the bridge's QoS 0 and 1 routes each way, as in
# BASE_ROUTES (peer.js has no echo suppression for a route both ways)
PEER_ROUTES = BASE_ROUTES[:4]


# What each bridge path promises (README "What the bridge guarantees",
# "Delivery"), checked by flow() in every measurement of the path:
#   "no loss": every message arrives (unique == count): QoS 1 MQTT -> Redis,
#     acknowledged to the broker only after Redis accepted it (the stream
#     routes promise it too; no measurement here uses one)
#   "no dup": no message arrives twice (duplicated == 0): the at-most-once
#     paths, QoS 0 MQTT -> Redis and Redis pub/sub -> MQTT at any QoS.
#     At-least-once (QoS 1 MQTT -> Redis) may duplicate after a re-send.
# QoS 0 and Redis pub/sub may lose messages (the broker's queue limits,
# Redis's output buffer limit): their loss is a timing target, not a check.
# The direct paths are not the bridge's: only their counts are checked.
PROMISES = {
    "bridge_m2r_q0": {"no dup"},
    "bridge_m2r_q1": {"no loss"},
    "bridge_r2m_q0": {"no dup"},
    "bridge_r2m_q1": {"no dup"},
    "bridge_user_m2r": {"no dup"},
    "bridge_user_r2m": {"no dup"},
}


def count_problems(r, count, promises):
    """What is wrong with the receiver's counts r of count messages sent on
    a path with these promises: a list of strings (empty: fine). (The
    generator reports lost = count - unique, so unique + lost == count
    always: no check.)"""
    p = []
    if r["sent"] != count:
        p.append("sent %d of %d" % (r["sent"], count))
    if r["malformed"]:
        p.append("%d malformed" % r["malformed"])
    if r["unique"] > count or r["unique"] + r["duplicated"] + r["malformed"] != r["received"]:
        p.append("received %d = unique %d + duplicated %d + malformed %d does "
                 "not add up" % (r["received"], r["unique"], r["duplicated"],
                                 r["malformed"]))
    if "no loss" in promises and r["unique"] != count:
        p.append("lost %d of %d on a path that promises no loss"
                 % (count - r["unique"], count))
    if "no dup" in promises and r["duplicated"] != 0:
        p.append("%d duplicated on a path that promises no duplicates"
                 % r["duplicated"])
    return p


class Bench:
    def __init__(self, args):
        self.args, self.env = args, Env(args)
        q = args.quick
        self.n_tput = 30000 if q else 200000
        self.n_lat = 2000 if q else 10000
        self.n_burst = 20000 if q else 100000
        self.fan = [1000] if q else [1000, 10000]
        self.fan_rounds = 3 if q else 9
        self.n_redis_bench = 20000 if q else 100000
        self.res = {"results": {}}
        self.problems = []
        self.subject = "bridge"  # whose process env.bridge is: "bridge" (ours) or a peer
        self.peer_envs = {}  # subject: its Env (start_peers)

    def flow(self, key, path, count, window=500, rate=0, channels=1, tag=None):
        pub, pp, sub, sn, qos = PATHS[path]
        env = self.env
        pids = {"bridge": env.bridge.pid, "mosquitto": env.mosq.proc.pid,
                "redis": env.redis.proc.pid}
        before = {k: (cpu_s(p), run_ns(p)) for k, p in pids.items()}
        with MemSampler(env.bridge.pid) as ms:
            r = env.gen(["flow", "--pub", pub, "--sub", sub, "--pub-prefix", pp,
                         "--sub-name", sn, "--count", str(count), "--window",
                         str(window), "--rate", str(rate), "--qos", str(qos),
                         "--channels", str(channels), "--idle-ms", "2000",
                         "--timeout-s", "120"])
        n = max(r["unique"], 1)
        for k, p in pids.items():
            c, ns = cpu_s(p), run_ns(p)
            r["%s_cpu_us_per_msg" % k] = round((c - before[k][0]) * 1e6 / n, 3)
            r["%s_run_us_per_msg" % k] = round((ns - before[k][1]) / 1e3 / n, 3)
        r["bridge_mem_peak_kb"] = ms.peak
        r["path"] = path
        self.res["results"][key] = r
        line = ("%-28s %9.0f msg/s  lost %6d dup %d reord %d  p50 %6d p99 %7d max %7d us"
                "  cpu/msg bridge %.2f mosq %.2f redis %.2f us"
                % (key, r["msg_per_s"], r["lost"], r["duplicated"], r["reordered"],
                   r["lat_us"]["p50"], r["lat_us"]["p99"], r["lat_us"]["max"],
                   r["bridge_run_us_per_msg"], r["mosquitto_run_us_per_msg"],
                   r["redis_run_us_per_msg"]))
        print(line, flush=True)
        # the peers promise nothing: only their counts are checked
        problems = count_problems(r, count, PROMISES.get(path, set())
                                  if self.subject == "bridge" else set())
        if problems:
            self.problems.append("%s (%s): %s; counts: %s"
                                 % (key, path, "; ".join(problems),
                                    {k: r[k] for k in ("sent", "received", "unique",
                                                       "lost", "duplicated",
                                                       "malformed")}))
        return r

    def run(self):
        env, a = self.env, self.args
        self.res["meta"] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": "%s, %d cores, %s" % (platform.node(), os.cpu_count(), cpu_model()),
            "kernel": platform.release(),
            "mosquitto": tool_version(["mosquitto", "-h"]),
            "redis": tool_version(["redis-server", "--version"]),
            "quick": a.quick, "loadavg_before": loadavg()}
        t_start = time.monotonic()
        env.start_servers()
        env.start_bridge(BASE_ROUTES, "base")
        time.sleep(1.0)
        self.res["memory_kb"] = {"idle": mem_kb(env.bridge.pid)}
        print("bridge idle memory (kB): %s" % self.res["memory_kb"]["idle"], flush=True)

        if a.peers:
            self.start_peers()

        print("-- throughput, closed loop (window 500) --", flush=True)
        n = self.n_tput
        for key in ("direct_m2m_q0", "bridge_m2r_q0", "direct_r2r", "bridge_r2m_q0",
                    "direct_m2m_q1", "bridge_m2r_q1", "bridge_r2m_q1"):
            count = n if "q1" not in key else n // 2
            self.flow("tput_" + key, key, count)
            self.peer_flows("tput_" + key, count)
        print("-- latency at 2,000 msg/s --", flush=True)
        for key in ("direct_m2m_q0", "bridge_m2r_q0", "direct_r2r", "bridge_r2m_q0"):
            self.flow("lat_" + key, key, self.n_lat, window=0, rate=2000)
            self.peer_flows("lat_" + key, self.n_lat, window=0, rate=2000)
        self.redis_benchmark()
        self.stop_peers()
        print("-- open-loop burst --", flush=True)
        d0 = env.broker_dropped()
        for key in ("direct_m2m_q0", "bridge_m2r_q0", "bridge_r2m_q0"):
            self.flow("burst_" + key, key, self.n_burst, window=0)
        d1 = env.broker_dropped()
        self.res["burst_broker_dropped"] = (d1 - d0) if d0 is not None and d1 is not None else None
        print("broker dropped during bursts ($SYS/broker/publish/messages/dropped): %s"
              % self.res["burst_broker_dropped"], flush=True)
        time.sleep(2.0)
        self.res["memory_kb"]["after_load"] = mem_kb(env.bridge.pid)
        print("bridge memory after load (kB): %s" % self.res["memory_kb"]["after_load"],
              flush=True)

        print("-- fan-out: one Redis PUBLISH vs one MQTT publish --", flush=True)
        self.res["fanout"] = {}
        for subs in self.fan:
            r = env.gen(["fanout", "--subs", str(subs), "--rounds", str(self.fan_rounds)],
                        timeout=240)
            self.res["fanout"][str(subs)] = r
            print("fan-out %5d subscribers: bridge %.2f ms, direct %.2f ms (median of %d)"
                  % (subs, r["bridge_ms"]["median"], r["direct_ms"]["median"], r["rounds"]),
                  flush=True)
            if r["incomplete_rounds"]["bridge"] or r["incomplete_rounds"]["direct"]:
                self.problems.append("fan-out %d: incomplete rounds %s"
                                     % (subs, r["incomplete_rounds"]))

        print("-- scale: 100,000 channels, 6 routes vs 1,000 routes (twice, "
              "alternating) --", flush=True)
        ch = 100000
        for i in (1, 2):
            if i == 2:
                env.start_bridge(BASE_ROUTES, "base2")
            self.flow("scale_base_m2r_%d" % i, "bridge_user_m2r", n, channels=ch)
            self.flow("scale_base_r2m_%d" % i, "bridge_user_r2m", n, channels=ch)
            self.res["memory_kb"]["base_after_scale_%d" % i] = mem_kb(env.bridge.pid)
            env.start_bridge(scale_routes(1000), "1000routes%d" % i)
            time.sleep(1.0)
            self.res["memory_kb"]["idle_1000_routes_%d" % i] = mem_kb(env.bridge.pid)
            self.flow("scale_1000_m2r_%d" % i, "bridge_user_m2r", n, channels=ch)
            self.flow("scale_1000_r2m_%d" % i, "bridge_user_r2m", n, channels=ch)
            self.res["memory_kb"]["after_1000_routes_%d" % i] = mem_kb(env.bridge.pid)
        self.res["meta"]["loadavg_after"] = loadavg()
        self.res["meta"]["seconds"] = round(time.monotonic() - t_start, 1)
        self.res["comparison"] = comparison(self.res)
        self.res["targets"] = targets(self.res)
        self.res["problems"] = self.problems
        return self.res

    def redis_benchmark(self):
        """The single-connection Redis round-trip rate, on the bridge's
        Redis: redis-benchmark -c 1 -P 1 PUBLISH (it has no publish test)."""
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(self.env.rport), "-c", "1",
               "-P", "1", "-n", str(self.n_redis_bench), "--csv", "PUBLISH", "ch", "x"]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
        rows = [l.split('","') for l in p.stdout.decode().splitlines()]
        if p.returncode != 0 or len(rows) < 2 or len(rows[1]) < 2:
            raise RuntimeError("%s failed: %s %s" % (" ".join(cmd), p.stdout, p.stderr))
        rps = float(rows[1][1].strip('"'))
        self.res["redis_benchmark"] = {"command": " ".join(cmd[:1] + cmd[5:]),
                                       "requests_per_s": rps}
        print("redis-benchmark -c 1 -P 1 PUBLISH: %.0f requests/s" % rps, flush=True)

    def start_peers(self):
        """The peers, each on its own fresh servers, all up at once (idle
        while the others are measured): the Node peer (mqtt.js + ioredis)
        and mosquitto's own bridge (MQTT -> MQTT only). Their memory idle
        (1 s after the start) goes into res["peers"]."""
        self.res["peers"] = {}
        starts = {"mosquitto-bridge": lambda e: e.start_mosquitto_bridge()}
        if self.args.node_modules and os.path.isdir(os.path.join(self.args.node_modules,
                                                                 "mqtt")):
            starts["node"] = lambda e: e.start_node_peer(PEER_ROUTES)
        else:
            print("Node peer skipped: no mqtt in --node-modules %r (scripts/bench.sh "
                  "installs bench/peer-node)" % self.args.node_modules, flush=True)
            self.res["peers"]["node"] = {"skipped": "node modules not found"}
        for subject, start in sorted(starts.items()):
            print("starting %s on fresh servers" % subject, flush=True)
            self.peer_envs[subject] = env = Env(self.args, subject)
            env.start_servers()
            start(env)
        time.sleep(1.0)
        for subject, env in self.peer_envs.items():
            self.res["peers"][subject] = {"memory_kb": {"idle": mem_kb(env.bridge.pid)}}

    def peer_flows(self, key, count, **kw):
        """The peers' measurements of figure key (PEER_FLOWS), right after
        ours: interleaved, so that the shared machine's load drifts less
        between them."""
        kind = key.split("_", 1)[0]
        for subject, path in PEER_FLOWS.get(key, ()):
            env = self.peer_envs.get(subject)
            if env is None:
                continue
            ours, self.env, self.subject = self.env, env, subject
            try:
                self.flow("%s/%s_%s" % (subject, kind, path), path, count, **kw)
            finally:
                self.env, self.subject = ours, "bridge"

    def stop_peers(self):
        for env in self.peer_envs.values():
            env.close()
            self.problems += env.problems
        self.peer_envs = {}

    def close(self):
        self.stop_peers()
        self.env.close()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def tool_version(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=5)
        return p.stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


# --------------------------------------------------------------------------
# the bridge beside its peers (Bench.start_peers, peer_flows) and the direct path

def figures():
    """(name, unit, field, ours, Node peer, mosquitto's bridge, direct):
    result keys (None: not measured there); field: what of the result."""
    out = []
    mqb = "mosquitto-bridge/%s_mqbridge_m2m_q0"
    for kind, fields, unit, direct in (("tput", ("cpu",), "µs", "tput_direct_m2m_q0"),
                                       ("tput", ("msg_per_s",), "msg/s", "tput_direct_m2m_q0"),
                                       ("lat", ("p50", "p99"), "µs", "lat_direct_m2m_q0")):
        for field in fields:
            for way, d in (("MQTT->Redis", "m2r"), ("Redis->MQTT", "r2m")):
                name = {"cpu": "CPU per message, %s (QoS 0, closed loop)",
                        "msg_per_s": "throughput QoS 0, %s"}.get(
                            field, field + " at 2,000 msg/s, %s") % way
                key = "%s_bridge_%s_q0" % (kind, d)
                out.append((name, unit, field, key, "node/" + key, mqb % kind, direct))
        if field == "msg_per_s":
            out.append(("throughput QoS 1, MQTT->Redis", "msg/s", "msg_per_s",
                        "tput_bridge_m2r_q1", "node/tput_bridge_m2r_q1", None,
                        "tput_direct_m2m_q1"))
    return out + [
        ("private memory idle", "kB", "mem_idle", "", "node", "mosquitto-bridge", None),
        ("private memory loaded (peak under the closed-loop runs)", "kB", "mem_loaded",
         "", "node", "mosquitto-bridge", None)]


FIGURES = figures()
SUBJECTS = ("ours", "node", "mosquitto_bridge", "direct")


def figure_value(res, field, key):
    """One figure of one subject, or None where it was not measured."""
    R = res["results"]
    if key is None:
        return None
    if field == "mem_idle":
        m = res["memory_kb"] if key == "" else res.get("peers", {}).get(key, {}).get("memory_kb")
        return m["idle"]["Private"] if m else None
    if field == "mem_loaded":
        pre = key + "/tput_" if key else "tput_"
        peaks = [r["bridge_mem_peak_kb"].get("Private", 0) for k, r in R.items()
                 if k.startswith(pre)]
        return max(peaks) if peaks else None
    r = R.get(key)
    if r is None:
        return None
    if field == "cpu":
        # utime + stime of /proc/PID/stat, all threads, of the subject's
        # process; on a direct path of the server that carries it
        return r["%s_cpu_us_per_msg" % ("mosquitto" if "_direct_m2m_" in key else "bridge")]
    if field in ("p50", "p99"):
        return r["lat_us"][field]
    return r[field]


def comparison(res):
    """The FIGURES of each subject and ours / each other one."""
    out = []
    for name, unit, field, *keys in FIGURES:
        v = dict(zip(SUBJECTS, (figure_value(res, field, k) for k in keys)))
        ratio = {s: (round(v["ours"] / v[s], 3) if v["ours"] is not None and v[s] else None)
                 for s in SUBJECTS[1:]}
        out.append({"figure": name, "unit": unit, "values": v, "ours_over": ratio})
    return out


def issue_targets(res, add):
    """The issue's targets against the peers (met/missed, never failing the
    run; n/a where a peer was not measured)."""
    C = {c["figure"]: c for c in res["comparison"]}
    for d in ("MQTT->Redis", "Redis->MQTT"):
        c = C["CPU per message, %s (QoS 0, closed loop)" % d]
        o, n = c["values"]["ours"], c["values"]["node"]
        add("CPU/msg %s <= Node peer's" % d, o, "<= %s" % fmt(n),
            None if n is None else o <= n, "µs")
        c = C["throughput QoS 0, %s" % d]
        peers = [x for x in (c["values"]["node"], c["values"]["mosquitto_bridge"])
                 if x is not None]
        o = c["values"]["ours"]
        add("throughput QoS 0 %s >= best peer's" % d, round(o), ">= %s"
            % fmt(max(peers) if peers else None), o >= max(peers) if peers else None,
            "msg/s")
        c = C["p50 at 2,000 msg/s, %s" % d]
        o, m = c["values"]["ours"], c["values"]["mosquitto_bridge"]
        add("p50 at 2,000 msg/s %s <= mosquitto bridge's" % d, o, "<= %s" % fmt(m),
            None if m is None else o <= m, "µs")
    rb = res.get("redis_benchmark", {}).get("requests_per_s")
    q1 = res["results"]["tput_bridge_m2r_q1"]["msg_per_s"]
    add("throughput QoS 1 MQTT->Redis / redis-benchmark -c 1 -P 1 PUBLISH (%s/s)"
        % fmt(rb), round(q1 / rb, 3) if rb else None, ">= 0.75",
        q1 >= 0.75 * rb if rb else None, "x")


# --------------------------------------------------------------------------
# targets

def targets(res):
    R = res["results"]
    t = []

    def add(name, value, limit, ok, unit=""):
        t.append({"target": name, "value": value, "limit": limit,
                  "met": None if ok is None else bool(ok), "unit": unit})

    issue_targets(res, add)

    dm0 = R["tput_direct_m2m_q0"]["msg_per_s"]
    for k in ("bridge_m2r_q0", "bridge_r2m_q0"):
        v = R["tput_" + k]["msg_per_s"] / dm0
        add("throughput %s / direct MQTT QoS 0" % k, round(v, 3), ">= 0.9", v >= 0.9, "x")
    v = R["tput_bridge_m2r_q1"]["msg_per_s"]
    add("throughput bridge_m2r_q1 (PUBACK after Redis)", round(v), ">= 20000", v >= 20000,
        "msg/s")
    mosq = R["tput_direct_m2m_q0"]["mosquitto_run_us_per_msg"]
    for k in ("bridge_m2r_q0", "bridge_r2m_q0"):
        b = R["tput_" + k]["bridge_run_us_per_msg"]
        add("bridge CPU/msg %s vs mosquitto CPU/msg (direct)" % k, round(b / mosq, 3),
            "<= 0.25", b <= 0.25 * mosq, "x (%.2f vs %.2f us)" % (b, mosq))
    for k, d in (("bridge_m2r_q0", "direct_m2m_q0"), ("bridge_r2m_q0", "direct_m2m_q0")):
        b, dd = R["lat_" + k]["lat_us"], R["lat_" + d]["lat_us"]
        add("latency p50 %s - direct MQTT" % k, b["p50"] - dd["p50"], "<= 50",
            b["p50"] <= dd["p50"] + 50, "us")
        # the issue's: p99 <= 1 ms, or <= 2 x direct's where direct's own
        # p99 is worse than 1 ms
        lim = 1000 if dd["p99"] <= 1000 else 2 * dd["p99"]
        add("latency p99 %s (direct MQTT p99 %d us)" % (k, dd["p99"]), b["p99"],
            "<= %d" % lim, b["p99"] <= lim, "us")
    r2m = R["burst_bridge_r2m_q0"]
    add("burst Redis->MQTT lost", r2m["lost"], "0", r2m["lost"] == 0, "msgs")
    m2r = R["burst_bridge_m2r_q0"]
    add("burst MQTT->Redis lost (broker drops shown separately)", m2r["lost"],
        "0 or broker's", m2r["lost"] == 0, "msgs")
    fo = res.get("fanout", {}).get("10000") or res.get("fanout", {}).get("1000")
    if fo:
        for k in ("median", "min"):
            d = fo["bridge_ms"][k] - fo["direct_ms"][k]
            add("fan-out %d: bridge - direct (%s of rounds)" % (fo["subscribers"], k),
                round(d, 3), "< 1", d < 1.0, "ms")
    peak = max(R[k]["bridge_mem_peak_kb"].get("Private", 0) for k in R
               if k.startswith(("tput_", "burst_")))
    add("bridge private memory under load", peak, "<= 4096", peak <= 4096, "kB")
    idle = res["memory_kb"]["idle"]["Private"]
    after = res["memory_kb"]["after_load"]["Private"]
    add("bridge private memory after load / idle", round(after / idle, 3), "<= 1.10",
        after <= 1.10 * idle, "x")
    # the same for the dirty part alone (heap, stacks): private clean pages
    # are file pages (code) and depend on what other processes map
    idle_d = res["memory_kb"]["idle"].get("Private_Dirty")
    after_d = res["memory_kb"]["after_load"].get("Private_Dirty")
    if idle_d and after_d is not None:
        add("bridge private dirty memory after load / idle", round(after_d / idle_d, 3),
            "<= 1.10", after_d <= 1.10 * idle_d, "x (%d vs %d kB)" % (after_d, idle_d))
    for d in ("m2r", "r2m"):
        # best of the two alternating runs of each (the machine is shared)
        base = max(R["scale_base_%s_%d" % (d, i)]["msg_per_s"] for i in (1, 2))
        big = max(R["scale_1000_%s_%d" % (d, i)]["msg_per_s"] for i in (1, 2))
        add("1,000 routes / 6 routes, 100k channels, best of 2 (%s)" % d,
            round(big / base, 3), ">= 0.9", big >= 0.9 * base, "x")
        # the bridge's own cost, less exposed to the machine's noise
        cb = min(R["scale_base_%s_%d" % (d, i)]["bridge_run_us_per_msg"] for i in (1, 2))
        c1 = min(R["scale_1000_%s_%d" % (d, i)]["bridge_run_us_per_msg"] for i in (1, 2))
        add("bridge CPU/msg 1,000 routes / 6 routes, best of 2 (%s)" % d,
            round(c1 / cb, 3), "<= 1.1", c1 <= 1.1 * cb,
            "x (%.2f vs %.2f us)" % (c1, cb))
    return t


def fmt(x):
    """A figure for the tables: "-" where it was not measured."""
    if x is None:
        return "-"
    return "%.2f" % x if isinstance(x, float) and abs(x) < 100 else "%.0f" % x


def table(res):
    R = res["results"]
    m = res["meta"]
    out = ["Run: %s on %s (kernel %s; %s; %s); load average before %s, after %s; "
           "%s mode, %.0f s." % (m["date"], m["machine"], m["kernel"], m["mosquitto"],
                                 m["redis"], " ".join(m["loadavg_before"]),
                                 " ".join(m.get("loadavg_after", [])),
                                 "quick" if m["quick"] else "full", m.get("seconds", 0)),
           "",
           "| measurement | msg/s | lost | dup | reordered | p50 µs | p99 µs | max µs "
           "| subject CPU µs/msg | mosquitto CPU µs/msg | redis CPU µs/msg |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in R.items():
        out.append("| %s | %.0f | %d | %d | %d | %d | %d | %d | %.2f | %.2f | %.2f |"
                   % (k, r["msg_per_s"], r["lost"], r["duplicated"], r["reordered"],
                      r["lat_us"]["p50"], r["lat_us"]["p99"], r["lat_us"]["max"],
                      r["bridge_run_us_per_msg"], r["mosquitto_run_us_per_msg"],
                      r["redis_run_us_per_msg"]))
    if res.get("redis_benchmark"):
        out += ["", "Single-connection Redis round trips (`%s`): %.0f requests/s."
                % (res["redis_benchmark"]["command"],
                   res["redis_benchmark"]["requests_per_s"])]
    out += ["", "Ours beside the peers (each on its own fresh servers; mosquitto's "
            "bridge MQTT->MQTT in both directions' rows; direct: mosquitto alone, "
            "`direct_m2m`; -: not measured there):", "",
            "| figure | ours | Node peer | mosquitto bridge | direct | ours / Node "
            "| ours / mosquitto bridge | ours / direct |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res.get("comparison", []):
        v, q = c["values"], c["ours_over"]
        out.append("| %s (%s) | %s | %s | %s | %s | %s | %s | %s |"
                   % ((c["figure"], c["unit"]) + tuple(fmt(v[k]) for k in SUBJECTS)
                      + tuple(fmt(q[k]) for k in SUBJECTS[1:])))
    out += ["", "| fan-out subscribers | bridge ms (median) | direct ms (median) | "
            "bridge min/max | direct min/max | connect s |", "|---:|---:|---:|---:|---:|---:|"]
    for k, f in res.get("fanout", {}).items():
        out.append("| %s | %.2f | %.2f | %.2f / %.2f | %.2f / %.2f | %.1f |"
                   % (k, f["bridge_ms"]["median"], f["direct_ms"]["median"],
                      f["bridge_ms"]["min"], f["bridge_ms"]["max"],
                      f["direct_ms"]["min"], f["direct_ms"]["max"], f["connect_s"]))
    out += ["", "| bridge memory (kB) | VmRSS | VmHWM | private | private clean "
            "| private dirty |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in res["memory_kb"].items():
        out.append("| %s | %d | %d | %d | %s | %s |"
                   % (k, v["VmRSS"], v["VmHWM"], v["Private"],
                      v.get("Private_Clean", "-"), v.get("Private_Dirty", "-")))
    out += ["", "Broker drops during the bursts ($SYS/broker/publish/messages/dropped): %s"
            % res.get("burst_broker_dropped"), "",
            "| target | measured | limit | met |", "|---|---:|---:|---|"]
    for t in res["targets"]:
        out.append("| %s | %s %s | %s | %s |" % (t["target"], t["value"], t["unit"],
                                                 t["limit"],
                                                 {True: "yes", False: "**no**"}.get(t["met"],
                                                                                   "n/a")))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--bridge", default=os.path.join(root, "build", "mqtt-redis-bridge"))
    ap.add_argument("--gen", default=os.path.join(root, "build", "bench", "mrb_bench"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--doc", help="write the result table into this Markdown file "
                    "between <!-- bench:begin --> and <!-- bench:end -->")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    ap.add_argument("--no-peers", dest="peers", action="store_false",
                    help="measure neither the Node peer nor mosquitto's bridge")
    ap.add_argument("--node-modules", default=os.path.join(root, "build-bench", "_peer-node",
                                                           "node_modules"),
                    help="node_modules of bench/peer-node (npm ci); the Node peer is "
                    "skipped if mqtt is not there")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if a.quick is False and want < 10100:
        print("ulimit -n is %d: the 10,000-subscriber fan-out needs ~10,100" % want)
    b = Bench(a)
    try:
        res = b.run()
    finally:
        b.close()
    res["problems"] += b.env.problems
    text = table(res)
    print()
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.doc:
        with open(a.doc) as f:
            doc = f.read()
        s, e = doc.index("<!-- bench:begin -->"), doc.index("<!-- bench:end -->")
        doc = doc[:s] + "<!-- bench:begin -->\n" + text + doc[e:]
        with open(a.doc, "w") as f:
            f.write(doc)
    if res["problems"]:
        print("PROBLEMS:\n  " + "\n  ".join(res["problems"]))
    if a.check and res["problems"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
