#!/usr/bin/python3
"""The fault matrix: for each direction and Redis mode, a stream of
sequence-numbered QoS 1 messages crosses the bridge while one fault is
injected mid-stream; the receiver counts what arrived.

Faults: Redis SIGKILL + restart (AOF, appendfsync always), mosquitto restart
(persistence on), bridge SIGKILL + restart, Redis SIGSTOP for 10 s,
mosquitto SIGSTOP for 10 s, Redis out of memory for 10 s (redis_oom:
maxmemory 1mb, noeviction, with used_memory above it: every command with
the denyoom flag, XADD and HSET among them, is refused with -OOM), Redis
SIGKILL + restart that stays in LOADING for several seconds (redis_loading:
a data set loaded with the hidden key-load-delay, so that -LOADING is
answered for 5-7 s; the matrix checks that the bridge really got -LOADING
replies). Each cell reports sent, received, lost,
duplicated, out of order (a first copy arriving after a higher number), the
time until messages flow again after the fault ends, and the bridge's peak
memory (VmHWM, the highest of its runs).

Columns: flow = seconds from the fault's end (restart done, or SIGCONT)
to the first message after it; gap = the receiver's longest silence from
the fault's start on; HWM = the bridge's peak VmHWM. For MQTT -> Redis the
same stream is also received directly on the broker (no bridge), as a
control: its numbers are in the JSON ("direct").

Targets (asserted; exit status 1 if one is missed):
  - lost = 0 and out of order = 0 in every stream-mode cell, in every
    MQTT -> Redis pub/sub cell whose fault is at the bridge or at mosquitto,
    and in every redis_oom cell (Redis stays up; PUBLISH is not refused);
  - in every cell: messages flow again after the fault, and the bridge's
    peak memory stays under --max-hwm-mb;
  - every bridge the matrix stops with SIGTERM (not one it SIGKILLs on
    purpose) exits 0 within its exit bound (harness.Bridge.exit_bound:
    shutdown_timeout_ms + the bounded MQTT disconnect + a margin);
  - redis_oom / redis_loading: the fault really happened (used_memory above
    maxmemory, commands refused with -OOM; loading:1 and the bridge's PING
    refused with -LOADING); MQTT -> Redis: the bridge's exit stats show
    dropped_send_failed=0, and a refusal episode is logged exactly once
    ("refused ... for now") and its end once ("takes messages from MQTT
    again"); in the MQTT -> Redis stream cell under OOM redis_refused >= 1.
Elsewhere Redis pub/sub itself cannot deliver (nobody is subscribed while
Redis restarts, or the bridge is): the loss is reported, not asserted.

Usage:
  fault_matrix.py --bridge PATH [--direction mqtt_to_redis|redis_to_mqtt]
                  [--mode pubsub|stream] [--fault NAME] [--messages N]
                  [--rate R] [--json FILE]
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "integration"))
import harness  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import redis  # noqa: E402

FAULTS = ["redis_kill", "mosquitto_restart", "bridge_kill", "redis_stop",
          "mosquitto_stop", "redis_oom", "redis_loading"]
STALL_S = 10
# redis_oom: maxmemory during the fault, and a value written before the
# stream so that used_memory is surely above it (an idle Redis 7.0 uses
# ~0.9 MB, and pub/sub cells store nothing)
OOM_MAXMEMORY = "1mb"
OOM_BALLAST_BYTES = 1024 * 1024
# redis_loading: keys written before the stream (and, by BGREWRITEAOF just
# before the kill, into the AOF's RDB base); the restarted server sleeps
# LOADING_KEY_DELAY_US per key (key-load-delay): 5-7 s of LOADING (measured
# ~0.43 ms per key with 300 us on Redis 7.0.15: usleep's overshoot)
LOADING_KEYS = 12000
LOADING_KEY_DELAY_US = 300
LOADING_MAX_S = 60
# a bridge's exit bound when the harness has no
# Bridge.exit_bound (see harness.py): default shutdown_timeout_ms 5000 +
# mrb_mqtt_shutdown's two bounded waits (4.01 s) + a margin
FALLBACK_EXIT_BOUND_S = 5.0 + 4.01 + 1.0 * harness.SCALE
WINDOW = 500           # MQTT publisher: unacknowledged messages at most
BATCH = 50             # Redis publisher: commands per pipeline
DRAIN_IDLE_S = 15      # after the last send: give up after this long without progress
DRAIN_MAX_S = 90


def must_hold(direction, mode, fault):
    """Is lost = 0 / out of order = 0 a target for this cell?"""
    if mode == "stream" or fault == "redis_oom":
        return True
    return direction == "mqtt_to_redis" and fault in (
        "bridge_kill", "mosquitto_restart", "mosquitto_stop")


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MatrixRedis(harness.RedisServer):
    """harness.RedisServer with extra command-line options (extra_args) for
    its next start; with accept_loading, start() returns as soon as the
    server answers INFO, also while it is still loading (harness.RedisServer
    waits for a PONG, which LOADING refuses). Its own probes use INFO and
    CONFIG only, never PING: a PING refused by LOADING is the bridge's."""

    extra_args = ()
    accept_loading = False

    def _extra(self):
        return super()._extra() + list(self.extra_args)

    def ping(self):
        if not self.accept_loading:
            return super().ping()
        try:
            r = redis.Redis(host="127.0.0.1", port=self.port,
                            socket_timeout=1, socket_connect_timeout=1)
            try:
                return "loading" in r.info("persistence")
            finally:
                r.close()
        except (redis.exceptions.RedisError, OSError):
            return False


