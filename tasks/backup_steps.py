"""The links of the backup chain, one Celery task per step, so Flower shows each with its state
and runtime under the backup's root id: `taiga_backup.prepare`, `.media_prepass`, `.quiesce`,
`.dump_db`, `.restic_backup`, (`.resume`, the operator's task, in tasks/resume.py), `.finish`,
and `.backup_failed`, the chain's errback.

Each takes the chain context as its only argument and passes it on (worker.jobs.backup_context
says what is in it: nothing secret). They are not for people to send: a context whose lease is
not the running job's stops at once, touching nothing.
"""

from __future__ import annotations

from celery.result import AsyncResult

from worker.celery_app import app
from worker.errors import RequestInvalid
from worker.jobs import backup_chain, requests


def _context(name: str, args: tuple, kwargs: dict) -> dict:
    if not backup_chain.is_context(args, kwargs):
        raise RequestInvalid(f"{name} is a link of the backup chain: send taiga_backup.backup instead")
    return args[0]


def _link(name: str):
    @app.task(bind=True, name=name)
    def link(self, *args, **kwargs):
        return backup_chain.run_link(self, _context(name, args, kwargs), name)

    link.__doc__ = backup_chain.LINKS[name].__doc__
    return link


# every link but resume, which is the operator's own task (tasks/resume.py)
LINK_TASKS = {name: _link(name) for name in backup_chain.LINKS if name != requests.RESUME}


@app.task(bind=True, name=backup_chain.FINISH)
def finish(self, *args, **kwargs):
    """The last link: it carries the id the caller of taiga_backup.backup got, so its result is
    the backup's report (or its failure)."""
    return backup_chain.run_finish(self, _context(backup_chain.FINISH, args, kwargs))


@app.task(bind=True, name=backup_chain.ABORT)
def backup_failed(self, failed_task_id, ctx=None):
    """The chain's errback: a link raised (a bug, not a step's failure, which links pass on)."""
    if not backup_chain.is_context((ctx,), {}):
        raise RequestInvalid(f"{backup_chain.ABORT} is the backup chain's errback")
    result = AsyncResult(failed_task_id, app=app)
    return backup_chain.run_abort(self, ctx, f"step task {failed_task_id} failed: {result.result!r}")
