"""Restore downtime and wall: the old procedure against taiga-backup's restore, at two data sizes.

    python -m bench.restore_bench [--scales 1.0,0.25] [--repeat 1] [--out bench/out]

Per scale, one throwaway PostgreSQL, Redis and Kubernetes API double (pods take 1 s to start and
to stop, as in bench/run.py); a Taiga-like dataset (testkit.dataset); one taiga-backup backup (the
one every restore puts back); a day of changes. Then, in turn: the old procedure's restore (the
operator scales the restore deployments down, runs the seed's commands, scales back up); a day
of changes, a nightly backup and another day of changes - the live state a production restore
replaces, whose media have a recent backup -; taiga-backup's restore of the first backup, by id,
as a worker runs it (timed to its answer, sent once the app is back, and to the end of the
safety backup it hands over to a job of its own: testkit.scenarios.run_restore_answering),
followed by undo-restore; the same restore without its safety backup (the old procedure makes
none), undone again. Before each restore the server is settled as a production server at rest
is: `VACUUM (ANALYZE)` (what autovacuum does after a load; else the first read of freshly loaded
rows writes their hint bits) and `CHECKPOINT` (else one restore's load is still being written
out during the next). Downtime (both) is taken from the API double's replica history: first
scale to 0 -> last return to the original count. Every restore is checked: same rows, same bytes
as the backup. The old procedure's commands are given the first backup's snapshot ids where the
seed says `latest` (from the second round on, `latest` is a newer backup).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.old_operator import RESTORE_DEPLOYMENTS, Operator, downtime  # noqa: E402
from testkit import dataset, old_procedure  # noqa: E402
from testkit.k8s_double import KubeApiDouble  # noqa: E402
from testkit.restore_checks import live_files  # noqa: E402
from testkit.servers import PostgresCluster, RedisServer  # noqa: E402
from testkit.site import NAMESPACE, Site  # noqa: E402
from worker.backups import media  # noqa: E402


def live(site) -> dict:
    return {"db": dataset.table_checksums(site.conninfo), "files": live_files(site.media)}


def settle(site) -> None:
    """A server at rest before each measured restore (the module docstring says why)."""
    site.pg.sql("vacuum (analyze)", dbname=site.dbname)
    site.pg.sql("checkpoint")


def measure(scale: float, repeat: int, work: Path) -> dict:
    pg, redis_server = PostgresCluster().start(), RedisServer().start()
    kube = KubeApiDouble(pod_start_delay=1.0, pod_stop_delay=1.0).start()
    try:
        kube.kubeconfig = kube.write_kubeconfig(str(work / "kubeconfig"))
        for name, replicas in RESTORE_DEPLOYMENTS.items():
            kube.add_deployment(NAMESPACE, name, replicas=replicas)
        site = Site(work, pg, redis_server, kube, str(work / "restic-cache"))
        pg.create_app_db(site.dbname, site.db_user, site.db_password)
        dataset.create_schema(site.conninfo)
        stats = dataset.populate(site.conninfo, str(site.media), scale=scale, seed=1)
        (site.media / media.MARKER).touch()
        os.environ.update(site.env)
        os.environ["HOME"] = str(work)
        from testkit.scenarios import run_backup, run_restore, run_restore_answering
        from tasks.undo_restore import undo
        from worker.jobs.job import run_job

        backed_up = live(site)
        made = run_backup()
        first = made["backup_id"]
        dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=2)
        operator = Operator(kube.kubeconfig)
        db = {"host": "127.0.0.1", "port": pg.port, "user": site.db_user, "password": site.db_password,
              "dbname": site.dbname}
        runs = []
        for _ in range(repeat):
            settle(site)
            t0 = time.monotonic()
            since = t0
            operator.scale_down(RESTORE_DEPLOYMENTS)
            try:
                old_procedure.old_restore(str(site.repo), str(site.media), db,
                                          {"RESTIC_PASSWORD_FILE": str(site.password_file),
                                           "RESTIC_CACHE_DIR": site.env["RESTIC_CACHE_DIR"]},
                                          snapshot=made["snapshots"])  # the seed's commands, with ids for `latest`
            finally:
                operator.scale_up(RESTORE_DEPLOYMENTS)
            old = {"wall_s": round(time.monotonic() - t0, 3), "downtime_s": downtime(kube, RESTORE_DEPLOYMENTS, since),
                   "verified": live(site) == backed_up}
            # the state a restore replaces in production: changed, backed up last night, changed again
            dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=2)
            run_backup("schedule")
            dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=3)
            changed = live(site)
            settle(site)

            t0 = since = time.monotonic()
            # as a worker runs it: the answer once the app is back, then its safety backup as a job of its own
            report, safety_backup = run_restore_answering(snapshot=first)
            answered = round(time.monotonic() - t0, 3)
            safety = safety_backup()
            new = {"wall_s": round(time.monotonic() - t0, 3), "answer_s": answered,
                   "downtime_s": downtime(kube, RESTORE_DEPLOYMENTS, since),
                   "job_downtime_s": report["downtime_seconds"], "verified": live(site) == backed_up and safety[
                       "state"] == "SUCCESS", "steps": {k: v["seconds"] for k, v in report["steps"].items()},
                   "safety_steps": {k: v["seconds"] for k, v in safety["steps"].items()}}
            t0 = since = time.monotonic()
            undone = run_job(None, "undo_restore", lambda job: undo(job, None))
            back = {"wall_s": round(time.monotonic() - t0, 3), "downtime_s": downtime(kube, RESTORE_DEPLOYMENTS, since),
                    "job_downtime_s": undone["downtime_seconds"], "verified": live(site) == changed}
            settle(site)
            t0 = time.monotonic()
            bare = run_restore(snapshot=first, safety_backup=False)  # the same restore without its safety backup
            new["wall_without_safety_s"] = round(time.monotonic() - t0, 3)
            new["verified"] = new["verified"] and live(site) == backed_up and bare["downtime_seconds"] > 0
            run_job(None, "undo_restore", lambda job: undo(job, None))
            runs.append({"old": old, "restore": new, "undo": back})
        return {"scale": scale, "dataset": {"database_bytes": stats.get("db_bytes") if isinstance(stats, dict) else None,
                                            "media_files": len(changed["files"])}, "runs": runs}
    finally:
        kube.stop()
        redis_server.cleanup()
        pg.cleanup()


def _row(run: dict) -> dict:
    """One round's figures; the ratios pair each restore with the old one of the same round."""
    old, new, back = run["old"], run["restore"], run["undo"]
    return {"old_wall": old["wall_s"], "old_down": old["downtime_s"], "answer": new["answer_s"],
            "answer_ratio": new["answer_s"] / old["wall_s"], "wall": new["wall_s"],
            "ratio": new["wall_s"] / old["wall_s"], "bare": new["wall_without_safety_s"],
            "bare_ratio": new["wall_without_safety_s"] / old["wall_s"], "down": new["downtime_s"],
            "down_ratio": new["downtime_s"] / old["wall_s"], "undo_down": back["downtime_s"],
            "verified": old["verified"] and new["verified"] and back["verified"]}


