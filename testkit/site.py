"""One Taiga installation under test and the real worker processes that serve it: shared by
the tests (tests/conftest.py makes fixtures of them), the benchmark and the demo."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from testkit.k8s_double import KubeApiDouble
from testkit.servers import PostgresCluster, RedisServer
from worker.backups import media
from worker.runtime.stamp import node_name
from worker.settings import read

ROOT = Path(__file__).resolve().parents[1]

NAMESPACE = "taiga"
BACKUP_DEPLOYMENTS = {"taiga-gateway-deployment": 1, "taiga-front-deployment": 2}
RESTORE_ONLY_DEPLOYMENTS = {"taiga-back-deployment": 1, "taiga-async-deployment": 1,
                            "taiga-events-deployment": 1, "taiga-protected-deployment": 1}
_counter = itertools.count(1)


class Site:
    """One Taiga installation under test: its settings (env), database, media and repository."""

    def __init__(self, root: Path, pg: PostgresCluster, redis_server: RedisServer, kube: KubeApiDouble,
                 cache: str, instance: str = "taiga", redis_db: int | None = None):
        """`instance`: its TAIGA_INSTANCE and its namespace in the Kubernetes double; `redis_db`:
        the broker's database, to share one with another site (default: one of its own)."""
        n = next(_counter)
        self.instance = self.namespace = instance
        self.root = root
        self.pg = pg
        self.kube = kube
        self.redis_server = redis_server
        self.dbname = f"taiga_{n}"
        self.db_user = "taiga"
        self.db_password = "taiga-db-secret-pw"
        self.media = root / "media"
        self.repo = root / "repo"
        self.secrets = root / "secrets"
        self.media.mkdir()
        self.secrets.mkdir()
        self.password_file = self.secrets / "restic-password"
        self.password_file.write_text("restic-secret-password-1\n")
        (self.secrets / "postgres-password").write_text(self.db_password + "\n")
        self.redis_db = (n % 15) + 1 if redis_db is None else redis_db
        if redis_db is None:  # its own: emptied of what the site that had it 15 sites ago left (reports, queues)
            redis.Redis(port=redis_server.port, db=self.redis_db).flushdb()
        self.env = {
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/{self.redis_db}",
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_PASSWORD_FILE": str(self.password_file),
            "RESTIC_CACHE_DIR": cache,
            "POSTGRES_HOST": f"127.0.0.1:{pg.port}",
            "POSTGRES_DB": self.dbname,
            "POSTGRES_USER": self.db_user,
            "POSTGRES_PASSWORD_FILE": str(self.secrets / "postgres-password"),
            "BACKUP_FILES_DIR": str(self.media),
            "KUBECONFIG": kube.kubeconfig,
            "KUBE_NAMESPACE": self.namespace,
            "TAIGA_INSTANCE": instance,
            "QUIESCE_DEPLOYMENTS": ",".join(BACKUP_DEPLOYMENTS),
            "RESTORE_QUIESCE_DEPLOYMENTS": ",".join({**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}),
            "RESTORE_CHOWN": "off",
            "QUIESCE_TIMEOUT": "30",
            "RESUME_TIMEOUT": "30",
            "JOB_LOCK_LEASE": "10",
            "METRICS_PORT": "0",
        }

    @property
    def conninfo(self) -> str:
        return (f"host=127.0.0.1 port={self.pg.port} user={self.db_user} password={self.db_password} "
                f"dbname={self.dbname}")

    def create_database(self, populate: bool = True) -> None:
        self.pg.create_app_db(self.dbname, self.db_user, self.db_password)
        if populate:
            from testkit import dataset

            dataset.create_schema(self.conninfo)
            dataset.populate(self.conninfo, str(self.media), scale=0.001, seed=next(_counter))
        (self.media / media.MARKER).touch()  # marks it as Taiga's media (media.check_target)

    def settings(self, **overrides):
        from worker.settings import Settings

        return Settings.from_env({**self.env, **overrides})

    def replicas(self) -> dict:
        return {name: self.kube.replicas(self.namespace, name) for name in {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}}

    def restic(self, repo: str, *args: str, input: bytes | None = None, check: bool = True,
               password_file: str | None = None) -> subprocess.CompletedProcess:
        """Plain restic, as an operator would run it (for assertions independent of our code)."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.root),
               "RESTIC_PASSWORD_FILE": str(password_file or self.password_file),
               "RESTIC_REPOSITORY": f"{self.repo}/{repo}", "RESTIC_CACHE_DIR": self.env["RESTIC_CACHE_DIR"]}
        return subprocess.run(["restic", *args], env=env, capture_output=True, check=check, input=input)


def another_instance(site: Site, root: Path, instance: str) -> Site:
    """A second Taiga on the same broker (Redis database), PostgreSQL cluster and Kubernetes
    double as `site`: its own database, media, namespace and deployments, and a copy of `site`'s
    repositories as they are now (take it before the first backup: empty), with its own cache."""
    root.mkdir(parents=True, exist_ok=True)
    other = Site(root, site.pg, site.redis_server, site.kube, site.env["RESTIC_CACHE_DIR"], instance=instance,
                 redis_db=site.redis_db)
    for name, replicas in {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}.items():
        site.kube.add_deployment(other.namespace, name, replicas=replicas)
    other.create_database()
    if site.repo.exists():
        copy_tree(site.repo, other.repo)
    other.env["RESTIC_CACHE_DIR"] = str(root / "restic-cache")
    return other


def descendants(pid: int) -> list[int]:
    """Every process below pid, from /proc (children that started sessions of their own too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class WorkerProcess:
    """A real `taiga-backup worker` process (optionally with embedded beat). `pid_namespace`: in
    a PID namespace of its own, where it is pid 1 every time, as under a container's tini
    (needs root)."""

    def __init__(self, env: dict, beat: bool, log_path: Path, pid_namespace: bool = False):
        self.env = env
        self.log_path = log_path
        argv = [sys.executable, "-m", "worker.cli", "worker", "--loglevel", "INFO",
                "--schedule-file", str(log_path.parent / "beat-schedule")]
        if beat:
            argv.append("--beat")
        if pid_namespace:
            argv = ["unshare", "--pid", "--fork", "--kill-child", *argv]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=str(ROOT), env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def client(self):
        from worker.celery_app import make_app

        return make_app(self.env)

    def wait_ready(self, timeout: float = 30.0) -> "WorkerProcess":
        app = self.client()
        # its own node: another instance's worker on this broker answering says nothing of this one
        own = [node_name(read("TAIGA_INSTANCE", self.env), socket.gethostname())]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if app.control.ping(destination=own, timeout=0.5):
                    return self
            except app.connection_for_write().connection_errors:
                # kombu shares connection pools per URL across the process: one pooled before a
                # Redis restart (test_faults) fails once, then is replaced
                time.sleep(0.1)
        raise TimeoutError(f"worker did not answer a ping within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kills the whole process group, as a pod's OOM kill or deletion would. With SIGKILL also
        every descendant (pg_dump and restic run in sessions of their own, but a container dies
        as a whole): all are stopped first, so none sees another's death before its own."""
        doomed = descendants(self.proc.pid) if sig == signal.SIGKILL else []
        for pid in doomed:
            _signal(pid, signal.SIGSTOP)
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in doomed:
            _signal(pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.log.close()


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
