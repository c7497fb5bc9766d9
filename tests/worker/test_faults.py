"""Faults in the parts a backup depends on, each done to the real thing: Redis restarted, PostgreSQL
stopped mid-dump, the S3 endpoint gone, the Kubernetes API refusing or away, every step's deadline.
Whatever happens: the job ends FAILURE (or SUCCESS) clearly, the app is back, no half backup stays."""

from __future__ import annotations

import json
import socket
import time

import psycopg
import pytest
from celery.result import AsyncResult

from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE
from testkit.faults import app_back, dump_blocked, in_thread, snapshot_ids, wait_until
from testkit.servers import MotoServer, free_port
from worker.backups import layout
from worker.errors import JobFailed
from worker.adapters.redis_store import connect as redis_connect
from testkit.scenarios import run_backup
from testkit.scenarios import hold_table_lock

DEADLINE = "did not finish before its deadline and was killed"


def failure_of(fn) -> str:
    with pytest.raises(JobFailed) as err:
        fn()
    return str(err.value)


def assert_no_snapshots(site):
    assert snapshot_ids(site, "pg-database") == [] and snapshot_ids(site, "files") == []


# -- Redis -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_redis_restarted_during_a_backup(repos, start_worker, celery_client):
    """Redis (no persistence: everything in it is lost) goes away for 3 s while pg_dump runs."""
    site = repos
    start_worker()
    lock = hold_table_lock(site)
    try:
        task = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: dump_blocked(site), 60, "pg_dump running with the app at 0")
        site.redis_server.stop()
        time.sleep(3)
        site.redis_server.start()
    finally:
        lock.execute("rollback")
        lock.close()
    result = AsyncResult(task.id, app=celery_client)
    wait_until(lambda: result.state in ("SUCCESS", "FAILURE"), 120, "the backup to end", interval=0.5)
    assert result.state == "SUCCESS", result.info  # it did not need Redis while it ran
    assert app_back(site)
    assert snapshot_ids(site, "pg-database") == [result.result["snapshots"]["pg-database"]]
    # the worker reconnected and keeps consuming
    again = celery_client.send_task("taiga_backup.backup").get(timeout=120)
    assert again["state"] == "SUCCESS" and len(snapshot_ids(site, "pg-database")) == 2


# -- PostgreSQL ------------------------------------------------------------------------------

def test_postgres_vanishing_mid_dump(repos):
    """The server dies (immediate shutdown) while pg_dump streams a 100 MB table into restic."""
    site = repos
    with psycopg.connect(site.conninfo, autocommit=True) as conn:  # owned by the app's role: pg_dump reads it
        conn.execute("create table zz_attachments (id int, payload text)")
        conn.execute("insert into zz_attachments select g, repeat(md5(g::text), 3200) from generate_series(1, 1000) g")
    before = site.replicas()
    job = in_thread(run_backup)

    def copying():
        with psycopg.connect(site.pg.admin_conninfo(), autocommit=True) as conn:
            return conn.execute("select count(*) from pg_stat_activity where application_name='taiga-backup' "
                                "and query ilike 'COPY public.zz_attachments%%' and state='active'").fetchone()[0]
    try:
        wait_until(copying, 60, "pg_dump copying the big table", interval=0.01)
        site.pg.halt("immediate")
        error = job()
    finally:
        site.pg.resume()
    assert isinstance(error, JobFailed), error
    assert str(error).startswith("dump_db: pg_dump failed") and "server closed the connection" in str(error)
    assert site.replicas() == before and app_back(site)
    assert_no_snapshots(site)  # restic's snapshot of the truncated stream was forgotten, and the media one


# -- S3 repository ---------------------------------------------------------------------------

