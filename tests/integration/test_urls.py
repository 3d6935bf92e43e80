#!/usr/bin/python3
"""Connection URL forms at run time: user:password on both sides, a Redis
database number, and a Redis unix socket (unix:/path)."""

import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
from harness import BridgeTestCase, unique


class UrlTest(BridgeTestCase):

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

    def test_credentials_in_urls(self):
        rs = self.start_redis(password="r-secret")
        mq = self.start_mosquitto(users={"bridge": "b-pass", "tester": "t-pass"})
        self.start_bridge(
            None, None,
            "--mqtt", "mqtt://bridge:b-pass@127.0.0.1:%d" % mq.port,
            "--redis", "redis://default:r-secret@127.0.0.1:%d" % rs.port,
            "--id", "auth")
        self.flow(mq.port, rs.port, "with credentials",
                  mqtt_auth=("tester", "t-pass"), redis_password="r-secret")

    def test_redis_database_number(self):
        rs = self.start_redis()
        mq = self.start_mosquitto()
        self.start_bridge(None, None, "--mqtt", mq.url,
                          "--redis", "redis://127.0.0.1:%d/3" % rs.port,
                          "--id", "db3")
        self.flow(mq.port, rs.port, "redis URL with /3")

    def test_redis_unix_socket(self):
        rs = self.start_redis(unixsocket=True)
        mq = self.start_mosquitto()
        self.start_bridge(None, None, "--mqtt", mq.url,
                          "--redis", "unix:" + rs.socket_path, "--id", "unix")
        self.flow(mq.port, rs.port, "redis over unix:%s" % rs.socket_path)
        # the bridge really is on the socket: Redis flags unix clients "U";
        # the bridge's subscriber connection has sub/psub counts
        clients = self.redis_client(rs.port).client_list()
        unix_subs = [c for c in clients if "U" in c.get("flags", "")
                     and (int(c.get("sub", 0)) + int(c.get("psub", 0))) > 0]
        self.assertTrue(unix_subs, "no subscribed unix-socket client in "
                        "CLIENT LIST: %r" % clients)

if __name__ == "__main__":
    harness.main()
