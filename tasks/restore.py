"""`taiga_backup.restore`: put a backup back, with the app down only for renames.

The Celery face of worker.jobs.restore_flow (which says in what order and why): the request is
checked before anything else, so a refused one touches nothing, not even the job lease; the
flow learns from Celery which worker processes are alive.
"""

from __future__ import annotations

from functools import partial

from worker.celery_app import app, pinned_queue
from worker.jobs import requests, restore_flow
from worker.jobs.job import Job, run_job
from worker.jobs.requests import RestoreRequest
from worker.runtime import control


def restore_backup(job: Job, request: RestoreRequest, send_safety=None) -> dict:
    """The flow, told the live worker processes by this app (also how testkit runs it in-process:
    then without `send_safety`, and the safety backup is made inline)."""
    return restore_flow.restore_backup(job, request, partial(control.live_holders, app), send_safety)


def _send_safety(queue: str, task_id: str, kwargs: dict) -> None:
    """The safety backup, on this worker process's own queue: the lease it is handed lives here."""
    app.send_task(requests.SAFETY_BACKUP, kwargs=kwargs, task_id=task_id, queue=queue)


@app.task(bind=True, name=requests.RESTORE)
def restore(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs snapshot | before, safety_backup, dry_run, trigger;
    returns the JSON report (docs/chatops.md), once the app is back; the safety backup then runs
    as a task of its own, named in the report. Validation first: a refused request touches
    nothing, not even the job lease."""
    request = requests.restore_request(args, kwargs)
    queue = pinned_queue()
    send = None if self.request.is_eager or queue is None else partial(_send_safety, queue)
    return run_job(self, "restore", lambda job: restore_backup(job, request, send))
