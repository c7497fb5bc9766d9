"""One working day on an existing dataset (apply_day_of_changes), for incremental backups.

Why these steps in this order: they share one random stream ("<seed>:day"), so the order in
which they draw from it *is* the dataset; it is the order a day's work would leave traces in:
new items, their history and the day's activity, edits of (mostly recent) rows, a few
deletions, then the media: deleted and rewritten files, new uploads.  Every step reads what it
needs from the database first (the day after the newest history entry), so a day can follow a
populate or another day.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time

import psycopg
from psycopg import sql

from testkit.dataset.common import (
    ATTACH_COLS, BASE_COUNTS, CONTENT_TYPES, HISTORY_COLS, ISSUE_COLS, ITEM_TABLES, T0, T_SPAN,
    TASK_COLS, US_COLS, Items, ts,
)
from testkit.dataset.db import copy_rows, items_from_db, reserve_ids
from testkit.dataset.history import history_row
from testkit.dataset.media import (
    TXT_EXT, MediaFile, attachment_row, media_bytes, plan_attachments, write_media_file,
)
from testkit.dataset.rows import issue_rows, pick_projects, task_rows, us_rows
from testkit.dataset.text import text_for


def apply_day_of_changes(conninfo: str, media_dir: str, seed: int = 2, fraction: float = 0.01) -> dict:
    """Simulate one working day on an existing dataset (as created by populate).

    New user stories/tasks/issues (~fraction of rows) with history, comments and changes on
    existing items, updates of existing rows, a few deletions (tasks/issues and their
    attachments), new attachment files worth ~fraction of the media bytes, plus two deleted
    and two rewritten media files.  Used to measure incremental backups and to make sure a
    restore really goes back in time.  Deterministic for the same starting state and seed.
    """
    t_start = time.monotonic()
    with psycopg.connect(conninfo) as conn:
        d = _Day(conn.cursor(), media_dir, seed, fraction)
        _insert_new_items(d)
        d.inserted["history_historyentry"] = copy_rows(
            d.cur, "history_historyentry", HISTORY_COLS,
            itertools.chain(_creation_entries(d), _activity_entries(d)))
        for t in ITEM_TABLES.values():
            _update_items(d, t)
        _update_users(d)
        files_to_delete: list[str] = []
        for ct in ("tasks.task", "issues.issue"):
            files_to_delete += _delete_items(d, ct)
        modified = _change_media_files(d, files_to_delete)
        planned = _upload_attachments(d)
    return {
        "inserted": d.inserted,
        "updated": d.updated,
        "deleted": d.deleted,
        "media_files_added": len(planned),
        "media_bytes_added": sum(mf.written for _, mf in planned),
        "media_files_deleted": len(files_to_delete),
        "media_files_modified": len(modified),
        "seconds": round(time.monotonic() - t_start, 2),
    }


class _Day:
    """The day's state as read from the database, its random stream and what it has done."""

    def __init__(self, cur, media_dir: str, seed: int, fraction: float):
        self.rng = random.Random(f"{seed}:day")
        self.cur, self.media_dir, self.seed, self.fraction = cur, media_dir, seed, fraction
        self.inserted: dict[str, int] = {}
        self.updated: dict[str, int] = {}
        self.deleted: dict[str, int] = {}
        cur.execute("SELECT count(*) FROM history_historyentry")
        self.n_hist = cur.fetchone()[0]
        cur.execute("SELECT extract(epoch FROM date_trunc('day', max(created_at)))::bigint "
                    "+ 86400 + 8 * 3600 FROM history_historyentry")
        self.day = cur.fetchone()[0] or (T0 + T_SPAN)  # 08:00 the day after the newest entry
        scale_guess = max(1e-4, self.n_hist / BASE_COUNTS["history_historyentry"])
        self.text = text_for(seed, min(scale_guess, 0.05))
        cur.execute("SELECT id, full_name FROM users_user ORDER BY id")
        self.users = cur.fetchall()
        self.user_names = [u[1] for u in self.users]
        self.n_users = self.users[-1][0]  # ids are dense (1..n) in generated data
        cur.execute("SELECT max(id) FROM projects_project")
        self.n_projects = cur.fetchone()[0]
        cur.execute("""SELECT project_id, max(ref) FROM (
                           SELECT project_id, ref FROM userstories_userstory UNION ALL
                           SELECT project_id, ref FROM tasks_task UNION ALL
                           SELECT project_id, ref FROM issues_issue) s GROUP BY project_id""")
        self.refs = dict(cur.fetchall())
        self.existing = {t: items_from_db(cur, t) for t in ITEM_TABLES.values()}
        self.new_items = {t: Items() for t in ITEM_TABLES.values()}
        self.new_ids: dict[str, list[int]] = {}

    def random_user(self) -> tuple[int, str]:
        uid = self.rng.randint(1, self.n_users)
        return uid, self.user_names[uid - 1]

    def time_today(self) -> float:
        return self.day + self.rng.random() * 86400


