"""Shared helpers for the mqtt-redis-bridge integration tests.

Every test starts its own redis-server and mosquitto on free loopback ports in
a private temporary directory, runs the bridge binary against them, and stops
everything by PID afterwards (also when the test fails). A test case with
a Redis and a broker derives from ServersTestCase, whose setUp starts them
(self.rs, self.mq, self.r); its SERVERS and @with_servers give their options.

Run a test file with
    /usr/bin/python3 tests/integration/test_x.py --bridge build/mqtt-redis-bridge
or set MRB_BRIDGE instead of --bridge.  Other arguments go to unittest
(e.g. -v, -k NAME, Class.test_method).

Environment:
    MRB_BRIDGE          path of the bridge binary (overridden by --bridge)
    MRB_TIMEOUT_SCALE   multiply every timeout and the quiet period of the
                        negative checks (QUIET), e.g. 3 for sanitizer builds
    MRB_KEEP_TMP=1      keep the temporary directories for inspection

Every bridge a test stops with SIGTERM or SIGINT (Bridge.stop, and the
cleanup of a bridge the test left running) must exit 0 within its exit bound
(Bridge.exit_bound: its shutdown_timeout_ms, Paho's bounded disconnect and a
margin); otherwise the stop raises AssertionError. A test that expects
another exit code says so: stop(expect=1), or stop(expect=None) to judge
the (code, in_time) it returns itself.
"""

import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

import paho.mqtt.client as mqtt
import redis

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BRIDGE = os.path.join(REPO, "build", "mqtt-redis-bridge")
BRIDGE = None  # set by main()

SCALE = float(os.environ.get("MRB_TIMEOUT_SCALE", "1") or "1")
READY_TIMEOUT = 10 * SCALE       # bridge reaches "ready:"
DELIVERY_TIMEOUT = 5 * SCALE     # one message crosses the bridge
RECOVERY_TIMEOUT = 15 * SCALE    # bridge recovers from a server restart
SERVER_TIMEOUT = 10 * SCALE      # redis-server / mosquitto accept connections
EXIT_TIMEOUT = 15 * SCALE        # SIGKILL a bridge this long after SIGTERM
                                 # (at least its exit bound + EXIT_MARGIN)
QUIET = 0.5 * SCALE              # silence that proves "no more copies"

# How long a bridge may take from SIGTERM/SIGINT to its exit (see
# Bridge.exit_bound). src/bridge.c run_loop flushes for at most
# shutdown_timeout_ms (default 5000, config key shutdown_timeout_ms); then
# mrb_bridge_run calls mrb_mqtt_shutdown(b, 2000) (src/mqtt.c), which waits
# up to 2000 ms for the retained "offline" status (MQTTAsync_waitForCompletion)
# and polls up to 2000 ms + 10 ms for the MQTT disconnect: 4.01 s more at
# most.  The rest (joining the ingest thread, freeing) is quick; the margin
# covers it and scales for valgrind/ASan (slower code, valgrind's leak check
# at exit).
SHUTDOWN_TIMEOUT_MS = 5000       # the bridge's default shutdown_timeout_ms
MQTT_CLOSE_S = 4.01              # mrb_mqtt_shutdown's two bounded waits
EXIT_MARGIN = 1.0 * SCALE
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

LOST_RE = re.compile(r"connection lost|cannot connect")


# --------------------------------------------------------------------------
# small utilities

def wait_until(pred, timeout, interval=0.02):
    """Poll pred() until it is true or timeout seconds have passed.

    Returns the last value of pred().  Bounded in time and in iterations."""
    deadline = time.monotonic() + timeout
    max_iter = int(timeout / interval) + 2
    for _ in range(max_iter):
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return pred()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix="m"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Stop one process that we started, by its PID.  Returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def tail(text, n=40):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


def describe_payload(p):
    if p is None:
        return "None"
    if len(p) > 80:
        return "<%d bytes %r...>" % (len(p), p[:32])
    return repr(p)


# --------------------------------------------------------------------------
# servers

class RedisServer:
    """A redis-server on 127.0.0.1:port, restartable on the same port."""

    def __init__(self, workdir, port=None, password=None, unixsocket=False,
                 aof=False):
        """aof: append-only file with appendfsync always (a reply means the
        write is on disk), so a SIGKILL loses nothing acknowledged."""
        self.aof = aof
        self.port = port or free_port()
        self.dir = os.path.join(workdir, "redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.password = password
        self.socket_path = (os.path.join(self.dir, "redis.sock")
                            if unixsocket else None)
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port),
                 "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes" if self.aof else "no",
                 "--appendfsync", "always",
                 "--dir", self.dir, "--daemonize", "no"] + self._extra(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        ok = wait_until(lambda: self.proc.poll() is not None or self.ping(),
                        SERVER_TIMEOUT, 0.01)
        if self.proc.poll() is not None or not ok:
            self.stop()
            raise RuntimeError("redis-server did not start on port %d:\n%s"
                               % (self.port, tail(read_text(self.log_path))))
        return self

    def _extra(self):
        extra = []
        if self.password:
            extra += ["--requirepass", self.password]
        if self.socket_path:
            extra += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        return extra

    def ping(self):
        try:
            r = redis.Redis(host="127.0.0.1", port=self.port,
                            password=self.password,
                            socket_timeout=1, socket_connect_timeout=1)
            try:
                # ours, not another test's server that took the port first
                # (then ours exits on the bind error, a moment later)
                if self.proc is not None:
                    return r.info("server").get("process_id") == self.proc.pid
                return bool(r.ping())
            finally:
                r.close()
        except (redis.exceptions.RedisError, OSError):
            return False

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port,
                           password=self.password,
                           socket_timeout=10, socket_connect_timeout=5)

    def stop(self, sig=signal.SIGTERM):
        rc = stop_process(self.proc, sig)
        return rc

    def running(self):
        return self.proc is not None and self.proc.poll() is None


