"""`taiga_backup.reconcile`: the guarantee that the app is never left scaled down.

Runs when a worker starts and every minute from beat. The Celery face of
worker.jobs.reconcile_flow (which says what it settles and why): it hands the flow what only the
app can answer or do - a task's state, the live worker processes, a task marked failed.
"""

from __future__ import annotations

from functools import partial

from celery import states
from celery.result import AsyncResult

from worker.celery_app import app
from worker.jobs import reconcile_flow, requests
from worker.jobs.job import load_settings
from worker.runtime import control


def _ended(task_id: str) -> bool:
    return AsyncResult(task_id, app=app).state in states.READY_STATES


def _mark_failed(task_id: str, exc: Exception) -> None:
    app.backend.mark_as_failure(task_id, exc)  # Celery keeps a backend per thread: the caller's


CELERY = reconcile_flow.CeleryView(ended=_ended, mark_failed=_mark_failed, live=partial(control.live_holders, app),
                                   jobs=partial(control.live_jobs, app))


# ignore_result: nobody reads a reconcile's Celery result (beat and the worker send it, the CLI
# and chat-ops never do), and one a minute kept REPORT_TTL was ~43 000 keys; neither STARTED nor
# a failure is stored either. Its summary goes to one capped list instead, redis_store.reconcile_recent_key.
@app.task(bind=True, name=requests.RECONCILE, ignore_result=True)
def reconcile(self, **_ignored):
    """Resumes what a dead job left scaled down first (the app matters most), then settles the
    jobs whose holder died. Skipped while a job holds the repository."""
    return reconcile_flow.reconcile(load_settings(), CELERY, self.request.id or "reconcile")
