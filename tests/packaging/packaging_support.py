"""Helpers of the packaging tests (importable by name, unlike conftest.py): where the chart and the
image are, podman with this project's storage, and skip-or-fail for missing tools.

Both are made by the same scripts CI runs (scripts/image.sh, scripts/helm.sh), so a test run after
`.ci/run` reuses the image and the helm cache instead of building again. Where a tool cannot run on
a machine the tests that need it skip and say why — unless TAIGA_BACKUP_REQUIRE_PACKAGING=1 (set by
.ci/run), where a missing tool is a failure: CI must really exercise the image and the chart.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from functools import lru_cache
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
