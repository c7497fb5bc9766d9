"""The switch between the live state and a restored one, journaled so that no crash leaves a mix.

A restore loads its database beside the live one (`<db>__restore_<id>`) and stages its media
beside the live ones (`.taiga-backup-restore-<id>/`), with the app up. With the app down, the
switch then renames: live database -> `<db>__before_<id>`, side database -> `<db>` (both renames
in ONE transaction), and moves the live media entries into the kept folder
`.taiga-backup-before-<id>/` and the staged ones into the media root. `undo-restore` walks the
same way back.

Why a journal file in the media root (`.taiga-backup-switch.json`): it is written before the
first rename and on the same volume as what it describes, so whoever comes next - a new worker
after a SIGKILL, before the reconciler scales the app back up - finds it (Redis may have been
restarted empty; a Deployment annotation would be lost with the namespace). `settle` then makes
the media match the database: the database renames are atomic, so the database says whether the
switch happened, and the journal says how far the media moves got. Media positions, in order:
"old" (live entries in the root) -> "moving_out" (moving them into the kept folder) ->
"moving_in" (moving the staged ones in) -> "new". Within each segment the place of every entry is known, so both
directions can be finished from any point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timedelta, timezone

from typing import Callable

from worker import instance
from worker.adapters import databases
from worker.backups import media
from worker.errors import OperatorError
from worker.pause_points import pause_point
from worker.settings import Settings

SIDE = "__restore_"
BEFORE = "__before_"
ID_FORMAT = re.compile(r"\d{14}")
VERSION = 2
# the media positions of a journal, in the forward order (module docstring)
OLD, MOVING_OUT, MOVING_IN, NEW = "old", "moving_out", "moving_in", "new"
POSITIONS = (OLD, MOVING_OUT, MOVING_IN, NEW)
# a version-1 journal (written before the positions had names) is read with its old letters
_V1_POSITIONS = {"A": MOVING_OUT, "B": MOVING_IN}
HOLDER_SUFFIX = ".holder"  # `.taiga-backup-restore-<id>.holder`: which worker process uses that restore's copies
LiveHolders = Callable[[], set]


class SwitchError(OperatorError):
    """A switch (or undo) that cannot be made; the message says what is in the way."""


def new_id(now: datetime | None = None) -> str:
    """A restore id is its UTC start time to the second: unique under the job lease, and the kept
    state's age can be read from its name alone."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")


