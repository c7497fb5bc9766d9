"""Shared real parts: one redis-server, one PostgreSQL cluster and one Kubernetes API double per
session; a fresh "site" (database, media directory, restic repository, deployments) per test;
real worker processes on demand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit import restic_keys  # noqa: E402
from testkit.k8s_double import KubeApiDouble  # noqa: E402
from testkit.servers import PostgresCluster, RedisServer  # noqa: E402
from testkit.site import (BACKUP_DEPLOYMENTS, NAMESPACE, RESTORE_ONLY_DEPLOYMENTS, Site,  # noqa: E402
                          WorkerProcess, copy_tree)


def pytest_report_header(config):
    """Which restic every test and worker runs (CI runs the suite with two): first on PATH."""
    try:
        found = subprocess.run(["restic", "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        found = f"none ({exc})"
    return f"restic: {found}"

@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_client(redis_server):
    """A client on the session's redis-server, its database 0 (no site's: they use 1 to 15) empty
    before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def pg():
    cluster = PostgresCluster().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    double = KubeApiDouble(pod_start_delay=0.3, pod_stop_delay=0.6).start()
    double.kubeconfig = double.write_kubeconfig(str(tmp_path_factory.mktemp("kube") / "kubeconfig"))
    yield double
    double.stop()


@pytest.fixture(scope="session")
def restic_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("restic-cache"))


@pytest.fixture
def site(tmp_path, pg, redis_server, kube, restic_cache, monkeypatch):
    kube.reset()
    for name, replicas in {**BACKUP_DEPLOYMENTS, **RESTORE_ONLY_DEPLOYMENTS}.items():
        kube.add_deployment(NAMESPACE, name, replicas=replicas)
    s = Site(tmp_path, pg, redis_server, kube, restic_cache)
    s.create_database()
    for key, value in s.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    return s


@pytest.fixture
def start_worker(site, tmp_path):
    started = []

    def start(beat: bool = False, pid_namespace: bool = False, **extra_env) -> WorkerProcess:
        env = {**os.environ, **site.env, **{k: str(v) for k, v in extra_env.items()}, "HOME": str(tmp_path),
               "PYTHONPATH": str(ROOT)}
        w = WorkerProcess(env, beat, tmp_path / f"worker-{len(started)}.log", pid_namespace)
        started.append(w)
        return w.wait_ready()

    yield start
    for w in started:
        try:
            w.stop()
        except Exception:
            w.kill()


_empty_repos: dict = {}


@pytest.fixture
def repos(site, tmp_path_factory, monkeypatch):
    """Both repositories, empty, without paying `restic init` (~1.5 s each) per test: copies of a pair
    made once. Copies share a repository id, so each test gets its own restic cache."""
    if not _empty_repos:
        template = tmp_path_factory.mktemp("empty-repos")
        for name in ("files", "pg-database"):
            subprocess.run(["restic", "init", "-q", "--no-cache", "--repo", str(template / name)], check=True,
                           capture_output=True,
                           env={"PATH": os.environ["PATH"], "RESTIC_PASSWORD_FILE": str(site.password_file)})
            restic_keys.cheapen(template / name, site.password_file.read_bytes().rstrip(b"\r\n"))
        _empty_repos["path"] = template
    copy_tree(_empty_repos["path"], site.repo)
    site.env["RESTIC_CACHE_DIR"] = str(site.root / "restic-cache")
    monkeypatch.setenv("RESTIC_CACHE_DIR", site.env["RESTIC_CACHE_DIR"])
    return site


@pytest.fixture
def celery_client(site):
    """A plain Celery client on the site's broker: what the CLI or a chat-ops bot uses. kombu's
    connection pools are global to the process: emptied first, so no connection to a Redis an
    earlier test restarted ("Connection closed by server") is handed to this test."""
    from kombu import pools

    from worker.celery_app import make_app

    pools.reset()
    return make_app(site.env)


