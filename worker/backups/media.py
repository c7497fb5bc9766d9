"""Putting a files snapshot back so that $BACKUP_FILES_DIR holds exactly the snapshot's files.

Why staged: `restic restore` first writes into a fresh directory *inside* the media volume (same
filesystem, so moving is a rename and costs no space or time), with the app still up; the live
entries are moved into a kept folder and the staged ones in only once that restore has
succeeded (worker.backups.switch journals those moves). The old files are never deleted before
the new ones are in place, and the volume's mount point itself stays. Entries are moved by name
with os.rename, so odd names (spaces, quotes, unicode, a leading dash) never meet a shell.

Names of our own inside the media root: the staging area `.taiga-backup-restore-<id>` (excluded
from backups, anchored to the root, and removed when its job is dead), the kept previous state
`.taiga-backup-before-<id>` (backed up like any folder, removed only when it expires or at the
next restore), the switch journal, the marker file that says "this directory is Taiga's
media volume" when it is not a mount point, and `.taiga-backup-state` (the worker's own state
that must outlive a pod and a Redis restart: the signed requests already run, see
worker.runtime.nonces). The state is excluded from backups like the journal, never moved by the
switch and never replaced by a restore: a restore must not bring back, or wipe, the record of
which requests have run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass

from worker.adapters.restic import Repository
from worker.backups import catalog
from worker.errors import OperatorError

log = logging.getLogger(__name__)

STAGING_PREFIX = ".taiga-backup-restore-"
KEPT_PREFIX = ".taiga-backup-before-"
JOURNAL = ".taiga-backup-switch.json"
MARKER = ".taiga-backup-media"
STATE = ".taiga-backup-state"
OURS = (STAGING_PREFIX, KEPT_PREFIX, JOURNAL, MARKER, STATE)
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/proc", "/root",
               "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/usr/local")
_GLOB = re.compile(r"([*?\\[])")


def backup_excludes(files_dir: str) -> tuple[str, ...]:
    """Staging areas (and a crashed restore's leftovers) must never end up in a backup: the
    exclude is anchored to the media root - restic 0.14 matches a pattern that
    starts with `/` against the absolute path, also for `restic backup .` (checked against a real
    restic), so a user's upload named like our staging area deeper down is still backed up. The
    journal and the worker's state are excluded the same way."""
    root = _GLOB.sub(r"\\\1", os.path.realpath(files_dir).rstrip("/"))
    # the journal with its temporary name, and the worker's state (signed requests already run)
    return (f"{root}/{STAGING_PREFIX}*", f"{root}/{JOURNAL}*", f"{root}/{STATE}")


def is_ours(name: str) -> bool:
    return name.startswith(OURS)


class FilesRestoreError(OperatorError):
    """The media directory cannot be restored; the message says what to look at."""


def check_target(files_dir: str) -> None:
    """BACKUP_FILES_DIR must be a writable directory that is Taiga's media: never a system
    directory, and either a mount point (the media volume) or a directory carrying our marker
    file (`touch <dir>/.taiga-backup-media`). A wrong setting must not replace someone's home."""
    real = os.path.realpath(files_dir)
    if real in SYSTEM_DIRS:
        raise FilesRestoreError(f"BACKUP_FILES_DIR is {real}, a system directory: refusing to replace its contents")
    if not os.path.isdir(files_dir):
        raise FilesRestoreError(f"BACKUP_FILES_DIR {files_dir} is not a directory")
    if not (os.path.ismount(real) or os.path.isfile(os.path.join(real, MARKER))):
        raise FilesRestoreError(f"BACKUP_FILES_DIR {files_dir} is neither a mount point nor marked as Taiga's media "
                                f"(create the empty file {os.path.join(files_dir, MARKER)} if it is): refusing to "
                                "replace its contents")
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


def content_root(staging: str, snapshot: dict) -> str:
    """restic keeps the tree of a `restic backup .` snapshot at its root (the seed's layout) but
    a snapshot of an absolute path (`restic backup /media`) under that whole path, and records
    the same absolute `paths` for both. Ours are always `backup .` (tagged taiga-backup): never
    stripped, or a media root holding only a folder named like its own path (`/media/media`)
    would lose a level. An untagged one is stripped only where the restored tree is exactly
    that path, folder by folder."""
    paths = snapshot.get("paths") or []
    if catalog.PRODUCT_TAG in (snapshot.get("tags") or []):
        return staging
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
          timeout: float | None = None, name: str | None = None) -> Staged:
    """Restores the snapshot into a staging directory inside files_dir (`name`, or a fresh one).
    The live files are not touched; on any error the staging directory is removed again."""
    staging = os.path.join(files_dir, name or STAGING_PREFIX + uuid.uuid4().hex[:12])
    os.mkdir(staging, 0o700)
    try:
        repo.restore(snapshot["id"], staging, timeout=timeout)
        staged = Staged(files_dir, staging, content_root(staging, snapshot))
        staged.count, staged.bytes = _walk(staged.source, ids)
        return staged
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def move_entries(src: str, dst: str) -> list[str]:
    """Moves every entry of src that is not one of ours into dst, by rename (same volume: no
    data is copied). Idempotent: a crash halfway and a second call finish the move. An entry
    already at the destination is never overwritten (os.rename would replace a file silently)."""
    moved = []
    for name in sorted(os.listdir(src)):
        if is_ours(name):
            continue
        target = os.path.join(dst, name)
        if os.path.lexists(target):
            raise FilesRestoreError(f"cannot move {name!r} into {dst}: an entry of that name is already there")
        os.rename(os.path.join(src, name), target)
        moved.append(name)
    return moved


