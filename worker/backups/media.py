"""Putting a files snapshot back so that $BACKUP_FILES_DIR holds exactly the snapshot's files.

Why staged: `restic restore` first writes into a fresh directory *inside* the media volume (same
filesystem, so moving is a rename and costs no space or time); the live contents are swapped
only once that restore has succeeded, and a swap that fails midway is rolled back. The old files
are never deleted before the new ones are in place, and the volume's mount point itself stays.
Entries are moved by name with os.rename, so odd names (spaces, quotes, unicode, a leading dash)
never meet a shell.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import uuid
from dataclasses import dataclass

from worker.adapters.restic import Repository
from worker.errors import OperatorError

log = logging.getLogger(__name__)

PREFIX = ".taiga-backup-restore-"
# Staging areas (and a crashed restore's leftovers) must never end up in a backup.
BACKUP_EXCLUDES = (PREFIX + "*",)


class FilesRestoreError(OperatorError):
    """The media directory cannot be restored; the message says what to look at."""


def check_target(files_dir: str) -> None:
    """BACKUP_FILES_DIR must be a writable directory, and never the root of the file system."""
    if os.path.realpath(files_dir) == "/":
        raise FilesRestoreError("BACKUP_FILES_DIR is /: refusing to replace the root directory")
    if not os.path.isdir(files_dir):
        raise FilesRestoreError(f"BACKUP_FILES_DIR {files_dir} is not a directory")
    if not os.access(files_dir, os.W_OK | os.X_OK):
        raise FilesRestoreError(f"BACKUP_FILES_DIR {files_dir} is not writable by uid {os.geteuid()}")


def owner(chown: str | None) -> tuple[int, int] | None:
    """RESTORE_CHOWN as (uid, gid); None when it is off or we are not root (chown would fail)."""
    if not chown or os.geteuid() != 0:
        return None
    uid, gid = chown.split(":")
    return int(uid), int(gid)


@dataclass
class Staged:
    """A snapshot restored next to the live files, ready to be swapped in."""

    root: str
    staging: str
    source: str
    count: int = 0
    bytes: int = 0

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def remove_leftovers(files_dir: str) -> list[str]:
    """Staging areas of a restore that was killed; the repository still has their contents."""
    gone = []
    for name in os.listdir(files_dir):
        if name.startswith(PREFIX):
            shutil.rmtree(os.path.join(files_dir, name), ignore_errors=True)
            gone.append(name)
    return gone


def content_root(staging: str, paths: list[str]) -> str:
    """restic keeps the tree of a `restic backup .` snapshot at its root (the seed's layout) but
    a snapshot of an absolute path (`restic backup /media`) under that whole path."""
    parts = [p for p in (paths[0].split("/") if len(paths) == 1 and paths[0].startswith("/") else []) if p]
    here = staging
    for part in parts:
        if os.listdir(here) != [part] or not os.path.isdir(os.path.join(here, part)):
            return staging
        here = os.path.join(here, part)
    return here


def _walk(source: str, ids: tuple[int, int] | None) -> tuple[int, int]:
    """Counts regular files and their bytes; sets the owner of everything when asked."""
    count = size = 0
    for dirpath, dirnames, filenames in os.walk(source):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                count += 1
                size += st.st_size
            if ids:
                os.lchown(path, *ids)
    return count, size


def stage(repo: Repository, snapshot: dict, files_dir: str, ids: tuple[int, int] | None, *,
          timeout: float | None = None) -> Staged:
    """Restores the snapshot into a staging directory inside files_dir. The live files are not
    touched; on any error the staging directory is removed again."""
    remove_leftovers(files_dir)
    staging = os.path.join(files_dir, PREFIX + uuid.uuid4().hex[:12])
    os.mkdir(staging, 0o700)
    try:
        repo.restore(snapshot["id"], staging, timeout=timeout)
        staged = Staged(files_dir, staging, content_root(staging, snapshot.get("paths") or []))
        staged.count, staged.bytes = _walk(staged.source, ids)
        return staged
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap(staged: Staged, ids: tuple[int, int] | None) -> list[str]:
    """Moves the live entries aside, the staged ones in, then deletes the old ones. Returns
    warnings (cleanup that failed after a successful swap)."""
    root, old = staged.root, staged.staging + "-old"
    os.mkdir(old, 0o700)
    ours = {os.path.basename(staged.staging), os.path.basename(old)}
    moved_out, moved_in = [], []
    try:
        for name in os.listdir(root):
            if name not in ours:
                os.rename(os.path.join(root, name), os.path.join(old, name))
                moved_out.append(name)
        for name in os.listdir(staged.source):
            os.rename(os.path.join(staged.source, name), os.path.join(root, name))
            moved_in.append(name)
    except BaseException as exc:
        _roll_back(root, staged.source, old, moved_in, moved_out, exc)
        raise
    if ids:
        os.lchown(root, *ids)
    warnings = []
    for path in (old, staged.staging):
        try:
            shutil.rmtree(path)
        except OSError as exc:
            warnings.append(f"could not remove {path}: {exc.strerror}")
    return warnings


def _roll_back(root, source, old, moved_in, moved_out, cause) -> None:
    try:
        for name in reversed(moved_in):
            os.rename(os.path.join(root, name), os.path.join(source, name))
        for name in reversed(moved_out):
            os.rename(os.path.join(old, name), os.path.join(root, name))
        os.rmdir(old)
    except OSError as exc:
        raise FilesRestoreError(f"swapping in the restored files failed ({cause}) and so did putting the previous "
                                f"files back ({exc}): they are in {old}, the restored ones in {source}") from None
    log.error("files: swap failed (%s); the previous files are back in place", cause)
