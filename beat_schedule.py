"""Celery beat schedule, built from settings: the nightly backup, retention, checks, the restore
drill and the reconciler that makes sure the app is never left scaled down.

Only the schedule settings are read here, so a monitoring process (Flower) that imports the
Celery app does not need the repository settings.
"""

from __future__ import annotations

from worker.jobs import requests
from worker.jobs.job import SCHEDULED_LIFETIME
from worker.settings import backup_cron, cron_schedule, read

# (setting, task); the cron expression and its default live in the settings table; "off" drops it
SCHEDULED = (
    ("BACKUP_SCHEDULE", requests.BACKUP),
    ("PRUNE_SCHEDULE", requests.PRUNE),
    ("CHECK_SCHEDULE", requests.CHECK),
    ("VERIFY_SCHEDULE", requests.VERIFY),
)
RECONCILE_EVERY_SECONDS = 60.0


def build_schedule(env=None) -> dict:
    schedule = {}
    for setting, task in SCHEDULED:
        # the backup's start moves by the instance's offset in BACKUP_WINDOW (settings.backup_cron)
        expr = backup_cron(env) if task == requests.BACKUP else read(setting, env)
        if expr is None:
            continue
        schedule[task.split(".", 1)[1]] = {
            "task": task, "schedule": cron_schedule(expr), "kwargs": {"trigger": "schedule"},
            # a missed nightly run is not queued up behind the next one; a job that finds the
            # repository busy retries for as long (run_scheduled)
            "options": {"expires": SCHEDULED_LIFETIME},
        }
    schedule["reconcile"] = {"task": requests.RECONCILE, "schedule": RECONCILE_EVERY_SECONDS,
                             "options": {"expires": RECONCILE_EVERY_SECONDS}}
    return schedule


def timezone(env=None) -> str:
    return read("BACKUP_TIMEZONE", env)