@pytest.fixture
def s3_site(site, tmp_path, monkeypatch):
    """The site's repositories on S3 (moto), credentials from AWS_*_FILE as the chart mounts them."""
    moto = MotoServer(tmp_path / "moto.log").start()
    (site.secrets / "aws-access-key-id").write_text("AKIATAIGABACKUPTEST\n")
    (site.secrets / "aws-secret-access-key").write_text("taiga-s3-secret-key-0123456789\n")
    env = {"RESTIC_REPOSITORY": f"s3:{moto.url}/taiga-backups/taiga",
           "AWS_ACCESS_KEY_ID_FILE": str(site.secrets / "aws-access-key-id"),
           "AWS_SECRET_ACCESS_KEY_FILE": str(site.secrets / "aws-secret-access-key"),
           "AWS_DEFAULT_REGION": "us-east-1", "DUMP_TIMEOUT": "12", "FILES_TIMEOUT": "12", "DISCARD_TIMEOUT": "5",
           # restic 0.17+ retries a refused endpoint until the preflight's deadline (120 s by default)
           "PREFLIGHT_TIMEOUT": "20"}
    site.env.update(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    site.moto = moto
    yield site
    moto.stop()


def s3_snapshots(site, repo: str) -> list[str]:
    return [s["id"] for s in layout.repository(site.settings(), repo).snapshots()]


def test_s3_endpoint_down_mid_backup_and_before_one(s3_site, caplog):
    site = s3_site
    caplog.set_level("INFO", logger="taiga_backup.job")
    first = run_backup()
    assert first["state"] == "SUCCESS"
    assert s3_snapshots(site, "pg-database") == [first["snapshots"]["pg-database"]]

    lock = hold_table_lock(site)
    try:
        job = in_thread(run_backup)
        wait_until(lambda: dump_blocked(site), 60, "pg_dump waiting with the app at 0")
        wait_until(lambda: caplog.text.count("backup: restic_backup finished") == 2, 60, "this backup's media snapshot")
        dump_repo = layout.repository(site.settings(), "pg-database")
        wait_until(lambda: dump_repo.locks(timeout=30), 60, "the dump's restic past its start (its lock taken)")
        site.moto.stop()
        t0 = time.monotonic()
    finally:
        lock.execute("rollback")
        lock.close()
    error = job()
    failed_after = time.monotonic() - t0
    print(f"\nS3 down mid-backup: FAILURE {failed_after:.1f}s after the endpoint went away (DUMP_TIMEOUT=12, DISCARD_TIMEOUT=5)")
    assert isinstance(error, JobFailed), error
    text = str(error)
    assert text.startswith("dump_db: restic backup --stdin (pg-database) " + DEADLINE), text
    assert "connection refused" in text  # restic's retries, shown
    assert failed_after < 25  # restic alone would retry for minutes
    assert app_back(site)
    report = json.loads(redis_connect(site.settings()).get("taiga-backup:taiga:last:backup:failure"))
    # the media snapshot cannot be forgotten while S3 is away: said so, and it stays an incomplete backup
    # (listing the backup's snapshots by its tags, or forgetting them, meets its deadline)
    assert any(e.startswith(("discard: restic forget (files) " + DEADLINE, "discard: restic snapshots (files) "
                             + DEADLINE)) for e in report["errors"]), report["errors"]

    t0 = time.monotonic()
    text = failure_of(run_backup)
    failed_after = time.monotonic() - t0
    print(f"S3 down before a backup: FAILURE after {failed_after:.1f}s")
    assert failed_after < 40, "the preflight's deadline (20 s) bounds restic's retries"
    # restic 0.14 gives up at once; 0.17 and later retry until the preflight's deadline: both say why
    assert text.startswith(("preflight: restic list (pg-database) failed",
                            "preflight: restic list (pg-database) " + DEADLINE)) and "connection refused" in text
    assert [r for _, r in site.kube.history(NAMESPACE, "taiga-gateway-deployment")] == [1, 0, 1, 0, 1]


# -- Kubernetes API --------------------------------------------------------------------------

def test_kube_conflicts_throttling_and_server_errors_are_retried(repos):
    site = repos
    scale = r"/deployments/taiga-gateway-deployment/scale$"
    site.kube.fail("PATCH", scale, 409, times=2)
    site.kube.fail("PATCH", r"/deployments/taiga-front-deployment$", 409, times=1)
    site.kube.fail("GET", r"/deployments/taiga-front-deployment/scale$", 429, times=1)
    site.kube.fail("GET", r"/pods$", 503, times=1)
    report = run_backup()
    assert report["state"] == "SUCCESS"
    patches = [p for m, p in site.kube.requests if m == "PATCH" and p.endswith("taiga-gateway-deployment/scale")]
    assert len(patches) == 4  # down twice refused, down, up
    assert [r for _, r in site.kube.history(NAMESPACE, "taiga-gateway-deployment")] == [1, 0, 1]
    assert app_back(site)


def test_kube_forbidden_names_the_missing_permission_and_the_app_comes_back(repos):
    site = repos
    before = site.replicas()
    site.kube.fail("PATCH", r"/deployments/taiga-front-deployment/scale$", 403, times=1)
    text = failure_of(run_backup)
    assert text.startswith("quiesce: forbidden: the service account may not patch deployments/scale "
                           "taiga-front-deployment in namespace taiga")
    assert "RBAC needs verb 'patch' on 'deployments/scale'" in text
    assert site.replicas() == before and app_back(site)  # the gateway, already down, is back
    assert [r for _, r in site.kube.history(NAMESPACE, "taiga-gateway-deployment")] == [1, 0, 1]
    assert_no_snapshots(site)


def test_kube_api_unreachable_fails_before_touching_anything(site, tmp_path, monkeypatch):
    dead = site.kube.write_kubeconfig(str(tmp_path / "dead-kubeconfig"))
    dead_text = open(dead).read().replace(site.kube.url, f"http://127.0.0.1:{free_port()}")
    open(dead, "w").write(dead_text)
    monkeypatch.setenv("KUBECONFIG", dead)
    before = site.replicas()
    text = failure_of(run_backup)
    assert text.startswith("preflight: Kubernetes API unreachable")
    assert not site.repo.exists()  # no repository created, nothing written
    assert site.replicas() == before


# -- deadlines -------------------------------------------------------------------------------

class Silent:
    """An 'S3 endpoint' that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def _slow_pods(site, attribute):
    old = getattr(site.kube, attribute)
    setattr(site.kube, attribute, 60.0)
    return lambda: setattr(site.kube, attribute, old)


@pytest.mark.parametrize("step", ["preflight", "quiesce", "dump_db", "restic_backup", "resume"])
def test_every_step_has_a_deadline_and_the_app_still_comes_back(step, repos, monkeypatch):
    site = repos
    undo = []
    if step == "preflight":
        silent = Silent()
        undo.append(silent.close)
        monkeypatch.setenv("RESTIC_REPOSITORY", f"s3:http://127.0.0.1:{silent.port}/taiga-bucket/taiga")
        # restic 0.17+ refuses an S3 repository without credentials before it connects
        for name, value in (("aws-access-key-id", "AKIATAIGABACKUPTEST"), ("aws-secret-access-key", "secret")):
            (site.secrets / name).write_text(value + "\n")
            monkeypatch.setenv(f"{name.upper().replace('-', '_')}_FILE", str(site.secrets / name))
        monkeypatch.setenv("PREFLIGHT_TIMEOUT", "2")
        expected = f"preflight: restic list (pg-database) {DEADLINE}"
    elif step == "quiesce":
        undo.append(_slow_pods(site, "pod_stop_delay"))
        monkeypatch.setenv("QUIESCE_TIMEOUT", "1")
        expected = "quiesce: 1 pod(s) of taiga-gateway-deployment still running after 1s"
    elif step == "dump_db":
        lock = hold_table_lock(site)
        undo.append(lock.close)
        monkeypatch.setenv("DUMP_TIMEOUT", "2")
        expected = f"dump_db: pg_dump {DEADLINE}"
    elif step == "restic_backup":
        with open(site.media / "huge.bin", "wb") as f:
            f.truncate(200 * 1024 ** 3)  # sparse: costs nothing on disk, takes restic minutes to read
        monkeypatch.setenv("FILES_TIMEOUT", "2")
        # the pre-pass meets it first (the quiesced pass's own deadline: test_backup_chain.py)
        expected = f"media_prepass: restic backup (files) {DEADLINE}"
    else:
        undo.append(_slow_pods(site, "pod_start_delay"))
        monkeypatch.setenv("RESUME_TIMEOUT", "1")
        expected = "resume: taiga-gateway-deployment has 0/1 available pods after 1s"
    before = site.replicas()
    t0 = time.monotonic()
    try:
        text = failure_of(run_backup)
    finally:
        for fn in undo:
            fn()
    assert text.startswith(expected), text
    assert time.monotonic() - t0 < 30
    assert site.replicas() == before  # scaled back (for resume: spec restored, pods slow to start)
    assert all("taiga-backup/original-replicas" not in site.kube.annotations(NAMESPACE, n) for n in BACKUP_DEPLOYMENTS)
    if step == "resume":  # a slow start loses no backup: both snapshots are complete and kept
        assert len(snapshot_ids(site, "pg-database")) == 1 and len(snapshot_ids(site, "files")) == 1
    elif step != "preflight":
        assert_no_snapshots(site)
