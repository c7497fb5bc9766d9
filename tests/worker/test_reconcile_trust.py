"""Who may scale the app back up: only the job the deployments' annotation names as holding it
down now, or the reconciler once that job is gone - judged from what the Kubernetes API and the
live workers answer, never from a result key in Redis. Real
worker processes, real Redis, PostgreSQL and restic, the Kubernetes API double."""

from __future__ import annotations

import json
import time

import pytest
from celery.result import AsyncResult

from testkit.chain_checks import received, snapshots, tagged_with
from testkit.faults import ANNOTATION, app_at_zero, app_back, snapshot_ids, wait_until
from testkit.scenarios import reconcile_now
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE
from worker import instance
from worker.adapters.kube import ANNOTATION_HOLDER, ANNOTATION_JOB
from worker.adapters.redis_store import connect as redis_connect
from worker.jobs import steps
from worker.jobs.lease import JobLock

NAMES = list(BACKUP_DEPLOYMENTS)


def holders(site) -> dict[str, tuple[str, str, str]]:
    """(original replicas, job, holder) as each deployment's annotations say."""
    return {name: tuple(site.kube.annotations(NAMESPACE, name).get(key) for key in
                        (ANNOTATION, ANNOTATION_JOB, ANNOTATION_HOLDER)) for name in NAMES}


def test_quiescing_an_already_quiesced_deployment_names_the_new_job_and_keeps_the_count(site):
    """A job that died with the app down left its annotation; the next job to quiesce takes the
    hold over: the annotation names it (and this process), the original count survives, and a
    resume on behalf of the dead job no longer touches the app."""
    kube = steps.kube_in(site.settings())
    kube.quiesce(NAMES, 30, "dead-job")
    for name in NAMES:  # the dead job's process is gone
        site.kube.set_annotations(NAMESPACE, name, {**site.kube.annotations(NAMESPACE, name),
                                                    ANNOTATION_HOLDER: "gone-host/0"})
    recorded = kube.quiesce(NAMES, 30, "live-job")
    assert recorded == BACKUP_DEPLOYMENTS
    assert holders(site) == {name: (str(count), "live-job", instance.holder())
                             for name, count in BACKUP_DEPLOYMENTS.items()}
    assert kube.resume(NAMES, 30, expect={name: "dead-job" for name in NAMES}) == {}
    assert kube.for_job("dead-job").resume(NAMES, 30) == {}
    assert app_at_zero(site)
    assert kube.for_job("live-job").resume(NAMES, 30) == BACKUP_DEPLOYMENTS
    assert app_back(site)


def _quiesced_by_a_running_backup(site, celery_client):
    """A backup held in its quiesced window: the pods take long to stop, so its quiesce link waits
    with the deployments annotated and at 0."""
    task = celery_client.send_task("taiga_backup.backup")
    wait_until(lambda: all(ANNOTATION in site.kube.annotations(NAMESPACE, name) for name in NAMES), 60,
               "the deployments to be quiesced")
    return task


@pytest.mark.slow
def test_a_forged_result_and_a_deleted_lease_do_not_resume_the_app_under_a_running_backup(
        repos, start_worker, celery_client, monkeypatch):
    """Someone who can write to Redis marks the running backup SUCCESS (its celery-task-meta key
    and our report) and deletes the lease. The reconcile asks the worker named on the
    deployments, which answers that the job still runs: the app stays down until the backup's
    own resume, and the backup is the whole, good backup it reports."""
    site = repos
    start_worker(JOB_LOCK_LEASE=120)  # renewed every 40 s: the reconcile below finds the lease free
    monkeypatch.setattr(site.kube, "pod_stop_delay", 10.0)
    task = _quiesced_by_a_running_backup(site, celery_client)
    client = redis_connect(site.settings())
    celery_client.backend.mark_as_done(task.id, {"state": "SUCCESS"})  # forged
    client.set(f"taiga-backup:taiga:report:{task.id}", json.dumps({"state": "SUCCESS", "task_id": task.id}))
    client.delete(JobLock(client, str(site.repo)).key)

    reconcile = reconcile_now(celery_client)
    assert reconcile.get("state") == "ok" and not reconcile.get("resumed"), reconcile
    assert app_at_zero(site), "the app was resumed inside the backup's quiesced window"
    assert all(holders(site)[name][1] == task.id for name in NAMES)

    monkeypatch.setattr(site.kube, "pod_stop_delay", 0.6)
    wait_until(lambda: json.loads(client.get(f"taiga-backup:taiga:report:{task.id}")).get("finished_at"), 120,
               "the backup to end", interval=0.5)
    report = json.loads(client.get(f"taiga-backup:taiga:report:{task.id}"))
    assert report["state"] == "SUCCESS" and report["backup_complete"] is True, report.get("errors")
    assert snapshot_ids(site, "files") == [report["snapshots"]["files"]]
    assert snapshot_ids(site, "pg-database") == [report["snapshots"]["pg-database"]]
    assert app_back(site)
    assert [r for _, r in site.kube.history(NAMESPACE, NAMES[0])] == [1, 0, 1]  # up once: by the backup


