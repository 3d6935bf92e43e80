"""A small TCP relay for the integration tests that makes one Redis
connection of the bridge lag: it listens on 127.0.0.1 (a free port),
forwards every connection to the real redis-server, and delays the
server -> client bytes of the connections whose client names itself with a
CLIENT SETNAME containing `match` (the bridge's subscriber:
"CLIENT SETNAME mrb:<id>:subscriber", src/redis.c rconn_start) by a fixed
`delay` seconds, in order and without dropping a byte. Every other
connection passes through undelayed.

How a connection is judged: the client's first commands (RESP arrays) are
parsed as they pass (they are forwarded at once, never held). AUTH, HELLO
and SELECT may come first (the bridge sends them before or after its
CLIENT SETNAME); CLIENT SETNAME decides; any other command, or 64 KiB
without a decision, means "not delayed". The decision is made before the
command that carries it is forwarded, so the server's reply to it, and all
that follows, is delayed; a reply to an earlier AUTH/SELECT (which a
blocking client waits for before it names itself) goes through at once.

Threads: an accept thread, and per connection one thread for each
direction plus, for the server -> client side, a writer that sends each
chunk `delay` seconds after the relay read it. The reader keeps reading the
server meanwhile (the chunks wait in memory, so Redis sees a client that
reads promptly and its output buffer limits do not apply). Every loop is
bounded: sockets have short timeouts, every thread looks at the stop flag
and at the relay's deadline (`lifetime` seconds after start). stop() closes
every socket and joins the threads (bounded).

    relay = DelayRelay(redis_port, delay=6.0).start()
    ... bridge --redis redis://127.0.0.1:<relay.port> ...
    relay.stop()
    relay.report()  # what was delayed, by how much, when

Run by itself (for a manual experiment):
    python3 relay.py REDIS_PORT DELAY_S [MATCH] [LIFETIME_S]
"""

import collections
import socket
import sys
import threading
import time

TICK = 0.2                 # socket timeout and condition wait: the stop checks
DECIDE_LIMIT = 65536       # client bytes parsed at most before "not delayed"
JOIN_TIMEOUT = 5.0


def parse_commands(buf):
    """(commands, consumed): the complete RESP commands (lists of bytes) at
    the start of buf. A buffer that is not RESP arrays gives ([None], 0)."""
    cmds = []
    pos = 0
    n = len(buf)
    for _ in range(1024):  # bounded: a few commands are enough to decide
        if pos >= n:
            break
        if buf[pos:pos + 1] != b"*":
            return cmds + [None], pos
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            break
        try:
            count = int(buf[pos + 1:eol])
        except ValueError:
            return cmds + [None], pos
        p = eol + 2
        args = []
        complete = True
        for _ in range(max(count, 0)):
            if p >= n:
                complete = False
                break
            if buf[p:p + 1] != b"$":
                return cmds + [None], pos
            e = buf.find(b"\r\n", p)
            if e < 0:
                complete = False
                break
            try:
                size = int(buf[p + 1:e])
            except ValueError:
                return cmds + [None], pos
            if e + 2 + size + 2 > n:
                complete = False
                break
            args.append(bytes(buf[e + 2:e + 2 + size]))
            p = e + 2 + size + 2
        if not complete:
            break
        cmds.append(args)
        pos = p
    return cmds, pos


def send_all(sock, data, stop, deadline):
    """sock.sendall, in slices that look at the stop flag and the deadline
    (the peer may not read for a while: the bridge holds its subscriber
    back when its queue to MQTT is half full). False if it gave up."""
    view = memoryview(data)
    while view:
        if stop.is_set() or time.monotonic() > deadline:
            return False
        try:
            sent = sock.send(view)
        except socket.timeout:
            continue
        except OSError:
            return False
        view = view[sent:]
    return True


