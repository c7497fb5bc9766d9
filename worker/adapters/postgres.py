"""PostgreSQL: pre-flight checks with psycopg, and argv/env for pg_dump, psql and pg_restore.

The password reaches the client programs only through their own environment (PGPASSWORD of that
child), never argv; psycopg gets it as a keyword, never inside a logged connection string.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from worker.adapters import process
from worker.errors import OperatorError
from worker.settings import Settings

CONNECT_TIMEOUT = 10


class DatabaseError(OperatorError):
    """A database problem phrased for an operator (what, which database, which server)."""


def connect(settings: Settings, dbname: str | None = None, autocommit: bool = True) -> psycopg.Connection:
    db = dbname or settings.pg_db
    try:
        return psycopg.connect(
            host=settings.pg_host, port=settings.pg_port, user=settings.pg_user, dbname=db,
            password=settings.pg_password.reveal() or None, connect_timeout=CONNECT_TIMEOUT,
            autocommit=autocommit, application_name="taiga-backup",
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(explain(exc, settings, db)) from None


def explain(exc: Exception, settings: Settings, dbname: str) -> str:
    """Turns libpq's wording into a message that names the database and server."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    where = settings.pg_address
    low = str(exc).lower()
    if "does not exist" in low and "database" in low:
        return f'database "{dbname}" does not exist on {where}'
    if "password authentication failed" in low or "no password supplied" in low:
        return f'password authentication failed for user "{settings.pg_user}" on {where}'
    if "role" in low and "does not exist" in low:
        return f'role "{settings.pg_user}" does not exist on {where}'
    if "connection refused" in low or "could not connect" in low or "timeout" in low or "translate host" in low:
        return f"cannot reach PostgreSQL at {where}: {text}"
    return f'cannot connect to database "{dbname}" on {where}: {text}'


def preflight(settings: Settings) -> dict:
    """Proves the database is reachable before anything is scaled down; returns facts used for
    progress estimates and for the restore drill."""
    with connect(settings) as conn:
        row = conn.execute("select pg_database_size(current_database()), current_setting('server_version_num')").fetchone()
    return {"size_bytes": int(row[0]), "server_version_num": int(row[1])}


def client_env(settings: Settings) -> dict:
    return process.child_env({
        "PGPASSWORD": settings.pg_password.reveal() or None,
        "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
        "PGAPPNAME": "taiga-backup",
    })


def _conn_args(settings: Settings) -> list[str]:
    return ["--host", settings.pg_host, "--port", str(settings.pg_port), "--username", settings.pg_user,
            "--no-password"]


def dump_argv(settings: Settings, fmt: str | None = None, dbname: str | None = None,
              snapshot: str | None = None) -> list[str]:
    """pg_dump exactly as the old procedure ran it for `plain` (no --clean); `custom` is the
    uncompressed archive format, so restic can still deduplicate it and pg_restore can load it.
    `snapshot`: dump the state exported by ExportedSnapshot (the quiesced point) instead of a
    fresh one; pg_dump refuses --serializable-deferrable with it, and needs none: the exported
    snapshot already is a consistent point."""
    fmt = fmt or settings.pg_dump_format
    consistency = ["--snapshot=" + snapshot] if snapshot else ["--serializable-deferrable"]
    argv = ["pg_dump", *consistency, *_conn_args(settings)]
    if fmt == "custom":
        argv += ["--format=custom", "--compress=0"]
    return argv + ["--dbname=" + (dbname or settings.pg_db)]


class ExportedSnapshot:
    """A REPEATABLE READ transaction that exported its snapshot (`pg_export_snapshot()`), kept
    open until close(): as long as it is open, `pg_dump --snapshot=<id>` dumps exactly the
    database as it was when it was taken, however long the dump takes and whatever is written
    meanwhile. That is what lets the app come back before the dump starts streaming.

    The session disables idle_in_transaction_session_timeout for itself, so a server that sets
    one does not end the transaction (and invalidate the snapshot) while the app is back up."""

    def __init__(self, settings: Settings, dbname: str | None = None):
        self.conn = connect(settings, dbname, autocommit=True)
        try:
            self.conn.execute("set idle_in_transaction_session_timeout = 0")
            self.conn.execute("begin isolation level repeatable read, read only")
            self.id = str(self.conn.execute("select pg_export_snapshot()").fetchone()[0])
        except psycopg.Error as exc:
            self.conn.close()
            raise DatabaseError(f"could not export a snapshot of database \"{dbname or settings.pg_db}\": "
                                f"{str(exc).strip()}") from None

    def close(self) -> None:
        try:
            self.conn.execute("rollback")
        except psycopg.Error:
            pass  # the server or the connection went away: the transaction is over anyway
        finally:
            self.conn.close()


def psql_argv(settings: Settings, dbname: str) -> list[str]:
    """psql that stops at the first error and runs the whole load in one transaction."""
    return ["psql", *_conn_args(settings), "--dbname", dbname, "--quiet", "--no-psqlrc",
            "--set", "ON_ERROR_STOP=1", "--single-transaction", "--output", "/dev/null"]


def pg_restore_argv(settings: Settings, dbname: str) -> list[str]:
    return ["pg_restore", *_conn_args(settings), "--dbname", dbname, "--exit-on-error", "--single-transaction"]


_USER_TABLES = """
select n.nspname, c.relname, format('%I.%I', n.nspname, c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                  and d.deptype = 'e')
order by 3
"""


def table_row_counts(settings: Settings, dbname: str | None = None) -> dict[str, int]:
    """Exact rows per table ("schema.table", quoted as pg_dump quotes it), every table pg_dump
    writes data for: what a restore must reproduce. Extension-owned tables are left out (their
    rows come from CREATE EXTENSION, not from the dump)."""
    counts = {}
    with connect(settings, dbname) as conn:
        for schema, table, name in conn.execute(_USER_TABLES).fetchall():
            query = sql.SQL("select count(*) from only {}").format(sql.Identifier(schema, table))
            counts[name] = int(conn.execute(query).fetchone()[0])
    return counts
