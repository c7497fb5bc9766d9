"""Many instances on one broker: N Taigas (default 20), one real worker process each, one
redis-server database, with BACKUP_WINDOW and FLEET_MAX_CONCURRENT_BACKUPS set.

    python -m bench.fleet [--instances 20] [--window 2h] [--cap 3] [--seconds-per-minute 0.25]

Why a script of its own: the window and the cap only matter with many instances at once, which no
test starts (the tests use two). What one run does:

1. starts throw-away servers (redis-server, PostgreSQL, the Kubernetes API double) and N sites
   (testkit.site: a small database and media each, its own namespace, repositories and cache),
   all on one Redis database;
2. starts one worker per instance (`taiga-backup worker`, no beat) and waits for each start-up
   reconcile;
3. sends each instance's backup at its offset in the window (settings.instance_offset, the minute
   beat would start it at: settings.backup_cron), the window compressed to
   --seconds-per-minute per minute, so a 2 h window plays in 30 s;
4. samples the fleet's slot key every 20 ms (how many hold a slot, how many apps are down) until
   every backup has ended.

Reported: each instance backed up once (report SUCCESS, one snapshot per repository), the most
slot holders and apps down at once against the cap, the start offsets (spread, distinct minutes),
each backup's wait for a slot, and the broker's memory (INFO memory, MEMORY USAGE of each
instance's keys) before the workers, with them idle, and after the backups. Prints a markdown
summary (stdout) and writes the raw numbers to --out/fleet-<time>.json. Nothing fails on a slow
machine: it is a script, not a test.
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
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import log  # noqa: E402
from testkit.k8s_double import KubeApiDouble  # noqa: E402
from testkit.scenarios import reconcile_now  # noqa: E402
from testkit.servers import PostgresCluster, RedisServer  # noqa: E402
from testkit.site import BACKUP_DEPLOYMENTS, RESTORE_ONLY_DEPLOYMENTS, Site, WorkerProcess  # noqa: E402

REDIS_DB = 1
KB = 1024


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--window", default="2h", help="BACKUP_WINDOW")
    ap.add_argument("--cap", type=int, default=3, help="FLEET_MAX_CONCURRENT_BACKUPS")
    ap.add_argument("--seconds-per-minute", type=float, default=0.25,
                    help="real seconds per minute of the window (0.25: a 2h window in 30 s)")
    ap.add_argument("--lease", type=int, default=10, help="JOB_LOCK_LEASE (the slots' lease too)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    return ap.parse_args(argv)


class Fleet:
    """The servers, the sites and their workers of one run."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="tb-fleet-"))
        self.redis = RedisServer().start()
        self.pg = PostgresCluster().start()
        self.kube = KubeApiDouble(pod_start_delay=0.3, pod_stop_delay=0.6).start()
        self.kube.kubeconfig = self.kube.write_kubeconfig(str(self.work / "kubeconfig"))
        self.sites: dict[str, Site] = {}
        self.workers: dict[str, WorkerProcess] = {}

    def client(self):
        import redis

        return redis.Redis(port=self.redis.port, db=REDIS_DB)

    def make_sites(self) -> None:
        template = self.work / "empty-repos"
        for i in range(self.args.instances):
            name = f"taiga-{i:02d}"
            root = self.work / name
            root.mkdir()
            for deployment, replicas in {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}.items():
                self.kube.add_deployment(name, deployment, replicas=replicas)
            site = Site(root, self.pg, self.redis, self.kube, str(root / "restic-cache"), instance=name,
                        redis_db=REDIS_DB)
            site.create_database()
            if not template.exists():  # restic init once (~1.5 s a repository), copied for the others
                for repo in ("files", "pg-database"):
                    subprocess.run(["restic", "init", "-q", "--no-cache", "--repo", str(template / repo)],
                                   check=True, capture_output=True,
                                   env={"PATH": os.environ["PATH"], "RESTIC_PASSWORD_FILE": str(site.password_file)})
            shutil.copytree(template, site.repo)
            self.sites[name] = site

    def worker_env(self, site: Site) -> dict:
        return {**os.environ, **site.env, "HOME": str(site.root), "PYTHONPATH": str(ROOT),
                "JOB_LOCK_LEASE": str(self.args.lease), "BACKUP_WINDOW": self.args.window,
                "FLEET_MAX_CONCURRENT_BACKUPS": str(self.args.cap), "BACKUP_SCHEDULE": "10 23 * * *",
                "PRUNE_SCHEDULE": "off", "CHECK_SCHEDULE": "off", "VERIFY_SCHEDULE": "off"}

    def start_workers(self) -> None:
        from worker.celery_app import make_app

        for name, site in self.sites.items():
            self.workers[name] = WorkerProcess(self.worker_env(site), False, site.root / "worker.log")
        for name, worker in self.workers.items():
            deadline = time.monotonic() + 300
            while " ready." not in worker.output():
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {name} did not start:\n{worker.output()[-2000:]}")
                time.sleep(0.2)
            app = make_app(self.sites[name].env)
            while reconcile_now(app, timeout=120)["state"] != "ok":
                time.sleep(0.2)

    def worker_rss_kb(self) -> list[int]:
        out = []
        for worker in self.workers.values():
            try:
                status = Path(f"/proc/{worker.proc.pid}/status").read_text()
                out.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))))
            except (OSError, StopIteration):
                pass
        return out

    def stop(self) -> None:
        for worker in self.workers.values():
            try:
                worker.stop()
            except Exception:
                worker.kill()
        self.kube.stop()
        self.pg.cleanup()
        self.redis.cleanup()


