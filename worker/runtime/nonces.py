"""The record of which signed requests have run: one file per nonce, on a volume of the worker.

Why files and not Redis alone: the chart runs Redis without persistence, so a nonce kept only
there is gone after a restart, and a signed restore recorded from the broker's traffic would run
again while its stamp is valid; anyone who can write to Redis could also just delete the key.
The files live on a volume that outlives both a Redis restart and a worker restart (by default
a dot-folder of the media volume, `$BACKUP_FILES_DIR/.taiga-backup-state/nonces`, which backups,
restores and a restore's switch leave alone: worker.backups.media.STATE). Whoever can erase them
can write the media volume, that is the app itself, which can change what the backups protect
anyway; NONCE_DIR may point to a volume of its own.

How: "first seen" is the creation of `<dir>/<nonce>` with O_CREAT|O_EXCL, which the kernel makes
atomic, so of two deliveries of one request (two threads, two processes, two pods on a shared
volume) exactly one wins. The name is only ever the validated 32-hex nonce (never a path from a
message), opened with O_NOFOLLOW. The file and its directory are fsynced before the request
runs: a crash right after cannot forget it. The file holds the request's expiry; once a request
has expired it is refused for that reason alone, so its file is removed now and then (a sweep at
most every SWEEP_EVERY seconds, on the way of a check). A record that cannot be made fails the
request closed: NonceStoreError, and the caller refuses to run it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

NONCE = re.compile(r"[0-9a-f]{32}")
SWEEP_EVERY = 300.0  # seconds between two clean-ups in one process
MARGIN = 60.0  # a record is kept this long after its request expired (the sweep and a check race)


class NonceStoreError(Exception):
    """The record of a request could not be made or read: the request must not run."""


class NonceFiles:
    """`first_seen(nonce, expires)` is True exactly once per nonce, across restarts.

    `longest` bounds the lifetime of any request accepted (the worker refuses longer ones): a
    record whose expiry cannot be read (a crash between create and write) is kept that long
    after it was made."""

    def __init__(self, directory: str, longest: float):
        self.directory = directory
        self.longest = longest
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def first_seen(self, nonce: str, expires: float, what: str = "") -> bool:
        """Records the nonce; False when it was recorded before. Raises NonceStoreError when the
        record cannot be made (an unwritable or missing volume): never "first" by default."""
        if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
            raise NonceStoreError(f"not a nonce: {str(nonce)[:40]!r}")
        self._sweep_now_and_then()
        try:
            os.makedirs(self.directory, 0o700, exist_ok=True)
            fd = os.open(os.path.join(self.directory, nonce),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            raise NonceStoreError(f"cannot record the request in NONCE_DIR {self.directory}: "
                                  f"{exc.strerror or exc}") from None
        try:
            try:
                os.write(fd, json.dumps({"expires": expires, "request": what[:200]}).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.directory)
        except OSError as exc:  # the file exists: a second delivery is refused, this one too
            raise NonceStoreError(f"cannot record the request in NONCE_DIR {self.directory}: "
                                  f"{exc.strerror or exc}") from None
        return True

    def _sweep_now_and_then(self) -> None:
        now = time.time()
        with self._lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + SWEEP_EVERY
        try:
            self.sweep(now)
        except OSError:
            pass  # a failed clean-up costs only space; the record itself reports its own errors

    def sweep(self, now: float | None = None) -> int:
        """Removes the records of expired requests; returns how many. Entries that are not ours
        (any name but a nonce) are left alone."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not NONCE.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            if self._until(entry) + MARGIN < now:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _until(self, entry: os.DirEntry) -> float:
        """Until when the record must stay: its request's expiry, or, when that cannot be read,
        the longest any request may live from the moment the record was made."""
        try:
            with open(entry.path, "rb") as f:
                expires = json.loads(f.read(4096))["expires"]
            if isinstance(expires, (int, float)):
                return float(expires)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return entry.stat(follow_symlinks=False).st_mtime + self.longest


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
