"""Fingerprints of a database and a media tree, to prove that a restore is exact.

Why content fingerprints rather than pg_dump or tar output: two databases with the same rows
must compare equal whatever their physical order or server version, and two trees whatever
their owners, modes and directory entries; both stream, so memory stays flat at any size.
"""

from __future__ import annotations

import hashlib
import os

import psycopg
from psycopg import sql


def table_checksums(conninfo: str) -> dict[str, str]:
    """Per table "rowcount:md5" over COPY text output in primary-key order.

    Also "sequence:<name>" -> "last_value:is_called".  Session settings that influence
    the text output (time zone, date style, float digits) are pinned, so two databases with
    the same content give the same checksums.  Streams, so memory stays flat at any size.
    """
    out: dict[str, str] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for stmt in ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'",
                     "SET IntervalStyle = 'postgres'", "SET extra_float_digits = 3",
                     "SET bytea_output = 'hex'"):
            conn.execute(stmt)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            tables = conn.execute(
                """SELECT n.nspname, c.relname, c.oid FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    ORDER BY 1, 2""").fetchall()
            for schema, table, oid in tables:
                pk = [r[0] for r in conn.execute(
                    """SELECT a.attname FROM pg_index i
                         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord""", (oid,))]
                order = (sql.SQL(", ").join(map(sql.Identifier, pk)) if pk else
                         sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(
                             conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = %s "
                                          "AND attnum > 0 AND NOT attisdropped", (oid,)).fetchone()[0])))
                h = hashlib.md5()
                rows = 0
                with conn.cursor().copy(sql.SQL("COPY (SELECT * FROM {}.{} t ORDER BY {}) TO STDOUT")
                                        .format(sql.Identifier(schema), sql.Identifier(table),
                                                order)) as cp:
                    for chunk in cp:
                        h.update(chunk)
                        rows += bytes(chunk).count(b"\n")
                name = table if schema == "public" else f"{schema}.{table}"
                out[name] = f"{rows}:{h.hexdigest()}"
            for schema, seq in conn.execute(
                    """SELECT n.nspname, c.relname FROM pg_class c
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relkind = 'S' ORDER BY 1, 2""").fetchall():
                last, called = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(seq))).fetchone()
                name = seq if schema == "public" else f"{schema}.{seq}"
                out[f"sequence:{name}"] = f"{last}:{called}"
    return out


def tree_digest(path: str) -> dict[str, str]:
    """Relative path -> sha256 of every regular file; symlinks map to "symlink:<target>".

    Directories themselves (and so empty directories), owners and modes are not compared.
    """
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = "symlink:" + os.readlink(full)
            elif os.path.isfile(full):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                out[rel] = h.hexdigest()
    return out
