"""The main job, end to end, on throwaway local parts: a PostgreSQL cluster with Taiga-like data,
a redis-server, a restic repository, a stand-in Kubernetes API with Taiga's deployments, and a
real taiga-backup worker. Backup -> change the data -> restore -> prove it is back byte for byte.

Everything lives in a temporary directory that is removed at the end (--keep to keep it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from testkit import dataset  # noqa: E402
from testkit.k8s_double import KubeApiDouble  # noqa: E402
from testkit.restore_checks import live_files  # noqa: E402
from testkit.scenarios import ALL_DEPLOYMENTS as DEPLOYMENTS  # noqa: E402
from testkit.servers import PostgresCluster, RedisServer  # noqa: E402
from worker.backups.media import MARKER  # noqa: E402

DB_PASSWORD = "demo-db-password"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(env: dict, *args: str) -> dict:
    """Runs the real CLI, as an operator would, and returns its JSON."""
    done = subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        print(done.stdout)
        raise SystemExit(f"demo: `taiga-backup {' '.join(args)}` failed (exit {done.returncode})")
    return json.loads(done.stdout)


class Lab:
    """The throwaway parts, started in order and stopped whatever happened."""

    def __init__(self, work: Path):
        self.work = work
        self.media = work / "media"
        self.redis = self.pg = self.kube = self.worker = None

    def start(self) -> "Lab":
        say(f"starting throwaway redis-server, PostgreSQL and a Kubernetes API stand-in in {self.work}")
        self.redis = RedisServer().start()
        self.pg = PostgresCluster().start()
        self.pg.create_app_db("taiga", "taiga", DB_PASSWORD)
        self.kube = KubeApiDouble().start()
        for name, replicas in DEPLOYMENTS.items():
            self.kube.add_deployment("taiga", name, replicas=replicas)
        return self

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.pg.port} user=taiga password={DB_PASSWORD} dbname=taiga"

    def generate(self, scale: float) -> None:
        say(f"generating Taiga-like sample data (scale {scale})")
        dataset.create_schema(self.conninfo)
        stats = dataset.populate(self.conninfo, str(self.media), scale=scale)
        (self.media / MARKER).touch()  # a restore replaces only a directory marked (or mounted) as Taiga's media
        print(f"   {sum(stats['db_rows'].values())} rows, {stats['media_files']} media files, "
              f"{stats['media_bytes'] / 1e6:.1f} MB of media")

    def env(self) -> dict:
        """The worker's and the CLI's settings, secrets as files."""
        secrets = self.work / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "restic-password").write_text("demo-restic-password\n")
        (secrets / "postgres-password").write_text(DB_PASSWORD + "\n")
        return {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(self.work),
                "CELERY_BROKER_URL": self.redis.url,
                "RESTIC_REPOSITORY": str(self.work / "repo"),
                "RESTIC_PASSWORD_FILE": str(secrets / "restic-password"),
                "RESTIC_CACHE_DIR": str(self.work / "restic-cache"),
                "POSTGRES_HOST": f"127.0.0.1:{self.pg.port}", "POSTGRES_DB": "taiga", "POSTGRES_USER": "taiga",
                "POSTGRES_PASSWORD_FILE": str(secrets / "postgres-password"),
                "BACKUP_FILES_DIR": str(self.media),
                "KUBECONFIG": self.kube.write_kubeconfig(str(self.work / "kubeconfig")), "KUBE_NAMESPACE": "taiga",
                "RESTORE_CHOWN": "off"}

    def start_worker(self, env: dict) -> None:
        say("starting a taiga-backup worker")
        log = open(self.work / "worker.log", "wb")
        self.worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--schedule-file",
                                        str(self.work / "beat")], env=env, cwd=str(ROOT), stdout=log,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, "-m", "worker.cli", "ping", "--timeout", "1"], env=env, cwd=str(ROOT),
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.worker.poll() is not None:
                raise SystemExit("demo: the worker did not start:\n" + (self.work / "worker.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        if self.kube is not None:
            self.kube.stop()
        for part in (self.pg, self.redis):
            if part is not None:
                part.cleanup()


def round_trip(lab: Lab, env: dict, before_db: dict) -> dict:
    """Backup -> a day of changes -> restore of that backup; returns the restore's report."""
    say("taiga-backup backup --wait --json")
    backup = cli(env, "backup", "--wait", "--json")["result"]
    print(json.dumps({k: backup[k] for k in ("backup_id", "snapshots", "bytes_added", "downtime_seconds",
                                              "duration_seconds", "deployments")}, indent=2))

    say("changing the data: a day of Taiga work, plus a file that should not survive the restore")
    changes = dataset.apply_day_of_changes(lab.conninfo, str(lab.media))
    (lab.media / "added-after-backup.txt").write_text("gone after the restore\n")
    print(f"   {changes['media_files_added']} media files added, {changes['media_files_deleted']} deleted")
    assert dataset.table_checksums(lab.conninfo) != before_db

    say(f"taiga-backup restore --snapshot {backup['backup_id']} --wait --json")
    restore = cli(env, "restore", "--snapshot", backup["backup_id"], "--wait", "--json")["result"]
    print(json.dumps({k: restore.get(k) for k in ("backup_id", "safety_backup", "database", "files", "kept",
                                                   "downtime_seconds", "duration_seconds")}, indent=2))
    queued = restore.get("safety_backup")
    if queued and queued.get("task_id"):  # the restore answered with the app up; its safety backup runs after
        say(f"taiga-backup status {queued['task_id']} --wait --json   (the restore's safety backup, a job of its own)")
        safety = cli(env, "status", queued["task_id"], "--wait", "--json")["result"]
        print(json.dumps({k: safety.get(k) for k in ("backup_id", "snapshots", "bytes_added", "duration_seconds")},
                         indent=2))
    return restore


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.01, help="dataset scale (1.0 = 1 GB db + 1 GB media)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="taiga-backup-demo-"))
    lab = Lab(work)
    try:
        lab.start().generate(args.scale)
        env = lab.env()
        lab.start_worker(env)
        before_db, before_files = dataset.table_checksums(lab.conninfo), live_files(lab.media)
        restore = round_trip(lab, env, before_db)

        say("checking the round trip")
        same_db = dataset.table_checksums(lab.conninfo) == before_db
        same_files = live_files(lab.media) == before_files
        replicas = {name: lab.kube.replicas("taiga", name) for name in DEPLOYMENTS}
        print(f"   database identical to the backup: {same_db}")
        print(f"   media identical to the backup:    {same_files} (the replaced media are kept in "
              f"{restore['kept']['files_dir'] if restore.get('kept') else '-'}, for undo-restore)")
        print(f"   deployments back at their counts: {replicas == DEPLOYMENTS} {replicas}")
        if not (same_db and same_files and replicas == DEPLOYMENTS):
            raise SystemExit("demo: round trip FAILED")
        print("\nround trip OK: backup -> change -> restore gave back the same bytes")
        return 0
    finally:
        lab.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
