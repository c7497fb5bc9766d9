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

import logging
import os
import re
import shutil
from datetime import datetime, timedelta, timezone

from typing import Callable

from worker import instance
from worker.adapters import databases
from worker.backups import media, safety_owed, switch_journal
from worker.backups.switch_journal import (MOVING_IN, MOVING_OUT, NEW, OLD, VERSION,  # noqa: F401
                                           SwitchError)
from worker.pause_points import pause_point
from worker.settings import Settings

SIDE = "__restore_"
BEFORE = "__before_"
ID_FORMAT = re.compile(switch_journal.ID_PATTERN)
# How long a job keeps trying to settle its own switch when it cannot tell which state is live
# (PostgreSQL restarting after the renames' answer was lost) before it leaves the switch to the
# reconciler, with the app down: a restarting server is usually back within it, and the app is
# down meanwhile anyway (backoff: switch_journal.retrying).
SETTLE_WITHIN = 60.0
HOLDER_SUFFIX = ".holder"  # `.taiga-backup-restore-<id>.holder`: which worker process uses that restore's copies
LiveHolders = Callable[[], set]


log = logging.getLogger(__name__)


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


# -- the journal (worker.backups.switch_journal) ------------------------------------------------
def read_journal(settings: Settings) -> dict | None:
    """The journal of an unfinished switch, checked (it lives on a volume others can write)."""
    return switch_journal.read(settings.files_dir, ID_FORMAT)


def named_by_journal(settings: Settings, rid: str) -> bool:
    """Whether a journal names restore `rid` (an unreadable one is taken to): while it does, its
    staging folder (the source of the media moves) and side database are never removed."""
    try:
        doc = read_journal(settings)
    except SwitchError:
        return True
    return doc is not None and doc["id"] == rid


# -- moving the media -----------------------------------------------------------------------------
def _media_to(settings: Settings, doc: dict, goal: str, ids: tuple[int, int] | None) -> None:
    """Finishes the media moves towards `goal` ("new" or "old") from wherever doc["media"] says
    they stopped; each segment is journaled before its first move."""
    root = settings.files_dir
    source = os.path.join(root, doc["source"])
    kept = kept_dir(settings, doc["id"])

    def enter(position: str) -> None:
        doc["media"] = position
        switch_journal.write(settings.files_dir, doc)

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


def _renames(settings: Settings, rid: str, had_live: bool, to: str) -> list[tuple[str, str]]:
    """The renames (one transaction) that make the database names those of state `to`."""
    db, side, before = settings.pg_db, side_db(settings, rid), before_db(settings, rid)
    if to == NEW:
        return [(db, before), (side, db)] if had_live else [(side, db)]
    return [(db, side), (before, db)] if had_live else [(db, side)]


def _retrying(fn, what: str):
    return switch_journal.retrying(fn, what, SETTLE_WITHIN)


def _renamed(settings: Settings, doc: dict, renames: list, terminate: list[str], goal: str) -> int:
    """The renames towards `goal`; when their answer is lost (the connection died around the
    COMMIT), the server is asked - again, with backoff - whether they went through. Returns the
    sessions ended; raises when nothing was renamed (journal removed), SwitchUnsettled when the
    outcome cannot be learned (journal kept)."""
    try:
        return databases.rename_all(settings, renames, terminate=terminate)
    except Exception as exc:
        went_through = _retrying(lambda: _db_is_new(settings, doc) == (goal == NEW),
                                 f"the switch's renames were sent but their answer was lost ({exc}), and whether "
                                 "they went through cannot be told: PostgreSQL does not answer")
        if not went_through:  # one transaction: nothing renamed, nothing moved yet
            switch_journal.remove(settings.files_dir)
            raise
        log.warning("the answer to the switch's renames was lost (%s), but they went through", exc)
        return 0


# -- the switch and the undo ----------------------------------------------------------------------
def forward(settings: Settings, rid: str, source: str, had_live: bool, ids: tuple[int, int] | None) -> dict:
    """The restore's switch, with the app down: database renames, then media moves. `source` is
    the staged tree (inside the staging folder). Returns only with the restored state whole;
    raises with the previous state whole, or SwitchUnsettled (journal kept, app to stay down)."""
    doc = {"version": VERSION, "id": rid, "direction": "forward", "media": "old", "had_live": had_live,
           "source": os.path.relpath(source, settings.files_dir), "db": settings.pg_db, "holder": instance.holder()}
    switch_journal.reserve(settings.files_dir)
    switch_journal.write(settings.files_dir, doc)
    killed = _renamed(settings, doc, _renames(settings, rid, had_live, NEW),
                      [settings.pg_db] if had_live else [], NEW)
    try:
        _media_to(settings, doc, "new", ids)
    except Exception as exc:
        _roll_back(settings, doc, exc, OLD)
        raise
    switch_journal.remove(settings.files_dir)
    return {"sessions_terminated": killed, "previous_database": before_db(settings, rid) if had_live else None,
            "kept_files": kept_dir(settings, rid)}


