"""Loading a dump into a database, and only a whole one: the loader of the restore and the drill.

Why a check of its own: a plain dump made without `pipefail` (the old procedure) can be cut
short and still be stored as a valid snapshot, and `psql --single-transaction` commits whatever
it has read when its input ends - tables without their indexes and constraints, a "successful"
restore. So a plain dump is relayed through this process: psql gets `BEGIN`, the stream, and
`COMMIT` only once the stream has ended with pg_dump's completion trailer and restic exited 0;
anything else ends psql's input inside the open transaction, which the server rolls back. A
custom archive is checked by pg_restore itself (it notices a truncated archive and, with
--single-transaction --exit-on-error, commits nothing).

Errors of psql and pg_restore quote the rows they choke on (`CONTEXT: COPY users_user, line 3:
"…"`, `DETAIL: Key (email)=(…)`): e-mails, password hashes. `scrub_rows` removes those values
before an error reaches a report, a log or a webhook.
"""

from __future__ import annotations

import re
import signal

from worker.adapters import postgres, process
from worker.adapters.process import ProcessError
from worker.adapters.restic import Repository, ResticError
from worker.errors import OperatorError
from worker.pause_points import pause_point
from worker.settings import Settings

CUSTOM_MAGIC = b"PGDMP"
TRAILER = b"-- PostgreSQL database dump complete"
_IDENT = rb'(?:"(?:[^"]|"")*"|[^ ."]+)'
COPY_LINE = re.compile(rb"^COPY (" + _IDENT + rb"\." + _IDENT + rb") .*FROM stdin;$")

_WITHHELD = "<row data withheld>"
_ROW_PATTERNS = [
    (re.compile(r'(COPY [^\n,]+, line \d+(?:, column [^\n:]+)?): .*'), r"\1: " + _WITHHELD),
    (re.compile(r"(DETAIL:\s+Key \([^\n)]*\))=\(.*?\)( already exists| is not present)"), r"\1=(…)\2"),
    (re.compile(r"(DETAIL:\s+Failing row contains) .*"), r"\1 " + _WITHHELD),
    (re.compile(r'(invalid input (?:syntax for type \w+|value for enum [^\n:]+)): ".*"'), r"\1: " + _WITHHELD),
    (re.compile(r'(value too long for type [^\n]+|out of range[^\n]*): ".*"'), r"\1: " + _WITHHELD),
]


class DumpError(OperatorError):
    """The dump cannot be loaded as a whole; the message names the backup's snapshot and why."""


