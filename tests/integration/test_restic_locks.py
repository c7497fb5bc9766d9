"""restic locks: crashed runs' locks are cleared, a live holder is waited for and then named.

Locks are made by real restic processes; another pod's hostname comes from a UTS namespace of
their own (`unshare --uts`, we run as root), so restic sees exactly what it sees in a cluster.
"""

from __future__ import annotations

import os
import json
import re
import subprocess
import sys
import threading
import time

import pytest

from worker.jobs.check_flow import check_repositories
from worker.errors import JobFailed
from worker.jobs.job import run_job
from worker.backups import layout, restic_locks
from worker.adapters import redis_store
from worker.adapters.redis_store import connect as redis_connect

AS_HOST = ("import os, socket, sys\n"
           "if sys.argv[1]: socket.sethostname(sys.argv[1])\n"
           "os.execvp('restic', ['restic', 'backup', '--stdin', '--quiet'])")


class Holder:
    """`restic backup --stdin` fed by a pipe we keep open: it holds its lock until we let go."""

    started: list = []

    def __init__(self, site, repo: str, hostname: str = ""):
        self.site, self.repo = site, repo
        env = {"PATH": os.environ["PATH"], "HOME": str(site.root), "RESTIC_REPOSITORY": f"{site.repo}/{repo}",
               "RESTIC_PASSWORD_FILE": str(site.password_file), "RESTIC_CACHE_DIR": site.env["RESTIC_CACHE_DIR"]}
        argv = [sys.executable, "-c", AS_HOST, hostname]
        before = self.locks()
        self.proc = subprocess.Popen(["unshare", "--uts", *argv] if hostname else argv, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        Holder.started.append(self.proc)
        deadline = time.monotonic() + 20
        while self.locks() == before:
            assert time.monotonic() < deadline, "restic did not take its lock"
            time.sleep(0.2)

    def locks(self) -> set[str]:
        return set(self.site.restic(self.repo, "list", "locks", "--no-lock").stdout.split())

    def crash(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def finish(self) -> None:
        self.proc.stdin.write(b"done\n")
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


@pytest.fixture(autouse=True)
def no_holder_outlives_its_test():
    yield
    while Holder.started:
        proc = Holder.started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stopped_worker(site, host: str, seconds_ago: float = 600) -> None:
    """The heartbeat record a taiga-backup worker left when its pod died."""
    redis_connect(site.settings()).hset(redis_store.WORKERS_KEY, host, int(time.time() - seconds_ago))


def check():
    return run_job(None, "check", check_repositories)


def test_locks_of_crashed_runs_are_cleared(repos):
    site = repos
    Holder(site, "files", "taiga-backup-7f9c-dead").crash()   # a worker pod that died mid-backup
    stopped_worker(site, "taiga-backup-7f9c-dead")
    Holder(site, "pg-database").crash()                      # this host, process gone: restic's own rule

    report = check()

    assert report["state"] == "SUCCESS"
    (gone,) = report["steps"]["check_files"]["locks_removed"]
    assert re.fullmatch(r"root@taiga-backup-7f9c-dead \(pid \d+\) since \d{4}-\d\d-\d\d [\d:]{8} UTC \(worker gone\)",
                        gone)
    (stale,) = report["steps"]["check_pg-database"]["locks_removed"]
    assert stale.endswith("(stale)")
    for repo in ("files", "pg-database"):
        assert site.restic(repo, "list", "locks", "--no-lock").stdout == b""


def lock_docs(site) -> list[dict]:
    ids = site.restic("files", "list", "locks", "--no-lock").stdout.decode().split()
    return [json.loads(site.restic("files", "cat", "lock", lock_id, "--no-lock").stdout) for lock_id in ids]


def test_a_live_holder_is_waited_for_then_named_and_never_removed(repos, monkeypatch):
    site = repos
    alice = Holder(site, "files", "alice-laptop")
    Holder(site, "files", "taiga-backup-old").crash()
    stopped_worker(site, "taiga-backup-old")
    monkeypatch.setenv("RESTIC_LOCK_WAIT", "3")
    t0 = time.monotonic()

    with pytest.raises(JobFailed) as err:
        check()

    assert time.monotonic() - t0 >= 3
    assert re.fullmatch(r"check_files: repository files is locked by root@alice-laptop \(pid \d+\) since "
                        r"\d{4}-\d\d-\d\d [\d:]{8} UTC; gave up after waiting \d+s \(RESTIC_LOCK_WAIT\)", str(err.value))
    assert f"(pid {alice.proc.pid})" in str(err.value)
    # the dead worker's lock went, by its id; alice's, live, is still there (no --remove-all)
    assert [doc["hostname"] for doc in lock_docs(site)] == ["alice-laptop"]

    settings = site.settings()
    shared = restic_locks.make_way(settings, layout.repository(settings, "files"),
                                   redis_connect(settings), exclusive=False, wait=0)
    assert shared == {}  # shared locks do not stand in the way of a backup or a restore

    assert alice.proc.poll() is None
    monkeypatch.setenv("RESTIC_LOCK_WAIT", "60")
    threading.Timer(5.0, alice.finish).start()
    report = check()  # waits for alice, then clears the dead worker's lock

    assert report["state"] == "SUCCESS"
    entry = report["steps"]["check_files"]
    assert entry["lock_wait_seconds"] >= 1
    assert "locks_removed" not in entry  # removed during the first attempt already


def test_a_worker_silent_for_less_than_several_leases_keeps_its_lock(repos, monkeypatch):
    """A pod cut off from Redis (no heartbeat for a minute) may still be pruning: its lock is
    waited for and named, never removed; once it has been silent for several lease periods, that
    one lock goes - and a stranger's lock beside it stays."""
    site = repos
    monkeypatch.setenv("RESTIC_LOCK_WAIT", "2")
    cut_off = Holder(site, "files", "taiga-backup-cut-off")
    stopped_worker(site, "taiga-backup-cut-off", seconds_ago=60)  # < max(90 s, 3 x JOB_LOCK_LEASE)
    with pytest.raises(JobFailed, match=r"locked by root@taiga-backup-cut-off"):
        check()
    assert [doc["hostname"] for doc in lock_docs(site)] == ["taiga-backup-cut-off"]

    cut_off.crash()
    stopped_worker(site, "taiga-backup-cut-off", seconds_ago=600)
    alice = Holder(site, "files", "alice-laptop")
    with pytest.raises(JobFailed, match=r"locked by root@alice-laptop"):
        check()
    assert [doc["hostname"] for doc in lock_docs(site)] == ["alice-laptop"]
    alice.finish()
    assert check()["state"] == "SUCCESS"
