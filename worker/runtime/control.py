"""Remote control commands this worker answers, besides Celery's own.

`taiga_backup_instance`: which process this is (worker.instance), and which jobs run in it. The
reconciler broadcasts it to learn which quiescing processes are still alive, and whether the job
named on a quiesced deployment still runs there; a ping would not do, since a container that
restarted answers under the same host name while the job it ran is gone. A result key in Redis
would not either: anyone who can write to Redis can write one.
"""

from __future__ import annotations

from celery.worker import state as worker_state
from celery.worker.control import control_command

from worker import instance
from worker.jobs import backup_chain, safety_flow

INSTANCE_COMMAND = "taiga_backup_instance"


@control_command(name=INSTANCE_COMMAND)
def taiga_backup_instance(state, **_):
    return {"holder": instance.holder(), "jobs": sorted(running_jobs())}


def running_jobs() -> set[str]:
    """The jobs running in this process: every task executing now (a restore, an undo), every
    backup chain that goes on here holding its lease (backup_chain.running_jobs: its last link
    carries the backup's id, and runs on after a lost lease), and every safety backup a restore
    handed its lease to whose task has not started yet (safety_flow.running_jobs)."""
    chain = {*backup_chain.ORDER, backup_chain.ABORT}
    tasks = {request.id for request in list(worker_state.active_requests) if request.name not in chain}
    return tasks | backup_chain.running_jobs() | safety_flow.running_jobs()


def live_jobs(app, timeout: float = 2.0) -> dict[str, set[str]]:
    """`host/id` of every worker process that answers within `timeout` seconds, with the jobs
    running in it."""
    errors = app.connection_for_write().connection_errors
    try:
        replies = app.control.broadcast(INSTANCE_COMMAND, reply=True, timeout=timeout) or []
    except errors:  # a pooled connection from before a Redis restart fails once, then is replaced
        replies = app.control.broadcast(INSTANCE_COMMAND, reply=True, timeout=timeout) or []
    return {answer["holder"]: {str(job) for job in answer.get("jobs") or [] if isinstance(job, str)}
            for reply in replies for answer in reply.values()
            if isinstance(answer, dict) and isinstance(answer.get("holder"), str)}


def live_holders(app, timeout: float = 2.0) -> set[str]:
    """`host/id` of every worker process that answers within `timeout` seconds."""
    return set(live_jobs(app, timeout))