class Pki:
    """A test CA made with openssl in dir, and certificates it issues.
    EC P-256 keys: quick to make."""

    def __init__(self, workdir, name="ca"):
        self.dir = os.path.join(workdir, "pki-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.ca_key = os.path.join(self.dir, "ca.key")
        self.ca = os.path.join(self.dir, "ca.pem")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", self.ca_key, "-out", self.ca, "-days", "30",
                      "-subj", "/CN=mrb test CA " + name)

    def _openssl(self, *args):
        r = subprocess.run(["openssl"] + list(args), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError("openssl %s failed:\n%s"
                               % (" ".join(args), r.stdout.decode()))

    def issue(self, name, hosts=("localhost", "127.0.0.1"), days=30,
              client=False):
        """(cert, key) paths for a certificate naming hosts (DNS names or IP
        addresses); days=-1 makes one that expired yesterday."""
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        cert = os.path.join(self.dir, name + ".pem")
        ext = os.path.join(self.dir, name + ".ext")
        sans = ",".join(("IP:" if re.match(r"^[0-9.]+$", h) else "DNS:") + h
                        for h in hosts)
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n")
            f.write("extendedKeyUsage=%s\n" % ("clientAuth" if client
                                               else "serverAuth"))
            if sans:
                f.write("subjectAltName=%s\n" % sans)
        self._openssl("req", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                      "-out", csr, "-subj", "/CN=" + name)
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey",
                      self.ca_key, "-CAcreateserial", "-days", str(days),
                      "-extfile", ext, "-out", cert)
        os.chmod(key, 0o600)
        return cert, key


class _Broker:
    """What the brokers below share: a process (proc) writing log_path."""

    proc = None
    log_path = None

    def log(self):
        return read_text(self.log_path)

    def stop(self, sig=signal.SIGTERM):
        return stop_process(self.proc, sig)

    def running(self):
        return self.proc is not None and self.proc.poll() is None


class Mosquitto(_Broker):
    """A mosquitto broker on 127.0.0.1:port, restartable on the same port."""

    def __init__(self, workdir, port=None, users=None, persistence=False,
                 max_queued=None, tls=None, acl_file=None):
        """users: {name: password}; when given, anonymous access is off.
        persistence: keep sessions and queued messages across a restart.
        max_queued: messages queued per client (mosquitto's default: 1000).
        tls: {"cafile", "certfile", "keyfile", optional "require_certificate",
        "tls_version"}: a second listener speaking TLS on tls_port (the test
        clients keep using the plain port).
        acl_file: path of a mosquitto ACL file."""
        self.persistence = persistence
        self.max_queued = max_queued
        self.tls = tls
        self.acl_file = acl_file
        self.tls_port = free_port() if tls else None
        self.port = port or free_port()
        self.dir = os.path.join(workdir, "mosquitto-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.users = users
        self.conf_path = os.path.join(self.dir, "mosquitto.conf")
        self.log_path = os.path.join(self.dir, "mosquitto.log")
        self.out_path = os.path.join(self.dir, "mosquitto.out")
        self.proc = None

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    def start(self):
        with open(self.conf_path, "w") as f:
            f.write("listener %d 127.0.0.1\n" % self.port)
            if self.users:
                pw = os.path.join(self.dir, "passwd")
                open(pw, "w").close()
                for u, p in self.users.items():
                    subprocess.run(["mosquitto_passwd", "-b", pw, u, p],
                                   check=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=10)
                f.write("allow_anonymous false\n")
                f.write("password_file %s\n" % pw)
            else:
                f.write("allow_anonymous true\n")
            f.write("set_tcp_nodelay true\n")
            if self.acl_file:
                f.write("acl_file %s\n" % self.acl_file)
            if self.tls:
                f.write("listener %d 127.0.0.1\n" % self.tls_port)
                for k in ("cafile", "certfile", "keyfile", "tls_version"):
                    if self.tls.get(k):
                        f.write("%s %s\n" % (k, self.tls[k]))
                if self.tls.get("require_certificate"):
                    f.write("require_certificate true\n")
            if self.persistence:
                f.write("persistence true\n")
                f.write("persistence_location %s/\n" % self.dir)
            else:
                f.write("persistence false\n")
            if self.max_queued is not None:
                f.write("max_queued_messages %d\n" % self.max_queued)
            # As root mosquitto would switch to user "mosquitto", which
            # cannot write into our private temp dir; as non-root it is ignored.
            f.write("user root\n")
            f.write("log_dest file %s\n" % self.log_path)
            for t in ("error", "warning", "notice", "information"):
                f.write("log_type %s\n" % t)
            f.write("connection_messages true\n")
        self._log_from = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", self.conf_path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        ok = wait_until(lambda: self.proc.poll() is not None or self._accepts(),
                        SERVER_TIMEOUT, 0.01)
        if self.proc.poll() is not None or not ok:
            self.stop()
            raise RuntimeError("mosquitto did not start on port %d:\n%s\n%s"
                               % (self.port, tail(read_text(self.out_path)),
                                  tail(read_text(self.log_path))))
        return self

    def _accepts(self):
        # ours listens (its log says so since this start), not another
        # test's broker that took the port first
        try:
            with open(self.log_path, "rb") as f:
                f.seek(getattr(self, "_log_from", 0))
                if b"listen socket on port %d." % self.port not in f.read():
                    return False
        except OSError:
            return False  # not written yet
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


