"""What every part of the dataset generator shares: sizes, table names, the time span, columns.

Why one module: the row generators, the bulk load, the day of changes and the CLI must agree on
these (a column list is the order of a generator's tuples; a table's minimum count keeps tiny
scales meaningful), so each is written once, here.
"""

from __future__ import annotations

import random
from array import array
from datetime import datetime, timedelta, timezone

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

# Column order of the tuples the row generators yield (COPY ... (columns) FROM STDIN).
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


class Items:
    """Per-item project and creation time, needed to generate consistent children."""

    def __init__(self):
        self.project = array("i")
        self.created = array("l")


def report(progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def count(table: str, scale: float) -> int:
    return max(MIN_COUNTS[table], round(BASE_COUNTS[table] * scale))


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)


def hex_bits(rng: random.Random, bits: int) -> str:
    return "%0*x" % (bits // 4, rng.getrandbits(bits))
