#!/usr/bin/python3
"""Replay for stream routes: a request on bridge/<id>/replay is answered
with the last N entries of the topic's stream, oldest first, then an end
marker; on the MQTT 5 Response Topic with the Correlation Data, or with
MQTT 3.1.1 on the request's response_topic or bridge/<id>/replay/response.
Errors (unknown topic, bad JSON, count out of range) are answered too and
the bridge keeps running; requests are never bridged into Redis."""

import json
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

import harness  # noqa: E402
from harness import DELIVERY_TIMEOUT, ServersTestCase, unique  # noqa: E402

BID = "rp"
REQ = "bridge/%s/replay" % BID
DEFAULT_RESPONSE = "bridge/%s/replay/response" % BID


class Answers:
    """Messages on one response topic, with correlation data and user
    properties, until an end marker."""

    def __init__(self, client, topic):
        self.cond = threading.Condition()
        self.msgs = []
        client.c.message_callback_add(topic, self._on)
        self.topic = topic

    def _on(self, client, userdata, msg):
        props = getattr(msg, "properties", None)
        corr = getattr(props, "CorrelationData", None) if props else None
        user = dict(getattr(props, "UserProperty", None) or []) if props else {}
        with self.cond:
            self.msgs.append((bytes(msg.payload), corr, user))
            self.cond.notify_all()

    @staticmethod
    def is_end(m):
        try:
            return json.loads(m[0]).get("replay") == "end"
        except (ValueError, AttributeError):
            return False

    def wait_end(self, n_ends=1, timeout=None):
        timeout = timeout or DELIVERY_TIMEOUT
        with self.cond:
            self.cond.wait_for(lambda: sum(1 for m in self.msgs if self.is_end(m))
                               >= n_ends, timeout)
            return list(self.msgs)


