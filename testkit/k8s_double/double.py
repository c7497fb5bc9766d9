"""KubeApiDouble: the one object tests, the bench and the demo hold - a facade over the parts.

Why a facade: callers seed and inspect the cluster (``add_deployment``, ``replicas``, ``pods``,
``history``...), inject faults and read the request log through one object, while the state
(``cluster.py``), pod lifecycle (``pods.py``), faults (``faults.py``) and HTTP (``server.py``)
stay separate modules that each do one job.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from testkit.k8s_double.cluster import Cluster
from testkit.k8s_double.faults import Faults
from testkit.k8s_double.server import ApiServer


def _cluster_attribute(name: str) -> property:
    """A read/write attribute kept on the Cluster (tests change pod delays while a job runs)."""
    return property(lambda self: getattr(self._cluster, name),
                    lambda self, value: setattr(self._cluster, name, value),
                    doc=f"``{name}`` of the simulated cluster, read on every request.")


class KubeApiDouble:
    """A fake kube-apiserver for Deployments, their Scale subresource and Pods.

    Start it, point the official client at it with ``write_kubeconfig()``,
    seed state with ``add_deployment()`` and inspect what the code under test
    did through ``replicas()``, ``annotations()``, ``pods()``, ``history()`` and
    ``requests``.  ``fail()`` injects API errors.
    """

    pod_start_delay = _cluster_attribute("pod_start_delay")
    pod_stop_delay = _cluster_attribute("pod_stop_delay")

    def __init__(self, pod_start_delay: float = 0.3, pod_stop_delay: float = 0.5,
                 token: str = "dummy-token", namespace: str = "taiga"):
        """Configure pod timing, the bearer token to accept and the kubeconfig's default namespace."""
        self._cluster = Cluster(pod_start_delay, pod_stop_delay)
        self._lock = self._cluster.lock
        self._faults = Faults(self._lock)
        self._api = ApiServer(self._cluster, self._faults, token, namespace)
        self.token = token
        self.namespace = namespace
        self.url: str = ""

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request served, in order."""
        return self._api.requests

    @property
    def request_log(self) -> list[dict]:
        """Every request served: method, path, query, content_type, parsed body, monotonic time."""
        return self._api.request_log

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "KubeApiDouble":
        """Bind 127.0.0.1 on a free port and serve in a daemon thread; returns self."""
        if not self._api.running:
            self.url = self._api.start()
        return self

    def stop(self):
        """Stop serving, end watch streams and close open keep-alive connections."""
        self._api.stop()

    def reset(self):
        """Drop deployments, pods, injected faults and the request log (server keeps running)."""
        with self._lock:
            self._cluster.clear()
            self._faults.clear()
            self.requests.clear()
            self.request_log.clear()

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
        with self._lock:
            return self._cluster.add_deployment(namespace, name, replicas, dict(labels or {"app": name}),
                                                annotations, image)

    def replicas(self, namespace: str, name: str) -> int:
        """Current ``spec.replicas`` of a Deployment."""
        with self._lock:
            return self._cluster.deployments[self._cluster.require(namespace, name)]["obj"]["spec"]["replicas"]

    def annotations(self, namespace: str, name: str) -> dict:
        """Copy of ``metadata.annotations`` (``{}`` when the server would omit the map)."""
        with self._lock:
            key = self._cluster.require(namespace, name)
            return dict(self._cluster.deployments[key]["obj"]["metadata"].get("annotations") or {})

    def set_annotations(self, namespace: str, name: str, annotations: dict):
        """Replace ``metadata.annotations`` wholesale, to pre-seed state for a test."""
        with self._lock:
            key = self._cluster.require(namespace, name)
            obj = copy.deepcopy(self._cluster.deployments[key]["obj"])
            if annotations:
                obj["metadata"]["annotations"] = {str(k): str(v) for k, v in annotations.items()}
            else:
                obj["metadata"].pop("annotations", None)  # empty maps are omitted by the server
            self._cluster.store_deployment(key, obj)

    def pods(self, namespace: str, name: str, include_terminating: bool = True) -> list[dict]:
        """Pods of a Deployment as Pod JSON, sorted by name; optionally without Terminating ones."""
        with self._lock:
            self._cluster.reconcile()
            key = (namespace, name)
            out = [copy.deepcopy(p["obj"]) for p in self._cluster.pods.values()
                   if p["owner"] == key and (include_terminating or p["gone_at"] is None)]
            return sorted(out, key=lambda p: p["metadata"]["name"])

    def history(self, namespace: str, name: str) -> list[tuple[float, int]]:
        """``(time.monotonic(), spec.replicas)`` for the initial value and every later change."""
        with self._lock:
            return list(self._cluster.deployments[self._cluster.require(namespace, name)]["history"])

    def fail(self, method: str, path_regex: str, status: int, times: int | None = 1):
        """Make the next ``times`` requests matching METHOD and path regex fail with ``status``.

        ``method`` may be ``"*"``; ``path_regex`` is searched (``re.search``)
        in the path without query string; ``times=None`` fails until reset().
        The answer is a realistic Status (e.g. 403 names the verb/resource/namespace,
        409 is the optimistic-concurrency conflict, 429 carries ``Retry-After``).
        """
        self._faults.add(method, path_regex, status, times)