def broker_memory(client, instances) -> dict:
    """INFO memory's used_memory, and MEMORY USAGE summed over each instance's keys (its own
    prefix and its queue), the shared ones (fleet, heartbeats, Celery results, kombu) apart."""
    from worker.adapters.redis_store import own
    from worker.runtime.stamp import queue

    per: dict[str, int] = {}
    counts: dict[str, int] = {}
    for name in instances:
        keys = list(client.scan_iter(match=own(name) + "*", count=1000)) + \
            [k for k in (queue(name).encode(),) if client.exists(k)]
        per[name] = sum(client.memory_usage(k) or 0 for k in keys)
        counts[name] = len(keys)
    everything = list(client.scan_iter(count=1000))
    total_keys = sum(client.memory_usage(k) or 0 for k in everything)
    results = [k for k in everything if k.startswith(b"celery-task-meta-")]
    info = client.info("memory")
    return {"used_memory": info["used_memory"], "used_memory_dataset": info.get("used_memory_dataset"),
            "connected_clients": client.info("clients")["connected_clients"],
            "keys": len(everything), "keys_bytes": total_keys, "celery_results": len(results),
            "celery_results_bytes": sum(client.memory_usage(k) or 0 for k in results), "per_instance_bytes": per, "per_instance_keys": counts}


class Sampler:
    """Every 20 ms: the slots' live holders and how many apps are down."""

    def __init__(self, fleet: Fleet, cap: int):
        from worker.adapters.fleet_slots import Slots

        self.slots = Slots(fleet.client(), cap, fleet.args.lease)
        self.fleet = fleet
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _down(self) -> int:
        return sum(any(self.fleet.kube.replicas(name, d) != n for d, n in BACKUP_DEPLOYMENTS.items())
                   for name in self.fleet.sites)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.monotonic(), len(self.slots.holders()), self._down()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def run(args) -> dict:
    from worker.celery_app import make_app
    from worker.settings import backup_cron, instance_offset, read

    window = read("BACKUP_WINDOW", {"BACKUP_WINDOW": args.window})
    fleet = Fleet(args)
    try:
        log(f"{args.instances} sites ...")
        fleet.make_sites()
        client = fleet.client()
        memory = {"before_workers": broker_memory(client, fleet.sites)}
        log("workers ...")
        t0 = time.monotonic()
        fleet.start_workers()
        log(f"workers ready in {time.monotonic() - t0:.0f} s")
        memory["idle"] = broker_memory(client, fleet.sites)
        rss_idle = fleet.worker_rss_kb()
        offsets = {name: instance_offset(name, window) for name in fleet.sites}
        crons = {name: backup_cron(fleet.worker_env(site)) for name, site in fleet.sites.items()}
        apps = {name: make_app(site.env) for name, site in fleet.sites.items()}
        sampler = Sampler(fleet, args.cap)
        start = time.monotonic()
        sent: dict[str, tuple[float, object]] = {}
        for name in sorted(offsets, key=offsets.get):
            delay = start + offsets[name] * args.seconds_per_minute - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[name] = (time.monotonic() - start, apps[name].send_task("taiga_backup.backup"))
        log(f"sent {len(sent)} backups over {time.monotonic() - start:.0f} s")
        reports = {}
        for name, (_, result) in sent.items():
            try:
                reports[name] = result.get(timeout=1800)
            except Exception as exc:
                reports[name] = {"state": "FAILURE", "error": str(exc)}
        ended = time.monotonic() - start
        sampler.stop()
        memory["after"] = broker_memory(client, fleet.sites)
        rss_after = fleet.worker_rss_kb()
        snapshots = {name: {repo: len(json.loads(site.restic(repo, "snapshots", "--json", "--no-lock").stdout or b"[]"))
                            for repo in ("files", "pg-database")} for name, site in fleet.sites.items()}
        return {
            "instances": args.instances, "window": args.window, "window_minutes": window, "cap": args.cap,
            "seconds_per_minute": args.seconds_per_minute, "lease": args.lease,
            "offsets_minutes": offsets, "crons": crons,
            "sent_at_s": {name: round(at, 2) for name, (at, _) in sent.items()},
            "all_ended_s": round(ended, 1),
            "states": {name: r.get("state") for name, r in reports.items()},
            "errors": {name: r.get("error") for name, r in reports.items() if r.get("state") != "SUCCESS"},
            "waited_s": {name: (r.get("steps", {}).get("fleet_slot") or {}).get("waited_seconds")
                         for name, r in reports.items()},
            "duration_s": {name: r.get("duration_seconds") for name, r in reports.items()},
            "downtime_s": {name: r.get("downtime_seconds") for name, r in reports.items()},
            "snapshots": snapshots,
            "max_holders": max((h for _, h, _ in sampler.samples), default=0),
            "max_apps_down": max((d for _, _, d in sampler.samples), default=0),
            "samples": len(sampler.samples),
            "memory": memory,
            "worker_rss_kb": {"idle_median": statistics.median(rss_idle) if rss_idle else None,
                              "after_median": statistics.median(rss_after) if rss_after else None},
        }
    finally:
        fleet.stop()


