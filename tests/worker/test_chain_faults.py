"""The backup chain under real faults (issue 20, holes 3 and 6, and Redis restarted empty at each
link): a lease lost while the dump streams, a `restic tag` that saves the new snapshot but cannot
remove the old, Redis restarted empty in the middle of every link. The outcomes: the app back
within the reconcile period, and the repositories holding the whole backup or nothing of it -
never half a backup as the old procedure's `latest`. Real worker processes, Redis, PostgreSQL and
restic, the Kubernetes API double."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from celery.result import AsyncResult

from testkit.faults import app_at_zero, app_back, dump_blocked, wait_until
from testkit.scenarios import BACKUP_CHAIN, hold_table_lock, run_backup
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE
from worker.adapters.redis_store import connect as redis_connect
from worker.backups import catalog
from worker.jobs.lease import JobLock

REPOS = ("files", "pg-database")


def snapshots(site, repo: str) -> list[dict]:
    return json.loads(site.restic(repo, "snapshots", "--json", "--no-lock").stdout or b"[]") or []


def tagged_with(site, backup_id: str) -> dict[str, list[str]]:
    """Every snapshot carrying the backup's id or its pre-pass's tag, per repository."""
    ours = {catalog.ID_TAG + backup_id, catalog.PREPASS_OF_TAG + backup_id}
    return {repo: [s["id"] for s in snapshots(site, repo) if ours & set(s.get("tags") or [])] for repo in REPOS}


def latest(site, repo: str) -> str | None:
    """`restic snapshots latest`, as the old procedure restores it."""
    docs = json.loads(site.restic(repo, "snapshots", "--json", "--no-lock", "latest").stdout or b"[]") or []
    return docs[0]["id"] if docs else None


def report_of(site, task_id: str) -> dict:
    raw = redis_connect(site.settings()).get(f"taiga-backup:report:{task_id}")
    return json.loads(raw) if raw else {}


def ended(site, task_id: str) -> dict:
    return wait_until(lambda: (lambda r: r if r.get("finished_at") else None)(report_of(site, task_id)), 120,
                      "the backup's report", interval=0.2)


@pytest.mark.slow
def test_a_lease_lost_while_the_dump_streams_does_not_keep_the_app_down_for_the_dump(
        repos, start_worker, celery_client):
    """The lease is taken by another job while the quiesced media pass runs and pg_dump waits on a
    table lock: the chain stops short and its last link waits for the dump, which could take
    DUMP_TIMEOUT (4 h). The next reconcile - every minute from beat - asks the worker, learns that
    the job no longer holds anything, and brings the app back while the dump still waits; the
    dump, once it ends, is forgotten by the backup's own tag (the other job's are untouched)."""
    site = repos
    start_worker(FILES_TIMEOUT=8, JOB_LOCK_LEASE=5)
    client = redis_connect(site.settings())
    lease = JobLock(client, str(site.repo))
    lock = hold_table_lock(site)
    try:
        task = celery_client.send_task("taiga_backup.backup")
        wait_until(lambda: app_at_zero(site), 60, "the app quiesced")
        with open(site.media / "huge.bin", "wb") as f:  # the quiesced pass reads it until FILES_TIMEOUT
            f.truncate(200 * 1024 ** 3)
        wait_until(lambda: dump_blocked(site), 60, "pg_dump waiting on the table lock")
        other = json.dumps({"kind": "restore", "task_id": "other-job", "host": "elsewhere", "since": "now",
                            "token": "x"})
        client.set(lease.key, other, ex=300)
        wait_until(lambda: "taiga_backup.finish" in _received(site), 60, "the last link waiting for the dump")
        reconcile = celery_client.send_task("taiga_backup.reconcile").get(timeout=60)
        assert set(reconcile.get("resumed") or {}) == set(BACKUP_DEPLOYMENTS), reconcile
        assert app_back(site) and dump_blocked(site), "the app must be back while the dump still waits"
    finally:
        lock.execute("rollback")
        lock.close()
    report = ended(site, task.id)
    assert report["state"] == "FAILURE" and "the job lease was lost" in json.dumps(report["errors"]), report
    assert tagged_with(site, report["backup_id"]) == {repo: [] for repo in REPOS}
    assert client.get(lease.key) == other.encode()  # the other job's lease is not released
    assert app_back(site)


def _received(site) -> str:
    """The chain's links the worker has received so far, from its log."""
    logs = sorted(site.root.glob("worker-*.log"))
    return " ".join(re.findall(r"(taiga_backup\.\w+)\[[^\]]+\] received", logs[-1].read_text(errors="replace")))


def _restic_running(worker, command: bytes) -> bool:
    from testkit.site import descendants

    for pid in descendants(worker.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"restic") and command in argv:
            return True
    return False


def _chattr(flag: str, path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.mark.slow
def test_a_retag_that_saved_the_new_snapshot_but_not_removed_the_old_leaves_no_half_backup(
        repos, start_worker, celery_client, monkeypatch):
    """The media did not change since the pre-pass, so the pre-pass becomes the backup's media
    snapshot by `restic tag`. The pre-pass's snapshot file cannot be removed (immutable, a real
    EPERM): restic saves the retagged snapshot, retries the removal and is killed at
    DISCARD_TIMEOUT. The job fails; once the fault is over, what it made is forgotten by its tags
    - the retagged snapshot too, which the job never learned - and `latest` of each repository is
    the previous good backup's."""
    site = repos
    good = run_backup()
    assert good["state"] == "SUCCESS"
    # the quiesce begins once the pre-pass has ended (no overlap), and the pods take 2 s to stop:
    # time to make the pre-pass's snapshot file immutable before the retag
    worker = start_worker(DISCARD_TIMEOUT=6, QUIESCE_LEAD_MAX=0)
    monkeypatch.setattr(site.kube, "pod_stop_delay", 2.0)
    snapdir = site.repo / "files" / "snapshots"
    def saved() -> set[str]:  # restic writes a snapshot as `<id>-tmp-<n>`, then renames it
        return {p.name for p in snapdir.iterdir() if len(p.name) == 64}

    before = saved()
    lock = hold_table_lock(site)  # the last link waits for the dump: the fault ends before it forgets
    pinned = None
    try:
        task = celery_client.send_task("taiga_backup.backup")
        pinned = wait_until(lambda: next(iter(saved() - before), None), 60,
                            "the pre-pass's snapshot", interval=0.005)
        _chattr("+i", snapdir / pinned)
        wait_until(lambda: _restic_running(worker, b"tag"), 60, "the retag")
        wait_until(lambda: not _restic_running(worker, b"tag"), 60, "the retag killed at its deadline")
        backup_id = next(t.removeprefix(catalog.PREPASS_OF_TAG) for s in snapshots(site, "files")
                         if s["id"] == pinned for t in s["tags"] if t.startswith(catalog.PREPASS_OF_TAG))
        assert len(tagged_with(site, backup_id)["files"]) == 2  # the retagged one saved, the old one kept
    finally:
        if pinned:
            _chattr("-i", snapdir / pinned)
        lock.execute("rollback")
        lock.close()
    report = ended(site, task.id)
    assert report["state"] == "FAILURE" and report["backup_complete"] is False, report
    assert tagged_with(site, backup_id) == {repo: [] for repo in REPOS}
    assert latest(site, "files") == good["snapshots"]["files"]
    assert latest(site, "pg-database") == good["snapshots"]["pg-database"]
    assert app_back(site)
