"""The REST endpoints the double serves: the ones the product and its tests call, and no others.

Served: ``GET /version``; namespaced ``GET`` lists (and ``?watch=true``) of Deployments and
Pods; ``GET``/``PATCH`` of a Deployment; ``GET``/``PATCH``/``PUT`` of its ``scale``
subresource; ``DELETE`` of a Pod.  Anything else under a known resource is a 405, any other
path a 404, both as Status bodies.  Callers hold the cluster's lock.
"""

from __future__ import annotations

import copy
import re
import time

from testkit.k8s_double import pods
from testkit.k8s_double.patches import apply_patch
from testkit.k8s_double.status import PatchError, status_body
from testkit.k8s_double.validation import validate_deployment, validate_scale

SERVER_VERSION = {
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

_LIST_DEPLOYMENTS = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments$")
_LIST_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_DEPLOYMENT = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)(/scale)?$")
_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")


class Response:
    """What a routed request answers: status code, JSON payload and extra headers."""

    def __init__(self, code: int, payload, headers: dict | None = None):
        self.code = code
        self.payload = payload
        self.headers = headers or {}


class WatchRequest:
    """Marker returned by routing when the request is a ``?watch=true`` stream."""

    def __init__(self, kind: str, namespace: str, query: dict):
        self.kind = kind
        self.namespace = namespace
        self.query = query


def _method_not_allowed() -> Response:
    """The 405 Status the API server sends for a verb a resource does not support."""
    return Response(405, status_body(405))


def _only(method, allowed):
    """None when ``method`` is allowed, else the 405 response."""
    return None if method == allowed else _method_not_allowed()


def route(cluster, method, path, query, ctype, body):
    """Map a request onto the handful of API endpoints the double implements."""
    if path == "/version":
        return _only(method, "GET") or Response(200, dict(SERVER_VERSION))
    m = _LIST_DEPLOYMENTS.match(path)
    if m:
        return _only(method, "GET") or _list(cluster, "deployments", m.group(1), query)
    m = _LIST_PODS.match(path)
    if m:
        return _only(method, "GET") or _list(cluster, "pods", m.group(1), query)
    m = _DEPLOYMENT.match(path)
    if m:
        namespace, name, scale = m.groups()
        key = (namespace, name)
        if key not in cluster.deployments:
            if method not in ("GET", "PATCH", "PUT"):
                return _method_not_allowed()
            return Response(404, status_body(404, f'deployments.apps "{name}" not found',
                                             details={"name": name, "group": "apps", "kind": "deployments"}))
        if scale:
            return _scale(cluster, method, key, ctype, body)
        return _deployment(cluster, method, key, ctype, body)
    m = _POD.match(path)
    if m:
        return _delete_pod(cluster, method, m.group(1), m.group(2))
    return Response(404, status_body(404))


def _deployment(cluster, method, key, ctype, body):
    """GET / PATCH on a Deployment."""
    if method == "GET":
        return Response(200, cluster.deployment_view(key))
    if method == "PATCH":
        patched = apply_patch(ctype, body, cluster.deployment_view(key))
        stored = validate_deployment(key, cluster.deployments[key]["obj"], patched)
        return Response(200, cluster.store_deployment(key, stored))
    return _method_not_allowed()


def _scale(cluster, method, key, ctype, body):
    """GET / PATCH / PUT on ``deployments/{name}/scale``."""
    if method == "GET":
        return Response(200, cluster.scale_view(key))
    if method not in ("PATCH", "PUT"):
        return _method_not_allowed()
    current = cluster.scale_view(key)
    new = apply_patch(ctype, body, current) if method == "PATCH" else body
    replicas = validate_scale(key[1], current, new)
    stored = copy.deepcopy(cluster.deployments[key]["obj"])
    stored["spec"]["replicas"] = replicas
    cluster.store_deployment(key, stored)
    return Response(200, cluster.scale_view(key))


def _delete_pod(cluster, method, namespace, name):
    """DELETE on a single Pod: it turns Terminating and the 'ReplicaSet' replaces it."""
    if method != "DELETE":
        return _method_not_allowed()
    entry = cluster.pods.get((namespace, name))
    if entry is None:
        return Response(404, status_body(404, f'pods "{name}" not found', details={"name": name, "kind": "pods"}))
    pods.terminate_pod(cluster, entry, time.monotonic())
    cluster.reconcile()
    return Response(200, copy.deepcopy(entry["obj"]))


def _list(cluster, kind, namespace, query):
    """A PodList/DeploymentList (items without kind/apiVersion, as the server sends them)."""
    if query.get("watch") in ("true", "1"):
        cluster.matching(kind, namespace, query)  # validate selectors before streaming
        return WatchRequest(kind, namespace, query)
    items = cluster.matching(kind, namespace, query)
    for item in items:
        item.pop("kind", None)
        item.pop("apiVersion", None)
    return Response(200, {
        "kind": "PodList" if kind == "pods" else "DeploymentList",
        "apiVersion": "v1" if kind == "pods" else "apps/v1",
        "metadata": {"resourceVersion": str(cluster.rv)},
        "items": items,
    })


def handle(cluster, method, path, query, ctype, body):
    """Reconcile to 'now', then route; a PatchError anywhere becomes its Status response."""
    try:
        cluster.reconcile()
        return route(cluster, method, path, query, ctype, body)
    except PatchError as exc:
        return Response(exc.code, exc.status())
