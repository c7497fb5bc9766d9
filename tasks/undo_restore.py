"""`taiga_backup.undo_restore`: back to the state a restore replaced, by the same renames.

The Celery face of worker.jobs.undo_flow (which says in what order and why): the request is
checked first, so a refused one touches nothing; the flow learns from Celery which worker
processes are alive.
"""

from __future__ import annotations

from functools import partial

from worker.celery_app import app
from worker.jobs import requests, undo_flow
from worker.jobs.job import Job, run_job
from worker.runtime import control


def undo(job: Job, restore_id: str | None) -> dict:
    """The flow, told the live worker processes by this app (also how the tests and the bench
    run it in-process)."""
    return undo_flow.undo(job, restore_id, partial(control.live_holders, app))


@app.task(bind=True, name=requests.UNDO_RESTORE)
def undo_restore(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs restore_id (default: the newest kept state),
    trigger; returns the JSON report. A refused request touches nothing."""
    checked = requests.keyword_fields(requests.UNDO_RESTORE, args, kwargs, requests.UNDO_FIELDS)
    trigger = checked.pop("trigger")
    return run_job(self, "undo_restore",
                   lambda job: (job.report.update(trigger=trigger), undo(job, checked.get("restore_id")))[1])
