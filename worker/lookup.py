"""What the CLI knows about a job id, and the list of recent jobs: the part of `taiga-backup` that
reads the broker and the stored reports rather than sending anything.

Why this is more than `AsyncResult(id).state`: a Celery result backend says PENDING both for a
message waiting in a queue and for an id it has never seen (a typo, a job from another
installation, one older than the 30 days results are kept). So an id is judged by three things:

1. Celery's state: anything but PENDING means the job exists;
2. our own report (`redis_store.report_key`), written when a job ends, kept 30 days;
3. the broker: the message is still in a queue, or taken by a worker and not yet acknowledged.

PENDING with none of 2 and 3 is UNKNOWN - but only if it stays so for `UNKNOWN_AFTER` seconds:
a worker takes the message off the queue a moment before it records STARTED, and a job in that
moment must not be called unknown.
"""

from __future__ import annotations

import json
import time

from worker.adapters.redis_store import connect, report_key, report_pattern

UNKNOWN = "UNKNOWN"
UNKNOWN_AFTER = 3.0   # seconds an id must look unknown before it is declared so
_UNACKED = "unacked"  # kombu's Redis transport: delivery tag -> message a worker holds


def stored_report(settings, task_id: str) -> dict | None:
    """Our own report (kept in Redis for failures too), if the job got far enough to write one."""
    try:
        raw = connect(settings).get(report_key(settings.instance, task_id))
        return json.loads(raw) if raw else None
    except Exception:
        return None


def in_broker(app, task_id: str) -> bool:
    """The task's message is in a queue (any list on the broker: the default queue, a worker's
    pinned queue, kombu's priority sub-queues) or held unacknowledged by a worker. Matches the
    id in the message's envelope, which stays readable JSON even when the body is signed."""
    needle = task_id.encode()
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        for key in client.scan_iter(_type="list", count=1000):
            if any(needle in item for item in client.lrange(key, 0, -1)):
                return True
        return any(needle in item for item in client.hvals(_UNACKED))


def exists(app, settings, task_id: str, state: str) -> bool:
    """The rule of the module docstring, for one look."""
    return state != "PENDING" or stored_report(settings, task_id) is not None or in_broker(app, task_id)


def known(app, settings, task_id: str, state_of, patience: float = UNKNOWN_AFTER) -> bool:
    """False only when the id looked unknown on every look for `patience` seconds; `state_of()`
    gives Celery's current state."""
    deadline = time.monotonic() + patience
    while True:
        if exists(app, settings, task_id, state_of()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def recent_jobs(settings, limit: int | None = None) -> list[dict]:
    """The stored reports, newest first: one summary per job (kind, state, start, duration,
    backup id). Reports live 30 days, so this is the last 30 days' jobs that ended."""
    client = connect(settings)
    keys = list(client.scan_iter(match=report_pattern(settings.instance), count=1000))
    jobs = []
    for raw in client.mget(keys) if keys else []:
        try:
            report = json.loads(raw) if raw else None
        except ValueError:
            continue
        if isinstance(report, dict):
            jobs.append({name: report.get(name) for name in
                         ("task_id", "job", "state", "trigger", "started_at", "finished_at", "duration_seconds",
                          "backup_id", "error")})
    jobs.sort(key=lambda j: (j["started_at"] or "", j["finished_at"] or ""), reverse=True)
    return jobs[:limit] if limit else jobs
