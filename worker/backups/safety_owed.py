"""The record that a restore's kept previous state still owes its safety backup.

A restore answers once the app is back; the backup of the state it replaced runs after it as a
job of its own (worker.jobs.safety_flow). Until that backup succeeds, the kept state is the only
copy of what the restore replaced: it must not expire after RESTORE_KEEP_PREVIOUS, nor be removed
by the next restore. Why a file in the worker's state folder on the media volume
(`.taiga-backup-state/safety/<restore id>.json`, never backed up, left alone by the switch): it
lives exactly as long as the kept folder beside it, and survives a Redis restarted empty and a
new worker, like the switch journal.
"""

from __future__ import annotations

import json
import os
import time

from worker.backups import media
from worker.settings import Settings

QUEUED, RUNNING, FAILED = "queued", "running", "failed"


def _path(settings: Settings, rid: str) -> str:
    return os.path.join(settings.files_dir, media.STATE, "safety", rid + ".json")


def owe(settings: Settings, rid: str, **facts) -> dict:
    """Records (or updates) what the kept state `rid` is owed: written whole (a temporary file,
    fsynced, renamed), so a crash leaves the old record or the new one."""
    path = _path(settings, rid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    doc = {**(owed(settings, rid) or {}), **facts, "restore_id": rid,
           "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return doc


def owed(settings: Settings, rid: str) -> dict | None:
    """The record of `rid`, or None when its kept state owes nothing (no safety backup was asked,
    it succeeded, or an operator gave up on it)."""
    try:
        with open(_path(settings, rid)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:  # unreadable: still owed - keeping a state too long loses nothing
        return {"restore_id": rid, "state": FAILED, "error": "the record of this safety backup is unreadable"}
    return doc if isinstance(doc, dict) else {"restore_id": rid, "state": FAILED}


def settle(settings: Settings, rid: str) -> None:
    """The kept state owes nothing any more (its safety backup succeeded, it was given up, or
    the state itself is gone)."""
    path = _path(settings, rid)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    for folder in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        try:  # nothing of ours left in the media root when nothing is owed (and no nonces are kept)
            os.rmdir(folder)
        except OSError:
            break  # not empty (or gone): it stays
