"""The backup chain under real faults: a lease lost while the dump streams, a `restic tag` that saves the new
snapshot but cannot remove the old, Redis restarted empty in the middle of every link. The outcomes: the app
back within the reconcile period, and the repositories holding the whole backup or nothing of it - never half
a backup as the old procedure's `latest`. Real worker processes, Redis, PostgreSQL and restic, the Kubernetes
API double."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from kombu import pools

from testkit.chain_checks import REPOS, latest, received, report_of, snapshots, tagged_with
from testkit.faults import app_at_zero, app_back, dump_blocked, wait_until
from testkit.scenarios import BACKUP_CHAIN, hold_table_lock, reconcile_now, run_backup
from testkit.site import BACKUP_DEPLOYMENTS
from worker.adapters.redis_store import connect as redis_connect
from worker.backups import catalog
from worker.jobs.lease import JobLock

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
        wait_until(lambda: "taiga_backup.finish" in received(site), 60, "the last link waiting for the dump")
        reconcile = reconcile_now(celery_client)
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


def test_the_chains_errback_forgets_the_pre_pass_and_brings_the_app_back(repos):
    """A link raised instead of passing its failure on (seen for real: Redis restarted while
    Celery stored dump_db's STARTED state): the errback runs with the chain's first context,
    whose report names no step, and resumes the app itself before it forgets what the backup
    made. That resume must not pass for the whole report - "no step that makes a snapshot ran"
    - or the pre-pass, tagged with this backup's id, is left for the old procedure's `latest`.
    The links and the errback run here, as the worker runs them, on the real repositories."""
    from worker.jobs import backup_chain, backup_flow
    from worker.jobs.job import begin_job

    site = repos
    job = begin_job(None, "backup")
    ctx = backup_flow.start(job, "manual")
    first = json.dumps(ctx.to_json())  # as Celery keeps the errback's: serialized, apart from the links'
    backup_chain.hand_over(job)
    doc = json.loads(first)
    for name in BACKUP_CHAIN[:3]:  # prepare, media_prepass, quiesce
        doc = backup_chain.run_link(None, doc, name)
    assert app_at_zero(site) and tagged_with(site, ctx.report["backup_id"])["files"], "no pre-pass to forget"
    report = backup_chain.run_abort(None, json.loads(first), "step task x failed: ConnectionError")
    assert report["state"] == "FAILURE", report
    assert snapshots(site, "files") == [] and snapshots(site, "pg-database") == [], json.dumps(report)
    assert app_back(site)


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


def _whole_or_nothing(site) -> str:
    """The repositories (fresh for the test) hold one whole backup - a database snapshot and a
    media snapshot with the same backup id, and `latest` of each is that pair - or nothing at all
    (not even a pre-pass the old procedure would take for `latest`)."""
    files, database = snapshots(site, "files"), snapshots(site, "pg-database")
    if not files and not database:
        return "nothing"
    ids = {repo: {t for s in docs for t in s.get("tags") or [] if t.startswith(catalog.ID_TAG)}
           for repo, docs in (("files", files), ("pg-database", database))}
    assert len(files) == len(database) == 1 and ids["files"] == ids["pg-database"] and len(ids["files"]) == 1, \
        (files, database)
    assert catalog.PREPASS_TAG not in (files[0].get("tags") or [])
    assert latest(site, "files") == files[0]["id"] and latest(site, "pg-database") == database[0]["id"]
    return "whole"


@pytest.mark.slow
@pytest.mark.parametrize("link", [name.removeprefix("taiga_backup.") for name in BACKUP_CHAIN])
def test_redis_restarted_empty_at_each_link_leaves_the_app_up_and_a_whole_backup_or_nothing(
        link, repos, start_worker, celery_client, record_property):
    """Redis (no persistence: the broker, the results, the lease and our records) restarts empty
    the moment the worker receives the link. The chain may go on (the link's next message is
    sent after the restart) or break (a message lost with Redis): either way the app is back
    within the reconcile period (run here as beat would, every few seconds) and the repositories
    hold the whole backup or nothing of it."""
    site = repos
    worker = start_worker(JOB_LOCK_LEASE=5)
    task = celery_client.send_task("taiga_backup.backup")
    wait_until(lambda: f"taiga_backup.{link}" in received(site), 60, f"the {link} link", interval=0.005)
    site.redis_server.restart()
    pools.reset()  # this process's pooled broker connections are from before: later tests get fresh ones
    beat = worker.client()  # an app of its own: celery_client's pool was closed by the reset
    t0 = time.monotonic()
    deadline = t0 + 150  # the loop ends as soon as the job is over and the app back; a loaded CI machine needs more than a minute
    def over() -> bool:  # its report, or its last link's end (a restart as finish ran wipes the report)
        log = worker.output()
        return bool(report_of(site, task.id).get("finished_at")) or f"[{task.id}] succeeded" in log \
            or f"[{task.id}] raised" in log

    while time.monotonic() < deadline:
        if over() and app_back(site):
            break
        if time.monotonic() - t0 > 15:  # beat's reconcile, for a chain that broke
            try:
                reconcile_now(beat, timeout=30)
            except Exception as exc:  # the client's pooled connection from before the restart
                print(f"reconcile: {exc!r}")
        time.sleep(0.5)
    assert app_back(site), f"the app is not back after a Redis restart at {link}:\n{worker.output()[-3000:]}"
    record_property("app_back_seconds", round(time.monotonic() - t0, 1))
    outcome = _whole_or_nothing(site)
    report = report_of(site, task.id)
    print(f"redis restarted at {link}: {outcome}; report {report.get('state')} {report.get('error')}")
    if report.get("state") == "SUCCESS":
        assert outcome == "whole"
    elif report:  # failed or interrupted: a complete backup is kept only when its window was whole
        assert outcome == ("whole" if report.get("backup_complete") else "nothing"), report
