"""`taiga-backup fleet`: every instance on the shared broker at one look, from Redis alone.

Why from Redis and not by asking each worker: a worker that has gone silent is exactly the one an
operator must see, and it cannot answer. Everything here was written by the workers themselves:
the fleet record (worker.runtime.fleet: schedule, next start, version, last seen, the lease it
takes, the repositories' sizes), the last reports of each kind (what the metrics are seeded from)
and the repository lease (what runs now). Nothing is sent, nothing is changed.
"""

from __future__ import annotations

import json
import time

from worker.adapters import redis_store
from worker.adapters.notify import human_bytes
from worker.adapters.restic import parse_time

# a worker beats every 30 s (worker.backups.restic_locks): one silent for 3 minutes has missed six
SILENT_AFTER_SECONDS = 180.0
_NOT_SHOWN = ("reconcile",)  # holds the lease a moment each minute: not a job anyone waits for


def _json(raw) -> dict | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _age(report: dict, now: float) -> float | None:
    try:
        return max(0.0, now - parse_time(report["finished_at"]).timestamp())
    except (KeyError, TypeError, ValueError):
        return None


def _last(client, instance: str, kind: str, now: float) -> dict | None:
    """The newest of the last successful and the last failed report of a kind."""
    reports = [r for r in (_json(client.get(redis_store.last_report_key(instance, kind, state)))
                           for state in ("SUCCESS", "FAILURE")) if r and _age(r, now) is not None]
    if not reports:
        return None
    report = min(reports, key=lambda r: _age(r, now))
    return {"state": report.get("state"), "task_id": report.get("task_id"), "finished_at": report["finished_at"],
            "age_seconds": round(_age(report, now)), "error": report.get("error")}


def _backup(client, instance: str, now: float) -> dict | None:
    """The last backup, with what its report says of its size: bytes added to the repositories,
    and the data it covers (media bytes read plus the dump's)."""
    last = _last(client, instance, "backup", now)
    if last is None:
        return None
    report = _json(client.get(redis_store.last_report_key(instance, "backup", last["state"]))) or {}
    files, database = report.get("files") or {}, report.get("database") or {}
    covered = [v for v in (files.get("total_bytes_processed"), database.get("dump_bytes")) if v is not None]
    return {**last, "backup_id": report.get("backup_id"), "complete": report.get("backup_complete"),
            "bytes_added": (report.get("bytes_added") or {}).get("total"), "size_bytes": sum(covered) if covered else None}


def _running(client, lease: str | None) -> dict | None:
    """The job holding the instance's repository lease (redis_store.lease_keys), if any."""
    if not lease:
        return None
    holder = _json(client.get(redis_store.lease_keys_of(lease)[0]))
    if not holder or holder.get("kind") in _NOT_SHOWN:
        return None
    return {k: holder.get(k) for k in ("kind", "task_id", "host", "since")}


def instance_view(client, instance: str, now: float | None = None) -> dict:
    """One instance's line of the fleet view, as JSON-able values."""
    now = time.time() if now is None else now
    fields = {(k.decode() if isinstance(k, bytes) else k): v
              for k, v in client.hgetall(redis_store.fleet_key(instance)).items()}
    # every host's entry (a live worker drops those of hosts gone for a day; a dead instance's stay)
    workers = [w for f, v in fields.items() if f.startswith(redis_store.FLEET_WORKER)
               for w in [_json(v)] if w and w.get("seen_at")]
    workers.sort(key=lambda w: w["seen_at"], reverse=True)
    # the newest live worker speaks for the instance; else the newest of all (stopped or silent)
    live = [w for w in workers if not w.get("stopped") and now - w["seen_at"] <= SILENT_AFTER_SECONDS]
    newest = (live or workers or [{}])[0]
    seen_age = round(now - newest["seen_at"]) if newest else None
    counted = _json(fields.get(redis_store.FLEET_REPOSITORIES)) or {}
    repositories = counted.get("repositories") or {}
    sizes = [r.get("size_bytes") for r in repositories.values() if r.get("size_bytes") is not None]
    return {
        "instance": instance,
        "silent": not live,
        "stopped": bool(newest.get("stopped")),
        "seen_at": _iso(newest["seen_at"]) if newest else None,
        "seen_age_seconds": seen_age,
        "workers": [{k: w.get(k) for k in ("host", "version")} | {"seen_at": _iso(w["seen_at"]),
                                                                   "stopped": bool(w.get("stopped"))} for w in workers],
        "version": newest.get("version"),
        "schedule": newest.get("schedule"),
        "timezone": newest.get("timezone"),
        "next_backup_at": newest.get("next_backup_at"),
        "last_backup": _backup(client, instance, now),
        "running": _running(client, newest.get("lease")),
        "last_drill": _last(client, instance, "verify", now),
        "repositories": repositories,
        "repository_bytes": sum(sizes) if sizes else None,
        "repositories_counted_at": _iso(counted["counted_at"]) if counted.get("counted_at") else None,
    }


def fleet(client, now: float | None = None) -> list[dict]:
    """Every instance seen on the broker (redis_store.instances), by name."""
    return [instance_view(client, name, now) for name in sorted(redis_store.instances(client))]


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


# -- for people -----------------------------------------------------------------------------------
def human_age(seconds: float | None) -> str:
    """`45s`, `12m`, `3h 12m`, `2d 4h`: as precise as a glance needs."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _until(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    return f"{iso[:16].replace('T', ' ')} (in {human_age(max(0.0, parse_time(iso).timestamp() - now))})"


def _bytes(n) -> str:
    return "-" if n is None else human_bytes(n)


COLUMNS = ("INSTANCE", "WORKER", "LAST BACKUP", "AGE", "ADDED", "SIZE", "NEXT BACKUP (UTC)", "RUNNING",
           "LAST DRILL", "REPOSITORY")


def row(view: dict, now: float) -> tuple[str, ...]:
    backup, drill, running = view["last_backup"] or {}, view["last_drill"] or {}, view["running"]
    if view["seen_age_seconds"] is None:
        worker = "NEVER SEEN"
    else:
        state = "STOPPED" if view["stopped"] else "SILENT" if view["silent"] else "ok"
        worker = f"{state} {human_age(view['seen_age_seconds'])}"
    return (view["instance"], worker,
            f"{backup['state']} {backup.get('backup_id') or ''}".strip() if backup else "none",
            human_age(backup.get("age_seconds")), _bytes(backup.get("bytes_added")), _bytes(backup.get("size_bytes")),
            _until(view["next_backup_at"], now) if view["next_backup_at"] else "-" if view["seen_at"] is None else "off",
            f"{running['kind']} since {running['since'][11:16]}" if running else "-",
            f"{drill['state']} {human_age(drill['age_seconds'])} ago" if drill else "none",
            _bytes(view["repository_bytes"]))


def table(views: list[dict], now: float | None = None) -> str:
    """Aligned columns, one instance a line."""
    now = time.time() if now is None else now
    rows = [COLUMNS] + [row(v, now) for v in views]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
