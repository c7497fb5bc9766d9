"""Replacing the application database with a dump: terminate its sessions, drop it, create it
again with the same owner and locale, load the dump (worker.backups.database picks psql or pg_restore).

Why `inspect` is separate: every privilege the replacement needs is checked while the database is
still intact, so a restore that could not finish is refused before anything is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from psycopg import sql

from worker.adapters import postgres, process
from worker.adapters.postgres import DatabaseError
from worker.adapters.restic import Repository, ResticError
from worker.settings import Settings

CUSTOM_MAGIC = b"PGDMP"


def detect_format(repo: Repository, snapshot_id: str, filename: str = "stdin") -> str:
    """Reads only the head of the dump; --no-lock because this reader is stopped after a few
    bytes and must not leave a lock behind."""
    argv = ["restic", "--no-lock", *repo.dump_argv(snapshot_id, filename)[1:]]
    head, done = process.head(argv, env=repo.env(), nbytes=len(CUSTOM_MAGIC), what=f"restic dump ({repo.name})")
    if not head:
        raise ResticError(done.what, done.returncode,
                          done.stderr or f"snapshot {snapshot_id[:8]} has an empty {filename}")
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


MAINTENANCE_DATABASES = ("postgres", "template1")


@dataclass
class Target:
    """The database to be replaced, as it is now."""

    name: str
    exists: bool
    owner: str
    encoding: str | None = None
    collate: str | None = None
    ctype: str | None = None
    size_bytes: int = 0


def maintenance(settings: Settings):
    """A connection to `postgres` (or `template1`): the application database cannot drop itself."""
    last = None
    for name in MAINTENANCE_DATABASES:
        if name == settings.pg_db:
            continue
        try:
            return postgres.connect(settings, name)
        except DatabaseError as exc:
            if "does not exist" not in str(exc):
                raise
            last = exc
    raise last or DatabaseError("no maintenance database to connect to")


def inspect(settings: Settings) -> Target:
    """Reads the target database's owner and locale and proves POSTGRES_USER may drop and
    recreate it. Raises DatabaseError naming the missing privilege."""
    where, user, db = settings.pg_address, settings.pg_user, settings.pg_db
    with maintenance(settings) as conn:
        superuser, createdb = conn.execute(
            "select rolsuper, rolcreatedb from pg_roles where rolname = current_user").fetchone()
        row = conn.execute(
            "select pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype,"
            " pg_database_size(oid), pg_has_role(current_user, datdba, 'USAGE')"
            " and pg_has_role(current_user, datdba, 'MEMBER') from pg_database where datname = %s",
            (db,)).fetchone()
    if not (superuser or createdb):
        raise DatabaseError(f'role "{user}" may not create databases on {where}: a restore drops and recreates '
                            f'"{db}" (ALTER ROLE "{user}" CREATEDB)')
    if row is None:
        return Target(db, False, user)
    owner, encoding, collate, ctype, size, member = row
    if not (superuser or member):
        raise DatabaseError(f'role "{user}" may not drop database "{db}" owned by "{owner}" on {where} '
                            f'(it must be the owner, a member of "{owner}" or a superuser)')
    return Target(db, True, owner, encoding, collate, ctype, int(size))


def recreate(settings: Settings, target: Target) -> int:
    """Ends every other session on the database, drops it and creates it empty, owned as before.
    Returns how many sessions were terminated."""
    name = sql.Identifier(target.name)
    with maintenance(settings) as conn:
        killed = conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid() and backend_type = 'client backend'"
            " and usename = current_user", (target.name,)).fetchone()[0]
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(name))
        options = [sql.SQL("owner {}").format(sql.Identifier(target.owner)), sql.SQL("template template0")]
        for keyword, value in (("encoding", target.encoding), ("lc_collate", target.collate),
                               ("lc_ctype", target.ctype)):
            if value:
                options.append(sql.SQL(keyword + " {}").format(sql.Literal(value)))
        conn.execute(sql.SQL("create database {} ").format(name) + sql.SQL(" ").join(options))
    return int(killed)


def replace(settings: Settings, target: Target, repo: Repository, snapshot_id: str, *,
            on_progress: Callable[[float, str], None] = lambda pct, msg: None) -> dict:
    """recreate, then load the dump. Returns what happened, for the job report."""
    killed = recreate(settings, target)
    on_progress(20.0, f"database {target.name} recreated (owner {target.owner}); loading the dump")
    fmt = load(settings, repo, snapshot_id, target.name, timeout=settings.restore_timeout)
    return {"name": target.name, "owner": target.owner, "format": fmt, "sessions_terminated": killed,
            "existed": target.exists}
