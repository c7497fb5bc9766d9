"""The reconciler (`taiga_backup.reconcile` runs it): the guarantee that the app is never left
scaled down.

A deployment that still carries our quiesce annotation while the worker process named on it no
longer answers - or answers that the job named there no longer runs in it - was left down by a
job that died (SIGKILL, OOM, node lost) or broke off: scale it back, at once, even while the dead
job's lease has yet to run out (only an interrupted restore switch waits for it: it is settled
first). The lease does not tell - a Redis restart wipes it while the job goes on - and neither
does a result key: anyone who can write to Redis can write one. The dead job itself,
still STARTED in Redis, is marked FAILURE so nobody waits for it forever, and what it made is
settled by its own backup id only.

What only the Celery app can answer (a task's state, the live worker processes) or do (mark a
task failed in the result backend) comes in as `CeleryView`, so this layer needs no app.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

from worker import instance, redact
from worker.adapters.redis_store import connect as redis_connect, push_reconcile_summary, report_key
from worker.backups import catalog, layout, switch
from worker.errors import JobFailed
from worker.jobs import restore_steps, steps
from worker.jobs.job import REPORT_TTL, Job, now_iso, store_report
from worker.jobs.lease import JobBusy, JobLock
from worker.settings import Settings

log = logging.getLogger("taiga_backup.reconcile")


@dataclass(frozen=True)
class CeleryView:
    """The Celery side, passed in by the task."""
    ended: Callable[[str], bool]  # the task id's state in the result backend is a ready (final) one
    mark_failed: Callable[[str, Exception], None]  # records the task as FAILURE in the result backend
    live: switch.LiveHolders  # `host/id` of the worker processes that answer now
    jobs: Callable[[], dict[str, set[str]]]  # the same, each with the job ids it says run in it


def _finished(settings: Settings, celery: CeleryView, task_id: str) -> bool:
    """The task ended on its own (only its lease release was lost): nothing to settle."""
    if celery.ended(task_id):
        return True
    raw = redis_connect(settings).get(report_key(settings.instance, task_id))
    return bool(raw) and json.loads(raw).get("state") in ("SUCCESS", "FAILURE")


def settle_backup(settings: Settings, active: dict, whole: bool = True) -> tuple[Job, str, bool]:
    """What a killed backup (or a restore's safety backup) made, judged by its own backup id only
    (recorded in its lease record):
    a complete pair is a good backup and stays - if its quiesced window was whole (`whole`, see
    window_whole()); a half one (one repository, or a media pre-pass), or a pair whose window
    nobody can vouch for, is forgotten, as the backup would have done had it failed - `latest` must
    never point at half a backup, nor at one that is not one point in time. Snapshots of any other
    job, made before or after, are never touched. Returns the job that did the forgetting, a
    sentence for the report, and whether a complete backup was kept."""
    job = Job("backup", settings)
    backup_id = active.get("backup_id")  # a backup's, or the safety backup a restore was making
    if not backup_id:
        return job, "it had made no snapshot", False
    repos = layout.both(settings)
    for repo in repos.values():
        repo.unlock_stale(timeout=settings.discard_timeout)  # the killed restic's lock, same host
    tagged = {name: repo.snapshots(tag=catalog.ID_TAG + backup_id) for name, repo in repos.items()}
    pair = next((b for b in catalog.pair(tagged[layout.FILES], tagged[layout.DATABASE]) if b.id == backup_id), None)
    complete = pair is not None and pair.complete
    keep = set(pair.snapshot_ids().values()) if complete and whole else set()
    prepasses = repos[layout.FILES].snapshots(tag=catalog.PREPASS_OF_TAG + backup_id)  # never a backup
    for name, snaps in {**tagged, layout.FILES: tagged[layout.FILES] + prepasses}.items():
        for snapshot in snaps:
            if snapshot["id"] not in keep:
                steps.discard(job, {name: snapshot["id"]})
    if keep:
        return job, f"its backup {backup_id} is complete (both snapshots) and was kept", True
    if complete:
        return job, (f"its backup {backup_id} had both snapshots, but the app was no longer held down by it "
                     f"and its window was never checked (not one point in time): discarded"), False
    return job, f"its half-made backup {backup_id} was discarded", False


def window_whole(settings: Settings, active: dict, abandoned: dict[str, str] | None) -> bool | None:
    """Whether a dead backup's quiesced window is known to be whole, so a complete pair of it is
    one point in time: its resume checked it, or a reconciler found every deployment it quiesces
    still held down by it, the moment before it resumed them (either wrote `window_held` into its
    lease record), or this reconcile finds so now (abandoned: name -> the job on its annotation,
    resume_abandoned). Not a question for a restore's safety backup (it backs up a kept state,
    not the live app) or where nothing is quiesced. None when the deployments could not be read:
    asked again at the next reconcile."""
    names = settings.quiesce_deployments
    if active.get("kind", "backup") != "backup" or active.get("window_held") or not names:
        return True
    if abandoned is None:
        return None
    return all(abandoned.get(name) == active.get("task_id") for name in names)


def mark_interrupted(settings: Settings, celery: CeleryView, active: dict, whole: bool = True) -> str | None:
    """Marks a job whose worker died FAILURE (Celery state and our report) and settles what it
    made (whole: window_whole()). None when the job had in fact finished - as its result key
    says, which anyone who can write to Redis can forge: what it made is settled all the same (a
    finished job's complete pair stays, and a failed one left nothing of its own). The report
    says whether a complete backup was kept (`backup_complete`): the job failed, its backup may not have."""
    task_id = active.get("task_id")
    if task_id and _finished(settings, celery, task_id):
        try:
            settle_backup(settings, active, whole)
        except Exception as exc:
            log.warning("reconcile: could not settle what finished job %s made: %s", task_id, exc)
        return None
    try:
        cleanup, outcome, kept = settle_backup(settings, active, whole)
        extra = {"discarded_snapshots": cleanup.report.get("discarded_snapshots", {}), "errors": cleanup.errors,
                 "backup_complete": kept}
    except Exception as exc:  # marking the job failed matters more than tidying the repository
        outcome, extra = "what it made could not be settled", {"errors": [redact.redact(f"discard: {exc}")]}
    message = (f"interrupted: the worker running this {active.get('kind', 'job')} on {active.get('host', '?')} "
               f"stopped before it reported its end - it died, or the message of its next step was lost "
               f"(started {active.get('since', '?')}); {outcome}; whatever it held down was resumed by the reconciler")
    if task_id:
        celery.mark_failed(task_id, JobFailed(message))
        store_report(settings, {"job": active.get("kind", "job"), "task_id": task_id, "state": "FAILURE",
                                "error": message, "finished_at": now_iso(), "interrupted": True,
                                "backup_id": active.get("backup_id"), **extra})
    log.error("%s", message)
    return message


def resume_abandoned(settings: Settings, kube, jobs: Callable[[], dict[str, set[str]]], names: list[str],
                     seen: dict | None = None) -> dict:
    """Resumes the deployments whose quiescing job no longer runs in the process named on them
    (`jobs()`: what the live processes answer; a process that does not answer is gone - as long
    as this one, which runs the reconcile, answered: else nobody's silence means anything). Judged by
    what the Kubernetes API and the live workers say only, and each resume conditioned on the
    annotation still naming that job (a job that quiesced in between keeps the app down).
    Returns what it resumed and what it left to a job still running; `seen["abandoned"]` gets the
    job each resumed deployment was held down by, before it is resumed (window_whole)."""
    holders = kube.holders(names)
    if not holders:
        if seen is not None:
            seen["abandoned"] = {}
        return {}
    live = jobs()
    if instance.holder() not in live:  # the broadcast did not get through (Redis restarting)
        raise JobFailed("the live workers could not be asked (not even this one answered): nothing was resumed; "
                        "the next reconcile asks again")
    running = {name: h["job"] for name, h in holders.items() if h.get("job") in live.get(h.get("holder"), ())}
    out = {}
    if running:
        out["left_to_running_job"] = running
        log.info("reconcile: %s quiesced by a job still running; left alone", ", ".join(sorted(running)))
    abandoned = {name: holders[name].get("job") for name in names if name in holders and name not in running}
    if seen is not None:  # only now: silent workers (the raise above) say nothing about the window
        seen["abandoned"] = abandoned
    if abandoned:
        out["resumed"] = kube.resume(list(abandoned), settings.resume_timeout, expect=abandoned)
        log.warning("reconcile: resumed %s", out["resumed"])
    return out


def _resume(settings: Settings, celery: CeleryView, result: dict, seen: dict | None = None) -> Exception | None:
    """resume_abandoned over the configured deployments, into `result` (and `seen`); the error, if any."""
    names = settings.all_quiesced_deployments
    if not names:
        return None
    try:
        kube = steps.kube_in(settings)
        result.update(resume_abandoned(settings, kube, celery.jobs, names, seen))
        steps.refresh_quiesced(kube, names)
    except Exception as exc:
        return exc
    return None


def _while_busy(settings: Settings, celery: CeleryView, lock: JobLock) -> dict:
    """Another job holds the repository: what a dead job left down is still resumed now, not once
    its lease has run out (the app matters most) - unless a restore switch is pending (it is
    settled first, under the lease) or the holder is another reconcile (it does this)."""
    result = {"state": "skipped", "reason": "a job holds the repository"}
    if (lock.holder() or {}).get("kind") == "reconcile" or switch.read_journal(settings) is not None:
        return result
    seen: dict = {}
    failure = _resume(settings, celery, result, seen)
    abandoned, active = seen.get("abandoned") or {}, lock.active() or {}
    if active.get("task_id") in abandoned.values() and window_whole(settings, active, abandoned):
        # the dead job is settled once its lease has run out, when its annotations are gone: what
        # was seen before they were removed goes into its record
        lock.vouch(active["task_id"], window_held=True)
    if failure is not None:
        raise failure
    return result


def reconcile(settings: Settings, celery: CeleryView, task_id: str) -> dict:
    """Resumes what a dead job left scaled down first (the app matters most), then settles the
    jobs whose holder died. Skipped while a job holds the repository. Its summary (or error) is
    kept in one capped list (redis_store.reconcile_recent_key): the task stores no Celery result
    (one a minute nobody reads)."""
    try:
        result = _reconcile(settings, celery, task_id)
    except Exception as exc:
        _record_summary(settings, {"task_id": task_id, "state": "error", "error": redact.redact(str(exc))})
        raise
    _record_summary(settings, {"task_id": task_id, **result})
    return result


def _record_summary(settings: Settings, summary: dict) -> None:
    """The run's summary, pushed onto the capped list. Never raises: Redis may be the reason the
    run failed, and the summary is for people and tests, not for the next run."""
    try:
        push_reconcile_summary(redis_connect(settings), settings.instance,
                               json.dumps({**summary, "finished_at": now_iso()}), REPORT_TTL)
    except Exception as exc:
        log.warning("reconcile: could not record its summary: %s", exc)


def _reconcile(settings: Settings, celery: CeleryView, task_id: str) -> dict:
    lock = JobLock(redis_connect(settings), settings.restic_repository, settings.lock_lease_seconds)
    try:
        lock.acquire("reconcile", task_id)
    except JobBusy:
        return _while_busy(settings, celery, lock)
    try:
        # an interrupted restore switch is completed or rolled back BEFORE anything is resumed, so
        # the app never starts on half old, half restored data (raises - and the app stays down -
        # only when it cannot be settled)
        settled = restore_steps.settle_before_resume(settings, celery.live)

        result = {"state": "ok", "resumed": {}, **({"restore": settled} if settled else {})}
        seen: dict = {}
        failure = _resume(settings, celery, result, seen)  # still settle the interrupted jobs; fail afterwards
        abandoned = seen.get("abandoned")  # None: the deployments could not be read
        interrupted = lock.interrupted()
        running = set().union(*celery.jobs().values()) if interrupted else set()
        for raw, active in interrupted:
            if active.get("task_id") in running:
                # its lease record was moved aside (the lease gone with a Redis restart, or deleted)
                # while a live worker still runs it: nothing to settle yet; asked again next time
                continue
            whole = window_whole(settings, active, abandoned)
            if whole is None:  # its deployments could not be read: judged at the next reconcile
                continue
            if mark_interrupted(settings, celery, active, whole) is not None:
                result["interrupted_task"] = active.get("task_id")
            lock.settled(raw)
        if failure is not None:
            raise failure
        return result
    finally:
        lock.release()
