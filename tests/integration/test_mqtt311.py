#!/usr/bin/python3
"""mqtt.protocol "3.1.1": no No Local, so only the bridge's echo table keeps
its own MQTT publications from coming back into Redis.  Also checks on the
broker's log which protocol version the bridge really used."""

import re
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique


class ProtocolTest(ServersTestCase):

    def bridge(self, protocol, client_id):
        cfg = self.write_config({
            "id": "p" + client_id,
            "mqtt": {"url": self.mq.url, "client_id": client_id,
                     "protocol": protocol},
            "redis": {"url": self.rs.url}})
        return self.start_bridge(None, None, "-c", cfg)

    def assert_broker_saw(self, client_id, pversion):
        # mosquitto: "New client connected from 127.0.0.1:N as ID (p2, c1, k60)."
        pat = re.compile(r"New client connected from \S+ as %s \(p(\d)"
                         % re.escape(client_id))
        seen = harness.wait_until(lambda: pat.findall(self.mq.log()), 2)
        self.assertTrue(seen, "broker log has no connection of %s:\n%s"
                        % (client_id, harness.tail(self.mq.log())))
        self.assertEqual(set(seen), {pversion},
                         "protocol level(s) used by the bridge (p2 = 3.1.1, "
                         "p5 = 5)")

    def no_echo_both_ways(self, client_protocol, port=None):
        port = port or self.mq.port
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(port, "news", protocol=client_protocol,
                                name="sub")
        pub = self.mqtt_client(port, protocol=client_protocol, name="pub")
        up = unique("up").encode()
        pub.publish("news", up)
        self.assert_once_each({
            "redis news": lambda: rsub.count("news", up),
            "mqtt news": lambda: msub.count("news", up),
        }, "MQTT publish news", subscribers=[rsub, msub])
        down = unique("down").encode()
        self.r.publish("news", down)
        self.assert_once_each({
            "mqtt news": lambda: msub.count("news", down),
            "redis news": lambda: rsub.count("news", down),
        }, "Redis PUBLISH news", subscribers=[rsub, msub])
        # a few more in a row, both ways interleaved
        sent = []
        for i in range(5):
            a = unique("a%d" % i).encode()
            b = unique("b%d" % i).encode()
            sent += [a, b]
            pub.publish("news", a)
            self.r.publish("news", b)
        harness.wait_until(lambda: all(rsub.count("news", p) and
                                       msub.count("news", p) for p in sent),
                           harness.DELIVERY_TIMEOUT)
        time.sleep(harness.QUIET)
        bad = {p: (rsub.count("news", p), msub.count("news", p)) for p in sent
               if (rsub.count("news", p), msub.count("news", p)) != (1, 1)}
        self.assertEqual(bad, {}, "payload: (redis copies, mqtt copies)")

    def test_mqtt_311_no_echo(self):
        self.bridge("3.1.1", "mrb311")
        self.assert_broker_saw("mrb311", "2")
        self.no_echo_both_ways(4)

    def test_mqtt_5_no_echo(self):
        self.bridge("5", "mrb5")
        self.assert_broker_saw("mrb5", "5")
        self.no_echo_both_ways(5)

    def test_auto_falls_back_to_311_when_the_broker_refuses_mqtt5(self):
        """mqtt.protocol "auto" (the default) against aedes, a real broker
        without MQTT 5 (mosquitto always accepts 5): one warning, then MQTT
        3.1.1 with forwarding both ways and no echoes; after the broker
        restarts, 3.1.1 at once, without trying 5 or warning again."""
        why = harness.Aedes.missing()
        self.assertIsNone(why, "this test needs aedes: %s" % why)
        ae = self.start_aedes()
        cfg = self.write_config({
            "id": "pauto", "mqtt": {"url": ae.url, "client_id": "mrbauto"},
            "redis": {"url": self.rs.url}})
        b = self.start_bridge(None, None, "-c", cfg)
        self.assertEqual(b.count("mqtt: the broker refused MQTT 5"), 1, b.tail())
        self.assertEqual(b.count(re.compile(r"ready: .*\(MQTT 3\.1\.1\)")), 1,
                         b.tail())
        self.assertEqual(ae.log().count("unacceptable protocol version"), 1,
                         ae.log())
        self.assertIn("client connected: mrbauto (protocol level 4)", ae.log())
        self.no_echo_both_ways(4, port=ae.port)

        mark = b.mark()
        refused = ae.log().count("unacceptable protocol version")
        ae.stop()
        self.assertTrue(b.wait_log(harness.LOST_RE, harness.DELIVERY_TIMEOUT,
                                   since=mark), b.tail())
        ae.start()
        self.assertTrue(b.wait_log("mqtt: reconnected", harness.RECOVERY_TIMEOUT,
                                   since=mark), b.tail())
        # subscribed again (aedes kept no session): "ready:" comes once the
        # broker has acknowledged the subscriptions
        self.assertTrue(b.wait_log("ready: ", harness.RECOVERY_TIMEOUT,
                                   since=mark), b.tail())
        self.assertEqual(ae.log().count("unacceptable protocol version"), refused,
                         "MQTT 5 tried again after the restart:\n" + ae.log())
        self.assertEqual(b.count("refused MQTT 5"), 1, b.tail())
        # still forwarding
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        pub = self.mqtt_client(ae.port, protocol=4, name="pub2")
        p = unique("again").encode()
        pub.publish("news", p)
        self.assert_once_each({"redis news": lambda: rsub.count("news", p)},
                              "MQTT publish after the broker restart",
                              subscribers=[rsub])
        b.stop()

    def stored_retained_not_replayed(self, protocol, client_id):
        """A retained message the broker already holds is state, not news:
        it must not be published into Redis when the bridge subscribes (and
        so again after every reconnect); live messages still cross."""
        stale = unique("stale").encode()
        pub = self.mqtt_client(self.mq.port, name="pub")
        pub.publish("news", stale, retain=True)
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        b = self.bridge(protocol, client_id)
        fresh = unique("fresh").encode()
        pub.publish("news", fresh)
        live_retained = unique("live-retained").encode()
        pub.publish("news", live_retained, retain=True)
        self.assert_once_each({
            "redis news fresh": lambda: rsub.count("news", fresh),
            "redis news live retained": lambda: rsub.count("news", live_retained),
        }, "live MQTT publishes on news", subscribers=[rsub])
        self.assertEqual(rsub.count("news", stale), 0,
                         "stored retained message replayed into Redis")
        b.stop()
        return self.exit_stats(b)[1]

    def test_mqtt_5_stored_retained_not_replayed(self):
        counters = self.stored_retained_not_replayed("5", "mrbret5")
        self.assertEqual(counters["mqtt_in"], "2")  # the two live ones

    def test_mqtt_311_stored_retained_not_replayed(self):
        counters = self.stored_retained_not_replayed("3.1.1", "mrbret311")
        # 3.1.1 cannot ask the broker to hold them back: skipped and counted
        self.assertEqual(counters["retained_skipped"], "1")

    def test_overlapping_filters_once_per_target(self):
        """MQTT 3.1.1 has no Subscription Identifiers: the bridge relies on
        the broker sending one copy per client for overlapping filters."""
        for protocol in ("3.1.1", "5"):
            cfg = self.write_config({
                "id": "ov" + protocol.replace(".", ""),
                "mqtt": {"url": self.mq.url, "protocol": protocol,
                         "client_id": "ov" + protocol},
                "redis": {"url": self.rs.url},
                "routes": [{"mqtt": "a/+", "redis": "x:*", "direction": "mqtt_to_redis"},
                           {"mqtt": "a/#", "redis": "y:*", "direction": "mqtt_to_redis"}]},
                name="ov%s.json" % protocol)
            b = self.start_bridge(None, None, "-c", cfg)
            rsub = self.redis_sub(self.rs.port, patterns=["x:*", "y:*"])
            pub = self.mqtt_client(self.mq.port, name="pub" + protocol)
            p = unique("ov").encode()
            pub.publish("a/b", p)
            self.assert_once_each({
                "redis x:b": lambda: rsub.count("x:b", p),
                "redis y:b": lambda: rsub.count("y:b", p),
            }, "MQTT %s publish a/b through overlapping filters" % protocol,
                subscribers=[rsub])
            b.stop()

    def test_mqtt_311_echo_recognised_after_long_redis_outage(self):
        """With 3.1.1 the echo of a Redis message comes back from the broker
        and waits in the MQTT->Redis queue while the bridge cannot PUBLISH;
        it must still be recognised after longer than the 5 s fingerprint
        lifetime (it is judged by its arrival time)."""
        cfg = self.write_config({
            "id": "echo311",
            "mqtt": {"url": self.mq.url, "protocol": "3.1.1", "client_id": "echo311"},
            "redis": {"url": self.rs.url},
            "reconnect": {"min_ms": 100, "max_ms": 500}})
        b = self.start_bridge(None, None, "-c", cfg)
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        msub = self.mqtt_client(self.mq.port, "news", protocol=4, name="sub")
        me = self.r.client_id()
        # lock new connections out (this one stays authenticated), then drop
        # the bridge's publisher: its subscriber keeps Redis->MQTT going
        self.r.config_set("requirepass", "locked-out")
        self.addCleanup(lambda: self.r.config_set("requirepass", ""))
        # the connections that write: the publisher (its loss is logged)
        # and the ingest connection (MQTT -> Redis)
        pubs = [c for c in self.r.client_list() if int(c["id"]) != me
                and c["name"] in ("mrb:echo311:publisher", "mrb:echo311:ingest")]
        self.assertEqual(len(pubs), 2, "the bridge's writing connections: %r"
                         % self.r.client_list())
        mark = b.mark()
        for c in pubs:
            self.r.client_kill_filter(_id=c["id"])
        self.assert_log(b, harness.LOST_RE, since=mark, what="publisher dropped")
        p = unique("echo").encode()
        self.r.publish("news", p)
        self.assert_once_each({"mqtt news": lambda: msub.count("news", p)},
                              "Redis PUBLISH news with the publisher down",
                              subscribers=[msub])
        time.sleep(6)  # longer than the fingerprint lifetime (5 s)
        self.r.config_set("requirepass", "")
        self.assert_log(b, "reconnected", since=mark,
                        timeout=harness.RECOVERY_TIMEOUT, what="publisher back")
        time.sleep(1)
        self.assertEqual(rsub.count("news", p), 1,
                         "copies in Redis: the original only, not the echo")
        b.stop()
        self.assertEqual(self.exit_stats(b)[1]["echoes"], "1")

    def test_auto_uses_mqtt_5_on_mosquitto_2(self):
        self.bridge("auto", "mrbauto")
        self.assert_broker_saw("mrbauto", "5")


if __name__ == "__main__":
    harness.main()
