#!/usr/bin/python3
"""Security: TLS to the broker (certificates made with openssl at test time,
and the failures: wrong CA, wrong host name, expired certificate, missing
client certificate, TLS version), authentication on both sides (mosquitto
password_file, a Redis ACL user limited to the bridge's channels) and what a
refusal looks like, where passwords may come from and that they are never
shown, the mosquitto ACL example of docs/examples, routes as the allowlist,
and Redis over TLS through stunnel."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import (DELIVERY_TIMEOUT, Pki, READY_TIMEOUT, SERVER_TIMEOUT,  # noqa: E402
                     ServersTestCase, free_port, read_text, run_bridge, tail,
                     unique, wait_until, with_servers)

ACL_EXAMPLE = os.path.join(harness.REPO, "docs", "examples", "mosquitto.acl")
# the Redis ACL of docs/SECURITY.md "TLS and authentication, step by step", step 3: the default
# routes' channels,
# the commands the bridge uses (pub/sub routes)
REDIS_ACL = ["on", ">b-pass", "resetchannels", "&user:*", "&news", "-@all",
             "+publish", "+subscribe", "+psubscribe", "+ping",
             "+client|setname"]
NEXT_RE = re.compile(r"attempt \d+ failed: .*; next in (\d+) ms")
MAX_MS = 1000  # reconnect.max_ms of the tests' bridges

TLS = None


def has_tls():
    global TLS
    if TLS is None:
        TLS = harness.bridge_has_tls()
    return TLS


class SecurityCase(ServersTestCase):

    def write_private(self, name, text, mode=0o600):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def flow(self, mq_port, rs, what, redis_password=None, mqtt_auth=(None, None)):
        """One message each way across the default routes."""
        user, pw = mqtt_auth
        msub = self.mqtt_client(mq_port, "user/+", name="sub", username=user,
                                password=pw)
        pub = self.mqtt_client(mq_port, name="pub", username=user, password=pw)
        rsub = self.redis_sub(rs.port, patterns=["user:*"],
                              password=redis_password)
        r = self.redis_client(rs.port, password=redis_password)
        up = unique("up").encode()
        pub.publish("user/alice", up)
        self.assert_once_each({"redis user:alice":
                               lambda: rsub.count("user:alice", up)},
                              "%s: MQTT -> Redis" % what, subscribers=[rsub])
        down = unique("down").encode()
        r.publish("user:bob", down)
        self.assert_once_each({"mqtt user/bob":
                               lambda: msub.count("user/bob", down)},
                              "%s: Redis -> MQTT" % what, subscribers=[msub])

    def assert_slow_retries(self, bridge, what, max_ms=MAX_MS):
        """The bridge (-v) retries, and every retry waits reconnect.max_ms."""
        self.assert_log(bridge, NEXT_RE, timeout=READY_TIMEOUT,
                        what=what + ": a retry")
        waits = [int(m.group(1)) for l in bridge.lines()
                 for m in [NEXT_RE.search(l)] if m]
        fast = [w for w in waits if w < max_ms]
        self.assertFalse(fast, "%s: retries not slowed down to reconnect.max_ms "
                         "(%d): waits %r\n%s" % (what, max_ms, waits,
                                                 bridge.tail()))

    def bridge_config(self, mqtt, redis_url, name="cfg.json", **extra):
        cfg = {"mqtt": mqtt, "redis": {"url": redis_url},
               "reconnect": {"min_ms": 50, "max_ms": MAX_MS}}
        cfg.update(extra)
        path = self.write_config(cfg, name)
        os.chmod(path, 0o600)
        return path


class TlsTest(SecurityCase):

    # each test starts the TLS broker of its own certificate (tls_broker)
    SERVERS = {"mosquitto": None}

    def setUp(self):
        if not has_tls():
            self.skipTest("bridge built without TLS (WITH_TLS=OFF)")
        super().setUp()
        self.pki = Pki(self.workdir)
        self.server = self.pki.issue("server")

    def tls_broker(self, cert=None, **kw):
        cert = cert or self.server
        tls = {"cafile": self.pki.ca, "certfile": cert[0], "keyfile": cert[1]}
        tls.update(kw.pop("tls_extra", {}))
        return self.start_mosquitto(tls=tls, **kw)

    def test_tls_with_client_certificate_and_passwords(self):
        """The set-up of docs/SECURITY.md: mqtts:// with the broker's CA, a client
        certificate, a password from a file; Redis with an ACL user whose
        password comes from the environment."""
        client = self.pki.issue("bridge-client", hosts=(), client=True)
        mq = self.tls_broker(users={"bridge": "m-pass", "tester": "t"},
                             tls_extra={"require_certificate": True})
        self.redis_client(self.rs.port).execute_command("ACL", "SETUSER", "bridge",
                                                   *REDIS_ACL)
        pwfile = self.write_private("mqtt.pass", "m-pass\n")
        cfg = self.bridge_config(
            {"url": "mqtts://bridge@localhost:%d" % mq.tls_port,
             "password_file": pwfile,
             "tls": {"ca_file": self.pki.ca, "cert_file": client[0],
                     "key_file": client[1]}},
            "redis://bridge@127.0.0.1:%d" % self.rs.port)
        b = self.start_bridge(None, None, "-c", cfg, "--id", "tls",
                              env={"MRB_REDIS_PASSWORD": "b-pass"})
        self.flow(mq.port, self.rs, "mqtts + client certificate",
                  mqtt_auth=("tester", "t"))
        # the bridge's MQTT connection is the TLS listener's
        self.assertRegex(mq.log(), r"New client connected from 127\.0\.0\.1:\d+ "
                         r"as mqtt-redis-bridge-tls .*u'bridge'")
        self.assertIn("ready: MQTT mqtts://bridge:***@localhost:%d" % mq.tls_port,
                      b.log())
        for secret in ("m-pass", "b-pass"):
            self.assertNotIn(secret, b.log())

    def tls_failure(self, cert, want, ca=None, tls=None, broker_kw=None):
        """The bridge cannot connect: one error line containing want, slow
        retries, still running, and fine again once the cause is gone."""
        mq = self.tls_broker(cert, **(broker_kw or {}))
        settings = {"ca_file": ca or self.pki.ca}
        settings.update(tls or {})
        cfg = self.bridge_config({"url": "mqtts://127.0.0.1:%d" % mq.tls_port,
                                  "tls": settings},
                                 self.rs.url, name=unique("cfg") + ".json")
        b = self.start_bridge(None, None, "-c", cfg, "-v", ready=False,
                              name=unique("b"))
        self.assert_log(b, "error mqtt: TLS failed with mqtts://127.0.0.1:%d: %s"
                        % (mq.tls_port, want), timeout=READY_TIMEOUT)
        self.assert_slow_retries(b, want)
        self.assertTrue(b.alive(), b.tail())
        self.assertEqual(b.count("TLS failed"), 1, "logged once:\n" + b.tail())
        self.assertEqual(b.count("ready:"), 0)
        return b

    def test_wrong_ca(self):
        other = Pki(self.workdir, "other")
        self.tls_failure(self.server, "the broker's certificate is not signed "
                         "by a CA in mqtt.tls.ca_file / mqtt.tls.ca_path",
                         ca=other.ca)

    def test_expired_certificate(self):
        expired = self.pki.issue("expired", days=-1)
        self.tls_failure(expired, "the broker's certificate has expired")

    def test_wrong_host_name(self):
        wrong = self.pki.issue("elsewhere", hosts=("broker.example",))
        self.tls_failure(wrong, "the broker's certificate does not name the "
                         "host \"127.0.0.1\" of mqtt.url")

    def test_host_name_check_can_be_turned_off(self):
        wrong = self.pki.issue("elsewhere", hosts=("broker.example",))
        mq = self.tls_broker(wrong)
        cfg = self.bridge_config({"url": "mqtts://127.0.0.1:%d" % mq.tls_port,
                                  "tls": {"ca_file": self.pki.ca,
                                          "verify_hostname": False}}, self.rs.url)
        out = run_bridge(["-c", cfg, "--check"]).stdout.decode()
        self.assertIn("verify_hostname NO", out)
        self.start_bridge(None, None, "-c", cfg)
        self.flow(mq.port, self.rs, "verify_hostname false")

    def test_client_certificate_required(self):
        self.tls_failure(self.server, "TLS handshake failed: ",
                         broker_kw={"tls_extra": {"require_certificate": True}})

    def test_minimum_tls_version(self):
        """min_version 1.3 against a server that speaks TLS 1.2 at most
        (openssl s_server -tls1_2)."""
        port = free_port()
        log_path = os.path.join(self.workdir, "s_server.log")
        with open(log_path, "wb") as log:
            srv = subprocess.Popen(
                ["openssl", "s_server", "-tls1_2", "-rev", "-accept",
                 "127.0.0.1:%d" % port, "-cert", self.server[0], "-key",
                 self.server[1]], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        self.addCleanup(harness.stop_process, srv)
        self.assertTrue(wait_until(lambda: "ACCEPT" in read_text(log_path),
                                   SERVER_TIMEOUT), read_text(log_path))
        cfg = self.bridge_config({"url": "mqtts://127.0.0.1:%d" % port,
                                  "tls": {"ca_file": self.pki.ca,
                                          "min_version": "1.3"}}, self.rs.url)
        b = self.start_bridge(None, None, "-c", cfg, ready=False)
        self.assert_log(b, re.compile(r"error mqtt: TLS failed with .*TLS "
                                      r"handshake failed: .*protocol version"),
                        timeout=READY_TIMEOUT)


class AuthTest(SecurityCase):

    # a broker and a Redis of its own for each protocol (the broker learns
    # the bridge's password)
    @with_servers(redis=None, mosquitto=None)
    def test_bad_mqtt_password_one_error_slow_retries(self):
        for protocol in ("5", "3.1.1"):
            with self.subTest(protocol=protocol):
                mq = self.start_mosquitto(users={"bridge": "right"})
                rs = self.start_redis()
                cfg = self.bridge_config(
                    {"url": "mqtt://bridge:wrong@127.0.0.1:%d" % mq.port,
                     "protocol": protocol}, rs.url,
                    name="cfg%s.json" % protocol)
                b = self.start_bridge(None, None, "-c", cfg, "-v", ready=False,
                                      name="bad-mqtt-" + protocol)
                self.assert_log(b, re.compile(
                    r"error mqtt: the broker refused the login to "
                    r"mqtt://bridge:\*\*\*@127\.0\.0\.1:%d: .*check the user "
                    r"name and password" % mq.port), timeout=READY_TIMEOUT)
                self.assert_slow_retries(b, "MQTT " + protocol)
                self.assertEqual(b.count("refused the login"), 1, b.tail())
                self.assertNotIn("wrong", b.log().replace("wrong)", ""))
                # the broker learns the bridge's password: it gets in
                mq.stop()
                mq.users = {"bridge": "wrong"}
                mark = b.mark()
                mq.start()
                b.wait_ready(since=mark, timeout=READY_TIMEOUT)
                self.assert_log(b, "mqtt: reconnected to", since=mark)
                b.stop()

    def test_bad_redis_password_one_error_slow_retries(self):
        admin = self.redis_client(self.rs.port)
        admin.execute_command("ACL", "SETUSER", "bridge", *REDIS_ACL)
        cfg = self.bridge_config({"url": self.mq.url},
                                 "redis://bridge@127.0.0.1:%d" % self.rs.port)
        b = self.start_bridge(None, None, "-c", cfg, "-v", ready=False,
                              env={"MRB_REDIS_PASSWORD": "not-it"})
        self.assert_log(b, re.compile(
            r"error redis: redis://bridge:\*\*\*@127\.0\.0\.1:%d refused the "
            r"\w+ connection: AUTH refused: WRONGPASS" % self.rs.port),
            timeout=READY_TIMEOUT)
        self.assert_slow_retries(b, "Redis AUTH")
        self.assertEqual(b.count("refused the"), 1, b.tail())
        self.assertNotIn("not-it", b.log())
        # the ACL user gets the bridge's password too: it gets in
        mark = b.mark()
        admin.execute_command("ACL", "SETUSER", "bridge", ">not-it")
        b.wait_ready(since=mark, timeout=READY_TIMEOUT)
        self.flow(self.mq.port, self.rs, "after the password was fixed")

    def test_redis_acl_user_limited_to_the_routes(self):
        """A route the ACL user may not use: NOPERM, said once, clearly, and
        not again when the retries (every reconnect.max_ms) fail the same
        way; the allowed routes work."""
        self.redis_client(self.rs.port).execute_command("ACL", "SETUSER", "bridge",
                                                   *REDIS_ACL)
        cfg = self.bridge_config({"url": self.mq.url},
                                 "redis://bridge:b-pass@127.0.0.1:%d" % self.rs.port,
                                 name="acl.json")
        b = self.start_bridge(None, None, "-c", cfg, "-v",
                              "--route", "user/+ <> user:*",
                              "--route", "secret <> secret", ready=False)
        said = re.compile(r"error redis: .* refused the subscriber "
                          r"connection: NOPERM")
        self.assert_log(b, said, timeout=READY_TIMEOUT)
        # two retries (every reconnect.max_ms) that fail the same way: -v
        # logs each (however it is logged, its line names NOPERM)
        self.assertTrue(b.wait_log("NOPERM", 2 * MAX_MS / 1000.0 + READY_TIMEOUT,
                                   count=3), "no retries after NOPERM:\n" + b.tail())
        self.assertEqual(b.count(said), 1, "NOPERM said once:\n" + b.tail())
        retry = re.compile(r"debug redis subscriber: attempt \d+ failed: NOPERM.*; "
                           r"next in (\d+) ms")
        waits = [int(m.group(1)) for l in b.lines() for m in [retry.search(l)] if m]
        self.assertTrue(len(waits) >= 2 and set(waits) == {MAX_MS},
                        "retries after NOPERM wait reconnect.max_ms: %r" % waits)
        self.assertEqual(b.count(re.compile(r"^\S+ (error|warning) ")), 1,
                         "one error or warning in all:\n" + b.tail())
        b.stop()
        b = self.start_bridge(None, None, "--mqtt", self.mq.url, "--redis",
                              "redis://bridge:b-pass@127.0.0.1:%d" % self.rs.port,
                              "--route", "user/+ <> user:*", "--id", "acl")
        self.flow(self.mq.port, self.rs, "Redis ACL user")


class SecretsTest(SecurityCase):

    SERVERS = {"redis": None, "mosquitto": None}  # --check needs none

    @with_servers(redis={"password": "rs-secret-2"},
                  mosquitto={"users": {"bridge": "mq-secret-1"}})
    def test_passwords_are_never_shown(self):
        # on the command line: hidden from process listings once started
        b = self.start_bridge(None, None,
                              "--mqtt", "mqtt://bridge:mq-secret-1@127.0.0.1:%d"
                              % self.mq.port,
                              "--redis", "redis://:rs-secret-2@127.0.0.1:%d"
                              % self.rs.port, "-v")
        with open("/proc/%d/cmdline" % b.proc.pid, "rb") as f:
            cmdline = f.read()
        if b"valgrind" not in cmdline:  # (the wrapper's own argv is not ours)
            self.assertNotIn(b"mq-secret-1", cmdline)
            self.assertNotIn(b"rs-secret-2", cmdline)
            # a fixed "***", the arguments closed up, NULs at the end only
            # (8 + 8 bytes the passwords were longer than the mask)
            want = b"\0".join(a.encode() for a in b.args[:1] + [
                "--mqtt", "mqtt://bridge:***@127.0.0.1:%d" % self.mq.port,
                "--redis", "redis://:***@127.0.0.1:%d" % self.rs.port, "-v"])
            self.assertEqual(cmdline, want + b"\0" * 17)
            # a short password and a long one give the same mask
            short = self.start_bridge(
                None, None, "--mqtt", "mqtt://bridge:pw3@127.0.0.1:9",
                "--redis", "redis://:%s@127.0.0.1:9" % ("L" * 64), ready=False)
            self.assertTrue(short.wait_log("starting:", READY_TIMEOUT),
                            short.tail())
            with open("/proc/%d/cmdline" % short.proc.pid, "rb") as f:
                args = f.read().rstrip(b"\0").split(b"\0")
            self.assertEqual(args[1:], [b"--mqtt", b"mqtt://bridge:***@127.0.0.1:9",
                                        b"--redis", b"redis://:***@127.0.0.1:9"])
            short.stop()
        os.kill(b.proc.pid, signal.SIGUSR1)
        self.assert_log(b, "stats:")
        b.stop()
        for secret in ("mq-secret-1", "rs-secret-2"):
            self.assertNotIn(secret, b.log())
            self.assertNotIn(secret, read_text(b.out_path))
        # --check: sources named, values not
        pw = self.write_private("mq.pass", "mq-secret-1\n", 0o644)
        cfg = self.write_config({"mqtt": {"url": "mqtt://bridge@127.0.0.1:%d"
                                          % self.mq.port, "password_file": pw},
                                 "redis": {"url": "redis://127.0.0.1:%d"
                                           % self.rs.port}})
        os.chmod(cfg, 0o600)
        r = run_bridge(["-c", cfg, "--check"],
                       env={"MRB_REDIS_PASSWORD": "rs-secret-2"})
        out = r.stdout.decode() + r.stderr.decode()
        self.assertEqual(r.returncode, 0, out)
        self.assertIn("mqtt password: *** (from mqtt.password_file)", out)
        self.assertIn("redis password: *** (from MRB_REDIS_PASSWORD)", out)
        self.assertIn("warning: mqtt.password_file \"%s\" is readable by other "
                      "users (mode 0644): chmod o-r it" % pw, out)
        for secret in ("mq-secret-1", "rs-secret-2"):
            self.assertNotIn(secret, out)
        # and they work
        b = self.start_bridge(None, None, "-c", cfg, "--id", "files",
                              env={"MRB_REDIS_PASSWORD": "rs-secret-2"})
        self.assertIn("is readable by other users", b.log())
        self.flow_news()

    def flow_news(self):
        sub = self.redis_sub(self.rs.port, channels=["news"], password="rs-secret-2")
        pub = self.mqtt_client(self.mq.port, username="bridge", password="mq-secret-1")
        data = unique("n").encode()
        pub.publish("news", data)
        self.assert_once_each({"redis news": lambda: sub.count("news", data)},
                              "password from a file")

    def test_world_readable_config_with_password(self):
        cfg = self.write_config({"redis": {"url": "redis://:pw-in-file@h"}})
        os.chmod(cfg, 0o644)
        r = run_bridge(["-c", cfg, "--check"])
        out = r.stdout.decode()
        self.assertIn("warning: the configuration file, which holds a password, "
                      "\"%s\" is readable by other users (mode 0644)" % cfg, out)
        self.assertNotIn("pw-in-file", out + r.stderr.decode())
        self.assertIn("redis://:***@h:6379", out)

    def assert_config_error(self, args, want, env=None):
        """The bridge refuses args with exit status 2 and exactly want."""
        r = run_bridge(args + ["--check"], env=env)
        self.assertEqual((r.returncode, r.stderr.decode()),
                         (2, "mqtt-redis-bridge: " + want + "\n"))

    def test_two_password_sources_are_refused(self):
        self.assert_config_error(
            ["--redis", "redis://:a@h"],
            "redis: the password is given twice, in the URL (redis.url / "
            "--redis) and in MRB_REDIS_PASSWORD: keep one",
            env={"MRB_REDIS_PASSWORD": "b"})

    def test_mqtts_without_tls(self):
        if has_tls():
            self.skipTest("bridge built with TLS")
        self.assert_config_error(
            ["--mqtt", "mqtts://u:pw@broker"],
            "--mqtt: \"mqtts://u:***@broker\": this mqtt-redis-bridge was built "
            "without TLS (cmake -DWITH_TLS=OFF): use mqtt:// or a build with TLS")


class PermissionsTest(SecurityCase):

    @with_servers(mosquitto={"users": {"bridge": "bp", "alice": "ap",
                                       "bob": "bp2"},
                             "acl_file": ACL_EXAMPLE})
    def test_mosquitto_acl_example(self):
        """docs/examples/mosquitto.acl: each device publishes and reads only
        user/<its name>; the bridge carries its routes."""
        self.start_bridge(None, None, "--mqtt", "mqtt://bridge:bp@127.0.0.1:%d"
                          % self.mq.port, "--redis", self.rs.url, "--id", "acl")
        alice = self.mqtt_client(self.mq.port, "user/#", "news", name="alice",
                                 username="alice", password="ap")
        bob = self.mqtt_client(self.mq.port, "user/bob", name="bob", username="bob",
                               password="bp2")
        rsub = self.redis_sub(self.rs.port, patterns=["user:*"])
        r = self.redis_client(self.rs.port)
        own, forged = unique("own").encode(), unique("forged").encode()
        alice.publish("user/alice", own)
        alice.publish("user/bob", forged)  # the broker drops it
        to_bob, news = unique("to-bob").encode(), unique("news").encode()
        r.publish("user:bob", to_bob)
        r.publish("news", news)
        self.assert_once_each({
            "redis user:alice": lambda: rsub.count("user:alice", own),
            "bob user/bob": lambda: bob.count("user/bob", to_bob),
            "alice news": lambda: alice.count("news", news),
            "alice user/alice (her own, back)": lambda: alice.count("user/alice", own),
        }, "allowed by the ACL", subscribers=[rsub, alice, bob])
        self.assert_none({
            "redis user:bob from alice": lambda: rsub.count("user:bob", forged),
            "bob: alice's forgery": lambda: bob.count("user/bob", forged),
            "alice: bob's message": lambda: alice.count("user/bob", to_bob),
        }, "denied by the ACL", subscribers=[rsub, alice, bob])

    def test_routes_are_the_allowlist(self):
        """Only what a route carries crosses, and only in its direction."""
        self.start_bridge(self.mq.port, self.rs.port, "--route", "user/+ > user:*",
                          "--route", "alerts < alerts", bridge_id="allow")
        msub = self.mqtt_client(self.mq.port, "#", name="all")
        rsub = self.redis_sub(self.rs.port, patterns=["*"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        r = self.redis_client(self.rs.port)
        ok_up, ok_down = unique("up").encode(), unique("down").encode()
        pub.publish("user/a", ok_up)
        r.publish("alerts", ok_down)
        self.assert_once_each({
            "redis user:a": lambda: rsub.count("user:a", ok_up),
            "mqtt alerts": lambda: msub.count("alerts", ok_down),
        }, "routed", subscribers=[rsub, msub])
        x = unique("x").encode()
        pub.publish("other/a", x)        # no route
        pub.publish("alerts", x)         # route is Redis -> MQTT only
        pub.publish("user/a/b", x)       # not matched by user/+
        r.publish("user:b", x)           # route is MQTT -> Redis only
        r.publish("other", x)            # no route
        self.assert_none({
            "redis, but for the test's own": lambda: sum(
                1 for m in rsub.snapshot() if m.data == x
                and m.channel not in (b"user:b", b"other")),
            "mqtt user/b": lambda: msub.count("user/b", x),
            "mqtt other": lambda: msub.count("other", x),
        }, "not routed", subscribers=[rsub, msub])


class RedisTlsTest(SecurityCase):
    """hiredis 0.14 has no TLS: the bridge reaches a TLS-only Redis through a
    local stunnel client (docs/SECURITY.md "Redis over TLS")."""

    SERVERS = {"redis": None}  # the test's redis-server speaks TLS only

    def test_redis_over_tls_with_stunnel(self):
        # a failure, not a skip that ctest would count as passed
        stunnel_bin = shutil.which("stunnel4") or shutil.which("stunnel")
        self.assertIsNotNone(stunnel_bin, "this test needs stunnel4 (apt-get "
                             "install stunnel4; scripts/test.sh does)")
        pki = Pki(self.workdir)
        cert, key = pki.issue("redis-server")
        client_cert, client_key = pki.issue("bridge-client", hosts=(), client=True)
        tls_port, local_port = free_port(), free_port()
        rdir = os.path.join(self.workdir, "redis-tls")
        os.makedirs(rdir)
        rlog = os.path.join(rdir, "redis.log")
        with open(rlog, "wb") as log:
            redis_proc = subprocess.Popen(
                ["redis-server", "--port", "0", "--bind", "127.0.0.1",
                 "--tls-port", str(tls_port), "--tls-cert-file", cert,
                 "--tls-key-file", key, "--tls-ca-cert-file", pki.ca,
                 "--tls-auth-clients", "yes", "--save", "", "--dir", rdir,
                 "--requirepass", "r-pass"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(harness.stop_process, redis_proc)
        # the same stunnel.conf as docs/SECURITY.md "Redis over TLS", plus syslog = no:
        # the log goes to stunnel.log only, not to the machine's /dev/log
        conf = os.path.join(self.workdir, "stunnel.conf")
        with open(conf, "w") as f:
            f.write("foreground = yes\npid =\nsyslog = no\n"
                    "[redis]\nclient = yes\n"
                    "accept = 127.0.0.1:%d\nconnect = 127.0.0.1:%d\n"
                    "verifyChain = yes\nCAfile = %s\ncheckHost = localhost\n"
                    "cert = %s\nkey = %s\nsslVersionMin = TLSv1.2\n"
                    % (local_port, tls_port, pki.ca, client_cert, client_key))
        slog = os.path.join(self.workdir, "stunnel.log")
        with open(slog, "wb") as log:
            stunnel = subprocess.Popen(
                [stunnel_bin, conf],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(harness.stop_process, stunnel)

        import redis as redislib

        def tls_client():
            return redislib.Redis(host="localhost", port=tls_port,
                                  password="r-pass", ssl=True,
                                  ssl_ca_certs=pki.ca, ssl_certfile=client_cert,
                                  ssl_keyfile=client_key, socket_timeout=10)

        def up():
            try:
                return tls_client().ping()
            except Exception:
                return False
        self.assertTrue(wait_until(up, SERVER_TIMEOUT, 0.05),
                        tail(read_text(rlog)))
        b = self.start_bridge(None, None, "--mqtt", self.mq.url, "--redis",
                              "redis://127.0.0.1:%d" % local_port, "--id", "stl",
                              env={"MRB_REDIS_PASSWORD": "r-pass"})
        r = tls_client()
        self.addCleanup(r.close)
        ps = r.pubsub()
        ps.subscribe("news")
        self.assertTrue(wait_until(lambda: ps.get_message(timeout=0.1) is not None,
                                   DELIVERY_TIMEOUT))
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        up_data, down = unique("up").encode(), unique("down").encode()
        pub.publish("news", up_data)
        got = []

        def received():
            m = ps.get_message(timeout=0.1)
            if m and m["type"] == "message":
                got.append(m["data"])
            return up_data in got
        self.assertTrue(wait_until(received, DELIVERY_TIMEOUT, 0.01),
                        "MQTT -> Redis over stunnel: got %r\n%s" % (got, b.tail()))
        r.publish("news", down)
        self.assertTrue(msub.wait_for(lambda m: m.payload == down),
                        "Redis -> MQTT over stunnel\n" + b.tail())
        ps.close()
        # every connection of the bridge came through stunnel (TLS-only Redis)
        names = [c.get("name") for c in r.client_list()]
        self.assertIn("mrb:stl:subscriber", names)
        self.assertIn("mrb:stl:ingest", names)


if __name__ == "__main__":
    harness.main()
