"""The bench's laboratory: the throw-away servers, the dataset, one set of restic repositories per
variant and one real worker process per taiga-backup variant, and the results gathered so far.

Why one object: every measured run (bench.pipelines, bench.experiments) needs the same servers,
paths and workers, and must record its figures in the same place; the script (bench.run) only
decides the order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import MB, log
from bench.old_operator import RESTORE_DEPLOYMENTS, Operator
from bench.probes import dir_bytes, loadavg
from bench.worker_view import TaskEvents
from testkit import dataset
from testkit.k8s_double import KubeApiDouble
from testkit.servers import PostgresCluster, RedisServer, free_port
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE, ROOT
from worker.backups import media

DB_NAME, DB_USER, DB_PASSWORD = "taiga", "taiga", "taiga-bench-db-pw"
RESTIC_PASSWORD = "taiga-bench-restic-pw"


class Lab:
    """Servers, data, repositories and workers of one bench run (bench.run makes one)."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="tb-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.media = self.work / "media"
        self.secrets = self.work / "secrets"
        self.secrets.mkdir(exist_ok=True)
        self.password_file = self.secrets / "restic-password"
        self.password_file.write_text(RESTIC_PASSWORD + "\n")
        (self.secrets / "postgres-password").write_text(DB_PASSWORD + "\n")
        self.codes = args.code  # label -> tree the worker and CLI run from
        self.redis = self.pg = self.kube = None
        self.workers: dict[str, dict] = {}
        self.results: dict = {"runs": [], "experiments": []}

    # -- servers, data ---------------------------------------------------------------------
    def start_servers(self) -> None:
        self.redis = RedisServer().start()
        self.pg = PostgresCluster().start()
        self.kube = KubeApiDouble(pod_start_delay=self.args.pod_start_delay,
                                  pod_stop_delay=self.args.pod_stop_delay).start()
        self.kubeconfig = self.kube.write_kubeconfig(str(self.work / "kubeconfig"))
        for name, replicas in RESTORE_DEPLOYMENTS.items():
            self.kube.add_deployment(NAMESPACE, name, replicas=replicas)
        self.operator = Operator(self.kubeconfig)

    def stop_servers(self) -> None:
        for w in self.workers.values():
            self.stop_worker(w)
        if self.kube:
            self.kube.stop()
        if self.pg:
            self.pg.cleanup()
        if self.redis:
            self.redis.cleanup()

    @property
    def db(self) -> dict:
        return {"host": "127.0.0.1", "port": self.pg.port, "user": DB_USER, "password": DB_PASSWORD,
                "dbname": DB_NAME}

    def conninfo(self, dbname: str = DB_NAME) -> str:
        return (f"host=127.0.0.1 port={self.pg.port} user={DB_USER} password={DB_PASSWORD} "
                f"dbname={dbname}")

    def generate(self) -> dict:
        self.pg.create_app_db(DB_NAME, DB_USER, DB_PASSWORD)
        dataset.create_schema(self.conninfo())
        log(f"generating the dataset at scale {self.args.scale} ...")
        stats = dataset.populate(self.conninfo(), str(self.media), scale=self.args.scale, seed=self.args.seed)
        (self.media / media.MARKER).touch()  # Taiga's media, for the restore (media.check_target)
        if self.args.small_files:
            n, written = thumbnails(self.media, self.args.small_files)
            stats.update(thumbnails=n, media_files=stats["media_files"] + n, media_bytes=stats["media_bytes"] + written)
        log(f"dataset: {stats['db_bytes'] / MB:.0f} MB database, {stats['media_bytes'] / MB:.0f} MB media "
            f"({stats['media_files']} files) in {stats['seconds']} s")
        return stats

    # -- repositories ---------------------------------------------------------------------------
    def repo_base(self, variant: str) -> Path:
        return self.work / "repos" / variant

    def cache_dir(self, variant: str) -> Path:
        return self.work / "cache" / variant

    def restic_env(self, repo: str, cache: str) -> dict:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(RESTIC_REPOSITORY=repo, RESTIC_PASSWORD_FILE=str(self.password_file), RESTIC_CACHE_DIR=cache)
        return env

    def old_env(self, variant: str) -> dict:
        """The environment the old procedure's commands get (testkit.old_procedure adds the rest)."""
        return {"RESTIC_PASSWORD_FILE": str(self.password_file), "RESTIC_CACHE_DIR": str(self.cache_dir(variant))}

    def fresh_repos(self, variant: str, names=("files", "pg-database")) -> None:
        base, cache = self.repo_base(variant), self.cache_dir(variant)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        base.mkdir(parents=True)
        cache.mkdir(parents=True)
        for name in names:
            subprocess.run(["restic", "init"], env=self.restic_env(str(base / name), str(cache)), check=True,
                           capture_output=True)

    def repo_sizes(self, variant: str) -> dict:
        base = self.repo_base(variant)
        return {p.name: dir_bytes(p) for p in sorted(base.iterdir())} if base.exists() else {}

    # -- taiga-backup workers ---------------------------------------------------------------------
    def worker_env(self, variant: str, fmt: str, code: Path = ROOT) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "RESTIC_", "POSTGRES_", "PG"))}
        db_index = 1 + len(self.workers)
        env.update({
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis.port}/{db_index}",
            "RESTIC_REPOSITORY": str(self.repo_base(variant)),
            "RESTIC_PASSWORD_FILE": str(self.password_file),
            "RESTIC_CACHE_DIR": str(self.cache_dir(variant)),
            "POSTGRES_HOST": f"127.0.0.1:{self.pg.port}",
            "POSTGRES_DB": DB_NAME,
            "POSTGRES_USER": DB_USER,
            "POSTGRES_PASSWORD_FILE": str(self.secrets / "postgres-password"),
            "PG_DUMP_FORMAT": fmt,
            "BACKUP_FILES_DIR": str(self.media),
            "KUBECONFIG": self.kubeconfig,
            "KUBE_NAMESPACE": NAMESPACE,
            "QUIESCE_DEPLOYMENTS": ",".join(BACKUP_DEPLOYMENTS),
            "RESTORE_QUIESCE_DEPLOYMENTS": ",".join(RESTORE_DEPLOYMENTS),
            "RESTORE_CHOWN": "off",
            "QUIESCE_TIMEOUT": "300",
            "RESUME_TIMEOUT": "300",
            "JOB_LOCK_LEASE": str(self.args.lease),
            "METRICS_PORT": str(free_port()),
            "BACKUP_SCHEDULE": "off", "PRUNE_SCHEDULE": "off", "CHECK_SCHEDULE": "off", "VERIFY_SCHEDULE": "off",
            "HOME": str(self.work),
            "PYTHONPATH": str(code),
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "text",  # bench.worker_view reads step times from the text log
        })
        return env

    def settings(self):
        """The worker's Settings for this lab (the experiments build the worker's own argv from them)."""
        from worker.settings import Settings

        return Settings.from_env(self.worker_env("exp", "plain"))

    def start_worker(self, variant: str, fmt: str, code: Path = ROOT) -> dict:
        from worker.celery_app import make_app

        env = self.worker_env(variant, fmt, code)
        logf = open(self.work / f"worker-{variant}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--loglevel", "INFO"], cwd=str(code),
                                env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        app = make_app(env)
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {variant} did not start; see {logf.name}")
        registered = []
        try:
            replies = app.control.inspect(timeout=2).registered() or {}
            registered = sorted({t for tasks in replies.values() for t in tasks})
        except Exception:
            pass
        w = {"variant": variant, "format": fmt, "code": str(code), "env": env, "proc": proc, "log": logf, "app": app,
             "events": TaskEvents(app), "registered": registered, "started": time.monotonic()}
        self.workers[variant] = w
        return w

    def worker_pids(self) -> set[int]:
        """The workers' processes: left out when the bench's own process tree is watched."""
        return {w["proc"].pid for w in self.workers.values()}

    def settle(self) -> None:
        """The start-up reconciles (now and after the lease) must be over before timing anything."""
        if not self.workers:
            return
        wait = max(w["started"] for w in self.workers.values()) + self.args.lease + 4 - time.monotonic()
        if wait > 0:
            log(f"waiting {wait:.0f} s for the workers' start-up reconciles")
            time.sleep(wait)

    def stop_worker(self, w: dict) -> None:
        w["events"].stop()
        if w["proc"].poll() is None:
            os.killpg(w["proc"].pid, signal.SIGTERM)
            try:
                w["proc"].wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(w["proc"].pid, signal.SIGKILL)
                w["proc"].wait()
        w["log"].close()

    # -- results -----------------------------------------------------------------------------------
    def record(self, run: dict) -> dict:
        run["loadavg"] = loadavg()
        self.results["runs"].append(run)
        brief = {k: run.get(k) for k in ("wall_s", "downtime_s", "data_added", "repo_growth", "error")}
        log(f"{run['phase']:<8} {run['variant']:<10} {json.dumps(brief)}")
        return run


