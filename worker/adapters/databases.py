"""Database-level SQL: who may do what, databases created like another, renamed, dropped, listed.

Why one module: a restore loads beside the live database and switches by renaming, the drill
loads into a scratch database, and both clean up after dead jobs. Every statement that creates,
renames or drops a whole database is here, with identifiers always quoted by psycopg (names are
built from POSTGRES_DB, never from a request field), so the privileges a restore needs and the
statements that need them are read in one place.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from worker.adapters import postgres
from worker.adapters.postgres import DatabaseError
from worker.settings import Settings

MAINTENANCE_DATABASES = ("postgres", "template1")
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: longer names are silently cut by PostgreSQL
TERMINATE_ATTEMPTS = 20
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_TABLESPACE = "pg_default"
# what the side load leaves free on the server's disk: the live database goes on writing beside
# it (and its WAL with it) - a server whose disk fills stops the live database too
LOAD_MARGIN_BYTES = 16 * 1024 * 1024
LOAD_MARGIN_SHARE = 0.10


def load_margin(load_bytes: int) -> int:
    return LOAD_MARGIN_BYTES + int(load_bytes * LOAD_MARGIN_SHARE)


@dataclass
class Target:
    """A database as it is now: owner, locale, size (exists=False: nothing there yet)."""

    name: str
    exists: bool
    owner: str
    encoding: str | None = None
    collate: str | None = None
    ctype: str | None = None
    size_bytes: int = 0
    tablespace: str = DEFAULT_TABLESPACE


def maintenance(settings: Settings, avoid: tuple[str, ...] = ()):
    """A connection to `postgres` (or `template1`): a database cannot be dropped or renamed from
    inside itself."""
    last = None
    for name in MAINTENANCE_DATABASES:
        if name == settings.pg_db or name in avoid:
            continue
        try:
            return postgres.connect(settings, name)
        except DatabaseError as exc:
            if "does not exist" not in str(exc):
                raise
            last = exc
    raise last or DatabaseError("no maintenance database to connect to")


def check_name(name: str) -> str:
    if len(name.encode()) > MAX_NAME_BYTES:
        raise DatabaseError(f'database name "{name}" is longer than {MAX_NAME_BYTES} bytes: PostgreSQL would cut '
                            f"it; use a shorter POSTGRES_DB")
    return name


def inspect(settings: Settings, name: str | None = None, *, for_what: str = "a restore") -> Target:
    """The database's owner and locale, and proof that POSTGRES_USER may create a database owned
    like it and rename and drop it: CREATEDB (or superuser) and membership of the owner. Raises
    DatabaseError listing everything that is missing, with the statement that grants it."""
    name = name or settings.pg_db
    where, user = settings.pg_address, settings.pg_user
    with maintenance(settings) as conn:
        superuser, createdb = conn.execute(
            "select rolsuper, rolcreatedb from pg_roles where rolname = current_user").fetchone()
        row = conn.execute(
            "select pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype,"
            " pg_database_size(d.oid), pg_has_role(current_user, datdba, 'MEMBER'), t.spcname,"
            " has_tablespace_privilege(t.oid, 'CREATE') from pg_database d join pg_tablespace t"
            " on t.oid = d.dattablespace where datname = %s", (name,)).fetchone()
    missing = []
    if not (superuser or createdb):
        missing.append(f'may not create databases: {for_what} loads the backup into a new database beside '
                       f'"{name}" (ALTER ROLE "{user}" CREATEDB)')
    if row is not None and not (superuser or row[5]):
        missing.append(f'is not the owner of database "{name}" (owned by "{row[0]}"): renaming it needs the owner '
                       f'(ALTER DATABASE "{name}" OWNER TO "{user}", or GRANT "{row[0]}" TO "{user}")')
    if row is not None and row[6] != DEFAULT_TABLESPACE and not (superuser or row[7]):
        missing.append(f'may not create databases in tablespace "{row[6]}", where "{name}" lives: {for_what} '
                       f'loads beside it there (GRANT CREATE ON TABLESPACE "{row[6]}" TO "{user}")')
    if missing:
        raise DatabaseError(f'role "{user}" on {where} ' + "; and ".join(missing))
    if row is None:
        return Target(name, False, user)
    owner, encoding, collate, ctype, size, _member, tablespace, _create = row
    return Target(name, True, owner, encoding, collate, ctype, int(size), tablespace)


def free_bytes(settings: Settings, target: Target) -> tuple[int | None, str]:
    """Free bytes on the disk of the target's tablespace, and where that was read - or None and
    why it cannot be known.

    PostgreSQL has no SQL for free disk space. The one way without a setting or a helper on the
    server: when the server runs beside the worker (POSTGRES_HOST is this machine or a socket
    directory, as in a single-node install or a sidecar) its tablespace directory is visible
    here, and statvfs of it is the server's own free space. The directory is taken as the
    server's only when it carries the server's version marker (PG_VERSION in the data directory,
    PG_<major>_* in a tablespace): a directory of the same name in another container is not
    mistaken for it. A remote server is not checked (the load then fails on a full disk with the
    side database dropped, as before); the plan says so."""
    if not (settings.pg_host in LOCAL_HOSTS or settings.pg_host.startswith("/")):
        return None, f"not checked: PostgreSQL at {settings.pg_address} is not on this machine"
    with maintenance(settings) as conn:
        location, major = conn.execute(
            "select pg_tablespace_location(t.oid), current_setting('server_version_num')::int / 10000"
            " from pg_tablespace t where t.spcname = %s", (target.tablespace,)).fetchone()
        if not location:
            row = conn.execute("select setting from pg_settings where name = 'data_directory'").fetchone()
            location = row[0] if row else None
    if not location:
        return None, f"not checked: role {settings.pg_user} may not read the data directory's place"
    marker = os.path.join(location, "PG_VERSION") if target.tablespace == DEFAULT_TABLESPACE else \
        os.path.join(location, f"PG_{major}_*")
    if not glob.glob(marker):
        return None, f"not checked: {location} (tablespace {target.tablespace}) is not visible from here"
    st = os.statvfs(location)
    return st.f_bavail * st.f_frsize, f"{location} (tablespace {target.tablespace})"


def create_like(settings: Settings, target: Target, name: str) -> None:
    """An empty database `name` with the target's owner, encoding, locale and tablespace (from
    template0, so nothing of template1 ends up in it)."""
    options = [sql.SQL("owner {}").format(sql.Identifier(target.owner)), sql.SQL("template template0")]
    if target.tablespace != DEFAULT_TABLESPACE:  # beside the live one: the same disk, after the switch too
        options.append(sql.SQL("tablespace {}").format(sql.Identifier(target.tablespace)))
    for keyword, value in (("encoding", target.encoding), ("lc_collate", target.collate), ("lc_ctype", target.ctype)):
        if value:
            options.append(sql.SQL(keyword + " {}").format(sql.Literal(value)))
    with maintenance(settings) as conn:
        conn.execute(sql.SQL("create database {} ").format(sql.Identifier(check_name(name))) + sql.SQL(" ").join(options))


def create_plain(settings: Settings, name: str) -> None:
    """An empty database owned by the connecting role (the drill's scratch database)."""
    with postgres.connect(settings) as conn:
        conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(check_name(name))))


