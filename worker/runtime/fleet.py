"""What a worker records for the fleet view (`taiga-backup fleet`) beside what the other keys say.

Several Taigas share one broker; an operator wants one look at all of them. The last reports
(redis_store.last_report_key) already say how each instance's last backup and drill went and the
lease says what runs now; what only the worker knows is its schedule, when beat will start the
next backup, which version it runs, which lease it takes and that it is alive. It writes that with
every heartbeat (worker.backups.restic_locks.start_heartbeat), so the record is never older than
one heartbeat and a worker that stopped beating shows as silent.

The next start is read from the schedule the worker's Celery app runs (its `beat_schedule`
"backup" entry, as beat_schedule.build_schedule made it), asked through Celery's own schedule
interface, so whatever shapes that schedule (a time zone, a per-instance window) is what the fleet
view shows.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from datetime import datetime, timezone

from worker.adapters import metrics, redis_store
from worker.settings import Settings, read


def next_start(app, task: str = "backup") -> datetime | None:
    """When beat next starts `task` (UTC), from the app's schedule; None when it is not scheduled."""
    entry = (app.conf.beat_schedule or {}).get(task)
    if not entry:
        return None
    schedule = copy.copy(entry["schedule"])  # the app's own entry is beat's: not bound here
    schedule.app = app
    now = schedule.now()
    seconds = schedule.remaining_estimate(schedule.maybe_make_aware(now)).total_seconds()
    return datetime.fromtimestamp(round(now.timestamp() + max(seconds, 0.0)), timezone.utc)


def worker_record(settings: Settings, app, env=None) -> dict:
    """This worker's entry of its instance's fleet hash (`env`: what the app was made from)."""
    start = next_start(app)
    return {
        "host": socket.gethostname(),
        "version": metrics.VERSION,
        "schedule": read("BACKUP_SCHEDULE", env),
        "timezone": settings.timezone,
        "next_backup_at": start.strftime("%Y-%m-%dT%H:%M:%SZ") if start else None,
        "lease": redis_store.repo_key(settings.restic_repository),
        "seen_at": int(time.time()),
    }


FORGET_AFTER_SECONDS = 24 * 3600.0  # a host's entry not renewed for this long: a pod long replaced


def record(client, settings: Settings, app, env=None, stopped: bool = False) -> None:
    """Writes this worker's entry (called with each heartbeat; `stopped` at a clean stop, so the
    fleet view says so at once rather than after the silence) and drops the entries of hosts
    gone for a day (each new pod is a new host name)."""
    entry = worker_record(settings, app, env) | ({"stopped": True} if stopped else {})
    redis_store.record_fleet(client, settings.instance, redis_store.FLEET_WORKER + entry["host"],
                             json.dumps(entry, sort_keys=True))
    key = redis_store.fleet_key(settings.instance)
    old = [field for field, raw in client.hgetall(key).items()
           if field.startswith(redis_store.FLEET_WORKER.encode()) and _seen(raw) < entry["seen_at"] - FORGET_AFTER_SECONDS]
    if old:
        client.hdel(key, *old)


def _seen(raw: bytes) -> float:
    try:
        return float(json.loads(raw).get("seen_at") or 0)
    except (ValueError, AttributeError):
        return 0.0
