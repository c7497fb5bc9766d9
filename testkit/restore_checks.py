"""What the restore tests and the restore bench share: the live state without the restore's kept
previous state, the kept state itself, and backups the old procedure stored cut short.

Why a live state of its own: a restore keeps the state it replaced inside the media volume
(`.taiga-backup-before-<id>/`, a rename away) and beside the database (`<db>__before_<id>`), so
"the app sees exactly the backup" means the media root without that folder.
"""

from __future__ import annotations

import os
import subprocess

from testkit import dataset
from testkit.old_procedure import _conn_flags, _env

KEPT_PREFIX = ".taiga-backup-before-"
STAGING_PREFIX = ".taiga-backup-restore-"
STATE = ".taiga-backup-state/"  # the worker's own records (nonces, a safety backup still owed)


def live_files(media) -> dict:
    """What the app serves: the media root without the restore's kept and staging folders and
    the worker's own records."""
    return {k: v for k, v in dataset.tree_digest(str(media)).items()
            if not k.startswith((KEPT_PREFIX, STAGING_PREFIX, STATE))}


def live_state(site) -> dict:
    """Every table's rows and sequences, every live file's bytes."""
    return {"db": dataset.table_checksums(site.conninfo), "files": live_files(site.media)}


def kept_state(site, restore_id: str) -> dict:
    """The kept previous state of a restore, in the same form as live_state."""
    conninfo = site.conninfo.replace(f"dbname={site.dbname}", f"dbname={site.dbname}__before_{restore_id}")
    return {"db": dataset.table_checksums(conninfo),
            "files": dataset.tree_digest(str(site.media / (KEPT_PREFIX + restore_id)))}


def side_copies(site) -> dict:
    """Side databases and staging folders of restores: none may be left after a job ends."""
    dbs = [r[0] for r in site.pg.sql(f"select datname from pg_database where datname like '{site.dbname}\\_\\_restore\\_%'")]
    dirs = sorted(n for n in os.listdir(site.media) if n.startswith(STAGING_PREFIX))
    return {"databases": dbs, "dirs": dirs}


def plain_dump(site) -> bytes:
    env = {"PATH": os.environ["PATH"], "PGPASSWORD": site.db_password}
    return subprocess.run(["pg_dump", "-h", "127.0.0.1", "-p", str(site.pg.port), "-U", site.db_user,
                           "--no-password", site.dbname], env=env, capture_output=True, check=True).stdout


def cut_points(dump: bytes) -> dict[str, int]:
    """Where a dump gets cut: in the middle of a data row, and cleanly right after the last row
    of data (the end of the last COPY section), before the indexes and constraints."""
    last_copy_end = dump.rindex(b"\n\\.\n") + len(b"\n\\.\n")
    first_copy = dump.index(b" FROM stdin;\n") + len(b" FROM stdin;\n")
    first_row_end = dump.index(b"\n", first_copy)
    return {"mid-row": first_copy + (first_row_end - first_copy) // 2, "after-data": last_copy_end}


def old_backup_cut(site, nbytes: int) -> None:
    """The old procedure's backup, with its pipeline cut after `nbytes` bytes of dump and - as
    the old scripts ran it - no pipefail: `pg_dump | head -c N | restic backup --stdin` exits 0,
    and the cut dump is stored as a valid snapshot; then the media, as `restic backup .`."""
    db = {"host": "127.0.0.1", "port": site.pg.port, "user": site.db_user, "password": site.db_password,
          "dbname": site.dbname}
    env = _env(str(site.repo), {"RESTIC_PASSWORD_FILE": str(site.password_file),
                                "RESTIC_CACHE_DIR": site.env["RESTIC_CACHE_DIR"], "HOME": str(site.root)}, db)
    for repo in ("files", "pg-database"):
        subprocess.run(["bash", "-c", f'restic -r "$RESTIC_REPOSITORY/{repo}" cat config >/dev/null 2>&1 || '
                        f'restic -r "$RESTIC_REPOSITORY/{repo}" init'], env=env, check=True, capture_output=True)
    script = (f"pg_dump --serializable-deferrable {_conn_flags(db)} {site.dbname} | head -c {int(nbytes)} "
              '| restic -r "$RESTIC_REPOSITORY/pg-database" backup --stdin')
    subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True)  # no pipefail: exit 0
    subprocess.run(["bash", "-c", 'restic -r "$RESTIC_REPOSITORY/files" backup .'], env=env, cwd=str(site.media),
                   check=True, capture_output=True)
