"""Quiesce and resume Taiga's deployments through the official Kubernetes client.

The original replica count is written onto each Deployment (an annotation) *before* it is scaled
down, so whoever comes next - the same job's `finally`, a new worker after a SIGKILL, the
periodic reconciler - knows what to scale back to. Scaling goes through the scale subresource.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from worker import instance
from worker.errors import OperatorError

log = logging.getLogger(__name__)

ANNOTATION = "taiga-backup/original-replicas"
ANNOTATION_JOB = "taiga-backup/quiesced-by"
ANNOTATION_HOLDER = "taiga-backup/quiesced-on"  # host/process id of the worker (worker.instance)
REQUEST_TIMEOUT = (5, 30)
RETRY_STATUSES = {409, 429, 500, 502, 503, 504}
POLL = 0.25

# Every API call this module makes, as RBAC rules: the Helm Role must grant exactly these.
REQUIRED_RBAC = [
    {"apiGroup": "apps", "resource": "deployments", "verbs": ["get", "patch"]},
    {"apiGroup": "apps", "resource": "deployments/scale", "verbs": ["get", "patch"]},
    {"apiGroup": "", "resource": "pods", "verbs": ["list"]},
]


class KubeError(OperatorError):
    """A Kubernetes problem phrased for an operator."""


class Conflict(KubeError):
    """The object changed between our read and our write (its resourceVersion moved on)."""


def _verb_resource(call: str) -> tuple[str, str]:
    return {
        "read_namespaced_deployment": ("get", "deployments"),
        "patch_namespaced_deployment": ("patch", "deployments"),
        "read_namespaced_deployment_scale": ("get", "deployments/scale"),
        "patch_namespaced_deployment_scale": ("patch", "deployments/scale"),
        "list_namespaced_pod": ("list", "pods"),
    }.get(call, (call, "?"))


class Kube:
    """The handful of calls quiesce/resume need, with retries and operator-readable errors."""

    def __init__(self, namespace: str, api_client=None):
        from kubernetes import client

        self.namespace = namespace
        self._client = api_client or _load_client()
        self.apps = client.AppsV1Api(self._client)
        self.core = client.CoreV1Api(self._client)

    def _call(self, call: str, name: str | None, *args, attempts: int = 5, conflict: bool = False, **kwargs):
        """`conflict`: a 409 is the answer to a resourceVersion precondition (raised as Conflict,
        never retried with the same, outdated version)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api = self.core if call == "list_namespaced_pod" else self.apps
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                return getattr(api, call)(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
            except ApiException as exc:
                verb, resource = _verb_resource(call)
                target = f"{resource}/{name}" if name else resource
                if conflict and exc.status == 409:
                    raise Conflict(f"{target} changed since it was read") from None
                if exc.status in RETRY_STATUSES and attempt < attempts:
                    log.warning("kubernetes %s %s: HTTP %s, retrying", verb, target, exc.status)
                    time.sleep(delay)
                    delay = min(delay * 2, 3)
                    continue
                if exc.status == 403:
                    raise KubeError(
                        f"forbidden: the service account may not {verb} {resource} "
                        f"{name or ''} in namespace {self.namespace} (RBAC needs verb '{verb}' on "
                        f"'{resource}')".replace("  ", " ")) from None
                if exc.status == 404:
                    raise KubeError(f"{target} not found in namespace {self.namespace}") from None
                raise KubeError(f"kubernetes {verb} {target} failed: HTTP {exc.status} {exc.reason}") from None
            except (HTTPError, OSError) as exc:
                if attempt < attempts:
                    time.sleep(delay)
                    delay = min(delay * 2, 3)
                    continue
                raise KubeError(f"Kubernetes API unreachable: {type(exc).__name__}: {exc}") from None

    # -- reading ----------------------------------------------------------------------------
    def recorded(self, names: Iterable[str]) -> dict[str, int]:
        """Deployments that carry our annotation, with the replica count recorded there."""
        found = {}
        for name in names:
            dep = self._call("read_namespaced_deployment", name, name, self.namespace)
            value = (dep.metadata.annotations or {}).get(ANNOTATION)
            if value is not None:
                try:
                    found[name] = int(value)
                except ValueError:
                    log.error("deployment %s has an unreadable %s annotation %r", name, ANNOTATION, value)
        return found

    def holders(self, names: Iterable[str]) -> dict[str, dict]:
        """Who quiesced each annotated deployment: {name: {"job": task id, "holder": host/id}}."""
        found = {}
        for name in names:
            dep = self._call("read_namespaced_deployment", name, name, self.namespace)
            notes = dep.metadata.annotations or {}
            if ANNOTATION in notes:
                found[name] = {"job": notes.get(ANNOTATION_JOB), "holder": notes.get(ANNOTATION_HOLDER)}
        return found

    def replicas(self, name: str) -> int:
        scale = self._call("read_namespaced_deployment_scale", name, name, self.namespace)
        return int(scale.spec.replicas or 0)

    def preflight(self, names: Iterable[str]) -> None:
        """Proves the API answers and every deployment exists before any data is touched."""
        for name in names:
            self._call("read_namespaced_deployment_scale", name, name, self.namespace)

    # -- quiesce ----------------------------------------------------------------------------
    def quiesce(self, names: list[str], timeout: float, job_id: str = "",
                on_progress: Callable[[str], None] | None = None) -> dict[str, int]:
        """Records, scales to 0 and waits until every pod is gone. Returns the recorded counts.
        Every deployment is recorded and scaled at once (four API round trips each): the app goes
        down in one step, not one deployment after another."""
        def down(name: str) -> tuple[int, str]:
            scale = self._call("read_namespaced_deployment_scale", name, name, self.namespace)
            current = int(scale.spec.replicas or 0)
            previous = self.recorded([name]).get(name)
            # an earlier job that crashed after scaling down left its annotation: its count is the
            # truth and stays, but the annotation names this job and process from now on - it is
            # this job that holds the app down, and a reconciler judges by who is named there
            self._call("patch_namespaced_deployment", name, name, self.namespace,
                       {"metadata": {"annotations": {ANNOTATION: str(current if previous is None else previous),
                                                     ANNOTATION_JOB: job_id or "-",
                                                     ANNOTATION_HOLDER: instance.holder()}}})
            if current != 0:
                self._call("patch_namespaced_deployment_scale", name, name, self.namespace, {"spec": {"replicas": 0}})
            count = current if previous is None else previous
            log.info("quiesce: %s scaled to 0 (recorded %d)", name, count)
            return count, scale.status.selector or f"app={name}"

        done, errors = _at_once(names, down)
        if errors:
            raise KubeError(errors[0])
        recorded = {name: count for name, (count, _) in done.items()}
        selectors = {name: selector for name, (_, selector) in done.items()}
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                pods = self._call("list_namespaced_pod", None, self.namespace, label_selector=selectors[name])
                if not pods.items:
                    break
                if time.monotonic() > deadline:
                    raise KubeError(f"{len(pods.items)} pod(s) of {name} still running after {timeout:.0f}s")
                if on_progress:
                    on_progress(f"waiting for {len(pods.items)} pod(s) of {name} to stop")
                time.sleep(POLL)
        return recorded

    # -- resume -----------------------------------------------------------------------------
    def for_job(self, job_id: str) -> "Kube":
        """This client, resuming only the deployments whose annotation names `job_id`: a job
        brings back what it holds down itself, never what another job quiesced since."""
        view = Kube.__new__(Kube)
        view.__dict__.update(self.__dict__, _only_job=job_id)
        return view

    def resume(self, names: list[str], timeout: float,
               on_progress: Callable[[str], None] | None = None,
               expect: dict[str, str | None] | None = None) -> dict[str, int]:
        """Scales every annotated deployment back to its recorded count, removes the annotation
        (only after the scale-up, so a crash in between is repaired by the next resume) and waits
        until the pods are available. Every deployment at once, each tried even if another
        fails. `expect` (or for_job): only a deployment whose annotation still names that job is
        touched, checked in the same read the scale-up is conditioned on (resourceVersion): a job
        that quiesced it in between keeps it down."""
        only = getattr(self, "_only_job", None)
        if expect is None and only is not None:
            expect = {name: only for name in names}

        def up(name: str) -> int | None:
            for _ in range(10):
                done = self._up_if(name, expect)
                if done is not Conflict:
                    return done
            raise KubeError(f"deployments/{name} kept changing while it was resumed")

        done, errors = _at_once(names, up)
        restored = {name: target for name, target in done.items() if target is not None}
        deadline = time.monotonic() + timeout
        for name, target in restored.items():
            while target > 0:
                dep = self._call("read_namespaced_deployment", name, name, self.namespace)
                available = int((dep.status and dep.status.available_replicas) or 0)
                if available >= target:
                    break
                if time.monotonic() > deadline:
                    errors.append(f"{name} has {available}/{target} available pods after {timeout:.0f}s")
                    break
                if on_progress:
                    on_progress(f"waiting for {name}: {available}/{target} available")
                time.sleep(POLL)
        if errors:
            raise KubeError("; ".join(errors))
        return restored

    def _up_if(self, name: str, expect: dict | None):
        """One try of resume's scale-up: the recorded count, None when there is nothing (of the
        expected job) to resume, Conflict when the deployment changed under us."""
        dep = self._call("read_namespaced_deployment", name, name, self.namespace)
        notes = dep.metadata.annotations or {}
        if ANNOTATION not in notes or (expect is not None and notes.get(ANNOTATION_JOB) != expect.get(name)):
            return None
        try:
            target = int(notes[ANNOTATION])
        except ValueError:
            log.error("deployment %s has an unreadable %s annotation %r", name, ANNOTATION, notes[ANNOTATION])
            return None
        try:
            scale = self._call("patch_namespaced_deployment_scale", name, name, self.namespace,
                               {"metadata": {"resourceVersion": dep.metadata.resource_version},
                                "spec": {"replicas": target}}, conflict=True)
        except Conflict:
            return Conflict
        self._unannotate(name, scale.metadata.resource_version, notes)
        log.info("resume: %s scaled back to %d", name, target)
        return target

    def _unannotate(self, name: str, version: str, notes: dict) -> None:
        """Removes our annotation after the scale-up, as long as it is still the one read
        (`notes`): the deployment may change (its status) in between, but a job that quiesced it
        again since keeps its own annotation - and its hold on the app."""
        mine = {key: notes.get(key) for key in (ANNOTATION_JOB, ANNOTATION_HOLDER)}
        for _ in range(10):
            try:
                self._call("patch_namespaced_deployment", name, name, self.namespace,
                           {"metadata": {"resourceVersion": version,
                                         "annotations": {ANNOTATION: None, ANNOTATION_JOB: None,
                                                         ANNOTATION_HOLDER: None}}}, conflict=True)
                return
            except Conflict:
                dep = self._call("read_namespaced_deployment", name, name, self.namespace)
                now = dep.metadata.annotations or {}
                if ANNOTATION not in now or {key: now.get(key) for key in mine} != mine:
                    log.info("resume: %s was quiesced again by another job meanwhile", name)
                    return
                version = dep.metadata.resource_version
        raise KubeError(f"deployments/{name} kept changing while its annotation was removed")


def _at_once(names: list[str], fn) -> tuple[dict, list[str]]:
    """fn(name) for every deployment in threads of its own (the client's connection pool is
    thread-safe): ({name: result} of those that succeeded, their KubeErrors in `names` order)."""
    if not names:
        return {}, []
    with ThreadPoolExecutor(max_workers=min(len(names), 8), thread_name_prefix="kube") as pool:
        futures = {name: pool.submit(fn, name) for name in names}
    done, errors = {}, []
    for name, future in futures.items():
        try:
            done[name] = future.result()
        except KubeError as exc:
            errors.append(str(exc))
    return done, errors


def _load_client():
    """In a pod: the service account. Elsewhere: KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        # KUBECONFIG is read here, not when the client library was imported
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    except Exception as exc:
        raise KubeError(f"cannot load Kubernetes configuration: {exc}") from None
