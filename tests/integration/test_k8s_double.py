"""Proves the official ``kubernetes`` client (37.x) works unchanged against KubeApiDouble.

Why: every Kubernetes-facing test in this project trusts the double; these
tests pin down that the real client can read, patch and scale through it and
sees the errors and the pod lifecycle a real API server would produce.
"""

import json
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

try:  # works whether or not tests/ is a package
    from tests.k8s_double import KubeApiDouble
except ImportError:  # pragma: no cover - depends on pytest's rootdir/sys.path
    from testkit.k8s_double import KubeApiDouble

NS = "taiga"
DEP = "taiga-back"
START = 0.15
STOP = 0.25


def wait_until(predicate, timeout=3.0, interval=0.03):
    """Poll ``predicate`` until truthy; the double runs in real time, so tests wait, not sleep blindly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached within %.1fs" % timeout)


@pytest.fixture
def kube(tmp_path):
    """A running double with one ready deployment and the kubeconfig path for it."""
    double = KubeApiDouble(pod_start_delay=START, pod_stop_delay=STOP).start()
    double.add_deployment(NS, DEP, replicas=1)
    double.add_deployment(NS, "taiga-events", replicas=1,
                          labels={"app.kubernetes.io/name": "taiga", "app.kubernetes.io/component": "events"})
    cfg = double.write_kubeconfig(tmp_path / "kubeconfig")
    yield double, cfg
    double.stop()


@pytest.fixture
def apis(kube):
    """Apps/Core API objects on a fresh ApiClient built from the double's kubeconfig."""
    double, cfg = kube
    api_client = config.new_client_from_config(config_file=cfg)
    yield double, client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    api_client.close()


def test_load_kube_config_sets_host_token_and_namespace(kube):
    """load_kube_config (global default) must accept the JSON kubeconfig the double writes."""
    double, cfg = kube
    saved = client.Configuration.get_default_copy()
    try:
        config.load_kube_config(config_file=cfg)
        conf = client.Configuration.get_default_copy()
        assert conf.host == double.url
        assert conf.api_key["BearerToken"] == "Bearer dummy-token"  # 37.x key; older clients used "authorization"
        _, active = config.list_kube_config_contexts(config_file=cfg)
        assert active["context"]["namespace"] == "taiga"
        dep = client.AppsV1Api().read_namespaced_deployment(DEP, NS)
        assert dep.metadata.name == DEP
    finally:
        client.Configuration.set_default(saved)


def test_read_deployment(apis):
    """A seeded deployment reads back with realistic metadata, selector and status."""
    double, apps, _ = apis
    dep = apps.read_namespaced_deployment(DEP, NS)
    assert dep.kind == "Deployment" and dep.api_version == "apps/v1"
    assert dep.metadata.namespace == NS and dep.metadata.uid
    assert int(dep.metadata.resource_version) > 0
    assert dep.metadata.generation == 1 and dep.status.observed_generation == 1
    assert dep.metadata.creation_timestamp is not None
    assert dep.spec.replicas == 1
    assert dep.spec.selector.match_labels == {"app": DEP}
    assert dep.spec.template.metadata.labels == {"app": DEP}
    assert dep.status.replicas == dep.status.ready_replicas == dep.status.available_replicas == 1
    assert dep.status.updated_replicas == 1
    assert {c.type: c.status for c in dep.status.conditions} == {"Available": "True", "Progressing": "True"}
    assert double.replicas(NS, DEP) == 1


def test_read_scale_has_selector_string(apis):
    """The Scale subresource exposes status.selector as a label-selector string."""
    _, apps, _ = apis
    scale = apps.read_namespaced_deployment_scale(DEP, NS)
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 1
    assert scale.status.replicas == 1
    assert scale.status.selector == f"app={DEP}"
    events = apps.read_namespaced_deployment_scale("taiga-events", NS)
    assert events.status.selector == "app.kubernetes.io/component=events,app.kubernetes.io/name=taiga"


