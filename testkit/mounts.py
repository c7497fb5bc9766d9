"""Small real mounts for disk-full faults: a size-limited tmpfs whose writes fail with ENOSPC
for real, at the byte the kernel decides - no patched `open`.

Needs root (CI and these machines run the tests as root); the tests that use it skip otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

FILLER = "filler.bin"


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def tmpfs(path: Path, size_bytes: int, owner: str | None = None):
    """`path` (created if missing; its contents kept: moved onto the mount) as a tmpfs of
    `size_bytes`; unmounted again afterwards, the contents then lost with it."""
    path.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(path.name + ".aside")
    os.rename(path, aside)
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_bytes)},mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        if owner:
            shutil.chown(path, owner, owner)
        shutil.copytree(aside, path, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(aside)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path, leave_bytes: int = 0, name: str = FILLER) -> Path:
    """Writes `directory/name` until the volume is full (ENOSPC), then gives `leave_bytes` back by
    truncating it: what a user's big upload does to a volume. Returns the file."""
    path = directory / name
    chunk = b"\xa5" * 65536
    with open(path, "ab", buffering=0) as fh:
        try:
            while fh.write(chunk):  # a raw write: short at the last pages, then ENOSPC
                pass
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    if leave_bytes:
        os.truncate(path, max(0, path.stat().st_size - leave_bytes))
    return path


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
