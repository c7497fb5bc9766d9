"""One measured run of a whole pipeline: the old procedure's backup or restore (the operator scales
around the seed's commands) and taiga-backup's backup or restore through its CLI, and the check of
a restored state against the backed-up one.

Why together: both pipelines are measured with the same probes around the same data - wall,
downtime from the API double, peak RSS, CPU, repository growth - so their figures compare; each
run is recorded in the lab's results (bench.report summarises them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import log
from bench.lab import Lab
from bench.old_operator import RESTORE_DEPLOYMENTS, downtime
from bench.probes import RssWatch, busy_since, cpu_busy
from bench.worker_view import covered, step_timeline
from testkit import dataset, old_procedure
from testkit.site import BACKUP_DEPLOYMENTS, descendants

# the job's steps that are work rather than bookkeeping (the rest of its wall is bookkeeping)
WORK_STEPS = ("media_prepass", "media_catchup", "quiesce", "db_snapshot", "dump_db", "restic_backup", "resume")


def _growth(before: dict, after: dict) -> dict:
    growth = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    growth["total"] = sum(growth.values())
    return growth


# ------------------------------------------------------------------------------- the old procedure


def _scaled_old(lab: Lab, run: dict, deployments: dict, procedure) -> dict | None:
    """Runs one of testkit.old_procedure's commands between the operator's scale-down and scale-up,
    watched like taiga-backup's worker; returns its output, None when it failed (run["error"])."""
    out = None
    busy0 = cpu_busy()
    t0 = time.monotonic()
    with RssWatch(os.getpid(), exclude=lab.worker_pids()) as rss:
        lab.operator.scale_down(deployments)
        try:
            out = procedure(str(lab.repo_base("old")), str(lab.media), lab.db, lab.old_env("old"))
        except old_procedure.OldProcedureError as exc:
            run["error"] = str(exc)[-2000:]
        finally:
            lab.operator.scale_up(deployments)
    run["wall_s"] = round(time.monotonic() - t0, 3)
    run["downtime_s"] = downtime(lab.kube, deployments, t0)
    run["rss_mb"] = rss.result(None)
    run["cpu_busy_fraction"] = busy_since(busy0)
    return out


def old_backup(lab: Lab, phase: str) -> dict:
    before = lab.repo_sizes("old")
    run = {"phase": phase, "variant": "old", "pipeline": "old"}
    out = _scaled_old(lab, run, BACKUP_DEPLOYMENTS, old_procedure.old_backup)
    if out is not None:
        run["steps"] = out["seconds"]
        run["added_text"] = out["added"]
    run["repo_growth"] = _growth(before, lab.repo_sizes("old"))
    run["data_added"] = old_data_added(run.get("added_text"))
    return lab.record(run)


def old_data_added(added_text: dict | None) -> dict:
    """restic's data_added for the old pipeline, from its text output ("Added to the repo:
    12.345 MiB", three decimals: exact to about 1 KiB)."""
    units = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4}
    out = {}
    for key, name in (("files", "files"), ("db", "pg-database")):
        text = (added_text or {}).get(key) or ""
        m = re.match(r"([0-9.]+)\s*(B|KiB|MiB|GiB|TiB)", text)
        if m:
            out[name] = int(float(m.group(1)) * units[m.group(2)])
    if out:
        out["total"] = sum(out.values())
    return out


def old_restore(lab: Lab) -> dict:
    run = {"phase": "restore", "variant": "old", "pipeline": "old"}
    out = _scaled_old(lab, run, RESTORE_DEPLOYMENTS, old_procedure.old_restore)
    if out is not None:
        run["steps"] = out["seconds"]
        run["psql_errors"] = out["psql_errors"][:20]
    return lab.record(run)


# ------------------------------------------------------------------------------------ taiga-backup


