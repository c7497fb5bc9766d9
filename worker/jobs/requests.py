"""Requests that arrive as queued messages: the public task names, and the validation of every
field before anything runs.

Message fields are untrusted (a chat-ops bot, the CLI, anyone who can write to the broker when
signing is off): types, formats and names are checked here, strictly, and a refused request
touches nothing - not even the job lease. Each task's allowed triggers and fields are declared
once, in this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from worker.backups import selection
from worker.backups.selection import SelectionError, shown
from worker.errors import RequestInvalid

PREFIX = "taiga_backup."
BACKUP = PREFIX + "backup"
RESTORE = PREFIX + "restore"
RESUME = PREFIX + "resume"
PRUNE = PREFIX + "prune"
CHECK = PREFIX + "check"
VERIFY = PREFIX + "verify"
CHANGE_PASSWORD = PREFIX + "change_password"
RECONCILE = PREFIX + "reconcile"
UNDO_RESTORE = PREFIX + "undo_restore"
SAFETY_BACKUP = PREFIX + "safety_backup"

# who may ask for each job; "pre-restore" is not here: only a restore marks its safety backup so
TRIGGERS = {
    BACKUP: ("manual", "schedule", "chat"),
    RESTORE: ("manual", "chat"),
    UNDO_RESTORE: ("manual", "chat"),
    # "restore": the restore that just switched sends it, with the lease handed over
    SAFETY_BACKUP: ("restore", "manual", "chat"),
    PRUNE: ("manual", "schedule", "chat"),
    CHECK: ("manual", "schedule", "chat"),
    VERIFY: ("manual", "schedule", "chat"),
    CHANGE_PASSWORD: ("manual", "schedule", "chat"),
}
RESTORE_FIELDS = ("snapshot", "before", "safety_backup", "dry_run", "trigger")
_RESTORE_ID = re.compile(r"\d{14}")
_SUBSET = re.compile(r"(\d{1,4})/(\d{1,4})|(\d{1,3}(?:\.\d{1,2})?)%|\d{1,6}[kKmMgGtT]")


def no_arguments(task: str, args: tuple, kwargs: dict) -> None:
    if args or kwargs:
        names = ", ".join(sorted(map(str, kwargs))) or f"{len(args)} positional"
        raise RequestInvalid(f"unknown argument(s) for {task}: {names}")


def trigger(task: str, value) -> str:
    allowed = TRIGGERS[task]
    if not isinstance(value, str) or value not in allowed:
        raise RequestInvalid(f"trigger must be one of {', '.join(allowed)}, got {shown(value)}")
    return value


def dry_run(value) -> bool:
    if not isinstance(value, bool):
        raise RequestInvalid("dry_run must be true or false")
    return value


def read_data_subset(value) -> str:
    """n/t (1 <= n <= t), x% (0 < x <= 100) or a size (e.g. 500M), as restic check takes it."""
    match = _SUBSET.fullmatch(value) if isinstance(value, str) else None
    if match and match.group(1):
        ok = 1 <= int(match.group(1)) <= int(match.group(2))
    elif match and match.group(3):
        ok = 0 < float(match.group(3)) <= 100
    else:
        ok = bool(match) and int(value.rstrip("kKmMgGtT")) > 0
    if not ok:
        raise RequestInvalid("read_data_subset must be n/t, a percentage like 5% or a size like 500M")
    return value


# the optional fields of each upkeep task, with their checks (`trigger` is always allowed)
UPKEEP_FIELDS = {
    PRUNE: {"dry_run": dry_run},
    CHECK: {"read_data_subset": read_data_subset},
    VERIFY: {},
    CHANGE_PASSWORD: {},
}


def keyword_fields(task: str, args: tuple, kwargs: dict, fields: dict) -> dict:
    """Only the named kwargs, each checked; `trigger` always (beat sends "schedule")."""
    if args:
        raise RequestInvalid(f"{task} takes keyword arguments only")
    fields = {"trigger": lambda v: trigger(task, v), **fields}
    unknown = sorted(shown(k, 40)[1:-1] for k in kwargs if k not in fields)
    if unknown:
        raise RequestInvalid(f"unknown argument(s) for {task}: {', '.join(unknown)}")
    checked = {name: check(kwargs[name]) for name, check in fields.items() if name in kwargs}
    checked.setdefault("trigger", "manual")
    return checked


@dataclass(frozen=True)
class RestoreRequest:
    """A restore request whose every field passed validation."""

    snapshot: str | None
    before: datetime | None
    safety_backup: bool
    trigger: str
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {"snapshot": self.snapshot or (None if self.before else selection.LATEST),
                "before": self.before and selection.stamp(self.before), "safety_backup": self.safety_backup,
                "dry_run": self.dry_run}


def restore_request(args: tuple, kwargs: dict) -> RestoreRequest:
    if args:
        raise RequestInvalid(f"{RESTORE} takes keyword arguments only ({', '.join(RESTORE_FIELDS)})")
    unknown = sorted(shown(k, 40) for k in kwargs if k not in RESTORE_FIELDS)
    if unknown:
        raise RequestInvalid(f"unknown argument(s) for {RESTORE}: {', '.join(unknown)} "
                             f"(allowed: {', '.join(RESTORE_FIELDS)})")
    try:
        snapshot = selection.check_snapshot(kwargs["snapshot"]) if kwargs.get("snapshot") is not None else None
        before = selection.check_before(kwargs["before"]) if kwargs.get("before") is not None else None
    except SelectionError as exc:
        raise RequestInvalid(str(exc)) from None
    if snapshot is not None and before is not None:
        raise RequestInvalid("give snapshot or before, not both")
    safety = kwargs.get("safety_backup", True)
    if not isinstance(safety, bool):
        raise RequestInvalid(f"safety_backup must be true or false, got {shown(safety)}")
    return RestoreRequest(snapshot, before, safety, trigger(RESTORE, kwargs.get("trigger", "manual")),
                          dry_run(kwargs.get("dry_run", False)))


def restore_id(value) -> str:
    """The `restore_id` of undo_restore: a kept state's id (its UTC start, 14 digits)."""
    if not isinstance(value, str) or not _RESTORE_ID.fullmatch(value):
        raise RequestInvalid(f"restore_id must be the id of a kept restore state such as 20240131231000 "
                             f"(taiga-backup restores), got {shown(value)}")
    return value


UNDO_FIELDS = {"restore_id": restore_id}


def give_up(value) -> bool:
    if not isinstance(value, bool):
        raise RequestInvalid("give_up must be true or false")
    return value


SAFETY_FIELDS = {"restore_id": restore_id, "give_up": give_up}


def safety_request(args: tuple, kwargs: dict) -> dict:
    """`restore_id` (required: the kept state to back up) and `give_up`, each checked."""
    checked = keyword_fields(SAFETY_BACKUP, args, kwargs, SAFETY_FIELDS)
    if "restore_id" not in checked:
        raise RequestInvalid(f"{SAFETY_BACKUP} needs restore_id: the kept state whose safety backup is owed "
                             "(taiga-backup snapshots --kept)")
    checked.setdefault("give_up", False)
    return checked