def _node_modules():
    return os.environ.get("MRB_NODE_MODULES") or os.path.join(
        REPO, "build", "_tools", "node_modules")


class Aedes(_Broker):
    """An MQTT 3.1.1-only broker (aedes, Node.js) on 127.0.0.1:port, for the
    protocol fallback test: mosquitto always speaks MQTT 5. aedes comes from
    npm: scripts/test.sh installs it into build/_tools/node_modules
    (MRB_NODE_MODULES names another directory)."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "aedes_broker.js")

    def __init__(self, workdir, port=None):
        self.port = port or free_port()
        self.dir = os.path.join(workdir, "aedes-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "aedes.log")

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    @staticmethod
    def missing():
        """Why aedes cannot run here, or None."""
        node = shutil.which("node") or shutil.which("nodejs")
        if not node:
            return "node not found (apt-get install nodejs; scripts/test.sh does)"
        mods = _node_modules()
        if not os.path.isdir(os.path.join(mods, "aedes")):
            return ("aedes not found in %s (npm install --prefix build/_tools "
                    "aedes; scripts/test.sh does)" % mods)
        return None

    def start(self):
        node = shutil.which("node") or shutil.which("nodejs")
        env = dict(os.environ, NODE_PATH=_node_modules())
        before = self.log().count("listening on")  # earlier starts' lines
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [node, self.SCRIPT, str(self.port)], cwd=self.dir, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        ok = wait_until(lambda: self.proc.poll() is not None or
                        self.log().count("listening on") > before,
                        SERVER_TIMEOUT, 0.02)
        if self.proc.poll() is not None or not ok:
            self.stop()
            raise RuntimeError("aedes did not start on port %d:\n%s"
                               % (self.port, tail(self.log())))
        return self


# --------------------------------------------------------------------------
# clients

# props: the MQTT 5 user properties, as a dict
MqttMsg = collections.namedtuple("MqttMsg", "topic payload qos retain t props",
                                 defaults=(None,))
RedisMsg = collections.namedtuple("RedisMsg", "channel data pattern t")


class MqttClient:
    """A paho client (MQTT 5 or 3.1.1) that records every message it gets."""

    def __init__(self, port, protocol=5, client_id=None, name="c",
                 username=None, password=None):
        self.port = port
        self.client_id = client_id or unique("test-" + name)
        if protocol == 5:
            self.c = mqtt.Client(client_id=self.client_id,
                                 protocol=mqtt.MQTTv5)
        else:
            self.c = mqtt.Client(client_id=self.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=True)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.protocol = protocol
        self.cond = threading.Condition()
        self.messages = []
        self.connected = False
        self.connect_rc = None
        self.acks = {}
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect

    # paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, rc, properties=None):
        with self.cond:
            self.connect_rc = rc
            self.connected = (rc == 0)
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        with self.cond:
            self.connected = False
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted, properties=None):
        codes = []
        for g in granted:
            codes.append(g.value if hasattr(g, "value") else int(g))
        with self.cond:
            self.acks[mid] = codes
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        props = getattr(msg, "properties", None)
        user = dict(getattr(props, "UserProperty", None) or [])
        m = MqttMsg(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
                    time.monotonic(), user)
        with self.cond:
            self.messages.append(m)
            self.cond.notify_all()

    # API
    def connect(self, timeout=None):
        timeout = timeout or SERVER_TIMEOUT
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        with self.cond:
            self.cond.wait_for(lambda: self.connect_rc is not None, timeout)
        if not self.connected:
            self.close()
            raise AssertionError("MQTT client %s could not connect to port %d "
                                 "(rc=%r)" % (self.client_id, self.port,
                                              self.connect_rc))
        return self

    def subscribe(self, topic, qos=1, timeout=None):
        timeout = timeout or DELIVERY_TIMEOUT
        rc, mid = self.c.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError("subscribe %r failed: rc=%d" % (topic, rc))
        with self.cond:
            self.cond.wait_for(lambda: mid in self.acks, timeout)
            codes = self.acks.get(mid)
        if codes is None:
            raise AssertionError("no SUBACK for %r within %.1fs" % (topic, timeout))
        if any(c >= 0x80 for c in codes):
            raise AssertionError("subscription to %r refused: %r" % (topic, codes))
        return self

    def publish(self, topic, payload, qos=1, retain=False, timeout=None):
        timeout = timeout or DELIVERY_TIMEOUT
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError("publish to %r failed: rc=%d" % (topic, info.rc))
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError("publish to %r not acknowledged within %.1fs"
                                 % (topic, timeout))

    def snapshot(self):
        with self.cond:
            return list(self.messages)

    def count(self, topic=None, payload=None):
        n = 0
        for m in self.snapshot():
            if topic is not None and m.topic != topic:
                continue
            if payload is not None and m.payload != payload:
                continue
            n += 1
        return n

    def wait_for(self, pred, timeout=None):
        """First message for which pred(msg) is true, or None."""
        timeout = timeout or DELIVERY_TIMEOUT
        found = []

        def check():
            for m in self.messages:
                if pred(m):
                    found.append(m)
                    return True
            return False
        with self.cond:
            self.cond.wait_for(check, timeout)
        return found[0] if found else None

    def summary(self, skip_prefix="bridge/"):
        return [(m.topic, describe_payload(m.payload)) for m in self.snapshot()
                if not m.topic.startswith(skip_prefix)]

    def close(self):
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


class RedisSub:
    """A Redis pub/sub connection (SUBSCRIBE/PSUBSCRIBE) that records messages
    in a background thread.  The constructor returns only after Redis has
    confirmed every subscription."""

    def __init__(self, port, channels=(), patterns=(), timeout=None,
                 password=None):
        timeout = timeout or DELIVERY_TIMEOUT
        self.port = port
        self.cond = threading.Condition()
        self.messages = []
        self.error = None
        self._stop = threading.Event()
        self.r = redis.Redis(host="127.0.0.1", port=port, password=password,
                             socket_connect_timeout=5)
        self.ps = self.r.pubsub()
        if channels:
            self.ps.subscribe(*channels)
        if patterns:
            self.ps.psubscribe(*patterns)
        need = len(channels) + len(patterns)
        got = 0
        deadline = time.monotonic() + timeout
        while got < need and time.monotonic() < deadline:
            m = self.ps.get_message(timeout=0.1)
            if m is None:
                continue
            if m["type"] in ("subscribe", "psubscribe"):
                got += 1
            else:
                self._record(m)
        if got < need:
            self.ps.close()
            raise AssertionError("Redis did not confirm subscriptions %r %r"
                                 % (channels, patterns))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _record(self, m):
        if m["type"] not in ("message", "pmessage"):
            return
        rm = RedisMsg(m["channel"], m["data"], m.get("pattern"),
                      time.monotonic())
        with self.cond:
            self.messages.append(rm)
            self.cond.notify_all()

    def _run(self):
        while not self._stop.is_set():
            try:
                m = self.ps.get_message(timeout=0.1)
            except Exception as e:  # server went away
                self.error = e
                return
            if m is not None:
                self._record(m)

    def snapshot(self):
        with self.cond:
            return list(self.messages)

    def count(self, channel=None, data=None):
        if isinstance(channel, str):
            channel = channel.encode()
        n = 0
        for m in self.snapshot():
            if channel is not None and m.channel != channel:
                continue
            if data is not None and m.data != data:
                continue
            n += 1
        return n

    def summary(self):
        return [(m.channel, describe_payload(m.data)) for m in self.snapshot()]

    def close(self):
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(2)
        try:
            self.ps.close()
        except Exception:
            pass
        try:
            self.r.close()
        except Exception:
            pass


# --------------------------------------------------------------------------
# the bridge process

def config_shutdown_timeout_ms(args):
    """The shutdown_timeout_ms a bridge started with args runs with: from the
    configuration file of -c/--config (the command line has no option for
    it), else the bridge's default. An unreadable or invalid file gives the
    default (such a bridge does not run long)."""
    path = None
    args = list(args)
    for i, a in enumerate(args):
        if a in ("-c", "--config") and i + 1 < len(args):
            path = args[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        elif a.startswith("-c") and len(a) > 2 and not a.startswith("--"):
            path = a[2:]
    if path is None:
        return SHUTDOWN_TIMEOUT_MS
    try:
        with open(path) as f:
            cfg = json.load(f)
        v = cfg.get("shutdown_timeout_ms", SHUTDOWN_TIMEOUT_MS)
        return int(v) if isinstance(v, int) and v >= 0 else SHUTDOWN_TIMEOUT_MS
    except (OSError, ValueError, AttributeError):
        return SHUTDOWN_TIMEOUT_MS


class Bridge:
    def __init__(self, workdir, args, name="bridge", env=None,
                 shutdown_timeout_ms=None):
        """env: variables added to the bridge's environment.
        shutdown_timeout_ms: what the bridge runs with, for its exit bound
        (default: read from its -c configuration file, else 5000)."""
        self.name = name
        self.stopped_by_test = False
        self.shutdown_timeout_ms = (
            shutdown_timeout_ms if shutdown_timeout_ms is not None
            else config_shutdown_timeout_ms(args))
        self.stop_took = None
        self.stop_sent = None   # (signal, time) of send_stop
        self.exited_at = None   # when the bridge exited after send_stop
        self.args = [BRIDGE] + list(args)
        self.err_path = os.path.join(workdir, "%s.stderr" % name)
        self.out_path = os.path.join(workdir, "%s.stdout" % name)
        full_env = dict(os.environ, **(env or {}))
        with open(self.err_path, "ab") as err, open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, env=full_env)

    def log(self):
        return read_text(self.err_path)

    def mark(self):
        """Position in the log; pass as since= to look only at later lines."""
        return len(self.log())

    def lines(self, since=0):
        return self.log()[since:].splitlines()

    def count(self, pattern, since=0):
        if isinstance(pattern, str):
            return sum(1 for l in self.lines(since) if pattern in l)
        return sum(1 for l in self.lines(since) if pattern.search(l))

    def wait_log(self, pattern, timeout, since=0, count=1):
        """True once `count` log lines after `since` contain pattern
        (substring or compiled regex); False on timeout or if the bridge
        exited without logging it."""
        def check():
            if self.count(pattern, since) >= count:
                return True
            if self.proc.poll() is not None:
                return "exited"
            return False
        r = wait_until(check, timeout, 0.02)
        return r is True or self.count(pattern, since) >= count

    def wait_ready(self, timeout=None, since=0):
        timeout = timeout or READY_TIMEOUT
        if not self.wait_log("ready:", timeout, since):
            raise AssertionError(
                "bridge %s not ready within %.1fs (exit code %r); args %r\n"
                "--- stderr tail ---\n%s" % (self.name, timeout,
                                             self.proc.poll(), self.args,
                                             tail(self.log())))
        return self

    def alive(self):
        return self.proc.poll() is None

    def exit_bound(self):
        """Seconds from SIGTERM/SIGINT to the exit that the bridge may take:
        shutdown_timeout_ms + MQTT_CLOSE_S + EXIT_MARGIN (see above)."""
        return self.shutdown_timeout_ms / 1000.0 + MQTT_CLOSE_S + EXIT_MARGIN

    def send_stop(self, sig=signal.SIGTERM):
        """Send the stop signal sig now and return at once, for a test that
        looks at the bridge while it shuts down; stop() then waits for that
        exit (no second signal) and checks it, the exit bound counted from
        this signal, also when the bridge had exited before stop() (a
        thread notes when); the test's cleanup does if stop() was not
        called."""
        def reap():
            self.proc.wait()
            self.exited_at = time.monotonic()
        threading.Thread(target=reap, daemon=True).start()
        self.stop_sent = (sig, time.monotonic())
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=None, expect=0):
        """Send sig and wait for the exit; SIGKILL after timeout (default:
        EXIT_TIMEOUT, at least the exit bound + EXIT_MARGIN).
        Returns (exit code, in_time): in_time is True if the bridge exited
        by itself within exit_bound() (and before timeout). After
        send_stop: no signal, the one sent then is the one checked.

        For SIGTERM and SIGINT the stop is checked: unless the bridge exits
        with status `expect` (default 0) in time, AssertionError (with the
        log tail). expect=None: not checked, the caller judges the result
        (for other signals it is never checked)."""
        self.stopped_by_test = True
        if self.stop_sent is not None:
            sig = self.stop_sent[0]
        code, in_time = self._stop(sig, timeout)
        if expect is not None and sig in STOP_SIGNALS:
            problem = self.stop_problem(sig, code, in_time, expect)
            if problem:
                raise AssertionError(problem + "\n" + self.tail(30))
        return code, in_time

    def stop_problem(self, sig, code, in_time, expect=0):
        """What is wrong with a stop by sig that gave (code, in_time), or
        None."""
        name = signal.Signals(sig).name
        if not in_time:
            return ("bridge %s did not exit within %.1f s of %s (exit bound: "
                    "shutdown_timeout_ms %d + %.2f s for the MQTT disconnect + "
                    "%.1f s margin); took %s, exit status %r"
                    % (self.name, self.exit_bound(), name,
                       self.shutdown_timeout_ms, MQTT_CLOSE_S, EXIT_MARGIN,
                       "%.1f s" % self.stop_took if self.stop_took is not None
                       else "?", code))
        if code != expect:
            return ("bridge %s exited with status %r after %s, expected %r"
                    % (self.name, code, name, expect))
        return None

    def _stop(self, sig=signal.SIGTERM, timeout=None):
        """Send sig, wait; SIGKILL after timeout. (exit code, in_time); the
        time it took is in stop_took."""
        bound = self.exit_bound()
        if timeout is None:
            timeout = max(EXIT_TIMEOUT, bound + EXIT_MARGIN)
        if self.stop_sent is not None:
            t0 = self.stop_sent[1]
            try:
                self.proc.wait(max(0.0, t0 + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.stop_took = None
                return self.proc.returncode, False
            wait_until(lambda: self.exited_at is not None, 5)
            self.stop_took = (self.exited_at or time.monotonic()) - t0
            return self.proc.returncode, self.stop_took <= bound
        if self.proc.poll() is not None:
            self.stop_took = 0.0
            return self.proc.returncode, True
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
            self.stop_took = time.monotonic() - t0
            return self.proc.returncode, self.stop_took <= bound
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self.stop_took = None
            return self.proc.returncode, False

    def kill(self):
        self.stopped_by_test = True
        return stop_process(self.proc, signal.SIGKILL)

    def sanitizer_report(self):
        log = self.log()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                       "UndefinedBehaviorSanitizer", "ThreadSanitizer"):
            if marker in log:
                return marker
        # valgrind -q prints only what it found, each line "==PID== ..."; and
        # the valgrind-bridge wrapper makes it exit 99 then (also for a
        # bridge the test stopped itself, whose exit code it may not check)
        if re.search(r"^==\d+== ", log, re.M):
            return "valgrind"
        if self.proc.poll() == 99:
            return "exit status 99 (valgrind's error exit code)"
        return None

    def cleanup_check(self):
        """Cleanup of every bridge a test started: a bridge the test did not
        stop itself must still be running, must exit 0 within its exit
        bound of SIGTERM (of the signal of send_stop, if the test sent
        one), and no sanitizer may have complained.  Raising
        here makes unittest report the test as an ERROR."""
        problems = []
        if not self.stopped_by_test:
            if self.stop_sent is None and self.proc.poll() is not None:
                problems.append("bridge %s exited by itself during the test "
                                "with status %r" % (self.name,
                                                    self.proc.returncode))
            else:
                rc, in_time = self._stop()
                problem = self.stop_problem(
                    self.stop_sent[0] if self.stop_sent else signal.SIGTERM,
                    rc, in_time)
                if problem:
                    problems.append(problem + " (at the test's cleanup)")
        marker = self.sanitizer_report()
        if marker:
            problems.append("bridge %s: sanitizer report (%s) on stderr"
                            % (self.name, marker))
        if problems:
            raise AssertionError("; ".join(problems) + "\n" + self.tail(30))

    def tail(self, n=40):
        return tail(self.log(), n)


def log_message(line):
    """The <message> part of '<ISO time> <level> <message>'."""
    parts = line.split(" ", 2)
    return parts[2] if len(parts) == 3 else line


def stats_lines(bridge):
    """Messages of the exit statistics line(s): found leniently (a message
    starting with "stats" that carries mqtt_in=), so that the counters can be
    checked even if the exact "stats:" prefix is wrong; assert the prefix
    separately with assert_stats_prefix."""
    return [log_message(l) for l in bridge.lines()
            if log_message(l).startswith("stats") and "mqtt_in=" in l]


def stats_counters(msg):
    return dict(re.findall(r"(\w+)=(\d+)", msg))


def run_bridge(args, timeout=10, env=None):
    """Run the bridge to completion (for --check, --help, bad configs);
    env: variables added to its environment."""
    return subprocess.run([BRIDGE] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout * SCALE,
                          env=dict(os.environ, **(env or {})))


def bridge_has_tls():
    """Was the bridge built WITH_TLS? (--version says "TLS: yes")."""
    r = run_bridge(["--version"])
    return b"TLS: yes" in r.stdout


# --------------------------------------------------------------------------
# test base class

class BridgeTestCase(unittest.TestCase):
    """Base class: private temp dir, servers, bridges and clients that are all
    cleaned up (by PID) after each test; on failure the bridges' and brokers'
    log tails are printed."""

    maxDiff = None

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="mrb-it-")
        self._bridges = []
        self._brokers = []
        self._redises = []
        self._aedes = []
        self._diag = []
        self.addCleanup(self._cleanup_workdir)

    def _cleanup_workdir(self):
        for b in self._bridges:
            self._diag.append("--- bridge %s: %s\n--- stderr (exit code %r):\n%s"
                              "\n--- stdout:\n%s"
                              % (b.name, " ".join(b.args), b.proc.returncode,
                                 tail(b.log(), 60),
                                 tail(read_text(b.out_path), 20)))
        for m in self._brokers:
            self._diag.append("--- mosquitto :%d log:\n%s"
                              % (m.port, tail(m.log(), 25)))
        for r in self._redises:
            self._diag.append("--- redis :%d log:\n%s"
                              % (r.port, tail(read_text(r.log_path), 10)))
        for a in self._aedes:
            self._diag.append("--- aedes :%d log:\n%s" % (a.port, tail(a.log(), 25)))
        if os.environ.get("MRB_KEEP_TMP"):
            self._diag.append("--- kept %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before and self._diag_ok():
            sys.stderr.write("\n===== diagnostics for %s =====\n%s\n"
                             "===== end of diagnostics =====\n"
                             % (self.id(), "\n".join(self._diag)))
            sys.stderr.flush()
        return out

    def _diag_ok(self):
        return hasattr(self, "_diag") and bool(self._diag)

    # servers ------------------------------------------------------------
    def start_redis(self, port=None, start=True, **kw):
        r = RedisServer(self.workdir, port, **kw)
        self._redises.append(r)
        self.addCleanup(r.stop)
        if start:
            r.start()
        return r

    def start_mosquitto(self, port=None, start=True, **kw):
        m = Mosquitto(self.workdir, port, **kw)
        self._brokers.append(m)
        self.addCleanup(m.stop)
        if start:
            m.start()
        return m

    def start_aedes(self, port=None):
        a = Aedes(self.workdir, port)
        self._aedes.append(a)
        self.addCleanup(a.stop)
        return a.start()

    # bridge -------------------------------------------------------------
    def start_bridge(self, mqtt_port=None, redis_port=None, *extra,
                     bridge_id=None, name=None, ready=True, env=None,
                     shutdown_timeout_ms=None):
        """Start the bridge with --mqtt/--redis/--id for the given ports
        (None: leave out) plus the extra arguments; env: added variables;
        shutdown_timeout_ms: see Bridge (default: from its -c file)."""
        args = []
        if mqtt_port is not None:
            args += ["--mqtt", "mqtt://127.0.0.1:%d" % mqtt_port]
        if redis_port is not None:
            args += ["--redis", "redis://127.0.0.1:%d" % redis_port]
        if bridge_id is not None:
            args += ["--id", bridge_id]
        args += list(extra)
        b = Bridge(self.workdir, args, name or "bridge%d" % len(self._bridges),
                   env=env, shutdown_timeout_ms=shutdown_timeout_ms)
        self._bridges.append(b)
        self.addCleanup(b.cleanup_check)
        if ready:
            b.wait_ready()
        return b

    def write_config(self, content, name="cfg.json"):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            if isinstance(content, str):
                f.write(content)
            else:
                json.dump(content, f, indent=2)
        return path

    # clients ------------------------------------------------------------
    def mqtt_client(self, port, *topics, protocol=5, qos=1, name="c",
                    client_id=None, username=None, password=None):
        c = MqttClient(port, protocol=protocol, client_id=client_id, name=name,
                       username=username, password=password)
        c.connect()
        self.addCleanup(c.close)
        for t in topics:
            c.subscribe(t, qos)
        return c

    def redis_sub(self, port, channels=(), patterns=(), password=None):
        s = RedisSub(port, channels, patterns, password=password)
        self.addCleanup(s.close)
        return s

    def redis_client(self, port, password=None, db=0):
        r = redis.Redis(host="127.0.0.1", port=port, password=password, db=db,
                        socket_timeout=10, socket_connect_timeout=5)
        self.addCleanup(r.close)
        return r

    def retained(self, port, topic, want, timeout=None, interval=0.05, wait=0.3):
        """Poll (bounded) with fresh subscribers on the broker at port until
        the retained message on topic is `want` (bytes, or a function of the
        message that says so); returns the last retained message seen (or
        None)."""
        timeout = timeout or DELIVERY_TIMEOUT
        ok = want if callable(want) else (lambda m: m.payload == want)
        last = [None]

        def check():
            c = MqttClient(port, name="retained")
            try:
                c.connect()
                c.subscribe(topic)
                m = c.wait_for(lambda m: m.topic == topic, wait)
            finally:
                c.close()
            if m is None or not m.retain:
                return False
            last[0] = m
            return ok(m)
        wait_until(check, timeout, interval)
        return last[0]

    # assertions ---------------------------------------------------------
    def assert_once_each(self, checks, what, timeout=None, quiet=QUIET,
                         subscribers=()):
        """checks: {label: zero-argument function returning a count}.
        Waits (bounded) until every count is >= 1, then for a quiet period,
        then requires every count to be exactly 1."""
        timeout = timeout or DELIVERY_TIMEOUT
        wait_until(lambda: all(fn() >= 1 for fn in checks.values()), timeout)
        time.sleep(quiet)
        counts = {label: fn() for label, fn in checks.items()}
        if any(c != 1 for c in counts.values()):
            self.fail("%s: expected exactly one copy at each place, got %s%s"
                      % (what, counts, self._seen(subscribers)))

    def assert_none(self, checks, what, quiet=QUIET, subscribers=()):
        """checks: {label: count function}; after a quiet period all are 0."""
        time.sleep(quiet)
        counts = {label: fn() for label, fn in checks.items()}
        if any(c != 0 for c in counts.values()):
            self.fail("%s: expected nothing, got %s%s"
                      % (what, counts, self._seen(subscribers)))

    def _seen(self, subscribers):
        parts = []
        for s in subscribers:
            parts.append("\n  %s saw: %s" % (getattr(s, "client_id", "redis-sub"),
                                              s.summary()[-20:]))
        return "".join(parts)

    def exit_stats(self, bridge):
        """(stats message, counters) of a bridge that has exited."""
        msgs = stats_lines(bridge)
        self.assertEqual(len(msgs), 1, "expected one stats line at exit:\n%s"
                         % bridge.tail())
        return msgs[0], stats_counters(msgs[0])

    def assert_stats_prefix(self, msg):
        self.assertTrue(msg.startswith("stats:"), "the exit statistics line "
                        "must start with 'stats:' (contract), got %r" % msg)

    def assert_log(self, bridge, pattern, timeout=None, since=0, what=""):
        timeout = timeout or DELIVERY_TIMEOUT
        if not bridge.wait_log(pattern, timeout, since):
            self.fail("%sexpected a bridge log line matching %r within %.1fs; "
                      "log since mark:\n%s"
                      % (what + ": " if what else "",
                         getattr(pattern, "pattern", pattern), timeout,
                         tail(bridge.log()[since:])))


def with_servers(**options):
    """Decorator of one test method of a ServersTestCase: its own options
    for the servers its setUp starts, instead of the class's SERVERS (same
    keys: redis=, mosquitto=)."""
    def mark(test):
        test.servers = options
        return test
    return mark


class ServersTestCase(BridgeTestCase):
    """Base case of a test with a Redis and an MQTT broker: setUp starts a
    redis-server (self.rs) and a mosquitto (self.mq), each on a free
    127.0.0.1 port in the test's temp dir and stopped by PID at its cleanup,
    and makes self.r, a Redis client of self.rs (with its password; it
    connects when first used).

    SERVERS, a class attribute, says how: {"redis": keyword arguments of
    start_redis (password=, unixsocket=, aof=, start=False: made, not
    started), "mosquitto": those of start_mosquitto (users=, tls=,
    acl_file=, persistence=, max_queued=, start=False)}; a missing key is
    {}, None for one that the test does not want (self.rs / self.mq and
    self.r are None then). @with_servers(...) on a test method replaces
    the class's SERVERS for that test."""

    SERVERS = {}

    def setUp(self):
        super().setUp()
        method = getattr(self, self._testMethodName)
        options = getattr(method, "servers", self.SERVERS)
        redis_kw = options.get("redis", {})
        mosquitto_kw = options.get("mosquitto", {})
        self.rs = self.mq = self.r = None
        if redis_kw is not None:
            self.rs = self.start_redis(**redis_kw)
            self.r = self.redis_client(self.rs.port, password=self.rs.password)
        if mosquitto_kw is not None:
            self.mq = self.start_mosquitto(**mosquitto_kw)


