"""restic, one repository at a time: init, backup (directory or stdin pipe), list, forget, dump,
restore, keys, locks.

Works with Debian's restic 0.14 and every newer release without asking which one runs: it uses
no flag newer than 0.14, and reads a failure both from the exit codes newer releases give
(10 no repository, 11 locked, 12 wrong password) and from 0.14's error texts (ResticError.kind).
Credentials reach restic only through its own environment (a password *file* path, S3 keys);
they are never in argv.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from worker.adapters import process
from worker.adapters.process import Completed, ProcessError
from worker.errors import OperatorError
from worker.redact import redact

log = logging.getLogger(__name__)

NO_REPO = re.compile(r"(Is there a repository at the following location|does not exist|unable to open config file"
                     r"|repository does not exist)", re.IGNORECASE)
WRONG_PASSWORD = re.compile(r"wrong password|no key found", re.IGNORECASE)
LOCKED = re.compile(r"(repository is already locked|unable to create lock|lock failed)", re.IGNORECASE)
EXIT_INCOMPLETE = 3
# restic 0.14 adds "Is there a repository...?" to any failure to open one, a dead endpoint included
UNREACHABLE = re.compile(r"dial tcp|connection refused|no such host|i/o timeout|network is unreachable"
                         r"|handshake|connection reset", re.IGNORECASE)
RETRYING = re.compile(r"returned error, retrying", re.IGNORECASE)
DAMAGED = re.compile(r"repository contains errors", re.IGNORECASE)


class ResticError(ProcessError):
    """restic failed; `kind` classifies the common causes so callers can react (and tests assert)."""

    @property
    def kind(self) -> str:
        if self.returncode == 12 or WRONG_PASSWORD.search(self.stderr):
            return "wrong-password"
        if self.returncode == 11 or LOCKED.search(self.stderr):
            return "locked"
        if self.returncode != 10 and UNREACHABLE.search(self.stderr):
            return "unreachable"
        if self.returncode == 10 or NO_REPO.search(self.stderr):
            return "no-repository"
        if self.returncode == EXIT_INCOMPLETE:
            return "incomplete"
        return "error"


BROKEN_PIPE = re.compile(r"broken pipe|EPIPE", re.IGNORECASE)
SIGPIPE = 13


def broke_pipe(producer: Completed) -> bool:
    """The producer failed only because its reader was gone (killed by SIGPIPE, or said so)."""
    return not producer.timed_out and (producer.returncode in (-SIGPIPE, 128 + SIGPIPE)
                                       or bool(BROKEN_PIPE.search(producer.stderr)))


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


# what restic 0.17+ prints, exiting 0, when a changed snapshot was saved but the old one not removed
_UNTAGGED = "unable to modify the tags"


def _line_with(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), needle)


def _raise(result: Completed, ok=(0,)) -> Completed:
    if result.timed_out or result.returncode not in ok:
        raise ResticError(result.what, result.returncode, result.stderr, result.timed_out)
    return result


def parse_time(text: str) -> datetime:
    """restic times have nanoseconds and an offset; Python wants at most microseconds."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac):]
        text = f"{head}.{frac[:6]}{tz}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass
class BackupSummary:
    """restic's final summary line, plus the snapshot it made."""

    snapshot_id: str | None
    data_added: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, doc: dict) -> "BackupSummary":
        return cls(
            snapshot_id=doc.get("snapshot_id"),
            data_added=int(doc.get("data_added", 0)),
            files_new=int(doc.get("files_new", 0)),
            files_changed=int(doc.get("files_changed", 0)),
            files_unmodified=int(doc.get("files_unmodified", 0)),
            total_files_processed=int(doc.get("total_files_processed", 0)),
            total_bytes_processed=int(doc.get("total_bytes_processed", 0)),
            raw=doc,
        )

    def as_dict(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "data_added": self.data_added,
            "files_new": self.files_new,
            "files_changed": self.files_changed,
            "files_unmodified": self.files_unmodified,
            "total_files_processed": self.total_files_processed,
            "total_bytes_processed": self.total_bytes_processed,
        }


