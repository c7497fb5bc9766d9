"""`taiga_backup.restore`: put a backup back, with the app down only for renames.

The Celery face of worker.jobs.restore_flow (which says in what order and why): the request is
checked before anything else, so a refused one touches nothing, not even the job lease; the
flow learns from Celery which worker processes are alive.
"""

from __future__ import annotations

from functools import partial

from worker.celery_app import app
from worker.jobs import requests, restore_flow
from worker.jobs.job import Job, run_job
from worker.jobs.requests import RestoreRequest
from worker.runtime import control


def restore_backup(job: Job, request: RestoreRequest) -> dict:
    """The flow, told the live worker processes by this app (also how testkit runs it in-process)."""
    return restore_flow.restore_backup(job, request, partial(control.live_holders, app))


@app.task(bind=True, name=requests.RESTORE)
def restore(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs snapshot | before, safety_backup, dry_run, trigger;
    returns the JSON report (docs/chatops.md). Validation first: a refused request touches
    nothing, not even the job lease."""
    request = requests.restore_request(args, kwargs)
    return run_job(self, "restore", lambda job: restore_backup(job, request))