def test_scale_down_pods_terminate_then_vanish(apis):
    """Scaling to 0 leaves the pod listed as Terminating for pod_stop_delay, then it is gone."""
    double, apps, core = apis
    before = core.list_namespaced_pod(NS, label_selector=f"app={DEP}").items
    assert len(before) == 1 and before[0].metadata.deletion_timestamp is None
    assert before[0].metadata.name.startswith(f"{DEP}-")

    scale = apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 0}})
    assert scale.spec.replicas is None  # autoscaling/v1 omits replicas: 0 (omitempty)
    assert double.request_log[-1]["content_type"] == "application/strategic-merge-patch+json"

    pods = core.list_namespaced_pod(NS, label_selector=f"app={DEP}").items
    assert len(pods) == 1 and pods[0].metadata.deletion_timestamp is not None
    dep = apps.read_namespaced_deployment(DEP, NS)
    assert dep.spec.replicas == 0
    assert dep.status.replicas is None and dep.status.available_replicas is None  # omitted when 0
    assert dep.status.terminating_replicas == 1
    assert double.pods(NS, DEP, include_terminating=False) == []

    wait_until(lambda: not core.list_namespaced_pod(NS, label_selector=f"app={DEP}").items)
    assert double.pods(NS, DEP) == []


def test_scale_up_pods_become_ready(apis):
    """Scaling up creates Pending pods that turn Running+Ready after pod_start_delay."""
    double, apps, core = apis
    apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 3}})
    pods = core.list_namespaced_pod(NS, label_selector=f"app={DEP}").items
    assert len(pods) == 3
    assert sorted(p.status.phase for p in pods) == ["Pending", "Pending", "Running"]
    assert apps.read_namespaced_deployment(DEP, NS).status.available_replicas == 1

    wait_until(lambda: apps.read_namespaced_deployment(DEP, NS).status.available_replicas == 3)
    pods = core.list_namespaced_pod(NS, label_selector=f"app={DEP},pod-template-hash").items
    assert all(p.status.phase == "Running" for p in pods)
    assert all(c.status == "True" for p in pods for c in p.status.conditions if c.type == "Ready")
    assert all(p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods)
    assert apps.read_namespaced_deployment_scale(DEP, NS).status.replicas == 3


def test_replace_scale_put(apis):
    """replace_namespaced_deployment_scale (PUT) changes spec.replicas too."""
    double, apps, _ = apis
    scale = apps.read_namespaced_deployment_scale(DEP, NS)
    scale.spec.replicas = 2
    apps.replace_namespaced_deployment_scale(DEP, NS, scale)
    assert double.replicas(NS, DEP) == 2
    assert double.requests[-1] == ("PUT", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEP}/scale")


