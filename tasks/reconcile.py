"""`taiga_backup.reconcile`: the guarantee that the app is never left scaled down.

Runs when a worker starts and every minute from beat. If no job holds the repository lease but a
deployment still carries our quiesce annotation, the job that scaled it down is gone (SIGKILL,
OOM, node lost): scale it back. The job itself, still marked STARTED in Redis, is marked FAILURE
so nobody waits for it forever, and a killed backup's half-made snapshots are forgotten.
"""

from __future__ import annotations

import json
import logging

from celery import states
from celery.result import AsyncResult

from worker import redact
from worker.adapters.redis_store import connect as redis_connect
from worker.backups import catalog, layout
from worker.celery_app import app
from worker.errors import JobFailed
from worker.jobs import requests, steps
from worker.jobs.job import Job, load_settings, now_iso, report_key, store_report
from worker.jobs.lease import JobBusy, JobLock

log = logging.getLogger("taiga_backup.reconcile")


def _finished(settings, task_id: str) -> bool:
    """The task ended on its own (only its lease release was lost): nothing to settle."""
    if AsyncResult(task_id, app=app).state in states.READY_STATES:
        return True
    raw = redis_connect(settings).get(report_key(task_id))
    return bool(raw) and json.loads(raw).get("state") in ("SUCCESS", "FAILURE")


def discard_half_backup(settings, active: dict) -> Job:
    """A killed backup cannot forget what it made, so this does: every tagged snapshot taken
    after it got the lease (no other job could write then), as the backup would have done had it
    failed - `latest` must never point at half a backup. Only for backups: a restore's safety
    backup is exactly what is needed after a failed restore."""
    job = Job("backup", settings)
    started = active.get("started")
    if active.get("kind") != "backup" or not isinstance(started, (int, float)):
        return job
    for repo in layout.both(settings).values():
        repo.unlock_stale(timeout=settings.discard_timeout)  # the killed restic's lock, same host
    for found in catalog.list_backups(settings):
        if found.tagged and found.time.timestamp() >= started:
            steps.discard(job, {name: sid for name, sid in found.snapshot_ids().items() if sid})
    return job


def mark_interrupted(settings, active: dict) -> str | None:
    """Marks a job whose worker died FAILURE (Celery state and our report) and discards what it
    left half done. None when the job had in fact finished."""
    task_id = active.get("task_id")
    if task_id and _finished(settings, task_id):
        return None
    message = (f"interrupted: the worker running this {active.get('kind', 'job')} on {active.get('host', '?')} "
               f"stopped before it finished (started {active.get('since', '?')}); the app was resumed by the reconciler")
    try:
        cleanup = discard_half_backup(settings, active)
        extra = {"discarded_snapshots": cleanup.report.get("discarded_snapshots", {}), "errors": cleanup.errors}
    except Exception as exc:  # marking the job failed matters more than tidying the repository
        extra = {"errors": [redact.redact(f"discard: {exc}")]}
    if task_id:
        app.backend.mark_as_failure(task_id, JobFailed(message))
        store_report(settings, {"job": active.get("kind", "job"), "task_id": task_id, "state": "FAILURE",
                                "error": message, "finished_at": now_iso(), "interrupted": True, **extra})
    log.error("%s", message)
    return message


@app.task(bind=True, name=requests.RECONCILE)
def reconcile(self, **_ignored):
    """Resumes what a dead job left scaled down first (the app matters most), then settles the
    jobs whose holder died. Skipped while a job holds the repository."""
    settings = load_settings()
    lock = JobLock(redis_connect(settings), settings.restic_repository, settings.lock_lease_seconds)
    try:
        lock.acquire("reconcile", self.request.id or "reconcile")
    except JobBusy:
        return {"state": "skipped", "reason": "a job holds the repository"}
    try:
        result = {"state": "ok", "resumed": {}}
        failure = None
        names = sorted(set(settings.quiesce_deployments) | set(settings.restore_quiesce_deployments))
        if names:
            try:
                kube = steps.kube_for(Job("reconcile", settings))
                if kube.recorded(names):
                    result["resumed"] = kube.resume(names, settings.resume_timeout)
                    log.warning("reconcile: resumed %s", result["resumed"])
            except Exception as exc:  # still settle the interrupted jobs; fail afterwards
                failure = exc
        for raw, active in lock.interrupted():
            if mark_interrupted(settings, active) is not None:
                result["interrupted_task"] = active.get("task_id")
            lock.settled(raw)
        if failure is not None:
            raise failure
        return result
    finally:
        lock.release()
