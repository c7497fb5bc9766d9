"""Remote control commands this worker answers, besides Celery's own.

`taiga_backup_instance`: which process this is (worker.instance). The reconciler broadcasts it
to learn which quiescing processes are still alive; a ping would not do, since a container that
restarted answers under the same host name while the job it ran is gone.
"""

from __future__ import annotations

from celery.worker.control import control_command

from worker import instance

INSTANCE_COMMAND = "taiga_backup_instance"


@control_command(name=INSTANCE_COMMAND)
def taiga_backup_instance(state, **_):
    return {"holder": instance.holder()}


def live_holders(app, timeout: float = 2.0) -> set[str]:
    """`host/id` of every worker process that answers within `timeout` seconds."""
    replies = app.control.broadcast(INSTANCE_COMMAND, reply=True, timeout=timeout) or []
    return {answer["holder"] for reply in replies for answer in reply.values()
            if isinstance(answer, dict) and isinstance(answer.get("holder"), str)}
