"""The restore drill (`taiga_backup.verify` runs it): proves the latest backup restores, without
touching the live app (worker.backups.drill says how it compares)."""

from __future__ import annotations

import shutil
import tempfile

from worker.adapters.redis_store import connect as redis_connect
from worker.backups import drill, layout, restic_locks
from worker.jobs.job import Job


def verify_latest(job: Job) -> dict:
    settings = job.settings
    scratch = drill.scratch_settings(settings)
    parent = settings.verify_dir or tempfile.gettempdir()
    timeout = settings.restore_timeout
    with job.step("prepare") as entry:
        backup = drill.latest_backup(settings)
        repos = layout.both(settings)
        redis_client = redis_connect(settings)
        cleared = {name: restic_locks.make_way(settings, repo, redis_client, exclusive=False)
                   for name, repo in repos.items()}
        if any(cleared.values()):
            entry["locks"] = cleared
        left = drill.remove_leftovers(scratch, parent)
        if left:
            entry["removed_leftovers"] = left
        entry["backup_id"] = backup.id
        entry["space"] = drill.scratch_space(repos[layout.FILES], backup.files, parent)
        drill.require_fit(entry["space"])
    dbname = drill.SCRATCH_PREFIX + job.task_id.replace("-", "")[:12].lower()
    target = tempfile.mkdtemp(prefix=drill.DIR_PREFIX, dir=parent)
    snaps = backup.snapshot_ids()

    def database() -> dict:
        with job.step("database") as entry:
            found = drill.check_database(scratch, repos[layout.DATABASE], snaps[layout.DATABASE], dbname, timeout,
                                         backup.id)
            entry.update(format=found["format"], tables=found["tables"], rows=found["rows"])
            return found

    def files() -> dict:
        with job.step("files") as entry:
            found = drill.check_files(repos[layout.FILES], snaps[layout.FILES], target, timeout)
            entry.update(found)
            return found

    result: dict = {"backup_id": backup.id, "backup_time": backup.as_dict()["time"], "snapshots": snaps}
    try:
        result.update(job.in_parallel({"database": database, "files": files}))
    finally:
        with job.step("cleanup"):
            shutil.rmtree(target, ignore_errors=True)
            drill.drop_scratch(scratch, dbname)
    return result
