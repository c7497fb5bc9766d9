"""The README's first command stays true: the demo's real backup -> change -> restore round trip
(its own throwaway servers and worker) ends with the same bytes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testkit.site import ROOT


@pytest.mark.slow
def test_the_demo_round_trip_gives_back_the_same_bytes(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=600, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "database identical to the backup: True" in done.stdout
    assert "media identical to the backup:    True" in done.stdout
    assert "round trip OK" in done.stdout