def test_annotations_add_and_remove(apis):
    """Dict patches go out as strategic merge patch; None removes a key; JSON patch lists work too."""
    double, apps, _ = apis
    rv0 = apps.read_namespaced_deployment(DEP, NS).metadata.resource_version
    dep = apps.patch_namespaced_deployment(
        DEP, NS, {"metadata": {"annotations": {"taiga-backup/replicas": "1"}}})
    assert double.request_log[-1]["content_type"] == "application/strategic-merge-patch+json"
    assert dep.metadata.annotations["taiga-backup/replicas"] == "1"
    assert int(dep.metadata.resource_version) > int(rv0)
    assert dep.metadata.generation == 1  # metadata-only change: no new generation
    assert double.annotations(NS, DEP)["taiga-backup/replicas"] == "1"

    apps.patch_namespaced_deployment(DEP, NS, {"metadata": {"annotations": {"taiga-backup/replicas": None}}})
    assert "taiga-backup/replicas" not in double.annotations(NS, DEP)

    # Explicit JSON merge patch.
    apps.patch_namespaced_deployment(DEP, NS, {"metadata": {"annotations": {"a": "b"}}},
                                     _content_type="application/merge-patch+json")
    assert double.request_log[-1]["content_type"] == "application/merge-patch+json"
    apps.patch_namespaced_deployment(DEP, NS, {"metadata": {"annotations": {"a": None}}},
                                     _content_type="application/merge-patch+json")
    assert "a" not in double.annotations(NS, DEP)

    # A list body is sent as RFC 6902 JSON patch ("/" in keys escaped as ~1).
    apps.patch_namespaced_deployment(DEP, NS, [
        {"op": "add", "path": "/metadata/annotations/taiga-backup~1replicas", "value": "1"},
        {"op": "replace", "path": "/spec/replicas", "value": 0},
    ])
    assert double.request_log[-1]["content_type"] == "application/json-patch+json"
    assert double.annotations(NS, DEP)["taiga-backup/replicas"] == "1"
    assert double.replicas(NS, DEP) == 0
    apps.patch_namespaced_deployment(DEP, NS, [
        {"op": "test", "path": "/metadata/annotations/taiga-backup~1replicas", "value": "1"},
        {"op": "remove", "path": "/metadata/annotations/taiga-backup~1replicas"},
    ])
    assert "taiga-backup/replicas" not in double.annotations(NS, DEP)
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment(DEP, NS, [{"op": "test", "path": "/spec/replicas", "value": 5}])
    assert exc.value.status == 422


def test_set_annotations_preseeds_state(apis):
    """set_annotations is visible to the client."""
    double, apps, _ = apis
    double.set_annotations(NS, DEP, {"taiga-backup/replicas": "2"})
    assert apps.read_namespaced_deployment(DEP, NS).metadata.annotations == {"taiga-backup/replicas": "2"}


def test_injected_conflict_raises_api_exception(apis):
    """fail() makes the next matching request return 409 with a Status body (text in 37.x)."""
    double, apps, _ = apis
    double.fail("PATCH", rf"/deployments/{DEP}/scale$", 409)
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 0}})
    assert exc.value.status == 409
    assert isinstance(exc.value.body, str)
    status = json.loads(exc.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Conflict" and status["code"] == 409
    assert double.replicas(NS, DEP) == 1
    apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 0}})  # times=1: next one passes
    assert double.replicas(NS, DEP) == 0


def test_injected_forbidden_message(apis):
    """A 403 names the verb, resource, API group and namespace like RBAC denials do."""
    double, apps, core = apis
    double.fail("*", r"/pods$", 403, times=None)
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod(NS)
    assert exc.value.status == 403
    msg = json.loads(exc.value.body)["message"]
    assert 'cannot list resource "pods" in API group "" in the namespace "taiga"' in msg
    double.fail("PATCH", r"/scale$", 403)
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 0}})
    msg = json.loads(exc.value.body)["message"]
    assert msg.startswith(f'deployments.apps "{DEP}" is forbidden')
    assert 'cannot patch resource "deployments/scale" in API group "apps"' in msg


def test_stale_resource_version_conflicts(apis):
    """A patch carrying an outdated resourceVersion is rejected with 409 (optimistic locking)."""
    double, apps, _ = apis
    rv = apps.read_namespaced_deployment(DEP, NS).metadata.resource_version
    double.set_annotations(NS, DEP, {"x": "y"})  # someone else writes
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment(DEP, NS, {"metadata": {"resourceVersion": rv,
                                                                "annotations": {"a": "b"}}})
    assert exc.value.status == 409


def test_unknown_deployment_is_404(apis):
    """Unknown names give a NotFound Status."""
    _, apps, _ = apis
    with pytest.raises(ApiException) as exc:
        apps.read_namespaced_deployment("nope", NS)
    assert exc.value.status == 404
    body = json.loads(exc.value.body)
    assert body["reason"] == "NotFound" and body["message"] == 'deployments.apps "nope" not found'
    with pytest.raises(ApiException) as exc:
        apps.patch_namespaced_deployment_scale("nope", NS, {"spec": {"replicas": 0}})
    assert exc.value.status == 404


