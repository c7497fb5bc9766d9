"""The cluster state behind the double: Deployments, their pods and the resourceVersion counter.

Why one object under one lock: the HTTP handler threads, the watch streams and the test
calling ``replicas()`` all read and write the same Deployments, and a real API server
serialises writes per object; one ``RLock`` gives the same "each request sees a consistent
cluster" guarantee with no ordering puzzles.  ``resourceVersion`` comes from one counter (like
etcd's revision) and moves only when an object really changes, so a no-op patch keeps it.
"""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid

from testkit.k8s_double import pods
from testkit.k8s_double.selectors import DEPLOYMENT_FIELDS, POD_FIELDS, parse_field_selector, parse_label_selector
from testkit.k8s_double.status import rfc3339


def _pod_template(name: str, labels: dict, image: str | None) -> dict:
    """The pod template a seeded Deployment carries: one container, the API's defaults filled in."""
    return {
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


class Cluster:
    """Deployments and pods, keyed by ``(namespace, name)``; callers hold ``lock``."""

    def __init__(self, pod_start_delay: float, pod_stop_delay: float):
        """Pod timing is read on every reconcile, so changing it affects pods from then on."""
        self.pod_start_delay = pod_start_delay
        self.pod_stop_delay = pod_stop_delay
        self.lock = threading.RLock()
        self.rand = random.Random()
        self.wall_offset = time.time() - time.monotonic()
        self.clear()

    def clear(self):
        """(Re)create the empty cluster state."""
        self.rv = 1000
        self.deployments: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.pod_seq = 0

    def next_rv(self) -> str:
        """Advance the cluster-wide resourceVersion counter (like etcd's revision)."""
        self.rv += 1
        return str(self.rv)

    def wall(self, mono: float) -> float:
        """Convert a monotonic instant into wall-clock epoch seconds."""
        return mono + self.wall_offset

    def require(self, namespace, name):
        """Key of an existing deployment, else KeyError with a readable message."""
        key = (namespace, name)
        if key not in self.deployments:
            raise KeyError(f"no deployment {namespace}/{name} in the double")
        return key

    def reconcile(self):
        """Bring pods and Deployment status up to 'now' (see ``pods.reconcile``)."""
        pods.reconcile(self)

    def add_deployment(self, namespace: str, name: str, replicas: int, labels: dict,
                       annotations: dict | None, image: str | None) -> dict:
        """Create a Deployment and its pods, already Running and Ready; returns the Deployment."""
        key = (namespace, name)
        now = time.monotonic()
        meta = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self.next_rv(),
            "generation": 1,
            "creationTimestamp": rfc3339(time.time()),
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
                "template": _pod_template(name, labels, image),
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
        }
        self.deployments[key] = {"obj": obj, "status": None, "history": [(now, int(replicas))],
                                 "rs_uids": {}, "conditions": {}}
        for _ in range(int(replicas)):
            pods.create_pod(self, key, now, ready=True)
        self.reconcile()
        return self.deployment_view(key)

    def store_deployment(self, key, stored: dict) -> dict:
        """Persist a validated Deployment: bump generation/resourceVersion, record history."""
        dep = self.deployments[key]
        old = dep["obj"]
        if stored == old:
            return self.deployment_view(key)  # no-op: real servers keep the resourceVersion
        stored = copy.deepcopy(stored)
        if stored["spec"] != old["spec"]:
            stored["metadata"]["generation"] = old["metadata"]["generation"] + 1
        if stored["spec"]["template"] != old["spec"]["template"]:
            # A new pod template means a new ReplicaSet revision, as the deployment controller records.
            annotations = stored["metadata"].setdefault("annotations", {})
            revision = int(old["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", "1"))
            annotations["deployment.kubernetes.io/revision"] = str(revision + 1)
        stored["metadata"]["resourceVersion"] = self.next_rv()
        dep["obj"] = stored
        if stored["spec"]["replicas"] != old["spec"]["replicas"]:
            dep["history"].append((time.monotonic(), stored["spec"]["replicas"]))
        self.reconcile()
        return self.deployment_view(key)

    def deployment_view(self, key) -> dict:
        """The Deployment JSON the API returns (stored object plus computed status)."""
        dep = self.deployments[key]
        view = copy.deepcopy(dep["obj"])
        view["status"] = copy.deepcopy(dep["status"] or {})
        return view

    def scale_view(self, key) -> dict:
        """autoscaling/v1 Scale for a deployment (``spec.replicas`` omitted when 0, like Go)."""
        dep = self.deployments[key]
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

    def matching(self, kind: str, namespace: str, query: dict) -> list[dict]:
        """Objects of ``kind`` ("pods" or "deployments") in ``namespace`` passing label/field selectors."""
        labels_ok = parse_label_selector(query.get("labelSelector"))
        if kind == "pods":
            fields_ok = parse_field_selector(query.get("fieldSelector"), POD_FIELDS)
            objs = [copy.deepcopy(p["obj"]) for p in self.pods.values()]
        else:
            fields_ok = parse_field_selector(query.get("fieldSelector"), DEPLOYMENT_FIELDS)
            objs = [self.deployment_view(k) for k in self.deployments]
        out = [o for o in objs
               if o["metadata"]["namespace"] == namespace
               and labels_ok(o["metadata"].get("labels") or {}) and fields_ok(o)]
        return sorted(out, key=lambda o: o["metadata"]["name"])