class _Conn:
    """One relayed connection."""

    def __init__(self, relay, client, addr):
        self.relay = relay
        self.client = client
        self.addr = addr
        self.server = None
        self.name = None           # its CLIENT SETNAME, if any
        self.decided = False
        self.delayed = False
        self.accepted_t = time.monotonic()
        self.c2s_bytes = 0
        self.s2c_bytes = 0
        self.delayed_bytes = 0
        self.delayed_chunks = 0
        self.min_lag = None        # of the delayed chunks: sent - read
        self.max_lag = None
        self.max_waiting_bytes = 0
        self.first_message_read_t = None  # first chunk with b"message"
        self.first_message_sent_t = None  # (a pub/sub message, or pmessage)
        self.last_sent_t = None
        self.error = None
        self._parse_buf = bytearray()
        self._cond = threading.Condition()
        self._queue = collections.deque()  # (read time, bytes | None=EOF,
                                           #  delayed)
        self._waiting_bytes = 0
        self._tail = b""
        self.threads = []

    # the client's first commands ------------------------------------
    def _judge(self, data):
        if self.decided:
            return
        self._parse_buf += data
        cmds, _ = parse_commands(self._parse_buf)
        for cmd in cmds:
            if cmd is None or not cmd:
                self._decide(False)
                return
            verb = cmd[0].upper()
            if verb == b"CLIENT" and len(cmd) >= 3 and cmd[1].upper() == b"SETNAME":
                self.name = cmd[2].decode("utf-8", "replace")
                self._decide(self.relay.match in cmd[2])
                return
            if verb in (b"AUTH", b"HELLO", b"SELECT"):
                continue
            self._decide(False)
            return
        if len(self._parse_buf) > DECIDE_LIMIT:
            self._decide(False)

    def _decide(self, delayed):
        self.delayed = delayed
        self.decided = True
        self._parse_buf = bytearray()

    # threads ----------------------------------------------------------
    def start(self):
        r = self.relay
        try:
            self.server = socket.create_connection(r.target, timeout=5)
        except OSError as e:
            self.error = "connect to %s:%d: %s" % (r.target + (e,))
            self.close()
            return
        for s in (self.client, self.server):
            s.settimeout(TICK)
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        for fn in (self._client_to_server, self._server_reader,
                   self._server_writer):
            t = threading.Thread(target=fn, daemon=True,
                                 name="relay-%s" % fn.__name__)
            self.threads.append(t)
            t.start()

    def _running(self):
        return not self.relay.stopped.is_set() and \
            time.monotonic() < self.relay.deadline

    def _client_to_server(self):
        r = self.relay
        while self._running():
            try:
                data = self.client.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            self.c2s_bytes += len(data)
            self._judge(data)  # before the bytes go: their reply may be delayed
            if not send_all(self.server, data, r.stopped, r.deadline):
                break
        # the client is done (or gone): so is the server side
        self._shutdown(self.server, socket.SHUT_WR)

    def _server_reader(self):
        while self._running():
            try:
                data = self.server.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            now = time.monotonic()
            with self._cond:
                # delayed is set once (before the command whose reply it
                # concerns is forwarded) and never unset: an undelayed chunk
                # never waits behind a delayed one
                delayed = self.delayed
                if data:
                    self.s2c_bytes += len(data)
                    if delayed:
                        self.delayed_bytes += len(data)
                        self.delayed_chunks += 1
                        self._waiting_bytes += len(data)
                        self.max_waiting_bytes = max(self.max_waiting_bytes,
                                                     self._waiting_bytes)
                        if self.first_message_read_t is None and \
                                b"message" in self._tail + data:
                            self.first_message_read_t = now
                        self._tail = data[-16:]
                self._queue.append((now, data if data else None, delayed))
                self._cond.notify_all()
            if not data:
                return

    def _server_writer(self):
        r = self.relay
        while self._running():
            with self._cond:
                if not self._queue:
                    self._cond.wait(TICK)
                    continue
                read_t, data, delayed = self._queue[0]
                due = read_t + (r.delay if delayed else 0.0)
                now = time.monotonic()
                if now < due:
                    self._cond.wait(min(due - now, TICK))
                    continue
                self._queue.popleft()
            if data is None:  # the server closed: so does the relay
                break
            if not send_all(self.client, data, r.stopped, r.deadline):
                break
            sent = time.monotonic()
            if not delayed:
                continue
            with self._cond:
                self._waiting_bytes -= len(data)
                self.last_sent_t = sent
                lag = sent - read_t
                self.min_lag = lag if self.min_lag is None else min(self.min_lag, lag)
                self.max_lag = lag if self.max_lag is None else max(self.max_lag, lag)
                if self.first_message_sent_t is None and \
                        self.first_message_read_t is not None and \
                        read_t >= self.first_message_read_t:
                    self.first_message_sent_t = sent
        self.close()

    @staticmethod
    def _shutdown(sock, how):
        try:
            sock.shutdown(how)
        except (OSError, AttributeError):
            pass

    def close(self):
        for s in (self.client, self.server):
            if s is None:
                continue
            self._shutdown(s, socket.SHUT_RDWR)
            try:
                s.close()
            except OSError:
                pass

    def summary(self):
        return {"name": self.name, "delayed": self.delayed,
                "c2s_bytes": self.c2s_bytes, "s2c_bytes": self.s2c_bytes,
                "delayed_bytes": self.delayed_bytes,
                "delayed_chunks": self.delayed_chunks,
                "min_lag": self.min_lag, "max_lag": self.max_lag,
                "max_waiting_bytes": self.max_waiting_bytes,
                "still_waiting": len(self._queue), "error": self.error}


