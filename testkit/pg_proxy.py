"""A TCP proxy in front of the test PostgreSQL that produces the connection faults a real
cluster produces: a COMMIT that the server carried out while the client never heard the answer
(the connection dies in between), and a server that refuses new connections for a while (a
restart).

Why a proxy and not a mocked driver: the product must learn what happened the way it would in
production - from libpq's own error and from what the server says afterwards - so the fault has
to be on the wire. The proxy reads the client's side of the protocol (v3 messages: the simple
query `Q` and the extended protocol's `P`arse carry the SQL text) and, when an armed statement
passes, forwards it, swallows the server's answer up to its ReadyForQuery - so the statement is
known to be done on the server - and then closes every connection.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import threading
import time

from testkit.servers import free_port

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, server: socket.socket):
        self.client, self.server = client, server
        self.seen: list[str] = []  # the SQL this connection sent, in order
        self.swallow = False  # the server's answer is read and dropped, never reaches the client
        self.swallowed = b""
        self.answered = threading.Event()  # the swallowed answer reached its ReadyForQuery

    def close(self) -> None:
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class PgProxy:
    """Listens on 127.0.0.1:<port> and forwards to the real server. `cut_after(...)` arms the
    lost-answer fault, `refuse(seconds)` plays a restarting server; `statements` is what passed."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.statements: list[str] = []
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._refuse_until = 0.0
        self._running = False
        self._armed: dict | None = None
        self._hooks: list[dict] = []
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- faults --------------------------------------------------------------------------------
    def cut_after(self, statement: str, *, after: str | None = None, refuse_for: float = 0.0) -> threading.Event:
        """The next connection that sends SQL matching `statement` (a regex, case-insensitive) - on a
        connection that sent SQL matching `after` before it, when given - has it carried out, never
        hears the answer, and then every connection is closed and new ones refused for
        `refuse_for` seconds. Returns an event set once that happened."""
        done = threading.Event()
        with self._lock:
            self._armed = {"statement": re.compile(statement, re.I | re.S),
                           "after": re.compile(after, re.I | re.S) if after else None,
                           "refuse_for": refuse_for, "done": done}
        return done

    def on_statement(self, statement: str, fn, *, after: str | None = None) -> None:
        """fn() runs once, just before the first SQL matching `statement` (on a connection that sent
        `after` before it, when given) is forwarded: a fault elsewhere (a disk filling up) struck at
        that exact moment."""
        with self._lock:
            self._hooks.append({"statement": re.compile(statement, re.I | re.S),
                                "after": re.compile(after, re.I | re.S) if after else None, "fn": fn})

    def refuse(self, seconds: float) -> None:
        """Every connection closed, and new ones refused for `seconds` (the listening socket is closed,
        so a client gets "connection refused"), as while a server restarts."""
        with self._lock:
            links, self._links = self._links, []
            self._refuse_until = time.monotonic() + seconds
            if self._listener is not None:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)  # stops listening now, even while select() holds it
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
        for link in links:
            link.close()

    # -- running -------------------------------------------------------------------------------
    def start(self) -> "PgProxy":
        self._running = True
        self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="pg-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        if self._thread:
            self._thread.join(5)
        self.refuse(0)

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock

    def _accept_loop(self) -> None:
        while self._running:
            with self._lock:
                listener = self._listener
                if listener is None and time.monotonic() >= self._refuse_until:
                    self._listen()
                    listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):  # closed by refuse() meanwhile
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._client_to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(link,), daemon=True).start()

    # -- the two directions --------------------------------------------------------------------
    def _server_to_client(self, link: _Link) -> None:
        try:
            while chunk := link.server.recv(65536):
                if link.swallow:
                    link.swallowed += chunk
                    if READY_FOR_QUERY in link.swallowed:
                        link.answered.set()
                    continue
                link.client.sendall(chunk)
        except OSError:
            pass
        finally:
            link.answered.set()
            link.close()

    def _client_to_server(self, link: _Link) -> None:
        buf, started, opaque = b"", False, False
        try:
            while chunk := link.client.recv(65536):
                buf += chunk
                if opaque:
                    link.server.sendall(buf)
                    buf = b""
                    continue
                while True:
                    message, buf, started, opaque = self._next_message(buf, started)
                    if message is None:
                        break
                    self._forward(link, message, started)
        except OSError:
            pass
        finally:
            link.close()

    @staticmethod
    def _next_message(buf: bytes, started: bool) -> tuple:
        """(one whole message or None, the rest, startup done, opaque from here on - TLS)."""
        if not started:
            if buf[:1] == b"\x16":  # a TLS handshake after the server said "S": not ours to read
                return buf, b"", started, True
            if len(buf) < 8:
                return None, buf, started, False
            length, code = struct.unpack("!II", buf[:8])
            if len(buf) < length:
                return None, buf, started, False
            return buf[:length], buf[length:], code not in (SSL_REQUEST, GSSENC_REQUEST), False
        if len(buf) < 5:
            return None, buf, started, False
        length = struct.unpack("!I", buf[1:5])[0]
        if len(buf) < 1 + length:
            return None, buf, started, False
        return buf[:1 + length], buf[1 + length:], started, False

    def _forward(self, link: _Link, message: bytes, started: bool) -> None:
        sql = _sql_of(message) if started else None
        cut, hooks = None, []
        if sql is not None:
            self.statements.append(sql)
            with self._lock:
                if self._armed and _matches(self._armed, sql, link.seen):
                    cut, self._armed = self._armed, None
                hooks = [h for h in self._hooks if _matches(h, sql, link.seen)]
                self._hooks = [h for h in self._hooks if h not in hooks]
            link.seen.append(sql)
        for hook in hooks:
            hook["fn"]()
        if cut is None:
            link.server.sendall(message)
            return
        link.swallow = True
        link.server.sendall(message)
        if message[:1] == b"P":  # extended protocol: the statement runs at Execute/Sync, still to come
            link.server.sendall(b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00" + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
                                + b"S\x00\x00\x00\x04")
        link.answered.wait(10)
        self.refuse(cut["refuse_for"])
        cut["done"].set()


def _matches(rule: dict, sql: str, seen: list[str]) -> bool:
    return bool(rule["statement"].search(sql)) and (rule["after"] is None or any(rule["after"].search(s) for s in seen))


def _sql_of(message: bytes) -> str | None:
    """The SQL text of a simple query or of a Parse message."""
    kind, body = message[:1], message[5:]
    if kind == b"Q":
        return body.split(b"\x00", 1)[0].decode(errors="replace")
    if kind == b"P":
        parts = body.split(b"\x00", 2)
        return parts[1].decode(errors="replace") if len(parts) > 1 else None
    return None
