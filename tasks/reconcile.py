"""`taiga_backup.reconcile`: the guarantee that the app is never left scaled down.

Runs when a worker starts and every minute from beat. A deployment that still carries our quiesce
annotation while the worker process named on it no longer answers was left down by a job that
died (SIGKILL, OOM, node lost): scale it back. The lease alone does not tell - a Redis restart
wipes it while the job goes on. The dead job itself, still STARTED in Redis, is marked FAILURE so
nobody waits for it forever, and what it made is settled by its own backup id only.
"""

from __future__ import annotations

import json
import logging

from celery import states
from celery.result import AsyncResult

from worker import redact
from worker.adapters.redis_store import connect as redis_connect, report_key
from worker.backups import catalog, layout
from worker.celery_app import app
from worker.errors import JobFailed
from worker.jobs import requests, restore_steps, steps
from worker.jobs.job import Job, load_settings, now_iso, store_report
from worker.jobs.lease import JobBusy, JobLock
from worker.runtime import control

log = logging.getLogger("taiga_backup.reconcile")


def _finished(settings, task_id: str) -> bool:
    """The task ended on its own (only its lease release was lost): nothing to settle."""
    if AsyncResult(task_id, app=app).state in states.READY_STATES:
        return True
    raw = redis_connect(settings).get(report_key(task_id))
    return bool(raw) and json.loads(raw).get("state") in ("SUCCESS", "FAILURE")


def settle_backup(settings, active: dict) -> tuple[Job, str]:
    """What a killed backup (or a restore's safety backup) made, judged by its own backup id only
    (recorded in its lease record):
    a complete pair is a good backup and stays; a half one (one repository, or a media pre-pass)
    is forgotten, as the backup would have done had it failed - `latest` must never point at half
    a backup. Snapshots of any other job, made before or after, are never touched. Returns the
    job that did the forgetting and a sentence for the report."""
    job = Job("backup", settings)
    backup_id = active.get("backup_id")  # a backup's, or the safety backup a restore was making
    if not backup_id:
        return job, "it had made no snapshot"
    repos = layout.both(settings)
    for repo in repos.values():
        repo.unlock_stale(timeout=settings.discard_timeout)  # the killed restic's lock, same host
    tagged = {name: repo.snapshots(tag=catalog.ID_TAG + backup_id) for name, repo in repos.items()}
    pair = next((b for b in catalog.pair(tagged[layout.FILES], tagged[layout.DATABASE]) if b.id == backup_id), None)
    keep = set(pair.snapshot_ids().values()) if pair is not None and pair.complete else set()
    prepasses = repos[layout.FILES].snapshots(tag=catalog.PREPASS_OF_TAG + backup_id)  # never a backup
    for name, snaps in {**tagged, layout.FILES: tagged[layout.FILES] + prepasses}.items():
        for snapshot in snaps:
            if snapshot["id"] not in keep:
                steps.discard(job, {name: snapshot["id"]})
    if keep:
        return job, f"its backup {backup_id} is complete (both snapshots) and was kept"
    return job, f"its half-made backup {backup_id} was discarded"


def mark_interrupted(settings, active: dict) -> str | None:
    """Marks a job whose worker died FAILURE (Celery state and our report) and settles what it
    made. None when the job had in fact finished."""
    task_id = active.get("task_id")
    if task_id and _finished(settings, task_id):
        return None
    try:
        cleanup, outcome = settle_backup(settings, active)
        extra = {"discarded_snapshots": cleanup.report.get("discarded_snapshots", {}), "errors": cleanup.errors}
    except Exception as exc:  # marking the job failed matters more than tidying the repository
        outcome, extra = "what it made could not be settled", {"errors": [redact.redact(f"discard: {exc}")]}
    message = (f"interrupted: the worker running this {active.get('kind', 'job')} on {active.get('host', '?')} "
               f"stopped before it reported its end (started {active.get('since', '?')}); {outcome}; the app was "
               f"resumed by the reconciler")
    if task_id:
        app.backend.mark_as_failure(task_id, JobFailed(message))
        store_report(settings, {"job": active.get("kind", "job"), "task_id": task_id, "state": "FAILURE",
                                "error": message, "finished_at": now_iso(), "interrupted": True,
                                "backup_id": active.get("backup_id"), **extra})
    log.error("%s", message)
    return message


def resume_abandoned(settings, kube, names: list[str]) -> dict:
    """Resumes the deployments whose quiescing process is gone (or whose job has ended): a lease
    missing from Redis is not proof of that - a Redis restart without persistence wipes it while
    the job goes on. Returns what it resumed and what it left to a job still running."""
    holders = kube.holders(names)
    if not holders:
        return {}
    alive = control.live_holders(app)
    running = {name: h["job"] for name, h in holders.items()
               if h.get("holder") in alive and not (h.get("job") and _finished(settings, h["job"]))}
    out = {}
    if running:
        out["left_to_running_job"] = running
        log.info("reconcile: %s quiesced by a job whose worker is alive; left alone", ", ".join(sorted(running)))
    abandoned = [name for name in names if name in holders and name not in running]
    if abandoned:
        out["resumed"] = kube.resume(abandoned, settings.resume_timeout)
        log.warning("reconcile: resumed %s", out["resumed"])
    return out


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
        # issue 14: an interrupted restore switch is completed or rolled back BEFORE anything is
        # resumed (raises - and the app stays down - only when it cannot be settled)
        settled = restore_steps.settle_before_resume(settings, lambda: control.live_holders(app))

        result = {"state": "ok", "resumed": {}, **({"restore": settled} if settled else {})}
        failure = None
        names = sorted(set(settings.quiesce_deployments) | set(settings.restore_quiesce_deployments))
        if names:
            try:
                kube = steps.kube_for(Job("reconcile", settings))
                result.update(resume_abandoned(settings, kube, names))
                steps.refresh_quiesced(kube, names)
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
