"""Experiments on one pipeline's part alone, without a worker: the database dump with the worker's
own argv in each PG_DUMP_FORMAT (and restic knobs), loaded back streamed or from a file with
`pg_restore --jobs`; and restic's knobs on the media alone.

Why apart from bench.pipelines: these isolate one cost (dump, compression, pack size, load) to
decide a default; they record into results["experiments"], not the pipelines' runs.
"""

from __future__ import annotations

import os
import subprocess
import time

from bench import log
from bench.lab import DB_USER, Lab
from bench.probes import RssWatch, dir_bytes
from testkit import dataset

EXPERIMENTS = ("plain", "custom", "custom-z", "plain-zmax", "plain-zoff", "plain-pack64")
# restic's own knobs on the media alone (a full pass, then a second pass with the first as parent,
# as the backup's pre-pass and quiesced pass): (restic flags, extra environment)
MEDIA_EXPERIMENTS = {
    "media-auto": ([], {}),
    "media-off": (["--compression", "off"], {}),
    "media-off-pack64": (["--compression", "off", "--pack-size", "64"], {}),
    "media-auto-gomaxprocs1": ([], {"GOMAXPROCS": "1"}),
}
# the extra restic flags of the plain-format experiments
_PLAIN_RESTIC_FLAGS = {"plain": [], "plain-zmax": ["--compression", "max"], "plain-zoff": ["--compression", "off"],
                       "plain-pack64": ["--pack-size", "64"]}


def dump_argv(lab: Lab, fmt: str) -> tuple[list[str], list[str]]:
    """(pg_dump argv, extra restic flags) for an experiment."""
    from worker.adapters import postgres

    settings = lab.settings()
    if fmt in _PLAIN_RESTIC_FLAGS:
        return postgres.dump_argv(settings, "plain"), _PLAIN_RESTIC_FLAGS[fmt]
    if fmt == "custom":
        return postgres.dump_argv(settings, "custom"), []
    if fmt == "custom-z":   # pg_dump's default compression for the custom format (gzip, level 6)
        argv = postgres.dump_argv(settings, "plain")
        return argv[:-1] + ["--format=custom"] + argv[-1:], []
    raise ValueError(fmt)


def dump(lab: Lab, fmt: str, phase: str) -> dict:
    """The database pipeline alone (pg_dump | restic backup --stdin) into the experiment's repository."""
    from worker.adapters import postgres, process
    from worker.adapters.restic import JsonLines

    variant = f"exp-{fmt}"
    if phase == "full":
        lab.fresh_repos(variant, names=("pg-database",))
    repo = lab.repo_base(variant) / "pg-database"
    before = dir_bytes(repo)
    argv, extra = dump_argv(lab, fmt)
    lines = JsonLines()
    t0 = time.monotonic()
    with RssWatch(os.getpid(), exclude=lab.worker_pids()) as rss:
        prod, cons = process.pipe(argv, ["restic", "backup", "--json", "--stdin", "--host", "bench", *extra],
                                  producer_env=postgres.client_env(lab.settings()),
                                  consumer_env=lab.restic_env(str(repo), str(lab.cache_dir(variant))),
                                  on_consumer_line=lines)
    run = {"phase": phase, "variant": variant, "format": fmt, "wall_s": round(time.monotonic() - t0, 3),
           "rss_mb": rss.result(None)}
    if not (prod.ok and cons.ok):
        run["error"] = (prod.stderr or cons.stderr)[-1000:]
    s = lines.summary or {}
    run.update(data_added=s.get("data_added"), dump_bytes=s.get("total_bytes_processed"),
               restic_duration_s=s.get("total_duration"), repo_growth=dir_bytes(repo) - before)
    lab.results["experiments"].append(run)
    log(f"exp {phase:<5} {fmt:<10} wall {run['wall_s']} s, dump {run['dump_bytes']}, "
        f"added {run['data_added']}, repo +{run['repo_growth']}")
    return run


