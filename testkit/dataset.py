"""Taiga-like dataset generator: a PostgreSQL database plus a media directory.

Why: comparing the old shell procedure with taiga-backup (and proving that a restore is
exact) needs data that looks like a real Taiga deployment -- jsonb-heavy history, markdown
text, mostly incompressible attachments with Taiga's path layout, a few awkward file
names -- that is reproducible from a seed and quick to generate at any size.
scale=1.0 gives roughly 1 GB of database (pg_database_size) and 1 GB of media.

Stdlib + psycopg only.  CLI:
    python -m testkit.dataset --conninfo "host=... dbname=..." --media DIR --scale 0.01
    python -m testkit.dataset --conninfo ... --media DIR --changes      # one day of changes
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import html
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from array import array
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

GB = 1_000_000_000

# Row counts at scale 1.0, calibrated so that pg_database_size is about 1 GB
# (see the report in the bench README).  The minimums keep tiny scales meaningful.
BASE_COUNTS = {
    "users_user": 20_000,
    "projects_project": 2_000,
    "userstories_userstory": 170_000,
    "tasks_task": 340_000,
    "issues_issue": 114_000,
    "history_historyentry": 570_000,
}
MIN_COUNTS = {
    "users_user": 5,
    "projects_project": 2,
    "userstories_userstory": 10,
    "tasks_task": 20,
    "issues_issue": 10,
    "history_historyentry": 40,
}

# Tables in dependency order (parents first).
TABLES = [
    "users_user",
    "projects_project",
    "userstories_userstory",
    "tasks_task",
    "issues_issue",
    "history_historyentry",
    "attachments_attachment",
]

# Django content type ids used by the generic attachment/history relations.
CONTENT_TYPES = {"userstories.userstory": 40, "tasks.task": 41, "issues.issue": 42}
ITEM_TABLES = {
    "userstories.userstory": "userstories_userstory",
    "tasks.task": "tasks_task",
    "issues.issue": "issues_issue",
}

T0 = int(datetime(2019, 1, 7, tzinfo=timezone.utc).timestamp())
T_SPAN = int(timedelta(days=5 * 365).total_seconds())
UTC = timezone.utc

# Names that tend to break shell pipelines; every dataset contains them as attachments.
ODD_FILENAMES = [
    "Sprint review notes (final).txt",  # spaces and parentheses
    "Übersicht – Straße 東京 🚀.md",  # non-ASCII, wide characters, emoji
    "-rf --no-preserve-root.txt",  # leading dash: looks like an option
    "the \"final\" version, it's v2.txt",  # both quote characters, no newline
    ".hidden notes.txt",  # dotfile: missed by a plain `rm -rf dir/*` / `*` glob
    "empty.txt",  # zero bytes
]

SCHEMA_SQL = """
CREATE TABLE users_user (
    id serial PRIMARY KEY,
    password varchar(128) NOT NULL,
    last_login timestamptz,
    is_superuser boolean NOT NULL,
    username varchar(255) NOT NULL UNIQUE,
    email varchar(255) NOT NULL UNIQUE,
    is_active boolean NOT NULL,
    full_name varchar(256) NOT NULL,
    color varchar(9) NOT NULL,
    bio text NOT NULL,
    photo varchar(500),
    date_joined timestamptz NOT NULL,
    lang varchar(20) NOT NULL,
    timezone varchar(63) NOT NULL,
    is_system boolean NOT NULL,
    uuid varchar(32) NOT NULL UNIQUE,
    accepted_terms boolean NOT NULL
);

CREATE TABLE projects_project (
    id serial PRIMARY KEY,
    name varchar(250) NOT NULL,
    slug varchar(250) NOT NULL UNIQUE,
    description text NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    is_private boolean NOT NULL,
    total_milestones integer,
    tags text[],
    is_backlog_activated boolean NOT NULL,
    is_kanban_activated boolean NOT NULL,
    is_issues_activated boolean NOT NULL,
    logo varchar(500),
    anon_permissions text[],
    public_permissions text[]
);

CREATE TABLE userstories_userstory (
    id serial PRIMARY KEY,
    ref bigint NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    assigned_to_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    status_id integer NOT NULL,
    subject text NOT NULL,
    description text NOT NULL,
    tags text[],
    is_closed boolean NOT NULL,
    is_blocked boolean NOT NULL,
    blocked_note text NOT NULL,
    backlog_order bigint NOT NULL,
    kanban_order bigint NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    finish_date timestamptz,
    due_date date,
    version integer NOT NULL,
    client_requirement boolean NOT NULL,
    team_requirement boolean NOT NULL,
    UNIQUE (project_id, ref)
);

CREATE TABLE tasks_task (
    id serial PRIMARY KEY,
    ref bigint NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    user_story_id integer REFERENCES userstories_userstory(id) DEFERRABLE INITIALLY DEFERRED,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    assigned_to_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    status_id integer NOT NULL,
    subject text NOT NULL,
    description text NOT NULL,
    tags text[],
    is_blocked boolean NOT NULL,
    blocked_note text NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    finished_date timestamptz,
    us_order bigint NOT NULL,
    taskboard_order bigint NOT NULL,
    is_iocaine boolean NOT NULL,
    version integer NOT NULL,
    UNIQUE (project_id, ref)
);

CREATE TABLE issues_issue (
    id serial PRIMARY KEY,
    ref bigint NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    assigned_to_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    status_id integer NOT NULL,
    severity_id integer NOT NULL,
    priority_id integer NOT NULL,
    type_id integer NOT NULL,
    subject text NOT NULL,
    description text NOT NULL,
    tags text[],
    is_blocked boolean NOT NULL,
    blocked_note text NOT NULL,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    finished_date timestamptz,
    due_date date,
    version integer NOT NULL,
    UNIQUE (project_id, ref)
);

