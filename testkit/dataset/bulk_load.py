"""The initial bulk load (populate): an empty schema and media directory become a dataset.

Why the steps run in this order: tables load parents first, each from its own random stream
("<seed>:<table>"), so one table's rows never depend on how many random numbers another one
drew; avatars and logos are planned before the users and projects whose rows name them, and
attachments once the items they hang on exist.  Media files are written by a thread while the
database loads (avatars during the items, attachments during history).  The database loads in
one transaction with COPY ... FREEZE, foreign keys and secondary indexes rebuilt at the end.
"""

from __future__ import annotations

import os
import random
import time

import psycopg
from psycopg import sql

from testkit.dataset.common import (
    ATTACH_COLS, BASE_COUNTS, GB, HISTORY_COLS, ISSUE_COLS, ITEM_TABLES, PROJECT_COLS, TABLES,
    TASK_COLS, US_COLS, USER_COLS, Items, count, report,
)
from testkit.dataset.db import (
    copy_rows, drop_secondary_objects, recreate_secondary_objects, reset_sequences,
)
from testkit.dataset.history import history_rows
from testkit.dataset.media import (
    MediaFile, MediaWriter, attachment_row, log_uniform, plan_attachments, taiga_path,
)
from testkit.dataset.rows import issue_rows, pick_projects, project_rows, task_rows, us_rows, user_rows
from testkit.dataset.text import text_for


def populate(conninfo: str, media_dir: str, scale: float = 1.0, seed: int = 1, progress=None) -> dict:
    """Fill an empty schema (see create_schema) and an empty media_dir with a Taiga-like dataset.

    Deterministic for a given (scale, seed): same rows, same file names and bytes.
    The database is loaded in one transaction with COPY ... FREEZE (tables are
    truncated first, which FREEZE requires), FKs and secondary indexes are rebuilt at the
    end; media files are written by a thread meanwhile.  `progress`, if given, is called
    with short status strings.
    """
    t_start = time.monotonic()
    os.makedirs(media_dir, exist_ok=True)
    if os.listdir(media_dir):
        raise ValueError(f"media directory {media_dir!r} is not empty")
    load = _Load(seed, scale, progress)
    media_rng = load.rng("media")  # avatars, then logos: one stream
    avatars, photo_paths = _plan_avatars(load, media_rng)
    logos, logo_paths = _plan_logos(load, media_rng)
    profile_files = avatars + logos
    writer = MediaWriter(media_dir, profile_files, load.text)
    writer.start()

    with psycopg.connect(conninfo) as conn:
        load.cur = conn.cursor()
        fks, index_defs = _prepare_bulk_load(load.cur)
        _load_users(load, photo_paths)
        _load_projects(load, logo_paths)
        _load_project_items(load, "userstories_userstory", "userstories", US_COLS, us_rows)
        _load_tasks(load)
        _load_project_items(load, "issues_issue", "issues", ISSUE_COLS, issue_rows)
        planned = plan_attachments(load.rng("attachments"), load.text,
                                   max(0, int(scale * GB) - sum(f.size for f in profile_files)),
                                   1, load.kinds_items(), load.n_users, True, str(seed))
        writer.finish()  # avatars done; now the attachments, still in parallel with history
        writer = MediaWriter(media_dir, [mf for _, mf in planned], load.text)
        writer.start()
        _load_history(load)
        _load_attachments(load, writer, planned)
        _finish_bulk_load(load.cur, fks, index_defs, progress)
    db_size = _analyze(conninfo)

    all_files = profile_files + [mf for _, mf in planned]
    stats = {
        "db_rows": load.rows,
        "db_bytes": db_size,
        "media_files": len(all_files),
        "media_bytes": sum(mf.written for mf in all_files),
        "seconds": round(time.monotonic() - t_start, 2),
    }
    report(progress, f"done in {stats['seconds']}s")
    return stats


class _Load:
    """One populate run: its sizes and corpus, and what the loaded tables hand to the next ones."""

    def __init__(self, seed: int, scale: float, progress):
        self.seed = seed
        self.progress = progress
        self.text = text_for(seed, scale)
        self.counts = {t: count(t, scale) for t in BASE_COUNTS}
        self.n_users = self.counts["users_user"]
        self.n_projects = self.counts["projects_project"]
        self.cur = None  # set once connected
        self.rows: dict[str, int] = {}  # table -> rows loaded
        self.user_names: list[str] = []
        self.proj_created: dict[int, float] = {}  # project id -> creation time
        self.refs: dict[int, int] = {}  # project id -> last ref given
        self.items = {t: Items() for t in ITEM_TABLES.values()}

    def rng(self, name: str) -> random.Random:
        """The independent random stream of one table (or of the media plan)."""
        return random.Random(f"{self.seed}:{name}")

    def copy(self, table: str, cols: list[str], rows) -> None:
        t = time.monotonic()
        self.rows[table] = copy_rows(self.cur, table, cols, rows, freeze=True)
        report(self.progress, f"{table}: {self.rows[table]} rows in {time.monotonic() - t:.1f}s")

    def kinds_items(self) -> list[tuple[str, int, Items]]:
        """(content type, first id, Items) of stories, tasks and issues, for history and attachments."""
        return [(ct, 1, self.items[t]) for ct, t in ITEM_TABLES.items()]


