"""The CLI as an operator meets it on the first day: its version, what it says about an id it has
never seen (an error, never a PENDING that --wait follows forever), the list of recent jobs, and
an exit status of its own for "another job is running". Real worker, real Redis, real CLI
processes; `--wait` follows a job as its changes are stored, not on a poll."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import uuid

import pytest

from testkit.faults import wait_until
from testkit.scenarios import cli, hold_table_lock
from testkit.site import ROOT
from worker.cli import WAIT_TICK

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


def test_instance_sends_to_that_instances_queue_naming_it_and_reads_its_reports(site):
    """`--instance` (default TAIGA_INSTANCE): the queue, the stamp and the keys of that instance."""
    import base64

    import redis

    from worker.adapters import redis_store

    broker = redis.Redis.from_url(site.env["CELERY_BROKER_URL"])
    done = cli(site, "--instance", "taiga-b", "backup")
    assert done.returncode == 0, done.stderr
    (raw,) = broker.lrange("taiga-backup.taiga-b", 0, -1)
    assert broker.llen("taiga-backup.taiga") == 0
    message = json.loads(raw)
    _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert kwargs["_request"]["instance"] == "taiga-b" and message["headers"]["id"] == done.stdout.strip()
    report = {"task_id": "t-b", "job": "prune", "state": "SUCCESS", "started_at": "2024-01-01T00:00:00Z"}
    broker.set(redis_store.report_key("taiga-b", "t-b"), json.dumps(report))
    listed = cli(site, "--instance", "taiga-b", "jobs", "--json")
    assert [j["task_id"] for j in json.loads(listed.stdout)] == ["t-b"]
    # the site's own instance lists its own jobs (earlier tests' backups), never taiga-b's
    own = json.loads(cli(site, "jobs", "--json").stdout)
    assert "t-b" not in [j["task_id"] for j in own]
    bad = cli(site, "--instance", "Not_A_Label", "backup")
    assert bad.returncode == 2 and "not a DNS label" in bad.stderr


def test_wait_sees_each_stored_change_at_once_not_on_its_next_poll(site, celery_client):
    """`--wait` is woken by the result backend's publish of each change: the line for a progress
    update and the outcome follow the store by milliseconds, where the wait's own tick
    (WAIT_TICK, 1 s) would make them late by half a second on average."""
    backend = celery_client.backend
    task_id = str(uuid.uuid4())
    progress = lambda n: backend.store_result(task_id, {"step": "dump_db", "message": f"update {n}"}, "PROGRESS")
    progress(0)
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "status", task_id, "--wait"],
                            cwd=str(ROOT), env={**os.environ, **site.env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}  # each line the CLI printed (stderr: progress, stdout: outcome) -> when

    def read(stream) -> None:
        for line in stream:
            seen.setdefault(line.strip(), time.monotonic())

    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=read, args=(stream,), daemon=True).start()
    try:
        wait_until(lambda: "dump_db: update 0" in seen, 60, "the CLI to follow the job")
        lags = []
        for n in range(1, 6):
            time.sleep(0.3)  # off the tick's phase
            stored = time.monotonic()
            progress(n)
            wait_until(lambda: f"dump_db: update {n}" in seen, 10, f"update {n} on the CLI's stderr", interval=0.005)
            lags.append(seen[f"dump_db: update {n}"] - stored)
        stored = time.monotonic()
        backend.store_result(task_id, {"state": "SUCCESS", "backup_id": "x"}, "SUCCESS")
        outcome = '"backup_id": "x",'  # a line of the result, printed as indented JSON
        wait_until(lambda: outcome in seen, 10, "the outcome on stdout", interval=0.005)
        lags.append(seen[outcome] - stored)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert statistics.median(lags) < WAIT_TICK / 4, lags


def test_ping_counts_only_the_instances_own_workers(site, start_worker):
    """Two Taigas' workers on one host and one broker: each is its instance's node
    (taiga-backup-<instance>@<host>), `ping` of one instance - a health check - is not answered
    by the other's worker, and a chat-ops bot lists both."""
    start_worker(TAIGA_INSTANCE="taiga-other")
    alone = cli(site, "ping", "--json", "--timeout", "2")
    assert alone.returncode == 1 and f"no worker of instance {site.instance} answered" in alone.stderr, alone.stdout
    start_worker()
    for instance in (site.instance, "taiga-other"):
        for scope in ([], ["--self-only"]):
            done = cli(site, "--instance", instance, "ping", "--json", "--timeout", "2", *scope)
            assert done.returncode == 0, (instance, scope, done.stderr)
            nodes = [node for reply in json.loads(done.stdout) for node in reply]
            assert nodes == [f"taiga-backup-{instance}@{socket.gethostname()}"], (instance, scope, nodes)

    # a chat-ops bot lists the Taigas it can ask, from nothing but the broker
    broker_file = site.secrets / "bot-broker-url"
    broker_file.write_text(site.env["CELERY_BROKER_URL"] + "\n")
    listed = subprocess.run([sys.executable, "-m", "worker.chatops_client", "--broker-file", str(broker_file),
                             "instances"], cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {name: [f"taiga-backup-{name}@{socket.gethostname()}"]
                                         for name in (site.instance, "taiga-other")}
