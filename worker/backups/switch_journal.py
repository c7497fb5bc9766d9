"""The switch journal (`.taiga-backup-switch.json` in the media root), the room it needs, and
the retrying a job does before it leaves an unsettled switch to the reconciler.

Why a reserve: the journal is rewritten before each segment of media moves, so a volume that an
upload filled up while the restore staged would fail the next write with ENOSPC - halfway
through a switch, when both finishing and going back need that write. Before its first write a
switch sets aside RESERVE_BYTES in `.taiga-backup-switch.json.spare` (allocated, not sparse);
a journal write that meets ENOSPC frees the reserve and is made again. From then on every write
frees the page of the journal it replaces, so the switch never needs more. The reserve goes with
the journal; both names are excluded from backups and never moved (media.backup_excludes, OURS).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time

from worker.backups import media
from worker.errors import OperatorError

VERSION = 2
OLD, MOVING_OUT, MOVING_IN, NEW = "old", "moving_out", "moving_in", "new"
POSITIONS = (OLD, MOVING_OUT, MOVING_IN, NEW)
# a version-1 journal (written before the positions had names) is read with its old letters
_V1_POSITIONS = {"A": MOVING_OUT, "B": MOVING_IN}
ID_PATTERN = r"\d{14}"
RESERVE = media.JOURNAL + ".spare"
RESERVE_BYTES = 256 * 1024
FIRST_DELAY, MAX_DELAY = 0.25, 5.0  # retrying's backoff
log = logging.getLogger("worker.backups.switch")


class SwitchError(OperatorError):
    """A switch (or undo) that cannot be made; the message says what is in the way."""


class SwitchUnsettled(SwitchError):
    """The switch's outcome cannot be made whole now (PostgreSQL unreachable, the media not
    movable): its journal stays and names the side copies, the app must stay down, and whoever
    settles next (the reconciler, a new worker) finishes or rolls it back."""


def retrying(fn, what: str, within: float):
    """fn() until it succeeds, with backoff, for up to `within` seconds; then SwitchUnsettled
    naming `what` and the last error. For the moments a job cannot tell or cannot make its
    state whole - the server is restarting - and must not guess."""
    deadline = time.monotonic() + within
    delay = FIRST_DELAY
    while True:
        try:
            return fn()
        except Exception as exc:  # PostgreSQL away, a media move refused: tried again until the deadline
            last = exc
        if time.monotonic() + delay > deadline:
            raise SwitchUnsettled(f"{what} ({last})")
        log.warning("%s (%s): trying again in %.1fs", what, last, delay)
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


def path(files_dir: str) -> str:
    return os.path.join(files_dir, media.JOURNAL)


def read(files_dir: str, id_format) -> dict | None:
    """The journal of an unfinished switch, checked (it lives on a volume others can write)."""
    try:
        with open(path(files_dir), encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SwitchError(f"the switch journal {path(files_dir)} cannot be read ({exc}): look at the "
                          "database names and media folders by hand before removing it") from None
    if isinstance(doc, dict) and doc.get("version") == 1:
        doc["media"] = _V1_POSITIONS.get(doc.get("media"), doc.get("media"))
        doc["version"] = VERSION
    rid = doc.get("id") if isinstance(doc, dict) else None
    source = doc.get("source") if isinstance(doc, dict) else None
    if not (isinstance(rid, str) and id_format.fullmatch(rid) and doc.get("direction") in ("forward", "back")
            and doc.get("media") in POSITIONS and isinstance(source, str)
            and os.path.normpath(source).split(os.sep)[0] == media.STAGING_PREFIX + rid and ".." not in source.split("/")):
        raise SwitchError(f"the switch journal {path(files_dir)} is not one of ours: look at it by hand")
    return doc


def reserve(files_dir: str) -> None:
    """Sets the room for the journal's writes aside, before the switch changes anything. A volume
    too full for it fails the switch here, with nothing changed."""
    spare = os.path.join(files_dir, RESERVE)
    try:
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink(spare)
        raise SwitchError(f"the media volume {files_dir} has no room for the switch journal ({exc}); nothing was "
                          "switched") from None


def write(files_dir: str, doc: dict) -> None:
    """Written to a temporary name, flushed to disk and renamed: never half a journal. ENOSPC
    once: the reserve is freed and the write made again."""
    try:
        _write(files_dir, doc)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or not _unlink(os.path.join(files_dir, RESERVE)):
            raise
        _write(files_dir, doc)


def _write(files_dir: str, doc: dict) -> None:
    final = path(files_dir)
    tmp = final + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        _unlink(tmp)
        raise
    os.replace(tmp, final)
    sync_dir(files_dir)


def remove(files_dir: str) -> None:
    """The journal, then its reserve (and a temporary name a failed write left)."""
    _unlink(path(files_dir))
    sync_dir(files_dir)
    _unlink(path(files_dir) + ".tmp")
    _unlink(os.path.join(files_dir, RESERVE))


def _unlink(name: str) -> bool:
    try:
        os.unlink(name)
        return True
    except FileNotFoundError:
        return False


def sync_dir(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
