"""The password change (`taiga_backup.change_password` runs it): both repositories moved from
RESTIC_PASSWORD_FILE to RESTIC_NEW_PASSWORD_FILE; safe to interrupt and to repeat
(worker.backups.password_change says why)."""

from __future__ import annotations

from worker.adapters.redis_store import connect as redis_connect
from worker.backups import password_change
from worker.jobs.job import Job


def rotate(job: Job) -> dict:
    settings = job.settings
    with job.step("validate"):
        new_file = password_change.new_password_file(settings)
    with job.step("survey") as entry:
        found = password_change.survey(settings, new_file)
        entry["before"] = {name: s.state for name, s in found.items()}
    redis_client = redis_connect(settings)
    results: dict = {}
    for name in found:  # one after the other: an interruption leaves at most one repository half-way
        try:
            with job.step(f"rotate_{name}") as entry:
                results[name] = password_change.finish(settings, found[name], new_file, redis_client)
                entry.update(results[name])
        except Exception:
            continue  # recorded on the job by its step; the other repository still finishes
    changed = any(r["action"] != "none" for r in results.values())
    if len(results) < len(found):
        message = "not finished: fix the error and run change-password again (it continues where it stopped)"
    elif changed:
        message = "both repositories now open with the new password only: move it into restic-password now"
    else:
        message = "both repositories already use the new password only; nothing changed"
    return {"repositories": results, "changed": changed, "message": message}
