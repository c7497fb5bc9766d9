"""Which backup a restore uses: `latest`, an id (ours or a restic snapshot id of either
repository), or the newest backup at or before a time.

Why a module of its own: the request fields come from a message queue (a chat bot, the CLI) and
end up next to `restic` argv, so their format is checked here, strictly, before anything runs;
and a request that matches nothing must fail - never quietly become `latest`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from worker.backups.catalog import Backup
from worker.errors import OperatorError

LATEST = "latest"
PRE_RESTORE = "pre-restore"
_RESTIC_ID = re.compile(r"[0-9a-f]{8,64}")
_BACKUP_ID = re.compile(r"(legacy-)?\d{8}T\d{6}Z")
_ISO_CHARS = re.compile(r"[0-9T:.+\-Z ]{4,40}")
ID_FORMATS = ("latest, a backup id such as 20240131T231000Z or legacy-20240131T231000Z, "
              "or a restic snapshot id (8 to 64 lower-case hex digits)")


class SelectionError(OperatorError, ValueError):
    """The request names no usable backup; the message says why."""


def shown(value, limit: int = 70) -> str:
    """An untrusted value, quoted and cut short, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_snapshot(value) -> str:
    """The `snapshot` field: one of the three id forms, nothing else."""
    if not isinstance(value, str):
        raise SelectionError(f"snapshot must be a string, got {type(value).__name__} {shown(value)}")
    if value == "":
        raise SelectionError(f"snapshot must not be empty; use {ID_FORMATS}")
    if value.startswith("-"):
        raise SelectionError(f"snapshot {shown(value)} starts with '-'; use {ID_FORMATS}")
    if value != LATEST and not (_RESTIC_ID.fullmatch(value) or _BACKUP_ID.fullmatch(value)):
        raise SelectionError(f"snapshot {shown(value)} is not valid; use {ID_FORMATS}")
    return value


def check_before(value, now: datetime | None = None) -> datetime:
    """The `before` field: an ISO-8601 time (UTC when it has no offset), not in the future."""
    if not isinstance(value, str):
        raise SelectionError(f"before must be an ISO-8601 time string, got {type(value).__name__} {shown(value)}")
    if not _ISO_CHARS.fullmatch(value):
        raise SelectionError(f"before {shown(value)} is not an ISO-8601 time such as 2024-01-31T23:10:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SelectionError(f"before {shown(value)} is not an ISO-8601 time such as 2024-01-31T23:10:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    if moment > now:
        raise SelectionError(f"before {stamp(moment)} is in the future (now is {stamp(now)})")
    return moment


def stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _incomplete(backup: Backup) -> str:
    missing = [name for name, snap in backup.snapshot_ids().items() if snap is None]
    return f"backup {backup.id} is incomplete: it has no snapshot in {' or '.join(missing)}"


def _by_snapshot_id(backups: list[Backup], prefix: str) -> Backup | None:
    matches = {}
    for backup in backups:
        for snap in (backup.files, backup.database):
            if snap and snap["id"].startswith(prefix):
                matches[snap["id"]] = backup
    if len(matches) > 1:
        raise SelectionError(f"snapshot id {prefix!r} is ambiguous: it matches {len(matches)} snapshots; "
                             "give more digits")
    return next(iter(matches.values()), None)


def choose(backups: list[Backup], snapshot: str | None = None, before: datetime | None = None) -> Backup:
    """The backup to restore. `latest` and `before` consider only complete backups and skip
    pre-restore safety backups (those are chosen by id, to undo a restore)."""
    if snapshot not in (None, LATEST):
        found = next((b for b in backups if b.id == snapshot), None) or (
            _by_snapshot_id(backups, snapshot) if _RESTIC_ID.fullmatch(snapshot) else None)
        if found is None:
            raise SelectionError(f"no backup or snapshot {snapshot!r} in the files or pg-database repository "
                                 "(list them with `taiga-backup snapshots`)")
        if not found.complete:
            raise SelectionError(_incomplete(found))
        return found
    candidates = [b for b in backups if b.complete and b.kind != PRE_RESTORE]
    if before is None:
        if not candidates:
            raise SelectionError("there is no complete backup to restore in the repositories")
        return candidates[-1]
    earlier = [b for b in candidates if b.time <= before]
    if not earlier:
        first = f"the first backup is {candidates[0].id} from {stamp(candidates[0].time)}" if candidates \
            else "there are no complete backups"
        raise SelectionError(f"no backup at or before {stamp(before)}: {first}")
    return earlier[-1]
