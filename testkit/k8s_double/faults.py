"""Injected API failures: ``fail(method, path_regex, status, times)`` and the Status they answer.

Why: the product's retries (409/429/5xx) and its operator-readable 403/404 messages can only be
tested against errors a real API server would send, so an injected failure carries a Status
body worded like the real one (a 403 names the verb, resource, API group and namespace the way
an RBAC denial does; a 429 carries ``Retry-After``).
"""

from __future__ import annotations

import re

from testkit.k8s_double.routes import Response
from testkit.k8s_double.status import status_body

_VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "DELETE": "delete", "POST": "create"}
_RESOURCE_PATH = re.compile(
    r"^/(?:api/v1|apis/([^/]+)/[^/]+)(?:/namespaces/([^/]+))?/([^/]+)(?:/([^/]+))?(?:/([^/]+))?$")


def _describe(method: str, path: str, query: dict) -> dict:
    """Work out verb/resource/name/namespace of a path, for realistic error messages."""
    info = {"verb": _VERBS.get(method, method.lower()), "group": "", "resource": "", "name": "",
            "namespace": ""}
    m = _RESOURCE_PATH.match(path)
    if m:
        group, ns, resource, name, sub = m.groups()
        info.update(group=group or "", namespace=ns or "", resource=f"{resource}/{sub}" if sub else resource,
                    name=name or "")
    if method == "GET" and not info["name"]:
        info["verb"] = "watch" if query.get("watch") in ("true", "1") else "list"
    return info


def _message(code: int, d: dict, user_namespace: str) -> str | None:
    """The message the API server gives for ``code`` on the request ``d`` describes (None: default)."""
    base_resource = d["resource"].split("/")[0]
    qualified = f"{base_resource}.{d['group']}" if d["group"] else base_resource
    subject = f'{qualified} "{d["name"]}"' if d["name"] else qualified
    if code == 403:
        where = f' in the namespace "{d["namespace"]}"' if d["namespace"] else " at the cluster scope"
        return (f'{subject} is forbidden: User "system:serviceaccount:{user_namespace}:taiga-backup" '
                f'cannot {d["verb"]} resource "{d["resource"]}" in API group "{d["group"]}"{where}')
    if code == 409:
        return (f'Operation cannot be fulfilled on {subject}: the object has been modified; '
                "please apply your changes to the latest version and try again")
    if code == 404:
        return f"{subject} not found" if d["name"] else "the server could not find the requested resource"
    if code == 422:
        return f'{qualified} "{d["name"]}" is invalid: injected validation failure'
    if code == 500:
        return "Internal error occurred: injected failure"
    return None


def injected_status(code: int, method: str, path: str, query: dict, user_namespace: str) -> dict:
    """A believable Status body for an injected failure on this request."""
    d = _describe(method, path, query)
    base_resource = d["resource"].split("/")[0]
    details = {}
    if d["name"]:
        details["name"] = d["name"]
    if base_resource:
        details["kind"] = base_resource
        if d["group"]:
            details["group"] = d["group"]
    if code == 429:
        details["retryAfterSeconds"] = 1
    return status_body(code, _message(code, d, user_namespace), details=details or None)


class Faults:
    """Pending injected failures, first match wins; guarded by the cluster's lock."""

    def __init__(self, lock):
        """``lock`` is the cluster's: faults are taken while a request holds it."""
        self._lock = lock
        self._faults: list[dict] = []

    def add(self, method: str, path_regex: str, status: int, times: int | None):
        """Queue a failure for the next ``times`` requests (None: until cleared) matching both."""
        with self._lock:
            self._faults.append({"method": method.upper(), "regex": re.compile(path_regex),
                                 "status": int(status), "times": times})

    def clear(self):
        """Forget all pending injected faults."""
        with self._lock:
            self._faults.clear()

    def _take(self, method: str, path: str):
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

    def response(self, method: str, path: str, query: dict, user_namespace: str) -> Response | None:
        """The injected failure this request gets, or None; caller holds the lock."""
        fault = self._take(method, path)
        if fault is None:
            return None
        code = fault["status"]
        headers = {"Retry-After": "1"} if code == 429 else {}
        return Response(code, injected_status(code, method, path, query, user_namespace), headers)
