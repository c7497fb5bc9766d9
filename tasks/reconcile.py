"""`taiga_backup.reconcile`: the guarantee that the app is never left scaled down.

Runs when a worker starts and every minute from beat. If no job holds the repository lease but a
deployment still carries our quiesce annotation, the job that scaled it down is gone (SIGKILL,
OOM, node lost): scale it back. The job itself, still marked STARTED in Redis, is marked FAILURE
so nobody waits for it forever.
"""

from __future__ import annotations

import logging

from celery import signals

from worker.celery_app import app
from worker.joblock import JobBusy, JobLock
from worker.redis_client import connect as redis_connect

from . import steps
from .job import Job, JobFailed, load_settings, now_iso, store_report

log = logging.getLogger("taiga_backup.reconcile")


def mark_interrupted(settings, active: dict) -> str:
    task_id = active.get("task_id")
    message = (f"interrupted: the worker running this {active.get('kind', 'job')} on {active.get('host', '?')} "
               f"stopped before it finished (started {active.get('since', '?')}); the app was resumed by the reconciler")
    if task_id:
        app.backend.mark_as_failure(task_id, JobFailed(message))
        store_report(settings, {"job": active.get("kind", "job"), "task_id": task_id, "state": "FAILURE",
                                "error": message, "finished_at": now_iso(), "interrupted": True})
    log.error("%s", message)
    return message


@app.task(bind=True, name="taiga_backup.reconcile")
def reconcile(self, **_ignored):
    settings = load_settings()
    lock = JobLock(redis_connect(settings), settings.restic_repository, settings.lock_lease_seconds)
    interrupted = lock.active()
    try:
        lock.acquire("reconcile", self.request.id or "reconcile")
    except JobBusy:
        return {"state": "skipped", "reason": "a job holds the repository"}
    try:
        result = {"state": "ok", "resumed": {}}
        if interrupted:
            result["interrupted_task"] = interrupted.get("task_id")
            mark_interrupted(settings, interrupted)
        names = sorted(set(settings.quiesce_deployments) | set(settings.restore_quiesce_deployments))
        if names:
            kube = steps.kube_for(Job("reconcile", settings))
            if kube.recorded(names):
                result["resumed"] = kube.resume(names, settings.resume_timeout)
                log.warning("reconcile: resumed %s", result["resumed"])
        return result
    finally:
        lock.release()


@signals.worker_ready.connect
def _reconcile_on_start(sender=None, **_):
    """Right away, and again once a dead holder's lease must have run out."""
    try:
        from worker.settings import Settings

        lease = Settings.from_env().lock_lease_seconds
        app.send_task("taiga_backup.reconcile")
        app.send_task("taiga_backup.reconcile", countdown=lease + 2)
    except Exception as exc:
        log.error("could not queue the start-up reconcile: %s", exc)
