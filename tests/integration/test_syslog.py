#!/usr/bin/env python3
"""--syslog: lines go to syslog(3) with ident mqtt-redis-bridge, facility
daemon, the PID, our levels as syslog priorities, and no password.

glibc's syslog() always writes to /dev/log, so the test needs that path for a
datagram socket of its own:
  - nothing at /dev/log (CI: a fresh root machine without a syslog daemon):
    it binds its socket there and removes it afterwards;
  - /dev/log taken (a syslog daemon, or another run of this test) and root:
    the test runs again in a private mount namespace (unshare --mount
    --propagation private) and bind-mounts a socket of its own over
    /dev/log there; nothing outside the namespace sees it. (If another run
    that bound /dev/log directly removes it meanwhile, the kernel takes the
    mount away too: the test says so when its lines stop arriving.)
  - neither possible (not root, no unshare, no CAP_SYS_ADMIN): SKIPPED; it
    says why on stderr and the file exits 77, which ctest shows as
    "Skipped" (SKIP_RETURN_CODE) and scripts/test.sh counts as skipped."""

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import READY_TIMEOUT, ServersTestCase, wait_until, with_servers  # noqa: E402

DEV_LOG = "/dev/log"
NS_ENV = "MRB_SYSLOG_NS"   # "1": this process runs in its own mount namespace
UNSHARE = ["unshare", "--mount", "--propagation", "private"]
LOG_DAEMON = 3 << 3
PRI = {"err": 3, "warning": 4, "info": 6, "debug": 7}
SKIPPED = []

# "<PRI>Mmm dd hh:mm:ss ident[pid]: message" (glibc, RFC 3164 style)
LINE_RE = re.compile(r"^<(\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d ([^\[]+)\[(\d+)\]: (.*)$",
                     re.S)


def in_own_namespace():
    return os.environ.get(NS_ENV) == "1"


