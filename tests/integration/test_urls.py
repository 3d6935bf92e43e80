#!/usr/bin/python3
"""Connection URL forms at run time: user:password on both sides, a Redis
database number, and a Redis unix socket (unix:/path)."""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import ServersTestCase, unique, with_servers


class UrlTest(ServersTestCase):

    def flow(self, mq_port, rs_port, what, mqtt_auth=(None, None),
             redis_password=None):
        user, pw = mqtt_auth
        msub = self.mqtt_client(mq_port, "news", name="sub", username=user,
                                password=pw)
        pub = self.mqtt_client(mq_port, name="pub", username=user, password=pw)
        rsub = self.redis_sub(rs_port, channels=["news"],
                              password=redis_password)
        r = self.redis_client(rs_port, password=redis_password)
        up = unique("up").encode()
        pub.publish("news", up)
        self.assert_once_each({
            "redis news": lambda: rsub.count("news", up),
            "mqtt news": lambda: msub.count("news", up),
        }, "%s: MQTT -> Redis" % what, subscribers=[rsub, msub])
        down = unique("down").encode()
        r.publish("news", down)
        self.assert_once_each({
            "mqtt news": lambda: msub.count("news", down),
            "redis news": lambda: rsub.count("news", down),
        }, "%s: Redis -> MQTT" % what, subscribers=[rsub, msub])

    @with_servers(redis={"password": "r-secret"},
                  mosquitto={"users": {"bridge": "b-pass", "tester": "t-pass"}})
    def test_credentials_in_urls(self):
        self.start_bridge(
            None, None,
            "--mqtt", "mqtt://bridge:b-pass@127.0.0.1:%d" % self.mq.port,
            "--redis", "redis://default:r-secret@127.0.0.1:%d" % self.rs.port,
            "--id", "auth")
        self.flow(self.mq.port, self.rs.port, "with credentials",
                  mqtt_auth=("tester", "t-pass"), redis_password="r-secret")

    def test_redis_database_number(self):
        """redis://host:port/3: every connection of the bridge works in
        database 3 (pub/sub ignores the database, so the flow alone proves
        nothing): CLIENT LIST says db=3 for each, and what the bridge stores
        (stream entries, the presence hash, its stats hash and the set
        "bridges") is in database 3, not in 0."""
        cfg = self.write_config({
            "id": "db3", "mqtt": {"url": self.mq.url},
            "redis": {"url": "redis://127.0.0.1:%d/3" % self.rs.port,
                      "scan_interval": 1},
            "stats_interval": 1,
            "routes": [{"mqtt": "news", "redis": "news"},
                       {"mqtt": "st/+", "redis": "st:*", "mode": "stream"},
                       {"mqtt": "dev/+/status", "redis": "presence:*",
                        "direction": "mqtt_to_redis", "store": "hash",
                        "hash": "devices"}]})
        b = self.start_bridge(None, None, "-c", cfg)
        self.flow(self.mq.port, self.rs.port, "redis URL with /3")
        r0 = self.redis_client(self.rs.port)
        r3 = self.redis_client(self.rs.port, db=3)

        # every connection of the bridge, by its CLIENT SETNAME name
        conns = sorted((c["name"], c["db"]) for c in r0.client_list()
                       if c["name"].startswith("mrb:db3:"))
        self.assertEqual(conns, [("mrb:db3:ingest", "3"),
                                 ("mrb:db3:publisher", "3"),
                                 ("mrb:db3:reader", "3"),
                                 ("mrb:db3:subscriber", "3")],
                         "(connection, db) in CLIENT LIST")

        # MQTT -> Redis: XADD and the presence hash into database 3
        pub = self.mqtt_client(self.mq.port, name="pub3")
        x = unique("x").encode()
        pub.publish("st/a", x)
        pub.publish("dev/d1/status", b"online")
        self.assertTrue(harness.wait_until(
            lambda: r3.xlen("st:a") == 1 and r3.hget("devices", "d1") == b"online",
            harness.DELIVERY_TIMEOUT),
            "db 3: XLEN st:a %r, HGETALL devices %r"
            % (r3.xlen("st:a"), r3.hgetall("devices")))
        self.assertEqual(r3.xrange("st:a")[0][1][b"payload"], x)
        # Redis -> MQTT: an entry added in database 3 is read (the reader
        # and the publisher's SCAN and XGROUP work there)
        msub = self.mqtt_client(self.mq.port, "st/+", name="st")
        y = unique("y").encode()
        r3.xadd("st:b", {"payload": y})
        self.assertIsNotNone(msub.wait_for(lambda m: m.payload == y,
                                           harness.DELIVERY_TIMEOUT + 2),
                             "XADD st:b in database 3 did not reach MQTT")
        # the stats report (every second) into database 3
        self.assertTrue(harness.wait_until(
            lambda: r3.hget("bridge:db3:stats", "status") == b"running",
            harness.DELIVERY_TIMEOUT), "no bridge:db3:stats in database 3")
        self.assertTrue(r3.sismember("bridges", "db3"))
        # and nothing of it in database 0
        self.assertEqual(sorted(r0.keys("*")), [], "keys in database 0")
        b.stop()

    @with_servers(redis={"unixsocket": True})
    def test_redis_unix_socket(self):
        self.start_bridge(None, None, "--mqtt", self.mq.url,
                          "--redis", "unix:" + self.rs.socket_path, "--id", "unix")
        self.flow(self.mq.port, self.rs.port, "redis over unix:%s" % self.rs.socket_path)
        # the bridge really is on the socket: Redis flags unix clients "U";
        # the bridge's subscriber connection has sub/psub counts
        clients = self.redis_client(self.rs.port).client_list()
        unix_subs = [c for c in clients if "U" in c.get("flags", "")
                     and (int(c.get("sub", 0)) + int(c.get("psub", 0))) > 0]
        self.assertTrue(unix_subs, "no subscribed unix-socket client in "
                        "CLIENT LIST: %r" % clients)

if __name__ == "__main__":
    harness.main()