def standalone_db(work: Path, scale: float, names: tuple[str, str, str]) -> tuple[PostgresCluster, str, dict]:
    """A throw-away cluster holding the Taiga-like dataset at `scale` (its media under work/media),
    for the scripts that measure one part without the lab's other servers (bench.growth,
    bench.stream_costs): the cluster (the caller cleans it up), its conninfo, the dataset's stats.
    names: (database, user, password)."""
    db, user, password = names
    pg = PostgresCluster().start()
    try:
        pg.create_app_db(db, user, password)
        conninfo = f"host=127.0.0.1 port={pg.port} user={user} password={password} dbname={db}"
        dataset.create_schema(conninfo)
        log(f"generating the dataset at scale {scale} ...")
        return pg, conninfo, dataset.populate(conninfo, str(work / "media"), scale=scale, seed=1)
    except BaseException:
        pg.cleanup()
        raise


def thumbnails(root: Path, n: int, seed: int = 3) -> tuple[int, int]:
    """n small files (1-6 KB, Taiga's thumbnails) in a two-level fan-out under root/thumbnails,
    for the many-files curve: what costs per file (the tree's looks, restic's scan) rather than
    per byte. Returns (files, bytes) written."""
    import random

    rng = random.Random(seed)
    t0 = time.monotonic()
    written = 0
    blob = os.urandom(6 * 1024 + 4096)
    for i in range(n):
        d = root / "thumbnails" / f"{i % 256:02x}" / f"{(i // 256) % 64:02x}"
        if i < 256 * 64:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 6 * 1024)
        offset = rng.randint(0, 4096)
        (d / f"thumb-{i}.jpg").write_bytes(blob[offset:offset + size])
        written += size
    log(f"{n} thumbnails ({written / MB:.0f} MB) written in {time.monotonic() - t0:.0f} s")
    return n, written
