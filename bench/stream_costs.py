"""What the incremental night's database stream costs, part by part: pg_dump alone, restic alone on
the same stream, and the two piped as the night runs them.

    python -m bench.stream_costs --scale 1.0 [--repeat 3] [--json docs/performance-stream.json]

Why: the incremental night is almost all the full plain dump of a database that changed by 1 %, and
restic reading it again (docs/performance.md). Whether that night can be much faster without giving
up the plain dump the old restore reads (`restic dump latest stdin | psql`) depends on which side of
the pipe is the bottleneck: pg_dump (the server formatting every row as COPY text, one process), or
restic (chunking, hashing and compressing the stream). This measures each on the same bytes.

Night 1 puts a full dump into two repositories (restic's default compression, and compression
off); a day of changes (testkit.dataset) follows; then, `--repeat` rounds in alternating order, each
on a fresh copy of the night-1 repository so every run is the same incremental night:

- `pg_dump > /dev/null` (the dump alone), and `pg_dump > file` (its bytes for the next two);
- `restic backup --stdin < file`, compression auto and off (restic alone on the stream);
- `pg_dump | restic backup --stdin` (the pipeline, as the old procedure and the worker run it);
- `restic snapshots` (a restic start: key derivation, index load - the fixed cost of one run).

pg_dump runs with the old procedure's argv (`--serializable-deferrable`, plain). Prints a markdown
table; `--json` writes every raw number. A script, not a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import MB, log  # noqa: E402
from bench.lab import standalone_db  # noqa: E402
from bench.probes import busy_since, cpu_busy  # noqa: E402
from testkit import dataset  # noqa: E402

DB, USER, PASSWORD = "taiga", "taiga", "stream-costs-pw"
REPOS = {"auto": [], "off": ["--compression", "off"]}  # repository -> restic backup flags


class Bench:
    """The cluster, the environment and the repositories of one run."""

    def __init__(self, work: Path, port: int):
        self.work = work
        (work / "pw").write_text("stream-costs\n")
        self.env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        self.env.update(PGPASSWORD=PASSWORD, PGHOST="127.0.0.1", PGPORT=str(port), PGUSER=USER,
                        RESTIC_PASSWORD_FILE=str(work / "pw"))
        self.dump_argv = ["pg_dump", "--serializable-deferrable", DB]

    def restic(self, repo: Path, *args: str, stdin=None) -> dict:
        """One restic run on `repo` with its own cache; its last JSON line (the summary), if any."""
        env = {**self.env, "RESTIC_REPOSITORY": str(repo), "RESTIC_CACHE_DIR": str(repo) + ".cache"}
        out = subprocess.run(["restic", *args], stdin=stdin, env=env, capture_output=True, check=True).stdout
        lines = [line for line in out.splitlines() if line.startswith(b"{")]
        return json.loads(lines[-1]) if lines else {}

    def night1(self) -> None:
        for name, flags in REPOS.items():
            base = self.work / f"night1-{name}"
            self.restic(base, "init")
            self.piped(base, flags)

    def copy(self, name: str) -> Path:
        """A fresh copy of the night-1 repository (and its cache): every run is the same night 2."""
        dest = self.work / f"run-{name}"
        for suffix in ("", ".cache"):
            shutil.rmtree(str(dest) + suffix, ignore_errors=True)
            src = Path(str(self.work / f"night1-{name}") + suffix)
            if src.exists():
                shutil.copytree(src, str(dest) + suffix)
        return dest

    def piped(self, repo: Path, flags: list[str]) -> dict:
        dump = subprocess.Popen(self.dump_argv, stdout=subprocess.PIPE, env=self.env)
        try:
            summary = self.restic(repo, "backup", "--stdin", "--json", "--host", "bench", *flags, stdin=dump.stdout)
        finally:
            dump.stdout.close()
        if dump.wait() != 0:
            raise RuntimeError("pg_dump failed")
        return summary


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, fraction of both cores busy, fn's result)."""
    busy0 = cpu_busy()
    t0 = time.monotonic()
    result = fn()
    return round(time.monotonic() - t0, 3), busy_since(busy0), result


def one_round(b: Bench, dump_file: Path) -> dict:
    """Every measurement once, on the same database state."""
    out = {}

    def to(path: str):
        with open(path, "wb") as f:
            subprocess.run(b.dump_argv, stdout=f, env=b.env, check=True)

    out["pg_dump > /dev/null"] = timed(lambda: to(os.devnull))[:2]
    out["pg_dump > file"] = timed(lambda: to(str(dump_file)))[:2]
    for name, flags in REPOS.items():
        repo = b.copy(name)
        with open(dump_file, "rb") as f:
            wall, busy, s = timed(lambda: b.restic(repo, "backup", "--stdin", "--json", "--host", "bench", *flags,
                                                   stdin=f))
        out[f"restic --stdin < file, compression {name}"] = (wall, busy, s.get("data_added"))
    repo = b.copy("auto")
    wall, busy, s = timed(lambda: b.piped(repo, []))
    out["pg_dump | restic --stdin (the night)"] = (wall, busy, s.get("data_added"))
    out["restic snapshots (one restic start)"] = timed(lambda: b.restic(repo, "snapshots", "--json"))[:2]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_costs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the raw numbers here")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tb-stream-"))
    pg, conninfo, stats = standalone_db(work, args.scale, (DB, USER, PASSWORD))
    try:
        b = Bench(work, pg.port)
        log("night 1: a full dump into each repository ...")
        b.night1()
        changes = dataset.apply_day_of_changes(conninfo, str(work / "media"), seed=2, fraction=args.fraction)
        rounds = []
        for n in range(args.repeat):
            log(f"night 2, round {n + 1} of {args.repeat} ...")
            rounds.append(one_round(b, work / "dump.sql"))
        dump_bytes = (work / "dump.sql").stat().st_size
        _print(args, stats, dump_bytes, rounds)
        if args.json:
            Path(args.json).write_text(json.dumps({"scale": args.scale, "fraction": args.fraction,
                                                   "dataset": stats, "changes": changes, "dump_bytes": dump_bytes,
                                                   "restic": _restic_version(), "rounds": rounds}, indent=1) + "\n")
    finally:
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _restic_version() -> str:
    return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()


def _print(args, stats: dict, dump_bytes: int, rounds: list[dict]) -> None:
    night = statistics.median(r["pg_dump | restic --stdin (the night)"][0] for r in rounds)
    print(f"### The incremental night's database stream, part by part — scale {args.scale}, "
          f"{args.repeat} rounds, {_restic_version()}\n")
    print(f"Database {stats['db_bytes'] / MB:.0f} MB, plain dump {dump_bytes / MB:.0f} MB; one day of changes "
          f"(fraction {args.fraction}).\n")
    print("| run | wall (median, min–max) | ÷ the night | cores busy | restic data_added |")
    print("|---|---|---|---|---|")
    for name in rounds[0]:
        walls = [r[name][0] for r in rounds]
        busy = statistics.median(r[name][1] for r in rounds)
        added = rounds[-1][name][2] if len(rounds[-1][name]) > 2 else None
        print(f"| {name.replace('|', chr(92) + '|')} | {statistics.median(walls):.2f} s ({min(walls):.2f}–{max(walls):.2f}) | "
              f"{statistics.median(walls) / night:.2f} | {busy:.2f} | "
              f"{'' if added is None else f'{added / MB:.0f} MB'} |")


if __name__ == "__main__":
    sys.exit(main())