# What staging leaves free on the media volume: the app stays up while the restore stages, so
# its uploads need room, and so do the switch's journal and its reserve (switch_journal). A
# fixed part for small volumes and a share for big ones; a volume that would hold the staged
# files only to its last bytes is refused before anything is written.
STAGING_MARGIN_BYTES = 8 * 1024 * 1024
STAGING_MARGIN_SHARE = 0.02


def staging_margin(staged_bytes: int) -> int:
    return STAGING_MARGIN_BYTES + int(staged_bytes * STAGING_MARGIN_SHARE)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def recorded_size(snapshot: dict) -> dict | None:
    """Files, directories and bytes as the backup recorded them: restic 0.17+ writes a summary
    into every snapshot (kept by `restic tag`), listed with it for free. None for a snapshot of
    an older restic (the old procedure's, restic 0.14's)."""
    summary = snapshot.get("summary") or {}
    if "total_files_processed" not in summary or "total_bytes_processed" not in summary:
        return None
    dirs = sum(int(summary.get(k) or 0) for k in ("dirs_new", "dirs_changed", "dirs_unmodified"))
    return {"files": int(summary["total_files_processed"]), "dirs": dirs,
            "bytes": int(summary["total_bytes_processed"])}


def snapshot_size(repo: Repository, snapshot: dict) -> dict:
    """Files, directories and bytes of a snapshot (nothing restored): what its backup recorded,
    else (a snapshot of restic < 0.17) as `restic ls` lists it - a whole tree walk, seconds on
    a big tree, which a restore's plan and a drill otherwise pay for every snapshot."""
    recorded = recorded_size(snapshot)
    if recorded is not None:
        return recorded
    nodes = repo.ls(snapshot["id"])
    files = [n for n in nodes if n.get("type") == "file"]
    return {"files": len(files), "dirs": len([n for n in nodes if n.get("type") == "dir"]),
            "bytes": sum(int(n.get("size") or 0) for n in files)}


def tree_size(root: str) -> dict:
    """Regular files and bytes below root, our own entries at the top left out."""
    count = size = 0
    for name in os.listdir(root):
        if is_ours(name):
            continue
        path = os.path.join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            c, b = _walk(path, None)
            count, size = count + c, size + b
        elif os.path.isfile(path) and not os.path.islink(path):
            count, size = count + 1, size + os.lstat(path).st_size
    return {"files": count, "bytes": size}
