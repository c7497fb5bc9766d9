"""The CLI as an operator meets it on the first day: its version, what it says about an id it has
never seen (an error, never a PENDING that --wait follows forever), the list of recent jobs, and
an exit status of its own for "another job is running". Real worker, real Redis, real CLI
processes."""

from __future__ import annotations

import json
import time
import tomllib
import uuid

import pytest

from testkit.scenarios import cli, hold_table_lock
from testkit.site import ROOT

EXIT_UNKNOWN, EXIT_BUSY = 4, 5


def test_version_is_the_package_version(site):
    done = cli(site, "--version")
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"taiga-backup {expected}"


def test_an_unknown_id_is_an_error_and_wait_does_not_follow_it_forever(site):
    unknown = str(uuid.uuid4())
    done = cli(site, "status", unknown)
    assert done.returncode == EXIT_UNKNOWN, (done.returncode, done.stdout, done.stderr)
    assert f"no job {unknown}" in done.stderr
    as_json = cli(site, "status", unknown, "--json")
    assert as_json.returncode == EXIT_UNKNOWN
    assert json.loads(as_json.stdout)["state"] == "UNKNOWN"
    started = time.monotonic()
    waited = cli(site, "status", unknown, "--wait", timeout=60)
    assert waited.returncode == EXIT_UNKNOWN, (waited.stdout, waited.stderr)
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_queued_job_is_not_unknown_and_jobs_lists_the_reports_newest_first(site, start_worker, celery_client):
    # no worker yet: the message waits in the queue, Celery says PENDING, no report exists
    queued = celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "chat"})
    status = cli(site, "status", queued.id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "PENDING"
    start_worker()
    done = cli(site, "status", queued.id, "--wait", "--json", "--timeout", "120", timeout=180)
    assert done.returncode == 0, done.stderr
    backup = json.loads(done.stdout)["result"]
    prune = cli(site, "prune", "--dry-run", "--wait", "--json", timeout=180)
    assert prune.returncode == 0, prune.stderr
    prune_id = json.loads(prune.stdout)["task_id"]

    listing = cli(site, "jobs", "--json")
    assert listing.returncode == 0, listing.stderr
    jobs = json.loads(listing.stdout)
    assert [(j["task_id"], j["job"], j["state"]) for j in jobs] == [(prune_id, "prune", "SUCCESS"),
                                                                  (queued.id, "backup", "SUCCESS")]
    assert jobs[1]["backup_id"] == backup["backup_id"] and jobs[1]["started_at"] == backup["started_at"]
    assert jobs[1]["duration_seconds"] == backup["duration_seconds"]
    assert [j["task_id"] for j in json.loads(cli(site, "jobs", "--json", "--limit", "1").stdout)] == [prune_id]
    table = cli(site, "jobs").stdout.splitlines()
    assert table[0].split()[:3] == ["STARTED", "(UTC)", "JOB"] and backup["backup_id"] in table[2]


@pytest.mark.slow
def test_another_job_running_has_its_own_exit_status(site, start_worker, celery_client):
    start_worker()
    lock = hold_table_lock(site)  # the first backup waits in pg_dump, holding the lease
    try:
        first = celery_client.send_task("taiga_backup.backup", kwargs={"trigger": "chat"})
        deadline = time.monotonic() + 60
        while celery_client.AsyncResult(first.id).state != "PROGRESS" and time.monotonic() < deadline:
            time.sleep(0.2)
        for command in (["backup"], ["restore", "--dry-run"]):
            refused = cli(site, *command, "--wait")
            assert refused.returncode == EXIT_BUSY, (command, refused.returncode, refused.stderr)
            assert "another taiga-backup job is running" in refused.stderr and first.id in refused.stderr
    finally:
        lock.execute("rollback")
        lock.close()
    assert first.get(timeout=120)["state"] == "SUCCESS"
    failed = cli(site, "restore", "--snapshot", "deadbeef", "--wait")
    assert failed.returncode == 1, failed.stderr  # an ordinary failure keeps exit status 1