def _recent_index(rng: random.Random, n: int) -> int:
    """Mostly recent items (the current sprint) get touched: 80% within the newest 10%."""
    if rng.random() < 0.8:
        return n - 1 - rng.randrange(max(1, n // 10))
    return rng.randrange(n)


def _insert_new_items(d: _Day) -> None:
    """About `fraction` new stories, tasks and issues; their ids are reserved up front."""
    n_new = {t: math.ceil(len(d.existing[t][0]) * d.fraction) for t in ITEM_TABLES.values()}
    d.new_ids = {t: reserve_ids(d.cur, t, n) for t, n in n_new.items()}
    t = "userstories_userstory"
    d.inserted[t] = copy_rows(d.cur, t, US_COLS, us_rows(
        d.rng, d.text, d.new_ids[t], pick_projects(d.rng, d.n_projects, n_new[t]), d.refs, d.n_users,
        d.new_items[t], {}, day=d.day))
    # new tasks hang below the new stories (ids are contiguous from nextval)
    t = "tasks_task"
    us_ids = d.new_ids["userstories_userstory"]
    d.inserted[t] = copy_rows(d.cur, t, TASK_COLS, task_rows(
        d.rng, d.text, d.new_ids[t], len(us_ids), d.new_items["userstories_userstory"], d.refs,
        d.n_users, d.n_projects, d.new_items[t], day=d.day, us_id_base=us_ids[0] if us_ids else 1))
    t = "issues_issue"
    d.inserted[t] = copy_rows(d.cur, t, ISSUE_COLS, issue_rows(
        d.rng, d.text, d.new_ids[t], pick_projects(d.rng, d.n_projects, n_new[t]), d.refs, d.n_users,
        d.new_items[t], {}, day=d.day))


def _creation_entries(d: _Day):
    """A "create" history entry for each new item."""
    for ct, t in ITEM_TABLES.items():
        for i, p, c in zip(d.new_ids[t], d.new_items[t].project, d.new_items[t].created):
            uid, name = d.random_user()
            yield history_row(d.rng, d.text, f"{ct}:{i}", p, c, uid, name, kind="create")


def _activity_entries(d: _Day):
    """About `fraction` more history, on a pool of (mostly recent) existing items.

    A generator chained after _creation_entries: the pool is drawn only once those are done,
    as the one random stream requires.
    """
    pool = []
    for ct, t in ITEM_TABLES.items():
        ids, it = d.existing[t]
        pool.extend((ct, ids[k], it.project[k]) for k in
                    (_recent_index(d.rng, len(ids)) for _ in range(max(1, len(ids) // 50))))
    for _ in range(math.ceil(d.n_hist * d.fraction)):
        ct, i, p = d.rng.choice(pool)
        uid, name = d.random_user()
        yield history_row(d.rng, d.text, f"{ct}:{i}", p, d.time_today(), uid, name)


def _update_items(d: _Day, t: str) -> None:
    """New descriptions for about fraction/2 of an item table's (mostly recent) rows."""
    ids = d.existing[t][0]
    want = min(len(ids), math.ceil(len(ids) * d.fraction / 2))
    chosen_set: set[int] = set()
    while len(chosen_set) < want:
        chosen_set.add(ids[_recent_index(d.rng, len(ids))])
    chosen = sorted(chosen_set)
    descs = [d.text.rand_text(d.rng, 900) for _ in chosen]
    times = [ts(d.time_today()) for _ in chosen]
    d.cur.execute(sql.SQL(
        "UPDATE {t} SET description = v.d, modified_date = v.m, version = {t}.version + 1 "
        "FROM unnest(%s::int[], %s::text[], %s::timestamptz[]) AS v(id, d, m) "
        "WHERE {t}.id = v.id").format(t=sql.Identifier(t)), (chosen, descs, times))
    d.updated[t] = d.cur.rowcount


def _update_users(d: _Day) -> None:
    """Five users log in."""
    d.cur.execute("UPDATE users_user SET last_login = %s WHERE id = ANY(%s)",
                  (ts(d.day + 3600), [u[0] for u in d.rng.sample(d.users, min(len(d.users), 5))]))
    d.updated["users_user"] = d.cur.rowcount


def _delete_items(d: _Day, ct: str) -> list[str]:
    """Delete a few items of one kind with their attachment rows and a "delete" history entry;
    returns the attachments' files (removed from the media directory later)."""
    t = ITEM_TABLES[ct]
    ids, _ = d.existing[t]
    k = min(len(ids) - 1, max(1, round(len(ids) * d.fraction / 20)))
    victims = sorted(d.rng.sample(ids, k))
    d.cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s) RETURNING id, project_id")
                  .format(sql.Identifier(t)), (victims,))
    gone = d.cur.fetchall()
    d.deleted[t] = len(gone)
    d.cur.execute("DELETE FROM attachments_attachment WHERE content_type_id = %s "
                  "AND object_id = ANY(%s) RETURNING attached_file",
                  (CONTENT_TYPES[ct], victims))
    files = [r[0] for r in d.cur.fetchall()]
    copy_rows(d.cur, "history_historyentry", HISTORY_COLS, (
        history_row(d.rng, d.text, f"{ct}:{i}", p, d.day + 80000, 1, d.user_names[0], kind="delete")
        for i, p in gone))
    d.inserted["history_historyentry"] += len(gone)
    return files


def _change_media_files(d: _Day, files_to_delete: list[str]) -> list[tuple]:
    """Two more attachments deleted, two rewritten in place; the deleted items' files removed.

    Extends files_to_delete with the two; returns the rewritten attachments (id, path, size).
    """
    d.cur.execute("SELECT id, attached_file, size FROM attachments_attachment "
                  "WHERE size > 0 ORDER BY id")
    att = d.cur.fetchall()
    picks = d.rng.sample(att, min(len(att), 4))
    removed, modified = picks[:2], picks[2:]
    d.cur.execute("DELETE FROM attachments_attachment WHERE id = ANY(%s)", ([a[0] for a in removed],))
    d.deleted["attachments_attachment"] = d.cur.rowcount + len(files_to_delete)
    files_to_delete += [a[1] for a in removed]
    for path in files_to_delete:
        try:
            os.unlink(os.path.join(d.media_dir, path))
        except FileNotFoundError:
            pass
    for aid, path, size in modified:
        mf = MediaFile(path, size, "bin" if not path.endswith(tuple(TXT_EXT)) else "text",
                       f"{d.seed}:modified:{aid}:{d.day}")
        write_media_file(d.media_dir, mf, d.text)
        d.cur.execute("UPDATE attachments_attachment SET size = %s, sha1 = %s, modified_date = %s "
                      "WHERE id = %s", (mf.written, mf.sha1, ts(d.day + 7200), aid))
    d.updated["attachments_attachment"] = len(modified)
    return modified


def _upload_attachments(d: _Day) -> list:
    """New uploads worth about `fraction` of the media bytes, on the day's new items."""
    budget = int(media_bytes(d.media_dir) * d.fraction)
    kinds_items = [(ct, d.new_ids[t][0] if d.new_ids[t] else 1, d.new_items[t])
                   for ct, t in ITEM_TABLES.items()]
    planned = plan_attachments(d.rng, d.text, budget, reserve_ids(d.cur, "attachments_attachment", 1)[0],
                               kinds_items, d.n_users, False, f"{d.seed}:day:{d.day}", day=d.day,
                               max_file=max(4_000, budget // 4))  # several uploads a day
    if planned:
        reserve_ids(d.cur, "attachments_attachment", len(planned) - 1)
    for _, mf in planned:
        write_media_file(d.media_dir, mf, d.text)
    d.inserted["attachments_attachment"] = copy_rows(
        d.cur, "attachments_attachment", ATTACH_COLS, (attachment_row(r, mf) for r, mf in planned))
    return planned
