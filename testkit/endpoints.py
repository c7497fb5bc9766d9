"""A chat webhook / healthchecks.io stand-in: a real HTTP server on a free port that records what
the worker sends it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from worker.adapters import notify


class Endpoint:
    """A chat webhook / healthchecks.io stand-in that records every request. Paths containing
    `hang` answer after HANG seconds; `flaky` answers 503 to the first request of each path."""

    HANG = notify.TIMEOUT + 2

    def __init__(self):
        self.requests: list[dict] = []
        seen: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append({"method": "POST", "path": self.path, "body": body.decode(),
                                       "type": self.headers.get("Content-Type")})
                if "hang" in self.path:
                    time.sleep(outer.HANG)
                first = self.path not in seen
                seen.add(self.path)
                try:
                    self.send_response(503 if "flaky" in self.path and first else 200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                except BrokenPipeError:
                    pass  # the client gave up waiting, as it should

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def json_bodies(self, prefix: str) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["path"].startswith(prefix)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