@pytest.mark.slow
def test_the_app_is_back_within_10_s_of_a_new_worker_after_the_pod_died_mid_backup(
        repos, start_worker, celery_client, monkeypatch, record_property):
    """The worker and every child SIGKILLed with the app down (the production lease, 30 s, still
    held by the dead job): the new worker's start-up reconcile sees that the process named on the
    deployments does not answer and brings the app back at once."""
    site = repos
    monkeypatch.setattr(site.kube, "pod_stop_delay", 60.0)
    first = start_worker(JOB_LOCK_LEASE=30)
    task = _quiesced_by_a_running_backup(site, celery_client)
    first.kill()
    monkeypatch.setattr(site.kube, "pod_stop_delay", 0.6)
    t0 = time.monotonic()
    start_worker(JOB_LOCK_LEASE=30)
    wait_until(lambda: app_back(site), 60, "the app resumed by the new worker", interval=0.1)
    seconds = round(time.monotonic() - t0, 1)
    record_property("app_back_seconds", seconds)
    print(f"app back {seconds} s after the new worker was started")
    assert seconds <= 10, f"the app came back {seconds} s after the new worker started"
    # the dead job is still settled, once its lease has run out
    wait_until(lambda: AsyncResult(task.id, app=celery_client).state == "FAILURE", 60, "the job marked FAILURE")
    assert snapshot_ids(site, "pg-database") == []


@pytest.mark.slow
def test_a_backup_whose_app_was_brought_up_inside_its_quiesced_window_is_not_reported_good(
        repos, start_worker, celery_client):
    """While the quiesced media pass runs, someone scales the app back up by hand and removes
    the annotation (the operator's `taiga_backup.resume` is refused while a job holds the lease):
    the media snapshot may now hold writes made after the database's point. The backup's resume finds the deployments no longer
    held down by it: the job fails and what it made is forgotten."""
    site = repos
    start_worker()
    task = celery_client.send_task("taiga_backup.backup")
    wait_until(lambda: app_at_zero(site), 60, "the app quiesced")
    with open(site.media / "big-sparse.bin", "wb") as f:  # the quiesced pass takes a few seconds on it
        f.truncate(1024 ** 3)
    wait_until(lambda: "taiga_backup.restic_backup" in received(site), 60, "the quiesced media pass",
               interval=0.01)
    steps.kube_in(site.settings()).resume(NAMES, 30)  # by hand, as with kubectl scale and annotate
    assert app_back(site)
    client = redis_connect(site.settings())
    wait_until(lambda: (json.loads(client.get(f"taiga-backup:taiga:report:{task.id}") or b"{}")).get("finished_at"), 120,
               "the backup to end", interval=0.5)
    report = json.loads(client.get(f"taiga-backup:taiga:report:{task.id}"))
    assert report["state"] == "FAILURE" and report["backup_complete"] is False, report
    assert "quiesced_window" in report["error"], report["error"]
    assert tagged_with(site, report["backup_id"]) == {"files": [], "pg-database": []}
    assert app_back(site)


