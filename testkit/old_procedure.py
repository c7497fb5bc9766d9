"""The old Taiga backup/restore procedure, run as the operators ran it: bash pipelines.

Why: it is the baseline the benchmark compares taiga-backup against, and the compatibility
target (same repository layout: "$RESTIC_REPOSITORY/files" holds a `restic backup .` of the
media directory, "$RESTIC_REPOSITORY/pg-database" a plain-SQL pg_dump stored by
`restic backup --stdin` under restic's default name "stdin").  The commands go through
`bash -c` on purpose, with `set -o pipefail`, and keep the old behaviour on purpose too:
plain `DROP DATABASE` (fails while clients are connected or when the database is missing)
and psql without ON_ERROR_STOP (SQL errors during a restore do not fail it; they are
returned in "psql_errors" so callers can see them).

The environment is built explicitly -- PATH/HOME/LANG/TMPDIR from this process, then
`env` (RESTIC_PASSWORD_FILE, RESTIC_CACHE_DIR, AWS_*, ...), then PGHOST/PGPORT/PGUSER/
PGPASSWORD/PGDATABASE from `db` -- so nothing else leaks in from the caller.
`db` = {"host": ..., "port": ..., "user": ..., "password": ..., "dbname": ...}.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time

REPO_FILES = "files"
REPO_DB = "pg-database"


class OldProcedureError(RuntimeError):
    """A step of the old procedure exited non-zero; carries its stderr."""

    def __init__(self, step: str, returncode: int, stderr: str):
        self.step, self.returncode, self.stderr = step, returncode, stderr
        tail = stderr.strip()[-3000:] or "(no stderr)"
        super().__init__(f"old procedure step {step!r} failed with exit code {returncode}:\n{tail}")


def _env(repo_base: str, env: dict, db: dict | None = None) -> dict[str, str]:
    out = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    out.update({k: str(v) for k, v in env.items() if v is not None})
    out["RESTIC_REPOSITORY"] = repo_base
    if db:
        for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                         ("password", "PGPASSWORD"), ("dbname", "PGDATABASE")):
            if db.get(key) is not None:
                out[var] = str(db[key])
    return out


def _conn_flags(db: dict) -> str:
    """The old scripts' connection flags: -h -p -U --no-password (password via PGPASSWORD)."""
    flags = []
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if db.get(key) is not None:
            flags += [flag, shlex.quote(str(db[key]))]
    flags.append("--no-password")
    return " ".join(flags)


def _run(step: str, script: str, env: dict, timings: dict, cwd: str | None = None) -> subprocess.CompletedProcess:
    t = time.monotonic()
    p = subprocess.run(["bash", "-c", "set -o errexit -o nounset -o pipefail\n" + script],
                       env=env, cwd=cwd, capture_output=True, text=True, errors="replace")
    timings[step] = round(time.monotonic() - t, 3)
    if p.returncode != 0:
        raise OldProcedureError(step, p.returncode, p.stderr)
    return p


def _snapshot_id(output: str) -> str | None:
    m = re.search(r"^snapshot ([0-9a-f]+) saved", output, re.M)
    return m.group(1) if m else None


def _added(output: str) -> str | None:
    m = re.search(r"^Added to the repo(?:sitory)?: (.+)$", output, re.M)
    return m.group(1).strip() if m else None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def old_init(repo_base: str, env: dict) -> None:
    """`restic init` for $base/files and $base/pg-database unless they already exist."""
    e = _env(repo_base, env)
    timings: dict = {}
    for repo in (REPO_FILES, REPO_DB):
        _run(f"init {repo}",
             f'restic -r "$RESTIC_REPOSITORY/{repo}" cat config >/dev/null 2>&1 '
             f'|| restic -r "$RESTIC_REPOSITORY/{repo}" init', e, timings)


