"""The database side of the generator: the schema, COPY streaming, the bulk load's FK/index dance.

Why the schema lives in schema.sql: it is the part a reader compares with Taiga's own tables,
and as SQL it reads, diffs and runs (psql -f) like any schema; create_schema sends the file's
text as one script, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from testkit.dataset.common import TABLES, Items

SCHEMA_SQL = Path(__file__).with_name("schema.sql").read_text(encoding="utf-8")


def create_schema(conninfo: str) -> None:
    """Create Taiga's main tables (simplified: no lookup tables such as statuses).

    Mirrors what matters for backups: serial ids with sequences, Django-style deferrable
    FKs, unique constraints, secondary indexes, jsonb and text[] columns.
    """
    with psycopg.connect(conninfo) as conn:
        conn.execute(SCHEMA_SQL)


def copy_rows(cur, table: str, columns: list[str], rows, freeze: bool = False) -> int:
    """Stream rows into `table` with COPY FROM STDIN; returns the row count."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN" + (" WITH (FREEZE)" if freeze else "")).format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    n = 0
    with cur.copy(stmt) as cp:
        for row in rows:
            cp.write_row(row)
            n += 1
    return n


def drop_secondary_objects(cur) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Drop foreign keys and non-constraint indexes of our tables; return how to recreate.

    Bulk loading without them and rebuilding afterwards is several times faster than
    per-row FK triggers and incremental index maintenance.
    """
    cur.execute(
        """SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
             FROM pg_constraint c
            WHERE c.contype = 'f' AND c.conrelid::regclass::text = ANY(%s)
            ORDER BY 1, 2""",
        (TABLES,),
    )
    fks = cur.fetchall()
    cur.execute(
        """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
             FROM pg_index i
            WHERE i.indrelid::regclass::text = ANY(%s)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            ORDER BY 1""",
        (TABLES,),
    )
    idx = cur.fetchall()
    for table, name, _ in fks:
        cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier(table), sql.Identifier(name)))
    for name, _ in idx:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return fks, [d for _, d in idx]


def recreate_secondary_objects(cur, fks, index_defs) -> None:
    """Undo drop_secondary_objects once the rows are in (indexes first, then the FKs)."""
    cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for d in index_defs:
        cur.execute(d)
    for table, name, definition in fks:
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            sql.Identifier(table), sql.Identifier(name)) + sql.SQL(definition))


def reset_sequences(cur) -> None:
    """Point each serial sequence past its table's max id (COPY gave explicit ids)."""
    for t in TABLES:
        if t == "history_historyentry":
            continue
        cur.execute(sql.SQL(
            "SELECT setval(pg_get_serial_sequence({t}, 'id'), "
            "COALESCE((SELECT max(id) FROM {i}), 0) + 1, false)"
        ).format(t=sql.Literal(t), i=sql.Identifier(t)))


def items_from_db(cur, table: str) -> tuple[list[int], Items]:
    """(ids, Items) of an item table in id order, for children of existing items."""
    cur.execute(sql.SQL("SELECT id, project_id, extract(epoch FROM created_date)::bigint FROM {} "
                        "ORDER BY id").format(sql.Identifier(table)))
    ids, it = [], Items()
    for i, p, c in cur:
        ids.append(i)
        it.project.append(p)
        it.created.append(c)
    return ids, it


def reserve_ids(cur, table: str, n: int) -> list[int]:
    """The next `n` ids of table's serial sequence (rows are then COPYed with these ids)."""
    cur.execute(sql.SQL("SELECT nextval(pg_get_serial_sequence({}, 'id')) FROM generate_series(1, %s)")
                .format(sql.Literal(table)), (n,))
    return [r[0] for r in cur.fetchall()]
