"""Recovery touches only its own job, and no reconcile brings the app up under a running job - with
real worker processes killed with all their children, and the real Redis restarted."""

from __future__ import annotations

import json
import os

import pytest
from celery.result import AsyncResult

from testkit.faults import ANNOTATION, app_back, snapshot_ids, wait_until
from testkit.scenarios import hold_table_lock, reconcile_now, run_backup
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE
from worker.adapters.redis_store import connect as redis_connect
from worker.jobs.lease import JobLock


def tags_of(site, repo: str) -> dict[str, list[str]]:
    docs = json.loads(site.restic(repo, "snapshots", "--json", "--no-lock").stdout or b"[]") or []
    return {doc["id"]: doc.get("tags") or [] for doc in docs}


@pytest.mark.slow
def test_recovery_forgets_only_the_dead_backups_own_half_not_a_good_backup_made_since(
        repos, start_worker, celery_client):
    site = repos
    first = run_backup()
    worker = start_worker()
    lock = hold_table_lock(site)  # the dump waits on it: the backup stays half made
    try:
        task = celery_client.send_task("taiga_backup.backup")
        known = set(snapshot_ids(site, "files"))
        wait_until(lambda: set(snapshot_ids(site, "files")) - known, 120, "the dead backup's media snapshot")
        half = set(snapshot_ids(site, "files")) - known
        worker.kill()  # the pod dies, pg_dump and restic with it
    finally:
        lock.execute("rollback")
        lock.close()
    lease = JobLock(redis_connect(site.settings()), str(site.repo))
    wait_until(lambda: lease.holder() is None, 30, "the dead job's lease to run out")

    # before any reconcile runs, another job takes the lease and makes a good backup
    second = run_backup()
    assert second["state"] == "SUCCESS"

    start_worker()  # its start-up reconcile settles the dead job
    result = AsyncResult(task.id, app=celery_client)
    wait_until(lambda: result.state == "FAILURE", 60, "the dead backup to be marked failed")
    assert "interrupted" in str(result.info)
    files, database = set(snapshot_ids(site, "files")), set(snapshot_ids(site, "pg-database"))
    for good in (first, second):
        assert good["snapshots"]["files"] in files and good["snapshots"]["pg-database"] in database
    assert not half & files, "the dead backup's half was kept"
    assert app_back(site)


@pytest.mark.slow
def test_a_redis_restart_in_the_middle_of_a_job_does_not_bring_the_app_up_under_it(
        repos, start_worker, celery_client, monkeypatch):
    """Redis (no persistence) restarts while a backup waits for the pods to stop: the lease and the
    job's records are gone, the deployments still carry the annotation. A reconcile then must see
    that the process which quiesced them is alive, and leave them down."""
    site = repos
    start_worker(JOB_LOCK_LEASE=120)  # the job renews its lease in 40 s: the reconcile below finds it free
    monkeypatch.setattr(site.kube, "pod_stop_delay", 12.0)  # quiesce waits this long for the pods
    task = celery_client.send_task("taiga_backup.backup")
    wait_until(lambda: all(ANNOTATION in site.kube.annotations(NAMESPACE, name) for name in BACKUP_DEPLOYMENTS),
               60, "the deployments to be quiesced")
    site.redis_server.stop()
    site.redis_server.start()
    assert JobLock(redis_connect(site.settings()), str(site.repo)).holder() is None  # the lease is gone

    reconcile = reconcile_now(celery_client)
    assert reconcile.get("state") == "ok" and not reconcile.get("resumed"), reconcile
    assert set(reconcile["left_to_running_job"]) == set(BACKUP_DEPLOYMENTS)
    assert all(site.kube.replicas(NAMESPACE, name) == 0 for name in BACKUP_DEPLOYMENTS)

    monkeypatch.setattr(site.kube, "pod_stop_delay", 0.6)
    result = AsyncResult(task.id, app=celery_client)
    wait_until(lambda: result.state in ("SUCCESS", "FAILURE"), 180, "the backup to end", interval=0.5)
    assert app_back(site)


@pytest.mark.slow
def test_liveness_does_not_ask_redis(repos, start_worker, tmp_path):
    """`taiga-backup alive` (the liveness probe) passes while Redis is down - a Redis outage must
    not get the pod restarted in the middle of a job - and fails once the worker is gone."""
    import subprocess
    import sys

    from testkit.site import ROOT

    site = repos
    alive_file = tmp_path / "alive"
    worker = start_worker(LIVENESS_FILE=str(alive_file))
    env = {**site.env, "PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
           "LIVENESS_FILE": str(alive_file)}

    def alive(max_age="60"):
        return subprocess.run([sys.executable, "-m", "worker.cli", "alive", "--max-age", max_age], env=env,
                              cwd=str(ROOT), capture_output=True, text=True, timeout=60)

    wait_until(lambda: alive_file.exists(), 30, "the worker's liveness file")
    site.redis_server.stop()
    try:
        touched = alive_file.stat().st_mtime
        wait_until(lambda: alive_file.stat().st_mtime > touched, 30, "the worker to touch it with Redis down")
        assert alive().returncode == 0
    finally:
        site.redis_server.start()
    worker.kill()
    wait_until(lambda: alive(max_age="6").returncode != 0, 30, "liveness to fail once the worker is gone")