def old_backup(repo_base: str, media_dir: str, db: dict, env: dict) -> dict:
    """unlock --cleanup-cache on both repositories, pg_dump | restic backup --stdin, then
    `cd media_dir && restic backup .`.

    Returns {"seconds": {step: s, "total": s}, "snapshots": {"db": id, "files": id},
    "added": {"db": "<restic's 'Added to the repo' text>", "files": ...}}.
    """
    e = _env(repo_base, env, db)
    seconds: dict = {}
    t0 = time.monotonic()
    for repo in (REPO_FILES, REPO_DB):
        _run(f"unlock {repo}", f'restic -r "$RESTIC_REPOSITORY/{repo}" unlock --cleanup-cache', e, seconds)
    pdb = _run("db",
               f"pg_dump --serializable-deferrable {_conn_flags(db)} {shlex.quote(db['dbname'])} "
               f'| restic -r "$RESTIC_REPOSITORY/{REPO_DB}" backup --stdin', e, seconds)
    pfiles = _run("files", f'cd {shlex.quote(media_dir)} && restic -r "$RESTIC_REPOSITORY/{REPO_FILES}" backup .',
                  e, seconds)
    seconds["total"] = round(time.monotonic() - t0, 3)
    return {
        "seconds": seconds,
        "snapshots": {"db": _snapshot_id(pdb.stdout), "files": _snapshot_id(pfiles.stdout)},
        "added": {"db": _added(pdb.stdout), "files": _added(pfiles.stdout)},
    }


def old_restore(repo_base: str, media_dir: str, db: dict, env: dict, snapshot: str | dict = "latest",
                chown: str | None = None) -> dict:
    """Drop and recreate the database from template1, `restic dump <snapshot> stdin | psql`,
    empty media_dir (dotfiles too), `restic restore <snapshot> --target media_dir/`, and
    `chown -R <chown> media_dir` when `chown` (e.g. "999:999") is given and we run as root.
    `snapshot`: one for both repositories (`latest`, as the seed), or {repository: snapshot id}.

    Returns {"seconds": {...}, "psql_errors": [ERROR lines psql printed], "chown": str}.
    """
    e = _env(repo_base, env, db)
    seconds: dict = {}
    t0 = time.monotonic()
    name = db["dbname"]
    flags = _conn_flags(db)
    snaps = snapshot if isinstance(snapshot, dict) else {REPO_DB: snapshot, REPO_FILES: snapshot}
    media = shlex.quote(media_dir.rstrip("/") or "/")
    if media_dir.rstrip("/") in ("", "/"):
        raise ValueError("refusing to empty the root directory")
    for repo in (REPO_FILES, REPO_DB):
        _run(f"unlock {repo}", f'restic -r "$RESTIC_REPOSITORY/{repo}" unlock --cleanup-cache', e, seconds)
    _run("drop database",
         f"psql -d template1 {flags} -c {shlex.quote(f'DROP DATABASE {_quote_ident(name)};')}", e, seconds)
    _run("create database",
         f"psql -d template1 {flags} -c {shlex.quote(f'CREATE DATABASE {_quote_ident(name)};')}", e, seconds)
    p = _run("db", f'restic -r "$RESTIC_REPOSITORY/{REPO_DB}" dump {shlex.quote(snaps[REPO_DB])} stdin '
                   f'| psql -d {shlex.quote(name)} {flags}', e, seconds)
    psql_errors = [line for line in p.stderr.splitlines() if "ERROR:" in line]
    _run("empty media", f"shopt -s dotglob nullglob\nrm -rf -- {media}/*", e, seconds)
    _run("files", f'restic -r "$RESTIC_REPOSITORY/{REPO_FILES}" restore {shlex.quote(snaps[REPO_FILES])} '
                  f'--target {media}/', e, seconds)
    if chown is None:
        chown_state = "not requested"
    elif os.geteuid() != 0:
        chown_state = "skipped (not root)"
    else:
        _run("chown", f"chown -R {shlex.quote(chown)} {media}", e, seconds)
        chown_state = chown
    seconds["total"] = round(time.monotonic() - t0, 3)
    return {"seconds": seconds, "psql_errors": psql_errors, "chown": chown_state}
