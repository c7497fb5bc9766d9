"""The HTTP side of the double: a threaded server the official client talks to, and watch streams.

Why real HTTP: mocking the ``kubernetes`` client would only test our assumptions about it;
served over a socket, the client's serialisation, content-type choice, connection pooling and
error handling run unchanged.  Each request is logged, may hit an injected fault, must carry the
bearer token (except ``/version``), and is then answered under the cluster's lock.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from testkit.k8s_double.routes import Response, WatchRequest, handle
from testkit.k8s_double.status import status_body

WATCH_POLL = 0.05  # how often a watch stream looks for changes


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP adapter; all logic lives in ApiServer so it can share the cluster's lock."""

    protocol_version = "HTTP/1.1"  # keep-alive like the real server; the client pools connections
    server_version = "kube-apiserver-double"
    sys_version = ""

    def setup(self):
        """Register the connection so stop() can cut idle keep-alive sockets."""
        super().setup()
        self.server.api.track_connection(self.connection, add=True)

    def finish(self):
        """Unregister the connection when the handler ends."""
        try:
            super().finish()
        finally:
            self.server.api.track_connection(self.connection, add=False)

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        """Silence per-request logging; tests read ``requests``/``request_log`` instead."""

    def _serve(self):
        """Read the request, let the API answer it, and write the reply."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        result = self.server.api.dispatch(self.command, self.path, self.headers, body)
        if isinstance(result, WatchRequest):
            self.server.api.stream_watch(self, result)
            return
        raw = result.payload if isinstance(result.payload, bytes) else (
            result.payload.encode() if isinstance(result.payload, str) else json.dumps(result.payload).encode())
        self.send_response(result.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        for key, value in result.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = do_OPTIONS = _serve


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon handler threads and a back-reference to the ApiServer."""

    daemon_threads = True
    allow_reuse_address = True
    api: "ApiServer"


def _parse_body(body: bytes):
    """A request body as JSON, or as text when it is not JSON (None when empty)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


class ApiServer:
    """Serves a Cluster over HTTP on 127.0.0.1, with injected faults and a request log."""

    def __init__(self, cluster, faults, token: str, namespace: str):
        """``namespace`` is the service account's, named in injected 403 messages."""
        self.cluster = cluster
        self.faults = faults
        self.token = token
        self.namespace = namespace
        self.requests: list[tuple[str, str]] = []
        self.request_log: list[dict] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set = set()

    def start(self) -> str:
        """Bind a free port and serve in a daemon thread; returns the base URL."""
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-api-double", daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    @property
    def running(self) -> bool:
        """Whether start() was called and stop() not since."""
        return self._server is not None

    def stop(self):
        """Stop serving, end watch streams and close open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self.cluster.lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def track_connection(self, conn, add: bool):
        """Remember live client connections so stop() can close them."""
        with self.cluster.lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def dispatch(self, method: str, raw_path: str, headers, body: bytes):
        """Log, apply injected faults and auth, then route one request under the lock."""
        split = urlsplit(raw_path)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        parsed_body = _parse_body(body)
        with self.cluster.lock:
            self.requests.append((method, path))
            self.request_log.append({"method": method, "path": path, "query": query,
                                     "content_type": ctype, "body": parsed_body,
                                     "time": time.monotonic()})
            injected = self.faults.response(method, path, query, self.namespace)
            if injected is not None:
                return injected
            if path != "/version" and headers.get("Authorization") != f"Bearer {self.token}":
                return Response(401, status_body(401))
            return handle(self.cluster, method, path, query, ctype, parsed_body)

    def stream_watch(self, handler: _Handler, req: WatchRequest):
        """Serve ``?watch=true`` as chunked JSON lines of ADDED/MODIFIED/DELETED events.

        Polls the state every 50 ms until ``timeoutSeconds`` (default 30 s),
        the client goes away or the double stops.
        """
        deadline = time.monotonic() + float(req.query.get("timeoutSeconds") or 30)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event_type, obj):
            line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            handler.wfile.flush()

        try:
            seen = None
            while True:
                seen = self._watch_step(req, seen, send)
                if time.monotonic() >= deadline or self._stopping.is_set():
                    break
                time.sleep(WATCH_POLL)
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        handler.close_connection = True

    def _watch_step(self, req: WatchRequest, seen: dict | None, send) -> dict:
        """Send the events since the last look (``seen``: None on the first); returns the new look.

        On the first look, objects not newer than the request's ``resourceVersion`` are not
        announced, as the client asked to resume from there.
        """
        with self.cluster.lock:
            self.cluster.reconcile()
            current = {o["metadata"]["uid"]: o for o in self.cluster.matching(req.kind, req.namespace, req.query)}
            rv_now = str(self.cluster.rv)
        since = req.query.get("resourceVersion")
        skip_old = seen is None and since not in (None, "", "0")
        seen = seen or {}
        for uid, obj in current.items():
            if uid not in seen:
                if not (skip_old and int(obj["metadata"]["resourceVersion"]) <= int(since)):
                    send("ADDED", obj)
            elif seen[uid][0] != obj["metadata"]["resourceVersion"]:
                send("MODIFIED", obj)
        for uid in set(seen) - set(current):
            gone = seen[uid][1]
            gone["metadata"]["resourceVersion"] = rv_now
            send("DELETED", gone)
        return {uid: (o["metadata"]["resourceVersion"], o) for uid, o in current.items()}
