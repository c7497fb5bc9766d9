"""The undo-restore (`taiga_backup.undo_restore` runs it): back to the state a restore replaced,
by the same renames, in seconds.

While a restore's kept previous state exists (RESTORE_KEEP_PREVIOUS, or until the next restore),
the switch is walked backwards: the restored database and media go to side names and are then
removed, the kept ones become live again. Afterwards the restore's pre-restore safety backup is
the way back. The order: request checked -> validate -> settle (what a dead job left) -> choose
the kept state -> quiesce -> switch back -> resume, in a `finally` -> remove the undone state.
"""

from __future__ import annotations

from worker.backups import media, safety_owed, switch
from worker.errors import JobFailed
from worker.jobs import restore_steps
from worker.jobs.job import Job


def undo(job: Job, restore_id: str | None, live: switch.LiveHolders) -> dict:
    """`restore_id`: the kept state to go back to (default: the newest). `live()`: the worker
    processes alive now (the task asks Celery), for settling what a dead job left."""
    settings = job.settings
    job.report.update(restore_id=restore_id, deployments={}, downtime_seconds=0.0)
    with job.step("validate") as entry:
        _target, kube, names = restore_steps.check_environment(job, entry, for_what="undo-restore")
    restore_steps.settle_first(job, live)
    with job.step("choose") as entry:
        kept = [k for k in switch.kept_states(settings) if k["database"] and k["files_dir"]]
        if restore_id is None and not kept:
            raise JobFailed("there is no kept previous state to go back to (none was made, it expired after "
                            "RESTORE_KEEP_PREVIOUS, or a later restore replaced it): restore the pre-restore safety "
                            "backup by its id instead (taiga-backup snapshots)")
        chosen = restore_id or kept[-1]["id"]
        job.report["restore_id"] = chosen
        job.report["kept"] = next((k for k in kept if k["id"] == chosen), None)
        entry["restore_id"] = chosen
    ids = media.owner(settings.restore_chown)
    job.report["switch"] = restore_steps.down_for(job, kube, names, lambda: switch.back(settings, chosen, ids))
    with job.step("cleanup") as entry:  # with the app up again
        switch.discard(settings, chosen)
        safety_owed.settle(settings, chosen)  # the state it owed a backup of is live again
        entry["removed"] = job.report["switch"]["undone"]
    return {}
