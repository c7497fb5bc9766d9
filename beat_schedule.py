"""Celery beat schedule, built from settings: the nightly backup, retention, checks, the restore
drill and the reconciler that makes sure the app is never left scaled down.

Only the schedule variables are read here, so a monitoring process (Flower) that imports the
Celery app does not need the repository settings.
"""

from __future__ import annotations

import os

from celery.schedules import crontab

from worker.settings import validate_cron, validate_timezone

# (setting, default, task name); a setting set to "off" drops the entry.
SCHEDULED = (
    ("BACKUP_SCHEDULE", "10 23 * * *", "taiga_backup.backup"),
    ("PRUNE_SCHEDULE", "40 23 * * *", "taiga_backup.prune"),
    ("CHECK_SCHEDULE", "10 2 * * 0", "taiga_backup.check"),
    ("VERIFY_SCHEDULE", "10 3 * * 0", "taiga_backup.verify"),
)
RECONCILE_EVERY_SECONDS = 60.0


def cron(expr: str) -> crontab:
    minute, hour, dom, month, dow = expr.split()
    return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)


def build_schedule(env=None) -> dict:
    env = os.environ if env is None else env
    schedule = {}
    for setting, default, task in SCHEDULED:
        expr = (env.get(setting) or default).strip()
        if expr.lower() in ("off", "never", "disabled"):
            continue
        validate_cron(setting, expr)
        schedule[task.split(".", 1)[1]] = {
            "task": task, "schedule": cron(expr), "kwargs": {"trigger": "schedule"},
            # a missed nightly run is not queued up behind the next one
            "options": {"expires": 6 * 3600},
        }
    schedule["reconcile"] = {"task": "taiga_backup.reconcile", "schedule": RECONCILE_EVERY_SECONDS,
                             "options": {"expires": RECONCILE_EVERY_SECONDS}}
    return schedule


def timezone(env=None) -> str:
    env = os.environ if env is None else env
    return validate_timezone("BACKUP_TIMEZONE", (env.get("BACKUP_TIMEZONE") or "UTC").strip())
