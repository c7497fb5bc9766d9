"""When a running `restic backup` will be done, read off its --json status lines.

Why: the backup quiesces the app as the media pre-pass ends, not after it: the pods take a
moment to stop (about as long as the last backup's quiesce took), and that moment is spent on
the pre-pass's last seconds instead of waiting. Starting too early would lengthen the downtime,
so the estimate is careful: restic's own `seconds_remaining` counts whole seconds and appears
only now and then, and while restic still scans the tree its totals grow, so bytes left over
bytes per second means nothing until restic has seen as many files as the last backup had,
or its totals have stood still for a while.
"""

from __future__ import annotations

import threading
import time
from collections import deque

# the totals must have stood still this long (restic's scanner finished) ...
SCAN_SETTLED = 0.5
# ... at least this share of the bytes must be read, and the rate is measured over the last
# RATE_WINDOW seconds (at least MIN_SPAN of them)
MIN_DONE = 0.5
RATE_WINDOW = 1.0
MIN_SPAN = 0.3
# after its last byte restic still writes the trees, the index and the snapshot
FINISH = 0.3


class BackupEta:
    """Fed every status document of one `restic backup --json`; sets `near` once the backup is
    estimated to end within `lead` seconds (never with lead <= 0). `near_at`: the time it did.
    `expected_files`: the file count the tree had last time, if known."""

    def __init__(self, lead: float, expected_files: int | None = None, clock=time.monotonic):
        self.lead = lead
        self.expected_files = expected_files
        self.near = threading.Event()
        self.near_at: float | None = None
        self.remaining: float | None = None
        self._clock = clock
        self._totals: tuple | None = None
        self._totals_since = 0.0
        self._points: deque = deque()

    def __call__(self, doc: dict) -> None:
        if self.lead <= 0 or self.near.is_set():
            return
        now = self._clock()
        totals = (doc.get("total_files"), doc.get("total_bytes"))
        if totals != self._totals:  # still scanning: the rate is measured from here on
            self._totals, self._totals_since = totals, now
            self._points.clear()
        total, done = doc.get("total_bytes") or 0, doc.get("bytes_done") or 0
        self._points.append((now, done))
        while len(self._points) > 2 and now - self._points[1][0] >= RATE_WINDOW:
            self._points.popleft()
        scanned = now - self._totals_since >= SCAN_SETTLED or (
            self.expected_files is not None and (doc.get("total_files") or 0) >= self.expected_files)
        if not scanned or total <= 0 or done < MIN_DONE * total:
            return
        since, done_then = self._points[0]
        if now - since < MIN_SPAN or done <= done_then:
            return
        self.remaining = (total - done) * (now - since) / (done - done_then) + FINISH
        if self.remaining <= self.lead:
            self.near_at = now
            self.near.set()