def main():
    """Entry point of every test file: takes --bridge PATH (or MRB_BRIDGE),
    passes the rest to unittest.main, exits non-zero on failure."""
    global BRIDGE
    bridge = os.environ.get("MRB_BRIDGE")
    rest = [sys.argv[0]]
    argv = sys.argv[1:]
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--bridge" and i + 1 < len(argv):
            bridge = argv[i + 1]
            i += 2
            continue
        if a.startswith("--bridge="):
            bridge = a.split("=", 1)[1]
            i += 1
            continue
        rest.append(a)
        i += 1
    BRIDGE = os.path.abspath(bridge or DEFAULT_BRIDGE)
    if not (os.path.isfile(BRIDGE) and os.access(BRIDGE, os.X_OK)):
        sys.stderr.write("bridge binary not found or not executable: %s "
                         "(use --bridge PATH or MRB_BRIDGE)\n" % BRIDGE)
        sys.exit(2)
    for tool in ("redis-server", "mosquitto"):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            sys.stderr.write("%s not found on PATH\n" % tool)
            sys.exit(2)
    # mosquitto lives in /usr/sbin, which may be missing from PATH
    if "/usr/sbin" not in os.environ.get("PATH", "").split(":"):
        os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"
    unittest.main(module="__main__", argv=rest, verbosity=2)


