"""An in-process HTTP stand-in for the Kubernetes API server.

Why this exists: no real API server can run where our tests run, and mocking
the ``kubernetes`` client would only test our assumptions about it.  Instead
this module serves the small slice of the Kubernetes REST API that
taiga-backup uses (Deployments, their ``scale`` subresource and Pods) over real
HTTP, so the *official* client can talk to it unchanged, including its
serialisation, content-type negotiation and error handling.

Realism choices that matter to callers (all mirror a real API server):

* Zero-valued fields are omitted like Go's ``omitempty``: a Deployment scaled
  to 0 has no ``status.replicas``/``readyReplicas``/``availableReplicas``, and
  an autoscaling/v1 Scale with 0 replicas has an empty ``spec`` (the client
  then reports ``spec.replicas`` as ``None``).  Empty ``annotations``/``labels``
  maps are dropped too.
* ``resourceVersion`` comes from one global counter and only changes when the
  object really changes; a no-op patch leaves it alone.  A patch or update
  carrying a stale ``metadata.resourceVersion`` gets 409 Conflict.
* Pods have a lifecycle in real time: new pods are Pending and become Ready
  after ``pod_start_delay``; surplus pods get a ``deletionTimestamp`` (still
  listed, "Terminating", still reporting their last readiness) and vanish
  after ``pod_stop_delay``.  Deployment status counts only non-terminating
  pods.  Time is evaluated lazily on every request/accessor, so behaviour
  follows the wall clock without a ticker thread.
* Errors are ``kind: Status`` JSON bodies with the reason/message/details
  layout the API server uses.

Only the standard library is used.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import random
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

__all__ = ["KubeApiDouble", "PatchError"]

# Characters Kubernetes uses for generated name suffixes (no vowels, no
# look-alikes), see k8s.io/apimachinery/pkg/util/rand.
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_CT_JSON_PATCH = "application/json-patch+json"
_CT_MERGE_PATCH = "application/merge-patch+json"
_CT_SMP = "application/strategic-merge-patch+json"
_CT_APPLY_YAML = "application/apply-patch+yaml"

_SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.1",
    "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
    "gitTreeState": "clean",
    "buildDate": "2025-05-15T08:19:08Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# Status "reason" and default message per HTTP code, as the API server words them.
_REASONS = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the object has been modified"),
    410: ("Expired", "too old resource version"),
    415: ("UnsupportedMediaType", "the body of the request was in an unknown format"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: ("InternalError", "Internal error occurred: injected failure"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
}

_VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete", "POST": "create"}


def _rfc3339(epoch: float) -> str:
    """Format a wall-clock time the way the API server does (second precision, 'Z')."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_body(code: int, message: str | None = None, reason: str | None = None,
                 details: dict | None = None) -> dict:
    """Build a ``kind: Status`` failure object, the API server's error envelope."""
    default_reason, default_message = _REASONS.get(code, ("", "unknown error"))
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message if message is not None else default_message,
        "reason": reason if reason is not None else default_reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class PatchError(Exception):
    """A request that cannot be applied; carries the HTTP status and message to send back."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.details = details

    def status(self) -> dict:
        """The Status object the server answers with for this error."""
        return _status_body(self.code, self.message, self.reason, self.details)


# --------------------------------------------------------------------------
# Patch algorithms
# --------------------------------------------------------------------------

def json_merge_patch(target, patch):
    """Apply an RFC 7386 JSON merge patch (``null`` deletes a key); returns a new value."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _strip_directives(value):
    """Remove strategic-merge ``$patch``-style directive keys from a value being inserted."""
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _merge_key(items):
    """Guess the strategic-merge key of a list (containers by name, mounts by path...)."""
    plain = [i for i in items if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    if not plain or not all(isinstance(i, dict) for i in plain):
        return None
    for candidate in ("name", "mountPath", "containerPort", "ip", "devicePath", "type"):
        if all(candidate in d for d in plain):
            return candidate
    return None


def _smp_list(current, patch):
    """Merge two lists strategically: by merge key when there is one, else replace."""
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip_directives(i) for i in patch
                if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    key = _merge_key(list(current) + list(patch))
    if key is None:
        return _strip_directives(patch)
    out = copy.deepcopy(current)
    for item in patch:
        idx = next((n for n, existing in enumerate(out) if existing.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
            continue
        if idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def strategic_merge_patch(target, patch):
    """Apply a (simplified) Kubernetes strategic merge patch.

    Maps merge like a JSON merge patch (``null`` deletes), lists of objects
    merge on their merge key (``name`` for containers/env/volumes, etc.),
    other lists are replaced, and the ``$patch: replace|delete`` directives are
    honoured.  Enough for metadata and ``spec.replicas``/template edits.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _smp_list(result[key], value)
        else:
            result[key] = _strip_directives(value)
    return result


def _pointer_tokens(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON pointer (``/metadata/annotations/a~1b``) into keys."""
    if pointer == "":
        return []
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise PatchError(422, f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _resolve_parent(doc, tokens, pointer):
    """Walk to the container holding the last token of a pointer."""
    node = doc
    for tok in tokens[:-1]:
        if isinstance(node, dict) and tok in node:
            node = node[tok]
        elif isinstance(node, list) and tok.isdigit() and int(tok) < len(node):
            node = node[int(tok)]
        else:
            raise PatchError(422, f"the server rejected our request due to an error in our request: "
                                  f"doc is missing path: \"{pointer}\": missing value")
    return node


def _pointer_get(doc, pointer):
    """Read the value a JSON pointer designates, or fail like the API server."""
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return doc
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(422, f"the server rejected our request due to an error in our request: "
                          f"doc is missing path: \"{pointer}\": missing value")


def _pointer_add(doc, pointer, value):
    """RFC 6902 ``add``: set a map key or insert into a list; returns the new document."""
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return copy.deepcopy(value)
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), copy.deepcopy(value))
        else:
            raise PatchError(422, f"the server rejected our request due to an error in our request: "
                                  f"add operation does not apply: doc is missing path: \"{pointer}\"")
    else:
        raise PatchError(422, f"the server rejected our request due to an error in our request: "
                              f"doc is missing path: \"{pointer}\"")
    return doc


def _pointer_remove(doc, pointer):
    """RFC 6902 ``remove``: delete an existing map key or list item; returns the document."""
    tokens = _pointer_tokens(pointer)
    if not tokens:
        raise PatchError(422, "the server rejected our request due to an error in our request: "
                              "cannot remove the document root")
    _pointer_get(doc, pointer)  # raises if missing
    parent = _resolve_parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def json_patch(doc, ops):
    """Apply an RFC 6902 JSON patch (add/remove/replace/test/move/copy); returns a new document."""
    if not isinstance(ops, list):
        raise PatchError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(422, "the server rejected our request due to an error in our request: "
                                  f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _pointer_add(doc, path, op.get("value"))
        elif kind == "remove":
            doc = _pointer_remove(doc, path)
        elif kind == "replace":
            _pointer_get(doc, path)
            tokens = _pointer_tokens(path)
            if not tokens:
                doc = copy.deepcopy(op.get("value"))
            else:
                parent = _resolve_parent(doc, tokens, path)
                if isinstance(parent, dict):
                    parent[tokens[-1]] = copy.deepcopy(op.get("value"))
                else:
                    parent[int(tokens[-1])] = copy.deepcopy(op.get("value"))
        elif kind == "test":
            try:
                current = _pointer_get(doc, path)
            except PatchError:
                current = None
            if current != op.get("value") or type(current) is not type(op.get("value")):
                raise PatchError(422, "the server rejected our request due to an error in our request: "
                                      f"testing value {path} failed: test failed")
        elif kind in ("move", "copy"):
            source = op.get("from")
            value = copy.deepcopy(_pointer_get(doc, source))
            if kind == "move":
                doc = _pointer_remove(doc, source)
            doc = _pointer_add(doc, path, value)
        else:
            raise PatchError(422, "the server rejected our request due to an error in our request: "
                                  f"Unexpected kind: {kind}")
    return doc


# --------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------

_SEL_SET = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_SEL_EQ = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_SEL_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split a selector on commas that are not inside ``in (...)`` value sets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None):
    """Compile a label selector string into a predicate over a labels dict.

    Supports ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)`` and
    ``a notin (x,y)``, comma-separated (AND).  Raises PatchError(400) on
    syntax errors like the API server does.
    """
    if not text:
        return lambda labels: True
    preds = []
    for term in _split_selector(text):
        m = _SEL_SET.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                preds.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                preds.append(lambda l, k=key, vs=values: l.get(k) not in vs)
            continue
        m = _SEL_EQ.match(term)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                preds.append(lambda l, k=key, v=value: l.get(k) != v)
            else:
                preds.append(lambda l, k=key, v=value: k in l and l[k] == v)
            continue
        m = _SEL_EXISTS.match(term)
        if m:
            neg, key = m.groups()
            if neg:
                preds.append(lambda l, k=key: k not in l)
            else:
                preds.append(lambda l, k=key: k in l)
            continue
        raise PatchError(400, f"unable to parse requirement: found '{term.strip()}', expected: "
                              "in, notin, =, ==, !=, gt, lt", reason="BadRequest")
    return lambda labels: all(p(labels or {}) for p in preds)


_POD_FIELDS = {
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "status.phase": lambda p: p["status"].get("phase", ""),
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "spec.restartPolicy": lambda p: p["spec"].get("restartPolicy", ""),
}
_DEPLOYMENT_FIELDS = {
    "metadata.name": lambda d: d["metadata"]["name"],
    "metadata.namespace": lambda d: d["metadata"]["namespace"],
}


def parse_field_selector(text: str | None, fields: dict):
    """Compile a field selector (``status.phase=Running,metadata.name!=x``) into a predicate."""
    if not text:
        return lambda obj: True
    preds = []
    for term in _split_selector(text):
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise PatchError(400, f"invalid selector: '{text}'; can't understand '{term}'")
        key, op, value = m.groups()
        if key not in fields:
            raise PatchError(400, f'field label not supported: {key}')
        getter = fields[key]
        if op == "!=":
            preds.append(lambda o, g=getter, v=value: g(o) != v)
        else:
            preds.append(lambda o, g=getter, v=value: g(o) == v)
    return lambda obj: all(p(obj) for p in preds)


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------

class _Response:
    """What a routed request answers: status code, JSON payload and extra headers."""

    def __init__(self, code: int, payload, headers: dict | None = None):
        self.code = code
        self.payload = payload
        self.headers = headers or {}


class _WatchRequest:
    """Marker returned by routing when the request is a ``?watch=true`` stream."""

    def __init__(self, kind: str, namespace: str | None, query: dict):
        self.kind = kind
        self.namespace = namespace
        self.query = query


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP adapter; all logic lives in KubeApiDouble so it can share one lock."""

    protocol_version = "HTTP/1.1"  # keep-alive like the real server; the client pools connections
    server_version = "kube-apiserver-double"
    sys_version = ""

    def setup(self):
        """Register the connection so stop() can cut idle keep-alive sockets."""
        super().setup()
        self.server.double._track_connection(self.connection, add=True)

    def finish(self):
        """Unregister the connection when the handler ends."""
        try:
            super().finish()
        finally:
            self.server.double._track_connection(self.connection, add=False)

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        """Silence per-request logging; tests read ``requests``/``request_log`` instead."""

    def _serve(self):
        """Read the request, let the double answer it, and write the reply."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        result = self.server.double._dispatch(self.command, self.path, self.headers, body)
        if isinstance(result, _WatchRequest):
            self.server.double._stream_watch(self, result)
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
    """ThreadingHTTPServer with daemon handler threads and a back-reference to the double."""

    daemon_threads = True
    allow_reuse_address = True
    double: "KubeApiDouble"


# --------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------

class KubeApiDouble:
    """A fake kube-apiserver for Deployments, their Scale subresource and Pods.

    Start it, point the official client at it with ``write_kubeconfig()``,
    seed state with ``add_deployment()`` and inspect what the code under test
    did through ``replicas()``, ``annotations()``, ``pods()``, ``history()`` and
    ``requests``.  ``fail()`` injects API errors.
    """

    def __init__(self, pod_start_delay: float = 0.3, pod_stop_delay: float = 0.5,
                 token: str = "dummy-token", namespace: str = "taiga"):
        """Configure pod timing, the bearer token to accept and the kubeconfig's default namespace."""
        self.pod_start_delay = pod_start_delay
        self.pod_stop_delay = pod_stop_delay
        self.token = token
        self.namespace = namespace
        self.url: str = ""
        self.requests: list[tuple[str, str]] = []
        self.request_log: list[dict] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set = set()
        self._rand = random.Random()
        self._wall_offset = time.time() - time.monotonic()
        self._init_state()

    # ---- lifecycle -------------------------------------------------------

    def _init_state(self):
        """(Re)create the empty cluster state; caller holds the lock or is __init__."""
        self._rv = 1000
        self._deployments: dict[tuple[str, str], dict] = {}
        self._pods: dict[tuple[str, str], dict] = {}
        self._faults: list[dict] = []
        self._pod_seq = 0

    def start(self) -> "KubeApiDouble":
        """Bind 127.0.0.1 on a free port and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.double = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-api-double", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving, end watch streams and close open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "KubeApiDouble":
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(self, *exc):
        """Stop on leaving a ``with`` block."""
        self.stop()

    def reset(self):
        """Drop deployments, pods, injected faults and the request log (server keeps running)."""
        with self._lock:
            self._init_state()
            self.requests.clear()
            self.request_log.clear()

    def _track_connection(self, conn, add: bool):
        """Remember live client connections so stop() can close them."""
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def write_kubeconfig(self, path) -> str:
        """Write a kubeconfig (JSON, which is valid YAML) for this server; returns the path.

        Context "kube-api-double" has namespace ``self.namespace`` ("taiga")
        and authenticates with the dummy bearer token.
        """
        if not self.url:
            raise RuntimeError("start() the double before writing a kubeconfig")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "kube-api-double", "cluster": {"server": self.url}}],
            "users": [{"name": "taiga-backup", "user": {"token": self.token}}],
            "contexts": [{"name": "kube-api-double",
                          "context": {"cluster": "kube-api-double", "user": "taiga-backup",
                                      "namespace": self.namespace}}],
            "current-context": "kube-api-double",
        }
        path.write_text(json.dumps(cfg, indent=2))
        return str(path)

    # ---- test-facing state API ------------------------------------------

    def add_deployment(self, namespace: str, name: str, replicas: int = 1, labels: dict | None = None,
                       annotations: dict | None = None, image: str | None = None) -> dict:
        """Create a Deployment and its pods, already Running and Ready; returns the Deployment.

        ``labels`` become the deployment's labels, the pod template labels and
        the selector (default ``{"app": name}``).
        """
        labels = dict(labels or {"app": name})
        with self._lock:
            key = (namespace, name)
            now = time.monotonic()
            template = {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "containers": [{
                        "name": name,
                        "image": image or f"docker.io/taigaio/{name}:6.8.1",
                        "imagePullPolicy": "IfNotPresent",
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                    }],
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst",
                    "securityContext": {},
                    "schedulerName": "default-scheduler",
                },
            }
            meta = {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_rv(),
                "generation": 1,
                "creationTimestamp": _rfc3339(time.time()),
                "labels": dict(labels),
                "annotations": {"deployment.kubernetes.io/revision": "1", **(annotations or {})},
            }
            obj = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": {
                    "replicas": int(replicas),
                    "selector": {"matchLabels": dict(labels)},
                    "template": template,
                    "strategy": {"type": "RollingUpdate",
                                 "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                    "revisionHistoryLimit": 10,
                    "progressDeadlineSeconds": 600,
                },
            }
            self._deployments[key] = {
                "obj": obj,
                "status": None,
                "history": [(now, int(replicas))],
                "rs_uids": {},
                "conditions": {},
            }
            for _ in range(int(replicas)):
                self._create_pod(key, now, ready=True)
            self._reconcile_locked()
            return self._deployment_view(key)

    def remove_deployment(self, namespace: str, name: str):
        """Delete a Deployment and, immediately, all of its pods."""
        with self._lock:
            key = (namespace, name)
            self._deployments.pop(key, None)
            for pk in [pk for pk, p in self._pods.items() if p["owner"] == key]:
                del self._pods[pk]
            self._next_rv()

    def deployment(self, namespace: str, name: str) -> dict:
        """Full Deployment JSON as the API would return it right now."""
        with self._lock:
            self._reconcile_locked()
            return self._deployment_view(self._require(namespace, name))

    def replicas(self, namespace: str, name: str) -> int:
        """Current ``spec.replicas`` of a Deployment."""
        with self._lock:
            return self._deployments[self._require(namespace, name)]["obj"]["spec"]["replicas"]

    def set_replicas(self, namespace: str, name: str, replicas: int):
        """Change ``spec.replicas`` as some other actor (kubectl, an HPA) would."""
        with self._lock:
            key = self._require(namespace, name)
            obj = copy.deepcopy(self._deployments[key]["obj"])
            obj["spec"]["replicas"] = int(replicas)
            self._store_deployment(key, obj)

    def annotations(self, namespace: str, name: str) -> dict:
        """Copy of ``metadata.annotations`` (``{}`` when the server would omit the map)."""
        with self._lock:
            key = self._require(namespace, name)
            return dict(self._deployments[key]["obj"]["metadata"].get("annotations") or {})

    def set_annotations(self, namespace: str, name: str, annotations: dict):
        """Replace ``metadata.annotations`` wholesale, to pre-seed state for a test."""
        with self._lock:
            key = self._require(namespace, name)
            obj = copy.deepcopy(self._deployments[key]["obj"])
            if annotations:
                obj["metadata"]["annotations"] = {str(k): str(v) for k, v in annotations.items()}
            else:
                obj["metadata"].pop("annotations", None)  # empty maps are omitted by the server
            self._store_deployment(key, obj)

    def pods(self, namespace: str, name: str, include_terminating: bool = True) -> list[dict]:
        """Pods of a Deployment as Pod JSON, sorted by name; optionally without Terminating ones."""
        with self._lock:
            self._reconcile_locked()
            key = (namespace, name)
            out = [copy.deepcopy(p["obj"]) for p in self._pods.values()
                   if p["owner"] == key and (include_terminating or p["gone_at"] is None)]
            return sorted(out, key=lambda p: p["metadata"]["name"])

    def history(self, namespace: str, name: str) -> list[tuple[float, int]]:
        """``(time.monotonic(), spec.replicas)`` for the initial value and every later change."""
        with self._lock:
            return list(self._deployments[self._require(namespace, name)]["history"])

    def fail(self, method: str, path_regex: str, status: int, times: int | None = 1, body=None,
             headers: dict | None = None):
        """Make the next ``times`` requests matching METHOD and path regex fail with ``status``.

        ``method`` may be ``"*"``; ``path_regex`` is searched (``re.search``)
        in the path without query string; ``times=None`` fails until reset().
        Without ``body`` a realistic Status is generated (e.g. 403 names the
        verb/resource/namespace, 409 is the optimistic-concurrency conflict);
        a dict body is sent as JSON, a str/bytes body verbatim.
        """
        with self._lock:
            self._faults.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "status": int(status), "times": times, "body": body,
                                 "headers": dict(headers or {})})

    def clear_faults(self):
        """Forget all pending injected faults."""
        with self._lock:
            self._faults.clear()

    # ---- internals: state ------------------------------------------------

    def _require(self, namespace, name):
        """Key of an existing deployment, else KeyError with a readable message."""
        key = (namespace, name)
        if key not in self._deployments:
            raise KeyError(f"no deployment {namespace}/{name} in the double")
        return key

    def _next_rv(self) -> str:
        """Advance the cluster-wide resourceVersion counter (like etcd's revision)."""
        self._rv += 1
        return str(self._rv)

    def _wall(self, mono: float) -> float:
        """Convert a monotonic instant into wall-clock epoch seconds."""
        return mono + self._wall_offset

    def _template_hash(self, key) -> str:
        """pod-template-hash: a stable, name-safe digest of the pod template."""
        template = self._deployments[key]["obj"]["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
        return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in digest[:10])

    def _create_pod(self, key, now: float, ready: bool = False):
        """Create one pod for a deployment, Pending (or already Ready when seeding)."""
        namespace, dname = key
        dep = self._deployments[key]
        tmpl = dep["obj"]["spec"]["template"]
        phash = self._template_hash(key)
        rs_name = f"{dname}-{phash}"
        rs_uid = dep["rs_uids"].setdefault(phash, str(uuid.uuid4()))
        while True:
            suffix = "".join(self._rand.choice(_SAFE_ALPHABET) for _ in range(5))
            pname = f"{rs_name}-{suffix}"
            if (namespace, pname) not in self._pods:
                break
        self._pod_seq += 1
        labels = dict((tmpl.get("metadata") or {}).get("labels") or {})
        labels["pod-template-hash"] = phash
        created = self._wall(now)
        spec = copy.deepcopy(tmpl.get("spec") or {})
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", "default")
        spec["nodeName"] = "node-1"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pname,
                "generateName": f"{rs_name}-",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_rv(),
                "creationTimestamp": _rfc3339(created),
                "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                     "uid": rs_uid, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": spec,
            "status": {},
        }
        entry = {"obj": pod, "owner": key, "hash": phash, "seq": self._pod_seq,
                 "ready": False, "ready_at": now + self.pod_start_delay, "gone_at": None,
                 "ip": f"10.244.0.{(self._pod_seq % 250) + 2}"}
        self._pods[(namespace, pname)] = entry
        self._set_pod_pending(entry, created)
        if ready:
            entry["ready_at"] = now
            self._set_pod_ready(entry, now)

    def _set_pod_pending(self, entry, created_wall: float):
        """Status of a scheduled pod whose containers are still being created."""
        containers = entry["obj"]["spec"].get("containers") or []
        ts = _rfc3339(created_wall)
        entry["obj"]["status"] = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
                {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
                {"type": "Ready", "status": "False", "lastProbeTime": None, "lastTransitionTime": ts,
                 "reason": "ContainersNotReady",
                 "message": "containers with unready status: [" + " ".join(c.get("name", "") for c in containers) + "]"},
                {"type": "ContainersReady", "status": "False", "lastProbeTime": None, "lastTransitionTime": ts,
                 "reason": "ContainersNotReady",
                 "message": "containers with unready status: [" + " ".join(c.get("name", "") for c in containers) + "]"},
            ],
            "hostIP": "172.18.0.2",
            "startTime": ts,
            "containerStatuses": [{
                "name": c.get("name", ""),
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {},
            } for c in containers],
            "qosClass": "BestEffort",
        }

    def _set_pod_ready(self, entry, ready_mono: float):
        """Flip a pod to Running with all containers ready (as of ``ready_mono``)."""
        entry["ready"] = True
        ts = _rfc3339(self._wall(ready_mono))
        status = entry["obj"]["status"]
        status["phase"] = "Running"
        status["podIP"] = entry["ip"]
        status["podIPs"] = [{"ip": entry["ip"]}]
        for cond in status["conditions"]:
            if cond["type"] in ("Ready", "ContainersReady"):
                cond.update({"status": "True", "lastTransitionTime": ts})
                cond.pop("reason", None)
                cond.pop("message", None)
        for cs in status["containerStatuses"]:
            cs.update({"ready": True, "started": True,
                       "imageID": "docker.io/library/" + cs["image"].rsplit("/", 1)[-1].split(":")[0]
                                  + "@sha256:" + hashlib.sha256(cs["image"].encode()).hexdigest(),
                       "containerID": "containerd://" + hashlib.sha256(
                           (entry["obj"]["metadata"]["uid"] + cs["name"]).encode()).hexdigest(),
                       "state": {"running": {"startedAt": ts}}})
        entry["obj"]["metadata"]["resourceVersion"] = self._next_rv()

    def _terminate_pod(self, entry, now: float, grace: int = 30):
        """Mark a pod Terminating: it stays listed until ``pod_stop_delay`` has passed."""
        if entry["gone_at"] is not None:
            return
        entry["gone_at"] = now + self.pod_stop_delay
        meta = entry["obj"]["metadata"]
        meta["deletionTimestamp"] = _rfc3339(self._wall(now) + grace)
        meta["deletionGracePeriodSeconds"] = grace
        meta["resourceVersion"] = self._next_rv()

    def _reconcile_locked(self):
        """Advance the simulated controllers and kubelet to 'now'; caller holds the lock."""
        now = time.monotonic()
        for pk in [pk for pk, p in self._pods.items() if p["owner"] not in self._deployments]:
            del self._pods[pk]
        for key in list(self._deployments):
            self._reconcile_deployment(key, now)

    def _reconcile_deployment(self, key, now: float):
        """ReplicaSet controller + kubelet for one deployment, then recompute its status."""
        dep = self._deployments[key]
        owned = [(pk, p) for pk, p in self._pods.items() if p["owner"] == key]
        for pk, p in owned:
            if p["gone_at"] is not None and now >= p["gone_at"]:
                del self._pods[pk]
            elif p["gone_at"] is None and not p["ready"] and now >= p["ready_at"]:
                self._set_pod_ready(p, p["ready_at"])
        current_hash = self._template_hash(key)
        active = [p for p in self._pods.values() if p["owner"] == key and p["gone_at"] is None]
        # Template changed: replace old pods (a Recreate-style rollout, good enough here).
        for p in [p for p in active if p["hash"] != current_hash]:
            self._terminate_pod(p, now)
        active = [p for p in active if p["hash"] == current_hash]
        desired = dep["obj"]["spec"]["replicas"]
        if len(active) > desired:
            # Like the ReplicaSet controller: not-ready pods go first, then the newest.
            victims = sorted(active, key=lambda p: (p["ready"], -p["seq"]))[: len(active) - desired]
            for p in victims:
                self._terminate_pod(p, now)
        elif len(active) < desired:
            for _ in range(desired - len(active)):
                self._create_pod(key, now)
        status = self._compute_status(key, now)
        if status != dep["status"]:
            dep["status"] = status
            dep["obj"]["metadata"]["resourceVersion"] = self._next_rv()

    def _compute_status(self, key, now: float) -> dict:
        """Deployment status from its pods, with Go ``omitempty`` semantics for zeros."""
        dep = self._deployments[key]
        obj = dep["obj"]
        desired = obj["spec"]["replicas"]
        owned = [p for p in self._pods.values() if p["owner"] == key]
        active = [p for p in owned if p["gone_at"] is None]
        terminating = len(owned) - len(active)
        ready = sum(1 for p in active if p["ready"])
        current_hash = self._template_hash(key)
        updated = sum(1 for p in active if p["hash"] == current_hash)
        status: dict = {"observedGeneration": obj["metadata"]["generation"]}
        if active:
            status["replicas"] = len(active)
        if updated:
            status["updatedReplicas"] = updated
        if ready:
            status["readyReplicas"] = ready
            status["availableReplicas"] = ready
        if desired - ready > 0:
            status["unavailableReplicas"] = desired - ready
        if terminating:
            status["terminatingReplicas"] = terminating
        max_unavailable = desired * 25 // 100
        available_ok = ready >= desired - max_unavailable
        rs_name = f"{key[1]}-{current_hash}"
        progressed = updated == desired and ready >= desired and len(active) == desired
        conds = [
            self._condition(dep, "Available", "True" if available_ok else "False",
                            "MinimumReplicasAvailable" if available_ok else "MinimumReplicasUnavailable",
                            "Deployment has minimum availability." if available_ok
                            else "Deployment does not have minimum availability.", now),
            self._condition(dep, "Progressing", "True",
                            "NewReplicaSetAvailable" if progressed else "ReplicaSetUpdated",
                            f'ReplicaSet "{rs_name}" has successfully progressed.' if progressed
                            else f'ReplicaSet "{rs_name}" is progressing.', now),
        ]
        status["conditions"] = conds
        return status

    def _condition(self, dep, ctype, cstatus, reason, message, now) -> dict:
        """A deployment condition whose timestamps only move when it really changes."""
        prev = dep["conditions"].get(ctype)
        ts = _rfc3339(self._wall(now))
        if prev is None:
            cond = {"type": ctype, "status": cstatus, "lastUpdateTime": ts, "lastTransitionTime": ts,
                    "reason": reason, "message": message}
        else:
            cond = dict(prev)
            if prev["status"] != cstatus:
                cond["lastTransitionTime"] = ts
            if (prev["status"], prev["reason"], prev["message"]) != (cstatus, reason, message):
                cond["lastUpdateTime"] = ts
            cond.update({"status": cstatus, "reason": reason, "message": message})
        dep["conditions"][ctype] = cond
        return dict(cond)

    def _deployment_view(self, key) -> dict:
        """The Deployment JSON the API returns (stored object plus computed status)."""
        dep = self._deployments[key]
        view = copy.deepcopy(dep["obj"])
        view["status"] = copy.deepcopy(dep["status"] or {})
        return view

    def _scale_view(self, key) -> dict:
        """autoscaling/v1 Scale for a deployment (``spec.replicas`` omitted when 0, like Go)."""
        dep = self._deployments[key]
        meta = dep["obj"]["metadata"]
        spec = {}
        if dep["obj"]["spec"]["replicas"]:
            spec["replicas"] = dep["obj"]["spec"]["replicas"]
        selector = dep["obj"]["spec"]["selector"].get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                         "resourceVersion": meta["resourceVersion"],
                         "creationTimestamp": meta["creationTimestamp"]},
            "spec": spec,
            "status": {"replicas": (dep["status"] or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))},
        }

    def _validate_deployment(self, key, new: dict) -> dict:
        """Check an edited Deployment like the API server would; return the object to store."""
        namespace, name = key
        dep = self._deployments[key]
        old = dep["obj"]
        if not isinstance(new, dict):
            raise PatchError(400, "json: cannot unmarshal into Go value of type v1.Deployment")
        meta = new.get("metadata") or {}
        if not isinstance(meta, dict):
            raise PatchError(400, "json: cannot unmarshal into Go struct field Deployment.metadata")
        if meta.get("name") not in (None, name):
            raise PatchError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        if meta.get("namespace") not in (None, "", namespace):
            raise PatchError(400, "the namespace of the provided object does not match the namespace sent on the request")
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
            raise PatchError(409, f'Operation cannot be fulfilled on deployments.apps "{name}": the object has '
                                  "been modified; please apply your changes to the latest version and try again",
                             details={"name": name, "group": "apps", "kind": "deployments"})
        for field in ("annotations", "labels"):
            value = meta.get(field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise PatchError(400, f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} "
                                      "of type map[string]string")
        spec = new.get("spec")
        if not isinstance(spec, dict):
            raise PatchError(422, f'Deployment.apps "{name}" is invalid: spec: Required value',
                             details={"name": name, "group": "apps", "kind": "Deployment"})
        spec = copy.deepcopy(spec)
        if spec.get("replicas") is None:
            spec["replicas"] = 1  # API default
        replicas = spec["replicas"]
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise PatchError(400, "json: cannot unmarshal into Go struct field DeploymentSpec.spec.replicas of type int32")
        invalid = []
        if replicas < 0:
            invalid.append(f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0")
        if spec.get("selector") != old["spec"]["selector"]:
            invalid.append("spec.selector: Invalid value: " + json.dumps(spec.get("selector"))
                           + ": field is immutable")
        tmpl_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        match = (old["spec"]["selector"].get("matchLabels") or {})
        if any(tmpl_labels.get(k) != v for k, v in match.items()):
            invalid.append("spec.template.metadata.labels: Invalid value: " + json.dumps(tmpl_labels)
                           + ": `selector` does not match template `labels`")
        if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
            invalid.append("spec.template.spec.containers: Required value")
        if invalid:
            raise PatchError(422, f'Deployment.apps "{name}" is invalid: ' + ", ".join(invalid),
                             details={"name": name, "group": "apps", "kind": "Deployment",
                                      "causes": [{"reason": "FieldValueInvalid", "message": m.split(": ", 1)[1],
                                                  "field": m.split(":", 1)[0]} for m in invalid]})
        stored = copy.deepcopy(old)
        for field in ("annotations", "labels"):
            if meta.get(field):
                stored["metadata"][field] = dict(meta[field])
            else:
                stored["metadata"].pop(field, None)  # empty maps are omitted
        stored["spec"] = spec
        return stored

    def _store_deployment(self, key, stored: dict, dry_run: bool = False) -> dict:
        """Persist a validated Deployment: bump generation/resourceVersion, record history."""
        dep = self._deployments[key]
        old = dep["obj"]
        if stored == old:
            return self._deployment_view(key)  # no-op: real servers keep the resourceVersion
        stored = copy.deepcopy(stored)
        if stored["spec"] != old["spec"]:
            stored["metadata"]["generation"] = old["metadata"]["generation"] + 1
        if stored["spec"]["template"] != old["spec"]["template"]:
            # A new pod template means a new ReplicaSet revision, as the deployment controller records.
            annotations = stored["metadata"].setdefault("annotations", {})
            revision = int(old["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", "1"))
            annotations["deployment.kubernetes.io/revision"] = str(revision + 1)
        if dry_run:
            view = copy.deepcopy(stored)
            view["status"] = copy.deepcopy(dep["status"] or {})
            return view
        stored["metadata"]["resourceVersion"] = self._next_rv()
        dep["obj"] = stored
        if stored["spec"]["replicas"] != old["spec"]["replicas"]:
            dep["history"].append((time.monotonic(), stored["spec"]["replicas"]))
        self._reconcile_locked()
        return self._deployment_view(key)

    # ---- internals: HTTP --------------------------------------------------

    def _describe(self, method: str, path: str, query: dict) -> dict:
        """Work out verb/resource/name/namespace of a path, for realistic error messages."""
        info = {"verb": _VERBS.get(method, method.lower()), "group": "", "resource": "", "name": "",
                "namespace": ""}
        m = re.match(r"^/(?:api/v1|apis/([^/]+)/[^/]+)(?:/namespaces/([^/]+))?/([^/]+)(?:/([^/]+))?(?:/([^/]+))?$",
                     path)
        if m:
            group, ns, resource, name, sub = m.groups()
            if resource == "namespaces" and ns is None and name:
                info.update(resource="namespaces", name=name)
            else:
                info.update(group=group or "", namespace=ns or "", resource=resource,
                            name=name or "", sub=sub or "")
                if sub:
                    info["resource"] = f"{resource}/{sub}"
        if method == "GET" and not info["name"]:
            info["verb"] = "watch" if query.get("watch") in ("true", "1") else "list"
        return info

    def _injected_status(self, code: int, method: str, path: str, query: dict) -> dict:
        """A believable Status body for an injected failure on this request."""
        d = self._describe(method, path, query)
        base_resource = d["resource"].split("/")[0]
        qualified = f"{base_resource}.{d['group']}" if d["group"] else base_resource
        details = {}
        if d["name"]:
            details["name"] = d["name"]
        if base_resource:
            details["kind"] = base_resource
            if d["group"]:
                details["group"] = d["group"]
        subject = f'{qualified} "{d["name"]}"' if d["name"] else qualified
        if code == 403:
            where = f' in the namespace "{d["namespace"]}"' if d["namespace"] else " at the cluster scope"
            msg = (f'{subject} is forbidden: User "system:serviceaccount:{self.namespace}:taiga-backup" '
                   f'cannot {d["verb"]} resource "{d["resource"]}" in API group "{d["group"]}"{where}')
        elif code == 409:
            msg = (f'Operation cannot be fulfilled on {subject}: the object has been modified; '
                   "please apply your changes to the latest version and try again")
        elif code == 404:
            msg = f"{subject} not found" if d["name"] else "the server could not find the requested resource"
        elif code == 422:
            msg = f'{qualified} "{d["name"]}" is invalid: injected validation failure'
        elif code == 429:
            details["retryAfterSeconds"] = 1
            msg = None
        elif code == 500:
            msg = "Internal error occurred: injected failure"
        else:
            msg = None
        return _status_body(code, msg, details=details or None)

    def _take_fault(self, method: str, path: str):
        """Pop (or count down) the first injected fault matching this request."""
        for fault in self._faults:
            if fault["method"] not in ("*", method) or not fault["regex"].search(path):
                continue
            if fault["times"] is not None:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    def _dispatch(self, method: str, raw_path: str, headers, body: bytes):
        """Log, apply injected faults and auth, then route one request under the lock."""
        split = urlsplit(raw_path)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        parsed_body = None
        if body:
            try:
                parsed_body = json.loads(body)
            except ValueError:
                parsed_body = body.decode("utf-8", "replace")
        with self._lock:
            self.requests.append((method, path))
            self.request_log.append({"method": method, "path": path, "query": query,
                                     "content_type": ctype, "body": parsed_body,
                                     "time": time.monotonic()})
            fault = self._take_fault(method, path)
            if fault is not None:
                payload = fault["body"] if fault["body"] is not None else \
                    self._injected_status(fault["status"], method, path, query)
                extra = dict(fault["headers"])
                if fault["status"] == 429 and "Retry-After" not in extra:
                    extra["Retry-After"] = "1"
                return _Response(fault["status"], payload, extra)
            public = path in ("/version", "/healthz", "/livez", "/readyz")
            if not public and headers.get("Authorization") != f"Bearer {self.token}":
                return _Response(401, _status_body(401))
            try:
                self._reconcile_locked()
                return self._route(method, path, query, ctype, body, parsed_body)
            except PatchError as exc:
                return _Response(exc.code, exc.status())

    def _route(self, method, path, query, ctype, raw_body, body):
        """Map a request onto the handful of API endpoints the double implements."""
        if path in ("/healthz", "/livez", "/readyz"):
            return self._only(method, "GET") or _Response(200, "ok")
        if path == "/version":
            return self._only(method, "GET") or _Response(200, dict(_SERVER_VERSION))
        if path == "/api":
            return self._only(method, "GET") or _Response(200, {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})
        if path == "/apis":
            return self._only(method, "GET") or _Response(200, {
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                            "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]})
        if path == "/apis/apps":
            return self._only(method, "GET") or _Response(200, {
                "kind": "APIGroup", "apiVersion": "v1", "name": "apps",
                "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}})
        if path == "/apis/apps/v1":
            return self._only(method, "GET") or _Response(200, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
                "resources": [
                    {"name": "deployments", "singularName": "deployment", "namespaced": True, "kind": "Deployment",
                     "verbs": ["get", "list", "patch", "update", "watch"], "shortNames": ["deploy"]},
                    {"name": "deployments/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
                     "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]},
                ]})
        if path == "/api/v1":
            return self._only(method, "GET") or _Response(200, {
                "kind": "APIResourceList", "groupVersion": "v1",
                "resources": [
                    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
                     "verbs": ["get"], "shortNames": ["ns"]},
                    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
                     "verbs": ["delete", "get", "list", "watch"], "shortNames": ["po"]},
                ]})

        m = re.match(r"^/api/v1/namespaces/([^/]+)$", path)
        if m:
            return self._only(method, "GET") or _Response(200, {
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": m.group(1), "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, m.group(1))),
                             "resourceVersion": "1", "creationTimestamp": _rfc3339(self._wall_offset),
                             "labels": {"kubernetes.io/metadata.name": m.group(1)}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

        m = re.match(r"^/apis/apps/v1(?:/namespaces/([^/]+))?/deployments$", path)
        if m:
            return self._only(method, "GET") or self._list("deployments", m.group(1), query)
        m = re.match(r"^/api/v1(?:/namespaces/([^/]+))?/pods$", path)
        if m:
            return self._only(method, "GET") or self._list("pods", m.group(1), query)

        m = re.match(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)(/scale|/status)?$", path)
        if m:
            namespace, name, sub = m.groups()
            key = (namespace, name)
            if key not in self._deployments:
                if method not in ("GET", "PATCH", "PUT"):
                    return self._method_not_allowed()
                return _Response(404, _status_body(404, f'deployments.apps "{name}" not found',
                                                   details={"name": name, "group": "apps", "kind": "deployments"}))
            if sub == "/scale":
                return self._scale(method, key, query, ctype, body)
            if sub == "/status":
                return self._only(method, "GET") or _Response(200, self._deployment_view(key))
            return self._deployment(method, key, query, ctype, body)

        m = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$", path)
        if m:
            return self._pod(method, m.group(1), m.group(2), query, body)
        return _Response(404, _status_body(404))

    @staticmethod
    def _method_not_allowed():
        """The 405 Status the API server sends for a verb a resource does not support."""
        return _Response(405, _status_body(405))

    def _only(self, method, allowed):
        """None when ``method`` is allowed, else the 405 response."""
        return None if method == allowed else self._method_not_allowed()

    def _parse_patch(self, ctype, body, current):
        """Apply a PATCH body to ``current`` according to its content type."""
        if ctype == _CT_JSON_PATCH:
            return json_patch(current, body)
        if ctype in (_CT_MERGE_PATCH, _CT_SMP):
            if not isinstance(body, dict):
                raise PatchError(400, "json: cannot unmarshal " + type(body).__name__
                                      + " into Go value of type map[string]interface {}")
            if ctype == _CT_MERGE_PATCH:
                return json_merge_patch(current, body)
            return strategic_merge_patch(current, body)
        raise PatchError(415, f"the body of the request was in an unknown format - accepted media types include: "
                              f"{_CT_JSON_PATCH}, {_CT_MERGE_PATCH}, {_CT_APPLY_YAML}, {_CT_SMP}")

    def _deployment(self, method, key, query, ctype, body):
        """GET / PATCH / PUT on a Deployment."""
        dry_run = query.get("dryRun") == "All"
        if method == "GET":
            return _Response(200, self._deployment_view(key))
        if method == "PATCH":
            patched = self._parse_patch(ctype, body, self._deployment_view(key))
            stored = self._validate_deployment(key, patched)
            return _Response(200, self._store_deployment(key, stored, dry_run))
        if method == "PUT":
            if not isinstance(body, dict):
                raise PatchError(400, "the body of the request was in an unknown format")
            stored = self._validate_deployment(key, body)
            return _Response(200, self._store_deployment(key, stored, dry_run))
        return self._method_not_allowed()

    def _scale(self, method, key, query, ctype, body):
        """GET / PATCH / PUT on ``deployments/{name}/scale``."""
        dry_run = query.get("dryRun") == "All"
        if method == "GET":
            return _Response(200, self._scale_view(key))
        if method not in ("PATCH", "PUT"):
            return self._method_not_allowed()
        current = self._scale_view(key)
        if method == "PATCH":
            new = self._parse_patch(ctype, body, current)
        else:
            new = body
        if not isinstance(new, dict):
            raise PatchError(400, "the body of the request was in an unknown format")
        meta = new.get("metadata") or {}
        name = key[1]
        if meta.get("name") not in (None, name):
            raise PatchError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != current["metadata"]["resourceVersion"]:
            raise PatchError(409, f'Operation cannot be fulfilled on deployments.apps "{name}": the object has '
                                  "been modified; please apply your changes to the latest version and try again",
                             details={"name": name, "group": "apps", "kind": "deployments"})
        replicas = (new.get("spec") or {}).get("replicas")
        if replicas is None:
            replicas = 0  # autoscaling/v1 ScaleSpec.replicas is omitempty: absent means 0
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise PatchError(400, "json: cannot unmarshal into Go struct field ScaleSpec.spec.replicas of type int32")
        if replicas < 0:
            raise PatchError(422, f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {replicas}: '
                                  "must be greater than or equal to 0",
                             details={"name": name, "group": "autoscaling", "kind": "Scale"})
        stored = copy.deepcopy(self._deployments[key]["obj"])
        stored["spec"]["replicas"] = replicas
        if dry_run:
            view = copy.deepcopy(current)
            view["spec"] = {"replicas": replicas} if replicas else {}
            return _Response(200, view)
        self._store_deployment(key, stored)
        return _Response(200, self._scale_view(key))

    def _pod(self, method, namespace, name, query, body):
        """GET / DELETE on a single Pod (deleting one makes the 'ReplicaSet' replace it)."""
        entry = self._pods.get((namespace, name))
        if entry is None:
            if method not in ("GET", "DELETE"):
                return self._method_not_allowed()
            return _Response(404, _status_body(404, f'pods "{name}" not found',
                                               details={"name": name, "kind": "pods"}))
        if method == "GET":
            return _Response(200, copy.deepcopy(entry["obj"]))
        if method == "DELETE":
            grace = query.get("gracePeriodSeconds")
            if grace is None and isinstance(body, dict):
                grace = body.get("gracePeriodSeconds")
            now = time.monotonic()
            if grace is not None and int(grace) == 0:
                self._terminate_pod(entry, now, grace=0)
                entry["gone_at"] = now
                view = copy.deepcopy(entry["obj"])
                del self._pods[(namespace, name)]
                self._reconcile_locked()
                return _Response(200, view)
            self._terminate_pod(entry, now, grace=int(grace) if grace is not None else 30)
            self._reconcile_locked()
            return _Response(200, copy.deepcopy(entry["obj"]))
        return self._method_not_allowed()

    def _matching(self, kind, namespace, query) -> list[dict]:
        """Objects of ``kind`` in ``namespace`` (None = all) passing label/field selectors."""
        labels_ok = parse_label_selector(query.get("labelSelector"))
        if kind == "pods":
            fields_ok = parse_field_selector(query.get("fieldSelector"), _POD_FIELDS)
            objs = [copy.deepcopy(p["obj"]) for p in self._pods.values()]
        else:
            fields_ok = parse_field_selector(query.get("fieldSelector"), _DEPLOYMENT_FIELDS)
            objs = [self._deployment_view(k) for k in self._deployments]
        out = [o for o in objs
               if (namespace is None or o["metadata"]["namespace"] == namespace)
               and labels_ok(o["metadata"].get("labels") or {}) and fields_ok(o)]
        return sorted(out, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    def _list(self, kind, namespace, query):
        """A PodList/DeploymentList (items without kind/apiVersion, as the server sends them)."""
        if query.get("watch") in ("true", "1"):
            self._matching(kind, namespace, query)  # validate selectors before streaming
            return _WatchRequest(kind, namespace, query)
        items = self._matching(kind, namespace, query)
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return _Response(200, {
            "kind": "PodList" if kind == "pods" else "DeploymentList",
            "apiVersion": "v1" if kind == "pods" else "apps/v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        })

    def _stream_watch(self, handler: _Handler, req: _WatchRequest):
        """Serve ``?watch=true`` as chunked JSON lines of ADDED/MODIFIED/DELETED events.

        Polls the state every 50 ms until ``timeoutSeconds`` (default 30 s),
        the client goes away or the double stops.
        """
        timeout = float(req.query.get("timeoutSeconds") or 30)
        since = req.query.get("resourceVersion")
        deadline = time.monotonic() + timeout
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event_type, obj):
            line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            handler.wfile.flush()

        seen: dict[str, tuple[str, dict]] = {}
        first = True
        try:
            while True:
                with self._lock:
                    self._reconcile_locked()
                    current = {o["metadata"]["uid"]: o for o in self._matching(req.kind, req.namespace, req.query)}
                    rv_now = str(self._rv)
                for uid, obj in current.items():
                    if uid not in seen:
                        if not (first and since not in (None, "", "0")
                                and int(obj["metadata"]["resourceVersion"]) <= int(since)):
                            send("ADDED", obj)
                    elif seen[uid][0] != obj["metadata"]["resourceVersion"]:
                        send("MODIFIED", obj)
                for uid in set(seen) - set(current):
                    gone = seen[uid][1]
                    gone["metadata"]["resourceVersion"] = rv_now
                    send("DELETED", gone)
                seen = {uid: (o["metadata"]["resourceVersion"], o) for uid, o in current.items()}
                first = False
                if time.monotonic() >= deadline or self._stopping.is_set():
                    break
                time.sleep(0.05)
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        handler.close_connection = True