class JsonLines:
    """Collects restic --json output: forwards status lines to a callback, keeps the summary."""

    def __init__(self, on_status: Callable[[dict], None] | None = None):
        self.on_status = on_status
        self.summary: dict | None = None
        self.errors: list[str] = []

    def __call__(self, line: bytes) -> None:
        try:
            doc = json.loads(line)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        kind = doc.get("message_type")
        if kind == "summary":
            self.summary = doc
        elif kind == "status" and self.on_status:
            self.on_status(doc)
        elif kind == "error":
            self.errors.append(str(doc.get("error", doc)))


class Repository:
    """One restic repository (e.g. `$RESTIC_REPOSITORY/files`)."""

    def __init__(self, url: str, password_file: str, *, host: str, extra_env: dict | None = None,
                 cache_dir: str | None = None, name: str | None = None):
        self.url = url
        self.password_file = password_file
        self.host = host
        self.name = name or url.rstrip("/").rsplit("/", 1)[-1]
        self._extra_env = dict(extra_env or {})
        self._cache_dir = cache_dir

    def env(self) -> dict:
        extra = {"RESTIC_REPOSITORY": self.url, "RESTIC_PASSWORD_FILE": self.password_file}
        if self._cache_dir:
            extra["RESTIC_CACHE_DIR"] = self._cache_dir
        extra.update(self._extra_env)
        return process.child_env(extra)

    def run(self, *args: str, timeout: float | None = 600, ok=(0,), on_line=None, cwd=None,
            input: bytes | None = None) -> Completed:
        argv = ["restic", *args]
        what = f"restic {args[0]} ({self.name})"
        result = process.run(argv, env=self.env(), what=what, timeout=timeout, on_line=on_line, cwd=cwd,
                             input=input)
        return _raise(result, ok)

    # -- repository -------------------------------------------------------------------------
    def exists(self, timeout: float = 120) -> bool:
        """True when the repository is there and the password opens it; raises on other errors."""
        try:
            self.run("cat", "config", timeout=timeout)
            return True
        except ResticError as exc:
            if exc.kind == "no-repository":
                return False
            raise

    def init_if_missing(self, timeout: float = 300) -> bool:
        """Creates the repository on first use; a no-op when present. Returns True if created."""
        if self.exists(timeout=min(timeout, 120)):
            return False
        self.run("init", timeout=timeout)
        return True

    def unlock_stale(self, timeout: float = 120) -> None:
        """Removes locks restic itself considers stale (dead PID on this host, or > 30 min old)."""
        self.run("unlock", timeout=timeout)

    def local_path(self) -> str | None:
        """The directory of a repository on a local file system, else None."""
        url = self.url[len("local:"):] if self.url.startswith("local:") else self.url
        return url if url.startswith("/") else None

    def remove_lock(self, lock_id: str) -> bool:
        """Removes exactly one lock by id - never `unlock --remove-all`, which would also take the
        locks of someone still at work. restic has no command for one lock, so this works for
        local repositories only (the lock is a file); elsewhere it returns False and the lock
        goes when restic calls it stale (30 minutes). True when it is gone."""
        root = self.local_path()
        if root is None or not re.fullmatch(r"[0-9a-f]{64}", lock_id):
            return False
        try:
            os.remove(os.path.join(root, "locks", lock_id))
        except FileNotFoundError:
            pass
        return True

    def locks(self, timeout: float = 120) -> list[dict]:
        """Every lock with its holder (host, pid, user, time), read without taking a lock. It
        opens the repository, so it also proves it is there and the password opens it."""
        ids = self.run("list", "locks", "--no-lock", timeout=timeout).stdout.decode().split()
        holders = []
        for lock_id in ids:
            try:
                doc = json.loads(self.run("cat", "lock", lock_id, "--no-lock", timeout=60).stdout)
            except (ResticError, ValueError):
                continue  # removed between list and cat
            doc["id"] = lock_id
            holders.append(doc)
        return holders

    # -- snapshots --------------------------------------------------------------------------
    def snapshots(self, tag: str | None = None, timeout: float = 300) -> list[dict]:
        args = ["snapshots", "--json", "--no-lock"]
        if tag:
            args += ["--tag", tag]
        docs = json.loads(self.run(*args, timeout=timeout).stdout or b"[]") or []
        return sorted(docs, key=lambda d: d.get("time", ""))

    def forget(self, *snapshot_ids: str, prune: bool = False, timeout: float = 3600) -> None:
        if snapshot_ids:
            self.run("forget", *(["--prune"] if prune else []), "--", *snapshot_ids, timeout=timeout)

    # -- backup -----------------------------------------------------------------------------
    def _backup_args(self, tags: list[str], at: datetime | None = None) -> list[str]:
        """`at`: the snapshot's time instead of now (restic reads --time as local time)."""
        args = ["backup", "--json", "--host", self.host]
        for tag in tags:
            args += ["--tag", tag]
        if at is not None:
            args += ["--time", at.astimezone().strftime("%Y-%m-%d %H:%M:%S")]
        return args

    def backup_dir(self, path: str, tags: list[str], *, on_status=None, timeout=None,
                   excludes: tuple[str, ...] = (), parent: str | None = None, full_id: bool = True,
                   flags: tuple[str, ...] = (), at: datetime | None = None) -> BackupSummary:
        """`restic backup .` from inside `path` (the seed's layout: snapshot paths are relative).
        `parent`: the snapshot to compare with (a pre-pass a moment ago: only what changed since
        is read). full_id=False leaves the short id, saving a restic run (a key derivation) on
        the critical path; resolve it later with full_ids()."""
        deadline = _deadline(timeout)
        lines = JsonLines(on_status)
        skip = [arg for pattern in excludes for arg in ("--exclude", pattern)]
        args = [*self._backup_args(tags, at), *flags, *skip, *(["--parent", parent] if parent else []), "."]
        result = process.run(["restic", *args], env=self.env(), cwd=path,
                             what=f"restic backup ({self.name})", timeout=timeout, on_line=lines,
                             keep_stdout=False)
        summary = BackupSummary.from_json(lines.summary) if lines.summary else None
        if not result.ok:
            if summary and summary.snapshot_id:
                # exit 3: a snapshot exists but some files could not be read - it is not a good backup
                self._forget_quietly(summary.snapshot_id)
            raise ResticError(result.what, result.returncode, result.stderr, result.timed_out)
        if summary is None or not summary.snapshot_id:
            raise ResticError(result.what, result.returncode, "restic printed no summary: " + result.stderr)
        return self._full_id(summary, deadline) if full_id else summary

    def backup_pipe(self, producer: list[str], producer_env: dict, tags: list[str], *, filename="stdin",
                    on_status=None, timeout=None, producer_what=None, full_id: bool = True,
                    flags: tuple[str, ...] = (), nice: int | None = None,
                    at: datetime | None = None) -> BackupSummary:
        """producer | restic backup --stdin, with no temporary file (`nice`: both ends niced). A
        snapshot made from a stream whose producer failed is removed again before the error is
        raised. When restic dies first, the producer fails too, on the closed pipe ("Broken
        pipe"): that says nothing, so restic's own error is the one raised. At the deadline the
        end that held the stream up is blamed (process._stalled_end: a producer blocked on the
        full pipe waits for restic), not whichever was waited for first."""
        deadline = _deadline(timeout)
        lines = JsonLines(on_status)
        args = self._backup_args(tags, at) + list(flags) + ["--stdin"]
        if filename != "stdin":
            args += ["--stdin-filename", filename]
        prod, cons = process.pipe(producer, ["restic", *args], producer_env=producer_env,
                                  consumer_env=self.env(), producer_what=producer_what,
                                  consumer_what=f"restic backup --stdin ({self.name})", timeout=timeout,
                                  on_consumer_line=lines, keep_stdout=False, nice=nice)
        summary = BackupSummary.from_json(lines.summary) if lines.summary else None
        if cons.stalled or (prod.timed_out and (RETRYING.search(cons.stderr) or UNREACHABLE.search(cons.stderr))):
            # restic held the stream up at the deadline (pg_dump blocked on the full pipe, or
            # already done), or says it retries an unreachable repository: restic is why. The
            # latter even when the pipe was nearly empty - restic may still be filling its own
            # buffers from a slow pg_dump while every upload fails
            raise ResticError(cons.what, cons.returncode, cons.stderr, True)
        if not cons.ok and not prod.ok and broke_pipe(prod):
            raise ResticError(cons.what, cons.returncode, cons.stderr, cons.timed_out)
        if not prod.ok:
            if summary and summary.snapshot_id:
                self._forget_quietly(summary.snapshot_id)
            raise prod.error()
        if not cons.ok:
            raise ResticError(cons.what, cons.returncode, cons.stderr, cons.timed_out)
        if summary is None or not summary.snapshot_id:
            raise ResticError(cons.what, cons.returncode, "restic printed no summary: " + cons.stderr)
        return self._full_id(summary, deadline) if full_id else summary

    def full_ids(self, short_ids: list[str], timeout: float = 120) -> dict[str, str]:
        """{short id: full id}. A snapshot this host just saved is in restic's local cache, which
        mirrors the repository's layout (`<cache>/<repository id>/snapshots/<2 hex>/<full id>`):
        found there without a restic run (a key derivation). Others: one restic run for all."""
        found = {short: full for short in short_ids if short and (full := self._cached_snapshot(short))}
        wanted = [s for s in short_ids if s and s not in found]
        if wanted:
            docs = json.loads(self.run("snapshots", "--json", "--no-lock", *wanted, timeout=timeout).stdout or b"[]")
            found.update({short: doc["id"] for short in wanted for doc in docs or [] if doc["id"].startswith(short)})
        return found

    def _cached_paths(self, short: str) -> list[str]:
        if not re.fullmatch(r"[0-9a-f]{8,64}", short):
            return []
        root = self._cache_dir or os.path.join(os.environ.get("HOME", "/nonexistent"), ".cache", "restic")
        return glob.glob(os.path.join(glob.escape(root), "*", "snapshots", short[:2], short + "*"))

    def _cached_snapshot(self, short: str) -> str | None:
        names = {os.path.basename(p) for p in self._cached_paths(short)}
        return names.pop() if len(names) == 1 and len(next(iter(names))) == 64 else None

    def retag(self, snapshot_id: str, tags: list[str], timeout: float = 600) -> str:
        """Gives a snapshot exactly `tags`; returns its new full id (restic saves a changed
        snapshot anew, with the old id as `original`). restic caches the snapshot it saves, in
        this repository's cache directory - the one holding the old snapshot: the one id new
        there is found without another restic run (a key derivation); else one `snapshots` run
        finds it by its `original`."""
        old = self._cached_paths(snapshot_id)
        where = os.path.dirname(os.path.dirname(old[0])) if len(old) == 1 else None

        def cached() -> set[str]:
            if where is None:
                return set()
            return {os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(where), "*", "*"))}

        before = cached()
        done = self.run("tag", *[arg for tag in tags for arg in ("--set", tag)], "--", snapshot_id, timeout=timeout)
        untagged = _line_with(done.stderr, _UNTAGGED) if _UNTAGGED in done.stderr else None
        if untagged and "(403)" in untagged:
            # an append-only repository (rest-server --append-only) removes nothing, by design:
            # the old snapshot stays beside the new one, still tagged as a pre-pass (no backup's)
            log.warning("restic tag (%s): the repository refused to remove %s (append-only): kept",
                        self.name, snapshot_id)
        elif untagged:
            # restic 0.17+ saves the changed snapshot, then fails to remove the old one, says
            # "ignoring" and exits 0: two snapshots of the same tree, the retag not done
            raise OperatorError(f"restic tag ({self.name}): {snapshot_id} was not retagged: "
                                f"{redact(_line_with(done.stderr, _UNTAGGED))}")
        new = cached() - before
        if len(new) == 1 and len(next(iter(new))) == 64:
            return new.pop()
        found = [d["id"] for d in self.snapshots(timeout=timeout) if (d.get("original") or "").startswith(snapshot_id)]
        if len(found) != 1:
            raise OperatorError(f"restic tag ({self.name}): {len(found)} snapshots have {snapshot_id} as their "
                                f"original, not one")
        return found[0]

    def forget_tagged(self, tag: str, timeout: float = 600) -> None:
        """Forgets every snapshot carrying `tag`, by id. Not with a policy that keeps none of them
        (one restic run less): restic 0.17 and later refuse a policy that would remove the last
        snapshot of a group."""
        deadline = _deadline(timeout)
        ids = [s["id"] for s in self.snapshots(tag=tag, timeout=timeout)]
        left = None if deadline is None else max(1.0, deadline - time.monotonic())
        self.forget(*ids, timeout=left)

    def _full_id(self, summary: BackupSummary, deadline: float | None = None) -> BackupSummary:
        """restic 0.14 reports the short id; results and tags always carry the full one. Looked up
        within what is left of the backup's deadline."""
        if summary.snapshot_id and len(summary.snapshot_id) < 64:
            left = 120 if deadline is None else max(1.0, deadline - time.monotonic())
            summary.snapshot_id = self.full_ids([summary.snapshot_id], timeout=left).get(summary.snapshot_id,
                                                                                        summary.snapshot_id)
        return summary

    def _forget_quietly(self, snapshot_id: str) -> None:
        try:
            self.forget(snapshot_id)
        except ProcessError:
            pass

    # -- reading back -----------------------------------------------------------------------
    def dump_argv(self, snapshot_id: str, filename: str = "stdin") -> list[str]:
        """argv for streaming one file of a snapshot to stdout (the producer side of a pipe).
        Callers pass only ids that passed validation (hex), never raw request fields."""
        return ["restic", "dump", snapshot_id, filename]

    def restore(self, snapshot_id: str, target: str, *, timeout=None, on_line=None) -> Completed:
        return self.run("restore", snapshot_id, "--target", target, timeout=timeout, on_line=on_line)

    def ls(self, snapshot_id: str) -> list[dict]:
        out = self.run("ls", "--json", "--no-lock", snapshot_id, timeout=600).stdout
        nodes = []
        for line in out.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("struct_type") == "node":
                nodes.append(doc)
        return nodes

    # -- keys (password change) -------------------------------------------------------------
    def keys(self) -> list[dict]:
        """The repository's keys; the one this password opens has `current: true`. Raises
        ResticError (kind "wrong-password") when the password opens none. restic 0.14 takes a
        shared lock here despite --no-lock (kind "locked" under an exclusive one)."""
        return json.loads(self.run("key", "list", "--json", "--no-lock", timeout=120).stdout or b"[]") or []

    def add_key(self, new_password_file: str, host: str | None = None) -> None:
        """Adds a key for the password in `new_password_file` (a path: never the password in argv)."""
        self.run("key", "add", "--new-password-file", new_password_file, *(["--host", host] if host else []),
                 timeout=300)

    def remove_key(self, key_id: str) -> None:
        """restic refuses to remove the key this password uses, so a caller cannot lock itself out."""
        self.run("key", "remove", key_id, timeout=300)

    # -- upkeep -----------------------------------------------------------------------------
    def forget_plan(self, policy: list[str]) -> list[dict]:
        """What `forget` with this policy would do, per group; changes nothing and takes no lock."""
        out = self.run("forget", "--dry-run", "--json", "--no-lock", *policy, timeout=600).stdout
        return json.loads(out or b"[]") or []

    def check(self, read_data_subset: str | None = None, *, timeout: float | None = None) -> Completed:
        """`restic check`; exit 1 means damage was found: returned, not raised, so the caller can
        report restic's findings."""
        args = ["check"] + (["--read-data-subset", read_data_subset] if read_data_subset else [])
        result = self.run(*args, timeout=timeout, ok=(0, 1))
        if result.returncode == 1 and not DAMAGED.search(result.stderr):
            raise ResticError(result.what, result.returncode, result.stderr)  # e.g. locked, wrong password
        return result

    def stored_bytes(self, timeout: float = 600) -> int:
        """Bytes of data the repository stores (`restic stats --mode raw-data`), read without a lock."""
        doc = json.loads(self.run("stats", "--mode", "raw-data", "--json", "--no-lock", timeout=timeout).stdout or b"{}")
        return int(doc.get("total_size") or 0)
