"""Pod lifecycle in real time: the ReplicaSet controller, the kubelet and the Deployment status.

Why: the product waits for pods to vanish after scaling to 0 and for ``availableReplicas``
after scaling back, and its timeout tests stretch ``pod_start_delay``/``pod_stop_delay`` while
a job runs.  So pods are Pending for ``pod_start_delay`` before they turn Ready, surplus pods
stay listed as Terminating (with their last readiness) for ``pod_stop_delay``, and the
Deployment's status counts only pods that are not terminating, with Go's ``omitempty`` for
zeros.  Nothing ticks: ``reconcile`` advances everything to "now" whenever the state is read.

The functions that change state take the ``Cluster`` (``cluster.py``) and run with its lock held.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import uuid

from testkit.k8s_double.status import rfc3339

# Characters Kubernetes uses for generated name suffixes (no vowels, no
# look-alikes), see k8s.io/apimachinery/pkg/util/rand.
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: dict) -> str:
    """pod-template-hash: a stable, name-safe digest of the pod template."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:10])


def _pod_object(cluster, key, tmpl: dict, phash: str, created_wall: float) -> dict:
    """Pod JSON for a new pod of deployment ``key``, owned by its (implicit) ReplicaSet."""
    namespace, dname = key
    rs_name = f"{dname}-{phash}"
    rs_uid = cluster.deployments[key]["rs_uids"].setdefault(phash, str(uuid.uuid4()))
    while True:
        suffix = "".join(cluster.rand.choice(SAFE_ALPHABET) for _ in range(5))
        pname = f"{rs_name}-{suffix}"
        if (namespace, pname) not in cluster.pods:
            break
    labels = dict((tmpl.get("metadata") or {}).get("labels") or {})
    labels["pod-template-hash"] = phash
    spec = copy.deepcopy(tmpl.get("spec") or {})
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", "default")
    spec["nodeName"] = "node-1"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pname,
            "generateName": f"{rs_name}-",
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": cluster.next_rv(),
            "creationTimestamp": rfc3339(created_wall),
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                 "uid": rs_uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec,
        "status": {},
    }


def create_pod(cluster, key, now: float, ready: bool = False):
    """Create one pod for a deployment, Pending (or already Ready when seeding)."""
    tmpl = cluster.deployments[key]["obj"]["spec"]["template"]
    phash = template_hash(tmpl)
    created = cluster.wall(now)
    pod = _pod_object(cluster, key, tmpl, phash, created)
    cluster.pod_seq += 1
    entry = {"obj": pod, "owner": key, "hash": phash, "seq": cluster.pod_seq,
             "ready": False, "ready_at": now + cluster.pod_start_delay, "gone_at": None,
             "ip": f"10.244.0.{(cluster.pod_seq % 250) + 2}"}
    cluster.pods[(key[0], pod["metadata"]["name"])] = entry
    _set_pending(entry, created)
    if ready:
        entry["ready_at"] = now
        _set_ready(cluster, entry, now)


