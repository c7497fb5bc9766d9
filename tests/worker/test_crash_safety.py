"""A worker SIGKILLed mid-backup, a backup outlasting the broker's visibility timeout, two workers and
two triggers at once: real worker processes, real Redis, PostgreSQL and restic."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import pytest
from celery.result import AsyncResult

from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE
from testkit.faults import ANNOTATION, app_at_zero, app_back, dump_blocked, snapshot_ids, wait_until
from testkit.scenarios import hold_table_lock, reconcile_now
from worker.backups import catalog

LEASE = 5  # JOB_LOCK_LEASE: the smallest the settings allow, so a dead holder's lease runs out fast


def received(workers, task_id: str, name: str) -> int:
    """How many times any worker took this task off the queue (Celery logs each delivery). By
    name: a backup's id is also its chain's last link's (Task.replace)."""
    return sum(len(re.findall(rf"{re.escape(name)}\[{task_id}\] received", w.output())) for w in workers)


def backup_snapshots(site, repo: str) -> list[str]:
    """Snapshots that are (halves of) backups: not a media pre-pass."""
    docs = json.loads(site.restic(repo, "snapshots", "--json", "--no-lock").stdout or b"[]") or []
    return [d["id"] for d in docs if catalog.PREPASS_TAG not in (d.get("tags") or [])]


def sweep(app) -> None:
    """What every consumer does now and then (kombu's sweep runs on its own schedule, up to
    minutes apart): hand out again what was delivered but not acknowledged within the timeout."""
    with app.connection_for_write() as conn:
        conn.default_channel.qos.restore_visible(num=1000)


@pytest.mark.slow
def test_sigkill_mid_backup_job_failed_half_backup_gone_next_backup_succeeds(repos, start_worker, celery_client,
                                                                             record_property):
    """Killed while the dump streams (the app is already back: the dump reads the snapshot
    exported while quiesced). The worker killed while the app is down: test_backup_chain.py."""
    site = repos
    first = start_worker(JOB_LOCK_LEASE=LEASE)
    lock = hold_table_lock(site)
    try:
        task = celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "schedule"})
        wait_until(lambda: dump_blocked(site), 60, "pg_dump waiting on the table lock")
        wait_until(lambda: app_back(site), 60, "the app back while the dump streams")
        wait_until(lambda: backup_snapshots(site, "files"), 60, "the quiesced media pass")
        wait_until(lambda: site.restic("pg-database", "list", "locks", "--no-lock").stdout.strip(), 60,
                   "the dump's restic holding its lock")
        first.kill()  # SIGKILL: the worker, pg_dump and restic, as an OOM kill of the pod
    finally:
        lock.execute("rollback")
        lock.close()
    assert AsyncResult(task.id, app=celery_client).state in ("STARTED", "PROGRESS")
    assert site.restic("pg-database", "list", "locks", "--no-lock").stdout.strip(), "the killed restic left a lock"

    t0 = time.monotonic()
    start_worker(JOB_LOCK_LEASE=LEASE)
    state = wait_until(lambda: AsyncResult(task.id, app=celery_client).state == "FAILURE" and "FAILURE", 60,
                       "the interrupted backup marked FAILURE")
    record_property("settled_seconds", round(time.monotonic() - t0, 1))
    assert state == "FAILURE"
    assert "interrupted" in str(AsyncResult(task.id, app=celery_client).info)
    # the half backup (its quiesced media pass) is forgotten; a pre-pass, never listed, may stay
    wait_until(lambda: not backup_snapshots(site, "files"), 30, "the half backup's media snapshot forgotten")
    assert catalog.list_backups(site.settings()) == []
    assert snapshot_ids(site, "pg-database") == []

    report = celery_client.send_task("taiga_backup.backup").get(timeout=120)
    assert report["state"] == "SUCCESS"  # the dead restic's lock did not get in the way
    assert snapshot_ids(site, "pg-database") == [report["snapshots"]["pg-database"]]
    assert snapshot_ids(site, "files") == [report["snapshots"]["files"]]  # the dead job's pre-pass went too
    assert app_back(site)