def test_history_records_replica_changes(apis):
    """history() keeps (monotonic time, replicas) for the initial value and each change."""
    double, apps, _ = apis
    apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 0}})
    apps.patch_namespaced_deployment(DEP, NS, {"metadata": {"annotations": {"noop": "x"}}})
    apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 1}})
    hist = double.history(NS, DEP)
    assert [r for _, r in hist] == [1, 0, 1]
    times = [t for t, _ in hist]
    assert times == sorted(times)


def test_list_deployments_and_label_selectors(apis):
    """List endpoints honour equality and set-based label selectors."""
    _, apps, core = apis
    names = [d.metadata.name for d in apps.list_namespaced_deployment(NS).items]
    assert names == [DEP, "taiga-events"]
    sel = "app.kubernetes.io/name=taiga,app.kubernetes.io/component=events"
    assert [d.metadata.name for d in apps.list_namespaced_deployment(NS, label_selector=sel).items] == ["taiga-events"]
    pods = core.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component in (events,front)").items
    assert len(pods) == 1 and pods[0].metadata.name.startswith("taiga-events-")
    assert core.list_namespaced_pod("other", label_selector=f"app={DEP}").items == []
    running = core.list_namespaced_pod(NS, field_selector="status.phase=Running").items
    assert len(running) == 2


def test_delete_pod_is_replaced(apis):
    """Deleting a pod marks it Terminating and the 'ReplicaSet' creates a replacement."""
    double, apps, core = apis
    (pod,) = double.pods(NS, DEP)
    core.delete_namespaced_pod(pod["metadata"]["name"], NS)
    pods = double.pods(NS, DEP)
    assert len(pods) == 2
    assert len(double.pods(NS, DEP, include_terminating=False)) == 1
    wait_until(lambda: apps.read_namespaced_deployment(DEP, NS).status.available_replicas == 1
               and len(double.pods(NS, DEP)) == 1)


def test_watch_pods_streams_events(apis):
    """kubernetes.watch can follow pods being added through the chunked watch stream."""
    _, apps, core = apis
    apps.patch_namespaced_deployment_scale(DEP, NS, {"spec": {"replicas": 2}})
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_pod, NS, label_selector=f"app={DEP}", timeout_seconds=2):
        seen.append((event["type"], event["object"].status.phase))
        ready = [e for e in seen if e[1] == "Running"]
        if len(ready) >= 2:
            w.stop()
    assert [t for t, _ in seen[:2]] == ["ADDED", "ADDED"]
    assert ("MODIFIED", "Running") in seen


def test_version_unknown_paths_auth_and_requests(apis):
    """/version answers; unknown paths 404; wrong methods 405; no token 401; requests are logged."""
    double, apps, _ = apis
    info = client.VersionApi(apps.api_client).get_code()
    assert info.major == "1" and info.git_version.startswith("v1.")

    def raw(method, path, headers=None):
        req = urllib.request.Request(double.url + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    auth = {"Authorization": "Bearer dummy-token"}
    code, body = raw("GET", "/apis/nothing/v1/foo", auth)
    assert code == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    code, body = raw("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEP}/scale", auth)
    assert code == 405 and body["reason"] == "MethodNotAllowed"
    code, body = raw("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEP}")
    assert code == 401
    assert ("GET", "/version") in double.requests
    assert ("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/{DEP}/scale") in double.requests


def test_reset_clears_everything(kube):
    """reset() drops deployments, pods, faults and the request log."""
    double, _ = kube
    double.fail("*", ".*", 500, times=None)
    double.reset()
    assert double.requests == [] and double.pods(NS, DEP) == []
    with pytest.raises(KeyError):
        double.replicas(NS, DEP)
