"""Restore drill: proves the latest backup restores, without touching the live app.

The dump is loaded into a scratch database (`taiga_backup_verify_<id>`, on the app's server or on
VERIFY_POSTGRES_HOST) and the files snapshot is restored into a temporary directory (in
VERIFY_DIR). Both are compared with what the backup itself holds: rows per table as counted in
the dump's COPY sections (exact, and there for the old procedure's backups too, unlike counts
taken beside a live app), and files and bytes as restic lists the snapshot. Scratch database and
directory are always removed; leftovers of an interrupted drill are removed at the next one (the
job lease guarantees no other drill is running).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

from worker.adapters import databases, postgres, process
from worker.adapters.restic import Repository, ResticError
from worker.backups import catalog, dump_loader, media
from worker.errors import OperatorError
from worker.settings import Settings

SCRATCH_PREFIX = "taiga_backup_verify_"
DIR_PREFIX = "taiga-backup-verify-"
MAX_LISTED = 10
# What a file or directory may take beyond its bytes (its last, partly used block): the estimate of
# the scratch space a restore needs is the snapshot's bytes plus one such block per entry.
BLOCK = 4096


class DrillError(OperatorError):
    """The backup did not restore as recorded; the message lists the differences."""


class ScratchTooSmall(OperatorError):
    """The backup's media do not fit the drill's scratch space; nothing was restored."""


def scratch_space(repo: Repository, snapshot: dict, parent: str) -> dict:
    """The space a restore of the files snapshot needs, and what `parent` (VERIFY_DIR) has free.
    The snapshot is only looked at here (media.snapshot_size), not read."""
    size = media.snapshot_size(repo, snapshot)
    return {"dir": parent, "media_bytes": size["bytes"], "media_files": size["files"],
            "needed_bytes": size["bytes"] + (size["files"] + size["dirs"]) * BLOCK,
            "free_bytes": media.free_bytes(parent)}


def require_fit(space: dict) -> None:
    """Refused up front: in a cluster the scratch space is a volume of a fixed size, and a drill that
    restores until ENOSPC (or, on an ephemeral volume, until the pod is evicted for exceeding it)
    proves nothing and does it again every week."""
    if space["needed_bytes"] > space["free_bytes"]:
        raise ScratchTooSmall(
            f"the drill's scratch space {space['dir']} (VERIFY_DIR) has {space['free_bytes']} bytes free; restoring "
            f"the backup's media needs about {space['needed_bytes']} ({space['media_bytes']} bytes in "
            f"{space['media_files']} files): give the drill a bigger volume (chart: verify.scratch) - nothing was "
            "restored")


def scratch_settings(settings: Settings) -> Settings:
    """Settings pointing at the drill's server; pg_db is the database to connect to for CREATE/DROP."""
    if not settings.verify_pg_host:
        return settings
    return dataclasses.replace(
        settings, pg_host=settings.verify_pg_host, pg_port=settings.verify_pg_port,
        pg_user=settings.verify_pg_user or settings.pg_user,
        pg_password=settings.verify_pg_password if settings.verify_pg_password else settings.pg_password,
        pg_db=settings.verify_pg_db or "postgres")


def latest_backup(settings: Settings) -> catalog.Backup:
    complete = [b for b in catalog.list_backups(settings) if b.complete]
    if not complete:
        raise DrillError("there is no complete backup (files and database) to verify")
    return complete[-1]


def dump_row_counts(repo: Repository, snapshot_id: str, timeout: float | None) -> dict[str, int]:
    """Rows per table of a custom archive, streamed through `pg_restore --data-only` (a plain
    dump is counted by the loader itself, in the same pass)."""
    rows = dump_loader.PlainWatch()
    prod, cons = process.pipe(repo.dump_argv(snapshot_id), ["pg_restore", "--data-only", "--file=-"],
                              producer_env=repo.env(), consumer_env=process.child_env(),
                              producer_what=f"restic dump ({repo.name})", timeout=timeout,
                              on_consumer_line=rows, keep_stdout=False)
    if not prod.ok:
        raise ResticError(prod.what, prod.returncode, prod.stderr, prod.timed_out)
    cons.check()
    return rows.counts


def drop_scratch(settings: Settings, dbname: str | None = None) -> list[str]:
    """Drops the given scratch database, or (None) every one of ours an interrupted drill left
    behind (a database with our prefix owned by someone else is not ours to drop)."""
    if dbname is None:
        return databases.drop_with_prefix(settings, SCRATCH_PREFIX)
    with postgres.connect(settings) as conn:
        return databases.drop(settings, dbname, conn=conn)


def _differences(expected: dict, actual: dict, what: str, unit: str) -> list[str]:
    out = []
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            out.append(f"{what} {key}: backup {expected.get(key, 'missing')}, restored "
                       f"{actual.get(key, 'missing')}{unit}")
    return out


def _files_on_disk(root: str) -> dict[str, int]:
    found = {}
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found["/" + os.path.relpath(path, root)] = os.lstat(path).st_size
    return found


def check_database(scratch: Settings, repo: Repository, snapshot_id: str, dbname: str, timeout: float,
                   backup_id: str = "") -> dict:
    """Loads the dump into `dbname` (created here) with the restore's own loader - so a dump the
    restore would refuse (cut short) fails the drill too - and compares rows per table with the
    dump."""
    databases.create_plain(scratch, dbname)
    fmt = dump_loader.detect_format(repo, snapshot_id)
    try:
        if fmt == "plain":
            watch = dump_loader.PlainWatch()
            dump_loader.load(scratch, repo, snapshot_id, dbname, timeout=timeout, watch=watch)
            expected = watch.counts
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                counted = pool.submit(dump_row_counts, repo, snapshot_id, timeout)
                dump_loader.load(scratch, repo, snapshot_id, dbname, timeout=timeout)
                expected = counted.result()
    except dump_loader.DumpError as exc:
        raise DrillError(f"backup {backup_id or snapshot_id[:8]} does not restore: {exc}") from None
    actual = postgres.table_row_counts(scratch, dbname)
    diffs = _differences(expected, actual, "table", " rows")
    if diffs:
        raise DrillError(f"{len(diffs)} table(s) differ from the dump: " + "; ".join(diffs[:MAX_LISTED]))
    return {"format": fmt, "tables": len(actual), "rows": sum(actual.values()), "row_counts": actual,
            "server": scratch.pg_address, "scratch_database": dbname}


def check_files(repo: Repository, snapshot_id: str, target: str, timeout: float) -> dict:
    """Restores the files snapshot into `target` and compares every file's size with restic's listing."""
    expected = {n["path"]: int(n.get("size") or 0) for n in repo.ls(snapshot_id) if n.get("type") == "file"}
    repo.restore(snapshot_id, target, timeout=timeout)
    actual = _files_on_disk(target)
    diffs = _differences(expected, actual, "file", " bytes")
    if diffs:
        raise DrillError(f"{len(diffs)} file(s) differ from the snapshot: " + "; ".join(diffs[:MAX_LISTED]))
    return {"files": len(actual), "bytes": sum(actual.values())}


def remove_leftovers(scratch: Settings, parent: str) -> list[str]:
    """What an interrupted drill left: scratch databases and directories (the job lease
    guarantees no other drill is running)."""
    dirs = glob.glob(os.path.join(parent, DIR_PREFIX + "*"))
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    return drop_scratch(scratch) + dirs