def _start_py_spy(lab: Lab, w: dict, variant: str, phase: str, run: dict) -> subprocess.Popen | None:
    if not lab.args.py_spy:
        return None
    prof = Path(lab.args.out) / f"py-spy-{variant}-{phase}-{len(lab.results['runs'])}.txt"
    prof.parent.mkdir(parents=True, exist_ok=True)
    run["py_spy"] = str(prof)
    return subprocess.Popen([lab.args.py_spy, "record", "--pid", str(w["proc"].pid), "--format", "raw",
                             "--rate", "50", "--threads", "--idle", "--output", str(prof)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_py_spy(spy: subprocess.Popen | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


def _event_times(w: dict, task_id: str, run: dict, wall0: float) -> float | None:
    """Wall and queue time from Celery's task events (Flower's view); returns task-sent's time."""
    ev = w["events"]
    sent = ev.wait_for(task_id, "task-sent", 5)
    started = ev.wait_for(task_id, "task-started", 5)
    finished = ev.wait_for(task_id, "task-succeeded", 5) or ev.wait_for(task_id, "task-failed", 1)
    run["events"] = {"sent": sent, "started": started, "finished": finished, "cli_spawned": wall0}
    if sent and finished:
        run["wall_s"] = round(finished - sent, 3)
    else:
        run["wall_s"] = run["cli_wall_s"]
    if sent and started:
        run["queue_to_start_s"] = round(started - sent, 3)
    return sent


def _backup_figures(run: dict, report: dict, timeline: dict, steps: dict) -> None:
    """Bytes added and the bookkeeping: the job's wall time not covered by quiesce, the two data
    steps and resume (from the log's timeline; from the report's step times when it has none)."""
    run["data_added"] = (report.get("bytes_added") or {})
    run["media_looks_s"] = report.get("media_looks_seconds")
    run["quiesced_pass"] = not (report.get("steps") or {}).get("restic_backup", {}).get("media_unchanged_since_prepass")
    run["dump_bytes"] = (report.get("database") or {}).get("dump_bytes")
    busy = [timeline[k] for k in WORK_STEPS if k in timeline]
    if busy and run.get("wall_s") is not None:
        run["bookkeeping_s"] = round(run["wall_s"] - covered(busy), 3)
    elif steps and run.get("wall_s") is not None:
        work = (steps.get("quiesce") or 0) + (steps.get("resume") or 0) + max(
            steps.get("dump_db") or 0, steps.get("restic_backup") or 0)
        run["bookkeeping_s"] = round(run["wall_s"] - work, 3)


def upload(media_dir: Path, name: str, megabytes: float) -> None:
    """One user's upload: an attachment of `megabytes` in a new directory of the media tree."""
    d = media_dir / "attachments" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "upload.bin").write_bytes(os.urandom(int(megabytes * 1_000_000)))


def _when_prepass_runs(w: dict, then, timeout: float = 120) -> dict:
    """Calls `then` as soon as the worker's media pre-pass restic runs; the time it ran at."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(b"taiga-backup-prepass" in _argv(pid) for pid in descendants(w["proc"].pid)):
            then()
            return {"upload_at": time.time()}
        time.sleep(0.01)
    return {"upload_error": "the pre-pass was not seen running"}


def _argv(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def taiga_backup(lab: Lab, variant: str, phase: str, command: list[str], deployments: dict,
                 during_prepass=None) -> dict:
    """`python -m worker.cli <command> --wait --json` against the variant's worker, watched;
    `during_prepass` is called once the job's media pre-pass runs (the upload night)."""
    w = lab.workers[variant]
    before = lab.repo_sizes(variant)
    busy0 = cpu_busy()
    run = {"phase": phase, "variant": variant, "pipeline": "taiga-backup", "format": w["format"]}
    t0 = time.monotonic()
    wall0 = time.time()
    spy = _start_py_spy(lab, w, variant, phase, run)
    with RssWatch(w["proc"].pid) as rss:
        cli = subprocess.Popen([sys.executable, "-m", "worker.cli", *command, "--wait", "--json"], cwd=w["code"],
                               env=w["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if during_prepass is not None:
            run.update(_when_prepass_runs(w, during_prepass))
        stdout, stderr = cli.communicate()
        done = subprocess.CompletedProcess(cli.args, cli.returncode, stdout, stderr)
    t1 = time.monotonic()
    _stop_py_spy(spy)
    run["cli_wall_s"] = round(t1 - t0, 3)
    run["downtime_s"] = downtime(lab.kube, deployments, t0)
    run["rss_mb"] = rss.result("worker (python)")
    run["worker_peak_reset"] = rss.root_reset
    run["worker_cpu_s"] = rss.root_cpu_s
    run["cpu_busy_fraction"] = busy_since(busy0)
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        run["error"] = f"CLI exit {done.returncode}: {done.stderr[-2000:]}"
        run["wall_s"] = run["cli_wall_s"]
        return lab.record(run)
    task_id = out.get("task_id")
    run["task_id"] = task_id
    if out.get("state") != "SUCCESS":
        run["error"] = out.get("error") or out.get("state")
    report = out.get("result") or out.get("report") or {}
    sent = _event_times(w, task_id, run, wall0)
    steps = {name: s.get("seconds") for name, s in (report.get("steps") or {}).items()}
    run["steps"] = steps
    run["report_duration_s"] = report.get("duration_seconds")
    run["job_downtime_s"] = report.get("downtime_seconds")
    timeline = step_timeline(lab.work / f"worker-{variant}.log", task_id) if task_id else {}
    run["timeline"] = {k: [round(a - (sent or 0), 3), round(b - (sent or 0), 3)] for k, (a, b) in timeline.items()}
    if phase in ("full", "incr", "upload"):
        _backup_figures(run, report, timeline, steps)
    run["report"] = report
    run["repo_growth"] = _growth(before, lab.repo_sizes(variant))
    return lab.record(run)


# ------------------------------------------------------------------------------------ the check


def verify(lab: Lab, run: dict, reference: dict) -> None:
    """Same rows, same bytes as the backed-up state (table checksums, file hashes)."""
    if reference is None or run.get("error"):
        return
    t = time.monotonic()
    tables = dataset.table_checksums(lab.conninfo())
    media = dataset.tree_digest(str(lab.media))
    bad_tables = sorted(k for k in set(tables) | set(reference["tables"])
                        if tables.get(k) != reference["tables"].get(k))
    bad_files = sorted(k for k in set(media) | set(reference["media"])
                       if media.get(k) != reference["media"].get(k))
    run["verified"] = not bad_tables and not bad_files
    if not run["verified"]:
        run["verify_mismatch"] = {"tables": bad_tables[:20], "files": bad_files[:20],
                                  "n_files": len(bad_files)}
    log(f"verify {run['variant']}: {'exact' if run['verified'] else 'MISMATCH'} "
        f"({time.monotonic() - t:.1f} s)")
