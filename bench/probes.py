"""What the machine and its processes are doing, read from /proc (and the disk): load, CPU time,
peak RSS of a process tree, the size of a directory, and the machine's description.

Why a room of its own: every measured run takes these probes the same way, whichever pipeline it
measures, and nothing here knows about backups.
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
from pathlib import Path

from testkit.site import ROOT


def _cmd_out(argv) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_since(busy0) -> float:
    """The machine's busy fraction since `busy0` (a cpu_busy() reading): other load shows up here."""
    b1 = cpu_busy()
    total = b1[1] - busy0[1]
    return round((b1[0] - busy0[0]) / total, 3) if total else 0.0


def machine_info(pg_server_version: str) -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    import celery
    import kombu

    git = _cmd_out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "restic": _cmd_out(["restic", "version"]),
        "pg_dump": _cmd_out(["pg_dump", "--version"]),
        "postgres_server": pg_server_version,
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "git": git + ("+dirty" if dirty else ""),
        "loadavg_at_start": loadavg(),
    }


def dir_bytes(path: str | Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------------- process memory


def _status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Name", "VmHWM", "VmRSS"):
                out[key] = value.strip()
    except OSError:
        return {}
    return out


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def _kb(text: str | None) -> int:
    return int(text.split()[0]) if text else 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssWatch:
    """Polls a process tree (root + descendants) and keeps each program's peak RSS.

    The root's peak is its VmHWM (reset at the start); children's peaks are the largest VmHWM seen
    while they lived (VmHWM only grows, so the last poll before exit is close to the true peak).
    """

    def __init__(self, root: int, exclude: set[int] | None = None, interval: float = 0.05):
        self.root = root
        self.exclude = exclude or set()
        self.interval = interval
        self.peaks: dict[str, int] = {}      # program name -> kB
        self.root_reset = reset_peak(root)
        self.root_rss_samples_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-watch")

    def __enter__(self) -> "RssWatch":
        self._cpu0 = cpu_seconds(self.root)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        st = _status(self.root)
        self.root_peak_kb = max(_kb(st.get("VmHWM")), self.root_rss_samples_max)
        self.root_cpu_s = round(cpu_seconds(self.root) - self._cpu0, 2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            st = _status(self.root)
            self.root_rss_samples_max = max(self.root_rss_samples_max, _kb(st.get("VmRSS")))
            todo = [c for c in _children(self.root) if c not in self.exclude]
            while todo:
                pid = todo.pop()
                cst = _status(pid)
                if cst:
                    name = cst.get("Name", "?")
                    self.peaks[name] = max(self.peaks.get(name, 0), _kb(cst.get("VmHWM")))
                todo += [c for c in _children(pid) if c not in self.exclude]
            self._stop.wait(self.interval)

    def result(self, root_name: str | None) -> dict:
        out = {name: round(kb / 1024, 1) for name, kb in sorted(self.peaks.items())}
        if root_name:
            out[root_name] = round(self.root_peak_kb / 1024, 1)
        return out