@pytest.mark.slow
def test_backup_outlasting_the_visibility_timeout_runs_once_and_two_triggers_run_one_job(
        repos, start_worker, celery_client):
    """Two workers on one broker and repository, a visibility timeout of 2 s, two backups sent at the
    same moment (two beats, or a beat and a person) and held for four times the timeout."""
    from worker.celery_app import make_app

    site = repos
    workers = [start_worker(BROKER_VISIBILITY_TIMEOUT=2), start_worker(BROKER_VISIBILITY_TIMEOUT=2)]
    sweeper = make_app({**site.env, "BROKER_VISIBILITY_TIMEOUT": "2"})
    conf = celery_client.control.inspect(timeout=2).conf()
    assert conf and all(c["broker_transport_options"]["visibility_timeout"] == 2 for c in conf.values())
    lock = hold_table_lock(site)
    sent = []
    try:
        barrier = threading.Barrier(2)

        def trigger():
            barrier.wait()
            sent.append(celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "schedule"}))

        threads = [threading.Thread(target=trigger) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: dump_blocked(site), 60, "one backup running")
        # control: a message a worker holds unacknowledged (a countdown) is handed out again
        control = celery_client.send_task("taiga_backup.reconcile", countdown=6)
        for _ in range(8):  # four visibility timeouts with the backup running, swept every second
            time.sleep(1)
            sweep(sweeper)
    finally:
        lock.execute("rollback")
        lock.close()
    outcomes = {}
    for result in sent:
        try:
            outcomes[result.id] = result.get(timeout=120)["state"]
        except Exception as exc:
            outcomes[result.id] = str(exc)
    assert sorted(outcomes.values(), key=len)[0] == "SUCCESS"
    refused = [o for o in outcomes.values() if o != "SUCCESS"]
    assert len(refused) == 1 and "another taiga-backup job is running" in refused[0]
    time.sleep(3)  # time for any redelivery to show
    assert [received(workers, r.id, "taiga_backup.backup") for r in sent] == [1, 1]
    # the timeout is live: the countdown message, held unacknowledged, was handed out again; the
    # backups, acknowledged on receipt, were not
    assert received(workers, control.id, "taiga_backup.reconcile") > 1
    assert len(snapshot_ids(site, "pg-database")) == 1 and len(snapshot_ids(site, "files")) == 1
    assert app_back(site)
    history = site.kube.history(NAMESPACE, "taiga-gateway-deployment")
    assert [r for _, r in history] == [1, 0, 1]  # quiesced once


def test_reconcile_leaves_a_finished_job_alone_and_fails_an_orphaned_one(repos, start_worker, celery_client):
    """A stale `active` record whose job did finish (only its release was lost) is not turned into a
    failure; one whose job never reported is. Each record is left by a holder that died."""
    from worker.jobs.lease import JobLock
    from worker.adapters.redis_store import connect

    site = repos
    start_worker()
    settings = site.settings()
    client = connect(settings)
    finished, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    celery_client.backend.mark_as_done(finished, {"state": "SUCCESS"})
    for task_id in (finished, orphan):
        dead = JobLock(client, settings.restic_repository, settings.lock_lease_seconds)
        dead.acquire("backup", task_id)
        dead._stop.set()  # the holder dies: no renewals, no release ...
        dead._thread.join()
        client.delete(dead.key)  # ... and its lease runs out
    assert reconcile_now(celery_client)["state"] == "ok"
    assert AsyncResult(finished, app=celery_client).state == "SUCCESS"
    assert AsyncResult(orphan, app=celery_client).state == "FAILURE"
    assert json.loads(client.get(f"taiga-backup:taiga:report:{orphan}"))["interrupted"] is True
    assert client.get(f"taiga-backup:taiga:report:{finished}") is None
    assert JobLock(client, settings.restic_repository).interrupted() == []
