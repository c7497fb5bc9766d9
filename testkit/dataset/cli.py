"""Taiga-like dataset generator: a PostgreSQL database plus a media directory.

The command line of testkit.dataset (python -m testkit.dataset --help): create and fill a
database and media directory, or apply one day of changes to them, and print the statistics
(and, with --checksums, the tables' fingerprints) as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from testkit.dataset.bulk_load import populate
from testkit.dataset.changes import apply_day_of_changes
from testkit.dataset.db import create_schema
from testkit.dataset.verify import table_checksums


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
