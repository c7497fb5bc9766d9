"""A restore's safety backup (`taiga_backup.safety_backup` runs it): the state a restore
replaced, backed up as a job of its own once the restore has answered.

Why its own job: the restore's answer (and the app) should not wait for a backup of the old
state, which takes as long as any backup. So a restore, once the app is back, records that its
kept state owes a safety backup (worker.backups.safety_owed: that state then stays until the
backup succeeds or an operator gives up on it), hands its lease over to the safety backup's task
id (JobLock.transfer: from then on a crash is settled as the safety backup's, by its backup id)
and sends that task to this worker process's own queue; the restore's result names it. The
safety backup has its own id, report, progress in Flower, line in `jobs`, and failure alert.
A restore run in one process (the tests, the bench, an eager call) makes it inline instead,
between its resume and its answer, as before.

An operator runs it again (`taiga-backup safety-backup <restore id>`) after a failure, or gives
up on it (`--give-up`): then the kept state expires like any other.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

from worker.adapters import databases
from worker.backups import catalog, safety_owed, selection, switch
from worker.errors import JobFailed
from worker.jobs import steps
from worker.jobs.job import Job, begin_job, end_job, load_settings, record_failure
from worker.jobs.lease import JobLock, LeaseLost

KIND = "safety_backup"
# the leases restores of this process handed over, by the safety backup's task id, and until
# when each is renewed for a task that has not started (its grace)
_HANDED: dict[str, tuple[JobLock, float]] = {}
Send = Callable[[str, dict], None]  # (task id, kwargs): queues the safety backup on this process's queue


def unique_backup_id(taken: set) -> str:
    """Backup ids have one-second resolution: never reuse one (tags pair snapshots by it)."""
    while (backup_id := steps.new_backup_id()) in taken:
        time.sleep(0.25)
    return backup_id


def running_jobs() -> set[str]:
    """Safety backups handed over here whose task has not started yet, within their lease's
    grace: what this worker answers the reconciler beside its running tasks."""
    now = time.monotonic()
    return {task_id for task_id, (_lock, until) in list(_HANDED.items()) if now < until}


def owe(job: Job, target: databases.Target, backups: list[catalog.Backup], rid: str) -> dict | None:
    """The restore's side, at the switch: records that kept state `rid` owes a safety backup
    (None when there was no database to protect). The kept media are the live media of a moment
    ago, renamed: the newest media snapshot is their parent, and restic reads only files whose
    metadata changed."""
    if not target.exists:
        return None
    parent = next((b.files["id"] for b in reversed(backups) if b.files), None)
    return safety_owed.owe(job.settings, rid, state=safety_owed.QUEUED, task_id=None, error=None,
                           backup_id=unique_backup_id({b.id for b in backups}), parent=parent,
                           database_bytes=target.size_bytes)


def back_up_kept(job: Job, rid: str, owed: dict) -> dict:
    """The backup itself, of the renamed database and the kept media folder, tagged by
    job.report (backup_id, trigger pre-restore). A failed one leaves no snapshot and the kept
    state owing its backup; a good one settles it."""
    settings = job.settings
    if job.lease is not None:  # a worker killed from here on: the reconciler settles this id only
        job.lease.note(backup_id=job.report["backup_id"])
    safety_owed.owe(settings, rid, state=safety_owed.RUNNING, task_id=job.task_id, error=None,
                    backup_id=job.report["backup_id"])
    summary = steps.summarize(settings, steps.backup_quiesced(
        job, owed.get("database_bytes") or 0, dbname=switch.before_db(settings, rid),
        files_dir=switch.kept_dir(settings, rid), parent=owed.get("parent"), pause="safety_files"))
    if job.errors:
        steps.discard(job, summary["snapshots"])
        safety_owed.owe(settings, rid, state=safety_owed.FAILED, error=job.errors[0])
        message = (f"the safety backup of the state restore {rid} replaced failed ({job.errors[0]}); that state "
                   f"is kept (undo-restore {rid}) until a safety backup of it succeeds (taiga-backup safety-backup "
                   f"{rid}) or an operator gives up on it (--give-up)")
        job.errors.insert(0, message)  # the job's error (and the alert's) says what it means, cause included
        raise JobFailed(message)
    safety_owed.settle(settings, rid)
    return {"backup_id": job.report["backup_id"], "snapshots": summary["snapshots"],
            "bytes_added": summary["bytes_added"]["total"]}


def _nothing_to_protect(entry: dict, target: databases.Target) -> None:
    entry["skipped"] = f"database {target.name} did not exist: nothing to protect"


def inline(job: Job, target: databases.Target, backups: list[catalog.Backup], rid: str) -> dict | None:
    """The safety backup as a step of the restore (a restore run in one process), with the app
    already up again: a wrong restore can be undone by restoring it by id after the kept state
    has expired."""
    with job.step(KIND) as entry:
        owed = owe(job, target, backups, rid)
        if owed is None:
            _nothing_to_protect(entry, target)
            return None
        child = Job("backup", job.settings)
        child.lease = job.lease
        child.report.update(backup_id=owed["backup_id"], trigger=selection.PRE_RESTORE)
        try:
            made = back_up_kept(child, rid, owed)
        except JobFailed as exc:
            raise JobFailed(f"the restore is done and live, but {exc}") from None
        finally:
            entry["steps"] = child.report["steps"]
        entry.update(made)
        return made


def hand_over(job: Job, target: databases.Target, rid: str, owed: dict | None, send: Send) -> dict | None:
    """The restore's last step, with the app up and its report complete: the lease becomes the
    safety backup's (a task id made here), which is queued on this process's own queue (None
    when nothing was owed: there was no database to protect). The restore no longer holds the
    lease then (job.lease is None) and must not release it."""
    with job.step(KIND) as entry:
        if owed is None:
            _nothing_to_protect(entry, target)
            return None
        task_id = str(uuid.uuid4())
        lock, job.lease = job.lease, None
        lock.transfer(KIND, task_id, backup_id=owed["backup_id"])
        safety_owed.owe(job.settings, rid, task_id=task_id)
        for gone in set(_HANDED) - running_jobs():  # handed here earlier, their task never came
            _HANDED.pop(gone, None)
        _HANDED[task_id] = (lock, time.monotonic() + job.settings.lock_lease_seconds)
        lock.pause(grace=job.settings.lock_lease_seconds)  # renewed until the task adopts it
        try:
            send(task_id, {"restore_id": rid, "trigger": "restore"})
        except Exception as exc:
            _HANDED.pop(task_id, None)
            lock.release()
            safety_owed.owe(job.settings, rid, state=safety_owed.FAILED, error=f"could not be queued: {exc}")
            raise JobFailed(f"the restore is done and live, but its safety backup could not be queued ({exc}); "
                            f"the state it replaced is kept (undo-restore {rid}) until a safety backup of it "
                            f"succeeds (taiga-backup safety-backup {rid})") from None
        queued = {"task_id": task_id, "backup_id": owed["backup_id"], "state": "QUEUED"}
        entry.update(queued)
        return queued


def run(task, request: dict) -> dict:
    """The task: its report (state, backup_id, snapshots) or JobFailed with the first error. It
    holds the lease a restore of this process handed over to its task id, or else (an operator's
    request) the lease as any job takes it (LeaseBusy when it is taken)."""
    task_id = getattr(task.request, "id", None) if task is not None else None
    handed = _HANDED.pop(task_id, None) if task_id else None
    try:
        job = begin_job(task, KIND, handed=handed and handed[0])
    except LeaseLost as exc:  # taken over (Redis restarted empty and another job got in first)
        handed[0].pause()
        job = Job(KIND, load_settings(), task)
        job.errors.append(str(exc))
        return end_job(job, release=False)
    try:
        job.report.update(_body(job, request["restore_id"], request["give_up"], request["trigger"]))
    except Exception as exc:
        record_failure(job, KIND, exc)
    return end_job(job)


def _body(job: Job, rid: str, give_up: bool, trigger: str) -> dict:
    settings = job.settings
    job.report.update(restore_id=rid, requested_by=trigger, trigger=selection.PRE_RESTORE, backup_id=None,
                      snapshots=None)
    with job.step("validate") as entry:
        owed = safety_owed.owed(settings, rid)
        kept = next((k for k in switch.kept_states(settings) if k["id"] == rid), None)
        entry.update(owed=owed, kept=kept)
        if owed is None:
            raise JobFailed(f"the kept state of restore {rid} owes no safety backup (it was made, given up, "
                            f"or none was asked): nothing to do")
        if give_up:
            safety_owed.settle(settings, rid)
            entry["given_up"] = True
            return {"given_up": True, "kept": kept}
        if kept is None or not kept["database"] or not kept["files_dir"]:
            safety_owed.settle(settings, rid)
            raise JobFailed(f"the kept state of restore {rid} is gone (undone or removed): there is nothing left "
                            "to back up")
    # the restore's id for its own hand-over; a new one for a retry (the failed one left nothing)
    first = owed.get("task_id") == job.task_id and owed.get("state") == safety_owed.QUEUED
    job.report["backup_id"] = owed["backup_id"] if first else unique_backup_id({owed.get("backup_id")})
    made = back_up_kept(job, rid, owed)
    return {**made, "kept": kept}