class ReplayTest(ServersTestCase):

    def bridge(self, routes=None, protocol="auto"):
        cfg = self.write_config({
            "id": BID, "mqtt": {"url": self.mq.url, "protocol": protocol},
            "redis": {"url": self.rs.url},
            "routes": routes or [{"mqtt": "sensors/+", "redis": "sensors:*",
                                  "mode": "stream"}]})
        return self.start_bridge(None, None, "-c", cfg)

    def request(self, client, payload, response_topic=None, corr=None):
        props = None
        if response_topic is not None or corr is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if corr is not None:
                props.CorrelationData = corr
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        info = client.c.publish(REQ, payload, qos=1, properties=props)
        info.wait_for_publish(DELIVERY_TIMEOUT)
        self.assertTrue(info.is_published())

    def asker(self):
        """A device client subscribed to a response topic of its own:
        (client, topic, Answers on it)."""
        dev = self.mqtt_client(self.mq.port, name="dev")
        rt = "dev/%s/answers" % unique("d")
        ans = Answers(dev, rt)
        dev.subscribe(rt)
        return dev, rt, ans

    def fill(self, n=20):
        """n messages through the bridge into the stream sensors:t1."""
        pub = self.mqtt_client(self.mq.port, name="pub")
        for i in range(1, n + 1):
            pub.publish("sensors/t1", b"m%d" % i)
        self.assertTrue(harness.wait_until(lambda: self.r.xlen("sensors:t1") >= n,
                                           DELIVERY_TIMEOUT), "stream not filled")
        return pub

    def test_last_5_of_20_in_order_with_correlation(self):
        # a route whose filter matches the request topic too: the request
        # is still not bridged, and answered once
        b = self.bridge([{"mqtt": "sensors/+", "redis": "sensors:*", "mode": "stream"},
                         {"mqtt": "bridge/+/replay", "redis": "req:*",
                          "direction": "mqtt_to_redis"}])
        rsub = self.redis_sub(self.rs.port, patterns=["*"])
        self.fill(20)
        dev, rt, ans = self.asker()
        self.request(dev, {"topic": "sensors/t1", "count": 5}, rt, b"req-1")
        msgs = ans.wait_end()
        time.sleep(harness.QUIET)  # nothing after the end marker
        msgs = ans.msgs
        ids = [e[1] for e in self.r.xrange("sensors:t1")]
        self.assertEqual([m[0] for m in msgs[:5]], [b"m16", b"m17", b"m18", b"m19",
                                                      b"m20"], msgs)
        self.assertEqual(len(msgs), 6, msgs)
        for i, m in enumerate(msgs[:5]):
            self.assertEqual(m[1], b"req-1")
            self.assertEqual(m[2], {"stream": "sensors:t1",
                                    "stream-id": self.r.xrange("sensors:t1")[15 + i][0]
                                    .decode()})
        end = msgs[5]
        self.assertEqual(end[1], b"req-1")
        self.assertEqual(end[2], {"replay-end": "ok"})
        self.assertEqual(json.loads(end[0]), {"replay": "end", "status": "ok",
                                              "topic": "sensors/t1",
                                              "stream": "sensors:t1", "count": 5})
        self.assertEqual(len(ids), 20)

        # more than the stream holds: all 20
        ans2 = Answers(dev, rt + "/2")
        dev.subscribe(rt + "/2")
        self.request(dev, {"topic": "sensors/t1", "count": 1000}, rt + "/2", b"req-2")
        msgs = ans2.wait_end()
        self.assertEqual([m[0] for m in msgs[:-1]], [b"m%d" % i for i in range(1, 21)])
        self.assertEqual(json.loads(msgs[-1][0])["count"], 20)

        self.assertEqual(rsub.summary(), [], "a replay request reached Redis")
        b.stop()
        _, c = self.exit_stats(b)
        self.assertEqual((c["replay_requests"], c["replay_messages"],
                          c["replay_errors"]), ("2", "25", "0"))

    def test_errors_are_answered_and_the_bridge_keeps_running(self):
        b = self.bridge()
        self.fill(3)
        dev, rt, ans = self.asker()
        cases = [
            ({"topic": "nothing/here", "count": 5}, "no stream route maps this topic"),
            (b"{not json", "request is not a JSON object"),
            ({"topic": "sensors/t1", "count": 0}, "count: not an integer from 1 to 1000"),
            ({"topic": "sensors/t1", "count": 1001}, "count: not an integer from 1 to 1000"),
            ({"topic": "sensors/t1"}, "count: missing"),
            ({"topic": "sensors/+", "count": 1}, "topic: not a topic name"),
            ({"topic": "sensors/t1", "count": 1, "colour": 1}, "unknown key \"colour\""),
        ]
        for i, (payload, _) in enumerate(cases):
            self.request(dev, payload, rt, b"e%d" % i)
        msgs = ans.wait_end(len(cases))
        self.assertEqual(len(msgs), len(cases), msgs)
        for i, (m, (_, want)) in enumerate(zip(msgs, cases)):
            self.assertEqual(m[1], b"e%d" % i)
            self.assertEqual(m[2], {"replay-end": "error"})
            body = json.loads(m[0])
            self.assertEqual((body["replay"], body["status"]), ("end", "error"), body)
            self.assertIn(want, body["error"])
        # still working: a good request after the bad ones
        self.request(dev, {"topic": "sensors/t1", "count": 2}, rt, b"ok")
        msgs = ans.wait_end(len(cases) + 1)
        self.assertEqual([m[0] for m in msgs[len(cases):len(cases) + 2]], [b"m2", b"m3"])
        self.assertTrue(b.alive())
        # the error answers are logged rate-limited: one line per 10 s
        # (MRB_RATELIMIT_MS) for all of them, the rest counted
        self.assertEqual(b.count("replay: request for"), 1, b.tail())
        b.stop()
        _, c = self.exit_stats(b)
        self.assertEqual((c["replay_requests"], c["replay_errors"]),
                         (str(len(cases) + 1), str(len(cases))))

    def test_redis_down_and_long_correlation_data_are_answered(self):
        b = self.bridge()
        self.fill(2)
        dev, rt, ans = self.asker()
        self.request(dev, {"topic": "sensors/t1", "count": 1}, rt, b"x" * 1025)
        msgs = ans.wait_end()
        self.assertEqual(len(msgs), 1, msgs)
        self.assertIsNone(msgs[0][1])
        self.assertIn("Correlation Data longer than 1024 bytes",
                      json.loads(msgs[0][0])["error"])
        mark = b.mark()
        self.rs.stop()
        self.assert_log(b, harness.LOST_RE, since=mark)
        self.request(dev, {"topic": "sensors/t1", "count": 1}, rt, b"down")
        msgs = ans.wait_end(2)
        self.assertEqual(len(msgs), 2, msgs)
        self.assertEqual(msgs[1][1], b"down")
        self.assertIn("Redis", json.loads(msgs[1][0])["error"])
        self.assertTrue(b.alive())

    def stopped_redis_under_a_request(self, shutdown_timeout_ms):
        """A bridge with a stream route (MQTT -> Redis only and no stats
        reports: nothing else of the shutdown waits for Redis), 2 entries,
        Redis stopped (SIGSTOP: connections stay up, no replies), and a
        request whose XREVRANGE the bridge has sent. (bridge, Answers)"""
        cfg = self.write_config({
            "id": BID, "mqtt": {"url": self.mq.url}, "redis": {"url": self.rs.url},
            "shutdown_timeout_ms": shutdown_timeout_ms, "stats_interval": 0,
            "log_level": "debug",
            "routes": [{"mqtt": "sensors/+", "redis": "sensors:*",
                        "direction": "mqtt_to_redis", "mode": "stream"}]})
        b = self.start_bridge(None, None, "-c", cfg)
        self.fill(2)
        proc = self.rs.proc
        proc.send_signal(harness.signal.SIGSTOP)
        self.addCleanup(lambda: proc.poll() is None and
                        proc.send_signal(harness.signal.SIGCONT))
        dev, rt, ans = self.asker()
        mark = b.mark()
        self.request(dev, {"topic": "sensors/t1", "count": 2}, rt, b"late")
        self.assertTrue(b.wait_log("replay: XREVRANGE sensors:t1 COUNT 2 sent",
                                   DELIVERY_TIMEOUT, since=mark), b.tail())
        self.assertEqual(ans.msgs, [])
        return b, ans

    def test_shutdown_waits_for_a_query_in_flight(self):
        b, ans = self.stopped_redis_under_a_request(10000)
        b.send_stop()
        time.sleep(0.3)
        self.assertTrue(b.alive(), "the bridge did not wait for the answer")
        self.rs.proc.send_signal(harness.signal.SIGCONT)
        msgs = ans.wait_end()
        self.assertEqual([m[0] for m in msgs[:-1]], [b"m1", b"m2"], msgs)
        b.stop()  # exit 0 within its exit bound (the harness checks)
        _, c = self.exit_stats(b)
        self.assertEqual((c["replay_requests"], c["replay_messages"],
                          c["replay_errors"], c["replay_dropped"]),
                         ("1", "2", "0", "0"))

    def test_answer_not_sent_at_shutdown_is_counted(self):
        """An answer still owed when the shutdown timeout ends is dropped,
        counted in replay_dropped and logged once, not freed silently, and
        not reported as an error of the request."""
        b, ans = self.stopped_redis_under_a_request(500)
        b.stop()
        self.assertEqual(ans.msgs, [])
        self.assertEqual(b.count("shutdown: 1 replay request(s) or answer(s) "
                                 "could not be sent in time"), 1, b.tail())
        self.assertEqual(b.count("answered with an error"), 0, b.tail())
        _, c = self.exit_stats(b)
        self.assertEqual((c["replay_requests"], c["replay_messages"],
                          c["replay_errors"], c["replay_dropped"]),
                         ("1", "0", "0", "1"))

    def test_mqtt311_answered_on_the_documented_topic(self):
        # a route whose filter matches the request topic too: with 3.1.1
        # (no Subscription Identifiers) the broker sends one copy per
        # client, so the request is answered once, and not bridged
        self.bridge([{"mqtt": "sensors/+", "redis": "sensors:*", "mode": "stream"},
                     {"mqtt": "bridge/+/replay", "redis": "req:*",
                      "direction": "mqtt_to_redis"}], protocol="3.1.1")
        rsub = self.redis_sub(self.rs.port, patterns=["req:*"])
        self.fill(6)
        dev = self.mqtt_client(self.mq.port, protocol=3, name="dev311")
        ans = Answers(dev, DEFAULT_RESPONSE)
        dev.subscribe(DEFAULT_RESPONSE)
        own = "dev/%s/mine" % unique("d")
        ans2 = Answers(dev, own)
        dev.subscribe(own)
        dev.publish(REQ, json.dumps({"topic": "sensors/t1", "count": 3}).encode())
        msgs = ans.wait_end()
        self.assertEqual([m[0] for m in msgs[:-1]], [b"m4", b"m5", b"m6"])
        self.assertEqual(json.loads(msgs[-1][0])["status"], "ok")
        dev.publish(REQ, json.dumps({"topic": "sensors/t1", "count": 1,
                                     "response_topic": own}).encode())
        msgs = ans2.wait_end()
        self.assertEqual([m[0] for m in msgs], [b"m6", msgs[-1][0]])
        time.sleep(harness.QUIET)  # no second answer to either request
        self.assertEqual(len(ans2.msgs), 2, ans2.msgs)
        self.assertEqual(len(ans.msgs), 4, "the second answer went to its own "
                         "topic, the first came once: %r" % ans.msgs)
        self.assertEqual(rsub.summary(), [], "a replay request reached Redis")

    def test_redis_to_mqtt_stream_route_and_no_replay_without_streams(self):
        # an XADD-fed stream (Redis -> MQTT only) can be replayed too
        b = self.bridge([{"mqtt": "alerts/+", "redis": "alerts:*",
                          "direction": "redis_to_mqtt", "mode": "stream"}])
        for i in range(4):
            self.r.xadd("alerts:a", {"payload": b"a%d" % i})
        dev, rt, ans = self.asker()
        self.request(dev, {"topic": "alerts/a", "count": 2}, rt)
        msgs = ans.wait_end()
        self.assertEqual([m[0] for m in msgs[:-1]], [b"a2", b"a3"])
        self.assertIsNone(msgs[0][1], "no correlation data was sent")
        b.stop()
        # without a stream route the bridge does not subscribe the topic
        b2 = self.bridge([{"mqtt": "x/+", "redis": "x:*"}])
        self.request(dev, {"topic": "x/a", "count": 2}, rt)
        time.sleep(harness.QUIET)
        self.assertEqual(len(ans.msgs), 3)
        b2.stop()
        _, c = self.exit_stats(b2)
        self.assertEqual(c["replay_requests"], "0")


if __name__ == "__main__":
    harness.main()
