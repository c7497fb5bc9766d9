"""Helpers of the packaging tests (importable by name, unlike conftest.py): where the chart and the
image are, podman with this project's storage, and skip-or-fail for missing tools.

Both are made by the same scripts CI runs (scripts/image.sh, scripts/helm.sh), so a test run after
`.ci/run` reuses the image and the helm cache instead of building again. Where a tool cannot run on
a machine the tests that need it skip and say why — unless TAIGA_BACKUP_REQUIRE_PACKAGING=1 (set by
.ci/run), where a missing tool is a failure: CI must really exercise the image and the chart.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
from contextlib import contextmanager
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "taiga-backup"
IMAGE = os.environ.get("TAIGA_BACKUP_IMAGE", "localhost/taiga-backup:ci")
REQUIRED = os.environ.get("TAIGA_BACKUP_REQUIRE_PACKAGING") == "1"
NAMESPACE = "taiga"
RELEASE = "tb"
FULLNAME = f"{RELEASE}-taiga-backup"
# Oldest: the chart's kubeVersion floor (Chart.yaml); newest: the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ("1.25.0", "1.37.0")
HELM_MAJORS = ("3", "4")


def unavailable(reason: str):
    """Skip (developer machine) or fail (CI) when a packaging tool is missing."""
    if REQUIRED:
        pytest.fail(f"TAIGA_BACKUP_REQUIRE_PACKAGING=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), "env"], capture_output=True, text=True,
                         check=True).stdout
    env = dict(os.environ)
    for word in out.split()[1:]:
        key, _, value = word.partition("=")
        env[key] = value
    return env


class Podman:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} ... exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc


# -- rendering the chart with real Helm (shared by the chart tests) ---------------------------------


@lru_cache(maxsize=None)
def _render(helm: str, values_json: str, kube_version: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                           "--kube-version", kube_version, "--values", "/dev/stdin"],
                          input=values_json, capture_output=True, text=True, timeout=120)


def render(helm: str, values: dict, kube_version: str = KUBE_VERSIONS[-1]) -> list[dict]:
    proc = _render(helm, json.dumps(values), kube_version)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def refusal(helm: str, values: dict) -> str:
    proc = _render(helm, json.dumps(values), KUBE_VERSIONS[-1])
    assert proc.returncode != 0, "helm template accepted inconsistent values"
    return proc.stderr


def one(objects, kind, name=None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def worker_container(objects) -> tuple[dict, dict]:
    pod = one(objects, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


@pytest.fixture(params=HELM_MAJORS, ids=lambda m: f"helm{m}")
def helm(request, helms):
    return helms[request.param]


def mounted_files(pod: dict, container: dict) -> dict[str, dict]:
    """mountPath -> the volume mounted there (whole Secrets and ConfigMaps: their keys are files)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def secret_keys(volume: dict) -> tuple[str, set[str] | None] | None:
    """(Secret name, keys it projects or None for all) for a Secret or projected-Secret volume."""
    if "secret" in volume:
        items = volume["secret"].get("items")
        return volume["secret"]["secretName"], {i["path"] for i in items} if items else None
    return None


# -- a fake API server for helm (lookup, --dry-run) ----------------------------------------------------

_DISCOVERY = {
    "v1": {"secrets": "Secret", "configmaps": "ConfigMap", "services": "Service", "serviceaccounts": "ServiceAccount"},
    "apps/v1": {"deployments": "Deployment"},
    "rbac.authorization.k8s.io/v1": {"roles": "Role", "rolebindings": "RoleBinding"},
    "networking.k8s.io/v1": {"networkpolicies": "NetworkPolicy"},
    "monitoring.coreos.com/v1": {"servicemonitors": "ServiceMonitor", "prometheusrules": "PrometheusRule"},
}


class DiscoveryOnly(BaseHTTPRequestHandler):
    """What `helm install --dry-run=client` asks a cluster for (Helm 3 asks even then): the server
    version and API discovery, to map kinds to resources. Nothing is installed anywhere."""

    def log_message(self, *args):
        pass

    def _body(self, path: str):
        if path == "/version":
            return {"major": "1", "minor": "37", "gitVersion": "v1.37.0"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                for gv in _DISCOVERY if "/" in gv]}
        for gv, resources in _DISCOVERY.items():
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                return {"kind": "APIResourceList", "groupVersion": gv, "resources": [
                    {"name": name, "singularName": "", "kind": kind, "namespaced": True,
                     "verbs": ["create", "get", "list", "patch"]} for name, kind in resources.items()]}
        return None

    def do_GET(self):
        body = self._body(self.path.split("?")[0].rstrip("/"))
        data = json.dumps(body or {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}).encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def fake_cluster(handler: type[BaseHTTPRequestHandler], home: Path):
    """An API server of `handler` on a free port and the environment pointing helm at it (kubeconfig,
    helm's own directories under `home`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": NAMESPACE}}]}))
    try:
        yield {**os.environ, "KUBECONFIG": str(kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
               "HELM_CONFIG_HOME": str(home / "helm-config"), "HELM_DATA_HOME": str(home / "data")}
    finally:
        server.shutdown()


class KeptSecrets(DiscoveryOnly):
    """A cluster that already holds the Secrets an earlier install generated (what `lookup` reads on
    an upgrade or a reinstall), and no release records."""

    kept: dict[str, dict] = {}

    def _body(self, path: str):
        prefix = f"/api/v1/namespaces/{NAMESPACE}/secrets"
        if path == prefix:
            return {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
        if path.startswith(prefix + "/"):
            return self.kept.get(path.rsplit("/", 1)[1])
        return super()._body(path)


def kept_secret(name: str, data: dict[str, str]) -> dict:
    """A Secret as this release would have left it (Helm's ownership labels: adopted on install)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "Helm"},
                         "annotations": {"meta.helm.sh/release-name": RELEASE,
                                         "meta.helm.sh/release-namespace": NAMESPACE}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


@pytest.fixture
def cluster(tmp_path):
    """helm's environment for a KeptSecrets cluster (fill KeptSecrets.kept first)."""
    try:
        with fake_cluster(KeptSecrets, tmp_path) as env:
            yield env
    finally:
        KeptSecrets.kept = {}


def installed(helm: str, env: dict, values: dict) -> list[dict]:
    """`helm install --dry-run=server`: renders with `lookup` answered by the cluster, installs nothing."""
    proc = subprocess.run([helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=server",
                           "--disable-openapi-validation", "--values", "/dev/stdin"], input=json.dumps(values),
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = proc.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]
    return [d for d in yaml.safe_load_all(manifest) if d]