def _plan_avatars(load: _Load, rng: random.Random) -> tuple[list[MediaFile], dict[int, str]]:
    """About one user in ten has a photo."""
    files: list[MediaFile] = []
    paths: dict[int, str] = {}
    for uid in range(1, load.n_users + 1):
        if rng.random() < 0.1:
            path = taiga_path("user", rng, rng.choice(["avatar.png", "photo.jpg", "me.png"]))
            paths[uid] = path
            files.append(MediaFile(path, log_uniform(rng, 5_000, 60_000), "bin",
                                   f"{load.seed}:user:{uid}"))
    return files, paths


def _plan_logos(load: _Load, rng: random.Random) -> tuple[list[MediaFile], dict[int, str]]:
    """About one project in five has a logo."""
    files: list[MediaFile] = []
    paths: dict[int, str] = {}
    for pid in range(1, load.n_projects + 1):
        if rng.random() < 0.2:
            path = taiga_path("project", rng, "logo.png")
            paths[pid] = path
            files.append(MediaFile(path, log_uniform(rng, 10_000, 100_000), "bin",
                                   f"{load.seed}:project:{pid}"))
    return files, paths


def _prepare_bulk_load(cur):
    """Check the schema is empty, drop FKs and secondary indexes, truncate (for COPY FREEZE)."""
    cur.execute("SET synchronous_commit = off")
    cur.execute("SELECT count(*) FROM users_user")
    if cur.fetchone()[0]:
        raise ValueError("populate needs an empty schema (tables already contain rows)")
    fks, index_defs = drop_secondary_objects(cur)
    cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))
    return fks, index_defs


def _load_users(load: _Load, photo_paths: dict[int, str]) -> None:
    rows, load.user_names = user_rows(load.rng("users"), load.text, load.n_users, photo_paths)
    load.copy("users_user", USER_COLS, rows)


def _load_projects(load: _Load, logo_paths: dict[int, str]) -> None:
    rows = list(project_rows(load.rng("projects"), load.text, load.n_projects, load.n_users, logo_paths))
    load.proj_created = {r[0]: r[4].timestamp() for r in rows}
    load.copy("projects_project", PROJECT_COLS, rows)


def _load_project_items(load: _Load, table: str, stream: str, cols: list[str], rows_of) -> None:
    """Stories or issues (rows_of: us_rows or issue_rows), in projects of skewed sizes."""
    rng, n = load.rng(stream), load.counts[table]
    load.copy(table, cols, rows_of(
        rng, load.text, range(1, n + 1), pick_projects(rng, load.n_projects, n), load.refs,
        load.n_users, load.items[table], load.proj_created))


def _load_tasks(load: _Load) -> None:
    """Tasks after the stories: most hang below a story of about the same age."""
    table, stories = "tasks_task", load.items["userstories_userstory"]
    n = load.counts[table]
    load.copy(table, TASK_COLS, task_rows(
        load.rng("tasks"), load.text, range(1, n + 1), len(stories.project), stories, load.refs,
        load.n_users, load.n_projects, load.items[table]))


def _load_history(load: _Load) -> None:
    table = "history_historyentry"
    load.copy(table, HISTORY_COLS, history_rows(
        load.rng("history"), load.text, load.counts[table], load.kinds_items(), load.user_names))


def _load_attachments(load: _Load, writer: MediaWriter, planned) -> None:
    """The attachment rows, once the writer has written their files (their size and sha1)."""
    t = time.monotonic()
    writer.finish()
    report(load.progress, f"media: waited {time.monotonic() - t:.1f}s for the writer")
    load.copy("attachments_attachment", ATTACH_COLS, (attachment_row(r, mf) for r, mf in planned))


def _finish_bulk_load(cur, fks, index_defs, progress) -> None:
    t = time.monotonic()
    recreate_secondary_objects(cur, fks, index_defs)
    reset_sequences(cur)
    report(progress, f"indexes and foreign keys rebuilt in {time.monotonic() - t:.1f}s")


def _analyze(conninfo: str) -> int:
    """ANALYZE outside the load transaction (as autovacuum would do soon anyway); the DB's size."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
