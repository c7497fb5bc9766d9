"""Loading a dump from a restic snapshot into a database: `restic dump | psql` for plain SQL,
`restic dump | pg_restore` for the custom format - chosen from the dump's first bytes, not from a
setting, so backups made by the old procedure (plain) always load.
"""

from __future__ import annotations

from . import postgres, process
from .restic import Repository, ResticError
from .settings import Settings

CUSTOM_MAGIC = b"PGDMP"


def detect_format(repo: Repository, snapshot_id: str, filename: str = "stdin") -> str:
    """Reads only the head of the dump (restic dump streams; we stop after a few bytes)."""
    import subprocess

    # --no-lock: this reader is killed after a few bytes and must not leave a lock behind
    proc = subprocess.Popen(["restic", "--no-lock", *repo.dump_argv(snapshot_id, filename)[1:]], env=repo.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        head = proc.stdout.read(len(CUSTOM_MAGIC))
    finally:
        proc.kill()
        _, err = proc.communicate()
    if not head:
        raise ResticError(f"restic dump ({repo.name})", proc.returncode,
                          err.decode(errors="replace") or f"snapshot {snapshot_id[:8]} has an empty {filename}")
    return "custom" if head == CUSTOM_MAGIC else "plain"


def load(settings: Settings, repo: Repository, snapshot_id: str, dbname: str, *, timeout: float | None = None,
         filename: str = "stdin") -> str:
    """Streams the dump into `dbname` (which must exist and be empty). Returns the format loaded.
    Both ends of the pipe are checked: a restic failure with a psql "success" is still a failure."""
    fmt = detect_format(repo, snapshot_id, filename)
    loader = postgres.psql_argv(settings, dbname) if fmt == "plain" else postgres.pg_restore_argv(settings, dbname)
    prod, cons = process.pipe(repo.dump_argv(snapshot_id, filename), loader, producer_env=repo.env(),
                              consumer_env=postgres.client_env(settings), producer_what=f"restic dump ({repo.name})",
                              consumer_what=loader[0], timeout=timeout)
    if not prod.ok:
        raise ResticError(prod.what, prod.returncode, prod.stderr, prod.timed_out)
    cons.check()
    return fmt