def _set_pending(entry, created_wall: float):
    """Status of a scheduled pod whose containers are still being created."""
    containers = entry["obj"]["spec"].get("containers") or []
    ts = rfc3339(created_wall)
    unready = "containers with unready status: [" + " ".join(c.get("name", "") for c in containers) + "]"
    entry["obj"]["status"] = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
            {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": ts},
            {"type": "Ready", "status": "False", "lastProbeTime": None, "lastTransitionTime": ts,
             "reason": "ContainersNotReady", "message": unready},
            {"type": "ContainersReady", "status": "False", "lastProbeTime": None, "lastTransitionTime": ts,
             "reason": "ContainersNotReady", "message": unready},
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


def _set_ready(cluster, entry, ready_mono: float):
    """Flip a pod to Running with all containers ready (as of ``ready_mono``)."""
    entry["ready"] = True
    ts = rfc3339(cluster.wall(ready_mono))
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
    entry["obj"]["metadata"]["resourceVersion"] = cluster.next_rv()


def terminate_pod(cluster, entry, now: float, grace: int = 30):
    """Mark a pod Terminating: it stays listed until ``pod_stop_delay`` has passed."""
    if entry["gone_at"] is not None:
        return
    entry["gone_at"] = now + cluster.pod_stop_delay
    meta = entry["obj"]["metadata"]
    meta["deletionTimestamp"] = rfc3339(cluster.wall(now) + grace)
    meta["deletionGracePeriodSeconds"] = grace
    meta["resourceVersion"] = cluster.next_rv()


def reconcile(cluster):
    """Advance the simulated controllers and kubelet to 'now'."""
    now = time.monotonic()
    for pk in [pk for pk, p in cluster.pods.items() if p["owner"] not in cluster.deployments]:
        del cluster.pods[pk]
    for key in list(cluster.deployments):
        _reconcile_deployment(cluster, key, now)


def _reconcile_deployment(cluster, key, now: float):
    """ReplicaSet controller + kubelet for one deployment, then recompute its status."""
    dep = cluster.deployments[key]
    for pk, p in [(pk, p) for pk, p in cluster.pods.items() if p["owner"] == key]:
        if p["gone_at"] is not None and now >= p["gone_at"]:
            del cluster.pods[pk]
        elif p["gone_at"] is None and not p["ready"] and now >= p["ready_at"]:
            _set_ready(cluster, p, p["ready_at"])
    current_hash = template_hash(dep["obj"]["spec"]["template"])
    active = [p for p in cluster.pods.values() if p["owner"] == key and p["gone_at"] is None]
    # Template changed: replace old pods (a Recreate-style rollout, good enough here).
    for p in [p for p in active if p["hash"] != current_hash]:
        terminate_pod(cluster, p, now)
    active = [p for p in active if p["hash"] == current_hash]
    desired = dep["obj"]["spec"]["replicas"]
    if len(active) > desired:
        # Like the ReplicaSet controller: not-ready pods go first, then the newest.
        victims = sorted(active, key=lambda p: (p["ready"], -p["seq"]))[: len(active) - desired]
        for p in victims:
            terminate_pod(cluster, p, now)
    elif len(active) < desired:
        for _ in range(desired - len(active)):
            create_pod(cluster, key, now)
    status = _compute_status(cluster, key, now)
    if status != dep["status"]:
        dep["status"] = status
        dep["obj"]["metadata"]["resourceVersion"] = cluster.next_rv()


def _compute_status(cluster, key, now: float) -> dict:
    """Deployment status from its pods, with Go ``omitempty`` semantics for zeros."""
    dep = cluster.deployments[key]
    obj = dep["obj"]
    desired = obj["spec"]["replicas"]
    owned = [p for p in cluster.pods.values() if p["owner"] == key]
    active = [p for p in owned if p["gone_at"] is None]
    terminating = len(owned) - len(active)
    ready = sum(1 for p in active if p["ready"])
    current_hash = template_hash(obj["spec"]["template"])
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
    available_ok = ready >= desired - desired * 25 // 100  # maxUnavailable 25%
    rs_name = f"{key[1]}-{current_hash}"
    progressed = updated == desired and ready >= desired and len(active) == desired
    status["conditions"] = [
        _condition(cluster, dep, "Available", "True" if available_ok else "False",
                   "MinimumReplicasAvailable" if available_ok else "MinimumReplicasUnavailable",
                   "Deployment has minimum availability." if available_ok
                   else "Deployment does not have minimum availability.", now),
        _condition(cluster, dep, "Progressing", "True",
                   "NewReplicaSetAvailable" if progressed else "ReplicaSetUpdated",
                   f'ReplicaSet "{rs_name}" has successfully progressed.' if progressed
                   else f'ReplicaSet "{rs_name}" is progressing.', now),
    ]
    return status


def _condition(cluster, dep, ctype, cstatus, reason, message, now) -> dict:
    """A deployment condition whose timestamps only move when it really changes."""
    prev = dep["conditions"].get(ctype)
    ts = rfc3339(cluster.wall(now))
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