def media(lab: Lab, name: str) -> list[dict]:
    """The media alone with one set of restic knobs: a full pass into a fresh repository, then
    a second pass with the first as parent (what the quiesced pass does)."""
    from worker.adapters import process
    from worker.adapters.restic import JsonLines

    flags, extra = MEDIA_EXPERIMENTS[name]
    variant = f"exp-{name}"
    lab.fresh_repos(variant, names=("files",))
    repo = lab.repo_base(variant) / "files"
    env = {**lab.restic_env(str(repo), str(lab.cache_dir(variant))), **extra}
    out, parent = [], None
    for phase in ("full", "second-pass"):
        lines = JsonLines()
        argv = ["restic", "backup", "--json", "--host", "bench", *flags, *(["--parent", parent] if parent else []), "."]
        before = dir_bytes(repo)
        t0 = time.monotonic()
        with RssWatch(os.getpid(), exclude=lab.worker_pids()) as rss:
            done = process.run(argv, env=env, cwd=str(lab.media), on_line=lines, keep_stdout=False)
        s = lines.summary or {}
        parent = s.get("snapshot_id")
        run = {"phase": phase, "variant": variant, "format": name, "flags": flags, "env": extra,
               "wall_s": round(time.monotonic() - t0, 3), "rss_mb": rss.result(None),
               "data_added": s.get("data_added"), "repo_growth": dir_bytes(repo) - before,
               "error": None if done.ok else done.stderr[-500:]}
        lab.results["experiments"].append(run)
        log(f"exp media {name:<24} {phase:<11} wall {run['wall_s']} s, repo +{run['repo_growth']}")
        out.append(run)
    return out


def _load_streamed(settings, fmt: str, scratch: str, renv: dict, cenv: dict) -> tuple[bool, str]:
    """`restic dump | psql` (plain) or `| pg_restore` (custom), as worker.backups.dump_loader loads."""
    from worker.adapters import postgres, process

    loader = (postgres.psql_argv(settings, scratch) if fmt.startswith("plain")
              else postgres.pg_restore_argv(settings, scratch))
    prod, cons = process.pipe(["restic", "dump", "latest", "stdin"], loader, producer_env=renv, consumer_env=cenv)
    return prod.ok and cons.ok, prod.stderr + cons.stderr


def _load_from_file(lab: Lab, settings, method: str, scratch: str, renv: dict, cenv: dict, run: dict,
                    t0: float) -> tuple[bool, str]:
    """The dump written to a seekable file first (timed: run["file_write_s"]), then
    `pg_restore --jobs N` from it."""
    from worker.adapters import postgres

    jobs = method.split("-j")[1]
    path = lab.work / "scratch.dump"
    with open(path, "wb") as f:
        p = subprocess.run(["restic", "dump", "latest", "stdin"], env=renv, stdout=f, stderr=subprocess.PIPE)
    run["file_write_s"] = round(time.monotonic() - t0, 3)
    argv = [a for a in postgres.pg_restore_argv(settings, scratch) if a != "--single-transaction"]
    q = subprocess.run(argv + ["--jobs", jobs, str(path)], env=cenv, capture_output=True, text=True)
    path.unlink()
    return p.returncode == 0 and q.returncode == 0, p.stderr.decode(errors="replace") + q.stderr


def restores(lab: Lab, fmt: str, reference_tables: dict | None) -> list[dict]:
    """Loads the latest dump of an experiment into a scratch database: streamed (psql or
    pg_restore, as worker.backups.dump_loader does), and for the custom formats also via a seekable file with
    pg_restore -j (the file write is timed as part of it)."""
    from worker.adapters import postgres

    variant = f"exp-{fmt}"
    repo = str(lab.repo_base(variant) / "pg-database")
    renv = lab.restic_env(repo, str(lab.cache_dir(variant)))
    settings = lab.settings()
    cenv = postgres.client_env(settings)
    methods = ["stream"] + ([f"file-j{j}" for j in lab.args.restore_jobs] if fmt.startswith("custom") else [])
    out = []
    for method in methods:
        scratch = "taiga_scratch"
        lab.pg.sql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        lab.pg.sql(f'CREATE DATABASE "{scratch}" OWNER "{DB_USER}"')
        run = {"phase": "restore", "variant": variant, "format": fmt, "method": method}
        t0 = time.monotonic()
        with RssWatch(os.getpid(), exclude=lab.worker_pids()) as rss:
            if method == "stream":
                ok, err = _load_streamed(settings, fmt, scratch, renv, cenv)
            else:
                ok, err = _load_from_file(lab, settings, method, scratch, renv, cenv, run, t0)
        run["wall_s"] = round(time.monotonic() - t0, 3)
        run["rss_mb"] = rss.result(None)
        if not ok:
            run["error"] = err[-1000:]
        elif reference_tables is not None:
            got = dataset.table_checksums(lab.conninfo(scratch))
            run["verified"] = got == reference_tables
        lab.pg.sql(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        lab.results["experiments"].append(run)
        log(f"exp restore {fmt:<10} {method:<8} {run['wall_s']} s verified={run.get('verified')} "
            f"{run.get('error', '')[:200]}")
        out.append(run)
    return out
