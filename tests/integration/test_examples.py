#!/usr/bin/python3
"""examples/: every configuration passes --check, and each use case works
end to end with the file as shipped, only the URLs overridden by --mqtt and
--redis: chat (QoS 1 messages, QoS 0 typing indicators and read receipts,
both ways), stock prices and live scores retained for late subscribers,
announcements to every device, presence in a hash with telemetry in
envelopes."""

import json
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import DELIVERY_TIMEOUT, QUIET, ServersTestCase, run_bridge  # noqa: E402

EXAMPLES = os.path.join(harness.REPO, "examples")
NAMES = ["chat", "stocks", "scores", "announcements", "presence"]


def example(name):
    return os.path.join(EXAMPLES, name + ".json")


class ExamplesTest(ServersTestCase):

    def run_example(self, name):
        return self.start_bridge(self.mq.port, self.rs.port, "-c", example(name))

    def test_check_accepts_every_example(self):
        found = sorted(f[:-5] for f in os.listdir(EXAMPLES) if f.endswith(".json"))
        self.assertEqual(found, sorted(NAMES), "an example without a test, or "
                         "a test without its example")
        for name in NAMES:
            with open(example(name)) as f:
                cfg = json.load(f)
            # the shipped URLs are the localhost defaults (docs/CONFIGURATION.md)
            self.assertEqual(cfg["mqtt"]["url"], "mqtt://127.0.0.1:1883", name)
            self.assertEqual(cfg["redis"]["url"], "redis://127.0.0.1:6379", name)
            r = run_bridge(["-c", example(name), "--check"])
            self.assertEqual(r.returncode, 0, "%s: %s" % (name, r.stderr))
            self.assertIn(b"configuration OK", r.stdout, name)
            self.assertIn(b"id: %s\n" % name.encode(), r.stdout, name)
            # and the command line overrides the file's URLs
            r = run_bridge(["-c", example(name), "--check", "--mqtt",
                            self.mq.url, "--redis", self.rs.url])
            self.assertEqual(r.returncode, 0, "%s: %s" % (name, r.stderr))
            self.assertIn(b"mqtt: %s " % self.mq.url.encode(), r.stdout, name)
            self.assertIn(b"redis: %s " % self.rs.url.encode(), r.stdout, name)

    def test_chat(self):
        self.run_example("chat")
        phone = self.mqtt_client(self.mq.port, "chat/lobby/#", name="phone")
        sender = self.mqtt_client(self.mq.port, name="sender")
        server = self.redis_sub(self.rs.port, patterns=["chat:*"])
        other_room = self.redis_sub(self.rs.port, patterns=["chat:kitchen:*"])

        # MQTT -> Redis: a message (QoS 1), typing and a read receipt (QoS 0)
        sender.publish("chat/lobby/messages", b'{"user":"alice","text":"hi all"}', qos=1)
        sender.publish("chat/lobby/typing", b'{"user":"alice","typing":true}', qos=0)
        sender.publish("chat/lobby/read", b'{"user":"alice","upto":"m-1"}', qos=0)
        self.assert_once_each({
            "redis messages": lambda: server.count("chat:lobby:messages",
                                                   b'{"user":"alice","text":"hi all"}'),
            "redis typing": lambda: server.count("chat:lobby:typing",
                                                 b'{"user":"alice","typing":true}'),
            "redis read": lambda: server.count("chat:lobby:read",
                                               b'{"user":"alice","upto":"m-1"}'),
        }, "chat from a phone to the server", subscribers=[server])

        # Redis -> MQTT, at the route's QoS: 1 for messages, 0 for the rest
        self.r.publish("chat:lobby:messages", b'{"user":"bot","text":"welcome"}')
        self.r.publish("chat:lobby:typing", b'{"user":"bob","typing":true}')
        self.r.publish("chat:lobby:read", b'{"user":"bob","upto":"m-2"}')
        got = {}
        for topic, payload in [("chat/lobby/messages", b'{"user":"bot","text":"welcome"}'),
                               ("chat/lobby/typing", b'{"user":"bob","typing":true}'),
                               ("chat/lobby/read", b'{"user":"bob","upto":"m-2"}')]:
            m = phone.wait_for(lambda m, t=topic, p=payload: m.topic == t and
                               m.payload == p)
            self.assertIsNotNone(m, "%s did not reach the phone: %s"
                                 % (topic, phone.summary()))
            got[topic] = m.qos
        self.assertEqual(got, {"chat/lobby/messages": 1, "chat/lobby/typing": 0,
                               "chat/lobby/read": 0})
        time.sleep(QUIET)
        # each once (the phone's own messages came back from the broker, not
        # from the bridge: no echo from Redis)
        self.assertEqual(phone.count("chat/lobby/messages",
                                     b'{"user":"alice","text":"hi all"}'), 1)
        self.assertEqual(phone.count("chat/lobby/messages",
                                     b'{"user":"bot","text":"welcome"}'), 1)
        self.assertEqual(other_room.summary(), [], "another room got lobby traffic")

    def retained_case(self, name, channel, topic, first, second, qos):
        b = self.run_example(name)
        early = self.mqtt_client(self.mq.port, topic.rsplit("/", 1)[0] + "/+",
                                 name="early")
        self.r.publish(channel, first)
        m = early.wait_for(lambda m: m.topic == topic and m.payload == first)
        self.assertIsNotNone(m, "%s: %s did not reach MQTT" % (name, channel))
        self.assertEqual(m.qos, qos)
        # the broker now holds it: a dashboard connecting later gets it at once
        t0 = time.monotonic()
        late = self.mqtt_client(self.mq.port, topic, name="late")
        m = late.wait_for(lambda m: m.topic == topic)
        self.assertIsNotNone(m, "%s: a late subscriber got no retained value"
                             % name)
        self.assertEqual((m.payload, m.retain), (first, True))
        self.assertLess(m.t - t0, DELIVERY_TIMEOUT)
        # the newest one replaces it
        self.r.publish(channel, second)
        self.assertIsNotNone(late.wait_for(lambda m: m.payload == second))
        later = self.mqtt_client(self.mq.port, topic, name="later")
        m = later.wait_for(lambda m: m.topic == topic)
        self.assertIsNotNone(m)
        self.assertEqual((m.payload, m.retain), (second, True))
        time.sleep(QUIET)
        self.assertEqual(later.count(topic), 1, later.summary())
        return b

    def test_stocks_last_price_for_a_late_dashboard(self):
        self.retained_case("stocks", "prices:AAPL", "prices/AAPL", b"187.2",
                           b"187.5", 0)

    def test_scores_current_score_for_a_late_scoreboard(self):
        self.retained_case("scores", "scores:final-2026", "scores/final-2026",
                           b'{"home":1,"away":0,"minute":23}',
                           b'{"home":1,"away":1,"minute":67}', 1)

    def test_presence_and_telemetry(self):
        self.run_example("presence")
        psub = self.redis_sub(self.rs.port, patterns=["presence:*", "telemetry:*"])
        dev = self.mqtt_client(self.mq.port, name="dev1")
        dev.publish("devices/dev1/status", b"online", qos=1, retain=True)
        self.assertTrue(harness.wait_until(
            lambda: self.r.hgetall("devices") == {b"dev1": b"online"},
            DELIVERY_TIMEOUT), self.r.hgetall("devices"))
        # HSET goes before the PUBLISH: the channel may be a moment later
        self.assertTrue(harness.wait_until(
            lambda: psub.count("presence:dev1", b"online") == 1, DELIVERY_TIMEOUT),
            psub.summary())
        dev.publish("devices/dev1/telemetry", b'{"t":21.5}', qos=0)
        self.assertTrue(harness.wait_until(lambda: psub.count("telemetry:dev1") == 1,
                                           DELIVERY_TIMEOUT), psub.summary())
        env = json.loads([m.data for m in psub.snapshot()
                          if m.channel == b"telemetry:dev1"][0])
        self.assertEqual((env["topic"], env["payload"], env["bridge"]),
                         ("devices/dev1/telemetry", {"t": 21.5}, "presence"))

    def test_announcements_reach_every_device(self):
        self.run_example("announcements")
        devices = [self.mqtt_client(self.mq.port, "announcements", name="dev%d" % i)
                   for i in range(3)]
        server = self.redis_sub(self.rs.port, channels=["global:announcements"])
        text = b'{"type":"maintenance","at":"22:00 UTC"}'
        self.r.publish("global:announcements", text)
        self.assert_once_each({d.client_id: (lambda d=d: d.count("announcements", text))
                               for d in devices}, "one announcement",
                              subscribers=devices)
        # only Redis -> MQTT: a device's publish does not reach Redis
        devices[0].publish("announcements", b"from a device")
        self.assert_none({"redis": lambda: server.count(data=b"from a device")},
                         "a device publishing to announcements",
                         subscribers=[server])


if __name__ == "__main__":
    harness.main()
