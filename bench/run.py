"""Benchmark: the old shell procedure and taiga-backup side by side, on the same data, in one run.

    python -m bench.run --scale 1.0 [--formats plain,custom] [--out bench/out]

What it does (see bench/README.md for every option):

1. starts throw-away servers (redis-server, a PostgreSQL 15 cluster, the Kubernetes API double with
   Taiga's deployments) and generates a Taiga-like dataset (testkit.dataset) at --scale;
2. night 1 ("full"): runs, alternately, the old pipeline (operator scales gateway+front down, the
   seed's `pg_dump | restic backup --stdin` then `restic backup .`, scales back up) and taiga-backup
   (a real worker process per PG_DUMP_FORMAT, `taiga-backup backup --wait --json`), each into its
   own fresh repositories;
3. applies one "day of changes" (testkit.dataset.apply_day_of_changes) and runs night 2 ("incr") the
   same way into the same repositories;
4. restores (old: drop/create, `restic dump | psql`, `restic restore`; taiga-backup: the
   `taiga_backup.restore` task when the worker has it) and checks each result against checksums;
5. format experiments (db only, no worker): plain / custom -Z0 / custom compressed / plain with
   restic --compression max, for dump time, repository growth and load time (incl. pg_restore -j2
   from a seekable file).

Measured: wall times, app downtime from the API double's replica history (scale to 0 -> back to the
original count), restic's data_added and the repository's growth on disk, peak RSS (VmHWM) of the
worker process and of each child program, queue-to-start from Celery task events. Prints a
markdown table and writes the raw numbers as JSON to --out.

This module is the script only - its options and the order of the measurements; the modules beside
it take them (bench/README.md, "Where the code is"), and nothing imports this one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT),):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench import MB, experiments, log, pipelines, report  # noqa: E402
from bench.experiments import EXPERIMENTS, MEDIA_EXPERIMENTS  # noqa: E402
from bench.lab import Lab  # noqa: E402
from bench.old_operator import RESTORE_DEPLOYMENTS  # noqa: E402
from bench.probes import loadavg, machine_info  # noqa: E402
from testkit import dataset  # noqa: E402
from testkit.site import BACKUP_DEPLOYMENTS  # noqa: E402

WORKER_FORMATS = ("plain", "custom")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB database + 1 GB media")
    ap.add_argument("--formats", default="plain,custom", help="PG_DUMP_FORMAT values to run taiga-backup with")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"), help="directory for the JSON and markdown results")
    ap.add_argument("--repeat", type=int, default=1, help="full backups per pipeline (alternating order; median)")
    ap.add_argument("--fraction", type=float, default=0.01, help="size of the day of changes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small-files", type=int, default=0,
                    help="add this many small files (1-6 KB thumbnails) to the media: the many-files curve")
    ap.add_argument("--upload-mb", type=float, default=5.0,
                    help="the upload of the 'upload' night, written while taiga-backup's media pre-pass runs")
    ap.add_argument("--phases", default="full,incr,restore",
                    help="which of full,incr,upload,restore to run (upload: a night where an upload lands during "
                         "the pre-pass)")
    ap.add_argument("--no-old", action="store_true", help="skip the old pipeline (e.g. for an RSS-only run)")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS),
                    help=f"db-only format experiments among {','.join(EXPERIMENTS)}; 'none' to skip")
    ap.add_argument("--media-experiments", default=",".join(MEDIA_EXPERIMENTS),
                    help=f"restic knob experiments on the media among {','.join(MEDIA_EXPERIMENTS)}; 'none' to skip")
    ap.add_argument("--restore-jobs", default="1,2", help="pg_restore --jobs values for the file-based load")
    ap.add_argument("--no-verify", action="store_true", help="skip checksumming restored data")
    ap.add_argument("--pod-start-delay", type=float, default=1.0)
    ap.add_argument("--pod-stop-delay", type=float, default=1.0)
    ap.add_argument("--lease", type=int, default=10, help="JOB_LOCK_LEASE of the workers")
    ap.add_argument("--workdir", default=None, help="where data and repositories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--py-spy", default=None, metavar="PATH",
                    help="py-spy binary: record the worker during every taiga-backup job (raw stacks in --out)")
    ap.add_argument("--code", default=None,
                    help="LABEL=DIR[:FORMAT+FORMAT][,...]: run taiga-backup (worker and CLI) from these copies of the "
                         "tree, each as its own variant tb-FORMAT@LABEL (A/B-testing a patch in one run, on the same "
                         "data); formats default to --formats; default: this tree")
    a = ap.parse_args(argv)
    a.formats = [f for f in a.formats.split(",") if f]
    for f in a.formats:
        if f not in WORKER_FORMATS:
            ap.error(f"--formats: {f!r} is not a PG_DUMP_FORMAT ({', '.join(WORKER_FORMATS)})")
    a.phases = [p for p in a.phases.split(",") if p]
    a.experiments = [] if a.experiments in ("", "none") else a.experiments.split(",")
    for e in a.experiments:
        if e not in EXPERIMENTS:
            ap.error(f"--experiments: unknown {e!r}")
    a.media_experiments = [] if a.media_experiments in ("", "none") else a.media_experiments.split(",")
    for e in a.media_experiments:
        if e not in MEDIA_EXPERIMENTS:
            ap.error(f"--media-experiments: unknown {e!r}")
    a.restore_jobs = [int(j) for j in a.restore_jobs.split(",") if j]
    codes = {}
    for item in (a.code or "").split(","):
        if item:
            label, _, rest = item.partition("=")
            path, _, fmts = rest.partition(":")
            if not label or not Path(path, "worker", "cli.py").is_file():
                ap.error(f"--code: expected LABEL=DIR[:FORMAT+FORMAT] with DIR/worker/cli.py, got {item!r}")
            formats = [f for f in fmts.split("+") if f] or a.formats
            if any(f not in WORKER_FORMATS for f in formats):
                ap.error(f"--code: unknown format in {item!r}")
            codes[label] = (Path(path).resolve(), formats)
    a.code = codes or {"": (ROOT, a.formats)}
    return a


def _backups(lab: Lab, order: list[str], phase: str) -> None:
    """One backup per variant, in this order."""
    for v in order:
        if v == "old":
            pipelines.old_backup(lab, phase)
        else:
            pipelines.taiga_backup(lab, v, phase, ["backup"], BACKUP_DEPLOYMENTS)


def night_full(lab: Lab, args, variants: list[str]) -> list[str]:
    """--repeat full backups per variant into fresh repositories, the order reversed every round;
    then the experiments' first night. Returns the last round's order."""
    order = list(variants)
    for rnd in range(args.repeat):
        order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
        for v in order:
            lab.fresh_repos(v)
            _backups(lab, [v], "full")
    for e in args.experiments:
        experiments.dump(lab, e, "full")
    for e in args.media_experiments:
        experiments.media(lab, e)
    return order


def night_incr(lab: Lab, args, order: list[str]) -> list[str]:
    """A day of changes, then the incremental night in the reversed order."""
    results = lab.results
    log(f"applying a day of changes (fraction {args.fraction}) ...")
    results["changes"] = dataset.apply_day_of_changes(lab.conninfo(), str(lab.media), seed=2,
                                                      fraction=args.fraction)
    ch = results["changes"]
    results["changes_summary"] = (f"{sum(ch['inserted'].values())} rows inserted, "
                                  f"{sum(ch['updated'].values())} updated, {sum(ch['deleted'].values())} "
                                  f"deleted, {ch['media_files_added']} files "
                                  f"({ch['media_bytes_added'] / MB:.1f} MB) added")
    order = list(reversed(order))
    _backups(lab, order, "incr")
    for e in args.experiments:
        experiments.dump(lab, e, "incr")
    return order


def night_upload(lab: Lab, args, order: list[str]) -> list[str]:
    """A night with nothing changed but one upload, landing while taiga-backup's media pre-pass
    runs (the old procedure gets the same upload just before its backup): what the quiesced
    window costs when the tree moved under the pre-pass."""
    order = list(reversed(order))
    for v in order:
        upload = lambda: pipelines.upload(lab.media, f"upload-{v}", args.upload_mb)  # noqa: E731
        if v == "old":
            upload()
            pipelines.old_backup(lab, "upload")
        else:
            pipelines.taiga_backup(lab, v, "upload", ["backup"], BACKUP_DEPLOYMENTS, during_prepass=upload)
        shutil.rmtree(lab.media / "attachments" / f"upload-{v}")  # the next pipeline reads only its own
    return order


def restores(lab: Lab, args, order: list[str], has_restore: bool) -> None:
    """The experiments' loads, then each variant's restore of its latest backup, checked."""
    reference = None
    if not args.no_verify:
        reference = {"tables": dataset.table_checksums(lab.conninfo()),
                     "media": dataset.tree_digest(str(lab.media))}
    for e in args.experiments:
        experiments.restores(lab, e, reference["tables"] if reference else None)
    for v in reversed(order):
        if v == "old":
            pipelines.verify(lab, pipelines.old_restore(lab), reference)
        elif has_restore:
            run = pipelines.taiga_backup(lab, v, "restore", ["restore", "--snapshot", "latest", "--no-safety-backup"],
                                         RESTORE_DEPLOYMENTS)
            pipelines.verify(lab, run, reference)
    if not has_restore:
        lab.results["restore_note"] = ("taiga-backup restore: not available (the worker has no "
                                       "`taiga_backup.restore` task yet).")
        log(lab.results["restore_note"])


def measure(lab: Lab, args) -> None:
    """Servers, dataset and workers, then the phases asked for, in order."""
    results = lab.results
    lab.start_servers()
    server_version = lab.pg.sql("show server_version")[0][0]
    results["machine"] = machine_info(server_version)
    results["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["dataset"] = lab.generate()
    tb = {f"tb-{f}" + (f"@{label}" if label else ""): (f, code)
          for label, (code, formats) in args.code.items() for f in formats}
    variants = (["old"] if not args.no_old else []) + list(tb)
    for v, (f, code) in tb.items():
        lab.start_worker(v, f, code)
    lab.settle()
    first = next(iter(lab.workers.values()), None)
    has_restore = bool(first and "taiga_backup.restore" in first["registered"])
    results["restore_available"] = has_restore
    order = list(variants)
    if "full" in args.phases:
        order = night_full(lab, args, variants)
    if "incr" in args.phases:
        order = night_incr(lab, args, order)
    if "upload" in args.phases:
        order = night_upload(lab, args, order)
    if "restore" in args.phases:
        restores(lab, args, order, has_restore)


def main(argv=None) -> int:
    args = parse_args(argv)
    lab = Lab(args)
    results = lab.results
    results["args"] = {k: v for k, v in vars(args).items()}
    t_start = time.monotonic()
    try:
        measure(lab, args)
    finally:
        results["machine"] = results.get("machine") or {}
        results["machine"]["loadavg_at_end"] = loadavg()
        results["total_seconds"] = round(time.monotonic() - t_start, 1)
        lab.stop_servers()
        if not args.keep and not args.workdir:
            shutil.rmtree(lab.work, ignore_errors=True)
        elif args.keep:
            log(f"work directory kept: {lab.work}")
    results["summary"] = report.summarise(results)
    report.write(results, args.out, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
