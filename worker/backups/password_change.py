"""Password change: both repositories move from RESTIC_PASSWORD_FILE to RESTIC_NEW_PASSWORD_FILE.

Never `restic key passwd`: it adds and removes in one step and, interrupted between the two,
leaves nobody knowing which password works. Instead, per repository: add a key for the new
password, prove the new password opens the repository, then remove the old key *with the new
password* (restic refuses to remove the key in use, so this cannot lock us out). Every run first
asks both passwords what they open, so a run interrupted anywhere (or repeated after success)
simply finishes the job; nothing is changed anywhere unless both repositories can be opened.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from worker.adapters.redis_store import connect as redis_connect
from worker.adapters.restic import Repository, ResticError
from worker.backups import layout, restic_locks
from worker.errors import OperatorError
from worker.settings import Settings

MAX_OLD_KEYS = 5  # keys sharing the old password (an operator may have added one twice)


class RotationError(OperatorError):
    """The change cannot be made (or finished) safely; the message says why and what was kept."""


@dataclass
class Survey:
    """What each password opens in one repository, before anything is changed."""

    name: str
    old: Repository
    new: Repository
    old_key: str | None
    new_key: str | None

    @property
    def state(self) -> str:
        return {(True, False): "old-only", (True, True): "both", (False, True): "new-only"}.get(
            (bool(self.old_key), bool(self.new_key)), "neither")


def new_password_file(settings: Settings) -> str:
    """Refuses, before anything is touched, a new password that is missing, empty or the old one."""
    path = settings.restic_new_password_file
    if not path:
        raise RotationError("RESTIC_NEW_PASSWORD_FILE is not set: add restic-new-password to the secret first")
    try:
        new = Path(path).read_text()
    except FileNotFoundError:
        raise RotationError(f"RESTIC_NEW_PASSWORD_FILE: {path} does not exist") from None
    except OSError as exc:
        raise RotationError(f"RESTIC_NEW_PASSWORD_FILE: cannot read {path}: {exc.strerror}") from None
    if not new.strip():
        raise RotationError(f"RESTIC_NEW_PASSWORD_FILE: {path} is empty")
    # restic trims surrounding white space from a password file: compare as restic would
    if new.strip() == Path(settings.restic_password_file).read_text().strip():
        raise RotationError("RESTIC_NEW_PASSWORD_FILE holds the same password as RESTIC_PASSWORD_FILE: nothing "
                            "to change (after a finished change, remove restic-new-password from the secret)")
    return path


def current_key(repo: Repository, make_way: Callable[[Repository], object] | None = None) -> str | None:
    """The id of the key this repository object's password opens, or None if it opens none.
    restic 0.14 locks even to list keys; "locked" means the password did open the repository, so
    `make_way` (stale lock handling) can then use it, and the listing is tried once more."""
    try:
        keys = repo.keys()
    except ResticError as exc:
        if exc.kind == "wrong-password":
            return None
        if exc.kind == "no-repository":
            raise RotationError(f"repository {repo.name} does not exist at {repo.url}") from None
        if exc.kind != "locked" or make_way is None:
            raise
        make_way(repo)
        keys = repo.keys()
    return next((k["id"] for k in keys if k.get("current")), None)


def survey(settings: Settings, new_file: str) -> dict[str, Survey]:
    """Asks both passwords about both repositories; raises (having changed nothing) unless each
    repository opens with at least one of them."""
    client = redis_connect(settings)

    def make_way(repo: Repository) -> None:
        restic_locks.make_way(settings, repo, client, exclusive=False)

    def one(name: str) -> Survey:
        old = layout.repository(settings, name)
        new = layout.repository(settings, name, password_file=new_file)
        return Survey(name, old, new, current_key(old, make_way), current_key(new, make_way))

    with ThreadPoolExecutor(max_workers=len(layout.NAMES)) as pool:
        found = dict(zip(layout.NAMES, pool.map(one, layout.NAMES)))
    locked_out = [name for name, s in found.items() if s.state == "neither"]
    if locked_out:
        raise RotationError(f"neither RESTIC_PASSWORD_FILE nor RESTIC_NEW_PASSWORD_FILE opens repository "
                            f"{' and '.join(locked_out)}; nothing was changed")
    return found


def finish(settings: Settings, s: Survey, new_file: str, redis_client) -> dict:
    """Brings one repository to "only the new password opens it", from whatever state it is in."""
    if s.state == "new-only":
        return {"action": "none", "detail": "already uses the new password only"}
    out: dict = {"action": "completed" if s.state == "both" else "rotated"}
    out.update(restic_locks.make_way(settings, s.old, redis_client, exclusive=True))  # once: covers add and remove
    if s.state == "old-only":
        s.old.add_key(new_file, host=settings.restic_host)
    new_key = current_key(s.new)
    if not new_key:
        raise RotationError(f"repository {s.name}: the new password does not open it after adding its key; "
                            f"the old key was kept")
    removed, old_key = [], s.old_key
    while old_key:
        if len(removed) >= MAX_OLD_KEYS:
            raise RotationError(f"repository {s.name}: the old password still opens it after removing "
                                f"{len(removed)} keys")
        s.new.remove_key(old_key)
        removed.append(old_key)
        old_key = current_key(s.old)  # None: the proof that the old password no longer opens it
    out.update(new_key=new_key, removed_keys=removed,
               detail="interrupted change finished: old key removed" if s.state == "both"
               else "new key added and proven, old key removed")
    return out
