"""restic's REST server for tests: the binary (from PATH, or fetched once from Debian trixie's
`restic-rest-server` package through Debian's registry, never touching the system's apt state)
and a running server on a free local port, optionally `--append-only`.

Why fetched: the REST server is the backend an operator picks for ransomware-safe nightly
backups (append-only: a stolen worker key cannot delete), and nothing else here speaks restic's
REST protocol. Without network or apt-get, `binary()` returns None and the tests skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SOURCES = "deb http://deb.debian.org/debian trixie main\n"
CACHE = Path(os.environ.get("TAIGA_BACKUP_BIN_CACHE") or Path(tempfile.gettempdir()) / "taiga-backup-trixie")
PACKAGE, PROGRAM = "restic-rest-server", "restic-rest-server"


def _apt(*args: str) -> bool:
    """apt-get against our own sources list, lists and cache (apt's own state stays as it was)."""
    options = [f"-oDir::Etc::sourcelist={CACHE / 'sources.list'}", "-oDir::Etc::sourceparts=/dev/null",
               f"-oDir::State::Lists={CACHE / 'lists'}", f"-oDir::Cache={CACHE / 'cache'}", "-oDebug::NoLocking=1",
               "-qq"]
    try:
        return subprocess.run(["apt-get", *options, *args], cwd=str(CACHE), capture_output=True,
                              timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def binary() -> str | None:
    """The rest-server program: on PATH, already fetched, or fetched now; None if it cannot be had."""
    found = shutil.which("rest-server") or shutil.which(PROGRAM)
    fetched = CACHE / "root" / "usr" / "bin" / PROGRAM
    if found or fetched.exists():
        return found or str(fetched)
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        return None
    for sub in ("lists/partial", "cache/archives/partial"):
        (CACHE / sub).mkdir(parents=True, exist_ok=True)
    (CACHE / "sources.list").write_text(SOURCES)
    if not (_apt("update") and _apt("download", PACKAGE)):
        return None
    debs = sorted(glob.glob(str(CACHE / f"{PACKAGE}_*.deb")))
    if not debs or subprocess.run(["dpkg-deb", "-x", debs[-1], str(CACHE / "root")], capture_output=True).returncode:
        return None
    return str(fetched) if fetched.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RestServer:
    """One rest-server process serving `data` without authentication on 127.0.0.1."""

    def __init__(self, program: str, data: Path, append_only: bool = False):
        self.data = data
        self.port = _free_port()
        self.log = data.parent / f"rest-server-{self.port}.log"
        argv = [program, "--path", str(data), "--listen", f"127.0.0.1:{self.port}", "--no-auth"]
        if append_only:
            argv.append("--append-only")
        data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rest-server did not start: {self.log.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"rest:http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