def _roll_back(settings: Settings, doc: dict, cause: Exception, goal: str) -> None:
    """A media move failed (not a crash): the database goes back to its names of state `goal`
    and the media to their place in it, so the app comes back on the state it had. Tried again
    with backoff (the server may be restarting); should it still fail, SwitchUnsettled: the
    journal stays and the next settle decides."""
    def back_to_goal() -> None:
        if _db_is_new(settings, doc) != (goal == NEW):
            databases.rename_all(settings, _renames(settings, doc["id"], doc["had_live"], goal),
                                 terminate=[settings.pg_db])
        _media_to(settings, doc, goal, None)
        switch_journal.remove(settings.files_dir)

    _retrying(back_to_goal, f"the switch failed ({cause}) and so did going back; the journal "
                            f"{switch_journal.path(settings.files_dir)} stays, the next worker start or reconcile settles it")


def back(settings: Settings, rid: str, ids: tuple[int, int] | None) -> dict:
    """undo-restore: the live state goes back to side names, the kept state becomes live again.
    The caller removes the undone state (discard) once the app is back: dropping a database and
    deleting its files take time in proportion to the data, and must not be downtime. Returns
    only with the previous state whole; raises with the restored one whole, or SwitchUnsettled."""
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
    claim(settings, rid)  # this undo's switch is this process's, lease or not (settle)
    switch_journal.reserve(settings.files_dir)
    switch_journal.write(settings.files_dir, doc)
    killed = _renamed(settings, doc, _renames(settings, rid, True, OLD), [db], OLD)
    try:
        _media_to(settings, doc, "old", ids)
    except Exception as exc:
        _roll_back(settings, doc, exc, NEW)
        raise
    switch_journal.remove(settings.files_dir)
    return {"sessions_terminated": killed, "undone": {"database": side, "files": staging_dir(settings, rid)}}


def hand_over(settings: Settings) -> str | None:
    """A job that leaves its unsettled switch to the reconciler gives up its claim: from then on
    `settle` takes the switch although this worker process lives on. Returns the restore id."""
    doc = read_journal(settings)
    if doc is None or _holder(settings, doc["id"]) != instance.holder():
        return None
    try:
        os.unlink(staging_dir(settings, doc["id"]) + HOLDER_SUFFIX)
    except FileNotFoundError:
        pass
    return doc["id"]


def release(settings: Settings, rid: str) -> None:
    """The staging folder (after a switch: only what was skipped, our own names in a snapshot)
    and, last, the claim - never while a journal names them."""
    if named_by_journal(settings, rid):
        return
    shutil.rmtree(staging_dir(settings, rid), ignore_errors=True)
    try:
        os.unlink(staging_dir(settings, rid) + HOLDER_SUFFIX)
    except FileNotFoundError:
        pass


def discard(settings: Settings, rid: str) -> None:
    """The side copies of `rid` (a failed load, a rolled-back switch, an undone restore); none
    while a journal names them (an unsettled switch: they are its source and its way back)."""
    if named_by_journal(settings, rid):
        log.warning("restore %s: its side copies stay, the switch journal names them", rid)
        return
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
    needed); a switch or side copies of one of them belong to a job still running, lease or not -
    a switch only while that job's claim names it too (a job that gave its switch up hands it over)."""
    done: dict = {}
    if not os.path.isdir(settings.files_dir):
        return done
    doc = read_journal(settings)
    if doc is not None and doc.get("holder") and doc["holder"] == _holder(settings, doc["id"]) \
            and doc["holder"] in live():
        raise SwitchError(f"restore {doc['id']} is switching on {doc['holder']}, a worker that is still running: "
                          "its switch is left to it")
    if doc is not None:
        goal = "new" if _db_is_new(settings, doc) else "old"
        _media_to(settings, doc, goal, ids)
        switch_journal.remove(settings.files_dir)
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
        if holders[rid] and holders[rid] in alive or named_by_journal(settings, rid):
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
        owed = safety_owed.owed(settings, rid)
        out.append({"id": rid, "kept_since": _stamp(since),
                    # a state whose safety backup is still owed stays until it is made or given up
                    "expires_at": None if owed else _stamp(since + keep),
                    "database": found[rid].get("database"), "files_dir": found[rid].get("files_dir"),
                    "safety_backup_owed": {k: owed.get(k) for k in ("state", "task_id", "backup_id", "error")}
                    if owed else None})
    return out


def replaceable(settings: Settings) -> list[dict]:
    """The kept states a successful restore removes: every one but those still owing their
    safety backup (the only copy of what their restore replaced)."""
    return [k for k in kept_states(settings) if not k["safety_backup_owed"]]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_kept(settings: Settings, rid: str) -> dict:
    databases.drop(settings, before_db(settings, rid))
    shutil.rmtree(kept_dir(settings, rid), ignore_errors=True)
    safety_owed.settle(settings, rid)  # the state is gone: nothing is owed of it
    return {"id": rid, "database": before_db(settings, rid), "files_dir": kept_dir(settings, rid)}


def expire(settings: Settings, now: datetime | None = None) -> list[str]:
    """Kept states whose RESTORE_KEEP_PREVIOUS is over; never one before its time, nor one whose
    safety backup is still owed (it is the only copy of what its restore replaced)."""
    now = now or datetime.now(timezone.utc)
    keep = timedelta(seconds=settings.restore_keep_previous)
    gone = []
    for state in kept_states(settings):
        if id_time(state["id"]) + keep <= now and not state["safety_backup_owed"]:
            remove_kept(settings, state["id"])
            gone.append(state["id"])
    return gone
