"""Restore downtime and wall: the old procedure against taiga-backup's restore, at two data sizes.

    python -m bench.restore_bench [--scales 1.0,0.25] [--repeat 1] [--out bench/out]

Per scale, one throwaway PostgreSQL, Redis and Kubernetes API double (pods take 1 s to start and
to stop, as in bench/run.py); a Taiga-like dataset (testkit.dataset); one taiga-backup backup;
a day of changes. Then, in turn: the old procedure's restore (the operator scales the restore
deployments down, runs the seed's commands, scales back up); taiga-backup's restore followed by
undo-restore; the same restore without its safety backup (the old procedure makes none), undone
again. Downtime (both) is taken from
the API double's replica history: first scale to 0 -> last return to the original count. Every
restore is checked: same rows, same bytes as the backup.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import Operator, downtime  # noqa: E402
from testkit import dataset, old_procedure  # noqa: E402
from testkit.k8s_double import KubeApiDouble  # noqa: E402
from testkit.restore_checks import live_files  # noqa: E402
from testkit.servers import PostgresCluster, RedisServer  # noqa: E402
from testkit.site import NAMESPACE, RESTORE_ONLY_DEPLOYMENTS, BACKUP_DEPLOYMENTS, Site  # noqa: E402

ALL = {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}


def live(site) -> dict:
    return {"db": dataset.table_checksums(site.conninfo), "files": live_files(site.media)}


def measure(scale: float, repeat: int, work: Path) -> dict:
    pg, redis_server = PostgresCluster().start(), RedisServer().start()
    kube = KubeApiDouble(pod_start_delay=1.0, pod_stop_delay=1.0).start()
    try:
        kube.kubeconfig = kube.write_kubeconfig(str(work / "kubeconfig"))
        for name, replicas in ALL.items():
            kube.add_deployment(NAMESPACE, name, replicas=replicas)
        site = Site(work, pg, redis_server, kube, str(work / "restic-cache"))
        pg.create_app_db(site.dbname, site.db_user, site.db_password)
        dataset.create_schema(site.conninfo)
        stats = dataset.populate(site.conninfo, str(site.media), scale=scale, seed=1)
        (site.media / ".taiga-backup-media").touch()
        os.environ.update(site.env)
        os.environ["HOME"] = str(work)
        from testkit.scenarios import run_backup, run_restore
        from tasks.undo_restore import undo
        from worker.jobs.job import run_job

        backed_up = live(site)
        run_backup()
        dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=2)
        changed = live(site)
        operator = Operator(kube.kubeconfig)
        db = {"host": "127.0.0.1", "port": pg.port, "user": site.db_user, "password": site.db_password,
              "dbname": site.dbname}
        runs = []
        for _ in range(repeat):
            t0 = time.monotonic()
            since = t0
            operator.scale_down(ALL)
            try:
                old_procedure.old_restore(str(site.repo), str(site.media), db,
                                          {"RESTIC_PASSWORD_FILE": str(site.password_file),
                                           "RESTIC_CACHE_DIR": site.env["RESTIC_CACHE_DIR"]})
            finally:
                operator.scale_up(ALL)
            old = {"wall_s": round(time.monotonic() - t0, 3), "downtime_s": downtime(kube, ALL, since),
                   "verified": live(site) == backed_up}
            dataset.apply_day_of_changes(site.conninfo, str(site.media), seed=2)  # back to a changed state
            changed = live(site)

            t0 = since = time.monotonic()
            report = run_restore()
            new = {"wall_s": round(time.monotonic() - t0, 3), "downtime_s": downtime(kube, ALL, since),
                   "job_downtime_s": report["downtime_seconds"], "verified": live(site) == backed_up,
                   "steps": {k: v["seconds"] for k, v in report["steps"].items()}}
            t0 = since = time.monotonic()
            undone = run_job(None, "undo_restore", lambda job: undo(job, None))
            back = {"wall_s": round(time.monotonic() - t0, 3), "downtime_s": downtime(kube, ALL, since),
                    "job_downtime_s": undone["downtime_seconds"], "verified": live(site) == changed}
            t0 = time.monotonic()
            bare = run_restore(safety_backup=False)  # the same restore without its safety backup
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


def table(results: list[dict]) -> str:
    lines = ["| scale | old restore wall | old downtime | restore wall (with safety backup) | ratio | "
             "restore wall without safety backup | ratio | restore downtime | ratio to old restore | undo downtime | "
             "all verified |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for run in res["runs"]:
            old, new, back = run["old"], run["restore"], run["undo"]
            lines.append(f"| {res['scale']} | {old['wall_s']:.1f} s | {old['downtime_s']:.1f} s | {new['wall_s']:.1f} s | "
                         f"{new['wall_s'] / old['wall_s']:.2f}× | {new['wall_without_safety_s']:.1f} s | "
                         f"{new['wall_without_safety_s'] / old['wall_s']:.2f}× | {new['downtime_s']:.1f} s | "
                         f"{new['downtime_s'] / old['wall_s']:.2f}× | {back['downtime_s']:.1f} s | "
                         f"{'yes' if old['verified'] and new['verified'] and back['verified'] else 'NO'} |")
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
