#!/usr/bin/python3
"""Command line and configuration file: every bad input exits 2 with exactly
one line on stderr that names the problem; --check, --help, --version exit 0.
No servers are needed: nothing here may connect anywhere."""

import re
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import BridgeTestCase, run_bridge

PREFIX = "mqtt-redis-bridge: "
# ports where nothing listens, so an accidentally accepted config cannot
# reach a server
DEAD = ["--mqtt", "mqtt://127.0.0.1:9", "--redis", "redis://127.0.0.1:9"]


class ConfigTest(BridgeTestCase):

    def run_bad(self, args, *needles, what=None):
        """Run the bridge with args; it must exit 2 with one stderr line that
        starts with PREFIX and contains every needle (case-sensitive), or
        one of the alternatives when a needle is a tuple."""
        what = what or " ".join(args)
        try:
            p = run_bridge(args, timeout=5)
        except subprocess.TimeoutExpired:
            self.fail("%s: bridge accepted the input and kept running" % what)
        err = p.stderr.decode("utf-8", "replace")
        diag = "\n  args: %r\n  exit: %r\n  stderr: %r\n  stdout: %r" % (
            args, p.returncode, err, p.stdout.decode("utf-8", "replace")[:500])
        self.assertEqual(p.returncode, 2, "%s: exit status%s" % (what, diag))
        self.assertTrue(err.endswith("\n") and err.count("\n") == 1,
                        "%s: stderr must be exactly one line%s" % (what, diag))
        line = err.rstrip("\n")
        self.assertTrue(line.startswith(PREFIX),
                        "%s: stderr must start with %r%s" % (what, PREFIX, diag))
        for n in needles:
            alts = n if isinstance(n, tuple) else (n,)
            self.assertTrue(any(a in line for a in alts),
                            "%s: message should contain %s%s"
                            % (what, " or ".join(repr(a) for a in alts), diag))
        return line

    def run_ok(self, args):
        p = run_bridge(args, timeout=5)
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, "args %r: exit %r\nstdout: %s\n"
                         "stderr: %s" % (args, p.returncode, out, err))
        return out

    # --- configuration file -------------------------------------------------
    def test_json_syntax_error_line_col(self):
        path = self.write_config('{\n  "id": "x",\n  "log_level": bogus,\n'
                                 '  "mqtt": {}\n}\n')
        # cJSON stops at the 'b' of bogus: line 3, column 16
        line = self.run_bad(["-c", path], "JSON syntax error")
        self.assertEqual(line, "%s%s:3:16: JSON syntax error near 'bogus,'"
                         % (PREFIX, path))

    def test_unknown_key(self):
        path = self.write_config({"mqtt": {"hots": "127.0.0.1"}})
        self.run_bad(["-c", path], "%s: mqtt.hots: unknown key" % path)

    def test_unknown_top_level_key(self):
        path = self.write_config({"id": "x", "bogus": 1})
        self.run_bad(["-c", path], "%s: bogus: unknown key" % path)

    def test_bad_direction(self):
        path = self.write_config({"routes": [
            {"mqtt": "news", "redis": "news"},
            {"mqtt": "a/+", "redis": "a:*", "direction": "sideways"}]})
        line = self.run_bad(["-c", path])
        self.assertEqual(line, '%s%s: routes[1].direction: invalid value '
                         '"sideways" (allowed: both, mqtt_to_redis, '
                         'redis_to_mqtt)' % (PREFIX, path))

    def test_config_qos_out_of_range(self):
        path = self.write_config({"routes": [
            {"mqtt": "news", "redis": "news", "qos": 3}]})
        self.run_bad(["-c", path], "%s: routes[0].qos: invalid value 3" % path)

    def test_config_wildcard_count_mismatch(self):
        path = self.write_config({"routes": [
            {"mqtt": "news", "redis": "news"},
            {"mqtt": "user/+/+", "redis": "user:*"}]})
        self.run_bad(["-c", path], "%s: routes[1]: " % path, '"user/+/+"',
                     "wildcard")

    def test_config_bad_mqtt_url(self):
        path = self.write_config({"mqtt": {"url": "http://127.0.0.1:1883"}})
        self.run_bad(["-c", path], "%s: mqtt.url: " % path,
                     "http://127.0.0.1:1883")

    def test_config_bad_redis_url(self):
        path = self.write_config({"redis": {"url": "foo://127.0.0.1"}})
        self.run_bad(["-c", path], "%s: redis.url: " % path, "foo://127.0.0.1")

    def test_config_bad_protocol(self):
        path = self.write_config({"mqtt": {"protocol": "4"}})
        self.run_bad(["-c", path], '%s: mqtt.protocol: invalid value "4"' % path)

    def test_config_wrong_type(self):
        path = self.write_config({"mqtt": {"keepalive": "60"}})
        self.run_bad(["-c", path], "%s: mqtt.keepalive: invalid value" % path)

    def test_missing_config_file(self):
        path = self.workdir + "/does/not/exist.json"
        self.run_bad(["-c", path], "%s: cannot open" % path)

    def test_session_expiry_whole_range(self):
        # 0 to 4294967295 (MQTT's four-byte integer) on every board: the
        # bound did not fit armhf's 32-bit long, and 3600 was refused there
        for v in (0, 3600, 4294967295):
            path = self.write_config({"mqtt": {"session_expiry": v}},
                                     name="se%d.json" % v)
            out = self.run_ok(["-c", path, "--check"] + DEAD)
            self.assertIn("session expiry %d s)" % v, out)
        path = self.write_config({"mqtt": {"session_expiry": 4294967296}})
        line = self.run_bad(["-c", path] + DEAD)
        self.assertEqual(line, "%s%s: mqtt.session_expiry: invalid value "
                         "4294967296 (allowed: an integer from 0 to "
                         "4294967295)" % (PREFIX, path))

    def test_nul_in_strings_refused(self):
        # "\u0000" in a string: refused, not cut short there ("x\u0000y"
        # was the id "x", a route "a/+\u0000zz" ran as "a/+")
        nul = ("invalid value, a string holding a NUL character, \\u0000 "
               "(allowed: a string without NUL characters)")
        path = self.write_config({"id": "x\u0000y"})
        with open(path) as f:
            self.assertIn('"x\\u0000y"', f.read())  # as JSON writes it
        line = self.run_bad(["-c", path] + DEAD)
        self.assertEqual(line, "%s%s: id: %s" % (PREFIX, path, nul))
        path = self.write_config({"routes": [
            {"mqtt": "news", "redis": "news"},
            {"mqtt": "a/+\u0000zz", "redis": "a:*"}]}, name="route.json")
        line = self.run_bad(["-c", path] + DEAD)
        self.assertEqual(line, "%s%s: routes[1].mqtt: %s" % (PREFIX, path, nul))

    def queue_minimum(self, path):
        """--check of path: the smallest limits.queue_bytes it prints."""
        out = self.run_ok(["-c", path, "--check"] + DEAD)
        m = re.search(r"^limits: max_payload \d+ bytes; queue \d+ messages / "
                      r"\d+ bytes per direction \(at least (\d+) bytes with "
                      r"this max_payload\)$", out, re.M)
        self.assertIsNotNone(m, "--check prints no queue minimum:\n%s" % out)
        return int(m.group(1))

    def test_queue_bytes_minimum(self):
        # --check prints the minimum; exactly that is accepted, one less
        # refused with an error naming the file and that minimum
        path = self.write_config({"limits": {"max_payload": 5000}})
        need = self.queue_minimum(path)
        self.assertGreater(need, 5000 + 65535)   # the longest topic and more
        ok = self.write_config({"limits": {"max_payload": 5000,
                                           "queue_bytes": need}}, name="ok.json")
        self.assertEqual(self.queue_minimum(ok), need)
        bad = self.write_config({"limits": {"max_payload": 5000,
                                            "queue_bytes": need - 1}},
                                name="bad.json")
        line = self.run_bad(["-c", bad] + DEAD)
        self.assertEqual(line, "%s%s: limits.queue_bytes (%d) must be at least "
                         "%d (limits.max_payload 5000 + %d for the topic and "
                         "bookkeeping), or a largest message could not wait "
                         "in the queue" % (PREFIX, bad, need - 1, need,
                                           need - 5000))
        # queue_bytes left at its default, too small for the file's payloads
        big = self.write_config({"limits": {"max_payload": 268435455}},
                                name="big.json")
        line = self.run_bad(["-c", big] + DEAD)
        self.assertEqual(line, "%s%s: limits.queue_bytes (16777216, the "
                         "default) must be at least %d (limits.max_payload "
                         "268435455 + %d for the topic and bookkeeping), or a "
                         "largest message could not wait in the queue"
                         % (PREFIX, big, 268435455 + need - 5000, need - 5000))
        # and a queue_bytes of the file too small for the default payloads
        small = self.write_config({"limits": {"queue_bytes": 1048576}},
                                  name="small.json")
        line = self.run_bad(["-c", small] + DEAD)
        self.assertEqual(line, "%s%s: limits.queue_bytes (1048576) must be at "
                         "least %d (the default limits.max_payload 1048576 + "
                         "%d for the topic and bookkeeping), or a largest "
                         "message could not wait in the queue"
                         % (PREFIX, small, 1048576 + need - 5000, need - 5000))

    # --- command line -------------------------------------------------------
    def test_unknown_option(self):
        self.run_bad(["--bogus"], "unknown option '--bogus'")

    def test_route_wildcard_count_mismatch(self):
        self.run_bad(DEAD + ["--route", "user/+/+ <> user:*"],
                     "--route 'user/+/+ <> user:*': ", "wildcard")
        self.run_bad(DEAD + ["--route", "user/+ <> user:*:*"],
                     "--route 'user/+ <> user:*:*': ", "wildcard")

    def test_route_question_mark_in_redis_pattern(self):
        self.run_bad(DEAD + ["--route", "news <> ne?s"],
                     "--route 'news <> ne?s': ", "contains '?'")

    def test_route_bracket_in_redis_pattern(self):
        self.run_bad(DEAD + ["--route", "news <> ne[w]s"],
                     "--route 'news <> ne[w]s': ", "contains '['")

    def test_route_bad_mqtt_filters(self):
        self.run_bad(DEAD + ["--route", "a/b+ <> a:*"],
                     "--route 'a/b+ <> a:*': ", '"a/b+"', "not a valid")
        self.run_bad(DEAD + ["--route", "#/a <> a:*"],
                     "--route '#/a <> a:*': ", '"#/a"', "not a valid")

    def test_route_qos_out_of_range(self):
        self.run_bad(DEAD + ["--route", "news <> news qos=3"],
                     "--route 'news <> news qos=3': ", "qos 3")

    def test_route_bad_arrow(self):
        self.run_bad(DEAD + ["--route", "news <=> news"],
                     "--route 'news <=> news': ", '"<=>"')

    def test_bad_mqtt_url_scheme(self):
        self.run_bad(["--mqtt", "http://127.0.0.1:1883",
                      "--redis", "redis://127.0.0.1:9"],
                     '"http://127.0.0.1:1883"', "mqtt://")

    def test_bad_redis_url_scheme(self):
        self.run_bad(["--mqtt", "mqtt://127.0.0.1:9",
                      "--redis", "foo://127.0.0.1:6379"],
                     '"foo://127.0.0.1:6379"', "redis://")

    def test_bad_port(self):
        self.run_bad(["--mqtt", "mqtt://127.0.0.1:99999",
                      "--redis", "redis://127.0.0.1:9"],
                     '"mqtt://127.0.0.1:99999"', "port")

    def test_missing_option_argument(self):
        self.run_bad(["--route"], "'--route'")

    # --- things that succeed ------------------------------------------------
    def test_check_prints_routes(self):
        out = self.run_ok(DEAD + [
            "--id", "chk", "--check",
            "--route", "user/+ <> user:*",
            "--route", "news > news qos=0",
            "--route", "alerts/# < alerts:* qos=2 retain"])
        for s in ("chk", "user/+", "user:*", "news", "alerts/#", "alerts:*"):
            self.assertIn(s, out, "--check output should mention %r:\n%s"
                          % (s, out))

    def test_check_default_routes(self):
        out = self.run_ok(DEAD + ["--check"])
        for s in ("user/+", "user:*", "news"):
            self.assertIn(s, out, "default routes should be printed:\n%s" % out)

    def test_cli_routes_replace_file_routes(self):
        path = self.write_config({"routes": [
            {"mqtt": "filetopic/+", "redis": "filechan:*"}]})
        out = self.run_ok(["-c", path, "--check", "--route", "cli/+ <> clichan:*"])
        self.assertIn("clichan:*", out)
        self.assertNotIn("filechan", out, "--route must replace the file's "
                         "routes:\n%s" % out)
        out = self.run_ok(["-c", path, "--check"])
        self.assertIn("filechan:*", out)
        self.assertNotIn("news", out, "file routes replace the defaults:\n%s"
                         % out)

    def test_full_config_accepted(self):
        path = self.write_config({
            "id": "full",
            "log_level": "info",
            "mqtt": {"url": "mqtt://u:p@127.0.0.1:9", "client_id": "full-c",
                     "protocol": "auto", "keepalive": 30},
            "redis": {"url": "redis://u:p@127.0.0.1:9/2"},
            "routes": [
                {"mqtt": "user/+", "redis": "user:*", "direction": "both",
                 "qos": 1, "retain": False},
                {"mqtt": "up/#", "redis": "up:*", "direction": "mqtt_to_redis",
                 "qos": 0},
                {"mqtt": "down", "redis": "down", "direction": "redis_to_mqtt",
                 "qos": 2, "retain": True}],
            "limits": {"max_payload": 1000, "queue_messages": 10,
                       "queue_bytes": 100000},
            "reconnect": {"min_ms": 100, "max_ms": 1000},
            "shutdown_timeout_ms": 2000})
        out = self.run_ok(["-c", path, "--check"])
        for s in ("full", "user/+", "up/#", "up:*", "down"):
            self.assertIn(s, out)

    def test_url_forms_accepted(self):
        self.run_ok(["--check", "--mqtt", "mqtt://user:pw@localhost",
                     "--redis", "unix:/tmp/nonexistent-redis.sock"])
        self.run_ok(["--check", "--mqtt", "mqtt://127.0.0.1:1884",
                     "--redis", "redis://:secret@127.0.0.1:6380/3"])

    def test_protocol_values_accepted(self):
        for proto in ("auto", "5", "3.1.1"):
            path = self.write_config({"mqtt": {"protocol": proto}},
                                     name="p%s.json" % proto)
            self.run_ok(["-c", path, "--check"])

    def test_help(self):
        out = self.run_ok(["--help"])
        self.assertIn("--route", out)

    def test_version(self):
        out = self.run_ok(["--version"])
        self.assertRegex(out, r"\d+\.\d+\.\d+")


if __name__ == "__main__":
    harness.main()
