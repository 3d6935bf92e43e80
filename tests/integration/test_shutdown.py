#!/usr/bin/python3
"""Shutdown while a side is down: the flush waits without burning CPU, gives
up after shutdown_timeout_ms and counts what it could not deliver; a broker
that comes back within the timeout still gets the queued messages."""

import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import BridgeTestCase, unique

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a running process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class ShutdownTest(BridgeTestCase):

    def setUp(self):
        super().setUp()
        self.rs = self.start_redis()
        self.mq = self.start_mosquitto()

    def bridge(self, timeout_ms, min_ms=250):
        cfg = self.write_config({
            "id": "sd", "mqtt": {"url": self.mq.url}, "redis": {"url": self.rs.url},
            "reconnect": {"min_ms": min_ms, "max_ms": 2000},
            "shutdown_timeout_ms": timeout_ms})
        return self.start_bridge(None, None, "-c", cfg)

    def idle_while_flush_waits(self, b, n, left=0):
        """SIGTERM with n messages that cannot be delivered: the bridge must
        wait (not spin) until the timeout, then exit 0 and count them (and
        `left` QoS 1 messages it left unacknowledged with the broker)."""
        b.proc.send_signal(harness.signal.SIGTERM)
        b.stopped_by_test = True
        time.sleep(0.3)
        self.assertTrue(b.alive(), "exited before its shutdown timeout:\n"
                        + b.tail())
        before = cpu_seconds(b.proc.pid)
        time.sleep(1.5)
        used = cpu_seconds(b.proc.pid) - before
        # a spinning poll() loop burns ~1.5 s here; waiting costs ~nothing
        self.assertLess(used, 0.3, "CPU seconds used in 1.5 s of waiting "
                        "to flush")
        code, in_time = b.stop()
        self.assertEqual((code, in_time), (0, True), b.tail())
        line, c = self.exit_stats(b)
        self.assertEqual((c["dropped_shutdown"], c["left_with_broker"]),
                         (str(n), str(left)), line)

    def test_redis_down_flush_waits_without_spinning(self):
        # QoS 0: taken into the queue, lost (and counted) at the timeout
        b = self.bridge(3000)
        pub = self.mqtt_client(self.mq.port, name="pub")
        self.rs.stop()
        self.assertTrue(b.wait_log(harness.LOST_RE, harness.DELIVERY_TIMEOUT))
        for i in range(5):
            pub.publish("news", unique("q%d" % i).encode(), qos=0)
        time.sleep(0.3)
        self.idle_while_flush_waits(b, 5)

    def test_redis_down_qos1_stays_with_the_broker(self):
        """QoS 1 while Redis is down: the bridge takes one message and does
        not acknowledge it (the broker holds the rest: backpressure); at
        shutdown nothing is dropped, and after a restart every message
        reaches Redis."""
        b = self.bridge(3000)
        pub = self.mqtt_client(self.mq.port, name="pub")
        self.rs.stop()
        self.assertTrue(b.wait_log(harness.LOST_RE, harness.DELIVERY_TIMEOUT))
        sent = [unique("k%d" % i).encode() for i in range(5)]
        for p in sent:
            pub.c.publish("news", p, qos=1)
        time.sleep(0.5)
        self.idle_while_flush_waits(b, 0, left=1)
        self.rs.start()
        rsub = self.redis_sub(self.rs.port, channels=["news"])
        b2 = self.bridge(3000)
        self.assertTrue(b2.wait_log("ready", harness.DELIVERY_TIMEOUT), b2.tail())
        self.assert_once_each(
            {"redis %s" % p.decode(): (lambda p=p: rsub.count("news", p)) for p in sent},
            "5 QoS 1 messages published while Redis was down, after restarting "
            "Redis and the bridge", subscribers=[rsub])

    def test_broker_down_flush_waits_without_spinning(self):
        b = self.bridge(3000)
        r = self.redis_client(self.rs.port)
        self.mq.stop()
        self.assertTrue(b.wait_log(harness.LOST_RE, harness.DELIVERY_TIMEOUT))
        for i in range(4):
            r.publish("news", unique("q%d" % i))
        time.sleep(0.3)
        self.idle_while_flush_waits(b, 4)

    def test_broker_back_during_shutdown_gets_the_queue(self):
        # reconnect no sooner than 1.5 s, so that the test's subscriber is on
        # the restarted broker before the bridge flushes to it
        b = self.bridge(8000, min_ms=1500)
        r = self.redis_client(self.rs.port)
        self.mq.stop()
        self.assertTrue(b.wait_log(harness.LOST_RE, harness.DELIVERY_TIMEOUT))
        sent = [unique("q%d" % i).encode() for i in range(3)]
        for p in sent:
            r.publish("news", p)
        time.sleep(0.3)
        b.proc.send_signal(harness.signal.SIGTERM)
        b.stopped_by_test = True
        self.mq.start()
        sub = self.mqtt_client(self.mq.port, "news", "bridge/sd/status",
                               name="sub")
        harness.wait_until(lambda: all(sub.count("news", p) for p in sent),
                           harness.RECOVERY_TIMEOUT)
        code, in_time = b.stop()
        self.assertEqual([sub.count("news", p) for p in sent], [1, 1, 1],
                         "queued messages after the broker came back")
        self.assertEqual((code, in_time), (0, True), b.tail())
        line, c = self.exit_stats(b)
        self.assertEqual(c["dropped_shutdown"], "0", line)
        # no "online" while shutting down: the last status is "offline"
        status = [m.payload for m in sub.snapshot() if m.topic == "bridge/sd/status"]
        self.assertEqual(status[-1:], [b"offline"], status)

    def stalled_shutdown(self, server, qos1_in_flight):
        """SIGTERM while a server is stopped (SIGSTOP: its sockets stay open
        and silent) must not hang: exit 0 within the shutdown timeout plus
        the MQTT disconnect's own bounded waits."""
        cfg = self.write_config({
            "id": "stall", "mqtt": {"url": self.mq.url, "keepalive": 2},
            "redis": {"url": self.rs.url, "keepalive": 2},
            "reconnect": {"min_ms": 100, "max_ms": 500},
            "shutdown_timeout_ms": 1000})
        b = self.start_bridge(None, None, "-c", cfg)
        pub = self.mqtt_client(self.mq.port, name="pub")
        proc = server.proc
        proc.send_signal(harness.signal.SIGSTOP)
        self.addCleanup(lambda: proc.poll() is None and
                        proc.send_signal(harness.signal.SIGCONT))
        if qos1_in_flight:
            # a QoS 1 message that waits for the stopped Redis
            pub.c.publish("news", b"waits", qos=1)
            time.sleep(0.5)
        t0 = time.monotonic()
        code, in_time = b.stop(timeout=15)
        took = time.monotonic() - t0
        self.assertEqual((code, in_time), (0, True), b.tail())
        self.assertLess(took, 8.0, "shutdown with a stopped server took "
                        "%.1f s:\n%s" % (took, b.tail()))
        return b

    def test_shutdown_with_redis_stopped(self):
        b = self.stalled_shutdown(self.rs, True)
        line, c = self.exit_stats(b)
        self.assertEqual(c["left_with_broker"], "1", line)

    def test_shutdown_with_broker_stopped(self):
        self.stalled_shutdown(self.mq, False)

    def test_shutdown_while_the_handshake_waits_for_a_stopped_redis(self):
        """Redis accepts TCP (the kernel does) but never answers: the
        connection handshakes wait up to their timeout (10 s with the
        default keepalive); a SIGTERM must not wait for them."""
        self.rs.proc.send_signal(harness.signal.SIGSTOP)
        proc = self.rs.proc
        self.addCleanup(lambda: proc.poll() is None and
                        proc.send_signal(harness.signal.SIGCONT))
        b = self.start_bridge(self.mq.port, self.rs.port, "--id", "hs", ready=False)
        time.sleep(1.0)
        t0 = time.monotonic()
        code, in_time = b.stop(timeout=15)
        took = time.monotonic() - t0
        self.assertEqual((code, in_time), (0, True), b.tail())
        self.assertLess(took, 4.0, "shutdown during a stuck handshake took "
                        "%.1f s:\n%s" % (took, b.tail()))


if __name__ == "__main__":
    harness.main()