CREATE TABLE history_historyentry (
    id varchar(255) PRIMARY KEY,
    "user" jsonb,
    created_at timestamptz NOT NULL,
    type smallint NOT NULL,
    is_snapshot boolean NOT NULL,
    key varchar(255) NOT NULL,
    diff jsonb,
    snapshot jsonb,
    "values" jsonb,
    comment text NOT NULL,
    comment_html text NOT NULL,
    delete_comment_date timestamptz,
    is_hidden boolean NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE attachments_attachment (
    id serial PRIMARY KEY,
    owner_id integer REFERENCES users_user(id) DEFERRABLE INITIALLY DEFERRED,
    created_date timestamptz NOT NULL,
    modified_date timestamptz NOT NULL,
    object_id integer NOT NULL CHECK (object_id >= 0),
    attached_file varchar(500) NOT NULL,
    is_deprecated boolean NOT NULL,
    description text NOT NULL,
    "order" integer NOT NULL,
    content_type_id integer NOT NULL,
    project_id integer NOT NULL REFERENCES projects_project(id) DEFERRABLE INITIALLY DEFERRED,
    name varchar(500) NOT NULL,
    size bigint NOT NULL,
    sha1 varchar(40) NOT NULL,
    from_comment boolean NOT NULL
);

CREATE INDEX users_user_full_name_idx ON users_user (full_name);
CREATE INDEX projects_project_owner_id_idx ON projects_project (owner_id);
CREATE INDEX userstories_userstory_project_id_idx ON userstories_userstory (project_id);
CREATE INDEX userstories_userstory_assigned_to_id_idx ON userstories_userstory (assigned_to_id);
CREATE INDEX tasks_task_project_id_idx ON tasks_task (project_id);
CREATE INDEX tasks_task_user_story_id_idx ON tasks_task (user_story_id);
CREATE INDEX issues_issue_project_id_idx ON issues_issue (project_id);
CREATE INDEX issues_issue_modified_date_idx ON issues_issue (modified_date);
CREATE INDEX history_historyentry_key_idx ON history_historyentry (key);
CREATE INDEX history_historyentry_key_like_idx ON history_historyentry (key varchar_pattern_ops);
CREATE INDEX history_historyentry_project_id_idx ON history_historyentry (project_id);
CREATE INDEX attachments_attachment_object_idx ON attachments_attachment (content_type_id, object_id);
CREATE INDEX attachments_attachment_project_id_idx ON attachments_attachment (project_id);
"""


def _report(progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _count(table: str, scale: float) -> int:
    return max(MIN_COUNTS[table], round(BASE_COUNTS[table] * scale))


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)


def _hex(rng: random.Random, bits: int) -> str:
    return "%0*x" % (bits // 4, rng.getrandbits(bits))


# --------------------------------------------------------------------------- text


_COMMON_WORDS = """
the of and to in is it for that on with as this be are not by at from or have an was but
can we should when after before user story task issue sprint backlog board ticket bug fix
feature release deploy server client login page button form field error message value list
project team member owner status review test build version update delete create change
add remove move open close done ready blocked waiting priority severity high low normal
api endpoint request response timeout database query index cache queue worker job backup
restore media file upload download attachment image export import migration config setting
please check again works expected actual steps reproduce browser mobile desktop screen layout
design mockup copy text label translation date time week month customer feedback support
""".split()

_UNICODE_WORDS = [
    "Übergabe", "naïve", "café", "façade", "señal", "Ångström", "Größe", "déjà",
    "日本語", "東京", "привет", "données", "😀", "✅", "→", "€", "½", "Zürich",
]


def _make_vocab(rng: random.Random, n_synthetic: int = 3000) -> list[str]:
    """Common words first (Zipf weights make them frequent), then made-up words."""
    syll = ["ka", "to", "ri", "ne", "mo", "sa", "lu", "pe", "di", "vo", "ga", "zi", "fe",
            "ber", "tan", "lor", "mis", "quen", "dra", "sol", "vin", "tur", "pla", "ex"]
    words = list(_COMMON_WORDS)
    seen = set(words)
    while len(words) < len(_COMMON_WORDS) + n_synthetic:
        w = "".join(rng.choice(syll) for _ in range(rng.randint(1, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    # sprinkle unicode words at mid-frequency ranks
    for i, w in enumerate(_UNICODE_WORDS):
        words.insert(60 + 37 * i, w)
    return words


class _Text:
    """Markdown-ish text built from a pool of pre-made sentences (Zipf-distributed words).

    Picking whole sentences keeps generation at C speed.  The pool grows with the scale
    (see _text_for) so that from scale ~0.2 on it is far larger than a compressor's window
    and dumps compress like prose (zstd about 3.2x through restic); at small scales the
    whole pool fits in the window and dumps compress better (about 5x at scale 0.01).
    """

    def __init__(self, seed: int, n_sentences: int):
        rng = random.Random(f"{seed}:corpus")
        vocab = _make_vocab(rng)
        cum = list(itertools.accumulate(1.0 / (i + 1) ** 1.05 for i in range(len(vocab))))
        words = rng.choices(vocab, cum_weights=cum, k=n_sentences * 12)
        pool = []
        pos = 0
        for _ in range(n_sentences):
            k = rng.randint(4, 20)
            ws = words[pos:pos + k]
            pos += k
            if pos >= len(words) - 20:
                pos = 0
            r = rng.random()
            if r < 0.04:
                ws.insert(rng.randrange(len(ws)), "`%s_%s()`" % (ws[0], ws[-1]))
            elif r < 0.06:
                ws.append("https://tree.taiga.example/%s/%d" % (ws[1], rng.randrange(10000)))
            s = " ".join(ws)
            s = s[:1].upper() + s[1:] + rng.choice(".....?!:")
            r = rng.random()
            if r < 0.05:
                s = "- " + s
            elif r < 0.07:
                s = "## " + s
            pool.append(s + ("\n\n" if rng.random() < 0.2 else " "))
        self.pool = pool
        self.avg = sum(map(len, pool)) / len(pool)
        self.words = vocab[:400]

    def text(self, rng: random.Random, length: int) -> str:
        if length <= 0:
            return ""
        k = max(1, round(length / self.avg))
        return "".join(rng.choices(self.pool, k=k)).rstrip()

    def rand_text(self, rng: random.Random, mean: float, empty: float = 0.0, cap: int = 60000) -> str:
        """Log-normal length around `mean` characters, empty with probability `empty`."""
        if empty and rng.random() < empty:
            return ""
        n = int(rng.lognormvariate(math.log(mean) - 0.5, 1.0))
        return self.text(rng, min(n, cap))

    def subject(self, rng: random.Random) -> str:
        s = rng.choice(self.pool).strip()
        return s[:140]

    def tags(self, rng: random.Random) -> list[str]:
        return [rng.choice(self.words) for _ in range(rng.choice((0, 0, 1, 1, 2, 3)))]


def _text_for(seed: int, scale: float) -> _Text:
    n = int(min(250_000, max(2_000, scale * 250_000)))
    return _Text(seed, n)


# --------------------------------------------------------------------------- media


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _attachment_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.70:
        return _log_uniform(rng, 4_000, 300_000)
    if r < 0.95:
        return _log_uniform(rng, 300_000, 3_000_000)
    return _log_uniform(rng, 3_000_000, 8_000_000)


def _taiga_path(prefix: str, rng: random.Random, filename: str) -> str:
    """Taiga stores uploads as <prefix>/<a>/<b>/<c>/<random hash>/<original name>."""
    h = _hex(rng, 256)
    return f"{prefix}/{h[0]}/{h[1]}/{h[2]}/{h[3:]}/{filename}"


_BIN_EXT = ["png", "png", "png", "jpg", "jpg", "pdf", "pdf", "zip", "docx", "xlsx", "mp4", "gif"]
_TXT_EXT = ["txt", "md", "csv", "log", "json"]


def _attachment_name(rng: random.Random, words: list[str], binary: bool) -> str:
    if binary:
        ext = rng.choice(_BIN_EXT)
        if ext == "png" and rng.random() < 0.5:
            d = _ts(T0 + rng.random() * T_SPAN)
            return d.strftime("Screenshot from %Y-%m-%d %H-%M-%S.png")
        return f"{rng.choice(words)}_{rng.choice(words)}-{rng.randrange(1000)}.{ext}"
    return f"{rng.choice(words)}-{rng.randrange(100)}.{rng.choice(_TXT_EXT)}"


class _MediaFile:
    __slots__ = ("path", "size", "kind", "content_seed", "sha1", "written")

    def __init__(self, path: str, size: int, kind: str, content_seed: str):
        self.path = path  # relative to media_dir
        self.size = size
        self.kind = kind  # "bin" | "text"
        self.content_seed = content_seed
        self.sha1 = None
        self.written = 0


def _write_media_file(media_dir: str, mf: _MediaFile, text: _Text) -> None:
    """Write one file; bytes derive from mf.content_seed so the dataset is reproducible.

    Binary content is pseudo-random (incompressible, not deduplicable across files);
    Random.randbytes runs at ~400 MB/s, comparable to os.urandom.
    """
    full = os.path.join(media_dir, mf.path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    h = hashlib.sha1()
    rng = random.Random(mf.content_seed)
    with open(full, "wb") as f:
        if mf.kind == "text":
            data = text.text(rng, mf.size).encode("utf-8")[: mf.size]
            # cut at a character boundary so the file stays valid UTF-8
            data = data.decode("utf-8", "ignore").encode("utf-8")
            f.write(data)
            h.update(data)
            mf.written = len(data)
        else:
            left = mf.size
            while left > 0:
                chunk = rng.randbytes(min(left, 1 << 20))
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
            mf.written = mf.size
    mf.sha1 = h.hexdigest()


class _MediaWriter(threading.Thread):
    """Writes the planned media files while the main thread loads the database."""

    def __init__(self, media_dir: str, files: list[_MediaFile], text: _Text):
        super().__init__(name="media-writer", daemon=True)
        self.media_dir, self.files, self.text = media_dir, files, text
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for mf in self.files:
                _write_media_file(self.media_dir, mf, self.text)
        except BaseException as e:  # re-raised by the main thread
            self.error = e

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


# --------------------------------------------------------------------------- DB helpers


def _copy_rows(cur, table: str, columns: list[str], rows, freeze: bool = False) -> int:
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


def _drop_secondary_objects(cur) -> tuple[list[tuple[str, str, str]], list[str]]:
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


def _recreate_secondary_objects(cur, fks, index_defs) -> None:
    cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for d in index_defs:
        cur.execute(d)
    for table, name, definition in fks:
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            sql.Identifier(table), sql.Identifier(name)) + sql.SQL(definition))


def _reset_sequences(cur) -> None:
    for t in TABLES:
        if t == "history_historyentry":
            continue
        cur.execute(sql.SQL(
            "SELECT setval(pg_get_serial_sequence({t}, 'id'), "
            "COALESCE((SELECT max(id) FROM {i}), 0) + 1, false)"
        ).format(t=sql.Literal(t), i=sql.Identifier(t)))


# --------------------------------------------------------------------------- schema


def create_schema(conninfo: str) -> None:
    """Create Taiga's main tables (simplified: no lookup tables such as statuses).

    Mirrors what matters for backups: serial ids with sequences, Django-style deferrable
    FKs, unique constraints, secondary indexes, jsonb and text[] columns.
    """
    with psycopg.connect(conninfo) as conn:
        conn.execute(SCHEMA_SQL)


# --------------------------------------------------------------------------- populate


class _Items:
    """Per-item project and creation time, needed to generate consistent children."""

    def __init__(self):
        self.project = array("i")
        self.created = array("l")


def _user_rows(rng, text, n, photo_paths):
    first = ["Ana", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hiro", "Inés", "Jon",
             "Kofi", "Lena", "Mateo", "Nora", "Olu", "Pia", "Quinn", "Rafael", "Sanne", "Tomás"]
    last = ["Smith", "García", "Müller", "Kowalski", "Nguyen", "O'Brien", "Rossi", "Tanaka",
            "Dubois", "Jensen", "Silva", "Novak", "Okafor", "Berg", "Ivanova", "Costa"]
    names = []
    rows = []
    for i in range(1, n + 1):
        fn, ln = rng.choice(first), rng.choice(last)
        full = f"{fn} {ln}"
        names.append(full)
        uname = f"{fn.lower()}.{ln.lower().replace(chr(39), '')}{i}"
        joined = T0 + rng.random() * T_SPAN * 0.5
        rows.append((
            i,
            "pbkdf2_sha256$260000$%s$%s" % (_hex(rng, 64), _hex(rng, 256)),
            _ts(joined + rng.random() * T_SPAN * 0.5) if rng.random() < 0.8 else None,
            i == 1,
            uname,
            f"{uname}@example.org",
            rng.random() < 0.95,
            full,
            "#%06x" % rng.getrandbits(24),
            text.rand_text(rng, 120, empty=0.6, cap=2000),
            photo_paths.get(i),
            _ts(joined),
            rng.choice(["en", "en", "de", "es", "fr"]),
            rng.choice(["Europe/Berlin", "UTC", "America/New_York", "Asia/Tokyo"]),
            False,
            _hex(rng, 128),
            True,
        ))
    return rows, names


USER_COLS = ["id", "password", "last_login", "is_superuser", "username", "email", "is_active",
             "full_name", "color", "bio", "photo", "date_joined", "lang", "timezone", "is_system",
             "uuid", "accepted_terms"]
PROJECT_COLS = ["id", "name", "slug", "description", "created_date", "modified_date", "owner_id",
                "is_private", "total_milestones", "tags", "is_backlog_activated",
                "is_kanban_activated", "is_issues_activated", "logo", "anon_permissions",
                "public_permissions"]
US_COLS = ["id", "ref", "project_id", "owner_id", "assigned_to_id", "status_id", "subject",
           "description", "tags", "is_closed", "is_blocked", "blocked_note", "backlog_order",
           "kanban_order", "created_date", "modified_date", "finish_date", "due_date", "version",
           "client_requirement", "team_requirement"]
TASK_COLS = ["id", "ref", "project_id", "user_story_id", "owner_id", "assigned_to_id", "status_id",
             "subject", "description", "tags", "is_blocked", "blocked_note", "created_date",
             "modified_date", "finished_date", "us_order", "taskboard_order", "is_iocaine", "version"]
ISSUE_COLS = ["id", "ref", "project_id", "owner_id", "assigned_to_id", "status_id", "severity_id",
              "priority_id", "type_id", "subject", "description", "tags", "is_blocked",
              "blocked_note", "created_date", "modified_date", "finished_date", "due_date", "version"]
HISTORY_COLS = ["id", "user", "created_at", "type", "is_snapshot", "key", "diff", "snapshot",
                "values", "comment", "comment_html", "delete_comment_date", "is_hidden", "project_id"]
ATTACH_COLS = ["id", "owner_id", "created_date", "modified_date", "object_id", "attached_file",
               "is_deprecated", "description", "order", "content_type_id", "project_id", "name",
               "size", "sha1", "from_comment"]


def _project_rows(rng, text, n, n_users, logo_paths):
    perms = ["view_project", "view_milestones", "view_us", "view_tasks", "view_issues", "view_wiki_pages"]
    for i in range(1, n + 1):
        name = "%s %s" % (rng.choice(text.words).capitalize(), rng.choice(text.words))
        created = T0 + rng.random() * T_SPAN * 0.3
        public = rng.random() < 0.3
        yield (
            i, name, "%s-%d" % (name.lower().replace(" ", "-"), i),
            text.rand_text(rng, 400, cap=5000),
            _ts(created), _ts(created + rng.random() * T_SPAN * 0.7),
            rng.randint(1, n_users), not public,
            rng.randrange(40) if rng.random() < 0.7 else None,
            text.tags(rng), True, rng.random() < 0.5, rng.random() < 0.8,
            logo_paths.get(i),
            perms[:3] if public else [], perms if public else [],
        )


@functools.lru_cache(maxsize=8)
def _project_weights(n_projects: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(n_projects)))


def _pick_projects(rng, n_projects: int, k: int) -> list[int]:
    """Project sizes are skewed (a few big projects), like real deployments."""
    return [p + 1 for p in rng.choices(range(n_projects), cum_weights=_project_weights(n_projects), k=k)]


def _created_after(rng, start: float) -> float:
    end = T0 + T_SPAN
    return start + rng.random() * max(0.0, end - start)


def _created_at(rng, i: int, last: int, start: float) -> float:
    """Ids grow with time (row i of `last` is created around i/last through the span)."""
    return max(T0 + T_SPAN * i / last, start) + rng.random() * 3 * 86400


def _maybe_user(rng, n_users, p_none=0.2):
    return None if rng.random() < p_none else rng.randint(1, n_users)


def _us_rows(rng, text, ids, projects, refs, n_users, items: _Items, proj_created, day=None):
    last = ids[-1] if len(ids) else 1
    for i, p in zip(ids, projects):
        refs[p] = refs.get(p, 0) + 1
        created = day + rng.random() * 86400 if day else _created_at(rng, i, last, proj_created.get(p, T0))
        items.project.append(p)
        items.created.append(int(created))
        closed = rng.random() < 0.6 and day is None
        yield (
            i, refs[p], p, rng.randint(1, n_users), _maybe_user(rng, n_users), rng.randint(1, 6),
            text.subject(rng), text.rand_text(rng, 900, empty=0.15), text.tags(rng),
            closed, rng.random() < 0.05, "", i * 100, i * 100,
            _ts(created), _ts(created + rng.random() * 86400 * 30),
            _ts(created + 86400 * rng.randint(1, 90)) if closed else None,
            None, rng.randint(1, 12), False, rng.random() < 0.1,
        )


def _task_rows(rng, text, ids, n_us, us_items: _Items, refs, n_users, n_projects, items: _Items,
               day=None, us_id_base=1):
    last = ids[-1] if len(ids) else 1
    first = ids[0] if len(ids) else 1
    for i in ids:
        if n_us and rng.random() < 0.8:
            # tasks belong to stories of about the same age
            k = int(n_us * (i - first) / max(1, last - first + 1)) + rng.randint(-20, 3)
            k = min(n_us - 1, max(0, k))
            us = us_id_base + k
            p = us_items.project[k]
            start = us_items.created[k]
        else:
            us = None
            p = _pick_projects(rng, n_projects, 1)[0]
            start = T0
        refs[p] = refs.get(p, 0) + 1
        created = day + rng.random() * 86400 if day else _created_at(rng, i, last, start)
        items.project.append(p)
        items.created.append(int(created))
        done = rng.random() < 0.7 and day is None
        yield (
            i, refs[p], p, us, rng.randint(1, n_users), _maybe_user(rng, n_users),
            rng.randint(1, 5), text.subject(rng), text.rand_text(rng, 450, empty=0.3),
            text.tags(rng), rng.random() < 0.03, "",
            _ts(created), _ts(created + rng.random() * 86400 * 10),
            _ts(created + 86400 * rng.randint(1, 30)) if done else None,
            i, i, rng.random() < 0.02, rng.randint(1, 8),
        )


def _issue_rows(rng, text, ids, projects, refs, n_users, items: _Items, proj_created, day=None):
    last = ids[-1] if len(ids) else 1
    for i, p in zip(ids, projects):
        refs[p] = refs.get(p, 0) + 1
        created = day + rng.random() * 86400 if day else _created_at(rng, i, last, proj_created.get(p, T0))
        items.project.append(p)
        items.created.append(int(created))
        done = rng.random() < 0.5 and day is None
        blocked = rng.random() < 0.04
        yield (
            i, refs[p], p, rng.randint(1, n_users), _maybe_user(rng, n_users), rng.randint(1, 7),
            rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 3),
            text.subject(rng), text.rand_text(rng, 900, empty=0.1), text.tags(rng),
            blocked, text.text(rng, 80) if blocked else "",
            _ts(created), _ts(created + rng.random() * 86400 * 20),
            _ts(created + 86400 * rng.randint(1, 60)) if done else None,
            None, rng.randint(1, 10),
        )


_STATUS_NAMES = {"1": "New", "2": "Ready", "3": "In progress", "4": "Ready for test", "5": "Done",
                 "6": "Archived"}


def _history_row(rng, text, key, project, created, user_id, user_name, kind=None):
    """One history entry: creation, change (jsonb diff + values), comment or snapshot."""
    user = json.dumps({"pk": user_id, "name": user_name}, ensure_ascii=False)
    r = rng.random() if kind is None else -1.0
    diff = snapshot = values = None
    comment = comment_html = ""
    is_snapshot = False
    htype = 1
    if kind == "create" or 0.0 <= r < 0.15:
        htype = 2
        is_snapshot = True
        snapshot = json.dumps({
            "ref": rng.randrange(1, 5000), "subject": text.subject(rng),
            "description": text.rand_text(rng, 700, empty=0.2),
            "description_html": "", "owner": user_id, "status": rng.randint(1, 6),
            "tags": text.tags(rng), "assigned_to": None, "attachments": [],
            "is_blocked": False, "blocked_note": "",
        }, ensure_ascii=False)
        diff = "{}"
        values = "{}"
    elif kind == "comment" or 0.15 <= r < 0.45:
        comment = text.rand_text(rng, 250, cap=8000)
        comment_html = "<p>" + html.escape(comment).replace("\n\n", "</p>\n<p>") + "</p>"
        diff = "{}"
        values = json.dumps({"users": {str(user_id): user_name}}, ensure_ascii=False)
    elif kind == "delete":
        htype = 3
        diff = "{}"
        values = "{}"
    else:
        field = rng.choice(["status", "status", "assigned_to", "subject", "description", "tags"])
        if field == "status":
            a, b = rng.sample(sorted(_STATUS_NAMES), 2)
            d = {"status": [int(a), int(b)]}
            v = {"status": {a: _STATUS_NAMES[a], b: _STATUS_NAMES[b]}}
        elif field == "assigned_to":
            d = {"assigned_to": [None, user_id]}
            v = {"users": {str(user_id): user_name}}
        elif field == "subject":
            d = {"subject": [text.subject(rng), text.subject(rng)]}
            v = {}
        elif field == "description":
            old = text.rand_text(rng, 600)
            d = {"description": [old, old + "\n\n" + text.rand_text(rng, 200)],
                 "description_diff": [None, text.text(rng, 120)]}
            v = {}
        else:
            d = {"tags": [text.tags(rng), text.tags(rng)]}
            v = {}
        diff = json.dumps(d, ensure_ascii=False)
        values = json.dumps(v, ensure_ascii=False)
    return (
        _hex(rng, 128), user, _ts(created), htype, is_snapshot, key, diff, snapshot, values,
        comment, comment_html, None, False, project,
    )


def _history_rows(rng, text, n, kinds_items, user_names):
    """kinds_items: list of (content type name, first id, _Items)."""
    n_users = len(user_names)
    sizes = [len(it.project) for _, _, it in kinds_items]
    cum = list(itertools.accumulate(sizes))
    total = cum[-1]
    for _ in range(n):
        x = rng.randrange(total)
        j = 0
        while x >= cum[j]:
            j += 1
        ct, first, it = kinds_items[j]
        k = x - (cum[j - 1] if j else 0)
        uid = rng.randint(1, n_users)
        yield _history_row(rng, text, f"{ct}:{first + k}", it.project[k],
                           _created_after(rng, it.created[k]), uid, user_names[uid - 1])


def _plan_attachments(rng, text, budget: int, start_id: int, kinds_items, n_users,
                      include_odd: bool, seed_tag: str, day=None, max_file: int | None = None):
    """Plan attachment files and their DB rows (row completed once the file is written)."""
    planned = []  # (row-without-size/sha1, _MediaFile)
    aid = start_id
    cts = [(ct, first, it) for ct, first, it in kinds_items if len(it.project)]

    def add(name, size, kind):
        nonlocal aid
        ct, first, it = rng.choices(cts, weights=[5, 3, 2][: len(cts)])[0]
        k = rng.randrange(len(it.project))
        created = day + rng.random() * 86400 if day else _created_after(rng, it.created[k])
        path = _taiga_path("attachments", rng, name)
        mf = _MediaFile(path, size, kind, f"{seed_tag}:{aid}:{path}")
        row = [aid, rng.randint(1, n_users), _ts(created), _ts(created), first + k, path, False,
               text.text(rng, 60) if rng.random() < 0.2 else "", 1, CONTENT_TYPES[ct],
               it.project[k], name, None, None, rng.random() < 0.3]
        planned.append((row, mf))
        aid += 1
        return size

    used = 0
    if include_odd:
        for name in ODD_FILENAMES:
            used += add(name, 0 if name == "empty.txt" else rng.randint(500, 4000), "text")
    while used < budget:
        binary = rng.random() < 0.85
        size = _attachment_size(rng) if binary else _log_uniform(rng, 1_000, 200_000)
        size = max(1, min(size, budget - used, max_file or size))
        name = _attachment_name(rng, text.words, binary)
        used += add(name, size, "bin" if binary else "text")
    return planned


def _attachment_row(row, mf: _MediaFile):
    row = list(row)
    row[12] = mf.written
    row[13] = mf.sha1
    return tuple(row)


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
    rng_of = lambda name: random.Random(f"{seed}:{name}")  # noqa: E731  independent streams
    text = _text_for(seed, scale)
    counts = {t: _count(t, scale) for t in BASE_COUNTS}
    n_users, n_projects = counts["users_user"], counts["projects_project"]
    media_budget = int(scale * GB)

    # ---- media plan: avatars, project logos, attachments (attachments need items, below)
    mrng = rng_of("media")
    avatar_files: list[_MediaFile] = []
    photo_paths: dict[int, str] = {}
    for uid in range(1, n_users + 1):
        if mrng.random() < 0.1:
            path = _taiga_path("user", mrng, mrng.choice(["avatar.png", "photo.jpg", "me.png"]))
            photo_paths[uid] = path
            avatar_files.append(_MediaFile(path, _log_uniform(mrng, 5_000, 60_000), "bin",
                                           f"{seed}:user:{uid}"))
    logo_paths: dict[int, str] = {}
    for pid in range(1, n_projects + 1):
        if mrng.random() < 0.2:
            path = _taiga_path("project", mrng, "logo.png")
            logo_paths[pid] = path
            avatar_files.append(_MediaFile(path, _log_uniform(mrng, 10_000, 100_000), "bin",
                                           f"{seed}:project:{pid}"))
    writer = _MediaWriter(media_dir, avatar_files, text)
    writer.start()

    stats_rows: dict[str, int] = {}
    with psycopg.connect(conninfo) as conn:
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")
        cur.execute("SELECT count(*) FROM users_user")
        if cur.fetchone()[0]:
            raise ValueError("populate needs an empty schema (tables already contain rows)")
        fks, index_defs = _drop_secondary_objects(cur)
        cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))

        def load(table, cols, rows):
            t = time.monotonic()
            stats_rows[table] = _copy_rows(cur, table, cols, rows, freeze=True)
            _report(progress, f"{table}: {stats_rows[table]} rows in {time.monotonic() - t:.1f}s")

        user_rows, user_names = _user_rows(rng_of("users"), text, n_users, photo_paths)
        load("users_user", USER_COLS, user_rows)
        prow = list(_project_rows(rng_of("projects"), text, n_projects, n_users, logo_paths))
        proj_created = {r[0]: r[4].timestamp() for r in prow}
        load("projects_project", PROJECT_COLS, prow)

        refs: dict[int, int] = {}
        us_items, task_items, issue_items = _Items(), _Items(), _Items()
        r = rng_of("userstories")
        n = counts["userstories_userstory"]
        load("userstories_userstory", US_COLS,
             _us_rows(r, text, range(1, n + 1), _pick_projects(r, n_projects, n), refs, n_users,
                      us_items, proj_created))
        n = counts["tasks_task"]
        load("tasks_task", TASK_COLS,
             _task_rows(rng_of("tasks"), text, range(1, n + 1), len(us_items.project), us_items,
                        refs, n_users, n_projects, task_items))
        r = rng_of("issues")
        n = counts["issues_issue"]
        load("issues_issue", ISSUE_COLS,
             _issue_rows(r, text, range(1, n + 1), _pick_projects(r, n_projects, n), refs,
                         n_users, issue_items, proj_created))

        kinds_items = [("userstories.userstory", 1, us_items), ("tasks.task", 1, task_items),
                       ("issues.issue", 1, issue_items)]
        avatar_bytes = sum(f.size for f in avatar_files)
        planned = _plan_attachments(rng_of("attachments"), text, max(0, media_budget - avatar_bytes),
                                    1, kinds_items, n_users, True, str(seed))
        writer.finish()  # avatars done; now the attachments, still in parallel with history
        writer = _MediaWriter(media_dir, [mf for _, mf in planned], text)
        writer.start()

        load("history_historyentry", HISTORY_COLS,
             _history_rows(rng_of("history"), text, counts["history_historyentry"], kinds_items,
                           user_names))
        t = time.monotonic()
        writer.finish()
        _report(progress, f"media: waited {time.monotonic() - t:.1f}s for the writer")
        load("attachments_attachment", ATTACH_COLS, (_attachment_row(r, mf) for r, mf in planned))

        t = time.monotonic()
        _recreate_secondary_objects(cur, fks, index_defs)
        _reset_sequences(cur)
        _report(progress, f"indexes and foreign keys rebuilt in {time.monotonic() - t:.1f}s")
    # ANALYZE outside the load transaction (as autovacuum would do soon anyway)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES))))
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]

    all_files = avatar_files + [mf for _, mf in planned]
    stats = {
        "db_rows": stats_rows,
        "db_bytes": db_size,
        "media_files": len(all_files),
        "media_bytes": sum(mf.written for mf in all_files),
        "seconds": round(time.monotonic() - t_start, 2),
    }
    _report(progress, f"done in {stats['seconds']}s")
    return stats


# --------------------------------------------------------------------------- a day of changes


def _media_bytes(media_dir: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(media_dir):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _items_from_db(cur, table: str) -> tuple[list[int], _Items]:
    cur.execute(sql.SQL("SELECT id, project_id, extract(epoch FROM created_date)::bigint FROM {} "
                        "ORDER BY id").format(sql.Identifier(table)))
    ids, it = [], _Items()
    for i, p, c in cur:
        ids.append(i)
        it.project.append(p)
        it.created.append(c)
    return ids, it


def _recent_index(rng: random.Random, n: int) -> int:
    """Mostly recent items (the current sprint) get touched: 80% within the newest 10%."""
    if rng.random() < 0.8:
        return n - 1 - rng.randrange(max(1, n // 10))
    return rng.randrange(n)


def _reserve_ids(cur, table: str, n: int) -> list[int]:
    cur.execute(sql.SQL("SELECT nextval(pg_get_serial_sequence({}, 'id')) FROM generate_series(1, %s)")
                .format(sql.Literal(table)), (n,))
    return [r[0] for r in cur.fetchall()]


def apply_day_of_changes(conninfo: str, media_dir: str, seed: int = 2, fraction: float = 0.01) -> dict:
    """Simulate one working day on an existing dataset (as created by populate).

    New user stories/tasks/issues (~fraction of rows) with history, comments and changes on
    existing items, updates of existing rows, a few deletions (tasks/issues and their
    attachments), new attachment files worth ~fraction of the media bytes, plus two deleted
    and two rewritten media files.  Used to measure incremental backups and to make sure a
    restore really goes back in time.  Deterministic for the same starting state and seed.
    """
    rng = random.Random(f"{seed}:day")
    t_start = time.monotonic()
    inserted: dict[str, int] = {}
    updated: dict[str, int] = {}
    deleted: dict[str, int] = {}
    with psycopg.connect(conninfo) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM history_historyentry")
        n_hist = cur.fetchone()[0]
        cur.execute("SELECT extract(epoch FROM date_trunc('day', max(created_at)))::bigint "
                    "+ 86400 + 8 * 3600 FROM history_historyentry")
        day = cur.fetchone()[0] or (T0 + T_SPAN)
        scale_guess = max(1e-4, n_hist / BASE_COUNTS["history_historyentry"])
        text = _text_for(seed, min(scale_guess, 0.05))
        cur.execute("SELECT id, full_name FROM users_user ORDER BY id")
        users = cur.fetchall()
        user_names = [u[1] for u in users]
        n_users = users[-1][0]  # ids are dense (1..n) in generated data
        cur.execute("SELECT max(id) FROM projects_project")
        n_projects = cur.fetchone()[0]
        cur.execute("""SELECT project_id, max(ref) FROM (
                           SELECT project_id, ref FROM userstories_userstory UNION ALL
                           SELECT project_id, ref FROM tasks_task UNION ALL
                           SELECT project_id, ref FROM issues_issue) s GROUP BY project_id""")
        refs = dict(cur.fetchall())
        existing = {t: _items_from_db(cur, t) for t in ITEM_TABLES.values()}

        # ---- new items
        new_items = {t: _Items() for t in ITEM_TABLES.values()}
        n_new = {t: math.ceil(len(existing[t][0]) * fraction) for t in ITEM_TABLES.values()}
        new_ids = {t: _reserve_ids(cur, t, n) for t, n in n_new.items()}
        t = "userstories_userstory"
        inserted[t] = _copy_rows(cur, t, US_COLS, _us_rows(
            rng, text, new_ids[t], _pick_projects(rng, n_projects, n_new[t]), refs, n_users,
            new_items[t], {}, day=day))
        # new tasks hang below the new stories (ids are contiguous from nextval)
        t = "tasks_task"
        us_ids = new_ids["userstories_userstory"]
        inserted[t] = _copy_rows(cur, t, TASK_COLS, _task_rows(
            rng, text, new_ids[t], len(us_ids), new_items["userstories_userstory"], refs, n_users,
            n_projects, new_items[t], day=day, us_id_base=us_ids[0] if us_ids else 1))
        t = "issues_issue"
        inserted[t] = _copy_rows(cur, t, ISSUE_COLS, _issue_rows(
            rng, text, new_ids[t], _pick_projects(rng, n_projects, n_new[t]), refs, n_users,
            new_items[t], {}, day=day))

        # ---- history: creation entries for the new items, activity on old and new ones
        def hist():
            for ct, t in ITEM_TABLES.items():
                for i, p, c in zip(new_ids[t], new_items[t].project, new_items[t].created):
                    uid = rng.randint(1, n_users)
                    yield _history_row(rng, text, f"{ct}:{i}", p, c, uid, user_names[uid - 1],
                                       kind="create")
            pool = []
            for ct, t in ITEM_TABLES.items():
                ids, it = existing[t]
                pool.extend((ct, ids[k], it.project[k]) for k in
                            (_recent_index(rng, len(ids)) for _ in range(max(1, len(ids) // 50))))
            for _ in range(math.ceil(n_hist * fraction)):
                ct, i, p = rng.choice(pool)
                uid = rng.randint(1, n_users)
                yield _history_row(rng, text, f"{ct}:{i}", p, day + rng.random() * 86400, uid,
                                   user_names[uid - 1])

        inserted["history_historyentry"] = _copy_rows(cur, "history_historyentry", HISTORY_COLS, hist())

        # ---- updates of existing rows
        for t in ITEM_TABLES.values():
            ids = existing[t][0]
            want = min(len(ids), math.ceil(len(ids) * fraction / 2))
            chosen_set: set[int] = set()
            while len(chosen_set) < want:
                chosen_set.add(ids[_recent_index(rng, len(ids))])
            chosen = sorted(chosen_set)
            descs = [text.rand_text(rng, 900) for _ in chosen]
            times = [_ts(day + rng.random() * 86400) for _ in chosen]
            cur.execute(sql.SQL(
                "UPDATE {t} SET description = v.d, modified_date = v.m, version = {t}.version + 1 "
                "FROM unnest(%s::int[], %s::text[], %s::timestamptz[]) AS v(id, d, m) "
                "WHERE {t}.id = v.id").format(t=sql.Identifier(t)), (chosen, descs, times))
            updated[t] = cur.rowcount
        cur.execute("UPDATE users_user SET last_login = %s WHERE id = ANY(%s)",
                    (_ts(day + 3600), [u[0] for u in rng.sample(users, min(len(users), 5))]))
        updated["users_user"] = cur.rowcount

        # ---- deletions: a few tasks and issues, with their attachments and a history entry
        files_to_delete: list[str] = []
        for ct, t in (("tasks.task", "tasks_task"), ("issues.issue", "issues_issue")):
            ids, it = existing[t]
            k = min(len(ids) - 1, max(1, round(len(ids) * fraction / 20)))
            victims = sorted(rng.sample(ids, k))
            cur.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s) RETURNING id, project_id")
                        .format(sql.Identifier(t)), (victims,))
            gone = cur.fetchall()
            deleted[t] = len(gone)
            cur.execute("DELETE FROM attachments_attachment WHERE content_type_id = %s "
                        "AND object_id = ANY(%s) RETURNING attached_file",
                        (CONTENT_TYPES[ct], victims))
            files_to_delete += [r[0] for r in cur.fetchall()]
            _copy_rows(cur, "history_historyentry", HISTORY_COLS, (
                _history_row(rng, text, f"{ct}:{i}", p, day + 80000, 1, user_names[0], kind="delete")
                for i, p in gone))
            inserted["history_historyentry"] += len(gone)

        # ---- media: two more deleted attachments, two rewritten ones, new uploads
        cur.execute("SELECT id, attached_file, size FROM attachments_attachment "
                    "WHERE size > 0 ORDER BY id")
        att = cur.fetchall()
        picks = rng.sample(att, min(len(att), 4))
        removed, modified = picks[:2], picks[2:]
        cur.execute("DELETE FROM attachments_attachment WHERE id = ANY(%s)", ([a[0] for a in removed],))
        deleted["attachments_attachment"] = cur.rowcount + len(files_to_delete)
        files_to_delete += [a[1] for a in removed]
        for path in files_to_delete:
            try:
                os.unlink(os.path.join(media_dir, path))
            except FileNotFoundError:
                pass
        for aid, path, size in modified:
            mf = _MediaFile(path, size, "bin" if not path.endswith(tuple(_TXT_EXT)) else "text",
                            f"{seed}:modified:{aid}:{day}")
            _write_media_file(media_dir, mf, text)
            cur.execute("UPDATE attachments_attachment SET size = %s, sha1 = %s, modified_date = %s "
                        "WHERE id = %s", (mf.written, mf.sha1, _ts(day + 7200), aid))
        updated["attachments_attachment"] = len(modified)

        budget = int(_media_bytes(media_dir) * fraction)
        kinds_items = [(ct, new_ids[t][0] if new_ids[t] else 1, new_items[t])
                       for ct, t in ITEM_TABLES.items()]
        planned = _plan_attachments(rng, text, budget, _reserve_ids(cur, "attachments_attachment", 1)[0],
                                    kinds_items, n_users, False, f"{seed}:day:{day}", day=day,
                                    max_file=max(4_000, budget // 4))  # several uploads a day
        if planned:
            _reserve_ids(cur, "attachments_attachment", len(planned) - 1)
        for _, mf in planned:
            _write_media_file(media_dir, mf, text)
        inserted["attachments_attachment"] = _copy_rows(
            cur, "attachments_attachment", ATTACH_COLS, (_attachment_row(r, mf) for r, mf in planned))

    return {
        "inserted": inserted,
        "updated": updated,
        "deleted": deleted,
        "media_files_added": len(planned),
        "media_bytes_added": sum(mf.written for _, mf in planned),
        "media_files_deleted": len(files_to_delete),
        "media_files_modified": len(modified),
        "seconds": round(time.monotonic() - t_start, 2),
    }


# --------------------------------------------------------------------------- verification


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


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testkit.dataset", description=__doc__.split("\n\n")[0])
    ap.add_argument("--conninfo", required=True, help="libpq connection string of the (empty) database")
    ap.add_argument("--media", required=True, help="media directory (must be empty unless --changes)")
    ap.add_argument("--scale", type=float, default=0.01, help="1.0 = ~1 GB DB + ~1 GB media")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--changes", action="store_true", help="apply one day of changes instead")
    ap.add_argument("--fraction", type=float, default=0.01, help="size of the day of changes")
    ap.add_argument("--no-schema", action="store_true", help="tables exist already")
    ap.add_argument("--checksums", action="store_true", help="also print table checksums")
    a = ap.parse_args(argv)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if a.changes:
        stats = apply_day_of_changes(a.conninfo, a.media, seed=2 if a.seed is None else a.seed,
                                     fraction=a.fraction)
    else:
        if not a.no_schema:
            create_schema(a.conninfo)
        stats = populate(a.conninfo, a.media, scale=a.scale, seed=1 if a.seed is None else a.seed,
                         progress=say)
    if a.checksums:
        stats["checksums"] = table_checksums(a.conninfo)
    print(json.dumps(stats, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