def scrub_rows(text: str) -> str:
    """An error text without the row contents psql and pg_restore quote."""
    for pattern, replacement in _ROW_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class PlainWatch:
    """Watches a plain dump stream: rows per COPY section (the drill compares them) and whether
    the stream ended with pg_dump's completion trailer outside any COPY data."""

    def __init__(self, pause: str | None = None):
        self.counts: dict[str, int] = {}
        self.bytes = 0
        self._table: str | None = None
        self._partial = b""
        self._last = b""  # the last line that was neither blank nor a psql meta-command
        self.pause = pause

    def __call__(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        buf, pos = self._partial + chunk, 0
        while True:
            if self._table is not None:  # COPY data: counted at C speed, not line by line
                pos = self._rows(buf, pos)
                if self._table is not None:
                    break
            end = buf.find(b"\n", pos)
            if end < 0:
                break
            self._line(buf[pos:end])
            pos = end + 1
        self._partial = buf[pos:]
        if self.pause and self.bytes:
            pause_point(self.pause)

    def _rows(self, buf: bytes, pos: int) -> int:
        """Counts the complete data rows from pos; returns where the unread rest starts (after
        the end-of-data line `\\.`, if it is in buf)."""
        if buf.startswith(b"\\.\n", pos):
            self._line(b"\\.")
            return pos + 3
        stop = buf.find(b"\n\\.\n", pos)
        if stop >= 0:
            self.counts[self._table] += buf.count(b"\n", pos, stop + 1)
            self._line(b"\\.")
            return stop + 4
        last = buf.rfind(b"\n", pos)
        if last < 0:
            return pos
        self.counts[self._table] += buf.count(b"\n", pos, last + 1)
        self._last = b""
        return last + 1

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if self._table is not None:
            if line == b"\\.":
                self._table = None
            else:
                self.counts[self._table] += 1
            self._last = b""
            return
        if line.startswith(b"COPY "):
            match = COPY_LINE.match(line)
            if match:
                self._table = match.group(1).decode("utf-8", "replace")
                self.counts[self._table] = 0
        if line and line != b"--" and not line.startswith(b"\\"):
            self._last = line  # `\unrestrict` (pg_dump 17.6+) may follow the trailer

    def complete(self) -> bool:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        return self._table is None and self._last == TRAILER


def detect_format(repo: Repository, snapshot_id: str, filename: str = "stdin") -> str:
    """Reads only the head of the dump; --no-lock because this reader is stopped after a few
    bytes and must not leave a lock behind."""
    argv = ["restic", "--no-lock", *repo.dump_argv(snapshot_id, filename)[1:]]
    head, done = process.head(argv, env=repo.env(), nbytes=len(CUSTOM_MAGIC), what=f"restic dump ({repo.name})")
    if not head:
        raise ResticError(done.what, done.returncode,
                          done.stderr or f"snapshot {snapshot_id[:8]} has an empty {filename}")
    return "custom" if head == CUSTOM_MAGIC else "plain"


def _checked(result: process.Completed) -> None:
    if not result.ok:
        raise ProcessError(result.what, result.returncode, scrub_rows(result.stderr), result.timed_out)


def load(settings: Settings, repo: Repository, snapshot_id: str, dbname: str, *, timeout: float | None = None,
         filename: str = "stdin", watch: PlainWatch | None = None, pause: str | None = None) -> str:
    """Streams the dump into `dbname` (which must exist and be empty) and commits it only when it
    is whole. Returns the format loaded; raises DumpError for an incomplete dump, ResticError
    when it cannot be read, ProcessError (rows scrubbed) when it does not load. `watch` (plain
    dumps) is filled with the dump's row counts."""
    fmt = detect_format(repo, snapshot_id, filename)
    short = snapshot_id[:8]
    if fmt == "custom":
        loader = postgres.pg_restore_argv(settings, dbname)
        prod, cons = process.pipe(repo.dump_argv(snapshot_id, filename), loader, producer_env=repo.env(),
                                  consumer_env=postgres.client_env(settings), timeout=timeout,
                                  producer_what=f"restic dump ({repo.name})", consumer_what="pg_restore")
        if not prod.ok and prod.returncode != -signal.SIGPIPE:
            raise ResticError(prod.what, prod.returncode, prod.stderr, prod.timed_out)
        _checked(cons)
        if not prod.ok:
            raise ResticError(prod.what, prod.returncode, prod.stderr, prod.timed_out)
        return fmt
    watch = watch or PlainWatch()
    watch.pause = pause
    verdict: dict = {}

    def last(producer_ok: bool) -> bytes | None:
        verdict["complete"] = producer_ok and watch.complete()
        return b"COMMIT;\n" if verdict["complete"] else None

    # without psql's own --single-transaction: it would COMMIT at end of input, a cut stream too
    psql = [arg for arg in postgres.psql_argv(settings, dbname) if arg != "--single-transaction"]
    prod, cons = process.relay(repo.dump_argv(snapshot_id, filename), psql,
                               producer_env=repo.env(), consumer_env=postgres.client_env(settings),
                               first=b"BEGIN;\n", watch=watch, last=last, timeout=timeout,
                               producer_what=f"restic dump ({repo.name})", consumer_what="psql")
    if not prod.ok and prod.returncode != -signal.SIGPIPE:
        raise ResticError(prod.what, prod.returncode, prod.stderr, prod.timed_out)
    if verdict.get("complete", True):  # psql's own error comes first, unless the whole stream was read and cut
        _checked(cons)
    if not prod.ok:
        raise ResticError(prod.what, prod.returncode, prod.stderr, prod.timed_out)
    if not verdict.get("complete"):
        raise DumpError(f"the plain dump in snapshot {short} is incomplete: it does not end with pg_dump's "
                        f"trailer \"{TRAILER.decode()}\" (cut short when it was made, e.g. by the old procedure "
                        f"without pipefail); nothing of it was committed")
    return fmt


def out_of_space(exc: Exception) -> bool:
    return "No space left on device" in str(exc) or "could not extend file" in str(exc)

