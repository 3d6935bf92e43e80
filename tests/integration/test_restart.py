#!/usr/bin/python3
"""Server outages: Redis and mosquitto restarted under a running bridge, the
bridge started before both servers, and messages queued while Redis is down."""

import re
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import LOST_RE, RECOVERY_TIMEOUT, ServersTestCase, unique, with_servers


class RestartTest(ServersTestCase):

    def _flow_both_ways(self, what, timeout=None):
        """Fresh clients; one message each way must arrive exactly once."""
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        pub = self.mqtt_client(self.mq.port, name="pub")
        r = self.redis_client(self.rs.port)
        up = unique("up").encode()
        pub.publish("news", up)
        self.assert_once_each({
            "redis news (from mqtt)": lambda: rsub.count("news", up),
            "mqtt news (direct)": lambda: msub.count("news", up),
        }, "%s: MQTT -> Redis" % what, timeout=timeout, subscribers=[rsub, msub])
        down = unique("down").encode()
        r.publish("news", down)
        self.assert_once_each({
            "mqtt news (from redis)": lambda: msub.count("news", down),
            "redis news (direct)": lambda: rsub.count("news", down),
        }, "%s: Redis -> MQTT" % what, timeout=timeout, subscribers=[rsub, msub])
        return msub, rsub, pub, r

    def _close(self, *clients):
        for c in clients:
            c.close()

    # 6a. Redis restarted -----------------------------------------------------
    def test_redis_restart(self):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="rr")
        self._close(*self._flow_both_ways("before the Redis restart"))

        mark = bridge.mark()
        self.rs.stop()
        self.assert_log(bridge, LOST_RE, since=mark,
                        what="Redis stopped under the bridge")
        time.sleep(1.5)  # the outage: several reconnect attempts fail
        self.rs.start()  # same port
        self.assert_log(bridge, "reconnected", since=mark,
                        timeout=RECOVERY_TIMEOUT, what="Redis back")
        r = self.redis_client(self.rs.port)

        # subscribed again, once: one SUBSCRIBE news, one PSUBSCRIBE user:*
        def resubscribed():
            return (dict(r.pubsub_numsub("news")).get(b"news", 0) == 1
                    and r.pubsub_numpat() == 1)
        if not harness.wait_until(resubscribed, RECOVERY_TIMEOUT, 0.05):
            self.fail("bridge did not re-subscribe after the Redis restart: "
                      "NUMSUB news=%r NUMPAT=%r"
                      % (r.pubsub_numsub("news"), r.pubsub_numpat()))
        self._flow_both_ways("after the Redis restart",
                             timeout=RECOVERY_TIMEOUT)
        self.assertEqual(bridge.count(LOST_RE, since=mark), 1,
                         "one Redis outage must be logged exactly once; "
                         "log since the outage:\n%s" % bridge.log()[mark:])

    # 6b. mosquitto restarted -------------------------------------------------
    def test_mosquitto_restart(self):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="mr")
        self._close(*self._flow_both_ways("before the broker restart"))

        mark = bridge.mark()
        self.mq.stop()
        self.assert_log(bridge, LOST_RE, since=mark,
                        what="mosquitto stopped under the bridge")
        self.mq.start()  # same port, no persistence: all sessions are gone
        self.assert_log(bridge, "reconnected", since=mark,
                        timeout=RECOVERY_TIMEOUT, what="mosquitto back")

        # The bridge must subscribe again on the fresh broker.  Probe with
        # distinct payloads (bounded) until one crosses MQTT -> Redis.
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        pub = self.mqtt_client(self.mq.port, name="probe")
        probes = []
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        for i in range(60):
            p = ("probe-%d-" % i).encode() + unique().encode()
            probes.append(p)
            pub.publish("news", p)
            if harness.wait_until(lambda: any(rsub.count("news", q)
                                              for q in probes), 0.25):
                break
            if time.monotonic() > deadline:
                break
        if not any(rsub.count("news", q) for q in probes):
            self.fail("no MQTT -> Redis message within %.0fs after the broker "
                      "restart (bridge did not re-subscribe?)" % RECOVERY_TIMEOUT)
        self._flow_both_ways("after the broker restart",
                             timeout=RECOVERY_TIMEOUT)
        self.assertEqual(bridge.count(LOST_RE, since=mark), 1,
                         "one broker outage must be logged exactly once; "
                         "log since the outage:\n%s" % bridge.log()[mark:])
        # the new broker has no persistence: the bridge must publish its
        # retained online status again
        st = self.mqtt_client(self.mq.port, "bridge/mr/status", name="status")
        m = st.wait_for(lambda m: m.topic == "bridge/mr/status")
        self.assertIsNotNone(m, "no retained status on the restarted broker")
        self.assertEqual((m.payload, m.retain), (b"online", True))

    # 7. bridge first, servers later -------------------------------------------
    @with_servers(redis={"start": False}, mosquitto={"start": False})
    def test_bridge_started_before_servers(self):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="early",
                                   ready=False)
        self.assert_log(bridge, "cannot connect",
                        what="bridge started with no servers")
        self.assertTrue(bridge.alive(), "bridge exited while servers were "
                        "down: %s" % bridge.tail())
        self.rs.start()
        self.mq.start()
        bridge.wait_ready(RECOVERY_TIMEOUT)
        self._flow_both_ways("servers started after the bridge",
                             timeout=RECOVERY_TIMEOUT)
        self.assertEqual(bridge.count("cannot connect"), 2,
                         "'cannot connect' should be logged once per "
                         "outage per side (both were down), not per retry:\n%s"
                         % bridge.tail())

    # Redis drops the bridge's connections without restarting -------------
    def test_redis_connections_killed(self):
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="kill")
        admin = self.redis_client(self.rs.port)
        mark = bridge.mark()
        names = sorted(c["name"] for c in admin.client_list()
                       if int(c["id"]) != admin.client_id())
        self.assertEqual(names, ["mrb:kill:ingest", "mrb:kill:publisher",
                                 "mrb:kill:subscriber"], "the bridge's connections")
        killed = admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        killed += admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
        self.assertEqual(killed, 3, "connections killed (the bridge's three)")
        self.assert_log(bridge, LOST_RE, since=mark,
                        what="Redis closed the bridge's connections")

        def resubscribed():
            return (dict(admin.pubsub_numsub("news")).get(b"news", 0) == 1
                    and admin.pubsub_numpat() == 1)
        if not harness.wait_until(resubscribed, RECOVERY_TIMEOUT, 0.05):
            self.fail("bridge did not re-subscribe (once) after CLIENT KILL: "
                      "NUMSUB news=%r NUMPAT=%r"
                      % (admin.pubsub_numsub("news"), admin.pubsub_numpat()))
        self._flow_both_ways("after CLIENT KILL",
                             timeout=RECOVERY_TIMEOUT)

    # bounded queue overflows while Redis is down ------------------------------
    def test_queue_full_while_redis_down(self):
        cfg = self.write_config({
            "id": "qfull",
            "mqtt": {"url": self.mq.url},
            "redis": {"url": self.rs.url},
            "limits": {"queue_messages": 3},
            "reconnect": {"min_ms": 1500, "max_ms": 3000},
        })
        bridge = self.start_bridge(None, None, "-c", cfg)
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")
        mark = bridge.mark()
        self.rs.stop()
        self.assert_log(bridge, LOST_RE, since=mark,
                        what="Redis stopped under the bridge")
        # QoS 0 overflow is dropped oldest first (QoS 1 would stay with the
        # broker instead: test_shutdown, test_faults)
        sent = [("q-%d-" % i).encode() + unique().encode() for i in range(6)]
        for p in sent:
            pub.publish("news", p, qos=0)
        harness.wait_until(lambda: all(msub.count("news", p) for p in sent),
                           harness.DELIVERY_TIMEOUT)
        self.assert_log(bridge, re.compile(r"dropped.*queue full|queue full.*dropped"),
                        since=mark, what="warning for a full queue")
        self.rs.start()
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        harness.wait_until(lambda: len(rsub.snapshot()) >= 3, RECOVERY_TIMEOUT,
                           0.05)
        time.sleep(harness.QUIET)
        got = [m.data for m in rsub.snapshot()]
        # the newest 3 waited in the queue; an older one may have been
        # written to Redis before the loss was noticed: it is sent again,
        # not dropped
        self.assertEqual(got[-3:], sent[3:], "queue_messages 3: the newest 3 "
                         "of 6 survive the outage, in order; got %r" % got)
        self.assertEqual(got, [p for p in sent if p in got], "in order, once")
        bridge.stop()
        msgs = harness.stats_lines(bridge)
        self.assertEqual(len(msgs), 1, bridge.tail())
        c = harness.stats_counters(msgs[0])
        self.assertEqual(c.get("dropped_queue_full"), str(6 - len(got)), msgs[0])

    # 13. messages queued while Redis is down -----------------------------------
    def test_queue_while_redis_down(self):
        cfg = self.write_config({
            "id": "queue",
            "mqtt": {"url": self.mq.url},
            "redis": {"url": self.rs.url},
            # slow retries so that the test's subscriber is on the restarted
            # Redis before the bridge flushes its queue
            "reconnect": {"min_ms": 1500, "max_ms": 3000},
        })
        bridge = self.start_bridge(None, None, "-c", cfg)
        msub = self.mqtt_client(self.mq.port, "news", name="sub")
        pub = self.mqtt_client(self.mq.port, name="pub")

        mark = bridge.mark()
        self.rs.stop()
        self.assert_log(bridge, LOST_RE, since=mark,
                        what="Redis stopped under the bridge")
        queued = [("queued-%d-" % i).encode() + unique().encode()
                  for i in range(5)]
        for p in queued:
            pub.publish("news", p)
        # the broker has delivered them (to our subscriber and the bridge)
        harness.wait_until(lambda: all(msub.count("news", p) for p in queued),
                           harness.DELIVERY_TIMEOUT)
        time.sleep(0.2)
        self.assertTrue(bridge.alive(), "bridge exited: %s" % bridge.tail())

        self.rs.start()
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        conns = self.redis_client(self.rs.port).info("stats").get("total_connections_received")
        ok = harness.wait_until(
            lambda: all(rsub.count("news", p) for p in queued),
            RECOVERY_TIMEOUT, 0.05)
        time.sleep(harness.QUIET)
        got = [m.data for m in rsub.snapshot()]
        self.assertTrue(ok, "queued messages did not reach Redis after its "
                        "restart: got %d of %d (%r); Redis had accepted %r "
                        "connections when the test subscribed"
                        % (sum(1 for p in queued if p in got), len(queued),
                           got, conns))
        self.assertEqual(got, queued, "each queued message exactly once, "
                         "in publish order")


    # servers killed in the middle of a burst ---------------------------------
    def test_broker_killed_mid_burst(self):
        """The bridge has QoS 1 publishes in flight inside Paho when the broker
        dies (SIGKILL): its flow-control windows must not stay held by them,
        or nothing would cross after the broker is back."""
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="mkill")
        r = self.redis_client(self.rs.port)
        pipe = r.pipeline(transaction=False)
        for i in range(3000):
            pipe.publish("news", b"burst%d" % i)
        pipe.execute()
        mark = bridge.mark()
        self.mq.stop(sig=harness.signal.SIGKILL)
        self.assert_log(bridge, LOST_RE, since=mark, what="broker killed")
        self.mq.start()
        self.assert_log(bridge, "ready:", since=mark,
                        timeout=RECOVERY_TIMEOUT, what="broker back")
        self._flow_both_ways("after the broker was killed mid-burst",
                             timeout=RECOVERY_TIMEOUT)

    def test_redis_killed_mid_burst(self):
        """Likewise with PUBLISHes pipelined to Redis when it dies."""
        bridge = self.start_bridge(self.mq.port, self.rs.port, bridge_id="rkill")
        pub = self.mqtt_client(self.mq.port, name="pub")
        for i in range(3000):
            pub.c.publish("news", b"burst%d" % i, qos=0)
        mark = bridge.mark()
        self.rs.stop(sig=harness.signal.SIGKILL)
        self.assert_log(bridge, LOST_RE, since=mark, what="Redis killed")
        self.rs.start()
        self.assert_log(bridge, "ready:", since=mark,
                        timeout=RECOVERY_TIMEOUT, what="Redis back")
        self._flow_both_ways("after Redis was killed mid-burst",
                             timeout=RECOVERY_TIMEOUT)


if __name__ == "__main__":
    harness.main()