@pytest.mark.slow
def test_a_forged_success_of_a_dead_backup_does_not_keep_its_half_backup(repos, start_worker, celery_client):
    """The worker dies while the dump streams (the quiesced media pass is saved, the dump is
    not); someone marks the dead backup SUCCESS in Redis. The reconcile that settles it after its
    lease has run out still forgets its half: `latest` of the media is not half a backup."""
    from testkit.faults import dump_blocked
    from testkit.scenarios import hold_table_lock

    site = repos
    first = start_worker(JOB_LOCK_LEASE=5)
    lock = hold_table_lock(site)
    try:
        task = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: dump_blocked(site), 60, "pg_dump waiting on the table lock")
        wait_until(lambda: [s for s in snapshot_ids(site, "files")
                            if s not in tagged_prepasses(site)], 60, "the quiesced media pass")
        first.kill()
    finally:
        lock.execute("rollback")
        lock.close()
    backup_id = next(t.removeprefix("backup-id=") for s in snapshots(site, "files") for t in s.get("tags") or []
                     if t.startswith("backup-id="))
    celery_client.backend.mark_as_done(task.id, {"state": "SUCCESS", "backup_id": backup_id})  # forged
    start_worker(JOB_LOCK_LEASE=5)  # its second start-up reconcile comes once the dead lease ran out
    wait_until(lambda: tagged_with(site, backup_id) == {"files": [], "pg-database": []}, 60,
               "the dead backup's half forgotten", interval=0.5)
    assert app_back(site)


@pytest.mark.slow
@pytest.mark.parametrize("by_hand", [False, True], ids=["window-whole", "app-up-by-hand"])
def test_a_dead_backup_with_both_snapshots_is_kept_only_when_its_window_was_whole(
        by_hand, repos, start_worker, celery_client):
    """The worker dies in the resume link, both snapshots saved, before the resume checked that
    the app stayed down for the whole window. A new worker resumes the app at once and settles
    the dead job once its lease has run out: the pair stays, and the report says so
    (`backup_complete`), when the app was still held down by the dead job as the reconciler
    found it; it is forgotten when someone had brought the app up by hand inside the window
    (the media may hold writes after the database's point)."""
    from worker.jobs.backup_flow import RESUME_PAUSE

    site = repos
    first = start_worker(JOB_LOCK_LEASE=5, TAIGA_BACKUP_TEST_PAUSE=RESUME_PAUSE)
    task = celery_client.send_task("taiga_backup.backup")
    wait_until(lambda: f"test pause: {RESUME_PAUSE}" in first.output(), 120, "the resume link paused")
    backup_id = wait_until(lambda: next((t.removeprefix("backup-id=") for s in snapshots(site, "pg-database")
                                         for t in s.get("tags") or [] if t.startswith("backup-id=")), None),
                           60, "the database snapshot", interval=0.2)
    assert all(tagged_with(site, backup_id).values()), "both snapshots saved before the kill"
    if by_hand:
        steps.kube_in(site.settings()).resume(NAMES, 30)  # as with kubectl scale and annotate
    first.kill()
    start_worker(JOB_LOCK_LEASE=5)  # its second start-up reconcile comes once the dead lease ran out
    client = redis_connect(site.settings())
    report = wait_until(lambda: (lambda r: r if r.get("finished_at") else None)(
        json.loads(client.get(f"taiga-backup:taiga:report:{task.id}") or b"{}")), 60, "the dead job settled",
        interval=0.5)
    assert report["state"] == "FAILURE" and report.get("interrupted"), report
    assert app_back(site)
    kept = tagged_with(site, backup_id)
    if by_hand:
        assert report["backup_complete"] is False and kept == {"files": [], "pg-database": []}, (report, kept)
    else:
        assert report["backup_complete"] is True and all(len(ids) == 1 for ids in kept.values()), (report, kept)


def test_workers_that_did_not_answer_leave_a_dead_backups_window_unjudged(site):
    """The broadcast to the live workers got no answer (Redis restarting): nothing is resumed, and
    the deployments' holders, read just before, must not pass for "held by nobody" - that would
    discard a dead backup's good pair. Its window is judged at the next reconcile."""
    from worker.errors import JobFailed
    from worker.jobs.reconcile_flow import resume_abandoned, window_whole

    settings = site.settings()
    kube = steps.kube_in(settings)
    kube.quiesce(NAMES, 30, "dead-job")
    seen: dict = {}
    with pytest.raises(JobFailed, match="could not be asked"):
        resume_abandoned(settings, kube, lambda: {}, NAMES, seen)
    assert app_at_zero(site)
    assert window_whole(settings, {"kind": "backup", "task_id": "dead-job"}, seen.get("abandoned")) is None
    resume_abandoned(settings, kube, lambda: {instance.holder(): set()}, NAMES, seen)
    assert app_back(site)
    assert window_whole(settings, {"kind": "backup", "task_id": "dead-job"}, seen.get("abandoned")) is True


def tagged_prepasses(site) -> set[str]:
    return {s["id"] for s in snapshots(site, "files") if "taiga-backup-prepass" in (s.get("tags") or [])}