def table(results: list[dict]) -> str:
    """One row per round and, with more than one round, the medians of each column."""
    lines = ["| scale | old restore wall | old downtime | restore answers after | ratio | "
             "restore + its safety backup | ratio | "
             "restore wall without safety backup | ratio | restore downtime | ratio to old restore | undo downtime | "
             "all verified |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def line(label, r):
        lines.append(f"| {label} | {r['old_wall']:.1f} s | {r['old_down']:.1f} s | {r['answer']:.1f} s | "
                     f"{r['answer_ratio']:.2f}× | {r['wall']:.1f} s | {r['ratio']:.2f}× | "
                     f"{r['bare']:.1f} s | {r['bare_ratio']:.2f}× | {r['down']:.1f} s | {r['down_ratio']:.2f}× | "
                     f"{r['undo_down']:.1f} s | {'yes' if r['verified'] else 'NO'} |")

    for res in results:
        rows = [_row(run) for run in res["runs"]]
        for r in rows:
            line(res["scale"], r)
        if len(rows) > 1:
            line(f"{res['scale']}, median of {len(rows)}",
                 {**{k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "verified"},
                  "verified": all(r["verified"] for r in rows)})
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1.0,0.25")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args(argv)
    results = []
    for scale in (float(s) for s in args.scales.split(",")):
        with tempfile.TemporaryDirectory(prefix="tb-restore-bench-") as work:
            results.append(measure(scale, args.repeat, Path(work)))
        print(table(results[-1:]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    out = Path(args.out) / f"restore-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"raw: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