# --------------------------------------------------------------------------
# servers with more settings (bench/run.py)

class RedisServerArgs(RedisServer):
    """A RedisServer started with more redis-server arguments (args), e.g.
    ["--maxclients", "20000"]."""

    def __init__(self, workdir, port=None, args=(), **kw):
        super().__init__(workdir, port, **kw)
        self.more_args = list(args)

    def _extra(self):
        return super()._extra() + self.more_args


class MosquittoConf(Mosquitto):
    """A plain Mosquitto (anonymous, set_tcp_nodelay true, no persistence)
    whose configuration ends with the lines `extra`: e.g. "sys_interval 1",
    or a bridge's "connection" section. Only errors and warnings are logged
    (a benchmark's 10,000 connections would fill the log: connection
    messages off; information on, for the listen line that _accepts needs). The options of
    Mosquitto (users, tls, ...) are not taken."""

    def __init__(self, workdir, port=None, extra=()):
        super().__init__(workdir, port)
        self.extra = list(extra)

    def start(self):
        with open(self.conf_path, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\n"
                    "set_tcp_nodelay true\npersistence false\nuser root\n"
                    "log_dest file %s\nlog_type error\nlog_type warning\n"
                    # "Opening ... listen socket" is information: _accepts
                    # looks for it; no line per connection
                    "log_type information\nconnection_messages false\n"
                    % (self.port, self.log_path))
            f.write("".join(line + "\n" for line in self.extra))
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", self.conf_path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if not wait_until(lambda: self.proc.poll() is not None or self._accepts(),
                          SERVER_TIMEOUT, 0.01) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("mosquitto did not start on port %d:\n%s\n%s"
                               % (self.port, tail(read_text(self.out_path)),
                                  tail(read_text(self.log_path))))
        return self