def id_time(rid: str) -> datetime:
    return datetime.strptime(rid, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def side_db(settings: Settings, rid: str) -> str:
    return settings.pg_db + SIDE + rid


def before_db(settings: Settings, rid: str) -> str:
    return settings.pg_db + BEFORE + rid


def staging_dir(settings: Settings, rid: str) -> str:
    return os.path.join(settings.files_dir, media.STAGING_PREFIX + rid)


def kept_dir(settings: Settings, rid: str) -> str:
    return os.path.join(settings.files_dir, media.KEPT_PREFIX + rid)


def claim(settings: Settings, rid: str) -> None:
    """Names the worker process (worker.instance) that makes this restore's side copies, before
    it makes any: a reconciler that finds the job lease gone (Redis restarted empty) leaves the
    side copies and the switch of a job that is still running alone."""
    path = staging_dir(settings, rid) + HOLDER_SUFFIX
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(instance.holder())
    os.replace(path + ".tmp", path)


def _holder(settings: Settings, rid: str) -> str | None:
    try:
        with open(staging_dir(settings, rid) + HOLDER_SUFFIX, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def check_names(settings: Settings) -> None:
    """Side and kept database names must fit PostgreSQL's 63 bytes, or they would be cut."""
    for name in (side_db(settings, new_id()), before_db(settings, new_id())):
        databases.check_name(name)


# -- the journal ----------------------------------------------------------------------------------
def _journal_path(settings: Settings) -> str:
    return os.path.join(settings.files_dir, media.JOURNAL)


def read_journal(settings: Settings) -> dict | None:
    """The journal of an unfinished switch, checked (it lives on a volume others can write)."""
    try:
        with open(_journal_path(settings), encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SwitchError(f"the switch journal {_journal_path(settings)} cannot be read ({exc}): look at the "
                          "database names and media folders by hand before removing it") from None
    if isinstance(doc, dict) and doc.get("version") == 1:
        doc["media"] = _V1_POSITIONS.get(doc.get("media"), doc.get("media"))
        doc["version"] = VERSION
    rid = doc.get("id") if isinstance(doc, dict) else None
    source = doc.get("source") if isinstance(doc, dict) else None
    if not (isinstance(rid, str) and ID_FORMAT.fullmatch(rid) and doc.get("direction") in ("forward", "back")
            and doc.get("media") in POSITIONS and isinstance(source, str)
            and os.path.normpath(source).split(os.sep)[0] == media.STAGING_PREFIX + rid and ".." not in source.split("/")):
        raise SwitchError(f"the switch journal {_journal_path(settings)} is not one of ours: look at it by hand")
    return doc


def _write_journal(settings: Settings, doc: dict) -> None:
    """Written to a temporary name, flushed to disk and renamed: never half a journal."""
    path = _journal_path(settings)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _sync_dir(settings.files_dir)


def _remove_journal(settings: Settings) -> None:
    try:
        os.unlink(_journal_path(settings))
    except FileNotFoundError:
        pass
    _sync_dir(settings.files_dir)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- moving the media -----------------------------------------------------------------------------
def _media_to(settings: Settings, doc: dict, goal: str, ids: tuple[int, int] | None) -> None:
    """Finishes the media moves towards `goal` ("new" or "old") from wherever doc["media"] says
    they stopped; each segment is journaled before its first move."""
    root = settings.files_dir
    source = os.path.join(root, doc["source"])
    kept = kept_dir(settings, doc["id"])

    def enter(position: str) -> None:
        doc["media"] = position
        _write_journal(settings, doc)

    def segment(position: str, src: str, dst: str, pause: str | None = None) -> None:
        os.makedirs(dst, 0o700, exist_ok=True)
        enter(position)
        media.move_entries(src, dst)
        if pause:
            pause_point(pause)

    # forward: old -> moving_out (live entries out) -> moving_in (staged entries in) -> new;
    # back: the same, reversed
    if goal == NEW:
        if doc["media"] in (OLD, MOVING_OUT):
            segment(MOVING_OUT, root, kept, "switch")
        if doc["media"] != NEW:
            segment(MOVING_IN, source, root)
        for path in (root, os.path.join(root, media.MARKER)) if ids else ():
            if os.path.lexists(path):
                os.lchown(path, *ids)
    else:
        if doc["media"] in (NEW, MOVING_IN):
            segment(MOVING_IN, root, source, "undo")
        if doc["media"] != OLD and os.path.isdir(kept):
            segment(MOVING_OUT, kept, root)
    doc["media"] = goal


def _db_is_new(settings: Settings, doc: dict) -> bool:
    """Whether the (atomic) database renames of this journal's restore are in effect."""
    if doc["had_live"]:
        return databases.exists(settings, before_db(settings, doc["id"]))
    return not databases.exists(settings, side_db(settings, doc["id"]))


# -- the switch and the undo ----------------------------------------------------------------------
def forward(settings: Settings, rid: str, source: str, had_live: bool, ids: tuple[int, int] | None) -> dict:
    """The restore's switch, with the app down: database renames, then media moves. `source` is
    the staged tree (inside the staging folder)."""
    doc = {"version": VERSION, "id": rid, "direction": "forward", "media": "old", "had_live": had_live,
           "source": os.path.relpath(source, settings.files_dir), "db": settings.pg_db, "holder": instance.holder()}
    _write_journal(settings, doc)
    db, side, before = settings.pg_db, side_db(settings, rid), before_db(settings, rid)
    try:
        killed = databases.rename_all(settings, [(db, before), (side, db)] if had_live else [(side, db)],
                                      terminate=[db] if had_live else [])
    except Exception:
        if not _db_is_new(settings, doc):  # one transaction: nothing renamed, nothing moved yet
            _remove_journal(settings)
            raise
        killed = 0  # the commit went through although its answer was lost
    try:
        _media_to(settings, doc, "new", ids)
    except Exception as exc:
        _roll_back(settings, doc, exc)
        raise
    _remove_journal(settings)
    return {"sessions_terminated": killed, "previous_database": before if had_live else None,
            "kept_files": kept_dir(settings, rid)}


def _roll_back(settings: Settings, doc: dict, cause: Exception) -> None:
    """A media move failed (not a crash): the database goes back to its old names and the media
    to their old place, so the app comes back on the state it had. Should that fail too, the
    journal stays and the next settle decides."""
    db, rid = settings.pg_db, doc["id"]
    renames = [(db, side_db(settings, rid)), (before_db(settings, rid), db)] if doc["had_live"] else \
        [(db, side_db(settings, rid))]
    try:
        databases.rename_all(settings, renames, terminate=[db])
        _media_to(settings, doc, "old", None)
        _remove_journal(settings)
    except Exception as exc:
        raise SwitchError(f"the switch failed ({cause}) and so did going back ({exc}): the journal "
                          f"{_journal_path(settings)} stays, the next worker start or reconcile settles it") from None


def back(settings: Settings, rid: str, ids: tuple[int, int] | None) -> dict:
    """undo-restore: the live state goes back to side names, the kept state becomes live again.
    The caller removes the undone state (discard) once the app is back: dropping a database and
    deleting its files take time in proportion to the data, and must not be downtime."""
    if read_journal(settings) is not None:
        raise SwitchError("an earlier switch is unfinished (its journal is there): it is settled first")
    db, side, before = settings.pg_db, side_db(settings, rid), before_db(settings, rid)
    if not databases.exists(settings, before):
        raise SwitchError(f"restore {rid} kept no previous database ({before} is gone: expired, removed by a later "
                          "restore, or there was no database before it); restore its pre-restore safety backup "
                          "instead")
    if not os.path.isdir(kept_dir(settings, rid)):
        raise SwitchError(f"restore {rid} kept no previous media ({kept_dir(settings, rid)} is gone)")
    doc = {"version": VERSION, "id": rid, "direction": "back", "media": "new", "had_live": True,
           "source": media.STAGING_PREFIX + rid, "db": db, "holder": instance.holder()}
    _write_journal(settings, doc)
    try:
        killed = databases.rename_all(settings, [(db, side), (before, db)], terminate=[db])
    except BaseException:
        _remove_journal(settings)
        raise
    _media_to(settings, doc, "old", ids)
    _remove_journal(settings)
    return {"sessions_terminated": killed, "undone": {"database": side, "files": staging_dir(settings, rid)}}


def release(settings: Settings, rid: str) -> None:
    """The staging folder (after a switch: only what was skipped, our own names in a snapshot)
    and, last, the claim."""
    shutil.rmtree(staging_dir(settings, rid), ignore_errors=True)
    try:
        os.unlink(staging_dir(settings, rid) + HOLDER_SUFFIX)
    except FileNotFoundError:
        pass


def discard(settings: Settings, rid: str) -> None:
    """The side copies of `rid` (a failed load, a rolled-back switch, an undone restore)."""
    databases.drop(settings, side_db(settings, rid))
    release(settings, rid)
    try:
        os.rmdir(kept_dir(settings, rid))  # only when empty: a kept folder with content stays
    except OSError:
        pass


# -- what a new worker does first -----------------------------------------------------------------
def settle(settings: Settings, ids: tuple[int, int] | None = None, live: LiveHolders = set) -> dict:
    """Run under the job lease, before anything resumes the app: finishes or rolls back an
    interrupted switch (the media follow the database), removes what dead restores left beside
    the live data, and removes kept states older than RESTORE_KEEP_PREVIOUS. Returns what it did
    (empty when there was nothing). `live()`: the worker processes alive now (asked only when
    needed); a switch or side copies of one of them belong to a job still running, lease or not."""
    done: dict = {}
    if not os.path.isdir(settings.files_dir):
        return done
    doc = read_journal(settings)
    if doc is not None and doc.get("holder") and doc["holder"] in live():
        raise SwitchError(f"restore {doc['id']} is switching on {doc['holder']}, a worker that is still running: "
                          "its switch is left to it")
    if doc is not None:
        goal = "new" if _db_is_new(settings, doc) else "old"
        _media_to(settings, doc, goal, ids)
        _remove_journal(settings)
        done["switch"] = {"id": doc["id"], "direction": doc["direction"],
                          "outcome": "completed" if (goal == "new") == (doc["direction"] == "forward")
                          else "rolled back", "state": "restored" if goal == "new" else "previous"}
        if goal == "old":
            discard(settings, doc["id"])
    left = remove_leftovers(settings, live)
    if left:
        done["removed_leftovers"] = left
    expired = expire(settings)
    if expired:
        done["expired"] = expired
    return done


def remove_leftovers(settings: Settings, live: LiveHolders = set) -> list[str]:
    """Side databases and staging folders of restores that are no longer running: not those whose
    staging folder names a live worker process. The database goes first, the folder (the claim)
    last, so a side database is never left without the claim that protects it."""
    side = settings.pg_db + SIDE
    dbs = set(databases.names_with_prefix(settings, side))
    entries = [n for n in os.listdir(settings.files_dir) if n.startswith(media.STAGING_PREFIX)]
    rids = {name[len(side):] for name in dbs} | {
        name[len(media.STAGING_PREFIX):].removesuffix(".tmp").removesuffix(HOLDER_SUFFIX) for name in entries}
    holders = {rid: _holder(settings, rid) for rid in rids}
    alive = live() if any(holders.values()) else set()
    gone = []
    for rid in sorted(rids):
        if holders[rid] and holders[rid] in alive:
            continue
        if side + rid in dbs:
            gone += databases.drop(settings, side + rid)
        for name in sorted(n for n in entries if n == media.STAGING_PREFIX + rid or n.startswith(media.STAGING_PREFIX + rid + ".")):
            path = os.path.join(settings.files_dir, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
            gone.append(name)
    return gone


def kept_states(settings: Settings) -> list[dict]:
    """Every kept previous state (database and/or media folder), oldest first."""
    found: dict[str, dict] = {}
    for name in databases.names_with_prefix(settings, settings.pg_db + BEFORE):
        rid = name[len(settings.pg_db + BEFORE):]
        if ID_FORMAT.fullmatch(rid):
            found.setdefault(rid, {})["database"] = name
    if os.path.isdir(settings.files_dir):
        for name in os.listdir(settings.files_dir):
            rid = name[len(media.KEPT_PREFIX):]
            if name.startswith(media.KEPT_PREFIX) and ID_FORMAT.fullmatch(rid):
                found.setdefault(rid, {})["files_dir"] = os.path.join(settings.files_dir, name)
    keep = timedelta(seconds=settings.restore_keep_previous)
    out = []
    for rid in sorted(found):
        since = id_time(rid)
        out.append({"id": rid, "kept_since": _stamp(since), "expires_at": _stamp(since + keep),
                    "database": found[rid].get("database"), "files_dir": found[rid].get("files_dir")})
    return out


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_kept(settings: Settings, rid: str) -> dict:
    databases.drop(settings, before_db(settings, rid))
    shutil.rmtree(kept_dir(settings, rid), ignore_errors=True)
    return {"id": rid, "database": before_db(settings, rid), "files_dir": kept_dir(settings, rid)}


def expire(settings: Settings, now: datetime | None = None) -> list[str]:
    """Kept states whose RESTORE_KEEP_PREVIOUS is over; never one before its time."""
    now = now or datetime.now(timezone.utc)
    keep = timedelta(seconds=settings.restore_keep_previous)
    gone = []
    for state in kept_states(settings):
        if id_time(state["id"]) + keep <= now:
            remove_kept(settings, state["id"])
            gone.append(state["id"])
    return gone