def namespace_usable():
    """Can we make a private mount namespace and bind-mount in it? (root
    with CAP_SYS_ADMIN and util-linux's unshare and mount.)"""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    try:
        r = subprocess.run(UNSHARE + ["mount", "--bind", "/dev/null", "/dev/null"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


class DevLog:
    """A datagram socket at /dev/log that records what arrives: bound at
    /dev/log itself, or (over=True, in a private mount namespace) bound in
    a private directory and bind-mounted over the /dev/log there is."""

    def __init__(self, over=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.mounted = False
        self.tmp = None
        if not over:
            self.sock.bind(DEV_LOG)  # raises if it exists or we may not
        else:
            self.tmp = tempfile.mkdtemp(prefix="mrb-devlog-")
            path = os.path.join(self.tmp, "log")
            self.sock.bind(path)
            r = subprocess.run(["mount", "--bind", path, DEV_LOG],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=10)
            if r.returncode != 0:
                self._free()
                raise OSError("mount --bind %s %s: %s"
                              % (path, DEV_LOG, r.stdout.decode().strip()))
            self.mounted = True
        self.ino = os.stat(DEV_LOG).st_ino
        self.sock.settimeout(0.1)
        self.lock = threading.Lock()
        self.lines = []
        self.quit = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.quit:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.lines.append(data.decode("utf-8", "replace"))

    def snapshot(self):
        with self.lock:
            return list(self.lines)

    def still_ours(self):
        """Is /dev/log still our socket? (A bind mount goes away if another
        process removes the /dev/log it covers.)"""
        try:
            return os.stat(DEV_LOG).st_ino == self.ino
        except OSError:
            return False

    def _free(self):
        self.sock.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def close(self):
        self.quit = True
        self.thread.join(5)
        if self.mounted:
            subprocess.run(["umount", DEV_LOG], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10)
            self._free()
            return
        self._free()
        try:  # remove only our own socket
            st = os.lstat(DEV_LOG)
            if st.st_ino == self.ino and stat.S_ISSOCK(st.st_mode):
                os.unlink(DEV_LOG)
        except FileNotFoundError:
            pass


SECRET = "Syslog-Secret-42"  # Redis's password


class SyslogTest(ServersTestCase):
    def setUp(self):
        # /dev/log first: no servers for a test that is skipped
        why = None
        try:
            if not os.path.lexists(DEV_LOG):
                try:
                    self.devlog = DevLog()
                except OSError:
                    if not (in_own_namespace() and os.path.lexists(DEV_LOG)):
                        raise
                    # another run took it meanwhile: cover it here
                    self.devlog = DevLog(over=True)
            elif in_own_namespace():
                self.devlog = DevLog(over=True)
            else:
                why = ("%s exists (a syslog daemon, or another run of this "
                       "test) and no private mount namespace can cover it "
                       "(needs root, unshare and mount): the test needs its "
                       "own /dev/log; check by hand with journalctl -t "
                       "mqtt-redis-bridge" % DEV_LOG)
        except OSError as e:
            why = "cannot bind %s: %s (run as root)" % (DEV_LOG, e)
        if why:
            SKIPPED.append(why)
            sys.stderr.write("SKIPPED test_syslog: %s\n" % why)
            self.skipTest(why)
        self.addCleanup(self.devlog.close)
        super().setUp()

    def ours(self):
        """The raw lines our bridges sent. /dev/log is the machine's: while
        the test owns it, other processes (stunnel in a TLS test running
        beside this one, say) log there too; their lines are not ours to
        check. A line is ours if it names our ident; each must parse, with
        that ident and a PID."""
        out = []
        for raw in self.devlog.snapshot():
            if "mqtt-redis-bridge" not in raw:
                continue
            m = LINE_RE.match(raw)
            self.assertIsNotNone(m, "not a syslog line: %r" % raw)
            self.assertEqual(m.group(2), "mqtt-redis-bridge", raw)
            out.append(raw)
        return out

    def parsed(self):
        out = []
        for raw in self.ours():
            m = LINE_RE.match(raw)
            out.append((int(m.group(1)), m.group(2), int(m.group(3)),
                        m.group(4)))
        return out

    def wait_syslog(self, pri, text, timeout):
        def found():
            return [l for l in self.parsed()
                    if l[0] == LOG_DAEMON | PRI[pri] and text in l[3]]
        r = wait_until(found, timeout)
        if not r:
            self.fail("no syslog line of priority daemon.%s containing %r "
                      "within %.1fs%s; got:\n%s"
                      % (pri, text, timeout,
                         "" if self.devlog.still_ours() else
                         " (and %s is no longer our socket: another process "
                         "removed or replaced it)" % DEV_LOG,
                         "\n".join(self.devlog.snapshot())))
        return r[0]

    # the broker down at first: a warning
    @with_servers(redis={"password": SECRET}, mosquitto={"start": False})
    def test_priorities_ident_pid_no_password(self):
        secret = SECRET
        b = self.start_bridge(None, None, "--syslog", "-v",
                              "--mqtt", self.mq.url,
                              "--redis", "redis://default:%s@127.0.0.1:%d"
                              % (secret, self.rs.port), ready=False)
        self.wait_syslog("warning", "mqtt: cannot connect to %s" % self.mq.url,
                         READY_TIMEOUT)
        self.mq.start()
        ready = self.wait_syslog("info", "ready: ", READY_TIMEOUT)
        self.assertEqual(ready[1], "mqtt-redis-bridge")
        self.assertEqual(ready[2], b.proc.pid)
        self.assertIn("redis://default:***@127.0.0.1:%d" % self.rs.port, ready[3])
        self.assertFalse(ready[3].endswith("\n"), "a line ends without a "
                         "newline of ours: %r" % ready[3])
        # -v: debug lines are there too, as daemon.debug
        self.assertTrue(any(l[0] == LOG_DAEMON | PRI["debug"]
                            for l in self.parsed()), self.devlog.snapshot())
        # a wrong password: one error line, password not in it
        b2 = self.start_bridge(self.mq.port, None, "--syslog", "--id", "b2",
                               "--redis", "redis://default:wrong-%s@127.0.0.1:%d"
                               % (secret, self.rs.port), ready=False, name="b2")
        err = self.wait_syslog("err", "redis: redis://default:***@127.0.0.1:%d "
                               "refused the" % self.rs.port, READY_TIMEOUT)
        self.assertEqual(err[2], b2.proc.pid)
        b2.stop()
        b.stop()
        self.wait_syslog("info", "stats: ", READY_TIMEOUT)
        for raw in self.devlog.snapshot():  # every line, ours or not
            self.assertNotIn(secret, raw)
        pids = {b.proc.pid, b2.proc.pid}
        lines = self.ours()
        self.assertTrue(lines)
        for raw in lines:
            m = LINE_RE.match(raw)
            self.assertEqual(int(m.group(1)) & ~7, LOG_DAEMON, raw)
            self.assertIn(int(m.group(3)), pids, raw)
            # no time stamp or level of our own in front of the message
            self.assertIsNone(re.match(r"\d{4}-\d\d-\d\dT", m.group(4)), raw)
            self.assertIsNone(re.match(r"(error|warning|info|debug) ",
                                       m.group(4)), raw)
        # nothing logged to stderr while logging to syslog
        self.assertNotIn("ready:", b.log())
        self.assertEqual(b.log().strip(), "", b.log())


def run_in_namespace():
    """/dev/log is taken: run this file again in a private mount namespace
    (where setUp covers /dev/log with a socket of its own); its exit status
    (77: skipped) is ours. False if that is not possible here."""
    if in_own_namespace() or not os.path.lexists(DEV_LOG) or not namespace_usable():
        return False
    sys.stderr.write("test_syslog: %s exists (a syslog daemon?): running in a "
                     "private mount namespace (%s) with a socket of its own "
                     "bind-mounted over it\n" % (DEV_LOG, " ".join(UNSHARE)))
    sys.stderr.flush()
    r = subprocess.run(UNSHARE + ["--", sys.executable, os.path.abspath(sys.argv[0])]
                       + sys.argv[1:], env=dict(os.environ, **{NS_ENV: "1"}))
    sys.exit(r.returncode)


if __name__ == "__main__":
    run_in_namespace()
    try:
        harness.main()
    except SystemExit as e:
        if e.code in (0, None, False) and SKIPPED:
            sys.exit(77)
        raise
