"""Where a night's new bytes come from: restic's data_added per table after one day of changes.

    python -m bench.growth --scale 0.3 [--fraction 0.01]

Why: the whole-database dump re-adds about half of itself to restic each night although only ~1 % of
the rows changed. This backs up every table's COPY output on its own - in heap order (what pg_dump
writes) and in primary-key order - before and after testkit.dataset's day of changes, so the table(s)
responsible and the effect of row order can be seen; and the whole dump as plain and as custom -Z0
for reference. Prints a markdown table; nothing is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT),):
    if p not in sys.path:
        sys.path.insert(0, p)

from testkit import dataset  # noqa: E402
from bench.lab import standalone_db  # noqa: E402

DB, USER, PASSWORD = "taiga", "taiga", "growth-pw"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.3)
    ap.add_argument("--fraction", type=float, default=0.01)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tb-growth-"))
    pg, conninfo, stats = standalone_db(work, args.scale, (DB, USER, PASSWORD))
    try:
        (work / "pw").write_text("growth\n")
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        env.update(PGPASSWORD=PASSWORD, PGHOST="127.0.0.1", PGPORT=str(pg.port), PGUSER=USER,
                   RESTIC_PASSWORD_FILE=str(work / "pw"), RESTIC_CACHE_DIR=str(work / "cache"))

        def backup(repo: str, producer: list[str]) -> tuple[int, int]:
            path = work / "repos" / repo
            if not (path / "config").exists():
                subprocess.run(["restic", "-r", str(path), "init", "-q"], env=env, check=True)
            p1 = subprocess.Popen(producer, stdout=subprocess.PIPE, env=env)
            out = subprocess.run(["restic", "-r", str(path), "backup", "--stdin", "--json"], stdin=p1.stdout,
                                 env=env, capture_output=True, check=True).stdout
            p1.stdout.close()
            if p1.wait() != 0:
                raise RuntimeError(f"{producer[0]} failed")
            summary = json.loads(out.splitlines()[-1])
            return summary["data_added"], summary["total_bytes_processed"]

        def copy(table: str, ordered: bool) -> list[str]:
            query = f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT" if ordered else f"COPY {table} TO STDOUT"
            return ["psql", "-X", "-q", "-d", DB, "-c", query]

        def night() -> dict:
            out = {}
            for table in dataset.TABLES:
                out[table] = {"heap": backup(f"heap-{table}", copy(table, False)),
                              "pk": backup(f"pk-{table}", copy(table, True))}
            out["whole dump, plain"] = {"heap": backup("plain", ["pg_dump", DB])}
            out["whole dump, custom -Z0"] = {"heap": backup("custom", ["pg_dump", "-Fc", "-Z0", DB])}
            return out

        night()
        changes = dataset.apply_day_of_changes(conninfo, str(work / "media"), seed=2, fraction=args.fraction)
        second = night()
        print(f"### restic data_added per table after one day of changes — scale {args.scale}, "
              f"fraction {args.fraction}\n")
        print(f"Database {stats['db_bytes'] / 1e6:.0f} MB; changes: inserted {changes['inserted']}, "
              f"updated {changes['updated']}, deleted {changes['deleted']}.\n")
        print("| table | COPY size | added, heap order (pg_dump's) | added, primary-key order |")
        print("|---|---|---|---|")
        for name, res in second.items():
            added, size = res["heap"]
            pk = res.get("pk")
            pk_text = f"{pk[0] / 1e6:.1f} MB ({100 * pk[0] / max(pk[1], 1):.0f} %)" if pk else "–"
            print(f"| {name} | {size / 1e6:.1f} MB | {added / 1e6:.1f} MB ({100 * added / max(size, 1):.0f} %) | "
                  f"{pk_text} |")
    finally:
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