def summary(r: dict) -> str:
    n = r["instances"]
    offsets = sorted(r["offsets_minutes"].values())
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    once = sum(state == "SUCCESS" and r["snapshots"][name] == {"files": 1, "pg-database": 1}
               for name, state in r["states"].items())
    waited = [w for w in r["waited_s"].values() if w is not None]
    mem = r["memory"]
    per_idle = statistics.mean(mem["idle"]["per_instance_bytes"].values())
    per_after = statistics.mean(mem["after"]["per_instance_bytes"].values())
    lines = [
        f"| {n} instances, BACKUP_WINDOW={r['window']}, FLEET_MAX_CONCURRENT_BACKUPS={r['cap']} | |",
        "|---|---|",
        f"| backed up once (SUCCESS, one snapshot per repository) | {once} of {n} |",
        f"| most slot holders at once (sampled every 20 ms) | {r['max_holders']} (cap {r['cap']}) |",
        f"| most apps down at once | {r['max_apps_down']} |",
        f"| start offsets (minutes into the window) | {offsets[0]} to {offsets[-1]}, {len(set(offsets))} distinct, "
        f"median gap {statistics.median(gaps) if gaps else 0} |",
        f"| wait for a slot (s, window at {r['seconds_per_minute']} s/min) | median {statistics.median(waited):.1f}, "
        f"max {max(waited):.1f}; {sum(w > 0.5 for w in waited)} of {len(waited)} waited |" if waited else "| wait | - |",
        f"| backup duration, its wait for a slot included / not (s) | median "
        f"{statistics.median(v for v in r['duration_s'].values() if v):.1f} / "
        f"{statistics.median(d - (r['waited_s'][k] or 0) for k, d in r['duration_s'].items() if d):.1f} |",
        f"| app downtime per backup (s) | median {statistics.median(v for v in r['downtime_s'].values() if v):.1f} |",
        f"| all sent and ended within (s) | {r['all_ended_s']} |",
        f"| broker used_memory: no workers / idle / after | {mem['before_workers']['used_memory'] / KB:.0f} / "
        f"{mem['idle']['used_memory'] / KB:.0f} / {mem['after']['used_memory'] / KB:.0f} KiB |",
        f"| per instance: used_memory growth idle / after the backup | "
        f"{(mem['idle']['used_memory'] - mem['before_workers']['used_memory']) / n / KB:.1f} / "
        f"{(mem['after']['used_memory'] - mem['before_workers']['used_memory']) / n / KB:.1f} KiB |",
        f"| per instance: its own keys (MEMORY USAGE) idle / after | {per_idle / KB:.1f} / {per_after / KB:.1f} KiB |",
        f"| keys on the broker: idle / after | {mem['idle']['keys']} / {mem['after']['keys']} |",
        f"| Celery results after (shared, 30 days): keys, per backup | {mem['after']['celery_results']}, "
        f"{mem['after']['celery_results_bytes'] / n / KB:.1f} KiB |",
        f"| broker connections: no workers / idle / after | {mem['before_workers']['connected_clients']} / "
        f"{mem['idle']['connected_clients']} / {mem['after']['connected_clients']} |",
        f"| worker RSS, median idle / after | {r['worker_rss_kb']['idle_median'] / KB:.0f} / "
        f"{r['worker_rss_kb']['after_median'] / KB:.0f} MiB |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fleet-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(summary(result))
    log(f"raw numbers: {path}")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
