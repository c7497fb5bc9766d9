"""What the bench sees of one taiga-backup job from outside the worker: Celery's task events (the
timestamps Flower shows) and the steps' start and end times from the worker's text log.

Why from outside: the wall time reported must be the one an operator sees (task-sent ->
task-succeeded), not the job's own account of itself; the log's step times tell how much of that
wall is bookkeeping (`covered` is the part spent in the data steps).
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from pathlib import Path

from bench import log

_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/[^\]]*\] (.*)$")
_STEP = re.compile(r"^(\w+): (\w+) (started|finished|FAILED)")


def step_timeline(log_path: Path, task_id: str) -> dict[str, list[float]]:
    """{step: [start, end]} (epoch seconds, ms resolution) from the worker's text log lines
    "<job>: <step> started/finished", between the task's "received" and "succeeded" lines."""
    timeline: dict[str, list[float]] = {}
    inside = False
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return timeline
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        msg = m.group(3)
        if f"[{task_id}] received" in msg:
            inside = True
            continue
        if not inside:
            continue
        if f"[{task_id}] succeeded" in msg or f"[{task_id}] raised" in msg:
            break
        st = _STEP.match(msg)
        if st:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            timeline.setdefault(st.group(2), [ts, ts])
            if st.group(3) == "started":
                timeline[st.group(2)][0] = ts
            else:
                timeline[st.group(2)][1] = ts
    return timeline


def covered(intervals: list[list[float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


class TaskEvents:
    """Flower's view: task-sent / task-received / task-started / task-succeeded timestamps."""

    def __init__(self, app):
        self.app = app
        self.events: dict[str, dict[str, float]] = {}
        self._recv = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="celery-events")
        self._thread.start()
        self._ready.wait(10)

    def _on(self, event: dict) -> None:
        uuid = event.get("uuid")
        if uuid and event.get("type", "").startswith("task-"):
            # the first of each kind: a backup's id is also its chain's last link's (Task.replace),
            # whose task-sent comes later
            self.events.setdefault(uuid, {}).setdefault(event["type"], float(event.get("timestamp") or time.time()))

    def _run(self) -> None:
        while True:
            try:
                with self.app.connection_for_read() as conn:
                    self._recv = self.app.events.Receiver(conn, handlers={"*": self._on})
                    self._ready.set()
                    self._recv.capture(limit=None, timeout=None, wakeup=False)
                return
            except Exception as exc:  # broker hiccup: keep listening
                log(f"event receiver: {exc}")
                time.sleep(1)

    def wait_for(self, task_id: str, kind: str, timeout: float = 10.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ts = self.events.get(task_id, {}).get(kind)
            if ts is not None:
                return ts
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        if self._recv is not None:
            self._recv.should_stop = True
