"""The operator's part of the old procedure - `kubectl scale` down, wait, ..., scale back up, wait -
and the app's downtime as the Kubernetes API double recorded it.

Why here and not in testkit/old_procedure.py: that module is the seed's bash pipelines, shared with
the compatibility tests; scaling around them is what the bench adds so that both pipelines pay the
same waits. `downtime` is read the same way for both pipelines (bench.run, bench.restore_bench).
"""

from __future__ import annotations

import time

from testkit.k8s_double import KubeApiDouble
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE, RESTORE_ONLY_DEPLOYMENTS
from worker.adapters.kube import POLL

# what taiga-backup's restore quiesces, and so what the old restore is given to scale too
RESTORE_DEPLOYMENTS = {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}


class Operator:
    """What an operator does around the old procedure: `kubectl scale --replicas=0`, wait until the
    pods are gone, ..., `kubectl scale` back, wait until available - through the official client,
    polling like worker.adapters.kube does, so both pipelines pay the same waits."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=kubeconfig)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def scale_down(self, names: dict) -> None:
        for name in names:
            self.apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": 0}})
        for name in names:
            while self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items:
                time.sleep(POLL)

    def scale_up(self, names: dict) -> None:
        for name, count in names.items():
            self.apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": count}})
        for name, count in names.items():
            while True:
                dep = self.apps.read_namespaced_deployment(name, NAMESPACE)
                if int((dep.status and dep.status.available_replicas) or 0) >= count:
                    break
                time.sleep(POLL)


def downtime(kube: KubeApiDouble, names: dict, since: float) -> float | None:
    """From the first scale to 0 to the last return to the original count, after `since`."""
    first_down, last_up = None, None
    for name, original in names.items():
        down = None
        for t, replicas in kube.history(NAMESPACE, name):
            if t < since:
                continue
            if replicas == 0 and down is None:
                down = t
                first_down = t if first_down is None else min(first_down, t)
            elif down is not None and replicas == original:
                last_up = t if last_up is None else max(last_up, t)
                down = None
    if first_down is None or last_up is None:
        return None
    return round(last_up - first_down, 3)
