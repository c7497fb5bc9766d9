"""`taiga_backup.safety_backup`: the backup of the state a restore replaced, as a job of its own.

The Celery face of worker.jobs.safety_flow (which says why it is a job of its own): a restore
sends it, with its lease handed over, to this worker process's own queue once the app is back;
an operator sends it again after a failure, or with `give_up` to let the kept state expire.
The request is checked first, so a refused one touches nothing.
"""

from __future__ import annotations

from worker.celery_app import app
from worker.jobs import requests, safety_flow


@app.task(bind=True, name=requests.SAFETY_BACKUP)
def safety_backup(self, *args, **kwargs):
    """Public task (chat-ops contract): kwargs restore_id (required), give_up, trigger; returns
    the JSON report."""
    return safety_flow.run(self, requests.safety_request(args, kwargs))