def exists(settings: Settings, name: str) -> bool:
    with maintenance(settings) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


def size(settings: Settings, name: str) -> int:
    with maintenance(settings) as conn:
        row = conn.execute("select pg_database_size(%s)", (name,)).fetchone()
    return int(row[0] or 0)


def names_with_prefix(settings: Settings, prefix: str, *, own_only: bool = False,
                      conn: psycopg.Connection | None = None) -> list[str]:
    """Databases whose name starts with `prefix` (matched literally: `_` is no wildcard here)."""
    query = "select datname from pg_database where starts_with(datname, %s)"
    if own_only:
        query += " and datdba = (select oid from pg_roles where rolname = current_user)"
    if conn is not None:
        return sorted(r[0] for r in conn.execute(query + " order by 1", (prefix,)).fetchall())
    with maintenance(settings) as own:
        return names_with_prefix(settings, prefix, own_only=own_only, conn=own)


def drop(settings: Settings, *names: str, conn: psycopg.Connection | None = None) -> list[str]:
    """DROP DATABASE ... WITH (FORCE): ends the sessions of a dead job's loader too. FORCE refuses
    when a process it may not signal is on the database - an autovacuum worker on a freshly
    loaded side database, for a role that is no superuser: then our sessions are ended and a
    plain DROP, which tells autovacuum to leave (waiting up to 5 s), drops it."""
    if conn is None:
        with maintenance(settings) as own:
            return drop(settings, *names, conn=own)
    for name in names:
        try:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            _terminate(conn, [name])
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
    return list(names)


def drop_with_prefix(settings: Settings, prefix: str) -> list[str]:
    """Every database of ours with this prefix (a dead drill's scratch databases): one connection
    to the server the settings point at (the drill's may have no `postgres` database)."""
    with postgres.connect(settings) as conn:
        return drop(settings, *names_with_prefix(settings, prefix, own_only=True, conn=conn), conn=conn)


def _terminate(conn: psycopg.Connection, names: list[str]) -> int:
    return int(conn.execute(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = any(%s)"
        " and pid <> pg_backend_pid() and backend_type = 'client backend' and pg_has_role(usesysid, 'MEMBER')",
        (names,)).fetchone()[0])


def rename_all(settings: Settings, renames: list[tuple[str, str]], terminate: list[str]) -> int:
    """Renames several databases in ONE transaction (ALTER DATABASE ... RENAME is transactional),
    so a crash leaves either all names old or all new: never the app's name on no database, and
    never two. Sessions on the databases in `terminate` are ended first (a database with users
    cannot be renamed); ones that reconnect in between are ended again. Returns how many."""
    killed = 0
    with maintenance(settings, avoid=tuple(n for pair in renames for n in pair)) as conn:
        for attempt in range(1, TERMINATE_ATTEMPTS + 1):
            killed += _terminate(conn, terminate)
            try:
                with conn.transaction():
                    for old, new in renames:
                        conn.execute(sql.SQL("alter database {} rename to {}").format(
                            sql.Identifier(old), sql.Identifier(check_name(new))))
                return killed
            except psycopg.errors.ObjectInUse:
                if attempt == TERMINATE_ATTEMPTS:
                    raise DatabaseError(f"database {', '.join(terminate)} still has sessions after "
                                        f"{TERMINATE_ATTEMPTS} attempts to end them: is something outside "
                                        "RESTORE_QUIESCE_DEPLOYMENTS connected?") from None
                time.sleep(0.1 * attempt)
    return killed