def redis_info(port, section):
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                    socket_connect_timeout=2)
    try:
        return r.info(section)
    finally:
        r.close()


def rejected_calls(port):
    """{command: rejected_calls} of INFO commandstats (Redis 6.2+): the
    commands refused before they ran (-OOM, -LOADING ...)."""
    out = {}
    for k, v in redis_info(port, "commandstats").items():
        if isinstance(v, dict) and v.get("rejected_calls"):
            out[k.replace("cmdstat_", "")] = v["rejected_calls"]
    return out


def fill_for_loading(port):
    """LOADING_KEYS keys, loaded one by one with key-load-delay each after a
    restart."""
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30,
                    socket_connect_timeout=2)
    try:
        if "key-load-delay" not in r.config_get("key-load-delay"):
            raise RuntimeError("this redis-server has no key-load-delay "
                               "(Redis 6.2+): cannot make LOADING last")
        value = b"v" * 100
        for start in range(0, LOADING_KEYS, 1000):
            r.mset({"fill:%d" % i: value
                    for i in range(start, min(start + 1000, LOADING_KEYS))})
    finally:
        r.close()


def rewrite_aof(port):
    """BGREWRITEAOF, and wait until it is done. key-load-delay applies to
    each key of the AOF's RDB base and to each command of its incremental
    part: after the rewrite the keys so far are in the base, so the loading
    takes about as long in every cell (the commands a cell sent, three per
    message for a stream read by a group, would add up to 6 s)."""
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30,
                    socket_connect_timeout=2)
    try:
        before = r.info("persistence")
        try:
            r.bgrewriteaof()
        except redis.exceptions.ResponseError:
            pass  # one in progress: then it is scheduled
        done = harness.wait_until(
            lambda: (lambda i: i["aof_rewrite_in_progress"] == 0 and
                     i["aof_rewrite_scheduled"] == 0 and
                     i.get("aof_rewrites", 1) > before.get("aof_rewrites", 0))(
                         r.info("persistence")), 30, 0.05)
        if not done or r.info("persistence")["aof_last_bgrewrite_status"] != "ok":
            raise RuntimeError("BGREWRITEAOF did not finish: %r"
                               % r.info("persistence"))
    finally:
        r.close()