class DelayRelay:
    """See the module's comment."""

    def __init__(self, target_port, delay, match=b":subscriber",
                 target_host="127.0.0.1", lifetime=600.0):
        self.target = (target_host, target_port)
        self.delay = float(delay)
        self.match = match
        self.lifetime = float(lifetime)
        self.stopped = threading.Event()
        self.deadline = None
        self.conns = []
        self._lock = threading.Lock()
        self._listener = None
        self._thread = None
        self.port = None

    def start(self):
        self.deadline = time.monotonic() + self.lifetime
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        ls.settimeout(TICK)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name="relay-accept")
        self._thread.start()
        return self

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                client, addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            conn = _Conn(self, client, addr)
            with self._lock:
                if self.stopped.is_set():
                    conn.close()
                    break
                self.conns.append(conn)
            conn.start()

    def stop(self):
        """Close everything and join the threads (bounded). Idempotent."""
        self.stopped.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        with self._lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
            with c._cond:
                c._cond.notify_all()
        end = time.monotonic() + JOIN_TIMEOUT
        for t in [self._thread] + [t for c in conns for t in c.threads]:
            if t is not None and t.is_alive():
                t.join(max(0.0, end - time.monotonic()))

    # what happened ------------------------------------------------------
    def connections(self):
        with self._lock:
            return list(self.conns)

    def delayed_connections(self):
        return [c for c in self.connections() if c.delayed]

    def idle_since(self):
        """Seconds since the relay last sent delayed bytes, None if it has
        never sent any; and whether delayed bytes still wait."""
        waiting = any(c._queue for c in self.delayed_connections())
        last = [c.last_sent_t for c in self.delayed_connections()
                if c.last_sent_t is not None]
        return (time.monotonic() - max(last) if last else None), waiting

    def report(self):
        return [c.summary() for c in self.connections()]


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    relay = DelayRelay(int(argv[1]), float(argv[2]),
                       argv[3].encode() if len(argv) > 3 else b":subscriber",
                       lifetime=float(argv[4]) if len(argv) > 4 else 600.0)
    relay.start()
    print("relay on 127.0.0.1:%d -> 127.0.0.1:%d, delay %.1f s"
          % (relay.port, relay.target[1], relay.delay), flush=True)
    try:
        while time.monotonic() < relay.deadline:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    relay.stop()
    for r in relay.report():
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
