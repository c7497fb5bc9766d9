"""A real worker process, the CLI and Celery beat, on a real Redis broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from celery.result import AsyncResult

from testkit.scenarios import cli, hold_table_lock, reconcile_now
from testkit.site import BACKUP_DEPLOYMENTS, NAMESPACE, ROOT
from worker.adapters.redis_store import reconcile_recent_key


@pytest.mark.slow
def test_cli_backup_wait_json_status_and_snapshots(site, start_worker):
    start_worker()
    done = cli(site, "backup", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["state"] == "SUCCESS"
    result = out["result"]
    assert set(result["snapshots"]) == {"files", "pg-database"}
    assert result["deployments"] == BACKUP_DEPLOYMENTS

    status = cli(site, "status", out["task_id"], "--json")
    assert json.loads(status.stdout)["result"]["backup_id"] == result["backup_id"]

    listing = json.loads(cli(site, "snapshots", "--json").stdout)
    assert [b["backup_id"] for b in listing] == [result["backup_id"]]
    assert listing[0]["complete"] and listing[0]["snapshots"] == result["snapshots"]

    queued = cli(site, "backup")
    assert queued.returncode == 0 and len(queued.stdout.strip()) == 36  # a task id, not waited for


def test_reconcile_stores_no_celery_result_only_its_one_capped_summary_list(site, start_worker, celery_client):
    """Beat sends a reconcile every minute and nobody reads its result: each run pushes its summary
    onto one capped list and writes no celery-task-meta key (one per run, kept 30 days, was ~43 000)."""
    start_worker()
    client = celery_client.backend.client
    assert reconcile_now(celery_client)["state"] in ("ok", "skipped")  # the summary key exists now
    def ours() -> list[str]:  # kombu's own binding keys come and go as clients connect
        return sorted(k.decode() for k in client.keys("*") if not k.startswith(b"_kombu."))

    keys = ours()
    ids = []
    for _ in range(5):
        summary = reconcile_now(celery_client)
        assert summary["state"] in ("ok", "skipped") and summary["finished_at"], summary
        ids.append(summary["task_id"])
    assert len(set(ids)) == 5
    assert [client.exists(f"celery-task-meta-{task_id}") for task_id in ids] == [0] * 5
    assert ours() == keys
    recent = [json.loads(raw)["task_id"] for raw in client.lrange(reconcile_recent_key(site.instance), 0, -1)]
    assert recent[:5] == ids[::-1]  # newest first


@pytest.mark.slow
def test_progress_is_published_and_a_second_job_is_refused(site, start_worker, celery_client):
    start_worker()
    lock = hold_table_lock(site)
    try:
        first = celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "chat"})
        states = set()
        deadline = time.monotonic() + 60
        progress = None
        while time.monotonic() < deadline:
            res = AsyncResult(first.id, app=celery_client)
            states.add(res.state)
            if res.state == "PROGRESS" and "dump_db" in res.info.get("steps", {}):
                progress = res.info
                break
            time.sleep(0.1)
        assert progress is not None, states
        assert progress["job"] == "backup" and "percent" in progress
        second = celery_client.send_task("taiga_backup.backup")
        with pytest.raises(Exception) as err:
            second.get(timeout=60)
        assert "another taiga-backup job is running" in str(err.value)
        assert first.id in str(err.value)
    finally:
        lock.execute("rollback")
        lock.close()
    assert first.get(timeout=120)["state"] == "SUCCESS"
    for name, count in BACKUP_DEPLOYMENTS.items():
        assert site.kube.replicas(NAMESPACE, name) == count


@pytest.mark.slow
def test_beat_fires_the_backup_on_schedule_with_plain_celery_command(site, tmp_path):
    env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "BACKUP_SCHEDULE": "* * * * *", "PRUNE_SCHEDULE": "off", "CHECK_SCHEDULE": "off",
           "VERIFY_SCHEDULE": "off"}
    log = open(tmp_path / "celery.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-B",
                             "--loglevel", "INFO", "-s", str(tmp_path / "beat")], env=env, cwd=str(ROOT),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 100
        found = []
        while time.monotonic() < deadline and not found:
            time.sleep(2)
            if (site.repo / "pg-database" / "snapshots").exists():
                found = os.listdir(site.repo / "pg-database" / "snapshots")
        assert found, (tmp_path / "celery.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
    snaps = json.loads(site.restic("pg-database", "snapshots", "--json").stdout)
    assert "kind=schedule" in snaps[0]["tags"]


def test_worker_refuses_to_start_with_an_invalid_setting(site, tmp_path):
    env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT), "BACKUP_SCHEDULE": "61 * * * *"}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))
    assert done.returncode != 0
    assert "BACKUP_SCHEDULE" in done.stderr

    env = {**os.environ, **site.env, "PYTHONPATH": str(ROOT), "RESTIC_PASSWORD_FILE": str(tmp_path / "missing")}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))
    assert done.returncode == 2
    assert "RESTIC_PASSWORD_FILE" in done.stderr and "does not exist" in done.stderr


def pinned_queues(worker) -> set[str]:
    """The per-process queues the worker reads, as it answers for itself."""
    answers = worker.client().control.inspect(timeout=5).active_queues() or {}
    return {q["name"] for queues in answers.values() for q in queues if q["name"].endswith(".pinned")}


@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace of its own needs root")
def test_a_restarted_container_does_not_read_the_dead_workers_pinned_queue(site, start_worker):
    """Under tini a restarted container's worker has the same host name and the same pid: its
    pinned queue must still be its own, or it would run the links a dead backup left there."""
    first = start_worker(pid_namespace=True)
    before = pinned_queues(first)
    first.kill()
    second = start_worker(pid_namespace=True)
    after = pinned_queues(second)
    assert len(before) == len(after) == 1
    assert before != after
