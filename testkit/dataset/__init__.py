"""Taiga-like dataset generator: a PostgreSQL database plus a media directory.

Why: comparing the old shell procedure with taiga-backup (and proving that a restore is
exact) needs data that looks like a real Taiga deployment -- jsonb-heavy history, markdown
text, mostly incompressible attachments with Taiga's path layout, a few awkward file
names -- that is reproducible from a seed and quick to generate at any size.
scale=1.0 gives roughly 1 GB of database (pg_database_size) and 1 GB of media.

Stdlib + psycopg only.  CLI:
    python -m testkit.dataset --conninfo "host=... dbname=..." --media DIR --scale 0.01
    python -m testkit.dataset --conninfo ... --media DIR --changes      # one day of changes

The package's modules, each with one job: schema.sql (the tables) and db (running it, COPY,
the bulk load's FK/index handling); common (sizes, table and column names); text (the prose);
rows and history (table rows); media (files and attachment plans); bulk_load (populate);
changes (apply_day_of_changes); verify (table_checksums, tree_digest); cli (main).
"""

from testkit.dataset.bulk_load import populate
from testkit.dataset.changes import apply_day_of_changes
from testkit.dataset.cli import main
from testkit.dataset.common import (
    ATTACH_COLS, BASE_COUNTS, CONTENT_TYPES, GB, HISTORY_COLS, ISSUE_COLS, ITEM_TABLES, MIN_COUNTS,
    ODD_FILENAMES, PROJECT_COLS, T0, T_SPAN, TABLES, TASK_COLS, US_COLS, USER_COLS, UTC,
)
from testkit.dataset.db import SCHEMA_SQL, create_schema
from testkit.dataset.verify import table_checksums, tree_digest

__all__ = [
    "ATTACH_COLS", "BASE_COUNTS", "CONTENT_TYPES", "GB", "HISTORY_COLS", "ISSUE_COLS", "ITEM_TABLES",
    "MIN_COUNTS", "ODD_FILENAMES", "PROJECT_COLS", "SCHEMA_SQL", "T0", "T_SPAN", "TABLES", "TASK_COLS",
    "US_COLS", "USER_COLS", "UTC", "apply_day_of_changes", "create_schema", "main", "populate",
    "table_checksums", "tree_digest",
]