class Received:
    """Arrivals (seq, monotonic time), from any thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, payload):
        seq = int(payload.split(b":", 1)[0])
        with self.lock:
            self.items.append((seq, time.monotonic()))

    def snapshot(self):
        with self.lock:
            return list(self.items)

    def distinct(self):
        with self.lock:
            return len({s for s, _ in self.items})


# ---- receivers ------------------------------------------------------------

class RedisChannelReceiver(threading.Thread):
    def __init__(self, port, channel, got):
        super().__init__(daemon=True)
        self.port, self.channel, self.got = port, channel, got
        self.running = True
        self.subscribed = threading.Event()

    def run(self):
        while self.running:
            try:
                r = redis.Redis(host="127.0.0.1", port=self.port,
                                socket_timeout=2, socket_connect_timeout=1)
                ps = r.pubsub()
                ps.subscribe(self.channel)
                while self.running:
                    m = ps.get_message(timeout=0.2)
                    if m and m["type"] == "subscribe":
                        self.subscribed.set()
                    elif m and m["type"] == "message":
                        self.got.add(m["data"])
            except (redis.exceptions.RedisError, OSError):
                time.sleep(0.05)


class RedisStreamReceiver(threading.Thread):
    def __init__(self, port, key, got):
        super().__init__(daemon=True)
        self.port, self.key, self.got = port, key, got
        self.running = True
        self.subscribed = threading.Event()
        self.subscribed.set()
        self.last = "0-0"

    def run(self):
        while self.running:
            try:
                r = redis.Redis(host="127.0.0.1", port=self.port,
                                socket_timeout=2, socket_connect_timeout=1)
                while self.running:
                    res = r.xread({self.key: self.last}, count=1000, block=200)
                    for _key, entries in res or []:
                        for eid, fields in entries:
                            self.got.add(fields[b"payload"])
                            self.last = eid
            except (redis.exceptions.RedisError, OSError):
                time.sleep(0.05)


class MqttReceiver:
    def __init__(self, port, topic, got, client_id):
        self.got = got
        self.subscribed = threading.Event()
        self.c = mqtt.Client(client_id=client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.on_connect = lambda c, u, f, rc: (c.subscribe(topic, 1)
                                                 if rc == 0 else None)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = lambda c, u, m: self.got.add(m.payload)
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def close(self):
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except Exception:
            pass


# ---- publishers -----------------------------------------------------------

class MqttPublisher:
    """QoS 1, persistent session: paho queues while disconnected and sends
    unacknowledged messages again after reconnecting.

    An in-order publisher: after a lost connection it publishes nothing new
    until everything published before is acknowledged. (python-paho 1.6.1
    sends a publish() made right after it reconnects before it re-sends the
    unacknowledged ones; the direct path showed those out-of-order arrivals
    too, with and without the bridge.)"""

    def __init__(self, port, topic, client_id):
        self.topic = topic
        self.acked = 0
        self.lost_connection = False
        self.lock = threading.Lock()
        self.c = mqtt.Client(client_id=client_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(20)  # paho's default
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_publish(self, c, u, mid):
        with self.lock:
            self.acked += 1

    def _on_disconnect(self, c, u, rc):
        with self.lock:
            self.lost_connection = True

    def send(self, seq, deadline):
        for _ in range(1000000):  # bounded: the window drains or we give up
            with self.lock:
                if self.lost_connection and self.acked >= seq:
                    self.lost_connection = False
                if not self.lost_connection and seq - self.acked < WINDOW:
                    break
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        self.c.publish(self.topic, b"%d:%f" % (seq, time.time()), qos=1)
        return True

    def close(self):
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except Exception:
            pass


class RedisPublisher:
    """PUBLISH or XADD in pipelines of BATCH; a batch that fails is sent
    again after reconnecting (duplicates possible, as with any client).

    atomic: each batch in MULTI/EXEC. For the faults where Redis refuses
    XADD for a while (OOM, LOADING): a plain pipeline that straddles the
    fault's end has its first commands refused and its last ones taken, and
    the batch sent again would put those before the older ones (out of
    order through the publisher's own fault); a transaction is taken or
    refused whole (EXECABORT). Only for XADD: under OOM Redis 7.0 refuses
    every command queued in a MULTI, PUBLISH too, which it takes outside
    one."""

    def __init__(self, port, name, mode, atomic=False):
        self.port, self.name, self.mode = port, name, mode
        self.atomic = atomic
        self.pending = []
        self.r = None

    def send(self, seq, deadline):
        self.pending.append(b"%d:%f" % (seq, time.time()))
        if len(self.pending) >= BATCH:
            return self.flush(deadline)
        return True

    def flush(self, deadline):
        while self.pending:
            if time.monotonic() > deadline:
                return False
            try:
                if self.r is None:
                    self.r = redis.Redis(host="127.0.0.1", port=self.port,
                                         socket_timeout=2, socket_connect_timeout=1)
                p = self.r.pipeline(transaction=self.atomic)
                for m in self.pending:
                    if self.mode == "stream":
                        p.xadd(self.name, {"payload": m})
                    else:
                        p.publish(self.name, m)
                p.execute()
                self.pending = []
            except redis.exceptions.BusyLoadingError:
                # not every 50 ms: Redis answers between the keys it loads,
                # and a client hammering it makes the loading itself slower
                self.r = None
                time.sleep(0.2)
            except (redis.exceptions.RedisError, OSError):
                self.r = None
                time.sleep(0.05)
        return True

    def close(self):
        pass


# ---- one cell -------------------------------------------------------------

def analyse(items):
    """(distinct seqs, out of order count, examples): a message is out of
    order when its first copy arrives after a higher number's."""
    seen, maxseq, ooo, examples = set(), -1, 0, []
    for s, _t in items:
        if s in seen:
            continue
        seen.add(s)
        if s < maxseq:
            ooo += 1
            if len(examples) < 5:
                examples.append("%d after %d" % (s, maxseq))
        maxseq = max(maxseq, s)
    return seen, ooo, examples


def run_cell(bridge_path, direction, mode, fault, n, rate, max_hwm_kb):
    harness.BRIDGE = bridge_path
    work = tempfile.mkdtemp(prefix="mrb-faults-")
    rs = MatrixRedis(work, aof=True)
    mq = harness.Mosquitto(work, persistence=True, max_queued=100000)
    procs = []
    receiver = publisher = None
    bridges = []
    try:
        rs.start()
        mq.start()
        if fault == "redis_oom":
            rs.client().set("ballast", b"b" * OOM_BALLAST_BYTES)
        elif fault == "redis_loading":
            fill_for_loading(rs.port)
        tag = "%s-%s-%s" % (direction[0], mode[0], fault)
        topic, name = "f/%s" % tag, "f:%s" % tag
        cfg = {
            "id": "fm-%s" % tag,
            "log_level": "info",
            "mqtt": {"url": mq.url, "keepalive": 2},
            "redis": {"url": rs.url, "keepalive": 2},
            "reconnect": {"min_ms": 100, "max_ms": 1000},
            "limits": {"max_payload": 65536, "queue_bytes": 4 * 1024 * 1024},
            "routes": [{"mqtt": topic, "redis": name, "direction": direction,
                        "mode": mode, "qos": 1, "maxlen": 1000000}],
        }
        cfg_path = os.path.join(work, "cfg.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)

        def start_bridge():
            b = harness.Bridge(work, ["-c", cfg_path], "bridge%d" % len(bridges))
            bridges.append(b)
            b.wait_ready(30)
            return b

        bridge = start_bridge()
        got = Received()
        direct_got = Received()
        direct = None
        if direction == "mqtt_to_redis":
            receiver = (RedisStreamReceiver(rs.port, name, got) if mode == "stream"
                        else RedisChannelReceiver(rs.port, name, got))
            receiver.start()
            # the direct path on the same broker, for comparison: what a
            # subscriber of the publisher's topic saw without the bridge
            direct = MqttReceiver(mq.port, topic, direct_got, "fm-direct-" + tag)
            direct.subscribed.wait(10)
            publisher = MqttPublisher(mq.port, topic, "fm-pub-" + tag)
        else:
            receiver = MqttReceiver(mq.port, topic, got, "fm-recv-" + tag)
            # (not for PUBLISH: Redis takes it under OOM and while loading,
            # but under OOM refuses every command queued in a MULTI)
            publisher = RedisPublisher(rs.port, name, mode, atomic=(
                mode == "stream" and fault in ("redis_oom", "redis_loading")))
        if not receiver.subscribed.wait(10):
            raise RuntimeError("receiver did not subscribe")
        time.sleep(0.3)

        hwm = [0]
        t_fault = {}
        fault_info = {}

        def inject():
            if fault == "redis_loading":
                rewrite_aof(rs.port)
            t_fault["start"] = time.monotonic()
            if fault == "redis_kill":
                rs.stop(signal.SIGKILL)
                rs.start()
            elif fault == "mosquitto_restart":
                mq.stop(signal.SIGTERM)
                mq.start()
            elif fault == "bridge_kill":
                hwm[0] = max(hwm[0], vm_hwm_kb(bridges[-1].proc.pid))
                bridges[-1].proc.kill()
                bridges[-1].proc.wait(10)
                bridges[-1].stopped_by_test = True
                start_bridge()
            elif fault in ("redis_stop", "mosquitto_stop"):
                proc = rs.proc if fault == "redis_stop" else mq.proc
                os.kill(proc.pid, signal.SIGSTOP)
                time.sleep(STALL_S)
                os.kill(proc.pid, signal.SIGCONT)
            elif fault == "redis_oom":
                inject_oom()
            elif fault == "redis_loading":
                inject_loading()
            t_fault.setdefault("end", time.monotonic())

        def inject_oom():
            r = rs.client()
            old = r.config_get("maxmemory*")
            try:
                r.config_set("maxmemory-policy", "noeviction")
                r.config_set("maxmemory", OOM_MAXMEMORY)
                mem = r.info("memory")
                fault_info.update(used_memory=mem["used_memory"],
                                  maxmemory=mem["maxmemory"])
                time.sleep(STALL_S)
                fault_info["rejected"] = rejected_calls(rs.port)
            finally:
                # the end of the fault (also after an error): the memory
                # back first
                r.config_set("maxmemory", old["maxmemory"])
                r.config_set("maxmemory-policy", old["maxmemory-policy"])
                r.close()

        def inject_loading():
            rs.stop(signal.SIGKILL)
            rs.extra_args = ["--key-load-delay", str(LOADING_KEY_DELAY_US),
                             # process events (answer -LOADING) every 1 kB
                             # loaded, not every 2 MB
                             "--loading-process-events-interval-bytes", "1024"]
            rs.accept_loading = True
            try:
                rs.start()
            finally:
                rs.extra_args, rs.accept_loading = (), False
            # the restart is done: as for redis_kill, this is the fault's
            # end (flow is counted from here; the rest of the stream is
            # offered from here on). Redis takes PUBLISH and SUBSCRIBE while
            # it loads, but refuses PING, XADD, XREADGROUP... until "loaded"
            t_up = t_fault["end"] = time.monotonic()
            states = []

            def loaded():
                try:
                    v = redis_info(rs.port, "persistence")["loading"]
                except (redis.exceptions.RedisError, OSError):
                    return False
                states.append(v)
                return v == 0
            harness.wait_until(loaded, LOADING_MAX_S, 0.05)
            t_fault["loaded"] = time.monotonic()
            fault_info.update(loading_seen=1 in states,
                              loading_s=round(t_fault["loaded"] - t_up, 2),
                              rejected=rejected_calls(rs.port))

        injector = threading.Thread(target=inject, daemon=True)
        t0 = time.monotonic()
        send_deadline = t0 + n / rate + STALL_S + 120
        sent = 0
        rebased = False
        for seq in range(n):
            if seq == n // 2:
                injector.start()
            if not rebased and "end" in t_fault:
                # offer the rest at the nominal rate from the fault's end,
                # not as one burst to catch up (which would measure only
                # how fast the bridge resubscribes)
                rebased = True
                t0 = t_fault["end"] - seq / rate
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not publisher.send(seq, send_deadline):
                break
            sent += 1
        if isinstance(publisher, RedisPublisher):
            publisher.flush(send_deadline)
        injector.join(STALL_S + 60)
        if injector.is_alive():
            raise RuntimeError("fault injection did not finish")

        # drain: until all arrived, or no progress for DRAIN_IDLE_S
        last_count, last_change = -1, time.monotonic()
        drain_end = time.monotonic() + DRAIN_MAX_S
        while time.monotonic() < drain_end:
            c = got.distinct()
            if c >= sent:
                break
            if c != last_count:
                last_count, last_change = c, time.monotonic()
            elif time.monotonic() - last_change > DRAIN_IDLE_S:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # late duplicates
        for b in bridges:
            if b.alive():
                hwm[0] = max(hwm[0], vm_hwm_kb(b.proc.pid))

        items = got.snapshot()
        seen, ooo, ooo_examples = analyse(items)
        direct_items = direct_got.snapshot()
        dseen, dooo, _ = analyse(direct_items)
        after = [t for _s, t in items if t > t_fault["end"]]
        recovery = (min(after) - t_fault["end"]) if after else None
        # the receiver's longest silence from the fault's start on: the
        # outage as a subscriber saw it
        times = sorted(t for _s, t in items if t >= t_fault["start"])
        edges = [t_fault["start"]] + times
        gap = max((b - a for a, b in zip(edges, edges[1:])), default=None)
        res = {
            "direction": direction, "mode": mode, "fault": fault,
            "sent": sent, "received": len(items), "distinct": len(seen),
            "lost": sent - len(seen & set(range(sent))),
            "duplicated": len(items) - len(seen), "out_of_order": ooo,
            "recovery_s": None if recovery is None else round(recovery, 3),
            "max_gap_s": None if gap is None else round(gap, 3),
            "flowed_after": len(after),
            "peak_hwm_kb": hwm[0],
            "out_of_order_examples": ooo_examples,
            "direct": None if direct is None else {
                "received": len(direct_items), "lost": sent - len(dseen & set(range(sent))),
                "duplicated": len(direct_items) - len(dseen), "out_of_order": dooo},
            "target": "lost=0, out_of_order=0" if must_hold(direction, mode, fault)
                      else "reported",
        }
        problems = []
        if must_hold(direction, mode, fault) and (res["lost"] or ooo):
            problems.append("lost %d / out of order %d (target 0) %s"
                            % (res["lost"], ooo, ", ".join(ooo_examples)))
        if not after and res["distinct"] < sent:
            problems.append("messages did not flow again after the fault")
        if hwm[0] > max_hwm_kb:
            problems.append("peak memory %d kB over %d kB" % (hwm[0], max_hwm_kb))
        for b in bridges:
            if not b.stopped_by_test and not b.alive():
                problems.append("bridge exited by itself:\n" + harness.tail(b.log()))
        # every bridge still running stops with SIGTERM: exit 0 in time
        res["exits"] = []
        for b in bridges:
            if b.stopped_by_test and not b.alive():
                continue  # SIGKILLed on purpose (bridge_kill)
            problem, info = stop_checked(b)
            res["exits"].append(info)
            if problem:
                problems.append(problem)
        if fault == "redis_loading" and "loaded" in t_fault:
            # stream mode: nothing can be written while Redis loads, so the
            # rest of the stream must arrive after the loading's end
            late = [t for _s, t in items if t > t_fault["loaded"]]
            fault_info["flowed_after_loading"] = len(late)
            fault_info["flow_after_loading_s"] = (
                round(min(late) - t_fault["loaded"], 3) if late else None)
            if mode == "stream" and not late:
                problems.append("messages did not flow again after Redis "
                                "finished loading")
        if fault in ("redis_oom", "redis_loading"):
            res["fault_info"] = fault_info
            problems += fault_checks(direction, mode, fault, fault_info,
                                     bridges, res)
        res["problems"] = problems
        if problems:
            res["bridge_log"] = harness.tail(bridges[-1].log(), 30)
        return res
    finally:
        if direct is not None:
            direct.close()
        if publisher:
            publisher.close()
        if receiver is not None:
            if hasattr(receiver, "running"):
                receiver.running = False
            if hasattr(receiver, "close"):
                receiver.close()
        for b in bridges:  # only after an error: stop_checked stopped them
            if b.alive():
                b.proc.send_signal(signal.SIGTERM)
                try:
                    b.proc.wait(20)
                except Exception:
                    b.proc.kill()
                    b.proc.wait(10)
        for p in procs:
            harness.stop_process(p)
        for s in (rs, mq):
            if s.proc is not None and s.proc.poll() is None:
                try:
                    os.kill(s.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
            s.stop()
        if not os.environ.get("MRB_KEEP_TMP"):
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def exit_bound(b):
    """Seconds from SIGTERM to the exit that bridge b may take."""
    if hasattr(b, "exit_bound"):
        return b.exit_bound()
    return FALLBACK_EXIT_BOUND_S


def stop_checked(b):
    """SIGTERM to bridge b (running); (problem or None, info): it must exit
    0 within its exit bound. Killed if it has not exited well after that."""
    bound = exit_bound(b)
    b.stopped_by_test = True
    t0 = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    try:
        b.proc.wait(bound + 10)
        took = time.monotonic() - t0
    except Exception:  # subprocess.TimeoutExpired
        b.proc.kill()
        b.proc.wait(10)
        took = None
    code = b.proc.returncode
    info = {"bridge": b.name, "signal": "SIGTERM", "exit": code,
            "took_s": None if took is None else round(took, 2),
            "bound_s": round(bound, 2)}
    if took is None:
        return ("bridge %s did not exit within %.1f s of SIGTERM (killed; exit "
                "bound %.2f s)" % (b.name, bound + 10, bound)), info
    if took > bound:
        return ("bridge %s took %.2f s to exit after SIGTERM, over its exit "
                "bound of %.2f s (exit status %r)" % (b.name, took, bound, code)), info
    if code != 0:
        return ("bridge %s exited with status %r after SIGTERM (in %.2f s), "
                "expected 0" % (b.name, code, took)), info
    return None, info


REFUSED_FOR_NOW = "refused a message from MQTT topic"
TAKES_AGAIN = "takes messages from MQTT again"


def exit_stats(b):
    """The counters of bridge b's last "stats:" line (at its exit), or None."""
    lines = [harness.log_message(l) for l in b.lines()]
    stats = [l for l in lines if l.startswith("stats:") and "mqtt_in=" in l]
    if not stats:
        return None
    return {k: int(v) for k, v in harness.stats_counters(stats[-1]).items()}


def fault_checks(direction, mode, fault, info, bridges, res):
    """redis_oom / redis_loading: did the fault happen, and how did the
    bridge take it (log lines, exit stats)? A list of problems."""
    problems = []
    rejected = info.get("rejected") or {}
    if fault == "redis_oom":
        used, maxm = info.get("used_memory", 0), info.get("maxmemory", 0)
        if not maxm or used <= maxm:
            problems.append("fault not injected: used_memory %d not above "
                            "maxmemory %d" % (used, maxm))
        # only the bridge writes in MQTT -> Redis, only the test in the
        # other direction; pub/sub cells send no denyoom command at all
        if mode == "stream" and not rejected.get("xadd"):
            problems.append("fault not injected: no XADD refused with -OOM "
                            "(commandstats %r)" % rejected)
    else:
        if not info.get("loading_seen"):
            problems.append("fault not injected: Redis was never seen loading "
                            "(INFO persistence loading:1)")
        # the test's own clients send no PING: these are the bridge's
        if not rejected.get("ping"):
            problems.append("fault not injected: the bridge got no -LOADING "
                            "reply (no PING refused; commandstats %r)" % rejected)
    if direction != "mqtt_to_redis":
        return problems
    # MQTT -> Redis: nothing dropped, each refusal episode logged once
    text = "\n".join(b.log() for b in bridges)
    lines = text.splitlines()
    refused = [l for l in lines if REFUSED_FOR_NOW in l]
    for_now = [l for l in refused if "for now" in l]
    again = [l for l in lines if TAKES_AGAIN in l]
    res["log_refused"], res["log_takes_again"] = len(refused), len(again)
    stats = [exit_stats(b) for b in bridges]
    if any(s is None for s in stats):
        problems.append("no exit stats line (stats: ...) in a bridge's log")
        return problems
    total = {}
    for st in stats:
        for k, v in st.items():
            total[k] = total.get(k, 0) + v
    res["stats"] = {k: total.get(k) for k in ("redis_refused", "dropped_send_failed",
                                               "redis_resent", "mqtt_in", "redis_out")}
    if total.get("dropped_send_failed", 0) != 0:
        problems.append("dropped_send_failed=%d in the exit stats (target 0)"
                        % total["dropped_send_failed"])
    refused_n = total.get("redis_refused", 0)
    if fault == "redis_oom" and mode == "stream" and refused_n < 1:
        problems.append("redis_refused=%s in the exit stats, expected >= 1"
                        % total.get("redis_refused", "(absent)"))
    if len(refused) != len(for_now):
        problems.append("%d refusal line(s) without 'for now' (dropped), e.g. %s"
                        % (len(refused) - len(for_now),
                           next(l for l in refused if "for now" not in l)))
    episodes = 1 if refused_n else 0
    if len(for_now) != episodes or len(again) != episodes:
        problems.append("log: %d 'refused ... for now' and %d '%s' line(s), "
                        "expected %d each (redis_refused=%d)"
                        % (len(for_now), len(again), TAKES_AGAIN, episodes,
                           refused_n))
    return problems


def fmt_row(r):
    rec = "-" if r["recovery_s"] is None else "%.2f" % r["recovery_s"]
    gap = "-" if r["max_gap_s"] is None else "%.2f" % r["max_gap_s"]
    ok = "FAIL" if r["problems"] else "ok"
    return ("| %-13s | %-6s | %-17s | %6d | %8d | %5d | %5d | %5d | %8s | %7s | %7.1f | %-22s | %-4s |"
            % (r["direction"], r["mode"], r["fault"], r["sent"], r["received"],
               r["lost"], r["duplicated"], r["out_of_order"], rec, gap,
               r["peak_hwm_kb"] / 1024.0, r["target"], ok))


HEADER = ("| direction     | mode   | fault             |   sent | received |  lost |  dups | order | flow (s) | gap (s) | HWM MiB | target                 | ok   |\n"
          "|---------------|--------|-------------------|--------|----------|-------|-------|-------|----------|---------|---------|------------------------|------|")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bridge", default=os.environ.get("MRB_BRIDGE", harness.DEFAULT_BRIDGE))
    ap.add_argument("--direction", choices=["mqtt_to_redis", "redis_to_mqtt"], action="append")
    ap.add_argument("--mode", choices=["pubsub", "stream"], action="append")
    ap.add_argument("--fault", choices=FAULTS, action="append")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=4000.0, help="messages/s offered")
    # the bridge idles at ~2.5 MB; its queues are capped at 4 MiB per
    # direction in this test (limits.queue_bytes), and at most 8 MiB is
    # unconfirmed towards Redis: 16 MB leaves room for the allocator
    ap.add_argument("--max-hwm-mb", type=float, default=16.0)
    ap.add_argument("--json", help="append the results (JSON lines) to this file")
    a = ap.parse_args()
    bridge = os.path.abspath(a.bridge)
    results = []
    print(HEADER, flush=True)
    for d in a.direction or ["mqtt_to_redis", "redis_to_mqtt"]:
        for m in a.mode or ["pubsub", "stream"]:
            for f in a.fault or FAULTS:
                r = run_cell(bridge, d, m, f, a.messages, a.rate,
                             int(a.max_hwm_mb * 1024))
                results.append(r)
                print(fmt_row(r), flush=True)
                for p in r["problems"]:
                    print("    problem: %s" % p, flush=True)
                if r["problems"] and "bridge_log" in r:
                    print("    bridge log:\n" + "\n".join(
                        "      " + l for l in r["bridge_log"].splitlines()), flush=True)
                if a.json:
                    with open(a.json, "a") as out:
                        out.write(json.dumps({k: v for k, v in r.items()
                                              if k != "bridge_log"}) + "\n")
    bad = [r for r in results if r["problems"]]
    print("%d cell(s), %d missed a target" % (len(results), len(bad)), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
