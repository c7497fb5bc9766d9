"""Helpers of the packaging tests (importable by name, unlike conftest.py): where the chart and the
image are, podman with this project's storage, and skip-or-fail for missing tools.

Both are made by the same scripts CI runs (scripts/image.sh, scripts/helm.sh), so a test run after
`.ci/run` reuses the image and the helm cache instead of building again. Where a tool cannot run on
a machine the tests that need it skip and say why — unless TAIGA_BACKUP_REQUIRE_PACKAGING=1 (set by
.ci/run), where a missing tool is a failure: CI must really exercise the image and the chart.
"""

from __future__ import annotations

import os
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
